//! Test-only micro-benchmarks of the request path outside FUSE: cost per request as tables and
//! exception stores grow (benches/run.sh measures the same through FUSE). Ignored by default;
//! run them in a release build, one at a time:
//!
//! ```text
//! cargo test --release --bin dmfs microbench -- --ignored --nocapture --test-threads 1
//! ```
//!
//! They print nanoseconds per 4 KiB read; they assert nothing about time (benchmarks prove speed; tests do not time).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::rng::Rng; // the same request sequence every run
use crate::backing::{Backing, DeviceResolver};
use crate::error::{DmError, DmResult};
use crate::table::{Table, TableBuilder};
use crate::units::Sectors;

/// Opens any path it is given, read-write.
struct Paths;

impl DeviceResolver for Paths {
    fn open(&self, reference: &str) -> DmResult<Arc<Backing>> {
        Backing::open_path(Path::new(reference), true)
            .map(Arc::new)
            .map_err(|e| DmError::invalid(e.reason))
    }
}

/// A table of its own mount (these benchmarks only read: no table reaches another's snapshots).
fn table(lines: impl Iterator<Item = String>) -> Table {
    let origins = Arc::default();
    let mut b = TableBuilder::new();
    for l in lines {
        b.add_line(&l, &Paths, &origins).unwrap();
    }
    b.table().unwrap()
}

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("dmfs-bench-{tag}-{}", std::process::id()));
        Scratch(p)
    }
    fn sparse(tag: &str, bytes: u64) -> Scratch {
        let s = Scratch::new(tag);
        std::fs::File::create(&s.0).unwrap().set_len(bytes).unwrap();
        s
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Nanoseconds per 4 KiB read of each table at random 4 KiB-aligned places in its first
/// `span` sectors: the best of `ROUNDS` rounds of `n` reads, the tables taking turns, so a
/// busy machine (2 cores, shared) disturbs every table alike.
const ROUNDS: usize = 7;

fn ns_per_read(tables: &[(&str, &Table, u64)], n: u32) {
    let mut buf = vec![0u8; 4096];
    let mut best = vec![f64::MAX; tables.len()];
    for _ in 0..ROUNDS {
        for (i, (_, t, span)) in tables.iter().enumerate() {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
            let pages = span / 8;
            let start = Instant::now();
            for _ in 0..n {
                t.read(Sectors((rng.next() % pages) * 8), &mut buf).unwrap();
            }
            let ns = start.elapsed().as_nanos() as f64 / f64::from(n);
            best[i] = best[i].min(ns);
        }
    }
    for ((what, _, _), ns) in tables.iter().zip(best) {
        println!("{what:<40} {ns:7.0} ns/read (best of {ROUNDS} x {n})");
    }
}

/// The scale row "table: 10 lines vs 10,000 lines" of benches/run.sh, outside FUSE: random
/// 4 KiB reads through N linear lines onto a 64 MiB file (line lengths a multiple of 8
/// sectors, so no read crosses a line; lines wrap around the file); and, lookup only, through
/// N zero lines.
#[test]
#[ignore]
fn microbench_table_lines() {
    const SECTORS: u64 = 131_072; // 64 MiB
    let img = Scratch::sparse("lines", SECTORS * 512);
    // Data in the page cache, as in benches/run.sh.
    std::fs::write(&img.0, vec![1u8; (SECTORS * 512) as usize]).unwrap();
    let line = |i: u64, per: u64| {
        let at = (i * per) % (SECTORS - per) / 8 * 8;
        format!("{} {per} linear {} {at}", i * per, img.path())
    };
    let (few, many) = (13_104u64, 208u64); // sectors per line: 10 or 10,000 lines
    let zero10 = table((0..10).map(|i| format!("{} {few} zero", i * few)));
    let zero10k = table((0..10_000).map(|i| format!("{} {many} zero", i * many)));
    ns_per_read(
        &[
            ("zero, 10 lines", &zero10, few * 10),
            ("zero, 10000 lines", &zero10k, many * 10_000),
        ],
        2_000_000,
    );
    drop((zero10, zero10k));
    let linear10 = table((0..10).map(|i| line(i, few)));
    let linear10k = table((0..10_000).map(|i| line(i, many)));
    ns_per_read(
        &[
            ("linear, 10 lines", &linear10, few * 10),
            ("linear, 10000 lines", &linear10k, many * 10_000),
        ],
        300_000,
    );
}

/// The scale row "snapshot: 1,000 vs 1,000,000 exceptions": COW files from
/// benches/make-cow.py (chunk 1 sector, origin chunk 2k remapped), random 4 KiB reads in the
/// first MiB, where both stores remap the same sectors. With DMFS_BENCH_BIG_COW set, the COW
/// file with 1,000 exceptions is made as large (sparse) as the other, so only the store's size
/// differs, not the file's.
#[test]
#[ignore]
fn microbench_snapshot_exceptions() {
    let origin = Scratch::sparse("origin", 2_000_000 * 2 * 512 + (1 << 20));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/make-cow.py");
    let mut tables = Vec::new();
    for n in [1_000u64, 1_000_000] {
        let cow = Scratch::new(&format!("cow{n}"));
        let ok = std::process::Command::new("python3")
            .args([script, &n.to_string(), cow.path()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "make-cow.py failed");
        if std::env::var_os("DMFS_BENCH_BIG_COW").is_some() {
            // Both COW files as large (sparse) as the one with a million exceptions.
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&cow.0)
                .unwrap();
            f.set_len(f.metadata().unwrap().len().max(528_017_408))
                .unwrap();
        }
        let start = Instant::now();
        let t = table(std::iter::once(format!(
            "0 {} snapshot {} {} P 1",
            4_000_000,
            origin.path(),
            cow.path()
        )));
        t.resume_targets(&crate::device_link::DeviceLink::default());
        println!("loaded {n} exceptions in {:?}", start.elapsed());
        tables.push((n, t, cow));
    }
    let named: Vec<(String, &Table, u64)> = tables
        .iter()
        .map(|(n, t, _)| (format!("snapshot, {n} exceptions"), t, 2048))
        .collect();
    let named: Vec<(&str, &Table, u64)> =
        named.iter().map(|(s, t, n)| (s.as_str(), *t, *n)).collect();
    ns_per_read(&named, 300_000);
}

/// The lookups alone, and whether an `lru` cache in front of them earns its keep (the issue
/// asks for one "where a cache earns its keep"). Exceptions: 8 consecutive chunk lookups per
/// request, as a 4 KiB read of a chunk-size-1 snapshot makes, in a hot region of 2,048 chunks
/// (every other one remapped) of a table of 1,000 or 1,000,000; through std's SipHash map, the
/// snapshot's `ChunkMap`, and an `lru::LruCache` (4,096 entries, behind a mutex as request
/// threads would share it; every lookup here hits it, its best case) in front of a
/// `ChunkMap`. Table lines: the entry index for a random 4 KiB-aligned sector of a
/// 10,000-line table, by binary search over the line starts, and through an LRU of 4,096
/// recently used 4 KiB pages in front of it.
#[test]
#[ignore]
fn microbench_lookup_structures() {
    use crate::snapshot::chunk_hash::ChunkMap;
    use parking_lot::Mutex;
    use std::collections::HashMap;
    use std::hint::black_box;
    use std::num::NonZeroUsize;

    const N: u32 = 2_000_000;
    let time = |what: &str, range: u64, f: &mut dyn FnMut(u64) -> u64| {
        let mut best = f64::MAX;
        for _ in 0..ROUNDS {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
            let start = Instant::now();
            let mut acc = 0u64;
            for _ in 0..N {
                acc = acc.wrapping_add(f(rng.next() % range));
            }
            black_box(acc);
            best = best.min(start.elapsed().as_nanos() as f64 / f64::from(N));
        }
        println!("{what:<52} {best:6.1} ns/request (best of {ROUNDS} x {N})");
    };
    for n in [1_000u64, 1_000_000] {
        let mut sip: HashMap<u64, u64> = HashMap::new();
        let mut fast: ChunkMap<u64> = ChunkMap::default();
        for k in 0..n {
            sip.insert(2 * k, k + 7);
            fast.insert(2 * k, k + 7);
        }
        let lru = Mutex::new(lru::LruCache::<u64, Option<u64>>::new(
            NonZeroUsize::new(4096).unwrap(),
        ));
        time(
            &format!("{n} exceptions, SipHash HashMap, 8 lookups"),
            256,
            &mut |c| {
                let c = c * 8;
                (c..c + 8).filter_map(|k| sip.get(&k)).sum()
            },
        );
        time(
            &format!("{n} exceptions, ChunkMap, 8 lookups"),
            256,
            &mut |c| {
                let c = c * 8;
                (c..c + 8).filter_map(|k| fast.get(&k)).sum()
            },
        );
        time(
            &format!("{n} exceptions, LRU then ChunkMap, 8 lookups"),
            256,
            &mut |c| {
                let c = c * 8;
                (c..c + 8)
                    .filter_map(|k| {
                        let mut cache = lru.lock();
                        if let Some(v) = cache.get(&k) {
                            return *v;
                        }
                        let v = fast.get(&k).copied();
                        cache.put(k, v);
                        v
                    })
                    .sum()
            },
        );
    }
    let starts: Vec<u64> = (0..10_000u64).map(|i| i * 208).collect();
    let lru = Mutex::new(lru::LruCache::<u64, usize>::new(
        NonZeroUsize::new(4096).unwrap(),
    ));
    let index = |s: u64| starts.partition_point(|&x| x <= s) - 1;
    // Pages of the whole table (what fio's random reads over 1000M touch), or a hot set of
    // 1,024 pages (the LRU's best case: every lookup hits).
    for (set, pages) in [("all pages", 10_000 * 208 / 8), ("1024 hot pages", 1024)] {
        time(
            &format!("10000 lines, {set}, binary search of starts"),
            pages,
            &mut |p| index(p * 8) as u64,
        );
        lru.lock().clear();
        time(
            &format!("10000 lines, {set}, LRU of pages, then search"),
            pages,
            &mut |p| {
                let mut cache = lru.lock();
                if let Some(&i) = cache.get(&p) {
                    return i as u64;
                }
                let i = index(p * 8);
                cache.put(p, i);
                i as u64
            },
        );
    }
}
