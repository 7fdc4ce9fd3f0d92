//! A local fake of the cloud endpoints the new-hire flow calls, speaking their documented shapes
//! over HTTPS (its own test CA): the Entra token endpoint (client secret or certificate
//! assertion, both checked) and JWKS, Graph users / manager / sendMail / resume, and the SMS
//! gateway. It records what it receives so tests can assert on it, and can be told to fail.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The RSA key the fake tenant signs tokens with (a test fixture, used nowhere else).
pub const SIGNING_KEY_PEM: &str = include_str!("entra-test-key.pem");
pub const KEY_ID: &str = "pwrelay-test-key";
pub const TENANT: &str = "6d8f1b0e-2f4a-4c39-9a6e-0c1d2e3f4a5b";
pub const CLIENT_ID: &str = "1a2b3c4d-0000-4000-8000-00000000c0de";
pub const CLIENT_SECRET: &str = "fake-graph-client-secret";
pub const LOGIC_APP_ID: &str = "9e8d7c6b-1111-4222-8333-444455556666";
pub const AUDIENCE: &str = "api://pwrelay-test";

#[derive(Default)]
pub struct Recorded {
    pub sms: Vec<Value>,
    pub mails: Vec<(String, Value)>,
    pub resumes: Vec<(String, Value)>,
    pub token_requests: u32,
}

pub struct CloudState {
    /// Graph users by id, as `GET /users/{id}` returns them.
    pub users: Mutex<HashMap<String, Value>>,
    /// Managers by user id.
    pub managers: Mutex<HashMap<String, Value>>,
    pub recorded: Mutex<Recorded>,
    /// Answer this many SMS sends with 500 before accepting.
    pub sms_failures: AtomicU32,
    /// The SHA-256 of the certificate the app registration holds (base64url), when it uses one.
    pub certificate_x5t: Mutex<Option<String>>,
    issued: Mutex<HashSet<String>>,
    jwk: Jwk,
    base: Mutex<String>,
}

pub struct FakeCloud {
    pub url: String,
    pub ca_file: PathBuf,
    pub state: Arc<CloudState>,
    cancel: CancellationToken,
}

impl Drop for FakeCloud {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl FakeCloud {
    /// Starts the fake on 127.0.0.1 with a certificate from a new CA written to `dir/cloud-ca.pem`.
    pub async fn start(dir: &std::path::Path) -> Self {
        let (ca, ca_files) = pwrelay_shared::pki::CertificateAuthority::generate("fake cloud CA", 1).expect("ca");
        let server = ca.issue_server(&["localhost".into(), "127.0.0.1".into()], 1).expect("server cert");
        let ca_file = dir.join("cloud-ca.pem");
        std::fs::write(&ca_file, &ca_files.cert_pem).expect("write ca");
        let identity = pwrelay_shared::tls::CertifiedKey::from_pem(&server.cert_pem, server.key_pem.expose_secret())
            .expect("identity");
        let tls = pwrelay_shared::tls::https_server(identity).expect("tls");
        let key = EncodingKey::from_rsa_pem(SIGNING_KEY_PEM.as_bytes()).expect("fixture key");
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).expect("jwk");
        jwk.common.key_id = Some(KEY_ID.into());
        let state = Arc::new(CloudState {
            users: Mutex::default(),
            managers: Mutex::default(),
            recorded: Mutex::default(),
            sms_failures: AtomicU32::new(0),
            certificate_x5t: Mutex::new(None),
            issued: Mutex::default(),
            jwk,
            base: Mutex::default(),
        });
        let app = axum::Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .route("/{tenant}/discovery/v2.0/keys", get(keys))
            .route("/v1.0/users/{id}", get(user))
            .route("/v1.0/users/{id}/manager", get(manager))
            .route("/v1.0/users/{id}/sendMail", post(send_mail))
            .route(
                "/v1.0/identityGovernance/lifecycleWorkflows/workflows/{wf}/tasks/{task}/taskProcessingResults/{id}/resume",
                post(resume),
            )
            .route("/sms", post(sms))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let cancel = CancellationToken::new();
        let tracker = tokio_util::task::TaskTracker::new();
        let incoming =
            pwrelay_relay::listener::TlsIncoming::spawn(listener, tls, "fake cloud", cancel.child_token(), &tracker)
                .expect("listen");
        let url = format!("https://localhost:{}", incoming.local_addr().port());
        *state.base.lock().expect("base") = url.clone();
        let stop = cancel.child_token();
        tokio::spawn(async move {
            let _ = axum::serve(incoming, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
        });
        Self { url, ca_file, state, cancel }
    }

    /// An Entra access token as the Logic App's managed identity would present it.
    pub fn entra_token(&self, audience: &str, app_id: &str, tenant: &str) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = json!({
            "aud": audience,
            "iss": format!("https://login.microsoftonline.com/{tenant}/v2.0"),
            "iat": now, "nbf": now, "exp": now + 3600,
            "tid": tenant, "azp": app_id, "oid": "00000000-0000-0000-0000-00000000beef", "ver": "2.0",
        });
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(KEY_ID.into());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_pem(SIGNING_KEY_PEM.as_bytes()).expect("key"))
            .expect("sign")
    }

    pub fn recorded<T>(&self, read: impl FnOnce(&Recorded) -> T) -> T {
        read(&self.state.recorded.lock().expect("recorded"))
    }
}

fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

async fn token(
    State(state): State<Arc<CloudState>>,
    Path(tenant): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    state.recorded.lock().expect("recorded").token_requests += 1;
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    if tenant != TENANT || field("grant_type") != "client_credentials" || field("client_id") != CLIENT_ID {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_request", "error_description": "AADSTS90002: bad tenant or client"})),
        )
            .into_response();
    }
    let base = state.base.lock().expect("base").clone();
    if field("scope") != format!("{base}/.default") {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_scope", "error_description": "AADSTS70011"})))
            .into_response();
    }
    let authenticated = if form.contains_key("client_secret") {
        field("client_secret") == CLIENT_SECRET
    } else {
        // A certificate assertion: signed with the app's key, the right audience, issuer and thumbprint.
        let expected_x5t = state.certificate_x5t.lock().expect("x5t").clone();
        let assertion = field("client_assertion");
        let header = jsonwebtoken::decode_header(assertion).ok();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[format!("{base}/{TENANT}/oauth2/v2.0/token")]);
        validation.set_issuer(&[CLIENT_ID]);
        validation.sub = Some(CLIENT_ID.into());
        field("client_assertion_type") == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            && header.is_some_and(|h| h.x5t_s256.is_some() && h.x5t_s256 == expected_x5t)
            && jsonwebtoken::decode::<Value>(assertion, &DecodingKey::from_jwk(&state.jwk).expect("key"), &validation)
                .is_ok()
    };
    if !authenticated {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}))).into_response();
    }
    let token = format!("fake-graph-token-{}", uuid::Uuid::new_v4());
    state.issued.lock().expect("issued").insert(token.clone());
    Json(json!({"token_type": "Bearer", "expires_in": 3599, "access_token": token})).into_response()
}

async fn keys(State(state): State<Arc<CloudState>>) -> Json<JwkSet> {
    Json(JwkSet { keys: vec![state.jwk.clone()] })
}

fn authorized(state: &CloudState, headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| state.issued.lock().expect("issued").contains(t))
}

async fn user(State(state): State<Arc<CloudState>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if !authorized(&state, &headers) {
        return graph_error(StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken", "Access token is empty.");
    }
    match state.users.lock().expect("users").get(&id) {
        Some(user) => Json(user.clone()).into_response(),
        None => {
            graph_error(StatusCode::NOT_FOUND, "Request_ResourceNotFound", &format!("Resource '{id}' does not exist"))
        }
    }
}

async fn manager(State(state): State<Arc<CloudState>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if !authorized(&state, &headers) {
        return graph_error(StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken", "Access token is empty.");
    }
    match state.managers.lock().expect("managers").get(&id) {
        Some(manager) => Json(manager.clone()).into_response(),
        None => graph_error(StatusCode::NOT_FOUND, "Request_ResourceNotFound", "Resource 'manager' does not exist"),
    }
}

async fn send_mail(
    State(state): State<Arc<CloudState>>,
    headers: HeaderMap,
    Path(sender): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    if !authorized(&state, &headers) {
        return graph_error(StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken", "Access token is empty.");
    }
    if body.pointer("/message/toRecipients/0/emailAddress/address").is_none() {
        return graph_error(StatusCode::BAD_REQUEST, "ErrorInvalidRecipients", "no recipient");
    }
    state.recorded.lock().expect("recorded").mails.push((sender, body));
    StatusCode::ACCEPTED.into_response()
}

async fn resume(
    State(state): State<Arc<CloudState>>,
    headers: HeaderMap,
    Path((_wf, _task, id)): Path<(String, String, String)>,
    Json(body): Json<Value>,
) -> Response {
    if !authorized(&state, &headers) {
        return graph_error(StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken", "Access token is empty.");
    }
    let valid = body.pointer("/data/@odata.type")
        == Some(&json!("microsoft.graph.identityGovernance.customTaskExtensionCallbackData"))
        && body.pointer("/type") == Some(&json!("lifecycleEvent"));
    if !valid {
        return graph_error(StatusCode::BAD_REQUEST, "BadRequest", "not a customTaskExtensionCallbackData");
    }
    state.recorded.lock().expect("recorded").resumes.push((id, body));
    StatusCode::NO_CONTENT.into_response()
}

async fn sms(State(state): State<Arc<CloudState>>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer fake-sms-token") {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if state.sms_failures.load(Ordering::SeqCst) > 0 {
        state.sms_failures.fetch_sub(1, Ordering::SeqCst);
        return (StatusCode::INTERNAL_SERVER_ERROR, "gateway hiccup").into_response();
    }
    state.recorded.lock().expect("recorded").sms.push(body);
    (StatusCode::ACCEPTED, Json(json!({"status": "queued"}))).into_response()
}
