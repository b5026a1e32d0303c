//! Snapshots, as the kernel's dm-snap.c does them: a snapshot of an origin device keeps, in a
//! COW device, the old contents of every chunk written since the snapshot was taken, and the
//! snapshot's own writes.
//!
//! A `Snapshot` (the kernel's `struct dm_snapshot`) is the state that belongs to one COW
//! device: the exception store (transient or persistent, in the kernel's on-disk format), the
//! table of completed exceptions, per-chunk locks and the valid / overflow / merge flags. The
//! store is an `ExceptionStore`, the kernel's interface, implemented by `transient` and
//! `persistent`. The targets (`snapshot`, `snapshot-merge`: `target::snapshot::SnapshotTarget`)
//! are views onto a `Snapshot`; a new table naming the same COW device while the old one is
//! live takes the `Snapshot` over, as the kernel hands exceptions over between tables. Writes
//! through a `snapshot-origin` target reach every active `Snapshot` of that origin through the
//! mount's `Origins`, which every snapshot and origin target of the mount holds.

pub mod chunk_hash;
pub mod chunk_locks;
pub mod exception_store;
pub mod merge;
pub mod origins;
pub mod persistent;
pub mod transient;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex, RwLock};

use crate::backing::Backing;
use crate::device_link::DeviceLink;
use crate::error::{DmError, DmResult};
use crate::units::{SECTOR_SIZE, Sectors};
use chunk_hash::ChunkMap;
use chunk_locks::{ChunkGuard, ChunkLocks};
pub use exception_store::{ExceptionStore, StoreType};
pub use origins::Origins;
use persistent::Persistent;
use transient::Transient;

/// Copies between devices move at most this much at a time.
const COPY_BYTES: u64 = 1 << 20;

/// The exception store plus the bookkeeping that makes commits happen in allocation order,
/// and lets one metadata write and flush acknowledge every exception committed meanwhile.
struct StoreState {
    store: Box<dyn ExceptionStore>,
    next_seq: u64,
    commit_seq: u64,
    /// Exceptions allocated but not yet committed.
    pending: u64,
    /// Counts metadata flushes; waiters watch it change.
    flush_gen: u64,
}

/// An exception on its way to the store: origin chunk `old` saved in COW chunk `new`.
struct Exception {
    seq: u64,
    old: u64,
    new: u64,
    /// Whether the data reached the COW device.
    copied: bool,
}

