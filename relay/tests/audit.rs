//! The relay's audit trail end to end: a real relay `App` (on SQLite, and on PostgreSQL when
//! `PWRELAY_TEST_POSTGRES_URL` is set), its clients added with the real `pwrelay clients add`,
//! API calls over HTTPS, agents over the real mTLS link (one authorized, one refused), a flood of
//! bad tokens. Checked: the JSON lines of `[audit] file`, `GET /v1/audit` with every filter and
//! the scopes, that no secret is in any line or stored event, and that the flood is bounded in
//! the store while every refusal has its line.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pwrelay_proto::agent::v1 as pb;
use pwrelay_shared::domain::DomainName;
use pwrelay_shared::testkit::TestPki;
use pwrelay_shared::tls::{self, TrustAnchors};
use serde_json::{Value, json};
use tokio::sync::oneshot;

#[path = "support/link.rs"]
#[allow(dead_code, unreachable_pub)]
mod link;
#[path = "support/postgres.rs"]
#[allow(dead_code)]
mod postgres;

const DOMAIN: &str = "corp.test";
const OTHER: &str = "other.test";
const PASSWORD: &str = "Audit!Trail-Passw0rd-91";
/// `audit.unauthenticated_per_minute` in these tests.
const PER_MINUTE: usize = 5;

struct World {
    dir: tempfile::TempDir,
    pki: TestPki,
    anchors: TrustAnchors,
    http: reqwest::Client,
    /// Unscoped, every operation but audit.
    pam: String,
    /// Unscoped, audit only.
    auditor: String,
    /// corp.test only, audit only.
    scoped_auditor: String,
}

struct Relay {
    api: SocketAddr,
    link: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), pwrelay_relay::app::AppError>>,
}

impl World {
    async fn new(store_lines: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki_dir = dir.path().join("pki");
        std::fs::create_dir_all(&pki_dir).expect("pki dir");
        let pki = TestPki::create(&pki_dir);
        let key = pwrelay_relay::seal::Sealer::generate_key_text().expect("key");
        pwrelay_shared::pki::write_private(&dir.path().join("store.key"), &key, true).expect("store key");
        let toml = format!(
            "domains = [\"{DOMAIN}\", \"{OTHER}\"]\n\n[api]\nlisten = \"127.0.0.1:0\"\ncert_file = \"pki/relay.pem\"\n\
             key_file = \"pki/relay.key\"\n\n[api.limits]\nrequests_per_second_per_address = 100000\n\
             burst_per_address = 100000\n\n[link]\nlisten = \"127.0.0.1:0\"\ncert_file = \"pki/relay.pem\"\n\
             key_file = \"pki/relay.key\"\nagent_ca_file = \"pki/ca.pem\"\nheartbeat_seconds = 2\nlease_seconds = 30\n\n\
             [store]\n{store_lines}\nkey_file = \"store.key\"\n\n\
             [audit]\nfile = \"audit.jsonl\"\nunauthenticated_per_minute = {PER_MINUTE}\n"
        );
        std::fs::write(dir.path().join("relay.toml"), toml).expect("relay.toml");
        let anchors = TrustAnchors::from_file(&pki_dir.join("ca.pem")).expect("ca");
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls::https_client(&anchors).expect("tls")).clone())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        let config = dir.path().join("relay.toml");
        let pam = add_client(&config, "pam", &["--operation", "rotate", "--operation", "verify"]);
        let auditor = add_client(&config, "auditor", &["--operation", "audit"]);
        let scoped_auditor = add_client(&config, "scoped-auditor", &["--operation", "audit", "--domain", DOMAIN]);
        Self { dir, pki, anchors, http, pam, auditor, scoped_auditor }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("relay.toml")
    }

    async fn start_relay(&self) -> Relay {
        let config = pwrelay_relay::Config::load(&self.config_path(), &Default::default()).expect("config");
        let app = pwrelay_relay::App::build(config).await.expect("relay builds");
        let (api, link) = (app.api_addr(), app.link_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run(async move {
            let _ = stopped.await;
        }));
        Relay { api, link, stop: Some(stop), task }
    }

    async fn request(&self, relay: &Relay, method: reqwest::Method, token: &str, path: &str) -> (u16, Value) {
        let url = format!("https://127.0.0.1:{}{path}", relay.api.port());
        let response = self.http.request(method, url).bearer_auth(token).send().await.expect("answer");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, relay: &Relay, token: &str, path: &str) -> (u16, Value) {
        self.request(relay, reqwest::Method::GET, token, path).await
    }

    async fn rotate(&self, relay: &Relay, domain: &str, upn: &str) -> String {
        let url = format!("https://127.0.0.1:{}/v1/rotations", relay.api.port());
        let body = json!({ "domain": domain, "target": { "upn": upn }, "password": PASSWORD });
        let response = self.http.post(url).bearer_auth(&self.pam).json(&body).send().await.expect("answer");
        assert_eq!(response.status().as_u16(), 202);
        let body: Value = response.json().await.expect("JSON");
        body["job_id"].as_str().expect("job id").to_owned()
    }

    /// The events `GET /v1/audit?QUERY` lists for the unscoped auditor.
    async fn audit(&self, relay: &Relay, query: &str) -> Vec<Value> {
        let (status, body) = self.get(relay, &self.auditor, &format!("/v1/audit?{query}")).await;
        assert_eq!(status, 200, "{body}");
        body["events"].as_array().expect("events").clone()
    }

    fn lines(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).expect("every line is JSON")).collect()
    }

    /// Certificate files of an agent named `name` for `domains`.
    fn agent_certificate(&self, name: &str, domains: &[&str]) -> PathBuf {
        let dir = self.dir.path().join(format!("agent-{name}"));
        std::fs::create_dir_all(&dir).expect("agent dir");
        let parsed: Vec<DomainName> = domains.iter().map(|d| DomainName::parse(d).expect("domain")).collect();
        self.pki.issue_agent(name, &parsed.iter().collect::<Vec<_>>(), &dir);
        dir
    }
}

