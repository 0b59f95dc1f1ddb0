//! A lock-free, fixed-size, log-linear latency histogram.
//!
//! ```
//! use std::time::Duration;
//! use tower_cql_core::histogram::Histogram;
//!
//! let h = Histogram::new();
//! for micros in 1..=1000u64 {
//!     h.record(micros * 1_000); // 1 µs ..= 1 ms, in nanoseconds
//! }
//! h.record_duration(Duration::from_millis(5));
//!
//! let s = h.snapshot();
//! assert_eq!(s.count(), 1001);
//! assert_eq!(s.min(), Some(1_000));
//! assert_eq!(s.max(), Some(5_000_000));
//! assert_eq!(s.quantile(1.0), Some(5_000_000)); // q = 1 is the exact max
//!
//! // The nearest-rank p50 of these 1001 values is exactly 501 µs; the
//! // estimate is within 1/64 of it.
//! let p50 = s.quantile(0.5).unwrap() as f64;
//! assert!((p50 - 501_000.0).abs() / 501_000.0 <= 1.0 / 64.0);
//! ```
//!
//! # Bucketing
//!
//! Values are `u64` nanoseconds. With `S = 5` sub-bucket bits:
//!
//! * every value below `2^S = 32` (in fact below 64) has a bucket of its own,
//!   so small values are exact;
//! * each power of two `[2^e, 2^(e+1))` with `5 <= e < 40` is split into
//!   `2^S = 32` equal, linear sub-buckets of width `2^(e-5)`;
//! * one overflow bucket holds everything `>= 2^40` ns (about 18.3 minutes).
//!   Such values are counted and summed exactly and [`HistogramSnapshot::max`]
//!   keeps the true largest value, but a quantile that falls among them is
//!   only known to lie in `[2^40, max]` (the estimate, the bucket's midpoint
//!   clamped into `[min, max]`, is in practice `max`).
//!
//! That is `32 + 35 * 32 + 1 = 1153` buckets.
//!
//! # Why not a crate
//!
//! Recording happens on every request from every task at once. The
//! `hdrhistogram` crate records through `&mut self` (its shared form,
//! `SyncHistogram`, collects per-thread recorders on a refresh), so using it
//! here would mean a lock or a refresh protocol on the hot path. This one is
//! fixed size, records with a few relaxed atomic adds through `&self`, and
//! its loom model and error bound are tested here.
//!
//! # Error bound
//!
//! A quantile is reported as the midpoint of the bucket holding the wanted
//! rank, clamped into `[min, max]`. A bucket in the row of `2^e` has width
//! `2^(e-5)` and holds only values `>= 2^e`, so the estimate is off by at
//! most half a width: a relative error of at most `2^(e-6) / 2^e = 1/64`
//! (≈ 1.56 %) for every value below `2^40`, and zero below 64. Clamping into
//! `[min, max]` only moves the estimate towards the exact answer.
//!
//! # Memory
//!
//! The buckets are one `Box<[AtomicU64]>` allocated in [`Histogram::new`] and
//! never grown: `1153 * 8 = 9224` bytes plus the 40-byte struct, so
//! [`Histogram::MEMORY_BYTES`] is 9264 bytes per histogram (per series) on a
//! 64-bit target. A [`HistogramSnapshot`] is sparse: 16 bytes per non-empty
//! bucket.
//!
//! # Quantile definition
//!
//! [`HistogramSnapshot::quantile`] uses the nearest-rank definition: for `n`
//! recorded values sorted ascending, the `q`-quantile is the value of rank
//! `ceil(q * n)` (1-based, and at least 1). `q = 0` is the exact min and
//! `q = 1` the exact max.
//!
//! # Concurrency
//!
//! [`Histogram::record`] takes `&self`, never locks and never allocates: one
//! `fetch_add` on the value's bucket, one `fetch_add` on the sum, and a
//! `fetch_max` on the max or a `fetch_min` on the min only when a plain
//! load says the value is a new extreme. All of them use
//! [`Ordering::Relaxed`]: a read-modify-write on one atomic never
//! loses an update whatever the ordering, the counters publish no other
//! memory that a reader would need to see, and no ordering short of a lock
//! could make several separate atomics change together anyway. Once the
//! recording threads are joined (or otherwise synchronised with), a snapshot
//! sees every record exactly.
//!
//! A [`Histogram::snapshot`] taken *while* records are in flight reads each
//! atomic once, so it may see a record's bucket but not yet its sum, min or
//! max, or the other way round. It is never nonsense: its count is the sum
//! of the buckets it read (so count and quantiles agree), its min and max
//! lie in the lowest and highest non-empty bucket it read (a raw value that
//! does not is replaced by that bucket's lower bound), and its mean and
//! quantiles are clamped into `[min, max]`. Only the sum may include or miss a
//! record independently of the buckets.
//!
//! Built with `--cfg tower_cql_loom` (the loom model checker), the same code
//! runs over a 17-bucket layout (`S = 2`, overflow from 32) so that the model
//! stays fast; the numbers above are those of normal builds.

