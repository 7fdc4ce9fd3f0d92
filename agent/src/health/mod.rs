//! Local health endpoints for operations, on 127.0.0.1 by default:
//! `GET /healthz` (the process answers), `GET /readyz` (the relay link is up and a bind to a DC
//! of every served domain works), `GET /status` (what the agent sees, for `pwrelay-agent status`:
//! the relay link, each DC, its certificate, recent jobs without their accounts) and
//! `GET /metrics` (Prometheus text, see [`crate::metrics`]).
//!
//! The bind check runs every `health.bind_check_interval_seconds`. It never binds with a password
//! a DC refused (see [`crate::directory::service_credential`]): a wrong `bind_password` is tried
//! once, not once per interval and DC, so the check cannot lock its own service account out.
//! `/readyz` then says so, and when the next try is.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use pwrelay_shared::domain::DomainName;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::directory::{CredentialRefusal, DcHealth};
use crate::jobs::Jobs;

/// The last bind check of one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryStatus {
    /// Whether at least one DC took the service account's bind.
    pub bind_ok: bool,
    /// The DCs that answered, or the errors.
    pub detail: String,
    /// Each DC's answer.
    pub dcs: Vec<DcHealth>,
    /// The service account's password was refused and is not being used.
    pub credentials_refused: Option<CredentialRefusal>,
}

/// The agent's client certificate, as loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateStatus {
    /// The agent name in it.
    pub agent: String,
    /// The domains it names.
    pub domains: Vec<String>,
    /// When it became valid (notBefore, Unix seconds).
    pub issued_unix: i64,
    /// When it expires (Unix seconds).
    pub expires_unix: i64,
}

impl CertificateStatus {
    /// Near its expiry: past two thirds of its life, when renewal is due (and, done, would have
    /// replaced it).
    pub fn near_expiry(&self, now_unix: i64) -> bool {
        now_unix >= self.issued_unix + (self.expires_unix - self.issued_unix) * 2 / 3
    }
}

/// The relay link as the agent last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RelayStatus {
    /// When the current stream came up (Unix seconds).
    connected_since_unix: Option<i64>,
    /// Why the last stream ended or could not be opened.
    last_error: Option<String>,
}

/// What the agent knows about its own health.
#[derive(Debug, Default)]
pub struct HealthState {
    relay_connected: AtomicBool,
    relay: Mutex<RelayStatus>,
    directories: Mutex<BTreeMap<DomainName, DirectoryStatus>>,
    certificate: Mutex<Option<CertificateStatus>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Single assignments only: a panicked holder leaves the value consistent.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl HealthState {
    /// Records whether the relay stream is up.
    pub fn set_relay_connected(&self, up: bool) {
        let was = self.relay_connected.swap(up, Ordering::Relaxed);
        crate::metrics::metrics().relay_connected.set(i64::from(up));
        if up && !was {
            crate::metrics::metrics().relay_streams.inc();
            *lock(&self.relay) =
                RelayStatus { connected_since_unix: Some(crate::jobs::unix_seconds()), last_error: None };
        } else if !up {
            lock(&self.relay).connected_since_unix = None;
        }
    }

    /// Records why the relay link is down.
    pub fn set_relay_error(&self, error: String) {
        lock(&self.relay).last_error = Some(error);
    }

    /// Records the client certificate in use.
    pub fn set_certificate(&self, certificate: CertificateStatus) {
        #[expect(clippy::cast_precision_loss, reason = "Unix seconds are far below 2^53")]
        crate::metrics::metrics().certificate_expiry.set(certificate.expires_unix as f64);
        *lock(&self.certificate) = Some(certificate);
    }

    /// Whether the relay stream is up.
    pub fn relay_connected(&self) -> bool {
        self.relay_connected.load(Ordering::Relaxed)
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<DomainName, DirectoryStatus>> {
        lock(&self.directories)
    }

    /// The last bind check of every domain.
    pub fn directories(&self) -> BTreeMap<DomainName, DirectoryStatus> {
        self.map().clone()
    }

    /// Records a bind check.
    pub fn set_directory(&self, domain: DomainName, status: DirectoryStatus) {
        self.map().insert(domain, status);
    }

    /// Ready: relay connected and every domain bound at its last check.
    pub fn ready(&self, expected_domains: usize) -> bool {
        let directories = self.map();
        self.relay_connected() && directories.len() == expected_domains && directories.values().all(|s| s.bind_ok)
    }
}

/// Checks every domain's bind now and then every `interval` (`health.bind_check_interval_seconds`)
/// until `cancel`.
pub async fn check_directories(jobs: Jobs, health: Arc<HealthState>, interval: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (domain, directory) in &jobs.directories {
            let dcs = directory.check_each_dc().await;
            for dc in dcs.iter().filter(|dc| !dc.ok) {
                tracing::warn!(%domain, dc = %dc.url, error = %dc.detail, "domain controller bind check failed");
            }
            let checked = crate::jobs::unix_seconds();
            for dc in &dcs {
                let labels = crate::metrics::DcLabels { domain: domain.to_string(), dc: dc.url.clone() };
                crate::metrics::metrics().dc_up.get_or_create(&labels).set(i64::from(dc.ok));
                crate::metrics::metrics().dc_checked.get_or_create(&labels).set(checked);
            }
            let bind_ok = dcs.iter().any(|dc| dc.ok);
            let credentials_refused = directory.credential_refusal().filter(|_| !bind_ok);
            let detail = if let Some(refusal) = &credentials_refused {
                refusal.message(tokio::time::Instant::now())
            } else if bind_ok {
                dcs.iter().filter(|dc| dc.ok).map(|dc| dc.url.as_str()).collect::<Vec<_>>().join(", ")
            } else {
                dcs.iter().map(|dc| format!("{}: {}", dc.url, dc.detail)).collect::<Vec<_>>().join("; ")
            };
            let status = DirectoryStatus { bind_ok, detail, dcs, credentials_refused };
            health.set_directory(domain.clone(), status);
        }
    }
}

#[derive(Debug)]
struct Shared {
    health: Arc<HealthState>,
    jobs: Jobs,
    started_unix: i64,
}

/// The health routes for the agent serving `jobs`.
pub fn router(health: Arc<HealthState>, jobs: Jobs) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/readyz", get(ready))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(Shared { health, jobs, started_unix: crate::jobs::unix_seconds() }))
}

