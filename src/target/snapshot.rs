//! `snapshot <origin> <COW device> <P|PO|N> <chunk size> [<#features> <feature>...]` and
//! `snapshot-merge` with the same arguments (the kernel's dm-snap.c `snapshot_ctr`): a view of
//! the origin as it was when the snapshot was taken, or, for snapshot-merge, that view while
//! the COW device is merged back into the origin in the background.
//!
//! Device sectors map onto origin sectors one to one, counted from the start of the device
//! (not of the line), as in the kernel.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use super::View;
use super::{Area, Ctor, Target, TargetType, check_area, parse_uint_arg, read_arg_group};
use crate::backing::Backing;
use crate::device_link::DeviceLink;
use crate::error::{DmError, DmResult};
use crate::snapshot::exception_store::check_chunk_size;
use crate::snapshot::merge::Merge;
use crate::snapshot::{Origins, Snapshot, StoreType};
use crate::units::Sectors;

pub const SNAPSHOT: TargetType = TargetType {
    name: "snapshot",
    version: [1, 16, 0],
    construct: construct_snapshot,
};

pub const MERGE: TargetType = TargetType {
    name: "snapshot-merge",
    version: [1, 5, 0],
    construct: construct_merge,
};

/// One `snapshot` or `snapshot-merge` table line (the kernel's `dm_target` whose private
/// data is the `dm_snapshot`): a view onto the `Snapshot` of its COW device, which a newer
/// table may take over.
struct SnapshotTarget {
    /// This instance: the snapshot's I/O is served by the newest instance to go live.
    id: u64,
    merge: bool,
    snap: Arc<Snapshot>,
    begin: Sectors,
    origin: Arc<Backing>,
    cow: Arc<Backing>,
    /// `PO`: a full COW device refuses snapshot writes instead of invalidating the snapshot.
    overflow_ok: bool,
    discard_zeroes_cow: bool,
    discard_passdown_origin: bool,
    merging: Mutex<Option<Merge>>,
    /// Whether this instance has gone live: an instance that went live and has since handed
    /// the snapshot over to a newer table stays a source, resumed again or not.
    went_live: AtomicBool,
}

fn construct_snapshot(ctor: &Ctor<'_>, args: &[String]) -> DmResult<Box<dyn Target>> {
    construct(ctor, args, false)
}

fn construct_merge(ctor: &Ctor<'_>, args: &[String]) -> DmResult<Box<dyn Target>> {
    construct(ctor, args, true)
}

/// The kernel's `dm_read_arg_group` for `sscanf("%u%c")`: the count must be a number in
/// 0..=2 with that many arguments after it.
fn parse_features(args: &[String]) -> DmResult<(bool, bool)> {
    if args.is_empty() {
        return Ok((false, false));
    }
    let n = read_arg_group(args, 2, "Invalid number of feature arguments")?;
    let rest = &args[1..];
    let (mut zeroes, mut passdown) = (false, false);
    for arg in &rest[..n as usize] {
        if arg.eq_ignore_ascii_case("discard_zeroes_cow") {
            zeroes = true;
        } else if arg.eq_ignore_ascii_case("discard_passdown_origin") {
            passdown = true;
        } else {
            return Err(DmError::invalid("Unrecognised feature requested"));
        }
    }
    if passdown && !zeroes {
        return Err(DmError::invalid(
            "discard_passdown_origin feature depends on discard_zeroes_cow",
        ));
    }
    Ok((zeroes, passdown))
}

/// The exception store arguments, checked in the kernel's order; every failure is reported
/// as the kernel reports it, "Couldn't create exception store", with the reason after it.
fn parse_store(ty: &str, chunk: &str, block_sizes: &[u32]) -> DmResult<(StoreType, u32, bool)> {
    let fail = |why: String| DmError::invalid(format!("Couldn't create exception store: {why}"));
    let store_type = match ty.bytes().next().map(|b| b.to_ascii_uppercase()) {
        Some(b'P') => StoreType::Persistent,
        Some(b'N') => StoreType::Transient,
        _ => return Err(fail("Exception store type is not P or N".into())),
    };
    let chunk = parse_uint_arg(chunk).ok_or_else(|| fail("Invalid chunk size".into()))?;
    if chunk != 0 {
        check_chunk_size(chunk, block_sizes).map_err(|e| fail(e.into()))?;
    }
    // Only the persistent store takes options; the transient one ignores them.
    let options = &ty[1..];
    let overflow_ok = match store_type {
        StoreType::Persistent if !options.is_empty() => {
            if options.as_bytes()[0].eq_ignore_ascii_case(&b'O') {
                true
            } else {
                return Err(fail(format!(
                    "Unsupported persistent store option: {options}"
                )));
            }
        }
        _ => false,
    };
    Ok((store_type, chunk, overflow_ok))
}

