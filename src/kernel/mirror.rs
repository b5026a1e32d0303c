//! Mirroring dmfs devices into the kernel's device mapper.
//!
//! Each dmfs device gets a kernel device of the same name. Its table is dmfs's canonical table
//! (`dm/NAME/table`) with every device reference translated to what the kernel needs, a
//! `major:minor`: a regular file becomes a loop device bound to it (one per file, shared by every
//! table naming the file, so a `snapshot` and its `snapshot-origin` meet on the same block
//! device), a block device keeps its number, and another device of this mount (`MNT/dev/OTHER`)
//! becomes OTHER's kernel device. A COW file is bound as it is: dmfs's persistent snapshot format
//! is the kernel's.
//!
//! `Kernel` is the registry's `Mirror`: the registry calls in here before it changes its own
//! state, so a refusal from the kernel leaves both sides as they were: a table the kernel refuses
//! is never made live in dmfs either, and the error carries the kernel's reason from its log.
//! While a device is mirrored, its `dev/NAME` I/O goes through `/dev/mapper/NAME` (dmfs keeps it
//! open; `Device::mirror_io` asks for it), so writes through either path are seen through the
//! other, `dm/NAME/status` is the kernel's, and so are the answers to `ctl/message`.
//!
//! Every kernel device made is recorded (`leftovers`), so that a daemon killed without unmounting
//! leaves nothing the next mount on the same mount point does not find and remove.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};

use super::KmsgTail;
use super::ioctl::{CONTROL_PATH, Control, DM_VERSION_MAJOR, TargetLine};
use super::leftovers::{self, Journal};
use super::loopdev::Loop;
use crate::device::Device;
use crate::device_key::DeviceKey;
use crate::error::{DmError, DmResult};
use crate::mirror::Mirror;
use crate::mirror_io::MirrorIo;
use crate::secret::Zeroizing;
use crate::table::Table;

/// The kernel side of one dmfs device.
struct Mirrored {
    name: String,
    /// The kernel device's number.
    dev: u64,
    /// Loop devices the live table and the inactive table use: held until the kernel has let
    /// go of the table.
    live: Vec<Arc<Loop>>,
    inactive: Option<Vec<Arc<Loop>>>,
    /// `/dev/mapper/NAME`, when dmfs made the node (no udev to make it).
    node: Option<PathBuf>,
    read_only: bool,
}

#[derive(Default)]
struct State {
    /// By dmfs device id.
    devices: HashMap<u64, Mirrored>,
    /// Loop devices by the (st_dev, st_ino) of their file.
    loops: HashMap<(u64, u64), Weak<Loop>>,
    /// The record of the kernel devices made, for the next mount after a crash (`start`).
    journal: Option<Journal>,
}

pub struct Kernel {
    ctl: Control,
    state: Mutex<State>,
    /// `/dev/mapper/NAME`, open, by dmfs device id: where the device's I/O goes. Apart from
    /// `state` so that I/O never waits for a kernel call on another device.
    io: RwLock<HashMap<u64, Arc<File>>>,
}

fn major_minor(dev: u64) -> String {
    format!("{}:{}", libc::major(dev), libc::minor(dev))
}

/// The error for a kernel call that failed: its errno, and the kernel's own words when it
/// logged any.
fn kernel_error(what: String, err: &io::Error, tail: KmsgTail) -> DmError {
    let logged = tail.reason();
    let reason = if logged.is_empty() {
        format!("kernel device mapper: {what} failed: {err}")
    } else {
        format!("kernel device mapper: {what} failed: {err}: {logged}")
    };
    DmError::new(err.raw_os_error().unwrap_or(libc::EIO), reason)
}

