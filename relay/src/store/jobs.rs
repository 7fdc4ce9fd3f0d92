//! Jobs and their leases: the trait every backend implements for them, and what its calls answer.
//!
//! [`JobStore::claim_for`] is the only way a job reaches an agent: it atomically leases claimable
//! jobs to one or several holders, each up to its own limit and only from its own domains, and
//! increments each job's attempt, the fencing token ([`JobStore::claim`] is the same for one
//! holder). Both backends find the candidates the same way: per domain, the queued and the lapsed
//! jobs as two searches of the claimable index in `(created_ms, id)` order, each account checked by
//! its own index, stopped at the limit; [`assign`] then deals them out to the holders.
//!
//! The lease invariants, which every backend keeps in its statements (never read, check, then
//! write):
//! - **Fencing.** A result ([`JobStore::complete`]) or a renewal ([`JobStore::renew`]) changes a job
//!   only when the job is dispatched to that holder under that attempt: holder and attempt are in
//!   the `WHERE`. Anything else is stale and changes nothing.
//! - **One writer per account.** A job is claimable only when no older job of the same account
//!   (`account_key`: domain plus the target as given, normalised) is unfinished, and no attempt on
//!   the account is unresolved: a dispatched job is unresolved until it reports, or until its
//!   lease plus the write timeout has passed. So jobs for one account run in the order they were
//!   accepted, and an attempt that may still be writing is never overlapped by another.
//! - A lapsed lease is not taken away until the write timeout has passed on top of it; until then
//!   its holder may still renew it or report.
//! - A job becomes final at most once, and the statement that makes it final queues its webhook
//!   event in the same transaction.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use pwrelay_shared::domain::DomainName;

use super::StoreError;
use super::columns::{Columns, RowReader};
use crate::jobs::{
    ErrorCode, GenerateMode, GenerateSpec, Job, JobError, JobId, JobKind, JobOptions, JobState, JobSuccess, LeasedJob,
    NewJob, Outcome, ResultSecret, SecretStatus, Target, Timestamp,
};

/// Limits applied while claiming.
#[derive(Clone, Copy, Debug)]
pub struct ClaimPolicy {
    /// How long a lease lasts from when it is granted or renewed.
    pub lease: Duration,
    /// The longest an agent's LDAP write may take: a lapsed lease is taken over, and its account
    /// handed to another attempt, only once this has passed on top of it.
    pub write_timeout: Duration,
    /// After this many leases a job fails with `delivery_exhausted` instead of being leased again.
    pub max_attempts: u32,
    /// Jobs older than this fail with `expired` instead of being leased.
    pub time_to_live: Duration,
}

/// One holder's part of a claim: who takes the jobs, for which of its domains, and how many at most.
#[derive(Clone, Debug)]
pub struct ClaimDemand {
    /// The lease holder (the agent's certificate name and process instance).
    pub holder: String,
    /// The agent's name, recorded on the job.
    pub agent: String,
    /// The domains it serves.
    pub domains: Vec<DomainName>,
    /// At most this many jobs.
    pub limit: usize,
}

/// How many candidates a claim looks for in each domain: the room of every holder serving it.
pub(crate) fn domain_limits(demands: &[ClaimDemand]) -> BTreeMap<DomainName, usize> {
    let mut limits = BTreeMap::new();
    for demand in demands.iter().filter(|d| d.limit > 0) {
        for domain in &demand.domains {
            *limits.entry(domain.clone()).or_insert(0usize) += demand.limit;
        }
    }
    limits
}

/// A job a claim found claimable, as its candidate search returns it.
#[derive(Clone, Debug)]
pub(crate) struct Candidate {
    /// The job's id as stored.
    pub id: String,
    /// Its domain.
    pub domain: DomainName,
    /// Its creation time, Unix milliseconds (the claim order, with the id).
    pub created_ms: i64,
}

