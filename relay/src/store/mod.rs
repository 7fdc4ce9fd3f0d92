//! The durable job store, behind one narrow interface.
//!
//! Every state change of a job is one call here, and each call is atomic. [`Store::claim`] is the
//! only way a job reaches an agent: it atomically leases up to `limit` claimable jobs of the given
//! domains to one holder and increments each job's attempt, the fencing token. In SQL that is a
//! single `UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING ...`.
//!
//! The lease invariants, which every backend keeps in its statements (never read, check, then
//! write):
//! - **Fencing.** A result ([`Store::complete`]) or a renewal ([`Store::renew`]) changes a job only
//!   when the job is dispatched to that holder under that attempt: holder and attempt are in the
//!   `WHERE`. Anything else is stale and changes nothing.
//! - **One writer per account.** A job is claimable only when no older job of the same account
//!   (`account_key`: domain plus the target as given, normalised) is unfinished, and no attempt on
//!   the account is unresolved: a dispatched job is unresolved until it reports, or until its
//!   lease plus the write timeout has passed. So jobs for one account run in the order they were
//!   accepted, and an attempt that may still be writing is never overlapped by another.
//! - A lapsed lease is not taken away until the write timeout has passed on top of it; until then
//!   its holder may still renew it or report.
//!
//! [`sqlite::SqliteStore`] is the embedded implementation.

pub mod lifecycle;
pub mod sqlite;

use std::time::Duration;

use async_trait::async_trait;
use pwrelay_shared::domain::DomainName;

use crate::jobs::{Job, JobId, LeasedJob, NewJob, Outcome, ResultSecret, Timestamp};
use crate::webhooks::{AfterAttempt, Attempt, DeliveryFilter, DeliveryRecord, DueDelivery, StoredWebhook};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed the operation.
    #[error("job store: {0}")]
    Database(String),
    /// A stored row does not parse (written by a newer version, or edited by hand).
    #[error("job store holds an unreadable record {id}: {reason}")]
    Corrupt {
        /// The record.
        id: String,
        /// What is wrong.
        reason: String,
    },
    /// The name is taken.
    #[error("an API client named {0:?} already exists")]
    ClientExists(String),
}

/// Limits applied while claiming.
#[derive(Clone, Copy, Debug)]
pub struct ClaimPolicy {
    /// How long a lease lasts from when it is granted or renewed.
    pub lease: Duration,
    /// The longest an agent's LDAP write may take: a lapsed lease is taken over, and its account
    /// handed to another attempt, only once this has passed on top of it.
    pub write_timeout: Duration,
    /// After this many leases a job fails with `delivery_exhausted` instead of being leased again.
    pub max_attempts: u32,
    /// Jobs older than this fail with `expired` instead of being leased.
    pub time_to_live: Duration,
}

/// What happened to a reported outcome.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Completion {
    /// The job is now final.
    Finished,
    /// A retryable failure: the job is queued again (after a back-off, unless the agent never
    /// started it).
    Requeued,
    /// This very result was recorded before (the agent sent it again after a lost
    /// acknowledgement); nothing changed.
    Duplicate,
    /// The result is not from the current attempt of the current holder (another attempt took the
    /// job over, or it is final through another attempt): it changed nothing.
    Stale,
    /// No such job.
    Unknown,
}

/// What happened to a request for a job's returned secret.
#[derive(Debug, PartialEq, Eq)]
pub enum SecretTake {
    /// Here it is; it is now erased from the store.
    Taken(ResultSecret),
    /// It was read before and is gone.
    AlreadyTaken,
    /// The job succeeded but its password never reached the relay (an agent that recorded the
    /// result without it); the account has a password nobody holds: rotate it again.
    Lost,
    /// The job has not finished yet.
    NotReady,
    /// This job returns no secret (not a generating job, or it failed).
    NoSecret,
    /// No such job for this client.
    NotFound,
}

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
        }
    }

    /// Parses a scope name.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Rotate, Self::Verify, Self::Unlock, Self::Reconcile, Self::Lifecycle]
            .into_iter()
            .find(|o| o.as_str() == text)
    }
}

impl Scopes {
    /// Whether the client's scopes name `operation` explicitly. Operations that expose other
    /// people's data (`lifecycle`) are never part of the unrestricted default.
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
}

/// What an insert with an idempotency key found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insertion {
    /// A new job was stored.
    Created,
    /// The key was used before with the same body: this is the original job.
    Replayed(JobId),
    /// The key was used before with another body.
    KeyConflict(JobId),
}

/// Which jobs a listing returns.
#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    /// Only this state.
    pub state: Option<crate::jobs::JobState>,
    /// Only this domain.
    pub domain: Option<DomainName>,
    /// Only jobs created at or after this time.
    pub since: Option<crate::jobs::Timestamp>,
    /// Only jobs created after this one (the cursor).
    pub after: Option<JobId>,
    /// At most this many.
    pub limit: usize,
}

/// What a cancel request found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cancellation {
    /// The job was queued and is now failed with `cancelled`; its secret is erased.
    Cancelled,
    /// An agent holds the job: it may already be applying it.
    InProgress,
    /// The job already ended.
    AlreadyFinal,
    /// No such job for this client.
    NotFound,
}

