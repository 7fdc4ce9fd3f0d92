//! The product's private PKI: one CA that signs the relay's server certificate and every agent's
//! client certificate.
//!
//! Agents trust the CA to recognise the relay; the relay trusts it to recognise agents and reads
//! each agent's identity (name and AD domains) from URI SANs (see [`crate::identity`]). Private keys
//! are ECDSA P-256 and written with mode 0600.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::{Duration, OffsetDateTime};

use crate::identity::AgentIdentity;
use crate::secret::SecretString;

/// File names inside a PKI directory made by `pwrelay pki init`.
pub mod files {
    /// The CA certificate (public; copy it to every agent).
    pub const CA_CERT: &str = "ca.pem";
    /// The CA private key (keep it offline once agents are issued).
    pub const CA_KEY: &str = "ca.key";
    /// The relay's server certificate for the agent link.
    pub const RELAY_CERT: &str = "relay.pem";
    /// The relay's server private key.
    pub const RELAY_KEY: &str = "relay.key";
    /// An agent's client certificate.
    pub const AGENT_CERT: &str = "agent.pem";
    /// An agent's client private key.
    pub const AGENT_KEY: &str = "agent.key";
    /// The relay's issuing intermediate in a two-level PKI (`pki init --two-level`).
    pub const ISSUING_CERT: &str = "issuing-ca.pem";
    /// Its private key.
    pub const ISSUING_KEY: &str = "issuing-ca.key";
}

/// Why a PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Certificate generation or parsing failed.
    #[error("certificate error: {0}")]
    Certificate(#[from] rcgen::Error),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A file that must not be overwritten exists.
    #[error("{0} already exists; remove it or choose another directory")]
    Exists(String),
    /// A server name is neither a DNS name nor an IP address.
    #[error("{0:?} is not a DNS name or IP address")]
    InvalidName(String),
    /// The OS random generator failed.
    #[error("the system random generator failed")]
    Random,
    /// A certificate signing request is unusable.
    #[error("the certificate signing request is refused: {0}")]
    Request(String),
}

/// A certificate with its private key, both PEM.
#[derive(Debug)]
pub struct IssuedCertificate {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM (PKCS#8).
    pub key_pem: SecretString,
}

/// The private CA.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority").finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Makes a new CA valid for `days`.
    pub fn generate(common_name: &str, days: i64) -> Result<(Self, IssuedCertificate), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = base_params(common_name, days)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key)?;
        let issued = IssuedCertificate { cert_pem: cert.pem(), key_pem: SecretString::new(key.serialize_pem()) };
        let ca = Self { cert_pem: cert.pem(), issuer: Issuer::new(params, key) };
        Ok((ca, issued))
    }

    /// Makes a new root CA valid for `days` that may sign one level of intermediates (the
    /// two-level PKI: keep this one offline, put an intermediate on the relay).
    pub fn generate_root(common_name: &str, days: i64) -> Result<(Self, IssuedCertificate), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = base_params(common_name, days)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key)?;
        let issued = IssuedCertificate { cert_pem: cert.pem(), key_pem: SecretString::new(key.serialize_pem()) };
        let ca = Self { cert_pem: cert.pem(), issuer: Issuer::new(params, key) };
        Ok((ca, issued))
    }

    /// Issues an intermediate CA valid for `days` that signs agent certificates (and no further
    /// CAs): the relay's online issuer in a two-level PKI.
    pub fn issue_intermediate(&self, common_name: &str, days: i64) -> Result<IssuedCertificate, PkiError> {
        let mut params = base_params(common_name, days)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        self.sign(params)
    }

    /// Loads a CA from its PEM certificate and key.
    pub fn load(cert_pem: &str, key_pem: &SecretString) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem.expose_secret())?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self { issuer, cert_pem: cert_pem.to_owned() })
    }

    /// Loads the CA kept in `dir` (`ca.pem`, `ca.key`).
    pub fn load_dir(dir: &Path) -> Result<Self, PkiError> {
        let cert = read(&dir.join(files::CA_CERT))?;
        let key = SecretString::new(read(&dir.join(files::CA_KEY))?);
        Self::load(&cert, &key)
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a TLS server certificate for `names` (DNS names or IP addresses).
    pub fn issue_server(&self, names: &[String], days: i64) -> Result<IssuedCertificate, PkiError> {
        let first = names.first().ok_or_else(|| PkiError::InvalidName(String::new()))?;
        let mut params = base_params(first, days)?;
        for name in names {
            params.subject_alt_names.push(match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.clone().try_into().map_err(|_| PkiError::InvalidName(name.clone()))?),
            });
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// Issues an agent client certificate carrying `identity` as URI SANs. Its notBefore is the
    /// moment of issue (whole seconds), not backdated like the CA's and the relay's: a revocation
    /// refuses the agent's certificates issued before it by their notBefore, so a certificate
    /// issued just after a revocation must not look older than it.
    pub fn issue_agent(&self, identity: &AgentIdentity, days: i64) -> Result<IssuedCertificate, PkiError> {
        let mut params = base_params(identity.name.as_str(), days)?;
        params.not_before = issue_time();
        for uri in identity.uris() {
            params.subject_alt_names.push(SanType::URI(uri.try_into()?));
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    /// Issues an agent client certificate for a key the agent holds (from its certificate
    /// signing request), carrying `identity` and valid from now for `lifetime`. Its notBefore is
    /// the moment of issue (whole seconds), which is what a revocation compares against.
    pub fn issue_agent_for_key(
        &self,
        identity: &AgentIdentity,
        request: &AgentRequest,
        lifetime: std::time::Duration,
    ) -> Result<String, PkiError> {
        let mut params = base_params(identity.name.as_str(), 1)?;
        let now = OffsetDateTime::now_utc();
        params.not_before = issue_time();
        params.not_after = now + Duration::seconds(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX / 2));
        for uri in identity.uris() {
            params.subject_alt_names.push(SanType::URI(uri.try_into()?));
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        Ok(params.signed_by(&request.public_key, &self.issuer)?.pem())
    }

    fn sign(&self, params: CertificateParams) -> Result<IssuedCertificate, PkiError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCertificate { cert_pem: cert.pem(), key_pem: SecretString::new(key.serialize_pem()) })
    }
}

