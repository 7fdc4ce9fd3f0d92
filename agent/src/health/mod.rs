//! Local health endpoints for operations, on 127.0.0.1 by default:
//! `GET /healthz` (the process answers) and `GET /readyz` (the relay link is up and a bind to a DC
//! of every served domain works).

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

use crate::directory::DcHealth;
use crate::jobs::Jobs;

/// How often each domain's DC bind is checked.
pub const BIND_CHECK_INTERVAL: Duration = Duration::from_secs(30);

/// The last bind check of one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryStatus {
    /// Whether at least one DC took the service account's bind.
    pub bind_ok: bool,
    /// The DCs that answered, or the errors.
    pub detail: String,
    /// Each DC's answer.
    pub dcs: Vec<DcHealth>,
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

/// Checks every domain's bind now and then every [`BIND_CHECK_INTERVAL`] until `cancel`.
pub async fn check_directories(jobs: Jobs, health: Arc<HealthState>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(BIND_CHECK_INTERVAL);
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
            let detail = if bind_ok {
                dcs.iter().filter(|dc| dc.ok).map(|dc| dc.url.as_str()).collect::<Vec<_>>().join(", ")
            } else {
                dcs.iter().map(|dc| format!("{}: {}", dc.url, dc.detail)).collect::<Vec<_>>().join("; ")
            };
            let status = DirectoryStatus { bind_ok, detail, dcs };
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
    let directories: serde_json::Map<String, Value> = shared
        .health
        .directories()
        .into_iter()
        .map(|(domain, s)| {
            let dcs: Vec<Value> =
                s.dcs.iter().map(|dc| json!({ "url": dc.url, "ok": dc.ok, "error": dc.detail })).collect();
            (domain.to_string(), json!({ "bind_ok": s.bind_ok, "detail": s.detail, "dcs": dcs }))
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
