//! The page-cache modes of `dmfs mount --cache MODE`, through real mounts, and the coherence
//! they promise: whenever bytes of a device change (a write through any device that maps the
//! same backing bytes, a device stacked on another, a snapshot-origin and its snapshot, one file
//! mapped twice by one table, a reload + resume, a snapshot merge), every dev/ file showing those
//! bytes drops its cached pages before the write that changed them returns (page-cache), or when
//! the written pages reach the daemon (writeback: so at the latest after `sync`).
//!
//! Each scenario runs in the daemon's default mode (no `--cache`: page-cache), in `direct` and
//! in `writeback`, whatever `$DMFS_TEST_CACHE` says: the mounts here name their mode. Reads are
//! made through read-only opens (`cat`, `python3` os.pread/mmap), which page-cache mode serves
//! from the kernel's page cache; `fincore` first proves the pages really are cached (or, in
//! direct mode, that nothing is), so a pass means the cache was invalidated, not bypassed.
//! Every command runs under `timeout`: a daemon that deadlocks on an invalidation fails the test
//! instead of hanging it.

mod common;
use common::*;

use std::process::Command;

/// Every command that touches the mount runs under this.
const TIMEOUT: &str = "timeout -k 5 60";

/// A mount in `mode` (None: the daemon's default, no `--cache` at all).
fn mount(mode: Option<CacheMode>) -> (Mount, CacheMode) {
    match mode {
        None => (Mount::with_exact_args(&[]), CacheMode::PageCache),
        Some(c) => (Mount::with_exact_args(&["--cache", c.arg()]), c),
    }
}

/// Runs a script that must succeed; its stdout as bytes.
fn run(m: &Mount, script: &str) -> Vec<u8> {
    m.ok_bytes(script)
}

/// The whole of dev/NAME, read by `cat` (a read-only open).
fn read_dev(m: &Mount, name: &str) -> Vec<u8> {
    run(m, &format!("{TIMEOUT} cat $MNT/dev/{name}"))
}

/// How many pages of dev/NAME the kernel holds in its page cache (`fincore`, which opens the
/// file read-only).
fn cached_pages(m: &Mount, name: &str) -> u64 {
    let out = run(
        m,
        &format!("{TIMEOUT} fincore --bytes --noheadings --output PAGES $MNT/dev/{name}"),
    );
    let text = String::from_utf8_lossy(&out);
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("fincore said {text:?}"))
}

/// The size of dev/NAME a fresh `stat` shows.
fn dev_size(m: &Mount, name: &str) -> u64 {
    let out = run(m, &format!("{TIMEOUT} stat -c %s $MNT/dev/{name}"));
    String::from_utf8_lossy(&out).trim().parse().unwrap()
}

/// The size of dev/NAME once it is `want`, or after 5 s of retries: a close's release reaches
/// dmfs after `close(2)` returns, and what dmfs does at the last close comes a little later.
fn dev_size_settling_at(m: &Mount, name: &str, want: u64) -> u64 {
    let out = run(
        m,
        &format!(
            "for i in $(seq 100); do
                 test $({TIMEOUT} stat -c %s $MNT/dev/{name}) = {want} && break
                 sleep 0.05
             done"
        ),
    );
    assert!(out.is_empty());
    dev_size(m, name)
}

/// Reads all of dev/NAME through a read-only open, then checks with `fincore` that the mode
/// did what it says: pages cached in page-cache and writeback modes, none in direct mode.
fn warm(m: &Mount, mode: CacheMode, name: &str) {
    run(m, &format!("{TIMEOUT} cat $MNT/dev/{name} > /dev/null"));
    let pages = cached_pages(m, name);
    match mode {
        CacheMode::Direct => assert_eq!(
            pages, 0,
            "--cache direct: dev/{name} has {pages} pages in the page cache after a read"
        ),
        CacheMode::PageCache | CacheMode::Writeback => assert!(
            pages > 0,
            "--cache {}: a read-only read of dev/{name} left nothing in the page cache, so \
             this test could not tell an invalidated cache from an unused one",
            mode.arg()
        ),
    }
}

/// Writes `data` at byte `off` of dev/DEV with one dd write(2) through a fresh open for
/// writing. In writeback mode the write may sit in the kernel's cache until `sync`: that is
/// the point where the mode promises the other devices see it, so a `sync` follows.
fn dd_write(m: &Mount, mode: CacheMode, dev: &str, off: u64, data: &[u8]) {
    std::fs::write(m.path("data.bin"), data).unwrap();
    let sync = if mode == CacheMode::Writeback {
        format!(" && {TIMEOUT} sync")
    } else {
        String::new()
    };
    run(
        m,
        &format!(
            "{TIMEOUT} dd if=data.bin of=$MNT/dev/{dev} bs=1M oflag=seek_bytes seek={off} \
             conv=notrunc status=none{sync}"
        ),
    );
}

/// A device whose table maps byte ranges of the scene's one backing file: (sectors, file
/// sector) per line, in order. A device stacked on another is described by the file sectors
/// it reaches through it.
struct Dev {
    name: &'static str,
    lines: Vec<(u64, u64)>,
}

impl Dev {
    fn size(&self) -> u64 {
        self.lines.iter().map(|l| l.0).sum::<u64>() * 512
    }

    /// The byte of the backing file that byte `b` of the device shows.
    fn file_byte(&self, b: u64) -> usize {
        let s = b / 512;
        let mut start = 0;
        for &(len, off) in &self.lines {
            if s < start + len {
                return ((off + s - start) * 512 + b % 512) as usize;
            }
            start += len;
        }
        panic!("byte {b} is past the end of dev/{}", self.name);
    }

    fn expect(&self, file: &[u8]) -> Vec<u8> {
        (0..self.size()).map(|b| file[self.file_byte(b)]).collect()
    }
}

/// Linear devices over one backing file, and a model of that file kept by the test.
struct Scene<'a> {
    m: &'a Mount,
    mode: CacheMode,
    file: &'static str,
    model: Vec<u8>,
    devs: Vec<Dev>,
    writes: u64,
}

