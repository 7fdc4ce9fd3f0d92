//! The operators' status page: `GET /status` (server-rendered HTML, refreshing itself every 15 s),
//! its login form (`GET`/`POST /status/login`), `POST /status/logout`, and its style sheet.
//!
//! An operator logs in with the token of an API client whose scopes allow `status` (an unscoped
//! client allows every operation) and sees what that client's domain scopes cover: each domain
//! with its queue and its agents (state, version, last word, DC health, certificate expiry), the
//! failures of the last 24 hours by error code, and, for a client not limited to domains, the
//! webhook backlog and the new hires by stage. Everything comes from the store, so every replica
//! shows the same.
//!
//! The session is a stateless cookie ([`Session`]): the client's name and an expiry, tagged with a
//! key derived from the store key ([`crate::seal::Sealer::session_tag`]), so any replica with the
//! store key accepts it. The client is looked up by name at every request: a revoked client's
//! session, or one whose client lost the `status` scope, stops at once. Login attempts are
//! limited per client address ([`LOGIN_ATTEMPTS`] per [`LOGIN_WINDOW`], counted by each replica).
//!
//! Every response carries a strict CSP (no script at all, style from this origin only) and forbids
//! caching, framing and referrers ([`SECURITY_HEADERS`]); every value on the page is HTML-escaped
//! ([`render::escape`]): agent and DC names come from the network.

mod render;

use crate::audit::{Event, Kind};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::FormRejection;
use axum::extract::{Extension, Form, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use pwrelay_shared::secret::SecretString;
use serde::Deserialize;

use super::ApiState;
use super::auth::token_hash;
use super::edge::ClientIp;
use super::rate_limit::RateLimiter;
use crate::jobs::Timestamp;
use crate::store::{ApiClient, Operation};

const STYLE: &str = include_str!("status/status.css");

/// The session cookie's name (`__Secure-`: browsers take it only over HTTPS with `Secure`).
pub const COOKIE: &str = "__Secure-pwrelay-status";
/// How long a session lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// Login attempts allowed per client address and [`LOGIN_WINDOW`] (a burst, refilled evenly).
pub const LOGIN_ATTEMPTS: u32 = 10;
/// See [`LOGIN_ATTEMPTS`].
pub const LOGIN_WINDOW: Duration = Duration::from_secs(600);
/// How far back the failures on the page go.
const FAILURE_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The limiter of login attempts ([`LOGIN_ATTEMPTS`] per address and [`LOGIN_WINDOW`]).
pub fn login_limiter() -> RateLimiter<IpAddr> {
    RateLimiter::new(LOGIN_ATTEMPTS, LOGIN_WINDOW)
}

/// The content security policy of the status pages (the other headers: `page_headers.rs`).
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn secure(response: Response) -> Response {
    super::page_headers::secure(response, CONTENT_SECURITY_POLICY)
}

fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    secure(response)
}

