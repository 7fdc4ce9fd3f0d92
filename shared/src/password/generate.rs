//! Generation of passwords that satisfy an AD policy and pass the banned-password evaluator.
//!
//! Every character or word is drawn uniformly from the operating system's CSPRNG (`getrandom`
//! through rand's `OsRng`, no user-space generator in between). A candidate that misses a character
//! class, breaks the policy (for instance by containing the account name) or fails the evaluator
//! for the user is discarded (and zeroed) and a new one drawn, at most [`MAX_GENERATION_ATTEMPTS`] times.
//!
//! Modes:
//! - [`GenerateMode::Random`]: upper- and lower-case letters, digits and symbols (no quotes,
//!   backslash, backtick or space, which break naive scripts and CSV files);
//! - [`GenerateMode::Friendly`]: for reading out or typing from a phone: no look-alike characters
//!   (`0 O o 1 l I |` and friends), in groups of four joined by `-` (`Kx7p-Rm2q-Tz9w`);
//! - [`GenerateMode::Passphrase`]: capitalized words of the EFF large word list joined by `-`, then
//!   a digit and a symbol (`Velvet-Canyon-Oxide-Tulip7#`).

use std::sync::OnceLock;

use rand::Rng as _;
use rand::TryRngCore as _;
use rand::rngs::OsRng;

use super::evaluate::{Evaluator, Operation, UserContext, Verdict};
use crate::policy::{MAX_PASSWORD_CHARS, Policy};
use crate::secret::SecretString;

/// Candidates drawn before giving up.
pub const MAX_GENERATION_ATTEMPTS: u32 = 100;
/// Fewest characters of a random or friendly password.
pub const MIN_GENERATED_CHARS: usize = 8;
/// Fewest words of a passphrase.
pub const MIN_PASSPHRASE_WORDS: usize = 3;
/// Most words of a passphrase.
pub const MAX_PASSPHRASE_WORDS: usize = 20;

const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
const DIGITS: &[u8] = b"0123456789";
const SYMBOLS: &[u8] = b"!#$%&()*+,-./:;<=>?@[]^_{|}~";
const FRIENDLY_UPPER: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
const FRIENDLY_LOWER: &[u8] = b"abcdefghijkmnpqrstuvwxyz";
const FRIENDLY_DIGITS: &[u8] = b"23456789";
const FRIENDLY_SYMBOLS: &[u8] = b"!#%+=?*";
const FRIENDLY_SEPARATOR: char = '-';
const FRIENDLY_GROUP: usize = 4;

/// EFF's large word list (CC BY 3.0 US, see `shared/data/README.md`).
const EFF_WORDS: &str = include_str!("../../data/eff-large-wordlist.txt");

/// What kind of password to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GenerateMode {
    /// Letters, digits and symbols.
    #[default]
    Random,
    /// No look-alike characters, in dash-separated groups of four.
    Friendly,
    /// Words, a digit and a symbol.
    Passphrase,
}

/// Generation settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerateOptions {
    /// The kind of password.
    pub mode: GenerateMode,
    /// Characters of a random or friendly password; the least number of characters of a
    /// passphrase. Raised to the policy's minimum length when that is higher.
    pub length: usize,
    /// Words of a passphrase (more are added when needed to reach `length`).
    pub words: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self { mode: GenerateMode::Random, length: 20, words: 4 }
    }
}

/// Why no password was generated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenerateError {
    /// The requested length is below [`MIN_GENERATED_CHARS`].
    #[error("a generated password needs at least 8 characters; {length} were requested")]
    TooShort {
        /// The requested length.
        length: usize,
    },
    /// The requested (or policy-required) length is above what AD accepts.
    #[error("a password of {length} characters is longer than the 256 AD accepts")]
    TooLong {
        /// The length that would have been generated.
        length: usize,
    },
    /// The number of passphrase words is out of range.
    #[error("a passphrase needs 3 to 20 words; {words} were requested")]
    Words {
        /// The requested number of words.
        words: usize,
    },
    /// No candidate passed the policy and the evaluator.
    #[error(
        "no generated password passed the policy and the banned-password check in {attempts} attempts; check the policy and the user's names"
    )]
    Exhausted {
        /// Attempts made.
        attempts: u32,
    },
    /// The operating system's random generator failed.
    #[error("the operating system's random number generator failed")]
    Entropy,
}

