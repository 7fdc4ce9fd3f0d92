//! Reconnect back-off: exponential, capped, with jitter so a fleet of agents does not reconnect in
//! lockstep after a relay restart.

use std::time::Duration;

use rand::Rng as _;

/// Exponential back-off with "equal jitter": each delay is half the current step plus a random
/// part of up to the other half.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// Starts at `initial`, doubles up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max, step: initial }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let half = self.step / 2;
        let jitter = rand::rng().random_range(Duration::ZERO..=half);
        self.step = (self.step * 2).min(self.max);
        half + jitter
    }

    /// Back to the initial step (after a connection that worked).
    pub fn reset(&mut self) {
        self.step = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_within_jitter_bounds_and_caps() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        for expected_step in [1u64, 2, 4, 8, 8, 8] {
            let d = b.next_delay();
            let step = Duration::from_secs(expected_step);
            assert!(d >= step / 2 && d <= step, "{d:?} not within [{:?}, {step:?}]", step / 2);
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }

    #[test]
    fn delays_are_jittered() {
        let mut delays = std::collections::HashSet::new();
        for _ in 0..20 {
            delays.insert(Backoff::new(Duration::from_secs(60), Duration::from_secs(60)).next_delay());
        }
        assert!(delays.len() > 1, "20 delays should not all be equal");
    }
}
