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
    agents: AgentsFile,
    #[serde(default)]
    log: LogConfig,
    #[serde(default)]
    metrics: MetricsConfig,
    #[serde(default)]
    lifecycle: Option<crate::lifecycle::config::LifecycleFile>,
    #[serde(default)]
    enrollment: Option<EnrollmentFile>,
    #[serde(default)]
    audit: AuditFile,
}

/// `[audit]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditFile {
    #[serde(default)]
    file: Option<PathBuf>,
    #[serde(default)]
    stdout: bool,
    #[serde(default = "default_audit_retention_days")]
    retention_days: u64,
    #[serde(default = "default_audit_unauthenticated_per_minute")]
    unauthenticated_per_minute: u32,
}

impl Default for AuditFile {
    fn default() -> Self {
        Self {
            file: None,
            stdout: false,
            retention_days: default_audit_retention_days(),
            unauthenticated_per_minute: default_audit_unauthenticated_per_minute(),
        }
    }
}

fn default_audit_retention_days() -> u64 {
    crate::audit::DEFAULT_RETENTION_DAYS
}
fn default_audit_unauthenticated_per_minute() -> u32 {
    crate::audit::DEFAULT_UNAUTHENTICATED_PER_MINUTE
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollmentFile {
    issuer_cert_file: PathBuf,
    issuer_key_file: PathBuf,
    #[serde(default = "default_certificate_lifetime_seconds")]
    certificate_lifetime_seconds: u64,
    #[serde(default = "default_enrollments_per_minute")]
    per_address_per_minute: u32,
}

/// Agent certificates from enrollment and renewal last 14 days unless configured.
fn default_certificate_lifetime_seconds() -> u64 {
    14 * 86_400
}
fn default_enrollments_per_minute() -> u32 {
    10
}

/// The longest agent certificate lifetime (that of `pki issue-agent`'s default, 397 days).
const MAX_CERTIFICATE_LIFETIME_SECONDS: u64 = 397 * 86_400;

/// `[metrics]`: where Prometheus scrapes the relay.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Plain-HTTP listener serving `GET /metrics` (OpenMetrics text); none when unset.
    /// The figures name domains and agents, no accounts or secrets: bind it to a private address.
    pub listen: Option<SocketAddr>,
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
    #[serde(default = "default_link_max_connections")]
    max_connections: usize,
    #[serde(default = "default_claim_interval_ms")]
    claim_interval_ms: u64,
}

fn default_claim_interval_ms() -> u64 {
    1000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    password_file: Option<PathBuf>,
    #[serde(default)]
    password_env: Option<String>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    pool_size: Option<usize>,
    key_file: PathBuf,
}

/// Connections a PostgreSQL store keeps open at most, unless `store.pool_size` says otherwise.
const DEFAULT_POOL_SIZE: usize = 16;

impl StoreFile {
    fn validate(self, resolve: impl Fn(PathBuf) -> PathBuf) -> Result<StoreConfig, ConfigError> {
        let key_file = resolve(self.key_file);
        let backend = match (self.path, self.url) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "store.url",
                    "set store.path (SQLite) or store.url (PostgreSQL), not both",
                ));
            }
            (None, None) => {
                return Err(ConfigError::invalid(
                    "store.path",
                    "set store.path (an SQLite file) or store.url (postgres://...)",
                ));
            }
            (Some(path), None) => {
                for (key, set) in [
                    ("store.password_file", self.password_file.is_some()),
                    ("store.password_env", self.password_env.is_some()),
                    ("store.ca_file", self.ca_file.is_some()),
                    ("store.pool_size", self.pool_size.is_some()),
                ] {
                    if set {
                        return Err(ConfigError::invalid(key, "applies only to a PostgreSQL store (store.url)"));
                    }
                }
                StoreBackend::Sqlite { path: resolve(path) }
            }
            (None, Some(url)) => StoreBackend::Postgres(Box::new(PostgresConfig::parse(
                &url,
                self.password_file.map(&resolve),
                self.password_env,
                self.ca_file.map(&resolve),
                self.pool_size,
            )?)),
        };
        Ok(StoreConfig { backend, key_file })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobsFile {
    #[serde(default = "default_max_attempts")]
    max_attempts: u32,
    #[serde(default = "default_ttl_hours")]
    ttl_hours: u64,
    #[serde(default = "default_idempotency_hours")]
    idempotency_hours: u64,
    #[serde(default = "default_retention_days")]
    retention_days: u64,
}

