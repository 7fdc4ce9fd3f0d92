//! The relay application: `App::build(config)` binds the listeners and opens the store,
//! `App::run(shutdown)` serves until `shutdown` completes or a part fails, then drains.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pwrelay_proto::agent::v1::agent_enrollment_server::AgentEnrollmentServer;
use pwrelay_proto::agent::v1::agent_link_server::AgentLinkServer;
use pwrelay_shared::tls::{self, CertifiedKey, TrustAnchors};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, ApiState};
use crate::audit::{Audit, AuditWriter, Event, Kind};
use crate::config::Config;
use crate::jobs::events::JobEvents;
use crate::lifecycle::keys::LinkKeys;
use crate::lifecycle::{self, Lifecycle};
use crate::link::dispatcher::Dispatcher;
use crate::link::enroll::{EnrollmentService, Issuer, IssuerError};
use crate::link::registry::AgentRegistry;
use crate::link::revocation::Revocations;
use crate::link::{LinkContext, LinkService};
use crate::listener::{AcceptLimits, TlsIncoming};
use crate::metrics::RelayMetrics;
use crate::seal::{SealError, Sealer};
use crate::store::{ClaimPolicy, Store, StoreError, replicas};
use crate::supervisor::Supervisor;
use crate::webhooks::worker::{DeliveryWorker, WorkerError};

