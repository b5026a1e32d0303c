//! The kernel device mapper's ioctl interface (include/uapi/linux/dm-ioctl.h, version 4), driven
//! directly through libc: every call is one buffer that starts with a `struct dm_ioctl`, followed
//! by the command's data (target specs and their parameter strings, or what the kernel returns).
//!
//! The layouts are `#[repr(C)]` copies of the kernel's structs; the tests check their sizes and
//! field offsets against the header's. Nothing here knows about dmfs: names, tables and device
//! numbers in, the kernel's answers (or its errno) out.
//!
//! It describes the interface as a whole (every command number and flag, `list`, `info`,
//! `clear`), not only the part the mirror calls today.
#![allow(dead_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use crate::secret::{Zeroize, Zeroizing};

pub const DM_NAME_LEN: usize = 128;
pub const DM_UUID_LEN: usize = 129;
pub const DM_MAX_TYPE_NAME: usize = 16;

/// The interface version dmfs speaks (the header's DM_VERSION_MAJOR; minor 0 asks for nothing
/// newer than what every 4.x kernel has).
pub const DM_VERSION_MAJOR: u32 = 4;

/// `struct dm_ioctl`: 312 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DmIoctl {
    pub version: [u32; 3],
    pub data_size: u32,
    pub data_start: u32,
    pub target_count: u32,
    pub open_count: i32,
    pub flags: u32,
    pub event_nr: u32,
    pub padding: u32,
    pub dev: u64,
    pub name: [u8; DM_NAME_LEN],
    pub uuid: [u8; DM_UUID_LEN],
    pub data: [u8; 7],
}

/// `struct dm_target_spec`: 40 bytes, followed by its NUL-terminated parameter string.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DmTargetSpec {
    pub sector_start: u64,
    pub length: u64,
    pub status: i32,
    pub next: u32,
    pub target_type: [u8; DM_MAX_TYPE_NAME],
}

/// `struct dm_name_list`: `dev`, `next`, then the name (at offset 12; the struct is padded to 16).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DmNameList {
    pub dev: u64,
    pub next: u32,
}
/// Where a `dm_name_list`'s name starts (`offsetof(struct dm_name_list, name)`).
pub const NAME_LIST_NAME_OFFSET: usize = 12;

const DM_IOCTL: u32 = 0xfd;
pub const DM_VERSION_CMD: u32 = 0;
pub const DM_REMOVE_ALL_CMD: u32 = 1;
pub const DM_LIST_DEVICES_CMD: u32 = 2;
pub const DM_DEV_CREATE_CMD: u32 = 3;
pub const DM_DEV_REMOVE_CMD: u32 = 4;
pub const DM_DEV_RENAME_CMD: u32 = 5;
pub const DM_DEV_SUSPEND_CMD: u32 = 6;
pub const DM_DEV_STATUS_CMD: u32 = 7;
pub const DM_DEV_WAIT_CMD: u32 = 8;
pub const DM_TABLE_LOAD_CMD: u32 = 9;
pub const DM_TABLE_CLEAR_CMD: u32 = 10;
pub const DM_TABLE_DEPS_CMD: u32 = 11;
pub const DM_TABLE_STATUS_CMD: u32 = 12;
pub const DM_LIST_VERSIONS_CMD: u32 = 13;
pub const DM_TARGET_MSG_CMD: u32 = 14;

pub const DM_READONLY_FLAG: u32 = 1 << 0;
/// The kernel wipes its copy of the ioctl buffer (a crypt table's key) when done with it.
pub const DM_SECURE_DATA_FLAG: u32 = 1 << 15;
pub const DM_SUSPEND_FLAG: u32 = 1 << 1;
pub const DM_STATUS_TABLE_FLAG: u32 = 1 << 4;
pub const DM_ACTIVE_PRESENT_FLAG: u32 = 1 << 5;
pub const DM_INACTIVE_PRESENT_FLAG: u32 = 1 << 6;
pub const DM_BUFFER_FULL_FLAG: u32 = 1 << 8;
pub const DM_QUERY_INACTIVE_TABLE_FLAG: u32 = 1 << 12;
pub const DM_UUID_FLAG: u32 = 1 << 14;
pub const DM_DATA_OUT_FLAG: u32 = 1 << 16;