impl Default for JobsFile {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            ttl_hours: default_ttl_hours(),
            idempotency_hours: default_idempotency_hours(),
            retention_days: default_retention_days(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentsFile {
    /// Default: twice `link.heartbeat_seconds`.
    #[serde(default)]
    down_after_seconds: Option<u64>,
    #[serde(default = "default_stale_after_days")]
    stale_after_days: u64,
}

impl Default for AgentsFile {
    fn default() -> Self {
        Self { down_after_seconds: None, stale_after_days: default_stale_after_days() }
    }
}

fn default_stale_after_days() -> u64 {
    10
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
fn default_link_max_connections() -> usize {
    crate::listener::LINK_MAX_CONNECTIONS
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
fn default_retention_days() -> u64 {
    30
}
fn default_idempotency_hours() -> u64 {
    24
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
    /// When known agents count as down or stale (`[agents]`).
    pub agents: crate::store::AgentThresholds,
    /// Logging.
    pub log: LogConfig,
    /// The Prometheus listener.
    pub metrics: MetricsConfig,
    /// The new-hire flow (`[lifecycle]`), when configured.
    pub lifecycle: Option<crate::lifecycle::config::LifecycleConfig>,
    /// Online signing of agent certificates (enrollment and renewal), when `[enrollment]` is
    /// present.
    pub enrollment: Option<EnrollmentConfig>,
    /// The audit trail (`[audit]`).
    pub audit: crate::audit::AuditConfig,
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

/// `[enrollment]`: agents enroll with a one-time token and renew their certificates over the
/// link; the relay signs with the issuer named here.
#[derive(Debug, Clone)]
pub struct EnrollmentConfig {
    /// The issuing CA certificate (`pki init`'s `ca.pem`, or an intermediate from
    /// `pki intermediate`), PEM.
    pub issuer_cert_file: PathBuf,
    /// Its private key, PEM (mode 0600).
    pub issuer_key_file: PathBuf,
    /// How long an enrolled or renewed agent certificate lasts; agents renew at two thirds.
    pub certificate_lifetime: Duration,
    /// Enrollment attempts per client address and minute (each replica counts its own).
    pub per_address_per_minute: u32,
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
    /// How often the replica's claim loop (`link::dispatcher`) looks for claimable jobs without
    /// being woken: lapsed leases, jobs whose back-off ended, a wake-up another replica's
    /// notification missed.
    pub claim_interval: Duration,
    /// Open link connections at once (each agent holds one); further ones wait in the listen
    /// backlog until one closes.
    pub max_connections: usize,
}

/// `[store]`.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Where jobs, clients, webhooks and new-hire requests are kept.
    pub backend: StoreBackend,
    /// File with the 32-byte key (base64) that seals secrets at rest.
    pub key_file: PathBuf,
}

/// Which database the store is.
#[derive(Debug, Clone)]
pub enum StoreBackend {
    /// The embedded default: one SQLite file (`store.path`), for one relay.
    Sqlite {
        /// The database file.
        path: PathBuf,
    },
    /// A PostgreSQL server (`store.url`), which several relays can share.
    Postgres(Box<PostgresConfig>),
}

/// Where a password comes from; never the command line or the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// A file holding only the password (`store.password_file`; a final newline is ignored).
    File(PathBuf),
    /// An environment variable (`store.password_env` names it).
    Env(String),
}

/// A PostgreSQL store's connection settings.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// Host, port, user, database and options from `store.url`, without a password.
    pub connection: tokio_postgres::Config,
    /// Where the password is read when the store opens.
    pub password: Option<PasswordSource>,
    /// Trust only this CA (PEM) for the server's certificate instead of the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// Connections kept open at most.
    pub pool_size: usize,
}

impl PostgresConfig {
    /// Validates `store.url` and its companions; errors name the key.
    pub fn parse(
        url: &str,
        password_file: Option<PathBuf>,
        password_env: Option<String>,
        ca_file: Option<PathBuf>,
        pool_size: Option<usize>,
    ) -> Result<Self, ConfigError> {
        use tokio_postgres::config::{Host, SslMode};
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError::invalid("store.url", "must start with postgres:// or postgresql://"));
        }
        let connection: tokio_postgres::Config = url
            .parse()
            .map_err(|e| ConfigError::invalid("store.url", format!("is not a PostgreSQL connection URL: {e}")))?;
        if connection.get_password().is_some() {
            return Err(ConfigError::invalid(
                "store.url",
                "must not hold a password (it would show wherever the URL does); use store.password_file or \
                 store.password_env",
            ));
        }
        if connection.get_hosts().is_empty() {
            return Err(ConfigError::invalid("store.url", "names no host"));
        }
        if connection.get_dbname().is_none() || connection.get_user().is_none() {
            return Err(ConfigError::invalid(
                "store.url",
                "must name the user and the database: postgres://USER@HOST/DB",
            ));
        }
        let mut connection = connection;
        if !url.contains("sslmode=") {
            // Unlike libpq's `prefer`, an unencrypted connection is never chosen silently.
            connection.ssl_mode(SslMode::Require);
        }
        let local = connection.get_hosts().iter().all(|host| match host {
            Host::Tcp(name) => name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()),
            #[cfg(unix)]
            Host::Unix(_) => true,
        });
        if connection.get_ssl_mode() != SslMode::Require && !local {
            return Err(ConfigError::invalid(
                "store.url",
                "sslmode other than require is allowed only to the loopback interface or a Unix socket: the \
                 connection to a remote database must be encrypted",
            ));
        }
        let password = match (password_file, password_env) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "store.password_env",
                    "set store.password_file or store.password_env, not both",
                ));
            }
            (Some(file), None) => Some(PasswordSource::File(file)),
            (None, Some(name)) if name.is_empty() => {
                return Err(ConfigError::invalid("store.password_env", "names no environment variable"));
            }
            (None, Some(name)) => Some(PasswordSource::Env(name)),
            (None, None) => None,
        };
        let pool_size = pool_size.unwrap_or(DEFAULT_POOL_SIZE);
        if pool_size == 0 {
            return Err(ConfigError::invalid("store.pool_size", "must be at least 1"));
        }
        Ok(Self { connection, password, ca_file, pool_size })
    }
}

