//! Partition tables read as kpartx reads them, against what kpartx and the kernel did with the
//! same images (fixtures/kernel/partitions/: kpartx.out and the images, recorded by record.sh
//! there in the kernel-oracle VM): the same partitions, names, order, starts and lengths, the
//! same tables with the image's path where kpartx has the loop device's 7:N, the same
//! partitions refused for running past the end with the kernel's words; and a clear error
//! where kpartx passes bad input over in silence. Then the tables at work: a dmfs mount reads
//! the table through one of its devices and maps every partition with the lines produced.

mod common;
use common::fixture::{self, Block};
use common::*;

use dmfs::activate::partitions::{self, PartitionTable, Scheme};
use std::fs::File;
use std::path::{Path, PathBuf};

fn fixtures() -> Vec<Block> {
    let blocks = fixture::read("partitions/kpartx.out", &["image", "named"]);
    assert!(blocks.len() >= 19, "too few recorded cases");
    blocks
}

/// A scratch directory, removed on drop (also when a test fails).
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        Scratch(scratch_dir(tag))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The recorded image, unpacked into `dir`.
fn image(dir: &Path, name: &str) -> PathBuf {
    let gz = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/kernel/partitions")
        .join(format!("{name}.gz"));
    let out = dir.join(name);
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -dc '{}' > '{}'", gz.display(), out.display()))
        .status()
        .unwrap();
    assert!(st.success(), "unpacking {name}");
    out
}

/// A `NAME: 0 LEN linear MAJ:MIN START` line of kpartx or dmsetup: name, length, start, and the
/// table with the device number replaced by `path`.
fn parse_map(line: &str, path: &Path) -> (String, u64, u64, String) {
    let (name, rest) = line.split_once(": ").unwrap();
    let name = name.split(' ').next().unwrap().to_string();
    let f: Vec<&str> = rest.split(' ').collect();
    assert_eq!((f.len(), f[0], f[2]), (5, "0", "linear"), "{line}");
    let table = format!("0 {} linear {} {}", f[1], path.display(), f[4]);
    (name, f[1].parse().unwrap(), f[4].parse().unwrap(), table)
}

