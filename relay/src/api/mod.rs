//! The HTTPS API: routes, shared state, and the JSON body reader every handler uses.
//!
//! | route | auth | what |
//! |---|---|---|
//! | `POST /v1/rotations` | token | set a password, or have one generated → 202 `{job_id}` |
//! | `POST /v1/reconciliations` | token | reset accounts (JSON list or CSV) to their derived values → 202 batch |
//! | `POST /v1/verifications` | token | does a password bind? (nothing is changed) → 202 |
//! | `POST /v1/unlocks` | token | clear a lockout → 202 |
//! | `GET /v1/jobs[?state=&domain=&since=&cursor=&limit=]` | token | the client's jobs, oldest first, paged |
//! | `GET /v1/jobs/{id}[?wait=S]` | token | a job's state, optionally waiting up to S seconds for it to finish |
//! | `DELETE /v1/jobs/{id}` | token | cancel a job no agent has taken yet |
//! | `GET /v1/jobs/{id}/secret` | token | a generated password, exactly once (then 410) |
//! | `GET /v1/webhooks/deliveries[?state=&limit=]` | token | the client's webhook and delivery log, newest first |
//! | `GET /v1/agents` | token | connected agents |
//! | `POST /v1/lifecycle/callouts` | Entra token or HMAC signature | a Lifecycle Workflows callout → 202 |
//! | `GET /v1/lifecycle/requests/{id}` | token (`lifecycle` scope) | a new-hire request's stage, delivery and resume state |
//! | `GET /r/{id}` | none (rate-limited) | the one-time password page; consumes nothing |
//! | `POST /r/{id}/claim` | proof of the link key | the encrypted password, once |
//! | `GET /r/assets/{reveal.js,reveal.css}` | none | the page's script and style |
//! | `GET /healthz` | none | the process is alive |
//! | `GET /readyz` | none | the job store answers |

pub mod auth;
mod checks;
pub mod error;
mod health;
mod jobs;
mod lifecycle;
pub mod rate_limit;
mod reconciliations;
mod reveal;
mod rotations;
mod submit;
mod webhooks;

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use pwrelay_shared::domain::DomainName;
use serde::de::DeserializeOwned;

use crate::jobs::events::JobEvents;
use crate::link::registry::AgentRegistry;
use crate::seal::Sealer;
use crate::store::Store;
use error::ApiError;

/// What the handlers share.
#[derive(Debug)]
pub struct ApiState {
    /// The job store.
    pub store: Arc<dyn Store>,
    /// Seals passwords before they are stored.
    pub sealer: Arc<Sealer>,
    /// Job signals (long-poll wake-ups, dispatch wake-ups).
    pub events: Arc<JobEvents>,
    /// Connected agents.
    pub registry: Arc<AgentRegistry>,
    /// Domains this relay serves.
    pub domains: BTreeSet<DomainName>,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// The new-hire flow, when `[lifecycle]` is configured.
    pub lifecycle: Option<Arc<crate::lifecycle::Lifecycle>>,
}

/// The API's routes.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/rotations", post(rotations::create))
        .route("/v1/reconciliations", post(reconciliations::create))
        .route("/v1/verifications", post(checks::verify))
        .route("/v1/unlocks", post(checks::unlock))
        .route("/v1/jobs", get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::show).delete(jobs::cancel))
        .route("/v1/jobs/{id}/secret", get(jobs::secret))
        .route("/v1/webhooks/deliveries", get(webhooks::deliveries))
        .route("/v1/agents", get(health::agents))
        .route("/v1/lifecycle/callouts", post(lifecycle::callout))
        .route("/v1/lifecycle/requests/{id}", get(lifecycle::show))
        .route("/r/assets/reveal.js", get(reveal::script))
        .route("/r/assets/reveal.css", get(reveal::style))
        .route("/r/{id}", get(reveal::show))
        .route("/r/{id}/claim", post(reveal::claim))
        .route("/healthz", get(health::alive))
        .route("/readyz", get(health::ready))
        .fallback(|| async { ApiError::not_found("no such route; see the API section of the README") })
        .with_state(state)
}

/// A parsed JSON body and the SHA-256 of its bytes (for idempotency keys).
struct Parsed<T> {
    value: T,
    sha256: [u8; 32],
}

/// Reads a JSON body of at most `limit` bytes into `T` (which should deny unknown fields).
async fn json_body<T: DeserializeOwned>(headers: &HeaderMap, body: Body, limit: usize) -> Result<Parsed<T>, ApiError> {
    let is_json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::unsupported_media_type());
    }
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| ApiError::too_large(limit))?;
    let bytes = zeroize::Zeroizing::new(bytes.to_vec());
    let sha256 = sha2::Digest::finalize(sha2::Digest::chain_update(sha2::Sha256::default(), bytes.as_slice())).into();
    let value = serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid_json(describe_json_error(&e)))?;
    Ok(Parsed { value, sha256 })
}

/// serde_json's message without any echo of the input: type errors quote the offending value,
/// which may be a password, so they are reduced to their position.
fn describe_json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data if e.to_string().starts_with("invalid type") || e.to_string().starts_with("invalid value") => {
            format!("a value has the wrong type at line {} column {}", e.line(), e.column())
        }
        _ => e.to_string(),
    }
}
