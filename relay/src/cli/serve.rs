//! `pwrelay serve`: load the configuration, set up logging, run the relay until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use super::{EXIT_CONFIG, EXIT_FAILURE};
use crate::app::App;
use crate::config::{Config, Overrides};

/// `pwrelay serve` options. Command line beats environment beats the file.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// The relay configuration file (see deploy/config/relay.full.toml).
    #[arg(long, env = "PWRELAY_CONFIG", default_value = "/etc/pwrelay/relay.toml")]
    config: PathBuf,
    /// Override api.listen (HTTPS API; default 0.0.0.0:8443).
    #[arg(long, env = "PWRELAY_API_LISTEN")]
    api_listen: Option<SocketAddr>,
    /// Override link.listen (agent link; default 0.0.0.0:7443).
    #[arg(long, env = "PWRELAY_LINK_LISTEN")]
    link_listen: Option<SocketAddr>,
    /// Override log.level (e.g. "debug").
    #[arg(long, env = "PWRELAY_LOG")]
    log_level: Option<String>,
}

pub(crate) fn run(args: ServeArgs) -> ExitCode {
    let overrides = Overrides { api_listen: args.api_listen, link_listen: args.link_listen, log_level: args.log_level };
    let config = match Config::load(&args.config, &overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(e) = pwrelay_shared::telemetry::init(&config.log) {
        eprintln!("invalid configuration: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(async { App::build(config).await?.run(pwrelay_shared::shutdown::signal()).await });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "relay stopped with an error");
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
