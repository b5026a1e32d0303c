//! One activation, as `kpartx -a` followed by `vgchange -ay` does it: an image's partitions and
//! the logical volumes of the volume groups found on it and on its partitions, created through
//! the registry, all or nothing.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{lvm, partitions};
use crate::access::Caller;
use crate::backing::{Backing, DeviceResolver};
use crate::device::device_under;
use crate::device_key::DeviceKey;
use crate::error::{DmError, DmResult};
use crate::registry::{MAX_UUID_BYTES, Registry};
use crate::resolver::absolute;
use crate::table::{Table, TableBuilder};

/// What one line written into `ctl/activate` asks for: one activation of one or more images
/// (a volume group may span several; its PVs must be read together).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub read_only: bool,
    pub partitions_only: bool,
    pub paths: Vec<String>,
}

impl Request {
    /// `[--readonly] [--partitions-only] PATH...`; None for a blank line.
    pub fn parse(line: &str) -> DmResult<Option<Request>> {
        let mut request = Request {
            read_only: false,
            partitions_only: false,
            paths: Vec::new(),
        };
        let mut words = line.split_whitespace().peekable();
        if words.peek().is_none() {
            return Ok(None);
        }
        for word in words {
            match word {
                "--readonly" | "-r" if request.paths.is_empty() => request.read_only = true,
                "--partitions-only" if request.paths.is_empty() => request.partitions_only = true,
                w if w.starts_with('-') => {
                    return Err(DmError::invalid(format!(
                        "unknown option {w}: expected '[--readonly] [--partitions-only] PATH...'"
                    )));
                }
                w => request.paths.push(w.to_string()),
            }
        }
        if request.paths.is_empty() {
            return Err(DmError::invalid("no image path given"));
        }
        Ok(Some(request))
    }

    /// How `ctl/errors` names the activation.
    pub fn name(&self) -> String {
        self.paths.join(" ")
    }
}

/// A device an activation made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Made {
    pub name: String,
    /// The device's id, which `dm/NAME/info` shows as its minor.
    pub id: u64,
    pub table: Vec<String>,
    /// A partition's device (kpartx prints these); the others are LVM's.
    pub partition: bool,
}

/// What an activation did, in the words of kpartx and vgchange.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub made: Vec<Made>,
    /// LVs left out and PVs missing, with the reason.
    pub notes: Vec<String>,
    /// vgchange's line per VG.
    pub summary: Vec<String>,
}

impl Report {
    /// `add map NAME (MAJOR:MINOR): TABLE` per partition as `kpartx -a -v` prints it, then
    /// LVM's lines, indented as LVM2 indents them.
    pub fn text(&self, major: u32) -> String {
        let mut out = String::new();
        for m in self.made.iter().filter(|m| m.partition) {
            out += &format!(
                "add map {} ({major}:{}): {}\n",
                m.name,
                m.id,
                m.table.join(" ")
            );
        }
        for line in self.notes.iter().chain(&self.summary) {
            out += &format!("  {line}\n");
        }
        out
    }
}

/// One device to create.
struct Planned {
    name: String,
    uuid: Option<String>,
    read_only: bool,
    table: Vec<String>,
    partition: bool,
}

/// An image opened for reading, and its partitions.
struct Image {
    /// As the writer gave it, for messages.
    given: String,
    /// Absolute, for tables.
    reference: String,
    backing: Arc<Backing>,
    table: partitions::PartitionTable,
}

/// Runs one request written by `caller` from `cwd`; `dm_major` is the major number the mount
/// reports for its devices. On failure no device of this activation is left, and the error is
/// returned for the caller to record.
pub fn activate(
    registry: &Registry,
    caller: &Caller,
    cwd: Option<PathBuf>,
    request: &Request,
    dm_major: u32,
) -> DmResult<Report> {
    let mut images = Vec::new();
    let mut dev_dir = String::new();
    for given in &request.paths {
        let full = absolute(given, cwd.as_deref())?;
        let reference = full.to_str().map(str::to_string).ok_or_else(|| {
            DmError::invalid(format!("{given}: path is not UTF-8 (tables are text)"))
        })?;
        let (backing, mountpoint) = registry.with_resolver(cwd.clone(), false, caller, |r| {
            (r.open(&reference), r.mountpoint.clone())
        });
        let backing = backing?;
        dev_dir = format!("{}/dev", mountpoint.display());
        let table = partitions::read(&*backing, &partitions::image_stem(&full))?;
        images.push(Image {
            given: given.clone(),
            reference,
            backing,
            table,
        });
    }

    let mut planned = Vec::new();
    let mut named_by: HashMap<&str, &Image> = HashMap::new();
    for image in &images {
        let parent = parent_uuid(&image.backing, dm_major);
        for p in &image.table.partitions {
            if let Some(other) = named_by.insert(&p.name, image) {
                return Err(same_names(other, image, &p.name));
            }
            planned.push(Planned {
                name: p.name.clone(),
                uuid: parent
                    .as_ref()
                    .map(|u| format!("part{}-{u}", p.number))
                    .filter(|u| u.len() <= MAX_UUID_BYTES),
                read_only: request.read_only,
                table: vec![p.table(&image.reference)],
                partition: true,
            });
        }
    }
    let mut report = Report::default();
    if !request.partitions_only {
        let mut sources = Vec::new();
        for image in &images {
            sources.push(lvm::PvSource {
                name: image.given.clone(),
                reference: image.reference.clone(),
                device: &*image.backing,
                offset: 0,
                size: image.backing.size().bytes().0,
            });
            // A PV inside a partition is read through the image, and named in tables by the
            // partition's device, as LVM names the partition's block device.
            for p in &image.table.partitions {
                if p.kind == partitions::Kind::Extended {
                    continue;
                }
                sources.push(lvm::PvSource {
                    name: format!("{} ({})", image.given, p.name),
                    reference: format!("{dev_dir}/{}", p.name),
                    device: &*image.backing,
                    offset: p.start.bytes().0,
                    size: p.length.bytes().0,
                });
            }
        }
        let opts = lvm::Options {
            dev_dir: dev_dir.clone(),
            read_only: request.read_only,
        };
        let plan = lvm::plan(&sources, &opts)?;
        for d in plan.devices {
            planned.push(Planned {
                name: d.name,
                uuid: Some(d.uuid),
                read_only: d.read_only,
                table: d.table,
                partition: false,
            });
        }
        report.notes = plan.notes;
        report.summary = plan.summary;
    }
    if planned.is_empty() && report.summary.is_empty() {
        let what = if request.partitions_only {
            "no partition table found"
        } else {
            "no partition table and no LVM physical volume found"
        };
        return Err(DmError::invalid(what));
    }
    drop(images);
    report.made = create_all(registry, caller, cwd, &planned)?;
    Ok(report)
}

