//! Who may do what on a mount shared with other users (`--allow-other`).
//!
//! The kernel checks the modes dmfs reports (`default_permissions`), so the mode bits of `ctl/`
//! and `dev/` decide who may write commands and tables. What the kernel cannot check is what a
//! table names: the daemon opens backing files with its own rights. When the writer of a table is
//! neither root nor the daemon's own user, every backing file it names must be one the writer
//! could open itself with the access the device needs, by the Unix rules (owner, group or other
//! bits; search permission on every directory of the path). ACLs and capabilities other than
//! root's are not consulted: a file only an ACL opens to the writer is refused.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{DmError, DmResult};

/// Read, write and search/execute, as in the mode's `other` triple.
pub const READ: u32 = 4;
pub const WRITE: u32 = 2;
pub const SEARCH: u32 = 1;

/// The process behind a request: its filesystem uid and gid (as FUSE reports them) and its
/// supplementary groups (from `/proc/PID/status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// The `Groups:` line of a `/proc/PID/status` text.
fn parse_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

impl Caller {
    /// The caller of a request. If the process is gone its supplementary groups are unknown and
    /// taken as none: that can only refuse more, never allow more.
    pub fn of_request(uid: u32, gid: u32, pid: u32) -> Caller {
        let groups = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map(|s| parse_groups(&s))
            .unwrap_or_default();
        Caller { uid, gid, groups }
    }

    /// The daemon itself (for work no user asked for, and for tests).
    pub fn daemon() -> Caller {
        // SAFETY: getuid and getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Caller {
            uid,
            gid,
            groups: Vec::new(),
        }
    }

    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// Whether the Unix permission check grants `want` (a combination of READ, WRITE, SEARCH) on a
/// file owned by `uid`:`gid` with permission bits `mode` to `caller` (root is not special here:
/// callers decide about root before asking).
pub fn permits(caller: &Caller, uid: u32, gid: u32, mode: u32, want: u32) -> bool {
    let bits = if caller.uid == uid {
        mode >> 6
    } else if caller.in_group(gid) {
        mode >> 3
    } else {
        mode
    } & 0o7;
    bits & want == want
}

/// "read-write" or "read-only", as refusals say it.
pub fn access_words(write: bool) -> &'static str {
    if write { "read-write" } else { "read-only" }
}

fn denied(reference: &str, why: String) -> DmError {
    DmError::new(
        libc::EACCES,
        format!("{reference}: permission denied ({why})"),
    )
}

/// Pins the file `path` names with `O_PATH`, which does not open it (no device driver sees an
/// open, a FIFO does not block), and checks that it is a regular file or a block device. The
/// daemon then opens it through `/proc/self/fd/N` (`reopen_path`): nothing else is ever opened,
/// and a path swapped after the checks cannot make the daemon open something else.
/// Errors name the file by `path`, as opening it did before.
pub fn pin(path: &Path) -> DmResult<(std::fs::File, std::fs::Metadata)> {
    use std::os::unix::fs::OpenOptionsExt;
    let shown = path.display();
    let pinned = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| DmError::io(&shown, &e))?;
    let meta = pinned.metadata().map_err(|e| DmError::io(&shown, &e))?;
    let ft = meta.file_type();
    if ft.is_dir() {
        // What opening it would have answered.
        let e = std::io::Error::from_raw_os_error(libc::EISDIR);
        return Err(DmError::io(&shown, &e));
    }
    if !(ft.is_file() || ft.is_block_device()) {
        return Err(DmError::invalid(format!(
            "{shown}: not a block device or regular file"
        )));
    }
    Ok((pinned, meta))
}

/// Checks that `caller` could open the pinned file (`pin`) itself, read-write or read-only:
/// search permission on every directory of its real path, then the file's own bits.
pub fn check_pinned(
    caller: &Caller,
    reference: &str,
    pinned: &std::fs::File,
    meta: &std::fs::Metadata,
    write: bool,
) -> DmResult<()> {
    let real = std::fs::read_link(reopen_path(pinned)).map_err(|e| DmError::io(reference, &e))?;
    let mut dir = PathBuf::new();
    for part in real.parent().into_iter().flat_map(Path::iter) {
        dir.push(part);
        let d = std::fs::metadata(&dir).map_err(|e| DmError::io(reference, &e))?;
        if !permits(caller, d.uid(), d.gid(), d.mode(), SEARCH) {
            return Err(denied(
                reference,
                format!("uid {} cannot search {}", caller.uid, dir.display()),
            ));
        }
    }
    let want = if write { READ | WRITE } else { READ };
    if !permits(caller, meta.uid(), meta.gid(), meta.mode(), want) {
        return Err(denied(
            reference,
            format!("uid {} cannot open it {}", caller.uid, access_words(write)),
        ));
    }
    Ok(())
}

