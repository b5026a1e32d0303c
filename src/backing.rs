//! Opened backing devices: regular files, block devices, and other devices of this mount
//! (served in-process: going back through FUSE would deadlock the request threads).
//!
//! How a reference is shown in `table` text: the kernel prints `major:minor`. A block device
//! keeps exactly that; a regular file has no device number, so its absolute path stands in;
//! a device of this mount is shown as its path `MNT/dev/NAME` (following renames).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use crate::block::BlockDevice;
use crate::changes::Changes;
use crate::device_key::DeviceKey;
use crate::error::{DmError, DmResult};
use crate::file_map::FileMap;
use crate::scratch::DIRECT_ALIGN;
use crate::units::{Bytes, Sectors};

/// Opens the device references that table lines name.
pub trait DeviceResolver {
    fn open(&self, reference: &str) -> DmResult<Arc<Backing>>;

    /// Opens a device that a target writes for its own bookkeeping whatever the table's mode
    /// (a snapshot's COW device, a merging snapshot's origin): read-write where it can be
    /// written, else as `open` does.
    fn open_for_target_writes(&self, reference: &str) -> DmResult<Arc<Backing>> {
        self.open(reference)
    }
}

enum Source {
    /// A regular file or a block device, read and written with positioned I/O.
    File {
        file: File,
        size: Sectors,
        name: String,
        short: String,
        key: DeviceKey,
        /// The device's logical block size in bytes (512 for regular files).
        block_size: u32,
        /// The same file opened with O_DIRECT, at its first `write_at_uncached` (None where it
        /// cannot be: a read-only open, or a filesystem that refuses O_DIRECT).
        direct: OnceLock<Option<File>>,
        /// The regular file mapped, at its first `read_in_place` (None where it cannot be: a
        /// block device, a file that cannot be mapped).
        map: OnceLock<Option<Arc<FileMap>>>,
        /// Where writes to it are reported (the mount's page-cache coherence listens).
        changes: Arc<Changes>,
    },
    /// A device of this mount.
    Mapped {
        device: Arc<dyn BlockDevice>,
        mountpoint: Arc<Path>,
    },
}

pub struct Backing {
    source: Source,
}

impl Drop for Backing {
    fn drop(&mut self) {
        if let Source::Mapped { device, .. } = &self.source {
            device.holders().fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn eof_is_eio(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        io::Error::from_raw_os_error(libc::EIO)
    } else {
        e
    }
}

/// BLKSSZGET: a block device's logical block size in bytes.
fn block_device_block_size(file: &File) -> io::Result<u32> {
    use std::os::fd::AsRawFd;
    const BLKSSZGET: libc::c_ulong = 0x1268;
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points at `size`.
    let r = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            BLKSSZGET as _,
            &mut size as *mut libc::c_int,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(size.max(512) as u32)
    }
}

/// BLKGETSIZE64: the size of a block device in bytes.
fn block_device_bytes(file: &File) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at `size`.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(size)
    }
}

