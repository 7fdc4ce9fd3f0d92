//! The deny list of revoked agents, as this replica enforces it.
//!
//! `pwrelay agents revoke NAME` writes the revocation to the store
//! ([`EnrollmentStore::revoke_agent`]); every replica reloads the list every
//! [`REFRESH_INTERVAL`] (and once before it serves), so a revocation holds across replicas
//! within that time. The list is checked in three places:
//! - at the TLS handshake of the link port ([`ClientCertificateCheck`]): a revoked certificate
//!   never gets a connection;
//! - when a stream opens and when a renewal is asked for ([`Revocations::refusal`]), for a
//!   connection made before the list changed;
//! - on open streams: each reload closes the streams of certificates it now refuses, with
//!   `PERMISSION_DENIED` (the agent's next connection fails at the handshake).
//!
//! A revocation refuses the certificates of the agent issued (notBefore) before it, so the agent
//! can be enrolled again with a new token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use pwrelay_proto::agent::v1::RelayMessage;
use pwrelay_shared::identity::AgentIdentity;
use pwrelay_shared::tls::ClientCertificateCheck;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::audit::{Audit, Event, Kind};
use crate::store::{Store, StoreError};

/// How often each replica reloads the deny list from the store.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(2);

/// The deny list and the open streams it may close.
#[derive(Debug, Default)]
pub struct Revocations {
    /// Agent name → revoked at (Unix ms).
    denied: RwLock<HashMap<String, i64>>,
    streams: Mutex<Vec<OpenStream>>,
}

#[derive(Debug)]
struct OpenStream {
    agent: String,
    not_before_ms: i64,
    cancel: CancellationToken,
    /// Weak: the stream ends when its session drops the last sender, as it would untracked.
    outbound: mpsc::WeakSender<Result<RelayMessage, Status>>,
}

impl OpenStream {
    fn ended(&self) -> bool {
        self.cancel.is_cancelled() || self.outbound.strong_count() == 0
    }
}

/// The agent name and notBefore (Unix ms) of a DER certificate.
pub(crate) fn subject_of(der: &[u8]) -> Option<(String, i64)> {
    use x509_parser::prelude::FromDer as _;
    let identity = AgentIdentity::from_certificate_der(der).ok()?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    Some((identity.name.to_string(), cert.validity().not_before.timestamp().saturating_mul(1000)))
}

impl Revocations {
    /// When the certificate of `agent` issued at `not_before_ms` is refused: the revocation time.
    pub fn refusal(&self, agent: &str, not_before_ms: i64) -> Option<i64> {
        let denied = self.denied.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        denied.get(agent).copied().filter(|revoked| not_before_ms < *revoked)
    }

    /// Follows a stream: it is closed (`cancel`, after `PERMISSION_DENIED` on `outbound`) once a
    /// reload refuses its certificate.
    pub fn follow(
        &self,
        agent: &str,
        not_before_ms: i64,
        cancel: CancellationToken,
        outbound: &mpsc::Sender<Result<RelayMessage, Status>>,
    ) {
        let mut streams = self.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        streams.retain(|s| !s.ended());
        streams.push(OpenStream { agent: agent.to_owned(), not_before_ms, cancel, outbound: outbound.downgrade() });
    }

    /// Reloads the list from the store and closes the streams it now refuses; the agents of the
    /// streams closed.
    pub async fn reload(&self, store: &dyn Store) -> Result<Vec<String>, StoreError> {
        let list = store.revocations().await?;
        let fresh: HashMap<String, i64> = list.into_iter().map(|r| (r.agent, r.revoked.0)).collect();
        *self.denied.write().unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
        let closing: Vec<OpenStream> = {
            let mut streams = self.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let (closing, open) = std::mem::take(&mut *streams)
                .into_iter()
                .filter(|s| !s.ended())
                .partition(|s| self.refusal(&s.agent, s.not_before_ms).is_some());
            *streams = open;
            closing
        };
        let mut closed = Vec::with_capacity(closing.len());
        for stream in closing {
            tracing::warn!(agent = %stream.agent, "closing the stream of a revoked agent");
            if let Some(outbound) = stream.outbound.upgrade() {
                let _gone = outbound.try_send(Err(Status::permission_denied(format!(
                    "agent {} was revoked (pwrelay agents revoke); enroll it again with a new token",
                    stream.agent
                ))));
            }
            stream.cancel.cancel();
            closed.push(stream.agent);
        }
        Ok(closed)
    }

    /// Reloads every [`REFRESH_INTERVAL`] until `cancel`, auditing the streams it closes.
    pub async fn watch(self: Arc<Self>, store: Arc<dyn Store>, audit: Arc<Audit>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(REFRESH_INTERVAL);
        let mut failing = false;
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            match self.reload(store.as_ref()).await {
                Ok(closed) => {
                    if failing {
                        failing = false;
                        tracing::info!("the deny list of revoked agents is read again");
                    }
                    for agent in closed {
                        audit.record(Event::new(Kind::RevokedStreamClosed).agent(agent));
                    }
                }
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(%error, "reading the deny list of revoked agents failed; the last one read stays in force");
                }
                Err(_) => {}
            }
        }
    }
}

impl ClientCertificateCheck for Revocations {
    fn admit(&self, leaf: &[u8]) -> Result<(), String> {
        let Some((agent, not_before_ms)) = subject_of(leaf) else {
            // No agent identity: the link refuses it after the handshake, with the reason.
            return Ok(());
        };
        match self.refusal(&agent, not_before_ms) {
            None => Ok(()),
            Some(_) => {
                // The listener audits the refused handshake (tls.handshake_refused).
                tracing::warn!(%agent, "refused the certificate of a revoked agent at the handshake");
                Err(format!("agent {agent} is revoked"))
            }
        }
    }
}
