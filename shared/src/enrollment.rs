//! One-time enrollment tokens: what `pwrelay agents enroll-token` prints and `pwrelay-agent
//! enroll` presents.
//!
//! A token is `pwre1_` followed by the unpadded base64url of 80 bytes: a 16-byte token id, a
//! 32-byte secret, and the SHA-256 of the DER of the CA the agent must trust for the relay's
//! link certificate. The relay keeps only the id and the secret's SHA-256; the agent uses the
//! fingerprint to pin the relay without a copied `ca.pem` (as kubeadm's discovery-token CA hash
//! does).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use zeroize::Zeroizing;

use crate::secret::SecretString;

/// What every token starts with (version 1 of the format).
pub const TOKEN_PREFIX: &str = "pwre1_";
/// Length of a token's id.
pub const ID_LEN: usize = 16;
/// Length of a token's secret.
pub const SECRET_LEN: usize = 32;
/// Length of the CA fingerprint (SHA-256).
pub const FINGERPRINT_LEN: usize = 32;

/// Why a token cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not a token of this format.
    #[error("the enrollment token is malformed; copy it whole as `pwrelay agents enroll-token` printed it (pwre1_...)")]
    Malformed,
    /// The OS random generator failed.
    #[error("the system random generator failed")]
    Random,
}

/// A token's id: names the stored token, not secret by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenId(pub [u8; ID_LEN]);

impl TokenId {
    /// The id as lower-case hexadecimal (how the store keys it).
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Display for TokenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.hex())
    }
}

/// A parsed enrollment token.
pub struct EnrollmentToken {
    /// Which stored token this is.
    pub id: TokenId,
    secret: Zeroizing<[u8; SECRET_LEN]>,
    /// SHA-256 of the DER of the CA that issued the relay's link certificate.
    pub ca_fingerprint: [u8; FINGERPRINT_LEN],
}

impl std::fmt::Debug for EnrollmentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollmentToken").field("id", &self.id).field("secret", &"[redacted]").finish()
    }
}

impl EnrollmentToken {
    /// A fresh token with a random id and secret, pinning the CA with `ca_fingerprint`.
    pub fn generate(ca_fingerprint: [u8; FINGERPRINT_LEN]) -> Result<Self, TokenError> {
        let rng = SystemRandom::new();
        let mut id = [0u8; ID_LEN];
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        rng.fill(&mut id).map_err(|_| TokenError::Random)?;
        rng.fill(secret.as_mut()).map_err(|_| TokenError::Random)?;
        Ok(Self { id: TokenId(id), secret, ca_fingerprint })
    }

    /// Reads a token as printed (surrounding white space is ignored).
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let body = text.trim().strip_prefix(TOKEN_PREFIX).ok_or(TokenError::Malformed)?;
        let bytes = Zeroizing::new(URL_SAFE_NO_PAD.decode(body).map_err(|_| TokenError::Malformed)?);
        if bytes.len() != ID_LEN + SECRET_LEN + FINGERPRINT_LEN {
            return Err(TokenError::Malformed);
        }
        let (id, rest) = bytes.split_at(ID_LEN);
        let (secret_bytes, fingerprint) = rest.split_at(SECRET_LEN);
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        secret.copy_from_slice(secret_bytes);
        let mut token = Self { id: TokenId([0; ID_LEN]), secret, ca_fingerprint: [0; FINGERPRINT_LEN] };
        token.id.0.copy_from_slice(id);
        token.ca_fingerprint.copy_from_slice(fingerprint);
        Ok(token)
    }

    /// The token as the operator copies it.
    pub fn to_text(&self) -> SecretString {
        let mut bytes = Zeroizing::new(Vec::with_capacity(ID_LEN + SECRET_LEN + FINGERPRINT_LEN));
        bytes.extend_from_slice(&self.id.0);
        bytes.extend_from_slice(self.secret.as_ref());
        bytes.extend_from_slice(&self.ca_fingerprint);
        SecretString::new(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes.as_slice())))
    }

    /// SHA-256 of the secret: what the store keeps and compares.
    pub fn secret_sha256(&self) -> [u8; 32] {
        sha256(self.secret.as_ref())
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The fingerprint of the first certificate in `pem` (SHA-256 of its DER); `None` when `pem`
/// holds no certificate.
pub fn ca_fingerprint(pem: &str) -> Option<[u8; FINGERPRINT_LEN]> {
    let first: CertificateDer<'static> = CertificateDer::pem_slice_iter(pem.as_bytes()).next()?.ok()?;
    Some(sha256(first.as_ref()))
}

/// A fingerprint as `sha256:` and lower-case hexadecimal, for messages.
pub fn fingerprint_text(fingerprint: &[u8; FINGERPRINT_LEN]) -> String {
    let hex: String = fingerprint.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_hides_its_secret() {
        let token = EnrollmentToken::generate([7; 32]).expect("token");
        let text = token.to_text();
        assert!(text.expose_secret().starts_with(TOKEN_PREFIX));
        let parsed = EnrollmentToken::parse(text.expose_secret()).expect("parse");
        assert_eq!(parsed.id, token.id);
        assert_eq!(parsed.ca_fingerprint, [7; 32]);
        assert_eq!(parsed.secret_sha256(), token.secret_sha256());
        assert!(!format!("{parsed:?}").contains(&text.expose_secret()[10..30]));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in ["", "pwre1_", "pwre2_AAAA", "pwre1_!!!!", "pwre1_AAAA"] {
            assert!(matches!(EnrollmentToken::parse(bad), Err(TokenError::Malformed)), "{bad}");
        }
    }
}
