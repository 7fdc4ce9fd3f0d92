//! The new-hire flow's durable records: one row per Lifecycle Workflows task processing result
//! (the callout's idempotency key), moving `resolving → applying → delivering → resuming → done`,
//! and the one-time link it hands out.
//!
//! The link's ciphertext stays in its job's `result_secret` (sealed again with the store key) until
//! it is claimed, revoked or expired; the decryption key is never stored (see
//! [`crate::lifecycle`]). A claim must present `SHA-256("pwrelay-claim" ‖ key)`, so only a holder
//! of the link's fragment can use it up.

use async_trait::async_trait;
use rusqlite::types::Value;
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use uuid::Uuid;

use super::StoreError;
use super::sqlite::{SqliteStore, db_err};
use crate::jobs::{JobId, Timestamp};

/// Where a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Accepted; the person's on-premises identity is being read from Graph.
    Resolving,
    /// The `initial_password` job is queued or with an agent.
    Applying,
    /// The job succeeded; the link and the username are being sent.
    Delivering,
    /// The outcome is known; Graph `resume` is being called.
    Resuming,
    /// The workflow was resumed.
    Done,
    /// Graph `resume` kept failing; an operator must finish the task in Entra.
    ResumeFailed,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Self::Resolving => "resolving",
            Self::Applying => "applying",
            Self::Delivering => "delivering",
            Self::Resuming => "resuming",
            Self::Done => "done",
            Self::ResumeFailed => "resume_failed",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [Self::Resolving, Self::Applying, Self::Delivering, Self::Resuming, Self::Done, Self::ResumeFailed]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// A new-hire request as the worker and the API see it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct LifecycleRequest {
    /// `taskProcessingResult.id`.
    pub task_processing_result_id: Uuid,
    /// Tenant.
    pub tenant_id: String,
    /// Workflow.
    pub workflow_id: Uuid,
    /// Task.
    pub task_id: Uuid,
    /// The Entra user.
    pub subject_id: Uuid,
    /// Their display name.
    pub display_name: String,
    /// Where it is.
    pub stage: Stage,
    /// The `initial_password` job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
    /// The final state of the job, once it has one (`succeeded`/`failed`).
    #[serde(skip)]
    pub job_state: Option<String>,
    /// Delivery: `pending`, `sent` or `failed`, with details.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<String>,
    /// What happened during delivery (channels, failures); never a secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_detail: Option<String>,
    /// What the workflow is told: `completed` or `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome_reason: Option<String>,
    /// Graph `resume` calls so far.
    pub resume_attempts: u32,
    /// Until when the link can be claimed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_expires_at: Option<Timestamp>,
    /// When the link was claimed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_claimed_at: Option<Timestamp>,
    /// How often the link's page was opened.
    pub link_views: u32,
    /// When the callout arrived.
    pub created_at: Timestamp,
    /// Next time the worker looks at it.
    #[serde(skip)]
    pub next_attempt_ms: i64,
}

/// A new callout.
#[derive(Clone, Debug)]
pub struct NewRequest {
    /// From the callout.
    pub callout: crate::lifecycle::callout::Callout,
    /// The tenant it authenticated as.
    pub tenant_id: String,
    /// SHA-256 of the body (a repeat must be the same callout).
    pub body_sha256: [u8; 32],
}

/// What storing a callout found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CalloutInsertion {
    /// New.
    Created,
    /// The same callout again: nothing new happens.
    Repeated,
    /// The same task processing result id with a different body.
    Conflict,
}

/// What a link's page shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Can be claimed until `expires`.
    Active {
        /// Expiry.
        expires: Timestamp,
        /// Whether the password must be changed at first sign-in.
        must_change: bool,
    },
    /// Already claimed.
    Claimed,
    /// Expired (or revoked) unclaimed.
    Expired,
    /// No such link.
    NotFound,
}

/// What a claim found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkClaim {
    /// The ciphertext, sealed with the store key for the job id; it is now erased.
    Taken {
        /// The job it belongs to (the seal's context).
        job_id: JobId,
        /// The sealed ciphertext.
        sealed: Vec<u8>,
    },
    /// The proof does not match the link's key.
    WrongProof,
    /// Used before.
    AlreadyUsed,
    /// Too late.
    Expired,
    /// No such link.
    NotFound,
}

