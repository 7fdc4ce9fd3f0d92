//! The relay's audit trail: typed events with stable ids, one sink per process.
//!
//! Every state change the relay makes or refuses is an [`Event`] of a [`Kind`]. The sink
//! ([`Audit`], held by the `App` and handed to the API, the agent link and the workers) writes each
//! event at once as a JSON line to `[audit] file` and/or stdout, and queues it for the store
//! ([`crate::store::AuditStore`]), where `GET /v1/audit` and `pwrelay audit list` read it. The
//! [`AuditWriter`] (a supervised worker) stores the queue in batches, and the sweeper deletes what
//! is older than `audit.retention_days`.
//!
//! Refusals of callers nobody has authenticated (a wrong token, a refused TLS handshake, a link
//! page asked for) are always written as lines, but only `audit.unauthenticated_per_minute` of
//! each kind per minute reach the store; the rest are counted in one `audit.suppressed` (5901)
//! event per kind and minute, so a flood cannot grow the store without bound. When the queue is
//! full, such refusals are counted the same way; every other event waits in memory for the writer.
//!
//! No event holds a secret: no password, token, link key or link id (a link is named by its
//! job), and text from the network goes in only through [`Event::untrusted`].
//!
//! # Adding an event
//!
//! One line in the [`audit_events!`] table below (a doc comment, the variant, the next free id of
//! its group, the dotted name, and `Authenticated` or `Unauthenticated`), a row in the table of
//! `docs/audit-events.md` (`tests/audit_events.rs` holds the two together), and at the place it
//! happens: `audit.record(Event::new(Kind::X).client(...).domain(...).detail("k", v))`.
//! The groups: 50xx jobs, 51xx API clients and webhooks, 52xx API access, 53xx agents and the
//! agent link, 54xx new hires, 59xx the audit trail itself. The agent's events are 41xx
//! (`agent/src/audit.rs`).
//!
//! A `tracing` line on the `pwrelay::audit` target is not part of the trail (nothing reads that
//! target any more): convert it into a row here, e.g. `tracing::info!(target: "pwrelay::audit",
//! event = "agent.enrolled", agent = %name)` becomes `AgentEnrolled = 5306, "agent.enrolled",
//! Authenticated;` and `audit.record(Event::new(Kind::AgentEnrolled).agent(&name))`.

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pwrelay_shared::domain::DomainName;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::jobs::{JobId, JobKind, Timestamp};
use crate::store::{AuditStore, StoreError};
use crate::untrusted::Untrusted;

/// Who may cause an event: an unauthenticated caller's refusals are rate-limited in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Someone the relay knows (an API client, an agent certificate, an operator, the relay itself).
    Authenticated,
    /// Anyone who can reach a listener.
    Unauthenticated,
}

