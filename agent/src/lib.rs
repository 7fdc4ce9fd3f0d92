//! pwrelay-agent: the on-prem side of pwrelay.
//!
//! [`config::Config`] → [`app::App::build`] → [`app::App::run`]. The parts:
//! - [`link`]: the outbound mTLS gRPC stream to the relay, with reconnect back-off.
//! - [`jobs`]: carrying out one job, the journal of finished jobs.
//! - [`audit`]: the append-only audit log.
//! - [`directory`]: LDAP over TLS to the domain controllers (find, reset, read back, classify errors).
//! - [`health`]: `/healthz` and `/readyz` on the loopback address.
//! - [`cli`]: the `pwrelay-agent` command line.

pub mod app;
pub mod audit;
pub mod cli;
pub mod config;
pub mod directory;
pub mod health;
pub mod jobs;
pub mod link;

pub use app::App;
pub use config::Config;
