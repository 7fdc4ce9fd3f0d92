//! New-hire requests and their one-time links in SQLite (`lifecycle_requests`, schema v6).

use async_trait::async_trait;
use rusqlite::types::Value;
use rusqlite::{OptionalExtension, params};
use uuid::Uuid;

use std::time::Duration;

use super::{SqliteStore, db_err, ms};
use crate::jobs::{JobId, Timestamp};
use crate::store::lifecycle::{
    CalloutInsertion, LifecycleRequest, LifecycleStore, LinkClaim, LinkState, NewRequest, ResumeResult,
    constant_time_eq, link_request_verdict, read_request,
};
use crate::store::{StoreError, replicas};

const COLUMNS: &str = "l.task_processing_result_id, l.tenant_id, l.workflow_id, l.task_id, l.subject_id, \
    l.display_name, l.stage, l.job_id, j.state, l.delivery, l.delivery_detail, l.outcome, l.outcome_reason, \
    l.resume_attempts, l.link_expires_ms, l.link_claimed_ms, l.link_views, l.created_ms, l.next_attempt_ms, \
    CASE WHEN l.stage = 'delivering' THEN l.key_replica ELSE j.finished_by END, l.reissues";

fn select(conn: &rusqlite::Connection, filter: &str, param: &str) -> Result<Option<LifecycleRequest>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM lifecycle_requests l LEFT JOIN jobs j ON j.id = l.job_id WHERE {filter}");
    let mut stmt = conn.prepare_cached(&sql).map_err(db_err)?;
    let mut rows = stmt.query(params![param]).map_err(db_err)?;
    rows.next().map_err(db_err)?.map(read_request).transpose()
}

/// Erases the link ciphertext of a request (kept in its job's `result_secret`).
const ERASE_CIPHERTEXT: &str = "UPDATE jobs SET result_secret = NULL
    WHERE id = (SELECT job_id FROM lifecycle_requests WHERE task_processing_result_id = ?1)";

