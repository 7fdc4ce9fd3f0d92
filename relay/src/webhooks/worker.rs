//! The delivery worker: sends due deliveries, records every attempt, schedules retries.
//!
//! It runs in the relay for as long as the relay runs. It wakes when a job changes (in-process
//! signal, [`crate::jobs::events`]), when the next retry is due, and at least every
//! `webhooks.poll_seconds`. The outbox is in the store, so a delivery pending when the relay stops
//! is picked up again when it starts; one cut off mid-request is sent again (receivers dedupe by
//! event id). With several replicas, each claims the deliveries it sends
//! ([`crate::store::WebhookStore::claim_deliveries`]): one replica sends a delivery, and another
//! takes it over only once the claim has expired (its replica died mid-attempt).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng as _;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::signature::{self, EVENT_HEADER, EVENT_ID_HEADER, SIGNATURE_HEADER, WebhookSecret};
use super::{AfterAttempt, Attempt, DueDelivery, StoredWebhook, WebhookUrl, secret_context};
use crate::config::WebhooksConfig;
use crate::jobs::Timestamp;
use crate::seal::Sealer;
use crate::store::{Store, StoreError};

/// Header with the attempt number (1 for the first).
pub const ATTEMPT_HEADER: &str = "Pwrelay-Delivery-Attempt";
/// How long a claim on a delivery lasts beyond `webhooks.timeout_seconds`: the attempt and its
/// record fit well within it, so another replica takes a delivery over only when its replica died.
const CLAIM_MARGIN: Duration = Duration::from_secs(30);
/// How often finished deliveries past `webhooks.log_retention_days` are deleted.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// Longest error text kept in the delivery log.
const MAX_ERROR_CHARS: usize = 300;

/// Why the worker could not be built.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The HTTP client cannot be built (`webhooks.ca_file`, the system trust store).
    #[error(transparent)]
    Client(#[from] crate::outbound::OutboundError),
}

/// Sends webhook deliveries. Cheap to clone: every part is shared.
#[derive(Clone, Debug)]
pub struct DeliveryWorker {
    store: Arc<dyn Store>,
    sealer: Arc<Sealer>,
    http: reqwest::Client,
    config: Arc<WebhooksConfig>,
}

impl DeliveryWorker {
    /// Builds the HTTP client: the system's trust store (or only `webhooks.ca_file`), the ring
    /// provider, `webhooks.timeout_seconds`, no redirects.
    pub fn new(store: Arc<dyn Store>, sealer: Arc<Sealer>, config: WebhooksConfig) -> Result<Self, WorkerError> {
        let http = crate::outbound::client(config.ca_file.as_deref(), "webhooks.ca_file", config.timeout)?;
        Ok(Self { store, sealer, http, config: Arc::new(config) })
    }

