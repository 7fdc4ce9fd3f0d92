//! The fleet view: known agents kept in the store, as every relay replica shows them.
//!
//! Relays are real `App`s; agents are either the real agent `App` against the throwaway Samba DC,
//! or a stand-in that speaks the link protocol over the real mTLS link (hello, heartbeats with the
//! DC health it is given) and can fall silent, or vanish as a killed process does: it runs on a
//! runtime of its own, and dropping that runtime closes its connection without a word. The
//! replica test runs two relays on one PostgreSQL database when `PWRELAY_TEST_POSTGRES_URL` is set
//! (`deploy/dev/postgres.sh`), and says that it is skipped otherwise.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pwrelay_proto::agent::v1 as pb;
use pwrelay_shared::domain::DomainName;
use pwrelay_shared::secret::SecretString;
use pwrelay_shared::testkit::TestPki;
use pwrelay_shared::tls::{self, TrustAnchors};
use serde_json::{Value, json};
use support::{World, eventually, link};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const DOMAIN: &str = "corp.test";
const OTHER: &str = "other.test";
/// The relay's `link.heartbeat_seconds` in these tests; `agents.down_after_seconds` is left at its
/// default, twice that.
const HEARTBEAT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// A relay without a directory, and an agent stand-in
// ---------------------------------------------------------------------------------------------

/// Where the relays of a test keep their store.
enum StoreKind {
    Sqlite,
    /// A fresh database on the test server: the `[store]` lines that reach it.
    Postgres(String),
}

/// A world of relays serving corp.test and other.test, with an unscoped API client (`token`) and
/// one scoped to corp.test (`scoped`).
struct Fleet {
    dir: tempfile::TempDir,
    pki: TestPki,
    anchors: TrustAnchors,
    token: SecretString,
    scoped: SecretString,
    http: reqwest::Client,
}

/// One running relay.
struct Relay {
    api: SocketAddr,
    link: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), pwrelay_relay::app::AppError>>,
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

impl Fleet {
    async fn new(store: StoreKind) -> Self {
        support::logs();
        let dir = tempfile::tempdir().expect("temp dir");
        let pki_dir = dir.path().join("pki");
        std::fs::create_dir_all(&pki_dir).expect("pki dir");
        let pki = TestPki::create(&pki_dir);
        let key = pwrelay_relay::seal::Sealer::generate_key_text().expect("key");
        pwrelay_shared::pki::write_private(&dir.path().join("store.key"), &key, true).expect("store key");
        let store_lines = match &store {
            StoreKind::Sqlite => "path = \"relay.db\"".to_owned(),
            StoreKind::Postgres(lines) => lines.clone(),
        };
        let toml = format!(
            "domains = [\"{DOMAIN}\", \"{OTHER}\"]\n\n[api]\nlisten = \"127.0.0.1:0\"\ncert_file = \"pki/relay.pem\"\n\
             key_file = \"pki/relay.key\"\n\n[link]\nlisten = \"127.0.0.1:0\"\ncert_file = \"pki/relay.pem\"\n\
             key_file = \"pki/relay.key\"\nagent_ca_file = \"pki/ca.pem\"\nheartbeat_seconds = {}\nlease_seconds = 30\n\n\
             [store]\n{store_lines}\nkey_file = \"store.key\"\n",
            HEARTBEAT.as_secs()
        );
        let config_path = dir.path().join("relay.toml");
        std::fs::write(&config_path, toml).expect("relay.toml");
        let config = pwrelay_relay::Config::load(&config_path, &Default::default()).expect("config");
        let store = pwrelay_relay::store::open(&config.store).await.expect("store");
        let (token, hash) = pwrelay_relay::api::auth::new_token().expect("token");
        store.add_client("fleet-pam", hash, &Default::default()).await.expect("client");
        let (scoped, hash) = pwrelay_relay::api::auth::new_token().expect("token");
        let scopes = pwrelay_relay::store::Scopes {
            domains: Some(BTreeSet::from([DomainName::parse(DOMAIN).expect("domain")])),
            operations: None,
        };
        store.add_client("fleet-scoped", hash, &scopes).await.expect("scoped client");
        drop(store);
        let anchors = TrustAnchors::from_file(&pki_dir.join("ca.pem")).expect("ca");
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls::https_client(&anchors).expect("tls")).clone())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        Self { dir, pki, anchors, token, scoped, http }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("relay.toml")
    }

    /// Starts a relay on this world's configuration (a replica, when the store is shared).
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

    async fn get_as(&self, relay: &Relay, token: &SecretString, path: &str) -> (u16, Value) {
        let url = format!("https://127.0.0.1:{}{path}", relay.api.port());
        let response = self.http.get(url).bearer_auth(token.expose_secret()).send().await.expect("answer");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `GET /v1/agents` with the unscoped token.
    async fn agents(&self, relay: &Relay) -> Value {
        let (status, body) = self.get_as(relay, &self.token, "/v1/agents").await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// A stand-in agent named `name`, certified for `domains`, reporting `health` with every
    /// heartbeat (each `HEARTBEAT / 2`).
    fn stand_in(&self, relay: &Relay, name: &str, domains: &[&str], health: Vec<pb::DirectoryHealth>) -> StandIn {
        let dir = self.dir.path().join(format!("agent-{name}"));
        std::fs::create_dir_all(&dir).expect("agent dir");
        let parsed: Vec<DomainName> = domains.iter().map(|d| DomainName::parse(d).expect("domain")).collect();
        self.pki.issue_agent(name, &parsed.iter().collect::<Vec<_>>(), &dir);
        StandIn::start(&dir, &self.anchors, relay.link, domains, health)
    }

    /// Runs `pwrelay agents ARGS --config relay.toml`: exit code, stdout, stderr.
    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_pwrelay"))
            .arg("agents")
            .args(args)
            .arg("--config")
            .arg(self.config_path())
            .output()
            .expect("pwrelay runs");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
    }
}