impl Relay {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(Duration::from_secs(30), &mut self.task).await;
        assert!(matches!(result, Ok(Ok(Ok(())))), "relay stops cleanly: {result:?}");
    }
}

/// `pwrelay clients add NAME ARGS`: the token it prints.
fn add_client(config: &Path, name: &str, args: &[&str]) -> String {
    pwrelay(config, &[&["clients", "add", name], args].concat())
}

/// `pwrelay ARGS --config CONFIG`, which must succeed: what it prints on stdout.
fn pwrelay(config: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pwrelay"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("pwrelay runs");
    assert!(out.status.success(), "pwrelay {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8").trim().to_owned()
}

/// An agent over the real mTLS link: hello, then a heartbeat a second until `close` (the stream
/// ends as the agent closes it). Returns the relay's first answer: a welcome or a refusal.
async fn agent(
    dir: &Path,
    anchors: &TrustAnchors,
    link: SocketAddr,
    domains: &[&str],
    close: oneshot::Receiver<()>,
) -> Result<pb::Welcome, tonic::Status> {
    let channel = link::channel(link::agent_tls(dir, anchors), link).await;
    let (tx, mut inbound) = link::open(channel, link::hello("1.0.0-audit\n{\"forged\":1}", domains, 1), 8).await?;
    let welcome = match inbound.message().await? {
        Some(pb::RelayMessage { body: Some(pb::relay_message::Body::Welcome(welcome)) }) => welcome,
        other => panic!("the relay answered the hello with {other:?}"),
    };
    tokio::spawn(async move {
        let mut close = close;
        let mut sequence = 0;
        loop {
            tokio::select! {
                _ = &mut close => break,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            sequence += 1;
            let _ = tx.send(link::heartbeat(sequence, Vec::new())).await;
        }
        drop(tx);
        while let Ok(Some(_)) = inbound.message().await {}
    });
    Ok(welcome)
}

async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn named<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == name).collect()
}

