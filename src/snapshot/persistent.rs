//! The persistent exception store: the kernel's on-disk COW format (dm-snap-persistent.c), so
//! a COW device written here loads in the kernel and the other way round.
//!
//! Layout, in chunks of the snapshot's chunk size:
//! - chunk 0: the header, four little-endian u32s: magic "SnAp" (0x70416e53), valid (1, or 0
//!   once the snapshot has been invalidated), version (1), chunk size in sectors;
//! - chunk 1: the first metadata area, then `exceptions_per_area` data chunks, then the next
//!   metadata area, and so on (`exceptions_per_area` = chunk bytes / 16);
//! - a metadata area holds exceptions as pairs of little-endian u64s (old chunk on the origin,
//!   new chunk on the COW device); the first pair whose new chunk is 0 ends the list.
//!
//! The commit protocol is the kernel's: an exception is written into the in-memory copy of the
//! current area; when no other exception is in flight (or the area is full) the area is written
//! and flushed, and only then are the writes waiting on those exceptions acknowledged. Filling
//! an area zeroes the next one on disk first, so a reload always finds the end of the list.

use std::io;
use std::sync::Arc;

use super::exception_store::{ExceptionStore, MergeRun, StoreType, check_chunk_size};
use crate::backing::Backing;
use crate::error::{DmError, DmResult};
use crate::units::Sectors;

pub const SNAP_MAGIC: u32 = 0x7041_6e53;
pub const DISK_VERSION: u32 = 1;
/// Chunks before the first metadata area (the header).
const HEADER_CHUNKS: u64 = 1;
/// The kernel's default when a table gives chunk size 0: 16 KiB.
const DEFAULT_CHUNK_SECTORS: u32 = 32;
const EXCEPTION_BYTES: usize = 16;

pub struct Persistent {
    cow: Arc<Backing>,
    /// Chunk size in sectors.
    chunk: u64,
    exceptions_per_area: u64,
    /// The current metadata area as it is (or is about to be) on disk.
    area: Vec<u8>,
    current_area: u64,
    /// Exceptions in `area` so far.
    current_committed: u64,
    /// The next chunk to hand out (metadata chunks are skipped).
    next_free: u64,
    valid: bool,
}

/// What opening a COW device found.
pub struct Opened {
    pub store: Persistent,
    /// (old chunk, new chunk) pairs in on-disk order.
    pub exceptions: Vec<(u64, u64)>,
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

impl Persistent {
    /// Reads the header and the exceptions of `cow`, or initialises a COW device whose first
    /// word is zero. `table_chunk` 0 means "whatever the header says, or the default"; a header
    /// chunk size overrides the table's, as in the kernel.
    pub fn open(cow: Arc<Backing>, table_chunk: u32, block_sizes: &[u32]) -> DmResult<Opened> {
        let mut chunk = table_chunk;
        let supplied = chunk != 0;
        if !supplied {
            chunk = block_sizes
                .iter()
                .map(|b| b / 512)
                .fold(DEFAULT_CHUNK_SECTORS, u32::max);
        }
        let fail =
            |what: String| DmError::invalid(format!("Failed to read snapshot metadata: {what}"));
        let mut header = vec![0u8; 512];
        cow.read_at(Sectors(0), &mut header)
            .map_err(|e| fail(format!("reading the header: {e}")))?;
        let magic = read_u32(&header, 0);
        let mut store = Persistent {
            cow,
            chunk: 0,
            exceptions_per_area: 0,
            area: Vec::new(),
            current_area: 0,
            current_committed: 0,
            next_free: HEADER_CHUNKS + 1,
            valid: true,
        };
        if magic == 0 {
            store.set_chunk(chunk);
            store
                .write_header()
                .map_err(|e| fail(format!("writing the header: {e}")))?;
            store
                .zero_disk_area(0)
                .map_err(|e| fail(format!("zeroing the first metadata area: {e}")))?;
            return Ok(Opened {
                store,
                exceptions: Vec::new(),
            });
        }
        if magic != SNAP_MAGIC {
            // The kernel's read_header fails with -ENXIO here, not -EINVAL.
            return Err(DmError::new(
                libc::ENXIO,
                "Failed to read snapshot metadata: Invalid or corrupt snapshot (bad magic)",
            ));
        }
        let valid = read_u32(&header, 4);
        let version = read_u32(&header, 8);
        let disk_chunk = read_u32(&header, 12);
        if disk_chunk != chunk {
            if supplied {
                log::warn!(
                    "chunk size {disk_chunk} in device metadata overrides table chunk size of {chunk}."
                );
            }
            check_chunk_size(disk_chunk, block_sizes)
                .map_err(|e| fail(format!("invalid on-disk chunk size {disk_chunk}: {e}.")))?;
            chunk = disk_chunk;
        }
        store.set_chunk(chunk);
        if version != DISK_VERSION {
            return Err(fail(format!(
                "unable to handle snapshot disk version {version}"
            )));
        }
        store.valid = valid != 0;
        if !store.valid {
            // The kernel loads an invalidated snapshot without its exceptions: it only ever
            // answers I/O errors and "Invalid".
            return Ok(Opened {
                store,
                exceptions: Vec::new(),
            });
        }
        let exceptions = store.read_exceptions().map_err(fail)?;
        Ok(Opened { store, exceptions })
    }

