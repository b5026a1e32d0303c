//! `flakey <device> <offset> <up interval> <down interval> [<#features> <feature>...]`: maps
//! like linear, but for `down interval` seconds out of every `up + down` (counted from table
//! load) the device misbehaves (the kernel's dm-flakey v1.5.0):
//! - no features: every read and write fails with EIO;
//! - `drop_writes`: writes succeed but are thrown away, reads work;
//! - `error_writes`: writes fail with EIO, reads work;
//! - `corrupt_bio_byte <Nth byte> <r|w> <value> <flags>`: byte N (from 1) of every matching
//!   write is replaced with `value` before it is written. With `r` nothing is corrupted: in
//!   6.1 the corruption runs at end_io, over a bio whose iterator the completion has already
//!   used up, so it never touches a byte (fixed upstream in 2025; fixtures/kernel/faults.out
//!   shows reads coming back clean). The oracle's kernel is the specification.
//!
//! A "bio" in dmfs is one FUSE request, so "the Nth byte of the bio" is the Nth byte of the
//! request as the kernel's FUSE sent it. `flags` is matched against the bits a write bio
//! carries in the kernel for the same O_DIRECT write (REQ_OP_WRITE, REQ_SYNC, REQ_IDLE: the
//! recording shows 1 and 2048 matching, REQ_FUA's 131072 not); dmfs sees no request flags.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use super::View;
use super::{
    Area, Ctor, Target, TargetType, check_area, io_error, parse_sector_arg, read_arg_group,
    scan_u32,
};
use crate::backing::Backing;
use crate::error::{DmError, DmResult};
use crate::units::Sectors;

pub const TYPE: TargetType = TargetType {
    name: "flakey",
    version: [1, 5, 0],
    construct,
};

/// The request bits a write carries, as the kernel's O_DIRECT write bios do:
/// REQ_OP_WRITE | REQ_SYNC | REQ_IDLE.
const WRITE_BIO_FLAGS: u32 = 1 | 1 << 11 | 1 << 15;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Read,
    Write,
}

struct Corrupt {
    /// Which byte of the request, counting from 1.
    byte: u32,
    direction: Direction,
    value: u8,
    flags: u32,
}

#[derive(Default)]
struct Features {
    drop_writes: bool,
    error_writes: bool,
    corrupt: Option<Corrupt>,
}

struct Flakey {
    dev: Arc<Backing>,
    start: Sectors,
    up: u32,
    down: u32,
    features: Features,
    /// The kernel counts from the constructor (`fc->start_time = jiffies`).
    born: Instant,
}

/// The kernel's `struct dm_arg_set` and `dm_shift_arg`: arguments consumed front to back.
struct ArgSet<'a> {
    args: &'a [String],
}

impl<'a> ArgSet<'a> {
    fn shift(&mut self) -> Option<&'a str> {
        let (first, rest) = self.args.split_first()?;
        self.args = rest;
        Some(first)
    }

    /// The kernel's `dm_read_arg`: the next argument, `%u` in `min..=max`, else `error`.
    fn read_arg(&mut self, min: u32, max: u32, error: &str) -> DmResult<u32> {
        self.shift()
            .and_then(scan_u32)
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| DmError::invalid(error))
    }
}

fn construct(ctor: &Ctor<'_>, args: &[String]) -> DmResult<Box<dyn Target>> {
    if args.len() < 4 {
        return Err(DmError::invalid("Invalid argument count"));
    }
    let mut set = ArgSet { args };
    let devname = set.shift().unwrap_or_default();
    let start = set
        .shift()
        .and_then(parse_sector_arg)
        .ok_or_else(|| DmError::invalid("Invalid device sector"))?;
    let up = set.read_arg(0, u32::MAX, "Invalid up interval")?;
    // The kernel reads both intervals with the same dm_arg, so a bad down interval is
    // reported as "Invalid up interval" too.
    let down = set.read_arg(0, u32::MAX, "Invalid up interval")?;
    let period = up.wrapping_add(down);
    if period == 0 {
        return Err(DmError::invalid("Total (up + down) interval is zero"));
    }
    if period < up {
        return Err(DmError::invalid("Interval overflow"));
    }
    let features = parse_features(&mut set)?;
    let dev = ctor
        .resolver
        .open(devname)
        .map_err(|e| e.context("Device lookup failed"))?;
    check_area(&dev, start, ctor.len)?;
    Ok(Box::new(Flakey {
        dev,
        start,
        up,
        down,
        features,
        born: Instant::now(),
    }))
}