/// The table of events: `doc, Variant = id, "name", Caller;`.
macro_rules! audit_events {
    ($( $(#[doc = $doc:literal])+ $variant:ident = $id:literal, $name:literal, $caller:ident; )+) => {
        /// What happened: every relay audit event, with its stable id and name.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kind {
            $( $(#[doc = $doc])+ $variant, )+
        }

        impl Kind {
            /// Every kind, in id order.
            pub const ALL: &'static [Kind] = &[ $(Kind::$variant,)+ ];

            /// The stable numeric id.
            pub const fn id(self) -> u16 {
                match self { $(Kind::$variant => $id,)+ }
            }

            /// The stable dotted name.
            pub const fn name(self) -> &'static str {
                match self { $(Kind::$variant => $name,)+ }
            }

            /// Who may cause it.
            pub const fn caller(self) -> Caller {
                match self { $(Kind::$variant => Caller::$caller,)+ }
            }

            /// What it means (its doc comment).
            pub fn description(self) -> &'static str {
                match self { $(Kind::$variant => concat!($($doc),+).trim_ascii(),)+ }
            }
        }
    };
}

audit_events! {
    /// A job was accepted (`job_kind`: a rotation, generation, verification, unlock, reconciliation batch and its accounts)
    JobCreated = 5001, "job.created", Authenticated;
    /// A queued job was cancelled by its client
    JobCancelled = 5002, "job.cancelled", Authenticated;
    /// A generated password was handed out to its client, once, and erased
    SecretTaken = 5003, "job.secret_taken", Authenticated;
    /// Jobs no agent finished in time failed with `expired` (`count`)
    JobsExpired = 5004, "job.expired", Authenticated;
    /// An API client was added (`operations`, `domains`: its scopes)
    ClientAdded = 5101, "client.added", Authenticated;
    /// An API client was revoked; its token stopped working
    ClientRevoked = 5102, "client.revoked", Authenticated;
    /// An API client's token was replaced; the old one stopped working
    ClientTokenRotated = 5103, "client.token_rotated", Authenticated;
    /// An API client's scopes were replaced (`operations`, `domains`)
    ClientScopesChanged = 5104, "client.scopes_changed", Authenticated;
    /// A client's webhook was set or changed (`url_host`, `events`, `secret_rotated`)
    WebhookSet = 5110, "webhook.set", Authenticated;
    /// A client's webhook was removed
    WebhookRemoved = 5111, "webhook.removed", Authenticated;
    /// An API request with a missing, malformed or unknown token was refused (`reason`)
    TokenRefused = 5201, "api.token_refused", Unauthenticated;
    /// A TLS handshake on the API or link listener was refused or timed out (`listener`, `reason`)
    HandshakeRefused = 5202, "tls.handshake_refused", Unauthenticated;
    /// A client logged in to the status page
    StatusLogin = 5203, "status.login", Authenticated;
    /// A status page login was refused (a wrong token, or one without the `status` scope)
    StatusLoginRefused = 5204, "status.login_refused", Unauthenticated;
    /// An agent's stream was authorized (`domains`, `version`, `stream`)
    AgentConnected = 5301, "agent.connected", Authenticated;
    /// An agent's stream was refused (`reason`: no_certificate, revoked, no_identity, unreadable_certificate, no hello, no domain to serve)
    AgentRefused = 5302, "agent.refused", Unauthenticated;
    /// An agent's stream ended (`reason`: agent_closed, silent, stream_failed, shutdown, store_failed; `jobs_in_flight`)
    AgentDisconnected = 5303, "agent.disconnected", Authenticated;
    /// An operator removed a known agent from the store (`pwrelay agents forget`)
    AgentForgotten = 5304, "agent.forgotten", Authenticated;
    /// A result from an attempt that no longer holds its job changed nothing (`attempt`, `state`)
    StaleResult = 5305, "link.stale_result", Authenticated;
    /// An agent enrolled with a one-time token and got its first certificate (`domains`, `token`: the token's id, `expires_unix`)
    AgentEnrolled = 5306, "agent.enrolled", Authenticated;
    /// An enrollment was refused (`reason`: not_configured, rate_limited, malformed_token, wrong_ca, unknown_token, forged_token, used_token, expired_token, bad_request, widening, internal)
    EnrollRefused = 5307, "agent.enroll_refused", Unauthenticated;
    /// An operator made a one-time enrollment token (`domains`, `token`: its id, `ttl_seconds`)
    EnrollTokenCreated = 5308, "agent.enroll_token_created", Authenticated;
    /// An operator revoked an agent (`pwrelay agents revoke`; `leases_released`)
    AgentRevoked = 5309, "agent.revoked", Authenticated;
    /// An agent renewed its certificate over the link with a fresh key (`expires_unix`)
    CertificateRenewed = 5310, "agent.certificate_renewed", Authenticated;
    /// A certificate renewal was refused (`message`)
    RenewRefused = 5311, "agent.renew_refused", Unauthenticated;
    /// The open stream of an agent revoked while connected was closed
    RevokedStreamClosed = 5312, "agent.stream_closed_revoked", Authenticated;
    /// A Lifecycle Workflows callout was accepted and stored (`task_processing_result`, `tenant`)
    CalloutAccepted = 5401, "lifecycle.callout_accepted", Authenticated;
    /// A Lifecycle Workflows callout was refused before it was stored (`reason`)
    CalloutRefused = 5402, "lifecycle.callout_refused", Unauthenticated;
    /// A new hire's initial password job was queued (`task_processing_result`, `account`)
    NewHireJobCreated = 5403, "lifecycle.job_created", Authenticated;
    /// A new hire's link and username were sent (`sent`: the channels)
    NewHireDelivered = 5404, "lifecycle.delivered", Authenticated;
    /// The workflow was resumed through Graph (`status`)
    WorkflowResumed = 5405, "lifecycle.resumed", Authenticated;
    /// Resuming the workflow failed for good; the task must be finished in Entra by hand
    WorkflowResumeFailed = 5406, "lifecycle.resume_failed", Authenticated;
    /// A new-hire request failed; the workflow is told (`reason`)
    NewHireFailed = 5407, "lifecycle.failed", Authenticated;
    /// The replica holding a new hire's link key died first; a fresh password is set once
    NewHireReissued = 5408, "lifecycle.reissued", Authenticated;
    /// Unclaimed links expired and their ciphertexts were erased (`count`)
    LinksExpired = 5409, "lifecycle.links_expired", Authenticated;
    /// A one-time link page was opened (`state`: active, claimed, expired, unknown); it consumes nothing
    LinkViewed = 5410, "lifecycle.link_viewed", Unauthenticated;
    /// A one-time link was claimed with the proof of its key: the ciphertext was handed out and erased
    LinkClaimed = 5411, "lifecycle.link_claimed", Authenticated;
    /// A claim of a one-time link was refused (`reason`: wrong_proof, already_used, expired, unknown)
    LinkClaimRefused = 5412, "lifecycle.link_claim_refused", Unauthenticated;
    /// Events of one kind beyond what the store keeps per minute, or past a full queue, were written as lines only (`of_event_id`, `count`, `reason`)
    Suppressed = 5901, "audit.suppressed", Authenticated;
}

impl Kind {
    /// The kind with this id.
    pub fn from_id(id: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.id() == id)
    }

    /// The kind with this name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.name() == name)
    }
}

