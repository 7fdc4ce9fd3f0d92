//! The public edge: what the API does with hostile or careless input and with slow, idle or
//! numerous connections. A relay without agents or a directory is enough for these, so they run
//! without the Samba DC: each test starts its own relay with the `[api.limits]` it needs.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use pwrelay_relay::store::ClientStore as _;
use pwrelay_shared::domain::DomainName;
use pwrelay_shared::secret::SecretString;
use pwrelay_shared::testkit::TestPki;
use pwrelay_shared::tls::{self, TrustAnchors};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

const DOMAIN: &str = "corp.test";
const OTHER: &str = "other.test";

/// A relay serving corp.test and other.test, with an unscoped API client (`token`) and one
/// scoped to corp.test (`scoped`).
struct EdgeRelay {
    dir: tempfile::TempDir,
    pki: TestPki,
    api: SocketAddr,
    link: SocketAddr,
    anchors: TrustAnchors,
    token: SecretString,
    scoped: SecretString,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), pwrelay_relay::app::AppError>>,
}

impl EdgeRelay {
    /// `limits` goes into `[api.limits]`; `extra` is appended to the file.
    async fn start(limits: &str, extra: &str) -> Self {
        support::logs();
        let dir = tempfile::tempdir().expect("temp dir");
        let pki_dir = dir.path().join("pki");
        std::fs::create_dir_all(&pki_dir).expect("pki dir");
        let pki = TestPki::create(&pki_dir);
        let key = pwrelay_relay::seal::Sealer::generate_key_text().expect("key");
        pwrelay_shared::pki::write_private(&dir.path().join("store.key"), &key, true).expect("store key");
        let toml = format!(
            "domains = [\"{DOMAIN}\", \"{OTHER}\"]\n\n[api]\nlisten = \"127.0.0.1:0\"\ncert_file = \"pki/relay.pem\"\n\
             key_file = \"pki/relay.key\"\n\n[api.limits]\n{limits}\n\n[link]\nlisten = \"127.0.0.1:0\"\n\
             cert_file = \"pki/relay.pem\"\nkey_file = \"pki/relay.key\"\nagent_ca_file = \"pki/ca.pem\"\n\
             heartbeat_seconds = 2\nlease_seconds = 30\n\n[store]\npath = \"relay.db\"\nkey_file = \"store.key\"\n{extra}"
        );
        std::fs::write(dir.path().join("relay.toml"), toml).expect("relay.toml");
        std::fs::write(dir.path().join("graph.secret"), "not-a-real-graph-secret\n").expect("graph secret");
        let store = pwrelay_relay::store::sqlite::SqliteStore::open(&dir.path().join("relay.db")).expect("store");
        let (token, hash) = pwrelay_relay::api::auth::new_token().expect("token");
        store.add_client("edge-pam", hash, &Default::default()).await.expect("client");
        let (scoped, hash) = pwrelay_relay::api::auth::new_token().expect("token");
        let scopes = pwrelay_relay::store::Scopes {
            domains: Some(BTreeSet::from([DomainName::parse(DOMAIN).expect("domain")])),
            operations: None,
        };
        store.add_client("edge-scoped", hash, &scopes).await.expect("scoped client");
        drop(store);
        let config = pwrelay_relay::Config::load(&dir.path().join("relay.toml"), &Default::default()).expect("config");
        let app = pwrelay_relay::App::build(config).await.expect("relay builds");
        let (api, link) = (app.api_addr(), app.link_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run(async move {
            let _ = stopped.await;
        }));
        let anchors = TrustAnchors::from_file(&pki_dir.join("ca.pem")).expect("ca");
        Self { dir, pki, api, link, anchors, token, scoped, stop: Some(stop), task }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.api.port())
    }

    /// An HTTPS client speaking `alpn` (`h2` or `http/1.1`).
    fn client(&self, alpn: &[u8]) -> reqwest::Client {
        let mut config = (*tls::https_client(&self.anchors).expect("tls")).clone();
        config.alpn_protocols = vec![alpn.to_vec()];
        reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client")
    }

    fn h2(&self) -> reqwest::Client {
        self.client(b"h2")
    }

    fn h1(&self) -> reqwest::Client {
        self.client(b"http/1.1")
    }

    /// A raw TLS connection to the API (for slow and idle clients).
    async fn tls(&self, alpn: &[u8]) -> TlsStream<TcpStream> {
        let mut config = (*tls::https_client(&self.anchors).expect("tls")).clone();
        config.alpn_protocols = vec![alpn.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(self.api).await.expect("connect");
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        connector.connect(name, tcp).await.expect("TLS handshake")
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(Duration::from_secs(30), &mut self.task).await;
        assert!(matches!(result, Ok(Ok(Ok(())))), "relay stops cleanly: {result:?}");
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Status, content type and body text of a response.
async fn read(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    (status, content_type, response.text().await.expect("body"))
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("a JSON body ({e}): {text}"))
}

/// Reads until the server closes the connection (or `limit` passes); how long that took.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut sink = vec![0u8; 16 * 1024];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    closed.is_ok().then(|| start.elapsed())
}

