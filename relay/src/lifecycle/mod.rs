//! The new-hire flow: a Lifecycle Workflows callout becomes an AD initial password that only the
//! person can read, and the workflow learns how it went.
//!
//! ```text
//! callout ──► api::lifecycle (authenticate, store once per taskProcessingResult.id, 202)
//!   worker: resolving  ── Graph user + manager ──► initial_password job (or failed: cloud-only, no phone, ...)
//!           applying   ── agent: set with must-change, verify, AES-256-GCM with a fresh key
//!           delivering ── username → manager (mail); link <public_url>/r/<id>#<key> → person (SMS or mail)
//!           resuming   ── Graph resume: completed | failed (retried with back-off)
//!           done
//! ```
//!
//! Invariants: the link key exists only in the agent's result, in [`keys::LinkKeys`] for moments,
//! and in the message sent to the person; the store keeps the ciphertext (sealed again with the
//! store key) and `SHA-256("pwrelay-claim" ‖ key)` to check claims. The username and the link never
//! share a message. The relay stores no contact details: it asks Graph when it sends.
//!
//! The key is handed from the agent session to the worker in memory, so the replica that delivers
//! is the one that received the result: the store records it with the job's result
//! (`jobs.finished_by`, and `key_replica` once the link is being sent), and only that replica
//! claims the request's delivery while it is alive ([`crate::store::replicas`]). A request whose
//! replica died before the link went out (a crash or a restart between result and delivery) is
//! re-issued once: a fresh job sets a fresh password, whose key the replica that records it holds.
//! If that is lost too, the request fails cleanly, and the workflow is told.

pub mod authentication;
pub mod callout;
pub mod config;
pub mod keys;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::rate_limit::RateLimiter;
use crate::delivery::sms::SmsGateway;
use crate::graph::GraphClient;
use crate::jobs::events::JobEvents;
use crate::seal::Sealer;
use crate::store::Store;
use authentication::CalloutAuthenticator;
use config::LifecycleConfig;
use keys::LinkKeys;

/// Timeout of every call to Entra, Graph and the SMS gateway.
const OUTBOUND_TIMEOUT: Duration = Duration::from_secs(20);

/// The API client name lifecycle jobs are created under.
pub const CLIENT: &str = "lifecycle";

/// The context byte string a claim proof hashes with the link key.
pub const PROOF_CONTEXT: &[u8] = b"pwrelay-claim";

/// The new-hire flow's parts.
pub struct Lifecycle {
    /// Settings.
    pub config: LifecycleConfig,
    /// Callout authentication.
    pub authenticator: CalloutAuthenticator,
    /// The store: lifecycle records and their jobs.
    pub store: Arc<dyn Store>,
    /// Opens the stored ciphertexts.
    pub sealer: Arc<Sealer>,
    /// Job signals.
    pub events: Arc<JobEvents>,
    /// Link keys on their way from the agent session to the delivery.
    pub keys: Arc<LinkKeys>,
    /// The jobs it creates are counted here.
    pub metrics: Arc<crate::metrics::RelayMetrics>,
    /// Graph.
    pub graph: GraphClient,
    /// The SMS gateway, when configured.
    pub sms: Option<SmsGateway>,
    /// Domains the relay serves.
    pub domains: Vec<pwrelay_shared::domain::DomainName>,
    /// Link page requests per client address, counted by each replica on its own (the per-link
    /// limit is counted in the store, [`crate::store::LifecycleStore::count_link_request`]).
    pub client_limiter: crate::api::rate_limit::RateLimiter,
    /// The audit trail.
    pub audit: Arc<crate::audit::Audit>,
    wake: tokio::sync::Notify,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle").field("tenants", &self.config.tenants.len()).finish_non_exhaustive()
    }
}

/// What [`Lifecycle::new`] needs from the rest of the relay.
#[allow(missing_debug_implementations)]
pub struct Parts {
    /// The store: lifecycle records and their jobs.
    pub store: Arc<dyn Store>,
    /// The store key.
    pub sealer: Arc<Sealer>,
    /// Job signals.
    pub events: Arc<JobEvents>,
    /// Link keys.
    pub keys: Arc<LinkKeys>,
    /// The relay's metrics.
    pub metrics: Arc<crate::metrics::RelayMetrics>,
    /// Served domains.
    pub domains: Vec<pwrelay_shared::domain::DomainName>,
    /// The audit trail.
    pub audit: Arc<crate::audit::Audit>,
}

impl Lifecycle {
    /// Loads credentials and builds the clients; the error names the setting to fix.
    pub fn new(config: LifecycleConfig, parts: Parts) -> Result<Self, String> {
        let http = crate::outbound::client(config.ca_file.as_deref(), "lifecycle.endpoints.ca_file", OUTBOUND_TIMEOUT)
            .map_err(|e| e.to_string())?;
        let sms = config.sms.as_ref().map(|s| SmsGateway::new(s, http.clone())).transpose()?;
        let client_limiter = RateLimiter::new(config.requests_per_client_per_minute, Duration::from_secs(60));
        Ok(Self {
            authenticator: CalloutAuthenticator::new(&config, http.clone())?,
            graph: GraphClient::new(&config, http)?,
            sms,
            config,
            store: parts.store,
            sealer: parts.sealer,
            events: parts.events,
            keys: parts.keys,
            metrics: parts.metrics,
            domains: parts.domains,
            audit: parts.audit,
            client_limiter,
            wake: tokio::sync::Notify::new(),
        })
    }

    /// Asks the worker to look at the requests now (a callout arrived).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs the worker until `cancel`; deliveries run on `tracker`.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken, tracker: TaskTracker) {
        worker::run(self, cancel, tracker).await;
    }
}
