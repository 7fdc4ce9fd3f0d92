//! Active Directory password policy: the model and the rules AD applies to a new password.
//!
//! The policy comes from the domain head (`minPwdLength`, `pwdProperties`, `pwdHistoryLength`,
//! `minPwdAge`, `maxPwdAge`) or from the user's resultant fine-grained policy, a Password Settings
//! Object (`msDS-MinimumPasswordLength`, `msDS-PasswordComplexityEnabled`, ...). The agent reads
//! the attributes over LDAP and hands their string values to [`Policy::from_domain_head`] or
//! [`Policy::from_password_settings`]; this module holds no LDAP code.
//!
//! [`Policy::check`] applies the length and complexity rules (see `complexity`). History and
//! minimum age are enforced by the domain controller itself: the model carries them so the agent
//! can explain a refusal and ask for history enforcement on resets.

mod complexity;

use std::time::Duration;

pub use complexity::{AccountNames, MAX_PASSWORD_CHARS, PolicyFailure};

use crate::secret::SecretString;

/// The domain-head attributes [`Policy::from_domain_head`] reads (request them in the LDAP search).
pub const DOMAIN_HEAD_ATTRIBUTES: [&str; 5] =
    ["minPwdLength", "pwdProperties", "pwdHistoryLength", "minPwdAge", "maxPwdAge"];

/// The Password Settings Object attributes [`Policy::from_password_settings`] reads.
pub const PASSWORD_SETTINGS_ATTRIBUTES: [&str; 5] = [
    "msDS-MinimumPasswordLength",
    "msDS-PasswordComplexityEnabled",
    "msDS-PasswordHistoryLength",
    "msDS-MinimumPasswordAge",
    "msDS-MaximumPasswordAge",
];

/// `pwdProperties` bit: passwords must meet the complexity rules.
const DOMAIN_PASSWORD_COMPLEX: u32 = 0x1;
/// Highest minimum length AD accepts in a policy.
const MAX_MIN_LENGTH: u32 = 255;
/// Highest history length AD accepts in a policy.
const MAX_HISTORY_LENGTH: u32 = 1024;

/// Why policy attributes could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A required attribute is absent (not requested in the search, or not readable by the
    /// service account).
    #[error(
        "the password policy attribute {attribute} is missing; request it in the LDAP search and check that the service account can read it"
    )]
    MissingAttribute {
        /// LDAP name of the attribute.
        attribute: &'static str,
    },
    /// An attribute has a value AD would not store.
    #[error("the password policy attribute {attribute} has the value {value:?}; expected {expected}")]
    InvalidAttribute {
        /// LDAP name of the attribute.
        attribute: &'static str,
        /// The value as read.
        value: String,
        /// What a valid value looks like.
        expected: &'static str,
    },
}

/// Where a policy comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicySource {
    /// The domain-wide policy on the domain head object.
    DomainHead,
    /// A fine-grained Password Settings Object (the user's `msDS-ResultantPSO`).
    PasswordSettings,
    /// Built in code (defaults, command-line options).
    Local,
}

/// A password policy as AD applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Fewest characters a password may have (0: no minimum).
    pub min_length: u32,
    /// Whether the complexity rules apply (three character classes, no account or display name).
    pub complexity: bool,
    /// How many previous passwords may not be reused (enforced by the domain controller).
    pub history_length: u32,
    /// How long a password must be kept before the user may change it (zero: no minimum).
    pub min_age: Duration,
    /// How long a password stays valid; `None` when passwords never expire.
    pub max_age: Option<Duration>,
    /// Where the values come from.
    pub source: PolicySource,
}

impl Default for Policy {
    /// The values of AD's Default Domain Policy: 7 characters, complexity on, 24 remembered
    /// passwords, 1 day minimum age, 42 days maximum age.
    fn default() -> Self {
        Self {
            min_length: 7,
            complexity: true,
            history_length: 24,
            min_age: Duration::from_secs(24 * 3600),
            max_age: Some(Duration::from_secs(42 * 24 * 3600)),
            source: PolicySource::Local,
        }
    }
}