/// The agent named `name` in a `GET /v1/agents` answer.
fn agent<'a>(fleet: &'a Value, name: &str) -> Option<&'a Value> {
    fleet["agents"].as_array()?.iter().find(|a| a["name"] == name)
}

fn state_of(fleet: &Value, name: &str) -> Option<String> {
    agent(fleet, name).and_then(|a| a["state"].as_str()).map(str::to_owned)
}

/// An agent that speaks the link protocol over the real mTLS link, on a runtime of its own.
struct StandIn {
    silent: Arc<AtomicBool>,
    kill: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StandIn {
    fn start(
        dir: &Path,
        anchors: &TrustAnchors,
        link: SocketAddr,
        domains: &[&str],
        health: Vec<pb::DirectoryHealth>,
    ) -> Self {
        let config = link::agent_tls(dir, anchors);
        let domains: Vec<String> = domains.iter().map(|d| (*d).to_owned()).collect();
        let silent = Arc::new(AtomicBool::new(false));
        let (kill, killed) = oneshot::channel::<()>();
        let quiet = Arc::clone(&silent);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async move {
                tokio::select! {
                    () = speak(config, link, domains, health, quiet) => {}
                    _ = killed => {}
                }
            });
            // Dropping the runtime drops every task of the stand-in, its connection included: the
            // relay sees the connection end without a goodbye, as from a killed process.
            drop(runtime);
        });
        Self { silent, kill: Some(kill), thread: Some(thread) }
    }

    /// Stops sending heartbeats; the stream stays open.
    fn fall_silent(&self) {
        self.silent.store(true, Ordering::SeqCst);
    }

    /// Ends the process's connection at once, without closing the stream.
    fn kill(mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("stand-in thread");
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
    }
}

