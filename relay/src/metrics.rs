//! The relay's Prometheus metrics, served in the OpenMetrics text format at `GET /metrics` on
//! `[metrics] listen`. Every metric name is here.
//!
//! Labels carry only bounded values: job kinds, states and error codes, the configured domains,
//! route templates (`/v1/jobs/{id}`, never a path as sent), HTTP status codes, agent names and the
//! DCs they report. Never an account, a DN, a job id, a client address or a secret.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `pwrelay_jobs_accepted_total` | counter | `kind` |
//! | `pwrelay_jobs_finished_total` | counter | `kind`, `state` (`succeeded`, `failed`), `error_code` (`none` when succeeded) |
//! | `pwrelay_jobs_expired_total` | counter, jobs this replica's sweeper failed with `expired` | |
//! | `pwrelay_job_dispatch_latency_seconds` | histogram, acceptance to the first lease | `kind` |
//! | `pwrelay_job_completion_latency_seconds` | histogram, acceptance to the final state | `kind` |
//! | `pwrelay_jobs_queued` | gauge | `domain` |
//! | `pwrelay_jobs_dispatched` | gauge | `domain` |
//! | `pwrelay_jobs_oldest_queued_age_seconds` | gauge, 0 with an empty queue | `domain` |
//! | `pwrelay_agents_connected` | gauge, agents connected to any replica | `domain` |
//! | `pwrelay_agent_up` | gauge, 1 connected, 0 down or stale | `agent` |
//! | `pwrelay_agent_last_seen_age_seconds` | gauge | `agent` |
//! | `pwrelay_agent_certificate_expiry_timestamp_seconds` | gauge | `agent` |
//! | `pwrelay_agent_dc_up` | gauge, the DC bind health of the agent's last heartbeat | `agent`, `domain`, `dc` |
//! | `pwrelay_webhook_deliveries` | gauge | `state` (`pending`, `delivered`, `failed`) |
//! | `pwrelay_webhook_oldest_pending_age_seconds` | gauge | |
//! | `pwrelay_new_hire_requests` | gauge | `stage` |
//! | `pwrelay_new_hire_oldest_open_age_seconds` | gauge, the oldest request not `done` | |
//! | `pwrelay_tls_handshakes_refused_total` | counter | `listener` (`api`, `link`), `reason` |
//! | `pwrelay_http_requests_total` | counter | `route`, `method`, `status` |
//! | `pwrelay_http_request_duration_seconds` | histogram | `route` |
//! | `pwrelay_build_info` | gauge, 1 | `version` |
//!
//! Counters and histograms count what this replica did (sum them over replicas); the gauges are
//! read from the shared store at each scrape and are the same on every replica (take `max`).
//!
//! One [`RelayMetrics`] per `App` (tests run several in one process), handed to the parts that
//! record into it.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::jobs::{ErrorCode, JobKind, JobState, Timestamp};
use crate::link::registry::AgentRegistry;
use crate::store::{Store, StoreGauges};

/// `kind`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The job kind.
    pub kind: &'static str,
}

/// `kind`, `state`, `error_code`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FinishedLabels {
    /// The job kind.
    pub kind: &'static str,
    /// `succeeded` or `failed`.
    pub state: &'static str,
    /// The failure code, `none` when succeeded.
    pub error_code: &'static str,
}

/// `domain`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DomainLabel {
    /// A configured AD domain.
    pub domain: String,
}

/// `agent`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabel {
    /// The agent's name, from its certificate.
    pub agent: String,
}

/// `agent`, `domain`, `dc`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentDcLabels {
    /// The agent's name.
    pub agent: String,
    /// The domain the DC serves.
    pub domain: String,
    /// The DC as the agent names it.
    pub dc: String,
}

/// `state`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// The state or stage.
    pub state: String,
}

/// `stage`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    /// The new-hire stage.
    pub stage: String,
}

/// `listener`, `reason`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// `api` or `link`.
    pub listener: &'static str,
    /// See [`RefusalReason`].
    pub reason: &'static str,
}

/// `route`, `method`, `status`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route template, or `unmatched`.
    pub route: String,
    /// The method, or `other`.
    pub method: &'static str,
    /// The status code.
    pub status: u16,
}

/// `route`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// The route template, or `unmatched`.
    pub route: String,
}