use std::fmt;
use std::time::Duration;

use crate::sync::{AtomicU64, Ordering};

/// `S`: each power of two above `2^S` is split into `2^S` linear sub-buckets.
#[cfg(not(tower_cql_loom))]
const SUB_BITS: u32 = 5;
/// Values `>= 2^RANGE_BITS` ns share the overflow bucket.
#[cfg(not(tower_cql_loom))]
const RANGE_BITS: u32 = 40;

// Under loom every bucket is a modelled atomic, created in every explored
// execution and loaded by every snapshot. Loom's state space does not grow
// with buckets that nobody writes, but the time per execution does (about
// 1.15 ms with 1153 buckets, 0.15 ms with 17), so the model runs the same
// code over a tiny layout: 4 exact buckets, 4 sub-buckets for each of the
// powers of two 4, 8 and 16, then the overflow bucket from 32.
#[cfg(tower_cql_loom)]
const SUB_BITS: u32 = 2;
#[cfg(tower_cql_loom)]
const RANGE_BITS: u32 = 5;

/// `2^S`.
const SUB_COUNT: u64 = 1 << SUB_BITS;
/// Index of the overflow bucket, which is also the last one.
const OVERFLOW_INDEX: usize = ((RANGE_BITS - SUB_BITS + 1) as usize) << SUB_BITS;
/// Number of buckets.
const BUCKET_COUNT: usize = OVERFLOW_INDEX + 1;

/// The bucket that `value` is counted in: always `< BUCKET_COUNT`.
#[inline]
pub(crate) fn bucket_index(value: u64) -> usize {
    if value < SUB_COUNT {
        return value as usize;
    }
    // `exp >= SUB_BITS`: the position of the highest set bit.
    let exp = u64::BITS - 1 - value.leading_zeros();
    if exp >= RANGE_BITS {
        return OVERFLOW_INDEX;
    }
    let shift = exp - SUB_BITS;
    // `value >> shift` keeps the top `S + 1` bits, in `[2^S, 2^(S+1))`: its
    // low `S` bits pick the sub-bucket, and each row of `2^S` buckets starts
    // at `(shift + 1) << S`, which folds into this sum.
    ((shift as usize) << SUB_BITS) + (value >> shift) as usize
}

/// The values `[first, last]` (both inclusive) that bucket `index` holds.
///
/// The overflow bucket's `last` is `u64::MAX`. `index` must be below
/// `BUCKET_COUNT`.
pub(crate) fn bucket_range(index: usize) -> (u64, u64) {
    debug_assert!(index < BUCKET_COUNT, "bucket index {index} out of range");
    if index >= OVERFLOW_INDEX {
        return (1 << RANGE_BITS, u64::MAX);
    }
    if index < SUB_COUNT as usize {
        return (index as u64, index as u64);
    }
    // Inverse of `bucket_index`: row `shift + 1`, mantissa `2^S + sub`.
    let shift = (index >> SUB_BITS) as u32 - 1;
    let mantissa = (index as u64 & (SUB_COUNT - 1)) | SUB_COUNT;
    let first = mantissa << shift;
    (first, first + ((1u64 << shift) - 1))
}

/// Nearest rank `ceil(q * count)`, clamped into `[1, count]`; `q` is clamped
/// into `[0, 1]` and must not be NaN. `count` must be at least 1.
fn nearest_rank(q: f64, count: u64) -> u64 {
    let q = q.clamp(0.0, 1.0);
    // The float-to-int cast saturates, and the clamp keeps rank in range.
    ((q * count as f64).ceil() as u64).clamp(1, count)
}

/// A lock-free latency histogram with fixed, bounded memory.
///
/// Record from any number of threads through `&self` (share it with an
/// `Arc`, or a `static` holder); read it with [`Histogram::snapshot`]. See the
/// [module documentation](self) for the bucket layout, the 1/64 relative
/// error bound, the range and the memory per histogram.
pub struct Histogram {
    /// One counter per bucket; see [`bucket_index`].
    buckets: Box<[AtomicU64]>,
    /// Sum of all recorded values, wrapping modulo `2^64`.
    sum: AtomicU64,
    /// Smallest recorded value, `u64::MAX` when nothing was recorded.
    min: AtomicU64,
    /// Largest recorded value, 0 when nothing was recorded.
    max: AtomicU64,
}

impl Histogram {
    /// Number of buckets in every histogram: values below 64 exactly, 32
    /// linear sub-buckets per power of two up to `2^40`, one overflow bucket.
    pub const BUCKETS: usize = BUCKET_COUNT;

    /// Values at or above this many nanoseconds (`2^40`, about 18.3 minutes)
    /// share the overflow bucket: their count, sum and max stay exact, their
    /// quantiles do not.
    pub const MAX_TRACKED: u64 = 1 << RANGE_BITS;