/// `[jobs]`.
#[derive(Debug, Clone, Copy)]
pub struct JobsConfig {
    /// Deliveries before a job fails with `delivery_exhausted`.
    pub max_attempts: u32,
    /// Age at which an unfinished job fails with `expired`.
    pub time_to_live: Duration,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_window: Duration,
    /// How long final jobs and finished new-hire requests are kept.
    pub retention: Duration,
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
        if !(50..=60_000).contains(&file.link.claim_interval_ms) {
            return Err(ConfigError::invalid("link.claim_interval_ms", "must be between 50 and 60000"));
        }
        if file.link.write_timeout_seconds == 0 {
            return Err(ConfigError::invalid("link.write_timeout_seconds", "must be at least 1"));
        }
        if file.link.max_connections == 0 {
            return Err(ConfigError::invalid(
                "link.max_connections",
                "must be at least 1 (every agent holds one connection)",
            ));
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
        if !(1..=720).contains(&file.jobs.idempotency_hours) {
            return Err(ConfigError::invalid("jobs.idempotency_hours", "must be between 1 and 720"));
        }
        if !(1..=3650).contains(&file.jobs.retention_days) {
            return Err(ConfigError::invalid("jobs.retention_days", "must be between 1 and 3650"));
        }
        if file.jobs.retention_days * 24 < file.jobs.idempotency_hours {
            return Err(ConfigError::invalid(
                "jobs.retention_days",
                "must keep jobs at least as long as jobs.idempotency_hours remembers their keys",
            ));
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
        let down_after = file.agents.down_after_seconds.unwrap_or(file.link.heartbeat_seconds.saturating_mul(2));
        if down_after < file.link.heartbeat_seconds {
            return Err(ConfigError::invalid(
                "agents.down_after_seconds",
                format!(
                    "must be at least link.heartbeat_seconds ({}), or connected agents would show as down between \
                     heartbeats",
                    file.link.heartbeat_seconds
                ),
            ));
        }
        if !(1..=3650).contains(&file.agents.stale_after_days) {
            return Err(ConfigError::invalid("agents.stale_after_days", "must be between 1 and 3650"));
        }
        if file.api.max_body_bytes < 1024 {
            return Err(ConfigError::invalid("api.max_body_bytes", "must be at least 1024"));
        }
        if !(1..=3650).contains(&file.audit.retention_days) {
            return Err(ConfigError::invalid("audit.retention_days", "must be between 1 and 3650"));
        }
        if file.audit.unauthenticated_per_minute > 100_000 {
            return Err(ConfigError::invalid("audit.unauthenticated_per_minute", "must be at most 100000"));
        }
        if file.audit.file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
            return Err(ConfigError::invalid("audit.file", "is empty; name a file or leave the key out"));
        }
        let limits = file.api.limits.validate()?;
        let store = file.store.validate(resolve)?;
        let lifecycle = file.lifecycle.map(|l| l.validate(resolve)).transpose()?;
        let enrollment = match file.enrollment {
            None => None,
            Some(e) => {
                if !(5..=MAX_CERTIFICATE_LIFETIME_SECONDS).contains(&e.certificate_lifetime_seconds) {
                    return Err(ConfigError::invalid(
                        "enrollment.certificate_lifetime_seconds",
                        format!("must be between 5 and {MAX_CERTIFICATE_LIFETIME_SECONDS} (397 days)"),
                    ));
                }
                if e.per_address_per_minute == 0 {
                    return Err(ConfigError::invalid("enrollment.per_address_per_minute", "must be at least 1"));
                }
                Some(EnrollmentConfig {
                    issuer_cert_file: resolve(e.issuer_cert_file),
                    issuer_key_file: resolve(e.issuer_key_file),
                    certificate_lifetime: Duration::from_secs(e.certificate_lifetime_seconds),
                    per_address_per_minute: e.per_address_per_minute,
                })
            }
        };
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
                claim_interval: Duration::from_millis(file.link.claim_interval_ms),
                max_connections: file.link.max_connections,
            },
            store,
            jobs: JobsConfig {
                max_attempts: file.jobs.max_attempts,
                time_to_live: Duration::from_secs(file.jobs.ttl_hours * 3600),
                idempotency_window: Duration::from_secs(file.jobs.idempotency_hours * 3600),
                retention: Duration::from_secs(file.jobs.retention_days * 86_400),
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
            agents: crate::store::AgentThresholds {
                down_after: Duration::from_secs(down_after),
                stale_after: Duration::from_secs(file.agents.stale_after_days.saturating_mul(86_400)),
            },
            log,
            metrics: file.metrics,
            lifecycle,
            enrollment,
            audit: crate::audit::AuditConfig {
                file: file.audit.file.map(resolve),
                stdout: file.audit.stdout,
                retention: Duration::from_secs(file.audit.retention_days.saturating_mul(86_400)),
                unauthenticated_per_minute: file.audit.unauthenticated_per_minute,
            },
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
    fn enrollment_is_off_unless_configured_and_its_errors_name_the_key() {
        let c = Config::parse(MINIMAL, Path::new("/etc/pwrelay"), &Overrides::default()).expect("valid");
        assert!(c.enrollment.is_none());
        let on =
            format!("{MINIMAL}[enrollment]\nissuer_cert_file = \"pki/ca.pem\"\nissuer_key_file = \"pki/ca.key\"\n");
        let c = Config::parse(&on, Path::new("/etc/pwrelay"), &Overrides::default()).expect("valid");
        let enrollment = c.enrollment.expect("on");
        assert_eq!(enrollment.issuer_key_file, Path::new("/etc/pwrelay/pki/ca.key"));
        assert_eq!(enrollment.certificate_lifetime, Duration::from_secs(14 * 86_400));
        assert_eq!(enrollment.per_address_per_minute, 10);
        for (line, key) in [
            ("certificate_lifetime_seconds = 1", "enrollment.certificate_lifetime_seconds"),
            ("certificate_lifetime_seconds = 40000000", "enrollment.certificate_lifetime_seconds"),
            ("per_address_per_minute = 0", "enrollment.per_address_per_minute"),
        ] {
            let e = Config::parse(&format!("{on}{line}\n"), Path::new("/"), &Overrides::default())
                .expect_err("invalid")
                .to_string();
            assert!(e.starts_with(key), "{e}");
        }
    }

    #[test]
    fn minimal_file_gets_defaults_and_resolved_paths() {
        let c = Config::parse(MINIMAL, Path::new("/etc/pwrelay"), &Overrides::default()).expect("valid");
        assert_eq!(c.api.listen, "0.0.0.0:8443".parse().expect("addr"));
        assert_eq!(c.link.listen, "0.0.0.0:7443".parse().expect("addr"));
        assert_eq!(c.api.cert_file, Path::new("/etc/pwrelay/tls/api.pem"));
        assert!(
            matches!(&c.store.backend, StoreBackend::Sqlite { path } if path == Path::new("/var/lib/pwrelay/relay.db"))
        );
        assert_eq!(c.jobs.max_attempts, 5);
        assert_eq!(c.webhooks.max_attempts, 12);
        assert_eq!(c.webhooks.first_retry, Duration::from_secs(10));
        assert!(c.webhooks.ca_file.is_none() && !c.webhooks.dangerous_allow_http);
        assert_eq!(c.log, LogConfig::default());
        assert_eq!(c.agents.down_after, Duration::from_secs(30), "two heartbeat intervals");
        assert_eq!(c.agents.stale_after, Duration::from_secs(10 * 86_400));
        assert_eq!(c.link.max_connections, 1024);
    }

    #[test]
    fn the_link_connection_cap_is_configurable_and_not_zero() {
        let parse = |text: &str| Config::parse(text, Path::new("/"), &Overrides::default());
        let more = MINIMAL.replace("agent_ca_file", "max_connections = 12000\nagent_ca_file");
        assert_eq!(parse(&more).expect("valid").link.max_connections, 12_000);
        let none = MINIMAL.replace("agent_ca_file", "max_connections = 0\nagent_ca_file");
        let e = parse(&none).expect_err("zero").to_string();
        assert!(e.contains("link.max_connections"), "{e}");
    }

    #[test]
    fn agents_follow_the_heartbeat_and_errors_name_their_keys() {
        let parse = |text: &str| Config::parse(text, Path::new("/"), &Overrides::default());
        let faster = MINIMAL.replace("agent_ca_file", "heartbeat_seconds = 4\nagent_ca_file");
        assert_eq!(parse(&faster).expect("valid").agents.down_after, Duration::from_secs(8));
        let set = format!("{MINIMAL}[agents]\ndown_after_seconds = 45\nstale_after_days = 2\n");
        let c = parse(&set).expect("valid");
        assert_eq!(
            (c.agents.down_after, c.agents.stale_after),
            (Duration::from_secs(45), Duration::from_secs(2 * 86_400))
        );
        for (agents, key) in [
            ("down_after_seconds = 14", "agents.down_after_seconds"),
            ("stale_after_days = 0", "agents.stale_after_days"),
            ("stale_after_day = 3", "stale_after_day"),
        ] {
            let e = parse(&format!("{MINIMAL}[agents]\n{agents}\n")).expect_err(agents).to_string();
            assert!(e.contains(key), "{agents}: {e}");
        }
    }

    #[test]
    fn the_documented_full_example_is_valid() {
        let text = include_str!("../../deploy/config/relay.full.toml");
        let c =
            Config::parse(text, Path::new("/etc/pwrelay"), &Overrides::default()).expect("relay.full.toml is valid");
        assert_eq!(c.link.lease, Duration::from_secs(60));
        assert_eq!(c.link.max_connections, crate::listener::LINK_MAX_CONNECTIONS, "relay.full.toml shows the default");
        assert_eq!(c.agents.down_after, 2 * c.link.heartbeat, "relay.full.toml shows the default");
        assert_eq!(c.jobs.time_to_live, Duration::from_secs(24 * 3600));
        assert_eq!(c.jobs.idempotency_window, Duration::from_secs(24 * 3600));
        assert_eq!(c.jobs.retention, Duration::from_secs(30 * 86_400));
        let enrollment = c.enrollment.expect("relay.full.toml shows [enrollment]");
        assert_eq!(enrollment.certificate_lifetime, Duration::from_secs(default_certificate_lifetime_seconds()));
        assert_eq!(enrollment.per_address_per_minute, default_enrollments_per_minute());
        assert_eq!(
            c.api.limits,
            crate::api::limits::ApiLimits::default(),
            "relay.full.toml shows the limits' defaults"
        );
        assert_eq!(c.audit, crate::audit::AuditConfig::default(), "relay.full.toml shows the [audit] defaults");
    }

    #[test]
    fn audit_settings_are_checked_and_errors_name_the_key() {
        let with = |lines: &str| format!("{MINIMAL}\n[audit]\n{lines}\n");
        let c = Config::parse(
            &with("file = \"audit.jsonl\"\nstdout = true\nretention_days = 7"),
            Path::new("/etc/pwrelay"),
            &Overrides::default(),
        )
        .expect("valid");
        assert_eq!(c.audit.file.as_deref(), Some(Path::new("/etc/pwrelay/audit.jsonl")));
        assert!(c.audit.stdout);
        assert_eq!(c.audit.retention, Duration::from_secs(7 * 86_400));
        for (lines, key) in [
            ("retention_days = 0", "audit.retention_days"),
            ("unauthenticated_per_minute = 1000000", "audit.unauthenticated_per_minute"),
            ("file = \"\"", "audit.file"),
        ] {
            let e = Config::parse(&with(lines), Path::new("/"), &Overrides::default()).expect_err(lines).to_string();
            assert!(e.starts_with(key), "{lines}: {e}");
        }
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

    #[test]
    fn a_postgres_store_takes_its_password_from_a_file_or_the_environment_and_insists_on_tls() {
        let with = |store: &str| MINIMAL.replace("path = \"/var/lib/pwrelay/relay.db\"", store);
        let parse = |text: &str| Config::parse(text, Path::new("/etc/pwrelay"), &Overrides::default());
        let c = parse(&with("url = \"postgres://pwrelay@db.example:5433/pwrelay\"\npassword_file = \"db.pass\"\nca_file = \"db-ca.pem\""))
            .expect("valid");
        let StoreBackend::Postgres(pg) = c.store.backend else { panic!("not postgres") };
        assert_eq!(pg.password, Some(PasswordSource::File("/etc/pwrelay/db.pass".into())));
        assert_eq!(pg.ca_file.as_deref(), Some(Path::new("/etc/pwrelay/db-ca.pem")));
        assert_eq!(pg.connection.get_ssl_mode(), tokio_postgres::config::SslMode::Require, "require by default");
        assert_eq!((pg.connection.get_dbname(), pg.pool_size), (Some("pwrelay"), DEFAULT_POOL_SIZE));
        let c =
            parse(&with("url = \"postgres://pwrelay@127.0.0.1/pwrelay?sslmode=disable\"\npassword_env = \"PGPASS\""))
                .expect("loopback may go without TLS");
        assert!(
            matches!(c.store.backend, StoreBackend::Postgres(pg) if pg.password == Some(PasswordSource::Env("PGPASS".into())))
        );
        for (store, key, says) in [
            ("url = \"postgres://pwrelay:hunter2@db.example/pwrelay\"", "store.url", "password"),
            ("url = \"postgres://pwrelay@db.example/pwrelay?sslmode=prefer\"", "store.url", "encrypted"),
            ("url = \"mysql://db.example/pwrelay\"", "store.url", "postgres://"),
            ("url = \"postgres://db.example\"", "store.url", "user and the database"),
            ("path = \"a.db\"\nurl = \"postgres://u@h/d\"", "store.url", "not both"),
            ("path = \"a.db\"\npassword_file = \"p\"", "store.password_file", "PostgreSQL"),
            (
                "url = \"postgres://u@h/d\"\npassword_file = \"p\"\npassword_env = \"P\"",
                "store.password_env",
                "not both",
            ),
            ("url = \"postgres://u@h/d\"\npool_size = 0", "store.pool_size", "at least 1"),
            ("", "store.path", "store.url"),
        ] {
            let e = parse(&with(store)).expect_err(store).to_string();
            assert!(e.starts_with(key) && e.contains(says), "{store}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }
}
