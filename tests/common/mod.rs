//! Test helpers: a real dmfs mount on a temporary directory, driven through the shell.
//!
//! `Mount` starts the built binary in the foreground on a fresh mount point and, when dropped
//! (also when a test fails), unmounts, waits for the daemon, kills it if it hangs, detaches a
//! mount left behind, and removes the directory.
//!
//! The ctl/ verbs (create, reload, suspend, resume, remove, status...) are `Mount` methods too,
//! in `ctl`; `snapshot` holds what the snapshot tests share.
//!
//! `DMFS_TEST_CACHE=MODE` (page-cache, direct or writeback) makes every `Mount` pass
//! `--cache MODE` (unless its own arguments name a `--cache`), so the same tests check every
//! cache mode; unset, nothing is added and the daemon's default mode runs. A test whose
//! expectations depend on the mode asks `cache_mode()`.

#![allow(dead_code)]

pub mod block_tools;
pub mod ctl;
pub mod fixture;
pub mod lvm_recording;
pub mod oracle;
pub mod snapshot;
pub mod users;

#[allow(unused_imports)] // not every test binary uses them
pub use ctl::{checked_close, remove_retrying};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const DMFS: &str = env!("CARGO_BIN_EXE_dmfs");

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh scratch directory under the system temp dir.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("dmfs-test-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn is_mounted(mnt: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let want = mnt.to_string_lossy();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(&*want))
}

/// How the daemon's dev/ files use the kernel's page cache (`dmfs mount --cache MODE`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CacheMode {
    /// Read-only opens cached, writes direct; aliases invalidated before a write returns.
    PageCache,
    /// Nothing cached (FOPEN_DIRECT_IO on every open).
    Direct,
    /// FUSE_WRITEBACK_CACHE: writes are cached too and reach the daemon at writeback, close
    /// or fsync; a write error can surface there instead of at write(2).
    Writeback,
}

impl CacheMode {
    /// The `--cache` argument.
    pub fn arg(self) -> &'static str {
        match self {
            CacheMode::PageCache => "page-cache",
            CacheMode::Direct => "direct",
            CacheMode::Writeback => "writeback",
        }
    }

    fn parse(s: &str) -> Option<CacheMode> {
        [
            CacheMode::PageCache,
            CacheMode::Direct,
            CacheMode::Writeback,
        ]
        .into_iter()
        .find(|m| m.arg() == s)
    }
}

/// The mode `$DMFS_TEST_CACHE` names, None when it is unset or empty. Any other value stops
/// the test: a typo must not quietly run the default mode again.
fn env_cache_mode() -> Option<CacheMode> {
    let v = std::env::var("DMFS_TEST_CACHE").ok()?;
    if v.is_empty() {
        return None;
    }
    Some(CacheMode::parse(&v).unwrap_or_else(|| {
        panic!("DMFS_TEST_CACHE={v:?}: expected page-cache, direct or writeback")
    }))
}

/// The cache mode the mounts of this test run use: `$DMFS_TEST_CACHE`, else the daemon's
/// default (page-cache).
pub fn cache_mode() -> CacheMode {
    env_cache_mode().unwrap_or(CacheMode::PageCache)
}

/// open(2) flags for a test that writes through dev/NAME and then checks what reached dmfs
/// (backing files, status lines, exception counts) without an fsync: O_DIRECT in writeback
/// mode, where a buffered write would reach dmfs only at writeback, fsync or close, and as
/// whole pages; none in the other modes, where a write(2) is dmfs's before it returns.
/// (cache_coherence.rs checks the buffered writeback path itself.)
pub fn write_through_flags() -> i32 {
    if cache_mode() == CacheMode::Writeback {
        libc::O_DIRECT
    } else {
        0
    }
}

/// `oflag=direct` for dd in writeback mode (see `write_through_flags`), else nothing.
pub fn dd_write_through() -> &'static str {
    if cache_mode() == CacheMode::Writeback {
        " oflag=direct"
    } else {
        ""
    }
}

/// `args` plus `--cache $DMFS_TEST_CACHE` when that is set and `args` has no `--cache`.
fn with_env_cache(args: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let has_cache = args
        .iter()
        .any(|a| *a == "--cache" || a.starts_with("--cache="));
    if let (Some(mode), false) = (env_cache_mode(), has_cache) {
        out.push("--cache".into());
        out.push(mode.arg().into());
    }
    out
}

pub struct Mount {
    /// Scratch directory holding the mount point, images and the daemon log.
    pub dir: PathBuf,
    /// The mount point.
    pub mnt: PathBuf,
    child: Option<Child>,
    /// Whether `start` adds `--cache $DMFS_TEST_CACHE`.
    env_cache: bool,
}

impl Mount {
    pub fn new() -> Mount {
        Mount::with_args(&[])
    }

    /// Mounts with extra `dmfs mount` arguments (and `--cache $DMFS_TEST_CACHE` when that is
    /// set and `args` names no `--cache`).
    pub fn with_args(args: &[&str]) -> Mount {
        Mount::mounted(args, true)
    }

