//! The audit trail as the store keeps it: every replica's events in one table, for
//! `GET /v1/audit` and `pwrelay audit list`, deleted after `audit.retention_days`.

use async_trait::async_trait;

use super::StoreError;
use crate::audit::AuditRecord;
use crate::jobs::Timestamp;

/// What a listing of the audit trail selects; every filter is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// At or after this time.
    pub since: Option<Timestamp>,
    /// Before this time.
    pub until: Option<Timestamp>,
    /// Of this event id (one no event has selects nothing).
    pub event_id: Option<u32>,
    /// Of this event name (one no event has selects nothing).
    pub event: Option<String>,
    /// Concerning this API client.
    pub client: Option<String>,
    /// Concerning this agent.
    pub agent: Option<String>,
    /// Concerning this job.
    pub job_id: Option<String>,
    /// Only events of these domains (a domain-scoped reader); `None`: every event.
    pub domains: Option<Vec<String>>,
    /// After this position (the previous page's last `seq`).
    pub after: Option<i64>,
    /// At most this many, oldest first.
    pub limit: usize,
}

/// The stored audit trail.
#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    /// Appends `records` in one transaction; each gets the next position.
    async fn record_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError>;

    /// The events `filter` selects, oldest first, with their positions.
    async fn audit_events(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError>;

    /// Deletes events older than `older_than` (`audit.retention_days`); returns how many.
    /// Idempotent; on PostgreSQL under its own sweep lock, so replicas do not contend.
    async fn purge_audit(&self, older_than: std::time::Duration) -> Result<usize, StoreError>;
}

/// The columns of a listing, in order, the same on both backends.
pub(crate) const COLUMNS: &str =
    "seq, at_ms, event_id, event, replica, client, agent, domain, job_id, address, details";

/// A stored row's details: a JSON object, or a corrupt record.
pub(crate) fn details(seq: i64, text: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text)
        .map_err(|_| StoreError::Corrupt { id: format!("audit event {seq}"), reason: "bad details".into() })
}
