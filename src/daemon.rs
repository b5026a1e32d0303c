//! Mounting and unmounting: `dmfs mount` serves in the background once the mount is ready
//! (like sshfs), or in the foreground with `-f`; SIGTERM, SIGINT and SIGHUP unmount cleanly.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{Config, MountOption, Session, SessionACL};

use crate::access::Policy;
use crate::coherence::{CacheMode, Coherence};
use crate::fs::{DmFs, PassthroughMode};
use crate::registry::Registry;

pub struct MountOptions {
    pub mountpoint: PathBuf,
    pub foreground: bool,
    pub allow_other: bool,
    /// The group whose members may write `ctl/` (with `allow_other`).
    pub ctl_group: Option<u32>,
    pub log_level: log::LevelFilter,
    pub log_file: Option<PathBuf>,
    pub threads: usize,
    pub passthrough: PassthroughMode,
    /// Mirror every device into the kernel's device mapper (`--kernel`).
    pub kernel: bool,
    pub cache: CacheMode,
    /// The mount's read-ahead in KiB (0: the kernel's default).
    pub read_ahead_kb: u32,
}

fn die(msg: &str) -> ! {
    eprintln!("dmfs: {msg}");
    std::process::exit(1)
}

/// The signals that end the daemon, blocked in every thread and taken by one.
fn exit_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset only write the set they are given.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

fn init_logging(opts: &MountOptions) -> std::io::Result<()> {
    let config = simplelog::ConfigBuilder::new()
        .set_time_format_rfc3339()
        .build();
    let sink: Box<dyn Write + Send> = match &opts.log_file {
        Some(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ),
        None if opts.foreground => Box::new(std::io::stderr()),
        None => return Ok(()),
    };
    let _ = simplelog::WriteLogger::init(opts.log_level, config, sink);
    Ok(())
}

