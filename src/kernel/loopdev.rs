//! Loop devices for the kernel mirror: the kernel device mapper maps onto block devices only, so
//! a table line naming a regular file is loaded with a loop device over that file in its place.
//!
//! A loop device is taken with `LOOP_CTL_GET_FREE` on `/dev/loop-control` and bound to the file
//! with `LOOP_CONFIGURE` (kernel 5.8 and later), falling back to `LOOP_SET_FD` +
//! `LOOP_SET_STATUS64`. It is bound with `LO_FLAGS_AUTOCLEAR`: the kernel detaches it when its
//! last opener closes it, so once dmfs has dropped its descriptor and the device mapper has
//! released the device (remove, or a table replaced), nothing is left behind, even if dmfs dies.
//! The loop device reads and writes the file through the file's page cache (no direct I/O), so
//! dmfs's own reads of the file and the kernel's stay coherent.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const LOOP_SET_FD: u32 = 0x4C00;
pub const LOOP_CLR_FD: u32 = 0x4C01;
pub const LOOP_SET_STATUS64: u32 = 0x4C04;
pub const LOOP_SET_CAPACITY: u32 = 0x4C07;
pub const LOOP_CONFIGURE: u32 = 0x4C0A;
pub const LOOP_CTL_GET_FREE: u32 = 0x4C82;
pub const LO_FLAGS_READ_ONLY: u32 = 1;
pub const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_NAME_SIZE: usize = 64;
const LO_KEY_SIZE: usize = 32;
const LOOP_MAJOR: u32 = 7;

/// `struct loop_info64`: 232 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LoopInfo64 {
    pub lo_device: u64,
    pub lo_inode: u64,
    pub lo_rdevice: u64,
    pub lo_offset: u64,
    pub lo_sizelimit: u64,
    pub lo_number: u32,
    pub lo_encrypt_type: u32,
    pub lo_encrypt_key_size: u32,
    pub lo_flags: u32,
    pub lo_file_name: [u8; LO_NAME_SIZE],
    pub lo_crypt_name: [u8; LO_NAME_SIZE],
    pub lo_encrypt_key: [u8; LO_KEY_SIZE],
    pub lo_init: [u64; 2],
}

/// `struct loop_config`: 304 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LoopConfig {
    pub fd: u32,
    pub block_size: u32,
    pub info: LoopInfo64,
    pub reserved: [u64; 8],
}

/// A loop device bound to a file, held open by dmfs.
pub struct Loop {
    pub number: u32,
    /// The loop device's number (major 7).
    pub rdev: u64,
    /// The file it is bound to, as the table names it.
    pub file: PathBuf,
    dev: File,
}

fn ioctl_ptr<T>(file: &File, request: u32, arg: *mut T) -> io::Result<libc::c_int> {
    // SAFETY: each caller passes the argument type the request expects.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), request as _, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn ioctl_val(file: &File, request: u32, arg: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: requests taking an integer argument by value.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), request as _, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Opens `/dev/loopN`, making the node if devtmpfs has not (yet).
fn open_loop_node(n: u32) -> io::Result<File> {
    let path = PathBuf::from(format!("/dev/loop{n}"));
    if !path.exists() {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
        // SAFETY: `c` is a valid path; mknod makes a block node with the loop major.
        let r = unsafe {
            libc::mknod(
                c.as_ptr(),
                libc::S_IFBLK | 0o660,
                libc::makedev(LOOP_MAJOR, n),
            )
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(e);
            }
        }
    }
    File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
}