/// Generates a password for `user` that satisfies `policy` and that `evaluator` accepts outright
/// (not merely in audit mode).
pub fn generate(
    policy: &Policy,
    options: &GenerateOptions,
    evaluator: &Evaluator,
    user: &UserContext,
) -> Result<SecretString, GenerateError> {
    let length = options.length.max(policy.min_length as usize);
    match options.mode {
        GenerateMode::Random | GenerateMode::Friendly if options.length < MIN_GENERATED_CHARS => {
            return Err(GenerateError::TooShort { length: options.length });
        }
        GenerateMode::Passphrase if !(MIN_PASSPHRASE_WORDS..=MAX_PASSPHRASE_WORDS).contains(&options.words) => {
            return Err(GenerateError::Words { words: options.words });
        }
        _ => {}
    }
    if length > MAX_PASSWORD_CHARS {
        return Err(GenerateError::TooLong { length });
    }
    let mut rng = OsEntropy::default();
    first_passing(policy, evaluator, user, || {
        let candidate = match options.mode {
            GenerateMode::Random => random(&mut rng, length),
            GenerateMode::Friendly => friendly(&mut rng, length),
            GenerateMode::Passphrase => passphrase(&mut rng, options.words, length),
        };
        if rng.failed { Err(GenerateError::Entropy) } else { Ok(candidate) }
    })
}

/// Draws candidates until one passes the policy and the evaluator, at most [`MAX_GENERATION_ATTEMPTS`] times.
fn first_passing(
    policy: &Policy,
    evaluator: &Evaluator,
    user: &UserContext,
    mut draw: impl FnMut() -> Result<Option<SecretString>, GenerateError>,
) -> Result<SecretString, GenerateError> {
    let names = user.account_names();
    for _ in 0..MAX_GENERATION_ATTEMPTS {
        let Some(candidate) = draw()? else { continue };
        if candidate.char_count() > MAX_PASSWORD_CHARS {
            return Err(GenerateError::TooLong { length: candidate.char_count() });
        }
        if !policy.check(&candidate, &names).is_empty() {
            continue;
        }
        if evaluator.evaluate(&candidate, user, Operation::Set).verdict == Verdict::Accepted {
            return Ok(candidate);
        }
    }
    Err(GenerateError::Exhausted { attempts: MAX_GENERATION_ATTEMPTS })
}

/// A random password over the full alphabet; `None` when a class is missing.
fn random(rng: &mut OsEntropy, length: usize) -> Option<SecretString> {
    let alphabet: Vec<u8> = [UPPER, LOWER, DIGITS, SYMBOLS].concat();
    let mut text = String::with_capacity(length);
    for _ in 0..length {
        text.push(char::from(alphabet[rng.random_range(0..alphabet.len())]));
    }
    let password = SecretString::new(text);
    has_all(&password, &[UPPER, LOWER, DIGITS, SYMBOLS]).then_some(password)
}

/// A friendly password: groups of four unambiguous characters joined by `-`.
fn friendly(rng: &mut OsEntropy, length: usize) -> Option<SecretString> {
    let alphabet: Vec<u8> = [FRIENDLY_UPPER, FRIENDLY_LOWER, FRIENDLY_DIGITS].concat();
    let mut text = String::with_capacity(length);
    for i in 0..length {
        let separator_slot = (i + 1) % (FRIENDLY_GROUP + 1) == 0 && i + 1 < length;
        if separator_slot {
            text.push(FRIENDLY_SEPARATOR);
        } else {
            text.push(char::from(alphabet[rng.random_range(0..alphabet.len())]));
        }
    }
    // The separators give the symbol class (lengths start at 8, so there is at least one).
    let password = SecretString::new(text);
    has_all(&password, &[FRIENDLY_UPPER, FRIENDLY_LOWER, FRIENDLY_DIGITS]).then_some(password)
}

