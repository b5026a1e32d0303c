//! `ctl/activate` and `dmfs activate` against what kpartx and `vgchange -ay` did in the kernel
//! with the same images (fixtures/kernel/partitions/kpartx.out, fixtures/kernel/lvm/lvm.out):
//! the same devices, in the same order, with the same names, uuids, read-only flags and tables
//! (the kernel's major:minor replaced by the image's path or `MNT/dev/NAME`), kpartx's own
//! `add map` lines and vgchange's summary read back from the open file, and the bytes of every
//! device those of its image. Then all or nothing: a name or uuid already taken, a truncated
//! image, an image with nothing to activate: the write fails and exactly the devices that were
//! there before are there after.

mod common;
use common::fixture::{self, Block};
use common::lvm_recording::{Dev, mounted, recorded_devices};
use common::*;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use dmfs::activate::partitions;

const LVM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/kernel/lvm");
const PARTITIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/kernel/partitions");

/// Unpacks `DIR/NAME.gz` into `to`.
fn gunzip(dir: &str, name: &str, to: &Path) {
    let out = std::process::Command::new("gzip")
        .arg("-dc")
        .arg(format!("{dir}/{name}.gz"))
        .output()
        .unwrap();
    assert!(out.status.success(), "gunzip {name}.gz");
    std::fs::write(to, out.stdout).unwrap();
}

/// Writes `line` into `ctl/activate` with one write(2) on a file opened read-write, then
/// reads back from the same open file what the line made. Relative paths are taken in the
/// mount's scratch directory (the test's own directory is shared by all tests).
fn activate(m: &Mount, line: &str) -> io::Result<String> {
    let line: Vec<String> = line
        .split_whitespace()
        .map(|w| match w.starts_with(['-', '/']) {
            true => w.to_string(),
            false => m.path(w).display().to_string(),
        })
        .collect();
    ctl_report(m, "activate", &line.join(" ")).0
}

/// Writes `line` into `ctl/FILE` with one write(2) on a file opened read-write and closes it:
/// the write's (or the close's) answer, and what is read back from the same open file after
/// the write, answered or not.
fn ctl_report(m: &Mount, file: &str, line: &str) -> (io::Result<String>, String) {
    let mut f = match OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.mnt.join("ctl").join(file))
    {
        Ok(f) => f,
        Err(e) => return (Err(e), String::new()),
    };
    let written = f.write_all(format!("{line}\n").as_bytes());
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = f.read_at(&mut buf, text.len() as u64).unwrap();
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8(text).unwrap();
    let result = written.and(checked_close(f)).map(|()| text.clone());
    (result, text)
}

fn must_activate(m: &Mount, line: &str) -> String {
    activate(m, line).unwrap_or_else(|e| {
        panic!(
            "activate {line}: {e}\nctl/errors:\n{}\nlog:\n{}",
            m.read("ctl/errors"),
            m.log()
        )
    })
}

/// The bytes a table of linear lines over files maps, or None if a line is anything else.
fn linear_bytes(table: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for line in table.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 5 || f[2] != "linear" || !f[3].starts_with('/') {
            return None;
        }
        let (len, start): (u64, u64) = (f[1].parse().unwrap(), f[4].parse().unwrap());
        let mut buf = vec![0u8; (len * 512) as usize];
        File::open(f[3])
            .unwrap()
            .read_exact_at(&mut buf, start * 512)
            .unwrap();
        out.extend(buf);
    }
    Some(out)
}

/// Fills every partition of `path` with its own bytes, so a wrong start or length shows.
fn fill_partitions(path: &Path) {
    let table = partitions::read(&File::open(path).unwrap(), "x").unwrap();
    let f = OpenOptions::new().write(true).open(path).unwrap();
    for p in &table.partitions {
        if p.kind != partitions::Kind::Extended {
            let data = pseudo_random(p.number.into(), (p.length.0 * 512) as usize);
            f.write_all_at(&data, p.start.0 * 512).unwrap();
        }
    }
}

