//! Jobs as the agent carries them out, against the throwaway Samba AD DC: kinds, the journal that
//! answers redeliveries, and the audit log.

use std::collections::BTreeMap;

mod support;

use pwrelay_agent::audit::AuditLog;
use pwrelay_agent::config::DomainConfig;
use pwrelay_agent::directory::Directory;
use pwrelay_agent::jobs::journal::Journal;
use pwrelay_agent::jobs::{self, JobContext};
use pwrelay_proto::agent::v1 as pb;
use pwrelay_shared::testkit::{self, TestDc};

struct Harness {
    dir: tempfile::TempDir,
    context: JobContext,
}

fn harness(dc: &TestDc) -> Harness {
    let dir = tempfile::tempdir().expect("dir");
    let config = DomainConfig { verify_bind: true, ..support::domain_config(dc) };
    let directories = BTreeMap::from([(dc.domain.clone(), Directory::new(config).expect("directory"))]);
    let context = JobContext::new(
        directories,
        Journal::open(&dir.path().join("journal.jsonl")).expect("journal"),
        AuditLog::open(&dir.path().join("audit.jsonl")).expect("audit"),
    );
    Harness { dir, context }
}

fn job(id: &str, kind: pb::JobKind, dc: &TestDc, upn: &str, password: Option<&str>) -> pb::Job {
    support::job(id, kind, dc, pb::target::By::Upn(upn.into()), password)
}

use support::{failure, success};

/// Opens an AES-256-GCM initial-password result the way the retrieval page's WebCrypto does:
/// 12-byte nonce, then ciphertext with the tag appended, no associated data.
fn decrypt(sealed: &[u8], key: &[u8]) -> String {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte key"));
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let mut body = body.to_vec();
    let nonce = Nonce::try_assume_unique_for_key(nonce).expect("nonce");
    let plain = key.open_in_place(nonce, Aad::empty(), &mut body).expect("the key opens the ciphertext");
    String::from_utf8(plain.to_vec()).expect("utf-8")
}

/// The friendly generator's alphabet: no look-alikes (0 O o 1 l I), groups of four joined by `-`.
fn assert_friendly(password: &str) {
    const ALPHABET: &str = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789";
    let groups: Vec<&str> = password.split('-').collect();
    assert!(groups.len() >= 2, "grouped: {} groups", groups.len());
    for (i, group) in groups.iter().enumerate() {
        assert!(group.chars().all(|c| ALPHABET.contains(c)), "group {i} uses only unambiguous characters");
        if i + 1 < groups.len() {
            assert_eq!(group.len(), 4, "groups of four");
        }
    }
}

fn initial_password_job(id: &str, dc: &TestDc, upn: &str, must_change: bool) -> pb::Job {
    let mut job = job(id, pb::JobKind::InitialPassword, dc, upn, None);
    job.options = Some(pb::JobOptions { must_change, ..Default::default() });
    job
}

fn audit_events(h: &Harness, event_id: u32) -> Vec<serde_json::Value> {
    let audit = std::fs::read_to_string(h.dir.path().join("audit.jsonl")).expect("audit");
    audit
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .filter(|e: &serde_json::Value| e["event_id"] == event_id)
        .collect()
}

