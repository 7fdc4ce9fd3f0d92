//! The deployment under test, set up the way an operator does it (README, `deploy/dev/demo.sh`):
//! the relay's own CLI makes the PKI, the agents' certificates, the store key and the API client;
//! one relay (or several replicas on one PostgreSQL store, `FAULT_REPLICAS`) and two agents for the
//! one domain run as processes of the real binaries on 127.0.0.1 ports picked here, with a short
//! lease so that faults bite quickly. Agent n connects to replica n (modulo their number).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pwrelay_shared::testkit::{TestDc, TestUser};

use crate::params::Params;
use crate::processes::Service;

/// The agents serving the domain.
pub(crate) const AGENTS: usize = 2;

/// Where the binaries are.
#[derive(Debug, Clone)]
pub(crate) struct Binaries {
    pub(crate) relay: PathBuf,
    pub(crate) agent: PathBuf,
}

impl Binaries {
    /// The relay binary cargo built for this test, and `pwrelay-agent` next to it, (re)built with
    /// cargo so that it is never older than the agent's sources (the test target itself only
    /// builds the agent's library).
    pub(crate) fn locate() -> Self {
        let relay = PathBuf::from(env!("CARGO_BIN_EXE_pwrelay"));
        let agent = relay.with_file_name(format!("pwrelay-agent{}", std::env::consts::EXE_SUFFIX));
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--offline", "-p", "pwrelay-agent", "--bin", "pwrelay-agent"]);
        if relay.parent().and_then(Path::file_name).is_some_and(|d| d == "release") {
            build.arg("--release");
        }
        if let Ok(features) = std::env::var("FAULT_AGENT_FEATURES") {
            build.args(["--features", &features]);
        }
        // The agent binary goes where the relay binary is: the same target directory.
        if let Some(target) = relay.parent().and_then(Path::parent) {
            build.env("CARGO_TARGET_DIR", target);
        }
        // Without the variables cargo sets for this test process: build scripts that watch them
        // (ring's does) would otherwise see a changed environment and rebuild, for this build and
        // again for the next ordinary one.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            let set_by_cargo = name == "OUT_DIR"
                || name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_CRATE_")
                || name.starts_with("CARGO_BIN_")
                || name.starts_with("CARGO_MANIFEST_")
                || ["CARGO", "CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "CARGO_RUSTC_CURRENT_DIR"]
                    .contains(&&*name);
            if set_by_cargo {
                build.env_remove(&*name);
            }
        }
        build.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")));
        println!("building pwrelay-agent (no-op when up to date): {build:?}");
        let built = build.status();
        if !built.as_ref().is_ok_and(|s| s.success()) {
            assert!(
                agent.exists(),
                "building pwrelay-agent failed ({built:?}) and {} does not exist; run `cargo build -p pwrelay-agent`",
                agent.display()
            );
            eprintln!("warning: building pwrelay-agent failed ({built:?}); using the existing {}", agent.display());
        }
        assert!(agent.exists(), "{} does not exist; run `cargo build -p pwrelay-agent`", agent.display());
        Self { relay, agent }
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; nothing else in the test binds ports by number).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// Writes a file only its owner may read (mode 0600).
fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("cannot restrict {}: {e}", path.display()));
}

