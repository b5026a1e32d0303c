//! LVM2 metadata read as `vgchange -ay` reads it, checked against the kernel and LVM2 2.03.16:
//! fixtures/kernel/lvm/ holds five PV images made in the oracle VM and what `vgchange -ay`,
//! `dmsetup info` and `dmsetup table` printed there. dmfs must plan the same devices, in the
//! same order, with the same names, uuids, read-only flags and tables (254:N replaced by the
//! image, 253:N by `MNT/dev/NAME`), and those tables must make working devices in a real
//! mount. Then the bad inputs: damaged metadata, a missing PV, a copied PV, hostile texts.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::lvm_recording::{Dev, recorded_devices};
use common::{Mount, scratch_dir};
use dmfs::activate::lvm::{Options, Plan, PvSource, plan};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/kernel/lvm");
/// How the planned tables name this activation's devices; replaced by the mount point later.
const MNT_DEV: &str = "MNT/dev";

/// A boot's images (`p0`..`p4` of lvm.out, `q0` of lvm-more.out), unpacked into a scratch
/// directory.
struct Images {
    dir: PathBuf,
    /// The recorded output that goes with them.
    out: &'static str,
    names: Vec<String>,
}

impl Images {
    fn new() -> Images {
        Images::unpack("lvm.out", &["p0", "p1", "p2", "p3", "p4"])
    }

    fn more() -> Images {
        Images::unpack("lvm-more.out", &["q0"])
    }

    fn unpack(out: &'static str, names: &[&str]) -> Images {
        let dir = scratch_dir("lvm");
        for n in names {
            let img = Command::new("gzip")
                .arg("-dc")
                .arg(format!("{FIXTURES}/{n}.img.gz"))
                .output()
                .unwrap();
            assert!(img.status.success(), "gunzip {n}.img.gz");
            std::fs::write(dir.join(format!("{n}.img")), img.stdout).unwrap();
        }
        Images {
            dir,
            out,
            names: names.iter().map(|n| n.to_string()).collect(),
        }
    }

