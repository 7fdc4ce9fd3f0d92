//! `pwrelay password ...`: check, generate and derive passwords with the shared engine.

use std::process::ExitCode;

/// `pwrelay password` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum PasswordCommand {}

/// Runs one `pwrelay password` subcommand.
pub(crate) fn run(command: PasswordCommand) -> ExitCode {
    match command {}
}
