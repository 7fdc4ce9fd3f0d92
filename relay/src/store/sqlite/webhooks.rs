//! Webhooks in SQLite (schema v5): `webhooks` (one per API client),
//! `webhook_deliveries` (the outbox, filled by the `jobs_final_webhook` trigger) and
//! `webhook_attempts` (the delivery log).

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteStore, db_err, ms};
use crate::jobs::Timestamp;
use crate::store::webhooks::{encode_events, read_attempt, read_delivery_record, read_due_delivery, read_webhook};
use crate::store::{StoreError, WebhookStore};
use crate::webhooks::{
    AfterAttempt, Attempt, DeliveryFilter, DeliveryRecord, DeliveryState, DueDelivery, StoredWebhook,
};

#[async_trait]
impl WebhookStore for SqliteStore {
    async fn webhook(&self, client: &str) -> Result<Option<StoredWebhook>, StoreError> {
        let client = client.to_owned();
        self.run(move |conn| webhook(conn, &client)).await
    }

    async fn set_webhook(&self, client: &str, webhook: &StoredWebhook) -> Result<bool, StoreError> {
        let (client, webhook) = (client.to_owned(), webhook.clone());
        self.run(move |conn| set_webhook(conn, &client, &webhook)).await
    }

    async fn remove_webhook(&self, client: &str) -> Result<bool, StoreError> {
        let client = client.to_owned();
        self.run(move |conn| remove_webhook(conn, &client)).await
    }

    async fn claim_deliveries(&self, limit: usize, lease: Duration) -> Result<Vec<DueDelivery>, StoreError> {
        let replica = self.replica.as_str().to_owned();
        self.run(move |conn| claim(conn, limit, lease, &replica)).await
    }

    async fn next_delivery_due(&self) -> Result<Option<Timestamp>, StoreError> {
        self.run(|conn| next_due(conn)).await
    }

    async fn record_delivery(
        &self,
        event_id: &str,
        payload: Option<String>,
        attempt: Option<Attempt>,
        next: AfterAttempt,
    ) -> Result<(), StoreError> {
        let (event_id, replica) = (event_id.to_owned(), self.replica.as_str().to_owned());
        self.run(move |conn| record(conn, &event_id, &replica, payload, attempt, next)).await
    }

    async fn deliveries(&self, client: &str, filter: DeliveryFilter) -> Result<Vec<DeliveryRecord>, StoreError> {
        let client = client.to_owned();
        self.run(move |conn| log(conn, &client, filter)).await
    }

    async fn prune_deliveries(&self, older_than: Duration) -> Result<usize, StoreError> {
        self.run(move |conn| prune(conn, older_than)).await
    }
}

fn webhook(conn: &Connection, client: &str) -> Result<Option<StoredWebhook>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT url, events, secret FROM webhooks WHERE client = ?1").map_err(db_err)?;
    let mut rows = stmt.query(params![client]).map_err(db_err)?;
    rows.next().map_err(db_err)?.map(|row| read_webhook(client, row)).transpose()
}

fn set_webhook(conn: &mut Connection, client: &str, webhook: &StoredWebhook) -> Result<bool, StoreError> {
    let events = encode_events(&webhook.events)?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db_err)?;
    let exists = tx
        .query_row("SELECT 1 FROM api_clients WHERE name = ?1", params![client], |_| Ok(()))
        .optional()
        .map_err(db_err)?
        .is_some();
    if exists {
        tx.execute(
            "INSERT INTO webhooks (client, url, events, secret, created_ms, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?5)
             ON CONFLICT (client) DO UPDATE SET url = excluded.url, events = excluded.events,
                 secret = excluded.secret, updated_ms = excluded.updated_ms",
            params![client, webhook.url, events, webhook.sealed_secret, Timestamp::now().0],
        )
        .map_err(db_err)?;
    }
    tx.commit().map_err(db_err)?;
    Ok(exists)
}

fn remove_webhook(conn: &Connection, client: &str) -> Result<bool, StoreError> {
    let removed = conn.execute("DELETE FROM webhooks WHERE client = ?1", params![client]).map_err(db_err)?;
    Ok(removed == 1)
}

fn claim(conn: &mut Connection, limit: usize, lease: Duration, replica: &str) -> Result<Vec<DueDelivery>, StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db_err)?;
    let now = Timestamp::now().0;
    let claimed = tx
        .execute(
            "UPDATE webhook_deliveries SET claimed_by = ?3, claimed_until_ms = ?4
             WHERE id IN (SELECT id FROM webhook_deliveries
                           WHERE state = 'pending' AND next_attempt_ms <= ?1
                             AND (claimed_until_ms IS NULL OR claimed_until_ms <= ?1)
                           ORDER BY next_attempt_ms, created_ms LIMIT ?2)",
            params![now, i64::try_from(limit).unwrap_or(i64::MAX), replica, now + ms(lease)],
        )
        .map_err(db_err)?;
    let due = if claimed == 0 { Vec::new() } else { claimed_by(&tx, replica, now + ms(lease))? };
    tx.commit().map_err(db_err)?;
    Ok(due)
}

