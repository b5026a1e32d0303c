//! flakey, delay and unstriped through a real mount: what each mode does to reads and writes,
//! checked byte for byte against the backing files. (fault_fixtures.rs compares the same
//! targets with what the kernel printed.)

mod common;
use common::*;

use std::time::{Duration, Instant};

/// A mount with pattern disks a.img (disk 0, 4096 sectors) and b.img (disk 1, 4096 sectors).
fn mount_with_disks() -> Mount {
    let m = Mount::new();
    write_pattern_image(&m.path("a.img"), 0, 4096);
    write_pattern_image(&m.path("b.img"), 1, 4096);
    m
}

fn sector(index: u64, s: u64) -> Vec<u8> {
    pattern_image(index, s + 1)[(s * 512) as usize..].to_vec()
}

/// `up 0` keeps a flakey device down for good: the kernel's test is `elapsed % period >= up`.
#[test]
fn flakey_down_without_features_fails_all_io() {
    let m = mount_with_disks();
    m.ok("echo \"0 100 flakey $PWD/a.img 8 0 5\" > $MNT/ctl/create/f");
    let err = m.fails("dd if=$MNT/dev/f of=/dev/null bs=512 count=1 iflag=direct");
    assert!(err.contains("Input/output error"), "{err}");
    let err = m.fails(
        "dd if=/dev/zero of=$MNT/dev/f bs=512 count=1 oflag=direct conv=notrunc status=none",
    );
    assert!(err.contains("Input/output error"), "{err}");
    assert_eq!(
        std::fs::read(m.path("a.img")).unwrap(),
        pattern_image(0, 4096),
        "a failed write changed the disk"
    );
    // Up for the next hour: everything passes through, at the offset.
    m.ok("echo \"0 100 flakey $PWD/a.img 8 3600 1\" > $MNT/ctl/create/up");
    let got = std::fs::read(m.mnt.join("dev/up")).unwrap();
    assert_eq!(got, pattern_image(0, 108)[8 * 512..].to_vec());
    assert_eq!(
        m.read("dm/up/table"),
        format!("0 100 flakey {} 8 3600 1 0 \n", m.path("a.img").display())
    );
}

#[test]
fn flakey_drop_writes_and_error_writes_keep_reads_working() {
    let m = mount_with_disks();
    m.ok(
        "echo \"0 100 flakey $PWD/a.img 0 0 5 1 drop_writes\" > $MNT/ctl/create/drop
         echo \"0 100 flakey $PWD/b.img 0 0 5 1 error_writes\" > $MNT/ctl/create/err
         dd if=/dev/zero of=$MNT/dev/drop bs=512 seek=3 count=2 oflag=direct conv=notrunc,fsync status=none",
    );
    assert_eq!(
        std::fs::read(m.path("a.img")).unwrap(),
        pattern_image(0, 4096)
    );
    assert_eq!(
        std::fs::read(m.mnt.join("dev/drop")).unwrap(),
        pattern_image(0, 100)
    );
    let err = m.fails(
        "dd if=/dev/zero of=$MNT/dev/err bs=512 seek=3 count=1 oflag=direct conv=notrunc status=none",
    );
    assert!(err.contains("Input/output error"), "{err}");
    assert_eq!(
        std::fs::read(m.path("b.img")).unwrap(),
        pattern_image(1, 4096)
    );
    assert_eq!(
        std::fs::read(m.mnt.join("dev/err")).unwrap(),
        pattern_image(1, 100)
    );
}

#[test]
fn flakey_corrupts_the_nth_byte_of_each_request() {
    let m = mount_with_disks();
    // Reads: the 6.1 kernel's read corruption never changes a byte (fixtures/kernel/faults.out),
    // so neither does dmfs's: reads come back clean while down, and the disk is untouched.
    m.ok("echo \"0 100 flakey $PWD/a.img 0 0 5 5 corrupt_bio_byte 5 r 238 0\" > $MNT/ctl/create/r");
    let out = m.ok("dd if=$MNT/dev/r bs=512 skip=7 count=1 iflag=direct status=none | od -An -v -tx1 | tr -d ' \\n'");
    let hex: String = sector(0, 7).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(out, hex);
    assert_eq!(
        std::fs::read(m.path("a.img")).unwrap(),
        pattern_image(0, 4096)
    );
    // Writes: byte 1 of every request lands as 0x00; reads of the same device are clean.
    m.ok(
        "echo \"0 100 flakey $PWD/b.img 0 0 5 5 corrupt_bio_byte 1 w 0 0\" > $MNT/ctl/create/w
         head -c 1024 /dev/zero | tr '\\0' '\\377' > ff
         dd if=ff of=$MNT/dev/w bs=1024 seek=1 count=1 oflag=direct conv=notrunc,fsync status=none",
    );
    let disk = std::fs::read(m.path("b.img")).unwrap();
    let mut want = pattern_image(1, 4096);
    want[1024..2048].fill(0xff);
    want[1024] = 0;
    assert_eq!(disk, want);
    assert_eq!(
        m.read("dm/w/table"),
        format!(
            "0 100 flakey {} 0 0 5 5 corrupt_bio_byte 1 w 0 0 \n",
            m.path("b.img").display()
        )
    );
}

