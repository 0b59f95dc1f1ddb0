//! The state word of a breaker: one `AtomicU64` packing the state (closed,
//! open, half-open), a generation that changes with every transition, and
//! a payload: the time it opened, or the half-open probes in flight and
//! successes seen. Every transition is a compare-and-swap of this word.

use tower_cql_core::BreakerState;

// ---- the state word: [kind:2][generation:14][payload:48] ----
// closed: payload 0; open: payload = opened-at (µs since start);
// half-open: payload = [probes in flight:24][successes:24].
pub(super) const KIND_SHIFT: u32 = 62;
pub(super) const GEN_SHIFT: u32 = 48;
pub(super) const GEN_MASK: u64 = (1 << 14) - 1;
pub(super) const PAYLOAD_MASK: u64 = (1 << 48) - 1;
pub(super) const COUNT_MASK: u64 = (1 << 24) - 1;
pub(super) const CLOSED: u64 = 0;
pub(super) const OPEN: u64 = 1;
pub(super) const HALF_OPEN: u64 = 2;

pub(super) fn kind(s: u64) -> u64 {
    s >> KIND_SHIFT
}

pub(super) fn generation(s: u64) -> u64 {
    (s >> GEN_SHIFT) & GEN_MASK
}

pub(super) fn payload(s: u64) -> u64 {
    s & PAYLOAD_MASK
}

/// A state word of `kind` one generation after `prev`.
pub(super) fn next_word(prev: u64, kind: u64, payload: u64) -> u64 {
    let generation = (generation(prev) + 1) & GEN_MASK;
    (kind << KIND_SHIFT) | (generation << GEN_SHIFT) | (payload & PAYLOAD_MASK)
}

pub(super) fn half_open_counts(s: u64) -> (u64, u64) {
    let p = payload(s);
    (p >> 24, p & COUNT_MASK)
}

pub(super) fn with_half_open_counts(s: u64, in_flight: u64, successes: u64) -> u64 {
    (s & !PAYLOAD_MASK) | (in_flight << 24) | successes
}

pub(super) fn state_of(s: u64) -> BreakerState {
    match kind(s) {
        OPEN => BreakerState::Open,
        HALF_OPEN => BreakerState::HalfOpen,
        _ => BreakerState::Closed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_words_round_trip() {
        let open = next_word(0, OPEN, 12_345);
        assert_eq!(
            (kind(open), generation(open), payload(open)),
            (OPEN, 1, 12_345)
        );
        let half = with_half_open_counts(next_word(open, HALF_OPEN, 0), 3, 7);
        assert_eq!(kind(half), HALF_OPEN);
        assert_eq!(generation(half), 2);
        assert_eq!(half_open_counts(half), (3, 7));
        let wrapped = next_word(GEN_MASK << GEN_SHIFT, CLOSED, 0);
        assert_eq!(generation(wrapped), 0);
    }
}
