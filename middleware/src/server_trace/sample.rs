//! The sampling decision: a ratio drawn from a thread-local generator,
//! and the slow-trigger slots. Lock-free: the ratio is one comparison,
//! the slots are atomics touched only when the slow rule is on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tower_cql_core::RequestMeta;
use tower_cql_core::server_trace::ServerTraceConfig;

/// Operations with an armed slow trigger at once (more share slots: the
/// last one armed in a slot wins it).
const SLOTS: usize = 64;

/// Decides which requests carry the tracing flag.
pub(crate) struct Sampler {
    /// `ratio * 2^64`, compared with a random `u64`; `always` for 1.
    threshold: u64,
    always: bool,
    slow: Option<Duration>,
    trace_next: u32,
    /// Per slot: the armed operation's tag (high 32 bits, never 0) and
    /// how many of its requests are still to be traced (low 32 bits).
    slots: Box<[AtomicU64]>,
}

impl Sampler {
    pub(crate) fn new(config: &ServerTraceConfig) -> Sampler {
        let ratio = config.sample_ratio.clamp(0.0, 1.0);
        Sampler {
            // the cast saturates; below 1 it is exact to 2^-53
            threshold: (ratio * 18_446_744_073_709_551_616.0) as u64,
            always: ratio >= 1.0,
            slow: config.slow_threshold,
            trace_next: config.trace_next,
            slots: if config.slow_threshold.is_some() {
                (0..SLOTS).map(|_| AtomicU64::new(0)).collect()
            } else {
                Box::new([])
            },
        }
    }

    /// The slow threshold, when the slow rule is on.
    pub(crate) fn slow_threshold(&self) -> Option<Duration> {
        self.slow
    }

    /// Whether a request of operation `key` is traced: an armed slow
    /// trigger of its operation first, then the ratio.
    #[inline]
    pub(crate) fn sample(&self, key: u64) -> bool {
        if self.slow.is_some() && self.take_armed(key) {
            return true;
        }
        self.always || (self.threshold != 0 && fastrand::u64(..) < self.threshold)
    }

    fn slot(&self, key: u64) -> (&AtomicU64, u64) {
        let tag = (key >> 32) | 1;
        (&self.slots[(key as usize) % self.slots.len()], tag)
    }

    /// Takes one of the traced requests armed for `key`'s operation.
    fn take_armed(&self, key: u64) -> bool {
        let (slot, tag) = self.slot(key);
        let mut cur = slot.load(Ordering::Relaxed);
        loop {
            if cur >> 32 != tag || cur & 0xffff_ffff == 0 {
                return false;
            }
            match slot.compare_exchange_weak(cur, cur - 1, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// A request of `key`'s operation took `elapsed`: past the threshold,
    /// its next `trace_next` requests are traced.
    pub(crate) fn observe(&self, key: u64, elapsed: Duration) {
        if self.slow.is_some_and(|t| elapsed > t) {
            let (slot, tag) = self.slot(key);
            slot.store((tag << 32) | u64::from(self.trace_next), Ordering::Relaxed);
        }
    }
}

/// The operation a request belongs to, for the slow rule: its labels
/// (operation, keyspace, table) and statement kind. The labels' hash is
/// the one computed once per statement ([`RequestMeta::labels_hash`]),
/// not the label texts again per request.
pub(crate) fn operation_key(meta: &RequestMeta) -> u64 {
    // the kind's short static name (`SELECT`), FNV-1a, on the labels' hash
    let mut h = meta.labels_hash();
    for b in meta.kind().as_str().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_cql_core::CqlRequest;

    fn config(ratio: f64) -> ServerTraceConfig {
        ServerTraceConfig {
            sample_ratio: ratio,
            ..ServerTraceConfig::default()
        }
    }

    #[test]
    fn the_ratio_is_kept_within_a_few_percent() {
        assert!((0..1000).all(|_| !Sampler::new(&config(0.0)).sample(1)));
        assert!((0..1000).all(|_| Sampler::new(&config(1.0)).sample(1)));
        let s = Sampler::new(&config(0.1));
        let n = (0..100_000).filter(|_| s.sample(1)).count();
        assert!((9_000..11_000).contains(&n), "{n} of 100,000 at 0.1");
    }

    #[test]
    fn a_slow_request_arms_the_next_n_of_its_operation_only() {
        let s = Sampler::new(&ServerTraceConfig {
            slow_threshold: Some(Duration::from_millis(10)),
            trace_next: 3,
            ..config(0.0)
        });
        let get = operation_key(
            CqlRequest::query("SELECT v FROM ks.t")
                .operation("get")
                .meta(),
        );
        let put = operation_key(
            CqlRequest::query("SELECT v FROM ks.t")
                .operation("put")
                .meta(),
        );
        assert_ne!(get, put);
        assert!(!s.sample(get));
        s.observe(get, Duration::from_millis(5));
        assert!(!s.sample(get), "not slow: nothing armed");
        s.observe(get, Duration::from_millis(11));
        assert!(!s.sample(put), "another operation is not traced");
        assert_eq!((0..10).filter(|_| s.sample(get)).count(), 3);
    }

    #[test]
    fn operations_without_a_name_are_told_apart_by_table() {
        let a = operation_key(CqlRequest::query("SELECT v FROM ks.a").meta());
        let b = operation_key(CqlRequest::query("SELECT v FROM ks.b").meta());
        let a2 = operation_key(CqlRequest::query("SELECT w FROM ks.a WHERE k = ?").meta());
        assert_ne!(a, b);
        assert_eq!(a, a2);
    }
}
