//! Webhook signatures: `Pwrelay-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`.
//!
//! The HMAC key is the client's signing secret as shown by `pwrelay clients webhook set` (the
//! whole `whsec_...` text, as UTF-8 bytes); the message is the timestamp, a dot, and the exact
//! request body: `"<t>.<body>"`. Every attempt is signed afresh (a new `t`), over the same body.
//! A receiver recomputes the HMAC, compares in constant time, and refuses timestamps far from its
//! clock (replays).

use std::fmt::Write as _;

use base64::Engine as _;
use pwrelay_shared::secret::SecretString;
use ring::hmac;
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

    fn key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, self.0.expose_secret().as_bytes())
    }
}

impl From<SecretString> for WebhookSecret {
    fn from(secret: SecretString) -> Self {
        Self(secret)
    }
}

/// The `Pwrelay-Signature` value for `body` sent at `timestamp` (Unix seconds).
pub fn sign(secret: &WebhookSecret, timestamp: i64, body: &[u8]) -> String {
    let tag = hmac::sign(&secret.key(), &signed_message(timestamp, body));
    let mut header = format!("t={timestamp},v1=");
    for byte in tag.as_ref() {
        // Writing to a String cannot fail.
        let _ = write!(header, "{byte:02x}");
    }
    header
}

/// Why a signature was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// The header is not `t=<digits>,v1=<hex>`.
    #[error("the Pwrelay-Signature header is not t=<unix seconds>,v1=<hex>")]
    Malformed,
    /// The timestamp is further from now than the tolerance.
    #[error("the signature timestamp is outside the tolerance (a replay, or a wrong clock)")]
    Stale,
    /// No `v1` signature matches.
    #[error("the signature does not match the body and the secret")]
    Mismatch,
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
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = Some(t.parse::<i64>().map_err(|_| SignatureError::Malformed)?),
            Some(("v1", hex)) => signatures.push(decode_hex(hex).ok_or(SignatureError::Malformed)?),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if now.abs_diff(timestamp) > tolerance_seconds.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    let message = signed_message(timestamp, body);
    let key = secret.key();
    if signatures.iter().any(|s| hmac::verify(&key, &message, s).is_ok()) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

fn signed_message(timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut message = format!("{timestamp}.").into_bytes();
    message.extend_from_slice(body);
    message
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
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
        assert_eq!(verify(&secret(), &header, body, 2_000, 300), Err(SignatureError::Stale));
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
