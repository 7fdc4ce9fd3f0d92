//! The relay's configuration: one TOML file (`pwrelay serve --config relay.toml`), with listen
//! addresses overridable from the command line or environment.
//!
//! The file is parsed into validated types at start-up; an error names the key to fix. Relative
//! paths are resolved against the directory of the configuration file. Every key, with its default,
//! is shown in `deploy/config/relay.full.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pwrelay_shared::domain::DomainName;
use pwrelay_shared::telemetry::LogConfig;
use serde::Deserialize;

pub use pwrelay_shared::config::ConfigError;

/// The relay configuration as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RelayFile {
    domains: Vec<DomainName>,
    api: ApiFile,
    link: LinkFile,
    store: StoreFile,
    #[serde(default)]
    jobs: JobsFile,
    #[serde(default)]
    webhooks: WebhooksFile,
    #[serde(default)]
    log: LogConfig,
    #[serde(default)]
    lifecycle: Option<crate::lifecycle::config::LifecycleFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiFile {
    #[serde(default = "default_api_listen")]
    listen: SocketAddr,
    cert_file: PathBuf,
    key_file: PathBuf,
    #[serde(default = "default_max_body_bytes")]
    max_body_bytes: usize,
    #[serde(default)]
    limits: crate::api::limits::LimitsFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkFile {
    #[serde(default = "default_link_listen")]
    listen: SocketAddr,
    cert_file: PathBuf,
    key_file: PathBuf,
    agent_ca_file: PathBuf,
    #[serde(default = "default_lease_seconds")]
    lease_seconds: u64,
    #[serde(default = "default_heartbeat_seconds")]
    heartbeat_seconds: u64,
    #[serde(default = "default_write_timeout_seconds")]
    write_timeout_seconds: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    path: PathBuf,
    key_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobsFile {
    #[serde(default = "default_max_attempts")]
    max_attempts: u32,
    #[serde(default = "default_ttl_hours")]
    ttl_hours: u64,
}

impl Default for JobsFile {
    fn default() -> Self {
        Self { max_attempts: default_max_attempts(), ttl_hours: default_ttl_hours() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhooksFile {
    #[serde(default = "default_webhook_timeout_seconds")]
    timeout_seconds: u64,
    #[serde(default = "default_webhook_max_attempts")]
    max_attempts: u32,
    #[serde(default = "default_webhook_max_age_hours")]
    max_age_hours: u64,
    #[serde(default = "default_webhook_first_retry_seconds")]
    first_retry_seconds: u64,
    #[serde(default = "default_webhook_max_retry_seconds")]
    max_retry_seconds: u64,
    #[serde(default = "default_webhook_poll_seconds")]
    poll_seconds: u64,
    #[serde(default = "default_webhook_concurrency")]
    concurrency: usize,
    #[serde(default = "default_webhook_log_retention_days")]
    log_retention_days: u64,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    dangerous_allow_http: bool,
}

impl Default for WebhooksFile {
    fn default() -> Self {
        Self {
            timeout_seconds: default_webhook_timeout_seconds(),
            max_attempts: default_webhook_max_attempts(),
            max_age_hours: default_webhook_max_age_hours(),
            first_retry_seconds: default_webhook_first_retry_seconds(),
            max_retry_seconds: default_webhook_max_retry_seconds(),
            poll_seconds: default_webhook_poll_seconds(),
            concurrency: default_webhook_concurrency(),
            log_retention_days: default_webhook_log_retention_days(),
            ca_file: None,
            dangerous_allow_http: false,
        }
    }
}

fn default_webhook_timeout_seconds() -> u64 {
    10
}
fn default_webhook_max_attempts() -> u32 {
    12
}
fn default_webhook_max_age_hours() -> u64 {
    24
}
fn default_webhook_first_retry_seconds() -> u64 {
    10
}
fn default_webhook_max_retry_seconds() -> u64 {
    3600
}
fn default_webhook_poll_seconds() -> u64 {
    5
}
fn default_webhook_concurrency() -> usize {
    8
}
fn default_webhook_log_retention_days() -> u64 {
    30
}

fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8443))
}
fn default_link_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7443))
}
fn default_max_body_bytes() -> usize {
    64 * 1024
}
fn default_lease_seconds() -> u64 {
    60
}
fn default_heartbeat_seconds() -> u64 {
    15
}
fn default_write_timeout_seconds() -> u64 {
    15
}
fn default_max_attempts() -> u32 {
    5
}
fn default_ttl_hours() -> u64 {
    24
}
/// The validated relay configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// AD domains this relay accepts jobs for.
    pub domains: Vec<DomainName>,
    /// HTTPS API listener.
    pub api: ApiConfig,
    /// Agent link listener.
    pub link: LinkConfig,
    /// Job store.
    pub store: StoreConfig,
    /// Delivery limits.
    pub jobs: JobsConfig,
    /// Outbound webhooks.
    pub webhooks: WebhooksConfig,
    /// Logging.
    pub log: LogConfig,
    /// The new-hire flow (`[lifecycle]`), when configured.
    pub lifecycle: Option<crate::lifecycle::config::LifecycleConfig>,
}

