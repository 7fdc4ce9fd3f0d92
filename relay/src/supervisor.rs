//! Supervision of the relay's background workers (the lifecycle worker, the webhook delivery
//! worker, the overdue-job sweeper).
//!
//! A worker runs as its own task under [`Supervisor::spawn`]. When it panics, or returns while the
//! relay is not stopping, the supervisor logs that at ERROR with the worker's name and starts it
//! again after a back-off: [`FIRST_RESTART_DELAY`], doubled after every further end up to
//! [`MAX_RESTART_DELAY`], and back to the first delay once a run lasted [`HEALTHY_RUN`]. When the
//! relay stops (the cancellation token fires), the worker is not started again. No background
//! worker can disappear silently.

use std::any::Any;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Wait before the first restart of a worker that ended.
pub const FIRST_RESTART_DELAY: Duration = Duration::from_secs(1);
/// Longest wait between two restarts.
pub const MAX_RESTART_DELAY: Duration = Duration::from_secs(60);
/// A run this long counts as healthy: the next restart waits [`FIRST_RESTART_DELAY`] again.
pub const HEALTHY_RUN: Duration = Duration::from_secs(300);

/// Starts background workers on the relay's task tracker and keeps them running until the relay
/// stops.
#[derive(Debug, Clone)]
pub struct Supervisor {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Supervisor {
    /// Workers run on `tracker` (so the relay's drain waits for them) until `cancel` fires.
    pub fn new(cancel: CancellationToken, tracker: TaskTracker) -> Self {
        Self { cancel, tracker }
    }