    /// The image that was the VM's disk number `i` (vda, vdb, ...).
    fn path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.img", self.names[i]))
    }

    fn all(&self) -> Vec<PathBuf> {
        (0..self.names.len()).map(|i| self.path(i)).collect()
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Plans the activation of these image files.
fn plan_files(paths: &[PathBuf]) -> Result<Plan, String> {
    let files: Vec<File> = paths.iter().map(|p| File::open(p).unwrap()).collect();
    let sources: Vec<PvSource> = paths
        .iter()
        .zip(&files)
        .map(|(p, f)| PvSource {
            name: p.display().to_string(),
            reference: p.display().to_string(),
            device: f,
            offset: 0,
            size: f.metadata().unwrap().len(),
        })
        .collect();
    let opts = Options {
        dev_dir: MNT_DEV.to_string(),
        read_only: false,
    };
    plan(&sources, &opts).map_err(|e| format!("errno {}: {}", e.errno, e.reason))
}

/// The devices the oracle had after `after`, in creation (minor) order, with the tables' major:
/// minor pairs replaced: 254:N by image N/16, 253:N by `MNT/dev/` and the name of minor N.
fn oracle(images: &Images, after: &str) -> Vec<Dev> {
    let out = std::fs::read_to_string(format!("{FIXTURES}/{}", images.out)).unwrap();
    recorded_devices(
        &out,
        after,
        |i| images.path(i).display().to_string(),
        MNT_DEV,
    )
}

fn planned(p: &Plan) -> Vec<Dev> {
    p.devices
        .iter()
        .map(|d| Dev {
            name: d.name.clone(),
            uuid: d.uuid.clone(),
            read_only: d.read_only,
            table: d.table.clone(),
        })
        .collect()
}

/// raid1 is not a target dmfs has: its LV and sub-LVs are the oracle's devices dmfs leaves out.
fn without_raid(devs: Vec<Dev>) -> Vec<Dev> {
    devs.into_iter()
        .filter(|d| d.name != "v--g-r1" && !d.name.starts_with("v--g-r1_"))
        .collect()
}

const R1_NOTE: &str = "v-g/r1: segment type raid1 is not supported by dmfs; not activated";
const SKIP_NOTE: &str = "vg/skip: skipped: it carries the activation skip flag (lvchange -ky)";

#[test]
fn plans_what_vgchange_activated() {
    let images = Images::new();
    let all: Vec<PathBuf> = images.all();
    let p = plan_files(&all).unwrap();
    assert_eq!(
        planned(&p),
        without_raid(oracle(&images, "after vgchange -ay v-g"))
    );
    assert_eq!(p.notes, vec![SKIP_NOTE.to_string(), R1_NOTE.to_string()]);
    // vgchange counted r1 too ("4 logical volume(s) in volume group "v-g" now active").
    assert_eq!(
        p.summary,
        vec![
            "9 logical volume(s) in volume group \"vg\" now active",
            "3 logical volume(s) in volume group \"v-g\" now active",
        ]
    );
    let out = std::fs::read_to_string(format!("{FIXTURES}/lvm.out")).unwrap();
    assert!(out.contains(&format!("  {}\n", p.summary[0])));

    // One VG alone, whatever order the images come in.
    let vg: Vec<PathBuf> = [2, 0, 1].iter().map(|&i| images.path(i)).collect();
    let p = plan_files(&vg).unwrap();
    assert_eq!(planned(&p), oracle(&images, "after vgchange -ay vg"));
}

#[test]
fn tables_make_working_devices() {
    let images = Images::new();
    let all: Vec<PathBuf> = images.all();
    let p = plan_files(&all).unwrap();
    let m = Mount::new();
    let mnt_dev = m.mnt.join("dev").display().to_string();
    for d in &p.devices {
        let table = d.table.join("\n").replace(MNT_DEV, &mnt_dev);
        m.create(&d.name, &table);
        std::fs::write(m.mnt.join(format!("dm/{}/uuid", d.name)), &d.uuid).unwrap();
        if d.read_only {
            m.ok(&format!("chmod a-w {}/{}", mnt_dev, d.name));
        }
    }
    for d in &p.devices {
        let want: Vec<String> = d
            .table
            .iter()
            .map(|l| l.replace(MNT_DEV, &mnt_dev))
            .collect();
        let got = m.read(&format!("dm/{}/table", d.name));
        let got: Vec<&str> = got.lines().map(str::trim_end).collect();
        assert_eq!(got, want, "dm/{}/table", d.name);
        assert_eq!(m.read(&format!("dm/{}/uuid", d.name)).trim_end(), d.uuid);
    }
    // The bytes: vg-lin is extents 0-1 of p0 (data from sector 2048), through snapshot-origin
    // over vg-lin-real; v--g-span joins p3's extent 1 and p4's extent 0.
    let p0 = std::fs::read(images.path(0)).unwrap();
    let p3 = std::fs::read(images.path(3)).unwrap();
    let p4 = std::fs::read(images.path(4)).unwrap();
    let lin = m.read_dev("vg-lin").unwrap();
    assert_eq!(lin, &p0[1 << 20..3 << 20]);
    let span = m.read_dev("v--g-span").unwrap();
    assert_eq!(&span[..1 << 20], &p3[2 << 20..3 << 20]);
    assert_eq!(&span[1 << 20..], &p4[1 << 20..2 << 20]);
    let ro = m.mnt.join("dev/vg-ro");
    assert!(std::fs::OpenOptions::new().write(true).open(&ro).is_err());
    for d in p.devices.iter().rev() {
        m.remove(&d.name);
    }
}

#[test]
fn missing_pv_leaves_out_the_lvs_on_it() {
    let images = Images::new();
    let p = plan_files(&[images.path(3)]).unwrap();
    assert_eq!(
        planned(&p),
        without_raid(oracle(&images, "after vgchange -ay v-g with vde hidden"))
    );
    // LVM2's own words (lvm.out) for the missing PV and the partial LVs.
    assert_eq!(
        p.notes,
        vec![
            "VG v-g is missing PV ueVwJC-1p3Q-BPaM-q8hb-9f0p-grNw-eNNnkP (last written to /dev/vde).",
            "Refusing activation of partial LV v-g/span.",
            R1_NOTE,
            "Refusing activation of partial LV v-g/tail.",
        ]
    );
    assert_eq!(
        p.summary,
        vec!["1 logical volume(s) in volume group \"v-g\" now active"]
    );
}

/// Where the first metadata area's header points: (text offset in the image, text size).
fn mda_text(img: &[u8], mda: usize) -> (usize, usize) {
    let word = |at: usize| u64::from_le_bytes(img[at..at + 8].try_into().unwrap()) as usize;
    (mda + word(mda + 40), word(mda + 48))
}

fn flip_text_byte(path: &Path, mda: usize) -> usize {
    let mut img = std::fs::read(path).unwrap();
    let (at, _) = mda_text(&img, mda);
    img[at + 10] ^= 0x20;
    std::fs::write(path, img).unwrap();
    at
}

/// The byte offset of p0's second metadata area (at the end of the disk, 1 MiB).
const P0_MDA2: usize = (12 << 20) - (1 << 20);

#[test]
fn damaged_copies_fall_back_to_an_intact_one() {
    let images = Images::new();
    // Only p0's second metadata area stays intact.
    flip_text_byte(&images.path(0), 4096);
    flip_text_byte(&images.path(1), 4096);
    flip_text_byte(&images.path(2), 4096);
    let vg: Vec<PathBuf> = (0..3).map(|i| images.path(i)).collect();
    let p = plan_files(&vg).unwrap();
    assert_eq!(planned(&p), oracle(&images, "after vgchange -ay vg"));

    // With that one damaged too, nothing is left to trust.
    flip_text_byte(&images.path(0), P0_MDA2);
    let err = plan_files(&vg).unwrap_err();
    assert_eq!(
        err,
        format!(
            "errno 22: {}: LVM metadata damaged in every copy (metadata text at byte 42496: \
             bad checksum)",
            images.path(0).display()
        )
    );
}

#[test]
fn copied_pv_is_refused_naming_both_files() {
    let images = Images::new();
    let copy = images.dir.join("copy.img");
    std::fs::copy(images.path(3), &copy).unwrap();
    let err = plan_files(&[images.path(3), images.path(4), copy.clone()]).unwrap_err();
    assert_eq!(
        err,
        format!(
            "errno 22: PV Z1CHbQ-MA6r-k4UI-y1BG-5EHO-e5RV-oeL3HT is on both {} and {} (a copied \
             image?); refusing to choose",
            images.path(3).display(),
            copy.display()
        )
    );
}

/// LVM2's calc_crc (its seed 0xf597a6cf), to write metadata the reader must accept up to its
/// meaning.
fn calc_crc(data: &[u8]) -> u32 {
    dmfs::activate::crc::crc32_register(0xf597_a6cf, data)
}

/// Writes `text` as p3's (only) metadata text, with valid checksums, damages p4's copy so that
/// p3's is the only one, and plans p3 and p4.
fn plan_with_text(images: &Images, text: &[u8]) -> Result<Plan, String> {
    write_p3_text(images, text);
    // p4's own copy would stand in for p3's: damage it.
    flip_text_byte(&images.path(4), 4096);
    plan_files(&[images.path(3), images.path(4)])
}

fn write_p3_text(images: &Images, text: &[u8]) {
    let path = images.path(3);
    let mut img = std::fs::read(&path).unwrap();
    let (at, _) = mda_text(&img, 4096);
    let mut t = text.to_vec();
    t.push(0);
    assert!(at + t.len() <= 4096 + 1020 * 1024, "the text fits the area");
    img[at..at + t.len()].copy_from_slice(&t);
    let h = 4096;
    img[h + 48..h + 56].copy_from_slice(&(t.len() as u64).to_le_bytes());
    img[h + 56..h + 60].copy_from_slice(&calc_crc(&t).to_le_bytes());
    let crc = calc_crc(&img[h + 4..h + 512]);
    img[h..h + 4].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, img).unwrap();
}

