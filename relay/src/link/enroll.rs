//! Agent enrollment and certificate renewal: the `AgentEnrollment` gRPC service, on the link
//! port.
//!
//! `Enroll` is the one call a client without a certificate may make (the TLS layer admits such
//! clients; [`super::LinkService`] refuses them). It is rate-limited per client address, and
//! trades a one-time token (`pwrelay agents enroll-token`) and a certificate signing request for
//! a certificate whose agent name and domains come from the token: the request's own names may
//! only repeat them, never add to them. The token is checked in constant time before it is used
//! up, and used in one fenced store statement, so it buys one certificate. `Renew` needs the
//! agent's current, unrevoked certificate and returns one with the same identity for a fresh key.
//!
//! Every outcome is in the audit trail: `agent.enrolled`, `agent.enroll_refused` (with the
//! reason), `agent.certificate_renewed`, `agent.renew_refused`.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use pwrelay_proto::agent::v1::agent_enrollment_server::AgentEnrollment;
use pwrelay_proto::agent::v1::{EnrollRequest, EnrollResponse, RenewRequest, RenewResponse};
use pwrelay_shared::domain::DomainName;
use pwrelay_shared::enrollment::{EnrollmentToken, ca_fingerprint, fingerprint_text};
use pwrelay_shared::identity::{AGENT_URI_PREFIX, AgentIdentity, DOMAIN_URI_PREFIX, certificate_expiry_unix};
use pwrelay_shared::pki::{AgentRequest, CertificateAuthority};
use pwrelay_shared::secret::SecretString;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use subtle::ConstantTimeEq as _;
use tonic::{Request, Response, Status};

use super::revocation::{Revocations, subject_of};
use crate::api::rate_limit::RateLimiter;
use crate::audit::{Audit, Event, Kind};
use crate::config::EnrollmentConfig;
use crate::jobs::Timestamp;
use crate::store::Store;

/// Why the online issuer cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    /// A file cannot be read.
    #[error("{key} {path}: {source}")]
    Read {
        /// The configuration key.
        key: &'static str,
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The issuer's certificate and key do not make a CA.
    #[error("enrollment.issuer_cert_file / issuer_key_file: {0}")]
    Issuer(#[from] pwrelay_shared::pki::PkiError),
    /// The agent CA file holds no certificate.
    #[error("link.agent_ca_file holds no PEM certificate")]
    AgentCa,
    /// The issuer is neither the agent CA nor signed by it.
    #[error(
        "enrollment.issuer_cert_file is neither link.agent_ca_file's CA nor an intermediate it signed; agents \
         would get certificates the link refuses (make one with `pwrelay pki intermediate`)"
    )]
    NotUnderAgentCa,
}

/// The relay's online issuer of agent certificates.
pub struct Issuer {
    ca: CertificateAuthority,
    /// The issuer's certificate when it is an intermediate (sent after each agent certificate).
    intermediate_pem: Option<String>,
    agent_ca_pem: String,
    agent_ca_fingerprint: [u8; 32],
    lifetime: Duration,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer").field("intermediate", &self.intermediate_pem.is_some()).finish_non_exhaustive()
    }
}

impl Issuer {
    /// Loads `[enrollment]`'s issuer and checks it is, or chains to, the agent CA (`agent_ca_pem`).
    pub fn load(config: &EnrollmentConfig, agent_ca_pem: &str) -> Result<Self, IssuerError> {
        let read = |key, path: &std::path::Path| {
            std::fs::read_to_string(path).map_err(|source| IssuerError::Read {
                key,
                path: path.display().to_string(),
                source,
            })
        };
        let cert_pem = read("enrollment.issuer_cert_file", &config.issuer_cert_file)?;
        let key_pem = SecretString::new(read("enrollment.issuer_key_file", &config.issuer_key_file)?);
        let ca = CertificateAuthority::load(&cert_pem, &key_pem)?;
        let agent_ca_fingerprint = ca_fingerprint(agent_ca_pem).ok_or(IssuerError::AgentCa)?;
        let issuer_fingerprint = ca_fingerprint(&cert_pem).ok_or(IssuerError::AgentCa)?;
        let intermediate_pem = if issuer_fingerprint == agent_ca_fingerprint {
            None
        } else {
            if !signed_by(&cert_pem, agent_ca_pem) {
                return Err(IssuerError::NotUnderAgentCa);
            }
            Some(first_certificate_pem(&cert_pem).ok_or(IssuerError::AgentCa)?)
        };
        Ok(Self {
            ca,
            intermediate_pem,
            agent_ca_pem: agent_ca_pem.to_owned(),
            agent_ca_fingerprint,
            lifetime: config.certificate_lifetime,
        })
    }

