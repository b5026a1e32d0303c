//! The LUKS2 header (cryptsetup's `lib/luks2/`, the LUKS2 on-disk format): two copies, each a
//! 4096-byte binary header (integers big-endian) followed by a JSON area; the whole copy is
//! `hdr_size` bytes (16 KiB to 4 MiB) and checksummed with the checksum field zeroed. The
//! primary is at 0, the secondary at the primary's `hdr_size` (or, when the primary is damaged,
//! at one of the offsets LUKS2 allows). The valid copy with the higher `seqid` wins.
//!
//! The JSON names key slots (`luks2`: a KDF, the anti-forensic split, an area holding the split
//! key encrypted), digests (`pbkdf2` over the volume key) and segments (`crypt`: where the data
//! is, its cipher and sector size). Every field is checked for its type and bounds before any
//! key is derived.

use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::kdf::{self, Argon2Cost, Argon2Kind, Hash, MAX_KEY_BYTES};
use super::{Flags, NO_KEY, Secret, Volume, check_sector_size, decrypt_keyslot, read_bytes};
use crate::activate::partitions::SectorSource;
use crate::error::{DmError, DmResult};

const MAGIC_1ST: &[u8; 6] = b"LUKS\xba\xbe";
const MAGIC_2ND: &[u8; 6] = b"SKUL\xba\xbe";
const BIN_LEN: u64 = 4096;
const MIN_HDR: u64 = 0x4000;
const MAX_HDR: u64 = 0x40_0000;
/// Where a secondary header may be when the primary cannot say (`LUKS2_HDR2_OFFSETS`).
const SECONDARY_OFFSETS: [u64; 9] = [
    0x4000, 0x8000, 0x1_0000, 0x2_0000, 0x4_0000, 0x8_0000, 0x10_0000, 0x20_0000, 0x40_0000,
];
/// cryptsetup splits every key into 4000 stripes, whatever a header says (`LUKS_STRIPES`).
const STRIPES: usize = 4000;
const SALT_LEN: usize = 32;

fn bad(why: impl std::fmt::Display) -> DmError {
    DmError::invalid(format!("LUKS2 header: {why}"))
}

