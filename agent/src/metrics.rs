//! The agent's Prometheus metrics, served in the text exposition format at `GET /metrics` on the
//! health listener. Every metric name is here.
//!
//! Labels carry only bounded values: job kinds, failure codes, LDAP operation names, and the
//! domains and DC URLs of the configuration. Never an account, a DN, a job id or a secret.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `pwrelay_agent_jobs_total` | counter | `kind`, `outcome` (`succeeded` or the failure code) |
//! | `pwrelay_agent_job_duration_seconds` | histogram | `kind` |
//! | `pwrelay_agent_jobs_running` | gauge | |
//! | `pwrelay_agent_ldap_operations_total` | counter | `operation` (`bind`, `search`, `modify`), `result` (`success`, `refused`, `no_answer`) |
//! | `pwrelay_agent_ldap_operation_duration_seconds` | histogram | `operation` |
//! | `pwrelay_agent_dc_up` | gauge, 1 or 0 at the last bind check | `domain`, `dc` |
//! | `pwrelay_agent_dc_check_timestamp_seconds` | gauge | `domain`, `dc` |
//! | `pwrelay_agent_relay_connected` | gauge, 1 or 0 | |
//! | `pwrelay_agent_relay_streams_total` | counter of streams opened to the relay | |
//! | `pwrelay_agent_results_unacknowledged` | gauge | |
//! | `pwrelay_agent_certificate_expiry_timestamp_seconds` | gauge | |
//! | `pwrelay_agent_build_info` | gauge, 1 | `version` |
//!
//! The metrics live for the whole process (one registry, [`metrics`]), so the directory layer
//! records its LDAP operations without a handle passed down to it.

use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `kind`, `outcome`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// The job kind, in lower case (`set_password`).
    pub kind: String,
    /// `succeeded`, or the failure code in lower case (`directory_unavailable`).
    pub outcome: String,
}

/// `kind`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The job kind, in lower case.
    pub kind: String,
}

/// `operation`, `result`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LdapLabels {
    /// `bind`, `search` or `modify`.
    pub operation: &'static str,
    /// `success`, `refused` (the DC answered with a non-zero result code) or `no_answer`.
    pub result: &'static str,
}

/// `operation`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    /// `bind`, `search` or `modify`.
    pub operation: &'static str,
}

/// `domain`, `dc`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DcLabels {
    /// The AD domain.
    pub domain: String,
    /// The DC's URL as configured (or discovered).
    pub dc: String,
}

/// `version`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

type Seconds = Family<KindLabel, Histogram, fn() -> Histogram>;
type LdapSeconds = Family<OperationLabel, Histogram, fn() -> Histogram>;

/// Every metric of the agent.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Jobs carried out, by kind and outcome.
    pub jobs: Family<JobLabels, Counter>,
    /// How long a job took, from its arrival to its result.
    pub job_seconds: Seconds,
    /// Jobs running now.
    pub jobs_running: Gauge,
    /// LDAP operations by result.
    pub ldap_operations: Family<LdapLabels, Counter>,
    /// LDAP operation latency.
    pub ldap_seconds: LdapSeconds,
    /// 1 when the DC took the service account's bind at the last check.
    pub dc_up: Family<DcLabels, Gauge>,
    /// When the DC was last checked (Unix seconds).
    pub dc_checked: Family<DcLabels, Gauge>,
    /// 1 while a stream to the relay is up.
    pub relay_connected: Gauge,
    /// Streams opened to the relay.
    pub relay_streams: Counter,
    /// Results sent and not yet acknowledged by the relay.
    pub results_unacknowledged: Gauge,
    /// When the agent's certificate expires (Unix seconds).
    pub certificate_expiry: Gauge<f64, AtomicU64>,
}