    /// Signs a certificate for `identity` and the request's key; the chain (PEM) and its expiry.
    fn issue(&self, identity: &AgentIdentity, request: &AgentRequest) -> Result<(String, i64), Status> {
        let leaf = self.ca.issue_agent_for_key(identity, request, self.lifetime).map_err(|e| {
            tracing::error!(error = %e, "signing an agent certificate failed");
            Status::internal("the relay could not sign the certificate")
        })?;
        let expires = CertificateDer::from_pem_slice(leaf.as_bytes())
            .ok()
            .and_then(|der| certificate_expiry_unix(der.as_ref()))
            .unwrap_or_default();
        let chain = match &self.intermediate_pem {
            Some(intermediate) => format!("{leaf}{intermediate}"),
            None => leaf,
        };
        Ok((chain, expires))
    }
}

/// Whether the first certificate of `child_pem` is signed by the first of `parent_pem`.
fn signed_by(child_pem: &str, parent_pem: &str) -> bool {
    use x509_parser::prelude::FromDer as _;
    let der = |pem: &str| CertificateDer::pem_slice_iter(pem.as_bytes()).next().and_then(Result::ok);
    let (Some(child), Some(parent)) = (der(child_pem), der(parent_pem)) else { return false };
    let (Ok((_, child)), Ok((_, parent))) = (
        x509_parser::certificate::X509Certificate::from_der(child.as_ref()),
        x509_parser::certificate::X509Certificate::from_der(parent.as_ref()),
    ) else {
        return false;
    };
    child.verify_signature(Some(parent.public_key())).is_ok()
}

fn first_certificate_pem(pem: &str) -> Option<String> {
    let der: CertificateDer<'static> = CertificateDer::pem_slice_iter(pem.as_bytes()).next()?.ok()?;
    let body = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der.as_ref());
    let lines: Vec<&str> = body.as_bytes().chunks(64).filter_map(|c| std::str::from_utf8(c).ok()).collect();
    Some(format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n")))
}

/// The `AgentEnrollment` gRPC service.
#[derive(Debug)]
pub struct EnrollmentService {
    issuer: Option<Arc<Issuer>>,
    store: Arc<dyn Store>,
    revocations: Arc<Revocations>,
    audit: Arc<Audit>,
    limiter: RateLimiter<IpAddr>,
}

/// Why an enrollment was refused, as audited.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    NotConfigured,
    RateLimited,
    Malformed,
    WrongCa,
    Unknown,
    Forged,
    Used,
    Expired,
    BadRequest,
    Widening,
    Internal,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Self::NotConfigured => "not_configured",
            Self::RateLimited => "rate_limited",
            Self::Malformed => "malformed_token",
            Self::WrongCa => "wrong_ca",
            Self::Unknown => "unknown_token",
            Self::Forged => "forged_token",
            Self::Used => "used_token",
            Self::Expired => "expired_token",
            Self::BadRequest => "bad_request",
            Self::Widening => "widening",
            Self::Internal => "internal",
        }
    }
}

