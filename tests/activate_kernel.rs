//! The kernel round trip of activation, both ways, over fixtures/kernel/lvm/rt.img.gz (made in
//! the oracle by lvm-roundtrip-vm.sh: a GPT partition holding a PV, VG "rt", ext4 on LV
//! "data" with three files whose sha256 lvm-roundtrip.out holds).
//!
//! - Kernel to dmfs (no VM): `dmfs activate` gives the partition and LV devices vgchange gave
//!   (names, uuids, tables), e2fsck finds the kernel's filesystem clean through `dev/rt-data`,
//!   and mounted through a loop device (as root) every file has the kernel's hash.
//! - dmfs to kernel (a VM at test time, as tests/kernel_mirror.rs): a filesystem made and
//!   filled through dmfs on a copy; the oracle boots with that image as its disk,
//!   `vgchange -ay`, e2fsck and the hashes of the files (roundtrip-check-vm.sh). Without the
//!   oracle, or when its VM cannot start, it says "skipped: ..." and passes;
//!   `DMFS_SKIP_KERNEL_ORACLE=1` skips it on purpose.
//!
//! Loop devices and mounts made here are undone on drop, also when a test fails.

mod common;
use common::block_tools::{Loop, Mounted, hashes, is_root, run};
use common::lvm_recording::{Dev, recorded_devices, section};
use common::*;

use std::io::Write;
use std::path::Path;
use std::process::Command;

const LVM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/kernel/lvm");

/// Says something on the terminal even though the test harness captures test output.
fn tell(msg: &str) {
    let _ = writeln!(std::io::stderr().lock(), "activate_kernel: {msg}");
}

fn recording() -> String {
    std::fs::read_to_string(format!("{LVM}/lvm-roundtrip.out")).unwrap()
}

fn unpack_rt(to: &Path) {
    let out = Command::new("gzip")
        .arg("-dc")
        .arg(format!("{LVM}/rt.img.gz"))
        .output()
        .unwrap();
    assert!(out.status.success(), "gunzip rt.img.gz");
    std::fs::write(to, out.stdout).unwrap();
}

