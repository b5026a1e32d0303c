//! The hashes and key derivations of LUKS and plain mode: PBKDF2 over a named hash, Argon2i and
//! Argon2id, the anti-forensic merge (LUKS1's `AF_merge`, also LUKS2's `luks1` AF) and plain
//! mode's passphrase hashing (cryptsetup's `crypt_plain_hash`).
//!
//! Every cost comes from the image, so every cost is bounded before any work starts (the caps
//! below): a hostile header is refused with a line, never by running out of memory or time.

use hmac::Hmac;
use sha2::Digest;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{DmError, DmResult};

/// PBKDF2 iterations above this are refused. cryptsetup benchmarks a key slot to take about
/// two seconds (`--iter-time` may ask for more); a fast machine reaches some millions of
/// iterations then, so this leaves room for long iteration times and still bounds a hostile
/// header's cost to under a minute or so of one core.
pub const MAX_PBKDF2_ITERATIONS: u32 = 1 << 27;

/// Argon2 memory above this (KiB) is refused: cryptsetup's own limit (`crypt_pbkdf_get_limits`,
/// 4 GiB); it never makes a key slot that needs more. The machine's memory bounds it further
/// (`argon2_memory_cap`).
pub const MAX_ARGON2_MEMORY_KIB: u32 = 4 * 1024 * 1024;

/// Argon2 lanes above this are refused: cryptsetup's `max_parallel`.
pub const MAX_ARGON2_PARALLEL: u32 = 4;

/// Argon2 passes times memory (KiB) above this is refused: the work of one derivation. A key
/// slot cryptsetup benchmarks (up to 1 GiB and the passes that fit in its time) stays far
/// below; a header asking for more would keep a core busy for minutes.
pub const MAX_ARGON2_WORK_KIB: u64 = 64 * 1024 * 1024;

/// Key sizes (bytes) above this are refused: dm-crypt's keys are at most a few hundred bits
/// (xts with two AES-256 keys is 64 bytes), and a key slot's split material is 4000 times the
/// key, which this keeps small.
pub const MAX_KEY_BYTES: usize = 256;

/// The hashes LUKS headers and plain mode name that dmfs computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hash {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
    Ripemd160,
}

macro_rules! each_hash {
    ($h:expr, $D:ident => $body:expr) => {
        match $h {
            Hash::Sha1 => {
                type $D = sha1::Sha1;
                $body
            }
            Hash::Sha224 => {
                type $D = sha2::Sha224;
                $body
            }
            Hash::Sha256 => {
                type $D = sha2::Sha256;
                $body
            }
            Hash::Sha384 => {
                type $D = sha2::Sha384;
                $body
            }
            Hash::Sha512 => {
                type $D = sha2::Sha512;
                $body
            }
            Hash::Ripemd160 => {
                type $D = ripemd::Ripemd160;
                $body
            }
        }
    };
}

impl Hash {
    /// cryptsetup's name of a hash (as in a header or `--hash`), case-insensitive as its
    /// crypto backend takes it.
    pub fn parse(name: &str) -> DmResult<Hash> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "sha1" => Hash::Sha1,
            "sha224" => Hash::Sha224,
            "sha256" => Hash::Sha256,
            "sha384" => Hash::Sha384,
            "sha512" => Hash::Sha512,
            "ripemd160" => Hash::Ripemd160,
            _ => {
                return Err(DmError::invalid(format!(
                    "Hash algorithm {name} is not supported."
                )));
            }
        })
    }

    /// The digest's length in bytes.
    pub fn size(self) -> usize {
        each_hash!(self, D => <D as Digest>::output_size())
    }

    /// The digest of the concatenated `parts`, its first `out.len()` bytes into `out`.
    pub(super) fn digest_into(self, parts: &[&[u8]], out: &mut [u8]) {
        each_hash!(self, D => {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            let mut full = d.finalize();
            out.copy_from_slice(&full[..out.len()]);
            full.as_mut_slice().zeroize();
        })
    }

    /// PBKDF2-HMAC over this hash.
    pub fn pbkdf2(
        self,
        password: &[u8],
        salt: &[u8],
        iterations: u32,
        out: &mut [u8],
    ) -> DmResult<()> {
        check_pbkdf2_iterations(iterations)?;
        each_hash!(self, D => pbkdf2::pbkdf2::<Hmac<D>>(password, salt, iterations, out))
            .map_err(|_| DmError::invalid("PBKDF2: invalid output length"))
    }
}

