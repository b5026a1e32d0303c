//! One deactivation, as `vgchange -an` followed by `kpartx -d` does it: the devices an
//! activation made (and whatever else is stacked on them) removed through the registry,
//! holders before what they hold, all or nothing.
//!
//! An argument names, in this order of trial:
//! - with a `/` in it, an image (a file, or a device of this mount `MNT/dev/X`): every device
//!   whose table maps it, as kpartx's partitions and a PV on the whole image are mapped;
//! - a device of this mount by name;
//! - a volume group: the devices whose name reads `VG-LV` (with `--` read as `-` inside each
//!   name) and whose uuid is LVM's (`LVM-` and 64 characters, the VG's uuid first), and then
//!   every device carrying that VG uuid (the hidden `-real` and `-cow` layers of snapshots);
//! - an image, relative to the writer's directory.
//!
//! The set is then closed over holders: every device whose table maps a device of the set is
//! in it too, so nothing is left standing on a removed device.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use crate::access::Caller;
use crate::backing::{Backing, DeviceResolver};
use crate::device::{Device, device_under};
use crate::device_key::DeviceKey;
use crate::error::{DmError, DmResult};
use crate::registry::Registry;
use crate::resolver::absolute;
use crate::table::TableBuilder;

/// What one line written into `ctl/deactivate` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Open devices get a table that fails all I/O and are left; the others go.
    pub force: bool,
    pub args: Vec<String>,
}

impl Request {
    /// `[-f|--force] IMG|VG|NAME...`; None for a blank line.
    pub fn parse(line: &str) -> DmResult<Option<Request>> {
        let mut request = Request {
            force: false,
            args: Vec::new(),
        };
        let mut words = line.split_whitespace().peekable();
        if words.peek().is_none() {
            return Ok(None);
        }
        for word in words {
            match word {
                "-f" | "--force" if request.args.is_empty() => request.force = true,
                w if w.starts_with('-') => {
                    return Err(DmError::invalid(format!(
                        "unknown option {w}: expected '[-f|--force] IMG|VG|NAME...'"
                    )));
                }
                w => request.args.push(w.to_string()),
            }
        }
        if request.args.is_empty() {
            return Err(DmError::invalid("no image, volume group or device given"));
        }
        Ok(Some(request))
    }

    /// How `ctl/errors` names the deactivation.
    pub fn name(&self) -> String {
        self.args.join(" ")
    }
}

/// What a deactivation did, in the words of vgchange and kpartx.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// vgchange's line per volume group that had devices in the set: how many of its LVs are
    /// still active.
    pub summary: Vec<String>,
    /// The other devices removed, in the order they went.
    pub removed: Vec<String>,
    /// Open devices `--force` left in place, their tables replaced by `error`.
    pub kept: Vec<String>,
}

impl Report {
    /// vgchange -an's lines, indented as LVM2 indents them, then `del devmap : NAME` per
    /// device as `kpartx -d -v` prints it.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for line in &self.summary {
            out += &format!("  {line}\n");
        }
        for name in &self.removed {
            out += &format!("del devmap : {name}\n");
        }
        out
    }

    /// The failure a `--force` deactivation ends with when it left open devices.
    pub fn kept_error(&self) -> Option<DmError> {
        (!self.kept.is_empty()).then(|| {
            DmError::busy(format!(
                "{} open: its table now fails all I/O (error), not removed",
                self.kept.join(", ")
            ))
        })
    }
}

/// The volume group part of an LVM device name `VG-LV`, with `--` read as `-`: None when the
/// name has no single dash.
pub fn vg_of_name(name: &str) -> Option<String> {
    let b = name.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'-' {
            if b.get(i + 1) == Some(&b'-') {
                i += 2;
                continue;
            }
            return (i > 0).then(|| name[..i].replace("--", "-"));
        }
        i += 1;
    }
    None
}

/// LVM's uuid of a device: `LVM-` + VG uuid (32) + LV uuid (32) [+ `-real`, `-cow`...].
/// Returns the VG uuid and whether the device is an LV itself (no suffix).
fn lvm_uuid(uuid: &str) -> Option<(&str, bool)> {
    let rest = uuid.strip_prefix("LVM-")?;
    if rest.len() < 64 || !rest.is_char_boundary(32) || !rest.is_char_boundary(64) {
        return None;
    }
    Some((&rest[..32], rest.len() == 64))
}

/// The ids of the devices of this mount that `device`'s tables (live and inactive) map.
fn maps_onto(device: &Device) -> Vec<u64> {
    let tables = std::iter::once(device.table()).chain(device.inactive_table());
    tables
        .flat_map(|t| t.devices())
        .filter_map(|b| device_under(&b).map(|d| d.id))
        .collect()
}

