//! Least privilege against the throwaway Samba AD DC: the agent's directory layer bound as a
//! non-admin service account that holds only the rights `deploy/ad/grant-rights-samba.sh`
//! delegates (Reset Password, write pwdLastSet and lockoutTime on the user objects below one OU).
//!
//! Inside the OU, resets with and without must-change, unlock with a reset and unlock alone of a
//! really locked-out account work; outside it, or after the script's `--remove`, the DC refuses
//! with insufficient access. Protected accounts (`adminCount=1`) are refused by the agent; allowed
//! through `protected.allow`, they stay reachable on Samba until their ACL is stamped from
//! AdminSDHolder, after which the DC refuses. Also checks the testkit's directory-administration
//! fixtures (groups, PSOs, attributes).
//!
//! Observed on Samba 4.17: a delegated account without the Unexpire-Password right on the domain
//! head may still write pwdLastSet=-1 (the DC stores the current time), from 0 as well; Samba never
//! re-stamps `adminCount=1` accounts from AdminSDHolder (Windows' SDProp does so hourly); the
//! delegated account reads which PSO applies (`msDS-ResultantPSO`) but not the PSO's settings.

mod support;

use std::time::Duration;

use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use pwrelay_agent::config::{DomainConfig, ProtectedConfig, ScopeConfig};
use pwrelay_agent::directory::{AccountTarget, Directory, WriteOptions};
use pwrelay_proto::agent::v1::FailureCode;
use pwrelay_shared::secret::SecretString;
use pwrelay_shared::testkit::directory_admin::{UF_ACCOUNTDISABLE, UF_LOCKOUT, UF_NORMAL_ACCOUNT};
use pwrelay_shared::testkit::{self, TestDc, TestUser};
use pwrelay_shared::tls::{self, TrustAnchors};

/// A delegated OU and the agent's directory layer bound as its service account.
struct Delegated {
    ou: String,
    service: TestUser,
    dir: Directory,
}

/// The agent's directory layer bound as `account` (LDAPS, whole domain as base DN and no agent-side
/// scope, so that scope is left to the DC's access checks; the new password is checked with a bind).
fn directory_as(dc: &TestDc, account: &TestUser) -> Directory {
    directory_with(dc, account, ProtectedConfig::default())
}

/// [`directory_as`] with protected accounts allowed as `protected` says.
fn directory_with(dc: &TestDc, account: &TestUser, protected: ProtectedConfig) -> Directory {
    Directory::new(DomainConfig {
        bind_dn: account.dn.clone(),
        bind_password: account.password.clone(),
        timeout: Duration::from_secs(10),
        verify_bind: true,
        scope: ScopeConfig::default(),
        protected,
        ..support::domain_config(dc)
    })
    .expect("directory")
}

/// A new OU, a service account in CN=Users (outside the OU), and the shipped delegation script run
/// for the two.
async fn delegated(dc: &TestDc) -> Delegated {
    let ou = dc.create_ou("dlg").await;
    let service = dc.create_service_account(&format!("CN=Users,{}", dc.base_dn)).await;
    dc.delegate_password_rights(&ou, &service).await;
    let dir = directory_as(dc, &service);
    Delegated { ou, service, dir }
}

/// A raw LDAPS connection bound as `account`, for what the directory layer does not do (yet).
async fn bind_as(dc: &TestDc, account: &TestUser) -> ldap3::Ldap {
    let anchors = TrustAnchors::from_file(&dc.ca_file).expect("DC CA");
    let settings = LdapConnSettings::new().set_config(tls::ldap_client(&anchors).expect("tls"));
    let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &dc.ldaps_url).await.expect("LDAPS");
    ldap3::drive!(conn);
    ldap.simple_bind(&account.dn, account.password.expose_secret())
        .await
        .and_then(|r| r.success())
        .unwrap_or_else(|e| panic!("{} binds: {e}", account.dn));
    ldap
}

/// Resets `user`'s password through the directory layer, which must succeed and verify; returns
/// pwdLastSet as read back.
async fn reset(dir: &Directory, user: &TestUser, password: &str, options: WriteOptions) -> i64 {
    let written = dir
        .set_password(&AccountTarget::Dn(user.dn.clone()), &SecretString::from(password), options)
        .await
        .unwrap_or_else(|e| panic!("reset of {} as the delegated account failed: {e}", user.dn));
    assert!(written.verified, "the read-back after {options:?} does not match: {:?}", written.account);
    written.account.pwd_last_set
}

