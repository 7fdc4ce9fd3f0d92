//! Seed-compatible derivation of the PAM-known password (seed 000, `New-Pbkdf2Hash`).
//!
//! `base64(PBKDF2-HMAC-<hash>(password = UTF-8(upn, optionally lower- or upper-cased),
//! salt = UTF-8(shared secret), iterations, length))`, by default SHA-512, 1000 iterations and
//! 60 bytes (80 base64 characters). .NET's `Rfc2898DeriveBytes.GetBytes(n)` is standard PBKDF2
//! with `dkLen = n`, so the output is byte-identical to the PowerShell side; like .NET, salts
//! shorter than 8 bytes are refused.
//!
//! Case mapping is per character and one-to-one (Unicode simple case mapping, as .NET's
//! `ToLowerInvariant` / `ToUpperInvariant`): `ß` stays `ß` when upper-casing, `İ` becomes `i`.
//!
//! The computation uses the RustCrypto `pbkdf2` and `sha2` crates (measured faster here than both
//! ring and OpenSSL, see BENCHMARKS.md); the tests cross-check it with ring's independent PBKDF2
//! and with vectors from Python's `hashlib` (OpenSSL).

use base64::Engine as _;
use sha2::{Sha256, Sha512};
use zeroize::Zeroizing;

use crate::secret::SecretString;

/// Fewest salt bytes accepted (the .NET `Rfc2898DeriveBytes` minimum).
pub const MIN_SALT_BYTES: usize = 8;
/// Most output bytes accepted.
pub const MAX_OUTPUT_BYTES: usize = 1024;
/// Most iterations accepted (a typo guard: ten million SHA-512 iterations take seconds).
pub const MAX_ITERATIONS: u32 = 10_000_000;

/// Why a derivation was refused. Never holds the UPN's salt or output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeriveError {
    /// The salt has fewer than [`MIN_SALT_BYTES`] bytes.
    #[error(
        "the salt is shorter than 8 bytes; .NET Rfc2898DeriveBytes refuses it, so the PAM side cannot use it either"
    )]
    SaltTooShort,
    /// The UPN is empty.
    #[error("the user principal name is empty")]
    EmptyUpn,
    /// Iterations outside 1 ..= [`MAX_ITERATIONS`].
    #[error("the iteration count {iterations} is out of range; use 1 to 10000000 (the seed default is 1000)")]
    Iterations {
        /// The refused count.
        iterations: u32,
    },
    /// Output length outside 1 ..= [`MAX_OUTPUT_BYTES`].
    #[error("the output length {length} is out of range; use 1 to 1024 bytes (the seed default is 60)")]
    Length {
        /// The refused length.
        length: usize,
    },
}

/// The HMAC hash of the PBKDF2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HashAlgorithm {
    /// HMAC-SHA-512 (the seed default).
    #[default]
    Sha512,
    /// HMAC-SHA-256.
    Sha256,
}

/// How the UPN is cased before hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpnCase {
    /// Lower-cased (the seed's worked example).
    #[default]
    Lower,
    /// Upper-cased.
    Upper,
    /// Used as given.
    Unchanged,
}

/// Derivation parameters; `DeriveParams::default()` is the seed's: SHA-512, 1000 iterations,
/// 60 bytes, lower-cased UPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeriveParams {
    /// HMAC hash.
    pub hash: HashAlgorithm,
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// Output length in bytes, before base64.
    pub length: usize,
    /// UPN casing.
    pub case: UpnCase,
}

impl Default for DeriveParams {
    fn default() -> Self {
        Self { hash: HashAlgorithm::Sha512, iterations: 1000, length: 60, case: UpnCase::Lower }
    }
}

