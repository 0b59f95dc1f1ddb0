//! The retry budget: retries allowed as a fraction of recent requests.
//!
//! ```
//! use std::time::Duration;
//! use tower_cql_middleware::retry::budget::{BudgetConfig, RetryBudget};
//!
//! // One retry per ten requests, no floor.
//! let budget = RetryBudget::new(&BudgetConfig {
//!     ratio: 0.1,
//!     min_per_second: 0,
//!     window: Duration::from_secs(10),
//! })?;
//! for _ in 0..100 {
//!     budget.deposit(); // one per request
//! }
//! let granted = (0..100).filter(|_| budget.withdraw()).count(); // one per retry
//! assert_eq!(granted, 10);
//! # Ok::<(), tower_cql_middleware::config::ConfigError>(())
//! ```
//!
//! Hedging draws on a budget too: in the stack, the hedge layer's
//! speculative attempts are withdrawn from the retry layer's budget, so
//! that retries and speculative attempts together add at most `ratio` to
//! the load (see [`hedge`](crate::hedge#budget)).
//!
//! # Why a budget, and not only `max_attempts`
//! `max_attempts` bounds the retries of *one* request, but when the cluster
//! is in trouble *every* request fails, and with `max_attempts = 3` the
//! client sends three times its normal load to a cluster that is already
//! overloaded: retries turn a brown-out into an outage. A budget bounds the
//! retries of *all* requests together: at most `ratio` retries per request
//! over the last `window` (plus a small floor, so that a client sending a
//! few requests a second can still retry), so retries add at most
//! `ratio` (20 % by default) to the load, whatever happens.
//!
//! # Why not tower's `TpsBudget`
//! tower's `TpsBudget` keeps integer tokens: each request deposits 1 and a
//! retry withdraws `(1.0 / retry_percent) as isize` — the reciprocal
//! *truncated*. For a percent below 1 whose reciprocal is not a whole
//! number, a retry costs less than it should: 0.6 gives a cost of 1 (100 %
//! of requests may retry, not 60 %), 0.3 a cost of 3 (33 %, not 30 %)
//! ([tower#857](https://github.com/tower-rs/tower/issues/857)). It also
//! takes a `Mutex` on every deposit and withdrawal to rotate its slots.
//!
//! This budget counts requests and retries as whole numbers and compares
//! them in floating point at decision time — a retry is granted while
//! `retries_in_window < min_per_second * window_secs + ratio * requests_in_window` —
//! so no ratio is rounded, and it is lock-free.
//!
//! # How the window works
//! The window is split into 10 slots of `window / 10`. Each slot holds two
//! `AtomicU64`s, one for requests and one for retries; each packs the slot's
//! epoch (which `window / 10` period since the budget was made it counts,
//! 32 bits) with its count (32 bits, saturating). A slot whose epoch is
//! stale is reset lazily, by the first deposit or withdrawal that lands in
//! it, with the same `compare_exchange` that counts: a count can never be
//! added to the wrong period, and no lock or background task is needed.
//! A sum reads the slots of the last 10 epochs, so the window is the last
//! `window` at a resolution of `window / 10`. Each thread keeps the epoch
//! it computed last, with the period it covers: a deposit inside that
//! period (nearly every request's) reads it back instead of dividing the
//! time since the budget was made.
//!
//! A withdrawal counts itself first, then checks the sums, and takes itself
//! back if that was one too many: two racing withdrawals may both be
//! refused when only one would have fit, but the budget is never exceeded.
//!
//! Time is read through `tokio::time::Instant`, so a paused Tokio clock
//! (`tokio::time::pause`) controls it in tests.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use tower_cql_core::clock;

use crate::config::ConfigError;

/// How many slots the window is split into.
const SLOTS: usize = 10;

/// Retry budget settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// Retries allowed per request, over the window (default 0.2: retries
    /// add at most 20 % to the load). Must be in `(0, 1000]`.
    pub ratio: f64,
    /// Retries always allowed per second, whatever the request count
    /// (default 10), so that a quiet client can still retry.
    pub min_per_second: u32,
    /// How far back requests and retries count (default 10 s, must be
    /// greater than zero). Split into 10 slots.
    pub window: Duration,
}

impl Default for BudgetConfig {
    fn default() -> BudgetConfig {
        BudgetConfig {
            ratio: 0.2,
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }
}

impl BudgetConfig {
    /// Rejects a ratio outside `(0, 1000]` and an empty window.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check(["retry.budget.ratio", "retry.budget.window"])
    }

