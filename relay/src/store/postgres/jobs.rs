//! Jobs and leases in PostgreSQL: inserts with idempotency keys, claims (`FOR UPDATE SKIP
//! LOCKED`), fenced results and renewals, expiry, returned secrets, and batches that settle after
//! each change to a child is committed (never under a lock of the batch row, so the results of one
//! reconciliation do not queue behind each other), and in the sweep.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use pwrelay_shared::domain::DomainName;
use tokio_postgres::Row;

use super::{PostgresStore, db_err, query};
use crate::jobs::{
    ErrorCode, Job, JobId, JobKind, JobState, LeasedJob, NewJob, Outcome, Progress, ResultSecret, SecretEncoding,
    Timestamp,
};
use crate::store::jobs::{Candidate, assign, domain_limits, read_job, retry_delay};
use crate::store::{
    Cancellation, ClaimDemand, ClaimPolicy, Completion, Insertion, JobFilter, JobStore, SecretTake, StoreError,
};

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// An attempt number as stored (`INTEGER`).
fn attempt_int(attempt: u32) -> i32 {
    i32::try_from(attempt).unwrap_or(i32::MAX)
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

/// Moves the batches `parents` along with their children (`settle_dispatched.sql`,
/// `settle_final.sql`). Run after the commit of every transaction that changed a child's state, on
/// its own: the change is durable already, so a failure here is logged and left to the sweep
/// ([`JobStore::expire_overdue`] settles every open batch).
async fn settle_batches(client: &impl GenericClient, parents: &[String]) {
    if parents.is_empty() {
        return;
    }
    let now = Timestamp::now().0;
    let settled = async {
        let dispatched = client.prepare_cached(query!("jobs/settle_dispatched")).await?;
        client.execute(&dispatched, &[&now, &parents]).await?;
        let last = client.prepare_cached(query!("jobs/settle_final")).await?;
        client.execute(&last, &[&now, &parents]).await
    };
    if let Err(error) = settled.await {
        tracing::warn!(error = %db_err(error), "batches could not be settled now; the sweep settles them");
    }
}

impl PostgresStore {
    /// Records one fenced result in `tx` without committing it: what happened, and the batches of
    /// the job to settle after the commit.
    async fn record_result(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        id: JobId,
        holder: &str,
        attempt: u32,
        outcome: Outcome,
    ) -> Result<(Completion, Vec<String>), StoreError> {
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
                        &tx.prepare_cached(query!("jobs/complete_succeeded")).await.map_err(db_err)?,
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
                        &tx.prepare_cached(query!("jobs/complete_requeued")).await.map_err(db_err)?,
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
                        &tx.prepare_cached(query!("jobs/complete_failed")).await.map_err(db_err)?,
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
            let Some(row) = found else { return Ok((Completion::Unknown, Vec::new())) };
            let state: String = row.try_get(0).map_err(db_err)?;
            let lease_holder: Option<String> = row.try_get(1).map_err(db_err)?;
            let attempts: i32 = row.try_get(2).map_err(db_err)?;
            let duplicate = JobState::parse(&state).is_some_and(JobState::is_final)
                && attempts == attempt_number
                && lease_holder.as_deref() == Some(holder);
            if !duplicate {
                return Ok((Completion::Stale, Vec::new()));
            }
            tx.execute(query!("jobs/result_resent"), &[&id_text, &self.replica.as_str()]).await.map_err(db_err)?;
            return Ok((Completion::Duplicate, Vec::new()));
        }
        Ok((completion, parents(&changed)))
    }
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
        // One statement for all of them: a reconciliation's 1,000 children are one round trip.
        let ids: Vec<String> = jobs.iter().map(|j| j.id.to_string()).collect();
        let kinds: Vec<&str> = jobs.iter().map(|j| j.kind.as_str()).collect();
        let domains: Vec<&str> = jobs.iter().map(|j| j.domain.as_str()).collect();
        let target_kinds: Vec<&str> = jobs.iter().map(|j| j.target.kind()).collect();
        let target_values: Vec<String> = jobs.iter().map(|j| j.target.value()).collect();
        let must_change: Vec<bool> = jobs.iter().map(|j| j.options.must_change).collect();
        let unlock: Vec<bool> = jobs.iter().map(|j| j.options.unlock).collect();
        let clients: Vec<&str> = jobs.iter().map(|j| j.client.as_str()).collect();
        let secrets: Vec<Option<&[u8]>> = jobs.iter().map(|j| j.sealed_secret.as_deref()).collect();
        let enforce_history: Vec<bool> = jobs.iter().map(|j| j.options.enforce_history).collect();
        let generate_lengths: Vec<Option<i32>> =
            jobs.iter().map(|j| j.generate.map(|g| i32::try_from(g.length).unwrap_or(i32::MAX))).collect();
        let generate_modes: Vec<Option<&str>> = jobs.iter().map(|j| j.generate.map(|g| g.mode.as_str())).collect();
        let recipient_keys: Vec<Option<&[u8]>> = jobs.iter().map(|j| j.recipient_key.as_deref()).collect();
        let parents: Vec<Option<String>> = jobs.iter().map(|j| j.parent_id.map(|p| p.to_string())).collect();
        let account_keys: Vec<Option<String>> =
            jobs.iter().map(|j| (j.kind != JobKind::ReconcileBatch).then(|| j.target.account_key(&j.domain))).collect();
        tx.execute(
            query!("jobs/insert"),
            &[
                &ids,
                &kinds,
                &domains,
                &target_kinds,
                &target_values,
                &must_change,
                &unlock,
                &clients,
                &secrets,
                &now,
                &enforce_history,
                &generate_lengths,
                &generate_modes,
                &recipient_keys,
                &parents,
                &account_keys,
            ],
        )
        .await
        .map_err(db_err)?;
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
                Cancellation::Cancelled
            }
            Some(JobState::Dispatched) => Cancellation::InProgress,
            _ => Cancellation::AlreadyFinal,
        };
        tx.commit().await.map_err(db_err)?;
        if outcome == Cancellation::Cancelled {
            settle_batches(&conn, &parent.into_iter().collect::<Vec<_>>()).await;
        }
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

    async fn claim_for(
        &self,
        demands: Vec<ClaimDemand>,
        policy: ClaimPolicy,
    ) -> Result<Vec<Vec<LeasedJob>>, StoreError> {
        let limits = domain_limits(&demands);
        let mut leased: Vec<Vec<LeasedJob>> = std::iter::repeat_with(Vec::new).take(demands.len()).collect();
        if limits.is_empty() {
            return Ok(leased);
        }
        let mut conn = self.client().await?;
        let tx = conn.transaction().await.map_err(db_err)?;
        let now = Timestamp::now().0;
        let grace = ms(policy.write_timeout);
        let max_attempts = attempt_int(policy.max_attempts);
        let lease_until = now.saturating_add(ms(policy.lease));
        let created_after = now.saturating_sub(ms(policy.time_to_live));
        let search = tx.prepare_cached(query!("jobs/claim_candidates")).await.map_err(db_err)?;
        let mut candidates = Vec::new();
        let mut exhausted: Vec<String> = Vec::new();
        for (domain, limit) in &limits {
            let limit = i64::try_from(*limit).unwrap_or(i64::MAX);
            let rows = tx
                .query(&search, &[&domain.as_str(), &now, &grace, &created_after, &max_attempts, &limit])
                .await
                .map_err(db_err)?;
            for row in rows {
                let id: String = row.try_get(0).map_err(db_err)?;
                let attempts: i32 = row.try_get(2).map_err(db_err)?;
                if attempts >= max_attempts {
                    exhausted.push(id);
                } else {
                    candidates.push(Candidate {
                        id,
                        domain: domain.clone(),
                        created_ms: row.try_get(1).map_err(db_err)?,
                    });
                }
            }
        }
        let mut batches = Vec::new();
        if !exhausted.is_empty() {
            let failed = tx.query(query!("jobs/fail_exhausted"), &[&exhausted, &now, &grace]).await.map_err(db_err)?;
            batches.extend(parents(&failed));
        }
        let assigned = assign(&demands, candidates);
        if !assigned.is_empty() {
            let mut ids = Vec::with_capacity(assigned.len());
            let mut holders = Vec::with_capacity(assigned.len());
            let mut agents = Vec::with_capacity(assigned.len());
            let mut owner = std::collections::HashMap::with_capacity(assigned.len());
            for (candidate, index) in assigned {
                holders.push(demands[index].holder.as_str());
                agents.push(demands[index].agent.as_str());
                owner.insert(candidate.id.clone(), index);
                ids.push(candidate.id);
            }
            let rows = tx
                .query(
                    &tx.prepare_cached(query!("jobs/claim")).await.map_err(db_err)?,
                    &[&ids, &holders, &agents, &now, &grace, &lease_until],
                )
                .await
                .map_err(db_err)?;
            for row in &rows {
                let stored = read_job(row)?;
                let Some(&index) = owner.get(&stored.job.job_id.to_string()) else { continue };
                leased[index].push(LeasedJob {
                    earlier_attempt_unresolved: row.try_get(34).map_err(db_err)?,
                    job: stored.job,
                    sealed_secret: stored.sealed_secret,
                    recipient_key: stored.recipient_key,
                    lease_deadline_unix_ms: stored.lease_expires_ms.unwrap_or(lease_until),
                    lease_duration: policy.lease,
                });
            }
            batches.extend(parents(&rows));
        }
        tx.commit().await.map_err(db_err)?;
        for jobs in &mut leased {
            jobs.sort_by_key(|l| (l.job.created_at, l.job.job_id));
        }
        batches.sort();
        batches.dedup();
        settle_batches(&conn, &batches).await;
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
        let (completion, batches) = self.record_result(&tx, id, holder, attempt, outcome).await?;
        tx.commit().await.map_err(db_err)?;
        settle_batches(&conn, &batches).await;
        Ok(completion)
    }

    async fn complete_all(
        &self,
        holder: &str,
        results: Vec<(JobId, u32, Outcome)>,
    ) -> Vec<Result<Completion, StoreError>> {
        let count = results.len();
        let failed = |error: &StoreError| (0..count).map(|_| Err(StoreError::Database(error.to_string()))).collect();
        let mut conn = match self.client().await {
            Ok(conn) => conn,
            Err(error) => return failed(&error),
        };
        let mut tx = match conn.transaction().await {
            Ok(tx) => tx,
            Err(error) => return failed(&db_err(error)),
        };
        // One transaction, a savepoint per result: one that fails is rolled back alone.
        let mut answers = Vec::with_capacity(count);
        let mut batches = Vec::new();
        for (id, attempt, outcome) in results {
            let answer = async {
                let savepoint = tx.savepoint("result").await.map_err(db_err)?;
                let recorded = self.record_result(&savepoint, id, holder, attempt, outcome).await?;
                savepoint.commit().await.map_err(db_err)?;
                Ok(recorded)
            }
            .await;
            answers.push(answer.map(|(completion, parents)| {
                batches.extend(parents);
                completion
            }));
        }
        if let Err(error) = tx.commit().await {
            return failed(&db_err(error));
        }
        batches.sort();
        batches.dedup();
        settle_batches(&conn, &batches).await;
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
        let ids: Vec<String> = running.iter().map(|(id, _)| id.to_string()).collect();
        let attempts: Vec<i32> = running.iter().map(|(_, attempt)| attempt_int(*attempt)).collect();
        let until = Timestamp::now().0.saturating_add(ms(lease));
        let conn = self.client().await?;
        let renew = conn.prepare_cached(query!("jobs/renew")).await.map_err(db_err)?;
        let rows = conn.query(&renew, &[&ids, &attempts, &holder, &until]).await.map_err(db_err)?;
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
        tx.commit().await.map_err(db_err)?;
        // Every open batch, not only those of the jobs expired here: a batch whose settle after a
        // child's change did not run (the relay stopped in between) settles now.
        let open = conn.query(query!("jobs/open_batches"), &[]).await.map_err(db_err)?;
        let open: Vec<String> = open.iter().map(|row| row.try_get(0)).collect::<Result<_, _>>().map_err(db_err)?;
        settle_batches(&conn, &open).await;
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
