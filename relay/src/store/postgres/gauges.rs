//! The metrics' gauges in PostgreSQL.

use async_trait::async_trait;

use super::{PostgresStore, db_err};
use crate::jobs::Timestamp;
use crate::store::StoreError;
use crate::store::gauges::{self, DomainQueue, FailureCount, GaugeStore, StateCount, StoreGauges, count};

#[async_trait]
impl GaugeStore for PostgresStore {
    async fn gauges(&self) -> Result<StoreGauges, StoreError> {
        let conn = self.client().await?;
        let queue = conn
            .query(gauges::QUEUE, &[])
            .await
            .map_err(db_err)?
            .iter()
            .map(|r| DomainQueue {
                domain: r.get(0),
                queued: count(r.get(1)),
                dispatched: count(r.get(2)),
                oldest_queued: r.get::<_, Option<i64>>(3).map(Timestamp),
            })
            .collect();
        let mut by_state = Vec::with_capacity(2);
        for sql in [gauges::WEBHOOKS, gauges::NEW_HIRES] {
            let rows = conn.query(sql, &[]).await.map_err(db_err)?;
            by_state.push(
                rows.iter()
                    .map(|r| StateCount {
                        state: r.get(0),
                        count: count(r.get(1)),
                        oldest: r.get::<_, Option<i64>>(2).map(Timestamp),
                    })
                    .collect::<Vec<_>>(),
            );
        }
        let new_hires = by_state.pop().unwrap_or_default();
        let webhooks = by_state.pop().unwrap_or_default();
        Ok(StoreGauges { queue, webhooks, new_hires })
    }

    async fn failures_since(&self, since: Timestamp) -> Result<Vec<FailureCount>, StoreError> {
        let conn = self.client().await?;
        let rows = conn.query(gauges::FAILURES, &[&since.0]).await.map_err(db_err)?;
        Ok(rows
            .iter()
            .map(|r| FailureCount { domain: r.get(0), error_code: r.get(1), count: count(r.get(2)) })
            .collect())
    }
}
