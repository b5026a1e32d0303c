//! Keeps the kernel's page cache of `dev/` files true to their bytes.
//!
//! In page-cache mode (the default) the kernel caches what it reads from `dev/NAME`. A device's
//! bytes can change without a write to that file: a write through another device that maps the
//! same bytes of a backing file, a write to a device that this one is stacked on, a reload, a
//! snapshot merge. Every such change is reported here where it happens, at the bottom (a write
//! to a backing file, `Backing::write_at`) and at the top (a write to a device,
//! `Device::write`/`write_sectors`), and the pages of every device that shows the changed bytes
//! are dropped with FUSE's `inval_inode` notification.
//!
//! Ordering: a `write(2)` must not return before the pages it made stale are gone, or a reader
//! could still be served the old bytes. The invalidation waits for pages the kernel has locked
//! for a read in flight, and those reads need a request thread; so a request thread never
//! invalidates itself. Every change queues its page drops on the invalidator thread as it is
//! made, from a request or not (a merge, a delayed write); a request then hands its reply to the
//! invalidator behind them (`reply_when_dropped`), or sends it at once when the invalidator has
//! finished everything queued. No request keeps a list of its own: the queue's order is the
//! guarantee.
//!
//! A write through `dev/NAME` leaves that file's own pages of the written range to the kernel
//! (it drops them after a direct-I/O write; a writeback write came from them): while it is in
//! progress its range is in `own_writes`, and changes to that device inside it drop nothing
//! there.
//!
//! Writes through `dev/` are never cached by the kernel in page-cache mode (opens for writing
//! are direct I/O), so a request never holds page locks of its own while it waits. With
//! `--cache writeback` the kernel writes cached pages back later; those writes are answered at
//! once and their aliases dropped after.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::{Mutex, RwLock};

use crate::changes::ChangeSink;
use crate::device::{Device, SizeDrop};
use crate::device_key::DeviceKey;
use crate::target::View;
use crate::units::Sectors;

/// How `dev/` files use the kernel's page cache (`dmfs mount --cache`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CacheMode {
    /// Reads through read-only opens are cached by the kernel; writes go straight to dmfs.
    PageCache,
    /// Nothing is cached: every read and write is a request to dmfs.
    Direct,
    /// Reads and writes are cached; the kernel writes dirty pages back later (at the latest
    /// at fsync or close-and-sync).
    Writeback,
}

/// How a use maps device sectors back to the viewing device's.
#[derive(Clone, Copy)]
enum Map {
    OneToOne,
    Striped {
        stripe: u64,
        stripes: u64,
        chunk: u64,
    },
    Anywhere,
}

/// One table line's view of one device: sectors `from..from + len` of the device show in the
/// viewing device's sectors `at..at + span`, as `map` says.
struct Use {
    /// Weak: the index must not keep a removed device (and its table, and a snapshot it
    /// serves) alive until the next rebuild.
    device: Weak<Device>,
    from: u64,
    len: u64,
    at: u64,
    span: u64,
    map: Map,
}

/// More pieces than this from one striped use (a whole stripe replaced) drop the whole line.
const MAX_PIECES: u64 = 64;

impl Use {
    /// Calls `f(start, len)` for each run of the viewing device's sectors that shows device
    /// sectors `start..end`.
    fn shows(&self, start: u64, end: u64, mut f: impl FnMut(u64, u64)) {
        let lo = start.max(self.from);
        let hi = end.min(self.from.saturating_add(self.len));
        if lo >= hi {
            return;
        }
        match self.map {
            Map::OneToOne => f(self.at + (lo - self.from), hi - lo),
            Map::Anywhere => f(self.at, self.span),
            Map::Striped {
                stripe,
                stripes,
                chunk,
            } => {
                let (mut k, end) = (lo - self.from, hi - self.from);
                if (end - 1) / chunk - k / chunk >= MAX_PIECES {
                    return f(self.at, self.span);
                }
                while k < end {
                    let within = k % chunk;
                    let n = (chunk - within).min(end - k);
                    f(
                        self.at + ((k / chunk) * stripes + stripe) * chunk + within,
                        n,
                    );
                    k += n;
                }
            }
        }
    }
}

