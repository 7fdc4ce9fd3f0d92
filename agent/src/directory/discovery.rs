//! Domain controller discovery from DNS SRV records.
//!
//! AD's DC locator publishes every domain controller of a domain under
//! `_ldap._tcp.dc._msdcs.<domain>` and those of one AD site under
//! `_ldap._tcp.<site>._sites.dc._msdcs.<domain>`. [`Discovery`] asks for the site's record first
//! when a site is set, and for the domain-wide record when the site has no answer (or its query
//! fails). The targets are ordered as RFC 2782 asks: lowest priority first and, within a
//! priority, by weighted random selection, drawn again on every call so that agents spread over
//! the DCs. Each target becomes a [`DcUrl`] of the configured transport.
//!
//! The resolver is built on first use and lives as long as the `Discovery`; it caches answers
//! for their TTL, so calling [`Discovery::discover`] before every connection attempt costs a DNS
//! query only when the records have expired.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::rr::rdata::SRV;
use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::{Resolver, TokioResolver};
use pwrelay_shared::domain::DomainName;
use rand::Rng;
use rand::seq::SliceRandom as _;
use tokio::sync::OnceCell;

use super::DirectoryError;
use crate::config::{DcUrl, LdapTransport};

/// The LDAPS port: SRV records name the LDAP port (389), LDAPS is always on 636.
const LDAPS_PORT: u16 = 636;

/// Answers the resolver keeps (one per SRV name and record type); a domain needs two or three.
const CACHE_SIZE: u64 = 64;

/// How the agent finds a domain's controllers in DNS.
///
/// Build one per domain and keep it: [`discover`](Self::discover) is meant to be called before
/// each connection attempt and answers from the resolver's cache while the records' TTL lasts.
///
/// ```no_run
/// # async fn example(domain: &pwrelay_shared::domain::DomainName) -> Result<(), Box<dyn std::error::Error>> {
/// use pwrelay_agent::config::LdapTransport;
/// use pwrelay_agent::directory::discovery::Discovery;
///
/// let discovery = Discovery::new(LdapTransport::Ldaps).with_site("Paris")?;
/// let urls = discovery.discover(domain).await.map_err(|e| e.message)?; // ldaps://dc1.corp.example.com:636, ...
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Discovery {
    site: Option<String>,
    nameserver: Option<SocketAddr>,
    transport: LdapTransport,
    timeout: Option<Duration>,
    resolver: OnceCell<TokioResolver>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("site", &self.site)
            .field("nameserver", &self.nameserver)
            .field("transport", &self.transport)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// An AD site name that cannot be one label of a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a usable AD site name: the DC locator's records need one DNS label (1-63 letters, digits, '-' or '_'), e.g. Default-First-Site-Name"
)]
pub struct InvalidSite(pub String);

impl Discovery {
    /// Discovery through the system's DNS configuration (`/etc/resolv.conf`, the registry on
    /// Windows) that yields URLs of `transport`.
    pub fn new(transport: LdapTransport) -> Self {
        Self { site: None, nameserver: None, transport, timeout: None, resolver: OnceCell::new() }
    }

