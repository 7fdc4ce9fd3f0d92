//! Typed API errors: every failure becomes `{"error": {"code", "message", "details"}}` with the
//! status of its code. Messages say what to fix and never echo a secret; `details` carries the
//! machine-readable context (the field at fault, a limit, the original job of a reused key).
//!
//! [`ApiErrorCode`] is the one list of codes: its schema in the OpenAPI document lists every code
//! with its status and meaning, and the response sets below ([`SubmitErrors`], ...) are what the
//! routes' `#[utoipa::path(responses(...))]` name.

use std::collections::BTreeMap;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder};

use crate::jobs::JobId;

/// What went wrong, as API clients branch on it. Each code has exactly one HTTP status.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ApiErrorCode {
    /// 400: the body is not valid JSON of the expected shape.
    InvalidJson,
    /// 400: the path, query or body cannot be read at all (invalid UTF-8, a cut-off body).
    MalformedRequest,
    /// 401: no or unknown bearer token.
    Unauthenticated,
    /// 403: the client's scopes do not allow this operation or domain.
    Forbidden,
    /// 404: no such job for this client, no such route, or a job that returns no password.
    NotFound,
    /// 405: the route exists but not with this method.
    MethodNotAllowed,
    /// 408: the request (or its body) did not arrive within the relay's limits.
    RequestTimeout,
    /// 409: the request does not fit the resource's state.
    Conflict,
    /// 410: the resource existed and is gone for good.
    Gone,
    /// 413: the body exceeds `api.max_body_bytes`.
    BodyTooLarge,
    /// 415: the body is not of a content type the route takes.
    UnsupportedMediaType,
    /// 422: well-formed, but a value is not acceptable.
    InvalidRequest,
    /// 503: the job store (or, for callouts, the tenant's signing keys) is unavailable.
    Unavailable,
    /// 429: too many requests for a one-time link or from one client address.
    TooManyRequests,
    /// 403: a link claim whose proof does not match the link's key.
    WrongProof,
    /// 410: the one-time link was already used.
    AlreadyUsed,
    /// 410: the one-time link expired unused.
    Expired,
    /// 410: a generating job succeeded, but its password never reached the relay.
    SecretLost,
}

impl ApiErrorCode {
    /// Every code, in status order.
    pub const ALL: [Self; 18] = [
        Self::InvalidJson,
        Self::MalformedRequest,
        Self::Unauthenticated,
        Self::Forbidden,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::RequestTimeout,
        Self::Conflict,
        Self::Gone,
        Self::BodyTooLarge,
        Self::UnsupportedMediaType,
        Self::InvalidRequest,
        Self::Unavailable,
        Self::TooManyRequests,
        Self::WrongProof,
        Self::AlreadyUsed,
        Self::Expired,
        Self::SecretLost,
    ];

    /// The code as it appears in `error.code`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::MalformedRequest => "malformed_request",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::RequestTimeout => "request_timeout",
            Self::Conflict => "conflict",
            Self::Gone => "gone",
            Self::BodyTooLarge => "body_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::InvalidRequest => "invalid_request",
            Self::Unavailable => "unavailable",
            Self::TooManyRequests => "too_many_requests",
            Self::WrongProof => "wrong_proof",
            Self::AlreadyUsed => "already_used",
            Self::Expired => "expired",
            Self::SecretLost => "secret_lost",
        }
    }

    /// The HTTP status every error with this code has.
    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidJson | Self::MalformedRequest => StatusCode::BAD_REQUEST,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Conflict => StatusCode::CONFLICT,
            Self::Gone => StatusCode::GONE,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::InvalidRequest => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Self::WrongProof => StatusCode::FORBIDDEN,
            Self::AlreadyUsed | Self::Expired | Self::SecretLost => StatusCode::GONE,
        }
    }

    /// When a client gets it (the OpenAPI description of the code and of its responses).
    pub fn meaning(self) -> &'static str {
        match self {
            Self::InvalidJson => "malformed JSON, unknown or missing fields, wrong types",
            Self::MalformedRequest => {
                "the path, query or body cannot be read: invalid UTF-8 or percent-encoding, a body cut off"
            }
            Self::RequestTimeout => {
                "the request's body did not arrive within api.limits.body_read_timeout_seconds, or the request took \
                 longer than api.limits.request_timeout_seconds"
            }
            Self::Unauthenticated => "no or unknown API token (the response has WWW-Authenticate: Bearer)",
            Self::Forbidden => "the client's scopes do not allow this operation or domain (details.missing_scope)",
            Self::NotFound => "no such job for this client, no such route, or a job that returns no password",
            Self::MethodNotAllowed => "the route exists but does not take this method",
            Self::Conflict => {
                "the job's password is not ready yet; an Idempotency-Key reused with another body (details.job_id is \
                 the original job); cancelling a job an agent holds or that has ended"
            }
            Self::Gone => "the job's password was already read once and has been erased",
            Self::SecretLost => {
                "the job set a password, but it never reached the relay, so nobody holds it: request another \
                 rotation of the account (final; the job will never return a password)"
            }
            Self::BodyTooLarge => "the body exceeds api.max_body_bytes (details.limit_bytes)",
            Self::UnsupportedMediaType => "the body is not application/json (or text/csv where a route takes it)",
            Self::InvalidRequest => {
                "a value is not acceptable: unknown domain, empty password, not exactly one target, bad GUID, bad \
                 query parameter (details.field names it when known)"
            }
            Self::Unavailable => {
                "the relay cannot reach its job store (or, for a callout, the tenant's signing keys); try again later"
            }
            Self::TooManyRequests => {
                "too many requests for this link, from this address or with this token; wait for the Retry-After \
                 seconds and try again"
            }
            Self::WrongProof => "the claim's proof does not match the link's key: the link was cut or changed",
            Self::AlreadyUsed => "the one-time link was already used; its password was shown once and erased",
            Self::Expired => "the one-time link expired unused; its password was erased",
        }
    }
}