    /// Delivers until `cancel` fires; `wake` signals that jobs changed (new events may be due).
    pub async fn run(self, mut wake: watch::Receiver<u64>, cancel: CancellationToken) {
        let mut pruned_at: Option<Instant> = None;
        let mut wake_open = true;
        loop {
            if pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_INTERVAL) {
                pruned_at = Some(Instant::now());
                match self.store.prune_deliveries(self.config.log_retention).await {
                    Ok(0) => {}
                    Ok(pruned) => tracing::info!(pruned, "old webhook deliveries removed from the delivery log"),
                    Err(error) => tracing::error!(%error, "pruning the webhook delivery log failed"),
                }
            }
            let pause = match self.deliver_due(&cancel).await {
                Ok(()) => self.pause_until_next_due().await,
                Err(error) => {
                    tracing::error!(%error, "webhook deliveries cannot be read from the store");
                    self.config.poll
                }
            };
            tokio::select! {
                () = cancel.cancelled() => break,
                changed = wake.changed(), if wake_open => wake_open = changed.is_ok(),
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Makes one attempt at every delivery that is due now, up to `webhooks.concurrency` at once.
    /// Each round claims only as many as it sends at once, so a claim is held for one attempt
    /// (at most `webhooks.timeout_seconds`) and deliveries spread over the replicas.
    pub async fn deliver_due(&self, cancel: &CancellationToken) -> Result<(), StoreError> {
        let batch = self.config.concurrency.max(1);
        let lease = self.config.timeout + CLAIM_MARGIN;
        loop {
            let due = self.store.claim_deliveries(batch, lease).await?;
            let full = due.len() == batch;
            let mut in_flight = JoinSet::new();
            for delivery in due {
                let worker = self.clone();
                in_flight.spawn(async move { worker.deliver(delivery).await });
            }
            while !in_flight.is_empty() {
                join_one(&mut in_flight).await;
            }
            if !full || cancel.is_cancelled() {
                return Ok(());
            }
        }
    }

    async fn pause_until_next_due(&self) -> Duration {
        match self.store.next_delivery_due().await {
            Ok(Some(at)) => {
                let wait = u64::try_from(at.0 - Timestamp::now().0).unwrap_or(0);
                Duration::from_millis(wait).clamp(Duration::from_millis(10), self.config.poll)
            }
            Ok(None) => self.config.poll,
            Err(error) => {
                tracing::error!(%error, "webhook deliveries cannot be read from the store");
                self.config.poll
            }
        }
    }

    /// One attempt at one delivery, recorded with what follows it.
    async fn deliver(&self, due: DueDelivery) -> Result<(), StoreError> {
        let Some(webhook) = &due.webhook else {
            tracing::warn!(event_id = %due.event_id, client = %due.client, "webhook removed; delivery given up");
            let reason = "the API client's webhook was removed before the event was delivered".to_owned();
            return self.store.record_delivery(&due.event_id, None, None, AfterAttempt::GiveUp(reason)).await;
        };
        let payload = match &due.payload {
            Some(payload) => payload.clone(),
            None => match self.store.job(due.job_id).await? {
                Some(job) => serde_json::json!({
                    "event_id": due.event_id,
                    "event": due.event,
                    "created_at": due.created_at,
                    "job": job,
                })
                .to_string(),
                None => {
                    let reason = "the job is no longer in the store".to_owned();
                    return self.store.record_delivery(&due.event_id, None, None, AfterAttempt::GiveUp(reason)).await;
                }
            },
        };
        let number = due.attempts + 1;
        let at = Timestamp::now();
        let started = Instant::now();
        let answer = self.send(&due, webhook, number, &payload).await;
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (status, error) = match answer {
            Ok(status) if (200..300).contains(&status) => (Some(status), None),
            Ok(status) => (Some(status), Some(format!("the receiver answered HTTP {status}"))),
            Err(error) => (None, Some(error)),
        };
        let next = match &error {
            None => {
                tracing::info!(event_id = %due.event_id, client = %due.client, job_id = %due.job_id, attempt = number,
                    "webhook delivered");
                AfterAttempt::Delivered
            }
            Some(error) => self.after_failure(&due, number, error),
        };
        let attempt = Attempt { attempt: number, at, duration_ms, status, error };
        self.store.record_delivery(&due.event_id, Some(payload), Some(attempt), next).await
    }

    /// The retry, or giving up when attempts or age are exhausted.
    fn after_failure(&self, due: &DueDelivery, number: u32, error: &str) -> AfterAttempt {
        let retry_at = Timestamp::now().0.saturating_add(millis(retry_delay(number, &self.config)));
        let give_up = if number >= self.config.max_attempts {
            Some(format!("{error}; gave up after {number} attempts (webhooks.max_attempts)"))
        } else if retry_at - due.created_at.0 > millis(self.config.max_age) {
            Some(format!("{error}; gave up: the event is older than webhooks.max_age_hours"))
        } else {
            None
        };
        match give_up {
            Some(reason) => {
                tracing::error!(event_id = %due.event_id, client = %due.client, job_id = %due.job_id,
                    attempt = number, %error, "webhook delivery failed for good");
                AfterAttempt::GiveUp(reason)
            }
            None => {
                tracing::warn!(event_id = %due.event_id, client = %due.client, job_id = %due.job_id,
                    attempt = number, %error, "webhook delivery failed; will retry");
                AfterAttempt::RetryAt(Timestamp(retry_at))
            }
        }
    }

    /// POSTs the signed payload; the receiver's status, or why there was none.
    async fn send(
        &self,
        due: &DueDelivery,
        webhook: &StoredWebhook,
        number: u32,
        payload: &str,
    ) -> Result<u16, String> {
        let url = WebhookUrl::parse(&webhook.url, self.config.dangerous_allow_http).map_err(|e| e.to_string())?;
        let secret = WebhookSecret::from(
            self.sealer.open(&secret_context(&due.client), &webhook.sealed_secret).map_err(|e| e.to_string())?,
        );
        let signature = signature::sign(&secret, Timestamp::now().0.div_euclid(1000), payload.as_bytes());
        let response = self
            .http
            .post(url.url().clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .header(EVENT_ID_HEADER, &due.event_id)
            .header(EVENT_HEADER, due.event.as_str())
            .header(ATTEMPT_HEADER, number)
            .body(payload.to_owned())
            .send()
            .await
            .map_err(describe)?;
        Ok(response.status().as_u16())
    }
}

async fn join_one(in_flight: &mut JoinSet<Result<(), StoreError>>) {
    match in_flight.join_next().await {
        Some(Ok(Ok(()))) | None => {}
        Some(Ok(Err(error))) => tracing::error!(%error, "a webhook attempt could not be recorded"),
        Some(Err(error)) => tracing::error!(%error, "a webhook delivery task failed"),
    }
}

/// A request error with its causes, without the URL (it may carry a receiver's token).
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text =
        if error.is_timeout() { "no answer within webhooks.timeout_seconds".to_owned() } else { error.to_string() };
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.chars().take(MAX_ERROR_CHARS).collect()
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The delay after failed attempt `number` (1-based): `first_retry` doubled per attempt, capped
/// at `max_retry`, with "equal jitter" (half the step plus a random part of up to the other half)
/// so receivers that come back are not hit by every delivery at once.
pub fn retry_delay(number: u32, config: &WebhooksConfig) -> Duration {
    let exponent = number.saturating_sub(1).min(20);
    let step = config.first_retry.saturating_mul(1 << exponent).min(config.max_retry);
    let half = step / 2;
    half + rand::rng().random_range(Duration::ZERO..=half)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> WebhooksConfig {
        WebhooksConfig {
            timeout: Duration::from_secs(10),
            max_attempts: 12,
            max_age: Duration::from_secs(24 * 3600),
            first_retry: Duration::from_secs(10),
            max_retry: Duration::from_secs(3600),
            poll: Duration::from_secs(5),
            concurrency: 8,
            log_retention: Duration::from_secs(30 * 86_400),
            ca_file: None,
            dangerous_allow_http: false,
        }
    }

    #[test]
    fn receivers_are_verified_against_the_system_trust_store_or_only_the_configured_ca() {
        let dir = tempfile::tempdir().expect("dir");
        let store: Arc<dyn Store> =
            Arc::new(crate::store::sqlite::SqliteStore::open(&dir.path().join("relay.db")).expect("store"));
        let sealer =
            Arc::new(Sealer::from_key(&pwrelay_shared::secret::SecretBytes::new(vec![7; 32])).expect("sealer"));
        assert!(DeliveryWorker::new(Arc::clone(&store), Arc::clone(&sealer), config()).is_ok());
        let missing = WebhooksConfig { ca_file: Some(dir.path().join("receiver-ca.pem")), ..config() };
        let error = DeliveryWorker::new(store, sealer, missing).expect_err("no such CA file").to_string();
        assert!(error.starts_with("webhooks.ca_file") && error.contains("receiver-ca.pem"), "{error}");
    }

    #[test]
    fn retries_back_off_exponentially_with_jitter_up_to_the_cap() {
        let config = config();
        for (number, step) in [(1, 10), (2, 20), (3, 40), (6, 320), (9, 2560), (10, 3600), (40, 3600)] {
            let step = Duration::from_secs(step);
            let delay = retry_delay(number, &config);
            assert!(
                delay >= step / 2 && delay <= step,
                "attempt {number}: {delay:?} not within [{:?}, {step:?}]",
                step / 2
            );
        }
        let delays: std::collections::HashSet<_> = (0..20).map(|_| retry_delay(5, &config)).collect();
        assert!(delays.len() > 1, "delays are jittered");
    }
}