#[tokio::test]
async fn an_initial_password_is_friendly_set_and_returned_encrypted_under_a_fresh_key() {
    let dc = testkit::dc();
    let h = harness(dc);
    let new_hire = dc.create_user("ipm").await;
    let result = jobs::execute(&h.context, initial_password_job("job-ip-1", dc, &new_hire.upn, true)).await;
    let s = success(&result);
    assert!(s.verified);
    assert_eq!(s.secret_encoding(), pb::SecretEncoding::Aes256Gcm);
    assert_eq!(s.secret_key.len(), 32);
    assert_eq!(s.pwd_last_set, 0, "must change at next logon");
    assert!(s.account_state.as_ref().is_some_and(|a| a.must_change_password));
    let password = decrypt(&s.sealed_secret, &s.secret_key);
    assert_eq!(password.chars().count(), 20, "the default length");
    assert_friendly(&password);
    let bind = dc.bind(&new_hire.dn, &password).await;
    assert_eq!(bind.rc, 49, "a must-change password does not log on: {}", bind.text);
    assert!(bind.text.contains("data 773"), "but the DC says it is right and must be changed: {}", bind.text);
    assert!(!dc.bind(&new_hire.dn, new_hire.password.expose_secret()).await.ok(), "the old password is gone");

    let kept = dc.create_user("ipk").await;
    let mut job = initial_password_job("job-ip-2", dc, &kept.upn, false);
    job.generate = Some(pb::GenerateOptions { length: 16, mode: pb::GenerateMode::Unspecified as i32 });
    let result = jobs::execute(&h.context, job).await;
    let s = success(&result);
    assert!(s.verified && s.pwd_last_set > 0);
    let password = decrypt(&s.sealed_secret, &s.secret_key);
    assert_eq!(password.chars().count(), 16);
    assert_friendly(&password);
    assert!(dc.bind(&kept.dn, &password).await.ok(), "without must_change the password logs on");

    let set = audit_events(&h, 4119);
    assert_eq!(set.len(), 2);
    assert_eq!(set[0]["event"], "initial_password_set");
    assert_eq!(set[0]["account_dn"], new_hire.dn.as_str());
    let audit = std::fs::read_to_string(h.dir.path().join("audit.jsonl")).expect("audit");
    let journal = std::fs::read_to_string(h.dir.path().join("journal.jsonl")).expect("journal");
    assert!(!audit.contains(&password) && !journal.contains(&password), "the password is never on disk");
}

#[tokio::test]
async fn an_initial_password_is_refused_for_an_account_that_has_signed_in() {
    let dc = testkit::dc();
    let h = harness(dc);
    let used = dc.create_user("ipu").await;
    assert!(dc.bind(&used.dn, used.password.expose_secret()).await.ok(), "the account signs in once");
    let result = jobs::execute(&h.context, initial_password_job("job-ip-used", dc, &used.upn, true)).await;
    let failure = match result.outcome {
        Some(pb::job_result::Outcome::Failure(f)) => f,
        other => panic!("refused: {other:?}"),
    };
    assert_eq!(failure.code(), pb::FailureCode::AccountStateConflict, "{}", failure.message);
    assert!(failure.message.contains("signed in before"), "{}", failure.message);
    assert!(dc.bind(&used.dn, used.password.expose_secret()).await.ok(), "nothing was written");
}

#[tokio::test]
async fn a_redelivered_initial_password_job_issues_a_fresh_password_instead_of_an_empty_success() {
    let dc = testkit::dc();
    let h = harness(dc);
    let new_hire = dc.create_user("ipr").await;
    let job = initial_password_job("job-ipr-1", dc, &new_hire.upn, true);
    let first = jobs::execute(&h.context, job.clone()).await;
    let first = decrypt(&success(&first).sealed_secret, &success(&first).secret_key);
    // The result was lost on the way to the relay (it redelivers only jobs without a result), and
    // the agent restarted in between: the journal on disk decides.
    let mut job = job;
    job.attempt = 2;
    let reopened = JobContext::new(
        h.context.directories,
        Journal::open(&h.dir.path().join("journal.jsonl")).expect("journal"),
        AuditLog::open(&h.dir.path().join("audit.jsonl")).expect("audit"),
    );
    let second = jobs::execute(&reopened, job).await;
    let s = success(&second);
    assert_eq!(s.secret_encoding(), pb::SecretEncoding::Aes256Gcm, "never a success without the secret");
    let second = decrypt(&s.sealed_secret, &s.secret_key);
    assert_ne!(first, second, "a fresh password");
    let fresh = dc.bind(&new_hire.dn, &second).await;
    assert!(fresh.text.contains("data 773"), "the fresh password is set, must change: {}", fresh.text);
    let unread = dc.bind(&new_hire.dn, &first).await;
    assert!(unread.rc == 49 && !unread.text.contains("data 773"), "the unread one no longer works: {}", unread.text);
    let h = Harness { dir: h.dir, context: reopened };
    let reissued = audit_events(&h, 4120);
    assert_eq!(reissued.len(), 1);
    assert_eq!(reissued[0]["event"], "initial_password_reissued");
    assert_eq!(audit_events(&h, 4119).len(), 2, "both sets are audited");
}

