//! Capped exponential backoff with random jitter: the one rule for every wait
//! between attempts (listener retries, resubscribing, a provider's reconnects and
//! publish retries), so they all spread the same way.

use std::time::Duration;

/// Waits that double from `initial` up to `max`, each shortened by a random part of
/// up to `jitter` of itself so that many waiters do not retry in step.
///
/// ```
/// use std::time::Duration;
/// use eventing::backoff::Backoff;
///
/// let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
/// let third = backoff.delay(3); // 400 ms less up to 20 %
/// assert!(third <= Duration::from_millis(400) && third >= Duration::from_millis(320));
/// assert!(backoff.delay(30) <= Duration::from_secs(1));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    jitter: f64,
}

impl Backoff {
    /// Doubling from `initial` to `max`, with up to 20 % jitter.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            jitter: 0.2,
        }
    }

    /// The largest part of a wait taken off at random, from 0.0 (none) to 1.0
    /// (anything down to zero); values outside that range are clamped.
    #[must_use]
    pub const fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction.clamp(0.0, 1.0);
        self
    }

    /// The wait after failed attempt number `attempt` (from 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        let base = self.initial.saturating_mul(1 << exponent).min(self.max);
        base.saturating_sub(base.mul_f64(fastrand::f64() * self.jitter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_its_cap_with_jitter() {
        let backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(1)).jitter(0.5);
        for attempt in 1..40 {
            let base = Duration::from_millis(20)
                .saturating_mul(1 << (attempt - 1).min(30))
                .min(Duration::from_secs(1));
            let delay = backoff.delay(attempt);
            assert!(delay <= base && delay >= base / 2, "{attempt}: {delay:?}");
        }
        let distinct: std::collections::HashSet<_> = (0..50).map(|_| backoff.delay(8)).collect();
        assert!(distinct.len() > 1, "jitter varies the wait");
        let none = backoff.jitter(0.0);
        assert_eq!(none.delay(2), Duration::from_millis(40));
    }
}
