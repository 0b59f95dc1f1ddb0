//! The token bucket: the generic cell rate algorithm over one atomic
//! word, shared by every clone of the service; and the reservation that
//! gives a token back when it goes unused.

use std::sync::Arc;
#[cfg(not(tower_cql_loom))]
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tower_cql_core::clock;

#[cfg(tower_cql_loom)]
use loom::sync::atomic::{AtomicU64, Ordering};
use tokio::time::Instant;

use super::{RateLimitConfig, Shared};

/// The bucket: GCRA over one atomic, shared by every clone.
pub(crate) struct Bucket {
    /// Theoretical arrival time of the next request, ns since `start`.
    tat: AtomicU64,
    pub(crate) start: Instant,
    /// Nanoseconds between tokens.
    pub(crate) interval: u64,
    /// The bucket's depth in nanoseconds (`interval * burst`).
    tolerance: u64,
}

/// The outcome of trying to take a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Take {
    /// Taken; usable after this wait (zero: now).
    Taken(Duration),
    /// Not taken: the next token is this far away, more than allowed.
    Refused(Duration),
}

impl Bucket {
    pub(crate) fn new(config: &RateLimitConfig) -> Bucket {
        let interval = (1e9 / config.rate_per_second).round().max(1.0);
        // (`validate` keeps the interval, and the tolerance below, far
        // inside u64: a saturated tolerance let every request through)
        let interval = interval as u64;
        Bucket {
            tat: AtomicU64::new(0),
            start: clock::now(),
            interval,
            tolerance: interval.saturating_mul(u64::from(config.burst)),
        }
    }

    fn nanos_since_start(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Takes a token at `now` if it is available within `max_wait`; with
    /// the theoretical arrival time the take left in the bucket (its
    /// stamp, for [`refund`](Self::refund)).
    pub(crate) fn take(&self, now: Instant, max_wait: Duration) -> (Take, u64) {
        let mut now = self.nanos_since_start(now);
        let max_wait = u64::try_from(max_wait.as_nanos()).unwrap_or(u64::MAX);
        let mut tat = self.tat.load(Ordering::Acquire);
        let mut fresh_clock = false;
        loop {
            let next = tat.max(now).saturating_add(self.interval);
            // Conforming when `next - t <= tolerance`: from `next - tolerance` on.
            let wait = next.saturating_sub(self.tolerance).saturating_sub(now);
            if wait > max_wait {
                // `now` may be stale: this thread can be descheduled after
                // reading the clock while others move the bucket past it,
                // and with a tolerance of microseconds (a high rate) that
                // alone would refuse. Judge once more on a fresh clock:
                // the clock itself, not `clock::now()`, which inside the
                // stack's call is the call's shared reading (the one
                // `now` came from, read before the layers above ran).
                if !fresh_clock {
                    fresh_clock = true;
                    let fresh = self.nanos_since_start(Instant::now());
                    if fresh > now {
                        now = fresh;
                        continue;
                    }
                }
                return (Take::Refused(Duration::from_nanos(wait)), tat);
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return (Take::Taken(Duration::from_nanos(wait)), next),
                Err(actual) => tat = actual,
            }
        }
    }

    /// Gives back a token taken but not used, if it is still the newest
    /// one taken: `stamp` is what its take left in the bucket. A later
    /// take has already been given the slot after it (a waiter sleeps
    /// until then), so moving the bucket back one interval would hand
    /// that slot out a second time: two requests at once where the burst
    /// allows one. Such a refund is dropped (the token is lost).
    pub(crate) fn refund(&self, stamp: u64) {
        // Every take moves the bucket strictly forward, so the bucket
        // still holds `stamp` iff nothing was taken since.
        if stamp == u64::MAX {
            // saturated: takes no longer move the bucket
            return;
        }
        let _ = self.tat.compare_exchange(
            stamp,
            stamp.saturating_sub(self.interval),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }
}

/// A token taken for a request that has not been called yet: goes back
/// to the bucket if dropped unused (the request was dropped while it
/// waited for the token, or the service that took it under a load shedder
/// was dropped before its call), unless a later token was taken since
/// (see [`Bucket::refund`]).
pub(crate) struct Reservation(Option<(Arc<Shared>, u64)>);

impl Reservation {
    /// The token whose take left `stamp` in `shared`'s bucket.
    pub(crate) fn new(shared: Arc<Shared>, stamp: u64) -> Reservation {
        Reservation(Some((shared, stamp)))
    }

    /// The token is used: it stays taken.
    pub(crate) fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some((shared, stamp)) = self.0.take() {
            shared.bucket.refund(stamp);
        }
    }
}

#[cfg(all(test, not(tower_cql_loom)))]
mod tests {
    use super::*;
    use crate::rate_limit::RateLimitMode;

