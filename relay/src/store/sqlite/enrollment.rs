//! Enrollment tokens and revocations in SQLite.

use async_trait::async_trait;
use pwrelay_shared::domain::AgentName;
use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, db_err};
use crate::jobs::Timestamp;
use crate::store::StoreError;
use crate::store::enrollment::{
    EnrollmentStore, NewEnrollmentToken, Revocation, Revoked, StoredEnrollmentToken, TOKEN_KEEP_MS, domains_to_json,
    token_from_row,
};

#[async_trait]
impl EnrollmentStore for SqliteStore {
    async fn add_enrollment_token(&self, token: &NewEnrollmentToken) -> Result<(), StoreError> {
        let token = token.clone();
        let domains = domains_to_json(&token.domains)?;
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db_err)?;
            tx.execute(
                "DELETE FROM enrollment_tokens WHERE coalesce(used_ms, expires_ms) < ?1",
                params![token.created.0 - TOKEN_KEEP_MS],
            )
            .map_err(db_err)?;
            tx.execute(
                "INSERT INTO enrollment_tokens (id, secret_sha256, agent, domains, created_ms, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    token.id,
                    token.secret_sha256.to_vec(),
                    token.agent.as_str(),
                    domains,
                    token.created.0,
                    token.expires.0
                ],
            )
            .map_err(db_err)?;
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn enrollment_token(&self, id: &str) -> Result<Option<StoredEnrollmentToken>, StoreError> {
        let id = id.to_owned();
        self.run(move |conn| {
            let row = conn
                .query_row(
                    "SELECT secret_sha256, agent, domains, expires_ms, used_ms FROM enrollment_tokens WHERE id = ?1",
                    params![id],
                    |r| {
                        Ok((
                            r.get::<_, Vec<u8>>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, i64>(3)?,
                            r.get::<_, Option<i64>>(4)?,
                        ))
                    },
                )
                .optional()
                .map_err(db_err)?;
            row.map(|(hash, agent, domains, expires, used)| token_from_row(&id, hash, &agent, &domains, expires, used))
                .transpose()
        })
        .await
    }

    async fn use_enrollment_token(
        &self,
        id: &str,
        secret_sha256: &[u8; 32],
        now: Timestamp,
        peer: &str,
    ) -> Result<bool, StoreError> {
        let (id, hash, peer) = (id.to_owned(), secret_sha256.to_vec(), peer.to_owned());
        self.run(move |conn| {
            let used = conn
                .execute(
                    "UPDATE enrollment_tokens SET used_ms = ?3, used_by = ?4
                      WHERE id = ?1 AND secret_sha256 = ?2 AND used_ms IS NULL AND expires_ms > ?3",
                    params![id, hash, now.0, peer],
                )
                .map_err(db_err)?;
            Ok(used == 1)
        })
        .await
    }

    async fn revoke_agent(&self, agent: &AgentName, at: Timestamp) -> Result<Revoked, StoreError> {
        let agent = agent.as_str().to_owned();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db_err)?;
            tx.execute(
                "INSERT INTO agent_revocations (agent, revoked_ms) VALUES (?1, ?2)
                 ON CONFLICT (agent) DO UPDATE SET revoked_ms = max(agent_revocations.revoked_ms, excluded.revoked_ms)",
                params![agent, at.0],
            )
            .map_err(db_err)?;
            // The lease ends now; the job is claimable once the write timeout has passed too,
            // as for any agent that went away mid-write. The agent's holders are `NAME#instance`:
            // the range from `NAME#` to `NAME$` ('$' follows '#'), a seek of `jobs_leased`.
            let leases_released = tx
                .execute(
                    "UPDATE jobs SET lease_expires_ms = min(lease_expires_ms, ?2), updated_ms = ?2
                      WHERE state = 'dispatched' AND lease_holder >= ?1 || '#' AND lease_holder < ?1 || '$'",
                    params![agent, at.0],
                )
                .map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            Ok(Revoked { leases_released })
        })
        .await
    }

    async fn revocations(&self) -> Result<Vec<Revocation>, StoreError> {
        self.run(|conn| {
            let mut stmt = conn.prepare_cached("SELECT agent, revoked_ms FROM agent_revocations").map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| Ok(Revocation { agent: r.get(0)?, revoked: Timestamp(r.get(1)?) }))
                .map_err(db_err)?;
            rows.map(|r| r.map_err(db_err)).collect()
        })
        .await
    }
}
