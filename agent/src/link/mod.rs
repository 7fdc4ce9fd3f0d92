//! The agent's link to the relay: dial out over mutual TLS, open the `AgentLink` stream, carry out
//! the jobs that arrive, renew their leases with every heartbeat and send their results until the
//! relay acknowledges them; on any failure reconnect with back-off.
//!
//! The relay's certificate must chain to the configured CA *and* carry `relay.server_name`.
//!
//! Jobs and their unacknowledged results outlive a stream. The relay leases jobs to the agent's
//! name and this process's instance id, so a job keeps running while the link is down, and the
//! next stream renews its lease and sends its result. A job id that is running is never started a
//! second time (a redelivery under a newer attempt carries the one run on under that attempt). On
//! shutdown the agent starts no new job (it gives each back unstarted), and lets the running ones
//! finish and be acknowledged for up to `relay.shutdown_grace_seconds`, renewing their leases
//! meanwhile.

pub mod backoff;
pub mod dial;
pub mod identity;
pub mod renewal;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pwrelay_proto::agent::v1 as pb;
use pwrelay_proto::agent::v1::agent_link_client::AgentLinkClient;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::health::HealthState;
use crate::jobs::lease::{self, JobLease};
use crate::jobs::{self, Jobs};
use backoff::Backoff;

/// How long to wait for the relay's welcome.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(15);
/// How many recent heartbeats are remembered for counting renewals from when they were sent.
const HEARTBEATS_REMEMBERED: usize = 16;
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
    /// The certificate was renewed: reconnect with it at once.
    Renewed,
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
    /// The agent's certificate and key as the link presents them; renewal swaps them.
    pub identity: Arc<identity::LinkIdentity>,
    /// Jobs at once.
    pub max_jobs_in_flight: u32,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// How long running jobs get to finish and be acknowledged after shutdown starts.
    pub shutdown_grace: Duration,
    /// The served domains, journal and audit log.
    pub jobs: Jobs,
    /// Health state to update.
    pub health: Arc<HealthState>,
}

/// What outlives one stream: the running jobs with their leases, and the results the relay has
/// not acknowledged yet.
#[derive(Debug)]
struct LinkState {
    /// This process's instance id (Hello.instance_id).
    instance_id: String,
    /// Running jobs by id, each with its lease.
    running: Mutex<HashMap<String, Arc<JobLease>>>,
    /// Finished jobs whose result the relay has not acknowledged, by id.
    pending: Mutex<HashMap<String, pb::JobResult>>,
    /// Woken when a job finishes.
    finished: Notify,
    /// Shutdown started: no new job starts.
    draining: AtomicBool,
    /// The relay's bound on an LDAP write (Welcome.write_timeout_ms).
    write_timeout: Mutex<Option<Duration>>,
}

impl LinkState {
    fn new() -> Self {
        Self {
            instance_id: uuid::Uuid::new_v4().to_string(),
            running: Mutex::default(),
            pending: Mutex::default(),
            finished: Notify::new(),
            draining: AtomicBool::new(false),
            write_timeout: Mutex::default(),
        }
    }

    fn is_idle(&self) -> bool {
        // One lock at a time: no lock is ever held while taking another.
        let running = lock(&self.running).is_empty();
        running && lock(&self.pending).is_empty()
    }

    /// The job attempts whose leases a heartbeat renews: running jobs, and finished ones whose
    /// result is not acknowledged (their attempt is unresolved until the relay records it).
    fn held(&self) -> Vec<pb::JobAttempt> {
        let mut held: Vec<pb::JobAttempt> = lock(&self.running)
            .iter()
            .map(|(id, lease)| pb::JobAttempt { job_id: id.clone(), attempt: lease.attempt() })
            .collect();
        held.extend(
            lock(&self.pending).values().map(|r| pb::JobAttempt { job_id: r.job_id.clone(), attempt: r.attempt }),
        );
        held
    }
}

/// Removes a job from the running set when its task ends, however it ends.
struct Running {
    state: Arc<LinkState>,
    id: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        crate::metrics::metrics().jobs_running.dec();
        lock(&self.state.running).remove(&self.id);
        self.state.finished.notify_one();
    }
}