/// One copy of the header, checked.
struct Copy {
    seqid: u64,
    hdr_size: u64,
    uuid: String,
    json: Value,
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Reads and checks the copy at `offset`: magic, version, its own offset, size, checksum, and
/// a JSON object in its area. The error says why it is not valid.
fn read_copy(dev: &dyn SectorSource, offset: u64, secondary: bool) -> Result<Copy, String> {
    if offset + BIN_LEN > dev.size().bytes().0 {
        return Err("not on the device".into());
    }
    let bin =
        read_bytes(dev, offset, BIN_LEN as usize, "the LUKS2 header").map_err(|e| e.reason)?;
    let magic = if secondary { MAGIC_2ND } else { MAGIC_1ST };
    if &bin[..6] != magic {
        return Err("no LUKS2 magic".into());
    }
    if u16::from_be_bytes([bin[6], bin[7]]) != 2 {
        return Err("not version 2".into());
    }
    let hdr_size = be64(&bin, 8);
    if be64(&bin, 256) != offset {
        return Err(format!(
            "its offset field says {}, it is at {offset}",
            be64(&bin, 256)
        ));
    }
    if !(MIN_HDR..=MAX_HDR).contains(&hdr_size) || !hdr_size.is_multiple_of(4096) {
        return Err(format!(
            "size {hdr_size} is not 16 KiB to 4 MiB in 4 KiB steps"
        ));
    }
    if secondary && offset != hdr_size {
        return Err(format!("at {offset}, but its size is {hdr_size}"));
    }
    let alg = cstr(&bin[72..104]);
    let hash = Hash::parse(&alg).map_err(|_| format!("checksum algorithm {alg:?} unknown"))?;
    let mut whole =
        read_bytes(dev, offset, hdr_size as usize, "the LUKS2 header").map_err(|e| e.reason)?;
    let stored: Vec<u8> = whole[448..448 + hash.size()].to_vec();
    whole[448..512].fill(0);
    let mut sum = vec![0u8; hash.size()];
    hash.digest_into(&[&whole], &mut sum);
    if sum != stored {
        return Err("checksum mismatch".into());
    }
    let area = &whole[BIN_LEN as usize..];
    let text = &area[..area.iter().position(|&c| c == 0).unwrap_or(area.len())];
    let json: Value = serde_json::from_slice(text).map_err(|e| format!("JSON: {e}"))?;
    if !json.is_object() {
        return Err("JSON: not an object".into());
    }
    Ok(Copy {
        seqid: be64(&bin, 16),
        hdr_size,
        uuid: cstr(&bin[168..208]),
        json,
    })
}

/// Whether a secondary header's magic and version are at one of the offsets LUKS2 allows.
pub(super) fn has_secondary(dev: &dyn SectorSource) -> bool {
    SECONDARY_OFFSETS.iter().any(|&off| {
        read_bytes(dev, off, 512, "the LUKS2 header")
            .is_ok_and(|b| &b[..6] == MAGIC_2ND && b[6..8] == [0, 2])
    })
}

/// The volume's uuid, from the header copy cryptsetup would use.
pub(super) fn uuid(dev: &dyn SectorSource) -> DmResult<String> {
    Ok(read_header(dev)?.uuid)
}

/// The copy cryptsetup would use.
fn read_header(dev: &dyn SectorSource) -> DmResult<Copy> {
    let primary = read_copy(dev, 0, false);
    let secondary = match &primary {
        Ok(p) => read_copy(dev, p.hdr_size, true),
        // Where a damaged primary says its size is, then every offset LUKS2 allows; the
        // error told is the first one's.
        Err(_) => {
            let mut first: Option<Result<Copy, String>> = None;
            let claimed = read_bytes(dev, 0, 512, "the LUKS2 header")
                .map(|b| be64(&b, 8))
                .ok()
                .filter(|s| SECONDARY_OFFSETS.contains(s));
            for off in claimed.into_iter().chain(SECONDARY_OFFSETS) {
                let copy = read_copy(dev, off, true);
                let found = copy.is_ok();
                if found || first.is_none() {
                    first = Some(copy);
                }
                if found {
                    break;
                }
            }
            first.unwrap_or_else(|| Err("not found".into()))
        }
    };
    match (primary, secondary) {
        (Ok(p), Ok(s)) => Ok(if s.seqid > p.seqid { s } else { p }),
        (Ok(p), Err(_)) => Ok(p),
        (Err(_), Ok(s)) => Ok(s),
        (Err(p), Err(s)) => Err(bad(format!("no valid copy (primary: {p}; secondary: {s})"))),
    }
}

// Typed access to the JSON, every miss a line naming the field.

fn obj<'a>(v: &'a Value, what: &str) -> DmResult<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| bad(format!("{what} is not an object")))
}

fn field<'a>(o: &'a Map<String, Value>, key: &str, what: &str) -> DmResult<&'a Value> {
    o.get(key)
        .ok_or_else(|| bad(format!("{what} has no {key}")))
}

fn string<'a>(o: &'a Map<String, Value>, key: &str, what: &str) -> DmResult<&'a str> {
    field(o, key, what)?
        .as_str()
        .ok_or_else(|| bad(format!("{what}: {key} is not a string")))
}

/// LUKS2 writes 64-bit numbers as decimal strings.
fn u64_string(o: &Map<String, Value>, key: &str, what: &str) -> DmResult<u64> {
    let s = string(o, key, what)?;
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return Err(bad(format!("{what}: {key} {s:?} is not a number")));
    }
    s.parse()
        .map_err(|_| bad(format!("{what}: {key} {s} is too large")))
}