    /// Bytes one histogram occupies, struct and bucket allocation together
    /// (9264 on 64-bit targets). Equal to [`Histogram::memory_bytes`].
    pub const MEMORY_BYTES: usize = size_of::<Histogram>() + BUCKET_COUNT * size_of::<AtomicU64>();

    /// An empty histogram. Allocates all [`Histogram::BUCKETS`] buckets once;
    /// nothing allocates afterwards.
    pub fn new() -> Histogram {
        Histogram {
            buckets: (0..BUCKET_COUNT).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            min: AtomicU64::new(u64::MAX),
            max: AtomicU64::new(0),
        }
    }

    /// Records one value, in nanoseconds. Lock-free and allocation-free.
    ///
    /// Values at or above [`Histogram::MAX_TRACKED`] are counted in the
    /// overflow bucket; the max still records the true value. The sum wraps
    /// modulo `2^64` (after about 584 years of total recorded time).
    #[inline]
    pub fn record(&self, value: u64) {
        // Relaxed throughout: see "Concurrency" in the module docs.
        self.buckets[bucket_index(value)].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
        // A read-modify-write on the extremes only for a value that is a
        // new one by a plain load: after the first records, almost none
        // is. (Each is a locked compare-and-swap loop, which waits for the
        // line even when `sum`'s `fetch_add` has just taken it.) A stale
        // load only ever sends a value to the read-modify-write, which
        // decides.
        if value > self.max.load(Ordering::Relaxed) {
            self.max.fetch_max(value, Ordering::Relaxed);
        }
        if value < self.min.load(Ordering::Relaxed) {
            self.min.fetch_min(value, Ordering::Relaxed);
        }
    }

    /// Records a duration as nanoseconds, saturating at `u64::MAX` (about
    /// 584 years).
    #[inline]
    pub fn record_duration(&self, d: Duration) {
        self.record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// A point-in-time copy of the histogram.
    ///
    /// Reads every atomic exactly once, without stopping writers: records
    /// running concurrently may or may not be included, but the snapshot is
    /// always self-consistent (see "Concurrency" in the module docs).
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets = Vec::new();
        for (index, bucket) in self.buckets.iter().enumerate() {
            let n = bucket.load(Ordering::Relaxed);
            if n != 0 {
                buckets.push((index as u32, n));
            }
        }
        let sum = self.sum.load(Ordering::Relaxed);
        let min = self.min.load(Ordering::Relaxed);
        let max = self.max.load(Ordering::Relaxed);
        HistogramSnapshot::from_raw(buckets, sum, min, max)
    }

    /// Clears the histogram back to empty.
    ///
    /// Each atomic is cleared on its own, so a record that runs concurrently
    /// with `reset` may survive in part (say in its bucket but not in the
    /// sum); snapshots stay self-consistent regardless.
    pub fn reset(&self) {
        for bucket in self.buckets.iter() {
            bucket.store(0, Ordering::Relaxed);
        }
        self.sum.store(0, Ordering::Relaxed);
        self.min.store(u64::MAX, Ordering::Relaxed);
        self.max.store(0, Ordering::Relaxed);
    }

    /// Bytes this histogram occupies: the struct plus its bucket allocation.
    /// Fixed for the histogram's life; equal to [`Histogram::MEMORY_BYTES`].
    pub fn memory_bytes(&self) -> usize {
        size_of::<Self>() + self.buckets.len() * size_of::<AtomicU64>()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Histogram {
    /// A summary (count, sum, min, max, p50, p99, size), not every bucket.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.snapshot();
        f.debug_struct("Histogram")
            .field("count", &s.count())
            .field("sum", &s.sum())
            .field("min", &s.min())
            .field("max", &s.max())
            .field("p50", &s.quantile(0.5))
            .field("p99", &s.quantile(0.99))
            .field("buckets", &self.buckets.len())
            .field("memory_bytes", &self.memory_bytes())
            .finish()
    }
}

/// An owned, immutable copy of a [`Histogram`]'s state.
///
/// Compact: only non-empty buckets are kept, as `(bucket index, count)`
/// pairs in ascending order. Snapshots of different histograms combine with
/// [`HistogramSnapshot::merge`]. The default value is the empty snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistogramSnapshot {
    /// Non-empty buckets, ascending by index, no zero counts.
    buckets: Vec<(u32, u64)>,
    /// Sum of the bucket counts.
    count: u64,
    /// Sum of the recorded values, wrapping modulo `2^64`.
    sum: u64,
    /// Smallest value; `None` exactly when `count == 0`.
    min: Option<u64>,
    /// Largest value; `None` exactly when `count == 0`.
    max: Option<u64>,
}