/// The reply room a target message gets: a message may change state (`@stats_create`), so it
/// is never sent twice to retry with a larger buffer.
const MESSAGE_REPLY_BYTES: usize = 256 * 1024;

/// `_IOWR(DM_IOCTL, cmd, struct dm_ioctl)`: direction read|write (3) in bits 30-31, the size in
/// bits 16-29, the type in bits 8-15, the number in bits 0-7.
pub const fn dm_ioctl_number(cmd: u32) -> u32 {
    (3 << 30) | ((std::mem::size_of::<DmIoctl>() as u32) << 16) | (DM_IOCTL << 8) | cmd
}

/// What the kernel says about a device after a device-level command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevInfo {
    /// The block device number (`huge_encode_dev`: for minors below 2^20, the new encoding that
    /// `libc::makedev` also uses).
    pub dev: u64,
    pub flags: u32,
    pub open_count: i32,
    pub event_nr: u32,
    pub target_count: u32,
}

impl DevInfo {
    pub fn major(&self) -> u32 {
        libc::major(self.dev)
    }
    pub fn minor(&self) -> u32 {
        libc::minor(self.dev)
    }
    pub fn suspended(&self) -> bool {
        self.flags & DM_SUSPEND_FLAG != 0
    }
}

/// One target line as the kernel reports it (DM_TABLE_STATUS), or as dmfs loads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetLine {
    pub start: u64,
    pub length: u64,
    pub target_type: String,
    /// May hold a crypt key: wiped when dropped.
    pub params: Zeroizing<String>,
}

/// An 8-byte aligned ioctl buffer: `struct dm_ioctl` at its start, data after it.
struct Buffer {
    words: Vec<u64>,
}

const HEADER: usize = std::mem::size_of::<DmIoctl>();

fn copy_str(dst: &mut [u8], s: &str, what: &str) -> io::Result<()> {
    if s.len() >= dst.len() || s.as_bytes().contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} '{s}' does not fit the kernel's {} bytes", dst.len()),
        ));
    }
    dst[..s.len()].copy_from_slice(s.as_bytes());
    Ok(())
}

fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// A table's buffer holds its keys: wiped when dropped.
impl Drop for Buffer {
    fn drop(&mut self) {
        self.words.zeroize();
    }
}

impl Buffer {
    /// A buffer of `size` bytes (at least the header), with the header's version, data size and
    /// data start filled in.
    fn new(size: usize) -> Buffer {
        let size = size.max(HEADER + 8).next_multiple_of(8);
        let mut b = Buffer {
            words: vec![0u64; size / 8],
        };
        let h = b.header_mut();
        h.version = [DM_VERSION_MAJOR, 0, 0];
        h.data_size = size as u32;
        h.data_start = HEADER as u32;
        b
    }

    fn len(&self) -> usize {
        self.words.len() * 8
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the Vec<u64> owns len() initialised bytes; u8 has no alignment needs.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len()) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.len();
        // SAFETY: as in bytes(), uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), len) }
    }

    fn header(&self) -> &DmIoctl {
        // SAFETY: the buffer is at least HEADER bytes, 8-byte aligned, and every bit pattern is
        // a valid DmIoctl (integers and byte arrays only).
        unsafe { &*self.words.as_ptr().cast::<DmIoctl>() }
    }

    fn header_mut(&mut self) -> &mut DmIoctl {
        // SAFETY: as in header(), uniquely borrowed.
        unsafe { &mut *self.words.as_mut_ptr().cast::<DmIoctl>() }
    }

    fn u32_at(&self, at: usize) -> u32 {
        u32::from_ne_bytes(self.bytes()[at..at + 4].try_into().expect("4 bytes"))
    }

    fn u64_at(&self, at: usize) -> u64 {
        u64::from_ne_bytes(self.bytes()[at..at + 8].try_into().expect("8 bytes"))
    }
}

