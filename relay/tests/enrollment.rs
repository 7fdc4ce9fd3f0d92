//! Agent enrollment, renewal and revocation with real processes: `pwrelay serve` and
//! `pwrelay-agent run` as the operator starts them, `pwrelay agents enroll-token` /
//! `pwrelay-agent enroll` / `pwrelay agents revoke` as the operator types them, the throwaway
//! Samba DC as the directory. A rotation after enrollment (and after renewals) is checked by a
//! bind with the new password.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pwrelay_proto::agent::v1::EnrollRequest;
use pwrelay_proto::agent::v1::agent_enrollment_client::AgentEnrollmentClient;
use pwrelay_shared::domain::{AgentName, DomainName};
use pwrelay_shared::enrollment::{EnrollmentToken, ca_fingerprint};
use pwrelay_shared::identity::AgentIdentity;
use pwrelay_shared::testkit::{self, TestDc, TestUser};
use pwrelay_shared::tls::{self, TrustAnchors};
use serde_json::{Value, json};

#[path = "support/postgres.rs"]
#[allow(dead_code)]
mod postgres;

/// The relay binary cargo built for this test, and `pwrelay-agent` next to it (built here, so it
/// is never older than the agent's sources).
fn binaries() -> (PathBuf, PathBuf) {
    let relay = PathBuf::from(env!("CARGO_BIN_EXE_pwrelay"));
    let agent = relay.with_file_name(format!("pwrelay-agent{}", std::env::consts::EXE_SUFFIX));
    let mut build = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    build.args(["build", "--offline", "-p", "pwrelay-agent", "--bin", "pwrelay-agent"]);
    // The features deploy/dev/test.sh builds the agent with, so the two builds do not undo each other.
    if let Ok(features) = std::env::var("FAULT_AGENT_FEATURES") {
        build.args(["--features", &features]);
    }
    if let Some(target) = relay.parent().and_then(Path::parent) {
        build.env("CARGO_TARGET_DIR", target);
    }
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name == "OUT_DIR"
            || name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_CRATE_")
            || name.starts_with("CARGO_BIN_")
            || name.starts_with("CARGO_MANIFEST_")
            || ["CARGO", "CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "CARGO_RUSTC_CURRENT_DIR"].contains(&&*name)
        {
            build.env_remove(&*name);
        }
    }
    build.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")));
    let built = build.status();
    assert!(built.is_ok_and(|s| s.success()) || agent.exists(), "pwrelay-agent is built");
    (relay, agent)
}

