//! The kernel oracle's VM (`run-in-kernel`), for the tests that boot it at test time.

use std::path::{Path, PathBuf};

/// The oracle to boot, or why the test is skipped: `DMFS_SKIP_KERNEL_ORACLE` set, or no
/// oracle at `$KERNEL_ORACLE` or `../shared/kernel-oracle` beside the checkout (or one level
/// further up, from a worktree).
pub fn find() -> Result<PathBuf, &'static str> {
    if std::env::var_os("DMFS_SKIP_KERNEL_ORACLE").is_some() {
        return Err("DMFS_SKIP_KERNEL_ORACLE is set");
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        std::env::var_os("KERNEL_ORACLE").map(PathBuf::from),
        Some(repo.join("../shared/kernel-oracle/run-in-kernel")),
        Some(repo.join("../../shared/kernel-oracle/run-in-kernel")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .ok_or("no kernel oracle (../shared/kernel-oracle/run-in-kernel) on this machine")
}

/// What one boot of the oracle printed.
pub struct VmRun {
    pub stdout: String,
    pub stderr: String,
    /// The oracle's exit status (125: its harness failed).
    pub code: Option<i32>,
    pub took: std::time::Duration,
}

/// Boots `oracle` once to run `script` (a file in `share`, the VM's /host) with `disks`, ended
/// after ten minutes (the oracle's own timeout ends qemu; `timeout` ends the oracle if it hangs
/// anyway: the VM emulates its CPU, and on a busy machine runs several times longer).
/// `share` is removed afterwards. Err: why the test is skipped: the harness could not run its VM
/// (exit 125: no qemu, no kernel, no boot), quickly, and before the script printed `marker`;
/// a slow failure may be a hang, and is the test's to judge.
pub fn boot(
    oracle: &Path,
    share: &Path,
    disks: &[&Path],
    script: &str,
    marker: &str,
) -> Result<VmRun, String> {
    let started = std::time::Instant::now();
    let mut cmd = std::process::Command::new("timeout");
    cmd.args(["-k", "10", "600"])
        .arg(oracle)
        .arg("--share")
        .arg(share);
    for disk in disks {
        cmd.arg("--disk").arg(disk);
    }
    let out = cmd
        .arg(share.join(script))
        .env("KERNEL_ORACLE_TIMEOUT", "570")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(share);
    let run = VmRun {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code(),
        took: started.elapsed(),
    };
    let quick = run.took < std::time::Duration::from_secs(240);
    if run.code == Some(125) && quick && !run.stdout.contains(marker) {
        return Err(format!(
            "the kernel oracle could not run its VM (exit {:?} after {:?}): {}",
            run.code,
            run.took,
            run.stderr.lines().last().unwrap_or("")
        ));
    }
    Ok(run)
}
