//! API client authentication: `Authorization: Bearer pwr_...`.
//!
//! Tokens are 32 random bytes, shown once by `pwrelay clients add`; the store keeps only their
//! SHA-256, and lookups are by that hash, so the store never holds a usable token.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::Engine as _;
use pwrelay_shared::secret::SecretString;
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

use super::ApiState;
use super::edge::ClientIp;
use super::error::ApiError;
use crate::audit::{Event, Kind};
use crate::store::ApiClient;

/// Prefix of every token (lets secret scanners recognise them).
const TOKEN_PREFIX: &str = "pwr_";

/// A new token and its hash.
pub fn new_token() -> Result<(SecretString, [u8; 32]), ring::error::Unspecified> {
    let mut raw = zeroize::Zeroizing::new([0u8; 32]);
    SystemRandom::new().fill(raw.as_mut())?;
    let token = SecretString::new(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_ref())
    ));
    let hash = token_hash(&token);
    Ok((token, hash))
}

/// The stored form of a token.
pub fn token_hash(token: &SecretString) -> [u8; 32] {
    Sha256::digest(token.expose_secret().as_bytes()).into()
}

/// The authenticated API client of a request.
#[derive(Debug, Clone)]
pub struct Authenticated(pub ApiClient);

/// The token of an `Authorization: Bearer <token>` value. The scheme is case-insensitive
/// (RFC 9110 §11.1): `bearer`, `BEARER` and `Bearer` are one scheme.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl FromRequestParts<Arc<ApiState>> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<ApiState>) -> Result<Self, Self::Rejection> {
        let refused = |reason: &'static str| {
            let event = Event::new(Kind::TokenRefused).detail("reason", reason);
            let event = match parts.extensions.get::<ClientIp>() {
                Some(ClientIp(address)) => event.address(*address),
                None => event,
            };
            state.audit.record(event.untrusted("path", parts.uri.path()));
        };
        let Some(header) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
            refused("no_token");
            return Err(ApiError::unauthenticated("send an API token as Authorization: Bearer <token>"));
        };
        let Some(token) = header.to_str().ok().and_then(bearer_token).map(SecretString::from) else {
            refused("malformed");
            return Err(ApiError::unauthenticated("the Authorization header must be Bearer <token>"));
        };
        let client = match state.store.client_by_token(token_hash(&token)).await {
            Ok(Some(client)) => client,
            Ok(None) => {
                refused("unknown_token");
                return Err(ApiError::unauthenticated("unknown API token; create one with `pwrelay clients add NAME`"));
            }
            Err(e) => return Err(ApiError::unavailable(&e)),
        };
        state.edge.admit_client(&client.name)?;
        Ok(Self(client))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer pwr_abc"), Some("pwr_abc"));
        assert_eq!(bearer_token("bearer pwr_abc"), Some("pwr_abc"));
        assert_eq!(bearer_token("BEARER   pwr_abc "), Some("pwr_abc"));
        assert_eq!(bearer_token("Basic dXNlcjpwYXNz"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearerpwr_abc"), None);
    }
}
