//! The PostgreSQL store, which several relays can share (`store.url = "postgres://..."`).
//!
//! A pool of connections (deadpool) over TLS (rustls, configured by `shared::tls`), the password
//! read from `store.password_file` or `store.password_env` when the store opens. Every call is one
//! transaction under READ COMMITTED; what must not race between replicas is decided by row locks
//! in the statements themselves:
//! - a claim takes its candidates `FOR UPDATE SKIP LOCKED`, so two replicas never lease one job,
//!   and the one-writer rule holds because only the oldest unfinished job of an account is ever a
//!   candidate;
//! - results and renewals are fenced in their `WHERE` (holder and attempt), as in SQLite;
//! - a batch settles after the commit of each change to a child, in statements of their own, so
//!   the last two children finishing at once on two replicas still settle it (`jobs.rs`);
//! - inserts that must happen once (idempotency keys, callouts) are `ON CONFLICT DO NOTHING`.
//!
//! One file per trait, like `sqlite/`; each statement is a file under `queries/`, named after its
//! operation; the schema's versions are `migrations/NNNN_*.sql`, applied in order by [`open`]
//! (under an advisory lock, so replicas starting together apply each once) and recorded in
//! `schema_migrations`.
//!
//! Several replicas: each keeps one more connection that `LISTEN`s on `pwrelay_jobs`, which the
//! `jobs_notify` trigger notifies on every job state change, and feeds it into its
//! [`JobEvents`](crate::jobs::events::JobEvents) (`replicas.rs`). Background work is claimed
//! (webhook deliveries, new-hire requests: an owner and an expiry, `FOR UPDATE SKIP LOCKED`), and
//! each sweep runs under a transaction-level advisory lock: a replica that finds it taken skips
//! that round, since another replica is doing the same work.

mod agents;
mod audit;
mod clients;
mod enrollment;
mod gauges;
mod jobs;
mod lifecycle;
mod replicas;
mod webhooks;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use pwrelay_shared::tls::{self, TrustAnchors};
use tokio_postgres::config::Host;

use super::{Store, StoreError};
use crate::config::{PasswordSource, PostgresConfig};
use crate::jobs::Timestamp;

/// One statement of `queries/`, by its path without `.sql`.
macro_rules! query {
    ($name:literal) => {
        include_str!(concat!("queries/", $name, ".sql"))
    };
}
pub(crate) use query;

/// The schema's versions, in order: version `n` is `MIGRATIONS[n - 1]`.
const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_schema", include_str!("migrations/0001_schema.sql")),
    ("0002_agents", include_str!("migrations/0002_agents.sql")),
    ("0003_replicas", include_str!("migrations/0003_replicas.sql")),
    ("0004_enrollment", include_str!("migrations/0004_enrollment.sql")),
    ("0005_audit", include_str!("migrations/0005_audit.sql")),
    ("0006_claim_order", include_str!("migrations/0006_claim_order.sql")),
    ("0007_open_job_indexes", include_str!("migrations/0007_open_job_indexes.sql")),
];

/// The advisory lock key under which migrations run (any constant shared by every replica).
const MIGRATION_LOCK: i64 = 0x7077_7265_6c61_7901;

/// The PostgreSQL backend.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    location: String,
    replica: super::ReplicaId,
    listen: Listen,
}

/// How the listening connection is made: the pool's settings, outside the pool.
#[derive(Clone)]
struct Listen {
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
}

/// The sweeps, each under its own advisory lock (`pg_try_advisory_xact_lock`).
#[derive(Clone, Copy, Debug)]
#[repr(i64)]
pub(super) enum Sweep {
    ExpireOverdue = 0x7077_7265_6c61_7910,
    IdempotencyKeys = 0x7077_7265_6c61_7911,
    PurgeFinished = 0x7077_7265_6c61_7912,
    WebhookLog = 0x7077_7265_6c61_7913,
    ExpiredLinks = 0x7077_7265_6c61_7914,
    AuditLog = 0x7077_7265_6c61_7915,
}

/// Takes `sweep`'s lock for the transaction; false when another replica holds it (and is doing
/// the same work right now).
pub(super) async fn sweep_lock(tx: &deadpool_postgres::Transaction<'_>, sweep: Sweep) -> Result<bool, StoreError> {
    let row = tx.query_one("SELECT pg_try_advisory_xact_lock($1)", &[&(sweep as i64)]).await.map_err(db_err)?;
    row.try_get(0).map_err(db_err)
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").field("location", &self.location).finish_non_exhaustive()
    }
}