    fn set_chunk(&mut self, chunk: u32) {
        self.chunk = chunk as u64;
        let bytes = chunk as usize * 512;
        self.exceptions_per_area = (bytes / EXCEPTION_BYTES) as u64;
        self.area = vec![0u8; bytes];
    }

    pub fn chunk(&self) -> u64 {
        self.chunk
    }

    fn cow_chunks(&self) -> u64 {
        self.cow.size().0 / self.chunk
    }

    fn area_location(&self, area: u64) -> u64 {
        HEADER_CHUNKS + (self.exceptions_per_area + 1) * area
    }

    fn skip_metadata(&mut self) {
        if self.next_free % (self.exceptions_per_area + 1) == HEADER_CHUNKS {
            self.next_free += 1;
        }
    }

    fn chunk_io_sector(&self, chunk: u64) -> Sectors {
        Sectors(chunk * self.chunk)
    }

    fn write_header(&self) -> io::Result<()> {
        let mut header = vec![0u8; self.chunk as usize * 512];
        header[0..4].copy_from_slice(&SNAP_MAGIC.to_le_bytes());
        header[4..8].copy_from_slice(&u32::from(self.valid).to_le_bytes());
        header[8..12].copy_from_slice(&DISK_VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&(self.chunk as u32).to_le_bytes());
        self.cow.write_at(Sectors(0), &header)?;
        self.cow.flush()
    }

    fn zero_disk_area(&self, area: u64) -> io::Result<()> {
        // Once per filled area (every chunk bytes / 16 exceptions) and at initialisation: rare
        // enough to allocate.
        let zeros = vec![0u8; self.area.len()];
        self.cow
            .write_at(self.chunk_io_sector(self.area_location(area)), &zeros)
    }

    fn read_area(&self, area: u64, into: &mut [u8]) -> io::Result<()> {
        let at = self.area_location(area);
        if at >= self.cow_chunks() {
            return Err(io::Error::other(format!(
                "metadata area {area} lies past the end of the COW device"
            )));
        }
        self.cow.read_at(self.chunk_io_sector(at), into)
    }

