//! Outbound webhooks: each client's subscription, the outbox of events that the statement making a
//! job final fills (claimed by one replica at a time for sending), and the delivery log.

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;

use super::StoreError;
use super::columns::{Columns, RowReader};
use crate::jobs::{JobId, Timestamp};
use crate::webhooks::{
    AfterAttempt, Attempt, DeliveryFilter, DeliveryRecord, DeliveryState, DueDelivery, StoredWebhook, WebhookEvent,
};

/// Webhook subscriptions, their outbox and delivery log.
#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    /// A client's webhook, with its sealed signing secret.
    async fn webhook(&self, client: &str) -> Result<Option<StoredWebhook>, StoreError>;

    /// Creates or replaces a client's webhook. False when no such client. Every job of the client
    /// that becomes final from then on gets a delivery, in the transaction that makes it final.
    async fn set_webhook(&self, client: &str, webhook: &StoredWebhook) -> Result<bool, StoreError>;

    /// Removes a client's webhook (its pending deliveries fail at their next attempt). False when
    /// it had none. Revoking a client removes its webhook too.
    async fn remove_webhook(&self, client: &str) -> Result<bool, StoreError>;

    /// Claims for this replica, for `lease`, up to `limit` pending deliveries whose next attempt
    /// is due and that no replica holds, the longest due first, each with its client's current
    /// webhook. Replicas claiming at once get different deliveries; one whose claim expired (its
    /// replica died mid-attempt) is claimed again, so a delivery is sent at least once.
    async fn claim_deliveries(&self, limit: usize, lease: Duration) -> Result<Vec<DueDelivery>, StoreError>;

    /// When the earliest pending delivery is due (or its claim by another replica expires), if
    /// any is pending.
    async fn next_delivery_due(&self) -> Result<Option<Timestamp>, StoreError>;

    /// Records what happened to a claimed delivery in one transaction: the attempt made (if one
    /// was), the body (kept from the first attempt on, so retries send the same bytes) and what
    /// follows, and lets the claim go. What follows changes nothing unless this replica claimed
    /// the delivery last (one whose expired claim another replica took over is refused).
    async fn record_delivery(
        &self,
        event_id: &str,
        payload: Option<String>,
        attempt: Option<Attempt>,
        next: AfterAttempt,
    ) -> Result<(), StoreError>;

    /// A client's delivery log, newest first, with every attempt.
    async fn deliveries(&self, client: &str, filter: DeliveryFilter) -> Result<Vec<DeliveryRecord>, StoreError>;

    /// Deletes delivered and failed deliveries (and their attempts) that ended before
    /// `older_than` ago. Returns how many.
    async fn prune_deliveries(&self, older_than: Duration) -> Result<usize, StoreError>;
}

// What every backend stores the same way: the events as a JSON array of names.

pub(super) fn encode_events(events: &BTreeSet<WebhookEvent>) -> Result<String, StoreError> {
    serde_json::to_string(events).map_err(|e| StoreError::Database(e.to_string()))
}

fn decode_events(id: &str, json: &str) -> Result<BTreeSet<WebhookEvent>, StoreError> {
    let corrupt = || StoreError::Corrupt { id: id.to_owned(), reason: "bad webhook events".into() };
    let names: Vec<String> = serde_json::from_str(json).map_err(|_| corrupt())?;
    names.iter().map(|name| WebhookEvent::parse(name).ok_or_else(corrupt)).collect()
}

/// Reads a client's webhook selected as `url, events, secret`.
pub(super) fn read_webhook(client: &str, row: &(impl Columns + ?Sized)) -> Result<StoredWebhook, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt { id: client.to_owned(), reason: format!("missing webhook {what}") };
    Ok(StoredWebhook {
        url: row.text(0)?.ok_or_else(|| corrupt("url"))?,
        events: decode_events(client, &row.text(1)?.ok_or_else(|| corrupt("events"))?)?,
        sealed_secret: row.bytes(2)?.ok_or_else(|| corrupt("secret"))?,
    })
}

/// Reads a claimed delivery selected as `d.id, d.client, d.job_id, d.event, d.attempts,
/// d.created_ms, d.payload` and its client's webhook `w.url, w.events, w.secret` (NULL when the
/// client has none).
pub(super) fn read_due_delivery(row: &(impl Columns + ?Sized)) -> Result<DueDelivery, StoreError> {
    let r = RowReader::new(row, 0)?;
    let webhook = match (r.opt_text(7)?, r.opt_text(8)?, r.opt_bytes(9)?) {
        (Some(url), Some(events), Some(sealed_secret)) => {
            Some(StoredWebhook { url, events: decode_events(r.id(), &events)?, sealed_secret })
        }
        _ => None,
    };
    Ok(DueDelivery {
        client: r.text(1, "client")?,
        job_id: r.parsed(2, "job id", |id| id.parse::<JobId>().ok())?,
        event: r.parsed(3, "event", WebhookEvent::parse)?,
        attempts: r.count(4, "attempts")?,
        created_at: Timestamp(r.int(5, "created_ms")?),
        payload: r.opt_text(6)?,
        webhook,
        event_id: r.id().to_owned(),
    })
}

/// Reads a delivery of the log selected as `id, event, job_id, state, created_ms,
/// next_attempt_ms, finished_ms, error`, without its attempts.
pub(super) fn read_delivery_record(row: &(impl Columns + ?Sized)) -> Result<DeliveryRecord, StoreError> {
    let r = RowReader::new(row, 0)?;
    let state = r.parsed(3, "delivery state", DeliveryState::parse)?;
    Ok(DeliveryRecord {
        event: r.parsed(1, "event", WebhookEvent::parse)?,
        job_id: r.parsed(2, "job id", |id| id.parse::<JobId>().ok())?,
        state,
        created_at: Timestamp(r.int(4, "created_ms")?),
        next_attempt_at: if state == DeliveryState::Pending {
            Some(Timestamp(r.int(5, "next_attempt_ms")?))
        } else {
            None
        },
        finished_at: r.opt_int(6)?.map(Timestamp),
        error: r.opt_text(7)?,
        attempts: Vec::new(),
        event_id: r.id().to_owned(),
    })
}

/// Reads an attempt selected as `delivery_id, attempt, at_ms, duration_ms, status, error`;
/// returns its delivery's id with it.
pub(super) fn read_attempt(row: &(impl Columns + ?Sized)) -> Result<(String, Attempt), StoreError> {
    let r = RowReader::new(row, 0)?;
    let attempt = Attempt {
        attempt: r.count(1, "attempt")?,
        at: Timestamp(r.int(2, "at_ms")?),
        duration_ms: u64::try_from(r.int(3, "duration_ms")?).unwrap_or(0),
        status: r.opt_int(4)?.and_then(|status| u16::try_from(status).ok()),
        error: r.opt_text(5)?,
    };
    Ok((r.id().to_owned(), attempt))
}