/// Deals candidates out to the demands, oldest first: each goes to the next holder (in turn) that
/// serves its domain and has room left, or to nobody. Returns the demand index of each candidate
/// taken. At most one candidate per account is ever found, so holders never share an account.
pub(crate) fn assign(demands: &[ClaimDemand], mut candidates: Vec<Candidate>) -> Vec<(Candidate, usize)> {
    candidates.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
    let mut room: Vec<usize> = demands.iter().map(|d| d.limit).collect();
    let mut turns: BTreeMap<&DomainName, VecDeque<usize>> = BTreeMap::new();
    for (index, demand) in demands.iter().enumerate().filter(|(_, d)| d.limit > 0) {
        for domain in &demand.domains {
            turns.entry(domain).or_default().push_back(index);
        }
    }
    let mut taken = Vec::new();
    for candidate in candidates {
        let Some(queue) = turns.get_mut(&candidate.domain) else { continue };
        while let Some(index) = queue.pop_front() {
            if room[index] == 0 {
                continue;
            }
            room[index] -= 1;
            if room[index] > 0 {
                queue.push_back(index);
            }
            taken.push((candidate, index));
            break;
        }
    }
    taken
}

/// What happened to a reported outcome.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Completion {
    /// The job is now final.
    Finished,
    /// A retryable failure: the job is queued again (after a back-off, unless the agent never
    /// started it).
    Requeued,
    /// This very result was recorded before (the agent sent it again after a lost
    /// acknowledgement); nothing changed.
    Duplicate,
    /// The result is not from the current attempt of the current holder (another attempt took the
    /// job over, or it is final through another attempt): it changed nothing.
    Stale,
    /// No such job.
    Unknown,
}

/// What happened to a request for a job's returned secret.
#[derive(Debug, PartialEq, Eq)]
pub enum SecretTake {
    /// Here it is; it is now erased from the store.
    Taken(ResultSecret),
    /// It was read before and is gone.
    AlreadyTaken,
    /// The job succeeded but its password never reached the relay (an agent that recorded the
    /// result without it); the account has a password nobody holds: rotate it again.
    Lost,
    /// The job has not finished yet.
    NotReady,
    /// This job returns no secret (not a generating job, or it failed).
    NoSecret,
    /// No such job for this client.
    NotFound,
}

/// What an insert with an idempotency key found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insertion {
    /// A new job was stored.
    Created,
    /// The key was used before with the same body: this is the original job.
    Replayed(JobId),
    /// The key was used before with another body.
    KeyConflict(JobId),
}

/// Which jobs a listing returns.
#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    /// Only this state.
    pub state: Option<crate::jobs::JobState>,
    /// Only this domain.
    pub domain: Option<DomainName>,
    /// Only jobs created at or after this time.
    pub since: Option<crate::jobs::Timestamp>,
    /// Only jobs created after this one (the cursor).
    pub after: Option<JobId>,
    /// At most this many.
    pub limit: usize,
}

/// What a cancel request found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cancellation {
    /// The job was queued and is now failed with `cancelled`; its secret is erased.
    Cancelled,
    /// An agent holds the job: it may already be applying it.
    InProgress,
    /// The job already ended.
    AlreadyFinal,
    /// No such job for this client.
    NotFound,
}

/// Back-off before a job whose attempt failed with a retryable error is leased again.
pub(crate) fn retry_delay(attempts: u32) -> Duration {
    let exponent = attempts.saturating_sub(1).min(6);
    Duration::from_secs(5 * (1u64 << exponent)).min(Duration::from_secs(300))
}

/// A job row with the columns that never leave the store except in a lease.
pub(crate) struct StoredJob {
    pub(crate) job: Job,
    pub(crate) sealed_secret: Option<Vec<u8>>,
    pub(crate) lease_expires_ms: Option<i64>,
    pub(crate) recipient_key: Option<Vec<u8>>,
}

