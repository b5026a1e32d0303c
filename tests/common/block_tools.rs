//! What tests that read a filesystem through a dmfs device share: loop devices and mounts
//! that are undone on drop (also when a test fails), file hashes, and running a command.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs `cmd` with no standard input; whether it succeeded, and its stdout and stderr.
pub fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A loop device over a file (its /dev path), detached on drop.
pub struct Loop(pub String);

impl Loop {
    pub fn attach(file: &Path, read_only: bool) -> Loop {
        let mut cmd = Command::new("losetup");
        if read_only {
            cmd.arg("-r");
        }
        let (ok, out) = run(cmd.arg("-f").arg("--show").arg(file));
        assert!(ok, "losetup {}: {out}", file.display());
        Loop(out.trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// A filesystem mounted on a directory (the path), unmounted on drop.
pub struct Mounted(pub PathBuf);

impl Mounted {
    pub fn mount(dev: &str, dir: PathBuf, read_only: bool) -> Mounted {
        std::fs::create_dir_all(&dir).unwrap();
        let opts = if read_only { "ro" } else { "rw" };
        let (ok, out) = run(Command::new("mount")
            .args(["-t", "ext4", "-o", opts, dev])
            .arg(&dir));
        assert!(ok, "mount {dev}: {out}");
        Mounted(dir)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// `sha256sum` lines of `files` under `dir`, as sha256sum prints them there.
pub fn hashes(dir: &Path, files: &[&str]) -> String {
    let (ok, out) = run(Command::new("sha256sum").args(files).current_dir(dir));
    assert!(ok, "sha256sum: {out}");
    out
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
