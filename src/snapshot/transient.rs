//! The transient exception store (`N`), the kernel's dm-snap-transient.c: exceptions live in
//! memory only, the COW device holds just the data, allocated from its start.

use std::sync::Arc;

use super::exception_store::{ExceptionStore, StoreType};
use crate::backing::Backing;

pub struct Transient {
    cow: Arc<Backing>,
    /// Chunk size in sectors.
    chunk: u64,
    /// Next free sector of the COW device.
    next_free: u64,
}

impl Transient {
    /// `chunk` is the table's chunk size in sectors, a power of two.
    pub fn new(cow: Arc<Backing>, chunk: u64) -> Transient {
        Transient {
            cow,
            chunk,
            next_free: 0,
        }
    }
}

impl ExceptionStore for Transient {
    fn store_type(&self) -> StoreType {
        StoreType::Transient
    }

    fn prepare_exception(&mut self) -> Option<u64> {
        if self.cow.size().0 < self.next_free + self.chunk {
            return None;
        }
        let new = self.next_free / self.chunk;
        self.next_free += self.chunk;
        Some(new)
    }

    /// Nothing to write: every exception is acknowledged at once, and as a success even when
    /// its copy failed, as dmfs has always done (the kernel's transient store hands `valid` on
    /// to its callback, which invalidates the snapshot on a failed copy).
    fn commit_exception(&mut self, _old: u64, _new: u64, _valid: bool, _more: bool) -> bool {
        true
    }

    fn usage(&self) -> (u64, u64) {
        (self.next_free, 0)
    }
}
