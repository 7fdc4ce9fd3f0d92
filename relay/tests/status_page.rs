//! The operators' status page (`/status`): a login in a real headless Chromium, then what the page
//! shows of a real relay with a real agent on the test DC; and, over HTTP, who gets in, the
//! session cookie and what ends it, and the page's security headers.

mod support;

use std::time::Duration;

use pwrelay_relay::store::{ClientStore as _, Operation, Scopes};
use pwrelay_shared::domain::DomainName;
use pwrelay_shared::secret::SecretString;
use serde_json::{Value, json};
use support::browser::Browser;
use support::{Relay, World, eventually};

/// A domain the relay serves and no agent does.
const UNSERVED: &str = "branch.status.example.com";
const JOB_LIMIT: Duration = Duration::from_secs(60);
const CSP: &str = "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Adds an API client to the world's store and returns its token.
async fn add_client(world: &World, name: &str, scopes: &Scopes) -> SecretString {
    let store = pwrelay_relay::store::sqlite::SqliteStore::open(&world.path("relay.db")).expect("store");
    let (token, hash) = pwrelay_relay::api::auth::new_token().expect("token");
    store.add_client(name, hash, scopes).await.expect("client");
    token
}

async fn revoke_client(world: &World, name: &str) {
    let store = pwrelay_relay::store::sqlite::SqliteStore::open(&world.path("relay.db")).expect("store");
    assert!(store.revoke_client(name).await.expect("revoke"));
}

fn status_scope(domains: Option<&[&str]>) -> Scopes {
    Scopes {
        domains: domains.map(|d| d.iter().map(|d| DomainName::parse(d).expect("domain")).collect()),
        operations: Some([Operation::Status].into()),
    }
}