/// The kernel's filesystem on an LV inside a GPT partition, read through dmfs.
#[test]
fn a_filesystem_made_in_the_kernel_reads_back_through_dmfs() {
    let m = Mount::new();
    let img = m.path("rt.img");
    unpack_rt(&img);
    let out = recording();

    let report = m.ok("$DMFS --mount $MNT activate rt.img");
    let vgchange = section(&out, "vgchange -ay rt")[0];
    assert_eq!(
        report,
        format!(
            "add map rt1 (253:0): 0 28672 linear {} 2048\n{vgchange}\n",
            img.display()
        )
    );
    // The LVs as vgchange made them, on the partition's device where the kernel has vda1.
    let mnt_dev = m.mnt.join("dev").display().to_string();
    let raw = section(&out, "dmsetup table after vgchange -ay rt").join("\n");
    assert!(raw.contains(" 254:1 ") && !raw.contains(" 254:0 "), "{raw}");
    let mut want = vec![Dev {
        name: "rt1".into(),
        uuid: String::new(),
        read_only: false,
        table: vec![format!("0 28672 linear {} 2048", img.display())],
    }];
    want.extend(recorded_devices(
        &out,
        "after vgchange -ay rt",
        |_| format!("{mnt_dev}/rt1"),
        &mnt_dev,
    ));
    let got: Vec<Dev> = ["rt1", "rt-data", "rt-other"]
        .iter()
        .map(|name| Dev {
            name: name.to_string(),
            uuid: m.read(&format!("dm/{name}/uuid")).trim_end().to_string(),
            read_only: m.read(&format!("dm/{name}/info")).contains("READ-ONLY"),
            table: m
                .read(&format!("dm/{name}/table"))
                .lines()
                .map(str::to_string)
                .collect(),
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(m.devices(), ["rt-data", "rt-other", "rt1"]);

    // e2fsck reads the device file itself: clean, and the kernel's count of files and blocks.
    let data = m.mnt.join("dev/rt-data");
    let (ok, fsck) = run(Command::new("e2fsck").arg("-fn").arg(&data));
    assert!(ok, "e2fsck -fn: {fsck}");
    let kernel_summary = section(&out, "sha256 in the kernel");
    assert_eq!(kernel_summary.len(), 3);
    let counts = out
        .lines()
        .find_map(|l| l.strip_prefix("/dev/mapper/rt-data: "))
        .unwrap();
    assert!(
        fsck.contains(&format!("{}: {counts}\n", data.display())),
        "{fsck}"
    );

    if !is_root() {
        tell("skipped the loop mount: losetup and mount need root");
        return;
    }
    let lo = Loop::attach(&data, true);
    let (ok, fsck) = run(Command::new("e2fsck").arg("-fn").arg(&lo.0));
    assert!(ok, "e2fsck -fn {}: {fsck}", lo.0);
    let mounted = Mounted::mount(&lo.0, m.path("fs"), true);
    let files = ["numbers.txt", "pattern.txt", "dir/sub/hello.txt"];
    let got = hashes(&mounted.0, &files);
    assert_eq!(got, format!("{}\n", kernel_summary.join("\n")));
    // Busy while mounted: the loop device holds dev/rt-data open.
    let err = m.fails("$DMFS --mount $MNT deactivate rt.img");
    assert!(err.contains("Device rt-data is open"), "{err}");
    drop(mounted);
    drop(lo);
    // vgchange -an's line, as the kernel's LVM printed it, then kpartx -d -v's.
    let vgchange_an = "  0 logical volume(s) in volume group \"rt\" now active\n";
    assert!(out.contains(&format!("$ vgchange -an rt\n{vgchange_an}")));
    assert_eq!(
        m.ok("$DMFS --mount $MNT deactivate rt.img"),
        format!("{vgchange_an}del devmap : rt1\n")
    );
    assert!(m.devices().is_empty());
}

/// A filesystem made and filled through dmfs, read back by the kernel's own LVM and ext4.
#[test]
fn a_filesystem_made_through_dmfs_reads_back_in_the_kernel() {
    let oracle = match common::oracle::find() {
        Ok(oracle) => oracle,
        Err(why) => return tell(&format!("skipped: {why}")),
    };
    if !is_root() {
        tell("skipped: mkfs through a loop device and mount need root");
        return;
    }
    let share = scratch_dir("activate-kernel");
    let img = share.join("rt.img");
    unpack_rt(&img);
    let files = ["made-by-dmfs.bin", "dir/notes.txt"];
    let expected = {
        let m = Mount::new();
        m.ok(&format!("$DMFS --mount $MNT activate {}", img.display()));
        let lo = Loop::attach(&m.mnt.join("dev/rt-data"), false);
        let (ok, out) = run(Command::new("mkfs.ext4").args(["-q", "-F", &lo.0]));
        assert!(ok, "mkfs.ext4 {}: {out}", lo.0);
        let mounted = Mounted::mount(&lo.0, m.path("fs"), false);
        std::fs::write(mounted.0.join(files[0]), pseudo_random(16, 3 << 20)).unwrap();
        std::fs::create_dir(mounted.0.join("dir")).unwrap();
        std::fs::write(
            mounted.0.join(files[1]),
            "written through dmfs\n".repeat(100),
        )
        .unwrap();
        let expected = hashes(&mounted.0, &files);
        drop(mounted);
        drop(lo);
        m.ok(&format!("$DMFS --mount $MNT deactivate {}", img.display()));
        expected
    };
    std::fs::write(share.join("expected.sha256"), &expected).unwrap();
    std::fs::copy(
        format!("{LVM}/roundtrip-check-vm.sh"),
        share.join("roundtrip-check-vm.sh"),
    )
    .unwrap();
    tell("running roundtrip-check-vm.sh in the kernel oracle's VM (one boot, 10 minutes at most)");
    let disks = [img.as_path()];
    let vm = match common::oracle::boot(
        &oracle,
        &share,
        &disks,
        "roundtrip-check-vm.sh",
        "roundtrip-check:",
    ) {
        Ok(vm) => vm,
        Err(why) => return tell(&format!("skipped: {why}")),
    };
    let (stdout, stderr, code) = (&vm.stdout, &vm.stderr, vm.code);
    let checks = stdout.lines().filter(|l| l.starts_with("ok: ")).count();
    assert!(
        code == Some(0) && stdout.contains("roundtrip-check: 5 checks, 0 failed") && checks == 5,
        "the kernel did not read back what dmfs wrote (exit {code:?}):\n{stdout}\n--- stderr ---\n{stderr}"
    );
}