#[tokio::test]
async fn a_redelivered_job_is_answered_from_the_journal_and_not_applied_again() {
    let dc = testkit::dc();
    let h = harness(dc);
    let user = dc.create_user("jr").await;
    let first =
        jobs::execute(&h.context, job("job-jr-1", pb::JobKind::SetPassword, dc, &user.upn, Some("Journal!One-71")))
            .await;
    assert!(success(&first).verified);
    // Someone changes the password afterwards; a redelivery of the same job must not undo that.
    let second_agent_run =
        jobs::execute(&h.context, job("job-jr-2", pb::JobKind::SetPassword, dc, &user.upn, Some("Journal!Two-72")))
            .await;
    assert!(success(&second_agent_run).verified);
    // The journal survives a restart of the agent.
    let reopened = JobContext::new(
        h.context.directories,
        Journal::open(&h.dir.path().join("journal.jsonl")).expect("journal"),
        AuditLog::open(&h.dir.path().join("audit.jsonl")).expect("audit"),
    );
    let replay =
        jobs::execute(&reopened, job("job-jr-1", pb::JobKind::SetPassword, dc, &user.upn, Some("Journal!One-71")))
            .await;
    assert_eq!(replay, first, "the journal answers with the first result");
    assert!(dc.bind(&user.dn, "Journal!Two-72").await.ok(), "the redelivery did not set the password again");
    let audit = std::fs::read_to_string(h.dir.path().join("audit.jsonl")).expect("audit");
    assert!(audit.lines().any(|l| l.contains("\"event_id\":4114") && l.contains("job-jr-1")), "{audit}");
    assert!(!audit.contains("Journal!"), "no password in the audit log");
    let journal = std::fs::read_to_string(h.dir.path().join("journal.jsonl")).expect("journal");
    assert!(!journal.contains("Journal!"), "no password in the journal");
}

#[tokio::test]
async fn verify_reports_whether_a_password_binds_without_changing_it() {
    let dc = testkit::dc();
    let h = harness(dc);
    let user = dc.create_user("vf").await;
    let right = jobs::execute(
        &h.context,
        job("job-vf-1", pb::JobKind::Verify, dc, &user.upn, Some(user.password.expose_secret())),
    )
    .await;
    assert!(success(&right).password_matches);
    let wrong =
        jobs::execute(&h.context, job("job-vf-2", pb::JobKind::Verify, dc, &user.upn, Some("Not!The-Password9"))).await;
    assert!(!success(&wrong).password_matches);
    assert!(dc.bind(&user.dn, user.password.expose_secret()).await.ok(), "verification changed nothing");
    let audit = std::fs::read_to_string(h.dir.path().join("audit.jsonl")).expect("audit");
    let verified: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .filter(|e: &serde_json::Value| e["event_id"] == 4103)
        .collect();
    assert_eq!(verified.len(), 2);
    assert_eq!(verified[0]["password_matches"], true);
    assert_eq!(verified[1]["password_matches"], false);
}

