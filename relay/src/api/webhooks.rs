//! `GET /v1/webhooks/deliveries`: the calling client's webhook (URL and events, never the secret)
//! and its delivery log, newest first, with every attempt.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;

use super::ApiState;
use super::auth::Authenticated;
use super::error::ApiError;
use crate::webhooks::{DeliveryFilter, DeliveryState};

/// Largest page of the log.
const MAX_PAGE: usize = 500;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeliveriesQuery {
    state: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/webhooks/deliveries[?state=&limit=]`: `limit` (1-500, default 50) deliveries.
pub(super) async fn deliveries(
    State(state): State<Arc<ApiState>>,
    Authenticated(client): Authenticated,
    query: Result<Query<DeliveriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid_request(format!("{e}; parameters: state, limit")))?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid_request(format!("limit must be 1-{MAX_PAGE}")));
    }
    let delivery_state = match query.state.as_deref() {
        None => None,
        Some(text) => Some(
            DeliveryState::parse(text)
                .ok_or_else(|| ApiError::invalid_request("state must be pending, delivered or failed"))?,
        ),
    };
    let webhook = state.store.webhook(&client.name).await.map_err(|e| ApiError::unavailable(&e))?;
    let log = state
        .store
        .deliveries(&client.name, DeliveryFilter { state: delivery_state, limit })
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    Ok(Json(crate::webhooks::log_json(webhook.as_ref(), &log)))
}
