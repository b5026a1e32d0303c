//! An ordinary user's dmfs: a user who is not root mounts through fusermount3 (package fuse3),
//! creates and snapshots devices over files of their own, is refused files they may not read,
//! and unmounts, leaving no process and no mount behind. Without access to /dev/fuse, or without
//! fusermount3, `dmfs mount` says in one line what is wrong and what fixes it.
//!
//! The tests run as root (as the rest of the suite does) and act as a user they create for the
//! run (useradd, removed again by userdel), through setpriv. That user gets read-write access to
//! /dev/fuse from an ACL entry for the test only: containers often have /dev/fuse 0600 where
//! distributions make it 0666. The ACL is saved first and restored exactly on drop, also when a
//! test fails. Needs fuse3 (fusermount3), acl (getfacl, setfacl), passwd (useradd, userdel) and
//! util-linux (setpriv, unshare): tests/run-all.sh installs them.

mod common;
use common::*;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The user the tests create and remove again.
const USER: &str = "dmfs-unpriv-test";
const DEV_FUSE: &str = "/dev/fuse";

/// Every test creates and removes the same user, and two change /dev/fuse's ACL: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn assert_contains(text: &str, want: &str) {
    assert!(text.contains(want), "expected {want:?} in:\n{text}");
}

/// Runs a bash script as root; panics with its output unless it succeeds.
fn root(script: &str) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "as root ({}):\n{script}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stops the test unless the tools it uses are installed: the test must not pass by skipping.
fn require_tools() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the unprivileged tests run as root and act as a user they create"
    );
    for (tool, package) in [
        ("fusermount3", "fuse3"),
        ("getfacl", "acl"),
        ("setfacl", "acl"),
        ("useradd", "passwd"),
        ("userdel", "passwd"),
        ("setpriv", "util-linux"),
        ("unshare", "util-linux"),
    ] {
        let found = Command::new("bash")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "{tool} not found: install {package} (tests/run-all.sh does, as root)"
        );
    }
}

/// A user created for one test, with a scratch directory, a copy of dmfs it can run, and
/// optionally read-write access to /dev/fuse. Dropping it unmounts what the user left mounted,
/// ends the user's processes, restores /dev/fuse's ACL, removes the user and the directory.
struct Unprivileged {
    /// Root's scratch directory (0755): the dmfs binary, root's files, and `home`.
    dir: PathBuf,
    /// The user's home, theirs alone; the mount point is `home/mnt`.
    home: PathBuf,
    uid: u32,
    gid: u32,
    /// `getfacl` output of /dev/fuse from before the test changed it.
    saved_acl: Option<PathBuf>,
    _serial: MutexGuard<'static, ()>,
}

/// Creates the test's user with `home` as its home (taking over one a killed run left behind);
/// its uid and gid.
fn create_user(home: &Path) -> (u32, u32) {
    let exists = Command::new("id")
        .arg(USER)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    if !exists {
        // A system account: no subordinate ids, no mail spool; unprivileged all the same.
        root(&format!(
            "useradd --system --no-create-home --home-dir {} --gid nogroup --shell /bin/bash \
             {USER}",
            home.display()
        ));
    }
    let id = |flag: &str| root(&format!("id {flag} {USER}")).trim().parse().unwrap();
    (id("-u"), id("-g"))
}

