//! Which snapshots exist for which origin, and which COW devices are in use: the kernel's
//! `_origins` hash. A write through a `snapshot-origin` target finds here every snapshot that
//! must save the old data first; a new snapshot table finds here a live snapshot on the same
//! COW device to take over.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, LazyLock, Weak};

use parking_lot::Mutex;

use super::Snapshot;
use crate::backing::{Backing, DeviceKey};
use crate::units::{SECTOR_SIZE, Sectors};

#[derive(Default)]
struct Snapshots {
    /// Each origin's snapshots in id order (the order their chunks are locked in). A list is
    /// replaced, never changed in place, so an origin write takes it by cloning the `Arc`:
    /// no allocation per write.
    by_origin: HashMap<DeviceKey, Arc<[Weak<Snapshot>]>>,
    by_cow: HashMap<DeviceKey, Weak<Snapshot>>,
}

static SNAPSHOTS: LazyLock<Mutex<Snapshots>> = LazyLock::new(Mutex::default);

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

pub fn register(snap: &Arc<Snapshot>) {
    let mut s = SNAPSHOTS.lock();
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
pub fn unregister() {
    let mut s = SNAPSHOTS.lock();
    s.by_origin.retain(|_, list| {
        if list.iter().any(|w| w.strong_count() == 0) {
            *list = weak_list(&sorted_live(list, None));
        }
        !list.is_empty()
    });
    s.by_cow.retain(|_, w| w.strong_count() > 0);
}

/// The live snapshot whose COW device is `cow`, if any.
pub fn find_by_cow(cow: DeviceKey) -> Option<Arc<Snapshot>> {
    SNAPSHOTS.lock().by_cow.get(&cow).and_then(Weak::upgrade)
}

fn list_of(origin: DeviceKey) -> Option<Arc<[Weak<Snapshot>]>> {
    SNAPSHOTS.lock().by_origin.get(&origin).cloned()
}

/// The snapshots of `origin`, in id order (the order their chunks are locked in).
pub fn snapshots_of(origin: DeviceKey) -> Vec<Arc<Snapshot>> {
    list_of(origin)
        .map(|list| sorted_live(&list, None))
        .unwrap_or_default()
}

/// A write to an origin: every snapshot of it saves the chunks the write touches first, and
/// holds them until the write has landed.
pub fn origin_write(origin: &Backing, sector: u64, data: &[u8]) -> io::Result<()> {
    let end = sector + data.len() as u64 / SECTOR_SIZE;
    match list_of(origin.key()) {
        Some(list) => write_holding(&list, origin, sector, end, data),
        None => origin.write_at(Sectors(sector), data),
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
