//! When to try a registry request again, and how long to wait first: one policy for
//! every request, download resume and upload restart.

use std::time::Duration;

/// Exponential backoff: `first`, doubling per attempt, capped at `max`, for at most
/// `retries` attempts after the first.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    retries: u32,
    attempt: u32,
}

impl Backoff {
    pub fn new(first: Duration, retries: u32) -> Backoff {
        Backoff {
            first,
            max: Duration::from_secs(5),
            retries,
            attempt: 0,
        }
    }

    /// The delay before the next attempt, or None when the retries are used up.
    pub fn next_delay(&mut self) -> Option<Duration> {
        if self.attempt >= self.retries {
            return None;
        }
        let d = self
            .first
            .saturating_mul(1 << self.attempt.min(10))
            .min(self.max);
        self.attempt += 1;
        Some(d)
    }

    /// Waits before the next attempt, saying why; false when the retries are used up.
    pub async fn wait(&mut self, why: impl std::fmt::Display) -> bool {
        match self.next_delay() {
            Some(d) => {
                // Shown by the CLI by default: a registry that is down is not 6 silent seconds.
                tracing::warn!(
                    "retrying ({}/{}) in {:.1} s: {why}",
                    self.attempt,
                    self.retries,
                    d.as_secs_f64()
                );
                tokio::time::sleep(d).await;
                true
            }
            None => false,
        }
    }

    /// Attempts made after the first.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// Server answers worth another try.
pub fn retryable_status(status: u16) -> bool {
    status >= 500 || status == 429 || status == 408
}

/// Transport failures worth another try.
pub fn retryable_transport(e: &reqwest::Error) -> bool {
    e.is_connect() || e.is_timeout() || e.is_request() || e.is_body()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_stops() {
        let mut b = Backoff::new(Duration::from_millis(200), 6);
        let delays: Vec<_> = std::iter::from_fn(|| b.next_delay()).collect();
        let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![200, 400, 800, 1600, 3200, 5000]);
        assert_eq!(b.attempts(), 6);
        assert!(b.next_delay().is_none());
    }

    #[test]
    fn statuses() {
        assert!(retryable_status(503) && retryable_status(429) && retryable_status(408));
        assert!(!retryable_status(404) && !retryable_status(401));
    }
}
