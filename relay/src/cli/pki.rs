//! `pwrelay pki`: the private CA, the relay's link certificate, and agent certificates.
//!
//! Two shapes. `pki init` makes one CA: the relay signs enrolled agents' certificates with its
//! key (`[enrollment] issuer_key_file = ca.key`), so the key is online. `pki init --two-level`
//! makes a root CA that can sign one level of intermediates, plus the relay's link certificate
//! and a first issuing intermediate (`issuing-ca.pem` / `issuing-ca.key`, `[enrollment]`'s
//! issuer): the root key then goes offline, and `pki intermediate` makes the next intermediate
//! with it when the current one is to be replaced. `pki issue-agent` signs offline, for
//! air-gapped set-ups.

use std::path::PathBuf;
use std::process::ExitCode;

use pwrelay_shared::domain::{AgentName, DomainName};
use pwrelay_shared::identity::AgentIdentity;
use pwrelay_shared::pki::{self, CertificateAuthority, files};

use super::EXIT_FAILURE;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum PkiCommand {
    /// Create a CA and the relay's link server certificate in DIR (ca.pem, ca.key, relay.pem, relay.key).
    Init {
        /// Directory to create the files in (must not already hold them).
        #[arg(long)]
        dir: PathBuf,
        /// DNS name or IP address agents use to reach the relay's link port (repeatable).
        #[arg(long = "relay-name", required = true)]
        relay_names: Vec<String>,
        /// Common name of the CA.
        #[arg(long, default_value = "pwrelay agent CA")]
        ca_name: String,
        /// Validity of the CA in days.
        #[arg(long, default_value_t = 3650)]
        ca_days: i64,
        /// Validity of the relay certificate in days.
        #[arg(long, default_value_t = 397)]
        days: i64,
        /// Make an offline root and an issuing intermediate for the relay (issuing-ca.pem,
        /// issuing-ca.key) instead of one CA whose key the relay holds.
        #[arg(long)]
        two_level: bool,
    },
    /// With the root CA of a two-level PKI, make a new issuing intermediate for the relay
    /// (`[enrollment]` issuer_cert_file / issuer_key_file).
    Intermediate {
        /// Directory holding the root's ca.pem and ca.key.
        #[arg(long, default_value = ".")]
        ca_dir: PathBuf,
        /// Directory to write issuing-ca.pem and issuing-ca.key to (they must not exist).
        #[arg(long)]
        out: PathBuf,
        /// Common name of the intermediate.
        #[arg(long, default_value = "pwrelay agent issuing CA")]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 730)]
        days: i64,
    },
    /// Issue an agent client certificate naming the agent and the AD domains it may serve.
    IssueAgent {
        /// Directory holding ca.pem and ca.key (from `pki init`).
        #[arg(long, default_value = ".")]
        ca_dir: PathBuf,
        /// The agent's name (letters, digits, '-', '_', '.').
        #[arg(long)]
        name: String,
        /// An AD DNS domain the agent may serve (repeatable).
        #[arg(long = "domain", required = true)]
        domains: Vec<String>,
        /// Directory to write agent.pem, agent.key and a copy of ca.pem to.
        #[arg(long)]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 397)]
        days: i64,
    },
}

