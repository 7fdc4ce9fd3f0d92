//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`, so an accepted job is
//! on disk before the API answers 202.
//!
//! One connection behind a mutex serves every call. Reads run on the blocking pool. The hot
//! writes (claims, results, renewals, new jobs, the agents' records) go to the store's *writer*
//! ([`writer`]), one thread that commits what is queued together: one transaction (one sync) with
//! a savepoint for each write, each answered only after that transaction's `COMMIT`, so a write is
//! still atomic and on its own (one that fails is rolled back alone) and nothing is acknowledged
//! before it is durable. Other calls are one transaction each. One file per
//! trait: `jobs.rs`, `clients.rs`, `webhooks.rs` (the outbox is filled by the `jobs_final_webhook`
//! trigger), `lifecycle.rs`, `replicas.rs` (one process, but the same heartbeats and claims as
//! PostgreSQL), `agents.rs` (the known agents), `enrollment.rs` (enrollment tokens and the deny list), `audit.rs`
//! (the audit trail); the schema and its migrations are in `schema.rs`.

mod agents;
mod audit;
mod clients;
mod enrollment;
mod gauges;
mod jobs;
mod lifecycle;
mod replicas;
mod schema;
mod webhooks;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::Connection;

use super::{Store, StoreError};

/// The SQLite backend.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    writer: writer::Writer,
    path: PathBuf,
    replica: super::ReplicaId,
}

pub(super) fn db_err(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

impl super::columns::Columns for rusqlite::Row<'_> {
    fn text(&self, i: usize) -> Result<Option<String>, StoreError> {
        self.get(i).map_err(db_err)
    }

    fn int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        self.get(i).map_err(db_err)
    }

    fn flag(&self, i: usize) -> Result<Option<bool>, StoreError> {
        self.get(i).map_err(db_err)
    }

    fn bytes(&self, i: usize) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(i).map_err(db_err)
    }
}

pub(super) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The connection's settings.
pub(super) fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(Duration::from_secs(5)).map_err(db_err)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(db_err)?;
    conn.pragma_update(None, "synchronous", "FULL").map_err(db_err)?;
    conn.pragma_update(None, "foreign_keys", "ON").map_err(db_err)?;
    // The savepoint of each write in a group commit journals the pages it changes: in memory, not
    // in a temporary file written for every page.
    conn.pragma_update(None, "temp_store", "MEMORY").map_err(db_err)?;
    // One plan per statement whatever its parameters: without this, binding a new integer to a
    // `LIMIT ?` or a comparison recompiles the statement (a claim's search, each time its limit
    // changed).
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true).map_err(db_err)?;
    // Every hot statement stays compiled (rusqlite keeps 16 by default; a group commit alone runs
    // more than that).
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

/// Compiled statements kept per connection.
const STATEMENT_CACHE: usize = 128;

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| StoreError::Database(format!("store.path {}: {e}", path.display())))?;
        }
        let conn =
            Connection::open(path).map_err(|e| StoreError::Database(format!("store.path {}: {e}", path.display())))?;
        configure(&conn)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(db_err)?;
        if version > schema::SCHEMA_VERSION {
            return Err(StoreError::Database(format!(
                "store.path {} was written by a newer pwrelay (schema {version}, this one knows {})",
                path.display(),
                schema::SCHEMA_VERSION
            )));
        }
        // A new database starts at version 1 (SCHEMA) and takes every migration like an old one.
        if version == 0 {
            conn.execute_batch(schema::SCHEMA).map_err(db_err)?;
        }
        let from = version.max(1);
        for (i, migration) in schema::MIGRATIONS.iter().enumerate().skip(usize::try_from(from - 1).unwrap_or(0)) {
            let tx = conn.unchecked_transaction().map_err(db_err)?;
            tx.execute_batch(migration).map_err(db_err)?;
            tx.pragma_update(None, "user_version", i64::try_from(i).unwrap_or(0) + 2).map_err(db_err)?;
            tx.commit().map_err(db_err)?;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // The database holds sealed secrets and token hashes: owner only.
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        let conn = Arc::new(Mutex::new(conn));
        let writer = writer::Writer::start(Arc::clone(&conn))?;
        Ok(Self { conn, writer, path: path.to_owned(), replica: super::ReplicaId::generate() })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(super) async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock leaves the connection usable: SQLite rolled back the
            // unfinished transaction when its guard dropped.
            let mut guard = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Database(format!("store task failed: {e}")))?
    }

    /// Runs `work` in the writer's next group commit, inside a savepoint of its own: it must not
    /// begin or commit a transaction itself. Answers once the group's `COMMIT` made it durable; an
    /// error from `work` rolls back its savepoint only.
    pub(super) async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.writer.queue(work)?.await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn check(&self) -> Result<(), StoreError> {
        self.run(|conn| {
            conn.execute_batch("BEGIN IMMEDIATE; SELECT count(*) FROM jobs LIMIT 1; ROLLBACK;").map_err(db_err)
        })
        .await
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }

    async fn purge_finished(&self, older_than: Duration) -> Result<super::Purged, StoreError> {
        self.run(move |conn| {
            let before = crate::jobs::Timestamp::now().0.saturating_sub(ms(older_than));
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db_err)?;
            let new_hires = tx.execute(super::PURGE_FINISHED_REQUESTS, rusqlite::params![before]).map_err(db_err)?;
            let jobs = tx.execute(super::PURGE_FINISHED_JOBS, rusqlite::params![before]).map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            Ok(super::Purged { jobs, new_hires })
        })
        .await
    }
}
