//! Jobs and leases in SQLite: inserts with idempotency keys, claims, fenced results and
//! renewals, expiry, returned secrets, and batches that settle with their children.

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use super::{SqliteStore, db_err, ms};
use crate::jobs::{
    ErrorCode, Job, JobId, JobKind, JobState, LeasedJob, NewJob, Outcome, Progress, ResultSecret, SecretEncoding,
    Timestamp,
};
use crate::store::jobs::{Candidate, assign, domain_limits, read_job, retry_delay};
use crate::store::{
    Cancellation, ClaimDemand, ClaimPolicy, Completion, Insertion, JobFilter, JobStore, SecretTake, StoreError,
};

macro_rules! job_columns {
    () => {
        "id, kind, domain, target_kind, target_value, must_change, unlock, client, state, \
    created_ms, updated_ms, dispatched_ms, finished_ms, agent, attempts, error_code, error_message, directory_code, \
    account_dn, verified, pwd_last_set, secret, lease_expires_ms, enforce_history, generate_length, generate_mode, \
    recipient_key, password_matches, account_state, notes, result_secret_encoding, result_secret IS NOT NULL, \
    secret_retrieved_ms, parent_id"
    };
}
const JOB_COLUMNS: &str = job_columns!();

/// Moves a batch along with its children: `dispatched` once any child left the queue
/// (`settle_dispatched`), final (succeeded, or failed with `partial_failure`) once every child is
/// final (`settle_final`). A claim settles the batches of the children it leased (dispatched) or
/// failed (final), a result the batch of its child (final): `SETTLE_DISPATCHED` and `SETTLE_FINAL`,
/// the batch `?2`, as PostgreSQL's `settle_dispatched.sql` and `settle_final.sql`. A cancellation
/// and the expiry sweep settle every open batch (`SETTLE_BATCHES`). Every search of the children
/// names the states it looks for, so that it seeks `jobs_parent` instead of reading every child of
/// a queued batch. `?1` is now.
macro_rules! settle_dispatched_sql {
    ($which:literal) => {
        concat!(
            "UPDATE jobs SET state = 'dispatched', dispatched_ms = ?1, updated_ms = ?1
 WHERE kind = 'reconcile_batch' AND state = 'queued'",
            $which,
            "
   AND EXISTS (SELECT 1 FROM jobs c
                WHERE c.parent_id = jobs.id AND c.state IN ('dispatched', 'succeeded', 'failed'))"
        )
    };
}
macro_rules! settle_final_sql {
    ($which:literal) => {
        concat!(
            "UPDATE jobs SET
       state = CASE WHEN EXISTS (SELECT 1 FROM jobs c WHERE c.parent_id = jobs.id AND c.state = 'failed')
                    THEN 'failed' ELSE 'succeeded' END,
       error_code = CASE WHEN EXISTS (SELECT 1 FROM jobs c WHERE c.parent_id = jobs.id AND c.state = 'failed')
                         THEN 'partial_failure' END,
       error_message = CASE WHEN EXISTS (SELECT 1 FROM jobs c WHERE c.parent_id = jobs.id AND c.state = 'failed')
                            THEN (SELECT count(*) FROM jobs c WHERE c.parent_id = jobs.id AND c.state = 'failed')
                                 || ' of ' || (SELECT count(*) FROM jobs c WHERE c.parent_id = jobs.id)
                                 || ' accounts failed, see the jobs with this parent_id' END,
       finished_ms = ?1, updated_ms = ?1
 WHERE kind = 'reconcile_batch' AND state IN ('queued', 'dispatched')",
            $which,
            "
   AND NOT EXISTS (SELECT 1 FROM jobs c WHERE c.parent_id = jobs.id AND c.state IN ('queued', 'dispatched'))"
        )
    };
}
const SETTLE_BATCHES: [&str; 2] = [settle_dispatched_sql!(""), settle_final_sql!("")];
const SETTLE_DISPATCHED: &str = settle_dispatched_sql!(" AND id = ?2");
const SETTLE_FINAL: &str = settle_final_sql!(" AND id = ?2");

/// One writer per account, for the candidate `jobs` (`?2`: now, `?3`: the write timeout): nothing
/// older of its account is unfinished, and no attempt on the account is unresolved (dispatched, and
/// neither reported nor lapsed past the write timeout). Two searches of `jobs_account`, so that
/// each reads only the account's open jobs.
macro_rules! account_free {
    () => {
        "NOT EXISTS (SELECT 1 FROM jobs o
                    WHERE o.account_key = jobs.account_key AND (o.state = 'queued' OR o.state = 'dispatched')
                      AND o.id != jobs.id
                      AND (o.created_ms < jobs.created_ms OR (o.created_ms = jobs.created_ms AND o.id < jobs.id)))
       AND NOT EXISTS (SELECT 1 FROM jobs o
                        WHERE o.account_key = jobs.account_key AND o.state = 'dispatched' AND o.id != jobs.id
                          AND o.lease_expires_ms + ?3 >= ?2)"
    };
}

