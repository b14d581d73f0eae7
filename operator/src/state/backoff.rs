//! Capped exponential backoff per object: how long to wait before the next attempt after
//! `n` failures in a row. A failing object is retried ever more slowly, never in a hot
//! loop, and one success starts it over.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Delays `base`, `2 × base`, `4 × base`, … up to `cap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The delay after `failures` failures in a row (the first failure is 1).
    pub fn delay(&self, failures: u32) -> Duration {
        cellbus_control::backoff::delay_after(self.base, self.cap, failures)
    }
}

/// Failures in a row, per object key.
#[derive(Debug)]
pub struct Attempts {
    backoff: Backoff,
    failures: Mutex<HashMap<String, u32>>,
}

impl Attempts {
    pub fn new(backoff: Backoff) -> Self {
        Self {
            backoff,
            failures: Mutex::default(),
        }
    }

    /// Counts one more failure of `key` and returns how long to wait before retrying.
    pub fn failed(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let count = failures.entry(key.to_owned()).or_default();
        *count = count.saturating_add(1);
        self.backoff.delay(*count)
    }

    /// Forgets the failures of `key`.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Backoff = Backoff {
        base: Duration::from_secs(5),
        cap: Duration::from_secs(300),
    };

    #[test]
    fn delays_double_up_to_the_cap() {
        let delays: Vec<u64> = (1..=9).map(|n| BACKOFF.delay(n).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(BACKOFF.delay(u32::MAX), BACKOFF.cap);
        assert_eq!(BACKOFF.delay(0), BACKOFF.base);
    }

    #[test]
    fn failures_count_per_key_and_reset_on_success() {
        let attempts = Attempts::new(BACKOFF);
        assert_eq!(attempts.failed("a/x"), Duration::from_secs(5));
        assert_eq!(attempts.failed("a/x"), Duration::from_secs(10));
        assert_eq!(attempts.failed("a/y"), Duration::from_secs(5));
        attempts.succeeded("a/x");
        assert_eq!(attempts.failed("a/x"), Duration::from_secs(5));
    }
}
