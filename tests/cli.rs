//! The dmsetup-style verbs: the classic walkthrough with `dmsetup` swapped for `dmfs`, and
//! output and exit codes compared with what dmsetup printed (fixtures/kernel/misc.out).

mod common;
use common::*;

#[test]
fn walkthrough_with_dmsetup_words() {
    let m = Mount::new();
    write_pattern_image(&m.path("a.img"), 0, 8192);
    write_pattern_image(&m.path("b.img"), 1, 4096);
    let out = m.ok(r#"
        set -e
        export DMFS_MOUNT=$MNT
        dmsetup() { $DMFS "$@"; }
        echo "0 8192 linear $PWD/a.img 0
8192 4096 linear $PWD/b.img 0" | dmsetup create twoasone
        cat a.img b.img | cmp - $MNT/dev/twoasone
        dmsetup create halfdisk --table "0 4096 linear $PWD/a.img 0" -u HALF-1
        printf '0 4096 linear %s 0\n4096 4096 linear %s 4096\n' $PWD/b.img $PWD/a.img > oneahalf.table
        dmsetup create oneahalf oneahalf.table
        dmsetup ls
        dmsetup table halfdisk | sed "s|$PWD|P|"
        dmsetup info halfdisk | grep UUID
        dmsetup reload halfdisk --table "0 100 zero"
        dmsetup table --inactive halfdisk
        dmsetup suspend halfdisk
        dmsetup status halfdisk | sed "s|$PWD|P|"
        dmsetup resume halfdisk
        dmsetup status halfdisk
        dmsetup rename oneahalf oah
        dmsetup deps oah | sed "s|$PWD|P|g"
        exec 3<$MNT/dev/oah
        dmsetup remove -f oah 2>&1 || echo "busy while open"
        dd if=$MNT/dev/oah bs=512 count=1 status=none >/dev/null 2>&1 || echo "error table after -f"
        exec 3<&-
        dmsetup remove oah halfdisk twoasone
        dmsetup ls
    "#);
    assert_eq!(
        out,
        "halfdisk\t(253:1)\noneahalf\t(253:2)\ntwoasone\t(253:0)\n\
         0 4096 linear P/a.img 0\n\
         UUID: HALF-1\n\
         0 100 zero \n\
         0 4096 linear \n\
         0 100 zero \n\
         2 dependencies\t: (P/a.img) (P/b.img)\n\
         device-mapper: remove ioctl on oah  failed: Device or resource busy\n\
         remove oah: Device oah is open (EBUSY)\n\
         Command failed.\n\
         busy while open\n\
         error table after -f\n\
         No devices found\n",
        "{}",
        m.log()
    );
}

#[test]
fn failures_print_dmsetups_words_and_exit_1() {
    let m = Mount::new();
    m.ok("$DMFS --mount $MNT create z --table '0 8 zero'");
    for (cmd, first_line) in [
        (
            "table nonexistent",
            "device-mapper: table ioctl on nonexistent  failed: No such device or address",
        ),
        ("status nonexistent", "Device does not exist."),
        ("info nonexistent", "Device does not exist."),
        (
            "remove nonexistent",
            "device-mapper: remove ioctl on nonexistent  failed: No such file or directory",
        ),
        (
            "create z --table '0 8 zero'",
            "device-mapper: create ioctl on z  failed: Device or resource busy",
        ),
        (
            "create bad --table '0 8 nosuch'",
            "device-mapper: create ioctl on bad  failed: Invalid argument",
        ),
    ] {
        let out = m.sh(&format!("$DMFS --mount $MNT {cmd}"));
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.first(), Some(&first_line), "{cmd}: {err}");
        assert_eq!(lines.last(), Some(&"Command failed."), "{cmd}: {err}");
    }
    m.ok("$DMFS --mount $MNT rename z --setuuid UUID-Z");
    assert_eq!(m.read("dm/z/uuid"), "UUID-Z\n");
    let err = m.fails("$DMFS --mount $MNT rename z --setuuid OTHER");
    assert!(
        err.contains("because uuid is already set to UUID-Z"),
        "{err}"
    );
    // The reason dmfs recorded is shown too.
    let err = m.fails("$DMFS --mount $MNT create bad --table '0 8 nosuch'");
    assert!(err.contains("nosuch: unknown target type"), "{err}");
    assert_eq!(m.devices(), vec!["z"]);
    let targets = m.ok("$DMFS --mount $MNT targets");
    assert_eq!(targets, m.read("ctl/targets"));
    assert_eq!(m.ok("$DMFS --mount $MNT version"), m.read("ctl/version"));
    let err = m.fails("$DMFS --mount $MNT message z 0 some message");
    assert!(
        err.contains("device-mapper: message ioctl on z  failed: Invalid argument"),
        "{err}"
    );
    assert!(
        err.contains("Target type does not support messages"),
        "{err}"
    );
}

/// The output lines of a `### command` section of fixtures/kernel/cli.out (the last one if the
/// command was recorded twice and `last` is set).
fn recorded(command: &str, last: bool) -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/kernel/cli.out"
    ))
    .unwrap();
    let sections: Vec<&str> = text
        .split("### ")
        .filter(|s| s.lines().next() == Some(command))
        .collect();
    let section = if last {
        sections.last()
    } else {
        sections.first()
    }
    .expect(command);
    section.lines().skip(2).map(|l| format!("{l}\n")).collect()
}

