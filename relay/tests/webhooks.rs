//! Outbound webhooks end to end: a client's webhook is set with the `pwrelay` binary, a rotation
//! runs through the real relay and agent against the Samba AD DC, and a local HTTPS receiver (with
//! a certificate from the test PKI, trusted through `webhooks.ca_file`) gets the signed event,
//! after refusing the first attempt.

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use pwrelay_shared::tls::{self, CertifiedKey};
use serde_json::{Value, json};
use support::{World, eventually};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const JOB_LIMIT: Duration = Duration::from_secs(60);

/// One request the receiver got, and what it answered.
#[derive(Clone, Debug)]
struct Call {
    headers: HeaderMap,
    body: Bytes,
    answered: u16,
}

/// A webhook receiver: HTTPS on 127.0.0.1 with the test PKI's `localhost` certificate. It answers
/// 500 while `failing` is set and to the first `fail_first` requests, 200 otherwise.
#[derive(Clone, Default)]
struct Receiver {
    calls: Arc<Mutex<Vec<Call>>>,
    fail_first: usize,
    failing: Arc<AtomicBool>,
}

impl Receiver {
    async fn start(self, world: &World) -> (Self, String, CancellationToken) {
        let pki = &world.pki.dir;
        let identity = CertifiedKey::from_files(&pki.join("relay.pem"), &pki.join("relay.key")).expect("certificate");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (cancel, tracker) = (CancellationToken::new(), TaskTracker::new());
        let incoming = pwrelay_relay::listener::TlsIncoming::spawn(
            listener,
            tls::https_server(identity).expect("tls"),
            "receiver",
            cancel.clone(),
            &tracker,
        )
        .expect("listen");
        let url = format!("https://localhost:{}/hooks/pwrelay?source=relay", incoming.local_addr().port());
        let app = axum::Router::new().route("/hooks/pwrelay", axum::routing::post(receive)).with_state(self.clone());
        let stop = cancel.clone();
        tokio::spawn(async move {
            let _ = axum::serve(incoming, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
        });
        (self, url, cancel)
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls").clone()
    }
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut calls = receiver.calls.lock().expect("calls");
    let fail = calls.len() < receiver.fail_first || receiver.failing.load(Ordering::SeqCst);
    let status = if fail { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK };
    calls.push(Call { headers, body, answered: status.as_u16() });
    status
}

fn pwrelay(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pwrelay")).args(args).output().expect("pwrelay runs")
}

/// Short back-off and polling, and trust in the test CA for the receiver's certificate.
fn configure_webhooks(world: &World) {
    let path = world.path("relay.toml");
    let mut toml = std::fs::read_to_string(&path).expect("relay.toml");
    toml.push_str(
        "\n[webhooks]\nfirst_retry_seconds = 1\nmax_retry_seconds = 2\npoll_seconds = 1\ntimeout_seconds = 5\n\
         ca_file = \"pki/ca.pem\"\n",
    );
    std::fs::write(&path, toml).expect("relay.toml");
}

/// `pwrelay clients webhook set` for the world's client; returns the signing secret it printed.
fn set_webhook(world: &World, url: &str, extra: &[&str]) -> String {
    let config = world.path("relay.toml");
    let mut args = vec!["clients", "webhook", "set", "test-pam", "--url", url];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--config", config.to_str().expect("utf-8")]);
    let out = pwrelay(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let secret = String::from_utf8(out.stdout).expect("utf-8").trim().to_owned();
    assert!(secret.starts_with("whsec_"), "the signing secret is printed once: {secret}");
    secret
}

/// The receiver's side of the documented recipe, written without pwrelay's code: HMAC-SHA256
/// with the secret over "<t>.<body>", hex, compared in constant time; the timestamp, if it holds.
fn verify_signature(secret: &str, call: &Call) -> Option<i64> {
    let header = call.headers.get("pwrelay-signature")?.to_str().ok()?;
    let (t, v1) = header.split_once(',')?;
    let t: i64 = t.strip_prefix("t=")?.parse().ok()?;
    let hex = v1.strip_prefix("v1=")?;
    let tag: Vec<u8> =
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect::<Option<_>>()?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(&call.body);
    ring::hmac::verify(&key, &message, &tag).ok().map(|()| t)
}

fn header<'a>(call: &'a Call, name: &str) -> &'a str {
    call.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

fn now_unix() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
    i64::try_from(now.as_secs()).expect("seconds")
}

