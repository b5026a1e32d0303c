//! The crash test: a persistent snapshot under a write+fsync loop on its origin, the daemon
//! killed with SIGKILL at a random moment, then remounted and the same tables created again.
//! After every cycle: every write whose fsync returned is on the origin, the snapshot still
//! reads the origin as it was when the snapshot was taken, and the COW device loads with its
//! header valid.
//!
//! CI runs a bounded number of cycles; `DMFS_CRASH_CYCLES=100` (what `scripts/crash-test.sh`
//! does) runs the full campaign, `DMFS_CRASH_SEED` changes the random moments and offsets, and
//! `DMFS_CRASH_KEEP=DIR` copies the final origin and COW images to DIR (for loading in the
//! kernel).

mod common;
use common::*;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BLOCK: usize = 4096;
const BLOCKS: u64 = 1024; // a 4 MiB origin
const ORIGIN_SECTORS: u64 = BLOCKS * 8;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What block `seq` writes: its sequence number in every word, so a torn or misplaced block
/// shows.
fn record(seq: u64) -> Vec<u8> {
    (0..BLOCK / 8)
        .flat_map(|w| (seq << 16 | w as u64).to_le_bytes())
        .collect()
}

/// The writer's journal: `(block, seq, fsynced)` for every write started, in order.
type Journal = Arc<Mutex<Vec<(u64, u64, bool)>>>;

/// Writes records to random blocks of the origin device, fsyncing each, until the daemon
/// dies under it (any error ends the loop).
fn writer(dev: std::path::PathBuf, journal: Journal, mut seed: u64, first_seq: u64) {
    let Ok(file) = OpenOptions::new().write(true).open(&dev) else {
        return;
    };
    let mut seq = first_seq;
    loop {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let block = seed % BLOCKS;
        journal.lock().unwrap().push((block, seq, false));
        if file
            .write_all_at(&record(seq), block * BLOCK as u64)
            .is_err()
            || file.sync_all().is_err()
        {
            return;
        }
        journal.lock().unwrap().last_mut().unwrap().2 = true;
        seq += 1;
    }
}

fn create_tables(m: &Mount) {
    m.ok(&format!(
        "echo \"0 {ORIGIN_SECTORS} snapshot-origin $PWD/origin.img\" > $MNT/ctl/create/origin
         echo \"0 {ORIGIN_SECTORS} snapshot $PWD/origin.img $PWD/cow.img P 8\" > $MNT/ctl/create/snap"
    ));
}

#[test]
fn sigkill_during_fsynced_writes_loses_nothing() {
    let cycles = env_u64("DMFS_CRASH_CYCLES", 8);
    let mut rng = Rng(env_u64("DMFS_CRASH_SEED", 0x5eed) | 1);
    let mut m = Mount::new();
    let original = pattern_image(0, ORIGIN_SECTORS);
    std::fs::write(m.path("origin.img"), &original).unwrap();
    // Room for every chunk of the origin: the snapshot never fills.
    let cow = std::fs::File::create(m.path("cow.img")).unwrap();
    cow.set_len(6 << 20).unwrap();
    drop(cow);
    create_tables(&m);

    // What each block must hold: the last fsynced record, or, for the one write in flight at
    // the kill, possibly that one.
    let mut durable: Vec<Vec<u8>> = (0..BLOCKS as usize)
        .map(|b| original[b * BLOCK..(b + 1) * BLOCK].to_vec())
        .collect();
    let mut seq = 1;
    let mut total_fsynced = 0;
    for cycle in 0..cycles {
        let journal: Journal = Arc::default();
        let handle = {
            let (dev, journal, seed) = (m.mnt.join("dev/origin"), journal.clone(), rng.next() | 1);
            std::thread::spawn(move || writer(dev, journal, seed, seq))
        };
        std::thread::sleep(Duration::from_millis(30 + rng.next() % 400));
        m.kill9();
        handle.join().unwrap();

        let journal = journal.lock().unwrap().clone();
        let mut in_flight = None;
        for &(block, s, fsynced) in &journal {
            if fsynced {
                durable[block as usize] = record(s);
                total_fsynced += 1;
            } else {
                in_flight = Some((block, s));
            }
            seq = s + 1;
        }

        m.start(&[]);
        create_tables(&m);
        let origin = std::fs::read(m.mnt.join("dev/origin")).unwrap();
        for b in 0..BLOCKS as usize {
            let got = &origin[b * BLOCK..(b + 1) * BLOCK];
            let maybe_new = in_flight
                .filter(|&(block, _)| block as usize == b)
                .map(|(_, s)| record(s));
            if got != durable[b].as_slice() && maybe_new.as_deref() != Some(got) {
                panic!(
                    "cycle {cycle}: block {b} lost its fsynced write (journal had {} writes)",
                    journal.len()
                );
            }
            if maybe_new.as_deref() == Some(got) {
                // The write in flight landed: it is what the block holds from now on.
                durable[b] = got.to_vec();
            }
        }
        let snap = std::fs::read(m.mnt.join("dev/snap")).unwrap();
        assert!(
            snap == original,
            "cycle {cycle}: the snapshot no longer reads the origin as it was"
        );
        let status = m.read("dm/snap/status");
        assert!(
            !status.contains("Invalid"),
            "cycle {cycle}: snapshot invalidated: {status}"
        );
        let header = std::fs::read(m.path("cow.img")).unwrap();
        assert_eq!(
            &header[0..8],
            b"SnAp\x01\0\0\0",
            "cycle {cycle}: COW header"
        );
    }
    assert!(total_fsynced > 0, "the writer never completed a write");
    if let Ok(keep) = std::env::var("DMFS_CRASH_KEEP") {
        let keep = std::path::Path::new(&keep);
        std::fs::create_dir_all(keep).unwrap();
        m.stop();
        std::fs::copy(m.path("origin.img"), keep.join("origin.img")).unwrap();
        std::fs::copy(m.path("cow.img"), keep.join("cow.img")).unwrap();
        std::fs::write(keep.join("snapshot.img"), &original).unwrap();
    }
    eprintln!("{cycles} kills, {total_fsynced} fsynced writes checked");
}