pub(super) fn db_err(e: tokio_postgres::Error) -> StoreError {
    StoreError::Database(match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    })
}

impl super::columns::Columns for tokio_postgres::Row {
    fn text(&self, i: usize) -> Result<Option<String>, StoreError> {
        self.try_get(i).map_err(db_err)
    }

    /// `SMALLINT`, `INTEGER` and `BIGINT` alike.
    fn int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        use tokio_postgres::types::Type;
        match self.columns().get(i).map(|column| column.type_()) {
            Some(&Type::INT2) => Ok(self.try_get::<_, Option<i16>>(i).map_err(db_err)?.map(i64::from)),
            Some(&Type::INT4) => Ok(self.try_get::<_, Option<i32>>(i).map_err(db_err)?.map(i64::from)),
            _ => self.try_get(i).map_err(db_err),
        }
    }

    fn flag(&self, i: usize) -> Result<Option<bool>, StoreError> {
        self.try_get(i).map_err(db_err)
    }

    fn bytes(&self, i: usize) -> Result<Option<Vec<u8>>, StoreError> {
        self.try_get(i).map_err(db_err)
    }
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => db_err(e),
        other => StoreError::Database(format!("connection pool: {other}")),
    }
}

/// Where the database is, without credentials: `postgres://user@host:port/db`.
fn location(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(host, port)| match host {
            Host::Tcp(name) => format!("{name}:{port}"),
            #[cfg(unix)]
            Host::Unix(path) => format!("{}:{port}", path.display()),
        })
        .collect();
    format!(
        "postgres://{}@{}/{}",
        config.get_user().unwrap_or_default(),
        hosts.join(","),
        config.get_dbname().unwrap_or_default()
    )
}

fn read_password(source: &PasswordSource) -> Result<Vec<u8>, StoreError> {
    let text = match source {
        PasswordSource::File(path) => std::fs::read_to_string(path)
            .map_err(|e| StoreError::Database(format!("store.password_file {}: {e}", path.display())))?,
        PasswordSource::Env(name) => std::env::var(name).map_err(|_| {
            StoreError::Database(format!("store.password_env: the environment variable {name} is not set"))
        })?,
    };
    let password = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
    if password.is_empty() {
        let key = match source {
            PasswordSource::File(_) => "store.password_file",
            PasswordSource::Env(_) => "store.password_env",
        };
        return Err(StoreError::Database(format!("{key}: the password is empty")));
    }
    Ok(password.as_bytes().to_vec())
}

impl PostgresStore {
    /// Connects (one connection is made at once, so a wrong setting fails here) and brings the
    /// schema up to date.
    pub async fn open(config: &PostgresConfig) -> Result<Self, StoreError> {
        let store = Self::connect(config)?;
        store.migrate().await.map_err(|e| match e {
            StoreError::Database(message) => StoreError::Database(format!("store.url {}: {message}", store.location)),
            other => other,
        })?;
        Ok(store)
    }

    /// The pool, without touching the database yet.
    fn connect(config: &PostgresConfig) -> Result<Self, StoreError> {
        let mut connection = config.connection.clone();
        if let Some(source) = &config.password {
            connection.password(read_password(source)?);
        }
        let anchors = config
            .ca_file
            .as_deref()
            .map(TrustAnchors::from_file)
            .transpose()
            .map_err(|e| StoreError::Database(format!("store.ca_file: {e}")))?;
        let tls = tls::database_client(anchors.as_ref())
            .map_err(|e| StoreError::Database(format!("store: database TLS: {e}")))?;
        let connector = tokio_postgres_rustls::MakeRustlsConnect::new((*tls).clone());
        let listen = Listen { config: connection.clone(), tls: connector.clone() };
        let manager =
            Manager::from_config(connection, connector, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .build()
            .map_err(|e| StoreError::Database(format!("store.url: {e}")))?;
        Ok(Self { pool, location: location(&config.connection), replica: super::ReplicaId::generate(), listen })
    }

    /// A pooled connection.
    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_err)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(db_err)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    INTEGER PRIMARY KEY,
                 name       TEXT NOT NULL,
                 applied_ms BIGINT NOT NULL
             )",
        )
        .await
        .map_err(db_err)?;
        let row = tx.query_one("SELECT coalesce(max(version), 0) FROM schema_migrations", &[]).await.map_err(db_err)?;
        let current: i32 = row.get(0);
        let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
        if current > known {
            return Err(StoreError::Database(format!(
                "the database was written by a newer pwrelay (schema {current}, this one knows {known})"
            )));
        }
        for (version, (name, sql)) in (1..).zip(MIGRATIONS).skip(usize::try_from(current).unwrap_or(0)) {
            tx.batch_execute(sql).await.map_err(db_err)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_ms) VALUES ($1, $2, $3)",
                &[&version, name, &Timestamp::now().0],
            )
            .await
            .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }

    /// The schema version the database is at.
    pub async fn schema_version(&self) -> Result<i32, StoreError> {
        let client = self.client().await?;
        let row = client.query_one("SELECT max(version) FROM schema_migrations", &[]).await.map_err(db_err)?;
        Ok(row.get::<_, Option<i32>>(0).unwrap_or(0))
    }
}