#[tokio::test]
async fn refusals_are_typed_and_audited() {
    let dc = testkit::dc();
    let h = harness(dc);
    let user = dc.create_user("rf").await;
    let mut unknown_kind = job("job-rf-1", pb::JobKind::Unspecified, dc, &user.upn, None);
    unknown_kind.kind = 99;
    let unsupported = jobs::execute(&h.context, unknown_kind).await;
    assert_eq!(failure(&unsupported).code(), pb::FailureCode::UnsupportedJob);
    let mut other_domain = job("job-rf-2", pb::JobKind::SetPassword, dc, &user.upn, Some("Xx1!xxxxxx"));
    other_domain.domain = "elsewhere.test".into();
    assert_eq!(failure(&jobs::execute(&h.context, other_domain).await).code(), pb::FailureCode::UnknownDomain);
    let mut late = job("job-rf-3", pb::JobKind::SetPassword, dc, &user.upn, Some("Late!Passw0rd-1"));
    late.lease_deadline_unix_ms = 0;
    late.lease_duration_ms = 0;
    let late = jobs::execute(&h.context, late).await;
    assert!(failure(&late).retryable, "a job whose lease ended is retryable");
    assert_eq!(failure(&late).code(), pb::FailureCode::NotStarted);
    assert!(h.context.journal.result("job-rf-3").is_none(), "retryable failures are not journaled");
    let empty = jobs::execute(&h.context, job("job-rf-4", pb::JobKind::SetPassword, dc, &user.upn, None)).await;
    assert_eq!(failure(&empty).code(), pb::FailureCode::InvalidJob);
    let audit = std::fs::read_to_string(h.dir.path().join("audit.jsonl")).expect("audit");
    assert!(audit.lines().filter(|l| l.contains("\"event_id\":4115")).count() >= 3, "{audit}");
}

#[tokio::test]
async fn enforce_history_sends_the_policy_hints_control_and_explains_a_dc_without_it() {
    let dc = testkit::dc();
    let h = harness(dc);
    let user = dc.create_user("hist").await;
    for (i, password) in ["History!One-1", "History!Two-2"].iter().enumerate() {
        let result = jobs::execute(
            &h.context,
            job(&format!("job-hist-{i}"), pb::JobKind::SetPassword, dc, &user.upn, Some(password)),
        )
        .await;
        assert!(success(&result).verified);
    }
    let mut again = job("job-hist-3", pb::JobKind::SetPassword, dc, &user.upn, Some("History!One-1"));
    again.options = Some(pb::JobOptions { enforce_history: true, ..Default::default() });
    let refused = jobs::execute(&h.context, again).await;
    let f = failure(&refused);
    // Windows Server 2012+ honours the control and refuses the reused password (policy violation);
    // Samba answers that the critical control is unavailable. Either way nothing is written.
    match f.code() {
        pb::FailureCode::PolicyViolation => {}
        pb::FailureCode::DirectoryError => {
            assert_eq!(f.ldap_result_code, 12, "{}", f.message);
            assert!(f.message.contains("policy hints") && f.message.contains("nothing was changed"), "{}", f.message);
        }
        other => panic!("unexpected {other:?}: {}", f.message),
    }
    assert!(dc.bind(&user.dn, "History!Two-2").await.ok(), "the refused reset changed nothing");
    let plain =
        jobs::execute(&h.context, job("job-hist-4", pb::JobKind::SetPassword, dc, &user.upn, Some("History!One-1")))
            .await;
    assert!(success(&plain).verified, "without the control an administrative reset ignores history");
}

#[tokio::test]
async fn a_lease_too_short_for_the_write_gives_the_job_back_before_writing() {
    let dc = testkit::dc();
    let h = harness(dc);
    let user = dc.create_user("short").await;
    // A 3 s lease cannot hold a write that may take the domain's 10 s timeout (plus the margin):
    // the account is resolved and checked, then given back without the write.
    let mut short = job("job-short-1", pb::JobKind::SetPassword, dc, &user.upn, Some("Short!Lease-Pw1"));
    short.lease_duration_ms = 3_000;
    let result = jobs::execute(&h.context, short).await;
    assert_eq!(failure(&result).code(), pb::FailureCode::NotStarted, "{result:?}");
    assert!(failure(&result).retryable);
    assert_eq!(result.attempt, 1, "the result names the attempt it answers");
    assert!(dc.bind(&user.dn, user.password.expose_secret()).await.ok(), "nothing was written");
    assert!(!dc.bind(&user.dn, "Short!Lease-Pw1").await.ok());
    let audit = std::fs::read_to_string(h.dir.path().join("audit.jsonl")).expect("audit");
    assert!(audit.contains("\"event_id\":4122"), "given back and audited: {audit}");
}