impl EnrollmentService {
    /// A service signing with `issuer` (none: enrollment and renewal are refused, saying how to
    /// turn them on), allowing `per_minute` enrollments per client address.
    pub fn new(
        issuer: Option<Arc<Issuer>>,
        store: Arc<dyn Store>,
        revocations: Arc<Revocations>,
        audit: Arc<Audit>,
        per_minute: u32,
    ) -> Self {
        Self { issuer, store, revocations, audit, limiter: RateLimiter::new(per_minute, Duration::from_secs(60)) }
    }

    fn issuer(&self) -> Result<&Issuer, Status> {
        self.issuer.as_deref().ok_or_else(|| {
            Status::failed_precondition(
                "this relay does not sign agent certificates; set [enrollment] issuer_cert_file and issuer_key_file \
                 in its configuration, or issue one with `pwrelay pki issue-agent`",
            )
        })
    }

    /// When `agent` was revoked (Unix ms), as the store has it now: not the deny list each
    /// replica reloads every 2 s, so that no certificate is issued on a revocation not yet seen.
    async fn revoked_at(&self, agent: &str) -> Result<Option<i64>, crate::store::StoreError> {
        let revocations = self.store.revocations().await?;
        Ok(revocations.iter().find(|r| r.agent == agent).map(|r| r.revoked.0))
    }

    /// Waits, when the agent was revoked (at `revoked`) in the current second, for the next one. A
    /// certificate's notBefore has whole seconds, and a revocation refuses the certificates whose
    /// notBefore is before it: one issued in the same second, after the revocation, would be
    /// refused too.
    async fn after_revocation(revoked: Option<i64>) -> Result<(), Duration> {
        match issue_wait(revoked, Timestamp::now().0) {
            None => Ok(()),
            Some(wait) if wait <= MAX_ISSUE_WAIT => {
                tokio::time::sleep(wait).await;
                Ok(())
            }
            Some(wait) => Err(wait),
        }
    }

    async fn enroll_checked(
        &self,
        peer: Option<SocketAddr>,
        request: EnrollRequest,
    ) -> Result<EnrollResponse, (Refusal, Status)> {
        let issuer = self.issuer().map_err(|s| (Refusal::NotConfigured, s))?;
        if let Some(ip) = peer.map(|p| p.ip()) {
            self.limiter.check(&ip).map_err(|wait| {
                (
                    Refusal::RateLimited,
                    Status::resource_exhausted(format!(
                        "too many enrollments from this address; try again in {wait} s"
                    )),
                )
            })?;
        }
        let token = EnrollmentToken::parse(&request.token)
            .map_err(|e| (Refusal::Malformed, Status::invalid_argument(e.to_string())))?;
        let denied = |reason: Refusal, message: &str| (reason, Status::permission_denied(message.to_owned()));
        if token.ca_fingerprint != issuer.agent_ca_fingerprint {
            return Err(denied(
                Refusal::WrongCa,
                &format!(
                    "the token pins CA {}, but this relay's agent CA is {}; make the token on this relay",
                    fingerprint_text(&token.ca_fingerprint),
                    fingerprint_text(&issuer.agent_ca_fingerprint)
                ),
            ));
        }
        let id = token.id.hex();
        let store_failed = |e: crate::store::StoreError| {
            tracing::error!(error = %e, "the enrollment store failed");
            (Refusal::Internal, Status::unavailable("the relay's store failed; try again"))
        };
        let invalid =
            "the enrollment token is not valid: unknown or forged; make a new one with `pwrelay agents enroll-token`";
        let stored = self
            .store
            .enrollment_token(&id)
            .await
            .map_err(store_failed)?
            .ok_or_else(|| denied(Refusal::Unknown, invalid))?;
        let hash = token.secret_sha256();
        if !bool::from(hash.as_slice().ct_eq(stored.secret_sha256.as_slice())) {
            return Err(denied(Refusal::Forged, invalid));
        }
        if stored.used.is_some() {
            return Err(denied(Refusal::Used, "the enrollment token was used already; make a new one"));
        }
        let now = Timestamp::now();
        if stored.expires <= now {
            return Err(denied(Refusal::Expired, "the enrollment token has expired; make a new one"));
        }
        let csr = AgentRequest::from_der(&request.csr_der)
            .map_err(|e| (Refusal::BadRequest, Status::invalid_argument(e.to_string())))?;
        let identity = AgentIdentity { name: stored.agent.clone(), domains: stored.domains.clone() };
        check_requested_names(&csr, &identity).map_err(|m| denied(Refusal::Widening, &m))?;
        let revoked = self.revoked_at(identity.name.as_str()).await.map_err(store_failed)?;
        Self::after_revocation(revoked)
            .await
            .map_err(|wait| (Refusal::Internal, revoked_ahead(&identity.name, wait)))?;
        // The token is used (and its expiry checked) at the time it is used, after any wait.
        let now = Timestamp::now();
        if stored.expires <= now {
            return Err(denied(Refusal::Expired, "the enrollment token has expired; make a new one"));
        }
        let peer_text = peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
        if !self.store.use_enrollment_token(&id, &hash, now, &peer_text).await.map_err(store_failed)? {
            return Err(denied(Refusal::Used, "the enrollment token was used already; make a new one"));
        }
        let (chain, expires_unix) = issuer.issue(&identity, &csr).map_err(|s| (Refusal::Internal, s))?;
        tracing::info!(agent = %identity.name, peer = %peer_text, "agent enrolled");
        let event = Event::new(Kind::AgentEnrolled)
            .agent(&identity.name)
            .detail("domains", identity.domains.iter().map(DomainName::as_str).collect::<Vec<_>>())
            .detail("token", id.as_str())
            .detail("expires_unix", expires_unix);
        self.audit.record(with_address(event, peer));
        Ok(EnrollResponse {
            certificate_chain_pem: chain,
            ca_pem: issuer.agent_ca_pem.clone(),
            agent: identity.name.to_string(),
            domains: identity.domains.iter().map(ToString::to_string).collect(),
            expires_unix,
        })
    }
}

