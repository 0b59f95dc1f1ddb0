//! One clock reading for everything a service call does at once.
//!
//! ```
//! use tower_cql_core::clock;
//!
//! // inside a shared reading, every `now()` is the same instant
//! let reading = clock::share();
//! let (a, b) = (clock::now(), clock::now());
//! assert_eq!(a, b);
//! drop(reading);
//! // outside one, `now()` reads the clock
//! assert!(clock::now() >= a);
//! ```
//!
//! # Why
//! A request through the default stack read the clock three times in its
//! call alone (the metrics layer's start, the retry budget's slot, the
//! deadline; a fourth for a per-attempt timer). A reading costs 35–50
//! instructions and, by `hot_path`'s wall time, about 20 ns; the
//! thread-local access that shares it about 20 instructions (std's
//! accessor is not inlined) but far less time. So sharing saves time,
//! not instructions (BENCHMARKS.md, "#17, fifth round").
//!
//! # The rule
//! [`share`] opens a reading over synchronous code (a `call`): the first
//! [`now`] inside it reads the clock and every later one returns that
//! reading. Nothing waits inside a call, so they are all the same
//! instant, to within the code that runs between them. Code that runs
//! later (a retry called from a later poll, a hedge's speculative
//! attempt, an attempt's end) is outside that reading by construction: a
//! reading is never carried over from one call to another, so it cannot
//! go stale. Nested readings are the outermost one's. The stack's
//! entrance ([`GateService`](crate::GateService)) opens one around its
//! layers' calls; every layer reads through [`now`], and so does the
//! driver service's `call`, which starts its attempt's timing there.
//!
//! Polls open none: opening one on every poll cost more than it saved
//! (measured: about 300 instructions a request through the default stack
//! against a real server). The one poll that needs "now" twice, a
//! request's end, reads it once instead: the driver's reading for its
//! attempt's end is kept in the response
//! ([`CqlResponse::attempt_ended`](crate::CqlResponse::attempt_ended)),
//! and the metrics layer ends the request there. So a request answered
//! by its first attempt reads the clock twice in all, its start and its
//! end.
//!
//! It is the Tokio clock ([`tokio::time::Instant::now`]): the same as
//! [`std::time::Instant::now`] in a running program, and the paused clock
//! in a test that pauses time.

use std::cell::Cell;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Clone, Copy)]
enum Reading {
    /// No reading open on this thread.
    Outside,
    /// In one, and the clock not yet read.
    Unread,
    /// In one, and this is its reading.
    Read(Instant),
}

thread_local! {
    static READING: Cell<Reading> = const { Cell::new(Reading::Outside) };
}

/// Now: the reading [`share`] opened on this thread, or
/// the clock when there is none.
#[inline]
pub fn now() -> Instant {
    READING.with(|r| match r.get() {
        Reading::Read(at) => at,
        Reading::Outside => Instant::now(),
        Reading::Unread => {
            let at = Instant::now();
            r.set(Reading::Read(at));
            at
        }
    })
}

/// The time since `earlier` ([`now`] minus it; zero if it is later).
#[inline]
pub fn since(earlier: Instant) -> Duration {
    now().saturating_duration_since(earlier)
}

/// Opens one clock reading for every [`now`] on this thread until the
/// returned guard is dropped (the outermost guard's, when they nest). Hold
/// it over code that does not wait: a `call`, a `poll`. The reading ends
/// with the guard, also when a panic unwinds past it.
#[inline(always)]
#[must_use = "the reading is shared only while the guard lives"]
pub fn share() -> Shared {
    let opened = READING.with(|r| match r.get() {
        Reading::Outside => {
            r.set(Reading::Unread);
            true
        }
        _ => false,
    });
    Shared { opened }
}

/// The guard of a shared reading (see [`share`]).
#[derive(Debug)]
pub struct Shared {
    /// Whether this guard opened the reading (the outermost one), so ends
    /// it.
    opened: bool,
}

impl Drop for Shared {
    #[inline(always)]
    fn drop(&mut self) {
        if self.opened {
            // (`try_with`: a panic unwinding through thread teardown must
            // not turn into an abort here)
            let _ = READING.try_with(|r| r.set(Reading::Outside));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_reading_inside_and_a_fresh_one_after() {
        let (a, b, nested) = {
            let _r = share();
            let a = now();
            std::thread::sleep(Duration::from_millis(2));
            (a, now(), {
                let _n = share();
                now()
            })
        };
        assert_eq!(a, b, "a reading is shared");
        assert_eq!(a, nested, "a nested call shares the outer reading");
        let after = now();
        assert!(after > a, "outside a call, the clock itself");
        assert!(since(a) >= Duration::from_millis(2));
    }

    #[test]
    fn each_call_reads_the_clock_again() {
        let a = {
            let _r = share();
            now()
        };
        std::thread::sleep(Duration::from_millis(2));
        let b = {
            let _r = share();
            now()
        };
        assert!(b > a, "a reading is never carried to the next call");
    }

    #[test]
    fn a_panic_ends_the_reading() {
        let at = std::panic::catch_unwind(|| {
            let _r = share();
            let _ = now();
            panic!("inside");
        });
        assert!(at.is_err());
        let a = now();
        std::thread::sleep(Duration::from_millis(2));
        assert!(now() > a, "the reading ended with the panic");
    }

    #[test]
    fn a_call_that_reads_nothing_reads_no_clock() {
        {
            let _r = share();
            READING.with(|r| assert!(matches!(r.get(), Reading::Unread)));
        }
        READING.with(|r| assert!(matches!(r.get(), Reading::Outside)));
    }
}
