//! The length and complexity rules AD applies to a new password (MS-SAMR 3.1.1.7.2 and the
//! "Password must meet complexity requirements" policy setting).
//!
//! With complexity on, a password:
//! - has at most 256 characters (AD's limit, checked whatever the policy);
//! - uses at least three of five character classes: upper-case letters, lower-case letters,
//!   digits 0-9, the ASCII symbols `~!@#$%^&*_-+=`|\(){}[]:;"'<>,.?/`, and other letters (alphabetic
//!   characters that are neither upper- nor lower-case, as in most Asian scripts). Other characters
//!   (spaces, currency signs, emoji) count for no class;
//! - does not contain the `sAMAccountName` when it has more than two characters, nor any token of
//!   the `displayName` longer than two characters (tokens split on space, tab, `,` `.` `-` `_` `#`),
//!   compared case-insensitively.
//!
//! Samba does not enforce the name rules, so pwrelay checks them itself before writing.

use super::Policy;
use crate::secret::SecretString;

/// Most characters AD accepts in a password.
pub const MAX_PASSWORD_CHARS: usize = 256;
/// Names and display-name tokens of this many characters or fewer are not checked.
const IGNORED_NAME_CHARS: usize = 2;

/// The names the complexity rule forbids in a password.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccountNames<'a> {
    /// `sAMAccountName` (empty when unknown).
    pub sam_account_name: &'a str,
    /// `displayName` (empty when unknown).
    pub display_name: &'a str,
}

/// One rule a password breaks. The text completes "the password ...".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PolicyFailure {
    /// The password is empty (pwrelay never sets an empty password, whatever the policy).
    #[error("is empty")]
    Empty,
    /// Fewer characters than the policy's minimum.
    #[error("is shorter than the minimum of {minimum} characters")]
    TooShort {
        /// The policy's minimum length.
        minimum: u32,
    },
    /// More characters than AD accepts.
    #[error("is longer than the maximum of {maximum} characters")]
    TooLong {
        /// The maximum length.
        maximum: usize,
    },
    /// Contains the `sAMAccountName`.
    #[error("contains the account name")]
    ContainsAccountName,
    /// Contains a token of the `displayName`.
    #[error("contains a part of the user's display name")]
    ContainsDisplayName,
    /// Uses fewer than three character classes.
    #[error(
        "uses {found} of the 5 character classes (upper-case letters, lower-case letters, digits, symbols, other letters); at least 3 are required"
    )]
    TooFewCharacterClasses {
        /// Number of classes the password uses.
        found: u8,
    },
}

/// Applies the rules of `policy`.
pub(super) fn check(policy: &Policy, password: &SecretString, names: &AccountNames<'_>) -> Vec<PolicyFailure> {
    if password.is_empty() {
        return vec![PolicyFailure::Empty];
    }
    let mut failures = Vec::new();
    let length = password.char_count();
    if length < policy.min_length as usize {
        failures.push(PolicyFailure::TooShort { minimum: policy.min_length });
    }
    if length > MAX_PASSWORD_CHARS {
        failures.push(PolicyFailure::TooLong { maximum: MAX_PASSWORD_CHARS });
    }
    if !policy.complexity {
        return failures;
    }
    let lowered = zeroize::Zeroizing::new(password.expose_secret().to_lowercase());
    let account = names.sam_account_name.trim();
    if account.chars().count() > IGNORED_NAME_CHARS && lowered.contains(&account.to_lowercase()) {
        failures.push(PolicyFailure::ContainsAccountName);
    }
    let display_tokens = names
        .display_name
        .split([' ', '\t', ',', '.', '-', '_', '#'])
        .filter(|token| token.chars().count() > IGNORED_NAME_CHARS);
    for token in display_tokens {
        if lowered.contains(&token.to_lowercase()) {
            failures.push(PolicyFailure::ContainsDisplayName);
            break;
        }
    }
    let found = character_classes(password.expose_secret());
    if found < 3 {
        failures.push(PolicyFailure::TooFewCharacterClasses { found });
    }
    failures
}

