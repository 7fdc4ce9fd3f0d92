//! `pwrelay-agent enroll`: the agent's first certificate, from a one-time token.
//!
//! The key is made here and written with mode 0600; only a certificate signing request for it
//! leaves the host. The relay is trusted only if the chain it presents holds the CA whose
//! fingerprint the token carries (so no `ca.pem` needs copying), and nothing, the token
//! included, is sent before that check. The relay answers with the certificate (agent name and
//! domains from the token), its CA, and the agent writes `agent.key`, `agent.pem`, `ca.pem` and
//! a starting `agent.toml` into the output directory. Nothing is written unless enrollment
//! succeeds, and nothing is overwritten.

use std::fmt::Write as _;
use std::path::PathBuf;

use pwrelay_proto::agent::v1::EnrollRequest;
use pwrelay_proto::agent::v1::agent_enrollment_client::AgentEnrollmentClient;
use pwrelay_shared::enrollment::{EnrollmentToken, ca_fingerprint, fingerprint_text};
use pwrelay_shared::pki::{self, files};
use pwrelay_shared::secret::SecretString;

/// The starting configuration's file name.
pub const CONFIG_FILE: &str = "agent.toml";

/// Why enrollment failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The relay URL is unusable.
    #[error("--relay must be https://HOST:PORT (the relay's link port, link.listen; 7443 by default)")]
    Url,
    /// The token is unusable.
    #[error(transparent)]
    Token(#[from] pwrelay_shared::enrollment::TokenError),
    /// A file the enrollment writes exists already.
    #[error("{0} exists already; enroll into an empty directory (--out), or remove it")]
    Exists(String),
    /// TLS set-up or a key failed.
    #[error(transparent)]
    Tls(#[from] pwrelay_shared::tls::TlsError),
    /// Key or request generation, or writing a file, failed.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// The relay could not be reached or did not pass the token's CA check.
    #[error(transparent)]
    Link(#[from] crate::link::LinkError),
    /// The relay refused the enrollment.
    #[error("the relay refused the enrollment: {0}")]
    Refused(String),
    /// The relay's answer does not fit the token.
    #[error("the relay's answer is unusable: {0}")]
    Answer(String),
}

/// What `enroll` needs.
#[derive(Debug)]
pub struct EnrollOptions {
    /// `https://HOST:PORT` of the relay's link port.
    pub relay: String,
    /// The name the relay's certificate must carry (default: the URL's host).
    pub server_name: Option<String>,
    /// The token as printed.
    pub token: SecretString,
    /// Where to write the files.
    pub out: PathBuf,
}

/// What enrollment produced.
#[derive(Debug)]
pub struct Enrolled {
    /// The agent name the certificate carries.
    pub agent: String,
    /// The domains it carries.
    pub domains: Vec<String>,
    /// When it expires (Unix seconds).
    pub expires_unix: i64,
    /// The starting configuration.
    pub config: PathBuf,
}

/// Enrolls: see the module documentation.
pub async fn enroll(options: &EnrollOptions) -> Result<Enrolled, EnrollError> {
    let rest = options.relay.trim().strip_prefix("https://").ok_or(EnrollError::Url)?;
    let (host, port) = crate::config::split_host_port(rest.trim_end_matches('/')).ok_or(EnrollError::Url)?;
    let server_name = options.server_name.clone().unwrap_or_else(|| host.clone());
    let token = EnrollmentToken::parse(options.token.expose_secret())?;
    let out = &options.out;
    for name in [files::AGENT_KEY, files::AGENT_CERT, files::CA_CERT, CONFIG_FILE] {
        let path = out.join(name);
        if path.exists() {
            return Err(EnrollError::Exists(path.display().to_string()));
        }
    }
    let (csr_der, key_pem) = pki::certificate_request(None)?;
    let tls = pwrelay_shared::tls::enrollment_client(token.ca_fingerprint)?;
    let channel = crate::link::dial::dial(&host, port, &server_name, tls).await?;
    let response = AgentEnrollmentClient::new(channel)
        .enroll(EnrollRequest { token: options.token.expose_secret().trim().to_owned(), csr_der })
        .await
        .map_err(|status| EnrollError::Refused(status.message().to_owned()))?
        .into_inner();
    if ca_fingerprint(&response.ca_pem) != Some(token.ca_fingerprint) {
        return Err(EnrollError::Answer(format!(
            "its CA is not the one the token pins ({})",
            fingerprint_text(&token.ca_fingerprint)
        )));
    }
    // The certificate must fit the key made here and name an agent.
    pwrelay_shared::tls::CertifiedKey::from_pem(&response.certificate_chain_pem, key_pem.expose_secret())
        .and_then(|key| {
            pwrelay_shared::tls::link_client(key, &pwrelay_shared::tls::TrustAnchors::from_pem(&response.ca_pem)?)
        })
        .map_err(|e| EnrollError::Answer(e.to_string()))?;
    pki::write_private(&out.join(files::AGENT_KEY), &key_pem, false)?;
    pki::write_public(&out.join(files::AGENT_CERT), &response.certificate_chain_pem, false)?;
    pki::write_public(&out.join(files::CA_CERT), &response.ca_pem, false)?;
    let config = out.join(CONFIG_FILE);
    // Absolute paths, so the file can be moved (to /etc/pwrelay/agent.toml) as it is.
    let base = std::fs::canonicalize(out).unwrap_or_else(|_| out.clone());
    let text = starting_config(&options.relay, options.server_name.as_deref(), &base, &response);
    pki::write_public(&config, &text, false)?;
    Ok(Enrolled { agent: response.agent, domains: response.domains, expires_unix: response.expires_unix, config })
}

/// A starting `agent.toml`: the relay section complete, one `[[domains]]` table per domain with
/// what only the operator knows left to fill in.
fn starting_config(
    relay: &str,
    server_name: Option<&str>,
    base: &std::path::Path,
    response: &pwrelay_proto::agent::v1::EnrollResponse,
) -> String {
    let path = |name: &str| toml::Value::String(base.join(name).display().to_string()).to_string();
    let mut text = format!(
        "# Written by `pwrelay-agent enroll` for agent {agent}. The relay renews agent.pem and agent.key\n\
         # over the link before they expire; keep them writable by the agent.\n\
         # Fill in each [[domains]] table (every key: deploy/config/agent.full.toml), then run\n\
         # `pwrelay-agent check-config --config agent.toml`.\n\n\
         [relay]\nurl = \"{relay}\"\n",
        agent = response.agent,
        relay = relay.trim().trim_end_matches('/'),
    );
    if let Some(name) = server_name {
        let _ = writeln!(text, "server_name = \"{name}\"");
    }
    let _ = write!(
        text,
        "ca_file = {}\ncert_file = {}\nkey_file = {}\n",
        path(files::CA_CERT),
        path(files::AGENT_CERT),
        path(files::AGENT_KEY)
    );
    for domain in &response.domains {
        let _ = write!(
            text,
            "\n[[domains]]\nname = \"{domain}\"\n\
             # The CA of the DCs' LDAPS certificates:\n# ca_file = \"dc-ca.pem\"\n\
             # The delegated service account (deploy/ad/) and its password file (mode 0600):\n\
             # bind_dn = \"CN=svc-pwrelay,OU=Service Accounts,DC=...\"\n# bind_password_file = \"bind.secret\"\n\
             # DCs are found by DNS SRV unless listed:\n# urls = [\"ldaps://dc1.{domain}:636\"]\n"
        );
    }
    text
}