impl Serialize for ApiErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl utoipa::PartialSchema for ApiErrorCode {
    fn schema() -> RefOr<Schema> {
        let mut description = String::from("What went wrong; each code has one HTTP status.\n\n");
        for code in Self::ALL {
            description.push_str(&format!("- `{}` ({}): {}\n", code.as_str(), code.status().as_u16(), code.meaning()));
        }
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(Self::ALL.map(Self::as_str)))
            .description(Some(description))
            .into()
    }
}

impl ToSchema for ApiErrorCode {}

/// Machine-readable context of an error; each field is present only when it applies.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct ErrorDetails {
    /// The request field, query parameter or header at fault (`target`, `generate.length`,
    /// `Idempotency-Key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For a malformed JSON body: the line where the parser stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// For a malformed JSON body: the column where the parser stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// For `body_too_large`: the largest body the route accepts, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_bytes: Option<usize>,
    /// For `forbidden`: the scope the client lacks (`operation:rotate`, `domain:corp.example.com`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing_scope: Option<String>,
    /// For `conflict` on a reused `Idempotency-Key`: the job the key was first used for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorObject,
}

/// An error: its code, a message that says what to fix, and its details.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorObject {
    /// What went wrong.
    pub code: ApiErrorCode,
    /// What happened and what to do about it, in English; never echoes a secret.
    #[schema(example = "target must have exactly one of upn, sam_account_name, object_guid, dn")]
    pub message: String,
    /// Machine-readable context (an empty object when there is none).
    pub details: ErrorDetails,
}

