//! Mounting and unmounting: background and foreground modes, `dmfs umount`, signals.

mod common;
use common::*;

use std::process::Command;

#[test]
fn background_mount_returns_when_ready_and_umount_ends_it() {
    let dir = scratch_dir("bg");
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    write_pattern_image(&dir.join("a.img"), 0, 64);
    let script = r#"
        set -e
        $DMFS mount $MNT
        # Ready as soon as the command returns: no polling.
        echo "0 64 linear $PWD/a.img 0" > $MNT/ctl/create/a
        cmp a.img $MNT/dev/a
        pid=$(pgrep -f "dmfs mount $MNT\$")
        grep -q "^dmfs $MNT fuse" /proc/mounts
        $DMFS umount $MNT
        ! grep -q " $MNT " /proc/mounts
        for i in $(seq 100); do kill -0 $pid 2>/dev/null || break; sleep 0.05; done
        ! kill -0 $pid 2>/dev/null
        echo done
    "#;
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(&dir)
        .env("MNT", &mnt)
        .env("DMFS", DMFS)
        .output()
        .unwrap();
    // Clean up whatever the script left, whether it passed or not.
    let _ = Command::new("bash")
        .arg("-c")
        .arg("pkill -f \"dmfs mount $MNT\\$\"; umount -l $MNT 2>/dev/null; true")
        .env("MNT", &mnt)
        .status();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
}

#[test]
fn sigterm_unmounts_and_exits_cleanly() {
    let mut m = Mount::new();
    assert!(m.is_mounted());
    let pid = m.pid();
    assert!(
        Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success()
    );
    let status = m.wait_exit().expect("daemon exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(!m.is_mounted());
}

#[test]
fn mount_on_a_missing_directory_fails_with_a_message() {
    let dir = scratch_dir("missing");
    let out = Command::new(DMFS)
        .arg("mount")
        .arg(dir.join("nope"))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nope") && err.contains("No such file or directory"),
        "{err}"
    );
}