impl Unprivileged {
    fn new(dev_fuse_access: bool) -> Unprivileged {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        require_tools();
        let dir = scratch_dir("unpriv");
        let home = dir.join("home");
        let (uid, gid) = match std::panic::catch_unwind(|| create_user(&home)) {
            Ok(ids) => ids,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                std::panic::resume_unwind(e)
            }
        };
        // Dropping kills what runs as this uid: never root's processes.
        assert_ne!(uid, 0, "{USER} is root");
        let mut u = Unprivileged {
            home: home.clone(),
            dir: dir.clone(),
            uid,
            gid,
            saved_acl: None,
            _serial: serial,
        };
        // The built binary may sit where the user cannot reach it (a 0700 home): a link to it
        // (a copy across filesystems) in the 0755 scratch directory.
        let bin = dir.join("dmfs");
        if std::fs::hard_link(DMFS, &bin).is_err() {
            std::fs::copy(DMFS, &bin).unwrap();
        }
        root(&format!(
            "chmod 755 {0} {0}/dmfs && mkdir -m 700 {1} && chown {2}:{3} {1}",
            dir.display(),
            home.display(),
            u.uid,
            u.gid
        ));
        if dev_fuse_access {
            let saved = dir.join("dev-fuse.acl");
            root(&format!(
                "getfacl --absolute-names {DEV_FUSE} > {}",
                saved.display()
            ));
            u.saved_acl = Some(saved);
            root(&format!("setfacl -m u:{}:rw {DEV_FUSE}", u.uid));
        }
        u
    }

    /// setpriv and env running `argv` as the user, in their home, with a clean environment:
    /// $DMFS is the user's dmfs, $MNT the mount point, $ROOTDIR root's scratch directory.
    fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--clear-groups")
            .arg("env")
            .arg("-i")
            .arg(format!("HOME={}", self.home.display()))
            .arg(format!("USER={USER}"))
            .arg(format!("LOGNAME={USER}"))
            .arg("PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .arg(format!("DMFS={}", self.dir.join("dmfs").display()))
            .arg(format!("MNT={}", self.home.join("mnt").display()))
            .arg(format!("ROOTDIR={}", self.dir.display()))
            .args(argv)
            .current_dir(&self.home)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs a bash script as the user.
    fn sh(&self, script: &str) -> Output {
        self.command(&["bash", "-c", script])
            .output()
            .expect("run setpriv")
    }

    /// Runs a script as the user that must succeed; returns its stdout.
    fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "as {USER} ({}):\n{script}\nstdout:\n{}\nstderr:\n{}\nlog:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.home.join("dmfs.log")).unwrap_or_default()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a script as the user that must fail; returns its stderr.
    fn fails(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            !out.status.success(),
            "as {USER}: succeeded but should have failed:\n{script}\nstdout:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The newest line of the mount's ctl/errors without its time stamp.
    fn last_error(&self) -> String {
        let errors = self.ok("cat $MNT/ctl/errors");
        let last = errors.lines().last().unwrap_or_default();
        last.split_once(' ')
            .map_or(last, |(_time, rest)| rest)
            .to_string()
    }

    /// The user's processes that have not exited (an exited daemon stays a zombie until init
    /// reaps it), as "pid command".
    fn live_processes(&self) -> Vec<String> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
                continue;
            };
            let field = |key: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .map(|v| v.split_whitespace().collect::<Vec<_>>())
                    .unwrap_or_default()
            };
            let uid = field("Uid:").first().and_then(|v| v.parse::<u32>().ok());
            let zombie = field("State:").first() == Some(&"Z");
            if uid == Some(self.uid) && !zombie {
                let name = field("Name:").join(" ");
                found.push(format!("{} {name}", entry.file_name().to_string_lossy()));
            }
        }
        found
    }

    /// The mount points under the scratch directory, from /proc/mounts.
    fn mounts(&self) -> Vec<String> {
        mounts_under(&self.dir)
    }

    /// Waits up to 10 s for the user's last process to end, then checks that none is left and
    /// nothing is mounted.
    fn assert_nothing_left(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.live_processes().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            self.live_processes(),
            Vec::<String>::new(),
            "processes left"
        );
        assert_eq!(self.mounts(), Vec::<String>::new(), "mounts left");
    }
}

/// /dev/fuse's owner, group, mode bits and ACL entries, as getfacl shows them.
fn dev_fuse_acl() -> String {
    root(&format!("getfacl --absolute-names {DEV_FUSE}"))
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|m| m.starts_with(&prefix))
        .map(String::from)
        .collect()
}