/// An API error response.
#[derive(Debug)]
pub struct ApiError {
    code: ApiErrorCode,
    message: String,
    /// Boxed: errors are rare, and `Result<_, ApiError>` stays small.
    details: Box<ErrorDetails>,
    /// For `too_many_requests`: the `Retry-After` seconds.
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(code: ApiErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), details: Box::default(), retry_after: None }
    }

    /// 400: the path, query or body cannot be read at all.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(ApiErrorCode::MalformedRequest, message)
    }

    /// 408: the request or its body took too long to arrive.
    pub fn request_timeout(message: impl Into<String>) -> Self {
        Self::new(ApiErrorCode::RequestTimeout, message)
    }

    /// 422 for a query string the route's parameters cannot take, naming the parameter when
    /// the parser did (and the name looks like one), never echoing a value; `parameters` lists
    /// the route's parameters for the message.
    pub fn query(rejection: &axum::extract::rejection::QueryRejection, parameters: &str) -> Self {
        let described = crate::untrusted::describe_data_error(
            rejection.body_text().strip_prefix("Failed to deserialize query string: ").unwrap_or_default(),
        );
        let error = Self::invalid_request(format!("query: {}; parameters: {parameters}", described.message));
        match described.field {
            Some(field) => error.field(field),
            None => error,
        }
    }

    /// 400 for a path segment that is not valid UTF-8 or percent-encoding.
    pub fn path(field: &str) -> Self {
        Self::malformed(format!("the path's {field} is not valid (invalid UTF-8 or percent-encoding)")).field(field)
    }

    /// 429 with `Retry-After: seconds`.
    pub fn too_many_requests_for(message: impl Into<String>, seconds: u64) -> Self {
        let mut error = Self::new(ApiErrorCode::TooManyRequests, message);
        error.retry_after = Some(seconds);
        error
    }

    /// 400: the body is not valid JSON of the expected shape.
    pub fn invalid_json(message: impl Into<String>) -> Self {
        Self::new(ApiErrorCode::InvalidJson, message)
    }

    /// 422: well-formed, but a value is not acceptable.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(ApiErrorCode::InvalidRequest, message)
    }

    /// 401: no or unknown bearer token.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ApiErrorCode::Unauthenticated, message)
    }

    /// 403: authenticated, but the client's scopes do not allow this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ApiErrorCode::Forbidden, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ApiErrorCode::NotFound, message)
    }

    /// 405: the route does not take this method.
    pub fn method_not_allowed() -> Self {
        Self::new(ApiErrorCode::MethodNotAllowed, "this route does not take this method; see /v1/openapi.json")
    }

    /// 409: the request does not fit the resource's state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ApiErrorCode::Conflict, message)
    }

    /// 410: the resource existed and is gone for good.
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(ApiErrorCode::Gone, message)
    }

    /// 410: a generating job's password never reached the relay.
    pub fn secret_lost(message: impl Into<String>) -> Self {
        Self::new(ApiErrorCode::SecretLost, message)
    }

    /// 413: the body exceeds `limit` bytes.
    pub fn too_large(limit: usize) -> Self {
        let mut error = Self::new(ApiErrorCode::BodyTooLarge, format!("the request body exceeds {limit} bytes"));
        error.details.limit_bytes = Some(limit);
        error
    }

    /// 415: not `application/json`.
    pub fn unsupported_media_type() -> Self {
        Self::new(ApiErrorCode::UnsupportedMediaType, "send the body as JSON with Content-Type: application/json")
    }

    /// 503: a dependency (the store) is failing. The detail goes to the log, not the client.
    pub fn unavailable(detail: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "request failed on the job store");
        Self::new(ApiErrorCode::Unavailable, "the relay cannot reach its job store; try again later")
    }

    /// The same error naming the request field, parameter or header at fault.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.details.field = Some(field.into());
        self
    }

    /// The same error with the position where a JSON parser stopped.
    pub fn at(mut self, line: usize, column: usize) -> Self {
        (self.details.line, self.details.column) = (Some(line), Some(column));
        self
    }

    /// The same error naming the scope the client lacks.
    pub fn missing_scope(mut self, scope: impl Into<String>) -> Self {
        self.details.missing_scope = Some(scope.into());
        self
    }

    /// The same error naming a job it is about.
    pub fn job(mut self, id: JobId) -> Self {
        self.details.job_id = Some(id);
        self
    }

    /// 503 with a message for the caller (a dependency other than the store is failing).
    pub fn unavailable_because(message: impl Into<String>) -> Self {
        Self::new(ApiErrorCode::Unavailable, message)
    }

    /// 429: too many requests; try again later.
    pub fn too_many_requests(message: impl Into<String>) -> Self {
        Self::new(ApiErrorCode::TooManyRequests, message)
    }

    /// An error with a code of the one-time link pages (`wrong_proof`, `already_used`, `expired`).
    pub fn link(code: ApiErrorCode, message: impl Into<String>) -> Self {
        Self::new(code, message)
    }

    /// The same error with `prefix` before its message (e.g. the index of a list item).
    pub fn prefixed(mut self, prefix: &str) -> Self {
        self.message.insert_str(0, prefix);
        self
    }

    /// The code.
    pub fn code(&self) -> ApiErrorCode {
        self.code
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The `Retry-After` seconds of a `too_many_requests`.
    pub fn retry_after(&self) -> Option<u64> {
        self.retry_after
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorBody { error: ErrorObject { code: self.code, message: self.message, details: *self.details } };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(seconds));
        }
        response
    }
}

/// The error responses of `codes`, each with the [`ErrorBody`] schema, for an `IntoResponses` set.
fn responses(codes: &[ApiErrorCode]) -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
    // Codes that share a status share its response: one description line per code.
    let mut by_status: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for code in codes {
        by_status.entry(code.status().as_u16().to_string()).or_default().push(format!(
            "`{}`: {}",
            code.as_str(),
            code.meaning()
        ));
    }
    by_status
        .into_iter()
        .map(|(status, lines)| {
            let content = ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(<ErrorBody as ToSchema>::name()))));
            let response = ResponseBuilder::new()
                .description(lines.join("; "))
                .content("application/json", content.build())
                .build();
            (status, RefOr::T(response))
        })
        .collect()
}

