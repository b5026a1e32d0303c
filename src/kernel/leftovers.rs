//! What a `--kernel` daemon made in the kernel, written down as it goes, so that the next
//! `dmfs mount --kernel` on the same mount point removes it when that daemon died without
//! unmounting (`kill -9`, a crash): kernel devices outlive their process, and so do the loop
//! devices their tables hold.
//!
//! Each kernel device is recorded with what the kernel itself gave it: its number and its disk
//! sequence number (`/sys/dev/block/M:m/diskseq`), which the kernel counts up for every disk it
//! makes and never gives twice in one boot. A leftover is removed only while the kernel still
//! has a device with both, in the same boot: a device someone made since under the same name or
//! number is not dmfs's and is left alone (and logged). The mark cannot be a uuid or a name
//! prefix: the kernel device carries the dmfs device's own name (it is `/dev/mapper/NAME`) and
//! the uuid a user writes to `dm/NAME/uuid` (the kernel sets a uuid only once).
//!
//! One file per daemon, `STATE_DIR/PID.state`, rewritten whole (a new file renamed over the old
//! one) after each change, so a daemon killed at any moment leaves a complete file:
//!
//! ```text
//! dmfs-kernel-state 1
//! boot <boot id>
//! pid <pid> <start time in clock ticks after boot>
//! mount <mount point>
//! dev <major>:<minor> <diskseq> <name>
//! ```
//!
//! Paths and names are percent-encoded (blanks, control bytes, `%` and bytes above 0x7e).

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::ioctl::Control;

/// Where the daemons' records live: under /run, which starts empty at each boot, as the
/// kernel's devices do.
pub const STATE_DIR: &str = "/run/dmfs/kernel";

const MAGIC: &str = "dmfs-kernel-state 1";

fn major_minor(dev: u64) -> String {
    format!("{}:{}", libc::major(dev), libc::minor(dev))
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn parse_major_minor(s: &str) -> Option<u64> {
    let (major, minor) = s.split_once(':')?;
    Some(libc::makedev(major.parse().ok()?, minor.parse().ok()?))
}

/// This boot's id: records from another boot name devices that are gone.
fn boot_id() -> io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_string())
}

/// A live process's start time (field 22 of /proc/PID/stat); None when there is no such
/// process or it has exited (a zombie).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold anything: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// The kernel's disk sequence number of block device `dev`.
pub fn diskseq(dev: u64) -> io::Result<u64> {
    let path = format!("/sys/dev/block/{}/diskseq", major_minor(dev));
    std::fs::read_to_string(&path)?
        .trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("{path}: not a number")))
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    boot: String,
    pid: u32,
    started: u64,
    mount: PathBuf,
    /// By kernel device number: (name, diskseq).
    devices: BTreeMap<u64, (String, u64)>,
}

impl Record {
    fn text(&self) -> String {
        let mut s = format!(
            "{MAGIC}\nboot {}\npid {} {}\nmount {}\n",
            self.boot,
            self.pid,
            self.started,
            encode(&self.mount.to_string_lossy())
        );
        for (dev, (name, seq)) in &self.devices {
            s.push_str(&format!(
                "dev {} {seq} {}\n",
                major_minor(*dev),
                encode(name)
            ));
        }
        s
    }

    fn parse(text: &str) -> Option<Record> {
        let mut lines = text.lines();
        if lines.next()? != MAGIC {
            return None;
        }
        let boot = lines.next()?.strip_prefix("boot ")?.to_string();
        let (pid, started) = lines.next()?.strip_prefix("pid ")?.split_once(' ')?;
        let mount = PathBuf::from(decode(lines.next()?.strip_prefix("mount ")?)?);
        let mut devices = BTreeMap::new();
        for line in lines {
            let mut f = line.strip_prefix("dev ")?.split(' ');
            let dev = parse_major_minor(f.next()?)?;
            let seq = f.next()?.parse().ok()?;
            let name = decode(f.next()?)?;
            devices.insert(dev, (name, seq));
        }
        Some(Record {
            boot,
            pid: pid.parse().ok()?,
            started: started.parse().ok()?,
            mount,
            devices,
        })
    }
}

