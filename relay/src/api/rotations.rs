//! `POST /v1/rotations`: set a caller-supplied password, or have the agent generate one.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use base64::Engine as _;
use pwrelay_shared::secret::SecretString;
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::Authenticated;
use super::error::{ApiError, SubmitErrors};
use super::submit::{
    Accepted, IdempotencyKey, JobAccepted, TargetRequest, authorize, check_password, queue, served_domain,
};
use super::{ApiState, json_body};
use crate::jobs::{GenerateMode, GenerateSpec, JobId, JobKind, JobOptions, NewJob};
use crate::store::Operation;

/// Longest generated password that may be asked for.
const MAX_GENERATED_CHARS: u32 = 128;

/// A rotation: exactly one of `password` and `generate`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RotationRequest {
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
    /// The new password (1-256 characters, no control characters); stored sealed and erased when
    /// the job ends.
    #[schema(value_type = String, required = false, nullable = false, format = Password, min_length = 1, max_length = 256, pattern = r"^[^\u0000-\u001f\u007f-\u009f]*$", write_only)]
    password: Option<SecretString>,
    /// Instead of `password`: the agent generates a password that meets the account's policy.
    #[schema(nullable = false)]
    generate: Option<GenerateRequest>,
    /// With `generate` only: base64 (standard alphabet, padded) of a 32-byte X25519 public key; the
    /// password is then returned only as a libsodium sealed box to it, so the relay never sees it.
    #[schema(nullable = false, format = Byte, pattern = r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")]
    recipient_public_key: Option<String>,
    /// Require a change at next logon (`pwdLastSet = 0`); otherwise `pwdLastSet = -1`.
    #[serde(default)]
    must_change: bool,
    /// Also clear a lockout (`lockoutTime = 0`).
    #[serde(default)]
    unlock: bool,
    /// Ask the DC to apply password history to the reset (policy hints control).
    #[serde(default)]
    enforce_history: bool,
}

/// How the agent generates the password.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct GenerateRequest {
    /// Characters, 8-128 (default 20); raised to the account's policy minimum.
    #[schema(minimum = 8, maximum = 128, default = 20)]
    #[serde(default, deserialize_with = "whole_number")]
    length: Option<u32>,
    /// The kind of password (default `random`).
    #[schema(value_type = Option<GenerateMode>)]
    mode: Option<String>,
}

/// A JSON integer as JSON Schema has it: `20` or `20.0` (a number without a fractional part).
fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else { return Ok(None) };
    let whole = number.as_u64().or_else(|| {
        number.as_f64().filter(|f| f.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(f)).map(|f| f as u64)
    });
    whole
        .and_then(|n| u32::try_from(n).ok())
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom("a whole number of characters"))
}

/// Queue a rotation
///
/// Sets a caller-supplied password, or has the agent generate one (read it once with
/// `GET /v1/jobs/{id}/secret`). Answers 202 once the job is on disk; follow it with
/// `GET /v1/jobs/{id}?wait=`.
#[utoipa::path(
    post,
    path = "/v1/rotations",
    operation_id = "create_rotation",
    tag = "jobs",
    request_body = RotationRequest,
    params(IdempotencyKey),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "the job is on disk and queued", body = JobAccepted,
            headers(("Idempotent-Replayed" = String, description = "`true` when this is the original job of a repeated Idempotency-Key"))),
        SubmitErrors,
    ),
)]
pub(super) async fn create(
    State(state): State<Arc<ApiState>>,
    Authenticated(client): Authenticated,
    headers: HeaderMap,
    body: Body,
) -> Result<Accepted, ApiError> {
    let parsed = json_body::<RotationRequest>(&headers, body, state.max_body_bytes).await?;
    let request = parsed.value;
    let domain = served_domain(&state, &client, &request.domain)?;
    authorize(&client, Operation::Rotate, &domain)?;
    let target = request.target.validate("target")?;
    let options = JobOptions {
        must_change: request.must_change,
        unlock: request.unlock,
        enforce_history: request.enforce_history,
    };
    let (kind, generate, recipient_key) = match (&request.password, request.generate) {
        (Some(password), None) => {
            check_password("password", password)?;
            if request.recipient_public_key.is_some() {
                return Err(ApiError::invalid_request("recipient_public_key goes with generate, not with password")
                    .field("recipient_public_key"));
            }
            (JobKind::SetPassword, None, None)
        }
        (None, Some(spec)) => {
            let length = spec.length.unwrap_or(20);
            if !(8..=MAX_GENERATED_CHARS).contains(&length) {
                return Err(ApiError::invalid_request(format!("generate.length must be 8-{MAX_GENERATED_CHARS}"))
                    .field("generate.length"));
            }
            let mode = match spec.mode.as_deref() {
                None => GenerateMode::Random,
                Some(text) => GenerateMode::parse(text).ok_or_else(|| {
                    ApiError::invalid_request("generate.mode must be \"random\", \"friendly\" or \"passphrase\"")
                        .field("generate.mode")
                })?,
            };
            let key = match &request.recipient_public_key {
                None => None,
                Some(text) => {
                    let key =
                        base64::engine::general_purpose::STANDARD.decode(text.trim()).ok().filter(|k| k.len() == 32);
                    Some(key.ok_or_else(|| {
                        ApiError::invalid_request(
                            "recipient_public_key must be the base64 of a 32-byte X25519 public key",
                        )
                        .field("recipient_public_key")
                    })?)
                }
            };
            (JobKind::GeneratePassword, Some(GenerateSpec { length, mode }), key)
        }
        _ => return Err(ApiError::invalid_request("send exactly one of password and generate").field("password")),
    };
    let job = NewJob {
        id: JobId::generate(),
        kind,
        domain,
        target,
        options,
        client: client.name.clone(),
        sealed_secret: None,
        generate,
        recipient_key,
        parent_id: None,
    };
    queue(&state, &client, &headers, parsed.sha256, job, request.password.as_ref()).await
}