/// The claim's candidates of one domain, in claim order: queued jobs that are due and whose account
/// is free, or have no attempt left (`?5`: `jobs.max_attempts`; they are failed, whatever their
/// back-off). One ordered search of `jobs_claim_order` that stops at the limit `?6`; `?4` is the
/// oldest creation time within the time to live.
const CLAIM_QUEUED: &str = concat!(
    "SELECT id, created_ms, attempts FROM jobs
      WHERE domain = ?1 AND state = 'queued' AND created_ms >= ?4 AND kind != 'reconcile_batch'
        AND (attempts >= ?5 OR (not_before_ms <= ?2 AND ",
    account_free!(),
    "))
      ORDER BY created_ms, id LIMIT ?6"
);

/// The same for dispatched jobs whose lease lapsed longer ago than the longest write (`?3`): their
/// holder can no longer be writing.
const CLAIM_LAPSED: &str = concat!(
    "SELECT id, created_ms, attempts FROM jobs
      WHERE domain = ?1 AND state = 'dispatched' AND created_ms >= ?4 AND kind != 'reconcile_batch'
        AND lease_expires_ms + ?3 < ?2
        AND (attempts >= ?5 OR (",
    account_free!(),
    "))
      ORDER BY created_ms, id LIMIT ?6"
);

/// Fails a candidate without attempts left (`?1`), without waiting out a retry back-off it could
/// never use; only while it is still claimable (`?2`: now, `?3`: the write timeout). Returns its
/// batch.
const FAIL_EXHAUSTED: &str = "UPDATE jobs SET state = 'failed', error_code = 'delivery_exhausted',
         error_message = 'no agent completed the job in ' || attempts || ' deliveries (jobs.max_attempts)'
                         || coalesce('; last error: ' || error_message, ''),
         secret = NULL, lease_holder = NULL, finished_ms = ?2, updated_ms = ?2
   WHERE id = ?1 AND (state = 'queued' OR (state = 'dispatched' AND lease_expires_ms + ?3 < ?2))
   RETURNING parent_id";

/// Leases candidate `?1` to holder `?2` (agent `?3`) until `?4` and increments its attempt, only
/// while it is claimable (`?5`: now, `?6`: the write timeout).
const LEASE: &str = concat!(
    "UPDATE jobs SET state = 'dispatched', lease_holder = ?2, agent = ?3, lease_expires_ms = ?4,
         attempts = attempts + 1, dispatched_ms = ?5, updated_ms = ?5,
         taken_over = (taken_over OR state = 'dispatched')
   WHERE id = ?1 AND ((state = 'queued' AND not_before_ms <= ?5) OR (state = 'dispatched' AND lease_expires_ms + ?6 < ?5))
   RETURNING ",
    job_columns!(),
    ", taken_over"
);

fn progress(conn: &Connection, parent: JobId) -> Result<Progress, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT state, count(*) FROM jobs WHERE parent_id = ?1 GROUP BY state").map_err(db_err)?;
    let mut rows = stmt.query(params![parent.to_string()]).map_err(db_err)?;
    let mut progress = Progress::default();
    while let Some(row) = rows.next().map_err(db_err)? {
        let (state, count): (String, u32) = (row.get(0).map_err(db_err)?, row.get(1).map_err(db_err)?);
        progress.total += count;
        match JobState::parse(&state) {
            Some(JobState::Queued) => progress.queued += count,
            Some(JobState::Dispatched) => progress.dispatched += count,
            Some(JobState::Succeeded) => progress.succeeded += count,
            Some(JobState::Failed) => progress.failed += count,
            None => {}
        }
    }
    Ok(progress)
}

/// Settles every open batch.
fn settle_batches(conn: &Connection, now: i64) -> Result<(), StoreError> {
    for statement in SETTLE_BATCHES {
        conn.prepare_cached(statement).map_err(db_err)?.execute(params![now]).map_err(db_err)?;
    }
    Ok(())
}

/// Runs `statement` (`SETTLE_DISPATCHED` or `SETTLE_FINAL`) once for each of the batches `parents`.
fn settle_each(conn: &Connection, statement: &str, now: i64, parents: &BTreeSet<String>) -> Result<(), StoreError> {
    if parents.is_empty() {
        return Ok(());
    }
    let mut settle = conn.prepare_cached(statement).map_err(db_err)?;
    for parent in parents {
        settle.execute(params![now, parent]).map_err(db_err)?;
    }
    Ok(())
}

impl SqliteStore {
    /// Queues the fenced result of [`JobStore::complete`] on the writer; what it returns answers it.
    fn queue_complete(
        &self,
        id: JobId,
        holder: &str,
        attempt: u32,
        outcome: Outcome,
    ) -> Result<impl Future<Output = Result<Completion, StoreError>> + Send + 'static, StoreError> {
        let holder = holder.to_owned();
        let replica = self.replica.as_str().to_owned();
        self.writer.queue(move |tx: &Connection| {
            let now = Timestamp::now().0;
            // The fence: every statement below changes the job only while it is dispatched to this
            // holder under this attempt.
            const FENCE: &str = "id = ?1 AND state = 'dispatched' AND lease_holder = ?2 AND attempts = ?3";
            let id_text = id.to_string();
            let (updated, completion) = match outcome {
                Outcome::Succeeded(s, returned) => {
                    let account_state = s
                        .account_state
                        .map(|a| serde_json::to_string(&a))
                        .transpose()
                        .map_err(|e| StoreError::Database(e.to_string()))?;
                    let notes = serde_json::to_string(&s.notes).map_err(|e| StoreError::Database(e.to_string()))?;
                    let (secret_encoding, secret_bytes) = match returned {
                        Some(r) => (Some(r.encoding.as_str()), Some(r.bytes)),
                        None => (None, None),
                    };
                    let updated = tx
                        .prepare_cached(
                            &format!(
                                "UPDATE jobs SET state = 'succeeded', account_dn = ?4, verified = ?5, pwd_last_set = ?6,
                                     password_matches = CASE WHEN kind = 'verify' THEN ?7 END,
                                     account_state = ?8, notes = ?9,
                                     result_secret_encoding = ?10, result_secret = ?11,
                                     error_code = NULL, error_message = NULL, directory_code = NULL,
                                     secret = NULL, finished_ms = ?12, updated_ms = ?12, finished_by = ?13
                                 WHERE {FENCE} RETURNING parent_id"
                            ))
                        .map_err(db_err)?
                        .query_row(params![
                                id_text,
                                holder,
                                attempt,
                                s.account_dn,
                                s.verified,
                                s.pwd_last_set,
                                s.password_matches,
                                account_state,
                                notes,
                                secret_encoding,
                                secret_bytes,
                                now,
                                replica
                            ], |r| r.get::<_, Option<String>>(0))
                        .optional()
                        .map_err(db_err)?;
                    (updated, Completion::Finished)
                }
                Outcome::Failed { error, retryable: true } => {
                    // A job the agent never started goes back at once; one that failed waits.
                    let delay = if error.code == ErrorCode::NotStarted { 0 } else { ms(retry_delay(attempt)) };
                    let updated = tx
                        .prepare_cached(
                            &format!(
                                "UPDATE jobs SET state = 'queued', error_code = ?4, error_message = ?5, directory_code = ?6,
                                     lease_holder = NULL, lease_expires_ms = NULL, not_before_ms = ?7, updated_ms = ?8
                                 WHERE {FENCE} RETURNING parent_id"
                            ))
                        .map_err(db_err)?
                        .query_row(params![
                                id_text,
                                holder,
                                attempt,
                                error.code.as_str(),
                                error.message,
                                error.directory_code,
                                now + delay,
                                now
                            ], |r| r.get::<_, Option<String>>(0))
                        .optional()
                        .map_err(db_err)?;
                    (updated, Completion::Requeued)
                }
                Outcome::Failed { error, retryable: false } => {
                    let updated = tx
                        .prepare_cached(
                            &format!(
                                "UPDATE jobs SET state = 'failed', error_code = ?4, error_message = ?5, directory_code = ?6,
                                     secret = NULL, finished_ms = ?7, updated_ms = ?7
                                 WHERE {FENCE} RETURNING parent_id"
                            ))
                        .map_err(db_err)?
                        .query_row(params![
                                id_text,
                                holder,
                                attempt,
                                error.code.as_str(),
                                error.message,
                                error.directory_code,
                                now
                            ], |r| r.get::<_, Option<String>>(0))
                        .optional()
                        .map_err(db_err)?;
                    (updated, Completion::Finished)
                }
            };
            // The fenced update returns the job's batch, if it has one.
            let Some(parent) = updated else {
                // Nothing was written: say why, for the log and the audit trail.
                let found: Option<(String, Option<String>, u32)> = tx
                    .query_row(
                        "SELECT state, lease_holder, attempts FROM jobs WHERE id = ?1",
                        params![id.to_string()],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()
                    .map_err(db_err)?;
                return match found {
                    None => Ok(Completion::Unknown),
                    Some((state, lease_holder, attempts))
                        if JobState::parse(&state).is_some_and(JobState::is_final)
                            && attempts == attempt
                            && lease_holder.as_deref() == Some(holder.as_str()) =>
                    {
                        // This replica holds the link key of a resent initial password too.
                        tx.execute(
                            "UPDATE jobs SET finished_by = ?2
                             WHERE id = ?1 AND state = 'succeeded'
                               AND NOT EXISTS (SELECT 1 FROM lifecycle_requests l
                                                WHERE l.job_id = ?1 AND l.stage <> 'applying')",
                            params![id_text, replica],
                        )
                        .map_err(db_err)?;
                        Ok(Completion::Duplicate)
                    }
                    Some(_) => Ok(Completion::Stale),
                };
            };
            // The child was dispatched, so its batch is too: it can only have become final.
            settle_each(tx, SETTLE_FINAL, now, &parent.into_iter().collect())?;
            Ok(completion)
        })
    }
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn insert_jobs_once(
        &self,
        jobs: Vec<NewJob>,
        idempotency: Option<(String, [u8; 32])>,
    ) -> Result<Insertion, StoreError> {
        let Some(job) = jobs.first() else { return Ok(Insertion::Created) };
        let (primary, client) = (job.id, job.client.clone());
        self.write(move |tx| {
            let now = Timestamp::now().0;
            if let Some((key, body_sha256)) = &idempotency {
                let existing: Option<(Vec<u8>, String)> = tx
                    .query_row(
                        "SELECT body_sha256, job_id FROM idempotency_keys WHERE client = ?1 AND key = ?2",
                        params![client, key],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()
                    .map_err(db_err)?;
                if let Some((stored_hash, job_id)) = existing {
                    let job_id = job_id.parse::<JobId>().map_err(|_| StoreError::Corrupt { id: job_id.clone(), reason: "bad id".into() })?;
                    return Ok(if stored_hash == body_sha256 { Insertion::Replayed(job_id) } else { Insertion::KeyConflict(job_id) });
                }
                tx.execute(
                    "INSERT INTO idempotency_keys (client, key, body_sha256, job_id, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![client, key, body_sha256.as_slice(), primary.to_string(), now],
                )
                .map_err(db_err)?;
            }
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO jobs (id, kind, domain, target_kind, target_value, must_change, unlock, client, state,
                                   secret, created_ms, updated_ms, enforce_history, generate_length, generate_mode,
                                   recipient_key, parent_id, account_key)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'queued', ?9, ?10, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                )
                .map_err(db_err)?;
            for job in &jobs {
            insert.execute(
                params![
                    job.id.to_string(),
                    job.kind.as_str(),
                    job.domain.as_str(),
                    job.target.kind(),
                    job.target.value(),
                    job.options.must_change,
                    job.options.unlock,
                    job.client,
                    job.sealed_secret,
                    now,
                    job.options.enforce_history,
                    job.generate.map(|g| g.length),
                    job.generate.map(|g| g.mode.as_str()),
                    job.recipient_key,
                    job.parent_id.map(|p| p.to_string()),
                    (job.kind != JobKind::ReconcileBatch).then(|| job.target.account_key(&job.domain)),
                ],
            )
            .map_err(db_err)?;
            }
            Ok(Insertion::Created)
        })
        .await
    }

    async fn list_jobs(&self, client: &str, filter: JobFilter) -> Result<Vec<Job>, StoreError> {
        let client = client.to_owned();
        self.run(move |conn| {
            let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE client = ?1");
            let mut args: Vec<rusqlite::types::Value> = vec![client.into()];
            if let Some(state) = filter.state {
                args.push(state.as_str().to_owned().into());
                sql.push_str(&format!(" AND state = ?{}", args.len()));
            }
            if let Some(domain) = &filter.domain {
                args.push(domain.as_str().to_owned().into());
                sql.push_str(&format!(" AND domain = ?{}", args.len()));
            }
            if let Some(since) = filter.since {
                args.push(since.0.into());
                sql.push_str(&format!(" AND created_ms >= ?{}", args.len()));
            }
            if let Some(after) = filter.after {
                args.push(after.to_string().into());
                sql.push_str(&format!(" AND id > ?{}", args.len()));
            }
            sql.push_str(&format!(" ORDER BY id LIMIT {}", filter.limit));
            let mut stmt = conn.prepare(&sql).map_err(db_err)?;
            let mut rows = stmt.query(params_from_iter(args)).map_err(db_err)?;
            let mut jobs = Vec::new();
            while let Some(row) = rows.next().map_err(db_err)? {
                jobs.push(read_job(row)?.job);
            }
            Ok(jobs)
        })
        .await
    }

    async fn cancel(&self, id: JobId, client: &str) -> Result<Cancellation, StoreError> {
        let client = client.to_owned();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db_err)?;
            let state: Option<String> = tx
                .query_row(
                    "SELECT state FROM jobs WHERE id = ?1 AND client = ?2",
                    params![id.to_string(), client],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            let outcome = match state.as_deref().and_then(JobState::parse) {
                None => Cancellation::NotFound,
                Some(JobState::Queued) => {
                    let now = Timestamp::now().0;
                    tx.execute(
                        "UPDATE jobs SET state = 'failed', error_code = 'cancelled',
                             error_message = 'cancelled by the API client before an agent took it',
                             secret = NULL, lease_holder = NULL, finished_ms = ?2, updated_ms = ?2
                         WHERE id = ?1",
                        params![id.to_string(), now],
                    )
                    .map_err(db_err)?;
                    Cancellation::Cancelled
                }
                Some(JobState::Dispatched) => Cancellation::InProgress,
                Some(_) => Cancellation::AlreadyFinal,
            };
            settle_batches(&tx, Timestamp::now().0)?;
            tx.commit().map_err(db_err)?;
            Ok(outcome)
        })
        .await
    }

    async fn job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.run(move |conn| {
            let mut stmt =
                conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1")).map_err(db_err)?;
            let mut rows = stmt.query(params![id.to_string()]).map_err(db_err)?;
            let Some(row) = rows.next().map_err(db_err)? else { return Ok(None) };
            let mut job = read_job(row)?.job;
            drop(rows);
            drop(stmt);
            if job.kind == JobKind::ReconcileBatch {
                job.progress = Some(progress(conn, id)?);
            }
            Ok(Some(job))
        })
        .await
    }

    async fn claim_for(
        &self,
        demands: Vec<ClaimDemand>,
        policy: ClaimPolicy,
    ) -> Result<Vec<Vec<LeasedJob>>, StoreError> {
        let limits = domain_limits(&demands);
        if limits.is_empty() {
            return Ok(std::iter::repeat_with(Vec::new).take(demands.len()).collect());
        }
        self.write(move |conn| {
            let now = Timestamp::now().0;
            let grace = ms(policy.write_timeout);
            let created_after = now.saturating_sub(ms(policy.time_to_live));
            let lease_until = now.saturating_add(ms(policy.lease));
            let mut candidates = Vec::new();
            let mut exhausted = Vec::new();
            for (domain, limit) in &limits {
                for search in [CLAIM_QUEUED, CLAIM_LAPSED] {
                    let mut stmt = conn.prepare_cached(search).map_err(db_err)?;
                    let limit = i64::try_from(*limit).unwrap_or(i64::MAX);
                    let mut rows = stmt
                        .query(params![domain.as_str(), now, grace, created_after, policy.max_attempts, limit])
                        .map_err(db_err)?;
                    while let Some(row) = rows.next().map_err(db_err)? {
                        let (id, created_ms, attempts): (String, i64, u32) =
                            (row.get(0).map_err(db_err)?, row.get(1).map_err(db_err)?, row.get(2).map_err(db_err)?);
                        if attempts >= policy.max_attempts {
                            exhausted.push(id);
                        } else {
                            candidates.push(Candidate { id, domain: domain.clone(), created_ms });
                        }
                    }
                }
            }
            // The batches of the children failed here.
            let mut failed_parents = BTreeSet::new();
            if !exhausted.is_empty() {
                let mut fail = conn.prepare_cached(FAIL_EXHAUSTED).map_err(db_err)?;
                for id in &exhausted {
                    let parent = fail
                        .query_row(params![id, now, grace], |r| r.get::<_, Option<String>>(0))
                        .optional()
                        .map_err(db_err)?;
                    failed_parents.extend(parent.flatten());
                }
            }
            let mut leased: Vec<Vec<LeasedJob>> = std::iter::repeat_with(Vec::new).take(demands.len()).collect();
            let mut lease = conn.prepare_cached(LEASE).map_err(db_err)?;
            for (candidate, index) in assign(&demands, candidates) {
                let demand = &demands[index];
                let mut rows = lease
                    .query(params![candidate.id, demand.holder, demand.agent, lease_until, now, grace])
                    .map_err(db_err)?;
                // The candidate search ran in this transaction: the row is still claimable.
                let Some(row) = rows.next().map_err(db_err)? else { continue };
                let stored = read_job(row)?;
                let taken_over: bool = row.get(34).map_err(db_err)?;
                leased[index].push(LeasedJob {
                    earlier_attempt_unresolved: taken_over,
                    job: stored.job,
                    sealed_secret: stored.sealed_secret,
                    recipient_key: stored.recipient_key,
                    lease_deadline_unix_ms: stored.lease_expires_ms.unwrap_or(lease_until),
                    lease_duration: policy.lease,
                });
            }
            drop(lease);
            for jobs in &mut leased {
                jobs.sort_by_key(|l| (l.job.created_at, l.job.job_id));
            }
            let leased_parents: BTreeSet<String> =
                leased.iter().flatten().filter_map(|l| l.job.parent_id).map(|p| p.to_string()).collect();
            settle_each(conn, SETTLE_DISPATCHED, now, &leased_parents)?;
            settle_each(conn, SETTLE_FINAL, now, &failed_parents)?;
            Ok(leased)
        })
        .await
    }

    async fn complete(
        &self,
        id: JobId,
        holder: &str,
        attempt: u32,
        outcome: Outcome,
    ) -> Result<Completion, StoreError> {
        self.queue_complete(id, holder, attempt, outcome)?.await
    }

    async fn complete_all(
        &self,
        holder: &str,
        results: Vec<(JobId, u32, Outcome)>,
    ) -> Vec<Result<Completion, StoreError>> {
        // Queued together, so that the writer commits them in one transaction.
        let queued: Vec<_> = results
            .into_iter()
            .map(|(id, attempt, outcome)| self.queue_complete(id, holder, attempt, outcome))
            .collect();
        let mut answers = Vec::with_capacity(queued.len());
        for answer in queued {
            answers.push(match answer {
                Ok(answer) => answer.await,
                Err(error) => Err(error),
            });
        }
        answers
    }

    async fn renew(
        &self,
        holder: &str,
        running: Vec<(JobId, u32)>,
        lease: Duration,
    ) -> Result<Vec<(JobId, u32)>, StoreError> {
        if running.is_empty() {
            return Ok(Vec::new());
        }
        let holder = holder.to_owned();
        self.write(move |tx| {
            let until = Timestamp::now().0 + ms(lease);
            let mut renewed = Vec::new();
            {
                let mut stmt = tx
                    .prepare_cached(
                        "UPDATE jobs SET lease_expires_ms = ?4
                         WHERE id = ?1 AND state = 'dispatched' AND lease_holder = ?2 AND attempts = ?3",
                    )
                    .map_err(db_err)?;
                for (id, attempt) in running {
                    if stmt.execute(params![id.to_string(), holder, attempt, until]).map_err(db_err)? == 1 {
                        renewed.push((id, attempt));
                    }
                }
            }
            Ok(renewed)
        })
        .await
    }

    async fn expire_overdue(&self, policy: ClaimPolicy) -> Result<usize, StoreError> {
        self.run(move |conn| {
            let now = Timestamp::now().0;
            conn.execute(
                "UPDATE jobs SET state = 'failed', error_code = 'expired',
                     error_message = 'no agent completed the job within its time to live (jobs.ttl_hours)',
                     directory_code = NULL, secret = NULL, lease_holder = NULL, finished_ms = ?1, updated_ms = ?1
                 WHERE created_ms < ?2 AND kind != 'reconcile_batch'
                   AND (state = 'queued' OR (state = 'dispatched' AND lease_expires_ms + ?3 < ?1))",
                params![now, now - ms(policy.time_to_live), ms(policy.write_timeout)],
            )
            .map_err(db_err)
            .and_then(|expired| settle_batches(conn, now).map(|()| expired))
        })
        .await
    }

    async fn purge_idempotency_keys(&self, older_than: Duration) -> Result<usize, StoreError> {
        self.run(move |conn| {
            let before = Timestamp::now().0.saturating_sub(ms(older_than));
            conn.execute("DELETE FROM idempotency_keys WHERE created_ms < ?1", params![before]).map_err(db_err)
        })
        .await
    }

    async fn take_secret(&self, id: JobId, client: &str) -> Result<SecretTake, StoreError> {
        let client = client.to_owned();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db_err)?;
            let row: Option<(String, String, Option<String>, Option<Vec<u8>>, Option<i64>)> = tx
                .query_row(
                    "SELECT kind, state, result_secret_encoding, result_secret, secret_retrieved_ms
                     FROM jobs WHERE id = ?1 AND client = ?2",
                    params![id.to_string(), client],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()
                .map_err(db_err)?;
            let Some((kind, state, encoding, bytes, retrieved)) = row else { return Ok(SecretTake::NotFound) };
            if JobKind::parse(&kind) != Some(JobKind::GeneratePassword) {
                return Ok(SecretTake::NoSecret);
            }
            let take = match (encoding.as_deref().and_then(SecretEncoding::parse), bytes, retrieved) {
                (Some(encoding), Some(bytes), _) => {
                    tx.execute(
                        "UPDATE jobs SET result_secret = NULL, secret_retrieved_ms = ?2, updated_ms = ?2 WHERE id = ?1",
                        params![id.to_string(), Timestamp::now().0],
                    )
                    .map_err(db_err)?;
                    SecretTake::Taken(ResultSecret { encoding, bytes })
                }
                (_, _, Some(_)) => SecretTake::AlreadyTaken,
                _ if state == JobState::Failed.as_str() => SecretTake::NoSecret,
                _ if state == JobState::Succeeded.as_str() => SecretTake::Lost,
                _ => SecretTake::NotReady,
            };
            tx.commit().map_err(db_err)?;
            Ok(take)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::schema::{MIGRATIONS, SCHEMA, SCHEMA_VERSION};
    use super::*;
    use crate::jobs::{JobOptions, JobSuccess, Target};
    use crate::store::{ClientStore as _, Scopes, Store as _};
    use pwrelay_shared::domain::DomainName;

    fn policy() -> ClaimPolicy {
        ClaimPolicy {
            lease: Duration::from_secs(60),
            write_timeout: Duration::from_secs(15),
            max_attempts: 3,
            time_to_live: Duration::from_secs(3600),
        }
    }

    fn new_job(domain: &str) -> NewJob {
        NewJob {
            id: JobId::generate(),
            kind: JobKind::SetPassword,
            domain: DomainName::parse(domain).expect("domain"),
            target: Target::Upn("a@b.c".into()),
            options: JobOptions { must_change: true, unlock: false, enforce_history: false },
            client: "pam".into(),
            sealed_secret: Some(vec![1, 2, 3]),
            generate: None,
            recipient_key: None,
            parent_id: None,
        }
    }

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("dir");
        let store = SqliteStore::open(&dir.path().join("relay.db")).expect("open");
        (dir, store)
    }

    fn d(name: &str) -> DomainName {
        DomainName::parse(name).expect("domain")
    }

    #[tokio::test]
    async fn final_outcomes_erase_the_secret_and_are_not_overwritten() {
        let (dir, store) = store();
        let job = new_job("a.test");
        let id = job.id;
        store.insert_job(job).await.expect("insert");
        store.claim(&[d("a.test")], "h1", "x", 1, policy()).await.expect("claim");
        let ok = Outcome::Succeeded(
            JobSuccess { account_dn: "CN=a".into(), verified: true, pwd_last_set: 0, ..JobSuccess::default() },
            None,
        );
        assert_eq!(store.complete(id, "h1", 1, ok.clone()).await.expect("complete"), Completion::Finished);
        assert_eq!(store.complete(id, "h1", 1, ok).await.expect("complete"), Completion::Duplicate);
        let job = store.job(id).await.expect("read").expect("exists");
        assert_eq!(job.state, JobState::Succeeded);
        assert_eq!(job.result.map(|r| r.account_dn), Some("CN=a".into()));
        let conn = Connection::open(dir.path().join("relay.db")).expect("open");
        let secret: Option<Vec<u8>> =
            conn.query_row("SELECT secret FROM jobs WHERE id = ?1", [id.to_string()], |r| r.get(0)).expect("row");
        assert_eq!(secret, None);
    }

    #[tokio::test]
    async fn jobs_survive_reopening_and_clients_are_unique() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("relay.db");
        let id = {
            let store = SqliteStore::open(&path).expect("open");
            let job = new_job("a.test");
            let id = job.id;
            store.insert_job(job).await.expect("insert");
            store.add_client("pam", [9; 32], &Scopes::default()).await.expect("client");
            assert!(matches!(
                store.add_client("pam", [8; 32], &Scopes::default()).await,
                Err(StoreError::ClientExists(_))
            ));
            id
        };
        let store = SqliteStore::open(&path).expect("reopen");
        assert_eq!(store.job(id).await.expect("read").map(|j| j.state), Some(JobState::Queued));
        assert_eq!(store.client_by_token([9; 32]).await.expect("read").map(|c| c.name), Some("pam".into()));
        assert_eq!(store.client_by_token([7; 32]).await.expect("read"), None);
        store.check().await.expect("ready");
    }

    #[tokio::test]
    async fn a_job_row_edited_out_of_shape_is_reported_not_guessed() {
        let (dir, store) = store();
        let job = new_job("a.test");
        let id = job.id;
        store.insert_job(job).await.expect("insert");
        let conn = Connection::open(dir.path().join("relay.db")).expect("open");
        conn.execute("UPDATE jobs SET state = 'half-done' WHERE id = ?1", [id.to_string()]).expect("edit");
        match store.job(id).await {
            Err(StoreError::Corrupt { id: record, reason }) => {
                assert_eq!((record, reason.as_str()), (id.to_string(), "bad state"));
            }
            other => panic!("expected a corrupt record, got {other:?}"),
        }
        conn.execute("UPDATE jobs SET state = 'queued', attempts = -2 WHERE id = ?1", [id.to_string()]).expect("edit");
        assert!(
            matches!(store.job(id).await, Err(StoreError::Corrupt { reason, .. }) if reason == "bad attempts"),
            "a negative count is not read as a number of attempts"
        );
    }

    /// A connection to a new store's database, set up as the store sets up its own: for
    /// `EXPLAIN QUERY PLAN`.
    fn planning_connection() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("relay.db");
        drop(SqliteStore::open(&path).expect("open"));
        let conn = Connection::open(&path).expect("open");
        super::super::configure(&conn).expect("the store's settings");
        (dir, conn)
    }

    /// Claims and results settle the batches of the children they changed in the same
    /// transaction: one batch by its id, and its children through `jobs_parent`.
    #[test]
    fn settling_a_batch_reads_that_batch_only() {
        let (_dir, conn) = planning_connection();
        for statement in [SETTLE_DISPATCHED, SETTLE_FINAL] {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {statement}")).expect("plan");
            let plan: Vec<String> = stmt
                .query_map(params![0, "p"], |r| r.get::<_, String>(3))
                .expect("plan")
                .map(|r| r.expect("row"))
                .collect();
            let outer = plan.first().map(String::as_str).unwrap_or_default();
            assert!(outer.contains("USING INDEX sqlite_autoindex_jobs_1 (id=?)"), "{statement}\nplanned as {plan:?}");
            let children: Vec<_> =
                plan.iter().filter(|step| step.contains(" c ") && !step.contains("SCALAR")).collect();
            assert!(!children.is_empty(), "{plan:?}");
            // A seek of the batch's children (by state where it looks for one), never a scan.
            assert!(
                children.iter().all(|step| step.contains("INDEX jobs_parent (parent_id=?")),
                "{statement}\nplanned as {plan:?}"
            );
        }
    }

    /// The expiry sweep and a cancellation settle every open batch: the statements read the
    /// batches through their index, not every job kept.
    #[test]
    fn settling_batches_reads_the_open_batches_only() {
        let (_dir, conn) = planning_connection();
        for statement in SETTLE_BATCHES {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {statement}")).expect("plan");
            let plan: Vec<String> =
                stmt.query_map(params![0], |r| r.get::<_, String>(3)).expect("plan").map(|r| r.expect("row")).collect();
            let outer = plan.first().map(String::as_str).unwrap_or_default();
            assert!(outer.contains("USING INDEX jobs_batch_state"), "{statement}\nplanned as {plan:?}");
            // Whether a child left the queue or is still open is a seek by parent and state, not a
            // read of every child of the batch.
            let exists = plan.iter().filter(|step| step.contains(" c ") && !step.contains("SCALAR"));
            for step in exists.take(1) {
                assert!(step.contains("jobs_parent (parent_id=? AND state=?)"), "{statement}\nplanned as {plan:?}");
            }
        }
    }

    /// The indexes of open jobs are what their other searches read: a revocation seeks the
    /// agent's leases, the queue gauge reads the open jobs only; and a final job is in none of them.
    #[test]
    fn open_job_indexes_serve_revocations_and_the_queue_gauge() {
        let (_dir, conn) = planning_connection();
        let plan = |sql: &str, values: &[&dyn rusqlite::ToSql]| -> Vec<String> {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).expect("plan");
            stmt.query_map(values, |r| r.get::<_, String>(3)).expect("plan").map(|r| r.expect("row")).collect()
        };
        let revoke = plan(
            "SELECT id FROM jobs WHERE state = 'dispatched' AND lease_holder >= ?1 || '#' AND lease_holder < ?1 || '$'",
            &[&"agent-1"],
        );
        assert!(
            revoke.iter().any(|s| s.contains("USING INDEX jobs_leased (lease_holder>? AND lease_holder<?)")),
            "{revoke:?}"
        );
        let gauge = plan(crate::store::gauges::QUEUE, &[]);
        assert!(gauge.iter().any(|s| s.contains("jobs_claim_order")), "{gauge:?}");
        // Partial: a final job is in none of them.
        let mut list = conn.prepare("SELECT name, partial FROM pragma_index_list('jobs')").expect("indexes");
        let partial: std::collections::BTreeMap<String, bool> =
            list.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).expect("indexes").map(|r| r.expect("row")).collect();
        for index in ["jobs_claim_order", "jobs_account", "jobs_leased"] {
            assert_eq!(partial.get(index), Some(&true), "{index} in {partial:?}");
        }
        assert!(!partial.contains_key("jobs_claimable") && !partial.contains_key("jobs_lease_holder"), "{partial:?}");
    }

    /// A claim walks the claimable jobs of a domain in claim order and stops at its limit: the
    /// candidate searches read `jobs_claim_order` in order (no sort of the backlog), and check each
    /// account through `jobs_account`.
    #[test]
    fn claims_walk_the_claim_order_without_sorting_the_backlog() {
        let (_dir, conn) = planning_connection();
        for search in [CLAIM_QUEUED, CLAIM_LAPSED] {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {search}")).expect("plan");
            let plan: Vec<String> = stmt
                .query_map(params!["a.test", 0, 0, 0, 3, 10], |r| r.get::<_, String>(3))
                .expect("plan")
                .map(|r| r.expect("row"))
                .collect();
            let outer = plan.first().map(String::as_str).unwrap_or_default();
            assert!(
                outer.contains("USING INDEX jobs_claim_order (domain=? AND state=?"),
                "{search}\nplanned as {plan:?}"
            );
            assert!(!plan.iter().any(|step| step.contains("TEMP B-TREE")), "{search}\nplanned as {plan:?}");
            let accounts: Vec<_> = plan.iter().filter(|step| step.contains(" o ")).collect();
            assert_eq!(accounts.len(), 2, "{plan:?}");
            assert!(
                accounts.iter().all(|step| step.contains("USING INDEX jobs_account (account_key=? AND state=?")),
                "{plan:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_version_1_database_is_migrated_in_place() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("relay.db");
        {
            let conn = Connection::open(&path).expect("open");
            conn.execute_batch(SCHEMA).expect("v1 schema");
            conn.pragma_update(None, "user_version", 1).expect("version");
            conn.execute(
                "INSERT INTO jobs (id, kind, domain, target_kind, target_value, must_change, unlock, client, state,
                                   created_ms, updated_ms)
                 VALUES ('0190c5d6-0000-7000-8000-000000000001', 'set_password', 'a.test', 'upn', 'a@b.c', 0, 0, 'pam',
                         'queued', 1, 1)",
                [],
            )
            .expect("v1 row");
        }
        let store = SqliteStore::open(&path).expect("migrates");
        let id = "0190c5d6-0000-7000-8000-000000000001".parse().expect("id");
        let job = store.job(id).await.expect("read").expect("kept");
        assert_eq!(job.state, JobState::Queued);
        assert!(!job.options.enforce_history);
        let conn = Connection::open(&path).expect("open");
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).expect("version");
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(usize::try_from(SCHEMA_VERSION).ok(), Some(MIGRATIONS.len() + 1), "one migration per version");
        drop(store);
        SqliteStore::open(&path).expect("opening again changes nothing");
    }
}
