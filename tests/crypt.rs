//! The crypt target against what the kernel's dm-crypt v1.24.0 did with the same tables
//! (fixtures/kernel/crypt/crypt.out, recorded by fixtures/kernel/crypt/record-crypt.sh in the
//! kernel-oracle VM): the same `table` (with the key, as `--showkeys` prints it) and `status`
//! text, the same plaintext read from the pattern disks, the same ciphertext written onto a
//! zeroed disk, and the same tables refused with the same words.

mod common;
use common::fixture::{self, Block, make_disks};
use common::*;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;

fn fixtures() -> Vec<Block> {
    let blocks = fixture::read("crypt/crypt.out", &["targets", "case", "bad", "enc"]);
    assert!(blocks.len() > 80, "too few recorded cases");
    blocks
}

/// The zeroed disk E of the recording: 8192 sectors.
const E_SECTORS: u64 = 8192;

fn make_zero_disk(m: &Mount) {
    let f = std::fs::File::create(m.path("E.img")).unwrap();
    f.set_len(E_SECTORS * 512).unwrap();
}

/// Placeholders -> this mount's paths: `$A`..`$E` the images, `$dm:NAME` the device NAME of
/// the mount.
fn substitute(m: &Mount, text: &str) -> String {
    let text = fixture::substitute(m, text);
    let mut out = text.replace("$E", &m.path("E.img").to_string_lossy());
    while let Some(at) = out.find("$dm:") {
        let name_len = out[at + 4..]
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(out.len() - at - 4);
        let name = out[at + 4..at + 4 + name_len].to_string();
        let path = m.mnt.join("dev").join(&name);
        out.replace_range(at..at + 4 + name_len, &path.to_string_lossy());
    }
    out
}

fn lines(m: &Mount, b: &Block, key: &str) -> String {
    b.all(key).iter().map(|l| substitute(m, l) + "\n").collect()
}

fn sha256(m: &Mount, file: &str) -> String {
    m.ok(&format!("sha256sum < {file} | cut -d' ' -f1"))
        .trim()
        .to_string()
}

/// The lower devices a stacked case names (`pre NAME TABLE`), created first.
fn create_pre(m: &Mount, b: &Block) -> Vec<String> {
    b.all("pre")
        .iter()
        .map(|p| {
            let (name, table) = p.split_once(' ').unwrap();
            m.create(name, &substitute(m, table));
            name.to_string()
        })
        .collect()
}

fn remove_all(m: &Mount, name: &str, pre: &[String]) {
    m.remove(name);
    for p in pre.iter().rev() {
        m.remove(p);
    }
}

/// Tables the kernel accepts and dmfs refuses, with what dmfs says instead: things dmfs does
/// not implement, and two the kernel accepts but cannot serve.
const DEPARTURES: [(&str, &str); 5] = [
    // Several keys, one per sector by sector number (`aes:2-...`).
    (
        "keycount-2",
        "Multi-key cipher specification (key count 2) is not supported",
    ),
    // With no IV mode the kernel encrypts with whatever its IV buffer holds.
    ("capi-no-iv", "IV mechanism required"),
    ("iv-eboiv", "IV mode eboiv is not supported by dmfs"),
    ("essiv-md5", "ESSIV hash md5 is not supported by dmfs"),
    // Accepted without an integrity device below; reading it oopsed the kernel.
    ("integrity-none", "Integrity profile not supported."),
];

#[test]
fn crypt_is_listed_where_the_kernel_lists_it() {
    let m = Mount::new();
    let blocks = fixtures();
    let recorded = blocks.iter().find(|b| b.kind == "targets").unwrap();
    let mut kernel = vec![recorded.name.clone()];
    kernel.extend(recorded.all("targets").iter().map(|s| s.to_string()));
    let ours: Vec<String> = m.read("ctl/targets").lines().map(String::from).collect();
    let names: Vec<&str> = ours
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert!(names.contains(&"crypt"), "{ours:?}");
    let kernel: Vec<String> = kernel
        .into_iter()
        .filter(|l| names.contains(&l.split_whitespace().next().unwrap()))
        .collect();
    assert_eq!(ours, kernel);
}

