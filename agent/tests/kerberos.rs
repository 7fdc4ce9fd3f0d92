#![cfg(feature = "kerberos")]
//! The service account's Kerberos (SASL GSSAPI) bind, `bind = "kerberos"`, against the KDC of the
//! throwaway Samba AD DC (build with `--features pwrelay-agent/kerberos`).
//!
//! A delegated service account with no password in the agent's configuration: its keys are
//! exported into a keytab that the GSSAPI library uses by itself (`KRB5_CLIENT_KTNAME`), as a
//! gMSA's host does on Windows. Bound that way over LDAPS and StartTLS, the directory layer resets
//! a password inside the delegated OU (the user then binds with it) and is refused outside it, so
//! the bind is really the service account's. Without credentials the bind fails with an error
//! that says what is missing; an IP address in the DC URL is refused before anything is sent.
//!
//! The Kerberos library reads its settings and credentials from process-wide environment
//! variables, so each Kerberos part runs in a child process of this test binary with its own
//! variables (`testkit::kerberos::run_in_child`); the `child_*` tests are that part and are
//! skipped (`#[ignore]`) in the ordinary run.

mod support;

use pwrelay_agent::config::{BindMethod, DomainConfig};
use pwrelay_agent::directory::{AccountTarget, Directory, WriteOptions};
use pwrelay_proto::agent::v1::FailureCode;
use pwrelay_shared::secret::SecretString;
use pwrelay_shared::testkit::{self, TestDc, kerberos};

/// The parent sets it: the OU delegated to the service account.
const OU_VAR: &str = "PWRELAY_TEST_KERBEROS_OU";

/// The directory layer for the test DC with `bind = "kerberos"` (no DN, no password) and `urls`.
fn kerberos_directory(dc: &TestDc, urls: &[&str]) -> Directory {
    Directory::new(DomainConfig {
        bind: BindMethod::Kerberos,
        bind_dn: String::new(),
        bind_password: SecretString::from(""),
        urls: urls.iter().map(|u| support::dc_url(u)).collect(),
        ..support::domain_config(dc)
    })
    .expect("directory")
}

#[tokio::test]
async fn a_delegated_service_account_binds_with_kerberos_and_resets_a_password_in_its_ou() {
    let dc = testkit::dc();
    let realm = kerberos::realm();
    let ou = dc.create_ou("krb").await;
    let service = dc.create_service_account(&format!("CN=Users,{}", dc.base_dn)).await;
    dc.delegate_password_rights(&ou, &service).await;
    let scratch = tempfile::tempdir().expect("dir");
    let credentials = realm.credentials(&service, scratch.path());
    let mut env = credentials.env().to_vec();
    env.push((OU_VAR.into(), ou.into()));
    kerberos::run_in_child("child_resets_a_password_in_the_ou", &env);
}

#[tokio::test]
#[ignore = "the Kerberos part of another test, run by it in a child process"]
async fn child_resets_a_password_in_the_ou() {
    let ou = kerberos::child_var(OU_VAR);
    let dc = testkit::dc();
    let realm = kerberos::realm();
    let dir = kerberos_directory(dc, &[&realm.ldaps_url, &realm.ldap_url]);
    assert_eq!(dir.check_bind().await.expect("kerberos bind"), realm.ldaps_url);
    let health = dir.check_each_dc().await;
    assert!(health.iter().all(|h| h.ok), "LDAPS and StartTLS both bind with Kerberos: {health:?}");
    assert_eq!(health.len(), 2);

    let user = dc.create_user_in(&ou, "kru").await;
    let written = dir
        .set_password(
            &AccountTarget::SamAccountName(user.sam.clone()),
            &SecretString::from("Kerberos!Reset-21"),
            WriteOptions::default(),
        )
        .await
        .expect("the delegated service account resets the password");
    assert!(written.verified);
    assert_eq!(written.dc_url, realm.ldaps_url);
    assert!(dc.bind(&user.dn, "Kerberos!Reset-21").await.ok(), "the user binds with the new password");
    assert!(!dc.bind(&user.dn, user.password.expose_secret()).await.ok(), "the old password is gone");

    // Outside the delegated OU the DC refuses: the bind is the service account's, not an admin's.
    let outsider = dc.create_user("kro").await;
    let e = dir
        .set_password(
            &AccountTarget::SamAccountName(outsider.sam.clone()),
            &SecretString::from("Kerberos!Reset-22"),
            WriteOptions::default(),
        )
        .await
        .expect_err("outside the OU");
    assert_eq!(e.code, FailureCode::AccessDenied, "{}", e.message);
    assert!(dc.bind(&outsider.dn, outsider.password.expose_secret()).await.ok());
}

#[tokio::test]
async fn without_kerberos_credentials_the_bind_fails_saying_what_is_missing() {
    let realm = kerberos::realm();
    let scratch = tempfile::tempdir().expect("dir");
    kerberos::run_in_child("child_fails_without_credentials", realm.no_credentials(scratch.path()).env());
}

#[tokio::test]
#[ignore = "the Kerberos part of another test, run by it in a child process"]
async fn child_fails_without_credentials() {
    kerberos::child_var("KRB5CCNAME");
    let dc = testkit::dc();
    let realm = kerberos::realm();
    let dir = kerberos_directory(dc, &[&realm.ldaps_url]);
    let e = dir.check_bind().await.expect_err("no credentials, no bind");
    assert_eq!(e.code, FailureCode::AccessDenied, "{}", e.message);
    assert!(!e.retryable);
    assert!(e.message.contains("kerberos bind"), "{}", e.message);
    assert!(e.message.contains("KRB5_CLIENT_KTNAME") && e.message.contains("gMSA"), "{}", e.message);
    let health = dir.check_each_dc().await;
    assert!(!health[0].ok && health[0].detail.contains("Kerberos credentials"), "{health:?}");
}

#[tokio::test]
async fn a_kerberos_bind_to_an_ip_address_is_refused_before_connecting() {
    let dc = testkit::dc();
    let dir = kerberos_directory(dc, &[&dc.ldaps_url]);
    let e = dir.check_bind().await.expect_err("an IP address has no service principal");
    assert_eq!(e.code, FailureCode::DirectoryError);
    assert!(e.message.contains("DNS host name") && e.message.contains(&dc.ldaps_url), "{}", e.message);
}
