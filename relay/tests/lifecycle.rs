//! The new-hire flow end to end: a Lifecycle Workflows callout → Graph (local fake) → the agent
//! sets an initial password in the real Samba AD DC → the SMS fake receives a one-time link → a
//! real headless Chromium opens it and reveals the password → the password binds with "must
//! change" → Graph resume `completed`; plus the refusals and failure paths.

mod support;

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::browser::Browser;
use support::cloud::{self, FakeCloud};
use support::{Relay, World};

const WORKFLOW: &str = "14879e66-9ea9-48d0-804d-8fea672d0341";
const TASK: &str = "4806a56b-3e8f-4c4a-8ad5-1e2b3c7d8e9f";
const MOBILE: &str = "+4915112345678";
const PRIVATE_MAIL: &str = "jane.private@example.org";
const HMAC_SECRET: &str = "a-shared-secret-of-at-least-32-characters!";

fn callout(subject: &str, result_id: &str) -> Value {
    json!({
        "data": {
            "@odata.type": "microsoft.graph.identityGovernance.onboardingCalloutData",
            "callbackUriPath": format!("/identityGovernance/lifecycleWorkflows/workflows('{WORKFLOW}')/tasks('{TASK}')/processingResults('{result_id}')/microsoft.graph.identityGovernance.resume"),
            "subject": {"id": subject, "displayName": "Jane Hire", "userPrincipalName": "jane@contoso.test",
                        "manager": {"id": "0f7c2b8e-1d2e-4f5a-8b9c-0d1e2f3a4b5c", "displayName": "Max Manager", "email": "max@contoso.test"}},
            "task": {"id": TASK, "displayName": "Initial password"},
            "taskProcessingResult": {"id": result_id, "createdDateTime": "2026-11-22T08:00:00Z"},
            "workflow": {"id": WORKFLOW, "displayName": "Onboard new hires", "workflowVersion": 1}
        },
        "source": "sample",
        "type": "lifecycleEvent"
    })
}

/// Writes the `[lifecycle]` section (Entra-token callouts, a certificate credential for Graph)
/// and starts the relay on a port fixed in advance, so the links name it.
async fn start_relay(world: &World, cloud: &FakeCloud, auth: &str, extra: &str) -> Relay {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    // The Graph app's certificate: a self-signed certificate for the fixture RSA key.
    let key = rcgen::KeyPair::from_pem(cloud::SIGNING_KEY_PEM).expect("rsa key");
    let cert =
        rcgen::CertificateParams::new(vec!["pwrelay-graph".into()]).expect("params").self_signed(&key).expect("cert");
    std::fs::write(world.path("graph.pem"), cert.pem()).expect("cert");
    std::fs::write(world.path("graph.key"), cloud::SIGNING_KEY_PEM).expect("key");
    let x5t = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(cert.der()));
    *cloud.state.certificate_x5t.lock().expect("x5t") = Some(x5t);
    std::fs::write(world.path("sms.token"), "fake-sms-token\n").expect("sms token");
    std::fs::write(world.path("callout.secret"), HMAC_SECRET).expect("hmac secret");
    std::fs::write(world.path("graph.secret"), format!("{}\n", cloud::CLIENT_SECRET)).expect("graph secret");
    // Entra-token callouts go with a certificate credential for Graph, signed ones with a secret.
    let credential = match auth {
        "entra" => "client_certificate_file = \"graph.pem\"\nclient_key_file = \"graph.key\"\n",
        _ => "client_secret_file = \"graph.secret\"\n",
    };
    let auth_keys = match auth {
        "entra" => format!(
            "callout_auth = \"entra\"\naudience = \"{}\"\nallowed_app_ids = [\"{}\"]\n",
            cloud::AUDIENCE,
            cloud::LOGIC_APP_ID
        ),
        _ => "callout_auth = \"hmac\"\nhmac_secret_file = \"callout.secret\"\n".into(),
    };
    let section = format!(
        "\n[lifecycle]\npublic_url = \"https://localhost:{port}\"\norganization = \"Contoso\"\n\
         [[lifecycle.tenants]]\ntenant_id = \"{tenant}\"\n{auth_keys}client_id = \"{client}\"\n\
         {credential}mail_sender = \"pwrelay@contoso.test\"\n\
         [lifecycle.delivery]\nfirst_retry_seconds = 1\nmax_attempts = 3\n\
         [lifecycle.sms]\nurl = \"{url}/sms\"\nbearer_token_file = \"sms.token\"\nfrom = \"Contoso\"\n\
         [lifecycle.endpoints]\nlogin = \"{url}\"\ngraph = \"{url}\"\nca_file = \"{ca}\"\n",
        tenant = cloud::TENANT,
        client = cloud::CLIENT_ID,
        credential = credential,
        url = cloud.url,
        ca = cloud.ca_file.display(),
    );
    let path = world.path("relay.toml");
    let mut text = std::fs::read_to_string(&path).expect("relay.toml");
    text.push_str(&section);
    text.push_str(extra);
    std::fs::write(&path, text).expect("relay.toml");
    add_helpdesk(world).await;
    let overrides = pwrelay_relay::config::Overrides {
        api_listen: Some(format!("127.0.0.1:{port}").parse().expect("addr")),
        ..Default::default()
    };
    world.start_relay_with(overrides).await
}

