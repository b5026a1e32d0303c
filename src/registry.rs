//! All devices of a mount by name: create, remove, lookup, and the names being created.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;

use crate::access::{Caller, Policy};
use crate::backing::Backing;
use crate::changes::Changes;
use crate::device::{Device, device_under};
use crate::device_link::DeviceLink;
use crate::errlog::ErrorLog;
use crate::error::{DmError, DmResult};
use crate::mirror::{Mirror, NoMirror};
use crate::resolver::Resolver;
use crate::snapshot::Origins;
use crate::table::Table;

/// The kernel's DM_NAME_LEN is 128 bytes including the terminating NUL.
pub const MAX_NAME_BYTES: usize = 127;
/// The kernel's DM_UUID_LEN is 129 bytes including the terminating NUL.
pub const MAX_UUID_BYTES: usize = 128;
/// Most devices one mount holds.
pub const MAX_DEVICES: usize = 65_536;
/// Most devices stacked on each other, counting the top one (a device over files only is one
/// level). I/O through a stack recurses once per level on a request thread's stack: a stack of
/// 3,000 overflowed it and took the whole mount down.
pub const MAX_STACK_DEPTH: usize = 16;

#[derive(Default)]
struct Devices {
    by_name: BTreeMap<String, Arc<Device>>,
    by_id: HashMap<u64, Arc<Device>>,
    /// Names whose tables are being written: taken, but not yet visible.
    reserved: HashSet<String>,
}

pub struct Registry {
    mountpoint: Arc<Path>,
    devices: RwLock<Devices>,
    next_id: AtomicU64,
    pub errors: ErrorLog,
    /// Who owns what, and who may manage which device.
    pub policy: Policy,
    /// The mirror (`--kernel`: the kernel's device mapper; else `NoMirror`): each change below
    /// is made there first, and a refusal there leaves dmfs unchanged.
    mirror: Arc<dyn Mirror>,
    /// Where this mount's devices and files report changes to their bytes (the page-cache
    /// coherence attaches to it when the mount is made).
    pub changes: Arc<Changes>,
    /// This mount's snapshots, which its tables' targets share (and no other mount's do).
    origins: Arc<Origins>,
}

/// How long `remove` waits for the last other holder of a removed device to let go.
const REMOVE_WAIT: Duration = Duration::from_secs(5);

/// Checks a device name against the kernel's rules (non-empty, shorter than DM_NAME_LEN, no
/// '/') and what a file name needs besides (not "." or "..", no NUL).
pub fn check_name(name: &str) -> DmResult<()> {
    if name.is_empty() {
        return Err(DmError::invalid("Invalid device name: empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(DmError::invalid(format!(
            "Invalid device name: longer than {MAX_NAME_BYTES} bytes"
        )));
    }
    if name.contains('/') || name.contains('\0') || name == "." || name == ".." {
        return Err(DmError::invalid(format!("Invalid device name '{name}'")));
    }
    Ok(())
}

/// Checks a uuid: at most 128 bytes of printable, non-blank characters.
pub fn check_uuid(uuid: &str) -> DmResult<()> {
    if uuid.is_empty() || uuid.len() > MAX_UUID_BYTES {
        return Err(DmError::invalid(format!(
            "Invalid uuid: must be 1 to {MAX_UUID_BYTES} bytes"
        )));
    }
    if uuid.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(DmError::invalid(format!(
            "Invalid uuid '{uuid}': blank or control characters"
        )));
    }
    Ok(())
}

/// Refuses references that lead back to `device` (named `name`): its table would make a loop.
pub fn check_no_loop(name: &str, device: &Device, references: &[Arc<Backing>]) -> DmResult<()> {
    for b in references {
        if let Some(under) = device_under(b)
            && under.depends_on(device)
        {
            return Err(DmError::invalid(format!(
                "{}: refers back to {name}: the table would make a loop",
                b.name()
            )));
        }
    }
    Ok(())
}

