//! The hedge delay: fixed, or a percentile of recent first-attempt
//! latencies estimated with the cancelled attempts as censored
//! observations (see the [module docs](super#delay)).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tower_cql_core::{CqlError, Histogram, HistogramSnapshot, clock};

use super::HedgeDelay;

/// How long each of the two latency histograms covers.
pub(super) const ROTATE_EVERY: Duration = Duration::from_secs(10);
/// How often the percentile delay is recomputed.
pub(super) const REFRESH_EVERY: Duration = Duration::from_millis(100);
/// Latencies needed before the percentile is trusted.
const MIN_SAMPLES: u64 = 100;

pub(super) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Recent first-attempt latencies, some of them censored, and the delay
/// derived from them (see the module docs, "Delay").
#[derive(Debug)]
pub(super) struct LatencyTracker {
    /// Latencies of first attempts that answered: `completed[period % 2]`
    /// records the current period; the other holds the one before.
    completed: [Histogram; 2],
    /// Elapsed times of first attempts cancelled (or cut short) before they
    /// answered: each only says the latency was longer. Same periods.
    censored: [Histogram; 2],
    start: Instant,
    /// The current period (`elapsed / ROTATE_EVERY`).
    period: AtomicU64,
    /// The delay to use, in nanoseconds.
    delay: AtomicU64,
    /// When (nanoseconds after `start`) to recompute `delay`.
    next_refresh: AtomicU64,
    percentile: f64,
    min: Duration,
    max: Duration,
}

impl LatencyTracker {
    fn new(percentile: f64, min: Duration, max: Duration) -> LatencyTracker {
        LatencyTracker {
            completed: [Histogram::new(), Histogram::new()],
            censored: [Histogram::new(), Histogram::new()],
            start: clock::now(),
            period: AtomicU64::new(0),
            delay: AtomicU64::new(nanos(max)),
            next_refresh: AtomicU64::new(0),
            percentile,
            min,
            max,
        }
    }

    fn now(&self) -> u64 {
        nanos(clock::now().saturating_duration_since(self.start))
    }

    /// Moves to the period of `now`, clearing what has become too old.
    fn rotate(&self, now: u64) {
        let period = now / nanos(ROTATE_EVERY);
        let current = self.period.load(Ordering::Acquire);
        if period > current
            && self
                .period
                .compare_exchange(current, period, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // The histograms that become current hold a period at least two
            // old; the others the previous period's, or older still.
            // (A record racing with the reset may be lost: an estimate.)
            let reset = |i: u64| {
                self.completed[(i % 2) as usize].reset();
                self.censored[(i % 2) as usize].reset();
            };
            reset(period);
            if period > current + 1 {
                reset(period + 1);
            }
        }
    }

    /// A first attempt answered (or failed) after `latency`.
    fn record(&self, latency: Duration) {
        self.rotate(self.now());
        let period = self.period.load(Ordering::Acquire);
        self.completed[(period % 2) as usize].record_duration(latency);
    }

    /// A first attempt was given up on after `elapsed`, before it answered:
    /// its latency is longer than that.
    fn record_censored(&self, elapsed: Duration) {
        self.rotate(self.now());
        let period = self.period.load(Ordering::Acquire);
        self.censored[(period % 2) as usize].record_duration(elapsed);
    }

    /// The answered and the censored observations of the last two
    /// periods.
    pub(super) fn observations(&self) -> (HistogramSnapshot, HistogramSnapshot) {
        let mut completed = self.completed[0].snapshot();
        completed.merge(&self.completed[1].snapshot());
        let mut censored = self.censored[0].snapshot();
        censored.merge(&self.censored[1].snapshot());
        (completed, censored)
    }

