//! Replicas in PostgreSQL (`replicas`), and the one listening connection per replica that turns
//! other replicas' job changes into this one's [`JobEvents`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use super::{PostgresStore, db_err};
use crate::jobs::Timestamp;
use crate::jobs::events::JobEvents;
use crate::store::StoreError;
use crate::store::replicas::{self, FORGET, HEARTBEAT, LIVE, RETIRE, ReplicaId, ReplicaStore};

/// The channel the `jobs_notify` trigger (`migrations/0003_replicas.sql`) announces job changes on.
pub(super) const JOBS_CHANNEL: &str = "pwrelay_jobs";
/// The first wait before the listening connection is made again; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// TCP keepalive of the listening connection, so a server that vanished is noticed.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);

#[async_trait]
impl ReplicaStore for PostgresStore {
    fn replica(&self) -> &ReplicaId {
        &self.replica
    }

    async fn heartbeat(&self) -> Result<(), StoreError> {
        let conn = self.client().await?;
        let now = Timestamp::now().0;
        conn.execute(HEARTBEAT, &[&self.replica.as_str(), &now]).await.map_err(db_err)?;
        conn.execute(FORGET, &[&replicas::forget_before(now)]).await.map_err(db_err).map(drop)
    }

    async fn retire(&self) -> Result<(), StoreError> {
        let conn = self.client().await?;
        conn.execute(RETIRE, &[&self.replica.as_str()]).await.map_err(db_err).map(drop)
    }

    async fn live_replicas(&self) -> Result<Vec<ReplicaId>, StoreError> {
        let conn = self.client().await?;
        let rows = conn.query(LIVE, &[&replicas::alive_since(Timestamp::now().0)]).await.map_err(db_err)?;
        rows.iter().map(|r| r.try_get::<_, String>(0).map(replicas::parse).map_err(db_err)).collect()
    }
}

impl PostgresStore {
    /// Listens on [`JOBS_CHANNEL`] until `cancel`, making the connection again after it drops.
    pub(super) async fn listen(&self, events: Arc<JobEvents>, cancel: CancellationToken) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let listened = tokio::select! {
                () = cancel.cancelled() => return,
                listened = self.listen_once(&events) => listened,
            };
            let error = match listened {
                Ok(()) => "the database closed the connection".to_owned(),
                Err(ListenError::Connect(e)) => e,
                Err(ListenError::Lost(e)) => {
                    // It had been listening: start the back-off again.
                    backoff = FIRST_BACKOFF;
                    e
                }
            };
            tracing::warn!(
                store = %self.location,
                %error,
                retry_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                "the store's notification connection is down; other replicas' job changes are seen by polling until it is back"
            );
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One listening connection, until it fails.
    async fn listen_once(&self, events: &JobEvents) -> Result<(), ListenError> {
        let mut config = self.listen.config.clone();
        config.keepalives(true).keepalives_idle(KEEPALIVE_IDLE).application_name("pwrelay-listen");
        let (client, mut connection) =
            config.connect(self.listen.tls.clone()).await.map_err(|e| ListenError::Connect(db_err(e).to_string()))?;
        let listening_started = std::sync::atomic::AtomicBool::new(false);
        let driven = async {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(note))) => match note.payload() {
                        "queued" => events.job_queued(),
                        _ => events.job_changed(),
                    },
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(db_err(e).to_string()),
                    None => return Err("the database closed the connection".to_owned()),
                }
            }
        };
        let listening = async {
            client.batch_execute(&format!("LISTEN {JOBS_CHANNEL}")).await.map_err(|e| db_err(e).to_string())?;
            listening_started.store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(store = %self.location, channel = JOBS_CHANNEL, "listening for other replicas' job changes");
            // Whatever changed while no connection listened is looked at now.
            events.job_queued();
            events.job_changed();
            std::future::pending::<Result<(), String>>().await
        };
        let lost = |e| {
            if listening_started.load(std::sync::atomic::Ordering::Relaxed) {
                ListenError::Lost(e)
            } else {
                ListenError::Connect(e)
            }
        };
        tokio::select! {
            ended = driven => ended.map_err(lost),
            failed = listening => failed.map_err(ListenError::Connect),
        }
    }
}

enum ListenError {
    /// No listening connection could be made.
    Connect(String),
    /// A listening connection was lost.
    Lost(String),
}
