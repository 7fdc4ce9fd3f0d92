//! Agent enrollment: one-time enrollment tokens and the deny list of revoked agents.
//!
//! A token is stored by its id with the SHA-256 of its secret, the agent name and domains the
//! certificate it buys will carry, and its expiry. Using it is one fenced statement
//! ([`EnrollmentStore::use_enrollment_token`]: unused, unexpired, and the same secret hash, in
//! the `WHERE`), so two enrollments with one token cannot both succeed, on any number of
//! replicas. The caller compares the secret in constant time first
//! ([`EnrollmentStore::enrollment_token`]), so a wrong secret never uses a token up.
//!
//! A revocation names an agent and when it was revoked: every certificate of that agent issued
//! before then (its notBefore) is refused, at the handshake and on open streams; certificates
//! the relay issues later (a new enrollment) are not. Revoking also ends the agent's leases at
//! once, so its jobs are claimed again after the write timeout, like those of an agent that went
//! away.

use std::collections::BTreeSet;

use async_trait::async_trait;
use pwrelay_shared::domain::{AgentName, DomainName};

use super::StoreError;
use crate::jobs::Timestamp;

/// How long a used or expired token is kept (for `agents enroll-token` audits) before it is
/// deleted.
pub const TOKEN_KEEP_MS: i64 = 7 * 86_400_000;

/// A token to store.
#[derive(Debug, Clone)]
pub struct NewEnrollmentToken {
    /// The token's id, hexadecimal.
    pub id: String,
    /// SHA-256 of its secret.
    pub secret_sha256: [u8; 32],
    /// The agent name the certificate will carry.
    pub agent: AgentName,
    /// The AD domains it will carry.
    pub domains: BTreeSet<DomainName>,
    /// When it was made.
    pub created: Timestamp,
    /// When it stops being usable.
    pub expires: Timestamp,
}

/// A stored token.
#[derive(Debug, Clone)]
pub struct StoredEnrollmentToken {
    /// SHA-256 of its secret.
    pub secret_sha256: Vec<u8>,
    /// The agent name the certificate will carry.
    pub agent: AgentName,
    /// The AD domains it will carry.
    pub domains: BTreeSet<DomainName>,
    /// When it stops being usable.
    pub expires: Timestamp,
    /// When it was used, if it was.
    pub used: Option<Timestamp>,
}

/// One entry of the deny list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The agent.
    pub agent: String,
    /// Certificates of the agent issued before this are refused.
    pub revoked: Timestamp,
}

/// What [`EnrollmentStore::revoke_agent`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revoked {
    /// Leases of the agent that were ended.
    pub leases_released: usize,
}

/// Enrollment tokens and revocations.
#[async_trait]
pub trait EnrollmentStore: Send + Sync {
    /// Stores a new token (and deletes tokens that ended more than [`TOKEN_KEEP_MS`] ago).
    async fn add_enrollment_token(&self, token: &NewEnrollmentToken) -> Result<(), StoreError>;

    /// The token with `id`, used or not.
    async fn enrollment_token(&self, id: &str) -> Result<Option<StoredEnrollmentToken>, StoreError>;

    /// Marks the token used by `peer`, only if it is unused, unexpired at `now` and its secret
    /// hash is `secret_sha256`: true when this call used it.
    async fn use_enrollment_token(
        &self,
        id: &str,
        secret_sha256: &[u8; 32],
        now: Timestamp,
        peer: &str,
    ) -> Result<bool, StoreError>;

    /// Puts `agent` on the deny list as of `at` (a later revocation moves the time on) and ends
    /// its leases: in one transaction.
    async fn revoke_agent(&self, agent: &AgentName, at: Timestamp) -> Result<Revoked, StoreError>;

    /// The whole deny list.
    async fn revocations(&self) -> Result<Vec<Revocation>, StoreError>;
}

/// The domains as stored (a JSON array).
pub(crate) fn domains_to_json(domains: &BTreeSet<DomainName>) -> Result<String, StoreError> {
    serde_json::to_string(&domains.iter().map(DomainName::as_str).collect::<Vec<_>>())
        .map_err(|e| StoreError::Database(e.to_string()))
}

/// A stored row back into a token.
pub(crate) fn token_from_row(
    id: &str,
    secret_sha256: Vec<u8>,
    agent: &str,
    domains: &str,
    expires_ms: i64,
    used_ms: Option<i64>,
) -> Result<StoredEnrollmentToken, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt { id: format!("enrollment token {id}"), reason };
    let agent = AgentName::parse(agent).map_err(|e| corrupt(e.to_string()))?;
    let names: Vec<String> = serde_json::from_str(domains).map_err(|e| corrupt(e.to_string()))?;
    let domains =
        names.iter().map(|d| DomainName::parse(d)).collect::<Result<_, _>>().map_err(|e| corrupt(e.to_string()))?;
    Ok(StoredEnrollmentToken {
        secret_sha256,
        agent,
        domains,
        expires: Timestamp(expires_ms),
        used: used_ms.map(Timestamp),
    })
}
