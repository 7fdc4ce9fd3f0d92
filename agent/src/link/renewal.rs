//! Renewal of the agent's certificate over the link: at two thirds of its life the agent makes a
//! fresh key, asks the relay (`AgentEnrollment.Renew`, under its current certificate) for a
//! certificate with the same identity, and takes it into use without a restart
//! ([`LinkIdentity::replace`]; the link reconnects with it).
//!
//! A renewal that fails is tried again after a tenth of the certificate's life (at least 1 s, at
//! most 5 minutes) until the certificate expires; `/readyz` shows the expiry from the moment
//! renewal is due. A relay without `[enrollment]` cannot renew: the agent says so once and keeps
//! its certificate (issued by `pwrelay pki issue-agent`, replaced by hand).

use std::sync::Arc;
use std::time::Duration;

use pwrelay_proto::agent::v1::RenewRequest;
use pwrelay_proto::agent::v1::agent_enrollment_client::AgentEnrollmentClient;
use pwrelay_shared::identity::AgentIdentity;
use tokio_util::sync::CancellationToken;

use super::identity::{LinkIdentity, Validity};
use crate::audit::{AuditLog, Event, ids};
use crate::health::HealthState;

/// Where and as whom renewal dials.
#[derive(Debug, Clone)]
pub struct Renewal {
    /// Relay host.
    pub host: String,
    /// Relay link port.
    pub port: u16,
    /// Name the relay certificate must carry.
    pub server_name: String,
    /// The identity to renew.
    pub identity: Arc<LinkIdentity>,
    /// Where the new certificate's expiry is shown.
    pub health: Arc<HealthState>,
    /// Where renewals and refusals are recorded.
    pub audit: AuditLog,
}

/// Why one renewal failed.
#[derive(Debug, thiserror::Error)]
enum RenewError {
    #[error("the certificate in use names no agent identity")]
    NoIdentity,
    #[error(transparent)]
    Request(#[from] pwrelay_shared::pki::PkiError),
    #[error(transparent)]
    Link(#[from] super::LinkError),
    #[error("the relay refused the renewal: {0}")]
    Refused(tonic::Status),
    #[error("the renewed certificate cannot be used: {0}")]
    Replace(#[from] super::identity::ReplaceError),
}

impl Renewal {
    /// Renews the certificate whenever it is due, until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        loop {
            let leaf = self.identity.leaf();
            let Some(validity) = Validity::of(&leaf) else {
                tracing::warn!("the agent certificate cannot be read; it is not renewed");
                return;
            };
            let wait = u64::try_from(validity.renew_at() - crate::jobs::unix_seconds()).unwrap_or(0);
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(wait)) => {}
            }
            match self.renew_once().await {
                Ok(renewed) => {
                    tracing::info!(
                        expires_unix = renewed.not_after,
                        "agent certificate renewed with a fresh key; reconnecting with it"
                    );
                    let event = Event {
                        event_id: ids::CERTIFICATE_RENEWED,
                        event: "certificate_renewed",
                        message: format!("expires_unix={}", renewed.not_after),
                        ..Event::default()
                    };
                    self.audit.record(&event).await;
                }
                Err(RenewError::Refused(status))
                    if matches!(status.code(), tonic::Code::FailedPrecondition | tonic::Code::PermissionDenied) =>
                {
                    tracing::warn!(error = %status.message(), "the relay refuses to renew this agent's certificate; replace it before it expires");
                    let event = Event {
                        event_id: ids::RENEWAL_REFUSED,
                        event: "certificate_renewal_refused",
                        message: status.message().chars().take(512).collect(),
                        ..Event::default()
                    };
                    self.audit.record(&event).await;
                    return;
                }
                Err(error) => {
                    let life = u64::try_from(validity.not_after - validity.not_before).unwrap_or(0);
                    let retry = Duration::from_secs((life / 10).clamp(1, 300));
                    tracing::warn!(%error, retry_seconds = retry.as_secs(), expires_unix = validity.not_after, "renewing the agent certificate failed");
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(retry) => {}
                    }
                }
            }
        }
    }

    async fn renew_once(&self) -> Result<Validity, RenewError> {
        let identity =
            AgentIdentity::from_certificate_der(&self.identity.leaf()).map_err(|_| RenewError::NoIdentity)?;
        let (csr_der, key_pem) = pwrelay_shared::pki::certificate_request(Some(&identity))?;
        let channel = super::dial::dial(&self.host, self.port, &self.server_name, self.identity.config()).await?;
        let response = AgentEnrollmentClient::new(channel)
            .renew(RenewRequest { csr_der })
            .await
            .map_err(RenewError::Refused)?
            .into_inner();
        self.identity.replace(&response.certificate_chain_pem, &key_pem)?;
        let leaf = self.identity.leaf();
        if let Some(status) = crate::app::certificate_status(&leaf) {
            self.health.set_certificate(status);
        }
        Validity::of(&leaf).ok_or(RenewError::NoIdentity)
    }
}
