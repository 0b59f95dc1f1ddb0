//! The response future of [`LoadShed`](super::LoadShed): the inner
//! service's future, or the refusal of a shed request.

pub use crate::refusable::RefusableFuture as ResponseFuture;
