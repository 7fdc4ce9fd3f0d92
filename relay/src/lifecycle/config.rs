//! `[lifecycle]`: the new-hire flow's settings. Without the section the flow is off and
//! `POST /v1/lifecycle/callouts` answers 404.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use pwrelay_shared::config::ConfigError;

/// `[lifecycle]` as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LifecycleFile {
    public_url: String,
    #[serde(default = "default_link_ttl_hours")]
    link_ttl_hours: u64,
    #[serde(default = "default_true")]
    must_change: bool,
    #[serde(default = "default_password_length")]
    password_length: u32,
    #[serde(default)]
    organization: String,
    tenants: Vec<TenantFile>,
    #[serde(default)]
    delivery: DeliveryFile,
    #[serde(default)]
    sms: Option<SmsFile>,
    #[serde(default)]
    templates: TemplatesFile,
    #[serde(default)]
    reveal: RevealFile,
    #[serde(default)]
    endpoints: EndpointsFile,
    #[serde(default)]
    workflows: std::collections::BTreeMap<String, WorkflowFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkflowFile {
    #[serde(default)]
    must_change: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantFile {
    tenant_id: String,
    callout_auth: CalloutAuthKind,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    allowed_app_ids: Vec<String>,
    #[serde(default)]
    hmac_secret_file: Option<PathBuf>,
    #[serde(default = "default_hmac_window_seconds")]
    hmac_window_seconds: u64,
    client_id: String,
    #[serde(default)]
    client_secret_file: Option<PathBuf>,
    #[serde(default)]
    client_certificate_file: Option<PathBuf>,
    #[serde(default)]
    client_key_file: Option<PathBuf>,
    #[serde(default)]
    mail_sender: Option<String>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum CalloutAuthKind {
    Entra,
    Hmac,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveryFile {
    #[serde(default = "default_link_channel")]
    link_channel: LinkChannel,
    #[serde(default = "default_username_channel")]
    username_channel: UsernameChannel,
    #[serde(default = "default_delivery_attempts")]
    max_attempts: u32,
    #[serde(default = "default_retry_seconds")]
    first_retry_seconds: u64,
}

impl Default for DeliveryFile {
    fn default() -> Self {
        Self {
            link_channel: default_link_channel(),
            username_channel: default_username_channel(),
            max_attempts: default_delivery_attempts(),
            first_retry_seconds: default_retry_seconds(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SmsFile {
    url: String,
    #[serde(default)]
    bearer_token_file: Option<PathBuf>,
    #[serde(default)]
    from: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TemplatesFile {
    #[serde(default)]
    link_sms: Option<String>,
    #[serde(default)]
    link_mail_subject: Option<String>,
    #[serde(default)]
    link_mail_body: Option<String>,
    #[serde(default)]
    manager_mail_subject: Option<String>,
    #[serde(default)]
    manager_mail_body: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevealFile {
    #[serde(default = "default_per_link")]
    requests_per_link_per_hour: u32,
    #[serde(default = "default_per_client")]
    requests_per_client_per_minute: u32,
}

impl Default for RevealFile {
    fn default() -> Self {
        Self { requests_per_link_per_hour: default_per_link(), requests_per_client_per_minute: default_per_client() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointsFile {
    #[serde(default = "default_login_url")]
    login: String,
    #[serde(default = "default_graph_url")]
    graph: String,
    #[serde(default)]
    ca_file: Option<PathBuf>,
}

impl Default for EndpointsFile {
    fn default() -> Self {
        Self { login: default_login_url(), graph: default_graph_url(), ca_file: None }
    }
}

fn default_link_ttl_hours() -> u64 {
    72
}
fn default_true() -> bool {
    true
}
fn default_password_length() -> u32 {
    16
}
fn default_hmac_window_seconds() -> u64 {
    300
}
fn default_link_channel() -> LinkChannel {
    LinkChannel::Sms
}
fn default_username_channel() -> UsernameChannel {
    UsernameChannel::ManagerEmail
}
fn default_delivery_attempts() -> u32 {
    6
}
fn default_retry_seconds() -> u64 {
    5
}
fn default_per_link() -> u32 {
    30
}
fn default_per_client() -> u32 {
    20
}
fn default_login_url() -> String {
    "https://login.microsoftonline.com".into()
}
fn default_graph_url() -> String {
    "https://graph.microsoft.com".into()
}

/// Where the one-time link goes.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LinkChannel {
    /// By SMS to the person's `mobilePhone`.
    Sms,
    /// By e-mail (Graph `sendMail`) to the first of the person's `otherMails` (a private address).
    Email,
}

/// Where the username goes.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UsernameChannel {
    /// By e-mail to the person's manager.
    ManagerEmail,
    /// Nowhere (the person learns it another way).
    None,
}

/// How callouts of a tenant prove where they come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CalloutAuth {
    /// An Entra-issued bearer token (the Logic App's managed identity), checked against the
    /// tenant's JWKS: issuer, audience, lifetime, and the caller's app id.
    Entra {
        /// The expected `aud`.
        audience: String,
        /// App ids (`azp` / `appid`) allowed to call.
        allowed_app_ids: Vec<String>,
    },
    /// `Pwrelay-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
    Hmac {
        /// File with the shared secret.
        secret_file: PathBuf,
        /// How far the timestamp may be from now.
        window: Duration,
    },
}

/// How the relay authenticates to Graph for a tenant (client credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphCredential {
    /// A client secret read from a file.
    Secret {
        /// The file.
        file: PathBuf,
    },
    /// A certificate: a signed client assertion (RS256, `x5t#S256`).
    Certificate {
        /// PEM certificate registered on the app.
        certificate_file: PathBuf,
        /// Its RSA private key (PKCS#8 PEM).
        key_file: PathBuf,
    },
}

/// One Entra tenant whose workflows may call.
#[derive(Debug, Clone)]
pub struct TenantConfig {
    /// The tenant id (GUID).
    pub tenant_id: String,
    /// Callout authentication.
    pub callout_auth: CalloutAuth,
    /// The app registration the relay uses for Graph.
    pub client_id: String,
    /// Its credential.
    pub credential: GraphCredential,
    /// Mailbox `sendMail` sends as (required when a channel is e-mail).
    pub mail_sender: Option<String>,
}

/// The SMS gateway.
#[derive(Debug, Clone)]
pub struct SmsConfig {
    /// URL the relay POSTs `{"from", "to", "message"}` to.
    pub url: String,
    /// File with a bearer token for the gateway, if it wants one.
    pub bearer_token_file: Option<PathBuf>,
    /// Sender id or number, passed as `from`.
    pub from: String,
}

/// Message texts; `{placeholders}` are filled in (see `deploy/config/relay.full.toml`).
#[derive(Debug, Clone)]
pub struct Templates {
    /// SMS with the link.
    pub link_sms: String,
    /// Subject of the e-mail with the link.
    pub link_mail_subject: String,
    /// Body of the e-mail with the link.
    pub link_mail_body: String,
    /// Subject of the manager's e-mail.
    pub manager_mail_subject: String,
    /// Body of the manager's e-mail (the username, never the password).
    pub manager_mail_body: String,
}

/// The validated `[lifecycle]` section.
#[derive(Debug, Clone)]
pub struct LifecycleConfig {
    /// Base of the links (`<public_url>/r/<id>#<key>`).
    pub public_url: String,
    /// How long a link can be claimed.
    pub link_ttl: Duration,
    /// Whether the person must change the password at first sign-in.
    pub must_change: bool,
    /// Per-workflow exceptions to `must_change` (`[lifecycle.workflows."<workflow id>"]`).
    pub must_change_by_workflow: std::collections::BTreeMap<uuid::Uuid, bool>,
    /// Length of the generated password.
    pub password_length: u32,
    /// Organization name for templates.
    pub organization: String,
    /// Tenants.
    pub tenants: Vec<TenantConfig>,
    /// Where the link goes.
    pub link_channel: LinkChannel,
    /// Where the username goes.
    pub username_channel: UsernameChannel,
    /// Sends of one message before it counts as failed.
    pub delivery_attempts: u32,
    /// Wait before the first retry; doubled each time.
    pub first_retry: Duration,
    /// The SMS gateway.
    pub sms: Option<SmsConfig>,
    /// Message texts.
    pub templates: Templates,
    /// Reveal-page requests allowed per link and hour.
    pub requests_per_link_per_hour: u32,
    /// Reveal-page requests allowed per client address and minute.
    pub requests_per_client_per_minute: u32,
    /// Token endpoint base (`https://login.microsoftonline.com`).
    pub login_url: String,
    /// Graph base (`https://graph.microsoft.com`).
    pub graph_url: String,
    /// A CA that alone is trusted for the cloud endpoints and the SMS gateway instead of the system's
    /// trust store (private endpoints).
    pub ca_file: Option<PathBuf>,
}

const DEFAULT_LINK_SMS: &str = "Welcome to {organization}, {first_name}. Open this link to get your first password (valid until {expires}): {link}";
const DEFAULT_LINK_MAIL_SUBJECT: &str = "Your first password for {organization}";
const DEFAULT_LINK_MAIL_BODY: &str = "Hello {display_name},\n\nopen this link to get your first password for \
    {organization}. It works once and until {expires}:\n\n{link}\n\nYour username reaches you separately.";
const DEFAULT_MANAGER_SUBJECT: &str = "Sign-in name of {display_name}";
const DEFAULT_MANAGER_BODY: &str = "Hello {manager_name},\n\n{display_name} starts with the sign-in name \
    {username}. The first password went to them directly; nobody else receives it.";

impl LifecycleFile {
    /// Validates the section; relative paths are resolved with `resolve`.
    pub(crate) fn validate(self, resolve: impl Fn(PathBuf) -> PathBuf) -> Result<LifecycleConfig, ConfigError> {
        let public_url = self.public_url.trim_end_matches('/').to_owned();
        if !public_url.starts_with("https://") {
            return Err(ConfigError::invalid(
                "lifecycle.public_url",
                "must be the https:// address people reach the relay's API at",
            ));
        }
        if self.link_ttl_hours == 0 || self.link_ttl_hours > 24 * 30 {
            return Err(ConfigError::invalid("lifecycle.link_ttl_hours", "must be between 1 and 720"));
        }
        if !(12..=64).contains(&self.password_length) {
            return Err(ConfigError::invalid("lifecycle.password_length", "must be between 12 and 64"));
        }
        if self.tenants.is_empty() {
            return Err(ConfigError::invalid("lifecycle.tenants", "list at least one tenant"));
        }
        let mut tenants = Vec::with_capacity(self.tenants.len());
        for (i, t) in self.tenants.into_iter().enumerate() {
            let key = |k: &str| format!("lifecycle.tenants[{i}].{k}");
            let Ok(tenant_id) = uuid::Uuid::parse_str(&t.tenant_id).map(|id| id.to_string()) else {
                return Err(ConfigError::invalid(key("tenant_id"), "must be the tenant's id (a GUID)"));
            };
            if tenants.iter().any(|known: &TenantConfig| known.tenant_id == tenant_id) {
                return Err(ConfigError::invalid(key("tenant_id"), "this tenant is listed twice"));
            }
            if t.client_id.trim().is_empty() {
                return Err(ConfigError::invalid(key("client_id"), "name the app registration the relay uses"));
            }
            let callout_auth = match t.callout_auth {
                CalloutAuthKind::Entra => {
                    let audience = t.audience.filter(|a| !a.is_empty()).ok_or_else(|| {
                        ConfigError::invalid(key("audience"), "callout_auth = \"entra\" needs the expected audience")
                    })?;
                    if t.allowed_app_ids.is_empty() {
                        return Err(ConfigError::invalid(
                            key("allowed_app_ids"),
                            "list the app id of the Logic App's managed identity",
                        ));
                    }
                    CalloutAuth::Entra { audience, allowed_app_ids: t.allowed_app_ids }
                }
                CalloutAuthKind::Hmac => CalloutAuth::Hmac {
                    secret_file: resolve(t.hmac_secret_file.ok_or_else(|| {
                        ConfigError::invalid(key("hmac_secret_file"), "callout_auth = \"hmac\" needs the secret file")
                    })?),
                    window: Duration::from_secs(t.hmac_window_seconds.max(1)),
                },
            };
            let credential = match (t.client_secret_file, t.client_certificate_file, t.client_key_file) {
                (Some(file), None, None) => GraphCredential::Secret { file: resolve(file) },
                (None, Some(cert), Some(key_file)) => {
                    GraphCredential::Certificate { certificate_file: resolve(cert), key_file: resolve(key_file) }
                }
                _ => {
                    return Err(ConfigError::invalid(
                        key("client_secret_file"),
                        "set either client_secret_file, or client_certificate_file and client_key_file",
                    ));
                }
            };
            tenants.push(TenantConfig {
                tenant_id,
                callout_auth,
                client_id: t.client_id,
                credential,
                mail_sender: t.mail_sender,
            });
        }
        let uses_mail = self.delivery.link_channel == LinkChannel::Email
            || self.delivery.username_channel == UsernameChannel::ManagerEmail;
        if uses_mail {
            if let Some(i) = tenants.iter().position(|t| t.mail_sender.is_none()) {
                return Err(ConfigError::invalid(
                    format!("lifecycle.tenants[{i}].mail_sender"),
                    "e-mail delivery needs the mailbox the relay sends as",
                ));
            }
        }
        if self.delivery.link_channel == LinkChannel::Sms && self.sms.is_none() {
            return Err(ConfigError::invalid(
                "lifecycle.sms",
                "link_channel = \"sms\" needs the [lifecycle.sms] gateway",
            ));
        }
        if self.delivery.max_attempts == 0 {
            return Err(ConfigError::invalid("lifecycle.delivery.max_attempts", "must be at least 1"));
        }
        for (k, url) in
            [("lifecycle.endpoints.login", &self.endpoints.login), ("lifecycle.endpoints.graph", &self.endpoints.graph)]
        {
            if !url.starts_with("https://") {
                return Err(ConfigError::invalid(k, "must be an https:// URL"));
            }
        }
        let sms = match self.sms {
            Some(s) if !s.url.starts_with("https://") => {
                return Err(ConfigError::invalid("lifecycle.sms.url", "must be an https:// URL"));
            }
            Some(s) => {
                Some(SmsConfig { url: s.url, bearer_token_file: s.bearer_token_file.map(&resolve), from: s.from })
            }
            None => None,
        };
        let mut must_change_by_workflow = std::collections::BTreeMap::new();
        for (id, workflow) in self.workflows {
            let key = format!("lifecycle.workflows.\"{id}\"");
            let id = uuid::Uuid::parse_str(&id)
                .map_err(|_| ConfigError::invalid(&key, "name the workflow by its id (a GUID)"))?;
            if let Some(must_change) = workflow.must_change {
                must_change_by_workflow.insert(id, must_change);
            }
        }
        let t = self.templates;
        Ok(LifecycleConfig {
            public_url,
            link_ttl: Duration::from_secs(self.link_ttl_hours * 3600),
            must_change: self.must_change,
            must_change_by_workflow,
            password_length: self.password_length,
            organization: self.organization,
            tenants,
            link_channel: self.delivery.link_channel,
            username_channel: self.delivery.username_channel,
            delivery_attempts: self.delivery.max_attempts,
            first_retry: Duration::from_secs(self.delivery.first_retry_seconds.max(1)),
            sms,
            templates: Templates {
                link_sms: t.link_sms.unwrap_or_else(|| DEFAULT_LINK_SMS.into()),
                link_mail_subject: t.link_mail_subject.unwrap_or_else(|| DEFAULT_LINK_MAIL_SUBJECT.into()),
                link_mail_body: t.link_mail_body.unwrap_or_else(|| DEFAULT_LINK_MAIL_BODY.into()),
                manager_mail_subject: t.manager_mail_subject.unwrap_or_else(|| DEFAULT_MANAGER_SUBJECT.into()),
                manager_mail_body: t.manager_mail_body.unwrap_or_else(|| DEFAULT_MANAGER_BODY.into()),
            },
            requests_per_link_per_hour: self.reveal.requests_per_link_per_hour.max(1),
            requests_per_client_per_minute: self.reveal.requests_per_client_per_minute.max(1),
            login_url: self.endpoints.login.trim_end_matches('/').to_owned(),
            graph_url: self.endpoints.graph.trim_end_matches('/').to_owned(),
            ca_file: self.endpoints.ca_file.map(&resolve),
        })
    }
}

impl LifecycleConfig {
    /// Whether a password set for `workflow` must be changed at first sign-in.
    pub fn must_change(&self, workflow: uuid::Uuid) -> bool {
        self.must_change_by_workflow.get(&workflow).copied().unwrap_or(self.must_change)
    }

    /// The tenant with this id.
    pub fn tenant(&self, tenant_id: &str) -> Option<&TenantConfig> {
        self.tenants.iter().find(|t| t.tenant_id.eq_ignore_ascii_case(tenant_id))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, Overrides};

    const BASE: &str = r#"
domains = ["corp.example"]
[api]
cert_file = "a.pem"
key_file = "a.key"
[link]
cert_file = "l.pem"
key_file = "l.key"
agent_ca_file = "ca.pem"
[store]
path = "relay.db"
key_file = "store.key"
[lifecycle]
public_url = "https://pwrelay.example/"
[[lifecycle.tenants]]
tenant_id = "6D8F1B0E-2F4A-4C39-9A6E-0C1D2E3F4A5B"
callout_auth = "entra"
audience = "api://pwrelay"
allowed_app_ids = ["9e8d7c6b-1111-4222-8333-444455556666"]
client_id = "1a2b3c4d-0000-4000-8000-00000000c0de"
client_secret_file = "graph.secret"
mail_sender = "pwrelay@example.com"
[lifecycle.sms]
url = "https://sms.example/send"
"#;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/pwrelay"), &Overrides::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn a_minimal_section_gets_defaults() {
        let c = parse(BASE).expect("valid").lifecycle.expect("lifecycle");
        assert_eq!(c.public_url, "https://pwrelay.example");
        assert_eq!(c.link_ttl.as_secs(), 72 * 3600);
        assert!(c.must_change);
        assert_eq!(c.tenants[0].tenant_id, "6d8f1b0e-2f4a-4c39-9a6e-0c1d2e3f4a5b");
        assert!(c.tenant("6D8F1B0E-2F4A-4C39-9A6E-0C1D2E3F4A5B").is_some());
        assert!(c.templates.link_sms.contains("{link}"));
        let text =
            format!("{BASE}[lifecycle.workflows.\"14879e66-9ea9-48d0-804d-8fea672d0341\"]\nmust_change = false\n");
        let c = parse(&text).expect("valid").lifecycle.expect("lifecycle");
        let workflow = uuid::Uuid::parse_str("14879e66-9ea9-48d0-804d-8fea672d0341").expect("uuid");
        assert!(!c.must_change(workflow) && c.must_change(uuid::Uuid::nil()));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (BASE.replace("https://pwrelay.example/", "http://pwrelay.example"), "lifecycle.public_url"),
            (BASE.replace("6D8F1B0E-2F4A-4C39-9A6E-0C1D2E3F4A5B", "contoso"), "lifecycle.tenants[0].tenant_id"),
            (BASE.replace("audience = \"api://pwrelay\"\n", ""), "lifecycle.tenants[0].audience"),
            (
                BASE.replace("allowed_app_ids = [\"9e8d7c6b-1111-4222-8333-444455556666\"]", "allowed_app_ids = []"),
                "allowed_app_ids",
            ),
            (
                BASE.replace(
                    "client_secret_file = \"graph.secret\"",
                    "client_secret_file = \"s\"\nclient_certificate_file = \"c\"",
                ),
                "client_secret_file",
            ),
            (BASE.replace("mail_sender = \"pwrelay@example.com\"\n", ""), "lifecycle.tenants[0].mail_sender"),
            (BASE.replace("[lifecycle.sms]\nurl = \"https://sms.example/send\"\n", ""), "lifecycle.sms"),
            (BASE.replace("https://sms.example/send", "http://sms.example/send"), "lifecycle.sms.url"),
            (BASE.replace("callout_auth = \"entra\"", "callout_auth = \"hmac\""), "hmac_secret_file"),
            (
                BASE.replace("[lifecycle.sms]", "[lifecycle.delivery]\nmax_attempts = 0\n[lifecycle.sms]"),
                "lifecycle.delivery.max_attempts",
            ),
            (
                format!("{BASE}[lifecycle.workflows.onboarding]\nmust_change = false\n"),
                "lifecycle.workflows.\"onboarding\"",
            ),
        ];
        for (text, key) in cases {
            let e = parse(&text).expect_err(key);
            assert!(e.contains(key), "{key}: {e}");
        }
    }
}
