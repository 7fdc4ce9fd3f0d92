//! Jobs and leases in PostgreSQL: inserts with idempotency keys, claims (`FOR UPDATE SKIP
//! LOCKED`), fenced results and renewals, expiry, returned secrets, and batches that settle with
//! their children (under the batch's row lock).

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use pwrelay_shared::domain::DomainName;
use tokio_postgres::Row;

use super::{PostgresStore, db_err, query};
use crate::jobs::{
    ErrorCode, GenerateMode, GenerateSpec, Job, JobError, JobId, JobKind, JobOptions, JobState, JobSuccess, LeasedJob,
    NewJob, Outcome, Progress, ResultSecret, SecretEncoding, SecretStatus, Target, Timestamp,
};
use crate::store::jobs::retry_delay;
use crate::store::{Cancellation, ClaimPolicy, Completion, Insertion, JobFilter, JobStore, SecretTake, StoreError};

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// An attempt number as stored (`INTEGER`).
fn attempt_int(attempt: u32) -> i32 {
    i32::try_from(attempt).unwrap_or(i32::MAX)
}

/// A job row with the columns that never leave the store except in a lease.
struct StoredJob {
    job: Job,
    sealed_secret: Option<Vec<u8>>,
    lease_expires_ms: Option<i64>,
    recipient_key: Option<Vec<u8>>,
}

fn read_job(row: &Row) -> Result<StoredJob, StoreError> {
    let id: String = row.try_get(0).map_err(db_err)?;
    let corrupt = |reason: &str| StoreError::Corrupt { id: id.clone(), reason: reason.to_owned() };
    let get_u32 = |i: usize| -> Result<Option<u32>, StoreError> {
        row.try_get::<_, Option<i32>>(i)
            .map_err(db_err)?
            .map(|n| u32::try_from(n).map_err(|_| corrupt("negative count")))
            .transpose()
    };
    let job_id = id.parse::<JobId>().map_err(|_| corrupt("bad id"))?;
    let kind = JobKind::parse(row.try_get(1).map_err(db_err)?).ok_or_else(|| corrupt("unknown kind"))?;
    let domain = DomainName::parse(row.try_get(2).map_err(db_err)?).map_err(|_| corrupt("bad domain"))?;
    let target = Target::from_parts(row.try_get(3).map_err(db_err)?, row.try_get(4).map_err(db_err)?)
        .ok_or_else(|| corrupt("bad target"))?;
    let state = JobState::parse(row.try_get(8).map_err(db_err)?).ok_or_else(|| corrupt("unknown state"))?;
    let error = match row.try_get::<_, Option<String>>(15).map_err(db_err)? {
        Some(code) => Some(JobError {
            code: ErrorCode::parse(&code).unwrap_or(ErrorCode::Unknown),
            message: row.try_get::<_, Option<String>>(16).map_err(db_err)?.unwrap_or_default(),
            directory_code: row.try_get(17).map_err(db_err)?,
        }),
        None => None,
    };
    let result = match row.try_get::<_, Option<String>>(18).map_err(db_err)? {
        Some(account_dn) if state == JobState::Succeeded => Some(JobSuccess {
            account_dn,
            verified: row.try_get::<_, Option<bool>>(19).map_err(db_err)?.unwrap_or(false),
            pwd_last_set: row.try_get::<_, Option<i64>>(20).map_err(db_err)?.unwrap_or(0),
            password_matches: row.try_get(27).map_err(db_err)?,
            account_state: row
                .try_get::<_, Option<String>>(28)
                .map_err(db_err)?
                .map(|json| serde_json::from_str(&json).map_err(|_| corrupt("bad account_state")))
                .transpose()?,
            notes: row
                .try_get::<_, Option<String>>(29)
                .map_err(db_err)?
                .map(|json| serde_json::from_str(&json).map_err(|_| corrupt("bad notes")))
                .transpose()?
                .unwrap_or_default(),
        }),
        _ => None,
    };
    let generate = match (get_u32(24)?, row.try_get::<_, Option<String>>(25).map_err(db_err)?) {
        (Some(length), Some(mode)) => {
            Some(GenerateSpec { length, mode: GenerateMode::parse(&mode).ok_or_else(|| corrupt("bad generate_mode"))? })
        }
        _ => None,
    };
    let secret = if kind != JobKind::GeneratePassword {
        None
    } else if row.try_get::<_, bool>(31).map_err(db_err)? {
        Some(SecretStatus::Available)
    } else if row.try_get::<_, Option<i64>>(32).map_err(db_err)?.is_some() {
        Some(SecretStatus::Retrieved)
    } else {
        Some(SecretStatus::Pending)
    };
    let job = Job {
        job_id,
        kind,
        domain,
        target,
        options: JobOptions {
            must_change: row.try_get(5).map_err(db_err)?,
            unlock: row.try_get(6).map_err(db_err)?,
            enforce_history: row.try_get(23).map_err(db_err)?,
        },
        state,
        client: row.try_get(7).map_err(db_err)?,
        created_at: Timestamp(row.try_get(9).map_err(db_err)?),
        updated_at: Timestamp(row.try_get(10).map_err(db_err)?),
        dispatched_at: row.try_get::<_, Option<i64>>(11).map_err(db_err)?.map(Timestamp),
        finished_at: row.try_get::<_, Option<i64>>(12).map_err(db_err)?.map(Timestamp),
        agent: row.try_get(13).map_err(db_err)?,
        attempts: get_u32(14)?.unwrap_or(0),
        error,
        result,
        generate,
        secret,
        parent_id: row
            .try_get::<_, Option<String>>(33)
            .map_err(db_err)?
            .map(|p| p.parse::<JobId>().map_err(|_| corrupt("bad parent_id")))
            .transpose()?,
        progress: None,
        lifecycle: None,
    };
    Ok(StoredJob {
        job,
        sealed_secret: row.try_get(21).map_err(db_err)?,
        lease_expires_ms: row.try_get(22).map_err(db_err)?,
        recipient_key: row.try_get(26).map_err(db_err)?,
    })
}