/// Erases a result's secret bytes (a generated password, an initial password's key).
fn forget(mut result: pb::JobResult) {
    if let Some(pb::job_result::Outcome::Success(success)) = &mut result.outcome {
        zeroize::Zeroize::zeroize(&mut success.sealed_secret);
        zeroize::Zeroize::zeroize(&mut success.secret_key);
    }
}

/// One stream's bookkeeping.
struct Stream {
    outbound: mpsc::Sender<pb::AgentMessage>,
    /// Results sent on this stream (job, attempt), so each is sent once per stream.
    sent: HashSet<(String, u32)>,
    /// When recent heartbeats were sent, by sequence.
    heartbeats: VecDeque<(u64, Instant)>,
    sequence: u64,
}

impl LinkClient {
    /// Keeps the link up until `cancel` fires and the running jobs have finished and been
    /// acknowledged (or `shutdown_grace` has passed).
    pub async fn run(self, cancel: CancellationToken) {
        let state = Arc::new(LinkState::new());
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        tokio::spawn(drain_on_shutdown(Arc::clone(&state), cancel, stop.clone(), self.shutdown_grace));
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            let started = tokio::time::Instant::now();
            let result = self.session(&state, &tasks, &stop).await;
            self.health.set_relay_connected(false);
            match result {
                Ok(SessionEnd::Shutdown) => break,
                Ok(SessionEnd::RelayClosed) => tracing::info!("the relay closed the agent link; reconnecting"),
                Ok(SessionEnd::Renewed) => {
                    tracing::info!("reconnecting with the renewed certificate");
                    backoff.reset();
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, "agent link down");
                    self.health.set_relay_error(error.to_string());
                }
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
                () = stop.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        tasks.close();
        let running = lock(&state.running).len();
        let unacknowledged = lock(&state.pending).len();
        if running + unacknowledged > 0 {
            tracing::warn!(
                running,
                unacknowledged,
                "stopping with jobs not reported; the relay redelivers them after their lease, and the journal \
                 answers those that finished"
            );
        }
    }

    async fn connect(&self) -> Result<AgentLinkClient<tonic::transport::Channel>, LinkError> {
        let channel = dial::dial(&self.host, self.port, &self.server_name, self.identity.config()).await?;
        Ok(AgentLinkClient::new(channel))
    }

