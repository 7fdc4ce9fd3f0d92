//! The `pwrelay-agent` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app::App;
use crate::config::Config;

/// pwrelay-agent: sets Active Directory passwords for the pwrelay relay.
///
/// Runs on a domain member server. Dials out to the relay over mutual TLS (no inbound port),
/// receives password jobs for the AD domains named in its certificate, and carries them out over
/// LDAPS or StartTLS with a delegated service account.
#[derive(Debug, Parser)]
#[command(name = "pwrelay-agent", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent until SIGINT/SIGTERM.
    Run {
        /// The agent configuration (see deploy/config/agent.full.toml).
        #[arg(long, env = "PWRELAY_AGENT_CONFIG", default_value = "/etc/pwrelay/agent.toml")]
        config: PathBuf,
        /// Override log.level (e.g. "debug").
        #[arg(long, env = "PWRELAY_LOG")]
        log_level: Option<String>,
    },
    /// Show what the running agent sees: the relay link, its certificate, each DC, recent jobs.
    ///
    /// Asks the agent's health listener (health.listen in its configuration, or --address).
    /// Exits 0 when the agent is ready, 1 when it is not, 2 when no agent answers.
    Status {
        /// The agent configuration, read for health.listen.
        #[arg(long, env = "PWRELAY_AGENT_CONFIG", default_value = "/etc/pwrelay/agent.toml")]
        config: PathBuf,
        /// The health listener to ask instead of the configuration's (e.g. 127.0.0.1:9444).
        #[arg(long)]
        address: Option<std::net::SocketAddr>,
        /// Print the agent's answer as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Enroll this agent with a one-time token from `pwrelay agents enroll-token`.
    ///
    /// Makes the key here (agent.key, mode 0600; it never leaves the host), sends a certificate
    /// request over the relay's link port, and writes agent.pem, ca.pem and a starting agent.toml
    /// into --out. The token pins the relay's CA: no ca.pem needs copying.
    Enroll {
        /// The relay's link port, https://HOST:PORT (link.listen; 7443 by default).
        #[arg(long)]
        relay: String,
        /// The one-time token (better from the environment than the command line, which other
        /// users can see).
        #[arg(long, env = "PWRELAY_ENROLL_TOKEN", hide_env_values = true)]
        token: String,
        /// The directory to write agent.key, agent.pem, ca.pem and agent.toml to.
        #[arg(long)]
        out: PathBuf,
        /// The name the relay's certificate carries, when not the URL's host.
        #[arg(long)]
        server_name: Option<String>,
    },
    /// Validate the configuration and exit (0 when valid).
    CheckConfig {
        /// The agent configuration.
        #[arg(long, env = "PWRELAY_AGENT_CONFIG", default_value = "/etc/pwrelay/agent.toml")]
        config: PathBuf,
    },
}

/// Exit code for an unusable configuration.
const EXIT_CONFIG: u8 = 64;

impl Cli {
    /// Runs the chosen command.
    pub fn run(self) -> ExitCode {
        pwrelay_shared::tls::install_default_provider();
        match self.command {
            Command::Run { config, log_level } => run(&config, log_level),
            Command::Status { config, address, json } => status(&config, address, json),
            Command::Enroll { relay, token, out, server_name } => enroll(crate::enroll::EnrollOptions {
                relay,
                server_name,
                token: pwrelay_shared::secret::SecretString::new(token),
                out,
            }),
            Command::CheckConfig { config } => match Config::load(&config) {
                Ok(c) => {
                    let names: Vec<&str> = c.domains.iter().map(|d| d.name.as_str()).collect();
                    println!(
                        "{}: valid; relay {}:{}, domains {}",
                        config.display(),
                        c.relay.host,
                        c.relay.port,
                        names.join(", ")
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("invalid configuration: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            },
        }
    }
}

/// Exit code of `status` when no agent answers.
const EXIT_UNREACHABLE: u8 = 2;

fn status(path: &std::path::Path, address: Option<std::net::SocketAddr>, json: bool) -> ExitCode {
    let addr = match address {
        Some(addr) => addr,
        None => match Config::load(path) {
            Ok(config) => config.health.listen,
            Err(e) => {
                eprintln!("invalid configuration: {e} (or name the health listener with --address)");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let (status, raw) = match runtime.block_on(crate::status::fetch(addr)) {
        Ok(answer) => answer,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    if json {
        println!("{raw}");
    } else {
        print!("{}", crate::status::render(&status, addr));
    }
    if status.ready() { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

fn enroll(options: crate::enroll::EnrollOptions) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(crate::enroll::enroll(&options)) {
        Ok(enrolled) => {
            let expires = time::OffsetDateTime::from_unix_timestamp(enrolled.expires_unix)
                .ok()
                .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
                .unwrap_or_else(|| format!("Unix time {}", enrolled.expires_unix));
            println!(
                "enrolled agent {} for {} (certificate valid until {expires}, renewed automatically);\n\
                 wrote agent.key (0600), agent.pem, ca.pem and {} in {}:\n\
                 fill in its [[domains]] tables, then `pwrelay-agent check-config --config {}`",
                enrolled.agent,
                enrolled.domains.join(", "),
                crate::enroll::CONFIG_FILE,
                options.out.display(),
                enrolled.config.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(path: &std::path::Path, log_level: Option<String>) -> ExitCode {
    let mut config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(level) = log_level {
        config.log.level = level;
    }
    if let Err(e) = pwrelay_shared::telemetry::init(&config.log) {
        eprintln!("invalid configuration: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let app = App::build(config).await.map_err(|e| e.to_string())?;
        app.run(pwrelay_shared::shutdown::signal()).await.map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}