/// Lays out target specs for DM_TABLE_LOAD: each spec, its parameter string and NUL, padded so
/// the next spec starts 8-byte aligned; `next` counts from the start of the current spec.
fn table_buffer(lines: &[TargetLine]) -> io::Result<Buffer> {
    let spec = std::mem::size_of::<DmTargetSpec>();
    let sizes: Vec<usize> = lines
        .iter()
        .map(|l| (spec + l.params.len() + 1).next_multiple_of(8))
        .collect();
    let mut b = Buffer::new(HEADER + sizes.iter().sum::<usize>());
    let mut at = HEADER;
    for (line, size) in lines.iter().zip(&sizes) {
        let mut s = DmTargetSpec {
            sector_start: line.start,
            length: line.length,
            status: 0,
            next: *size as u32,
            target_type: [0; DM_MAX_TYPE_NAME],
        };
        copy_str(&mut s.target_type, &line.target_type, "target type")?;
        if line.params.as_bytes().contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "target parameters contain a NUL byte",
            ));
        }
        let bytes = b.bytes_mut();
        // SAFETY: DmTargetSpec is plain data; its bytes are copied into the buffer.
        let raw =
            unsafe { std::slice::from_raw_parts((&s as *const DmTargetSpec).cast::<u8>(), spec) };
        bytes[at..at + spec].copy_from_slice(raw);
        bytes[at + spec..at + spec + line.params.len()].copy_from_slice(line.params.as_bytes());
        at += size;
    }
    b.header_mut().target_count = lines.len() as u32;
    Ok(b)
}

/// Reads the target specs DM_TABLE_STATUS returned: there `next` counts from the start of the
/// data (the first spec), as the header says.
fn parse_targets(b: &Buffer) -> Vec<TargetLine> {
    let h = b.header();
    let start = h.data_start as usize;
    let end = (h.data_size as usize).min(b.len());
    let spec = std::mem::size_of::<DmTargetSpec>();
    let mut out = Vec::new();
    let mut at = start;
    for _ in 0..h.target_count {
        if at + spec > end {
            break;
        }
        let bytes = b.bytes();
        let params_end = bytes[at + spec..end]
            .iter()
            .position(|&c| c == 0)
            .map_or(end, |p| at + spec + p);
        out.push(TargetLine {
            start: b.u64_at(at),
            length: b.u64_at(at + 8),
            target_type: c_str(&bytes[at + 24..at + 24 + DM_MAX_TYPE_NAME]),
            params: Zeroizing::new(
                String::from_utf8_lossy(&bytes[at + spec..params_end]).into_owned(),
            ),
        });
        let next = b.u32_at(at + 20) as usize;
        if next == 0 {
            break;
        }
        at = start + next;
    }
    out
}

/// `/dev/mapper/control`, open.
pub struct Control {
    file: File,
}

/// The path of the device mapper's control node.
pub const CONTROL_PATH: &str = "/dev/mapper/control";

impl Control {
    pub fn open() -> io::Result<Control> {
        let file = File::options().read(true).write(true).open(CONTROL_PATH)?;
        Ok(Control { file })
    }

    fn call(&self, cmd: u32, b: &mut Buffer) -> io::Result<()> {
        // SAFETY: the buffer is data_size bytes long, starts with a dm_ioctl, and the kernel
        // writes no further than data_size.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                dm_ioctl_number(cmd) as _,
                b.words.as_mut_ptr(),
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// A device-level command on `name`, with `flags`, answering the device's info.
    fn device_call(&self, cmd: u32, name: &str, flags: u32) -> io::Result<DevInfo> {
        let mut b = Buffer::new(HEADER);
        copy_str(&mut b.header_mut().name, name, "device name")?;
        b.header_mut().flags = flags;
        self.call(cmd, &mut b)?;
        Ok(info_of(b.header()))
    }

    /// DM_VERSION: the kernel's interface version.
    pub fn version(&self) -> io::Result<[u32; 3]> {
        let mut b = Buffer::new(HEADER);
        self.call(DM_VERSION_CMD, &mut b)?;
        Ok(b.header().version)
    }

    /// DM_DEV_CREATE: a new device without tables (suspended until a table is resumed).
    pub fn create(&self, name: &str, uuid: Option<&str>) -> io::Result<DevInfo> {
        let mut b = Buffer::new(HEADER);
        copy_str(&mut b.header_mut().name, name, "device name")?;
        if let Some(uuid) = uuid {
            copy_str(&mut b.header_mut().uuid, uuid, "uuid")?;
        }
        self.call(DM_DEV_CREATE_CMD, &mut b)?;
        Ok(info_of(b.header()))
    }

    /// DM_DEV_REMOVE.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        self.device_call(DM_DEV_REMOVE_CMD, name, 0).map(|_| ())
    }