/// A count of rows as the traits report it.
pub(super) fn count(rows: u64) -> usize {
    usize::try_from(rows).unwrap_or(usize::MAX)
}

#[async_trait]
impl Store for PostgresStore {
    async fn check(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.query_one("SELECT count(*) FROM (SELECT 1 FROM jobs LIMIT 1) j", &[]).await.map_err(db_err).map(drop)
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    async fn purge_finished(&self, older_than: std::time::Duration) -> Result<super::Purged, StoreError> {
        let mut conn = self.client().await?;
        let tx = conn.transaction().await.map_err(db_err)?;
        if !sweep_lock(&tx, Sweep::PurgeFinished).await? {
            return Ok(super::Purged::default());
        }
        let older = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
        let before = Timestamp::now().0.saturating_sub(older);
        let new_hires = tx.execute(super::PURGE_FINISHED_REQUESTS, &[&before]).await.map_err(db_err)?;
        let jobs = tx.execute(super::PURGE_FINISHED_JOBS, &[&before]).await.map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        Ok(super::Purged { jobs: count(jobs), new_hires: count(new_hires) })
    }

    async fn forward_notifications(
        &self,
        events: std::sync::Arc<crate::jobs::events::JobEvents>,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        self.listen(events, cancel).await;
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Fresh databases on the server `PWRELAY_TEST_POSTGRES_URL` names, one per test.

    use super::*;

    /// The settings of the test server, or `None` (after saying so once) when none is set.
    pub(crate) fn server() -> Option<PostgresConfig> {
        let Ok(url) = std::env::var("PWRELAY_TEST_POSTGRES_URL") else {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                use std::io::Write as _;
                // Straight to the terminal: libtest captures print macros.
                let _ = writeln!(
                    std::io::stderr(),
                    "note: PWRELAY_TEST_POSTGRES_URL is not set: the store's PostgreSQL tests are skipped \
                     (deploy/dev/postgres.sh start; eval \"$(deploy/dev/postgres.sh env)\")"
                );
            });
            return None;
        };
        let password_file = std::env::var_os("PWRELAY_TEST_POSTGRES_PASSWORD_FILE").map(Into::into);
        let ca_file = std::env::var_os("PWRELAY_TEST_POSTGRES_CA_FILE").map(Into::into);
        Some(PostgresConfig::parse(&url, password_file, None, ca_file, Some(4)).expect("PWRELAY_TEST_POSTGRES_URL"))
    }

