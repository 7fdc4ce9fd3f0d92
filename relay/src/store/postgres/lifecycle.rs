//! New-hire requests and their one-time links in PostgreSQL (`lifecycle_requests`).

use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use super::{PostgresStore, count, db_err, query};
use crate::jobs::{JobId, Timestamp};
use crate::store::lifecycle::{
    CalloutInsertion, LifecycleRequest, LifecycleStore, LinkClaim, LinkState, NewRequest, ResumeResult, Stage,
    constant_time_eq, link_request_verdict, read_request,
};
use crate::store::{StoreError, replicas};

#[async_trait]
impl LifecycleStore for PostgresStore {
    async fn insert_callout(&self, request: NewRequest) -> Result<CalloutInsertion, StoreError> {
        let c = &request.callout;
        let id = c.task_processing_result_id.to_string();
        let mut conn = self.client().await?;
        let tx = conn.transaction().await.map_err(db_err)?;
        let inserted = tx
            .execute(
                query!("lifecycle/insert_callout"),
                &[
                    &id,
                    &request.tenant_id,
                    &c.workflow_id.to_string(),
                    &c.task_id.to_string(),
                    &c.subject_id.to_string(),
                    &c.display_name,
                    &c.workflow_name,
                    &request.body_sha256.as_slice(),
                    &Timestamp::now().0,
                ],
            )
            .await
            .map_err(db_err)?;
        if inserted == 1 {
            tx.commit().await.map_err(db_err)?;
            return Ok(CalloutInsertion::Created);
        }
        let row = tx.query_one(query!("lifecycle/callout_hash"), &[&id]).await.map_err(db_err)?;
        let hash: Vec<u8> = row.try_get(0).map_err(db_err)?;
        Ok(if hash == request.body_sha256 { CalloutInsertion::Repeated } else { CalloutInsertion::Conflict })
    }

    async fn claim_requests(&self, lease: Duration, limit: usize) -> Result<Vec<LifecycleRequest>, StoreError> {
        let conn = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let now = Timestamp::now().0;
        let until = now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
        let rows = conn
            .query(
                query!("lifecycle/claim"),
                &[&now, &self.replica.as_str(), &until, &limit, &replicas::alive_since(now)],
            )
            .await
            .map_err(db_err)?;
        rows.iter().map(read_request).collect()
    }

    async fn request(&self, id: Uuid) -> Result<Option<LifecycleRequest>, StoreError> {
        let conn = self.client().await?;
        conn.query_opt(query!("lifecycle/get"), &[&id.to_string()])
            .await
            .map_err(db_err)?
            .as_ref()
            .map(read_request)
            .transpose()
    }

    async fn request_of_job(&self, job: JobId) -> Result<Option<LifecycleRequest>, StoreError> {
        let conn = self.client().await?;
        let row = conn.query_opt(query!("lifecycle/of_job"), &[&job.to_string()]).await.map_err(db_err)?;
        row.as_ref().map(read_request).transpose()
    }

    async fn set_applying(&self, id: Uuid, job: JobId) -> Result<(), StoreError> {
        let conn = self.client().await?;
        conn.execute(query!("lifecycle/set_applying"), &[&id.to_string(), &job.to_string(), &Timestamp::now().0])
            .await
            .map(drop)
            .map_err(db_err)
    }

    async fn postpone(&self, id: Uuid, next_attempt_ms: i64, reason: &str) -> Result<(), StoreError> {
        let conn = self.client().await?;
        conn.execute(query!("lifecycle/postpone"), &[&id.to_string(), &next_attempt_ms, &reason, &Timestamp::now().0])
            .await
            .map(drop)
            .map_err(db_err)
    }

    async fn open_link(
        &self,
        id: Uuid,
        link_id: &str,
        proof_sha256: [u8; 32],
        expires: Timestamp,
    ) -> Result<bool, StoreError> {
        let conn = self.client().await?;
        let opened = conn
            .execute(
                query!("lifecycle/open_link"),
                &[
                    &id.to_string(),
                    &link_id,
                    &proof_sha256.as_slice(),
                    &expires.0,
                    &Timestamp::now().0,
                    &self.replica.as_str(),
                ],
            )
            .await
            .map_err(db_err)?;
        Ok(opened == 1)
    }

    async fn reissue(&self, id: Uuid, reason: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        let replica = self.replica.as_str();
        let mut conn = self.client().await?;
        let tx = conn.transaction().await.map_err(db_err)?;
        if tx.query_opt(query!("lifecycle/lock_for_reissue"), &[&id, &replica]).await.map_err(db_err)?.is_none() {
            return Ok(false);
        }
        tx.execute(query!("lifecycle/erase_ciphertext"), &[&id]).await.map_err(db_err)?;
        let reissued = tx
            .execute(query!("lifecycle/reissue"), &[&id, &replica, &reason, &Timestamp::now().0])
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(reissued == 1)
    }

    async fn set_delivery(&self, id: Uuid, delivery: &str, detail: &str) -> Result<(), StoreError> {
        let conn = self.client().await?;
        conn.execute(query!("lifecycle/set_delivery"), &[&id.to_string(), &delivery, &detail, &Timestamp::now().0])
            .await
            .map(drop)
            .map_err(db_err)
    }