/// One event, built where it happens.
#[derive(Clone, Debug)]
#[must_use = "an event does nothing until it is recorded"]
pub struct Event {
    kind: Kind,
    client: Option<String>,
    agent: Option<String>,
    domain: Option<String>,
    job_id: Option<String>,
    address: Option<String>,
    details: BTreeMap<&'static str, serde_json::Value>,
}

impl Event {
    /// An event of `kind` with no fields yet.
    pub fn new(kind: Kind) -> Self {
        Self { kind, client: None, agent: None, domain: None, job_id: None, address: None, details: BTreeMap::new() }
    }

    /// The API client it concerns (a name from the store or the operator's command line).
    pub fn client(mut self, name: &str) -> Self {
        self.client = Some(Untrusted(name).to_string());
        self
    }

    /// The agent it concerns (the name from its certificate).
    pub fn agent(mut self, name: impl std::fmt::Display) -> Self {
        self.agent = Some(Untrusted(&name.to_string()).to_string());
        self
    }

    /// The AD domain it concerns.
    pub fn domain(mut self, domain: &DomainName) -> Self {
        self.domain = Some(domain.to_string());
        self
    }

    /// The job it concerns.
    pub fn job(mut self, id: JobId) -> Self {
        self.job_id = Some(id.to_string());
        self
    }

    /// The job it concerns, with its kind.
    pub fn job_of_kind(self, id: JobId, kind: JobKind) -> Self {
        self.job(id).detail("job_kind", kind.as_str())
    }

    /// The address the request or connection came from.
    pub fn address(mut self, address: IpAddr) -> Self {
        self.address = Some(address.to_string());
        self
    }