/// Reads a job row selected with the job columns, in this order on both backends (SQLite's
/// `JOB_COLUMNS`, the `SELECT`s and `RETURNING`s of PostgreSQL's `queries/jobs/`): `id, kind,
/// domain, target_kind, target_value, must_change, unlock, client, state, created_ms, updated_ms,
/// dispatched_ms, finished_ms, agent, attempts, error_code, error_message, directory_code,
/// account_dn, verified, pwd_last_set, secret, lease_expires_ms, enforce_history, generate_length,
/// generate_mode, recipient_key, password_matches, account_state, notes, result_secret_encoding,
/// result_secret IS NOT NULL, secret_retrieved_ms, parent_id`.
pub(crate) fn read_job(row: &(impl Columns + ?Sized)) -> Result<StoredJob, StoreError> {
    let r = RowReader::new(row, 0)?;
    let job_id = r.id().parse::<JobId>().map_err(|_| r.corrupt("bad id"))?;
    let kind = r.parsed(1, "kind", JobKind::parse)?;
    let domain = r.parsed(2, "domain", |d| DomainName::parse(d).ok())?;
    let target_kind = r.text(3, "target_kind")?;
    let target = Target::from_parts(&target_kind, r.text(4, "target_value")?).ok_or_else(|| r.corrupt("bad target"))?;
    let state = r.parsed(8, "state", JobState::parse)?;
    let error = match r.opt_text(15)? {
        Some(code) => Some(JobError {
            code: ErrorCode::parse(&code).unwrap_or(ErrorCode::Unknown),
            message: r.opt_text(16)?.unwrap_or_default(),
            directory_code: r.opt_text(17)?,
        }),
        None => None,
    };
    let result = match r.opt_text(18)? {
        Some(account_dn) if state == JobState::Succeeded => Some(JobSuccess {
            account_dn,
            verified: r.opt_flag(19)?.unwrap_or(false),
            pwd_last_set: r.opt_int(20)?.unwrap_or(0),
            password_matches: r.opt_flag(27)?,
            account_state: r.opt_json(28, "account_state")?,
            notes: r.opt_json(29, "notes")?.unwrap_or_default(),
        }),
        _ => None,
    };
    let generate = match (r.opt_count(24, "generate_length")?, r.opt_text(25)?) {
        (Some(length), Some(mode)) => Some(GenerateSpec {
            length,
            mode: GenerateMode::parse(&mode).ok_or_else(|| r.corrupt("bad generate_mode"))?,
        }),
        _ => None,
    };
    let secret = if kind != JobKind::GeneratePassword {
        None
    } else if r.flag(31, "result_secret")? {
        Some(SecretStatus::Available)
    } else if r.opt_int(32)?.is_some() {
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
            must_change: r.flag(5, "must_change")?,
            unlock: r.flag(6, "unlock")?,
            enforce_history: r.flag(23, "enforce_history")?,
        },
        state,
        client: r.text(7, "client")?,
        created_at: Timestamp(r.int(9, "created_ms")?),
        updated_at: Timestamp(r.int(10, "updated_ms")?),
        dispatched_at: r.opt_int(11)?.map(Timestamp),
        finished_at: r.opt_int(12)?.map(Timestamp),
        agent: r.opt_text(13)?,
        attempts: r.opt_count(14, "attempts")?.unwrap_or(0),
        error,
        result,
        generate,
        secret,
        parent_id: r.opt_parsed(33, "parent_id", |p| p.parse::<JobId>().ok())?,
        progress: None,
        lifecycle: None,
    };
    Ok(StoredJob {
        job,
        sealed_secret: r.opt_bytes(21)?,
        lease_expires_ms: r.opt_int(22)?,
        recipient_key: r.opt_bytes(26)?,
    })
}