/// A 303 to `location`, optionally setting a cookie.
fn see_other(location: &'static str, cookie: Option<String>) -> Response {
    let mut response = html(StatusCode::SEE_OTHER, render::redirect(location));
    response.headers_mut().insert(header::LOCATION, HeaderValue::from_static(location));
    if let Some(value) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// The `Set-Cookie` value that ends a session.
fn cleared_cookie() -> String {
    format!("{COOKIE}=; HttpOnly; Secure; SameSite=Strict; Path=/status; Max-Age=0")
}

/// A status page session: the client's name and when the session ends, tagged.
///
/// Its cookie value is `v1.<base64url(name)>.<expiry, Unix seconds>.<base64url(tag)>`, the tag
/// being the session key's HMAC of everything before its dot.
#[derive(Debug, PartialEq, Eq)]
struct Session {
    client: String,
    expires: i64,
}

impl Session {
    fn signed_text(&self) -> String {
        format!("v1.{}.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&self.client), self.expires)
    }

    fn cookie_value(&self, sealer: &crate::seal::Sealer) -> String {
        let text = self.signed_text();
        let tag = sealer.session_tag(text.as_bytes());
        format!("{text}.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag))
    }

    /// The session of a cookie value, if its tag holds and it has not expired at `now_seconds`.
    fn verify(value: &str, sealer: &crate::seal::Sealer, now_seconds: i64) -> Option<Self> {
        let (text, tag) = value.rsplit_once('.')?;
        let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(tag).ok()?;
        if !sealer.session_tag_matches(text.as_bytes(), &tag) {
            return None;
        }
        let mut parts = text.split('.');
        let (version, name, expires) = (parts.next()?, parts.next()?, parts.next()?);
        if version != "v1" || parts.next().is_some() {
            return None;
        }
        let client = String::from_utf8(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(name).ok()?).ok()?;
        let expires: i64 = expires.parse().ok()?;
        (expires > now_seconds).then_some(Self { client, expires })
    }
}

fn now_seconds() -> i64 {
    Timestamp::now().0 / 1000
}

/// The session cookie's value among the request's cookies.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(name, value)| (name == COOKIE).then_some(value))
}

/// Whether `client` may see the status page.
fn may_see_status(client: &ApiClient) -> bool {
    client.scopes.allows(Operation::Status)
}

/// A cross-site form post (`Sec-Fetch-Site` says so): refused, so no other site can log a
/// browser in or out.
fn cross_site(headers: &HeaderMap) -> bool {
    headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|site| !matches!(site, "same-origin" | "none"))
}

/// What went wrong with a session, for the log (the page only ever redirects to the login).
enum NoSession {
    Missing,
    Invalid,
    Revoked(String),
    NotAllowed(String),
    Store(crate::store::StoreError),
}

/// The client of the request's session.
async fn session_client(state: &ApiState, headers: &HeaderMap) -> Result<ApiClient, NoSession> {
    let value = session_cookie(headers).ok_or(NoSession::Missing)?;
    let session = Session::verify(value, &state.sealer, now_seconds()).ok_or(NoSession::Invalid)?;
    let client = state
        .store
        .client_by_name(&session.client)
        .await
        .map_err(NoSession::Store)?
        .ok_or_else(|| NoSession::Revoked(session.client.clone()))?;
    if !may_see_status(&client) {
        return Err(NoSession::NotAllowed(client.name));
    }
    Ok(client)
}

/// The status page
///
/// Server-rendered HTML of the domains the session's API client covers: their agents (state,
/// version, last seen, DC health, certificate expiry), queues, the last 24 hours' failures by
/// error code, and (for a client not limited to domains) the webhook backlog and new hires by
/// stage. Refreshes itself every 15 s. Without a valid session cookie (from `POST /status/login`)
/// it redirects to the login form.
#[utoipa::path(
    get,
    path = "/status",
    operation_id = "status_page",
    tag = "status",
    responses(
        (status = 200, description = "the page", body = String, content_type = "text/html"),
        (status = 303, description = "no valid session: to `/status/login`", body = String, content_type = "text/html"),
        (status = 429, description = "this client sent too many requests", body = String, content_type = "text/html"),
        (status = 503, description = "the store is unavailable", body = String, content_type = "text/html"),
    ),
)]
pub(super) async fn page(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    let client = match session_client(&state, &headers).await {
        Ok(client) => client,
        Err(NoSession::Store(e)) => {
            tracing::error!(error = %e, "reading a status page session's client failed");
            return unavailable();
        }
        Err(reason) => {
            if let NoSession::Revoked(name) | NoSession::NotAllowed(name) = &reason {
                tracing::info!(client = %name, "status page session refused: client revoked or without the status scope");
            }
            let clear = !matches!(reason, NoSession::Missing);
            return see_other("/status/login", clear.then(cleared_cookie));
        }
    };
    if let Err(e) = state.edge.admit_client(&client.name) {
        return html(e.status(), render::message("Please wait", "Too many requests. The page refreshes by itself."));
    }
    match render::View::read(&state, &client, FAILURE_WINDOW).await {
        Ok(view) => html(StatusCode::OK, view.render()),
        Err(e) => {
            tracing::error!(error = %e, "reading the status page failed");
            unavailable()
        }
    }
}

fn unavailable() -> Response {
    html(
        StatusCode::SERVICE_UNAVAILABLE,
        render::message("Try again later", "The store is unavailable right now. The page refreshes by itself."),
    )
}

/// The status page's login form
///
/// An HTML form for an API token whose client's scopes allow `status`.
#[utoipa::path(
    get,
    path = "/status/login",
    operation_id = "status_login_form",
    tag = "status",
    responses((status = 200, description = "the form", body = String, content_type = "text/html")),
)]
pub(super) async fn login_form() -> Response {
    html(StatusCode::OK, render::login(None))
}

/// The login form's fields.
#[derive(Deserialize)]
pub(super) struct LoginForm {
    token: SecretString,
}

