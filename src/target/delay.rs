//! `delay <device> <offset> <delay> [<write device> <write offset> <write delay>
//! [<flush device> <flush offset> <flush delay>]]`: maps like linear, holding every request
//! back for its class's delay in milliseconds (the kernel's dm-delay v1.3.0). With three
//! arguments reads, writes and flushes share them; with six, the second set is for writes
//! and flushes; with nine, the third set is for flushes.
//!
//! A delayed request waits in the thread serving it. As in the kernel, suspending the device
//! lets every waiting request go at once and stops delaying until resume, and `status`
//! prints how many reads, writes and flushes are being held back right now.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::View;
use super::{Area, Ctor, Target, TargetType, check_area, parse_sector_arg, scan_u32};
use crate::backing::Backing;
use crate::device_link::DeviceLink;
use crate::error::{DmError, DmResult};
use crate::units::Sectors;

pub const TYPE: TargetType = TargetType {
    name: "delay",
    version: [1, 3, 0],
    construct,
};

/// One class of requests (reads, writes or flushes): where they go and how long they wait.
struct Class {
    dev: Arc<Backing>,
    start: Sectors,
    delay_ms: u32,
    /// Requests of this class waiting right now (the kernel's `ops`).
    waiting: AtomicU32,
}

struct Delay {
    read: Class,
    write: Class,
    flush: Class,
    /// How many argument sets the table gave (1, 2 or 3): what `table` prints.
    sets: usize,
    /// False between presuspend and resume: requests are not delayed.
    may_delay: Mutex<bool>,
    released: Condvar,
}

/// The kernel's `delay_class_ctr`: offset, delay, then the device.
fn class(ctor: &Ctor<'_>, args: &[String]) -> DmResult<Class> {
    let start =
        parse_sector_arg(&args[1]).ok_or_else(|| DmError::invalid("Invalid device sector"))?;
    let delay_ms = scan_u32(&args[2]).ok_or_else(|| DmError::invalid("Invalid delay"))?;
    let dev = ctor
        .resolver
        .open(&args[0])
        .map_err(|e| e.context("Device lookup failed"))?;
    Ok(Class {
        dev,
        start,
        delay_ms,
        waiting: AtomicU32::new(0),
    })
}

fn construct(ctor: &Ctor<'_>, args: &[String]) -> DmResult<Box<dyn Target>> {
    if !matches!(args.len(), 3 | 6 | 9) {
        return Err(DmError::invalid("Requires exactly 3, 6 or 9 arguments"));
    }
    let read = class(ctor, &args[0..3])?;
    // Each class is constructed from its own argument set, as the kernel does, so a device
    // named twice is opened twice and each class counts its own waiting requests.
    let write = class(ctor, &args[if args.len() >= 6 { 3..6 } else { 0..3 }])?;
    let flush = class(
        ctor,
        &args[match args.len() {
            9 => 6..9,
            6 => 3..6,
            _ => 0..3,
        }],
    )?;
    // The kernel checks each class's area once the table is built (iterate_devices).
    for c in [&read, &write, &flush] {
        check_area(&c.dev, c.start, ctor.len)?;
    }
    Ok(Box::new(Delay {
        read,
        write,
        flush,
        sets: args.len() / 3,
        may_delay: Mutex::new(true),
        released: Condvar::new(),
    }))
}

impl Delay {
    /// Holds the calling request for `class`'s delay, or less if the device starts to
    /// suspend meanwhile.
    fn wait(&self, class: &Class) {
        if class.delay_ms == 0 {
            return;
        }
        let deadline = Instant::now() + Duration::from_millis(u64::from(class.delay_ms));
        let mut may_delay = self.may_delay.lock();
        if !*may_delay {
            return;
        }
        class.waiting.fetch_add(1, Ordering::SeqCst);
        while *may_delay
            && !self
                .released
                .wait_until(&mut may_delay, deadline)
                .timed_out()
        {}
        class.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

fn class_text(c: &Class) -> String {
    format!("{} {} {}", c.dev.name(), c.start, c.delay_ms)
}

impl Target for Delay {
    fn read(&self, offset: Sectors, buf: &mut [u8]) -> io::Result<()> {
        self.wait(&self.read);
        self.read.dev.read_at(self.read.start + offset, buf)
    }

    fn write(&self, offset: Sectors, buf: &[u8]) -> io::Result<()> {
        self.wait(&self.write);
        self.write.dev.write_at(self.write.start + offset, buf)
    }

    /// The kernel sends a flush to the flush class's device only.
    fn flush(&self) -> io::Result<()> {
        self.wait(&self.flush);
        self.flush.dev.flush()
    }

    fn table_args(&self) -> String {
        [&self.read, &self.write, &self.flush][..self.sets]
            .iter()
            .map(|c| class_text(c))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn status(&self) -> String {
        let n = |c: &Class| c.waiting.load(Ordering::SeqCst);
        format!("{} {} {}", n(&self.read), n(&self.write), n(&self.flush))
    }

    fn devices(&self) -> Vec<Arc<Backing>> {
        let mut out: Vec<Arc<Backing>> = Vec::new();
        for c in [&self.read, &self.write, &self.flush] {
            if !out.iter().any(|d| d.same_device(&c.dev)) {
                out.push(c.dev.clone());
            }
        }
        out
    }

    /// Every class's area, as the kernel's `delay_iterate_devices` gives them.
    fn areas(&self, len: Sectors) -> Vec<Area<'_>> {
        [&self.read, &self.write, &self.flush]
            .into_iter()
            .take(self.sets)
            .map(|c| Area::new(&c.dev, c.start, len))
            .collect()
    }

    /// What the device shows is what the read class reads.
    fn views(&self) -> Vec<View> {
        vec![View::Linear {
            key: self.read.dev.key(),
            from: self.read.start,
        }]
    }

    fn presuspend(&self) {
        *self.may_delay.lock() = false;
        self.released.notify_all();
    }

    fn resume(&self, _device_size: Sectors, _link: &DeviceLink) {
        *self.may_delay.lock() = true;
    }
}
