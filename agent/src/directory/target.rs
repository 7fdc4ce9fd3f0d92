//! How a job's target becomes an LDAP search: by UPN, sAMAccountName, objectGUID or DN, always for
//! user objects (not computers) under the configured base DN.

use std::fmt;

use ldap3::{Scope, ldap_escape};
use pwrelay_proto::agent::v1::{FailureCode, target};

use super::DirectoryError;

/// The account a job names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountTarget {
    /// userPrincipalName.
    Upn(String),
    /// sAMAccountName.
    SamAccountName(String),
    /// objectGUID (16 bytes in AD's wire order).
    ObjectGuid(uuid_bytes::Guid),
    /// Distinguished name.
    Dn(String),
}

/// Only user accounts, never computer accounts.
const USER_FILTER: &str = "(objectClass=user)(!(objectClass=computer))";

impl AccountTarget {
    /// Reads the proto target.
    pub fn from_proto(by: Option<target::By>) -> Result<Self, DirectoryError> {
        let invalid = |m: &str| DirectoryError::new(FailureCode::InvalidJob, m.to_owned());
        match by {
            Some(target::By::Upn(v)) if !v.is_empty() => Ok(Self::Upn(v)),
            Some(target::By::SamAccountName(v)) if !v.is_empty() => Ok(Self::SamAccountName(v)),
            Some(target::By::ObjectGuid(v)) => uuid_bytes::Guid::parse(&v)
                .map(Self::ObjectGuid)
                .ok_or_else(|| invalid("the job's target.object_guid is not a GUID")),
            Some(target::By::Dn(v)) if !v.is_empty() => Ok(Self::Dn(v)),
            _ => Err(invalid("the job names no target account")),
        }
    }

    /// Search base, scope and filter that find this account.
    pub fn search(&self, base_dn: &str) -> Result<(String, Scope, String), DirectoryError> {
        let subtree = |attr: &str, value: &str| {
            (base_dn.to_owned(), Scope::Subtree, format!("(&{USER_FILTER}({attr}={}))", ldap_escape(value)))
        };
        Ok(match self {
            Self::Upn(upn) => subtree("userPrincipalName", upn),
            Self::SamAccountName(sam) => subtree("sAMAccountName", sam),
            Self::ObjectGuid(guid) => {
                (base_dn.to_owned(), Scope::Subtree, format!("(&{USER_FILTER}(objectGUID={}))", guid.filter_escaped()))
            }
            Self::Dn(dn) => {
                if !ends_with_ignore_case(dn, base_dn) {
                    return Err(DirectoryError::new(
                        FailureCode::OutOfScope,
                        format!("{dn} is not under the agent's base DN {base_dn}"),
                    ));
                }
                (dn.clone(), Scope::Base, format!("(&{USER_FILTER})"))
            }
        })
    }
}

fn ends_with_ignore_case(dn: &str, suffix: &str) -> bool {
    let (dn, suffix) = (dn.to_ascii_lowercase().replace(", ", ","), suffix.to_ascii_lowercase().replace(", ", ","));
    dn == suffix || dn.ends_with(&format!(",{suffix}"))
}

impl fmt::Display for AccountTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Upn(v) => write!(f, "with userPrincipalName {v}"),
            Self::SamAccountName(v) => write!(f, "with sAMAccountName {v}"),
            Self::ObjectGuid(g) => write!(f, "with objectGUID {}", g.text),
            Self::Dn(v) => write!(f, "at {v}"),
        }
    }
}

/// objectGUID handling: AD stores the GUID's first three fields little-endian.
pub mod uuid_bytes {
    /// A GUID in text and in AD's byte order.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Guid {
        /// Canonical lower-case text.
        pub text: String,
        /// The 16 bytes as AD stores them.
        pub wire: [u8; 16],
    }

    impl Guid {
        /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (braces allowed).
        pub fn parse(text: &str) -> Option<Self> {
            let hex: String = text.trim().trim_matches(['{', '}']).chars().filter(|c| *c != '-').collect();
            if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            let mut be = [0u8; 16];
            for (i, byte) in be.iter_mut().enumerate() {
                *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
            }
            let mut wire = be;
            wire[0..4].reverse();
            wire[4..6].reverse();
            wire[6..8].reverse();
            let h = hex.to_ascii_lowercase();
            let text = format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]);
            Some(Self { text, wire })
        }

        /// The bytes as an LDAP filter value (`\xx` per byte).
        pub fn filter_escaped(&self) -> String {
            self.wire.iter().map(|b| format!("\\{b:02x}")).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_escape_their_values() {
        let (_, _, filter) = AccountTarget::Upn("a*)(cn=x@corp".into()).search("DC=corp").expect("filter");
        assert_eq!(filter, "(&(objectClass=user)(!(objectClass=computer))(userPrincipalName=a\\2a\\29\\28cn=x@corp))");
    }

    #[test]
    fn guids_use_ads_byte_order() {
        let g = uuid_bytes::Guid::parse("{00112233-4455-6677-8899-AABBCCDDEEFF}").expect("guid");
        assert_eq!(
            g.wire,
            [0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]
        );
        assert!(g.filter_escaped().starts_with("\\33\\22\\11\\00\\55\\44"));
        assert!(uuid_bytes::Guid::parse("not-a-guid").is_none());
    }

    #[test]
    fn a_dn_outside_the_base_is_out_of_scope() {
        let e = AccountTarget::Dn("CN=x,DC=other".into()).search("DC=corp,DC=example").expect_err("refused");
        assert_eq!(e.code, FailureCode::OutOfScope);
        assert!(AccountTarget::Dn("CN=x, DC=Corp,DC=example".into()).search("DC=corp,DC=example").is_ok());
    }
}