/// The kernel's `parse_features`, step for step: a count (at most 6, and no more than the
/// arguments left), then that many words, where `corrupt_bio_byte` consumes four more. As in
/// the kernel, the count is decremented per word consumed, and arguments after the group
/// are ignored.
fn parse_features(set: &mut ArgSet<'_>) -> DmResult<Features> {
    let mut f = Features::default();
    if set.args.is_empty() {
        return Ok(f);
    }
    let mut argc = read_arg_group(set.args, 6, "Invalid number of feature args")?;
    set.shift();
    while argc != 0 {
        let name = set.shift();
        argc = argc.wrapping_sub(1);
        let Some(name) = name else {
            return Err(DmError::invalid("Insufficient feature arguments"));
        };
        if name.eq_ignore_ascii_case("drop_writes") {
            if f.drop_writes {
                return Err(DmError::invalid("Feature drop_writes duplicated"));
            }
            f.drop_writes = true;
            if f.error_writes {
                return Err(DmError::invalid(
                    "Feature drop_writes conflicts with feature error_writes",
                ));
            }
        } else if name.eq_ignore_ascii_case("error_writes") {
            if f.error_writes {
                return Err(DmError::invalid("Feature error_writes duplicated"));
            }
            f.error_writes = true;
            if f.drop_writes {
                return Err(DmError::invalid(
                    "Feature error_writes conflicts with feature drop_writes",
                ));
            }
        } else if name.eq_ignore_ascii_case("corrupt_bio_byte") {
            if argc == 0 {
                return Err(DmError::invalid(
                    "Feature corrupt_bio_byte requires parameters",
                ));
            }
            let byte = set.read_arg(1, u32::MAX, "Invalid corrupt bio byte")?;
            argc = argc.wrapping_sub(1);
            let direction = match set.shift() {
                Some(d) if d.eq_ignore_ascii_case("w") => Direction::Write,
                Some(d) if d.eq_ignore_ascii_case("r") => Direction::Read,
                _ => return Err(DmError::invalid("Invalid corrupt bio direction (r or w)")),
            };
            argc = argc.wrapping_sub(1);
            let value = set.read_arg(
                0,
                255,
                "Invalid corrupt value to write into bio byte (0-255)",
            )? as u8;
            argc = argc.wrapping_sub(1);
            let flags = set.read_arg(0, u32::MAX, "Invalid corrupt bio flags mask")?;
            argc = argc.wrapping_sub(1);
            f.corrupt = Some(Corrupt {
                byte,
                direction,
                value,
                flags,
            });
        } else {
            return Err(DmError::invalid("Unrecognised flakey feature requested"));
        }
    }
    let corrupts_writes = f
        .corrupt
        .as_ref()
        .is_some_and(|c| c.direction == Direction::Write);
    if f.drop_writes && corrupts_writes {
        return Err(DmError::invalid(
            "drop_writes is incompatible with corrupt_bio_byte with the WRITE flag set",
        ));
    }
    if f.error_writes && corrupts_writes {
        return Err(DmError::invalid(
            "error_writes is incompatible with corrupt_bio_byte with the WRITE flag set",
        ));
    }
    Ok(f)
}

/// The fate of a write while the device is down.
enum DownWrite {
    Drop,
    Fail,
    Pass,
}

impl Flakey {
    /// The kernel's test: whole seconds since load, modulo the period, past the up interval.
    fn is_down(&self) -> bool {
        let elapsed = self.born.elapsed().as_secs() as u32;
        elapsed % self.up.wrapping_add(self.down) >= self.up
    }

