//! The persistent exception store across a remount, a kill -9 and a table handover: a P
//! snapshot's exceptions come back from its COW file (read here in the kernel's format,
//! independently of dmfs: `common::snapshot`), fsynced writes survive, a transient snapshot
//! starts afresh, and a reload hands the exceptions over to the new table.

mod common;
use common::snapshot::*;
use common::*;

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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
