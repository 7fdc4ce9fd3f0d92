//! Every rustls configuration of the product is built here, with the ring provider and TLS 1.2+.
//!
//! - [`link_server`]: the relay's agent-link listener; a client certificate, when presented, must
//!   chain to the agent CA and pass the relay's deny list; a client without one reaches only the
//!   enrollment call (every other call refuses it).
//! - [`link_client`]: the agent's side of the link; presents its client certificate and checks the
//!   relay's chain and name. [`enrollment_client`]: the agent before it has a certificate; trusts
//!   the CA whose fingerprint its enrollment token carries, found in the chain the relay presents.
//! - [`https_server`]: the relay's public HTTPS API (no client certificates).
//! - [`ldap_client`]: the agent's LDAPS/StartTLS connections to domain controllers.
//! - [`https_client`]: HTTPS to a server of a private CA; [`public_https_client`]: HTTPS to
//!   public servers (the relay's webhook receivers), verified against the system's trust store.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// ALPN id of HTTP/2 (gRPC).
const ALPN_H2: &[u8] = b"h2";
/// ALPN id of HTTP/1.1.
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the material (e.g. key does not match certificate).
    #[error("{context}: {source}")]
    Rustls {
        /// What was being built.
        context: &'static str,
        /// The cause.
        source: rustls::Error,
    },
    /// The client verifier could not be built from the CA.
    #[error("the agent CA cannot verify client certificates: {0}")]
    Verifier(String),
}

/// PEM material of one TLS endpoint: a certificate chain and its private key.
#[derive(Debug)]
pub struct CertifiedKey {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl CertifiedKey {
    /// Loads a certificate chain file and a private key file (PEM).
    pub fn from_files(cert_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        let chain = certificates_from_file(cert_file)?;
        let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| TlsError::File {
            path: key_file.display().to_string(),
            reason: format!("no usable PEM private key ({e})"),
        })?;
        Ok(Self { chain, key })
    }

    /// The DER of the chain's first (leaf) certificate.
    pub fn leaf(&self) -> Option<&[u8]> {
        self.chain.first().map(|der| der.as_ref())
    }

    /// Appends `certificate` to the chain unless it is already in it (the relay serves its agent
    /// CA with its link certificate, so that an enrolling agent can pin it by fingerprint).
    pub fn append_to_chain(&mut self, certificate: CertificateDer<'static>) {
        if !self.chain.contains(&certificate) {
            self.chain.push(certificate);
        }
    }

    /// Parses PEM text (certificate chain, private key).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::File { path: "<certificate>".into(), reason: e.to_string() })?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| TlsError::File { path: "<private key>".into(), reason: e.to_string() })?;
        Ok(Self { chain, key })
    }
}

/// A set of trusted CA certificates.
#[derive(Debug, Clone)]
pub struct TrustAnchors(Arc<RootCertStore>);

impl TrustAnchors {
    /// Loads CA certificates from a PEM file.
    pub fn from_file(path: &Path) -> Result<Self, TlsError> {
        Self::from_certificates(certificates_from_file(path)?, &path.display().to_string())
    }

    /// Parses CA certificates from PEM text.
    pub fn from_pem(pem: &str) -> Result<Self, TlsError> {
        let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::File { path: "<ca>".into(), reason: e.to_string() })?;
        Self::from_certificates(certs, "<ca>")
    }

    fn from_certificates(certs: Vec<CertificateDer<'static>>, origin: &str) -> Result<Self, TlsError> {
        let mut store = RootCertStore::empty();
        let (added, _ignored) = store.add_parsable_certificates(certs);
        if added == 0 {
            return Err(TlsError::File { path: origin.to_owned(), reason: "holds no usable CA certificate".into() });
        }
        Ok(Self(Arc::new(store)))
    }
}

