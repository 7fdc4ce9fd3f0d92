//! The DC bind check and `/readyz` against the throwaway Samba AD DC: a refused service-account
//! password is tried once, not every interval, so the check cannot lock its own account out.
//!
//! Each test binds as a service account of its own with a lockout threshold (Samba counts failed
//! logons only under one), never as the administrator the other tests share.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

mod support;

use pwrelay_agent::audit::AuditLog;
use pwrelay_agent::config::DomainConfig;
use pwrelay_agent::directory::Directory;
use pwrelay_agent::health::{self, HealthState};
use pwrelay_agent::jobs::journal::Journal;
use pwrelay_agent::jobs::{self, JobContext};
use pwrelay_proto::agent::v1 as pb;
use pwrelay_shared::secret::SecretString;
use pwrelay_shared::testkit::{self, TestDc, TestUser};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The check's interval in these tests.
const INTERVAL: Duration = Duration::from_millis(300);
/// Failed logons before Samba locks the test's service account out.
const LOCKOUT_THRESHOLD: u32 = 5;

struct Harness {
    _dir: tempfile::TempDir,
    password_file: std::path::PathBuf,
    jobs: jobs::Jobs,
    health: Arc<HealthState>,
    readyz: SocketAddr,
    cancel: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A service account of the test's own, with a lockout threshold, configured with `password` in
/// its password file.
async fn service_account(dc: &TestDc) -> TestUser {
    let account = dc.create_user("pwhc").await;
    dc.apply_lockout_threshold(&account, LOCKOUT_THRESHOLD).await;
    assert_eq!(dc.bad_password_count(&account.dn).await, 0);
    account
}

/// The agent's directory work for `account` with `password` from a file, and `/readyz` on
/// 127.0.0.1; the bind check is started by [`Harness::start_checker`].
async fn harness(dc: &TestDc, account: &TestUser, password: &str) -> Harness {
    let dir = tempfile::tempdir().expect("dir");
    let password_file = dir.path().join("bind.secret");
    std::fs::write(&password_file, format!("{password}\n")).expect("password file");
    let config = DomainConfig {
        bind_dn: account.dn.clone(),
        bind_password: SecretString::from(password),
        bind_password_file: Some(password_file.clone()),
        // Longer than any test: only a changed file lets the agent bind again.
        refused_bind_retry: Duration::from_secs(3600),
        refused_bind_retry_max: Duration::from_secs(4 * 3600),
        ..support::domain_config(dc)
    };
    let directories = BTreeMap::from([(dc.domain.clone(), Directory::new(config).expect("directory"))]);
    let jobs = Arc::new(JobContext::new(
        directories,
        Journal::open(&dir.path().join("journal.jsonl")).expect("journal"),
        AuditLog::open(&dir.path().join("audit.jsonl")).expect("audit"),
    ));
    let health = Arc::new(HealthState::default());
    // The relay link is not under test here.
    health.set_relay_connected(true);
    let cancel = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let readyz = listener.local_addr().expect("addr");
    let router = health::router(Arc::clone(&health), Arc::clone(&jobs));
    let stop = cancel.child_token();
    tokio::spawn(async move {
        axum::serve(listener, router).with_graceful_shutdown(async move { stop.cancelled().await }).await
    });
    Harness { _dir: dir, password_file, jobs, health, readyz, cancel }
}

impl Harness {
    fn start_checker(&self) {
        tokio::spawn(health::check_directories(
            Arc::clone(&self.jobs),
            Arc::clone(&self.health),
            INTERVAL,
            self.cancel.child_token(),
        ));
    }

