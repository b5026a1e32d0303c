//! Partition tables read as kpartx reads them: which partitions it maps, under which names, at
//! which sectors, so dmfs can build the same linear devices an image gets from `kpartx -a`.
//!
//! kpartx (multipath-tools, `kpartx/kpartx.c`, `dos.c`, `gpt.c`) tries GPT first, then DOS; the
//! first that finds a partition wins. Its rules, kept here:
//! - Slots are numbered from 1 in the order they are read: the four MBR slots (empty ones keep
//!   their number), then the entries of every extended partition's chain of EBRs (so the first
//!   logical partition is 5); GPT entries by index (empty entries keep theirs too). Slots of
//!   length 0 are not mapped; the order of mapping is the order of the numbers.
//! - An extended partition (type 0x05, 0x0f or 0x85) is mapped as its first two sectors (1 KiB
//!   "for LILO"); its logical partitions are mapped from the whole disk, at absolute sectors.
//! - GPT: the primary header at sector 1 and its entry array, checked by signature, header
//!   CRC, `my_lba`, entry size and entry array CRC; where it fails, the backup at the last
//!   sector. A valid GPT counts only with a protective MBR (an 0xee slot); an MBR with an 0xee
//!   slot is never read as a DOS table.
//! - Names: the base name, a `p` when the base name ends in a digit, the number.
//!
//! Where kpartx has no bound, the kernel's partition code gives one: a GPT header's size is at
//! most one sector, its entry array at most 4 MiB (the kernel's `KMALLOC_MAX_SIZE`; an image
//! may claim 2^32 entries), and the array must lie inside the image. kpartx reads at most 256
//! slots and follows a chain of EBRs through at most 100 tables without a partition.
//!
//! `scan` returns what kpartx would try to map; `read` refuses what dmfs will not map: a
//! partition past the end of the image (the kernel refuses that table too, and kpartx maps
//! the others) and partitions that overlap (kpartx maps them; two devices would then write the
//! same sectors).

use std::io::{self, Seek};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::crc::crc32;
use crate::backing::Backing;
use crate::error::{DmError, DmResult};
use crate::units::{SECTOR_SIZE, Sectors};

/// Where a partition table is read from: whole sectors and the size, in sectors.
pub trait SectorSource {
    fn size(&self) -> Sectors;
    fn read_at(&self, at: Sectors, buf: &mut [u8]) -> io::Result<()>;
}

impl SectorSource for Backing {
    fn size(&self) -> Sectors {
        Backing::size(self)
    }
    fn read_at(&self, at: Sectors, buf: &mut [u8]) -> io::Result<()> {
        Backing::read_at(self, at, buf)
    }
}

/// An image file or a block device, as the loop driver shows a file: a trailing partial sector
/// is not part of it.
impl SectorSource for std::fs::File {
    fn size(&self) -> Sectors {
        // The end by seeking, which a block device answers too (its metadata says 0 bytes);
        // reads are positioned, so the file position does not matter.
        let mut file = self;
        Sectors(file.seek(io::SeekFrom::End(0)).unwrap_or(0) / SECTOR_SIZE)
    }
    fn read_at(&self, at: Sectors, buf: &mut [u8]) -> io::Result<()> {
        self.read_exact_at(buf, at.bytes().0)
    }
}

/// A stretch of another source (a partition of an image), read as a source of its own.
pub struct Window<'a> {
    pub dev: &'a dyn SectorSource,
    pub start: Sectors,
    pub len: Sectors,
}

impl SectorSource for Window<'_> {
    fn size(&self) -> Sectors {
        self.len
    }
    fn read_at(&self, at: Sectors, buf: &mut [u8]) -> io::Result<()> {
        let end = at.0.checked_add(buf.len() as u64 / SECTOR_SIZE);
        if end.is_none_or(|e| e > self.len.0) {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        self.dev.read_at(self.start + at, buf)
    }
}

/// Which table the partitions came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// No table kpartx reads (an image may still hold an LVM PV or a filesystem).
    None,
    Dos,
    /// GPT, from the primary header and entries.
    Gpt,
    /// GPT, from the backup header and entries: the primary ones are damaged.
    GptBackup,
}

/// What a slot is, which decides how it is mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An MBR slot or a GPT entry: mapped whole.
    Primary,
    /// An extended partition: only its first two sectors are mapped.
    Extended,
    /// A partition inside an extended one.
    Logical,
}

