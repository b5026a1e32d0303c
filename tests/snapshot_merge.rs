//! `snapshot-merge`: the origin device reads the snapshot's image at once and the merge copies it
//! back, beside another snapshot, with writes during the merge, taking a live snapshot over,
//! killed with SIGKILL half-way and resumed, and under ext4. Images are compared against models
//! the tests keep themselves; expected `status` lines come from the kernel's exception store
//! arithmetic (`common::snapshot`), never from dmfs.

mod common;
use common::snapshot::*;
use common::*;

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

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
    m.wait_status("origin", &done);
    assert_same("dev/origin merged", &m.read_dev("origin").unwrap(), &image);
    assert_same(
        "origin.img merged",
        &std::fs::read(m.path("origin.img")).unwrap(),
        &image,
    );
    eprintln!("{killed_mid_merge} of 3 kills landed during the merge");
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
    m.wait_status("origin", &format!("0 {SECTORS} snapshot-merge 16/16384 16"));
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