/// The uses of one device, sorted by `from`, with the largest end so far beside each, so a
/// lookup visits only the uses that can overlap (a 10,000-line table over one file costs a
/// binary search, not a scan).
#[derive(Default)]
struct Uses {
    sorted: Vec<Use>,
    max_end: Vec<u64>,
}

impl Uses {
    fn seal(&mut self) {
        self.sorted.sort_by_key(|u| u.from);
        let mut max = 0;
        self.max_end = self
            .sorted
            .iter()
            .map(|u| {
                max = max.max(u.from.saturating_add(u.len));
                max
            })
            .collect();
    }

    fn overlapping(&self, start: u64, end: u64, mut f: impl FnMut(&Use)) {
        let mut i = self.sorted.partition_point(|u| u.from < end);
        while i > 0 {
            i -= 1;
            if self.max_end[i] <= start {
                break;
            }
            f(&self.sorted[i]);
        }
    }
}

/// What the page caches depend on: for every device a table maps onto, who shows its bytes.
#[derive(Default)]
struct Index {
    by_key: HashMap<DeviceKey, Uses>,
    /// Every device, by id: where a change reported by id starts.
    by_id: HashMap<u64, Weak<Device>>,
}

impl Index {
    fn build(devices: &[Arc<Device>]) -> Index {
        let mut by_key: HashMap<DeviceKey, Uses> = HashMap::new();
        let mut by_id = HashMap::new();
        for device in devices {
            by_id.insert(device.id, Arc::downgrade(device));
            for entry in device.table().entries() {
                for view in entry.target.views() {
                    let (key, use_) = match view {
                        View::Linear { key, from } => (
                            key,
                            Use {
                                device: Arc::downgrade(device),
                                from: from.0,
                                len: entry.len.0,
                                at: entry.start.0,
                                span: entry.len.0,
                                map: Map::OneToOne,
                            },
                        ),
                        View::Striped {
                            key,
                            from,
                            stripe,
                            stripes,
                            chunk,
                        } => (
                            key,
                            Use {
                                device: Arc::downgrade(device),
                                from: from.0,
                                len: entry.len.0 / stripes,
                                at: entry.start.0,
                                span: entry.len.0,
                                map: Map::Striped {
                                    stripe,
                                    stripes,
                                    chunk,
                                },
                            },
                        ),
                        View::Within { key, from, len } => (
                            key,
                            Use {
                                device: Arc::downgrade(device),
                                from: from.0,
                                len: len.0,
                                at: entry.start.0,
                                span: entry.len.0,
                                map: Map::Anywhere,
                            },
                        ),
                    };
                    by_key.entry(key).or_default().sorted.push(use_);
                }
            }
        }
        by_key.values_mut().for_each(Uses::seal);
        Index { by_key, by_id }
    }
}

/// Pages to drop: `len` bytes from `offset` of a device's file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stale {
    pub device: u64,
    pub offset: u64,
    pub len: u64,
}

/// Work for the invalidator: drop these pages (and this `dev/` entry), then run `then` (send a
/// reply).
struct Job {
    stale: Vec<Stale>,
    entry: Option<EntryDrop>,
    then: Option<Box<dyn FnOnce() + Send>>,
}

/// A `dev/NAME` entry to drop, so that the kernel forgets the size it holds (`KernelSize`).
struct EntryDrop {
    name: String,
    device: Weak<Device>,
    why: SizeDrop,
}

impl Job {
    /// Pages to drop, and what to run after; no entry (only a resize drops one).
    fn pages(stale: Vec<Stale>, then: Option<Box<dyn FnOnce() + Send>>) -> Job {
        Job {
            stale,
            entry: None,
            then,
        }
    }
}

