//! The relay's registry of connected agents: who is connected, for which domains, since when.
//!
//! One entry per open stream (an agent that reconnects briefly has two). Entries are removed when
//! their [`Registration`] is dropped, so a session that ends for any reason leaves no ghost.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use pwrelay_shared::domain::DomainName;
use serde::Serialize;

use crate::jobs::Timestamp;

/// One connected agent stream.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ConnectedAgent {
    /// The agent name from its certificate.
    pub name: String,
    /// Domains this stream receives jobs for.
    #[schema(value_type = Vec<String>)]
    pub domains: Vec<DomainName>,
    /// The agent's version, from its hello.
    pub version: String,
    /// Where it connects from (address:port).
    #[schema(value_type = Option<String>)]
    pub peer: Option<SocketAddr>,
    /// When the stream opened.
    pub connected_at: Timestamp,
    /// When the agent last sent anything.
    pub last_seen: Timestamp,
    /// Jobs leased to this stream right now.
    pub jobs_in_flight: usize,
}

/// The connected agents.
#[derive(Debug, Default)]
pub struct AgentRegistry {
    streams: Mutex<HashMap<String, ConnectedAgent>>,
}

impl AgentRegistry {
    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<String, ConnectedAgent>> {
        // The map stays consistent even if a holder panicked: every update is a single insert/remove.
        self.streams.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a stream; it is removed when the returned guard drops.
    pub fn register(self: &Arc<Self>, holder: String, agent: ConnectedAgent) -> Registration {
        self.streams().insert(holder.clone(), agent);
        Registration { registry: Arc::clone(self), holder }
    }

    /// All connected streams, ordered by agent name.
    pub fn snapshot(&self) -> Vec<ConnectedAgent> {
        let mut agents: Vec<_> = self.streams().values().cloned().collect();
        agents.sort_by(|a, b| a.name.cmp(&b.name).then(a.connected_at.cmp(&b.connected_at)));
        agents
    }

    /// Whether an agent serving `domain` is connected.
    pub fn serves(&self, domain: &DomainName) -> bool {
        self.streams().values().any(|a| a.domains.contains(domain))
    }
}

/// Keeps a stream in the registry while alive.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<AgentRegistry>,
    holder: String,
}

impl Registration {
    /// Records activity on the stream.
    pub fn touch(&self, jobs_in_flight: usize) {
        if let Some(agent) = self.registry.streams().get_mut(&self.holder) {
            agent.last_seen = Timestamp::now();
            agent.jobs_in_flight = jobs_in_flight;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.streams().remove(&self.holder);
    }
}