/// The delivery log from the API, once `done` holds for it (within 30 s).
async fn delivery_log(world: &World, relay: &support::Relay, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, log) = world.get(relay, "/v1/webhooks/deliveries").await;
        assert_eq!(status, 200, "{log}");
        if done(&log) {
            return log;
        }
        assert!(tokio::time::Instant::now() < deadline, "delivery log: {log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_is_posted_signed_to_the_receiver_and_retried_when_it_first_fails() {
    let world = World::new(&[]).await;
    let (receiver, url, stop_receiver) = Receiver { fail_first: 1, ..Receiver::default() }.start(&world).await;
    configure_webhooks(&world);
    let secret = set_webhook(&world, &url, &[]);
    let relay = world.start_relay().await;
    let dc = world.dc;
    let agent = world.start_agent(&relay, "site-hooks", &[&dc.domain], &[&dc.domain]).await;
    let user = world.user("hook").await;
    let new_password = "Hooked!Value-5519q";

    let job_id = world
        .rotate(
            &relay,
            json!({ "domain": dc.domain.as_str(), "target": { "upn": user.upn }, "password": new_password }),
        )
        .await;
    let job = world.wait_final(&relay, &job_id, JOB_LIMIT).await;
    assert_eq!(job["state"], "succeeded", "{job}");

    assert!(
        eventually(Duration::from_secs(30), || async { receiver.calls().len() >= 2 }).await,
        "the event is retried after the receiver's 500: {:?}",
        receiver.calls()
    );
    let log = delivery_log(&world, &relay, |log| log["deliveries"][0]["state"] == "delivered").await;
    let calls = receiver.calls();
    assert_eq!(calls.iter().map(|c| c.answered).collect::<Vec<_>>(), [500, 200], "one retry, then no more");
    let (first, second) = (&calls[0], &calls[1]);
    let event_id = header(first, "pwrelay-event-id");
    assert!(event_id.starts_with("evt_"), "{event_id}");
    assert_eq!(header(second, "pwrelay-event-id"), event_id, "a retry keeps the event id");
    assert_eq!(header(first, "pwrelay-event"), "job.succeeded");
    assert_eq!((header(first, "pwrelay-delivery-attempt"), header(second, "pwrelay-delivery-attempt")), ("1", "2"));
    assert_eq!(header(first, "content-type"), "application/json");
    assert_eq!(first.body, second.body, "a retry sends the same body");
    for call in [first, second] {
        let t = verify_signature(&secret, call).expect("the signature verifies with the client's secret");
        assert!((now_unix() - t).abs() < 120, "the signature's timestamp is recent: {t}");
    }
    assert_eq!(verify_signature("whsec_someone-else", second), None, "another secret does not verify");

    let body: Value = serde_json::from_slice(&second.body).expect("JSON body");
    assert_eq!(body["event_id"], event_id);
    assert_eq!(body["event"], "job.succeeded");
    assert!(body["created_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{body}");
    assert_eq!(body["job"]["job_id"], job_id.as_str());
    assert_eq!(body["job"]["state"], "succeeded");
    assert_eq!(body["job"]["result"]["verified"], true);
    assert_eq!(body["job"]["target"]["upn"], user.upn.as_str());
    let body_text = String::from_utf8_lossy(&second.body);
    assert!(!body_text.contains(new_password) && !body_text.contains(&secret), "no secret in the body");

    let delivery = &log["deliveries"][0];
    assert_eq!(log["webhook"]["url"], url.as_str());
    assert_eq!(log["webhook"]["events"], json!(["job.succeeded", "job.failed"]));
    assert!(!log.to_string().contains(&secret), "the log never shows the secret");
    assert_eq!(delivery["event_id"], event_id);
    assert_eq!(delivery["job_id"], job_id.as_str());
    let attempts = delivery["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{delivery}");
    assert_eq!((attempts[0]["status"].as_u64(), attempts[1]["status"].as_u64()), (Some(500), Some(200)));
    assert!(attempts[0]["error"].as_str().is_some_and(|e| e.contains("500")), "{delivery}");
    assert!(attempts[1].get("error").is_none(), "{delivery}");

    let config = world.path("relay.toml");
    let out = pwrelay(&[
        "clients",
        "webhook",
        "deliveries",
        "test-pam",
        "--json",
        "--config",
        config.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli_log: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(cli_log["deliveries"][0]["attempts"].as_array().map(Vec::len), Some(2), "{cli_log}");
    let out = pwrelay(&["clients", "webhook", "deliveries", "test-pam", "--config", config.to_str().expect("utf-8")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("delivered") && text.contains("HTTP 500") && text.contains("HTTP 200"), "{text}");

    agent.stop().await;
    relay.stop().await;
    stop_receiver.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_delivery_survives_a_relay_restart() {
    let world = World::new(&[]).await;
    let failing = Arc::new(AtomicBool::new(true));
    let (receiver, url, stop_receiver) =
        Receiver { failing: Arc::clone(&failing), ..Receiver::default() }.start(&world).await;
    configure_webhooks(&world);
    set_webhook(&world, &url, &["--event", "job.failed"]);
    let relay = world.start_relay().await;
    let domain = world.dc.domain.as_str();
    // No agent: the jobs stay queued until they are cancelled, which fails them (job.failed).
    let body = |upn: &str| json!({ "domain": domain, "target": { "upn": upn }, "password": "Xx1!xxxxxx" });
    let cancelled = world.rotate(&relay, body("gone@pwrelay.test")).await;
    let (status, job) = world.delete(&relay, &format!("/v1/jobs/{cancelled}")).await;
    assert_eq!(status, 200, "{job}");

    let log =
        delivery_log(&world, &relay, |log| log["deliveries"][0]["attempts"].as_array().is_some_and(|a| !a.is_empty()))
            .await;
    assert_eq!(log["deliveries"][0]["state"], "pending", "{log}");
    assert!(log["deliveries"][0]["next_attempt_at"].is_string(), "{log}");
    let relay = world.restart_relay(relay).await;
    failing.store(false, Ordering::SeqCst);
    let log = delivery_log(&world, &relay, |log| log["deliveries"][0]["state"] == "delivered").await;
    let deliveries = log["deliveries"].as_array().expect("deliveries");
    assert_eq!(deliveries.len(), 1, "{log}");
    assert_eq!(deliveries[0]["job_id"], cancelled.as_str());
    assert_eq!(deliveries[0]["event"], "job.failed");
    let calls = receiver.calls();
    assert!(calls.len() >= 2, "{calls:?}");
    assert!(calls.iter().all(|c| header(c, "pwrelay-event-id") == deliveries[0]["event_id"]), "one event, retried");
    let body: Value = serde_json::from_slice(&calls[calls.len() - 1].body).expect("JSON body");
    assert_eq!(body["job"]["error"]["code"], "cancelled");
    let (status, delivered) = world.get(&relay, "/v1/webhooks/deliveries?state=delivered&limit=1").await;
    assert_eq!((status, delivered["deliveries"].as_array().map(Vec::len)), (200, Some(1)));
    let (status, _) = world.get(&relay, "/v1/webhooks/deliveries?state=sent").await;
    assert_eq!(status, 422);
    relay.stop().await;
    stop_receiver.cancel();
}
