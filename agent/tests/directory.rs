//! The agent's directory layer against the throwaway Samba AD DC: target resolution, the write and
//! its read-back, error classification, DC failover, StartTLS, and certificate verification.

mod support;

use pwrelay_agent::config::DomainConfig;
use pwrelay_agent::directory::target::uuid_bytes::Guid;
use pwrelay_agent::directory::{AccountTarget, Directory, WriteOptions};
use pwrelay_proto::agent::v1::FailureCode;
use pwrelay_shared::secret::SecretString;
use pwrelay_shared::testkit::{self, TestDc};

fn domain_config(dc: &TestDc, urls: &[&str]) -> DomainConfig {
    DomainConfig { urls: urls.iter().map(|u| support::dc_url(u)).collect(), ..support::domain_config(dc) }
}

fn directory(dc: &TestDc, urls: &[&str]) -> Directory {
    pwrelay_shared::tls::install_default_provider();
    Directory::new(domain_config(dc, urls)).expect("directory")
}

#[tokio::test]
async fn fails_over_to_the_next_dc_when_the_first_is_down() {
    let dc = testkit::dc();
    let dir = directory(dc, &["ldaps://127.0.0.1:1", &dc.ldaps_url]);
    assert_eq!(dir.check_bind().await.expect("second DC answers"), dc.ldaps_url);
    let user = dc.create_user("fo").await;
    let written = dir
        .set_password(
            &AccountTarget::Upn(user.upn.clone()),
            &SecretString::from("Failover!Pass-11"),
            WriteOptions::default(),
        )
        .await
        .expect("password set through the second DC");
    assert_eq!(written.dc_url, dc.ldaps_url);
    assert!(written.verified);
    assert!(dc.bind(&user.dn, "Failover!Pass-11").await.ok());
}

#[tokio::test]
async fn no_reachable_dc_is_a_retryable_unavailable_error() {
    let dc = testkit::dc();
    let dir = directory(dc, &["ldaps://127.0.0.1:1", "ldap://127.0.0.1:2"]);
    let e = dir.check_bind().await.expect_err("nothing answers");
    assert_eq!(e.code, FailureCode::DirectoryUnavailable);
    assert!(e.retryable);
    assert!(e.message.contains("127.0.0.1:1") && e.message.contains("127.0.0.1:2"), "{}", e.message);
}

#[tokio::test]
async fn starttls_on_port_389_works() {
    let dc = testkit::dc();
    let dir = directory(dc, &[&dc.ldap_url]);
    let user = dc.create_user("stls").await;
    let written = dir
        .set_password(
            &AccountTarget::SamAccountName(user.sam.clone()),
            &SecretString::from("StartTls!Pass-12"),
            WriteOptions::default(),
        )
        .await
        .expect("password set over StartTLS");
    assert!(written.verified);
    assert!(dc.bind(&user.dn, "StartTls!Pass-12").await.ok());
}

#[tokio::test]
async fn a_dc_certificate_from_an_untrusted_ca_is_refused() {
    let dc = testkit::dc();
    let scratch = tempfile::tempdir().expect("dir");
    let other = testkit::TestPki::create(scratch.path());
    let mut config = domain_config(dc, &[&dc.ldaps_url]);
    config.ca_file = other.dir.join("ca.pem");
    pwrelay_shared::tls::install_default_provider();
    let dir = Directory::new(config).expect("directory");
    let e = dir.check_bind().await.expect_err("the DC's certificate is not trusted");
    assert_eq!(e.code, FailureCode::DirectoryUnavailable);
    assert!(e.message.to_lowercase().contains("certificate"), "{}", e.message);
}

#[tokio::test]
async fn a_wrong_service_account_password_is_access_denied() {
    let dc = testkit::dc();
    let mut config = domain_config(dc, &[&dc.ldaps_url]);
    config.bind_password = SecretString::from("not-the-password");
    let dir = Directory::new(config).expect("directory");
    let e = dir.check_bind().await.expect_err("bind refused");
    assert_eq!(e.code, FailureCode::AccessDenied);
    assert!(e.message.contains("bind_dn"), "{}", e.message);
    assert!(!e.message.contains("not-the-password"));
}

#[tokio::test]
async fn targets_resolve_by_guid_and_dn_and_unlock_clears_lockout_time() {
    let dc = testkit::dc();
    let dir = directory(dc, &[&dc.ldaps_url]);
    let user = dc.create_user("gd").await;
    let guid = Guid::parse(&dc.object_guid(&user.dn).await).expect("guid");
    let by_guid = dir
        .set_password(
            &AccountTarget::ObjectGuid(guid),
            &SecretString::from("ByGuid!Pass-13"),
            WriteOptions { must_change: true, unlock: true, enforce_history: false },
        )
        .await
        .expect("found by objectGUID");
    assert_eq!(by_guid.account.dn.to_lowercase(), user.dn.to_lowercase());
    assert_eq!(by_guid.account.pwd_last_set, 0);
    assert_eq!(dc.attribute(&user.dn, "lockoutTime").await.as_deref().unwrap_or("0"), "0");
    let by_dn = dir
        .set_password(
            &AccountTarget::Dn(user.dn.clone()),
            &SecretString::from("ByDn!Pass-14x"),
            WriteOptions::default(),
        )
        .await
        .expect("found by DN");
    assert!(by_dn.account.pwd_last_set > 0);
    assert!(dc.bind(&user.dn, "ByDn!Pass-14x").await.ok());
    let missing = dir
        .set_password(
            &AccountTarget::Dn(format!("CN=nobody,CN=Users,{}", dc.base_dn)),
            &SecretString::from("Xx1!xxxxxx"),
            WriteOptions::default(),
        )
        .await
        .expect_err("no such account");
    assert_eq!(missing.code, FailureCode::AccountNotFound);
}

#[tokio::test]
async fn the_dcs_policy_text_is_passed_on() {
    let dc = testkit::dc();
    let dir = directory(dc, &[&dc.ldaps_url]);
    let user = dc.create_user("pt").await;
    let e = dir
        .set_password(
            &AccountTarget::Upn(user.upn.clone()),
            &SecretString::from("alllowercaseletters"),
            WriteOptions::default(),
        )
        .await
        .expect_err("complexity refused");
    assert_eq!(e.code, FailureCode::PolicyViolation);
    assert_eq!(e.directory_code.as_deref(), Some("0000052D"));
    assert!(!e.message.contains("alllowercaseletters"), "the DC's text does not echo the password");
}
