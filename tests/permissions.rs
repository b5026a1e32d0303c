//! Permissions and limits of a mount shared with other users: the mount is private without
//! --allow-other; with it others read but cannot administer; --ctl-group lets a group create
//! and manage its own devices, from backing files its members could open themselves.
//!
//! The tests run as root (as the rest of the suite does) and act as other users with setpriv:
//! uid 65534 (nobody) and uid 4242, members of group 100 (`users`) or of no group.

mod common;
use common::users::{MEMBER, NOBODY, OTHER_MEMBER, as_user};
use common::*;

/// A mount with a 64-sector image `a.img` (root's, mode 0644) in its scratch directory.
fn mount(args: &[&str]) -> Mount {
    let m = Mount::with_args(args);
    write_pattern_image(&m.path("a.img"), 0, 64);
    m.ok("chmod 644 a.img");
    m
}

fn assert_contains(text: &str, want: &str) {
    assert!(text.contains(want), "expected {want:?} in:\n{text}");
}

#[test]
fn without_allow_other_other_users_cannot_even_stat_the_mount() {
    let m = mount(&[]);
    m.ok("echo \"0 64 linear $PWD/a.img 0\" > $MNT/ctl/create/x");
    for script in [
        "stat $MNT",
        "ls $MNT/dev",
        "cat $MNT/ctl/version",
        "cat $MNT/dev/x",
    ] {
        assert_contains(&m.fails(&as_user(NOBODY, script)), "Permission denied");
    }
    // The owner (root) is not affected.
    m.ok("stat $MNT && cmp $MNT/dev/x a.img");
}

#[test]
fn with_allow_other_others_read_but_cannot_administer() {
    let m = mount(&["--allow-other"]);
    m.ok("echo \"0 64 linear $PWD/a.img 0\" > $MNT/ctl/create/x");
    // Reading follows the modes: dev/x is 0644, the texts 0444.
    m.ok(&as_user(
        NOBODY,
        "cat $MNT/ctl/version >/dev/null && cat $MNT/dm/x/table >/dev/null && cmp $MNT/dev/x a.img",
    ));
    assert_eq!(
        m.ok("stat -c '%a %U' $MNT/dev/x $MNT/ctl/remove $MNT/ctl/create"),
        "644 root\n200 root\n755 root\n"
    );
    let denied = [
        "echo \"0 8 zero\" > $MNT/ctl/create/y",
        "echo \"0 8 zero\" > $MNT/ctl/reload/x",
        "echo x > $MNT/ctl/remove",
        "echo x > $MNT/ctl/suspend",
        "echo \"x y\" > $MNT/ctl/rename",
        "echo u > $MNT/dm/x/uuid",
        "rm $MNT/dev/x",
        "dd if=/dev/zero of=$MNT/dev/x bs=512 count=1 conv=notrunc",
    ];
    for script in denied {
        assert_contains(&m.fails(&as_user(NOBODY, script)), "Permission denied");
    }
    // chmod is the owner's (the kernel answers EPERM).
    assert_contains(
        &m.fails(&as_user(NOBODY, "chmod a-w $MNT/dev/x")),
        "Operation not permitted",
    );
    assert_eq!(m.devices(), vec!["x"]);
    assert_eq!(m.read("dm/x/suspended"), "0\n");
    m.ok("cmp $MNT/dev/x a.img && test -w $MNT/dev/x");
}

#[test]
fn ctl_group_is_shown_in_modes_and_needs_allow_other() {
    let m = mount(&["--allow-other", "--ctl-group", "users"]);
    assert_eq!(
        m.ok("cd $MNT && stat -c '%n %a %U %g' ctl/remove ctl/message ctl/create ctl/reload dev ctl/errors"),
        "ctl/remove 220 root 100\nctl/message 220 root 100\nctl/create 775 root 100\n\
         ctl/reload 775 root 100\ndev 1775 root 100\nctl/errors 444 root 0\n"
    );
    drop(m);
    // A number works as well as a name.
    let m = mount(&["--allow-other", "--ctl-group", "100"]);
    assert_eq!(m.ok("stat -c %g $MNT/ctl/create"), "100\n");
    // Without --allow-other, or with an unknown group, dmfs refuses to mount.
    let out = m.sh("$DMFS mount $PWD --ctl-group users 2>&1");
    assert!(!out.status.success());
    assert_contains(&String::from_utf8_lossy(&out.stdout), "--allow-other");
    let out = m.sh("$DMFS mount $PWD --allow-other --ctl-group no-such-group-here 2>&1");
    assert!(!out.status.success());
    assert_contains(&String::from_utf8_lossy(&out.stdout), "no such group");
}