#[test]
fn flakey_refuses_bad_features_with_the_kernels_words() {
    let m = mount_with_disks();
    for (args, why) in [
        ("0 0 5 1 bogus", "Unrecognised flakey feature requested"),
        ("0 0 0", "Total (up + down) interval is zero"),
        ("0 4294967295 2", "Interval overflow"),
        // The sum wraps to 0 in the kernel's unsigned int, so this one is "zero".
        ("0 4294967295 1", "Total (up + down) interval is zero"),
        ("0 0 5 7 drop_writes", "Invalid number of feature args"),
        ("0 0 5 2 drop_writes", "Invalid number of feature args"),
        (
            "0 0 5 2 drop_writes error_writes",
            "Feature error_writes conflicts with feature drop_writes",
        ),
        (
            "0 0 5 2 drop_writes drop_writes",
            "Feature drop_writes duplicated",
        ),
        (
            "0 0 5 1 corrupt_bio_byte",
            "Feature corrupt_bio_byte requires parameters",
        ),
        (
            "0 0 5 5 corrupt_bio_byte 0 r 1 0",
            "Invalid corrupt bio byte",
        ),
        (
            "0 0 5 5 corrupt_bio_byte 1 x 1 0",
            "Invalid corrupt bio direction (r or w)",
        ),
        (
            "0 0 5 5 corrupt_bio_byte 1 r 256 0",
            "Invalid corrupt value to write into bio byte (0-255)",
        ),
        (
            "0 0 5 6 drop_writes corrupt_bio_byte 1 w 1 0",
            "drop_writes is incompatible with corrupt_bio_byte with the WRITE flag set",
        ),
        ("x 0 5", "Invalid device sector"),
        ("0 x 5", "Invalid up interval"),
        // The kernel words a bad down interval the same way.
        ("0 5 x", "Invalid up interval"),
        ("0 0", "Invalid argument count"),
    ] {
        let err = m.fails(&format!(
            "echo \"0 100 flakey $PWD/a.img {args}\" > $MNT/ctl/create/bad"
        ));
        assert!(err.contains("Invalid argument"), "{args}: {err}");
        let last = m.last_error();
        assert!(last.contains(&format!("flakey: {why}")), "{args}: {last}");
        assert!(m.devices().is_empty(), "{args}: a device was left behind");
    }
}

#[test]
fn delay_holds_requests_counts_them_and_lets_them_go_on_suspend() {
    let m = mount_with_disks();
    // Reads from a.img at once; writes to b.img from sector 16, held for ten minutes.
    m.ok("echo \"0 100 delay $PWD/a.img 0 0 $PWD/b.img 16 600000\" > $MNT/ctl/create/d");
    assert_eq!(
        m.read("dm/d/table"),
        format!(
            "0 100 delay {} 0 0 {} 16 600000\n",
            m.path("a.img").display(),
            m.path("b.img").display()
        )
    );
    assert_eq!(m.read("dm/d/status"), "0 100 delay 0 0 0\n");
    assert_eq!(
        std::fs::read(m.mnt.join("dev/d")).unwrap(),
        pattern_image(0, 100)
    );
    let writer = m.sh_spawn(
        "head -c 512 /dev/zero | dd of=$MNT/dev/d bs=512 seek=2 count=1 oflag=direct conv=notrunc status=none",
    );
    wait_for(
        || m.read("dm/d/status") == "0 100 delay 0 1 0\n",
        "the write to be held",
    );
    assert_eq!(
        std::fs::read(m.path("b.img")).unwrap(),
        pattern_image(1, 4096)
    );
    // Suspend lets it go long before its ten minutes are up.
    m.ok("echo d > $MNT/ctl/suspend");
    let status = wait_child(writer, Duration::from_secs(30)).expect("suspend released the write");
    assert!(status.success());
    m.ok("echo d > $MNT/ctl/resume");
    assert_eq!(m.read("dm/d/status"), "0 100 delay 0 0 0\n");
    let mut want = pattern_image(1, 4096);
    want[(18 * 512)..(19 * 512)].fill(0);
    assert_eq!(std::fs::read(m.path("b.img")).unwrap(), want);
    assert_eq!(
        std::fs::read(m.path("a.img")).unwrap(),
        pattern_image(0, 4096)
    );
}