/// The path that opens exactly the file behind `file` (a magic link of procfs).
pub fn reopen_path(file: &std::fs::File) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// Who owns what on a mount: the daemon's user and group, and the group allowed to write
/// `ctl/` (`--ctl-group`).
#[derive(Clone, Debug)]
pub struct Policy {
    pub uid: u32,
    pub gid: u32,
    pub ctl_gid: Option<u32>,
}

impl Default for Policy {
    fn default() -> Policy {
        let d = Caller::daemon();
        Policy {
            uid: d.uid,
            gid: d.gid,
            ctl_gid: None,
        }
    }
}

impl Policy {
    /// Root and the daemon's own user: their tables may name anything the daemon can open, and
    /// they manage every device.
    pub fn is_privileged(&self, caller: &Caller) -> bool {
        caller.uid == 0 || caller.uid == self.uid
    }

    /// The owner recorded for a device `caller` creates: the daemon's uid for privileged
    /// callers, else the caller's.
    pub fn owner_for(&self, caller: &Caller) -> u32 {
        if self.is_privileged(caller) {
            self.uid
        } else {
            caller.uid
        }
    }

    /// Whether `caller` may remove, reload, suspend, resume, rename, message or set the uuid of
    /// a device owned by `owner`.
    pub fn may_manage(&self, caller: &Caller, owner: u32) -> bool {
        self.is_privileged(caller) || caller.uid == owner
    }

    /// The refusal for a caller that may not manage device `name`.
    pub fn not_manager(&self, caller: &Caller, name: &str) -> DmError {
        DmError::new(
            libc::EPERM,
            format!(
                "{name}: permission denied (uid {} did not create it; only its creator, the \
                 mount's owner (uid {}) or root may change it)",
                caller.uid, self.uid
            ),
        )
    }

    /// Owner, group and permission bits of `dev/NAME` for a device owned by `owner`: a device of
    /// the daemon's user is readable by all (0644), one another user created is that user's
    /// alone (0600), since its backing files may be readable by nobody else. A read-only device
    /// has no write bits.
    pub fn dev_file(&self, owner: u32, read_only: bool) -> (u32, u32, u32) {
        let mode = if owner == self.uid { 0o644 } else { 0o600 };
        let mode = if read_only { mode & !0o222 } else { mode };
        (owner, self.gid, mode)
    }

    /// Whether `caller` may map the device `name` (owned by `owner`) in a table, with `write`.
    pub fn check_mapped(
        &self,
        caller: &Caller,
        reference: &str,
        owner: u32,
        read_only: bool,
        write: bool,
    ) -> DmResult<()> {
        if self.is_privileged(caller) {
            return Ok(());
        }
        let (uid, gid, mode) = self.dev_file(owner, read_only);
        let want = if write { READ | WRITE } else { READ };
        if permits(caller, uid, gid, mode, want) {
            Ok(())
        } else {
            Err(denied(
                reference,
                format!("uid {} cannot open it {}", caller.uid, access_words(write)),
            ))
        }
    }

    /// Group and mode for `ctl/` command files and for the `ctl/create`, `ctl/reload` and `dev`
    /// directories: the ctl group may write them when there is one.
    pub fn ctl_file(&self) -> (u32, u32) {
        match self.ctl_gid {
            Some(g) => (g, 0o220),
            None => (self.gid, 0o200),
        }
    }

    pub fn ctl_dir(&self) -> (u32, u32) {
        match self.ctl_gid {
            Some(g) => (g, 0o775),
            None => (self.gid, 0o755),
        }
    }
}