/// Checks a mount against a kpartx block: the `add map` lines read back, the devices, their
/// tables and their bytes; `kernel_ref` is how kpartx named the image, `reference` ours.
fn check_kpartx(m: &Mount, b: &Block, report: &str, kernel_ref: &str, reference: &str) {
    let swap = |s: &str| s.replace(&format!(" {kernel_ref} "), &format!(" {reference} "));
    let want: Vec<String> = b.all("stdout").iter().map(|l| swap(l)).collect();
    assert_eq!(report.lines().collect::<Vec<_>>(), want, "{}", b.name);
    let mut names = Vec::new();
    for t in b.all("table") {
        let (name, table) = t.split_once(": ").unwrap();
        if format!(" {table} ").contains(&format!(" {kernel_ref} ")) {
            names.push(name.to_string());
            let table = swap(&format!("{table} "));
            assert_eq!(
                m.read(&format!("dm/{name}/table")),
                format!("{}\n", table.trim_end())
            );
            if let Some(want) = linear_bytes(table.trim_end()) {
                assert_same(name, &m.read_dev(name).unwrap(), &want);
            }
        }
    }
    let mut all = m.devices();
    all.retain(|d| names.contains(d));
    names.sort();
    assert_eq!(all, names);
}

/// An image activated through `ctl/activate` and a dmfs device activated through `dmfs
/// activate` show kpartx's devices, tables and `add map` lines.
#[test]
fn partitions_as_kpartx_mapped_them() {
    let blocks = fixture::read("partitions/kpartx.out", &["image", "named"]);
    for img in ["mbr-ext05.img", "gpt.img", "gpt-bad-primary-header.img"] {
        let b = blocks
            .iter()
            .find(|b| b.kind == "image" && b.name == img)
            .unwrap();
        let m = Mount::new();
        // Named as the loop device kpartx read, so the names match too.
        let path = m.path("loop0.img");
        gunzip(PARTITIONS, img, &path);
        fill_partitions(&path);
        let report = must_activate(&m, "loop0.img");
        check_kpartx(&m, b, &report, "7:0", &path.display().to_string());
    }
    // kpartx on a device-mapper device named `disk` (253:0): dmfs on MNT/dev/disk.
    for img in ["mbr-ext05.img", "gpt.img"] {
        let b = blocks
            .iter()
            .find(|b| b.kind == "named" && b.name == format!("disk {img}"))
            .unwrap();
        let m = Mount::new();
        let path = m.path(img);
        gunzip(PARTITIONS, img, &path);
        fill_partitions(&path);
        m.create("disk", &format!("0 8192 linear {} 0", path.display()));
        let report = m.ok("$DMFS --mount $MNT activate $MNT/dev/disk");
        let disk = m.mnt.join("dev/disk").display().to_string();
        check_kpartx(&m, b, &report, "253:0", &disk);
    }
}

/// The devices `vgchange -ay` made in the oracle after `after`, in creation (minor) order,
/// with 254:N replaced by image N/16 of `images` and 253:N by `mnt_dev/` and minor N's name;
/// without raid1 (a target dmfs does not have: the LV is left out with a note).
fn oracle(images: &[PathBuf], mnt_dev: &str, after: &str) -> Vec<Dev> {
    let out = std::fs::read_to_string(format!("{LVM}/lvm.out")).unwrap();
    let mut devs = recorded_devices(&out, after, |i| images[i].display().to_string(), mnt_dev);
    devs.retain(|d| d.name != "v--g-r1" && !d.name.starts_with("v--g-r1_"));
    devs
}

const LVM_REPORT: &str = "  vg/skip: skipped: it carries the activation skip flag (lvchange -ky)
  v-g/r1: segment type raid1 is not supported by dmfs; not activated
  9 logical volume(s) in volume group \"vg\" now active
  3 logical volume(s) in volume group \"v-g\" now active
";

/// The five PV images of lvm.out in a mount's scratch directory.
fn lvm_images(m: &Mount) -> Vec<PathBuf> {
    (0..5)
        .map(|i| {
            let path = m.path(&format!("p{i}.img"));
            gunzip(LVM, &format!("p{i}.img"), &path);
            path
        })
        .collect()
}

