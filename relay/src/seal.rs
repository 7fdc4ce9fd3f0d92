//! Encryption of secrets at rest in the job store.
//!
//! AES-256-GCM with a 32-byte key read from the file named by `store.key_file`. Each sealed value
//! is `version (1 byte) || nonce (12 bytes) || ciphertext+tag`, bound to its job id as associated
//! data, so a ciphertext copied onto another job does not open.

use std::path::Path;

use base64::Engine as _;
use pwrelay_shared::secret::{SecretBytes, SecretString};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

const FORMAT_V1: u8 = 1;
const KEY_LEN: usize = 32;

/// Why sealing or opening failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key file is missing or malformed.
    #[error("store.key_file {path}: {reason}")]
    Key {
        /// The key file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The ciphertext does not open with this key (wrong key, or tampered data).
    #[error("a sealed secret does not open with the configured store key (was store.key_file changed?)")]
    Open,
    /// The random generator failed.
    #[error("the system random generator failed")]
    Random,
}

/// What the fingerprint key is derived for (HMAC-SHA256 of this label under the store key).
const FINGERPRINT_LABEL: &[u8] = b"pwrelay idempotency fingerprint v1";

/// What the status page's session key is derived for (HMAC-SHA256 of this label under the store
/// key): every replica with the same store key accepts the same sessions.
const SESSION_LABEL: &[u8] = b"pwrelay status session v1";

/// Seals and opens secrets with the store key, and fingerprints request bodies and signs status
/// page sessions with keys derived from it.
pub struct Sealer {
    key: LessSafeKey,
    fingerprint_key: ring::hmac::Key,
    session_key: ring::hmac::Key,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer([redacted])")
    }
}