/// `version`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;
type Latency<L> = Family<L, Histogram, fn() -> Histogram>;

/// Why a TLS handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// The client presented no certificate where one is required (the agent link).
    NoCertificate,
    /// The client's certificate is not valid here (unknown issuer, expired, wrong use).
    BadCertificate,
    /// The client refused ours (it sent an alert: e.g. it does not trust the relay's CA).
    AlertReceived,
    /// No common protocol version, cipher suite or ALPN protocol.
    Incompatible,
    /// Not TLS, or broken TLS.
    Protocol,
    /// The connection closed or failed during the handshake.
    Io,
    /// The handshake took longer than allowed.
    Timeout,
}

impl RefusalReason {
    /// Classifies the error of a failed handshake.
    pub fn of(error: &std::io::Error) -> Self {
        use rustls::Error as E;
        match error.get_ref().and_then(|inner| inner.downcast_ref::<E>()) {
            Some(E::NoCertificatesPresented) => Self::NoCertificate,
            Some(E::InvalidCertificate(_)) => Self::BadCertificate,
            Some(E::AlertReceived(_)) => Self::AlertReceived,
            Some(E::PeerIncompatible(_) | E::NoApplicationProtocol) => Self::Incompatible,
            Some(_) => Self::Protocol,
            None => Self::Io,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoCertificate => "no_certificate",
            Self::BadCertificate => "bad_certificate",
            Self::AlertReceived => "alert_received",
            Self::Incompatible => "incompatible",
            Self::Protocol => "protocol",
            Self::Io => "io",
            Self::Timeout => "timeout",
        }
    }
}

/// Refused handshakes of one listener, as the accept loop records them.
#[derive(Debug, Clone)]
pub struct HandshakeRefusals {
    listener: &'static str,
    counter: Family<RefusedLabels, Counter>,
}

impl HandshakeRefusals {
    /// Counts a refusal.
    pub fn record(&self, reason: RefusalReason) {
        self.counter.get_or_create(&RefusedLabels { listener: self.listener, reason: reason.as_str() }).inc();
    }
}

/// What one agent looks like to the metrics (filled from the store's known agents).
#[derive(Debug, Clone, PartialEq)]
pub struct AgentGauge {
    /// The agent's name.
    pub name: String,
    /// Whether it is connected (to any replica).
    pub connected: bool,
    /// The domains it serves.
    pub domains: Vec<String>,
    /// When it was last heard from.
    pub last_seen: Timestamp,
    /// When its certificate expires, if known.
    pub certificate_expiry: Option<Timestamp>,
    /// The DCs of its last heartbeat: domain, DC, whether the bind check passed.
    pub dcs: Vec<(String, String, bool)>,
}

/// Every metric of the relay.
#[derive(Debug)]
pub struct RelayMetrics {
    registry: Registry,
    domains: Vec<String>,
    jobs_accepted: Family<KindLabel, Counter>,
    jobs_finished: Family<FinishedLabels, Counter>,
    jobs_expired: Counter,
    dispatch_latency: Latency<KindLabel>,
    completion_latency: Latency<KindLabel>,
    jobs_queued: Family<DomainLabel, Gauge>,
    jobs_dispatched: Family<DomainLabel, Gauge>,
    oldest_queued: Family<DomainLabel, FloatGauge>,
    agents_connected: Family<DomainLabel, Gauge>,
    agent_up: Family<AgentLabel, Gauge>,
    agent_last_seen_age: Family<AgentLabel, FloatGauge>,
    agent_certificate_expiry: Family<AgentLabel, FloatGauge>,
    agent_dc_up: Family<AgentDcLabels, Gauge>,
    webhook_deliveries: Family<StateLabel, Gauge>,
    webhook_oldest_pending: FloatGauge,
    new_hire_requests: Family<StageLabel, Gauge>,
    new_hire_oldest_open: FloatGauge,
    tls_refused: Family<RefusedLabels, Counter>,
    http_requests: Family<HttpLabels, Counter>,
    http_latency: Latency<RouteLabel>,
    /// Serialises scrapes: each sets the gauges, then encodes them.
    scrape: tokio::sync::Mutex<()>,
}

