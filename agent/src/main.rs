//! `pwrelay-agent`: the agent binary. All logic lives in the library; see `pwrelay-agent --help`.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    pwrelay_agent::cli::Cli::parse().run()
}