#[tokio::test]
async fn a_generated_password_sealed_to_the_requester_is_replayed_after_a_lost_result() {
    let dc = testkit::dc();
    let h = harness(dc);
    let user = dc.create_user("sealedreplay").await;
    let secret = crypto_box::SecretKey::generate(&mut crypto_box::aead::OsRng);
    let mut generate = job("job-sealed-1", pb::JobKind::GeneratePassword, dc, &user.upn, None);
    generate.secret = Some(pb::SecretMaterial {
        material: Some(pb::secret_material::Material::RecipientPublicKey(secret.public_key().as_bytes().to_vec())),
    });
    let first = jobs::execute(&h.context, generate.clone()).await;
    let sealed = success(&first).sealed_secret.clone();
    // The result was lost: the relay delivers the job again, under the next attempt.
    generate.attempt = 2;
    let again = jobs::execute(&h.context, generate).await;
    assert_eq!(again.attempt, 2);
    assert_eq!(success(&again).sealed_secret, sealed, "the same sealed box, not a second application");
    let password = secret.unseal(&success(&again).sealed_secret).expect("opens with the requester's key");
    let password = String::from_utf8(password).expect("utf-8");
    assert!(dc.bind(&user.dn, &password).await.ok(), "the replayed password is the account's");
}

#[tokio::test]
async fn a_plaintext_generated_password_is_issued_afresh_after_a_lost_result() {
    let dc = testkit::dc();
    let h = harness(dc);
    let user = dc.create_user("plainreissue").await;
    let mut generate = job("job-plain-1", pb::JobKind::GeneratePassword, dc, &user.upn, None);
    let first = jobs::execute(&h.context, generate.clone()).await;
    let first_password = String::from_utf8(success(&first).sealed_secret.clone()).expect("utf-8");
    generate.attempt = 2;
    let again = jobs::execute(&h.context, generate).await;
    let second_password = String::from_utf8(success(&again).sealed_secret.clone()).expect("utf-8");
    assert!(!second_password.is_empty(), "a redelivery never succeeds without the password");
    assert_ne!(first_password, second_password);
    assert!(dc.bind(&user.dn, &second_password).await.ok(), "the fresh password is the account's");
    let audit = std::fs::read_to_string(h.dir.path().join("audit.jsonl")).expect("audit");
    assert!(audit.contains("\"event_id\":4121"), "the re-issue is audited: {audit}");
    let journal = std::fs::read_to_string(h.dir.path().join("journal.jsonl")).expect("journal");
    assert!(!journal.contains(&first_password) && !journal.contains(&second_password), "never on disk");
}

#[tokio::test]
async fn a_lease_is_counted_on_the_agents_clock_whatever_the_relays_says() {
    let dc = testkit::dc();
    let h = harness(dc);
    let user = dc.create_user("skew").await;
    // The relay's clock is an hour ahead of the agent's... or behind: its absolute deadline has
    // passed here, but the lease's duration is what counts.
    let mut skewed = job("job-skew-1", pb::JobKind::SetPassword, dc, &user.upn, Some("Skewed!Clock-Pw1"));
    skewed.lease_deadline_unix_ms -= 3_600_000;
    let result = jobs::execute(&h.context, skewed).await;
    assert!(success(&result).verified, "{result:?}");
    assert!(dc.bind(&user.dn, "Skewed!Clock-Pw1").await.ok());
}

#[tokio::test]
async fn a_job_taken_over_from_a_silent_attempt_is_audited_as_applied_again() {
    let dc = testkit::dc();
    let h = harness(dc);
    let user = dc.create_user("takeover").await;
    let mut again = job("job-takeover-1", pb::JobKind::SetPassword, dc, &user.upn, Some("Taken!Over-Pw1"));
    again.attempt = 2;
    again.earlier_attempt_unresolved = true;
    assert!(success(&jobs::execute(&h.context, again).await).verified);
    let audit = std::fs::read_to_string(h.dir.path().join("audit.jsonl")).expect("audit");
    let reissued = audit.lines().position(|l| l.contains("\"event_id\":4123"));
    let written = audit.lines().position(|l| l.contains("\"event_id\":4101"));
    assert!(reissued.is_some() && reissued < written, "audited before the write: {audit}");
}

