//! Secret values: passwords, salts, keys and tokens.
//!
//! [`SecretString`] and [`SecretBytes`] zero their memory on drop, print as `[redacted]` in `Debug`,
//! implement neither `Display` nor `Serialize`, and hand their contents out only through an explicit
//! `expose_secret()` call, so every place that touches a secret is visible in review.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// A secret UTF-8 string (a password, a token, a salt).
///
/// Built from a `String` without copying it, so the only copy of the secret is the one that is
/// zeroed on drop.
#[derive(Clone, Default, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps `value`; the `String`'s buffer is taken over, not copied.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret itself. Call it only where the value must be used (an LDAP write, a hash).
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// Whether the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Length in Unicode scalar values (what AD counts for length rules).
    pub fn char_count(&self) -> usize {
        self.0.chars().count()
    }

    /// Takes the contents of `source` (a decoded message field, say) and leaves it empty, so the
    /// secret is not left behind in the message.
    pub fn take_from(source: &mut String) -> Self {
        Self(std::mem::take(source))
    }
}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl From<&str> for SecretString {
    fn from(value: &str) -> Self {
        Self::new(value.to_owned())
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString([redacted])")
    }
}

impl<'de> serde::Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

/// Secret bytes (a key, a nonce-bound ciphertext key, a salt that is not text).
#[derive(Clone, Default, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Wraps `value`; the buffer is taken over, not copied.
    pub fn new(value: Vec<u8>) -> Self {
        Self(value)
    }

    /// The secret bytes themselves.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(value: Vec<u8>) -> Self {
        Self::new(value)
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes([redacted; {} bytes])", self.0.len())
    }
}

/// A scratch buffer that is zeroed when dropped (for encodings of a secret, e.g. UTF-16LE).
pub type ScratchBuffer = Zeroizing<Vec<u8>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = SecretString::from("Hunter2!Hunter2!");
        assert_eq!(format!("{s:?}"), "SecretString([redacted])");
        let b = SecretBytes::from(b"key-material".to_vec());
        assert!(!format!("{b:?}").contains("key-material"));
        let wrapped = Some(s);
        assert!(!format!("{wrapped:?}").contains("Hunter2"));
    }

    #[test]
    fn take_from_leaves_the_source_empty() {
        let mut field = String::from("S3cret!value");
        let s = SecretString::take_from(&mut field);
        assert!(field.is_empty());
        assert_eq!(s.expose_secret(), "S3cret!value");
        assert_eq!(s.char_count(), 12);
    }

    #[test]
    fn deserializes_from_json_string() {
        let s: SecretString = serde_json_free_parse("\"abc\"");
        assert_eq!(s.expose_secret(), "abc");
    }

    // Minimal deserializer check without pulling serde_json into this crate's dependencies.
    fn serde_json_free_parse(input: &str) -> SecretString {
        use serde::de::IntoDeserializer;
        let value: serde::de::value::StringDeserializer<serde::de::value::Error> =
            input.trim_matches('"').to_owned().into_deserializer();
        SecretString::deserialize(value).expect("a string deserializes")
    }

    use serde::Deserialize;
}