#[test]
fn ctl_group_members_create_and_manage_only_their_own_devices() {
    let m = mount(&["--allow-other", "--ctl-group", "users"]);
    m.ok("echo \"0 64 linear $PWD/a.img 0\" > $MNT/ctl/create/roots");
    m.ok("truncate -s 32K own.img && chown 65534 own.img && chmod 600 own.img");

    // A member creates a device over a file of its own: it is theirs, 0600.
    m.ok(&as_user(
        MEMBER,
        "echo \"0 64 linear own.img 0\" > $MNT/ctl/create/mine",
    ));
    assert_eq!(
        m.ok("stat -c '%a %u' $MNT/dev/mine $MNT/dm/mine/uuid $MNT/dev/roots"),
        "600 65534\n644 65534\n644 0\n"
    );
    m.ok("head -c 32768 /dev/urandom > data && chmod 644 data");
    m.ok(&as_user(
        MEMBER,
        "dd if=data of=$MNT/dev/mine bs=4k conv=notrunc status=none && cmp data $MNT/dev/mine",
    ));
    m.ok("cmp data own.img");
    // ...and manages it: suspend, resume, reload, rename, uuid, read-only and back.
    m.ok(&as_user(
        MEMBER,
        "echo mine > $MNT/ctl/suspend && echo mine > $MNT/ctl/resume && \
         echo \"0 64 linear own.img 0\" > $MNT/ctl/reload/mine && echo mine > $MNT/ctl/resume && \
         echo \"mine mine2\" > $MNT/ctl/rename && echo MINE-1 > $MNT/dm/mine2/uuid && \
         chmod a-w $MNT/dev/mine2 && chmod u+w $MNT/dev/mine2",
    ));
    assert_eq!(m.read("dm/mine2/uuid"), "MINE-1\n");

    // Nobody else in the group can read it or touch it: the kernel refuses what the modes
    // forbid (EACCES), dmfs what only the creator may do (EPERM).
    assert_contains(
        &m.fails(&as_user(OTHER_MEMBER, "cat $MNT/dev/mine2")),
        "Permission denied",
    );
    for script in [
        "echo mine2 > $MNT/ctl/remove",
        "echo mine2 > $MNT/ctl/suspend",
        "echo \"mine2 theirs\" > $MNT/ctl/rename",
        "echo \"mine2 0 hello\" > $MNT/ctl/message",
        "echo \"0 8 zero\" > $MNT/ctl/reload/mine2",
        "rm $MNT/dev/mine2",
    ] {
        assert_contains(
            &m.fails(&as_user(OTHER_MEMBER, script)),
            "Operation not permitted",
        );
    }
    assert_contains(
        &m.read("ctl/errors"),
        "remove mine2: mine2: permission denied (uid 4242 did not create it; only its creator, \
         the mount's owner (uid 0) or root may change it) (EPERM)",
    );
    // Nor the root device, for any member.
    for script in [
        "echo roots > $MNT/ctl/remove",
        "echo roots > $MNT/ctl/suspend",
    ] {
        assert_contains(
            &m.fails(&as_user(MEMBER, script)),
            "Operation not permitted",
        );
    }
    // A user outside the group cannot create at all.
    assert_contains(
        &m.fails(&as_user(
            NOBODY,
            "echo \"0 8 zero\" > $MNT/ctl/create/outsider",
        )),
        "Permission denied",
    );
    assert_eq!(m.devices(), vec!["mine2", "roots"]);
    assert_eq!(m.read("dm/mine2/suspended"), "0\n");

    // The creator removes its own device with rm; root removes anything.
    m.ok(&as_user(MEMBER, "rm $MNT/dev/mine2"));
    m.ok("echo roots > $MNT/ctl/remove");
    assert!(m.devices().is_empty());
}

/// Creates `name` as MEMBER with one linear line over `reference`; `ro` creates it read-only
/// (the table file is created without write permission).
fn member_create(reference: &str, name: &str, ro: bool) -> String {
    let umask = if ro { "umask 222; " } else { "" };
    as_user(
        MEMBER,
        &format!("{umask}echo \"0 8 linear {reference} 0\" > $MNT/ctl/create/{name}"),
    )
}