/// And smaller numbers as JSON integers (cryptsetup reads them as 32-bit).
fn u32_int(o: &Map<String, Value>, key: &str, what: &str) -> DmResult<u32> {
    field(o, key, what)?
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| bad(format!("{what}: {key} is not a number from 0 to 2^32-1")))
}

fn base64(s: &str, what: &str) -> DmResult<Zeroizing<Vec<u8>>> {
    let mut out = Zeroizing::new(Vec::with_capacity(s.len() / 4 * 3));
    let mut acc: u32 = 0;
    let mut bits = 0;
    let mut padding = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                padding += 1;
                continue;
            }
            _ => return Err(bad(format!("{what} is not base64"))),
        };
        if padding > 0 {
            return Err(bad(format!("{what} is not base64")));
        }
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if !s.len().is_multiple_of(4) || padding > 2 {
        return Err(bad(format!("{what} is not base64")));
    }
    Ok(out)
}

enum Kdf {
    Pbkdf2 { hash: Hash, iterations: u32 },
    Argon2(Argon2Cost),
}

struct Keyslot {
    id: u32,
    priority: u32,
    key_size: usize,
    af_hash: Hash,
    kdf: Kdf,
    salt: Zeroizing<Vec<u8>>,
    area_offset: u64,
    area_cipher: String,
    area_key_size: usize,
}

struct Digest {
    keyslots: Vec<u32>,
    segments: Vec<u32>,
    hash: Hash,
    iterations: u32,
    salt: Zeroizing<Vec<u8>>,
    digest: Vec<u8>,
}

struct Segment {
    offset: u64,
    cipher: String,
    sector_size: u32,
}

/// The numbered objects of a section ("keyslots", "digests", "segments"), by number.
fn numbered<'a>(root: &'a Map<String, Value>, section: &str) -> DmResult<Vec<(u32, &'a Value)>> {
    let mut out = Vec::new();
    for (k, v) in obj(field(root, section, "the JSON")?, section)? {
        let n: u32 = k
            .parse()
            .ok()
            .filter(|_| k.bytes().all(|c| c.is_ascii_digit()))
            .ok_or_else(|| bad(format!("{section}: {k:?} is not a number")))?;
        out.push((n, v));
    }
    out.sort_by_key(|(n, _)| *n);
    Ok(out)
}

fn id_list(o: &Map<String, Value>, key: &str, what: &str) -> DmResult<Vec<u32>> {
    field(o, key, what)?
        .as_array()
        .ok_or_else(|| bad(format!("{what}: {key} is not an array")))?
        .iter()
        .map(|v| {
            v.as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad(format!("{what}: {key} holds a non-number")))
        })
        .collect()
}