#[tokio::test]
async fn the_delegated_account_resets_inside_its_ou_with_and_without_must_change() {
    let dc = testkit::dc();
    let d = delegated(dc).await;
    let user = dc.create_user_in(&d.ou, "dlgu").await;

    let now = reset(&d.dir, &user, "Delegated!Pass-21", WriteOptions::default()).await;
    assert!(now > 0, "pwdLastSet=-1 becomes the current time, got {now}");
    assert!(dc.bind(&user.dn, "Delegated!Pass-21").await.ok());
    assert!(!dc.bind(&user.dn, user.password.expose_secret()).await.ok(), "the old password is gone");

    let must_change = WriteOptions { must_change: true, ..WriteOptions::default() };
    assert_eq!(reset(&d.dir, &user, "Delegated!Pass-22", must_change).await, 0);
    let bind = dc.bind(&user.dn, "Delegated!Pass-22").await;
    assert!(!bind.ok() && bind.text.contains("data 773"), "must change at next logon: {bind:?}");

    // From 0 back to "now": on Windows AD this is what the Unexpire-Password right governs. The
    // service account does not hold it (the script does not grant it), and Samba takes -1 anyway.
    let again = reset(&d.dir, &user, "Delegated!Pass-23", WriteOptions::default()).await;
    assert!(again > 0, "pwdLastSet 0 -> -1 by a delegated account, got {again}");
    assert!(dc.bind(&user.dn, "Delegated!Pass-23").await.ok());
}

#[tokio::test]
async fn the_delegated_account_unlocks_a_locked_out_user_with_a_reset() {
    let dc = testkit::dc();
    let d = delegated(dc).await;
    let user = dc.create_user_in(&d.ou, "dlgl").await;
    dc.lock_out(&user).await;
    assert_ne!(dc.attribute(&user.dn, "lockoutTime").await.as_deref().unwrap_or("0"), "0");

    let unlock = WriteOptions { unlock: true, ..WriteOptions::default() };
    reset(&d.dir, &user, "Unlocked!Pass-24", unlock).await;
    assert_eq!(dc.attribute(&user.dn, "lockoutTime").await.as_deref(), Some("0"));
    assert_eq!(dc.attribute(&user.dn, "badPwdCount").await.as_deref(), Some("0"));
    assert_eq!(dc.computed_account_control(&user.dn).await & UF_LOCKOUT, 0);
    assert!(dc.bind(&user.dn, "Unlocked!Pass-24").await.ok());
}

#[tokio::test]
async fn the_delegated_account_unlocks_without_a_reset() {
    let dc = testkit::dc();
    let d = delegated(dc).await;
    let user = dc.create_user_in(&d.ou, "dlgo").await;
    dc.lock_out(&user).await;

    let applied = d
        .dir
        .unlock(&AccountTarget::Upn(user.upn.clone()), &pwrelay_agent::directory::Unleased)
        .await
        .expect("lockoutTime=0 is delegated");
    assert!(applied.verified && !applied.account.locked_out(), "{:?}", applied.account);
    assert_eq!(dc.computed_account_control(&user.dn).await & UF_LOCKOUT, 0);
    assert!(dc.bind(&user.dn, user.password.expose_secret()).await.ok(), "the unchanged password binds again");
}

#[tokio::test]
async fn outside_the_delegated_ou_a_reset_is_access_denied() {
    let dc = testkit::dc();
    let d = delegated(dc).await;
    let outside = dc.create_user("dlgx").await; // CN=Users
    let e = d
        .dir
        .set_password(
            &AccountTarget::Upn(outside.upn.clone()),
            &SecretString::from("Outside!Pass-25"),
            WriteOptions::default(),
        )
        .await
        .expect_err("no rights outside the OU");
    assert_eq!(e.code, FailureCode::AccessDenied, "{e}");
    assert_eq!(e.ldap_result_code, 50, "{e}");
    assert!(!e.retryable);
    assert!(e.message.contains("Reset Password") && e.message.contains("pwdLastSet"), "names the rights: {e}");
    assert!(!e.message.contains("Outside!Pass-25"));
    assert!(dc.bind(&outside.dn, outside.password.expose_secret()).await.ok(), "the password is unchanged");
}