    /// The kernel's `read_exceptions`: areas in order until one that is not full.
    fn read_exceptions(&mut self) -> Result<Vec<(u64, u64)>, String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; self.area.len()];
        let cow_chunks = self.cow_chunks();
        let mut area = 0;
        loop {
            self.read_area(area, &mut buf)
                .map_err(|e| format!("reading metadata area {area}: {e}"))?;
            let mut full = true;
            for i in 0..self.exceptions_per_area as usize {
                let old = read_u64(&buf, i * EXCEPTION_BYTES);
                let new = read_u64(&buf, i * EXCEPTION_BYTES + 8);
                if new == 0 {
                    self.current_committed = i as u64;
                    full = false;
                    break;
                }
                // The kernel trusts these; a COW device from elsewhere may lie, and a chunk
                // past the end would only fail later, on some read.
                if new >= cow_chunks {
                    return Err(format!(
                        "exception {i} of metadata area {area} maps chunk {old} to chunk {new}, past the end of the COW device ({cow_chunks} chunks)"
                    ));
                }
                if self.next_free <= new {
                    self.next_free = new + 1;
                }
                out.push((old, new));
            }
            if !full {
                self.area.copy_from_slice(&buf);
                break;
            }
            area += 1;
        }
        self.current_area = area;
        self.skip_metadata();
        Ok(out)
    }

    /// Records an exception in the in-memory area; `commit_area` makes it durable.
    pub fn add(&mut self, old: u64, new: u64) {
        let at = self.current_committed as usize * EXCEPTION_BYTES;
        self.area[at..at + 8].copy_from_slice(&old.to_le_bytes());
        self.area[at + 8..at + 16].copy_from_slice(&new.to_le_bytes());
        self.current_committed += 1;
    }

    pub fn area_full(&self) -> bool {
        self.current_committed == self.exceptions_per_area
    }

    /// Writes the current area and flushes; a full area first zeroes the next one on disk and
    /// then becomes the previous one. Any failure invalidates the store.
    pub fn commit_area(&mut self) {
        let full = self.area_full();
        if full && self.zero_disk_area(self.current_area + 1).is_err() {
            self.valid = false;
        }
        if self.valid {
            let at = self.chunk_io_sector(self.area_location(self.current_area));
            // The kernel writes the area with REQ_PREFLUSH | REQ_FUA: the chunks copied out
            // (and the zeroed next area) are durable before the area that names them, so a
            // power loss cannot leave an exception pointing at a chunk never written.
            if self
                .cow
                .flush()
                .and_then(|()| self.cow.write_at(at, &self.area))
                .and_then(|()| self.cow.flush())
                .is_err()
            {
                self.valid = false;
            }
        }
        if full {
            self.current_committed = 0;
            self.current_area += 1;
            self.area.fill(0);
        }
    }
}

impl ExceptionStore for Persistent {
    fn store_type(&self) -> StoreType {
        StoreType::Persistent
    }

    /// Hands out the next free chunk, skipping metadata areas.
    fn prepare_exception(&mut self) -> Option<u64> {
        let size = self.cow.size().0;
        if size < (self.next_free + 1) * self.chunk {
            return None;
        }
        let new = self.next_free;
        self.next_free += 1;
        self.skip_metadata();
        Some(new)
    }

    /// Writes the exception into the in-memory area, and the area to disk when no other
    /// exception is in flight or the area is full, so one flush serves every exception
    /// committed meanwhile.
    fn commit_exception(&mut self, old: u64, new: u64, valid: bool, more_pending: bool) -> bool {
        if !valid {
            self.valid = false;
        }
        self.add(old, new);
        if more_pending && !self.area_full() {
            return false;
        }
        self.commit_area();
        true
    }

    fn is_valid(&self) -> bool {
        self.valid
    }

    /// Marks the snapshot invalid on disk.
    fn drop_snapshot(&mut self) {
        self.valid = false;
        if let Err(e) = self.write_header() {
            log::warn!("write header failed: {e}");
        }
    }

    fn usage(&self) -> (u64, u64) {
        (
            self.next_free * self.chunk,
            (self.current_area + 1 + HEADER_CHUNKS) * self.chunk,
        )
    }

    /// The last committed exception and how many exceptions before it in the same area are
    /// consecutive with it.
    fn prepare_merge(&mut self) -> io::Result<Option<MergeRun>> {
        if self.current_committed == 0 {
            if self.current_area == 0 {
                return Ok(None);
            }
            self.current_area -= 1;
            let mut buf = std::mem::take(&mut self.area);
            let r = self.read_area(self.current_area, &mut buf);
            self.area = buf;
            r?;
            self.current_committed = self.exceptions_per_area;
        }
        let entry = |i: u64| {
            let at = i as usize * EXCEPTION_BYTES;
            (read_u64(&self.area, at), read_u64(&self.area, at + 8))
        };
        let (last_old, last_new) = entry(self.current_committed - 1);
        let mut n = 1;
        while n < self.current_committed {
            let (old, new) = entry(self.current_committed - 1 - n);
            if old != last_old.wrapping_sub(n) || new != last_new.wrapping_sub(n) {
                break;
            }
            n += 1;
        }
        Ok(Some((last_old, last_new, n)))
    }