/// The devices of this mount that `device`'s tables (live and inactive) map onto.
fn mapped_below(device: &Device) -> Vec<Arc<Device>> {
    let mut out: Vec<Arc<Device>> = Vec::new();
    for table in std::iter::once(device.table()).chain(device.inactive_table()) {
        for b in table.devices() {
            if let Some(d) = device_under(&b)
                && !out.iter().any(|o| o.id == d.id)
            {
                out.push(d);
            }
        }
    }
    out
}

/// Levels of the stack under and including `device` (1 over files only), remembering each
/// device's so that shared lower devices are walked once.
fn stack_depth(device: &Device, memo: &mut HashMap<u64, usize>) -> usize {
    if let Some(&d) = memo.get(&device.id) {
        return d;
    }
    let below = mapped_below(device)
        .iter()
        .map(|d| stack_depth(d, memo))
        .max()
        .unwrap_or(0);
    memo.insert(device.id, below + 1);
    below + 1
}

/// How many levels `top` stands above `target` (0 for `target` itself), if it stands on it.
fn levels_above(
    top: &Device,
    target: &Device,
    memo: &mut HashMap<u64, Option<usize>>,
) -> Option<usize> {
    if top.id == target.id {
        return Some(0);
    }
    if let Some(&d) = memo.get(&top.id) {
        return d;
    }
    let d = mapped_below(top)
        .iter()
        .filter_map(|d| levels_above(d, target, memo))
        .max()
        .map(|n| n + 1);
    memo.insert(top.id, d);
    d
}

/// The end of a device taken out of the registry (`remove`, `remove_set`). As the kernel's
/// __dm_destroy, a live device is suspended on its way out: its table may outlive this call for
/// a moment (a release still holding the device), and a snapshot it serves may be handed over to
/// a new table meanwhile. The table goes with the device: references it held to other devices
/// are released once the last reader drops its Arc. (The suspend let delay targets go of what
/// they hold back, so the flush does not wait out a delay; a `mirrored` device's I/O went
/// through the kernel, so dmfs's targets hold nothing to flush.) As __dm_destroy waits for the
/// device's holders, this waits (a little) for another holder (a release still in progress) to
/// let go: once it returns, the table and what it registered (a snapshot of its COW device) are
/// gone, and a table created next on the same COW device starts from the device, not from the
/// removed snapshot.
fn let_go(device: Arc<Device>, mirrored: bool) {
    let name = device.name();
    device.suspend();
    if !mirrored && let Err(e) = device.flush() {
        log::warn!("remove {name}: flush failed: {e}");
    }
    let dropped = device.drop_signal();
    drop(device);
    if !dropped.wait(REMOVE_WAIT) {
        log::warn!("remove {name}: the device is still referenced");
    }
    log::info!("removed {name}");
}

fn not_found(name: &str) -> DmError {
    DmError::not_found(format!("Device {name} not found"))
}

impl Registry {
    pub fn new(mountpoint: PathBuf) -> Registry {
        Registry {
            mountpoint: Arc::from(mountpoint),
            devices: RwLock::new(Devices::default()),
            next_id: AtomicU64::new(0),
            errors: ErrorLog::default(),
            policy: Policy::default(),
            mirror: Arc::new(NoMirror),
            changes: Arc::new(Changes::default()),
            origins: Arc::default(),
        }
    }

    /// This mount's snapshots, for the target constructors of its tables.
    pub fn origins(&self) -> &Arc<Origins> {
        &self.origins
    }

    /// The same registry mirroring every device into `mirror` (`--kernel`).
    pub fn with_mirror(mut self, mirror: Arc<dyn Mirror>) -> Registry {
        self.mirror = mirror;
        self
    }

    /// The same registry with another ownership policy (`--ctl-group`).
    pub fn with_policy(mut self, policy: Policy) -> Registry {
        self.policy = policy;
        self
    }

