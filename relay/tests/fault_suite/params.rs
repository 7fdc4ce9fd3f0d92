//! The run's parameters, from environment variables with the short run's defaults.

use std::time::Duration;

/// What one run does.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    /// Seeds every random choice of the harness (jobs, passwords, faults and their moments).
    pub(crate) seed: u64,
    /// Jobs to run in all.
    pub(crate) jobs: usize,
    /// Test accounts the jobs are spread over (each account's jobs run one after another).
    pub(crate) accounts: usize,
    /// How long jobs are paced and faults injected.
    pub(crate) fault_phase: Duration,
    /// After the fault phase: how long the remaining jobs may take to end.
    pub(crate) drain: Duration,
    /// The relay's `link.lease_seconds`.
    pub(crate) lease: Duration,
    /// Mean pause between two faults.
    pub(crate) mean_fault_gap: Duration,
    /// New-hire (initial password) requests through the lifecycle callout, besides `jobs`.
    pub(crate) new_hires: usize,
    /// Keep the run's directory (logs, store, agents' state) even when every figure is 0.
    pub(crate) keep_dir: bool,
    /// The store: SQLite (`relay.db`) or a fresh database on the PostgreSQL test server.
    pub(crate) postgres: bool,
    /// Relay replicas sharing the store (more than one needs PostgreSQL).
    pub(crate) replicas: usize,
}

fn number<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) if !text.trim().is_empty() => {
            text.trim().parse().unwrap_or_else(|_| panic!("{name}={text:?} is not a number"))
        }
        _ => default,
    }
}

impl Params {
    /// Reads `FAULT_SEED` (random when unset), `FAULT_JOBS` (300), `FAULT_ACCOUNTS` (40),
    /// `FAULT_SECONDS` (80: the fault phase), `FAULT_DRAIN_SECONDS` (90), `FAULT_LEASE_SECONDS` (8),
    /// `FAULT_MEAN_GAP_SECONDS` (3), `FAULT_NEW_HIRES` (6), `FAULT_KEEP_DIR` (unset), `FAULT_STORE`
    /// (`sqlite`, or `postgres`: a fresh database on `PWRELAY_TEST_POSTGRES_URL`'s server) and
    /// `FAULT_REPLICAS` (1; more needs `FAULT_STORE=postgres`).
    pub(crate) fn from_env() -> Self {
        let seed = match std::env::var("FAULT_SEED") {
            Ok(text) if !text.trim().is_empty() => {
                text.trim().parse().unwrap_or_else(|_| panic!("FAULT_SEED={text:?} is not a number"))
            }
            _ => rand::random::<u64>() % 1_000_000_000,
        };
        let params = Self {
            seed,
            jobs: number("FAULT_JOBS", 300),
            accounts: number("FAULT_ACCOUNTS", 40),
            fault_phase: Duration::from_secs(number("FAULT_SECONDS", 80)),
            drain: Duration::from_secs(number("FAULT_DRAIN_SECONDS", 90)),
            lease: Duration::from_secs(number("FAULT_LEASE_SECONDS", 8)),
            mean_fault_gap: Duration::from_secs_f64(number("FAULT_MEAN_GAP_SECONDS", 3.0)),
            new_hires: number("FAULT_NEW_HIRES", 6),
            keep_dir: std::env::var_os("FAULT_KEEP_DIR").is_some(),
            postgres: match std::env::var("FAULT_STORE").as_deref().map(str::trim) {
                Err(_) | Ok("" | "sqlite") => false,
                Ok("postgres") => true,
                Ok(other) => panic!("FAULT_STORE={other:?}: use sqlite or postgres"),
            },
            replicas: number("FAULT_REPLICAS", 1),
        };
        assert!(
            params.replicas >= 1 && (params.replicas == 1 || params.postgres),
            "FAULT_REPLICAS must be at least 1, and more than 1 only with FAULT_STORE=postgres"
        );
        assert!(
            params.accounts > 0 && params.jobs >= params.accounts,
            "FAULT_JOBS must be at least FAULT_ACCOUNTS (> 0)"
        );
        assert!(
            params.lease >= Duration::from_secs(6),
            "FAULT_LEASE_SECONDS must be at least 6 (heartbeat 1 s + write timeout 3 s + 2 s, the relay's minimum)"
        );
        params
    }
}