    /// Clears the last `n` exceptions and writes the area.
    fn commit_merge(&mut self, n: u64) -> io::Result<()> {
        for i in 0..n {
            let at = (self.current_committed - 1 - i) as usize * EXCEPTION_BYTES;
            self.area[at..at + EXCEPTION_BYTES].fill(0);
        }
        let at = self.chunk_io_sector(self.area_location(self.current_area));
        self.cow.write_at(at, &self.area)?;
        self.cow.flush()?;
        self.current_committed -= n;
        self.next_free = self.area_location(self.current_area) + self.current_committed + 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cow_file(tag: &str, bytes: u64) -> (std::path::PathBuf, Arc<Backing>) {
        let path = std::env::temp_dir().join(format!("dmfs-unit-{tag}-{}", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(bytes).unwrap();
        let b = Arc::new(Backing::open_path(&path, true).unwrap());
        (path, b)
    }

    #[test]
    fn exceptions_survive_reopen_across_areas() {
        // Chunk 1 sector: 32 exceptions per area, so 100 exceptions span four areas.
        let (path, cow) = cow_file("reopen", 1 << 20);
        let mut s = Persistent::open(cow.clone(), 1, &[512]).unwrap().store;
        let mut expect = Vec::new();
        for old in 0..100u64 {
            let new = s.prepare_exception().unwrap();
            s.add(old * 3, new);
            s.commit_area();
            expect.push((old * 3, new));
        }
        // Chunks 1, 34, 67, 100 hold metadata; data chunks skip them.
        assert!(expect.iter().all(|&(_, n)| n % 33 != 1));
        assert_eq!(expect.last().unwrap().1, 104);
        let usage = s.usage();
        let again = Persistent::open(cow, 0, &[512]).unwrap();
        assert_eq!(again.exceptions, expect);
        assert_eq!(again.store.usage(), usage);
        assert_eq!(usage, (105, 5));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn merge_walks_back_runs_of_consecutive_exceptions() {
        let (path, cow) = cow_file("merge", 1 << 20);
        let mut s = Persistent::open(cow, 1, &[512]).unwrap().store;
        // 40 exceptions: old chunks 10..50 in order, so the new chunks run consecutively
        // except across the metadata chunk at 34.
        for old in 10..50u64 {
            let new = s.prepare_exception().unwrap();
            s.add(old, new);
            s.commit_area();
        }
        let mut merged = 0;
        while let Some((last_old, last_new, n)) = s.prepare_merge().unwrap() {
            assert!(n >= 1 && last_old + 1 >= n && last_new + 1 >= n);
            s.commit_merge(n).unwrap();
            merged += n;
        }
        assert_eq!(merged, 40);
        assert_eq!(s.usage(), (2, 2));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn hostile_headers_are_refused() {
        let (path, cow) = cow_file("hostile", 64 << 10);
        let mut header = [0u8; 512];
        header[0..4].copy_from_slice(b"SnAp");
        header[4..8].copy_from_slice(&1u32.to_le_bytes());
        header[8..12].copy_from_slice(&1u32.to_le_bytes());
        for (chunk, words) in [
            (0u32, "power of 2"),
            (3, "power of 2"),
            (1 << 30, "too high"),
        ] {
            header[12..16].copy_from_slice(&chunk.to_le_bytes());
            cow.write_at(Sectors(0), &header).unwrap();
            let err = Persistent::open(cow.clone(), 8, &[512]).err().unwrap();
            assert!(err.reason.contains(words), "{chunk}: {}", err.reason);
        }
        // An exception pointing past the end of the COW device.
        header[12..16].copy_from_slice(&8u32.to_le_bytes());
        cow.write_at(Sectors(0), &header).unwrap();
        let mut area = [0u8; 512];
        area[0..8].copy_from_slice(&5u64.to_le_bytes());
        area[8..16].copy_from_slice(&1000u64.to_le_bytes());
        cow.write_at(Sectors(8), &area).unwrap();
        let err = Persistent::open(cow.clone(), 8, &[512]).err().unwrap();
        assert!(err.reason.contains("past the end"), "{}", err.reason);
        header[0] = b'X';
        cow.write_at(Sectors(0), &header).unwrap();
        let err = Persistent::open(cow, 8, &[512]).err().unwrap();
        assert!(err.reason.contains("Invalid or corrupt snapshot"));
        std::fs::remove_file(path).unwrap();
    }
}