    /// EPERM unless `caller` may manage `device`: root, the daemon's user, or its creator.
    pub fn check_manager(&self, caller: &Caller, device: &Device) -> DmResult<()> {
        if self.policy.may_manage(caller, device.owner) {
            Ok(())
        } else {
            Err(self.policy.not_manager(caller, &device.name()))
        }
    }

    /// Takes `name` for a table about to be written. EBUSY if a device has it or another
    /// writer took it first, as the kernel answers for a taken name.
    pub fn reserve(&self, name: &str) -> DmResult<()> {
        check_name(name)?;
        let mut d = self.devices.write();
        if d.by_name.contains_key(name) || d.reserved.contains(name) {
            return Err(DmError::busy(format!("Device {name} already exists")));
        }
        if d.by_name.len() + d.reserved.len() >= MAX_DEVICES {
            return Err(DmError::new(
                libc::ENOSPC,
                format!("too many devices (limit {MAX_DEVICES})"),
            ));
        }
        d.reserved.insert(name.to_string());
        Ok(())
    }

    /// Gives back a name taken with `reserve` that never became a device.
    pub fn unreserve(&self, name: &str) {
        self.devices.write().reserved.remove(name);
    }

    /// Makes a device of a reserved name live with `table`, owned by `owner`.
    pub fn create(
        &self,
        name: &str,
        table: Table,
        read_only: bool,
        owner: u32,
    ) -> DmResult<Arc<Device>> {
        let mut d = self.devices.write();
        if !d.reserved.contains(name) {
            return Err(DmError::busy(format!("Device {name} already exists")));
        }
        // A create is a load and a resume: the preresume checks may refuse it (the name
        // stays reserved for the session, which gives it back).
        table.preresume_targets(&DeviceLink::default())?;
        d.reserved.remove(name);
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let mut device = Device::new(id, name.to_string(), table, self.changes.clone())
            .with_mirror(self.mirror.clone());
        device.owner = owner;
        let device = Arc::new(device);
        device.set_read_only(read_only);
        self.mirror.create(&device, read_only)?;
        device.resume_targets(&device.table());
        d.by_name.insert(name.to_string(), device.clone());
        d.by_id.insert(id, device.clone());
        drop(d);
        self.tables_changed();
        log::info!("created {name} ({} sectors)", device.size());
        Ok(device)
    }

    /// Removes a device for `caller`: refused while it is open or another device's table uses
    /// it, and to a caller that may not manage it.
    pub fn remove(&self, name: &str, caller: &Caller) -> DmResult<()> {
        // The kernel sends FUSE RELEASE after close(2) has returned: a device its user has just
        // closed may still count as open for a moment. Give such releases a short grace.
        if let Some(device) = self.get(name) {
            for _ in 0..40 {
                if !device.is_open() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        let mut d = self.devices.write();
        let device = d
            .by_name
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))?;
        self.check_manager(caller, &device)?;
        if device.in_use() {
            return Err(DmError::busy(format!(
                "Device {name} is in use by another device"
            )));
        }
        if device.is_open() {
            return Err(DmError::busy(format!("Device {name} is open")));
        }
        // A mirrored device's I/O went through the kernel: dmfs's own targets hold nothing to
        // flush (and a delay target would hold the remove for its flush delay).
        let mirrored = self.mirror.remove(&device)?;
        d.by_name.remove(name);
        d.by_id.remove(&device.id);
        drop(d);
        self.tables_changed();
        let_go(device, mirrored);
        Ok(())
    }