impl HistogramSnapshot {
    /// Builds a snapshot from independently read atomics, repairing whatever
    /// concurrent records left inconsistent between them.
    fn from_raw(buckets: Vec<(u32, u64)>, sum: u64, raw_min: u64, raw_max: u64) -> Self {
        let count = buckets
            .iter()
            .fold(0u64, |acc, &(_, n)| acc.saturating_add(n));
        let (Some(&(first, _)), Some(&(last, _))) = (buckets.first(), buckets.last()) else {
            // No bucket seen: empty, whatever the sum, min and max said.
            return Self::default();
        };
        // The true min lies in the lowest non-empty bucket and the true max in
        // the highest, but the raw atomics may be ahead of the buckets (a
        // record published its extreme, not yet its bucket) or behind them
        // (the other way round, or still the empty sentinels). Outside its
        // bucket a raw value is replaced by that bucket's lower bound, which
        // never invents a value larger than any recorded one (the overflow
        // bucket's upper bound is `u64::MAX`).
        let (lo_first, lo_last) = bucket_range(first as usize);
        let (hi_first, hi_last) = bucket_range(last as usize);
        // `u64::MAX` is min's empty sentinel but also a value the overflow
        // bucket holds; it is a real min only if max saw `u64::MAX` as well
        // (max's sentinel 0 needs no such care: bucket 0 holds only 0).
        let min_published = raw_min != u64::MAX || raw_max == u64::MAX;
        let min = if min_published && (lo_first..=lo_last).contains(&raw_min) {
            raw_min
        } else {
            lo_first
        };
        let max = if (hi_first..=hi_last).contains(&raw_max) {
            raw_max
        } else {
            hi_first
        };
        // `min > max` only within one bucket, when min was published and max
        // was not yet.
        let max = max.max(min);
        Self {
            buckets,
            count,
            sum,
            min: Some(min),
            max: Some(max),
        }
    }

    /// Number of recorded values: the sum of the bucket counts, so it always
    /// agrees with [`HistogramSnapshot::quantile`] and
    /// [`HistogramSnapshot::buckets`].
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of the recorded values in nanoseconds, wrapping modulo `2^64`.
    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// Smallest recorded value (exact), or `None` when empty.
    pub fn min(&self) -> Option<u64> {
        self.min
    }

    /// Largest recorded value (exact, even beyond
    /// [`Histogram::MAX_TRACKED`]), or `None` when empty.
    pub fn max(&self) -> Option<u64> {
        self.max
    }

    /// Arithmetic mean, `sum / count`, clamped into `[min, max]`; `None`
    /// when empty.
    pub fn mean(&self) -> Option<f64> {
        let (min, max) = (self.min?, self.max?);
        if self.count == 0 {
            return None;
        }
        Some((self.sum as f64 / self.count as f64).clamp(min as f64, max as f64))
    }