#[test]
fn delay_refuses_bad_tables() {
    let m = mount_with_disks();
    for (args, why) in [
        ("$PWD/a.img 0", "Requires exactly 3, 6 or 9 arguments"),
        (
            "$PWD/a.img 0 1 $PWD/b.img",
            "Requires exactly 3, 6 or 9 arguments",
        ),
        ("$PWD/a.img x 1", "Invalid device sector"),
        ("$PWD/a.img 0 -1", "Invalid delay"),
        ("$PWD/a.img 0 1 $PWD/b.img 0 x", "Invalid delay"),
        ("$PWD/a.img 4000 0", "too small for target"),
    ] {
        let err = m.fails(&format!(
            "echo \"0 100 delay {args}\" > $MNT/ctl/create/bad"
        ));
        assert!(err.contains("Invalid argument"), "{args}: {err}");
        let last = m.last_error();
        assert!(last.contains(why), "{args}: {last}");
        assert!(m.devices().is_empty(), "{args}: a device was left behind");
    }
}

/// unstriped undoes striped: over a dmfs striped device of a.img and b.img, stripe 0 reads
/// a.img and stripe 1 reads b.img, and a write through a stripe lands in its disk.
#[test]
fn unstriped_takes_a_striped_device_apart() {
    let m = mount_with_disks();
    m.ok(
        "echo \"0 8192 striped 2 8 $PWD/a.img 0 $PWD/b.img 0\" > $MNT/ctl/create/s
         echo \"0 4096 unstriped 2 8 0 $MNT/dev/s 0\" > $MNT/ctl/create/u0
         echo \"0 4096 unstriped 2 8 1 $MNT/dev/s 0\" > $MNT/ctl/create/u1
         cmp $MNT/dev/u0 a.img && cmp $MNT/dev/u1 b.img
         head -c 12288 /dev/urandom > new
         dd if=new of=$MNT/dev/u1 bs=4096 seek=5 conv=notrunc,fsync status=none
         cmp <(dd if=b.img bs=4096 skip=5 count=3 status=none) new
         cmp $MNT/dev/u0 a.img",
    );
    assert_eq!(
        std::fs::read(m.path("a.img")).unwrap(),
        pattern_image(0, 4096)
    );
    assert_eq!(
        m.read("dm/u1/table"),
        format!("0 4096 unstriped 2 8 1 {}/dev/s 0\n", m.mnt.display())
    );
    assert_eq!(m.read("dm/u1/status"), "0 4096 unstriped \n");
    // Odd chunk sizes and three stripes: chunk k of stripe 2 is chunk 3k+2 of the device.
    m.ok("echo \"0 60 unstriped 3 5 2 $PWD/a.img 100\" > $MNT/ctl/create/odd");
    let disk = pattern_image(0, 4096);
    let want: Vec<u8> = (0..60u64)
        .flat_map(|s| {
            let at = 100 + (s / 5 * 3 + 2) * 5 + s % 5;
            disk[(at * 512) as usize..((at + 1) * 512) as usize].to_vec()
        })
        .collect();
    assert_eq!(std::fs::read(m.mnt.join("dev/odd")).unwrap(), want);
}

#[test]
fn unstriped_refuses_bad_tables() {
    let m = mount_with_disks();
    for (args, why) in [
        ("2 8 0 $PWD/a.img", "Invalid number of arguments"),
        ("0 8 0 $PWD/a.img 0", "Invalid stripe count"),
        ("2 0 0 $PWD/a.img 0", "Invalid chunk_size"),
        ("2 8 x $PWD/a.img 0", "Invalid stripe number"),
        (
            "2 8 3 $PWD/a.img 0",
            "Please provide stripe between [0, # of stripes]",
        ),
        ("2 8 0 $PWD/missing.img 0", "Couldn't get striped device"),
        ("2 8 0 $PWD/a.img x", "Invalid striped device offset"),
        (
            "2 7 0 $PWD/a.img 0",
            "Target length not divisible by chunk size",
        ),
    ] {
        let err = m.fails(&format!(
            "echo \"0 64 unstriped {args}\" > $MNT/ctl/create/bad"
        ));
        assert!(!err.is_empty(), "{args}");
        let last = m.last_error();
        assert!(last.contains(why), "{args}: {last}");
        assert!(m.devices().is_empty(), "{args}: a device was left behind");
    }
}

fn wait_for(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_child(mut child: std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}
