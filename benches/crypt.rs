//! Micro-benchmark of the dm-crypt engine (`dmfs::crypt`) on one core: GB/s of encrypting and
//! decrypting a 1 MiB buffer in place, for the common specifications and sector sizes.
//!
//!   cargo bench --bench crypt            (benches/crypt.sh runs it beside the device rows)
//!
//! Each row is the best of several timed passes of at least `MIN_TIME`, so a busy neighbour
//! on the machine lowers the figure less.

use std::time::{Duration, Instant};

use dmfs::crypt::{CipherSpec, SectorCipher};

const BUF: usize = 1 << 20;
const MIN_TIME: Duration = Duration::from_millis(300);
const PASSES: usize = 5;

fn gbps(mut op: impl FnMut()) -> f64 {
    let mut best = 0.0f64;
    for _ in 0..PASSES {
        let start = Instant::now();
        let mut bytes = 0usize;
        while start.elapsed() < MIN_TIME {
            op();
            bytes += BUF;
        }
        best = best.max(bytes as f64 / start.elapsed().as_secs_f64() / 1e9);
    }
    best
}

fn main() {
    // `cargo test --all-targets` runs bench targets too, without `--bench`: nothing to time.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let key: Vec<u8> = (0..64u8).collect();
    println!("| spec | key bits | sector | encrypt GB/s | decrypt GB/s |");
    println!("| --- | --- | --- | --- | --- |");
    for (spec, key_len, sector) in [
        ("aes-xts-plain64", 64, 512),
        ("aes-xts-plain64", 64, 4096),
        ("aes-xts-plain64", 32, 512),
        ("aes-cbc-essiv:sha256", 32, 512),
        ("aes-ecb", 32, 512),
    ] {
        let parsed = CipherSpec::parse(spec).unwrap();
        let engine = SectorCipher::new(&parsed, &key[..key_len], sector, false).unwrap();
        let mut buf = vec![0x5au8; BUF];
        let mut sector_no = 0u64;
        let enc = gbps(|| {
            engine.encrypt(&mut buf, sector_no);
            sector_no = sector_no.wrapping_add((BUF / 512) as u64);
        });
        let dec = gbps(|| engine.decrypt(&mut buf, 0));
        println!(
            "| {spec} | {} | {sector} | {enc:.2} | {dec:.2} |",
            key_len * 8
        );
    }
}