impl<'a> Scene<'a> {
    /// A pattern image `file` of `sectors` sectors.
    fn new(m: &'a Mount, mode: CacheMode, file: &'static str, sectors: u64) -> Scene<'a> {
        let model = pattern_image(0, sectors);
        std::fs::write(m.path(file), &model).unwrap();
        Scene {
            m,
            mode,
            file,
            model,
            devs: Vec::new(),
            writes: 0,
        }
    }

    /// Creates dev/NAME from `table` (shell text: $PWD and $MNT expand) and checks its bytes.
    fn create(&mut self, name: &'static str, table: &str, lines: &[(u64, u64)]) {
        run(
            self.m,
            &format!("printf \"{table}\\n\" > $MNT/ctl/create/{name}"),
        );
        self.devs.push(Dev {
            name,
            lines: lines.to_vec(),
        });
        let dev = self.devs.last().unwrap();
        assert_same(
            &format!("dev/{name} as created"),
            &read_dev(self.m, name),
            &dev.expect(&self.model),
        );
    }

    fn dev(&self, name: &str) -> &Dev {
        self.devs.iter().find(|d| d.name == name).unwrap()
    }

    /// Fills the page cache of every device.
    fn warm_all(&self) {
        for d in &self.devs {
            warm(self.m, self.mode, d.name);
        }
    }

    /// Writes `len` fresh bytes at byte `off` of dev/DEV (after warming every device), and
    /// applies them to the model.
    fn write(&mut self, dev: &str, off: u64, len: usize) {
        self.warm_all();
        self.writes += 1;
        let data = pseudo_random(self.writes * 7919 + off, len);
        dd_write(self.m, self.mode, dev, off, &data);
        let d = self.dev(dev);
        let at: Vec<usize> = (0..len as u64).map(|i| d.file_byte(off + i)).collect();
        for (i, b) in at.into_iter().enumerate() {
            self.model[b] = data[i];
        }
        self.check(&format!(
            "after writing {len} bytes at byte {off} of dev/{dev}"
        ));
    }

    /// Every device reads as the model says, and so does the backing file itself.
    fn check(&self, context: &str) {
        for d in &self.devs {
            assert_same(
                &format!("--cache {}: {context}: dev/{}", self.mode.arg(), d.name),
                &read_dev(self.m, d.name),
                &d.expect(&self.model),
            );
        }
        assert_same(
            &format!("--cache {}: {context}: {}", self.mode.arg(), self.file),
            &std::fs::read(self.m.path(self.file)).unwrap(),
            &self.model,
        );
    }
}