/// The new-hire records.
#[async_trait]
pub trait LifecycleStore: Send + Sync + 'static {
    /// Stores a callout once per task processing result.
    async fn insert_callout(&self, request: NewRequest) -> Result<CalloutInsertion, StoreError>;
    /// Requests the worker should look at now: due ones in `resolving`/`resuming`, `applying`
    /// ones whose job is final, and (after a restart) `delivering` ones.
    async fn due_requests(&self, include_delivering: bool, limit: usize) -> Result<Vec<LifecycleRequest>, StoreError>;
    /// One request.
    async fn request(&self, id: Uuid) -> Result<Option<LifecycleRequest>, StoreError>;
    /// The request of a job.
    async fn request_of_job(&self, job: JobId) -> Result<Option<LifecycleRequest>, StoreError>;
    /// `resolving → applying` with the job created for it.
    async fn set_applying(&self, id: Uuid, job: JobId) -> Result<(), StoreError>;
    /// Tries again later (Graph unreachable, ...), noting why.
    async fn postpone(&self, id: Uuid, next_attempt_ms: i64, reason: &str) -> Result<(), StoreError>;
    /// `applying → delivering`: the link exists from now on (claimable once the message is out).
    async fn open_link(
        &self,
        id: Uuid,
        link_id: &str,
        proof_sha256: [u8; 32],
        expires: Timestamp,
    ) -> Result<(), StoreError>;
    /// Records delivery progress.
    async fn set_delivery(&self, id: Uuid, delivery: &str, detail: &str) -> Result<(), StoreError>;
    /// The outcome is known: `→ resuming`. A failed outcome erases any unclaimed ciphertext.
    async fn set_outcome(&self, id: Uuid, completed: bool, reason: &str) -> Result<(), StoreError>;
    /// Records a resume call: done, or failed (retried at `next_attempt_ms`, or given up).
    async fn resume_attempted(&self, id: Uuid, result: ResumeResult) -> Result<(), StoreError>;
    /// A link's state; counts the view.
    async fn view_link(&self, link_id: &str) -> Result<LinkState, StoreError>;
    /// Claims a link once with its proof.
    async fn claim_link(&self, link_id: &str, proof_sha256: [u8; 32]) -> Result<LinkClaim, StoreError>;
    /// Erases ciphertexts of expired unclaimed links; returns how many.
    async fn expire_links(&self) -> Result<usize, StoreError>;
}

/// The result of a resume call.
#[derive(Clone, Debug)]
pub enum ResumeResult {
    /// Graph took it.
    Done,
    /// Failed; try again at this time.
    Retry {
        /// When.
        at_ms: i64,
        /// Why.
        reason: String,
    },
    /// Failed for good.
    GiveUp {
        /// Why.
        reason: String,
    },
}

/// The schema (added by migration 6 of [`SqliteStore`]).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS lifecycle_requests (
    task_processing_result_id TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    workflow_id      TEXT NOT NULL,
    task_id          TEXT NOT NULL,
    subject_id       TEXT NOT NULL,
    display_name     TEXT NOT NULL,
    workflow_name    TEXT NOT NULL,
    body_sha256      BLOB NOT NULL,
    stage            TEXT NOT NULL,
    job_id           TEXT UNIQUE,
    delivery         TEXT,
    delivery_detail  TEXT,
    outcome          TEXT,
    outcome_reason   TEXT,
    resume_attempts  INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms  INTEGER NOT NULL DEFAULT 0,
    link_id          TEXT UNIQUE,
    link_proof       BLOB,
    link_expires_ms  INTEGER,
    link_claimed_ms  INTEGER,
    link_views       INTEGER NOT NULL DEFAULT 0,
    created_ms       INTEGER NOT NULL,
    updated_ms       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS lifecycle_stage ON lifecycle_requests (stage, next_attempt_ms);
";

const COLUMNS: &str = "l.task_processing_result_id, l.tenant_id, l.workflow_id, l.task_id, l.subject_id, \
    l.display_name, l.stage, l.job_id, j.state, l.delivery, l.delivery_detail, l.outcome, l.outcome_reason, \
    l.resume_attempts, l.link_expires_ms, l.link_claimed_ms, l.link_views, l.created_ms, l.next_attempt_ms";

