//! The durable job store, behind one narrow interface.
//!
//! Every state change of a job is one call here, and each call is atomic. [`Store::claim`] is the
//! only way a job reaches an agent: it atomically leases up to `limit` claimable jobs (queued, or
//! dispatched with a lapsed lease) of the given domains to one holder. In SQL that is a single
//! `UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING ...`; PostgreSQL adds
//! `FOR UPDATE SKIP LOCKED` to the inner select so several relay replicas can share one database.
//!
//! [`sqlite::SqliteStore`] is the embedded implementation.

pub mod sqlite;

use std::time::Duration;

use async_trait::async_trait;
use pwrelay_shared::domain::DomainName;

use crate::jobs::{Job, JobId, LeasedJob, NewJob, Outcome, ResultSecret};

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
    /// How long a lease lasts.
    pub lease: Duration,
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
    /// A retryable failure: the job is queued again after a back-off.
    Requeued,
    /// The job was already final or unknown; the report changed nothing.
    Ignored,
}

/// What happened to a request for a job's returned secret.
#[derive(Debug, PartialEq, Eq)]
pub enum SecretTake {
    /// Here it is; it is now erased from the store.
    Taken(ResultSecret),
    /// It was read before and is gone.
    AlreadyTaken,
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
}

/// The job store.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new queued job durably (committed when this returns).
    async fn insert_job(&self, job: NewJob) -> Result<(), StoreError>;

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

    /// Records the outcome a holder reported. A final outcome erases the secret.
    async fn complete(&self, id: JobId, holder: &str, outcome: Outcome) -> Result<Completion, StoreError>;

    /// Returns every job leased to `holder` to the queue (the agent's stream ended).
    async fn release(&self, holder: &str) -> Result<u64, StoreError>;

    /// Registers an API client by the SHA-256 of its token.
    async fn add_client(&self, name: &str, token_sha256: [u8; 32]) -> Result<(), StoreError>;

    /// The client whose token hashes to `token_sha256`.
    async fn client_by_token(&self, token_sha256: [u8; 32]) -> Result<Option<ApiClient>, StoreError>;

    /// Fails jobs that waited longer than `time_to_live` (whatever their domain), erasing their
    /// secrets. Returns how many.
    async fn expire_overdue(&self, time_to_live: Duration) -> Result<usize, StoreError>;

    /// Hands out a generating job's secret exactly once and erases it.
    async fn take_secret(&self, id: JobId, client: &str) -> Result<SecretTake, StoreError>;

    /// Whether the store can be read and written (readiness).
    async fn check(&self) -> Result<(), StoreError>;
}
