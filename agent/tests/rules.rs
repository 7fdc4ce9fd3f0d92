//! The agent's account rules against the throwaway Samba AD DC: scope by OU and by (nested) group
//! membership, and option combinations that conflict with the account's state.

mod support;

use pwrelay_agent::config::{DomainConfig, ScopeConfig};
use pwrelay_agent::directory::{AccountTarget, Directory, WriteOptions};
use pwrelay_proto::agent::v1::FailureCode;
use pwrelay_shared::secret::SecretString;
use pwrelay_shared::testkit::{self, TestDc};

fn directory(dc: &TestDc, scope: ScopeConfig) -> Directory {
    Directory::new(DomainConfig { scope, ..support::domain_config(dc) }).expect("directory")
}

#[tokio::test]
async fn scope_admits_users_under_an_allowed_ou_or_in_a_nested_allowed_group() {
    let dc = testkit::dc();
    let pilot = dc.create_ou("pilot").await;
    let elsewhere = dc.create_ou("other").await;
    let groups = dc.create_ou("grp").await;
    let managed = dc.create_group(&groups, "managed").await;
    let nested = dc.create_group(&groups, "nested").await;
    dc.add_member(&managed, &nested).await;
    let in_ou = dc.create_user_in(&pilot, "inou").await;
    let via_group = dc.create_user_in(&elsewhere, "viagrp").await;
    dc.add_member(&nested, &via_group.dn).await;
    let outside = dc.create_user_in(&elsewhere, "outside").await;

    let dir = directory(dc, ScopeConfig { allowed_ous: vec![pilot.clone()], allowed_groups: vec![managed.clone()] });
    for user in [&in_ou, &via_group] {
        let applied = dir
            .set_password(
                &AccountTarget::Upn(user.upn.clone()),
                &SecretString::from("Scoped!Pass-81"),
                WriteOptions::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{} is in scope: {}", user.dn, e.message));
        assert!(applied.verified);
    }
    let refused = dir
        .set_password(
            &AccountTarget::Upn(outside.upn.clone()),
            &SecretString::from("Scoped!Pass-82"),
            WriteOptions::default(),
        )
        .await
        .expect_err("outside the scope");
    assert_eq!(refused.code, FailureCode::OutOfScope);
    assert!(
        refused.message.contains("scope.allowed_ous") && refused.message.contains("scope.allowed_groups"),
        "{}",
        refused.message
    );
    assert!(refused.message.contains(&pilot), "the rule is named: {}", refused.message);
    assert!(dc.bind(&outside.dn, outside.password.expose_secret()).await.ok(), "nothing was changed");

    let unlock = dir
        .unlock(&AccountTarget::Upn(outside.upn.clone()), &pwrelay_agent::directory::Unleased)
        .await
        .expect_err("unlock is scoped too");
    assert_eq!(unlock.code, FailureCode::OutOfScope);
    let verify = dir
        .verify(&AccountTarget::Upn(outside.upn.clone()), &outside.password)
        .await
        .expect_err("verification is scoped too");
    assert_eq!(verify.code, FailureCode::OutOfScope);
}

#[tokio::test]
async fn must_change_on_a_never_expiring_password_is_refused_before_any_write() {
    let dc = testkit::dc();
    let ou = dc.create_ou("state").await;
    let user = dc.create_user_in(&ou, "noexp").await;
    dc.set_attribute(
        &user.dn,
        "userAccountControl",
        &(testkit::directory_admin::UF_NORMAL_ACCOUNT | testkit::directory_admin::UF_DONT_EXPIRE_PASSWD).to_string(),
    )
    .await;
    let dir = directory(dc, ScopeConfig::default());
    let options = WriteOptions { must_change: true, ..WriteOptions::default() };
    let e = dir
        .set_password(&AccountTarget::Dn(user.dn.clone()), &SecretString::from("Conflict!Pass-91"), options)
        .await
        .expect_err("conflict");
    assert_eq!(e.code, FailureCode::AccountStateConflict);
    assert!(e.message.contains("never expires") && e.message.contains("nothing was changed"), "{}", e.message);
    assert!(dc.bind(&user.dn, user.password.expose_secret()).await.ok(), "the password is unchanged");
    let plain = dir
        .set_password(
            &AccountTarget::Dn(user.dn.clone()),
            &SecretString::from("Conflict!Pass-92"),
            WriteOptions::default(),
        )
        .await
        .expect("without must_change it works");
    assert!(plain.verified && plain.account.password_never_expires());
}

#[tokio::test]
async fn a_disabled_account_gets_its_password_with_a_note() {
    let dc = testkit::dc();
    let ou = dc.create_ou("dis").await;
    let user = dc.create_user_in(&ou, "disabled").await;
    dc.set_attribute(
        &user.dn,
        "userAccountControl",
        &(testkit::directory_admin::UF_NORMAL_ACCOUNT | testkit::directory_admin::UF_ACCOUNTDISABLE).to_string(),
    )
    .await;
    let dir = directory(dc, ScopeConfig::default());
    let applied = dir
        .set_password(
            &AccountTarget::Dn(user.dn.clone()),
            &SecretString::from("Disabled!Pass-93"),
            WriteOptions { must_change: true, ..WriteOptions::default() },
        )
        .await
        .expect("a disabled account can get a password");
    assert!(applied.verified && applied.account.disabled());
    assert!(applied.notes.iter().any(|n| n.contains("disabled")), "{:?}", applied.notes);
}

#[tokio::test]
async fn unlock_clears_a_real_lockout() {
    let dc = testkit::dc();
    let ou = dc.create_ou("lock").await;
    let user = dc.create_user_in(&ou, "locked").await;
    dc.lock_out(&user).await;
    let dir = directory(dc, ScopeConfig::default());
    let before = dir.verify(&AccountTarget::Dn(user.dn.clone()), &user.password).await.expect_err("locked out");
    assert_eq!(before.code, FailureCode::AccountStateConflict, "{}", before.message);
    let applied =
        dir.unlock(&AccountTarget::Dn(user.dn.clone()), &pwrelay_agent::directory::Unleased).await.expect("unlocked");
    assert!(applied.verified && !applied.account.locked_out());
    assert!(dc.bind(&user.dn, user.password.expose_secret()).await.ok(), "the unchanged password binds again");
}

#[tokio::test]
async fn a_user_whose_primary_group_is_domain_admins_is_protected() {
    let dc = testkit::dc();
    let user = dc.create_user("prim").await;
    let domain_admins = format!("CN=Domain Admins,CN=Users,{}", dc.base_dn);
    dc.add_member(&domain_admins, &user.dn).await;
    dc.set_attribute(&user.dn, "primaryGroupID", "512").await;
    // A primary group lists no member: no memberOf, so no in-chain membership search, shows it.
    let member_of = dc.attribute(&user.dn, "memberOf").await.unwrap_or_default();
    assert!(!member_of.eq_ignore_ascii_case(&domain_admins), "the membership is implicit now: {member_of}");
    let dir = directory(dc, ScopeConfig::default());
    let e = dir
        .set_password(
            &AccountTarget::Dn(user.dn.clone()),
            &SecretString::from("Primary!Group-51"),
            WriteOptions::default(),
        )
        .await
        .expect_err("protected");
    assert_eq!(e.code, FailureCode::ProtectedAccount, "{}", e.message);
    assert!(e.message.contains("primaryGroupID"), "{}", e.message);
    assert!(dc.bind(&user.dn, user.password.expose_secret()).await.ok(), "nothing was written");
}

#[tokio::test]
async fn members_of_protected_groups_are_refused_directly_and_through_nested_groups() {
    let dc = testkit::dc();
    let groups = dc.create_ou("prot").await;
    let outer = dc.create_group(&groups, "outer").await;
    let inner = dc.create_group(&groups, "inner").await;
    dc.add_member(&outer, &inner).await;
    dc.add_member(&format!("CN=Backup Operators,CN=Builtin,{}", dc.base_dn), &outer).await;
    let nested = dc.create_user("nestprot").await;
    dc.add_member(&inner, &nested.dn).await;
    let plain = dc.create_user("plainusr").await;
    let dir = directory(dc, ScopeConfig::default());
    let set = |user: &testkit::TestUser| {
        let dir = &dir;
        let target = AccountTarget::Upn(user.upn.clone());
        async move { dir.set_password(&target, &SecretString::from("Protected!Check-61"), WriteOptions::default()).await }
    };
    let e = set(&nested).await.expect_err("two levels below Backup Operators");
    assert_eq!(e.code, FailureCode::ProtectedAccount, "{}", e.message);
    assert!(e.message.contains("a member of a protected group"), "{}", e.message);
    assert!(set(&plain).await.expect("not protected").verified);
    // The protected groups are now cached; a user's own memberships are still read with each job.
    dc.add_member(&format!("CN=Domain Admins,CN=Users,{}", dc.base_dn), &plain.dn).await;
    let e = set(&plain).await.expect_err("added to Domain Admins a moment ago");
    assert_eq!(e.code, FailureCode::ProtectedAccount, "{}", e.message);
}

#[tokio::test]
async fn a_group_nested_into_a_protected_group_a_moment_ago_protects_its_members() {
    let dc = testkit::dc();
    let groups = dc.create_ou("prot2").await;
    let late = dc.create_group(&groups, "late").await;
    let member = dc.create_user("lateprot").await;
    dc.add_member(&late, &member.dn).await;
    let plain = dc.create_user("plainusr2").await;
    let dir = directory(dc, ScopeConfig::default());
    let set = |user: &testkit::TestUser| {
        let dir = &dir;
        let target = AccountTarget::Upn(user.upn.clone());
        async move { dir.set_password(&target, &SecretString::from("Protected!Check-62"), WriteOptions::default()).await }
    };
    // The first job reads the protected groups and keeps them for a minute ...
    assert!(set(&plain).await.expect("not protected").verified);
    // ... then a group the account is in becomes a member of a protected group.
    dc.add_member(&format!("CN=Server Operators,CN=Builtin,{}", dc.base_dn), &late).await;
    let e = set(&member).await.expect_err("its token groups now hold Server Operators");
    assert_eq!(e.code, FailureCode::ProtectedAccount, "{}", e.message);
}

#[tokio::test]
async fn concurrent_jobs_share_a_small_connection_pool() {
    let dc = testkit::dc();
    let dir = Directory::new(DomainConfig { connections: 2, ..support::domain_config(dc) }).expect("directory");
    let mut users = Vec::new();
    for _ in 0..8 {
        users.push(dc.create_user("pool").await);
    }
    // Eight jobs at once over two connections: each waits for a free one, none deadlocks.
    let dir = std::sync::Arc::new(dir);
    let mut jobs = tokio::task::JoinSet::new();
    for (i, user) in users.iter().cloned().enumerate() {
        let dir = std::sync::Arc::clone(&dir);
        jobs.spawn(async move {
            let password = SecretString::from(format!("Pooled!Pass-{i}7"));
            let applied = dir
                .set_password(&AccountTarget::Upn(user.upn.clone()), &password, WriteOptions::default())
                .await
                .unwrap_or_else(|e| panic!("{}: {}", user.dn, e.message));
            (applied, password, user)
        });
    }
    let done = tokio::time::timeout(std::time::Duration::from_secs(60), jobs.join_all()).await.expect("no deadlock");
    assert_eq!(done.len(), 8);
    for (applied, password, user) in done {
        assert!(applied.verified && applied.account.dn == user.dn);
        assert!(dc.bind(&user.dn, password.expose_secret()).await.ok());
    }
}