fn keyslot(id: u32, v: &Value, area_lo: u64, area_hi: u64) -> DmResult<Keyslot> {
    let what = format!("keyslot {id}");
    let what = what.as_str();
    let o = obj(v, what)?;
    let kind = string(o, "type", what)?;
    if kind != "luks2" {
        return Err(bad(format!("{what}: type {kind:?} is not supported")));
    }
    let key_size = u32_int(o, "key_size", what)? as usize;
    if key_size == 0 || key_size > MAX_KEY_BYTES {
        return Err(bad(format!(
            "{what}: key_size {key_size} is outside 1-{MAX_KEY_BYTES}"
        )));
    }
    let priority = match o.get("priority") {
        None => 1,
        Some(_) => u32_int(o, "priority", what)?,
    };

    let af = obj(field(o, "af", what)?, what)?;
    let af_what = format!("{what} af");
    let af_kind = string(af, "type", &af_what)?;
    if af_kind != "luks1" {
        return Err(bad(format!("{what}: af type {af_kind:?} is not supported")));
    }
    let stripes = u32_int(af, "stripes", &af_what)?;
    if stripes as usize != STRIPES {
        return Err(bad(format!("{what}: {stripes} stripes, not {STRIPES}")));
    }
    let af_hash =
        Hash::parse(string(af, "hash", &af_what)?).map_err(|e| bad(format!("{what}: {e}")))?;

    let kdf_o = obj(field(o, "kdf", what)?, what)?;
    let kdf_what = format!("{what} kdf");
    let kdf_kind = string(kdf_o, "type", &kdf_what)?;
    let kdf = match kdf_kind {
        "pbkdf2" => {
            let hash = Hash::parse(string(kdf_o, "hash", &kdf_what)?)
                .map_err(|e| bad(format!("{what}: {e}")))?;
            let iterations = u32_int(kdf_o, "iterations", &kdf_what)?;
            kdf::check_pbkdf2_iterations(iterations).map_err(|e| bad(format!("{what}: {e}")))?;
            Kdf::Pbkdf2 { hash, iterations }
        }
        "argon2i" | "argon2id" => {
            let cost = Argon2Cost {
                kind: if kdf_kind == "argon2i" {
                    Argon2Kind::I
                } else {
                    Argon2Kind::Id
                },
                time: u32_int(kdf_o, "time", &kdf_what)?,
                memory: u32_int(kdf_o, "memory", &kdf_what)?,
                parallel: u32_int(kdf_o, "cpus", &kdf_what)?,
            };
            cost.check().map_err(|e| bad(format!("{what}: {e}")))?;
            Kdf::Argon2(cost)
        }
        other => return Err(bad(format!("{what}: kdf type {other:?} is not supported"))),
    };
    let salt = base64(
        string(kdf_o, "salt", &kdf_what)?,
        &format!("{what}: kdf salt"),
    )?;
    if salt.len() != SALT_LEN {
        return Err(bad(format!(
            "{what}: kdf salt is {} bytes, not {SALT_LEN}",
            salt.len()
        )));
    }

    let area = obj(field(o, "area", what)?, what)?;
    let area_what = format!("{what} area");
    let area_kind = string(area, "type", &area_what)?;
    if area_kind != "raw" {
        return Err(bad(format!(
            "{what}: area type {area_kind:?} is not supported"
        )));
    }
    let area_offset = u64_string(area, "offset", &area_what)?;
    let area_size = u64_string(area, "size", &area_what)?;
    let area_cipher = string(area, "encryption", &area_what)?.to_string();
    let area_key_size = u32_int(area, "key_size", &area_what)? as usize;
    if area_key_size == 0 || area_key_size > MAX_KEY_BYTES {
        return Err(bad(format!(
            "{what}: area key_size {area_key_size} is outside 1-{MAX_KEY_BYTES}"
        )));
    }
    let material = split_len(key_size) as u64;
    if area_offset % 512 != 0
        || area_offset < area_lo
        || area_offset
            .checked_add(area_size)
            .is_none_or(|e| e > area_hi)
        || material > area_size
    {
        return Err(bad(format!(
            "{what}: area (bytes {area_offset}+{area_size}) is not inside the key-slot area \
             (bytes {area_lo}-{area_hi}) or too small for its key"
        )));
    }
    Ok(Keyslot {
        id,
        priority,
        key_size,
        af_hash,
        kdf,
        salt,
        area_offset,
        area_cipher,
        area_key_size,
    })
}

/// Bytes of split key material for a key: 4000 stripes, in whole sectors.
fn split_len(key_size: usize) -> usize {
    (key_size * STRIPES).div_ceil(512) * 512
}

