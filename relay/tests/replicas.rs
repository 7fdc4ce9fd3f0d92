//! Several relay replicas sharing one PostgreSQL store.
//!
//! - Wake-ups cross replicas: a job accepted by one replica reaches an agent connected to another
//!   within milliseconds, through the store's notifications, not the sessions' claim timer.
//! - Real processes: three `pwrelay` replicas on one database, two `pwrelay-agent`s against the
//!   Samba DC (connected to different replicas), API calls spread over the replicas, one replica
//!   SIGKILLed mid-run: every job ends correct in the directory (the fault suite's checks, LDAP
//!   binds included), every webhook reaches a local receiver, and every new hire's workflow is
//!   resumed exactly once. It reuses the fault suite's deployment, workload and checks.
//!
//! These tests need a PostgreSQL server (`deploy/dev/postgres.sh start`, then
//! `eval "$(deploy/dev/postgres.sh env)"`); without `PWRELAY_TEST_POSTGRES_URL` they say so and pass.

#[allow(dead_code, unreachable_pub)]
#[path = "fault_suite/api.rs"]
mod api;
#[allow(dead_code, unreachable_pub)]
#[path = "fault_suite/deployment.rs"]
mod deployment;
#[allow(dead_code, unreachable_pub)]
#[path = "fault_suite/directory.rs"]
mod directory;
#[allow(dead_code, unreachable_pub)]
#[path = "fault_suite/faults.rs"]
mod faults;
#[allow(dead_code, unreachable_pub)]
#[path = "fault_suite/figures.rs"]
mod figures;
#[allow(dead_code, unreachable_pub)]
#[path = "fault_suite/new_hires.rs"]
mod new_hires;
#[allow(dead_code, unreachable_pub)]
#[path = "fault_suite/params.rs"]
mod params;
#[allow(dead_code, unreachable_pub)]
#[path = "fault_suite/processes.rs"]
mod processes;
mod support;
#[allow(dead_code, unreachable_pub)]
#[path = "fault_suite/workload.rs"]
mod workload;

use support::cloud;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pwrelay_proto::agent::v1 as pb;
use pwrelay_shared::domain::DomainName;
use pwrelay_shared::secret::SecretString;
use pwrelay_shared::testkit::TestPki;
use pwrelay_shared::tls::{self, TrustAnchors};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use support::link;
use support::postgres::PgServer;

const DOMAIN: &str = "corp.test";

/// Replicas in this process (real `App`s), sharing one directory (PKI, store key) and one database.
struct Replicas {
    dir: tempfile::TempDir,
    pki: TestPki,
    anchors: TrustAnchors,
    token: SecretString,
    running: Vec<Replica>,
}

struct Replica {
    api: SocketAddr,
    link: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), pwrelay_relay::app::AppError>>,
}

impl Replicas {
    /// `count` replicas whose claim loops look for jobs unwoken every `claim_interval_ms`.
    async fn start(server: &PgServer, count: usize, claim_interval_ms: u64) -> Self {
        support::logs();
        let dir = tempfile::tempdir().expect("temp dir");
        let pki_dir = dir.path().join("pki");
        std::fs::create_dir_all(&pki_dir).expect("pki dir");
        let pki = TestPki::create(&pki_dir);
        let key = pwrelay_relay::seal::Sealer::generate_key_text().expect("key");
        pwrelay_shared::pki::write_private(&dir.path().join("store.key"), &key, true).expect("store key");
        let url = server.fresh_database().await;
        let toml = format!(
            "domains = [\"{DOMAIN}\"]\n\n[api]\nlisten = \"127.0.0.1:0\"\ncert_file = \"pki/relay.pem\"\n\
             key_file = \"pki/relay.key\"\n\n[link]\nlisten = \"127.0.0.1:0\"\ncert_file = \"pki/relay.pem\"\n\
             key_file = \"pki/relay.key\"\nagent_ca_file = \"pki/ca.pem\"\nheartbeat_seconds = 2\nlease_seconds = 30\n\
             claim_interval_ms = {claim_interval_ms}\n\n[webhooks]\npoll_seconds = 30\n\n{}key_file = \"store.key\"\n",
            server.store_section(&url)
        );
        let config_path = dir.path().join("relay.toml");
        std::fs::write(&config_path, toml).expect("relay.toml");
        let mut running = Vec::new();
        for _ in 0..count {
            let config = pwrelay_relay::Config::load(&config_path, &Default::default()).expect("config");
            let app = pwrelay_relay::App::build(config).await.expect("replica builds");
            let (api, link) = (app.api_addr(), app.link_addr());
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(app.run(async move {
                let _ = stopped.await;
            }));
            running.push(Replica { api, link, stop: Some(stop), task });
        }
        let config = pwrelay_relay::Config::load(&config_path, &Default::default()).expect("config");
        let store = pwrelay_relay::store::open(&config.store).await.expect("store");
        let (token, hash) = pwrelay_relay::api::auth::new_token().expect("token");
        store.add_client("replicas-pam", hash, &Default::default()).await.expect("client");
        let anchors = TrustAnchors::from_file(&pki_dir.join("ca.pem")).expect("ca");
        Self { dir, pki, anchors, token, running }
    }

