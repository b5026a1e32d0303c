//! Turns the device references of a table line into opened `Backing`s the way a shell user
//! expects, with the writer's rights: absolute and relative paths, `major:minor`, and this
//! mount's own devices as `MNT/dev/NAME`.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::access::{self, Caller, Policy};
use crate::backing::{Backing, DeviceResolver};
use crate::changes::Changes;
use crate::device::Device;
use crate::error::{DmError, DmResult};

/// Resolves references the way a shell user expects: absolute paths, paths relative to the
/// writing process's working directory, `major:minor`, and `MNT/dev/NAME` for this mount's own
/// devices (recognised by path, never opened through FUSE).
pub struct Resolver<'a> {
    pub cwd: Option<PathBuf>,
    /// Open files and block devices read-write (false for a read-only device).
    pub writable: bool,
    pub mountpoint: Arc<Path>,
    pub lookup: &'a dyn Fn(&str) -> Option<Arc<Device>>,
    /// The writer of the table, when it is neither root nor the daemon's user: every reference
    /// must then be one it could open itself with the access the device needs.
    pub unprivileged: Option<&'a Caller>,
    pub policy: &'a Policy,
    /// The mount's changes, which writes to the files opened here report to.
    pub changes: &'a Arc<Changes>,
}

impl Resolver<'_> {
    /// Opens a file or block device by path, checking the writer's rights first if it must.
    /// Only a regular file or a block device is ever opened: a FIFO would block the request
    /// thread, a character device could act on being opened.
    fn open_file(&self, reference: &str, path: &Path) -> DmResult<Arc<Backing>> {
        let (pinned, meta) = access::pin(path)?;
        if let Some(caller) = self.unprivileged {
            access::check_pinned(caller, reference, &pinned, &meta, self.writable)?;
        }
        let opened = access::reopen_path(&pinned);
        Backing::open_path_as(&opened, path, self.writable, self.changes.clone()).map(Arc::new)
    }
}

/// Resolves `.` and `..` without touching the filesystem (a path into this mount must not be
/// looked up through it).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// The absolute, normalized path a reference names, relative paths taken against the writer's
/// working directory `cwd` (as a shell user expects of tables and of `ctl/activate`).
pub fn absolute(reference: &str, cwd: Option<&Path>) -> DmResult<PathBuf> {
    let path = Path::new(reference);
    if path.is_absolute() {
        return Ok(normalize(path));
    }
    let cwd = cwd.ok_or_else(|| {
        DmError::invalid(format!(
            "{reference}: relative path, but the writer's directory is unknown"
        ))
    })?;
    Ok(normalize(&cwd.join(path)))
}

/// `M:m` as a pair of numbers, if the reference has that shape.
fn parse_major_minor(reference: &str) -> Option<(u32, u32)> {
    let (maj, min) = reference.split_once(':')?;
    if maj.is_empty()
        || min.is_empty()
        || !(maj.bytes().chain(min.bytes()).all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    Some((maj.parse().ok()?, min.parse().ok()?))
}

/// The /dev node of a block device number, from sysfs.
fn block_device_path(major: u32, minor: u32) -> DmResult<PathBuf> {
    let uevent = format!("/sys/dev/block/{major}:{minor}/uevent");
    let text = std::fs::read_to_string(&uevent)
        .map_err(|_| DmError::not_found(format!("{major}:{minor}: no such block device")))?;
    text.lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map(|n| Path::new("/dev").join(n))
        .ok_or_else(|| DmError::not_found(format!("{major}:{minor}: no device node")))
}

impl DeviceResolver for Resolver<'_> {
    fn open(&self, reference: &str) -> DmResult<Arc<Backing>> {
        if let Some((major, minor)) = parse_major_minor(reference) {
            return self.open_file(reference, &block_device_path(major, minor)?);
        }
        let full = absolute(reference, self.cwd.as_deref())?;
        if let Ok(inside) = full.strip_prefix(&*self.mountpoint) {
            let mut parts = inside.components();
            return match (parts.next(), parts.next(), parts.next()) {
                (Some(Component::Normal(d)), Some(Component::Normal(name)), None) if d == "dev" => {
                    let name = name.to_string_lossy();
                    let device = (self.lookup)(&name).ok_or_else(|| {
                        DmError::not_found(format!("{reference}: no such device"))
                    })?;
                    if let Some(caller) = self.unprivileged {
                        self.policy.check_mapped(
                            caller,
                            reference,
                            device.owner,
                            device.is_read_only(),
                            self.writable,
                        )?;
                    }
                    Ok(Arc::new(Backing::mapped(device, self.mountpoint.clone())))
                }
                _ => Err(DmError::invalid(format!(
                    "{reference}: not a device (devices of this mount are {}/dev/NAME)",
                    self.mountpoint.display()
                ))),
            };
        }
        self.open_file(reference, &full)
    }

    fn open_for_target_writes(&self, reference: &str) -> DmResult<Arc<Backing>> {
        if !self.writable {
            let writable = Resolver {
                cwd: self.cwd.clone(),
                writable: true,
                mountpoint: self.mountpoint.clone(),
                lookup: self.lookup,
                unprivileged: self.unprivileged,
                policy: self.policy,
                changes: self.changes,
            };
            match writable.open(reference) {
                Err(e) if matches!(e.errno, libc::EACCES | libc::EPERM | libc::EROFS) => {}
                opened => return opened,
            }
        }
        self.open(reference)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
        assert_eq!(normalize(Path::new("/../x")), PathBuf::from("/x"));
    }

    #[test]
    fn major_minor_shape() {
        assert_eq!(parse_major_minor("8:0"), Some((8, 0)));
        assert_eq!(parse_major_minor("254:16"), Some((254, 16)));
        assert_eq!(parse_major_minor("a:0"), None);
        assert_eq!(parse_major_minor("8:"), None);
        assert_eq!(parse_major_minor("/x:y"), None);
    }
}
