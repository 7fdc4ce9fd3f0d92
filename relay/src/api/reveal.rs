//! The one-time link page: `GET /r/{id}` (consumes nothing: link scanners and chat previews fetch
//! links), `POST /r/{id}/claim` (hands the ciphertext out once, then it is erased), and the page's
//! own script and style under `/r/assets/`.
//!
//! Every response forbids caching, framing, referrers and any source but this origin
//! ([`SECURITY_HEADERS`]). Views and claims are rate-limited per link and per client address and
//! audited (`lifecycle.link_viewed`, `lifecycle.link_claimed`, `lifecycle.link_claim_refused`), naming
//! the link by [`link_ref`], never by its id.

use crate::audit::{Event, Kind};
use std::net::IpAddr;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ApiState;
use super::edge::ClientIp;
use super::error::{ApiError, ApiErrorCode, ClaimErrors, EdgeErrors};
use crate::lifecycle::Lifecycle;
use crate::store::StoreError;
use crate::store::lifecycle::{LinkClaim, LinkState};

const PAGE: &str = include_str!("reveal/page.html");
const ACTIVE: &str = include_str!("reveal/active.html");
const SCRIPT: &str = include_str!("reveal/reveal.js");
const STYLE: &str = include_str!("reveal/reveal.css");

/// The content security policy of the link pages (the other headers: `page_headers.rs`).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn secure(response: Response) -> Response {
    super::page_headers::secure(response, CONTENT_SECURITY_POLICY)
}

fn lifecycle(state: &ApiState) -> Option<&Arc<Lifecycle>> {
    state.lifecycle.as_ref()
}

