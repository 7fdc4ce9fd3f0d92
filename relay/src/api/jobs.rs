//! `/v1/jobs`: a client's jobs (list, show with an optional long poll, cancel) and the once-only
//! generated password.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Authenticated;
use super::error::{ApiError, CancelErrors, ListErrors, SecretErrors, ShowErrors};
use super::{ApiState, PathId};
use crate::audit::{Event, Kind};
use crate::jobs::{Job, JobId, JobState, SecretEncoding, Timestamp};
use crate::store::{Cancellation, JobFilter, SecretTake};

/// The `{id}` of a route's path.
fn job_id(text: &str) -> Result<JobId, ApiError> {
    text.parse().map_err(|_| ApiError::invalid_request("the job id must be the UUID returned on creation").field("id"))
}

/// Largest page of a listing.
const MAX_PAGE: usize = 500;

/// The filters and paging of a listing.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only jobs in this state.
    #[param(value_type = Option<JobState>)]
    state: Option<String>,
    /// Only jobs of this AD domain (a DNS name).
    #[param(
        max_length = 253,
        pattern = r"^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?$"
    )]
    domain: Option<String>,
    /// RFC 3339 time: only jobs created at or after it.
    #[param(format = DateTime)]
    since: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<JobId>)]
    cursor: Option<String>,
    /// Jobs per page, 1-500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
}

/// A page of jobs.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct JobPage {
    /// The jobs, oldest first.
    jobs: Vec<Job>,
    /// Pass it back as `cursor` for the next page; set when there may be more.
    next_cursor: Option<JobId>,
}

/// List jobs
///
/// The client's jobs, oldest first, `limit` per page; `next_cursor` is set when there may be more.
#[utoipa::path(
    get,
    path = "/v1/jobs",
    operation_id = "list_jobs",
    tag = "jobs",
    params(ListQuery),
    security(("bearer" = [])),
    responses((status = 200, description = "a page of the client's jobs", body = JobPage), ListErrors),
)]
pub(super) async fn list(
    State(state): State<Arc<ApiState>>,
    Authenticated(client): Authenticated,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<JobPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::query(&e, "state, domain, since, cursor, limit"))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid_request(format!("limit must be 1-{MAX_PAGE}")).field("limit"));
    }
    let filter = JobFilter {
        state: match query.state.as_deref() {
            None => None,
            Some(text) => Some(JobState::parse(text).ok_or_else(|| {
                ApiError::invalid_request("state must be queued, dispatched, succeeded or failed").field("state")
            })?),
        },
        domain: match query.domain.as_deref() {
            None => None,
            Some(text) => Some(pwrelay_shared::domain::DomainName::parse(text).map_err(|_| {
                ApiError::invalid_request("domain must be a DNS name like corp.example.com").field("domain")
            })?),
        },
        since: match query.since.as_deref() {
            None => None,
            Some(text) => {
                let time = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).map_err(
                    |_| {
                        ApiError::invalid_request("since must be an RFC 3339 time like 2026-11-22T08:00:00Z")
                            .field("since")
                    },
                )?;
                Some(Timestamp(i64::try_from(time.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)))
            }
        },
        after: match query.cursor.as_deref() {
            None => None,
            Some(text) => Some(
                text.parse::<JobId>()
                    .map_err(|_| ApiError::invalid_request("cursor must be a next_cursor value").field("cursor"))?,
            ),
        },
        limit,
    };
    let jobs = state.store.list_jobs(&client.name, filter).await.map_err(|e| ApiError::unavailable(&e))?;
    let next_cursor = (jobs.len() == limit).then(|| jobs.last().map(|j| j.job_id)).flatten();
    Ok(Json(JobPage { jobs, next_cursor }))
}

/// Cancel a job
///
/// Cancels a job no agent has taken yet: it fails with `cancelled` and its password is erased.
/// The job stays: `GET /v1/jobs/{id}` shows it as a record of what was asked.
#[utoipa::path(
    delete,
    path = "/v1/jobs/{id}",
    operation_id = "cancel_job",
    tag = "jobs",
    params(("id" = JobId, Path, description = "the job's id, as returned on creation")),
    security(("bearer" = [])),
    responses((status = 200, description = "the cancelled job", body = Job), CancelErrors),
)]
pub(super) async fn cancel(
    State(state): State<Arc<ApiState>>,
    Authenticated(client): Authenticated,
    PathId(id): PathId,
) -> Result<Json<Job>, ApiError> {
    let id = job_id(&id)?;
    match state.store.cancel(id, &client.name).await.map_err(|e| ApiError::unavailable(&e))? {
        Cancellation::Cancelled => {
            tracing::info!(job_id = %id, client = %client.name, "job cancelled");
            state.audit.record(Event::new(Kind::JobCancelled).client(&client.name).job(id));
            state.events.job_changed();
        }
        Cancellation::InProgress => {
            return Err(ApiError::conflict("an agent is carrying the job out; it can no longer be cancelled"));
        }
        Cancellation::AlreadyFinal => return Err(ApiError::conflict("the job has already ended")),
        Cancellation::NotFound => return Err(ApiError::not_found(format!("no job {id} for this API client"))),
    }
    let job = state.store.job(id).await.map_err(|e| ApiError::unavailable(&e))?;
    if let Some(job) = &job {
        state.metrics.job_finished(job.kind, job.state, job.error.as_ref().map(|e| e.code), job.created_at);
    }
    job.map(Json).ok_or_else(|| ApiError::not_found(format!("no job {id} for this API client")))
}

