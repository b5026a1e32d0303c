//! Snapshots end to end, the basics: the classic `snapshot-origin` + `snapshot` tables (P, PO,
//! N), lvm's layouts (a stack over a linear device, a COW on a mapped device), a snapshot of a
//! snapshot, a read-only snapshot, a partial last chunk and a snapshot shorter than its origin,
//! and a seeded model of one origin with several writable snapshots. Data is written with dd and
//! pwrite(2), and every image is compared against models the tests keep themselves; expected
//! `status` lines are computed from the kernel's exception store arithmetic
//! (dm-snap-persistent.c, dm-snap-transient.c; `common::snapshot`), never read back from dmfs.

mod common;
use common::snapshot::*;
use common::*;

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};

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