#[test]
fn a_member_table_may_only_name_files_the_member_could_open() {
    let m = mount(&["--allow-other", "--ctl-group", "users"]);
    m.ok(
        "cp a.img secret.img && chmod 600 secret.img && mkdir locked && cp a.img locked/open.img && \
         chmod 666 locked/open.img && chmod 700 locked && cp a.img own.img && chown 65534 own.img && \
         chmod 600 own.img && ln -s secret.img link.img && mkfifo fifo && chown 65534 fifo",
    );
    let count = std::cell::Cell::new(0);
    let refused = |reference: &str, errno: &str, reason: &str| {
        let name = format!("t{}", count.replace(count.get() + 1));
        let err = m.fails(&member_create(reference, &name, false));
        assert_contains(&err, errno);
        assert_contains(&m.read("ctl/errors"), reason);
        assert!(!m.devices().contains(&name), "{reference}: {name} created");
    };
    // Root's 0600 file: no.
    refused(
        "secret.img",
        "Permission denied",
        "create t0: line 1: linear: Device lookup failed: secret.img: permission denied (uid \
         65534 cannot open it read-write) (EACCES)",
    );
    // A 0644 file: read-only yes, read-write no.
    refused(
        "a.img",
        "Permission denied",
        "a.img: permission denied (uid 65534 cannot open it read-write) (EACCES)",
    );
    m.ok(&member_create("a.img", "ro", true));
    assert_eq!(m.ok("stat -c %a $MNT/dev/ro"), "400\n");
    m.ok("cmp -n 4096 $MNT/dev/ro a.img");
    // A 0666 file in a 0700 directory: no search permission on the way.
    refused(
        "locked/open.img",
        "Permission denied",
        &format!(
            "locked/open.img: permission denied (uid 65534 cannot search {}/locked) (EACCES)",
            m.dir.display()
        ),
    );
    // A symbolic link the member owns is followed to what it names, and judged by that.
    refused(
        "link.img",
        "Permission denied",
        "link.img: permission denied (uid 65534 cannot open it read-write)",
    );
    // A FIFO of the member's own is refused without being opened (that would hang).
    refused(
        "fifo",
        "Invalid argument",
        "fifo: not a block device or regular file (EINVAL)",
    );
    // Its own file: yes, read-write.
    m.ok(&member_create("$PWD/own.img", "mine", false));
    assert_eq!(m.devices(), vec!["mine", "ro"]);

    // Devices of this mount: root's are 0644, so read-only only; one's own, read-write.
    m.ok("echo \"0 64 linear $PWD/a.img 0\" > $MNT/ctl/create/base");
    refused(
        "$MNT/dev/base",
        "Permission denied",
        "/dev/base: permission denied (uid 65534 cannot open it read-write) (EACCES)",
    );
    m.ok(&member_create("$MNT/dev/base", "over-base", true));
    m.ok(&member_create("$MNT/dev/mine", "over-mine", false));
    // A member's device is closed to the others, even read-only.
    let err = m.fails(&as_user(
        OTHER_MEMBER,
        "umask 222; echo \"0 8 linear $MNT/dev/mine 0\" > $MNT/ctl/create/theirs",
    ));
    assert_contains(&err, "Permission denied");
    assert_contains(
        &m.read("ctl/errors"),
        "/dev/mine: permission denied (uid 4242 cannot open it read-only) (EACCES)",
    );
    // A reload is held to the same rule.
    let err = m.fails(&as_user(
        MEMBER,
        "echo \"0 8 linear secret.img 0\" > $MNT/ctl/reload/mine",
    ));
    assert_contains(&err, "Permission denied");
    assert_eq!(m.read("dm/mine/inactive-table"), "");
    // Root may name anything.
    m.ok("echo \"0 8 linear secret.img 0\" > $MNT/ctl/create/rootsecret");
}