/// How long open requests and agent streams get to finish after shutdown starts.
const DRAIN_GRACE: Duration = Duration::from_secs(10);
/// How often overdue jobs are expired.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Why the relay could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A certificate or key in the configuration is unusable.
    #[error("[{section}] TLS material: {source}")]
    Tls {
        /// The configuration section.
        section: &'static str,
        /// The cause.
        source: tls::TlsError,
    },
    /// A listen address cannot be bound.
    #[error("{key} {addr}: {source}")]
    Bind {
        /// The configuration key.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The store key is unusable.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The new-hire flow's settings or credentials are unusable.
    #[error("{0}")]
    Lifecycle(String),
    /// The online issuer of agent certificates (`[enrollment]`) is unusable.
    #[error(transparent)]
    Enrollment(#[from] IssuerError),
    /// The audit trail cannot be written.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// The webhook delivery worker cannot be set up.
    #[error(transparent)]
    Webhooks(#[from] WorkerError),
    /// A server failed while running.
    #[error("{part} failed: {message}")]
    Serve {
        /// Which server.
        part: &'static str,
        /// What happened.
        message: String,
    },
}

/// A built relay, listening but not yet serving.
#[derive(Debug)]
pub struct App {
    api: TlsIncoming,
    link: TlsIncoming,
    metrics_listener: Option<TcpListener>,
    metrics: Arc<RelayMetrics>,
    api_state: Arc<ApiState>,
    link_context: Arc<LinkContext>,
    enrollment: EnrollmentService,
    store: Arc<dyn Store>,
    lifecycle: Option<Arc<Lifecycle>>,
    webhooks: DeliveryWorker,
    events: Arc<JobEvents>,
    claim_policy: ClaimPolicy,
    idempotency_window: Duration,
    retention: Duration,
    audit: Arc<Audit>,
    audit_writer: AuditWriter,
    audit_retention: Duration,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl App {
    /// Loads TLS material and the store key, opens the store and binds both listeners.
    pub async fn build(config: Config) -> Result<Self, AppError> {
        let api_tls = tls::https_server(
            CertifiedKey::from_files(&config.api.cert_file, &config.api.key_file)
                .map_err(|source| AppError::Tls { section: "api", source })?,
        )
        .map_err(|source| AppError::Tls { section: "api", source })?;
        let link_err = |source| AppError::Tls { section: "link", source };
        let agent_ca = TrustAnchors::from_file(&config.link.agent_ca_file).map_err(link_err)?;
        let agent_ca_pem = std::fs::read_to_string(&config.link.agent_ca_file).map_err(|e| {
            link_err(tls::TlsError::File {
                path: config.link.agent_ca_file.display().to_string(),
                reason: e.to_string(),
            })
        })?;
        let mut link_identity =
            CertifiedKey::from_files(&config.link.cert_file, &config.link.key_file).map_err(link_err)?;
        // Served after the link certificate, so that an enrolling agent finds the CA its token pins.
        if let Some(Ok(ca)) =
            <rustls_pki_types::CertificateDer<'static> as rustls_pki_types::pem::PemObject>::pem_slice_iter(
                agent_ca_pem.as_bytes(),
            )
            .next()
        {
            link_identity.append_to_chain(ca);
        }
        let issuer = config.enrollment.as_ref().map(|e| Issuer::load(e, &agent_ca_pem)).transpose()?.map(Arc::new);
        let sealer = Arc::new(Sealer::from_key_file(&config.store.key_file)?);
        let store = crate::store::open(&config.store).await?;
        // Alive before it serves: other replicas leave the work this one holds alone from now on.
        store.heartbeat().await?;
        let audit_store: Arc<dyn crate::store::AuditStore> = Arc::clone(&store) as _;
        let (audit, audit_writer) = Audit::open(&config.audit, audit_store, store.replica().as_str())?;
        // The deny list is in force from the first handshake.
        let revocations = Arc::new(Revocations::default());
        revocations.reload(store.as_ref()).await?;
        let link_tls = tls::link_server(
            link_identity,
            &agent_ca,
            Arc::clone(&revocations) as Arc<dyn tls::ClientCertificateCheck>,
        )
        .map_err(link_err)?;
        let enrollment = EnrollmentService::new(
            issuer,
            Arc::clone(&store),
            Arc::clone(&revocations),
            Arc::clone(&audit),
            config.enrollment.as_ref().map_or(10, |e| e.per_address_per_minute),
        );

        let api_listener = TcpListener::bind(config.api.listen).await.map_err(|source| AppError::Bind {
            key: "api.listen",
            addr: config.api.listen,
            source,
        })?;
        let link_listener = TcpListener::bind(config.link.listen).await.map_err(|source| AppError::Bind {
            key: "link.listen",
            addr: config.link.listen,
            source,
        })?;
        let metrics_listener = match config.metrics.listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| AppError::Bind {
                key: "metrics.listen",
                addr,
                source,
            })?),
            None => None,
        };
        let metrics = RelayMetrics::new(config.domains.iter().map(ToString::to_string));
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let bind_err = |key, addr| move |source| AppError::Bind { key, addr, source };
        let api_accept = AcceptLimits {
            max_connections: Some(config.api.limits.max_connections),
            handshake_timeout: config.api.limits.tls_handshake_timeout,
            refusals: Some(metrics.handshake_refusals("api")),
            audit: Some(Arc::clone(&audit)),
        };
        let api = TlsIncoming::spawn_limited(api_listener, api_tls, "api", api_accept, cancel.child_token(), &tracker)
            .map_err(bind_err("api.listen", config.api.listen))?;
        let link_accept = AcceptLimits {
            max_connections: Some(config.link.max_connections),
            refusals: Some(metrics.handshake_refusals("link")),
            audit: Some(Arc::clone(&audit)),
            ..AcceptLimits::default()
        };
        let link =
            TlsIncoming::spawn_limited(link_listener, link_tls, "link", link_accept, cancel.child_token(), &tracker)
                .map_err(bind_err("link.listen", config.link.listen))?;

        let (idempotency_window, retention) = (config.jobs.idempotency_window, config.jobs.retention);
        let claim_policy = ClaimPolicy {
            lease: config.link.lease,
            write_timeout: config.link.write_timeout,
            max_attempts: config.jobs.max_attempts,
            time_to_live: config.jobs.time_to_live,
        };
        let events = Arc::new(JobEvents::default());
        let registry = Arc::new(AgentRegistry::new(Arc::clone(&store), config.agents));
        let domains = config.domains.iter().cloned().collect();
        let link_keys = Arc::new(LinkKeys::default());
        let lifecycle = match config.lifecycle {
            Some(settings) => Some(Arc::new(
                Lifecycle::new(
                    settings,
                    lifecycle::Parts {
                        store: Arc::clone(&store),
                        sealer: Arc::clone(&sealer),
                        events: Arc::clone(&events),
                        keys: Arc::clone(&link_keys),
                        metrics: Arc::clone(&metrics),
                        domains: config.domains.clone(),
                        audit: Arc::clone(&audit),
                    },
                )
                .map_err(AppError::Lifecycle)?,
            )),
            None => None,
        };
        let webhooks = DeliveryWorker::new(Arc::clone(&store), Arc::clone(&sealer), config.webhooks.clone())?;
        let api_state = Arc::new(ApiState {
            store: Arc::clone(&store),
            sealer: Arc::clone(&sealer),
            events: Arc::clone(&events),
            registry: Arc::clone(&registry),
            domains: config.domains.iter().cloned().collect(),
            max_body_bytes: config.api.max_body_bytes,
            lifecycle: lifecycle.clone(),
            edge: api::edge::Edge::new(config.api.limits.clone()),
            metrics: Arc::clone(&metrics),
            status_logins: api::status::login_limiter(),
            audit: Arc::clone(&audit),
        });
        let dispatcher = Arc::new(Dispatcher::new(
            Arc::clone(&store),
            Arc::clone(&events),
            claim_policy,
            config.link.claim_interval,
        ));
        let link_context = Arc::new(LinkContext {
            store: Arc::clone(&store),
            sealer,
            events: Arc::clone(&events),
            registry,
            relay_domains: domains,
            claim_policy,
            heartbeat: config.link.heartbeat,
            link_keys,
            metrics: Arc::clone(&metrics),
            revocations,
            audit: Arc::clone(&audit),
            dispatcher,
        });
        let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
        tracing::info!(
            api = %api.local_addr(),
            link = %link.local_addr(),
            metrics = metrics_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
            store = %store.location(),
            replica = %store.replica(),
            "relay listening"
        );
        Ok(Self {
            api,
            link,
            metrics_listener,
            metrics,
            api_state,
            link_context,
            enrollment,
            store,
            lifecycle,
            webhooks,
            events,
            claim_policy,
            idempotency_window,
            retention,
            audit,
            audit_writer,
            audit_retention: config.audit.retention,
            cancel,
            tracker,
        })
    }

    /// The bound HTTPS API address.
    pub fn api_addr(&self) -> SocketAddr {
        self.api.local_addr()
    }

    /// The bound agent-link address.
    pub fn link_addr(&self) -> SocketAddr {
        self.link.local_addr()
    }

    /// The bound metrics address, when `[metrics] listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` completes (or a server fails), then drains for up to 10 s.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
        let Self {
            api,
            link,
            metrics_listener,
            metrics,
            api_state,
            link_context,
            enrollment,
            store,
            lifecycle,
            webhooks,
            events,
            claim_policy,
            idempotency_window,
            retention,
            audit,
            audit_writer,
            audit_retention,
            cancel,
            tracker,
        } = self;
        let (failed_tx, mut failed_rx) = tokio::sync::mpsc::channel::<AppError>(4);

        let api_limits = api_state.edge.limits().clone();
        let registry = Arc::clone(&api_state.registry);
        let router = api::router(api_state)
            .route_layer(axum::middleware::from_fn(crate::metrics::mark_route))
            .layer(axum::middleware::from_fn_with_state(Arc::clone(&metrics), crate::metrics::record_http));
        tracker.spawn(api::server::serve(api, router, api_limits, cancel.child_token(), tracker.clone()));

        let link_cancel = cancel.child_token();
        let revocations = Arc::clone(&link_context.revocations);
        let dispatcher = Arc::clone(&link_context.dispatcher);
        let service = LinkService::new(link_context, cancel.child_token(), tracker.clone());
        let link_failed = failed_tx.clone();
        tracker.spawn(async move {
            let served = tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .add_service(AgentLinkServer::new(service))
                .add_service(AgentEnrollmentServer::new(enrollment))
                .serve_with_incoming_shutdown(link.into_stream(), async move { link_cancel.cancelled().await })
                .await;
            if let Err(e) = served {
                let _ = link_failed.send(AppError::Serve { part: "agent link", message: e.to_string() }).await;
            }
        });

        if let Some(listener) = metrics_listener {
            let scrape = crate::metrics::Scrape { metrics: Arc::clone(&metrics), store: Arc::clone(&store), registry };
            let metrics_cancel = cancel.child_token();
            let metrics_failed = failed_tx.clone();
            tracker.spawn(async move {
                let served = axum::serve(listener, crate::metrics::router(scrape))
                    .with_graceful_shutdown(async move { metrics_cancel.cancelled().await })
                    .await;
                if let Err(e) = served {
                    let _ = metrics_failed.send(AppError::Serve { part: "metrics", message: e.to_string() }).await;
                }
            });
        }

        // Background workers run supervised: one that panics or returns is logged and restarted.
        let workers = Supervisor::new(cancel.child_token(), tracker.clone());
        let (notified_store, notified_events) = (Arc::clone(&store), Arc::clone(&events));
        workers.spawn("store notifications", move |cancel| {
            let (store, events) = (Arc::clone(&notified_store), Arc::clone(&notified_events));
            async move { store.forward_notifications(events, cancel).await }
        });
        let (denying, revocation_audit) = (Arc::clone(&store), Arc::clone(&audit));
        workers.spawn("revocation watch", move |cancel| {
            Arc::clone(&revocations).watch(Arc::clone(&denying), Arc::clone(&revocation_audit), cancel)
        });
        workers.spawn("dispatcher", move |cancel| Arc::clone(&dispatcher).run(cancel));
        let beating = Arc::clone(&store);
        workers.spawn("replica heartbeat", move |cancel| heartbeat(Arc::clone(&beating), cancel));
        let retiring = Arc::clone(&store);
        let webhook_events = Arc::clone(&events);
        let sweep_metrics = Arc::clone(&metrics);
        workers.spawn("audit writer", move |cancel| audit_writer.clone().run(cancel));
        workers.spawn("webhook delivery", move |cancel| webhooks.clone().run(webhook_events.changed(), cancel));
        workers.spawn("overdue job sweeper", move |cancel| {
            expire_overdue_jobs(
                Arc::clone(&store),
                Arc::clone(&events),
                Arc::clone(&sweep_metrics),
                Arc::clone(&audit),
                Sweep { policy: claim_policy, idempotency_window, retention, audit_retention },
                cancel,
            )
        });
        if let Some(lifecycle) = lifecycle {
            let lifecycle_tracker = tracker.clone();
            workers.spawn("lifecycle", move |cancel| Arc::clone(&lifecycle).run(cancel, lifecycle_tracker.clone()));
        }
        drop(failed_tx);

        let result = tokio::select! {
            () = shutdown => { tracing::info!("shutdown requested"); Ok(()) }
            Some(error) = failed_rx.recv() => Err(error),
        };
        cancel.cancel();
        tracker.close();
        if tokio::time::timeout(DRAIN_GRACE, tracker.wait()).await.is_err() {
            tracing::warn!("some connections did not finish within {DRAIN_GRACE:?}; stopping anyway");
        }
        // Gone at once rather than after replicas::DEAD_AFTER: what this replica held (a new
        // hire's link key whose link is not out yet) is re-issued by another now.
        if let Err(error) = retiring.retire().await {
            tracing::warn!(%error, "this replica could not remove itself from the store; it counts as dead in 20 s");
        }
        tracing::info!("relay stopped");
        result
    }
}

