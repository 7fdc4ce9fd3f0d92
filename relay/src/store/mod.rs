//! The durable store, behind small traits grouped by what they hold.
//!
//! Every state change is one call here, and each call is atomic (one transaction). The traits:
//! - [`JobStore`] (`jobs.rs`): jobs and batches, claims, leases and fenced results, idempotency
//!   keys, returned secrets; the lease invariants are in its module documentation.
//! - [`ClientStore`] (`clients.rs`): API clients and their scopes.
//! - [`WebhookStore`] (`webhooks.rs`): subscriptions, the outbox and the delivery log.
//! - [`LifecycleStore`] (`lifecycle.rs`): new-hire requests and their one-time links.
//! - [`AgentStore`] (`agents.rs`): the known agents, their state and DC health, shared by replicas.
//! - [`GaugeStore`] (`gauges.rs`): the counts the metrics read at each scrape.
//! - [`ReplicaStore`] (`replicas.rs`): the relay processes sharing the store, with heartbeats.
//! - [`EnrollmentStore`] (`enrollment.rs`): one-time enrollment tokens, used atomically, and the
//!   deny list of revoked agents.
//! - [`AuditStore`] (`audit.rs`): the audit trail of every replica, and its retention.
//!
//! [`Store`] is all of them plus readiness: the relay holds one `Arc<dyn Store>` and hands it to
//! the API, the agent link and the workers; [`open`] makes it from `[store]`. Each backend is a
//! folder of the same shape, one file per trait: [`sqlite`] is the embedded default for one relay,
//! [`postgres`] the one several relays can share. `tests.rs` is the contract both are held to.

pub mod agents;
pub mod audit;
mod clients;
mod columns;
pub mod enrollment;
pub mod gauges;
mod jobs;
pub mod lifecycle;
pub mod postgres;
pub mod replicas;
pub mod sqlite;
mod webhooks;

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::config::{StoreBackend, StoreConfig};
use crate::jobs::events::JobEvents;

pub use agents::{AgentState, AgentStore, AgentThresholds, KnownAgent};
pub use audit::{AuditFilter, AuditStore};
pub use clients::{ApiClient, ClientStore, Operation, Scopes};
pub use enrollment::EnrollmentStore;
pub use gauges::{GaugeStore, StoreGauges};
pub use jobs::{Cancellation, ClaimDemand, ClaimPolicy, Completion, Insertion, JobFilter, JobStore, SecretTake};
pub use lifecycle::LifecycleStore;
pub use replicas::{ReplicaId, ReplicaStore};
pub use webhooks::WebhookStore;

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

/// Everything the relay keeps, in one backend.
#[async_trait]
pub trait Store:
    JobStore
    + ClientStore
    + WebhookStore
    + LifecycleStore
    + ReplicaStore
    + AgentStore
    + GaugeStore
    + EnrollmentStore
    + AuditStore
{
    /// Whether the store can be read and written (readiness).
    async fn check(&self) -> Result<(), StoreError>;

    /// Where the store is, for logs: a file, or a database without its credentials.
    fn location(&self) -> String;

    /// Deletes what ended more than `older_than` ago (`jobs.retention_days`), in one transaction:
    /// new-hire requests whose workflow was resumed (or whose resume failed for good), and final
    /// jobs with their results, except children of a batch that is not itself purged and jobs a
    /// remaining new-hire request refers to. Returns how many jobs and requests.
    async fn purge_finished(&self, older_than: std::time::Duration) -> Result<Purged, StoreError>;

    /// Feeds what other replicas did to the store into `events` until `cancel`: on PostgreSQL,
    /// the `pwrelay_jobs` notifications every job change sends, over one listening connection
    /// that is made again (with back-off, logged at WARN) when it drops. An SQLite store has one
    /// process, whose own signals are all there is: it only waits for `cancel`.
    async fn forward_notifications(&self, events: std::sync::Arc<JobEvents>, cancel: CancellationToken) {
        let _ = events;
        cancel.cancelled().await;
    }
}

/// What [`Store::purge_finished`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Final jobs.
    pub jobs: usize,
    /// Finished new-hire requests.
    pub new_hires: usize,
}

/// The statements of [`Store::purge_finished`], the same on both backends (`$1`/`?1`: the cutoff,
/// Unix milliseconds).
pub(crate) const PURGE_FINISHED_REQUESTS: &str =
    "DELETE FROM lifecycle_requests WHERE stage IN ('done', 'resume_failed') AND updated_ms < $1";
pub(crate) const PURGE_FINISHED_JOBS: &str = "DELETE FROM jobs
 WHERE state IN ('succeeded', 'failed') AND finished_ms < $1
   AND (parent_id IS NULL
        OR parent_id IN (SELECT p.id FROM jobs p WHERE p.state IN ('succeeded', 'failed') AND p.finished_ms < $1))
   AND id NOT IN (SELECT l.job_id FROM lifecycle_requests l WHERE l.job_id IS NOT NULL)";

/// Opens the store the configuration names and brings its schema up to date.
pub async fn open(config: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match &config.backend {
        StoreBackend::Sqlite { path } => Arc::new(sqlite::SqliteStore::open(path)?),
        StoreBackend::Postgres(postgres) => Arc::new(postgres::PostgresStore::open(postgres).await?),
    })
}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

#[cfg(test)]
mod tests;
