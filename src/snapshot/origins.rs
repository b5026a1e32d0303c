//! Which snapshots exist for which origin, and which COW devices are in use: the kernel's
//! `_origins` hash. A write through a `snapshot-origin` target finds here every snapshot that
//! must save the old data first; a new snapshot table finds here a live snapshot on the same
//! COW device to take over.
//!
//! The kernel has one such hash; dmfs has one per mount (`Registry` owns it and hands it to
//! target constructors), so two mounts in one process share no snapshots, as two dmfs
//! processes share none. Snapshots and the targets of one mount reach it through what they
//! hold.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::Snapshot;
use crate::backing::Backing;
use crate::device_key::DeviceKey;
use crate::units::{SECTOR_SIZE, Sectors};

#[derive(Default)]
struct Snapshots {
    /// Each origin's snapshots in id order (the order their chunks are locked in). A list is
    /// replaced, never changed in place, so an origin write takes it by cloning the `Arc`:
    /// no allocation per write.
    by_origin: HashMap<DeviceKey, Arc<[Weak<Snapshot>]>>,
    by_cow: HashMap<DeviceKey, Weak<Snapshot>>,
}

/// One mount's snapshots, by origin and by COW device.
pub struct Origins {
    snapshots: Mutex<Snapshots>,
    /// Ids of this mount's snapshots and snapshot target instances: never reused, never 0.
    next_id: AtomicU64,
}

impl Default for Origins {
    fn default() -> Origins {
        Origins {
            snapshots: Mutex::default(),
            next_id: AtomicU64::new(1),
        }
    }
}

/// The live snapshots of `list` and `extra`, in id order.
fn sorted_live(list: &[Weak<Snapshot>], extra: Option<&Arc<Snapshot>>) -> Vec<Arc<Snapshot>> {
    let mut live: Vec<Arc<Snapshot>> = list.iter().filter_map(Weak::upgrade).collect();
    live.extend(extra.cloned());
    live.sort_by_key(|s| s.id);
    live
}

fn weak_list(live: &[Arc<Snapshot>]) -> Arc<[Weak<Snapshot>]> {
    live.iter().map(Arc::downgrade).collect()
}

impl Origins {
    /// A fresh id: orders lock taking across snapshots, and tells target instances apart.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::SeqCst)
    }

    pub(super) fn register(&self, snap: &Arc<Snapshot>) {
        let mut s = self.snapshots.lock();
        let key = snap.origin.key();
        let old = s
            .by_origin
            .get(&key)
            .cloned()
            .unwrap_or_else(|| Arc::new([]));
        let list = weak_list(&sorted_live(&old, Some(snap)));
        s.by_origin.insert(key, list);
        s.by_cow.insert(snap.cow.key(), Arc::downgrade(snap));
    }

    /// Forgets snapshots that no table holds any more (called as one goes).
    pub(super) fn unregister(&self) {
        let mut s = self.snapshots.lock();
        s.by_origin.retain(|_, list| {
            if list.iter().any(|w| w.strong_count() == 0) {
                *list = weak_list(&sorted_live(list, None));
            }
            !list.is_empty()
        });
        s.by_cow.retain(|_, w| w.strong_count() > 0);
    }

    /// The live snapshot whose COW device is `cow`, if any.
    pub fn find_by_cow(&self, cow: DeviceKey) -> Option<Arc<Snapshot>> {
        self.snapshots
            .lock()
            .by_cow
            .get(&cow)
            .and_then(Weak::upgrade)
    }

    fn list_of(&self, origin: DeviceKey) -> Option<Arc<[Weak<Snapshot>]>> {
        self.snapshots.lock().by_origin.get(&origin).cloned()
    }

    /// The snapshots of `origin`, in id order (the order their chunks are locked in).
    pub fn snapshots_of(&self, origin: DeviceKey) -> Vec<Arc<Snapshot>> {
        self.list_of(origin)
            .map(|list| sorted_live(&list, None))
            .unwrap_or_default()
    }

    /// A write to an origin: every snapshot of it saves the chunks the write touches first,
    /// and holds them until the write has landed.
    pub fn origin_write(&self, origin: &Backing, sector: u64, data: &[u8]) -> io::Result<()> {
        let end = sector + data.len() as u64 / SECTOR_SIZE;
        match self.list_of(origin.key()) {
            Some(list) => write_holding(&list, origin, sector, end, data),
            None => origin.write_at(Sectors(sector), data),
        }
    }
}