    /// [`validate`](Self::validate), naming the fields of a hedge layer's
    /// own budget.
    pub(crate) fn validate_for_hedge(&self) -> Result<(), ConfigError> {
        self.check(["hedge.budget.ratio", "hedge.budget.window"])
    }

    fn check(&self, [ratio, window]: [&'static str; 2]) -> Result<(), ConfigError> {
        if !(self.ratio > 0.0 && self.ratio <= 1000.0) {
            return Err(ConfigError::new(
                ratio,
                format!(
                    "must be greater than 0 and at most 1000 (extra attempts per request), got {}",
                    self.ratio
                ),
            ));
        }
        if self.window.is_zero() {
            return Err(ConfigError::new(
                window,
                "must be greater than zero (e.g. 10s), got 0s",
            ));
        }
        Ok(())
    }
}

/// One slot: requests and retries, each `epoch << 32 | count`.
#[derive(Debug, Default)]
struct Slot {
    requests: AtomicU64,
    retries: AtomicU64,
}

const COUNT_MASK: u64 = u32::MAX as u64;

fn unpack(v: u64) -> (u32, u32) {
    ((v >> 32) as u32, (v & COUNT_MASK) as u32)
}

fn pack(epoch: u32, count: u32) -> u64 {
    (u64::from(epoch) << 32) | u64::from(count)
}

/// Adds one to `cell` for `epoch`, resetting it first if it holds an older
/// epoch.
fn increment(cell: &AtomicU64, epoch: u32) {
    let mut cur = cell.load(Ordering::Acquire);
    loop {
        let (e, c) = unpack(cur);
        // `e` newer than `epoch` (this thread was slow and the slot moved
        // on): count into the newer period rather than erase it.
        let newer_or_same = (e.wrapping_sub(epoch) as i32) >= 0;
        let next = if newer_or_same {
            pack(e, c.saturating_add(1))
        } else {
            pack(epoch, 1)
        };
        match cell.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return,
            Err(actual) => cur = actual,
        }
    }
}

/// Takes back one count added for `epoch`; nothing if the slot has moved on
/// (it was reset, so the count is gone anyway).
fn decrement(cell: &AtomicU64, epoch: u32) {
    let mut cur = cell.load(Ordering::Acquire);
    loop {
        let (e, c) = unpack(cur);
        if e != epoch || c == 0 {
            return;
        }
        match cell.compare_exchange_weak(cur, pack(e, c - 1), Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return,
            Err(actual) => cur = actual,
        }
    }
}

/// Budget ids (see [`RetryBudget::epoch`]).
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// The epoch a thread computed last: for which budget, and the period
/// `[from, until)` it covers.
#[derive(Clone, Copy)]
struct LastEpoch {
    budget: u64,
    epoch: u32,
    from: Instant,
    until: Instant,
}

thread_local! {
    static LAST_EPOCH: Cell<Option<LastEpoch>> = const { Cell::new(None) };
}

/// A lock-free, sliding-window retry budget: at most
/// `min_per_second * window_secs + ratio * requests` retries over the last
/// `window`. See the [module docs](self) for how and why.
///
/// Shared (in an `Arc`) by every clone of a [`Retry`](super::Retry)
/// service made from one [`RetryLayer`](super::RetryLayer), and by a
/// [`HedgeLayer`](crate::hedge::HedgeLayer) made
/// [inside](crate::hedge::HedgeLayer::inside) it (as the stack builder
/// does): its speculative attempts are withdrawn like retries.
pub struct RetryBudget {
    slots: [Slot; SLOTS],
    /// Tells this budget's epochs apart from another's in a thread's
    /// [`LAST_EPOCH`].
    id: u64,
    start: Instant,
    slot_nanos: u64,
    ratio: f64,
    floor: f64,
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ratio", &self.ratio)
            .field("floor", &self.floor)
            .field("slot", &Duration::from_nanos(self.slot_nanos))
            .field("requests_in_window", &self.requests_in_window())
            .field("retries_in_window", &self.retries_in_window())
            .finish()
    }
}

impl RetryBudget {
    /// A budget with nothing deposited: until requests come in, only the
    /// floor (`min_per_second * window_secs`) is available.
    pub fn new(config: &BudgetConfig) -> Result<RetryBudget, ConfigError> {
        config.validate()?;
        let slot_nanos = u64::try_from(config.window.as_nanos() / SLOTS as u128)
            .unwrap_or(u64::MAX)
            .max(1);
        Ok(RetryBudget {
            slots: Default::default(),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            start: clock::now(),
            slot_nanos,
            ratio: config.ratio,
            floor: f64::from(config.min_per_second) * config.window.as_secs_f64(),
        })
    }

