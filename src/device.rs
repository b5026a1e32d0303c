//! A mapped device: its live and inactive tables, suspend and resume, and I/O at any byte
//! offset split across the table's lines, with read-modify-write for the partial sectors at the
//! edges.

use std::any::Any;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex, RwLock};

use crate::backing::Backing;
use crate::block::BlockDevice;
use crate::changes::Changes;
use crate::device_link::DeviceLink;
use crate::error::{DmError, DmResult};
use crate::mirror_io::{MirrorIo, NoMirrorIo};
use crate::table::Table;
use crate::units::{Bytes, SECTOR_SIZE, Sectors};

pub struct Device {
    /// Unique for the life of the mount, never reused: the dm minor number and the base of the
    /// device's inode numbers.
    pub id: u64,
    /// The uid that created the device and may manage it (the daemon's own uid when root or
    /// the daemon's user created it); `dev/NAME` shows it as the file's owner.
    pub owner: u32,
    name: RwLock<String>,
    uuid: RwLock<Option<String>>,
    table: RwLock<Arc<Table>>,
    /// A table loaded by reload, made live by resume.
    inactive: RwLock<Option<Arc<Table>>>,
    /// Lets I/O in, or holds it while the device is suspended.
    gate: Gate,
    /// Writes refused with EROFS (`chmod a-w dev/NAME`, or created read-only).
    read_only: AtomicBool,
    /// The event counter (table swaps, as the kernel's event number counts them, and the
    /// events targets raise) and the suspended flag, shared with the live targets.
    link: DeviceLink,
    /// The `ctl/create/NAME` file that made the device is still open: a uuid set now is part
    /// of the create (as `dmsetup create -u` passes it with DM_DEV_CREATE), not an event.
    pub creating: AtomicBool,
    /// Open handles on `dev/NAME`.
    pub open_count: AtomicU32,
    /// Whether the kernel may hold a size for `dev/NAME` that is not the device's (see
    /// `KernelSize`).
    pub kernel_size: KernelSize,
    /// Open handles the kernel serves itself (FUSE passthrough): suspend cannot hold them.
    pub passthrough_opens: AtomicU32,
    /// References to this device from other devices' tables.
    pub holders: AtomicU32,
    /// Opened through the kernel's page cache at least once: its pages may need dropping when
    /// its bytes change (`coherence`).
    pub page_cached: AtomicBool,
    /// Writes that do not cover whole sectors read their edge sectors first; they hold this
    /// exclusively so no other write lands between that read and their write. Whole-sector
    /// writes hold it shared.
    edge_lock: RwLock<()>,
    /// Where changes to its bytes and its size are reported.
    changes: Arc<Changes>,
    /// The mount's mirror (`--kernel`: the kernel's device mapper), asked where I/O goes: a
    /// mirrored device's I/O goes through the mirror's device, so both paths see the same bytes.
    mirror: Arc<dyn MirrorIo>,
    /// Signals when the last holder has let go of the device (see `Registry::remove`). The
    /// last field: fields are dropped in the order they are declared, so the tables, and what
    /// their targets registered, are gone when it signals.
    dropped: DropNotice,
}

/// Says when a device has been dropped, to whoever removed it and waits for the last holder.
#[derive(Default)]
pub struct DropSignal {
    dropped: Mutex<bool>,
    changed: Condvar,
}

impl DropSignal {
    /// Waits until the device is dropped, at most `timeout`; answers whether it was.
    pub fn wait(&self, timeout: std::time::Duration) -> bool {
        let mut dropped = self.dropped.lock();
        let deadline = std::time::Instant::now() + timeout;
        while !*dropped {
            if self.changed.wait_until(&mut dropped, deadline).timed_out() {
                break;
            }
        }
        *dropped
    }
}

/// Sets its `DropSignal` when dropped.
#[derive(Default)]
struct DropNotice(Arc<DropSignal>);

impl Drop for DropNotice {
    fn drop(&mut self) {
        *self.0.dropped.lock() = true;
        self.0.changed.notify_all();
    }
}