/// What kpartx did with an image and what the reader must say instead, where it departs.
enum Expect {
    /// The partitions kpartx mapped, all of them.
    Same(Scheme),
    /// kpartx mapped some and the kernel refused others; `read` refuses the first refused one
    /// with the kernel's words, `scan` lists them all.
    PastEnd(Scheme),
    /// kpartx mapped them all; `read` refuses the table with this reason.
    Refused(Scheme, &'static str),
    /// kpartx mapped what it could read, or nothing, in silence; `scan` fails with this reason.
    Fails(&'static str),
}

fn expectation(image: &str) -> Expect {
    use Expect::*;
    match image {
        "gpt.img" => Same(Scheme::Gpt),
        "gpt-absurd-count.img" | "gpt-bad-primary-entries.img" | "gpt-bad-primary-header.img" => {
            Same(Scheme::GptBackup)
        }
        "gpt-truncated.img" => PastEnd(Scheme::Gpt),
        "mbr-primary.img" | "mbr-ext05.img" | "mbr-ext0f.img" | "mbr-ext85.img" => {
            Same(Scheme::Dos)
        }
        "mbr-past-end.img" => PastEnd(Scheme::Dos),
        "mbr-overlap.img" => Refused(
            Scheme::Dos,
            "partitions loop0p1 (sectors 2048-6143) and loop0p2 (sectors 4096-6143) overlap",
        ),
        "mbr-ebr-loop.img" => Refused(
            Scheme::Dos,
            "partitions loop0p6 (sectors 5120-6143) and loop0p7 (sectors 5120-6143) overlap",
        ),
        "gpt-both-bad.img" => Fails(
            "loop0: protective MBR, but no valid GPT: primary header (sector 1): header CRC \
             mismatch; backup header (sector 8191): header CRC mismatch",
        ),
        "mbr-ext-truncated.img" => Fails(
            "loop0: truncated image: the extended partition's table at sector 4098 lies past the \
             end (4000 sectors)",
        ),
        "tiny.img" => Fails("loop0: truncated image: shorter than one sector, no partition table"),
        other => panic!("no expectation for recorded image {other}"),
    }
}

/// Compares what the reader made of `path` (named after `base`) with kpartx's block; the
/// mismatches, one line each.
fn compare(b: &Block, path: &Path, base: &str, device: &str) -> Vec<String> {
    let mut bad = Vec::new();
    let img = b.name.split(' ').next_back().unwrap();
    let file = File::open(path).unwrap();
    let sectors = file.metadata().unwrap().len() / 512;
    let mapped: Vec<_> = b
        .all("table")
        .iter()
        .filter(|l| !l.starts_with(&format!("{base}: ")))
        .map(|l| parse_map(&l.replace(device, "7:0"), path))
        .collect::<Vec<_>>();
    let mut mapped = mapped;
    mapped.sort();
    // The order kpartx mapped them in.
    let kpartx_order: Vec<&str> = b
        .all("stdout")
        .iter()
        .filter_map(|l| l.strip_prefix("add map "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    // kpartx's stderr names those the kernel refused, and the kernel log says why, in the
    // same order.
    let refused: Vec<&str> = b
        .all("stderr")
        .iter()
        .filter_map(|l| l.strip_prefix("create/reload failed on "))
        .collect();
    let kernel_refusals: Vec<&str> = b
        .all("kmsg")
        .iter()
        .filter(|l| l.contains("too small for target"))
        .map(|l| l.splitn(4, ": ").nth(3).unwrap())
        .collect();
    let scan = partitions::scan(&file, base);
    let read = partitions::read(&file, base);
    let expect = if b.kind == "named" {
        Expect::Same(match img {
            "gpt.img" => Scheme::Gpt,
            _ => Scheme::Dos,
        })
    } else {
        expectation(img)
    };
    let check_scan = |t: &PartitionTable, scheme: Scheme, bad: &mut Vec<String>| {
        if t.scheme != scheme {
            bad.push(format!("{img}: scheme {:?}, want {scheme:?}", t.scheme));
        }
        let numbers: Vec<u32> = t.partitions.iter().map(|p| p.number).collect();
        if !numbers.is_sorted() {
            bad.push(format!("{img}: not in kpartx's order: {numbers:?}"));
        }
        // Those inside the image are what kpartx mapped, the others what the kernel refused,
        // with the same start and length in its message.
        let (inside, past): (Vec<_>, Vec<_>) = t
            .partitions
            .iter()
            .partition(|p| p.start.0 + p.length.0 <= sectors);
        let got: Vec<(String, u64, u64, String)> = inside
            .iter()
            .map(|p| {
                let table = p.table(&path.display().to_string());
                (p.name.clone(), p.length.0, p.start.0, table)
            })
            .collect();
        // `dmsetup table` sorts by name; kpartx's verbose lines are in the order it mapped.
        let order: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
        let mut got = got.clone();
        got.sort();
        if got != mapped {
            let at = got.iter().zip(&mapped).position(|(g, m)| g != m);
            bad.push(format!(
                "{img}: mapped {} partitions, kpartx {}; first difference: {:?} vs {:?}",
                got.len(),
                mapped.len(),
                at.map(|i| &got[i]),
                at.map(|i| &mapped[i])
            ));
        }
        if order != kpartx_order {
            bad.push(format!("{img}: order {order:?}, kpartx's {kpartx_order:?}"));
        }
        let got_refused: Vec<String> = past
            .iter()
            .map(|p| {
                let (s, l) = (p.start.0, p.length.0);
                format!(
                    "{}: {base} too small for target: start={s}, len={l}, dev_size={sectors}",
                    p.name
                )
            })
            .collect();
        let want_refused: Vec<String> = refused
            .iter()
            .zip(&kernel_refusals)
            .map(|(name, why)| format!("{name}: {why}"))
            .collect();
        if got_refused != want_refused || refused.len() != kernel_refusals.len() {
            bad.push(format!(
                "{img}: refused {got_refused:?}, kernel {want_refused:?}"
            ));
        }
    };
    match expect {
        Expect::Same(scheme) => {
            if !refused.is_empty() || !kernel_refusals.is_empty() {
                bad.push(format!("{img}: kpartx refused {refused:?}: re-recorded?"));
            }
            match read {
                Ok(t) => check_scan(&t, scheme, &mut bad),
                Err(e) => bad.push(format!("{img}: read failed: {e}")),
            }
        }
        Expect::PastEnd(scheme) => {
            match scan {
                Ok(t) => check_scan(&t, scheme, &mut bad),
                Err(e) => bad.push(format!("{img}: scan failed: {e}")),
            }
            let want = format!(
                "{}: {}",
                refused[0],
                kernel_refusals[0].replace("loop0", base)
            );
            match read {
                Err(e) if e.reason == want && e.errno == libc::EINVAL => {}
                other => bad.push(format!(
                    "{img}: read gave {other:?}, want the error {want:?}"
                )),
            }
        }
        Expect::Refused(scheme, why) => {
            match scan {
                Ok(t) => check_scan(&t, scheme, &mut bad),
                Err(e) => bad.push(format!("{img}: scan failed: {e}")),
            }
            match read {
                Err(e) if e.reason == why && e.errno == libc::EINVAL => {}
                other => bad.push(format!(
                    "{img}: read gave {other:?}, want the error {why:?}"
                )),
            }
        }
        Expect::Fails(why) => {
            for (what, r) in [("scan", scan), ("read", read)] {
                match r {
                    Err(e) if e.reason == why && e.errno == libc::EINVAL => {}
                    other => bad.push(format!(
                        "{img}: {what} gave {other:?}, want the error {why:?}"
                    )),
                }
            }
        }
    }
    bad
}

#[test]
fn every_recorded_image_reads_as_kpartx_read_it() {
    let scratch = Scratch::new("partitions");
    let dir = &scratch.0;
    let mut bad = Vec::new();
    let mut seen = 0;
    for b in fixtures().iter().filter(|b| b.kind == "image") {
        let path = image(dir, &b.name);
        let sectors = File::open(&path).unwrap().metadata().unwrap().len() / 512;
        assert_eq!(b.one("sectors"), Some(&*sectors.to_string()), "{}", b.name);
        bad.extend(compare(b, &path, "loop0", "7:0"));
        seen += 1;
    }
    assert_eq!(seen, 15, "recorded images");
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// kpartx on device-mapper devices called `disk` and `vm0` over an image names the partitions
/// `disk1`... and `vm0p1`...: the image's stem is the base name dmfs gives it.
#[test]
fn names_follow_kpartx_on_a_named_device() {
    let scratch = Scratch::new("partitions-named");
    let dir = &scratch.0;
    let mut bad = Vec::new();
    let mut seen = 0;
    for b in fixtures().iter().filter(|b| b.kind == "named") {
        let (base, img) = b.name.split_once(' ').unwrap();
        // The image as a user names it: disk.img or vm0.raw, its stem the base name.
        let ext = if base == "vm0" { "raw" } else { "img" };
        let path = dir.join(format!("{base}.{ext}"));
        std::fs::rename(image(dir, img), &path).unwrap();
        assert_eq!(partitions::image_stem(&path), base);
        assert_eq!(b.one("base").map(|l| l.ends_with(" 7:0 0")), Some(true));
        bad.extend(compare(b, &path, base, "253:0"));
        seen += 1;
    }
    assert_eq!(seen, 4, "recorded named cases");
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// Rewrites GPT header fields at `lba` of the image at `path` (`(offset, bytes)` pairs) and
/// gives it a header CRC that matches again, so only the fields themselves are wrong.
fn forge_gpt_header(path: &Path, lba: u64, fields: &[(usize, &[u8])]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut h = [0u8; 92];
    f.read_exact_at(&mut h, lba * 512).unwrap();
    for (at, bytes) in fields {
        h[*at..*at + bytes.len()].copy_from_slice(bytes);
    }
    h[16..20].fill(0);
    let crc = crc32(&h);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    f.write_all_at(&h, lba * 512).unwrap();
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn read_error(path: &Path, base: &str) -> String {
    match partitions::read(&File::open(path).unwrap(), base) {
        Ok(t) => panic!("{}: read as {t:?}", path.display()),
        Err(e) => {
            assert_eq!(e.errno, libc::EINVAL, "{e}");
            e.reason
        }
    }
}

/// Bad input the fixtures do not hold: a GPT whose two headers both claim 2^32-1 entries (or
/// an array that wraps kpartx's 32-bit byte count to 0), or put their entries past the end, is
/// refused at once, without reading or allocating what the headers claim.
#[test]
fn absurd_gpt_headers_are_refused_without_reading_them() {
    let scratch = Scratch::new("partitions-absurd");
    let dir = &scratch.0;
    let cases: [(&str, usize, &[u8], &str); 3] = [
        (
            "count",
            80,
            &u32::MAX.to_le_bytes(),
            "GUID Partition Table is too large: 549755813760 > 4194304 bytes",
        ),
        (
            "wrap",
            80,
            &(1u32 << 25).to_le_bytes(),
            "GUID Partition Table is too large: 4294967296 > 4194304 bytes",
        ),
        (
            "far",
            72,
            &(1u64 << 40).to_le_bytes(),
            "partition entries at sector 1099511627776 run past the end of the image",
        ),
    ];
    for (tag, at, bytes, why) in cases {
        let path = image(dir, "gpt.img");
        let forged = dir.join(format!("absurd-{tag}.img"));
        std::fs::rename(&path, &forged).unwrap();
        forge_gpt_header(&forged, 1, &[(at, bytes)]);
        // The primary alone: the backup is used.
        let t = partitions::read(&File::open(&forged).unwrap(), "absurd").unwrap();
        assert_eq!(t.scheme, Scheme::GptBackup, "{tag}");
        assert_eq!(t.partitions.len(), 3, "{tag}");
        forge_gpt_header(&forged, 8191, &[(at, bytes)]);
        let started = std::time::Instant::now();
        assert_eq!(
            read_error(&forged, "absurd"),
            format!(
                "absurd: protective MBR, but no valid GPT: primary header (sector 1): {why}; \
                 backup header (sector 8191): {why}"
            ),
            "{tag}"
        );
        // Reading 4 KiB is all it takes; a scan of what the header claims would take minutes.
        assert!(
            started.elapsed().as_secs() < 5,
            "{tag}: took {:?}",
            started.elapsed()
        );
    }
}

/// The tables at work in a dmfs mount: the partition table read through a dmfs device over
/// the image (a `Backing`, as `ctl/activate` will read it) is the image's, and every table line
/// produced creates a device whose table is that line and whose bytes are the partition's.
#[test]
fn produced_tables_map_the_partitions_in_a_mount() {
    use dmfs::backing::Backing;
    let m = Mount::new();
    for img in ["mbr-ext05.img", "gpt.img"] {
        let path = image(&m.path(""), img);
        let base = partitions::image_stem(&path);
        // Distinct bytes in every partition, so a wrong start or length cannot read the same.
        let direct = partitions::read(&File::open(&path).unwrap(), &base).unwrap();
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            for p in &direct.partitions {
                if p.kind != partitions::Kind::Extended {
                    let data = pseudo_random(p.number.into(), (p.length.0 * 512) as usize);
                    f.write_all_at(&data, p.start.0 * 512).unwrap();
                }
            }
        }
        let image_bytes = std::fs::read(&path).unwrap();
        let sectors = image_bytes.len() as u64 / 512;
        m.create("whole", &format!("0 {sectors} linear {} 0", path.display()));
        let through_dmfs = File::open(m.mnt.join("dev/whole")).unwrap();
        let via_mount = partitions::read(&through_dmfs, &base).unwrap();
        let via_backing = partitions::read(
            &Backing::open_path(&m.mnt.join("dev/whole"), false).unwrap(),
            &base,
        )
        .unwrap();
        assert_eq!(via_mount, direct, "{img} through dev/whole");
        assert_eq!(via_backing, direct, "{img} through a Backing");
        drop(through_dmfs);
        m.remove("whole");
        let reference = path.display().to_string();
        for p in &direct.partitions {
            let table = p.table(&reference);
            m.create(&p.name, &table);
            assert_eq!(
                m.read(&format!("dm/{}/table", p.name)),
                format!("{table}\n")
            );
            let want =
                &image_bytes[(p.start.0 * 512) as usize..((p.start.0 + p.length.0) * 512) as usize];
            assert_same(&p.name, &m.read_dev(&p.name).unwrap(), want);
        }
        for p in &direct.partitions {
            m.remove(&p.name);
        }
    }
}
