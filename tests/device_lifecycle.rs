//! reload, suspend/resume, rename, uuid, message and read-only, through the files in ctl/ and
//! dm/NAME/.

mod common;
use common::*;

#[test]
fn suspend_holds_io_until_resume_and_resume_swaps_the_reloaded_table() {
    let m = Mount::new();
    write_pattern_image(&m.path("a.img"), 0, 256);
    write_pattern_image(&m.path("b.img"), 1, 256);
    let out = m.ok(r#"
        set -e
        echo "0 256 linear a.img 0" > $MNT/ctl/create/x
        echo "0 128 linear b.img 0" > $MNT/ctl/reload/x
        cat $MNT/dm/x/inactive-table | sed "s|$PWD/||"
        grep "Tables present" $MNT/dm/x/info
        cmp a.img $MNT/dev/x              # the reload is not live yet
        echo x > $MNT/ctl/suspend
        cat $MNT/dm/x/suspended
        # More readers and writers than the daemon has request threads: all must wait, and the
        # resume must still get through. The readers bypass the page cache: pages cached
        # before the suspend (by the cmp above) are served during it, as a dm device's are.
        for i in 1 2 3 4 5 6; do
            dd if=$MNT/dev/x of=r$i bs=512 count=64 iflag=direct status=none &
        done
        dd if=/dev/zero of=$MNT/dev/x bs=512 seek=100 count=1 conv=notrunc status=none &
        sleep 1
        ls r* 2>/dev/null | while read f; do test ! -s $f; done   # nothing read yet
        echo x > $MNT/ctl/resume
        wait
        cat $MNT/dm/x/suspended
        cat $MNT/dm/x/table | sed "s|$PWD/||"
        grep "Tables present" $MNT/dm/x/info
        # Readers saw the new table (b), and the held write landed in b.img.
        head -c 32768 b.img > expect
        for i in 1 2 3 4 5 6; do cmp r$i expect; done
        cmp -s <(dd if=b.img bs=512 skip=100 count=1 status=none) <(head -c 512 /dev/zero) && echo zeroed
        stat -c %s $MNT/dev/x
    "#);
    // Every mode shows the new size: in writeback mode, where the kernel owns the size of an
    // inode it knows, the resize dropped dev/x's entry and the readers' closes let the old
    // inode go (docs/REFERENCE.md, Caching).
    assert_eq!(
        out,
        "0 128 linear b.img 0\nTables present:    LIVE & INACTIVE\n1\n0\n0 128 linear b.img 0\n\
         Tables present:    LIVE\nzeroed\n65536\n"
    );
}

#[test]
fn rename_keeps_open_files_and_stacked_references() {
    let m = Mount::new();
    write_pattern_image(&m.path("a.img"), 0, 64);
    let out = m.ok(r#"
        set -e
        echo "0 64 linear a.img 0" > $MNT/ctl/create/old
        echo "0 32 linear $MNT/dev/old 8" > $MNT/ctl/create/top
        exec 3<$MNT/dev/old
        echo "old new" > $MNT/ctl/rename
        ls $MNT/dev | tr '\n' ' '; echo
        cmp <(cat <&3) a.img && echo open-file-still-reads
        exec 3<&-
        cat $MNT/dm/top/table | sed "s|$MNT|MNT|"
        ! test -e $MNT/dm/old
    "#);
    assert_eq!(
        out,
        "new top \nopen-file-still-reads\n0 32 linear MNT/dev/new 8\n"
    );
    let err = m.fails("echo 'new top' > $MNT/ctl/rename");
    assert!(err.contains("Device or resource busy"), "{err}");
    let err = m.fails("echo 'missing other' > $MNT/ctl/rename");
    assert!(err.contains("No such file or directory"), "{err}");
    assert!(
        m.read("ctl/errors")
            .contains("one that already exists: top")
    );
}

#[test]
fn uuid_is_set_once_and_unique() {
    let m = Mount::new();
    m.ok("echo '0 8 zero' > $MNT/ctl/create/a && echo '0 8 zero' > $MNT/ctl/create/b");
    assert_eq!(m.read("dm/a/uuid"), "");
    m.ok("echo LVM-abc > $MNT/dm/a/uuid");
    assert_eq!(m.read("dm/a/uuid"), "LVM-abc\n");
    assert!(m.read("dm/a/info").contains("UUID: LVM-abc\n"));
    let err = m.fails("echo other > $MNT/dm/a/uuid");
    assert!(err.contains("Invalid argument"), "{err}");
    let err = m.fails("echo LVM-abc > $MNT/dm/b/uuid");
    assert!(err.contains("Device or resource busy"), "{err}");
    let err = m.fails(&format!("echo {} > $MNT/dm/b/uuid", "u".repeat(129)));
    assert!(err.contains("Invalid argument"), "{err}");
    assert_eq!(m.read("dm/a/uuid"), "LVM-abc\n");
    assert_eq!(m.read("dm/b/uuid"), "");
    let errors = m.read("ctl/errors");
    assert!(
        errors.contains("because uuid is already set to LVM-abc"),
        "{errors}"
    );
    assert!(
        errors.contains("because uuid is already in use"),
        "{errors}"
    );
}

#[test]
fn read_only_devices_refuse_writes() {
    let m = Mount::new();
    write_pattern_image(&m.path("a.img"), 0, 64);
    m.ok("echo '0 64 linear a.img 0' > $MNT/ctl/create/x && chmod a-w $MNT/dev/x");
    let err = m.fails("dd if=/dev/zero of=$MNT/dev/x bs=512 count=1 conv=notrunc");
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(
        m.read("dm/x/info")
            .contains("State:             ACTIVE (READ-ONLY)")
    );
    m.ok("chmod u+w $MNT/dev/x && dd if=/dev/zero of=$MNT/dev/x bs=512 count=1 conv=notrunc status=none");
    // Created read-only: a table file created without write permission. Its backing file is
    // opened read-only, so a file the daemon may not write still works.
    write_pattern_image(&m.path("ro.img"), 1, 64);
    m.ok(r#"
        set -e
        chmod 0444 ro.img
        chattr +i ro.img 2>/dev/null || true
        python3 -c "import os,sys; fd=os.open(sys.argv[1], os.O_WRONLY|os.O_CREAT, 0o444); os.write(fd, b'0 64 linear ro.img 0\n'); os.close(fd)" $MNT/ctl/create/ro
        cmp ro.img $MNT/dev/ro
        ! dd if=/dev/zero of=$MNT/dev/ro bs=512 count=1 conv=notrunc status=none
        chattr -i ro.img 2>/dev/null || true
    "#);
    assert!(m.read("dm/ro/info").contains("(READ-ONLY)"));
}

#[test]
fn messages_and_reload_errors() {
    let m = Mount::new();
    write_pattern_image(&m.path("a.img"), 0, 64);
    m.ok("echo '0 64 linear a.img 0' > $MNT/ctl/create/x && echo '0 8 linear '$MNT'/dev/x 0' > $MNT/ctl/create/top");
    for (line, errno, why) in [
        (
            "x 0 hello",
            "Invalid argument",
            "Target type does not support messages",
        ),
        (
            "x 64 hello",
            "Invalid argument",
            "Target message sector outside device.",
        ),
        ("x zz hello", "Invalid argument", "Invalid sector"),
        (
            "x 0",
            "Invalid argument",
            "Invalid target message parameters.",
        ),
        (
            "nosuch 0 hello",
            "No such file or directory",
            "Device nosuch not found",
        ),
    ] {
        let err = m.fails(&format!("echo '{line}' > $MNT/ctl/message"));
        assert!(err.contains(errno), "{line}: {err}");
        assert!(m.last_error().contains(why), "{line}");
    }
    let err = m.fails("echo '0 8 zero' > $MNT/ctl/reload/nosuch");
    assert!(err.contains("No such file or directory"), "{err}");
    // x cannot be reloaded onto top, which sits on x: that would be a loop.
    let err = m.fails("echo \"0 8 linear $MNT/dev/top 0\" > $MNT/ctl/reload/x");
    assert!(err.contains("Invalid argument"), "{err}");
    assert!(m.read("ctl/errors").contains("the table would make a loop"));
    assert_eq!(m.read("dm/x/inactive-table"), "");
    let err = m.fails("echo nosuch > $MNT/ctl/suspend");
    assert!(err.contains("No such file or directory"), "{err}");
    let err = m.fails("echo 'x y' > $MNT/ctl/resume");
    assert!(err.contains("Invalid argument"), "{err}");
    assert_eq!(m.read("dm/x/suspended"), "0\n");
}
