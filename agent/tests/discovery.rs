//! Domain controller discovery from DNS SRV records: a fake DNS server (the throwaway Samba DC
//! serves no DNS) publishes the DC locator's records, and the discovered URLs are used against the
//! real DC. Its certificate names dc1.pwrelay.test, localhost and 127.0.0.1, and ldap3 resolves
//! hosts with the system resolver, so the target that must work is `localhost`.

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use pwrelay_agent::config::{DcUrl, DomainConfig, LdapTransport};
use pwrelay_agent::directory::Directory;
use pwrelay_agent::directory::discovery::Discovery;
use pwrelay_proto::agent::v1::FailureCode;
use pwrelay_shared::domain::DomainName;
use pwrelay_shared::testkit::dns::{DnsRecords, FakeDns};
use pwrelay_shared::testkit::{self, TestDc};

const DOMAIN_WIDE: &str = "_ldap._tcp.dc._msdcs.pwrelay.test";
const PARIS: &str = "_ldap._tcp.Paris._sites.dc._msdcs.pwrelay.test";

fn urls(found: &[DcUrl]) -> Vec<&str> {
    found.iter().map(|u| u.url.as_str()).collect()
}

fn domain() -> DomainName {
    DomainName::parse("pwrelay.test").expect("domain")
}

fn directory(dc: &TestDc, urls: Vec<DcUrl>) -> Directory {
    Directory::new(DomainConfig { urls, ..support::domain_config(dc) }).expect("directory")
}

#[tokio::test]
async fn ldaps_urls_follow_srv_priority_and_bind_on_the_dc() {
    let dc = testkit::dc();
    // Priority 0 names a host that does not resolve (.invalid, RFC 6761); the DC is priority 10.
    let dns = FakeDns::start(
        DnsRecords::new()
            .srv(DOMAIN_WIDE, 10, 100, 389, "localhost.")
            .srv(DOMAIN_WIDE, 0, 100, 389, "dc-gone.invalid.")
            .a("localhost.", Ipv4Addr::LOCALHOST),
    )
    .await;
    let discovery = Discovery::new(LdapTransport::Ldaps).with_nameserver(dns.addr());
    let found = discovery.discover(&dc.domain).await.expect("DCs found");
    assert_eq!(urls(&found), ["ldaps://dc-gone.invalid:636", "ldaps://localhost:636"]);
    assert!(found.iter().all(|u| u.transport == LdapTransport::Ldaps));
    let dir = directory(dc, found);
    assert_eq!(dir.check_bind().await.expect("the second DC answers"), "ldaps://localhost:636");
}

#[tokio::test]
async fn starttls_urls_keep_the_srv_port_and_bind_on_the_dc() {
    let dc = testkit::dc();
    // Nothing listens on port 1: the priority-0 DC is down.
    let dns = FakeDns::start(
        DnsRecords::new()
            .srv(DOMAIN_WIDE, 0, 0, 1, "localhost.")
            .srv(DOMAIN_WIDE, 5, 0, 389, "localhost.")
            .a("localhost.", Ipv4Addr::LOCALHOST),
    )
    .await;
    let discovery = Discovery::new(LdapTransport::StartTls).with_nameserver(dns.addr());
    let found = discovery.discover(&dc.domain).await.expect("DCs found");
    assert_eq!(urls(&found), ["ldap://localhost:1", "ldap://localhost:389"]);
    assert!(found.iter().all(|u| u.transport == LdapTransport::StartTls));
    let dir = directory(dc, found);
    assert_eq!(dir.check_bind().await.expect("StartTLS on the second DC"), "ldap://localhost:389");
}

