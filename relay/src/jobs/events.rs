//! In-process signals about jobs: "a job was queued" wakes agent sessions to claim it, "a job
//! changed" wakes long-polling API requests. Both are hints: the store stays the truth, and every
//! waiter also re-reads it on a timer, so several relay replicas sharing one database still work.

use tokio::sync::watch;

/// Job signals shared by the API and the agent link.
#[derive(Debug)]
pub struct JobEvents {
    queued: watch::Sender<u64>,
    changed: watch::Sender<u64>,
}

impl Default for JobEvents {
    fn default() -> Self {
        Self { queued: watch::Sender::new(0), changed: watch::Sender::new(0) }
    }
}

impl JobEvents {
    /// Signals that a job became claimable (new, released or requeued).
    pub fn job_queued(&self) {
        self.queued.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Signals that a job changed state.
    pub fn job_changed(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that sees every later [`Self::job_queued`].
    pub fn queued(&self) -> watch::Receiver<u64> {
        self.queued.subscribe()
    }

    /// A receiver that sees every later [`Self::job_changed`].
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}
