//! The fetch cap: at most `max_fetches_per_second` fetches start in any
//! one-second interval, whenever it begins, and that many may start at
//! once (a burst equal to the cap).
//!
//! # Why not the rate limit's token bucket
//! A fixed window (the count reset each second) lets up to twice the cap
//! start within one second across a reset. The rate limit's bucket
//! (`rate_limit::bucket`, GCRA) was the first choice, to keep one rate
//! rule, but a bucket cannot give both properties: a bucket of depth `b`
//! refilled at `r` per second lets `b + r - 1` start within one second
//! (the full bucket emptied at once, then the refill), so a burst of the
//! cap (`b = r = cap`) allows `2·cap - 1`, and holding the cap needs
//! `b + r <= cap + 1` (a burst of 1 at the full rate, or a smaller rate).
//! What holds exactly is the rule itself: the instants of the fetches
//! started in the last second, and a new one only while there are fewer
//! than the cap. The worker is one task, so this needs no atomics; it
//! holds at most `cap` instants, and only as many as started in the last
//! second.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// The interval the cap is counted over.
const WINDOW: Duration = Duration::from_secs(1);

/// The instants of the fetches started in the last second.
#[derive(Debug)]
pub(crate) struct FetchCap {
    max: usize,
    started: VecDeque<Instant>,
}

impl FetchCap {
    /// At most `max_per_second` fetches in any one-second interval.
    pub(crate) fn new(max_per_second: u32) -> FetchCap {
        let max = usize::try_from(max_per_second).unwrap_or(usize::MAX);
        FetchCap {
            max,
            started: VecDeque::with_capacity(max.min(64)),
        }
    }

    /// Whether a fetch may start at `now` (instants never decrease), and
    /// if so counts it: fewer than the cap started in `(now - 1 s, now]`.
    pub(crate) fn admit(&mut self, now: Instant) -> bool {
        while let Some(&t) = self.started.front() {
            if now.saturating_duration_since(t) < WINDOW {
                break;
            }
            self.started.pop_front();
        }
        if self.started.len() < self.max {
            self.started.push_back(now);
            true
        } else {
            false
        }
    }
}

#[cfg(all(test, not(tower_cql_loom)))]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The most of `times` in any half-open interval `[t, t + 1 s)`.
    fn most_within_a_second(times: &[Instant]) -> usize {
        (0..times.len())
            .map(|i| {
                times[i..]
                    .iter()
                    .take_while(|&&x| x - times[i] < WINDOW)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn a_burst_of_the_cap_starts_at_once_then_one_per_expired_start() {
        let t0 = Instant::now();
        let mut cap = FetchCap::new(3);
        assert_eq!((0..5).filter(|_| cap.admit(t0)).count(), 3);
        assert!(!cap.admit(t0 + ms(999)));
        // all three left the last second together
        assert_eq!((0..5).filter(|_| cap.admit(t0 + ms(1000))).count(), 3);
    }

    #[test]
    fn starts_spread_over_a_window_do_not_double_up_across_a_second() {
        // the pattern a fixed window gets wrong: 1 at 0, 2 late in the
        // first second, then a new second
        let t0 = Instant::now();
        let mut cap = FetchCap::new(3);
        assert!(cap.admit(t0));
        assert!(cap.admit(t0 + ms(900)));
        assert!(cap.admit(t0 + ms(900)));
        assert!(!cap.admit(t0 + ms(900)));
        // only the start of 0 s has left the last second
        assert!(cap.admit(t0 + ms(1000)));
        assert!(!cap.admit(t0 + ms(1100)));
        assert!(!cap.admit(t0 + ms(1899)));
        assert!(cap.admit(t0 + ms(1900)));
    }

    #[test]
    fn no_second_holds_more_than_the_cap_and_the_cap_is_reached() {
        for max in [1u32, 2, 3, 10] {
            let mut rng = fastrand::Rng::with_seed(u64::from(max));
            let t0 = Instant::now();
            let mut cap = FetchCap::new(max);
            let mut at = t0;
            let mut admitted = Vec::new();
            for _ in 0..5_000 {
                // bursts and gaps: 0 to 150 ms apart, often 0
                at += ms(rng.u64(0..150).saturating_sub(60));
                if cap.admit(at) {
                    admitted.push(at);
                }
            }
            assert!(most_within_a_second(&admitted) <= max as usize, "cap {max}");
            // under a steady demand above the cap, the cap is reached
            let mut cap = FetchCap::new(max);
            let start = at + ms(5_000);
            let steady = (0..10_000u64).filter(|i| cap.admit(start + ms(*i))).count();
            assert_eq!(steady, 10 * max as usize, "cap {max}");
        }
    }

    #[test]
    fn a_huge_cap_allocates_only_what_starts() {
        let mut cap = FetchCap::new(u32::MAX);
        let t0 = Instant::now();
        assert!((0..100).all(|_| cap.admit(t0)));
        assert!(cap.started.capacity() < 1_000);
    }
}
