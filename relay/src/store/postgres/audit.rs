//! The audit trail in PostgreSQL.

use async_trait::async_trait;

use super::{PostgresStore, Sweep, count, db_err, query, sweep_lock};
use crate::audit::AuditRecord;
use crate::jobs::Timestamp;
use crate::store::StoreError;
use crate::store::audit::{AuditFilter, AuditStore, details};

#[async_trait]
impl AuditStore for PostgresStore {
    async fn record_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        let mut conn = self.client().await?;
        let tx = conn.transaction().await.map_err(db_err)?;
        let insert = tx.prepare_cached(query!("audit/record")).await.map_err(db_err)?;
        for r in records {
            let details = r.details.to_string();
            tx.execute(
                &insert,
                &[
                    &r.time.0,
                    &i32::from(r.event_id),
                    &r.event,
                    &r.replica,
                    &r.client,
                    &r.agent,
                    &r.domain,
                    &r.job_id,
                    &r.address,
                    &details,
                ],
            )
            .await
            .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }

    async fn audit_events(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let conn = self.client().await?;
        let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX);
        let rows = conn
            .query(
                query!("audit/list"),
                &[
                    &filter.after.unwrap_or(0),
                    &filter.since.map(|t| t.0),
                    &filter.until.map(|t| t.0),
                    &filter.event_id.map(i64::from),
                    &filter.client,
                    &filter.agent,
                    &filter.job_id,
                    &filter.domains,
                    &limit,
                    &filter.event,
                ],
            )
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|row| {
                let seq: i64 = row.try_get(0).map_err(db_err)?;
                let event_id: i32 = row.try_get(2).map_err(db_err)?;
                let text: String = row.try_get(10).map_err(db_err)?;
                Ok(AuditRecord {
                    seq: Some(seq),
                    time: Timestamp(row.try_get(1).map_err(db_err)?),
                    event_id: u16::try_from(event_id).map_err(|_| StoreError::Corrupt {
                        id: format!("audit event {seq}"),
                        reason: "bad event id".into(),
                    })?,
                    event: row.try_get(3).map_err(db_err)?,
                    replica: row.try_get(4).map_err(db_err)?,
                    client: row.try_get(5).map_err(db_err)?,
                    agent: row.try_get(6).map_err(db_err)?,
                    domain: row.try_get(7).map_err(db_err)?,
                    job_id: row.try_get(8).map_err(db_err)?,
                    address: row.try_get(9).map_err(db_err)?,
                    details: details(seq, &text)?,
                })
            })
            .collect()
    }

    async fn purge_audit(&self, older_than: std::time::Duration) -> Result<usize, StoreError> {
        let mut conn = self.client().await?;
        let tx = conn.transaction().await.map_err(db_err)?;
        if !sweep_lock(&tx, Sweep::AuditLog).await? {
            return Ok(0);
        }
        let older = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
        let before = Timestamp::now().0.saturating_sub(older);
        let purged = tx.execute(query!("audit/purge"), &[&before]).await.map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(count(purged))
    }
}