/// The deliveries `replica` just claimed until `until`, with their client's webhook.
fn claimed_by(conn: &Connection, replica: &str, until: i64) -> Result<Vec<DueDelivery>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT d.id, d.client, d.job_id, d.event, d.attempts, d.created_ms, d.payload, w.url, w.events, w.secret
             FROM webhook_deliveries d LEFT JOIN webhooks w ON w.client = d.client
             WHERE d.state = 'pending' AND d.claimed_by = ?1 AND d.claimed_until_ms = ?2
             ORDER BY d.next_attempt_ms, d.created_ms",
        )
        .map_err(db_err)?;
    let mut rows = stmt.query(params![replica, until]).map_err(db_err)?;
    let mut due = Vec::new();
    while let Some(row) = rows.next().map_err(db_err)? {
        due.push(read_due_delivery(row)?);
    }
    Ok(due)
}

fn next_due(conn: &Connection) -> Result<Option<Timestamp>, StoreError> {
    let next: Option<i64> = conn
        .query_row(
            "SELECT min(max(next_attempt_ms, coalesce(claimed_until_ms, 0))) FROM webhook_deliveries
             WHERE state = 'pending'",
            [],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    Ok(next.map(Timestamp))
}

fn record(
    conn: &mut Connection,
    event_id: &str,
    replica: &str,
    payload: Option<String>,
    attempt: Option<Attempt>,
    next: AfterAttempt,
) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db_err)?;
    let now = Timestamp::now().0;
    if let Some(attempt) = &attempt {
        tx.execute(
            "INSERT OR REPLACE INTO webhook_attempts (delivery_id, attempt, at_ms, duration_ms, status, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                event_id,
                attempt.attempt,
                attempt.at.0,
                i64::try_from(attempt.duration_ms).unwrap_or(i64::MAX),
                attempt.status,
                attempt.error
            ],
        )
        .map_err(db_err)?;
    }
    let attempts = attempt.as_ref().map(|a| a.attempt);
    let last_error = attempt.as_ref().and_then(|a| a.error.clone());
    let (state, next_ms, finished, error) = match next {
        AfterAttempt::Delivered => (DeliveryState::Delivered, None, Some(now), None),
        AfterAttempt::RetryAt(at) => (DeliveryState::Pending, Some(at.0), None, last_error),
        AfterAttempt::GiveUp(reason) => (DeliveryState::Failed, None, Some(now), Some(reason)),
    };
    tx.execute(
        "UPDATE webhook_deliveries SET state = ?2, attempts = coalesce(?3, attempts),
             next_attempt_ms = coalesce(?4, next_attempt_ms), finished_ms = ?5, error = ?6,
             payload = coalesce(payload, ?7), claimed_until_ms = NULL
         WHERE id = ?1 AND state = 'pending' AND claimed_by = ?8",
        params![event_id, state.as_str(), attempts, next_ms, finished, error, payload, replica],
    )
    .map_err(db_err)?;
    tx.commit().map_err(db_err)
}

fn log(conn: &Connection, client: &str, filter: DeliveryFilter) -> Result<Vec<DeliveryRecord>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, event, job_id, state, created_ms, next_attempt_ms, finished_ms, error
             FROM webhook_deliveries WHERE client = ?1 AND (?2 IS NULL OR state = ?2)
             ORDER BY created_ms DESC, id DESC LIMIT ?3",
        )
        .map_err(db_err)?;
    let mut rows = stmt
        .query(params![
            client,
            filter.state.map(DeliveryState::as_str),
            i64::try_from(filter.limit).unwrap_or(i64::MAX)
        ])
        .map_err(db_err)?;
    let mut records = Vec::new();
    while let Some(row) = rows.next().map_err(db_err)? {
        records.push(read_delivery_record(row)?);
    }
    drop(rows);
    drop(stmt);
    let mut attempts = conn
        .prepare_cached(
            "SELECT delivery_id, attempt, at_ms, duration_ms, status, error FROM webhook_attempts
             WHERE delivery_id = ?1 ORDER BY attempt",
        )
        .map_err(db_err)?;
    for record in &mut records {
        let mut rows = attempts.query(params![record.event_id]).map_err(db_err)?;
        while let Some(row) = rows.next().map_err(db_err)? {
            record.attempts.push(read_attempt(row)?.1);
        }
    }
    Ok(records)
}

fn prune(conn: &mut Connection, older_than: Duration) -> Result<usize, StoreError> {
    let cutoff = Timestamp::now().0 - ms(older_than);
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db_err)?;
    // Attempts go with their delivery (ON DELETE CASCADE).
    let pruned = tx
        .execute(
            "DELETE FROM webhook_deliveries WHERE state IN ('delivered', 'failed') AND finished_ms < ?1",
            params![cutoff],
        )
        .map_err(db_err)?;
    tx.commit().map_err(db_err)?;
    Ok(pruned)
}
