//! Health and the connected-agents view.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::ApiState;
use super::auth::Authenticated;
use crate::link::registry::ConnectedAgent;

/// `GET /healthz`: the process answers.
pub(super) async fn alive() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: the job store can be written; lists connected agents per domain.
pub(super) async fn ready(State(state): State<Arc<ApiState>>) -> (StatusCode, Json<Value>) {
    let domains: serde_json::Map<String, Value> =
        state.domains.iter().map(|d| (d.to_string(), json!({ "agent_connected": state.registry.serves(d) }))).collect();
    match state.store.check().await {
        Ok(()) => (StatusCode::OK, Json(json!({ "status": "ready", "store": "ok", "domains": domains }))),
        Err(error) => {
            tracing::error!(%error, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "not_ready", "store": "failing", "domains": domains })),
            )
        }
    }
}

/// `GET /v1/agents`: connected agent streams.
pub(super) async fn agents(State(state): State<Arc<ApiState>>, _client: Authenticated) -> Json<Vec<ConnectedAgent>> {
    Json(state.registry.snapshot())
}
