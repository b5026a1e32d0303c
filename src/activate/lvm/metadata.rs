//! The text metadata's meaning, as LVM2's lib/format_text/import_vsn1.c reads it: the VG (id,
//! seqno, extent size, status), its PVs (id, pe_start, pe_count) and its LVs (id, status,
//! flags, segments). Every number is range-checked and every sum checked: a hostile text is
//! refused with the name of what is wrong, never wrapped.

use super::config::{Scalar, Section, Value};

#[derive(Debug, Clone)]
pub struct Vg {
    pub name: String,
    /// 32 characters, dashes removed.
    pub id: String,
    pub seqno: u64,
    /// Sectors.
    pub extent_size: u64,
    pub status: Vec<String>,
    pub pvs: Vec<Pv>,
    pub lvs: Vec<Lv>,
}

#[derive(Debug, Clone)]
pub struct Pv {
    /// The key in `physical_volumes` (`pv0`), which segments name.
    pub key: String,
    pub id: String,
    /// The id as LVM2 prints it, with dashes.
    pub id_text: String,
    /// Where LVM2 last saw it (`device = "/dev/vde"`), for messages.
    pub device_hint: String,
    /// Sectors.
    pub pe_start: u64,
    pub pe_count: u64,
}

#[derive(Debug, Clone)]
pub struct Lv {
    pub name: String,
    pub id: String,
    pub status: Vec<String>,
    pub flags: Vec<String>,
    pub segments: Vec<Segment>,
}

impl Lv {
    pub fn has_status(&self, s: &str) -> bool {
        self.status.iter().any(|x| x == s)
    }
    pub fn has_flag(&self, s: &str) -> bool {
        self.flags.iter().any(|x| x == s) || self.has_status(s)
    }
    /// Extents.
    pub fn extents(&self) -> u64 {
        self.segments
            .last()
            .map_or(0, |s| s.start_extent + s.extent_count)
    }
}

#[derive(Debug, Clone)]
pub struct Segment {
    pub start_extent: u64,
    pub extent_count: u64,
    pub kind: SegKind,
}

#[derive(Debug, Clone)]
pub enum SegKind {
    /// `striped` (linear is one stripe): stripe size in sectors, and (PV key, first extent).
    Striped {
        stripe_size: u64,
        areas: Vec<(String, u64)>,
    },
    Zero,
    Error,
    /// An old-style snapshot: the hidden LV's segment naming origin and COW LVs.
    Snapshot {
        origin: String,
        cow: String,
        chunk_size: u64,
    },
    /// Anything dmfs cannot build yet, by its type name.
    Unsupported(String),
}

/// A VG name or LV name as LVM2 allows it (lib/misc/lvm-string.c: letters, digits, `+_.-`,
/// not starting with `-`, not `.` or `..`), so it can stand in a device name and a path.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 127
        && !s.starts_with('-')
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'_' | b'.' | b'-'))
}

struct Ctx<'a> {
    /// Where in the metadata we are, for the reason: `vg/logical_volumes/lin/segment1`.
    path: String,
    sec: &'a Section,
}

type R<T> = Result<T, String>;

impl<'a> Ctx<'a> {
    fn err<T>(&self, what: impl std::fmt::Display) -> R<T> {
        Err(format!("{}: {what}", self.path))
    }

    fn child(&self, key: &str) -> R<Ctx<'a>> {
        match self.sec.get(key) {
            Some(Value::Section(s)) => Ok(Ctx {
                path: format!("{}/{key}", self.path),
                sec: s,
            }),
            Some(_) => self.err(format!("{key} is not a section")),
            None => self.err(format!("no {key} section")),
        }
    }

    fn str(&self, key: &str) -> R<&'a str> {
        match self.sec.get(key) {
            Some(Value::Scalar(Scalar::Str(s))) => Ok(s),
            Some(_) => self.err(format!("{key} is not a string")),
            None => self.err(format!("no {key}")),
        }
    }

    fn uint(&self, key: &str) -> R<u64> {
        match self.sec.get(key) {
            Some(Value::Scalar(Scalar::Int(n))) if *n >= 0 => Ok(*n as u64),
            Some(Value::Scalar(Scalar::Int(n))) => self.err(format!("{key} = {n} is negative")),
            Some(_) => self.err(format!("{key} is not an integer")),
            None => self.err(format!("no {key}")),
        }
    }

    fn strings(&self, key: &str) -> R<Vec<String>> {
        match self.sec.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| match i {
                    Scalar::Str(s) => Ok(s.clone()),
                    _ => self.err(format!("{key} holds a value that is not a string")),
                })
                .collect(),
            Some(_) => self.err(format!("{key} is not an array")),
        }
    }

    fn id(&self) -> R<(String, String)> {
        let text = self.str("id")?;
        let id: String = text.chars().filter(|&c| c != '-').collect();
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return self.err(format!("id {text:?} is not 32 letters and digits"));
        }
        Ok((id, text.to_string()))
    }

    fn sections(&self) -> impl Iterator<Item = (&'a String, Ctx<'a>)> + '_ {
        self.sec.entries.iter().filter_map(|(k, v)| match v {
            Value::Section(s) => Some((
                k,
                Ctx {
                    path: format!("{}/{k}", self.path),
                    sec: s,
                },
            )),
            _ => None,
        })
    }
}