/// p3's metadata text as LVM2 wrote it.
fn p3_text(images: &Images) -> String {
    let img = std::fs::read(images.path(3)).unwrap();
    let (at, size) = mda_text(&img, 4096);
    String::from_utf8(img[at..at + size - 1].to_vec()).unwrap()
}

#[test]
fn hostile_metadata_is_refused_with_a_reason() {
    let images = Images::new();
    let good = p3_text(&images);
    // The untouched text, rewritten, still plans: the harness itself is sound.
    assert!(plan_with_text(&images, good.as_bytes()).is_ok());

    let cases: Vec<(String, String)> = vec![
        (
            format!("{}{}", "a {\n".repeat(100), "}\n".repeat(100)),
            "{P3}: LVM metadata: line 17: sections nested deeper than 16".to_string(),
        ),
        (
            good.replacen("seqno = ", "seqno = 99999999999999999999999", 1),
            "{P3}: LVM metadata: line 3: number 999999999999999999999997 out of range".to_string(),
        ),
        (
            good.replacen(
                "format = \"lvm2\"",
                &format!("format = \"{}\"", "x".repeat(100_000)),
                1,
            ),
            "{P3}: LVM metadata: line 4: a token longer than 65536 bytes".to_string(),
        ),
        (
            good.replacen("logical_volumes {", "logical_volumes {{", 1),
            "{P3}: LVM metadata: line 37: expected a name".to_string(),
        ),
        (
            good.replacen("extent_count = 1\n", "extent_count = 100\n", 1),
            "v-g/l-v: segment 1 runs past the end of PV Z1CHbQ-MA6r-k4UI-y1BG-5EHO-e5RV-oeL3HT \
             ({P3})"
                .to_string(),
        ),
        (
            good.replacen("extent_count = 1\n", "extent_count = 2\n", 1)
                .replacen("stripe_count = 1\n", "stripe_count = 2\nstripe_size = 0\n", 1),
            "{P3}: LVM metadata: v-g/logical_volumes/l-v/segment1: stripe_size = 0".to_string(),
        ),
        (
            // Within pe_count, but past the end of the image.
            good.replacen("pe_count = 11", "pe_count = 100", 1)
                .replacen("\"pv0\", 0", "\"pv0\", 50", 1),
            "v-g/l-v: segment 1 runs past the end of PV Z1CHbQ-MA6r-k4UI-y1BG-5EHO-e5RV-oeL3HT \
             ({P3})"
                .to_string(),
        ),
        (
            good.replacen("extent_count = 1\n", "extent_count = 4611686018427387904\n", 1),
            "{P3}: LVM metadata: v-g/logical_volumes/l-v/segment1: extent_count = 4611686018427387904 \
             out of range"
                .to_string(),
        ),
    ];
    for (text, want) in cases {
        let images = Images::new();
        let err = plan_with_text(&images, text.as_bytes()).unwrap_err();
        let p3 = images.path(3).display().to_string();
        let want = format!("errno 22: {}", want.replace("{P3}", &p3));
        assert_eq!(err, want);
    }
}

