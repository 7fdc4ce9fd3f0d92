//! `GET /v1/audit`: the audit trail, for clients whose scopes name `audit`.
//!
//! Every replica's events, oldest first, paged by a cursor. A client scoped to domains sees only
//! the events of those domains: events that concern no domain (API clients, logins, refused
//! tokens and handshakes) are for unscoped auditors only, since they tell of other tenants'
//! clients and addresses.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::auth::Authenticated;
use super::error::{ApiError, AuditErrors};
use crate::audit::{AuditRecord, Kind};
use crate::jobs::Timestamp;
use crate::store::{AuditFilter, Operation};

/// Largest page.
const MAX_PAGE: usize = 500;

/// The filters and paging of the audit trail.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditQuery {
    /// RFC 3339 time: only events at or after it.
    #[param(format = DateTime)]
    since: Option<String>,
    /// RFC 3339 time: only events before it.
    #[param(format = DateTime)]
    until: Option<String>,
    /// Only this event: its id (`5001`) or name (`job.created`); one no event has selects nothing.
    #[param(max_length = 64, pattern = r"^([0-9]{1,5}|[a-z][a-z0-9_]*(\.[a-z0-9_]+)*)$")]
    event: Option<String>,
    /// Only events concerning this API client.
    #[param(max_length = 64)]
    client: Option<String>,
    /// Only events concerning this agent.
    #[param(max_length = 253)]
    agent: Option<String>,
    /// Only events concerning this job.
    #[param(value_type = Option<crate::jobs::JobId>)]
    job_id: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    cursor: Option<String>,
    /// Events per page, 1-500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
}

/// A page of the audit trail.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AuditPage {
    /// The events, oldest first.
    events: Vec<AuditRecord>,
    /// Pass it back as `cursor` for the next page; set when there may be more.
    next_cursor: Option<String>,
}

/// An RFC 3339 time.
pub(crate) fn parse_time(text: &str) -> Option<Timestamp> {
    let time = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some(Timestamp(i64::try_from(time.unix_timestamp_nanos() / 1_000_000).ok()?))
}

/// What an `event` filter selects: an id (1-5 digits), or a name (`job.created`, `password_set`:
/// lower-case words joined by dots). `None` when it is neither.
pub(crate) fn event_filter(text: &str) -> Option<EventFilter> {
    if !(1..=64).contains(&text.len()) {
        return None;
    }
    if text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok().map(EventFilter::Id);
    }
    let word = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    let mut words = text.split('.');
    let first_is_a_letter = text.as_bytes().first().is_some_and(u8::is_ascii_lowercase);
    (first_is_a_letter && words.all(word)).then(|| match Kind::from_name(text) {
        Some(kind) => EventFilter::Id(u32::from(kind.id())),
        None => EventFilter::Name(text.to_owned()),
    })
}

/// An `event` filter, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EventFilter {
    /// An event id.
    Id(u32),
    /// An event name the relay does not define (it selects nothing, unless an older or newer
    /// relay stored it).
    Name(String),
}

impl EventFilter {
    /// Into the store's filter.
    pub(crate) fn apply(self, filter: &mut AuditFilter) {
        match self {
            Self::Id(id) => filter.event_id = Some(id),
            Self::Name(name) => filter.event = Some(name),
        }
    }
}

/// List audit events
///
/// The relay's audit trail (every replica's events), oldest first, `limit` per page;
/// `next_cursor` is set when there may be more. Needs the `audit` scope, which must be granted
/// explicitly (`pwrelay clients add NAME --operation audit`). A client scoped to domains sees only
/// events of those domains. No event holds a password, token or link key.
#[utoipa::path(
    get,
    path = "/v1/audit",
    operation_id = "list_audit_events",
    tag = "audit",
    params(AuditQuery),
    security(("bearer" = [])),
    responses((status = 200, description = "a page of audit events", body = AuditPage), AuditErrors),
)]
pub(super) async fn list(
    State(state): State<Arc<ApiState>>,
    Authenticated(client): Authenticated,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    if !client.scopes.names(Operation::Audit) {
        return Err(ApiError::forbidden(
            "this API client lacks the scope operation:audit (it must be granted explicitly: \
             `pwrelay clients add NAME --operation audit`)",
        )
        .missing_scope("operation:audit"));
    }
    let Query(query) =
        query.map_err(|e| ApiError::query(&e, "since, until, event, client, agent, job_id, cursor, limit"))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid_request(format!("limit must be 1-{MAX_PAGE}")).field("limit"));
    }
    for (field, value, max) in [("client", &query.client, 64), ("agent", &query.agent, 253)] {
        if value.as_ref().is_some_and(|v| v.chars().count() > max) {
            return Err(ApiError::invalid_request(format!("{field} is at most {max} characters")).field(field));
        }
    }
    let time = |field: &'static str, text: Option<&str>| {
        text.map(|t| {
            parse_time(t).ok_or_else(|| {
                ApiError::invalid_request(format!("{field} must be an RFC 3339 time like 2026-11-22T08:00:00Z"))
                    .field(field)
            })
        })
        .transpose()
    };
    let filter = AuditFilter {
        since: time("since", query.since.as_deref())?,
        until: time("until", query.until.as_deref())?,
        event_id: None,
        event: None,
        client: query.client,
        agent: query.agent,
        job_id: query
            .job_id
            .map(|id| {
                id.parse::<crate::jobs::JobId>()
                    .map(|id| id.to_string())
                    .map_err(|_| ApiError::invalid_request("job_id must be a job's UUID").field("job_id"))
            })
            .transpose()?,
        domains: client.scopes.domains.as_ref().map(|d| d.iter().map(ToString::to_string).collect()),
        after: query
            .cursor
            .map(|c| {
                c.parse::<i64>()
                    .ok()
                    .filter(|c| *c >= 0)
                    .ok_or_else(|| ApiError::invalid_request("cursor must be a next_cursor value").field("cursor"))
            })
            .transpose()?,
        limit,
    };
    let mut filter = filter;
    if let Some(text) = query.event.as_deref() {
        event_filter(text)
            .ok_or_else(|| {
                ApiError::invalid_request("event must be an event id or name (docs/audit-events.md)").field("event")
            })?
            .apply(&mut filter);
    }
    let events = state.store.audit_events(&filter).await.map_err(|e| ApiError::unavailable(&e))?;
    let next_cursor =
        (events.len() == limit).then(|| events.last().and_then(|e| e.seq).map(|s| s.to_string())).flatten();
    Ok(Json(AuditPage { events, next_cursor }))
}
