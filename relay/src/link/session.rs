//! One agent stream: hello and authorization, then claiming jobs for the agent, delivering them,
//! renewing the leases of the jobs it runs and recording its results, until the stream ends.
//!
//! The agent is written through to the known agents ([`super::registry`]): at hello, with every
//! heartbeat (its DC health, jobs in flight, and the jobs it finished since the last one), and when
//! the stream ends.
//!
//! The session registers its demand with the replica's [`super::dispatcher`], which leases jobs to
//! it; the session sends them on and keeps the dispatcher told of its free room. Results the agent
//! sent together (what is already buffered on the stream when one arrives) are recorded together
//! ([`crate::store::JobStore::complete_all`]) and each acknowledged only once the store has made it
//! durable.
//!
//! Jobs are leased to the agent's *holder*: its certificate name and the instance id of its
//! process. A stream that ends takes no lease away: the same process renews its leases and resends
//! its unacknowledged results on its next stream, and the jobs of an agent that does not come back
//! are taken over once their lease and the write timeout have passed (see [`crate::store`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pwrelay_proto::agent::v1 as pb;
use pwrelay_shared::domain::DomainName;
use pwrelay_shared::identity::AgentIdentity;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};
use tracing::Instrument as _;

use super::LinkContext;
use super::dispatcher::Demand;
use super::registry::Registration;
use crate::jobs::{
    AccountState, ErrorCode, GenerateMode, JobError, JobId, JobKind, JobState, JobSuccess, LeasedJob, Outcome,
    ResultSecret, SecretEncoding, Timestamp,
};
use crate::store::Completion;
use crate::store::agents::{
    AgentCertificate, AgentReport, AgentStream, DcHealth, DirectoryHealth, JobCounts, MAX_DCS, MAX_DETAIL_CHARS,
    MAX_DIRECTORIES, MAX_VERSION_CHARS, bounded_text,
};

use crate::audit::{Event, Kind};
use pwrelay_shared::secret::{SecretBytes, SecretString};

/// How long an agent has to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Missed heartbeats after which a silent stream is closed.
const MISSED_HEARTBEATS: u32 = 3;
/// Upper bound on what an agent may ask for.
const MAX_JOBS_IN_FLIGHT: u32 = 64;
/// Upper bound on the running jobs one heartbeat may renew.
const MAX_RENEWALS: usize = 4 * MAX_JOBS_IN_FLIGHT as usize;
/// Upper bound on the messages already buffered on the stream that are handled together.
const MAX_BUFFERED: usize = 4 * MAX_JOBS_IN_FLIGHT as usize;

type Outbound = mpsc::Sender<Result<pb::RelayMessage, Status>>;

pub(super) struct Session {
    context: Arc<LinkContext>,
    identity: AgentIdentity,
    certificate: AgentCertificate,
    peer: Option<SocketAddr>,
    outbound: Outbound,
}

/// Why a session ended.
enum End {
    Shutdown,
    AgentClosed,
    Stream(Status),
    Silent,
    OutboundClosed,
    Store(String),
}

/// The authorized, registered part of a session.
struct Active {
    holder: String,
    domains: Vec<DomainName>,
    max_in_flight: usize,
    /// Jobs leased to the holder that have not reported: dispatched on this stream, or named as
    /// running in a heartbeat (leased on an earlier stream of the same process).
    in_flight: HashSet<JobId>,
    /// Kind and acceptance time of the jobs dispatched on this stream, for the metrics.
    dispatched: HashMap<JobId, (JobKind, Timestamp)>,
    registration: Registration,
    /// Where the dispatcher's leases for this stream arrive.
    demand: Demand,
}

impl Active {
    /// Tells the dispatcher how many more jobs this stream can take.
    fn publish_room(&self) {
        self.demand.set_free(self.max_in_flight.saturating_sub(self.in_flight.len()));
    }
}

/// A result as it is recorded: parsed, its secret sealed, its link key placed.
struct Report {
    id: JobId,
    attempt: u32,
    state: JobState,
    error_code: Option<ErrorCode>,
    placed: bool,
}