/// One #[test] per mode for a scenario `fn(Option<CacheMode>)`: `NAME::default` (no --cache),
/// `NAME::direct`, `NAME::writeback`.
macro_rules! in_every_mode {
    ($name:ident) => {
        mod $name {
            use super::*;
            #[test]
            fn default() {
                super::$name(None)
            }
            #[test]
            fn direct() {
                super::$name(Some(CacheMode::Direct))
            }
            #[test]
            fn writeback() {
                super::$name(Some(CacheMode::Writeback))
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// 1. Two linear devices over one file, overlapping in part.
// ---------------------------------------------------------------------------------------------

/// a maps file sectors 0..512, b maps 131..731 (131 sectors is 67072 bytes: not a page
/// multiple, so one page of a covers parts of two pages of b). The overlap is a 131..512 =
/// b 0..381. Writes straddle the overlap's edges and b's page boundaries; after each, every
/// device (warmed just before) and the file read as the model says, so bytes outside the
/// overlap are checked unchanged too.
fn linear_aliases(mode: Option<CacheMode>) {
    let (m, mode) = mount(mode);
    let mut s = Scene::new(&m, mode, "a.img", 1024);
    s.create("a", "0 512 linear $PWD/a.img 0", &[(512, 0)]);
    s.create("b", "0 600 linear $PWD/a.img 131", &[(600, 131)]);
    // a -> b: starts before the overlap, ends inside it.
    s.write("a", 120 * 512 + 7, 20 * 512);
    // a -> b: 20 bytes inside one page of a, across b's page boundary 3.
    s.write("a", 67072 + 3 * 4096 - 10, 20);
    // a -> b: the last bytes of a.
    s.write("a", 512 * 512 - 3000, 3000);
    // b -> a: starts inside the overlap, runs past a's end (file bytes a does not map).
    s.write("b", 370 * 512 + 100, 20 * 512);
    // b -> a: the first bytes of b, and one byte.
    s.write("b", 0, 700);
    s.write("b", 4095, 1);
    // b only: outside the overlap; a must not change.
    s.write("b", 500 * 512, 8192);
}
in_every_mode!(linear_aliases);

/// A striped device whose two stripes are both in a.img (at sectors 0 and 512, chunks of 8
/// sectors) beside a linear device over all of a.img: striped targets are not one to one, so
/// this is the daemon's conservative path.
fn striped_alias(mode: Option<CacheMode>) {
    let (m, mode) = mount(mode);
    let mut s = Scene::new(&m, mode, "a.img", 1024);
    let stripes: Vec<(u64, u64)> = (0..32u64)
        .map(|c| (8, if c % 2 == 0 { 0 } else { 512 } + (c / 2) * 8))
        .collect();
    s.create(
        "s",
        "0 256 striped 2 8 $PWD/a.img 0 $PWD/a.img 512",
        &stripes,
    );
    s.create("l", "0 1024 linear $PWD/a.img 0", &[(1024, 0)]);
    s.write("l", 3 * 512 + 17, 2000); // stripe 0, chunk 0
    s.write("l", 515 * 512, 4096); // stripe 1, chunks 1 and 3
    s.write("s", 7 * 512 + 300, 5000); // across chunks 0..2, both stripes
    s.write("s", 200 * 512, 1); // one byte
    s.write("l", 900 * 512, 512); // outside s; s must not change
}
in_every_mode!(striped_alias);

// ---------------------------------------------------------------------------------------------
// 2. A device stacked on another.
// ---------------------------------------------------------------------------------------------

/// a maps file sectors 64..576; c = linear over $MNT/dev/a from a's sector 101, so c shows
/// file sectors 165..465.
fn stacked(mode: Option<CacheMode>) {
    let (m, mode) = mount(mode);
    let mut s = Scene::new(&m, mode, "a.img", 1024);
    s.create("a", "0 512 linear $PWD/a.img 64", &[(512, 64)]);
    s.create("c", "0 300 linear $MNT/dev/a 101", &[(300, 165)]);
    // a -> c: starts before c's window, ends inside it.
    s.write("a", 95 * 512 + 11, 15 * 512);
    // a -> c: inside c's window, across one of c's page boundaries.
    s.write("a", 101 * 512 + 2 * 4096 - 5, 10);
    // c -> a: c's end.
    s.write("c", 290 * 512, 10 * 512);
    // c -> a: unaligned, several pages.
    s.write("c", 3333, 12345);
    // a only: outside c's window; c must not change.
    s.write("a", 450 * 512, 4096);
}
in_every_mode!(stacked);

// ---------------------------------------------------------------------------------------------
// 3. One file mapped twice by one table.
// ---------------------------------------------------------------------------------------------

/// d's lines 0 and 1 both map file sectors 0..200: a write through either half shows in the
/// other, and a write across the line boundary changes both ends of the file range.
fn mapped_twice(mode: Option<CacheMode>) {
    let (m, mode) = mount(mode);
    let mut s = Scene::new(&m, mode, "a.img", 256);
    s.create(
        "d",
        "0 200 linear $PWD/a.img 0\\n200 200 linear $PWD/a.img 0",
        &[(200, 0), (200, 0)],
    );
    s.write("d", 1000, 3000); // line 0 -> read in line 1
    s.write("d", 200 * 512 + 50_000, 7000); // line 1 -> read in line 0
    s.write("d", 200 * 512 - 100, 200); // across the boundary
}
in_every_mode!(mapped_twice);

// ---------------------------------------------------------------------------------------------
// 4. reload + resume.
// ---------------------------------------------------------------------------------------------

/// x is reloaded onto other files and sizes; y is stacked on x. A warmed reader of either sees
/// the old table until the resume and the new one after it, sizes included.
fn reload_resume(mode: Option<CacheMode>) {
    let (m, mode) = mount(mode);
    let a = pattern_image(0, 512);
    let b = pattern_image(1, 512);
    std::fs::write(m.path("a.img"), &a).unwrap();
    std::fs::write(m.path("b.img"), &b).unwrap();
    run(
        &m,
        "echo \"0 256 linear $PWD/a.img 0\" > $MNT/ctl/create/x && \
         echo \"0 50 linear $MNT/dev/x 10\" > $MNT/ctl/create/y",
    );
    let sect = |img: &[u8], from: u64, n: u64| {
        img[(from * 512) as usize..((from + n) * 512) as usize].to_vec()
    };
    let mut x_want = sect(&a, 0, 256);
    // (table, what x then reads)
    let steps: Vec<(String, Vec<u8>)> = vec![
        ("0 256 linear $PWD/b.img 0".into(), sect(&b, 0, 256)),
        ("0 384 linear $PWD/b.img 16".into(), sect(&b, 16, 384)),
        ("0 100 linear $PWD/a.img 7".into(), sect(&a, 7, 100)),
        (
            "0 64 linear $PWD/b.img 0\\n64 64 linear $PWD/a.img 300".into(),
            [sect(&b, 0, 64), sect(&a, 300, 64)].concat(),
        ),
    ];
    for (i, (table, want)) in steps.into_iter().enumerate() {
        warm(&m, mode, "x");
        warm(&m, mode, "y");
        run(&m, &format!("printf \"{table}\\n\" > $MNT/ctl/reload/x"));
        // Loaded, not live: the readers still see the old table.
        assert_same(
            &format!("step {i}: dev/x before resume"),
            &read_dev(&m, "x"),
            &x_want,
        );
        assert_same(
            &format!("step {i}: dev/y before resume"),
            &read_dev(&m, "y"),
            &x_want[10 * 512..60 * 512],
        );
        warm(&m, mode, "x");
        run(&m, "echo x > $MNT/ctl/suspend && echo x > $MNT/ctl/resume");
        x_want = want;
        assert_eq!(
            dev_size(&m, "x"),
            x_want.len() as u64,
            "step {i}: size of dev/x after resume"
        );
        assert_same(
            &format!(
                "--cache {}: step {i} ({table}): dev/x after resume",
                mode.arg()
            ),
            &read_dev(&m, "x"),
            &x_want,
        );
        assert_same(
            &format!(
                "--cache {}: step {i} ({table}): dev/y (on x) after resume",
                mode.arg()
            ),
            &read_dev(&m, "y"),
            &x_want[10 * 512..60 * 512],
        );
    }
}
in_every_mode!(reload_resume);

// ---------------------------------------------------------------------------------------------
// 5. snapshot-origin and snapshot; merge.
// ---------------------------------------------------------------------------------------------

const SNAP_SECTORS: u64 = 256;

/// origin = snapshot-origin over a.img, snap = persistent snapshot of it (chunks of 8 sectors),
/// l = plain linear over a.img. Returns the models (a.img / origin / l, snap).
fn snapshot_setup(m: &Mount) -> (Vec<u8>, Vec<u8>) {
    let a = pattern_image(0, SNAP_SECTORS);
    std::fs::write(m.path("a.img"), &a).unwrap();
    run(
        m,
        &format!(
            "truncate -s 1M cow.img && \
             echo \"0 {SNAP_SECTORS} snapshot-origin $PWD/a.img\" > $MNT/ctl/create/origin && \
             echo \"0 {SNAP_SECTORS} snapshot $PWD/a.img $PWD/cow.img P 8\" > $MNT/ctl/create/snap && \
             echo \"0 {SNAP_SECTORS} linear $PWD/a.img 0\" > $MNT/ctl/create/l"
        ),
    );
    (a.clone(), a)
}

fn check_snapshot_scene(m: &Mount, mode: CacheMode, context: &str, origin: &[u8], snap: &[u8]) {
    let ctx = format!("--cache {}: {context}", mode.arg());
    assert_same(
        &format!("{ctx}: dev/origin"),
        &read_dev(m, "origin"),
        origin,
    );
    assert_same(&format!("{ctx}: dev/l"), &read_dev(m, "l"), origin);
    assert_same(&format!("{ctx}: dev/snap"), &read_dev(m, "snap"), snap);
    assert_same(
        &format!("{ctx}: a.img"),
        &std::fs::read(m.path("a.img")).unwrap(),
        origin,
    );
}

/// Warm every device; write the origin: origin and l show the new bytes, snap the old. Warm
/// again; write the snapshot: snap shows its write, origin and l do not change.
fn snapshot_writes(mode: Option<CacheMode>) {
    let (m, mode) = mount(mode);
    let (mut origin, mut snap) = snapshot_setup(&m);
    for (i, (dev, off, len)) in [
        ("origin", 5000u64, 3000usize),
        ("snap", 20_000, 1000),
        ("origin", 19_000, 5000), // over the chunk snap just wrote
        ("snap", 4096, 4096),
        ("l", 60_000, 2000), // bypasses the snapshot: the kernel would show it in snap too
    ]
    .into_iter()
    .enumerate()
    {
        for d in ["origin", "snap", "l"] {
            warm(&m, mode, d);
        }
        let data = pseudo_random(100 + i as u64, len);
        dd_write(&m, mode, dev, off, &data);
        let range = off as usize..off as usize + len;
        match dev {
            "snap" => snap[range].copy_from_slice(&data),
            "origin" => origin[range].copy_from_slice(&data),
            _ => {
                // A write through l reaches a.img without a copy-out, so chunks snap has not
                // copied show it there as well.
                origin[range.clone()].copy_from_slice(&data);
                for chunk in (off / 4096)..(off + len as u64).div_ceil(4096) {
                    if !chunk_copied(&m, chunk) {
                        let c = (chunk * 4096) as usize..((chunk + 1) * 4096) as usize;
                        snap[c.clone()].copy_from_slice(&origin[c]);
                    }
                }
            }
        }
        check_snapshot_scene(
            &m,
            mode,
            &format!("after writing {len} bytes at byte {off} of dev/{dev}"),
            &origin,
            &snap,
        );
    }
}
in_every_mode!(snapshot_writes);

/// Whether the persistent COW file cow.img holds an exception for origin chunk `chunk`
/// (8-sector chunks: header chunk 0, metadata area in chunk 1, exceptions as (old, new) u64
/// little-endian pairs, ended by a new chunk of 0).
fn chunk_copied(m: &Mount, chunk: u64) -> bool {
    let cow = std::fs::read(m.path("cow.img")).unwrap();
    let area = &cow[4096..8192];
    for e in area.chunks(16) {
        let old = u64::from_le_bytes(e[..8].try_into().unwrap());
        let new = u64::from_le_bytes(e[8..].try_into().unwrap());
        if new == 0 {
            return false;
        }
        if old == chunk {
            return true;
        }
    }
    false
}

/// The origin is written after the snapshot was taken; then the snapshot is merged back. A
/// warmed reader of the origin sees the snapshot's bytes from the resume on; a warmed reader
/// of l (plain linear over a.img) sees them once the merge has copied them into a.img.
fn snapshot_merge(mode: Option<CacheMode>) {
    let (m, mode) = mount(mode);
    let (mut origin, snap) = snapshot_setup(&m);
    for (i, &(off, len)) in [(0u64, 4096usize), (10_000, 20_000), (100_000, 512)]
        .iter()
        .enumerate()
    {
        let data = pseudo_random(200 + i as u64, len);
        dd_write(&m, mode, "origin", off, &data);
        origin[off as usize..off as usize + len].copy_from_slice(&data);
    }
    check_snapshot_scene(&m, mode, "before the merge", &origin, &snap);
    m.remove("snap");
    for d in ["origin", "l"] {
        warm(&m, mode, d);
    }
    run(
        &m,
        &format!(
            "echo \"0 {SNAP_SECTORS} snapshot-merge $PWD/a.img $PWD/cow.img P 8\" > $MNT/ctl/reload/origin && \
             echo origin > $MNT/ctl/suspend && echo origin > $MNT/ctl/resume"
        ),
    );
    assert_same(
        &format!(
            "--cache {}: dev/origin right after the merge's resume",
            mode.arg()
        ),
        &read_dev(&m, "origin"),
        &snap,
    );
    // Wait for the merge to end: allocated sectors down to the metadata's.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = m.read("dm/origin/status");
        let f: Vec<&str> = status.split_whitespace().collect();
        assert_eq!(f[2], "snapshot-merge", "status {status:?}");
        let used = f[3].split('/').next().unwrap();
        if used == f[4] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "merge did not finish: {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_same(
        &format!("--cache {}: a.img after the merge", mode.arg()),
        &std::fs::read(m.path("a.img")).unwrap(),
        &snap,
    );
    assert_same(
        &format!(
            "--cache {}: dev/l (warmed before the merge) after it",
            mode.arg()
        ),
        &read_dev(&m, "l"),
        &snap,
    );
    assert_same(
        &format!("--cache {}: dev/origin after the merge", mode.arg()),
        &read_dev(&m, "origin"),
        &snap,
    );
}
in_every_mode!(snapshot_merge);

// ---------------------------------------------------------------------------------------------
// 6, 7. A reader holding dev/b open across writes: pread on the same descriptor, and mmap.
// ---------------------------------------------------------------------------------------------

/// Opens dev/READER read-only, reads all of it (and, with `mmap`, maps it and touches every
/// page), then for each round writes fresh bytes through dev/WRITER with pwrite(2) on a
/// descriptor opened for writing (then fsync in writeback mode, where that is when the bytes
/// reach the daemon) and, with no other step between, reads the same bytes back through the
/// reader's open descriptor (os.pread) or mapping. Prints "ok ROUNDS" or the first stale round.
const HELD_READER: &str = r#"
import mmap, os, sys
reader, writer, delta, first, span, n, rounds, use_mmap, wb = sys.argv[1:]
delta, first, span, n, rounds = int(delta), int(first), int(span), int(n), int(rounds)
use_mmap, wb = use_mmap == "1", wb == "1"
dev = os.path.join(os.environ["MNT"], "dev")
r = os.open(os.path.join(dev, reader), os.O_RDONLY)
size = os.fstat(r).st_size
got = 0
while got < size:
    chunk = os.pread(r, 1 << 20, got)
    if not chunk:
        break
    got += len(chunk)
mm = None
if use_mmap:
    mm = mmap.mmap(r, size, prot=mmap.PROT_READ)
    sum(mm[i] for i in range(0, size, 4096))
w = os.open(os.path.join(dev, writer), os.O_WRONLY)
for i in range(rounds):
    woff = first + (i * 7919) % (span - n)
    roff = woff - delta
    data = bytes((i * 31 + j * 7 + 1) % 256 for j in range(n))
    before = mm[roff:roff + n] if mm is not None else os.pread(r, n, roff)
    if before == data:
        data = bytes(b ^ 0xff for b in data)
    if os.pwrite(w, data, woff) != n:
        sys.exit("short write")
    if wb:
        os.fsync(w)
    after = mm[roff:roff + n] if mm is not None else os.pread(r, n, roff)
    if after != data:
        same = sum(1 for a, b in zip(after, data) if a == b)
        print(f"stale: round {i}: {n} bytes written at byte {woff} of dev/{writer}; "
              f"dev/{reader} byte {roff} via {'mmap' if mm else 'pread'} on the open fd shows "
              f"{same}/{n} of them; old bytes still there: {after == before}")
        sys.exit(1)
os.close(w)
print(f"ok {rounds}")
"#;

fn held_reader(m: &Mount, mode: CacheMode, use_mmap: bool) -> String {
    std::fs::write(m.path("held.py"), HELD_READER).unwrap();
    let wb = u8::from(mode == CacheMode::Writeback);
    // b = a.img from sector 131; writes through a at a's bytes [first, first + span) land in b
    // at 67072 bytes less. Rounds of 100 bytes, crossing page boundaries now and then.
    let out = m.sh(&format!(
        "{TIMEOUT} python3 held.py b a 67072 67072 {} 100 100 {} {wb}",
        (512 - 131) * 512,
        u8::from(use_mmap)
    ));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return format!("{}{}", stdout, stderr);
    }
    stdout
}

fn held_setup(mode: Option<CacheMode>) -> (Mount, CacheMode) {
    let (m, mode) = mount(mode);
    write_pattern_image(&m.path("a.img"), 0, 1024);
    run(
        &m,
        "echo \"0 512 linear $PWD/a.img 0\" > $MNT/ctl/create/a && \
         echo \"0 600 linear $PWD/a.img 131\" > $MNT/ctl/create/b",
    );
    // The reader's own open keeps these pages (FOPEN_KEEP_CACHE), so its first preads are
    // served from the cache.
    warm(&m, mode, "b");
    (m, mode)
}

/// 6: a reader holding dev/b open reads a write through dev/a on its next pread of the same
/// offset, on the same descriptor: FOPEN_KEEP_CACHE plus invalidation, not a fresh open.
fn pread_on_open_fd(mode: Option<CacheMode>) {
    let (m, mode) = held_setup(mode);
    let out = held_reader(&m, mode, false);
    assert_eq!(
        out,
        "ok 100\n",
        "--cache {}: {out}\nlog:\n{}",
        mode.arg(),
        m.log()
    );
    // And the file agrees: b is a.img from sector 131.
    let a = std::fs::read(m.path("a.img")).unwrap();
    assert_same(
        "dev/b after the rounds",
        &read_dev(&m, "b"),
        &a[131 * 512..731 * 512],
    );
}
in_every_mode!(pread_on_open_fd);

/// 7: the same through a read-only shared mapping of dev/b.
fn mmap_reader(mode: Option<CacheMode>) {
    let (m, mode) = held_setup(mode);
    let out = held_reader(&m, mode, true);
    if mode == CacheMode::Direct {
        // Direct mode caches nothing, so it refuses mmap (which would cache pages) with ENODEV.
        assert!(
            out.contains("[Errno 19]"),
            "--cache direct: mmap gave {out}"
        );
        return;
    }
    assert_eq!(
        out,
        "ok 100\n",
        "--cache {}: {out}\nlog:\n{}",
        mode.arg(),
        m.log()
    );
}
in_every_mode!(mmap_reader);

/// 6 again, with the reload of the reader's own table as the change: the held descriptor reads
/// the new table's bytes after the resume.
fn pread_on_open_fd_across_reload(mode: Option<CacheMode>) {
    let (m, mode) = mount(mode);
    write_pattern_image(&m.path("a.img"), 0, 256);
    write_pattern_image(&m.path("b.img"), 1, 256);
    run(&m, "echo \"0 256 linear $PWD/a.img 0\" > $MNT/ctl/create/x");
    warm(&m, mode, "x");
    let script = r#"
import os, subprocess, sys
fd = os.open(os.path.join(os.environ["MNT"], "dev/x"), os.O_RDONLY)
before = os.pread(fd, 256 * 512, 0)
subprocess.run(["bash", "-c", 'echo "0 256 linear $PWD/b.img 0" > $MNT/ctl/reload/x && '
                'echo x > $MNT/ctl/suspend && echo x > $MNT/ctl/resume'], check=True)
after = os.pread(fd, 256 * 512, 0)
sys.stdout.buffer.write(before + after)
"#;
    std::fs::write(m.path("reload.py"), script).unwrap();
    let out = run(&m, &format!("{TIMEOUT} python3 reload.py"));
    let half = 256 * 512;
    assert_eq!(out.len(), 2 * half, "read {} bytes", out.len());
    assert_same(
        "pread before the reload",
        &out[..half],
        &pattern_image(0, 256),
    );
    assert_same(
        &format!(
            "--cache {}: pread on the same fd after reload + resume",
            mode.arg()
        ),
        &out[half..],
        &pattern_image(1, 256),
    );
}
in_every_mode!(pread_on_open_fd_across_reload);

// ---------------------------------------------------------------------------------------------
// 8. Writes: many small ones reach the file by `sync`; writeback really caches them; a write
// past the end fails, at the latest at fsync.
// ---------------------------------------------------------------------------------------------

/// 500 pwrite(2)s of 1..600 bytes at random places through one descriptor of dev/w (a linear
/// device over all of a.img), which stays open; then `sync`. a.img, read directly, must hold
/// every write, and so must dev/l (another linear device over a.img, read and held open
/// before the writes) on its next pread.
const SMALL_WRITES: &str = r#"
import os, random, subprocess, sys
dev = os.path.join(os.environ["MNT"], "dev")
model = bytearray(open("a.img", "rb").read())
r = os.open(os.path.join(dev, "l"), os.O_RDONLY)
if os.pread(r, len(model), 0) != model:
    sys.exit("dev/l does not read as a.img before the writes")
w = os.open(os.path.join(dev, "w"), os.O_WRONLY)
rng = random.Random(42)
for i in range(500):
    n = rng.randint(1, 600)
    off = rng.randrange(0, len(model) - n)
    data = bytes(rng.getrandbits(8) for _ in range(n))
    if os.pwrite(w, data, off) != n:
        sys.exit(f"short write {i}")
    model[off:off + n] = data
subprocess.run(["sync"], check=True)
def first_diff(got):
    return next((i for i, (a, b) in enumerate(zip(got, model)) if a != b), None)
disk = open("a.img", "rb").read()
if disk != model:
    sys.exit(f"after sync, with dev/w still open: a.img differs from the writes at byte {first_diff(disk)}")
via = os.pread(r, len(model), 0)
if via != model:
    sys.exit(f"after sync: dev/l (held open) differs from the writes at byte {first_diff(via)}")
os.close(w)
print("ok")
"#;

fn small_writes_then_sync(mode: Option<CacheMode>) {
    let (m, mode) = mount(mode);
    write_pattern_image(&m.path("a.img"), 0, 512);
    run(
        &m,
        "echo \"0 512 linear $PWD/a.img 0\" > $MNT/ctl/create/w && \
         echo \"0 512 linear $PWD/a.img 0\" > $MNT/ctl/create/l",
    );
    std::fs::write(m.path("small.py"), SMALL_WRITES).unwrap();
    let out = m.sh(&format!("{TIMEOUT} python3 small.py"));
    assert!(
        out.status.success() && out.stdout == b"ok\n",
        "--cache {}: {}{}\nlog:\n{}",
        mode.arg(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        m.log()
    );
}
in_every_mode!(small_writes_then_sync);

/// A page-aligned pwrite(2) of one page on dev/w while w is suspended, from a thread; the main
/// thread waits 3 s for it, resumes, then fsyncs. Prints whether the write returned while the
/// device was suspended.
const SUSPENDED_WRITE: &str = r#"
import os, threading
mnt = os.environ["MNT"]
def ctl(verb):
    fd = os.open(os.path.join(mnt, "ctl", verb), os.O_WRONLY)
    os.write(fd, b"w\n")
    os.close(fd)
w = os.open(os.path.join(mnt, "dev/w"), os.O_WRONLY)
ctl("suspend")
done = threading.Event()
def write():
    os.pwrite(w, b"\xa5" * 4096, 8192)
    done.set()
t = threading.Thread(target=write)
t.start()
returned = done.wait(3)
ctl("resume")
t.join(30)
os.fsync(w)
os.close(w)
print("returned while suspended" if returned else "held until resume")
"#;

/// What makes writeback writeback: a buffered write(2) completes in the kernel's cache without
/// waiting for the daemon, so it returns even while the device is suspended; in page-cache and
/// direct modes the write is the daemon's and waits for the resume. Either way the bytes are in
/// a.img after the fsync.
fn write_while_suspended(mode: Option<CacheMode>) {
    let (m, mode) = mount(mode);
    write_pattern_image(&m.path("a.img"), 0, 64);
    run(&m, "echo \"0 64 linear $PWD/a.img 0\" > $MNT/ctl/create/w");
    std::fs::write(m.path("susp.py"), SUSPENDED_WRITE).unwrap();
    let out = String::from_utf8(run(&m, &format!("{TIMEOUT} python3 susp.py"))).unwrap();
    let want = match mode {
        CacheMode::Writeback => "returned while suspended\n",
        CacheMode::PageCache | CacheMode::Direct => "held until resume\n",
    };
    assert_eq!(out, want, "--cache {}", mode.arg());
    let mut img = pattern_image(0, 64);
    img[8192..12288].fill(0xa5);
    assert_same(
        "a.img after the fsync",
        &std::fs::read(m.path("a.img")).unwrap(),
        &img,
    );
}
in_every_mode!(write_while_suspended);

/// A 4 KiB pwrite(2) at dev/w's end through a descriptor opened for writing, then fsync, then
/// close; prints each step's result (ok or the errno's name), then dev/w's size as a fresh
/// stat(2) shows it and what a fresh read of all of dev/w returns.
const PAST_THE_END: &str = r#"
import errno, os
path = os.path.join(os.environ["MNT"], "dev/w")
w = os.open(path, os.O_WRONLY)
size = os.fstat(w).st_size
def attempt(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
print("write", attempt(lambda: os.pwrite(w, b"x" * 4096, size)))
print("fsync", attempt(lambda: os.fsync(w)))
print("close", attempt(lambda: os.close(w)))
print("size", os.stat(path).st_size)
with open(path, "rb") as f:
    back = f.read()
print("readback", len(back), "tail-written" if back[size:] == b"x" * 4096 else "tail-not-written")
"#;

/// A write past the end of a device fails: at write(2) (ENOSPC) in page-cache and direct
/// modes. In writeback mode the kernel may take it into its cache (it owns the file size
/// there), so the failure may come only when the page reaches the daemon: at the latest at
/// fsync (ENOSPC or EIO); once the file is closed, `stat` shows the device's size again. The
/// backing file never changes.
fn write_past_the_end(mode: Option<CacheMode>) {
    let (m, mode) = mount(mode);
    write_pattern_image(&m.path("a.img"), 0, 128);
    run(&m, "echo \"0 64 linear $PWD/a.img 0\" > $MNT/ctl/create/w");
    std::fs::write(m.path("end.py"), PAST_THE_END).unwrap();
    let out = String::from_utf8(run(&m, &format!("{TIMEOUT} python3 end.py"))).unwrap();
    let step = |name: &str| -> String {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {out:?}"))
            .to_string()
    };
    let (write, fsync, size) = (step("write"), step("fsync"), step("size"));
    eprintln!(
        "--cache {}: write past the end: {}",
        mode.arg(),
        out.replace('\n', "; ")
    );
    match mode {
        CacheMode::PageCache | CacheMode::Direct => {
            assert_eq!(write, "ENOSPC", "--cache {}: {out}", mode.arg());
            assert_eq!(
                size,
                (64 * 512).to_string(),
                "--cache {}: {out}",
                mode.arg()
            );
        }
        CacheMode::Writeback => {
            // Either the write itself is refused, or the fsync reports the lost page.
            assert!(
                write == "ENOSPC" || (write == "ok" && (fsync == "ENOSPC" || fsync == "EIO")),
                "--cache writeback: a write past the end was accepted and fsync said {fsync}: \
                 {out}\nlog:\n{}",
                m.log()
            );
            // The kernel grew its size of dev/w to hold the write; after the last close dmfs
            // drops dev/w's entry, and with it that size.
            assert_eq!(
                dev_size_settling_at(&m, "w", 32768),
                32768,
                "--cache writeback: size of dev/w after the last close ({out})"
            );
        }
    }
    assert_same(
        "a.img after a write past the device's end",
        &std::fs::read(m.path("a.img")).unwrap(),
        &pattern_image(0, 128),
    );
}
in_every_mode!(write_past_the_end);

/// In page-cache mode an open for writing is direct I/O: reading through it leaves nothing in
/// the page cache (and the open drops what was there). Writeback caches every open; direct
/// none.
fn read_write_opens(mode: Option<CacheMode>) {
    let (m, mode) = mount(mode);
    write_pattern_image(&m.path("a.img"), 0, 256);
    run(&m, "echo \"0 256 linear $PWD/a.img 0\" > $MNT/ctl/create/x");
    warm(&m, mode, "x");
    run(
        &m,
        &format!(
            "{TIMEOUT} python3 -c 'import os; fd = os.open(\"'$MNT'/dev/x\", os.O_RDWR); \
             assert len(os.pread(fd, 1 << 20, 0)) == 256 * 512; os.close(fd)'"
        ),
    );
    let pages = cached_pages(&m, "x");
    match mode {
        CacheMode::Writeback => assert!(pages > 0, "--cache writeback: no pages cached"),
        CacheMode::PageCache | CacheMode::Direct => assert_eq!(
            pages,
            0,
            "--cache {}: an O_RDWR open and read left {pages} pages cached",
            mode.arg()
        ),
    }
}
in_every_mode!(read_write_opens);

// ---------------------------------------------------------------------------------------------
// 9. The modes by name.
// ---------------------------------------------------------------------------------------------

/// `--cache direct`: a write and a read back through a second device, nothing cached.
#[test]
fn direct_mode_round_trip() {
    let m = Mount::with_exact_args(&["--cache", "direct"]);
    write_pattern_image(&m.path("a.img"), 0, 128);
    run(
        &m,
        "echo \"0 128 linear $PWD/a.img 0\" > $MNT/ctl/create/a && \
         echo \"0 64 linear $PWD/a.img 32\" > $MNT/ctl/create/b",
    );
    warm(&m, CacheMode::Direct, "b");
    let data = pseudo_random(9, 5000);
    dd_write(&m, CacheMode::Direct, "a", 32 * 512 + 100, &data);
    let mut img = pattern_image(0, 128);
    img[32 * 512 + 100..32 * 512 + 5100].copy_from_slice(&data);
    assert_same("dev/b", &read_dev(&m, "b"), &img[32 * 512..96 * 512]);
    assert_same("a.img", &std::fs::read(m.path("a.img")).unwrap(), &img);
    assert_eq!(cached_pages(&m, "b"), 0);
}

/// `--cache page-cache` named explicitly is the default: read-only reads are cached.
#[test]
fn page_cache_mode_by_name() {
    let m = Mount::with_exact_args(&["--cache", "page-cache"]);
    write_pattern_image(&m.path("a.img"), 0, 128);
    run(&m, "echo \"0 128 linear $PWD/a.img 0\" > $MNT/ctl/create/a");
    warm(&m, CacheMode::PageCache, "a");
}

/// Runs `dmfs mount MNT ARGS` (in the background mode) on a fresh directory; returns its exit
/// code, its stderr, and whether something got mounted (which is then unmounted).
fn try_mount(args: &[&str]) -> (Option<i32>, String, bool) {
    let dir = scratch_dir("badmount");
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = Command::new("timeout")
        .args(["-k", "5", "30", DMFS, "mount"])
        .arg(&mnt)
        .args(args)
        .output()
        .unwrap();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mounted = mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(&*mnt.to_string_lossy()));
    if mounted {
        let _ = Command::new("umount").arg(&mnt).status();
        let _ = Command::new("umount").arg("-l").arg(&mnt).status();
    }
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        mounted,
    )
}

/// An unknown mode is refused before anything is mounted, with a message naming the value and
/// the modes there are.
#[test]
fn unknown_cache_mode_is_refused() {
    let (code, err, mounted) = try_mount(&["--cache", "bogus"]);
    assert!(!mounted, "--cache bogus mounted; stderr: {err}");
    assert!(
        matches!(code, Some(c) if c != 0),
        "--cache bogus: exit code {code:?}; stderr: {err}"
    );
    for want in ["bogus", "page-cache", "direct", "writeback"] {
        assert!(
            err.contains(want),
            "--cache bogus: {want:?} missing from stderr: {err}"
        );
    }
    let (code, err, mounted) = try_mount(&["--read-ahead-kb", "lots"]);
    assert!(!mounted, "--read-ahead-kb lots mounted; stderr: {err}");
    assert!(
        matches!(code, Some(c) if c != 0) && err.contains("lots"),
        "--read-ahead-kb lots: exit code {code:?}; stderr: {err}"
    );
}

/// With the writeback cache the kernel owns the size of an inode it knows and takes none from
/// dmfs, so a resize drops the `dev/NAME` entry: with no file open the next `stat` makes a new
/// inode with the new size; a file open across the resize keeps the old inode (and size) until
/// its last close, after which the new size shows. In page-cache mode every `stat` already asks
/// dmfs.
#[test]
fn resize_is_seen_in_every_mode_once_no_file_is_open() {
    for mode in [
        CacheMode::PageCache,
        CacheMode::Direct,
        CacheMode::Writeback,
    ] {
        let (m, mode) = mount(Some(mode));
        run(&m, "head -c 1M /dev/urandom > a.img");
        let resize = |sectors: u64| {
            run(
                &m,
                &format!(
                    "echo \"0 {sectors} linear $PWD/a.img 0\" > $MNT/ctl/reload/g && \
                     echo g > $MNT/ctl/suspend && echo g > $MNT/ctl/resume"
                ),
            );
        };
        run(&m, "echo \"0 8 linear $PWD/a.img 0\" > $MNT/ctl/create/g");
        warm(&m, mode, "g");
        assert_eq!(dev_size(&m, "g"), 4096, "--cache {}: before", mode.arg());
        resize(16);
        assert_eq!(
            dev_size(&m, "g"),
            8192,
            "--cache {}: grown, nothing open",
            mode.arg()
        );
        resize(4);
        assert_eq!(
            dev_size(&m, "g"),
            2048,
            "--cache {}: shrunk, nothing open",
            mode.arg()
        );
        assert_same(
            &format!("--cache {}: dev/g after the shrink", mode.arg()),
            &read_dev(&m, "g"),
            &std::fs::read(m.path("a.img")).unwrap()[..2048],
        );
        // A reader holds dev/g open across a resize and stats it meanwhile.
        let out = run(
            &m,
            "exec 3<$MNT/dev/g
             echo \"0 24 linear $PWD/a.img 0\" > $MNT/ctl/reload/g
             echo g > $MNT/ctl/suspend && echo g > $MNT/ctl/resume
             stat -c %s $MNT/dev/g
             exec 3<&-",
        );
        let out = String::from_utf8(out).unwrap();
        let during = out.trim();
        let after = dev_size_settling_at(&m, "g", 12288);
        if mode == CacheMode::Writeback {
            assert_eq!(
                during, "2048",
                "--cache writeback: the open file keeps its inode"
            );
        } else {
            assert_eq!(during, "12288", "--cache {}: while open", mode.arg());
        }
        assert_eq!(after, 12288, "--cache {}: after the last close", mode.arg());
    }
}

// ---------------------------------------------------------------------------------------------
// 10. Read-ahead.
// ---------------------------------------------------------------------------------------------

/// The mount's bdi read_ahead_kb (`mountpoint -d` gives its MAJ:MIN).
fn read_ahead_kb(m: &Mount) -> u64 {
    let out = run(m, "cat /sys/class/bdi/$(mountpoint -d $MNT)/read_ahead_kb");
    String::from_utf8_lossy(&out).trim().parse().unwrap()
}

/// Default: 1024 KiB. `--read-ahead-kb 0` keeps the kernel's value for a FUSE mount (128
/// KiB: VM_READAHEAD_PAGES, the most the kernel lets a FUSE mount start with). Another value
/// is set as given, in any mode.
#[test]
fn read_ahead_of_the_mount() {
    let m = Mount::with_exact_args(&[]);
    assert_eq!(read_ahead_kb(&m), 1024, "default read-ahead");
    drop(m);
    let m = Mount::with_exact_args(&["--read-ahead-kb", "0"]);
    assert_eq!(read_ahead_kb(&m), 128, "--read-ahead-kb 0");
    drop(m);
    let m = Mount::with_exact_args(&["--cache", "writeback", "--read-ahead-kb", "256"]);
    assert_eq!(
        read_ahead_kb(&m),
        256,
        "--cache writeback --read-ahead-kb 256"
    );
}

// ---------------------------------------------------------------------------------------------
// The written device itself.
// ---------------------------------------------------------------------------------------------

/// A reader holding dev/a open (cached) reads every write made through another open of dev/a
/// at once. dmfs leaves the written file's own pages to the kernel (it drops them after a
/// direct-I/O write; a writeback write goes through them): this is what shows that holds.
fn own_device_reader(mode: Option<CacheMode>) {
    let (m, mode) = mount(mode);
    write_pattern_image(&m.path("a.img"), 0, 1024);
    run(
        &m,
        "echo \"0 1024 linear $PWD/a.img 0\" > $MNT/ctl/create/a",
    );
    warm(&m, mode, "a");
    let out = run(
        &m,
        &format!(
            "{TIMEOUT} python3 -c '
import os, random
random.seed(7)
r = os.open(\"'$MNT'/dev/a\", os.O_RDONLY)
w = os.open(\"'$MNT'/dev/a\", os.O_RDWR)
size = os.fstat(r).st_size
os.pread(r, size, 0)
stale = 0
for i in range(200):
    off = random.randrange(0, size - 5000)
    data = os.urandom(random.randrange(1, 5000))
    os.pwrite(w, data, off)
    if os.pread(r, len(data), off) != data:
        stale += 1
print(\"stale\", stale)
'"
        ),
    );
    assert_eq!(
        String::from_utf8_lossy(&out),
        "stale 0\n",
        "--cache {}",
        mode.arg()
    );
}
in_every_mode!(own_device_reader);
