//! The agent's link to the relay: dial out over mutual TLS, open the `AgentLink` stream, carry out
//! the jobs that arrive, send results and heartbeats; on any failure reconnect with back-off.
//!
//! The relay's certificate must chain to the configured CA *and* carry `relay.server_name`.

pub mod backoff;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use pwrelay_proto::agent::v1 as pb;
use pwrelay_proto::agent::v1::agent_link_client::AgentLinkClient;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Endpoint, Uri};

use crate::health::HealthState;
use crate::jobs::{self, Jobs};
use backoff::Backoff;

/// How long to wait for the relay's welcome.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(15);
/// How long running jobs get to finish and report when the agent stops.
const DRAIN_GRACE: Duration = Duration::from_secs(10);
/// A session that lasted this long resets the back-off.
const STABLE_SESSION: Duration = Duration::from_secs(30);

/// Why a link session ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// TCP, TLS or HTTP/2 connection failed.
    #[error("cannot connect to the relay at {address}: {message}")]
    Connect {
        /// host:port.
        address: String,
        /// The cause, with its sources.
        message: String,
    },
    /// The relay refused or ended the stream with a status.
    #[error("the relay refused the agent link: {0}")]
    Refused(String),
    /// The relay did not answer the hello.
    #[error("the relay sent no welcome within {WELCOME_TIMEOUT:?}")]
    NoWelcome,
    /// The stream failed mid-way.
    #[error("the agent link broke: {0}")]
    Stream(String),
    /// `relay.server_name` is not a valid DNS name or IP address.
    #[error("relay.server_name {0:?} is not a valid DNS name or IP address")]
    ServerName(String),
}

/// How a session ended without error.
#[derive(Debug, PartialEq, Eq)]
enum SessionEnd {
    Shutdown,
    RelayClosed,
}

/// Everything the link needs.
#[derive(Debug, Clone)]
pub struct LinkClient {
    /// Relay host.
    pub host: String,
    /// Relay link port.
    pub port: u16,
    /// Name the relay certificate must carry.
    pub server_name: String,
    /// mTLS client configuration (from `shared::tls::link_client`).
    pub tls: Arc<rustls::ClientConfig>,
    /// Jobs at once.
    pub max_jobs_in_flight: u32,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// The served domains, journal and audit log.
    pub jobs: Jobs,
    /// Health state to update.
    pub health: Arc<HealthState>,
}

impl LinkClient {
    /// Keeps the link up until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            let started = tokio::time::Instant::now();
            let result = self.session(&cancel).await;
            self.health.set_relay_connected(false);
            match result {
                Ok(SessionEnd::Shutdown) => return,
                Ok(SessionEnd::RelayClosed) => tracing::info!("the relay closed the agent link; reconnecting"),
                Err(error) => tracing::warn!(%error, "agent link down"),
            }
            if started.elapsed() >= STABLE_SESSION {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            tracing::info!(
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "reconnecting after back-off"
            );
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn connect(&self) -> Result<AgentLinkClient<tonic::transport::Channel>, LinkError> {
        let address = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let server_name = ServerName::try_from(self.server_name.clone())
            .map_err(|_| LinkError::ServerName(self.server_name.clone()))?;
        let connector = TlsConnector::from(Arc::clone(&self.tls));
        let (host, port) = (self.host.clone(), self.port);
        let dial = tower::service_fn(move |_: Uri| {
            let (connector, server_name, host) = (connector.clone(), server_name.clone(), host.clone());
            async move {
                let tcp = TcpStream::connect((host.as_str(), port)).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        });
        let connect_err =
            |e: &dyn std::error::Error| LinkError::Connect { address: address.clone(), message: error_chain(e) };
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| connect_err(&e))?
            .connect_timeout(Duration::from_secs(10))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .connect_with_connector(dial)
            .await
            .map_err(|e| connect_err(&e))?;
        Ok(AgentLinkClient::new(channel))
    }

    async fn session(&self, cancel: &CancellationToken) -> Result<SessionEnd, LinkError> {
        let mut client = tokio::select! {
            () = cancel.cancelled() => return Ok(SessionEnd::Shutdown),
            client = self.connect() => client?,
        };
        let (outbound, rx) = mpsc::channel::<pb::AgentMessage>(64);
        let hello = pb::Hello {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            domains: self.jobs.directories.keys().map(|d| d.to_string()).collect(),
            max_jobs_in_flight: self.max_jobs_in_flight,
        };
        send(&outbound, pb::agent_message::Body::Hello(hello)).await?;
        let mut inbound = client
            .open(ReceiverStream::new(rx))
            .await
            .map_err(|status| LinkError::Refused(status.message().to_owned()))?
            .into_inner();
        let welcome = match tokio::time::timeout(WELCOME_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(pb::RelayMessage { body: Some(pb::relay_message::Body::Welcome(welcome)) }))) => welcome,
            Ok(Ok(_)) => return Err(LinkError::Stream("the relay's first message was not a welcome".into())),
            Ok(Err(status)) => return Err(LinkError::Refused(status.message().to_owned())),
            Err(_) => return Err(LinkError::NoWelcome),
        };
        tracing::info!(
            agent = %welcome.agent_name,
            domains = ?welcome.authorized_domains,
            relay_version = %welcome.relay_version,
            "connected to the relay"
        );
        self.health.set_relay_connected(true);

