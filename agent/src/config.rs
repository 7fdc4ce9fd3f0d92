//! The agent's configuration: one TOML file (`pwrelay-agent run --config agent.toml`).
//!
//! Parsed into validated types at start-up; errors name the key. Relative paths resolve against
//! the configuration file's directory. The service account's password is read from a file or an
//! environment variable, never from the command line; with `bind = "kerberos"` there is none (the
//! process's Kerberos credentials are used). Every key, with its default, is shown in
//! `deploy/config/agent.full.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pwrelay_shared::domain::DomainName;
use pwrelay_shared::secret::SecretString;
use pwrelay_shared::telemetry::LogConfig;
use serde::Deserialize;

pub use pwrelay_shared::config::ConfigError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentFile {
    relay: RelayFile,
    #[serde(default)]
    health: HealthFile,
    domains: Vec<DomainFile>,
    #[serde(default)]
    state: StateFile,
    #[serde(default)]
    log: LogConfig,
    #[serde(default)]
    audit: AuditFile,
}

/// `[audit]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditFile {
    #[serde(default = "default_true")]
    file: bool,
    #[serde(default)]
    syslog: bool,
    #[serde(default = "default_syslog_socket")]
    syslog_socket: PathBuf,
    #[serde(default = "default_syslog_facility")]
    syslog_facility: String,
}