/// A passphrase of at least `words` capitalized words and `min_length` characters.
fn passphrase(rng: &mut OsEntropy, words: usize, min_length: usize) -> Option<SecretString> {
    let list = word_list();
    if list.is_empty() {
        return None;
    }
    let mut text = String::with_capacity(min_length.max(words * 9 + 2));
    let mut count = 0;
    // The digit and symbol take two characters at the end.
    while count < words || text.chars().count() + 2 < min_length {
        if count > 0 {
            text.push(FRIENDLY_SEPARATOR);
        }
        let word = list[rng.random_range(0..list.len())];
        let mut letters = word.chars();
        if let Some(first) = letters.next() {
            text.extend(first.to_uppercase());
            text.push_str(letters.as_str());
        }
        count += 1;
        if count > MAX_PASSPHRASE_WORDS * 4 {
            return None;
        }
    }
    text.push(char::from(FRIENDLY_DIGITS[rng.random_range(0..FRIENDLY_DIGITS.len())]));
    text.push(char::from(FRIENDLY_SYMBOLS[rng.random_range(0..FRIENDLY_SYMBOLS.len())]));
    Some(SecretString::new(text))
}

/// Words of 4 to 8 lower-case ASCII letters from the EFF list (about 6,100 words, 12.6 bits each).
fn word_list() -> &'static [&'static str] {
    static WORDS: OnceLock<Vec<&'static str>> = OnceLock::new();
    WORDS.get_or_init(|| {
        EFF_WORDS
            .lines()
            .map(str::trim)
            .filter(|w| (4..=8).contains(&w.len()) && w.bytes().all(|b| b.is_ascii_lowercase()))
            .collect()
    })
}

fn has_all(password: &SecretString, classes: &[&[u8]]) -> bool {
    let bytes = password.expose_secret().as_bytes();
    classes.iter().all(|class| bytes.iter().any(|b| class.contains(b)))
}

/// `OsRng` as an infallible generator that remembers a failure (the output is then discarded).
#[derive(Debug, Default)]
struct OsEntropy {
    failed: bool,
}

impl rand::RngCore for OsEntropy {
    fn next_u32(&mut self) -> u32 {
        let mut bytes = [0u8; 4];
        self.fill_bytes(&mut bytes);
        u32::from_le_bytes(bytes)
    }