/// Replaces each whole reference `from` in a target's parameters by its `to`: references are
/// the words `table_args` printed (a path may hold blanks, so whole names are matched, longest
/// first, at word boundaries).
pub fn replace_refs(params: &str, subs: &[(String, String)]) -> String {
    let mut subs: Vec<&(String, String)> = subs.iter().filter(|(f, _)| !f.is_empty()).collect();
    subs.sort_by_key(|(f, _)| std::cmp::Reverse(f.len()));
    // Room for every word to be replaced by the longest substitute: the text may hold a crypt
    // key, and a String that grows frees its old copy unwiped.
    let longest = subs.iter().map(|(_, t)| t.len()).max().unwrap_or(0);
    let mut out = String::with_capacity(params.len() + params.split(' ').count() * longest);
    let mut rest = params;
    let mut at_word_start = true;
    while !rest.is_empty() {
        if at_word_start
            && let Some((from, to)) = subs.iter().find(|(f, _)| {
                rest.strip_prefix(f.as_str())
                    .is_some_and(|after| after.is_empty() || after.starts_with(' '))
            })
        {
            out.push_str(to);
            rest = &rest[from.len()..];
            at_word_start = false;
            continue;
        }
        let c = rest.chars().next().expect("not empty");
        out.push(c);
        at_word_start = c == ' ';
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Formats kernel target lines as dmsetup prints them ("%llu %llu %s %s\n").
pub fn lines_text(lines: &[TargetLine]) -> String {
    lines
        .iter()
        .map(|l| {
            format!(
                "{} {} {} {}\n",
                l.start,
                l.length,
                l.target_type,
                l.params.as_str()
            )
        })
        .collect()
}

/// Makes `/dev/mapper/NAME` for `dev` unless it is there already (udev); returns the path if
/// dmfs made it.
fn make_node(name: &str, dev: u64) -> io::Result<Option<PathBuf>> {
    let path = Path::new("/dev/mapper").join(name);
    if let Ok(meta) = std::fs::metadata(&path)
        && meta.file_type().is_block_device()
        && meta.rdev() == dev
    {
        // udev made it (a node, or a link to ../dm-N).
        return Ok(None);
    }
    if std::fs::symlink_metadata(&path).is_ok() {
        // Never replace what is there (the control node itself, another tool's node).
        return Err(io::Error::from_raw_os_error(libc::EBUSY));
    }
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: `c` is a valid path; mknod makes a block node for the dm device.
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o600, dev) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Some(path))
}

/// BLKFLSBUF: writes back and drops a block device's cached pages.
fn flush_buffers(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    const BLKFLSBUF: libc::c_ulong = 0x1261;
    // SAFETY: BLKFLSBUF takes no argument.
    if unsafe { libc::ioctl(file.as_raw_fd(), BLKFLSBUF as _, 0) } < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn open_node(name: &str, read_only: bool) -> io::Result<File> {
    File::options()
        .read(true)
        .write(!read_only)
        .custom_flags(libc::O_CLOEXEC)
        .open(Path::new("/dev/mapper").join(name))
}

/// The kernel's `major:minor` for each device `table` names, paired with dmfs's name for it.
fn reverse_refs(state: &State, table: &Table) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for d in table.devices() {
        let kernel = match d.key() {
            // dmfs names block devices by their numbers too.
            DeviceKey::Block { .. } => continue,
            DeviceKey::Mapped { id } => state.devices.get(&id).map(|m| m.dev),
            DeviceKey::File { dev, ino } => state
                .loops
                .get(&(dev, ino))
                .and_then(Weak::upgrade)
                .map(|l| l.rdev),
        };
        if let Some(kernel) = kernel {
            out.push((major_minor(kernel), d.name()));
        }
    }
    out
}

