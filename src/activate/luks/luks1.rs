//! The LUKS1 header (cryptsetup's `lib/luks1/`): 592 bytes at sector 0, integers big-endian,
//! strings NUL-padded; eight key slots, each PBKDF2 with the header's hash over its own salt,
//! then 4000 stripes of split key material decrypted with the volume's cipher, merged, and
//! checked against the master-key digest (PBKDF2 of the key, 20 bytes).

use zeroize::Zeroizing;

use super::kdf::{self, Hash, MAX_KEY_BYTES};
use super::{NO_KEY, Secret, Volume, decrypt_keyslot, read_bytes};
use crate::activate::partitions::SectorSource;
use crate::error::{DmError, DmResult};

pub const MAGIC: &[u8; 6] = b"LUKS\xba\xbe";
const HEADER_LEN: usize = 592;
const SLOTS: usize = 8;
const SLOT_ENABLED: u32 = 0x00ac_71f3;
const SLOT_DISABLED: u32 = 0x0000_dead;
/// cryptsetup makes and reads LUKS1 key slots with 4000 stripes only.
const STRIPES: u32 = 4000;
const DIGEST_LEN: usize = 20;

struct Slot {
    active: u32,
    iterations: u32,
    salt: [u8; 32],
    material_offset: u32,
    stripes: u32,
}

struct Header {
    cipher_name: String,
    cipher_mode: String,
    hash: String,
    payload_offset: u32,
    key_bytes: u32,
    mk_digest: [u8; DIGEST_LEN],
    mk_salt: [u8; 32],
    mk_iterations: u32,
    uuid: String,
    slots: Vec<Slot>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

/// A NUL-padded string field; refused unless it is printable ASCII.
fn text(b: &[u8], what: &str) -> DmResult<String> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    let s = &b[..end];
    if !s.iter().all(|c| c.is_ascii_graphic()) {
        return Err(DmError::invalid(format!(
            "LUKS1 header: {what} is not text"
        )));
    }
    Ok(String::from_utf8_lossy(s).into_owned())
}

fn parse(b: &[u8]) -> DmResult<Header> {
    let slots = (0..SLOTS)
        .map(|i| {
            let s = &b[208 + 48 * i..208 + 48 * (i + 1)];
            Slot {
                active: be32(s, 0),
                iterations: be32(s, 4),
                salt: s[8..40].try_into().unwrap(),
                material_offset: be32(s, 40),
                stripes: be32(s, 44),
            }
        })
        .collect();
    Ok(Header {
        cipher_name: text(&b[8..40], "cipher name")?,
        cipher_mode: text(&b[40..72], "cipher mode")?,
        hash: text(&b[72..104], "hash spec")?,
        payload_offset: be32(b, 104),
        key_bytes: be32(b, 108),
        mk_digest: b[112..132].try_into().unwrap(),
        mk_salt: b[132..164].try_into().unwrap(),
        mk_iterations: be32(b, 164),
        uuid: text(&b[168..208], "uuid")?,
        slots,
    })
}

/// The volume's uuid, as `cryptsetup luksUUID` prints it.
pub(super) fn uuid(dev: &dyn SectorSource) -> DmResult<String> {
    let sector = read_bytes(dev, 0, 1024, "the LUKS1 header")?;
    Ok(parse(&sector[..HEADER_LEN])?.uuid)
}

pub(super) fn open(dev: &dyn SectorSource, passphrase: &[u8]) -> DmResult<Volume> {
    let sector = read_bytes(dev, 0, 1024, "the LUKS1 header")?;
    let h = parse(&sector[..HEADER_LEN])?;
    if h.key_bytes == 0 || h.key_bytes as usize > MAX_KEY_BYTES {
        return Err(DmError::invalid(format!(
            "LUKS1 header: key size {} bytes is outside 1-{MAX_KEY_BYTES}",
            h.key_bytes
        )));
    }
    let hash = Hash::parse(&h.hash).map_err(|_| {
        DmError::invalid(format!("Requested LUKS hash {} is not supported.", h.hash))
    })?;
    kdf::check_pbkdf2_iterations(h.mk_iterations)
        .map_err(|e| e.context("LUKS1 header: master key digest"))?;
    let cipher = format!("{}-{}", h.cipher_name, h.cipher_mode);
    let key_bytes = h.key_bytes as usize;
    let material_len = (key_bytes * STRIPES as usize).div_ceil(512) * 512;

    // Every slot is checked before any is tried, as cryptsetup's LUKS_check_keyslots does.
    for (i, s) in h.slots.iter().enumerate() {
        match s.active {
            SLOT_DISABLED => continue,
            SLOT_ENABLED => {}
            _ => return Err(DmError::invalid(format!("LUKS keyslot {i} is invalid."))),
        }
        if s.stripes != STRIPES {
            return Err(DmError::invalid(format!(
                "LUKS keyslot {i} is invalid: {} stripes, not {STRIPES}",
                s.stripes
            )));
        }
        kdf::check_pbkdf2_iterations(s.iterations)
            .map_err(|e| e.context(format!("LUKS keyslot {i}")))?;
        let start = s.material_offset as u64 * 512;
        if s.material_offset < 1
            || start + material_len as u64 > dev.size().bytes().0
            || (h.payload_offset != 0
                && start + material_len as u64 > h.payload_offset as u64 * 512)
        {
            return Err(DmError::invalid(format!(
                "LUKS keyslot {i}: its key material (sector {}, {} sectors) lies outside the header",
                s.material_offset,
                material_len / 512
            )));
        }
    }

    let mut derived = Zeroizing::new(vec![0u8; key_bytes]);
    let mut key: Secret = Zeroizing::new(vec![0u8; key_bytes]);
    let mut digest = [0u8; DIGEST_LEN];
    for (i, s) in h.slots.iter().enumerate() {
        if s.active != SLOT_ENABLED {
            continue;
        }
        hash.pbkdf2(passphrase, &s.salt, s.iterations, &mut derived)?;
        let mut material = read_bytes(
            dev,
            s.material_offset as u64 * 512,
            material_len,
            &format!("LUKS keyslot {i}"),
        )?;
        decrypt_keyslot(&cipher, &derived, &mut material)?;
        kdf::af_merge(&material, STRIPES as usize, hash, &mut key)?;
        hash.pbkdf2(&key, &h.mk_salt, h.mk_iterations, &mut digest)?;
        if digest == h.mk_digest {
            return Ok(Volume {
                cipher,
                key,
                iv_offset: 0,
                offset: h.payload_offset as u64,
                size: None,
                sector_size: 512,
                flags: Default::default(),
                uuid: h.uuid,
                keyslot: i as u32,
            });
        }
    }
    Err(DmError::new(libc::EPERM, NO_KEY))
}
