//! What a service that refuses a request owes the inner service it polled
//! ready: the capacity that service reserved for a call it will not get.
//!
//! A limit built for load shedding (see `tower-cql-middleware`'s
//! `concurrency` and `rate_limit`) reserves in `poll_ready` (a slot, a
//! token) and keeps the reservation until its `call`. A service above it
//! that refuses the request instead of calling (the shutdown gate once
//! `close()` has begun, the load shedder, the circuit breaker, the rate
//! limit, the concurrency limit's full queue) gives it back at once with
//! [`release`]. Otherwise a long-lived service (one a task keeps between
//! requests) would keep it while idle, and every other request sharing
//! the limit would be shed with nothing in flight, or find the rate
//! limit's bucket short of the token it holds. This is the one place that
//! rule is kept; every refusal after a ready `poll_ready` goes through it.

/// Gives back what `inner`, polled ready for a request that is refused
/// instead, reserved for it: the ready service is dropped for a clone,
/// which holds nothing (a clone of a limited service shares the limit
/// but not its reservation). The clone is polled ready before the next
/// call, as any.
pub fn release<S: Clone>(inner: &mut S) {
    let fresh = inner.clone();
    drop(std::mem::replace(inner, fresh));
}