impl Kernel {
    /// Opens the kernel's device mapper, or says in one sentence why `--kernel` cannot work.
    pub fn open() -> Result<Kernel, String> {
        let ctl = Control::open().map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => format!(
                "--kernel: this machine has no kernel device mapper ({CONTROL_PATH} is absent; load the dm-mod module), so nothing was mounted"
            ),
            _ => format!(
                "--kernel: cannot open {CONTROL_PATH}: {e} (the kernel mirror needs root), so nothing was mounted"
            ),
        })?;
        let version = ctl.version().map_err(|e| {
            format!("--kernel: the kernel device mapper refused its version check: {e}")
        })?;
        if version[0] != DM_VERSION_MAJOR {
            return Err(format!(
                "--kernel: the kernel's device-mapper interface is version {}.{}.{}; dmfs speaks {DM_VERSION_MAJOR}.x",
                version[0], version[1], version[2]
            ));
        }
        log::info!(
            "kernel: mirroring into the kernel device mapper (interface {}.{}.{})",
            version[0],
            version[1],
            version[2]
        );
        Ok(Kernel {
            ctl,
            state: Mutex::new(State::default()),
            io: RwLock::new(HashMap::new()),
        })
    }

    /// Before the mount serves: removes what daemons for `mountpoint` that died without
    /// unmounting left in the kernel, and starts this daemon's record (in `state_dir`).
    pub fn start(&self, state_dir: &Path, mountpoint: &Path) -> Result<(), String> {
        leftovers::remove_leftovers(&self.ctl, state_dir, mountpoint);
        let journal = Journal::create(state_dir, mountpoint).map_err(|e| {
            format!(
                "--kernel: cannot record the kernel devices in {}: {e}",
                state_dir.display()
            )
        })?;
        self.state.lock().journal = Some(journal);
        Ok(())
    }

    /// The mount has ended: the record goes (unless devices were left behind).
    pub fn finish(&self) {
        if let Some(j) = self.state.lock().journal.take() {
            j.finish();
        }
    }

    fn kernel_io(&self, id: u64) -> Option<Arc<File>> {
        self.io.read().get(&id).cloned()
    }

    /// The kernel's table lines for `table`, with references translated, and the loop devices
    /// they use (attached as needed).
    fn translate(
        &self,
        state: &mut State,
        table: &Table,
        read_only: bool,
    ) -> DmResult<(Vec<TargetLine>, Vec<Arc<Loop>>)> {
        let mut loops: Vec<Arc<Loop>> = Vec::new();
        let mut lines = Vec::new();
        for e in table.entries() {
            let mut subs = Vec::new();
            for d in e.target.devices() {
                let to = match d.key() {
                    DeviceKey::Block { rdev } => major_minor(rdev),
                    DeviceKey::Mapped { id } => {
                        let m = state.devices.get(&id).ok_or_else(|| {
                            DmError::invalid(format!(
                                "{}: not mirrored in the kernel device mapper",
                                d.name()
                            ))
                        })?;
                        major_minor(m.dev)
                    }
                    DeviceKey::File { dev, ino } => {
                        let shared = state.loops.get(&(dev, ino)).and_then(Weak::upgrade);
                        let lo = match shared {
                            Some(lo) => {
                                // The file may have grown or shrunk since the loop device was
                                // bound: the kernel must see the size dmfs checked the table
                                // against.
                                lo.refresh_capacity(d.size().0).map_err(|err| {
                                    DmError::io(
                                        format!(
                                            "kernel mirror: resizing loop{} to {}",
                                            lo.number,
                                            d.name()
                                        ),
                                        &err,
                                    )
                                })?;
                                lo
                            }
                            None => {
                                let path = PathBuf::from(d.name());
                                let lo = Loop::attach(&path, (dev, ino), read_only)
                                    .map(Arc::new)
                                    .map_err(|err| {
                                    DmError::io(
                                        format!(
                                            "kernel mirror: attaching a loop device to {}",
                                            path.display()
                                        ),
                                        &err,
                                    )
                                })?;
                                state.loops.insert((dev, ino), Arc::downgrade(&lo));
                                lo
                            }
                        };
                        let mm = lo.major_minor();
                        if !loops.iter().any(|l| Arc::ptr_eq(l, &lo)) {
                            loops.push(lo);
                        }
                        mm
                    }
                };
                subs.push((d.name(), to));
            }
            lines.push(TargetLine {
                start: e.start.0,
                length: e.len.0,
                target_type: e.target_type.to_string(),
                params: Zeroizing::new(replace_refs(&Zeroizing::new(e.target.table_args()), &subs)),
            });
        }
        state.loops.retain(|_, w| w.strong_count() > 0);
        Ok((lines, loops))
    }
}

