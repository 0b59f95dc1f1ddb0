//! The rolling window a closed breaker counts outcomes over: ten
//! `AtomicU64` buckets, each packing its bucket number with the failures
//! and successes seen in it; a bucket left from an earlier turn of the
//! window is started over when next written. Also [`Outcome`], how a
//! result counts.

use std::sync::atomic::Ordering;

use tower_cql_core::classify::NodeVerdict;
use tower_cql_core::{CqlError, CqlResponse};

use super::target::{Breakers, Target};

// ---- a window bucket: [bucket number:24][failures:20][successes:20] ----
pub(super) const BUCKETS: usize = 10;
pub(super) const EPOCH_MASK: u64 = (1 << 24) - 1;
pub(super) const TALLY_MASK: u64 = (1 << 20) - 1;

/// Whether an outcome counts against the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    /// How a result counts, as the one classifier
    /// ([`NodeVerdict::of`]) says; `None` for outcomes that judge no node
    /// (refusals made on the client).
    pub(crate) fn of(result: &Result<CqlResponse, CqlError>) -> Option<Outcome> {
        match NodeVerdict::of(result) {
            NodeVerdict::Healthy => Some(Outcome::Success),
            NodeVerdict::Failed => Some(Outcome::Failure),
            NodeVerdict::NotJudged => None,
        }
    }
}

impl Target {
    pub(super) fn tally(&self, b: &Breakers, outcome: Outcome, now: u64) {
        let number = now / b.bucket_us;
        let epoch = number & EPOCH_MASK;
        let bucket = &self.buckets[(number % BUCKETS as u64) as usize];
        let _ = bucket.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            let (mut failures, mut successes) = if v >> 40 == epoch {
                ((v >> 20) & TALLY_MASK, v & TALLY_MASK)
            } else {
                (0, 0) // a stale bucket: start it over
            };
            match outcome {
                Outcome::Failure => failures = (failures + 1).min(TALLY_MASK),
                Outcome::Success => successes = (successes + 1).min(TALLY_MASK),
            }
            Some((epoch << 40) | (failures << 20) | successes)
        });
    }

    /// (successes, failures) in the window ending at `now`.
    pub(super) fn window(&self, b: &Breakers, now: u64) -> (u64, u64) {
        let current = (now / b.bucket_us) & EPOCH_MASK;
        let mut sums = (0, 0);
        for bucket in &self.buckets {
            let v = bucket.load(Ordering::Acquire);
            let age = current.wrapping_sub(v >> 40) & EPOCH_MASK;
            if age < BUCKETS as u64 {
                sums.0 += v & TALLY_MASK;
                sums.1 += (v >> 20) & TALLY_MASK;
            }
        }
        sums
    }
}
