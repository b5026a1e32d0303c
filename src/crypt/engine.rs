//! The keyed engine: whole sectors in place, each with the IV dm-crypt gives it.

use aes::cipher::inout::InOutBuf;
use aes::cipher::typenum::U16;
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use aes::{Aes128, Aes192, Aes256, Block};
use sha2::Digest;
use zeroize::Zeroize;

use super::spec::{BlockCipher, Chain, CipherSpec, EssivHash, IvMode};

/// The largest sector dm-crypt takes (`sector_size:4096`): bounds the per-sector stack buffers.
const MAX_SECTOR: usize = 4096;
/// How many bytes of small sectors XTS whitens and encrypts per block-cipher call.
const XTS_BATCH: usize = 4096;
/// How many sectors' CBC chains are encrypted side by side (AES-NI works on 8 blocks at once).
const CBC_LANES: usize = 8;

/// AES with whichever key size the key has (boxed: the key schedules are large). The `aes` crate picks AES-NI at run time and
/// zeroes its key schedules when dropped.
enum Aes {
    A128(Box<Aes128>),
    A192(Box<Aes192>),
    A256(Box<Aes256>),
}

macro_rules! each_aes {
    ($self:expr, $c:ident => $body:expr) => {
        match $self {
            Aes::A128($c) => $body,
            Aes::A192($c) => $body,
            Aes::A256($c) => $body,
        }
    };
}

impl Aes {
    fn new(key: &[u8]) -> Option<Aes> {
        match key.len() {
            16 => Aes128::new_from_slice(key)
                .ok()
                .map(|c| Aes::A128(Box::new(c))),
            24 => Aes192::new_from_slice(key)
                .ok()
                .map(|c| Aes::A192(Box::new(c))),
            32 => Aes256::new_from_slice(key)
                .ok()
                .map(|c| Aes::A256(Box::new(c))),
            _ => None,
        }
    }

    /// Encrypts whole 16-byte blocks of `data` in place, as many at a time as the CPU can.
    fn encrypt_blocks(&self, data: &mut [u8]) {
        let (blocks, _) = InOutBuf::from(data).into_chunks::<U16>();
        each_aes!(self, c => c.encrypt_blocks_inout(blocks))
    }

    fn decrypt_blocks(&self, data: &mut [u8]) {
        let (blocks, _) = InOutBuf::from(data).into_chunks::<U16>();
        each_aes!(self, c => c.decrypt_blocks_inout(blocks))
    }

    /// Decrypts whole blocks of `input` into `output` (same length).
    fn decrypt_blocks_into(&self, input: &[u8], output: &mut [u8]) {
        let buf = InOutBuf::new(input, output).expect("same length");
        let (blocks, _) = buf.into_chunks::<U16>();
        each_aes!(self, c => c.decrypt_blocks_inout(blocks))
    }

    fn encrypt_block(&self, block: &mut [u8; 16]) {
        let b = Block::from_mut_slice(block);
        each_aes!(self, c => c.encrypt_block(b))
    }
}

enum Mode {
    /// `ecb(cipher_null)`: bytes pass through.
    Null,
    Ecb(Aes),
    Cbc(Aes),
    /// The data key and the tweak key (the key's first and second half).
    Xts(Aes, Aes),
}

enum Iv {
    None,
    Plain,
    Plain64,
    Plain64Be,
    /// The IV cipher, keyed with the hash of the whole key.
    Essiv(Aes),
    Benbi,
    Null,
}

/// A keyed dm-crypt engine. `Send + Sync`: one per target, shared by every I/O thread.
pub struct SectorCipher {
    mode: Mode,
    iv: Iv,
    sector_size: usize,
    /// log2(sector_size / 512): how many 512-byte sectors one step of the IV sector covers.
    sector_shift: u32,
    iv_large_sectors: bool,
}