#[tokio::test]
async fn the_site_record_is_preferred_and_the_domain_wide_one_is_the_fallback() {
    let dns = FakeDns::start(
        DnsRecords::new()
            .srv(PARIS, 0, 100, 389, "dc-paris.pwrelay.test.")
            .srv(DOMAIN_WIDE, 0, 100, 389, "dc1.pwrelay.test.")
            .srv(DOMAIN_WIDE, 0, 100, 389, "dc-paris.pwrelay.test."),
    )
    .await;
    let paris = Discovery::new(LdapTransport::Ldaps).with_site("Paris").expect("site").with_nameserver(dns.addr());
    let found = paris.discover(&domain()).await.expect("site DCs found");
    assert_eq!(urls(&found), ["ldaps://dc-paris.pwrelay.test:636"]);
    assert_eq!(dns.srv_queries(), ["_ldap._tcp.paris._sites.dc._msdcs.pwrelay.test."]);

    let lyon = Discovery::new(LdapTransport::Ldaps).with_site("Lyon").expect("site").with_nameserver(dns.addr());
    let mut found = urls(&lyon.discover(&domain()).await.expect("domain-wide DCs found"))
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    found.sort();
    assert_eq!(found, ["ldaps://dc-paris.pwrelay.test:636", "ldaps://dc1.pwrelay.test:636"]);
    assert_eq!(
        dns.srv_queries()[1..],
        ["_ldap._tcp.lyon._sites.dc._msdcs.pwrelay.test.", "_ldap._tcp.dc._msdcs.pwrelay.test."]
    );
}

#[tokio::test]
async fn a_site_record_without_a_usable_target_falls_back_too() {
    // "." is RFC 2782's "decidedly not available here".
    let dns =
        FakeDns::start(DnsRecords::new().srv(PARIS, 0, 0, 389, ".").srv(DOMAIN_WIDE, 0, 0, 389, "dc1.pwrelay.test."))
            .await;
    let discovery = Discovery::new(LdapTransport::Ldaps).with_site("Paris").expect("site").with_nameserver(dns.addr());
    let found = discovery.discover(&domain()).await.expect("domain-wide DC found");
    assert_eq!(urls(&found), ["ldaps://dc1.pwrelay.test:636"]);
}

#[tokio::test]
async fn nothing_in_dns_is_a_retryable_unavailable_error_naming_the_srv_names() {
    let dns = FakeDns::start(DnsRecords::new()).await;
    let plain = Discovery::new(LdapTransport::Ldaps).with_nameserver(dns.addr());
    let e = plain.discover(&domain()).await.expect_err("nothing found");
    assert_eq!(e.code, FailureCode::DirectoryUnavailable);
    assert!(e.retryable);
    assert!(e.message.contains(DOMAIN_WIDE) && e.message.contains("NXDOMAIN"), "{}", e.message);

    let sited = Discovery::new(LdapTransport::Ldaps).with_site("Paris").expect("site").with_nameserver(dns.addr());
    let e = sited.discover(&domain()).await.expect_err("nothing found");
    assert!(e.retryable);
    assert!(e.message.contains(PARIS) && e.message.contains(DOMAIN_WIDE), "{}", e.message);
}

#[tokio::test]
async fn a_failing_or_silent_dns_server_is_a_retryable_unavailable_error() {
    let dns = FakeDns::start(DnsRecords::new().failing(DOMAIN_WIDE)).await;
    let discovery = Discovery::new(LdapTransport::Ldaps).with_nameserver(dns.addr());
    let e = discovery.discover(&domain()).await.expect_err("SERVFAIL");
    assert_eq!(e.code, FailureCode::DirectoryUnavailable);
    assert!(e.retryable);
    assert!(e.message.contains(DOMAIN_WIDE) && e.message.contains("server failure"), "{}", e.message);

    // A UDP socket that never answers.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let discovery = Discovery::new(LdapTransport::Ldaps)
        .with_nameserver(silent.local_addr().expect("addr"))
        .with_timeout(Duration::from_millis(200));
    let started = std::time::Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(20), discovery.discover(&domain()))
        .await
        .expect("discovery gives up on its own")
        .expect_err("no answer");
    assert!(e.retryable && e.code == FailureCode::DirectoryUnavailable);
    assert!(e.message.contains(DOMAIN_WIDE) && e.message.contains("did not answer"), "{}", e.message);
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn answers_are_cached_for_their_ttl_and_reordered_on_every_call() {
    let dns = FakeDns::start(
        DnsRecords::new()
            .srv(DOMAIN_WIDE, 0, 100, 389, "dc1.pwrelay.test.")
            .srv(DOMAIN_WIDE, 0, 100, 389, "dc2.pwrelay.test.")
            .ttl(2),
    )
    .await;
    let discovery = Discovery::new(LdapTransport::Ldaps).with_nameserver(dns.addr());
    let mut firsts = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let found = discovery.discover(&domain()).await.expect("DCs found");
        assert_eq!(found.len(), 2);
        firsts.insert(found[0].url.clone());
    }
    assert_eq!(firsts.len(), 2, "equal weights put each DC first some of the time: {firsts:?}");
    assert_eq!(dns.srv_queries().len(), 1, "answered from the cache within the TTL");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    discovery.discover(&domain()).await.expect("DCs found");
    assert_eq!(dns.srv_queries().len(), 2, "asked again once the TTL ran out");
}