/// Registers a synced user in the Graph fake, as Entra Connect would have made it.
async fn synced_user(world: &World, cloud: &FakeCloud, user: &pwrelay_shared::testkit::TestUser) -> String {
    let subject = uuid::Uuid::new_v4().to_string();
    let guid = uuid::Uuid::parse_str(&world.dc.object_guid(&user.dn).await).expect("guid");
    let immutable_id = base64::engine::general_purpose::STANDARD.encode(guid.to_bytes_le());
    cloud.state.users.lock().expect("users").insert(
        subject.clone(),
        json!({
            "displayName": "Jane Hire", "givenName": "Jane",
            "onPremisesSamAccountName": user.sam, "onPremisesDomainName": world.dc.domain.to_string(),
            "onPremisesImmutableId": immutable_id, "onPremisesUserPrincipalName": user.upn,
            "mobilePhone": MOBILE, "otherMails": [PRIVATE_MAIL]
        }),
    );
    cloud
        .state
        .managers
        .lock()
        .expect("managers")
        .insert(subject.clone(), json!({"displayName": "Max Manager", "mail": "max@contoso.test"}));
    subject
}

async fn post_callout(world: &World, relay: &Relay, body: &[u8], headers: &[(&str, String)]) -> (u16, Value, bool) {
    let mut request = world
        .http
        .post(format!("https://localhost:{}/v1/lifecycle/callouts", relay.api.port()))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.expect("answered");
    let status = response.status().as_u16();
    let replayed = response.headers().contains_key("idempotent-replayed");
    (status, response.json().await.unwrap_or(Value::Null), replayed)
}

/// An API client whose scopes name `lifecycle` (an unrestricted client does not see new hires).
async fn add_helpdesk(world: &World) {
    use pwrelay_relay::store::ClientStore as _;
    let store = pwrelay_relay::store::sqlite::SqliteStore::open(&world.path("relay.db")).expect("store");
    let (token, hash) = pwrelay_relay::api::auth::new_token().expect("token");
    let scopes = pwrelay_relay::store::Scopes {
        domains: None,
        operations: Some([pwrelay_relay::store::Operation::Lifecycle].into()),
    };
    store.add_client("helpdesk", hash, &scopes).await.expect("client");
    std::fs::write(world.path("helpdesk.token"), token.expose_secret()).expect("token file");
}

