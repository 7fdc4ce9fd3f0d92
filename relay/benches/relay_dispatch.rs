//! Relay dispatch: how many jobs a relay takes from accepted to final per second when its agents
//! answer at once, the accept→dispatch latency, and the memory of a relay holding many idle agent
//! streams. The relay runs as real `pwrelay` processes (release build, this package's binary);
//! the agents are stand-ins in this process: real mTLS gRPC streams on the agent link that answer
//! every job with a success as soon as it arrives and send heartbeats at the interval the relay
//! asks for.
//!
//!     cargo bench -p pwrelay-relay --bench relay_dispatch -- dispatch [--jobs N] [--agents A] [--dir D]
//!     cargo bench -p pwrelay-relay --bench relay_dispatch -- dispatch --replicas 1,2,3   # PostgreSQL
//!     cargo bench -p pwrelay-relay --bench relay_dispatch -- idle [--streams N]
//!
//! `dispatch` submits N jobs (default 20,000) as `POST /v1/reconciliations` batches of 1,000 (two
//! requests in flight, spread over the replicas), so the HTTP client is not what is measured,
//! while A agent stand-ins (default 4 per replica, each asking for 64 jobs in flight, the most the
//! relay grants) answer them. It prints jobs/s from the first POST until the last result is
//! acknowledged, the rate the API accepted them at, and, from the relay's own job records
//! (`GET /v1/jobs`), accept→dispatch (`dispatched_at - created_at`) and accept→final latency.
//! `--rate R` paces the submissions to R jobs/s (latency below saturation). The store is SQLite in
//! `D` (default: a temporary directory under /tmp; `--dir /dev/shm` takes the disk's syncs out),
//! or with `--replicas` a fresh database on the PostgreSQL of `deploy/dev/postgres.sh`
//! (`PWRELAY_TEST_POSTGRES_URL` and its companions from `deploy/dev/postgres.sh env`).
//!
//! `idle` connects N stand-ins (default 10,000; one certificate and one TLS client configuration)
//! that only heartbeat, to one relay on SQLite, and prints the relay process's VmRSS before and
//! after, and its CPU use while they idle. The open-file limit is raised to its hard limit.

#[allow(dead_code, unreachable_pub)]
#[path = "../tests/support/link.rs"]
mod link;
#[allow(dead_code, unreachable_pub)]
#[path = "../tests/support/postgres.rs"]
mod postgres;

use std::net::{SocketAddr, TcpListener, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pwrelay_proto::agent::v1 as pb;
use pwrelay_shared::tls::{self, TrustAnchors};
use serde_json::{Value, json};

const DOMAIN: &str = "corp.test";
/// Accounts per reconciliation (the API's most).
const BATCH: usize = 1000;
/// Jobs a stand-in asks for at once (the relay grants at most 64).
const STAND_IN_IN_FLIGHT: u32 = 64;

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok())
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("address").port()
}

/// The `pwrelay` binary of this build.
fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pwrelay"))
}

/// Runs `pwrelay` with `args` to completion; its standard output.
fn pwrelay(args: &[&str]) -> String {
    let output = Command::new(binary()).args(args).output().expect("the pwrelay binary runs");
    assert!(output.status.success(), "pwrelay {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// CPU seconds (user + system) of process `pid`.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let Some((_, rest)) = stat.rsplit_once(") ") else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    (fields[11].parse::<f64>().unwrap_or(0.0) + fields[12].parse::<f64>().unwrap_or(0.0)) / 100.0
}

/// VmRSS of process `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Open file descriptors of process `pid` (its streams, plus a few files and listeners).
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// The PKI, store key, API client and configurations of the relays, in one directory.
struct Deployment {
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    anchors: TrustAnchors,
    token: String,
    relays: Vec<Relay>,
}

struct Relay {
    api: u16,
    link: u16,
    child: Child,
}

