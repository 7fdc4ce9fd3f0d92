//! `POST /v1/rotations`: set a caller-supplied password, or have the agent generate one.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use pwrelay_shared::secret::SecretString;
use serde::Deserialize;
use serde_json::Value;

use super::auth::Authenticated;
use super::error::ApiError;
use super::submit::{TargetRequest, authorize, check_password, queue, served_domain};
use super::{ApiState, json_body};
use crate::jobs::{GenerateMode, GenerateSpec, JobId, JobKind, JobOptions, NewJob};
use crate::store::Operation;

/// Longest generated password that may be asked for.
const MAX_GENERATED_CHARS: u32 = 128;

/// The request body: exactly one of `password` and `generate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RotationRequest {
    domain: String,
    target: TargetRequest,
    password: Option<SecretString>,
    generate: Option<GenerateRequest>,
    /// Base64 of an X25519 public key: the generated password is returned only sealed to it.
    recipient_public_key: Option<String>,
    #[serde(default)]
    must_change: bool,
    #[serde(default)]
    unlock: bool,
    #[serde(default)]
    enforce_history: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateRequest {
    length: Option<u32>,
    mode: Option<String>,
}

/// `POST /v1/rotations` → `202 {"job_id": ...}` once the job is durably stored.
pub(super) async fn create(
    State(state): State<Arc<ApiState>>,
    Authenticated(client): Authenticated,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, HeaderMap, Json<Value>), ApiError> {
    let parsed = json_body::<RotationRequest>(&headers, body, state.max_body_bytes).await?;
    let request = parsed.value;
    let domain = served_domain(&state, &request.domain)?;
    authorize(&client, Operation::Rotate, &domain)?;
    let target = request.target.validate()?;
    let options = JobOptions {
        must_change: request.must_change,
        unlock: request.unlock,
        enforce_history: request.enforce_history,
    };
    let (kind, generate, recipient_key) = match (&request.password, request.generate) {
        (Some(password), None) => {
            check_password("password", password)?;
            if request.recipient_public_key.is_some() {
                return Err(ApiError::invalid_request("recipient_public_key goes with generate, not with password"));
            }
            (JobKind::SetPassword, None, None)
        }
        (None, Some(spec)) => {
            let length = spec.length.unwrap_or(20);
            if !(8..=MAX_GENERATED_CHARS).contains(&length) {
                return Err(ApiError::invalid_request(format!("generate.length must be 8-{MAX_GENERATED_CHARS}")));
            }
            let mode = match spec.mode.as_deref() {
                None => GenerateMode::Random,
                Some(text) => GenerateMode::parse(text).ok_or_else(|| {
                    ApiError::invalid_request("generate.mode must be \"random\", \"friendly\" or \"passphrase\"")
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
                    })?)
                }
            };
            (JobKind::GeneratePassword, Some(GenerateSpec { length, mode }), key)
        }
        _ => return Err(ApiError::invalid_request("send exactly one of password and generate")),
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