impl SectorCipher {
    /// Keys an engine for `spec`. `sector_size` is a power of two from 512 to 4096; with
    /// `iv_large_sectors` the IV counts sectors of that size, else 512-byte sectors.
    pub fn new(
        spec: &CipherSpec,
        key: &[u8],
        sector_size: u32,
        iv_large_sectors: bool,
    ) -> Result<SectorCipher, String> {
        if !(512..=MAX_SECTOR as u32).contains(&sector_size) || !sector_size.is_power_of_two() {
            return Err("Invalid feature value for sector_size".to_string());
        }
        spec.key_size_ok(key.len())?;
        let bad_key = || "Error decoding and setting key".to_string();
        let mode = match (spec.cipher, spec.chain) {
            (BlockCipher::Null, _) => Mode::Null,
            (BlockCipher::Aes, Chain::Ecb) => Mode::Ecb(Aes::new(key).ok_or_else(bad_key)?),
            (BlockCipher::Aes, Chain::Cbc) => Mode::Cbc(Aes::new(key).ok_or_else(bad_key)?),
            (BlockCipher::Aes, Chain::Xts) => {
                let (data, tweak) = key.split_at(key.len() / 2);
                Mode::Xts(
                    Aes::new(data).ok_or_else(bad_key)?,
                    Aes::new(tweak).ok_or_else(bad_key)?,
                )
            }
        };
        let iv = match spec.iv {
            None => Iv::None,
            Some(IvMode::Plain) => Iv::Plain,
            Some(IvMode::Plain64) => Iv::Plain64,
            Some(IvMode::Plain64Be) => Iv::Plain64Be,
            Some(IvMode::Benbi) => Iv::Benbi,
            Some(IvMode::Null) => Iv::Null,
            Some(IvMode::Essiv(hash)) => {
                let mut salt = match hash {
                    EssivHash::Sha1 => sha1::Sha1::digest(key).to_vec(),
                    EssivHash::Sha256 => sha2::Sha256::digest(key).to_vec(),
                };
                let cipher = Aes::new(&salt);
                salt.zeroize();
                Iv::Essiv(cipher.ok_or_else(bad_key)?)
            }
        };
        Ok(SectorCipher {
            mode,
            iv,
            sector_size: sector_size as usize,
            sector_shift: sector_size.trailing_zeros() - 9,
            iv_large_sectors,
        })
    }

    pub fn sector_size(&self) -> u32 {
        self.sector_size as u32
    }

    /// Encrypts `buf`, whole sectors of `sector_size`; `iv_sector` is the IV sector of its
    /// first sector in 512-byte units (the target's sector plus `iv_offset`).
    pub fn encrypt(&self, buf: &mut [u8], iv_sector: u64) {
        assert!(
            buf.len().is_multiple_of(self.sector_size),
            "crypt: a buffer of whole sectors"
        );
        match &self.mode {
            Mode::Null => {}
            // ECB has no IV and no chain: every block of every sector at once.
            Mode::Ecb(aes) => aes.encrypt_blocks(buf),
            Mode::Cbc(aes) => self.cbc_encrypt(aes, buf, iv_sector),
            Mode::Xts(data_key, tweak_key) => {
                self.xts(buf, iv_sector, tweak_key, |b| data_key.encrypt_blocks(b))
            }
        }
    }

    pub fn decrypt(&self, buf: &mut [u8], iv_sector: u64) {
        if let Mode::Xts(data_key, tweak_key) = &self.mode {
            return self.xts(buf, iv_sector, tweak_key, |b| data_key.decrypt_blocks(b));
        }
        self.each_sector(buf, iv_sector, |this, sector, iv| {
            this.decrypt_sector(sector, iv)
        });
    }

    /// The IV number of the sector whose IV sector in 512-byte units is `cc_sector`.
    fn iv_number(&self, cc_sector: u64) -> u64 {
        if self.iv_large_sectors {
            cc_sector >> self.sector_shift
        } else {
            cc_sector
        }
    }

    /// CBC encryption chains each sector's blocks one after another, so one sector alone
    /// leaves AES-NI waiting on each block. Up to `CBC_LANES` sectors advance together
    /// instead: block j of each, XORed with its own chain, goes to the cipher in one call.
    fn cbc_encrypt(&self, aes: &Aes, buf: &mut [u8], iv_sector: u64) {
        assert!(
            buf.len().is_multiple_of(self.sector_size),
            "crypt: a buffer of whole sectors"
        );
        let ss = self.sector_size;
        let step = 1u64 << self.sector_shift;
        let mut cc_sector = iv_sector;
        for group in buf.chunks_mut(CBC_LANES * ss) {
            let lanes = group.len() / ss;
            let mut chain = [[0u8; 16]; CBC_LANES];
            for c in &mut chain[..lanes] {
                *c = self.iv(self.iv_number(cc_sector));
                cc_sector = cc_sector.wrapping_add(step);
            }
            let mut blocks = [0u8; 16 * CBC_LANES];
            for at in (0..ss).step_by(16) {
                for (lane, c) in chain[..lanes].iter().enumerate() {
                    let src: &[u8; 16] = group[lane * ss + at..][..16].try_into().expect("16");
                    let dst: &mut [u8; 16] = (&mut blocks[lane * 16..][..16])
                        .try_into()
                        .expect("16 bytes");
                    *dst = *src;
                    xor16(dst, c);
                }
                aes.encrypt_blocks(&mut blocks[..16 * lanes]);
                for (lane, c) in chain[..lanes].iter_mut().enumerate() {
                    c.copy_from_slice(&blocks[lane * 16..][..16]);
                    group[lane * ss + at..][..16].copy_from_slice(c);
                }
            }
        }
    }