impl Sealer {
    /// Loads the key file: 32 random bytes, base64 (standard alphabet) on one line.
    pub fn from_key_file(path: &Path) -> Result<Self, SealError> {
        let key_err = |reason: String| SealError::Key { path: path.display().to_string(), reason };
        let text = SecretString::new(std::fs::read_to_string(path).map_err(|e| {
            key_err(format!(
                "cannot be read ({e}); create one with `pwrelay store-key generate --out {}`",
                path.display()
            ))
        })?);
        let bytes = SecretBytes::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.expose_secret().trim())
                .map_err(|_| key_err("is not base64 text".into()))?,
        );
        if bytes.len() != KEY_LEN {
            return Err(key_err(format!("must hold {KEY_LEN} bytes, holds {}", bytes.len())));
        }
        Self::from_key(&bytes)
    }

    /// Builds a sealer from raw key bytes (32).
    pub fn from_key(key: &SecretBytes) -> Result<Self, SealError> {
        let unbound = UnboundKey::new(&AES_256_GCM, key.expose_secret())
            .map_err(|_| SealError::Key { path: "<key>".into(), reason: format!("must hold {KEY_LEN} bytes") })?;
        let master = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.expose_secret());
        let derive =
            |label: &[u8]| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, ring::hmac::sign(&master, label).as_ref());
        Ok(Self {
            key: LessSafeKey::new(unbound),
            fingerprint_key: derive(FINGERPRINT_LABEL),
            session_key: derive(SESSION_LABEL),
            rng: SystemRandom::new(),
        })
    }

    /// The tag of a status page session's text, under the session key derived from the store key.
    pub fn session_tag(&self, session: &[u8]) -> [u8; 32] {
        let tag = ring::hmac::sign(&self.session_key, session);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Whether `tag` is the session key's tag of `session` (compared in constant time).
    pub fn session_tag_matches(&self, session: &[u8], tag: &[u8]) -> bool {
        ring::hmac::verify(&self.session_key, session, tag).is_ok()
    }

    /// The fingerprint stored with an idempotency key: an HMAC of the request body's SHA-256
    /// under a key derived from the store key. A body holds a password, and its plain digest at
    /// rest could be tested against guesses; this one only by someone holding the store key.
    pub fn fingerprint(&self, body_sha256: &[u8; 32]) -> [u8; 32] {
        let tag = ring::hmac::sign(&self.fingerprint_key, body_sha256);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// A new random key file body (base64 text with a newline).
    pub fn generate_key_text() -> Result<SecretString, SealError> {
        let mut raw = vec![0u8; KEY_LEN];
        let filled = SystemRandom::new().fill(&mut raw);
        let key = SecretBytes::new(raw);
        filled.map_err(|_| SealError::Random)?;
        Ok(SecretString::new(format!("{}\n", base64::engine::general_purpose::STANDARD.encode(key.expose_secret()))))
    }

    /// Seals `secret` for the record `context` (the job id).
    pub fn seal(&self, context: &str, secret: &SecretString) -> Result<Vec<u8>, SealError> {
        self.seal_bytes(context, secret.expose_secret().as_bytes())
    }

    /// Seals bytes for the record `context`.
    pub fn seal_bytes(&self, context: &str, secret: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut buffer = Vec::with_capacity(1 + NONCE_LEN + secret.len() + AES_256_GCM.tag_len());
        buffer.push(FORMAT_V1);
        buffer.extend_from_slice(&nonce);
        let mut body = secret.to_vec();
        let sealed = self.key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(context.as_bytes()),
            &mut body,
        );
        if sealed.is_err() {
            zeroize::Zeroize::zeroize(&mut body);
            return Err(SealError::Open);
        }
        buffer.extend_from_slice(&body);
        Ok(buffer)
    }

    /// Opens a value sealed for `context`.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<SecretString, SealError> {
        let plain = self.open_bytes(context, sealed)?;
        let text = std::str::from_utf8(&plain).map_err(|_| SealError::Open)?;
        Ok(SecretString::from(text))
    }

    /// Opens bytes sealed for `context`.
    pub fn open_bytes(&self, context: &str, sealed: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, SealError> {
        let (&version, rest) = sealed.split_first().ok_or(SealError::Open)?;
        if version != FORMAT_V1 || rest.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
        let mut buffer = zeroize::Zeroizing::new(ciphertext.to_vec());
        let len = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buffer)
            .map_err(|_| SealError::Open)?
            .len();
        buffer.truncate(len);
        Ok(buffer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> Sealer {
        Sealer::from_key(&SecretBytes::new(vec![7u8; KEY_LEN])).expect("key")
    }

    #[test]
    fn fingerprints_are_keyed_by_the_store_key_and_stable() {
        let digest = [9u8; 32];
        let s = sealer();
        assert_eq!(s.fingerprint(&digest), sealer().fingerprint(&digest), "the same key, the same fingerprint");
        assert_ne!(s.fingerprint(&digest), digest);
        assert_ne!(s.fingerprint(&digest), s.fingerprint(&[8u8; 32]));
        let other = Sealer::from_key(&SecretBytes::new(vec![8u8; KEY_LEN])).expect("key");
        assert_ne!(other.fingerprint(&digest), s.fingerprint(&digest), "another store key, another fingerprint");
    }

    #[test]
    fn session_tags_use_their_own_key_derived_from_the_store_key() {
        let s = sealer();
        let tag = s.session_tag(b"ops.1700000000");
        assert!(s.session_tag_matches(b"ops.1700000000", &tag));
        assert!(!s.session_tag_matches(b"ops.1700000001", &tag));
        assert!(!s.session_tag_matches(b"ops.1700000000", &tag[..31]));
        assert_ne!(tag, s.fingerprint(&[0u8; 32]), "not the fingerprint key");
        let mut digest = [0u8; 32];
        digest[..14].copy_from_slice(b"ops.1700000000");
        assert_ne!(s.session_tag(&digest), s.fingerprint(&digest), "a separate derivation");
        let other = Sealer::from_key(&SecretBytes::new(vec![8u8; KEY_LEN])).expect("key");
        assert!(!other.session_tag_matches(b"ops.1700000000", &tag), "another store key, another session key");
    }

    #[test]
    fn seals_and_opens_bound_to_context() {
        let s = sealer();
        let sealed = s.seal("job-1", &SecretString::from("P@ssw0rd!x")).expect("seal");
        assert!(!sealed.windows(10).any(|w| w == b"P@ssw0rd!x"), "plaintext must not appear");
        assert_eq!(s.open("job-1", &sealed).expect("open").expose_secret(), "P@ssw0rd!x");
        assert!(matches!(s.open("job-2", &sealed), Err(SealError::Open)));
        let other = Sealer::from_key(&SecretBytes::new(vec![8u8; KEY_LEN])).expect("key");
        assert!(matches!(other.open("job-1", &sealed), Err(SealError::Open)));
        assert!(matches!(s.open("job-1", &[]), Err(SealError::Open)));
        assert!(matches!(s.open("job-1", &sealed[..5]), Err(SealError::Open)));
    }

    #[test]
    fn key_files_are_validated() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("store.key");
        assert!(Sealer::from_key_file(&path).expect_err("missing").to_string().contains("pwrelay store-key generate"));
        std::fs::write(&path, "c2hvcnQ=\n").expect("write");
        assert!(Sealer::from_key_file(&path).expect_err("short").to_string().contains("32 bytes"));
        std::fs::write(&path, Sealer::generate_key_text().expect("gen").expose_secret()).expect("write");
        assert!(Sealer::from_key_file(&path).is_ok());
    }
}