    fn http(&self) -> reqwest::Client {
        let config = (*tls::https_client(&self.anchors).expect("tls")).clone();
        reqwest::Client::builder().use_preconfigured_tls(config).timeout(Duration::from_secs(30)).build().expect("http")
    }

    async fn stop(self) {
        for mut replica in self.running {
            if let Some(stop) = replica.stop.take() {
                let _ = stop.send(());
            }
            let stopped = tokio::time::timeout(Duration::from_secs(20), &mut replica.task).await;
            assert!(matches!(stopped, Ok(Ok(Ok(())))), "replica stops cleanly: {stopped:?}");
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// An agent stream to `link`, as a real agent opens it, that reports every job it is sent (and
/// never answers it).
async fn agent_stand_in(replicas: &Replicas, link: SocketAddr, name: &str) -> mpsc::Receiver<(String, Instant)> {
    let dir = replicas.path(&format!("agent-{name}"));
    std::fs::create_dir_all(&dir).expect("agent dir");
    let domain = DomainName::parse(DOMAIN).expect("domain");
    replicas.pki.issue_agent(name, &[&domain], &dir);
    let channel = link::channel(link::agent_tls(&dir, &replicas.anchors), link).await;
    let hello = link::hello("0.0.0-replicas", &[DOMAIN], 64);
    let (tx, mut inbound) = link::open(channel, hello, 8).await.expect("stream opens");
    let (jobs_tx, jobs_rx) = mpsc::channel(64);
    // A heartbeat every second, so the relay keeps the stream (it ends silent ones).
    tokio::spawn(async move {
        for sequence in 1.. {
            if tx.send(link::heartbeat(sequence, Vec::new())).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    tokio::spawn(async move {
        while let Ok(Some(message)) = inbound.message().await {
            if let Some(pb::relay_message::Body::Job(job)) = message.body {
                let _ = jobs_tx.send((job.id, Instant::now())).await;
            }
        }
    });
    jobs_rx
}

/// Each replica's claim loop looks on its timer besides its wake-ups: a job that reaches the
/// other replica's agent in under 300 ms, eight times in a row, came through the notification
/// (by the timer alone, each would have a chance of at most 0.3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_accepted_by_one_replica_is_woken_to_an_agent_on_another_not_found_by_the_timer() {
    let Some(server) =
        PgServer::for_test("a_job_accepted_by_one_replica_is_woken_to_an_agent_on_another_not_found_by_the_timer")
    else {
        return;
    };
    // The claim loops' own look for jobs is 30 s apart: a job that reaches the agent in seconds was
    // brought by the notification, not found by the timer.
    let replicas = Replicas::start(&server, 2, 30_000).await;
    let (a, b) = (&replicas.running[0], &replicas.running[1]);
    let mut jobs = agent_stand_in(&replicas, b.link, "agent-on-b").await;
    let http = replicas.http();
    // The stand-in is connected once replica B lists it (B's registry).
    assert!(
        support::eventually(Duration::from_secs(10), || async {
            let agents = http
                .get(format!("https://127.0.0.1:{}/v1/agents", b.api.port()))
                .bearer_auth(replicas.token.expose_secret())
                .send()
                .await;
            match agents {
                Ok(r) => r
                    .json::<serde_json::Value>()
                    .await
                    .is_ok_and(|v| v["agents"].as_array().is_some_and(|a| a.iter().any(|a| a["state"] == "connected"))),
                Err(_) => false,
            }
        })
        .await,
        "the agent stand-in connects to replica B"
    );
    let mut latencies = Vec::new();
    for n in 0..8 {
        // Past the claim the stream makes when it opens, and at no fixed phase to it.
        tokio::time::sleep(Duration::from_millis(137 * (n + 1))).await;
        let body = json!({"domain": DOMAIN, "target": {"upn": format!("user{n}@{DOMAIN}")}, "password": "Correct-Horse-7-Battery"});
        let sent = Instant::now();
        let response = http
            .post(format!("https://127.0.0.1:{}/v1/rotations", a.api.port()))
            .bearer_auth(replicas.token.expose_secret())
            .json(&body)
            .send()
            .await
            .expect("replica A answers");
        assert_eq!(response.status().as_u16(), 202, "accepted by A");
        let job_id =
            response.json::<serde_json::Value>().await.expect("json")["job_id"].as_str().expect("job id").to_owned();
        let (received, at) = tokio::time::timeout(Duration::from_secs(10), jobs.recv())
            .await
            .expect("the job reaches the agent on B")
            .expect("stream open");
        assert_eq!(received, job_id);
        latencies.push(at.duration_since(sent));
    }
    println!("accepted by A → sent by B to its agent: {latencies:?}");
    // 12-43 ms each on an idle machine; the bound only has to be well
    // below the 30 s timer, so a loaded machine does not fail it.
    let slow: Vec<_> = latencies.iter().filter(|l| **l >= Duration::from_secs(10)).collect();
    assert!(slow.is_empty(), "every job was woken across replicas, not found by the 30 s timer: {latencies:?}");
    replicas.stop().await;
}

/// What the webhook receiver got: every body, in order.
type Received = std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>;

/// A webhook receiver on 127.0.0.1 (http to the loopback interface is allowed) that answers 204.
async fn webhook_receiver() -> (u16, Received) {
    let received: Received = Default::default();
    let keep = std::sync::Arc::clone(&received);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let keep = std::sync::Arc::clone(&keep);
            async move {
                if let Ok(event) = serde_json::from_slice::<serde_json::Value>(&body) {
                    keep.lock().expect("received").push(event);
                }
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("receiver binds");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, received)
}

/// Whether the relay on `port` answers `/healthz`.
async fn relay_healthy(ca_file: &Path, port: u16) -> bool {
    let anchors = TrustAnchors::from_file(ca_file).expect("the relay's CA loads");
    let config = (*tls::https_client(&anchors).expect("tls")).clone();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(Duration::from_secs(2))
        .build()
        .expect("http client");
    http.get(format!("https://127.0.0.1:{port}/healthz")).send().await.is_ok_and(|r| r.status().as_u16() == 200)
}

/// A progress line with the time since the run started.
macro_rules! step {
    ($started:expr, $($arg:tt)*) => {
        println!("==> [{:>5.0}s] {}", $started.elapsed().as_secs_f64(), format!($($arg)*))
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_finish_every_job_webhook_and_new_hire_when_one_is_killed_mid_run() {
    const TEST: &str = "three_replicas_finish_every_job_webhook_and_new_hire_when_one_is_killed_mid_run";
    let Some(server) = PgServer::for_test(TEST) else { return };
    pwrelay_shared::tls::install_default_provider();
    let seed = std::env::var("REPLICAS_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| rand::random::<u64>() % 1_000_000_000);
    let params = params::Params {
        seed,
        jobs: 60,
        accounts: 12,
        fault_phase: Duration::from_secs(45),
        drain: Duration::from_secs(90),
        lease: Duration::from_secs(8),
        mean_fault_gap: Duration::from_secs(3),
        new_hires: 6,
        keep_dir: std::env::var_os("REPLICAS_KEEP_DIR").is_some(),
        postgres: true,
        replicas: 3,
    };
    println!(
        "==> {TEST}: REPLICAS_SEED={seed}, {} jobs over {} accounts, {} new hires",
        params.jobs, params.accounts, params.new_hires
    );
    let started = tokio::time::Instant::now();
    let bins = tokio::task::spawn_blocking(deployment::Binaries::locate).await.expect("the agent binary is located");
    let dc = pwrelay_shared::testkit::dc();
    let ou = dc.create_ou("replicas").await;
    let service = dc.create_service_account(&ou).await;
    dc.delegate_password_rights(&ou, &service).await;
    let mut users = Vec::new();
    for _ in 0..params.accounts {
        users.push(dc.create_user_in(&ou, "rep").await);
    }
    let dir = tempfile::Builder::new().prefix("pwrelay-fault-replicas-").tempdir().expect("a temporary directory");
    let store = server.store_section(&server.fresh_database().await);
    let mut deployment =
        deployment::Deployment::create(dir.path(), &bins, &params, dc, &ou, &service, Some(store.as_str()));
    let (receiver_port, received) = webhook_receiver().await;
    let set = std::process::Command::new(&bins.relay)
        .args(["clients", "webhook", "set", "fault-pam", "--url", &format!("http://127.0.0.1:{receiver_port}/hook")])
        .arg("--config")
        .arg(&deployment.relays[0].toml)
        .output()
        .expect("pwrelay clients webhook set runs");
    assert!(set.status.success(), "webhook set: {}", String::from_utf8_lossy(&set.stderr));
    let hires = std::sync::Arc::new(new_hires::NewHires::prepare(&deployment, &bins, &params, dc, &ou).await);

    step!(started, "starting 3 replicas on one PostgreSQL database and 2 agents (on relay-1 and relay-2)");
    for relay in &mut deployment.relays {
        relay.service.start();
    }
    for relay in &deployment.relays {
        let port = relay.api_port;
        assert!(
            faults::wait_until(Duration::from_secs(30), || relay_healthy(&deployment.ca_file, port)).await,
            "{} answers /healthz; see {}",
            relay.service.name,
            relay.service.log().display()
        );
    }
    for agent in &mut deployment.agents {
        agent.service.start();
    }
    for agent in &deployment.agents {
        let port = agent.health_port;
        assert!(
            faults::wait_until(Duration::from_secs(30), || api::agent_ready(port)).await,
            "{} becomes ready; see {}",
            agent.service.name,
            agent.service.log().display()
        );
    }

    let phase_started = tokio::time::Instant::now();
    let phase_end = phase_started + params.fault_phase;
    let hard_deadline = phase_end + params.drain;
    let per_account = params.jobs / params.accounts;
    let progress = std::sync::Arc::new(workload::Progress::default());
    let shared = std::sync::Arc::new(workload::Shared {
        api: api::Api::new(&deployment),
        domain: dc.domain.to_string(),
        seed,
        recipient: crypto_box::SecretKey::generate(&mut crypto_box::aead::OsRng),
        progress: std::sync::Arc::clone(&progress),
        schedule: workload::Schedule {
            phase_end,
            hard_deadline,
            mean_think: params.fault_phase.mul_f64(0.7 / per_account.max(1) as f64),
        },
    });
    let mut workers = tokio::task::JoinSet::new();
    for (index, user) in users.into_iter().enumerate() {
        workers.spawn(workload::run_account(std::sync::Arc::clone(&shared), index, user, per_account));
    }
    let hire_task = {
        let (hires, shared) = (std::sync::Arc::clone(&hires), std::sync::Arc::clone(&shared));
        tokio::spawn(async move { hires.run(shared).await })
    };

    // One replica dies mid-run and stays down past replicas::DEAD_AFTER (20 s): the others take
    // its claims over and re-issue the new hires whose link keys died with it; then it starts
    // again and its agent reconnects. The SMS gateway fails for a while before, so deliveries
    // retry, holding their keys: the replica killed is the first whose log shows it sending a link
    // (relay-2 if none does by 60 % of the phase).
    tokio::time::sleep(params.fault_phase.mul_f64(0.15)).await;
    step!(started, "the SMS gateway fails from now on ({})", progress.line());
    hires.sms_outage(true);
    let logs: Vec<PathBuf> = deployment.relays.iter().map(|r| r.service.log().to_owned()).collect();
    let sending = |logs: &[PathBuf]| {
        logs.iter().position(|log| std::fs::read_to_string(log).unwrap_or_default().contains("sending the link by SMS"))
    };
    let kill_by = phase_started + params.fault_phase.mul_f64(0.6);
    faults::wait_until(kill_by.saturating_duration_since(tokio::time::Instant::now()), || {
        let found = sending(&logs).is_some();
        async move { found }
    })
    .await;
    let killed_while_sending = sending(&logs).is_some();
    let (victim, why) = match sending(&logs) {
        Some(n) => (n, "while it sends a link"),
        None => (1, "no replica was sending a link"),
    };
    let name = deployment.relays[victim].service.name.clone();
    step!(started, "SIGKILL {name} ({why}; {})", progress.line());
    deployment.relays[victim].service.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    hires.sms_outage(false);
    tokio::time::sleep(Duration::from_secs(22)).await;
    step!(started, "starting {name} again ({})", progress.line());
    deployment.relays[victim].service.start();
    tokio::time::sleep_until(phase_end).await;

    step!(started, "waiting (at most {}s) for the remaining jobs and new hires", params.drain.as_secs());
    let mut accounts = Vec::new();
    let join_limit = hard_deadline + Duration::from_secs(120);
    while let Some(joined) =
        tokio::time::timeout_at(join_limit, workers.join_next()).await.expect("the account workers end by themselves")
    {
        accounts.push(joined.expect("an account's worker does not panic"));
    }
    accounts.extend(
        tokio::time::timeout_at(join_limit, hire_task)
            .await
            .expect("the new hires' worker ends by itself")
            .expect("the new hires' worker does not panic"),
    );
    println!("    all workers done: {}", progress.line());

    // Every final job of the PAM client reaches the receiver (retries included: wait for them).
    let final_jobs: std::collections::BTreeSet<String> = accounts
        .iter()
        .flat_map(|a| &a.jobs)
        .filter(|j| j.kind != workload::Kind::Initial && j.is_final())
        .filter_map(|j| j.id.clone())
        .collect();
    let delivered = || -> std::collections::BTreeMap<String, usize> {
        let mut by_job = std::collections::BTreeMap::new();
        for event in received.lock().expect("received").iter() {
            if let Some(id) = event["job"]["job_id"].as_str() {
                *by_job.entry(id.to_owned()).or_insert(0) += 1;
            }
        }
        by_job
    };
    faults::wait_until(Duration::from_secs(60), || {
        let all = final_jobs.iter().all(|id| delivered().contains_key(id));
        async move { all }
    })
    .await;
    let by_job = delivered();
    let undelivered: Vec<String> = final_jobs.iter().filter(|id| !by_job.contains_key(*id)).cloned().collect();
    let twice: Vec<String> = by_job.iter().filter(|(_, n)| **n > 1).map(|(id, n)| format!("{id} ×{n}")).collect();

    // Every new hire's workflow is resumed exactly once.
    let resumes = hires.resumes();
    let mut resumed: std::collections::BTreeMap<&str, Vec<&str>> = std::collections::BTreeMap::new();
    for (id, status) in &resumes {
        resumed.entry(id.as_str()).or_default().push(status.as_str());
    }
    let not_once: Vec<String> =
        resumed.iter().filter(|(_, s)| s.len() != 1).map(|(id, s)| format!("{id}: {s:?}")).collect();
    let reissued = deployment
        .log_files()
        .iter()
        .map(|log| std::fs::read_to_string(log).unwrap_or_default().matches("lifecycle.reissued").count())
        .sum::<usize>();

    let scanned = figures::ScannedFiles {
        logs: deployment.log_files(),
        store: deployment.store_files(),
        agent_state: deployment.agent_state_files(),
    };
    deployment.stop();
    let mut report = figures::check(dc, &accounts, &deployment.audit_logs(), &[scanned]).await;
    report.figures.push(figures::Figure {
        name: "final jobs whose webhook never arrived",
        value: undelivered.len(),
        examples: undelivered,
    });
    report.figures.push(figures::Figure {
        name: "new hires not resumed exactly once",
        value: not_once.len() + params.new_hires.saturating_sub(resumed.len()),
        examples: not_once,
    });
    report.figures.push(figures::Figure {
        name: "a replica died sending a link, and no new hire was re-issued",
        value: usize::from(killed_while_sending && reissued == 0),
        examples: Vec::new(),
    });
    report.notes.push(("final jobs of the PAM client".into(), final_jobs.len().to_string()));
    report.notes.push(("webhooks received more than once (allowed: at least once)".into(), twice.len().to_string()));
    report.notes.push(("new hires re-issued after their replica died".into(), reissued.to_string()));
    report.notes.push(("new hires".into(), hires.count().to_string()));
    report.notes.push(("whole run (s)".into(), started.elapsed().as_secs().to_string()));
    report.print(&format!("==> figures, REPLICAS_SEED={seed}"));
    let failures: Vec<String> = report.failures().iter().map(|f| format!("{} = {}", f.name, f.value)).collect();
    if !failures.is_empty() || params.keep_dir {
        println!("the run's directory is kept for inspection: {}", dir.keep().display());
    }
    assert!(failures.is_empty(), "REPLICAS_SEED={seed}: {}", failures.join("; "));
}
