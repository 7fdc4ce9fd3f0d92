//! Webhooks in SQLite (schema v5): `webhooks` (one per API client),
//! `webhook_deliveries` (the outbox, filled by the `jobs_final_webhook` trigger) and
//! `webhook_attempts` (the delivery log).

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteStore, db_err, ms};
use crate::jobs::{JobId, Timestamp};
use crate::store::{StoreError, WebhookStore};
use crate::webhooks::{
    AfterAttempt, Attempt, DeliveryFilter, DeliveryRecord, DeliveryState, DueDelivery, StoredWebhook, WebhookEvent,
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

    async fn due_deliveries(&self, limit: usize) -> Result<Vec<DueDelivery>, StoreError> {
        self.run(move |conn| due(conn, limit)).await
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
        let event_id = event_id.to_owned();
        self.run(move |conn| record(conn, &event_id, payload, attempt, next)).await
    }

    async fn deliveries(&self, client: &str, filter: DeliveryFilter) -> Result<Vec<DeliveryRecord>, StoreError> {
        let client = client.to_owned();
        self.run(move |conn| log(conn, &client, filter)).await
    }

    async fn prune_deliveries(&self, older_than: Duration) -> Result<usize, StoreError> {
        self.run(move |conn| prune(conn, older_than)).await
    }
}

fn encode_events(events: &BTreeSet<WebhookEvent>) -> Result<String, StoreError> {
    serde_json::to_string(events).map_err(|e| StoreError::Database(e.to_string()))
}

fn decode_events(id: &str, json: &str) -> Result<BTreeSet<WebhookEvent>, StoreError> {
    let corrupt = || StoreError::Corrupt { id: id.to_owned(), reason: "bad webhook events".into() };
    let names: Vec<String> = serde_json::from_str(json).map_err(|_| corrupt())?;
    names.iter().map(|name| WebhookEvent::parse(name).ok_or_else(corrupt)).collect()
}

fn parse_event(id: &str, text: &str) -> Result<WebhookEvent, StoreError> {
    WebhookEvent::parse(text).ok_or_else(|| StoreError::Corrupt { id: id.to_owned(), reason: "unknown event".into() })
}

fn parse_job_id(id: &str, text: &str) -> Result<JobId, StoreError> {
    text.parse().map_err(|_| StoreError::Corrupt { id: id.to_owned(), reason: "bad job id".into() })
}

fn webhook(conn: &Connection, client: &str) -> Result<Option<StoredWebhook>, StoreError> {
    let row: Option<(String, String, Vec<u8>)> = conn
        .query_row("SELECT url, events, secret FROM webhooks WHERE client = ?1", params![client], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()
        .map_err(db_err)?;
    row.map(|(url, events, sealed_secret)| {
        Ok(StoredWebhook { url, events: decode_events(client, &events)?, sealed_secret })
    })
    .transpose()
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

fn due(conn: &Connection, limit: usize) -> Result<Vec<DueDelivery>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT d.id, d.client, d.job_id, d.event, d.attempts, d.created_ms, d.payload, w.url, w.events, w.secret
             FROM webhook_deliveries d LEFT JOIN webhooks w ON w.client = d.client
             WHERE d.state = 'pending' AND d.next_attempt_ms <= ?1
             ORDER BY d.next_attempt_ms, d.created_ms LIMIT ?2",
        )
        .map_err(db_err)?;
    let mut rows = stmt.query(params![Timestamp::now().0, i64::try_from(limit).unwrap_or(i64::MAX)]).map_err(db_err)?;
    let mut due = Vec::new();
    while let Some(row) = rows.next().map_err(db_err)? {
        let id: String = row.get(0).map_err(db_err)?;
        let webhook = match (
            row.get::<_, Option<String>>(7).map_err(db_err)?,
            row.get::<_, Option<String>>(8).map_err(db_err)?,
            row.get::<_, Option<Vec<u8>>>(9).map_err(db_err)?,
        ) {
            (Some(url), Some(events), Some(sealed_secret)) => {
                Some(StoredWebhook { url, events: decode_events(&id, &events)?, sealed_secret })
            }
            _ => None,
        };
        due.push(DueDelivery {
            client: row.get(1).map_err(db_err)?,
            job_id: parse_job_id(&id, &row.get::<_, String>(2).map_err(db_err)?)?,
            event: parse_event(&id, &row.get::<_, String>(3).map_err(db_err)?)?,
            attempts: row.get(4).map_err(db_err)?,
            created_at: Timestamp(row.get(5).map_err(db_err)?),
            payload: row.get(6).map_err(db_err)?,
            webhook,
            event_id: id,
        });
    }
    Ok(due)
}

