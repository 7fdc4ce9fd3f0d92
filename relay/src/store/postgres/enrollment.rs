//! Enrollment tokens and revocations in PostgreSQL.

use async_trait::async_trait;
use pwrelay_shared::domain::AgentName;

use super::{PostgresStore, db_err, query};
use crate::jobs::Timestamp;
use crate::store::StoreError;
use crate::store::enrollment::{
    EnrollmentStore, NewEnrollmentToken, Revocation, Revoked, StoredEnrollmentToken, TOKEN_KEEP_MS, domains_to_json,
    token_from_row,
};

#[async_trait]
impl EnrollmentStore for PostgresStore {
    async fn add_enrollment_token(&self, token: &NewEnrollmentToken) -> Result<(), StoreError> {
        let domains = domains_to_json(&token.domains)?;
        let mut conn = self.client().await?;
        let tx = conn.transaction().await.map_err(db_err)?;
        tx.execute(query!("enrollment/purge_tokens"), &[&(token.created.0 - TOKEN_KEEP_MS)]).await.map_err(db_err)?;
        tx.execute(
            query!("enrollment/insert_token"),
            &[
                &token.id,
                &token.secret_sha256.as_slice(),
                &token.agent.as_str(),
                &domains,
                &token.created.0,
                &token.expires.0,
            ],
        )
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    async fn enrollment_token(&self, id: &str) -> Result<Option<StoredEnrollmentToken>, StoreError> {
        let conn = self.client().await?;
        let Some(row) = conn.query_opt(query!("enrollment/get_token"), &[&id]).await.map_err(db_err)? else {
            return Ok(None);
        };
        let hash: Vec<u8> = row.try_get(0).map_err(db_err)?;
        let agent: String = row.try_get(1).map_err(db_err)?;
        let domains: String = row.try_get(2).map_err(db_err)?;
        let expires: i64 = row.try_get(3).map_err(db_err)?;
        let used: Option<i64> = row.try_get(4).map_err(db_err)?;
        token_from_row(id, hash, &agent, &domains, expires, used).map(Some)
    }

    async fn use_enrollment_token(
        &self,
        id: &str,
        secret_sha256: &[u8; 32],
        now: Timestamp,
        peer: &str,
    ) -> Result<bool, StoreError> {
        let conn = self.client().await?;
        let used = conn
            .execute(query!("enrollment/use_token"), &[&id, &secret_sha256.as_slice(), &now.0, &peer])
            .await
            .map_err(db_err)?;
        Ok(used == 1)
    }

    async fn revoke_agent(&self, agent: &AgentName, at: Timestamp) -> Result<Revoked, StoreError> {
        let mut conn = self.client().await?;
        let tx = conn.transaction().await.map_err(db_err)?;
        tx.execute(query!("enrollment/revoke_agent"), &[&agent.as_str(), &at.0]).await.map_err(db_err)?;
        let released =
            tx.execute(query!("enrollment/release_leases"), &[&agent.as_str(), &at.0]).await.map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(Revoked { leases_released: usize::try_from(released).unwrap_or(usize::MAX) })
    }

    async fn revocations(&self) -> Result<Vec<Revocation>, StoreError> {
        let conn = self.client().await?;
        let rows = conn.query(query!("enrollment/revocations"), &[]).await.map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok(Revocation {
                    agent: r.try_get(0).map_err(db_err)?,
                    revoked: Timestamp(r.try_get(1).map_err(db_err)?),
                })
            })
            .collect()
    }
}