#[test]
fn accepted_tables_print_and_decrypt_as_the_kernel() {
    let m = Mount::new();
    make_disks(&m);
    let mut checked = 0;
    let mut mismatches = Vec::new();
    for b in fixtures().iter().filter(|b| {
        (b.kind == "case" && b.one("createfail").is_none())
            || (b.kind == "bad"
                && b.one("exit") == Some("0")
                && !DEPARTURES.iter().any(|(c, _)| *c == b.name))
    }) {
        let name = &b.name;
        let pre = create_pre(&m, b);
        if let Err(e) = m.try_create(name, &lines(&m, b, "table")) {
            mismatches.push(format!("{name}: refused: {e}"));
            continue;
        }
        let table = m.read(&format!("dm/{name}/table"));
        if table != lines(&m, b, "ktable") {
            mismatches.push(format!(
                "{name}: table\n  dmfs:   {table:?}\n  kernel: {:?}",
                lines(&m, b, "ktable")
            ));
        }
        let status = m.read(&format!("dm/{name}/status"));
        if status != lines(&m, b, "kstatus") {
            mismatches.push(format!("{name}: status {status:?}"));
        }
        if let Some(size) = b.one("size") {
            let size: u64 = size.parse().unwrap();
            assert_eq!(m.dev_size(name), size * 512, "{name}: size");
        }
        if let Some(hash) = b.one("sha256") {
            let ours = sha256(&m, &format!("$MNT/dev/{name}"));
            if ours != hash {
                mismatches.push(format!("{name}: plaintext read differs from the kernel's"));
            }
        }
        remove_all(&m, name, &pre);
        checked += 1;
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert!(checked >= 40, "only {checked} accepted cases");
}

/// The kernel's errno names in kmsg lines, as numbers.
fn errno(name: &str) -> Option<i32> {
    Some(match name {
        "EINVAL" => libc::EINVAL,
        "ENOENT" => libc::ENOENT,
        "ENOKEY" => libc::ENOKEY,
        _ => return None,
    })
}

#[test]
fn refused_tables_are_refused_with_the_kernels_words() {
    let m = Mount::new();
    make_disks(&m);
    m.ok("echo '0 8 zero' > $MNT/ctl/create/keep");
    let mut checked = 0;
    let mut mismatches = Vec::new();
    for b in fixtures().iter().filter(|b| b.kind == "bad") {
        let departure = DEPARTURES.iter().find(|(c, _)| *c == b.name);
        if b.one("exit") == Some("0") && departure.is_none() {
            continue; // accepted by both: the test above
        }
        let table = lines(&m, b, "table");
        let Err(err) = m.write_table("create", "refused", &table) else {
            mismatches.push(format!("{}: dmfs accepted it", b.name));
            m.remove("refused");
            continue;
        };
        assert_eq!(m.devices(), vec!["keep"], "{}: a device was left", b.name);
        let last = m.last_error();
        if let Some((_, ours)) = departure {
            if !last.contains(ours) {
                mismatches.push(format!("{}: expected {ours:?}, got {last:?}", b.name));
            }
            checked += 1;
            continue;
        }
        // "device-mapper: table: 253:0: crypt: Invalid IV mode (-EINVAL)", or the table's
        // "vda too small for target: ..." (vdX: the image's path in dmfs's words).
        let reasons: Vec<String> = b
            .all("kmsg")
            .iter()
            .filter_map(|k| k.strip_prefix("device-mapper: table: "))
            .filter_map(|k| k.split_once(": ").map(|(_, r)| r))
            .map(|r| {
                let r = r.strip_prefix("crypt: ").unwrap_or(r);
                let mut r = r.to_string();
                for (dev, img) in [("vda", "A"), ("vdb", "B"), ("vdc", "C"), ("vdd", "D")] {
                    r = r.replace(
                        &format!("{dev} too small"),
                        &format!("{} too small", m.path(&format!("{img}.img")).display()),
                    );
                }
                r
            })
            .collect();
        let [reason] = reasons.as_slice() else {
            // A refusal at table level (the line alignment): dmfs must refuse it too, above.
            checked += 1;
            continue;
        };
        let (words, kernel_errno) = match reason.rsplit_once(" (-E") {
            Some((w, e)) => (w.to_string(), errno(&format!("E{}", &e[..e.len() - 1]))),
            None => (reason.clone(), None),
        };
        if !last.contains(&words) {
            mismatches.push(format!(
                "{}: kernel said {words:?}, dmfs said {last:?}",
                b.name
            ));
        }
        if let Some(want) = kernel_errno
            && !words.starts_with("Device lookup failed")
            && err.raw_os_error() != Some(want)
        {
            mismatches.push(format!(
                "{}: kernel's errno {want}, dmfs's {:?}",
                b.name,
                err.raw_os_error()
            ));
        }
        checked += 1;
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert!(checked >= 40, "only {checked} refused cases");
}

/// Plaintext (the start of pattern disk A) written through a crypt device onto the zeroed disk
/// E gives the kernel's ciphertext byte for byte, and reads back as the plaintext: so dmfs
/// reads the kernel's ciphertext as the kernel wrote it.
#[test]
fn written_ciphertext_is_the_kernels() {
    let m = Mount::new();
    let mut checked = 0;
    let mut mismatches = Vec::new();
    for b in fixtures().iter().filter(|b| b.kind == "enc") {
        make_zero_disk(&m);
        let name = &b.name;
        let pre = create_pre(&m, b);
        m.create(name, &lines(&m, b, "table"));
        let size: u64 = b.one("size").unwrap().parse().unwrap();
        let plain = pattern_image(0, size);
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(write_through_flags())
                .open(m.mnt.join("dev").join(name))
                .unwrap();
            f.write_all(&plain)
                .unwrap_or_else(|e| panic!("{name}: write: {e}\n{}", m.log()));
            f.sync_all().unwrap();
        }
        if sha256(&m, &format!("$MNT/dev/{name}")) != b.one("readback").unwrap() {
            mismatches.push(format!("{name}: read back differs from the kernel's"));
        }
        let mut back = Vec::new();
        std::fs::File::open(m.mnt.join("dev").join(name))
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_same(&format!("{name}: read back"), &back, &plain);
        remove_all(&m, name, &pre);
        let (disk, hash) = b.one("diskhash").unwrap().split_once(' ').unwrap();
        if sha256(&m, &format!("{disk}.img")) != hash {
            mismatches.push(format!(
                "{name}: ciphertext on {disk} differs from the kernel's"
            ));
        }
        checked += 1;
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert!(checked >= 12, "only {checked} ciphertext cases");
}

/// A write encrypts a copy: the plaintext the caller gave stays where it was, and a device
/// over the same sectors without crypt shows ciphertext, not plaintext.
#[test]
fn writes_encrypt_a_copy_and_the_disk_holds_ciphertext() {
    let m = Mount::new();
    make_zero_disk(&m);
    let key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    m.create(
        "c",
        &substitute(&m, &format!("0 64 crypt aes-xts-plain64 {key} 0 $E 0")),
    );
    m.create("raw", &substitute(&m, "0 64 linear $E 0"));
    let plain = pseudo_random(7, 64 * 512);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(write_through_flags())
        .open(m.mnt.join("dev/c"))
        .unwrap();
    f.write_all(&plain).unwrap();
    f.sync_all().unwrap();
    let raw = std::fs::read(m.mnt.join("dev/raw")).unwrap();
    assert_eq!(raw.len(), plain.len());
    for (i, (r, p)) in raw.chunks(512).zip(plain.chunks(512)).enumerate() {
        assert_ne!(r, p, "sector {i} reached the disk unencrypted");
    }
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut back = vec![0; plain.len()];
    f.read_exact(&mut back).unwrap();
    assert_same("read back", &back, &plain);
}

/// With `sector_size:4096`, I/O that covers part of a cipher sector (FUSE cuts a direct write
/// wherever the writer's buffer crosses a page) reads or patches the whole cipher sector, as the
/// page cache above a kernel dm-crypt device does: the rest of the sector keeps its bytes.
#[test]
fn io_inside_a_large_cipher_sector_patches_the_whole_sector() {
    let m = Mount::with_args(&["--cache", "direct"]);
    make_zero_disk(&m);
    let key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    m.create(
        "c",
        &substitute(
            &m,
            &format!("0 64 crypt aes-xts-plain64 {key} 0 $E 0 1 sector_size:4096"),
        ),
    );
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.mnt.join("dev/c"))
        .unwrap();
    let mut before = vec![0; 64 * 512];
    f.read_exact(&mut before).unwrap();
    // One sector inside the first cipher sector, and a run across the second and third.
    let mut want = before.clone();
    for (at, len, byte) in [(512, 512, 1u8), (4096 + 1024, 5000, 2)] {
        f.seek(SeekFrom::Start(at as u64)).unwrap();
        f.write_all(&vec![byte; len]).unwrap();
        want[at..at + len].fill(byte);
    }
    // Partial reads: one sector, then the middle of a cipher sector.
    for (at, len) in [(512, 512), (4096 + 3000, 100)] {
        let mut part = vec![0; len];
        f.seek(SeekFrom::Start(at as u64)).unwrap();
        f.read_exact(&mut part).unwrap();
        assert!(part == want[at..at + len], "read of {len} at {at}");
    }
    let mut after = vec![0; 64 * 512];
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_exact(&mut after).unwrap();
    assert_same("whole device", &after, &want);
}

/// Writes of distinct 512-byte sectors that share cipher sectors, from several threads at
/// once, each sector written once: each patch holds off the others, so none is lost.
#[test]
fn concurrent_patches_of_one_cipher_sector_lose_nothing() {
    let m = Mount::with_args(&["--cache", "direct"]);
    make_zero_disk(&m);
    let key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const SECTORS: usize = 4096;
    m.create(
        "c",
        &substitute(
            &m,
            &format!("0 {SECTORS} crypt aes-cbc-essiv:sha256 {key} 0 $E 0 1 sector_size:4096"),
        ),
    );
    let path = m.mnt.join("dev/c");
    const THREADS: usize = 4;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let path = &path;
            s.spawn(move || {
                use std::os::unix::fs::FileExt;
                let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
                // Thread t owns the 512-byte sectors t, t + 4, t + 8, ...: every cipher
                // sector is patched by all the threads at about the same time.
                for slot in (t..SECTORS).step_by(THREADS) {
                    f.write_all_at(&[t as u8 + 1; 512], slot as u64 * 512)
                        .unwrap();
                }
            });
        }
    });
    let data = std::fs::read(&path).unwrap();
    let lost: Vec<usize> = data
        .chunks(512)
        .enumerate()
        .filter(|(slot, sector)| sector.iter().any(|&b| b != (slot % THREADS) as u8 + 1))
        .map(|(slot, _)| slot)
        .collect();
    assert!(
        lost.is_empty(),
        "{} writes lost, first at sector {:?}",
        lost.len(),
        lost.first()
    );
}

/// A `sector_size:4096` line that starts off a 4096-byte boundary of its device is refused, as
/// the kernel's table check refuses a line boundary off the device's logical block size.
#[test]
fn a_large_sector_line_must_start_on_its_sector_size() {
    let m = Mount::new();
    make_zero_disk(&m);
    let key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    let table = substitute(
        &m,
        &format!("0 4 linear $E 0\n4 8 crypt aes-xts-plain64 {key} 0 $E 8 1 sector_size:4096\n"),
    );
    let err = m.write_table("create", "c", &table).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    assert!(
        m.last_error()
            .contains("not aligned to h/w logical block size 4096"),
        "{}",
        m.last_error()
    );
    assert!(m.devices().is_empty());
    // On a boundary it is fine.
    let table = table
        .replace("0 4 linear", "0 8 linear")
        .replace("4 8 crypt", "8 8 crypt");
    m.create("c", &table);
}