fn digest(id: u32, v: &Value) -> DmResult<Digest> {
    let what = format!("digest {id}");
    let what = what.as_str();
    let o = obj(v, what)?;
    let kind = string(o, "type", what)?;
    if kind != "pbkdf2" {
        return Err(bad(format!("{what}: type {kind:?} is not supported")));
    }
    let hash = Hash::parse(string(o, "hash", what)?).map_err(|e| bad(format!("{what}: {e}")))?;
    let iterations = u32_int(o, "iterations", what)?;
    kdf::check_pbkdf2_iterations(iterations).map_err(|e| bad(format!("{what}: {e}")))?;
    let salt = base64(string(o, "salt", what)?, &format!("{what}: salt"))?;
    if salt.len() != SALT_LEN {
        return Err(bad(format!(
            "{what}: salt is {} bytes, not {SALT_LEN}",
            salt.len()
        )));
    }
    let d = base64(string(o, "digest", what)?, &format!("{what}: digest"))?;
    // LUKS_DIGESTSIZE, or the hash's own size.
    if d.len() != 20 && d.len() != hash.size() {
        return Err(bad(format!("{what}: digest is {} bytes", d.len())));
    }
    Ok(Digest {
        keyslots: id_list(o, "keyslots", what)?,
        segments: id_list(o, "segments", what)?,
        hash,
        iterations,
        salt,
        digest: d.to_vec(),
    })
}

fn segment(id: u32, v: &Value) -> DmResult<Segment> {
    let what = format!("segment {id}");
    let what = what.as_str();
    let o = obj(v, what)?;
    let kind = string(o, "type", what)?;
    if kind != "crypt" {
        return Err(bad(format!("{what}: type {kind:?} is not supported")));
    }
    if o.contains_key("integrity") {
        return Err(bad(format!(
            "{what}: integrity protection is not supported"
        )));
    }
    if let Some(flags) = o.get("flags") {
        let flags = flags
            .as_array()
            .ok_or_else(|| bad(format!("{what}: flags is not an array")))?;
        if !flags.is_empty() {
            return Err(bad(format!(
                "{what}: flags {} (a reencryption in progress) are not supported",
                Value::Array(flags.clone())
            )));
        }
    }
    let offset = u64_string(o, "offset", what)?;
    if offset % 512 != 0 {
        return Err(bad(format!(
            "{what}: offset {offset} is not a multiple of 512"
        )));
    }
    let sector_size = u32_int(o, "sector_size", what)?;
    check_sector_size(sector_size).map_err(|e| bad(format!("{what}: {e}")))?;
    // The size is checked, but cryptsetup 2.6.1 maps a crypt segment to the end of the data
    // device whatever it says (LUKS2_activate leaves the size to device_block_adjust), and so
    // does dmfs. Likewise iv_tweak only matters to a reencryption: the table's IV offset is 0.
    let size = string(o, "size", what)?;
    if size != "dynamic" {
        let n = u64_string(o, "size", what)?;
        if n % sector_size as u64 != 0 {
            return Err(bad(format!(
                "{what}: size {n} is not a multiple of its sector size"
            )));
        }
    }
    u64_string(o, "iv_tweak", what)?;
    Ok(Segment {
        offset,
        cipher: string(o, "encryption", what)?.to_string(),
        sector_size,
    })
}