/// Iterations 0 derive nothing; more than the cap is a hostile header.
pub fn check_pbkdf2_iterations(iterations: u32) -> DmResult<()> {
    if iterations == 0 {
        return Err(DmError::invalid("PBKDF2 iterations 0 are invalid"));
    }
    if iterations > MAX_PBKDF2_ITERATIONS {
        return Err(DmError::invalid(format!(
            "PBKDF2 iterations {iterations} are more than dmfs accepts ({MAX_PBKDF2_ITERATIONS})"
        )));
    }
    Ok(())
}

/// Which Argon2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Argon2Kind {
    I,
    Id,
}

/// Argon2 costs as a LUKS2 key slot gives them.
#[derive(Clone, Copy, Debug)]
pub struct Argon2Cost {
    pub kind: Argon2Kind,
    /// Passes (`time`).
    pub time: u32,
    /// KiB (`memory`).
    pub memory: u32,
    /// Lanes (`cpus`).
    pub parallel: u32,
}

/// Half the machine's memory, in KiB: cryptsetup never lets a key slot it makes need more
/// (`adjusted_phys_memory`), so a header that does came from elsewhere.
fn argon2_memory_cap() -> u64 {
    // SAFETY: sysconf only reads system configuration.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || page <= 0 {
        return MAX_ARGON2_MEMORY_KIB as u64;
    }
    let half = (pages as u64).saturating_mul(page as u64) / 1024 / 2;
    half.min(MAX_ARGON2_MEMORY_KIB as u64)
}

impl Argon2Cost {
    /// Refuses what no cryptsetup key slot asks for, and what would run this machine out of
    /// memory or keep it busy for minutes.
    pub fn check(&self) -> DmResult<()> {
        let name = match self.kind {
            Argon2Kind::I => "argon2i",
            Argon2Kind::Id => "argon2id",
        };
        if self.time == 0 {
            return Err(DmError::invalid(format!("{name}: time cost 0 is invalid")));
        }
        if self.parallel == 0 || self.parallel > MAX_ARGON2_PARALLEL {
            return Err(DmError::invalid(format!(
                "{name}: parallel cost {} is outside 1-{MAX_ARGON2_PARALLEL}",
                self.parallel
            )));
        }
        // Argon2 needs 8 blocks of 1 KiB per lane; cryptsetup's floor is 32 KiB.
        let floor = 32.max(8 * self.parallel);
        if self.memory < floor {
            return Err(DmError::invalid(format!(
                "{name}: memory cost {} KiB is less than {floor} KiB",
                self.memory
            )));
        }
        if self.memory > MAX_ARGON2_MEMORY_KIB {
            return Err(DmError::invalid(format!(
                "{name}: memory cost {} KiB is more than cryptsetup's maximum ({MAX_ARGON2_MEMORY_KIB} KiB)",
                self.memory
            )));
        }
        let cap = argon2_memory_cap();
        if self.memory as u64 > cap {
            return Err(DmError::invalid(format!(
                "{name}: memory cost {} KiB is more than half of this machine's memory ({cap} KiB)",
                self.memory
            )));
        }
        let work = self.time as u64 * self.memory as u64;
        if work > MAX_ARGON2_WORK_KIB {
            return Err(DmError::invalid(format!(
                "{name}: time cost {} with memory {} KiB is more work than dmfs accepts ({MAX_ARGON2_WORK_KIB} KiB passes)",
                self.time, self.memory
            )));
        }
        Ok(())
    }

    pub fn derive(&self, password: &[u8], salt: &[u8], out: &mut [u8]) -> DmResult<()> {
        self.check()?;
        let algorithm = match self.kind {
            Argon2Kind::I => argon2::Algorithm::Argon2i,
            Argon2Kind::Id => argon2::Algorithm::Argon2id,
        };
        let params = argon2::Params::new(self.memory, self.time, self.parallel, Some(out.len()))
            .map_err(|e| DmError::invalid(format!("argon2: {e}")))?;
        argon2::Argon2::new(algorithm, argon2::Version::V0x13, params)
            .hash_password_into(password, salt, out)
            .map_err(|e| DmError::invalid(format!("argon2: {e}")))
    }
}

/// The anti-forensic merge (cryptsetup's `AF_merge`): `split` holds `stripes` blocks of
/// `out.len()` bytes; every block but the last is XORed into a buffer that is diffused with
/// `hash` after each, the last XORed in gives the key.
pub fn af_merge(split: &[u8], stripes: usize, hash: Hash, out: &mut [u8]) -> DmResult<()> {
    let size = out.len();
    if stripes == 0 || split.len() < size * stripes {
        return Err(DmError::invalid(
            "anti-forensic split material is too short",
        ));
    }
    let mut buf = Zeroizing::new(vec![0u8; size]);
    for block in split.chunks_exact(size).take(stripes - 1) {
        for (b, s) in buf.iter_mut().zip(block) {
            *b ^= s;
        }
        diffuse(&mut buf, hash);
    }
    let last = &split[size * (stripes - 1)..size * stripes];
    for ((o, b), s) in out.iter_mut().zip(buf.iter()).zip(last) {
        *o = b ^ s;
    }
    Ok(())
}

