//! LUKS1, LUKS2 and plain dm-crypt volumes read as `cryptsetup open --disable-keyring` reads
//! them (cryptsetup 2.6.1), turned into the one-line `crypt` table it would load.
//!
//! Like the other readers of `activate/`, these only read, through a `SectorSource`, and
//! produce a table; making the device is the caller's business. The table names the data
//! device by the reference the caller gives (a path), where cryptsetup has its major:minor.
//!
//! - `luks1`: the binary header (big-endian), eight key slots, PBKDF2 with the header's hash,
//!   the anti-forensic merge, the master-key digest.
//! - `luks2`: both binary headers with their checksums, the newer valid one, its JSON area
//!   (bounded as LUKS2 bounds it), key slots of type `luks2` with pbkdf2, argon2i or argon2id,
//!   the pbkdf2 digest, the one `crypt` segment; a detached header is just another source.
//! - `plain`: no header, cryptsetup's defaults and its hashing of the passphrase.
//!
//! A key slot's material is decrypted with the sector cipher of `crate::crypt`, as cryptsetup
//! decrypts it with dm-crypt's. Keys and the table text live in zeroized buffers.

mod kdf;
mod luks1;
mod luks2;
mod plain;

use zeroize::Zeroizing;

pub use kdf::{MAX_ARGON2_MEMORY_KIB, MAX_ARGON2_PARALLEL, MAX_KEY_BYTES, MAX_PBKDF2_ITERATIONS};
pub use plain::PlainParams;

use super::partitions::SectorSource;
use crate::error::{DmError, DmResult};
use crate::secret::Secret;
use crate::units::Sectors;

/// What cryptsetup says, and `cryptsetup open` exits 2 with, when no key slot opens.
pub const NO_KEY: &str = "No key available with this passphrase.";

/// Which header an image starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Luks1,
    Luks2,
}

/// The header an image holds, if any, as cryptsetup tells (`_crypt_load_luks`): the primary
/// header's magic `LUKS\xba\xbe` and its version; without that magic, a LUKS2 secondary header
/// at one of the offsets LUKS2 allows (cryptsetup then reads the LUKS2 header from it). A
/// version other than 1 or 2 is cryptsetup's `Unsupported LUKS version N.`
pub fn detect(header: &dyn SectorSource) -> DmResult<Option<Kind>> {
    if header.size().0 == 0 {
        return Ok(None);
    }
    let mut sector = [0u8; 512];
    header
        .read_at(Sectors(0), &mut sector)
        .map_err(|e| DmError::io("reading the LUKS header", &e))?;
    if &sector[..6] != luks1::MAGIC {
        return Ok(luks2::has_secondary(header).then_some(Kind::Luks2));
    }
    match u16::from_be_bytes([sector[6], sector[7]]) {
        1 => Ok(Some(Kind::Luks1)),
        2 => Ok(Some(Kind::Luks2)),
        v => Err(DmError::invalid(format!("Unsupported LUKS version {v}."))),
    }
}

/// The uuid of the LUKS volume whose header `header` holds (`cryptsetup luksUUID`), which
/// names its device as distributions name it (`luks-<UUID>`); `None` without a LUKS header.
pub fn uuid(header: &dyn SectorSource) -> DmResult<Option<String>> {
    Ok(match detect(header)? {
        None => None,
        Some(Kind::Luks1) => Some(luks1::uuid(header)?),
        Some(Kind::Luks2) => Some(luks2::uuid(header)?),
    })
}

/// The activation flags of a crypt table (cryptsetup's `--allow-discards`, `--perf-*`), which
/// a LUKS2 header may also carry (`config.flags`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    pub allow_discards: bool,
    pub same_cpu_crypt: bool,
    pub submit_from_crypt_cpus: bool,
    pub no_read_workqueue: bool,
    pub no_write_workqueue: bool,
}

impl Flags {
    fn or(self, o: Flags) -> Flags {
        Flags {
            allow_discards: self.allow_discards || o.allow_discards,
            same_cpu_crypt: self.same_cpu_crypt || o.same_cpu_crypt,
            submit_from_crypt_cpus: self.submit_from_crypt_cpus || o.submit_from_crypt_cpus,
            no_read_workqueue: self.no_read_workqueue || o.no_read_workqueue,
            no_write_workqueue: self.no_write_workqueue || o.no_write_workqueue,
        }
    }
}