impl Drop for Unprivileged {
    fn drop(&mut self) {
        // Root may unmount the user's FUSE mounts; the daemon then exits by itself.
        for mnt in self.mounts().into_iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(&mnt).status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.live_processes().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever still runs as the test's own user was started by this test.
        for p in self.live_processes() {
            if let Some(pid) = p.split(' ').next().and_then(|p| p.parse::<i32>().ok()) {
                // SAFETY: kill sends a signal to a process of the test's user (never root:
                // `new` checks the uid).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if let Some(saved) = &self.saved_acl {
            let restored = Command::new("setfacl")
                .arg(format!("--restore={}", saved.display()))
                .status()
                .is_ok_and(|s| s.success());
            if !restored {
                eprintln!(
                    "could not restore the ACL of {DEV_FUSE}; it was:\n{}",
                    std::fs::read_to_string(saved).unwrap_or_default()
                );
            }
        }
        // --force: the daemon's zombie, until init reaps it, still counts as the user's process.
        let _ = Command::new("userdel").arg("--force").arg(USER).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The classic walkthrough's three devices over the user's own images, a persistent snapshot,
/// the dmsetup-style verbs, a refused table, and `dmfs umount`, all as an ordinary user.
#[test]
fn an_ordinary_user_mounts_creates_snapshots_and_unmounts() {
    let dev_fuse_before = dev_fuse_acl();
    let u = Unprivileged::new(true);
    assert_contains(&dev_fuse_acl(), &format!("\nuser:{USER}:rw-\n"));
    // The user's images, and a file of root's the user may not read.
    write_pattern_image(&u.home.join("a.img"), 0, 8192);
    write_pattern_image(&u.home.join("b.img"), 1, 4096);
    write_pattern_image(&u.dir.join("secret.img"), 2, 64);
    root(&format!(
        "cd {} && chown {}:{} a.img b.img && chmod 600 ../secret.img",
        u.home.display(),
        u.uid,
        u.gid
    ));

    u.ok(r#"
        set -e
        mkdir mnt
        $DMFS mount $MNT --log-file dmfs.log
        test "$(id -u)" != 0
        # twoasone: two images concatenated.
        echo "0 8192 linear $PWD/a.img 0
8192 4096 linear $PWD/b.img 0" > $MNT/ctl/create/twoasone
        cat a.img b.img | cmp - $MNT/dev/twoasone
        # halfdisk: the first half of a.
        echo "0 4096 linear $PWD/a.img 0" > $MNT/ctl/create/halfdisk
        head -c $((4096 * 512)) a.img | cmp - $MNT/dev/halfdisk
        # oneahalf: all of b, then the second half of a.
        printf '0 4096 linear %s 0\n4096 4096 linear %s 4096\n' $PWD/b.img $PWD/a.img \
            > $MNT/ctl/create/oneahalf
        { cat b.img; tail -c $((4096 * 512)) a.img; } | cmp - $MNT/dev/oneahalf
        # A persistent snapshot of a copy of a.img: 16 chunks written through the origin.
        cp a.img origin.img
        truncate -s 1M cow.img
        echo "0 8192 snapshot-origin $PWD/origin.img" > $MNT/ctl/create/origin
        echo "0 8192 snapshot $PWD/origin.img $PWD/cow.img P 8" > $MNT/ctl/create/snap
        dd if=b.img of=$MNT/dev/origin bs=4k count=16 conv=notrunc,fsync status=none
        cmp a.img $MNT/dev/snap
        cmp -n 65536 b.img origin.img
    "#);
    // fusermount3 mounted it for the user: the mount is theirs.
    assert_contains(
        &u.ok("grep \" $MNT fuse.dmfs \" /proc/mounts"),
        &format!(",user_id={},group_id={},", u.uid, u.gid),
    );
    assert_eq!(
        u.ok("$DMFS --mount $MNT ls"),
        "halfdisk\t(253:1)\noneahalf\t(253:2)\norigin\t(253:3)\nsnap\t(253:4)\n\
         twoasone\t(253:0)\n"
    );
    let home = u.home.display().to_string();
    assert_eq!(
        u.ok("$DMFS --mount $MNT table"),
        format!(
            "halfdisk: 0 4096 linear {home}/a.img 0\n\
             oneahalf: 0 4096 linear {home}/b.img 0\n\
             oneahalf: 4096 4096 linear {home}/a.img 4096\n\
             origin: 0 8192 snapshot-origin {home}/origin.img\n\
             snap: 0 8192 snapshot {home}/origin.img {home}/cow.img P 8\n\
             twoasone: 0 8192 linear {home}/a.img 0\n\
             twoasone: 8192 4096 linear {home}/b.img 0\n"
        )
    );
    // 16 exceptions of 8 sectors, after the header chunk and one metadata chunk (16 sectors)
    // of the 2048-sector COW file.
    assert_eq!(
        u.ok("$DMFS --mount $MNT status"),
        "halfdisk: 0 4096 linear \n\
         oneahalf: 0 4096 linear \n\
         oneahalf: 4096 4096 linear \n\
         origin: 0 8192 snapshot-origin \n\
         snap: 0 8192 snapshot 144/2048 16\n\
         twoasone: 0 8192 linear \n\
         twoasone: 8192 4096 linear \n"
    );

    // A table naming root's 0600 file: the daemon runs as the user and cannot open it.
    let err = u.fails("echo \"0 8 linear $ROOTDIR/secret.img 0\" > $MNT/ctl/create/secret");
    assert_contains(&err, "Permission denied");
    assert_eq!(
        u.last_error(),
        format!(
            "create secret: line 1: linear: Device lookup failed: {}/secret.img: Permission \
             denied (os error 13) (EACCES)",
            u.dir.display()
        )
    );
    let err =
        u.fails("$DMFS --mount $MNT create secret2 --table \"0 8 linear $ROOTDIR/secret.img 0\"");
    assert_contains(&err, "Permission denied");
    let devices = "halfdisk\noneahalf\norigin\nsnap\ntwoasone\n";
    assert_eq!(u.ok("ls $MNT/dev"), devices);
    assert_eq!(u.ok("ls $MNT/dm"), devices);

    u.ok("$DMFS umount $MNT");
    u.assert_nothing_left();

    // Mounted again, the snapshot reloads from its COW file: still the old data. Then a crypt
    // device: once the daemon holds a key it makes itself non-dumpable, which the kernel shows
    // by giving the files of its /proc directory to root.
    u.ok(r#"
        set -e
        $DMFS mount $MNT --log-file dmfs.log
        echo "0 8192 snapshot $PWD/origin.img $PWD/cow.img P 8" > $MNT/ctl/create/snap
        cmp a.img $MNT/dev/snap
        # (the first mount's daemon may linger as a zombie, which has no command line)
        daemon=$(pgrep -u "$(id -u)" -f "dmfs mount $MNT ")
        test "$(stat -c %u /proc/$daemon/status)" = "$(id -u)"
        echo "0 8 crypt aes-xts-plain64 $(printf '%064d' 7) 0 $PWD/b.img 0" > $MNT/ctl/create/c
        test "$(stat -c %u /proc/$daemon/status)" = 0
        echo c > $MNT/ctl/remove
    "#);
    assert_eq!(
        u.ok("$DMFS --mount $MNT status snap"),
        "0 8192 snapshot 144/2048 16\n"
    );
    u.ok("$DMFS umount $MNT");
    u.assert_nothing_left();
    let log = std::fs::read_to_string(u.home.join("dmfs.log")).unwrap();
    assert_eq!(log.matches("] unmounted ").count(), 2, "{log}");
    drop(u);
    assert_eq!(dev_fuse_acl(), dev_fuse_before);
}

/// Runs `dmfs mount $MNT` as the user in a private mount namespace of the test's own, after
/// `setup` has run there as root (a failed setup exits 100, told apart from dmfs's status).
fn mount_in_namespace(u: &Unprivileged, setup: &str) -> Output {
    u.ok("mkdir -p mnt");
    let (bin, mnt) = (u.dir.join("dmfs"), u.home.join("mnt"));
    let user = u.command(&[bin.to_str().unwrap(), "mount", mnt.to_str().unwrap()]);
    let user: Vec<String> = std::iter::once(user.get_program())
        .chain(user.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy()))
        .collect();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "bash", "-c"])
        .arg(format!(
            "{{ {setup}\n}} || exit 100\ncd {} && exec {}",
            u.home.display(),
            user.join(" ")
        ))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ne!(
        out.status.code(),
        Some(100),
        "namespace setup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The one line `dmfs mount` printed on stderr as it failed with exit status 1.
fn one_failure_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected:\n{stderr}");
    lines[0].to_string()
}

/// Without read-write access to /dev/fuse (here a 0600 node, as containers often have, bound
/// over /dev/fuse), `dmfs mount` fails with one line that names the mode and the fix.
#[test]
fn without_access_to_dev_fuse_mount_says_why_in_one_line() {
    let u = Unprivileged::new(false);
    let rdev = std::fs::metadata(DEV_FUSE).unwrap().rdev();
    let node = u.dir.join("node");
    std::fs::create_dir(&node).unwrap();
    let out = mount_in_namespace(
        &u,
        &format!(
            "mount -t tmpfs -o mode=0755 dmfs-test {0} && mknod -m 0600 {0}/fuse c {1} {2} && \
             mount --bind {0}/fuse {DEV_FUSE}",
            node.display(),
            libc::major(rdev),
            libc::minor(rdev),
        ),
    );
    let line = one_failure_line(&out);
    for want in [
        &format!("dmfs: mount {}/mnt: ", u.home.display()),
        &format!("cannot open /dev/fuse read-write as uid {}", u.uid),
        "Permission denied",
        "mode 0600, owner root:root",
        "fusermount3 (package fuse3",
        "distributions make it 0666",
    ] as [&str; 6]
    {
        assert_contains(&line, want);
    }
    u.assert_nothing_left();
}

/// With /dev/fuse open to them but no fusermount3 (hidden here by /dev/null bound over it),
/// an ordinary user is told what to install, in one line, not "No such file or directory".
#[test]
fn without_fusermount3_mount_says_so_in_one_line() {
    let u = Unprivileged::new(true);
    let out = mount_in_namespace(
        &u,
        "for f in fusermount3 fusermount; do
             for dir in /usr/local/bin /usr/bin /bin /usr/sbin /sbin; do
                 if [ -e $dir/$f ]; then mount --bind /dev/null \"$(readlink -f $dir/$f)\" || exit 100; fi
             done
         done",
    );
    assert_eq!(
        one_failure_line(&out),
        format!(
            "dmfs: mount {}/mnt: only root mounts with mount(2); ordinary users mount through \
             fusermount3 (package fuse3), which is not installed",
            u.home.display()
        )
    );
    u.assert_nothing_left();
}
