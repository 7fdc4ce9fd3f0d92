//! The agent's TLS identity on the link (its certificate and key), which renewal replaces while
//! the agent runs.
//!
//! [`LinkIdentity::replace`] writes the new key (mode 0600) and certificate over
//! `relay.key_file` and `relay.cert_file` (each through a temporary file and a rename), then
//! swaps the configuration the next connection uses and tells the link, which reconnects with it:
//! no restart. Until then the open stream keeps its connection.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use pwrelay_shared::secret::SecretString;
use pwrelay_shared::tls::{self, CertifiedKey, TlsError, TrustAnchors};
use tokio::sync::watch;

/// The validity of a certificate, Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// notBefore.
    pub not_before: i64,
    /// notAfter.
    pub not_after: i64,
}

impl Validity {
    /// Of a DER certificate.
    pub fn of(der: &[u8]) -> Option<Self> {
        let (not_before, not_after) = pwrelay_shared::identity::certificate_validity_unix(der)?;
        Some(Self { not_before, not_after })
    }

    /// When to renew: two thirds into its life.
    pub fn renew_at(&self) -> i64 {
        self.not_before + (self.not_after - self.not_before) * 2 / 3
    }
}

/// Why a new certificate could not be taken into use.
#[derive(Debug, thiserror::Error)]
pub enum ReplaceError {
    /// The certificate and key do not make a TLS identity.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Writing the files failed.
    #[error("{path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

#[derive(Debug)]
struct Current {
    config: Arc<rustls::ClientConfig>,
    leaf: Vec<u8>,
}

/// The certificate and key the link presents.
#[derive(Debug)]
pub struct LinkIdentity {
    current: RwLock<Current>,
    relay_ca: TrustAnchors,
    cert_file: PathBuf,
    key_file: PathBuf,
    changed: watch::Sender<u64>,
}

impl LinkIdentity {
    /// Loads `cert_file` and `key_file`; the relay must chain to `relay_ca`.
    pub fn load(cert_file: &Path, key_file: &Path, relay_ca: TrustAnchors) -> Result<Self, TlsError> {
        let key = CertifiedKey::from_files(cert_file, key_file)?;
        let leaf = key.leaf().map(<[u8]>::to_vec).unwrap_or_default();
        let config = tls::link_client(key, &relay_ca)?;
        Ok(Self {
            current: RwLock::new(Current { config, leaf }),
            relay_ca,
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            changed: watch::channel(0).0,
        })
    }

    /// The configuration the next connection uses.
    pub fn config(&self) -> Arc<rustls::ClientConfig> {
        Arc::clone(&self.read().config)
    }

    /// The DER of the certificate in use.
    pub fn leaf(&self) -> Vec<u8> {
        self.read().leaf.clone()
    }

    /// Changes with every replacement.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a new certificate chain and key into use: checks they match, writes them over the
    /// configured files, swaps the configuration and tells the link to reconnect.
    pub fn replace(&self, chain_pem: &str, key_pem: &SecretString) -> Result<(), ReplaceError> {
        let key = CertifiedKey::from_pem(chain_pem, key_pem.expose_secret())?;
        let leaf = key.leaf().map(<[u8]>::to_vec).unwrap_or_default();
        let config = tls::link_client(key, &self.relay_ca)?;
        write_replacing(&self.key_file, key_pem.expose_secret().as_bytes(), 0o600)?;
        write_replacing(&self.cert_file, chain_pem.as_bytes(), 0o644)?;
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Current { config, leaf };
        self.changed.send_modify(|generation| *generation += 1);
        Ok(())
    }
}

/// Writes `path` through `path.new` and a rename, so it is never half written.
fn write_replacing(path: &Path, contents: &[u8], mode: u32) -> Result<(), ReplaceError> {
    let err = |source| ReplaceError::Write { path: path.display().to_string(), source };
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".new");
    let temporary = PathBuf::from(temporary);
    let _stale = std::fs::remove_file(&temporary);
    pwrelay_shared::pki::write_file_mode(&temporary, contents, mode).map_err(|e| match e {
        pwrelay_shared::pki::PkiError::Io { source, .. } => err(source),
        other => err(std::io::Error::other(other.to_string())),
    })?;
    std::fs::rename(&temporary, path).map_err(err)
}
