//! Known agents: every agent that ever said hello, kept in the store so that every relay replica
//! on one database shows the same fleet.
//!
//! A session records its agent at hello and with every heartbeat ([`AgentStore::record_agent`],
//! an upsert keyed by the certificate's agent name), and marks it no longer connected when its
//! stream ends ([`AgentStore::agent_disconnected`], fenced by the stream id, so the end of an older
//! stream does not hide a newer one). What an agent's *state* is follows from the record and the
//! clock ([`KnownAgent::state`]): connected while its stream is open and it was heard from within
//! `agents.down_after_seconds`; down after that (or once its stream ended); stale after
//! `agents.stale_after_days` without a word. The record never holds a secret: the DC health is the
//! agent's own bounded summary (domain, DC, bind result, latency, a short detail).

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use pwrelay_shared::domain::DomainName;
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::jobs::Timestamp;

/// Domains kept of one heartbeat's directory health.
pub const MAX_DIRECTORIES: usize = 32;
/// DCs kept per domain.
pub const MAX_DCS: usize = 16;
/// Characters kept of a detail text (control and bidirectional characters are replaced).
pub const MAX_DETAIL_CHARS: usize = 200;
/// Characters kept of an agent's version text.
pub const MAX_VERSION_CHARS: usize = 64;

/// One domain's health as the agent's last heartbeat reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DirectoryHealth {
    /// The AD domain.
    #[schema(value_type = String)]
    pub domain: DomainName,
    /// Whether the agent's last bind to a DC of the domain worked.
    pub bind_ok: bool,
    /// The DCs that answered, or the last error, as the agent put it.
    pub detail: String,
    /// Each DC, when the agent reports them one by one.
    #[serde(default)]
    pub dcs: Vec<DcHealth>,
}

/// One domain controller as the agent's last heartbeat reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DcHealth {
    /// The DC (its URL).
    pub name: String,
    /// Whether the agent's service account could bind to it.
    pub bind_ok: bool,
    /// The error, when it could not.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// How long the bind took, when the agent measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u32>,
}

/// Text from an agent as it is kept: control and bidirectional characters replaced, at most
/// `max` characters.
pub fn bounded_text(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| {
            if c.is_control()
                || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
            {
                '?'
            } else {
                c
            }
        })
        .collect()
}

/// The agent's client certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AgentCertificate {
    /// The serial number, hexadecimal.
    pub serial: String,
    /// When it expires.
    pub expires: Timestamp,
}

/// The stream an agent was last recorded through.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AgentStream {
    /// The relay replica that holds (or held) the stream.
    pub replica: String,
    /// The stream's id on that replica.
    pub id: String,
    /// Where the agent connected from (address:port).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// When the stream opened.
    pub opened: Timestamp,
}

/// Jobs an agent finished (results that made a job final), as counts to add.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JobCounts {
    /// Jobs that succeeded.
    pub done: u64,
    /// Jobs that failed for good.
    pub failed: u64,
}

impl JobCounts {
    /// Whether there is nothing to add.
    pub fn is_empty(self) -> bool {
        self.done == 0 && self.failed == 0
    }
}

/// What a session records about its agent: at hello (no health yet) and with every heartbeat.
#[derive(Clone, Debug)]
pub struct AgentReport {
    /// The agent's name, from its certificate.
    pub name: String,
    /// The domains the stream is authorized for.
    pub domains: Vec<DomainName>,
    /// The agent's version, from its hello ([`MAX_VERSION_CHARS`] at most).
    pub version: String,
    /// Its client certificate.
    pub certificate: AgentCertificate,
    /// The stream this report comes through.
    pub stream: AgentStream,
    /// When the agent was heard from.
    pub seen: Timestamp,
    /// The DC health of a heartbeat; `None` keeps what was recorded before (a hello).
    pub directories: Option<Vec<DirectoryHealth>>,
    /// Jobs leased to the agent and not yet reported.
    pub jobs_in_flight: u32,
    /// Jobs finished since the last report, added to the agent's counters.
    pub finished: JobCounts,
}

