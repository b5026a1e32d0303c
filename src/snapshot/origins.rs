//! Which snapshots exist for which origin, and which COW devices are in use: the kernel's
//! `_origins` hash. A write through a `snapshot-origin` target finds here every snapshot that
//! must save the old data first; a new snapshot table finds here a live snapshot on the same
//! COW device to take over.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, LazyLock, Weak};

use parking_lot::Mutex;

use super::Snap;
use crate::backing::{Backing, DeviceKey};
use crate::units::{SECTOR_SIZE, Sectors};

#[derive(Default)]
struct Snapshots {
    by_origin: HashMap<DeviceKey, Vec<Weak<Snap>>>,
    by_cow: HashMap<DeviceKey, Weak<Snap>>,
}

static SNAPSHOTS: LazyLock<Mutex<Snapshots>> = LazyLock::new(Mutex::default);

pub fn register(snap: &Arc<Snap>) {
    let mut s = SNAPSHOTS.lock();
    s.by_origin
        .entry(snap.origin.key())
        .or_default()
        .push(Arc::downgrade(snap));
    s.by_cow.insert(snap.cow.key(), Arc::downgrade(snap));
}

/// Forgets snapshots that no table holds any more (called as one goes).
pub fn unregister() {
    let mut s = SNAPSHOTS.lock();
    s.by_origin.retain(|_, list| {
        list.retain(|w| w.strong_count() > 0);
        !list.is_empty()
    });
    s.by_cow.retain(|_, w| w.strong_count() > 0);
}

/// The live snapshot whose COW device is `cow`, if any.
pub fn find_by_cow(cow: DeviceKey) -> Option<Arc<Snap>> {
    SNAPSHOTS.lock().by_cow.get(&cow).and_then(Weak::upgrade)
}

/// The snapshots of `origin`, in id order (the order their chunks are locked in).
pub fn snapshots_of(origin: DeviceKey) -> Vec<Arc<Snap>> {
    let mut out: Vec<Arc<Snap>> = SNAPSHOTS
        .lock()
        .by_origin
        .get(&origin)
        .map(|list| list.iter().filter_map(Weak::upgrade).collect())
        .unwrap_or_default();
    out.sort_by_key(|s| s.id);
    out
}

/// A write to an origin: every snapshot of it saves the chunks the write touches first, and
/// holds them until the write has landed.
pub fn origin_write(origin: &Backing, sector: u64, data: &[u8]) -> io::Result<()> {
    let snaps = snapshots_of(origin.key());
    if snaps.is_empty() {
        return origin.write_at(Sectors(sector), data);
    }
    let end = sector + data.len() as u64 / SECTOR_SIZE;
    let held: Vec<_> = snaps
        .iter()
        .filter_map(|s| s.copy_out(sector, end))
        .collect();
    let r = origin.write_at(Sectors(sector), data);
    drop(held);
    r
}
