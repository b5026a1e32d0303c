//! Plain dm-crypt (`cryptsetup open --type plain`): no header; the key is the passphrase
//! hashed as cryptsetup hashes it (`kdf::plain_hash`), and everything else comes from the
//! command line, with cryptsetup 2.6.1's defaults (its `configure.ac`): aes-cbc-essiv:sha256,
//! a 256-bit key, the passphrase hashed with ripemd160, offset and skip 0, 512-byte sectors.

use zeroize::Zeroizing;

use super::kdf::{self, MAX_KEY_BYTES};
use super::{Secret, check_sector_size};
use crate::error::{DmError, DmResult};

/// `--cipher`, `--key-size`, `--hash`, `--offset`, `--skip`, `--size`, `--sector-size`,
/// `--iv-large-sectors`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlainParams {
    /// `cipher-chainmode-ivmode`; a bare cipher name means `cbc-plain`, as cryptsetup reads it.
    pub cipher: String,
    /// Bits.
    pub key_bits: u32,
    /// `hash[:len]` or `plain`; `None`: the passphrase (a key file's bytes) is the key, cut
    /// or padded with zeros to the key's size (cryptsetup with `--key-file`).
    pub hash: Option<String>,
    /// Sectors: where the data starts on the device.
    pub offset: u64,
    /// Sectors: the IV of the first sector (`--skip`, the table's iv_offset).
    pub skip: u64,
    /// Sectors; `None`: to the device's end.
    pub size: Option<u64>,
    pub sector_size: u32,
    pub iv_large_sectors: bool,
}

impl Default for PlainParams {
    fn default() -> PlainParams {
        PlainParams {
            cipher: "aes-cbc-essiv:sha256".to_string(),
            key_bits: 256,
            hash: Some("ripemd160".to_string()),
            offset: 0,
            skip: 0,
            size: None,
            sector_size: 512,
            iv_large_sectors: false,
        }
    }
}

/// The table's cipher and the key, checked as cryptsetup checks the parameters.
pub(super) fn key(p: &PlainParams, passphrase: &[u8]) -> DmResult<(String, Secret)> {
    let cipher = match p.cipher.split_once('-') {
        Some((name, mode)) if !name.is_empty() && !mode.is_empty() => p.cipher.clone(),
        None if !p.cipher.is_empty() => format!("{}-cbc-plain", p.cipher),
        _ => {
            return Err(DmError::invalid(
                "No known cipher specification pattern detected.",
            ));
        }
    };
    if !cipher.bytes().all(|c| c.is_ascii_graphic()) {
        return Err(DmError::invalid(
            "No known cipher specification pattern detected.",
        ));
    }
    if p.key_bits == 0 || !p.key_bits.is_multiple_of(8) || p.key_bits as usize / 8 > MAX_KEY_BYTES {
        return Err(DmError::invalid(format!(
            "key size {} bits is not a whole number of bytes from 8 to {} bits",
            p.key_bits,
            MAX_KEY_BYTES * 8
        )));
    }
    check_sector_size(p.sector_size)?;
    if p.iv_large_sectors && p.sector_size == 512 {
        return Err(DmError::invalid(
            "Large IV sectors option is supported only for opening plain type device with sector size larger than 512 bytes.",
        ));
    }
    let mut key: Secret = Zeroizing::new(vec![0u8; p.key_bits as usize / 8]);
    match p.hash.as_deref() {
        // cryptsetup's CLI takes --hash plain as no hash at all (action_open_plain).
        None | Some("plain") => {
            let n = passphrase.len().min(key.len());
            key[..n].copy_from_slice(&passphrase[..n]);
        }
        Some(spec) => kdf::plain_hash(spec, passphrase, &mut key)?,
    }
    Ok((cipher, key))
}