    #[tokio::test(start_paused = true)]
    async fn a_stale_clock_reading_is_not_a_refusal() {
        // a high rate: the bucket's tolerance is 1 µs
        let bucket = Bucket::new(&RateLimitConfig {
            rate_per_second: 1e9,
            burst: 1000,
            ..RateLimitConfig::default()
        });
        let stale = Instant::now();
        tokio::time::advance(Duration::from_millis(5)).await;
        // another caller, with a current reading, moves the bucket on
        assert_eq!(
            bucket.take(Instant::now(), Duration::ZERO).0,
            Take::Taken(Duration::ZERO)
        );
        // this one read the clock 5 ms ago (descheduled since): it is
        // judged on a fresh reading, not refused for being late
        assert_eq!(
            bucket.take(stale, Duration::ZERO).0,
            Take::Taken(Duration::ZERO)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_shared_reading_is_not_a_refusal() {
        // a high rate: the bucket's tolerance is 1 µs
        let bucket = Bucket::new(&RateLimitConfig {
            rate_per_second: 1e9,
            burst: 1000,
            ..RateLimitConfig::default()
        });
        // the stack's entrance opens one clock reading for its layers'
        // calls (`clock::share`), which the rate limit's call reads:
        // here it is 5 ms old when the token is taken (the thread was
        // descheduled after the metrics layer read it)
        let reading = clock::share();
        let _ = clock::now();
        tokio::time::advance(Duration::from_millis(5)).await;
        // another caller, with a current reading, moves the bucket on
        assert_eq!(
            bucket.take(Instant::now(), Duration::ZERO).0,
            Take::Taken(Duration::ZERO)
        );
        // this one is judged once more on the clock itself, not on the
        // shared reading, which is as stale as the first
        assert_eq!(
            bucket.take(clock::now(), Duration::ZERO).0,
            Take::Taken(Duration::ZERO),
            "refused for a reading 5 ms old"
        );
        drop(reading);
    }

    #[test]
    fn the_bucket_is_exact_at_high_rates() {
        // 1e9/s: one token per nanosecond, taken without waiting.
        let b = Bucket::new(&RateLimitConfig {
            rate_per_second: 1e9,
            burst: 1,
            mode: RateLimitMode::Reject,
        });
        let t = b.start + Duration::from_secs(1);
        assert_eq!(b.take(t, Duration::ZERO).0, Take::Taken(Duration::ZERO));
        assert_eq!(
            b.take(t, Duration::ZERO).0,
            Take::Refused(Duration::from_nanos(1))
        );
    }
}

/// The bucket's atomic protocol under `loom`: every interleaving of
/// callers taking (and refunding) tokens at one instant.
/// `RUSTFLAGS="--cfg tower_cql_loom" cargo test -p tower-cql-middleware --release --lib loom`
#[cfg(all(test, tower_cql_loom))]
mod loom_tests {
    use super::*;
    use loom::thread;

    fn bucket(burst: u32) -> Arc<Bucket> {
        Arc::new(Bucket::new(&RateLimitConfig {
            rate_per_second: 1.0,
            burst,
            ..RateLimitConfig::default()
        }))
    }

    fn taken(b: &Bucket) -> bool {
        matches!(b.take(b.start, Duration::ZERO).0, Take::Taken(w) if w.is_zero())
    }

    #[test]
    fn concurrent_takers_get_exactly_the_burst() {
        loom::model(|| {
            let b = bucket(2);
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let b = b.clone();
                    thread::spawn(move || u32::from(taken(&b)) + u32::from(taken(&b)))
                })
                .collect();
            let got: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
            assert_eq!(got, 2, "two tokens in a burst of two, whatever the order");
            assert!(!taken(&b), "and none left");
        });
    }

    #[test]
    fn a_refund_is_never_lost_nor_doubled() {
        loom::model(|| {
            let b = bucket(1);
            let refunder = {
                let b = b.clone();
                thread::spawn(move || {
                    let (take, stamp) = b.take(b.start, Duration::ZERO);
                    let got = matches!(take, Take::Taken(w) if w.is_zero());
                    if got {
                        b.refund(stamp);
                    }
                    got
                })
            };
            let other = {
                let b = b.clone();
                thread::spawn(move || taken(&b))
            };
            let (r, o) = (refunder.join().unwrap(), other.join().unwrap());
            // one token: whoever held it, the refunded one is available
            // again unless the other caller already has it
            let left = taken(&b);
            assert_eq!(
                u32::from(o) + u32::from(left),
                1,
                "refunder {r}, other {o}, left {left}"
            );
            assert!(!taken(&b));
        });
    }

    /// When a token is due, for a take at `start` (waiting up to 10 s).
    fn reserve(b: &Bucket) -> (Duration, u64) {
        match b.take(b.start, Duration::from_secs(10)) {
            (Take::Taken(wait), stamp) => (wait, stamp),
            (Take::Refused(_), _) => panic!("reserved within 10 s"),
        }
    }

    #[test]
    fn a_refund_never_admits_two_at_once() {
        // One token per second, a burst of one, the first taken. One
        // caller reserves and gives its token back, another reserves and
        // keeps it; whatever the order, the next reservation is due at
        // least a second after the kept one (a refund behind a later
        // reservation is dropped, not moved onto it).
        loom::model(|| {
            let b = bucket(1);
            assert!(taken(&b));
            let refunder = {
                let b = b.clone();
                thread::spawn(move || {
                    let (_, stamp) = reserve(&b);
                    b.refund(stamp);
                })
            };
            let keeper = {
                let b = b.clone();
                thread::spawn(move || reserve(&b).0)
            };
            refunder.join().unwrap();
            let kept = keeper.join().unwrap();
            let (next, _) = reserve(&b);
            assert!(
                next >= kept + Duration::from_secs(1),
                "kept due at {kept:?}, the next at {next:?}"
            );
            // and a refund that could go back did: no token is lost
            // beyond the one dropped behind a later reservation
            assert!(next <= Duration::from_secs(3), "next at {next:?}");
        });
    }
}
