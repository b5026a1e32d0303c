//! `crypt <cipher> <key> <iv_offset> <device> <offset> [<#opt_params> <opt_params>]`: the
//! target's sectors map one to one onto the device from `offset`, encrypted (the kernel's
//! dm-crypt v1.24.0). Reads decrypt what the device holds; writes encrypt into a per-thread
//! scratch buffer, never in the caller's buffer. The cipher work is `crate::crypt`'s.
//!
//! With `sector_size` above 512 a request can cover part of a cipher sector: the kernel never
//! sees one (its block layer keeps I/O to whole logical blocks, and its page cache patches
//! partial writes), but dmfs's device layer guarantees only 512-byte sectors, and FUSE splits a
//! write wherever the writer's buffer crosses a page. So dmfs does what the page cache does
//! above a kernel dm-crypt device: a partial read decrypts the whole cipher sectors and copies
//! out its part, a partial write decrypts the edge sectors, patches them and writes them back
//! whole, holding off other writes to the target meanwhile.
//!
//! Messages (`crypt_message`): `key set <key>` and `key wipe`, only while the device is
//! suspended, are what cryptsetup's luksSuspend and luksResume send. After a wipe, or a `key
//! set` whose hex did not decode, the device refuses to resume until a key is set (as recorded
//! in fixtures/kernel/crypt/message.out).

use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;

use super::{Area, Ctor, Target, TargetType, View, check_area, read_arg_group, scan_u64};
use crate::backing::Backing;
use crate::crypt::{CipherSpec, Key, SectorCipher};
use crate::device_link::DeviceLink;
use crate::error::{DmError, DmResult};
use crate::scratch;
use crate::secret::Zeroizing;
use crate::units::Sectors;

pub const TYPE: TargetType = TargetType {
    name: "crypt",
    version: [1, 24, 0],
    construct,
};

/// The optional parameters, kept to print them back in the kernel's order.
#[derive(Default)]
struct Features {
    allow_discards: bool,
    same_cpu_crypt: bool,
    submit_from_crypt_cpus: bool,
    no_read_workqueue: bool,
    no_write_workqueue: bool,
    sector_size: u32,
    iv_large_sectors: bool,
}

/// The key and the engine keyed with it, replaced together by `key set` and `key wipe`.
struct Keyed {
    /// What `table` prints: after a wipe, as many zero bytes (the kernel's `cc->key`).
    key: Key,
    /// `None` after a wipe or a failed `key set`: nothing may be read or written until a key is
    /// set, which `preresume` ensures (I/O reaching it anyway fails with EIO).
    engine: Option<SectorCipher>,
}

struct Crypt {
    spec: CipherSpec,
    keyed: RwLock<Keyed>,
    /// Between the device's suspend and its resume (the kernel's `DM_CRYPT_SUSPENDED`): only
    /// then does the target take key messages.
    suspended: AtomicBool,
    iv_offset: u64,
    dev: Arc<Backing>,
    start: Sectors,
    features: Features,
    /// The cipher's sector in 512-byte sectors (1 to 8).
    step: u64,
    /// Writes of whole cipher sectors share it; a write that patches part of one takes it
    /// alone, so no write lands between its read and its write back.
    patching: RwLock<()>,
}

const KEY_ERROR: &str = "Error decoding and setting key";