/// Two VGs over five images, activated in one line through `ctl/activate` and by `dmfs
/// activate`: vgchange's devices, in its order, and the bytes of every linear one.
#[test]
fn volume_groups_as_vgchange_activated_them() {
    let m = Mount::new();
    let images = lvm_images(&m);
    let line: Vec<String> = images.iter().map(|p| p.display().to_string()).collect();
    let report = must_activate(&m, &line.join(" "));
    assert_eq!(report, LVM_REPORT);
    let out = std::fs::read_to_string(format!("{LVM}/lvm.out")).unwrap();
    // vgchange counted raid1 r1 in v-g too.
    for l in report.lines().filter(|l| l.ends_with("\"vg\" now active")) {
        assert!(out.contains(&format!("{l}\n")), "{l} is not vgchange's");
    }
    let mnt_dev = m.mnt.join("dev").display().to_string();
    let want = oracle(&images, &mnt_dev, "after vgchange -ay v-g");
    assert_eq!(mounted(&m), want);
    let mut checked = 0;
    for d in &want {
        if let Some(bytes) = linear_bytes(&d.table.join("\n")) {
            assert_same(&d.name, &m.read_dev(&d.name).unwrap(), &bytes);
            checked += 1;
        }
    }
    assert!(checked >= 4, "too few linear LVs to compare bytes with");
    drop(m);

    // The verb, with relative paths, read-only.
    let m = Mount::new();
    let images = lvm_images(&m);
    let stdout = m.ok("$DMFS --mount $MNT activate --readonly p0.img p1.img p2.img p3.img p4.img");
    assert_eq!(stdout, LVM_REPORT);
    let mnt_dev = m.mnt.join("dev").display().to_string();
    let mut want = oracle(&images, &mnt_dev, "after vgchange -ay v-g");
    want.iter_mut().for_each(|d| d.read_only = true);
    assert_eq!(mounted(&m), want);
    let err = m.fails("echo x | dd of=$MNT/dev/vg-lin conv=notrunc 2>&1 >/dev/null; exit 1");
    assert!(!err.contains("panicked"));
    assert!(
        OpenOptions::new()
            .write(true)
            .open(m.mnt.join("dev/vg-lin"))
            .is_err(),
        "a --readonly activation made a writable device"
    );
}