/// Whether the kernel may hold a size for `dev/NAME` that is not the device's. With the
/// writeback cache the kernel owns a file's size for as long as it keeps the inode, so a
/// resize, or a write past the end taken into its cache, is put right by dropping the `dev/NAME`
/// entry (the inode goes with it unless something holds it) at the last close. A lookup that
/// races with that drop can pin the old inode anew under a new entry: an open whose lookup came
/// before the drop reached the kernel (its OPEN reaching dmfs after), or any lookup while a file
/// is open. So the drop is done again at the last close after such an open, once.
#[derive(Default)]
pub struct KernelSize {
    /// `WRONG`, `RECHECK` or 0 (the kernel's size is the device's).
    state: AtomicU8,
    /// Drops for a wrong size (not re-checks) the invalidator has made.
    drops: AtomicU64,
    /// `drops` as the last open saw it.
    seen_at_open: AtomicU64,
}

/// The kernel's size is wrong: drop the entry at the last close.
const WRONG: u8 = 1;
/// An open may have pinned the inode a drop meant to let go: drop the entry again at the last
/// close.
const RECHECK: u8 = 2;

/// Why a `dev/NAME` entry is dropped at a last close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeDrop {
    /// The size was wrong.
    Wrong,
    /// A drop may have been undone by a racing open.
    Recheck,
}

impl KernelSize {
    /// A resize with a file open, or a write past the end in the kernel's cache.
    pub fn mark_wrong(&self) {
        self.state.store(WRONG, Ordering::SeqCst);
    }

    /// An open of `dev/NAME` (counted open before this is called): after a drop for a wrong
    /// size, the first open re-checks at its last close.
    pub fn opened(&self) {
        let drops = self.drops.load(Ordering::SeqCst);
        if self.seen_at_open.swap(drops, Ordering::SeqCst) != drops {
            let _ = self
                .state
                .compare_exchange(0, RECHECK, Ordering::SeqCst, Ordering::SeqCst);
        }
    }

    /// At the last close: whether the entry must be dropped now, and why.
    pub fn take_at_last_close(&self) -> Option<SizeDrop> {
        match self.state.swap(0, Ordering::SeqCst) {
            0 => None,
            WRONG => Some(SizeDrop::Wrong),
            _ => Some(SizeDrop::Recheck),
        }
    }

    /// The invalidator dropped the entry (`why`); `open` says whether a file was open then,
    /// whose inode may have survived the drop: its last close drops it again.
    pub fn dropped(&self, why: SizeDrop, open: bool) {
        if why == SizeDrop::Wrong {
            self.drops.fetch_add(1, Ordering::SeqCst);
        }
        if open {
            let again = if why == SizeDrop::Wrong {
                WRONG
            } else {
                RECHECK
            };
            let _ = self
                .state
                .compare_exchange(0, again, Ordering::SeqCst, Ordering::SeqCst);
        }
    }
}

/// An I/O request held while its device is suspended, run at resume.
pub type Deferred = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct GateState {
    suspended: bool,
    in_flight: u32,
    /// Requests that arrived while suspended. They are parked here rather than blocking a
    /// request thread: blocked threads could leave none to serve the resume itself.
    deferred: Vec<Deferred>,
}

/// Counts I/O in flight and holds new I/O while the device is suspended.
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

/// One I/O in flight; leaving wakes a suspend waiting for the device to drain.
struct InFlight<'a>(&'a Gate);

impl Gate {
    fn enter(&self) -> InFlight<'_> {
        let mut state = self.state.lock();
        while state.suspended {
            self.changed.wait(&mut state);
        }
        state.in_flight += 1;
        InFlight(self)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        state.in_flight -= 1;
        if state.in_flight == 0 && state.suspended {
            self.0.changed.notify_all();
        }
    }
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
    offset.is_multiple_of(SECTOR_SIZE) && (len as u64).is_multiple_of(SECTOR_SIZE)
}

impl Device {
    /// A device whose changes are reported to `changes` (its mount's).
    pub fn new(id: u64, name: String, table: Table, changes: Arc<Changes>) -> Device {
        Device {
            id,
            changes,
            owner: 0,
            name: RwLock::new(name),
            uuid: RwLock::new(None),
            table: RwLock::new(Arc::new(table)),
            inactive: RwLock::new(None),
            gate: Gate::default(),
            read_only: AtomicBool::new(false),
            link: DeviceLink::default(),
            creating: AtomicBool::new(false),
            open_count: AtomicU32::new(0),
            kernel_size: KernelSize::default(),
            passthrough_opens: AtomicU32::new(0),
            holders: AtomicU32::new(0),
            page_cached: AtomicBool::new(false),
            edge_lock: RwLock::new(()),
            mirror: Arc::new(NoMirrorIo),
            dropped: DropNotice::default(),
        }
    }