fn construct(ctor: &Ctor<'_>, args: &[String]) -> DmResult<Box<dyn Target>> {
    if args.len() < 5 {
        return Err(DmError::invalid("Not enough arguments"));
    }
    let keyring = keyring_size(&args[1])?;
    let mut features = Features {
        sector_size: 512,
        ..Features::default()
    };
    // The kernel reads the optional parameters before the cipher.
    if args.len() > 5 {
        read_features(&args[5..], ctor.len, &mut features)?;
    }
    let spec = CipherSpec::parse(&args[0]).map_err(|e| {
        // The crypto API answers ENOENT for a transform it does not have.
        let errno = if e == "Error allocating crypto tfm" {
            libc::ENOENT
        } else {
            libc::EINVAL
        };
        DmError::new(errno, e)
    })?;
    if keyring.is_some() {
        return Err(keyring_refusal(&args[1]));
    }
    // "-" (no key) reads as a key of no bytes; any other text that short is no key at all.
    let key = Key::from_kernel_hex(&args[1]).ok_or_else(|| DmError::invalid(KEY_ERROR))?;
    spec.key_size_ok(key.len()).map_err(DmError::invalid)?;
    if !key.is_empty() {
        crate::secret::no_core_dumps();
    }
    let engine = SectorCipher::new(
        &spec,
        key.as_bytes(),
        features.sector_size,
        features.iv_large_sectors,
    )
    .map_err(DmError::invalid)?;
    let step = u64::from(features.sector_size / 512);
    let iv_offset = scan_u64(&args[2])
        .filter(|o| o.is_multiple_of(step))
        .ok_or_else(|| DmError::invalid("Invalid iv_offset sector"))?;
    let dev = ctor
        .resolver
        .open(&args[3])
        .map_err(|e| e.context("Device lookup failed"))?;
    let start = scan_u64(&args[4])
        .map(Sectors)
        .ok_or_else(|| DmError::invalid("Invalid device sector"))?;
    check_area(&dev, start, ctor.len)?;
    Ok(Box::new(Crypt {
        spec,
        keyed: RwLock::new(Keyed {
            key,
            engine: Some(engine),
        }),
        suspended: AtomicBool::new(false),
        iv_offset,
        dev,
        start,
        features,
        step,
        patching: RwLock::new(()),
    }))
}

/// The kernel's `get_key_size` for the keyring form `:<size>:<type>:<description>`: the
/// declared size, `None` for a hex key or `-`.
fn keyring_size(key: &str) -> DmResult<Option<u32>> {
    let Some(rest) = key.strip_prefix(':') else {
        return Ok(None);
    };
    let parse_error = || DmError::invalid("Cannot parse key size");
    let (size, _) = rest.split_once(':').ok_or_else(parse_error)?;
    if size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) {
        return Err(parse_error());
    }
    size.parse::<u32>().map(Some).map_err(|_| parse_error())
}

/// dmfs reads no kernel keyring: a well-formed keyring reference is refused as the kernel
/// refuses a key it cannot find (ENOKEY), a malformed one as the kernel does (EINVAL). The
/// description is not key material, but it is left out all the same.
fn keyring_refusal(key: &str) -> DmError {
    let after_size = key[1..].split_once(':').map_or("", |(_, rest)| rest);
    let well_formed = match after_size.split_once(':') {
        Some((kind, desc)) => {
            matches!(kind, "logon" | "user" | "encrypted" | "trusted") && !desc.is_empty()
        }
        None => false,
    };
    if well_formed {
        DmError::new(
            libc::ENOKEY,
            format!(
                "{KEY_ERROR}: dmfs cannot read keys from the kernel keyring; give the key in hex"
            ),
        )
    } else {
        DmError::invalid(KEY_ERROR)
    }
}

/// `crypt_ctr_optional`: `<#opt_params> <opt_params>`, names compared without case.
fn read_features(args: &[String], len: Sectors, f: &mut Features) -> DmResult<()> {
    let count = read_arg_group(args, 8, "Invalid number of feature args")? as usize;
    for opt in &args[1..=count] {
        let lower = opt.to_ascii_lowercase();
        match lower.as_str() {
            "allow_discards" => f.allow_discards = true,
            "same_cpu_crypt" => f.same_cpu_crypt = true,
            "submit_from_crypt_cpus" => f.submit_from_crypt_cpus = true,
            "no_read_workqueue" => f.no_read_workqueue = true,
            "no_write_workqueue" => f.no_write_workqueue = true,
            "iv_large_sectors" => f.iv_large_sectors = true,
            _ => {
                if let Some(rest) = opt.strip_prefix("integrity:") {
                    integrity(rest)?;
                } else if let Some(size) = opt.strip_prefix("sector_size:").and_then(scan_u64) {
                    if !(512..=4096).contains(&size) || !size.is_power_of_two() {
                        return Err(DmError::invalid("Invalid feature value for sector_size"));
                    }
                    if !len.0.is_multiple_of(size / 512) {
                        return Err(DmError::invalid(
                            "Device size is not multiple of sector_size feature",
                        ));
                    }
                    f.sector_size = size as u32;
                } else {
                    return Err(DmError::invalid("Invalid feature arguments"));
                }
            }
        }
    }
    Ok(())
}