impl Policy {
    /// Builds the domain-wide policy from the domain head's attribute values.
    ///
    /// `attribute` returns the (first) value of an LDAP attribute by name, or `None` when absent;
    /// the names are [`DOMAIN_HEAD_ATTRIBUTES`].
    pub fn from_domain_head<'a>(attribute: impl Fn(&str) -> Option<&'a str>) -> Result<Self, PolicyError> {
        let read = |name: &'static str| attribute(name).ok_or(PolicyError::MissingAttribute { attribute: name });
        let properties = read("pwdProperties")?;
        let properties = parse_integer(properties)
            .and_then(|v| u32::try_from(v).ok().or_else(|| i32::try_from(v).ok().map(|v| v as u32)))
            .ok_or_else(|| invalid("pwdProperties", properties, "a 32-bit flag value such as 1"))?;
        Ok(Self {
            min_length: parse_count("minPwdLength", read("minPwdLength")?, MAX_MIN_LENGTH)?,
            complexity: properties & DOMAIN_PASSWORD_COMPLEX != 0,
            history_length: parse_count("pwdHistoryLength", read("pwdHistoryLength")?, MAX_HISTORY_LENGTH)?,
            min_age: parse_interval("minPwdAge", read("minPwdAge")?)?.unwrap_or(Duration::ZERO),
            max_age: parse_interval("maxPwdAge", read("maxPwdAge")?)?,
            source: PolicySource::DomainHead,
        })
    }

    /// Builds a fine-grained policy from a Password Settings Object's attribute values.
    ///
    /// `attribute` returns the (first) value of an LDAP attribute by name, or `None` when absent;
    /// the names are [`PASSWORD_SETTINGS_ATTRIBUTES`].
    pub fn from_password_settings<'a>(attribute: impl Fn(&str) -> Option<&'a str>) -> Result<Self, PolicyError> {
        let read = |name: &'static str| attribute(name).ok_or(PolicyError::MissingAttribute { attribute: name });
        let complexity_value = read("msDS-PasswordComplexityEnabled")?;
        let complexity = match complexity_value.trim() {
            v if v.eq_ignore_ascii_case("TRUE") => true,
            v if v.eq_ignore_ascii_case("FALSE") => false,
            _ => return Err(invalid("msDS-PasswordComplexityEnabled", complexity_value, "TRUE or FALSE")),
        };
        Ok(Self {
            min_length: parse_count("msDS-MinimumPasswordLength", read("msDS-MinimumPasswordLength")?, MAX_MIN_LENGTH)?,
            complexity,
            history_length: parse_count(
                "msDS-PasswordHistoryLength",
                read("msDS-PasswordHistoryLength")?,
                MAX_HISTORY_LENGTH,
            )?,
            min_age: parse_interval("msDS-MinimumPasswordAge", read("msDS-MinimumPasswordAge")?)?
                .unwrap_or(Duration::ZERO),
            max_age: parse_interval("msDS-MaximumPasswordAge", read("msDS-MaximumPasswordAge")?)?,
            source: PolicySource::PasswordSettings,
        })
    }

    /// Checks `password` against the length and complexity rules; returns every failure (empty
    /// when the password complies).
    pub fn check(&self, password: &SecretString, names: &AccountNames<'_>) -> Vec<PolicyFailure> {
        complexity::check(self, password, names)
    }
}

fn invalid(attribute: &'static str, value: &str, expected: &'static str) -> PolicyError {
    PolicyError::InvalidAttribute { attribute, value: value.to_owned(), expected }
}

fn parse_integer(value: &str) -> Option<i64> {
    value.trim().parse::<i64>().ok()
}

fn parse_count(attribute: &'static str, value: &str, max: u32) -> Result<u32, PolicyError> {
    let expected = match attribute {
        "minPwdLength" | "msDS-MinimumPasswordLength" => "a whole number from 0 to 255",
        _ => "a whole number from 0 to 1024",
    };
    parse_integer(value)
        .and_then(|v| u32::try_from(v).ok())
        .filter(|&v| v <= max)
        .ok_or_else(|| invalid(attribute, value, expected))
}