    /// XTS over a batch of sectors at a time (`XTS_BATCH` bytes, or one larger sector): the
    /// batch's first tweaks encrypted in one call, every block whitened with its tweak, one
    /// block-cipher call over the whole batch, whitened again. Few, large calls keep AES-NI's
    /// pipeline full; the tweaks are recomputed for the second whitening rather than stored.
    fn xts(&self, buf: &mut [u8], iv_sector: u64, tweak_key: &Aes, cipher: impl Fn(&mut [u8])) {
        assert!(
            buf.len().is_multiple_of(self.sector_size),
            "crypt: a buffer of whole sectors"
        );
        let step = 1u64 << self.sector_shift;
        let batch = XTS_BATCH.max(self.sector_size);
        let mut cc_sector = iv_sector;
        for chunk in buf.chunks_mut(batch) {
            let sectors = chunk.len() / self.sector_size;
            let mut first = [0u8; 16 * XTS_BATCH / 512];
            let first = &mut first[..16 * sectors];
            for iv in first.chunks_exact_mut(16) {
                iv.copy_from_slice(&self.iv(self.iv_number(cc_sector)));
                cc_sector = cc_sector.wrapping_add(step);
            }
            tweak_key.encrypt_blocks(first);
            xts_whiten(chunk, self.sector_size, first);
            cipher(chunk);
            xts_whiten(chunk, self.sector_size, first);
        }
    }

    /// Walks the sectors of `buf` as `crypt_convert` does: the IV sector advances by the
    /// sector's size in 512-byte units, and with `iv_large_sectors` it is shifted down to
    /// units of the sector size.
    fn each_sector(
        &self,
        buf: &mut [u8],
        iv_sector: u64,
        mut op: impl FnMut(&Self, &mut [u8], [u8; 16]),
    ) {
        assert!(
            buf.len().is_multiple_of(self.sector_size),
            "crypt: a buffer of whole sectors"
        );
        if let Mode::Null = self.mode {
            return;
        }
        let step = 1u64 << self.sector_shift;
        let mut cc_sector = iv_sector;
        for sector in buf.chunks_exact_mut(self.sector_size) {
            op(self, sector, self.iv(self.iv_number(cc_sector)));
            cc_sector = cc_sector.wrapping_add(step);
        }
    }

    fn iv(&self, n: u64) -> [u8; 16] {
        let mut iv = [0u8; 16];
        match &self.iv {
            Iv::None | Iv::Null => {}
            Iv::Plain => iv[..4].copy_from_slice(&(n as u32).to_le_bytes()),
            Iv::Plain64 => iv[..8].copy_from_slice(&n.to_le_bytes()),
            Iv::Plain64Be => iv[8..].copy_from_slice(&n.to_be_bytes()),
            // The kernel's benbi shift for a 16-byte block: 9 - log2(16).
            Iv::Benbi => iv[8..].copy_from_slice(&((n << 5).wrapping_add(1)).to_be_bytes()),
            Iv::Essiv(cipher) => {
                iv[..8].copy_from_slice(&n.to_le_bytes());
                cipher.encrypt_block(&mut iv);
            }
        }
        iv
    }

    fn decrypt_sector(&self, data: &mut [u8], iv: [u8; 16]) {
        match &self.mode {
            Mode::Null => {}
            Mode::Ecb(aes) => aes.decrypt_blocks(data),
            Mode::Cbc(aes) => {
                let mut saved = [0u8; MAX_SECTOR];
                let saved = &mut saved[..data.len()];
                saved.copy_from_slice(data);
                aes.decrypt_blocks_into(saved, data);
                let (first, rest) = data.split_at_mut(16);
                xor16(first.try_into().expect("16 bytes"), &iv);
                for (chunk, prev) in rest.chunks_exact_mut(16).zip(saved.chunks_exact(16)) {
                    xor16(
                        chunk.try_into().expect("16 bytes"),
                        prev.try_into().expect("16 bytes"),
                    );
                }
            }
            Mode::Xts(..) => unreachable!("XTS goes through SectorCipher::xts"),
        }
    }
}

fn xor16(block: &mut [u8; 16], with: &[u8; 16]) {
    let v = u128::from_ne_bytes(*block) ^ u128::from_ne_bytes(*with);
    *block = v.to_ne_bytes();
}

/// XORs every 16-byte block of each sector with its XTS tweak: the sector's first tweak (its
/// encrypted IV, from `first`), then each times x in GF(2^128) in IEEE 1619's little-endian
/// convention.
fn xts_whiten(data: &mut [u8], sector_size: usize, first: &[u8]) {
    for (sector, t0) in data
        .chunks_exact_mut(sector_size)
        .zip(first.chunks_exact(16))
    {
        let mut t = u128::from_le_bytes(t0.try_into().expect("16 bytes"));
        for chunk in sector.chunks_exact_mut(16) {
            let block: &mut [u8; 16] = chunk.try_into().expect("16 bytes");
            *block = (u128::from_le_bytes(*block) ^ t).to_le_bytes();
            t = (t << 1) ^ ((t >> 127) * 0x87);
        }
    }
}