/// `[api]`.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Listen address (default 0.0.0.0:8443).
    pub listen: SocketAddr,
    /// Server certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Server private key (PEM).
    pub key_file: PathBuf,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// `[api.limits]`: timeouts, connection and stream caps, request rates, trusted proxies.
    pub limits: crate::api::limits::ApiLimits,
}

/// `[link]`.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Listen address (default 0.0.0.0:7443).
    pub listen: SocketAddr,
    /// Server certificate chain (PEM), issued by `pwrelay pki init`.
    pub cert_file: PathBuf,
    /// Server private key (PEM).
    pub key_file: PathBuf,
    /// The CA that issues agent certificates.
    pub agent_ca_file: PathBuf,
    /// How long a lease lasts from when it is granted or renewed (agents renew theirs with every
    /// heartbeat).
    pub lease: Duration,
    /// How often agents send heartbeats; three missed ones close the stream.
    pub heartbeat: Duration,
    /// The longest an agent's LDAP write may take: agents cap their writes to it, and a lapsed
    /// lease is taken over only once this has passed on top of it.
    pub write_timeout: Duration,
}

/// `[store]`.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// SQLite database file.
    pub path: PathBuf,
    /// File with the 32-byte key (base64) that seals secrets at rest.
    pub key_file: PathBuf,
}

/// `[jobs]`.
#[derive(Debug, Clone, Copy)]
pub struct JobsConfig {
    /// Deliveries before a job fails with `delivery_exhausted`.
    pub max_attempts: u32,
    /// Age at which an unfinished job fails with `expired`.
    pub time_to_live: Duration,
}

/// `[webhooks]`: how deliveries to the clients' receivers are made and retried.
#[derive(Debug, Clone)]
pub struct WebhooksConfig {
    /// Longest wait for a receiver's answer (connect included).
    pub timeout: Duration,
    /// Attempts of one delivery before it fails.
    pub max_attempts: u32,
    /// Age (since the job became final) after which a delivery is not tried again.
    pub max_age: Duration,
    /// Delay before the first retry; each further retry doubles it (with jitter).
    pub first_retry: Duration,
    /// The longest delay between two attempts.
    pub max_retry: Duration,
    /// How often the store is checked for due deliveries without an in-process wake-up.
    pub poll: Duration,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// How long finished deliveries stay in the delivery log.
    pub log_retention: Duration,
    /// Trust only this CA (PEM) for receivers instead of the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// Allow `http://` URLs to hosts other than the loopback interface (bodies and signatures
    /// then cross the network in clear).
    pub dangerous_allow_http: bool,
}

/// Values that override the file (from the command line or environment).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// Replaces `api.listen`.
    pub api_listen: Option<SocketAddr>,
    /// Replaces `link.listen`.
    pub link_listen: Option<SocketAddr>,
    /// Replaces `log.level`.
    pub log_level: Option<String>,
}