    /// A detail of ours: a code, a count, a list of names, a flag. Never a secret, never text
    /// from the network (that goes through [`Self::untrusted`]).
    pub fn detail(mut self, key: &'static str, value: impl Into<serde_json::Value>) -> Self {
        self.details.insert(key, value.into());
        self
    }

    /// Text from the network, escaped and bounded ([`Untrusted`]).
    pub fn untrusted(self, key: &'static str, text: &str) -> Self {
        self.detail(key, Untrusted(text).to_string())
    }

    /// Its kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }
}

/// An event as it is written and stored, and as `GET /v1/audit` returns it.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuditRecord {
    /// Its position in the store (the listing's cursor); not part of a JSON line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    /// When it happened (RFC 3339, UTC).
    pub time: Timestamp,
    /// The stable event id (the table in docs/audit-events.md).
    pub event_id: u16,
    /// The stable event name.
    pub event: String,
    /// The relay replica that recorded it, or `cli` for an operator's command.
    pub replica: String,
    /// The API client it concerns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The agent it concerns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The AD domain it concerns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The job it concerns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// The address of the caller.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// What else the event says (see its kind).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

impl AuditRecord {
    fn of(event: Event, replica: &str, time: Timestamp) -> Self {
        let details = serde_json::Value::Object(event.details.into_iter().map(|(k, v)| (k.to_owned(), v)).collect());
        Self {
            seq: None,
            time,
            event_id: event.kind.id(),
            event: event.kind.name().to_owned(),
            replica: replica.to_owned(),
            client: event.client,
            agent: event.agent,
            domain: event.domain,
            job_id: event.job_id,
            address: event.address,
            details,
        }
    }
}

/// `[audit]`: where events go besides the store, and how long the store keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Append JSON lines to this file (created with mode 0600).
    pub file: Option<PathBuf>,
    /// Write JSON lines to stdout (the relay's logs go to stderr).
    pub stdout: bool,
    /// How long the store keeps events.
    pub retention: Duration,
    /// Events of one unauthenticated kind the store keeps per minute and replica; the rest are counted.
    pub unauthenticated_per_minute: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            file: None,
            stdout: false,
            retention: Duration::from_secs(365 * 86_400),
            unauthenticated_per_minute: DEFAULT_UNAUTHENTICATED_PER_MINUTE,
        }
    }
}

/// `audit.unauthenticated_per_minute` unless set.
pub const DEFAULT_UNAUTHENTICATED_PER_MINUTE: u32 = 20;
/// `audit.retention_days` unless set.
pub const DEFAULT_RETENTION_DAYS: u64 = 365;

/// The window of the per-kind limit.
const WINDOW: Duration = Duration::from_secs(60);
/// Events queued for the store at most; more are counted as suppressed.
const QUEUE: usize = 8192;
/// Events stored in one transaction at most.
const BATCH: usize = 256;
/// At shutdown, the writer stores what comes in until the queue is quiet this long...
const DRAIN_QUIET: Duration = Duration::from_millis(300);
/// ...or this has passed.
const DRAIN: Duration = Duration::from_secs(3);

/// Why the audit sink could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// `audit.file` cannot be opened for appending.
    #[error("audit.file {path}: {source}; create its directory and let the relay's user write it")]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Per kind in the current window: stored, and counted only.
#[derive(Debug, Default)]
struct Gate {
    window_start: i64,
    counts: HashMap<Kind, (u32, u64)>,
    queue_full: u64,
}

