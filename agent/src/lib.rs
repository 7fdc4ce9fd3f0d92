//! pwrelay-agent: the on-prem side of pwrelay.
//!
//! [`config::Config`] → [`app::App::build`] → [`app::App::run`]. The parts:
//! - [`link`]: the outbound mTLS gRPC stream to the relay, with reconnect back-off.
//! - [`jobs`]: carrying out one job, the journal of finished jobs.
//! - [`audit`]: the append-only audit log.
//! - [`directory`]: LDAP over TLS to the domain controllers (find, reset, read back, classify errors).
//! - [`health`]: `/healthz`, `/readyz`, `/status` and `/metrics` on the loopback address.
//! - [`metrics`]: every Prometheus metric of the agent.
//! - [`status`]: `pwrelay-agent status`, what a running agent sees, for the admin on its host.
//! - [`cli`]: the `pwrelay-agent` command line.

pub mod app;
pub mod audit;
pub mod cli;
pub mod config;
pub mod directory;
pub mod enroll;
pub mod health;
pub mod jobs;
pub mod link;
pub mod metrics;
pub mod status;
pub mod syslog;

pub use app::App;
pub use config::Config;