pub struct Snapshot {
    /// Orders lock taking across snapshots; never reused.
    pub id: u64,
    /// The mount's snapshots: origin writes through a merging snapshot reach the others, and
    /// the snapshot leaves them as it goes.
    origins: Arc<Origins>,
    pub origin: Arc<Backing>,
    pub cow: Arc<Backing>,
    store_type: StoreType,
    /// Chunk size in sectors (a power of two) and its log2.
    chunk: u64,
    shift: u32,
    state: Mutex<StoreState>,
    committed: Condvar,
    /// Completed exceptions: origin chunk -> COW chunk.
    exceptions: RwLock<ChunkMap<u64>>,
    locks: ChunkLocks,
    valid: AtomicBool,
    overflowed: AtomicBool,
    merge_failed: AtomicBool,
    /// Set once a table holding this snapshot went live: origin writes copy out only then.
    active: AtomicBool,
    /// A snapshot-merge target owns it: origin writes no longer copy out to it.
    merging: AtomicBool,
    /// The snapshot device's size: origin writes at or past it have nothing to save.
    limit: AtomicU64,
    /// The target instance that serves I/O (the newest to go live).
    pub owner: AtomicU64,
    /// Target instances holding this snapshot (at most two: during a handover).
    pub targets: AtomicU32,
    /// The device serving the snapshot: invalidation raises an event there, as the kernel's
    /// `__invalidate_snapshot` calls `dm_table_event`; a handover waits for it to be suspended.
    link: Mutex<Option<DeviceLink>>,
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

/// Copies `sectors` from `src` at `from` to `to`, written by `write`, a bounded piece at a
/// time, through the thread's reusable (page-aligned) buffer: a copy-out per first write to a
/// chunk allocates no buffer.
fn copy(
    src: &Backing,
    from: u64,
    to: u64,
    sectors: u64,
    write: impl Fn(Sectors, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let len = (sectors * SECTOR_SIZE).min(COPY_BYTES) as usize;
    crate::scratch::with_aligned_buffer(len, |buf| {
        let mut done = 0;
        while done < sectors {
            let n = (sectors - done).min(COPY_BYTES / SECTOR_SIZE);
            let piece = &mut buf[..(n * SECTOR_SIZE) as usize];
            src.read_at(Sectors(from + done), piece)?;
            write(Sectors(to + done), piece)?;
            done += n;
        }
        Ok(())
    })
}

impl Snapshot {
    /// Opens the exception store on `cow` and registers the snapshot with its origin in
    /// `origins` (inactive until a table holding it goes live). `chunk` 0 lets a persistent
    /// store take the size from the COW header (or the kernel's default).
    pub fn open(
        origins: &Arc<Origins>,
        origin: Arc<Backing>,
        cow: Arc<Backing>,
        store_type: StoreType,
        chunk: u32,
    ) -> DmResult<Arc<Snapshot>> {
        let block_sizes = [cow.logical_block_size(), origin.logical_block_size()];
        let (store, chunk, loaded): (Box<dyn ExceptionStore>, _, _) = match store_type {
            StoreType::Transient => {
                if chunk == 0 {
                    return Err(DmError::invalid("Chunk size not set"));
                }
                let chunk = chunk as u64;
                (
                    Box::new(Transient::new(cow.clone(), chunk)),
                    chunk,
                    Vec::new(),
                )
            }
            StoreType::Persistent => {
                let opened = Persistent::open(cow.clone(), chunk, &block_sizes)?;
                let chunk = opened.store.chunk();
                if !opened.store.is_valid() {
                    log::warn!("Snapshot is marked invalid.");
                }
                (Box::new(opened.store), chunk, opened.exceptions)
            }
        };
        let valid = store.is_valid();
        let snap = Arc::new(Snapshot {
            id: origins.next_id(),
            origins: origins.clone(),
            origin,
            cow,
            store_type,
            chunk,
            shift: chunk.trailing_zeros(),
            state: Mutex::new(StoreState {
                store,
                next_seq: 0,
                commit_seq: 0,
                pending: 0,
                flush_gen: 0,
            }),
            committed: Condvar::new(),
            exceptions: RwLock::new(loaded.into_iter().collect()),
            locks: ChunkLocks::default(),
            valid: AtomicBool::new(valid),
            overflowed: AtomicBool::new(false),
            merge_failed: AtomicBool::new(false),
            active: AtomicBool::new(false),
            merging: AtomicBool::new(false),
            limit: AtomicU64::new(u64::MAX),
            owner: AtomicU64::new(0),
            targets: AtomicU32::new(0),
            link: Mutex::new(None),
        });
        origins.register(&snap);
        Ok(snap)
    }

    pub fn store_type(&self) -> StoreType {
        self.store_type
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk
    }

    pub fn is_valid(&self) -> bool {
        self.valid.load(Ordering::SeqCst)
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }

    pub fn is_merging(&self) -> bool {
        self.merging.load(Ordering::SeqCst)
    }

    /// A table holding this snapshot went live, as a device of `size` sectors that `link`
    /// leads to.
    pub fn activate(&self, owner: u64, size: Sectors, merging: bool, link: &DeviceLink) {
        *self.link.lock() = Some(link.clone());
        self.owner.store(owner, Ordering::SeqCst);
        self.limit.store(size.0, Ordering::SeqCst);
        self.merging.store(merging, Ordering::SeqCst);
        self.active.store(true, Ordering::SeqCst);
    }

    /// Whether the device serving the snapshot is suspended, or is the device `link` leads
    /// to (which the kernel suspends before it swaps tables).
    pub fn server_suspended_or(&self, link: &DeviceLink) -> bool {
        match &*self.link.lock() {
            Some(server) => server.same_device(link) || server.is_suspended(),
            None => true,
        }
    }

    pub fn stop_merging(&self) {
        self.merging.store(false, Ordering::SeqCst);
    }

    pub fn set_merge_failed(&self) {
        self.merge_failed.store(true, Ordering::SeqCst);
    }

    fn chunk_of(&self, sector: u64) -> u64 {
        sector >> self.shift
    }

    fn lookup(&self, chunk: u64) -> Option<u64> {
        self.exceptions.read().get(&chunk).copied()
    }

    /// Where `sector` of origin chunk `chunk` lives on the COW device, through exception `new`.
    fn cow_sector(&self, new: u64, sector: u64) -> Sectors {
        Sectors((new << self.shift) + (sector & (self.chunk - 1)))
    }

    /// Calls `f(chunk, sector, byte range)` for each chunk-sized piece of an I/O.
    fn for_each_chunk(
        &self,
        sector: u64,
        bytes: usize,
        mut f: impl FnMut(u64, u64, std::ops::Range<usize>) -> io::Result<()>,
    ) -> io::Result<()> {
        let end = sector + bytes as u64 / SECTOR_SIZE;
        let mut s = sector;
        while s < end {
            let chunk = self.chunk_of(s);
            let piece_end = ((chunk + 1) << self.shift).min(end);
            let from = ((s - sector) * SECTOR_SIZE) as usize;
            let to = ((piece_end - sector) * SECTOR_SIZE) as usize;
            f(chunk, s, from..to)?;
            s = piece_end;
        }
        Ok(())
    }

    /// Reads the snapshot's view: remapped chunks from the COW device, the rest from the
    /// origin (holding the chunk, so an origin write cannot land between lookup and read).
    pub fn read(&self, sector: u64, buf: &mut [u8]) -> io::Result<()> {
        self.for_each_chunk(sector, buf.len(), |chunk, s, range| {
            if !self.is_valid() {
                return Err(eio());
            }
            let piece = &mut buf[range];
            if let Some(new) = self.lookup(chunk) {
                return self.cow.read_at(self.cow_sector(new, s), piece);
            }
            let _held = self.locks.lock(chunk..chunk + 1);
            match self.lookup(chunk) {
                Some(new) => self.cow.read_at(self.cow_sector(new, s), piece),
                None => self.origin.read_at(Sectors(s), piece),
            }
        })
    }

    /// Writes to the snapshot: into its exceptions, made first for the chunks that have none
    /// (copying the origin chunk unless the write covers all of it) and committed before the
    /// write is acknowledged.
    pub fn write(&self, sector: u64, data: &[u8], overflow_ok: bool) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if !self.is_valid() || self.overflowed.load(Ordering::SeqCst) {
            return Err(eio());
        }
        let end = sector + data.len() as u64 / SECTOR_SIZE;
        let chunks = self.chunk_of(sector)..self.chunk_of(end - 1) + 1;
        let _held = self.locks.lock(chunks.clone());
        // Allocations stay off the path of a write to chunks that have exceptions: these
        // lists are then empty, and an empty Vec allocates nothing. A write that makes
        // exceptions (the first to a chunk) allocates the lists and may grow the exception
        // table: a few small allocations beside a copy-out, a metadata write and a flush.
        let missing: Vec<u64> = chunks.filter(|&c| self.lookup(c).is_none()).collect();
        let allocated = self.prepare(missing.len());
        let full = allocated.len() < missing.len();
        if full {
            if overflow_ok {
                if !self.overflowed.swap(true, Ordering::SeqCst) {
                    log::error!("Snapshot overflowed: Unable to allocate exception.");
                }
            } else {
                self.invalidate("Unable to allocate exception.");
            }
        }
        // Chunks the write covers entirely need no copy: the write itself fills them.
        let covered = |c: u64| c << self.shift >= sector && (c + 1) << self.shift <= end;
        let data_at = |c: u64| {
            let from = (((c << self.shift) - sector) * SECTOR_SIZE) as usize;
            &data[from..from + (self.chunk * SECTOR_SIZE) as usize]
        };
        let batch: Vec<Exception> = missing
            .iter()
            .zip(allocated)
            .map(|(&old, (seq, new))| {
                let copied = if covered(old) {
                    self.cow.write_at(Sectors(new << self.shift), data_at(old))
                } else {
                    self.copy_out_chunks(old, new, 1)
                };
                Exception {
                    seq,
                    old,
                    new,
                    copied: copied.is_ok(),
                }
            })
            .collect();
        if !self.commit(&batch) || full {
            return Err(eio());
        }
        self.for_each_chunk(sector, data.len(), |chunk, s, range| {
            let fresh = batch.iter().any(|e| e.old == chunk);
            if fresh && covered(chunk) {
                return Ok(());
            }
            let new = self.lookup(chunk).ok_or_else(eio)?;
            self.cow.write_at(self.cow_sector(new, s), &data[range])
        })
    }

    /// Saves the origin's chunks in `[start, end)` that this snapshot has not saved yet, and
    /// returns them held: the caller's origin write lands before they are let go. None when
    /// the snapshot takes no copies (inactive, invalid, merging, or the range is past its end).
    pub fn copy_out(&self, start: u64, end: u64) -> Option<ChunkGuard<'_>> {
        if !self.is_active() || !self.is_valid() || self.is_merging() {
            return None;
        }
        let end = end.min(self.limit.load(Ordering::SeqCst));
        if start >= end {
            return None;
        }
        let chunks = self.chunk_of(start)..self.chunk_of(end - 1) + 1;
        let held = self.locks.lock(chunks.clone());
        // As in `write`: nothing is allocated unless exceptions are made.
        let missing: Vec<u64> = chunks.filter(|&c| self.lookup(c).is_none()).collect();
        let allocated = self.prepare(missing.len());
        if allocated.len() < missing.len() {
            self.invalidate("Unable to allocate exception.");
        }
        let mut batch: Vec<Exception> = missing
            .iter()
            .zip(allocated)
            .map(|(&old, (seq, new))| Exception {
                seq,
                old,
                new,
                copied: false,
            })
            .collect();
        // Chunks next to each other in the origin and in the COW device (a sequential write
        // saving a run of chunks) are copied in one piece: a 1 MiB write over 16 KiB chunks
        // is then 1 read and 1 write, not 64 of each.
        let mut i = 0;
        while i < batch.len() {
            let mut run = 1;
            while i + run < batch.len()
                && batch[i + run].old == batch[i].old + run as u64
                && batch[i + run].new == batch[i].new + run as u64
            {
                run += 1;
            }
            let copied = self
                .copy_out_chunks(batch[i].old, batch[i].new, run as u64)
                .is_ok();
            batch[i..i + run].iter_mut().for_each(|e| e.copied = copied);
            i += run;
        }
        self.commit(&batch);
        Some(held)
    }

