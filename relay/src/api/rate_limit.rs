//! Fixed-window request counters, in memory, for the public pages (the one-time links): per link
//! and per client address. A relay replica counts on its own; that bounds guessing and scraping,
//! which is what the limits are for (a link id has 128 random bits and a claim needs the key).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counts requests per key in windows of `window`.
#[derive(Debug)]
pub struct RateLimiter {
    window: Duration,
    limit: u32,
    counts: Mutex<HashMap<String, (Instant, u32)>>,
}

/// Entries kept before old windows are swept.
const SWEEP_AT: usize = 10_000;

impl RateLimiter {
    /// `limit` requests per key and `window`.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self { window, limit, counts: Mutex::new(HashMap::new()) }
    }

    /// Counts a request for `key`; `Err(seconds until the window ends)` when over the limit.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        let now = Instant::now();
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.len() >= SWEEP_AT {
            counts.retain(|_, (start, _)| now.duration_since(*start) < self.window);
        }
        let entry = counts.entry(key.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 += 1;
        if entry.1 > self.limit {
            return Err(self.window.saturating_sub(now.duration_since(entry.0)).as_secs().max(1));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_applies_per_key() {
        let limiter = RateLimiter::new(2, Duration::from_secs(60));
        assert!(limiter.check("a").is_ok() && limiter.check("a").is_ok());
        assert!(limiter.check("a").is_err());
        assert!(limiter.check("b").is_ok());
    }

    #[test]
    fn a_new_window_starts_afresh() {
        let limiter = RateLimiter::new(1, Duration::from_millis(20));
        assert!(limiter.check("a").is_ok());
        assert!(limiter.check("a").is_err());
        std::thread::sleep(Duration::from_millis(30));
        assert!(limiter.check("a").is_ok());
    }
}
