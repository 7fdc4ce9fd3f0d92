//! The HTTPS API: its routes and their OpenAPI document, the shared state, and the JSON body reader
//! every handler uses.
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
//! | `GET /v1/audit[?since=&until=&event=&client=&agent=&job_id=&cursor=&limit=]` | token (`audit` scope) | the audit trail, oldest first, paged; a domain-scoped client sees its domains' events only |
//! | `GET /v1/agents` | token | known agents of the domains the client's scopes cover (state, DC health, certificate expiry, job counts), and those domains no connected agent serves |
//! | `GET /v1/openapi.json` | none | this API's OpenAPI 3 document (it holds no secret) |
//! | `POST /v1/lifecycle/callouts` | Entra token or HMAC signature | a Lifecycle Workflows callout → 202 |
//! | `GET /v1/lifecycle/requests/{id}` | token (`lifecycle` scope) | a new-hire request's stage, delivery and resume state |
//! | `GET /r/{id}` | none (rate-limited) | the one-time password page; consumes nothing |
//! | `POST /r/{id}/claim` | proof of the link key | the encrypted password, once |
//! | `GET /r/assets/reveal.js` | none | the page's script |
//! | `GET /r/assets/reveal.css` | none | the page's style |
//! | `GET /status` | session cookie (`status` scope) | the operators' status page (HTML), or a 303 to the login |
//! | `GET /status/login` | none | the status page's login form |
//! | `POST /status/login` | form token (`status` scope; rate-limited) | a session cookie and a 303 to `/status` |
//! | `POST /status/logout` | none | clears the session cookie |
//! | `GET /status/assets/status.css` | none | the status page's style |
//! | `GET /healthz` | none | the process is alive |
//! | `GET /readyz` | none (a token adds the domains its scopes cover) | the job store answers |
//!
//! Every error is `{"error": {"code", "message", "details"}}` ([`error`]); an unknown route gets
//! `not_found` and a known route with another method `method_not_allowed`; axum's own rejections
//! are typed too ([`edge`]), and the link pages under `/r/` answer errors as HTML (the status
//! pages ([`status`]) answer their own refusals as HTML; the edge's limits answer them in JSON).
//!
//! The server ([`server`]) and the middleware every request passes ([`edge`]) enforce
//! `[api.limits]` ([`limits`]): connection, header, body, request and idle timeouts, connection
//! and HTTP/2 stream caps, and per-address ([`client_address`]) and per-client rate limits
//! ([`rate_limit`]).
//!
//! # Adding a route
//!
//! A route is one line in [`routes`]: `.routes(routes!(module::handler))`. `routes!` takes the
//! method and path from the handler's `#[utoipa::path(...)]` annotation, for the router and the
//! document alike, and does not compile without it, so no route is served undocumented. Handlers
//! of the same path go in one `routes!` (`routes!(jobs::show, jobs::cancel)`). The annotation has:
//!
//! - the method and `path` (axum syntax, `{id}`), a `tag`, and the handler's doc comment (first
//!   line: the summary; the rest: the description);
//! - `security(("bearer" = []))` when the route takes a token;
//! - `request_body = ...` and `params(...)`: a job-creating `POST` has `params(IdempotencyKey)`;
//!   query structs derive `IntoParams`;
//! - `responses(...)`: the success response with its body type, and an error set from [`error`]
//!   (`SubmitErrors`, `ShowErrors`, ... or a new one there).
//!
//! Request and response types derive `ToSchema` (enums from `text_enum!` have theirs). Then add
//! the route's row to the table above: `tests/openapi.rs` checks that this table, the served
//! document and the routes the relay answers agree. Do not call `OpenApiRouter::route`, which
//! bypasses the document (clippy refuses it: `relay/clippy.toml`).

pub mod audit;
pub mod auth;
mod body;
mod checks;
pub mod client_address;
pub mod edge;
pub mod error;
mod health;
mod jobs;
mod lifecycle;
pub mod limits;
mod page_headers;
pub mod rate_limit;
mod reconciliations;
mod reveal;
mod rotations;
pub mod server;
pub mod status;
mod submit;
mod webhooks;

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::{Json, Router};
use pwrelay_shared::domain::DomainName;
use serde::de::DeserializeOwned;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::jobs::events::JobEvents;
use crate::link::registry::AgentRegistry;
use crate::seal::Sealer;
use crate::store::Store;
use error::{ApiError, ApiErrorCode, ErrorBody};