type DeviceList = Box<dyn Fn() -> Vec<Arc<Device>> + Send + Sync>;
type Forget = Box<dyn Fn(&str) -> std::io::Result<()> + Send>;
type Invalidate = Box<dyn Fn(&Stale) -> std::io::Result<()> + Send>;

/// One mount's page-cache coherence: the index of who shows what, and the invalidator thread
/// that drops pages. The mount's `Changes` report to it (it is their `ChangeSink`); the FUSE
/// adapter asks it to answer requests once the pages they made stale are gone.
pub struct Coherence {
    index: RwLock<Index>,
    /// A table went live or a device went away since the index was built: it is rebuilt when
    /// next needed (a mount creating thousands of devices builds it once, not per device).
    index_stale: AtomicBool,
    /// The mount's devices, for rebuilding the index.
    devices: DeviceList,
    /// Whether any device has been opened through the page cache: until then nothing can be
    /// stale and writes skip the bookkeeping.
    any_cached: AtomicBool,
    /// Set once the invalidator runs (`start`); until then changes are not followed.
    invalidator: OnceLock<Sender<Job>>,
    /// Jobs handed to the invalidator, and jobs it has finished: a request is answered at once
    /// when every job queued so far (its own page drops among them) is finished.
    queued: Arc<AtomicU64>,
    finished: Arc<AtomicU64>,
    /// Writes through `dev/NAME` in progress (device id, sectors): the kernel keeps that file's
    /// own pages of them true itself.
    own_writes: Mutex<Vec<(u64, u64, u64)>>,
}

/// The deepest stack a change is followed up (the stacking limit is 16).
const MAX_DEPTH: usize = 32;

impl Coherence {
    /// A mount's coherence; `devices` lists the mount's devices. It follows nothing until
    /// `start` (and in direct mode, where nothing is opened cached, never).
    pub fn new(devices: impl Fn() -> Vec<Arc<Device>> + Send + Sync + 'static) -> Coherence {
        Coherence {
            index: RwLock::new(Index::default()),
            index_stale: AtomicBool::new(true),
            devices: Box::new(devices),
            any_cached: AtomicBool::new(false),
            invalidator: OnceLock::new(),
            queued: Arc::default(),
            finished: Arc::default(),
            own_writes: Mutex::new(Vec::new()),
        }
    }

    /// Starts the invalidator, which drops pages through `drop` and `dev/` entries through
    /// `forget` (the FUSE notifier), once the mount is made.
    pub fn start(
        &self,
        drop: impl Fn(&Stale) -> std::io::Result<()> + Send + 'static,
        forget: impl Fn(&str) -> std::io::Result<()> + Send + 'static,
    ) {
        let (tx, rx) = channel::<Job>();
        if self.invalidator.set(tx).is_err() {
            log::error!("page cache coherence started twice");
            return;
        }
        let (drop, forget): (Invalidate, Forget) = (Box::new(drop), Box::new(forget));
        let finished = self.finished.clone();
        std::thread::Builder::new()
            .name("invalidator".into())
            .spawn(move || {
                for job in rx {
                    for s in coalesce(job.stale) {
                        if let Err(e) = drop(&s) {
                            // ENOENT: the kernel has no inode (nothing cached); anything else
                            // means the mount is going away.
                            log::debug!(
                                "invalidate device {} {}+{}: {e}",
                                s.device,
                                s.offset,
                                s.len
                            );
                        }
                    }
                    if let Some(entry) = job.entry {
                        if let Err(e) = forget(&entry.name) {
                            // ENOENT: the kernel has no such entry cached.
                            log::debug!("forget dev/{}: {e}", entry.name);
                        }
                        if let Some(device) = entry.device.upgrade() {
                            let open = device.open_count.load(Ordering::SeqCst) > 0;
                            device.kernel_size.dropped(entry.why, open);
                        }
                    }
                    finished.fetch_add(1, Ordering::SeqCst);
                    if let Some(then) = job.then {
                        then();
                    }
                }
            })
            .expect("spawn the invalidator thread");
    }

