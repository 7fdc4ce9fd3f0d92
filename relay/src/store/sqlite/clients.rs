//! API clients in SQLite.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, db_err};
use crate::jobs::Timestamp;
use crate::store::{ApiClient, ClientStore, Scopes, StoreError};

#[async_trait]
impl ClientStore for SqliteStore {
    async fn add_client(&self, name: &str, token_sha256: [u8; 32], scopes: &Scopes) -> Result<(), StoreError> {
        let name = name.to_owned();
        let scopes = serde_json::to_string(scopes).map_err(|e| StoreError::Database(e.to_string()))?;
        self.run(move |conn| {
            let inserted = conn
                .execute(
                    "INSERT INTO api_clients (name, token_sha256, created_ms, scopes) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (name) DO NOTHING",
                    params![name, token_sha256.as_slice(), Timestamp::now().0, scopes],
                )
                .map_err(db_err)?;
            if inserted == 0 { Err(StoreError::ClientExists(name)) } else { Ok(()) }
        })
        .await
    }

    async fn rotate_client_token(&self, name: &str, token_sha256: [u8; 32]) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.run(move |conn| {
            let changed = conn
                .execute(
                    "UPDATE api_clients SET token_sha256 = ?2 WHERE name = ?1",
                    params![name, token_sha256.as_slice()],
                )
                .map_err(db_err)?;
            Ok(changed == 1)
        })
        .await
    }

    async fn set_client_scopes(&self, name: &str, scopes: &Scopes) -> Result<bool, StoreError> {
        let name = name.to_owned();
        let scopes = serde_json::to_string(scopes).map_err(|e| StoreError::Database(e.to_string()))?;
        self.run(move |conn| {
            let changed = conn
                .execute("UPDATE api_clients SET scopes = ?2 WHERE name = ?1", params![name, scopes])
                .map_err(db_err)?;
            Ok(changed == 1)
        })
        .await
    }

    async fn revoke_client(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.run(move |conn| {
            let removed = conn.execute("DELETE FROM api_clients WHERE name = ?1", params![name]).map_err(db_err)?;
            Ok(removed == 1)
        })
        .await
    }

    async fn client_by_token(&self, token_sha256: [u8; 32]) -> Result<Option<ApiClient>, StoreError> {
        self.run(move |conn| {
            let row = conn
                .query_row(
                    "SELECT name, scopes FROM api_clients WHERE token_sha256 = ?1",
                    params![token_sha256.as_slice()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(db_err)?;
            row.map(|(name, scopes)| client(name, scopes)).transpose()
        })
        .await
    }

    async fn client_by_name(&self, name: &str) -> Result<Option<ApiClient>, StoreError> {
        let name = name.to_owned();
        self.run(move |conn| {
            let row = conn
                .query_row("SELECT name, scopes FROM api_clients WHERE name = ?1", params![name], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
                .map_err(db_err)?;
            row.map(|(name, scopes)| client(name, scopes)).transpose()
        })
        .await
    }
}

/// A client row: its name and its scopes as stored (JSON; none for an unrestricted client).
fn client(name: String, scopes: Option<String>) -> Result<ApiClient, StoreError> {
    let scopes = match scopes {
        Some(json) => serde_json::from_str(&json)
            .map_err(|_| StoreError::Corrupt { id: name.clone(), reason: "bad scopes".into() })?,
        None => Scopes::default(),
    };
    Ok(ApiClient { name, scopes })
}
