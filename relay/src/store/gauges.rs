//! What the relay's metrics read from the store at each scrape: the job queue by domain, the
//! webhook outbox and the new-hire requests by state. Every replica reads the same numbers, so a
//! gauge of one replica is the fleet's (alert on `max`, not `sum`). The status page reads them
//! too, and the recent failures by domain and error code ([`GaugeStore::failures_since`]).
//!
//! Each is one grouped count over indexed columns, the same statement on both backends.

use async_trait::async_trait;

use super::StoreError;
use crate::jobs::Timestamp;

/// The queue of one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainQueue {
    /// The AD domain.
    pub domain: String,
    /// Jobs waiting for an agent (batch jobs not counted: their children are).
    pub queued: u64,
    /// Jobs leased to an agent.
    pub dispatched: u64,
    /// When the oldest queued job was accepted.
    pub oldest_queued: Option<Timestamp>,
}

/// How many rows are in one state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateCount {
    /// The state (`pending`, `delivered`, `failed`; or a new-hire stage).
    pub state: String,
    /// Rows in it.
    pub count: u64,
    /// When the oldest of them was created.
    pub oldest: Option<Timestamp>,
}

/// The store's side of the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreGauges {
    /// Unfinished jobs by domain (domains without any are absent).
    pub queue: Vec<DomainQueue>,
    /// Webhook deliveries by state.
    pub webhooks: Vec<StateCount>,
    /// New-hire requests by stage.
    pub new_hires: Vec<StateCount>,
}

/// Jobs of one domain that failed with one error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureCount {
    /// The AD domain.
    pub domain: String,
    /// The job's error code (`policy_violation`, `no_agent`, ...).
    pub error_code: String,
    /// Jobs that failed with it.
    pub count: u64,
}

/// Reads [`StoreGauges`].
#[async_trait]
pub trait GaugeStore: Send + Sync {
    /// The current gauges.
    async fn gauges(&self) -> Result<StoreGauges, StoreError>;

    /// Jobs that failed at or after `since`, by domain and error code (ordered so).
    async fn failures_since(&self, since: Timestamp) -> Result<Vec<FailureCount>, StoreError>;
}

/// Unfinished jobs by domain: domain, queued, dispatched, oldest queued (Unix ms). The states are
/// an `OR`, the condition of SQLite's index of open jobs (`jobs_claim_order`), so that the scrape
/// reads that index instead of every job kept.
pub(crate) const QUEUE: &str = "SELECT domain,
       SUM(CASE WHEN state = 'queued' THEN 1 ELSE 0 END),
       SUM(CASE WHEN state = 'dispatched' THEN 1 ELSE 0 END),
       MIN(CASE WHEN state = 'queued' THEN created_ms END)
  FROM jobs
 WHERE (state = 'queued' OR state = 'dispatched') AND kind <> 'reconcile_batch'
 GROUP BY domain
 ORDER BY domain";

/// Webhook deliveries by state: state, count, oldest (Unix ms).
pub(crate) const WEBHOOKS: &str =
    "SELECT state, COUNT(*), MIN(created_ms) FROM webhook_deliveries GROUP BY state ORDER BY state";

/// New-hire requests by stage: stage, count, oldest (Unix ms).
pub(crate) const NEW_HIRES: &str =
    "SELECT stage, COUNT(*), MIN(created_ms) FROM lifecycle_requests GROUP BY stage ORDER BY stage";

/// Failed jobs by domain and error code since `$1` (Unix ms): domain, error code, count. `$1` is
/// a positional parameter in both PostgreSQL and SQLite. Batch jobs are not counted (their
/// children are).
pub(crate) const FAILURES: &str = "SELECT domain, COALESCE(error_code, 'unknown'), COUNT(*)
  FROM jobs
 WHERE state = 'failed' AND finished_ms >= $1 AND kind <> 'reconcile_batch'
 GROUP BY domain, COALESCE(error_code, 'unknown')
 ORDER BY domain, COALESCE(error_code, 'unknown')";

/// A count read from the database (never negative).
pub(crate) fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
