//! Health and the connected-agents view. Views follow the caller's scopes: `/v1/agents` shows
//! only agents of domains the client's scopes cover (and of each, only those domains);
//! `/readyz` names domains only to a valid token, and only those its scopes cover.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts as _, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiState;
use super::auth::Authenticated;
use super::error::{EdgeErrors, TokenErrors};
use super::submit::covers;
use crate::link::registry::ConnectedAgent;

/// The process answers.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Alive {
    /// Always `ok`.
    #[schema(example = "ok")]
    status: &'static str,
}

/// Whether the relay can take jobs.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Readiness {
    /// `ready` or `not_ready`.
    #[schema(example = "ready")]
    status: &'static str,
    /// `ok` or `failing`.
    #[schema(example = "ok")]
    store: &'static str,
    /// With a valid API token only: the served domains its scopes cover.
    #[serde(skip_serializing_if = "Option::is_none")]
    domains: Option<BTreeMap<String, DomainReadiness>>,
}

/// One served domain.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct DomainReadiness {
    /// Whether an agent serving the domain is connected.
    agent_connected: bool,
}

/// Liveness
///
/// The process answers. No token.
#[utoipa::path(get, path = "/healthz", operation_id = "alive", tag = "health", responses((status = 200, description = "alive", body = Alive), EdgeErrors))]
pub(super) async fn alive() -> Json<Alive> {
    Json(Alive { status: "ok" })
}

/// Readiness
///
/// The job store answers. No token; with an API token, also whether an agent is connected for
/// each domain the token's scopes cover.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "ready",
    tag = "health",
    responses(
        (status = 200, description = "the job store answers", body = Readiness),
        (status = 503, description = "the job store is failing", body = Readiness),
        EdgeErrors,
    ),
)]
pub(super) async fn ready(State(state): State<Arc<ApiState>>, mut parts: Parts) -> (StatusCode, Json<Readiness>) {
    // A missing or unknown token is no error here: the probe just names no domain.
    let client = Authenticated::from_request_parts(&mut parts, &state).await.ok();
    let domains = client.map(|Authenticated(client)| {
        state
            .domains
            .iter()
            .filter(|d| covers(&client, d))
            .map(|d| (d.to_string(), DomainReadiness { agent_connected: state.registry.serves(d) }))
            .collect()
    });
    match state.store.check().await {
        Ok(()) => (StatusCode::OK, Json(Readiness { status: "ready", store: "ok", domains })),
        Err(error) => {
            tracing::error!(%error, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, Json(Readiness { status: "not_ready", store: "failing", domains }))
        }
    }
}

/// List connected agents
///
/// The open agent streams of the domains the client's scopes cover, each with only those
/// domains, ordered by agent name (an agent that reconnects briefly has two).
#[utoipa::path(
    get,
    path = "/v1/agents",
    operation_id = "list_agents",
    tag = "agents",
    security(("bearer" = [])),
    responses((status = 200, description = "the connected agent streams", body = Vec<ConnectedAgent>), TokenErrors),
)]
pub(super) async fn agents(
    State(state): State<Arc<ApiState>>,
    Authenticated(client): Authenticated,
) -> Json<Vec<ConnectedAgent>> {
    let visible = state
        .registry
        .snapshot()
        .into_iter()
        .filter_map(|mut agent| {
            agent.domains.retain(|d| covers(&client, d));
            (!agent.domains.is_empty()).then_some(agent)
        })
        .collect();
    Json(visible)
}