    /// The epoch at `now` ([`clock::now`] unless a caller has read it),
    /// truncated to the 32 bits a slot keeps. Inside the period of the
    /// epoch this thread computed last for this budget, that one, read
    /// back: no `Instant` subtraction and division for every request.
    fn epoch(&self, now: Instant) -> u32 {
        if let Ok(Some(last)) = LAST_EPOCH.try_with(Cell::get)
            && last.budget == self.id
            && last.from <= now
            && now < last.until
        {
            return last.epoch;
        }
        let elapsed = now.saturating_duration_since(self.start);
        // divided in u64, not u128 (a u64 of nanoseconds lasts 584 years)
        let epoch = elapsed.as_nanos() as u64 / self.slot_nanos;
        let from = epoch
            .checked_mul(self.slot_nanos)
            .and_then(|n| self.start.checked_add(Duration::from_nanos(n)));
        let until = from.and_then(|f| f.checked_add(Duration::from_nanos(self.slot_nanos)));
        if let (Some(from), Some(until)) = (from, until) {
            let _ = LAST_EPOCH.try_with(|c| {
                c.set(Some(LastEpoch {
                    budget: self.id,
                    epoch: epoch as u32,
                    from,
                    until,
                }))
            });
        }
        epoch as u32
    }

    fn slot(&self, epoch: u32) -> &Slot {
        &self.slots[epoch as usize % SLOTS]
    }

    fn sum(&self, epoch: u32, cell: impl Fn(&Slot) -> &AtomicU64) -> u64 {
        self.slots
            .iter()
            .map(|s| unpack(cell(s).load(Ordering::Acquire)))
            .filter(|(e, _)| (epoch.wrapping_sub(*e) as usize) < SLOTS)
            .map(|(_, c)| u64::from(c))
            .sum()
    }

    /// Records a request (call once per request, not per attempt).
    pub fn deposit(&self) {
        self.deposit_at(clock::now());
    }

    /// [`deposit`](Self::deposit), for a caller that has read the clock
    /// ([`clock::now`]) already.
    pub fn deposit_at(&self, now: Instant) {
        let epoch = self.epoch(now);
        increment(&self.slot(epoch).requests, epoch);
    }

    /// Asks for one retry (or speculative attempt): true (and counted) if
    /// the budget allows it.
    pub fn withdraw(&self) -> bool {
        self.withdraw_at(clock::now())
    }

    /// [`withdraw`](Self::withdraw) at `now` ([`clock::now`], read by the
    /// caller), the instant a [`Charge`] for it keeps.
    pub(crate) fn withdraw_at(&self, now: Instant) -> bool {
        let epoch = self.epoch(now);
        let cell = &self.slot(epoch).retries;
        increment(cell, epoch);
        let retries = self.sum(epoch, |s| &s.retries);
        let requests = self.sum(epoch, |s| &s.requests);
        // `retries` includes this one: it fits if the ones before it left room.
        let before = retries.saturating_sub(1) as f64;
        if before < self.floor + self.ratio * requests as f64 {
            true
        } else {
            decrement(cell, epoch);
            false
        }
    }

    /// Takes back one retry granted at `granted_at` and never made
    /// (nothing once its slot has moved on: the count is gone anyway).
    fn refund_at(&self, granted_at: Instant) {
        let epoch = self.epoch(granted_at);
        decrement(&self.slot(epoch).retries, epoch);
    }

    /// Requests deposited over the window.
    pub fn requests_in_window(&self) -> u64 {
        self.sum(self.epoch(clock::now()), |s| &s.requests)
    }

    /// Retries granted over the window (speculative attempts included,
    /// when a hedge layer draws on this budget).
    pub fn retries_in_window(&self) -> u64 {
        self.sum(self.epoch(clock::now()), |s| &s.retries)
    }
}

/// A retry (or speculative attempt) `budget` granted at `at`
/// ([`RetryBudget::withdraw_at`]) and not made yet: dropped unspent (its
/// request dropped during the backoff, or while waiting for the inner
/// service; a hedge race that ended first), it is given back, so that
/// the budget bounds the attempts sent and one never sent takes no other
/// request's place. [`spend`](Charge::spend) when the attempt is made.
pub(crate) struct Charge {
    budget: std::sync::Arc<RetryBudget>,
    at: Instant,
    spent: bool,
}

