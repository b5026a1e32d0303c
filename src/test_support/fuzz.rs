//! Bounded fuzzing of the two parsers that take hostile input: table lines (from anyone who can
//! write into `ctl/`) and persistent COW devices (from anywhere: an image handed over by someone
//! else). Each run mutates valid inputs with a seeded generator for a fixed number of rounds,
//! so CI runs the same bounded campaign every time; `DMFS_FUZZ_ROUNDS` raises the count and
//! `DMFS_FUZZ_SEED` changes the seed for longer runs by hand. The property is always the same:
//! no panic, no out-of-range access, and every refusal is an error with a reason.
//!
//! Crashers found are kept as regression cases in `REGRESSIONS` below.

use std::path::PathBuf;
use std::sync::Arc;

use super::rng::Rng;
use crate::backing::{Backing, DeviceResolver};
use crate::error::{DmError, DmResult};
use crate::snapshot::persistent::Persistent;
use crate::snapshot::{ExceptionStore, Snapshot, StoreType};
use crate::table::TableBuilder;
use crate::units::Sectors;

fn rounds(default: usize) -> usize {
    std::env::var("DMFS_FUZZ_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seed() -> u64 {
    std::env::var("DMFS_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_d0f5)
}

fn scratch(tag: &str, bytes: u64) -> PathBuf {
    let path = std::env::temp_dir().join(format!("dmfs-fuzz-{tag}-{}", std::process::id()));
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(bytes).unwrap();
    path
}

/// Opens the scratch files by the names A, B, C (and nothing else) for table lines.
struct Files(Vec<(String, PathBuf)>);

impl DeviceResolver for Files {
    fn open(&self, reference: &str) -> DmResult<Arc<Backing>> {
        let (_, path) = self
            .0
            .iter()
            .find(|(n, _)| n == reference)
            .ok_or_else(|| DmError::not_found(format!("{reference}: no such file")))?;
        Backing::open_path(path, true).map(Arc::new)
    }
}

const SEED_TABLES: &[&str] = &[
    "0 100 linear A 0",
    "0 64 striped 2 8 A 0 B 0",
    "0 100 zero",
    "0 100 error x y",
    "0 2048 snapshot-origin A",
    "0 2048 snapshot A C P 8",
    "0 2048 snapshot A C N 4",
    "0 2048 snapshot A C PO 16 1 discard_zeroes_cow",
    "0 2048 snapshot-merge A C P 8",
    "0 100 flakey A 0 0 5 5 corrupt_bio_byte 32 r 1 0",
    "0 100 flakey A 8 1 1 1 drop_writes",
    "0 100 flakey A 0 0 1 2 error_writes corrupt_bio_byte",
    "0 100 delay A 0 0 B 0 0 A 8 0",
    "0 64 unstriped 2 8 1 A 0",
    "0 60 unstriped 3 5 2 B 100",
];

const TOKENS: &[&str] = &[
    "0",
    "1",
    "8",
    "+8",
    "-1",
    "0x10",
    "18446744073709551615",
    "18446744073709551616",
    "4294967296",
    "2147483648",
    "A",
    "B",
    "C",
    "linear",
    "striped",
    "snapshot",
    "P",
    "N",
    "PO",
    "p",
    "",
    " ",
    "\t",
    "#",
    "\\",
    "\\ ",
    "é",
    "\u{0}",
    "discard_zeroes_cow",
    "2",
    "5",
    "6",
    "4294967295",
    "flakey",
    "delay",
    "unstriped",
    "drop_writes",
    "error_writes",
    "corrupt_bio_byte",
    "r",
    "w",
];

fn mutate_line(rng: &mut Rng, line: &str) -> String {
    let mut words: Vec<String> = line.split(' ').map(String::from).collect();
    for _ in 0..1 + rng.index(3) {
        let i = rng.index(words.len());
        match rng.index(5) {
            0 => words[i] = rng.pick(TOKENS).to_string(),
            1 => {
                words.remove(i);
                if words.is_empty() {
                    words.push(String::new());
                }
            }
            2 => words.insert(i, rng.pick(TOKENS).to_string()),
            3 => {
                let w = &mut words[i];
                if !w.is_empty() {
                    let at = rng.index(w.len());
                    if w.is_char_boundary(at) {
                        w.insert_str(at, rng.pick(TOKENS));
                    }
                }
            }
            _ => {
                let j = rng.index(words.len());
                words.swap(i, j);
            }
        }
    }
    words.join(" ")
}

/// Regression inputs found by earlier campaigns (none has crashed so far); each must be
/// refused or accepted cleanly.
const REGRESSIONS: &[&str] = &["0 2048 snapshot A C P 0", "0 2048 snapshot A C N 0"];

#[test]
fn table_lines_never_panic() {
    let a = scratch("a", 1 << 20);
    let b = scratch("b", 1 << 20);
    let c = scratch("c", 256 << 10);
    let files = Files(vec![
        ("A".into(), a.clone()),
        ("B".into(), b.clone()),
        ("C".into(), c.clone()),
    ]);
    // One mount's snapshots for the whole campaign: each table goes before the next comes.
    let origins = Arc::default();
    let mut rng = Rng(seed());
    let inputs = (0..rounds(3000)).map(|i| {
        let base = SEED_TABLES[i % SEED_TABLES.len()];
        mutate_line(&mut rng, base)
    });
    for line in REGRESSIONS.iter().map(|s| s.to_string()).chain(inputs) {
        // A fresh COW header for each snapshot line, so every run starts from the same state.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&c)
            .unwrap()
            .set_len(0)
            .unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&c)
            .unwrap()
            .set_len(256 << 10)
            .unwrap();
        let mut builder = TableBuilder::new();
        match builder.add_line(&line, &files, &origins) {
            Ok(()) => {
                if let Ok(table) = builder.table() {
                    table.resume_targets(&Default::default());
                    // As a suspend would: a delay target stops holding I/O back, so a
                    // mutated delay of days cannot stall the campaign.
                    table.presuspend_targets();
                    let _ = table.table_text();
                    let _ = table.status_text();
                    let mut buf = vec![0u8; 4096];
                    let _ = table.read(Sectors(0), &mut buf);
                    let _ = table.write(Sectors(0), &buf);
                }
            }
            Err(e) => assert!(!e.reason.is_empty(), "{line:?}: empty reason"),
        }
    }
    for p in [a, b, c] {
        std::fs::remove_file(p).unwrap();
    }
}

#[test]
fn cow_devices_never_panic() {
    let origin_path = scratch("origin", 512 << 10);
    let cow_path = scratch("cow", 256 << 10);
    let origin = Arc::new(Backing::open_path(&origin_path, true).unwrap());
    let origins = Arc::default();
    // A valid COW device with exceptions over several areas (chunk 2: 64 per area).
    let valid = {
        let cow = Arc::new(Backing::open_path(&cow_path, true).unwrap());
        let mut s = Persistent::open(cow, 2, &[512]).unwrap().store;
        for old in 0..150u64 {
            let new = s.prepare_exception().unwrap();
            s.add(old * 3 % 500, new);
            s.commit_area();
        }
        std::fs::read(&cow_path).unwrap()
    };
    let mut rng = Rng(seed() ^ 0xc0ffee);
    for _ in 0..rounds(400) {
        let mut image = valid.clone();
        for _ in 0..1 + rng.index(8) {
            // Mostly the header and the metadata areas, where the parser looks.
            let at = match rng.index(3) {
                0 => rng.index(16),
                1 => 1024 + rng.index(1024),
                _ => rng.index(image.len()),
            };
            image[at] = match rng.index(3) {
                0 => 0,
                1 => 0xff,
                _ => rng.next() as u8,
            };
        }
        std::fs::write(&cow_path, &image).unwrap();
        let cow = Arc::new(Backing::open_path(&cow_path, true).unwrap());
        let Ok(snap) = Snapshot::open(&origins, origin.clone(), cow, StoreType::Persistent, 2)
        else {
            continue;
        };
        // Whatever loaded must be readable (or fail with an error) everywhere, and mergeable.
        snap.activate(1, origin.size(), false, &Default::default());
        let mut buf = vec![0u8; 64 << 10];
        for at in (0..origin.size().0).step_by(128) {
            let _ = snap.read(at, &mut buf);
        }
        let _ = snap.write(0, &buf[..4096], false);
        for _ in 0..200 {
            match snap.merge_step() {
                Ok(true) => {}
                _ => break,
            }
        }
        let _ = snap.status();
    }
    std::fs::remove_file(origin_path).unwrap();
    std::fs::remove_file(cow_path).unwrap();
}
