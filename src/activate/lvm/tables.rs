//! From a VG to the devices `vgchange -ay` creates: which LVs it activates (visible ones,
//! not activation-skipped, of segment types dmfs has, with every PV present), in metadata
//! order, each origin followed by its snapshots, and for each the devices lower layers first,
//! named and uuid'd as LVM2's dev_manager names them, with their tables.

use std::collections::{HashMap, HashSet};

use super::metadata::{Lv, Pv, SegKind, Vg};
use super::{LvmError, Options, PvSource, dashed};

/// What an activation would create.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// In creation order: a device's table names only devices before it.
    pub devices: Vec<PlannedDevice>,
    /// One line per LV left out and per PV missing, with the reason.
    pub notes: Vec<String>,
    /// Per VG, vgchange's summary: `9 logical volume(s) in volume group "vg" now active`.
    pub summary: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedDevice {
    /// `VG-LV` with `-` doubled inside both, and `-real`/`-cow` for snapshot layers.
    pub name: String,
    /// `LVM-` + VG id + LV id (+ `-real`/`-cow`).
    pub uuid: String,
    pub read_only: bool,
    /// The table, one `start length target args` line each.
    pub table: Vec<String>,
}

/// The kernel's longest device name (DM_NAME_LEN less the NUL).
const DM_NAME_MAX: usize = 127;

fn mangle(s: &str) -> String {
    s.replace('-', "--")
}

struct VgCtx<'a> {
    vg: &'a Vg,
    present: &'a HashMap<&'a str, &'a PvSource<'a>>,
    opts: &'a Options,
    lvs: HashMap<&'a str, &'a Lv>,
    /// The VG's PVs by their key (`pv0`), which segments name.
    pvs: HashMap<&'a str, &'a Pv>,
}

