//! Who may post a Lifecycle Workflows callout: per tenant, either an Entra-issued bearer token
//! (the Logic App's managed identity) checked against the tenant's published keys, or an HMAC
//! signature over the body with a timestamp ([`crate::signature`]).
//!
//! Token checks: RS256 only, signed by a key of the tenant's JWKS (fetched and cached; refreshed
//! when a token names an unknown key, at most once a minute), `iss` the tenant's v2 or v1 issuer,
//! `aud` the configured audience, `exp`/`nbf` with 60 s leeway, `tid` the tenant, and the
//! caller's app id (`azp`, or `appid` in v1 tokens) on the allow-list.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use pwrelay_shared::secret::SecretBytes;
use serde::Deserialize;

use super::config::{CalloutAuth, LifecycleConfig};
use crate::signature::{self, SignatureError};
use crate::untrusted::Untrusted;

/// Least time between two JWKS fetches of a tenant.
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(60);
/// Cached keys are fetched again after this long.
const JWKS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Why a callout was refused (each becomes 401 with [`CalloutAuthError::public_message`]).
///
/// Values taken from the token (its tenant, app id, key id) are shown through [`Untrusted`]: the
/// refusal is logged, and a forged token must not be able to write a line of its own there.
#[derive(Debug, thiserror::Error)]
pub enum CalloutAuthError {
    /// Neither a token nor a signature.
    #[error("authenticate the callout with an Entra token (Authorization: Bearer ...) or a Pwrelay-Signature header")]
    Missing,
    /// The token is malformed or fails a check; the reason is a fixed text.
    #[error("the bearer token is not accepted: {0}")]
    Token(&'static str),
    /// The token names a key the tenant does not publish.
    #[error("the bearer token is not accepted: key {} is not among the tenant's signing keys", Untrusted(.0))]
    UnknownKey(String),
    /// The token's tenant is not configured.
    #[error("tenant {} is not configured under [[lifecycle.tenants]]", Untrusted(.0))]
    UnknownTenant(String),
    /// The token's caller is not allowed.
    #[error("app id {} is not in allowed_app_ids of its tenant", Untrusted(.0))]
    AppNotAllowed(String),
    /// The signature is refused.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The tenant's keys cannot be fetched right now.
    #[error("the tenant's signing keys cannot be fetched ({0}); try again later")]
    KeysUnavailable(String),
}

/// A fixed reason for a token jsonwebtoken refused: its own messages can quote the token (an
/// unknown `alg` comes back whole).
fn token_refusal(e: &jsonwebtoken::errors::Error) -> CalloutAuthError {
    use jsonwebtoken::errors::ErrorKind;
    CalloutAuthError::Token(match e.kind() {
        ErrorKind::ExpiredSignature => "it has expired",
        ErrorKind::ImmatureSignature => "it is not valid yet (nbf)",
        ErrorKind::InvalidAudience => "its audience (aud) is not this relay's",
        ErrorKind::InvalidIssuer => "its issuer (iss) is not the tenant's",
        ErrorKind::InvalidSignature => "its signature does not verify",
        ErrorKind::MissingRequiredClaim(_) => "it lacks exp, aud or iss",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "its algorithm is not accepted; Entra signs RS256"
        }
        ErrorKind::InvalidKeyFormat | ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidEcdsaKey => {
            "the tenant's key cannot check it"
        }
        _ => "it is not a well-formed JWT",
    })
}

/// A tenant's HMAC secret, read at start-up.
struct HmacTenant {
    tenant_id: String,
    secret: SecretBytes,
    window: Duration,
}

struct CachedKeys {
    /// `None` when the fetch failed.
    keys: Option<JwkSet>,
    fetched: Instant,
}

/// Checks callouts.
pub struct CalloutAuthenticator {
    http: reqwest::Client,
    login_url: String,
    entra: HashMap<String, (String, Vec<String>)>,
    hmac: Vec<HmacTenant>,
    keys: tokio::sync::Mutex<HashMap<String, CachedKeys>>,
}

impl std::fmt::Debug for CalloutAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CalloutAuthenticator").field("entra_tenants", &self.entra.len()).finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct UnverifiedClaims {
    #[serde(default)]
    tid: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    tid: Option<String>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    appid: Option<String>,
}

impl CalloutAuthError {
    /// The text for the caller: without which tenants and apps are configured, and without any
    /// value from the token.
    pub fn public_message(&self) -> String {
        match self {
            Self::UnknownTenant(_) | Self::AppNotAllowed(_) => {
                "the bearer token's tenant or app is not allowed to send callouts to this relay".into()
            }
            Self::UnknownKey(_) => {
                "the bearer token is not accepted: its key (kid) is not among the tenant's signing keys".into()
            }
            other => other.to_string(),
        }
    }
}

