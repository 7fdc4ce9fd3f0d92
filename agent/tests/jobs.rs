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
    let unsupported =
        jobs::execute(&h.context, job("job-rf-1", pb::JobKind::InitialPassword, dc, &user.upn, None)).await;
    assert_eq!(failure(&unsupported).code(), pb::FailureCode::UnsupportedJob);
    let mut other_domain = job("job-rf-2", pb::JobKind::SetPassword, dc, &user.upn, Some("Xx1!xxxxxx"));
    other_domain.domain = "elsewhere.test".into();
    assert_eq!(failure(&jobs::execute(&h.context, other_domain).await).code(), pb::FailureCode::UnknownDomain);
    let mut late = job("job-rf-3", pb::JobKind::SetPassword, dc, &user.upn, Some("Late!Passw0rd-1"));
    late.lease_deadline_unix_ms = 0;
    let late = jobs::execute(&h.context, late).await;
    assert!(failure(&late).retryable, "a job whose lease ended is retryable");
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