#[async_trait]
impl LifecycleStore for SqliteStore {
    async fn insert_callout(&self, request: NewRequest) -> Result<CalloutInsertion, StoreError> {
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db_err)?;
            let c = &request.callout;
            let id = c.task_processing_result_id.to_string();
            let existing: Option<Vec<u8>> = tx
                .query_row(
                    "SELECT body_sha256 FROM lifecycle_requests WHERE task_processing_result_id = ?1",
                    params![id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            if let Some(hash) = existing {
                return Ok(if hash == request.body_sha256 {
                    CalloutInsertion::Repeated
                } else {
                    CalloutInsertion::Conflict
                });
            }
            let now = Timestamp::now().0;
            tx.execute(
                "INSERT INTO lifecycle_requests (task_processing_result_id, tenant_id, workflow_id, task_id, subject_id,
                     display_name, workflow_name, body_sha256, stage, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'resolving', ?9, ?9)",
                params![
                    id,
                    request.tenant_id,
                    c.workflow_id.to_string(),
                    c.task_id.to_string(),
                    c.subject_id.to_string(),
                    c.display_name,
                    c.workflow_name,
                    request.body_sha256.as_slice(),
                    now
                ],
            )
            .map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            Ok(CalloutInsertion::Created)
        })
        .await
    }

    async fn claim_requests(&self, lease: Duration, limit: usize) -> Result<Vec<LifecycleRequest>, StoreError> {
        let replica = self.replica.as_str().to_owned();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db_err)?;
            let now = Timestamp::now().0;
            let until = now + ms(lease);
            tx.execute(
                "UPDATE lifecycle_requests SET claimed_by = ?2, claimed_until_ms = ?3
                 WHERE task_processing_result_id IN (
                     SELECT l.task_processing_result_id FROM lifecycle_requests l LEFT JOIN jobs j ON j.id = l.job_id
                      WHERE (l.claimed_until_ms IS NULL OR l.claimed_until_ms <= ?1)
                        AND ((l.stage IN ('resolving', 'resuming') AND l.next_attempt_ms <= ?1)
                          OR (l.stage = 'applying' AND j.state = 'failed')
                          OR (l.stage = 'applying' AND j.state = 'succeeded'
                              AND (j.finished_by = ?2 OR NOT EXISTS (
                                  SELECT 1 FROM replicas r WHERE r.id = j.finished_by AND r.heartbeat_ms > ?5)))
                          OR (l.stage = 'delivering' AND NOT EXISTS (
                                  SELECT 1 FROM replicas r WHERE r.id = l.key_replica AND r.heartbeat_ms > ?5)))
                      ORDER BY l.created_ms LIMIT ?4)",
                params![now, replica, until, i64::try_from(limit).unwrap_or(i64::MAX), replicas::alive_since(now)],
            )
            .map_err(db_err)?;
            let out = {
                let sql = format!(
                    "SELECT {COLUMNS} FROM lifecycle_requests l LEFT JOIN jobs j ON j.id = l.job_id
                     WHERE l.claimed_by = ?1 AND l.claimed_until_ms = ?2 ORDER BY l.created_ms"
                );
                let mut stmt = tx.prepare_cached(&sql).map_err(db_err)?;
                let mut rows = stmt.query(params![replica, until]).map_err(db_err)?;
                let mut out = Vec::new();
                while let Some(row) = rows.next().map_err(db_err)? {
                    out.push(read_request(row)?);
                }
                out
            };
            tx.commit().map_err(db_err)?;
            Ok(out)
        })
        .await
    }

    async fn request(&self, id: Uuid) -> Result<Option<LifecycleRequest>, StoreError> {
        self.run(move |conn| select(conn, "l.task_processing_result_id = ?1", &id.to_string())).await
    }

    async fn request_of_job(&self, job: JobId) -> Result<Option<LifecycleRequest>, StoreError> {
        self.run(move |conn| select(conn, "l.job_id = ?1", &job.to_string())).await
    }

    async fn set_applying(&self, id: Uuid, job: JobId) -> Result<(), StoreError> {
        let sql = "UPDATE lifecycle_requests SET stage = 'applying', job_id = ?2, updated_ms = ?3,
                 claimed_until_ms = NULL
             WHERE task_processing_result_id = ?1 AND stage = 'resolving'";
        self.update(id, sql, vec![Value::Text(job.to_string())]).await
    }

    async fn postpone(&self, id: Uuid, next_attempt_ms: i64, reason: &str) -> Result<(), StoreError> {
        let sql = "UPDATE lifecycle_requests SET next_attempt_ms = ?2, outcome_reason = ?3, updated_ms = ?4,
                 claimed_until_ms = NULL
             WHERE task_processing_result_id = ?1";
        self.update(id, sql, vec![Value::Integer(next_attempt_ms), Value::Text(reason.to_owned())]).await
    }

    async fn open_link(
        &self,
        id: Uuid,
        link_id: &str,
        proof_sha256: [u8; 32],
        expires: Timestamp,
    ) -> Result<bool, StoreError> {
        let (link_id, replica) = (link_id.to_owned(), self.replica.as_str().to_owned());
        self.run(move |conn| {
            let opened = conn
                .execute(
                    "UPDATE lifecycle_requests SET stage = 'delivering', delivery = 'pending', link_id = ?2,
                         link_proof = ?3, link_expires_ms = ?4, updated_ms = ?5, key_replica = ?6,
                         claimed_until_ms = NULL
                     WHERE task_processing_result_id = ?1 AND stage = 'applying'
                       AND job_id IN (SELECT id FROM jobs WHERE finished_by = ?6)",
                    params![id.to_string(), link_id, proof_sha256.as_slice(), expires.0, Timestamp::now().0, replica],
                )
                .map_err(db_err)?;
            Ok(opened == 1)
        })
        .await
    }

    async fn reissue(&self, id: Uuid, reason: &str) -> Result<bool, StoreError> {
        let (reason, replica) = (reason.to_owned(), self.replica.as_str().to_owned());
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db_err)?;
            let id = id.to_string();
            let fence = "task_processing_result_id = ?1 AND reissues = 0 AND stage IN ('applying', 'delivering')
                         AND claimed_by = ?2";
            let held = tx
                .query_row(&format!("SELECT 1 FROM lifecycle_requests WHERE {fence}"), params![id, replica], |_| Ok(()))
                .optional()
                .map_err(db_err)?
                .is_some();
            if !held {
                return Ok(false);
            }
            tx.execute(ERASE_CIPHERTEXT, params![id]).map_err(db_err)?;
            tx.execute(
                &format!(
                    "UPDATE lifecycle_requests SET stage = 'resolving', job_id = NULL, reissues = reissues + 1,
                         delivery = NULL, delivery_detail = ?3, link_id = NULL, link_proof = NULL,
                         link_expires_ms = NULL, link_views = 0, key_replica = NULL, next_attempt_ms = 0,
                         claimed_until_ms = NULL, updated_ms = ?4
                     WHERE {fence}"
                ),
                params![id, replica, reason, Timestamp::now().0],
            )
            .map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            Ok(true)
        })
        .await
    }

    async fn set_delivery(&self, id: Uuid, delivery: &str, detail: &str) -> Result<(), StoreError> {
        let sql = "UPDATE lifecycle_requests SET delivery = ?2, delivery_detail = ?3, updated_ms = ?4
             WHERE task_processing_result_id = ?1";
        self.update(id, sql, vec![Value::Text(delivery.to_owned()), Value::Text(detail.to_owned())]).await
    }

    async fn set_outcome(&self, id: Uuid, completed: bool, reason: &str) -> Result<(), StoreError> {
        let reason = reason.to_owned();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db_err)?;
            if !completed {
                tx.execute(ERASE_CIPHERTEXT, params![id.to_string()]).map_err(db_err)?;
            }
            tx.execute(
                "UPDATE lifecycle_requests SET stage = 'resuming', outcome = ?2, outcome_reason = ?3,
                     next_attempt_ms = 0, updated_ms = ?4, claimed_until_ms = NULL
                 WHERE task_processing_result_id = ?1 AND stage IN ('resolving', 'applying', 'delivering')",
                params![id.to_string(), if completed { "completed" } else { "failed" }, reason, Timestamp::now().0],
            )
            .map_err(db_err)?;
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn resume_attempted(&self, id: Uuid, result: ResumeResult) -> Result<(), StoreError> {
        self.run(move |conn| {
            let now = Timestamp::now().0;
            let (stage, next, note) = match result {
                ResumeResult::Done => ("done", 0, None),
                ResumeResult::Retry { at_ms, reason } => ("resuming", at_ms, Some(reason)),
                ResumeResult::GiveUp { reason } => ("resume_failed", 0, Some(reason)),
            };
            conn.execute(
                "UPDATE lifecycle_requests SET stage = ?2, next_attempt_ms = ?3, resume_attempts = resume_attempts + 1,
                     delivery_detail = CASE WHEN ?4 IS NULL THEN delivery_detail
                                            ELSE coalesce(delivery_detail || '; ', '') || 'resume: ' || ?4 END,
                     updated_ms = ?5, claimed_until_ms = NULL
                 WHERE task_processing_result_id = ?1 AND stage = 'resuming'",
                params![id.to_string(), stage, next, note, now],
            )
            .map(drop)
            .map_err(db_err)
        })
        .await
    }

    async fn view_link(&self, link_id: &str) -> Result<LinkState, StoreError> {
        let link_id = link_id.to_owned();
        self.run(move |conn| {
            let row: Option<(Option<i64>, Option<i64>, bool, Option<bool>)> = conn
                .query_row(
                    "SELECT l.link_expires_ms, l.link_claimed_ms, j.result_secret IS NOT NULL, j.must_change
                     FROM lifecycle_requests l LEFT JOIN jobs j ON j.id = l.job_id WHERE l.link_id = ?1",
                    params![link_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()
                .map_err(db_err)?;
            let Some((expires, claimed, has_secret, must_change)) = row else { return Ok(LinkState::NotFound) };
            conn.execute(
                "UPDATE lifecycle_requests SET link_views = link_views + 1 WHERE link_id = ?1",
                params![link_id],
            )
            .map_err(db_err)?;
            Ok(match (expires, claimed) {
                (_, Some(_)) => LinkState::Claimed,
                (Some(e), None) if e > Timestamp::now().0 && has_secret => {
                    LinkState::Active { expires: Timestamp(e), must_change: must_change.unwrap_or(true) }
                }
                _ => LinkState::Expired,
            })
        })
        .await
    }

    async fn claim_link(&self, link_id: &str, proof_sha256: [u8; 32]) -> Result<LinkClaim, StoreError> {
        let link_id = link_id.to_owned();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db_err)?;
            let row: Option<(String, Option<Vec<u8>>, Option<i64>, Option<i64>, Option<String>, Option<Vec<u8>>)> = tx
                .query_row(
                    "SELECT l.task_processing_result_id, l.link_proof, l.link_expires_ms, l.link_claimed_ms,
                            l.job_id, j.result_secret
                     FROM lifecycle_requests l LEFT JOIN jobs j ON j.id = l.job_id WHERE l.link_id = ?1",
                    params![link_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
                )
                .optional()
                .map_err(db_err)?;
            let Some((id, proof, expires, claimed, job_id, sealed)) = row else { return Ok(LinkClaim::NotFound) };
            if claimed.is_some() {
                return Ok(LinkClaim::AlreadyUsed);
            }
            let now = Timestamp::now().0;
            let (Some(sealed), Some(job_id), true) = (sealed, job_id, expires.is_some_and(|e| e > now)) else {
                return Ok(LinkClaim::Expired);
            };
            let matches = proof.is_some_and(|p| constant_time_eq(&p, &proof_sha256));
            if !matches {
                return Ok(LinkClaim::WrongProof);
            }
            tx.execute(ERASE_CIPHERTEXT, params![id]).map_err(db_err)?;
            tx.execute(
                "UPDATE lifecycle_requests SET link_claimed_ms = ?2, updated_ms = ?2 WHERE task_processing_result_id = ?1",
                params![id, now],
            )
            .map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            let job_id = job_id.parse().map_err(|_| StoreError::Corrupt { id, reason: "bad job id".into() })?;
            Ok(LinkClaim::Taken { job_id, sealed })
        })
        .await
    }

    async fn expire_links(&self) -> Result<usize, StoreError> {
        self.run(|conn| {
            conn.execute(
                "UPDATE jobs SET result_secret = NULL
                 WHERE result_secret IS NOT NULL AND id IN (
                     SELECT job_id FROM lifecycle_requests
                     WHERE link_claimed_ms IS NULL AND link_expires_ms IS NOT NULL AND link_expires_ms <= ?1)",
                params![Timestamp::now().0],
            )
            .map_err(db_err)
        })
        .await
    }

    async fn count_link_request(
        &self,
        link_id: &str,
        limit: u32,
        window: Duration,
    ) -> Result<Result<(), u64>, StoreError> {
        let link_id = link_id.to_owned();
        self.run(move |conn| {
            let now = Timestamp::now().0;
            let counted: Option<(i64, i64)> = conn
                .query_row(
                    "UPDATE lifecycle_requests SET
                         link_window_ms = CASE WHEN link_window_ms IS NULL OR link_window_ms + ?3 <= ?2
                                               THEN ?2 ELSE link_window_ms END,
                         link_requests = CASE WHEN link_window_ms IS NULL OR link_window_ms + ?3 <= ?2
                                              THEN 1 ELSE link_requests + 1 END
                     WHERE link_id = ?1
                     RETURNING link_window_ms, link_requests",
                    params![link_id, now, ms(window)],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(db_err)?;
            Ok(match counted {
                Some((start, requests)) => link_request_verdict(start, requests, limit, window, now),
                None => Ok(()),
            })
        })
        .await
    }
}

impl SqliteStore {
    /// Runs one `UPDATE` of a request: `?1` is its id, then `values`, and last the time now.
    async fn update(&self, id: Uuid, sql: &'static str, values: Vec<Value>) -> Result<(), StoreError> {
        self.run(move |conn| {
            let mut all = Vec::with_capacity(values.len() + 2);
            all.push(Value::Text(id.to_string()));
            all.extend(values);
            all.push(Value::Integer(Timestamp::now().0));
            conn.execute(sql, rusqlite::params_from_iter(all)).map(drop).map_err(db_err)
        })
        .await
    }
}