/// `integrity:<bytes>:<type>`: checked as the kernel checks it, then refused, since dmfs has no
/// dm-integrity device to keep the tags on.
fn integrity(rest: &str) -> DmResult<()> {
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let Some(after) = rest[digits.len()..].strip_prefix(':') else {
        return Err(DmError::invalid("Invalid feature arguments"));
    };
    match digits.parse::<u32>() {
        Ok(1..=480) => {}
        _ => return Err(DmError::invalid("Invalid integrity arguments")),
    }
    if !after.eq_ignore_ascii_case("aead") && !after.eq_ignore_ascii_case("none") {
        return Err(DmError::invalid("Unknown integrity profile"));
    }
    Err(DmError::invalid(
        "Integrity profile not supported. (dmfs has no dm-integrity)",
    ))
}

impl Crypt {
    fn iv_sector(&self, offset: Sectors) -> u64 {
        offset.0.wrapping_add(self.iv_offset)
    }

    /// The whole cipher sectors covering `len` bytes from `offset` (in 512-byte sectors), or
    /// `None` when the request is whole cipher sectors already.
    fn covering(&self, offset: Sectors, len: usize) -> Option<Range<u64>> {
        let end = offset.0 + (len / 512) as u64;
        let first = offset.0 - offset.0 % self.step;
        let last = end.div_ceil(self.step) * self.step;
        (first != offset.0 || last != end).then_some(first..last)
    }

    /// Runs `f` with the engine, held for its whole run so a key message waits for it.
    fn with_engine<T>(&self, f: impl FnOnce(&SectorCipher) -> io::Result<T>) -> io::Result<T> {
        let keyed = self.keyed.read();
        match &keyed.engine {
            Some(engine) => f(engine),
            None => Err(io::Error::from_raw_os_error(libc::EIO)),
        }
    }

    /// Reads and decrypts the cipher sector at `at` (512-byte sectors) into `out`.
    fn read_cipher_sector(&self, engine: &SectorCipher, at: u64, out: &mut [u8]) -> io::Result<()> {
        self.dev.read_at(self.start + Sectors(at), out)?;
        engine.decrypt(out, self.iv_sector(Sectors(at)));
        Ok(())
    }

    fn write_patching(&self, offset: Sectors, buf: &[u8], cover: Range<u64>) -> io::Result<()> {
        let _alone = self.patching.write();
        let cs = self.features.sector_size as usize;
        let len = ((cover.end - cover.start) * 512) as usize;
        self.with_engine(|engine| {
            scratch::with_buffer(len, |out| {
                let head = ((offset.0 - cover.start) * 512) as usize;
                let tail = head + buf.len();
                if head != 0 {
                    self.read_cipher_sector(engine, cover.start, &mut out[..cs])?;
                }
                // The last cipher sector, unless the one just read is it.
                if tail != len && (len > cs || head == 0) {
                    self.read_cipher_sector(engine, cover.end - self.step, &mut out[len - cs..])?;
                }
                out[head..tail].copy_from_slice(buf);
                engine.encrypt(out, self.iv_sector(Sectors(cover.start)));
                self.dev.write_at(self.start + Sectors(cover.start), out)
            })
        })
    }