    /// Prefers the domain controllers of AD site `site` (as named in AD Sites and Services); the
    /// domain-wide record is used when the site has none.
    pub fn with_site(mut self, site: &str) -> Result<Self, InvalidSite> {
        let site = site.trim();
        let valid = !site.is_empty()
            && site.len() <= 63
            && site.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(InvalidSite(site.to_owned()));
        }
        self.site = Some(site.to_owned());
        self.resolver = OnceCell::new();
        Ok(self)
    }

    /// Asks `nameserver` (UDP, and TCP for answers too long for UDP) instead of the system's DNS
    /// servers: for a member server whose resolver is not AD-integrated, and for tests.
    pub fn with_nameserver(mut self, nameserver: SocketAddr) -> Self {
        self.nameserver = Some(nameserver);
        self.resolver = OnceCell::new();
        self
    }

    /// How long one DNS query may take before it is retried (default: the system's setting, or
    /// 5 s with an explicit nameserver).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self.resolver = OnceCell::new();
        self
    }

    /// The preferred AD site, if any.
    pub fn site(&self) -> Option<&str> {
        self.site.as_deref()
    }

    /// The transport of the URLs discovered.
    pub fn transport(&self) -> LdapTransport {
        self.transport
    }

    /// The SRV names asked for `domain`, in order: the site's record (when a site is set), then
    /// the domain-wide record.
    pub fn srv_names(&self, domain: &DomainName) -> Vec<String> {
        let mut names = Vec::with_capacity(2);
        if let Some(site) = &self.site {
            names.push(format!("_ldap._tcp.{site}._sites.dc._msdcs.{domain}"));
        }
        names.push(format!("_ldap._tcp.dc._msdcs.{domain}"));
        names
    }

    /// The domain controllers of `domain`, in the order to try them.
    ///
    /// Fails with a retryable [`DirectoryError::unavailable`] naming the SRV names asked when DNS
    /// lists no usable domain controller or cannot be asked.
    pub async fn discover(&self, domain: &DomainName) -> Result<Vec<DcUrl>, DirectoryError> {
        let names = self.srv_names(domain);
        let resolver = match self.resolver().await {
            Ok(resolver) => resolver,
            Err(reason) => return Err(not_found(domain, &[format!("{}: {reason}", names.join(", "))])),
        };
        let mut failures = Vec::with_capacity(names.len());
        for name in &names {
            match lookup(resolver, name).await {
                Ok(targets) => {
                    let urls = dc_urls(&order(targets, &mut rand::rng()), self.transport);
                    tracing::debug!(domain = %domain, srv = %name, dcs = urls.len(), "domain controllers found in DNS");
                    return Ok(urls);
                }
                Err(reason) => {
                    tracing::debug!(domain = %domain, srv = %name, reason = %reason, "no domain controller in this SRV record");
                    failures.push(format!("{name}: {reason}"));
                }
            }
        }
        Err(not_found(domain, &failures))
    }

    /// The resolver, built on first use (a configuration that cannot be read is tried again on
    /// the next call).
    async fn resolver(&self) -> Result<&TokioResolver, String> {
        self.resolver.get_or_try_init(|| async { self.build_resolver() }).await
    }

    fn build_resolver(&self) -> Result<TokioResolver, String> {
        let mut builder = match self.nameserver {
            Some(addr) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                let server = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
                Resolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![server]),
                    TokioRuntimeProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio().map_err(|e| {
                format!("cannot read the system's DNS configuration ({e}); configure a nameserver for discovery")
            })?,
        };
        let options = builder.options_mut();
        options.cache_size = CACHE_SIZE;
        if let Some(timeout) = self.timeout {
            options.timeout = timeout;
        }
        builder.build().map_err(|e| format!("cannot set up the DNS resolver: {e}"))
    }
}

fn not_found(domain: &DomainName, failures: &[String]) -> DirectoryError {
    DirectoryError::unavailable(format!(
        "no domain controller of {domain} found in DNS ({}); check that the agent's DNS server serves the AD zone \
         (or configure a nameserver for discovery), or list the domain controllers in urls",
        failures.join("; ")
    ))
}

/// Asks for the SRV record `name`; an answer without a usable target is an error saying why.
async fn lookup(resolver: &TokioResolver, name: &str) -> Result<Vec<SrvTarget>, String> {
    // Absolute, so that the resolver's search list is never appended.
    let fqdn = Name::from_ascii(format!("{name}.")).map_err(|e| format!("not a valid DNS name ({e})"))?;
    let answer = resolver.srv_lookup(fqdn).await.map_err(|e| describe(&e))?;
    let targets: Vec<SrvTarget> = answer
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::SRV(srv) => SrvTarget::from_srv(srv),
            _ => None,
        })
        .collect();
    if targets.is_empty() {
        return Err("the record lists no usable domain controller".to_owned());
    }
    Ok(targets)
}

/// hickory's errors, in words an administrator reads.
fn describe(error: &NetError) -> String {
    if error.is_nx_domain() {
        "no such name (NXDOMAIN)".to_owned()
    } else if error.is_no_records_found() {
        "no SRV record".to_owned()
    } else if let NetError::Dns(DnsError::ResponseCode(code)) = error {
        format!("the DNS server answered {}", code.to_str().to_ascii_lowercase())
    } else if let NetError::Timeout = error {
        "the DNS server did not answer in time".to_owned()
    } else {
        format!("DNS query failed: {error}")
    }
}

/// One SRV record's target.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SrvTarget {
    priority: u16,
    weight: u16,
    port: u16,
    /// Lower-case, without the trailing dot.
    host: String,
}

impl SrvTarget {
    /// The target of `srv`, or `None` when there is none to contact: the root target (`.`, "the
    /// service is decidedly not available"), port 0, or a name that is not a host name (which
    /// could not be put in a URL safely).
    fn from_srv(srv: &SRV) -> Option<Self> {
        let host = srv.target.to_ascii().trim_end_matches('.').to_ascii_lowercase();
        let valid = !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid || srv.port == 0 {
            tracing::debug!(target_host = %srv.target, port = srv.port, "SRV target ignored");
            return None;
        }
        Some(Self { priority: srv.priority, weight: srv.weight, port: srv.port, host })
    }
}

