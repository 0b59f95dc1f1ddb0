//! Close as the fetcher's tasks see it: a phase that only moves forward
//! (open, closing, abandoned), and a wake-up that reaches every waiter.
//!
//! # Why not `Notify::notify_one`
//! The worker has several waiters at once: the job stream waiting for
//! the next trace, and each fetch sleeping in its backoff. `notify_one`
//! wakes one of them, the oldest; a fetch that began its backoff before
//! the stream last waited took that wake-up, and the stream, never woken,
//! waited out the whole `close_timeout` with nothing left to fetch. Here
//! every change wakes every waiter (`notify_waiters`), and a waiter
//! registers before it reads the phase, so a change between its read and
//! its wait still wakes it (as the gate's `close` does, in `core`).

use std::pin::pin;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::sync::Notify;

/// How far close has gone. Only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Phase {
    /// Taking traces.
    Open = 0,
    /// Close began: fetch what is queued, take nothing new.
    Closing = 1,
    /// Close stopped waiting: give up what is left.
    Abandoned = 2,
}

/// The phase, and the wake-up sent to every waiter when it changes.
#[derive(Debug, Default)]
pub(crate) struct CloseSignal {
    phase: AtomicU8,
    changed: Notify,
}

impl CloseSignal {
    /// The phase now.
    pub(crate) fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Open,
            1 => Phase::Closing,
            _ => Phase::Abandoned,
        }
    }

    /// Moves the phase to `to` (never back), waking every waiter.
    pub(crate) fn advance(&self, to: Phase) {
        self.phase.fetch_max(to as u8, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    /// Returns once the phase is `at` or later.
    pub(crate) async fn reached(&self, at: Phase) {
        loop {
            // enabled before the phase is read: `notify_waiters` wakes
            // only the waiters that exist when it is called
            let mut changed = pin!(self.changed.notified());
            changed.as_mut().enable();
            if self.phase() >= at {
                return;
            }
            changed.await;
        }
    }
}

#[cfg(all(test, not(tower_cql_loom)))]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_waiter_sees_each_phase() {
        let signal = Arc::new(CloseSignal::default());
        let waiter = |at| {
            let signal = signal.clone();
            tokio::spawn(async move { signal.reached(at).await })
        };
        // three waiting for closing (as the job stream and two fetches'
        // backoffs did), one for abandoned
        let closing = [
            waiter(Phase::Closing),
            waiter(Phase::Closing),
            waiter(Phase::Closing),
        ];
        let abandoned = waiter(Phase::Abandoned);
        tokio::task::yield_now().await;
        signal.advance(Phase::Closing);
        for w in closing {
            tokio::time::timeout(Duration::from_secs(10), w)
                .await
                .expect("a waiter for closing was not woken")
                .unwrap();
        }
        assert!(!abandoned.is_finished());
        signal.advance(Phase::Abandoned);
        tokio::time::timeout(Duration::from_secs(10), abandoned)
            .await
            .expect("the waiter for abandoned was not woken")
            .unwrap();
        // never back, and a late waiter returns at once
        signal.advance(Phase::Closing);
        assert_eq!(signal.phase(), Phase::Abandoned);
        signal.reached(Phase::Closing).await;
    }
}