    /// `key set <key>` (the kernel's `crypt_message` and `crypt_set_key`): the key keeps the
    /// table's size. A refusal before the hex is read leaves the key as it was; hex that does
    /// not decode leaves no key (the device will not resume) and `table` showing what decoded.
    /// No error repeats the key.
    fn set_key(&self, text: &str) -> DmResult<()> {
        let size = self.keyed.read().key.len();
        let refused = || {
            DmError::invalid(format!(
                "key set: not a key of the table's {size} bytes (the key's size may not change)"
            ))
        };
        if let Some(declared) = text.strip_prefix(':') {
            // The keyring form `:<size>:<type>:<description>`.
            let (digits, _) = declared.split_once(':').ok_or_else(refused)?;
            if digits.is_empty()
                || !digits.bytes().all(|b| b.is_ascii_digit())
                || digits.parse::<usize>().ok() != Some(size)
            {
                return Err(refused());
            }
            return Err(keyring_refusal(text));
        }
        if text.len() / 2 != size {
            return Err(refused());
        }
        // No key (cipher_null): only `-` says so.
        if size == 0 && text != "-" {
            return Err(refused());
        }
        let mut keyed = self.keyed.write();
        keyed.engine = None;
        let Some(key) = Key::from_kernel_hex(text) else {
            // hex2bin writes the bytes before the first bad digit into the key it decodes into.
            let good = text
                .as_bytes()
                .chunks_exact(2)
                .take_while(|p| p.iter().all(u8::is_ascii_hexdigit))
                .count();
            let mut bytes = keyed.key.as_bytes().to_vec();
            if let Some(prefix) = Key::from_kernel_hex(&text[..good * 2]) {
                bytes[..good].copy_from_slice(prefix.as_bytes());
            }
            keyed.key = Key::new(bytes);
            return Err(DmError::invalid("key set: the key is not hexadecimal"));
        };
        let engine = SectorCipher::new(
            &self.spec,
            key.as_bytes(),
            self.features.sector_size,
            self.features.iv_large_sectors,
        )
        .map_err(DmError::invalid)?;
        // The old key is zeroed as it drops (`Key`, and the `aes` key schedules).
        *keyed = Keyed {
            key,
            engine: Some(engine),
        };
        Ok(())
    }

    /// `key wipe` (`crypt_wipe_key`): the key and the engine keyed with it go; `table` shows
    /// the key as zeros until a key is set.
    fn wipe_key(&self) {
        let mut keyed = self.keyed.write();
        keyed.engine = None;
        let zeros = vec![0; keyed.key.len()];
        keyed.key = Key::new(zeros);
    }
}

const UNRECOGNISED: &str = "unrecognised message received.";

impl Target for Crypt {
    fn read(&self, offset: Sectors, buf: &mut [u8]) -> io::Result<()> {
        let Some(cover) = self.covering(offset, buf.len()) else {
            return self.with_engine(|engine| {
                self.dev.read_at(self.start + offset, buf)?;
                engine.decrypt(buf, self.iv_sector(offset));
                Ok(())
            });
        };
        let len = ((cover.end - cover.start) * 512) as usize;
        self.with_engine(|engine| {
            scratch::with_buffer(len, |whole| {
                self.dev.read_at(self.start + Sectors(cover.start), whole)?;
                engine.decrypt(whole, self.iv_sector(Sectors(cover.start)));
                let head = ((offset.0 - cover.start) * 512) as usize;
                buf.copy_from_slice(&whole[head..head + buf.len()]);
                Ok(())
            })
        })
    }

    fn write(&self, offset: Sectors, buf: &[u8]) -> io::Result<()> {
        if let Some(cover) = self.covering(offset, buf.len()) {
            return self.write_patching(offset, buf, cover);
        }
        let _shared = self.patching.read();
        self.with_engine(|engine| {
            scratch::with_buffer(buf.len(), |out| {
                out.copy_from_slice(buf);
                engine.encrypt(out, self.iv_sector(offset));
                self.dev.write_at(self.start + offset, out)
            })
        })
    }

