//! The agent's access to Active Directory over LDAP with TLS.
//!
//! [`Directory`] holds one domain's settings. Each operation connects to the first DC in the
//! configured list that answers (LDAPS, or LDAP followed by StartTLS; certificates verified against
//! the configured CA; plaintext never), binds as the service account, and works there.

pub mod error;
pub mod target;

use std::collections::HashSet;
use std::sync::Arc;

use ldap3::{LdapConnAsync, LdapConnSettings, Mod, Scope, SearchEntry};
use pwrelay_proto::agent::v1::FailureCode;
use pwrelay_shared::domain::DomainName;
use pwrelay_shared::secret::{ScratchBuffer, SecretString};
use pwrelay_shared::tls::{self, TrustAnchors};

use crate::config::{DomainConfig, LdapTransport};
pub use error::DirectoryError;
pub use target::AccountTarget;

/// A bound LDAP connection and the DC it goes to.
struct Session {
    ldap: ldap3::Ldap,
    url: String,
}

/// What a password write did, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordWritten {
    /// The account's DN.
    pub dn: String,
    /// The DC that took the write.
    pub dc_url: String,
    /// pwdLastSet read back after the write.
    pub pwd_last_set: i64,
    /// Whether the read-back matches what was asked (0 for must-change, a time otherwise).
    pub verified: bool,
}

/// How to apply a password write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// pwdLastSet = 0 (change at next logon) instead of -1 (now).
    pub must_change: bool,
    /// lockoutTime = 0.
    pub unlock: bool,
}

/// One AD domain as the agent reaches it.
pub struct Directory {
    config: DomainConfig,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory").field("domain", &self.config.name).finish_non_exhaustive()
    }
}

impl Directory {
    /// Loads the DC CA and prepares the TLS settings.
    pub fn new(config: DomainConfig) -> Result<Self, tls::TlsError> {
        let anchors = TrustAnchors::from_file(&config.ca_file)?;
        Ok(Self { tls: tls::ldap_client(&anchors)?, config })
    }

    /// The domain.
    pub fn domain(&self) -> &DomainName {
        &self.config.name
    }