/// One partition kpartx maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// kpartx's number: the slot's, from 1.
    pub number: u32,
    pub name: String,
    pub kind: Kind,
    /// Where the mapping starts on the image.
    pub start: Sectors,
    pub length: Sectors,
}

impl Partition {
    /// The table of the device kpartx makes for it, with `reference` where kpartx has the
    /// image's major:minor: `0 LEN linear REFERENCE START`.
    pub fn table(&self, reference: &str) -> String {
        format!("0 {} linear {} {}", self.length.0, reference, self.start.0)
    }

    fn end(&self) -> u128 {
        self.start.0 as u128 + self.length.0 as u128
    }
}

/// The partitions of an image, in kpartx's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionTable {
    pub scheme: Scheme,
    pub partitions: Vec<Partition>,
}

/// kpartx's name for partition `number` of a device called `base` (its default `-p` rule).
pub fn partition_name(base: &str, number: u32) -> String {
    let delimiter = if base.ends_with(|c: char| c.is_ascii_digit()) {
        "p"
    } else {
        ""
    };
    format!("{base}{delimiter}{number}")
}

/// The base name of an image's partitions: its file name without the last extension
/// (`disk.img` -> `disk`, `vm0.raw` -> `vm0`).
pub fn image_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The partitions kpartx would map for `dev`, named after `base`, checked: none may run past
/// the end of the image or overlap another (the two sectors of an extended partition aside:
/// kpartx maps them over the start of the first logical one when that follows its EBR at once).
pub fn read(dev: &dyn SectorSource, base: &str) -> DmResult<PartitionTable> {
    let table = scan(dev, base)?;
    let size = dev.size().0;
    for p in &table.partitions {
        if p.end() > size as u128 {
            // The kernel's words for a linear table that runs past its device.
            return Err(DmError::invalid(format!(
                "{}: {base} too small for target: start={}, len={}, dev_size={size}",
                p.name, p.start.0, p.length.0
            )));
        }
    }
    let mut data: Vec<&Partition> = table
        .partitions
        .iter()
        .filter(|p| p.kind != Kind::Extended)
        .collect();
    data.sort_by_key(|p| (p.start, p.number));
    for pair in data.windows(2) {
        if (pair[1].start.0 as u128) < pair[0].end() {
            return Err(DmError::invalid(format!(
                "partitions {} (sectors {}-{}) and {} (sectors {}-{}) overlap",
                pair[0].name,
                pair[0].start.0,
                pair[0].end() - 1,
                pair[1].name,
                pair[1].start.0,
                pair[1].end() - 1
            )));
        }
    }
    Ok(table)
}

/// The partitions kpartx would try to map for `dev`, named after `base`, unchecked against the
/// image's size and each other. Fails on what kpartx would pass over in silence: an image
/// shorter than a sector, a chain of EBRs cut by the image's end, a protective MBR whose two
/// GPT headers are both damaged.
pub fn scan(dev: &dyn SectorSource, base: &str) -> DmResult<PartitionTable> {
    let size = dev.size();
    if size.0 == 0 {
        return Err(DmError::invalid(format!(
            "{base}: truncated image: shorter than one sector, no partition table"
        )));
    }
    let mbr = read_sector(dev, Sectors(0))?;
    let mbr_signed = mbr[510] == 0x55 && mbr[511] == 0xaa;
    let protective = mbr_signed && (0..4).any(|i| slot(&mbr, 0x1be, i).kind == 0xee);
    let (scheme, slices) = match find_gpt(dev)? {
        Gpt::Valid { backup, slices } if protective => {
            let scheme = if backup {
                Scheme::GptBackup
            } else {
                Scheme::Gpt
            };
            (scheme, slices)
        }
        Gpt::Invalid(why) if protective => {
            return Err(DmError::invalid(format!(
                "{base}: protective MBR, but no valid GPT: {why}"
            )));
        }
        // A valid GPT behind an MBR without an 0xee slot: kpartx takes the disk for a DOS
        // disk ("Assuming this disk is *not* a GPT disk anymore").
        _ => (Scheme::Dos, read_dos(dev, &mbr, base)?),
    };
    // A GPT with no used entry is no table to kpartx (the protective MBR is not a DOS one).
    let scheme = if slices.is_empty() {
        Scheme::None
    } else {
        scheme
    };
    let partitions = slices
        .into_iter()
        .enumerate()
        .filter(|(_, s)| s.length.0 > 0)
        .map(|(i, s)| Partition {
            number: i as u32 + 1,
            name: partition_name(base, i as u32 + 1),
            kind: s.kind,
            start: s.start,
            length: s.length,
        })
        .collect();
    Ok(PartitionTable { scheme, partitions })
}