impl Default for AuditFile {
    fn default() -> Self {
        Self {
            file: true,
            syslog: false,
            syslog_socket: default_syslog_socket(),
            syslog_facility: default_syslog_facility(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_syslog_socket() -> PathBuf {
    PathBuf::from("/dev/log")
}
fn default_syslog_facility() -> String {
    "authpriv".to_owned()
}

/// `[audit]`: where the audit events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Append them to `STATE_DIR/audit.jsonl` (`audit.file`).
    pub file: bool,
    /// Send them to syslog (`audit.syslog`, with its socket and facility).
    pub syslog: Option<crate::syslog::SyslogConfig>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { file: true, syslog: None }
    }
}

impl AuditFile {
    fn validate(self, resolve: &dyn Fn(PathBuf) -> PathBuf) -> Result<AuditConfig, ConfigError> {
        if !self.file && !self.syslog {
            return Err(ConfigError::invalid(
                "audit.file",
                "the audit log must go somewhere: keep audit.file = true or set audit.syslog = true",
            ));
        }
        let facility = crate::syslog::FACILITIES
            .iter()
            .find(|(name, _)| *name == self.syslog_facility)
            .map(|(_, code)| *code)
            .ok_or_else(|| {
                let names: Vec<&str> = crate::syslog::FACILITIES.iter().map(|(n, _)| *n).collect();
                ConfigError::invalid("audit.syslog_facility", format!("must be one of {}", names.join(", ")))
            })?;
        if self.syslog_socket.as_os_str().is_empty() {
            return Err(ConfigError::invalid("audit.syslog_socket", "names no socket; the default is /dev/log"));
        }
        let syslog = self.syslog.then(|| crate::syslog::SyslogConfig { socket: resolve(self.syslog_socket), facility });
        Ok(AuditConfig { file: self.file, syslog })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    #[serde(default = "default_state_dir")]
    dir: PathBuf,
}

impl Default for StateFile {
    fn default() -> Self {
        Self { dir: default_state_dir() }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/pwrelay-agent")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RelayFile {
    url: String,
    server_name: Option<String>,
    ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
    #[serde(default = "default_max_jobs_in_flight")]
    max_jobs_in_flight: u32,
    #[serde(default = "default_heartbeat_seconds")]
    heartbeat_seconds: u64,
    #[serde(default = "default_shutdown_grace_seconds")]
    shutdown_grace_seconds: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthFile {
    #[serde(default = "default_health_listen")]
    listen: SocketAddr,
    #[serde(default = "default_bind_check_interval_seconds")]
    bind_check_interval_seconds: u64,
}

impl Default for HealthFile {
    fn default() -> Self {
        Self { listen: default_health_listen(), bind_check_interval_seconds: default_bind_check_interval_seconds() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainFile {
    name: DomainName,
    #[serde(default)]
    urls: Vec<String>,
    discovery: Option<DiscoveryFile>,
    ca_file: PathBuf,
    base_dn: Option<String>,
    #[serde(default)]
    bind: BindMethod,
    bind_dn: Option<String>,
    bind_password_file: Option<PathBuf>,
    bind_password_env: Option<String>,
    #[serde(default = "default_ldap_timeout_seconds")]
    timeout_seconds: u64,
    #[serde(default = "default_connections")]
    connections: u32,
    #[serde(default = "default_refused_bind_retry_seconds")]
    refused_bind_retry_seconds: u64,
    #[serde(default = "default_refused_bind_retry_max_seconds")]
    refused_bind_retry_max_seconds: u64,
    #[serde(default)]
    verify_bind: bool,
    #[serde(default)]
    scope: ScopeConfig,
    #[serde(default)]
    protected: ProtectedConfig,
    #[serde(default)]
    password_check: PasswordCheckFile,
    reconcile: Option<ReconcileFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordCheckFile {
    #[serde(default)]
    banned: BannedMode,
    custom_list_file: Option<PathBuf>,
    organization_name: Option<String>,
}

/// How the service account authenticates to the DCs (`bind`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BindMethod {
    /// LDAP simple bind as `bind_dn` with its password, over LDAPS or StartTLS (default).
    #[default]
    Simple,
    /// SASL GSSAPI (Kerberos) bind with the process's own credentials, over LDAPS or StartTLS: the
    /// ticket cache (`KRB5CCNAME`) or client keytab (`KRB5_CLIENT_KTNAME`). No password is stored. The service ticket is for
    /// `ldap/<host of the DC URL>`, so DC URLs name hosts, not IP addresses. Needs an agent built
    /// with the `kerberos` feature.
    Kerberos,
}

/// Whether this build can bind with Kerberos (the `kerberos` cargo feature).
pub const KERBEROS_SUPPORTED: bool = cfg!(feature = "kerberos");

/// How the banned-password evaluation treats caller-supplied passwords.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BannedMode {
    /// Refuse passwords that fail (default).
    #[default]
    Enforce,
    /// Let them through, with a note and an audit event.
    Audit,
    /// Do not evaluate (the AD policy pre-check still runs).
    Off,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReconcileFile {
    salt_file: PathBuf,
    #[serde(default = "default_hash")]
    hash: String,
    #[serde(default = "default_iterations")]
    iterations: u32,
    #[serde(default = "default_length")]
    length: usize,
    #[serde(default = "default_upn_case")]
    upn_case: String,
}

fn default_hash() -> String {
    "sha512".into()
}
fn default_iterations() -> u32 {
    1000
}
fn default_length() -> usize {
    60
}
fn default_upn_case() -> String {
    "lower".into()
}

/// `[domains.password_check]`, validated: the agent's own check of caller-supplied passwords
/// before anything is written.
#[derive(Debug, Clone, Default)]
pub struct PasswordCheckConfig {
    /// Banned-password evaluation mode.
    pub banned: BannedMode,
    /// The organization's banned terms.
    pub custom_list: pwrelay_shared::password::CustomList,
    /// The organization's name (passwords containing it are refused).
    pub organization_name: Option<String>,
}

/// `[domains.reconcile]`, validated: how the PAM-known value is derived (seed-compatible PBKDF2).
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    /// The shared salt; it never leaves the agent.
    pub salt: SecretString,
    /// Derivation parameters.
    pub params: pwrelay_shared::derive::DeriveParams,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiscoveryFile {
    site: Option<String>,
    nameserver: Option<SocketAddr>,
    #[serde(default = "default_discovery_transport")]
    transport: String,
}

fn default_discovery_transport() -> String {
    "ldaps".into()
}

/// `[domains.scope]`: which accounts the agent may change (gradual roll-out). Both lists empty
/// means every user under `base_dn`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ScopeConfig {
    /// OUs (and everything below them) whose users are in scope.
    #[serde(default)]
    pub allowed_ous: Vec<String>,
    /// Groups whose members, directly or through nested groups, are in scope.
    #[serde(default)]
    pub allowed_groups: Vec<String>,
}

/// `[domains.protected]`: protected accounts (adminCount=1, members of protected groups) the agent
/// may change anyway.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProtectedConfig {
    /// DNs of accounts, or of groups whose members (nested) are allowed.
    #[serde(default)]
    pub allow: Vec<String>,
}

fn default_max_jobs_in_flight() -> u32 {
    4
}
fn default_heartbeat_seconds() -> u64 {
    15
}
fn default_shutdown_grace_seconds() -> u64 {
    30
}
fn default_health_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9444))
}

/// Longest `health.bind_check_interval_seconds`.
pub const MAX_BIND_CHECK_INTERVAL_SECONDS: u64 = 3600;

fn default_bind_check_interval_seconds() -> u64 {
    30
}

/// Longest `domains[].refused_bind_retry_max_seconds` (a week).
pub const MAX_REFUSED_BIND_RETRY_SECONDS: u64 = 7 * 86_400;

fn default_refused_bind_retry_seconds() -> u64 {
    900
}

fn default_refused_bind_retry_max_seconds() -> u64 {
    4 * 3600
}
/// Most service-account connections per domain (`domains[].connections`).
pub const MAX_CONNECTIONS: u32 = 32;

fn default_connections() -> u32 {
    4
}

fn default_ldap_timeout_seconds() -> u64 {
    10
}

/// The validated agent configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// How to reach the relay.
    pub relay: RelayConfig,
    /// The local health endpoint.
    pub health: HealthConfig,
    /// The AD domains this agent serves.
    pub domains: Vec<DomainConfig>,
    /// Where the journal (`journal.jsonl`) and the audit log (`audit.jsonl`) live.
    pub state_dir: PathBuf,
    /// Logging.
    pub log: LogConfig,
    /// Where audit events go (`[audit]`).
    pub audit: AuditConfig,
}

/// `[relay]`.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Host and port of the relay's agent link.
    pub host: String,
    /// Port of the relay's agent link.
    pub port: u16,
    /// The name the relay's certificate must carry (defaults to the URL's host).
    pub server_name: String,
    /// CA that issued the relay's link certificate (`ca.pem` from `pwrelay pki`).
    pub ca_file: PathBuf,
    /// This agent's client certificate.
    pub cert_file: PathBuf,
    /// This agent's private key.
    pub key_file: PathBuf,
    /// Jobs carried out at once.
    pub max_jobs_in_flight: u32,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// How long running jobs get to finish and report after SIGTERM.
    pub shutdown_grace: Duration,
}

/// `[health]`.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// Listen address of `/healthz` and `/readyz` (default 127.0.0.1:9444).
    pub listen: SocketAddr,
    /// How often each DC's bind is checked (`bind_check_interval_seconds`, default 30 s).
    pub bind_check_interval: Duration,
}

