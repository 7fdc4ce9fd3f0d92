//! The headers of every HTML page the relay serves, the new-hire link pages (`reveal.rs`) and the
//! status pages (`status.rs`): each kind of page has its own content security policy; the rest is
//! the same for both.

use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;

/// Headers on every page response besides its content security policy.
const COMMON: &[(&str, &str)] = &[
    ("cache-control", "no-store"),
    ("referrer-policy", "no-referrer"),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("x-robots-tag", "noindex, nofollow"),
    ("cross-origin-opener-policy", "same-origin"),
];

/// `response` with the common headers and `content_security_policy`.
pub(super) fn secure(mut response: Response, content_security_policy: &'static str) -> Response {
    let headers = response.headers_mut();
    headers
        .insert(HeaderName::from_static("content-security-policy"), HeaderValue::from_static(content_security_policy));
    for (name, value) in COMMON {
        headers.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
    }
    response
}