/// Reads a VG from a parsed metadata text.
pub fn import(root: &Section) -> R<Vg> {
    let top = Ctx {
        path: String::new(),
        sec: root,
    };
    if top.str("contents").ok() != Some("Text Format Volume Group")
        || top.uint("version").ok() != Some(1)
    {
        return Err("not LVM2 text metadata version 1 (contents/version)".to_string());
    }
    // The VG is the one section at the top level.
    let mut vgs = top.sections();
    let (name, vg) = vgs.next().ok_or("no volume group section")?;
    if vgs.next().is_some() {
        return Err("more than one volume group section".to_string());
    }
    let vg = Ctx {
        path: name.clone(),
        sec: vg.sec,
    };
    if !valid_name(name) {
        return vg.err("invalid volume group name");
    }
    let (id, _) = vg.id()?;
    let extent_size = vg.uint("extent_size")?;
    if extent_size == 0 || extent_size > 1 << 32 {
        return vg.err(format!("extent_size = {extent_size} out of range"));
    }
    let mut pvs = Vec::new();
    for (key, pv) in vg.child("physical_volumes")?.sections() {
        let (pid, id_text) = pv.id()?;
        pvs.push(Pv {
            key: key.clone(),
            id: pid,
            id_text,
            device_hint: pv.str("device").unwrap_or("").to_string(),
            pe_start: pv.uint("pe_start")?,
            pe_count: pv.uint("pe_count")?,
        });
    }
    let mut lvs = Vec::new();
    if vg.sec.get("logical_volumes").is_some() {
        for (lname, lv) in vg.child("logical_volumes")?.sections() {
            if !valid_name(lname) {
                return lv.err("invalid logical volume name");
            }
            let (lid, _) = lv.id()?;
            let count = lv.uint("segment_count")?;
            let mut segments = Vec::new();
            let mut next = 0u64;
            for n in 1..=count {
                let seg = lv.child(&format!("segment{n}"))?;
                let start = seg.uint("start_extent")?;
                let len = seg.uint("extent_count")?;
                if start != next || len == 0 {
                    return seg.err("segments are not contiguous");
                }
                next = start
                    .checked_add(len)
                    .filter(|&e| e.checked_mul(extent_size).is_some())
                    .ok_or_else(|| format!("{}: extent_count = {len} out of range", seg.path))?;
                segments.push(Segment {
                    start_extent: start,
                    extent_count: len,
                    kind: seg_kind(&seg, len)?,
                });
            }
            lvs.push(Lv {
                name: lname.clone(),
                id: lid,
                status: lv.strings("status")?,
                flags: lv.strings("flags")?,
                segments,
            });
        }
    }
    Ok(Vg {
        name: name.clone(),
        id,
        seqno: vg.uint("seqno")?,
        extent_size,
        status: vg.strings("status")?,
        pvs,
        lvs,
    })
}

fn seg_kind(seg: &Ctx, extents: u64) -> R<SegKind> {
    Ok(match seg.str("type")? {
        "striped" => {
            let stripes = seg.uint("stripe_count")?;
            if stripes == 0 || !extents.is_multiple_of(stripes) {
                return seg.err(format!(
                    "stripe_count = {stripes} does not divide extent_count = {extents}"
                ));
            }
            let stripe_size = if stripes > 1 {
                seg.uint("stripe_size")?
            } else {
                0
            };
            if stripes > 1 && stripe_size == 0 {
                return seg.err("stripe_size = 0");
            }
            let Some(Value::Array(items)) = seg.sec.get("stripes") else {
                return seg.err("no stripes array");
            };
            if stripes.checked_mul(2) != Some(items.len() as u64) {
                return seg.err(format!(
                    "stripes lists {} values for stripe_count = {stripes}",
                    items.len()
                ));
            }
            let mut areas = Vec::new();
            for pair in items.chunks_exact(2) {
                match pair {
                    [Scalar::Str(pv), Scalar::Int(pe)] if *pe >= 0 => {
                        areas.push((pv.clone(), *pe as u64))
                    }
                    _ => return seg.err("stripes is not a list of \"pvN\", extent pairs"),
                }
            }
            SegKind::Striped { stripe_size, areas }
        }
        "zero" => SegKind::Zero,
        "error" => SegKind::Error,
        "snapshot" => match seg.str("cow_store") {
            Ok(cow) => SegKind::Snapshot {
                origin: seg.str("origin")?.to_string(),
                cow: cow.to_string(),
                chunk_size: seg.uint("chunk_size")?,
            },
            // A snapshot being merged into its origin (merging_store) needs snapshot-merge.
            Err(_) => SegKind::Unsupported("snapshot (merging)".to_string()),
        },
        other => SegKind::Unsupported(other.chars().take(64).collect()),
    })
}