/// Declares a set of error responses that a route names in `#[utoipa::path(responses(...))]`.
/// The sets are uninhabited types: they exist only for their documentation.
macro_rules! error_responses {
    ($($(#[doc = $doc:literal])* $name:ident = [$($code:ident),+ $(,)?];)+) => {
        $(
            $(#[doc = $doc])*
            #[derive(Debug)]
            pub enum $name {}

            impl utoipa::IntoResponses for $name {
                fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
                    responses(&[$(ApiErrorCode::$code),+])
                }
            }
        )+
    };
}

error_responses! {
    /// What a job-creating `POST` can answer besides 202.
    SubmitErrors = [InvalidJson, MalformedRequest, Unauthenticated, Forbidden, Conflict, RequestTimeout,
        BodyTooLarge, UnsupportedMediaType, InvalidRequest, TooManyRequests, Unavailable];
    /// What reading one job can answer besides 200.
    ShowErrors = [MalformedRequest, Unauthenticated, NotFound, RequestTimeout, InvalidRequest, TooManyRequests,
        Unavailable];
    /// What listing jobs can answer besides 200.
    ListErrors = [MalformedRequest, Unauthenticated, RequestTimeout, InvalidRequest, TooManyRequests, Unavailable];
    /// What cancelling a job can answer besides 200.
    CancelErrors = [MalformedRequest, Unauthenticated, NotFound, Conflict, RequestTimeout, InvalidRequest,
        TooManyRequests, Unavailable];
    /// What reading a job's password can answer besides 200.
    SecretErrors = [MalformedRequest, Unauthenticated, NotFound, Conflict, Gone, SecretLost, RequestTimeout,
        InvalidRequest, TooManyRequests, Unavailable];
    /// What any other route that needs a token can answer besides 200.
    TokenErrors = [Unauthenticated, RequestTimeout, TooManyRequests, Unavailable];
    /// What a Lifecycle Workflows callout can answer besides 202.
    CalloutErrors = [MalformedRequest, Unauthenticated, NotFound, Conflict, RequestTimeout, BodyTooLarge,
        UnsupportedMediaType, InvalidRequest, TooManyRequests, Unavailable];
    /// What reading a new-hire request can answer besides 200.
    LifecycleShowErrors = [MalformedRequest, Unauthenticated, Forbidden, NotFound, RequestTimeout, InvalidRequest,
        TooManyRequests, Unavailable];
    /// What claiming a one-time link can answer besides 200.
    ClaimErrors = [InvalidJson, MalformedRequest, WrongProof, NotFound, AlreadyUsed, RequestTimeout,
        BodyTooLarge, TooManyRequests, UnsupportedMediaType, InvalidRequest, Unavailable];
    /// What listing the audit trail can answer besides 200.
    AuditErrors = [MalformedRequest, Unauthenticated, Forbidden, RequestTimeout, InvalidRequest, TooManyRequests,
        Unavailable];
    /// What a route without a token can answer besides its own responses (the relay's limits).
    EdgeErrors = [RequestTimeout, TooManyRequests];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_distinct_names_and_client_error_or_unavailable_statuses() {
        let names: std::collections::BTreeSet<&str> = ApiErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), ApiErrorCode::ALL.len());
        for code in ApiErrorCode::ALL {
            let status = code.status();
            assert!(status.is_client_error() || status == StatusCode::SERVICE_UNAVAILABLE, "{code:?}");
        }
    }

    #[test]
    fn error_bodies_have_code_message_and_details() {
        let body = |error: ApiError| {
            let response = error.into_response();
            (response.status(), response.headers().get("www-authenticate").cloned())
        };
        assert_eq!(body(ApiError::too_large(10)).0, StatusCode::PAYLOAD_TOO_LARGE);
        let (status, challenge) = body(ApiError::unauthenticated("x"));
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(challenge.as_ref().and_then(|v| v.to_str().ok()), Some("Bearer"));
        let error = ApiError::invalid_request("x").field("target").prefixed("targets[3]: ");
        let json =
            serde_json::to_value(ErrorObject { code: error.code, message: error.message, details: *error.details })
                .expect("json");
        assert_eq!(
            json,
            serde_json::json!({"code": "invalid_request", "message": "targets[3]: x", "details": {"field": "target"}})
        );
    }
}
