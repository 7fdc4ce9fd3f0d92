//! The metrics' gauges in SQLite.

use async_trait::async_trait;

use super::{SqliteStore, db_err};
use crate::jobs::Timestamp;
use crate::store::StoreError;
use crate::store::gauges::{self, DomainQueue, FailureCount, GaugeStore, StateCount, StoreGauges, count};

#[async_trait]
impl GaugeStore for SqliteStore {
    async fn gauges(&self) -> Result<StoreGauges, StoreError> {
        self.run(|conn| {
            let tx = conn.transaction().map_err(db_err)?;
            let queue = tx
                .prepare_cached(gauges::QUEUE)
                .map_err(db_err)?
                .query_map([], |r| {
                    Ok(DomainQueue {
                        domain: r.get(0)?,
                        queued: count(r.get(1)?),
                        dispatched: count(r.get(2)?),
                        oldest_queued: r.get::<_, Option<i64>>(3)?.map(Timestamp),
                    })
                })
                .map_err(db_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db_err)?;
            let by_state = |sql: &str| -> Result<Vec<StateCount>, StoreError> {
                tx.prepare_cached(sql)
                    .map_err(db_err)?
                    .query_map([], |r| {
                        Ok(StateCount {
                            state: r.get(0)?,
                            count: count(r.get(1)?),
                            oldest: r.get::<_, Option<i64>>(2)?.map(Timestamp),
                        })
                    })
                    .map_err(db_err)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(db_err)
            };
            let webhooks = by_state(gauges::WEBHOOKS)?;
            let new_hires = by_state(gauges::NEW_HIRES)?;
            Ok(StoreGauges { queue, webhooks, new_hires })
        })
        .await
    }

    async fn failures_since(&self, since: Timestamp) -> Result<Vec<FailureCount>, StoreError> {
        self.run(move |conn| {
            conn.prepare_cached(gauges::FAILURES)
                .map_err(db_err)?
                .query_map([since.0], |r| {
                    Ok(FailureCount { domain: r.get(0)?, error_code: r.get(1)?, count: count(r.get(2)?) })
                })
                .map_err(db_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db_err)
        })
        .await
    }
}