fn job_histogram() -> Histogram {
    // 10 ms to about 82 s.
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

fn ldap_histogram() -> Histogram {
    // 1 ms to about 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let jobs = Family::<JobLabels, Counter>::default();
        registry.register("pwrelay_agent_jobs", "Jobs carried out, by kind and outcome", jobs.clone());
        let job_seconds: Seconds = Family::new_with_constructor(job_histogram);
        registry.register(
            "pwrelay_agent_job_duration_seconds",
            "How long a job took, from its arrival to its result",
            job_seconds.clone(),
        );
        let jobs_running = Gauge::default();
        registry.register("pwrelay_agent_jobs_running", "Jobs running now", jobs_running.clone());
        let ldap_operations = Family::<LdapLabels, Counter>::default();
        registry.register(
            "pwrelay_agent_ldap_operations",
            "LDAP operations, by operation and result (refused: the DC answered with an error; no_answer: a \
             timeout or a closed connection)",
            ldap_operations.clone(),
        );
        let ldap_seconds: LdapSeconds = Family::new_with_constructor(ldap_histogram);
        registry.register(
            "pwrelay_agent_ldap_operation_duration_seconds",
            "LDAP operation latency, answered or not",
            ldap_seconds.clone(),
        );
        let dc_up = Family::<DcLabels, Gauge>::default();
        registry.register(
            "pwrelay_agent_dc_up",
            "1 when the DC took the service account's bind at the last check",
            dc_up.clone(),
        );
        let dc_checked = Family::<DcLabels, Gauge>::default();
        registry.register(
            "pwrelay_agent_dc_check_timestamp_seconds",
            "When the DC's bind was last checked (Unix time)",
            dc_checked.clone(),
        );
        let relay_connected = Gauge::default();
        registry.register(
            "pwrelay_agent_relay_connected",
            "1 while a stream to the relay is up",
            relay_connected.clone(),
        );
        let relay_streams = Counter::default();
        registry.register("pwrelay_agent_relay_streams", "Streams opened to the relay", relay_streams.clone());
        let results_unacknowledged = Gauge::default();
        registry.register(
            "pwrelay_agent_results_unacknowledged",
            "Job results sent and not yet acknowledged by the relay",
            results_unacknowledged.clone(),
        );
        let certificate_expiry = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "pwrelay_agent_certificate_expiry_timestamp_seconds",
            "When the agent's client certificate expires (Unix time)",
            certificate_expiry.clone(),
        );
        let build = Family::<VersionLabel, Gauge>::default();
        build.get_or_create(&VersionLabel { version: env!("CARGO_PKG_VERSION") }).set(1);
        registry.register("pwrelay_agent_build_info", "The agent's version", build);
        Self {
            registry,
            jobs,
            job_seconds,
            jobs_running,
            ldap_operations,
            ldap_seconds,
            dc_up,
            dc_checked,
            relay_connected,
            relay_streams,
            results_unacknowledged,
            certificate_expiry,
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Records a finished job.
    pub fn job_finished(&self, kind: &str, outcome: &str, took: std::time::Duration) {
        self.jobs.get_or_create(&JobLabels { kind: kind.to_owned(), outcome: outcome.to_owned() }).inc();
        self.job_seconds.get_or_create(&KindLabel { kind: kind.to_owned() }).observe(took.as_secs_f64());
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// An LDAP answer that carries a result code.
pub(crate) trait LdapAnswer {
    /// The LDAP result code (0 is success).
    fn result_code(&self) -> u32;
}

impl LdapAnswer for ldap3::LdapResult {
    fn result_code(&self) -> u32 {
        self.rc
    }
}

impl LdapAnswer for ldap3::SearchResult {
    fn result_code(&self) -> u32 {
        self.1.rc
    }
}

/// Runs the LDAP operation `operation` and records its latency and result.
pub(crate) async fn ldap<T: LdapAnswer, E>(
    operation: &'static str,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let started = Instant::now();
    let answer = call.await;
    let result = match &answer {
        Ok(answer) if answer.result_code() == 0 => "success",
        Ok(_) => "refused",
        Err(_) => "no_answer",
    };
    let metrics = metrics();
    metrics.ldap_seconds.get_or_create(&OperationLabel { operation }).observe(started.elapsed().as_secs_f64());
    metrics.ldap_operations.get_or_create(&LdapLabels { operation, result }).inc();
    answer
}