/// Writes an MBR into `disk` with one partition of type 0x8e (Linux LVM).
fn write_mbr(disk: &Path, start: u32, sectors: u32) {
    let mut mbr = [0u8; 512];
    mbr[446 + 4] = 0x8e;
    mbr[446 + 8..446 + 12].copy_from_slice(&start.to_le_bytes());
    mbr[446 + 12..446 + 16].copy_from_slice(&sectors.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    let f = OpenOptions::new().write(true).open(disk).unwrap();
    f.write_all_at(&mbr, 0).unwrap();
}

/// A PV inside a partition (p3 of lvm.out as partition 1 of a disk image) with its VG's other
/// PV beside it: the partition's device, and LVs whose tables name it.
#[test]
fn pv_inside_a_partition() {
    let m = Mount::new();
    let images = lvm_images(&m);
    let disk = m.path("disk.img");
    let p3 = std::fs::read(&images[3]).unwrap();
    let mut bytes = vec![0u8; 1 << 20];
    bytes.extend(&p3);
    std::fs::write(&disk, &bytes).unwrap();
    write_mbr(&disk, 2048, (p3.len() / 512) as u32);

    let report = must_activate(&m, "disk.img p4.img");
    let mnt_dev = m.mnt.join("dev").display().to_string();
    let disk1 = format!("0 {} linear {} 2048", p3.len() / 512, disk.display());
    assert!(
        report.starts_with(&format!("add map disk1 (253:0): {disk1}\n")),
        "{report}"
    );
    assert!(report.ends_with("  3 logical volume(s) in volume group \"v-g\" now active\n"));
    let mut want = vec![Dev {
        name: "disk1".into(),
        uuid: String::new(),
        read_only: false,
        table: vec![disk1],
    }];
    let mut lvs = oracle(&images, &mnt_dev, "after vgchange -ay v-g");
    lvs.retain(|d| d.name.starts_with("v--g-"));
    let p3_path = images[3].display().to_string();
    for d in &mut lvs {
        for l in &mut d.table {
            *l = l.replace(&p3_path, &format!("{mnt_dev}/disk1"));
        }
    }
    want.extend(lvs);
    assert_eq!(mounted(&m), want);
    assert_eq!(m.read_dev("v--g-l--v").unwrap(), &p3[1 << 20..2 << 20]);
    // Stacked: the partition's device is held by the LVs on it.
    assert!(m.ctl("remove", "disk1").is_err());
}

/// The errno of a failed activation.
fn errno_of(r: io::Result<String>) -> i32 {
    match r {
        Ok(report) => panic!("activation succeeded: {report}"),
        Err(e) => e.raw_os_error().unwrap(),
    }
}

/// A name or a uuid already taken fails the write with EBUSY and leaves exactly the devices
/// that were there; the names are free again for the next activation.
#[test]
fn taken_names_and_uuids_change_nothing() {
    let m = Mount::new();
    let path = m.path("loop0.img");
    gunzip(PARTITIONS, "mbr-ext05.img", &path);
    m.create("loop0p1", "0 8 zero");
    assert_eq!(errno_of(activate(&m, "loop0.img")), libc::EBUSY);
    assert_eq!(m.devices(), ["loop0p1"]);
    let err = m.last_error();
    assert!(
        err.contains(&format!(
            "activate {}: Device loop0p1 already exists (EBUSY)",
            path.display()
        )),
        "{err}"
    );
    m.remove("loop0p1");
    // The names are free again; a relative path is taken in the writer's directory, and an
    // unfinished last line runs at the writer's close.
    m.ok("printf %s loop0.img > $MNT/ctl/activate");
    assert_eq!(
        m.read("dm/loop0p1/table"),
        format!("0 1024 linear {} 2048\n", path.display())
    );
    assert_eq!(m.devices().len(), 6);
    for d in m.devices() {
        m.remove(&d);
    }

    // A uuid taken by a device of another activation is found only when the LV that carries it
    // is created, after others: every device made so far goes again.
    let images = lvm_images(&m);
    let line: Vec<String> = images.iter().map(|p| p.display().to_string()).collect();
    let mnt_dev = m.mnt.join("dev").display().to_string();
    let last = oracle(&images, &mnt_dev, "after vgchange -ay v-g")
        .pop()
        .unwrap();
    m.create("other", "0 8 zero");
    std::fs::write(m.mnt.join("dm/other/uuid"), &last.uuid).unwrap();
    assert_eq!(errno_of(activate(&m, &line.join(" "))), libc::EBUSY);
    assert_eq!(m.devices(), ["other"]);
    let err = m.last_error();
    assert!(
        err.contains("already in use") && err.contains(&last.name),
        "{err}"
    );
    m.remove("other");
    assert_eq!(must_activate(&m, &line.join(" ")), LVM_REPORT);
    assert_eq!(mounted(&m).len(), 14);
}

/// Images that cannot be activated fail the write with EINVAL and a line naming the reason;
/// nothing is made.
#[test]
fn bad_images_are_refused_and_change_nothing() {
    let m = Mount::new();
    m.create("keep", "0 8 zero");
    let truncated = m.path("trunc.img");
    gunzip(PARTITIONS, "mbr-ext-truncated.img", &truncated);
    assert_eq!(errno_of(activate(&m, "trunc.img")), libc::EINVAL);
    let err = m.last_error();
    assert!(
        err.contains(&format!(
            "activate {}: trunc: truncated image",
            truncated.display()
        )),
        "{err}"
    );

    let past = m.path("past.img");
    gunzip(PARTITIONS, "mbr-past-end.img", &past);
    assert_eq!(errno_of(activate(&m, "past.img")), libc::EINVAL);
    assert!(
        m.last_error().contains("too small for target"),
        "{}",
        m.last_error()
    );

    std::fs::write(m.path("empty.img"), vec![0u8; 1 << 20]).unwrap();
    assert_eq!(errno_of(activate(&m, "empty.img")), libc::EINVAL);
    let err = m.last_error();
    assert!(
        err.contains("no partition table and no LVM physical volume found"),
        "{err}"
    );
    assert_eq!(errno_of(activate(&m, "--bogus empty.img")), libc::EINVAL);
    assert_eq!(errno_of(activate(&m, "missing.img")), libc::ENOENT);

    // A relative path is taken in the writer's directory; the verb says why and `Command
    // failed.`
    m.fails("echo trunc.img > $MNT/ctl/activate");
    let err = m.last_error();
    assert!(
        err.contains("activate trunc.img: trunc: truncated"),
        "{err}"
    );
    // An unfinished last line runs at the writer's close, which carries its error.
    let mut f = OpenOptions::new()
        .write(true)
        .open(m.mnt.join("ctl/activate"))
        .unwrap();
    f.write_all(truncated.display().to_string().as_bytes())
        .unwrap();
    let closed = checked_close(f).expect_err("the close of an unfinished bad line succeeded");
    assert_eq!(closed.raw_os_error(), Some(libc::EINVAL));
    let err = m.fails("$DMFS --mount $MNT activate trunc.img");
    assert!(
        err.contains("truncated image") && err.ends_with("Command failed.\n"),
        "{err}"
    );
    assert_eq!(m.devices(), ["keep"]);
}

/// Writes `line` into `ctl/deactivate`: as `ctl_report`, relative paths being taken in the
/// directory of this test process (absolute ones are used here).
fn deactivate(m: &Mount, line: &str) -> (io::Result<String>, String) {
    ctl_report(m, "deactivate", line)
}

fn must_deactivate(m: &Mount, line: &str) -> String {
    deactivate(m, line).0.unwrap_or_else(|e| {
        panic!(
            "deactivate {line}: {e}\nctl/errors:\n{}\nlog:\n{}",
            m.read("ctl/errors"),
            m.log()
        )
    })
}

/// The `case` blocks of kpartx-deact.out, by their name line.
fn kpartx_case(name: &str) -> Block {
    fixture::read("partitions/kpartx-deact.out", &["case"])
        .into_iter()
        .find(|b| b.name == name)
        .unwrap_or_else(|| panic!("no case {name} in kpartx-deact.out"))
}

/// Lines of a block's `stdout` fields, each with its newline.
fn stdout_of(b: &Block) -> String {
    b.all("stdout").iter().map(|l| format!("{l}\n")).collect()
}

/// An image's partitions go as `kpartx -d -v` deletes them, printing its lines, through the
/// file and through the verb; the partitions of a dmfs device made with a uuid carry kpartx's
/// `part<N>-<uuid>`, those of one without `part<N>-devnode_253:<minor>_Wh5pYvM`, as kpartx
/// gave them in the kernel; the device itself stays.
#[test]
fn deactivate_an_image_as_kpartx_deletes_it() {
    let m = Mount::new();
    let path = m.path("loop0.img");
    gunzip(PARTITIONS, "mbr-ext05.img", &path);
    must_activate(&m, "loop0.img");
    assert_eq!(m.devices().len(), 6);
    // A file gives no uuid: kpartx's names the loop device it reads through.
    assert_eq!(m.read("dm/loop0p1/uuid"), "");
    let del = stdout_of(&kpartx_case("file-del mbr-ext05.img"));
    assert!(del.starts_with("del devmap : loop0p1\n"), "{del}");
    assert_eq!(must_deactivate(&m, &path.display().to_string()), del);
    assert!(m.devices().is_empty(), "{:?}", m.devices());
    // The verb, with a relative path; nothing left to remove prints nothing, as kpartx.
    must_activate(&m, "loop0.img");
    assert_eq!(m.ok("$DMFS --mount $MNT deactivate loop0.img"), del);
    assert!(m.devices().is_empty());
    assert_eq!(m.ok("$DMFS --mount $MNT deactivate loop0.img"), "");

    for (base, uuid, img) in [
        ("disk", "DISK-UUID-1", "mbr-ext05.img"),
        ("disk", "DISK-UUID-2", "gpt.img"),
        ("vm0", "-", "gpt.img"),
    ] {
        let m = Mount::new();
        let path = m.path(img);
        gunzip(PARTITIONS, img, &path);
        let table = format!("0 8192 linear {} 0", path.display());
        match uuid {
            "-" => m.create(base, &table),
            _ => {
                m.ok(&format!(
                    "$DMFS --mount $MNT create {base} -u {uuid} --table '{table}'"
                ));
            }
        }
        let add = kpartx_case(&format!("dm-add {base} {uuid} {img}"));
        let disk = m.mnt.join(format!("dev/{base}")).display().to_string();
        let report = must_activate(&m, &disk);
        assert_eq!(
            report,
            stdout_of(&add).replace("253:0", &disk),
            "{base} {img}"
        );
        let mut want: Vec<String> = add.all("uuid").iter().map(|l| l.to_string()).collect();
        want.sort();
        let mut got: Vec<String> = m
            .devices()
            .iter()
            .map(|d| format!("{d} {}", m.read(&format!("dm/{d}/uuid")).trim_end()))
            .collect();
        got.sort();
        assert_eq!(got, want, "{base} {uuid} {img}");
        let del = kpartx_case(&format!("dm-del {base} {uuid} {img}"));
        assert_eq!(must_deactivate(&m, &disk), stdout_of(&del));
        assert_eq!(m.devices(), [base]);
    }
}

/// An open partition: kpartx removed the ones before it and stopped there
/// (kpartx-deact.out); dmfs refuses the whole set with EBUSY, naming it, and removes
/// nothing. With --force, as `dmsetup remove --force`, the open one is left with a table that
/// fails all I/O and the others go; the write still fails (EBUSY) and says which was kept.
#[test]
fn deactivate_refuses_an_open_device() {
    let m = Mount::new();
    let path = m.path("loop0.img");
    gunzip(PARTITIONS, "mbr-ext05.img", &path);
    must_activate(&m, "loop0.img");
    let kernel = kpartx_case("file-del-open mbr-ext05.img");
    assert!(
        kernel
            .all("stdout")
            .contains(&"loop0p5 is in use. Not removing")
    );
    let all = m.devices();
    let open = File::open(m.mnt.join("dev/loop0p5")).unwrap();
    let image = path.display().to_string();
    let (result, report) = deactivate(&m, &image);
    assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::EBUSY));
    assert_eq!(report, "");
    assert_eq!(m.devices(), all);
    let err = m.last_error();
    assert!(
        err.contains(&format!(
            "deactivate {image}: Device loop0p5 is open (EBUSY)"
        )),
        "{err}"
    );
    let err = m.fails("$DMFS --mount $MNT deactivate loop0.img");
    assert!(
        err.contains("Device loop0p5 is open") && err.ends_with("Command failed.\n"),
        "{err}"
    );
    assert_eq!(m.devices(), all);

    let (result, report) = deactivate(&m, &format!("--force {image}"));
    assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::EBUSY));
    let want: String = all
        .iter()
        .filter(|d| *d != "loop0p5")
        .map(|d| format!("del devmap : {d}\n"))
        .collect();
    assert_eq!(report, want);
    assert_eq!(m.devices(), ["loop0p5"]);
    assert_eq!(m.read("dm/loop0p5/table"), "0 512 error \n");
    let err = m.last_error();
    assert!(
        err.contains("loop0p5 open: its table now fails all I/O (error), not removed (EBUSY)"),
        "{err}"
    );
    let mut buf = [0u8; 512];
    assert_eq!(
        open.read_at(&mut buf, 0).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    drop(open);
    assert_eq!(must_deactivate(&m, "loop0p5"), "del devmap : loop0p5\n");
    assert!(m.devices().is_empty());

    // A table still being written that names a partition holds it: busy, nothing goes. Once
    // that device is made, it goes with the partition, before it.
    must_activate(&m, "loop0.img");
    let p1 = m.mnt.join("dev/loop0p1").display().to_string();
    let mut pending = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(m.mnt.join("ctl/create/pend"))
        .unwrap();
    pending
        .write_all(format!("0 8 linear {p1} 0\n").as_bytes())
        .unwrap();
    let (result, _) = deactivate(&m, &image);
    assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::EBUSY));
    let err = m.last_error();
    assert!(
        err.contains("Device loop0p1 is in use by another device (EBUSY)"),
        "{err}"
    );
    assert_eq!(m.devices(), all);
    checked_close(pending).unwrap();
    let report = must_deactivate(&m, &image);
    assert!(
        report.ends_with("del devmap : pend\ndel devmap : loop0p1\n"),
        "{report}"
    );
    assert!(m.devices().is_empty());
}