/// How a DC URL is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LdapTransport {
    /// `ldaps://`: TLS from the first byte (port 636).
    Ldaps,
    /// `ldap://`: plain connect, then StartTLS before anything else is sent (port 389).
    StartTls,
}

/// One domain controller URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcUrl {
    /// The URL as ldap3 takes it.
    pub url: String,
    /// Its transport.
    pub transport: LdapTransport,
}

/// `[[domains]]`.
#[derive(Debug, Clone)]
pub struct DomainConfig {
    /// The AD DNS domain.
    pub name: DomainName,
    /// DC URLs, tried in order (empty when `discovery` is set).
    pub urls: Vec<DcUrl>,
    /// Find the DCs in DNS SRV records instead of `urls`.
    pub discovery: Option<crate::directory::discovery::Discovery>,
    /// CA certificate(s) that issued the DCs' certificates.
    pub ca_file: PathBuf,
    /// Where accounts are searched (default: the domain's naming context).
    pub base_dn: String,
    /// How the service account binds.
    pub bind: BindMethod,
    /// The service account (empty with [`BindMethod::Kerberos`]: the credentials name it).
    pub bind_dn: String,
    /// The service account's password (empty with [`BindMethod::Kerberos`]).
    pub bind_password: SecretString,
    /// The file `bind_password` was read from (`bind_password_file`), read again while the DCs
    /// refuse the password; `None` with `bind_password_env` or Kerberos.
    pub bind_password_file: Option<PathBuf>,
    /// After a DC refuses the service account's password, how long it is not used again unless
    /// `bind_password_file` changes (`refused_bind_retry_seconds`, default 15 minutes).
    pub refused_bind_retry: Duration,
    /// The longest such wait: it doubles with every further refusal of the same password
    /// (`refused_bind_retry_max_seconds`, default 4 hours).
    pub refused_bind_retry_max: Duration,
    /// Connect and operation timeout.
    pub timeout: Duration,
    /// Service-account connections for jobs, each serving one job at a time (writes go through one
    /// more, shared by all jobs).
    pub connections: usize,
    /// After a write without must_change, also bind with the new password.
    pub verify_bind: bool,
    /// Which accounts may be changed.
    pub scope: ScopeConfig,
    /// Protected accounts that may be changed anyway.
    pub protected: ProtectedConfig,
    /// The pre-check of caller-supplied passwords.
    pub password_check: PasswordCheckConfig,
    /// Reconciliation to the derived value, when configured.
    pub reconcile: Option<ReconcileConfig>,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = pwrelay_shared::config::read(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base, &|name| std::env::var(name).ok()).map_err(|e| e.in_file(path))
    }

    /// Parses TOML text; relative paths resolve against `base`; `env` looks up variables.
    pub fn parse(text: &str, base: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let file: AgentFile = pwrelay_shared::config::parse_toml(text)?;
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };

        if !(1..=MAX_BIND_CHECK_INTERVAL_SECONDS).contains(&file.health.bind_check_interval_seconds) {
            return Err(ConfigError::invalid(
                "health.bind_check_interval_seconds",
                format!("must be 1-{MAX_BIND_CHECK_INTERVAL_SECONDS}"),
            ));
        }
        let url = file.relay.url.trim();
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| ConfigError::invalid("relay.url", "must start with https:// (the link is always TLS)"))?;
        let authority = rest.trim_end_matches('/');
        let (host, port) = split_host_port(authority).ok_or_else(|| {
            ConfigError::invalid("relay.url", "must be https://HOST:PORT, e.g. https://relay.example.com:7443")
        })?;
        if file.relay.max_jobs_in_flight == 0 || file.relay.max_jobs_in_flight > 64 {
            return Err(ConfigError::invalid("relay.max_jobs_in_flight", "must be 1-64"));
        }
        if file.relay.heartbeat_seconds == 0 {
            return Err(ConfigError::invalid("relay.heartbeat_seconds", "must be at least 1"));
        }
        if file.domains.is_empty() {
            return Err(ConfigError::invalid("domains", "configure at least one [[domains]] entry"));
        }
        let mut domains = Vec::new();
        for (i, d) in file.domains.into_iter().enumerate() {
            let key = |field: &str| format!("domains[{i}].{field}");
            if domains.iter().any(|known: &DomainConfig| known.name == d.name) {
                return Err(ConfigError::invalid(key("name"), format!("{} is configured twice", d.name)));
            }
            let discovery = match (&d.discovery, d.urls.is_empty()) {
                (None, true) => {
                    return Err(ConfigError::invalid(
                        key("urls"),
                        "list at least one domain controller (e.g. ldaps://dc1.corp.example.com) or add [domains.discovery]",
                    ));
                }
                (Some(_), false) => {
                    return Err(ConfigError::invalid(
                        key("discovery"),
                        "set either urls or [domains.discovery], not both",
                    ));
                }
                (None, false) => None,
                (Some(file), true) => {
                    let transport = match file.transport.as_str() {
                        "ldaps" => LdapTransport::Ldaps,
                        "starttls" => LdapTransport::StartTls,
                        other => {
                            return Err(ConfigError::invalid(
                                key("discovery.transport"),
                                format!("{other:?}: use \"ldaps\" or \"starttls\""),
                            ));
                        }
                    };
                    let mut discovery = crate::directory::discovery::Discovery::new(transport);
                    if let Some(site) = &file.site {
                        discovery = discovery
                            .with_site(site)
                            .map_err(|e| ConfigError::invalid(key("discovery.site"), e.to_string()))?;
                    }
                    if let Some(nameserver) = file.nameserver {
                        discovery = discovery.with_nameserver(nameserver);
                    }
                    Some(discovery)
                }
            };
            let urls: Vec<DcUrl> = d
                .urls
                .iter()
                .map(|u| parse_dc_url(u).map_err(|m| ConfigError::invalid(key("urls"), m)))
                .collect::<Result<_, _>>()?;
            let (bind_dn, bind_password) = match d.bind {
                BindMethod::Simple => {
                    let password = simple_bind_password(&d, &resolve, env, &key)?;
                    match d.bind_dn.as_deref().map(str::trim) {
                        None => {
                            return Err(ConfigError::invalid(key("bind_dn"), "the service account's DN is required"));
                        }
                        Some("") => return Err(ConfigError::invalid(key("bind_dn"), "is empty")),
                        Some(_) => (d.bind_dn.clone().unwrap_or_default(), password),
                    }
                }
                BindMethod::Kerberos => {
                    kerberos_bind_settings(&d, &urls, &key, KERBEROS_SUPPORTED)?;
                    (String::new(), SecretString::from(""))
                }
            };
            if !(1..=MAX_CONNECTIONS).contains(&d.connections) {
                return Err(ConfigError::invalid(key("connections"), format!("must be 1-{MAX_CONNECTIONS}")));
            }
            if d.timeout_seconds == 0 {
                return Err(ConfigError::invalid(key("timeout_seconds"), "must be at least 1"));
            }
            if !(1..=MAX_REFUSED_BIND_RETRY_SECONDS).contains(&d.refused_bind_retry_seconds) {
                return Err(ConfigError::invalid(
                    key("refused_bind_retry_seconds"),
                    format!("must be 1-{MAX_REFUSED_BIND_RETRY_SECONDS}"),
                ));
            }
            if !(d.refused_bind_retry_seconds..=MAX_REFUSED_BIND_RETRY_SECONDS)
                .contains(&d.refused_bind_retry_max_seconds)
            {
                return Err(ConfigError::invalid(
                    key("refused_bind_retry_max_seconds"),
                    format!(
                        "must be at least refused_bind_retry_seconds ({}) and at most {MAX_REFUSED_BIND_RETRY_SECONDS}",
                        d.refused_bind_retry_seconds
                    ),
                ));
            }
            // Read again while the DCs refuse the password (see directory::service_credential).
            let bind_password_file = match d.bind {
                BindMethod::Simple => d.bind_password_file.clone().map(&resolve),
                BindMethod::Kerberos => None,
            };
            let base_dn = d.base_dn.unwrap_or_else(|| d.name.default_base_dn());
            let dn_list = |list: &[String], field: &str| -> Result<(), ConfigError> {
                match list.iter().find(|dn| !dn.contains('=')) {
                    Some(bad) => Err(ConfigError::invalid(key(field), format!("{bad:?} is not a distinguished name"))),
                    None => Ok(()),
                }
            };
            dn_list(&d.scope.allowed_ous, "scope.allowed_ous")?;
            dn_list(&d.scope.allowed_groups, "scope.allowed_groups")?;
            dn_list(&d.protected.allow, "protected.allow")?;
            let custom_list = match &d.password_check.custom_list_file {
                None => pwrelay_shared::password::CustomList::default(),
                Some(file) => {
                    let path = resolve(file.clone());
                    let text = std::fs::read_to_string(&path).map_err(|e| {
                        ConfigError::invalid(key("password_check.custom_list_file"), format!("{}: {e}", path.display()))
                    })?;
                    pwrelay_shared::password::CustomList::parse(&text).map_err(|e| {
                        ConfigError::invalid(key("password_check.custom_list_file"), format!("{}: {e}", path.display()))
                    })?
                }
            };
            let password_check = PasswordCheckConfig {
                banned: d.password_check.banned,
                custom_list,
                organization_name: d.password_check.organization_name.clone(),
            };
            let reconcile = match &d.reconcile {
                None => None,
                Some(r) => Some(reconcile_config(r, &resolve, &key)?),
            };
            domains.push(DomainConfig {
                name: d.name,
                urls,
                discovery,
                ca_file: resolve(d.ca_file),
                base_dn,
                bind: d.bind,
                bind_dn,
                bind_password,
                bind_password_file,
                refused_bind_retry: Duration::from_secs(d.refused_bind_retry_seconds),
                refused_bind_retry_max: Duration::from_secs(d.refused_bind_retry_max_seconds),
                timeout: Duration::from_secs(d.timeout_seconds),
                connections: usize::try_from(d.connections).unwrap_or(1),
                verify_bind: d.verify_bind,
                scope: d.scope,
                protected: d.protected,
                password_check,
                reconcile,
            });
        }
        Ok(Self {
            relay: RelayConfig {
                server_name: file.relay.server_name.unwrap_or_else(|| host.clone()),
                host,
                port,
                ca_file: resolve(file.relay.ca_file),
                cert_file: resolve(file.relay.cert_file),
                key_file: resolve(file.relay.key_file),
                max_jobs_in_flight: file.relay.max_jobs_in_flight,
                heartbeat: Duration::from_secs(file.relay.heartbeat_seconds),
                shutdown_grace: Duration::from_secs(file.relay.shutdown_grace_seconds),
            },
            health: HealthConfig {
                listen: file.health.listen,
                bind_check_interval: Duration::from_secs(file.health.bind_check_interval_seconds),
            },
            domains,
            state_dir: resolve(file.state.dir),
            log: file.log,
            audit: file.audit.validate(&resolve)?,
        })
    }
}

