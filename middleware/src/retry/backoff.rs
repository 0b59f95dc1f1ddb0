//! Exponential backoff with full jitter.
//!
//! The delay before retry `n` (0-based: the first retry is `n = 0`) is drawn
//! uniformly from `0 ..= min(max, base * 2^n)` ("full jitter", from the AWS
//! architecture blog's *Exponential Backoff and Jitter*): spreading retries
//! over the whole interval is what keeps many clients that failed together
//! from retrying together.
//!
//! ```
//! use std::time::Duration;
//! use tower_cql_middleware::retry::backoff::Backoff;
//!
//! let backoff = Backoff { base: Duration::from_millis(10), max: Duration::from_millis(50) };
//! assert_eq!(backoff.cap(0), Duration::from_millis(10));
//! assert_eq!(backoff.cap(1), Duration::from_millis(20));
//! assert_eq!(backoff.cap(3), Duration::from_millis(50)); // 80 ms, capped
//! for retry in 0..10 {
//!     assert!(backoff.delay(retry) <= backoff.cap(retry));
//! }
//! ```

use std::time::Duration;

use crate::config::ConfigError;

/// Exponential backoff with full jitter: the delay before retry `n` is
/// random in `0 ..= min(max, base * 2^n)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The cap of the first retry's delay (default 10 ms). Zero disables
    /// backoff (retries follow at once).
    pub base: Duration,
    /// The largest cap, however many retries (default 1 s). At least
    /// `base`, at most 100 years.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_secs(1),
        }
    }
}

impl Backoff {
    /// Rejects a `max` below `base`, or above 100 years (the time a retry
    /// goes out is computed from its delay; a longer one cannot be).
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::config::not_too_long(
            "retry.backoff.max",
            self.max,
            "a retry waits at most that long; for no retries, set retry.max_attempts = 1",
        )?;
        if self.max < self.base {
            return Err(ConfigError::new(
                "retry.backoff.max",
                format!(
                    "must be at least retry.backoff.base ({:?}), got {:?}",
                    self.base, self.max
                ),
            ));
        }
        Ok(())
    }

    /// The largest delay retry `retry` (0-based) may wait:
    /// `min(max, base * 2^retry)`, saturating.
    pub fn cap(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry).unwrap_or(u32::MAX);
        self.base
            .checked_mul(factor)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// A random delay for retry `retry` (0-based), uniform in
    /// `0 ..= cap(retry)` at nanosecond resolution.
    pub fn delay(&self, retry: u32) -> Duration {
        let cap = u64::try_from(self.cap(retry).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(0..=cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_grow_exponentially_then_saturate() {
        let b = Backoff::default();
        let caps: Vec<u64> = (0..9).map(|n| b.cap(n).as_millis() as u64).collect();
        assert_eq!(caps, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        // no overflow for absurd retry counts
        assert_eq!(b.cap(31), b.max);
        assert_eq!(b.cap(u32::MAX), b.max);
        let huge = Backoff {
            base: Duration::from_secs(u64::MAX / 2),
            max: Duration::MAX,
        };
        assert_eq!(huge.cap(4), Duration::MAX);
    }

    #[test]
    fn delays_are_within_zero_and_the_cap_and_spread_out() {
        let b = Backoff::default();
        for retry in 0..8 {
            let cap = b.cap(retry);
            let draws: Vec<Duration> = (0..2000).map(|_| b.delay(retry)).collect();
            assert!(draws.iter().all(|d| *d <= cap), "retry {retry}");
            // full jitter: the draws cover the interval, not just its top
            let mean = draws.iter().sum::<Duration>() / draws.len() as u32;
            assert!(
                mean > cap * 4 / 10 && mean < cap * 6 / 10,
                "mean {mean:?}, cap {cap:?}"
            );
            assert!(draws.iter().any(|d| *d < cap / 10));
        }
    }

    #[test]
    fn zero_base_means_no_wait() {
        let b = Backoff {
            base: Duration::ZERO,
            max: Duration::ZERO,
        };
        assert!(b.validate().is_ok());
        assert_eq!(b.delay(5), Duration::ZERO);
    }

    #[test]
    fn max_below_base_is_rejected() {
        let err = Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(1),
        }
        .validate()
        .unwrap_err();
        assert_eq!(err.field, "retry.backoff.max");
        assert!(err.message.contains("at least"), "{err}");
    }
}
