//! Snapshots under concurrent I/O: writers on the origin and on a snapshot at once, readers
//! chasing the blocks being written; no origin write ever shows through a snapshot, and
//! `status` counts every chunk touched (the kernel's arithmetic: `common::snapshot`).

mod common;
use common::snapshot::*;
use common::*;

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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
