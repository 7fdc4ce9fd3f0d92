//! App-only tokens for Graph (OAuth 2.0 client credentials), cached per tenant until shortly
//! before they expire.
//!
//! `POST {login}/{tenant}/oauth2/v2.0/token` with `grant_type=client_credentials`, `client_id`,
//! `scope={graph}/.default` and either `client_secret`, or a client assertion: a JWT signed RS256
//! with the app's certificate key, header `x5t#S256` = base64url(SHA-256 of the certificate),
//! claims `aud` = the token URL, `iss` = `sub` = client id, `jti`, `nbf`, `iat`, `exp`.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pwrelay_shared::secret::SecretString;
use rustls_pki_types::pem::PemObject as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use super::GraphError;
use crate::lifecycle::config::{GraphCredential, TenantConfig};

/// A token is renewed this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(300);
/// Lifetime of a client assertion.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(600);
/// A token is cached this long at most, whatever `expires_in` says (Entra's are about an hour).
const MAX_CACHE_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The lifetime assumed when the response has no `expires_in`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// A tenant's credential, loaded.
enum Credential {
    Secret(SecretString),
    Certificate { key: EncodingKey, x5t_s256: String },
}

struct Tenant {
    client_id: String,
    credential: Credential,
}

struct Cached {
    token: SecretString,
    renew_at: Instant,
}

