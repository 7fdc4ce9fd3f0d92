//! Microsoft Graph, app-only: the calls the new-hire flow makes.
//!
//! | call | request | permission (application) |
//! |---|---|---|
//! | [`GraphClient::user`] | `GET /v1.0/users/{id}?$select=...` | `User.Read.All` |
//! | [`GraphClient::manager`] | `GET /v1.0/users/{id}/manager?$select=displayName,mail` | `User.Read.All` |
//! | [`GraphClient::send_mail`] | `POST /v1.0/users/{sender}/sendMail` | `Mail.Send` (scope it to the sender with an application access policy) |
//! | [`GraphClient::resume`] | `POST /v1.0/identityGovernance/lifecycleWorkflows/workflows/{wf}/tasks/{task}/taskProcessingResults/{id}/resume` | `LifecycleWorkflows.ReadWrite.All` |
//!
//! Base URLs come from `[lifecycle.endpoints]`, so national clouds and local test fakes work alike.

mod token;

use base64::Engine as _;
use pwrelay_shared::secret::SecretString;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::lifecycle::config::LifecycleConfig;

/// Why a Graph call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GraphError {
    /// No token could be obtained (wrong credential, tenant or permissions).
    #[error("Graph token: {0}")]
    Token(String),
    /// The network or TLS failed.
    #[error("Graph unreachable: {0}")]
    Transport(String),
    /// The object does not exist.
    #[error("Graph: {0} not found")]
    NotFound(String),
    /// Graph answered with an error.
    #[error("Graph answered {status} to {call}: {message}")]
    Status {
        /// The call.
        call: &'static str,
        /// HTTP status.
        status: u16,
        /// Graph's `error.code: error.message`.
        message: String,
    },
}

impl GraphError {
    /// Whether trying again later may help.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport(_) => true,
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            Self::Token(_) | Self::NotFound(_) => false,
        }
    }
}

/// A user's on-premises identity and contact details, as Graph has them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphUser {
    /// `displayName`.
    pub display_name: String,
    /// `givenName`.
    pub given_name: Option<String>,
    /// `onPremisesSamAccountName`.
    pub sam_account_name: Option<String>,
    /// `onPremisesDomainName` (the AD DNS domain).
    pub domain_name: Option<String>,
    /// `onPremisesImmutableId` decoded as an objectGUID, when it is one.
    pub object_guid: Option<Uuid>,
    /// `onPremisesUserPrincipalName`.
    pub upn: Option<String>,
    /// `mobilePhone`.
    pub mobile_phone: Option<String>,
    /// `otherMails` (private addresses).
    pub other_mails: Vec<String>,
}

/// A user's manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manager {
    /// `displayName`.
    pub display_name: String,
    /// `mail`.
    pub mail: Option<String>,
}

/// The result reported to a workflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperationStatus {
    /// The task did its work.
    Completed,
    /// The task failed; the workflow shows it as failed.
    Failed,
}

impl OperationStatus {
    /// Graph's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserBody {
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    given_name: Option<String>,
    #[serde(default)]
    on_premises_sam_account_name: Option<String>,
    #[serde(default)]
    on_premises_domain_name: Option<String>,
    #[serde(default)]
    on_premises_immutable_id: Option<String>,
    #[serde(default)]
    on_premises_user_principal_name: Option<String>,
    #[serde(default)]
    mobile_phone: Option<String>,
    #[serde(default)]
    other_mails: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManagerBody {
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    mail: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

const USER_FIELDS: &str = "displayName,givenName,onPremisesSamAccountName,onPremisesDomainName,\
    onPremisesImmutableId,onPremisesUserPrincipalName,mobilePhone,otherMails";

/// Graph for the configured tenants.
pub struct GraphClient {
    http: reqwest::Client,
    graph_url: String,
    tokens: token::TokenSource,
}

impl std::fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphClient").field("graph_url", &self.graph_url).finish_non_exhaustive()
    }
}

impl GraphClient {
    /// Loads the tenants' credentials.
    pub fn new(config: &LifecycleConfig, http: reqwest::Client) -> Result<Self, String> {
        Ok(Self {
            tokens: token::TokenSource::new(&config.login_url, &config.graph_url, &config.tenants)?,
            graph_url: config.graph_url.clone(),
            http,
        })
    }

    /// The user's on-premises identity.
    pub async fn user(&self, tenant: &str, id: Uuid) -> Result<GraphUser, GraphError> {
        let url = format!("{}/v1.0/users/{id}?$select={USER_FIELDS}", self.graph_url);
        let body: UserBody = self.get(tenant, "users", &url, &format!("user {id}")).await?;
        let object_guid = body
            .on_premises_immutable_id
            .as_deref()
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
            .and_then(|bytes| <[u8; 16]>::try_from(bytes.as_slice()).ok())
            .map(Uuid::from_bytes_le);
        Ok(GraphUser {
            display_name: body.display_name.unwrap_or_default(),
            given_name: body.given_name,
            sam_account_name: body.on_premises_sam_account_name,
            domain_name: body.on_premises_domain_name,
            object_guid,
            upn: body.on_premises_user_principal_name,
            mobile_phone: body.mobile_phone,
            other_mails: body.other_mails,
        })
    }