    /// Connects and binds as the service account to the first DC that answers.
    async fn session(&self) -> Result<Session, DirectoryError> {
        let mut failures = Vec::new();
        for dc in &self.config.urls {
            let settings = LdapConnSettings::new()
                .set_conn_timeout(self.config.timeout)
                .set_config(Arc::clone(&self.tls))
                .set_starttls(dc.transport == LdapTransport::StartTls);
            let (conn, mut ldap) = match LdapConnAsync::with_settings(settings, &dc.url).await {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(dc = %dc.url, error = %e, "domain controller unreachable; trying the next one");
                    failures.push(format!("{}: {e}", dc.url));
                    continue;
                }
            };
            ldap3::drive!(conn);
            ldap.with_timeout(self.config.timeout);
            let bound = ldap.simple_bind(&self.config.bind_dn, self.config.bind_password.expose_secret()).await;
            match bound {
                Ok(result) if result.rc == 0 => return Ok(Session { ldap, url: dc.url.clone() }),
                Ok(result) => {
                    let error = DirectoryError::from_result("service account bind", result.rc, &result.text);
                    if error.retryable {
                        failures.push(format!("{}: {}", dc.url, error.message));
                        continue;
                    }
                    return Err(error);
                }
                Err(e) => {
                    tracing::warn!(dc = %dc.url, error = %e, "bind to domain controller failed; trying the next one");
                    failures.push(format!("{}: {e}", dc.url));
                }
            }
        }
        Err(DirectoryError::unavailable(format!(
            "no domain controller of {} answered: {}",
            self.config.name,
            failures.join("; ")
        )))
    }

    /// Binds as the service account and returns the DC URL that answered (readiness).
    pub async fn check_bind(&self) -> Result<String, DirectoryError> {
        let mut session = self.session().await?;
        let url = session.url.clone();
        let _ = session.ldap.unbind().await;
        Ok(url)
    }

    /// Resets the target's password (`unicodePwd` replace) and writes `pwdLastSet` (0 or -1) and,
    /// when asked, `lockoutTime` 0, in one modify; then reads `pwdLastSet` back.
    pub async fn set_password(
        &self,
        target: &AccountTarget,
        password: &SecretString,
        options: WriteOptions,
    ) -> Result<PasswordWritten, DirectoryError> {
        let mut session = self.session().await?;
        let result = self.set_password_on(&mut session, target, password, options).await;
        let _ = session.ldap.unbind().await;
        result
    }

    async fn set_password_on(
        &self,
        session: &mut Session,
        target: &AccountTarget,
        password: &SecretString,
        options: WriteOptions,
    ) -> Result<PasswordWritten, DirectoryError> {
        let dn = self.resolve(session, target).await?;
        let mut mods = vec![
            replace("unicodePwd", AttrValue(unicode_pwd(password))),
            replace("pwdLastSet", AttrValue::text(if options.must_change { "0" } else { "-1" })),
        ];
        if options.unlock {
            mods.push(replace("lockoutTime", AttrValue::text("0")));
        }
        let written = session.ldap.modify(&dn, mods).await;
        match written {
            Ok(result) if result.rc == 0 => {}
            Ok(result) => return Err(DirectoryError::from_result("password reset", result.rc, &result.text)),
            Err(e) => return Err(DirectoryError::unavailable(format!("password reset on {}: {e}", session.url))),
        }
        let pwd_last_set = self.read_pwd_last_set(session, &dn).await?;
        let verified = if options.must_change { pwd_last_set == 0 } else { pwd_last_set > 0 };
        Ok(PasswordWritten { dn, dc_url: session.url.clone(), pwd_last_set, verified })
    }

    /// Finds exactly one user account for `target` under the base DN.
    async fn resolve(&self, session: &mut Session, target: &AccountTarget) -> Result<String, DirectoryError> {
        let (base, scope, filter) = target.search(&self.config.base_dn)?;
        let searched = session.ldap.search(&base, scope, &filter, vec!["distinguishedName"]).await;
        let (entries, result) = match searched {
            Ok(search) => (search.0, search.1),
            Err(e) => return Err(DirectoryError::unavailable(format!("account search on {}: {e}", session.url))),
        };
        if result.rc == 32 {
            return Err(DirectoryError::new(
                FailureCode::AccountNotFound,
                format!("no user account {target} under {}", self.config.base_dn),
            ));
        }
        if result.rc != 0 {
            return Err(DirectoryError::from_result("account search", result.rc, &result.text));
        }
        let dns: Vec<String> = entries
            .into_iter()
            .filter(|e| !e.is_ref() && !e.is_intermediate())
            .map(|e| SearchEntry::construct(e).dn)
            .collect();
        match dns.as_slice() {
            [dn] => Ok(dn.clone()),
            [] => Err(DirectoryError::new(
                FailureCode::AccountNotFound,
                format!("no user account {target} under {}", self.config.base_dn),
            )),
            many => Err(DirectoryError::new(
                FailureCode::AmbiguousAccount,
                format!("{} user accounts match {target}; use object_guid or dn to name one", many.len()),
            )),
        }
    }

    async fn read_pwd_last_set(&self, session: &mut Session, dn: &str) -> Result<i64, DirectoryError> {
        let searched = session.ldap.search(dn, Scope::Base, "(objectClass=*)", vec!["pwdLastSet"]).await;
        let (entries, result) = match searched {
            Ok(search) => (search.0, search.1),
            Err(e) => return Err(DirectoryError::unavailable(format!("read-back on {}: {e}", session.url))),
        };
        if result.rc != 0 {
            return Err(DirectoryError::from_result("read-back of pwdLastSet", result.rc, &result.text));
        }
        entries
            .into_iter()
            .map(SearchEntry::construct)
            .find_map(|e| e.attrs.get("pwdLastSet").and_then(|v| v.first()).and_then(|v| v.parse().ok()))
            .ok_or_else(|| {
                DirectoryError::new(FailureCode::VerificationFailed, format!("pwdLastSet of {dn} cannot be read back"))
            })
    }
}

/// An attribute name or value for an LDAP modify, zeroed when ldap3 drops it. (ldap3 still copies
/// it into its BER encoding buffer, which it does not zero.)
#[derive(PartialEq, Eq)]
struct AttrValue(ScratchBuffer);

impl AttrValue {
    fn text(text: &str) -> Self {
        Self(ScratchBuffer::new(text.as_bytes().to_vec()))
    }
}

impl std::hash::Hash for AttrValue {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.as_slice().hash(state);
    }
}

impl AsRef<[u8]> for AttrValue {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

fn replace(attribute: &str, value: AttrValue) -> Mod<AttrValue> {
    Mod::Replace(AttrValue::text(attribute), HashSet::from([value]))
}

/// The `unicodePwd` value: UTF-16LE of the password in double quotes, in a buffer zeroed on drop.
pub fn unicode_pwd(password: &SecretString) -> ScratchBuffer {
    let quoted = std::iter::once('"').chain(password.expose_secret().chars()).chain(std::iter::once('"'));
    let mut bytes = ScratchBuffer::new(Vec::with_capacity((password.expose_secret().len() + 2) * 2));
    let mut units = [0u16; 2];
    for c in quoted {
        for unit in c.encode_utf16(&mut units) {
            bytes.extend_from_slice(&unit.to_le_bytes());
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unicode_pwd_is_quoted_utf16le() {
        let encoded = unicode_pwd(&SecretString::from("Ab1!"));
        assert_eq!(encoded.as_slice(), b"\"\0A\0b\x001\0!\0\"\0");
        // A character outside the BMP becomes a surrogate pair.
        assert_eq!(unicode_pwd(&SecretString::from("\u{1F600}")).len(), 2 * 4);
    }
}