fn construct(ctor: &Ctor<'_>, args: &[String], merge: bool) -> DmResult<Box<dyn Target>> {
    if args.len() < 4 {
        return Err(DmError::invalid("requires 4 or more arguments"));
    }
    let (discard_zeroes_cow, discard_passdown_origin) = parse_features(&args[4..])?;
    // The kernel opens the COW device with the table's mode and a merging origin for writing,
    // but the exception store's own I/O (header, copy-outs, metadata, merge) is never refused
    // for a read-only table: a read-only snapshot still saves what origin writes overwrite.
    let origin = if merge {
        ctor.resolver.open_for_target_writes(&args[0])
    } else {
        ctor.resolver.open(&args[0])
    }
    .map_err(|e| e.context("Cannot get origin device"))?;
    let cow = ctor
        .resolver
        .open_for_target_writes(&args[1])
        .map_err(|e| e.context("Cannot get COW device"))?;
    if cow.same_device(&origin) {
        return Err(DmError::invalid(
            "COW device cannot be the same as origin device",
        ));
    }
    let block_sizes = [cow.logical_block_size(), origin.logical_block_size()];
    let (store_type, chunk, overflow_ok) = parse_store(&args[2], &args[3], &block_sizes)?;
    // The kernel checks the origin's extent once the table is complete, after the store has
    // been set up; checking first leaves a fresh COW device untouched by a refused table.
    check_area(&origin, Sectors(0), ctor.len)?;
    let snap = match ctor.origins.find_by_cow(cow.key()) {
        Some(live) => take_over(ctor.origins, live, &origin, merge)?,
        None => {
            if merge && store_type == StoreType::Transient {
                return Err(DmError::invalid(
                    "Snapshot exception store does not support snapshot-merge.",
                ));
            }
            Snapshot::open(ctor.origins, origin.clone(), cow.clone(), store_type, chunk)?
        }
    };
    snap.targets.fetch_add(1, Ordering::SeqCst);
    let id = ctor.origins.next_id();
    // A snapshot nobody serves yet is this instance's; a live one stays with its current
    // instance until this one goes live (the kernel's handover at resume).
    let _ = snap
        .owner
        .compare_exchange(0, id, Ordering::SeqCst, Ordering::SeqCst);
    Ok(Box::new(SnapshotTarget {
        id,
        merge,
        snap,
        begin: ctor.start,
        origin,
        cow,
        overflow_ok,
        discard_zeroes_cow,
        discard_passdown_origin,
        merging: Mutex::new(None),
        went_live: AtomicBool::new(false),
    }))
}