    /// Notes that `device` is being opened through the page cache.
    pub fn opened_cached(&self, device: &Device) {
        device.page_cached.store(true, Ordering::SeqCst);
        self.any_cached.store(true, Ordering::SeqCst);
    }

    /// The index, rebuilt first if tables changed. The check and the rebuild happen under
    /// the write lock, so no lookup after a change can see the index from before it.
    fn index(&self) -> parking_lot::RwLockReadGuard<'_, Index> {
        if self.index_stale.load(Ordering::SeqCst) {
            let mut index = self.index.write();
            if self.index_stale.swap(false, Ordering::SeqCst) {
                *index = Index::build(&(self.devices)());
            }
        }
        self.index.read()
    }

    /// Whether changes are followed now: the invalidator runs and something is cached.
    fn active(&self) -> bool {
        self.invalidator.get().is_some() && self.any_cached.load(Ordering::Relaxed)
    }

    /// `device` has a new size, or the kernel's size of it is wrong (`KernelSize`, `why`).
    /// With the writeback cache the kernel keeps the size it knows for as long as it keeps the
    /// inode (it owns the size then, and takes none from dmfs); so the `dev/NAME` entry is
    /// dropped, and with it the inode unless a file is open on it: the next lookup makes a
    /// fresh one with the device's size (if a file is open, again at its last close). Queued
    /// before the pages a resume drops, so the command that resized is answered after both.
    pub fn device_resized(&self, device: &Arc<Device>, why: SizeDrop) {
        if why == SizeDrop::Wrong && device.open_count.load(Ordering::SeqCst) > 0 {
            device.kernel_size.mark_wrong();
        }
        self.send(Job {
            stale: Vec::new(),
            entry: Some(EntryDrop {
                name: device.name(),
                device: Arc::downgrade(device),
                why,
            }),
            then: None,
        });
    }

    /// Sectors `start..end` of `device` changed: its own pages, then those of devices stacked
    /// on it.
    fn changed(&self, device: &Device, start: u64, end: u64, depth: usize, out: &mut Vec<Stale>) {
        if device.page_cached.load(Ordering::Relaxed)
            && !self.own_write_covers(device.id, start, end)
        {
            // A suspended device's reads are held and keep their pages locked until resume;
            // waiting for them would hold this write (and every write behind it) until then.
            // Its resume drops all its pages instead.
            if !device.is_suspended() {
                let size = device.size().0;
                let end = end.min(size);
                if start < end {
                    out.push(Stale {
                        device: device.id,
                        offset: start * 512,
                        len: (end - start) * 512,
                    });
                }
            }
        }
        let key = DeviceKey::Mapped { id: device.id };
        self.followers(key, start, end, depth, out);
    }

    /// The devices whose tables show sectors `start..end` of `key`, and what of them changed.
    fn followers(&self, key: DeviceKey, start: u64, end: u64, depth: usize, out: &mut Vec<Stale>) {
        if depth > MAX_DEPTH {
            return;
        }
        let mut hits = Vec::new();
        if let Some(uses) = self.index().by_key.get(&key) {
            uses.overlapping(start, end, |u| {
                if let Some(device) = u.device.upgrade() {
                    u.shows(start, end, |at, len| {
                        hits.push((device.clone(), at, at + len))
                    });
                }
            });
        }
        for (device, s, e) in hits {
            self.changed(&device, s, e, depth + 1, out);
        }
    }

    /// Hands what went stale to the invalidator.
    fn report(&self, stale: Vec<Stale>) {
        if !stale.is_empty() {
            self.send(Job::pages(stale, None));
        }
    }

    fn send(&self, job: Job) {
        let unsent = match self.invalidator.get() {
            Some(tx) => {
                self.queued.fetch_add(1, Ordering::SeqCst);
                tx.send(job).err().map(|e| e.0)
            }
            None => Some(job),
        };
        // No invalidator (not started, or gone): nothing is cached yet, answer anyway.
        if let Some(then) = unsent.and_then(|job| job.then) {
            then();
        }
    }

    /// Sends a request's `reply` once the pages it made stale are gone: at once when every
    /// job queued so far is finished (a request queues its drops as it makes them, before it
    /// asks to reply), else behind the jobs queued so far. So too an `fsync` or a close after
    /// writeback writes (answered before their aliases' pages were dropped): it returns only
    /// when every other device shows what they wrote.
    pub fn reply_when_dropped(&self, reply: impl FnOnce() + Send + 'static) {
        let queued = self.queued.load(Ordering::SeqCst);
        if self.finished.load(Ordering::SeqCst) >= queued {
            reply()
        } else {
            self.send(Job::pages(Vec::new(), Some(Box::new(reply))))
        }
    }

    fn own_write_covers(&self, device: u64, start: u64, end: u64) -> bool {
        self.own_writes
            .lock()
            .iter()
            .any(|&(d, s, e)| d == device && s <= start && end <= e)
    }
}