    async fn session(
        &self,
        state: &Arc<LinkState>,
        tasks: &TaskTracker,
        stop: &CancellationToken,
    ) -> Result<SessionEnd, LinkError> {
        let mut certificate_renewed = self.identity.subscribe();
        certificate_renewed.mark_unchanged();
        let mut client = tokio::select! {
            () = stop.cancelled() => return Ok(SessionEnd::Shutdown),
            client = self.connect() => client?,
        };
        let (outbound, rx) = mpsc::channel::<pb::AgentMessage>(64);
        let hello = pb::Hello {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            domains: self.jobs.directories.keys().map(|d| d.to_string()).collect(),
            max_jobs_in_flight: self.max_jobs_in_flight,
            instance_id: state.instance_id.clone(),
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
            lease_ms = welcome.lease_duration_ms,
            write_timeout_ms = welcome.write_timeout_ms,
            "connected to the relay"
        );
        let write_timeout = Some(Duration::from_millis(welcome.write_timeout_ms)).filter(|d| !d.is_zero());
        if let Some(bound) = write_timeout {
            for directory in self.jobs.directories.values() {
                if directory.config().timeout > bound {
                    tracing::warn!(
                        domain = %directory.domain(),
                        timeout_ms = u64::try_from(directory.config().timeout.as_millis()).unwrap_or(u64::MAX),
                        relay_write_timeout_ms = welcome.write_timeout_ms,
                        "domains.timeout_seconds is longer than the relay's link.write_timeout_seconds; writes are \
                         cut to the relay's bound"
                    );
                }
            }
        }
        *lock(&state.write_timeout) = write_timeout;
        self.health.set_relay_connected(true);

        // Never slower than the relay expects: it closes streams silent for three of its intervals.
        let interval = match welcome.heartbeat_interval_seconds {
            0 => self.heartbeat,
            seconds => Duration::from_secs(u64::from(seconds)).min(self.heartbeat),
        };
        let mut heartbeat = tokio::time::interval(interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stream = Stream { outbound, sent: HashSet::new(), heartbeats: VecDeque::new(), sequence: 0 };
        // Results the previous stream could not deliver go first.
        flush(state, &mut stream).await?;
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(SessionEnd::Shutdown),
                Ok(()) = certificate_renewed.changed() => return Ok(SessionEnd::Renewed),
                () = state.finished.notified() => flush(state, &mut stream).await?,
                message = inbound.message() => match message {
                    Ok(Some(pb::RelayMessage { body: Some(body) })) => match body {
                        pb::relay_message::Body::Job(job) => self.accept(state, tasks, &mut stream, job).await?,
                        pb::relay_message::Body::Ping(ping) => self.heartbeat(state, &mut stream, ping.nonce).await?,
                        pb::relay_message::Body::Leases(update) => renewed(state, &stream, &update),
                        pb::relay_message::Body::Ack(ack) => {
                            let mut pending = lock(&state.pending);
                            if pending.get(&ack.job_id).is_some_and(|r| r.attempt == ack.attempt) {
                                if let Some(result) = pending.remove(&ack.job_id) {
                                    forget(result);
                                }
                            }
                        }
                        pb::relay_message::Body::Cancel(cancel) => {
                            tracing::info!(job_id = %cancel.job_id, "the relay cancelled a job; jobs start at once, so it runs to completion");
                        }
                        pb::relay_message::Body::Welcome(_) => tracing::warn!("the relay sent a second welcome; ignoring it"),
                    },
                    Ok(Some(pb::RelayMessage { body: None })) => tracing::warn!("the relay sent an empty message; ignoring it"),
                    Ok(None) => return Ok(SessionEnd::RelayClosed),
                    Err(status) => return Err(LinkError::Stream(status.message().to_owned())),
                },
                _ = heartbeat.tick() => self.heartbeat(state, &mut stream, 0).await?,
            }
        }
    }

    /// A job from the relay: started, unless it is running or finished already, or the agent is
    /// stopping.
    async fn accept(
        &self,
        state: &Arc<LinkState>,
        tasks: &TaskTracker,
        stream: &mut Stream,
        job: pb::Job,
    ) -> Result<(), LinkError> {
        let duration = jobs::lease_duration(&job);
        if let Some(lease) = lock(&state.running).get(&job.id) {
            // One run per job: a redelivery (a lapsed lease given back to this agent) carries the
            // running one on under its newer attempt.
            tracing::info!(job_id = %job.id, attempt = job.attempt, "job already running here; not started twice");
            lease.regrant(job.attempt, duration);
            return Ok(());
        }
        let answered = {
            let mut pending = lock(&state.pending);
            match pending.get_mut(&job.id) {
                Some(result) => {
                    // Finished, result not yet recorded: the same application answers the new attempt.
                    result.attempt = result.attempt.max(job.attempt);
                    true
                }
                None => false,
            }
        };
        if answered {
            tracing::info!(job_id = %job.id, attempt = job.attempt, "job already done here; sending its result again");
            return flush(state, stream).await;
        }
        if state.draining.load(Ordering::SeqCst) {
            tracing::info!(job_id = %job.id, "stopping: job given back unstarted");
            let failure = lease::not_started("the agent is stopping; nothing was done, the job is given back".into());
            let result = pb::JobResult {
                job_id: job.id,
                outcome: Some(pb::job_result::Outcome::Failure(failure.to_proto())),
                attempt: job.attempt,
            };
            return send(&stream.outbound, pb::agent_message::Body::Result(result)).await;
        }
        let lease = Arc::new(JobLease::granted(job.attempt, duration, *lock(&state.write_timeout)));
        lock(&state.running).insert(job.id.clone(), Arc::clone(&lease));
        let (context, state) = (Arc::clone(&self.jobs), Arc::clone(state));
        crate::metrics::metrics().jobs_running.inc();
        tasks.spawn(async move {
            let running = Running { state: Arc::clone(&state), id: job.id.clone() };
            let result = jobs::execute_leased(&context, job, &lease).await;
            // Kept until the relay acknowledges it, across streams; then the task is no longer running.
            lock(&state.pending).insert(result.job_id.clone(), result);
            drop(running);
        });
        Ok(())
    }

    async fn heartbeat(&self, state: &LinkState, stream: &mut Stream, ping_nonce: u64) -> Result<(), LinkError> {
        stream.sequence += 1;
        if stream.heartbeats.len() == HEARTBEATS_REMEMBERED {
            stream.heartbeats.pop_front();
        }
        stream.heartbeats.push_back((stream.sequence, Instant::now()));
        let in_progress: Vec<String> = lock(&state.running).keys().cloned().collect();
        let unacknowledged = lock(&state.pending).len();
        crate::metrics::metrics().results_unacknowledged.set(i64::try_from(unacknowledged).unwrap_or(i64::MAX));
        let message = pb::Heartbeat {
            sequence: stream.sequence,
            jobs_in_progress: in_progress,
            directories: self
                .health
                .directories()
                .into_iter()
                .map(|(domain, status)| pb::DirectoryHealth {
                    domain: domain.to_string(),
                    bind_ok: status.bind_ok,
                    detail: status.detail,
                    dcs: status
                        .dcs
                        .into_iter()
                        .map(|dc| pb::DcHealth {
                            name: dc.url,
                            bind_ok: dc.ok,
                            detail: dc.detail,
                            latency_ms: dc.latency.map(|l| u32::try_from(l.as_millis()).unwrap_or(u32::MAX)),
                        })
                        .collect(),
                })
                .collect(),
            ping_nonce,
            running: state.held(),
        };
        send(&stream.outbound, pb::agent_message::Body::Heartbeat(message)).await
    }
}