    /// Removes `devices` for `caller`, in the order given (holders before what they hold), all
    /// or nothing: under one hold of the device list, every one is checked first (still this
    /// mount's, `caller` may manage it, not open, held by no device or table outside the set),
    /// and only then are they removed. The checks are `remove`'s, for the set as a whole. The
    /// devices are taken, not borrowed: each removed one is waited for until its last holder
    /// lets go.
    pub fn remove_set(&self, devices: Vec<Arc<Device>>, caller: &Caller) -> DmResult<()> {
        // As `remove`: a release that follows a close(2) that has returned gets a short grace.
        for device in &devices {
            for _ in 0..40 {
                if !device.is_open() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        let mut d = self.devices.write();
        // The references the set's own tables hold, per device: any other holder (a device
        // outside the set, a table being written) makes its device busy.
        let mut held_inside: HashMap<u64, usize> = HashMap::new();
        for device in &devices {
            let tables = std::iter::once(device.table()).chain(device.inactive_table());
            let mut seen: HashSet<*const Backing> = HashSet::new();
            for table in tables {
                for entry in table.entries() {
                    for b in entry.target.devices() {
                        if seen.insert(Arc::as_ptr(&b))
                            && let Some(under) = device_under(&b)
                        {
                            *held_inside.entry(under.id).or_default() += 1;
                        }
                    }
                }
            }
        }
        for device in &devices {
            let name = device.name();
            if d.by_id
                .get(&device.id)
                .is_none_or(|o| !Arc::ptr_eq(o, device))
            {
                return Err(not_found(&name));
            }
            self.check_manager(caller, device)?;
            if device.is_open() {
                return Err(DmError::busy(format!("Device {name} is open")));
            }
            let holders = device.holders.load(Ordering::SeqCst) as usize;
            if holders > held_inside.get(&device.id).copied().unwrap_or(0) {
                return Err(DmError::busy(format!(
                    "Device {name} is in use by another device"
                )));
            }
        }
        let mut removed = Vec::new();
        let mut failed = None;
        for device in devices {
            match self.mirror.remove(&device) {
                Ok(mirrored) => {
                    let name = device.name();
                    d.by_name.remove(&name);
                    d.by_id.remove(&device.id);
                    removed.push((device, mirrored));
                }
                Err(e) => {
                    // The kernel refused: what it removed already goes in dmfs too, so both
                    // hold the same devices; the error names the one it kept.
                    failed = Some(e.context(device.name()));
                    break;
                }
            }
        }
        drop(d);
        self.tables_changed();
        // Holders first, so each one's table lets go of the next before that one is waited for.
        for (device, mirrored) in removed {
            let_go(device, mirrored);
        }
        failed.map_or(Ok(()), Err)
    }

    /// Renames a device, keeping its open files, its tables and the devices stacked on it.
    pub fn rename(&self, old: &str, new: &str, caller: &Caller) -> DmResult<()> {
        check_name(new)?;
        let mut d = self.devices.write();
        let device = d.by_name.get(old).cloned().ok_or_else(|| not_found(old))?;
        self.check_manager(caller, &device)?;
        if d.by_name.contains_key(new) || d.reserved.contains(new) {
            return Err(DmError::busy(format!(
                "Unable to change name on mapped device {old} to one that already exists: {new}"
            )));
        }
        self.mirror.rename(&device, new)?;
        d.by_name.remove(old);
        d.by_name.insert(new.to_string(), device.clone());
        device.set_name(new);
        device.event();
        log::info!("renamed {old} to {new}");
        Ok(())
    }

    /// Sets a device's uuid: once, and unique among this mount's devices, as the kernel allows.
    pub fn set_uuid(&self, name: &str, uuid: &str) -> DmResult<()> {
        check_uuid(uuid)?;
        let d = self.devices.write();
        let device = d
            .by_name
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))?;
        if let Some(old) = device.uuid() {
            return Err(DmError::invalid(format!(
                "Unable to change uuid of mapped device {name} to {uuid} because uuid is already set to {old}"
            )));
        }
        if d.by_name
            .values()
            .any(|other| other.uuid().as_deref() == Some(uuid))
        {
            return Err(DmError::busy(format!(
                "Unable to change uuid of mapped device {name} to {uuid} because uuid is already in use"
            )));
        }
        self.mirror.set_uuid(&device, uuid)?;
        device.set_uuid(uuid);
        // The kernel's rename raises an event through the live table; a uuid given with the
        // create comes before there is one.
        if !device.creating.load(Ordering::SeqCst) {
            device.event();
        }
        Ok(())
    }

