//! One bound LDAP connection to one DC, and the operations the agent performs on it.

use std::collections::HashSet;

use ldap3::controls::RawControl;
use ldap3::{Mod, Scope, SearchEntry};
use pwrelay_proto::agent::v1::FailureCode;
use pwrelay_shared::secret::{ScratchBuffer, SecretString};

use super::account::{self, Account};
use super::{AccountTarget, DirectoryError};

/// LDAP_SERVER_POLICY_HINTS_OID: apply password history (and age) to an administrative reset.
const POLICY_HINTS: &str = "1.2.840.113556.1.4.2239";
/// The deprecated OID of the same control, understood by older DCs.
const POLICY_HINTS_DEPRECATED: &str = "1.2.840.113556.1.4.2066";
/// The control value: SEQUENCE { INTEGER 1 }.
const POLICY_HINTS_VALUE: [u8; 5] = [0x30, 0x03, 0x02, 0x01, 0x01];
/// LDAP result: unavailableCriticalExtension.
const UNAVAILABLE_CRITICAL_EXTENSION: u32 = 12;
/// LDAP_MATCHING_RULE_IN_CHAIN: nested group membership.
pub(crate) const IN_CHAIN: &str = "1.2.840.113556.1.4.1941";

/// A bound connection.
#[derive(Clone)]
pub(crate) struct Connection {
    pub(crate) ldap: ldap3::Ldap,
    pub(crate) url: String,
    /// The DC this connection is bound to (its rootDSE `dsServiceName`), when it could be read.
    /// A URL may name several DCs (a load-balanced name); this names one.
    pub(crate) server: Option<String>,
    /// The limit of every operation (ldap3's timeout applies to the next operation only).
    pub(crate) timeout: std::time::Duration,
}

/// What to write with the password.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// pwdLastSet = 0 (change at next logon) instead of -1 (now).
    pub must_change: bool,
    /// lockoutTime = 0.
    pub unlock: bool,
    /// Send the policy hints control so history applies to the reset.
    pub enforce_history: bool,
}

/// A write to an account.
pub(crate) enum Change<'a> {
    /// A password reset, see [`Connection::write_password`].
    Password {
        /// The new password.
        password: &'a SecretString,
        /// What else to write.
        options: WriteOptions,
    },
    /// `lockoutTime` 0.
    Unlock,
}

/// Reads which DC answers on `ldap`: the rootDSE's `dsServiceName` (the DC's NTDS Settings
/// object, unique per DC).
pub(crate) async fn server_identity(ldap: &mut ldap3::Ldap, timeout: std::time::Duration) -> Option<String> {
    let (entries, _) = crate::metrics::ldap(
        "search",
        ldap.with_timeout(timeout).search("", Scope::Base, "(objectClass=*)", vec!["dsServiceName"]),
    )
    .await
    .ok()?
    .success()
    .ok()?;
    let entry = SearchEntry::construct(entries.into_iter().next()?);
    entry.attrs.get("dsServiceName")?.first().cloned()
}

impl Connection {
    /// A search within this connection's timeout, recorded in the metrics.
    async fn search(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        attributes: Vec<&str>,
    ) -> Result<ldap3::SearchResult, ldap3::LdapError> {
        let timeout = self.timeout;
        crate::metrics::ldap("search", self.ldap.with_timeout(timeout).search(base, scope, filter, attributes)).await
    }

    fn unavailable(&self, what: &str, error: ldap3::LdapError) -> DirectoryError {
        DirectoryError::unavailable(format!("{what} on {}: {error}", self.url))
    }

    /// Finds exactly one user account for `target` under `base_dn`.
    pub(crate) async fn resolve(&mut self, target: &AccountTarget, base_dn: &str) -> Result<Account, DirectoryError> {
        let (base, scope, filter) = target.search(base_dn)?;
        let not_found =
            || DirectoryError::new(FailureCode::AccountNotFound, format!("no user account {target} under {base_dn}"));
        let searched = self.search(&base, scope, &filter, account::ATTRIBUTES.to_vec()).await;
        let (entries, result) = match searched {
            Ok(search) => (search.0, search.1),
            Err(e) => return Err(self.unavailable("account search", e)),
        };
        if result.rc == 32 {
            return Err(not_found());
        }
        if result.rc != 0 {
            return Err(DirectoryError::from_result("account search", result.rc, &result.text));
        }
        let mut accounts: Vec<Account> = entries
            .into_iter()
            .filter(|e| !e.is_ref() && !e.is_intermediate())
            .map(|e| Account::from_entry(SearchEntry::construct(e)))
            .collect();
        match accounts.len() {
            1 => Ok(accounts.remove(0)),
            0 => Err(not_found()),
            n => Err(DirectoryError::new(
                FailureCode::AmbiguousAccount,
                format!("{n} user accounts match {target}; use object_guid or dn to name one"),
            )),
        }
    }