impl Config {
    /// Reads and validates the file at `path`, then applies `overrides`.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Self, ConfigError> {
        let text = pwrelay_shared::config::read(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base, overrides).map_err(|e| e.in_file(path))
    }

    /// Parses TOML text; relative paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path, overrides: &Overrides) -> Result<Self, ConfigError> {
        let file: RelayFile = pwrelay_shared::config::parse_toml(text)?;
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        if file.domains.is_empty() {
            return Err(ConfigError::invalid("domains", "list at least one AD domain"));
        }
        if file.link.lease_seconds < 5 {
            return Err(ConfigError::invalid("link.lease_seconds", "must be at least 5"));
        }
        if file.link.heartbeat_seconds == 0 {
            return Err(ConfigError::invalid("link.heartbeat_seconds", "must be at least 1"));
        }
        if file.link.write_timeout_seconds == 0 {
            return Err(ConfigError::invalid("link.write_timeout_seconds", "must be at least 1"));
        }
        // An agent starts a write only with more than the write timeout (plus 2 s) left on its
        // lease, and renews the lease with every heartbeat.
        let needed = file.link.heartbeat_seconds.saturating_add(file.link.write_timeout_seconds).saturating_add(2);
        if file.link.lease_seconds < needed {
            return Err(ConfigError::invalid(
                "link.lease_seconds",
                format!(
                    "must be at least link.heartbeat_seconds + link.write_timeout_seconds + 2 = {needed}, or agents \
                     could never start a write"
                ),
            ));
        }
        if file.jobs.max_attempts == 0 {
            return Err(ConfigError::invalid("jobs.max_attempts", "must be at least 1"));
        }
        if file.jobs.ttl_hours == 0 {
            return Err(ConfigError::invalid("jobs.ttl_hours", "must be at least 1"));
        }
        let hooks = &file.webhooks;
        for (key, value) in [
            ("webhooks.timeout_seconds", hooks.timeout_seconds),
            ("webhooks.max_attempts", u64::from(hooks.max_attempts)),
            ("webhooks.max_age_hours", hooks.max_age_hours),
            ("webhooks.first_retry_seconds", hooks.first_retry_seconds),
            ("webhooks.poll_seconds", hooks.poll_seconds),
            ("webhooks.concurrency", u64::try_from(hooks.concurrency).unwrap_or(u64::MAX)),
            ("webhooks.log_retention_days", hooks.log_retention_days),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        if hooks.max_retry_seconds < hooks.first_retry_seconds {
            return Err(ConfigError::invalid("webhooks.max_retry_seconds", "must be at least first_retry_seconds"));
        }
        if file.api.max_body_bytes < 1024 {
            return Err(ConfigError::invalid("api.max_body_bytes", "must be at least 1024"));
        }
        let limits = file.api.limits.validate()?;
        let lifecycle = file.lifecycle.map(|l| l.validate(resolve)).transpose()?;
        let mut log = file.log;
        if let Some(level) = &overrides.log_level {
            log.level.clone_from(level);
        }
        Ok(Self {
            domains: file.domains,
            api: ApiConfig {
                listen: overrides.api_listen.unwrap_or(file.api.listen),
                cert_file: resolve(file.api.cert_file),
                key_file: resolve(file.api.key_file),
                max_body_bytes: file.api.max_body_bytes,
                limits,
            },
            link: LinkConfig {
                listen: overrides.link_listen.unwrap_or(file.link.listen),
                cert_file: resolve(file.link.cert_file),
                key_file: resolve(file.link.key_file),
                agent_ca_file: resolve(file.link.agent_ca_file),
                lease: Duration::from_secs(file.link.lease_seconds),
                heartbeat: Duration::from_secs(file.link.heartbeat_seconds),
                write_timeout: Duration::from_secs(file.link.write_timeout_seconds),
            },
            store: StoreConfig { path: resolve(file.store.path), key_file: resolve(file.store.key_file) },
            jobs: JobsConfig {
                max_attempts: file.jobs.max_attempts,
                time_to_live: Duration::from_secs(file.jobs.ttl_hours * 3600),
            },
            webhooks: WebhooksConfig {
                timeout: Duration::from_secs(file.webhooks.timeout_seconds),
                max_attempts: file.webhooks.max_attempts,
                max_age: Duration::from_secs(file.webhooks.max_age_hours.saturating_mul(3600)),
                first_retry: Duration::from_secs(file.webhooks.first_retry_seconds),
                max_retry: Duration::from_secs(file.webhooks.max_retry_seconds),
                poll: Duration::from_secs(file.webhooks.poll_seconds),
                concurrency: file.webhooks.concurrency,
                log_retention: Duration::from_secs(file.webhooks.log_retention_days.saturating_mul(86_400)),
                ca_file: file.webhooks.ca_file.map(resolve),
                dangerous_allow_http: file.webhooks.dangerous_allow_http,
            },
            log,
            lifecycle,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
domains = ["corp.example"]
[api]
cert_file = "tls/api.pem"
key_file = "tls/api.key"
[link]
cert_file = "pki/relay.pem"
key_file = "pki/relay.key"
agent_ca_file = "pki/ca.pem"
[store]
path = "/var/lib/pwrelay/relay.db"
key_file = "store.key"
"#;

    #[test]
    fn minimal_file_gets_defaults_and_resolved_paths() {
        let c = Config::parse(MINIMAL, Path::new("/etc/pwrelay"), &Overrides::default()).expect("valid");
        assert_eq!(c.api.listen, "0.0.0.0:8443".parse().expect("addr"));
        assert_eq!(c.link.listen, "0.0.0.0:7443".parse().expect("addr"));
        assert_eq!(c.api.cert_file, Path::new("/etc/pwrelay/tls/api.pem"));
        assert_eq!(c.store.path, Path::new("/var/lib/pwrelay/relay.db"));
        assert_eq!(c.jobs.max_attempts, 5);
        assert_eq!(c.webhooks.max_attempts, 12);
        assert_eq!(c.webhooks.first_retry, Duration::from_secs(10));
        assert!(c.webhooks.ca_file.is_none() && !c.webhooks.dangerous_allow_http);
        assert_eq!(c.log, LogConfig::default());
    }

    #[test]
    fn the_documented_full_example_is_valid() {
        let text = include_str!("../../deploy/config/relay.full.toml");
        let c =
            Config::parse(text, Path::new("/etc/pwrelay"), &Overrides::default()).expect("relay.full.toml is valid");
        assert_eq!(c.link.lease, Duration::from_secs(60));
        assert_eq!(c.jobs.time_to_live, Duration::from_secs(24 * 3600));
        assert_eq!(
            c.api.limits,
            crate::api::limits::ApiLimits::default(),
            "relay.full.toml shows the limits' defaults"
        );
    }

    #[test]
    fn overrides_win_over_the_file() {
        let o = Overrides { api_listen: Some("127.0.0.1:1".parse().expect("addr")), ..Overrides::default() };
        let c = Config::parse(MINIMAL, Path::new("/"), &o).expect("valid");
        assert_eq!(c.api.listen.port(), 1);
    }

    #[test]
    fn errors_name_the_key() {
        let unknown = MINIMAL.replace("[store]", "[store]\npth = 1");
        let e = Config::parse(&unknown, Path::new("/"), &Overrides::default()).expect_err("unknown key").to_string();
        assert!(e.contains("pth"), "{e}");
        let bad_domain = MINIMAL.replace("corp.example", "corp example");
        let e = Config::parse(&bad_domain, Path::new("/"), &Overrides::default()).expect_err("bad").to_string();
        assert!(e.contains("domains") || e.contains("corp example"), "{e}");
        let lease = MINIMAL.replace("agent_ca_file", "lease_seconds = 1\nagent_ca_file");
        let e = Config::parse(&lease, Path::new("/"), &Overrides::default()).expect_err("bad").to_string();
        assert!(e.starts_with("link.lease_seconds"), "{e}");
        // A lease no write could start in: 20 < heartbeat 15 + write timeout 15 + 2.
        let short = MINIMAL.replace("agent_ca_file", "lease_seconds = 20\nagent_ca_file");
        let e = Config::parse(&short, Path::new("/"), &Overrides::default()).expect_err("bad").to_string();
        assert!(e.starts_with("link.lease_seconds") && e.contains("write_timeout_seconds"), "{e}");
        let fitted = MINIMAL.replace("agent_ca_file", "lease_seconds = 20\nwrite_timeout_seconds = 3\nagent_ca_file");
        let c = Config::parse(&fitted, Path::new("/"), &Overrides::default()).expect("fits");
        assert_eq!(c.link.write_timeout, Duration::from_secs(3));
        let hooks = format!("{MINIMAL}[webhooks]\nfirst_retry_seconds = 60\nmax_retry_seconds = 30\n");
        let e = Config::parse(&hooks, Path::new("/"), &Overrides::default()).expect_err("bad").to_string();
        assert!(e.starts_with("webhooks.max_retry_seconds"), "{e}");
        let hooks = format!("{MINIMAL}[webhooks]\nmax_attempts = 0\n");
        let e = Config::parse(&hooks, Path::new("/"), &Overrides::default()).expect_err("bad").to_string();
        assert!(e.starts_with("webhooks.max_attempts"), "{e}");
        let missing = MINIMAL.replace("key_file = \"store.key\"", "");
        let e = Config::parse(&missing, Path::new("/"), &Overrides::default()).expect_err("missing").to_string();
        assert!(e.contains("key_file"), "{e}");
    }
}