/// Points stdin, stdout and stderr at /dev/null once a background daemon has reported in.
fn detach_stdio() {
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors; `null` stays open until the end.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// Runs `dmfs mount`. Returns only in the foreground, after the mount has ended.
pub fn mount(opts: MountOptions) {
    let mountpoint = std::fs::canonicalize(&opts.mountpoint)
        .unwrap_or_else(|e| die(&format!("{}: {e}", opts.mountpoint.display())));
    if !mountpoint.is_dir() {
        die(&format!("{}: not a directory", mountpoint.display()));
    }
    // --kernel: without a kernel device mapper, fail now, before anything is mounted.
    let kernel = opts.kernel.then(|| {
        crate::kernel::Kernel::open()
            .map(Arc::new)
            .unwrap_or_else(|e| die(&e))
    });

    // In the background, fork first (before any thread exists); the parent waits until the
    // child reports that the mount is ready, or why it failed.
    let mut ready_pipe: Option<File> = None;
    if !opts.foreground {
        let mut fds = [0; 2];
        // SAFETY: pipe writes two descriptors into `fds`.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            die(&format!("pipe: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: both descriptors were just created and are owned here.
        let (read_end, write_end) = unsafe {
            (
                File::from(OwnedFd::from_raw_fd(fds[0])),
                File::from(OwnedFd::from_raw_fd(fds[1])),
            )
        };
        // SAFETY: no other thread exists yet, so the child is a complete copy.
        match unsafe { libc::fork() } {
            -1 => die(&format!("fork: {}", std::io::Error::last_os_error())),
            0 => {
                drop(read_end);
                // SAFETY: setsid has no preconditions; the child leaves the terminal's session.
                unsafe { libc::setsid() };
                ready_pipe = Some(write_end);
            }
            _child => {
                drop(write_end);
                let mut msg = String::new();
                let mut read_end = read_end;
                let _ = read_end.read_to_string(&mut msg);
                if msg == "ok" {
                    std::process::exit(0);
                }
                die(if msg.is_empty() {
                    "the mount daemon exited before the mount was ready"
                } else {
                    &msg
                });
            }
        }
    }
    // In the background the parent prints the reason (the child still shares its stderr):
    // printed here as well, it would show twice.
    let fail = |msg: String| -> ! {
        match ready_pipe.as_ref() {
            Some(mut p) => {
                let _ = p.write_all(msg.as_bytes());
                std::process::exit(1)
            }
            None => die(&msg),
        }
    };

    if let Err(e) = init_logging(&opts) {
        fail(format!("log file: {e}"));
    }
    // Before anything is served: what a daemon for this mount point left in the kernel when it
    // died goes (logged), and this daemon's record of what it makes starts.
    if let Some(k) = &kernel
        && let Err(e) = k.start(Path::new(crate::kernel::leftovers::STATE_DIR), &mountpoint)
    {
        fail(e);
    }
    let signals = exit_signals();
    // SAFETY: blocks the exit signals in this thread; threads spawned later inherit the mask.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut()) };

    let policy = Policy {
        ctl_gid: opts.ctl_group,
        ..Policy::default()
    };
    let mut registry = Registry::new(mountpoint.clone()).with_policy(policy);
    if let Some(k) = &kernel {
        registry = registry.with_mirror(k.clone());
    }
    let registry = Arc::new(registry);
    // The kernel serves a mirrored device's I/O itself: no FUSE passthrough to the files.
    let passthrough = match &kernel {
        Some(_) => PassthroughMode::Off,
        // The kernel does not combine writeback caching with passthrough.
        None if opts.cache == CacheMode::Writeback => {
            log::info!("--cache writeback: no FUSE passthrough (the kernel does not combine them)");
            PassthroughMode::Off
        }
        None => opts.passthrough,
    };
    // A mirrored device's bytes are written by the kernel's device mapper, out of dmfs's
    // sight: its pages could not be kept true, so nothing is cached.
    let cache = if kernel.is_some() && opts.cache != CacheMode::Direct {
        log::info!("--kernel: dev/ files are not cached (--cache direct)");
        CacheMode::Direct
    } else {
        opts.cache
    };
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("dmfs".into()),
        MountOption::Subtype("dmfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoSuid,
        MountOption::NoDev,
    ];
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    // The page-cache coherence listens to the registry's changes; it lists the devices through
    // a weak reference, so the registry (which holds it as its sink) is not kept alive by it.
    let devices = Arc::downgrade(&registry);
    let coherence = Arc::new(Coherence::new(move || {
        devices.upgrade().map(|r| r.list()).unwrap_or_default()
    }));
    if registry.changes.attach(coherence.clone()).is_err() {
        fail("page cache coherence attached twice".into());
    }
    let mut session = match Session::new(
        DmFs::new(
            registry.clone(),
            coherence.clone(),
            passthrough,
            cache,
            opts.read_ahead_kb.saturating_mul(1024),
        ),
        &mountpoint,
        &config,
    ) {
        Ok(s) => s,
        Err(e) => fail(format!(
            "mount {}: {}",
            mountpoint.display(),
            dev_fuse_problem()
                .or_else(missing_fusermount)
                .unwrap_or_else(|| e.to_string())
        )),
    };
    let notifier = session.notifier();
    let entries = session.notifier();
    coherence.start(
        move |s| {
            notifier.inval_inode(
                crate::fs::device_ino(s.device),
                s.offset as i64,
                s.len as i64,
            )
        },
        move |name| entries.inval_entry(crate::fs::dev_dir_ino(), std::ffi::OsStr::new(name)),
    );
    if opts.read_ahead_kb > 0 {
        set_read_ahead(&mountpoint, opts.read_ahead_kb);
    }
    let mut unmounter = session.unmount_callable();
    let mnt = mountpoint.clone();
    std::thread::spawn(move || {
        let mut sig = 0;
        // SAFETY: waits on the set blocked above; writes the signal number into `sig`.
        unsafe { libc::sigwait(&signals, &mut sig) };
        log::info!("signal {sig}: unmounting {}", mnt.display());
        if let Err(e) = unmounter.unmount() {
            // Busy: detach now, the kernel finishes the unmount when the last user leaves.
            log::warn!("unmount {}: {e}; detaching lazily", mnt.display());
            let _ = lazy_unmount(&mnt);
        }
    });
    log::info!(
        "mounted {} ({} threads, --cache {:?}, read-ahead {} KiB)",
        mountpoint.display(),
        opts.threads,
        cache,
        opts.read_ahead_kb
    );
    if let Some(mut p) = ready_pipe.take() {
        let _ = p.write_all(b"ok");
        drop(p);
        detach_stdio();
    }
    if let Err(e) = session.run() {
        log::error!("session ended: {e}");
    }
    registry.flush_all();
    registry.mirror_teardown();
    if let Some(k) = &kernel {
        k.finish();
    }
    log::info!("unmounted {}", mountpoint.display());
}

const DEV_FUSE: &str = "/dev/fuse";

/// Why `/dev/fuse` cannot be opened and what fixes it, in one line; None when it opens (the
/// mount failed for another reason). fuser opens it before anything else, also for ordinary
/// users (who then mount through fusermount3), and only says "Permission denied".
fn dev_fuse_problem() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let err = File::options()
        .read(true)
        .write(true)
        .open(DEV_FUSE)
        .err()?;
    if err.kind() == std::io::ErrorKind::NotFound {
        return Some(format!(
            "{DEV_FUSE} does not exist: the kernel's fuse module is not loaded (as root: \
             modprobe fuse)"
        ));
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let mut msg = format!("cannot open {DEV_FUSE} read-write as uid {euid}: {err}");
    if let Ok(meta) = std::fs::metadata(DEV_FUSE) {
        msg += &format!(
            "; it is mode {:04o}, owner {}:{}{}",
            meta.mode() & 0o7777,
            user_name(meta.uid()),
            group_name(meta.gid()),
            if has_acl(DEV_FUSE) {
                ", with an ACL (getfacl /dev/fuse)"
            } else {
                ""
            }
        );
    }
    if euid != 0 && err.kind() == std::io::ErrorKind::PermissionDenied {
        let fusermount = if fusermount_installed() {
            "installed"
        } else {
            "not installed"
        };
        msg += &format!(
            "; ordinary users mount through fusermount3 (package fuse3, {fusermount}) and \
             need {DEV_FUSE} read-write: distributions make it 0666 (as root: chmod 0666 \
             {DEV_FUSE})"
        );
    }
    Some(msg)
}

/// The name of user `uid`, else the number.
fn user_name(uid: u32) -> String {
    // SAFETY: getpwuid returns NULL or an entry that is read at once, before any other
    // password-database call; the mount has started no threads yet.
    let pw = unsafe { libc::getpwuid(uid) };
    if pw.is_null() {
        return uid.to_string();
    }
    // SAFETY: a non-NULL entry has a NUL-terminated pw_name.
    unsafe { std::ffi::CStr::from_ptr((*pw).pw_name) }
        .to_string_lossy()
        .into_owned()
}

/// The name of group `gid`, else the number.
fn group_name(gid: u32) -> String {
    // SAFETY: as in user_name, for the group database.
    let gr = unsafe { libc::getgrgid(gid) };
    if gr.is_null() {
        return gid.to_string();
    }
    // SAFETY: a non-NULL entry has a NUL-terminated gr_name.
    unsafe { std::ffi::CStr::from_ptr((*gr).gr_name) }
        .to_string_lossy()
        .into_owned()
}

/// Whether `path` has an access ACL beyond its mode bits (the kernel keeps none for an ACL
/// that the mode expresses).
fn has_acl(path: &str) -> bool {
    let (Ok(p), Ok(name)) = (
        std::ffi::CString::new(path),
        std::ffi::CString::new("system.posix_acl_access"),
    ) else {
        return false;
    };
    // SAFETY: both strings are NUL-terminated; a NULL buffer of size 0 asks for the size only.
    unsafe { libc::getxattr(p.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) > 0 }
}

/// For an ordinary user without fusermount3, what is missing, in one line (fuser's own words
/// are those of a failed exec: "No such file or directory").
fn missing_fusermount() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    (unsafe { libc::geteuid() } != 0 && !fusermount_installed()).then(|| {
        "only root mounts with mount(2); ordinary users mount through fusermount3 (package \
         fuse3), which is not installed"
            .to_string()
    })
}