async fn metrics() -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    (
        [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        crate::metrics::metrics().encode(),
    )
}

async fn ready(State(shared): State<Arc<Shared>>) -> (StatusCode, Json<Value>) {
    let ready = shared.health.ready(shared.jobs.directories.len());
    let mut body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "relay_connected": shared.health.relay_connected(),
        "directories": directories(&shared.health),
    });
    // The certificate shows only when its expiry is near (renewal due or failing).
    let now = crate::jobs::unix_seconds();
    if let Some(certificate) = lock(&shared.health.certificate).clone().filter(|c| c.near_expiry(now)) {
        body["certificate"] = json!({
            "expires_unix": certificate.expires_unix,
            "expires_in_seconds": certificate.expires_unix - now,
            "detail": if certificate.expires_unix <= now {
                "the agent certificate has expired; the relay refuses it: enroll again with a new token"
            } else {
                "the agent certificate is near its expiry and not renewed yet; see the agent's log"
            },
        });
    }
    (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body))
}

/// Everything `/readyz` says, and the relay link's history, the certificate, the running and
/// recent jobs (ids, kinds and outcomes; never an account).
async fn status(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let health = &shared.health;
    let relay = lock(&health.relay).clone();
    let certificate = lock(&health.certificate)
        .clone()
        .map(|c| json!({ "agent": c.agent, "domains": c.domains, "expires_unix": c.expires_unix }));
    let recent: Vec<Value> = shared
        .jobs
        .recent()
        .into_iter()
        .map(|job| {
            json!({
                "job_id": job.job_id,
                "kind": job.kind,
                "outcome": job.outcome,
                "finished_unix": job.finished_unix,
                "seconds": job.seconds,
            })
        })
        .collect();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "started_unix": shared.started_unix,
        "now_unix": crate::jobs::unix_seconds(),
        "ready": health.ready(shared.jobs.directories.len()),
        "relay": {
            "connected": health.relay_connected(),
            "connected_since_unix": relay.connected_since_unix,
            "last_error": relay.last_error,
        },
        "certificate": certificate,
        "directories": directories(health),
        "jobs_running": crate::metrics::metrics().jobs_running.get(),
        "results_unacknowledged": crate::metrics::metrics().results_unacknowledged.get(),
        "recent_jobs": recent,
    }))
}

/// Each domain's last bind check, as `/readyz` and `/status` show it.
fn directories(health: &HealthState) -> serde_json::Map<String, Value> {
    let now = tokio::time::Instant::now();
    health
        .directories()
        .into_iter()
        .map(|(domain, s)| {
            let dcs: Vec<Value> =
                s.dcs.iter().map(|dc| json!({ "url": dc.url, "ok": dc.ok, "error": dc.detail })).collect();
            let mut status = json!({ "bind_ok": s.bind_ok, "detail": s.detail, "dcs": dcs });
            if let Some(refusal) = &s.credentials_refused {
                // Said again with the time left now, not at the last check.
                status["detail"] = json!(refusal.message(now));
                status["credentials_refused"] = json!({
                    "dc": refusal.dc,
                    "answer": refusal.answer,
                    "retry_in_seconds": refusal.retry_in_seconds(now),
                    "until_changed": refusal.source_key,
                });
            }
            (domain.to_string(), status)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_is_near_its_expiry_from_two_thirds_of_its_life() {
        let certificate = CertificateStatus {
            agent: "a".into(),
            domains: vec![],
            issued_unix: 1_000,
            expires_unix: 1_000 + 30 * 86_400,
        };
        assert!(!certificate.near_expiry(1_000 + 19 * 86_400));
        assert!(certificate.near_expiry(1_000 + 20 * 86_400));
        assert!(certificate.near_expiry(1_000 + 31 * 86_400));
    }
}
