//! Target types. Each file is one target, the way the kernel's `struct target_type` is one
//! unit: a constructor that checks every argument and names the wrong one, sector arithmetic,
//! and `table`/`status` text in the kernel's format. Adding a target means adding one file and
//! one line in `TARGET_TYPES`.

use std::io;
use std::sync::Arc;

use crate::backing::{Backing, DeviceResolver};
use crate::device_link::DeviceLink;
use crate::error::{DmError, DmResult};
use crate::snapshot::Origins;
use crate::units::{Bytes, Sectors};

mod crypt;
mod delay;
mod error;
mod flakey;
mod linear;
mod snapshot;
mod snapshot_origin;
mod striped;
mod unstriped;
mod view;
mod zero;

pub use view::View;

/// A constructed target, serving sector ranges relative to its own start.
pub trait Target: Send + Sync {
    /// Reads `buf.len() / 512` sectors starting `offset` sectors into the target.
    fn read(&self, offset: Sectors, buf: &mut [u8]) -> io::Result<()>;
    /// Writes `buf.len() / 512` sectors starting `offset` sectors into the target.
    fn write(&self, offset: Sectors, buf: &[u8]) -> io::Result<()>;
    /// Hands `len` bytes from byte `offset` of the target to `send` where they lie in a backing
    /// file's page cache, unchanged, and returns true; or returns false without calling it, and
    /// the read goes through `read` (see `Backing::read_in_place`). Only targets that map bytes
    /// one to one onto one device say yes.
    fn read_in_place(&self, _offset: Bytes, _len: usize, _send: &mut dyn FnMut(&[u8])) -> bool {
        false
    }
    /// Makes written data durable on the backing devices.
    fn flush(&self) -> io::Result<()> {
        for d in self.devices() {
            d.flush()?;
        }
        Ok(())
    }
    /// The parameters `dmsetup table` prints after the target type.
    fn table_args(&self) -> String;
    /// The largest logical block size of the devices this target maps onto, in sectors (what
    /// the kernel's `iterate_devices` stacks into the target's limits); 1 with none.
    fn device_block_sectors(&self) -> u64 {
        self.devices()
            .iter()
            .map(|d| u64::from(d.logical_block_size()) / crate::units::SECTOR_SIZE)
            .max()
            .unwrap_or(1)
    }
    /// The logical block size this target gives the device, in sectors, given `stacked`, its
    /// devices' (`device_block_sectors`): that, unless the target raises it, as the kernel's
    /// `io_hints` do (dm-crypt's `sector_size`). A power of two.
    fn logical_block_sectors(&self, stacked: u64) -> u64 {
        stacked
    }
    /// The areas of devices a line of `len` sectors uses, as the kernel's `iterate_devices`
    /// gives them (device, first sector, sectors): each must be aligned to the target's
    /// logical block size (`check_area_alignment`).
    fn areas(&self, _len: Sectors) -> Vec<Area<'_>> {
        Vec::new()
    }
    /// Whether `table_args` shows key material (a crypt key): then only the device's owner
    /// reads the table, and dmfs wipes every copy of its text (`crate::secret`).
    fn holds_key(&self) -> bool {
        false
    }
    /// The parameters `dmsetup status` prints after the target type.
    fn status(&self) -> String {
        String::new()
    }
    /// Handles `dmsetup message`; the kernel refuses messages for targets without a handler.
    fn message(&self, _args: &[&str]) -> DmResult<String> {
        Err(DmError::invalid("Target type does not support messages"))
    }
    /// The device this target maps one to one from its own sector 0 onto the device's sector
    /// 0, if it does (linear at offset 0): the only shape FUSE passthrough can serve.
    fn identity_map(&self) -> Option<&Arc<Backing>> {
        None
    }
    /// The devices this target maps onto (what `dmsetup deps` lists).
    fn devices(&self) -> Vec<Arc<Backing>> {
        Vec::new()
    }
    /// Where the bytes this target shows come from, for dropping cached pages when those
    /// bytes change (`coherence`). By default any change to a device it maps onto may show
    /// anywhere in it; a target that knows better says so. Its own writes are accounted for
    /// separately, so bytes only it writes (a snapshot's COW device) need not be listed.
    fn views(&self) -> Vec<View> {
        self.devices()
            .iter()
            .map(|d| View::Within {
                key: d.key(),
                from: Sectors(0),
                len: Sectors(u64::MAX),
            })
            .collect()
    }
    /// Checks that the table holding this target may go live on the device `link` leads to
    /// (the kernel's `preresume`); an error leaves that device suspended.
    fn preresume(&self, _link: &DeviceLink) -> DmResult<()> {
        Ok(())
    }
    /// The table holding this target went live on a device of `device_size` sectors (create,
    /// or resume after reload). May be called again for the same target. `link` leads to the
    /// device, for targets that raise events or watch it.
    fn resume(&self, _device_size: Sectors, _link: &DeviceLink) {}
    /// The device holding this target is about to suspend: I/O the target is holding back
    /// (a delay) must be let go now, or the suspend would wait for it (the kernel's
    /// `presuspend`).
    fn presuspend(&self) {}
    /// The device holding this target was suspended (its I/O has drained).
    fn suspend(&self) {}
}