/// Whether fuser finds a fusermount: $FUSERMOUNT_PATH, else fusermount3 or fusermount in
/// $PATH, /sbin or /bin.
fn fusermount_installed() -> bool {
    use std::os::unix::fs::PermissionsExt;
    if std::env::var_os("FUSERMOUNT_PATH").is_some() {
        return true;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .chain([PathBuf::from("/sbin"), PathBuf::from("/bin")])
        .collect();
    ["fusermount3", "fusermount"].iter().any(|name| {
        dirs.iter().any(|dir| {
            std::fs::metadata(dir.join(name))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// The `major:minor` of the mount at `mountpoint`, from /proc/self/mountinfo (a stat of the
/// mount point would be a FUSE request, and nothing serves requests yet).
fn mount_device_number(mountpoint: &Path) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = mountpoint.to_str()?;
    // Fields: id parent major:minor root mountpoint ...; the last match is the newest mount.
    text.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() > 4 && f[4] == want).then(|| f[2].to_string())
    })
}

/// Sets the mount's read-ahead (its bdi's `read_ahead_kb`): sequential buffered reads then
/// arrive as requests of up to that size, not 128 KiB. Needs root; without it the kernel's
/// default stays, and the log says so.
fn set_read_ahead(mountpoint: &Path, kb: u32) {
    let Some(dev) = mount_device_number(mountpoint) else {
        log::warn!(
            "read-ahead: {} not found in mountinfo",
            mountpoint.display()
        );
        return;
    };
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    match std::fs::write(&path, format!("{kb}\n")) {
        Ok(()) => log::info!("read-ahead {kb} KiB ({path})"),
        Err(e) => log::warn!("read-ahead: {path}: {e}; the kernel's default stays"),
    }
}

fn lazy_unmount(path: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: `c` is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `dmfs umount MNT`: umount(2) as root, fusermount3 -u for other users.
pub fn umount(path: &Path) -> Result<(), String> {
    let c =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: `c` is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EPERM) {
        return Err(format!("umount {}: {err}", path.display()));
    }
    for helper in ["fusermount3", "fusermount"] {
        if let Ok(status) = std::process::Command::new(helper)
            .arg("-u")
            .arg(path)
            .status()
        {
            return if status.success() {
                Ok(())
            } else {
                Err(format!("{helper} -u {} failed", path.display()))
            };
        }
    }
    Err(format!(
        "umount {}: {err} (and no fusermount3 to unmount as a user)",
        path.display()
    ))
}
