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
