//! The HTTP client for every call the relay makes (webhooks; Entra token and key endpoints,
//! Graph and the SMS gateway for new hires): TLS from [`pwrelay_shared::tls`] (the system's trust
//! store, or only a configured CA), the ring provider, bounded timeouts, no redirects.

use std::path::Path;
use std::time::Duration;

use pwrelay_shared::tls::{self, TrustAnchors};

/// Why the client cannot be built. `key` names the setting.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The CA file is unusable.
    #[error("{key}: {source}")]
    Ca {
        /// The setting.
        key: &'static str,
        /// The cause.
        source: tls::TlsError,
    },
    /// The system's trust store is unusable.
    #[error("the system's trust store cannot be used ({0}); set {1}")]
    TrustStore(tls::TlsError, &'static str),
    /// reqwest refused the settings.
    #[error("HTTP client: {0}")]
    Client(String),
}

/// A client that verifies servers against `ca_file` alone when given (private endpoints, test
/// fakes), else against the system's trust store. `ca_key` names the setting in errors.
pub fn client(
    ca_file: Option<&Path>,
    ca_key: &'static str,
    timeout: Duration,
) -> Result<reqwest::Client, OutboundError> {
    let tls = match ca_file {
        Some(path) => TrustAnchors::from_file(path)
            .and_then(|anchors| tls::https_client(&anchors))
            .map_err(|source| OutboundError::Ca { key: ca_key, source })?,
        None => tls::public_https_client().map_err(|e| OutboundError::TrustStore(e, ca_key))?,
    };
    let mut tls = (*tls).clone();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("pwrelay/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|e| OutboundError::Client(e.to_string()))
}
