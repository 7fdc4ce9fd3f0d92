//! Which accounts the agent may touch, and with which options: scope (allowed OUs and groups),
//! protected accounts, and requests that conflict with the account's state.
//!
//! Every refusal names the rule and the configuration key that decides it.

use pwrelay_proto::agent::v1::FailureCode;

use std::collections::HashSet;

use super::connection::{Connection, IN_CHAIN};
use super::{Account, DirectoryError};
use crate::config::DomainConfig;

/// Built-in protected groups (AdminSDHolder covers their members): Administrators, Account
/// Operators, Server Operators, Print Operators, Backup Operators, Replicator.
const PROTECTED_BUILTIN_SIDS: &[&str] =
    &["S-1-5-32-544", "S-1-5-32-548", "S-1-5-32-549", "S-1-5-32-550", "S-1-5-32-551", "S-1-5-32-552"];
/// Domain-relative RIDs of protected groups: Domain Admins, Domain Controllers, Schema Admins,
/// Enterprise Admins, Read-only Domain Controllers, Key Admins, Enterprise Key Admins.
const PROTECTED_GROUP_RIDS: &[u32] = &[512, 516, 518, 519, 521, 526, 527];
/// Protected accounts by RID: Administrator, krbtgt.
const PROTECTED_ACCOUNT_RIDS: &[u32] = &[500, 502];

/// How long the set of protected groups (with the groups nested in them) is reused before it is
/// read again. A user's own group memberships are read fresh with every job; only a group newly
/// nested into a protected group can go unnoticed for this long (AD itself takes up to an hour to
/// stamp `adminCount` on the accounts of protected groups).
pub(crate) const PROTECTED_GROUPS_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// The domain's protected groups and every group nested in them, at any depth.
#[derive(Debug, Clone)]
pub(crate) struct ProtectedGroups {
    /// The protected groups themselves (for the exact in-chain check).
    top: Vec<String>,
    /// Lower-case DNs of the protected groups and of the groups nested in them.
    dns: HashSet<String>,
    /// SIDs (text form) of the same groups, for primaryGroupID.
    sids: HashSet<String>,
    /// When they were read.
    pub(crate) read_at: std::time::Instant,
}

/// Reads the domain's protected groups (by well-known SID or RID) and the groups nested in them:
/// two searches, repeated every [`PROTECTED_GROUPS_TTL`].
pub(crate) async fn protected_groups(conn: &mut Connection, base_dn: &str) -> Result<ProtectedGroups, DirectoryError> {
    let domain_sid = conn.domain_sid(base_dn).await?;
    let clauses: String = PROTECTED_BUILTIN_SIDS
        .iter()
        .map(|s| (*s).to_owned())
        .chain(PROTECTED_GROUP_RIDS.iter().map(|rid| format!("{domain_sid}-{rid}")))
        .map(|sid| format!("(objectSid={sid})"))
        .collect();
    let top = conn.dns_and_sids(base_dn, &format!("(|{clauses})"), "protected group lookup").await?;
    let nested = if top.is_empty() {
        Vec::new()
    } else {
        let clauses: String =
            top.iter().map(|(dn, _)| format!("(memberOf:{IN_CHAIN}:={})", ldap3::ldap_escape(dn.as_str()))).collect();
        let filter = format!("(&(objectClass=group)(|{clauses}))");
        conn.dns_and_sids(base_dn, &filter, "nested protected group lookup").await?
    };
    let mut groups = ProtectedGroups {
        top: top.iter().map(|(dn, _)| dn.clone()).collect(),
        dns: HashSet::new(),
        sids: HashSet::new(),
        read_at: std::time::Instant::now(),
    };
    for (dn, sid) in top.into_iter().chain(nested) {
        groups.dns.insert(dn.to_ascii_lowercase());
        groups.sids.extend(sid);
    }
    Ok(groups)
}

fn under(dn: &str, ou: &str) -> bool {
    let normalize = |s: &str| s.to_ascii_lowercase().split(',').map(str::trim).collect::<Vec<_>>().join(",");
    let (dn, ou) = (normalize(dn), normalize(ou));
    dn.ends_with(&format!(",{ou}"))
}

/// Refuses accounts outside `domains[i].scope`.
pub(crate) async fn check_scope(
    conn: &mut Connection,
    config: &DomainConfig,
    account: &Account,
) -> Result<(), DirectoryError> {
    let scope = &config.scope;
    if scope.allowed_ous.is_empty() && scope.allowed_groups.is_empty() {
        return Ok(());
    }
    if scope.allowed_ous.iter().any(|ou| under(&account.dn, ou)) {
        return Ok(());
    }
    if conn.member_of_any(&account.dn, &scope.allowed_groups).await? {
        return Ok(());
    }
    let mut rules = Vec::new();
    if !scope.allowed_ous.is_empty() {
        rules.push(format!("not under any OU in scope.allowed_ous ({})", scope.allowed_ous.join("; ")));
    }
    if !scope.allowed_groups.is_empty() {
        rules.push(format!("not a member of any group in scope.allowed_groups ({})", scope.allowed_groups.join("; ")));
    }
    Err(DirectoryError::new(
        FailureCode::OutOfScope,
        format!(
            "{} is outside this agent's scope for {}: {}; widen the scope in the agent's configuration to manage it",
            account.dn,
            config.name,
            rules.join(" and ")
        ),
    ))
}