fn parse_id(text: String) -> Result<JobId, StoreError> {
    text.parse::<JobId>().map_err(|_| StoreError::Corrupt { id: text.clone(), reason: "bad id".into() })
}

async fn progress(client: &impl GenericClient, parent: JobId) -> Result<Progress, StoreError> {
    let rows = client.query(query!("jobs/progress"), &[&parent.to_string()]).await.map_err(db_err)?;
    let mut progress = Progress::default();
    for row in rows {
        let state: String = row.try_get(0).map_err(db_err)?;
        let count = u32::try_from(row.try_get::<_, i64>(1).map_err(db_err)?).unwrap_or(u32::MAX);
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

/// The batches among the `parent_id`s a statement returned.
fn parents(rows: &[Row]) -> Vec<String> {
    let mut parents: Vec<String> =
        rows.iter().filter_map(|row| row.try_get::<_, Option<String>>("parent_id").ok().flatten()).collect();
    parents.sort();
    parents.dedup();
    parents
}

/// Moves the batches `parents` along with their children (see `settle_final.sql`), under their
/// row locks. Run in every transaction that changed a child's state.
async fn settle_batches(tx: &impl GenericClient, now: i64, parents: &[String]) -> Result<(), StoreError> {
    if parents.is_empty() {
        return Ok(());
    }
    tx.query(query!("jobs/lock_batches"), &[&parents]).await.map_err(db_err)?;
    tx.execute(query!("jobs/settle_dispatched"), &[&now, &parents]).await.map_err(db_err)?;
    tx.execute(query!("jobs/settle_final"), &[&now, &parents]).await.map_err(db_err)?;
    Ok(())
}

#[async_trait]
impl JobStore for PostgresStore {
    async fn insert_jobs_once(
        &self,
        jobs: Vec<NewJob>,
        idempotency: Option<(String, [u8; 32])>,
    ) -> Result<Insertion, StoreError> {
        let Some(first) = jobs.first() else { return Ok(Insertion::Created) };
        let (primary, owner) = (first.id.to_string(), first.client.clone());
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        let now = Timestamp::now().0;
        if let Some((key, body_sha256)) = &idempotency {
            let taken = tx
                .execute(query!("jobs/insert_idempotency_key"), &[&owner, key, &body_sha256.as_slice(), &primary, &now])
                .await
                .map_err(db_err)?;
            if taken == 0 {
                let row = tx.query_one(query!("jobs/find_idempotency_key"), &[&owner, key]).await.map_err(db_err)?;
                let stored_hash: Vec<u8> = row.try_get(0).map_err(db_err)?;
                let job_id = parse_id(row.try_get(1).map_err(db_err)?)?;
                return Ok(if stored_hash == body_sha256 {
                    Insertion::Replayed(job_id)
                } else {
                    Insertion::KeyConflict(job_id)
                });
            }
        }
        let insert = tx.prepare(query!("jobs/insert")).await.map_err(db_err)?;
        for job in &jobs {
            let generate_length = job.generate.map(|g| i32::try_from(g.length).unwrap_or(i32::MAX));
            let account_key = (job.kind != JobKind::ReconcileBatch).then(|| job.target.account_key(&job.domain));
            tx.execute(
                &insert,
                &[
                    &job.id.to_string(),
                    &job.kind.as_str(),
                    &job.domain.as_str(),
                    &job.target.kind(),
                    &job.target.value(),
                    &job.options.must_change,
                    &job.options.unlock,
                    &job.client,
                    &job.sealed_secret,
                    &now,
                    &job.options.enforce_history,
                    &generate_length,
                    &job.generate.map(|g| g.mode.as_str()),
                    &job.recipient_key,
                    &job.parent_id.map(|p| p.to_string()),
                    &account_key,
                ],
            )
            .await
            .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(Insertion::Created)
    }

    async fn list_jobs(&self, client: &str, filter: JobFilter) -> Result<Vec<Job>, StoreError> {
        let conn = self.client().await?;
        let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX);
        let rows = conn
            .query(
                query!("jobs/list"),
                &[
                    &client,
                    &filter.state.map(|s| s.as_str()),
                    &filter.domain.as_ref().map(DomainName::as_str),
                    &filter.since.map(|t| t.0),
                    &filter.after.map(|a| a.to_string()),
                    &limit,
                ],
            )
            .await
            .map_err(db_err)?;
        rows.iter().map(|row| read_job(row).map(|stored| stored.job)).collect()
    }

    async fn cancel(&self, id: JobId, client: &str) -> Result<Cancellation, StoreError> {
        let mut conn = self.client().await?;
        let tx = conn.transaction().await.map_err(db_err)?;
        let id_text = id.to_string();
        let Some(row) = tx.query_opt(query!("jobs/lock_for_cancel"), &[&id_text, &client]).await.map_err(db_err)?
        else {
            return Ok(Cancellation::NotFound);
        };
        let state: String = row.try_get(0).map_err(db_err)?;
        let parent: Option<String> = row.try_get(1).map_err(db_err)?;
        let outcome = match JobState::parse(&state) {
            Some(JobState::Queued) => {
                let now = Timestamp::now().0;
                tx.execute(query!("jobs/cancel"), &[&id_text, &now]).await.map_err(db_err)?;
                settle_batches(&tx, now, &parent.into_iter().collect::<Vec<_>>()).await?;
                Cancellation::Cancelled
            }
            Some(JobState::Dispatched) => Cancellation::InProgress,
            _ => Cancellation::AlreadyFinal,
        };
        tx.commit().await.map_err(db_err)?;
        Ok(outcome)
    }

    async fn job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        let conn = self.client().await?;
        let Some(row) = conn.query_opt(query!("jobs/get"), &[&id.to_string()]).await.map_err(db_err)? else {
            return Ok(None);
        };
        let mut job = read_job(&row)?.job;
        if job.kind == JobKind::ReconcileBatch {
            job.progress = Some(progress(&conn, id).await?);
        }
        Ok(Some(job))
    }

    async fn claim(
        &self,
        domains: &[DomainName],
        holder: &str,
        agent: &str,
        limit: usize,
        policy: ClaimPolicy,
    ) -> Result<Vec<LeasedJob>, StoreError> {
        if domains.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let domains: Vec<String> = domains.iter().map(|d| d.as_str().to_owned()).collect();
        let mut conn = self.client().await?;
        let tx = conn.transaction().await.map_err(db_err)?;
        let now = Timestamp::now().0;
        let grace = ms(policy.write_timeout);
        let max_attempts = attempt_int(policy.max_attempts);
        let exhausted =
            tx.query(query!("jobs/fail_exhausted"), &[&domains, &now, &grace, &max_attempts]).await.map_err(db_err)?;
        let lease_until = now.saturating_add(ms(policy.lease));
        let created_after = now.saturating_sub(ms(policy.time_to_live));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = tx
            .query(
                query!("jobs/claim"),
                &[&domains, &now, &grace, &created_after, &limit, &holder, &agent, &lease_until],
            )
            .await
            .map_err(db_err)?;
        let mut leased = Vec::with_capacity(rows.len());
        for row in &rows {
            let stored = read_job(row)?;
            leased.push(LeasedJob {
                earlier_attempt_unresolved: row.try_get(34).map_err(db_err)?,
                job: stored.job,
                sealed_secret: stored.sealed_secret,
                recipient_key: stored.recipient_key,
                lease_deadline_unix_ms: stored.lease_expires_ms.unwrap_or(lease_until),
                lease_duration: policy.lease,
            });
        }
        leased.sort_by_key(|l| (l.job.created_at, l.job.job_id));
        let mut batches = parents(&exhausted);
        batches.extend(parents(&rows));
        batches.sort();
        batches.dedup();
        settle_batches(&tx, now, &batches).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(leased)
    }

    async fn complete(
        &self,
        id: JobId,
        holder: &str,
        attempt: u32,
        outcome: Outcome,
    ) -> Result<Completion, StoreError> {
        let mut conn = self.client().await?;
        let tx = conn.transaction().await.map_err(db_err)?;
        let now = Timestamp::now().0;
        let id_text = id.to_string();
        let attempt_number = attempt_int(attempt);
        // Every statement below changes the job only while it is dispatched to this holder under
        // this attempt (the fence is in each one's WHERE).
        let (changed, completion) = match outcome {
            Outcome::Succeeded(s, returned) => {
                let account_state = s
                    .account_state
                    .map(|a| serde_json::to_string(&a))
                    .transpose()
                    .map_err(|e| StoreError::Database(e.to_string()))?;
                let notes = serde_json::to_string(&s.notes).map_err(|e| StoreError::Database(e.to_string()))?;
                let (encoding, bytes) = match returned {
                    Some(r) => (Some(r.encoding.as_str()), Some(r.bytes)),
                    None => (None, None),
                };
                let rows = tx
                    .query(
                        query!("jobs/complete_succeeded"),
                        &[
                            &id_text,
                            &holder,
                            &attempt_number,
                            &s.account_dn,
                            &s.verified,
                            &s.pwd_last_set,
                            &s.password_matches,
                            &account_state,
                            &notes,
                            &encoding,
                            &bytes,
                            &now,
                            &self.replica.as_str(),
                        ],
                    )
                    .await
                    .map_err(db_err)?;
                (rows, Completion::Finished)
            }
            Outcome::Failed { error, retryable: true } => {
                // A job the agent never started goes back at once; one that failed waits.
                let delay = if error.code == ErrorCode::NotStarted { 0 } else { ms(retry_delay(attempt)) };
                let rows = tx
                    .query(
                        query!("jobs/complete_requeued"),
                        &[
                            &id_text,
                            &holder,
                            &attempt_number,
                            &error.code.as_str(),
                            &error.message,
                            &error.directory_code,
                            &now.saturating_add(delay),
                            &now,
                        ],
                    )
                    .await
                    .map_err(db_err)?;
                (rows, Completion::Requeued)
            }
            Outcome::Failed { error, retryable: false } => {
                let rows = tx
                    .query(
                        query!("jobs/complete_failed"),
                        &[
                            &id_text,
                            &holder,
                            &attempt_number,
                            &error.code.as_str(),
                            &error.message,
                            &error.directory_code,
                            &now,
                        ],
                    )
                    .await
                    .map_err(db_err)?;
                (rows, Completion::Finished)
            }
        };
        if changed.is_empty() {
            // Nothing was written: say why, for the log and the audit trail.
            let found = tx.query_opt(query!("jobs/fence_of"), &[&id_text]).await.map_err(db_err)?;
            let Some(row) = found else { return Ok(Completion::Unknown) };
            let state: String = row.try_get(0).map_err(db_err)?;
            let lease_holder: Option<String> = row.try_get(1).map_err(db_err)?;
            let attempts: i32 = row.try_get(2).map_err(db_err)?;
            let duplicate = JobState::parse(&state).is_some_and(JobState::is_final)
                && attempts == attempt_number
                && lease_holder.as_deref() == Some(holder);
            if !duplicate {
                return Ok(Completion::Stale);
            }
            tx.execute(query!("jobs/result_resent"), &[&id_text, &self.replica.as_str()]).await.map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            return Ok(Completion::Duplicate);
        }
        settle_batches(&tx, now, &parents(&changed)).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(completion)
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
        let ids: Vec<String> = running.iter().map(|(id, _)| id.to_string()).collect();
        let attempts: Vec<i32> = running.iter().map(|(_, attempt)| attempt_int(*attempt)).collect();
        let until = Timestamp::now().0.saturating_add(ms(lease));
        let conn = self.client().await?;
        let rows = conn.query(query!("jobs/renew"), &[&ids, &attempts, &holder, &until]).await.map_err(db_err)?;
        let renewed: Vec<(String, i32)> = rows
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(db_err)?;
        // In the order asked.
        Ok(running
            .into_iter()
            .filter(|(id, attempt)| {
                renewed.iter().any(|(r_id, r_attempt)| *r_id == id.to_string() && *r_attempt == attempt_int(*attempt))
            })
            .collect())
    }

    async fn expire_overdue(&self, policy: ClaimPolicy) -> Result<usize, StoreError> {
        let mut conn = self.client().await?;
        let tx = conn.transaction().await.map_err(db_err)?;
        if !super::sweep_lock(&tx, super::Sweep::ExpireOverdue).await? {
            return Ok(0);
        }
        let now = Timestamp::now().0;
        let before = now.saturating_sub(ms(policy.time_to_live));
        let rows = tx
            .query(query!("jobs/expire_overdue"), &[&now, &before, &ms(policy.write_timeout)])
            .await
            .map_err(db_err)?;
        settle_batches(&tx, now, &parents(&rows)).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(rows.len())
    }

    async fn purge_idempotency_keys(&self, older_than: Duration) -> Result<usize, StoreError> {
        let mut conn = self.client().await?;
        let tx = conn.transaction().await.map_err(db_err)?;
        if !super::sweep_lock(&tx, super::Sweep::IdempotencyKeys).await? {
            return Ok(0);
        }
        let before = Timestamp::now().0.saturating_sub(ms(older_than));
        let purged = tx.execute(query!("jobs/purge_idempotency_keys"), &[&before]).await.map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(usize::try_from(purged).unwrap_or(usize::MAX))
    }

    async fn take_secret(&self, id: JobId, client: &str) -> Result<SecretTake, StoreError> {
        let mut conn = self.client().await?;
        let tx = conn.transaction().await.map_err(db_err)?;
        let id_text = id.to_string();
        let Some(row) = tx.query_opt(query!("jobs/lock_for_secret"), &[&id_text, &client]).await.map_err(db_err)?
        else {
            return Ok(SecretTake::NotFound);
        };
        let kind: String = row.try_get(0).map_err(db_err)?;
        let state: String = row.try_get(1).map_err(db_err)?;
        let encoding: Option<String> = row.try_get(2).map_err(db_err)?;
        let bytes: Option<Vec<u8>> = row.try_get(3).map_err(db_err)?;
        let retrieved: Option<i64> = row.try_get(4).map_err(db_err)?;
        if JobKind::parse(&kind) != Some(JobKind::GeneratePassword) {
            return Ok(SecretTake::NoSecret);
        }
        let take = match (encoding.as_deref().and_then(SecretEncoding::parse), bytes, retrieved) {
            (Some(encoding), Some(bytes), _) => {
                tx.execute(query!("jobs/erase_secret"), &[&id_text, &Timestamp::now().0]).await.map_err(db_err)?;
                SecretTake::Taken(ResultSecret { encoding, bytes })
            }
            (_, _, Some(_)) => SecretTake::AlreadyTaken,
            _ if state == JobState::Failed.as_str() => SecretTake::NoSecret,
            _ if state == JobState::Succeeded.as_str() => SecretTake::Lost,
            _ => SecretTake::NotReady,
        };
        tx.commit().await.map_err(db_err)?;
        Ok(take)
    }
}
