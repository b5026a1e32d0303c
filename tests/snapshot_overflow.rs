//! Snapshots whose COW device fills up: the write that finds no room invalidates the snapshot
//! (P, PO and N stores), as the kernel does, and what an invalid snapshot then does: `status`
//! says `Invalid`, its I/O fails with EIO, the origin keeps working, and a persistent COW stays
//! marked invalid. Expected `status` lines come from the kernel's exception store arithmetic
//! (`common::snapshot`), never from dmfs.

mod common;
use common::snapshot::*;
use common::*;

use std::os::unix::fs::FileExt;

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