/// Jobs, batches, attempts and leases, idempotency keys and returned secrets.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Stores a new queued job durably (committed when this returns).
    async fn insert_job(&self, job: NewJob) -> Result<(), StoreError> {
        self.insert_jobs_once(vec![job], None).await.map(|_| ())
    }

    /// Stores new jobs (a job, or a batch followed by its children) in one transaction, unless
    /// `idempotency` (the client's key, SHA-256 of the request body) was used before; the key then
    /// refers to the first job.
    async fn insert_jobs_once(
        &self,
        jobs: Vec<NewJob>,
        idempotency: Option<(String, [u8; 32])>,
    ) -> Result<Insertion, StoreError>;

    /// A client's jobs, oldest first, as the filter says.
    async fn list_jobs(&self, client: &str, filter: JobFilter) -> Result<Vec<Job>, StoreError>;

    /// Cancels a queued job of `client`.
    async fn cancel(&self, id: JobId, client: &str) -> Result<Cancellation, StoreError>;

    /// One job, without its secret.
    async fn job(&self, id: JobId) -> Result<Option<Job>, StoreError>;

    /// Atomically leases up to `limit` claimable jobs of `domains` to `holder`, oldest first.
    /// Jobs past their attempts are failed on the way and not returned.
    async fn claim(
        &self,
        domains: &[DomainName],
        holder: &str,
        agent: &str,
        limit: usize,
        policy: ClaimPolicy,
    ) -> Result<Vec<LeasedJob>, StoreError> {
        let demand =
            ClaimDemand { holder: holder.to_owned(), agent: agent.to_owned(), domains: domains.to_vec(), limit };
        Ok(self.claim_for(vec![demand], policy).await?.pop().unwrap_or_default())
    }

    /// Atomically (one transaction) leases claimable jobs to several holders: to each up to its
    /// `limit`, from its `domains` only, oldest first, holders taking turns. Returns each demand's
    /// jobs, in the order of `demands`, each list oldest first. Jobs past their attempts are
    /// failed on the way and not returned; jobs past their time to live are left to
    /// [`Self::expire_overdue`].
    async fn claim_for(
        &self,
        demands: Vec<ClaimDemand>,
        policy: ClaimPolicy,
    ) -> Result<Vec<Vec<LeasedJob>>, StoreError>;

    /// Records the outcome `holder` reported for `attempt`, fenced: only while the job is
    /// dispatched to that holder under that attempt. A final outcome erases the secret.
    async fn complete(&self, id: JobId, holder: &str, attempt: u32, outcome: Outcome)
    -> Result<Completion, StoreError>;

    /// Records several outcomes of `holder`, each exactly as [`Self::complete`] would (fenced, on
    /// its own), and answers each once it is durable. A backend may commit them together; one
    /// that fails does not undo the others. The answers are in the order of `results`.
    async fn complete_all(
        &self,
        holder: &str,
        results: Vec<(JobId, u32, Outcome)>,
    ) -> Vec<Result<Completion, StoreError>> {
        let mut answers = Vec::with_capacity(results.len());
        for (id, attempt, outcome) in results {
            answers.push(self.complete(id, holder, attempt, outcome).await);
        }
        answers
    }

    /// Extends the leases of `running` (job and attempt) by `lease` from now, each only while
    /// dispatched to `holder` under that attempt (a lapsed lease included, as long as nobody took
    /// it over). Returns the ones renewed.
    async fn renew(
        &self,
        holder: &str,
        running: Vec<(JobId, u32)>,
        lease: Duration,
    ) -> Result<Vec<(JobId, u32)>, StoreError>;

    /// Fails jobs older than the policy's time to live (whatever their domain), erasing their
    /// secrets: queued ones, and dispatched ones whose lease and write timeout have passed (an
    /// agent may still be writing the others). Returns how many.
    async fn expire_overdue(&self, policy: ClaimPolicy) -> Result<usize, StoreError>;

    /// Forgets idempotency keys taken longer than `older_than` ago (`jobs.idempotency_hours`):
    /// a request sent again with such a key makes a new job. Returns how many.
    async fn purge_idempotency_keys(&self, older_than: Duration) -> Result<usize, StoreError>;

    /// Hands out a generating job's secret exactly once and erases it.
    async fn take_secret(&self, id: JobId, client: &str) -> Result<SecretTake, StoreError>;
}