    /// Loads `table` as `name`'s inactive table, refusing a table that would make a loop.
    pub fn load(&self, name: &str, device: &Arc<Device>, table: Table) -> DmResult<()> {
        if self.get(name).is_none_or(|d| !Arc::ptr_eq(&d, device)) {
            return Err(not_found(name));
        }
        check_no_loop(name, device, &table.devices())?;
        self.mirror.load(device, &table)?;
        device.load(table);
        Ok(())
    }

    /// Refuses a table for device `name` (`reloading` it, or creating it when None) whose
    /// `references` would stack devices deeper than MAX_STACK_DEPTH, counting the devices
    /// already stacked on a reloaded device.
    pub fn check_depth(
        &self,
        name: &str,
        reloading: Option<&Device>,
        references: &[Arc<Backing>],
    ) -> DmResult<()> {
        let mut memo = HashMap::new();
        let Some((deepest, below)) = references
            .iter()
            .filter_map(|b| {
                let under = device_under(b)?;
                Some((b, stack_depth(&under, &mut memo)))
            })
            .max_by_key(|&(_, depth)| depth)
        else {
            return Ok(());
        };
        let above = match reloading {
            Some(device) => {
                let mut memo = HashMap::new();
                self.list()
                    .iter()
                    .filter_map(|top| levels_above(top, device, &mut memo))
                    .max()
                    .unwrap_or(0)
            }
            None => 0,
        };
        let total = above + 1 + below;
        if total > MAX_STACK_DEPTH {
            return Err(DmError::invalid(format!(
                "{}: {name} over it would stack {total} devices (limit {MAX_STACK_DEPTH})",
                deepest.name()
            )));
        }
        Ok(())
    }

    /// Makes `table` live at once (a create session extending the table it made live).
    pub fn set_live_table(&self, device: &Device, table: Table) -> DmResult<()> {
        self.mirror.replace_live(device, &table)?;
        let size = device.size();
        device.set_table(table);
        self.tables_changed();
        if device.size() != size {
            self.changes.device_resized(device.id);
        }
        self.changes.device_replaced(device.id);
        Ok(())
    }

    /// Suspends a device: dmfs's in-flight I/O drains first (it may be I/O into the mirror's
    /// device), then the mirror's device is suspended. A suspend the mirror refuses is undone
    /// in dmfs too.
    pub fn suspend(&self, name: &str) -> DmResult<()> {
        let device = self.find(name)?;
        let was_suspended = device.is_suspended();
        device.suspend();
        self.mirror.suspend(&device).inspect_err(|_| {
            if !was_suspended {
                device.undo_suspend();
            }
        })
    }

    /// Resumes a device: the kernel's device first (it swaps in its inactive table), then
    /// dmfs's, which lets the I/O it held go into the resumed kernel device.
    pub fn resume(&self, name: &str) -> DmResult<()> {
        let device = self.find(name)?;
        if let Err(e) = self.mirror.resume(&device) {
            // The kernel dropped the table it refused and runs on its old one again: so does
            // dmfs.
            device.clear_inactive();
            let _ = device.resume();
            return Err(e);
        }
        let before = device.table();
        let result = device.resume();
        if !Arc::ptr_eq(&before, &device.table()) {
            self.tables_changed();
            if device.size() != before.len() {
                self.changes.device_resized(device.id);
            }
        }
        // Whether a new table went live or not, cached pages go: a suspend and resume is also
        // how a user makes dmfs forget what it cached of files changed behind its back.
        self.changes.device_replaced(device.id);
        result
    }

    /// Tells the page cache bookkeeping that the live tables changed.
    fn tables_changed(&self) {
        self.changes.tables_changed();
    }

    /// `dm/NAME/status`: the mirror's status while the device is mirrored, else dmfs's.
    pub fn status_text(&self, device: &Device) -> String {
        match self.mirror.status_text(device) {
            Some(Ok(text)) => text,
            Some(Err(e)) => {
                self.errors.record("status", &device.name(), &e);
                device.table().status_text()
            }
            None => device.table().status_text(),
        }
    }