impl MirrorIo for Kernel {
    fn io(&self, id: u64) -> Option<Arc<File>> {
        self.kernel_io(id)
    }
}

impl Mirror for Kernel {
    /// Mirrors a device about to be created: DM_DEV_CREATE, DM_TABLE_LOAD, resume, the
    /// `/dev/mapper/NAME` node, and dmfs's descriptor on it. On any failure the kernel device
    /// and its loop devices are gone again and the error says why.
    fn create(&self, device: &Device, read_only: bool) -> DmResult<()> {
        let name = device.name();
        let mut state = self.state.lock();
        let (lines, loops) = self.translate(&mut state, &device.table(), read_only)?;
        let tail = KmsgTail::start();
        let info = self
            .ctl
            .create(&name, None)
            .map_err(|e| kernel_error(format!("create {name}"), &e, tail))?;
        let undo = |err: DmError| {
            if let Err(e) = self.ctl.remove(&name) {
                log::error!("kernel: rollback of {name} failed: {e}");
            }
            err
        };
        let tail = KmsgTail::start();
        if let Err(e) = self.ctl.load(&name, &lines, read_only) {
            return Err(undo(kernel_error(
                format!("table load for {name}"),
                &e,
                tail,
            )));
        }
        let tail = KmsgTail::start();
        if let Err(e) = self.ctl.resume(&name) {
            return Err(undo(kernel_error(format!("resume {name}"), &e, tail)));
        }
        let node = match make_node(&name, info.dev) {
            Ok(node) => node,
            Err(e) => {
                return Err(undo(DmError::io(
                    format!("kernel mirror: /dev/mapper/{name} exists and is not the new device"),
                    &e,
                )));
            }
        };
        let io = match open_node(&name, read_only) {
            Ok(f) => f,
            Err(e) => {
                if let Some(p) = &node {
                    let _ = std::fs::remove_file(p);
                }
                return Err(undo(DmError::io(
                    format!("kernel mirror: opening /dev/mapper/{name}"),
                    &e,
                )));
            }
        };
        self.io.write().insert(device.id, Arc::new(io));
        if let Some(j) = &mut state.journal {
            j.add(&name, info.dev);
        }
        log::info!(
            "kernel: {name} is /dev/mapper/{name} ({}), {} lines, {} loop devices",
            major_minor(info.dev),
            lines.len(),
            loops.len()
        );
        state.devices.insert(
            device.id,
            Mirrored {
                name,
                dev: info.dev,
                live: loops,
                inactive: None,
                node,
                read_only,
            },
        );
        Ok(())
    }

    /// Mirrors a table load (reload): DM_TABLE_LOAD into the kernel's inactive slot. A table the
    /// kernel refuses leaves both sides' inactive tables as they were.
    fn load(&self, device: &Device, table: &Table) -> DmResult<()> {
        let mut state = self.state.lock();
        let Some((name, read_only)) = state
            .devices
            .get(&device.id)
            .map(|m| (m.name.clone(), m.read_only))
        else {
            return Ok(());
        };
        let (lines, loops) = self.translate(&mut state, table, read_only)?;
        let tail = KmsgTail::start();
        self.ctl
            .load(&name, &lines, read_only)
            .map_err(|e| kernel_error(format!("table load for {name}"), &e, tail))?;
        if let Some(m) = state.devices.get_mut(&device.id) {
            // The kernel dropped the inactive table it had: its loop devices can go.
            m.inactive = Some(loops);
        }
        Ok(())
    }

