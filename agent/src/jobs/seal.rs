//! How a generated password leaves the agent encrypted: a libsodium sealed box to the requester's
//! public key (generate jobs), or AES-256-GCM under a fresh random key (initial passwords).
//!
//! The AES-256-GCM form is what a browser's WebCrypto `AES-GCM` decrypt takes: the 12-byte nonce,
//! then the ciphertext with its 16-byte tag appended, no associated data. The key is new for every
//! password, so the nonce is never reused under a key. The plaintext is only ever in zeroizing
//! buffers: it is encrypted in place in the buffer that becomes the result.

use pwrelay_shared::secret::SecretString;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// Bytes of an AES-256-GCM key.
pub const KEY_LEN: usize = 32;

/// Seals `password` to `recipient` (crypto_box_seal); `None` when sealing fails.
pub fn sealed_box(recipient: &crypto_box::PublicKey, password: &SecretString) -> Option<Vec<u8>> {
    recipient.seal(&mut crypto_box::aead::OsRng, password.expose_secret().as_bytes()).ok()
}

/// Encrypts `password` under a fresh random AES-256 key: `nonce ‖ ciphertext ‖ tag` and the key.
/// `None` when the system random generator fails.
pub fn aes_256_gcm(password: &SecretString) -> Option<(Vec<u8>, Zeroizing<[u8; KEY_LEN]>)> {
    let rng = SystemRandom::new();
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    rng.fill(key.as_mut_slice()).ok()?;
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut nonce).ok()?;
    let sealing = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key.as_slice()).ok()?);
    let plaintext = password.expose_secret().as_bytes();
    let mut sealed = Zeroizing::new(Vec::with_capacity(NONCE_LEN + plaintext.len() + AES_256_GCM.tag_len()));
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(plaintext);
    let tag = sealing
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut sealed[NONCE_LEN..])
        .ok()?;
    sealed.extend_from_slice(tag.as_ref());
    // Only ciphertext is left in the buffer (allocated at its final size, so the plaintext was never
    // copied by a reallocation); it no longer needs zeroing.
    let sealed = std::mem::take(&mut *sealed);
    Some((sealed, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(sealed: &[u8], key: &[u8]) -> Option<String> {
        let opening = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).ok()?);
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let mut body = body.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let plain = opening.open_in_place(nonce, Aad::empty(), &mut body).ok()?;
        String::from_utf8(plain.to_vec()).ok()
    }

    #[test]
    fn aes_256_gcm_is_nonce_ciphertext_tag_under_a_fresh_key() {
        let password = SecretString::from("Kx7p-Rm2q-Tz9w-Hj4c");
        let (sealed, key) = aes_256_gcm(&password).expect("sealed");
        assert_eq!(sealed.len(), NONCE_LEN + 19 + 16);
        assert_eq!(open(&sealed, key.as_slice()).as_deref(), Some("Kx7p-Rm2q-Tz9w-Hj4c"));
        let (again, other_key) = aes_256_gcm(&password).expect("sealed");
        assert_ne!(key.as_slice(), other_key.as_slice(), "every password gets its own key");
        assert_ne!(sealed, again);
        assert!(open(&sealed, other_key.as_slice()).is_none(), "another key does not open it");
        let mut tampered = sealed.clone();
        tampered[NONCE_LEN] ^= 1;
        assert!(open(&tampered, key.as_slice()).is_none(), "the tag covers the ciphertext");
    }
}
