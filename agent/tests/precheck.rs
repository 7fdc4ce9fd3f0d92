//! The agent's password pre-check and reconciliation against the throwaway Samba AD DC: the
//! fine-grained policy, the account-name rule Samba does not enforce, banned passwords in enforce
//! and audit mode, and reset to the seed-derived value.

use std::collections::BTreeMap;

use pwrelay_agent::audit::AuditLog;
mod support;

use pwrelay_agent::config::{BannedMode, DomainConfig, PasswordCheckConfig, ReconcileConfig};
use pwrelay_agent::directory::{AccountTarget, Directory, WriteOptions};
use pwrelay_agent::jobs::journal::Journal;
use pwrelay_agent::jobs::{self, JobContext};
use pwrelay_proto::agent::v1 as pb;
use pwrelay_shared::derive::{DeriveParams, derive};
use pwrelay_shared::secret::SecretString;
use pwrelay_shared::testkit::{self, TestDc};

fn config(dc: &TestDc, password_check: PasswordCheckConfig, reconcile: Option<ReconcileConfig>) -> DomainConfig {
    DomainConfig { password_check, reconcile, ..support::domain_config(dc) }
}

struct Harness {
    dir: tempfile::TempDir,
    context: JobContext,
}

fn harness(config: DomainConfig) -> Harness {
    let dir = tempfile::tempdir().expect("dir");
    let domain = config.name.clone();
    let directories = BTreeMap::from([(domain, Directory::new(config).expect("directory"))]);
    let context = JobContext::new(
        directories,
        Journal::open(&dir.path().join("journal.jsonl")).expect("journal"),
        AuditLog::open(&dir.path().join("audit.jsonl")).expect("audit"),
    );
    Harness { dir, context }
}

impl Harness {
    fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl"))
            .expect("audit")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect()
    }
}

fn job(id: &str, kind: pb::JobKind, dc: &TestDc, dn: &str, password: Option<&str>) -> pb::Job {
    support::job(id, kind, dc, pb::target::By::Dn(dn.into()), password)
}

use support::{failure, success};

#[tokio::test]
async fn a_pso_stricter_than_the_domain_policy_is_applied_before_writing() {
    let dc = testkit::dc();
    let ou = dc.create_ou("pso").await;
    let user = dc.create_user_in(&ou, "strict").await;
    dc.create_pso(&user.dn, 16, true, 24).await;
    let h = harness(config(dc, PasswordCheckConfig { banned: BannedMode::Off, ..Default::default() }, None));
    let thirteen = "Thirteen!Ch1x";
    let refused = jobs::execute(&h.context, job("pso-1", pb::JobKind::SetPassword, dc, &user.dn, Some(thirteen))).await;
    let f = failure(&refused);
    assert_eq!(f.code(), pb::FailureCode::PolicyViolation, "{}", f.message);
    assert!(f.directory_code.is_empty(), "refused by the agent, not the DC");
    assert!(f.message.contains("fine-grained") && f.message.contains("16"), "{}", f.message);
    assert!(dc.bind(&user.dn, user.password.expose_secret()).await.ok(), "nothing was written");
    let long_enough = "Sixteen!Chars-0k9";
    assert!(
        success(
            &jobs::execute(&h.context, job("pso-2", pb::JobKind::SetPassword, dc, &user.dn, Some(long_enough))).await
        )
        .verified
    );
    assert!(h.audit().iter().any(|e| e["event_id"] == 4116), "the AD-policy refusal is audited");
}

#[tokio::test]
async fn a_password_containing_the_account_name_is_refused_although_samba_would_take_it() {
    let dc = testkit::dc();
    let ou = dc.create_ou("name").await;
    let user = dc.create_user_in(&ou, "nametest").await;
    let with_name = format!("X9!{}zz", user.sam.to_uppercase());
    // Samba itself accepts it (it does not enforce the name rules): the pre-check is what refuses.
    let h = harness(config(dc, PasswordCheckConfig { banned: BannedMode::Off, ..Default::default() }, None));
    let refused =
        jobs::execute(&h.context, job("name-1", pb::JobKind::SetPassword, dc, &user.dn, Some(&with_name))).await;
    let f = failure(&refused);
    assert_eq!(f.code(), pb::FailureCode::PolicyViolation);
    assert!(f.message.contains("account name"), "{}", f.message);
    assert!(!f.message.contains(&with_name), "the message never quotes the password");
    let directory = h.context.directories.values().next().expect("directory");
    directory
        .set_password(
            &AccountTarget::Dn(user.dn.clone()),
            &SecretString::from(with_name.as_str()),
            WriteOptions::default(),
        )
        .await
        .expect("without the pre-check Samba accepts the password");
}

