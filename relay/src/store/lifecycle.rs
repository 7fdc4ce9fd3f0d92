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

/// Compares in constant time (`subtle`), so timing does not tell how much of a proof matched.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}
