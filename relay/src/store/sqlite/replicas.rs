//! Replicas in SQLite: one process uses the file, but it registers and beats like any replica,
//! so the rules that depend on "alive" are the same on both backends.

use async_trait::async_trait;
use rusqlite::params;

use super::{SqliteStore, db_err};
use crate::jobs::Timestamp;
use crate::store::StoreError;
use crate::store::replicas::{self, FORGET, HEARTBEAT, LIVE, RETIRE, ReplicaId, ReplicaStore};

#[async_trait]
impl ReplicaStore for SqliteStore {
    fn replica(&self) -> &ReplicaId {
        &self.replica
    }

    async fn heartbeat(&self) -> Result<(), StoreError> {
        let id = self.replica.as_str().to_owned();
        self.run(move |conn| {
            let now = Timestamp::now().0;
            conn.execute(HEARTBEAT, params![id, now]).map_err(db_err)?;
            conn.execute(FORGET, params![replicas::forget_before(now)]).map_err(db_err).map(drop)
        })
        .await
    }

    async fn retire(&self) -> Result<(), StoreError> {
        let id = self.replica.as_str().to_owned();
        self.run(move |conn| conn.execute(RETIRE, params![id]).map_err(db_err).map(drop)).await
    }

    async fn live_replicas(&self) -> Result<Vec<ReplicaId>, StoreError> {
        self.run(|conn| {
            let mut stmt = conn.prepare_cached(LIVE).map_err(db_err)?;
            let rows = stmt
                .query_map(params![replicas::alive_since(Timestamp::now().0)], |r| r.get::<_, String>(0))
                .map_err(db_err)?;
            rows.map(|r| r.map(replicas::parse).map_err(db_err)).collect()
        })
        .await
    }
}