/// What the handlers share.
#[derive(Debug)]
pub struct ApiState {
    /// The job store.
    pub store: Arc<dyn Store>,
    /// Seals passwords before they are stored.
    pub sealer: Arc<Sealer>,
    /// Job signals (long-poll wake-ups, dispatch wake-ups).
    pub events: Arc<JobEvents>,
    /// The known agents (from the store, so the same on every replica).
    pub registry: Arc<AgentRegistry>,
    /// Domains this relay serves.
    pub domains: BTreeSet<DomainName>,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// The new-hire flow, when `[lifecycle]` is configured.
    pub lifecycle: Option<Arc<crate::lifecycle::Lifecycle>>,
    /// `[api.limits]` and the rate limiters.
    pub edge: edge::Edge,
    /// Accepted and cancelled jobs are counted here.
    pub metrics: Arc<crate::metrics::RelayMetrics>,
    /// Status page login attempts per client address ([`status::login_limiter`]).
    pub status_logins: rate_limit::RateLimiter<std::net::IpAddr>,
    /// The audit trail.
    pub audit: Arc<crate::audit::Audit>,
}

/// Every route, each with its OpenAPI path item (see "Adding a route" above).
fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(rotations::create))
        .routes(routes!(reconciliations::create))
        .routes(routes!(checks::verify))
        .routes(routes!(checks::unlock))
        .routes(routes!(jobs::list))
        .routes(routes!(jobs::show, jobs::cancel))
        .routes(routes!(jobs::secret))
        .routes(routes!(webhooks::deliveries))
        .routes(routes!(audit::list))
        .routes(routes!(lifecycle::callout))
        .routes(routes!(lifecycle::show))
        .routes(routes!(reveal::show))
        .routes(routes!(reveal::claim))
        .routes(routes!(reveal::script))
        .routes(routes!(reveal::style))
        .routes(routes!(status::page))
        .routes(routes!(status::login_form, status::login))
        .routes(routes!(status::logout))
        .routes(routes!(status::style))
        .routes(routes!(health::agents))
        .routes(routes!(openapi_document))
        .routes(routes!(health::alive))
        .routes(routes!(health::ready))
}

/// The API's routes, with JSON errors for unknown routes and methods, behind the edge's
/// limits and error typing ([`edge::guard`]).
pub fn router(state: Arc<ApiState>) -> Router {
    let (router, _) = routes().split_for_parts();
    router
        .fallback(|| async { ApiError::not_found("no such route; see /v1/openapi.json") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), edge::guard))
        .with_state(state)
}

/// The API's OpenAPI 3 document, generated from the routes' annotations and the types they name.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut document = routes().into_openapi();
    // After the routes: they bring the schemas it tightens.
    ExactlyOne.modify(&mut document);
    document
}

/// What the document says beyond the routes: the title, the token scheme, the tags, and the
/// schemas no route names directly.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "pwrelay relay API",
        description = "Queue password jobs (rotations, verifications, unlocks, reconciliations) for the on-prem \
                       agents and follow them. Routes marked with the `bearer` scheme need \
                       `Authorization: Bearer <token>` (from `pwrelay clients add`). Every error is \
                       `{\"error\": {\"code\", \"message\", \"details\"}}` (`ErrorBody`); the codes are listed in \
                       `ApiErrorCode`. An unknown route answers `not_found`, a known route with another method \
                       `method_not_allowed`."
    ),
    modifiers(&BearerToken),
    components(schemas(ErrorBody, ApiErrorCode, crate::jobs::ErrorCode, webhooks::DeliveryStateParam)),
    tags(
        (name = "jobs", description = "Password jobs: create, follow, cancel, read a generated password"),
        (name = "agents", description = "The connected on-prem agents"),
        (name = "webhooks", description = "The client's webhook and its delivery log"),
        (name = "audit", description = "The relay's audit trail, for clients allowed `audit`"),
        (name = "new hires", description = "Lifecycle Workflows callouts, their requests, and the one-time link pages"),
        (name = "status", description = "The operators' status page (HTML), behind a login with an API token"),
        (name = "health", description = "Probes, no token"),
        (name = "meta", description = "This document, no token"),
    ),
)]
struct ApiDoc;