/// Orders targets by priority (lowest first) and, within a priority, by RFC 2782's weighted
/// random selection.
fn order(mut targets: Vec<SrvTarget>, rng: &mut impl Rng) -> Vec<SrvTarget> {
    // "Arrange all SRV RRs (that have not been ordered yet) in any order, except that all those
    // with weight 0 are placed at the beginning of the list": shuffled, then a stable sort.
    targets.shuffle(rng);
    targets.sort_by_key(|t| (t.priority, t.weight != 0));
    let mut ordered = Vec::with_capacity(targets.len());
    for group in targets.chunk_by(|a, b| a.priority == b.priority) {
        let mut unordered = group.to_vec();
        while !unordered.is_empty() {
            let weights: Vec<u16> = unordered.iter().map(|t| t.weight).collect();
            let sum: u64 = weights.iter().map(|&w| u64::from(w)).sum();
            let chosen = pick(&weights, rng.random_range(0..=sum));
            ordered.push(unordered.remove(chosen));
        }
    }
    ordered
}

/// RFC 2782: with `draw` uniform in `0..=sum of weights`, the first entry whose running sum of
/// weights is at least `draw`.
fn pick(weights: &[u16], draw: u64) -> usize {
    let mut running = 0u64;
    for (i, &weight) in weights.iter().enumerate() {
        running += u64::from(weight);
        if running >= draw {
            return i;
        }
    }
    // Only reached with a draw above the sum, which the caller never makes.
    weights.len().saturating_sub(1)
}