/// The service account's password for `bind = "simple"`: from exactly one of `bind_password_file`
/// (its line ending trimmed) or `bind_password_env`; never empty.
fn simple_bind_password(
    d: &DomainFile,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
    env: &dyn Fn(&str) -> Option<String>,
    key: &dyn Fn(&str) -> String,
) -> Result<SecretString, ConfigError> {
    let password = match (&d.bind_password_file, &d.bind_password_env) {
        (Some(file), None) => {
            let path = resolve(file.clone());
            let text =
                SecretString::new(std::fs::read_to_string(&path).map_err(|e| {
                    ConfigError::invalid(key("bind_password_file"), format!("{}: {e}", path.display()))
                })?);
            let trimmed = text.expose_secret().trim_end_matches(['\r', '\n']);
            SecretString::from(trimmed)
        }
        (None, Some(var)) => SecretString::new(env(var).ok_or_else(|| {
            ConfigError::invalid(key("bind_password_env"), format!("environment variable {var} is not set"))
        })?),
        _ => {
            return Err(ConfigError::invalid(
                key("bind_password_file"),
                "set exactly one of bind_password_file or bind_password_env",
            ));
        }
    };
    if password.is_empty() {
        return Err(ConfigError::invalid(key("bind_password_file"), "the service account password is empty"));
    }
    Ok(password)
}

