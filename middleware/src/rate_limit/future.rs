//! The response future of [`RateLimit`](super::RateLimit): the inner
//! service's future, or the refusal of a request the limit did not admit.

pub use crate::refusable::RefusableFuture as ResponseFuture;
