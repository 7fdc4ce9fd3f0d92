//! Typed API errors: every failure becomes `{"error": {"code", "message"}}` with the right status.
//! Messages say what to fix and never echo a secret.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An API error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// 400: the body is not valid JSON of the expected shape.
    pub fn invalid_json(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, code: "invalid_json", message: message.into() }
    }

    /// 422: well-formed, but a value is not acceptable.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self { status: StatusCode::UNPROCESSABLE_ENTITY, code: "invalid_request", message: message.into() }
    }

    /// 401: no or unknown bearer token.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self { status: StatusCode::UNAUTHORIZED, code: "unauthenticated", message: message.into() }
    }

    /// 403: authenticated, but the client's scopes do not allow this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self { status: StatusCode::FORBIDDEN, code: "forbidden", message: message.into() }
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self { status: StatusCode::NOT_FOUND, code: "not_found", message: message.into() }
    }

    /// 409: the request does not fit the resource's state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self { status: StatusCode::CONFLICT, code: "conflict", message: message.into() }
    }

    /// 410: the resource existed and is gone for good.
    pub fn gone(message: impl Into<String>) -> Self {
        Self { status: StatusCode::GONE, code: "gone", message: message.into() }
    }

    /// 413: the body exceeds `api.max_body_bytes`.
    pub fn too_large(limit: usize) -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "body_too_large",
            message: format!("the request body exceeds {limit} bytes"),
        }
    }

    /// 415: not `application/json`.
    pub fn unsupported_media_type() -> Self {
        Self {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "unsupported_media_type",
            message: "send the body as JSON with Content-Type: application/json".into(),
        }
    }

    /// 503: a dependency (the store) is failing. The detail goes to the log, not the client.
    pub fn unavailable(detail: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "request failed on the job store");
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "unavailable",
            message: "the relay cannot reach its job store; try again later".into(),
        }
    }

    /// 503 with a message for the caller (a dependency other than the store is failing).
    pub fn unavailable_because(message: impl Into<String>) -> Self {
        Self { status: StatusCode::SERVICE_UNAVAILABLE, code: "unavailable", message: message.into() }
    }

    /// 429: too many requests; try again after the given seconds.
    pub fn too_many_requests(message: impl Into<String>) -> Self {
        Self { status: StatusCode::TOO_MANY_REQUESTS, code: "too_many_requests", message: message.into() }
    }

    /// 403 with its own code: the link's proof does not match.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }

    /// The same error with `prefix` before its message (e.g. the index of a list item).
    pub fn prefixed(mut self, prefix: &str) -> Self {
        self.message.insert_str(0, prefix);
        self
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        response
    }
}