/// How a LUKS volume is opened.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenOptions {
    /// Accept only this version (`--type luks1`/`luks2`); `None` takes either (`--type luks`).
    pub kind: Option<Kind>,
    /// Flags added to the header's own.
    pub flags: Flags,
}

/// An opened volume: its one table line, as the kernel prints it back (`dmsetup table
/// --showkeys`), and what it is.
pub struct Opened {
    /// `0 LEN crypt CIPHER HEXKEY IV_OFFSET REFERENCE OFFSET [N OPTIONS]`.
    pub table: Zeroizing<String>,
    pub kind: Option<Kind>,
    /// The LUKS uuid (empty for plain mode).
    pub uuid: String,
    /// The key slot that opened (LUKS).
    pub keyslot: Option<u32>,
}

impl Opened {
    /// The device-mapper uuid cryptsetup gives the device (`dm_prepare_uuid`):
    /// `CRYPT-LUKS2-<uuid without dashes>-NAME`, `CRYPT-PLAIN-NAME`.
    pub fn dm_uuid(&self, name: &str) -> String {
        let kind = match self.kind {
            Some(Kind::Luks1) => "LUKS1",
            Some(Kind::Luks2) => "LUKS2",
            None => "PLAIN",
        };
        let uuid: String = self.uuid.chars().filter(|&c| c != '-').collect();
        if uuid.is_empty() {
            format!("CRYPT-{kind}-{name}")
        } else {
            format!("CRYPT-{kind}-{uuid}-{name}")
        }
    }
}

/// Opens a LUKS volume whose header is on `header` (the data device itself, or a detached
/// header) and whose data is on a device of `data_size` sectors, which the table calls
/// `reference`. A passphrase no key slot takes fails with EPERM and `NO_KEY`; a damaged or
/// hostile header with EINVAL and one line.
pub fn open(
    header: &dyn SectorSource,
    data_size: Sectors,
    reference: &str,
    passphrase: &[u8],
    opts: &OpenOptions,
) -> DmResult<Opened> {
    let found = detect(header)?;
    let kind = match (found, opts.kind) {
        (Some(k), None) => k,
        (Some(k), Some(want)) if k == want => k,
        _ => {
            return Err(DmError::invalid(format!(
                "Device {reference} is not a valid LUKS device."
            )));
        }
    };
    let volume = match kind {
        Kind::Luks1 => luks1::open(header, passphrase)?,
        Kind::Luks2 => luks2::open(header, passphrase)?,
    };
    let table = CryptLine {
        cipher: &volume.cipher,
        key: &volume.key,
        iv_offset: volume.iv_offset,
        reference,
        offset: volume.offset,
        size: volume.size,
        sector_size: volume.sector_size,
        iv_large_sectors: false,
        flags: volume.flags.or(opts.flags),
    }
    .format(data_size)?;
    Ok(Opened {
        table,
        kind: Some(kind),
        uuid: volume.uuid,
        keyslot: Some(volume.keyslot),
    })
}

/// Opens a plain dm-crypt volume on a device of `data_size` sectors called `reference`.
pub fn open_plain(
    params: &PlainParams,
    data_size: Sectors,
    reference: &str,
    passphrase: &[u8],
    flags: Flags,
) -> DmResult<Opened> {
    let (cipher, key) = plain::key(params, passphrase)?;
    let table = CryptLine {
        cipher: &cipher,
        key: &key,
        iv_offset: params.skip,
        reference,
        offset: params.offset,
        size: params.size,
        sector_size: params.sector_size,
        iv_large_sectors: params.iv_large_sectors,
        flags,
    }
    .format(data_size)?;
    Ok(Opened {
        table,
        kind: None,
        uuid: String::new(),
        keyslot: None,
    })
}

/// What a LUKS reader found: the volume key and the data segment.
struct Volume {
    cipher: String,
    key: Secret,
    /// Sectors.
    iv_offset: u64,
    /// Sectors: where the data starts on the data device.
    offset: u64,
    /// Sectors; `None`: to the end of the data device.
    size: Option<u64>,
    sector_size: u32,
    flags: Flags,
    uuid: String,
    keyslot: u32,
}

/// The parts of a crypt table line.
struct CryptLine<'a> {
    cipher: &'a str,
    key: &'a [u8],
    iv_offset: u64,
    reference: &'a str,
    offset: u64,
    size: Option<u64>,
    sector_size: u32,
    iv_large_sectors: bool,
    flags: Flags,
}

