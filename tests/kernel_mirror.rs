//! The kernel mirror backend (`dmfs mount MNT --kernel`).
//!
//! - On a machine without a kernel device mapper (`/dev/mapper/control` absent), `--kernel`
//!   fails at mount with one clear sentence and mounts nothing, while a plain mount works.
//! - Where the kernel oracle is installed (`../shared/kernel-oracle/run-in-kernel` relative to
//!   the repository), the end-to-end check `fixtures/kernel/mirror-vm.sh` runs inside its VM with
//!   the dmfs binary this build made: one boot, bounded by a timeout. Besides creating, reloading,
//!   suspending, resuming, renaming and removing devices in both, it checks that `ctl/message`
//!   and `chmod a-w dev/NAME` reach the kernel, that a suspend the kernel refuses is undone in
//!   dmfs, and that after `kill -9` of the daemon the next mount removes the kernel devices (and
//!   loop devices) it left, and nothing it did not make. Without the oracle, or
//!   when its VM cannot start, the test says "skipped: ..." on stderr (not captured) and passes.
//!   `DMFS_SKIP_KERNEL_ORACLE=1` skips it on purpose.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{DMFS, Mount, scratch_dir};

/// Says something on the terminal even though the test harness captures test output.
fn tell(msg: &str) {
    let _ = writeln!(std::io::stderr().lock(), "kernel_mirror: {msg}");
}

fn is_mounted(mnt: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let want = mnt.to_string_lossy();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(&*want))
}

#[test]
fn kernel_mount_fails_in_one_sentence_without_a_device_mapper() {
    if Path::new("/dev/mapper/control").exists() {
        tell("skipped: this machine has a kernel device mapper, so --kernel does not fail here");
        return;
    }
    let dir = scratch_dir("kernel-nodm");
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    for args in [&["mount"][..], &["mount", "-f"][..]] {
        let out = Command::new(DMFS)
            .args(args)
            .arg(&mnt)
            .arg("--kernel")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{args:?}: one sentence: {stderr}"
        );
        assert!(
            stderr.contains("no kernel device mapper")
                && stderr.contains("/dev/mapper/control is absent"),
            "{args:?}: {stderr}"
        );
        assert!(!is_mounted(&mnt), "{args:?}: nothing is mounted");
    }
    std::fs::remove_dir_all(&dir).unwrap();

    // A plain mount is unaffected.
    let m = Mount::new();
    std::fs::write(m.dir.join("z.img"), vec![7u8; 4096]).unwrap();
    std::fs::write(
        m.mnt.join("ctl/create/plain"),
        format!("0 8 linear {} 0\n", m.dir.join("z.img").display()),
    )
    .unwrap();
    assert_eq!(
        std::fs::read(m.mnt.join("dev/plain")).unwrap(),
        vec![7u8; 4096]
    );
    assert_eq!(
        std::fs::read_to_string(m.mnt.join("dm/plain/status")).unwrap(),
        "0 8 linear \n"
    );
}

#[test]
fn kernel_mirror_end_to_end_in_the_kernel_oracle() {
    let oracle = match common::oracle::find() {
        Ok(oracle) => oracle,
        Err(why) => return tell(&format!("skipped: {why}")),
    };
    let share = scratch_dir("kernel-mirror");
    std::fs::copy(DMFS, share.join("dmfs")).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/kernel/mirror-vm.sh");
    std::fs::copy(&script, share.join("mirror-vm.sh")).unwrap();
    tell(&format!(
        "running fixtures/kernel/mirror-vm.sh in the kernel oracle's VM (one boot, {} at most)",
        "10 minutes"
    ));
    let vm = match common::oracle::boot(&oracle, &share, &[], "mirror-vm.sh", "mirror-vm:") {
        Ok(vm) => vm,
        Err(why) => return tell(&format!("skipped: {why}")),
    };
    let (stdout, stderr, code) = (&vm.stdout, &vm.stderr, vm.code);
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/kernel-mirror.out");
    let _ = std::fs::write(&target, stdout);
    tell(&format!(
        "VM run took {:?}; its output is in target/kernel-mirror.out",
        Duration::from_secs(vm.took.as_secs())
    ));
    let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        code == Some(0) && failed.is_empty() && stdout.contains(" 0 failed"),
        "kernel mirror checks failed (exit {code:?}):\n{}\n--- full output ---\n{stdout}\n--- stderr ---\n{stderr}",
        failed.join("\n")
    );
    let checks = stdout.lines().filter(|l| l.starts_with("ok: ")).count();
    assert!(checks >= 150, "only {checks} checks ran:\n{stdout}");
}
