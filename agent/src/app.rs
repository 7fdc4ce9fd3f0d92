//! The agent application: `App::build(config)` loads certificates and binds the health listener,
//! `App::run(shutdown)` keeps the relay link up and serves health until `shutdown` completes.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pwrelay_shared::tls::{self, TrustAnchors};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::AuditLog;
use crate::config::Config;
use crate::directory::Directory;
use crate::health::{self, HealthState};
use crate::jobs::JobContext;
use crate::jobs::journal::Journal;
use crate::link::LinkClient;
use crate::link::identity::LinkIdentity;
use crate::link::renewal::Renewal;

/// How long the rest of the agent (the health listener, the bind check) gets beyond the link's
/// own drain (`relay.shutdown_grace_seconds`) before the process stops anyway.
const STOP_MARGIN: Duration = Duration::from_secs(5);

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Certificates or keys are unusable.
    #[error("{key}: {source}")]
    Tls {
        /// The configuration key.
        key: String,
        /// The cause.
        source: tls::TlsError,
    },
    /// The state directory, journal or audit log cannot be opened.
    #[error("state.dir {path}: {source}")]
    State {
        /// The file or directory.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The health listener cannot be bound.
    #[error("health.listen {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// A built agent, not yet running.
#[derive(Debug)]
pub struct App {
    link: LinkClient,
    health: Arc<HealthState>,
    health_listener: TcpListener,
    bind_check_interval: Duration,
}

impl App {
    /// Loads TLS material for the relay and every domain, and binds the health listener.
    pub async fn build(config: Config) -> Result<Self, AppError> {
        let relay_tls = |source| AppError::Tls { key: "relay".into(), source };
        let relay_ca = TrustAnchors::from_file(&config.relay.ca_file).map_err(relay_tls)?;
        let identity =
            Arc::new(LinkIdentity::load(&config.relay.cert_file, &config.relay.key_file, relay_ca).map_err(relay_tls)?);
        let certificate = certificate_status(&identity.leaf());
        let mut directories = BTreeMap::new();
        for (i, domain) in config.domains.into_iter().enumerate() {
            let name = domain.name.clone();
            let directory = Directory::new(domain)
                .map_err(|source| AppError::Tls { key: format!("domains[{i}].ca_file"), source })?;
            directories.insert(name, directory);
        }
        let state_err = |path: &std::path::Path| {
            let path = path.display().to_string();
            move |source| AppError::State { path, source }
        };
        std::fs::create_dir_all(&config.state_dir).map_err(state_err(&config.state_dir))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&config.state_dir, std::fs::Permissions::from_mode(0o700))
                .map_err(state_err(&config.state_dir))?;
        }
        let journal_path = config.state_dir.join("journal.jsonl");
        let journal = Journal::open(&journal_path).map_err(state_err(&journal_path))?;
        let audit_path = config.state_dir.join("audit.jsonl");
        let audit = AuditLog::configured(&audit_path, &config.audit).map_err(state_err(&audit_path))?;
        let jobs = Arc::new(JobContext::new(directories, journal, audit));
        let health_listener = TcpListener::bind(config.health.listen)
            .await
            .map_err(|source| AppError::Bind { addr: config.health.listen, source })?;
        if !config.health.listen.ip().is_loopback() {
            tracing::warn!(listen = %config.health.listen, "health endpoints listen on a non-loopback address");
        }
        let health = Arc::new(HealthState::default());
        match certificate {
            Some(certificate) => health.set_certificate(certificate),
            None => {
                tracing::warn!(cert_file = %config.relay.cert_file.display(), "the agent certificate names no agent identity; the relay will refuse it")
            }
        }
        let link = LinkClient {
            host: config.relay.host,
            port: config.relay.port,
            server_name: config.relay.server_name,
            identity,
            max_jobs_in_flight: config.relay.max_jobs_in_flight,
            heartbeat: config.relay.heartbeat,
            shutdown_grace: config.relay.shutdown_grace,
            jobs,
            health: Arc::clone(&health),
        };
        Ok(Self { link, health, health_listener, bind_check_interval: config.health.bind_check_interval })
    }

    /// The bound health address.
    pub fn health_addr(&self) -> SocketAddr {
        // Bound in build(); local_addr() of a bound listener only fails on OS resource errors.
        self.health_listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Runs until `shutdown` completes, then lets running jobs report and stops.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let Self { link, health, health_listener, bind_check_interval } = self;
        let shutdown_grace = link.shutdown_grace;
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracing::info!(relay = %format!("{}:{}", link.host, link.port), health = %health_listener.local_addr()?, "agent starting");

        tracker.spawn(health::check_directories(
            Arc::clone(&link.jobs),
            Arc::clone(&health),
            bind_check_interval,
            cancel.child_token(),
        ));
        let health_cancel = cancel.child_token();
        let router = health::router(Arc::clone(&health), Arc::clone(&link.jobs));
        tracker.spawn(async move {
            let served = axum::serve(health_listener, router)
                .with_graceful_shutdown(async move { health_cancel.cancelled().await })
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "health endpoint failed");
            }
        });
        let renewal = Renewal {
            host: link.host.clone(),
            port: link.port,
            server_name: link.server_name.clone(),
            identity: Arc::clone(&link.identity),
            health: Arc::clone(&health),
            audit: link.jobs.audit.clone(),
        };
        tracker.spawn(renewal.run(cancel.child_token()));
        tracker.spawn(link.run(cancel.child_token()));

        shutdown.await;
        tracing::info!("shutdown requested");
        cancel.cancel();
        tracker.close();
        // The link lets running jobs finish and report for up to its grace, then gives up itself.
        let grace = shutdown_grace + STOP_MARGIN;
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!("stopping with work still running after {grace:?}");
        }
        tracing::info!("agent stopped");
        Ok(())
    }
}

/// The identity and validity of the agent's certificate (DER).
pub(crate) fn certificate_status(der: &[u8]) -> Option<health::CertificateStatus> {
    let identity = pwrelay_shared::identity::AgentIdentity::from_certificate_der(der).ok()?;
    let (issued_unix, expires_unix) = pwrelay_shared::identity::certificate_validity_unix(der)?;
    Some(health::CertificateStatus {
        agent: identity.name.to_string(),
        domains: identity.domains.iter().map(ToString::to_string).collect(),
        issued_unix,
        expires_unix,
    })
}
