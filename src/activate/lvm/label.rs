//! The binary part of an LVM2 physical volume: the label in one of sectors 0-3, the PV header
//! behind it (uuid, data and metadata areas), each metadata area's header with its checksummed
//! pointer to the current metadata text, and that text (which may wrap around the end of the
//! area's circular buffer). Layouts as LVM2's lib/label/label.h and lib/format_text/layout.h.

use super::{LvmError, PvSource};
use crate::activate::crc::crc32_register;

/// A label may sit in any of the first four sectors.
const LABEL_SCAN_SECTORS: u64 = 4;
const SECTOR: u64 = 512;
const LABEL_ID: &[u8; 8] = b"LABELONE";
const LABEL_TYPE: &[u8; 8] = b"LVM2 001";
/// The metadata area header's magic: " LVM2 x[5A%r0N*>".
const FMTT_MAGIC: &[u8; 16] = b" LVM2 x[5A%r0N*>";
const FMTT_VERSION: u32 = 1;
const MDA_HEADER_SIZE: u64 = 512;
/// Seed of LVM2's checksums (lib/misc/crc.h).
const INITIAL_CRC: u32 = 0xf597_a6cf;
/// The raw_locn flag of a metadata area the VG asked LVM to leave unused.
const RAW_LOCN_IGNORED: u32 = 1;
/// A PV header lists at most this many areas of each kind; LVM2 writes one or two. A hostile
/// label cannot make the list longer than its sector anyway; this keeps the reason precise.
const MAX_AREAS: usize = 8;
/// The largest metadata text read. LVM2's default metadata area is 1 MiB; a VG with thousands
/// of LVs fits in a few MiB.
pub const MAX_METADATA_TEXT: u64 = 16 << 20;

/// LVM2's calc_crc: the CRC-32 register, without the inversions, from `seed`.
pub fn calc_crc(seed: u32, data: &[u8]) -> u32 {
    crc32_register(seed, data)
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// A byte range of the PV (offset from the PV's start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Area {
    pub offset: u64,
    pub size: u64,
}

/// What the label says about a PV.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PvLabel {
    /// The 32 characters of the PV's uuid, without the dashes the text format adds.
    pub uuid: String,
    pub device_size: u64,
    pub data_areas: Vec<Area>,
    pub metadata_areas: Vec<Area>,
}

/// One metadata area's current text, or why it has none.
#[derive(Debug)]
pub enum MdaText {
    Text(Vec<u8>),
    /// The VG marked this area unused (`metadataignore`).
    Ignored,
    /// The area holds no metadata yet (an orphan PV).
    Empty,
    /// A damaged area: the reason, for the error when every copy is damaged.
    Damaged(String),
}

/// Reads `buf` from byte `offset` of the PV, refusing a range past its end.
pub fn read(src: &PvSource, offset: u64, buf: &mut [u8]) -> Result<(), LvmError> {
    if offset
        .checked_add(buf.len() as u64)
        .is_none_or(|end| end > src.size)
    {
        return Err(LvmError::invalid(format!(
            "{}: LVM metadata points past the end of the device (byte {offset}, {} bytes)",
            src.name,
            buf.len()
        )));
    }
    let at = src
        .offset
        .checked_add(offset)
        .ok_or_else(|| LvmError::invalid(format!("{}: offset {offset} out of range", src.name)))?;
    src.device
        .read_at(at, buf)
        .map_err(|e| LvmError::io(format!("{}: read at byte {at}", src.name), &e))
}