/// Adds the `bearer` security scheme that token routes name.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("An API token from `pwrelay clients add NAME` (`pwr_...`)"))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
        let entra = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT")
            .description(Some(
                "An Entra access token of the Logic App's managed identity for the relay's audience \
                 (`[[lifecycle.tenants]]` with `callout_auth = \"entra\"`)",
            ))
            .build();
        let signature =
            utoipa::openapi::security::ApiKey::Header(utoipa::openapi::security::ApiKeyValue::with_description(
                "Pwrelay-Signature",
                "`t=<unix seconds>,v1=<hex HMAC-SHA256(secret, \"<t>.<body>\")>` (`callout_auth = \"hmac\"`)",
            ));
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("entra", SecurityScheme::Http(entra));
        components.add_security_scheme("signature", SecurityScheme::ApiKey(signature));
    }
}

/// What utoipa's attributes cannot say: `TargetRequest` takes exactly one field (utoipa writes its
/// `max_properties` but drops `min_properties`), and a `RotationRequest` has exactly one of
/// `password` and `generate`, and `recipient_public_key` only with `generate` (a `oneOf`, which
/// utoipa has no attribute for on a struct, so it goes in as a raw schema keyword).
struct ExactlyOne;

impl Modify for ExactlyOne {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{RefOr, schema::Schema};
        let schemas = &mut openapi.components.get_or_insert_with(Default::default).schemas;
        if let Some(RefOr::T(Schema::Object(target))) = schemas.get_mut("TargetRequest") {
            target.min_properties = Some(1);
            target.max_properties = Some(1);
        }
        if let Some(RefOr::T(Schema::Object(rotation))) = schemas.get_mut("RotationRequest") {
            let one_of = serde_json::json!([
                { "required": ["password"], "properties": { "generate": false, "recipient_public_key": false } },
                { "required": ["generate"], "properties": { "password": false } },
            ]);
            rotation.extensions.get_or_insert_with(Default::default).insert("oneOf".to_owned(), one_of);
        }
    }
}

/// This API's OpenAPI document
///
/// The OpenAPI 3 document of every route, generated from the code. No token: it holds no secret.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    operation_id = "openapi",
    tag = "meta",
    responses((status = 200, description = "the OpenAPI 3 document", body = Object, content_type = "application/json"), error::EdgeErrors),
)]
async fn openapi_document() -> Json<&'static utoipa::openapi::OpenApi> {
    static DOCUMENT: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    Json(DOCUMENT.get_or_init(openapi))
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
    let bytes = body::read_body(body, limit).await?;
    let bytes = zeroize::Zeroizing::new(bytes.to_vec());
    let sha256 = sha2::Digest::finalize(sha2::Digest::chain_update(sha2::Sha256::default(), bytes.as_slice())).into();
    let value = serde_json::from_slice(&bytes).map_err(|e| json_error(&e))?;
    Ok(Parsed { value, sha256 })
}

/// A JSON body's parse error as a typed error that names the field when it can and echoes no
/// value ([`crate::untrusted::describe_json_error`]).
fn json_error(e: &serde_json::Error) -> ApiError {
    let described = crate::untrusted::describe_json_error(e);
    let error = ApiError::invalid_json(described.message).at(e.line(), e.column());
    match described.field {
        Some(field) => error.field(field),
        None => error,
    }
}

/// The `{id}` segment of a route's path, as text; a segment that is not valid UTF-8 or
/// percent-encoding is a typed 400 (`malformed_request`), never axum's plain-text rejection.
#[derive(Debug)]
pub(crate) struct PathId(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(id)| Self(id))
            .map_err(|_| ApiError::path("id"))
    }
}