/// Log in to the status page
///
/// Takes the form field `token` (`application/x-www-form-urlencoded`): the API token of a client
/// whose scopes allow `status`. Answers with a session cookie (`HttpOnly; Secure;
/// SameSite=Strict; Path=/status`, 8 hours) and a 303 to `/status`; a token that is wrong or not
/// allowed gets the form again (401, generic). Limited to 10 attempts per client address per 10
/// minutes.
#[utoipa::path(
    post,
    path = "/status/login",
    operation_id = "status_login",
    tag = "status",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "`token=<API token>`"),
    responses(
        (status = 303, description = "logged in: the session cookie, and to `/status`", body = String, content_type = "text/html"),
        (status = 401, description = "a wrong token, or one whose client may not see the page: the form again", body = String, content_type = "text/html"),
        (status = 403, description = "a cross-site form post", body = String, content_type = "text/html"),
        (status = 429, description = "too many login attempts from this address", body = String, content_type = "text/html"),
        (status = 503, description = "the store is unavailable", body = String, content_type = "text/html"),
    ),
)]
pub(super) async fn login(
    State(state): State<Arc<ApiState>>,
    Extension(ClientIp(address)): Extension<ClientIp>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    if cross_site(&headers) {
        return html(StatusCode::FORBIDDEN, render::message("Not allowed", "Log in from the relay's own login page."));
    }
    if let Err(wait) = state.status_logins.check(&address) {
        let mut response = html(
            StatusCode::TOO_MANY_REQUESTS,
            render::login(Some(&format!("Too many attempts. Try again in {wait} seconds."))),
        );
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait));
        return response;
    }
    let refused = || {
        tracing::info!(%address, "status page login refused");
        state.audit.record(Event::new(Kind::StatusLoginRefused).address(address));
        html(StatusCode::UNAUTHORIZED, render::login(Some("That token cannot open the status page.")))
    };
    let Ok(Form(form)) = form else { return refused() };
    let client = match state.store.client_by_token(token_hash(&form.token)).await {
        Ok(Some(client)) if may_see_status(&client) => client,
        Ok(_) => return refused(),
        Err(e) => {
            tracing::error!(error = %e, "reading an API client failed");
            return unavailable();
        }
    };
    tracing::info!(%address, client = %client.name, "status page login");
    state.audit.record(Event::new(Kind::StatusLogin).address(address).client(&client.name));
    let lifetime = i64::try_from(SESSION_LIFETIME.as_secs()).unwrap_or(i64::MAX);
    let session = Session { client: client.name, expires: now_seconds().saturating_add(lifetime) };
    let cookie = format!(
        "{COOKIE}={}; HttpOnly; Secure; SameSite=Strict; Path=/status; Max-Age={lifetime}",
        session.cookie_value(&state.sealer)
    );
    see_other("/status", Some(cookie))
}

/// Log out of the status page
///
/// Clears the session cookie and redirects to the login form.
#[utoipa::path(
    post,
    path = "/status/logout",
    operation_id = "status_logout",
    tag = "status",
    responses(
        (status = 303, description = "the cookie cleared, and to `/status/login`", body = String, content_type = "text/html"),
        (status = 403, description = "a cross-site form post", body = String, content_type = "text/html"),
    ),
)]
pub(super) async fn logout(headers: HeaderMap) -> Response {
    if cross_site(&headers) {
        return html(StatusCode::FORBIDDEN, render::message("Not allowed", "Log out from the status page."));
    }
    see_other("/status/login", Some(cleared_cookie()))
}

/// The status page's style
#[utoipa::path(
    get,
    path = "/status/assets/status.css",
    operation_id = "status_page_style",
    tag = "status",
    responses((status = 200, description = "the style sheet", body = String, content_type = "text/css")),
)]
pub(super) async fn style() -> Response {
    let mut response = STYLE.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css; charset=utf-8"));
    secure(response)
}

#[cfg(test)]
mod tests {
    use pwrelay_shared::secret::SecretBytes;

    use super::*;
    use crate::seal::Sealer;

    fn sealer(byte: u8) -> Sealer {
        Sealer::from_key(&SecretBytes::new(vec![byte; 32])).expect("key")
    }

    #[test]
    fn a_session_holds_only_with_its_tag_and_until_it_expires() {
        let s = sealer(1);
        let session = Session { client: "ops.team-1".into(), expires: 2_000 };
        let value = session.cookie_value(&s);
        assert_eq!(Session::verify(&value, &s, 1_999), Some(Session { client: "ops.team-1".into(), expires: 2_000 }));
        assert_eq!(Session::verify(&value, &s, 2_000), None, "expired");
        assert_eq!(Session::verify(&value, &sealer(2), 1_000), None, "another store key");
        let forged = Session { client: "admin".into(), expires: 2_000 }.signed_text();
        let tag = value.rsplit_once('.').expect("tag").1;
        assert_eq!(Session::verify(&format!("{forged}.{tag}"), &s, 1_000), None, "another name, the old tag");
        let longer = Session { client: "ops.team-1".into(), expires: 9_999 }.signed_text();
        assert_eq!(Session::verify(&format!("{longer}.{tag}"), &s, 1_000), None, "another expiry, the old tag");
        for broken in ["", ".", "v1", "v1...", "x.y.z.w", &value[..value.len() - 2]] {
            assert_eq!(Session::verify(broken, &s, 1_000), None, "{broken:?}");
        }
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; __Secure-pwrelay-status=v1.x.2.y; b=2"));
        assert_eq!(session_cookie(&headers), Some("v1.x.2.y"));
        headers.insert(header::COOKIE, HeaderValue::from_static("pwrelay-status=v1"));
        assert_eq!(session_cookie(&headers), None);
    }
}
