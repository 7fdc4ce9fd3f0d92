//! Test harness: a real relay and real agents (in-process `App`s on 127.0.0.1:0), the throwaway
//! Samba AD DC, and an HTTPS client for the API. Every log line of every part is captured so tests
//! can assert on it (set PWRELAY_TEST_ECHO_LOGS=1 to also see them on stderr).

#![allow(dead_code, unreachable_pub)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use pwrelay_relay::store::ClientStore as _;
use pwrelay_shared::domain::DomainName;
use pwrelay_shared::secret::SecretString;
use pwrelay_shared::testkit::{self, TestDc, TestPki};
use pwrelay_shared::tls::{self, TrustAnchors};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub mod browser;
pub mod cloud;
pub mod link;
pub mod postgres;

/// Everything logged by any part in this test process.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        if std::env::var_os("PWRELAY_TEST_ECHO_LOGS").is_some() {
            std::io::stderr().write_all(buf)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber (debug level for every crate) once per process.
pub fn logs() -> LogBuffer {
    logs_at("debug")
}

/// Installs the capturing subscriber with `filter` (an env-filter directive), unless one is
/// installed already; benchmarks use the services' default level, "info".
pub fn logs_at(filter: &str) -> LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = LogBuffer::default();
        let writer = buffer.clone();
        if std::env::var_os("PWRELAY_TEST_LOG_STDERR").is_some() {
            // For reading a test's logs as it runs (the assertions on captured logs then fail).
            tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(std::io::stderr).init();
        } else {
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .init();
        }
        pwrelay_shared::tls::install_default_provider();
        buffer
    })
    .clone()
}

/// One test's world: a directory with PKI, store key, API token, and the relay's domains.
pub struct World {
    pub dir: tempfile::TempDir,
    pub pki: TestPki,
    pub dc: &'static TestDc,
    /// The OU the agents manage; their service account has pwrelay's delegated rights on it only.
    pub ou: String,
    /// The agents' delegated, non-admin service account.
    pub service: testkit::TestUser,
    pub token: SecretString,
    pub domains: Vec<DomainName>,
    pub http: reqwest::Client,
}

impl World {
    /// A world whose relay serves the DC's domain plus `extra_domains`.
    pub async fn new(extra_domains: &[&str]) -> Self {
        logs();
        let dc = testkit::dc();
        let dir = tempfile::tempdir().expect("temp dir");
        let pki_dir = dir.path().join("pki");
        std::fs::create_dir_all(&pki_dir).expect("pki dir");
        let pki = TestPki::create(&pki_dir);
        let key = pwrelay_relay::seal::Sealer::generate_key_text().expect("key");
        pwrelay_shared::pki::write_private(&dir.path().join("store.key"), &key, true).expect("store key");
        let ou = dc.create_ou("e2e").await;
        let service = dc.create_service_account(&ou).await;
        dc.delegate_password_rights(&ou, &service).await;
        let mut domains = vec![dc.domain.clone()];
        domains.extend(extra_domains.iter().map(|d| DomainName::parse(d).expect("domain")));
        let world_config = relay_toml(&domains);
        std::fs::write(dir.path().join("relay.toml"), world_config).expect("relay.toml");
        let store = pwrelay_relay::store::sqlite::SqliteStore::open(&dir.path().join("relay.db")).expect("store");
        let (token, hash) = pwrelay_relay::api::auth::new_token().expect("token");
        store.add_client("test-pam", hash, &Default::default()).await.expect("client");
        let anchors = TrustAnchors::from_file(&pki_dir.join("ca.pem")).expect("ca");
        // HTTP/2, as API clients mostly speak it: a refused oversized upload is answered on its own
        // stream instead of racing a connection close.
        let mut client_tls = (*tls::https_client(&anchors).expect("tls")).clone();
        client_tls.alpn_protocols = vec![b"h2".to_vec()];
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(client_tls)
            .timeout(Duration::from_secs(90))
            .build()
            .expect("http client");
        Self { dir, pki, dc, ou, service, token, domains, http }
    }