/// What a constructor gets besides its arguments: the line's place in the table, a way to
/// open the devices it names, and the state its mount's targets share.
pub struct Ctor<'a> {
    /// Where the line starts in its table (the kernel's `ti->begin`).
    pub start: Sectors,
    pub len: Sectors,
    pub resolver: &'a dyn DeviceResolver,
    /// The mount's snapshots by origin and COW device (the kernel's `_origins`).
    pub origins: &'a Arc<Origins>,
}

impl Ctor<'_> {
    /// Opens a device reference and checks that `len` sectors from `start` lie inside it, as the
    /// kernel's `device_area_is_invalid` does.
    pub fn get_device(
        &self,
        reference: &str,
        start: Sectors,
        len: Sectors,
    ) -> DmResult<Arc<Backing>> {
        let dev = self.resolver.open(reference)?;
        check_area(&dev, start, len)?;
        Ok(dev)
    }
}

/// A stretch of a device a target uses (see `Target::areas`).
pub struct Area<'a> {
    pub dev: &'a Backing,
    pub start: Sectors,
    pub len: Sectors,
}

impl<'a> Area<'a> {
    pub fn new(dev: &'a Backing, start: Sectors, len: Sectors) -> Area<'a> {
        Area { dev, start, len }
    }
}

/// The rest of the kernel's `device_area_is_invalid`, checked once the table's lines are made
/// (the kernel checks it when it sets the device's queue limits): the area must start and end
/// on the target's logical block size, `block` sectors.
pub fn check_area_alignment(area: &Area<'_>, block: u64) -> DmResult<()> {
    let bytes = block * crate::units::SECTOR_SIZE;
    for (what, n) in [("start", area.start.0), ("len", area.len.0)] {
        if n & (block - 1) != 0 {
            return Err(DmError::invalid(format!(
                "{what}={n} not aligned to h/w logical block size {bytes} of {}",
                area.dev.short_name()
            )));
        }
    }
    Ok(())
}

/// The kernel's `device_area_is_invalid`: `len` sectors from `start` must lie inside `dev`.
pub fn check_area(dev: &Backing, start: Sectors, len: Sectors) -> DmResult<()> {
    let size = dev.size();
    let fits = start < size && start.checked_add(len).is_some_and(|end| end <= size);
    if fits {
        Ok(())
    } else {
        Err(DmError::invalid(format!(
            "{} too small for target: start={}, len={}, dev_size={}",
            dev.short_name(),
            start,
            len,
            size
        )))
    }
}

pub type Constructor = fn(&Ctor<'_>, &[String]) -> DmResult<Box<dyn Target>>;

pub struct TargetType {
    pub name: &'static str,
    /// The version the kernel (Debian's 6.1, the oracle's) reports for this target.
    pub version: [u32; 3],
    pub construct: Constructor,
}

/// Every target type dmfs implements, in the order `dmsetup targets` lists them on the
/// oracle's kernel (most recently registered first).
pub static TARGET_TYPES: &[TargetType] = &[
    crypt::TYPE,
    unstriped::TYPE,
    delay::TYPE,
    flakey::TYPE,
    zero::TYPE,
    snapshot::MERGE,
    snapshot_origin::TYPE,
    snapshot::SNAPSHOT,
    striped::TYPE,
    linear::TYPE,
    error::TYPE,
];

pub fn find_type(name: &str) -> Option<&'static TargetType> {
    TARGET_TYPES.iter().find(|t| t.name == name)
}

/// `dmsetup targets` output: name padded to 16 columns, then `vMAJ.MIN.PATCH`.
pub fn targets_text() -> String {
    TARGET_TYPES
        .iter()
        .map(|t| {
            format!(
                "{:<16} v{}.{}.{}\n",
                t.name, t.version[0], t.version[1], t.version[2]
            )
        })
        .collect()
}

/// The kernel's `sscanf(arg, "%llu%c", ...) == 1`: decimal digits only (no sign, nothing
/// after them). Where the kernel wraps a number past 2^64-1 silently, dmfs refuses it (a
/// documented departure: a table that names sector 0 by overflow is a mistake).
pub fn scan_u64(arg: &str) -> Option<u64> {
    if arg.is_empty() || !arg.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    arg.parse::<u64>().ok()
}

/// The kernel's `sscanf(arg, "%u%c", ...) == 1` (`dm_read_arg` and friends): as `scan_u64`,
/// and refused past 2^32-1, where the kernel would cut the number to 32 bits.
pub fn scan_u32(arg: &str) -> Option<u32> {
    scan_u64(arg).and_then(|n| u32::try_from(n).ok())
}

/// The kernel's `dm_read_arg_group`: the count of a group of arguments that follows it,
/// `%u` (no sign: the kernel refuses `+1`, recorded as flakey-plus-feature-count in
/// fixtures/kernel/faults.out), at most `max` and no more than the arguments after it; else
/// `error`. The caller then shifts the count off.
pub fn read_arg_group(args: &[String], max: u32, error: &str) -> DmResult<u32> {
    args.first()
        .and_then(|count| scan_u32(count))
        .filter(|&n| n <= max && (n as usize) < args.len())
        .ok_or_else(|| DmError::invalid(error))
}

/// A sector argument, `sscanf("%llu%c")` as every target reads one.
pub fn parse_sector_arg(arg: &str) -> Option<Sectors> {
    scan_u64(arg).map(Sectors)
}

/// The kernel's `kstrtouint(arg, 10, ...)`: an optional '+', decimal digits, fits in 32 bits.
pub fn parse_uint_arg(arg: &str) -> Option<u32> {
    let digits = arg.strip_prefix('+').unwrap_or(arg);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u32>().ok()
}

/// Splits `len_bytes` from sector `offset` of a target at every multiple of `chunk` sectors
/// (counted from the target's start, as the kernel's max_io_len splits bios) and hands each
/// piece, as its first sector and its byte range in the caller's buffer, to `io`.
pub fn for_each_chunk(
    offset: Sectors,
    len_bytes: usize,
    chunk: u64,
    mut io: impl FnMut(u64, std::ops::Range<usize>) -> io::Result<()>,
) -> io::Result<()> {
    let sector_size = crate::units::SECTOR_SIZE;
    let total = len_bytes as u64 / sector_size;
    let mut done = 0u64;
    while done < total {
        let sector = offset.0 + done;
        let n = std::cmp::min(chunk - sector % chunk, total - done);
        io(
            sector,
            (done * sector_size) as usize..((done + n) * sector_size) as usize,
        )?;
        done += n;
    }
    Ok(())
}

/// An I/O error result for a target that refuses the operation.
pub fn io_error() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_number_parsing() {
        assert_eq!(parse_sector_arg("0"), Some(Sectors(0)));
        assert_eq!(parse_sector_arg("123"), Some(Sectors(123)));
        for bad in ["", "-1", "+1", "0x10", "1a", " 1", "18446744073709551616"] {
            assert_eq!(parse_sector_arg(bad), None, "{bad}");
        }
        assert_eq!(scan_u32("4294967295"), Some(u32::MAX));
        for bad in ["4294967296", "+1", "-1", ""] {
            assert_eq!(scan_u32(bad), None, "{bad}");
        }
        assert_eq!(parse_uint_arg("+7"), Some(7));
        assert_eq!(parse_uint_arg("4294967296"), None);
        assert_eq!(parse_uint_arg("-1"), None);
    }
}