/// An HTTPS client of the relay that follows no redirect and keeps no cookie.
fn plain_client(world: &World) -> reqwest::Client {
    let anchors = pwrelay_shared::tls::TrustAnchors::from_file(&world.path("pki/ca.pem")).expect("ca");
    let tls = (*pwrelay_shared::tls::https_client(&anchors).expect("tls")).clone();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

fn url(relay: &Relay, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", relay.api.port())
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// Logs in with `token`: the response's status, its `Set-Cookie` and its `Location`.
async fn login(http: &reqwest::Client, relay: &Relay, token: &str) -> (u16, Option<String>, Option<String>, String) {
    let response =
        http.post(url(relay, "/status/login")).form(&[("token", token)]).send().await.expect("login is answered");
    let (status, cookie, location) =
        (response.status().as_u16(), header(&response, "set-cookie"), header(&response, "location"));
    (status, cookie, location, response.text().await.unwrap_or_default())
}

/// The `name=value` of a `Set-Cookie`.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().expect("name=value").to_owned()
}

/// `GET /status` with `cookie`: status, `Location`, body.
async fn status_page(http: &reqwest::Client, relay: &Relay, cookie: &str) -> (u16, Option<String>, String) {
    let response = http.get(url(relay, "/status")).header("cookie", cookie).send().await.expect("answered");
    let (status, location) = (response.status().as_u16(), header(&response, "location"));
    (status, location, response.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_logs_in_in_a_real_browser_and_sees_agents_health_queues_and_failures() {
    let world = World::new(&[UNSERVED]).await;
    let relay = world.start_relay().await;
    let dc = world.dc;
    let domain = dc.domain.as_str();
    let agent = world.start_agent(&relay, "site-status", &[&dc.domain], &[&dc.domain]).await;
    let user = world.user("stat").await;
    let operator = add_client(&world, "operator", &status_scope(None)).await;

    // One failed job (a password the agent's policy check refuses) and one waiting for an agent.
    let short =
        world.rotate(&relay, json!({ "domain": domain, "target": { "upn": user.upn }, "password": "Ab1!" })).await;
    assert_eq!(world.wait_final(&relay, &short, JOB_LIMIT).await["error"]["code"], "policy_violation");
    world
        .rotate(&relay, json!({ "domain": UNSERVED, "target": { "upn": "someone@branch.status.example.com" }, "password": "Never-Sent-42!" }))
        .await;
    // The DC health arrives with the agent's first heartbeat.
    let reported = eventually(Duration::from_secs(20), || async {
        let (_, fleet) = world.get(&relay, "/v1/agents").await;
        fleet["agents"][0]["directories"].as_array().is_some_and(|d| !d.is_empty())
    })
    .await;
    assert!(reported, "the agent reported its DC health");
    let (_, fleet) = world.get(&relay, "/v1/agents").await;
    let dc_name = fleet["agents"][0]["directories"][0]["dcs"][0]["name"].as_str().map(str::to_owned);
    let version = fleet["agents"][0]["version"].as_str().expect("version").to_owned();

    let browser = Browser::start().await;
    let base = format!("https://localhost:{}", relay.api.port());
    browser.open(&format!("{base}/status")).await;
    assert!(browser.url().await.ends_with("/status/login"), "no session: the login form ({})", browser.url().await);
    browser.type_into("#token", "pwr_not-a-token").await;
    browser.click("#login").await;
    let notice = browser.wait_text("#notice").await;
    assert!(notice.contains("cannot open the status page"), "{notice}");
    assert!(!browser.page_text().await.contains("pwr_not-a-token"), "the input is not echoed");

    browser.type_into("#token", operator.expose_secret()).await;
    browser.click("#login").await;
    let client = browser.wait_text("#client").await;
    assert_eq!(client, "operator");
    assert!(browser.url().await.ends_with("/status"), "{}", browser.url().await);

    let served = browser.text(&format!("#domain-{}", domain.to_ascii_lowercase().replace('.', "-"))).await;
    assert!(served.contains("site-status") && served.contains("connected"), "the agent, connected: {served}");
    assert!(served.contains("bind ok"), "the DC's health: {served}");
    if let Some(dc_name) = &dc_name {
        assert!(served.contains(dc_name.as_str()), "the DC by name ({dc_name}): {served}");
    }
    assert!(served.contains(&version), "the agent's version ({version}): {served}");
    assert!(!served.contains("no agent connected"), "{served}");
    let unserved = browser.text(&format!("#domain-{}", UNSERVED.replace('.', "-"))).await;
    assert!(unserved.contains("no agent connected"), "the unserved domain says so: {unserved}");
    assert!(unserved.contains("Queued: 1"), "its waiting job: {unserved}");
    let failures = browser.text("#failures").await;
    let row = failures.lines().find(|l| l.contains("policy_violation")).unwrap_or_else(|| panic!("{failures}"));
    assert!(row.contains(domain) && row.trim_end().ends_with('1'), "one policy_violation in {domain}: {row}");
    assert!(browser.text("#webhooks").await.contains("Webhook deliveries"), "an unscoped client sees the backlog");
    assert!(browser.text("#new-hires").await.contains("New hires"), "and the new hires");

    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    browser.screenshot_to(&artifacts.join("status-page.png")).await;

    browser.click("#logout").await;
    browser.find("#token").await;
    browser.open(&format!("{base}/status")).await;
    assert!(browser.url().await.ends_with("/status/login"), "logged out: {}", browser.url().await);
    browser.quit().await;
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_client_with_the_status_scope_gets_a_session_and_it_ends_with_the_client() {
    let world = World::new(&[UNSERVED]).await;
    let relay = world.start_relay().await;
    let http = plain_client(&world);
    let branch = add_client(&world, "branch-ops", &status_scope(Some(&[UNSERVED]))).await;
    let rotator =
        add_client(&world, "rotator", &Scopes { domains: None, operations: Some([Operation::Rotate].into()) }).await;

    // No session: to the login form; the form and the redirect carry the page's headers.
    let (status, location, _) = status_page(&http, &relay, "").await;
    assert_eq!((status, location.as_deref()), (303, Some("/status/login")));
    let form = http.get(url(&relay, "/status/login")).send().await.expect("form");
    assert_eq!(form.status(), 200);
    assert_eq!(header(&form, "content-security-policy").as_deref(), Some(CSP));
    assert_eq!(header(&form, "x-content-type-options").as_deref(), Some("nosniff"));
    assert_eq!(header(&form, "referrer-policy").as_deref(), Some("no-referrer"));
    assert_eq!(header(&form, "cache-control").as_deref(), Some("no-store"));
    let form = form.text().await.expect("html");
    assert!(!form.contains("<script") && !form.contains("style=") && !form.contains("<style"), "{form}");
    let css = http.get(url(&relay, "/status/assets/status.css")).send().await.expect("css");
    assert_eq!(header(&css, "content-type").as_deref(), Some("text/css; charset=utf-8"));

    // A wrong token, and a client without the status scope: the form again, no cookie.
    let (status, cookie, _, body) = login(&http, &relay, "pwr_wrong-token-<b>").await;
    assert_eq!((status, cookie), (401, None));
    assert!(!body.contains("pwr_wrong-token") && !body.contains("<b>"), "the input is not echoed");
    let (status, cookie, _, _) = login(&http, &relay, rotator.expose_secret()).await;
    assert_eq!((status, cookie), (401, None), "a client without the status scope is refused");
    let (status, _, body) = status_page(&http, &relay, "").await;
    assert_eq!(status, 303, "{body}");

    // A client limited to one domain: a strict session cookie, and only its domain.
    let (status, cookie, location, _) = login(&http, &relay, branch.expose_secret()).await;
    assert_eq!((status, location.as_deref()), (303, Some("/status")));
    let set_cookie = cookie.expect("a session cookie");
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/status", "Max-Age=28800"] {
        assert!(set_cookie.split("; ").any(|a| a == attribute), "{attribute} in {set_cookie}");
    }
    let session = cookie_pair(&set_cookie);
    let response = http.get(url(&relay, "/status")).header("cookie", &session).send().await.expect("page");
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-security-policy").as_deref(), Some(CSP));
    assert_eq!(header(&response, "cache-control").as_deref(), Some("no-store"));
    let page = response.text().await.expect("html");
    assert!(page.contains("<meta http-equiv=\"refresh\" content=\"15\">"), "it refreshes itself");
    assert!(page.contains("href=\"/status/assets/status.css\"") && !page.contains("<script"), "{page}");
    assert!(page.contains(UNSERVED) && page.contains("no agent connected"), "its domain: {page}");
    assert!(!page.contains(world.dc.domain.as_str()), "not the other domain: {page}");
    assert!(!page.contains("id=\"webhooks\""), "no cross-domain backlog for a domain-limited client");

    // The unscoped client (all operations) sees every domain.
    let (status, cookie, _, _) = login(&http, &relay, world.token.expose_secret()).await;
    assert_eq!(status, 303);
    let (status, _, page) = status_page(&http, &relay, &cookie_pair(&cookie.expect("cookie"))).await;
    assert_eq!(status, 200);
    assert!(page.contains(UNSERVED) && page.contains(world.dc.domain.as_str()) && page.contains("id=\"webhooks\""));

    // A tampered cookie is refused (and cleared): another name, another expiry, another tag.
    let (name, value) = session.split_once('=').expect("pair");
    let parts: Vec<&str> = value.split('.').collect();
    assert_eq!(parts.len(), 4, "{value}");
    use base64::Engine as _;
    let other_name = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("test-pam");
    let later = (parts[2].parse::<i64>().expect("expiry") + 86_400).to_string();
    let mut tag = parts[3].to_owned();
    tag.replace_range(0..1, if tag.starts_with('A') { "B" } else { "A" });
    for forged in [
        [parts[0], other_name.as_str(), parts[2], parts[3]].join("."),
        [parts[0], parts[1], later.as_str(), parts[3]].join("."),
        [parts[0], parts[1], parts[2], tag.as_str()].join("."),
    ] {
        let response =
            http.get(url(&relay, "/status")).header("cookie", format!("{name}={forged}")).send().await.expect("page");
        assert_eq!(response.status(), 303, "{forged} is refused");
        assert!(header(&response, "set-cookie").is_some_and(|c| c.contains("Max-Age=0")), "and cleared");
    }

    // Logging out clears the cookie.
    let response = http.post(url(&relay, "/status/logout")).header("cookie", &session).send().await.expect("logout");
    assert_eq!((response.status().as_u16(), header(&response, "location").as_deref()), (303, Some("/status/login")));
    assert!(header(&response, "set-cookie").is_some_and(|c| c.contains("Max-Age=0") && c.contains("Path=/status")));

    // A cross-site form post is refused.
    let response = http
        .post(url(&relay, "/status/login"))
        .header("sec-fetch-site", "cross-site")
        .form(&[("token", branch.expose_secret())])
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 403);
    assert!(header(&response, "set-cookie").is_none());

    // Revoking the client ends its session at once, on the same cookie.
    assert_eq!(status_page(&http, &relay, &session).await.0, 200, "the cookie still works before");
    revoke_client(&world, "branch-ops").await;
    let (status, location, _) = status_page(&http, &relay, &session).await;
    assert_eq!((status, location.as_deref()), (303, Some("/status/login")), "a revoked client's session stops");

    // Login attempts are limited per address: a correct token is refused too once over the limit.
    let mut limited = None;
    for _ in 0..12 {
        let response =
            http.post(url(&relay, "/status/login")).form(&[("token", "pwr_guess")]).send().await.expect("ok");
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
        assert_eq!(response.status(), 401);
    }
    let limited = limited.expect("the limit is reached within 12 attempts");
    assert!(header(&limited, "retry-after").is_some_and(|s| s.parse::<u64>().is_ok_and(|s| s > 0)));
    let (status, cookie, _, _) = login(&http, &relay, world.token.expose_secret()).await;
    assert_eq!((status, cookie), (429, None), "the limit holds before the token is looked at");
    // The API is not affected.
    let (status, _): (u16, Value) = world.get(&relay, "/v1/agents").await;
    assert_eq!(status, 200);
    relay.stop().await;
}
