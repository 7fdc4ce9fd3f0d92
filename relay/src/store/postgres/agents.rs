//! Known agents in PostgreSQL.

use std::collections::BTreeSet;

use async_trait::async_trait;
use pwrelay_shared::domain::DomainName;

use super::{PostgresStore, db_err, query};
use crate::jobs::Timestamp;
use crate::store::agents::{AgentReport, AgentRow, Forgetting, JobCounts, to_i64, to_json, union_of_domains};
use crate::store::{AgentStore, KnownAgent, StoreError};

fn row(r: &tokio_postgres::Row) -> Result<AgentRow, StoreError> {
    Ok(AgentRow {
        name: r.try_get(0).map_err(db_err)?,
        domains: r.try_get(1).map_err(db_err)?,
        version: r.try_get(2).map_err(db_err)?,
        cert_serial: r.try_get(3).map_err(db_err)?,
        cert_expires_ms: r.try_get(4).map_err(db_err)?,
        first_seen_ms: r.try_get(5).map_err(db_err)?,
        last_seen_ms: r.try_get(6).map_err(db_err)?,
        connected: r.try_get(7).map_err(db_err)?,
        replica: r.try_get(8).map_err(db_err)?,
        stream: r.try_get(9).map_err(db_err)?,
        peer: r.try_get(10).map_err(db_err)?,
        opened_ms: r.try_get(11).map_err(db_err)?,
        directories: r.try_get(12).map_err(db_err)?,
        jobs_in_flight: r.try_get(13).map_err(db_err)?,
        jobs_done: r.try_get(14).map_err(db_err)?,
        jobs_failed: r.try_get(15).map_err(db_err)?,
    })
}

#[async_trait]
impl AgentStore for PostgresStore {
    async fn record_agent(&self, report: &AgentReport) -> Result<(), StoreError> {
        let domains = to_json(&report.domains)?;
        let directories = report.directories.as_ref().map(to_json).transpose()?;
        let conn = self.client().await?;
        conn.execute(
            query!("agents/record"),
            &[
                &report.name,
                &domains,
                &report.version,
                &report.certificate.serial,
                &report.certificate.expires.0,
                &report.seen.0,
                &report.stream.replica,
                &report.stream.id,
                &report.stream.peer,
                &report.stream.opened.0,
                &directories,
                &i64::from(report.jobs_in_flight),
                &to_i64(report.finished.done),
                &to_i64(report.finished.failed),
            ],
        )
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn agent_disconnected(&self, name: &str, stream: &str, finished: JobCounts) -> Result<bool, StoreError> {
        let conn = self.client().await?;
        let row = conn
            .query_opt(
                query!("agents/disconnected"),
                &[&name, &stream, &to_i64(finished.done), &to_i64(finished.failed)],
            )
            .await
            .map_err(db_err)?;
        Ok(row.map(|r| r.try_get::<_, bool>(0)).transpose().map_err(db_err)?.unwrap_or(false))
    }

    async fn agents(&self) -> Result<Vec<KnownAgent>, StoreError> {
        let conn = self.client().await?;
        let rows = conn.query(query!("agents/list"), &[]).await.map_err(db_err)?;
        rows.iter().map(|r| row(r)?.into_agent()).collect()
    }

    async fn agent(&self, name: &str) -> Result<Option<KnownAgent>, StoreError> {
        let conn = self.client().await?;
        let found = conn.query_opt(query!("agents/get"), &[&name]).await.map_err(db_err)?;
        found.map(|r| row(&r)?.into_agent()).transpose()
    }

    async fn connected_domains(&self, heard_since: Timestamp) -> Result<BTreeSet<DomainName>, StoreError> {
        let conn = self.client().await?;
        let rows = conn.query(query!("agents/connected_domains"), &[&heard_since.0]).await.map_err(db_err)?;
        let pairs = rows
            .iter()
            .map(|r| Ok((r.try_get(0).map_err(db_err)?, r.try_get(1).map_err(db_err)?)))
            .collect::<Result<Vec<(String, String)>, StoreError>>()?;
        union_of_domains(pairs)
    }

    async fn forget_agent(&self, name: &str, unless_heard_since: Option<Timestamp>) -> Result<Forgetting, StoreError> {
        let mut conn = self.client().await?;
        let tx = conn.transaction().await.map_err(db_err)?;
        let removed =
            tx.execute(query!("agents/forget"), &[&name, &unless_heard_since.map(|t| t.0)]).await.map_err(db_err)?;
        let outcome = if removed == 1 {
            Forgetting::Forgotten
        } else if tx.query_opt(query!("agents/exists"), &[&name]).await.map_err(db_err)?.is_some() {
            Forgetting::Connected
        } else {
            Forgetting::Unknown
        };
        tx.commit().await.map_err(db_err)?;
        Ok(outcome)
    }
}
