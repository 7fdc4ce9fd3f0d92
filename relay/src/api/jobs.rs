//! `GET /v1/jobs/{id}`: a job's state, with an optional long poll.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;

use super::ApiState;
use super::auth::Authenticated;
use super::error::ApiError;
use crate::jobs::{Job, JobId, JobState, SecretEncoding, Timestamp};
use crate::store::{Cancellation, JobFilter, SecretTake};

/// Largest page of a listing.
const MAX_PAGE: usize = 500;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    state: Option<String>,
    domain: Option<String>,
    /// RFC 3339 time: only jobs created at or after it.
    since: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/jobs`: the client's jobs, oldest first, `limit` (1-500, default 100) per page;
/// `next_cursor` is set when there may be more.
pub(super) async fn list(
    State(state): State<Arc<ApiState>>,
    Authenticated(client): Authenticated,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(query) = query
        .map_err(|e| ApiError::invalid_request(format!("{e}; parameters: state, domain, since, cursor, limit")))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid_request(format!("limit must be 1-{MAX_PAGE}")));
    }
    let filter = JobFilter {
        state: match query.state.as_deref() {
            None => None,
            Some(text) => {
                Some(JobState::parse(text).ok_or_else(|| {
                    ApiError::invalid_request("state must be queued, dispatched, succeeded or failed")
                })?)
            }
        },
        domain: match query.domain.as_deref() {
            None => None,
            Some(text) => Some(
                pwrelay_shared::domain::DomainName::parse(text)
                    .map_err(|e| ApiError::invalid_request(format!("domain: {e}")))?,
            ),
        },
        since: match query.since.as_deref() {
            None => None,
            Some(text) => {
                let time = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).map_err(
                    |_| ApiError::invalid_request("since must be an RFC 3339 time like 2026-11-22T08:00:00Z"),
                )?;
                Some(Timestamp(i64::try_from(time.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)))
            }
        },
        after: match query.cursor.as_deref() {
            None => None,
            Some(text) => Some(
                text.parse::<JobId>().map_err(|_| ApiError::invalid_request("cursor must be a next_cursor value"))?,
            ),
        },
        limit,
    };
    let jobs = state.store.list_jobs(&client.name, filter).await.map_err(|e| ApiError::unavailable(&e))?;
    let next_cursor = (jobs.len() == limit).then(|| jobs.last().map(|j| j.job_id)).flatten();
    Ok(Json(serde_json::json!({ "jobs": jobs, "next_cursor": next_cursor })))
}

/// `DELETE /v1/jobs/{id}`: cancels a job no agent has taken yet.
pub(super) async fn cancel(
    State(state): State<Arc<ApiState>>,
    Authenticated(client): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    let id: JobId =
        id.parse().map_err(|_| ApiError::invalid_request("the job id must be the UUID returned on creation"))?;
    match state.store.cancel(id, &client.name).await.map_err(|e| ApiError::unavailable(&e))? {
        Cancellation::Cancelled => {
            tracing::info!(job_id = %id, client = %client.name, "job cancelled");
            state.events.job_changed();
        }
        Cancellation::InProgress => {
            return Err(ApiError::conflict("an agent is carrying the job out; it can no longer be cancelled"));
        }
        Cancellation::AlreadyFinal => return Err(ApiError::conflict("the job has already ended")),
        Cancellation::NotFound => return Err(ApiError::not_found(format!("no job {id} for this API client"))),
    }
    let job = state.store.job(id).await.map_err(|e| ApiError::unavailable(&e))?;
    job.map(Json).ok_or_else(|| ApiError::not_found(format!("no job {id} for this API client")))
}

/// Longest accepted `wait`.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// How often a long poll re-reads the store even without a wake-up (other replicas).
const POLL_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ShowQuery {
    /// Seconds to wait for the job to become final (0-60).
    wait: Option<u64>,
}

/// `GET /v1/jobs/{id}[?wait=SECONDS]`. Clients see only their own jobs.
pub(super) async fn show(
    State(state): State<Arc<ApiState>>,
    Authenticated(client): Authenticated,
    Path(id): Path<String>,
    query: Result<Query<ShowQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Job>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid_request(format!("{e}; use ?wait=SECONDS (0-60)")))?;
    let id: JobId =
        id.parse().map_err(|_| ApiError::invalid_request("the job id must be the UUID returned on creation"))?;
    let wait = Duration::from_secs(query.wait.unwrap_or(0));
    if wait > MAX_WAIT {
        return Err(ApiError::invalid_request(format!("wait must be at most {} seconds", MAX_WAIT.as_secs())));
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

/// A client sees its own jobs, and new-hire jobs when it has the `lifecycle` scope.
fn visible(job: &Job, client: &crate::store::ApiClient) -> bool {
    job.client == client.name
        || (job.client == crate::lifecycle::CLIENT && client.scopes.allows(crate::store::Operation::Lifecycle))
}

/// Adds a new-hire job's request (delivery and resume state).
async fn with_lifecycle(state: &ApiState, mut job: Job) -> Result<Job, ApiError> {
    if let (crate::jobs::JobKind::InitialPassword, Some(lifecycle)) = (job.kind, state.lifecycle.as_ref()) {
        job.lifecycle = lifecycle.store.request_of_job(job.job_id).await.map_err(|e| ApiError::unavailable(&e))?;
    }
    Ok(job)
}

/// `GET /v1/jobs/{id}/secret`: a generating job's password, exactly once; it is erased from the
/// relay as it is handed out. `{"encoding": "sealed_box", "sealed_box": base64}` when the job
/// named a recipient key, else `{"encoding": "plaintext", "password": "..."}`.
pub(super) async fn secret(
    State(state): State<Arc<ApiState>>,
    Authenticated(client): Authenticated,
    Path(id): Path<String>,
) -> Result<(axum::http::HeaderMap, Json<serde_json::Value>), ApiError> {
    use base64::Engine as _;
    let id: JobId =
        id.parse().map_err(|_| ApiError::invalid_request("the job id must be the UUID returned on creation"))?;
    let taken = state.store.take_secret(id, &client.name).await.map_err(|e| ApiError::unavailable(&e))?;
    let secret = match taken {
        SecretTake::Taken(secret) => secret,
        SecretTake::AlreadyTaken => {
            return Err(ApiError::gone("this job's password was already read once and has been erased"));
        }
        SecretTake::NotReady => return Err(ApiError::conflict("the job has not finished; wait for it with ?wait=")),
        SecretTake::NoSecret => return Err(ApiError::not_found(format!("job {id} returns no password"))),
        SecretTake::NotFound => return Err(ApiError::not_found(format!("no job {id} for this API client"))),
    };
    tracing::info!(job_id = %id, client = %client.name, "generated password handed out and erased");
    let body = match secret.encoding {
        SecretEncoding::SealedBox => serde_json::json!({
            "encoding": "sealed_box",
            "sealed_box": base64::engine::general_purpose::STANDARD.encode(&secret.bytes),
        }),
        SecretEncoding::Aes256Gcm => return Err(ApiError::not_found(format!("job {id} returns no password"))),
        SecretEncoding::Plaintext => {
            let password = state.sealer.open(&id.to_string(), &secret.bytes).map_err(|e| ApiError::unavailable(&e))?;
            serde_json::json!({ "encoding": "plaintext", "password": password.expose_secret() })
        }
    };
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    Ok((headers, Json(body)))
}
