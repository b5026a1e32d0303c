//! The optional kernel backend (`dmfs mount MNT --kernel`): every device created, reloaded,
//! suspended, resumed, renamed or removed through dmfs is mirrored into the kernel's device
//! mapper as `/dev/mapper/NAME`, through its ioctls (no libdevmapper, no dmsetup process).
//!
//! - `ioctl`: the `struct dm_ioctl` interface, layouts checked against the kernel's.
//! - `loopdev`: loop devices standing in for the regular files tables name.
//! - `mirror`: the mirroring itself (the registry's `Mirror`): translating table references,
//!   rollback, status, messages, the I/O path.
//! - `leftovers`: the record of the kernel devices a daemon made, and their removal by the next
//!   mount when that daemon died without unmounting.

pub mod ioctl;
pub mod leftovers;
pub mod loopdev;
pub mod mirror;

pub use mirror::Kernel;

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// Reads what the kernel logs from now on: the device mapper answers a refused table with a bare
/// errno and says why only in the kernel log (`device-mapper: table: 254:0: linear: Device
/// lookup failed`). Without access to `/dev/kmsg`, there is simply no reason to add.
pub struct KmsgTail {
    file: Option<File>,
}

impl KmsgTail {
    /// Starts at the end of the kernel log.
    pub fn start() -> KmsgTail {
        let file = File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/kmsg")
            .ok()
            .filter(|f| {
                // SAFETY: lseek on an open descriptor.
                unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_END) >= 0 }
            });
        KmsgTail { file }
    }

    /// The device-mapper and loop messages logged since `start`, joined with "; ".
    pub fn reason(self) -> String {
        let Some(mut file) = self.file else {
            return String::new();
        };
        let mut out: Vec<String> = Vec::new();
        let mut buf = vec![0u8; 8192];
        for _ in 0..256 {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let record = String::from_utf8_lossy(&buf[..n]);
                    if let Some(text) = kmsg_text(&record)
                        && (text.starts_with("device-mapper:") || text.starts_with("loop"))
                    {
                        out.push(text.to_string());
                    }
                }
                // EPIPE: records were overwritten meanwhile; the next read goes on.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(_) => break,
            }
        }
        out.join("; ")
    }
}

/// The message of one `/dev/kmsg` record: `PRI,SEQ,TIME,FLAGS;text\n[ KEY=value\n]...`.
fn kmsg_text(record: &str) -> Option<&str> {
    let (_, rest) = record.split_once(';')?;
    Some(rest.split('\n').next().unwrap_or(rest).trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmsg_records() {
        assert_eq!(
            kmsg_text(
                "3,1234,5678,-;device-mapper: table: 254:0: linear: Device lookup failed (-ENXIO)\n SUBSYSTEM=block\n"
            ),
            Some("device-mapper: table: 254:0: linear: Device lookup failed (-ENXIO)")
        );
        assert_eq!(kmsg_text("garbage"), None);
    }
}