/// The job store.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new queued job durably (committed when this returns).
    async fn insert_job(&self, job: NewJob) -> Result<(), StoreError> {
        self.insert_jobs_once(vec![job], None).await.map(|_| ())
    }

    /// Stores new jobs (a job, or a batch followed by its children) in one transaction, unless
    /// `idempotency` (the client's key, SHA-256 of the request body) was used before; the key then
    /// refers to the first job.
    async fn insert_jobs_once(
        &self,
        jobs: Vec<NewJob>,
        idempotency: Option<(String, [u8; 32])>,
    ) -> Result<Insertion, StoreError>;

    /// A client's jobs, oldest first, as the filter says.
    async fn list_jobs(&self, client: &str, filter: JobFilter) -> Result<Vec<Job>, StoreError>;

    /// Cancels a queued job of `client`.
    async fn cancel(&self, id: JobId, client: &str) -> Result<Cancellation, StoreError>;

    /// One job, without its secret.
    async fn job(&self, id: JobId) -> Result<Option<Job>, StoreError>;

    /// Atomically leases up to `limit` claimable jobs of `domains` to `holder`, oldest first.
    /// Jobs past their attempts or time to live are failed on the way and not returned.
    async fn claim(
        &self,
        domains: &[DomainName],
        holder: &str,
        agent: &str,
        limit: usize,
        policy: ClaimPolicy,
    ) -> Result<Vec<LeasedJob>, StoreError>;

    /// Records the outcome `holder` reported for `attempt`, fenced: only while the job is
    /// dispatched to that holder under that attempt. A final outcome erases the secret.
    async fn complete(&self, id: JobId, holder: &str, attempt: u32, outcome: Outcome)
    -> Result<Completion, StoreError>;

    /// Extends the leases of `running` (job and attempt) by `lease` from now, each only while
    /// dispatched to `holder` under that attempt (a lapsed lease included, as long as nobody took
    /// it over). Returns the ones renewed.
    async fn renew(
        &self,
        holder: &str,
        running: Vec<(JobId, u32)>,
        lease: Duration,
    ) -> Result<Vec<(JobId, u32)>, StoreError>;

    /// Registers an API client by the SHA-256 of its token.
    async fn add_client(&self, name: &str, token_sha256: [u8; 32], scopes: &Scopes) -> Result<(), StoreError>;

    /// Replaces a client's token (the old one stops working at once). False when no such client.
    async fn rotate_client_token(&self, name: &str, token_sha256: [u8; 32]) -> Result<bool, StoreError>;

    /// Removes a client (its token stops working; its jobs stay). False when no such client.
    async fn revoke_client(&self, name: &str) -> Result<bool, StoreError>;

    /// The client whose token hashes to `token_sha256`.
    async fn client_by_token(&self, token_sha256: [u8; 32]) -> Result<Option<ApiClient>, StoreError>;

    /// Fails jobs older than the policy's time to live (whatever their domain), erasing their
    /// secrets: queued ones, and dispatched ones whose lease and write timeout have passed (an
    /// agent may still be writing the others). Returns how many.
    async fn expire_overdue(&self, policy: ClaimPolicy) -> Result<usize, StoreError>;

    /// Hands out a generating job's secret exactly once and erases it.
    async fn take_secret(&self, id: JobId, client: &str) -> Result<SecretTake, StoreError>;

    /// Whether the store can be read and written (readiness).
    async fn check(&self) -> Result<(), StoreError>;

    /// A client's webhook, with its sealed signing secret.
    async fn webhook(&self, client: &str) -> Result<Option<StoredWebhook>, StoreError>;

    /// Creates or replaces a client's webhook. False when no such client. Every job of the client
    /// that becomes final from then on gets a delivery, in the transaction that makes it final.
    async fn set_webhook(&self, client: &str, webhook: &StoredWebhook) -> Result<bool, StoreError>;

    /// Removes a client's webhook (its pending deliveries fail at their next attempt). False when
    /// it had none. Revoking a client removes its webhook too.
    async fn remove_webhook(&self, client: &str) -> Result<bool, StoreError>;

    /// Up to `limit` pending deliveries whose next attempt is due, the longest due first, each
    /// with its client's current webhook.
    async fn due_deliveries(&self, limit: usize) -> Result<Vec<DueDelivery>, StoreError>;

    /// When the earliest pending delivery is due, if any is pending.
    async fn next_delivery_due(&self) -> Result<Option<Timestamp>, StoreError>;

    /// Records what happened to a due delivery in one transaction: the attempt made (if one was),
    /// the body (kept from the first attempt on, so retries send the same bytes) and what follows.
    async fn record_delivery(
        &self,
        event_id: &str,
        payload: Option<String>,
        attempt: Option<Attempt>,
        next: AfterAttempt,
    ) -> Result<(), StoreError>;

    /// A client's delivery log, newest first, with every attempt.
    async fn deliveries(&self, client: &str, filter: DeliveryFilter) -> Result<Vec<DeliveryRecord>, StoreError>;

    /// Deletes delivered and failed deliveries (and their attempts) that ended before
    /// `older_than` ago. Returns how many.
    async fn prune_deliveries(&self, older_than: Duration) -> Result<usize, StoreError>;
}