async fn scenario(store_lines: &str) {
    let world = World::new(store_lines).await;
    let relay = world.start_relay().await;

    // API calls: two rotations (one per domain), one cancelled; a generated-password read refused.
    let kept = world.rotate(&relay, DOMAIN, "alice@corp.test").await;
    let cancelled = world.rotate(&relay, OTHER, "bob@other.test").await;
    let (status, body) =
        world.request(&relay, reqwest::Method::DELETE, &world.pam, &format!("/v1/jobs/{cancelled}")).await;
    assert_eq!(status, 200, "{body}");

    // A client without the audit scope is refused; so is a bad token.
    let (status, body) = world.get(&relay, &world.pam, "/v1/audit").await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");
    let (status, _) = world.get(&relay, "pwr_not-a-token", "/v1/jobs").await;
    assert_eq!(status, 401);

    // An agent for corp.test connects and disconnects; one certified for no served domain is refused.
    let site = world.agent_certificate("site-a", &[DOMAIN]);
    let (close, closed) = oneshot::channel();
    let welcome = agent(&site, &world.anchors, relay.link, &[DOMAIN], closed).await.expect("welcome");
    assert_eq!(welcome.authorized_domains, vec![DOMAIN.to_owned()]);
    let outsider = world.agent_certificate("site-x", &["nowhere.test"]);
    let (_keep, never) = oneshot::channel();
    let refused = agent(&outsider, &world.anchors, relay.link, &["nowhere.test"], never).await;
    assert_eq!(refused.err().map(|s| s.code()), Some(tonic::Code::PermissionDenied));
    let _ = close.send(());

    // Every part of the scenario is in the store, as GET /v1/audit shows it.
    pwrelay(&world.config_path(), &["clients", "scopes", "pam", "--operation", "rotate", "--operation", "unlock"]);
    let expected = [
        "client.added",
        "client.scopes_changed",
        "job.created",
        "job.cancelled",
        "api.token_refused",
        "agent.connected",
        "agent.refused",
        "agent.disconnected",
    ];
    let complete = eventually(Duration::from_secs(15), || async {
        let events = world.audit(&relay, "limit=500").await;
        expected.iter().all(|name| !named(&events, name).is_empty())
    })
    .await;
    let events = world.audit(&relay, "limit=500").await;
    assert!(complete, "every event is stored: {events:#?}");

    let added = named(&events, "client.added");
    assert_eq!(added.len(), 3, "three clients added by the command line: {added:#?}");
    assert!(added.iter().all(|e| e["event_id"] == 5101 && e["replica"] == "cli"));
    let scoped = added.iter().find(|e| e["client"] == "scoped-auditor").expect("scoped-auditor added");
    assert_eq!(scoped["details"], json!({ "operations": ["audit"], "domains": [DOMAIN] }));

    let changed = named(&events, "client.scopes_changed");
    assert_eq!(changed[0]["details"], json!({ "operations": ["rotate", "unlock"], "domains": "all" }));

    // The command line reads the same trail.
    let listed = pwrelay(&world.config_path(), &["audit", "list", "--event", "5101"]);
    let listed: Vec<Value> = listed.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(
        listed.iter().map(|e| e["client"].as_str()).collect::<Vec<_>>(),
        [Some("pam"), Some("auditor"), Some("scoped-auditor")]
    );

    let created = named(&events, "job.created");
    assert_eq!(created.len(), 2, "{created:#?}");
    assert_eq!(created[0]["job_id"], kept.as_str());
    assert_eq!((created[0]["domain"].as_str(), created[0]["client"].as_str()), (Some(DOMAIN), Some("pam")));
    assert_eq!(created[0]["details"]["job_kind"], "set_password");
    assert_eq!(named(&events, "job.cancelled")[0]["job_id"], cancelled.as_str());

    let connected = named(&events, "agent.connected");
    assert_eq!(connected[0]["agent"], "site-a");
    assert_eq!(connected[0]["details"]["domains"], json!([DOMAIN]));
    assert_eq!(connected[0]["address"], "127.0.0.1");
    assert_eq!(
        connected[0]["details"]["version"], "1.0.0-audit\\n{\"forged\":1}",
        "the agent's version is escaped: {connected:#?}"
    );
    let refused = named(&events, "agent.refused");
    assert_eq!(
        (refused[0]["agent"].as_str(), refused[0]["details"]["reason"].as_str()),
        (Some("site-x"), Some("no_domain_to_serve"))
    );
    let disconnected = named(&events, "agent.disconnected");
    assert_eq!(disconnected[0]["details"]["reason"], "agent_closed", "{disconnected:#?}");
    let token_refused = named(&events, "api.token_refused");
    assert_eq!(token_refused[0]["details"]["reason"], "unknown_token");

    // Oldest first, in the order they happened.
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().expect("seq")).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // Filters: by id and by name, client, agent, job, time, and pages by cursor.
    let by_id = world.audit(&relay, "event=5001").await;
    assert_eq!(by_id.len(), 2);
    assert_eq!(world.audit(&relay, "event=job.created").await, by_id);
    let of_pam = world.audit(&relay, "client=pam").await;
    assert!(!of_pam.is_empty() && of_pam.iter().all(|e| e["client"] == "pam"), "{of_pam:#?}");
    let of_agent = world.audit(&relay, "agent=site-a").await;
    let names: BTreeSet<_> = of_agent.iter().map(|e| e["event"].as_str().expect("name")).collect();
    assert_eq!(names, BTreeSet::from(["agent.connected", "agent.disconnected"]), "{of_agent:#?}");
    let of_job = world.audit(&relay, &format!("job_id={cancelled}")).await;
    let names: Vec<_> = of_job.iter().map(|e| e["event"].as_str().expect("name")).collect();
    assert_eq!(names, ["job.created", "job.cancelled"]);
    let middle =
        events.iter().find(|e| e["event"] == "job.cancelled").expect("cancelled")["time"].as_str().expect("time");
    let before = world.audit(&relay, &format!("until={middle}")).await;
    let at = |e: &Value| {
        let text = e["time"].as_str().expect("time");
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).expect("RFC 3339")
    };
    let middle_at = at(&json!({ "time": middle }));
    assert!(before.iter().all(|e| at(e) < middle_at) && !before.is_empty(), "{before:#?}");
    let since = world.audit(&relay, &format!("since={middle}")).await;
    assert!(since.iter().all(|e| at(e) >= middle_at) && !since.is_empty(), "{since:#?}");
    assert_eq!(before.len() + since.len(), events.len());
    let (_, first) = world.get(&relay, &world.auditor, "/v1/audit?limit=2").await;
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let (_, second) = world.get(&relay, &world.auditor, &format!("/v1/audit?limit=2&cursor={cursor}")).await;
    assert_eq!(
        first["events"][1]["seq"].as_i64().map(|s| s < second["events"][0]["seq"].as_i64().unwrap_or(0)),
        Some(true)
    );
    assert_eq!(second["events"][0], events[2]);
    assert!(world.audit(&relay, "event=no.such_event").await.is_empty(), "an unknown name selects nothing");
    assert!(world.audit(&relay, "event=99999").await.is_empty(), "so does an unknown id");
    let long = format!("event={}", "0".repeat(65));
    let client = format!("client={}", "c".repeat(65));
    for bad in [
        "event=9999x",
        "event=Job.Created",
        &long,
        &client,
        "since=yesterday",
        "cursor=-1",
        "limit=0",
        "job_id=nope",
        "colour=red",
    ] {
        let (status, body) = world.get(&relay, &world.auditor, &format!("/v1/audit?{bad}")).await;
        assert_eq!((status, body["error"]["code"].as_str()), (422, Some("invalid_request")), "{bad}: {body}");
    }

    // A domain-scoped auditor sees its domain's events only.
    let (status, body) = world.get(&relay, &world.scoped_auditor, "/v1/audit?limit=500").await;
    assert_eq!(status, 200, "{body}");
    let seen = body["events"].as_array().expect("events");
    assert!(!seen.is_empty() && seen.iter().all(|e| e["domain"] == DOMAIN), "{seen:#?}");
    assert!(seen.iter().any(|e| e["job_id"] == kept.as_str()));
    assert!(!seen.iter().any(|e| e["job_id"] == cancelled.as_str()), "other.test's job is not shown");

    // A flood of bad tokens: a line for each, at most PER_MINUTE of them stored (this minute).
    let before_flood = named(&world.lines(), "api.token_refused").len();
    for n in 0..200 {
        let (status, _) = world.get(&relay, &format!("pwr_flood-{n}"), "/v1/jobs").await;
        assert_eq!(status, 401);
    }
    let lines = world.lines();
    assert_eq!(named(&lines, "api.token_refused").len(), before_flood + 200, "every refusal has its line");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored = world.audit(&relay, "event=api.token_refused&limit=500").await;
    assert!(stored.len() <= PER_MINUTE * 2, "a flood stores at most the per-minute allowance: {}", stored.len());

    // The JSON lines hold what the store holds, and no secret is in either.
    relay.stop().await;
    let lines = world.lines();
    for name in expected {
        assert!(!named(&lines, name).is_empty(), "{name} has its line");
    }
    assert!(lines.iter().all(|l| l.get("seq").is_none() && l["time"].as_str().is_some_and(|t| t.ends_with('Z'))));
    let everything =
        format!("{}\n{}", std::fs::read_to_string(world.dir.path().join("audit.jsonl")).expect("lines"), json!(events));
    for secret in [PASSWORD, world.pam.as_str(), world.auditor.as_str(), world.scoped_auditor.as_str(), "pwr_"] {
        assert!(!everything.contains(secret), "a secret ({}…) is in the audit trail", &secret[..4]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_on_sqlite() {
    scenario("path = \"relay.db\"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_on_postgres() {
    let Some(server) = postgres::PgServer::for_test("the_audit_trail_on_postgres") else { return };
    scenario(&server.store_lines(&server.fresh_database().await)).await;
}