/// Derives the password of `upn` from the shared `salt`: base64 (standard alphabet, padded) of
/// the PBKDF2 output.
pub fn derive(upn: &str, salt: &SecretString, params: &DeriveParams) -> Result<SecretString, DeriveError> {
    if upn.is_empty() {
        return Err(DeriveError::EmptyUpn);
    }
    if salt.expose_secret().len() < MIN_SALT_BYTES {
        return Err(DeriveError::SaltTooShort);
    }
    if params.iterations == 0 || params.iterations > MAX_ITERATIONS {
        return Err(DeriveError::Iterations { iterations: params.iterations });
    }
    if params.length == 0 || params.length > MAX_OUTPUT_BYTES {
        return Err(DeriveError::Length { length: params.length });
    }
    let cased = Zeroizing::new(match params.case {
        UpnCase::Lower => upn.chars().map(simple_lowercase).collect::<String>(),
        UpnCase::Upper => upn.chars().map(simple_uppercase).collect::<String>(),
        UpnCase::Unchanged => upn.to_owned(),
    });
    let (password, salt) = (cased.as_bytes(), salt.expose_secret().as_bytes());
    let mut key = Zeroizing::new(vec![0u8; params.length]);
    match params.hash {
        HashAlgorithm::Sha512 => pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, params.iterations, &mut key),
        HashAlgorithm::Sha256 => pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, params.iterations, &mut key),
    }
    Ok(SecretString::new(base64::engine::general_purpose::STANDARD.encode(&*key)))
}

/// One-to-one lower-casing; characters whose full mapping has several characters keep the first
/// (`İ` → `i`), which is their simple mapping.
fn simple_lowercase(c: char) -> char {
    c.to_lowercase().next().unwrap_or(c)
}

