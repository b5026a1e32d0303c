//! Refused snapshot tables: the kernel's errno and words, and nothing changed (devices, tables,
//! status, data, the origin and COW files).

mod common;
use common::snapshot::*;
use common::*;

use std::path::Path;

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
        // dmfs answers ENOENT for a missing backing file (docs/REFERENCE.md: the kernel says ENODEV).
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
