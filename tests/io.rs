//! I/O through real mounts, checked against models the tests keep themselves: every write is
//! applied to in-memory copies of the backing files, through a mapping computed here from the
//! table (never from dmfs), and the whole of every image and device is compared.

mod common;
use common::*;

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};

/// Where byte `b` of a device lives: (index of a backing file, byte in it).
type Map<'a> = &'a dyn Fn(u64) -> (usize, u64);
/// The same, owned.
type MapFn = dyn Fn(u64) -> (usize, u64);

/// In-memory copies of the backing files, in order.
struct Model {
    names: Vec<String>,
    files: Vec<Vec<u8>>,
}

impl Model {
    /// Makes pattern images `names[i]` with `sectors[i]` sectors and pattern index `first + i`.
    fn new(m: &Mount, names: &[&str], sectors: &[u64], first: u64) -> Model {
        let mut files = Vec::new();
        for (i, (n, s)) in names.iter().zip(sectors).enumerate() {
            let data = pattern_image(first + i as u64, *s);
            if let Some(parent) = m.path(n).parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
            std::fs::write(m.path(n), &data).unwrap();
            files.push(data);
        }
        Model {
            names: names.iter().map(|s| s.to_string()).collect(),
            files,
        }
    }

    /// What a device of `size` bytes mapped by `map` must read.
    fn device(&self, size: u64, map: Map) -> Vec<u8> {
        (0..size)
            .map(|b| {
                let (f, at) = map(b);
                self.files[f][at as usize]
            })
            .collect()
    }

    /// Applies a write of `data` at byte `off` of a device mapped by `map`.
    fn write(&mut self, off: u64, data: &[u8], map: Map) {
        for (i, byte) in data.iter().enumerate() {
            let (f, at) = map(off + i as u64);
            self.files[f][at as usize] = *byte;
        }
    }

    /// Every backing file on disk equals its model.
    fn check_files(&self, m: &Mount, context: &str) {
        for (name, want) in self.names.iter().zip(&self.files) {
            let got = std::fs::read(m.path(name)).unwrap();
            assert_same(&format!("{context}: backing file {name}"), &got, want);
        }
    }
}

/// A linear table as (sectors, file index, file offset in sectors) lines, as a byte map.
fn linear_map(lines: &[(u64, usize, u64)]) -> impl Fn(u64) -> (usize, u64) + '_ {
    move |b| {
        let s = b / 512;
        let mut start = 0;
        for &(len, f, off) in lines {
            if s < start + len {
                return (f, (off + s - start) * 512 + b % 512);
            }
            start += len;
        }
        panic!("byte {b} is past the end of the table");
    }
}