fn certificates_from_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_err = |reason: String| TlsError::File { path: path.display().to_string(), reason };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(format!("cannot be read ({e})")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(format!("is not valid PEM ({e})")))?;
    if certs.is_empty() {
        return Err(file_err("holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// The crypto provider every configuration uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs the ring provider as the process default (for libraries that build their own
/// configurations). Call once at the start of `main`; later calls are harmless.
pub fn install_default_provider() {
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
}

fn server_builder() -> Result<rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier>, TlsError> {
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls { context: "tls versions", source })
}

fn client_builder() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, TlsError> {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls { context: "tls versions", source })
}

/// Decides whether a client certificate that chains to the agent CA is still admitted (the
/// relay's deny list of revoked agents). Called during the handshake; it must not block.
pub trait ClientCertificateCheck: Send + Sync + std::fmt::Debug {
    /// `Err(reason)` refuses the certificate (DER of the leaf).
    fn admit(&self, leaf: &[u8]) -> Result<(), String>;
}

/// Admits every certificate that chains to the agent CA (tests, and relays without a store).
#[derive(Debug, Clone, Copy, Default)]
pub struct AdmitEvery;

impl ClientCertificateCheck for AdmitEvery {
    fn admit(&self, _leaf: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// The relay's agent-link listener: HTTP/2 only. A client certificate, when presented, must chain
/// to `agent_ca` and pass `check`; a client may also come without one, which only the enrollment
/// call accepts (the link service refuses such a peer on every other call).
pub fn link_server(
    identity: CertifiedKey,
    agent_ca: &TrustAnchors,
    check: Arc<dyn ClientCertificateCheck>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let inner = WebPkiClientVerifier::builder_with_provider(agent_ca.0.clone(), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let verifier = Arc::new(CheckedClientVerifier { inner, check });
    let mut config = server_builder()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain, identity.key)
        .map_err(|source| TlsError::Rustls { context: "relay link certificate", source })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The relay's HTTPS API listener: HTTP/2 and HTTP/1.1, no client certificates.
pub fn https_server(identity: CertifiedKey) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = server_builder()?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)
        .map_err(|source| TlsError::Rustls { context: "api certificate", source })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// The agent's side of the link: HTTP/2, presents `identity`, trusts only `relay_ca`.
pub fn link_client(identity: CertifiedKey, relay_ca: &TrustAnchors) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = WebPkiServerVerifier::builder_with_provider(relay_ca.0.clone(), provider())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = client_builder()?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(identity.chain, identity.key)
        .map_err(|source| TlsError::Rustls { context: "agent client certificate", source })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The agent before it holds a certificate (`pwrelay-agent enroll`): HTTP/2, no client
/// certificate, and the relay is trusted only if the chain it presents holds a CA certificate
/// whose SHA-256 is `ca_fingerprint` and its certificate chains to that CA for the expected name.
/// Nothing is sent to a relay that fails this (the token's secret included).
pub fn enrollment_client(ca_fingerprint: [u8; 32]) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = Arc::new(PinnedCaVerifier { fingerprint: ca_fingerprint, provider: provider() });
    let mut config = client_builder()?.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Verifies the relay against the CA in its own chain whose fingerprint the token pins.
#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let pinned = intermediates
            .iter()
            .find(|cert| crate::enrollment::sha256(cert.as_ref()) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the relay presented no CA certificate with the enrollment token's fingerprint {}; check the \
                     relay URL, or make a new token on this relay",
                    crate::enrollment::fingerprint_text(&self.fingerprint)
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(pinned.clone().into_owned())?;
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&self.provider))
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The agent CA's verification, then the relay's deny list.
#[derive(Debug)]
struct CheckedClientVerifier {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    check: Arc<dyn ClientCertificateCheck>,
}

impl rustls::server::danger::ClientCertVerifier for CheckedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        // The check logs its own reason; the listener logs the refused handshake.
        self.check
            .admit(end_entity.as_ref())
            .map_err(|_reason| rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked))?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// An HTTPS client that trusts only `ca` (tests, the CLI client against a private-CA relay).
pub fn https_client(ca: &TrustAnchors) -> Result<Arc<ClientConfig>, TlsError> {
    let config = client_builder()?.with_root_certificates(ca.0.clone()).with_no_client_auth();
    Ok(Arc::new(config))
}

/// An HTTPS client for public servers: certificates are verified against the operating system's
/// trust store (rustls-platform-verifier); no client certificate.
pub fn public_https_client() -> Result<Arc<ClientConfig>, TlsError> {
    use rustls_platform_verifier::BuilderVerifierExt as _;
    let config = client_builder()?
        .with_platform_verifier()
        .map_err(|source| TlsError::Rustls { context: "system trust store", source })?
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The relay's client to its PostgreSQL server: trusts only `ca` when given (a private CA), else
/// the operating system's trust store; no client certificate.
pub fn database_client(ca: Option<&TrustAnchors>) -> Result<Arc<ClientConfig>, TlsError> {
    match ca {
        Some(ca) => https_client(ca),
        None => public_https_client(),
    }
}

/// The agent's LDAPS/StartTLS client: trusts only the DCs' issuing CA(s); no client certificate.
pub fn ldap_client(dc_ca: &TrustAnchors) -> Result<Arc<ClientConfig>, TlsError> {
    https_client(dc_ca)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::CertificateAuthority;

    #[test]
    fn builds_every_configuration_from_pki_material() {
        let (ca, ca_files) = CertificateAuthority::generate("test CA", 1).expect("ca");
        let anchors = TrustAnchors::from_pem(&ca_files.cert_pem).expect("anchors");
        let server = ca.issue_server(&["relay.test".into()], 1).expect("server");
        let key = |c: &crate::pki::IssuedCertificate| CertifiedKey::from_pem(&c.cert_pem, c.key_pem.expose_secret());
        assert_eq!(
            link_server(key(&server).expect("k"), &anchors, Arc::new(AdmitEvery)).expect("link").alpn_protocols,
            vec![b"h2".to_vec()]
        );
        assert!(https_server(key(&server).expect("k")).is_ok());
        let agent = ca.issue_agent(
            &crate::identity::AgentIdentity {
                name: crate::domain::AgentName::parse("a").expect("n"),
                domains: [crate::domain::DomainName::parse("x.test").expect("d")].into(),
            },
            1,
        );
        assert!(link_client(key(&agent.expect("agent")).expect("k"), &anchors).is_ok());
    }

    #[test]
    fn a_mismatched_key_is_refused() {
        let (ca, _) = CertificateAuthority::generate("test CA", 1).expect("ca");
        let a = ca.issue_server(&["a.test".into()], 1).expect("a");
        let b = ca.issue_server(&["b.test".into()], 1).expect("b");
        let mixed = CertifiedKey::from_pem(&a.cert_pem, b.key_pem.expose_secret()).expect("parse");
        assert!(https_server(mixed).is_err());
    }

    #[test]
    fn a_file_without_certificates_is_named_in_the_error() {
        let path = std::env::temp_dir().join(format!("pwrelay-empty-{}.pem", std::process::id()));
        std::fs::write(&path, "not pem").expect("write");
        let err = TrustAnchors::from_file(&path).expect_err("must fail").to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        let _ = std::fs::remove_file(&path);
    }
}
