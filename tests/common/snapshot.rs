//! What the snapshot test files (snapshot_basics.rs, snapshot_merge.rs and the rest) share: the
//! kernel's exception store arithmetic (dm-snap-persistent.c, dm-snap-transient.c) for expected
//! `status` lines, a reader of the persistent COW format that is independent of dmfs, and small
//! file helpers.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{Mount, assert_same};

/// The absolute path of a file in the mount's scratch directory, as tables name it.
pub fn abs(m: &Mount, rel: &str) -> String {
    m.path(rel).display().to_string()
}

/// A zero-filled file of `bytes` bytes (a fresh COW device).
pub fn zero_file(path: &Path, bytes: u64) {
    File::create(path).unwrap().set_len(bytes).unwrap();
}

/// The first `len` bytes of an open file, read with pread(2).
pub fn read_at(f: &File, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, 0).unwrap();
    buf
}

/// The chunks (of `chunk` sectors) a write of `len` bytes at byte `off` touches: the kernel
/// sees whole sectors, so a partial sector counts as the sector.
pub fn chunks_of(off: u64, len: u64, chunk: u64) -> std::ops::RangeInclusive<u64> {
    let first = off / 512;
    let last = (off + len).div_ceil(512) - 1;
    first / chunk..=last / chunk
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Store {
    /// `P` / `PO`.
    Persistent,
    /// `N`.
    Transient,
}

/// The kernel's `persistent_usage` after `n` exceptions with `chunk`-sector chunks:
/// `next_free` starts at 2 (the header chunk and the first metadata area), each exception
/// takes the next chunk, skipping the metadata chunks (`next_free % (epa + 1) == 1`, the
/// kernel's `skip_metadata`); an area holds `epa = chunk bytes / 16` exceptions and the next
/// area is started once it is full. Returns (allocated, metadata) sectors.
pub fn persistent_usage(chunk: u64, n: u64) -> (u64, u64) {
    let epa = chunk * 512 / 16;
    let mut next_free = 2;
    for _ in 0..n {
        next_free += 1;
        if next_free % (epa + 1) == 1 {
            next_free += 1;
        }
    }
    (next_free * chunk, (n / epa + 2) * chunk)
}

/// The `dmsetup status` line of a snapshot of `len` sectors with `n` exceptions: the
/// persistent store as above, the transient one `next_free/size 0` (dm-snap-transient.c).
pub fn snap_status(
    target: &str,
    len: u64,
    store: Store,
    chunk: u64,
    cow_sectors: u64,
    n: u64,
) -> String {
    let (allocated, metadata) = match store {
        Store::Persistent => persistent_usage(chunk, n),
        Store::Transient => (n * chunk, 0),
    };
    format!("0 {len} {target} {allocated}/{cow_sectors} {metadata}")
}

pub fn store_of(ty: &str) -> Store {
    if ty.starts_with('N') {
        Store::Transient
    } else {
        Store::Persistent
    }
}

/// The errno of a failed I/O, for messages.
pub fn errno_of(r: &io::Result<Vec<u8>>) -> Option<i32> {
    r.as_ref().err().and_then(io::Error::raw_os_error)
}

/// A persistent COW file read back in the kernel's on-disk format (dm-snap-persistent.c),
/// independently of dmfs: chunk 0 holds the header (magic "SnAp", valid, version 1, chunk
/// size, little-endian u32s); metadata areas sit at chunk `1 + (epa + 1) * i`, each with up to
/// `epa = chunk bytes / 16` (old chunk, new chunk) u64 pairs; a pair whose new chunk is 0 ends
/// the list, and only a full area is followed by another.
pub struct Cow {
    pub valid: bool,
    pub chunk: u64,
    pub exceptions: Vec<(u64, u64)>,
}

pub fn parse_cow(bytes: &[u8]) -> Cow {
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!(&bytes[..4], b"SnAp", "COW magic");
    assert_eq!(word(8), 1, "COW version");
    let chunk = word(12) as u64;
    let chunk_bytes = chunk as usize * 512;
    let epa = chunk_bytes / 16;
    let mut exceptions = Vec::new();
    let mut area = 0;
    'areas: loop {
        let at = (1 + (epa + 1) * area) * chunk_bytes;
        for i in 0..epa {
            let e = at + i * 16;
            let old = u64::from_le_bytes(bytes[e..e + 8].try_into().unwrap());
            let new = u64::from_le_bytes(bytes[e + 8..e + 16].try_into().unwrap());
            if new == 0 {
                break 'areas;
            }
            exceptions.push((old, new));
        }
        area += 1;
    }
    Cow {
        valid: word(4) == 1,
        chunk,
        exceptions,
    }
}

/// Checks a persistent COW file against what the snapshot must hold: exactly the origin
/// chunks `excepted`, each new chunk a data chunk (not the header, not a metadata area, used
/// once), holding `image`'s bytes for that chunk (the snapshot's image: the original data, or
/// what was written to the snapshot).
pub fn check_cow(what: &str, cow: &[u8], image: &[u8], excepted: &BTreeSet<u64>) {
    let parsed = parse_cow(cow);
    assert!(parsed.valid, "{what}: COW marked invalid");
    let chunk_bytes = parsed.chunk as usize * 512;
    let epa = parsed.chunk * 512 / 16;
    let olds: BTreeSet<u64> = parsed.exceptions.iter().map(|e| e.0).collect();
    assert_eq!(
        olds.len(),
        parsed.exceptions.len(),
        "{what}: an origin chunk saved twice"
    );
    assert_eq!(&olds, excepted, "{what}: the chunks in the COW metadata");
    let mut news = BTreeSet::new();
    for &(old, new) in &parsed.exceptions {
        assert!(
            new >= 2 && new % (epa + 1) != 1 && news.insert(new),
            "{what}: chunk {old} saved in chunk {new}, a header, metadata or reused chunk"
        );
        let from = old as usize * chunk_bytes;
        let len = chunk_bytes.min(image.len() - from);
        let got = &cow[new as usize * chunk_bytes..][..len];
        assert_same(
            &format!("{what}: COW chunk {new} (origin chunk {old})"),
            got,
            &image[from..from + len],
        );
    }
}

/// Creates device NAME read-only: its table file is created without write permission.
pub fn create_read_only(m: &Mount, name: &str, table: &str) -> io::Result<()> {
    m.write_table_mode("create", name, &format!("{table}\n"), 0o444)
}