    /// Runs the worker `name`, made by `start` (called again for every restart with the token that
    /// tells it to stop), under supervision.
    pub fn spawn<F, Fut>(&self, name: &'static str, start: F)
    where
        F: FnMut(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(supervise(name, self.cancel.clone(), start));
    }
}

/// Runs `start(cancel)` as a task, again and again with back-off whenever it panics or returns
/// before `cancel` fires; returns once `cancel` has fired and the current run has ended.
pub async fn supervise<F, Fut>(name: &'static str, cancel: CancellationToken, mut start: F)
where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut delay = FIRST_RESTART_DELAY;
    let mut restarts: u64 = 0;
    loop {
        let started = Instant::now();
        // A task of its own, so that a panic ends this run only and is seen here.
        let end = match tokio::spawn(start(cancel.clone())).await {
            Ok(()) => End::Returned,
            Err(error) if error.is_panic() => End::Panicked(payload_text(&*error.into_panic())),
            Err(error) => End::Aborted(error.to_string()),
        };
        if cancel.is_cancelled() {
            if let End::Panicked(panic) = &end {
                tracing::error!(worker = name, %panic, "background worker panicked while the relay stops");
            }
            return;
        }
        let ran = started.elapsed();
        if ran >= HEALTHY_RUN {
            delay = FIRST_RESTART_DELAY;
        }
        restarts += 1;
        let (ran_ms, restart_in_ms) = (ms(ran), ms(delay));
        match end {
            End::Returned => tracing::error!(
                worker = name,
                ran_ms,
                restart_in_ms,
                restarts,
                "background worker returned while the relay is running; restarting it"
            ),
            End::Panicked(panic) => tracing::error!(
                worker = name,
                %panic,
                ran_ms,
                restart_in_ms,
                restarts,
                "background worker panicked; restarting it"
            ),
            End::Aborted(error) => tracing::error!(
                worker = name,
                %error,
                ran_ms,
                restart_in_ms,
                restarts,
                "background worker was aborted while the relay is running; restarting it"
            ),
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = delay.saturating_mul(2).min(MAX_RESTART_DELAY);
    }
}

/// How one run of a worker ended.
enum End {
    /// The worker's future completed.
    Returned,
    /// It panicked, with this message.
    Panicked(String),
    /// Its task was aborted (the runtime is shutting down).
    Aborted(String),
}

/// The message a panic was raised with.
fn payload_text(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Log lines written while the returned guard lives (this thread: the tests' runtime is
    /// current-thread, so the workers' tasks log here too).
    fn capture_logs() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
        #[derive(Clone)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink(Arc::clone(&logs));
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || sink.clone()).finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn text(logs: &Mutex<Vec<u8>>) -> String {
        String::from_utf8_lossy(&logs.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// When each run started, in whole seconds after `origin`.
    fn offsets(starts: &Mutex<Vec<Instant>>, origin: Instant) -> Vec<u64> {
        starts.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|at| (*at - origin).as_secs()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_worker_is_restarted_with_back_off_and_logged() {
        let (logs, _guard) = capture_logs();
        let origin = Instant::now();
        let starts = Arc::new(Mutex::new(Vec::new()));
        let cancel = CancellationToken::new();
        let runs = Arc::clone(&starts);
        let supervised = tokio::spawn(supervise("test worker", cancel.clone(), move |cancel: CancellationToken| {
            let runs = Arc::clone(&runs);
            async move {
                let n = {
                    let mut runs = runs.lock().unwrap_or_else(|p| p.into_inner());
                    runs.push(Instant::now());
                    runs.len()
                };
                assert!(n > 2, "run {n} fails on purpose");
                cancel.cancelled().await;
            }
        }));
        tokio::time::sleep(Duration::from_secs(600)).await;
        // Two panics: restarted after 1 s, then after 2 s more; the third run keeps running.
        assert_eq!(offsets(&starts, origin), [0, 1, 3]);
        assert!(!supervised.is_finished());
        let logged = text(&logs);
        assert_eq!(logged.matches("background worker panicked; restarting it").count(), 2, "{logged}");
        assert!(logged.contains("ERROR") && logged.contains("worker=\"test worker\""), "{logged}");
        assert!(logged.contains("run 1 fails on purpose") && logged.contains("run 2 fails on purpose"), "{logged}");

        cancel.cancel();
        supervised.await.expect("the supervisor ends");
        assert_eq!(starts.lock().unwrap_or_else(|p| p.into_inner()).len(), 3, "no restart after shutdown");
    }

    #[tokio::test(start_paused = true)]
    async fn a_returning_worker_is_restarted_with_a_capped_back_off_that_resets_after_a_healthy_run() {
        let (logs, _guard) = capture_logs();
        let origin = Instant::now();
        let starts = Arc::new(Mutex::new(Vec::new()));
        let cancel = CancellationToken::new();
        let runs = Arc::clone(&starts);
        let supervised = tokio::spawn(supervise("returner", cancel.clone(), move |_cancel: CancellationToken| {
            let runs = Arc::clone(&runs);
            async move {
                let n = {
                    let mut runs = runs.lock().unwrap_or_else(|p| p.into_inner());
                    runs.push(Instant::now());
                    runs.len()
                };
                // The ninth run is healthy for a while before it returns too.
                if n == 9 {
                    tokio::time::sleep(HEALTHY_RUN).await;
                }
            }
        }));
        tokio::time::sleep(Duration::from_secs(487)).await;
        // Waits 1, 2, 4, 8, 16, 32, 60 (capped), 60; the ninth run lasts 300 s, then 1 and 2 again.
        assert_eq!(offsets(&starts, origin), [0, 1, 3, 7, 15, 31, 63, 123, 183, 484, 486]);
        let logged = text(&logs);
        assert!(logged.contains("background worker returned while the relay is running; restarting it"), "{logged}");
        assert!(logged.contains("worker=\"returner\"") && logged.contains("restart_in_ms=60000"), "{logged}");
        cancel.cancel();
        supervised.await.expect("the supervisor ends");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_a_worker_without_restarting_it() {
        let (logs, _guard) = capture_logs();
        let starts = Arc::new(Mutex::new(Vec::new()));
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let runs = Arc::clone(&starts);
        Supervisor::new(cancel.clone(), tracker.clone()).spawn("stopper", move |cancel: CancellationToken| {
            let runs = Arc::clone(&runs);
            async move {
                runs.lock().unwrap_or_else(|p| p.into_inner()).push(Instant::now());
                cancel.cancelled().await;
            }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        cancel.cancel();
        tracker.close();
        tokio::time::timeout(Duration::from_secs(1), tracker.wait()).await.expect("the worker stops at once");
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(starts.lock().unwrap_or_else(|p| p.into_inner()).len(), 1);
        let logged = text(&logs);
        assert!(!logged.contains("restarting"), "{logged}");

        // A shutdown during the back-off ends the supervision too.
        let cancel = CancellationToken::new();
        let runs = Arc::new(Mutex::new(0));
        let counted = Arc::clone(&runs);
        let supervised = tokio::spawn(supervise("quitter", cancel.clone(), move |_cancel: CancellationToken| {
            let counted = Arc::clone(&counted);
            async move { *counted.lock().unwrap_or_else(|p| p.into_inner()) += 1 }
        }));
        tokio::time::sleep(Duration::from_millis(500)).await;
        cancel.cancel();
        supervised.await.expect("the supervisor ends");
        assert_eq!(*runs.lock().unwrap_or_else(|p| p.into_inner()), 1);
    }
}