#[tokio::test]
async fn banned_passwords_are_refused_in_enforce_mode_and_noted_in_audit_mode() {
    let dc = testkit::dc();
    let ou = dc.create_ou("ban").await;
    let user = dc.create_user_in(&ou, "banned").await;
    let weak = "P@ssw0rd1!"; // AD complexity passes; banned "password" leaves too few points
    let enforce = harness(config(dc, PasswordCheckConfig::default(), None));
    let refused =
        jobs::execute(&enforce.context, job("ban-1", pb::JobKind::SetPassword, dc, &user.dn, Some(weak))).await;
    let f = failure(&refused);
    assert_eq!(f.code(), pb::FailureCode::PasswordRejected, "{}", f.message);
    assert!(f.message.contains("banned-password"), "{}", f.message);
    assert!(dc.bind(&user.dn, user.password.expose_secret()).await.ok(), "nothing was written");
    let refusal = enforce.audit().into_iter().find(|e| e["event"] == "password_protection_refused").expect("audited");
    assert_eq!(refusal["event_id"], 10017, "set operation, refused: {refusal}");
    assert!(refusal["reason_event_id"].as_u64().is_some_and(|id| (30002..=30029).contains(&id)), "{refusal}");

    let audit = harness(config(dc, PasswordCheckConfig { banned: BannedMode::Audit, ..Default::default() }, None));
    let passed = jobs::execute(&audit.context, job("ban-2", pb::JobKind::SetPassword, dc, &user.dn, Some(weak))).await;
    let s = success(&passed);
    assert!(s.notes.iter().any(|n| n.contains("audit mode")), "{:?}", s.notes);
    assert!(dc.bind(&user.dn, weak).await.ok(), "audit mode lets it through");
    let event = audit.audit().into_iter().find(|e| e["event"] == "password_protection_passed").expect("audited");
    assert_eq!(event["event_id"], 10025, "audit-mode would-fail on a set: {event}");
    let text = std::fs::read_to_string(audit.dir.path().join("audit.jsonl")).expect("audit");
    assert!(!text.contains(weak), "no password in the audit log");
}

#[tokio::test]
async fn reconcile_resets_to_the_seed_derived_value() {
    let dc = testkit::dc();
    let ou = dc.create_ou("rec").await;
    let user = dc.create_user_in(&ou, "recon").await;
    let salt = SecretString::from("ThisIsOurSharedHashValue");
    let reconcile = ReconcileConfig { salt: salt.clone(), params: DeriveParams::default() };
    let h = harness(config(dc, PasswordCheckConfig::default(), Some(reconcile)));
    let result = jobs::execute(&h.context, job("rec-1", pb::JobKind::Reconcile, dc, &user.dn, None)).await;
    assert!(success(&result).verified);
    let expected = derive(&user.upn, &salt, &DeriveParams::default()).expect("derive");
    assert!(dc.bind(&user.dn, expected.expose_secret()).await.ok(), "the derived value binds");
    assert!(h.audit().iter().any(|e| e["event_id"] == 4117));

    let unconfigured = harness(config(dc, PasswordCheckConfig::default(), None));
    let refused = jobs::execute(&unconfigured.context, job("rec-2", pb::JobKind::Reconcile, dc, &user.dn, None)).await;
    assert_eq!(failure(&refused).code(), pb::FailureCode::InvalidJob);
}

#[tokio::test]
async fn generated_passwords_are_set_and_returned_sealed_to_the_recipient_only() {
    use crypto_box::SecretKey;
    use crypto_box::aead::OsRng;

    let dc = testkit::dc();
    let ou = dc.create_ou("gen").await;
    let user = dc.create_user_in(&ou, "gen").await;
    let h = harness(config(dc, PasswordCheckConfig::default(), None));

    let recipient = SecretKey::generate(&mut OsRng);
    let mut sealed_job = job("gen-1", pb::JobKind::GeneratePassword, dc, &user.dn, None);
    sealed_job.secret = Some(pb::SecretMaterial {
        material: Some(pb::secret_material::Material::RecipientPublicKey(recipient.public_key().as_bytes().to_vec())),
    });
    sealed_job.generate = Some(pb::GenerateOptions { length: 24, mode: pb::GenerateMode::Friendly as i32 });
    let result = jobs::execute(&h.context, sealed_job.clone()).await;
    let s = success(&result);
    assert_eq!(s.secret_encoding(), pb::SecretEncoding::SealedBox);
    let opened = recipient.unseal(&s.sealed_secret).expect("only the recipient's key opens it");
    let password = String::from_utf8(opened).expect("utf-8");
    assert_eq!(password.chars().count(), 24);
    assert!(dc.bind(&user.dn, &password).await.ok(), "the generated password is set");
    let other = SecretKey::generate(&mut OsRng);
    assert!(other.unseal(&s.sealed_secret).is_err(), "another key cannot open it");
    let audit = std::fs::read_to_string(h.dir.path().join("audit.jsonl")).expect("audit");
    assert!(!audit.contains(&password), "the generated password is not audited");

    // A redelivery is answered from the journal with the same sealed box (only the requester can
    // open it), not applied again.
    let replay = jobs::execute(&h.context, sealed_job).await;
    let again = success(&replay);
    assert_eq!(again.sealed_secret, s.sealed_secret, "the redelivery returns the same sealed box");
    assert_eq!(again.secret_encoding(), pb::SecretEncoding::SealedBox);
    assert!(dc.bind(&user.dn, &password).await.ok(), "and did not set another password");

    let plain = jobs::execute(&h.context, job("gen-2", pb::JobKind::GeneratePassword, dc, &user.dn, None)).await;
    let p = success(&plain);
    assert_eq!(p.secret_encoding(), pb::SecretEncoding::Plaintext);
    let password = String::from_utf8(p.sealed_secret.clone()).expect("utf-8");
    assert!(dc.bind(&user.dn, &password).await.ok());

    let mut bad_key = job("gen-3", pb::JobKind::GeneratePassword, dc, &user.dn, None);
    bad_key.secret =
        Some(pb::SecretMaterial { material: Some(pb::secret_material::Material::RecipientPublicKey(vec![1, 2, 3])) });
    assert_eq!(failure(&jobs::execute(&h.context, bad_key).await).code(), pb::FailureCode::InvalidJob);
    assert!(dc.bind(&user.dn, &password).await.ok(), "a refused job changes nothing");
}
