//! The agent's view of a job's lease, counted on its own monotonic clock.
//!
//! The relay sends a lease *duration* with each job and with each renewal; the agent counts it
//! from when it received the job, or from when it sent the heartbeat that a renewal answers, so it
//! never ends later than the relay's own count (less the time a job takes to arrive, which
//! [`WRITE_MARGIN`] covers). The relay's wall clock is never compared with the agent's.
//!
//! A job's directory write starts only when the lease has more time left than the write may take
//! plus [`WRITE_MARGIN`] ([`JobLease::admit_write`]): so every write of an attempt ends before its
//! lease does, and the relay, which takes a lapsed job over only once the write timeout has also
//! passed, never has two attempts writing one account.

use std::sync::Mutex;
use std::time::Duration;

use pwrelay_proto::agent::v1::FailureCode;
use tokio::time::Instant;

use crate::directory::{DirectoryError, WriteGate};

/// Time a write must have left on the lease beyond its own timeout: covers the time a job or a
/// renewal takes from the relay to the agent.
pub const WRITE_MARGIN: Duration = Duration::from_secs(2);

/// The lease of one running job: its attempt (the fencing token) and until when it holds.
#[derive(Debug)]
pub struct JobLease {
    state: Mutex<State>,
    /// The relay's bound on an LDAP write; the agent's own timeout is capped to it.
    write_timeout: Option<Duration>,
}

#[derive(Debug)]
struct State {
    attempt: u32,
    deadline: Instant,
    lost: bool,
}

impl JobLease {
    /// A lease of `duration` for `attempt`, granted now. `write_timeout` is the relay's bound on
    /// an LDAP write, when it sent one.
    pub fn granted(attempt: u32, duration: Duration, write_timeout: Option<Duration>) -> Self {
        let deadline = Instant::now().checked_add(duration).unwrap_or_else(Instant::now);
        Self { state: Mutex::new(State { attempt, deadline, lost: false }), write_timeout }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update is a few field assignments: a panicked holder leaves them consistent.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The attempt the job is held under now (what its result names).
    pub fn attempt(&self) -> u32 {
        self.state().attempt
    }

    /// The relay renewed `attempt` for `duration`, counted from `sent_at` (when the agent sent the
    /// heartbeat that asked). A renewal of an older attempt changes nothing.
    pub fn renew(&self, attempt: u32, sent_at: Instant, duration: Duration) {
        let mut state = self.state();
        if state.attempt == attempt && !state.lost {
            if let Some(deadline) = sent_at.checked_add(duration) {
                state.deadline = state.deadline.max(deadline);
            }
        }
    }

    /// The relay delivered the job again, under a newer attempt, to this agent while it still runs
    /// it: the one run carries on under the newer attempt.
    pub fn regrant(&self, attempt: u32, duration: Duration) {
        let mut state = self.state();
        if attempt > state.attempt {
            state.attempt = attempt;
            state.deadline = Instant::now().checked_add(duration).unwrap_or_else(Instant::now);
            state.lost = false;
        }
    }

    /// The relay says this agent no longer holds `attempt`: no write may start under it.
    pub fn lose(&self, attempt: u32) {
        let mut state = self.state();
        if state.attempt == attempt {
            state.lost = true;
        }
    }

    /// Time left, or `None` once the lease is lost.
    pub fn remaining(&self) -> Option<Duration> {
        let state = self.state();
        (!state.lost).then(|| state.deadline.saturating_duration_since(Instant::now()))
    }

    /// Whether any time is left (for starting a job at all).
    pub fn is_held(&self) -> bool {
        self.remaining().is_some_and(|left| !left.is_zero())
    }
}

impl WriteGate for JobLease {
    fn held(&self) -> bool {
        self.is_held()
    }

    fn admit_write(&self, timeout: Duration) -> Result<Duration, DirectoryError> {
        let timeout = self.write_timeout.map_or(timeout, |cap| timeout.min(cap));
        match self.remaining() {
            Some(left) if left > timeout + WRITE_MARGIN => Ok(timeout),
            Some(left) => Err(not_started(format!(
                "the job's lease has {} ms left, less than a write may take ({} ms) plus {} s; nothing was \
                 written, the job is given back",
                left.as_millis(),
                timeout.as_millis(),
                WRITE_MARGIN.as_secs()
            ))),
            None => Err(not_started(
                "the relay gave this job to another attempt; nothing was written, the job is given back".into(),
            )),
        }
    }
}

/// A failure that tells the relay the directory was not touched and the job may go at once.
pub fn not_started(message: String) -> DirectoryError {
    DirectoryError { retryable: true, ..DirectoryError::new(FailureCode::NotStarted, message) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_write_starts_only_with_its_timeout_and_the_margin_left() {
        let lease = JobLease::granted(1, Duration::from_secs(20), Some(Duration::from_secs(5)));
        // The agent's own 10 s timeout is capped to the relay's 5 s.
        assert_eq!(lease.admit_write(Duration::from_secs(10)).expect("admitted"), Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(13)).await;
        let refused = lease.admit_write(Duration::from_secs(10)).expect_err("7 s left is not more than 5 + 2");
        assert_eq!(refused.code, FailureCode::NotStarted);
        assert!(refused.retryable);
        // A renewal counts from when the heartbeat was sent, not from when the answer came.
        let sent = Instant::now();
        tokio::time::advance(Duration::from_secs(3)).await;
        lease.renew(1, sent, Duration::from_secs(20));
        assert_eq!(lease.remaining(), Some(Duration::from_secs(17)));
        lease.renew(0, Instant::now(), Duration::from_secs(600));
        assert_eq!(lease.remaining(), Some(Duration::from_secs(17)), "an older attempt renews nothing");
        assert!(lease.admit_write(Duration::from_secs(10)).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_lease_admits_no_write_until_a_newer_attempt_is_granted() {
        let lease = JobLease::granted(1, Duration::from_secs(60), None);
        lease.lose(1);
        assert!(!lease.is_held());
        assert_eq!(lease.admit_write(Duration::from_secs(1)).expect_err("lost").code, FailureCode::NotStarted);
        lease.renew(1, Instant::now(), Duration::from_secs(60));
        assert!(!lease.is_held(), "a lost attempt is not renewed");
        lease.regrant(2, Duration::from_secs(60));
        assert_eq!(lease.attempt(), 2);
        assert!(lease.admit_write(Duration::from_secs(1)).is_ok());
    }
}