    /// Makes `table` live at once (a create session extending its table): load, suspend,
    /// resume.
    fn replace_live(&self, device: &Device, table: &Table) -> DmResult<()> {
        self.load(device, table)?;
        self.suspend(device)?;
        self.resume(device)
    }

    /// DM_DEV_SUSPEND with the suspend flag.
    fn suspend(&self, device: &Device) -> DmResult<()> {
        let state = self.state.lock();
        let Some(m) = state.devices.get(&device.id) else {
            return Ok(());
        };
        let tail = KmsgTail::start();
        self.ctl
            .suspend(&m.name)
            .map(|_| ())
            .map_err(|e| kernel_error(format!("suspend {}", m.name), &e, tail))
    }

    /// DM_DEV_SUSPEND without it: swaps in the inactive table, if any, and resumes.
    ///
    /// The kernel checks a new table's devices again at resume (`too small for target`); when
    /// it refuses the swap there, it has dropped the new table and left the device suspended on
    /// its old one. The mirror then resumes it on that old table, so I/O does not hang, and
    /// says so in the error; the registry drops dmfs's inactive table to match.
    fn resume(&self, device: &Device) -> DmResult<()> {
        let mut state = self.state.lock();
        let Some(m) = state.devices.get_mut(&device.id) else {
            return Ok(());
        };
        let tail = KmsgTail::start();
        if let Err(e) = self.ctl.resume(&m.name) {
            let err = kernel_error(format!("resume {}", m.name), &e, tail);
            if m.inactive.take().is_none() {
                return Err(err);
            }
            return Err(match self.ctl.resume(&m.name) {
                Ok(_) => DmError::new(
                    err.errno,
                    format!(
                        "{}; the new table was dropped and {} runs on its old table",
                        err.reason, m.name
                    ),
                ),
                Err(e2) => DmError::new(
                    err.errno,
                    format!(
                        "{}; resuming {} on its old table failed too ({e2}): it stays suspended",
                        err.reason, m.name
                    ),
                ),
            });
        }
        if let Some(loops) = m.inactive.take() {
            // The kernel destroyed the old live table: its loop devices can go.
            m.live = loops;
            // The kernel keeps the device's page cache across a table swap: pages read
            // through the old table would still be served. Dirty pages were written at
            // suspend; drop the clean ones so dev/NAME and /dev/mapper/NAME read the new table.
            if let Some(io) = self.kernel_io(device.id)
                && let Err(e) = flush_buffers(&io)
            {
                log::warn!("kernel: BLKFLSBUF on /dev/mapper/{}: {e}", m.name);
            }
        }
        Ok(())
    }

    /// DM_DEV_RENAME, and the `/dev/mapper` node with it.
    fn rename(&self, device: &Device, new: &str) -> DmResult<()> {
        let mut state = self.state.lock();
        let Some(m) = state.devices.get_mut(&device.id) else {
            return Ok(());
        };
        let tail = KmsgTail::start();
        self.ctl
            .rename(&m.name, new)
            .map_err(|e| kernel_error(format!("rename {} to {new}", m.name), &e, tail))?;
        if let Some(old) = &m.node {
            let to = Path::new("/dev/mapper").join(new);
            match std::fs::rename(old, &to) {
                Ok(()) => m.node = Some(to),
                Err(e) => log::warn!("kernel: renaming {}: {e}", old.display()),
            }
        }
        m.name = new.to_string();
        let dev = m.dev;
        if let Some(j) = &mut state.journal {
            j.rename(dev, new);
        }
        Ok(())
    }

    /// Sets the kernel device's uuid (DM_DEV_RENAME with DM_UUID_FLAG).
    fn set_uuid(&self, device: &Device, uuid: &str) -> DmResult<()> {
        let state = self.state.lock();
        let Some(m) = state.devices.get(&device.id) else {
            return Ok(());
        };
        let tail = KmsgTail::start();
        self.ctl
            .set_uuid(&m.name, uuid)
            .map_err(|e| kernel_error(format!("set uuid of {} to {uuid}", m.name), &e, tail))
    }