/// The audit sink: JSON lines at once, the store through the [`AuditWriter`].
pub struct Audit {
    lines: Mutex<Vec<Box<dyn Write + Send>>>,
    line_sinks: usize,
    queue: mpsc::Sender<AuditRecord>,
    /// Authenticated events that found the queue full: never dropped, stored after the queue.
    overflow: Mutex<Vec<AuditRecord>>,
    gate: Mutex<Gate>,
    per_minute: u32,
    window: Duration,
    replica: String,
    written_errors: AtomicU64,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("line_sinks", &self.line_sinks)
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

impl Audit {
    /// The sink of `config`, recording as `replica`, and the writer that stores its events.
    pub fn open(
        config: &AuditConfig,
        store: Arc<dyn AuditStore>,
        replica: &str,
    ) -> Result<(Arc<Self>, AuditWriter), AuditError> {
        let mut lines: Vec<Box<dyn Write + Send>> = Vec::new();
        if let Some(path) = &config.file {
            let mut options = OpenOptions::new();
            options.create(true).append(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let file = options.open(path).map_err(|source| AuditError::File { path: path.clone(), source })?;
            lines.push(Box::new(file));
        }
        if config.stdout {
            lines.push(Box::new(std::io::stdout()));
        }
        let (queue, receiver) = mpsc::channel(QUEUE);
        let audit = Arc::new(Self {
            line_sinks: lines.len(),
            lines: Mutex::new(lines),
            queue,
            overflow: Mutex::new(Vec::new()),
            gate: Mutex::new(Gate { window_start: Timestamp::now().0, ..Gate::default() }),
            per_minute: config.unauthenticated_per_minute,
            window: WINDOW,
            replica: replica.to_owned(),
            written_errors: AtomicU64::new(0),
        });
        let writer =
            AuditWriter { audit: Arc::clone(&audit), store, receiver: Arc::new(tokio::sync::Mutex::new(receiver)) };
        Ok((audit, writer))
    }

    /// Records `event`: its JSON line now, the store soon (unless an unauthenticated kind is over
    /// its limit this minute, or the queue is full: then it is counted in `audit.suppressed`).
    pub fn record(&self, event: Event) {
        let kind = event.kind;
        let now = Timestamp::now();
        let record = AuditRecord::of(event, &self.replica, now);
        self.write_line(&record);
        let summaries = {
            let mut gate = self.gate.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let summaries = self.roll(&mut gate, now);
            let stored = kind.caller() == Caller::Authenticated || {
                let (stored, counted) = gate.counts.entry(kind).or_default();
                if *stored < self.per_minute {
                    *stored += 1;
                    true
                } else {
                    *counted += 1;
                    false
                }
            };
            if stored {
                if let Err(full) = self.queue.try_send(record) {
                    match kind.caller() {
                        // Bounded by what authenticated parties do: kept until the writer takes it.
                        Caller::Authenticated => self.overflowed().push(full.into_inner()),
                        Caller::Unauthenticated => gate.queue_full += 1,
                    }
                }
            }
            summaries
        };
        self.store_summaries(summaries);
    }

    /// Ends the window if a minute has passed: the `audit.suppressed` events of what it counted.
    fn roll(&self, gate: &mut Gate, now: Timestamp) -> Vec<AuditRecord> {
        let window = i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX);
        if now.0.saturating_sub(gate.window_start) < window {
            return Vec::new();
        }
        gate.window_start = now.0;
        let mut summaries: Vec<AuditRecord> = std::mem::take(&mut gate.counts)
            .into_iter()
            .filter(|(_, (_, counted))| *counted > 0)
            .map(|(kind, (_, counted))| {
                let event = Event::new(Kind::Suppressed)
                    .detail("of_event_id", kind.id())
                    .detail("of_event", kind.name())
                    .detail("count", counted)
                    .detail("reason", "rate_limited")
                    .detail("window_seconds", self.window.as_secs());
                AuditRecord::of(event, &self.replica, now)
            })
            .collect();
        let full = std::mem::take(&mut gate.queue_full);
        if full > 0 {
            let event = Event::new(Kind::Suppressed).detail("count", full).detail("reason", "queue_full");
            summaries.push(AuditRecord::of(event, &self.replica, now));
        }
        summaries.sort_by_key(|r| r.details.get("of_event_id").and_then(serde_json::Value::as_u64));
        summaries
    }

