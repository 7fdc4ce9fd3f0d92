//! The SQLite store's group commit: one thread takes every write queued while the last commit was
//! syncing and runs them in one transaction, a savepoint each, then answers each after the
//! `COMMIT`. With `synchronous=FULL` a commit costs one sync of the disk however much it holds, so
//! concurrent writers (agent sessions recording results, the dispatcher claiming, the API
//! inserting) share syncs instead of queueing for one each.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::store::StoreError;

/// The most writes one transaction holds; more wait for the next.
const MAX_GROUP: usize = 1024;

/// A queued write: applied inside the group's transaction, answered after its end.
trait Write: Send {
    /// Runs the work; whether it succeeded (its savepoint is released) or not (rolled back).
    fn apply(&mut self, conn: &Connection) -> bool;
    /// Answers the caller: the work's result once `commit` succeeded, else the commit's error.
    fn answer(self: Box<Self>, commit: &Result<(), String>);
}

struct Queued<T, F> {
    work: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Write for Queued<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
{
    fn apply(&mut self, conn: &Connection) -> bool {
        let Some(work) = self.work.take() else { return false };
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| work(conn)))
            .unwrap_or_else(|_| Err(StoreError::Database("a store write panicked; it was rolled back".into())));
        let applied = result.is_ok();
        self.result = Some(result);
        applied
    }

    fn answer(self: Box<Self>, commit: &Result<(), String>) {
        let answer = match (self.result, commit) {
            (Some(Err(error)), _) => Err(error),
            (Some(Ok(value)), Ok(())) => Ok(value),
            (_, Err(error)) => Err(StoreError::Database(error.clone())),
            (None, Ok(())) => Err(StoreError::Database("the store write was not run".into())),
        };
        // The caller may have gone away; what it asked for is committed either way.
        let _ = self.reply.send(answer);
    }
}

/// The sending side of the writer thread; the thread ends when the last store clone drops it.
#[derive(Clone)]
pub(super) struct Writer {
    queue: mpsc::Sender<Box<dyn Write>>,
    /// Transactions the writer has run.
    groups: Arc<AtomicU64>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("groups", &self.groups.load(Ordering::Relaxed)).finish_non_exhaustive()
    }
}

impl Writer {
    pub(super) fn start(conn: Arc<Mutex<Connection>>) -> Result<Self, StoreError> {
        let (queue, writes) = mpsc::channel();
        let groups = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&groups);
        std::thread::Builder::new()
            .name("pwrelay-sqlite-writer".into())
            .spawn(move || serve(&conn, &writes, &counted))
            .map_err(|e| StoreError::Database(format!("the store's writer thread cannot start: {e}")))?;
        Ok(Self { queue, groups })
    }

    /// How many transactions the writer has run.
    #[cfg(test)]
    pub(super) fn groups(&self) -> u64 {
        self.groups.load(Ordering::Acquire)
    }

    /// Queues `work` (in order with every other write) and returns what answers it.
    pub(super) fn queue<T, F>(
        &self,
        work: F,
    ) -> Result<impl Future<Output = Result<T, StoreError>> + Send + 'static, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Box::new(Queued { work: Some(work), result: None, reply }))
            .map_err(|_| StoreError::Database("the store's writer has stopped".into()))?;
        Ok(async move {
            answer.await.map_err(|_| StoreError::Database("the store's writer stopped before answering".into()))?
        })
    }
}

fn serve(conn: &Mutex<Connection>, writes: &mpsc::Receiver<Box<dyn Write>>, groups: &AtomicU64) {
    while let Ok(first) = writes.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match writes.try_recv() {
                Ok(write) => group.push(write),
                Err(_) => break,
            }
        }
        let commit = {
            // A panic while holding the lock left no transaction open (see `run_group`).
            let guard = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            run_group(&guard, &mut group)
        };
        groups.fetch_add(1, Ordering::AcqRel);
        for write in group {
            write.answer(&commit);
        }
    }
}

/// One transaction for the group: `BEGIN IMMEDIATE`, a savepoint per write, `COMMIT`. On any
/// failure of the transaction itself everything is rolled back and every write gets the error.
fn run_group(conn: &Connection, group: &mut [Box<dyn Write>]) -> Result<(), String> {
    let run =
        |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute([])).map(|_| ()).map_err(|e| e.to_string());
    run("BEGIN IMMEDIATE")?;
    let applied = (|| {
        for write in group.iter_mut() {
            run("SAVEPOINT write")?;
            if !write.apply(conn) {
                run("ROLLBACK TO write")?;
            }
            run("RELEASE write")?;
        }
        run("COMMIT")
    })();
    if applied.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    applied
}

#[cfg(test)]
mod tests {
    use rusqlite::params;

    use crate::store::StoreError;
    use crate::store::sqlite::{SqliteStore, db_err};

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("dir");
        let store = SqliteStore::open(&dir.path().join("relay.db")).expect("open");
        store
            .run(|conn| conn.execute_batch("CREATE TABLE t (n INTEGER PRIMARY KEY)").map_err(db_err))
            .await
            .expect("table");
        (dir, store)
    }

    fn insert(n: i64) -> impl FnOnce(&rusqlite::Connection) -> Result<(), StoreError> + Send + 'static {
        move |conn| conn.execute("INSERT INTO t (n) VALUES (?1)", params![n]).map(|_| ()).map_err(db_err)
    }

    /// Writes queued while the writer is busy share one transaction (one sync), and each is
    /// answered only after it is committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_queued_together_are_committed_together() {
        let (_dir, store) = store().await;
        let before = store.writer.groups();
        let answers: Vec<_> = (0..200).map(|n| store.writer.queue(insert(n)).expect("queued")).collect();
        for answer in answers {
            answer.await.expect("committed");
        }
        let groups = store.writer.groups() - before;
        assert!(groups < 20, "200 writes queued at once took {groups} transactions");
        let count: i64 = store
            .run(|conn| conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).map_err(db_err))
            .await
            .expect("count");
        assert_eq!(count, 200);
    }

    /// A write that fails is rolled back alone: the others in its transaction are kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_write_is_rolled_back_alone() {
        let (_dir, store) = store().await;
        let first = store.writer.queue(insert(1)).expect("queued");
        let failing = store
            .writer
            .queue(|conn: &rusqlite::Connection| -> Result<(), StoreError> {
                conn.execute("INSERT INTO t (n) VALUES (2)", []).map_err(db_err)?;
                // A duplicate key: the statement fails after the first insert of this write.
                conn.execute("INSERT INTO t (n) VALUES (1)", []).map_err(db_err)?;
                Ok(())
            })
            .expect("queued");
        let panicking = store
            .writer
            .queue(|conn: &rusqlite::Connection| -> Result<(), StoreError> {
                conn.execute("INSERT INTO t (n) VALUES (4)", []).map_err(db_err)?;
                panic!("a write that panics");
            })
            .expect("queued");
        let last = store.writer.queue(insert(3)).expect("queued");
        first.await.expect("kept");
        assert!(failing.await.is_err());
        assert!(panicking.await.is_err());
        last.await.expect("kept");
        let kept: Vec<i64> = store
            .run(|conn| {
                let mut stmt = conn.prepare("SELECT n FROM t ORDER BY n").map_err(db_err)?;
                let rows = stmt.query_map([], |r| r.get(0)).map_err(db_err)?;
                rows.collect::<Result<_, _>>().map_err(db_err)
            })
            .await
            .expect("read");
        assert_eq!(kept, vec![1, 3]);
    }
}
