//! Both `/metrics` endpoints after a scenario: a rotation that succeeds, one the agent's policy
//! check refuses, one for a domain no agent serves, an agent-link handshake with a certificate
//! of another CA. The figures scraped are the ones the scenario produced, and every metric the alert
//! rules and the dashboard name (deploy/monitoring/) is served by the relay or the agent.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use support::{Relay, World};

const JOB_LIMIT: Duration = Duration::from_secs(60);
const UNSERVED: &str = "nobody.example.com";

async fn scrape(addr: std::net::SocketAddr) -> String {
    let response = reqwest::get(format!("http://{addr}/metrics")).await.expect("metrics answer");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().expect("ascii").to_owned();
    assert!(content_type.starts_with("application/openmetrics-text; version=1.0.0"), "{content_type}");
    response.text().await.expect("text")
}

/// The value of the sample `series` (name and labels exactly as exposed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn relay_metrics(relay: &Relay) -> std::net::SocketAddr {
    relay.metrics.expect("the test relay has [metrics] listen")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_and_agent_metrics_show_what_happened() {
    let world = World::new(&[UNSERVED]).await;
    let relay = world.start_relay().await;
    let dc = world.dc;
    let domain = dc.domain.as_str();
    let agent = world.start_agent(&relay, "site-m", &[&dc.domain], &[&dc.domain]).await;
    let user = world.user("met").await;

    let good = world
        .rotate(&relay, json!({ "domain": domain, "target": { "upn": user.upn }, "password": "Metrics-Pass-42!" }))
        .await;
    let short =
        world.rotate(&relay, json!({ "domain": domain, "target": { "upn": user.upn }, "password": "Ab1!" })).await;
    assert_eq!(world.wait_final(&relay, &good, JOB_LIMIT).await["state"], "succeeded");
    assert_eq!(world.wait_final(&relay, &short, JOB_LIMIT).await["error"]["code"], "policy_violation");
    assert!(dc.bind(&user.dn, "Metrics-Pass-42!").await.ok(), "the rotation landed");
    let waiting = world
        .rotate(&relay, json!({ "domain": UNSERVED, "target": { "upn": "someone@nobody.example.com" }, "password": "Never-Sent-42!" }))
        .await;
    let (status, _) = world.get(&relay, "/v1/no-such-route").await;
    assert_eq!(status, 404);

    // A client whose certificate another CA issued is refused at the link's handshake. (One
    // without a certificate completes TLS, for enrollment, and is refused by every other call.)
    let (foreign, _) = pwrelay_shared::pki::CertificateAuthority::generate("foreign CA", 1).expect("ca");
    let stranger = pwrelay_shared::identity::AgentIdentity {
        name: pwrelay_shared::domain::AgentName::parse("stranger").expect("name"),
        domains: [dc.domain.clone()].into(),
    };
    let issued = foreign.issue_agent(&stranger, 1).expect("certificate");
    let anchors = pwrelay_shared::tls::TrustAnchors::from_file(&world.path("pki/ca.pem")).expect("ca");
    let key =
        pwrelay_shared::tls::CertifiedKey::from_pem(&issued.cert_pem, issued.key_pem.expose_secret()).expect("key");
    let connector = tokio_rustls::TlsConnector::from(pwrelay_shared::tls::link_client(key, &anchors).expect("tls"));
    let tcp = tokio::net::TcpStream::connect(relay.link).await.expect("tcp");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    if let Ok(mut stream) = connector.connect(name, tcp).await {
        // TLS 1.3: the client finishes first and learns of the refusal on its first read.
        let mut buf = [0u8; 1];
        let read = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
        assert!(!matches!(read, Ok(n) if n > 0), "the link takes no certificate of another CA");
    }

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let text = scrape(relay_metrics(&relay)).await;
    let expect = |series: &str, value: f64| {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    };
    expect("pwrelay_jobs_accepted_total{kind=\"set_password\"}", 3.0);
    expect("pwrelay_jobs_finished_total{kind=\"set_password\",state=\"succeeded\",error_code=\"none\"}", 1.0);
    expect("pwrelay_jobs_finished_total{kind=\"set_password\",state=\"failed\",error_code=\"policy_violation\"}", 1.0);
    expect("pwrelay_job_dispatch_latency_seconds_count{kind=\"set_password\"}", 2.0);
    expect("pwrelay_job_completion_latency_seconds_count{kind=\"set_password\"}", 2.0);
    expect(&format!("pwrelay_jobs_queued{{domain=\"{domain}\"}}"), 0.0);
    expect(&format!("pwrelay_jobs_queued{{domain=\"{UNSERVED}\"}}"), 1.0);
    expect(&format!("pwrelay_agents_connected{{domain=\"{domain}\"}}"), 1.0);
    expect(&format!("pwrelay_agents_connected{{domain=\"{UNSERVED}\"}}"), 0.0);
    let age = sample(&text, &format!("pwrelay_jobs_oldest_queued_age_seconds{{domain=\"{UNSERVED}\"}}")).expect("age");
    assert!(age >= 1.0, "the unserved job has waited since before the sleep: {age}");
    expect("pwrelay_agent_up{agent=\"site-m\"}", 1.0);
    expect("pwrelay_http_requests_total{route=\"/v1/rotations\",method=\"POST\",status=\"202\"}", 3.0);
    expect("pwrelay_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"}", 1.0);
    let refusals = sample(&text, "pwrelay_tls_handshakes_refused_total{listener=\"link\",reason=\"bad_certificate\"}");
    assert!(refusals >= Some(1.0), "{text}");
    // Bounded labels: no account, job id, password or client address in any series (the test DC's
    // URL, ldaps://127.0.0.1, is a DC name as the agent's configuration gives it).
    for secretish in [user.upn.as_str(), good.as_str(), waiting.as_str(), "Metrics-Pass-42!"] {
        assert!(!text.contains(secretish), "{secretish} must not be a label:\n{text}");
    }
    let addressed: Vec<&str> =
        text.lines().filter(|l| l.contains("127.0.0.1") && !l.starts_with("pwrelay_agent_dc_up{")).collect();
    assert!(addressed.is_empty(), "no client address in a label: {addressed:?}");
    // The DC health arrives with a heartbeat after the agent's first bind check.
    let dc_series = format!("pwrelay_agent_dc_up{{agent=\"site-m\",domain=\"{domain}\",dc=\"");
    let metrics_addr = relay_metrics(&relay);
    assert!(
        support::eventually(Duration::from_secs(20), || {
            let dc_series = dc_series.clone();
            async move { scrape(metrics_addr).await.contains(&dc_series) }
        })
        .await,
        "the agent's DC health from its heartbeat reaches the relay's metrics"
    );

    let agent_text = scrape(agent.health).await;
    assert_eq!(
        sample(&agent_text, "pwrelay_agent_jobs_total{kind=\"set_password\",outcome=\"succeeded\"}"),
        Some(1.0),
        "{agent_text}"
    );
    assert!(
        sample(&agent_text, "pwrelay_agent_ldap_operations_total{operation=\"modify\",result=\"success\"}")
            >= Some(1.0)
    );

    // Every metric the alert rules and the dashboard use is served by one of the two.
    let served: BTreeSet<&str> = text
        .lines()
        .chain(agent_text.lines())
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let monitoring = [
        include_str!("../../deploy/monitoring/pwrelay.rules.yml"),
        include_str!("../../deploy/monitoring/grafana-dashboard.json"),
    ];
    let mut used = BTreeSet::new();
    for source in monitoring {
        let mut rest = source;
        while let Some(at) = rest.find("pwrelay_") {
            let name: String =
                rest[at..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect::<String>();
            rest = &rest[at + name.len()..];
            used.insert(name);
        }
    }
    for name in &used {
        let base =
            ["_bucket", "_count", "_sum", "_total"].iter().find_map(|suffix| name.strip_suffix(suffix)).unwrap_or(name);
        assert!(served.contains(base), "{name} (from deploy/monitoring) is not served; served: {served:?}");
    }

    agent.stop().await;
    relay.stop().await;
}