    /// The same device, mirrored by `mirror` (the registry's, before the device is shared).
    pub fn with_mirror(mut self, mirror: Arc<dyn MirrorIo>) -> Device {
        self.mirror = mirror;
        self
    }

    /// Signalled when the last holder of this device lets go of it.
    pub fn drop_signal(&self) -> Arc<DropSignal> {
        self.dropped.0.clone()
    }

    pub fn name(&self) -> String {
        self.name.read().clone()
    }

    /// Renames; only the registry calls this, with its map locked.
    pub(crate) fn set_name(&self, name: &str) {
        *self.name.write() = name.to_string();
    }

    pub fn uuid(&self) -> Option<String> {
        self.uuid.read().clone()
    }

    /// Sets the uuid; only the registry calls this, having checked it is unset and unique.
    pub(crate) fn set_uuid(&self, uuid: &str) {
        *self.uuid.write() = Some(uuid.to_string());
    }

    pub fn table(&self) -> Arc<Table> {
        self.table.read().clone()
    }

    pub fn inactive_table(&self) -> Option<Arc<Table>> {
        self.inactive.read().clone()
    }

    /// Makes `table` live at once (the table a create session extends). Callers have
    /// validated it.
    pub fn set_table(&self, table: Table) {
        let table = Arc::new(table);
        *self.table.write() = table.clone();
        self.resume_targets(&table);
    }

    /// Loads `table` as the inactive table, replacing any loaded before.
    pub fn load(&self, table: Table) {
        *self.inactive.write() = Some(Arc::new(table));
    }

    /// Tells the live table's targets they are live, unless the device is mirrored into the
    /// kernel: then the kernel's targets serve its I/O, and dmfs's must not start work of their
    /// own (a snapshot-merge would copy into the origin behind the kernel's back).
    pub fn resume_targets(&self, table: &Table) {
        if self.mirror_io().is_none() {
            table.resume_targets(&self.link);
        }
    }

    /// Drops the inactive table (the kernel mirror refused it at resume).
    pub fn clear_inactive(&self) {
        *self.inactive.write() = None;
    }

    /// The mirror's device this device's I/O goes through instead of its own table, if any.
    pub fn mirror_io(&self) -> Option<Arc<File>> {
        self.mirror.io(self.id)
    }

    pub fn is_suspended(&self) -> bool {
        self.gate.state.lock().suspended
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only.load(Ordering::SeqCst)
    }

    pub fn set_read_only(&self, read_only: bool) {
        self.read_only.store(read_only, Ordering::SeqCst);
    }

    pub fn event_nr(&self) -> u32 {
        self.link.events.load(Ordering::SeqCst)
    }

    /// Counts an event: the kernel raises one for a table swap, a rename and a uuid change.
    pub fn event(&self) {
        self.link.event();
    }

    /// Waits for in-flight I/O to drain, then holds new I/O until `resume`. Suspending a
    /// suspended device does nothing, as in the kernel.
    pub fn suspend(&self) {
        let mut state = self.gate.state.lock();
        let was_suspended = state.suspended;
        state.suspended = true;
        if !was_suspended {
            let passthrough = self.passthrough_opens.load(Ordering::SeqCst);
            if passthrough > 0 {
                log::warn!(
                    "suspend {}: {passthrough} passthrough handles are open; the kernel serves their reads, which the suspend cannot hold (they see a reloaded table at their next open)",
                    self.name()
                );
            }
            // Targets let go of I/O they hold back before the drain waits for it.
            drop(state);
            self.table().presuspend_targets();
            state = self.gate.state.lock();
        }
        while state.in_flight > 0 {
            self.gate.changed.wait(&mut state);
        }
        self.link.suspended.store(true, Ordering::SeqCst);
        drop(state);
        if !was_suspended {
            self.table().suspend_targets();
        }
    }

    /// Swaps in the inactive table, if one is loaded, and lets I/O flow again. As in the
    /// kernel, the table is swapped in first and its targets' preresume checks run then: one
    /// failing leaves the device suspended, with the new table live.
    pub fn resume(&self) -> DmResult<()> {
        let mut state = self.gate.state.lock();
        if let Some(table) = self.inactive.write().take() {
            *self.table.write() = table;
            self.event();
        }
        if self.mirror_io().is_none()
            && let Err(e) = self.table().preresume_targets(&self.link)
        {
            state.suspended = true;
            self.link.suspended.store(true, Ordering::SeqCst);
            return Err(e);
        }
        self.open_gate(state);
        Ok(())
    }