/// A verified certificate signing request from an agent: its public key and the agent URI SANs
/// it asked for (which can only be checked against what the relay grants, never widen it).
#[derive(Debug)]
pub struct AgentRequest {
    public_key: rcgen::PublicKey,
    /// The `urn:pwrelay:` URI SANs the request names.
    pub requested_uris: Vec<String>,
}

impl AgentRequest {
    /// Parses a DER request and checks its signature and key type (ECDSA P-256 or P-384, or
    /// Ed25519); everything else it asks for is ignored except its pwrelay URI SANs.
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        let csr = rustls_pki_types::CertificateSigningRequestDer::from(der);
        let parsed = rcgen::CertificateSigningRequestParams::from_der(&csr).map_err(|e| {
            PkiError::Request(match e {
                rcgen::Error::InvalidCertificationRequestSignature => "its signature does not verify".to_owned(),
                rcgen::Error::UnsupportedSignatureAlgorithm => {
                    "its key type is not supported; use ECDSA P-256 (what pwrelay-agent enroll makes)".to_owned()
                }
                other => format!("it cannot be parsed ({other})"),
            })
        })?;
        let alg = parsed.public_key.algorithm();
        let allowed = [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519];
        if !allowed.contains(&alg) {
            return Err(PkiError::Request(
                "its key type is not supported; use ECDSA P-256 (what pwrelay-agent enroll makes)".into(),
            ));
        }
        let requested_uris = parsed
            .params
            .subject_alt_names
            .iter()
            .filter_map(|san| match san {
                SanType::URI(uri) => Some(uri.as_str().to_owned()),
                _ => None,
            })
            .filter(|uri| uri.starts_with("urn:pwrelay:"))
            .collect();
        Ok(Self { public_key: parsed.public_key, requested_uris })
    }
}

/// A fresh ECDSA P-256 key and a certificate signing request for it (DER), naming `identity`
/// when given (the relay decides the identity; the request's names can only narrow it).
pub fn certificate_request(identity: Option<&AgentIdentity>) -> Result<(Vec<u8>, SecretString), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    if let Some(identity) = identity {
        for uri in identity.uris() {
            params.subject_alt_names.push(SanType::URI(uri.try_into()?));
        }
    }
    let csr = params.serialize_request(&key)?;
    Ok((csr.der().to_vec(), SecretString::new(key.serialize_pem())))
}

/// Now, in whole seconds (the resolution of X.509 validity): an agent certificate's notBefore.
fn issue_time() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

fn base_params(common_name: &str, days: i64) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "pwrelay");
    params.distinguished_name = dn;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(days);
    let mut serial = [0u8; 16];
    SystemRandom::new().fill(&mut serial).map_err(|_| PkiError::Random)?;
    serial[0] &= 0x7f; // positive INTEGER
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io { path: path.display().to_string(), source })
}

/// Writes a public file (certificate). Refuses to overwrite unless `overwrite`.
pub fn write_public(path: &Path, contents: &str, overwrite: bool) -> Result<(), PkiError> {
    write_file(path, contents.as_bytes(), 0o644, overwrite)
}