/// One-to-one upper-casing; characters whose full mapping has several characters stay as they are
/// (`ß`, `ŉ`), which is their simple mapping.
fn simple_uppercase(c: char) -> char {
    let mut upper = c.to_uppercase();
    match (upper.next(), upper.next()) {
        (Some(u), None) => u,
        _ => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALT: &str = "ThisIsOurSharedHashValue";

    fn run(upn: &str, salt: &str, params: DeriveParams) -> String {
        derive(upn, &SecretString::from(salt), &params).unwrap().expose_secret().to_owned()
    }

    #[test]
    fn seed_000_worked_example() {
        assert_eq!(
            run("Max.Mustermann@contoso.com", SALT, DeriveParams::default()),
            "dbL+imdTEtq1cws2sqhfhWJuKX6ISJIOpzxh4aHSSM6MDIrrtVamN0H3bhotnn410gdj9hKfmxgHSm4R"
        );
    }

    /// Vectors computed independently with Python 3's hashlib (OpenSSL), e.g.
    /// `base64.b64encode(hashlib.pbkdf2_hmac('sha256', 'max.mustermann@contoso.com'.encode(),
    /// 'ThisIsOurSharedHashValue'.encode(), 1000, 60)).decode()`.
    #[test]
    fn vectors_from_python_hashlib() {
        let params = DeriveParams::default();
        assert_eq!(
            run("Max.Mustermann@contoso.com", SALT, DeriveParams { hash: HashAlgorithm::Sha256, ..params }),
            "L6rHeC8R1HzDL41UA/UN6wo6S5zcsDDvW0uLBf199w6xTqHUpmZoJujXwy3LzCiZqiyyy2BMOjGDA0yN"
        );
        assert_eq!(
            run("Max.Mustermann@contoso.com", SALT, DeriveParams { case: UpnCase::Upper, ..params }),
            "88yDqnU5HKWFsfBoyY/7bhrJTVhuZSL3LH7UqBWpz3OJhXMX/t4EL78LdMfZMDL7mxh/xc3wDiXnf/Cl"
        );
        assert_eq!(
            run("Max.Mustermann@contoso.com", SALT, DeriveParams { case: UpnCase::Unchanged, ..params }),
            "soZE424hamwmWL+dsJt8JNP9Cj3m1Ka3XiLLyQZx0YFJY0WxxT0h4RT4+oHlD+IE5dpoUx4iMITBz2S3"
        );
        // Non-ASCII: hashlib given 'jürgen.groß@contoso.com' and 'JÜRGEN.GROß@CONTOSO.COM'
        // (ß has no one-character upper case, so it stays).
        assert_eq!(
            run("Jürgen.Groß@Contoso.com", SALT, params),
            "ktURfMCejqBL7CkYp3qVjbzLI0j0eLBFi9d9zwWtXSMo2G2cgkF2o4omq1Hxw6cvR4WJ+xGialPznd8w"
        );
        assert_eq!(
            run("Jürgen.Groß@Contoso.com", SALT, DeriveParams { case: UpnCase::Upper, ..params }),
            "+yZeWCR1mQQR5SGt351WjGg0761a1cZvAUxRnH2yctCa1NntVUKpsYJ7xwrJxg3bMW3k46f1bWEjo4RE"
        );
        assert_eq!(
            run("max.mustermann@contoso.com", "12345678", DeriveParams { iterations: 10_000, length: 32, ..params }),
            "zMa1WYlPTfjpeK1W5lP5lQy6HOO2gEuL27A5I39Um0Y="
        );
        assert_eq!(
            run(
                "max.mustermann@contoso.com",
                SALT,
                DeriveParams { hash: HashAlgorithm::Sha256, iterations: 1, length: 1, case: UpnCase::Lower }
            ),
            "OA=="
        );
    }

    #[test]
    fn agrees_with_rings_implementation() {
        for (upn, iterations, length) in [("a@b.c", 1, 1), ("user@corp.example.com", 1000, 60), ("x@y", 7, 200)] {
            let salt = "salt-of-some-length";
            let rounds = std::num::NonZeroU32::new(iterations).unwrap();
            for (hash, algorithm) in [
                (HashAlgorithm::Sha512, ring::pbkdf2::PBKDF2_HMAC_SHA512),
                (HashAlgorithm::Sha256, ring::pbkdf2::PBKDF2_HMAC_SHA256),
            ] {
                let mut expected = vec![0u8; length];
                ring::pbkdf2::derive(algorithm, rounds, salt.as_bytes(), upn.as_bytes(), &mut expected);
                let params = DeriveParams { hash, iterations, length, case: UpnCase::Unchanged };
                assert_eq!(run(upn, salt, params), base64::engine::general_purpose::STANDARD.encode(&expected));
            }
        }
    }

    #[test]
    fn refuses_bad_input() {
        let params = DeriveParams::default();
        let short = SecretString::from("1234567");
        assert_eq!(derive("a@b.c", &short, &params), Err(DeriveError::SaltTooShort));
        // Bytes, not characters: four two-byte characters are enough.
        assert!(derive("a@b.c", &SecretString::from("äöüß"), &params).is_ok());
        let salt = SecretString::from(SALT);
        assert_eq!(derive("", &salt, &params), Err(DeriveError::EmptyUpn));
        assert_eq!(
            derive("a@b.c", &salt, &DeriveParams { iterations: 0, ..params }),
            Err(DeriveError::Iterations { iterations: 0 })
        );
        assert_eq!(
            derive("a@b.c", &salt, &DeriveParams { length: 0, ..params }),
            Err(DeriveError::Length { length: 0 })
        );
        assert_eq!(
            derive("a@b.c", &salt, &DeriveParams { length: 4096, ..params }),
            Err(DeriveError::Length { length: 4096 })
        );
        let text = DeriveError::SaltTooShort.to_string();
        assert!(text.starts_with("the salt is shorter than 8 bytes"), "{text}");
        assert_eq!(format!("{:?}", derive("a@b.c", &salt, &params)), "Ok(SecretString([redacted]))");
    }

    #[test]
    fn simple_case_mapping() {
        assert_eq!(simple_lowercase('İ'), 'i');
        assert_eq!(simple_uppercase('ß'), 'ß');
        assert_eq!(simple_uppercase('é'), 'É');
        assert_eq!(simple_lowercase('Σ'), 'σ');
    }
}