/// Whether a relay log shows a revoked agent's certificate refused: at the handshake, or (a
/// resumed TLS session presents no certificate to check) when its stream opens.
fn refused_as_revoked(log: &str) -> bool {
    log.contains("refused the certificate of a revoked agent") || log.contains("refused a stream of a revoked agent")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A child process killed when dropped, its output in a log file.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn start(bin: &Path, args: &[&str], log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(bin)
            .args(args)
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("the process starts");
        Self { child, log }
    }

    /// The log so far, without terminal colour codes.
    fn log(&self) -> String {
        let raw = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut plain = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                plain.push(c);
            }
        }
        plain
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A command's exit success, standard output and standard error.
fn run(bin: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin).args(args).stdin(Stdio::null()).output().expect("the command runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// A relay process with enrollment on, the DC's OU and delegated service account.
struct World {
    dir: tempfile::TempDir,
    relay_bin: PathBuf,
    agent_bin: PathBuf,
    dc: &'static TestDc,
    ou: String,
    service: TestUser,
    api_port: u16,
    link_port: u16,
    token: String,
    http: reqwest::Client,
    relay: Option<Process>,
}

impl World {
    /// A relay whose enrolled certificates last `certificate_lifetime_seconds`, signed by the
    /// one CA of `pki init`, or with `two_level` by the issuing intermediate under an offline
    /// root (`pki init --two-level`).
    async fn new(certificate_lifetime_seconds: u64, two_level: bool) -> Self {
        Self::with_store(certificate_lifetime_seconds, two_level, "[store]\npath = \"relay.db\"\n").await
    }

    /// Like [`World::new`], with `store` as the `[store]` section (without `key_file`).
    async fn with_store(certificate_lifetime_seconds: u64, two_level: bool, store: &str) -> Self {
        tls::install_default_provider();
        let (relay_bin, agent_bin) = tokio::task::spawn_blocking(binaries).await.expect("binaries");
        let dc = testkit::dc();
        let ou = dc.create_ou("enroll").await;
        let service = dc.create_service_account(&ou).await;
        dc.delegate_password_rights(&ou, &service).await;
        let dir = tempfile::Builder::new().prefix("pwrelay-enroll-").tempdir().expect("temp dir");
        let path = |p: &str| dir.path().join(p).display().to_string();
        let pki_dir = path("pki");
        let mut init = vec!["pki", "init", "--dir", &pki_dir, "--relay-name", "localhost", "--relay-name", "127.0.0.1"];
        if two_level {
            init.push("--two-level");
        }
        let (ok, _, err) = run(&relay_bin, &init);
        assert!(ok, "pki init: {err}");
        let issuer = if two_level { "issuing-ca" } else { "ca" };
        let (ok, _, err) = run(&relay_bin, &["store-key", "generate", "--out", &path("store.key")]);
        assert!(ok, "store-key: {err}");
        let (api_port, link_port) = (free_port(), free_port());
        std::fs::write(
            dir.path().join("relay.toml"),
            format!(
                "domains = [\"{domain}\"]\n\n[api]\nlisten = \"127.0.0.1:{api_port}\"\ncert_file = \"pki/relay.pem\"\n\
                 key_file = \"pki/relay.key\"\n\n[link]\nlisten = \"127.0.0.1:{link_port}\"\ncert_file = \"pki/relay.pem\"\n\
                 key_file = \"pki/relay.key\"\nagent_ca_file = \"pki/ca.pem\"\nheartbeat_seconds = 1\nlease_seconds = 20\n\
                 write_timeout_seconds = 5\n\n{store}key_file = \"store.key\"\n\n\
                 [enrollment]\nissuer_cert_file = \"pki/{issuer}.pem\"\nissuer_key_file = \"pki/{issuer}.key\"\n\
                 certificate_lifetime_seconds = {certificate_lifetime_seconds}\nper_address_per_minute = 60\n\n\
                 [audit]\nfile = \"audit.jsonl\"\n\n[log]\nlevel = \"pwrelay_relay=debug,info\"\n",
                domain = dc.domain
            ),
        )
        .expect("relay.toml");
        let config = path("relay.toml");
        let (ok, token, err) = run(&relay_bin, &["clients", "add", "enroll-pam", "--config", &config]);
        assert!(ok, "clients add: {err}");
        let anchors = TrustAnchors::from_file(&dir.path().join("pki/ca.pem")).expect("ca");
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls::https_client(&anchors).expect("tls")).clone())
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http");
        let mut world = Self {
            dir,
            relay_bin,
            agent_bin,
            dc,
            ou,
            service,
            api_port,
            link_port,
            token: token.trim().to_owned(),
            http,
            relay: None,
        };
        world.start_relay().await;
        world
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The audit trail's JSON lines so far (`[audit] file`), of the relay and of the commands.
    fn audit_events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("an audit line is JSON"))
            .collect()
    }

    fn config(&self) -> String {
        self.path("relay.toml").display().to_string()
    }

    async fn start_relay(&mut self) {
        let config = self.config();
        self.relay = Some(Process::start(&self.relay_bin, &["serve", "--config", &config], self.path("relay.log")));
        let (http, port) = (self.http.clone(), self.api_port);
        assert!(
            eventually(Duration::from_secs(30), || {
                let http = http.clone();
                async move { http.get(format!("https://127.0.0.1:{port}/healthz")).send().await.is_ok() }
            })
            .await,
            "the relay answers: {}",
            self.relay_log()
        );
    }

    fn relay_log(&self) -> String {
        self.relay.as_ref().map(Process::log).unwrap_or_default()
    }

    /// `pwrelay agents enroll-token`: the token it prints.
    fn enroll_token(&self, name: &str, domains: &[&str], ttl: &str) -> String {
        let mut args = vec!["agents", "enroll-token", "--name", name, "--ttl", ttl];
        for domain in domains {
            args.extend(["--domain", domain]);
        }
        let config = self.config();
        args.extend(["--config", &config]);
        let (ok, out, err) = run(&self.relay_bin, &args);
        assert!(ok, "enroll-token: {err}");
        let token = out.trim().to_owned();
        assert!(token.starts_with("pwre1_"), "one token on standard output: {out:?}");
        assert!(!err.contains(&token), "the token is printed once, on standard output only");
        token
    }

    /// `pwrelay-agent enroll` into `dir`: success, standard output and error.
    fn enroll(&self, token: &str, dir: &Path) -> (bool, String, String) {
        self.enroll_at(self.link_port, token, dir)
    }

    /// `pwrelay-agent enroll` at the relay whose link port is `link_port`.
    fn enroll_at(&self, link_port: u16, token: &str, dir: &Path) -> (bool, String, String) {
        let relay = format!("https://127.0.0.1:{link_port}");
        let out = dir.display().to_string();
        let output = Command::new(&self.agent_bin)
            .args(["enroll", "--relay", &relay, "--server-name", "localhost", "--out", &out])
            .env("PWRELAY_ENROLL_TOKEN", token)
            .output()
            .expect("pwrelay-agent enroll runs");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Completes the starting `agent.toml` that enrollment wrote in `dir` (its `[relay]` section
    /// kept as written) with the test DC, and starts `pwrelay-agent run` on it.
    fn start_agent(&self, dir: &Path) -> (Process, u16) {
        std::fs::write(dir.join("bind.secret"), self.service.password.expose_secret()).expect("bind secret");
        let written = std::fs::read_to_string(dir.join("agent.toml")).expect("enroll wrote agent.toml");
        let relay_part = written.split("\n[[domains]]").next().expect("a relay section");
        let health_port = free_port();
        let toml = format!(
            "{relay_part}heartbeat_seconds = 1\n\n[health]\nlisten = \"127.0.0.1:{health_port}\"\n\n[state]\ndir = \"state\"\n\n\
             [log]\nlevel = \"pwrelay_agent=debug,info\"\n\n\
             [[domains]]\nname = \"{domain}\"\nurls = [\"{url}\"]\nca_file = \"{ca}\"\nbind_dn = \"{bind_dn}\"\n\
             bind_password_file = \"bind.secret\"\ntimeout_seconds = 5\n\n[domains.scope]\nallowed_ous = [\"{ou}\"]\n",
            domain = self.dc.domain,
            url = self.dc.ldaps_url,
            ca = self.dc.ca_file.display(),
            bind_dn = self.service.dn,
            ou = self.ou,
        );
        std::fs::write(dir.join("agent.toml"), toml).expect("agent.toml");
        let config = dir.join("agent.toml").display().to_string();
        let process = Process::start(&self.agent_bin, &["run", "--config", &config], dir.join("agent.log"));
        (process, health_port)
    }

    async fn readyz(port: u16) -> Option<(u16, Value)> {
        let response = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.json().await.unwrap_or(Value::Null)))
    }

    async fn wait_ready(&self, port: u16, agent: &Process) {
        assert!(
            eventually(Duration::from_secs(30), || async { Self::readyz(port).await.is_some_and(|(s, _)| s == 200) })
                .await,
            "the agent becomes ready: {}",
            agent.log()
        );
    }

    /// Rotates `user`'s password through the API and waits for the job; the job.
    async fn rotate(&self, user: &TestUser, password: &str) -> Value {
        let base = format!("https://127.0.0.1:{}", self.api_port);
        let body = json!({ "domain": self.dc.domain.as_str(), "target": { "upn": user.upn }, "password": password });
        let reply: Value = self
            .http
            .post(format!("{base}/v1/rotations"))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .expect("rotation answered")
            .json()
            .await
            .expect("json");
        let id = reply["job_id"].as_str().expect("job id").to_owned();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let job: Value = self
                .http
                .get(format!("{base}/v1/jobs/{id}?wait=20"))
                .bearer_auth(&self.token)
                .send()
                .await
                .expect("job answered")
                .json()
                .await
                .expect("json");
            let state = job["state"].as_str().unwrap_or_default().to_owned();
            if state == "succeeded" || state == "failed" || tokio::time::Instant::now() > deadline {
                return job;
            }
        }
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).expect("file").permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_enrolls_with_a_token_and_runs_a_rotation() {
    let world = World::new(14 * 86_400, false).await;
    let domain = world.dc.domain.to_string();
    let token = world.enroll_token("enrolled-a", &[&domain], "10m");
    let dir = world.path("agent-a");
    let started = std::time::Instant::now();
    let (ok, out, err) = world.enroll(&token, &dir);
    println!("==> pwrelay-agent enroll took {} ms (process start to files written)", started.elapsed().as_millis());
    assert!(ok, "enrollment succeeds: {out}{err}\nrelay: {}", world.relay_log());
    assert_eq!(mode(&dir.join("agent.key")), 0o600, "the key is the owner's only");
    let cert = std::fs::read_to_string(dir.join("agent.pem")).expect("agent.pem");
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(cert.as_bytes())
        .map(|c: rustls_pki_types::CertificateDer<'static>| c)
        .expect("a certificate");
    let identity = AgentIdentity::from_certificate_der(&der).expect("an agent identity");
    assert_eq!(identity.name.as_str(), "enrolled-a");
    assert_eq!(identity.domains.iter().map(DomainName::as_str).collect::<Vec<_>>(), vec![domain.as_str()]);
    let ca = std::fs::read_to_string(dir.join("ca.pem")).expect("ca.pem");
    assert_eq!(ca, std::fs::read_to_string(world.path("pki/ca.pem")).expect("relay CA"), "the relay's CA was written");
    let starting = std::fs::read_to_string(dir.join("agent.toml")).expect("agent.toml");
    assert!(starting.contains(&format!("name = \"{domain}\"")), "{starting}");
    let audit = world.audit_events();
    assert!(
        audit.iter().any(|e| e["event"] == "agent.enroll_token_created" && e["agent"] == "enrolled-a"),
        "the token is audited: {audit:?}"
    );
    assert!(
        audit.iter().any(|e| e["event"] == "agent.enrolled" && e["event_id"] == 5306 && e["agent"] == "enrolled-a"),
        "the enrollment is audited: {audit:?}"
    );

    let (agent, health) = world.start_agent(&dir);
    world.wait_ready(health, &agent).await;
    let user = world.dc.create_user_in(&world.ou, "enr").await;
    let job = world.rotate(&user, "Enrolled!Rotation-4411").await;
    assert_eq!(job["state"], "succeeded", "{job}\nagent: {}", agent.log());
    assert_eq!(job["agent"], "enrolled-a");
    assert!(world.dc.bind(&user.dn, "Enrolled!Rotation-4411").await.ok(), "the new password binds");

    // Nothing is overwritten: a second enrollment into the same directory stops before the relay.
    let again = world.enroll_token("enrolled-a2", &[&domain], "10m");
    let (ok, _, err) = world.enroll(&again, &dir);
    assert!(!ok && err.contains("exists already"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_expired_forged_wrong_ca_and_widening_enrollments_are_refused() {
    let world = World::new(14 * 86_400, false).await;
    let domain = world.dc.domain.to_string();

    // Reused.
    let token = world.enroll_token("refusals-a", &[&domain], "10m");
    assert!(world.enroll(&token, &world.path("first")).0, "the first use works");
    let (ok, _, err) = world.enroll(&token, &world.path("second"));
    assert!(!ok && err.contains("used already"), "a reused token is refused: {err}");
    assert!(!world.path("second/agent.key").exists(), "a refused enrollment writes nothing");

    // Expired.
    let short = world.enroll_token("refusals-b", &[&domain], "1s");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (ok, _, err) = world.enroll(&short, &world.path("expired"));
    assert!(!ok && err.contains("expired"), "an expired token is refused: {err}");

    // Forged: the right id and CA fingerprint, another secret; and a token the relay never made.
    let genuine = world.enroll_token("refusals-c", &[&domain], "10m");
    let forged = {
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut bytes = engine.decode(genuine.trim_start_matches("pwre1_")).expect("base64");
        bytes[20] ^= 0x55;
        format!("pwre1_{}", engine.encode(bytes))
    };
    let (ok, _, err) = world.enroll(&forged, &world.path("forged"));
    assert!(!ok && err.contains("unknown or forged"), "a forged token is refused: {err}");
    let fingerprint = ca_fingerprint(&std::fs::read_to_string(world.path("pki/ca.pem")).expect("ca")).expect("fp");
    let never_made = EnrollmentToken::generate(fingerprint).expect("token").to_text();
    let (ok, _, err) = world.enroll(never_made.expose_secret(), &world.path("unknown"));
    assert!(!ok && err.contains("unknown or forged"), "an unknown token is refused: {err}");
    // The forgery did not use the genuine token up.
    assert!(world.enroll(&genuine, &world.path("genuine")).0, "the genuine token still works");

    // Another CA's fingerprint: the agent finds no such CA in the relay's chain and sends nothing.
    let other_ca = EnrollmentToken::generate([9; 32]).expect("token").to_text();
    let (ok, _, err) = world.enroll(other_ca.expose_secret(), &world.path("other-ca"));
    assert!(!ok && err.contains("fingerprint"), "a token pinning another CA is refused by the agent: {err}");
    // A client that ignores the pin is refused by the relay.
    let relay_pinned = tls::enrollment_client(fingerprint).expect("tls");
    let channel = pwrelay_agent::link::dial::dial("127.0.0.1", world.link_port, "localhost", relay_pinned.clone())
        .await
        .expect("dial");
    let (csr_der, _key) = pwrelay_shared::pki::certificate_request(None).expect("csr");
    let refused = AgentEnrollmentClient::new(channel.clone())
        .enroll(EnrollRequest { token: other_ca.expose_secret().to_owned(), csr_der: csr_der.clone() })
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("CA"), "{refused:?}");

    // A request naming another domain than the token grants.
    let narrow = world.enroll_token("refusals-d", &[&domain], "10m");
    let wider = AgentIdentity {
        name: AgentName::parse("refusals-d").expect("name"),
        domains: [world.dc.domain.clone(), DomainName::parse("other.example").expect("domain")].into(),
    };
    let (wide_csr, _key) = pwrelay_shared::pki::certificate_request(Some(&wider)).expect("csr");
    let refused = AgentEnrollmentClient::new(channel.clone())
        .enroll(EnrollRequest { token: narrow.clone(), csr_der: wide_csr })
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("other.example"), "{refused:?}");
    // The refused request did not use the token up; a request within the grant works.
    let exact = AgentIdentity { name: wider.name.clone(), domains: [world.dc.domain.clone()].into() };
    let (exact_csr, _key) = pwrelay_shared::pki::certificate_request(Some(&exact)).expect("csr");
    let issued = AgentEnrollmentClient::new(channel.clone())
        .enroll(EnrollRequest { token: narrow, csr_der: exact_csr })
        .await
        .expect("a request within the grant is signed")
        .into_inner();
    assert_eq!(issued.domains, vec![domain.clone()]);

    // Without a certificate, only enrollment is served: the link refuses to open.
    let refused = pwrelay_proto::agent::v1::agent_link_client::AgentLinkClient::new(channel)
        .open(tokio_stream::iter(Vec::<pwrelay_proto::agent::v1::AgentMessage>::new()))
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    let audit = world.audit_events();
    for reason in ["used_token", "expired_token", "forged_token", "unknown_token", "wrong_ca", "widening"] {
        assert!(
            audit.iter().any(|e| e["event"] == "agent.enroll_refused" && e["details"]["reason"] == reason),
            "{reason} is audited: {audit:?}"
        );
    }
    assert!(
        audit.iter().any(|e| e["event"] == "agent.refused" && e["details"]["reason"] == "no_certificate"),
        "the stream without a certificate is audited: {audit:?}"
    );
}

/// The agent certificate's notAfter (Unix seconds) and the key file's text.
fn certificate_of(dir: &Path) -> (i64, String, String) {
    let cert = std::fs::read_to_string(dir.join("agent.pem")).expect("agent.pem");
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(cert.as_bytes())
        .map(|c: rustls_pki_types::CertificateDer<'static>| c)
        .expect("a certificate");
    let (_, not_after) = pwrelay_shared::identity::certificate_validity_unix(&der).expect("validity");
    (not_after, cert, std::fs::read_to_string(dir.join("agent.key")).expect("agent.key"))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificates_are_renewed_over_the_link_and_the_agent_keeps_working() {
    // 8 s certificates: renewed about every 5 s, so the first has expired well within the test.
    let world = World::new(8, false).await;
    let domain = world.dc.domain.to_string();
    let token = world.enroll_token("renewing-a", &[&domain], "10m");
    let dir = world.path("agent-renewing");
    let (ok, out, err) = world.enroll(&token, &dir);
    assert!(ok, "enrollment succeeds: {out}{err}");
    let (first_expiry, first_cert, first_key) = certificate_of(&dir);
    let (agent, health) = world.start_agent(&dir);
    world.wait_ready(health, &agent).await;
    let started = std::time::Instant::now();

    // Two renewals, and past the first certificate's expiry.
    let renewed = eventually(Duration::from_secs(40), || async {
        world.audit_events().iter().filter(|e| e["event"] == "agent.certificate_renewed").count() >= 2
            && unix_now() > first_expiry + 1
    })
    .await;
    assert!(
        renewed,
        "the certificate is renewed twice before the first expires: {}\nagent: {}",
        world.relay_log(),
        agent.log()
    );
    println!(
        "==> {} renewals of 8 s certificates in {:.1} s",
        world.audit_events().iter().filter(|e| e["event"] == "agent.certificate_renewed").count(),
        started.elapsed().as_secs_f64()
    );
    let (expiry, cert, key) = certificate_of(&dir);
    assert!(expiry > first_expiry, "the certificate on disk is a newer one");
    assert_ne!(cert, first_cert);
    assert_ne!(key, first_key, "each renewal uses a fresh key");
    assert_eq!(mode(&dir.join("agent.key")), 0o600, "the renewed key is the owner's only");
    assert!(agent.log().contains("reconnecting with the renewed certificate"), "no restart: {}", agent.log());
    let agent_audit = std::fs::read_to_string(dir.join("state/audit.jsonl")).unwrap_or_default();
    assert!(
        agent_audit.lines().any(|l| l.contains("\"event_id\":4130") && l.contains("\"certificate_renewed\"")),
        "the agent's audit log records its renewals: {agent_audit}"
    );

    // The old certificate is expired; the agent carries on with the new one.
    world.wait_ready(health, &agent).await;
    let user = world.dc.create_user_in(&world.ou, "ren").await;
    let job = world.rotate(&user, "Renewed!Rotation-5522").await;
    assert_eq!(job["state"], "succeeded", "{job}\nagent: {}", agent.log());
    assert_eq!(job["agent"], "renewing-a");
    assert!(world.dc.bind(&user.dn, "Renewed!Rotation-5522").await.ok(), "the new password binds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_agent_is_disconnected_and_refused_until_enrolled_again() {
    let world = World::new(14 * 86_400, false).await;
    let domain = world.dc.domain.to_string();
    let token = world.enroll_token("revoked-a", &[&domain], "10m");
    let dir = world.path("agent-revoked");
    assert!(world.enroll(&token, &dir).0, "enrollment succeeds");
    let (agent, health) = world.start_agent(&dir);
    world.wait_ready(health, &agent).await;

    let config = world.config();
    let (ok, _, err) = run(&world.relay_bin, &["agents", "revoke", "revoked-a", "--config", &config]);
    assert!(ok, "revoke: {err}");
    // Enrolled again at once, and issued a certificate offline at once (`pki issue-agent`, the
    // air-gapped path): both must start after the revocation (notBefore has whole seconds).
    let again = world.enroll_token("revoked-a", &[&domain], "10m");
    let fresh = world.path("agent-revoked-again");
    assert!(world.enroll(&again, &fresh).0, "enrolling again succeeds");
    let enrolled = std::fs::read_to_string(fresh.join("agent.toml")).expect("agent.toml");
    let offline = world.path("agent-revoked-offline");
    let (pki, out) = (world.path("pki").display().to_string(), offline.display().to_string());
    let issue = ["pki", "issue-agent", "--ca-dir", &pki, "--name", "revoked-a", "--domain", &domain, "--out", &out];
    let (ok, _, err) = run(&world.relay_bin, &issue);
    assert!(ok, "pki issue-agent: {err}");
    let connected = || async { World::readyz(health).await.is_some_and(|(_, body)| body["relay_connected"] == true) };
    assert!(
        eventually(Duration::from_secs(10), || async { !connected().await }).await,
        "the open stream is closed: {}",
        world.relay_log()
    );
    // It keeps trying and is refused at the handshake.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!connected().await, "the revoked agent stays disconnected: {}", agent.log());
    let audit = world.audit_events();
    for (id, event) in [(5309, "agent.revoked"), (5312, "agent.stream_closed_revoked")] {
        assert!(
            audit.iter().any(|e| e["event_id"] == id && e["event"] == event && e["agent"] == "revoked-a"),
            "{event} is audited: {audit:?}"
        );
    }
    let log = world.relay_log();
    assert!(refused_as_revoked(&log), "its certificate is refused from then on: {log}");
    drop(agent);

    // The new certificate from the new token is not refused by the deny list.
    let (agent, health) = world.start_agent(&fresh);
    world.wait_ready(health, &agent).await;
    drop(agent);

    // Nor is the one issued offline.
    let moved = enrolled.replace(&fresh.display().to_string(), &out);
    std::fs::write(offline.join("agent.toml"), moved).expect("agent.toml");
    let (agent, health) = world.start_agent(&offline);
    world.wait_ready(health, &agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_offline_root_the_relay_enrolls_under_its_intermediate() {
    let mut world = World::new(14 * 86_400, true).await;
    let domain = world.dc.domain.to_string();
    let token = world.enroll_token("two-level-a", &[&domain], "10m");
    let dir = world.path("agent-two-level");
    let (ok, out, err) = world.enroll(&token, &dir);
    assert!(ok, "enrollment succeeds: {out}{err}\nrelay: {}", world.relay_log());
    let chain = std::fs::read_to_string(dir.join("agent.pem")).expect("agent.pem");
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2, "the agent certificate and the intermediate");
    assert_eq!(
        std::fs::read_to_string(dir.join("ca.pem")).expect("ca.pem"),
        std::fs::read_to_string(world.path("pki/ca.pem")).expect("root"),
        "the agent trusts the root"
    );
    let (agent, health) = world.start_agent(&dir);
    world.wait_ready(health, &agent).await;
    let user = world.dc.create_user_in(&world.ou, "two").await;
    let job = world.rotate(&user, "TwoLevel!Rotation-7733").await;
    assert_eq!(job["state"], "succeeded", "{job}\nagent: {}", agent.log());
    assert!(world.dc.bind(&user.dn, "TwoLevel!Rotation-7733").await.ok(), "the new password binds");

    // The next intermediate, made with the root: the relay signs with it after a restart, and
    // the agent enrolled under the previous one still connects.
    let (ok, _, err) = run(
        &world.relay_bin,
        &[
            "pki",
            "intermediate",
            "--ca-dir",
            &world.path("pki").display().to_string(),
            "--out",
            &world.path("next").display().to_string(),
        ],
    );
    assert!(ok, "pki intermediate: {err}");
    assert_eq!(mode(&world.path("next/issuing-ca.key")), 0o600);
    world.relay = None;
    let toml = std::fs::read_to_string(world.path("relay.toml")).expect("relay.toml");
    std::fs::write(world.path("relay.toml"), toml.replace("pki/issuing-ca.", "next/issuing-ca.")).expect("relay.toml");
    world.start_relay().await;
    world.wait_ready(health, &agent).await;
    let token = world.enroll_token("two-level-b", &[&domain], "10m");
    let dir = world.path("agent-two-level-b");
    assert!(world.enroll(&token, &dir).0, "enrollment under the next intermediate");
    let chain = std::fs::read_to_string(dir.join("agent.pem")).expect("agent.pem");
    let next = std::fs::read_to_string(world.path("next/issuing-ca.pem")).expect("next");
    assert!(chain.ends_with(&next), "the chain carries the next intermediate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_replica_disconnects_the_agent_from_another() {
    let Some(server) = postgres::PgServer::for_test("a_revocation_on_one_replica_disconnects_the_agent_from_another")
    else {
        return;
    };
    let section = server.store_section(&server.fresh_database().await);
    let world = World::with_store(14 * 86_400, false, &section).await;
    // A second replica on the same database, with its own ports.
    let (api_2, link_2) = (free_port(), free_port());
    let toml = std::fs::read_to_string(world.path("relay.toml"))
        .expect("relay.toml")
        .replace(&format!("127.0.0.1:{}", world.api_port), &format!("127.0.0.1:{api_2}"))
        .replace(&format!("127.0.0.1:{}", world.link_port), &format!("127.0.0.1:{link_2}"));
    std::fs::write(world.path("relay-2.toml"), toml).expect("relay-2.toml");
    let config_2 = world.path("relay-2.toml").display().to_string();
    let replica_2 = Process::start(&world.relay_bin, &["serve", "--config", &config_2], world.path("relay-2.log"));
    let http = world.http.clone();
    assert!(
        eventually(Duration::from_secs(30), || {
            let http = http.clone();
            async move { http.get(format!("https://127.0.0.1:{api_2}/healthz")).send().await.is_ok() }
        })
        .await,
        "the second replica answers: {}",
        replica_2.log()
    );

    // A token made with the first replica's configuration, used at the second.
    let domain = world.dc.domain.to_string();
    let token = world.enroll_token("replicated-a", &[&domain], "10m");
    let dir = world.path("agent-replicated");
    let (ok, out, err) = world.enroll_at(link_2, &token, &dir);
    assert!(ok, "enrollment at the second replica: {out}{err}\n{}", replica_2.log());
    let (agent, health) = world.start_agent(&dir);
    world.wait_ready(health, &agent).await;

    let config = world.config();
    let (ok, _, err) = run(&world.relay_bin, &["agents", "revoke", "replicated-a", "--config", &config]);
    assert!(ok, "revoke: {err}");
    let connected = || async { World::readyz(health).await.is_some_and(|(_, body)| body["relay_connected"] == true) };
    assert!(
        eventually(Duration::from_secs(10), || async { !connected().await }).await,
        "the stream on the other replica is closed: {}",
        replica_2.log()
    );
    assert!(
        eventually(Duration::from_secs(10), || async { refused_as_revoked(&replica_2.log()) }).await,
        "and its certificate is refused there: {}",
        replica_2.log()
    );
    assert!(!connected().await, "the revoked agent stays disconnected");
}