    /// DM_DEV_REMOVE: dmfs's descriptor on the device is closed first (the kernel refuses to
    /// remove an open device); if the kernel still refuses, it is opened again and the error
    /// says why. Then the node goes, and the loop devices with the last table using them.
    /// Answers whether the device was mirrored.
    fn remove(&self, device: &Device) -> DmResult<bool> {
        let mut state = self.state.lock();
        let Some(m) = state.devices.get(&device.id) else {
            return Ok(false);
        };
        let name = m.name.clone();
        let io = self.io.write().remove(&device.id);
        drop(io);
        let tail = KmsgTail::start();
        if let Err(e) = self.ctl.remove(&name) {
            let err = kernel_error(format!("remove {name}"), &e, tail);
            match open_node(&name, m.read_only) {
                Ok(f) => {
                    self.io.write().insert(device.id, Arc::new(f));
                }
                Err(e) => log::error!("kernel: reopening /dev/mapper/{name}: {e}"),
            }
            return Err(err);
        }
        let m = state.devices.remove(&device.id).expect("looked up above");
        if let Some(node) = &m.node {
            let _ = std::fs::remove_file(node);
        }
        if let Some(j) = &mut state.journal {
            j.remove(m.dev);
        }
        drop(m);
        state.loops.retain(|_, w| w.strong_count() > 0);
        log::info!("kernel: removed {name}");
        Ok(true)
    }

    /// The kernel's `dmsetup status` text for a mirrored device, with the kernel's
    /// `major:minor` references shown as dmfs shows them (the file, `MNT/dev/OTHER`).
    fn status_text(&self, device: &Device) -> Option<DmResult<String>> {
        let state = self.state.lock();
        let m = state.devices.get(&device.id)?;
        let tail = KmsgTail::start();
        let lines = match self.ctl.table_status(&m.name, false) {
            Ok(lines) => lines,
            Err(e) => {
                return Some(Err(kernel_error(format!("status of {}", m.name), &e, tail)));
            }
        };
        let table = device.table();
        let back = reverse_refs(&state, &table);
        let lines: Vec<TargetLine> = lines
            .into_iter()
            .map(|l| TargetLine {
                params: Zeroizing::new(replace_refs(&l.params, &back)),
                ..l
            })
            .collect();
        Some(Ok(lines_text(&lines)))
    }

    /// `chmod a-w dev/NAME` (or `u+w`), as `dmsetup` and `lvchange -p` change it: the live
    /// table is loaded again with (or without) the read-only flag, then the device is suspended
    /// and resumed to swap it in. Refused while the device is suspended or a reloaded table
    /// waits for its resume: the swap would resume the one, or replace the other.
    fn set_read_only(&self, device: &Device, read_only: bool) -> DmResult<()> {
        let mut state = self.state.lock();
        let Some(m) = state.devices.get(&device.id) else {
            return Ok(());
        };
        let name = m.name.clone();
        let busy = |why: &str| {
            Err(DmError::busy(format!(
                "kernel device mapper: cannot make {name} {} while {why} (the kernel takes the change with a reload and a resume)",
                if read_only { "read-only" } else { "writable" },
            )))
        };
        if m.inactive.is_some() || device.inactive_table().is_some() {
            return busy("a reloaded table waits for its resume");
        }
        if device.is_suspended() || self.ctl.info(&name).is_ok_and(|i| i.suspended()) {
            return busy("it is suspended");
        }
        let (lines, loops) = self.translate(&mut state, &device.table(), read_only)?;
        let tail = KmsgTail::start();
        self.ctl
            .load(&name, &lines, read_only)
            .map_err(|e| kernel_error(format!("table load for {name}"), &e, tail))?;
        let tail = KmsgTail::start();
        if let Err(e) = self.ctl.suspend(&name) {
            let err = kernel_error(format!("suspend {name}"), &e, tail);
            if let Err(e) = self.ctl.clear(&name) {
                log::error!("kernel: dropping the read-only table of {name} again: {e}");
            }
            return Err(err);
        }
        let tail = KmsgTail::start();
        if let Err(e) = self.ctl.resume(&name) {
            // As at a refused resume: the kernel dropped the new table; run on the old one.
            let err = kernel_error(format!("resume {name}"), &e, tail);
            if let Err(e2) = self.ctl.resume(&name) {
                log::error!("kernel: resuming {name} on its old table: {e2}");
            }
            return Err(err);
        }
        let m = state.devices.get_mut(&device.id).expect("looked up above");
        // The kernel destroyed the old table: loop devices only it used can go.
        m.live = loops;
        m.read_only = read_only;
        log::info!(
            "kernel: {name} is {} now",
            if read_only { "read-only" } else { "writable" }
        );
        Ok(())
    }