    fn delay(&self) -> Duration {
        let now = self.now();
        let due = self.next_refresh.load(Ordering::Acquire);
        if now >= due
            && self
                .next_refresh
                .compare_exchange(
                    due,
                    now + nanos(REFRESH_EVERY),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        {
            self.rotate(now);
            let (completed, censored) = self.observations();
            let delay = if completed.count() + censored.count() >= MIN_SAMPLES {
                match product_limit_quantile(&completed, &censored, self.percentile) {
                    Some(q) => Duration::from_nanos(q).clamp(self.min, self.max),
                    // The percentile lies beyond every attempt that answered:
                    // all that is known is that it is long. Hedge late, and
                    // the attempts that then answer show how late.
                    None => self.max,
                }
            } else {
                self.max
            };
            self.delay.store(nanos(delay), Ordering::Release);
        }
        Duration::from_nanos(self.delay.load(Ordering::Acquire))
    }
}

/// The `q`-quantile of latencies observed as `completed` (answered after
/// the value) and `censored` (given up on after the value, so longer),
/// by the product-limit (Kaplan-Meier) estimate over the histograms'
/// buckets: the latency by which the estimated fraction still unanswered
/// falls to `1 - q` or below. `None` when it never does: too many of the
/// slow attempts were given up on to say where the quantile lies.
///
/// The value is its bucket's midpoint, clamped into the completed
/// latencies' `[min, max]`: within the histogram's 1/64 of the exact
/// answer. With nothing censored it is the nearest-rank quantile.
fn product_limit_quantile(
    completed: &HistogramSnapshot,
    censored: &HistogramSnapshot,
    q: f64,
) -> Option<u64> {
    let (min, max) = (completed.min()?, completed.max()?);
    // a rounding margin, so that "at most 1 - q" holds when it is exact
    let target = (1.0 - q) + 1e-9;
    let mut at_risk = completed.count() + censored.count();
    let mut survival = 1.0f64;
    let mut done = completed.buckets().peekable();
    let mut cut = censored.buckets().peekable();
    loop {
        // the next bucket, in either; a bucket's answers are counted
        // before the attempts given up on in it (those were still running)
        let (lo, hi) = match (done.peek(), cut.peek()) {
            (Some(&(a, b, _)), Some(&(c, _, _))) if a <= c => (a, b),
            (Some(&(a, b, _)), None) => (a, b),
            (_, Some(&(c, d, _))) => (c, d),
            (None, None) => return None,
        };
        let answered = match done.peek() {
            Some(&(a, _, n)) if a == lo => {
                done.next();
                n
            }
            _ => 0,
        };
        let given_up = match cut.peek() {
            Some(&(c, _, n)) if c == lo => {
                cut.next();
                n
            }
            _ => 0,
        };
        if answered > 0 && at_risk > 0 {
            survival *= 1.0 - answered as f64 / at_risk as f64;
            if survival <= target {
                let mid = lo + (hi - lo) / 2;
                return Some(mid.clamp(min, max));
            }
        }
        at_risk = at_risk.saturating_sub(answered + given_up);
    }
}

/// Where the hedge delay comes from.
#[derive(Debug)]
pub(super) enum DelaySource {
    Fixed(Duration),
    /// Boxed: four histograms' handles, made once per layer.
    Percentile(Box<LatencyTracker>),
}

impl DelaySource {
    pub(super) fn new(delay: HedgeDelay) -> DelaySource {
        match delay {
            HedgeDelay::Fixed(d) => DelaySource::Fixed(d),
            HedgeDelay::Percentile {
                percentile,
                min,
                max,
            } => DelaySource::Percentile(Box::new(LatencyTracker::new(percentile, min, max))),
        }
    }

    /// The delay a request arriving now hedges after.
    pub(super) fn current(&self) -> Duration {
        match self {
            DelaySource::Fixed(d) => *d,
            DelaySource::Percentile(t) => t.delay(),
        }
    }

    /// Whether the delay is learned from latencies (worth a clock read).
    pub(super) fn learns(&self) -> bool {
        matches!(self, DelaySource::Percentile(_))
    }

    /// The race's first attempt ended after `elapsed`, having observed
    /// `observed`.
    pub(super) fn observe(&self, observed: Observed, elapsed: Duration) {
        if let DelaySource::Percentile(t) = self {
            match observed {
                Observed::Answered => t.record(elapsed),
                Observed::Censored => t.record_censored(elapsed),
                Observed::Nothing => {}
            }
        }
    }
}

/// What the end of a race's first attempt says about its latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Observed {
    /// It answered, with a result or an error from a node: its latency.
    Answered,
    /// It was cancelled because another attempt won, or the client gave up
    /// on it (a per-attempt timeout, the deadline): its latency is longer
    /// than the time it ran.
    Censored,
    /// It never reached a node: nothing about latency.
    Nothing,
}