    /// DM_DEV_RENAME: the new name follows the header, NUL-terminated.
    pub fn rename(&self, old: &str, new: &str) -> io::Result<()> {
        self.rename_call(old, new, DM_NAME_LEN, 0)
    }

    /// DM_DEV_RENAME with DM_UUID_FLAG: sets the uuid (once, as the kernel allows).
    pub fn set_uuid(&self, name: &str, uuid: &str) -> io::Result<()> {
        self.rename_call(name, uuid, DM_UUID_LEN, DM_UUID_FLAG)
    }

    fn rename_call(&self, name: &str, new: &str, limit: usize, flags: u32) -> io::Result<()> {
        if new.len() >= limit || new.as_bytes().contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("'{new}' does not fit the kernel's {limit} bytes"),
            ));
        }
        let mut b = Buffer::new(HEADER + new.len() + 1);
        copy_str(&mut b.header_mut().name, name, "device name")?;
        b.header_mut().flags = flags;
        b.bytes_mut()[HEADER..HEADER + new.len()].copy_from_slice(new.as_bytes());
        self.call(DM_DEV_RENAME_CMD, &mut b)
    }

    /// DM_DEV_SUSPEND with DM_SUSPEND_FLAG: waits for in-flight I/O, holds new I/O.
    pub fn suspend(&self, name: &str) -> io::Result<DevInfo> {
        self.device_call(DM_DEV_SUSPEND_CMD, name, DM_SUSPEND_FLAG)
    }

    /// DM_DEV_SUSPEND without the flag: swaps in the inactive table, if any, and resumes.
    pub fn resume(&self, name: &str) -> io::Result<DevInfo> {
        self.device_call(DM_DEV_SUSPEND_CMD, name, 0)
    }

    /// DM_DEV_STATUS: the device's info.
    pub fn info(&self, name: &str) -> io::Result<DevInfo> {
        self.device_call(DM_DEV_STATUS_CMD, name, 0)
    }

    /// DM_TABLE_LOAD: `lines` become the inactive table.
    pub fn load(&self, name: &str, lines: &[TargetLine], read_only: bool) -> io::Result<()> {
        let mut b = table_buffer(lines)?;
        copy_str(&mut b.header_mut().name, name, "device name")?;
        if read_only {
            b.header_mut().flags |= DM_READONLY_FLAG;
        }
        // As libdevmapper does for cryptsetup's tables.
        if lines.iter().any(|l| l.target_type == "crypt") {
            b.header_mut().flags |= DM_SECURE_DATA_FLAG;
        }
        self.call(DM_TABLE_LOAD_CMD, &mut b)
    }

    /// DM_TARGET_MSG: `message` to the target at `sector` (what `dmsetup message` sends);
    /// answers the target's reply, empty when it has none. The message follows the header as
    /// `struct dm_target_msg` (the sector, then the NUL-terminated text); the reply comes back
    /// from the data start.
    pub fn message(&self, name: &str, sector: u64, message: &str) -> io::Result<String> {
        if message.as_bytes().contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the message contains a NUL byte",
            ));
        }
        let size = (HEADER + 8 + message.len() + 1).max(HEADER + MESSAGE_REPLY_BYTES);
        let mut b = Buffer::new(size);
        copy_str(&mut b.header_mut().name, name, "device name")?;
        let bytes = b.bytes_mut();
        bytes[HEADER..HEADER + 8].copy_from_slice(&sector.to_ne_bytes());
        bytes[HEADER + 8..HEADER + 8 + message.len()].copy_from_slice(message.as_bytes());
        self.call(DM_TARGET_MSG_CMD, &mut b)?;
        let h = *b.header();
        if h.flags & DM_DATA_OUT_FLAG == 0 {
            return Ok(String::new());
        }
        if h.flags & DM_BUFFER_FULL_FLAG != 0 {
            log::warn!(
                "kernel: a message's reply from {name} is longer than {MESSAGE_REPLY_BYTES} bytes: cut short"
            );
        }
        let start = (h.data_start as usize).min(b.len());
        Ok(c_str(&b.bytes()[start..]))
    }

    /// DM_TABLE_CLEAR: drops the inactive table.
    pub fn clear(&self, name: &str) -> io::Result<()> {
        self.device_call(DM_TABLE_CLEAR_CMD, name, 0).map(|_| ())
    }

    /// DM_TABLE_STATUS: the live table's status lines, or with `table` its table lines (what
    /// `dmsetup status` and `dmsetup table` print). Grows the buffer while the kernel says it
    /// was too small.
    pub fn table_status(&self, name: &str, table: bool) -> io::Result<Vec<TargetLine>> {
        let mut size = 16 * 1024;
        loop {
            let mut b = Buffer::new(size);
            copy_str(&mut b.header_mut().name, name, "device name")?;
            b.header_mut().flags = if table { DM_STATUS_TABLE_FLAG } else { 0 };
            self.call(DM_TABLE_STATUS_CMD, &mut b)?;
            if b.header().flags & DM_BUFFER_FULL_FLAG != 0 && size < 64 << 20 {
                size *= 4;
                continue;
            }
            return Ok(parse_targets(&b));
        }
    }

    /// DM_LIST_DEVICES: every device's name and number.
    pub fn list(&self) -> io::Result<Vec<(String, u64)>> {
        let mut size = 16 * 1024;
        loop {
            let mut b = Buffer::new(size);
            self.call(DM_LIST_DEVICES_CMD, &mut b)?;
            if b.header().flags & DM_BUFFER_FULL_FLAG != 0 && size < 64 << 20 {
                size *= 4;
                continue;
            }
            let h = b.header();
            let end = (h.data_size as usize).min(b.len());
            let mut at = h.data_start as usize;
            let mut out = Vec::new();
            // An empty list is one record with dev 0.
            while at + NAME_LIST_NAME_OFFSET < end {
                let dev = b.u64_at(at);
                let next = b.u32_at(at + 8) as usize;
                if dev == 0 {
                    break;
                }
                out.push((c_str(&b.bytes()[at + NAME_LIST_NAME_OFFSET..end]), dev));
                if next == 0 {
                    break;
                }
                at += next;
            }
            return Ok(out);
        }
    }
}