/// Sends every unacknowledged result not yet sent on this stream.
async fn flush(state: &LinkState, stream: &mut Stream) -> Result<(), LinkError> {
    let unsent: Vec<pb::JobResult> = lock(&state.pending)
        .values()
        .filter(|r| !stream.sent.contains(&(r.job_id.clone(), r.attempt)))
        .cloned()
        .collect();
    for result in unsent {
        stream.sent.insert((result.job_id.clone(), result.attempt));
        send(&stream.outbound, pb::agent_message::Body::Result(result)).await?;
    }
    Ok(())
}

/// Applies the relay's answer to a heartbeat's running jobs.
fn renewed(state: &LinkState, stream: &Stream, update: &pb::LeaseUpdate) {
    let duration = Duration::from_millis(update.lease_duration_ms);
    let sent_at =
        stream.heartbeats.iter().find(|(sequence, _)| *sequence == update.heartbeat_sequence).map(|(_, at)| *at);
    let running = lock(&state.running);
    if let Some(sent_at) = sent_at {
        for attempt in &update.renewed {
            if let Some(lease) = running.get(&attempt.job_id) {
                lease.renew(attempt.attempt, sent_at, duration);
            }
        }
    }
    for attempt in &update.lost {
        if let Some(lease) = running.get(&attempt.job_id) {
            tracing::warn!(job_id = %attempt.job_id, attempt = attempt.attempt, "the relay no longer gives this agent the job; no write will start for it");
            lease.lose(attempt.attempt);
        }
    }
}

/// On shutdown: stop taking jobs, then end the link once nothing runs or waits for an
/// acknowledgement, or once `grace` has passed.
async fn drain_on_shutdown(state: Arc<LinkState>, cancel: CancellationToken, stop: CancellationToken, grace: Duration) {
    cancel.cancelled().await;
    state.draining.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + grace;
    if !state.is_idle() {
        tracing::info!(grace_s = grace.as_secs(), "stopping: waiting for running jobs to finish and be acknowledged");
    }
    while !state.is_idle() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !state.is_idle() {
        tracing::warn!("jobs still running or unacknowledged after relay.shutdown_grace_seconds; stopping anyway");
    }
    stop.cancel();
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