/// Gets and caches tokens.
pub(super) struct TokenSource {
    login_url: String,
    scope: String,
    tenants: HashMap<String, Tenant>,
    cache: Mutex<HashMap<String, Cached>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    /// Seconds, as a number or (older endpoints) a string; read by [`cache_lifetime`].
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct TokenErrorResponse {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    nbf: u64,
    iat: u64,
    exp: u64,
}

impl TokenSource {
    /// Loads every tenant's credential from its files.
    pub(super) fn new(login_url: &str, graph_url: &str, tenants: &[TenantConfig]) -> Result<Self, String> {
        let mut loaded = HashMap::new();
        for (i, t) in tenants.iter().enumerate() {
            let credential = match &t.credential {
                GraphCredential::Secret { file } => {
                    let text = std::fs::read_to_string(file)
                        .map_err(|e| format!("lifecycle.tenants[{i}].client_secret_file {}: {e}", file.display()))?;
                    Credential::Secret(SecretString::new(text.trim().to_owned()))
                }
                GraphCredential::Certificate { certificate_file, key_file } => {
                    let cert_err = |e: String| {
                        format!("lifecycle.tenants[{i}].client_certificate_file {}: {e}", certificate_file.display())
                    };
                    let der = rustls_pki_types::CertificateDer::pem_file_iter(certificate_file)
                        .map_err(|e| cert_err(e.to_string()))?
                        .next()
                        .ok_or_else(|| cert_err("holds no certificate".into()))?
                        .map_err(|e| cert_err(e.to_string()))?;
                    let pem =
                        zeroize::Zeroizing::new(std::fs::read(key_file).map_err(|e| {
                            format!("lifecycle.tenants[{i}].client_key_file {}: {e}", key_file.display())
                        })?);
                    let key = EncodingKey::from_rsa_pem(&pem).map_err(|e| {
                        format!("lifecycle.tenants[{i}].client_key_file {}: not an RSA key ({e})", key_file.display())
                    })?;
                    let x5t_s256 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(&der));
                    Credential::Certificate { key, x5t_s256 }
                }
            };
            loaded.insert(t.tenant_id.clone(), Tenant { client_id: t.client_id.clone(), credential });
        }
        Ok(Self {
            login_url: login_url.to_owned(),
            scope: format!("{graph_url}/.default"),
            tenants: loaded,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// A valid token for `tenant`, from the cache or fresh.
    pub(super) async fn token(&self, http: &reqwest::Client, tenant: &str) -> Result<SecretString, GraphError> {
        let mut cache = self.cache.lock().await;
        if let Some(cached) = cache.get(tenant).filter(|c| Instant::now() < c.renew_at) {
            return Ok(cached.token.clone());
        }
        let config =
            self.tenants.get(tenant).ok_or_else(|| GraphError::Token(format!("tenant {tenant} is not configured")))?;
        let url = format!("{}/{tenant}/oauth2/v2.0/token", self.login_url);
        let mut form: Vec<(&str, String)> = vec![
            ("grant_type", "client_credentials".into()),
            ("client_id", config.client_id.clone()),
            ("scope", self.scope.clone()),
        ];
        match &config.credential {
            Credential::Secret(secret) => form.push(("client_secret", secret.expose_secret().to_owned())),
            Credential::Certificate { key, x5t_s256 } => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                let mut header = Header::new(Algorithm::RS256);
                header.x5t_s256 = Some(x5t_s256.clone());
                let claims = AssertionClaims {
                    aud: &url,
                    iss: &config.client_id,
                    sub: &config.client_id,
                    jti: uuid::Uuid::new_v4().to_string(),
                    nbf: now,
                    iat: now,
                    exp: now + ASSERTION_LIFETIME.as_secs(),
                };
                let assertion = jsonwebtoken::encode(&header, &claims, key)
                    .map_err(|e| GraphError::Token(format!("signing the client assertion failed: {e}")))?;
                form.push(("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into()));
                form.push(("client_assertion", assertion));
            }
        }
        let response = http.post(&url).form(&form).send().await;
        for (_, value) in &mut form {
            zeroize::Zeroize::zeroize(value);
        }
        let response = response.map_err(|e| GraphError::Transport(e.without_url().to_string()))?;
        let status = response.status();
        if !status.is_success() {
            let detail = response
                .json::<TokenErrorResponse>()
                .await
                .map(|e| format!("{}: {}", e.error, e.error_description.lines().next().unwrap_or_default()))
                .unwrap_or_default();
            if status.as_u16() == 429 || status.is_server_error() {
                // Throttled or down: worth trying again, unlike a refused credential.
                return Err(GraphError::Status { call: "token", status: status.as_u16(), message: detail });
            }
            return Err(GraphError::Token(format!("{url} answered {status} {detail}")));
        }
        let body: TokenResponse =
            response.json().await.map_err(|e| GraphError::Token(format!("unreadable token response: {e}")))?;
        let lifetime = cache_lifetime(body.expires_in.as_ref());
        let token = SecretString::new(body.access_token);
        cache.insert(tenant.to_owned(), Cached { token: token.clone(), renew_at: renew_at(Instant::now(), lifetime) });
        Ok(token)
    }
}

/// How long a token may be cached, from the response's `expires_in`: a whole number of seconds
/// (number or decimal string) up to [`MAX_CACHE_LIFETIME`]; negative or unreadable values count as
/// 0 (the token is used for this call and not cached), a missing one as [`DEFAULT_LIFETIME`].
fn cache_lifetime(expires_in: Option<&serde_json::Value>) -> Duration {
    let seconds = match expires_in {
        None | Some(serde_json::Value::Null) => return DEFAULT_LIFETIME,
        Some(serde_json::Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(seconds), _) => Some(seconds),
            // `as` saturates: 1e30 becomes u64::MAX, and is clamped below.
            (None, Some(f)) if f.is_finite() && f >= 0.0 => Some(f as u64),
            (None, Some(f)) if f < 0.0 => Some(0),
            _ => None,
        },
        Some(serde_json::Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(_) => None,
    };
    match seconds {
        Some(seconds) if seconds < MAX_CACHE_LIFETIME.as_secs() => Duration::from_secs(seconds),
        Some(_) => MAX_CACHE_LIFETIME,
        None => {
            // The value came from the network: it is not logged.
            tracing::warn!("the token response's expires_in is not a number of seconds; the token is not cached");
            Duration::ZERO
        }
    }
}

/// When a token that lives `lifetime` from `now` is renewed: [`RENEW_BEFORE`] ahead of its end,
/// never later than `now` plus [`MAX_CACHE_LIFETIME`] (no addition can overflow).
fn renew_at(now: Instant, lifetime: Duration) -> Instant {
    let lifetime = lifetime.min(MAX_CACHE_LIFETIME).saturating_sub(RENEW_BEFORE);
    now.checked_add(lifetime).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use axum::routing::post;
    use serde_json::json;

    use super::*;
    use crate::lifecycle::config::CalloutAuth;

    /// A token endpoint that answers every request with `expires_in`, counting the requests.
    async fn token_endpoint(expires_in: serde_json::Value) -> (String, Arc<AtomicU32>) {
        let requests = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&requests);
        let app = axum::Router::new().route(
            "/{tenant}/oauth2/v2.0/token",
            post(move || {
                let n = counted.fetch_add(1, Ordering::Relaxed) + 1;
                let expires_in = expires_in.clone();
                async move {
                    axum::Json(
                        json!({"token_type": "Bearer", "access_token": format!("t{n}"), "expires_in": expires_in}),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, requests)
    }

    fn client() -> reqwest::Client {
        pwrelay_shared::tls::install_default_provider();
        crate::outbound::client(None, "lifecycle.login_url", Duration::from_secs(5)).expect("http client")
    }

    fn source(login_url: &str, dir: &Path) -> TokenSource {
        let file = dir.join("client.secret");
        std::fs::write(&file, "not-a-real-secret\n").expect("secret file");
        let tenant = TenantConfig {
            tenant_id: "tenant-1".into(),
            callout_auth: CalloutAuth::Entra { audience: "api://x".into(), allowed_app_ids: Vec::new() },
            client_id: "client-1".into(),
            credential: GraphCredential::Secret { file },
            mail_sender: None,
        };
        TokenSource::new(login_url, "https://graph.example", &[tenant]).expect("token source")
    }

    #[tokio::test]
    async fn a_huge_expires_in_from_the_network_is_clamped_not_a_panic() {
        let dir = tempfile::tempdir().expect("dir");
        let http = client();
        for huge in [json!(u64::MAX), json!(1e18), json!(1e300), json!("18446744073709551615")] {
            let (url, requests) = token_endpoint(huge.clone()).await;
            let tokens = source(&url, dir.path());
            // Before: `Instant::now() + Duration::from_secs(u64::MAX)` panicked here.
            let first = tokens.token(&http, "tenant-1").await.expect("a token");
            let again = tokens.token(&http, "tenant-1").await.expect("the cached token");
            assert_eq!(first.expose_secret(), again.expose_secret(), "{huge}: cached");
            assert_eq!(requests.load(Ordering::Relaxed), 1, "{huge}");
            let renew = tokens.cache.lock().await.get("tenant-1").map(|c| c.renew_at).expect("cached");
            assert!(renew <= Instant::now() + MAX_CACHE_LIFETIME, "{huge}: at most a day");
        }
    }

    #[tokio::test]
    async fn a_negative_or_unreadable_expires_in_is_not_cached() {
        let dir = tempfile::tempdir().expect("dir");
        let http = client();
        for odd in [json!(-5), json!(-1e18), json!("soon"), json!(true)] {
            let (url, requests) = token_endpoint(odd.clone()).await;
            let tokens = source(&url, dir.path());
            let first = tokens.token(&http, "tenant-1").await.expect("a token");
            let second = tokens.token(&http, "tenant-1").await.expect("a token");
            assert_ne!(first.expose_secret(), second.expose_secret(), "{odd}: fetched again");
            assert_eq!(requests.load(Ordering::Relaxed), 2, "{odd}");
        }
    }

    #[test]
    fn cache_lifetimes_are_bounded() {
        let day = MAX_CACHE_LIFETIME;
        assert_eq!(cache_lifetime(None), DEFAULT_LIFETIME);
        assert_eq!(cache_lifetime(Some(&json!(3599))), Duration::from_secs(3599));
        assert_eq!(cache_lifetime(Some(&json!("3599"))), Duration::from_secs(3599));
        assert_eq!(cache_lifetime(Some(&json!(3599.7))), Duration::from_secs(3599));
        assert_eq!(cache_lifetime(Some(&json!(u64::MAX))), day);
        assert_eq!(cache_lifetime(Some(&json!(1e18))), day);
        assert_eq!(cache_lifetime(Some(&json!(-1))), Duration::ZERO);
        let now = Instant::now();
        assert_eq!(renew_at(now, Duration::from_secs(u64::MAX)), now + day - RENEW_BEFORE);
        assert_eq!(renew_at(now, Duration::from_secs(60)), now, "shorter than RENEW_BEFORE: renewed at once");
        assert_eq!(renew_at(now, Duration::from_secs(3600)), now + Duration::from_secs(3300));
    }
}