fn next_due(conn: &Connection) -> Result<Option<Timestamp>, StoreError> {
    let next: Option<i64> = conn
        .query_row("SELECT min(next_attempt_ms) FROM webhook_deliveries WHERE state = 'pending'", [], |r| r.get(0))
        .map_err(db_err)?;
    Ok(next.map(Timestamp))
}

fn record(
    conn: &mut Connection,
    event_id: &str,
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
             payload = coalesce(payload, ?7)
         WHERE id = ?1 AND state = 'pending'",
        params![event_id, state.as_str(), attempts, next_ms, finished, error, payload],
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
        let id: String = row.get(0).map_err(db_err)?;
        let state = DeliveryState::parse(&row.get::<_, String>(3).map_err(db_err)?)
            .ok_or_else(|| StoreError::Corrupt { id: id.clone(), reason: "unknown delivery state".into() })?;
        records.push(DeliveryRecord {
            event: parse_event(&id, &row.get::<_, String>(1).map_err(db_err)?)?,
            job_id: parse_job_id(&id, &row.get::<_, String>(2).map_err(db_err)?)?,
            state,
            created_at: Timestamp(row.get(4).map_err(db_err)?),
            next_attempt_at: (state == DeliveryState::Pending)
                .then(|| row.get::<_, i64>(5).map(Timestamp))
                .transpose()
                .map_err(db_err)?,
            finished_at: row.get::<_, Option<i64>>(6).map_err(db_err)?.map(Timestamp),
            error: row.get(7).map_err(db_err)?,
            attempts: Vec::new(),
            event_id: id,
        });
    }
    drop(rows);
    drop(stmt);
    let mut attempts = conn
        .prepare_cached(
            "SELECT attempt, at_ms, duration_ms, status, error FROM webhook_attempts
             WHERE delivery_id = ?1 ORDER BY attempt",
        )
        .map_err(db_err)?;
    for record in &mut records {
        let mut rows = attempts.query(params![record.event_id]).map_err(db_err)?;
        while let Some(row) = rows.next().map_err(db_err)? {
            record.attempts.push(Attempt {
                attempt: row.get(0).map_err(db_err)?,
                at: Timestamp(row.get(1).map_err(db_err)?),
                duration_ms: u64::try_from(row.get::<_, i64>(2).map_err(db_err)?).unwrap_or(0),
                status: row.get(3).map_err(db_err)?,
                error: row.get(4).map_err(db_err)?,
            });
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use pwrelay_shared::domain::DomainName;

    use super::super::SqliteStore;
    use crate::jobs::{JobId, Timestamp};
    use crate::jobs::{JobKind, JobOptions, JobSuccess, NewJob, Outcome, Target};
    use crate::store::{ClaimPolicy, ClientStore as _, Completion, JobStore as _, Scopes, WebhookStore as _};
    use crate::webhooks::{AfterAttempt, Attempt, DeliveryFilter, DeliveryState, StoredWebhook, WebhookEvent};

    fn job(client: &str, kind: JobKind, parent: Option<JobId>) -> NewJob {
        NewJob {
            id: JobId::generate(),
            kind,
            domain: DomainName::parse("a.test").expect("domain"),
            target: Target::Upn("a@a.test".into()),
            options: JobOptions::default(),
            client: client.into(),
            sealed_secret: None,
            generate: None,
            recipient_key: None,
            parent_id: parent,
        }
    }

    fn hook(events: &[WebhookEvent]) -> StoredWebhook {
        StoredWebhook {
            url: "https://siem.example.com/hooks".into(),
            events: events.iter().copied().collect(),
            sealed_secret: vec![1, 2, 3],
        }
    }

    async fn store_with_client() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("dir");
        let store = SqliteStore::open(&dir.path().join("relay.db")).expect("open");
        store.add_client("pam", [1; 32], &Scopes::default()).await.expect("client");
        store.add_client("other", [2; 32], &Scopes::default()).await.expect("client");
        (dir, store)
    }

    fn policy() -> ClaimPolicy {
        ClaimPolicy {
            lease: Duration::from_secs(60),
            write_timeout: Duration::from_secs(15),
            max_attempts: 3,
            time_to_live: Duration::from_secs(3600),
        }
    }

    fn succeeded() -> Outcome {
        Outcome::Succeeded(JobSuccess { account_dn: "CN=a".into(), ..JobSuccess::default() }, None)
    }

    #[tokio::test]
    async fn a_job_becoming_final_enqueues_one_delivery_for_its_subscribed_client() {
        let (_dir, store) = store_with_client().await;
        assert!(store.set_webhook("pam", &hook(&WebhookEvent::ALL)).await.expect("set"));
        assert!(!store.set_webhook("nobody", &hook(&WebhookEvent::ALL)).await.expect("set"), "no such client");
        let (done, cancelled, unsubscribed) = (
            job("pam", JobKind::SetPassword, None),
            job("pam", JobKind::Verify, None),
            job("other", JobKind::SetPassword, None),
        );
        let (done_id, cancelled_id) = (done.id, cancelled.id);
        for j in [done, cancelled, unsubscribed] {
            store.insert_job(j).await.expect("insert");
        }
        assert!(store.due_deliveries(10).await.expect("due").is_empty(), "nothing is final yet");
        store.claim(&[DomainName::parse("a.test").expect("d")], "h", "agent", 1, policy()).await.expect("claim");
        assert_eq!(store.complete(done_id, "h", 1, succeeded()).await.expect("complete"), Completion::Finished);
        assert_eq!(store.complete(done_id, "h", 1, succeeded()).await.expect("again"), Completion::Duplicate);
        store.cancel(cancelled_id, "pam").await.expect("cancel");
        let due = store.due_deliveries(10).await.expect("due");
        let mut events: Vec<_> = due.iter().map(|d| (d.job_id, d.event)).collect();
        events.sort();
        let mut expected = vec![(done_id, WebhookEvent::JobSucceeded), (cancelled_id, WebhookEvent::JobFailed)];
        expected.sort();
        assert_eq!(events, expected, "one delivery per final job of the subscribed client");
        assert!(due.iter().all(|d| d.client == "pam" && d.attempts == 0 && d.payload.is_none()));
        assert!(due.iter().all(|d| d.event_id.starts_with("evt_") && d.event_id.len() == 36));
        assert_ne!(due[0].event_id, due[1].event_id);
        assert_eq!(due[0].webhook.as_ref().map(|w| w.url.as_str()), Some("https://siem.example.com/hooks"));
    }

    #[tokio::test]
    async fn only_subscribed_events_are_enqueued_and_expiry_and_batches_count() {
        let (_dir, store) = store_with_client().await;
        store.set_webhook("pam", &hook(&[WebhookEvent::JobSucceeded])).await.expect("set");
        let cancelled = job("pam", JobKind::SetPassword, None);
        let cancelled_id = cancelled.id;
        store.insert_job(cancelled).await.expect("insert");
        store.cancel(cancelled_id, "pam").await.expect("cancel");
        assert!(store.due_deliveries(10).await.expect("due").is_empty(), "job.failed is not subscribed");

        store.set_webhook("pam", &hook(&WebhookEvent::ALL)).await.expect("replace");
        let batch = job("pam", JobKind::ReconcileBatch, None);
        let children = [job("pam", JobKind::Reconcile, Some(batch.id)), job("pam", JobKind::Reconcile, Some(batch.id))];
        let batch_id = batch.id;
        let jobs: Vec<NewJob> = std::iter::once(batch).chain(children).collect();
        store.insert_jobs_once(jobs, None).await.expect("insert");
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(
            store.expire_overdue(ClaimPolicy { time_to_live: Duration::ZERO, ..policy() }).await.expect("expire"),
            2
        );
        let due = store.due_deliveries(10).await.expect("due");
        assert_eq!(due.len(), 3, "both members and the settled batch: {due:?}");
        assert!(due.iter().any(|d| d.job_id == batch_id && d.event == WebhookEvent::JobFailed));
    }

    #[tokio::test]
    async fn attempts_are_logged_retries_wait_and_the_first_body_is_kept() {
        let (_dir, store) = store_with_client().await;
        store.set_webhook("pam", &hook(&WebhookEvent::ALL)).await.expect("set");
        let j = job("pam", JobKind::SetPassword, None);
        let id = j.id;
        store.insert_job(j).await.expect("insert");
        store.cancel(id, "pam").await.expect("cancel");
        let event_id = store.due_deliveries(10).await.expect("due")[0].event_id.clone();
        let attempt = |n: u32, status: u16| Attempt {
            attempt: n,
            at: Timestamp::now(),
            duration_ms: 3,
            status: Some(status),
            error: (status >= 300).then(|| format!("the receiver answered HTTP {status}")),
        };
        let later = Timestamp(Timestamp::now().0 + 60_000);
        store
            .record_delivery(&event_id, Some("first".into()), Some(attempt(1, 500)), AfterAttempt::RetryAt(later))
            .await
            .expect("record");
        assert!(store.due_deliveries(10).await.expect("due").is_empty(), "the retry is not due yet");
        assert_eq!(store.next_delivery_due().await.expect("next"), Some(later));
        store
            .record_delivery(&event_id, Some("second".into()), Some(attempt(2, 204)), AfterAttempt::Delivered)
            .await
            .expect("record");
        assert_eq!(store.next_delivery_due().await.expect("next"), None);
        let log = store.deliveries("pam", DeliveryFilter { state: None, limit: 10 }).await.expect("log");
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].state, DeliveryState::Delivered);
        assert_eq!(log[0].attempts.iter().map(|a| a.status).collect::<Vec<_>>(), [Some(500), Some(204)]);
        assert!(log[0].finished_at.is_some() && log[0].next_attempt_at.is_none());
        let payload: String = store
            .run(move |conn| {
                conn.query_row("SELECT payload FROM webhook_deliveries WHERE id = ?1", [event_id], |r| r.get(0))
                    .map_err(super::db_err)
            })
            .await
            .expect("payload");
        assert_eq!(payload, "first", "retries send the body of the first attempt");
        assert!(store.deliveries("other", DeliveryFilter { state: None, limit: 10 }).await.expect("log").is_empty());
        assert_eq!(store.prune_deliveries(Duration::from_secs(3600)).await.expect("prune"), 0);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(store.prune_deliveries(Duration::ZERO).await.expect("prune"), 1);
    }

    #[tokio::test]
    async fn revoking_a_client_removes_its_webhook_and_pending_deliveries_lose_it() {
        let (_dir, store) = store_with_client().await;
        store.set_webhook("pam", &hook(&WebhookEvent::ALL)).await.expect("set");
        let j = job("pam", JobKind::SetPassword, None);
        let id = j.id;
        store.insert_job(j).await.expect("insert");
        store.cancel(id, "pam").await.expect("cancel");
        assert!(store.revoke_client("pam").await.expect("revoke"));
        assert_eq!(store.webhook("pam").await.expect("read"), None);
        let due = store.due_deliveries(10).await.expect("due");
        assert_eq!(due.len(), 1);
        assert!(due[0].webhook.is_none());
        assert!(!store.remove_webhook("pam").await.expect("remove"), "already gone");
    }
}