impl Backing {
    /// Opens a regular file or block device by path, read-write unless `writable` is false.
    /// Tables go through `Resolver`, which pins the file first; tests and fuzzing open directly.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn open_path(path: &Path, writable: bool) -> DmResult<Backing> {
        Backing::open_path_as(path, path, writable, Changes::none())
    }

    /// Opens `open` (a `/proc/self/fd/N` link to a file already checked) and names it `path`;
    /// writes to it are reported to `changes`.
    pub fn open_path_as(
        open: &Path,
        path: &Path,
        writable: bool,
        changes: Arc<Changes>,
    ) -> DmResult<Backing> {
        let shown = path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .custom_flags(libc::O_CLOEXEC)
            .open(open)
            .map_err(|e| DmError::io(&shown, &e))?;
        let meta = file.metadata().map_err(|e| DmError::io(&shown, &e))?;
        let ft = meta.file_type();
        let (size, name, short, key, block_size) = if ft.is_block_device() {
            let bytes = block_device_bytes(&file).map_err(|e| DmError::io(&shown, &e))?;
            let block_size = block_device_block_size(&file).map_err(|e| DmError::io(&shown, &e))?;
            let rdev = meta.rdev();
            let name = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
            let short = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| name.clone());
            let key = DeviceKey::Block { rdev };
            (Bytes(bytes).sectors_floor(), name, short, key, block_size)
        } else if ft.is_file() {
            let name = path.to_string_lossy().into_owned();
            let key = DeviceKey::File {
                dev: meta.dev(),
                ino: meta.ino(),
            };
            (
                Bytes(meta.len()).sectors_floor(),
                name.clone(),
                name,
                key,
                512,
            )
        } else {
            return Err(DmError::invalid(format!(
                "{shown}: not a block device or regular file"
            )));
        };
        Ok(Backing {
            source: Source::File {
                file,
                size,
                name,
                short,
                key,
                block_size,
                direct: OnceLock::new(),
                map: OnceLock::new(),
                changes,
            },
        })
    }

    /// A reference to another device of this mount.
    pub fn mapped(device: Arc<dyn BlockDevice>, mountpoint: Arc<Path>) -> Backing {
        device.holders().fetch_add(1, Ordering::SeqCst);
        Backing {
            source: Source::Mapped { device, mountpoint },
        }
    }

    pub fn size(&self) -> Sectors {
        match &self.source {
            Source::File { size, .. } => *size,
            Source::Mapped { device, .. } => device.size(),
        }
    }

    /// The reference as a table prints it.
    pub fn name(&self) -> String {
        match &self.source {
            Source::File { name, .. } => name.clone(),
            Source::Mapped { device, mountpoint } => {
                format!("{}/dev/{}", mountpoint.display(), device.name())
            }
        }
    }

    /// The name the kernel uses in messages (`vda`, not `254:0`).
    pub fn short_name(&self) -> String {
        match &self.source {
            Source::File { short, .. } => short.clone(),
            Source::Mapped { .. } => self.name(),
        }
    }

    /// The device of this mount behind this reference, if it is one.
    pub fn mapped_device(&self) -> Option<&Arc<dyn BlockDevice>> {
        match &self.source {
            Source::Mapped { device, .. } => Some(device),
            Source::File { .. } => None,
        }
    }

    /// Whether two references name the same device.
    pub fn same_device(&self, other: &Backing) -> bool {
        self.key() == other.key()
    }

    pub fn key(&self) -> DeviceKey {
        match &self.source {
            Source::File { key, .. } => *key,
            Source::Mapped { device, .. } => DeviceKey::Mapped { id: device.id() },
        }
    }

    /// The open regular file behind this device, when it is one and holds exactly its sectors
    /// (no partial sector at the end): what FUSE passthrough may hand to the kernel.
    pub fn whole_regular_file(&self) -> Option<&File> {
        match &self.source {
            Source::File {
                file,
                size,
                key: DeviceKey::File { .. },
                ..
            } => {
                let meta = file.metadata().ok()?;
                (meta.is_file() && meta.len() == size.bytes().0).then_some(file)
            }
            _ => None,
        }
    }

    /// The smallest unit of I/O the device accepts, in bytes.
    pub fn logical_block_size(&self) -> u32 {
        match &self.source {
            Source::File { block_size, .. } => *block_size,
            Source::Mapped { device, .. } => device.logical_block_size(),
        }
    }

    pub fn read_at(&self, at: Sectors, buf: &mut [u8]) -> io::Result<()> {
        match &self.source {
            Source::File { file, .. } => file.read_exact_at(buf, at.bytes().0).map_err(eof_is_eio),
            Source::Mapped { device, .. } => device.read_sectors(at, buf),
        }
    }

    /// Hands `len` bytes from byte `at` to `send` where they lie, in the page cache of a
    /// regular file or, through a device of this mount, of the file under it, and returns true;
    /// returns false without calling `send` where they are not in one such place (a block
    /// device, a range split across targets, a target that changes the bytes): then `read_at`
    /// is the way. `send` must only hand the bytes to the kernel (see `file_map`).
    pub fn read_in_place(&self, at: Bytes, len: usize, send: &mut dyn FnMut(&[u8])) -> bool {
        match &self.source {
            Source::File {
                file,
                size,
                key: DeviceKey::File { dev, ino },
                map,
                ..
            } => map
                .get_or_init(|| FileMap::shared(file, *dev, *ino, size.bytes().0))
                .as_ref()
                .is_some_and(|map| map.with_range(at.0, len, send)),
            Source::File { .. } => false,
            Source::Mapped { device, .. } => device.read_in_place(at, len, send),
        }
    }

    /// Writes whole sectors. A write past the end fails with EIO, as on a block device: a
    /// regular file must not grow because a table or a COW store computed a far position.
    pub fn write_at(&self, at: Sectors, buf: &[u8]) -> io::Result<()> {
        match &self.source {
            Source::File {
                file,
                size,
                key,
                changes,
                ..
            } => write_file(file, *size, *key, changes, at, buf),
            Source::Mapped { device, .. } => device.write_sectors(at, buf),
        }
    }

    /// Writes past the page cache, as the kernel's kcopyd writes a snapshot's copies straight
    /// to the COW device: the flush that then makes them durable has no pages to write out
    /// first, and the copies do not crowd the page cache. Only whole `DIRECT_ALIGN` pieces
    /// (address, offset and length) of a regular file or block device go this way; anything
    /// else, or a file that refuses O_DIRECT, is written as `write_at` writes it. A first write
    /// to an origin (copy, flush, metadata, flush) is faster this way than through the page
    /// cache, which the flush must first write out (benches/: the snapshot write rows).
    pub fn write_at_uncached(&self, at: Sectors, buf: &[u8]) -> io::Result<()> {
        let align = DIRECT_ALIGN as u64;
        if let Source::File {
            file,
            size,
            key,
            direct,
            changes,
            ..
        } = &self.source
            && at.bytes().0.is_multiple_of(align)
            && (buf.len() as u64).is_multiple_of(align)
            && (buf.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
            && let Some(direct) = direct.get_or_init(|| reopen_direct(file))
        {
            match write_file(direct, *size, *key, changes, at, buf) {
                // Constraints stricter than DIRECT_ALIGN: the page cache takes it.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                result => return result,
            }
        }
        self.write_at(at, buf)
    }

    pub fn flush(&self) -> io::Result<()> {
        match &self.source {
            Source::File { file, .. } => file.sync_data(),
            Source::Mapped { device, .. } => device.flush(),
        }
    }
}

