//! The counters both concurrency limits share, apart from any waiting (as
//! the shutdown gate keeps its atomic state apart), so that `loom` can
//! check them: slots in flight, places in the queue, services watching
//! for a slot from `poll_ready`, and the one `Notify` waiters sleep on.
//!
//! # The protocol
//! - A slot is taken with a compare-and-swap of `in_flight` against
//!   `limit` ([`Core::try_acquire`]) and given back when its [`Permit`]
//!   drops.
//! - A request that found none takes a place in the queue
//!   ([`Core::try_enqueue`], bounded by `max_queue`), registers on the
//!   `Notify`, then checks again ([`Core::acquire_queued`]).
//! - A release decrements `in_flight`, then reads `queued`: when someone
//!   is queued it wakes one (`notify_one`; a waiter dropped with that
//!   wake unread passes it on, tokio's `Notified` does so).
//!
//! Between the write and the read on each side sits a `SeqCst` fence, so
//! that of a waiter (`queued += 1`, fence, read `in_flight`) and a
//! releaser (`in_flight -= 1`, fence, read `queued`) at least one sees the
//! other's write: either the waiter finds the freed slot or the releaser
//! finds the waiter and wakes it. (`SeqCst` operations alone give the same
//! guarantee in C++20's model; the fences say it where `loom`, which
//! treats a `SeqCst` operation as `AcqRel`, can check it.) A service
//! watching from `poll_ready` ([`Core::watch`]) is the same pattern with
//! `watching` and `notify_waiters`, which wakes every registration at
//! once and leaves no wake behind for a watcher that stopped looking.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

#[cfg(tower_cql_loom)]
use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};
#[cfg(not(tower_cql_loom))]
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};

use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use tower_cql_core::event::ThrottleEvent;
use tower_cql_core::{Collectors, CqlRequest, Event};

use super::adaptive;

/// The counters and the wait list, shared by a layer and every service
/// it makes.
pub(crate) struct Core {
    /// The limit (the low 32 bits, capped at `u32::MAX`) and how many
    /// times it changed (the high 32, wrapping past 0 to 1): in one word,
    /// so that a change and its number are made together, and limit
    /// events carry the order of the changes (see
    /// [`LatestLimit`](tower_cql_core::event::LatestLimit)).
    limit: AtomicU64,
    in_flight: AtomicUsize,
    queued: AtomicUsize,
    /// Services waiting in `poll_ready` for a slot (under a load shedder).
    watching: AtomicUsize,
    pub(crate) max_queue: usize,
    pub(crate) queue_timeout: Option<Duration>,
    pub(crate) notify: Arc<Notify>,
    pub(crate) collectors: Collectors,
    /// `"concurrency_limit"` or `"adaptive"`, for events.
    pub(crate) limiter: &'static str,
    /// The adaptive algorithm's state, for the adaptive limit.
    pub(crate) adaptive: Option<adaptive::Aimd>,
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyCore")
            .field("limiter", &self.limiter)
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .field("queued", &self.queued())
            .field("max_queue", &self.max_queue)
            .field("queue_timeout", &self.queue_timeout)
            .finish()
    }
}

/// The word of [`Core::limit`]: change number `change`, limit `limit`.
fn limit_word(change: u32, limit: usize) -> u64 {
    (u64::from(change) << 32)
        | u64::try_from(limit).map_or(u64::from(u32::MAX), |l| l.min(u32::MAX.into()))
}

/// The limit in a word of [`Core::limit`].
fn limit_of(word: u64) -> usize {
    usize::try_from(word & u64::from(u32::MAX)).unwrap_or(usize::MAX)
}

impl Core {
    pub(crate) fn new(
        limiter: &'static str,
        limit: usize,
        max_queue: usize,
        queue_timeout: Option<Duration>,
        collectors: Collectors,
        adaptive: Option<adaptive::Aimd>,
    ) -> Core {
        Core {
            limit: AtomicU64::new(limit_word(0, limit)),
            in_flight: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            watching: AtomicUsize::new(0),
            max_queue,
            queue_timeout,
            notify: Arc::new(Notify::new()),
            collectors,
            limiter,
            adaptive,
        }
    }