/// A volume group by name: its LVs and the hidden layers of its snapshots, whatever else is
/// active; vgchange -an's line (as lvm.out recorded it). Then an image holding a PV inside a
/// partition: the partition's device, and the LVs on it before it, while an LV of the same VG
/// on another image stays active and is counted.
#[test]
fn deactivate_volume_groups_and_stacked_images() {
    let m = Mount::new();
    let images = lvm_images(&m);
    let line: Vec<String> = images.iter().map(|p| p.display().to_string()).collect();
    must_activate(&m, &line.join(" "));
    let before = m.devices();
    let out = std::fs::read_to_string(format!("{LVM}/lvm.out")).unwrap();
    // --force with an LV open: it stays with an error table and is counted as active.
    let open = File::open(m.mnt.join("dev/vg-z")).unwrap();
    let (result, report) = deactivate(&m, "-f vg-z");
    assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::EBUSY));
    assert_eq!(
        report,
        "  9 logical volume(s) in volume group \"vg\" now active\n"
    );
    assert_eq!(m.devices(), before);
    let (result, report) = deactivate(&m, "-f vg");
    assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::EBUSY));
    assert_eq!(
        report,
        "  1 logical volume(s) in volume group \"vg\" now active\n"
    );
    assert!(m.devices().contains(&"vg-z".to_string()));
    assert!(!m.devices().contains(&"vg-lin".to_string()));
    assert_eq!(m.read("dm/vg-z/table"), "0 6144 error \n");
    drop(open);
    let vg_line = "  0 logical volume(s) in volume group \"vg\" now active\n";
    assert!(out.contains(vg_line));
    assert_eq!(must_deactivate(&m, "vg"), vg_line);
    let left: Vec<String> = before
        .iter()
        .filter(|d| d.starts_with("v--g-"))
        .cloned()
        .collect();
    assert_eq!(m.devices(), left);
    assert!(before.contains(&"vg-lin-real".to_string()));
    let vg2_line = "  0 logical volume(s) in volume group \"v-g\" now active\n";
    assert!(out.contains(vg2_line));
    assert_eq!(m.ok("$DMFS --mount $MNT deactivate v-g"), vg2_line);
    assert!(m.devices().is_empty());

    // The PV of p3 inside partition 1 of disk.img; v-g's other PV is p4.img.
    let disk = m.path("disk.img");
    let p3 = std::fs::read(&images[3]).unwrap();
    let mut bytes = vec![0u8; 1 << 20];
    bytes.extend(&p3);
    std::fs::write(&disk, &bytes).unwrap();
    write_mbr(&disk, 2048, (p3.len() / 512) as u32);
    must_activate(&m, "disk.img p4.img");
    // A device of the user's own stacked on an LV goes too.
    let top_of = m.mnt.join("dev/v--g-l--v").display().to_string();
    m.create("mine", &format!("0 8 linear {top_of} 0"));
    let on_p4: Vec<String> = m
        .devices()
        .into_iter()
        .filter(|d| {
            d.starts_with("v--g-") && !m.read(&format!("dm/{d}/table")).contains("/dev/disk1 ")
        })
        .collect();
    assert!(!on_p4.is_empty());
    let report = must_deactivate(&m, &disk.display().to_string());
    assert_eq!(
        report,
        format!(
            "  {} logical volume(s) in volume group \"v-g\" now active\ndel devmap : mine\n\
             del devmap : disk1\n",
            on_p4.len()
        )
    );
    assert_eq!(m.devices(), on_p4);
}