#[test]
fn the_newest_seqno_wins() {
    let names = |p: Plan| -> Vec<String> { p.devices.into_iter().map(|d| d.name).collect() };
    for (seqno, want) in [("8", "v--g-l--w"), ("6", "v--g-l--v")] {
        let images = Images::new();
        let good = p3_text(&images);
        assert!(good.contains("seqno = 7\n"));
        // p3 carries this copy, p4 still LVM2's seqno 7.
        let text = good
            .replacen("seqno = 7\n", &format!("seqno = {seqno}\n"), 1)
            .replacen("\nl-v {", "\nl-w {", 1);
        write_p3_text(&images, text.as_bytes());
        let p = plan_files(&[images.path(3), images.path(4)]).unwrap();
        assert_eq!(names(p)[0], want, "seqno {seqno}");
    }
}

/// A PV inside a partition: the reader takes the partition's range of the image, and the
/// tables name the partition's device (here made by hand, as the partition reader will).
#[test]
fn pv_inside_a_partition() {
    let images = Images::new();
    let disk = images.dir.join("disk.img");
    let mut bytes = vec![0u8; 1 << 20];
    bytes.extend(std::fs::read(images.path(3)).unwrap());
    std::fs::write(&disk, &bytes).unwrap();
    let (df, p4f) = (
        File::open(&disk).unwrap(),
        File::open(images.path(4)).unwrap(),
    );
    let p4 = images.path(4).display().to_string();
    let sources = [
        PvSource {
            name: disk.display().to_string(),
            reference: format!("{MNT_DEV}/disk1"),
            device: &df,
            offset: 1 << 20,
            size: 12 << 20,
        },
        PvSource {
            name: p4.clone(),
            reference: p4.clone(),
            device: &p4f,
            offset: 0,
            size: 12 << 20,
        },
    ];
    let opts = Options {
        dev_dir: MNT_DEV.to_string(),
        read_only: true,
    };
    let p = plan(&sources, &opts).unwrap();
    let mut want = without_raid(oracle(&images, "after vgchange -ay v-g"));
    want.retain(|d| d.name.starts_with("v--g-"));
    for d in &mut want {
        d.read_only = true;
        for l in &mut d.table {
            *l = l.replace(
                &images.path(3).display().to_string(),
                &format!("{MNT_DEV}/disk1"),
            );
        }
    }
    assert_eq!(planned(&p), want);

    let m = Mount::new();
    let mnt_dev = m.mnt.join("dev").display().to_string();
    m.create("disk1", &format!("0 24576 linear {} 2048", disk.display()));
    for d in &p.devices {
        m.create(&d.name, &d.table.join("\n").replace(MNT_DEV, &mnt_dev));
    }
    let p3 = std::fs::read(images.path(3)).unwrap();
    assert_eq!(m.read_dev("v--g-l--v").unwrap(), &p3[1 << 20..2 << 20]);
    for d in p.devices.iter().rev() {
        m.remove(&d.name);
    }
    m.remove("disk1");
}

