//! `POST /v1/verifications` (does this password bind? nothing is changed) and `POST /v1/unlocks`
//! (clear a lockout; no password change).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use pwrelay_shared::secret::SecretString;
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::Authenticated;
use super::error::{ApiError, SubmitErrors};
use super::submit::{
    Accepted, IdempotencyKey, JobAccepted, TargetRequest, authorize, check_password, queue, served_domain,
};
use super::{ApiState, json_body};
use crate::jobs::{JobId, JobKind, JobOptions, NewJob};
use crate::store::Operation;

/// A verification: does this password bind?
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct VerificationRequest {
    /// The AD DNS domain: one of the relay's `domains` that the client's scopes cover (the operator
    /// knows them; `GET /readyz` with a token lists them). Any other domain is refused with 422
    /// `invalid_request` (`details.field` = `domain`), whose message lists the ones the client may use.
    #[schema(
        example = "corp.example.com",
        max_length = 253,
        pattern = r"^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?$"
    )]
    domain: String,
    /// The account.
    target: TargetRequest,
    /// The password to try (1-256 characters, no control characters); stored sealed and erased when
    /// the job ends.
    #[schema(value_type = String, format = Password, min_length = 1, max_length = 256, pattern = r"^[^\u0000-\u001f\u007f-\u009f]*$", write_only)]
    password: SecretString,
}

/// An unlock: clear the account's lockout.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct UnlockRequest {
    /// The AD DNS domain: one of the relay's `domains` that the client's scopes cover (the operator
    /// knows them; `GET /readyz` with a token lists them). Any other domain is refused with 422
    /// `invalid_request` (`details.field` = `domain`), whose message lists the ones the client may use.
    #[schema(
        example = "corp.example.com",
        max_length = 253,
        pattern = r"^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?$"
    )]
    domain: String,
    /// The account.
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

/// Queue a verification
///
/// Checks whether a password binds; nothing is changed (a wrong one counts as a failed logon on
/// the DC, like any other). The finished job's `result.password_matches` answers.
#[utoipa::path(
    post,
    path = "/v1/verifications",
    operation_id = "create_verification",
    tag = "jobs",
    request_body = VerificationRequest,
    params(IdempotencyKey),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "the job is on disk and queued", body = JobAccepted,
            headers(("Idempotent-Replayed" = String, description = "`true` when this is the original job of a repeated Idempotency-Key"))),
        SubmitErrors,
    ),
)]
pub(super) async fn verify(
    State(state): State<Arc<ApiState>>,
    Authenticated(client): Authenticated,
    headers: HeaderMap,
    body: Body,
) -> Result<Accepted, ApiError> {
    let parsed = json_body::<VerificationRequest>(&headers, body, state.max_body_bytes).await?;
    let request = parsed.value;
    let domain = served_domain(&state, &client, &request.domain)?;
    authorize(&client, Operation::Verify, &domain)?;
    let target = request.target.validate("target")?;
    check_password("password", &request.password)?;
    let job = job(JobKind::Verify, domain, target, &client.name);
    queue(&state, &client, &headers, parsed.sha256, job, Some(&request.password)).await
}

/// Queue an unlock
///
/// Clears the account's lockout (`lockoutTime = 0`); no password changes.
#[utoipa::path(
    post,
    path = "/v1/unlocks",
    operation_id = "create_unlock",
    tag = "jobs",
    request_body = UnlockRequest,
    params(IdempotencyKey),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "the job is on disk and queued", body = JobAccepted,
            headers(("Idempotent-Replayed" = String, description = "`true` when this is the original job of a repeated Idempotency-Key"))),
        SubmitErrors,
    ),
)]
pub(super) async fn unlock(
    State(state): State<Arc<ApiState>>,
    Authenticated(client): Authenticated,
    headers: HeaderMap,
    body: Body,
) -> Result<Accepted, ApiError> {
    let parsed = json_body::<UnlockRequest>(&headers, body, state.max_body_bytes).await?;
    let request = parsed.value;
    let domain = served_domain(&state, &client, &request.domain)?;
    authorize(&client, Operation::Unlock, &domain)?;
    let target = request.target.validate("target")?;
    queue(&state, &client, &headers, parsed.sha256, job(JobKind::Unlock, domain, target, &client.name), None).await
}