/// Parses an AD time interval: a negative number of 100-nanosecond units. Zero and the smallest
/// 64-bit integer (what AD stores for "never") give `None`.
fn parse_interval(attribute: &'static str, value: &str) -> Result<Option<Duration>, PolicyError> {
    let expected = "zero or a negative number of 100-nanosecond intervals";
    let units = parse_integer(value).ok_or_else(|| invalid(attribute, value, expected))?;
    match units {
        0 | i64::MIN => Ok(None),
        u if u < 0 => {
            let hundreds_of_ns = u.unsigned_abs();
            Ok(Some(
                Duration::from_secs(hundreds_of_ns / 10_000_000)
                    + Duration::from_nanos(hundreds_of_ns % 10_000_000 * 100),
            ))
        }
        _ => Err(invalid(attribute, value, expected)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const DAY: u64 = 24 * 3600;

    fn lookup(pairs: &[(&'static str, &'static str)]) -> HashMap<&'static str, &'static str> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn domain_head_as_samba_and_windows_store_it() {
        // Values of a freshly provisioned domain (Samba 4 / Windows defaults).
        let attrs = lookup(&[
            ("minPwdLength", "7"),
            ("pwdProperties", "1"),
            ("pwdHistoryLength", "24"),
            ("minPwdAge", "-864000000000"),
            ("maxPwdAge", "-36288000000000"),
        ]);
        let policy = Policy::from_domain_head(|name| attrs.get(name).copied()).unwrap();
        assert_eq!(policy.min_length, 7);
        assert!(policy.complexity);
        assert_eq!(policy.history_length, 24);
        assert_eq!(policy.min_age, Duration::from_secs(DAY));
        assert_eq!(policy.max_age, Some(Duration::from_secs(42 * DAY)));
        assert_eq!(policy.source, PolicySource::DomainHead);
    }

    #[test]
    fn never_expiring_and_no_complexity() {
        let attrs = lookup(&[
            ("minPwdLength", "0"),
            ("pwdProperties", "16"),
            ("pwdHistoryLength", "0"),
            ("minPwdAge", "0"),
            ("maxPwdAge", "-9223372036854775808"),
        ]);
        let policy = Policy::from_domain_head(|name| attrs.get(name).copied()).unwrap();
        assert!(!policy.complexity, "bit 0x10 is not the complexity bit");
        assert_eq!(policy.min_age, Duration::ZERO);
        assert_eq!(policy.max_age, None);
    }

    #[test]
    fn password_settings_object() {
        let attrs = lookup(&[
            ("msDS-MinimumPasswordLength", "14"),
            ("msDS-PasswordComplexityEnabled", "TRUE"),
            ("msDS-PasswordHistoryLength", "10"),
            ("msDS-MinimumPasswordAge", "0"),
            ("msDS-MaximumPasswordAge", "-77760000000000"),
        ]);
        let policy = Policy::from_password_settings(|name| attrs.get(name).copied()).unwrap();
        assert_eq!((policy.min_length, policy.complexity, policy.history_length), (14, true, 10));
        assert_eq!(policy.max_age, Some(Duration::from_secs(90 * DAY)));
        assert_eq!(policy.source, PolicySource::PasswordSettings);

        let attrs = lookup(&[
            ("msDS-MinimumPasswordLength", "8"),
            ("msDS-PasswordComplexityEnabled", "false"),
            ("msDS-PasswordHistoryLength", "0"),
            ("msDS-MinimumPasswordAge", "-1"),
            ("msDS-MaximumPasswordAge", "0"),
        ]);
        let policy = Policy::from_password_settings(|name| attrs.get(name).copied()).unwrap();
        assert!(!policy.complexity);
        assert_eq!(policy.min_age, Duration::from_nanos(100));
        assert_eq!(policy.max_age, None);
    }

    #[test]
    fn errors_name_the_attribute() {
        let attrs = lookup(&[("minPwdLength", "7"), ("pwdProperties", "1"), ("pwdHistoryLength", "24")]);
        let err = Policy::from_domain_head(|name| attrs.get(name).copied()).unwrap_err();
        assert_eq!(err, PolicyError::MissingAttribute { attribute: "minPwdAge" });
        assert!(err.to_string().starts_with("the password policy attribute minPwdAge is missing"));

        let bad = |pairs: &[(&'static str, &'static str)]| {
            let attrs = lookup(pairs);
            Policy::from_domain_head(|name| attrs.get(name).copied()).unwrap_err().to_string()
        };
        let base = [
            ("minPwdLength", "7"),
            ("pwdProperties", "1"),
            ("pwdHistoryLength", "24"),
            ("minPwdAge", "0"),
            ("maxPwdAge", "0"),
        ];
        let mut pairs = base;
        pairs[0].1 = "seven";
        assert_eq!(
            bad(&pairs),
            "the password policy attribute minPwdLength has the value \"seven\"; expected a whole number from 0 to 255"
        );
        pairs = base;
        pairs[0].1 = "300";
        assert!(bad(&pairs).contains("minPwdLength"));
        pairs = base;
        pairs[4].1 = "36288000000000";
        assert!(bad(&pairs).contains("maxPwdAge has the value \"36288000000000\"; expected zero or a negative"));
        pairs = base;
        pairs[2].1 = "-1";
        assert!(bad(&pairs).contains("pwdHistoryLength"));

        let attrs = lookup(&[
            ("msDS-MinimumPasswordLength", "8"),
            ("msDS-PasswordComplexityEnabled", "yes"),
            ("msDS-PasswordHistoryLength", "0"),
            ("msDS-MinimumPasswordAge", "0"),
            ("msDS-MaximumPasswordAge", "0"),
        ]);
        let err = Policy::from_password_settings(|name| attrs.get(name).copied()).unwrap_err();
        assert!(
            err.to_string().contains("msDS-PasswordComplexityEnabled has the value \"yes\"; expected TRUE or FALSE")
        );
    }

    #[test]
    fn attribute_lists_cover_what_the_constructors_read() {
        let all: HashMap<&str, &str> = DOMAIN_HEAD_ATTRIBUTES
            .iter()
            .chain(PASSWORD_SETTINGS_ATTRIBUTES.iter())
            .map(|name| (*name, if name.contains("Complexity") { "TRUE" } else { "0" }))
            .collect();
        assert!(Policy::from_domain_head(|name| all.get(name).copied()).is_ok());
        assert!(Policy::from_password_settings(|name| all.get(name).copied()).is_ok());
    }
}
