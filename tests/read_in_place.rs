//! Reads answered from the backing file's page cache (`Backing::read_in_place`): where a read
//! lies in one piece of one regular file (linear, a stripe's chunk, a snapshot origin, and the
//! same through stacked devices), dmfs writes the reply from a mapping of the file instead of
//! reading it into a buffer first (and a read inside a `zero` line from mapped zeros).
//! These tests check that the bytes are the device's in every
//! shape, whether the read fits one piece or not, that the files are mapped only while a table
//! uses them, and that a backing file cut short under a table fails reads past its new end
//! with EIO and leaves the daemon serving.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{Mount, Rng, assert_same, pattern_image, write_pattern_image};

/// How many mappings of `file` the daemon has (the lines of its /proc/PID/maps naming it).
fn mappings(m: &Mount, file: &Path) -> usize {
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", m.pid())).unwrap();
    let name = file.to_str().unwrap();
    maps.lines().filter(|l| l.ends_with(name)).count()
}

/// Whether the daemon has `file` mapped.
fn mapped(m: &Mount, file: &Path) -> bool {
    mappings(m, file) > 0
}

/// Waits up to two seconds for `mapped(m, file)` to become `want` (a removed device's table is
/// dropped once the requests still holding it are answered).
fn wait_mapped(m: &Mount, file: &Path, want: bool) -> bool {
    for _ in 0..200 {
        if mapped(m, file) == want {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

/// Cuts or grows `file` to `len` bytes behind dmfs's back.
fn resize(file: &Path, len: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.set_len(len).unwrap();
}

/// Reads `dev` at many offsets and lengths (inside one table line or chunk, across them,
/// unaligned, up to and past the end) and compares each with `want`.
fn check_reads(m: &Mount, dev: &str, want: &[u8], seed: u64) {
    let file = std::fs::File::open(m.mnt.join("dev").join(dev)).unwrap();
    let size = want.len() as u64;
    let mut rng = Rng::seeded(seed);
    let mut cases: Vec<(u64, usize)> = vec![
        (0, want.len()),
        (0, 512),
        (size - 512, 512),
        (size - 100, 4096),
        (size, 512),
        (4095, 2),
    ];
    for _ in 0..300 {
        let off = rng.next() % size;
        let len = match rng.next() % 4 {
            0 => 1 + (rng.next() % 512) as usize,
            1 => 4096,
            2 => 1 + (rng.next() % 20000) as usize,
            _ => 512 * (1 + (rng.next() % 64) as usize),
        };
        cases.push((off, len));
    }
    let mut buf = vec![0u8; want.len() + 8192];
    for (off, len) in cases {
        let n = file
            .read_at(&mut buf[..len], off)
            .unwrap_or_else(|e| panic!("dev/{dev}: read of {len} at {off}: {e}"));
        let end = std::cmp::min(size, off + len as u64) as usize;
        let expect = &want[off.min(size) as usize..end];
        assert_same(&format!("dev/{dev}: {len} at {off}"), &buf[..n], expect);
    }
}

/// The bytes of `lines` (a file's bytes, the start sector in it, sectors) laid end to end.
fn linear_bytes(lines: &[(&[u8], u64, u64)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (file, from, len) in lines {
        out.extend_from_slice(&file[(from * 512) as usize..((from + len) * 512) as usize]);
    }
    out
}

#[test]
fn reads_in_every_shape_return_the_devices_bytes() {
    let m = Mount::new();
    let sectors = 2048;
    let imgs: Vec<Vec<u8>> = (0..3).map(|i| pattern_image(i, sectors)).collect();
    for (i, name) in ["a.img", "b.img", "c.img"].iter().enumerate() {
        std::fs::write(m.path(name), &imgs[i]).unwrap();
    }
    m.ok(r#"
        set -e
        printf "0 1000 linear $PWD/a.img 7\n1000 600 linear $PWD/b.img 3\n" > $MNT/ctl/create/lin
        echo "0 1536 striped 3 8 $PWD/a.img 0 $PWD/b.img 16 $PWD/c.img 32" > $MNT/ctl/create/str
        echo "0 1200 linear $MNT/dev/str 20" > $MNT/ctl/create/top
        echo "0 2048 snapshot-origin $PWD/c.img" > $MNT/ctl/create/origin
        printf "0 1000 zero\n1000 600 linear $PWD/b.img 3\n" > $MNT/ctl/create/zl
    "#);
    let lin = linear_bytes(&[(&imgs[0], 7, 1000), (&imgs[1], 3, 600)]);
    // The kernel's striping: chunk k of the target is chunk k / 3 of stripe k % 3.
    let starts = [0u64, 16, 32];
    let mut str_bytes = Vec::new();
    for chunk in 0..1536 / 8 {
        let (stripe, row) = (chunk % 3, chunk / 3);
        let from = ((starts[stripe] + row as u64 * 8) * 512) as usize;
        str_bytes.extend_from_slice(&imgs[stripe][from..from + 8 * 512]);
    }
    let top = str_bytes[20 * 512..(20 + 1200) * 512].to_vec();
    check_reads(&m, "lin", &lin, 1);
    check_reads(&m, "str", &str_bytes, 2);
    check_reads(&m, "top", &top, 3);
    check_reads(&m, "origin", &imgs[2], 4);
    let mut zl = vec![0u8; 1000 * 512];
    zl.extend_from_slice(&linear_bytes(&[(&imgs[1], 3, 600)]));
    check_reads(&m, "zl", &zl, 5);
}

#[test]
fn backing_files_are_mapped_while_a_table_uses_them() {
    let m = Mount::new();
    let a = m.path("a.img");
    let b = m.path("b.img");
    write_pattern_image(&a, 0, 2048);
    write_pattern_image(&b, 1, 2048);
    m.ok(r#"
        set -e
        echo "0 2000 linear $PWD/a.img 48" > $MNT/ctl/create/base
        echo "0 1000 linear $MNT/dev/base 100" > $MNT/ctl/create/top
        echo "0 2048 crypt aes-xts-plain64 $(printf '%064d' 7) 0 $PWD/b.img 0" > $MNT/ctl/create/enc
    "#);
    assert!(!mapped(&m, &a), "a.img is mapped before any read");
    // A read of the top device lies in one piece of a.img, two devices down.
    let want = pattern_image(0, 2048)[(148 * 512)..(148 * 512 + 4096)].to_vec();
    let got = m.ok_bytes("dd if=$MNT/dev/top bs=4096 count=1 status=none");
    assert_same("dev/top", &got, &want);
    assert!(mapped(&m, &a), "a read through dev/top did not map a.img");
    // Every device over the file shares one mapping of it.
    m.ok(r#"
        set -e
        for i in 1 2 3; do
            echo "0 100 linear $PWD/a.img $((i * 300))" > $MNT/ctl/create/more$i
            dd if=$MNT/dev/more$i of=/dev/null bs=4096 count=2 status=none
        done
    "#);
    assert_eq!(mappings(&m, &a), 1, "a.img mapped more than once");
    m.ok("for i in 1 2 3; do echo more$i > $MNT/ctl/remove; done");
    // A crypt device changes the bytes it reads: its file is read, never mapped.
    m.ok("dd if=$MNT/dev/enc of=/dev/null bs=4096 count=16 status=none");
    assert!(!mapped(&m, &b), "the crypt device's b.img was mapped");
    // Once no table uses the file, its mapping goes with the last one.
    m.ok("echo top > $MNT/ctl/remove");
    assert!(
        mapped(&m, &a),
        "a.img unmapped while dev/base still uses it"
    );
    m.ok("echo base > $MNT/ctl/remove");
    assert!(
        wait_mapped(&m, &a, false),
        "a.img is still mapped after its devices were removed"
    );
}

#[test]
fn a_backing_file_cut_short_fails_reads_past_its_end() {
    let m = Mount::new();
    let img = m.path("t.img");
    write_pattern_image(&img, 0, 8192);
    m.ok(r#"echo "0 8192 linear $PWD/t.img 0" > $MNT/ctl/create/t"#);
    m.ok("cmp $MNT/dev/t t.img");
    assert!(mapped(&m, &img), "the read did not map t.img");
    // Shorten the file under the table: the mapping now reaches past its end.
    resize(&img, 1 << 20);
    // O_DIRECT, so that the kernel asks dmfs whatever it cached of dev/t before.
    let err = m.fails("dd if=$MNT/dev/t of=/dev/null bs=4096 skip=600 count=1 iflag=direct");
    assert!(err.contains("Input/output error"), "{err}");
    // The daemon lives on, and the part still in the file reads as before.
    let got = m.ok_bytes("dd if=$MNT/dev/t bs=4096 count=1 iflag=direct status=none");
    assert_same("dev/t's first page", &got, &pattern_image(0, 8)[..4096]);
    assert!(m.is_mounted());
    m.ok("cat $MNT/ctl/version > /dev/null");
    // Grown back (with zeros), the file reads again where it was cut.
    resize(&img, 4 << 20);
    let got = m.ok_bytes("dd if=$MNT/dev/t bs=4096 skip=600 count=1 iflag=direct status=none");
    assert_same("dev/t after the file grew back", &got, &[0u8; 4096]);
}