    /// Estimated `q`-quantile, `q` in `[0, 1]` (values outside are clamped
    /// into it); `None` when empty or when `q` is NaN.
    ///
    /// Nearest-rank definition: the value of rank `max(1, ceil(q * count))`
    /// in ascending order. Rank 1 (`q = 0`) returns the exact min and rank
    /// `count` (`q = 1`) the exact max. Any other rank returns the midpoint of
    /// its bucket clamped into `[min, max]`: within 1/64 of the exact answer
    /// below [`Histogram::MAX_TRACKED`], exact below 64.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let (min, max) = (self.min?, self.max?);
        if self.count == 0 || q.is_nan() {
            return None;
        }
        let rank = nearest_rank(q, self.count);
        if rank == 1 {
            return Some(min);
        }
        if rank == self.count {
            return Some(max);
        }
        let mut seen = 0u64;
        for &(index, n) in &self.buckets {
            seen = seen.saturating_add(n);
            if seen >= rank {
                let (first, last) = bucket_range(index as usize);
                // `first + width / 2`, written so the overflow bucket's width
                // (which is `2^64 - 2^40`) cannot overflow.
                let mid = first + (last - first).div_ceil(2);
                return Some(mid.clamp(min, max));
            }
        }
        Some(max)
    }

    /// Adds `other` into `self`, as if every value recorded into `other` had
    /// been recorded into `self`'s histogram too. Counts saturate; the sum
    /// wraps, like [`Histogram::record`]'s.
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        if other.buckets.is_empty() {
            self.sum = self.sum.wrapping_add(other.sum);
            return;
        }
        let mut merged = Vec::with_capacity(self.buckets.len() + other.buckets.len());
        let (mut a, mut b) = (
            self.buckets.iter().peekable(),
            other.buckets.iter().peekable(),
        );
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(&&(ia, na)), Some(&&(ib, nb))) => {
                    if ia < ib {
                        a.next();
                        (ia, na)
                    } else if ib < ia {
                        b.next();
                        (ib, nb)
                    } else {
                        a.next();
                        b.next();
                        (ia, na.saturating_add(nb))
                    }
                }
                (Some(&&x), None) => {
                    a.next();
                    x
                }
                (None, Some(&&x)) => {
                    b.next();
                    x
                }
                (None, None) => break,
            };
            merged.push(next);
        }
        self.buckets = merged;
        self.count = self.count.saturating_add(other.count);
        self.sum = self.sum.wrapping_add(other.sum);
        self.min = self.min.into_iter().chain(other.min).min();
        self.max = self.max.into_iter().chain(other.max).max();
    }

    /// The non-empty buckets in ascending order, as `(lower bound inclusive,
    /// upper bound exclusive, count)` in nanoseconds, for exporters
    /// (Prometheus or OpenTelemetry explicit buckets: accumulate the counts
    /// for cumulative `le` buckets).
    ///
    /// Empty buckets are skipped. The overflow bucket, starting at
    /// [`Histogram::MAX_TRACKED`], reports `u64::MAX` as its upper bound and
    /// means "unbounded" (`+Inf`).
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.buckets.iter().map(|&(index, n)| {
            let (first, last) = bucket_range(index as usize);
            (first, last.saturating_add(1), n)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Interesting values: small ones, every power of two and its
    /// neighbours, the range edge, `u64::MAX`, and a pseudo-random spread.
    fn sample_values() -> Vec<u64> {
        let mut values: Vec<u64> = (0..200).collect();
        for bit in 0..64 {
            let p = 1u64 << bit;
            values.extend([p - 1, p, p + 1, p | (p >> 1), p.wrapping_mul(3) / 2]);
        }
        values.extend([
            Histogram::MAX_TRACKED - 1,
            Histogram::MAX_TRACKED,
            u64::MAX - 1,
            u64::MAX,
        ]);
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push(x >> (x % 64));
        }
        values
    }

    #[test]
    #[cfg(not(tower_cql_loom))]
    fn layout_constants() {
        assert_eq!(SUB_COUNT, 32);
        assert_eq!(BUCKET_COUNT, 32 + 35 * 32 + 1);
        assert_eq!(Histogram::BUCKETS, 1153);
        assert_eq!(Histogram::MAX_TRACKED, 1 << 40);
        if cfg!(target_pointer_width = "64") {
            assert_eq!(Histogram::MEMORY_BYTES, 9264);
        }
    }

    #[test]
    fn exact_below_two_pow_s() {
        // Exact below 2^S by design, and in fact below 2^(S+1).
        for v in 0..2 * SUB_COUNT {
            let i = bucket_index(v);
            assert_eq!(i as u64, v);
            assert_eq!(bucket_range(i), (v, v));
        }
        // From 2^(S+1) on, buckets are wider than one value.
        let v = 2 * SUB_COUNT;
        assert_eq!(bucket_range(bucket_index(v)), (v, v + 1));
    }

    #[test]
    fn boundaries_monotonic_and_contiguous() {
        assert_eq!(bucket_range(0).0, 0);
        assert_eq!(bucket_range(OVERFLOW_INDEX), (1 << RANGE_BITS, u64::MAX));
        for i in 0..BUCKET_COUNT {
            let (first, last) = bucket_range(i);
            assert!(first <= last, "bucket {i}: {first} > {last}");
            if i + 1 < BUCKET_COUNT {
                assert_eq!(last + 1, bucket_range(i + 1).0, "gap after bucket {i}");
            }
            if (SUB_COUNT as usize..OVERFLOW_INDEX).contains(&i) {
                // Width at most first / 2^S: the 1/64 bound's premise.
                assert!(
                    (last - first + 1) * SUB_COUNT <= first,
                    "bucket {i} too wide"
                );
            }
        }
    }

    #[test]
    fn index_bounds_index_round_trips() {
        for v in sample_values() {
            let i = bucket_index(v);
            assert!(i < BUCKET_COUNT, "{v} -> {i}");
            let (first, last) = bucket_range(i);
            assert!(
                (first..=last).contains(&v),
                "{v} not in bucket {i} [{first}, {last}]"
            );
            assert_eq!(bucket_index(first), i);
            assert_eq!(bucket_index(last), i);
        }
        for i in 0..BUCKET_COUNT {
            let (first, last) = bucket_range(i);
            assert_eq!(bucket_index(first), i);
            assert_eq!(bucket_index(last), i);
            assert_eq!(bucket_index(first + (last - first) / 2), i);
        }
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(1), 1);
        assert_eq!(bucket_index(u64::MAX), OVERFLOW_INDEX);
    }

    proptest! {
    #[test]
    fn any_value_lands_in_its_bucket(v in any::<u64>()) {
        let i = bucket_index(v);
        prop_assert!(i < BUCKET_COUNT);
        let (first, last) = bucket_range(i);
        prop_assert!(first <= v && v <= last);
        prop_assert_eq!(bucket_index(first), i);
        prop_assert_eq!(bucket_index(last), i);
    }
    }

    #[test]
    fn nearest_rank_definition() {
        assert_eq!(nearest_rank(0.0, 10), 1);
        assert_eq!(nearest_rank(0.1, 10), 1);
        assert_eq!(nearest_rank(0.11, 10), 2);
        assert_eq!(nearest_rank(0.5, 10), 5);
        assert_eq!(nearest_rank(0.5, 11), 6);
        assert_eq!(nearest_rank(1.0, 10), 10);
        assert_eq!(nearest_rank(-3.0, 10), 1);
        assert_eq!(nearest_rank(7.0, 10), 10);
        assert_eq!(nearest_rank(1.0, u64::MAX), u64::MAX);
    }

    #[test]
    fn torn_reads_are_repaired() {
        // A value inside a linear bucket, whatever the layout (193 in
        // [192, 196) normally).
        let v = 6 * SUB_COUNT + 1;
        let i = bucket_index(v) as u32;
        let (first, last) = bucket_range(i as usize);
        assert!(first < v && v < last);

        // A record seen in its bucket but not yet in min/max.
        let s = HistogramSnapshot::from_raw(vec![(i, 1)], 0, u64::MAX, 0);
        assert_eq!(s.count(), 1);
        let (min, max) = (s.min().unwrap(), s.max().unwrap());
        assert!(first <= min && min <= max && max <= last);
        assert_eq!((min, max), (first, first));
        let q = s.quantile(0.5).unwrap();
        assert!((min..=max).contains(&q));
        let mean = s.mean().unwrap();
        assert!(min as f64 <= mean && mean <= max as f64);

        // Min/max already updated by records whose buckets were not read.
        let s = HistogramSnapshot::from_raw(vec![(i, 2)], 5_000, 1, u64::MAX);
        assert_eq!((s.min(), s.max()), (Some(first), Some(first)));

        // Min published, max not yet: max is raised to min.
        let s = HistogramSnapshot::from_raw(vec![(i, 1)], v, v, 0);
        assert_eq!((s.min(), s.max()), (Some(v), Some(v)));

        // Only an unpublished overflow record: no invented `u64::MAX`.
        let o = OVERFLOW_INDEX as u32;
        let s = HistogramSnapshot::from_raw(vec![(o, 1)], 0, u64::MAX, 0);
        let edge = Some(Histogram::MAX_TRACKED);
        assert_eq!((s.min(), s.max(), s.quantile(0.5)), (edge, edge, edge));
        // ...but a recorded `u64::MAX` is the real min and max.
        let s = HistogramSnapshot::from_raw(vec![(o, 1)], u64::MAX, u64::MAX, u64::MAX);
        assert_eq!((s.min(), s.max()), (Some(u64::MAX), Some(u64::MAX)));

        // Extremes in different buckets, one stale each.
        let j = OVERFLOW_INDEX as u32 - 1;
        let w = bucket_range(j as usize).0;
        assert!(w > last);
        let s = HistogramSnapshot::from_raw(vec![(i, 1), (j, 1)], 0, u64::MAX, 7);
        assert_eq!((s.min(), s.max()), (Some(first), Some(w)));

        // Sum, min and max seen but no bucket: empty.
        let s = HistogramSnapshot::from_raw(Vec::new(), 42, 42, 42);
        assert_eq!(s, HistogramSnapshot::default());
    }

    #[test]
    fn empty_snapshot() {
        let s = HistogramSnapshot::default();
        assert_eq!(s.count(), 0);
        assert_eq!(s.sum(), 0);
        assert_eq!(s.min(), None);
        assert_eq!(s.max(), None);
        assert_eq!(s.mean(), None);
        assert_eq!(s.quantile(0.5), None);
        assert_eq!(s.quantile(1.0), None);
        assert_eq!(s.buckets().count(), 0);
    }

    /// Tests that drive `Histogram` itself: std atomics only, since loom's
    /// panic outside `loom::model`.
    #[cfg(not(tower_cql_loom))]
    mod recording {
        use super::*;
        use std::sync::Arc;

        /// Exact nearest-rank quantile of `sorted` (ascending, non-empty).
        fn exact_quantile(sorted: &[u64], q: f64) -> u64 {
            let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
            sorted[rank.min(sorted.len()) - 1]
        }

        fn snapshot_of(values: &[u64]) -> HistogramSnapshot {
            let h = Histogram::new();
            for &v in values {
                h.record(v);
            }
            h.snapshot()
        }

        #[test]
        fn send_sync_default_debug() {
            fn assert_send_sync<T: Send + Sync + 'static>() {}
            assert_send_sync::<Histogram>();
            assert_send_sync::<HistogramSnapshot>();

            let h = Histogram::default();
            assert_eq!(h.snapshot(), HistogramSnapshot::default());
            assert_eq!(h.memory_bytes(), Histogram::MEMORY_BYTES);
            h.record(7);
            let debug = format!("{h:?}");
            assert!(debug.starts_with("Histogram {"), "{debug}");
            assert!(debug.contains("count: 1"), "{debug}");
            assert!(debug.len() < 300, "debug must be a summary: {debug}");
        }

        #[test]
        fn small_values_are_exact() {
            let values: Vec<u64> = (0..64).collect();
            let s = snapshot_of(&values);
            assert_eq!(s.count(), 64);
            assert_eq!(s.sum(), 63 * 64 / 2);
            assert_eq!(s.min(), Some(0));
            assert_eq!(s.max(), Some(63));
            for k in 1..=64u64 {
                let q = k as f64 / 64.0;
                assert_eq!(s.quantile(q), Some(k - 1), "q = {q}");
            }
            assert_eq!(s.quantile(0.0), Some(0));
            assert_eq!(s.mean(), Some(31.5));
        }

        #[test]
        fn quantile_edges() {
            let s = snapshot_of(&[10, 20, 30]);
            assert_eq!(s.quantile(0.0), Some(10));
            assert_eq!(s.quantile(-1.0), Some(10));
            assert_eq!(s.quantile(0.34), Some(20));
            assert_eq!(s.quantile(1.0), Some(30));
            assert_eq!(s.quantile(2.0), Some(30));
            assert_eq!(s.quantile(f64::NAN), None);
        }

        #[test]
        fn overflow_bucket_and_duration_saturation() {
            let h = Histogram::new();
            h.record(1 << 50);
            h.record_duration(Duration::MAX);
            h.record_duration(Duration::from_micros(3));
            let s = h.snapshot();
            assert_eq!(s.count(), 3);
            assert_eq!(s.min(), Some(3_000));
            assert_eq!(s.max(), Some(u64::MAX));
            assert_eq!(
                s.sum(),
                (1u64 << 50).wrapping_add(u64::MAX).wrapping_add(3_000)
            );
            // Rank 2 of 3 is in the overflow bucket: clamped into [2^40, max].
            let p50 = s.quantile(0.5).unwrap();
            assert!(p50 >= Histogram::MAX_TRACKED);
            let buckets: Vec<_> = s.buckets().collect();
            assert_eq!(buckets.len(), 2);
            assert_eq!(buckets[1], (Histogram::MAX_TRACKED, u64::MAX, 2));
            let (lo, hi, n) = buckets[0];
            assert!(lo <= 3_000 && 3_000 < hi && n == 1);

            // A lone huge value: every quantile is the exact max.
            let s = snapshot_of(&[1 << 45]);
            assert_eq!(s.quantile(0.5), Some(1 << 45));
        }

        #[test]
        fn buckets_for_exporters() {
            let s = snapshot_of(&[5, 5, 100, 101, 1_000_000]);
            let buckets: Vec<_> = s.buckets().collect();
            assert_eq!(buckets.iter().map(|b| b.2).sum::<u64>(), s.count());
            assert_eq!(buckets[0], (5, 6, 2));
            assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].0));
            for &(lo, hi, _) in &buckets {
                assert!(lo < hi);
            }
            assert!(
                buckets
                    .iter()
                    .any(|&(lo, hi, n)| lo <= 1_000_000 && 1_000_000 < hi && n == 1)
            );
        }

        #[test]
        fn reset_clears() {
            let h = Histogram::new();
            h.record(1);
            h.record(1 << 30);
            h.reset();
            assert_eq!(h.snapshot(), HistogramSnapshot::default());
            h.record(9);
            let s = h.snapshot();
            assert_eq!(
                (s.count(), s.sum(), s.min(), s.max()),
                (1, 9, Some(9), Some(9))
            );
        }

        #[test]
        fn four_threads_record_concurrently() {
            const THREADS: u64 = 4;
            const PER_THREAD: u64 = 250_000;
            let h = Arc::new(Histogram::new());
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let h = Arc::clone(&h);
                    std::thread::spawn(move || {
                        for i in 0..PER_THREAD {
                            h.record((t * PER_THREAD + i) * 4_099 + 1);
                        }
                    })
                })
                .collect();
            for handle in handles {
                handle.join().unwrap();
            }
            let n = THREADS * PER_THREAD;
            let s = h.snapshot();
            assert_eq!(s.count(), n);
            assert_eq!(s.sum(), 4_099 * (n * (n - 1) / 2) + n);
            assert_eq!(s.min(), Some(1));
            assert_eq!(s.max(), Some((n - 1) * 4_099 + 1));
            assert_eq!(s.buckets().map(|b| b.2).sum::<u64>(), n);
        }

        #[test]
        fn merge_equals_recording_both() {
            let a: Vec<u64> = (0..5_000).map(|i| i * 37 % 1_000_003 + 1).collect();
            let b: Vec<u64> = (0..3_000)
                .map(|i| i * i * 1_013 + 50)
                .chain([1 << 45])
                .collect();
            let both: Vec<u64> = a.iter().chain(&b).copied().collect();

            let mut merged = snapshot_of(&a);
            merged.merge(&snapshot_of(&b));
            assert_eq!(merged, snapshot_of(&both));

            let mut other_way = snapshot_of(&b);
            other_way.merge(&snapshot_of(&a));
            assert_eq!(other_way, merged);

            // The empty snapshot is the identity on both sides.
            let mut left = HistogramSnapshot::default();
            left.merge(&merged);
            assert_eq!(left, merged);
            let mut right = merged.clone();
            right.merge(&HistogramSnapshot::default());
            assert_eq!(right, merged);
        }

        fn value() -> impl Strategy<Value = u64> {
            prop_oneof![
                1u64..1_000_000_000_000,
                1u64..100_000,
                1_000_000u64..1_050_000,
                Just(1u64),
            ]
        }

        proptest! {
            #[test]
            fn quantiles_within_two_percent(values in prop::collection::vec(value(), 1..2_000)) {
                let s = snapshot_of(&values);
                let mut sorted = values.clone();
                sorted.sort_unstable();
                prop_assert_eq!(s.count(), values.len() as u64);
                prop_assert_eq!(s.sum(), values.iter().sum::<u64>());
                prop_assert_eq!(s.min(), sorted.first().copied());
                prop_assert_eq!(s.max(), sorted.last().copied());
                prop_assert_eq!(s.quantile(1.0), sorted.last().copied());
                prop_assert_eq!(s.quantile(0.0), sorted.first().copied());
                for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
                    let exact = exact_quantile(&sorted, q);
                    let estimate = s.quantile(q).unwrap();
                    let error = (estimate as f64 - exact as f64).abs() / exact as f64;
                    // 2 % is the contract; the design bound is 1/64.
                    prop_assert!(error <= 0.02, "q={} exact={} estimate={} error={}", q, exact, estimate, error);
                    prop_assert!(error <= 1.0 / 64.0, "q={} exact={} estimate={} error={}", q, exact, estimate, error);
                }
            }

            #[test]
            fn merge_matches_combined(
                a in prop::collection::vec(value(), 0..300),
                b in prop::collection::vec(value(), 0..300),
            ) {
                let mut merged = snapshot_of(&a);
                merged.merge(&snapshot_of(&b));
                let both: Vec<u64> = a.iter().chain(&b).copied().collect();
                prop_assert_eq!(merged, snapshot_of(&both));
            }

        }
    }
}