#[test]
fn a_member_may_not_name_a_block_device_it_cannot_open() {
    let m = mount(&["--allow-other", "--ctl-group", "users"]);
    let out = m.sh("losetup -f --show a.img");
    if !out.status.success() {
        eprintln!("skipped: losetup failed");
        return;
    }
    let loopdev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let checks = || {
        let majmin = m.ok(&format!("stat -c '%t:%T' {loopdev}"));
        let (maj, min) = majmin.trim().split_once(':').unwrap();
        let majmin = format!(
            "{}:{}",
            u32::from_str_radix(maj, 16).unwrap(),
            u32::from_str_radix(min, 16).unwrap()
        );
        // /dev/loopN is root:disk 0660: neither by path nor by number.
        for reference in [loopdev.as_str(), majmin.as_str()] {
            let err = m.fails(&member_create(reference, "blk", true));
            assert_contains(&err, "Permission denied");
            assert_contains(
                &m.read("ctl/errors"),
                &format!("{reference}: permission denied (uid 65534 cannot open it read-only)"),
            );
        }
        // Root may.
        m.ok(&format!(
            "echo \"0 8 linear {majmin} 0\" > $MNT/ctl/create/blk && echo blk > $MNT/ctl/remove"
        ));
        assert!(m.devices().is_empty());
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(checks));
    m.sh(&format!("losetup -d {loopdev}"));
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// Only regular files and block devices are opened, for the mount's owner too: a FIFO named by
/// a read-only table used to block the request thread in open(2), a character device would be
/// opened (with whatever that does) before being refused.
#[test]
fn fifos_and_character_devices_are_refused_without_being_opened() {
    let m = mount(&[]);
    m.ok("mkfifo fifo");
    // Should the daemon block in open(2) again, the writer would hang with it: after 10 s the
    // script opens the FIFO itself to let the daemon go on, and fails.
    let err = m.fails(
        "umask 222; (echo \"0 8 linear $PWD/fifo 0\" > $MNT/ctl/create/f) 2>err & pid=$!
         for i in $(seq 100); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
         if kill -0 $pid 2>/dev/null; then exec 3<>fifo; wait $pid; echo hung >&2; exit 2; fi
         wait $pid; s=$?; cat err >&2; exit $s",
    );
    assert_contains(&err, "Invalid argument");
    for (reference, name) in [("/dev/null", "n"), ("/dev/zero", "z")] {
        let err = m.fails(&format!(
            "umask 222; echo \"0 8 linear {reference} 0\" > $MNT/ctl/create/{name}"
        ));
        assert_contains(&err, "Invalid argument");
    }
    assert_contains(
        &m.read("ctl/errors"),
        "create z: line 1: linear: Device lookup failed: /dev/zero: not a block device or regular \
         file (EINVAL)",
    );
    assert!(m.devices().is_empty());
}

#[test]
fn a_table_line_of_exactly_64_kib_is_taken_and_one_byte_more_is_not() {
    let m = mount(&[]);
    // "0 8 zero #" and a comment padded to the limit.
    let line = |len: usize| format!("0 8 zero #{}\n", "x".repeat(len - 10));
    std::fs::write(m.path("max.txt"), line(65536)).unwrap();
    std::fs::write(m.path("over.txt"), line(65537)).unwrap();
    m.ok("cat max.txt > $MNT/ctl/create/max");
    assert_eq!(m.read("dm/max/table"), "0 8 zero \n");
    assert_contains(
        &m.fails("cat over.txt > $MNT/ctl/create/over"),
        "Invalid argument",
    );
    assert_contains(
        &m.read("ctl/errors"),
        "create over: line longer than 65536 bytes (EINVAL)",
    );
    assert_eq!(m.devices(), vec!["max"]);
}

/// I/O through stacked devices recurses once per level: a stack of 3,000 devices overflowed a
/// request thread's stack and killed the mount. Stacks are limited to 16 levels, at create and
/// at reload (counting what is stacked on the reloaded device), and the mount survives.
#[test]
fn devices_stack_at_most_16_deep() {
    let m = mount(&[]);
    m.ok(
        "echo '0 8 zero' > $MNT/ctl/create/d1
         for i in $(seq 2 16); do echo \"0 8 linear $MNT/dev/d$((i-1)) 0\" > $MNT/ctl/create/d$i; done
         dd if=$MNT/dev/d16 of=/dev/null bs=512 count=1 iflag=direct status=none",
    );
    assert_contains(
        &m.fails("echo \"0 8 linear $MNT/dev/d16 0\" > $MNT/ctl/create/d17"),
        "Invalid argument",
    );
    assert_contains(
        &m.read("ctl/errors"),
        &format!(
            "create d17: {}/dev/d16: d17 over it would stack 17 devices (limit 16) (EINVAL)",
            m.mnt.display()
        ),
    );
    // Reloading the bottom device over another device would make d16 17 deep.
    m.ok("echo '0 8 zero' > $MNT/ctl/create/e");
    assert_contains(
        &m.fails("echo \"0 8 linear $MNT/dev/e 0\" > $MNT/ctl/reload/d1"),
        "Invalid argument",
    );
    assert_contains(&m.read("ctl/errors"), "reload d1: ");
    assert_contains(
        &m.read("ctl/errors"),
        "/dev/e: d1 over it would stack 17 devices (limit 16)",
    );
    assert_eq!(m.read("dm/d1/inactive-table"), "");
    // One level lower it fits.
    m.ok("echo \"0 8 linear $MNT/dev/e 0\" > $MNT/ctl/reload/d2 && echo d2 > $MNT/ctl/resume");
    assert_eq!(m.devices().len(), 17);
    m.ok("dd if=$MNT/dev/d16 of=/dev/null bs=512 count=1 iflag=direct status=none");
}
