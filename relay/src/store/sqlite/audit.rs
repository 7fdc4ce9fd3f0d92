//! The audit trail in SQLite.

use async_trait::async_trait;
use rusqlite::params;

use super::{SqliteStore, db_err, ms};
use crate::audit::AuditRecord;
use crate::jobs::Timestamp;
use crate::store::StoreError;
use crate::store::audit::{AuditFilter, AuditStore, COLUMNS, details};

#[async_trait]
impl AuditStore for SqliteStore {
    async fn record_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        let records = records.to_vec();
        self.run(move |conn| {
            let tx = conn.transaction().map_err(db_err)?;
            {
                let mut insert = tx
                    .prepare_cached(
                        "INSERT INTO audit_events (at_ms, event_id, event, replica, client, agent, domain, job_id, address, details)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    )
                    .map_err(db_err)?;
                for r in &records {
                    insert
                        .execute(params![
                            r.time.0,
                            r.event_id,
                            r.event,
                            r.replica,
                            r.client,
                            r.agent,
                            r.domain,
                            r.job_id,
                            r.address,
                            r.details.to_string()
                        ])
                        .map_err(db_err)?;
                }
            }
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn audit_events(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let filter = filter.clone();
        self.run(move |conn| {
            let domains = filter.domains.as_ref().map(|d| serde_json::Value::from(d.clone()).to_string());
            let sql = format!(
                "SELECT {COLUMNS} FROM audit_events
                  WHERE seq > ?1
                    AND (?2 IS NULL OR at_ms >= ?2) AND (?3 IS NULL OR at_ms < ?3)
                    AND (?4 IS NULL OR event_id = ?4) AND (?5 IS NULL OR client = ?5)
                    AND (?6 IS NULL OR agent = ?6) AND (?7 IS NULL OR job_id = ?7)
                    AND (?8 IS NULL OR domain IN (SELECT value FROM json_each(?8)))
                    AND (?10 IS NULL OR event = ?10)
                  ORDER BY seq LIMIT ?9"
            );
            let mut select = conn.prepare_cached(&sql).map_err(db_err)?;
            let rows = select
                .query_map(
                    params![
                        filter.after.unwrap_or(0),
                        filter.since.map(|t| t.0),
                        filter.until.map(|t| t.0),
                        filter.event_id,
                        filter.client,
                        filter.agent,
                        filter.job_id,
                        domains,
                        i64::try_from(filter.limit).unwrap_or(i64::MAX),
                        filter.event,
                    ],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            AuditRecord {
                                seq: Some(r.get(0)?),
                                time: Timestamp(r.get(1)?),
                                event_id: r.get(2)?,
                                event: r.get(3)?,
                                replica: r.get(4)?,
                                client: r.get(5)?,
                                agent: r.get(6)?,
                                domain: r.get(7)?,
                                job_id: r.get(8)?,
                                address: r.get(9)?,
                                details: serde_json::Value::Null,
                            },
                            r.get::<_, String>(10)?,
                        ))
                    },
                )
                .map_err(db_err)?;
            let mut records = Vec::new();
            for row in rows {
                let (seq, mut record, text) = row.map_err(db_err)?;
                record.details = details(seq, &text)?;
                records.push(record);
            }
            Ok(records)
        })
        .await
    }

    async fn purge_audit(&self, older_than: std::time::Duration) -> Result<usize, StoreError> {
        self.run(move |conn| {
            let before = Timestamp::now().0.saturating_sub(ms(older_than));
            conn.execute("DELETE FROM audit_events WHERE at_ms < ?1", params![before]).map_err(db_err)
        })
        .await
    }
}