    /// A user in the managed OU.
    pub async fn user(&self, prefix: &str) -> testkit::TestUser {
        self.dc.create_user_in(&self.ou, prefix).await
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts the relay (ports chosen by the OS).
    pub async fn start_relay(&self) -> Relay {
        self.start_relay_with(Default::default()).await
    }

    /// Starts the relay on the ports of `previous` (a restart in place).
    pub async fn restart_relay(&self, previous: Relay) -> Relay {
        let (api, link) = (previous.api, previous.link);
        previous.stop().await;
        self.start_relay_with(pwrelay_relay::config::Overrides {
            api_listen: Some(api),
            link_listen: Some(link),
            log_level: None,
        })
        .await
    }

    pub async fn start_relay_with(&self, overrides: pwrelay_relay::config::Overrides) -> Relay {
        let config = pwrelay_relay::Config::load(&self.path("relay.toml"), &overrides).expect("relay config");
        let app = pwrelay_relay::App::build(config).await.expect("relay builds");
        let (api, link, metrics) = (app.api_addr(), app.link_addr(), app.metrics_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run(async move {
            let _ = stopped.await;
        }));
        Relay { api, link, metrics, stop: Some(stop), task }
    }

    /// Starts an agent named `name` whose certificate (from this world's CA) names `cert_domains`
    /// and whose configuration serves `served`; the DC's domain points at the test DC, any other
    /// at an address where nothing answers.
    pub async fn start_agent(
        &self,
        relay: &Relay,
        name: &str,
        cert_domains: &[&DomainName],
        served: &[&DomainName],
    ) -> Agent {
        let dir = self.path(&format!("agent-{name}"));
        std::fs::create_dir_all(&dir).expect("agent dir");
        self.pki.issue_agent(name, cert_domains, &dir);
        self.start_agent_in(&dir, relay, served).await
    }

    /// Starts an agent with the certificate files already in `dir`.
    pub async fn start_agent_in(&self, dir: &Path, relay: &Relay, served: &[&DomainName]) -> Agent {
        self.start_agent_expecting(dir, relay, served, "localhost").await
    }

    /// Starts an agent for the DC's domain whose scope is limited to this world's OU.
    pub async fn start_scoped_agent(&self, relay: &Relay, name: &str) -> Agent {
        let dir = self.path(&format!("agent-{name}"));
        std::fs::create_dir_all(&dir).expect("agent dir");
        self.pki.issue_agent(name, &[&self.dc.domain], &dir);
        let extra = format!("\n[domains.scope]\nallowed_ous = [\"{}\"]\n", self.ou);
        self.start_agent_configured(&dir, relay, &[&self.dc.domain], "localhost", &extra).await
    }

    /// The salt every test agent derives reconciled passwords with.
    pub const SEED_SALT: &'static str = "ThisIsOurSharedHashValue";

    /// Starts an agent that expects the relay's certificate to carry `server_name`.
    pub async fn start_agent_expecting(
        &self,
        dir: &Path,
        relay: &Relay,
        served: &[&DomainName],
        server_name: &str,
    ) -> Agent {
        self.start_agent_configured(dir, relay, served, server_name, "").await
    }

    /// Starts an agent; `extra` is appended to the DC domain's `[[domains]]` table.
    pub async fn start_agent_configured(
        &self,
        dir: &Path,
        relay: &Relay,
        served: &[&DomainName],
        server_name: &str,
        extra: &str,
    ) -> Agent {
        std::fs::write(dir.join("bind.secret"), self.service.password.expose_secret()).expect("bind secret");
        std::fs::write(dir.join("seed.salt"), Self::SEED_SALT).expect("seed salt");
        let mut toml = format!(
            "[relay]\nurl = \"https://127.0.0.1:{}\"\nserver_name = \"{server_name}\"\nca_file = \"ca.pem\"\n\
             cert_file = \"agent.pem\"\nkey_file = \"agent.key\"\nheartbeat_seconds = 2\n\n[health]\nlisten = \"127.0.0.1:0\"\n\n[state]\ndir = \"state\"\n",
            relay.link.port()
        );
        for domain in served {
            let urls = if **domain == self.dc.domain {
                format!("\"{}\"", self.dc.ldaps_url)
            } else {
                "\"ldaps://127.0.0.1:1\"".into()
            };
            toml.push_str(&format!(
                "\n[[domains]]\nname = \"{domain}\"\nurls = [{urls}]\nca_file = \"{}\"\nbind_dn = \"{}\"\n\
                 bind_password_file = \"bind.secret\"\ntimeout_seconds = 5\n",
                self.dc.ca_file.display(),
                self.service.dn
            ));
            if **domain == self.dc.domain {
                toml.push_str("\n[domains.reconcile]\nsalt_file = \"seed.salt\"\n");
                toml.push_str(extra);
            }
        }
        std::fs::write(dir.join("agent.toml"), toml).expect("agent.toml");
        let config = pwrelay_agent::Config::load(&dir.join("agent.toml")).expect("agent config");
        let app = pwrelay_agent::App::build(config).await.expect("agent builds");
        let health = app.health_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = app
                .run(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Agent { health, stop: Some(stop), task }
    }

    fn url(&self, relay: &Relay, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", relay.api.port())
    }

    /// POSTs JSON with this world's token.
    pub async fn post(&self, relay: &Relay, path: &str, body: &Value) -> (u16, Value) {
        self.send(self.http.post(self.url(relay, path)).json(body)).await
    }

    /// GETs with this world's token.
    pub async fn get(&self, relay: &Relay, path: &str) -> (u16, Value) {
        self.send(self.http.get(self.url(relay, path))).await
    }

    /// DELETEs with this world's token.
    pub async fn delete(&self, relay: &Relay, path: &str) -> (u16, Value) {
        self.send(self.http.delete(self.url(relay, path))).await
    }

    /// Sends `request` with this world's token; the status and the JSON body (null if none).
    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.bearer_auth(self.token.expose_secret()).send().await.expect("request is answered");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Queues a rotation and returns the job id.
    pub async fn rotate(&self, relay: &Relay, body: Value) -> String {
        let (status, reply) = self.post(relay, "/v1/rotations", &body).await;
        assert_eq!(status, 202, "rotation accepted: {reply}");
        reply["job_id"].as_str().expect("job_id").to_owned()
    }

    /// Waits (long-polling) until the job is final or `limit` passes; returns the last state.
    pub async fn wait_final(&self, relay: &Relay, job_id: &str, limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now()).as_secs().min(30);
            let (status, job) = self.get(relay, &format!("/v1/jobs/{job_id}?wait={left}")).await;
            assert_eq!(status, 200, "job readable: {job}");
            let state = job["state"].as_str().unwrap_or_default();
            if state == "succeeded" || state == "failed" || tokio::time::Instant::now() >= deadline {
                return job;
            }
        }
    }
}