    /// The user's manager, or `None` when none is set.
    pub async fn manager(&self, tenant: &str, id: Uuid) -> Result<Option<Manager>, GraphError> {
        let url = format!("{}/v1.0/users/{id}/manager?$select=displayName,mail", self.graph_url);
        match self.get::<ManagerBody>(tenant, "manager", &url, &format!("manager of {id}")).await {
            Ok(m) => Ok(Some(Manager { display_name: m.display_name.unwrap_or_default(), mail: m.mail })),
            Err(GraphError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends a plain-text mail as `sender` (not saved to its Sent Items).
    pub async fn send_mail(
        &self,
        tenant: &str,
        sender: &str,
        to: &str,
        subject: &str,
        body: &SecretString,
    ) -> Result<(), GraphError> {
        let url = format!("{}/v1.0/users/{}/sendMail", self.graph_url, urlencode(sender));
        let message = zeroize::Zeroizing::new(
            json!({
                "message": {
                    "subject": subject,
                    "body": {"contentType": "Text", "content": body.expose_secret()},
                    "toRecipients": [{"emailAddress": {"address": to}}],
                },
                "saveToSentItems": false,
            })
            .to_string(),
        );
        self.post(tenant, "sendMail", &url, message.as_bytes()).await
    }

    /// Reports a task processing result's outcome, which resumes the workflow. Graph answers 204.
    pub async fn resume(
        &self,
        tenant: &str,
        workflow: Uuid,
        task: Uuid,
        result: Uuid,
        status: OperationStatus,
    ) -> Result<(), GraphError> {
        let url = format!(
            "{}/v1.0/identityGovernance/lifecycleWorkflows/workflows/{workflow}/tasks/{task}/taskProcessingResults/{result}/resume",
            self.graph_url
        );
        let body = json!({
            "data": {
                "@odata.type": "microsoft.graph.identityGovernance.customTaskExtensionCallbackData",
                "operationStatus": status.as_str(),
            },
            "source": "pwrelay",
            "type": "lifecycleEvent",
        });
        self.post(tenant, "resume", &url, body.to_string().as_bytes()).await
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        tenant: &str,
        call: &'static str,
        url: &str,
        what: &str,
    ) -> Result<T, GraphError> {
        let token = self.tokens.token(&self.http, tenant).await?;
        let response = self
            .http
            .get(url)
            .bearer_auth(token.expose_secret())
            .send()
            .await
            .map_err(|e| GraphError::Transport(e.without_url().to_string()))?;
        let response = check(call, what, response).await?;
        response.json().await.map_err(|e| GraphError::Status { call, status: 200, message: e.to_string() })
    }

    async fn post(&self, tenant: &str, call: &'static str, url: &str, body: &[u8]) -> Result<(), GraphError> {
        let token = self.tokens.token(&self.http, tenant).await?;
        let response = self
            .http
            .post(url)
            .bearer_auth(token.expose_secret())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| GraphError::Transport(e.without_url().to_string()))?;
        check(call, call, response).await.map(drop)
    }
}

async fn check(call: &'static str, what: &str, response: reqwest::Response) -> Result<reqwest::Response, GraphError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    if status == reqwest::StatusCode::NOT_FOUND {
        return Err(GraphError::NotFound(what.to_owned()));
    }
    let message = response
        .json::<ErrorBody>()
        .await
        .map(|b| format!("{}: {}", b.error.code, b.error.message))
        .unwrap_or_else(|_| "no error body".into());
    Err(GraphError::Status { call, status: status.as_u16(), message })
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'@' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn immutable_ids_decode_as_object_guids() {
        // objectGUID 6f9619ff-8b86-d011-b42d-00c04fc964ff in AD's byte order, base64.
        let guid = Uuid::parse_str("6f9619ff-8b86-d011-b42d-00c04fc964ff").expect("guid");
        let b64 = base64::engine::general_purpose::STANDARD.encode(guid.to_bytes_le());
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).expect("b64");
        assert_eq!(Uuid::from_bytes_le(<[u8; 16]>::try_from(bytes.as_slice()).expect("16")), guid);
        assert_eq!(urlencode("a b/c@d"), "a%20b%2Fc@d");
    }

    #[test]
    fn only_throttling_and_server_errors_are_retried() {
        let status = |status| GraphError::Status { call: "x", status, message: String::new() };
        assert!(status(429).is_retryable() && status(503).is_retryable());
        assert!(!status(403).is_retryable() && !GraphError::NotFound("u".into()).is_retryable());
        assert!(GraphError::Transport("reset".into()).is_retryable());
    }
}