impl ChangeSink for Coherence {
    fn backing_written(&self, key: DeviceKey, start: Sectors, len: Sectors) {
        if self.active() {
            let mut stale = Vec::new();
            self.followers(key, start.0, start.0 + len.0, 0, &mut stale);
            self.report(stale);
        }
    }

    fn device_written(&self, id: u64, start: Sectors, len: Sectors) {
        if self.active() {
            let device = self.index().by_id.get(&id).and_then(Weak::upgrade);
            if let Some(device) = device {
                let mut stale = Vec::new();
                self.changed(&device, start.0, start.0 + len.0, 0, &mut stale);
                self.report(stale);
            }
        }
    }

    fn device_resized(&self, id: u64) {
        let device = self.index().by_id.get(&id).and_then(Weak::upgrade);
        if let Some(device) = device {
            Coherence::device_resized(self, &device, SizeDrop::Wrong);
        }
    }

    fn tables_changed(&self) {
        self.index_stale.store(true, Ordering::SeqCst);
    }

    fn own_write(&self, id: u64, start: Sectors, end: Sectors, work: &mut dyn FnMut()) {
        if !self.active() {
            return work();
        }
        let own = (id, start.0, end.0);
        self.own_writes.lock().push(own);
        work();
        let mut writes = self.own_writes.lock();
        if let Some(at) = writes.iter().position(|&w| w == own) {
            writes.swap_remove(at);
        }
    }
}

