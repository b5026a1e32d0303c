//! FUSE passthrough: which opens the kernel serves itself, and what that means for suspend
//! and for writes through other paths. A passthrough read is recognised by what only it can
//! do: complete while its device is suspended.

mod common;
use common::*;

/// Whether the kernel running the tests offered passthrough to this mount, and the mount's
/// cache mode allows it.
fn offered(m: &Mount) -> bool {
    let log = m.log();
    // --cache writeback turns passthrough off (the kernel does not combine writeback caching
    // with passthrough): no device may use it, and the tests' passthrough checks do not apply.
    if cache_mode() == CacheMode::Writeback {
        assert!(
            !log.contains("use passthrough"),
            "--cache writeback, yet a device uses passthrough:\n{log}"
        );
        eprintln!("--cache writeback: passthrough is off; checked that no device uses it");
        return false;
    }
    if log.contains("does not offer FUSE passthrough") {
        eprintln!("skipped: this kernel does not offer FUSE passthrough");
        return false;
    }
    true
}

#[test]
fn read_only_whole_file_devices_are_read_by_the_kernel() {
    let m = Mount::new();
    write_pattern_image(&m.path("a.img"), 0, 2048);
    m.ok("echo \"0 2048 linear $PWD/a.img 0\" > $MNT/ctl/create/ro && chmod a-w $MNT/dev/ro && cmp a.img $MNT/dev/ro");
    if !offered(&m) {
        return;
    }
    assert!(
        m.log()
            .contains("dev/ro: read-only opens use passthrough (one linear line over all of"),
        "{}",
        m.log()
    );
    // Opened before the suspend; a second open joins it; both read while suspended.
    let out = m.ok("exec 3<$MNT/dev/ro
         echo ro > $MNT/ctl/suspend
         timeout 20 cmp /proc/self/fd/3 a.img && echo read-while-suspended
         echo ro > $MNT/ctl/resume");
    assert_eq!(out, "read-while-suspended\n");
    assert!(
        m.log()
            .contains("suspend ro: 1 passthrough handles are open"),
        "{}",
        m.log()
    );
}

#[test]
fn writable_devices_and_partial_maps_go_through_dmfs() {
    let m = Mount::new();
    write_pattern_image(&m.path("a.img"), 0, 2048);
    write_pattern_image(&m.path("b.img"), 1, 2048);
    m.ok(
        "echo \"0 2048 linear $PWD/a.img 0\" > $MNT/ctl/create/rw
         echo \"0 1024 linear $PWD/a.img 8\" > $MNT/ctl/create/off
         echo \"0 1024 linear $PWD/a.img 0\" > $MNT/ctl/create/part
         printf '0 2048 linear %s 0\\n2048 2048 linear %s 0\\n' $PWD/a.img $PWD/b.img > $MNT/ctl/create/two
         for d in off part two; do chmod a-w $MNT/dev/$d; cat $MNT/dev/$d > /dev/null; done
         cat $MNT/dev/rw > /dev/null",
    );
    if !offered(&m) {
        return;
    }
    let log = m.log();
    for want in [
        "dev/off: no passthrough: its target is linear, not linear from sector 0",
        "dev/part: no passthrough: it maps 1024 of the 2048 sectors of",
        "dev/two: no passthrough: the table has 2 lines",
    ] {
        assert!(log.contains(want), "missing {want:?} in\n{log}");
    }
    // A writable device (auto mode): its reads are dmfs's, so a suspend holds them (direct
    // reads: the pages the cat above cached are served during a suspend, as a dm device's).
    let out = m.ok("echo rw > $MNT/ctl/suspend
         dd if=$MNT/dev/rw of=r bs=512 count=8 iflag=direct status=none &
         sleep 1
         test ! -s r && echo held
         echo rw > $MNT/ctl/resume
         wait
         cmp r <(head -c 4096 a.img) && echo read");
    assert_eq!(out, "held\nread\n");
    assert!(
        m.log()
            .contains("dev/rw: no passthrough: the device is writable"),
        "{}",
        m.log()
    );
}

#[test]
fn passthrough_on_serves_writable_devices_and_sees_writes_made_elsewhere() {
    let m = Mount::with_args(&["--passthrough", "on"]);
    write_pattern_image(&m.path("a.img"), 0, 2048);
    m.ok("echo \"0 2048 linear $PWD/a.img 0\" > $MNT/ctl/create/whole
         echo \"0 8 linear $PWD/a.img 16\" > $MNT/ctl/create/window");
    if !offered(&m) {
        return;
    }
    // A reader holds a passthrough handle; a write through another device over the same
    // bytes lands in a.img, and the open handle reads it.
    let out = m.ok("exec 3<$MNT/dev/whole
         head -c 4096 /dev/zero | tr '\\0' '\\252' > aa
         dd if=aa of=$MNT/dev/window bs=4096 conv=notrunc,fsync status=none
         cmp <(dd if=/proc/self/fd/3 bs=512 skip=16 count=8 status=none) aa && echo coherent
         echo whole > $MNT/ctl/suspend
         timeout 20 cmp /proc/self/fd/3 a.img && echo read-while-suspended
         echo whole > $MNT/ctl/resume");
    assert_eq!(out, "coherent\nread-while-suspended\n");
    assert!(
        m.log()
            .contains("dev/whole: read-only opens use passthrough"),
        "{}",
        m.log()
    );
}

#[test]
fn passthrough_off_keeps_every_read_in_dmfs() {
    let m = Mount::with_args(&["--passthrough", "off"]);
    write_pattern_image(&m.path("a.img"), 0, 2048);
    let out = m.ok("echo \"0 2048 linear $PWD/a.img 0\" > $MNT/ctl/create/ro
         chmod a-w $MNT/dev/ro
         exec 3<$MNT/dev/ro
         echo ro > $MNT/ctl/suspend
         dd if=/proc/self/fd/3 of=r bs=512 count=8 status=none &
         sleep 1
         test ! -s r && echo held
         echo ro > $MNT/ctl/resume
         wait
         cmp r <(head -c 4096 a.img) && echo read");
    assert_eq!(out, "held\nread\n");
    assert!(!m.log().contains("use passthrough"), "{}", m.log());
}