pub(super) fn open(dev: &dyn SectorSource, passphrase: &[u8]) -> DmResult<Volume> {
    let hdr = read_header(dev)?;
    let root = obj(&hdr.json, "the JSON")?;
    let config = obj(field(root, "config", "the JSON")?, "config")?;
    let json_size = u64_string(config, "json_size", "config")?;
    if json_size != hdr.hdr_size - BIN_LEN {
        return Err(bad(format!(
            "config json_size {json_size} does not match the header's size {}",
            hdr.hdr_size
        )));
    }
    let keyslots_size = u64_string(config, "keyslots_size", "config")?;
    if let Some(req) = config.get("requirements") {
        let mandatory = obj(req, "config requirements")?
            .get("mandatory")
            .and_then(Value::as_array);
        if let Some(m) = mandatory.filter(|m| !m.is_empty()) {
            return Err(bad(format!(
                "requirements {} are not supported",
                Value::Array(m.clone())
            )));
        }
    }
    let mut flags = Flags::default();
    if let Some(list) = config.get("flags") {
        for f in list
            .as_array()
            .ok_or_else(|| bad("config flags is not an array"))?
        {
            // Unknown flags are passed over, as cryptsetup does ("Ignored unknown flag").
            match f.as_str() {
                Some("allow-discards") => flags.allow_discards = true,
                Some("same-cpu-crypt") => flags.same_cpu_crypt = true,
                Some("submit-from-crypt-cpus") => flags.submit_from_crypt_cpus = true,
                Some("no-read-workqueue") => flags.no_read_workqueue = true,
                Some("no-write-workqueue") => flags.no_write_workqueue = true,
                _ => {}
            }
        }
    }

    let segments = numbered(root, "segments")?;
    let (seg_id, seg) = match segments.as_slice() {
        [(id, v)] => (*id, segment(*id, v)?),
        [] => return Err(bad("no segment")),
        _ => {
            return Err(bad(format!(
                "{} segments (a reencryption in progress) are not supported",
                segments.len()
            )));
        }
    };
    let area_lo = 2 * hdr.hdr_size;
    let area_hi = area_lo
        .checked_add(keyslots_size)
        .ok_or_else(|| bad("config keyslots_size is too large"))?;
    let mut slots = numbered(root, "keyslots")?
        .into_iter()
        .map(|(id, v)| keyslot(id, v, area_lo, area_hi))
        .collect::<DmResult<Vec<_>>>()?;
    let digests = numbered(root, "digests")?
        .into_iter()
        .map(|(id, v)| digest(id, v))
        .collect::<DmResult<Vec<_>>>()?;
    let Some(d) = digests.iter().find(|d| d.segments.contains(&seg_id)) else {
        return Err(bad(format!("no digest for segment {seg_id}")));
    };

    // High priority first, then normal; "ignore" (0) only when asked for by number, which
    // dmfs does not do. Within one priority, by number.
    slots.retain(|s| s.priority > 0 && d.keyslots.contains(&s.id));
    slots.sort_by_key(|s| (std::cmp::Reverse(s.priority.min(2)), s.id));
    let mut check = vec![0u8; d.digest.len()];
    for s in &slots {
        let mut derived = Zeroizing::new(vec![0u8; s.area_key_size]);
        match &s.kdf {
            Kdf::Pbkdf2 { hash, iterations } => {
                hash.pbkdf2(passphrase, &s.salt, *iterations, &mut derived)?
            }
            Kdf::Argon2(cost) => cost.derive(passphrase, &s.salt, &mut derived)?,
        }
        let mut material = read_bytes(
            dev,
            s.area_offset,
            split_len(s.key_size),
            &format!("LUKS2 keyslot {}", s.id),
        )?;
        decrypt_keyslot(&s.area_cipher, &derived, &mut material)?;
        let mut key: Secret = Zeroizing::new(vec![0u8; s.key_size]);
        kdf::af_merge(&material, STRIPES, s.af_hash, &mut key)?;
        d.hash.pbkdf2(&key, &d.salt, d.iterations, &mut check)?;
        if check == d.digest {
            return Ok(Volume {
                cipher: seg.cipher,
                key,
                iv_offset: 0,
                offset: seg.offset / 512,
                size: None,
                sector_size: seg.sector_size,
                flags,
                uuid: hdr.uuid,
                keyslot: s.id,
            });
        }
    }
    Err(DmError::new(libc::EPERM, NO_KEY))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_as_luks2_writes_it() {
        assert_eq!(&base64("TWFu", "x").unwrap()[..], b"Man");
        assert_eq!(&base64("TWE=", "x").unwrap()[..], b"Ma");
        assert_eq!(&base64("TQ==", "x").unwrap()[..], b"M");
        assert!(base64("TQ=", "x").is_err());
        assert!(base64("T=Q=", "x").is_err());
        assert!(base64("TQ*=", "x").is_err());
    }
}