impl Charge {
    /// The charge of a retry `budget` granted at `at`.
    pub(crate) fn granted(budget: &std::sync::Arc<RetryBudget>, at: Instant) -> Charge {
        Charge {
            budget: budget.clone(),
            at,
            spent: false,
        }
    }

    /// The attempt is made: the budget keeps it.
    pub(crate) fn spend(mut self) {
        self.spent = true;
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if !self.spent {
            self.budget.refund_at(self.at);
        }
    }
}

impl fmt::Debug for Charge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Charge").field("at", &self.at).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn budget(ratio: f64, min_per_second: u32, window: Duration) -> RetryBudget {
        RetryBudget::new(&BudgetConfig {
            ratio,
            min_per_second,
            window,
        })
        .unwrap()
    }

    /// The epoch read back from the thread's last one is the epoch
    /// computed afresh: at and around period boundaries, for readings
    /// that go back in time (a shared reading older than the last one),
    /// and with two budgets of different periods taking turns on one
    /// thread.
    #[test]
    fn an_epoch_read_back_is_the_epoch_computed() {
        let a = budget(0.1, 0, Duration::from_millis(10)); // 1 ms slots
        let b = budget(0.1, 0, Duration::from_millis(7)); // 700 µs slots
        let computed = |b: &RetryBudget, at: Instant| {
            (at.saturating_duration_since(b.start).as_nanos() as u64 / b.slot_nanos) as u32
        };
        // each boundary of `a` reached from just before it, then just after
        for k in 1..12u64 {
            for ns in [k * 1_000_000 - 1, k * 1_000_000, k * 1_000_000 + 1] {
                let at = a.start + Duration::from_nanos(ns);
                assert_eq!(a.epoch(at), computed(&a, at), "a at +{ns} ns");
            }
        }
        // and from just after it back to just before it
        for k in 1..12u64 {
            for ns in [k * 1_000_000, k * 1_000_000 - 1] {
                let at = a.start + Duration::from_nanos(ns);
                assert_eq!(a.epoch(at), computed(&a, at), "a at +{ns} ns");
            }
        }
        // a walk forward and back over many periods, in steps that do not
        // divide them, the two budgets taking turns
        let mut offsets: Vec<u64> = (0..400u64).map(|i| i * 37_013).collect();
        offsets.extend((0..15u64).map(|i| 15_000_000 - i * 999_999));
        for (i, &ns) in offsets.iter().enumerate() {
            let budget = if i % 3 == 0 { &b } else { &a };
            let at = budget.start + Duration::from_nanos(ns);
            assert_eq!(budget.epoch(at), computed(budget, at), "at +{ns} ns");
        }
        // before the budget's start (a reading taken before it was made)
        assert_eq!(a.epoch(a.start), 0);
        if let Some(before) = a.start.checked_sub(Duration::from_millis(5)) {
            assert_eq!(a.epoch(before), 0);
        }
    }

    /// Every request fails and asks for a retry right after it is made.
    fn all_fail(b: &RetryBudget, requests: usize) -> usize {
        (0..requests)
            .filter(|_| {
                b.deposit();
                b.withdraw()
            })
            .count()
    }

    #[tokio::test(start_paused = true)]
    async fn a_tenth_of_a_thousand_failing_requests() {
        let b = budget(0.1, 0, Duration::from_secs(10));
        let granted = all_fail(&b, 1000);
        assert!((100..=101).contains(&granted), "granted {granted}");
        assert_eq!(b.retries_in_window(), granted as u64);
        assert_eq!(b.requests_in_window(), 1000);
    }

    /// The ratios tower's `TpsBudget` rounds in the caller's disfavour
    /// (tower#857): 0.6 gives 100 %, 0.3 gives 33 %.
    #[tokio::test(start_paused = true)]
    async fn fractional_ratios_are_not_truncated() {
        for (ratio, want) in [(0.6, 600), (0.3, 300), (0.25, 250), (0.15, 150), (0.001, 1)] {
            let b = budget(ratio, 0, Duration::from_secs(10));
            let granted = all_fail(&b, 1000);
            assert!(
                granted >= want && granted <= want + 1,
                "ratio {ratio}: granted {granted}, want {want}"
            );
        }
        // and ratios above one
        let b = budget(2.5, 0, Duration::from_secs(10));
        for _ in 0..10 {
            b.deposit();
        }
        assert_eq!((0..100).filter(|_| b.withdraw()).count(), 25);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_deposited_means_only_the_floor() {
        let b = budget(0.2, 0, Duration::from_secs(10));
        assert!(!b.withdraw());
        assert_eq!(
            b.retries_in_window(),
            0,
            "a refused withdrawal is taken back"
        );
        let b = budget(0.2, 3, Duration::from_secs(2));
        assert_eq!((0..20).filter(|_| b.withdraw()).count(), 6); // 3/s * 2 s
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides() {
        let window = Duration::from_secs(10);
        let b = budget(0.5, 0, window);
        for _ in 0..10 {
            b.deposit();
        }
        assert_eq!((0..10).filter(|_| b.withdraw()).count(), 5);
        assert!(!b.withdraw());
        // Half a window later the deposits still count, and so do the retries.
        tokio::time::advance(window / 2).await;
        assert!(!b.withdraw());
        for _ in 0..4 {
            b.deposit();
        }
        assert_eq!((0..10).filter(|_| b.withdraw()).count(), 2);
        assert_eq!(b.requests_in_window(), 14);
        // A window after the first deposits, only the later ones count.
        tokio::time::advance(window / 2 + Duration::from_millis(1)).await;
        assert_eq!(b.requests_in_window(), 4);
        assert_eq!(b.retries_in_window(), 2);
        assert!(!b.withdraw(), "4 * 0.5 = 2, both used");
        // Two windows later, everything has expired.
        tokio::time::advance(window).await;
        assert_eq!(b.requests_in_window(), 0);
        assert_eq!(b.retries_in_window(), 0);
        assert!(!b.withdraw());
        b.deposit();
        b.deposit();
        assert!(b.withdraw());
        assert!(!b.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn slots_reset_lazily_after_a_long_idle() {
        let b = budget(1.0, 0, Duration::from_secs(1));
        b.deposit();
        // many windows later the same slot index is reused, with a new epoch
        tokio::time::advance(Duration::from_secs(1000)).await;
        assert_eq!(b.requests_in_window(), 0);
        assert!(!b.withdraw());
        b.deposit();
        assert_eq!(b.requests_in_window(), 1);
        assert!(b.withdraw());
    }

    #[test]
    fn concurrent_withdrawals_never_exceed_the_budget() {
        let b = Arc::new(budget(0.1, 0, Duration::from_secs(3600)));
        for _ in 0..1000 {
            b.deposit();
        }
        let granted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let b = &b;
                    s.spawn(move || (0..200).filter(|_| b.withdraw()).count())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert!(granted <= 100, "granted {granted}");
        assert_eq!(b.retries_in_window(), granted as u64);
        // races may refuse a few that would have fitted; the rest go through
        assert!(granted >= 90, "granted {granted}");
    }

    #[test]
    fn validation_names_the_field_and_range() {
        for ratio in [0.0, -1.0, 1000.5, f64::NAN, f64::INFINITY] {
            let err = BudgetConfig {
                ratio,
                ..BudgetConfig::default()
            }
            .validate()
            .unwrap_err();
            assert_eq!(err.field, "retry.budget.ratio");
            assert!(err.message.contains("at most 1000"), "{err}");
        }
        let err = BudgetConfig {
            window: Duration::ZERO,
            ..BudgetConfig::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(err.field, "retry.budget.window");
        assert!(BudgetConfig::default().validate().is_ok());
        assert!(
            BudgetConfig {
                ratio: 1000.0,
                window: Duration::from_nanos(1),
                ..BudgetConfig::default()
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn packing_round_trips() {
        assert_eq!(unpack(pack(7, 9)), (7, 9));
        assert_eq!(unpack(pack(u32::MAX, u32::MAX)), (u32::MAX, u32::MAX));
        let cell = AtomicU64::new(pack(3, u32::MAX));
        increment(&cell, 3);
        assert_eq!(
            unpack(cell.load(Ordering::Relaxed)),
            (3, u32::MAX),
            "saturates"
        );
        increment(&cell, 4);
        assert_eq!(unpack(cell.load(Ordering::Relaxed)), (4, 1), "resets");
        increment(&cell, 2);
        assert_eq!(
            unpack(cell.load(Ordering::Relaxed)),
            (4, 2),
            "late: counts in newer"
        );
        decrement(&cell, 3);
        assert_eq!(
            unpack(cell.load(Ordering::Relaxed)),
            (4, 2),
            "other epoch: no-op"
        );
        decrement(&cell, 4);
        assert_eq!(unpack(cell.load(Ordering::Relaxed)), (4, 1));
    }
}