#[tokio::test]
async fn a_revoked_delegation_is_access_denied_inside_the_ou_too() {
    let dc = testkit::dc();
    let d = delegated(dc).await;
    let user = dc.create_user_in(&d.ou, "dlgr").await;
    reset(&d.dir, &user, "Before!Revoke-26", WriteOptions::default()).await;

    dc.revoke_password_rights(&d.ou, &d.service.sam).await;
    let e = d
        .dir
        .set_password(
            &AccountTarget::Dn(user.dn.clone()),
            &SecretString::from("After!Revoke-27"),
            WriteOptions::default(),
        )
        .await
        .expect_err("the rights were revoked");
    assert_eq!(e.code, FailureCode::AccessDenied, "{e}");
    assert!(dc.bind(&user.dn, "Before!Revoke-26").await.ok());
}

#[tokio::test]
async fn delegating_to_a_group_covers_its_member_service_account() {
    let dc = testkit::dc();
    let ou = dc.create_ou("dlgg").await;
    let users = format!("CN=Users,{}", dc.base_dn);
    let group = dc.create_group(&users, "pwrg").await;
    let service = dc.create_service_account(&users).await;
    dc.add_member(&group, &service.dn).await;
    let group_sam = group.trim_start_matches("CN=").split(',').next().expect("a CN");
    dc.delegate_password_rights_to(&ou, group_sam).await;
    assert_eq!(dc.attribute(&service.dn, "memberOf").await.map(|g| g.to_lowercase()), Some(group.to_lowercase()));

    let user = dc.create_user_in(&ou, "dlggu").await;
    let dir = directory_as(dc, &service);
    reset(&dir, &user, "ViaGroup!Pass-28", WriteOptions { must_change: true, unlock: true, ..WriteOptions::default() })
        .await;
    assert!(dc.bind(&user.dn, "ViaGroup!Pass-28").await.text.contains("data 773"));
}

#[tokio::test]
async fn the_agent_refuses_an_admin_count_account_inside_the_ou() {
    let dc = testkit::dc();
    let d = delegated(dc).await;
    let user = dc.create_user_in(&d.ou, "dlga").await;
    dc.set_attribute(&user.dn, "adminCount", "1").await;
    let e = d
        .dir
        .set_password(
            &AccountTarget::Dn(user.dn.clone()),
            &SecretString::from("Protected!Pass-29"),
            WriteOptions::default(),
        )
        .await
        .expect_err("protected accounts are refused by default");
    assert_eq!(e.code, FailureCode::ProtectedAccount, "{e}");
    assert!(e.message.contains("adminCount=1") && e.message.contains("protected.allow"), "{e}");
    assert!(dc.bind(&user.dn, user.password.expose_secret()).await.ok(), "the password is unchanged");
}

#[tokio::test]
async fn samba_lets_ou_delegation_reach_an_allowed_admin_count_account() {
    // Records Samba's behaviour: adminCount=1 alone changes no permission, because Samba has no
    // SDProp re-stamping the ACL from AdminSDHolder. On Windows AD the account's DACL is replaced
    // within the hour and this reset fails as in the test below.
    let dc = testkit::dc();
    let d = delegated(dc).await;
    let user = dc.create_user_in(&d.ou, "dlgb").await;
    dc.set_attribute(&user.dn, "adminCount", "1").await;
    let dir = directory_with(dc, &d.service, ProtectedConfig { allow: vec![user.dn.clone()] });
    reset(&dir, &user, "Protected!Pass-30", WriteOptions::default()).await;
    assert!(dc.bind(&user.dn, "Protected!Pass-30").await.ok());
    assert_eq!(dc.attribute(&user.dn, "adminCount").await.as_deref(), Some("1"));
}