    /// `dmsetup message`: DM_TARGET_MSG to the kernel's target at `sector`. The message text
    /// stays out of errors and logs (a message may carry a key).
    fn message(&self, device: &Device, sector: &str, words: &[&str]) -> Option<DmResult<String>> {
        let state = self.state.lock();
        let m = state.devices.get(&device.id)?;
        let Some(sector) = crate::target::parse_sector_arg(sector) else {
            return Some(Err(DmError::invalid("Invalid sector")));
        };
        let tail = KmsgTail::start();
        Some(
            self.ctl
                .message(&m.name, sector.0, &Zeroizing::new(words.join(" ")))
                .map_err(|e| kernel_error(format!("message to {}", m.name), &e, tail)),
        )
    }

    /// Removes every mirrored device (unmount): devices stacked on others first, as many
    /// rounds as the stacking is deep.
    fn remove_all(&self, devices: &[Arc<Device>]) {
        let mut left: Vec<&Arc<Device>> = devices.iter().collect();
        for _ in 0..=devices.len() {
            if left.is_empty() {
                break;
            }
            let before = left.len();
            left.retain(|d| self.remove(d).is_err());
            if left.len() == before {
                break;
            }
        }
        for d in left {
            if let Err(e) = self.remove(d) {
                log::error!("kernel: {} left behind: {e}", d.name());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_replaced_as_whole_words() {
        let subs = vec![
            ("/t/a.img".to_string(), "7:0".to_string()),
            ("/t/a.img2".to_string(), "7:1".to_string()),
            ("/mnt/dev/x y".to_string(), "254:3".to_string()),
        ];
        assert_eq!(
            replace_refs("2 128 /t/a.img 0 /t/a.img2 16", &subs),
            "2 128 7:0 0 7:1 16"
        );
        assert_eq!(replace_refs("/mnt/dev/x y 8", &subs), "254:3 8");
        assert_eq!(replace_refs("/t/a.img.bak 0", &subs), "/t/a.img.bak 0");
        assert_eq!(replace_refs("/t/a.img /t/a.img2 P 8", &subs), "7:0 7:1 P 8");
    }

    #[test]
    fn dmsetup_line_format() {
        let l = vec![TargetLine {
            start: 0,
            length: 8,
            target_type: "snapshot-origin".into(),
            params: Zeroizing::default(),
        }];
        assert_eq!(lines_text(&l), "0 8 snapshot-origin \n");
    }

    #[test]
    fn without_a_device_mapper_the_mount_fails_in_one_sentence() {
        if Path::new(CONTROL_PATH).exists() {
            return;
        }
        let msg = Kernel::open().err().expect("no control node, no kernel");
        assert!(msg.contains("no kernel device mapper"), "{msg}");
        assert!(!msg.contains('\n'));
    }
}
