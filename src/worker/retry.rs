//! Retry timing: exponential backoff (backon's sequence) with full jitter, never
//! shorter than a provider's `Retry-After`.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use rand::Rng;

use crate::config::RetrySettings;

#[derive(Clone, Debug)]
pub(super) struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
    pub max_attempts: u32,
    pub max_inline_wait: Duration,
}

impl RetryPolicy {
    pub(super) fn from_settings(s: &RetrySettings) -> Self {
        Self {
            initial: s.initial_delay,
            max: s.max_delay,
            max_attempts: s.max_attempts,
            max_inline_wait: s.max_inline_wait,
        }
    }

    /// The exponential ceiling after `attempt` failed tries (1-based).
    pub(super) fn ceiling(&self, attempt: u32) -> Duration {
        ExponentialBuilder::default()
            .with_min_delay(self.initial)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .without_max_times()
            .build()
            .nth(attempt.saturating_sub(1) as usize)
            .unwrap_or(self.max)
    }

    /// The wait before the next try: uniform in `[0, ceiling]` (full jitter), raised to
    /// `retry_after` when the provider asked for longer.
    pub(super) fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let ceiling = self.ceiling(attempt);
        let jittered =
            Duration::from_secs_f64(rand::rng().random_range(0.0..=ceiling.as_secs_f64()));
        match retry_after {
            Some(r) if r > jittered => r,
            _ => jittered,
        }
    }
}

/// Backoff for infrastructure (database, broker) waits: 100 ms doubling to 5 s, jittered.
pub(super) fn infra_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(10),
            max_attempts: 8,
            max_inline_wait: Duration::from_secs(2),
        }
    }

    #[test]
    fn ceiling_doubles_up_to_max() {
        let p = policy();
        assert_eq!(p.ceiling(1), Duration::from_millis(500));
        assert_eq!(p.ceiling(2), Duration::from_secs(1));
        assert_eq!(p.ceiling(3), Duration::from_secs(2));
        assert_eq!(p.ceiling(10), Duration::from_secs(10));
    }

    #[test]
    fn delay_is_within_ceiling_and_honours_retry_after() {
        let p = policy();
        for attempt in 1..8 {
            assert!(p.delay(attempt, None) <= p.ceiling(attempt));
        }
        assert!(p.delay(1, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
    }
}