/// Runs `pwrelay` with `args` to completion; its standard output.
fn pwrelay(bins: &Binaries, args: &[&str]) -> String {
    let output = Command::new(&bins.relay).args(args).output().expect("the pwrelay binary runs");
    assert!(
        output.status.success(),
        "pwrelay {args:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("pwrelay prints UTF-8")
}

/// One agent: its directory (certificate, configuration, `state/`) and its process.
#[derive(Debug)]
pub(crate) struct Agent {
    pub(crate) dir: PathBuf,
    pub(crate) health_port: u16,
    pub(crate) service: Service,
}

impl Agent {
    pub(crate) fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
}

/// One relay process (a replica when there are several): its ports, configuration and process.
#[derive(Debug)]
pub(crate) struct Relay {
    pub(crate) api_port: u16,
    pub(crate) link_port: u16,
    /// Its configuration file (the new-hire flow appends its section).
    pub(crate) toml: PathBuf,
    pub(crate) service: Service,
}

/// The relays, the agents and what clients need to reach the relays.
#[derive(Debug)]
pub(crate) struct Deployment {
    pub(crate) dir: PathBuf,
    /// The first relay's API port (the public URL of new hires' links).
    pub(crate) api_port: u16,
    /// The CA of the relay's certificates (`pki/ca.pem`).
    pub(crate) ca_file: PathBuf,
    /// The API client's bearer token.
    pub(crate) token: String,
    /// One, or the replicas sharing one PostgreSQL store.
    pub(crate) relays: Vec<Relay>,
    pub(crate) agents: Vec<Agent>,
    /// Whether the store is SQLite (`relay.db`, whose files the plaintext scan reads).
    sqlite: bool,
}

/// Debug logs of the product's own crates: the plaintext scan reads them too.
const LOG_LEVEL: &str = "pwrelay_relay=debug,pwrelay_agent=debug,pwrelay_shared=debug,info";

impl Deployment {
    /// Writes PKI, store key, configurations and the API client into `dir` (nothing is started).
    /// The agents bind as `service` and may change accounts under `ou` only. `store` is the
    /// `[store]` section without `key_file` (SQLite's `relay.db` when `None`), and `replicas` how
    /// many relays share it.
    pub(crate) fn create(
        dir: &Path,
        bins: &Binaries,
        params: &Params,
        dc: &TestDc,
        ou: &str,
        service: &TestUser,
        store: Option<&str>,
    ) -> Self {
        let path = |p: &str| dir.join(p).display().to_string();
        let domain = dc.domain.as_str();
        pwrelay(
            bins,
            &["pki", "init", "--dir", &path("pki"), "--relay-name", "localhost", "--relay-name", "127.0.0.1"],
        );
        pwrelay(bins, &["store-key", "generate", "--out", &path("store.key")]);
        let store_section = store.unwrap_or("[store]\npath = \"relay.db\"\n");
        let mut relays = Vec::new();
        for n in 1..=params.replicas.max(1) {
            let (api_port, link_port) = (free_port(), free_port());
            let (name, file) = if params.replicas > 1 {
                (format!("relay-{n}"), format!("relay-{n}.toml"))
            } else {
                ("relay".to_owned(), "relay.toml".to_owned())
            };
            let toml = dir.join(&file);
            std::fs::write(
                &toml,
                format!(
                    "domains = [\"{domain}\"]\n\n[api]\nlisten = \"127.0.0.1:{api_port}\"\ncert_file = \"pki/relay.pem\"\n\
                     key_file = \"pki/relay.key\"\n\n[link]\nlisten = \"127.0.0.1:{link_port}\"\ncert_file = \"pki/relay.pem\"\n\
                     key_file = \"pki/relay.key\"\nagent_ca_file = \"pki/ca.pem\"\nlease_seconds = {lease}\nheartbeat_seconds = 1\n\
                     write_timeout_seconds = 3\n\n\
                     {store_section}key_file = \"store.key\"\n\n[jobs]\nmax_attempts = 10\n\n\
                     [webhooks]\nfirst_retry_seconds = 1\nmax_retry_seconds = 5\n\n\
                     [log]\nlevel = \"{LOG_LEVEL}\"\n\n[audit]\nstdout = true\n",
                    lease = params.lease.as_secs(),
                ),
            )
            .expect("the relay's configuration is written");
            let service = Service::new(
                &name,
                &bins.relay,
                &["serve", "--config", &toml.display().to_string()],
                &dir.join(format!("{name}.log")),
            );
            relays.push(Relay { api_port, link_port, toml, service });
        }
        let relay_toml = relays[0].toml.clone();
        let token = pwrelay(bins, &["clients", "add", "fault-pam", "--config", &relay_toml.display().to_string()])
            .trim()
            .to_owned();
        assert!(!token.is_empty(), "pwrelay clients add prints the token");
        let mut agents = Vec::new();
        for n in 1..=AGENTS {
            let name = format!("agent-{n}");
            let agent_dir = dir.join(&name);
            std::fs::create_dir_all(&agent_dir).expect("the agent's directory is created");
            let out = agent_dir.display().to_string();
            let agent_name = format!("fault-{name}");
            pwrelay(
                bins,
                &[
                    "pki",
                    "issue-agent",
                    "--ca-dir",
                    &path("pki"),
                    "--name",
                    &agent_name,
                    "--domain",
                    domain,
                    "--out",
                    &out,
                ],
            );
            write_private(&agent_dir.join("bind.secret"), service.password.expose_secret());
            let health_port = free_port();
            let link_port = relays[(n - 1) % relays.len()].link_port;
            let toml = format!(
                "[relay]\nurl = \"https://127.0.0.1:{link_port}\"\nserver_name = \"localhost\"\nca_file = \"ca.pem\"\n\
                 cert_file = \"agent.pem\"\nkey_file = \"agent.key\"\nheartbeat_seconds = 1\nmax_jobs_in_flight = 4\n\n\
                 [health]\nlisten = \"127.0.0.1:{health_port}\"\n\n[state]\ndir = \"state\"\n\n\
                 [log]\nlevel = \"{LOG_LEVEL}\"\n\n\
                 [[domains]]\nname = \"{domain}\"\nurls = [\"{url}\"]\nca_file = \"{ca}\"\nbind_dn = \"{bind_dn}\"\n\
                 bind_password_file = \"bind.secret\"\ntimeout_seconds = 10\n\n[domains.scope]\nallowed_ous = [\"{ou}\"]\n",
                url = dc.ldaps_url,
                ca = dc.ca_file.display(),
                bind_dn = service.dn,
            );
            let config = agent_dir.join("agent.toml");
            std::fs::write(&config, toml).expect("agent.toml is written");
            let service = Service::new(
                &name,
                &bins.agent,
                &["run", "--config", &config.display().to_string()],
                &dir.join(format!("{name}.log")),
            );
            agents.push(Agent { dir: agent_dir, health_port, service });
        }
        Self {
            dir: dir.to_owned(),
            api_port: relays[0].api_port,
            ca_file: dir.join("pki/ca.pem"),
            token,
            relays,
            agents,
            sqlite: store.is_none(),
        }
    }

    /// Every relay's configuration file.
    pub(crate) fn relay_tomls(&self) -> impl Iterator<Item = &Path> {
        self.relays.iter().map(|r| r.toml.as_path())
    }

    /// Every log file.
    pub(crate) fn log_files(&self) -> Vec<PathBuf> {
        self.relays
            .iter()
            .map(|r| r.service.log().to_owned())
            .chain(self.agents.iter().map(|a| a.service.log().to_owned()))
            .collect()
    }

    /// The relay's store files (the database, its WAL and shared-memory files); none for
    /// PostgreSQL, whose files are the server's.
    pub(crate) fn store_files(&self) -> Vec<PathBuf> {
        if !self.sqlite {
            return Vec::new();
        }
        ["relay.db", "relay.db-wal", "relay.db-shm"].iter().map(|f| self.dir.join(f)).collect()
    }

    /// Every file in the agents' state directories (journal, audit log).
    pub(crate) fn agent_state_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for agent in &self.agents {
            if let Ok(entries) = std::fs::read_dir(agent.state_dir()) {
                files.extend(entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_file()));
            }
        }
        files.sort();
        files
    }

    /// The agents' audit logs.
    pub(crate) fn audit_logs(&self) -> Vec<PathBuf> {
        self.agents.iter().map(|a| a.state_dir().join("audit.jsonl")).collect()
    }

    /// Every process, relays first.
    pub(crate) fn services(&mut self) -> impl Iterator<Item = &mut Service> {
        self.relays.iter_mut().map(|r| &mut r.service).chain(self.agents.iter_mut().map(|a| &mut a.service))
    }

    /// Resumes paused processes and starts stopped or crashed ones.
    pub(crate) fn heal(&mut self) {
        for service in self.services() {
            service.heal();
        }
    }

    /// Stops every process gracefully.
    pub(crate) fn stop(&mut self) {
        for service in self.services() {
            service.stop(Duration::from_secs(20));
        }
    }
}