/// Finds the PV label in sectors 0-3; `None` when the device is no PV.
pub fn read_label(src: &PvSource) -> Result<Option<PvLabel>, LvmError> {
    let scan = (LABEL_SCAN_SECTORS * SECTOR).min(src.size - src.size % SECTOR);
    let mut buf = vec![0u8; scan as usize];
    read(src, 0, &mut buf)?;
    for (n, sector) in buf.chunks_exact(SECTOR as usize).enumerate() {
        if &sector[0..8] != LABEL_ID {
            continue;
        }
        let what =
            |msg: &str| LvmError::invalid(format!("{}: LVM label in sector {n}: {msg}", src.name));
        if le64(sector, 8) != n as u64 {
            return Err(what("it names another sector"));
        }
        if calc_crc(INITIAL_CRC, &sector[20..]) != le32(sector, 16) {
            return Err(what("bad checksum"));
        }
        if &sector[24..32] != LABEL_TYPE {
            return Err(what("not an LVM2 label"));
        }
        let off = le32(sector, 20) as usize;
        // The PV header: 32 uuid bytes, the device size, then two zero-terminated lists of
        // (offset, size) pairs: data areas, then metadata areas.
        if off < 32 || off + 40 > sector.len() {
            return Err(what("the PV header lies outside the label sector"));
        }
        let uuid = &sector[off..off + 32];
        if !uuid.iter().all(u8::is_ascii_alphanumeric) {
            return Err(what("the PV uuid is not 32 letters and digits"));
        }
        let device_size = le64(sector, off + 32);
        let mut at = off + 40;
        let mut lists = [Vec::new(), Vec::new()];
        for list in lists.iter_mut() {
            loop {
                if at + 16 > sector.len() {
                    return Err(what("the PV header's area list runs off the sector"));
                }
                let area = Area {
                    offset: le64(sector, at),
                    size: le64(sector, at + 8),
                };
                at += 16;
                if area.offset == 0 {
                    break;
                }
                if list.len() == MAX_AREAS {
                    return Err(what("too many areas in the PV header"));
                }
                list.push(area);
            }
        }
        let [data_areas, metadata_areas] = lists;
        return Ok(Some(PvLabel {
            uuid: String::from_utf8_lossy(uuid).into_owned(),
            device_size,
            data_areas,
            metadata_areas,
        }));
    }
    Ok(None)
}