    /// Removes every device's mirror (at unmount).
    pub fn mirror_teardown(&self) {
        self.mirror.remove_all(&self.list());
    }

    /// `dmsetup message`: the mirror's targets answer for a mirrored device, dmfs's otherwise.
    pub fn message(&self, device: &Device, sector: &str, words: &[&str]) -> DmResult<String> {
        self.mirror
            .message(device, sector, words)
            .unwrap_or_else(|| device.message(sector, words))
    }

    /// Makes a device read-only (`chmod a-w dev/NAME`) or writable again, in the mirror first.
    pub fn set_read_only(&self, device: &Device, read_only: bool) -> DmResult<()> {
        if device.is_read_only() != read_only {
            self.mirror.set_read_only(device, read_only)?;
            device.set_read_only(read_only);
        }
        Ok(())
    }

    /// Looks a device up, ENOENT if there is none.
    pub fn find(&self, name: &str) -> DmResult<Arc<Device>> {
        self.get(name).ok_or_else(|| not_found(name))
    }

    pub fn get(&self, name: &str) -> Option<Arc<Device>> {
        self.devices.read().by_name.get(name).cloned()
    }

    pub fn get_by_id(&self, id: u64) -> Option<Arc<Device>> {
        self.devices.read().by_id.get(&id).cloned()
    }

    /// All devices, by name.
    pub fn list(&self) -> Vec<Arc<Device>> {
        self.devices.read().by_name.values().cloned().collect()
    }

    /// Runs `f` with a resolver for references written by `caller`, whose working directory is
    /// `cwd`; backing files are opened read-write unless `writable` is false. A caller that is
    /// neither root nor the daemon's user may only name files it could open itself.
    pub fn with_resolver<T>(
        &self,
        cwd: Option<PathBuf>,
        writable: bool,
        caller: &Caller,
        f: impl FnOnce(&Resolver<'_>) -> T,
    ) -> T {
        let lookup = |name: &str| self.get(name);
        let resolver = Resolver {
            cwd,
            writable,
            mountpoint: self.mountpoint.clone(),
            lookup: &lookup,
            unprivileged: (!self.policy.is_privileged(caller)).then_some(caller),
            policy: &self.policy,
            changes: &self.changes,
        };
        f(&resolver)
    }

    /// Flushes every device as the mount ends: targets let go of held I/O first, as at a
    /// suspend, so the end of the mount never waits out a delay target's delay.
    pub fn flush_all(&self) {
        for device in self.list() {
            device.table().presuspend_targets();
            if let Err(e) = device.flush() {
                log::warn!("flush {}: {e}", device.name());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("a").is_ok());
        assert!(check_name(&"x".repeat(127)).is_ok());
        assert!(check_name(&"x".repeat(128)).is_err());
        for bad in ["", ".", "..", "a/b"] {
            assert_eq!(check_name(bad).unwrap_err().errno, libc::EINVAL, "{bad:?}");
        }
    }

    /// The devices limit counts names being created too (65,536 creates through a mount take
    /// too long for a test).
    #[test]
    fn at_most_max_devices() {
        let r = Registry::new(PathBuf::from("/nonexistent"));
        for i in 0..MAX_DEVICES {
            r.reserve(&format!("d{i}")).unwrap();
        }
        let e = r.reserve("one-more").unwrap_err();
        assert_eq!(e.errno, libc::ENOSPC);
        assert_eq!(e.reason, "too many devices (limit 65536)");
        r.unreserve("d0");
        r.reserve("one-more").unwrap();
    }

    #[test]
    fn reserve_is_exclusive() {
        let r = Registry::new(PathBuf::from("/nonexistent"));
        r.reserve("a").unwrap();
        assert_eq!(r.reserve("a").unwrap_err().errno, libc::EBUSY);
        r.unreserve("a");
        r.reserve("a").unwrap();
    }
}
