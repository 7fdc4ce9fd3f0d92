//! `pwrelay`: the relay binary. All logic lives in the library; see `pwrelay --help`.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    pwrelay_relay::cli::Cli::parse().run()
}