    /// Undoes a suspend the mirror refused: I/O flows again on the same live table, and an
    /// inactive table stays loaded.
    pub fn undo_suspend(&self) {
        let state = self.gate.state.lock();
        self.open_gate(state);
    }

    /// Tells the live targets they are live again and lets I/O in, the held requests first.
    fn open_gate(&self, mut state: parking_lot::MutexGuard<'_, GateState>) {
        self.resume_targets(&self.table());
        state.suspended = false;
        self.link.suspended.store(false, Ordering::SeqCst);
        let deferred = std::mem::take(&mut state.deferred);
        self.gate.changed.notify_all();
        drop(state);
        if !deferred.is_empty() {
            std::thread::spawn(move || deferred.into_iter().for_each(|op| op()));
        }
    }

    /// Parks the request `make` builds if the device is suspended (true), to run at resume;
    /// otherwise leaves it to the caller to run now (false).
    pub fn defer_if_suspended(&self, make: impl FnOnce() -> Deferred) -> bool {
        let mut state = self.gate.state.lock();
        if state.suspended {
            state.deferred.push(make());
            true
        } else {
            false
        }
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
        let _io = self.gate.enter();
        let table = self.table();
        let size = table.len().bytes().0;
        if offset.0 >= size {
            return Ok(0);
        }
        let n = std::cmp::min(buf.len() as u64, size - offset.0) as usize;
        let buf = &mut buf[..n];
        if let Some(mirror) = self.mirror_io() {
            mirror.read_exact_at(buf, offset.0)?;
            return Ok(n);
        }
        if aligned(offset.0, n) {
            table.read(offset.sectors_floor(), buf)?;
        } else {
            let (first, span) = covering_sectors(offset.0, n);
            crate::scratch::with_buffer(span, |scratch| {
                table.read(first, scratch)?;
                let skip = offset.sector_offset() as usize;
                buf.copy_from_slice(&scratch[skip..skip + n]);
                io::Result::Ok(())
            })?;
        }
        Ok(n)
    }

    /// Hands the bytes a read of `len` from byte `offset` returns to `send` where they lie in a
    /// backing file's page cache (cut at the device's end, as `read` cuts), and returns true;
    /// or returns false without calling it, and the read goes through `read`. The device's
    /// gate and table are held while `send` runs, so a suspend waits for it as for any read.
    pub fn read_in_place(&self, offset: Bytes, len: usize, send: &mut dyn FnMut(&[u8])) -> bool {
        let _io = self.gate.enter();
        let table = self.table();
        let size = table.len().bytes().0;
        if offset.0 >= size || len == 0 || self.mirror_io().is_some() {
            return false;
        }
        let n = std::cmp::min(len as u64, size - offset.0) as usize;
        table.read_in_place(offset, n, send)
    }