/// Whether `device`'s tables map the file or device `key`.
fn maps_key(device: &Device, key: DeviceKey) -> bool {
    let tables = std::iter::once(device.table()).chain(device.inactive_table());
    tables.flat_map(|t| t.devices()).any(|b| b.key() == key)
}

/// The devices present when the deactivation began, by id, with what each maps onto.
struct Devices {
    by_id: BTreeMap<u64, Arc<Device>>,
    below: HashMap<u64, Vec<u64>>,
}

impl Devices {
    /// The devices of volume group `vg`: found by their names, then all that carry the uuid
    /// of a VG of that name.
    fn find_vg(&self, vg: &str) -> Vec<u64> {
        let vg_uuids: HashSet<String> = self
            .by_id
            .values()
            .filter(|d| vg_of_name(&d.name()).as_deref() == Some(vg))
            .filter_map(|d| Some(lvm_uuid(&d.uuid()?)?.0.to_string()))
            .collect();
        self.by_id
            .values()
            .filter(|d| {
                d.uuid()
                    .as_deref()
                    .and_then(lvm_uuid)
                    .is_some_and(|(u, _)| vg_uuids.contains(u))
            })
            .map(|d| d.id)
            .collect()
    }
}

/// Runs one request written by `caller` from `cwd`. Without `force`, an open device in the set
/// fails it with EBUSY before anything is removed.
pub fn deactivate(
    registry: &Registry,
    caller: &Caller,
    cwd: Option<PathBuf>,
    request: &Request,
) -> DmResult<Report> {
    let list = registry.list();
    let devices = Devices {
        below: list.iter().map(|d| (d.id, maps_onto(d))).collect(),
        by_id: list.into_iter().map(|d| (d.id, d)).collect(),
    };
    let mut set: HashSet<u64> = HashSet::new();
    for arg in &request.args {
        set.extend(roots(registry, caller, cwd.clone(), &devices, arg)?);
    }
    // Closed over holders.
    loop {
        let more: Vec<u64> = devices
            .below
            .iter()
            .filter(|(id, below)| !set.contains(id) && below.iter().any(|b| set.contains(b)))
            .map(|(id, _)| *id)
            .collect();
        if more.is_empty() {
            break;
        }
        set.extend(more);
    }
    // Holders first; among the devices free to go, the oldest first (kpartx removes the
    // partitions in their order).
    let below_in_set = |id: &u64| -> HashSet<u64> {
        devices.below[id]
            .iter()
            .copied()
            .filter(|b| set.contains(b) && b != id)
            .collect()
    };
    let mut holders_left: HashMap<u64, usize> = set.iter().map(|&id| (id, 0)).collect();
    for id in &set {
        for b in below_in_set(id) {
            *holders_left.entry(b).or_default() += 1;
        }
    }
    let mut ready: BTreeSet<u64> = holders_left
        .iter()
        .filter(|&(_, &n)| n == 0)
        .map(|(&id, _)| id)
        .collect();
    let mut order: Vec<u64> = Vec::new();
    while let Some(id) = ready.pop_first() {
        order.push(id);
        for b in below_in_set(&id) {
            let n = holders_left.get_mut(&b).expect("a member");
            *n -= 1;
            if *n == 0 {
                ready.insert(b);
            }
        }
    }
    if order.len() != set.len() {
        return Err(DmError::invalid("the devices map each other in a loop"));
    }
    let mut members: Vec<Arc<Device>> = order.iter().map(|id| devices.by_id[id].clone()).collect();
    drop(devices);
    for d in &members {
        registry.check_manager(caller, d)?;
    }

    // vgchange's line per volume group: its name from its LVs' device names.
    let mut vgs: Vec<(String, String)> = Vec::new();
    for d in &members {
        let Some(uuid) = d.uuid() else { continue };
        if let (Some((vg_uuid, true)), Some(vg)) = (lvm_uuid(&uuid), vg_of_name(&d.name()))
            && !vgs.iter().any(|(u, _)| u == vg_uuid)
        {
            vgs.push((vg_uuid.to_string(), vg));
        }
    }
    let mut report = Report::default();
    if request.force {
        wait_for_releases(&members);
        // Decided once: a device opened after this is refused by remove_set, as without force.
        let (open, closed): (Vec<_>, Vec<_>) = members.into_iter().partition(|d| d.is_open());
        for d in &open {
            fail_all_io(registry, caller, d)?;
            report.kept.push(d.name());
        }
        members = closed;
    }
    let removed: Vec<(String, bool)> = members
        .iter()
        .map(|d| {
            let lvm = d.uuid().as_deref().and_then(lvm_uuid).is_some();
            (d.name(), lvm)
        })
        .collect();
    registry.remove_set(members, caller)?;
    report.removed = removed
        .into_iter()
        .filter(|(_, lvm)| !lvm)
        .map(|(n, _)| n)
        .collect();
    for (vg_uuid, vg) in vgs {
        let active = registry
            .list()
            .iter()
            .filter(|d| {
                d.uuid()
                    .as_deref()
                    .and_then(lvm_uuid)
                    .is_some_and(|(u, lv)| lv && u == vg_uuid)
            })
            .count();
        report.summary.push(format!(
            "{active} logical volume(s) in volume group \"{vg}\" now active"
        ));
    }
    Ok(report)
}

