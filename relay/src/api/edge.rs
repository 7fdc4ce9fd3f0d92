//! What every request passes before its handler, and what every response passes after it
//! ([`guard`], the outermost middleware of [`super::router`]):
//!
//! 1. its client address is resolved (`client_address.rs`, trusted proxies) and put in the
//!    request's extensions as [`ClientIp`];
//! 2. the per-address rate limit (`api.limits.requests_per_second_per_address`) is applied;
//!    authenticated routes apply the per-client one in `auth.rs`;
//! 3. its body gets its deadline (`body_read_timeout_seconds`, [`super::body::DeadlineBody`]),
//!    the whole request its own (`request_timeout_seconds`);
//! 4. an error response that is not typed yet (axum's own rejections are `text/plain`, and
//!    repeat what they could not parse) becomes the API's typed error: JSON, or an HTML page
//!    under `/r/`.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiState;
use super::body::DeadlineBody;
pub use super::client_address::ClientIp;
use super::error::ApiError;
use super::limits::ApiLimits;
use super::rate_limit::RateLimiter;
use crate::listener::ClientAddr;

/// The API's limits and the rate limiters that enforce them.
#[derive(Debug)]
pub struct Edge {
    limits: ApiLimits,
    per_address: RateLimiter<IpAddr>,
    per_client: RateLimiter<String>,
}

impl Edge {
    /// Limiters for `limits`.
    pub fn new(limits: ApiLimits) -> Self {
        Self {
            per_address: RateLimiter::per_second(limits.requests_per_second_per_address, limits.burst_per_address),
            per_client: RateLimiter::per_second(limits.requests_per_second_per_client, limits.burst_per_client),
            limits,
        }
    }

    /// The limits.
    pub fn limits(&self) -> &ApiLimits {
        &self.limits
    }

    /// Counts a request of the API client `name`: 429 when it is over its rate.
    pub(super) fn admit_client(&self, name: &str) -> Result<(), ApiError> {
        self.per_client.check(&name.to_owned()).map_err(|wait| {
            ApiError::too_many_requests_for(
                format!(
                    "this API client sent more than {} requests per second (bursts of {}); wait {wait} s",
                    self.limits.requests_per_second_per_client, self.limits.burst_per_client
                ),
                wait,
            )
        })
    }
}

impl Default for Edge {
    fn default() -> Self {
        Self::new(ApiLimits::default())
    }
}

/// Whether the request is for the one-time link pages, whose errors are HTML (their claim and
/// assets excepted: the claim is the page script's JSON call).
fn wants_page(request: &Request) -> bool {
    let path = request.uri().path();
    request.method() == Method::GET && path.starts_with("/r/") && !path.starts_with("/r/assets/")
}

/// The outermost middleware (see the module documentation).
pub(super) async fn guard(State(state): State<Arc<ApiState>>, mut request: Request, next: Next) -> Response {
    let limits = state.edge.limits();
    let page = wants_page(&request);
    let peer = request
        .extensions()
        .get::<ConnectInfo<ClientAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ConnectInfo(ClientAddr(addr))| addr.ip());
    let client =
        super::client_address::resolve(peer, request.headers(), &limits.trusted_proxies, limits.client_address_header);
    request.extensions_mut().insert(ClientIp(client));
    if let Err(wait) = state.edge.per_address.check(&client) {
        tracing::debug!(%client, "request refused: over the per-address rate");
        let error = ApiError::too_many_requests_for(
            format!("too many requests from this address; wait {wait} s and try again"),
            wait,
        );
        return render(error, page);
    }
    let request = request.map(|body| Body::new(DeadlineBody::new(body, limits.body_read_timeout)));
    let response = match tokio::time::timeout(limits.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_elapsed) => {
            let error = ApiError::request_timeout(format!(
                "the request took longer than {} s (api.limits.request_timeout_seconds)",
                limits.request_timeout.as_secs()
            ));
            return render(error, page);
        }
    };
    typed(response, page, state.max_body_bytes)
}

/// `error` as the route's kind of response: JSON, or for a link page, HTML.
fn render(error: ApiError, page: bool) -> Response {
    if page { super::reveal::error_page(&error) } else { error.into_response() }
}

/// An untyped error response (axum's rejections: plain text that may repeat the input) as the
/// API's typed error of the same status; typed responses pass unchanged.
fn typed(response: Response, page: bool, max_body_bytes: usize) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let content_type = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.starts_with("application/json") || content_type.starts_with("text/html") {
        return response;
    }
    let error = match status {
        StatusCode::BAD_REQUEST => {
            ApiError::malformed("the request cannot be read (invalid UTF-8 or percent-encoding)")
        }
        StatusCode::NOT_FOUND => ApiError::not_found("no such route; see /v1/openapi.json"),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::method_not_allowed(),
        StatusCode::REQUEST_TIMEOUT => ApiError::request_timeout("the request did not arrive in time"),
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(max_body_bytes),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::unsupported_media_type(),
        StatusCode::UNPROCESSABLE_ENTITY => ApiError::invalid_request("a value of the request is not acceptable"),
        StatusCode::SERVICE_UNAVAILABLE => ApiError::unavailable_because("the relay is unavailable; try again later"),
        other => {
            tracing::error!(status = other.as_u16(), "an API route answered an untyped error");
            return response;
        }
    };
    render(error, page)
}
