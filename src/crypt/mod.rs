//! The sector cipher engine of dm-crypt: a cipher specification as the kernel's `crypt_ctr_cipher`
//! reads it (`aes-xts-plain64`, `aes-cbc-essiv:sha256`, `capi:xts(aes)-plain64`, `aes-ecb`, ...),
//! key material that is zeroed when dropped, and a keyed engine that encrypts and decrypts whole
//! sectors with the IV the kernel would give each of them.
//!
//! Only RustCrypto primitives do the cryptography (`aes` for the block cipher, `sha1`/`sha2` for
//! ESSIV's salt); this module arranges them into the kernel's chaining and IV modes. Errors are
//! the kernel's words (`ti->error`) where the kernel refuses the same thing, and never contain
//! key bytes.

mod engine;
mod spec;

pub use engine::SectorCipher;
pub use spec::{BlockCipher, Chain, CipherSpec, EssivHash, IvMode};

use std::fmt;

use zeroize::Zeroize;

/// Key material. Zeroed when dropped; its `Debug` shows the length only.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(Vec<u8>);

impl Key {
    pub fn new(bytes: Vec<u8>) -> Key {
        Key(bytes)
    }

    /// The kernel's reading of a hex key (`crypt_set_key`): `-` is no key; otherwise the key
    /// is `len / 2` bytes decoded from the first `2 * (len / 2)` characters (`hex2bin`, either
    /// case). `None` where the kernel says "Error decoding and setting key".
    pub fn from_kernel_hex(text: &str) -> Option<Key> {
        if text == "-" {
            return Some(Key(Vec::new()));
        }
        let size = text.len() / 2;
        if size == 0 {
            return None;
        }
        let digits = text.as_bytes();
        let mut bytes = Vec::with_capacity(size);
        for pair in digits[..size * 2].chunks_exact(2) {
            match (hex_value(pair[0]), hex_value(pair[1])) {
                (Some(hi), Some(lo)) => bytes.push(hi << 4 | lo),
                _ => {
                    bytes.zeroize();
                    return None;
                }
            }
        }
        Some(Key(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The key as `dmsetup table --showkeys` prints it (`crypt_status`): lowercase hex, or `-`
    /// for no key.
    pub fn to_kernel_hex(&self) -> String {
        if self.0.is_empty() {
            return "-".to_string();
        }
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = String::with_capacity(self.0.len() * 2);
        for &b in &self.0 {
            text.push(DIGITS[usize::from(b >> 4)] as char);
            text.push(DIGITS[usize::from(b & 15)] as char);
        }
        text
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({} bytes)", self.0.len())
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