    /// Copies `n` origin chunks from `old` into COW chunks from `new` (only the part inside
    /// the origin, as the kernel does for a last, partial chunk).
    fn copy_out_chunks(&self, old: u64, new: u64, n: u64) -> io::Result<()> {
        let from = old << self.shift;
        let size = self.origin.size().0;
        if from >= size {
            return Ok(());
        }
        // Past the page cache, as kcopyd writes: the commit's flush follows at once.
        copy(
            &self.origin,
            from,
            new << self.shift,
            (n * self.chunk).min(size - from),
            |at, piece| self.cow.write_at_uncached(at, piece),
        )
    }

    /// Allocates up to `n` COW chunks, each with its place in the commit order; fewer when the
    /// COW device fills up.
    fn prepare(&self, n: usize) -> Vec<(u64, u64)> {
        let mut out = Vec::with_capacity(n);
        if n == 0 {
            return out;
        }
        let mut st = self.state.lock();
        while out.len() < n {
            let Some(new) = st.store.prepare_exception() else {
                break;
            };
            let seq = st.next_seq;
            st.next_seq += 1;
            st.pending += 1;
            out.push((seq, new));
        }
        out
    }

    /// Commits a batch of exceptions (allocated together, so consecutive in the commit
    /// order) after those allocated before them, and waits until they are durable; then they
    /// are in the table. The metadata area is written when no other exception is in flight or
    /// the area fills, so one flush serves every exception committed meanwhile. False (and
    /// the snapshot invalidated) if a copy or the metadata write failed.
    fn commit(&self, batch: &[Exception]) -> bool {
        let Some(first) = batch.first() else {
            return true;
        };
        let mut st = self.state.lock();
        while st.commit_seq != first.seq {
            self.committed.wait(&mut st);
        }
        let mut flushed_after_last = false;
        for e in batch {
            st.commit_seq += 1;
            st.pending -= 1;
            let others_in_flight = st.pending > 0;
            flushed_after_last =
                st.store
                    .commit_exception(e.old, e.new, e.copied, others_in_flight);
            if flushed_after_last {
                st.flush_gen += 1;
            }
        }
        self.committed.notify_all();
        if !flushed_after_last {
            // Exceptions allocated after these are in flight: the last of them writes the
            // area for all.
            let generation = st.flush_gen;
            while st.flush_gen == generation {
                self.committed.wait(&mut st);
            }
        }
        let ok = st.store.is_valid();
        drop(st);
        if ok {
            let mut table = self.exceptions.write();
            for e in batch {
                table.insert(e.old, e.new);
            }
        } else {
            self.invalidate("Error reading/writing.");
        }
        ok
    }

