//! The hash for chunk numbers, the keys of a snapshot's exception table and of its chunk
//! locks: two multiplies instead of std's SipHash, seeded per table so nobody can craft keys
//! that collide (a COW device's exceptions come from whoever wrote it).
//!
//! `microbench_lookup_structures` compares it with SipHash for the lookups a 4 KiB read of a
//! chunk-size-1 snapshot makes (8 neighbouring chunks): several times faster. Keeping runs of
//! neighbouring chunks in neighbouring buckets (so one request's lookups share cache lines)
//! measured no better end to end and was not kept.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// The splitmix64 finaliser: two multiplies, and every bit of `z` reaches every bit of the
/// result, low (the bucket) and high (the tag the table compares first) alike, whatever
/// pattern the keys follow.
fn mix(z: u64) -> u64 {
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Builds `ChunkHasher`s with a seed of its own (one per table).
#[derive(Clone)]
pub struct ChunkHash {
    seed: u64,
}

impl Default for ChunkHash {
    fn default() -> Self {
        ChunkHash {
            seed: RandomState::new().hash_one(0x5eed_u64),
        }
    }
}

impl BuildHasher for ChunkHash {
    type Hasher = ChunkHasher;

    fn build_hasher(&self) -> ChunkHasher {
        ChunkHasher(self.seed)
    }
}

pub struct ChunkHasher(u64);

impl Hasher for ChunkHasher {
    fn write_u64(&mut self, chunk: u64) {
        self.0 = mix(chunk ^ self.0);
    }

    /// Keys are u64s; anything else is folded in eight bytes at a time.
    fn write(&mut self, bytes: &[u8]) {
        for piece in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..piece.len()].copy_from_slice(piece);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub type ChunkMap<V> = std::collections::HashMap<u64, V, ChunkHash>;
pub type ChunkSet = std::collections::HashSet<u64, ChunkHash>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Strided keys (every 2^k-th chunk, as a workload writing every N MiB makes) spread over
    /// the buckets (the low bits) and the tags (the top 7 bits) as random keys would.
    #[test]
    fn strides_spread() {
        let h = ChunkHash::default();
        for stride in [1u64, 2, 8, 64, 1024, 1 << 20, 1 << 40] {
            let hashes: Vec<u64> = (0..4096u64).map(|i| h.hash_one(i * stride)).collect();
            let buckets: std::collections::HashSet<u64> = hashes.iter().map(|x| x & 4095).collect();
            // 4096 random keys fill 4096 * (1 - 1/e) = 2589 buckets on average.
            assert!(
                buckets.len() > 2400,
                "stride {stride}: {} buckets",
                buckets.len()
            );
            let tags: std::collections::HashSet<u64> = hashes.iter().map(|x| x >> 57).collect();
            assert_eq!(tags.len(), 128, "stride {stride}");
        }
    }

    #[test]
    fn seeded_per_table() {
        assert_ne!(
            ChunkHash::default().hash_one(1u64),
            ChunkHash::default().hash_one(1u64)
        );
    }

    #[test]
    fn a_map_works() {
        let mut m: ChunkMap<u64> = ChunkMap::default();
        for i in 0..10_000u64 {
            m.insert(i * 3, i);
        }
        assert!((0..10_000u64).all(|i| m.get(&(i * 3)) == Some(&i)));
        assert_eq!(m.get(&1), None);
    }
}