    async fn set_outcome(&self, id: Uuid, completed: bool, reason: &str) -> Result<(), StoreError> {
        let id = id.to_string();
        let mut conn = self.client().await?;
        let tx = conn.transaction().await.map_err(db_err)?;
        if !completed {
            tx.execute(query!("lifecycle/erase_ciphertext"), &[&id]).await.map_err(db_err)?;
        }
        let outcome = if completed { "completed" } else { "failed" };
        tx.execute(query!("lifecycle/set_outcome"), &[&id, &outcome, &reason, &Timestamp::now().0])
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    async fn resume_attempted(&self, id: Uuid, result: ResumeResult) -> Result<(), StoreError> {
        let (stage, next, note) = match result {
            ResumeResult::Done => (Stage::Done, 0, None),
            ResumeResult::Retry { at_ms, reason } => (Stage::Resuming, at_ms, Some(reason)),
            ResumeResult::GiveUp { reason } => (Stage::ResumeFailed, 0, Some(reason)),
        };
        let conn = self.client().await?;
        conn.execute(
            query!("lifecycle/resume_attempted"),
            &[&id.to_string(), &stage.as_str(), &next, &note, &Timestamp::now().0],
        )
        .await
        .map(drop)
        .map_err(db_err)
    }

    async fn view_link(&self, link_id: &str) -> Result<LinkState, StoreError> {
        let conn = self.client().await?;
        let Some(row) = conn.query_opt(query!("lifecycle/view_link"), &[&link_id]).await.map_err(db_err)? else {
            return Ok(LinkState::NotFound);
        };
        let expires: Option<i64> = row.try_get(0).map_err(db_err)?;
        let claimed: Option<i64> = row.try_get(1).map_err(db_err)?;
        let has_secret: Option<bool> = row.try_get(2).map_err(db_err)?;
        let must_change: Option<bool> = row.try_get(3).map_err(db_err)?;
        Ok(match (expires, claimed) {
            (_, Some(_)) => LinkState::Claimed,
            (Some(e), None) if e > Timestamp::now().0 && has_secret == Some(true) => {
                LinkState::Active { expires: Timestamp(e), must_change: must_change.unwrap_or(true) }
            }
            _ => LinkState::Expired,
        })
    }

    async fn claim_link(&self, link_id: &str, proof_sha256: [u8; 32]) -> Result<LinkClaim, StoreError> {
        let mut conn = self.client().await?;
        let tx = conn.transaction().await.map_err(db_err)?;
        let Some(row) = tx.query_opt(query!("lifecycle/lock_link"), &[&link_id]).await.map_err(db_err)? else {
            return Ok(LinkClaim::NotFound);
        };
        let id: String = row.try_get(0).map_err(db_err)?;
        let proof: Option<Vec<u8>> = row.try_get(1).map_err(db_err)?;
        let expires: Option<i64> = row.try_get(2).map_err(db_err)?;
        let claimed: Option<i64> = row.try_get(3).map_err(db_err)?;
        let job_id: Option<String> = row.try_get(4).map_err(db_err)?;
        let sealed: Option<Vec<u8>> = row.try_get(5).map_err(db_err)?;
        if claimed.is_some() {
            return Ok(LinkClaim::AlreadyUsed);
        }
        let now = Timestamp::now().0;
        let (Some(sealed), Some(job_id), true) = (sealed, job_id, expires.is_some_and(|e| e > now)) else {
            return Ok(LinkClaim::Expired);
        };
        if !proof.is_some_and(|p| constant_time_eq(&p, &proof_sha256)) {
            return Ok(LinkClaim::WrongProof);
        }
        tx.execute(query!("lifecycle/erase_ciphertext"), &[&id]).await.map_err(db_err)?;
        tx.execute(query!("lifecycle/mark_claimed"), &[&id, &now]).await.map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        let job_id = job_id.parse().map_err(|_| StoreError::Corrupt { id, reason: "bad job id".into() })?;
        Ok(LinkClaim::Taken { job_id, sealed })
    }

    async fn expire_links(&self) -> Result<usize, StoreError> {
        let mut conn = self.client().await?;
        let tx = conn.transaction().await.map_err(db_err)?;
        if !super::sweep_lock(&tx, super::Sweep::ExpiredLinks).await? {
            return Ok(0);
        }
        let expired =
            count(tx.execute(query!("lifecycle/expire_links"), &[&Timestamp::now().0]).await.map_err(db_err)?);
        tx.commit().await.map_err(db_err)?;
        Ok(expired)
    }

    async fn count_link_request(
        &self,
        link_id: &str,
        limit: u32,
        window: Duration,
    ) -> Result<Result<(), u64>, StoreError> {
        let conn = self.client().await?;
        let now = Timestamp::now().0;
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let Some(row) = conn
            .query_opt(query!("lifecycle/count_link_request"), &[&link_id, &now, &window_ms])
            .await
            .map_err(db_err)?
        else {
            return Ok(Ok(()));
        };
        let start: i64 = row.try_get(0).map_err(db_err)?;
        let requests: i32 = row.try_get(1).map_err(db_err)?;
        Ok(link_request_verdict(start, i64::from(requests), limit, window, now))
    }
}