/// Checks the settings of `bind = "kerberos"`: a build with the feature, no password or DN keys,
/// and DC URLs that name hosts (the service principal is `ldap/<host>`).
fn kerberos_bind_settings(
    d: &DomainFile,
    urls: &[DcUrl],
    key: &dyn Fn(&str) -> String,
    supported: bool,
) -> Result<(), ConfigError> {
    const NOT_USED: &str = "is not used with bind = \"kerberos\" (the agent's Kerberos credentials name the \
                            service account and no password is stored); remove it";
    if !supported {
        return Err(ConfigError::invalid(
            key("bind"),
            "\"kerberos\" needs an agent built with Kerberos support: \
             cargo build --release -p pwrelay-agent --features kerberos (or use bind = \"simple\")",
        ));
    }
    if d.bind_password_file.is_some() {
        return Err(ConfigError::invalid(key("bind_password_file"), NOT_USED));
    }
    if d.bind_password_env.is_some() {
        return Err(ConfigError::invalid(key("bind_password_env"), NOT_USED));
    }
    if d.bind_dn.is_some() {
        return Err(ConfigError::invalid(key("bind_dn"), NOT_USED));
    }
    if let Some(dc) = urls.iter().find(|dc| dc.host_is_ip_address()) {
        return Err(ConfigError::invalid(
            key("urls"),
            format!(
                "{:?}: bind = \"kerberos\" needs the DC's DNS host name, not an IP address (the service ticket \
                 is for ldap/<host>), e.g. ldaps://dc1.corp.example.com",
                dc.url
            ),
        ));
    }
    Ok(())
}