/// Expires overdue jobs, forgets old idempotency keys and deletes what is past its retention,
/// every [`SWEEP_INTERVAL`] until `cancel`. Every replica runs it: each statement is idempotent
/// (it changes only rows still past their time), and on PostgreSQL each runs under its own
/// advisory lock, so a replica that finds another sweeping skips that round.
async fn expire_overdue_jobs(
    store: Arc<dyn Store>,
    events: Arc<JobEvents>,
    metrics: Arc<RelayMetrics>,
    audit: Arc<Audit>,
    sweep: Sweep,
    cancel: CancellationToken,
) {
    let Sweep { policy, idempotency_window, retention, audit_retention } = sweep;
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        match store.expire_overdue(policy).await {
            Ok(0) => {}
            Ok(expired) => {
                tracing::warn!(expired, "jobs expired without an agent finishing them");
                metrics.jobs_expired(expired as u64);
                audit.record(Event::new(Kind::JobsExpired).detail("count", expired));
                events.job_changed();
            }
            Err(error) => tracing::error!(%error, "expiring overdue jobs failed"),
        }
        match store.purge_idempotency_keys(idempotency_window).await {
            Ok(0) => {}
            Ok(purged) => tracing::debug!(purged, "idempotency keys older than jobs.idempotency_hours forgotten"),
            Err(error) => tracing::error!(%error, "forgetting old idempotency keys failed"),
        }
        match store.purge_finished(retention).await {
            Ok(purged) if purged == crate::store::Purged::default() => {}
            Ok(purged) => tracing::info!(
                jobs = purged.jobs,
                new_hires = purged.new_hires,
                "jobs and new-hire requests older than jobs.retention_days deleted"
            ),
            Err(error) => tracing::error!(%error, "deleting jobs past their retention failed"),
        }
        match store.purge_audit(audit_retention).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "audit events older than audit.retention_days deleted"),
            Err(error) => tracing::error!(%error, "deleting audit events past their retention failed"),
        }
    }
}

/// Records every [`replicas::HEARTBEAT_INTERVAL`] that this replica is alive, until `cancel`.
async fn heartbeat(store: Arc<dyn Store>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(replicas::HEARTBEAT_INTERVAL);
    let mut failing = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        match store.heartbeat().await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("the replica heartbeat is recorded again");
            }
            Ok(()) => {}
            Err(error) => {
                failing = true;
                tracing::warn!(%error, "recording the replica heartbeat failed; after 20 s other replicas take this one for dead");
            }
        }
    }
}

/// What the sweeper does every [`SWEEP_INTERVAL`].
#[derive(Debug, Clone, Copy)]
struct Sweep {
    /// Expiry of unfinished jobs.
    policy: ClaimPolicy,
    /// `jobs.idempotency_hours`.
    idempotency_window: Duration,
    /// `jobs.retention_days`.
    retention: Duration,
    /// `audit.retention_days`.
    audit_retention: Duration,
}