#[tokio::test]
async fn after_the_admin_sd_holder_stamp_ou_delegation_no_longer_reaches_the_account() {
    // What Windows AD does to protected accounts (SDProp), done by hand: even with the account in
    // protected.allow, the DC refuses, because its DACL no longer inherits the OU's delegation.
    let dc = testkit::dc();
    let d = delegated(dc).await;
    let user = dc.create_user_in(&d.ou, "dlgs").await;
    dc.stamp_admin_sd_holder(&user.dn).await;
    let dir = directory_with(dc, &d.service, ProtectedConfig { allow: vec![user.dn.clone()] });
    let e = dir
        .set_password(
            &AccountTarget::Dn(user.dn.clone()),
            &SecretString::from("Stamped!Pass-31"),
            WriteOptions::default(),
        )
        .await
        .expect_err("the protected DACL holds no delegation");
    assert_eq!(e.code, FailureCode::AccessDenied, "{e}");
    assert!(dc.bind(&user.dn, user.password.expose_secret()).await.ok(), "the password is unchanged");
}

#[tokio::test]
async fn a_pso_becomes_the_users_resultant_policy_and_the_dc_enforces_it() {
    let dc = testkit::dc();
    let d = delegated(dc).await;
    let user = dc.create_user_in(&d.ou, "dlgp").await;
    let pso = dc.create_pso(&user.dn, 16, true, 3).await;
    assert_eq!(dc.attribute(&user.dn, "msDS-ResultantPSO").await.map(|p| p.to_lowercase()), Some(pso.to_lowercase()));
    assert_eq!(dc.attribute(&pso, "msDS-MinimumPasswordLength").await.as_deref(), Some("16"));

    let e = d
        .dir
        .set_password(
            &AccountTarget::Dn(user.dn.clone()),
            &SecretString::from("Short!Pass-32"),
            WriteOptions::default(),
        )
        .await
        .expect_err("13 characters < the PSO's 16");
    assert_eq!(e.code, FailureCode::PolicyViolation, "{e}");
    reset(&d.dir, &user, "LongEnough!Pass-3232", WriteOptions::default()).await;
}

#[tokio::test]
async fn set_attribute_disables_an_account() {
    let dc = testkit::dc();
    let user = dc.create_user_in(&format!("CN=Users,{}", dc.base_dn), "dlgd").await;
    dc.set_attribute(&user.dn, "userAccountControl", &(UF_NORMAL_ACCOUNT | UF_ACCOUNTDISABLE).to_string()).await;
    let bind = dc.bind(&user.dn, user.password.expose_secret()).await;
    assert!(!bind.ok() && bind.text.contains("data 533"), "a disabled account: {bind:?}");
}

#[tokio::test]
async fn the_delegated_account_reads_the_resultant_pso_name_but_not_its_settings() {
    // Records a default of AD that Samba shares: PSOs are readable by administrators only, so the
    // agent sees which PSO applies but not its rules, while it can read the domain policy.
    let dc = testkit::dc();
    let d = delegated(dc).await;
    let user = dc.create_user_in(&d.ou, "dlgv").await;
    let pso = dc.create_pso(&user.dn, 12, true, 5).await;
    let mut ldap = bind_as(dc, &d.service).await;
    let read = |entries: Vec<ldap3::ResultEntry>, attr: &str| {
        entries.into_iter().map(SearchEntry::construct).find_map(|e| e.attrs.get(attr).and_then(|v| v.first().cloned()))
    };
    let (entries, _) = ldap
        .search(&user.dn, Scope::Base, "(objectClass=*)", vec!["msDS-ResultantPSO"])
        .await
        .and_then(|r| r.success())
        .expect("the user is readable");
    assert_eq!(read(entries, "msDS-ResultantPSO").map(|p| p.to_lowercase()), Some(pso.to_lowercase()));
    let (entries, _) = ldap
        .search(&pso, Scope::Base, "(objectClass=*)", vec!["msDS-MinimumPasswordLength"])
        .await
        .and_then(|r| r.success())
        .expect("the search itself is allowed");
    assert_eq!(read(entries, "msDS-MinimumPasswordLength"), None, "the PSO's settings are hidden");
    let (entries, _) = ldap
        .search(&dc.base_dn, Scope::Base, "(objectClass=*)", vec!["minPwdLength"])
        .await
        .and_then(|r| r.success())
        .expect("the domain head is readable");
    assert!(read(entries, "minPwdLength").is_some(), "the domain policy is readable");
    let _ = ldap.unbind().await;
}