/// Saves the chunks in `[sector, end)` for the first snapshot of `snaps` and holds them while
/// the rest do the same; the write lands once every snapshot holds its chunks. The guards
/// live in this recursion's frames rather than in a Vec: nothing is allocated.
fn write_holding(
    snaps: &[Weak<Snapshot>],
    origin: &Backing,
    sector: u64,
    end: u64,
    data: &[u8],
) -> io::Result<()> {
    let Some((first, rest)) = snaps.split_first() else {
        return origin.write_at(Sectors(sector), data);
    };
    let snap = first.upgrade();
    let _held = snap.as_ref().and_then(|s| s.copy_out(sector, end));
    write_holding(rest, origin, sector, end, data)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use crate::access::Caller;
    use crate::device::Device;
    use crate::registry::Registry;
    use crate::table::TableBuilder;
    use crate::units::Bytes;

    /// A scratch directory of small image files, removed on drop (after the registries whose
    /// devices hold them open, declared after it).
    struct Dir(PathBuf);

    impl Dir {
        fn new(files: &[&str]) -> Dir {
            let dir = std::env::temp_dir().join(format!("dmfs-origins-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).unwrap();
            for f in files {
                std::fs::File::create(dir.join(f))
                    .unwrap()
                    .set_len(1 << 20)
                    .unwrap();
            }
            Dir(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Creates device `name` of `registry` with the one-line table `line`, as a write into
    /// its mount's `ctl/create/NAME` does: through the mount's resolver and snapshots.
    fn create(registry: &Registry, dir: &Path, name: &str, line: &str) -> Arc<Device> {
        registry.reserve(name).unwrap();
        let caller = Caller::daemon();
        let table = registry.with_resolver(Some(dir.to_path_buf()), true, &caller, |r| {
            let mut b = TableBuilder::new();
            b.add_line(line, r, registry.origins()).unwrap();
            b.table().unwrap()
        });
        registry.create(name, table, false, caller.uid).unwrap()
    }

    /// Two mounts in one process keep their snapshots apart, as two dmfs processes do: a
    /// write through one mount's origin device copies out to that mount's snapshots only.
    #[test]
    fn two_mounts_share_no_snapshots() {
        let dir = Dir::new(&["origin.img", "cow-a.img", "cow-b.img"]);
        let a = Registry::new(PathBuf::from("/nonexistent-a"));
        let b = Registry::new(PathBuf::from("/nonexistent-b"));
        let origin_a = create(&a, &dir.0, "origin", "0 2048 snapshot-origin origin.img");
        let snap_a = create(
            &a,
            &dir.0,
            "snap",
            "0 2048 snapshot origin.img cow-a.img P 8",
        );
        let origin_b = create(&b, &dir.0, "origin", "0 2048 snapshot-origin origin.img");
        let snap_b = create(
            &b,
            &dir.0,
            "snap",
            "0 2048 snapshot origin.img cow-b.img P 8",
        );
        let key = origin_a.table().devices()[0].key();
        assert_eq!(a.origins().snapshots_of(key).len(), 1);
        assert_eq!(b.origins().snapshots_of(key).len(), 1);
        // A fresh persistent store: the header and the first metadata area, 8 sectors each.
        let fresh = "0 2048 snapshot 16/2048 16\n";
        assert_eq!(a.status_text(&snap_a), fresh);
        // A write through mount B's origin: B's snapshot saves the chunk, A's sees nothing.
        origin_b.write(Bytes(0), &[7u8; 4096]).unwrap();
        let one_saved = "0 2048 snapshot 24/2048 16\n";
        assert_eq!(b.status_text(&snap_b), one_saved);
        assert_eq!(a.status_text(&snap_a), fresh);
        // And the other way round, on another chunk.
        origin_a.write(Bytes(1 << 16), &[9u8; 4096]).unwrap();
        assert_eq!(a.status_text(&snap_a), one_saved);
        assert_eq!(b.status_text(&snap_b), one_saved);
    }
}