/// Arguments that name nothing fail with ENOENT and remove nothing, even beside ones that
/// name something; a device by name takes its holders with it; bad lines say why.
#[test]
fn deactivate_unknown_arguments_change_nothing() {
    let m = Mount::new();
    let path = m.path("loop0.img");
    gunzip(PARTITIONS, "mbr-ext05.img", &path);
    must_activate(&m, "loop0.img");
    let all = m.devices();
    let (result, _) = deactivate(&m, "loop0p1 nosuch");
    assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::ENOENT));
    let err = m.last_error();
    assert!(
        err.contains("deactivate loop0p1 nosuch: nosuch: no device, volume group or image of that name (ENOENT)"),
        "{err}"
    );
    let missing = m.path("missing.img").display().to_string();
    let (result, _) = deactivate(&m, &format!("loop0p1 {missing}"));
    assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::ENOENT));
    assert_eq!(m.devices(), all);
    let err = m.fails("$DMFS --mount $MNT deactivate nosuch");
    assert!(
        err.contains("nosuch: no device, volume group or image of that name"),
        "{err}"
    );
    for bad in ["-x loop0p1", "--force", "loop0p1 -f"] {
        let (result, _) = deactivate(&m, bad);
        assert_eq!(
            result.unwrap_err().raw_os_error(),
            Some(libc::EINVAL),
            "{bad}"
        );
    }
    assert_eq!(m.devices(), all);

    // A device by name, and what is stacked on it, holders first.
    let p1 = m.mnt.join("dev/loop0p1").display().to_string();
    m.create("top", &format!("0 8 linear {p1} 0"));
    let top = m.mnt.join("dev/top").display().to_string();
    m.create("toptop", &format!("0 8 linear {top} 0"));
    assert_eq!(
        must_deactivate(&m, "loop0p1"),
        "del devmap : toptop\ndel devmap : top\ndel devmap : loop0p1\n"
    );
    assert_eq!(m.devices().len(), all.len() - 1);
}

