//! Webhooks in PostgreSQL: `webhooks` (one per API client), `webhook_deliveries` (the outbox,
//! filled by the `jobs_final_webhook` trigger) and `webhook_attempts` (the delivery log).

use std::time::Duration;

use async_trait::async_trait;

use super::{PostgresStore, count, db_err, query};
use crate::jobs::Timestamp;
use crate::store::webhooks::{encode_events, read_attempt, read_delivery_record, read_due_delivery, read_webhook};
use crate::store::{StoreError, WebhookStore};
use crate::webhooks::{
    AfterAttempt, Attempt, DeliveryFilter, DeliveryRecord, DeliveryState, DueDelivery, StoredWebhook,
};

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[async_trait]
impl WebhookStore for PostgresStore {
    async fn webhook(&self, client: &str) -> Result<Option<StoredWebhook>, StoreError> {
        let conn = self.client().await?;
        let Some(row) = conn.query_opt(query!("webhooks/get"), &[&client]).await.map_err(db_err)? else {
            return Ok(None);
        };
        read_webhook(client, &row).map(Some)
    }

    async fn set_webhook(&self, client: &str, webhook: &StoredWebhook) -> Result<bool, StoreError> {
        let events = encode_events(&webhook.events)?;
        let conn = self.client().await?;
        let set = conn
            .execute(
                query!("webhooks/set"),
                &[&client, &webhook.url, &events, &webhook.sealed_secret, &Timestamp::now().0],
            )
            .await
            .map_err(db_err)?;
        Ok(set == 1)
    }

    async fn remove_webhook(&self, client: &str) -> Result<bool, StoreError> {
        let conn = self.client().await?;
        Ok(conn.execute(query!("webhooks/remove"), &[&client]).await.map_err(db_err)? == 1)
    }

    async fn claim_deliveries(&self, limit: usize, lease: Duration) -> Result<Vec<DueDelivery>, StoreError> {
        let conn = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let now = Timestamp::now().0;
        let until = now.saturating_add(ms(lease));
        let rows = conn
            .query(query!("webhooks/claim"), &[&now, &limit, &self.replica.as_str(), &until])
            .await
            .map_err(db_err)?;
        rows.iter().map(read_due_delivery).collect()
    }

    async fn next_delivery_due(&self) -> Result<Option<Timestamp>, StoreError> {
        let conn = self.client().await?;
        let row = conn.query_one(query!("webhooks/next_due"), &[]).await.map_err(db_err)?;
        Ok(row.try_get::<_, Option<i64>>(0).map_err(db_err)?.map(Timestamp))
    }

    async fn record_delivery(
        &self,
        event_id: &str,
        payload: Option<String>,
        attempt: Option<Attempt>,
        next: AfterAttempt,
    ) -> Result<(), StoreError> {
        let mut conn = self.client().await?;
        let tx = conn.transaction().await.map_err(db_err)?;
        let now = Timestamp::now().0;
        if let Some(attempt) = &attempt {
            tx.execute(
                query!("webhooks/record_attempt"),
                &[
                    &event_id,
                    &i32::try_from(attempt.attempt).unwrap_or(i32::MAX),
                    &attempt.at.0,
                    &i64::try_from(attempt.duration_ms).unwrap_or(i64::MAX),
                    &attempt.status.map(i32::from),
                    &attempt.error,
                ],
            )
            .await
            .map_err(db_err)?;
        }
        let attempts = attempt.as_ref().map(|a| i32::try_from(a.attempt).unwrap_or(i32::MAX));
        let last_error = attempt.as_ref().and_then(|a| a.error.clone());
        let (state, next_ms, finished, error) = match next {
            AfterAttempt::Delivered => (DeliveryState::Delivered, None, Some(now), None),
            AfterAttempt::RetryAt(at) => (DeliveryState::Pending, Some(at.0), None, last_error),
            AfterAttempt::GiveUp(reason) => (DeliveryState::Failed, None, Some(now), Some(reason)),
        };
        tx.execute(
            query!("webhooks/record"),
            &[&event_id, &state.as_str(), &attempts, &next_ms, &finished, &error, &payload, &self.replica.as_str()],
        )
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    async fn deliveries(&self, client: &str, filter: DeliveryFilter) -> Result<Vec<DeliveryRecord>, StoreError> {
        let conn = self.client().await?;
        let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX);
        let rows = conn
            .query(query!("webhooks/log"), &[&client, &filter.state.map(DeliveryState::as_str), &limit])
            .await
            .map_err(db_err)?;
        let mut records = rows.iter().map(read_delivery_record).collect::<Result<Vec<_>, _>>()?;
        let ids: Vec<&str> = records.iter().map(|r| r.event_id.as_str()).collect();
        let attempts = conn.query(query!("webhooks/attempts"), &[&ids]).await.map_err(db_err)?;
        for row in attempts {
            let (delivery, attempt) = read_attempt(&row)?;
            if let Some(record) = records.iter_mut().find(|r| r.event_id == delivery) {
                record.attempts.push(attempt);
            }
        }
        Ok(records)
    }

    async fn prune_deliveries(&self, older_than: Duration) -> Result<usize, StoreError> {
        let mut conn = self.client().await?;
        let tx = conn.transaction().await.map_err(db_err)?;
        if !super::sweep_lock(&tx, super::Sweep::WebhookLog).await? {
            return Ok(0);
        }
        let cutoff = Timestamp::now().0.saturating_sub(ms(older_than));
        let pruned = count(tx.execute(query!("webhooks/prune"), &[&cutoff]).await.map_err(db_err)?);
        tx.commit().await.map_err(db_err)?;
        Ok(pruned)
    }
}