/// Writes `text` to `path` through a new file renamed over it: a reader (or a daemon killed
/// meanwhile) sees the old file or the new one, never half of one.
fn write_whole(path: &Path, text: &str) -> io::Result<()> {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// This daemon's record of the kernel devices it made.
pub struct Journal {
    path: PathBuf,
    record: Record,
}

impl Journal {
    /// Starts this daemon's record for `mount`, in `dir`.
    pub fn create(dir: &Path, mount: &Path) -> io::Result<Journal> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let pid = std::process::id();
        let journal = Journal {
            path: dir.join(format!("{pid}.state")),
            record: Record {
                boot: boot_id()?,
                pid,
                started: start_time(pid)
                    .ok_or_else(|| io::Error::other(format!("/proc/{pid}/stat: no start time")))?,
                mount: mount.to_path_buf(),
                devices: BTreeMap::new(),
            },
        };
        journal.save()?;
        Ok(journal)
    }

    fn save(&self) -> io::Result<()> {
        write_whole(&self.path, &self.record.text())
    }

    fn saved(&self, what: &str) {
        if let Err(e) = self.save() {
            log::error!(
                "kernel: recording {what} in {}: {e} (after a crash, the next mount would not find it)",
                self.path.display()
            );
        }
    }

    /// A kernel device made: `name`, number `dev`.
    pub fn add(&mut self, name: &str, dev: u64) {
        match diskseq(dev) {
            Ok(seq) => {
                self.record.devices.insert(dev, (name.to_string(), seq));
                self.saved(name);
            }
            Err(e) => log::error!(
                "kernel: {name} ({}) has no disk sequence number ({e}): after a crash, the next mount could not tell it is dmfs's",
                major_minor(dev)
            ),
        }
    }

    pub fn rename(&mut self, dev: u64, new: &str) {
        if let Some((name, _)) = self.record.devices.get_mut(&dev) {
            *name = new.to_string();
            self.saved(new);
        }
    }

    pub fn remove(&mut self, dev: u64) {
        if let Some((name, _)) = self.record.devices.remove(&dev) {
            self.saved(&name);
        }
    }

    /// The mount ends: the record goes, unless devices are left in the kernel (a later mount
    /// then removes them).
    pub fn finish(self) {
        if self.record.devices.is_empty() {
            let _ = std::fs::remove_file(&self.path);
        } else {
            log::warn!(
                "kernel: {} kernel devices left behind, recorded in {} for the next mount",
                self.record.devices.len(),
                self.path.display()
            );
        }
    }
}

/// The loop devices (number, file) a kernel device's table holds, from sysfs.
fn loops_under(dev: u64) -> Vec<(String, String)> {
    let dir = format!("/sys/dev/block/{}/slaves", major_minor(dev));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("loop"))
        .map(|n| {
            let file = loop_file(&n).unwrap_or_default();
            (n, file)
        })
        .collect();
    out.sort();
    out
}

/// The file a loop device is bound to; None once it is detached.
fn loop_file(loop_name: &str) -> Option<String> {
    std::fs::read_to_string(format!("/sys/block/{loop_name}/loop/backing_file"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// Removes `/dev/mapper/NAME` if it is the node of `dev` a daemon made (no udev); a link udev
/// made goes with udev.
fn remove_node(name: &str, dev: u64) {
    let path = Path::new("/dev/mapper").join(name);
    if let Ok(meta) = std::fs::symlink_metadata(&path)
        && meta.file_type().is_block_device()
        && meta.rdev() == dev
    {
        let _ = std::fs::remove_file(&path);
    }
}

/// Removes what daemons for `mount` that died without unmounting left in the kernel (records
/// in `dir` other than `own`), logging each device and loop device. Devices that cannot be
/// removed (open, or held by a device that is not dmfs's) stay recorded for the next mount.
pub fn remove_leftovers(ctl: &Control, dir: &Path, mount: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let boot = boot_id().unwrap_or_default();
    let own = format!("{}.state", std::process::id());
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "state") || entry.file_name() == *own {
            continue;
        }
        let Some(record) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| Record::parse(&t))
        else {
            log::warn!(
                "kernel: {}: not a record dmfs reads; left alone",
                path.display()
            );
            continue;
        };
        if record.boot != boot {
            // The kernel devices it names ended with that boot.
            let _ = std::fs::remove_file(&path);
            continue;
        }
        if record.mount != mount || start_time(record.pid) == Some(record.started) {
            // Another mount point's, or a daemon still serving.
            continue;
        }
        let left = remove_recorded(ctl, &record);
        let result = if left.is_empty() {
            std::fs::remove_file(&path)
        } else {
            write_whole(
                &path,
                &Record {
                    devices: left,
                    ..record
                }
                .text(),
            )
        };
        if let Err(e) = result {
            log::warn!("kernel: {}: {e}", path.display());
        }
    }
}

