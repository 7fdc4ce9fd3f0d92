//! Health and the connected-agents view.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiState;
use super::auth::Authenticated;
use super::error::TokenErrors;
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
    /// Every domain the relay serves.
    domains: BTreeMap<String, DomainReadiness>,
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
#[utoipa::path(get, path = "/healthz", operation_id = "alive", tag = "health", responses((status = 200, description = "alive", body = Alive)))]
pub(super) async fn alive() -> Json<Alive> {
    Json(Alive { status: "ok" })
}

/// Readiness
///
/// The job store can be written; lists whether an agent is connected for each domain. No token.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "ready",
    tag = "health",
    responses(
        (status = 200, description = "the job store answers", body = Readiness),
        (status = 503, description = "the job store is failing", body = Readiness),
    ),
)]
pub(super) async fn ready(State(state): State<Arc<ApiState>>) -> (StatusCode, Json<Readiness>) {
    let domains = state
        .domains
        .iter()
        .map(|d| (d.to_string(), DomainReadiness { agent_connected: state.registry.serves(d) }))
        .collect();
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
/// Every open agent stream, ordered by agent name (an agent that reconnects briefly has two).
#[utoipa::path(
    get,
    path = "/v1/agents",
    operation_id = "list_agents",
    tag = "agents",
    security(("bearer" = [])),
    responses((status = 200, description = "the connected agent streams", body = Vec<ConnectedAgent>), TokenErrors),
)]
pub(super) async fn agents(State(state): State<Arc<ApiState>>, _client: Authenticated) -> Json<Vec<ConnectedAgent>> {
    Json(state.registry.snapshot())
}
