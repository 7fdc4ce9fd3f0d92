//! API clients in PostgreSQL.

use async_trait::async_trait;

use super::{PostgresStore, db_err, query};
use crate::jobs::Timestamp;
use crate::store::{ApiClient, ClientStore, Scopes, StoreError};

#[async_trait]
impl ClientStore for PostgresStore {
    async fn add_client(&self, name: &str, token_sha256: [u8; 32], scopes: &Scopes) -> Result<(), StoreError> {
        let scopes = serde_json::to_string(scopes).map_err(|e| StoreError::Database(e.to_string()))?;
        let conn = self.client().await?;
        let inserted = conn
            .execute(query!("clients/add"), &[&name, &token_sha256.as_slice(), &Timestamp::now().0, &scopes])
            .await
            .map_err(db_err)?;
        if inserted == 0 { Err(StoreError::ClientExists(name.to_owned())) } else { Ok(()) }
    }

    async fn rotate_client_token(&self, name: &str, token_sha256: [u8; 32]) -> Result<bool, StoreError> {
        let conn = self.client().await?;
        let changed =
            conn.execute(query!("clients/rotate_token"), &[&name, &token_sha256.as_slice()]).await.map_err(db_err)?;
        Ok(changed == 1)
    }

    async fn set_client_scopes(&self, name: &str, scopes: &Scopes) -> Result<bool, StoreError> {
        let scopes = serde_json::to_string(scopes).map_err(|e| StoreError::Database(e.to_string()))?;
        let conn = self.client().await?;
        let changed = conn.execute(query!("clients/set_scopes"), &[&name, &scopes]).await.map_err(db_err)?;
        Ok(changed == 1)
    }

    async fn revoke_client(&self, name: &str) -> Result<bool, StoreError> {
        let conn = self.client().await?;
        let removed = conn.execute(query!("clients/revoke"), &[&name]).await.map_err(db_err)?;
        Ok(removed == 1)
    }

    async fn client_by_token(&self, token_sha256: [u8; 32]) -> Result<Option<ApiClient>, StoreError> {
        let conn = self.client().await?;
        let row = conn.query_opt(query!("clients/by_token"), &[&token_sha256.as_slice()]).await.map_err(db_err)?;
        row.map(|row| client(&row)).transpose()
    }

    async fn client_by_name(&self, name: &str) -> Result<Option<ApiClient>, StoreError> {
        let conn = self.client().await?;
        let row = conn.query_opt(query!("clients/by_name"), &[&name]).await.map_err(db_err)?;
        row.map(|row| client(&row)).transpose()
    }
}

/// A client row: its name and its scopes as stored (JSON; none for an unrestricted client).
fn client(row: &tokio_postgres::Row) -> Result<ApiClient, StoreError> {
    let name: String = row.try_get(0).map_err(db_err)?;
    let scopes = match row.try_get::<_, Option<String>>(1).map_err(db_err)? {
        Some(json) => serde_json::from_str(&json)
            .map_err(|_| StoreError::Corrupt { id: name.clone(), reason: "bad scopes".into() })?,
        None => Scopes::default(),
    };
    Ok(ApiClient { name, scopes })
}