/// A dead daemon's device still in the kernel: its number, its name now, and the loop devices
/// (number, file) its table holds.
type Leftover = (u64, String, Vec<(String, String)>);

/// Removes the devices of a dead daemon's record that are still its own; answers those that
/// could not be removed.
fn remove_recorded(ctl: &Control, record: &Record) -> BTreeMap<u64, (String, u64)> {
    let by = format!(
        "dmfs daemon {} (mount {}, ended without unmounting)",
        record.pid,
        record.mount.display()
    );
    let kernel: BTreeMap<u64, String> = match ctl.list() {
        Ok(list) => list.into_iter().map(|(name, dev)| (dev, name)).collect(),
        Err(e) => {
            log::error!("kernel: listing the kernel's devices: {e}; leftovers of {by} stay");
            return record.devices.clone();
        }
    };
    let mut todo: Vec<Leftover> = Vec::new();
    for (&dev, (name, seq)) in &record.devices {
        match kernel.get(&dev) {
            None => log::info!(
                "kernel: leftover {name} ({}) of {by} is gone already",
                major_minor(dev)
            ),
            Some(now) if diskseq(dev).ok() != Some(*seq) => log::warn!(
                "kernel: {now} ({}) is not the {name} made by {by}: another disk sequence number; left alone",
                major_minor(dev)
            ),
            Some(now) => todo.push((dev, now.clone(), loops_under(dev))),
        }
    }
    // Devices stacked on others first: as many rounds as the stacking is deep.
    let mut failed: Vec<(u64, String, io::Error)> = Vec::new();
    let mut loops: Vec<(String, String)> = Vec::new();
    for _ in 0..=todo.len() {
        if todo.is_empty() {
            break;
        }
        let before = todo.len();
        failed.clear();
        todo.retain(|(dev, name, under)| match ctl.remove(name) {
            Ok(()) => {
                remove_node(name, *dev);
                log::info!(
                    "kernel: removed leftover {name} ({}) of {by}",
                    major_minor(*dev)
                );
                loops.extend(under.iter().cloned());
                false
            }
            Err(e) => {
                failed.push((*dev, name.clone(), e));
                true
            }
        });
        if todo.len() == before {
            break;
        }
    }
    loops.sort();
    loops.dedup();
    for (lo, file) in loops {
        match loop_file(&lo) {
            None => log::info!("kernel: {lo} ({file}), held by a leftover, detached with it"),
            Some(now) => log::warn!(
                "kernel: {lo} is still bound to {now} after its leftover devices went (something else holds it)"
            ),
        }
    }
    let mut left = BTreeMap::new();
    for (dev, name, e) in failed {
        log::error!(
            "kernel: leftover {name} ({}) of {by} could not be removed: {e}; it stays, and the next mount tries again",
            major_minor(dev)
        );
        if let Some(r) = record.devices.get(&dev) {
            left.insert(dev, r.clone());
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_odd_names() {
        let mut devices = BTreeMap::new();
        devices.insert(libc::makedev(253, 0), ("a b%c\nd".to_string(), 17));
        devices.insert(libc::makedev(253, 4), ("lin".to_string(), 9));
        let r = Record {
            boot: "b0".into(),
            pid: 42,
            started: 1234,
            mount: PathBuf::from("/tmp/my mnt"),
            devices,
        };
        let text = r.text();
        assert!(text.contains("dev 253:0 17 a%20b%25c%0ad\n"), "{text}");
        assert!(text.contains("mount /tmp/my%20mnt\n"), "{text}");
        assert_eq!(Record::parse(&text), Some(r));
        assert_eq!(Record::parse("something else\n"), None);
    }

    #[test]
    fn own_process_is_alive() {
        assert!(start_time(std::process::id()).is_some());
    }
}