/// Refuses protected accounts unless `domains[i].protected.allow` names them or a group they are in.
///
/// Group membership is decided from the account's `tokenGroups` (every security group it is in,
/// transitively, computed by the DC when asked), and from its own memberOf and primaryGroupID, read
/// with the account, against `protected` (the protected groups and every group nested in them, for
/// DCs that do not let the service account read tokenGroups). When the DC sent memberOf only in
/// part, the DC is asked directly (an in-chain search).
pub(crate) async fn check_protection(
    conn: &mut Connection,
    config: &DomainConfig,
    protected: &ProtectedGroups,
    account: &Account,
) -> Result<(), DirectoryError> {
    // The DC's own transitive answer, computed now (no cache can be stale): the protected
    // groups by well-known SID, and by RID in the account's domain.
    let domain_sid =
        account.primary_group_sid.as_deref().and_then(|sid| sid.rsplit_once('-')).map(|(domain, _)| domain);
    let in_token = conn.token_groups(&account.dn).await?.is_some_and(|sids| {
        sids.iter().any(|sid| {
            PROTECTED_BUILTIN_SIDS.contains(&sid.as_str())
                || domain_sid.is_some_and(|domain| {
                    sid.strip_prefix(domain)
                        .and_then(|rest| rest.strip_prefix('-'))
                        .and_then(|rid| rid.parse::<u32>().ok())
                        .is_some_and(|rid| PROTECTED_GROUP_RIDS.contains(&rid))
                })
        })
    });
    let member = in_token
        || match &account.member_of {
            Some(groups) => groups.iter().any(|dn| protected.dns.contains(&dn.to_ascii_lowercase())),
            None => conn.member_of_any(&account.dn, &protected.top).await?,
        };
    let reason = if account.admin_count {
        Some("adminCount=1".to_owned())
    } else if account.rid.is_some_and(|rid| PROTECTED_ACCOUNT_RIDS.contains(&rid)) {
        Some("a built-in protected account".to_owned())
    } else if account.primary_group_sid.as_ref().is_some_and(|sid| protected.sids.contains(sid)) {
        Some("a member of a protected group through its primary group (primaryGroupID)".to_owned())
    } else if member {
        Some("a member of a protected group".to_owned())
    } else {
        None
    };
    let Some(reason) = reason else { return Ok(()) };
    let allow = &config.protected.allow;
    let allowed =
        allow.iter().any(|dn| dn.eq_ignore_ascii_case(&account.dn)) || conn.member_of_any(&account.dn, allow).await?;
    if allowed {
        tracing::warn!(account = %account.dn, %reason, "protected account allowed by protected.allow");
        return Ok(());
    }
    Err(DirectoryError::new(
        FailureCode::ProtectedAccount,
        format!(
            "{} is a protected account ({reason}): AdminSDHolder resets its permissions every hour, so rights \
             delegated on its OU do not reach it, and pwrelay refuses it by default; to manage it, add its DN or a \
             group it is in to protected.allow for {}; the service account then also needs rights that survive \
             AdminSDHolder (an entry on CN=AdminSDHolder,CN=System, which reaches every protected account)",
            account.dn, config.name
        ),
    ))
}

/// Refuses option combinations the account's state makes impossible; returns notes for
/// combinations that work but deserve a mention.
pub(crate) fn check_state(account: &Account, must_change: bool) -> Result<Vec<String>, DirectoryError> {
    if must_change && account.password_never_expires() {
        return Err(DirectoryError::new(
            FailureCode::AccountStateConflict,
            format!(
                "{} has 'password never expires' set, so it cannot be made to change its password at next logon; \
                 clear that flag first or send must_change=false (nothing was changed)",
                account.dn
            ),
        ));
    }
    let mut notes = Vec::new();
    if account.disabled() {
        notes.push("the account is disabled: the new password works once it is enabled".to_owned());
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_compares_dn_suffixes_case_and_space_insensitively() {
        assert!(under("CN=a,OU=Staff,DC=corp,DC=example", "ou=staff, dc=corp,dc=example"));
        assert!(!under("CN=a,OU=Staffing,DC=corp,DC=example", "OU=Staff,DC=corp,DC=example"));
        assert!(!under("OU=Staff,DC=corp,DC=example", "OU=Staff,DC=corp,DC=example"));
    }

    #[test]
    fn must_change_on_a_never_expiring_password_is_a_conflict() {
        let account = Account { dn: "CN=a".into(), user_account_control: 0x1_0200, ..Account::default() };
        let e = check_state(&account, true).expect_err("conflict");
        assert_eq!(e.code, FailureCode::AccountStateConflict);
        assert!(check_state(&account, false).expect("fine").is_empty());
        let disabled = Account { user_account_control: 0x202, ..Account::default() };
        assert_eq!(check_state(&disabled, true).expect("works").len(), 1);
    }
}