/// Three snapshots of one origin (two chunk sizes, one read-only) and a thin pool: snapshots
/// come up right after their origin, in metadata order; thin LVs are left out with a line.
#[test]
fn snapshots_and_thin_as_vgchange_made_them() {
    let images = Images::more();
    let p = plan_files(&images.all()).unwrap();
    let want: Vec<Dev> = oracle(&images, "after vgchange -ay vg2")
        .into_iter()
        .filter(|d| !d.name.starts_with("vg2-pool") && d.name != "vg2-t1")
        .collect();
    assert_eq!(planned(&p), want);
    assert_eq!(
        p.notes,
        vec![
            "vg2/pool: segment type thin-pool is not supported by dmfs; not activated",
            "vg2/t1: segment type thin is not supported by dmfs; not activated",
        ]
    );
    // vgchange counted pool and t1 too ("8 logical volume(s) ...").
    assert_eq!(
        p.summary,
        vec!["6 logical volume(s) in volume group \"vg2\" now active"]
    );
}

/// Damaged texts with valid checksums, made by changing a few bytes of LVM2's own text at
/// random (fixed seeds): every one plans or fails with one line and EINVAL, never a panic.
#[test]
fn mangled_metadata_never_panics() {
    let images = Images::new();
    let good = p3_text(&images).into_bytes();
    let path = images.path(3);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet = b"{}[]=,\"#0123456789-+. \nx\0";
    let (mut planned, mut refused) = (0, 0);
    for _ in 0..300 {
        let mut text = good.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % text.len() as u64) as usize;
            match next() % 4 {
                0 => text[at] = alphabet[(next() % alphabet.len() as u64) as usize],
                1 => {
                    text.remove(at);
                }
                2 => text.insert(at, alphabet[(next() % alphabet.len() as u64) as usize]),
                _ => {
                    // The next number from `at` becomes an edge value.
                    let Some(b) = text[at..].iter().position(u8::is_ascii_digit) else {
                        continue;
                    };
                    let b = at + b;
                    let e = b + text[b..].iter().take_while(|c| c.is_ascii_digit()).count();
                    let edges = ["-1", "0", "4294967296", "9223372036854775807", "1e3"];
                    let v = edges[(next() % edges.len() as u64) as usize];
                    text.splice(b..e, v.bytes());
                }
            }
        }
        write_p3_text(&images, &text);
        match plan_files(std::slice::from_ref(&path)) {
            Ok(_) => planned += 1,
            Err(e) => {
                assert!(e.starts_with("errno 22: ") && !e.contains('\n'), "{e}");
                refused += 1;
            }
        }
    }
    // Both outcomes occur, so the mangling neither always breaks nor never touches the text.
    assert!(
        planned > 0 && refused > 0,
        "planned {planned}, refused {refused}"
    );
}

/// A VG without WRITE in its status makes every LV read-only; an exported VG activates nothing.
#[test]
fn vg_status_is_honoured() {
    let images = Images::new();
    let good = p3_text(&images);
    let vg_status = "status = [\"RESIZEABLE\", \"READ\", \"WRITE\"]";
    assert!(good.contains(vg_status));
    let p = plan_with_text(
        &images,
        good.replacen(vg_status, "status = [\"RESIZEABLE\", \"READ\"]", 1)
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(p.devices.len(), 3);
    assert!(p.devices.iter().all(|d| d.read_only), "{:?}", p.devices);

    let images = Images::new();
    let exported = "status = [\"RESIZEABLE\", \"READ\", \"WRITE\", \"EXPORTED\"]";
    let p = plan_with_text(&images, good.replacen(vg_status, exported, 1).as_bytes()).unwrap();
    assert_eq!(p.devices, vec![]);
    assert_eq!(p.notes, vec!["Volume group \"v-g\" is exported"]);
}