/// An agent as the store knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownAgent {
    /// The agent's name, from its certificate.
    pub name: String,
    /// The domains its last stream was authorized for.
    pub domains: Vec<DomainName>,
    /// Its version, from its last hello.
    pub version: String,
    /// Its client certificate, as last presented.
    pub certificate: AgentCertificate,
    /// Its first hello.
    pub first_seen: Timestamp,
    /// When it was last heard from (hello or heartbeat).
    pub last_seen: Timestamp,
    /// Whether its last recorded stream is open.
    pub connected: bool,
    /// The stream it was last recorded through.
    pub stream: AgentStream,
    /// The DC health of its last heartbeat.
    pub directories: Vec<DirectoryHealth>,
    /// Jobs leased to it and not yet reported, as of its last heartbeat.
    pub jobs_in_flight: u32,
    /// Jobs it finished successfully.
    pub jobs_done: u64,
    /// Jobs it finished as failed.
    pub jobs_failed: u64,
}

/// Where an agent stands (`[agents]` sets the thresholds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    /// Its stream is open and it was heard from within `agents.down_after_seconds`.
    Connected,
    /// Its stream ended, or it has been silent longer than `agents.down_after_seconds`.
    Down,
    /// Not heard from for `agents.stale_after_days`; `pwrelay agents forget` removes it.
    Stale,
}

impl AgentState {
    /// The state's name, as the API and the command line show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::Down => "down",
            Self::Stale => "stale",
        }
    }
}

/// The thresholds of [`AgentState`] (`[agents]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentThresholds {
    /// Silence after which a connected agent is down.
    pub down_after: Duration,
    /// Silence after which an agent is stale.
    pub stale_after: Duration,
}

impl AgentThresholds {
    /// The earliest `last_seen` of a connected agent at `now`.
    pub fn heard_since(&self, now: Timestamp) -> Timestamp {
        Timestamp(now.0.saturating_sub(i64::try_from(self.down_after.as_millis()).unwrap_or(i64::MAX)))
    }
}

impl KnownAgent {
    /// The agent's state at `now`.
    pub fn state(&self, thresholds: &AgentThresholds, now: Timestamp) -> AgentState {
        let stale_ms = i64::try_from(thresholds.stale_after.as_millis()).unwrap_or(i64::MAX);
        if self.connected && self.last_seen >= thresholds.heard_since(now) {
            AgentState::Connected
        } else if self.last_seen.0 < now.0.saturating_sub(stale_ms) {
            AgentState::Stale
        } else {
            AgentState::Down
        }
    }
}

/// What [`AgentStore::forget_agent`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forgetting {
    /// The agent's record is gone.
    Forgotten,
    /// The agent is connected (heard from since the given time); nothing was removed.
    Connected,
    /// No agent of that name is known.
    Unknown,
}

/// The known agents.
#[async_trait]
pub trait AgentStore: Send + Sync + 'static {
    /// Records an agent's hello or heartbeat in one upsert: the agent is connected through
    /// `report.stream`, was seen at `report.seen`, its counters grow by `report.finished`; its
    /// first sighting is kept, and its DC health only when the report carries none.
    async fn record_agent(&self, report: &AgentReport) -> Result<(), StoreError>;

    /// Stream `stream` of agent `name` ended: the agent is no longer connected, unless a newer
    /// stream was recorded since (then only the counters change). The counters grow by
    /// `finished` either way. False when the stream was not the agent's current one (or the
    /// agent is not known).
    async fn agent_disconnected(&self, name: &str, stream: &str, finished: JobCounts) -> Result<bool, StoreError>;

    /// Every known agent, ordered by name.
    async fn agents(&self) -> Result<Vec<KnownAgent>, StoreError>;

    /// One agent.
    async fn agent(&self, name: &str) -> Result<Option<KnownAgent>, StoreError>;

    /// The domains of agents whose stream is open and that were heard from at `heard_since` or
    /// later: the domains some relay replica can hand jobs to now.
    async fn connected_domains(&self, heard_since: Timestamp) -> Result<BTreeSet<DomainName>, StoreError>;

    /// Removes an agent's record, in one statement: with `unless_heard_since`, only when it is
    /// not connected or was last heard from before then. An agent that connects again is
    /// recorded anew.
    async fn forget_agent(&self, name: &str, unless_heard_since: Option<Timestamp>) -> Result<Forgetting, StoreError>;
}