    pub(crate) fn limit(&self) -> usize {
        limit_of(self.limit.load(Ordering::Acquire))
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Sets the limit (adaptive) if it is still `from`; wakes every
    /// waiter when it grew. Returns the change's number (1, 2, …), or
    /// `None` when another change came first.
    pub(crate) fn set_limit(&self, from: usize, to: usize) -> Option<u32> {
        let cur = self.limit.load(Ordering::SeqCst);
        if limit_of(cur) != from {
            return None;
        }
        let change = match ((cur >> 32) as u32).wrapping_add(1) {
            0 => 1,
            n => n,
        };
        self.limit
            .compare_exchange(
                cur,
                limit_word(change, to),
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .ok()?;
        if to > from {
            self.notify.notify_waiters();
        }
        Some(change)
    }

    /// Takes a slot if one is free (the count is below the limit).
    pub(crate) fn try_acquire(self: &Arc<Core>) -> Option<Permit> {
        let mut cur = self.in_flight.load(Ordering::SeqCst);
        loop {
            if cur >= limit_of(self.limit.load(Ordering::SeqCst)) {
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return Some(Permit(self.clone())),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Takes a place in the queue if it has room; the error is the depth
    /// that was full.
    pub(crate) fn try_enqueue(self: &Arc<Core>) -> Result<QueueSlot, usize> {
        let mut cur = self.queued.load(Ordering::SeqCst);
        loop {
            if cur >= self.max_queue {
                return Err(cur);
            }
            match self.queued.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return Ok(QueueSlot(self.clone())),
                Err(actual) => cur = actual,
            }
        }
    }

    /// For a queued request (holding its [`QueueSlot`], registered on
    /// [`notify`](Core::notify)): checks for a slot again, after the fence
    /// that pairs with [`release`](Core::release)'s.
    pub(crate) fn acquire_queued(self: &Arc<Core>) -> Option<Permit> {
        fence(Ordering::SeqCst);
        self.try_acquire()
    }

    /// Registers a service waiting in `poll_ready` (see [`Watch`]); poll
    /// the watch after checking for a slot again.
    pub(crate) fn watch(self: &Arc<Core>) -> Watch {
        // made before the count is raised: `notify_waiters` wakes every
        // `Notified` made before it is called, enabled or not
        let notified = Box::pin(self.notify.clone().notified_owned());
        self.watching.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        Watch {
            notified,
            core: self.clone(),
        }
    }

    fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.queued.load(Ordering::SeqCst) > 0 {
            self.notify.notify_one();
        }
        if self.watching.load(Ordering::SeqCst) > 0 {
            self.notify.notify_waiters();
        }
    }

    pub(crate) fn emit(
        &self,
        req: &CqlRequest,
        waited: Duration,
        rejected: bool,
        queue_depth: usize,
    ) {
        if self.collectors.is_active() {
            self.collectors.emit(Event::Throttle(ThrottleEvent::new(
                req.meta(),
                self.limiter,
                waited,
                rejected,
                queue_depth,
            )));
        }
    }
}

/// A slot in flight; dropping it frees the slot and wakes a waiter.
pub(crate) struct Permit(Arc<Core>);

impl Permit {
    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.0
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Permit")
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// A place in the queue; dropping it leaves the queue.
pub(crate) struct QueueSlot(Arc<Core>);

impl fmt::Debug for QueueSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("QueueSlot")
    }
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A service's registration while its `poll_ready` waits for a slot
/// (under a load shedder): woken by every release while it lasts;
/// dropping it deregisters.
pub(crate) struct Watch {
    pub(crate) notified: std::pin::Pin<Box<OwnedNotified>>,
    core: Arc<Core>,
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Watch")
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.core.watching.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The admission protocol under `loom`: every interleaving of requests
/// taking, queueing for, watching for and releasing slots.
/// `RUSTFLAGS="--cfg tower_cql_loom" cargo test -p tower-cql-middleware --release --lib loom`
#[cfg(all(test, tower_cql_loom))]
mod loom_tests {
    use super::*;
    use std::future::Future;
    use std::task::Context;

    fn core(limit: usize, max_queue: usize) -> Arc<Core> {
        Arc::new(Core::new(
            "concurrency_limit",
            limit,
            max_queue,
            None,
            Collectors::new(),
            None,
        ))
    }

    fn is_notified(n: std::pin::Pin<&mut OwnedNotified>) -> bool {
        let waker = futures::task::noop_waker();
        n.poll(&mut Context::from_waker(&waker)).is_ready()
    }

    /// A queued request gives up (its future is dropped) while the slot it
    /// waits for is released and another request takes slots: the limit
    /// is never exceeded, and no slot or place in the queue is lost or
    /// counted twice.
    #[test]
    fn loom_a_cancelled_waiter_loses_no_slot() {
        loom::model(|| {
            let core = core(1, 1);
            let held = core.try_acquire().expect("the one slot");
            let inside = Arc::new(AtomicUsize::new(1));
            // runs a request that got `permit`, if it got one
            let run = |permit: Option<Permit>, inside: &AtomicUsize| {
                if let Some(p) = permit {
                    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "over the limit");
                    inside.fetch_sub(1, Ordering::SeqCst);
                    drop(p);
                }
            };
            let waiter = {
                let (core, inside) = (core.clone(), inside.clone());
                loom::thread::spawn(move || {
                    let slot = core.try_enqueue().expect("the queue has room");
                    run(core.acquire_queued(), &inside);
                    drop(slot); // admitted or cancelled, it leaves the queue
                })
            };
            let barger = {
                let (core, inside) = (core.clone(), inside.clone());
                loom::thread::spawn(move || run(core.try_acquire(), &inside))
            };
            inside.fetch_sub(1, Ordering::SeqCst);
            drop(held);
            waiter.join().unwrap();
            barger.join().unwrap();
            assert_eq!((core.in_flight(), core.queued()), (0, 0));
            let one = core.try_acquire().expect("the slot is free again");
            assert!(core.try_acquire().is_none(), "and there is only one");
            drop(one);
            assert!(core.try_enqueue().is_ok(), "the queue has its place back");
        });
    }

    /// A queued request that finds no slot after registering is woken by
    /// the release it missed: it either got the slot or holds a wake.
    #[test]
    fn loom_a_release_wakes_the_waiter_that_missed_it() {
        loom::model(|| {
            let core = core(1, 1);
            let held = core.try_acquire().expect("the one slot");
            let waiter = {
                let core = core.clone();
                loom::thread::spawn(move || {
                    let slot = core.try_enqueue().expect("the queue has room");
                    let mut notified = Box::pin(core.notify.clone().notified_owned());
                    notified.as_mut().enable();
                    let permit = core.acquire_queued();
                    (permit, notified, slot)
                })
            };
            drop(held);
            let (permit, mut notified, _slot) = waiter.join().unwrap();
            assert!(
                permit.is_some() || is_notified(notified.as_mut()),
                "a waiter that missed the release was not woken"
            );
        });
    }

    /// The same for a service waiting in `poll_ready` (under a load
    /// shedder): a release it missed wakes it, and its registration is
    /// gone once dropped.
    #[test]
    fn loom_a_release_wakes_a_watching_service() {
        loom::model(|| {
            let core = core(1, 0);
            let held = core.try_acquire().expect("the one slot");
            let watcher = {
                let core = core.clone();
                loom::thread::spawn(move || {
                    let watch = core.watch();
                    (core.try_acquire(), watch)
                })
            };
            drop(held);
            let (permit, mut watch) = watcher.join().unwrap();
            assert!(
                permit.is_some() || is_notified(watch.notified.as_mut()),
                "a watcher that missed the release was not woken"
            );
            drop(watch);
            assert_eq!(core.watching.load(Ordering::SeqCst), 0);
        });
    }
}