/// Longest accepted `wait`.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// How often a long poll re-reads the store even without a wake-up (other replicas).
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How long to wait for a job.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ShowQuery {
    /// Seconds to wait for the job to become final (0-60, default 0).
    #[param(minimum = 0, maximum = 60)]
    wait: Option<u64>,
}

/// Show a job
///
/// The job's state and, once final, its result or error. With `wait`, the call returns as soon as
/// the job is final or the time is up. Clients see only their own jobs.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    operation_id = "show_job",
    tag = "jobs",
    params(("id" = JobId, Path, description = "the job's id, as returned on creation"), ShowQuery),
    security(("bearer" = [])),
    responses((status = 200, description = "the job", body = Job), ShowErrors),
)]
pub(super) async fn show(
    State(state): State<Arc<ApiState>>,
    Authenticated(client): Authenticated,
    PathId(id): PathId,
    query: Result<Query<ShowQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Job>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::query(&e, "wait (seconds, 0-60)"))?;
    let id = job_id(&id)?;
    let wait = Duration::from_secs(query.wait.unwrap_or(0));
    if wait > MAX_WAIT {
        return Err(
            ApiError::invalid_request(format!("wait must be at most {} seconds", MAX_WAIT.as_secs())).field("wait")
        );
    }
    let deadline = tokio::time::Instant::now() + wait;
    let mut changed = state.events.changed();
    loop {
        let job = state
            .store
            .job(id)
            .await
            .map_err(|e| ApiError::unavailable(&e))?
            .filter(|job| visible(job, &client))
            .ok_or_else(|| ApiError::not_found(format!("no job {id} for this API client")))?;
        if job.state.is_final() || tokio::time::Instant::now() >= deadline {
            return with_lifecycle(&state, job).await.map(Json);
        }
        let pause = POLL_INTERVAL.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        tokio::select! {
            _ = changed.changed() => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// A client sees its own jobs, and new-hire jobs when its scopes name `lifecycle`.
fn visible(job: &Job, client: &crate::store::ApiClient) -> bool {
    job.client == client.name
        || (job.client == crate::lifecycle::CLIENT && client.scopes.names(crate::store::Operation::Lifecycle))
}

/// Adds a new-hire job's request (delivery and resume state).
async fn with_lifecycle(state: &ApiState, mut job: Job) -> Result<Job, ApiError> {
    if let (crate::jobs::JobKind::InitialPassword, Some(lifecycle)) = (job.kind, state.lifecycle.as_ref()) {
        job.lifecycle = lifecycle.store.request_of_job(job.job_id).await.map_err(|e| ApiError::unavailable(&e))?;
    }
    Ok(job)
}

/// A generated password as it is handed out, once.
#[derive(Serialize, ToSchema)]
#[serde(tag = "encoding", rename_all = "snake_case")]
pub(super) enum ReleasedSecret {
    /// The job named a `recipient_public_key`: open the box with `crypto_box_seal_open`.
    SealedBox {
        /// Base64 of the libsodium sealed box.
        #[schema(format = Byte)]
        sealed_box: String,
    },
    /// The job named no key: the password itself.
    Plaintext {
        /// The generated password.
        #[schema(format = Password)]
        password: String,
    },
}

impl std::fmt::Debug for ReleasedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReleasedSecret([redacted])")
    }
}

/// Read a generated password once
///
/// A generating job's password, exactly once: it is erased from the relay as it is handed out,
/// and a second read gets 410. The response has `Cache-Control: no-store`.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/secret",
    operation_id = "read_job_secret",
    tag = "jobs",
    params(("id" = JobId, Path, description = "the job's id, as returned on creation")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the password, now erased from the relay", body = ReleasedSecret,
            headers(("Cache-Control" = String, description = "`no-store`"))),
        SecretErrors,
    ),
)]
pub(super) async fn secret(
    State(state): State<Arc<ApiState>>,
    Authenticated(client): Authenticated,
    PathId(id): PathId,
) -> Result<(axum::http::HeaderMap, Json<ReleasedSecret>), ApiError> {
    use base64::Engine as _;
    let id = job_id(&id)?;
    let taken = state.store.take_secret(id, &client.name).await.map_err(|e| ApiError::unavailable(&e))?;
    let secret = match taken {
        SecretTake::Taken(secret) => secret,
        SecretTake::AlreadyTaken => {
            return Err(ApiError::gone("this job's password was already read once and has been erased"));
        }
        SecretTake::Lost => {
            return Err(ApiError::secret_lost(
                "the job set a password, but it never reached the relay, so nobody holds it; request another \
                 rotation of this account",
            ));
        }
        SecretTake::NotReady => return Err(ApiError::conflict("the job has not finished; wait for it with ?wait=")),
        SecretTake::NoSecret => return Err(ApiError::not_found(format!("job {id} returns no password"))),
        SecretTake::NotFound => return Err(ApiError::not_found(format!("no job {id} for this API client"))),
    };
    tracing::info!(job_id = %id, client = %client.name, "generated password handed out and erased");
    state.audit.record(
        Event::new(Kind::SecretTaken).client(&client.name).job(id).detail("encoding", secret.encoding.as_str()),
    );
    let body = match secret.encoding {
        SecretEncoding::SealedBox => {
            ReleasedSecret::SealedBox { sealed_box: base64::engine::general_purpose::STANDARD.encode(&secret.bytes) }
        }
        SecretEncoding::Aes256Gcm => return Err(ApiError::not_found(format!("job {id} returns no password"))),
        SecretEncoding::Plaintext => {
            let password = state.sealer.open(&id.to_string(), &secret.bytes).map_err(|e| ApiError::unavailable(&e))?;
            ReleasedSecret::Plaintext { password: password.expose_secret().to_owned() }
        }
    };
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    Ok((headers, Json(body)))
}
