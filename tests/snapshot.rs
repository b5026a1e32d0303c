//! Snapshots end to end, through a real mount: `snapshot-origin`, `snapshot` (P, PO, N) and
//! `snapshot-merge` tables written into ctl/, data written with dd and pwrite(2), and every
//! image compared against models the tests keep themselves. Expected `status` lines are
//! computed here from the kernel's exception store arithmetic (dm-snap-persistent.c,
//! dm-snap-transient.c), never read back from dmfs.

mod common;
use common::snapshot::*;
use common::*;

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// 1. The classic tables
// ---------------------------------------------------------------------------------------------

/// The dmsetup documentation's "Making snapshots": an origin file, a `snapshot-origin` device
/// over it and a snapshot (store `ty`, chunk 8) on a 4 MiB COW file; writes through the origin
/// device with dd; the snapshot keeps reading the original bytes, the origin device and the
/// origin file read the new ones, and `status` counts the exceptions as the kernel does.
fn classic(ty: &str, direct: bool) {
    const SECTORS: u64 = 8192;
    let m = Mount::new();
    write_pattern_image(&m.path("origin.img"), 0, SECTORS);
    zero_file(&m.path("cow.img"), 4 << 20);
    let saved = pattern_image(0, SECTORS);
    std::fs::write(m.path("saved.img"), &saved).unwrap();
    let (o, c) = (abs(&m, "origin.img"), abs(&m, "cow.img"));
    let store = store_of(ty);
    m.create("origin", &format!("0 {SECTORS} snapshot-origin {o}"));
    m.create("snap", &format!("0 {SECTORS} snapshot {o} {c} {ty} 8"));
    assert_eq!(
        m.read("dm/origin/table"),
        format!("0 {SECTORS} snapshot-origin {o}\n")
    );
    assert_eq!(
        m.read("dm/snap/table"),
        format!("0 {SECTORS} snapshot {o} {c} {ty} 8\n")
    );
    // dm_get_device adds each device at the head of the table's list: the COW device, opened
    // second, is listed first.
    assert_eq!(
        m.read("dm/snap/deps"),
        format!("2 dependencies\t: ({c}) ({o})\n")
    );
    assert_eq!(
        m.read("dm/origin/deps"),
        format!("1 dependencies\t: ({o})\n")
    );
    // The kernel's origin_status emits nothing; dmsetup prints the line with a blank after it.
    assert_eq!(m.status("origin"), format!("0 {SECTORS} snapshot-origin "));
    let none_yet = match store {
        Store::Persistent => "0 8192 snapshot 16/8192 16",
        Store::Transient => "0 8192 snapshot 0/8192 0",
    };
    assert_eq!(m.status("snap"), none_yet);
    if store == Store::Persistent {
        // The header went to disk at create: magic "SnAp", valid 1, version 1, chunk 8.
        let cow = std::fs::read(m.path("cow.img")).unwrap();
        assert_eq!(&cow[..16], b"SnAp\x01\0\0\0\x01\0\0\0\x08\0\0\0");
    }
    let end = SECTORS * 512;
    let writes: Vec<(u64, usize)> = if direct {
        vec![
            (0, 4096),
            (41984, 6144),
            (1 << 20, 65536),
            (0, 4096),
            (end - 512, 512),
        ]
    } else {
        vec![
            (0, 4096),
            (12345, 10000),
            (1 << 20, 65536),
            (100, 50),
            (end - 1, 1),
        ]
    };
    let mut model = saved.clone();
    let mut excepted = BTreeSet::new();
    for (i, &(off, len)) in writes.iter().enumerate() {
        let data = pseudo_random(100 + i as u64, len);
        m.dd_write_through("origin", off, &data, direct);
        model[off as usize..off as usize + len].copy_from_slice(&data);
        excepted.extend(chunks_of(off, len as u64, 8));
        let want = snap_status("snapshot", SECTORS, store, 8, 8192, excepted.len() as u64);
        assert_eq!(
            m.status("snap"),
            want,
            "after write {i} ({len} bytes at {off})"
        );
        if i == 0 {
            // The one kernel fact: a 4 KiB origin write, chunk 8, 4 MiB COW.
            let first = match store {
                Store::Persistent => "0 8192 snapshot 24/8192 16",
                Store::Transient => "0 8192 snapshot 8/8192 0",
            };
            assert_eq!(m.status("snap"), first);
        }
    }
    m.ok("cmp $MNT/dev/snap saved.img");
    if store == Store::Persistent {
        let cow = std::fs::read(m.path("cow.img")).unwrap();
        check_cow("cow.img", &cow, &saved, &excepted);
    }
    assert_same("dev/snap", &m.read_dev("snap").unwrap(), &saved);
    assert_same("dev/origin", &m.read_dev("origin").unwrap(), &model);
    assert_same(
        "origin.img",
        &std::fs::read(m.path("origin.img")).unwrap(),
        &model,
    );
}

#[test]
fn classic_persistent_snapshot() {
    classic("P", false);
}

#[test]
fn classic_persistent_snapshot_direct_io() {
    classic("P", true);
}

#[test]
fn classic_transient_snapshot() {
    classic("N", false);
}

#[test]
fn classic_transient_snapshot_direct_io() {
    classic("N", true);
}

#[test]
fn classic_persistent_overflow_snapshot() {
    classic("PO", false);
}

/// The lvm layout: `base-real` is a linear device over the disk, the origin and the snapshot
/// both name it (here as MNT/dev/base-real, a device of this mount), and origin writes go
/// through `base`, the snapshot-origin device.
/// A first write's copies go to the COW file past the page cache (O_DIRECT), as kcopyd writes
/// them to a COW device: after 1 MiB of first writes, `fincore` finds the metadata the store
/// read and wrote cached in cow.img, not the 1 MiB of copies. The snapshot still reads the old
/// data. (On tmpfs, whose files are page cache, there is nothing to see: only the data is
/// checked there.)
#[test]
fn first_write_copies_bypass_the_page_cache() {
    let m = Mount::new();
    let old = pseudo_random(41, 4 << 20);
    std::fs::write(m.path("o.img"), &old).unwrap();
    zero_file(&m.path("cow.img"), 8 << 20);
    let (o, c) = (abs(&m, "o.img"), abs(&m, "cow.img"));
    m.create("orig", &format!("0 8192 snapshot-origin {o}"));
    m.create("snap", &format!("0 8192 snapshot {o} {c} P 32"));
    m.dd_write_through("orig", 1 << 20, &pseudo_random(42, 1 << 20), true);
    assert_eq!(
        m.status("snap"),
        snap_status("snapshot", 8192, Store::Persistent, 32, 16384, 64)
    );
    let fs = m.ok("stat -f -c %T cow.img");
    if fs.trim() != "tmpfs" {
        let cached: u64 = m
            .ok("fincore --bytes --noheadings --output RES cow.img")
            .trim()
            .parse()
            .unwrap();
        // The header chunk and the first metadata area, 16 KiB each, and nothing of the
        // 1 MiB copied.
        assert!(
            cached <= 64 << 10,
            "cow.img has {cached} bytes cached on {fs}"
        );
    }
    assert_same(
        "snapshot after the first write",
        &m.read_dev("snap").unwrap(),
        &old,
    );
}

#[test]
fn lvm_style_stack_over_a_linear_device() {
    const SECTORS: u64 = 4096;
    let m = Mount::new();
    write_pattern_image(&m.path("disk.img"), 1, SECTORS + 100);
    zero_file(&m.path("cow.img"), 1 << 20);
    let disk = pattern_image(1, SECTORS + 100);
    let saved = disk[100 * 512..].to_vec();
    let real = format!("{}/dev/base-real", m.mnt.display());
    let c = abs(&m, "cow.img");
    m.create(
        "base-real",
        &format!("0 {SECTORS} linear {} 100", abs(&m, "disk.img")),
    );
    m.create("base", &format!("0 {SECTORS} snapshot-origin {real}"));
    m.create("snap", &format!("0 {SECTORS} snapshot {real} {c} P 16"));
    let mut model = saved.clone();
    let mut excepted = BTreeSet::new();
    for (i, &(off, len)) in [(0u64, 8192usize), (70000, 3000), (1 << 20, 200000)]
        .iter()
        .enumerate()
    {
        let data = pseudo_random(200 + i as u64, len);
        m.dd_write_through("base", off, &data, false);
        model[off as usize..off as usize + len].copy_from_slice(&data);
        excepted.extend(chunks_of(off, len as u64, 16));
    }
    assert_eq!(
        m.status("snap"),
        snap_status(
            "snapshot",
            SECTORS,
            Store::Persistent,
            16,
            2048,
            excepted.len() as u64
        )
    );
    assert_same("dev/snap", &m.read_dev("snap").unwrap(), &saved);
    assert_same("dev/base", &m.read_dev("base").unwrap(), &model);
    assert_same("dev/base-real", &m.read_dev("base-real").unwrap(), &model);
    let on_disk = std::fs::read(m.path("disk.img")).unwrap();
    assert_same(
        "disk.img before the device",
        &on_disk[..100 * 512],
        &disk[..100 * 512],
    );
    assert_same("disk.img under the device", &on_disk[100 * 512..], &model);
}

// ---------------------------------------------------------------------------------------------
// 2. A model of one origin and several writable snapshots
// ---------------------------------------------------------------------------------------------

struct View {
    name: String,
    file: File,
    data: Vec<u8>,
    store: Store,
    chunk: u64,
    cow_sectors: u64,
    excepted: BTreeSet<u64>,
}

impl View {
    fn expected_status(&self, len: u64) -> String {
        snap_status(
            "snapshot",
            len,
            self.store,
            self.chunk,
            self.cow_sectors,
            self.excepted.len() as u64,
        )
    }
}