/// The targets as DC URLs of `transport`, duplicates dropped.
fn dc_urls(targets: &[SrvTarget], transport: LdapTransport) -> Vec<DcUrl> {
    let mut urls: Vec<DcUrl> = Vec::with_capacity(targets.len());
    for target in targets {
        let url = match transport {
            LdapTransport::Ldaps => format!("ldaps://{}:{LDAPS_PORT}", target.host),
            LdapTransport::StartTls => format!("ldap://{}:{}", target.host, target.port),
        };
        if !urls.iter().any(|known| known.url == url) {
            urls.push(DcUrl { url, transport });
        }
    }
    urls
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn target(priority: u16, weight: u16, host: &str) -> SrvTarget {
        SrvTarget { priority, weight, port: 389, host: host.to_owned() }
    }

    fn hosts(targets: &[SrvTarget]) -> Vec<&str> {
        targets.iter().map(|t| t.host.as_str()).collect()
    }

    fn domain() -> DomainName {
        DomainName::parse("corp.example.com").expect("domain")
    }

    #[test]
    fn discovery_can_be_shared_and_awaited_in_spawned_tasks() {
        fn send_sync<T: Send + Sync>(_: &T) {}
        fn send<T: Send>(_: &T) {}
        let discovery = Discovery::new(LdapTransport::Ldaps);
        send_sync(&discovery);
        let domain = domain();
        send(&discovery.discover(&domain));
    }

    #[test]
    fn srv_names_put_the_site_first() {
        let plain = Discovery::new(LdapTransport::Ldaps);
        assert_eq!(plain.srv_names(&domain()), ["_ldap._tcp.dc._msdcs.corp.example.com"]);
        let sited = plain.with_site("Default-First-Site-Name").expect("valid site");
        assert_eq!(
            sited.srv_names(&domain()),
            [
                "_ldap._tcp.Default-First-Site-Name._sites.dc._msdcs.corp.example.com",
                "_ldap._tcp.dc._msdcs.corp.example.com",
            ]
        );
    }

    #[test]
    fn site_names_that_are_not_one_dns_label_are_refused() {
        for bad in ["", "Paris.North", "Paris North", &"x".repeat(64), "Zürich"] {
            let e = Discovery::new(LdapTransport::Ldaps).with_site(bad).expect_err(bad);
            assert!(e.to_string().contains("not a usable AD site name"), "{e}");
        }
        assert_eq!(Discovery::new(LdapTransport::Ldaps).with_site(" HQ_1 ").expect("valid").site(), Some("HQ_1"));
    }

    #[test]
    fn lower_priorities_come_first_whatever_the_weights() {
        let mut rng = StdRng::seed_from_u64(7);
        let targets = vec![
            target(20, 65535, "c"),
            target(0, 0, "a1"),
            target(10, 1, "b"),
            target(0, 0, "a2"),
            target(20, 0, "d"),
        ];
        for _ in 0..50 {
            let ordered = order(targets.clone(), &mut rng);
            let priorities: Vec<u16> = ordered.iter().map(|t| t.priority).collect();
            assert_eq!(priorities, [0, 0, 10, 20, 20]);
        }
    }

    #[test]
    fn pick_follows_the_running_sums_of_rfc_2782() {
        // Weight 0 first, as the RFC arranges them: running sums 0, 10, 30.
        let weights = [0, 10, 20];
        assert_eq!(pick(&weights, 0), 0);
        assert_eq!(pick(&weights, 1), 1);
        assert_eq!(pick(&weights, 10), 1);
        assert_eq!(pick(&weights, 11), 2);
        assert_eq!(pick(&weights, 30), 2);
        assert_eq!(pick(&[0, 0], 0), 0);
        assert_eq!(pick(&[], 0), 0);
    }

    #[test]
    fn heavier_targets_come_first_proportionally_more_often() {
        let mut rng = StdRng::seed_from_u64(42);
        let targets = vec![target(0, 100, "light"), target(0, 300, "heavy")];
        let runs = 4000;
        let heavy_first = (0..runs).filter(|_| order(targets.clone(), &mut rng)[0].host == "heavy").count();
        // Expected 3/4 (301/401 with the RFC's inclusive draw).
        let share = heavy_first as f64 / runs as f64;
        assert!((0.70..0.80).contains(&share), "heavy first in {share} of the runs");
    }

    #[test]
    fn zero_weight_targets_are_rarely_first_but_never_lost() {
        let mut rng = StdRng::seed_from_u64(3);
        let targets = vec![target(0, 0, "zero"), target(0, 50, "a"), target(0, 50, "b")];
        let runs = 2000;
        let mut zero_first = 0;
        for _ in 0..runs {
            let ordered = order(targets.clone(), &mut rng);
            let mut names = hosts(&ordered);
            zero_first += usize::from(names[0] == "zero");
            names.sort_unstable();
            assert_eq!(names, ["a", "b", "zero"]);
        }
        // Chance 1/101 per run.
        assert!(zero_first > 0 && zero_first < runs / 20, "zero weight first in {zero_first} of {runs} runs");
    }

    #[test]
    fn equal_weights_spread_the_first_choice() {
        let mut rng = StdRng::seed_from_u64(11);
        for weight in [0, 100] {
            let targets = vec![target(0, weight, "a"), target(0, weight, "b"), target(0, weight, "c")];
            let mut first = std::collections::BTreeMap::new();
            for _ in 0..3000 {
                *first.entry(order(targets.clone(), &mut rng)[0].host.clone()).or_insert(0) += 1;
            }
            assert_eq!(first.len(), 3, "weight {weight}: {first:?}");
            assert!(first.values().all(|&n| (800..1200).contains(&n)), "weight {weight}: {first:?}");
        }
    }

    #[test]
    fn targets_become_urls_of_the_transport() {
        let targets = vec![
            SrvTarget { priority: 0, weight: 0, port: 389, host: "dc1.corp.example.com".into() },
            SrvTarget { priority: 0, weight: 0, port: 3268, host: "dc2.corp.example.com".into() },
            SrvTarget { priority: 1, weight: 0, port: 389, host: "dc1.corp.example.com".into() },
        ];
        let ldaps = dc_urls(&targets, LdapTransport::Ldaps);
        assert_eq!(
            ldaps.iter().map(|u| u.url.as_str()).collect::<Vec<_>>(),
            ["ldaps://dc1.corp.example.com:636", "ldaps://dc2.corp.example.com:636"]
        );
        assert!(ldaps.iter().all(|u| u.transport == LdapTransport::Ldaps));
        let starttls = dc_urls(&targets, LdapTransport::StartTls);
        assert_eq!(
            starttls.iter().map(|u| u.url.as_str()).collect::<Vec<_>>(),
            ["ldap://dc1.corp.example.com:389", "ldap://dc2.corp.example.com:3268"]
        );
        assert!(starttls.iter().all(|u| u.transport == LdapTransport::StartTls));
    }

    #[test]
    fn srv_targets_lose_the_trailing_dot_and_unusable_ones_are_dropped() {
        let srv = |port: u16, name: &str| SRV::new(0, 5, port, Name::from_ascii(name).expect("name"));
        let dc = SrvTarget::from_srv(&srv(389, "DC1.Corp.Example.com.")).expect("usable");
        assert_eq!((dc.host.as_str(), dc.port, dc.weight), ("dc1.corp.example.com", 389, 5));
        assert_eq!(SrvTarget::from_srv(&srv(389, ".")), None, "'.' means the service is not available");
        assert_eq!(SrvTarget::from_srv(&srv(0, "dc1.corp.example.com.")), None);
        let odd = Name::from_labels(vec![b"dc1/x@evil".to_vec(), b"com".to_vec()]).expect("binary labels");
        assert_eq!(SrvTarget::from_srv(&SRV::new(0, 0, 389, odd)), None);
    }
}
