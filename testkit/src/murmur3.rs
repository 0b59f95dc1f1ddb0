//! The Murmur3 partitioner's token function (Cassandra's variant of
//! MurmurHash3 x64 128, including its sign-extension of tail bytes).

use std::num::Wrapping as W;

const C1: W<i64> = W(0x87c3_7b91_1142_53d5_u64 as i64);
const C2: W<i64> = W(0x4cf5_ad43_2745_937f_u64 as i64);

fn rotl(v: W<i64>, n: u32) -> W<i64> {
    W(v.0.rotate_left(n))
}

fn fmix(mut k: W<i64>) -> W<i64> {
    k ^= W((k.0 as u64 >> 33) as i64);
    k *= W(0xff51_afd7_ed55_8ccd_u64 as i64);
    k ^= W((k.0 as u64 >> 33) as i64);
    k *= W(0xc4ce_b9fe_1a85_ec53_u64 as i64);
    k ^= W((k.0 as u64 >> 33) as i64);
    k
}

/// The token of a serialized partition key (for a composite key, the
/// composite encoding of its components).
pub fn token(key: &[u8]) -> i64 {
    let (mut h1, mut h2) = (W(0i64), W(0i64));
    let mut chunks = key.chunks_exact(16);
    for c in &mut chunks {
        let mut k1 = W(i64::from_le_bytes(c[..8].try_into().expect("8 bytes")));
        let mut k2 = W(i64::from_le_bytes(c[8..].try_into().expect("8 bytes")));
        k1 *= C1;
        k1 = rotl(k1, 31);
        k1 *= C2;
        h1 ^= k1;
        h1 = rotl(h1, 27);
        h1 += h2;
        h1 = h1 * W(5) + W(0x52dc_e729);
        k2 *= C2;
        k2 = rotl(k2, 33);
        k2 *= C1;
        h2 ^= k2;
        h2 = rotl(h2, 31);
        h2 += h1;
        h2 = h2 * W(5) + W(0x3849_5ab5);
    }
    let tail = chunks.remainder();
    let (mut k1, mut k2) = (W(0i64), W(0i64));
    if tail.len() > 8 {
        for i in (8..tail.len()).rev() {
            k2 ^= W(i64::from(tail[i] as i8)) << ((i - 8) * 8);
        }
        k2 *= C2;
        k2 = rotl(k2, 33);
        k2 *= C1;
        h2 ^= k2;
    }
    if !tail.is_empty() {
        for i in (0..tail.len().min(8)).rev() {
            k1 ^= W(i64::from(tail[i] as i8)) << (i * 8);
        }
        k1 *= C1;
        k1 = rotl(k1, 31);
        k1 *= C2;
        h1 ^= k1;
    }
    h1 ^= W(key.len() as i64);
    h2 ^= W(key.len() as i64);
    h1 += h2;
    h2 += h1;
    h1 = fmix(h1);
    h2 = fmix(h2);
    h1 += h2;
    // Long.MIN_VALUE is reserved as the ring's minimum token.
    if h1.0 == i64::MIN { i64::MAX } else { h1.0 }
}

#[cfg(test)]
mod tests {
    use scylla::routing::partitioner::{Murmur3Partitioner, Partitioner};

    #[test]
    fn matches_the_driver_for_every_tail_length() {
        for len in 0..80usize {
            let key: Vec<u8> = (0..len)
                .map(|i| (i as u8).wrapping_mul(37).wrapping_add(200))
                .collect();
            let ours = super::token(&key);
            let driver = Murmur3Partitioner.hash_one(&key).value();
            assert_eq!(ours, driver, "len {len}");
        }
        // a known Cassandra value: token(int 1) = -4069959284402364209
        assert_eq!(
            super::token(&1i32.to_be_bytes()),
            -4_069_959_284_402_364_209
        );
    }
}