/// Number of the five complexity classes `text` uses.
fn character_classes(text: &str) -> u8 {
    let (mut upper, mut lower, mut digit, mut symbol, mut other) = (false, false, false, false, false);
    for c in text.chars() {
        if c.is_ascii_digit() {
            digit = true;
        } else if c.is_ascii_punctuation() {
            symbol = true;
        } else if c.is_uppercase() {
            upper = true;
        } else if c.is_lowercase() {
            lower = true;
        } else if c.is_alphabetic() {
            other = true;
        }
    }
    [upper, lower, digit, symbol, other].iter().map(|&b| u8::from(b)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicySource;

    fn policy(min_length: u32, complexity: bool) -> Policy {
        Policy { min_length, complexity, source: PolicySource::Local, ..Policy::default() }
    }

    fn failures(policy: &Policy, password: &str, sam: &str, display: &str) -> Vec<PolicyFailure> {
        policy.check(&SecretString::from(password), &AccountNames { sam_account_name: sam, display_name: display })
    }

    #[test]
    fn compliant_password_has_no_failure() {
        assert!(failures(&policy(8, true), "Tr0ub4dor&3", "jdoe", "John Doe").is_empty());
    }

    #[test]
    fn empty_password() {
        assert_eq!(failures(&policy(0, false), "", "", ""), [PolicyFailure::Empty]);
        assert_eq!(failures(&policy(8, true), "", "", ""), [PolicyFailure::Empty]);
    }

    #[test]
    fn length_limits() {
        assert_eq!(failures(&policy(12, true), "Short1!x", "", ""), [PolicyFailure::TooShort { minimum: 12 }]);
        let at_max = format!("Aa1!{}", "x".repeat(252));
        assert!(failures(&policy(8, true), &at_max, "", "").is_empty());
        let too_long = format!("Aa1!{}", "x".repeat(253));
        assert_eq!(failures(&policy(8, false), &too_long, "", ""), [PolicyFailure::TooLong { maximum: 256 }]);
        // Characters, not bytes: 8 two-byte letters and symbols are 8 characters.
        assert!(failures(&policy(8, true), "Ää1!Öö2?", "", "").is_empty());
    }

    #[test]
    fn character_classes_as_ad_counts_them() {
        assert_eq!(character_classes("abc"), 1);
        assert_eq!(character_classes("abcABC"), 2);
        assert_eq!(character_classes("abcABC1"), 3);
        assert_eq!(character_classes("aA1!"), 4);
        assert_eq!(character_classes("aA1!漢"), 5);
        // Currency signs, spaces and emoji count for nothing.
        assert_eq!(character_classes("abc €£ 🙂"), 1);
        // Greek and Cyrillic letters have case.
        assert_eq!(character_classes("Ωω"), 2);
        assert_eq!(
            failures(&policy(4, true), "password", "", ""),
            [PolicyFailure::TooFewCharacterClasses { found: 1 }]
        );
        // Without complexity, one class is enough.
        assert!(failures(&policy(4, false), "password", "", "").is_empty());
    }

    #[test]
    fn account_name_rules() {
        let p = policy(8, true);
        assert_eq!(failures(&p, "xx-JDoe-2024!", "jdoe", ""), [PolicyFailure::ContainsAccountName]);
        // Account names of two characters or fewer are not checked.
        assert!(failures(&p, "Jd!2024xyzQ", "jd", "").is_empty());
        assert_eq!(failures(&p, "Jdo!2024xyzQ", "jdo", ""), [PolicyFailure::ContainsAccountName]);
    }

    #[test]
    fn display_name_tokens() {
        let p = policy(8, true);
        let display = "Max Mustermann-Lüdenscheid, Jr.";
        assert_eq!(failures(&p, "Summer!mustermann9", "", display), [PolicyFailure::ContainsDisplayName]);
        assert_eq!(failures(&p, "LÜDENSCHEID#2024a", "", display), [PolicyFailure::ContainsDisplayName]);
        assert_eq!(failures(&p, "Maxi!Power2024", "", display), [PolicyFailure::ContainsDisplayName]);
        // "Jr" has two characters: ignored.
        assert!(failures(&p, "Jr!Quartz2024", "", display).is_empty());
        assert_eq!(PolicyFailure::ContainsDisplayName.to_string(), "contains a part of the user's display name");
    }

    #[test]
    fn every_failure_is_reported() {
        let found = failures(&policy(20, true), "jdoejdoe", "jdoe", "Jane Doe");
        assert_eq!(
            found,
            [
                PolicyFailure::TooShort { minimum: 20 },
                PolicyFailure::ContainsAccountName,
                PolicyFailure::ContainsDisplayName,
                PolicyFailure::TooFewCharacterClasses { found: 1 },
            ]
        );
        for failure in found {
            let text = failure.to_string();
            assert!(!text.contains("jdoe"), "{text}");
            assert!(!text.ends_with('.'), "{text}");
        }
    }
}