/// Longest an enrollment waits for its agent's revocation to be in the past by a whole second;
/// a revocation further ahead is a clock difference between hosts, refused with a message.
const MAX_ISSUE_WAIT: Duration = Duration::from_secs(2);

/// The refusal of a certificate for `agent`, revoked `wait` ahead of this relay's clock.
fn revoked_ahead(agent: &impl std::fmt::Display, wait: Duration) -> Status {
    Status::unavailable(format!(
        "agent {agent} was revoked at a time this relay's clock reaches only in {} s; check the hosts' clocks and try again",
        wait.as_secs() + 1
    ))
}

/// How long to wait at `now_ms` before issuing a certificate for an agent revoked at
/// `revoked_ms`, so that its notBefore (`now` in whole seconds) is not before the revocation.
fn issue_wait(revoked_ms: Option<i64>, now_ms: i64) -> Option<Duration> {
    let revoked = revoked_ms?;
    let first_accepted = revoked.div_euclid(1000) * 1000 + if revoked.rem_euclid(1000) == 0 { 0 } else { 1000 };
    (now_ms.div_euclid(1000) * 1000 < first_accepted)
        .then(|| Duration::from_millis(u64::try_from(first_accepted - now_ms).unwrap_or(0)))
}

/// The event with the caller's address, when known.
fn with_address(event: Event, peer: Option<SocketAddr>) -> Event {
    match peer {
        Some(peer) => event.address(peer.ip()),
        None => event,
    }
}