/// GETs `path` as the helpdesk client.
async fn helpdesk_get(world: &World, relay: &Relay, path: &str) -> (u16, Value) {
    let token = std::fs::read_to_string(world.path("helpdesk.token")).expect("token file");
    let response = world
        .http
        .get(format!("https://localhost:{}{path}", relay.api.port()))
        .bearer_auth(token)
        .send()
        .await
        .expect("answered");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn request_state(world: &World, relay: &Relay, id: &str) -> Value {
    helpdesk_get(world, relay, &format!("/v1/lifecycle/requests/{id}")).await.1
}

async fn wait_stage(world: &World, relay: &Relay, id: &str, stage: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let last = request_state(world, relay, id).await;
        if last["stage"] == stage {
            return last;
        }
        assert!(tokio::time::Instant::now() < deadline, "request {id} did not reach stage {stage}: {last}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn link_in(message: &str) -> String {
    let start = message.find("https://").expect("the SMS holds a link");
    message[start..].split_whitespace().next().expect("link").to_owned()
}

fn proof(key_b64: &str) -> String {
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(key_b64).expect("key");
    let digest = Sha256::new().chain_update(b"pwrelay-claim").chain_update(&key).finalize();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_hire_reveals_a_must_change_password_in_a_real_browser_and_the_workflow_completes() {
    let world = World::new(&[]).await;
    let cloud = FakeCloud::start(world.dir.path()).await;
    let relay = start_relay(&world, &cloud, "entra", "").await;
    let dc = world.dc;
    let agent = world.start_agent(&relay, "hq", &[&dc.domain], &[&dc.domain]).await;
    let hire = world.user("hire").await;
    let subject = synced_user(&world, &cloud, &hire).await;
    let result_id = uuid::Uuid::new_v4().to_string();
    let body = callout(&subject, &result_id).to_string();
    let token = cloud.entra_token(cloud::AUDIENCE, cloud::LOGIC_APP_ID, cloud::TENANT);
    let bearer = [("authorization", format!("Bearer {token}"))];

    // Refused callouts create nothing.
    let wrong_app = cloud.entra_token(cloud::AUDIENCE, "00000000-0000-4000-8000-000000000bad", cloud::TENANT);
    let wrong_aud = cloud.entra_token("api://someone-else", cloud::LOGIC_APP_ID, cloud::TENANT);
    let mut tampered = token.clone();
    tampered.replace_range(tampered.len() - 6.., "AAAAAA");
    for (what, bad) in [("app id", wrong_app), ("audience", wrong_aud), ("signature", tampered)] {
        let (status, body_json, _) =
            post_callout(&world, &relay, body.as_bytes(), &[("authorization", format!("Bearer {bad}"))]).await;
        assert_eq!(status, 401, "a token with the wrong {what} is refused: {body_json}");
    }
    let (status, _, _) = post_callout(&world, &relay, body.as_bytes(), &[]).await;
    assert_eq!(status, 401, "no credentials");
    let (status, _) = helpdesk_get(&world, &relay, &format!("/v1/lifecycle/requests/{result_id}")).await;
    assert_eq!(status, 404, "refused callouts leave no request");

    let (status, accepted, replayed) = post_callout(&world, &relay, body.as_bytes(), &bearer).await;
    assert_eq!((status, replayed), (202, false), "{accepted}");
    let (status, _, replayed) = post_callout(&world, &relay, body.as_bytes(), &bearer).await;
    assert_eq!((status, replayed), (202, true), "the same callout again is a replay");
    let other = callout(&subject, &result_id).to_string().replace("Jane Hire", "Someone Else");
    let (status, conflict, _) = post_callout(&world, &relay, other.as_bytes(), &bearer).await;
    assert_eq!(status, 409, "same taskProcessingResult id, another body: {conflict}");

    // The agent sets the password; the SMS arrives with the link.
    let delivered = wait_stage(&world, &relay, &result_id, "done").await;
    assert_eq!(delivered["outcome"], "completed", "{delivered}");
    assert_eq!(delivered["delivery"], "sent", "{delivered}");
    assert_eq!(dc.attribute(&hire.dn, "pwdLastSet").await.as_deref(), Some("0"), "must change at next logon");
    let sms = cloud.recorded(|r| r.sms.clone());
    assert_eq!(sms.len(), 1, "exactly one SMS: {sms:?}");
    assert_eq!(sms[0]["to"], MOBILE);
    let message = sms[0]["message"].as_str().expect("message").to_owned();
    assert!(
        !message.contains(&hire.sam) && !message.contains(&hire.upn),
        "the SMS does not name the account: {message}"
    );
    let link = link_in(&message);
    let (page_url, key) = link.split_once('#').expect("the key is in the fragment");
    assert!(page_url.starts_with(&format!("https://localhost:{}/r/", relay.api.port())), "{link}");

    // A link scanner fetching the page consumes nothing.
    let scanned = world.http.get(page_url).send().await.expect("page");
    assert_eq!(scanned.status().as_u16(), 200);
    let csp =
        scanned.headers().get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"), "strict CSP: {csp}");
    assert_eq!(scanned.headers().get("cache-control").and_then(|v| v.to_str().ok()), Some("no-store"));
    assert!(scanned.text().await.expect("html").contains("Reveal password"));

    // The person opens it in a real browser and reveals the password.
    let browser = Browser::start().await;
    browser.open(&link).await;
    assert!(browser.page_text().await.contains("Reveal password"));
    let state = request_state(&world, &relay, &result_id).await;
    assert!(
        state["link_views"].as_u64() >= Some(2) && state.get("link_claimed_at").is_none(),
        "viewing consumed nothing: {state}"
    );
    browser.screenshot("link-page").await;
    browser.click("#reveal").await;
    let password = browser.wait_text("#password").await;
    browser.screenshot("revealed").await;
    assert!(browser.page_text().await.contains("change it at first sign-in"), "the page gives guidance");
    assert!(password.len() >= 16, "a {}-character password", password.len());
    browser.open(page_url).await;
    assert!(browser.page_text().await.contains("already used"), "a claimed link says so");
    browser.screenshot("already-used").await;
    browser.quit().await;

    let bind = dc.bind(&hire.dn, &password).await;
    assert!(
        !bind.ok() && bind.text.contains("773"),
        "the revealed password is the account's, with must change: {bind:?}"
    );

    // The link works once.
    let link_id = page_url.rsplit('/').next().expect("id");
    let again =
        world.http.post(format!("{page_url}/claim")).json(&json!({"proof": proof(key)})).send().await.expect("claim");
    assert_eq!(again.status().as_u16(), 410);
    let again: Value = again.json().await.expect("json");
    assert_eq!(again["error"]["code"], "already_used", "{again}");
    assert!(!link_id.is_empty());

    // The workflow is resumed as completed, and the manager learns the username only.
    let resumes = cloud.recorded(|r| r.resumes.clone());
    assert_eq!(resumes.len(), 1, "{resumes:?}");
    assert_eq!(resumes[0].0, result_id);
    assert_eq!(resumes[0].1["data"]["operationStatus"], "completed");
    let mails = cloud.recorded(|r| r.mails.clone());
    assert_eq!(mails.len(), 1, "{mails:?}");
    let mail = mails[0].1.to_string();
    assert_eq!(mails[0].1["message"]["toRecipients"][0]["emailAddress"]["address"], "max@contoso.test");
    assert!(mail.contains(&hire.upn), "the manager gets the username: {mail}");
    assert!(!mail.contains(&password) && !mail.contains(key), "and neither the password nor the link");

    assert_eq!(cloud.recorded(|r| r.token_requests), 1, "one Graph token served every call (cached)");

    // The job is visible with its delivery state; nothing secret reached the logs or the store.
    let job_id = delivered["job_id"].as_str().expect("job id");
    let (status, job) = helpdesk_get(&world, &relay, &format!("/v1/jobs/{job_id}")).await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["kind"], "initial_password");
    assert_eq!(job["lifecycle"]["delivery"], "sent", "{job}");
    let (status, _) = world.get(&relay, &format!("/v1/jobs/{job_id}")).await;
    assert_eq!(status, 404, "an unrestricted PAM client does not see new-hire jobs");
    let (status, refused) = world.get(&relay, &format!("/v1/lifecycle/requests/{result_id}")).await;
    assert_eq!(status, 403, "nor their requests: {refused}");
    assert_eq!(refused["error"]["details"]["missing_scope"], "operation:lifecycle");
    let logs = support::logs().text();
    assert!(!logs.contains(&password) && !logs.contains(key), "no password or link key in any log line");
    agent.stop().await;
    relay.stop().await;
    let store = pwrelay_relay::store::sqlite::SqliteStore::open(&world.path("relay.db")).expect("store");
    let filter = pwrelay_relay::store::AuditFilter { limit: 10_000, ..Default::default() };
    let trail = pwrelay_relay::store::AuditStore::audit_events(&store, &filter).await.expect("audit trail");
    for event in [
        "lifecycle.callout_accepted",
        "lifecycle.job_created",
        "lifecycle.delivered",
        "lifecycle.link_viewed",
        "lifecycle.link_claimed",
        "lifecycle.resumed",
    ] {
        assert!(trail.iter().any(|e| e.event == event), "the audit trail has {event}");
    }
    let stored = serde_json::to_string(&trail).expect("JSON");
    assert!(!stored.contains(&password) && !stored.contains(key), "no password or link key in the audit trail");
    drop(store);
    let db = std::fs::read(world.path("relay.db")).expect("db");
    let wal = std::fs::read(world.path("relay.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        let text = String::from_utf8_lossy(bytes);
        assert!(!text.contains(&password) && !text.contains(key), "no password or key in the store");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signed_callouts_failure_paths_expiry_and_rate_limits() {
    let world = World::new(&[]).await;
    let cloud = FakeCloud::start(world.dir.path()).await;
    let relay = start_relay(&world, &cloud, "hmac", "[lifecycle.reveal]\nrequests_per_link_per_hour = 4\n").await;
    let dc = world.dc;
    let agent = world.start_agent(&relay, "hq", &[&dc.domain], &[&dc.domain]).await;
    let sign = |body: &str, at: SystemTime| pwrelay_relay::signature::sign(HMAC_SECRET.as_bytes(), at, body.as_bytes());

    // Bad and replayed signatures are refused and create nothing.
    let unknown_result = uuid::Uuid::new_v4().to_string();
    let body = callout(&uuid::Uuid::new_v4().to_string(), &unknown_result).to_string();
    let forged = pwrelay_relay::signature::sign(
        b"not-the-secret-not-the-secret-not-the-secret",
        SystemTime::now(),
        body.as_bytes(),
    );
    let stale = sign(&body, SystemTime::now() - Duration::from_secs(3600));
    for (what, header) in [("forged", forged), ("replayed an hour later", stale)] {
        let (status, answer, _) = post_callout(&world, &relay, body.as_bytes(), &[("pwrelay-signature", header)]).await;
        assert_eq!(status, 401, "{what}: {answer}");
    }
    let (status, _) = helpdesk_get(&world, &relay, &format!("/v1/lifecycle/requests/{unknown_result}")).await;
    assert_eq!(status, 404, "no request from refused callouts");

    // An unknown user: the workflow is resumed as failed and no link is sent.
    let (status, _, _) =
        post_callout(&world, &relay, body.as_bytes(), &[("pwrelay-signature", sign(&body, SystemTime::now()))]).await;
    assert_eq!(status, 202);
    let failed = wait_stage(&world, &relay, &unknown_result, "done").await;
    assert_eq!(failed["outcome"], "failed");
    assert!(failed["outcome_reason"].as_str().unwrap_or_default().contains("does not exist"), "{failed}");
    assert!(failed.get("job_id").is_none(), "no job for an unknown user");
    let resumes = cloud.recorded(|r| r.resumes.clone());
    assert!(
        resumes.iter().any(|(id, b)| *id == unknown_result && b["data"]["operationStatus"] == "failed"),
        "{resumes:?}"
    );
    assert!(cloud.recorded(|r| r.sms.is_empty()), "no link was sent");

    // A link that expires unclaimed: the page and the claim say so. The gateway fails once first.
    cloud.state.sms_failures.store(1, std::sync::atomic::Ordering::SeqCst);
    let hire = world.user("late").await;
    let subject = synced_user(&world, &cloud, &hire).await;
    let result_id = uuid::Uuid::new_v4().to_string();
    let body = callout(&subject, &result_id).to_string();
    let (status, _, _) =
        post_callout(&world, &relay, body.as_bytes(), &[("pwrelay-signature", sign(&body, SystemTime::now()))]).await;
    assert_eq!(status, 202);
    wait_stage(&world, &relay, &result_id, "done").await;
    let sms = cloud.recorded(|r| r.sms.clone());
    assert_eq!(sms.len(), 1, "the SMS went out after a retry: {sms:?}");
    let link = link_in(sms[0]["message"].as_str().expect("message"));
    let (page_url, key) = link.split_once('#').expect("fragment");
    let db = rusqlite::Connection::open(world.path("relay.db")).expect("db");
    db.busy_timeout(Duration::from_secs(5)).expect("timeout");
    db.execute("UPDATE lifecycle_requests SET link_expires_ms = 1 WHERE task_processing_result_id = ?1", [&result_id])
        .expect("expire the link");
    let page = world.http.get(page_url).send().await.expect("page");
    assert_eq!(page.status().as_u16(), 410);
    assert!(page.text().await.expect("html").contains("expired"));
    let claim =
        world.http.post(format!("{page_url}/claim")).json(&json!({"proof": proof(key)})).send().await.expect("claim");
    assert_eq!(claim.status().as_u16(), 410);
    assert_eq!(claim.json::<Value>().await.expect("json")["error"]["code"], "expired");
    // Two requests so far for this link; the limit is 4 an hour.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(world.http.get(page_url).send().await.expect("page").status().as_u16());
    }
    assert_eq!(statuses, [410, 410, 429], "the fifth request for one link within the hour is refused");

    // A cloud-only user (no on-premises identity): failed before any job or message.
    let cloud_only = uuid::Uuid::new_v4().to_string();
    cloud
        .state
        .users
        .lock()
        .expect("users")
        .insert(cloud_only.clone(), json!({"displayName": "Cloud Only", "mobilePhone": MOBILE, "otherMails": []}));
    cloud
        .state
        .managers
        .lock()
        .expect("managers")
        .insert(cloud_only.clone(), json!({"displayName": "Max Manager", "mail": "max@contoso.test"}));
    let result_id = uuid::Uuid::new_v4().to_string();
    let body = callout(&cloud_only, &result_id).to_string();
    let (status, _, _) =
        post_callout(&world, &relay, body.as_bytes(), &[("pwrelay-signature", sign(&body, SystemTime::now()))]).await;
    assert_eq!(status, 202);
    let failed = wait_stage(&world, &relay, &result_id, "done").await;
    assert_eq!(failed["outcome"], "failed");
    assert!(failed["outcome_reason"].as_str().unwrap_or_default().contains("cloud-only"), "{failed}");
    assert!(failed.get("job_id").is_none(), "no job for a cloud-only user");

    // A gateway that keeps failing: the workflow is resumed as failed and the link is dead.
    cloud.state.sms_failures.store(100, std::sync::atomic::Ordering::SeqCst);
    let unlucky = world.user("unlucky").await;
    let subject = synced_user(&world, &cloud, &unlucky).await;
    let result_id = uuid::Uuid::new_v4().to_string();
    let body = callout(&subject, &result_id).to_string();
    let (status, _, _) =
        post_callout(&world, &relay, body.as_bytes(), &[("pwrelay-signature", sign(&body, SystemTime::now()))]).await;
    assert_eq!(status, 202);
    let failed = wait_stage(&world, &relay, &result_id, "done").await;
    assert_eq!((failed["outcome"].as_str(), failed["delivery"].as_str()), (Some("failed"), Some("failed")), "{failed}");
    assert!(failed["delivery_detail"].as_str().unwrap_or_default().contains("after 3 attempt(s)"), "{failed}");
    let resumes = cloud.recorded(|r| r.resumes.clone());
    assert!(resumes.iter().any(|(id, b)| *id == result_id && b["data"]["operationStatus"] == "failed"), "{resumes:?}");
    let secrets: i64 = db
        .query_row(
            "SELECT count(*) FROM jobs WHERE result_secret IS NOT NULL AND id = ?1",
            [failed["job_id"].as_str().expect("job")],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(secrets, 0, "the undelivered ciphertext is erased");
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_callout_accepted_before_a_restart_is_carried_out_after_it_with_the_workflow_s_settings() {
    let world = World::new(&[]).await;
    let cloud = FakeCloud::start(world.dir.path()).await;
    let relay =
        start_relay(&world, &cloud, "entra", &format!("[lifecycle.workflows.\"{WORKFLOW}\"]\nmust_change = false\n"))
            .await;
    let hire = world.user("restart").await;
    let subject = synced_user(&world, &cloud, &hire).await;
    let result_id = uuid::Uuid::new_v4().to_string();
    let body = callout(&subject, &result_id).to_string();
    let token = cloud.entra_token(cloud::AUDIENCE, cloud::LOGIC_APP_ID, cloud::TENANT);
    let bearer = [("authorization", format!("Bearer {token}"))];
    let (status, _, _) = post_callout(&world, &relay, body.as_bytes(), &bearer).await;
    assert_eq!(status, 202);
    // No agent yet: the job waits in the queue while the relay restarts.
    let waiting = wait_stage(&world, &relay, &result_id, "applying").await;
    assert!(waiting["job_id"].is_string(), "{waiting}");
    let port = relay.api.port();
    relay.stop().await;
    // After the restart the link goes by mail to the person's private address instead of SMS.
    let path = world.path("relay.toml");
    let text = std::fs::read_to_string(&path).expect("relay.toml");
    std::fs::write(&path, text.replace("first_retry_seconds = 1", "link_channel = \"email\"\nfirst_retry_seconds = 1"))
        .expect("relay.toml");
    let overrides = pwrelay_relay::config::Overrides {
        api_listen: Some(format!("127.0.0.1:{port}").parse().expect("addr")),
        ..Default::default()
    };
    let relay = world.start_relay_with(overrides).await;
    let (status, _, replayed) = post_callout(&world, &relay, body.as_bytes(), &bearer).await;
    assert_eq!((status, replayed), (202, true), "the callout is remembered across the restart");
    let dc = world.dc;
    let agent = world.start_agent(&relay, "hq", &[&dc.domain], &[&dc.domain]).await;
    let done = wait_stage(&world, &relay, &result_id, "done").await;
    assert_eq!((done["outcome"].as_str(), done["delivery"].as_str()), (Some("completed"), Some("sent")), "{done}");
    assert_eq!(done["job_id"], waiting["job_id"], "the job made before the restart is the one carried out");
    assert!(cloud.recorded(|r| r.sms.is_empty()), "no SMS with link_channel = email");
    let mails = cloud.recorded(|r| r.mails.clone());
    assert_eq!(mails.len(), 2, "the manager's mail and the person's: {mails:?}");
    let to =
        |m: &Value| m["message"]["toRecipients"][0]["emailAddress"]["address"].as_str().unwrap_or_default().to_owned();
    let (link_mail, manager_mail) =
        if to(&mails[0].1) == PRIVATE_MAIL { (&mails[0].1, &mails[1].1) } else { (&mails[1].1, &mails[0].1) };
    assert_eq!(to(link_mail), PRIVATE_MAIL);
    assert_eq!(to(manager_mail), "max@contoso.test");
    let link_text = link_mail["message"]["body"]["content"].as_str().expect("body").to_owned();
    assert!(!link_text.contains(&hire.upn) && !link_text.contains(&hire.sam), "the link's mail names no account");
    assert!(!manager_mail.to_string().contains("/r/"), "the manager's mail holds no link");
    // This workflow skips the forced change: the password signs in as it is.
    let link = link_in(&link_text);
    let (page_url, key) = link.split_once('#').expect("fragment");
    let claimed: Value = world
        .http
        .post(format!("{page_url}/claim"))
        .json(&json!({"proof": proof(key)}))
        .send()
        .await
        .expect("claim")
        .json()
        .await
        .expect("json");
    let sealed = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claimed["ciphertext"].as_str().expect("ciphertext"))
        .expect("base64url");
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(key).expect("key");
    let aead = ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &key).expect("key"));
    let (nonce, ciphertext) = sealed.split_at(12);
    let mut buffer = ciphertext.to_vec();
    let plain = aead
        .open_in_place(
            ring::aead::Nonce::try_assume_unique_for_key(nonce).expect("nonce"),
            ring::aead::Aad::empty(),
            &mut buffer,
        )
        .expect("the link's key opens the ciphertext");
    let password = std::str::from_utf8(plain).expect("utf-8").to_owned();
    assert!(dc.bind(&hire.dn, &password).await.ok(), "no forced change for this workflow: the password signs in");
    assert_ne!(dc.attribute(&hire.dn, "pwdLastSet").await.as_deref(), Some("0"));
    agent.stop().await;
    relay.stop().await;
}
