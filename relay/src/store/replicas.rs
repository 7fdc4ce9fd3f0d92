//! Relay replicas: every relay process is a replica with a random id, made when it opens the
//! store, and a heartbeat in the `replicas` table, so that any replica can decide whether another
//! is alive. That decides who may finish work that lives in one process's memory (a new hire's
//! link key, [`crate::lifecycle::keys`]): the replica that holds it while it is alive, a re-issue
//! once it is not.
//!
//! A replica is alive while its last heartbeat is younger than [`DEAD_AFTER`]; it beats every
//! [`HEARTBEAT_INTERVAL`] and removes its row when it stops cleanly, so what it held is re-issued
//! at once instead of after [`DEAD_AFTER`]. A replica that cannot reach the store for longer than
//! that is taken for dead too: the work it held is re-issued, and its own late writes are refused
//! by the fences (a link is opened only by the replica that holds the job's result).

use std::time::Duration;

use async_trait::async_trait;

use super::StoreError;

/// How often a replica records that it is alive.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// A replica whose last heartbeat is older than this is dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(20);
/// Rows of replicas dead for longer than this are deleted by the heartbeat.
const FORGET_AFTER: Duration = Duration::from_secs(86_400);

/// A replica's id: random per process, never reused.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ReplicaId(String);

impl ReplicaId {
    /// A fresh id.
    pub fn generate() -> Self {
        Self(format!("replica-{}", uuid::Uuid::new_v4().simple()))
    }

    /// The id as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The replicas sharing the store.
#[async_trait]
pub trait ReplicaStore: Send + Sync + 'static {
    /// This process's replica id (made when the store was opened).
    fn replica(&self) -> &ReplicaId;

    /// Records that this replica is alive now (registering it the first time), and forgets
    /// replicas that have been dead for a day.
    async fn heartbeat(&self) -> Result<(), StoreError>;

    /// Removes this replica (a clean stop): the work it held is re-issued at once.
    async fn retire(&self) -> Result<(), StoreError>;

    /// The replicas alive now.
    async fn live_replicas(&self) -> Result<Vec<ReplicaId>, StoreError>;
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The statements, the same on both backends (`$1`: the replica, `$2`: now, Unix milliseconds).
pub(crate) const HEARTBEAT: &str = "INSERT INTO replicas (id, started_ms, heartbeat_ms) VALUES ($1, $2, $2)
 ON CONFLICT (id) DO UPDATE SET heartbeat_ms = excluded.heartbeat_ms";
/// `$1`: the oldest heartbeat kept.
pub(crate) const FORGET: &str = "DELETE FROM replicas WHERE heartbeat_ms < $1";
/// `$1`: the replica.
pub(crate) const RETIRE: &str = "DELETE FROM replicas WHERE id = $1";
/// `$1`: the oldest heartbeat of a live replica.
pub(crate) const LIVE: &str = "SELECT id FROM replicas WHERE heartbeat_ms > $1 ORDER BY id";

/// The oldest heartbeat a live replica can have at `now`.
pub(crate) fn alive_since(now: i64) -> i64 {
    now.saturating_sub(ms(DEAD_AFTER))
}

/// The oldest heartbeat kept at `now`.
pub(crate) fn forget_before(now: i64) -> i64 {
    now.saturating_sub(ms(FORGET_AFTER))
}

/// A stored id.
pub(crate) fn parse(id: String) -> ReplicaId {
    ReplicaId(id)
}