#[test]
fn overlapping_linear_mappings_and_unaligned_writes() {
    let m = Mount::new();
    let mut model = Model::new(&m, &["a.img", "b.img"], &[128, 64], 0);
    // p: three lines over two files; q and r overlap p's first two lines at other offsets.
    let p_lines = [(24, 0, 100), (40, 0, 10), (16, 1, 8)];
    let q_lines = [(64, 0, 0)];
    let r_lines = [(32, 0, 96)];
    m.ok(r#"
        set -e
        printf "0 24 linear $PWD/a.img 100\n24 40 linear $PWD/a.img 10\n64 16 linear $PWD/b.img 8\n" > $MNT/ctl/create/p
        echo "0 64 linear $PWD/a.img 0" > $MNT/ctl/create/q
        echo "0 32 linear a.img 96" > $MNT/ctl/create/r
    "#);
    let pm = linear_map(&p_lines);
    let qm = linear_map(&q_lines);
    let rm = linear_map(&r_lines);
    let devs: [(&str, Map, u64); 3] = [
        ("p", &pm, 80 * 512),
        ("q", &qm, 64 * 512),
        ("r", &rm, 32 * 512),
    ];
    for (name, map, size) in devs {
        assert_eq!(m.dev_size(name), size, "size of dev/{name}");
        assert_same(
            &format!("dev/{name} before writes"),
            &m.read_dev(name).unwrap(),
            &model.device(size, map),
        );
    }
    let line1 = 24 * 512; // p's first line boundary, in bytes
    let line2 = 64 * 512; // p's second line boundary
    let writes: &[(&str, u64, usize)] = &[
        ("p", line1 - 1, 2),
        ("p", line1 - 300, 511),
        ("p", 1, 513),
        ("p", line2 - 2000, 4097),
        ("p", line1 - 4000, 8193),
        ("p", 80 * 512 - 1, 1),
        ("q", 10 * 512 + 1, 1000),
        ("r", 3 * 512 + 511, 513),
        ("p", 700, 20000),
        ("q", 0, 512),
        ("r", 0, 32 * 512),
        ("p", line2 + 3, 511),
        ("p", 2048, 1000),         // a partial last sector only
        ("q", 10 * 512 + 12, 500), // a partial first sector only
        ("p", line1 - 512, 700),   // whole sector, then a partial one across a line
        ("q", 4096, 100),          // the start of one sector
        ("r", 2000, 20),           // inside one sector
    ];
    for (i, &(dev, off, len)) in writes.iter().enumerate() {
        let data = pseudo_random(i as u64 + 1, len);
        m.dd_write(dev, off, &data);
        let (_, map, _) = devs.iter().find(|d| d.0 == dev).unwrap();
        model.write(off, &data, *map);
        let context = format!("after write {i} ({len} bytes at {off} of dev/{dev})");
        model.check_files(&m, &context);
        for (name, map, size) in devs {
            assert_same(
                &format!("{context}: dev/{name}"),
                &m.read_dev(name).unwrap(),
                &model.device(size, map),
            );
        }
    }
    // Unaligned reads across the line boundaries.
    let want = model.device(80 * 512, &pm);
    let mut f = std::fs::File::open(m.mnt.join("dev/p")).unwrap();
    for (off, len) in [
        (line1 - 1, 2),
        (line1 - 256, 511),
        (line2 - 7, 513),
        (3, 4097),
        (line2 - 4000, 8000),
    ] {
        let mut buf = vec![0u8; len];
        f.seek(SeekFrom::Start(off)).unwrap();
        f.read_exact(&mut buf).unwrap();
        assert_same(
            &format!("read of {len} bytes at {off}"),
            &buf,
            &want[off as usize..off as usize + len],
        );
    }
    // A read running past the end is cut short there.
    let mut buf = vec![0u8; 1000];
    let n = f.read_at(&mut buf, 80 * 512 - 100).unwrap();
    assert_eq!(n, 100);
    assert_same(
        "short read at the end",
        &buf[..100],
        &want[want.len() - 100..],
    );
}

#[test]
fn striped_layouts_map_and_write_as_the_kernel_does() {
    let m = Mount::new();
    struct Layout {
        stripes: u64,
        chunk: u64,
        offsets: Vec<u64>,
        rows: u64,
        /// Sectors of a linear line before the striped one (0: none).
        prefix: u64,
    }
    let layouts = [
        Layout {
            stripes: 2,
            chunk: 1,
            offsets: vec![0, 3],
            rows: 16,
            prefix: 0,
        },
        Layout {
            stripes: 3,
            chunk: 7,
            offsets: vec![5, 0, 11],
            rows: 4,
            prefix: 0,
        },
        Layout {
            stripes: 4,
            chunk: 8,
            offsets: vec![1, 2, 3, 4],
            rows: 3,
            prefix: 5,
        },
        Layout {
            stripes: 2,
            chunk: 128,
            offsets: vec![0, 64],
            rows: 2,
            prefix: 0,
        },
        Layout {
            stripes: 3,
            chunk: 128,
            offsets: vec![7, 0, 3],
            rows: 1,
            prefix: 9,
        },
        Layout {
            stripes: 1,
            chunk: 8,
            offsets: vec![2],
            rows: 4,
            prefix: 0,
        },
    ];
    for (li, l) in layouts.iter().enumerate() {
        let width = l.rows * l.chunk; // sectors per stripe
        let len = width * l.stripes;
        let mut names: Vec<String> = (0..l.stripes).map(|k| format!("s{li}_{k}.img")).collect();
        // Each stripe's image has room to spare after its area, which must stay untouched.
        let mut sectors: Vec<u64> = l.offsets.iter().map(|o| o + width + 3).collect();
        names.push(format!("pre{li}.img"));
        sectors.push(l.prefix + 2);
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut model = Model::new(&m, &name_refs, &sectors, 10 * li as u64);
        let pre = l.stripes as usize;
        let (n, chunk, prefix) = (l.stripes, l.chunk, l.prefix);
        let offsets = l.offsets.clone();
        let map = move |b: u64| -> (usize, u64) {
            let s = b / 512;
            if s < prefix {
                return (pre, b);
            }
            let s = s - prefix;
            let c = s / chunk;
            let stripe = c % n;
            let row = c / n;
            (
                stripe as usize,
                (offsets[stripe as usize] + row * chunk + s % chunk) * 512 + b % 512,
            )
        };
        let mut dests = String::new();
        for (k, off) in l.offsets.iter().enumerate() {
            dests.push_str(&format!(" {}/{} {off}", m.dir.display(), names[k]));
        }
        let striped = format!("striped {n} {chunk}{dests}");
        let table = if prefix > 0 {
            format!(
                "0 {prefix} linear {}/{} 0\n{prefix} {len} {striped}\n",
                m.dir.display(),
                names[pre]
            )
        } else {
            format!("0 {len} {striped}\n")
        };
        let dev = format!("st{li}");
        std::fs::write(m.path("table.txt"), &table).unwrap();
        m.ok(&format!("cat table.txt > $MNT/ctl/create/{dev}"));
        assert_eq!(m.read(&format!("dm/{dev}/table")), table, "layout {li}");
        let size = (prefix + len) * 512;
        assert_eq!(m.dev_size(&dev), size);
        assert_same(
            &format!("layout {li}: dev/{dev}"),
            &m.read_dev(&dev).unwrap(),
            &model.device(size, &map),
        );

        // Unaligned writes across chunk (and stripe) boundaries, then the last byte.
        let off = prefix * 512 + chunk * 512 - 100;
        let wlen = std::cmp::min(3 * chunk * 512 + 250, size - off - 1) as usize;
        let data = pseudo_random(100 + li as u64, wlen);
        m.dd_write(&dev, off, &data);
        model.write(off, &data, &map);
        model.check_files(
            &m,
            &format!("layout {li} after a write of {wlen} bytes at {off}"),
        );
        m.dd_write(&dev, size - 1, &[0xA5]);
        model.write(size - 1, &[0xA5], &map);
        // A write covering the prefix line and the first chunks together.
        let data = pseudo_random(
            200 + li as u64,
            (prefix * 512 + 2 * chunk * 512 + 7) as usize,
        );
        m.dd_write(&dev, 1, &data);
        model.write(1, &data, &map);
        model.check_files(&m, &format!("layout {li} after all writes"));
        assert_same(
            &format!("layout {li}: dev/{dev} after writes"),
            &m.read_dev(&dev).unwrap(),
            &model.device(size, &map),
        );
    }
}

#[test]
fn zero_and_error_targets() {
    let m = Mount::new();
    let mut model = Model::new(&m, &["a.img"], &[32], 0);
    m.ok(r#"
        set -e
        echo "0 16 zero" > $MNT/ctl/create/z
        echo "0 16 error" > $MNT/ctl/create/e
        echo "0 16 error ignored 1 2" > $MNT/ctl/create/e2
        printf "0 8 linear $PWD/a.img 0\n8 8 error\n16 8 zero\n" > $MNT/ctl/create/mix
    "#);
    // zero: zeros, and writes are accepted and dropped.
    assert_eq!(m.read_dev("z").unwrap(), vec![0u8; 16 * 512]);
    m.dd_write("z", 1000, &pseudo_random(1, 3000));
    if cache_mode() == CacheMode::Writeback {
        // With --cache writeback the kernel keeps the pages it wrote back, as the page cache
        // of a kernel dm-zero device does: a buffered read shows the dropped bytes. The
        // device's own answer, read with O_DIRECT, is zeros.
        m.ok("cmp <(dd if=$MNT/dev/z bs=16M iflag=direct status=none) <(head -c 8192 /dev/zero)");
    } else {
        assert_eq!(m.read_dev("z").unwrap(), vec![0u8; 16 * 512]);
    }
    // error: any read or write fails with EIO; arguments are ignored and not printed back.
    assert_eq!(m.read("dm/e2/table").trim_end(), "0 16 error");
    for dev in ["e", "e2"] {
        let err = m.fails(&format!(
            "dd if=$MNT/dev/{dev} of=/dev/null bs=512 count=1 status=none"
        ));
        assert!(err.contains("Input/output error"), "{err}");
        let err = m.fails(&format!(
            "dd if=/dev/zero of=$MNT/dev/{dev} bs=512 count=1 conv=notrunc status=none"
        ));
        assert!(err.contains("Input/output error"), "{err}");
        let f = std::fs::File::open(m.mnt.join("dev").join(dev)).unwrap();
        let e = f.read_at(&mut [0u8; 7], 1001).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc_eio()), "{e}");
    }
    // linear + error + zero.
    let lines = [(8u64, 0usize, 0u64)];
    let head = linear_map(&lines);
    m.ok(r#"
        set -e
        dd if=$MNT/dev/mix bs=512 count=8 status=none | cmp - <(head -c 4096 a.img)
        dd if=$MNT/dev/mix bs=512 skip=16 count=8 status=none | cmp - <(head -c 4096 /dev/zero)
    "#);
    for (skip, count) in [(8, 1), (7, 2), (15, 2), (0, 24)] {
        let err = m.fails(&format!(
            "dd if=$MNT/dev/mix of=/dev/null bs=512 skip={skip} count={count} status=none"
        ));
        assert!(
            err.contains("Input/output error"),
            "skip={skip} count={count}: {err}"
        );
    }
    // O_DIRECT in writeback mode (write_through_flags), where an O_RDWR open is cached too:
    // a buffered read is made of whole pages, so one that runs from good sectors into error
    // ones comes back short instead of failing, as from any page cache.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(write_through_flags())
        .open(m.mnt.join("dev/mix"))
        .unwrap();
    let mut buf = vec![0u8; 96];
    f.read_exact_at(&mut buf, 4000).unwrap();
    assert_same(
        "mix: unaligned read in the linear part",
        &buf,
        &model.files[0][4000..4096],
    );
    assert_eq!(
        f.read_at(&mut [0u8; 10], 4090).unwrap_err().raw_os_error(),
        Some(libc_eio())
    );
    assert_eq!(
        f.read_at(&mut [0u8; 10], 16 * 512 - 5)
            .unwrap_err()
            .raw_os_error(),
        Some(libc_eio())
    );
    let mut zeros = vec![1u8; 1000];
    f.read_exact_at(&mut zeros, 16 * 512 + 7).unwrap();
    assert_eq!(zeros, vec![0u8; 1000]);
    // Writes: into the linear part they land in a.img; into the error part they fail and
    // change nothing; into the zero part they vanish.
    m.dd_write("mix", 100, &pseudo_random(2, 300));
    model.write(100, &pseudo_random(2, 300), &head);
    let err = m
        .fails("dd if=/dev/urandom of=$MNT/dev/mix bs=512 seek=8 count=1 conv=notrunc status=none");
    assert!(err.contains("Input/output error"), "{err}");
    assert_eq!(
        f.write_at(&[9u8; 10], 4090).unwrap_err().raw_os_error(),
        Some(libc_eio())
    );
    m.dd_write("mix", 16 * 512 + 3, &pseudo_random(3, 600));
    model.check_files(&m, "mix after writes");
    f.read_exact_at(&mut zeros, 16 * 512).unwrap();
    assert_eq!(zeros, vec![0u8; 1000]);
    let mut first = vec![0u8; 4096];
    f.read_exact_at(&mut first, 0).unwrap();
    assert_same(
        "mix: linear part after writes",
        &first,
        &model.files[0][..4096],
    );
}

fn libc_eio() -> i32 {
    5
}

#[test]
fn stacked_devices() {
    let m = Mount::new();
    let mut model = Model::new(&m, &["a.img", "b.img"], &[64, 64], 0);
    m.ok(r#"
        set -e
        printf "0 32 linear $PWD/a.img 10\n32 32 linear $PWD/b.img 5\n" > $MNT/ctl/create/base
        echo "0 40 linear $MNT/dev/base 12" > $MNT/ctl/create/top
    "#);
    let base_lines = [(32, 0, 10), (32, 1, 5)];
    let base = linear_map(&base_lines);
    let top = |b: u64| base(b + 12 * 512);
    assert_eq!(
        m.read("dm/top/table"),
        format!("0 40 linear {}/dev/base 12\n", m.mnt.display())
    );
    assert_same(
        "base",
        &m.read_dev("base").unwrap(),
        &model.device(64 * 512, &base),
    );
    assert_same(
        "top",
        &m.read_dev("top").unwrap(),
        &model.device(40 * 512, &top),
    );
    // The top's sector 20 is the base's 32, where a.img gives way to b.img.
    for (dev, off, len, seed) in [
        ("top", 20 * 512 - 240, 4097usize, 1u64),
        ("top", 0, 1, 2),
        ("base", 12 * 512 + 5, 700, 3),
        ("top", 40 * 512 - 513, 513, 4),
    ] {
        let data = pseudo_random(seed, len);
        m.dd_write(dev, off, &data);
        if dev == "top" {
            model.write(off, &data, &top);
        } else {
            model.write(off, &data, &base);
        }
        let context = format!("after {len} bytes at {off} of dev/{dev}");
        model.check_files(&m, &context);
        assert_same(
            &format!("{context}: base"),
            &m.read_dev("base").unwrap(),
            &model.device(64 * 512, &base),
        );
        assert_same(
            &format!("{context}: top"),
            &m.read_dev("top").unwrap(),
            &model.device(40 * 512, &top),
        );
    }
    let err = m.fails("echo base > $MNT/ctl/remove");
    assert!(err.contains("Device or resource busy"), "{err}");
    let err = m.fails("rm $MNT/dev/base");
    assert!(err.contains("Device or resource busy"), "{err}");
    assert_eq!(m.devices(), vec!["base", "top"]);
    // The kernel sends RELEASE for the handles the reads above closed asynchronously: retry a
    // remove that races with it.
    m.ok(&remove_retrying(&["top"]));
    assert_eq!(m.devices(), vec!["base"]);
    m.ok(&remove_retrying(&["base"]));
    assert!(m.devices().is_empty());
}

#[test]
fn concurrent_writers_and_readers() {
    let m = Mount::new();
    let mut model = Model::new(&m, &["a.img", "b.img"], &[1024, 1024], 0);
    m.ok(r#"printf "0 1024 linear $PWD/a.img 0\n1024 1024 linear $PWD/b.img 0\n" > $MNT/ctl/create/c"#);
    let lines = [(1024, 0, 0), (1024, 1, 0)];
    let map = linear_map(&lines);
    let size = 2048 * 512;
    // Interleaved area: piece i (PIECE bytes, not sector-aligned) belongs to writer i % 4, so
    // every piece shares its edge sectors with pieces of other writers, written at the same time.
    const PIECE: u64 = 700;
    const PIECES: u64 = 4 * 40;
    let area = PIECE * PIECES;
    // Then four contiguous regions whose bounds are not sector-aligned either.
    // A stress area crossing the line boundary (sector 1024): writer k owns bytes
    // [k*128, k*128+128) of every sector in it, and rewrites them many times with pwrite, so
    // the read-modify-writes of four writers hit the same sectors at the same time.
    const STRESS: (u64, u64) = (1000, 1048);
    const ROUNDS: u64 = 41;
    let stress_sectors = STRESS.1 - STRESS.0;
    std::fs::write(
        m.path("stress.py"),
        format!(
            "import os, sys\n\
             k = int(sys.argv[1])\n\
             data = open('q%d.bin' % k, 'rb').read()\n\
             fd = os.open(os.environ['MNT'] + '/dev/c', os.O_WRONLY)\n\
             for r in range({ROUNDS}):\n\
             \x20   for s in range({stress_sectors}):\n\
             \x20       at = ((r % 2) * {stress_sectors} + s) * 128\n\
             \x20       assert os.pwrite(fd, data[at:at + 128], ({first} + s) * 512 + k * 128) == 128\n\
             os.close(fd)\n",
            first = STRESS.0
        ),
    )
    .unwrap();
    // Then four contiguous regions around it, whose bounds are not all sector-aligned.
    let bounds = [
        area,
        262_144 + 100,
        STRESS.0 * 512,
        STRESS.1 * 512,
        786_432 + 311,
        size,
    ];
    let regions = [
        (bounds[0], bounds[1]),
        (bounds[1], bounds[2]),
        (bounds[3], bounds[4]),
        (bounds[4], bounds[5]),
    ];
    let mut script = String::from("pids=\n");
    for k in 0..4u64 {
        // The interleaved pieces come from a file as large as the area, one per writer.
        let pieces = pseudo_random(30 + k, area as usize);
        std::fs::write(m.path(&format!("p{k}.bin")), &pieces).unwrap();
        let mine: Vec<u64> = (0..PIECES)
            .filter(|i| i % 4 == k)
            .map(|i| i * PIECE)
            .collect();
        for &at in &mine {
            model.write(at, &pieces[at as usize..(at + PIECE) as usize], &map);
        }
        let (start, end) = regions[k as usize];
        let len = (end - start) as usize;
        // Two passes over the region with different data; the second is what must remain.
        let first = pseudo_random(10 + k, len);
        let second = pseudo_random(20 + k, len);
        std::fs::write(m.path(&format!("w{k}a.bin")), &first).unwrap();
        std::fs::write(m.path(&format!("w{k}b.bin")), &second).unwrap();
        model.write(start, &second, &map);
        let stress = pseudo_random(40 + k, (2 * stress_sectors * 128) as usize);
        std::fs::write(m.path(&format!("q{k}.bin")), &stress).unwrap();
        let last = (ROUNDS - 1) % 2;
        for s in 0..stress_sectors {
            let at = ((last * stress_sectors + s) * 128) as usize;
            model.write((STRESS.0 + s) * 512 + k * 128, &stress[at..at + 128], &map);
        }
        script.push_str(&format!("python3 stress.py {k} & pids=\"$pids $!\"\n"));
        let offsets: Vec<String> = mine.iter().map(u64::to_string).collect();
        script.push_str(&format!(
            "( dd if=w{k}a.bin of=$MNT/dev/c bs=4096 oflag=seek_bytes seek={start} conv=notrunc status=none || exit 1
               for at in {offsets}; do
                 dd if=p{k}.bin of=$MNT/dev/c bs={PIECE} count=1 iflag=skip_bytes skip=$at \\
                    oflag=seek_bytes seek=$at conv=notrunc status=none || exit 1
               done
               dd if=w{k}b.bin of=$MNT/dev/c bs=4096 oflag=seek_bytes seek={start} conv=notrunc status=none || exit 1
             ) & pids=\"$pids $!\"\n",
            offsets = offsets.join(" ")
        ));
    }
    script.push_str(
        r#"
        for r in 1 2; do
            ( for i in 1 2 3 4; do cat $MNT/dev/c > /dev/null || exit 1; \
                  dd if=$MNT/dev/c of=/dev/null bs=1000 status=none || exit 1; done ) & pids="$pids $!"
        done
        fail=0
        for p in $pids; do wait $p || fail=1; done
        exit $fail
    "#,
    );
    m.ok(&script);
    model.check_files(&m, "after concurrent writes");
    assert_same(
        "dev/c after concurrent writes",
        &m.read_dev("c").unwrap(),
        &model.device(size, &map),
    );
}

#[test]
fn relative_paths_resolve_against_the_writers_directory() {
    let m = Mount::new();
    let mut model = Model::new(&m, &["sub/r.img", "a.img"], &[32, 16], 0);
    let mnt = m.mnt.display().to_string();
    let dir = m.dir.display().to_string();
    m.ok(r#"
        set -e
        cd sub
        echo "0 16 linear r.img 4" > $MNT/ctl/create/rel
        echo "0 8 linear ../a.img 2" > $MNT/ctl/create/up
        echo "0 4 linear ./../sub/./r.img 20" > $MNT/ctl/create/dots
        echo "0 6 linear ../mnt/dev/rel 1" > $MNT/ctl/create/stackrel
        cd $MNT
        echo "0 8 linear dev/rel 3" > ctl/create/inside
        cd dev
        echo "0 4 linear up 0" > ../ctl/create/inside2
    "#);
    assert_eq!(
        m.read("dm/rel/table"),
        format!("0 16 linear {dir}/sub/r.img 4\n")
    );
    assert_eq!(m.read("dm/up/table"), format!("0 8 linear {dir}/a.img 2\n"));
    assert_eq!(
        m.read("dm/dots/table"),
        format!("0 4 linear {dir}/sub/r.img 20\n")
    );
    assert_eq!(
        m.read("dm/stackrel/table"),
        format!("0 6 linear {mnt}/dev/rel 1\n")
    );
    assert_eq!(
        m.read("dm/inside/table"),
        format!("0 8 linear {mnt}/dev/rel 3\n")
    );
    assert_eq!(
        m.read("dm/inside2/table"),
        format!("0 4 linear {mnt}/dev/up 0\n")
    );
    let maps: Vec<(&str, u64, Box<MapFn>)> = vec![
        ("rel", 16, Box::new(|b| (0, b + 4 * 512))),
        ("up", 8, Box::new(|b| (1, b + 2 * 512))),
        ("dots", 4, Box::new(|b| (0, b + 20 * 512))),
        ("stackrel", 6, Box::new(|b| (0, b + 5 * 512))),
        ("inside", 8, Box::new(|b| (0, b + 7 * 512))),
        ("inside2", 4, Box::new(|b| (1, b + 2 * 512))),
    ];
    let check = |model: &Model, context: &str| {
        for (dev, sectors, map) in &maps {
            assert_same(
                &format!("{context}: dev/{dev}"),
                &m.read_dev(dev).unwrap(),
                &model.device(sectors * 512, &**map),
            );
        }
    };
    check(&model, "before writes");
    let data = pseudo_random(1, 777);
    m.dd_write("inside", 333, &data);
    model.write(333, &data, &*maps[4].2);
    model.check_files(&m, "after a write through inside");
    check(&model, "after a write through inside");
}

#[test]
fn major_minor_reference_to_a_loop_device() {
    let m = Mount::new();
    let mut model = Model::new(&m, &["a.img"], &[64], 0);
    let data = pseudo_random(5, 1500);
    std::fs::write(m.path("data.bin"), &data).unwrap();
    let out = m.ok(r#"
        set -e
        loop=$(losetup -f --show a.img)
        trap 'echo lp > $MNT/ctl/remove 2>/dev/null; losetup -d $loop' EXIT
        mm=$((0x$(stat -c %t $loop))):$((0x$(stat -c %T $loop)))
        echo "0 48 linear $mm 8" > $MNT/ctl/create/lp
        test "$(cat $MNT/dm/lp/table)" = "0 48 linear $mm 8"
        test "$(stat -c %s $MNT/dev/lp)" = $((48 * 512))
        cmp <(dd if=a.img bs=512 skip=8 count=48 status=none) $MNT/dev/lp
        dd if=data.bin of=$MNT/dev/lp bs=1M oflag=seek_bytes seek=777 conv=notrunc status=none
        sync $MNT/dev/lp
        cmp <(head -c 1500 data.bin) <(dd if=$MNT/dev/lp bs=1 skip=777 count=1500 status=none)
        for i in $(seq 100); do echo lp > $MNT/ctl/remove 2>/dev/null && break; sleep 0.05; done
        test ! -e $MNT/dev/lp
        trap - EXIT
        losetup -d $loop
        echo "$mm"
    "#);
    assert!(out.trim().contains(':'), "{out}");
    model.write(777, &data, &|b| (0, b + 8 * 512));
    model.check_files(&m, "after a write through the loop device");
    assert!(m.devices().is_empty());
}
