//! `pwrelay clients`: API clients, their scopes and their tokens. A token is shown once; the relay
//! keeps only its SHA-256. Their webhooks are in [`super::webhooks`].

use std::path::PathBuf;
use std::process::ExitCode;

use pwrelay_shared::domain::DomainName;
use pwrelay_shared::secret::SecretString;

use super::webhooks::{self, WebhookCommand};
use super::{EXIT_CONFIG, EXIT_FAILURE, current_thread_runtime, open_audited};
use crate::api::auth;
use crate::audit::{Event, Kind};
use crate::config::{Config, Overrides};
use crate::store::{Operation, Scopes};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ClientsCommand {
    /// Register an API client and print its bearer token (shown once; only its hash is stored).
    Add {
        /// A name for the client, shown in jobs and logs (e.g. "cyberark-prod").
        name: String,
        /// Limit the client to this AD domain (repeatable; default: every domain).
        #[arg(long = "domain")]
        domains: Vec<String>,
        /// Limit the client to this operation: rotate, verify, unlock, reconcile, lifecycle (reading
        /// new-hire requests; only when listed), status (the operators' status page at /status),
        /// audit (reading the audit trail, GET /v1/audit; only when listed) (repeatable; default: all
        /// but lifecycle and audit).
        #[arg(long = "operation")]
        operations: Vec<String>,
        /// The relay configuration (for store.path).
        #[arg(long, env = "PWRELAY_CONFIG", default_value = "/etc/pwrelay/relay.toml")]
        config: PathBuf,
    },
    /// Give a client a new token; the old one stops working at once. Prints the new token once.
    Rotate {
        /// The client's name.
        name: String,
        /// The relay configuration (for store.path).
        #[arg(long, env = "PWRELAY_CONFIG", default_value = "/etc/pwrelay/relay.toml")]
        config: PathBuf,
    },
    /// Replace a client's scopes; they hold from its next request on (its token is unchanged).
    Scopes {
        /// The client's name.
        name: String,
        /// Limit the client to this AD domain (repeatable; none: every domain).
        #[arg(long = "domain")]
        domains: Vec<String>,
        /// Limit the client to this operation, as for `add` (repeatable; none: all but lifecycle
        /// and audit).
        #[arg(long = "operation")]
        operations: Vec<String>,
        /// The relay configuration (for store.path).
        #[arg(long, env = "PWRELAY_CONFIG", default_value = "/etc/pwrelay/relay.toml")]
        config: PathBuf,
    },
    /// Remove a client: its token stops working at once (its jobs are kept).
    Revoke {
        /// The client's name.
        name: String,
        /// The relay configuration (for store.path).
        #[arg(long, env = "PWRELAY_CONFIG", default_value = "/etc/pwrelay/relay.toml")]
        config: PathBuf,
    },
    /// A client's webhook: where the relay POSTs its finished jobs, signed, and the delivery log.
    #[command(subcommand)]
    Webhook(WebhookCommand),
}