/// An `agents` row as both backends read it (the columns in the order of the `SELECT`s:
/// `name, domains, version, cert_serial, cert_expires_ms, first_seen_ms, last_seen_ms, connected,
/// replica, stream, peer, opened_ms, directories, jobs_in_flight, jobs_done, jobs_failed`).
pub(crate) struct AgentRow {
    pub(crate) name: String,
    pub(crate) domains: String,
    pub(crate) version: String,
    pub(crate) cert_serial: String,
    pub(crate) cert_expires_ms: i64,
    pub(crate) first_seen_ms: i64,
    pub(crate) last_seen_ms: i64,
    pub(crate) connected: bool,
    pub(crate) replica: String,
    pub(crate) stream: String,
    pub(crate) peer: Option<String>,
    pub(crate) opened_ms: i64,
    pub(crate) directories: String,
    pub(crate) jobs_in_flight: i64,
    pub(crate) jobs_done: i64,
    pub(crate) jobs_failed: i64,
}

impl AgentRow {
    /// The agent the row holds.
    pub(crate) fn into_agent(self) -> Result<KnownAgent, StoreError> {
        Ok(KnownAgent {
            domains: parse_json(&self.name, "domains", &self.domains)?,
            directories: parse_json(&self.name, "directories", &self.directories)?,
            version: self.version,
            certificate: AgentCertificate { serial: self.cert_serial, expires: Timestamp(self.cert_expires_ms) },
            first_seen: Timestamp(self.first_seen_ms),
            last_seen: Timestamp(self.last_seen_ms),
            connected: self.connected,
            stream: AgentStream {
                replica: self.replica,
                id: self.stream,
                peer: self.peer,
                opened: Timestamp(self.opened_ms),
            },
            jobs_in_flight: u32::try_from(self.jobs_in_flight).unwrap_or(0),
            jobs_done: to_u64(self.jobs_done),
            jobs_failed: to_u64(self.jobs_failed),
            name: self.name,
        })
    }
}

/// The union of stored `domains` columns.
pub(crate) fn union_of_domains(
    rows: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeSet<DomainName>, StoreError> {
    let mut all = BTreeSet::new();
    for (name, json) in rows {
        all.extend(parse_json::<Vec<DomainName>>(&name, "domains", &json)?);
    }
    Ok(all)
}

/// A stored JSON column, or the reason it is corrupt.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    name: &str,
    column: &str,
    json: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(json)
        .map_err(|_| StoreError::Corrupt { id: format!("agent {name}"), reason: format!("bad {column}") })
}

/// A JSON column's text.
pub(crate) fn to_json<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Database(e.to_string()))
}

/// A count as the databases keep it (both hold signed 64-bit integers).
pub(crate) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A stored count.
pub(crate) fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(connected: bool, last_seen: i64) -> KnownAgent {
        KnownAgent {
            name: "a".into(),
            domains: vec![],
            version: "1".into(),
            certificate: AgentCertificate { serial: "01".into(), expires: Timestamp(0) },
            first_seen: Timestamp(0),
            last_seen: Timestamp(last_seen),
            connected,
            stream: AgentStream { replica: "r".into(), id: "s".into(), peer: None, opened: Timestamp(0) },
            directories: vec![],
            jobs_in_flight: 0,
            jobs_done: 0,
            jobs_failed: 0,
        }
    }

    #[test]
    fn the_state_follows_the_stream_and_the_silence() {
        let t = AgentThresholds { down_after: Duration::from_secs(30), stale_after: Duration::from_secs(86_400) };
        let now = Timestamp(100_000_000);
        assert_eq!(agent(true, now.0 - 29_000).state(&t, now), AgentState::Connected);
        assert_eq!(agent(true, now.0 - 31_000).state(&t, now), AgentState::Down, "silent past down_after");
        assert_eq!(agent(false, now.0).state(&t, now), AgentState::Down, "its stream ended");
        assert_eq!(agent(true, now.0 - 86_401_000).state(&t, now), AgentState::Stale);
        assert_eq!(agent(false, now.0 - 86_399_000).state(&t, now), AgentState::Down);
    }

    #[test]
    fn agent_text_is_bounded_and_printable() {
        let text = format!("a\nb\u{202e}c{}", "x".repeat(300));
        let kept = bounded_text(&text, MAX_DETAIL_CHARS);
        assert_eq!(kept.chars().count(), MAX_DETAIL_CHARS);
        assert!(kept.starts_with("a?b?c"), "{kept}");
    }
}