impl Loop {
    /// Binds a free loop device to `path`, whose inode must be `(dev, ino)` (the file the table
    /// resolved, not another one moved there since). Read-only when the file cannot be opened
    /// for writing or `read_only` asks for it.
    pub fn attach(path: &Path, expect: (u64, u64), read_only: bool) -> io::Result<Loop> {
        let open = |write: bool| {
            File::options()
                .read(true)
                .write(write)
                .custom_flags(libc::O_CLOEXEC)
                .open(path)
        };
        let (backing, read_only) = if read_only {
            (open(false)?, true)
        } else {
            match open(true) {
                Ok(f) => (f, false),
                Err(e) if e.raw_os_error() == Some(libc::EACCES) => (open(false)?, true),
                Err(e) => return Err(e),
            }
        };
        let meta = backing.metadata()?;
        if (meta.dev(), meta.ino()) != expect || !meta.file_type().is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is no longer the file the table named", path.display()),
            ));
        }
        let control = File::options()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/loop-control")?;
        let flags = LO_FLAGS_AUTOCLEAR | if read_only { LO_FLAGS_READ_ONLY } else { 0 };
        let mut name = [0u8; LO_NAME_SIZE];
        let shown = path.as_os_str().as_encoded_bytes();
        let n = shown.len().min(LO_NAME_SIZE - 1);
        name[..n].copy_from_slice(&shown[..n]);
        // Another process may take the free device between GET_FREE and CONFIGURE (EBUSY):
        // then ask again.
        let mut last = None;
        for _ in 0..16 {
            let number = ioctl_val(&control, LOOP_CTL_GET_FREE, 0)? as u32;
            let dev = open_loop_node(number)?;
            let mut info = LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: flags,
                lo_file_name: name,
                lo_crypt_name: [0; LO_NAME_SIZE],
                lo_encrypt_key: [0; LO_KEY_SIZE],
                lo_init: [0; 2],
            };
            let mut config = LoopConfig {
                fd: backing.as_raw_fd() as u32,
                block_size: 0,
                info,
                reserved: [0; 8],
            };
            let bound = match ioctl_ptr(&dev, LOOP_CONFIGURE, &mut config) {
                Ok(_) => Ok(()),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTTY)) => {
                    // Kernels before 5.8: bind, then set the flags.
                    ioctl_val(&dev, LOOP_SET_FD, backing.as_raw_fd() as libc::c_ulong).and_then(
                        |_| {
                            ioctl_ptr(&dev, LOOP_SET_STATUS64, &mut info)
                                .map(|_| ())
                                .inspect_err(|_| {
                                    let _ = ioctl_val(&dev, LOOP_CLR_FD, 0);
                                })
                        },
                    )
                }
                Err(e) => Err(e),
            };
            match bound {
                Ok(()) => {
                    log::info!("kernel: loop{number} bound to {}", path.display());
                    return Ok(Loop {
                        number,
                        rdev: libc::makedev(LOOP_MAJOR, number),
                        file: path.to_path_buf(),
                        dev,
                    });
                }
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EBUSY)))
    }

    /// The loop device's size in sectors.
    pub fn sectors(&self) -> io::Result<u64> {
        const BLKGETSIZE64: u32 = 0x8008_1272;
        let mut bytes: u64 = 0;
        ioctl_ptr(&self.dev, BLKGETSIZE64, &mut bytes)?;
        Ok(bytes / 512)
    }

    /// Makes the loop device take its file's current size (`LOOP_SET_CAPACITY`) when the file
    /// has grown to `file_sectors`: a loop device keeps the size its file had when it was bound,
    /// and the kernel would refuse at resume a table dmfs checked against the new size. (A
    /// shrunk file is left alone: live tables of other devices may still cover the old size.)
    pub fn refresh_capacity(&self, file_sectors: u64) -> io::Result<()> {
        let now = self.sectors()?;
        if file_sectors > now {
            ioctl_val(&self.dev, LOOP_SET_CAPACITY, 0)?;
            log::info!(
                "kernel: loop{} resized from {now} to {} sectors ({})",
                self.number,
                self.sectors()?,
                self.file.display()
            );
        }
        Ok(())
    }

    /// `major:minor`, as a table names the loop device.
    pub fn major_minor(&self) -> String {
        format!("{}:{}", libc::major(self.rdev), libc::minor(self.rdev))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        // With autoclear, closing our descriptor detaches the device once the device mapper has
        // let go of it too; if nothing else holds it, detach it at once as well.
        if ioctl_val(&self.dev, LOOP_CLR_FD, 0).is_ok() {
            log::info!(
                "kernel: loop{} detached from {}",
                self.number,
                self.file.display()
            );
        } else {
            log::info!(
                "kernel: loop{} released (detached by autoclear when its last user closes it)",
                self.number
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn loop_layouts_match_the_kernel() {
        assert_eq!(size_of::<LoopInfo64>(), 232);
        assert_eq!(offset_of!(LoopInfo64, lo_number), 40);
        assert_eq!(offset_of!(LoopInfo64, lo_flags), 52);
        assert_eq!(offset_of!(LoopInfo64, lo_file_name), 56);
        assert_eq!(offset_of!(LoopInfo64, lo_crypt_name), 120);
        assert_eq!(offset_of!(LoopInfo64, lo_encrypt_key), 184);
        assert_eq!(offset_of!(LoopInfo64, lo_init), 216);
        assert_eq!(size_of::<LoopConfig>(), 304);
        assert_eq!(offset_of!(LoopConfig, info), 8);
        assert_eq!(offset_of!(LoopConfig, reserved), 240);
    }
}
