//! A device of this mount as the layers below `Device` see it when a table stacks on it:
//! whole-sector I/O, a size, an id. `Device` implements it; `Backing` holds one for a
//! `MNT/dev/NAME` reference, so the bottom layers never name the device layer above them.

use std::any::Any;
use std::io;
use std::sync::atomic::AtomicU32;

use crate::units::{Bytes, Sectors};

pub trait BlockDevice: Any + Send + Sync {
    /// The device's id in its mount (what `DeviceKey::Mapped` holds).
    fn id(&self) -> u64;
    fn name(&self) -> String;
    fn size(&self) -> Sectors;
    /// The logical block size in bytes the device's live table gives it.
    fn logical_block_size(&self) -> u32;
    fn read_sectors(&self, at: Sectors, buf: &mut [u8]) -> io::Result<()>;
    fn write_sectors(&self, at: Sectors, buf: &[u8]) -> io::Result<()>;
    /// Hands `len` bytes from byte `at` to `send` where they lie in a backing file's page
    /// cache, or returns false without calling it (see `Backing::read_in_place`).
    fn read_in_place(&self, at: Bytes, len: usize, send: &mut dyn FnMut(&[u8])) -> bool;
    fn flush(&self) -> io::Result<()>;
    /// How many references from other devices' tables hold it (a `Backing` counts itself in
    /// and out).
    fn holders(&self) -> &AtomicU32;
}