/// Writes a private key with mode 0600. Refuses to overwrite unless `overwrite`.
pub fn write_private(path: &Path, key: &SecretString, overwrite: bool) -> Result<(), PkiError> {
    write_file(path, key.expose_secret().as_bytes(), 0o600, overwrite)
}

/// Writes `contents` to `path` with `mode`, replacing what is there (renewal's temporary files).
pub fn write_file_mode(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    write_file(path, contents, mode, true)
}

fn write_file(path: &Path, contents: &[u8], mode: u32, overwrite: bool) -> Result<(), PkiError> {
    let io_err = |source| PkiError::Io { path: path.display().to_string(), source };
    if !overwrite && path.exists() {
        return Err(PkiError::Exists(path.display().to_string()));
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_err)?;
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    let mut file = options.open(path).map_err(io_err)?;
    #[cfg(unix)]
    {
        // The mode given to open() applies only to new files; tighten an existing one too.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(mode)).map_err(io_err)?;
    }
    file.write_all(contents).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AgentName, DomainName};

    #[test]
    fn agent_certificate_round_trips_its_identity() {
        let (ca, _) = CertificateAuthority::generate("test CA", 30).expect("ca");
        let identity = AgentIdentity {
            name: AgentName::parse("site-a").expect("name"),
            domains: [
                DomainName::parse("corp.example").expect("d"),
                DomainName::parse("emea.corp.example").expect("d"),
            ]
            .into(),
        };
        let issued = ca.issue_agent(&identity, 30).expect("agent");
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(issued.cert_pem.as_bytes())
            .map(|c: rustls_pki_types::CertificateDer<'static>| c)
            .expect("pem");
        assert_eq!(AgentIdentity::from_certificate_der(&der).expect("identity"), identity);
    }

    #[test]
    fn an_agent_certificate_starts_when_it_is_issued() {
        let (ca, _) = CertificateAuthority::generate("test CA", 30).expect("ca");
        let identity = AgentIdentity {
            name: AgentName::parse("site-a").expect("name"),
            domains: [DomainName::parse("corp.example").expect("d")].into(),
        };
        let before = OffsetDateTime::now_utc().unix_timestamp();
        let issued = ca.issue_agent(&identity, 30).expect("agent");
        let after = OffsetDateTime::now_utc().unix_timestamp();
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(issued.cert_pem.as_bytes())
            .map(|c: rustls_pki_types::CertificateDer<'static>| c)
            .expect("pem");
        let (not_before, _) = crate::identity::certificate_validity_unix(&der).expect("validity");
        assert!(
            (before..=after).contains(&not_before),
            "notBefore {not_before} is the moment of issue ({before}..={after}), not backdated: a certificate \
             issued after a revocation must not look older than it"
        );
        let ca_der = rustls_pki_types::pem::PemObject::from_pem_slice(ca.cert_pem().as_bytes())
            .map(|c: rustls_pki_types::CertificateDer<'static>| c)
            .expect("CA pem");
        let (ca_not_before, _) = crate::identity::certificate_validity_unix(&ca_der).expect("CA validity");
        assert!(ca_not_before < before - 60, "the CA's own certificate stays backdated for clock skew");
    }

    #[test]
    fn server_certificate_has_no_agent_identity() {
        let (ca, _) = CertificateAuthority::generate("test CA", 30).expect("ca");
        let issued = ca.issue_server(&["relay.example".into(), "127.0.0.1".into()], 30).expect("server");
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(issued.cert_pem.as_bytes())
            .map(|c: rustls_pki_types::CertificateDer<'static>| c)
            .expect("pem");
        assert!(matches!(AgentIdentity::from_certificate_der(&der), Err(crate::identity::IdentityError::AgentName)));
    }

    #[test]
    fn private_keys_are_written_0600_and_never_overwritten() {
        let dir = std::env::temp_dir().join(format!("pwrelay-pki-test-{}", std::process::id()));
        let path = dir.join("k.key");
        let _ = fs::remove_dir_all(&dir);
        write_private(&path, &SecretString::from("key"), false).expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
        }
        assert!(matches!(write_private(&path, &SecretString::from("key"), false), Err(PkiError::Exists(_))));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_saved_ca_loads_and_signs() {
        let (_, issued) = CertificateAuthority::generate("test CA", 30).expect("ca");
        let ca = CertificateAuthority::load(&issued.cert_pem, &issued.key_pem).expect("load");
        assert!(ca.issue_server(&["relay.example".into()], 1).is_ok());
    }
}