/// Resolves `--ctl-group`: a group name from /etc/group, or a number.
pub fn parse_group(text: &str) -> Result<u32, String> {
    if let Ok(gid) = text.parse::<u32>() {
        return Ok(gid);
    }
    let c = std::ffi::CString::new(text).map_err(|_| format!("{text:?}: not a group name"))?;
    // SAFETY: getgrnam reads a NUL-terminated name; the result is read at once, before any other
    // call could reuse its static storage (this runs before any thread is started).
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        Err(format!("{text}: no such group"))
    } else {
        // SAFETY: a non-null result points at a valid group entry.
        Ok(unsafe { (*gr).gr_gid })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(uid: u32, gid: u32, groups: &[u32]) -> Caller {
        Caller {
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn owner_group_other_bits() {
        let alice = user(1000, 1000, &[100]);
        // Owner bits decide for the owner, even when they grant less than the others'.
        assert!(permits(&alice, 1000, 0, 0o600, READ | WRITE));
        assert!(!permits(&alice, 1000, 0, 0o066, READ));
        // Group bits for the primary and for a supplementary group.
        assert!(permits(&alice, 0, 1000, 0o060, READ | WRITE));
        assert!(permits(&alice, 0, 100, 0o040, READ));
        assert!(!permits(&alice, 0, 100, 0o040, READ | WRITE));
        // Group bits decide for a member, even when the other bits grant more.
        assert!(!permits(&alice, 0, 100, 0o006, READ));
        // Other bits.
        assert!(permits(&alice, 0, 0, 0o644, READ));
        assert!(!permits(&alice, 0, 0, 0o644, READ | WRITE));
        assert!(!permits(&alice, 0, 0, 0o600, READ));
        // Search.
        assert!(permits(&alice, 0, 0, 0o755, SEARCH));
        assert!(!permits(&alice, 0, 0, 0o700, SEARCH));
        assert!(!permits(&alice, 0, 0, 0o754, SEARCH));
    }

    #[test]
    fn groups_from_proc_status() {
        let status = "Name:\tbash\nUid:\t1 1 1 1\nGroups:\t4 24 100 \nNgid:\t0\n";
        assert_eq!(parse_groups(status), vec![4, 24, 100]);
        assert_eq!(parse_groups("Groups:\t\n"), Vec::<u32>::new());
        assert_eq!(parse_groups("Name:\tx\n"), Vec::<u32>::new());
    }

    #[test]
    fn policy_owners_and_dev_modes() {
        let p = Policy {
            uid: 0,
            gid: 0,
            ctl_gid: Some(100),
        };
        let root = user(0, 0, &[]);
        let bob = user(1001, 1001, &[100]);
        let eve = user(1002, 1002, &[100]);
        assert_eq!(p.owner_for(&root), 0);
        assert_eq!(p.owner_for(&bob), 1001);
        assert!(p.may_manage(&root, 1001));
        assert!(p.may_manage(&bob, 1001));
        assert!(!p.may_manage(&eve, 1001));
        assert_eq!(p.not_manager(&eve, "x").errno, libc::EPERM);
        assert_eq!(p.dev_file(0, false), (0, 0, 0o644));
        assert_eq!(p.dev_file(0, true), (0, 0, 0o444));
        assert_eq!(p.dev_file(1001, false), (1001, 0, 0o600));
        assert_eq!(p.dev_file(1001, true), (1001, 0, 0o400));
        // The daemon's devices map read-only for others; a user's own device read-write.
        assert!(p.check_mapped(&bob, "d", 0, false, false).is_ok());
        let e = p.check_mapped(&bob, "d", 0, false, true).unwrap_err();
        assert_eq!(e.errno, libc::EACCES);
        assert_eq!(
            e.reason,
            "d: permission denied (uid 1001 cannot open it read-write)"
        );
        assert!(p.check_mapped(&bob, "d", 1001, false, true).is_ok());
        assert!(p.check_mapped(&eve, "d", 1001, false, false).is_err());
        assert!(p.check_mapped(&root, "d", 1001, false, true).is_ok());
        assert_eq!(p.ctl_file(), (100, 0o220));
        assert_eq!(p.ctl_dir(), (100, 0o775));
        let q = Policy { ctl_gid: None, ..p };
        assert_eq!(q.ctl_file(), (0, 0o200));
        assert_eq!(q.ctl_dir(), (0, 0o755));
    }

    #[test]
    fn group_names_and_numbers() {
        assert_eq!(parse_group("0"), Ok(0));
        assert_eq!(parse_group("root"), Ok(0));
        assert!(parse_group("no-such-group-here").is_err());
    }
}
