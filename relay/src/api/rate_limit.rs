//! Request rate limits, in memory, keyed by what is limited: a client address, an API client.
//! Each key has a token bucket (GCRA, the `governor` crate): `burst` requests at once, refilled
//! at a steady rate. Each relay replica counts on its own, so N replicas behind a load balancer
//! allow up to N times the limit; that still bounds scraping and floods, which is what these
//! limits are for. A one-time link's limit must hold however many replicas serve it (it bounds
//! guessing one link's proof), so it is counted in the store instead
//! ([`crate::store::LifecycleStore::count_link_request`]).

use std::hash::Hash;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// Keys kept before those whose bucket is full again are swept.
const SWEEP_AT: usize = 10_000;

/// Counts requests per key.
pub struct RateLimiter<K = String>
where
    K: Hash + Eq + Clone,
{
    limiter: DefaultKeyedRateLimiter<K>,
    clock: DefaultClock,
}

impl<K: Hash + Eq + Clone> std::fmt::Debug for RateLimiter<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").field("keys", &self.limiter.len()).finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `limit` requests per key and `window`: a burst of `limit`, refilled evenly over `window`.
    pub fn new(limit: u32, window: Duration) -> Self {
        let limit = NonZeroU32::new(limit).unwrap_or(NonZeroU32::MIN);
        let period = (window / limit.get()).max(Duration::from_nanos(1));
        // `with_period` is None only for a zero period, which `max` rules out.
        let quota = Quota::with_period(period).unwrap_or_else(|| Quota::per_second(limit)).allow_burst(limit);
        Self::with_quota(quota)
    }

    /// `rate` requests per second per key, with bursts of up to `burst`.
    pub fn per_second(rate: NonZeroU32, burst: NonZeroU32) -> Self {
        Self::with_quota(Quota::per_second(rate).allow_burst(burst))
    }

    fn with_quota(quota: Quota) -> Self {
        Self { limiter: DefaultKeyedRateLimiter::keyed(quota), clock: DefaultClock::default() }
    }

    /// Counts a request for `key`; `Err(seconds until one more is allowed)` when over the limit.
    pub fn check(&self, key: &K) -> Result<(), u64> {
        if self.limiter.len() >= SWEEP_AT {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_applies_per_key() {
        let limiter = RateLimiter::new(2, Duration::from_secs(60));
        let (a, b) = ("a".to_owned(), "b".to_owned());
        assert!(limiter.check(&a).is_ok() && limiter.check(&a).is_ok());
        assert_eq!(limiter.check(&a), Err(30), "one more request is allowed after window / limit");
        assert!(limiter.check(&b).is_ok());
    }

    #[test]
    fn the_bucket_refills() {
        let limiter = RateLimiter::new(1, Duration::from_millis(20));
        let a = "a".to_owned();
        assert!(limiter.check(&a).is_ok());
        assert!(limiter.check(&a).is_err());
        std::thread::sleep(Duration::from_millis(30));
        assert!(limiter.check(&a).is_ok());
    }

    #[test]
    fn bursts_are_allowed_up_to_their_size() {
        let limiter = RateLimiter::per_second(NonZeroU32::new(1).expect("1"), NonZeroU32::new(5).expect("5"));
        let key = std::net::IpAddr::from([192, 0, 2, 1]);
        assert!((0..5).all(|_| limiter.check(&key).is_ok()));
        assert_eq!(limiter.check(&key), Err(1));
    }
}