/// With `audit.syslog` on and `audit.file` off, every event of a real job reaches a syslog
/// socket (here a datagram socket bound in a temporary directory, as `/dev/log` is) as one
/// RFC 5424 message whose MSGID is the event and whose message is its JSON line, and no file is
/// written.
#[tokio::test]
async fn audit_events_go_to_syslog_as_rfc_5424_messages() {
    use pwrelay_agent::config::AuditConfig;
    use pwrelay_agent::syslog::SyslogConfig;
    let dc = testkit::dc();
    let dir = tempfile::tempdir().expect("dir");
    let socket_path = dir.path().join("log");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).expect("bind");
    socket.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("timeout");
    let audit = AuditConfig { file: false, syslog: Some(SyslogConfig { socket: socket_path, facility: 10 }) };
    let config = DomainConfig { verify_bind: true, ..support::domain_config(dc) };
    let directories = BTreeMap::from([(dc.domain.clone(), Directory::new(config).expect("directory"))]);
    let context = JobContext::new(
        directories,
        Journal::open(&dir.path().join("journal.jsonl")).expect("journal"),
        AuditLog::configured(&dir.path().join("audit.jsonl"), &audit).expect("audit"),
    );
    let user = dc.create_user("sysl").await;
    let password = "Syslog!Audit-Passw0rd-5";
    let result =
        jobs::execute(&context, job("job-syslog-1", pb::JobKind::SetPassword, dc, &user.upn, Some(password))).await;
    success(&result);
    let result = jobs::execute(
        &context,
        job("job-syslog-2", pb::JobKind::SetPassword, dc, "nobody@nowhere.invalid", Some(password)),
    )
    .await;
    failure(&result);

    let mut messages = Vec::new();
    let mut buffer = vec![0u8; 65_536];
    // Every event was sent before its job returned: what is there is all there is.
    socket.set_read_timeout(Some(std::time::Duration::from_millis(500))).expect("timeout");
    while let Ok(n) = socket.recv(&mut buffer) {
        messages.push(String::from_utf8(buffer[..n].to_vec()).expect("utf-8"));
    }
    let mut ids = Vec::new();
    for message in &messages {
        let fields: Vec<&str> = message.splitn(8, ' ').collect();
        let (sd, json) = message.split_once("\"] ").expect("structured data, then the message");
        let json: serde_json::Value = serde_json::from_str(json).expect("the message is the JSON line");
        let id = json["event_id"].as_u64().expect("event id");
        let warning = matches!(id, 4110..=4116 | 10017);
        assert_eq!(fields[0], if warning { "<84>1" } else { "<85>1" }, "authpriv, warning or notice: {message}");
        assert!(fields[1].ends_with('Z') && fields[1].contains('T'), "an RFC 3339 time: {message}");
        assert_eq!((fields[3], fields[4]), ("pwrelay-agent", std::process::id().to_string().as_str()), "{message}");
        assert_eq!(Some(fields[5]), json["event"].as_str(), "MSGID is the event's name: {message}");
        assert!(sd.ends_with(&format!("[pwrelay@32473 event_id=\"{id}")), "{message}");
        ids.push(id);
    }
    assert_eq!(ids.iter().filter(|id| **id == 4100).count(), 2, "two jobs received: {messages:#?}");
    assert!(ids.contains(&4101), "the password set: {messages:#?}");
    assert!(ids.iter().any(|id| (4110..=4116).contains(id)), "the second job's failure: {messages:#?}");
    assert!(messages.iter().all(|m| !m.contains(password)), "no password reaches syslog");
    assert!(!dir.path().join("audit.jsonl").exists(), "audit.file = false writes no file");
}