fn info_of(h: &DmIoctl) -> DevInfo {
    DevInfo {
        dev: h.dev,
        flags: h.flags,
        open_count: h.open_count,
        event_nr: h.event_nr,
        target_count: h.target_count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn dm_ioctl_layout_matches_the_kernel() {
        assert_eq!(size_of::<DmIoctl>(), 312);
        assert_eq!(offset_of!(DmIoctl, version), 0);
        assert_eq!(offset_of!(DmIoctl, data_size), 12);
        assert_eq!(offset_of!(DmIoctl, data_start), 16);
        assert_eq!(offset_of!(DmIoctl, target_count), 20);
        assert_eq!(offset_of!(DmIoctl, open_count), 24);
        assert_eq!(offset_of!(DmIoctl, flags), 28);
        assert_eq!(offset_of!(DmIoctl, event_nr), 32);
        assert_eq!(offset_of!(DmIoctl, padding), 36);
        assert_eq!(offset_of!(DmIoctl, dev), 40);
        assert_eq!(offset_of!(DmIoctl, name), 48);
        assert_eq!(offset_of!(DmIoctl, uuid), 176);
        assert_eq!(offset_of!(DmIoctl, data), 305);
    }

    #[test]
    fn target_spec_and_name_list_layouts() {
        assert_eq!(size_of::<DmTargetSpec>(), 40);
        assert_eq!(offset_of!(DmTargetSpec, sector_start), 0);
        assert_eq!(offset_of!(DmTargetSpec, length), 8);
        assert_eq!(offset_of!(DmTargetSpec, status), 16);
        assert_eq!(offset_of!(DmTargetSpec, next), 20);
        assert_eq!(offset_of!(DmTargetSpec, target_type), 24);
        assert_eq!(offset_of!(DmNameList, dev), 0);
        assert_eq!(offset_of!(DmNameList, next), 8);
        assert_eq!(NAME_LIST_NAME_OFFSET, 12);
    }

    #[test]
    fn ioctl_numbers() {
        // _IOWR(0xfd, n, struct dm_ioctl), as dmsetup's strace shows them.
        assert_eq!(dm_ioctl_number(DM_VERSION_CMD), 0xc138_fd00);
        assert_eq!(dm_ioctl_number(DM_DEV_CREATE_CMD), 0xc138_fd03);
        assert_eq!(dm_ioctl_number(DM_TABLE_LOAD_CMD), 0xc138_fd09);
        assert_eq!(dm_ioctl_number(DM_TABLE_STATUS_CMD), 0xc138_fd0c);
    }

    #[test]
    fn table_load_buffer_layout() {
        let lines = vec![
            TargetLine {
                start: 0,
                length: 8,
                target_type: "linear".into(),
                params: Zeroizing::new("7:0 0".into()),
            },
            TargetLine {
                start: 8,
                length: 16,
                target_type: "zero".into(),
                params: Zeroizing::default(),
            },
        ];
        let b = table_buffer(&lines).unwrap();
        let h = b.header();
        assert_eq!(h.target_count, 2);
        assert_eq!(h.data_start, 312);
        assert_eq!(h.version, [4, 0, 0]);
        // First spec: 40 + "7:0 0\0" (6) = 46, padded to 48.
        assert_eq!(b.u64_at(312), 0);
        assert_eq!(b.u64_at(320), 8);
        assert_eq!(b.u32_at(312 + 20), 48);
        assert_eq!(&b.bytes()[312 + 24..312 + 30], b"linear");
        assert_eq!(&b.bytes()[352..358], b"7:0 0\0");
        // Second spec at 312 + 48, 8-byte aligned.
        assert_eq!((312 + 48) % 8, 0);
        assert_eq!(b.u64_at(360), 8);
        assert_eq!(b.u64_at(368), 16);
        assert_eq!(&b.bytes()[360 + 24..360 + 28], b"zero");
        assert_eq!(h.data_size as usize, b.len());
        assert!(b.len() >= 312 + 48 + 48);
    }

    #[test]
    fn status_parsing_follows_next_from_the_data_start() {
        // Build what the kernel returns: `next` counts from the first spec.
        let mut b = Buffer::new(1024);
        b.header_mut().target_count = 2;
        let spec = size_of::<DmTargetSpec>();
        let put =
            |b: &mut Buffer, at: usize, start: u64, len: u64, next: u32, ty: &str, p: &str| {
                let bytes = b.bytes_mut();
                bytes[at..at + 8].copy_from_slice(&start.to_ne_bytes());
                bytes[at + 8..at + 16].copy_from_slice(&len.to_ne_bytes());
                bytes[at + 20..at + 24].copy_from_slice(&next.to_ne_bytes());
                bytes[at + 24..at + 24 + ty.len()].copy_from_slice(ty.as_bytes());
                bytes[at + spec..at + spec + p.len()].copy_from_slice(p.as_bytes());
            };
        put(&mut b, 312, 0, 8, 56, "striped", "2 7:0 7:1 1 AA");
        put(&mut b, 312 + 56, 8, 8, 104, "zero", "");
        let t = parse_targets(&b);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].target_type, "striped");
        assert_eq!(t[0].params.as_str(), "2 7:0 7:1 1 AA");
        assert_eq!((t[1].start, t[1].length), (8, 8));
        assert_eq!(t[1].params.as_str(), "");
    }

    #[test]
    fn names_must_fit() {
        let mut name = [0u8; DM_NAME_LEN];
        assert!(copy_str(&mut name, &"x".repeat(127), "n").is_ok());
        assert!(copy_str(&mut name, &"x".repeat(128), "n").is_err());
    }
}
