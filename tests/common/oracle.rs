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
