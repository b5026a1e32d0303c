//! The exception store interface, as the kernel's dm-exception-store.h defines it: where a
//! snapshot keeps its exceptions (origin chunk -> COW chunk) and how it allocates COW chunks for
//! new ones. Two implementations, as in the kernel: `transient::Transient` (`N`, exceptions in
//! memory only: dm-snap-transient.c) and `persistent::Persistent` (`P`/`PO`, the kernel's
//! on-disk format: dm-snap-persistent.c).
//!
//! A store's constructor plays the kernel's `ctr` and `read_metadata`; dropping it is `dtr`. A
//! `Snapshot` calls every method with its store lock held, so a store needs no lock of its own.

use std::io;

/// Which store a table line names (the kernel's `type->name`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreType {
    /// `N`: exceptions live in memory only; the COW device holds just the data.
    Transient,
    /// `P` / `PO`: the kernel's on-disk format.
    Persistent,
}

/// A run of exceptions to merge, as the kernel's `prepare_merge` finds it: the last exception
/// (old chunk, new chunk) and how many exceptions before it, counting it, are consecutive with
/// it in both chunk numbers.
pub type MergeRun = (u64, u64, u64);

pub trait ExceptionStore: Send {
    /// The kernel's `type->name`.
    fn store_type(&self) -> StoreType;

    /// The kernel's `prepare_exception`: allocates the COW chunk of a new exception; None when
    /// the COW device is full.
    fn prepare_exception(&mut self) -> Option<u64>;

    /// The kernel's `commit_exception`: records the exception `old` -> `new`, whose data
    /// reached the COW device if `valid` (a store that keeps exceptions invalidates itself
    /// otherwise). With `more_pending`, exceptions allocated after this one are still on their
    /// way, and a store may leave the metadata write to the last of them. True once this
    /// exception and every one committed before it are durable: the kernel's callbacks run then.
    fn commit_exception(&mut self, old: u64, new: u64, valid: bool, more_pending: bool) -> bool;

    /// The success the kernel's commit callbacks are called with: false once a copy or a
    /// metadata write failed.
    fn is_valid(&self) -> bool {
        true
    }

    /// The kernel's `prepare_merge`: the last run of exceptions to merge back into the origin,
    /// None once none is left. A store without merge support (the transient one: the kernel
    /// leaves the function out) has nothing to merge.
    fn prepare_merge(&mut self) -> io::Result<Option<MergeRun>> {
        Ok(None)
    }

    /// The kernel's `commit_merge`: forgets the last `n` exceptions, merged now.
    fn commit_merge(&mut self, _n: u64) -> io::Result<()> {
        Ok(())
    }

    /// The kernel's `drop_snapshot`: the snapshot was invalidated; a store that keeps metadata
    /// records it there.
    fn drop_snapshot(&mut self) {}

    /// The kernel's `usage`: sectors of the COW device allocated, and of those, metadata.
    fn usage(&self) -> (u64, u64);
}

/// The kernel's `dm_exception_store_set_chunk_size` checks, with its words.
pub fn check_chunk_size(chunk: u32, block_sizes: &[u32]) -> Result<(), &'static str> {
    if !chunk.is_power_of_two() {
        return Err("Chunk size is not a power of 2");
    }
    if block_sizes
        .iter()
        .any(|b| !chunk.is_multiple_of((b / 512).max(1)))
    {
        return Err("Chunk size is not a multiple of device blocksize");
    }
    if chunk > (i32::MAX as u32) >> 9 {
        return Err("Chunk size is too high");
    }
    Ok(())
}
