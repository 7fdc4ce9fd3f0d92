//! The new-hire flow's durable records: one row per Lifecycle Workflows task processing result
//! (the callout's idempotency key), moving `resolving → applying → delivering → resuming → done`,
//! and the one-time link it hands out.
//!
//! The link's ciphertext stays in its job's `result_secret` (sealed again with the store key) until
//! it is claimed, revoked or expired; the decryption key is never stored (see
//! [`crate::lifecycle`]). A claim must present `SHA-256("pwrelay-claim" ‖ key)`, so only a holder
//! of the link's fragment can use it up.

use async_trait::async_trait;
use serde::Serialize;
use uuid::Uuid;

use super::StoreError;
use super::columns::{Columns, RowReader};
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
    /// The name stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Resolving => "resolving",
            Self::Applying => "applying",
            Self::Delivering => "delivering",
            Self::Resuming => "resuming",
            Self::Done => "done",
            Self::ResumeFailed => "resume_failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<Self> {
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
    /// The replica that holds the link key in memory: the one that recorded the job's result
    /// while `applying`, the one sending the link while `delivering`.
    #[serde(skip)]
    pub key_holder: Option<String>,
    /// Fresh jobs made because the replica holding the key died (at most one).
    #[serde(skip)]
    pub reissues: u32,
}

/// Reads a request row selected with these columns, in this order on both backends (SQLite's
/// `COLUMNS`, PostgreSQL's `queries/lifecycle/`): `task_processing_result_id, tenant_id,
/// workflow_id, task_id, subject_id, display_name, stage, job_id`, the job's `state`, `delivery,
/// delivery_detail, outcome, outcome_reason, resume_attempts, link_expires_ms, link_claimed_ms,
/// link_views, created_ms, next_attempt_ms`, the key holder, `reissues`.
pub(crate) fn read_request(row: &(impl Columns + ?Sized)) -> Result<LifecycleRequest, StoreError> {
    let r = RowReader::new(row, 0)?;
    let uuid = |i: usize, what: &str| r.parsed(i, what, |text| Uuid::parse_str(text).ok());
    Ok(LifecycleRequest {
        task_processing_result_id: uuid(0, "id")?,
        tenant_id: r.text(1, "tenant id")?,
        workflow_id: uuid(2, "workflow id")?,
        task_id: uuid(3, "task id")?,
        subject_id: uuid(4, "subject id")?,
        display_name: r.text(5, "display name")?,
        stage: r.parsed(6, "stage", Stage::parse)?,
        job_id: r.opt_parsed(7, "job id", |j| j.parse::<JobId>().ok())?,
        job_state: r.opt_text(8)?,
        delivery: r.opt_text(9)?,
        delivery_detail: r.opt_text(10)?,
        outcome: r.opt_text(11)?,
        outcome_reason: r.opt_text(12)?,
        resume_attempts: r.count(13, "resume attempts")?,
        link_expires_at: r.opt_int(14)?.map(Timestamp),
        link_claimed_at: r.opt_int(15)?.map(Timestamp),
        link_views: r.count(16, "link views")?,
        created_at: Timestamp(r.int(17, "created_ms")?),
        next_attempt_ms: r.int(18, "next_attempt_ms")?,
        key_holder: r.opt_text(19)?,
        reissues: r.count(20, "reissues")?,
    })
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

/// The new-hire records: requests and their one-time links.
#[async_trait]
pub trait LifecycleStore: Send + Sync + 'static {
    /// Stores a callout once per task processing result.
    async fn insert_callout(&self, request: NewRequest) -> Result<CalloutInsertion, StoreError>;
    /// Claims for this replica, for `lease`, up to `limit` requests the worker should look at
    /// now and that no replica holds: due ones in `resolving`/`resuming`; `applying` ones whose job
    /// failed, or succeeded with its result recorded by this replica (which holds the link key) or
    /// by one that is no longer alive; `delivering` ones whose sending replica is no longer alive.
    /// Replicas claiming at once get different requests; the next stage change lets the claim go.
    async fn claim_requests(
        &self,
        lease: std::time::Duration,
        limit: usize,
    ) -> Result<Vec<LifecycleRequest>, StoreError>;
    /// One request.
    async fn request(&self, id: Uuid) -> Result<Option<LifecycleRequest>, StoreError>;
    /// The request of a job.
    async fn request_of_job(&self, job: JobId) -> Result<Option<LifecycleRequest>, StoreError>;
    /// `resolving → applying` with the job created for it.
    async fn set_applying(&self, id: Uuid, job: JobId) -> Result<(), StoreError>;
    /// Tries again later (Graph unreachable, ...), noting why.
    async fn postpone(&self, id: Uuid, next_attempt_ms: i64, reason: &str) -> Result<(), StoreError>;
    /// `applying → delivering`: the link exists from now on (claimable once the message is out),
    /// and this replica sends it. False (nothing changed) unless the request is applying and this
    /// replica recorded its job's result.
    async fn open_link(
        &self,
        id: Uuid,
        link_id: &str,
        proof_sha256: [u8; 32],
        expires: Timestamp,
    ) -> Result<bool, StoreError>;
    /// The replica holding the link key died before the link went out: `→ resolving` again
    /// without a job, the old ciphertext erased and the link forgotten, so the request gets a fresh
    /// job and a fresh password. Once per request: false (nothing changed) when it was re-issued
    /// before, or is no longer this replica's claim in `applying`/`delivering`.
    async fn reissue(&self, id: Uuid, reason: &str) -> Result<bool, StoreError>;
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
    /// Counts a request for the page or the claim of link `link_id`, shared by every replica:
    /// at most `limit` in a window of `window` that starts with the first request after the
    /// previous one ended. `Ok(Err(seconds))` when over the limit: how long until the window
    /// ends. An unknown link is not counted (its page says so; the per-client limit bounds
    /// guessing).
    async fn count_link_request(
        &self,
        link_id: &str,
        limit: u32,
        window: std::time::Duration,
    ) -> Result<Result<(), u64>, StoreError>;
}

/// What [`LifecycleStore::count_link_request`] decides from the window's start and count.
pub(crate) fn link_request_verdict(
    window_ms: i64,
    requests: i64,
    limit: u32,
    window: std::time::Duration,
    now: i64,
) -> Result<(), u64> {
    if requests <= i64::from(limit) {
        return Ok(());
    }
    let window = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    let left = window_ms.saturating_add(window).saturating_sub(now).max(0);
    Err(u64::try_from(left).unwrap_or(0).div_ceil(1000).max(1))
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

/// Compares in constant time (`subtle`), so timing does not tell how much of a proof matched.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}
