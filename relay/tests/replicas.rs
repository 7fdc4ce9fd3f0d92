//! Several relay replicas sharing one PostgreSQL store.
//!
//! - Wake-ups cross replicas: a job accepted by one replica reaches an agent connected to another
//!   within milliseconds, through the store's notifications, not the sessions' claim timer.
//!
//! These tests need a PostgreSQL server (`deploy/dev/postgres.sh start`, then
//! `eval "$(deploy/dev/postgres.sh env)"`); without `PWRELAY_TEST_POSTGRES_URL` they say so and pass.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pwrelay_proto::agent::v1 as pb;
use pwrelay_shared::domain::DomainName;
use pwrelay_shared::secret::SecretString;
use pwrelay_shared::testkit::TestPki;
use pwrelay_shared::tls::{self, TrustAnchors};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

const DOMAIN: &str = "corp.test";

/// The test server's settings, from `deploy/dev/postgres.sh env`.
struct PgServer {
    url: String,
    password_file: PathBuf,
    ca_file: PathBuf,
}

impl PgServer {
    /// The server, or `None` after saying why the test does not run.
    fn from_env(test: &str) -> Option<Self> {
        let Ok(url) = std::env::var("PWRELAY_TEST_POSTGRES_URL") else {
            use std::io::Write as _;
            // Straight to the terminal: libtest captures print macros.
            let _ = writeln!(
                std::io::stderr(),
                "note: {test} skipped: PWRELAY_TEST_POSTGRES_URL is not set (deploy/dev/postgres.sh start; \
                 eval \"$(deploy/dev/postgres.sh env)\")"
            );
            return None;
        };
        let var = |name: &str| PathBuf::from(std::env::var_os(name).unwrap_or_else(|| panic!("{name} is not set")));
        Some(Self {
            url,
            password_file: var("PWRELAY_TEST_POSTGRES_PASSWORD_FILE"),
            ca_file: var("PWRELAY_TEST_POSTGRES_CA_FILE"),
        })
    }

    /// Creates an empty database and returns the URL that reaches it.
    async fn fresh_database(&self) -> String {
        let password = std::fs::read_to_string(&self.password_file).expect("password file");
        let mut config: tokio_postgres::Config = self.url.parse().expect("PWRELAY_TEST_POSTGRES_URL");
        config.password(password.trim_end());
        let anchors = TrustAnchors::from_file(&self.ca_file).expect("CA file");
        let tls = tls::database_client(Some(&anchors)).expect("database TLS");
        let (client, connection) =
            config.connect(tokio_postgres_rustls::MakeRustlsConnect::new((*tls).clone())).await.expect("connect");
        let driver = tokio::spawn(connection);
        let name = format!("pwrelay_replicas_{}", uuid::Uuid::new_v4().simple());
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create database");
        drop(client);
        let _ = driver.await;
        let (base, query) = self.url.split_once('?').map_or((self.url.as_str(), ""), |(b, q)| (b, q));
        let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
        if query.is_empty() { format!("{base}/{name}") } else { format!("{base}/{name}?{query}") }
    }

    /// The `[store]` section of a replica on `url`.
    fn store_section(&self, url: &str) -> String {
        format!(
            "[store]\nurl = \"{url}\"\npassword_file = \"{}\"\nca_file = \"{}\"\npool_size = 4\nkey_file = \"store.key\"\n",
            self.password_file.display(),
            self.ca_file.display()
        )
    }
}

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
    async fn start(server: &PgServer, count: usize) -> Self {
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
             key_file = \"pki/relay.key\"\nagent_ca_file = \"pki/ca.pem\"\nheartbeat_seconds = 2\nlease_seconds = 30\n\n\
             [webhooks]\npoll_seconds = 30\n\n{}",
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
    let channel = link_channel(&dir, &replicas.anchors, link).await;
    let (tx, rx) = mpsc::channel(8);
    let hello = pb::Hello {
        agent_version: "0.0.0-replicas".into(),
        domains: vec![DOMAIN.into()],
        max_jobs_in_flight: 64,
        instance_id: uuid::Uuid::new_v4().to_string(),
    };
    tx.send(pb::AgentMessage { body: Some(pb::agent_message::Body::Hello(hello)) }).await.expect("hello");
    let mut client = pb::agent_link_client::AgentLinkClient::new(channel);
    let mut inbound =
        client.open(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("stream opens").into_inner();
    let (jobs_tx, jobs_rx) = mpsc::channel(64);
    // A heartbeat every second, so the relay keeps the stream (it ends silent ones).
    tokio::spawn(async move {
        for sequence in 1.. {
            let beat = pb::Heartbeat { sequence, ..Default::default() };
            let message = pb::AgentMessage { body: Some(pb::agent_message::Body::Heartbeat(beat)) };
            if tx.send(message).await.is_err() {
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

async fn link_channel(dir: &Path, anchors: &TrustAnchors, link: SocketAddr) -> tonic::transport::Channel {
    let identity = tls::CertifiedKey::from_files(&dir.join("agent.pem"), &dir.join("agent.key")).expect("identity");
    let config = tls::link_client(identity, anchors).expect("link tls");
    let connector = tokio_rustls::TlsConnector::from(config);
    let dial = tower::service_fn(move |_: tonic::transport::Uri| {
        let connector = connector.clone();
        async move {
            let tcp = TcpStream::connect(link).await?;
            let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    tonic::transport::Endpoint::from_static("http://localhost").connect_with_connector(dial).await.expect("connects")
}

/// The agent-link sessions claim on a 1 s timer besides their wake-ups: a job that reaches the
/// other replica's agent in under 300 ms, eight times in a row, came through the notification
/// (by the timer alone, each would have a chance of at most 0.3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_accepted_by_one_replica_reaches_an_agent_on_another_within_milliseconds() {
    let Some(server) = PgServer::from_env("a_job_accepted_by_one_replica_reaches_an_agent_on_another") else {
        return;
    };
    let replicas = Replicas::start(&server, 2).await;
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
                Ok(r) => r.json::<serde_json::Value>().await.is_ok_and(|v| v.as_array().is_some_and(|a| !a.is_empty())),
                Err(_) => false,
            }
        })
        .await,
        "the agent stand-in connects to replica B"
    );
    let mut latencies = Vec::new();
    for n in 0..8 {
        // Off the 1 s claim timer's phase.
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
    let slow: Vec<_> = latencies.iter().filter(|l| **l >= Duration::from_millis(300)).collect();
    assert!(slow.is_empty(), "every job crossed replicas in under 300 ms: {latencies:?}");
    replicas.stop().await;
}