    /// The snapshot becomes unusable: every I/O fails and `status` says `Invalid`; a
    /// persistent store records it in the COW header.
    fn invalidate(&self, why: &str) {
        if !self.valid.swap(false, Ordering::SeqCst) {
            return;
        }
        log::error!("Invalidating snapshot {}: {why}", self.cow.name());
        self.state.lock().store.drop_snapshot();
        if let Some(link) = &*self.link.lock() {
            link.event();
        }
    }

    /// What `dmsetup status` prints for the snapshot.
    pub fn status(&self) -> String {
        if !self.is_valid() {
            return "Invalid".into();
        }
        if self.merge_failed.load(Ordering::SeqCst) {
            return "Merge failed".into();
        }
        if self.overflowed.load(Ordering::SeqCst) {
            return "Overflow".into();
        }
        let total = self.cow.size().0;
        let (allocated, metadata) = self.state.lock().store.usage();
        format!("{allocated}/{total} {metadata}")
    }

    /// Writes through a merging snapshot: a chunk not merged yet is written in the COW device
    /// (waiting while that chunk is being merged); everything else goes to the origin.
    pub fn merging_write(&self, sector: u64, data: &[u8]) -> io::Result<()> {
        self.for_each_chunk(sector, data.len(), |chunk, s, range| {
            let piece = &data[range];
            if self.is_valid() && self.lookup(chunk).is_some() {
                let _held = self.locks.lock(chunk..chunk + 1);
                if let Some(new) = self.lookup(chunk) {
                    return self.cow.write_at(self.cow_sector(new, s), piece);
                }
            }
            self.origins.origin_write(&self.origin, s, piece)
        })
    }