/// kpartx's array of slots (`MAXSLICES`).
const MAX_SLICES: usize = 256;
/// kpartx gives up on a chain of EBRs after this many tables in a row without a partition.
const MAX_EMPTY_EBRS: u32 = 100;
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
const GPT_ENTRY_SIZE: u32 = 128;
/// The largest entry array the kernel reads (`KMALLOC_MAX_SIZE` on x86-64).
const GPT_MAX_ARRAY: u64 = 4 << 20;

#[derive(Clone, Copy, Debug)]
struct Slice {
    start: Sectors,
    length: Sectors,
    kind: Kind,
}

const EMPTY: Slice = Slice {
    start: Sectors(0),
    length: Sectors(0),
    kind: Kind::Primary,
};

fn read_sector(dev: &dyn SectorSource, at: Sectors) -> DmResult<Vec<u8>> {
    let mut buf = vec![0u8; SECTOR_SIZE as usize];
    dev.read_at(at, &mut buf)
        .map_err(|e| DmError::io(format_args!("reading sector {}", at.0), &e))?;
    Ok(buf)
}

struct MbrSlot {
    kind: u8,
    start: u32,
    length: u32,
}

fn slot(sector: &[u8], table: usize, i: usize) -> MbrSlot {
    let e = &sector[table + 16 * i..table + 16 * (i + 1)];
    MbrSlot {
        kind: e[4],
        start: u32::from_le_bytes(e[8..12].try_into().unwrap()),
        length: u32::from_le_bytes(e[12..16].try_into().unwrap()),
    }
}

fn is_extended(kind: u8) -> bool {
    matches!(kind, 0x05 | 0x0f | 0x85)
}

/// kpartx's `read_dos_pt`: the four slots, each extended one followed by its logical ones.
fn read_dos(dev: &dyn SectorSource, mbr: &[u8], base: &str) -> DmResult<Vec<Slice>> {
    if mbr[510] != 0x55 || mbr[511] != 0xaa {
        return Ok(Vec::new());
    }
    let slots: Vec<MbrSlot> = (0..4).map(|i| slot(mbr, 0x1be, i)).collect();
    if slots.iter().any(|s| s.kind == 0xee) {
        return Ok(Vec::new());
    }
    let mut slices = Vec::new();
    let mut logical = Vec::new();
    for s in &slots {
        if is_extended(s.kind) {
            slices.push(Slice {
                start: Sectors(s.start.into()),
                length: Sectors(2),
                kind: Kind::Extended,
            });
            read_extended(dev, s, base, &mut logical)?;
        } else {
            slices.push(Slice {
                start: Sectors(s.start.into()),
                length: Sectors(s.length.into()),
                kind: Kind::Primary,
            });
        }
    }
    slices.extend(logical);
    slices.truncate(MAX_SLICES);
    Ok(slices)
}

/// kpartx's `read_extended_partition`: follows the chain of EBRs from the extended
/// partition's start; every entry that is not a link is a slot (an empty one too), and the
/// first link with a start and a length leads on.
fn read_extended(
    dev: &dyn SectorSource,
    extended: &MbrSlot,
    base: &str,
    out: &mut Vec<Slice>,
) -> DmResult<()> {
    let first = u64::from(extended.start);
    let mut next = Some(first);
    let mut empty_tables = 0;
    while let Some(here) = next.take() {
        empty_tables += 1;
        if empty_tables > MAX_EMPTY_EBRS {
            return Ok(());
        }
        if here >= dev.size().0 {
            return Err(DmError::invalid(format!(
                "{base}: truncated image: the extended partition's table at sector {here} lies \
                 past the end ({} sectors)",
                dev.size().0
            )));
        }
        let ebr = read_sector(dev, Sectors(here))?;
        if ebr[510] != 0x55 || ebr[511] != 0xaa {
            return Ok(());
        }
        for i in 0..2 {
            let s = slot(&ebr, 0x1be, i);
            if is_extended(s.kind) {
                if s.start != 0 && s.length != 0 && next.is_none() {
                    next = Some(first + u64::from(s.start));
                }
                continue;
            }
            // Four primary slots come first in kpartx's array.
            if 4 + out.len() >= MAX_SLICES {
                return Ok(());
            }
            out.push(Slice {
                start: Sectors(here + u64::from(s.start)),
                length: Sectors(s.length.into()),
                kind: Kind::Logical,
            });
            empty_tables = 0;
        }
    }
    Ok(())
}