/// A table naming a COW device that a live snapshot uses takes that snapshot over (the
/// kernel's exception handover), under the kernel's conditions.
fn take_over(
    origins: &Origins,
    live: Arc<Snapshot>,
    origin: &Backing,
    merge: bool,
) -> DmResult<Arc<Snapshot>> {
    if !live.origin.same_device(origin) {
        return Err(DmError::busy(format!(
            "COW device {} is in use by a snapshot of another origin ({})",
            live.cow.name(),
            live.origin.name()
        )));
    }
    if live.targets.load(Ordering::SeqCst) >= 2 || !live.is_active() {
        return Err(DmError::invalid(
            "Snapshot cow pairing for exception table handover failed",
        ));
    }
    if merge {
        let merging = origins
            .snapshots_of(origin.key())
            .iter()
            .any(|s| s.is_merging());
        if merging {
            return Err(DmError::invalid("A snapshot is already merging."));
        }
        if live.store_type() == StoreType::Transient {
            return Err(DmError::invalid(
                "Snapshot exception store does not support snapshot-merge.",
            ));
        }
    }
    Ok(live)
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

impl SnapshotTarget {
    /// Whether this instance serves the snapshot (an instance that handed it over to a newer
    /// table answers like an invalid snapshot, as in the kernel).
    fn serving(&self) -> bool {
        self.snap.owner.load(Ordering::SeqCst) == self.id
    }
}

impl Target for SnapshotTarget {
    fn read(&self, offset: Sectors, buf: &mut [u8]) -> io::Result<()> {
        if !self.serving() {
            return Err(eio());
        }
        let sector = (self.begin + offset).0;
        if self.merge {
            self.snap.merging_read(sector, buf)
        } else {
            self.snap.read(sector, buf)
        }
    }

    fn write(&self, offset: Sectors, buf: &[u8]) -> io::Result<()> {
        if !self.serving() {
            return Err(eio());
        }
        let sector = (self.begin + offset).0;
        if self.merge {
            self.snap.merging_write(sector, buf)
        } else {
            self.snap.write(sector, buf, self.overflow_ok)
        }
    }

    fn table_args(&self) -> String {
        let store = match (self.snap.store_type(), self.overflow_ok) {
            (StoreType::Transient, _) => "N",
            (StoreType::Persistent, false) => "P",
            (StoreType::Persistent, true) => "PO",
        };
        let mut out = format!(
            "{} {} {} {}",
            self.origin.name(),
            self.cow.name(),
            store,
            self.snap.chunk_size()
        );
        let features: Vec<&str> = [
            (self.discard_zeroes_cow, "discard_zeroes_cow"),
            (self.discard_passdown_origin, "discard_passdown_origin"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect();
        if !features.is_empty() {
            out.push_str(&format!(" {} {}", features.len(), features.join(" ")));
        }
        out
    }

    fn status(&self) -> String {
        if !self.serving() {
            return "Invalid".into();
        }
        self.snap.status()
    }

    fn devices(&self) -> Vec<Arc<Backing>> {
        vec![self.origin.clone(), self.cow.clone()]
    }

    fn areas(&self, len: Sectors) -> Vec<Area<'_>> {
        vec![
            Area::new(&self.origin, Sectors(0), len),
            Area::new(&self.cow, Sectors(0), self.cow.size()),
        ]
    }

    /// A chunk without an exception shows the origin's; the COW device changes only by this
    /// target's own writes (copy-outs keep what the snapshot shows).
    fn views(&self) -> Vec<View> {
        vec![View::Linear {
            key: self.origin.key(),
            from: Sectors(0),
        }]
    }

    /// The kernel's snapshot_preresume: a table taking a live snapshot over (the exception
    /// handover) goes live only once the device serving that snapshot is suspended.
    fn preresume(&self, link: &DeviceLink) -> DmResult<()> {
        let handover =
            !self.went_live.load(Ordering::SeqCst) && !self.serving() && self.snap.is_active();
        if handover && !self.snap.server_suspended_or(link) {
            return Err(DmError::invalid(
                "Unable to perform snapshot handover until source is suspended.",
            ));
        }
        Ok(())
    }

    fn resume(&self, device_size: Sectors, link: &DeviceLink) {
        // A source whose snapshot was handed over (a snapshot device resumed after a
        // snapshot-merge took its COW) stays invalid: the kernel's snapshot_resume finds no
        // inactive destination and hands nothing back.
        if self.went_live.swap(true, Ordering::SeqCst) && !self.serving() {
            return;
        }
        self.snap.activate(self.id, device_size, self.merge, link);
        if self.merge {
            let mut merging = self.merging.lock();
            if !merging.as_ref().is_some_and(Merge::is_running) {
                *merging = Some(Merge::start(self.snap.clone()));
            }
        }
    }

    fn suspend(&self) {
        // Stops the merge after its current step; resume starts it again.
        drop(self.merging.lock().take());
    }
}

impl Drop for SnapshotTarget {
    fn drop(&mut self) {
        drop(self.merging.lock().take());
        if self.merge && self.serving() {
            self.snap.stop_merging();
        }
        self.snap.targets.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::parse_features;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn feature_counts_are_read_as_the_kernels_dm_read_arg_group() {
        assert_eq!(parse_features(&args(&[])).unwrap(), (false, false));
        assert_eq!(
            parse_features(&args(&["1", "discard_zeroes_cow"])).unwrap(),
            (true, false)
        );
        for bad in [
            &["+1", "discard_zeroes_cow"][..],
            &["3", "a", "b", "c"],
            &["2", "discard_zeroes_cow"],
            &["x"],
        ] {
            let e = parse_features(&args(bad)).unwrap_err();
            assert_eq!(e.reason, "Invalid number of feature arguments", "{bad:?}");
        }
    }
}