    fn store_summaries(&self, summaries: Vec<AuditRecord>) {
        for summary in summaries {
            self.write_line(&summary);
            if let Err(full) = self.queue.try_send(summary) {
                self.overflowed().push(full.into_inner());
            }
        }
    }

    fn overflowed(&self) -> std::sync::MutexGuard<'_, Vec<AuditRecord>> {
        self.overflow.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Emits the summaries of a window that ended with nothing after it.
    fn tick(&self) {
        let summaries = {
            let mut gate = self.gate.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            self.roll(&mut gate, Timestamp::now())
        };
        self.store_summaries(summaries);
    }

    fn write_line(&self, record: &AuditRecord) {
        if self.line_sinks == 0 {
            return;
        }
        let mut line = match serde_json::to_vec(record) {
            Ok(line) => line,
            Err(error) => {
                tracing::error!(%error, event = record.event, "an audit event cannot be encoded");
                return;
            }
        };
        line.push(b'\n');
        let mut sinks = self.lines.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for sink in sinks.iter_mut() {
            // One write per line on an O_APPEND file: whole lines, whoever else appends.
            if let Err(error) = sink.write_all(&line).and_then(|()| sink.flush()) {
                // Said once per 1000 failures, not once per event.
                if self.written_errors.fetch_add(1, Ordering::Relaxed) % 1000 == 0 {
                    tracing::error!(%error, "an audit line could not be written (audit.file or stdout)");
                }
            }
        }
    }
}

/// Stores the queued events, in batches, until stopped; what is queued then is stored before it
/// returns. Runs under the supervisor: after a panic the next run takes the same queue.
#[derive(Clone)]
pub struct AuditWriter {
    audit: Arc<Audit>,
    store: Arc<dyn AuditStore>,
    receiver: Arc<tokio::sync::Mutex<mpsc::Receiver<AuditRecord>>>,
}

impl std::fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditWriter").finish_non_exhaustive()
    }
}

