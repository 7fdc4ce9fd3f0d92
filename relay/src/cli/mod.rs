//! The `pwrelay` command line: `serve` runs the relay; the other commands prepare and operate it.

mod agents;
mod audit;
mod client;
mod clients;
mod enrollment;
mod password;
mod pki;
mod serve;
mod webhooks;

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::Config;
use crate::seal::Sealer;
use clap::{Parser, Subcommand};

/// Exit code for a bad command line or configuration (EX_USAGE / EX_CONFIG style).
pub(crate) const EXIT_CONFIG: u8 = 64;
/// Exit code for a failure while running.
pub(crate) const EXIT_FAILURE: u8 = 1;

/// pwrelay: sets Active Directory passwords from the cloud through on-prem agents.
///
/// The relay receives rotation requests over its HTTPS API, stores them as durable jobs and
/// streams them over mutually authenticated gRPC to the agent of the target AD domain.
#[derive(Debug, Parser)]
#[command(name = "pwrelay", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay (HTTPS API on api.listen, agent link on link.listen).
    Serve(serve::ServeArgs),
    /// Create the private CA, the relay's link certificate, and agent certificates.
    #[command(subcommand)]
    Pki(pki::PkiCommand),
    /// See the known agents (from the store, as every replica sees them) and forget gone ones.
    #[command(subcommand)]
    Agents(agents::AgentsCommand),
    /// Read the audit trail the relay keeps in its store.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Manage API clients (the PAMs and workflows that call the API).
    #[command(subcommand)]
    Clients(clients::ClientsCommand),
    /// Manage the key that seals secrets in the job store.
    #[command(subcommand)]
    StoreKey(StoreKeyCommand),
    /// Check, generate and derive passwords with pwrelay's password engine.
    #[command(subcommand)]
    Password(password::PasswordCommand),
    /// API client: set a password, or have one generated (see `pwrelay jobs secret`).
    Rotate(client::RotateArgs),
    /// API client: check whether a password is an account's current one (changes nothing).
    Verify(client::VerifyArgs),
    /// API client: clear an account's lockout.
    Unlock(client::UnlockArgs),
    /// API client: reset the accounts of a CSV file (upn column) to their derived values.
    Reconcile(client::ReconcileArgs),
    /// API client: list, show, wait for jobs, and read a generated password once.
    #[command(subcommand)]
    Jobs(client::JobsCommand),
}

#[derive(Debug, Subcommand)]
enum StoreKeyCommand {
    /// Write a new random 32-byte key (base64) to a file with mode 0600.
    Generate {
        /// Where to write the key (store.key_file).
        #[arg(long)]
        out: PathBuf,
    },
}

impl Cli {
    /// Runs the chosen command.
    pub fn run(self) -> ExitCode {
        pwrelay_shared::tls::install_default_provider();
        match self.command {
            Command::Serve(args) => serve::run(args),
            Command::Pki(command) => pki::run(command),
            Command::Agents(command) => agents::run(command),
            Command::Audit(command) => audit::run(command),
            Command::Clients(command) => clients::run(command),
            Command::StoreKey(StoreKeyCommand::Generate { out }) => generate_store_key(&out),
            Command::Password(command) => password::run(command),
            Command::Rotate(args) => client::rotate(args),
            Command::Verify(args) => client::verify(args),
            Command::Unlock(args) => client::unlock(args),
            Command::Reconcile(args) => client::reconcile(args),
            Command::Jobs(command) => client::jobs(command),
        }
    }
}

fn generate_store_key(out: &std::path::Path) -> ExitCode {
    let written = Sealer::generate_key_text()
        .map_err(anyhow::Error::from)
        .and_then(|key| pwrelay_shared::pki::write_private(out, &key, false).map_err(anyhow::Error::from));
    match written {
        Ok(()) => {
            eprintln!(
                "wrote {} (mode 0600); set store.key_file to it and back it up: sealed jobs cannot be opened without it",
                out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Records what an operator's command changes: in the store's audit trail, and as a line in
/// `[audit] file` when one is set (never on stdout, which carries the commands' output). Opened
/// before the change, so a file the operator cannot write stops the command before it changes
/// anything.
pub(crate) struct Recorder {
    audit: std::sync::Arc<crate::audit::Audit>,
    writer: crate::audit::AuditWriter,
}

impl Recorder {
    /// The recorder of `config`'s `[audit]` into `store`.
    pub(crate) fn open(
        config: &crate::audit::AuditConfig,
        store: &std::sync::Arc<dyn crate::store::Store>,
    ) -> anyhow::Result<Self> {
        let config = crate::audit::AuditConfig { stdout: false, ..config.clone() };
        let (audit, writer) = crate::audit::Audit::open(&config, std::sync::Arc::clone(store) as _, "cli")
            .map_err(|e| anyhow::anyhow!("{e} (run the command as the relay's user)"))?;
        Ok(Self { audit, writer })
    }

    /// Records `event` and stores it at once. The change is made by then: a failure says so.
    pub(crate) async fn record(&self, event: crate::audit::Event) -> anyhow::Result<()> {
        let kind = event.kind();
        self.audit.record(event);
        self.writer.flush().await.map_err(|e| {
            anyhow::anyhow!(
                "the change is made, but its audit event {} ({}) could not be stored: {e}",
                kind.id(),
                kind.name()
            )
        })
    }
}

/// The store of `config`, and the recorder of the changes a command makes to it.
pub(crate) async fn open_audited(
    config: &Config,
) -> anyhow::Result<(std::sync::Arc<dyn crate::store::Store>, Recorder)> {
    let store = crate::store::open(&config.store).await?;
    let recorder = Recorder::open(&config.audit, &store)?;
    Ok((store, recorder))
}

pub(crate) fn current_thread_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}