/// A positioned write of whole sectors inside `size`; the change is reported to the page-cache
/// coherence index whether or not it succeeded (a failed write may have changed some bytes).
fn write_file(
    file: &File,
    size: Sectors,
    key: DeviceKey,
    changes: &Changes,
    at: Sectors,
    buf: &[u8],
) -> io::Result<()> {
    let sectors = buf.len() as u64 / 512;
    if at.0.checked_add(sectors).is_none_or(|end| end > size.0) {
        return Err(io::Error::from_raw_os_error(libc::EIO));
    }
    let result = file.write_all_at(buf, at.bytes().0);
    changes.backing_written(key, at, Sectors(sectors));
    result
}

/// `file` opened again, read-write with O_DIRECT, through its /proc/self/fd link (the same
/// inode whatever happened to its path); None unless `file` itself is open read-write.
fn reopen_direct(file: &File) -> Option<File> {
    // SAFETY: F_GETFL on a descriptor this File owns.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 || flags & libc::O_ACCMODE != libc::O_RDWR {
        return None;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|e| log::info!("no O_DIRECT for copies: {e}"))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Aligned pieces go through the O_DIRECT descriptor, the rest through the page cache;
    /// either way the file holds what was written, and nothing lands past its end.
    #[test]
    fn uncached_writes_land_whole_or_cached() {
        let path = std::env::temp_dir().join(format!("dmfs-uncached-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 64 << 10]).unwrap();
        let b = Backing::open_path(&path, true).unwrap();
        crate::scratch::with_aligned_buffer(8192, |buf| {
            buf.fill(1);
            b.write_at_uncached(Sectors(8), buf).unwrap(); // 4 KiB-aligned
            buf.fill(2);
            b.write_at_uncached(Sectors(1), &buf[..1024]).unwrap(); // not aligned
            assert!(b.write_at_uncached(Sectors(120), buf).is_err()); // past the end
        });
        let Source::File { direct, .. } = &b.source else {
            unreachable!()
        };
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        // The aligned write took the O_DIRECT descriptor (ext4 and tmpfs, since 6.6, take it).
        assert!(matches!(direct.get(), Some(Some(_))));
        assert_eq!(&bytes[512..1536], &[2u8; 1024][..]);
        assert_eq!(&bytes[4096..12288], &[1u8; 8192][..]);
        assert!(
            bytes[..512]
                .iter()
                .chain(&bytes[1536..4096])
                .all(|&x| x == 7)
        );
        assert!(bytes[12288..].iter().all(|&x| x == 7));
        assert_eq!(bytes.len(), 64 << 10);
    }
}