    /// Reads through a merging snapshot: what the snapshot held, wherever it is now.
    pub fn merging_read(&self, sector: u64, buf: &mut [u8]) -> io::Result<()> {
        if !self.is_valid() {
            return self.origin.read_at(Sectors(sector), buf);
        }
        self.read(sector, buf)
    }

    /// One step of a merge: copies the last run of consecutive exceptions back to the origin
    /// and removes them. Ok(false) once nothing is left (or the snapshot cannot be merged).
    pub fn merge_step(&self) -> Result<bool, String> {
        if !self.is_valid() {
            log::error!("Snapshot is invalid: can't merge");
            return Ok(false);
        }
        let step = self.state.lock().store.prepare_merge();
        let (last_old, last_new, n) = match step {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(false),
            Err(e) => {
                return Err(format!(
                    "Read error in exception store: shutting down merge ({e})"
                ));
            }
        };
        // A run read back from disk; a hostile COW device must not make this overflow.
        let old = last_old.wrapping_add(1).wrapping_sub(n);
        let new = last_new.wrapping_add(1).wrapping_sub(n);
        let (Some(dest), Some(span)) = (old.checked_mul(self.chunk), n.checked_mul(self.chunk))
        else {
            return Err(format!(
                "corrupt exception for chunk {last_old}: shutting down merge"
            ));
        };
        if old.checked_add(n).is_none() || dest.checked_add(span).is_none() {
            return Err(format!(
                "corrupt exception for chunk {last_old}: shutting down merge"
            ));
        }
        // Other snapshots of the origin save what the merge is about to overwrite.
        for other in self.origins.snapshots_of(self.origin.key()) {
            if other.id != self.id {
                drop(other.copy_out(dest, dest + span));
            }
        }
        let _held = self.locks.lock(old..old + n);
        let size = self.origin.size().0;
        if dest < size {
            let count = span.min(size - dest);
            copy(&self.cow, new << self.shift, dest, count, |at, piece| {
                self.origin.write_at(at, piece)
            })
            .map_err(|e| format!("Read/write error: shutting down merge ({e})"))?;
            self.origin
                .flush()
                .map_err(|e| format!("Flush after merge failed: shutting down merge ({e})"))?;
        }
        self.state
            .lock()
            .store
            .commit_merge(n)
            .map_err(|e| format!("Write error in exception store: shutting down merge ({e})"))?;
        let mut table = self.exceptions.write();
        for c in old..old + n {
            table.remove(&c);
        }
        Ok(true)
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        self.origins.unregister();
    }
}
