//! pwrelay-relay: the cloud side of pwrelay.
//!
//! [`config::Config`] → [`app::App::build`] → [`app::App::run`]. The parts:
//! - [`api`]: the HTTPS API clients use (rotations, jobs, health).
//! - [`link`]: the mTLS gRPC service agents connect to; dispatch and results.
//! - [`store`]: the durable store (SQLite or PostgreSQL) behind small traits.
//! - [`jobs`]: the job model and in-process job signals.
//! - [`lifecycle`]: new hires: Lifecycle Workflows callouts → initial password → one-time link →
//!   Graph resume; with [`graph`] (Microsoft Graph), [`delivery`] (SMS, mail, templates) and
//!   [`outbound`] (the HTTP client for cloud calls).
//! - [`signature`]: HMAC request signatures with a timestamp.
//! - [`seal`]: encryption of secrets at rest.
//! - [`webhooks`]: signed notifications of final jobs to each client's receiver, with retries.
//! - [`listener`]: the TLS accept loop of both listeners.
//! - [`metrics`]: the Prometheus metrics (`[metrics] listen`).
//! - [`untrusted`]: network text as it may be logged (escaped, bounded).
//! - [`cli`]: the `pwrelay` command line (serve, pki, clients, password, store-key).

pub mod api;
pub mod app;
pub mod audit;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod graph;
pub mod jobs;
pub mod lifecycle;
pub mod link;
pub mod listener;
pub mod metrics;
pub mod outbound;
pub mod seal;
pub mod signature;
pub mod store;
pub mod supervisor;
pub mod untrusted;
pub mod webhooks;

pub use app::App;
pub use config::Config;