fn reconcile_config(
    file: &ReconcileFile,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
    key: &dyn Fn(&str) -> String,
) -> Result<ReconcileConfig, ConfigError> {
    use pwrelay_shared::derive::{DeriveParams, HashAlgorithm, MIN_SALT_BYTES, UpnCase};
    let path = resolve(file.salt_file.clone());
    let text = SecretString::new(
        std::fs::read_to_string(&path)
            .map_err(|e| ConfigError::invalid(key("reconcile.salt_file"), format!("{}: {e}", path.display())))?,
    );
    let salt = SecretString::from(text.expose_secret().trim_end_matches(['\r', '\n']));
    if salt.expose_secret().len() < MIN_SALT_BYTES {
        return Err(ConfigError::invalid(
            key("reconcile.salt_file"),
            format!("the salt must be at least {MIN_SALT_BYTES} bytes"),
        ));
    }
    let hash = match file.hash.as_str() {
        "sha512" => HashAlgorithm::Sha512,
        "sha256" => HashAlgorithm::Sha256,
        other => {
            return Err(ConfigError::invalid(
                key("reconcile.hash"),
                format!("{other:?}: use \"sha512\" or \"sha256\""),
            ));
        }
    };
    let case = match file.upn_case.as_str() {
        "lower" => UpnCase::Lower,
        "upper" => UpnCase::Upper,
        "unchanged" => UpnCase::Unchanged,
        other => {
            return Err(ConfigError::invalid(
                key("reconcile.upn_case"),
                format!("{other:?}: use \"lower\", \"upper\" or \"unchanged\""),
            ));
        }
    };
    let params = DeriveParams { hash, iterations: file.iterations, length: file.length, case };
    // Refuse parameters derive() would refuse, at start-up rather than per job.
    pwrelay_shared::derive::derive("check@example.com", &salt, &params)
        .map_err(|e| ConfigError::invalid(key("reconcile"), e.to_string()))?;
    Ok(ReconcileConfig { salt, params })
}

pub(crate) fn split_host_port(authority: &str) -> Option<(String, u16)> {
    let (host, port) = authority.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || authority.contains('/') {
        return None;
    }
    Some((host.to_owned(), port.parse().ok()?))
}

impl DcUrl {
    /// The host part of the URL, without brackets around an IPv6 address (`dc1.corp.example.com`
    /// of `ldaps://dc1.corp.example.com:636`).
    pub fn host(&self) -> &str {
        let rest = self.url.split_once("://").map_or(self.url.as_str(), |(_, rest)| rest);
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
        if let Some(v6) = authority.strip_prefix('[') {
            return v6.split(']').next().unwrap_or_default();
        }
        authority.split(':').next().unwrap_or_default()
    }

    /// Whether the URL names its DC by IP address (which a Kerberos bind cannot use).
    pub fn host_is_ip_address(&self) -> bool {
        self.host().parse::<std::net::IpAddr>().is_ok()
    }
}

