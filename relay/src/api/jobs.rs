//! `GET /v1/jobs/{id}`: a job's state, with an optional long poll.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;

use super::ApiState;
use super::auth::Authenticated;
use super::error::ApiError;
use crate::jobs::{Job, JobId};

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
            .filter(|job| job.client == client.name)
            .ok_or_else(|| ApiError::not_found(format!("no job {id} for this API client")))?;
        if job.state.is_final() || tokio::time::Instant::now() >= deadline {
            return Ok(Json(job));
        }
        let pause = POLL_INTERVAL.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        tokio::select! {
            _ = changed.changed() => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
}