impl CryptLine<'_> {
    /// The line, checked against the data device's size as cryptsetup checks it
    /// (`device_block_adjust`), its optional parameters in the order the kernel prints them.
    fn format(&self, data_size: Sectors) -> DmResult<Zeroizing<String>> {
        let r = self.reference;
        if self.offset >= data_size.0 {
            return Err(DmError::invalid(format!(
                "Requested offset is beyond real size of device {r}."
            )));
        }
        let room = data_size.0 - self.offset;
        let size = match self.size {
            Some(s) if s > room => {
                return Err(DmError::invalid(format!("Device {r} is too small.")));
            }
            Some(s) => s,
            None => room,
        };
        if size % (self.sector_size as u64 / 512) != 0 {
            return Err(DmError::invalid(
                "Device size is not aligned to requested sector size.",
            ));
        }
        let f = &self.flags;
        let mut options: Vec<String> = Vec::new();
        for (on, name) in [
            (f.allow_discards, "allow_discards"),
            (f.same_cpu_crypt, "same_cpu_crypt"),
            (f.submit_from_crypt_cpus, "submit_from_crypt_cpus"),
            (f.no_read_workqueue, "no_read_workqueue"),
            (f.no_write_workqueue, "no_write_workqueue"),
        ] {
            if on {
                options.push(name.to_string());
            }
        }
        if self.sector_size != 512 {
            options.push(format!("sector_size:{}", self.sector_size));
        }
        if self.iv_large_sectors {
            options.push("iv_large_sectors".to_string());
        }
        // Room for every part, so the text holding the key is never moved (a move would
        // leave a copy behind in the freed buffer).
        let mut line = Zeroizing::new(String::with_capacity(
            256 + self.cipher.len() + 2 * self.key.len() + r.len(),
        ));
        use std::fmt::Write;
        let _ = write!(line, "0 {size} crypt {} ", self.cipher);
        for b in self.key {
            let _ = write!(line, "{b:02x}");
        }
        let _ = write!(line, " {} {r} {}", self.iv_offset, self.offset);
        if !options.is_empty() {
            let _ = write!(line, " {} {}", options.len(), options.join(" "));
        }
        Ok(line)
    }
}

/// Checks a sector size as dm-crypt takes it: a power of two from 512 to 4096.
fn check_sector_size(sector_size: u32) -> DmResult<()> {
    if !(512..=4096).contains(&sector_size) || !sector_size.is_power_of_two() {
        return Err(DmError::invalid(format!(
            "sector size {sector_size} is not a power of two from 512 to 4096"
        )));
    }
    Ok(())
}

/// Decrypts a key slot's material (`buf`, whole 512-byte sectors) with the volume's cipher and
/// the key derived from the passphrase, IVs counted from the slot's first sector, as
/// cryptsetup's `LUKS_decrypt_from_storage` does.
fn decrypt_keyslot(cipher: &str, key: &[u8], buf: &mut [u8]) -> DmResult<()> {
    let failed = |e: String| DmError::invalid(format!("key slot cipher {cipher}: {e}"));
    let spec = crate::crypt::CipherSpec::parse(cipher).map_err(failed)?;
    let engine = crate::crypt::SectorCipher::new(&spec, key, 512, false).map_err(failed)?;
    engine.decrypt(buf, 0);
    Ok(())
}

/// Reads `len` bytes from byte `offset` of `dev`, which must be sector-aligned, checking the
/// range lies inside it first; `what` names it in the error.
fn read_bytes(dev: &dyn SectorSource, offset: u64, len: usize, what: &str) -> DmResult<Secret> {
    let end = offset.checked_add(len as u64);
    if !offset.is_multiple_of(512)
        || !len.is_multiple_of(512)
        || end.is_none_or(|e| e > dev.size().bytes().0)
    {
        return Err(DmError::invalid(format!(
            "{what} (bytes {offset}-{}) lies outside the device",
            offset.saturating_add(len as u64)
        )));
    }
    let mut buf = Zeroizing::new(vec![0u8; len]);
    dev.read_at(Sectors(offset / 512), &mut buf)
        .map_err(|e| DmError::io(format!("reading {what}"), &e))?;
    Ok(buf)
}