async fn speak(
    config: Arc<rustls::ClientConfig>,
    link: SocketAddr,
    domains: Vec<String>,
    health: Vec<pb::DirectoryHealth>,
    silent: Arc<AtomicBool>,
) {
    let channel = link::channel(config, link).await;
    let hello = link::hello("9.9.9-stand-in", &domains, 1);
    let (tx, mut inbound) = link::open(channel, hello, 8).await.expect("stream opens");
    tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
    let mut sequence = 0;
    loop {
        if !silent.load(Ordering::SeqCst) {
            sequence += 1;
            if tx.send(link::heartbeat(sequence, health.clone())).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(HEARTBEAT / 2).await;
    }
}

fn dc(name: &str, bind_ok: bool, latency_ms: Option<u32>) -> pb::DcHealth {
    let detail = if bind_ok { String::new() } else { "connection refused".into() };
    pb::DcHealth { name: name.into(), bind_ok, detail, latency_ms }
}

fn health(domain: &str, dcs: Vec<pb::DcHealth>) -> pb::DirectoryHealth {
    let bind_ok = dcs.iter().any(|d| d.bind_ok);
    pb::DirectoryHealth { domain: domain.into(), bind_ok, detail: format!("{} DCs checked", dcs.len()), dcs }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_is_down_within_two_heartbeat_intervals_and_a_killed_one_at_once() {
    let fleet = Fleet::new(StoreKind::Sqlite).await;
    let relay = fleet.start_relay().await;
    let reported =
        health(DOMAIN, vec![dc("ldaps://dc1.corp.test", true, Some(7)), dc("ldaps://dc2.corp.test", false, None)]);
    let quiet = fleet.stand_in(&relay, "site-quiet", &[DOMAIN], vec![reported]);
    let connected = eventually(Duration::from_secs(10), || async {
        let body = fleet.agents(&relay).await;
        state_of(&body, "site-quiet").as_deref() == Some("connected")
            && agent(&body, "site-quiet").is_some_and(|a| a["directories"].as_array().is_some_and(|d| !d.is_empty()))
    })
    .await;
    let body = fleet.agents(&relay).await;
    assert!(connected, "the agent shows connected with its DC health: {body}");
    let shown = agent(&body, "site-quiet").expect("listed");
    assert_eq!(shown["domains"], json!([DOMAIN]));
    assert_eq!(shown["version"], "9.9.9-stand-in");
    assert_eq!(
        shown["directories"],
        json!([{ "domain": DOMAIN, "bind_ok": true, "detail": "2 DCs checked", "dcs": [
            { "name": "ldaps://dc1.corp.test", "bind_ok": true, "latency_ms": 7 },
            { "name": "ldaps://dc2.corp.test", "bind_ok": false, "detail": "connection refused" },
        ] }]),
        "{body}"
    );
    assert!(shown["certificate"]["serial"].as_str().is_some_and(|s| s.len() >= 2), "{body}");
    assert!(shown["certificate"]["expires"].as_str().is_some_and(|e| e > "2026"), "{body}");
    assert!(shown["stream"]["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")), "{body}");
    assert_eq!(shown["jobs"], json!({ "in_flight": 0, "done": 0, "failed": 0 }));
    assert_eq!(body["domains_without_agent"], json!([OTHER]), "other.test has no agent: {body}");
    let (_, ready) = fleet.get_as(&relay, &fleet.token, "/readyz").await;
    assert_eq!(ready["domains"][DOMAIN]["agent_connected"], true, "{ready}");

    // Silent with its stream open: down once two heartbeat intervals pass without a heartbeat.
    quiet.fall_silent();
    let silent_since = Instant::now();
    tokio::time::sleep(HEARTBEAT).await;
    assert_eq!(state_of(&fleet.agents(&relay).await, "site-quiet").as_deref(), Some("connected"), "one interval");
    // Its last heartbeat went out at most HEARTBEAT / 2 before it fell silent, so it is down two
    // intervals after that at the latest (the relay closes a stream only after three).
    let limit = 2 * HEARTBEAT + Duration::from_millis(500);
    let down = eventually(limit.saturating_sub(silent_since.elapsed()), || async {
        state_of(&fleet.agents(&relay).await, "site-quiet").as_deref() == Some("down")
    })
    .await;
    let took = silent_since.elapsed();
    assert!(
        down && took <= limit,
        "the silent agent is down within two heartbeat intervals ({} ms): {}",
        took.as_millis(),
        fleet.agents(&relay).await
    );
    eprintln!("fleet: a silent agent showed down {} ms after it fell silent", took.as_millis());
    let body = fleet.agents(&relay).await;
    assert_eq!(body["domains_without_agent"], json!([DOMAIN, OTHER]), "{body}");
    let (_, ready) = fleet.get_as(&relay, &fleet.token, "/readyz").await;
    assert_eq!(ready["domains"][DOMAIN]["agent_connected"], false, "{ready}");

    // Killed: its connection ends without a goodbye, and the agent is down at once.
    let killed =
        fleet.stand_in(&relay, "site-killed", &[OTHER], vec![health(OTHER, vec![dc("ldaps://dc", true, None)])]);
    assert!(
        eventually(Duration::from_secs(10), || async {
            state_of(&fleet.agents(&relay).await, "site-killed").as_deref() == Some("connected")
        })
        .await
    );
    let killed_at = Instant::now();
    killed.kill();
    let down = eventually(2 * HEARTBEAT, || async {
        state_of(&fleet.agents(&relay).await, "site-killed").as_deref() == Some("down")
    })
    .await;
    assert!(down, "the killed agent is down: {}", fleet.agents(&relay).await);
    eprintln!("fleet: a killed agent showed down {} ms after its connection dropped", killed_at.elapsed().as_millis());
    let body = fleet.agents(&relay).await;
    let kept = agent(&body, "site-killed").expect("still known");
    assert_eq!(kept["directories"][0]["dcs"][0]["name"], "ldaps://dc", "its last DC health is kept: {body}");
    drop(quiet);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_client_sees_only_its_agents_their_domains_and_health() {
    let fleet = Fleet::new(StoreKind::Sqlite).await;
    let relay = fleet.start_relay().await;
    let _corp =
        fleet.stand_in(&relay, "site-corp", &[DOMAIN], vec![health(DOMAIN, vec![dc("ldaps://c1", true, Some(3))])]);
    let _other = fleet.stand_in(
        &relay,
        "site-other",
        &[OTHER],
        vec![health(OTHER, vec![dc("ldaps://o1.other.test", true, None)])],
    );
    let _both = fleet.stand_in(
        &relay,
        "site-both",
        &[DOMAIN, OTHER],
        vec![
            health(DOMAIN, vec![dc("ldaps://c2", true, None)]),
            health(OTHER, vec![dc("ldaps://o2.other.test", false, None)]),
        ],
    );
    let all_up = eventually(Duration::from_secs(10), || async {
        let body = fleet.agents(&relay).await;
        ["site-corp", "site-other", "site-both"].iter().all(|n| {
            agent(&body, n).is_some_and(|a| {
                a["state"] == "connected" && a["directories"].as_array().is_some_and(|d| !d.is_empty())
            })
        })
    })
    .await;
    assert!(all_up, "{}", fleet.agents(&relay).await);
    let everything = fleet.agents(&relay).await;
    assert_eq!(everything["domains_without_agent"], json!([]));
    assert_eq!(agent(&everything, "site-both").expect("both")["directories"].as_array().map(Vec::len), Some(2));

    let (status, scoped) = fleet.get_as(&relay, &fleet.scoped, "/v1/agents").await;
    assert_eq!(status, 200, "{scoped}");
    let names: Vec<&str> =
        scoped["agents"].as_array().expect("list").iter().filter_map(|a| a["name"].as_str()).collect();
    assert_eq!(names, ["site-both", "site-corp"], "{scoped}");
    for shown in scoped["agents"].as_array().expect("list") {
        assert_eq!(shown["domains"], json!([DOMAIN]), "{scoped}");
        let domains: Vec<&Value> =
            shown["directories"].as_array().expect("health").iter().map(|d| &d["domain"]).collect();
        assert_eq!(domains, [DOMAIN], "only the covered domain's health: {scoped}");
    }
    let both = agent(&scoped, "site-both").expect("both");
    assert!(both.get("jobs").is_none(), "job counts that include other.test stay hidden: {scoped}");
    assert_eq!(agent(&scoped, "site-corp").expect("corp")["jobs"]["done"], 0);
    assert_eq!(scoped["domains_without_agent"], json!([]));
    let text = scoped.to_string();
    assert!(!text.contains(OTHER) && !text.contains("site-other"), "nothing of other.test: {text}");

    let (status, _) = fleet.get_as(&relay, &SecretString::new("not-a-token".into()), "/v1/agents").await;
    assert_eq!(status, 401, "no token, no fleet");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_command_lists_shows_and_forgets_only_agents_that_are_gone() {
    let fleet = Fleet::new(StoreKind::Sqlite).await;
    let relay = fleet.start_relay().await;
    let stays =
        fleet.stand_in(&relay, "site-stays", &[DOMAIN], vec![health(DOMAIN, vec![dc("ldaps://dc1", true, Some(4))])]);
    let goes = fleet.stand_in(&relay, "site-goes", &[OTHER], vec![]);
    assert!(
        eventually(Duration::from_secs(10), || async {
            let body = fleet.agents(&relay).await;
            state_of(&body, "site-stays").as_deref() == Some("connected")
                && state_of(&body, "site-goes").as_deref() == Some("connected")
                && agent(&body, "site-stays")
                    .is_some_and(|a| a["directories"].as_array().is_some_and(|d| !d.is_empty()))
        })
        .await
    );
    let (code, out, err) = fleet.cli(&["list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let list: Value = serde_json::from_str(&out).expect("JSON");
    let names: Vec<&str> = list.as_array().expect("array").iter().filter_map(|a| a["name"].as_str()).collect();
    assert_eq!(names, ["site-goes", "site-stays"]);
    assert!(list.as_array().expect("array").iter().all(|a| a["state"] == "connected"), "{out}");
    let (code, out, _) = fleet.cli(&["list"]);
    assert_eq!(code, 0);
    assert!(out.lines().next().is_some_and(|l| l.starts_with("NAME")), "a table: {out}");
    assert!(out.lines().any(|l| l.starts_with("site-stays") && l.contains("connected") && l.contains("ok")), "{out}");
    let (code, out, _) = fleet.cli(&["show", "site-stays", "--json"]);
    assert_eq!(code, 0);
    let shown: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(shown["directories"][0]["dcs"][0]["latency_ms"], 4, "{out}");
    let (code, out, _) = fleet.cli(&["show", "site-stays"]);
    assert_eq!(code, 0);
    assert!(out.contains("state:        connected") && out.contains("ldaps://dc1 bind ok in 4 ms"), "{out}");
    assert_eq!(fleet.cli(&["show", "nobody"]).0, 2, "an unknown agent");

    let (code, _, err) = fleet.cli(&["forget", "site-goes"]);
    assert_eq!(code, 1, "a connected agent is not forgotten: {err}");
    assert!(err.contains("connected") && err.contains("--force"), "{err}");
    goes.kill();
    assert!(
        eventually(Duration::from_secs(10), || async {
            state_of(&fleet.agents(&relay).await, "site-goes").as_deref() == Some("down")
        })
        .await
    );
    let (code, _, err) = fleet.cli(&["forget", "site-goes"]);
    assert_eq!(code, 0, "{err}");
    let body = fleet.agents(&relay).await;
    assert!(agent(&body, "site-goes").is_none(), "forgotten: {body}");
    assert_eq!(fleet.cli(&["forget", "site-goes"]).0, 2, "already gone");

    let (code, _, err) = fleet.cli(&["forget", "site-stays", "--force"]);
    assert_eq!(code, 0, "{err}");
    // Still connected: its next heartbeat records it again.
    assert!(
        eventually(Duration::from_secs(10), || async {
            state_of(&fleet.agents(&relay).await, "site-stays").as_deref() == Some("connected")
        })
        .await,
        "a forced forget of a connected agent lasts until its next heartbeat"
    );
    drop(stays);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_on_the_same_postgres_shows_the_agent_connected_to_the_first() {
    let test = "a_second_replica_on_the_same_postgres_shows_the_agent_connected_to_the_first";
    let Some(server) = support::postgres::PgServer::for_test(test) else { return };
    let store_lines = server.store_lines(&server.fresh_database().await);
    let fleet = Fleet::new(StoreKind::Postgres(store_lines)).await;
    let first = fleet.start_relay().await;
    let second = fleet.start_relay().await;
    let agent_of_first =
        fleet.stand_in(&first, "site-one", &[DOMAIN], vec![health(DOMAIN, vec![dc("ldaps://dc1", true, Some(5))])]);
    let seen = eventually(Duration::from_secs(10), || async {
        let body = fleet.agents(&second).await;
        state_of(&body, "site-one").as_deref() == Some("connected")
            && agent(&body, "site-one").is_some_and(|a| a["directories"][0]["dcs"][0]["latency_ms"] == 5)
    })
    .await;
    let on_second = fleet.agents(&second).await;
    assert!(seen, "the second replica shows the agent of the first: {on_second}");
    let on_first = fleet.agents(&first).await;
    assert_eq!(agent(&on_first, "site-one").map(|a| &a["stream"]), agent(&on_second, "site-one").map(|a| &a["stream"]));
    assert_eq!(on_second["domains_without_agent"], json!([OTHER]), "{on_second}");
    let (_, ready) = fleet.get_as(&second, &fleet.token, "/readyz").await;
    assert_eq!(ready["domains"][DOMAIN]["agent_connected"], true, "readiness on the second replica: {ready}");
    let url = format!("https://127.0.0.1:{}/v1/rotations", second.api.port());
    let body = json!({ "domain": DOMAIN, "target": { "upn": "someone@corp.test" }, "password": "Replica!Passw0rd-77" });
    let accepted =
        fleet.http.post(url).bearer_auth(fleet.token.expose_secret()).json(&body).send().await.expect("answer");
    assert_eq!(accepted.status().as_u16(), 202);
    let accepted: Value = accepted.json().await.expect("JSON");
    assert_eq!(accepted["agent_connected"], true, "the second replica knows corp.test is served: {accepted}");

    agent_of_first.kill();
    let down = eventually(2 * HEARTBEAT, || async {
        state_of(&fleet.agents(&second).await, "site-one").as_deref() == Some("down")
    })
    .await;
    assert!(down, "the second replica sees the agent go down: {}", fleet.agents(&second).await);
    second.stop().await;
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_agent_appears_connected_with_its_dc_health_and_counts_its_jobs() {
    let world = World::new(&[]).await;
    let relay = world.start_relay().await;
    let dc = world.dc;
    let real = world.start_agent(&relay, "site-real", &[&dc.domain], &[&dc.domain]).await;
    let healthy = eventually(Duration::from_secs(20), || async {
        let (_, body) = world.get(&relay, "/v1/agents").await;
        agent(&body, "site-real")
            .is_some_and(|a| a["state"] == "connected" && a["directories"][0]["dcs"][0]["bind_ok"] == true)
    })
    .await;
    let (_, body) = world.get(&relay, "/v1/agents").await;
    assert!(healthy, "the agent shows connected and bound to the DC: {body}");
    let shown = agent(&body, "site-real").expect("listed");
    assert_eq!(shown["domains"], json!([dc.domain.as_str()]));
    assert_eq!(shown["directories"][0]["bind_ok"], true, "{body}");
    assert_eq!(shown["directories"][0]["dcs"][0]["name"], dc.ldaps_url.as_str(), "{body}");
    assert!(shown["directories"][0]["dcs"][0]["latency_ms"].is_u64(), "the bind is timed: {body}");
    assert_eq!(shown["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["domains_without_agent"], json!([]));

    let user = world.user("flt").await;
    let id = world
        .rotate(
            &relay,
            json!({ "domain": dc.domain.as_str(), "target": { "upn": user.upn }, "password": "Fleet!Passw0rd-31" }),
        )
        .await;
    let job = world.wait_final(&relay, &id, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let counted = eventually(3 * HEARTBEAT, || async {
        let (_, body) = world.get(&relay, "/v1/agents").await;
        agent(&body, "site-real").is_some_and(|a| a["jobs"]["done"] == 1)
    })
    .await;
    assert!(
        counted,
        "the finished job is counted with the next heartbeat: {}",
        world.get(&relay, "/v1/agents").await.1
    );

    real.stop().await;
    let down = eventually(2 * HEARTBEAT, || async {
        let (_, body) = world.get(&relay, "/v1/agents").await;
        state_of(&body, "site-real").as_deref() == Some("down")
    })
    .await;
    assert!(down, "a stopped agent is down: {}", world.get(&relay, "/v1/agents").await.1);
    let (_, body) = world.get(&relay, "/v1/agents").await;
    assert_eq!(body["domains_without_agent"], json!([dc.domain.as_str()]));
    relay.stop().await;
}
