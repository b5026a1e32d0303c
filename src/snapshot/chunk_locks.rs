//! Per-chunk locks for one snapshot: an origin write holds the chunks it touches until their
//! copy-out has committed and the write has landed, so no write overtakes its copy-out, two
//! writes to one chunk never interleave, and a snapshot read of the origin never sees a write
//! whose old data is still being saved.
//!
//! Locks are taken in ascending chunk order (and, across snapshots, in ascending snapshot id
//! order), which rules out deadlock. The set of held chunks is sharded so unrelated chunks do
//! not contend on one mutex.

use std::ops::Range;

use parking_lot::{Condvar, Mutex};

use super::chunk_hash::ChunkSet;

const SHARDS: u64 = 64;

#[derive(Default)]
struct Shard {
    held: Mutex<ChunkSet>,
    released: Condvar,
}

pub struct ChunkLocks {
    shards: Vec<Shard>,
}

impl Default for ChunkLocks {
    fn default() -> Self {
        ChunkLocks {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }
}

/// Chunks held until dropped.
pub struct ChunkGuard<'a> {
    locks: &'a ChunkLocks,
    chunks: Range<u64>,
}

impl ChunkLocks {
    fn shard(&self, chunk: u64) -> &Shard {
        &self.shards[(chunk % SHARDS) as usize]
    }

    /// Waits until every chunk in `chunks` is free, taking them in ascending order.
    pub fn lock(&self, chunks: Range<u64>) -> ChunkGuard<'_> {
        for c in chunks.clone() {
            let shard = self.shard(c);
            let mut held = shard.held.lock();
            while held.contains(&c) {
                shard.released.wait(&mut held);
            }
            held.insert(c);
        }
        ChunkGuard {
            locks: self,
            chunks,
        }
    }
}

impl Drop for ChunkGuard<'_> {
    fn drop(&mut self) {
        for c in self.chunks.clone() {
            let shard = self.locks.shard(c);
            shard.held.lock().remove(&c);
            shard.released.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn one_holder_per_chunk() {
        let locks = Arc::new(ChunkLocks::default());
        let inside = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let (locks, inside) = (locks.clone(), inside.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        // Overlapping ranges, in different shapes per thread.
                        let _g = locks.lock(i..i + 70);
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}
