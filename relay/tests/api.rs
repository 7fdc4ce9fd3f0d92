//! The HTTPS API's refusals: authentication, body validation, limits, and health. A relay with no
//! agent is enough for these.

mod support;

use serde_json::json;
use support::World;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_token_are_refused() {
    let world = World::new(&[]).await;
    let relay = world.start_relay().await;
    let url = format!("https://127.0.0.1:{}/v1/rotations", relay.api.port());
    let body =
        json!({ "domain": world.dc.domain.as_str(), "target": { "upn": "a@pwrelay.test" }, "password": "Xx1!xxxxxx" });
    let none = world.http.post(&url).json(&body).send().await.expect("answer");
    assert_eq!(none.status(), 401);
    assert_eq!(none.headers().get("www-authenticate").and_then(|v| v.to_str().ok()), Some("Bearer"));
    let wrong = world.http.post(&url).bearer_auth("pwr_not-a-token").json(&body).send().await.expect("answer");
    assert_eq!(wrong.status(), 401);
    let reply: serde_json::Value = wrong.json().await.expect("json");
    assert_eq!(reply["error"]["code"], "unauthenticated");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_get_typed_errors_that_say_what_to_fix() {
    let world = World::new(&[]).await;
    let relay = world.start_relay().await;
    let domain = world.dc.domain.as_str();
    let cases = [
        (
            json!({ "domain": domain, "target": { "upn": "a@pwrelay.test" }, "password": "Xx1!xxxxxx", "colour": "red" }),
            400,
            "colour",
        ),
        (json!({ "domain": domain, "target": { "upn": "a@pwrelay.test" } }), 422, "password"),
        (json!({ "domain": domain, "target": { "upn": "a@pwrelay.test" }, "password": 12345678 }), 400, "wrong type"),
        (json!({ "domain": domain, "target": { "upn": "a@pwrelay.test" }, "password": "" }), 422, "password is empty"),
        (
            json!({ "domain": "unknown.test", "target": { "upn": "a@pwrelay.test" }, "password": "Xx1!xxxxxx" }),
            422,
            "unknown domain",
        ),
        (json!({ "domain": domain, "target": {}, "password": "Xx1!xxxxxx" }), 422, "exactly one"),
        (
            json!({ "domain": domain, "target": { "upn": "a@x", "dn": "CN=a" }, "password": "Xx1!xxxxxx" }),
            422,
            "exactly one",
        ),
        (json!({ "domain": domain, "target": { "object_guid": "nope" }, "password": "Xx1!xxxxxx" }), 422, "GUID"),
        (json!({ "domain": domain, "target": { "upn": "a@x" }, "password": "x".repeat(257) }), 422, "256"),
    ];
    for (body, status, hint) in cases {
        let (got, reply) = world.post(&relay, "/v1/rotations", &body).await;
        assert_eq!(got, status, "{body} → {reply}");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(hint), "{body} → {message:?} should mention {hint:?}");
        assert!(!message.contains("12345678"), "the error never echoes a password");
    }
    let url = format!("https://127.0.0.1:{}/v1/rotations", relay.api.port());
    let malformed = world
        .http
        .post(&url)
        .bearer_auth(world.token.expose_secret())
        .header("content-type", "application/json")
        .body("{\"domain\": ")
        .send()
        .await
        .expect("answer");
    assert_eq!(malformed.status(), 400);
    let not_json =
        world.http.post(&url).bearer_auth(world.token.expose_secret()).body("domain=x").send().await.expect("answer");
    assert_eq!(not_json.status(), 415);
    let huge = world
        .http
        .post(&url)
        .bearer_auth(world.token.expose_secret())
        .header("content-type", "application/json")
        .body(format!("{{\"domain\": \"{}\"}}", "a".repeat(200_000)))
        .send()
        .await
        .expect("answer");
    assert_eq!(huge.status(), 413);
    let (status, _) = world.get(&relay, "/v1/jobs/not-a-uuid").await;
    assert_eq!(status, 422);
    let (status, _) = world.get(&relay, "/v1/jobs/0190c5d6-0000-7000-8000-000000000000").await;
    assert_eq!(status, 404);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_answer_without_a_token() {
    let world = World::new(&[]).await;
    let relay = world.start_relay().await;
    let base = format!("https://127.0.0.1:{}", relay.api.port());
    let alive = world.http.get(format!("{base}/healthz")).send().await.expect("answer");
    assert_eq!(alive.status(), 200);
    let ready: serde_json::Value =
        world.http.get(format!("{base}/readyz")).send().await.expect("answer").json().await.expect("json");
    assert_eq!(ready["status"], "ready");
    assert!(ready.get("domains").is_none(), "without a token no domain is named: {ready}");
    let (status, ready) = world.get(&relay, "/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(ready["domains"][world.dc.domain.as_str()]["agent_connected"], false);
    relay.stop().await;
}
