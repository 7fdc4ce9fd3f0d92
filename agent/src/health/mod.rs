//! Local health endpoints for operations, on 127.0.0.1 by default:
//! `GET /healthz` (the process answers) and `GET /readyz` (the relay link is up and a bind to a DC
//! of every served domain works).
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

/// What the agent knows about its own health.
#[derive(Debug, Default)]
pub struct HealthState {
    relay_connected: AtomicBool,
    directories: Mutex<BTreeMap<DomainName, DirectoryStatus>>,
}

impl HealthState {
    /// Records whether the relay stream is up.
    pub fn set_relay_connected(&self, up: bool) {
        self.relay_connected.store(up, Ordering::Relaxed);
    }

    /// Whether the relay stream is up.
    pub fn relay_connected(&self) -> bool {
        self.relay_connected.load(Ordering::Relaxed)
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<DomainName, DirectoryStatus>> {
        // Single inserts only: a panicked holder leaves the map consistent.
        self.directories.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
    domains: usize,
}

/// The health routes.
pub fn router(health: Arc<HealthState>, domains: usize) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/readyz", get(ready))
        .with_state(Arc::new(Shared { health, domains }))
}

async fn ready(State(shared): State<Arc<Shared>>) -> (StatusCode, Json<Value>) {
    let now = tokio::time::Instant::now();
    let directories: serde_json::Map<String, Value> = shared
        .health
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
        .collect();
    let ready = shared.health.ready(shared.domains);
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "relay_connected": shared.health.relay_connected(),
        "directories": directories,
    });
    (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body))
}
