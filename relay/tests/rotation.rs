//! End to end: API → relay → mTLS gRPC → agent → LDAPS → the throwaway Samba AD DC, with real
//! processes' `App`s, a real SQLite store and real certificates from the product's own PKI code.

mod support;

use std::time::Duration;

use pwrelay_shared::domain::DomainName;
use pwrelay_shared::testkit::TestPki;
use serde_json::json;
use support::{World, eventually, logs};

const JOB_LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_sets_the_password_and_the_new_one_binds() {
    let world = World::new(&[]).await;
    let relay = world.start_relay().await;
    let dc = world.dc;
    let agent = world.start_agent(&relay, "site-a", &[&dc.domain], &[&dc.domain]).await;
    let user = world.user("rot").await;
    let new_password = "Rotated!Value-7731x";
    assert!(
        eventually(Duration::from_secs(15), || async { agent.readyz().await.0 == 200 }).await,
        "agent becomes ready"
    );
    let (_, ready) = agent.readyz().await;
    assert_eq!(ready["relay_connected"], true);
    assert_eq!(ready["directories"][dc.domain.as_str()]["bind_ok"], true);

    let job_id = world
        .rotate(
            &relay,
            json!({ "domain": dc.domain.as_str(), "target": { "upn": user.upn }, "password": new_password }),
        )
        .await;
    let job = world.wait_final(&relay, &job_id, JOB_LIMIT).await;

    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["agent"], "site-a");
    assert_eq!(job["result"]["verified"], true);
    assert_eq!(job["result"]["account_dn"].as_str().map(str::to_lowercase), Some(user.dn.to_lowercase()));
    assert!(!job.to_string().contains(new_password), "the job view never carries the password");
    assert!(dc.bind(&user.dn, new_password).await.ok(), "the new password binds");
    let old = dc.bind(&user.dn, user.password.expose_secret()).await;
    assert_eq!(old.rc, 49, "the old password is refused: {old:?}");
    let pwd_last_set: i64 =
        dc.attribute(&user.dn, "pwdLastSet").await.and_then(|v| v.parse().ok()).expect("pwdLastSet");
    assert!(pwd_last_set > 0, "pwdLastSet is a time when must_change is false, got {pwd_last_set}");
    assert_eq!(job["result"]["pwd_last_set"].as_i64(), Some(pwd_last_set));

    agent.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn must_change_and_sam_account_name_targets_work() {
    let world = World::new(&[]).await;
    let relay = world.start_relay().await;
    let dc = world.dc;
    let agent = world.start_agent(&relay, "site-b", &[&dc.domain], &[&dc.domain]).await;
    let user = world.user("mc").await;
    let job_id = world
        .rotate(
            &relay,
            json!({ "domain": dc.domain.as_str(), "target": { "sam_account_name": user.sam }, "password": "Temp0rary!Pass-42", "must_change": true }),
        )
        .await;
    let job = world.wait_final(&relay, &job_id, JOB_LIMIT).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["pwd_last_set"], 0);
    assert_eq!(dc.attribute(&user.dn, "pwdLastSet").await.as_deref(), Some("0"));
    let bind = dc.bind(&user.dn, "Temp0rary!Pass-42").await;
    assert!(!bind.ok() && bind.text.contains("773"), "a must-change account reports data 773: {bind:?}");
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_violations_and_unknown_accounts_fail_with_typed_errors() {
    let world = World::new(&[]).await;
    let relay = world.start_relay().await;
    let dc = world.dc;
    let agent = world.start_agent(&relay, "site-c", &[&dc.domain], &[&dc.domain]).await;
    let user = world.user("pol").await;

    // The agent's pre-check refuses what the domain policy forbids, before the DC sees it.
    let short = world
        .rotate(&relay, json!({ "domain": dc.domain.as_str(), "target": { "upn": user.upn }, "password": "Ab1!" }))
        .await;
    let job = world.wait_final(&relay, &short, JOB_LIMIT).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "policy_violation");
    assert!(job["error"].get("directory_code").is_none(), "refused by the agent: {job}");
    assert!(job["error"]["message"].as_str().unwrap_or_default().contains("shorter than the minimum of 7"), "{job}");

    // A fine-grained policy the delegated service account cannot read is enforced by the DC itself,
    // whose reason is passed on.
    dc.create_pso(&user.dn, 16, true, 24).await;
    let thirteen = world
        .rotate(
            &relay,
            json!({ "domain": dc.domain.as_str(), "target": { "upn": user.upn }, "password": "Thirteen!Ch1x" }),
        )
        .await;
    let job = world.wait_final(&relay, &thirteen, JOB_LIMIT).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "policy_violation");
    assert_eq!(job["error"]["directory_code"], "0000052D");
    assert!(
        job["error"]["message"].as_str().unwrap_or_default().contains("too short"),
        "the DC's reason is passed on: {job}"
    );
    assert!(dc.bind(&user.dn, user.password.expose_secret()).await.ok(), "a refused reset leaves the old password");

    let missing = world
        .rotate(&relay, json!({ "domain": dc.domain.as_str(), "target": { "upn": "nobody-here@pwrelay.test" }, "password": "Valid!Passw0rd-1" }))
        .await;
    let job = world.wait_final(&relay, &missing, JOB_LIMIT).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "account_not_found");

    agent.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_its_delegated_ou_the_agent_reports_the_missing_right() {
    let world = World::new(&[]).await;
    let relay = world.start_relay().await;
    let dc = world.dc;
    let agent = world.start_agent(&relay, "site-d", &[&dc.domain], &[&dc.domain]).await;
    let outsider = dc.create_user("outou").await; // CN=Users: no delegation there
    let id = world
        .rotate(
            &relay,
            json!({ "domain": dc.domain.as_str(), "target": { "upn": outsider.upn }, "password": "Outside!Pass-51" }),
        )
        .await;
    let job = world.wait_final(&relay, &id, JOB_LIMIT).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "access_denied");
    let message = job["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("Reset Password") && message.contains("Grant-PwRelayRights.ps1"), "{message}");
    assert!(dc.bind(&outsider.dn, outsider.password.expose_secret()).await.ok(), "unchanged");
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_accepted_without_an_agent_completes_when_one_connects() {
    let world = World::new(&[]).await;
    let relay = world.start_relay().await;
    let dc = world.dc;
    let user = world.user("late").await;
    let (status, reply) = world
        .post(
            &relay,
            "/v1/rotations",
            &json!({ "domain": dc.domain.as_str(), "target": { "upn": user.upn }, "password": "Later!Passw0rd-9" }),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(reply["agent_connected"], false);
    let job_id = reply["job_id"].as_str().expect("job id").to_owned();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, job) = world.get(&relay, &format!("/v1/jobs/{job_id}")).await;
    assert_eq!(job["state"], "queued");

    let agent = world.start_agent(&relay, "site-late", &[&dc.domain], &[&dc.domain]).await;
    let job = world.wait_final(&relay, &job_id, JOB_LIMIT).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(dc.bind(&user.dn, "Later!Passw0rd-9").await.ok());
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_queued_before_a_relay_restart_completes_after_it() {
    let world = World::new(&[]).await;
    let dc = world.dc;
    let user = world.user("rst").await;
    let first = world.start_relay().await;
    let job_id = world
        .rotate(
            &first,
            json!({ "domain": dc.domain.as_str(), "target": { "upn": user.upn }, "password": "Restart!Passw0rd-3" }),
        )
        .await;
    first.stop().await;
    for file in ["relay.db", "relay.db-wal"] {
        let bytes = std::fs::read(world.path(file)).unwrap_or_default();
        assert!(!bytes.windows(8).any(|w| w == b"Restart!"), "the queued password is sealed in {file}");
    }

    let second = world.start_relay().await;
    let (_, job) = world.get(&second, &format!("/v1/jobs/{job_id}")).await;
    assert_eq!(job["state"], "queued", "the job survived the restart: {job}");
    let agent = world.start_agent(&second, "site-r", &[&dc.domain], &[&dc.domain]).await;
    let job = world.wait_final(&second, &job_id, JOB_LIMIT).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(dc.bind(&user.dn, "Restart!Passw0rd-3").await.ok());
    agent.stop().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reconnects_after_a_relay_restart() {
    let world = World::new(&[]).await;
    let dc = world.dc;
    let first = world.start_relay().await;
    let agent = world.start_agent(&first, "site-rc", &[&dc.domain], &[&dc.domain]).await;
    assert!(eventually(Duration::from_secs(15), || async { agent.readyz().await.0 == 200 }).await, "agent ready");
    let second = world.restart_relay(first).await;
    let user = world.user("rc").await;
    let job_id = world
        .rotate(
            &second,
            json!({ "domain": dc.domain.as_str(), "target": { "upn": user.upn }, "password": "Reconnect!Pass-4" }),
        )
        .await;
    let job = world.wait_final(&second, &job_id, JOB_LIMIT).await;
    assert_eq!(job["state"], "succeeded", "the agent reconnected on its own: {job}");
    assert!(logs().text().contains("reconnecting after back-off"));
    agent.stop().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_only_receives_jobs_for_the_domains_in_its_certificate() {
    let world = World::new(&["other.test"]).await;
    let relay = world.start_relay().await;
    let dc = world.dc;
    let other = DomainName::parse("other.test").expect("domain");
    // This agent's configuration claims both domains, but its certificate names only other.test.
    let outsider = world.start_agent(&relay, "site-other", &[&other], &[&other, &dc.domain]).await;
    let connected = eventually(Duration::from_secs(15), || async {
        let (_, fleet) = world.get(&relay, "/v1/agents").await;
        fleet["agents"].as_array().is_some_and(|a| a.iter().any(|x| x["name"] == "site-other"))
    })
    .await;
    assert!(connected, "the outsider agent connects");
    let (_, fleet) = world.get(&relay, "/v1/agents").await;
    assert_eq!(fleet["agents"][0]["domains"], json!(["other.test"]), "authorized for its certificate's domains only");

    let user = world.user("dom").await;
    let job_id = world
        .rotate(
            &relay,
            json!({ "domain": dc.domain.as_str(), "target": { "upn": user.upn }, "password": "Domain!Passw0rd-5" }),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, job) = world.get(&relay, &format!("/v1/jobs/{job_id}")).await;
    assert_eq!(job["state"], "queued", "the outsider never receives the job: {job}");
    assert_eq!(job["attempts"], 0);

    let insider = world.start_agent(&relay, "site-inside", &[&dc.domain], &[&dc.domain]).await;
    let job = world.wait_final(&relay, &job_id, JOB_LIMIT).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["agent"], "site-inside");
    insider.stop().await;
    outsider.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_certificate_from_another_ca_is_refused() {
    let world = World::new(&[]).await;
    let relay = world.start_relay().await;
    let dc = world.dc;
    // A second, unrelated CA issues this agent's certificate; it trusts the real relay CA.
    let rogue_dir = world.path("rogue");
    std::fs::create_dir_all(&rogue_dir).expect("dir");
    let rogue_pki = TestPki::create(&world.path("rogue-pki").tap_mkdir());
    rogue_pki.issue_agent("rogue", &[&dc.domain], &rogue_dir);
    std::fs::copy(world.path("pki/ca.pem"), rogue_dir.join("ca.pem")).expect("relay CA");
    let rogue = world.start_agent_in(&rogue_dir, &relay, &[&dc.domain]).await;

    let user = world.user("rog").await;
    let job_id = world
        .rotate(
            &relay,
            json!({ "domain": dc.domain.as_str(), "target": { "upn": user.upn }, "password": "Rogue!Passw0rd-8" }),
        )
        .await;
    let refused =
        eventually(Duration::from_secs(15), || async { logs().text().contains("TLS handshake refused") }).await;
    assert!(refused, "the relay logs the refused handshake");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, fleet) = world.get(&relay, "/v1/agents").await;
    assert_eq!(fleet["agents"], json!([]), "no agent is registered");
    let (_, job) = world.get(&relay, &format!("/v1/jobs/{job_id}")).await;
    assert_eq!(job["state"], "queued");
    assert!(dc.bind(&user.dn, user.password.expose_secret()).await.ok(), "the password is unchanged");
    rogue.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_refuses_a_relay_certificate_without_the_expected_name() {
    let world = World::new(&[]).await;
    let relay = world.start_relay().await;
    let dc = world.dc;
    let dir = world.path("agent-misnamed");
    std::fs::create_dir_all(&dir).expect("dir");
    world.pki.issue_agent("misnamed", &[&dc.domain], &dir);
    let agent = world.start_agent_expecting(&dir, &relay, &[&dc.domain], "relay.elsewhere.example").await;
    let refused = eventually(Duration::from_secs(15), || async {
        logs().text().lines().any(|l| l.contains("agent link down") && l.contains("relay.elsewhere.example"))
            || logs().text().contains("NotValidForName")
    })
    .await;
    assert!(refused, "the agent reports the name mismatch");
    let (_, fleet) = world.get(&relay, "/v1/agents").await;
    assert_eq!(fleet["agents"], json!([]), "the agent never connected");
    assert_eq!(agent.readyz().await.0, 503);
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_reach_the_logs() {
    let world = World::new(&[]).await;
    let relay = world.start_relay().await;
    let dc = world.dc;
    let agent = world.start_agent(&relay, "site-logs", &[&dc.domain], &[&dc.domain]).await;
    let user = world.user("log").await;
    let good = "Zq9!LogCanary-good-5521";
    let bad = "Zq9!c"; // too short: travels the failure path, including the DC's error text
    for password in [good, bad] {
        let id = world
            .rotate(
                &relay,
                json!({ "domain": dc.domain.as_str(), "target": { "upn": user.upn }, "password": password }),
            )
            .await;
        world.wait_final(&relay, &id, JOB_LIMIT).await;
    }
    // The API's refusal paths must not echo it either.
    let (status, reply) = world
        .post(
            &relay,
            "/v1/rotations",
            &json!({ "domain": "nope.test", "target": { "upn": user.upn }, "password": good }),
        )
        .await;
    assert_eq!(status, 422);
    assert!(!reply.to_string().contains(good));
    agent.stop().await;
    relay.stop().await;
    let text = logs().text();
    assert!(text.contains("job finished"), "logs were captured");
    assert!(!text.contains("LogCanary"), "a password reached the logs");
    assert!(!text.contains(bad), "a password reached the logs");
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).expect("dir");
        self
    }
}