fn job_histogram() -> Histogram {
    // 5 ms to about 11 minutes.
    Histogram::new(exponential_buckets(0.005, 2.0, 18))
}

fn http_histogram() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl RelayMetrics {
    /// The metrics of a relay serving `domains`.
    pub fn new(domains: impl IntoIterator<Item = String>) -> Arc<Self> {
        let mut registry = Registry::default();
        macro_rules! register {
            ($name:literal, $help:literal, $metric:expr) => {{
                let metric = $metric;
                registry.register($name, $help, metric.clone());
                metric
            }};
        }
        let jobs_accepted = register!("pwrelay_jobs_accepted", "Jobs accepted, by kind", Family::default());
        let jobs_finished = register!(
            "pwrelay_jobs_finished",
            "Jobs that reached a final state on this replica, by kind, state and error code",
            Family::default()
        );
        let jobs_expired = register!(
            "pwrelay_jobs_expired",
            "Jobs the sweeper failed with `expired` (their time to live or attempts ran out without an agent finishing them)",
            Counter::default()
        );
        let dispatch_latency = register!(
            "pwrelay_job_dispatch_latency_seconds",
            "From a job's acceptance to its first lease to an agent",
            Latency::<KindLabel>::new_with_constructor(job_histogram)
        );
        let completion_latency = register!(
            "pwrelay_job_completion_latency_seconds",
            "From a job's acceptance to its final state",
            Latency::<KindLabel>::new_with_constructor(job_histogram)
        );
        let jobs_queued = register!("pwrelay_jobs_queued", "Jobs waiting for an agent, by domain", Family::default());
        let jobs_dispatched =
            register!("pwrelay_jobs_dispatched", "Jobs leased to an agent now, by domain", Family::default());
        let oldest_queued = register!(
            "pwrelay_jobs_oldest_queued_age_seconds",
            "Age of the oldest job waiting for an agent, by domain (0 when none waits)",
            Family::default()
        );
        let agents_connected = register!(
            "pwrelay_agents_connected",
            "Agents connected to any replica, by domain they serve",
            Family::default()
        );
        let agent_up =
            register!("pwrelay_agent_up", "1 while the agent is connected, 0 when down or stale", Family::default());
        let agent_last_seen_age = register!(
            "pwrelay_agent_last_seen_age_seconds",
            "Seconds since the agent was last heard from",
            Family::default()
        );
        let agent_certificate_expiry = register!(
            "pwrelay_agent_certificate_expiry_timestamp_seconds",
            "When the agent's certificate expires (Unix seconds)",
            Family::default()
        );
        let agent_dc_up = register!(
            "pwrelay_agent_dc_up",
            "1 when the DC took the agent's bind at its last check, as its last heartbeat said",
            Family::default()
        );
        let webhook_deliveries =
            register!("pwrelay_webhook_deliveries", "Webhook deliveries kept, by state", Family::default());
        let webhook_oldest_pending = register!(
            "pwrelay_webhook_oldest_pending_age_seconds",
            "Age of the oldest webhook delivery not yet made (0 when none)",
            FloatGauge::default()
        );
        let new_hire_requests =
            register!("pwrelay_new_hire_requests", "New-hire requests kept, by stage", Family::default());
        let new_hire_oldest_open = register!(
            "pwrelay_new_hire_oldest_open_age_seconds",
            "Age of the oldest new-hire request not done (0 when none)",
            FloatGauge::default()
        );
        let tls_refused = register!(
            "pwrelay_tls_handshakes_refused",
            "TLS handshakes refused, by listener and reason",
            Family::default()
        );
        let http_requests =
            register!("pwrelay_http_requests", "API requests answered, by route, method and status", Family::default());
        let http_latency = register!(
            "pwrelay_http_request_duration_seconds",
            "API request latency to the response head, by route",
            Latency::<RouteLabel>::new_with_constructor(http_histogram)
        );
        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info.get_or_create(&VersionLabel { version: env!("CARGO_PKG_VERSION") }).set(1);
        registry.register("pwrelay_build_info", "The relay's version", build_info);
        Arc::new(Self {
            registry,
            domains: domains.into_iter().collect(),
            jobs_accepted,
            jobs_finished,
            jobs_expired,
            dispatch_latency,
            completion_latency,
            jobs_queued,
            jobs_dispatched,
            oldest_queued,
            agents_connected,
            agent_up,
            agent_last_seen_age,
            agent_certificate_expiry,
            agent_dc_up,
            webhook_deliveries,
            webhook_oldest_pending,
            new_hire_requests,
            new_hire_oldest_open,
            tls_refused,
            http_requests,
            http_latency,
            scrape: tokio::sync::Mutex::new(()),
        })
    }

    /// Counts accepted jobs.
    pub fn job_accepted(&self, kind: JobKind, jobs: u64) {
        self.jobs_accepted.get_or_create(&KindLabel { kind: kind.as_str() }).inc_by(jobs);
    }

    /// Records a job leased to an agent for the first time, accepted at `created`.
    pub fn job_dispatched(&self, kind: JobKind, created: Timestamp) {
        self.dispatch_latency.get_or_create(&KindLabel { kind: kind.as_str() }).observe(seconds_since(created));
    }

    /// Records a job that reached its final state, accepted at `created`.
    pub fn job_finished(&self, kind: JobKind, state: JobState, error_code: Option<ErrorCode>, created: Timestamp) {
        let labels = FinishedLabels {
            kind: kind.as_str(),
            state: state.as_str(),
            error_code: error_code.map_or("none", ErrorCode::as_str),
        };
        self.jobs_finished.get_or_create(&labels).inc();
        self.completion_latency.get_or_create(&KindLabel { kind: kind.as_str() }).observe(seconds_since(created));
    }

    /// Counts jobs the sweeper expired.
    pub fn jobs_expired(&self, jobs: u64) {
        self.jobs_expired.inc_by(jobs);
    }

    /// The refusal counter for one listener.
    pub fn handshake_refusals(&self, listener: &'static str) -> HandshakeRefusals {
        HandshakeRefusals { listener, counter: self.tls_refused.clone() }
    }

    /// Sets the gauges from the store and the known agents, then encodes everything.
    pub async fn render(&self, store: &StoreGauges, agents: &[AgentGauge]) -> String {
        let _one_at_a_time = self.scrape.lock().await;
        let now = Timestamp::now();
        let age = |then: Option<Timestamp>| then.map_or(0.0, |t| (now.0 - t.0).max(0) as f64 / 1000.0);

        for family in [&self.jobs_queued, &self.jobs_dispatched, &self.agents_connected] {
            family.clear();
        }
        self.oldest_queued.clear();
        for domain in &self.domains {
            let label = DomainLabel { domain: domain.clone() };
            let queue = store.queue.iter().find(|q| q.domain.eq_ignore_ascii_case(domain));
            self.jobs_queued.get_or_create(&label).set(gauge(queue.map_or(0, |q| q.queued)));
            self.jobs_dispatched.get_or_create(&label).set(gauge(queue.map_or(0, |q| q.dispatched)));
            self.oldest_queued.get_or_create(&label).set(age(queue.and_then(|q| q.oldest_queued)));
            let connected = agents
                .iter()
                .filter(|a| a.connected && a.domains.iter().any(|d| d.eq_ignore_ascii_case(domain)))
                .count();
            self.agents_connected.get_or_create(&label).set(gauge(connected as u64));
        }

        self.agent_up.clear();
        self.agent_last_seen_age.clear();
        self.agent_certificate_expiry.clear();
        self.agent_dc_up.clear();
        for agent in agents {
            let label = AgentLabel { agent: agent.name.clone() };
            self.agent_up.get_or_create(&label).set(i64::from(agent.connected));
            self.agent_last_seen_age.get_or_create(&label).set(age(Some(agent.last_seen)));
            if let Some(expiry) = agent.certificate_expiry {
                self.agent_certificate_expiry.get_or_create(&label).set(expiry.0 as f64 / 1000.0);
            }
            for (domain, dc, up) in &agent.dcs {
                let labels = AgentDcLabels { agent: agent.name.clone(), domain: domain.clone(), dc: dc.clone() };
                self.agent_dc_up.get_or_create(&labels).set(i64::from(*up));
            }
        }

        self.webhook_deliveries.clear();
        for state in ["pending", "delivered", "failed"] {
            let count = store.webhooks.iter().find(|s| s.state == state).map_or(0, |s| s.count);
            self.webhook_deliveries.get_or_create(&StateLabel { state: state.to_owned() }).set(gauge(count));
        }
        let pending = store.webhooks.iter().find(|s| s.state == "pending");
        self.webhook_oldest_pending.set(age(pending.and_then(|s| s.oldest)));

        self.new_hire_requests.clear();
        use crate::store::lifecycle::Stage;
        for stage in
            [Stage::Resolving, Stage::Applying, Stage::Delivering, Stage::Resuming, Stage::Done, Stage::ResumeFailed]
        {
            let count = store.new_hires.iter().find(|s| s.state == stage.as_str()).map_or(0, |s| s.count);
            self.new_hire_requests.get_or_create(&StageLabel { stage: stage.as_str().to_owned() }).set(gauge(count));
        }
        let oldest_open = store.new_hires.iter().filter(|s| s.state != "done").filter_map(|s| s.oldest).min();
        self.new_hire_oldest_open.set(age(oldest_open));

        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// The route an API request matched, handed from [`mark_route`] to [`record_http`].
#[derive(Debug, Clone)]
struct MatchedRoute(String);

/// Inner half of the HTTP metrics (a `route_layer`: it runs only for matched routes): notes
/// the route template on the response for [`record_http`].
pub async fn mark_route(path: Option<MatchedPath>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    if let Some(path) = path {
        response.extensions_mut().insert(MatchedRoute(path.as_str().to_owned()));
    }
    response
}

/// Outer half of the HTTP metrics (the outermost layer): counts every response by route, method
/// and status, and its latency, `unmatched` for requests no route took.
pub async fn record_http(State(metrics): State<Arc<RelayMetrics>>, request: Request, next: Next) -> Response {
    use axum::http::Method;
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let started = Instant::now();
    let response = next.run(request).await;
    let route = response.extensions().get::<MatchedRoute>().map_or_else(|| "unmatched".to_owned(), |r| r.0.clone());
    metrics.http_latency.get_or_create(&RouteLabel { route: route.clone() }).observe(started.elapsed().as_secs_f64());
    metrics.http_requests.get_or_create(&HttpLabels { route, method, status: response.status().as_u16() }).inc();
    response
}

/// What `GET /metrics` reads from.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// The relay's metrics.
    pub metrics: Arc<RelayMetrics>,
    /// The store, for the gauges.
    pub store: Arc<dyn Store>,
    /// The known agents (from the store: the same on every replica).
    pub registry: Arc<AgentRegistry>,
}

/// The metrics listener's routes: `GET /metrics`.
pub fn router(scrape: Scrape) -> axum::Router {
    axum::Router::new().route("/metrics", axum::routing::get(serve_metrics)).with_state(scrape)
}

async fn serve_metrics(State(scrape): State<Scrape>) -> Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let store = match scrape.store.gauges().await {
        Ok(gauges) => gauges,
        Err(error) => {
            tracing::warn!(%error, "metrics: the store cannot be read");
            return (StatusCode::SERVICE_UNAVAILABLE, "the store cannot be read; see the relay's log\n")
                .into_response();
        }
    };
    let known = match scrape.registry.agents().await {
        Ok(known) => known,
        Err(error) => {
            tracing::warn!(%error, "metrics: the known agents cannot be read");
            return (StatusCode::SERVICE_UNAVAILABLE, "the store cannot be read; see the relay's log\n")
                .into_response();
        }
    };
    let (now, thresholds) = (Timestamp::now(), scrape.registry.thresholds());
    let agents: Vec<AgentGauge> = known
        .into_iter()
        .map(|a| AgentGauge {
            connected: a.state(&thresholds, now) == crate::store::AgentState::Connected,
            domains: a.domains.iter().map(ToString::to_string).collect(),
            last_seen: a.last_seen,
            certificate_expiry: Some(a.certificate.expires),
            dcs: a
                .directories
                .iter()
                .flat_map(|d| d.dcs.iter().map(|dc| (d.domain.to_string(), dc.name.clone(), dc.bind_ok)))
                .collect(),
            name: a.name,
        })
        .collect();
    let text = scrape.metrics.render(&store, &agents).await;
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

fn seconds_since(then: Timestamp) -> f64 {
    (Timestamp::now().0 - then.0).max(0) as f64 / 1000.0
}

fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::gauges::{DomainQueue, StateCount};

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[tokio::test]
    async fn gauges_cover_every_configured_domain_and_drop_forgotten_agents() {
        let metrics = RelayMetrics::new(["corp.example.com".to_owned(), "other.example.com".to_owned()]);
        let now = Timestamp::now();
        let store = StoreGauges {
            queue: vec![DomainQueue {
                domain: "corp.example.com".into(),
                queued: 3,
                dispatched: 1,
                oldest_queued: Some(Timestamp(now.0 - 90_000)),
            }],
            webhooks: vec![StateCount { state: "pending".into(), count: 2, oldest: Some(Timestamp(now.0 - 5_000)) }],
            new_hires: vec![StateCount { state: "applying".into(), count: 1, oldest: Some(now) }],
        };
        let agent = AgentGauge {
            name: "agent-1".into(),
            connected: true,
            domains: vec!["corp.example.com".into()],
            last_seen: now,
            certificate_expiry: Some(Timestamp(1_900_000_000_000)),
            dcs: vec![("corp.example.com".into(), "ldaps://dc1.corp.example.com".into(), true)],
        };
        let text = metrics.render(&store, std::slice::from_ref(&agent)).await;
        assert!(text.contains("pwrelay_jobs_queued{domain=\"corp.example.com\"} 3"), "{text}");
        assert!(text.contains("pwrelay_jobs_queued{domain=\"other.example.com\"} 0"), "{text}");
        assert!(text.contains("pwrelay_agents_connected{domain=\"other.example.com\"} 0"), "{text}");
        assert!(text.contains("pwrelay_agents_connected{domain=\"corp.example.com\"} 1"), "{text}");
        let oldest = line(&text, "pwrelay_jobs_oldest_queued_age_seconds{domain=\"corp.example.com\"}").unwrap();
        let age: f64 = oldest.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((89.0..120.0).contains(&age), "{oldest}");
        assert!(text.contains("pwrelay_webhook_deliveries{state=\"pending\"} 2"), "{text}");
        assert!(text.contains("pwrelay_webhook_deliveries{state=\"failed\"} 0"), "{text}");
        assert!(text.contains("pwrelay_agent_certificate_expiry_timestamp_seconds{agent=\"agent-1\"} 1900000000"));
        assert!(text.contains(
            "pwrelay_agent_dc_up{agent=\"agent-1\",domain=\"corp.example.com\",dc=\"ldaps://dc1.corp.example.com\"} 1"
        ));

        // An agent that is forgotten leaves no series behind.
        let text = metrics.render(&StoreGauges::default(), &[]).await;
        assert!(!text.contains("agent-1"), "{text}");
        assert!(text.contains("pwrelay_jobs_queued{domain=\"corp.example.com\"} 0"), "{text}");
    }

    #[tokio::test]
    async fn finished_jobs_are_counted_by_code() {
        let metrics = RelayMetrics::new(Vec::new());
        let created = Timestamp(Timestamp::now().0 - 2_000);
        metrics.job_accepted(JobKind::SetPassword, 2);
        metrics.job_finished(JobKind::SetPassword, JobState::Succeeded, None, created);
        metrics.job_finished(JobKind::SetPassword, JobState::Failed, Some(ErrorCode::PolicyViolation), created);
        metrics.handshake_refusals("link").record(RefusalReason::NoCertificate);
        let text = metrics.render(&StoreGauges::default(), &[]).await;
        assert!(text.contains("pwrelay_jobs_accepted_total{kind=\"set_password\"} 2"), "{text}");
        assert!(text.contains(
            "pwrelay_jobs_finished_total{kind=\"set_password\",state=\"failed\",error_code=\"policy_violation\"} 1"
        ));
        assert!(
            text.contains(
                "pwrelay_jobs_finished_total{kind=\"set_password\",state=\"succeeded\",error_code=\"none\"} 1"
            )
        );
        assert!(text.contains("pwrelay_job_completion_latency_seconds_count{kind=\"set_password\"} 2"), "{text}");
        assert!(text.contains("pwrelay_tls_handshakes_refused_total{listener=\"link\",reason=\"no_certificate\"} 1"));
        assert!(text.contains("pwrelay_build_info{version="), "{text}");
    }
}
