//! What the agent shows its operators, against the throwaway Samba AD DC: `GET /metrics`
//! (Prometheus text) and `GET /status` after real jobs and bind checks, and `pwrelay-agent
//! status` (the binary) reading a running agent's health listener.
//!
//! The metrics are the process's own, shared by the tests of this file: each test asserts on
//! values it caused (a job kind or a DC only it uses), or on changes it saw happen.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pwrelay_agent::audit::AuditLog;
use pwrelay_agent::directory::Directory;
use pwrelay_agent::health::{self, CertificateStatus, HealthState};
use pwrelay_agent::jobs::journal::Journal;
use pwrelay_agent::jobs::{self, JobContext};
use pwrelay_proto::agent::v1 as pb;
use pwrelay_shared::testkit::{self, TestDc};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

struct Agent {
    _dir: tempfile::TempDir,
    jobs: jobs::Jobs,
    health: Arc<HealthState>,
    addr: SocketAddr,
    cancel: CancellationToken,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The agent's job context for the test DC, reached at `urls` (the first one is the DC itself
/// unless the test says otherwise), with its health routes on 127.0.0.1.
async fn agent(dc: &TestDc, urls: &[&str]) -> Agent {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = support::domain_config(dc);
    config.urls = urls.iter().map(|url| support::dc_url(url)).collect();
    let directories = BTreeMap::from([(dc.domain.clone(), Directory::new(config).expect("directory"))]);
    let jobs = Arc::new(JobContext::new(
        directories,
        Journal::open(&dir.path().join("journal.jsonl")).expect("journal"),
        AuditLog::open(&dir.path().join("audit.jsonl")).expect("audit"),
    ));
    let health = Arc::new(HealthState::default());
    let cancel = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = health::router(Arc::clone(&health), Arc::clone(&jobs));
    let stop = cancel.child_token();
    tokio::spawn(async move {
        axum::serve(listener, router).with_graceful_shutdown(async move { stop.cancelled().await }).await
    });
    tokio::spawn(health::check_directories(
        Arc::clone(&jobs),
        Arc::clone(&health),
        Duration::from_millis(200),
        cancel.child_token(),
    ));
    Agent { _dir: dir, jobs, health, addr, cancel }
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{addr}{path}")).await.expect("the agent answers");
    (response.status().as_u16(), response.text().await.expect("a body"))
}

/// The value of the sample `name{labels}` in a text exposition (labels as printed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits until each DC of the agent has been checked.
async fn checked(agent: &Agent) -> Value {
    for _ in 0..100 {
        let (_, body) = get(agent.addr, "/status").await;
        let status: Value = serde_json::from_str(&body).expect("JSON");
        if status["directories"].as_object().is_some_and(|d| !d.is_empty()) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the bind check never ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_jobs_ldap_operations_and_dc_health() {
    let dc = testkit::dc();
    // A second, dead DC URL of this test's own: its label is this test's alone.
    let dead = "ldaps://127.0.0.1:9";
    let agent = agent(dc, &[&dc.ldaps_url, dead]).await;
    checked(&agent).await;
    let (status, before) = get(agent.addr, "/metrics").await;
    assert_eq!(status, 200);
    let modifies = r#"pwrelay_agent_ldap_operations_total{operation="modify",result="success"}"#;
    let unlocks = r#"pwrelay_agent_jobs_total{kind="unlock",outcome="succeeded"}"#;
    let modifies_before = sample(&before, modifies).unwrap_or(0.0);
    let unlocks_before = sample(&before, unlocks).unwrap_or(0.0);

    let user = dc.create_user("metr").await;
    let unlock = support::job("job-metrics-1", pb::JobKind::Unlock, dc, pb::target::By::Upn(user.upn.clone()), None);
    let result = jobs::execute(&agent.jobs, unlock).await;
    support::success(&result);

    let (_, after) = get(agent.addr, "/metrics").await;
    assert!(sample(&after, unlocks).expect("the unlock is counted") >= unlocks_before + 1.0, "{after}");
    assert!(sample(&after, modifies).expect("its modify is counted") >= modifies_before + 1.0, "{after}");
    assert!(
        sample(&after, r#"pwrelay_agent_ldap_operation_duration_seconds_count{operation="search"}"#)
            .is_some_and(|n| n >= 1.0),
        "searches are timed: {after}"
    );
    assert!(sample(&after, r#"pwrelay_agent_job_duration_seconds_count{kind="unlock"}"#).is_some_and(|n| n >= 1.0));
    let domain = dc.domain.to_string();
    assert_eq!(
        sample(&after, &format!(r#"pwrelay_agent_dc_up{{domain="{domain}",dc="{}"}}"#, dc.ldaps_url)),
        Some(1.0),
        "{after}"
    );
    assert_eq!(sample(&after, &format!(r#"pwrelay_agent_dc_up{{domain="{domain}",dc="{dead}"}}"#)), Some(0.0));
    assert!(after.contains("pwrelay_agent_build_info{version=\""), "{after}");
    // No account reaches a label.
    assert!(!after.contains(&user.sam) && !after.contains(&user.dn), "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_link_the_certificate_each_dc_and_recent_jobs_without_accounts() {
    let dc = testkit::dc();
    let agent = agent(dc, &[&dc.ldaps_url]).await;
    agent.health.set_relay_error("relay.example.com:7443: connection refused".into());
    let expires = pwrelay_agent::jobs::unix_seconds() + 5 * 86_400;
    agent.health.set_certificate(CertificateStatus {
        agent: "agent-status".into(),
        domains: vec![dc.domain.to_string()],
        issued_unix: expires - 30 * 86_400,
        expires_unix: expires,
    });
    checked(&agent).await;
    let user = dc.create_user("stat").await;
    let job = support::job(
        "job-status-1",
        pb::JobKind::SetPassword,
        dc,
        pb::target::By::Upn(user.upn.clone()),
        Some("Status!Pass-1"),
    );
    let job_id = job.id.clone();
    support::success(&jobs::execute(&agent.jobs, job).await);

    let (_, body) = get(agent.addr, "/status").await;
    let status: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(status["ready"], false, "the relay is not connected: {status}");
    assert_eq!(status["relay"]["connected"], false);
    assert_eq!(status["relay"]["last_error"], "relay.example.com:7443: connection refused");
    assert_eq!(status["certificate"]["agent"], "agent-status");
    assert_eq!(status["certificate"]["expires_unix"], expires);
    assert_eq!(status["directories"][dc.domain.to_string()]["bind_ok"], true, "{status}");
    let recent = status["recent_jobs"].as_array().expect("recent jobs");
    let mine = recent.iter().find(|j| j["job_id"] == job_id.as_str()).expect("the job is listed");
    assert_eq!(mine["kind"], "set_password");
    assert_eq!(mine["outcome"], "succeeded");
    assert!(!body.contains(&user.sam) && !body.contains(&user.dn) && !body.contains("Status!Pass-1"), "{body}");

    // The command an admin runs on the host, against this listener.
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pwrelay-agent")).args(args).output().expect("runs")
    };
    let addr = agent.addr.to_string();
    let shown = tokio::task::spawn_blocking(move || run(&["status", "--address", &addr])).await.expect("joined");
    let text = String::from_utf8_lossy(&shown.stdout);
    assert_eq!(shown.status.code(), Some(1), "not ready exits 1: {text}");
    assert!(text.contains("NOT READY"), "{text}");
    assert!(text.contains("NOT CONNECTED: relay.example.com:7443: connection refused"), "{text}");
    assert!(text.contains("agent agent-status") && text.contains("RENEW SOON"), "{text}");
    assert!(text.contains(&format!("ok    {}", dc.ldaps_url)), "{text}");
    assert!(text.contains(&job_id) && text.contains("set_password") && text.contains("succeeded"), "{text}");

    agent.health.set_relay_connected(true);
    let addr = agent.addr.to_string();
    let shown = tokio::task::spawn_blocking(move || run(&["status", "--address", &addr])).await.expect("joined");
    let text = String::from_utf8_lossy(&shown.stdout);
    assert_eq!(shown.status.code(), Some(0), "ready exits 0: {text}");
    assert!(text.contains(": READY") && text.contains("relay        connected for"), "{text}");
}

#[tokio::test]
async fn status_says_when_no_agent_answers() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = free.local_addr().expect("addr").to_string();
    drop(free);
    let shown = std::process::Command::new(env!("CARGO_BIN_EXE_pwrelay-agent"))
        .args(["status", "--address", &addr])
        .output()
        .expect("runs");
    assert_eq!(shown.status.code(), Some(2));
    let error = String::from_utf8_lossy(&shown.stderr);
    assert!(error.contains("no agent answers") && error.contains("health.listen"), "{error}");
}