/// What kpartx puts after `part<N>-` in a partition's uuid: the uuid of the device-mapper
/// device it reads, else `devnode_MAJOR:MINOR_Wh5pYvM` (its fixed suffix) for a device of this
/// mount (major `dm_major`, its id the minor) or a block device. A regular file, which kpartx
/// reads through a loop device of its own, gives none.
fn parent_uuid(backing: &Backing, dm_major: u32) -> Option<String> {
    if let Some(device) = device_under(backing) {
        return Some(
            device
                .uuid()
                .unwrap_or_else(|| format!("devnode_{dm_major}:{}_Wh5pYvM", device.id)),
        );
    }
    match backing.key() {
        DeviceKey::Block { rdev } => Some(format!(
            "devnode_{}:{}_Wh5pYvM",
            libc::major(rdev),
            libc::minor(rdev)
        )),
        _ => None,
    }
}

/// Two images of one activation that would give a partition the same name (kpartx names them
/// after the image's file name: `a/disk.img` and `b/disk.img` both give `disk1`).
fn same_names(first: &Image, second: &Image, name: &str) -> DmError {
    if first.reference == second.reference {
        return DmError::invalid(format!("{} is given twice", second.given));
    }
    DmError::busy(format!(
        "{} and {} both name a partition {name} (the names come from the image's file name): \
         activate one of them under another name (a symbolic link)",
        first.given, second.given
    ))
}

/// Creates `planned` in order, all or nothing: every name is taken first; if a device cannot
/// be made, the ones made are removed again, newest first.
fn create_all(
    registry: &Registry,
    caller: &Caller,
    cwd: Option<PathBuf>,
    planned: &[Planned],
) -> DmResult<Vec<Made>> {
    for (i, p) in planned.iter().enumerate() {
        if let Err(e) = registry.reserve(&p.name) {
            planned[..i]
                .iter()
                .for_each(|q| registry.unreserve(&q.name));
            return Err(e);
        }
    }
    let mut made: Vec<Made> = Vec::new();
    for (i, p) in planned.iter().enumerate() {
        if let Err(e) = create_one(registry, caller, cwd.clone(), p, &mut made) {
            // The ones not made yet give their names back (a failed create keeps its own).
            planned[i..]
                .iter()
                .for_each(|q| registry.unreserve(&q.name));
            for m in made.iter().rev() {
                if let Err(undo) = registry.remove(&m.name, caller) {
                    log::warn!("activate: undoing {}: {}", m.name, undo.reason);
                }
            }
            return Err(e.context(&p.name));
        }
    }
    Ok(made)
}

fn create_one(
    registry: &Registry,
    caller: &Caller,
    cwd: Option<PathBuf>,
    p: &Planned,
    made: &mut Vec<Made>,
) -> DmResult<()> {
    let table: Table = registry.with_resolver(cwd, !p.read_only, caller, |r| {
        let mut builder = TableBuilder::new();
        for line in &p.table {
            builder.add_line(line, r, registry.origins())?;
        }
        builder.table()
    })?;
    registry.check_depth(&p.name, None, &table.devices())?;
    let owner = registry.policy.owner_for(caller);
    let device = registry.create(&p.name, table, p.read_only, owner)?;
    made.push(Made {
        name: p.name.clone(),
        id: device.id,
        table: p.table.clone(),
        partition: p.partition,
    });
    if let Some(uuid) = &p.uuid {
        // Given with the create, as LVM passes it: no event.
        device.creating.store(true, Ordering::SeqCst);
        let set = registry.set_uuid(&p.name, uuid);
        device.creating.store(false, Ordering::SeqCst);
        set?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_parse() {
        let r = Request::parse("--readonly --partitions-only a b.img")
            .unwrap()
            .unwrap();
        assert!(r.read_only && r.partitions_only && r.paths == ["a", "b.img"]);
        let r = Request::parse("  --readonly disk.img ").unwrap().unwrap();
        assert!(r.read_only && !r.partitions_only && r.paths == ["disk.img"]);
        let r = Request::parse("a --readonly").unwrap_err();
        assert_eq!(r.errno, libc::EINVAL);
        assert_eq!(Request::parse("   ").unwrap(), None);
        assert!(Request::parse("--force x").is_err());
        assert!(Request::parse("--readonly").is_err());
    }
}
