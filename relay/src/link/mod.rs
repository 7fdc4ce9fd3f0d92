//! The agent link: the gRPC `AgentLink` service agents dial into over mutual TLS.
//!
//! The TLS layer ([`crate::listener`], with [`pwrelay_shared::tls::link_server`]) admits clients
//! whose certificate chains to the agent CA and is not revoked ([`revocation`]), and clients
//! without a certificate, which only [`enroll`]'s `Enroll` call serves: `Open` refuses them. This
//! module reads the agent's identity (and the certificate's serial and expiry, for the known
//! agents of [`registry`]) from that certificate and runs one [`session`] per stream; one
//! [`dispatcher`] per replica claims jobs for all of them.

pub mod dispatcher;
pub mod enroll;
pub mod registry;
pub mod revocation;
mod session;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use pwrelay_proto::agent::v1::agent_link_server::AgentLink;
use pwrelay_proto::agent::v1::{AgentMessage, RelayMessage};
use pwrelay_shared::domain::DomainName;
use pwrelay_shared::identity::AgentIdentity;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use crate::audit::{Event, Kind};
use crate::jobs::Timestamp;
use crate::jobs::events::JobEvents;
use crate::seal::Sealer;
use crate::store::agents::AgentCertificate;
use crate::store::{ClaimPolicy, Store};
use registry::AgentRegistry;

/// What every agent session needs.
#[derive(Debug)]
pub struct LinkContext {
    /// The job store.
    pub store: Arc<dyn Store>,
    /// Opens sealed secrets for delivery.
    pub sealer: Arc<Sealer>,
    /// Job signals.
    pub events: Arc<JobEvents>,
    /// The known agents, in the store; each session writes its agent through.
    pub registry: Arc<AgentRegistry>,
    /// Domains this relay serves.
    pub relay_domains: BTreeSet<DomainName>,
    /// Lease and attempt limits.
    pub claim_policy: ClaimPolicy,
    /// Expected heartbeat interval.
    pub heartbeat: Duration,
    /// Where `initial_password` results leave their link keys for the delivery.
    pub link_keys: Arc<crate::lifecycle::keys::LinkKeys>,
    /// Dispatch and completion metrics.
    pub metrics: Arc<crate::metrics::RelayMetrics>,
    /// The deny list; it closes the streams of agents revoked while connected.
    pub revocations: Arc<revocation::Revocations>,
    /// The audit trail.
    pub audit: Arc<crate::audit::Audit>,
    /// The replica's claim loop, which leases jobs to the sessions.
    pub dispatcher: Arc<dispatcher::Dispatcher>,
}

/// The `AgentLink` gRPC service.
#[derive(Debug)]
pub struct LinkService {
    context: Arc<LinkContext>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl LinkService {
    /// A service whose sessions stop when `cancel` fires and are tracked by `tracker`.
    pub fn new(context: Arc<LinkContext>, cancel: CancellationToken, tracker: TaskTracker) -> Self {
        Self { context, cancel, tracker }
    }
}

#[tonic::async_trait]
impl AgentLink for LinkService {
    type OpenStream = ReceiverStream<Result<RelayMessage, Status>>;

    async fn open(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<Self::OpenStream>, Status> {
        let peer = request.remote_addr();
        let refused = |reason: &'static str, message: &str| {
            let event = Event::new(Kind::AgentRefused).detail("reason", reason).untrusted("message", message);
            self.context.audit.record(match peer {
                Some(peer) => event.address(peer.ip()),
                None => event,
            });
        };
        // peer_certs() must be read before into_inner() drops the connection info. TLS admits a
        // client without a certificate (for enrollment); the stream does not.
        let no_certificate = || {
            let message = "the agent link requires a client certificate (enroll the agent first: pwrelay-agent enroll)";
            refused("no_certificate", message);
            Status::unauthenticated(message)
        };
        let certs = request.peer_certs().ok_or_else(no_certificate)?;
        let leaf = certs.first().ok_or_else(no_certificate)?;
        let identity = AgentIdentity::from_certificate_der(leaf).map_err(|e| {
            tracing::warn!(error = %e, "agent certificate carries no usable identity");
            refused("no_identity", &e.to_string());
            Status::permission_denied(e.to_string())
        })?;
        let certificate = certificate_facts(leaf).map_err(|e| {
            tracing::warn!(error = %e, "agent certificate cannot be read");
            refused("unreadable_certificate", &e);
            Status::permission_denied(e)
        })?;
        let not_before_ms = revocation::subject_of(leaf).map_or(i64::MIN, |(_, not_before)| not_before);
        if self.context.revocations.refusal(identity.name.as_str(), not_before_ms).is_some() {
            let message = format!("agent {} is revoked", identity.name);
            tracing::warn!(agent = %identity.name, "refused a stream of a revoked agent");
            refused("revoked", &message);
            return Err(Status::permission_denied(message));
        }
        let inbound = request.into_inner();
        let (outbound, rx) = mpsc::channel(32);
        let cancel = self.cancel.child_token();
        self.context.revocations.follow(identity.name.as_str(), not_before_ms, cancel.clone(), &outbound);
        let session = session::Session::new(Arc::clone(&self.context), identity, certificate, peer, outbound);
        self.tracker.spawn(session.run(inbound, cancel));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The serial (hexadecimal) and expiry of a DER certificate.
fn certificate_facts(der: &[u8]) -> Result<AgentCertificate, String> {
    use x509_parser::prelude::FromDer as _;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| format!("the client certificate cannot be parsed: {e}"))?;
    let serial = cert.tbs_certificate.raw_serial().iter().map(|b| format!("{b:02x}")).collect();
    let expires = Timestamp(cert.validity().not_after.timestamp().saturating_mul(1000));
    Ok(AgentCertificate { serial, expires })
}