/// The request's pwrelay names may repeat the granted identity, never add to it.
fn check_requested_names(request: &AgentRequest, granted: &AgentIdentity) -> Result<(), String> {
    let granted_domains: BTreeSet<&str> = granted.domains.iter().map(DomainName::as_str).collect();
    for uri in &request.requested_uris {
        if let Some(name) = uri.strip_prefix(AGENT_URI_PREFIX) {
            if name != granted.name.as_str() {
                return Err(format!(
                    "the certificate request asks for agent name {}, but the token grants {}",
                    crate::untrusted::Untrusted(name),
                    granted.name
                ));
            }
        } else if let Some(domain) = uri.strip_prefix(DOMAIN_URI_PREFIX) {
            if !granted_domains.contains(domain.to_ascii_lowercase().as_str()) {
                return Err(format!(
                    "the certificate request asks for domain {}, which the token does not grant (it grants {})",
                    crate::untrusted::Untrusted(domain),
                    granted_domains.iter().copied().collect::<Vec<_>>().join(", ")
                ));
            }
        } else {
            return Err(format!(
                "the certificate request asks for {}, which pwrelay does not issue",
                crate::untrusted::Untrusted(uri)
            ));
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl AgentEnrollment for EnrollmentService {
    async fn enroll(&self, request: Request<EnrollRequest>) -> Result<Response<EnrollResponse>, Status> {
        let peer = request.remote_addr();
        match self.enroll_checked(peer, request.into_inner()).await {
            Ok(response) => Ok(Response::new(response)),
            Err((reason, status)) => {
                tracing::warn!(reason = reason.as_str(), peer = ?peer, error = %status.message(), "enrollment refused");
                let event = Event::new(Kind::EnrollRefused).detail("reason", reason.as_str());
                self.audit.record(with_address(event, peer));
                Err(status)
            }
        }
    }

    async fn renew(&self, request: Request<RenewRequest>) -> Result<Response<RenewResponse>, Status> {
        let peer = request.remote_addr();
        let leaf = request
            .peer_certs()
            .and_then(|certs| certs.first().map(|c| c.as_ref().to_vec()))
            .ok_or_else(|| Status::unauthenticated("renewal needs the agent's current client certificate"))?;
        let refuse = |status: Status, agent: &str| {
            tracing::warn!(agent, peer = ?peer, error = %status.message(), "renewal refused");
            let event = Event::new(Kind::RenewRefused).agent(agent).untrusted("message", status.message());
            self.audit.record(with_address(event, peer));
            status
        };
        let identity = AgentIdentity::from_certificate_der(&leaf)
            .map_err(|e| refuse(Status::permission_denied(e.to_string()), "unknown"))?;
        let agent = identity.name.to_string();
        let issuer = self.issuer().map_err(|s| refuse(s, &agent))?;
        // The deny list as the store has it now, not as this replica last loaded it: a revoked
        // agent must not renew into a certificate newer than its revocation.
        let revoked = self.revoked_at(&agent).await.map_err(|e| {
            tracing::error!(error = %e, "the enrollment store failed");
            refuse(Status::unavailable("the relay's store failed; try again"), &agent)
        })?;
        let not_before_ms = subject_of(&leaf).map_or(i64::MIN, |(_, not_before_ms)| not_before_ms);
        if self.revocations.refusal(&agent, not_before_ms).is_some() || revoked.is_some_and(|r| not_before_ms < r) {
            return Err(refuse(Status::permission_denied(format!("agent {agent} is revoked")), &agent));
        }
        Self::after_revocation(revoked).await.map_err(|wait| refuse(revoked_ahead(&agent, wait), &agent))?;
        let csr = AgentRequest::from_der(&request.into_inner().csr_der)
            .map_err(|e| refuse(Status::invalid_argument(e.to_string()), &agent))?;
        check_requested_names(&csr, &identity).map_err(|m| refuse(Status::permission_denied(m), &agent))?;
        let (chain, expires_unix) = issuer.issue(&identity, &csr).map_err(|s| refuse(s, &agent))?;
        tracing::info!(%agent, peer = ?peer, expires_unix, "agent certificate renewed");
        let event = Event::new(Kind::CertificateRenewed).agent(&agent).detail("expires_unix", expires_unix);
        self.audit.record(with_address(event, peer));
        Ok(Response::new(RenewResponse { certificate_chain_pem: chain, expires_unix }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path, issuer: &pwrelay_shared::pki::IssuedCertificate) -> EnrollmentConfig {
        std::fs::write(dir.join("issuer.pem"), &issuer.cert_pem).expect("write");
        std::fs::write(dir.join("issuer.key"), issuer.key_pem.expose_secret()).expect("write");
        EnrollmentConfig {
            issuer_cert_file: dir.join("issuer.pem"),
            issuer_key_file: dir.join("issuer.key"),
            certificate_lifetime: Duration::from_secs(60),
            per_address_per_minute: 10,
        }
    }

    #[test]
    fn the_issuer_is_the_agent_ca_or_an_intermediate_it_signed() {
        let dir = tempfile::tempdir().expect("dir");
        let (root, root_files) = CertificateAuthority::generate_root("root", 30).expect("root");
        let (_, stranger_files) = CertificateAuthority::generate("stranger", 30).expect("stranger");
        let intermediate = root.issue_intermediate("issuing", 30).expect("intermediate");

        let same = Issuer::load(&config(dir.path(), &root_files), &root_files.cert_pem).expect("the CA itself");
        assert!(same.intermediate_pem.is_none());
        let under = Issuer::load(&config(dir.path(), &intermediate), &root_files.cert_pem).expect("an intermediate");
        assert!(under.intermediate_pem.is_some(), "its certificate goes with every agent certificate");
        let foreign = Issuer::load(&config(dir.path(), &stranger_files), &root_files.cert_pem);
        assert!(matches!(foreign, Err(IssuerError::NotUnderAgentCa)), "{foreign:?}");
    }

    #[test]
    fn a_certificate_is_issued_in_a_second_after_its_agents_revocation() {
        assert_eq!(issue_wait(None, 12_300), None, "never revoked");
        assert_eq!(issue_wait(Some(11_999), 12_300), None, "revoked in an earlier second");
        assert_eq!(issue_wait(Some(12_000), 12_300), None, "notBefore 12 s is not before a revocation at 12.000 s");
        assert_eq!(
            issue_wait(Some(12_200), 12_300),
            Some(Duration::from_millis(700)),
            "the same second: wait for 13 s"
        );
        assert_eq!(issue_wait(Some(12_900), 12_300), Some(Duration::from_millis(700)), "ahead in the same second");
        assert_eq!(issue_wait(Some(15_500), 12_300), Some(Duration::from_millis(3_700)), "seconds ahead");
        for (revoked, now) in [(12_200, 12_300), (12_900, 12_300), (15_500, 12_300), (12_000, 12_000)] {
            let wait = issue_wait(Some(revoked), now).map_or(0, |w| i64::try_from(w.as_millis()).expect("ms"));
            let not_before = (now + wait).div_euclid(1000) * 1000;
            assert!(
                not_before >= revoked,
                "issued at {} ms: notBefore {not_before} is not before {revoked}",
                now + wait
            );
        }
    }

    #[test]
    fn a_request_may_repeat_the_grant_but_not_widen_it() {
        let granted = AgentIdentity {
            name: pwrelay_shared::domain::AgentName::parse("site-a").expect("name"),
            domains: [DomainName::parse("a.test").expect("d")].into(),
        };
        let request = |identity: Option<&AgentIdentity>| {
            let (der, _) = pwrelay_shared::pki::certificate_request(identity).expect("csr");
            AgentRequest::from_der(&der).expect("parses")
        };
        assert!(check_requested_names(&request(None), &granted).is_ok());
        assert!(check_requested_names(&request(Some(&granted)), &granted).is_ok());
        let renamed =
            AgentIdentity { name: pwrelay_shared::domain::AgentName::parse("site-b").expect("n"), ..granted.clone() };
        assert!(check_requested_names(&request(Some(&renamed)), &granted).unwrap_err().contains("site-b"));
        let mut wider = granted.clone();
        wider.domains.insert(DomainName::parse("b.test").expect("d"));
        assert!(check_requested_names(&request(Some(&wider)), &granted).unwrap_err().contains("b.test"));
        assert!(AgentRequest::from_der(b"not a request").is_err());
    }
}
