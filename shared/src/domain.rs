//! Validated names used across the product: AD DNS domain names and agent names.
//!
//! Parse once at the boundary (config, certificate, API request), then pass the typed value around.

use std::fmt;
use std::str::FromStr;

/// Why a name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    /// The domain name is not a DNS name made of letters, digits and hyphens.
    #[error(
        "{0:?} is not a valid AD DNS domain name (expected labels of letters, digits and hyphens, e.g. corp.example.com)"
    )]
    InvalidDomain(String),
    /// The agent name has characters outside the allowed set.
    #[error("{0:?} is not a valid agent name (use 1-64 letters, digits, '-', '_' or '.')")]
    InvalidAgentName(String),
}

/// An Active Directory DNS domain name, lower-cased (`corp.example.com`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainName(String);

impl DomainName {
    /// Parses and lower-cases a DNS domain name.
    pub fn parse(input: &str) -> Result<Self, NameError> {
        let name = input.trim().trim_end_matches('.').to_ascii_lowercase();
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if valid { Ok(Self(name)) } else { Err(NameError::InvalidDomain(input.to_owned())) }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The default naming context for this domain (`DC=corp,DC=example,DC=com`).
    pub fn default_base_dn(&self) -> String {
        self.0.split('.').map(|l| format!("DC={l}")).collect::<Vec<_>>().join(",")
    }
}

impl FromStr for DomainName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DomainName({})", self.0)
    }
}

impl<'de> serde::Deserialize<'de> for DomainName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for DomainName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// The name of an agent, as written in its certificate (`dc-site-a-01`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentName(String);

impl AgentName {
    /// Parses an agent name: 1-64 characters of letters, digits, `-`, `_`, `.`.
    pub fn parse(input: &str) -> Result<Self, NameError> {
        let valid = !input.is_empty()
            && input.len() <= 64
            && input.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if valid { Ok(Self(input.to_owned())) } else { Err(NameError::InvalidAgentName(input.to_owned())) }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgentName({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_names_are_lower_cased_and_validated() {
        assert_eq!(DomainName::parse("Corp.Example.COM.").map(|d| d.to_string()), Ok("corp.example.com".into()));
        assert_eq!(DomainName::parse("corp.example").map(|d| d.default_base_dn()), Ok("DC=corp,DC=example".into()));
        for bad in ["", "corp..example", "-corp.example", "corp example", "corp.exa_mple", "ümlaut.de"] {
            assert!(DomainName::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn agent_names_are_validated() {
        assert!(AgentName::parse("site-a_01.x").is_ok());
        for bad in ["", "a b", "a/b", &"x".repeat(65)] {
            assert!(AgentName::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
