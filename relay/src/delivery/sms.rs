//! The SMS gateway: one JSON POST per message.
//!
//! ```text
//! POST <lifecycle.sms.url>
//! Authorization: Bearer <token from lifecycle.sms.bearer_token_file>   (when configured)
//! Content-Type: application/json
//!
//! {"from": "<lifecycle.sms.from>", "to": "+4915112345678", "message": "..."}
//! ```
//!
//! Any 2xx answer counts as accepted; 429 and 5xx are retried, other answers are not. The shape
//! is what Azure Communication Services' SMS API and Twilio-style gateways take with a thin
//! adapter (an Azure Function or API Management policy), so the relay has one plain contract.

use pwrelay_shared::secret::SecretString;

use crate::lifecycle::config::SmsConfig;

/// Why a message was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
#[error("SMS gateway: {message}")]
pub struct SmsError {
    /// What happened (never the message text).
    pub message: String,
    /// Whether a later try may succeed.
    pub retryable: bool,
}

/// Sends SMS through the configured gateway.
pub struct SmsGateway {
    http: reqwest::Client,
    url: String,
    from: String,
    token: Option<SecretString>,
}

impl std::fmt::Debug for SmsGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmsGateway").field("url", &self.url).finish_non_exhaustive()
    }
}

impl SmsGateway {
    /// Reads the gateway's token file.
    pub fn new(config: &SmsConfig, http: reqwest::Client) -> Result<Self, String> {
        let token = match &config.bearer_token_file {
            Some(path) => Some(SecretString::new(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("lifecycle.sms.bearer_token_file {}: {e}", path.display()))?
                    .trim()
                    .to_owned(),
            )),
            None => None,
        };
        Ok(Self { http, url: config.url.clone(), from: config.from.clone(), token })
    }

    /// Sends `message` to `to` (E.164).
    pub async fn send(&self, to: &str, message: &SecretString) -> Result<(), SmsError> {
        let body = zeroize::Zeroizing::new(
            serde_json::json!({ "from": self.from, "to": to, "message": message.expose_secret() }).to_string(),
        );
        let mut request = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.as_bytes().to_vec());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose_secret());
        }
        let response =
            request.send().await.map_err(|e| SmsError { message: e.without_url().to_string(), retryable: true })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        Err(SmsError {
            message: format!("answered {status}"),
            retryable: status.as_u16() == 429 || status.is_server_error(),
        })
    }
}