fn parse_dc_url(url: &str) -> Result<DcUrl, String> {
    let transport = if url.starts_with("ldaps://") {
        LdapTransport::Ldaps
    } else if url.starts_with("ldap://") {
        LdapTransport::StartTls
    } else {
        return Err(format!(
            "{url:?}: use ldaps://HOST (TLS) or ldap://HOST (StartTLS is then required); plaintext LDAP is never used"
        ));
    };
    Ok(DcUrl { url: url.to_owned(), transport })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[relay]
url = "https://relay.example.com:7443"
ca_file = "pki/ca.pem"
cert_file = "pki/agent.pem"
key_file = "pki/agent.key"

[[domains]]
name = "corp.example.com"
urls = ["ldaps://dc1.corp.example.com", "ldap://dc2.corp.example.com"]
ca_file = "dc-ca.pem"
bind_dn = "CN=svc-pwrelay,OU=Service,DC=corp,DC=example,DC=com"
bind_password_env = "BIND_PW"
"#;

    fn env(name: &str) -> Option<String> {
        (name == "BIND_PW").then(|| "s3cret!".to_owned())
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = Config::parse(MINIMAL, Path::new("/etc/pwrelay"), &env).expect("valid");
        assert_eq!((c.relay.host.as_str(), c.relay.port), ("relay.example.com", 7443));
        assert_eq!(c.relay.server_name, "relay.example.com");
        assert_eq!(c.health.listen, "127.0.0.1:9444".parse().expect("addr"));
        let d = &c.domains[0];
        assert_eq!(d.base_dn, "DC=corp,DC=example,DC=com");
        assert_eq!(d.urls[1].transport, LdapTransport::StartTls);
        assert_eq!(d.bind_password.expose_secret(), "s3cret!");
        assert_eq!(d.ca_file, Path::new("/etc/pwrelay/dc-ca.pem"));
        assert_eq!(c.health.bind_check_interval, Duration::from_secs(30));
        assert_eq!(
            (d.refused_bind_retry, d.refused_bind_retry_max),
            (Duration::from_secs(900), Duration::from_secs(14_400))
        );
        assert_eq!(d.bind_password_file, None, "the password came from the environment");
    }

    #[test]
    fn bind_check_and_refused_bind_settings_are_validated_naming_the_key() {
        let refused = |text: String| Config::parse(&text, Path::new("/"), &env).expect_err("refused").to_string();
        let e = refused(MINIMAL.replace("[[domains]]", "[health]\nbind_check_interval_seconds = 0\n\n[[domains]]"));
        assert!(e.starts_with("health.bind_check_interval_seconds"), "{e}");
        let e = refused(format!("{MINIMAL}refused_bind_retry_seconds = 0\n"));
        assert!(e.starts_with("domains[0].refused_bind_retry_seconds"), "{e}");
        let e = refused(format!("{MINIMAL}refused_bind_retry_seconds = 600\nrefused_bind_retry_max_seconds = 60\n"));
        assert!(e.starts_with("domains[0].refused_bind_retry_max_seconds") && e.contains("600"), "{e}");
        let text = MINIMAL.replace("[[domains]]", "[health]\nbind_check_interval_seconds = 5\n\n[[domains]]");
        let c = Config::parse(
            &format!("{text}refused_bind_retry_seconds = 60\nrefused_bind_retry_max_seconds = 600\n"),
            Path::new("/"),
            &env,
        )
        .expect("valid");
        assert_eq!(c.health.bind_check_interval, Duration::from_secs(5));
        assert_eq!(c.domains[0].refused_bind_retry_max, Duration::from_secs(600));
    }

    #[test]
    fn plaintext_and_missing_secrets_are_refused_naming_the_key() {
        let plain = MINIMAL.replace("\"ldaps://dc1.corp.example.com\", ", "\"ldapi://x\", ");
        let e = Config::parse(&plain, Path::new("/"), &env).expect_err("refused").to_string();
        assert!(e.starts_with("domains[0].urls"), "{e}");
        let e = Config::parse(MINIMAL, Path::new("/"), &|_| None).expect_err("refused").to_string();
        assert!(e.contains("domains[0].bind_password_env") && e.contains("BIND_PW"), "{e}");
        let http = MINIMAL.replace("https://relay", "http://relay");
        let e = Config::parse(&http, Path::new("/"), &env).expect_err("refused").to_string();
        assert!(e.starts_with("relay.url"), "{e}");
        let both = MINIMAL.replace("bind_password_env", "bind_password_file = \"x\"\nbind_password_env");
        let e = Config::parse(&both, Path::new("/"), &env).expect_err("refused").to_string();
        assert!(e.contains("exactly one"), "{e}");
        let unknown = MINIMAL.replace("[relay]", "[relay]\npassword = \"x\"");
        let e = Config::parse(&unknown, Path::new("/"), &env).expect_err("refused").to_string();
        assert!(e.contains("password"), "{e}");
    }

    #[test]
    fn the_documented_full_example_is_valid() {
        let text = include_str!("../../deploy/config/agent.full.toml")
            .replace("bind_password_file = \"/etc/pwrelay/bind.secret\"", "bind_password_env = \"BIND_PW\"");
        let c = Config::parse(&text, Path::new("/etc/pwrelay"), &env).expect("agent.full.toml is valid");
        assert_eq!(c.relay.max_jobs_in_flight, 4);
        assert_eq!(c.domains[0].urls.len(), 2);
        assert_eq!(c.domains[0].connections, 4);
        assert_eq!(c.audit, AuditConfig::default(), "agent.full.toml shows the [audit] defaults");
    }

    #[test]
    fn audit_goes_to_the_file_syslog_or_both_and_errors_name_the_key() {
        let with = |lines: &str| format!("{MINIMAL}\n[audit]\n{lines}\n");
        let c = Config::parse(
            &with("syslog = true\nsyslog_socket = \"run/log\"\nsyslog_facility = \"local3\""),
            Path::new("/etc/x"),
            &env,
        )
        .expect("valid");
        let syslog = crate::syslog::SyslogConfig { socket: "/etc/x/run/log".into(), facility: 19 };
        assert_eq!(c.audit, AuditConfig { file: true, syslog: Some(syslog) });
        let e = Config::parse(&with("file = false"), Path::new("/"), &env).expect_err("nowhere").to_string();
        assert!(e.starts_with("audit.file"), "{e}");
        let e = Config::parse(&with("syslog = true\nsyslog_facility = \"kern\""), Path::new("/"), &env)
            .expect_err("facility")
            .to_string();
        assert!(e.starts_with("audit.syslog_facility") && e.contains("authpriv"), "{e}");
    }

    #[test]
    fn connections_default_to_four_within_one_to_thirty_two() {
        assert_eq!(Config::parse(MINIMAL, Path::new("/"), &env).expect("valid").domains[0].connections, 4);
        let with = |n: &str| MINIMAL.replace("bind_dn", &format!("connections = {n}\nbind_dn"));
        assert_eq!(Config::parse(&with("1"), Path::new("/"), &env).expect("valid").domains[0].connections, 1);
        for refused in ["0", "33"] {
            let e = Config::parse(&with(refused), Path::new("/"), &env).expect_err("refused").to_string();
            assert!(e.starts_with("domains[0].connections:") && e.contains("1-32"), "{e}");
        }
    }

    /// MINIMAL with `bind = "kerberos"` instead of the DN and the password, and DCs by host name.
    fn kerberos_text() -> String {
        MINIMAL.replace(
            "bind_dn = \"CN=svc-pwrelay,OU=Service,DC=corp,DC=example,DC=com\"\nbind_password_env = \"BIND_PW\"",
            "bind = \"kerberos\"",
        )
    }

    #[test]
    fn kerberos_bind_takes_no_password_and_needs_host_names() {
        let text = kerberos_text();
        assert!(text.contains("bind = \"kerberos\"") && !text.contains("bind_dn"), "{text}");
        if !KERBEROS_SUPPORTED {
            let e = Config::parse(&text, Path::new("/"), &env).expect_err("not built in").to_string();
            assert!(e.starts_with("domains[0].bind:") && e.contains("--features kerberos"), "{e}");
            return;
        }
        let c = Config::parse(&text, Path::new("/"), &env).expect("valid");
        assert_eq!(c.domains[0].bind, BindMethod::Kerberos);
        assert!(c.domains[0].bind_password.is_empty() && c.domains[0].bind_dn.is_empty());
        let refused = |text: String, key: &str| {
            let e = Config::parse(&text, Path::new("/"), &env).expect_err("refused").to_string();
            assert!(e.starts_with(&format!("domains[0].{key}:")), "{e}");
            e
        };
        let e = refused(text.replace("bind = ", "bind_password_env = \"BIND_PW\"\nbind = "), "bind_password_env");
        assert!(e.contains("not used with bind = \"kerberos\""), "{e}");
        refused(text.replace("bind = ", "bind_password_file = \"bind.secret\"\nbind = "), "bind_password_file");
        refused(text.replace("bind = ", "bind_dn = \"CN=svc,DC=corp\"\nbind = "), "bind_dn");
        for ip in ["ldaps://10.0.0.5", "ldap://10.0.0.5:389", "ldaps://[fd00::5]:636"] {
            let e = refused(text.replace("ldaps://dc1.corp.example.com", ip), "urls");
            assert!(e.contains("DNS host name") && e.contains(ip), "{e}");
        }
    }

    #[test]
    fn a_kerberos_bind_without_the_feature_says_how_to_build() {
        let file: AgentFile = toml::from_str(&kerberos_text()).expect("toml");
        let key = |field: &str| format!("domains[0].{field}");
        let e = kerberos_bind_settings(&file.domains[0], &[], &key, false).expect_err("not built in").to_string();
        assert!(e.starts_with("domains[0].bind:") && e.contains("--features kerberos"), "{e}");
    }

    #[test]
    fn bind_methods_and_the_simple_bind_dn_are_checked() {
        let e = Config::parse(&MINIMAL.replace("bind_dn", "bind = \"ntlm\"\nbind_dn"), Path::new("/"), &env)
            .expect_err("unknown method")
            .to_string();
        assert!(e.contains("bind") && e.contains("kerberos"), "{e}");
        let explicit = MINIMAL.replace("bind_dn", "bind = \"simple\"\nbind_dn");
        assert_eq!(Config::parse(&explicit, Path::new("/"), &env).expect("valid").domains[0].bind, BindMethod::Simple);
        let no_dn = MINIMAL.replace("bind_dn = \"CN=svc-pwrelay,OU=Service,DC=corp,DC=example,DC=com\"\n", "");
        let e = Config::parse(&no_dn, Path::new("/"), &env).expect_err("no DN").to_string();
        assert!(e.starts_with("domains[0].bind_dn:"), "{e}");
    }

    #[test]
    fn dc_url_hosts() {
        let host = |url: &str| DcUrl { url: url.into(), transport: LdapTransport::Ldaps }.host().to_owned();
        assert_eq!(host("ldaps://dc1.corp.example.com:636"), "dc1.corp.example.com");
        assert_eq!(host("ldap://dc1.corp.example.com/"), "dc1.corp.example.com");
        assert_eq!(host("ldaps://[::1]:636"), "::1");
        assert!(DcUrl { url: "ldaps://127.0.0.1".into(), transport: LdapTransport::Ldaps }.host_is_ip_address());
    }

    #[test]
    fn password_file_has_its_newline_trimmed() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("bind.secret"), "Pa55word!\n").expect("write");
        let text = MINIMAL.replace("bind_password_env = \"BIND_PW\"", "bind_password_file = \"bind.secret\"");
        let c = Config::parse(&text, dir.path(), &env).expect("valid");
        assert_eq!(c.domains[0].bind_password.expose_secret(), "Pa55word!");
    }
}
