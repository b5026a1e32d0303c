//! Other users, for tests that run as root and act as others with setpriv: uid 65534
//! (nobody) and uid 4242, members of group 100 (`users`) or of no group.

/// nobody, in no group but its own.
pub const NOBODY: &str = "setpriv --reuid=65534 --regid=65534 --clear-groups";
/// nobody, also in group 100, the ctl group of the mounts that give one.
pub const MEMBER: &str = "setpriv --reuid=65534 --regid=65534 --groups=100";
/// Another member of group 100.
pub const OTHER_MEMBER: &str = "setpriv --reuid=4242 --regid=4242 --groups=100";

/// `script` run by bash as `who` (a setpriv prefix), in the mount's scratch directory.
pub fn as_user(who: &str, script: &str) -> String {
    format!("{who} bash -c '{}'", script.replace('\'', r"'\''"))
}