pub(crate) fn run(command: PkiCommand) -> ExitCode {
    let result = match command {
        PkiCommand::Init { dir, relay_names, ca_name, ca_days, days, two_level } => {
            init(&dir, &relay_names, &ca_name, ca_days, days, two_level)
        }
        PkiCommand::Intermediate { ca_dir, out, name, days } => intermediate(&ca_dir, &out, &name, days),
        PkiCommand::IssueAgent { ca_dir, name, domains, out, days } => {
            issue_agent(&ca_dir, &name, &domains, &out, days)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn init(
    dir: &std::path::Path,
    relay_names: &[String],
    ca_name: &str,
    ca_days: i64,
    days: i64,
    two_level: bool,
) -> anyhow::Result<()> {
    let made =
        [files::CA_CERT, files::CA_KEY, files::RELAY_CERT, files::RELAY_KEY, files::ISSUING_CERT, files::ISSUING_KEY];
    if made.iter().any(|f| dir.join(f).exists()) {
        anyhow::bail!("{} already holds a PKI; use another --dir", dir.display());
    }
    let (ca, ca_files) = if two_level {
        CertificateAuthority::generate_root(ca_name, ca_days)?
    } else {
        CertificateAuthority::generate(ca_name, ca_days)?
    };
    let relay = ca.issue_server(relay_names, days)?;
    pki::write_private(&dir.join(files::CA_KEY), &ca_files.key_pem, false)?;
    pki::write_public(&dir.join(files::CA_CERT), &ca_files.cert_pem, false)?;
    pki::write_private(&dir.join(files::RELAY_KEY), &relay.key_pem, false)?;
    pki::write_public(&dir.join(files::RELAY_CERT), &relay.cert_pem, false)?;
    eprintln!("created in {}:", dir.display());
    eprintln!("  {}  CA certificate: the relay's link.agent_ca_file, and each agent's relay.ca_file", files::CA_CERT);
    if two_level {
        let issuing = ca.issue_intermediate("pwrelay agent issuing CA", 730)?;
        pki::write_private(&dir.join(files::ISSUING_KEY), &issuing.key_pem, false)?;
        pki::write_public(&dir.join(files::ISSUING_CERT), &issuing.cert_pem, false)?;
        eprintln!(
            "  {}  root CA private key (0600): move it offline now; it is needed only for `pki intermediate`",
            files::CA_KEY
        );
        eprintln!(
            "  {} / {}  the issuing intermediate (730 days): [enrollment] issuer_cert_file / issuer_key_file",
            files::ISSUING_CERT,
            files::ISSUING_KEY
        );
    } else {
        eprintln!(
            "  {}  CA private key (0600): [enrollment] issuer_key_file if the relay enrolls agents, else keep it offline",
            files::CA_KEY
        );
    }
    eprintln!(
        "  {} / {}  link.cert_file / link.key_file, valid for {}",
        files::RELAY_CERT,
        files::RELAY_KEY,
        relay_names.join(", ")
    );
    Ok(())
}

fn intermediate(ca_dir: &std::path::Path, out: &std::path::Path, name: &str, days: i64) -> anyhow::Result<()> {
    let root = CertificateAuthority::load_dir(ca_dir)?;
    let issuing = root.issue_intermediate(name, days)?;
    pki::write_private(&out.join(files::ISSUING_KEY), &issuing.key_pem, false)?;
    pki::write_public(&out.join(files::ISSUING_CERT), &issuing.cert_pem, false)?;
    eprintln!(
        "issued the intermediate {name:?} (valid {days} days) in {}: point [enrollment] issuer_cert_file / \
         issuer_key_file at {} / {} and restart the relay; certificates of the previous intermediate stay valid until \
         they expire (agents renew onto the new one)",
        out.display(),
        files::ISSUING_CERT,
        files::ISSUING_KEY
    );
    Ok(())
}

fn issue_agent(
    ca_dir: &std::path::Path,
    name: &str,
    domains: &[String],
    out: &std::path::Path,
    days: i64,
) -> anyhow::Result<()> {
    let identity = AgentIdentity {
        name: AgentName::parse(name)?,
        domains: domains.iter().map(|d| DomainName::parse(d)).collect::<Result<_, _>>()?,
    };
    let ca = CertificateAuthority::load_dir(ca_dir)?;
    let issued = ca.issue_agent(&identity, days)?;
    pki::write_private(&out.join(files::AGENT_KEY), &issued.key_pem, false)?;
    pki::write_public(&out.join(files::AGENT_CERT), &issued.cert_pem, false)?;
    pki::write_public(&out.join(files::CA_CERT), ca.cert_pem(), true)?;
    let names: Vec<&str> = identity.domains.iter().map(DomainName::as_str).collect();
    eprintln!("issued agent {} for {} in {}:", identity.name, names.join(", "), out.display());
    eprintln!(
        "  {} / {}  the agent's relay.cert_file / relay.key_file (key 0600)",
        files::AGENT_CERT,
        files::AGENT_KEY
    );
    eprintln!("  {}  the agent's relay.ca_file", files::CA_CERT);
    Ok(())
}