impl Observed {
    /// What a first attempt that failed with `err` observed.
    pub(super) fn failed(err: &CqlError) -> Observed {
        // the one classifier says whether the client stopped waiting
        if tower_cql_core::classify::classify(err, false).cut_short {
            Observed::Censored
        } else if err.was_not_sent() {
            Observed::Nothing
        } else {
            Observed::Answered
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_product_limit_quantile() {
        let snapshot = |values: &[(u32, u64)]| {
            let h = Histogram::new();
            for &(ms, n) in values {
                for _ in 0..n {
                    h.record_duration(ms * MS);
                }
            }
            h.snapshot()
        };
        let ms = |v: Option<u64>| v.map(Duration::from_nanos);
        // within the histogram's 1/64
        let near = |got: Option<u64>, want: u32| {
            let (got, want) = (ms(got).unwrap(), want * MS);
            got.abs_diff(want) <= want / 64
        };
        // nothing censored: the nearest-rank quantile (for a `q` that is
        // not a tie, where rounding may pick either side)
        let none = snapshot(&[]);
        let data = snapshot(&[(1, 30), (2, 25), (7, 20), (40, 15), (300, 10)]);
        for (q, want) in [
            (0.5, 2),
            (0.6, 7),
            (0.8, 40),
            (0.85, 40),
            (0.95, 300),
            (0.999, 300),
        ] {
            let got = product_limit_quantile(&data, &none, q);
            assert!(near(got, want), "q = {q}: {:?}", ms(got));
        }
        // 50 answered at 10 ms, 40 given up on at 20 ms, 10 answered at
        // 30 ms: half answered by 10 ms; of the 10 attempts known to run
        // past 20 ms, all answered at 30 ms. So 60 % have answered only by
        // 30 ms. (Dropping the censored ones would say 10 ms; recording
        // them as latencies, 20 ms.)
        let answered = snapshot(&[(10, 50), (30, 10)]);
        let cut = snapshot(&[(20, 40)]);
        for (q, want) in [(0.5, 10), (0.6, 30), (0.9, 30)] {
            let got = product_limit_quantile(&answered, &cut, q);
            assert!(near(got, want), "q = {q}: {:?}", ms(got));
        }
        // the slow ones were all given up on: the 90th percentile is
        // beyond anything seen
        let answered = snapshot(&[(2, 50)]);
        let cut = snapshot(&[(7, 50)]);
        assert!(near(product_limit_quantile(&answered, &cut, 0.5), 2));
        assert_eq!(product_limit_quantile(&answered, &cut, 0.9), None);
        // nothing answered: nothing known
        assert_eq!(product_limit_quantile(&none, &cut, 0.5), None);
    }

    #[tokio::test(start_paused = true)]
    async fn old_latencies_rotate_out() {
        let t = LatencyTracker::new(0.5, Duration::ZERO, Duration::from_secs(1));
        for _ in 0..100 {
            t.record(100 * MS);
        }
        tokio::time::advance(REFRESH_EVERY).await;
        // within the histogram's 1/64 relative error
        let d = t.delay();
        assert!(d.abs_diff(100 * MS) <= 100 * MS / 64, "{d:?}");
        // next period: the old one still counts (10-20 s of history)
        tokio::time::advance(ROTATE_EVERY).await;
        for _ in 0..300 {
            t.record(10 * MS);
        }
        tokio::time::advance(REFRESH_EVERY).await;
        let d = t.delay();
        assert!(
            d.abs_diff(10 * MS) < MS,
            "the median of 100 x 100 ms and 300 x 10 ms: {d:?}"
        );
        assert_eq!(
            t.completed[0].snapshot().count() + t.completed[1].snapshot().count(),
            400
        );
        // a period later, the 100 ms ones are gone
        tokio::time::advance(ROTATE_EVERY).await;
        t.record(10 * MS);
        assert_eq!(
            t.completed[0].snapshot().count() + t.completed[1].snapshot().count(),
            301
        );
    }
}