    /// Mounts with exactly these `dmfs mount` arguments, whatever `$DMFS_TEST_CACHE` says: for
    /// tests of the daemon's own defaults.
    pub fn with_exact_args(args: &[&str]) -> Mount {
        Mount::mounted(args, false)
    }

    fn mounted(args: &[&str], env_cache: bool) -> Mount {
        let dir = scratch_dir("mnt");
        let mnt = dir.join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mut m = Mount {
            dir,
            mnt,
            child: None,
            env_cache,
        };
        m.start(args);
        m
    }

    /// Starts the daemon on this mount point (again, after `stop`).
    pub fn start(&mut self, args: &[&str]) {
        let log = self.dir.join("dmfs.log");
        let args = if self.env_cache {
            with_env_cache(args)
        } else {
            args.iter().map(|a| a.to_string()).collect()
        };
        let child = Command::new(DMFS)
            .arg("mount")
            .arg("-f")
            .arg(&self.mnt)
            .arg("--log-file")
            .arg(&log)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("dmfs.stderr")).unwrap())
            .spawn()
            .expect("start dmfs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.mnt.join("ctl/version").exists() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "dmfs mount {args:?} exited early ({status}); stderr:\n{}log:\n{}",
                    std::fs::read_to_string(self.dir.join("dmfs.stderr")).unwrap_or_default(),
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "dmfs mount {args:?} did not mount in time; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Unmounts and waits for the daemon to exit (kills it after 10 s).
    pub fn stop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount")
                .arg(&self.mnt)
                .stderr(Stdio::null())
                .status();
        }
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }

    /// Kills the daemon with SIGKILL, then cleans the dead mount up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// Waits up to 10 s for the daemon to exit; its exit status if it did.
    pub fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn is_mounted(&self) -> bool {
        is_mounted(&self.mnt)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dmfs.log")).unwrap_or_default()
    }

    /// bash running `script` in the scratch directory, with $MNT set to the mount point.
    fn bash(&self, script: &str) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(script)
            .current_dir(&self.dir)
            .env("MNT", &self.mnt)
            .env("DMFS", DMFS)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs a bash script in the scratch directory with $MNT set to the mount point.
    pub fn sh(&self, script: &str) -> Output {
        self.bash(script).output().expect("run bash")
    }

    /// Starts a bash script in the background (as `sh` runs one), for I/O that must be seen
    /// in flight; the caller waits for it or kills it.
    pub fn sh_spawn(&self, script: &str) -> Child {
        self.bash(script)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start bash")
    }

    /// Runs a script that must succeed; returns its stdout.
    pub fn ok(&self, script: &str) -> String {
        String::from_utf8_lossy(&self.ok_bytes(script)).into_owned()
    }

    /// `ok`, with stdout as bytes (binary output).
    pub fn ok_bytes(&self, script: &str) -> Vec<u8> {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "script failed ({}):\n{script}\nstdout:\n{}\nstderr:\n{}\nlog:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        out.stdout
    }

    /// Runs a script that must fail; returns its stderr.
    pub fn fails(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            !out.status.success(),
            "script succeeded but should have failed:\n{script}\nstdout:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// The newest line of `ctl/errors` (empty when there is none).
    pub fn last_error(&self) -> String {
        self.read("ctl/errors")
            .lines()
            .last()
            .unwrap_or_default()
            .to_string()
    }

    /// Names of the devices in dev/.
    pub fn devices(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.mnt.join("dev"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    pub fn read(&self, rel_to_mnt: &str) -> String {
        std::fs::read_to_string(self.mnt.join(rel_to_mnt)).unwrap()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Compares bytes, naming the first difference instead of printing megabytes.
pub fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    if got == want {
        return;
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    panic!(
        "{what}: {} bytes read, {} expected; first difference at byte {:?} (sector {:?})",
        got.len(),
        want.len(),
        first,
        first.map(|f| f / 512)
    );
}

/// The fixture disk pattern (fixtures/kernel/mkimg.py): in sector s of disk `index`, u64 word w
/// (little-endian) is ((index + 1) << 56) | (s << 8) | w. Every sector of every disk differs.
pub fn pattern_image(index: u64, sectors: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity((sectors * 512) as usize);
    for s in 0..sectors {
        for w in 0..64u64 {
            out.extend_from_slice(&(((index + 1) << 56) | (s << 8) | w).to_le_bytes());
        }
    }
    out
}

/// Writes a fixture-pattern image to `path`.
pub fn write_pattern_image(path: &Path, index: u64, sectors: u64) {
    std::fs::write(path, pattern_image(index, sectors)).unwrap();
}

#[path = "../../src/test_support/rng.rs"]
mod rng;
pub use rng::Rng;

/// Deterministic pseudo-random bytes (xorshift64*), different for every seed: test data that
/// differs from every pattern image and from zeros.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::seeded(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len);
    out
}