/// Link ids are 22 base64url characters; anything else is not looked up.
fn valid_link_id(id: &str) -> bool {
    id.len() == 22 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The link page's window for `lifecycle.requests_per_link_per_hour`.
const LINK_WINDOW: std::time::Duration = std::time::Duration::from_secs(3600);

/// The rate limits of a link page request: per client address (counted by this replica), then
/// per link (counted in the store, so it holds however many replicas serve the link).
async fn limited(lifecycle: &Lifecycle, link: &str, client: IpAddr) -> Result<Result<(), u64>, StoreError> {
    if let Err(wait) = lifecycle.client_limiter.check(&client.to_string()) {
        return Ok(Err(wait));
    }
    lifecycle.store.count_link_request(link, lifecycle.config.requests_per_link_per_hour, LINK_WINDOW).await
}

fn page(status: StatusCode, state: &str, link_id: &str, title: &str, content: &str) -> Response {
    let html = PAGE
        .replace("{title}", title)
        .replace("{state}", state)
        .replace("{link_id}", link_id)
        .replace("{content}", content);
    let mut response = (status, html).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    secure(response)
}

fn message_page(status: StatusCode, title: &str, text: &str) -> Response {
    page(status, "closed", "", title, &format!("<p>{text}</p>"))
}

/// An API error as the page a person sees (the edge's refusals of a link page: too many
/// requests, too slow, unreadable). The page says what to do; it repeats nothing of the request.
pub(super) fn error_page(error: &ApiError) -> Response {
    let mut response = match error.code() {
        ApiErrorCode::TooManyRequests => message_page(
            error.status(),
            "Please wait",
            &format!("Too many attempts. Try again in {} seconds.", error.retry_after().unwrap_or(60)),
        ),
        ApiErrorCode::MalformedRequest | ApiErrorCode::NotFound | ApiErrorCode::InvalidRequest => {
            not_valid_page(error.status())
        }
        _ => message_page(
            error.status(),
            "Try again later",
            "This page could not be shown right now. Try again in a few minutes.",
        ),
    };
    if let Some(seconds) = error.retry_after() {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn not_valid_page(status: StatusCode) -> Response {
    message_page(status, "Link not valid", "This link is not valid. Check that you opened the whole link.")
}

/// The one-time password page
///
/// An HTML page with a "Reveal password" button; opening it consumes nothing (link scanners and
/// chat previews fetch links). 410 for a used or expired link, 404 for an unknown one, 429 when
/// rate-limited. No token; the key stays in the URL fragment and never reaches the relay.
#[utoipa::path(
    get,
    path = "/r/{id}",
    operation_id = "link_page",
    tag = "new hires",
    params(("id" = String, Path, description = "the link id (22 base64url characters)")),
    responses(
        (status = 200, description = "the page, for an active link", body = String, content_type = "text/html"),
        (status = 400, description = "a link id that cannot be read (invalid UTF-8)", body = String, content_type = "text/html"),
        (status = 404, description = "an unknown link", body = String, content_type = "text/html"),
        (status = 408, description = "the request took too long", body = String, content_type = "text/html"),
        (status = 410, description = "a used or expired link", body = String, content_type = "text/html"),
        (status = 429, description = "too many requests", body = String, content_type = "text/html"),
        (status = 503, description = "the store is unavailable", body = String, content_type = "text/html"),
    ),
)]
pub(super) async fn show(
    State(state): State<Arc<ApiState>>,
    Extension(ClientIp(client)): Extension<ClientIp>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let Ok(Path(id)) = id else { return not_valid_page(StatusCode::BAD_REQUEST) };
    let Some(lifecycle) = lifecycle(&state) else {
        return message_page(StatusCode::NOT_FOUND, "Link not valid", "This link is not valid.");
    };
    if !valid_link_id(&id) {
        return not_valid_page(StatusCode::NOT_FOUND);
    }
    let limit = match limited(lifecycle, &id, client).await {
        Ok(limit) => limit,
        Err(e) => {
            tracing::error!(error = %e, "counting a link request failed");
            return message_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again later",
                "This page could not be shown right now. Try again in a few minutes.",
            );
        }
    };
    if let Err(wait) = limit {
        let mut response = message_page(
            StatusCode::TOO_MANY_REQUESTS,
            "Please wait",
            &format!("Too many attempts. Try again in {wait} seconds."),
        );
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait));
        return response;
    }
    let link = match lifecycle.store.view_link(&id).await {
        Ok(link) => link,
        Err(e) => {
            tracing::error!(error = %e, "reading a link failed");
            return message_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again later",
                "This page is unavailable right now. Try again in a few minutes.",
            );
        }
    };
    let shown = match link {
        LinkState::Active { .. } => "active",
        LinkState::Claimed => "claimed",
        LinkState::Expired => "expired",
        LinkState::NotFound => "unknown",
    };
    tracing::info!(link = %link_ref(&id), %client, state = shown, "one-time link page opened");
    state
        .audit
        .record(Event::new(Kind::LinkViewed).address(client).detail("link_ref", link_ref(&id)).detail("state", shown));
    match link {
        LinkState::Active { expires, must_change } => {
            let expires =
                expires.to_rfc3339().get(..16).map(|t| format!("{} UTC", t.replace('T', " "))).unwrap_or_default();
            let guidance = if must_change {
                "You will be asked to change it at first sign-in. This page cannot show it again: keep it until you \
                 have signed in, then forget it."
            } else {
                "This page cannot show it again: keep it somewhere only you can reach, and change it when you can."
            };
            let content = ACTIVE.replace("{expires}", &expires).replace("{guidance}", guidance);
            page(StatusCode::OK, "active", &id, "Your first password", &content)
        }
        LinkState::Claimed => message_page(
            StatusCode::GONE,
            "Link already used",
            "This link was already used: the password was shown once and has been erased. If that was not you, \
             tell your manager or the service desk at once.",
        ),
        LinkState::Expired => message_page(
            StatusCode::GONE,
            "Link expired",
            "This link has expired and the password has been erased. Ask your manager or the service desk for a new one.",
        ),
        LinkState::NotFound => not_valid_page(StatusCode::NOT_FOUND),
    }
}

/// A claim of a one-time link.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ClaimBody {
    /// base64url (no padding) of SHA-256("pwrelay-claim" ‖ the 32-byte key from the link's fragment).
    proof: String,
}

/// The encrypted password, handed out once.
#[derive(Serialize, ToSchema)]
pub(super) struct ClaimedCiphertext {
    /// base64url (no padding) of the 12-byte nonce, the AES-256-GCM ciphertext and its tag; the
    /// page decrypts it with the fragment's key.
    ciphertext: String,
}

