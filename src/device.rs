//! A mapped device: its live table, and I/O at any byte offset split across the table's lines,
//! with read-modify-write for the partial sectors at the edges.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use parking_lot::RwLock;

use crate::table::Table;
use crate::units::{Bytes, SECTOR_SIZE, Sectors};

pub struct Device {
    /// Unique for the life of the mount, never reused: the dm minor number and the base of the
    /// device's inode numbers.
    pub id: u64,
    name: RwLock<String>,
    table: RwLock<Arc<Table>>,
    /// Open handles on `dev/NAME`.
    pub open_count: AtomicU32,
    /// References to this device from other devices' tables.
    pub holders: AtomicU32,
    /// Writes that do not cover whole sectors read their edge sectors first; they hold this
    /// exclusively so no other write lands between that read and their write. Whole-sector
    /// writes hold it shared.
    edge_lock: RwLock<()>,
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

/// The whole sectors covering `len` bytes from byte `offset`.
fn covering_sectors(offset: u64, len: usize) -> (Sectors, usize) {
    let first = offset / SECTOR_SIZE;
    let last = (offset + len as u64).div_ceil(SECTOR_SIZE);
    (Sectors(first), ((last - first) * SECTOR_SIZE) as usize)
}

fn aligned(offset: u64, len: usize) -> bool {
    offset % SECTOR_SIZE == 0 && len as u64 % SECTOR_SIZE == 0
}

impl Device {
    pub fn new(id: u64, name: String, table: Table) -> Device {
        Device {
            id,
            name: RwLock::new(name),
            table: RwLock::new(Arc::new(table)),
            open_count: AtomicU32::new(0),
            holders: AtomicU32::new(0),
            edge_lock: RwLock::new(()),
        }
    }

    pub fn name(&self) -> String {
        self.name.read().clone()
    }

    pub fn table(&self) -> Arc<Table> {
        self.table.read().clone()
    }

    /// Makes `table` live. Callers have validated it.
    pub fn set_table(&self, table: Table) {
        *self.table.write() = Arc::new(table);
    }

    pub fn size(&self) -> Sectors {
        self.table.read().len()
    }

    pub fn is_open(&self) -> bool {
        self.open_count.load(Ordering::SeqCst) > 0
    }

    pub fn in_use(&self) -> bool {
        self.holders.load(Ordering::SeqCst) > 0
    }

    /// Reads from byte `offset`; returns the bytes read, short only at the end of the device.
    pub fn read(&self, offset: Bytes, buf: &mut [u8]) -> io::Result<usize> {
        let table = self.table();
        let size = table.len().bytes().0;
        if offset.0 >= size {
            return Ok(0);
        }
        let n = std::cmp::min(buf.len() as u64, size - offset.0) as usize;
        let buf = &mut buf[..n];
        if aligned(offset.0, n) {
            table.read(offset.sectors_floor(), buf)?;
        } else {
            let (first, span) = covering_sectors(offset.0, n);
            let mut scratch = vec![0u8; span];
            table.read(first, &mut scratch)?;
            let skip = offset.sector_offset() as usize;
            buf.copy_from_slice(&scratch[skip..skip + n]);
        }
        Ok(n)
    }

    /// Writes at byte `offset`; returns the bytes written. A write that starts at or past the
    /// end fails with ENOSPC; one that runs past the end is cut short there, as a block device
    /// does.
    pub fn write(&self, offset: Bytes, data: &[u8]) -> io::Result<usize> {
        let table = self.table();
        let size = table.len().bytes().0;
        if offset.0 >= size {
            return Err(enospc());
        }
        let n = std::cmp::min(data.len() as u64, size - offset.0) as usize;
        let data = &data[..n];
        if aligned(offset.0, n) {
            let _shared = self.edge_lock.read();
            table.write(offset.sectors_floor(), data)?;
        } else {
            let _exclusive = self.edge_lock.write();
            let (first, span) = covering_sectors(offset.0, n);
            let mut scratch = vec![0u8; span];
            // Only the first and last sectors are partial; the rest is overwritten anyway.
            let last = span - SECTOR_SIZE as usize;
            table.read(first, &mut scratch[..SECTOR_SIZE as usize])?;
            if last > 0 {
                table.read(first + Sectors(last as u64 / SECTOR_SIZE), &mut scratch[last..])?;
            }
            let skip = offset.sector_offset() as usize;
            scratch[skip..skip + n].copy_from_slice(data);
            table.write(first, &scratch)?;
        }
        Ok(n)
    }

    /// Whole-sector reads for devices stacked on this one.
    pub fn read_sectors(&self, at: Sectors, buf: &mut [u8]) -> io::Result<()> {
        self.table().read(at, buf)
    }

    /// Whole-sector writes for devices stacked on this one.
    pub fn write_sectors(&self, at: Sectors, buf: &[u8]) -> io::Result<()> {
        let _shared = self.edge_lock.read();
        self.table().write(at, buf)
    }

    pub fn flush(&self) -> io::Result<()> {
        self.table().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covering() {
        assert_eq!(covering_sectors(0, 512), (Sectors(0), 512));
        assert_eq!(covering_sectors(1, 512), (Sectors(0), 1024));
        assert_eq!(covering_sectors(511, 2), (Sectors(0), 1024));
        assert_eq!(covering_sectors(1024, 1), (Sectors(2), 512));
        assert!(aligned(1024, 4096));
        assert!(!aligned(1024, 100));
    }
}