    fn next_u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        self.fill_bytes(&mut bytes);
        u64::from_le_bytes(bytes)
    }

    fn fill_bytes(&mut self, destination: &mut [u8]) {
        if OsRng.try_fill_bytes(destination).is_err() {
            self.failed = true;
            destination.fill(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::password::{CustomList, EvaluatorConfig, GlobalList};
    use crate::policy::PolicySource;

    fn evaluator() -> Evaluator {
        Evaluator::new(EvaluatorConfig::default())
    }

    fn policy(min_length: u32) -> Policy {
        Policy { min_length, complexity: true, source: PolicySource::Local, ..Policy::default() }
    }

    fn user() -> UserContext {
        UserContext {
            sam_account_name: "mmustermann".into(),
            display_name: "Max Mustermann".into(),
            first_name: "Max".into(),
            last_name: "Mustermann".into(),
        }
    }

    fn options(mode: GenerateMode, length: usize) -> GenerateOptions {
        GenerateOptions { mode, length, words: 4 }
    }

    #[test]
    fn random_passwords_comply_and_differ() {
        let e = evaluator();
        let p = policy(14);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let pw = generate(&p, &options(GenerateMode::Random, 16), &e, &user()).unwrap();
            assert_eq!(pw.char_count(), 16);
            assert!(p.check(&pw, &user().account_names()).is_empty());
            assert_eq!(e.evaluate(&pw, &user(), Operation::Set).verdict, Verdict::Accepted);
            assert!(has_all(&pw, &[UPPER, LOWER, DIGITS, SYMBOLS]));
            assert!(!pw.expose_secret().contains(['"', '\'', '\\', '`', ' ']));
            seen.insert(pw.expose_secret().to_owned());
        }
        assert_eq!(seen.len(), 50);
    }

    #[test]
    fn length_follows_the_policy_minimum() {
        let pw = generate(&policy(24), &options(GenerateMode::Random, 12), &evaluator(), &user()).unwrap();
        assert_eq!(pw.char_count(), 24);
    }

    #[test]
    fn friendly_passwords_avoid_look_alikes() {
        let e = evaluator();
        for length in [8, 14, 16, 19] {
            for _ in 0..20 {
                let pw = generate(&policy(8), &options(GenerateMode::Friendly, length), &e, &user()).unwrap();
                let text = pw.expose_secret();
                assert_eq!(text.chars().count(), length, "{length}");
                assert!(!text.contains(['0', 'O', 'o', '1', 'l', 'I', '|']), "look-alike in a friendly password");
                assert!(!text.ends_with('-'));
                for (i, c) in text.chars().enumerate() {
                    assert_eq!(c == '-', (i + 1) % 5 == 0, "groups of four");
                }
            }
        }
    }

    #[test]
    fn passphrases_have_words_digit_and_symbol() {
        let e = evaluator();
        for _ in 0..20 {
            let pw = generate(&policy(8), &options(GenerateMode::Passphrase, 20), &e, &user()).unwrap();
            let text = pw.expose_secret();
            let body = &text[..text.len() - 2];
            let words: Vec<&str> = body.split('-').collect();
            assert!(words.len() >= 4, "{}", words.len());
            assert!(words.iter().all(|w| w.chars().next().is_some_and(char::is_uppercase)));
            let tail: Vec<char> = text.chars().rev().take(2).collect();
            assert!(FRIENDLY_SYMBOLS.contains(&(tail[0] as u8)) && tail[1].is_ascii_digit());
            assert!(text.chars().count() >= 20);
        }
        // A long minimum adds words.
        let pw = generate(&policy(60), &options(GenerateMode::Passphrase, 20), &e, &user()).unwrap();
        assert!(pw.char_count() >= 60);
    }

    #[test]
    fn never_contains_the_users_names() {
        // Every custom term is a name part: generation must work around them.
        let e = Evaluator::new(EvaluatorConfig {
            custom_list: CustomList::new(["mustermann", "contoso"]).unwrap(),
            global_list: GlobalList::builtin(),
            tenant_name: Some("Contoso".into()),
            ..EvaluatorConfig::default()
        });
        for mode in [GenerateMode::Random, GenerateMode::Friendly, GenerateMode::Passphrase] {
            let pw = generate(&policy(12), &options(mode, 16), &e, &user()).unwrap();
            assert!(!pw.expose_secret().to_lowercase().contains("mustermann"));
        }
    }

    #[test]
    fn refuses_impossible_requests() {
        let e = evaluator();
        assert_eq!(
            generate(&policy(0), &options(GenerateMode::Random, 7), &e, &user()),
            Err(GenerateError::TooShort { length: 7 })
        );
        assert_eq!(
            generate(&policy(0), &options(GenerateMode::Random, 300), &e, &user()),
            Err(GenerateError::TooLong { length: 300 })
        );
        assert_eq!(
            generate(&policy(0), &GenerateOptions { mode: GenerateMode::Passphrase, length: 8, words: 2 }, &e, &user()),
            Err(GenerateError::Words { words: 2 })
        );
        // A policy minimum above what AD accepts.
        let mut p = policy(0);
        p.min_length = 300;
        assert_eq!(
            generate(&p, &options(GenerateMode::Friendly, 20), &e, &user()),
            Err(GenerateError::TooLong { length: 300 })
        );
        p.min_length = 255;
        assert_eq!(generate(&p, &options(GenerateMode::Random, 20), &e, &user()).unwrap().char_count(), 255);
    }

    #[test]
    fn gives_up_after_a_bounded_number_of_attempts() {
        let e = evaluator();
        let mut drawn = 0;
        let outcome = first_passing(&policy(8), &e, &user(), || {
            drawn += 1;
            Ok(Some(SecretString::from("P@ssw0rd123")))
        });
        assert_eq!(outcome, Err(GenerateError::Exhausted { attempts: MAX_GENERATION_ATTEMPTS }));
        assert_eq!(drawn, MAX_GENERATION_ATTEMPTS);
        let outcome = first_passing(&policy(8), &e, &user(), || Err(GenerateError::Entropy));
        assert_eq!(outcome, Err(GenerateError::Entropy));
    }

    #[test]
    fn word_list_is_loaded() {
        let words = word_list();
        assert!(words.len() > 6000, "{}", words.len());
        assert!(words.iter().all(|w| (4..=8).contains(&w.len())));
    }
}
