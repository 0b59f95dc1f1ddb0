//! The driver service's response future, in a block of memory kept for
//! the next request.
//!
//! scylla's execution future is about 4.8 KB. A fresh box per request
//! costs more than everything else the driver service adds: blocks that
//! size are past the allocator's per-thread cache, so each allocation and
//! free goes through its bins (about 640 and 400 instructions, and the
//! consolidations they set off). Here a finished or dropped response
//! future drops its driver future in place and leaves the empty block in
//! a per-thread free list ([`FreeList`], at most 64 blocks a thread); the next
//! request on that thread starts its future in it. No lock (the list is
//! the thread's own) and no `unsafe` (the block is a pinned `Option` that
//! is set and cleared).
//!
//! A block holds no request, session or collector while it is free: it is
//! cleared before it is kept, so a kept block keeps nothing alive.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::DriverInner;
use crate::recycle::FreeList;
use crate::{CqlError, CqlRequest, CqlResponse};

type Output = Result<CqlResponse, CqlError>;

/// A block that can hold one request's driver future at a time.
trait Slot: Send {
    /// Starts `req`'s future in the (empty) block.
    fn start(self: Pin<&mut Self>, inner: Arc<DriverInner>, req: CqlRequest, called: Instant);
    /// Polls the future in the block.
    fn poll_slot(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Output>;
    /// Drops the future in the block, in place.
    fn clear(self: Pin<&mut Self>);
}

pin_project! {
    struct FutureSlot<M, F> {
        make: M,
        #[pin]
        fut: Option<F>,
    }
}

impl<M, F> Slot for FutureSlot<M, F>
where
    M: Fn(Arc<DriverInner>, CqlRequest, Instant) -> F + Send,
    F: Future<Output = Output> + Send,
{
    fn start(self: Pin<&mut Self>, inner: Arc<DriverInner>, req: CqlRequest, called: Instant) {
        let mut this = self.project();
        this.fut.set(Some((this.make)(inner, req, called)));
    }

    fn poll_slot(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Output> {
        match self.project().fut.as_pin_mut() {
            Some(fut) => fut.poll(cx),
            None => panic!("DriverFuture polled after it completed"),
        }
    }

    fn clear(self: Pin<&mut Self>) {
        self.project().fut.set(None);
    }
}

type Block = Pin<Box<dyn Slot>>;

thread_local! {
    static FREE: FreeList<Block> = const { FreeList::new() };
}

fn slot<M, F>(make: M) -> FutureSlot<M, F>
where
    M: Fn(Arc<DriverInner>, CqlRequest, Instant) -> F,
{
    FutureSlot { make, fut: None }
}

// What a block runs: one request through the driver service, timed from
// its call (the attempt's own future, not one awaiting it).
fn run(inner: Arc<DriverInner>, req: CqlRequest, called: Instant) -> impl Future<Output = Output> {
    DriverInner::execute(inner, req, Some(called))
}

/// The response future of [`DriverService`](super::DriverService): the
/// request's execution, in a block kept for the next request once this
/// one completes or is dropped.
pub struct DriverFuture {
    block: Option<Block>,
}

impl DriverFuture {
    /// Starts `req`'s attempt, timed from now: the call's shared reading
    /// inside a stack (see [`clock`](crate::clock)), so the stack's first
    /// attempt reads no clock of its own.
    pub(crate) fn start(inner: Arc<DriverInner>, req: CqlRequest) -> DriverFuture {
        let called = crate::clock::now();
        let mut block = FreeList::take_from(&FREE).unwrap_or_else(|| Box::pin(slot(run)));
        block.as_mut().start(inner, req, called);
        DriverFuture { block: Some(block) }
    }

    // Drops the future in its block (a cancelled attempt reports itself
    // then, as it would in a box of its own), and keeps the block.
    fn recycle(&mut self) {
        let Some(mut block) = self.block.take() else {
            return;
        };
        block.as_mut().clear();
        FreeList::keep_in(&FREE, block);
    }
}

impl Future for DriverFuture {
    type Output = Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Output> {
        let block = self
            .block
            .as_mut()
            .expect("DriverFuture polled after it completed");
        let out = ready!(block.as_mut().poll_slot(cx));
        self.recycle();
        Poll::Ready(out)
    }
}

impl Drop for DriverFuture {
    fn drop(&mut self) {
        self.recycle();
    }
}

impl fmt::Debug for DriverFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DriverFuture")
            .field("done", &self.block.is_none())
            .finish()
    }
}