pub(crate) fn run(command: ClientsCommand) -> ExitCode {
    let (name, config) = match &command {
        ClientsCommand::Add { name, config, .. }
        | ClientsCommand::Scopes { name, config, .. }
        | ClientsCommand::Rotate { name, config }
        | ClientsCommand::Revoke { name, config } => (name.clone(), config.clone()),
        ClientsCommand::Webhook(command) => command.client_and_config(),
    };
    if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        eprintln!("error: the client name must be 1-64 letters, digits, '-', '_' or '.'");
        return ExitCode::from(EXIT_CONFIG);
    }
    if name == crate::lifecycle::CLIENT {
        eprintln!("error: the client name {name:?} is reserved for new-hire jobs; choose another");
        return ExitCode::from(EXIT_CONFIG);
    }
    let config = match Config::load(&config, &Overrides::default()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let result = match command {
        ClientsCommand::Add { domains, operations, .. } => match scopes(&domains, &operations) {
            Ok(scopes) => add(&config, &name, &scopes),
            Err(message) => {
                eprintln!("error: {message}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        ClientsCommand::Scopes { domains, operations, .. } => match scopes(&domains, &operations) {
            Ok(scopes) => set_scopes(&config, &name, &scopes),
            Err(message) => {
                eprintln!("error: {message}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        ClientsCommand::Rotate { .. } => rotate(&config, &name),
        ClientsCommand::Revoke { .. } => revoke(&config, &name),
        ClientsCommand::Webhook(command) => return webhooks::run(command, &name, &config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn scopes(domains: &[String], operations: &[String]) -> Result<Scopes, String> {
    let domains = if domains.is_empty() {
        None
    } else {
        Some(
            domains
                .iter()
                .map(|d| DomainName::parse(d).map_err(|e| format!("--domain: {e}")))
                .collect::<Result<_, _>>()?,
        )
    };
    let operations = if operations.is_empty() {
        None
    } else {
        Some(
            operations
                .iter()
                .map(|o| {
                    Operation::parse(o).ok_or_else(|| {
                        format!("--operation {o:?}: use rotate, verify, unlock, reconcile, lifecycle, status or audit")
                    })
                })
                .collect::<Result<_, _>>()?,
        )
    };
    Ok(Scopes { domains, operations })
}

fn show_token(token: &SecretString) {
    println!("{}", token.expose_secret());
}

fn add(config: &Config, name: &str, scopes: &Scopes) -> anyhow::Result<()> {
    let token = current_thread_runtime()?.block_on(async {
        let (store, recorder) = open_audited(config).await?;
        let (token, hash) = auth::new_token().map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
        store.add_client(name, hash, scopes).await?;
        recorder.record(scope_details(Event::new(Kind::ClientAdded).client(name), scopes)).await?;
        Ok::<_, anyhow::Error>(token)
    })?;
    eprintln!("API client {name:?} added. Its token is shown only now; store it in your PAM's vault:");
    show_token(&token);
    Ok(())
}

fn rotate(config: &Config, name: &str) -> anyhow::Result<()> {
    let token = current_thread_runtime()?.block_on(async {
        let (store, recorder) = open_audited(config).await?;
        let (token, hash) = auth::new_token().map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
        if !store.rotate_client_token(name, hash).await? {
            anyhow::bail!("no API client named {name:?}");
        }
        recorder.record(Event::new(Kind::ClientTokenRotated).client(name)).await?;
        Ok(token)
    })?;
    eprintln!("API client {name:?} has a new token; the old one no longer works. The new one is shown only now:");
    show_token(&token);
    Ok(())
}

fn set_scopes(config: &Config, name: &str, scopes: &Scopes) -> anyhow::Result<()> {
    current_thread_runtime()?.block_on(async {
        let (store, recorder) = open_audited(config).await?;
        if !store.set_client_scopes(name, scopes).await? {
            anyhow::bail!("no API client named {name:?}");
        }
        recorder.record(scope_details(Event::new(Kind::ClientScopesChanged).client(name), scopes)).await
    })?;
    eprintln!("API client {name:?} has new scopes; they hold from its next request on");
    Ok(())
}

fn revoke(config: &Config, name: &str) -> anyhow::Result<()> {
    let removed = current_thread_runtime()?.block_on(async {
        let (store, recorder) = open_audited(config).await?;
        let removed = store.revoke_client(name).await?;
        if removed {
            recorder.record(Event::new(Kind::ClientRevoked).client(name)).await?;
        }
        Ok::<_, anyhow::Error>(removed)
    })?;
    if !removed {
        anyhow::bail!("no API client named {name:?}");
    }
    eprintln!("API client {name:?} revoked; its token no longer works");
    Ok(())
}

/// A client's scopes as audit details: the operations and domains it is limited to, or `all`.
fn scope_details(event: Event, scopes: &Scopes) -> Event {
    let operations: serde_json::Value = match &scopes.operations {
        Some(ops) => ops.iter().map(|o| o.as_str()).collect::<Vec<_>>().into(),
        None => "all".into(),
    };
    let domains: serde_json::Value = match &scopes.domains {
        Some(domains) => domains.iter().map(ToString::to_string).collect::<Vec<_>>().into(),
        None => "all".into(),
    };
    event.detail("operations", operations).detail("domains", domains)
}
