//! The PAM operations beyond a plain rotation, end to end through the relay and a delegated agent:
//! generated passwords returned exactly once (sealed to the requester's key or not), verification,
//! unlock of a real lockout, and history enforcement.

mod support;

use std::time::Duration;

use base64::Engine as _;
use crypto_box::SecretKey;
use crypto_box::aead::OsRng;
use serde_json::json;
use support::World;

const JOB_LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_password_sealed_to_the_requester_is_handed_out_once() {
    let world = World::new(&[]).await;
    let relay = world.start_relay().await;
    let dc = world.dc;
    let agent = world.start_agent(&relay, "site-g", &[&dc.domain], &[&dc.domain]).await;
    let user = world.user("genk").await;
    let key = SecretKey::generate(&mut OsRng);
    let public = base64::engine::general_purpose::STANDARD.encode(key.public_key().as_bytes());
    let id = world
        .rotate(
            &relay,
            json!({ "domain": dc.domain.as_str(), "target": { "upn": user.upn },
                    "generate": { "length": 24, "mode": "friendly" }, "recipient_public_key": public }),
        )
        .await;
    let job = world.wait_final(&relay, &id, JOB_LIMIT).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["kind"], "generate_password");
    assert_eq!(job["secret"], "available");
    let (status, secret) = world.get(&relay, &format!("/v1/jobs/{id}/secret")).await;
    assert_eq!(status, 200, "{secret}");
    assert_eq!(secret["encoding"], "sealed_box");
    let sealed =
        base64::engine::general_purpose::STANDARD.decode(secret["sealed_box"].as_str().expect("box")).expect("b64");
    let password = String::from_utf8(key.unseal(&sealed).expect("only our key opens it")).expect("utf-8");
    assert_eq!(password.chars().count(), 24);
    assert!(dc.bind(&user.dn, &password).await.ok(), "the generated password is the account's");
    let (again, body) = world.get(&relay, &format!("/v1/jobs/{id}/secret")).await;
    assert_eq!(again, 410, "{body}");
    let (_, job) = world.get(&relay, &format!("/v1/jobs/{id}")).await;
    assert_eq!(job["secret"], "retrieved");
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_password_without_a_key_is_readable_once_and_never_stored_in_clear() {
    let world = World::new(&[]).await;
    let relay = world.start_relay().await;
    let dc = world.dc;
    let agent = world.start_agent(&relay, "site-p", &[&dc.domain], &[&dc.domain]).await;
    let user = world.user("genp").await;
    let id = world
        .rotate(&relay, json!({ "domain": dc.domain.as_str(), "target": { "upn": user.upn }, "generate": {} }))
        .await;
    let job = world.wait_final(&relay, &id, JOB_LIMIT).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let (status, secret) = world.get(&relay, &format!("/v1/jobs/{id}/secret")).await;
    assert_eq!(status, 200);
    assert_eq!(secret["encoding"], "plaintext");
    let password = secret["password"].as_str().expect("password").to_owned();
    assert_eq!(password.chars().count(), 20, "the default length");
    assert!(dc.bind(&user.dn, &password).await.ok());
    assert_eq!(world.get(&relay, &format!("/v1/jobs/{id}/secret")).await.0, 410);
    relay.stop().await;
    for file in ["relay.db", "relay.db-wal"] {
        let bytes = std::fs::read(world.path(file)).unwrap_or_default();
        assert!(!bytes.windows(password.len()).any(|w| w == password.as_bytes()), "never in clear in {file}");
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_answers_true_and_false_without_changing_anything() {
    let world = World::new(&[]).await;
    let relay = world.start_relay().await;
    let dc = world.dc;
    let agent = world.start_agent(&relay, "site-v", &[&dc.domain], &[&dc.domain]).await;
    let user = world.user("ver").await;
    for (password, expected) in
        [(user.password.expose_secret().to_owned(), true), ("Wrong!Passw0rd-1".to_owned(), false)]
    {
        let (status, reply) = world
            .post(
                &relay,
                "/v1/verifications",
                &json!({ "domain": dc.domain.as_str(), "target": { "upn": user.upn }, "password": password }),
            )
            .await;
        assert_eq!(status, 202, "{reply}");
        let job = world.wait_final(&relay, reply["job_id"].as_str().expect("id"), JOB_LIMIT).await;
        assert_eq!(job["state"], "succeeded", "{job}");
        assert_eq!(job["kind"], "verify");
        assert_eq!(job["result"]["password_matches"], expected, "{job}");
    }
    assert!(dc.bind(&user.dn, user.password.expose_secret()).await.ok(), "nothing changed");
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlock_clears_a_real_lockout_through_the_api() {
    let world = World::new(&[]).await;
    let relay = world.start_relay().await;
    let dc = world.dc;
    let agent = world.start_agent(&relay, "site-u", &[&dc.domain], &[&dc.domain]).await;
    let user = world.user("unl").await;
    dc.lock_out(&user).await;
    let (status, reply) = world
        .post(&relay, "/v1/unlocks", &json!({ "domain": dc.domain.as_str(), "target": { "upn": user.upn } }))
        .await;
    assert_eq!(status, 202, "{reply}");
    let job = world.wait_final(&relay, reply["job_id"].as_str().expect("id"), JOB_LIMIT).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["account_state"]["locked_out"], false, "{job}");
    assert!(dc.bind(&user.dn, user.password.expose_secret()).await.ok(), "the unchanged password binds again");
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn option_and_secret_misuse_gets_clear_errors() {
    let world = World::new(&[]).await;
    let relay = world.start_relay().await;
    let domain = world.dc.domain.as_str();
    let target = json!({ "upn": "a@pwrelay.test" });
    let cases = [
        (
            json!({ "domain": domain, "target": target, "password": "Xx1!xxxxxx", "generate": {} }),
            "exactly one of password and generate",
        ),
        (json!({ "domain": domain, "target": target }), "exactly one of password and generate"),
        (json!({ "domain": domain, "target": target, "generate": { "length": 4 } }), "generate.length"),
        (json!({ "domain": domain, "target": target, "generate": { "mode": "emoji" } }), "generate.mode"),
        (json!({ "domain": domain, "target": target, "generate": {}, "recipient_public_key": "AAAA" }), "32-byte"),
        (
            json!({ "domain": domain, "target": target, "password": "Xx1!xxxxxx", "recipient_public_key": "AAAA" }),
            "goes with generate",
        ),
    ];
    for (body, hint) in cases {
        let (status, reply) = world.post(&relay, "/v1/rotations", &body).await;
        assert_eq!(status, 422, "{body} → {reply}");
        assert!(reply["error"]["message"].as_str().unwrap_or_default().contains(hint), "{body} → {reply}");
    }
    let (status, _) =
        world.post(&relay, "/v1/verifications", &json!({ "domain": domain, "target": target, "password": "" })).await;
    assert_eq!(status, 422);
    let (status, _) =
        world.post(&relay, "/v1/unlocks", &json!({ "domain": domain, "target": target, "password": "x" })).await;
    assert_eq!(status, 400, "unlocks take no password");
    let (status, reply) = world
        .post(&relay, "/v1/reconciliations", &json!({ "domain": domain, "targets": [target, { "upn": "" }] }))
        .await;
    assert_eq!(status, 422);
    assert!(reply["error"]["message"].as_str().unwrap_or_default().starts_with("targets[1]: "), "{reply}");
    let (status, _) = world.post(&relay, "/v1/reconciliations", &json!({ "domain": domain, "targets": [] })).await;
    assert_eq!(status, 422);
    // No agent is connected: the generating job stays queued, and its secret is not ready.
    let id = world.rotate(&relay, json!({ "domain": domain, "target": target, "generate": {} })).await;
    let (status, reply) = world.get(&relay, &format!("/v1/jobs/{id}/secret")).await;
    assert_eq!(status, 409, "{reply}");
    let plain = world.rotate(&relay, json!({ "domain": domain, "target": target, "password": "Xx1!xxxxxx" })).await;
    assert_eq!(
        world.get(&relay, &format!("/v1/jobs/{plain}/secret")).await.0,
        404,
        "a rotation with a given password returns none"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconciliation_of_50_accounts_reports_each_and_leaves_out_of_scope_ones_alone() {
    use pwrelay_shared::derive::{DeriveParams, derive};
    use pwrelay_shared::secret::SecretString;

    let world = World::new(&[]).await;
    let relay = world.start_relay().await;
    let dc = world.dc;
    let agent = world.start_scoped_agent(&relay, "site-rec").await;
    let mut inside = Vec::new();
    for _ in 0..45 {
        inside.push(world.user("rc").await);
    }
    let mut outside = Vec::new();
    for _ in 0..5 {
        outside.push(dc.create_user("rcout").await); // CN=Users: outside the agent's scope
    }
    let mut csv = String::from("name,upn\n");
    for user in inside.iter().chain(&outside) {
        csv.push_str(&format!("{},{}\n", user.sam, user.upn));
    }
    let response = world
        .http
        .post(format!("https://127.0.0.1:{}/v1/reconciliations?domain={}", relay.api.port(), dc.domain))
        .bearer_auth(world.token.expose_secret())
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 202);
    let reply: serde_json::Value = response.json().await.expect("json");
    let batch = reply["job_id"].as_str().expect("batch id").to_owned();
    let job = world.wait_final(&relay, &batch, Duration::from_secs(120)).await;
    assert_eq!(job["kind"], "reconcile_batch");
    assert_eq!(job["state"], "failed", "five accounts are out of scope: {job}");
    assert_eq!(job["error"]["code"], "partial_failure");
    assert_eq!(job["progress"], json!({ "total": 50, "queued": 0, "dispatched": 0, "succeeded": 45, "failed": 5 }));

    let mut children = Vec::new();
    let mut cursor = String::new();
    loop {
        let (_, page) = world.get(&relay, &format!("/v1/jobs?limit=500{cursor}")).await;
        children.extend(
            page["jobs"].as_array().expect("jobs").iter().filter(|j| j["parent_id"] == batch.as_str()).cloned(),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(children.len(), 50);
    let out_of_scope = children.iter().filter(|c| c["error"]["code"] == "out_of_scope").count();
    assert_eq!(out_of_scope, 5, "each account has its own result");
    let salt = SecretString::from(support::World::SEED_SALT);
    for user in inside.iter().take(3) {
        let derived = derive(&user.upn, &salt, &DeriveParams::default()).expect("derive");
        assert!(dc.bind(&user.dn, derived.expose_secret()).await.ok(), "{} has its derived password", user.upn);
    }
    assert!(dc.bind(&outside[0].dn, outside[0].password.expose_secret()).await.ok(), "out of scope: unchanged");
    agent.stop().await;
    relay.stop().await;
}
