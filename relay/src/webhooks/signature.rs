//! Webhook signatures: `Pwrelay-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`.
//!
//! The HMAC key is the client's signing secret as shown by `pwrelay clients webhook set` (the
//! whole `whsec_...` text, as UTF-8 bytes); the message is the timestamp, a dot, and the exact
//! request body: `"<t>.<body>"`. Every attempt is signed afresh (a new `t`), over the same body.
//! A receiver recomputes the HMAC, compares in constant time, and refuses timestamps far from its
//! clock (replays).

use base64::Engine as _;
use pwrelay_shared::secret::SecretString;

pub use crate::signature::SignatureError;
use ring::rand::{SecureRandom, SystemRandom};

/// The header with the timestamp and the signature.
pub const SIGNATURE_HEADER: &str = "Pwrelay-Signature";
/// The header with the event id (stable across retries: dedupe on it).
pub const EVENT_ID_HEADER: &str = "Pwrelay-Event-Id";
/// The header with the event name (`job.succeeded`, `job.failed`).
pub const EVENT_HEADER: &str = "Pwrelay-Event";

/// Prefix of every signing secret (lets secret scanners recognise them).
const SECRET_PREFIX: &str = "whsec_";

/// A client's webhook signing secret. Zeroized on drop, `[redacted]` in `Debug`, no `Display`.
#[derive(Clone, Debug)]
pub struct WebhookSecret(SecretString);

impl WebhookSecret {
    /// A new random secret: `whsec_` and 32 random bytes, base64url.
    pub fn generate() -> Result<Self, ring::error::Unspecified> {
        let mut raw = zeroize::Zeroizing::new([0u8; 32]);
        SystemRandom::new().fill(raw.as_mut())?;
        Ok(Self(SecretString::new(format!(
            "{SECRET_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_ref())
        ))))
    }

    /// The secret, to show once or to seal.
    pub fn expose_secret(&self) -> &SecretString {
        &self.0
    }

    fn key_bytes(&self) -> &[u8] {
        self.0.expose_secret().as_bytes()
    }
}

impl From<SecretString> for WebhookSecret {
    fn from(secret: SecretString) -> Self {
        Self(secret)
    }
}

/// The `Pwrelay-Signature` value for `body` sent at `timestamp` (Unix seconds), made by
/// [`crate::signature`], the one implementation the relay signs and checks with.
pub fn sign(secret: &WebhookSecret, timestamp: i64, body: &[u8]) -> String {
    crate::signature::sign(secret.key_bytes(), at(timestamp), body)
}

/// Checks a `Pwrelay-Signature` header against `body`, as a receiver does: the HMAC must match
/// (compared in constant time) and `t` must be within `tolerance_seconds` of `now` (Unix seconds).
pub fn verify(
    secret: &WebhookSecret,
    header: &str,
    body: &[u8],
    now: i64,
    tolerance_seconds: i64,
) -> Result<(), SignatureError> {
    let window = std::time::Duration::from_secs(tolerance_seconds.unsigned_abs());
    crate::signature::verify(secret.key_bytes(), header, body, at(now), window)
}

fn at(unix_seconds: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(unix_seconds).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> WebhookSecret {
        WebhookSecret::from(SecretString::from("whsec_test"))
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body_in_hex() {
        // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_test
        assert_eq!(
            sign(&secret(), 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
    }

    #[test]
    fn verification_checks_the_body_the_secret_and_the_age() {
        let body = br#"{"event":"job.succeeded"}"#;
        let header = sign(&secret(), 1_000, body);
        assert_eq!(verify(&secret(), &header, body, 1_100, 300), Ok(()));
        assert_eq!(verify(&secret(), &header, b"{}", 1_100, 300), Err(SignatureError::Mismatch));
        let other = WebhookSecret::from(SecretString::from("whsec_other"));
        assert_eq!(verify(&other, &header, body, 1_100, 300), Err(SignatureError::Mismatch));
        assert_eq!(verify(&secret(), &header, body, 2_000, 300), Err(SignatureError::Stale(300)));
        assert_eq!(verify(&secret(), "v1=00", body, 1_000, 300), Err(SignatureError::Malformed));
        assert_eq!(verify(&secret(), "t=1000,v1=zz", body, 1_000, 300), Err(SignatureError::Malformed));
    }

    #[test]
    fn secrets_are_random_prefixed_and_redacted() {
        let (a, b) = (WebhookSecret::generate().expect("a"), WebhookSecret::generate().expect("b"));
        assert!(a.expose_secret().expose_secret().starts_with("whsec_"));
        assert!(a.expose_secret().expose_secret().len() > 40);
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert!(!format!("{a:?}").contains("whsec_"));
    }
}
