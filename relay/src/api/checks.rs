//! `POST /v1/verifications` (does this password bind? nothing is changed) and `POST /v1/unlocks`
//! (clear a lockout; no password change).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use pwrelay_shared::secret::SecretString;
use serde::Deserialize;
use serde_json::Value;

use super::auth::Authenticated;
use super::error::ApiError;
use super::submit::{TargetRequest, authorize, check_password, queue, served_domain};
use super::{ApiState, json_body};
use crate::jobs::{JobId, JobKind, JobOptions, NewJob};
use crate::store::Operation;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VerificationRequest {
    domain: String,
    target: TargetRequest,
    password: SecretString,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UnlockRequest {
    domain: String,
    target: TargetRequest,
}

fn job(kind: JobKind, domain: pwrelay_shared::domain::DomainName, target: crate::jobs::Target, client: &str) -> NewJob {
    NewJob {
        id: JobId::generate(),
        kind,
        domain,
        target,
        options: JobOptions::default(),
        client: client.to_owned(),
        sealed_secret: None,
        generate: None,
        recipient_key: None,
        parent_id: None,
    }
}

/// `POST /v1/verifications` → 202; the job's `result.password_matches` answers.
pub(super) async fn verify(
    State(state): State<Arc<ApiState>>,
    Authenticated(client): Authenticated,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, HeaderMap, Json<Value>), ApiError> {
    let parsed = json_body::<VerificationRequest>(&headers, body, state.max_body_bytes).await?;
    let request = parsed.value;
    let domain = served_domain(&state, &request.domain)?;
    authorize(&client, Operation::Verify, &domain)?;
    let target = request.target.validate()?;
    check_password("password", &request.password)?;
    let job = job(JobKind::Verify, domain, target, &client.name);
    queue(&state, &client, &headers, parsed.sha256, job, Some(&request.password)).await
}

/// `POST /v1/unlocks` → 202.
pub(super) async fn unlock(
    State(state): State<Arc<ApiState>>,
    Authenticated(client): Authenticated,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, HeaderMap, Json<Value>), ApiError> {
    let parsed = json_body::<UnlockRequest>(&headers, body, state.max_body_bytes).await?;
    let request = parsed.value;
    let domain = served_domain(&state, &request.domain)?;
    authorize(&client, Operation::Unlock, &domain)?;
    let target = request.target.validate()?;
    queue(&state, &client, &headers, parsed.sha256, job(JobKind::Unlock, domain, target, &client.name), None).await
}
