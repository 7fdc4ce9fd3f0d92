//! API clients: their token hashes and scopes.

use async_trait::async_trait;
use pwrelay_shared::domain::DomainName;

use super::StoreError;

/// An API client as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiClient {
    /// Its name (shown in jobs and logs).
    pub name: String,
    /// What it may do.
    pub scopes: Scopes,
}

/// What an API client may do: which operations, in which domains. `None` means all.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Scopes {
    /// Domains the client may act in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domains: Option<std::collections::BTreeSet<DomainName>>,
    /// Operations the client may ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operations: Option<std::collections::BTreeSet<Operation>>,
}

/// Operations a client can be allowed; reading its own jobs is always allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// Set or generate passwords (`POST /v1/rotations`).
    Rotate,
    /// Check passwords (`POST /v1/verifications`).
    Verify,
    /// Clear lockouts (`POST /v1/unlocks`).
    Unlock,
    /// Reset to the derived value.
    Reconcile,
    /// Read new-hire (Lifecycle Workflows) requests and their jobs.
    Lifecycle,
    /// See the operators' status page (`GET /status`) for the client's domains.
    Status,
    /// Read the audit trail (`GET /v1/audit`) of the client's domains; never part of the default.
    Audit,
}

impl Operation {
    /// The name used in scopes and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rotate => "rotate",
            Self::Verify => "verify",
            Self::Unlock => "unlock",
            Self::Reconcile => "reconcile",
            Self::Lifecycle => "lifecycle",
            Self::Status => "status",
            Self::Audit => "audit",
        }
    }

    /// Parses a scope name.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Rotate, Self::Verify, Self::Unlock, Self::Reconcile, Self::Lifecycle, Self::Status, Self::Audit]
            .into_iter()
            .find(|o| o.as_str() == text)
    }
}

impl Scopes {
    /// Whether the client's scopes name `operation` explicitly. Operations that expose other
    /// people's data (`lifecycle`, `audit`) are never part of the unrestricted default.
    pub fn names(&self, operation: Operation) -> bool {
        self.operations.as_ref().is_some_and(|ops| ops.contains(&operation))
    }

    /// The scope `operation` in `domain` lacks, if any, named for an error message.
    pub fn missing(&self, operation: Operation, domain: &DomainName) -> Option<String> {
        if self.operations.as_ref().is_some_and(|ops| !ops.contains(&operation)) {
            return Some(format!("operation:{}", operation.as_str()));
        }
        if self.domains.as_ref().is_some_and(|domains| !domains.contains(domain)) {
            return Some(format!("domain:{domain}"));
        }
        None
    }

    /// Whether the client may use `operation` at all: its scopes list it, or list no operation
    /// (all operations; [`Self::names`] is for those that must be granted explicitly).
    pub fn allows(&self, operation: Operation) -> bool {
        self.operations.as_ref().is_none_or(|ops| ops.contains(&operation))
    }
}

/// API clients, found by the SHA-256 of their bearer token.
#[async_trait]
pub trait ClientStore: Send + Sync + 'static {
    /// Registers an API client by the SHA-256 of its token.
    async fn add_client(&self, name: &str, token_sha256: [u8; 32], scopes: &Scopes) -> Result<(), StoreError>;

    /// Replaces a client's token (the old one stops working at once). False when no such client.
    async fn rotate_client_token(&self, name: &str, token_sha256: [u8; 32]) -> Result<bool, StoreError>;

    /// Replaces a client's scopes (they hold from its next request on). False when no such client.
    async fn set_client_scopes(&self, name: &str, scopes: &Scopes) -> Result<bool, StoreError>;

    /// Removes a client (its token stops working; its jobs stay). False when no such client.
    async fn revoke_client(&self, name: &str) -> Result<bool, StoreError>;

    /// The client whose token hashes to `token_sha256`.
    async fn client_by_token(&self, token_sha256: [u8; 32]) -> Result<Option<ApiClient>, StoreError>;

    /// The client named `name` (a status page session names its client, and is good only while
    /// the client exists).
    async fn client_by_name(&self, name: &str) -> Result<Option<ApiClient>, StoreError>;
}