fn read(row: &rusqlite::Row<'_>) -> Result<LifecycleRequest, StoreError> {
    let id: String = row.get(0).map_err(db_err)?;
    let corrupt = |what: &str| StoreError::Corrupt { id: id.clone(), reason: format!("bad {what}") };
    let uuid = |i: usize, what: &str| -> Result<Uuid, StoreError> {
        row.get::<_, String>(i).ok().and_then(|t| Uuid::parse_str(&t).ok()).ok_or_else(|| corrupt(what))
    };
    let stage: String = row.get(6).map_err(db_err)?;
    let job_id: Option<String> = row.get(7).map_err(db_err)?;
    Ok(LifecycleRequest {
        task_processing_result_id: uuid(0, "id")?,
        tenant_id: row.get(1).map_err(db_err)?,
        workflow_id: uuid(2, "workflow id")?,
        task_id: uuid(3, "task id")?,
        subject_id: uuid(4, "subject id")?,
        display_name: row.get(5).map_err(db_err)?,
        stage: Stage::parse(&stage).ok_or_else(|| corrupt("stage"))?,
        job_id: job_id.map(|j| j.parse().map_err(|_| corrupt("job id"))).transpose()?,
        job_state: row.get(8).map_err(db_err)?,
        delivery: row.get(9).map_err(db_err)?,
        delivery_detail: row.get(10).map_err(db_err)?,
        outcome: row.get(11).map_err(db_err)?,
        outcome_reason: row.get(12).map_err(db_err)?,
        resume_attempts: row.get(13).map_err(db_err)?,
        link_expires_at: row.get::<_, Option<i64>>(14).map_err(db_err)?.map(Timestamp),
        link_claimed_at: row.get::<_, Option<i64>>(15).map_err(db_err)?.map(Timestamp),
        link_views: row.get(16).map_err(db_err)?,
        created_at: Timestamp(row.get(17).map_err(db_err)?),
        next_attempt_ms: row.get(18).map_err(db_err)?,
    })
}

fn select(conn: &rusqlite::Connection, filter: &str, param: &str) -> Result<Option<LifecycleRequest>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM lifecycle_requests l LEFT JOIN jobs j ON j.id = l.job_id WHERE {filter}");
    let mut stmt = conn.prepare_cached(&sql).map_err(db_err)?;
    let mut rows = stmt.query(params![param]).map_err(db_err)?;
    rows.next().map_err(db_err)?.map(read).transpose()
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

    async fn due_requests(&self, include_delivering: bool, limit: usize) -> Result<Vec<LifecycleRequest>, StoreError> {
        self.run(move |conn| {
            let sql = format!(
                "SELECT {COLUMNS} FROM lifecycle_requests l LEFT JOIN jobs j ON j.id = l.job_id
                 WHERE (l.stage IN ('resolving', 'resuming') AND l.next_attempt_ms <= ?1)
                    OR (l.stage = 'applying' AND j.state IN ('succeeded', 'failed'))
                    OR (l.stage = 'delivering' AND ?2)
                 ORDER BY l.created_ms LIMIT ?3"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(db_err)?;
            let mut rows = stmt
                .query(params![Timestamp::now().0, include_delivering, i64::try_from(limit).unwrap_or(i64::MAX)])
                .map_err(db_err)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(db_err)? {
                out.push(read(row)?);
            }
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
        let sql = "UPDATE lifecycle_requests SET stage = 'applying', job_id = ?2, updated_ms = ?3
             WHERE task_processing_result_id = ?1 AND stage = 'resolving'";
        self.update(id, sql, vec![Value::Text(job.to_string())]).await
    }

    async fn postpone(&self, id: Uuid, next_attempt_ms: i64, reason: &str) -> Result<(), StoreError> {
        let sql = "UPDATE lifecycle_requests SET next_attempt_ms = ?2, outcome_reason = ?3, updated_ms = ?4
             WHERE task_processing_result_id = ?1";
        self.update(id, sql, vec![Value::Integer(next_attempt_ms), Value::Text(reason.to_owned())]).await
    }

    async fn open_link(
        &self,
        id: Uuid,
        link_id: &str,
        proof_sha256: [u8; 32],
        expires: Timestamp,
    ) -> Result<(), StoreError> {
        let sql = "UPDATE lifecycle_requests SET stage = 'delivering', delivery = 'pending', link_id = ?2,
                 link_proof = ?3, link_expires_ms = ?4, updated_ms = ?5
             WHERE task_processing_result_id = ?1 AND stage = 'applying'";
        let values =
            vec![Value::Text(link_id.to_owned()), Value::Blob(proof_sha256.to_vec()), Value::Integer(expires.0)];
        self.update(id, sql, values).await
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
                     next_attempt_ms = 0, updated_ms = ?4
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
                     updated_ms = ?5
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
}

/// Compares without an early exit, so timing does not tell how much of a proof matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
