//! The job API around the jobs themselves: scopes, idempotency keys, listing with a cursor, and
//! cancellation. A relay without agents is enough: jobs stay queued.

mod support;

use pwrelay_relay::store::sqlite::SqliteStore;
use pwrelay_relay::store::{ClientStore as _, Operation, Scopes};
use serde_json::json;
use support::World;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_may_only_do_what_its_scopes_allow() {
    let world = World::new(&["other.test"]).await;
    let relay = world.start_relay().await;
    let store = SqliteStore::open(&world.path("relay.db")).expect("store");
    let (token, hash) = pwrelay_relay::api::auth::new_token().expect("token");
    let scopes =
        Scopes { domains: Some([world.dc.domain.clone()].into()), operations: Some([Operation::Verify].into()) };
    store.add_client("verifier", hash, &scopes).await.expect("client");
    let url = |path: &str| format!("https://127.0.0.1:{}{path}", relay.api.port());
    let post = |path: &'static str, body: serde_json::Value| {
        let request = world.http.post(url(path)).bearer_auth(token.expose_secret()).json(&body);
        async move {
            let response = request.send().await.expect("answer");
            (response.status().as_u16(), response.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    let target = json!({ "upn": "a@pwrelay.test" });
    let domain = world.dc.domain.as_str();
    let (status, _) =
        post("/v1/verifications", json!({ "domain": domain, "target": target, "password": "Xx1!xxxxxx" })).await;
    assert_eq!(status, 202, "verify is in scope");
    let (status, reply) =
        post("/v1/rotations", json!({ "domain": domain, "target": target, "password": "Xx1!xxxxxx" })).await;
    assert_eq!(status, 403);
    assert!(reply["error"]["message"].as_str().unwrap_or_default().contains("operation:rotate"), "{reply}");
    // A served domain outside the client's scopes is refused exactly like one the relay does not
    // serve: the client cannot tell which other domains the relay serves.
    let (status, reply) =
        post("/v1/verifications", json!({ "domain": "other.test", "target": target, "password": "Xx1!xxxxxx" })).await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["error"]["code"], "invalid_request", "{reply}");
    assert!(!reply.to_string().contains("other.test"), "{reply}");
    let (unserved_status, unserved) =
        post("/v1/verifications", json!({ "domain": "nowhere.test", "target": target, "password": "Xx1!xxxxxx" }))
            .await;
    assert_eq!((unserved_status, &unserved), (status, &reply), "the same answer for both");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_replays_the_same_request_and_refuses_another() {
    let world = World::new(&[]).await;
    let relay = world.start_relay().await;
    let url = format!("https://127.0.0.1:{}/v1/rotations", relay.api.port());
    let body =
        json!({ "domain": world.dc.domain.as_str(), "target": { "upn": "a@pwrelay.test" }, "password": "Xx1!xxxxxx" });
    let send = |body: serde_json::Value, key: &'static str| {
        let request =
            world.http.post(&url).bearer_auth(world.token.expose_secret()).header("Idempotency-Key", key).json(&body);
        async move {
            let response = request.send().await.expect("answer");
            let replayed = response.headers().contains_key("idempotent-replayed");
            (response.status().as_u16(), replayed, response.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    let (status, replayed, first) = send(body.clone(), "rotation-42").await;
    assert_eq!((status, replayed), (202, false));
    let (status, replayed, again) = send(body.clone(), "rotation-42").await;
    assert_eq!((status, replayed), (202, true));
    assert_eq!(again["job_id"], first["job_id"], "the same job, not a second one");
    let mut other = body.clone();
    other["password"] = json!("Yy2!yyyyyy");
    let (status, _, conflict) = send(other, "rotation-42").await;
    assert_eq!(status, 409, "{conflict}");
    let (_, list) = world.get(&relay, "/v1/jobs").await;
    assert_eq!(list["jobs"].as_array().map(Vec::len), Some(1), "one job in all: {list}");
    let (status, _, _) = send(body.clone(), "bad key with spaces").await;
    assert_eq!(status, 422);
    relay.stop().await;
    // What is kept of the body (it holds the password) cannot be tested against guesses without
    // the store key: not its plain SHA-256.
    let db = rusqlite::Connection::open(world.dir.path().join("relay.db")).expect("store file");
    let kept: Vec<u8> = db
        .query_row("SELECT body_sha256 FROM idempotency_keys WHERE key = 'rotation-42'", [], |row| row.get(0))
        .expect("the key is kept");
    let plain: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(serde_json::to_vec(&body).expect("json")).into();
    assert_eq!(kept.len(), 32);
    assert_ne!(kept, plain.to_vec(), "an unsalted digest of a body with a password is at rest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_listed_page_by_page_and_filtered_and_queued_ones_can_be_cancelled() {
    let world = World::new(&["other.test"]).await;
    let relay = world.start_relay().await;
    let mut ids = Vec::new();
    for (i, domain) in ["other.test", world.dc.domain.as_str(), "other.test", "other.test", world.dc.domain.as_str()]
        .into_iter()
        .enumerate()
    {
        let body = json!({ "domain": domain, "target": { "upn": format!("u{i}@x.test") }, "password": "Xx1!xxxxxx" });
        ids.push(world.rotate(&relay, body).await);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs?limit=2&cursor={c}"),
            None => "/v1/jobs?limit=2".into(),
        };
        let (status, page) = world.get(&relay, &path).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(
            page["jobs"].as_array().expect("jobs").iter().map(|j| j["job_id"].as_str().expect("id").to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every job once, oldest first");
    let (_, other) = world.get(&relay, "/v1/jobs?domain=other.test").await;
    assert_eq!(other["jobs"].as_array().map(Vec::len), Some(3));

    let (status, cancelled) = world.delete(&relay, &format!("/v1/jobs/{}", ids[0])).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["state"], "failed");
    assert_eq!(cancelled["error"]["code"], "cancelled");
    let (status, _) = world.delete(&relay, &format!("/v1/jobs/{}", ids[0])).await;
    assert_eq!(status, 409, "a finished job cannot be cancelled again");
    let (_, failed) = world.get(&relay, "/v1/jobs?state=failed").await;
    assert_eq!(failed["jobs"].as_array().map(Vec::len), Some(1));
    let (status, _) = world.get(&relay, "/v1/jobs?state=done").await;
    assert_eq!(status, 422);
    let (status, _) = world.get(&relay, "/v1/jobs?since=yesterday").await;
    assert_eq!(status, 422);
    let (_, future) = world.get(&relay, "/v1/jobs?since=2999-01-01T00:00:00Z").await;
    assert_eq!(future["jobs"], json!([]));
    relay.stop().await;
}
