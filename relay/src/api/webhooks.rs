//! `GET /v1/webhooks/deliveries`: the calling client's webhook (URL and events, never the secret)
//! and its delivery log, newest first, with every attempt.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;

use super::ApiState;
use super::auth::Authenticated;
use super::error::{ApiError, ListErrors};
use crate::webhooks::{DeliveryFilter, DeliveryState};
use utoipa::IntoParams;

/// Largest page of the log.
const MAX_PAGE: usize = 500;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct DeliveriesQuery {
    /// Only deliveries in this state.
    #[param(value_type = Option<DeliveryStateParam>)]
    state: Option<String>,
    /// At most this many (1-500, default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
}

/// A delivery's state, as the `state` filter takes it.
#[derive(utoipa::ToSchema, serde::Deserialize)]
#[schema(as = DeliveryState)]
#[allow(dead_code)] // Only its schema is used: the handler parses the text with `DeliveryState::parse`.
#[serde(rename_all = "snake_case")]
pub(super) enum DeliveryStateParam {
    /// Not delivered yet; retried with back-off.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Given up after `webhooks.max_attempts` or `max_age_hours`.
    Failed,
}

/// The client's webhook and delivery log
///
/// The calling client's webhook (URL and events, never the secret) and its deliveries, newest
/// first, each with every attempt (time, HTTP status or error, duration).
#[utoipa::path(
    get,
    path = "/v1/webhooks/deliveries",
    operation_id = "list_webhook_deliveries",
    tag = "webhooks",
    params(DeliveriesQuery),
    security(("bearer" = [])),
    responses((status = 200, description = "`{webhook, deliveries}`", body = Object), ListErrors),
)]
pub(super) async fn deliveries(
    State(state): State<Arc<ApiState>>,
    Authenticated(client): Authenticated,
    query: Result<Query<DeliveriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::query(&e, "state, limit"))?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid_request(format!("limit must be 1-{MAX_PAGE}")).field("limit"));
    }
    let delivery_state =
        match query.state.as_deref() {
            None => None,
            Some(text) => Some(DeliveryState::parse(text).ok_or_else(|| {
                ApiError::invalid_request("state must be pending, delivered or failed").field("state")
            })?),
        };
    let webhook = state.store.webhook(&client.name).await.map_err(|e| ApiError::unavailable(&e))?;
    let log = state
        .store
        .deliveries(&client.name, DeliveryFilter { state: delivery_state, limit })
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    Ok(Json(crate::webhooks::log_json(webhook.as_ref(), &log)))
}