        let in_progress: Arc<Mutex<HashSet<String>>> = Arc::default();
        let mut running = JoinSet::new();
        // Never slower than the relay expects: it closes streams silent for three of its intervals.
        let interval = match welcome.heartbeat_interval_seconds {
            0 => self.heartbeat,
            seconds => Duration::from_secs(u64::from(seconds)).min(self.heartbeat),
        };
        let mut heartbeat = tokio::time::interval(interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sequence = 0u64;
        let end = loop {
            tokio::select! {
                () = cancel.cancelled() => break Ok(SessionEnd::Shutdown),
                message = inbound.message() => match message {
                    Ok(Some(pb::RelayMessage { body: Some(body) })) => match body {
                        pb::relay_message::Body::Job(job) => {
                            let (context, outbound, in_progress) = (Arc::clone(&self.jobs), outbound.clone(), Arc::clone(&in_progress));
                            lock(&in_progress).insert(job.id.clone());
                            running.spawn(async move {
                                let id = job.id.clone();
                                let result = jobs::execute(&context, job).await;
                                lock(&in_progress).remove(&id);
                                if send(&outbound, pb::agent_message::Body::Result(result)).await.is_err() {
                                    tracing::warn!(job_id = %id, "the link closed before the result was sent; the relay will redeliver the job");
                                }
                            });
                        }
                        pb::relay_message::Body::Ping(ping) => {
                            sequence += 1;
                            send(&outbound, pb::agent_message::Body::Heartbeat(self.heartbeat_message(sequence, ping.nonce, &in_progress))).await?;
                        }
                        pb::relay_message::Body::Cancel(cancel) => {
                            tracing::info!(job_id = %cancel.job_id, "the relay cancelled a job; jobs start at once, so it runs to completion");
                        }
                        pb::relay_message::Body::Welcome(_) => tracing::warn!("the relay sent a second welcome; ignoring it"),
                    },
                    Ok(Some(pb::RelayMessage { body: None })) => tracing::warn!("the relay sent an empty message; ignoring it"),
                    Ok(None) => break Ok(SessionEnd::RelayClosed),
                    Err(status) => break Err(LinkError::Stream(status.message().to_owned())),
                },
                _ = heartbeat.tick() => {
                    sequence += 1;
                    send(&outbound, pb::agent_message::Body::Heartbeat(self.heartbeat_message(sequence, 0, &in_progress))).await?;
                }
                Some(finished) = running.join_next() => {
                    if let Err(e) = finished {
                        tracing::error!(error = %e, "a job task failed");
                    }
                }
            }
        };
        if !running.is_empty() {
            tracing::info!(jobs = running.len(), "waiting for running jobs to report");
            let drained =
                tokio::time::timeout(DRAIN_GRACE, async { while running.join_next().await.is_some() {} }).await;
            if drained.is_err() {
                tracing::warn!("jobs still running after {DRAIN_GRACE:?}; the relay will redeliver them");
            }
        }
        end
    }

    fn heartbeat_message(&self, sequence: u64, ping_nonce: u64, in_progress: &Mutex<HashSet<String>>) -> pb::Heartbeat {
        pb::Heartbeat {
            sequence,
            jobs_in_progress: lock(in_progress).iter().cloned().collect(),
            directories: self
                .health
                .directories()
                .into_iter()
                .map(|(domain, status)| pb::DirectoryHealth {
                    domain: domain.to_string(),
                    bind_ok: status.bind_ok,
                    detail: status.detail,
                })
                .collect(),
            ping_nonce,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The set is only inserted into and removed from; a panicked holder leaves it consistent.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn send(outbound: &mpsc::Sender<pb::AgentMessage>, body: pb::agent_message::Body) -> Result<(), LinkError> {
    outbound
        .send(pb::AgentMessage { body: Some(body) })
        .await
        .map_err(|_| LinkError::Stream("the outbound stream closed".into()))
}

/// An error with its sources, for log lines ("transport error: tls: invalid peer certificate: ...").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
