//! The relay's registry of agents, kept in the store so that every replica on one database sees
//! the same fleet: which agents are known, which are connected (through which replica and stream),
//! their DC health and job counts, and so which domains can be served right now.
//!
//! Each session writes its agent through a [`Registration`]: at hello, with every heartbeat (the
//! DC health it carries, the jobs in flight, the jobs finished since the last one), and when its
//! stream ends. Nothing is written per message, so the dispatch path gains no store call.

use std::collections::BTreeSet;
use std::sync::Arc;

use pwrelay_shared::domain::DomainName;

use crate::jobs::Timestamp;
use crate::store::agents::{AgentReport, DirectoryHealth, JobCounts};
use crate::store::{AgentThresholds, KnownAgent, Store, StoreError};

/// The agents, as the store knows them.
#[derive(Debug)]
pub struct AgentRegistry {
    store: Arc<dyn Store>,
    thresholds: AgentThresholds,
    replica: String,
}

impl AgentRegistry {
    /// The registry of `store`, with `[agents]`'s thresholds; this process is a replica of its own.
    pub fn new(store: Arc<dyn Store>, thresholds: AgentThresholds) -> Self {
        Self { store, thresholds, replica: replica_id() }
    }

    /// This relay process, as the known agents name the replica holding their stream.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// When agents count as down or stale.
    pub fn thresholds(&self) -> AgentThresholds {
        self.thresholds
    }

    /// Every known agent, by name.
    pub async fn agents(&self) -> Result<Vec<KnownAgent>, StoreError> {
        self.store.agents().await
    }

    /// The domains a connected agent serves, on any replica.
    pub async fn connected_domains(&self) -> Result<BTreeSet<DomainName>, StoreError> {
        self.store.connected_domains(self.thresholds.heard_since(Timestamp::now())).await
    }

    /// Whether an agent serving `domain` is connected to any replica (false when the store cannot
    /// tell).
    pub async fn serves(&self, domain: &DomainName) -> bool {
        match self.connected_domains().await {
            Ok(domains) => domains.contains(domain),
            Err(error) => {
                tracing::warn!(%error, "the known agents could not be read");
                false
            }
        }
    }

    /// Records an agent's hello; the stream's later records go through the returned registration.
    pub(super) async fn register(self: &Arc<Self>, report: AgentReport) -> Registration {
        let mut registration = Registration { store: Arc::clone(&self.store), report, open: true };
        registration.write().await;
        registration
    }
}

/// One stream's record of its agent. End it with [`Registration::close`]; one dropped unclosed
/// (a panicking session) is closed by a task of its own.
#[derive(Debug)]
pub(super) struct Registration {
    store: Arc<dyn Store>,
    /// The last report, with the job counts not written yet.
    report: AgentReport,
    open: bool,
}

impl Registration {
    /// A job this agent reported finished it, as succeeded or as failed; counted with the next
    /// heartbeat.
    pub(super) fn finished(&mut self, succeeded: bool) {
        let counts = &mut self.report.finished;
        if succeeded {
            counts.done += 1;
        } else {
            counts.failed += 1;
        }
    }

    /// Records a heartbeat: the agent was heard from now, with this DC health and jobs in flight.
    pub(super) async fn heartbeat(&mut self, directories: Vec<DirectoryHealth>, jobs_in_flight: usize) {
        self.report.seen = Timestamp::now();
        self.report.directories = Some(directories);
        self.report.jobs_in_flight = u32::try_from(jobs_in_flight).unwrap_or(u32::MAX);
        self.write().await;
    }

    /// Writes the report; the job counts are cleared once written (kept for the next try if not).
    async fn write(&mut self) {
        match self.store.record_agent(&self.report).await {
            Ok(()) => self.report.finished = JobCounts::default(),
            Err(error) => {
                tracing::warn!(%error, "the agent's state could not be recorded; trying again with its next heartbeat");
            }
        }
    }

    /// The stream ended: the agent is no longer connected through it.
    pub(super) async fn close(mut self) {
        self.open = false;
        let (name, stream, finished) = (self.report.name.clone(), self.report.stream.id.clone(), self.report.finished);
        disconnect(&*self.store, &name, &stream, finished).await;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let (name, stream, finished) = (self.report.name.clone(), self.report.stream.id.clone(), self.report.finished);
        let store = Arc::clone(&self.store);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { disconnect(&*store, &name, &stream, finished).await });
        }
    }
}

async fn disconnect(store: &dyn Store, name: &str, stream: &str, finished: JobCounts) {
    match store.agent_disconnected(name, stream, finished).await {
        Ok(true) => {}
        Ok(false) => tracing::debug!("the agent has a newer stream; it stays connected"),
        Err(error) => tracing::warn!(%error, "the end of the agent's stream could not be recorded"),
    }
}

/// This process as a replica: the host name and a random suffix (two relays on one host, or one
/// relay restarted, are different replicas).
fn replica_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "relay".into());
    let host = crate::store::agents::bounded_text(&host, 48);
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}/{}", &suffix[..8])
}