/// Two images whose names give the same partition names, in one activation: EBUSY, a line
/// naming both, nothing made.
#[test]
fn same_stem_images_are_refused() {
    let m = Mount::new();
    for dir in ["a", "b"] {
        std::fs::create_dir(m.path(dir)).unwrap();
        gunzip(PARTITIONS, "gpt.img", &m.path(&format!("{dir}/disk.img")));
    }
    m.create("keep", "0 8 zero");
    let (a, b) = (m.path("a/disk.img"), m.path("b/disk.img"));
    assert_eq!(
        errno_of(activate(&m, &format!("{} {}", a.display(), b.display()))),
        libc::EBUSY
    );
    let err = m.last_error();
    assert!(
        err.contains(&format!(
            "{} and {} both name a partition disk1",
            a.display(),
            b.display()
        )),
        "{err}"
    );
    assert_eq!(m.devices(), ["keep"]);
    assert_eq!(
        errno_of(activate(&m, &format!("{} {}", a.display(), a.display()))),
        libc::EINVAL
    );
    assert!(
        m.last_error().contains("is given twice"),
        "{}",
        m.last_error()
    );
    // One at a time under another name.
    std::os::unix::fs::symlink(&b, m.path("other.img")).unwrap();
    must_activate(&m, &format!("{} other.img", a.display()));
    assert_eq!(m.devices().len(), 7);
}
