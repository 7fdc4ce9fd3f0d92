//! Request signatures shared by everything that signs or checks a body with a shared secret:
//! `Pwrelay-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
//!
//! The timestamp is inside the signed text, so a captured request cannot be replayed with a new
//! time, and a receiver refuses times outside its window. Several `v1=` values may be sent while a
//! secret is being rolled over; one matching is enough.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::hmac;

/// The header carrying the signature.
pub const HEADER: &str = "pwrelay-signature";

/// Why a signature was refused. The texts are safe to return to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No or malformed header.
    #[error("send the body's signature as Pwrelay-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>")]
    Malformed,
    /// The timestamp is outside the window (a replay, or a clock off by too much).
    #[error("the signature's timestamp is more than {0} s away from the relay's clock; sign each request afresh")]
    Stale(u64),
    /// No `v1` value matches.
    #[error("the signature does not match the body and the shared secret")]
    Mismatch,
}

/// The header value for `body` signed at `at`.
pub fn sign(secret: &[u8], at: SystemTime, body: &[u8]) -> String {
    let t = unix_seconds(at);
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), &signed_text(t, body));
    format!("t={t},v1={}", hex(tag.as_ref()))
}

/// Checks `header` for `body` against `secret`, accepting timestamps within `window` of `now`.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: SystemTime,
    window: Duration,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut tags = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => timestamp = Some(v.parse::<u64>().map_err(|_| SignatureError::Malformed)?),
            Some(("v1", v)) => tags.push(unhex(v).ok_or(SignatureError::Malformed)?),
            _ => {}
        }
    }
    let (Some(t), false) = (timestamp, tags.is_empty()) else { return Err(SignatureError::Malformed) };
    if unix_seconds(now).abs_diff(t) > window.as_secs() {
        return Err(SignatureError::Stale(window.as_secs()));
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let text = signed_text(t, body);
    if tags.iter().any(|tag| hmac::verify(&key, &text, tag).is_ok()) { Ok(()) } else { Err(SignatureError::Mismatch) }
}

fn signed_text(t: u64, body: &[u8]) -> Vec<u8> {
    let mut text = format!("{t}.").into_bytes();
    text.extend_from_slice(body);
    text
}

fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || text.len() > 128 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(300);

    #[test]
    fn a_signature_verifies_and_any_change_breaks_it() {
        let now = SystemTime::now();
        let header = sign(b"secret", now, b"{\"a\":1}");
        assert!(header.starts_with("t=") && header.contains(",v1="), "{header}");
        assert_eq!(verify(b"secret", &header, b"{\"a\":1}", now, WINDOW), Ok(()));
        assert_eq!(verify(b"secret", &header, b"{\"a\":2}", now, WINDOW), Err(SignatureError::Mismatch));
        assert_eq!(verify(b"other", &header, b"{\"a\":1}", now, WINDOW), Err(SignatureError::Mismatch));
        let moved = header.replacen("t=", "t=1", 1);
        assert!(verify(b"secret", &moved, b"{\"a\":1}", now, WINDOW).is_err());
    }

    #[test]
    fn old_timestamps_and_junk_are_refused() {
        let then = SystemTime::now() - Duration::from_secs(301);
        let header = sign(b"secret", then, b"x");
        assert_eq!(verify(b"secret", &header, b"x", SystemTime::now(), WINDOW), Err(SignatureError::Stale(300)));
        for junk in ["", "t=1", "v1=00", "t=x,v1=00", "t=1,v1=zz", "t=1,v1=0"] {
            assert_eq!(
                verify(b"secret", junk, b"x", SystemTime::now(), WINDOW),
                Err(SignatureError::Malformed),
                "{junk}"
            );
        }
    }

    #[test]
    fn the_known_vector_matches() {
        // HMAC-SHA256("key", "1700000000.body"), computed independently with Python's hmac module.
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let header = sign(b"key", at, b"body");
        assert_eq!(header, format!("t=1700000000,v1={}", EXPECTED));
    }

    const EXPECTED: &str = "47b6ce0fca59474308e2921c247cb2493dce6b8101d90ac05bd0c6a37d0e046e";
}
