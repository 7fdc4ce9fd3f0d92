//! Outbound webhooks: each client's subscription, the outbox of events that the statement making a
//! job final fills (claimed by one replica at a time for sending), and the delivery log.

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;

use super::StoreError;
use crate::jobs::{JobId, Timestamp};
use crate::webhooks::{
    AfterAttempt, Attempt, DeliveryFilter, DeliveryRecord, DueDelivery, StoredWebhook, WebhookEvent,
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

pub(super) fn decode_events(id: &str, json: &str) -> Result<BTreeSet<WebhookEvent>, StoreError> {
    let corrupt = || StoreError::Corrupt { id: id.to_owned(), reason: "bad webhook events".into() };
    let names: Vec<String> = serde_json::from_str(json).map_err(|_| corrupt())?;
    names.iter().map(|name| WebhookEvent::parse(name).ok_or_else(corrupt)).collect()
}

pub(super) fn parse_event(id: &str, text: &str) -> Result<WebhookEvent, StoreError> {
    WebhookEvent::parse(text).ok_or_else(|| StoreError::Corrupt { id: id.to_owned(), reason: "unknown event".into() })
}

pub(super) fn parse_job_id(id: &str, text: &str) -> Result<JobId, StoreError> {
    text.parse().map_err(|_| StoreError::Corrupt { id: id.to_owned(), reason: "bad job id".into() })
}