/// Loom model of concurrent records and a snapshot. Run with
/// `RUSTFLAGS="--cfg tower_cql_loom" cargo test --release loom`.
#[cfg(all(test, tower_cql_loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// Two threads record two values each (exact, linear and overflow
    /// buckets, one bucket shared) while the main thread takes a snapshot.
    ///
    /// Exhaustive exploration of this model does not finish in reasonable
    /// time, so preemptions are bounded at 2 (62 249 executions, about 7 s in
    /// release) unless `LOOM_MAX_PREEMPTIONS` says otherwise.
    #[test]
    fn loom_records_race_a_snapshot() {
        const VALUES: [[u64; 2]; 2] = [[3, 20], [20, 100]];
        const TOTAL_COUNT: u64 = 4;
        const TOTAL_SUM: u64 = 3 + 20 + 20 + 100;

        let mut builder = loom::model::Builder::new();
        if builder.preemption_bound.is_none() {
            builder.preemption_bound = Some(2);
        }
        builder.check(|| {
            let h = Arc::new(Histogram::new());
            let writers: Vec<_> = VALUES
                .iter()
                .map(|&values| {
                    let h = Arc::clone(&h);
                    thread::spawn(move || {
                        for v in values {
                            h.record(v);
                        }
                    })
                })
                .collect();

            let mid = h.snapshot();
            assert!(mid.count() <= TOTAL_COUNT);
            assert!(mid.sum() <= TOTAL_SUM);
            assert_eq!(mid.buckets().map(|b| b.2).sum::<u64>(), mid.count());
            match (mid.min(), mid.max()) {
                (Some(min), Some(max)) => {
                    assert!(min <= max && max <= 100, "{mid:?}");
                    for q in [0.0, 0.5, 0.75, 1.0] {
                        let estimate = mid.quantile(q).unwrap();
                        assert!((min..=max).contains(&estimate), "q={q} {mid:?}");
                    }
                    let mean = mid.mean().unwrap();
                    assert!(min as f64 <= mean && mean <= max as f64, "{mid:?}");
                }
                (None, None) => assert_eq!(mid, HistogramSnapshot::default()),
                _ => panic!("min and max disagree: {mid:?}"),
            }

            for writer in writers {
                writer.join().unwrap();
            }
            let end = h.snapshot();
            assert_eq!(end.count(), TOTAL_COUNT);
            assert_eq!(end.sum(), TOTAL_SUM);
            assert_eq!(end.min(), Some(3));
            assert_eq!(end.max(), Some(100));
            // Rank 2 is 20, reported as the midpoint of its bucket [20, 24).
            assert_eq!(end.quantile(0.5), Some(22));
        });
    }
}