/// The devices one argument names (see the module's comment).
fn roots(
    registry: &Registry,
    caller: &Caller,
    cwd: Option<PathBuf>,
    devices: &Devices,
    arg: &str,
) -> DmResult<Vec<u64>> {
    let mapping = |key: DeviceKey| -> Vec<u64> {
        devices
            .by_id
            .values()
            .filter(|d| maps_key(d, key))
            .map(|d| d.id)
            .collect()
    };
    if !arg.contains('/') {
        if let Some(d) = devices.by_id.values().find(|d| d.name() == arg) {
            return Ok(vec![d.id]);
        }
        let vg = devices.find_vg(arg);
        if !vg.is_empty() {
            return Ok(vg);
        }
        let in_cwd = absolute(arg, cwd.as_deref()).ok();
        if !in_cwd.is_some_and(|p| p.exists()) {
            return Err(DmError::not_found(format!(
                "{arg}: no device, volume group or image of that name"
            )));
        }
    }
    Ok(mapping(image_key(registry, caller, cwd, arg)?))
}

/// Which file or device an image path names, opened read-only with the writer's rights.
fn image_key(
    registry: &Registry,
    caller: &Caller,
    cwd: Option<PathBuf>,
    arg: &str,
) -> DmResult<DeviceKey> {
    let full = absolute(arg, cwd.as_deref())?;
    let reference = full
        .to_str()
        .ok_or_else(|| DmError::invalid(format!("{arg}: path is not UTF-8")))?
        .to_string();
    let backing: DmResult<Arc<Backing>> =
        registry.with_resolver(cwd, false, caller, |r| r.open(&reference));
    // The resolver's error names the path already.
    Ok(backing?.key())
}

/// As `Registry::remove`: a release that follows a close(2) that has returned gets a short
/// grace before the device counts as open.
fn wait_for_releases(devices: &[Arc<Device>]) {
    for d in devices {
        for _ in 0..40 {
            if !d.is_open() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// `dmsetup remove --force` on an open device: its table replaced by one that fails all I/O,
/// which also lets go of what it mapped.
fn fail_all_io(registry: &Registry, caller: &Caller, device: &Arc<Device>) -> DmResult<()> {
    let name = device.name();
    let line = format!("0 {} error", device.size().0);
    let table = registry.with_resolver(None, false, caller, |r| {
        let mut builder = TableBuilder::new();
        builder.add_line(&line, r, registry.origins())?;
        builder.table()
    })?;
    registry.load(&name, device, table)?;
    registry.resume(&name).map_err(|e| e.context(&name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_parse() {
        let r = Request::parse("-f disk.img vg").unwrap().unwrap();
        assert!(r.force && r.args == ["disk.img", "vg"]);
        let r = Request::parse(" --force x ").unwrap().unwrap();
        assert!(r.force && r.args == ["x"]);
        assert!(!Request::parse("x").unwrap().unwrap().force);
        assert_eq!(Request::parse("x -f").unwrap_err().errno, libc::EINVAL);
        assert_eq!(Request::parse("  ").unwrap(), None);
        assert!(Request::parse("-f").is_err());
        assert!(Request::parse("--readonly x").is_err());
    }

    #[test]
    fn volume_group_of_a_device_name() {
        assert_eq!(vg_of_name("vg-lin").as_deref(), Some("vg"));
        assert_eq!(vg_of_name("v--g-l--v").as_deref(), Some("v-g"));
        assert_eq!(vg_of_name("vg-lin-real").as_deref(), Some("vg"));
        assert_eq!(vg_of_name("a--b--c-d").as_deref(), Some("a-b-c"));
        assert_eq!(vg_of_name("disk1"), None);
        assert_eq!(vg_of_name("v--g"), None);
        assert_eq!(vg_of_name("-x"), None);
    }

    #[test]
    fn lvm_uuids() {
        let vg = "a".repeat(32);
        let lv = "b".repeat(32);
        assert_eq!(lvm_uuid(&format!("LVM-{vg}{lv}")), Some((&vg[..], true)));
        assert_eq!(
            lvm_uuid(&format!("LVM-{vg}{lv}-real")),
            Some((&vg[..], false))
        );
        assert_eq!(lvm_uuid("part1-DISK"), None);
        assert_eq!(lvm_uuid("LVM-short"), None);
    }
}