    fn write_password(&self, password: &str) {
        write_file(&self.password_file, password);
    }
}

fn write_file(path: &Path, password: &str) {
    std::fs::write(path, format!("{password}\n")).expect("password file");
}

/// `GET /readyz`: status code and body.
async fn readyz(addr: SocketAddr) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await.expect("request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("response");
    let text = String::from_utf8_lossy(&response);
    let status = text.split(' ').nth(1).and_then(|code| code.parse().ok()).expect("a status line");
    let body = text.split_once("\r\n\r\n").map(|(_, body)| body).expect("a body");
    (status, serde_json::from_str(body).unwrap_or_else(|e| panic!("/readyz body {body:?}: {e}")))
}

/// The domain's entry in `/readyz`, once the check has reported on it.
async fn domain_status(h: &Harness, dc: &TestDc) -> (u16, Value) {
    for _ in 0..50 {
        let (status, body) = readyz(h.readyz).await;
        if let Some(domain) = body["directories"].get(dc.domain.as_str()) {
            return (status, domain.clone());
        }
        tokio::time::sleep(INTERVAL / 3).await;
    }
    panic!("/readyz never reported {}", dc.domain);
}

/// Waits until `/readyz` shows the domain's bind as `ok`.
async fn wait_for_bind(h: &Harness, dc: &TestDc, ok: bool) -> (u16, Value) {
    for _ in 0..50 {
        let (status, domain) = domain_status(h, dc).await;
        if domain["bind_ok"] == ok {
            return (status, domain);
        }
        tokio::time::sleep(INTERVAL / 3).await;
    }
    panic!("/readyz never showed bind_ok = {ok} for {}", dc.domain);
}

fn expected_message(dc: &TestDc) -> String {
    format!(
        "the service account's credentials were refused by {}; not retrying until bind_password_file changes (or in ",
        dc.ldaps_url
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_password_is_tried_once_and_again_only_when_the_file_changes() {
    let dc = testkit::dc();
    let account = service_account(dc).await;
    let h = harness(dc, &account, "Wrong!Passw0rd-1").await;
    h.start_checker();

    let (status, domain) = wait_for_bind(&h, dc, false).await;
    // Several more intervals: the check goes on but does not bind with the refused password.
    tokio::time::sleep(INTERVAL * 8).await;
    assert_eq!(dc.bad_password_count(&account.dn).await, 1, "one failed logon, not one per interval");
    assert_eq!(status, 503);
    let detail = domain["detail"].as_str().expect("detail");
    assert!(detail.starts_with(&expected_message(dc)), "{domain}");
    assert_eq!(domain["credentials_refused"]["dc"], dc.ldaps_url.as_str(), "{domain}");
    let retry_in = domain["credentials_refused"]["retry_in_seconds"].as_u64().expect("seconds");
    assert!((3500..=3600).contains(&retry_in), "{domain}");
    let (status, body) = readyz(h.readyz).await;
    assert_eq!((status, body["status"].as_str()), (503, Some("not_ready")), "{body}");

    // The same password written again is still not tried.
    h.write_password("Wrong!Passw0rd-1");
    tokio::time::sleep(INTERVAL * 4).await;
    assert_eq!(dc.bad_password_count(&account.dn).await, 1);

    // The right password in the file: the next check binds with it, and the agent is ready.
    h.write_password(account.password.expose_secret());
    let (status, domain) = wait_for_bind(&h, dc, true).await;
    assert_eq!(status, 200, "{domain}");
    assert!(domain.get("credentials_refused").is_none(), "{domain}");
    assert_eq!(domain["detail"], dc.ldaps_url.as_str());
    assert!(dc.bad_password_count(&account.dn).await <= 1);
    let (status, body) = readyz(h.readyz).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_refused_bind_stops_the_check_and_the_other_jobs_binding_too() {
    let dc = testkit::dc();
    let account = service_account(dc).await;
    let target = dc.create_user("pwhct").await;
    let h = harness(dc, &account, "Wrong!Passw0rd-2").await;
    let verify = |id: &str| {
        support::job(
            id,
            pb::JobKind::Verify,
            dc,
            pb::target::By::Upn(target.upn.clone()),
            Some(target.password.expose_secret()),
        )
    };

    // Several jobs at once, as after a start-up: one bind with the wrong password between them.
    let results = futures_join(&h, vec![verify("hc-job-1"), verify("hc-job-2"), verify("hc-job-3")]).await;
    for result in &results {
        let failure = support::failure(result);
        assert_eq!(failure.code, pb::FailureCode::AccessDenied as i32, "{failure:?}");
    }
    assert_eq!(dc.bad_password_count(&account.dn).await, 1, "one failed logon for three jobs");
    let later = support::failure(&jobs::execute(&h.jobs, verify("hc-job-4")).await).message.clone();
    assert!(later.starts_with(&expected_message(dc)), "{later}");

    // The check sees the jobs' refusal and binds with the password no more than they do.
    h.start_checker();
    let (status, domain) = domain_status(&h, dc).await;
    tokio::time::sleep(INTERVAL * 6).await;
    assert_eq!(dc.bad_password_count(&account.dn).await, 1, "the check did not bind with the refused password");
    assert_eq!(status, 503);
    assert!(domain["detail"].as_str().expect("detail").starts_with(&expected_message(dc)), "{domain}");

    // A fixed file lets jobs and the check bind again.
    h.write_password(account.password.expose_secret());
    let result = jobs::execute(&h.jobs, verify("hc-job-5")).await;
    assert!(support::success(&result).password_matches, "{result:?}");
    let (status, _) = wait_for_bind(&h, dc, true).await;
    assert_eq!(status, 200);
}

/// Runs `jobs` at the same time.
async fn futures_join(h: &Harness, jobs: Vec<pb::Job>) -> Vec<pb::JobResult> {
    let mut running = tokio::task::JoinSet::new();
    for job in jobs {
        let context = Arc::clone(&h.jobs);
        running.spawn(async move { jobs::execute(&context, job).await });
    }
    running.join_all().await
}