impl AuditWriter {
    /// Stores events as they come until `cancel`, then stores what is left.
    pub async fn run(self, cancel: CancellationToken) {
        let mut receiver = self.receiver.lock().await;
        let mut tick = tokio::time::interval(WINDOW / 4);
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = tick.tick() => {
                    self.audit.tick();
                    self.store_overflow().await;
                }
                received = receiver.recv_many(&mut batch, BATCH) => {
                    if received == 0 {
                        break;
                    }
                    self.store(&mut batch).await;
                    self.store_overflow().await;
                }
            }
        }
        // The relay is stopping: what its parts record as they end (agents disconnected) still
        // comes in for a moment. Store until the queue has been quiet for a while, within a bound.
        self.audit.tick();
        self.store(&mut batch).await;
        let deadline = tokio::time::Instant::now() + DRAIN;
        while let Ok(received) = tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + DRAIN_QUIET),
            receiver.recv_many(&mut batch, BATCH),
        )
        .await
        {
            if received == 0 {
                break;
            }
            self.store(&mut batch).await;
        }
        self.audit.tick();
        while let Ok(record) = receiver.try_recv() {
            batch.push(record);
        }
        self.store(&mut batch).await;
        self.store_overflow().await;
    }

    /// Stores what found the queue full, in batches.
    async fn store_overflow(&self) {
        let mut overflow = std::mem::take(&mut *self.audit.overflowed());
        while !overflow.is_empty() {
            let rest = overflow.split_off(overflow.len().min(BATCH));
            self.store(&mut overflow).await;
            overflow = rest;
        }
    }

    /// Stores what is queued now (the command line calls it before it exits).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let mut receiver = self.receiver.lock().await;
        let mut batch = Vec::new();
        while let Ok(record) = receiver.try_recv() {
            batch.push(record);
        }
        batch.append(&mut self.audit.overflowed());
        if batch.is_empty() {
            return Ok(());
        }
        self.store.record_audit(&batch).await
    }

    async fn store(&self, batch: &mut Vec<AuditRecord>) {
        if batch.is_empty() {
            return;
        }
        let mut tries = 0u32;
        loop {
            match self.store.record_audit(batch).await {
                Ok(()) => break,
                Err(error) if tries < 3 => {
                    tries += 1;
                    tracing::warn!(%error, events = batch.len(), "storing audit events failed; trying again");
                    tokio::time::sleep(Duration::from_millis(500) * tries).await;
                }
                Err(error) => {
                    // Their lines were written; the store copy of this batch is lost.
                    tracing::error!(%error, events = batch.len(), "storing audit events failed; they are in the audit lines only");
                    break;
                }
            }
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AuditFilter;

    #[tokio::test]
    async fn a_flood_of_unauthenticated_refusals_is_stored_as_the_allowance_and_one_count() {
        let dir = tempfile::tempdir().expect("dir");
        let store: Arc<dyn AuditStore> =
            Arc::new(crate::store::sqlite::SqliteStore::open(&dir.path().join("relay.db")).expect("open"));
        let lines = dir.path().join("audit.jsonl");
        let config = AuditConfig { file: Some(lines.clone()), unauthenticated_per_minute: 3, ..AuditConfig::default() };
        let (audit, writer) = Audit::open(&config, Arc::clone(&store), "r1").expect("open");
        let AuditWriter { store: stored_in, receiver, audit: held } = writer;
        drop(held);
        let mut audit = Arc::into_inner(audit).expect("only owner");
        audit.window = Duration::from_millis(200);
        let audit = Arc::new(audit);
        let writer = AuditWriter { audit: Arc::clone(&audit), store: stored_in, receiver };
        for _ in 0..50 {
            audit.record(Event::new(Kind::TokenRefused).detail("reason", "unknown_token"));
        }
        audit.record(Event::new(Kind::JobCancelled).client("pam"));
        tokio::time::sleep(Duration::from_millis(250)).await;
        audit.tick();
        writer.flush().await.expect("stored");
        let stored = store.audit_events(&AuditFilter { limit: 100, ..AuditFilter::default() }).await.expect("list");
        let names: Vec<_> = stored.iter().map(|r| r.event.as_str()).collect();
        assert_eq!(
            names,
            ["api.token_refused", "api.token_refused", "api.token_refused", "job.cancelled", "audit.suppressed"],
            "authenticated events are always stored"
        );
        let summary = &stored[4].details;
        assert_eq!((summary["of_event_id"].as_u64(), summary["count"].as_u64()), (Some(5201), Some(47)), "{summary}");
        let written = std::fs::read_to_string(&lines).expect("lines");
        assert_eq!(
            written.lines().filter(|l| l.contains("\"event\":\"api.token_refused\"")).count(),
            50,
            "every line is written"
        );
        assert_eq!(written.lines().filter(|l| l.contains("\"event\":\"audit.suppressed\"")).count(), 1);
    }

    #[test]
    fn ids_and_names_are_unique_and_in_their_groups() {
        let mut ids = std::collections::HashSet::new();
        let mut names = std::collections::HashSet::new();
        for kind in Kind::ALL {
            assert!(ids.insert(kind.id()), "{kind:?}: id {} twice", kind.id());
            assert!(names.insert(kind.name()), "{kind:?}: name {} twice", kind.name());
            assert!((5000..6000).contains(&kind.id()), "{kind:?}: relay ids are 5xxx (the agent's are 41xx)");
            assert!(!kind.description().is_empty());
            assert_eq!(Kind::from_id(kind.id()), Some(*kind));
            assert_eq!(Kind::from_name(kind.name()), Some(*kind));
        }
    }

    #[test]
    fn untrusted_text_cannot_forge_a_line() {
        let event = Event::new(Kind::TokenRefused).untrusted("reason", "x\n{\"event_id\":5001}");
        let record = AuditRecord::of(event, "r", Timestamp(0));
        let line = serde_json::to_string(&record).expect("json");
        assert!(!line.contains('\n'));
        assert!(line.contains(r#"x\\n{"#), "{line}");
    }
}