// ---------------------------------------------------------------------------------------------
// Untrusted strings
// ---------------------------------------------------------------------------------------------

const TENANT: &str = "00000000-0000-0000-0000-0000000000e1";

fn lifecycle_section() -> String {
    format!(
        "\n[lifecycle]\npublic_url = \"https://localhost:1\"\n\
         [[lifecycle.tenants]]\ntenant_id = \"{TENANT}\"\ncallout_auth = \"entra\"\naudience = \"api://pwrelay\"\n\
         allowed_app_ids = [\"11111111-1111-1111-1111-111111111111\"]\n\
         client_id = \"22222222-2222-2222-2222-222222222222\"\nclient_secret_file = \"graph.secret\"\n\
         mail_sender = \"pwrelay@corp.test\"\n\
         [lifecycle.sms]\nurl = \"https://127.0.0.1:1/sms\"\nfrom = \"Corp\"\n\
         [lifecycle.endpoints]\nlogin = \"https://127.0.0.1:1\"\ngraph = \"https://127.0.0.1:1\"\n"
    )
}

/// An unsigned token with `header` and `claims` (anyone can make one).
fn forged_token(header: &Value, claims: &Value) -> String {
    let part = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.c2lnbmF0dXJl", part(header), part(claims))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_callout_token_cannot_write_a_log_line_or_get_its_claims_echoed() {
    // Headers big enough for a 60 KB claim to reach the checks (the default refuses them earlier).
    let relay = EdgeRelay::start("max_header_bytes = 262144", &lifecycle_section()).await;
    let logs = support::logs();
    let forged_line = "2031-01-01T00:00:00.000000Z  INFO pwrelay::audit: event=\"lifecycle.callout_accepted\" forged";
    let tid = format!("evil-tenant\n{forged_line}\u{1b}[2K");
    let token = forged_token(&json!({"alg": "RS256", "kid": "k1", "typ": "JWT"}), &json!({"tid": tid, "exp": 1}));
    // The scheme in lower case (RFC 9110: it is case-insensitive) still reaches the token checks.
    let response = relay
        .h2()
        .post(relay.url("/v1/lifecycle/callouts"))
        .header("authorization", format!("bearer {token}"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("answer");
    let (status, _, body) = read(response).await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("evil-tenant") && !body.contains("forged"), "the claims are not echoed: {body}");
    assert!(
        support::eventually(Duration::from_secs(5), || async { logs.text().contains("evil-tenant") }).await,
        "the refusal is logged"
    );
    let text = logs.text();
    let refusal = text.lines().find(|l| l.contains("evil-tenant")).expect("the refusal line");
    assert!(refusal.contains("callout refused") && refusal.contains("evil-tenant\\n2031-01-01"), "{refusal}");
    assert!(!refusal.contains('\u{1b}'), "terminal escapes are escaped: {refusal:?}");
    assert!(!text.lines().any(|l| l.starts_with("2031-01-01")), "no forged line in the log");

    // A 60 KB algorithm name is neither logged whole nor sent back.
    let huge = "A".repeat(60_000);
    let token = forged_token(&json!({"alg": huge, "typ": "JWT"}), &json!({"tid": TENANT}));
    let response = relay
        .h2()
        .post(relay.url("/v1/lifecycle/callouts"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("answer");
    let (status, _, body) = read(response).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.len() < 1024 && !body.contains("AAAAAAAA"), "{body}");
    assert!(!logs.text().contains(&"A".repeat(200)), "the algorithm is not logged whole");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_field_and_never_echo_the_value() {
    // Headers big enough for a 60 KB query parameter to reach the route.
    let relay = EdgeRelay::start("max_header_bytes = 262144", "").await;
    let http = relay.h2();
    let post = |token: &SecretString, body: String| {
        http.post(relay.url("/v1/rotations"))
            .bearer_auth(token.expose_secret())
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let long = "f".repeat(60_000);
    let body = format!(r#"{{"domain": "{DOMAIN}", "target": {{"upn": "a@corp.test"}}, "password": "x", "{long}": 1}}"#);
    let (status, _, text) = read(post(&relay.token, body).await.expect("answer")).await;
    assert_eq!(status, 400, "{}", &text[..text.len().min(300)]);
    assert!(text.len() < 1024, "a 60 KB field name does not come back: {} bytes", text.len());
    assert_eq!(json_of(&text)["error"]["code"], "invalid_json");

    // A short, field-like name is named (and only then).
    let body = format!(r#"{{"domain": "{DOMAIN}", "target": {{"upn": "a@corp.test"}}, "password": "x", "colour": 1}}"#);
    let (status, _, text) = read(post(&relay.token, body).await.expect("answer")).await;
    assert_eq!((status, json_of(&text)["error"]["details"]["field"].clone()), (400, json!("colour")), "{text}");

    // A password of the wrong type is not quoted back.
    let body = format!(
        r#"{{"domain": "{DOMAIN}", "target": {{"upn": "a@corp.test"}}, "generate": {{"length": "Hunter2!x"}}}}"#
    );
    let (status, _, text) = read(post(&relay.token, body).await.expect("answer")).await;
    assert!(status == 400 && !text.contains("Hunter2"), "{status} {text}");

    // An unknown domain is not repeated, and the domains listed are the client's only.
    let body = r#"{"domain": "probe-7f3a.example", "target": {"upn": "a@corp.test"}, "password": "Xx1!xxxxxx"}"#;
    let (status, _, text) = read(post(&relay.scoped, body.to_owned()).await.expect("answer")).await;
    assert_eq!(status, 422, "{text}");
    let reply = json_of(&text);
    assert_eq!(reply["error"]["details"]["field"], "domain");
    assert!(!text.contains("probe-7f3a") && text.contains(DOMAIN) && !text.contains(OTHER), "{text}");
    let (_, _, text) = read(post(&relay.token, body.to_owned()).await.expect("answer")).await;
    assert!(text.contains(DOMAIN) && text.contains(OTHER), "an unscoped client sees both: {text}");
    let bad_name = format!(
        r#"{{"domain": "{}\u001b[2K", "target": {{"upn": "a@corp.test"}}, "password": "Xx1!xxxxxx"}}"#,
        "d".repeat(5000)
    );
    let (status, _, text) = read(post(&relay.token, bad_name).await.expect("answer")).await;
    assert!(status == 422 && text.len() < 1024 && !text.contains("ddddd"), "{status} {text}");

    // Unknown query parameters: a long name is not repeated, a short one is named.
    let (status, _, text) = read(
        http.get(relay.url(&format!("/v1/jobs?{long}=1")))
            .bearer_auth(relay.token.expose_secret())
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert!(status == 422 && text.len() < 1024, "{status} {} bytes", text.len());
    let (status, _, text) = read(
        http.get(relay.url("/v1/webhooks/deliveries?colour=red"))
            .bearer_auth(relay.token.expose_secret())
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!((status, json_of(&text)["error"]["details"]["field"].clone()), (422, json!("colour")), "{text}");
    relay.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Every error typed
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_rejections_become_typed_errors_and_link_pages_html() {
    let relay = EdgeRelay::start("", "").await;
    let http = relay.h2();
    for path in ["/v1/jobs/%ff", "/v1/jobs/%ff/secret", "/v1/lifecycle/requests/%ff"] {
        let (status, content_type, text) =
            read(http.get(relay.url(path)).bearer_auth(relay.token.expose_secret()).send().await.expect("answer"))
                .await;
        assert_eq!((status, content_type.as_str()), (400, "application/json"), "{path}: {text}");
        let reply = json_of(&text);
        assert_eq!(reply["error"]["code"], "malformed_request", "{path}: {text}");
        assert_eq!(reply["error"]["details"]["field"], "id", "{path}: {text}");
    }
    let (status, content_type, text) = read(http.get(relay.url("/r/%ff")).send().await.expect("answer")).await;
    assert_eq!(status, 400, "{text}");
    assert!(content_type.starts_with("text/html"), "{content_type}: {text}");
    assert!(text.contains("Link not valid"), "{text}");
    let (status, content_type, text) = read(
        http.post(relay.url("/r/%ff/claim"))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!((status, content_type.as_str()), (400, "application/json"), "{text}");
    relay.stop().await;
}

// ---------------------------------------------------------------------------------------------
// CSV reconciliations
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_reconciliations_check_targets_like_json_and_read_spreadsheet_exports() {
    let relay = EdgeRelay::start("", "").await;
    let http = relay.h2();
    let upload = |csv: String| {
        http.post(relay.url(&format!("/v1/reconciliations?domain={DOMAIN}")))
            .bearer_auth(relay.token.expose_secret())
            .header("content-type", "text/csv; charset=utf-8")
            .body(csv)
            .send()
    };
    for (what, upn) in [
        ("NUL", "jane\u{0}doe@corp.test".to_owned()),
        ("ESC", "jane\u{1b}[2Kdoe@corp.test".to_owned()),
        ("10,000 characters", format!("{}@corp.test", "x".repeat(10_000))),
    ] {
        let csv = format!("upn\r\nok@corp.test\r\n\"{upn}\"\r\n");
        let (status, _, text) = read(upload(csv).await.expect("answer")).await;
        assert_eq!(status, 422, "{what}: {}", &text[..text.len().min(300)]);
        let reply = json_of(&text);
        assert_eq!(reply["error"]["details"]["field"], "targets[1].upn", "{what}: {text}");
        assert!(text.len() < 1024, "{what}: the value is not echoed");
    }
    // A spreadsheet export: byte order mark, `;`, quoted fields with separators and quotes.
    let export = "\u{feff}\"Name\";\"UPN\";\"Note\"\r\n\"Doe; Jane\";\"jane@corp.test\";\"says \"\"hi\"\"\"\r\n\"Roe, John\";john@corp.test;\r\n";
    let (status, _, text) = read(upload(export.to_owned()).await.expect("answer")).await;
    assert_eq!(status, 202, "{text}");
    let batch = json_of(&text)["job_id"].as_str().expect("job id").to_owned();
    let (status, _, text) = read(
        http.get(relay.url(&format!("/v1/jobs/{batch}")))
            .bearer_auth(relay.token.expose_secret())
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(json_of(&text)["progress"]["total"], 2, "two accounts: {text}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_keeps_no_plain_digest_of_a_body() {
    let relay = EdgeRelay::start("", "").await;
    let http = relay.h2();
    let rotation =
        format!(r#"{{"domain": "{DOMAIN}", "target": {{"upn": "a@corp.test"}}, "password": "Xx1!guessable"}}"#);
    let csv = "upn\njane@corp.test\n".to_owned();
    let sent = [
        ("rotation-1", "/v1/rotations".to_owned(), "application/json", rotation),
        ("csv-1", format!("/v1/reconciliations?domain={DOMAIN}"), "text/csv", csv),
    ];
    for (key, path, content_type, body) in &sent {
        for replayed in [false, true] {
            let response = http
                .post(relay.url(path))
                .bearer_auth(relay.token.expose_secret())
                .header("content-type", *content_type)
                .header("idempotency-key", *key)
                .body(body.clone())
                .send()
                .await
                .expect("answer");
            let again = response.headers().get("idempotent-replayed").is_some();
            let (status, _, text) = read(response).await;
            assert_eq!((status, again), (202, replayed), "{key}: {text}");
        }
    }
    let db = rusqlite::Connection::open(relay.path("relay.db")).expect("store file");
    for (key, _, _, body) in &sent {
        let kept: Vec<u8> = db
            .query_row("SELECT body_sha256 FROM idempotency_keys WHERE key = ?1", [key], |row| row.get(0))
            .expect("the key is kept");
        let plain: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(body.as_bytes()).into();
        assert_eq!(kept.len(), 32, "{key}");
        assert_ne!(kept, plain.to_vec(), "{key}: the plain SHA-256 of the body is at rest");
    }
    drop(db);
    relay.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Views follow scopes
// ---------------------------------------------------------------------------------------------

/// An agent stream for `domains`, as a real agent opens it (certificate from the relay's CA).
async fn connect_agent(
    relay: &EdgeRelay,
    name: &str,
    domains: &[&str],
) -> tokio::sync::mpsc::Sender<pwrelay_proto::agent::v1::AgentMessage> {
    let dir = relay.path(&format!("agent-{name}"));
    std::fs::create_dir_all(&dir).expect("agent dir");
    let parsed: Vec<DomainName> = domains.iter().map(|d| DomainName::parse(d).expect("domain")).collect();
    relay.pki.issue_agent(name, &parsed.iter().collect::<Vec<_>>(), &dir);
    let channel = support::link::channel(support::link::agent_tls(&dir, &relay.anchors), relay.link).await;
    let hello = support::link::hello("0.0.0-edge", domains, 1);
    let (tx, mut inbound) = support::link::open(channel, hello, 8).await.expect("stream opens");
    tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
    tx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_and_readiness_show_only_what_the_scopes_cover() {
    let relay = EdgeRelay::start("", "").await;
    let http = relay.h2();
    let _corp = connect_agent(&relay, "agent-corp", &[DOMAIN]).await;
    let _other = connect_agent(&relay, "agent-other", &[OTHER]).await;
    let _both = connect_agent(&relay, "agent-both", &[DOMAIN, OTHER]).await;
    let agents = |token: &SecretString| {
        let request = http.get(relay.url("/v1/agents")).bearer_auth(token.expose_secret());
        async move { json_of(&read(request.send().await.expect("answer")).await.2) }
    };
    assert!(
        support::eventually(Duration::from_secs(10), || async {
            agents(&relay.token).await["agents"].as_array().is_some_and(|a| a.len() == 3)
        })
        .await,
        "the three agents connect: {}",
        agents(&relay.token).await
    );
    let scoped = agents(&relay.scoped).await;
    let listed = scoped["agents"].as_array().expect("list");
    let names: Vec<&str> = listed.iter().filter_map(|a| a["name"].as_str()).collect();
    assert_eq!(names, ["agent-both", "agent-corp"], "{scoped}");
    assert!(listed.iter().all(|a| a["domains"] == json!([DOMAIN])), "{scoped}");
    assert!(!scoped.to_string().contains(OTHER), "{scoped}");

    let (status, _, text) = read(http.get(relay.url("/readyz")).send().await.expect("answer")).await;
    assert_eq!(status, 200);
    let ready = json_of(&text);
    assert_eq!(ready["status"], "ready");
    assert!(ready.get("domains").is_none() && !text.contains(DOMAIN) && !text.contains(OTHER), "{text}");
    let (_, _, text) =
        read(http.get(relay.url("/readyz")).bearer_auth(relay.scoped.expose_secret()).send().await.expect("answer"))
            .await;
    let ready = json_of(&text);
    assert_eq!(ready["domains"], json!({ DOMAIN: { "agent_connected": true } }), "{text}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive() {
    let relay = EdgeRelay::start("", "").await;
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let response = relay
            .h2()
            .get(relay.url("/v1/jobs"))
            .header("authorization", format!("{scheme} {}", relay.token.expose_secret()))
            .send()
            .await
            .expect("answer");
        assert_eq!(response.status(), 200, "{scheme}");
    }
    relay.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Server limits
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_never_handshaking_connections_are_closed() {
    let relay = EdgeRelay::start("idle_timeout_seconds = 1\ntls_handshake_timeout_seconds = 2", "").await;
    // HTTP/1.1: one request, then silence.
    let mut h1 = relay.tls(b"http/1.1").await;
    h1.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("request");
    let closed = closed_within(&mut h1, Duration::from_secs(10)).await.expect("the idle HTTP/1.1 connection is closed");
    assert!(closed < Duration::from_secs(4), "closed after about 1 s: {closed:?}");
    // HTTP/2: no request at all.
    let mut h2 = relay.tls(b"h2").await;
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.expect("preface");
    // It never answers the GOAWAY's ping, and is dropped all the same.
    let closed = closed_within(&mut h2, Duration::from_secs(10)).await.expect("the idle HTTP/2 connection is closed");
    assert!(closed < Duration::from_secs(5), "{closed:?}");
    // TCP without a TLS handshake.
    let mut raw = TcpStream::connect(relay.api).await.expect("connect");
    let closed = closed_within(&mut raw, Duration::from_secs(10)).await.expect("the silent TCP connection is closed");
    assert!(closed < Duration::from_secs(5), "{closed:?}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_byte_per_second_header_trickle_is_dropped() {
    let relay = EdgeRelay::start("header_read_timeout_seconds = 2\nidle_timeout_seconds = 60", "").await;
    let stream = relay.tls(b"http/1.1").await;
    let (mut reader, mut writer) = tokio::io::split(stream);
    let trickle = tokio::spawn(async move {
        writer.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ").await.ok();
        for _ in 0..30 {
            if writer.write_all(b"a").await.is_err() || writer.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let closed = closed_within(&mut reader, Duration::from_secs(15)).await.expect("the trickle is dropped");
    assert!(closed < Duration::from_secs(5), "dropped after about 2 s: {closed:?}");
    trickle.abort();
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickle_gets_a_typed_408() {
    let relay = EdgeRelay::start("body_read_timeout_seconds = 2\nidle_timeout_seconds = 60", "").await;
    let stream = relay.tls(b"http/1.1").await;
    let (mut reader, mut writer) = tokio::io::split(stream);
    let head = format!(
        "POST /v1/rotations HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{{",
        relay.token.expose_secret()
    );
    writer.write_all(head.as_bytes()).await.expect("head");
    let trickle = tokio::spawn(async move {
        for _ in 0..60 {
            if writer.write_all(b" ").await.is_err() || writer.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let start = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("request_timeout") && start.elapsed() < Duration::from_secs(15) {
        match tokio::time::timeout(Duration::from_secs(15), reader.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    trickle.abort();
    relay.stop().await;
}

/// A client that sends `head` and then one byte of `drip` per second, until the relay closes it.
async fn slow_client(relay: &EdgeRelay, head: String, drip: &'static [u8]) -> JoinHandle<()> {
    let stream = relay.tls(b"http/1.1").await;
    tokio::spawn(async move {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let reads = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            while matches!(reader.read(&mut buf).await, Ok(n) if n > 0) {}
        });
        if writer.write_all(head.as_bytes()).await.is_ok() {
            while writer.write_all(drip).await.is_ok() && writer.flush().await.is_ok() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        reads.abort();
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_while_a_thousand_connections_idle_and_slow_clients_trickle() {
    // Every connection below stays within its limits for a minute, so all of them are still open
    // (and held by the relay) while the requests are answered, however slow this machine is.
    let relay = EdgeRelay::start(
        "tls_handshake_timeout_seconds = 60\nheader_read_timeout_seconds = 60\nbody_read_timeout_seconds = 60",
        "",
    )
    .await;
    // Each connection costs this process two descriptors (client and server side).
    let limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines().find(|l| l.starts_with("Max open files"))?.split_whitespace().nth(3)?.parse::<usize>().ok()
        })
        .unwrap_or(1024);
    let per_kind = 500.min(limit.saturating_sub(512) / 4);
    let slow = 50.min(limit.saturating_sub(512) / 8);
    let mut idle_tls = Vec::new();
    for _ in 0..per_kind {
        idle_tls.push(relay.tls(b"http/1.1").await);
    }
    let mut idle_tcp = Vec::new();
    for _ in 0..per_kind {
        idle_tcp.push(TcpStream::connect(relay.api).await.expect("connect"));
    }
    // Slow clients: headers at a byte a second, and a rotation body at a byte a second.
    let mut trickles = Vec::new();
    for _ in 0..slow {
        trickles.push(slow_client(&relay, "GET /v1/jobs HTTP/1.1\r\nHost: localhost\r\nX-Slow: ".into(), b"a").await);
        let head = format!(
            "POST /v1/rotations HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{{",
            relay.token.expose_secret()
        );
        trickles.push(slow_client(&relay, head, b" ").await);
    }
    // New clients, each on a connection of its own, and one client's requests on one connection.
    let first = Instant::now();
    let mut fresh = Vec::new();
    for _ in 0..5 {
        let response = relay.h2().get(relay.url("/healthz")).send().await.expect("a new connection is served");
        assert_eq!(response.status(), 200);
        fresh.push(first.elapsed());
    }
    let http = relay.h2();
    let mut times = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        let response = http.get(relay.url("/v1/jobs")).bearer_auth(relay.token.expose_secret()).send().await;
        assert_eq!(response.expect("answer").status(), 200);
        times.push(start.elapsed());
    }
    times.sort();
    eprintln!(
        "{} idle TLS + {} idle TCP connections + {} slow clients: 5 new connections in {:?}, then 20 requests: \
         median {:?}, max {:?}",
        idle_tls.len(),
        idle_tcp.len(),
        trickles.len(),
        fresh.last().copied().unwrap_or_default(),
        times[times.len() / 2],
        times[times.len() - 1]
    );
    // The answers came while every slow client was still being waited for and the idle
    // connections were still open.
    assert!(trickles.iter().all(|t| !t.is_finished()), "the slow clients are still connected");
    let mut probe = [0u8; 1];
    for conn in idle_tls.iter_mut().take(10) {
        let still_open = tokio::time::timeout(Duration::from_millis(50), conn.read(&mut probe)).await.is_err();
        assert!(still_open, "an idle connection inside its idle time stays open");
    }
    for trickle in trickles {
        trickle.abort();
    }
    drop((idle_tls, idle_tcp));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_wait_until_one_closes() {
    let relay = EdgeRelay::start("max_connections = 3\ntls_handshake_timeout_seconds = 30", "").await;
    let mut held: Vec<TcpStream> = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(relay.api).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let waiting = tokio::spawn({
        let mut config = (*tls::https_client(&relay.anchors).expect("tls")).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let api = relay.api;
        async move {
            let tcp = TcpStream::connect(api).await.expect("connect");
            let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
            tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map(|_| Instant::now())
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished(), "a fourth connection is not served while three are open");
    let released = Instant::now();
    held.pop();
    let served = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("served once one closes");
    let at = served.expect("task").expect("handshake");
    assert!(at >= released, "served only after a place was free");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_mb_http1_upload_reliably_gets_its_413() {
    let relay = EdgeRelay::start("", "").await;
    let http = relay.h1();
    let body = vec![b' '; 10 * 1024 * 1024];
    for attempt in 0..10 {
        let response = http
            .post(relay.url("/v1/rotations"))
            .bearer_auth(relay.token.expose_secret())
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("attempt {attempt}: the upload gets an answer, not {e:?}"));
        let (status, _, text) = read(response).await;
        assert_eq!(status, 413, "attempt {attempt}: {text}");
        assert_eq!(json_of(&text)["error"]["code"], "body_too_large");
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_apply_per_address_behind_trusted_proxies_and_per_client() {
    let relay = EdgeRelay::start(
        "requests_per_second_per_address = 1\nburst_per_address = 3\nrequests_per_second_per_client = 1\n\
         burst_per_client = 2\ntrusted_proxies = [\"127.0.0.1\"]",
        "",
    )
    .await;
    let http = relay.h2();
    let from =
        |client: &str| http.get(relay.url("/healthz")).header("x-forwarded-for", format!("198.51.100.250, {client}"));
    for _ in 0..3 {
        assert_eq!(from("203.0.113.1").send().await.expect("answer").status(), 200);
    }
    let (status, _, text) = read(from("203.0.113.1").send().await.expect("answer")).await;
    assert_eq!((status, json_of(&text)["error"]["code"].clone()), (429, json!("too_many_requests")), "{text}");
    let limited = from("203.0.113.1").send().await.expect("answer");
    assert!(limited.headers().get("retry-after").is_some(), "Retry-After");
    // Another client behind the same proxy has its own bucket; its link page errors are HTML.
    assert_eq!(from("203.0.113.2").send().await.expect("answer").status(), 200);
    for _ in 0..2 {
        from("203.0.113.3").send().await.expect("answer");
    }
    let page = http.get(relay.url("/r/AAAAAAAAAAAAAAAAAAAAAA")).header("x-forwarded-for", "203.0.113.3");
    let _ = page.send().await.expect("answer");
    let page = http.get(relay.url("/r/AAAAAAAAAAAAAAAAAAAAAA")).header("x-forwarded-for", "203.0.113.3");
    let (status, content_type, _) = read(page.send().await.expect("answer")).await;
    assert_eq!(status, 429);
    assert!(content_type.starts_with("text/html"), "{content_type}");

    // Per API client: the third request within the burst is refused, another client is not.
    let jobs = |token: &SecretString, client: &str| {
        http.get(relay.url("/v1/jobs")).bearer_auth(token.expose_secret()).header("x-forwarded-for", client.to_owned())
    };
    for (i, client) in ["203.0.113.10", "203.0.113.11"].into_iter().enumerate() {
        assert_eq!(jobs(&relay.token, client).send().await.expect("answer").status(), 200, "request {i}");
    }
    let (status, _, text) = read(jobs(&relay.token, "203.0.113.12").send().await.expect("answer")).await;
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("API client"), "{text}");
    assert_eq!(jobs(&relay.scoped, "203.0.113.13").send().await.expect("answer").status(), 200);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    let relay = EdgeRelay::start("requests_per_second_per_address = 1\nburst_per_address = 2", "").await;
    let http = relay.h2();
    let statuses: Vec<u16> = {
        let mut statuses = Vec::new();
        for i in 0..4 {
            let request = http.get(relay.url("/healthz")).header("x-forwarded-for", format!("203.0.113.{i}"));
            statuses.push(request.send().await.expect("answer").status().as_u16());
        }
        statuses
    };
    assert_eq!(statuses, [200, 200, 429, 429], "a client cannot pick its address with X-Forwarded-For");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_refused_before_any_route() {
    let relay = EdgeRelay::start("", "").await;
    let huge = "A".repeat(60_000);
    let response = relay.h1().get(relay.url(&format!("/healthz?{huge}=1"))).send().await.expect("answer");
    assert_eq!(response.status(), 431, "HTTP/1.1: 431 over max_header_bytes");
    let refused = relay.h2().get(relay.url("/healthz")).header("x-huge", huge).send().await;
    assert!(refused.is_err() || refused.is_ok_and(|r| r.status() == 431), "HTTP/2: refused");
    // The connection cap and limits leave the API answering.
    assert_eq!(relay.h2().get(relay.url("/healthz")).send().await.expect("answer").status(), 200);
    relay.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The OpenAPI document matches what the server accepts
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_takes_what_the_document_allows_and_refuses_the_rest() {
    let relay = EdgeRelay::start("", "").await;
    let http = relay.h2();
    let post = |path: String, content_type: &'static str, body: String| {
        http.post(relay.url(&path))
            .bearer_auth(relay.token.expose_secret())
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    // A JSON Schema integer may be written 20.0.
    let body =
        format!(r#"{{"domain": "{DOMAIN}", "target": {{"upn": "a@corp.test"}}, "generate": {{"length": 20.0}}}}"#);
    let (status, _, text) = read(post("/v1/rotations".into(), "application/json", body).await.expect("answer")).await;
    assert_eq!(status, 202, "{text}");
    let body =
        format!(r#"{{"domain": "{DOMAIN}", "target": {{"upn": "a@corp.test"}}, "generate": {{"length": 20.5}}}}"#);
    let (status, _, text) = read(post("/v1/rotations".into(), "application/json", body).await.expect("answer")).await;
    assert_eq!(status, 400, "{text}");
    // The reconciliation query is checked with a JSON body too, not silently ignored.
    let json = format!(r#"{{"domain": "{DOMAIN}", "targets": [{{"upn": "a@corp.test"}}]}}"#);
    for query in ["?unlock=maybe", "?domain=", "?domain=not%20a%20name", "?colour=red"] {
        let (status, _, text) =
            read(post(format!("/v1/reconciliations{query}"), "application/json", json.clone()).await.expect("answer"))
                .await;
        assert_eq!(status, 422, "{query}: {text}");
    }
    let (status, _, text) = read(
        post(format!("/v1/reconciliations?domain={DOMAIN}&unlock=true"), "application/json", json.clone())
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(status, 202, "a well-formed query: {text}");
    relay.stop().await;
}

#[test]
fn the_document_is_as_strict_as_the_server() {
    let doc = serde_json::to_value(pwrelay_relay::api::openapi()).expect("document");
    let schemas = &doc["components"]["schemas"];
    let target = &schemas["TargetRequest"];
    assert_eq!((target["minProperties"].clone(), target["maxProperties"].clone()), (json!(1), json!(1)), "{target}");
    for field in ["upn", "sam_account_name", "object_guid", "dn"] {
        assert_eq!(target["properties"][field]["type"], "string", "{field} is not nullable: {target}");
    }
    assert!(target["properties"]["upn"]["pattern"].as_str().is_some_and(|p| p.contains('@')), "{target}");
    let parameters = |path: &str| doc["paths"][path]["get"]["parameters"].as_array().expect("parameters").clone();
    let find = |list: &[Value], name: &str| list.iter().find(|p| p["name"] == name).cloned().expect(name);
    let deliveries = parameters("/v1/webhooks/deliveries");
    let limit = find(&deliveries, "limit");
    assert_eq!(
        (limit["schema"]["minimum"].clone(), limit["schema"]["maximum"].clone()),
        (json!(1), json!(500)),
        "{limit}"
    );
    let state = find(&deliveries, "state").to_string();
    assert!(state.contains("#/components/schemas/DeliveryState"), "{state}");
    assert_eq!(schemas["DeliveryState"]["enum"], json!(["pending", "delivered", "failed"]));
    let jobs = parameters("/v1/jobs");
    let limit = find(&jobs, "limit");
    assert_eq!((limit["schema"]["minimum"].clone(), limit["schema"]["maximum"].clone()), (json!(1), json!(500)));
    assert!(find(&jobs, "state").to_string().contains("#/components/schemas/JobState"));
    let codes = schemas["ApiErrorCode"]["enum"].as_array().expect("codes");
    for code in ["malformed_request", "request_timeout", "too_many_requests"] {
        assert!(codes.contains(&json!(code)), "{code}");
    }
    // Codes that share a status share one response, each with its line.
    let bad_request = doc["paths"]["/v1/rotations"]["post"]["responses"]["400"]["description"].to_string();
    assert!(bad_request.contains("invalid_json") && bad_request.contains("malformed_request"), "{bad_request}");
    // A rotation takes exactly one of password and generate, and a recipient key only with generate.
    let rotation = &schemas["RotationRequest"];
    assert_eq!(
        rotation["oneOf"],
        json!([
            { "required": ["password"], "properties": { "generate": false, "recipient_public_key": false } },
            { "required": ["generate"], "properties": { "password": false } },
        ]),
        "{rotation}"
    );
    assert_eq!(rotation["required"], json!(["domain", "target"]), "{rotation}");
    for (schema, field) in [(rotation, "password"), (&schemas["VerificationRequest"], "password")] {
        let pattern = schema["properties"][field]["pattern"].as_str().unwrap_or_default();
        assert!(pattern.contains(r"\u0000-\u001f\u007f-\u009f"), "no control characters in a {field}: {schema}");
    }
    assert_eq!(rotation["properties"]["recipient_public_key"]["pattern"], r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$");
    // A CSV upload has a `upn` header row and one UPN per row.
    let csv = &doc["paths"]["/v1/reconciliations"]["post"]["requestBody"]["content"]["text/csv"]["schema"];
    assert!(csv["pattern"].as_str().is_some_and(|p| p.starts_with(r"^\ufeff?[Uu][Pp][Nn]")), "{csv}");
}