/// cryptsetup's `diffuse`: each digest-sized piece (and a shorter last one) replaced by the
/// hash of its index (big-endian u32) and itself, cut to its length.
fn diffuse(buf: &mut [u8], hash: Hash) {
    let digest = hash.size();
    let mut piece = Zeroizing::new(vec![0u8; digest]);
    for (i, chunk) in buf.chunks_mut(digest).enumerate() {
        let iv = (i as u32).to_be_bytes();
        let n = chunk.len();
        hash.digest_into(&[&iv, chunk], &mut piece[..n]);
        chunk.copy_from_slice(&piece[..n]);
    }
}

/// Plain mode's key from a passphrase (cryptsetup's `crypt_plain_hash`): `hash[:len]`; the
/// hash's output is stretched to the key's length by hashing again with one more "A" in front
/// each round; with `:len` only `len` bytes are hashed and the rest are zeros; `plain` copies
/// the passphrase (then at least `len` bytes of it are needed).
pub fn plain_hash(spec: &str, passphrase: &[u8], key: &mut [u8]) -> DmResult<()> {
    let (name, hash_len) = match spec.split_once(':') {
        Some((name, len)) => {
            let len: usize = len
                .parse()
                .ok()
                .filter(|&l| l <= key.len())
                .ok_or_else(|| {
                    DmError::invalid(format!("Key processing error (using hash {spec})."))
                })?;
            (name, len)
        }
        None => (spec, key.len()),
    };
    key.fill(0);
    if name == "plain" {
        if passphrase.len() < hash_len {
            return Err(DmError::invalid(format!(
                "Key processing error (using hash {spec})."
            )));
        }
        key[..hash_len].copy_from_slice(&passphrase[..hash_len]);
        return Ok(());
    }
    let hash = Hash::parse(name)
        .map_err(|_| DmError::invalid(format!("Hash algorithm {name} not supported.")))?;
    let mut done = 0;
    let mut prefix = Zeroizing::new(Vec::new());
    while done < hash_len {
        let n = hash.size().min(hash_len - done);
        hash.digest_into(&[&prefix, passphrase], &mut key[done..done + n]);
        done += n;
        prefix.push(b'A');
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn plain_hash_as_cryptsetup() {
        // From fixtures/kernel/luks/luks.out: plain-sha256-512 and plain-hash-len.
        let mut k = [0u8; 64];
        plain_hash("sha256", b"correct horse", &mut k).unwrap();
        assert_eq!(
            hex(&k),
            "4104d36f8da2c254349f85836793ebe029e0c957063a34c91c2e9203187b5631\
             c51aefc7f409f4df0888cd78c638b969db451fa1e040e06e2a9ed77f2ae083d5"
        );
        let mut k = [0u8; 32];
        plain_hash("sha256:20", b"correct horse", &mut k).unwrap();
        assert_eq!(
            hex(&k),
            "4104d36f8da2c254349f85836793ebe029e0c957000000000000000000000000"
        );
        let mut k = [0u8; 32];
        plain_hash("ripemd160", b"correct horse", &mut k).unwrap();
        assert_eq!(
            hex(&k),
            "424573ebba1ce1abc618a416178f79ad83442dfccd852f665c5536c935adea5c"
        );
        assert_eq!(
            plain_hash("plain:16", b"short", &mut k).unwrap_err().reason,
            "Key processing error (using hash plain:16)."
        );
    }

    #[test]
    fn hostile_costs_are_refused_before_any_work() {
        let c = |time, memory, parallel| Argon2Cost {
            kind: Argon2Kind::Id,
            time,
            memory,
            parallel,
        };
        assert!(c(4, 4096, 1).check().is_ok());
        assert!(c(0, 4096, 1).check().is_err());
        assert!(c(4, 4096, 0).check().is_err());
        assert!(c(4, 4096, 5).check().is_err());
        assert!(c(4, 16, 1).check().is_err());
        assert!(c(4, u32::MAX, 1).check().is_err());
        assert!(c(u32::MAX, 4096, 1).check().is_err());
        assert!(check_pbkdf2_iterations(0).is_err());
        assert!(check_pbkdf2_iterations(u32::MAX).is_err());
    }
}