#[test]
fn ls_tree_and_info_columns_as_dmsetup_prints_them() {
    let m = Mount::new();
    m.ok("truncate -s 4M a.img b.img");
    // The set cli-vm.sh made on the kernel: vda is a.img, vdb is b.img.
    m.ok(r#"
        set -e
        export DMFS_MOUNT=$MNT
        echo "0 4096 linear $PWD/a.img 0" | $DMFS create base
        printf "0 2048 linear $PWD/b.img 0\n2048 2048 linear $PWD/a.img 4096\n" | $DMFS create pair
        echo "0 1024 linear $MNT/dev/base 100" | $DMFS create top
        echo "0 100 zero" | $DMFS create lonely
    "#);
    let dir = m.dir.to_string_lossy().into_owned();
    let kernel = |s: String| {
        s.replace("254:0", &format!("{dir}/a.img"))
            .replace("254:16", &format!("{dir}/b.img"))
    };
    assert_eq!(m.ok("$DMFS --mount $MNT ls"), recorded("dmsetup ls", false));
    assert_eq!(
        m.ok("$DMFS --mount $MNT ls --tree"),
        kernel(recorded("dmsetup ls --tree", true))
    );
    assert_eq!(
        m.ok("$DMFS --mount $MNT info -c"),
        recorded("dmsetup info -c", false)
    );
    m.ok("$DMFS --mount $MNT rename top --setuuid UUID-TOP");
    assert_eq!(
        m.ok("$DMFS --mount $MNT info top"),
        recorded("dmsetup info top", false)
    );
    assert_eq!(
        m.ok("$DMFS --mount $MNT info -c"),
        recorded("dmsetup info -c", true)
    );
    // A uuid given with the create is part of it, no event: `dmsetup create -u`.
    m.ok("$DMFS --mount $MNT create withuuid -u UUID-W --table '0 100 zero'");
    assert_eq!(
        m.ok("$DMFS --mount $MNT info withuuid"),
        recorded("dmsetup info withuuid", false)
    );
    assert_eq!(
        m.ok("$DMFS --mount $MNT info -c withuuid"),
        recorded("dmsetup info -c withuuid", false)
    );
    // A uuid the create cannot take leaves no device: it is already in use.
    let err = m.fails("$DMFS --mount $MNT create other -u UUID-W --table '0 100 zero'");
    assert!(err.contains("uuid is already in use"), "{err}");
    assert!(!m.devices().contains(&"other".to_string()));
}

#[test]
fn large_tables_show_progress_and_commit_whole() {
    let m = Mount::new();
    let out = m.sh(
        "for i in $(seq 0 2499); do echo \"$((i * 8)) 8 zero\"; done > big.table && \
         $DMFS --mount $MNT --progress create big big.table",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("create big: 1000/2500 table lines checked"),
        "{err}"
    );
    assert!(
        err.contains("create big: 2500/2500 table lines checked"),
        "{err}"
    );
    assert_eq!(m.read("dm/big/table").lines().count(), 2500);
    assert_eq!(
        std::fs::metadata(m.mnt.join("dev/big")).unwrap().len(),
        2500 * 8 * 512
    );
}

#[test]
fn resume_follows_a_snapshot_merge_to_its_end() {
    let m = Mount::new();
    // An origin of 2 MiB, 600 chunks of 1 sector written after the snapshot was taken.
    let out = m.sh(
        "set -e; python3 -c 'import sys; sys.stdout.buffer.write(bytes(range(256)) * 8192)' > o.img
         truncate -s 2M c.img
         $DMFS --mount $MNT create origin --table \"0 4096 snapshot-origin $PWD/o.img\"
         $DMFS --mount $MNT create snap --table \"0 4096 snapshot $PWD/o.img $PWD/c.img P 1\"
         cp o.img before.img
         head -c 307200 /dev/urandom | dd of=$MNT/dev/origin bs=512 seek=100 conv=notrunc status=none
         cmp $MNT/dev/snap before.img
         $DMFS --mount $MNT remove snap
         $DMFS --mount $MNT reload origin --table \"0 4096 snapshot-merge $PWD/o.img $PWD/c.img P 1\"
         $DMFS --mount $MNT suspend origin
         $DMFS --mount $MNT --progress resume origin",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("origin: merged 100.0% (0 sectors left)"),
        "{err}"
    );
    // Done means no exception left: allocated == metadata (header + one area, 2 chunks).
    assert_eq!(
        m.read("dm/origin/status"),
        "0 4096 snapshot-merge 2/4096 2\n"
    );
    m.ok("cmp o.img before.img && cmp $MNT/dev/origin before.img");
}

#[test]
fn a_table_that_cannot_be_read_is_refused_with_the_reason() {
    let m = Mount::new();
    let err = m.fails("$DMFS --mount $MNT create t nosuch.table");
    assert!(
        err.contains("reading the table: No such file or directory"),
        "{err}"
    );
    let err = m.fails("printf '0 8 zero\\n\\xff\\xfe' | $DMFS --mount $MNT create t");
    assert!(
        err.contains("reading the table: not valid UTF-8 text"),
        "{err}"
    );
    assert!(m.devices().is_empty());
}