    /// A new empty database on the test server, and the settings that reach it.
    pub(crate) async fn fresh_database(server: &PostgresConfig) -> PostgresConfig {
        let admin = PostgresStore::connect(&PostgresConfig { pool_size: 1, ..server.clone() }).expect("server");
        let name = format!("pwrelay_test_{}", uuid::Uuid::new_v4().simple());
        admin.client().await.expect("connect").batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create");
        let mut config = server.clone();
        config.connection.dbname(&name);
        config
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::time::Duration;

    use pwrelay_shared::domain::DomainName;

    use super::testing::{fresh_database, server};
    use super::*;
    use crate::jobs::{JobId, JobKind, JobOptions, JobSuccess, NewJob, Outcome, Target};
    use crate::store::{ClaimPolicy, Completion, JobStore as _};

    fn policy() -> ClaimPolicy {
        ClaimPolicy {
            lease: Duration::from_secs(60),
            write_timeout: Duration::from_secs(15),
            max_attempts: 3,
            time_to_live: Duration::from_secs(3600),
        }
    }

    fn job(upn: &str, parent: Option<JobId>) -> NewJob {
        NewJob {
            id: JobId::generate(),
            kind: if parent.is_some() { JobKind::Reconcile } else { JobKind::SetPassword },
            domain: DomainName::parse("a.test").expect("domain"),
            target: Target::Upn(upn.into()),
            options: JobOptions::default(),
            client: "pam".into(),
            sealed_secret: None,
            generate: None,
            recipient_key: None,
            parent_id: parent,
        }
    }

    #[tokio::test]
    async fn migrations_apply_once_and_a_newer_schema_is_refused() {
        let Some(server) = server() else { return };
        let config = fresh_database(&server).await;
        let (first, second) = tokio::join!(PostgresStore::open(&config), PostgresStore::open(&config));
        let (first, _second) = (first.expect("open"), second.expect("open concurrently"));
        assert_eq!(first.schema_version().await.expect("version"), i32::try_from(MIGRATIONS.len()).expect("few"));
        assert!(first.location().starts_with("postgres://postgres@127.0.0.1:"), "{}", first.location());
        first
            .client()
            .await
            .expect("connect")
            .execute("INSERT INTO schema_migrations VALUES (99, 'future', 0)", &[])
            .await
            .expect("future");
        let e = PostgresStore::open(&config).await.expect_err("newer").to_string();
        assert!(e.contains("store.url") && e.contains("newer pwrelay (schema 99"), "{e}");
    }

    #[tokio::test]
    async fn a_wrong_password_fails_at_open_and_names_the_key_without_the_password() {
        let Some(server) = server() else { return };
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("password");
        std::fs::write(&file, "not-the-password\n").expect("write");
        let config = PostgresConfig { password: Some(PasswordSource::File(file)), ..server.clone() };
        let e = PostgresStore::open(&config).await.expect_err("refused").to_string();
        assert!(e.contains("store.url") && !e.contains("not-the-password"), "{e}");
        let config =
            PostgresConfig { password: Some(PasswordSource::Env("PWRELAY_TEST_UNSET_VARIABLE".into())), ..server };
        let e = PostgresStore::open(&config).await.expect_err("no variable").to_string();
        assert!(e.contains("store.password_env") && e.contains("PWRELAY_TEST_UNSET_VARIABLE"), "{e}");
    }

    /// Two replicas claiming and completing at once: no job is leased twice, one account never
    /// has two attempts at a time, and every batch settles.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn replicas_claiming_at_once_never_share_a_job_or_an_account() {
        let Some(server) = server() else { return };
        let config = fresh_database(&server).await;
        let replicas = [
            Arc::new(PostgresStore::open(&config).await.expect("a")),
            Arc::new(PostgresStore::open(&config).await.expect("b")),
        ];
        let batch = NewJob { kind: JobKind::ReconcileBatch, ..job("batch@a.test", None) };
        let batch_id = batch.id;
        let mut jobs = vec![batch];
        for n in 0..120 {
            // 30 accounts, 4 jobs each; half of them in the batch.
            let parent = (n % 2 == 0).then_some(batch_id);
            jobs.push(job(&format!("user{}@a.test", n % 30), parent));
        }
        let total = jobs.len() - 1;
        replicas[0].insert_jobs_once(jobs, None).await.expect("insert");
        let domains = [DomainName::parse("a.test").expect("domain")];
        let held: Arc<std::sync::Mutex<HashSet<String>>> = Arc::default();
        let mut workers = Vec::new();
        for (n, replica) in (0..6).map(|n| (n, Arc::clone(&replicas[n % 2]))) {
            let (domains, held) = (domains.clone(), Arc::clone(&held));
            workers.push(tokio::spawn(async move {
                let holder = format!("agent-{n}");
                let mut done = Vec::new();
                for _ in 0..400 {
                    let leased = replica.claim(&domains, &holder, &holder, 5, policy()).await.expect("claim");
                    if leased.is_empty() {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    for l in &leased {
                        let account = l.job.target.account_key(&l.job.domain);
                        assert!(held.lock().expect("lock").insert(account.clone()), "two attempts on {account}");
                    }
                    for l in leased {
                        held.lock().expect("lock").remove(&l.job.target.account_key(&l.job.domain));
                        let ok =
                            Outcome::Succeeded(JobSuccess { account_dn: "CN=x".into(), ..JobSuccess::default() }, None);
                        let completion =
                            replica.complete(l.job.job_id, &holder, l.job.attempts, ok).await.expect("complete");
                        assert_eq!(completion, Completion::Finished);
                        done.push(l.job.job_id);
                    }
                }
                done
            }));
        }
        let mut finished = Vec::new();
        for worker in workers {
            finished.extend(worker.await.expect("worker"));
        }
        let unique: HashSet<_> = finished.iter().collect();
        assert_eq!((finished.len(), unique.len()), (total, total), "each job leased and finished once");
        let batch = replicas[1].job(batch_id).await.expect("read").expect("batch");
        assert_eq!(batch.state, crate::jobs::JobState::Succeeded, "the batch settled: {:?}", batch.progress);
    }
}