fn relay_toml(domains: &[DomainName]) -> String {
    let list: Vec<String> = domains.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        "domains = [{}]\n\n[api]\nlisten = \"127.0.0.1:0\"\ncert_file = \"pki/relay.pem\"\nkey_file = \"pki/relay.key\"\n\n\
         [link]\nlisten = \"127.0.0.1:0\"\ncert_file = \"pki/relay.pem\"\nkey_file = \"pki/relay.key\"\n\
         agent_ca_file = \"pki/ca.pem\"\nheartbeat_seconds = 2\nlease_seconds = 30\n\n\
         [store]\npath = \"relay.db\"\nkey_file = \"store.key\"\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
        list.join(", ")
    )
}

/// A running relay.
pub struct Relay {
    pub api: SocketAddr,
    pub link: SocketAddr,
    /// `[metrics] listen` (port chosen by the OS).
    pub metrics: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), pwrelay_relay::app::AppError>>,
}

impl Relay {
    /// Shuts the relay down gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(Duration::from_secs(20), &mut self.task).await;
        assert!(matches!(result, Ok(Ok(Ok(())))), "relay stops cleanly");
    }
}

/// A running agent.
pub struct Agent {
    pub health: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Agent {
    /// The agent's `/readyz` status code and body.
    pub async fn readyz(&self) -> (u16, Value) {
        let response = reqwest::get(format!("http://{}/readyz", self.health)).await.expect("health answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Shuts the agent down gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), &mut self.task).await;
    }
}

/// Polls `check` every 100 ms until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