    /// Reads back, from the DC, what a write or unlock changes on `account` (password age, lockout
    /// and account flags) and returns the account with those values; the rest is as resolved.
    pub(crate) async fn read_back(&mut self, account: &Account) -> Result<Account, DirectoryError> {
        let dn = &account.dn;
        let searched = self.search(dn, Scope::Base, "(objectClass=user)", account::READ_BACK_ATTRIBUTES.to_vec()).await;
        let (entries, result) = match searched {
            Ok(search) => (search.0, search.1),
            Err(e) => return Err(self.unavailable("account read", e)),
        };
        if result.rc != 0 {
            return Err(DirectoryError::from_result("account read", result.rc, &result.text));
        }
        entries
            .into_iter()
            .find(|e| !e.is_ref())
            .map(|e| account.refreshed(&SearchEntry::construct(e)))
            .ok_or_else(|| DirectoryError::new(FailureCode::AccountNotFound, format!("{dn} cannot be read back")))
    }

    /// The first value of each of `attributes` of the object at `dn` (attributes it lacks, or that
    /// the service account cannot read, are absent).
    pub(crate) async fn attributes(
        &mut self,
        dn: &str,
        attributes: &[&str],
    ) -> Result<std::collections::HashMap<String, String>, DirectoryError> {
        let searched = self.search(dn, Scope::Base, "(objectClass=*)", attributes.to_vec()).await;
        let (entries, result) = match searched {
            Ok(search) => (search.0, search.1),
            Err(e) => return Err(self.unavailable("attribute read", e)),
        };
        if result.rc != 0 {
            return Err(DirectoryError::from_result("attribute read", result.rc, &result.text));
        }
        Ok(entries
            .into_iter()
            .filter(|e| !e.is_ref())
            .flat_map(|e| SearchEntry::construct(e).attrs)
            .filter_map(|(name, mut values)| (!values.is_empty()).then(|| (name, values.swap_remove(0))))
            .collect())
    }

    /// Whether `dn` is a member, directly or through nested groups, of any of `groups`.
    pub(crate) async fn member_of_any(&mut self, dn: &str, groups: &[String]) -> Result<bool, DirectoryError> {
        if groups.is_empty() {
            return Ok(false);
        }
        let clauses: String =
            groups.iter().map(|g| format!("(memberOf:{IN_CHAIN}:={})", ldap3::ldap_escape(g.as_str()))).collect();
        let filter = format!("(|{clauses})");
        let searched = self.search(dn, Scope::Base, &filter, vec!["1.1"]).await;
        match searched {
            Ok(search) if search.1.rc == 0 => Ok(search.0.iter().any(|e| !e.is_ref())),
            Ok(search) => Err(DirectoryError::from_result("group membership check", search.1.rc, &search.1.text)),
            Err(e) => Err(self.unavailable("group membership check", e)),
        }
    }

    /// The SIDs (text form) of every security group the account is in, transitively and with its
    /// primary group, as the DC computes them now (`tokenGroups`); `None` when the DC does not let
    /// the service account read them.
    pub(crate) async fn token_groups(&mut self, dn: &str) -> Result<Option<Vec<String>>, DirectoryError> {
        let searched = self.search(dn, Scope::Base, "(objectClass=*)", vec!["tokenGroups"]).await;
        match searched {
            Ok(search) if search.1.rc == 0 => Ok(search
                .0
                .into_iter()
                .map(SearchEntry::construct)
                .find_map(|e| e.bin_attrs.get("tokenGroups").cloned())
                .map(|sids| sids.iter().filter_map(|sid| super::account::sid_text(sid)).collect())),
            Ok(search) => Err(DirectoryError::from_result("token groups read", search.1.rc, &search.1.text)),
            Err(e) => Err(self.unavailable("token groups read", e)),
        }
    }

    /// The DN and SID (text form) of every object under `base_dn` that `filter` matches.
    pub(crate) async fn dns_and_sids(
        &mut self,
        base_dn: &str,
        filter: &str,
        what: &str,
    ) -> Result<Vec<(String, Option<String>)>, DirectoryError> {
        let searched = self.search(base_dn, Scope::Subtree, filter, vec!["objectSid"]).await;
        match searched {
            Ok(search) if search.1.rc == 0 => Ok(search
                .0
                .into_iter()
                .filter(|e| !e.is_ref())
                .map(SearchEntry::construct)
                .map(|e| {
                    let sid =
                        e.bin_attrs.get("objectSid").and_then(|v| v.first()).and_then(|sid| account::sid_text(sid));
                    (e.dn, sid)
                })
                .collect()),
            Ok(search) => Err(DirectoryError::from_result(what, search.1.rc, &search.1.text)),
            Err(e) => Err(self.unavailable(what, e)),
        }
    }

