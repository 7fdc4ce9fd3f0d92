//! Known agents in SQLite.

use std::collections::BTreeSet;

use async_trait::async_trait;
use pwrelay_shared::domain::DomainName;
use rusqlite::{OptionalExtension, Row, params};

use super::{SqliteStore, db_err};
use crate::jobs::Timestamp;
use crate::store::agents::{AgentReport, AgentRow, Forgetting, JobCounts, to_i64, to_json, union_of_domains};
use crate::store::{AgentStore, KnownAgent, StoreError};

const COLUMNS: &str = "name, domains, version, cert_serial, cert_expires_ms, first_seen_ms, last_seen_ms, connected, \
                       replica, stream, peer, opened_ms, directories, jobs_in_flight, jobs_done, jobs_failed";

fn row(r: &Row<'_>) -> rusqlite::Result<AgentRow> {
    Ok(AgentRow {
        name: r.get(0)?,
        domains: r.get(1)?,
        version: r.get(2)?,
        cert_serial: r.get(3)?,
        cert_expires_ms: r.get(4)?,
        first_seen_ms: r.get(5)?,
        last_seen_ms: r.get(6)?,
        connected: r.get(7)?,
        replica: r.get(8)?,
        stream: r.get(9)?,
        peer: r.get(10)?,
        opened_ms: r.get(11)?,
        directories: r.get(12)?,
        jobs_in_flight: r.get(13)?,
        jobs_done: r.get(14)?,
        jobs_failed: r.get(15)?,
    })
}

#[async_trait]
impl AgentStore for SqliteStore {
    async fn record_agent(&self, report: &AgentReport) -> Result<(), StoreError> {
        let domains = to_json(&report.domains)?;
        let directories = report.directories.as_ref().map(to_json).transpose()?;
        let report = report.clone();
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO agents (name, domains, version, cert_serial, cert_expires_ms, first_seen_ms, last_seen_ms,
                                     connected, replica, stream, peer, opened_ms, directories, jobs_in_flight,
                                     jobs_done, jobs_failed)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, 1, ?7, ?8, ?9, ?10, coalesce(?11, '[]'), ?12, ?13, ?14)
                 ON CONFLICT (name) DO UPDATE SET
                     domains = excluded.domains, version = excluded.version, cert_serial = excluded.cert_serial,
                     cert_expires_ms = excluded.cert_expires_ms,
                     last_seen_ms = max(agents.last_seen_ms, excluded.last_seen_ms), connected = 1,
                     replica = excluded.replica, stream = excluded.stream, peer = excluded.peer,
                     opened_ms = excluded.opened_ms, directories = coalesce(?11, agents.directories),
                     jobs_in_flight = excluded.jobs_in_flight, jobs_done = agents.jobs_done + excluded.jobs_done,
                     jobs_failed = agents.jobs_failed + excluded.jobs_failed",
                params![
                    report.name,
                    domains,
                    report.version,
                    report.certificate.serial,
                    report.certificate.expires.0,
                    report.seen.0,
                    report.stream.replica,
                    report.stream.id,
                    report.stream.peer,
                    report.stream.opened.0,
                    directories,
                    report.jobs_in_flight,
                    to_i64(report.finished.done),
                    to_i64(report.finished.failed),
                ],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn agent_disconnected(&self, name: &str, stream: &str, finished: JobCounts) -> Result<bool, StoreError> {
        let (name, stream) = (name.to_owned(), stream.to_owned());
        self.write(move |conn| {
            let current: Option<bool> = conn
                .query_row(
                    "UPDATE agents SET connected = CASE WHEN stream = ?2 THEN 0 ELSE connected END,
                                       jobs_done = jobs_done + ?3, jobs_failed = jobs_failed + ?4
                      WHERE name = ?1
                  RETURNING stream = ?2",
                    params![name, stream, to_i64(finished.done), to_i64(finished.failed)],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            Ok(current.unwrap_or(false))
        })
        .await
    }

    async fn agents(&self) -> Result<Vec<KnownAgent>, StoreError> {
        self.run(|conn| {
            let mut statement = conn.prepare(&format!("SELECT {COLUMNS} FROM agents ORDER BY name")).map_err(db_err)?;
            let rows = statement.query_map([], row).map_err(db_err)?;
            rows.map(|r| r.map_err(db_err)?.into_agent()).collect()
        })
        .await
    }

    async fn agent(&self, name: &str) -> Result<Option<KnownAgent>, StoreError> {
        let name = name.to_owned();
        self.run(move |conn| {
            conn.query_row(&format!("SELECT {COLUMNS} FROM agents WHERE name = ?1"), params![name], row)
                .optional()
                .map_err(db_err)?
                .map(AgentRow::into_agent)
                .transpose()
        })
        .await
    }

    async fn connected_domains(&self, heard_since: Timestamp) -> Result<BTreeSet<DomainName>, StoreError> {
        self.run(move |conn| {
            let mut statement = conn
                .prepare_cached("SELECT name, domains FROM agents WHERE connected = 1 AND last_seen_ms >= ?1")
                .map_err(db_err)?;
            let rows = statement.query_map(params![heard_since.0], |r| Ok((r.get(0)?, r.get(1)?))).map_err(db_err)?;
            union_of_domains(rows.collect::<Result<Vec<_>, _>>().map_err(db_err)?)
        })
        .await
    }

    async fn forget_agent(&self, name: &str, unless_heard_since: Option<Timestamp>) -> Result<Forgetting, StoreError> {
        let name = name.to_owned();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db_err)?;
            let removed = tx
                .execute(
                    "DELETE FROM agents WHERE name = ?1 AND (?2 IS NULL OR connected = 0 OR last_seen_ms < ?2)",
                    params![name, unless_heard_since.map(|t| t.0)],
                )
                .map_err(db_err)?;
            let outcome = if removed == 1 {
                Forgetting::Forgotten
            } else if tx
                .query_row("SELECT 1 FROM agents WHERE name = ?1", params![name], |_| Ok(()))
                .optional()
                .map_err(db_err)?
                .is_some()
            {
                Forgetting::Connected
            } else {
                Forgetting::Unknown
            };
            tx.commit().map_err(db_err)?;
            Ok(outcome)
        })
        .await
    }
}