impl Session {
    pub(super) fn new(
        context: Arc<LinkContext>,
        identity: AgentIdentity,
        certificate: AgentCertificate,
        peer: Option<SocketAddr>,
        outbound: Outbound,
    ) -> Self {
        Self { context, identity, certificate, peer, outbound }
    }

    pub(super) async fn run(self, inbound: Streaming<pb::AgentMessage>, cancel: CancellationToken) {
        let span = tracing::info_span!("agent", agent = %self.identity.name, peer = ?self.peer);
        self.run_inner(inbound, cancel).instrument(span).await;
    }

    async fn run_inner(self, mut inbound: Streaming<pb::AgentMessage>, cancel: CancellationToken) {
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(pb::AgentMessage { body: Some(pb::agent_message::Body::Hello(hello)) }))) => hello,
            Ok(Ok(Some(_))) => {
                return self
                    .refuse("no_hello", Status::invalid_argument("the first message on the agent link must be hello"))
                    .await;
            }
            Ok(Ok(None)) => return,
            Ok(Err(status)) => {
                tracing::info!(error = %status, "agent stream failed before hello");
                return;
            }
            Err(_) => return self.refuse("no_hello", Status::deadline_exceeded("no hello within 10 s")).await,
        };
        let mut active = match self.authorize(&hello).await {
            Ok(active) => active,
            Err(status) => return self.refuse("no_domain_to_serve", status).await,
        };
        let welcome = pb::Welcome {
            relay_version: env!("CARGO_PKG_VERSION").into(),
            authorized_domains: active.domains.iter().map(|d| d.to_string()).collect(),
            heartbeat_interval_seconds: u32::try_from(self.context.heartbeat.as_secs()).unwrap_or(u32::MAX),
            agent_name: self.identity.name.to_string(),
            lease_duration_ms: duration_ms(self.context.claim_policy.lease),
            write_timeout_ms: duration_ms(self.context.claim_policy.write_timeout),
        };
        if self.send(pb::relay_message::Body::Welcome(welcome)).await.is_err() {
            return;
        }
        tracing::info!(domains = ?active.domains, version = %hello.agent_version, max_in_flight = active.max_in_flight, "agent connected");
        self.context.audit.record(
            self.event(Kind::AgentConnected)
                .detail("domains", active.domains.iter().map(ToString::to_string).collect::<Vec<_>>())
                .untrusted("version", &hello.agent_version)
                .detail("holder", active.holder.as_str()),
        );

        let end = self.serve(&mut active, &mut inbound, &cancel).await;
        match &end {
            End::Shutdown => tracing::info!("relay shutting down; closing agent stream"),
            End::AgentClosed => tracing::info!("agent closed its stream"),
            End::Stream(status) => tracing::warn!(error = %status, "agent stream failed"),
            End::Silent => {
                tracing::warn!("agent sent nothing for {MISSED_HEARTBEATS} heartbeat intervals; closing its stream")
            }
            End::OutboundClosed => tracing::info!("agent stream closed"),
            End::Store(error) => tracing::error!(%error, "job store failed; closing agent stream"),
        }
        let reason = match &end {
            End::Shutdown => "shutdown",
            End::AgentClosed => "agent_closed",
            End::Stream(_) => "stream_failed",
            End::Silent => "silent",
            End::OutboundClosed => "outbound_closed",
            End::Store(_) => "store_failed",
        };
        self.context.audit.record(
            self.event(Kind::AgentDisconnected)
                .detail("reason", reason)
                .detail("jobs_in_flight", active.in_flight.len())
                .detail("holder", active.holder.as_str()),
        );
        if !active.in_flight.is_empty() {
            // The agent may still be running them: they stay its own until it renews them on its
            // next stream, reports them, or their lease and the write timeout pass.
            tracing::info!(jobs = active.in_flight.len(), "the agent's unfinished jobs stay leased to it");
        }
        let Active { registration, demand, .. } = active;
        demand.close().await;
        registration.close().await;
    }

    /// An audit event about this session's agent.
    fn event(&self, kind: Kind) -> Event {
        let event = Event::new(kind).agent(&self.identity.name);
        match self.peer {
            Some(peer) => event.address(peer.ip()),
            None => event,
        }
    }

    async fn refuse(&self, reason: &'static str, status: Status) {
        tracing::warn!(error = %status.message(), "agent refused");
        self.context
            .audit
            .record(self.event(Kind::AgentRefused).detail("reason", reason).untrusted("message", status.message()));
        let _gone = self.outbound.send(Err(status)).await;
    }

    async fn authorize(&self, hello: &pb::Hello) -> Result<Active, Status> {
        let mut asked = BTreeSet::new();
        for name in &hello.domains {
            let domain =
                DomainName::parse(name).map_err(|e| Status::invalid_argument(format!("hello.domains: {e}")))?;
            asked.insert(domain);
        }
        let not_in_certificate: Vec<_> = asked.difference(&self.identity.domains).collect();
        if !not_in_certificate.is_empty() {
            tracing::warn!(domains = ?not_in_certificate, "agent asked for domains its certificate does not name; ignoring them");
        }
        let domains: Vec<DomainName> = asked
            .intersection(&self.identity.domains)
            .filter(|d| self.context.relay_domains.contains(*d))
            .cloned()
            .collect();
        if domains.is_empty() {
            return Err(Status::permission_denied(format!(
                "no domain to serve: the agent's configuration names {}, its certificate authorizes {}, this relay serves {}",
                list(&asked),
                list(&self.identity.domains),
                list(&self.context.relay_domains)
            )));
        }
        let max_in_flight = hello.max_jobs_in_flight.clamp(1, MAX_JOBS_IN_FLIGHT) as usize;
        // The same process keeps its holder across streams; anything else gets one of its own.
        let instance = Some(hello.instance_id.as_str())
            .filter(|id| (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
        let holder = format!("{}#{instance}", self.identity.name);
        let now = Timestamp::now();
        let report = AgentReport {
            name: self.identity.name.to_string(),
            domains: domains.clone(),
            version: bounded_text(&hello.agent_version, MAX_VERSION_CHARS),
            certificate: self.certificate.clone(),
            stream: AgentStream {
                replica: self.context.registry.replica().to_owned(),
                id: uuid::Uuid::new_v4().to_string(),
                peer: self.peer.map(|p| p.to_string()),
                opened: now,
            },
            seen: now,
            directories: None,
            jobs_in_flight: 0,
            finished: JobCounts::default(),
        };
        let registration = self.context.registry.register(report).await;
        let demand = self.context.dispatcher.register(holder.clone(), self.identity.name.to_string(), domains.clone());
        Ok(Active {
            holder,
            domains,
            max_in_flight,
            in_flight: HashSet::new(),
            dispatched: HashMap::new(),
            registration,
            demand,
        })
    }

    async fn serve(
        &self,
        active: &mut Active,
        inbound: &mut Streaming<pb::AgentMessage>,
        cancel: &CancellationToken,
    ) -> End {
        let silence_limit = self.context.heartbeat * MISSED_HEARTBEATS;
        let silence = tokio::time::sleep(silence_limit);
        tokio::pin!(silence);
        active.publish_room();
        loop {
            tokio::select! {
                () = cancel.cancelled() => return End::Shutdown,
                message = inbound.message() => {
                    silence.as_mut().reset(Instant::now() + silence_limit);
                    let first = match message {
                        Ok(Some(message)) => message,
                        Ok(None) => return End::AgentClosed,
                        Err(status) => return End::Stream(status),
                    };
                    // What the agent sent with it is handled with it, so that its results are
                    // recorded together; an end of the stream behind them comes after them.
                    let mut messages = vec![first];
                    let mut end = None;
                    while end.is_none() && messages.len() < MAX_BUFFERED {
                        match ready_now(inbound.message()) {
                            None => break,
                            Some(Ok(Some(message))) => messages.push(message),
                            Some(Ok(None)) => end = Some(End::AgentClosed),
                            Some(Err(status)) => end = Some(End::Stream(status)),
                        }
                    }
                    if let Err(end) = self.handle_all(active, messages).await {
                        return end;
                    }
                    if let Some(end) = end {
                        return end;
                    }
                }
                Some(lease) = active.demand.next() => {
                    let mut leased = vec![lease];
                    while let Some(lease) = active.demand.try_next() {
                        leased.push(lease);
                    }
                    if let Err(end) = self.deliver(active, leased).await {
                        return end;
                    }
                }
                () = &mut silence => return End::Silent,
            }
            active.publish_room();
        }
    }

    /// Handles messages in order; runs of results are recorded together.
    async fn handle_all(&self, active: &mut Active, messages: Vec<pb::AgentMessage>) -> Result<(), End> {
        use pb::agent_message::Body;
        let mut results = Vec::new();
        for message in messages {
            match message.body {
                Some(Body::Result(result)) => results.push(result),
                body => {
                    self.record(active, std::mem::take(&mut results)).await?;
                    self.handle(active, body).await?;
                }
            }
        }
        self.record(active, results).await
    }

    async fn handle(&self, active: &mut Active, body: Option<pb::agent_message::Body>) -> Result<(), End> {
        use pb::agent_message::Body;
        match body {
            Some(Body::Result(result)) => self.record(active, vec![result]).await?,
            Some(Body::Heartbeat(mut heartbeat)) => {
                let directories = directory_health(std::mem::take(&mut heartbeat.directories), &active.domains);
                self.renew(active, heartbeat).await?;
                active.registration.heartbeat(directories, active.in_flight.len()).await;
            }
            Some(Body::Hello(_)) => tracing::warn!("agent sent a second hello; ignoring it"),
            None => tracing::warn!("agent sent an empty message; ignoring it"),
        }
        Ok(())
    }

    /// Renews the leases of the jobs a heartbeat names as running and tells the agent which it
    /// still holds.
    async fn renew(&self, active: &mut Active, heartbeat: pb::Heartbeat) -> Result<(), End> {
        if heartbeat.running.is_empty() {
            return Ok(());
        }
        let named: Vec<(JobId, u32)> = heartbeat
            .running
            .iter()
            .take(MAX_RENEWALS)
            .filter_map(|r| Some((r.job_id.parse::<JobId>().ok()?, r.attempt)))
            .collect();
        let lease = self.context.claim_policy.lease;
        let renewed = self
            .context
            .store
            .renew(&active.holder, named.clone(), lease)
            .await
            .map_err(|e| End::Store(e.to_string()))?;
        let lost: Vec<_> = named.iter().filter(|n| !renewed.contains(n)).copied().collect();
        for (id, _) in &renewed {
            active.in_flight.insert(*id);
        }
        for (id, attempt) in &lost {
            active.in_flight.remove(id);
            tracing::warn!(job_id = %id, attempt, "the agent runs a job whose lease it no longer holds; told to abandon it");
        }
        let attempts = |list: &[(JobId, u32)]| {
            list.iter().map(|(id, attempt)| pb::JobAttempt { job_id: id.to_string(), attempt: *attempt }).collect()
        };
        let update = pb::LeaseUpdate {
            heartbeat_sequence: heartbeat.sequence,
            renewed: attempts(&renewed),
            lost: attempts(&lost),
            lease_duration_ms: duration_ms(lease),
        };
        self.send(pb::relay_message::Body::Leases(update)).await
    }

    /// Records results, fenced by holder and attempt, in one store call, then acknowledges each.
    async fn record(&self, active: &mut Active, results: Vec<pb::JobResult>) -> Result<(), End> {
        if results.is_empty() {
            return Ok(());
        }
        let mut reports = Vec::with_capacity(results.len());
        let mut outcomes = Vec::with_capacity(results.len());
        for result in results {
            if let Some((report, outcome)) = self.report(result) {
                outcomes.push((report.id, report.attempt, outcome));
                reports.push(report);
            }
        }
        if reports.is_empty() {
            return Ok(());
        }
        // Fenced by holder and attempt: only the current attempt of this agent changes the job.
        let completions = self.context.store.complete_all(&active.holder, outcomes).await;
        for (report, completion) in reports.iter().zip(&completions) {
            if report.placed && !matches!(completion, Ok(Completion::Finished | Completion::Duplicate)) {
                drop(self.context.link_keys.take(report.id, report.attempt));
            }
        }
        let mut failed = None;
        for (report, completion) in reports.into_iter().zip(completions) {
            let Report { id, attempt, state, error_code, .. } = report;
            match completion {
                Ok(Completion::Finished) => {
                    active.in_flight.remove(&id);
                    active.registration.finished(state == JobState::Succeeded);
                    tracing::info!(job_id = %id, attempt, state = state.as_str(), "job finished");
                    self.finished(active, id, state, error_code).await;
                }
                Ok(Completion::Requeued) => {
                    active.in_flight.remove(&id);
                    active.dispatched.remove(&id);
                    tracing::info!(job_id = %id, attempt, "job failed with a retryable error or was given back; queued again");
                    self.context.events.job_queued();
                }
                Ok(Completion::Duplicate) => {
                    active.in_flight.remove(&id);
                    active.dispatched.remove(&id);
                    tracing::info!(job_id = %id, attempt, "result sent again; already recorded");
                }
                Ok(Completion::Stale) => {
                    active.in_flight.remove(&id);
                    active.dispatched.remove(&id);
                    tracing::warn!(
                        job_id = %id,
                        attempt,
                        state = state.as_str(),
                        "result of an attempt that no longer holds the job; it changed nothing"
                    );
                    self.context.audit.record(
                        self.event(Kind::StaleResult)
                            .job(id)
                            .detail("attempt", attempt)
                            .detail("state", state.as_str()),
                    );
                }
                Ok(Completion::Unknown) => tracing::warn!(job_id = %id, "result for an unknown job; ignored"),
                // Not acknowledged: the agent keeps the result and sends it again.
                Err(e) => {
                    failed.get_or_insert(e);
                    continue;
                }
            }
            self.send(pb::relay_message::Body::Ack(pb::ResultAck { job_id: id.to_string(), attempt })).await?;
        }
        self.context.events.job_changed();
        match failed {
            Some(e) => Err(End::Store(e.to_string())),
            None => Ok(()),
        }
    }

    /// A result as the store takes it, with its link key placed; `None` for an id that is not one.
    fn report(&self, result: pb::JobResult) -> Option<(Report, Outcome)> {
        let Ok(id) = result.job_id.parse::<JobId>() else {
            tracing::warn!(job_id = %printable(&result.job_id), "result for a job id that is not one; ignoring it");
            return None;
        };
        let attempt = result.attempt;
        let mut link_key = None;
        let outcome = match result.outcome {
            Some(pb::job_result::Outcome::Success(s)) => {
                let (outcome, key) = self.success(id, s);
                link_key = key;
                outcome
            }
            Some(pb::job_result::Outcome::Failure(f)) => Outcome::Failed {
                error: JobError {
                    code: ErrorCode::from_proto(f.code()),
                    message: f.message,
                    directory_code: Some(f.directory_code).filter(|c| !c.is_empty()),
                },
                retryable: f.retryable,
            },
            None => Outcome::Failed {
                error: JobError {
                    code: ErrorCode::Unknown,
                    message: "the agent sent a result without an outcome".into(),
                    directory_code: None,
                },
                retryable: false,
            },
        };
        let (state, error_code) = match &outcome {
            Outcome::Succeeded(..) => (JobState::Succeeded, None),
            Outcome::Failed { error, .. } => (JobState::Failed, Some(error.code)),
        };
        // A link key is in place before the job can be seen as final, and taken back unless this
        // result is the one that finished it.
        let placed = link_key.map(|key| self.context.link_keys.put(id, attempt, key)).is_some();
        Some((Report { id, attempt, state, error_code, placed }, outcome))
    }

    /// Sends the jobs the dispatcher leased to this stream.
    async fn deliver(&self, active: &mut Active, leased: Vec<LeasedJob>) -> Result<(), End> {
        let count = leased.len();
        for lease in &leased {
            active.in_flight.insert(lease.job.job_id);
        }
        active.publish_room();
        active.demand.taken(count);
        let mut leased = leased.into_iter();
        while let Some(lease) = leased.next() {
            let (id, kind, created) = (lease.job.job_id, lease.job.kind, lease.job.created_at);
            if lease.job.attempts <= 1 {
                self.context.metrics.job_dispatched(kind, created);
            }
            active.dispatched.insert(id, (kind, created));
            match self.to_proto(lease) {
                Ok(job) => {
                    let attempt = job.attempt;
                    tracing::info!(job_id = %id, attempt, "job dispatched");
                    if let Err(end) = self.send(pb::relay_message::Body::Job(job)).await {
                        // The stream is gone: neither this job nor the rest reached the agent.
                        active.demand.give_back(id, attempt).await;
                        for rest in leased {
                            active.demand.give_back(rest.job.job_id, rest.job.attempts).await;
                        }
                        return Err(end);
                    }
                }
                Err((attempt, error)) => {
                    tracing::error!(job_id = %id, error = %error.message, "job cannot be delivered");
                    let code = error.code;
                    let outcome = Outcome::Failed { error, retryable: false };
                    let completion = self
                        .context
                        .store
                        .complete(id, &active.holder, attempt, outcome)
                        .await
                        .map_err(|e| End::Store(e.to_string()))?;
                    active.in_flight.remove(&id);
                    if completion == Completion::Finished {
                        self.finished(active, id, JobState::Failed, Some(code)).await;
                    }
                }
            }
        }
        self.context.events.job_changed();
        Ok(())
    }

    /// Counts a job this stream finished. One leased on an earlier stream is looked up.
    async fn finished(&self, active: &mut Active, id: JobId, state: JobState, code: Option<ErrorCode>) {
        let meter = match active.dispatched.remove(&id) {
            Some(meter) => Some(meter),
            None => self.context.store.job(id).await.ok().flatten().map(|job| (job.kind, job.created_at)),
        };
        if let Some((kind, created)) = meter {
            self.context.metrics.job_finished(kind, state, code, created);
        }
    }

    /// A success as the store keeps it. A returned plaintext password is sealed with the store key
    /// at once; a sealed box is kept as the agent made it.
    fn success(&self, id: JobId, mut s: pb::JobSuccess) -> (Outcome, Option<SecretBytes>) {
        let mut link_key = None;
        let encoding = s.secret_encoding();
        let mut bytes = std::mem::take(&mut s.sealed_secret);
        let returned = match encoding {
            pb::SecretEncoding::SealedBox if !bytes.is_empty() => {
                Some(ResultSecret { encoding: SecretEncoding::SealedBox, bytes: std::mem::take(&mut bytes) })
            }
            pb::SecretEncoding::Aes256Gcm if !bytes.is_empty() && s.secret_key.len() == 32 => {
                // The ciphertext is kept (sealed once more with the store key); the key goes to the
                // delivery in memory and never reaches the store.
                match self.context.sealer.seal_bytes(&id.to_string(), &bytes) {
                    Ok(sealed) => {
                        link_key = Some(SecretBytes::new(std::mem::take(&mut s.secret_key)));
                        Some(ResultSecret { encoding: SecretEncoding::Aes256Gcm, bytes: sealed })
                    }
                    Err(_) => {
                        tracing::error!(job_id = %id, "the encrypted initial password could not be kept; it is lost");
                        None
                    }
                }
            }
            pb::SecretEncoding::Plaintext if !bytes.is_empty() => {
                let text = String::from_utf8(std::mem::take(&mut bytes)).ok().map(SecretString::new);
                match text.map(|t| self.context.sealer.seal(&id.to_string(), &t)) {
                    Some(Ok(sealed)) => Some(ResultSecret { encoding: SecretEncoding::Plaintext, bytes: sealed }),
                    _ => {
                        tracing::error!(job_id = %id, "the generated password could not be kept; it is lost");
                        None
                    }
                }
            }
            _ => None,
        };
        zeroize::Zeroize::zeroize(&mut bytes);
        zeroize::Zeroize::zeroize(&mut s.secret_key);
        let state = s.account_state.map(|a| AccountState {
            locked_out: a.locked_out,
            must_change_password: a.must_change_password,
            disabled: a.disabled,
            password_never_expires: a.password_never_expires,
        });
        let outcome = Outcome::Succeeded(
            JobSuccess {
                account_dn: s.account_dn,
                verified: s.verified,
                pwd_last_set: s.pwd_last_set,
                // Kept only for verifications (the store knows the job's kind).
                password_matches: Some(s.password_matches),
                account_state: state,
                notes: s.notes,
            },
            returned,
        );
        (outcome, link_key)
    }

    /// The job as the agent gets it, or the attempt and the error that fails it.
    fn to_proto(&self, lease: LeasedJob) -> Result<pb::Job, (u32, JobError)> {
        let job = lease.job;
        let secret = match &lease.sealed_secret {
            Some(sealed) => {
                let password = self.context.sealer.open(&job.job_id.to_string(), sealed).map_err(|e| {
                    (
                        job.attempts,
                        JobError { code: ErrorCode::InvalidJob, message: e.to_string(), directory_code: None },
                    )
                })?;
                // The proto message owns a plain String; it lives only until the frame is encoded.
                Some(pb::SecretMaterial {
                    material: Some(pb::secret_material::Material::Password(password.expose_secret().to_owned())),
                })
            }
            None => None,
        };
        let secret = secret.or_else(|| {
            lease.recipient_key.clone().map(|key| pb::SecretMaterial {
                material: Some(pb::secret_material::Material::RecipientPublicKey(key)),
            })
        });
        Ok(pb::Job {
            id: job.job_id.to_string(),
            kind: job.kind.to_proto() as i32,
            domain: job.domain.to_string(),
            target: Some(job.target.to_proto()),
            secret,
            options: Some(pb::JobOptions {
                must_change: job.options.must_change,
                unlock: job.options.unlock,
                enforce_history: job.options.enforce_history,
            }),
            lease_deadline_unix_ms: lease.lease_deadline_unix_ms,
            lease_duration_ms: duration_ms(lease.lease_duration),
            earlier_attempt_unresolved: lease.earlier_attempt_unresolved,
            attempt: job.attempts,
            generate: job.generate.map(|g| pb::GenerateOptions {
                length: g.length,
                mode: match g.mode {
                    GenerateMode::Random => pb::GenerateMode::Random,
                    GenerateMode::Friendly => pb::GenerateMode::Friendly,
                    GenerateMode::Passphrase => pb::GenerateMode::Passphrase,
                } as i32,
            }),
        })
    }

    async fn send(&self, body: pb::relay_message::Body) -> Result<(), End> {
        self.outbound.send(Ok(pb::RelayMessage { body: Some(body) })).await.map_err(|_| End::OutboundClosed)
    }
}

/// A heartbeat's DC health as it is kept: only the stream's domains, bounded in number and length.
fn directory_health(reported: Vec<pb::DirectoryHealth>, served: &[DomainName]) -> Vec<DirectoryHealth> {
    reported
        .into_iter()
        .filter_map(|d| {
            let domain = DomainName::parse(&d.domain).ok().filter(|domain| served.contains(domain))?;
            let dcs = d
                .dcs
                .into_iter()
                .take(MAX_DCS)
                .map(|dc| DcHealth {
                    name: bounded_text(&dc.name, MAX_DETAIL_CHARS),
                    bind_ok: dc.bind_ok,
                    detail: bounded_text(&dc.detail, MAX_DETAIL_CHARS),
                    latency_ms: dc.latency_ms,
                })
                .collect();
            Some(DirectoryHealth { domain, bind_ok: d.bind_ok, detail: bounded_text(&d.detail, MAX_DETAIL_CHARS), dcs })
        })
        .take(MAX_DIRECTORIES)
        .collect()
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// An id from the network as it may appear in a log line: printable and short.
fn printable(text: &str) -> String {
    text.chars().take(40).map(|c| if c.is_control() { '?' } else { c }).collect()
}

fn list<'a>(domains: impl IntoIterator<Item = &'a DomainName>) -> String {
    let names: Vec<&str> = domains.into_iter().map(DomainName::as_str).collect();
    if names.is_empty() { "no domain".into() } else { names.join(", ") }
}

/// The output of `future` if it is ready at once, without waiting. `Streaming::message` keeps no
/// state in its future, so one dropped unready loses nothing.
fn ready_now<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}
