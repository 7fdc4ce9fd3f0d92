//! The identity of an agent, as its client certificate states it.
//!
//! An agent certificate carries one URI SAN `urn:pwrelay:agent:<name>` and one URI SAN
//! `urn:pwrelay:domain:<dns-domain>` per AD domain the agent may serve. The relay authorizes an agent
//! for exactly those domains; what the agent claims in its hello message can only narrow them.

use std::collections::BTreeSet;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::domain::{AgentName, DomainName, NameError};

/// URI prefix of the agent-name SAN.
pub const AGENT_URI_PREFIX: &str = "urn:pwrelay:agent:";
/// URI prefix of each domain SAN.
pub const DOMAIN_URI_PREFIX: &str = "urn:pwrelay:domain:";

/// Why a certificate does not carry a usable agent identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The DER bytes are not a certificate.
    #[error("the client certificate cannot be parsed: {0}")]
    Unparsable(String),
    /// No `urn:pwrelay:agent:` SAN, or more than one.
    #[error(
        "the client certificate must carry exactly one URI SAN {AGENT_URI_PREFIX}<name>; issue it with `pwrelay pki issue-agent`"
    )]
    AgentName,
    /// No domain SAN.
    #[error(
        "the client certificate names no AD domain (URI SAN {DOMAIN_URI_PREFIX}<domain>); issue it with `pwrelay pki issue-agent --domain ...`"
    )]
    NoDomain,
    /// A SAN value is malformed.
    #[error(transparent)]
    Name(#[from] NameError),
}

/// Who an agent is and which AD domains it may serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    /// The agent's name.
    pub name: AgentName,
    /// The domains the agent is authorized for.
    pub domains: BTreeSet<DomainName>,
}

impl AgentIdentity {
    /// The URI SANs that encode this identity.
    pub fn uris(&self) -> Vec<String> {
        std::iter::once(format!("{AGENT_URI_PREFIX}{}", self.name))
            .chain(self.domains.iter().map(|d| format!("{DOMAIN_URI_PREFIX}{d}")))
            .collect()
    }

    /// Reads the identity out of a DER-encoded certificate.
    pub fn from_certificate_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| IdentityError::Unparsable(e.to_string()))?;
        let mut names = Vec::new();
        let mut domains = BTreeSet::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for general_name in &san.value.general_names {
                if let GeneralName::URI(uri) = general_name {
                    if let Some(name) = uri.strip_prefix(AGENT_URI_PREFIX) {
                        names.push(AgentName::parse(name)?);
                    } else if let Some(domain) = uri.strip_prefix(DOMAIN_URI_PREFIX) {
                        domains.insert(DomainName::parse(domain)?);
                    }
                }
            }
        }
        let name = match <[AgentName; 1]>::try_from(names) {
            Ok([name]) => name,
            Err(_) => return Err(IdentityError::AgentName),
        };
        if domains.is_empty() {
            return Err(IdentityError::NoDomain);
        }
        Ok(Self { name, domains })
    }
}

/// When a DER-encoded certificate expires (its notAfter, Unix seconds); `None` when unparsable.
pub fn certificate_expiry_unix(der: &[u8]) -> Option<i64> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// When a DER-encoded certificate starts and stops being valid (notBefore, notAfter: Unix
/// seconds); `None` when unparsable.
pub fn certificate_validity_unix(der: &[u8]) -> Option<(i64, i64)> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some((cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp()))
}