impl Relay {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Deployment {
    /// `replicas` relays on `store` (a `[store]` section without `key_file`), with `link` added to
    /// their `[link]` section.
    fn start(base: Option<&Path>, store: &str, replicas: usize, link: &str) -> Self {
        let temp = tempfile::Builder::new().prefix("pwrelay-bench-").tempdir_in(base.unwrap_or(Path::new("/tmp")));
        let temp = temp.expect("temporary directory");
        let dir = temp.path().to_owned();
        let path = |p: &str| dir.join(p).display().to_string();
        pwrelay(&["pki", "init", "--dir", &path("pki"), "--relay-name", "localhost", "--relay-name", "127.0.0.1"]);
        pwrelay(&["store-key", "generate", "--out", &path("store.key")]);
        let mut tomls = Vec::new();
        let mut ports = Vec::new();
        for n in 0..replicas {
            let (api, link_port) = (free_port(), free_port());
            let toml = dir.join(format!("relay-{n}.toml"));
            std::fs::write(
                &toml,
                format!(
                    "domains = [\"{DOMAIN}\"]\n\n[api]\nlisten = \"127.0.0.1:{api}\"\ncert_file = \"pki/relay.pem\"\n\
                     key_file = \"pki/relay.key\"\n\n[api.limits]\nrequests_per_second_per_client = 10000\n\
                     burst_per_client = 10000\n\n[link]\nlisten = \"127.0.0.1:{link_port}\"\n\
                     cert_file = \"pki/relay.pem\"\nkey_file = \"pki/relay.key\"\nagent_ca_file = \"pki/ca.pem\"\n{link}\n\
                     {store}key_file = \"store.key\"\n\n[log]\nlevel = \"info\"\n"
                ),
            )
            .expect("relay.toml");
            tomls.push(toml);
            ports.push((api, link_port));
        }
        let token =
            pwrelay(&["clients", "add", "bench-pam", "--config", &tomls[0].display().to_string()]).trim().to_owned();
        let mut relays = Vec::new();
        for (n, (toml, (api, link))) in tomls.iter().zip(ports).enumerate() {
            let log = std::fs::File::create(dir.join(format!("relay-{n}.log"))).expect("log file");
            let child = Command::new(binary())
                .args(["serve", "--config", &toml.display().to_string()])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("pwrelay serve starts");
            relays.push(Relay { api, link, child });
        }
        for relay in &mut relays {
            let deadline = Instant::now() + Duration::from_secs(60);
            while StdTcpStream::connect(("127.0.0.1", relay.link)).is_err()
                || StdTcpStream::connect(("127.0.0.1", relay.api)).is_err()
            {
                assert!(relay.child.try_wait().expect("wait").is_none(), "a relay exited; see {}", dir.display());
                assert!(Instant::now() < deadline, "a relay did not listen within 60 s; see {}", dir.display());
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let anchors = TrustAnchors::from_file(&dir.join("pki/ca.pem")).expect("CA");
        Self { dir, _temp: Some(temp), anchors, token, relays }
    }

    /// An agent certificate for `name`, in its own directory; a TLS client configuration from it.
    fn agent_tls(&self, name: &str) -> Arc<rustls::ClientConfig> {
        let out = self.dir.join(name);
        std::fs::create_dir_all(&out).expect("agent dir");
        let ca = self.dir.join("pki").display().to_string();
        pwrelay(&[
            "pki",
            "issue-agent",
            "--ca-dir",
            &ca,
            "--name",
            name,
            "--domain",
            DOMAIN,
            "--out",
            &out.display().to_string(),
        ]);
        link::agent_tls(&out, &self.anchors)
    }

    fn http(&self) -> reqwest::Client {
        let config = (*tls::https_client(&self.anchors).expect("TLS")).clone();
        reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .timeout(Duration::from_secs(120))
            .build()
            .expect("http")
    }
}

/// What the stand-ins saw: results acknowledged by the relay, streams welcomed.
#[derive(Default)]
struct Counters {
    acked: AtomicUsize,
    welcomed: AtomicUsize,
}

/// One agent stream to `link`: hello, heartbeats at the interval of the welcome, and (when
/// `answer`) a success for every job the moment it arrives.
/// `permit` is released once the stream is welcomed.
async fn stand_in(
    tls: Arc<rustls::ClientConfig>,
    link: SocketAddr,
    answer: bool,
    counters: Arc<Counters>,
    mut permit: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let channel = link::channel(tls, link).await;
    let hello = link::hello("0.0.0-bench", &[DOMAIN], STAND_IN_IN_FLIGHT);
    let (tx, mut inbound) = link::open(channel, hello, 256).await.expect("the stream opens");
    while let Ok(Some(message)) = inbound.message().await {
        match message.body {
            Some(pb::relay_message::Body::Welcome(welcome)) => {
                counters.welcomed.fetch_add(1, Ordering::Relaxed);
                drop(permit.take());
                let every = Duration::from_secs(u64::from(welcome.heartbeat_interval_seconds.max(1)));
                let beats = tx.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(every);
                    for sequence in 1.. {
                        tick.tick().await;
                        if beats.send(link::heartbeat(sequence, Vec::new())).await.is_err() {
                            break;
                        }
                    }
                });
            }
            Some(pb::relay_message::Body::Job(job)) if answer => {
                let success = pb::JobSuccess {
                    account_dn: format!("CN={},OU=Bench,DC=corp,DC=test", job.id),
                    verified: true,
                    pwd_last_set: 134_000_000_000_000_000,
                    ..Default::default()
                };
                let result = pb::JobResult {
                    job_id: job.id,
                    attempt: job.attempt,
                    outcome: Some(pb::job_result::Outcome::Success(success)),
                };
                if tx.send(pb::AgentMessage { body: Some(pb::agent_message::Body::Result(result)) }).await.is_err() {
                    break;
                }
            }
            Some(pb::relay_message::Body::Ack(_)) => {
                counters.acked.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn millis_between(from: &Value, to: &Value) -> Option<f64> {
    let parse =
        |v: &Value| time::OffsetDateTime::parse(v.as_str()?, &time::format_description::well_known::Rfc3339).ok();
    Some((parse(to)? - parse(from)?).as_seconds_f64() * 1000.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

/// Every job of the client, through the API's pages.
async fn all_jobs(http: &reqwest::Client, api: u16, token: &str) -> Vec<Value> {
    let mut jobs = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("https://127.0.0.1:{api}/v1/jobs?limit=500");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = http.get(url).bearer_auth(token).send().await.expect("list").json().await.expect("page");
        jobs.extend(page["jobs"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return jobs,
        }
    }
}

async fn dispatch(args: &[String]) {
    let jobs: usize = arg::<usize>(args, "--jobs").unwrap_or(20_000).div_ceil(BATCH) * BATCH;
    let rate: Option<f64> = arg(args, "--rate");
    let replicas: Option<String> = arg(args, "--replicas");
    let dir: Option<PathBuf> = arg(args, "--dir");
    let counts: Vec<usize> = match &replicas {
        Some(list) => list.split(',').map(|n| n.parse().expect("--replicas 1,2,3")).collect(),
        None => vec![1],
    };
    for replicas_n in counts {
        let (store, label) = if replicas.is_some() {
            let server = postgres::PgServer::from_env().expect(
                "--replicas needs PostgreSQL: deploy/dev/postgres.sh start; eval \"$(deploy/dev/postgres.sh env)\"",
            );
            let url = server.fresh_database().await;
            (server.store_section(&url).replace("pool_size = 4\n", ""), format!("PostgreSQL, {replicas_n} replica(s)"))
        } else {
            ("[store]\npath = \"relay.db\"\n".to_owned(), "SQLite".to_owned())
        };
        let agents_per: usize = arg(args, "--agents").unwrap_or(4);
        let deployment = Deployment::start(dir.as_deref(), &store, replicas_n, "");
        let http = deployment.http();
        let counters = Arc::new(Counters::default());
        let agents = agents_per * replicas_n;
        for a in 0..agents {
            let tls = deployment.agent_tls(&format!("bench-agent-{a}"));
            let link = SocketAddr::from(([127, 0, 0, 1], deployment.relays[a % replicas_n].link));
            tokio::spawn(stand_in(tls, link, true, Arc::clone(&counters), None));
        }
        wait_for("every stand-in welcomed", Duration::from_secs(60), || {
            counters.welcomed.load(Ordering::Relaxed) == agents
        })
        .await;
        let load_before = load();
        let pids: Vec<u32> = deployment.relays.iter().map(Relay::pid).collect();
        let cpu_before: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
        let started = Instant::now();
        let batches = jobs / BATCH;
        let next = Arc::new(AtomicUsize::new(0));
        let mut submitters = tokio::task::JoinSet::new();
        for _ in 0..2 {
            let (http, next, token) = (http.clone(), Arc::clone(&next), deployment.token.clone());
            let apis: Vec<u16> = deployment.relays.iter().map(|r| r.api).collect();
            submitters.spawn(async move {
                loop {
                    let b = next.fetch_add(1, Ordering::Relaxed);
                    if b >= batches {
                        return;
                    }
                    if let Some(rate) = rate {
                        let due = started + Duration::from_secs_f64((b * BATCH) as f64 / rate);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let targets: Vec<Value> =
                        (0..BATCH).map(|i| json!({"upn": format!("bench{b}x{i}@{DOMAIN}")})).collect();
                    let response = http
                        .post(format!("https://127.0.0.1:{}/v1/reconciliations", apis[b % apis.len()]))
                        .bearer_auth(&token)
                        .json(&json!({"domain": DOMAIN, "targets": targets}))
                        .send()
                        .await
                        .expect("the relay answers");
                    let status = response.status();
                    assert_eq!(status.as_u16(), 202, "{}", response.text().await.unwrap_or_default());
                }
            });
        }
        while let Some(done) = submitters.join_next().await {
            done.expect("submitter");
        }
        let accepted = started.elapsed();
        wait_for("every result acknowledged", Duration::from_secs(1800), || {
            counters.acked.load(Ordering::Relaxed) >= jobs
        })
        .await;
        let total = started.elapsed();
        let cpu_used: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>() - cpu_before;
        let load_after = load();
        let records = all_jobs(&http, deployment.relays[0].api, &deployment.token).await;
        let mut to_dispatch = Vec::new();
        let mut to_final = Vec::new();
        for job in records.iter().filter(|j| j["kind"] != "reconcile_batch" && j["dispatched_at"].is_string()) {
            to_dispatch.extend(millis_between(&job["created_at"], &job["dispatched_at"]));
            to_final.extend(millis_between(&job["created_at"], &job["finished_at"]));
        }
        let succeeded = records.iter().filter(|j| j["state"] == "succeeded").count();
        to_dispatch.sort_by(f64::total_cmp);
        to_final.sort_by(f64::total_cmp);
        println!(
            "\nrelay dispatch, {label}, store dir {}, {agents} stand-in(s) x {STAND_IN_IN_FLIGHT} in flight, {jobs} jobs \
             in {batches} reconciliations of {BATCH}{}",
            dir.as_deref().unwrap_or(Path::new("/tmp")).display(),
            rate.map(|r| format!(", paced at {r:.0} jobs/s")).unwrap_or_default()
        );
        println!("  load average before: {load_before}; after: {load_after}");
        println!(
            "  end to end (first POST -> last result acknowledged): {:.2} s = {:.0} jobs/s",
            total.as_secs_f64(),
            jobs as f64 / total.as_secs_f64()
        );
        println!(
            "  accepted by the API: {:.2} s = {:.0} jobs/s",
            accepted.as_secs_f64(),
            jobs as f64 / accepted.as_secs_f64()
        );
        println!(
            "  accept -> dispatch (relay's dispatched_at - created_at, ms resolution, {} jobs): p50 {:.0} ms, p99 {:.0} ms",
            to_dispatch.len(),
            percentile(&to_dispatch, 0.5),
            percentile(&to_dispatch, 0.99)
        );
        println!(
            "  accept -> final: p50 {:.0} ms, p99 {:.0} ms; {succeeded} records succeeded (jobs and batches)",
            percentile(&to_final, 0.5),
            percentile(&to_final, 0.99)
        );
        println!(
            "  relay CPU: {:.1} s over the run = {:.0} us per job ({:.2} cores)",
            cpu_used,
            cpu_used * 1e6 / jobs as f64,
            cpu_used / total.as_secs_f64()
        );
        drop(deployment);
    }
}

/// Raises this process's soft open-file limit to its hard one (the relay process inherits it),
/// with util-linux's `prlimit`; the soft limit in force.
fn raise_open_files() -> u64 {
    let pid = std::process::id().to_string();
    // Root may raise the hard limit too; anyone may raise the soft one to the hard one.
    let _ = Command::new("prlimit").args(["--pid", &pid, "--nofile=65536:65536"]).stderr(Stdio::null()).status();
    let hard = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let line = hard.lines().find(|l| l.starts_with("Max open files")).unwrap_or_default().to_owned();
    let hard_limit = line.split_whitespace().nth(4).unwrap_or("0").to_owned();
    let _ = Command::new("prlimit").args(["--pid", &pid, &format!("--nofile={hard_limit}:")]).status();
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn idle(args: &[String]) {
    let streams: usize = arg(args, "--streams").unwrap_or(10_000);
    let cap: usize = arg(args, "--max-connections").unwrap_or(streams + 100);
    let open_files = raise_open_files();
    assert!(
        open_files as usize > streams + 200,
        "{streams} streams need more than {} open files (ulimit -n is {open_files}; raise the hard limit)",
        streams + 200
    );
    let deployment =
        Deployment::start(None, "[store]\npath = \"relay.db\"\n", 1, &format!("max_connections = {cap}\n"));
    let relay = &deployment.relays[0];
    let pid = relay.pid();
    let tls = deployment.agent_tls("bench-idle");
    let link = SocketAddr::from(([127, 0, 0, 1], relay.link));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before = rss_kib(pid);
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    // At most 64 handshakes at once; the spawning waits inside the time limit too (a relay that
    // stops welcoming holds the permits).
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let connected = tokio::time::timeout(Duration::from_secs(600), async {
        for _ in 0..streams {
            let permit = Arc::clone(&gate).acquire_owned().await.expect("gate");
            tokio::spawn(stand_in(Arc::clone(&tls), link, false, Arc::clone(&counters), Some(permit)));
        }
        while counters.welcomed.load(Ordering::Relaxed) < streams {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let welcomed = counters.welcomed.load(Ordering::Relaxed);
    println!(
        "\nidle agent streams: {welcomed} of {streams} welcomed in {:.1} s{}, {} open on the relay \
         (link.max_connections = {cap}, open files {open_files})",
        started.elapsed().as_secs_f64(),
        if connected.is_err() { " (gave up after 600 s)" } else { "" },
        open_fds(pid)
    );
    println!("  load average: {}", load());
    println!("  relay VmRSS before the streams: {:.1} MiB", rss_before as f64 / 1024.0);
    let cpu0 = cpu_seconds(pid);
    let mut peak = 0;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        peak = peak.max(rss_kib(pid));
        println!(
            "  relay VmRSS with the streams open: {:.1} MiB, {} descriptors open",
            rss_kib(pid) as f64 / 1024.0,
            open_fds(pid)
        );
    }
    let cpu = cpu_seconds(pid) - cpu0;
    let (rss, open) = (rss_kib(pid), open_fds(pid));
    println!(
        "  after 60 s idle: VmRSS {:.1} MiB (peak seen {:.1} MiB) = {:.1} KiB per stream over the empty relay; \
         relay CPU while idle {:.2} cores; load average {}; {open} descriptors open",
        rss as f64 / 1024.0,
        peak as f64 / 1024.0,
        (rss.saturating_sub(rss_before)) as f64 / open.max(1) as f64,
        cpu / 60.0,
        load()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The mode comes first; `cargo bench` appends `--bench`.
    match args.first().filter(|a| !a.starts_with("--")).map(String::as_str) {
        Some("idle") => idle(&args).await,
        Some("dispatch") | None => dispatch(&args).await,
        Some(other) => panic!("unknown mode {other}: dispatch or idle"),
    }
}
