//! FxHash (the multiply-rotate hash rustc uses) for the label-keyed maps
//! on the recording path: the in-memory collector's series, the prepared
//! statement cache, the metrics layer's cardinality guard.
//!
//! ```
//! use std::collections::HashMap;
//! use tower_cql_core::hash::FxBuild;
//!
//! let mut m: HashMap<&str, u64, FxBuild> = HashMap::default();
//! m.insert("get_user", 1);
//! assert_eq!(m["get_user"], 1);
//! ```
//!
//! Only for keys the application chose (labels, statement text), never
//! for data a remote party controls: FxHash has no resistance to hash
//! flooding.

/// The hasher of the label-keyed maps on the recording path: FxHash (the
/// multiply-rotate hash rustc uses). Keys here are a few short labels the
/// application chose (bounded by construction, never request data), so
/// SipHash's resistance to hash flooding buys nothing, and its cost (~2,400
/// instructions per request over two lookups, measured with callgrind) is
/// most of what a lookup costs.
#[derive(Debug, Default, Clone, Copy)]
pub struct FxHasher(u64);

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl std::hash::Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes([
                c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
            ]));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(last));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// `BuildHasher` for [`FxHasher`].
pub type FxBuild = std::hash::BuildHasherDefault<FxHasher>;