/// Sorts and merges overlapping ranges of the same device: one notification each.
fn coalesce(mut stale: Vec<Stale>) -> Vec<Stale> {
    stale.sort_by_key(|s| (s.device, s.offset));
    let mut out: Vec<Stale> = Vec::with_capacity(stale.len());
    for s in stale {
        match out.last_mut() {
            Some(last) if last.device == s.device && s.offset <= last.offset + last.len => {
                let end = (last.offset + last.len).max(s.offset + s.len);
                last.len = end - last.offset;
            }
            _ => out.push(s),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoFiles;
    impl crate::backing::DeviceResolver for NoFiles {
        fn open(&self, _: &str) -> crate::error::DmResult<Arc<crate::backing::Backing>> {
            Err(crate::error::DmError::invalid("no files here"))
        }
    }

    fn zero_device() -> Arc<Device> {
        let mut b = crate::table::TableBuilder::new();
        b.add_line("0 100 zero", &NoFiles, &Arc::default()).unwrap();
        Arc::new(Device::new(
            1,
            "d".into(),
            b.table().unwrap(),
            crate::changes::Changes::none(),
        ))
    }

    #[test]
    fn coalescing_merges_overlaps_per_device() {
        let s = |device, offset, len| Stale {
            device,
            offset,
            len,
        };
        assert_eq!(
            coalesce(vec![
                s(2, 0, 512),
                s(1, 1024, 512),
                s(1, 0, 1024),
                s(1, 4096, 512)
            ]),
            vec![s(1, 0, 1536), s(1, 4096, 512), s(2, 0, 512)]
        );
    }

    fn shown(u: &Use, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        u.shows(start, end, |at, len| out.push((at, len)));
        out
    }

    #[test]
    fn a_use_maps_back_one_to_one_striped_or_whole() {
        let device = zero_device();
        let lin = Use {
            device: Arc::downgrade(&device),
            from: 100,
            len: 50,
            at: 10,
            span: 50,
            map: Map::OneToOne,
        };
        assert_eq!(shown(&lin, 0, 100), vec![]);
        assert_eq!(shown(&lin, 120, 130), vec![(30, 10)]);
        assert_eq!(shown(&lin, 140, 400), vec![(50, 10)]);
        let within = Use {
            map: Map::Anywhere,
            ..lin
        };
        assert_eq!(shown(&within, 120, 121), vec![(10, 50)]);
        // Stripe 1 of 2, chunks of 8, from device sector 100, in a line at sector 1000 of
        // 2 * 64 sectors: stripe sectors 0..8 are target 8..16, 8..16 are 24..32, ...
        let striped = Use {
            device: Arc::downgrade(&device),
            from: 100,
            len: 64,
            at: 1000,
            span: 128,
            map: Map::Striped {
                stripe: 1,
                stripes: 2,
                chunk: 8,
            },
        };
        assert_eq!(shown(&striped, 102, 104), vec![(1010, 2)]);
        assert_eq!(
            shown(&striped, 106, 118),
            vec![(1014, 2), (1024, 8), (1040, 2)]
        );
        assert_eq!(shown(&striped, 0, 100), vec![]);
        assert_eq!(shown(&striped, 160, 170), vec![(1000 + 7 * 16 + 8 + 4, 4)]);
    }

    #[test]
    fn overlapping_visits_only_candidates() {
        let device = zero_device();
        let mut uses = Uses::default();
        for i in 0..1000u64 {
            uses.sorted.push(Use {
                device: Arc::downgrade(&device),
                from: i * 8,
                len: 8,
                at: i * 8,
                span: 8,
                map: Map::OneToOne,
            });
        }
        uses.seal();
        let mut seen = Vec::new();
        uses.overlapping(20, 30, |u| seen.push(u.from));
        seen.sort();
        assert_eq!(seen, vec![16, 24]);
    }

    /// Two mounts in one process each have their own coherence: a change in one drops pages
    /// through its own invalidator only (one process-wide hub could start only once).
    #[test]
    fn two_mounts_keep_their_own_invalidators() {
        use std::sync::Mutex;
        use std::sync::mpsc::sync_channel;
        let mount = |device: Arc<Device>| {
            let dropped = Arc::new(Mutex::new(Vec::new()));
            let coherence = Coherence::new(move || vec![device.clone()]);
            let seen = dropped.clone();
            coherence.start(
                move |s| {
                    seen.lock().unwrap().push(*s);
                    Ok(())
                },
                |_| Ok(()),
            );
            (coherence, dropped)
        };
        let (d1, d2) = (zero_device(), zero_device());
        let ((a, dropped_a), (b, dropped_b)) = (mount(d1.clone()), mount(d2.clone()));
        a.opened_cached(&d1);
        b.opened_cached(&d2);
        a.device_written(d1.id, Sectors(2), Sectors(3));
        for c in [&a, &b] {
            let (tx, rx) = sync_channel(1);
            c.reply_when_dropped(move || tx.send(()).unwrap());
            rx.recv().unwrap();
        }
        let expect = Stale {
            device: d1.id,
            offset: 1024,
            len: 1536,
        };
        assert_eq!(*dropped_a.lock().unwrap(), vec![expect]);
        assert!(dropped_b.lock().unwrap().is_empty());
    }
}
