//! Outbound webhooks: each client's subscription, the outbox of events that the statement making a
//! job final fills, and the delivery log.

use std::time::Duration;

use async_trait::async_trait;

use super::StoreError;
use crate::jobs::Timestamp;
use crate::webhooks::{AfterAttempt, Attempt, DeliveryFilter, DeliveryRecord, DueDelivery, StoredWebhook};

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

    /// Up to `limit` pending deliveries whose next attempt is due, the longest due first, each
    /// with its client's current webhook.
    async fn due_deliveries(&self, limit: usize) -> Result<Vec<DueDelivery>, StoreError>;

    /// When the earliest pending delivery is due, if any is pending.
    async fn next_delivery_due(&self) -> Result<Option<Timestamp>, StoreError>;

    /// Records what happened to a due delivery in one transaction: the attempt made (if one was),
    /// the body (kept from the first attempt on, so retries send the same bytes) and what follows.
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