/// Reads one metadata area's header and the current metadata text it points to. Damage is an
/// answer (`MdaText::Damaged`), not an error: another copy may be intact.
pub fn read_mda(src: &PvSource, mda: Area) -> Result<MdaText, LvmError> {
    if mda.size < 2 * MDA_HEADER_SIZE {
        return Ok(MdaText::Damaged(format!(
            "metadata area at byte {} is too small ({} bytes)",
            mda.offset, mda.size
        )));
    }
    if mda
        .offset
        .checked_add(mda.size)
        .is_none_or(|e| e > src.size)
    {
        return Ok(MdaText::Damaged(format!(
            "metadata area at byte {} runs past the end of the device",
            mda.offset
        )));
    }
    let mut h = vec![0u8; MDA_HEADER_SIZE as usize];
    read(src, mda.offset, &mut h)?;
    let damaged = |msg: String| Ok(MdaText::Damaged(msg));
    if calc_crc(INITIAL_CRC, &h[4..]) != le32(&h, 0) {
        return damaged(format!(
            "metadata area header at byte {}: bad checksum",
            mda.offset
        ));
    }
    if &h[4..20] != FMTT_MAGIC || le32(&h, 20) != FMTT_VERSION {
        return damaged(format!(
            "metadata area header at byte {}: bad magic or version",
            mda.offset
        ));
    }
    if le64(&h, 24) != mda.offset || le64(&h, 32) != mda.size {
        return damaged(format!(
            "metadata area header at byte {}: it describes another area",
            mda.offset
        ));
    }
    // raw_locns[0] is the committed metadata; [1], when set, a precommitted one LVM2 ignores
    // on activation.
    let (offset, size, checksum, flags) = (le64(&h, 40), le64(&h, 48), le32(&h, 56), le32(&h, 60));
    if flags & RAW_LOCN_IGNORED != 0 {
        return Ok(MdaText::Ignored);
    }
    if offset == 0 {
        return Ok(MdaText::Empty);
    }
    let buffer = mda.size - MDA_HEADER_SIZE;
    if offset < MDA_HEADER_SIZE || offset >= mda.size || size > buffer || size == 0 {
        return damaged(format!(
            "metadata area at byte {}: text location {offset}+{size} out of range",
            mda.offset
        ));
    }
    if size > MAX_METADATA_TEXT {
        return Err(LvmError::invalid(format!(
            "{}: LVM metadata text of {size} bytes is larger than the {MAX_METADATA_TEXT} \
             bytes dmfs reads",
            src.name
        )));
    }
    // The text is a circular buffer after the header: what runs past the area's end wraps.
    let first = size.min(mda.size - offset);
    let mut text = vec![0u8; size as usize];
    read(src, mda.offset + offset, &mut text[..first as usize])?;
    if first < size {
        read(
            src,
            mda.offset + MDA_HEADER_SIZE,
            &mut text[first as usize..],
        )?;
    }
    if calc_crc(INITIAL_CRC, &text) != checksum {
        return damaged(format!(
            "metadata text at byte {}: bad checksum",
            mda.offset + offset
        ));
    }
    Ok(MdaText::Text(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activate::lvm::ReadAt;

    struct Mem(Vec<u8>);

    impl ReadAt for Mem {
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
            let at = offset as usize;
            buf.copy_from_slice(&self.0[at..at + buf.len()]);
            Ok(())
        }
    }

    /// A 64 KiB PV with a label in sector 1 and one 8 KiB metadata area at 4096 whose text
    /// (`text_at`, relative to the area) runs past the area's end and wraps.
    fn pv(text: &[u8], text_at: u64, crc: u32) -> Mem {
        let mut d = vec![0u8; 64 << 10];
        let l = 512;
        d[l..l + 8].copy_from_slice(LABEL_ID);
        d[l + 8..l + 16].copy_from_slice(&1u64.to_le_bytes());
        d[l + 20..l + 24].copy_from_slice(&32u32.to_le_bytes());
        d[l + 24..l + 32].copy_from_slice(LABEL_TYPE);
        d[l + 32..l + 64].copy_from_slice(b"abcdefABCDEF0123456789abcdefABCD");
        d[l + 64..l + 72].copy_from_slice(&(64u64 << 10).to_le_bytes());
        // Data area (32768, 0), end; metadata area (4096, 8192), end.
        d[l + 72..l + 80].copy_from_slice(&32768u64.to_le_bytes());
        d[l + 104..l + 112].copy_from_slice(&4096u64.to_le_bytes());
        d[l + 112..l + 120].copy_from_slice(&8192u64.to_le_bytes());
        let crc_l = calc_crc(INITIAL_CRC, &d[l + 20..l + 512]);
        d[l + 16..l + 20].copy_from_slice(&crc_l.to_le_bytes());
        let h = 4096;
        d[h + 4..h + 20].copy_from_slice(FMTT_MAGIC);
        d[h + 20..h + 24].copy_from_slice(&1u32.to_le_bytes());
        d[h + 24..h + 32].copy_from_slice(&4096u64.to_le_bytes());
        d[h + 32..h + 40].copy_from_slice(&8192u64.to_le_bytes());
        d[h + 40..h + 48].copy_from_slice(&text_at.to_le_bytes());
        d[h + 48..h + 56].copy_from_slice(&(text.len() as u64).to_le_bytes());
        d[h + 56..h + 60].copy_from_slice(&crc.to_le_bytes());
        let crc_h = calc_crc(INITIAL_CRC, &d[h + 4..h + 512]);
        d[h..h + 4].copy_from_slice(&crc_h.to_le_bytes());
        let first = text.len().min(8192 - text_at as usize);
        let at = h + text_at as usize;
        d[at..at + first].copy_from_slice(&text[..first]);
        d[h + 512..h + 512 + text.len() - first].copy_from_slice(&text[first..]);
        Mem(d)
    }

    fn source(m: &Mem) -> PvSource<'_> {
        PvSource {
            name: "mem".into(),
            reference: "mem".into(),
            device: m,
            offset: 0,
            size: m.0.len() as u64,
        }
    }

    #[test]
    fn reads_a_text_that_wraps_around_the_area() {
        let text: Vec<u8> = (0..1000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let m = pv(&text, 7700, calc_crc(INITIAL_CRC, &text));
        let src = source(&m);
        let label = read_label(&src).unwrap().unwrap();
        assert_eq!(label.uuid, "abcdefABCDEF0123456789abcdefABCD");
        assert_eq!(
            label.metadata_areas,
            vec![Area {
                offset: 4096,
                size: 8192
            }]
        );
        match read_mda(&src, label.metadata_areas[0]).unwrap() {
            MdaText::Text(t) => assert_eq!(t, text),
            other => panic!("{other:?}"),
        }
        // The checksum covers the wrapped part too.
        let m = pv(&text, 7700, calc_crc(INITIAL_CRC, &text[..492]));
        assert!(matches!(
            read_mda(&source(&m), label.metadata_areas[0]).unwrap(),
            MdaText::Damaged(r) if r == "metadata text at byte 11796: bad checksum"
        ));
    }

    #[test]
    fn crc_is_lvm2s() {
        // LVM2's calc_crc over nothing returns its seed; over "123456789" with the standard
        // seed and inversion it is the CRC-32 check value.
        assert_eq!(calc_crc(INITIAL_CRC, b""), INITIAL_CRC);
        assert_eq!(!calc_crc(0xffff_ffff, b"123456789"), 0xcbf4_3926);
    }
}
