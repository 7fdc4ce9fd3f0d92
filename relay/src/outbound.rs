//! The HTTP client for the relay's outbound calls (Entra token and key endpoints, Graph, the SMS
//! gateway): HTTPS only, the system's roots plus an optional extra CA, bounded timeouts.

use std::path::Path;
use std::time::Duration;

/// Connect and whole-request timeout of every outbound call.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Why the client cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The extra CA file is unusable.
    #[error("{path}: {reason}")]
    Ca {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// reqwest refused the settings.
    #[error("HTTP client: {0}")]
    Client(String),
}

/// An HTTPS-only client trusting the system roots and, when given, the CA certificates in `extra_ca`.
pub fn client(extra_ca: Option<&Path>) -> Result<reqwest::Client, OutboundError> {
    let mut builder = reqwest::Client::builder()
        .https_only(true)
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("pwrelay/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = extra_ca {
        let ca_err = |reason: String| OutboundError::Ca { path: path.display().to_string(), reason };
        let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_err(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_err("holds no PEM certificate".into()));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| OutboundError::Client(e.to_string()))
}
