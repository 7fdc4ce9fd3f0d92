//! Health and the fleet view. Both come from the store, so every relay replica answers alike.
//! Views follow the caller's scopes: `/v1/agents` shows only agents of domains the client's
//! scopes cover (and of each, only those domains and their DC health; its job counts only when
//! the scopes cover all its domains); `/readyz` names domains only to a valid token, and only those
//! its scopes cover.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts as _, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiState;
use super::auth::Authenticated;
use super::error::{ApiError, EdgeErrors, TokenErrors};
use super::submit::covers;
use crate::jobs::Timestamp;
use crate::store::agents::{AgentCertificate, AgentStream, DirectoryHealth};
use crate::store::{AgentState, ApiClient, KnownAgent};

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
    /// Whether an agent serving the domain is connected (to any relay replica).
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
    let domains = match client {
        Some(Authenticated(client)) => {
            // A store that cannot be read shows no domain served; the status below says why.
            let served = state.registry.connected_domains().await.unwrap_or_default();
            Some(
                state
                    .domains
                    .iter()
                    .filter(|d| covers(&client, d))
                    .map(|d| (d.to_string(), DomainReadiness { agent_connected: served.contains(d) }))
                    .collect(),
            )
        }
        None => None,
    };
    match state.store.check().await {
        Ok(()) => (StatusCode::OK, Json(Readiness { status: "ready", store: "ok", domains })),
        Err(error) => {
            tracing::error!(%error, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, Json(Readiness { status: "not_ready", store: "failing", domains }))
        }
    }
}

/// The agents a client may see, and the domains it may see that no agent serves.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Fleet {
    /// Known agents serving a domain the client's scopes cover, ordered by name.
    agents: Vec<AgentView>,
    /// Domains of this relay the client's scopes cover that no connected agent serves: their jobs
    /// wait until one connects.
    #[schema(example = json!(["branch.example.com"]))]
    domains_without_agent: Vec<String>,
}

/// One known agent, as a client may see it.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AgentView {
    /// The agent name from its certificate.
    pub(super) name: String,
    /// `connected` (stream open, heard from within `agents.down_after_seconds`), `down`, or
    /// `stale` (not heard from for `agents.stale_after_days`).
    pub(super) state: AgentState,
    /// The domains it serves that the client's scopes cover.
    pub(super) domains: Vec<String>,
    /// The agent's version, from its hello.
    pub(super) version: String,
    /// Its client certificate: serial and expiry.
    pub(super) certificate: AgentCertificate,
    /// Its first hello.
    pub(super) first_seen: Timestamp,
    /// When it was last heard from (hello or heartbeat).
    pub(super) last_seen: Timestamp,
    /// The stream it was last recorded through: relay replica, stream id, peer address, opening
    /// time (open while `state` is `connected`).
    pub(super) stream: AgentStream,
    /// Each covered domain's DC health from its last heartbeat.
    pub(super) directories: Vec<DirectoryHealth>,
    /// Its job counts; absent when they would include domains the client's scopes do not cover.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) jobs: Option<AgentJobs>,
}

/// An agent's jobs.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AgentJobs {
    /// Leased to it and not yet reported, as of its last heartbeat.
    in_flight: u32,
    /// Finished successfully (all time).
    done: u64,
    /// Finished as failed (all time).
    failed: u64,
}

impl AgentView {
    /// The agent as `client` may see it, or `None` when it serves none of the client's domains
    /// (the status page shows the same).
    pub(super) fn visible_to(agent: KnownAgent, state: AgentState, client: &ApiClient) -> Option<Self> {
        let domains: Vec<String> = agent.domains.iter().filter(|d| covers(client, d)).map(|d| d.to_string()).collect();
        if domains.is_empty() {
            return None;
        }
        let jobs = (domains.len() == agent.domains.len()).then_some(AgentJobs {
            in_flight: agent.jobs_in_flight,
            done: agent.jobs_done,
            failed: agent.jobs_failed,
        });
        let directories = agent.directories.into_iter().filter(|h| covers(client, &h.domain)).collect();
        Some(Self {
            name: agent.name,
            state,
            domains,
            version: agent.version,
            certificate: agent.certificate,
            first_seen: agent.first_seen,
            last_seen: agent.last_seen,
            stream: agent.stream,
            directories,
            jobs,
        })
    }
}

/// List known agents
///
/// The agents of the domains the client's scopes cover, from the store (every relay replica shows
/// the same), ordered by name: each with its state, those domains and their DC health, its
/// certificate's expiry and its job counts; and the covered domains no connected agent serves.
#[utoipa::path(
    get,
    path = "/v1/agents",
    operation_id = "list_agents",
    tag = "agents",
    security(("bearer" = [])),
    responses((status = 200, description = "the known agents", body = Fleet), TokenErrors),
)]
pub(super) async fn agents(
    State(state): State<Arc<ApiState>>,
    Authenticated(client): Authenticated,
) -> Result<Json<Fleet>, ApiError> {
    let known = state.registry.agents().await.map_err(|e| ApiError::unavailable(&e))?;
    let (now, thresholds) = (Timestamp::now(), state.registry.thresholds());
    let mut served = BTreeSet::new();
    let agents = known
        .into_iter()
        .filter_map(|agent| {
            let agent_state = agent.state(&thresholds, now);
            if agent_state == AgentState::Connected {
                served.extend(agent.domains.iter().cloned());
            }
            AgentView::visible_to(agent, agent_state, &client)
        })
        .collect();
    let domains_without_agent =
        state.domains.iter().filter(|d| covers(&client, d) && !served.contains(*d)).map(|d| d.to_string()).collect();
    Ok(Json(Fleet { agents, domains_without_agent }))
}