    /// Writes at byte `offset`; returns the bytes written. A write that starts at or past the
    /// end fails with ENOSPC; one that runs past the end is cut short there, as a block device
    /// does.
    pub fn write(&self, offset: Bytes, data: &[u8]) -> io::Result<usize> {
        if self.is_read_only() {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        let _io = self.gate.enter();
        let table = self.table();
        let size = table.len().bytes().0;
        if offset.0 >= size {
            return Err(enospc());
        }
        let n = std::cmp::min(data.len() as u64, size - offset.0) as usize;
        let data = &data[..n];
        let (first, span) = covering_sectors(offset.0, n);
        let changed = Sectors(span as u64 / SECTOR_SIZE);
        // This is a write through dev/NAME: the kernel keeps that file's own pages of the
        // written range true itself (it drops them after a direct-I/O write; a writeback
        // write came from them), so only other devices' pages, and other ranges of this one,
        // are dropped.
        self.changes.own_write(self.id, first, first + changed, || {
            let result = match self.mirror_io() {
                Some(mirror) => mirror.write_all_at(data, offset.0),
                None => self.write_pieces(&table, offset, data),
            };
            // Every piece is written even when one fails (see Table::write): the whole range
            // counts as changed either way.
            self.changes.device_written(self.id, first, changed);
            result.map(|()| n)
        })
    }

    /// `write`'s work once the request is inside the device: whole sectors straight from
    /// `data`, a partial sector at either edge by read-modify-write of that sector alone.
    /// (A 1 MiB write from a buffer that is not page aligned, as fio's buffered jobs use,
    /// reaches dmfs as two requests with a partial sector between them; patching a copy of
    /// the whole request cost a memcpy of it per request.)
    fn write_pieces(&self, table: &Table, offset: Bytes, data: &[u8]) -> io::Result<()> {
        let n = data.len();
        if aligned(offset.0, n) {
            let _shared = self.edge_lock.read();
            return table.write(offset.sectors_floor(), data);
        }
        let _exclusive = self.edge_lock.write();
        let (start, end) = (offset.0, offset.0 + n as u64);
        let (first, last) = (start / SECTOR_SIZE, (end - 1) / SECTOR_SIZE);
        let whole_from = start.next_multiple_of(SECTOR_SIZE);
        let whole_to = end / SECTOR_SIZE * SECTOR_SIZE;
        let byte = |at: u64| (at - start) as usize;
        // Both partial sectors are read before anything is written: a write whose edge
        // cannot be read (an error target's sector) fails and changes nothing.
        let mut head = [0u8; SECTOR_SIZE as usize];
        let mut tail = [0u8; SECTOR_SIZE as usize];
        let head_part = start < whole_from || first == last;
        let tail_part = end > whole_to && last != first;
        if head_part {
            table.read(Sectors(first), &mut head)?;
            let skip = (start % SECTOR_SIZE) as usize;
            let len = (((first + 1) * SECTOR_SIZE).min(end) - start) as usize;
            head[skip..skip + len].copy_from_slice(&data[..len]);
        }
        if tail_part {
            table.read(Sectors(last), &mut tail)?;
            tail[..(end - whole_to) as usize].copy_from_slice(&data[byte(whole_to)..]);
        }
        // Each piece is written even when one before it failed (as Table::write does), so
        // the whole range is what changed either way; the first error is the answer.
        let mut result = Ok(());
        if whole_to > whole_from {
            let whole = &data[byte(whole_from)..byte(whole_to)];
            result = table.write(Sectors(whole_from / SECTOR_SIZE), whole);
        }
        if head_part {
            result = result.and(table.write(Sectors(first), &head));
        }
        if tail_part {
            result = result.and(table.write(Sectors(last), &tail));
        }
        result
    }

    /// Whole-sector reads for devices stacked on this one.
    pub fn read_sectors(&self, at: Sectors, buf: &mut [u8]) -> io::Result<()> {
        let _io = self.gate.enter();
        if let Some(mirror) = self.mirror_io() {
            return mirror.read_exact_at(buf, at.bytes().0);
        }
        self.table().read(at, buf)
    }

    /// Whole-sector writes for devices stacked on this one.
    pub fn write_sectors(&self, at: Sectors, buf: &[u8]) -> io::Result<()> {
        if self.is_read_only() {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        let _io = self.gate.enter();
        let _shared = self.edge_lock.read();
        let result = match self.mirror_io() {
            Some(mirror) => mirror.write_all_at(buf, at.bytes().0),
            None => self.table().write(at, buf),
        };
        let len = Sectors(buf.len() as u64 / SECTOR_SIZE);
        self.changes.device_written(self.id, at, len);
        result
    }

    /// Flushes the backing devices of the live and the inactive table.
    pub fn flush(&self) -> io::Result<()> {
        if let Some(mirror) = self.mirror_io() {
            mirror.sync_data()?;
        }
        self.table().flush()?;
        match self.inactive_table() {
            Some(t) => t.flush(),
            None => Ok(()),
        }
    }

    /// `dmsetup message NAME SECTOR MESSAGE...`: hands the message to the target holding
    /// `sector`, with the kernel's words for what goes wrong.
    pub fn message(&self, sector: &str, message: &[&str]) -> DmResult<String> {
        let sector = crate::target::parse_sector_arg(sector)
            .ok_or_else(|| DmError::invalid("Invalid sector"))?;
        let table = self.table();
        let entry = table
            .entry_at(sector)
            .ok_or_else(|| DmError::invalid("Target message sector outside device."))?;
        entry.target.message(message)
    }

    /// Whether this device's tables (live or inactive) reach `other`, directly or through
    /// devices stacked in between: a table that did would make a loop.
    pub fn depends_on(&self, other: &Device) -> bool {
        self.depends_on_unseen(other, &mut std::collections::HashSet::new())
    }

    /// `depends_on`, skipping devices already walked: devices shared lower in the stack (a
    /// diamond) are walked once, not once per path to them.
    fn depends_on_unseen(&self, other: &Device, seen: &mut std::collections::HashSet<u64>) -> bool {
        if std::ptr::eq(self, other) {
            return true;
        }
        if !seen.insert(self.id) {
            return false;
        }
        let tables = std::iter::once(self.table()).chain(self.inactive_table());
        tables
            .flat_map(|t| t.devices())
            .any(|b| device_under(&b).is_some_and(|d| d.depends_on_unseen(other, seen)))
    }
}

/// The device of this mount a reference names, if it names one.
pub fn device_under(b: &Backing) -> Option<Arc<Device>> {
    let any: Arc<dyn Any + Send + Sync> = b.mapped_device()?.clone();
    any.downcast::<Device>().ok()
}

impl BlockDevice for Device {
    fn id(&self) -> u64 {
        self.id
    }

    fn name(&self) -> String {
        Device::name(self)
    }

    fn size(&self) -> Sectors {
        Device::size(self)
    }

    fn logical_block_size(&self) -> u32 {
        self.table().logical_block_size()
    }

    fn read_sectors(&self, at: Sectors, buf: &mut [u8]) -> io::Result<()> {
        Device::read_sectors(self, at, buf)
    }

    fn write_sectors(&self, at: Sectors, buf: &[u8]) -> io::Result<()> {
        Device::write_sectors(self, at, buf)
    }

    fn read_in_place(&self, at: Bytes, len: usize, send: &mut dyn FnMut(&[u8])) -> bool {
        Device::read_in_place(self, at, len, send)
    }

    fn flush(&self) -> io::Result<()> {
        Device::flush(self)
    }

    fn holders(&self) -> &AtomicU32 {
        &self.holders
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A drop for a wrong size re-arms once, for the first open after it (whose lookup may have
    /// pinned the old inode): that open's last close drops again, and the chain ends there. A
    /// drop made while a file is open keeps the reason for its last close.
    #[test]
    fn kernel_size_rechecks_once_after_a_drop() {
        let k = KernelSize::default();
        assert_eq!(k.take_at_last_close(), None);
        k.mark_wrong();
        assert_eq!(k.take_at_last_close(), Some(SizeDrop::Wrong));
        assert_eq!(k.take_at_last_close(), None);
        k.dropped(SizeDrop::Wrong, false);
        k.opened();
        assert_eq!(k.take_at_last_close(), Some(SizeDrop::Recheck));
        k.dropped(SizeDrop::Recheck, false);
        k.opened();
        assert_eq!(k.take_at_last_close(), None);
        k.dropped(SizeDrop::Wrong, true);
        assert_eq!(k.take_at_last_close(), Some(SizeDrop::Wrong));
        k.dropped(SizeDrop::Recheck, true);
        assert_eq!(k.take_at_last_close(), Some(SizeDrop::Recheck));
    }

    #[test]
    fn covering() {
        assert_eq!(covering_sectors(0, 512), (Sectors(0), 512));
        assert_eq!(covering_sectors(1, 512), (Sectors(0), 1024));
        assert_eq!(covering_sectors(511, 2), (Sectors(0), 1024));
        assert_eq!(covering_sectors(1024, 1), (Sectors(2), 512));
        assert!(aligned(1024, 4096));
        assert!(!aligned(1024, 100));
    }

    struct NoFiles;
    impl crate::backing::DeviceResolver for NoFiles {
        fn open(&self, _: &str) -> DmResult<Arc<crate::backing::Backing>> {
            Err(DmError::invalid("no files here"))
        }
    }

    /// The drop signal comes when the last holder lets go, in whichever thread, and only once
    /// the device's table is gone too.
    #[test]
    fn drop_signal_after_the_last_holder_and_the_table() {
        let mut b = crate::table::TableBuilder::new();
        b.add_line("0 8 zero", &NoFiles, &Arc::default()).unwrap();
        let device = Arc::new(Device::new(
            0,
            "d".into(),
            b.table().unwrap(),
            Changes::none(),
        ));
        let table = Arc::downgrade(&device.table());
        let signal = device.drop_signal();
        let holder = device.clone();
        drop(device);
        assert!(!signal.wait(std::time::Duration::from_millis(20)));
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            drop(holder);
        });
        assert!(signal.wait(std::time::Duration::from_secs(5)));
        assert!(
            table.upgrade().is_none(),
            "the table went before the signal"
        );
        releaser.join().unwrap();
    }
}