impl CalloutAuthenticator {
    /// Reads the HMAC secrets of the configured tenants.
    pub fn new(config: &LifecycleConfig, http: reqwest::Client) -> Result<Self, String> {
        let mut entra = HashMap::new();
        let mut hmac = Vec::new();
        for (i, tenant) in config.tenants.iter().enumerate() {
            match &tenant.callout_auth {
                CalloutAuth::Entra { audience, allowed_app_ids } => {
                    entra.insert(tenant.tenant_id.clone(), (audience.clone(), allowed_app_ids.clone()));
                }
                CalloutAuth::Hmac { secret_file, window } => {
                    let text = std::fs::read_to_string(secret_file).map_err(|e| {
                        format!("lifecycle.tenants[{i}].hmac_secret_file {}: {e}", secret_file.display())
                    })?;
                    let secret = SecretBytes::new(text.trim().as_bytes().to_vec());
                    if secret.len() < 32 {
                        return Err(format!(
                            "lifecycle.tenants[{i}].hmac_secret_file {}: use a secret of at least 32 characters",
                            secret_file.display()
                        ));
                    }
                    hmac.push(HmacTenant { tenant_id: tenant.tenant_id.clone(), secret, window: *window });
                }
            }
        }
        Ok(Self {
            http,
            login_url: config.login_url.clone(),
            entra,
            hmac,
            keys: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The tenant a callout comes from, if its credentials hold: `bearer` is the token of an
    /// `Authorization: Bearer` header (the scheme in any case), `signature` the
    /// `Pwrelay-Signature` header.
    pub async fn authenticate(
        &self,
        bearer: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<String, CalloutAuthError> {
        if let Some(token) = bearer {
            return self.token(token).await;
        }
        let Some(header) = signature else { return Err(CalloutAuthError::Missing) };
        let mut last = CalloutAuthError::Missing;
        for tenant in &self.hmac {
            match signature::verify(tenant.secret.expose_secret(), header, body, SystemTime::now(), tenant.window) {
                Ok(()) => return Ok(tenant.tenant_id.clone()),
                Err(e) => last = e.into(),
            }
        }
        Err(last)
    }

    async fn token(&self, token: &str) -> Result<String, CalloutAuthError> {
        let bad = |e: jsonwebtoken::errors::Error| token_refusal(&e);
        let header = jsonwebtoken::decode_header(token).map_err(bad)?;
        if header.alg != Algorithm::RS256 {
            return Err(CalloutAuthError::Token("its algorithm is not accepted; Entra signs RS256"));
        }
        let kid = header.kid.ok_or(CalloutAuthError::Token("it names no key (kid)"))?;
        // The tenant decides which keys to check with; nothing else is trusted before the check.
        let unverified: UnverifiedClaims = jsonwebtoken::dangerous::insecure_decode_claims(token).map_err(bad)?;
        let tenant =
            unverified.tid.map(|t| t.to_ascii_lowercase()).ok_or(CalloutAuthError::Token("it has no tenant (tid)"))?;
        let Some((audience, allowed)) = self.entra.get(&tenant) else {
            return Err(CalloutAuthError::UnknownTenant(tenant));
        };
        let key = self.key(&tenant, &kid).await?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[
            format!("https://login.microsoftonline.com/{tenant}/v2.0"),
            format!("https://sts.windows.net/{tenant}/"),
        ]);
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        validation.validate_nbf = true;
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(bad)?.claims;
        if claims.tid.as_deref().map(str::to_ascii_lowercase).as_deref() != Some(tenant.as_str()) {
            return Err(CalloutAuthError::Token("its tid changed between checks"));
        }
        let app = claims.azp.or(claims.appid).unwrap_or_default();
        if !allowed.iter().any(|a| a.eq_ignore_ascii_case(&app)) {
            return Err(CalloutAuthError::AppNotAllowed(app));
        }
        Ok(tenant)
    }

    async fn key(&self, tenant: &str, kid: &str) -> Result<DecodingKey, CalloutAuthError> {
        let unknown = || CalloutAuthError::UnknownKey(kid.to_owned());
        // One fetch at a time: callouts that miss together wait for the same answer, and a failed
        // fetch is not repeated within JWKS_MIN_REFRESH.
        let mut keys = self.keys.lock().await;
        let cached = keys.get(tenant).map(|c| (c.keys.as_ref().map(|k| k.find(kid).cloned()), c.fetched.elapsed()));
        let jwk = match cached {
            Some((Some(Some(jwk)), age)) if age < JWKS_MAX_AGE => jwk,
            Some((Some(None), age)) if age < JWKS_MIN_REFRESH => return Err(unknown()),
            Some((None, age)) if age < JWKS_MIN_REFRESH => {
                return Err(CalloutAuthError::KeysUnavailable("the last fetch failed moments ago".into()));
            }
            _ => {
                let fetched = self.fetch(tenant).await;
                let jwk = fetched.as_ref().ok().and_then(|k| k.find(kid).cloned());
                let (cached, result) = match fetched {
                    Ok(set) => (Some(set), Ok(())),
                    Err(e) => (None, Err(e)),
                };
                keys.insert(tenant.to_owned(), CachedKeys { keys: cached, fetched: Instant::now() });
                result?;
                jwk.ok_or_else(unknown)?
            }
        };
        DecodingKey::from_jwk(&jwk).map_err(|e| token_refusal(&e))
    }

    async fn fetch(&self, tenant: &str) -> Result<JwkSet, CalloutAuthError> {
        let url = format!("{}/{tenant}/discovery/v2.0/keys", self.login_url);
        let unavailable = |e: reqwest::Error| CalloutAuthError::KeysUnavailable(e.without_url().to_string());
        let response = self.http.get(&url).send().await.map_err(unavailable)?;
        if !response.status().is_success() {
            return Err(CalloutAuthError::KeysUnavailable(format!("{url} answered {}", response.status())));
        }
        let keys: JwkSet = response.json().await.map_err(unavailable)?;
        tracing::info!(tenant, keys = keys.keys.len(), "fetched the tenant's token signing keys");
        Ok(keys)
    }
}