#[tokio::test]
async fn an_answer_too_long_for_udp_is_fetched_over_tcp() {
    let mut records = DnsRecords::new();
    for i in 0..40 {
        records = records.srv(DOMAIN_WIDE, (i % 4) as u16, 100, 389, &format!("dc{i:02}.pwrelay.test."));
    }
    let dns = FakeDns::start(records).await;
    let discovery = Discovery::new(LdapTransport::StartTls).with_nameserver(dns.addr());
    let found = discovery.discover(&domain()).await.expect("DCs found");
    assert_eq!(found.len(), 40);
    // Priority i % 4: DCs 0, 4, 8, ... come first.
    let first_ten: Vec<u32> = found[..10]
        .iter()
        .map(|u| u.url.strip_prefix("ldap://dc").and_then(|n| n.get(..2)).and_then(|n| n.parse().ok()).expect("dcNN"))
        .collect();
    assert!(first_ten.iter().all(|n| n % 4 == 0), "{first_ten:?}");
    assert!(dns.queries().iter().any(|q| q.tcp), "the truncated UDP answer was retried over TCP");
}

#[tokio::test]
async fn the_system_configuration_is_used_without_a_nameserver() {
    // .test is reserved (RFC 6761): whatever the machine's DNS, it has no DC locator records.
    let discovery = Discovery::new(LdapTransport::Ldaps).with_timeout(Duration::from_secs(2));
    let e = tokio::time::timeout(Duration::from_secs(30), discovery.discover(&domain()))
        .await
        .expect("discovery gives up on its own")
        .expect_err("no DC of pwrelay.test in public DNS");
    assert!(e.retryable && e.code == FailureCode::DirectoryUnavailable);
    assert!(e.message.contains(DOMAIN_WIDE), "{}", e.message);
}

#[tokio::test]
async fn an_agent_configured_for_discovery_finds_its_dc_through_dns() {
    let dc = testkit::dc();
    let dns = FakeDns::start(
        DnsRecords::new().srv(DOMAIN_WIDE, 0, 100, 389, "localhost.").a("localhost.", Ipv4Addr::LOCALHOST),
    )
    .await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("bind.secret"), dc.admin_password.expose_secret()).expect("secret");
    let toml = format!(
        "[relay]\nurl = \"https://relay.example:7443\"\nca_file = \"ca.pem\"\ncert_file = \"a.pem\"\nkey_file = \"a.key\"\n\n\
         [[domains]]\nname = \"{}\"\nca_file = \"{}\"\nbind_dn = \"{}\"\nbind_password_file = \"bind.secret\"\n\n\
         [domains.discovery]\nnameserver = \"{}\"\ntransport = \"ldaps\"\n",
        dc.domain,
        dc.ca_file.display(),
        dc.admin_dn,
        dns.addr()
    );
    std::fs::write(dir.path().join("agent.toml"), toml).expect("config");
    let config = pwrelay_agent::Config::load(&dir.path().join("agent.toml")).expect("valid configuration");
    let domain = config.domains.into_iter().next().expect("one domain");
    assert!(domain.urls.is_empty() && domain.discovery.is_some());
    pwrelay_shared::tls::install_default_provider();
    let directory = Directory::new(domain).expect("directory");
    assert_eq!(directory.check_bind().await.expect("bind through the discovered DC"), "ldaps://localhost:636");
    let health = directory.check_each_dc().await;
    assert_eq!(health.len(), 1);
    assert!(health[0].ok, "{health:?}");
    assert!(!dns.srv_queries().is_empty(), "the SRV record was asked for");
}