impl VgCtx<'_> {
    fn name(&self, lv: &str, layer: Option<&str>) -> Result<String, LvmError> {
        let mut n = format!("{}-{}", mangle(&self.vg.name), mangle(lv));
        if let Some(l) = layer {
            n = format!("{n}-{l}");
        }
        if n.len() > DM_NAME_MAX {
            return Err(LvmError::invalid(format!(
                "{}/{lv}: device name {n} is longer than {DM_NAME_MAX} characters",
                self.vg.name
            )));
        }
        Ok(n)
    }

    fn uuid(&self, lv: &Lv, layer: Option<&str>) -> String {
        let mut u = format!("LVM-{}{}", self.vg.id, lv.id);
        if let Some(l) = layer {
            u = format!("{u}-{l}");
        }
        u
    }

    fn read_only(&self, lv: &Lv) -> bool {
        self.opts.read_only
            || !lv.has_status("WRITE")
            || !self.vg.status.iter().any(|s| s == "WRITE")
    }

    fn dev_ref(&self, name: &str) -> String {
        format!("{}/{name}", self.opts.dev_dir)
    }

    /// Why the LV cannot be activated, as a note; `None` when it can. Errors for metadata that
    /// names a PV the VG does not have.
    fn blocker(&self, lv: &Lv) -> Result<Option<String>, LvmError> {
        for seg in &lv.segments {
            match &seg.kind {
                SegKind::Unsupported(t) => {
                    return Ok(Some(format!(
                        "{}/{}: segment type {t} is not supported by dmfs; not activated",
                        self.vg.name, lv.name
                    )));
                }
                SegKind::Striped { areas, .. } => {
                    for (key, _) in areas {
                        if !self.pvs.contains_key(key.as_str()) {
                            return Err(LvmError::invalid(format!(
                                "{}/{}: a segment names {key}, which is not a PV of the VG",
                                self.vg.name, lv.name
                            )));
                        }
                        if !self.present.contains_key(key.as_str()) {
                            return Ok(Some(format!(
                                "Refusing activation of partial LV {}/{}.",
                                self.vg.name, lv.name
                            )));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(None)
    }

    /// The LV's own table: one line per segment.
    fn table(&self, lv: &Lv) -> Result<Vec<String>, LvmError> {
        let es = self.vg.extent_size;
        let mut lines = Vec::new();
        for (n, seg) in lv.segments.iter().enumerate() {
            // Both products were checked when the metadata was read.
            let start = seg.start_extent * es;
            let len = seg.extent_count * es;
            let line = match &seg.kind {
                SegKind::Zero => format!("{start} {len} zero"),
                SegKind::Error => format!("{start} {len} error"),
                SegKind::Striped { stripe_size, areas } => {
                    let per = seg.extent_count / areas.len() as u64;
                    let mut devs = Vec::new();
                    for (key, pe) in areas {
                        let pv = self.pvs[key.as_str()];
                        let src = self.present[key.as_str()];
                        let past = || {
                            LvmError::invalid(format!(
                                "{}/{}: segment {} runs past the end of PV {} ({})",
                                self.vg.name,
                                lv.name,
                                n + 1,
                                dashed(&pv.id),
                                src.name
                            ))
                        };
                        let end_pe = pe.checked_add(per).ok_or_else(past)?;
                        if end_pe > pv.pe_count {
                            return Err(past());
                        }
                        let off = pe
                            .checked_mul(es)
                            .and_then(|o| o.checked_add(pv.pe_start))
                            .ok_or_else(past)?;
                        let end = end_pe
                            .checked_mul(es)
                            .and_then(|o| o.checked_add(pv.pe_start))
                            .ok_or_else(past)?;
                        if end > src.size / 512 {
                            return Err(past());
                        }
                        devs.push(format!("{} {off}", src.reference));
                    }
                    if areas.len() == 1 {
                        format!("{start} {len} linear {}", devs[0])
                    } else {
                        format!(
                            "{start} {len} striped {} {stripe_size} {}",
                            areas.len(),
                            devs.join(" ")
                        )
                    }
                }
                SegKind::Snapshot { .. } | SegKind::Unsupported(_) => {
                    return Err(LvmError::invalid(format!(
                        "{}/{}: a snapshot segment in an LV that is not a snapshot",
                        self.vg.name, lv.name
                    )));
                }
            };
            lines.push(line);
        }
        Ok(lines)
    }
}

fn snapshot_of(lv: &Lv) -> Option<(&str, &str, u64)> {
    match lv.segments.as_slice() {
        [seg] => match &seg.kind {
            SegKind::Snapshot {
                origin,
                cow,
                chunk_size,
            } => Some((origin, cow, *chunk_size)),
            _ => None,
        },
        _ => None,
    }
}

/// Appends the devices of one VG's activatable LVs to `plan`.
pub fn plan_vg(
    vg: &Vg,
    present: &HashMap<&str, &PvSource>,
    opts: &Options,
    plan: &mut Plan,
) -> Result<(), LvmError> {
    let cx = VgCtx {
        vg,
        present,
        opts,
        lvs: vg.lvs.iter().map(|l| (l.name.as_str(), l)).collect(),
        pvs: vg.pvs.iter().map(|p| (p.key.as_str(), p)).collect(),
    };
    if vg.status.iter().any(|s| s == "EXPORTED") {
        plan.notes
            .push(format!("Volume group \"{}\" is exported", vg.name));
        return Ok(());
    }
    for pv in &vg.pvs {
        if !present.contains_key(pv.key.as_str()) {
            plan.notes.push(format!(
                "VG {} is missing PV {} (last written to {}).",
                vg.name, pv.id_text, pv.device_hint
            ));
        }
    }
    // Origin name -> its snapshot LVs, in metadata order.
    let mut snapshots: HashMap<&str, Vec<&Lv>> = HashMap::new();
    for lv in &vg.lvs {
        if let Some((origin, cow, _)) = snapshot_of(lv) {
            for name in [origin, cow] {
                match cx.lvs.get(name) {
                    Some(l) if snapshot_of(l).is_none() => {}
                    _ => {
                        return Err(LvmError::invalid(format!(
                            "{}/{}: snapshot names {name}, which is not an LV of the VG",
                            vg.name, lv.name
                        )));
                    }
                }
            }
            snapshots.entry(origin).or_default().push(lv);
        }
    }
    let mut active = 0usize;
    let mut done: HashSet<&str> = HashSet::new();
    for lv in &vg.lvs {
        if !lv.has_status("VISIBLE") || done.contains(lv.name.as_str()) {
            continue;
        }
        if let Some((origin, cow, _)) = snapshot_of(lv) {
            // Snapshots come up with their origin; one whose origin stays down stays down.
            plan.notes.push(format!(
                "{}/{cow}: not activated: its origin {}/{origin} is not active",
                vg.name, vg.name
            ));
            continue;
        }
        if lv.has_flag("ACTIVATION_SKIP") {
            plan.notes.push(format!(
                "{}/{}: skipped: it carries the activation skip flag (lvchange -ky)",
                vg.name, lv.name
            ));
            continue;
        }
        if let Some(note) = cx.blocker(lv)? {
            plan.notes.push(note);
            continue;
        }
        let table = cx.table(lv)?;
        let name = cx.name(&lv.name, None)?;
        let mut snaps = Vec::new();
        for &s in snapshots.get(lv.name.as_str()).map_or(&[][..], |v| v) {
            let (_, cow, chunk) = snapshot_of(s).unwrap();
            let cow_lv = cx.lvs[cow];
            done.insert(s.name.as_str());
            if let Some(note) = cx.blocker(cow_lv)? {
                plan.notes.push(note);
                continue;
            }
            snaps.push((s, cow_lv, chunk));
        }
        if snaps.is_empty() {
            plan.devices.push(PlannedDevice {
                name,
                uuid: cx.uuid(lv, None),
                read_only: cx.read_only(lv),
                table,
            });
            active += 1;
            continue;
        }
        // An origin with snapshots: vg-lv-real holds the LV's own table, vg-lv becomes a
        // snapshot-origin over it, and each snapshot is vg-snap over vg-lv-real and
        // vg-snap-cow, named and uuid'd after its COW LV.
        let real = cx.name(&lv.name, Some("real"))?;
        let len = lv.extents() * vg.extent_size;
        plan.devices.push(PlannedDevice {
            name: real.clone(),
            uuid: cx.uuid(lv, Some("real")),
            read_only: cx.read_only(lv),
            table,
        });
        plan.devices.push(PlannedDevice {
            name,
            uuid: cx.uuid(lv, None),
            read_only: cx.read_only(lv),
            table: vec![format!("0 {len} snapshot-origin {}", cx.dev_ref(&real))],
        });
        active += 1;
        for (s, cow_lv, chunk) in snaps {
            let cow_name = cx.name(&cow_lv.name, Some("cow"))?;
            // LVM2 keeps the COW layer writable and puts the COW LV's permission (lvcreate
            // -s -pr) on the snapshot device, as the oracle showed.
            plan.devices.push(PlannedDevice {
                name: cow_name.clone(),
                uuid: cx.uuid(cow_lv, Some("cow")),
                read_only: cx.opts.read_only,
                table: cx.table(cow_lv)?,
            });
            plan.devices.push(PlannedDevice {
                name: cx.name(&cow_lv.name, None)?,
                uuid: cx.uuid(cow_lv, None),
                read_only: cx.read_only(s) || cx.read_only(cow_lv),
                table: vec![format!(
                    "0 {len} snapshot {} {} P {chunk}",
                    cx.dev_ref(&real),
                    cx.dev_ref(&cow_name)
                )],
            });
            active += 1;
        }
    }
    plan.summary.push(format!(
        "{active} logical volume(s) in volume group \"{}\" now active",
        vg.name
    ));
    Ok(())
}