    /// `key set <key>` and `key wipe`, words compared without case, only while suspended.
    fn message(&self, args: &[&str]) -> DmResult<String> {
        if args.len() < 2 || !args[0].eq_ignore_ascii_case("key") {
            return Err(DmError::invalid(UNRECOGNISED));
        }
        if !self.suspended.load(Ordering::SeqCst) {
            return Err(DmError::invalid("not suspended during key manipulation."));
        }
        match args {
            [_, set, key] if set.eq_ignore_ascii_case("set") => self.set_key(key)?,
            [_, wipe] if wipe.eq_ignore_ascii_case("wipe") => self.wipe_key(),
            _ => return Err(DmError::invalid(UNRECOGNISED)),
        }
        Ok(String::new())
    }

    /// `crypt_preresume`: no resume without a key.
    fn preresume(&self, _link: &DeviceLink) -> DmResult<()> {
        if self.keyed.read().engine.is_none() {
            return Err(DmError::new(
                libc::EAGAIN,
                "aborting resume - crypt key is not set.",
            ));
        }
        Ok(())
    }

    fn resume(&self, _device_size: Sectors, _link: &DeviceLink) {
        self.suspended.store(false, Ordering::SeqCst);
    }

    fn suspend(&self) {
        self.suspended.store(true, Ordering::SeqCst);
    }

    fn holds_key(&self) -> bool {
        !self.keyed.read().key.is_empty()
    }

    /// `sector_size` is the device's logical block size: the table's line boundaries must
    /// fall on it (`Table` checks them as the kernel's table load does).
    fn logical_block_sectors(&self, stacked: u64) -> u64 {
        self.step.max(stacked)
    }

    /// As `crypt_status` prints it: the key in hex (masking it is the reader's business),
    /// then the optional parameters in the kernel's order, whatever order they came in.
    fn table_args(&self) -> String {
        let f = &self.features;
        let flags = [
            (f.allow_discards, "allow_discards".to_string()),
            (f.same_cpu_crypt, "same_cpu_crypt".to_string()),
            (
                f.submit_from_crypt_cpus,
                "submit_from_crypt_cpus".to_string(),
            ),
            (f.no_read_workqueue, "no_read_workqueue".to_string()),
            (f.no_write_workqueue, "no_write_workqueue".to_string()),
            (
                f.sector_size != 512,
                format!("sector_size:{}", f.sector_size),
            ),
            (f.iv_large_sectors, "iv_large_sectors".to_string()),
        ];
        let set: Vec<&String> = flags.iter().filter(|(on, _)| *on).map(|(_, s)| s).collect();
        // Everything after the key first: the text holding the key is then sized once, so
        // that no reallocation frees a copy of it unwiped (`Table` wipes the text it is given).
        let mut tail = format!(" {} {} {}", self.iv_offset, self.dev.name(), self.start);
        if !set.is_empty() {
            tail.push_str(&format!(" {}", set.len()));
            for s in set {
                tail.push(' ');
                tail.push_str(s);
            }
        }
        let key = Zeroizing::new(self.keyed.read().key.to_kernel_hex());
        let mut text = String::with_capacity(self.spec.text.len() + 1 + key.len() + tail.len());
        text.push_str(&self.spec.text);
        text.push(' ');
        text.push_str(&key);
        text.push_str(&tail);
        text
    }

    fn devices(&self) -> Vec<Arc<Backing>> {
        vec![self.dev.clone()]
    }

    fn areas(&self, len: Sectors) -> Vec<Area<'_>> {
        vec![Area::new(&self.dev, self.start, len)]
    }

    /// One to one: a changed device sector changes only the cipher sector holding it, which
    /// lies inside one page (a cipher sector is at most a page and starts on its own size).
    fn views(&self) -> Vec<View> {
        vec![View::Linear {
            key: self.dev.key(),
            from: self.start,
        }]
    }
}