/// Claim a one-time link
///
/// Hands the encrypted password out once and erases it. The proof shows the caller holds the
/// link's key, so nobody without the whole link can use it up. Rate-limited per link and client.
#[utoipa::path(
    post,
    path = "/r/{id}/claim",
    operation_id = "claim_link",
    tag = "new hires",
    params(("id" = String, Path, description = "the link id (22 base64url characters)")),
    request_body(content = ClaimBody, content_type = "application/json"),
    responses((status = 200, description = "the ciphertext, now erased from the relay", body = ClaimedCiphertext), ClaimErrors),
)]
pub(super) async fn claim(
    State(state): State<Arc<ApiState>>,
    Extension(ClientIp(client)): Extension<ClientIp>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Ok(Path(id)) = id else { return secure(ApiError::path("id").into_response()) };
    secure(claim_inner(&state, client, &id, &headers, body).await.unwrap_or_else(IntoResponse::into_response))
}

async fn claim_inner(
    state: &ApiState,
    client: IpAddr,
    id: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let not_valid = || ApiError::not_found("this link is not valid");
    let lifecycle = lifecycle(state).ok_or_else(not_valid)?;
    if !valid_link_id(id) {
        return Err(not_valid());
    }
    if let Err(wait) = limited(lifecycle, id, client).await.map_err(|e| ApiError::unavailable(&e))? {
        return Err(ApiError::too_many_requests_for(format!("too many attempts; try again in {wait} seconds"), wait));
    }
    let parsed = super::json_body::<ClaimBody>(headers, body, 1024).await?.value;
    let proof: [u8; 32] = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parsed.proof.trim())
        .ok()
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| ApiError::invalid_request("proof must be 32 bytes, base64url without padding"))?;
    let claimed = lifecycle.store.claim_link(id, proof).await.map_err(|e| ApiError::unavailable(&e))?;
    let refused = |reason: &'static str| {
        tracing::info!(link = %link_ref(id), %client, reason, "one-time link claim refused");
        state.audit.record(
            Event::new(Kind::LinkClaimRefused)
                .address(client)
                .detail("link_ref", link_ref(id))
                .detail("reason", reason),
        );
    };
    match claimed {
        LinkClaim::Taken { job_id, sealed } => {
            tracing::info!(link = %link_ref(id), %client, job_id = %job_id, "one-time link claimed");
            state
                .audit
                .record(Event::new(Kind::LinkClaimed).address(client).job(job_id).detail("link_ref", link_ref(id)));
            let ciphertext =
                state.sealer.open_bytes(&job_id.to_string(), &sealed).map_err(|e| ApiError::unavailable(&e))?;
            let body = ClaimedCiphertext {
                ciphertext: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ciphertext.as_slice()),
            };
            Ok(Json(body).into_response())
        }
        LinkClaim::WrongProof => {
            refused("wrong_proof");
            Err(ApiError::link(
                ApiErrorCode::WrongProof,
                "this link was changed; open the whole link from your message",
            ))
        }
        LinkClaim::AlreadyUsed => {
            refused("already_used");
            Err(ApiError::link(
                ApiErrorCode::AlreadyUsed,
                "this link was already used; the password was shown once and has been erased",
            ))
        }
        LinkClaim::Expired => {
            refused("expired");
            Err(ApiError::link(
                ApiErrorCode::Expired,
                "this link has expired; ask your manager or the service desk for a new one",
            ))
        }
        LinkClaim::NotFound => {
            refused("unknown");
            Err(not_valid())
        }
    }
}

/// The link page's script
///
/// Decrypts the password in the browser with WebCrypto; served from this origin only (CSP).
#[utoipa::path(
    get,
    path = "/r/assets/reveal.js",
    operation_id = "link_page_script",
    tag = "new hires",
    responses((status = 200, description = "the script", body = String, content_type = "text/javascript"), EdgeErrors),
)]
pub(super) async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

/// The link page's style
#[utoipa::path(
    get,
    path = "/r/assets/reveal.css",
    operation_id = "link_page_style",
    tag = "new hires",
    responses((status = 200, description = "the style sheet", body = String, content_type = "text/css"), EdgeErrors),
)]
pub(super) async fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    secure(response)
}

/// How logs and the audit trail name a link: the first 8 bytes of its id's SHA-256, hexadecimal.
/// The same link always has the same reference, and the reference does not open the page.
fn link_ref(id: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(id.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect()
}