    /// What the kernel's flakey_map does with a write (a flush too) while down: drop_writes
    /// drops it, error_writes or no feature at all fails it, corrupt_bio_byte lets it pass.
    fn down_write(&self) -> DownWrite {
        let f = &self.features;
        if f.drop_writes {
            DownWrite::Drop
        } else if f.error_writes || f.corrupt.is_none() {
            DownWrite::Fail
        } else {
            DownWrite::Pass
        }
    }

    /// The corruption that applies to a write, if any.
    fn write_corruption(&self) -> Option<&Corrupt> {
        self.features
            .corrupt
            .as_ref()
            .filter(|c| c.direction == Direction::Write && WRITE_BIO_FLAGS & c.flags == c.flags)
    }
}

/// The kernel's `corrupt_bio_data`: byte N of the request, if the request is that long.
fn corrupt(buf: &mut [u8], c: &Corrupt) {
    if let Some(b) = buf.get_mut(c.byte as usize - 1) {
        *b = c.value;
    }
}

impl Target for Flakey {
    fn read(&self, offset: Sectors, buf: &mut [u8]) -> io::Result<()> {
        if !self.is_down() {
            return self.dev.read_at(self.start + offset, buf);
        }
        let f = &self.features;
        if f.corrupt.is_none() && !f.drop_writes && !f.error_writes {
            return Err(io_error());
        }
        // Reads pass (a read corruption does nothing in 6.1: see the top of this file).
        self.dev.read_at(self.start + offset, buf)
    }

    fn write(&self, offset: Sectors, buf: &[u8]) -> io::Result<()> {
        if !self.is_down() {
            return self.dev.write_at(self.start + offset, buf);
        }
        match self.down_write() {
            DownWrite::Drop => return Ok(()),
            DownWrite::Fail => return Err(io_error()),
            DownWrite::Pass => {}
        }
        match self.write_corruption() {
            Some(c) => crate::scratch::with_buffer(buf.len(), |copy| {
                copy.copy_from_slice(buf);
                corrupt(copy, c);
                self.dev.write_at(self.start + offset, copy)
            }),
            None => self.dev.write_at(self.start + offset, buf),
        }
    }

    /// A flush is a write without data to the kernel: while down it fails, or is dropped,
    /// as a write would be.
    fn flush(&self) -> io::Result<()> {
        if self.is_down() {
            match self.down_write() {
                DownWrite::Drop => return Ok(()),
                DownWrite::Fail => return Err(io_error()),
                DownWrite::Pass => {}
            }
        }
        self.dev.flush()
    }

    /// As the kernel prints it, with the space after every field, the last one too.
    fn table_args(&self) -> String {
        let f = &self.features;
        let count = u32::from(f.drop_writes)
            + u32::from(f.error_writes)
            + if f.corrupt.is_some() { 5 } else { 0 };
        let mut out = format!(
            "{} {} {} {} {} ",
            self.dev.name(),
            self.start,
            self.up,
            self.down,
            count
        );
        if f.drop_writes {
            out.push_str("drop_writes ");
        } else if f.error_writes {
            out.push_str("error_writes ");
        }
        if let Some(c) = &f.corrupt {
            let dir = match c.direction {
                Direction::Read => 'r',
                Direction::Write => 'w',
            };
            out.push_str(&format!(
                "corrupt_bio_byte {} {} {} {} ",
                c.byte, dir, c.value, c.flags
            ));
        }
        out
    }

    fn devices(&self) -> Vec<Arc<Backing>> {
        vec![self.dev.clone()]
    }

    fn areas(&self, len: Sectors) -> Vec<Area<'_>> {
        vec![Area::new(&self.dev, self.start, len)]
    }

    fn views(&self) -> Vec<View> {
        vec![View::Linear {
            key: self.dev.key(),
            from: self.start,
        }]
    }
}