/// One origin, three snapshots (chunks 8, 16 and 1; P, N and P), a fourth (PO, chunk 32) taken
/// half-way, and 200 seeded writes of random sizes and offsets, aligned and not, through the
/// origin device and every snapshot. Every few writes, every device is read whole and
/// compared with the model, the origin file too, and a linear device over the origin file (the
/// devices are opened FOPEN_DIRECT_IO, so it sees origin writes at once); every snapshot's
/// `status` must count exactly the chunks written through it or through the origin.
#[test]
fn model_of_an_origin_and_writable_snapshots() {
    const SECTORS: u64 = 2048;
    const SIZE: u64 = SECTORS * 512;
    let m = Mount::new();
    write_pattern_image(&m.path("origin.img"), 2, SECTORS);
    let o = abs(&m, "origin.img");
    m.create("origin", &format!("0 {SECTORS} snapshot-origin {o}"));
    m.create("lin", &format!("0 {SECTORS} linear {o} 0"));
    let mut origin = pattern_image(2, SECTORS);
    let origin_file = m.open_dev("origin");
    let lin = m.open_dev("lin");
    let mut snaps: Vec<View> = Vec::new();
    let add_snap = |snaps: &mut Vec<View>, origin: &[u8], name: &str, ty: &str, chunk: u64| {
        let cow = format!("{name}.cow");
        zero_file(&m.path(&cow), 2 << 20);
        m.create(
            name,
            &format!("0 {SECTORS} snapshot {o} {} {ty} {chunk}", abs(&m, &cow)),
        );
        snaps.push(View {
            name: name.to_string(),
            file: m.open_dev(name),
            data: origin.to_vec(),
            store: store_of(ty),
            chunk,
            cow_sectors: 4096,
            excepted: BTreeSet::new(),
        });
    };
    add_snap(&mut snaps, &origin, "s1", "P", 8);
    add_snap(&mut snaps, &origin, "s2", "N", 16);
    add_snap(&mut snaps, &origin, "s3", "P", 1);
    let check = |snaps: &[View], origin: &[u8], when: &str| {
        assert_same(
            &format!("{when}: dev/origin"),
            &read_at(&origin_file, SIZE as usize),
            origin,
        );
        assert_same(
            &format!("{when}: dev/lin"),
            &read_at(&lin, SIZE as usize),
            origin,
        );
        assert_same(
            &format!("{when}: origin.img"),
            &std::fs::read(m.path("origin.img")).unwrap(),
            origin,
        );
        for s in snaps {
            assert_same(
                &format!("{when}: dev/{}", s.name),
                &read_at(&s.file, SIZE as usize),
                &s.data,
            );
            assert_eq!(
                m.status(&s.name),
                s.expected_status(SECTORS),
                "{when}: status of {}",
                s.name
            );
        }
    };
    let mut rng = Rng::seeded(7);
    for op in 0..200u64 {
        if op == 100 {
            add_snap(&mut snaps, &origin, "s4", "PO", 32);
            check(&snaps, &origin, "after taking s4");
        }
        let mut len = match rng.below(3) {
            0 => 1 + rng.below(600),
            1 => 1 + rng.below(16384),
            _ => 1 + rng.below(98304),
        };
        let mut off = rng.below(SIZE);
        if rng.below(2) == 0 {
            off -= off % 512;
            len = len.div_ceil(512) * 512;
        }
        let len = len.min(SIZE - off);
        let data = pseudo_random(1000 + op, len as usize);
        let range = off as usize..(off + len) as usize;
        let count = snaps.len() as u64;
        let target = rng.below(2 * count);
        if target < count {
            // Through the origin device: every snapshot saves what it had not saved yet.
            origin_file.write_all_at(&data, off).unwrap();
            origin[range].copy_from_slice(&data);
            for s in &mut snaps {
                s.excepted.extend(chunks_of(off, len, s.chunk));
            }
        } else {
            let s = &mut snaps[(target - count) as usize];
            s.file.write_all_at(&data, off).unwrap_or_else(|e| {
                panic!("op {op}: write {len} bytes at {off} to {}: {e}", s.name)
            });
            s.data[range].copy_from_slice(&data);
            s.excepted.extend(chunks_of(off, len, s.chunk));
        }
        if op % 10 == 9 {
            check(&snaps, &origin, &format!("after op {op}"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Overflow
// ---------------------------------------------------------------------------------------------

/// A P snapshot and an N snapshot (chunk 8) on 32 KiB COW files, filled by 4 KiB writes to
/// distinct chunks of the origin: P holds 6 data chunks (chunk 0 is the header, chunk 1 the
/// metadata area), N holds 8. The write that finds no room invalidates the snapshot
/// (dm-snap.c `__origin_write` -> `invalidate_snapshot(-ENOMEM)`): `status` says `Invalid`,
/// reads and writes of it fail with EIO, origin writes keep working, and the persistent store
/// writes valid = 0 into its header (`persistent_drop_snapshot`), so re-creating the snapshot
/// on the same COW file gives an invalid snapshot again (`Snapshot is marked invalid`); a new N
/// snapshot on its old COW starts afresh.
#[test]
fn overflow_invalidates_persistent_and_transient_snapshots() {
    const SECTORS: u64 = 2048;
    let m = Mount::new();
    write_pattern_image(&m.path("origin.img"), 3, SECTORS);
    zero_file(&m.path("p.cow"), 32 << 10);
    zero_file(&m.path("n.cow"), 32 << 10);
    let saved = pattern_image(3, SECTORS);
    let (o, p, n) = (abs(&m, "origin.img"), abs(&m, "p.cow"), abs(&m, "n.cow"));
    let p_table = format!("0 {SECTORS} snapshot {o} {p} P 8");
    let n_table = format!("0 {SECTORS} snapshot {o} {n} N 8");
    m.create("origin", &format!("0 {SECTORS} snapshot-origin {o}"));
    m.create("sp", &p_table);
    m.create("sn", &n_table);
    let mut model = saved.clone();
    let origin = m.open_dev("origin");
    let eio = Some(libc::EIO);
    for i in 0..12u64 {
        // Chunk 3i: never two writes in one chunk.
        let off = i * 3 * 4096;
        let data = pseudo_random(300 + i, 4096);
        origin
            .write_all_at(&data, off)
            .unwrap_or_else(|e| panic!("origin write {i}: {e}"));
        model[off as usize..off as usize + 4096].copy_from_slice(&data);
        let done = i + 1;
        let want_p = if done <= 6 {
            snap_status("snapshot", SECTORS, Store::Persistent, 8, 64, done)
        } else {
            format!("0 {SECTORS} snapshot Invalid")
        };
        let want_n = if done <= 8 {
            snap_status("snapshot", SECTORS, Store::Transient, 8, 64, done)
        } else {
            format!("0 {SECTORS} snapshot Invalid")
        };
        assert_eq!(m.status("sp"), want_p, "after {done} writes");
        assert_eq!(m.status("sn"), want_n, "after {done} writes");
        // Invalidation raises one event on the snapshot device (__invalidate_snapshot ->
        // dm_table_event), once.
        assert_eq!(
            m.event_nr("sp"),
            u32::from(done > 6),
            "sp events after {done}"
        );
        assert_eq!(
            m.event_nr("sn"),
            u32::from(done > 8),
            "sn events after {done}"
        );
        assert_eq!(m.event_nr("origin"), 0);
        for (name, valid) in [("sp", done <= 6), ("sn", done <= 8)] {
            let r = m.read_dev(name);
            if valid {
                assert_same(&format!("dev/{name} after {done}"), &r.unwrap(), &saved);
            } else {
                assert_eq!(errno_of(&r), eio, "dev/{name} after {done}: {r:?}");
                let w = m.open_dev(name).write_all_at(&[1u8; 512], 0);
                assert_eq!(w.err().and_then(|e| e.raw_os_error()), eio);
            }
        }
        let cow = std::fs::read(m.path("p.cow")).unwrap();
        assert_eq!(&cow[..4], b"SnAp");
        let valid = u32::from_le_bytes(cow[4..8].try_into().unwrap());
        assert_eq!(
            valid,
            u32::from(done <= 6),
            "P header valid word after {done}"
        );
    }
    assert_same("dev/origin", &read_at(&origin, model.len()), &model);
    assert_same(
        "origin.img",
        &std::fs::read(m.path("origin.img")).unwrap(),
        &model,
    );
    drop(origin);
    m.remove("sp");
    m.remove("sn");
    m.create("sp", &p_table);
    assert_eq!(m.status("sp"), format!("0 {SECTORS} snapshot Invalid"));
    assert_eq!(errno_of(&m.read_dev("sp")), eio);
    assert_eq!(std::fs::read(m.path("p.cow")).unwrap()[4], 0);
    m.create("sn", &n_table);
    assert_eq!(
        m.status("sn"),
        snap_status("snapshot", SECTORS, Store::Transient, 8, 64, 0)
    );
    assert_same("re-created dev/sn", &m.read_dev("sn").unwrap(), &model);
    // An invalid snapshot cannot be merged: snapshot-merge on its COW says `Invalid` and
    // passes all I/O to the origin (snapshot_merge_map: "Full merging snapshots are
    // redirected to the origin").
    m.remove("sp");
    m.replace_table("origin", &format!("0 {SECTORS} snapshot-merge {o} {p} P 8"));
    assert_eq!(
        m.status("origin"),
        format!("0 {SECTORS} snapshot-merge Invalid")
    );
    assert_same(
        "dev/origin merging an invalid snapshot",
        &m.read_dev("origin").unwrap(),
        &model,
    );
    let data = pseudo_random(320, 3000);
    m.open_dev("origin").write_all_at(&data, 100).unwrap();
    model[100..3100].copy_from_slice(&data);
    assert_same(
        "origin.img after a write through the merge target",
        &std::fs::read(m.path("origin.img")).unwrap(),
        &model,
    );
    // The N snapshot still saves what origin writes overwrite.
    assert_same(
        "dev/sn at the end",
        &m.read_dev("sn").unwrap()[3100..],
        &model[3100..],
    );
    assert_ne!(m.read_dev("sn").unwrap()[100..3100], model[100..3100]);
}

/// PO: a snapshot write that finds the COW device full fails with EIO and marks the snapshot
/// overflowed (dm-snap.c `snapshot_map`, `userspace_supports_overflow`): `status` says
/// `Overflow`, every later write to the snapshot fails, its reads still work. An origin write
/// that needs a new exception in that full store then invalidates it, as for P
/// (`__origin_write` does not look at the overflow flag).
#[test]
fn overflow_of_a_po_snapshot() {
    const SECTORS: u64 = 2048;
    let m = Mount::new();
    write_pattern_image(&m.path("origin.img"), 4, SECTORS);
    zero_file(&m.path("c.cow"), 32 << 10);
    let (o, c) = (abs(&m, "origin.img"), abs(&m, "c.cow"));
    m.create("origin", &format!("0 {SECTORS} snapshot-origin {o}"));
    m.create("po", &format!("0 {SECTORS} snapshot {o} {c} PO 8"));
    let mut origin_model = pattern_image(4, SECTORS);
    let mut snap_model = origin_model.clone();
    let snap = m.open_dev("po");
    let origin = m.open_dev("origin");
    let eio = Some(libc::EIO);
    // Six chunks fit: whole-chunk writes and a partial one.
    for i in 0..6u64 {
        let (off, len) = if i == 2 {
            (i * 4096 + 1000, 700)
        } else {
            (i * 4096, 4096)
        };
        let data = pseudo_random(400 + i, len);
        snap.write_all_at(&data, off).unwrap();
        snap_model[off as usize..off as usize + len].copy_from_slice(&data);
    }
    assert_eq!(
        m.status("po"),
        snap_status("snapshot", SECTORS, Store::Persistent, 8, 64, 6)
    );
    let w = snap.write_all_at(&pseudo_random(406, 4096), 10 * 4096);
    assert_eq!(w.err().and_then(|e| e.raw_os_error()), eio);
    assert_eq!(m.status("po"), format!("0 {SECTORS} snapshot Overflow"));
    // Overflowing raises no event (snapshot_map only logs it); invalidating does, below.
    assert_eq!(m.event_nr("po"), 0);
    // Even a chunk that has its exception: an overflowed snapshot takes no more writes.
    let w = snap.write_all_at(&[7u8; 512], 0);
    assert_eq!(w.err().and_then(|e| e.raw_os_error()), eio);
    assert_same(
        "dev/po overflowed",
        &read_at(&snap, snap_model.len()),
        &snap_model,
    );
    assert_eq!(std::fs::read(m.path("c.cow")).unwrap()[4], 1);
    // An origin write to a chunk the snapshot already has needs no room.
    let data = pseudo_random(407, 4096);
    origin.write_all_at(&data, 4096).unwrap();
    origin_model[4096..8192].copy_from_slice(&data);
    assert_eq!(m.status("po"), format!("0 {SECTORS} snapshot Overflow"));
    assert_same("dev/po", &read_at(&snap, snap_model.len()), &snap_model);
    // One that needs a new exception invalidates it.
    let data = pseudo_random(408, 4096);
    origin.write_all_at(&data, 20 * 4096).unwrap();
    origin_model[20 * 4096..21 * 4096].copy_from_slice(&data);
    assert_eq!(m.status("po"), format!("0 {SECTORS} snapshot Invalid"));
    assert_eq!(m.event_nr("po"), 1);
    let mut buf = [0u8; 512];
    let r = snap.read_exact_at(&mut buf, 0);
    assert_eq!(r.err().and_then(|e| e.raw_os_error()), eio);
    assert_eq!(std::fs::read(m.path("c.cow")).unwrap()[4], 0);
    assert_same(
        "dev/origin",
        &read_at(&origin, origin_model.len()),
        &origin_model,
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Reload after a remount
// ---------------------------------------------------------------------------------------------

/// A P snapshot written through the origin and through itself; devices removed, dmfs unmounted
/// and mounted again, the same tables created again: the P snapshot reads the same image and
/// has the same `status` (its exceptions were reloaded from the COW file), and a new exception
/// after the reload lands in a fresh chunk (the image stays right). An N snapshot re-created on
/// its old COW file starts empty and reads the current origin.
#[test]
fn persistent_snapshot_survives_a_remount_and_transient_starts_afresh() {
    const SECTORS: u64 = 2048;
    let mut m = Mount::new();
    write_pattern_image(&m.path("origin.img"), 5, SECTORS);
    zero_file(&m.path("p.cow"), 1 << 20);
    zero_file(&m.path("n.cow"), 1 << 20);
    let o = abs(&m, "origin.img");
    let origin_table = format!("0 {SECTORS} snapshot-origin {o}");
    let p_table = format!("0 {SECTORS} snapshot {o} {} P 2", abs(&m, "p.cow"));
    let n_table = format!("0 {SECTORS} snapshot {o} {} N 8", abs(&m, "n.cow"));
    let mut origin_model = pattern_image(5, SECTORS);
    let mut p_model = origin_model.clone();
    let mut p_excepted = BTreeSet::new();
    {
        m.create("origin", &origin_table);
        m.create("sp", &p_table);
        m.create("sn", &n_table);
        let origin = m.open_dev("origin");
        let sp = m.open_dev("sp");
        let sn = m.open_dev("sn");
        let mut rng = Rng::seeded(11);
        // Chunk 2 (1 KiB): 64 exceptions per area, so the writes span several areas.
        for i in 0..60u64 {
            let len = 1 + rng.below(9000);
            let off = rng.below(SECTORS * 512 - len);
            let data = pseudo_random(500 + i, len as usize);
            let range = off as usize..(off + len) as usize;
            match i % 4 {
                0 | 1 => {
                    origin.write_all_at(&data, off).unwrap();
                    origin_model[range].copy_from_slice(&data);
                }
                2 => {
                    sp.write_all_at(&data, off).unwrap();
                    p_model[range].copy_from_slice(&data);
                }
                _ => {
                    sn.write_all_at(&data, off).unwrap();
                    continue;
                }
            }
            p_excepted.extend(chunks_of(off, len, 2));
        }
        assert!(p_excepted.len() > 128, "the test should fill areas");
        assert_same("dev/sp", &read_at(&sp, p_model.len()), &p_model);
        assert_eq!(
            m.status("sp"),
            snap_status(
                "snapshot",
                SECTORS,
                Store::Persistent,
                2,
                2048,
                p_excepted.len() as u64
            )
        );
        assert_ne!(
            m.status("sn"),
            snap_status("snapshot", SECTORS, Store::Transient, 8, 2048, 0)
        );
    }
    let p_status = m.status("sp");
    m.remove("sp");
    m.remove("sn");
    m.remove("origin");
    m.stop();
    assert!(!m.is_mounted());
    m.start(&[]);
    m.create("origin", &origin_table);
    // The chunk size in the COW header overrides the table's (persistent_read_metadata), and
    // the table then shows the header's.
    m.create("sp", &p_table.replace(" P 2", " P 16"));
    assert_eq!(m.read("dm/sp/table"), format!("{p_table}\n"));
    m.create("sn", &n_table);
    assert_eq!(m.status("sp"), p_status);
    check_cow(
        "p.cow after remount",
        &std::fs::read(m.path("p.cow")).unwrap(),
        &p_model,
        &p_excepted,
    );
    assert_same("dev/sp after remount", &m.read_dev("sp").unwrap(), &p_model);
    assert_eq!(
        m.status("sn"),
        snap_status("snapshot", SECTORS, Store::Transient, 8, 2048, 0)
    );
    assert_same(
        "dev/sn after remount",
        &m.read_dev("sn").unwrap(),
        &origin_model,
    );
    assert_same(
        "dev/origin after remount",
        &m.read_dev("origin").unwrap(),
        &origin_model,
    );
    // New exceptions after the reload go to fresh COW chunks: nothing reloaded is overwritten.
    let origin = m.open_dev("origin");
    for i in 0..40u64 {
        let off = i * 25 * 1024 + 512;
        let data = pseudo_random(600 + i, 1024);
        origin.write_all_at(&data, off).unwrap();
        origin_model[off as usize..off as usize + 1024].copy_from_slice(&data);
        p_excepted.extend(chunks_of(off, 1024, 2));
    }
    assert_same(
        "dev/sp after new writes",
        &m.read_dev("sp").unwrap(),
        &p_model,
    );
    assert_same(
        "dev/origin after new writes",
        &read_at(&origin, origin_model.len()),
        &origin_model,
    );
    assert_eq!(
        m.status("sp"),
        snap_status(
            "snapshot",
            SECTORS,
            Store::Persistent,
            2,
            2048,
            p_excepted.len() as u64
        )
    );
}

// ---------------------------------------------------------------------------------------------
// 5. kill -9
// ---------------------------------------------------------------------------------------------

/// A P snapshot; a writer that writes 4 KiB records through the origin device, each followed
/// by fsync, counting the records that completed; the daemon killed with SIGKILL at a seeded
/// random moment; restarted, the tables created again: every completed record is on the
/// origin, the snapshot still reads the origin as it was when it was taken, the COW file (read
/// in the kernel's format) saves every chunk the completed records touched (and at most the
/// record in flight's), each holding the original data, and `status` counts them. Chunks of
/// one sector: 32 exceptions per metadata area, so the kills land around area boundaries too.
/// Five cycles.
#[test]
fn kill9_keeps_fsynced_writes_and_the_snapshot() {
    const SECTORS: u64 = 8192;
    const CHUNK: u64 = 1;
    let mut m = Mount::new();
    write_pattern_image(&m.path("origin.img"), 6, SECTORS);
    zero_file(&m.path("c.cow"), 8 << 20);
    let saved = pattern_image(6, SECTORS);
    let o = abs(&m, "origin.img");
    let origin_table = format!("0 {SECTORS} snapshot-origin {o}");
    let snap_table = format!("0 {SECTORS} snapshot {o} {} P {CHUNK}", abs(&m, "c.cow"));
    // Record k goes to slot order[k]: bytes [slot*4096 + 1024, +4096), across two chunks.
    let slots = SECTORS / 8 - 1;
    let mut rng = Rng::seeded(99);
    let mut order: Vec<u64> = (0..slots).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let order = Arc::new(order);
    let record = |k: usize| pseudo_random(10_000 + k as u64, 4096);
    let at = |slot: u64| slot * 4096 + 1024;
    let mut model = saved.clone();
    let mut excepted: BTreeSet<u64> = BTreeSet::new();
    let mut next = 0usize;
    m.create("origin", &origin_table);
    m.create("snap", &snap_table);
    for cycle in 0..5 {
        let done = Arc::new(AtomicUsize::new(next));
        let started = Arc::new(AtomicUsize::new(next));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (done, started, stop, order) =
                (done.clone(), started.clone(), stop.clone(), order.clone());
            let path = m.mnt.join("dev/origin");
            std::thread::spawn(move || {
                let Ok(f) = OpenOptions::new()
                    .write(true)
                    .custom_flags(write_through_flags())
                    .open(path)
                else {
                    return;
                };
                let mut k = next;
                while k < order.len() && !stop.load(Ordering::SeqCst) {
                    started.store(k + 1, Ordering::SeqCst);
                    let data = pseudo_random(10_000 + k as u64, 4096);
                    if f.write_all_at(&data, order[k] * 4096 + 1024).is_err() {
                        return;
                    }
                    if f.sync_all().is_err() {
                        return;
                    }
                    k += 1;
                    done.store(k, Ordering::SeqCst);
                }
            })
        };
        // Kill at a random moment once the writer is under way.
        let deadline = Instant::now() + Duration::from_secs(20);
        while done.load(Ordering::SeqCst) == next {
            assert!(
                Instant::now() < deadline,
                "cycle {cycle}: the writer is stuck"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(rng.below(120)));
        m.kill9();
        stop.store(true, Ordering::SeqCst);
        writer.join().unwrap();
        let done = done.load(Ordering::SeqCst);
        let started = started.load(Ordering::SeqCst);
        eprintln!(
            "cycle {cycle}: {} records completed, {} in flight at the kill",
            done - next,
            started - done
        );
        assert!(
            done > next,
            "cycle {cycle}: no record completed before the kill"
        );
        for k in next..done {
            let off = at(order[k]) as usize;
            model[off..off + 4096].copy_from_slice(&record(k));
            excepted.extend(chunks_of(off as u64, 4096, CHUNK));
        }
        // The record in flight, if any, may be anywhere between old and new: take it as the
        // origin file has it, and allow its chunks in the count.
        let disk = std::fs::read(m.path("origin.img")).unwrap();
        let mut maybe = excepted.clone();
        for k in done..started {
            let off = at(order[k]) as usize;
            model[off..off + 4096].copy_from_slice(&disk[off..off + 4096]);
            maybe.extend(chunks_of(off as u64, 4096, CHUNK));
        }
        assert_same(&format!("cycle {cycle}: origin.img"), &disk, &model);
        m.start(&[]);
        m.create("origin", &origin_table);
        m.create("snap", &snap_table);
        assert_same(
            &format!("cycle {cycle}: dev/snap"),
            &m.read_dev("snap").unwrap(),
            &saved,
        );
        assert_same(
            &format!("cycle {cycle}: dev/origin"),
            &m.read_dev("origin").unwrap(),
            &model,
        );
        // The exceptions of the record in flight may or may not have reached the store
        // (partly, too, when they filled a metadata area): the COW file says which.
        let on_disk: BTreeSet<u64> = parse_cow(&std::fs::read(m.path("c.cow")).unwrap())
            .exceptions
            .iter()
            .map(|e| e.0)
            .collect();
        assert!(
            on_disk.is_superset(&excepted) && on_disk.is_subset(&maybe),
            "cycle {cycle}: the COW holds {} exceptions; {} were committed, {} at most",
            on_disk.len(),
            excepted.len(),
            maybe.len()
        );
        excepted = on_disk;
        check_cow(
            &format!("cycle {cycle}: c.cow"),
            &std::fs::read(m.path("c.cow")).unwrap(),
            &saved,
            &excepted,
        );
        assert_eq!(
            m.status("snap"),
            snap_status(
                "snapshot",
                SECTORS,
                Store::Persistent,
                CHUNK,
                16384,
                excepted.len() as u64
            ),
            "cycle {cycle}"
        );
        next = started;
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Concurrency
// ---------------------------------------------------------------------------------------------

/// Four writers on the origin device at once, each on its own 4 KiB blocks of the first half
/// (a whole-block write, then a partial overwrite) and all of them on random blocks of the
/// second half, while two readers keep reading the snapshots whole and four more chase the
/// blocks being written: the snapshots always read the original bytes. Meanwhile two writers
/// write into a third snapshot, on their own blocks: it ends up as the original image plus
/// exactly their writes. Afterwards the first half is exactly what its writers wrote, each block
/// of the second half is one of the writes made to it, and `status` counts every chunk
/// touched.
#[test]
fn concurrent_origin_writers_never_show_through_the_snapshot() {
    const SECTORS: u64 = 4096;
    const SIZE: usize = SECTORS as usize * 512;
    const BLOCKS: u64 = SECTORS / 8;
    let m = Mount::new();
    write_pattern_image(&m.path("origin.img"), 7, SECTORS);
    zero_file(&m.path("p.cow"), 4 << 20);
    zero_file(&m.path("n.cow"), 4 << 20);
    let saved = Arc::new(pattern_image(7, SECTORS));
    let o = abs(&m, "origin.img");
    m.create("origin", &format!("0 {SECTORS} snapshot-origin {o}"));
    m.create(
        "sp",
        &format!("0 {SECTORS} snapshot {o} {} P 8", abs(&m, "p.cow")),
    );
    m.create(
        "sn",
        &format!("0 {SECTORS} snapshot {o} {} N 32", abs(&m, "n.cow")),
    );
    zero_file(&m.path("w.cow"), 4 << 20);
    m.create(
        "sw",
        &format!("0 {SECTORS} snapshot {o} {} P 16", abs(&m, "w.cow")),
    );
    // Two more writers write into the snapshot sw, each on its own blocks (by parity), at
    // the same time as the origin writers: sw must end up as the original image plus exactly
    // their writes.
    let mut sw_model = saved.to_vec();
    let mut sw_plans: Vec<Vec<(u64, usize, Vec<u8>)>> = Vec::new();
    let mut sw_rng = Rng::seeded(17);
    for u in 0..2u64 {
        let mut plan = Vec::new();
        for i in 0..150u64 {
            let b = sw_rng.below(BLOCKS / 2) * 2 + u;
            let from = sw_rng.below(4096) as usize;
            let len = 1 + sw_rng.below((4096 - from) as u64) as usize;
            let data = pseudo_random(u << 56 | i, len);
            let at = (b * 4096) as usize + from;
            sw_model[at..at + len].copy_from_slice(&data);
            plan.push((b, from, data));
        }
        sw_plans.push(plan);
    }
    // (block, byte offset in it, data) per writer, planned here.
    let mut plans: Vec<Vec<(u64, usize, Vec<u8>)>> = Vec::new();
    let mut rng = Rng::seeded(5);
    for t in 0..4u64 {
        let mut plan = Vec::new();
        for b in (t..BLOCKS / 2).step_by(4) {
            plan.push((b, 0, pseudo_random(t << 32 | b, 4096)));
        }
        for b in (t..BLOCKS / 2).step_by(4) {
            let from = rng.below(4000) as usize;
            let len = 1 + rng.below((4096 - from) as u64) as usize;
            plan.push((b, from, pseudo_random(t << 40 | b, len)));
        }
        for i in 0..64u64 {
            let b = BLOCKS / 2 + rng.below(BLOCKS / 2);
            plan.push((b, 0, pseudo_random(t << 48 | i, 4096)));
        }
        // Interleave the halves so that shared and private blocks are written together.
        let mut shuffled = Vec::with_capacity(plan.len());
        let (private, shared) = plan.split_at(plan.len() - 64);
        let (mut p, mut s) = (private.iter(), shared.iter());
        loop {
            match (p.next(), s.next()) {
                (None, None) => break,
                (a, b) => shuffled.extend(a.into_iter().chain(b).cloned()),
            }
        }
        plans.push(shuffled);
    }
    let writing = Arc::new(AtomicUsize::new(plans.len()));
    let mut readers = Vec::new();
    for name in ["sp", "sn"] {
        let (writing, saved) = (writing.clone(), saved.clone());
        let path = m.mnt.join("dev").join(name);
        readers.push(std::thread::spawn(move || {
            let f = File::open(path).unwrap();
            let mut passes = 0;
            while writing.load(Ordering::SeqCst) > 0 || passes < 3 {
                let mut buf = vec![0u8; SIZE];
                f.read_exact_at(&mut buf, 0).unwrap();
                assert_same(&format!("dev/{name} pass {passes}"), &buf, &saved);
                passes += 1;
            }
            passes
        }));
    }
    // Chasers: each keeps reading, from one snapshot, the block a writer is about to write,
    // where a read racing the copy-out would see the new bytes.
    let hot = Arc::new(AtomicU64::new(0));
    for name in ["sp", "sn", "sp", "sn"] {
        let (writing, saved, hot) = (writing.clone(), saved.clone(), hot.clone());
        let path = m.mnt.join("dev").join(name);
        readers.push(std::thread::spawn(move || {
            let f = File::open(path).unwrap();
            let mut buf = vec![0u8; 4096];
            let mut reads = 0;
            while writing.load(Ordering::SeqCst) > 0 || reads < 3 {
                let b = hot.load(Ordering::SeqCst) as usize;
                f.read_exact_at(&mut buf, b as u64 * 4096).unwrap();
                let want = &saved[b * 4096..(b + 1) * 4096];
                assert_same(&format!("block {b} of dev/{name}"), &buf, want);
                reads += 1;
            }
            reads
        }));
    }
    let writers: Vec<_> = plans
        .iter()
        .cloned()
        .map(|plan| {
            let (writing, hot) = (writing.clone(), hot.clone());
            let path = m.mnt.join("dev/origin");
            std::thread::spawn(move || {
                let f = OpenOptions::new()
                    .write(true)
                    .custom_flags(write_through_flags())
                    .open(path)
                    .unwrap();
                for (b, from, data) in plan {
                    hot.store(b, Ordering::SeqCst);
                    f.write_all_at(&data, b * 4096 + from as u64).unwrap();
                }
                writing.fetch_sub(1, Ordering::SeqCst);
            })
        })
        .collect();
    let sw_writers: Vec<_> = sw_plans
        .iter()
        .cloned()
        .map(|plan| {
            let path = m.mnt.join("dev/sw");
            std::thread::spawn(move || {
                let f = OpenOptions::new()
                    .write(true)
                    .custom_flags(write_through_flags())
                    .open(path)
                    .unwrap();
                for (b, from, data) in plan {
                    f.write_all_at(&data, b * 4096 + from as u64).unwrap();
                }
            })
        })
        .collect();
    for w in writers.into_iter().chain(sw_writers) {
        w.join().unwrap();
    }
    for r in readers {
        let passes = r.join().unwrap();
        assert!(passes >= 3);
    }
    let got = m.read_dev("origin").unwrap();
    let mut want = saved.to_vec();
    let mut candidates: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
    let mut touched = BTreeSet::new();
    for plan in &plans {
        for (b, from, data) in plan {
            touched.insert(*b);
            let at = (b * 4096) as usize + from;
            if *b < BLOCKS / 2 {
                want[at..at + data.len()].copy_from_slice(data);
            } else {
                candidates.entry(*b).or_default().push(data.clone());
            }
        }
    }
    assert_same(
        "first half of dev/origin",
        &got[..SIZE / 2],
        &want[..SIZE / 2],
    );
    for b in BLOCKS / 2..BLOCKS {
        let block = &got[(b * 4096) as usize..(b + 1) as usize * 4096];
        match candidates.get(&b) {
            Some(c) => assert!(
                c.iter().any(|d| d == block),
                "block {b} is none of the {} writes made to it",
                c.len()
            ),
            None => assert_same(
                &format!("block {b}"),
                block,
                &saved[(b * 4096) as usize..(b + 1) as usize * 4096],
            ),
        }
    }
    assert_same("dev/sp", &m.read_dev("sp").unwrap(), &saved);
    assert_same("dev/sn", &m.read_dev("sn").unwrap(), &saved);
    check_cow(
        "p.cow",
        &std::fs::read(m.path("p.cow")).unwrap(),
        &saved,
        &touched,
    );
    assert_same("dev/sw", &m.read_dev("sw").unwrap(), &sw_model);
    let mut w_chunks: BTreeSet<u64> = touched.iter().map(|b| b / 2).collect();
    w_chunks.extend(sw_plans.iter().flatten().map(|(b, _, _)| b / 2));
    check_cow(
        "w.cow",
        &std::fs::read(m.path("w.cow")).unwrap(),
        &sw_model,
        &w_chunks,
    );
    assert_eq!(
        m.status("sw"),
        snap_status(
            "snapshot",
            SECTORS,
            Store::Persistent,
            16,
            8192,
            w_chunks.len() as u64
        )
    );
    let p_chunks = touched.len() as u64;
    let n_chunks = touched.iter().map(|b| b / 4).collect::<BTreeSet<_>>().len() as u64;
    assert_eq!(
        m.status("sp"),
        snap_status("snapshot", SECTORS, Store::Persistent, 8, 8192, p_chunks)
    );
    assert_eq!(
        m.status("sn"),
        snap_status("snapshot", SECTORS, Store::Transient, 32, 8192, n_chunks)
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Merge
// ---------------------------------------------------------------------------------------------

/// A P snapshot (chunk 4: 128 exceptions per area) with exceptions from origin writes and from
/// its own writes; the snapshot device removed and the origin's table replaced by
/// `snapshot-merge` (reload, suspend, resume): the origin device reads the snapshot's image at
/// once, `status` counts down without ever going up (and holds still while the device is
/// suspended), to `8/COW 8` (header and one empty area),
/// and then the origin file holds the snapshot's image. Writes after the merge land on the
/// origin, and a `snapshot-origin` table over it afterwards reads the same.
#[test]
fn merge_brings_the_origin_back_to_the_snapshot() {
    const SECTORS: u64 = 4096;
    const CHUNK: u64 = 4;
    let m = Mount::new();
    write_pattern_image(&m.path("origin.img"), 8, SECTORS);
    zero_file(&m.path("c.cow"), 4 << 20);
    let (o, c) = (abs(&m, "origin.img"), abs(&m, "c.cow"));
    m.create("origin", &format!("0 {SECTORS} snapshot-origin {o}"));
    m.create("snap", &format!("0 {SECTORS} snapshot {o} {c} P {CHUNK}"));
    let mut origin_model = pattern_image(8, SECTORS);
    let mut snap_model = origin_model.clone();
    let mut excepted = BTreeSet::new();
    {
        let origin = m.open_dev("origin");
        let snap = m.open_dev("snap");
        let mut rng = Rng::seeded(3);
        for i in 0..60u64 {
            let len = 1 + rng.below(20000);
            let off = rng.below(SECTORS * 512 - len);
            let data = pseudo_random(700 + i, len as usize);
            let range = off as usize..(off + len) as usize;
            if i % 3 == 2 {
                snap.write_all_at(&data, off).unwrap();
                snap_model[range].copy_from_slice(&data);
            } else {
                origin.write_all_at(&data, off).unwrap();
                origin_model[range].copy_from_slice(&data);
            }
            excepted.extend(chunks_of(off, len, CHUNK));
        }
        assert!(excepted.len() > 256, "the merge should walk several areas");
        assert_same("dev/snap", &read_at(&snap, snap_model.len()), &snap_model);
        assert_same(
            "dev/origin",
            &read_at(&origin, origin_model.len()),
            &origin_model,
        );
    }
    let cow_sectors = 8192;
    assert_eq!(
        m.status("snap"),
        snap_status(
            "snapshot",
            SECTORS,
            Store::Persistent,
            CHUNK,
            cow_sectors,
            excepted.len() as u64
        )
    );
    m.remove("snap");
    m.replace_table(
        "origin",
        &format!("0 {SECTORS} snapshot-merge {o} {c} P {CHUNK}"),
    );
    assert_eq!(
        m.read("dm/origin/table"),
        format!("0 {SECTORS} snapshot-merge {o} {c} P {CHUNK}\n")
    );
    let done = format!(
        "0 {SECTORS} snapshot-merge {}/{cow_sectors} {}",
        2 * CHUNK,
        2 * CHUNK
    );
    // Suspending pauses the merge (snapshot_merge_presuspend -> stop_merge): the count holds
    // still until resume.
    m.must("suspend origin", m.ctl("suspend", "origin"));
    let paused = m.status("origin");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        m.status("origin"),
        paused,
        "the merge went on while suspended"
    );
    m.must("resume origin", m.ctl("resume", "origin"));
    if paused == done {
        eprintln!("note: the merge was over before the suspend");
    }
    assert_same(
        "dev/origin while merging",
        &m.read_dev("origin").unwrap(),
        &snap_model,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = u64::MAX;
    loop {
        let s = m.status("origin");
        let usage = s
            .strip_prefix(&format!("0 {SECTORS} snapshot-merge "))
            .and_then(|u| u.split('/').next())
            .and_then(|a| a.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("unexpected merge status {s:?}"));
        assert!(usage <= last, "merge status went up: {last} -> {s:?}");
        last = usage;
        if s == done {
            break;
        }
        assert!(Instant::now() < deadline, "merge did not finish: {s:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_same(
        "dev/origin merged",
        &m.read_dev("origin").unwrap(),
        &snap_model,
    );
    assert_same(
        "origin.img merged",
        &std::fs::read(m.path("origin.img")).unwrap(),
        &snap_model,
    );
    let data = pseudo_random(800, 5000);
    m.open_dev("origin").write_all_at(&data, 333).unwrap();
    snap_model[333..5333].copy_from_slice(&data);
    assert_same(
        "origin.img after a write",
        &std::fs::read(m.path("origin.img")).unwrap(),
        &snap_model,
    );
    m.replace_table("origin", &format!("0 {SECTORS} snapshot-origin {o}"));
    assert_same(
        "dev/origin at the end",
        &m.read_dev("origin").unwrap(),
        &snap_model,
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Bad tables
// ---------------------------------------------------------------------------------------------

/// Refused snapshot tables: the write fails with the kernel's errno and words in ctl/errors,
/// nothing is created, the devices already there keep their tables, status and data, and
/// neither the origin file nor the COW files (a fresh one included) are touched.
#[test]
fn bad_snapshot_tables_are_refused_and_change_nothing() {
    const SECTORS: u64 = 1024;
    let m = Mount::new();
    write_pattern_image(&m.path("origin.img"), 9, SECTORS);
    zero_file(&m.path("c.cow"), 1 << 20);
    zero_file(&m.path("fresh.cow"), 1 << 20);
    let (o, c, f) = (
        abs(&m, "origin.img"),
        abs(&m, "c.cow"),
        abs(&m, "fresh.cow"),
    );
    m.create("origin", &format!("0 {SECTORS} snapshot-origin {o}"));
    m.create("snap", &format!("0 {SECTORS} snapshot {o} {c} P 8"));
    m.dd_write_through("origin", 4096, &pseudo_random(900, 8192), false);
    let files = |m: &Mount| {
        ["origin.img", "c.cow", "fresh.cow"]
            .map(|n| std::fs::read(m.path(n)).unwrap())
            .to_vec()
    };
    let state = |m: &Mount| {
        (
            m.devices(),
            m.read("dm/origin/table"),
            m.read("dm/snap/table"),
            m.status("origin"),
            m.status("snap"),
            m.read_dev("snap").unwrap(),
            m.read_dev("origin").unwrap(),
        )
    };
    let files_before = files(&m);
    let before = state(&m);
    assert_eq!(before.4, "0 1024 snapshot 32/2048 16");
    let missing = abs(&m, "missing.cow");
    let cases: Vec<(&str, String, i32, &str)> = vec![
        (
            "chunk 3",
            format!("snapshot {o} {f} P 3"),
            libc::EINVAL,
            "Chunk size is not a power of 2",
        ),
        (
            "chunk 3 on a live COW",
            format!("snapshot {o} {c} P 3"),
            libc::EINVAL,
            "Chunk size is not a power of 2",
        ),
        (
            "chunk abc",
            format!("snapshot {o} {f} P abc"),
            libc::EINVAL,
            "Invalid chunk size",
        ),
        (
            "chunk -8",
            format!("snapshot {o} {f} P -8"),
            libc::EINVAL,
            "Invalid chunk size",
        ),
        (
            "chunk too high",
            format!("snapshot {o} {f} P 4194304"),
            libc::EINVAL,
            "Chunk size is too high",
        ),
        // The kernel accepts chunk 0 for P (the header or the default decides), but a transient
        // store has no header: snapshot_ctr's "Chunk size not set".
        (
            "N chunk 0",
            format!("snapshot {o} {f} N 0"),
            libc::EINVAL,
            "Chunk size not set",
        ),
        (
            "store X",
            format!("snapshot {o} {f} X 8"),
            libc::EINVAL,
            "Exception store type is not P or N",
        ),
        (
            "store PX",
            format!("snapshot {o} {f} PX 8"),
            libc::EINVAL,
            "Unsupported persistent store option",
        ),
        (
            "COW == origin",
            format!("snapshot {o} {o} P 8"),
            libc::EINVAL,
            "COW device cannot be the same as origin device",
        ),
        // dmfs answers ENOENT for a missing backing file (README: the kernel says ENODEV).
        (
            "missing COW",
            format!("snapshot {o} {missing} P 8"),
            libc::ENOENT,
            "Cannot get COW device",
        ),
        (
            "3 arguments",
            format!("snapshot {o} {f} P"),
            libc::EINVAL,
            "requires 4 or more arguments",
        ),
        (
            "1 argument",
            format!("snapshot {o}"),
            libc::EINVAL,
            "requires 4 or more arguments",
        ),
        (
            "bad feature count",
            format!("snapshot {o} {f} P 8 3 a b c"),
            libc::EINVAL,
            "Invalid number of feature arguments",
        ),
        (
            "bad feature",
            format!("snapshot {o} {f} P 8 1 nosuch"),
            libc::EINVAL,
            "Unrecognised feature requested",
        ),
        (
            "origin with 2 args",
            format!("snapshot-origin {o} {f}"),
            libc::EINVAL,
            "origin: incorrect number of arguments",
        ),
        (
            "merge of an N store",
            format!("snapshot-merge {o} {f} N 8"),
            libc::EINVAL,
            "does not support snapshot-merge",
        ),
        (
            "snapshot longer than origin",
            format!("snapshot {o} {f} P 8"),
            libc::EINVAL,
            "too small for target",
        ),
    ];
    for (what, args, errno, words) in cases {
        let len = if what == "snapshot longer than origin" {
            SECTORS + 8
        } else {
            SECTORS
        };
        let table = format!("0 {len} {args}\n");
        let r = m.write_table("create", "bad", &table);
        let err = r
            .err()
            .unwrap_or_else(|| panic!("{what}: {table} was accepted"));
        assert_eq!(err.raw_os_error(), Some(errno), "{what}: {err}");
        let last = m
            .read("ctl/errors")
            .lines()
            .last()
            .unwrap_or("")
            .to_string();
        assert!(
            last.contains("bad") && last.contains(words),
            "{what}: last ctl/errors line {last:?} lacks {words:?}"
        );
        assert!(!m.mnt.join("dev/bad").exists(), "{what}: dev/bad created");
        assert_eq!(state(&m), before, "{what}: the existing devices changed");
        let now = files(&m);
        for (name, (a, b)) in ["origin.img", "c.cow", "fresh.cow"]
            .iter()
            .zip(now.iter().zip(&files_before))
        {
            assert_same(&format!("{what}: {name}"), a, b);
        }
    }
    // P with chunk 0 is no mistake (dm-exception-store.c `set_chunk_size`): the COW header's
    // chunk size decides, or on a fresh COW file the default, 32.
    m.create("zero", &format!("0 {SECTORS} snapshot {o} {f} P 0"));
    assert_eq!(
        m.read("dm/zero/table"),
        format!("0 {SECTORS} snapshot {o} {f} P 32\n")
    );
    assert_eq!(m.status("zero"), "0 1024 snapshot 64/2048 64");
    // The store type's first letter is taken in either case, `O` too; a transient store
    // ignores what follows its letter (dm-exception-store.c, dm-snap-transient.c).
    for (name, ty, shown) in [("lp", "po", "PO"), ("ln", "nfoo", "N")] {
        let cow = abs(&m, &format!("{name}.cow"));
        zero_file(Path::new(&cow), 1 << 20);
        m.create(name, &format!("0 {SECTORS} snapshot {o} {cow} {ty} 8"));
        assert_eq!(
            m.read(&format!("dm/{name}/table")),
            format!("0 {SECTORS} snapshot {o} {cow} {shown} 8\n")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 9. Sizes, handover, merging beside another snapshot
// ---------------------------------------------------------------------------------------------

/// An origin of 1000 sectors: with chunk 16 its last chunk is half outside it. `a` (P 16) saves
/// only the part inside (the kernel copies `min(chunk, origin size - start)`), `c` (P 16) is
/// written through itself in that last chunk first, `b` (N 8) is a snapshot of only the first
/// 512 sectors: origin writes past its end save nothing (`__origin_write`: "Nothing to do if
/// writing beyond end of snapshot"), a write across its end saves the chunks inside.
#[test]
fn partial_last_chunk_and_a_snapshot_shorter_than_its_origin() {
    const SECTORS: u64 = 1000;
    let m = Mount::new();
    write_pattern_image(&m.path("origin.img"), 10, SECTORS);
    for cow in ["a.cow", "b.cow", "c.cow"] {
        zero_file(&m.path(cow), 1 << 20);
    }
    let o = abs(&m, "origin.img");
    m.create("origin", &format!("0 {SECTORS} snapshot-origin {o}"));
    m.create(
        "a",
        &format!("0 {SECTORS} snapshot {o} {} P 16", abs(&m, "a.cow")),
    );
    m.create("b", &format!("0 512 snapshot {o} {} N 8", abs(&m, "b.cow")));
    m.create(
        "c",
        &format!("0 {SECTORS} snapshot {o} {} P 16", abs(&m, "c.cow")),
    );
    let mut origin = pattern_image(10, SECTORS);
    let mut a = origin.clone();
    let b = origin[..512 * 512].to_vec();
    let mut c = origin.clone();
    let (mut ax, mut bx, mut cx) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let end = SECTORS * 512;
    // c first: a write of its own into the last, partial chunk (62: sectors 992..1008).
    let data = pseudo_random(1100, 1500);
    m.open_dev("c").write_all_at(&data, end - 3000).unwrap();
    c[(end - 3000) as usize..(end - 1500) as usize].copy_from_slice(&data);
    cx.extend(chunks_of(end - 3000, 1500, 16));
    let writes: [(u64, u64); 4] = [
        (end - 2048, 2048),
        (500 * 512, 20 * 512),
        (0, 700),
        (end - 1, 1),
    ];
    for (i, &(off, len)) in writes.iter().enumerate() {
        let data = pseudo_random(1101 + i as u64, len as usize);
        m.open_dev("origin").write_all_at(&data, off).unwrap();
        origin[off as usize..(off + len) as usize].copy_from_slice(&data);
        ax.extend(chunks_of(off, len, 16));
        cx.extend(chunks_of(off, len, 16));
        if off < 512 * 512 {
            bx.extend(chunks_of(off, len.min(512 * 512 - off), 8));
        }
    }
    // a's own write into its (already saved) last chunk.
    let data = pseudo_random(1110, 4096);
    m.open_dev("a").write_all_at(&data, end - 4096).unwrap();
    a[(end - 4096) as usize..].copy_from_slice(&data);
    assert_same("dev/origin", &m.read_dev("origin").unwrap(), &origin);
    assert_same("dev/a", &m.read_dev("a").unwrap(), &a);
    assert_same("dev/b", &m.read_dev("b").unwrap(), &b);
    assert_same("dev/c", &m.read_dev("c").unwrap(), &c);
    assert_eq!(
        m.status("a"),
        snap_status(
            "snapshot",
            SECTORS,
            Store::Persistent,
            16,
            2048,
            ax.len() as u64
        )
    );
    assert_eq!(
        m.status("b"),
        snap_status("snapshot", 512, Store::Transient, 8, 2048, bx.len() as u64)
    );
    assert_eq!(bx, BTreeSet::from([0, 62, 63]));
    assert_eq!(
        m.status("c"),
        snap_status(
            "snapshot",
            SECTORS,
            Store::Persistent,
            16,
            2048,
            cx.len() as u64
        )
    );
    check_cow("a.cow", &std::fs::read(m.path("a.cow")).unwrap(), &a, &ax);
    check_cow("c.cow", &std::fs::read(m.path("c.cow")).unwrap(), &c, &cx);
}

/// Reloading a snapshot device with the same COW file hands the exceptions over to the new
/// table at resume (dm-snap.c `snapshot_resume` / `__handover_exceptions`); origin writes made
/// while the snapshot device is suspended are still saved (suspending a snapshot does not
/// deactivate it). Reloading it with a new COW file makes a new snapshot, of the origin as it
/// is at resume: origin writes between the reload and the resume are not saved in it
/// (`snapshot->active` is set at resume).
#[test]
fn reload_hands_exceptions_over_and_a_new_cow_starts_at_resume() {
    const SECTORS: u64 = 2048;
    let m = Mount::new();
    write_pattern_image(&m.path("origin.img"), 11, SECTORS);
    zero_file(&m.path("c1.cow"), 2 << 20);
    zero_file(&m.path("c2.cow"), 2 << 20);
    let o = abs(&m, "origin.img");
    let t1 = format!("0 {SECTORS} snapshot {o} {} P 8", abs(&m, "c1.cow"));
    let t2 = format!("0 {SECTORS} snapshot {o} {} P 8", abs(&m, "c2.cow"));
    m.create("origin", &format!("0 {SECTORS} snapshot-origin {o}"));
    m.create("snap", &t1);
    let mut origin = pattern_image(11, SECTORS);
    let mut snap = origin.clone();
    let mut x1 = BTreeSet::new();
    let write = |dev: &str, image: &mut Vec<u8>, seed: u64, off: u64, len: u64| {
        let data = pseudo_random(seed, len as usize);
        m.open_dev(dev).write_all_at(&data, off).unwrap();
        image[off as usize..(off + len) as usize].copy_from_slice(&data);
    };
    write("origin", &mut origin, 1200, 0, 10000);
    x1.extend(chunks_of(0, 10000, 8));
    write("snap", &mut snap, 1201, 300_000, 5000);
    x1.extend(chunks_of(300_000, 5000, 8));
    // Handover: the same COW file.
    m.must(
        "reload snap",
        m.write_table("reload", "snap", &format!("{t1}\n")),
    );
    m.must("suspend snap", m.ctl("suspend", "snap"));
    write("origin", &mut origin, 1202, 600_000, 9000);
    x1.extend(chunks_of(600_000, 9000, 8));
    m.must("resume snap", m.ctl("resume", "snap"));
    assert_same(
        "dev/snap after the handover",
        &m.read_dev("snap").unwrap(),
        &snap,
    );
    let s1 = snap_status(
        "snapshot",
        SECTORS,
        Store::Persistent,
        8,
        4096,
        x1.len() as u64,
    );
    assert_eq!(m.status("snap"), s1);
    write("snap", &mut snap, 1203, 700_000, 3000);
    x1.extend(chunks_of(700_000, 3000, 8));
    write("origin", &mut origin, 1204, 800_000, 3000);
    x1.extend(chunks_of(800_000, 3000, 8));
    assert_same(
        "dev/snap after more writes",
        &m.read_dev("snap").unwrap(),
        &snap,
    );
    check_cow(
        "c1.cow",
        &std::fs::read(m.path("c1.cow")).unwrap(),
        &snap,
        &x1,
    );
    // A new COW file: a new snapshot, taken at resume.
    m.must(
        "reload snap",
        m.write_table("reload", "snap", &format!("{t2}\n")),
    );
    write("origin", &mut origin, 1205, 900_000, 4000);
    x1.extend(chunks_of(900_000, 4000, 8));
    m.must("suspend snap", m.ctl("suspend", "snap"));
    write("origin", &mut origin, 1206, 950_000, 4000);
    x1.extend(chunks_of(950_000, 4000, 8));
    m.must("resume snap", m.ctl("resume", "snap"));
    let mut snap2 = origin.clone();
    assert_same("dev/snap on c2", &m.read_dev("snap").unwrap(), &snap2);
    assert_eq!(
        m.status("snap"),
        snap_status("snapshot", SECTORS, Store::Persistent, 8, 4096, 0)
    );
    write("origin", &mut origin, 1207, 100_000, 4096);
    let x2: BTreeSet<u64> = chunks_of(100_000, 4096, 8).collect();
    write("snap", &mut snap2, 1208, 0, 512);
    let mut x2 = x2;
    x2.extend(chunks_of(0, 512, 8));
    assert_same("dev/snap on c2 later", &m.read_dev("snap").unwrap(), &snap2);
    assert_same("dev/origin", &m.read_dev("origin").unwrap(), &origin);
    check_cow(
        "c2.cow",
        &std::fs::read(m.path("c2.cow")).unwrap(),
        &snap2,
        &x2,
    );
    // c1 went out of use with the old table: what it saved before stays as it was, and the
    // writes after the second reload (the old table still live until resume) are in it too.
    check_cow(
        "c1.cow at the end",
        &std::fs::read(m.path("c1.cow")).unwrap(),
        &snap,
        &x1,
    );
}

/// Merging one snapshot while another snapshot of the same origin exists: before the merge
/// overwrites origin chunks, the other snapshot saves them (`snapshot_merge_next_chunks` ->
/// `origin_write_extent`), so it keeps reading the original image. Writes to the origin
/// during the merge land in the merged image: to the COW file for chunks not merged yet, to
/// the origin (saving chunks for the other snapshot) otherwise.
#[test]
fn merge_beside_another_snapshot_with_writes_during_the_merge() {
    const SECTORS: u64 = 4096;
    let m = Mount::new();
    write_pattern_image(&m.path("origin.img"), 12, SECTORS);
    zero_file(&m.path("m.cow"), 2 << 20);
    zero_file(&m.path("k.cow"), 4 << 20);
    let o = abs(&m, "origin.img");
    let mc = abs(&m, "m.cow");
    m.create("origin", &format!("0 {SECTORS} snapshot-origin {o}"));
    m.create("merged", &format!("0 {SECTORS} snapshot {o} {mc} P 1"));
    m.create(
        "kept",
        &format!("0 {SECTORS} snapshot {o} {} N 8", abs(&m, "k.cow")),
    );
    let saved = pattern_image(12, SECTORS);
    let mut origin = saved.clone();
    let mut merged = saved.clone();
    let (mut mx, mut kx) = (BTreeSet::new(), BTreeSet::new());
    let mut rng = Rng::seeded(13);
    {
        let of = m.open_dev("origin");
        let mf = m.open_dev("merged");
        for i in 0..80u64 {
            let len = 1 + rng.below(6000);
            let off = rng.below(SECTORS * 512 - len);
            let data = pseudo_random(1300 + i, len as usize);
            let range = off as usize..(off + len) as usize;
            if i % 2 == 0 {
                of.write_all_at(&data, off).unwrap();
                origin[range].copy_from_slice(&data);
                kx.extend(chunks_of(off, len, 8));
            } else {
                mf.write_all_at(&data, off).unwrap();
                merged[range].copy_from_slice(&data);
            }
            mx.extend(chunks_of(off, len, 1));
        }
        assert_same("dev/merged", &read_at(&mf, merged.len()), &merged);
    }
    assert_same("dev/kept", &m.read_dev("kept").unwrap(), &saved);
    m.remove("merged");
    m.replace_table(
        "origin",
        &format!("0 {SECTORS} snapshot-merge {o} {mc} P 1"),
    );
    // Writes while the merge runs (some of them, at least: it may be quick).
    let mut expect = merged.clone();
    {
        let of = m.open_dev("origin");
        for i in 0..20u64 {
            let len = 1 + rng.below(3000);
            let off = rng.below(SECTORS * 512 - len);
            let data = pseudo_random(1400 + i, len as usize);
            of.write_all_at(&data, off).unwrap();
            expect[off as usize..(off + len) as usize].copy_from_slice(&data);
            kx.extend(chunks_of(off, len, 8));
        }
        assert_same(
            "dev/origin while merging",
            &read_at(&of, expect.len()),
            &expect,
        );
    }
    let done = format!("0 {SECTORS} snapshot-merge 2/4096 2");
    let deadline = Instant::now() + Duration::from_secs(30);
    while m.status("origin") != done {
        assert!(
            Instant::now() < deadline,
            "merge did not finish: {}",
            m.status("origin")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_same("dev/origin merged", &m.read_dev("origin").unwrap(), &expect);
    assert_same(
        "origin.img merged",
        &std::fs::read(m.path("origin.img")).unwrap(),
        &expect,
    );
    assert_same(
        "dev/kept after the merge",
        &m.read_dev("kept").unwrap(),
        &saved,
    );
    // The kept snapshot saved every chunk the merge wrote (all the merged snapshot's
    // exceptions) and every chunk written through the origin.
    kx.extend(mx.iter().map(|s| s / 8));
    assert_eq!(
        m.status("kept"),
        snap_status(
            "snapshot",
            SECTORS,
            Store::Transient,
            8,
            8192,
            kx.len() as u64
        )
    );
}

/// `snapshot-merge` loaded while the snapshot device still exists takes its exceptions over at
/// resume (`__validate_exception_handover` allows a merging destination; the handover sets the
/// source invalid so it gets no more I/O), once the snapshot device is suspended
/// (`snapshot_preresume` refuses the resume before): the old snapshot device, resumed, then
/// fails I/O with EIO and says `Invalid`, the origin reads the snapshot's image and the merge
/// runs to the end.
#[test]
fn merge_takes_a_live_snapshot_over() {
    const SECTORS: u64 = 2048;
    let m = Mount::new();
    write_pattern_image(&m.path("origin.img"), 14, SECTORS);
    zero_file(&m.path("c.cow"), 1 << 20);
    let (o, c) = (abs(&m, "origin.img"), abs(&m, "c.cow"));
    m.create("origin", &format!("0 {SECTORS} snapshot-origin {o}"));
    m.create("snap", &format!("0 {SECTORS} snapshot {o} {c} P 8"));
    let mut image = pattern_image(14, SECTORS);
    {
        let of = m.open_dev("origin");
        let sf = m.open_dev("snap");
        for i in 0..10u64 {
            of.write_all_at(&pseudo_random(1500 + i, 7000), i * 90_000)
                .unwrap();
            let data = pseudo_random(1600 + i, 3000);
            let off = i * 90_000 + 50_000;
            sf.write_all_at(&data, off).unwrap();
            image[off as usize..off as usize + 3000].copy_from_slice(&data);
        }
    }
    // A second table on the COW of a live snapshot that is not merging: refused, as the
    // kernel refuses two destinations.
    let t = format!("0 {SECTORS} snapshot {o} {c} P 8\n");
    m.must("reload snap", m.write_table("reload", "snap", &t));
    let second = m.write_table("create", "other", &t);
    assert_eq!(
        second.err().and_then(|e| e.raw_os_error()),
        Some(libc::EINVAL),
        "a second destination for the same COW"
    );
    assert!(m.read("ctl/errors").contains("handover failed"));
    assert!(!m.mnt.join("dev/other").exists());
    // Drop the pending reload again: resume swaps it in (a handover to itself).
    m.must("suspend snap", m.ctl("suspend", "snap"));
    m.must("resume snap", m.ctl("resume", "snap"));
    assert_same("dev/snap", &m.read_dev("snap").unwrap(), &image);
    // The kernel hands over only from a suspended source (snapshot_preresume): a new device
    // on the COW of a live snapshot is not created, and the origin's resume into
    // snapshot-merge is refused, leaving it suspended with the new table live.
    let refused = "Unable to perform snapshot handover until source is suspended.";
    let r = m.write_table("create", "thief", &t);
    assert_eq!(r.err().and_then(|e| e.raw_os_error()), Some(libc::EINVAL));
    assert!(!m.mnt.join("dev/thief").exists());
    assert!(m.last_error().contains(refused));
    let merge = format!("0 {SECTORS} snapshot-merge {o} {c} P 8\n");
    m.must("reload origin", m.write_table("reload", "origin", &merge));
    m.must("suspend origin", m.ctl("suspend", "origin"));
    let r = m.ctl("resume", "origin");
    assert_eq!(r.err().and_then(|e| e.raw_os_error()), Some(libc::EINVAL));
    assert!(m.last_error().contains(refused));
    assert_eq!(m.read("dm/origin/suspended"), "1\n");
    assert_eq!(m.read("dm/origin/table"), merge);
    assert_same("dev/snap still", &m.read_dev("snap").unwrap(), &image);
    // As lvm does: the snapshot device suspended first, resumed after; it is then invalid.
    m.must("suspend snap", m.ctl("suspend", "snap"));
    m.must("resume origin", m.ctl("resume", "origin"));
    m.must("resume snap", m.ctl("resume", "snap"));
    assert_same("dev/origin", &m.read_dev("origin").unwrap(), &image);
    assert_eq!(errno_of(&m.read_dev("snap")), Some(libc::EIO));
    assert_eq!(m.status("snap"), format!("0 {SECTORS} snapshot Invalid"));
    // Suspending and resuming the old device again hands nothing back.
    m.must("suspend snap", m.ctl("suspend", "snap"));
    m.must("resume snap", m.ctl("resume", "snap"));
    assert_eq!(m.status("snap"), format!("0 {SECTORS} snapshot Invalid"));
    let data = pseudo_random(1650, 5000);
    m.open_dev("origin").write_all_at(&data, 70_000).unwrap();
    image[70_000..75_000].copy_from_slice(&data);
    assert_same(
        "dev/origin after a write",
        &m.read_dev("origin").unwrap(),
        &image,
    );
    let done = format!("0 {SECTORS} snapshot-merge 16/2048 16");
    let deadline = Instant::now() + Duration::from_secs(30);
    while m.status("origin") != done {
        assert!(Instant::now() < deadline, "{}", m.status("origin"));
        std::thread::sleep(Duration::from_millis(10));
    }
    m.remove("snap");
    assert_same(
        "origin.img merged",
        &std::fs::read(m.path("origin.img")).unwrap(),
        &image,
    );
}

/// Waits up to 30 s for `status` of NAME to become `want`.
fn wait_status(m: &Mount, name: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = m.status(name);
        if s == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: status {s:?}, waiting for {want:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A merge killed with SIGKILL half-way: the snapshot-merge table created again after the
/// restart reads the snapshot's image at once and finishes the merge (the kernel's merge is
/// restartable: a run is copied to the origin and flushed before its exceptions are cleared
/// from the COW metadata). Three cycles, each killed at a seeded random moment.
#[test]
fn kill9_during_a_merge_and_the_merge_resumes() {
    const SECTORS: u64 = 4096;
    let mut m = Mount::new();
    write_pattern_image(&m.path("origin.img"), 15, SECTORS);
    zero_file(&m.path("c.cow"), 4 << 20);
    let (o, c) = (abs(&m, "origin.img"), abs(&m, "c.cow"));
    m.create("origin", &format!("0 {SECTORS} snapshot-origin {o}"));
    m.create("snap", &format!("0 {SECTORS} snapshot {o} {c} P 1"));
    let mut image = pattern_image(15, SECTORS);
    let mut rng = Rng::seeded(21);
    {
        // Many short runs: origin writes of one or two sectors at scattered places, and
        // writes to the snapshot.
        let of = m.open_dev("origin");
        let sf = m.open_dev("snap");
        for i in 0..600u64 {
            let off = rng.below(SECTORS - 2) * 512;
            let len = 512 * (1 + rng.below(2));
            let data = pseudo_random(1700 + i, len as usize);
            if i % 3 == 0 {
                sf.write_all_at(&data, off).unwrap();
                image[off as usize..(off + len) as usize].copy_from_slice(&data);
            } else {
                of.write_all_at(&data, off).unwrap();
            }
        }
        assert_same("dev/snap", &read_at(&sf, image.len()), &image);
    }
    m.remove("snap");
    let merge = format!("0 {SECTORS} snapshot-merge {o} {c} P 1");
    m.replace_table("origin", &merge);
    let done = format!("0 {SECTORS} snapshot-merge 2/8192 2");
    let mut killed_mid_merge = 0;
    for cycle in 0..3 {
        std::thread::sleep(Duration::from_millis(rng.below(60)));
        let before = m.status("origin");
        m.kill9();
        if before != done {
            killed_mid_merge += 1;
        }
        m.start(&[]);
        m.create("origin", &merge);
        assert_same(
            &format!("cycle {cycle}: dev/origin"),
            &m.read_dev("origin").unwrap(),
            &image,
        );
    }
    wait_status(&m, "origin", &done);
    assert_same("dev/origin merged", &m.read_dev("origin").unwrap(), &image);
    assert_same(
        "origin.img merged",
        &std::fs::read(m.path("origin.img")).unwrap(),
        &image,
    );
    eprintln!("{killed_mid_merge} of 3 kills landed during the merge");
}

/// Records written into a P snapshot device (not the origin), each followed by fsync, with
/// the daemon killed by SIGKILL at a seeded random moment: after the restart the snapshot
/// reads every completed record (its exceptions and their data were durable before the write
/// was acknowledged), and the origin is untouched. Records straddle chunks of 2 sectors, some
/// covering whole chunks (written straight into the COW file) and some not (copied first).
#[test]
fn kill9_keeps_fsynced_snapshot_writes() {
    const SECTORS: u64 = 4096;
    let mut m = Mount::new();
    write_pattern_image(&m.path("origin.img"), 16, SECTORS);
    zero_file(&m.path("c.cow"), 8 << 20);
    let saved = pattern_image(16, SECTORS);
    let o = abs(&m, "origin.img");
    let origin_table = format!("0 {SECTORS} snapshot-origin {o}");
    let snap_table = format!("0 {SECTORS} snapshot {o} {} P 2", abs(&m, "c.cow"));
    m.create("origin", &origin_table);
    m.create("snap", &snap_table);
    // Record k: 1500 bytes at byte 1700 * k + 300 (never overlapping).
    let count = (SECTORS * 512 - 2000) / 1700;
    let at = |k: usize| 1700 * k as u64 + 300;
    let record = |k: usize| pseudo_random(20_000 + k as u64, 1500);
    let mut image = saved.clone();
    let mut rng = Rng::seeded(23);
    let mut next = 0usize;
    for cycle in 0..4 {
        let done = Arc::new(AtomicUsize::new(next));
        let started = Arc::new(AtomicUsize::new(next));
        let writer = {
            let (done, started) = (done.clone(), started.clone());
            let path = m.mnt.join("dev/snap");
            std::thread::spawn(move || {
                let Ok(f) = OpenOptions::new()
                    .write(true)
                    .custom_flags(write_through_flags())
                    .open(path)
                else {
                    return;
                };
                for k in next..count as usize {
                    started.store(k + 1, Ordering::SeqCst);
                    let data = pseudo_random(20_000 + k as u64, 1500);
                    if f.write_all_at(&data, 1700 * k as u64 + 300).is_err()
                        || f.sync_all().is_err()
                    {
                        return;
                    }
                    done.store(k + 1, Ordering::SeqCst);
                }
            })
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while done.load(Ordering::SeqCst) == next {
            assert!(
                Instant::now() < deadline,
                "cycle {cycle}: the writer is stuck"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(rng.below(100)));
        m.kill9();
        writer.join().unwrap();
        let (done, started) = (done.load(Ordering::SeqCst), started.load(Ordering::SeqCst));
        for k in next..done {
            let off = at(k) as usize;
            image[off..off + 1500].copy_from_slice(&record(k));
        }
        m.start(&[]);
        m.create("origin", &origin_table);
        m.create("snap", &snap_table);
        let got = m.read_dev("snap").unwrap();
        // The record in flight may have landed, or not, or partly: take it as it reads.
        for k in done..started {
            let off = at(k) as usize;
            image[off..off + 1500].copy_from_slice(&got[off..off + 1500]);
        }
        assert_same(&format!("cycle {cycle}: dev/snap"), &got, &image);
        assert_same(
            &format!("cycle {cycle}: dev/origin"),
            &m.read_dev("origin").unwrap(),
            &saved,
        );
        next = started;
    }
}

/// lvm's activation of a new snapshot, step by step, with every device of this mount: the LV
/// `base` (linear over the disk) becomes a `snapshot-origin` over `base-real` (the same
/// sectors) by reload, and the snapshot's COW is `snap-cow`, a linear device over part of
/// another file, named as MNT/dev/snap-cow. The COW format lands in that file at the device's
/// offset.
#[test]
fn lvm_snapshot_activation_with_a_mapped_cow() {
    const SECTORS: u64 = 2048;
    let m = Mount::new();
    write_pattern_image(&m.path("disk.img"), 17, SECTORS);
    zero_file(&m.path("vg.img"), 3 << 20);
    let disk = abs(&m, "disk.img");
    let dev = |n: &str| format!("{}/dev/{n}", m.mnt.display());
    m.create("base", &format!("0 {SECTORS} linear {disk} 0"));
    let saved = pattern_image(17, SECTORS);
    let mut origin = saved.clone();
    // Written before the snapshot: part of what it must keep.
    let data = pseudo_random(1800, 10_000);
    m.open_dev("base").write_all_at(&data, 5000).unwrap();
    origin[5000..15_000].copy_from_slice(&data);
    let at_snapshot = origin.clone();
    m.create("base-real", &format!("0 {SECTORS} linear {disk} 0"));
    // The COW: 2 MiB of vg.img from 512 KiB on.
    m.create(
        "snap-cow",
        &format!("0 4096 linear {} 1024", abs(&m, "vg.img")),
    );
    m.must(
        "reload base",
        m.write_table(
            "reload",
            "base",
            &format!("0 {SECTORS} snapshot-origin {}\n", dev("base-real")),
        ),
    );
    m.must("suspend base", m.ctl("suspend", "base"));
    m.create(
        "snap",
        &format!(
            "0 {SECTORS} snapshot {} {} P 8",
            dev("base-real"),
            dev("snap-cow")
        ),
    );
    m.must("resume base", m.ctl("resume", "base"));
    assert_eq!(
        m.status("snap"),
        snap_status("snapshot", SECTORS, Store::Persistent, 8, 4096, 0)
    );
    let mut excepted = BTreeSet::new();
    let base = m.open_dev("base");
    for (i, (off, len)) in [(0u64, 4096u64), (7000, 20_000), (900_000, 100_000)]
        .into_iter()
        .enumerate()
    {
        let data = pseudo_random(1801 + i as u64, len as usize);
        base.write_all_at(&data, off).unwrap();
        origin[off as usize..(off + len) as usize].copy_from_slice(&data);
        excepted.extend(chunks_of(off, len, 8));
    }
    assert_same("dev/snap", &m.read_dev("snap").unwrap(), &at_snapshot);
    assert_same("dev/base", &read_at(&base, origin.len()), &origin);
    assert_same(
        "disk.img",
        &std::fs::read(m.path("disk.img")).unwrap(),
        &origin,
    );
    assert_eq!(
        m.status("snap"),
        snap_status(
            "snapshot",
            SECTORS,
            Store::Persistent,
            8,
            4096,
            excepted.len() as u64
        )
    );
    let vg = std::fs::read(m.path("vg.img")).unwrap();
    assert!(
        vg[..512 * 1024].iter().all(|&b| b == 0),
        "vg.img before the COW"
    );
    check_cow(
        "the COW in vg.img",
        &vg[512 * 1024..(512 + 2048) * 1024],
        &at_snapshot,
        &excepted,
    );
    // The devices under the snapshot are in use.
    drop(base);
    for busy in ["base-real", "snap-cow"] {
        let r = m.ctl("remove", busy);
        assert_eq!(
            r.err().and_then(|e| e.raw_os_error()),
            Some(libc::EBUSY),
            "{busy}"
        );
    }
}

/// A snapshot of a snapshot: `snap` is a writable snapshot of `origin.img`; `origin2` is a
/// `snapshot-origin` over MNT/dev/snap and `snap2` a snapshot of that. Writes through `origin2`
/// change `snap` (exceptions in its COW) after `snap2` saved the old data; writes through
/// `origin` change neither snapshot's image.
#[test]
fn snapshot_of_a_snapshot() {
    const SECTORS: u64 = 2048;
    let m = Mount::new();
    write_pattern_image(&m.path("origin.img"), 18, SECTORS);
    zero_file(&m.path("c1.cow"), 2 << 20);
    zero_file(&m.path("c2.cow"), 2 << 20);
    let o = abs(&m, "origin.img");
    let snap = format!("{}/dev/snap", m.mnt.display());
    m.create("origin", &format!("0 {SECTORS} snapshot-origin {o}"));
    m.create(
        "snap",
        &format!("0 {SECTORS} snapshot {o} {} P 8", abs(&m, "c1.cow")),
    );
    m.create("origin2", &format!("0 {SECTORS} snapshot-origin {snap}"));
    m.create(
        "snap2",
        &format!("0 {SECTORS} snapshot {snap} {} N 16", abs(&m, "c2.cow")),
    );
    let saved = pattern_image(18, SECTORS);
    let mut images: HashMap<&str, Vec<u8>> = ["origin", "snap", "snap2"]
        .into_iter()
        .map(|n| (n, saved.clone()))
        .collect();
    let files: HashMap<&str, File> = ["origin", "origin2", "snap2"]
        .into_iter()
        .map(|n| (n, m.open_dev(n)))
        .collect();
    let mut rng = Rng::seeded(29);
    for i in 0..90u64 {
        let len = 1 + rng.below(12_000);
        let off = rng.below(SECTORS * 512 - len);
        let data = pseudo_random(1900 + i, len as usize);
        let range = off as usize..(off + len) as usize;
        let (dev, changes) = match i % 3 {
            0 => ("origin", "origin"),
            1 => ("origin2", "snap"),
            _ => ("snap2", "snap2"),
        };
        files[dev].write_all_at(&data, off).unwrap();
        images.get_mut(changes).unwrap()[range].copy_from_slice(&data);
        if i % 15 == 14 {
            for (name, want) in [
                ("origin", &images["origin"]),
                ("snap", &images["snap"]),
                ("origin2", &images["snap"]),
                ("snap2", &images["snap2"]),
            ] {
                assert_same(
                    &format!("after {i}: dev/{name}"),
                    &m.read_dev(name).unwrap(),
                    want,
                );
            }
        }
    }
}

/// A read-only snapshot (lvm's `lvchange -p r` on a snapshot LV) is read-only to its users,
/// not to its exception store: the kernel opens the COW device with the table's mode, but the
/// store's own I/O (the header of a new COW device, the copy-outs that origin writes trigger,
/// their metadata) is not refused for that. So the snapshot stays valid as the origin is
/// written, keeps the original data, and still has it when created again read-write.
#[test]
fn read_only_snapshot_keeps_saving_origin_writes() {
    const SECTORS: u64 = 2048;
    let m = Mount::new();
    write_pattern_image(&m.path("origin.img"), 19, SECTORS);
    zero_file(&m.path("c.cow"), 1 << 20);
    zero_file(&m.path("fresh.cow"), 1 << 20);
    let o = abs(&m, "origin.img");
    let table = format!("0 {SECTORS} snapshot {o} {} P 8", abs(&m, "c.cow"));
    let saved = pattern_image(19, SECTORS);
    let mut origin = saved.clone();
    m.create("origin", &format!("0 {SECTORS} snapshot-origin {o}"));
    m.create("snap", &table);
    let of = m.open_dev("origin");
    let data = pseudo_random(2000, 4096);
    of.write_all_at(&data, 0).unwrap();
    origin[..4096].copy_from_slice(&data);
    m.remove("snap");
    m.must(
        "create snap read-only",
        create_read_only(&m, "snap", &table),
    );
    let w = OpenOptions::new()
        .write(true)
        .custom_flags(write_through_flags())
        .open(m.mnt.join("dev/snap"))
        .and_then(|f| f.write_all_at(&[0u8; 512], 0));
    assert!(w.is_err(), "a read-only snapshot took a write");
    // Origin writes into chunks the snapshot has not saved yet.
    for (i, off) in [40_960u64, 500_000].into_iter().enumerate() {
        let data = pseudo_random(2001 + i as u64, 4096);
        of.write_all_at(&data, off).unwrap();
        origin[off as usize..off as usize + 4096].copy_from_slice(&data);
    }
    let excepted: BTreeSet<u64> = [0, 10]
        .into_iter()
        .chain(chunks_of(500_000, 4096, 8))
        .collect();
    let want = snap_status(
        "snapshot",
        SECTORS,
        Store::Persistent,
        8,
        2048,
        excepted.len() as u64,
    );
    assert_eq!(m.status("snap"), want, "the read-only snapshot");
    assert_same("read-only dev/snap", &m.read_dev("snap").unwrap(), &saved);
    assert_same("dev/origin", &read_at(&of, origin.len()), &origin);
    m.remove("snap");
    m.create("snap", &table);
    assert_eq!(m.status("snap"), want, "created again");
    assert_same(
        "dev/snap created again",
        &m.read_dev("snap").unwrap(),
        &saved,
    );
    check_cow(
        "c.cow",
        &std::fs::read(m.path("c.cow")).unwrap(),
        &saved,
        &excepted,
    );
    // A read-only snapshot on a new COW file: the store writes its header.
    let fresh = format!("0 {SECTORS} snapshot {o} {} P 8", abs(&m, "fresh.cow"));
    m.must("read-only on a new COW", create_read_only(&m, "ro", &fresh));
    assert_same("dev/ro", &m.read_dev("ro").unwrap(), &origin);
    assert_eq!(
        m.status("ro"),
        snap_status("snapshot", SECTORS, Store::Persistent, 8, 2048, 0)
    );
}

/// A real filesystem: ext4 made on the origin device, a file written into it (debugfs, no
/// mount needed), a snapshot taken, the origin's filesystem changed; the snapshot holds a
/// clean filesystem with the old file (e2fsck -fn), the origin a clean one with the changes;
/// merged back, the origin is the snapshot's filesystem again.
#[test]
fn ext4_on_the_origin_snapshotted_changed_and_merged_back() {
    const SECTORS: u64 = 16384;
    let m = Mount::new();
    // e2fsprogs (Debian priority "required") provides these.
    m.ok("command -v mkfs.ext4 && command -v debugfs && command -v e2fsck");
    zero_file(&m.path("origin.img"), SECTORS * 512);
    zero_file(&m.path("c.cow"), 8 << 20);
    let (o, c) = (abs(&m, "origin.img"), abs(&m, "c.cow"));
    m.create("origin", &format!("0 {SECTORS} snapshot-origin {o}"));
    std::fs::write(m.path("a.txt"), pseudo_random(2100, 50_000)).unwrap();
    std::fs::write(m.path("b.txt"), pseudo_random(2101, 30_000)).unwrap();
    m.ok(r#"
        set -e
        mkfs.ext4 -q -F -b 1024 $MNT/dev/origin
        debugfs -w -R "write a.txt a" $MNT/dev/origin >/dev/null 2>&1
        e2fsck -fn $MNT/dev/origin >/dev/null
    "#);
    m.create("snap", &format!("0 {SECTORS} snapshot {o} {c} P 8"));
    m.ok(r#"
        set -e
        debugfs -w -R "rm a" $MNT/dev/origin >/dev/null 2>&1
        debugfs -w -R "write b.txt b" $MNT/dev/origin >/dev/null 2>&1
        e2fsck -fn $MNT/dev/origin >/dev/null
        e2fsck -fn $MNT/dev/snap >/dev/null
        debugfs -R "cat a" $MNT/dev/snap 2>/dev/null | cmp - a.txt
        debugfs -R "cat b" $MNT/dev/origin 2>/dev/null | cmp - b.txt
        debugfs -R "ls" $MNT/dev/snap 2>/dev/null | grep -qw a
        ! debugfs -R "ls" $MNT/dev/snap 2>/dev/null | grep -qw b
        ! debugfs -R "ls" $MNT/dev/origin 2>/dev/null | grep -qw a
    "#);
    let image = m.read_dev("snap").unwrap();
    m.remove("snap");
    m.replace_table("origin", &format!("0 {SECTORS} snapshot-merge {o} {c} P 8"));
    wait_status(
        &m,
        "origin",
        &format!("0 {SECTORS} snapshot-merge 16/16384 16"),
    );
    assert_same(
        "origin.img merged",
        &std::fs::read(m.path("origin.img")).unwrap(),
        &image,
    );
    m.ok(r#"
        set -e
        e2fsck -fn $MNT/dev/origin >/dev/null
        debugfs -R "cat a" $MNT/dev/origin 2>/dev/null | cmp - a.txt
        ! debugfs -R "ls" $MNT/dev/origin 2>/dev/null | grep -qw b
    "#);
}