enum Gpt {
    Valid { backup: bool, slices: Vec<Slice> },
    Invalid(String),
}

/// kpartx's `find_valid_gpt`: the primary header, else the backup one (where the primary says
/// it is, else at the last sector).
fn find_gpt(dev: &dyn SectorSource) -> DmResult<Gpt> {
    let last = dev.size().0 - 1;
    if last == 0 {
        return Ok(Gpt::Invalid("the image is one sector".into()));
    }
    let primary = gpt_header(dev, 1)?;
    let (backup, primary_why) = match primary {
        Ok(h) => {
            let slices = h.slices;
            return Ok(Gpt::Valid {
                backup: false,
                slices,
            });
        }
        Err(why) => (gpt_header(dev, last)?, why),
    };
    Ok(match backup {
        Ok(h) => Gpt::Valid {
            backup: true,
            slices: h.slices,
        },
        Err(why) => Gpt::Invalid(format!(
            "primary header (sector 1): {primary_why}; backup header (sector {last}): {why}"
        )),
    })
}

struct GptHeader {
    slices: Vec<Slice>,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// kpartx's `is_gpt_valid` for the header at `lba`: Ok(Err(why)) when it is not valid.
fn gpt_header(dev: &dyn SectorSource, lba: u64) -> DmResult<Result<GptHeader, String>> {
    let size = dev.size().0;
    if lba >= size {
        return Ok(Err("past the end of the image".into()));
    }
    let mut h = read_sector(dev, Sectors(lba))?;
    if &h[0..8] != GPT_SIGNATURE {
        return Ok(Err("no GPT signature".into()));
    }
    let header_size = le32(&h, 12);
    if !(92..=SECTOR_SIZE as u32).contains(&header_size) {
        return Ok(Err(format!("header size {header_size} out of range")));
    }
    let stored_crc = le32(&h, 16);
    h[16..20].fill(0);
    if crc32(0, &h[..header_size as usize]) != stored_crc {
        return Ok(Err("header CRC mismatch".into()));
    }
    if le64(&h, 24) != lba {
        return Ok(Err(format!("header says it is at sector {}", le64(&h, 24))));
    }
    if le32(&h, 84) != GPT_ENTRY_SIZE {
        return Ok(Err(format!("entry size {} is not 128", le32(&h, 84))));
    }
    let entries_lba = le64(&h, 72);
    let count = le32(&h, 80);
    let array_bytes = u64::from(count) * u64::from(GPT_ENTRY_SIZE);
    if array_bytes == 0 {
        return Ok(Err("no partition entries".into()));
    }
    if array_bytes > GPT_MAX_ARRAY {
        // The kernel's words (efi.c).
        return Ok(Err(format!(
            "GUID Partition Table is too large: {array_bytes} > {GPT_MAX_ARRAY} bytes"
        )));
    }
    let array_sectors = array_bytes.div_ceil(SECTOR_SIZE);
    if entries_lba
        .checked_add(array_sectors)
        .is_none_or(|end| end > size)
    {
        return Ok(Err(format!(
            "partition entries at sector {entries_lba} run past the end of the image"
        )));
    }
    // The array is read in pieces, for the CRC; only kpartx's 256 first entries are kept.
    let mut crc = 0;
    let mut slices = Vec::new();
    let mut last_used = None;
    let mut left = array_bytes as usize;
    let mut at = entries_lba;
    let mut buf = vec![0u8; 64 << 10];
    while left > 0 {
        let sectors = (buf.len() / SECTOR_SIZE as usize).min(left.div_ceil(SECTOR_SIZE as usize));
        let piece = &mut buf[..sectors * SECTOR_SIZE as usize];
        dev.read_at(Sectors(at), piece)
            .map_err(|e| DmError::io(format_args!("reading sector {at}"), &e))?;
        let used = piece.len().min(left);
        crc = crc32(crc, &piece[..used]);
        for e in piece[..used].chunks_exact(GPT_ENTRY_SIZE as usize) {
            if slices.len() == MAX_SLICES {
                break;
            }
            slices.push(if e[0..16].iter().all(|&b| b == 0) {
                EMPTY
            } else {
                last_used = Some(slices.len());
                let first = le64(e, 32);
                Slice {
                    start: Sectors(first),
                    length: Sectors(le64(e, 40).wrapping_sub(first).wrapping_add(1)),
                    kind: Kind::Primary,
                }
            });
        }
        left -= used;
        at += sectors as u64;
    }
    if crc != le32(&h, 88) {
        return Ok(Err("partition entry array CRC mismatch".into()));
    }
    // kpartx keeps the slots up to the last one with a partition type.
    slices.truncate(last_used.map_or(0, |u| u + 1));
    Ok(Ok(GptHeader { slices }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_take_a_p_after_a_digit() {
        assert_eq!(partition_name("disk", 1), "disk1");
        assert_eq!(partition_name("vm0", 1), "vm0p1");
        assert_eq!(partition_name("loop0", 12), "loop0p12");
        assert_eq!(image_stem(Path::new("/x/disk.img")), "disk");
        assert_eq!(image_stem(Path::new("vm0.raw")), "vm0");
        assert_eq!(image_stem(Path::new("a.b.img")), "a.b");
    }

    /// An image in memory.
    struct Mem(Vec<u8>);

    impl SectorSource for Mem {
        fn size(&self) -> Sectors {
            Sectors(self.0.len() as u64 / SECTOR_SIZE)
        }
        fn read_at(&self, at: Sectors, buf: &mut [u8]) -> io::Result<()> {
            let from = at.bytes().0 as usize;
            buf.copy_from_slice(&self.0[from..from + buf.len()]);
            Ok(())
        }
    }

    /// Writes MBR slot `i` of the table in sector `lba`, and the sector's signature.
    fn put_slot(img: &mut [u8], lba: u64, i: usize, kind: u8, start: u32, length: u32) {
        let s = lba as usize * 512;
        let e = s + 0x1be + 16 * i;
        img[e + 4] = kind;
        img[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
        img[e + 12..e + 16].copy_from_slice(&length.to_le_bytes());
        img[s + 510] = 0x55;
        img[s + 511] = 0xaa;
    }

    #[test]
    fn an_ebr_chain_of_links_alone_ends() {
        // Every EBR links to the next one and none holds a partition; the last links to itself.
        let mut img = vec![0u8; 512 * 512];
        put_slot(&mut img, 0, 0, 0x05, 100, 400);
        for k in 0..300u32 {
            let here = 100 + k.min(299);
            let next = (k + 1).min(299);
            // Entry 0 a link too (type 0x0f), entry 1 the link that is followed.
            put_slot(&mut img, here.into(), 0, 0x0f, 0, 0);
            put_slot(&mut img, here.into(), 1, 0x05, next.max(1), 1);
        }
        let t = scan(&Mem(img), "d").unwrap();
        // The extended partition's two sectors, and nothing else: kpartx gives up after 100
        // tables without a partition.
        assert_eq!(t.scheme, Scheme::Dos);
        assert_eq!(t.partitions.len(), 1);
        assert_eq!(
            (t.partitions[0].kind, t.partitions[0].length),
            (Kind::Extended, Sectors(2))
        );
    }

    #[test]
    fn an_empty_ebr_entry_takes_a_number() {
        // kpartx records every entry of an EBR that is not a link, empty or not: a logical
        // partition in entry 1 behind an empty entry 0 is number 6.
        let mut img = vec![0u8; 64 * 512];
        put_slot(&mut img, 0, 1, 0x05, 8, 56);
        put_slot(&mut img, 8, 1, 0x83, 8, 16);
        let t = read(&Mem(img), "d").unwrap();
        let got: Vec<_> = t
            .partitions
            .iter()
            .map(|p| (p.name.as_str(), p.start.0, p.length.0))
            .collect();
        assert_eq!(got, [("d2", 8, 2), ("d6", 16, 16)]);
    }
}
