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
    #[serde(default)]
    expires_in: Option<u64>,
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
        let lifetime = Duration::from_secs(body.expires_in.unwrap_or(3600));
        let token = SecretString::new(body.access_token);
        cache.insert(
            tenant.to_owned(),
            Cached { token: token.clone(), renew_at: Instant::now() + lifetime.saturating_sub(RENEW_BEFORE) },
        );
        Ok(token)
    }
}
