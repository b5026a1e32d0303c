//! LVM2 volume groups read as `vgchange -ay` reads them, turned into the devices and tables it
//! would create.
//!
//! Given a set of physical-volume candidates (an image, or a range of one such as a partition),
//! `plan` finds each PV label (`label`), reads every metadata area, keeps the texts whose
//! checksums hold, parses them (`config`, bounded against hostile input) into VGs (`metadata`)
//! and keeps the newest seqno of each, assembles each VG from the PVs given by uuid, and lists
//! the devices LVM2 would create for every LV it would activate, lower layers first, each with
//! its name, uuid, read-only flag and table (`tables`). It only reads: creating the devices is
//! the caller's business.

mod config;
mod label;
mod metadata;
mod tables;

use std::collections::HashMap;
use std::io;

pub use tables::{Plan, PlannedDevice};

/// An errno and a one-line reason, as the rest of dmfs reports failures.
pub type LvmError = crate::error::DmError;

/// Anything PV bytes can be read from.
pub trait ReadAt {
    /// Fills `buf` from byte `offset`; an error when the range is not all there.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl ReadAt for std::fs::File {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for crate::backing::Backing {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        // Backing reads whole sectors: read the sectors that cover the range and copy.
        let first = offset / 512;
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let sectors = end.div_ceil(512) - first;
        let mut tmp = vec![0u8; (sectors * 512) as usize];
        crate::backing::Backing::read_at(self, crate::units::Sectors(first), &mut tmp)?;
        let skip = (offset - first * 512) as usize;
        buf.copy_from_slice(&tmp[skip..skip + buf.len()]);
        Ok(())
    }
}

/// One candidate PV: a device (or a range of it, such as a partition of an image).
pub struct PvSource<'a> {
    /// How messages name it: the image's path as the user gave it.
    pub name: String,
    /// How tables name it: a path, or `MNT/dev/NAME` of a partition's device.
    pub reference: String,
    pub device: &'a dyn ReadAt,
    /// Bytes: where the candidate starts on `device`.
    pub offset: u64,
    /// Bytes: its length.
    pub size: u64,
}

/// Options of one activation.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// How a table names a device this activation creates: `{dev_dir}/{name}`.
    pub dev_dir: String,
    /// Make every device read-only (`vgchange -ay` with `--readonly`).
    pub read_only: bool,
}

/// A PV found on a source.
struct FoundPv {
    source: usize,
    label: label::PvLabel,
}

/// Whether `device` (of `size` bytes) starts with an LVM2 PV label; a damaged label counts,
/// so that activating it says what is wrong.
pub fn has_label(device: &dyn ReadAt, size: u64) -> bool {
    let src = PvSource {
        name: String::new(),
        reference: String::new(),
        device,
        offset: 0,
        size,
    };
    !matches!(label::read_label(&src), Ok(None))
}

/// Reads every source and plans the devices of every VG whose PVs are among them. Sources
/// without a PV label are no PVs and are passed over. Fails, naming the problem, on a
/// damaged or hostile label or metadata, a PV uuid on two sources, or a table LVM2 could not
/// have made; an LV that dmfs cannot build, or whose PV is missing, is only left out, with a
/// line in `Plan::notes`.
pub fn plan(sources: &[PvSource], opts: &Options) -> Result<Plan, LvmError> {
    let mut pvs: Vec<FoundPv> = Vec::new();
    let mut by_uuid: HashMap<String, usize> = HashMap::new();
    for (i, src) in sources.iter().enumerate() {
        let Some(lbl) = label::read_label(src)? else {
            continue;
        };
        if let Some(&other) = by_uuid.get(&lbl.uuid) {
            return Err(LvmError::invalid(format!(
                "PV {} is on both {} and {} (a copied image?); refusing to choose",
                dashed(&lbl.uuid),
                sources[pvs[other].source].name,
                src.name
            )));
        }
        by_uuid.insert(lbl.uuid.clone(), pvs.len());
        pvs.push(FoundPv {
            source: i,
            label: lbl,
        });
    }

    // Every intact metadata copy, parsed once per distinct text.
    let mut texts: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut vgs: Vec<metadata::Vg> = Vec::new();
    // Per PV: the damage found when none of its areas was intact (and it had some).
    let mut all_damaged: Vec<Option<String>> = Vec::new();
    for pv in &pvs {
        let src = &sources[pv.source];
        let mut damage = None;
        let mut intact = false;
        for &mda in &pv.label.metadata_areas {
            match label::read_mda(src, mda)? {
                label::MdaText::Text(t) => {
                    intact = true;
                    if texts.contains_key(&t) {
                        continue;
                    }
                    let root = config::parse(&t).map_err(|e| {
                        LvmError::invalid(format!("{}: LVM metadata: {e}", src.name))
                    })?;
                    let vg = metadata::import(&root).map_err(|e| {
                        LvmError::invalid(format!("{}: LVM metadata: {e}", src.name))
                    })?;
                    texts.insert(t, vgs.len());
                    vgs.push(vg);
                }
                label::MdaText::Ignored | label::MdaText::Empty => intact = true,
                label::MdaText::Damaged(why) => {
                    damage.get_or_insert(why);
                }
            }
        }
        all_damaged.push(if intact { None } else { damage });
    }

    // The newest copy of each VG, in the order the VGs were first met.
    let mut newest: Vec<metadata::Vg> = Vec::new();
    for vg in vgs {
        match newest.iter_mut().find(|n| n.id == vg.id) {
            Some(n) if n.seqno < vg.seqno => *n = vg,
            Some(_) => {}
            None => {
                if let Some(n) = newest.iter().find(|n| n.name == vg.name) {
                    return Err(LvmError::invalid(format!(
                        "two volume groups named {} ({} and {})",
                        vg.name,
                        dashed(&n.id),
                        dashed(&vg.id)
                    )));
                }
                newest.push(vg)
            }
        }
    }

    // A PV whose every metadata copy is damaged and that no intact copy elsewhere claims.
    for (n, pv) in pvs.iter().enumerate() {
        if let Some(why) = &all_damaged[n] {
            let claimed = newest
                .iter()
                .any(|vg| vg.pvs.iter().any(|p| p.id == pv.label.uuid));
            if !claimed {
                return Err(LvmError::invalid(format!(
                    "{}: LVM metadata damaged in every copy ({why})",
                    sources[pv.source].name
                )));
            }
        }
    }

    let mut plan = Plan::default();
    for vg in &newest {
        let present: HashMap<&str, &PvSource> = vg
            .pvs
            .iter()
            .filter_map(|p| {
                by_uuid
                    .get(&p.id)
                    .map(|&i| (p.key.as_str(), &sources[pvs[i].source]))
            })
            .collect();
        tables::plan_vg(vg, &present, opts, &mut plan)?;
    }
    Ok(plan)
}

/// A uuid as LVM2 prints it: 6-4-4-4-4-4-6.
pub fn dashed(id: &str) -> String {
    if id.len() != 32 {
        return id.to_string();
    }
    let cuts = [6, 10, 14, 18, 22, 26];
    let mut out = String::with_capacity(38);
    for (i, c) in id.chars().enumerate() {
        if cuts.contains(&i) {
            out.push('-');
        }
        out.push(c);
    }
    out
}
