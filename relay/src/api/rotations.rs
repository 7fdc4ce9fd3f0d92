//! `POST /v1/rotations`: queue a password rotation for one account.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use pwrelay_shared::domain::DomainName;
use pwrelay_shared::secret::SecretString;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Authenticated;
use super::error::ApiError;
use super::{ApiState, json_body};
use crate::jobs::{JobId, JobKind, JobOptions, NewJob, Target};

/// AD's upper bound on a password (MS-SAMR).
const MAX_PASSWORD_CHARS: usize = 256;
/// Upper bound on a target identifier.
const MAX_TARGET_CHARS: usize = 1024;

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RotationRequest {
    domain: String,
    target: TargetRequest,
    password: SecretString,
    #[serde(default)]
    must_change: bool,
    #[serde(default)]
    unlock: bool,
}

/// Exactly one of the fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetRequest {
    upn: Option<String>,
    sam_account_name: Option<String>,
    object_guid: Option<String>,
    dn: Option<String>,
}

impl TargetRequest {
    fn validate(self) -> Result<Target, ApiError> {
        let mut given = Vec::new();
        if let Some(v) = self.upn {
            given.push(Target::Upn(v));
        }
        if let Some(v) = self.sam_account_name {
            given.push(Target::SamAccountName(v));
        }
        if let Some(v) = self.object_guid {
            let guid = uuid::Uuid::parse_str(v.trim().trim_matches(['{', '}'])).map_err(|_| {
                ApiError::invalid_request("target.object_guid must be a GUID like 0f3a9a3e-7e1c-4a49-9b8e-2f4b1c1d2e3f")
            })?;
            given.push(Target::ObjectGuid(guid));
        }
        if let Some(v) = self.dn {
            given.push(Target::Dn(v));
        }
        let target = match <[Target; 1]>::try_from(given) {
            Ok([target]) => target,
            Err(_) => {
                return Err(ApiError::invalid_request(
                    "target must have exactly one of upn, sam_account_name, object_guid, dn",
                ));
            }
        };
        let value = target.value();
        if value.trim().is_empty() {
            return Err(ApiError::invalid_request(format!("target.{} is empty", target.kind())));
        }
        if value.chars().count() > MAX_TARGET_CHARS || value.chars().any(char::is_control) {
            return Err(ApiError::invalid_request(format!(
                "target.{} must be at most {MAX_TARGET_CHARS} characters without control characters",
                target.kind()
            )));
        }
        if matches!(target, Target::Upn(_)) && !value.contains('@') {
            return Err(ApiError::invalid_request("target.upn must look like user@domain"));
        }
        Ok(target)
    }
}

/// `POST /v1/rotations` → `202 {"job_id": ...}` once the job is durably stored.
pub(super) async fn create(
    State(state): State<Arc<ApiState>>,
    Authenticated(client): Authenticated,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let request: RotationRequest = json_body(&headers, body, state.max_body_bytes).await?;
    let domain = DomainName::parse(&request.domain).map_err(|e| ApiError::invalid_request(format!("domain: {e}")))?;
    if !state.domains.contains(&domain) {
        let served: Vec<&str> = state.domains.iter().map(DomainName::as_str).collect();
        return Err(ApiError::invalid_request(format!(
            "unknown domain {domain}; this relay serves {} (add it to `domains` in relay.toml)",
            served.join(", ")
        )));
    }
    let target = request.target.validate()?;
    if request.password.is_empty() {
        return Err(ApiError::invalid_request("password is empty"));
    }
    if request.password.char_count() > MAX_PASSWORD_CHARS {
        return Err(ApiError::invalid_request(format!("password is longer than {MAX_PASSWORD_CHARS} characters")));
    }
    if request.password.expose_secret().chars().any(char::is_control) {
        return Err(ApiError::invalid_request("password contains control characters"));
    }
    let id = JobId::generate();
    let sealed = state.sealer.seal(&id.to_string(), &request.password).map_err(|e| ApiError::unavailable(&e))?;
    let job = NewJob {
        id,
        kind: JobKind::SetPassword,
        domain: domain.clone(),
        target,
        options: JobOptions { must_change: request.must_change, unlock: request.unlock },
        client: client.name.clone(),
        sealed_secret: Some(sealed),
    };
    state.store.insert_job(job).await.map_err(|e| ApiError::unavailable(&e))?;
    state.events.job_queued();
    tracing::info!(job_id = %id, client = %client.name, %domain, "rotation queued");
    let agent_connected = state.registry.serves(&domain);
    Ok((StatusCode::ACCEPTED, Json(json!({ "job_id": id, "state": "queued", "agent_connected": agent_connected }))))
}