    /// The domain's SID, from the objectSid of the naming context head.
    pub(crate) async fn domain_sid(&mut self, base_dn: &str) -> Result<String, DirectoryError> {
        let searched = self.search(base_dn, Scope::Base, "(objectClass=*)", vec!["objectSid"]).await;
        let entries = match searched {
            Ok(search) if search.1.rc == 0 => search.0,
            Ok(search) => return Err(DirectoryError::from_result("domain SID lookup", search.1.rc, &search.1.text)),
            Err(e) => return Err(self.unavailable("domain SID lookup", e)),
        };
        entries
            .into_iter()
            .map(SearchEntry::construct)
            .find_map(|e| e.bin_attrs.get("objectSid").and_then(|v| v.first()).and_then(|sid| account::sid_text(sid)))
            .ok_or_else(|| {
                DirectoryError::new(
                    FailureCode::DirectoryError,
                    format!("{base_dn} has no objectSid; is base_dn the domain's naming context?"),
                )
            })
    }

    /// Resets the password (`unicodePwd` replace) and writes `pwdLastSet` (0 or -1) and, when asked,
    /// `lockoutTime` 0, in one modify.
    pub(crate) async fn write_password(
        &mut self,
        dn: &str,
        password: &SecretString,
        options: WriteOptions,
    ) -> Result<(), DirectoryError> {
        let mods = || {
            let mut mods = vec![
                replace("unicodePwd", AttrValue(unicode_pwd(password))),
                replace("pwdLastSet", AttrValue::text(if options.must_change { "0" } else { "-1" })),
            ];
            if options.unlock {
                mods.push(replace("lockoutTime", AttrValue::text("0")));
            }
            mods
        };
        if !options.enforce_history {
            return self.modify("password reset", dn, mods(), None).await;
        }
        let hinted = self.modify("password reset", dn, mods(), Some(POLICY_HINTS)).await;
        let deprecated = match hinted {
            Err(e) if e.ldap_result_code == UNAVAILABLE_CRITICAL_EXTENSION => {
                tracing::info!(dc = %self.url, "the DC does not know the policy hints control; trying its older OID");
                self.modify("password reset", dn, mods(), Some(POLICY_HINTS_DEPRECATED)).await
            }
            other => return other,
        };
        match deprecated {
            Err(e) if e.ldap_result_code == UNAVAILABLE_CRITICAL_EXTENSION => Err(DirectoryError {
                message: format!(
                    "{} supports neither policy hints control ({POLICY_HINTS} or {POLICY_HINTS_DEPRECATED}), so it \
                     cannot apply password history to a reset; nothing was changed; send enforce_history=false or use \
                     a DC that supports it (Windows Server 2012 or later)",
                    self.url
                ),
                ..e
            }),
            other => other,
        }
    }

    /// Makes `change` to the account at `dn`.
    pub(crate) async fn apply(&mut self, dn: &str, change: &Change<'_>) -> Result<(), DirectoryError> {
        match change {
            Change::Password { password, options } => self.write_password(dn, password, *options).await,
            Change::Unlock => self.unlock(dn).await,
        }
    }

    /// Clears a lockout (`lockoutTime` 0).
    pub(crate) async fn unlock(&mut self, dn: &str) -> Result<(), DirectoryError> {
        self.modify("unlock", dn, vec![replace("lockoutTime", AttrValue::text("0"))], None).await
    }

    async fn modify(
        &mut self,
        action: &str,
        dn: &str,
        mods: Vec<Mod<AttrValue>>,
        control: Option<&str>,
    ) -> Result<(), DirectoryError> {
        let ldap = match control {
            Some(oid) => self.ldap.with_controls(RawControl {
                ctype: oid.to_owned(),
                crit: true,
                val: Some(POLICY_HINTS_VALUE.to_vec()),
            }),
            None => &mut self.ldap,
        }
        .with_timeout(self.timeout);
        match crate::metrics::ldap("modify", ldap.modify(dn, mods)).await {
            Ok(result) if result.rc == 0 => Ok(()),
            Ok(result) => Err(DirectoryError::from_result(action, result.rc, &result.text)),
            // The request may have reached the DC: only a later read can tell.
            Err(e) => Err(DirectoryError { maybe_applied: true, ..self.unavailable(action, e) }),
        }
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
