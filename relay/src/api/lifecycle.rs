//! `POST /v1/lifecycle/callouts`: the Lifecycle Workflows custom task extension, forwarded by a
//! Logic App; and `GET /v1/lifecycle/requests/{id}` for operators.
//!
//! A callout is authenticated (Entra token or HMAC signature, see
//! [`crate::lifecycle::authentication`]), parsed, stored once per `taskProcessingResult.id` and
//! answered 202 at once; the work happens in the background. The same callout again is answered
//! 202 with `Idempotent-Replayed: true` and starts nothing; the same id with another body is 409.

use super::edge::ClientIp;
use crate::audit::{Event, Kind};
use axum::Extension;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use sha2::{Digest, Sha256};

use super::auth::{Authenticated, bearer_token};
use super::body::read_body;
use super::error::{ApiError, CalloutErrors, LifecycleShowErrors};
use super::{ApiState, PathId};
use crate::lifecycle::Lifecycle;
use crate::lifecycle::authentication::CalloutAuthError;
use crate::lifecycle::callout::Callout;
use crate::store::Operation;
use crate::store::lifecycle::{CalloutInsertion, NewRequest};

fn enabled(state: &ApiState) -> Result<&Arc<Lifecycle>, ApiError> {
    state
        .lifecycle
        .as_ref()
        .ok_or_else(|| ApiError::not_found("the new-hire flow is not enabled on this relay; configure [lifecycle]"))
}

/// What a callout is answered with.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct CalloutAccepted {
    /// The callout's `taskProcessingResult.id`, which names the request from now on.
    #[schema(value_type = String, format = Uuid)]
    task_processing_result_id: uuid::Uuid,
    /// Always `accepted`.
    status: &'static str,
}

/// Receive a Lifecycle Workflows callout
///
/// The custom task extension's callout body, forwarded unchanged by the Logic App, authenticated
/// with an Entra token of the Logic App's managed identity (`Authorization: Bearer`) or an HMAC
/// signature (`Pwrelay-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`).
/// Stored once per `taskProcessingResult.id`; the work happens in the background and ends with a
/// Graph `resume`.
#[utoipa::path(
    post,
    path = "/v1/lifecycle/callouts",
    operation_id = "receive_lifecycle_callout",
    tag = "new hires",
    request_body(content = Object, content_type = "application/json",
        description = "`{\"data\": {\"subject\", \"task\", \"taskProcessingResult\", \"workflow\", ...}, \"source\", \"type\"}`"),
    security(("entra" = []), ("signature" = [])),
    responses(
        (status = 202, description = "stored; the work goes on in the background", body = CalloutAccepted,
            headers(("Idempotent-Replayed" = String, description = "`true` when this callout was received before"))),
        CalloutErrors,
    ),
)]
pub(super) async fn callout(
    State(state): State<Arc<ApiState>>,
    Extension(ClientIp(address)): Extension<ClientIp>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, HeaderMap, Json<CalloutAccepted>), ApiError> {
    let lifecycle = enabled(&state)?;
    let bytes = read_body(body, state.max_body_bytes).await?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let tenant = lifecycle
        .authenticator
        .authenticate(header("authorization").and_then(bearer_token), header(crate::signature::HEADER), &bytes)
        .await
        .map_err(|e| match e {
            CalloutAuthError::KeysUnavailable(_) => {
                tracing::error!(error = %e, "callout refused: the tenant's keys are unavailable");
                state.audit.record(callout_refused(address, "keys_unavailable"));
                ApiError::unavailable_because(e.to_string())
            }
            other => {
                tracing::warn!(error = %other, "callout refused");
                state
                    .audit
                    .record(callout_refused(address, "unauthenticated").detail("message", other.public_message()));
                ApiError::unauthenticated(other.public_message())
            }
        })?;
    let is_json = header("content-type")
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::unsupported_media_type());
    }
    let callout = Callout::parse(&bytes).map_err(ApiError::invalid_request)?;
    let id = callout.task_processing_result_id;
    let request = NewRequest { callout, tenant_id: tenant.clone(), body_sha256: Sha256::digest(&bytes).into() };
    let inserted = lifecycle.store.insert_callout(request).await.map_err(|e| ApiError::unavailable(&e))?;
    let mut response_headers = HeaderMap::new();
    match inserted {
        CalloutInsertion::Created => {
            tracing::info!(task_processing_result = %id, tenant, "Lifecycle Workflows callout accepted");
            state.audit.record(
                Event::new(Kind::CalloutAccepted)
                    .address(address)
                    .detail("task_processing_result", id.to_string())
                    .untrusted("tenant", &tenant),
            );
            lifecycle.wake();
        }
        CalloutInsertion::Repeated => {
            tracing::info!(task_processing_result = %id, "repeated callout; nothing new happens");
            response_headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        CalloutInsertion::Conflict => {
            return Err(ApiError::conflict(format!(
                "taskProcessingResult {id} was already received with a different body; a task processing result is \
                 handled once"
            )));
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        response_headers,
        Json(CalloutAccepted { task_processing_result_id: id, status: "accepted" }),
    ))
}

/// A new-hire request
///
/// Where a new-hire request is: its stage, job, delivery and resume state. Needs the `lifecycle`
/// operation scope.
#[utoipa::path(
    get,
    path = "/v1/lifecycle/requests/{id}",
    operation_id = "show_lifecycle_request",
    tag = "new hires",
    params(("id" = String, Path, description = "the callout's taskProcessingResult.id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the request", body = crate::store::lifecycle::LifecycleRequest),
        LifecycleShowErrors,
    ),
)]
pub(super) async fn show(
    State(state): State<Arc<ApiState>>,
    Authenticated(client): Authenticated,
    PathId(id): PathId,
) -> Result<Json<crate::store::lifecycle::LifecycleRequest>, ApiError> {
    let lifecycle = enabled(&state)?;
    if !client.scopes.names(Operation::Lifecycle) {
        return Err(ApiError::forbidden(
            "this API client lacks the scope operation:lifecycle (it must be granted explicitly: \
             `pwrelay clients add NAME --operation lifecycle`)",
        )
        .missing_scope("operation:lifecycle"));
    }
    let id = uuid::Uuid::parse_str(&id).map_err(|_| {
        ApiError::invalid_request("the id must be the callout's taskProcessingResult.id (a GUID)").field("id")
    })?;
    lifecycle
        .store
        .request(id)
        .await
        .map_err(|e| ApiError::unavailable(&e))?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no new-hire request {id}")))
}

/// The audit event of a callout refused before it was stored.
fn callout_refused(address: std::net::IpAddr, reason: &'static str) -> Event {
    Event::new(Kind::CalloutRefused).address(address).detail("reason", reason)
}
