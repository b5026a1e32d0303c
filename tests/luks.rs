//! LUKS1, LUKS2 and plain volumes opened as `cryptsetup open --disable-keyring` opens them,
//! checked against cryptsetup 2.6.1 and the kernel: fixtures/kernel/luks/ holds the volumes it
//! made in the oracle VM and, in luks.out, each open's command, `dmsetup table --showkeys`
//! (254:N is the image), the volume's size and sha256. dmfs must make the same table line from
//! the same image, passphrase and options (read from the recorded command), the same refusal
//! for a wrong passphrase, and refuse damaged and hostile headers with one line, in bounded
//! time and memory.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::scratch_dir;
use dmfs::activate::luks::{self, Kind, NO_KEY, OpenOptions, PlainParams};
use dmfs::units::Sectors;
use serde_json::Value;
use sha2::{Digest, Sha256};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/kernel/luks");

/// One `cryptsetup open` of luks.out.
#[derive(Debug, Clone)]
struct Open {
    case: String,
    /// The VM's disk index (vda = 0).
    disk: usize,
    passphrase: String,
    /// The words after `cryptsetup open`.
    args: Vec<String>,
    rc: i32,
    out: Vec<String>,
    table: Vec<String>,
    size: u64,
    sha256: String,
}

fn recorded() -> Vec<Open> {
    let text = std::fs::read_to_string(format!("{FIXTURES}/luks.out")).unwrap();
    let mut opens: Vec<Open> = Vec::new();
    let (mut case, mut disk) = (String::new(), 0);
    let mut current: Option<Open> = None;
    for line in text.lines() {
        let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "case" => {
                let (name, vd) = rest.split_once(' ').unwrap();
                case = name.to_string();
                disk = (vd.as_bytes()[2] - b'a') as usize;
            }
            "run" => {
                opens.extend(current.take());
                if let Some((pw, cmd)) = rest
                    .strip_prefix("printf '%s' '")
                    .and_then(|r| r.split_once("' | "))
                    && let Some(args) = cmd.strip_prefix("cryptsetup open ")
                {
                    current = Some(Open {
                        case: case.clone(),
                        disk,
                        passphrase: pw.to_string(),
                        args: args.split(' ').map(str::to_string).collect(),
                        rc: -1,
                        out: vec![],
                        table: vec![],
                        size: 0,
                        sha256: String::new(),
                    });
                }
            }
            _ => {
                let Some(o) = current.as_mut() else { continue };
                match key {
                    "rc" => o.rc = rest.parse().unwrap(),
                    "out" => o.out.push(rest.to_string()),
                    "table" => o.table.push(rest.to_string()),
                    "size" => o.size = rest.parse().unwrap(),
                    "sha256" => o.sha256 = rest.to_string(),
                    _ => {}
                }
            }
        }
    }
    opens.extend(current);
    opens
}

/// Unpacks `name` (an image or a header) into `dir`.
fn unpack(dir: &Path, name: &str) -> PathBuf {
    let out = Command::new("gzip")
        .arg("-dc")
        .arg(format!("{FIXTURES}/{name}.gz"))
        .output()
        .unwrap();
    assert!(out.status.success(), "gunzip {name}.gz");
    let path = dir.join(name);
    std::fs::write(&path, out.stdout).unwrap();
    path
}

struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        Scratch(scratch_dir("luks"))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sectors(path: &Path) -> Sectors {
    Sectors(std::fs::metadata(path).unwrap().len() / 512)
}

/// `--name value` of a recorded command.
fn arg<'a>(o: &'a Open, name: &str) -> Option<&'a str> {
    let i = o.args.iter().position(|a| a == name)?;
    Some(o.args[i + 1].as_str())
}

/// What dmfs makes of a recorded open: its table line, or errno and reason.
fn open_as_recorded(dir: &Path, o: &Open) -> Result<String, (i32, String)> {
    let image = dir.join(format!("{}.img", o.case));
    if !image.exists() {
        unpack(dir, &format!("{}.img", o.case));
    }
    let data = File::open(&image).unwrap();
    let reference = image.display().to_string();
    let result = if arg(o, "--type") == Some("plain") {
        let mut p = PlainParams::default();
        if let Some(c) = arg(o, "--cipher") {
            p.cipher = c.to_string();
        }
        if let Some(k) = arg(o, "--key-size") {
            p.key_bits = k.parse().unwrap();
        }
        if let Some(h) = arg(o, "--hash") {
            p.hash = Some(h.to_string());
        }
        if let Some(n) = arg(o, "--offset") {
            p.offset = n.parse().unwrap();
        }
        if let Some(n) = arg(o, "--skip") {
            p.skip = n.parse().unwrap();
        }
        if let Some(n) = arg(o, "--sector-size") {
            p.sector_size = n.parse().unwrap();
        }
        p.iv_large_sectors = o.args.iter().any(|a| a == "--iv-large-sectors");
        luks::open_plain(
            &p,
            sectors(&image),
            &reference,
            o.passphrase.as_bytes(),
            Default::default(),
        )
    } else if let Some(h) = arg(o, "--header") {
        let name = Path::new(h).file_name().unwrap().to_str().unwrap();
        let header = dir.join(name);
        if !header.exists() {
            unpack(dir, name);
        }
        luks::open(
            &File::open(&header).unwrap(),
            sectors(&image),
            &reference,
            o.passphrase.as_bytes(),
            &OpenOptions::default(),
        )
    } else {
        luks::open(
            &data,
            sectors(&image),
            &reference,
            o.passphrase.as_bytes(),
            &OpenOptions::default(),
        )
    };
    result
        .map(|v| v.table.to_string())
        .map_err(|e| (e.errno, e.reason))
}

/// The recorded table with the image's path where the kernel had its major:minor.
fn recorded_table(dir: &Path, o: &Open) -> String {
    let image = dir.join(format!("{}.img", o.case));
    let t = o.table.join("\n");
    t.replace(
        &format!(" 254:{} ", o.disk * 16),
        &format!(" {} ", image.display()),
    )
}

fn check_cases(filter: impl Fn(&Open) -> bool) -> usize {
    let dir = Scratch::new();
    let mut n = 0;
    let mut case = String::new();
    for o in recorded().iter().filter(|o| filter(o)) {
        if o.case != case {
            // One image at a time: they are 8 to 24 MiB each.
            let _ = std::fs::remove_file(dir.0.join(format!("{case}.img")));
            case = o.case.clone();
        }
        let got = open_as_recorded(&dir.0, o);
        match o.rc {
            0 => {
                assert_eq!(o.table.len(), 1, "{}: one recorded table line", o.case);
                assert_eq!(
                    got.as_deref().map_err(|e| e.1.as_str()),
                    Ok(recorded_table(&dir.0, o).as_str()),
                    "{} with {:?}",
                    o.case,
                    o.passphrase
                );
            }
            2 => {
                assert_eq!(o.out, vec![NO_KEY.to_string()], "{}", o.case);
                assert_eq!(got, Err((libc::EPERM, NO_KEY.to_string())), "{}", o.case);
            }
            _ => {
                assert_eq!(got.map_err(|e| e.1), Err(o.out.join("\n")), "{}", o.case);
            }
        }
        n += 1;
    }
    n
}

#[test]
fn plain_volumes_make_cryptsetups_tables() {
    let n = check_cases(|o| o.case.starts_with("plain-"));
    assert_eq!(n, 8, "every recorded plain open was checked");
}

#[test]
fn luks1_volumes_make_cryptsetups_tables() {
    let n = check_cases(|o| o.case.starts_with("l1-"));
    assert_eq!(n, 5, "every recorded LUKS1 open was checked");
}

#[test]
fn luks2_volumes_make_cryptsetups_tables() {
    let n = check_cases(|o| o.case.starts_with("l2-"));
    assert_eq!(n, 6, "every recorded LUKS2 open was checked");
}

#[test]
fn detects_the_version_and_refuses_the_other_type() {
    let dir = Scratch::new();
    let l1 = unpack(&dir.0, "l1-sha1-cbc.img");
    let plain = unpack(&dir.0, "plain-default.img");
    let f = File::open(&l1).unwrap();
    assert_eq!(luks::detect(&f).unwrap(), Some(Kind::Luks1));
    assert_eq!(luks::detect(&File::open(&plain).unwrap()).unwrap(), None);
    let hdr = unpack(&dir.0, "l2-detached.hdr");
    assert_eq!(
        luks::detect(&File::open(&hdr).unwrap()).unwrap(),
        Some(Kind::Luks2)
    );
    let e = luks::open(
        &f,
        sectors(&l1),
        "IMG",
        b"correct horse",
        &OpenOptions {
            kind: Some(Kind::Luks2),
            ..Default::default()
        },
    )
    .err()
    .unwrap();
    assert_eq!(
        (e.errno, e.reason.as_str()),
        (libc::EINVAL, "Device IMG is not a valid LUKS device.")
    );
    let e = luks::open(
        &File::open(&plain).unwrap(),
        sectors(&plain),
        "IMG",
        b"x",
        &OpenOptions::default(),
    )
    .err()
    .unwrap();
    assert_eq!(e.reason, "Device IMG is not a valid LUKS device.");

    // Version 3 is cryptsetup's "Unsupported LUKS version"; a LUKS2 header whose primary
    // magic is gone is still LUKS2, from its secondary copy.
    let mut b = std::fs::read(&l1).unwrap();
    b[7] = 3;
    std::fs::write(&l1, &b).unwrap();
    let e = luks::detect(&File::open(&l1).unwrap()).unwrap_err();
    assert_eq!(
        (e.errno, e.reason.as_str()),
        (libc::EINVAL, "Unsupported LUKS version 3.")
    );
    let mut b = std::fs::read(&hdr).unwrap();
    b[..6].fill(0);
    std::fs::write(&hdr, &b).unwrap();
    assert_eq!(
        luks::detect(&File::open(&hdr).unwrap()).unwrap(),
        Some(Kind::Luks2)
    );
    b[16384..16384 + 6].fill(0);
    std::fs::write(&hdr, &b).unwrap();
    assert_eq!(luks::detect(&File::open(&hdr).unwrap()).unwrap(), None);
}

// Hostile and damaged headers. Each is a real header (the detached LUKS2 header, or a LUKS1
// image) with one thing changed; a LUKS2 copy's checksum is made right again, so what is
// refused is the change itself.

/// The detached LUKS2 header, its primary copy's JSON changed by `edit`, the secondary
/// copy wiped (so the primary is the only one).
fn luks2_with(dir: &Path, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let path = unpack(dir, "l2-detached.hdr");
    let mut b = std::fs::read(&path).unwrap();
    let hdr_size = u64::from_be_bytes(b[8..16].try_into().unwrap()) as usize;
    let area = &b[4096..hdr_size];
    let end = area.iter().position(|&c| c == 0).unwrap();
    let mut json: Value = serde_json::from_slice(&area[..end]).unwrap();
    edit(&mut json);
    let text = serde_json::to_vec(&json).unwrap();
    write_json(&mut b, &text);
    b[hdr_size..2 * hdr_size].fill(0);
    std::fs::write(&path, &b).unwrap();
    path
}

/// Puts `text` in the primary copy's JSON area and makes its checksum right.
fn write_json(b: &mut [u8], text: &[u8]) {
    let hdr_size = u64::from_be_bytes(b[8..16].try_into().unwrap()) as usize;
    assert!(text.len() < hdr_size - 4096, "the JSON fits its area");
    b[4096..hdr_size].fill(0);
    b[4096..4096 + text.len()].copy_from_slice(text);
    fix_checksum(b);
}

fn fix_checksum(b: &mut [u8]) {
    let hdr_size = u64::from_be_bytes(b[8..16].try_into().unwrap()) as usize;
    b[448..512].fill(0);
    let sum = Sha256::digest(&b[..hdr_size]);
    b[448..448 + 32].copy_from_slice(&sum);
}

fn refusal(header: &Path, data_sectors: u64) -> (i32, String) {
    let e = luks::open(
        &File::open(header).unwrap(),
        Sectors(data_sectors),
        "DATA",
        b"correct horse",
        &OpenOptions::default(),
    )
    .err()
    .expect("refused");
    (e.errno, e.reason)
}

fn refused(dir: &Path, edit: impl FnOnce(&mut Value)) -> String {
    let hdr = luks2_with(dir, edit);
    let (errno, reason) = refusal(&hdr, 16384);
    assert_eq!(errno, libc::EINVAL, "{reason}");
    assert!(!reason.contains('\n'), "one line: {reason}");
    reason
}

#[test]
fn hostile_luks2_kdf_costs_are_refused_before_any_work() {
    let dir = Scratch::new();
    let argon = |time: u64, memory: u64, cpus: u64| {
        move |j: &mut Value| {
            j["keyslots"]["0"]["kdf"] = serde_json::json!({
                "type": "argon2id", "time": time, "memory": memory, "cpus": cpus,
                "salt": j["keyslots"]["0"]["kdf"]["salt"].clone(),
            });
        }
    };
    assert_eq!(
        refused(&dir.0, argon(4, 4 * 1024 * 1024 + 1, 1)),
        "LUKS2 header: keyslot 0: argon2id: memory cost 4194305 KiB is more than cryptsetup's \
         maximum (4194304 KiB)"
    );
    assert_eq!(
        refused(&dir.0, argon(u32::MAX as u64, 1024, 1)),
        "LUKS2 header: keyslot 0: argon2id: time cost 4294967295 with memory 1024 KiB is more \
         work than dmfs accepts (67108864 KiB passes)"
    );
    assert_eq!(
        refused(&dir.0, argon(4, 1024, 64)),
        "LUKS2 header: keyslot 0: argon2id: parallel cost 64 is outside 1-4"
    );
    assert_eq!(
        refused(&dir.0, argon(0, 1024, 1)),
        "LUKS2 header: keyslot 0: argon2id: time cost 0 is invalid"
    );
    assert_eq!(
        refused(&dir.0, argon(4, 1u64 << 32, 1)),
        "LUKS2 header: keyslot 0 kdf: memory is not a number from 0 to 2^32-1"
    );
    assert_eq!(
        refused(&dir.0, |j| j["keyslots"]["0"]["kdf"]["iterations"] =
            0.into()),
        "LUKS2 header: keyslot 0: PBKDF2 iterations 0 are invalid"
    );
    assert_eq!(
        refused(&dir.0, |j| j["keyslots"]["0"]["kdf"]["iterations"] =
            u32::MAX.into()),
        "LUKS2 header: keyslot 0: PBKDF2 iterations 4294967295 are more than dmfs accepts \
         (134217728)"
    );
    assert_eq!(
        refused(&dir.0, |j| j["digests"]["0"]["iterations"] =
            u32::MAX.into()),
        "LUKS2 header: digest 0: PBKDF2 iterations 4294967295 are more than dmfs accepts \
         (134217728)"
    );
    assert_eq!(
        refused(&dir.0, |j| j["keyslots"]["0"]["kdf"]["type"] =
            "scrypt".into()),
        "LUKS2 header: keyslot 0: kdf type \"scrypt\" is not supported"
    );
}

#[test]
fn luks2_areas_segments_and_types_out_of_bounds_are_refused() {
    let dir = Scratch::new();
    // The key-slot area is bytes 32768-557056 of this header (16 KiB copies, 512 KiB of slots).
    assert_eq!(
        refused(&dir.0, |j| j["keyslots"]["0"]["area"]["offset"] =
            "4194304".into()),
        "LUKS2 header: keyslot 0: area (bytes 4194304+258048) is not inside the key-slot area \
         (bytes 32768-557056) or too small for its key"
    );
    assert_eq!(
        refused(&dir.0, |j| j["keyslots"]["0"]["area"]["size"] =
            "4096".into()),
        "LUKS2 header: keyslot 0: area (bytes 32768+4096) is not inside the key-slot area \
         (bytes 32768-557056) or too small for its key"
    );
    assert_eq!(
        refused(&dir.0, |j| j["keyslots"]["0"]["area"]["offset"] =
            "18446744073709551615".into()),
        "LUKS2 header: keyslot 0: area (bytes 18446744073709551615+258048) is not inside the \
         key-slot area (bytes 32768-557056) or too small for its key"
    );
    assert_eq!(
        refused(&dir.0, |j| j["keyslots"]["0"]["key_size"] = 100000.into()),
        "LUKS2 header: keyslot 0: key_size 100000 is outside 1-256"
    );
    assert_eq!(
        refused(&dir.0, |j| j["keyslots"]["0"]["type"] = "reencrypt".into()),
        "LUKS2 header: keyslot 0: type \"reencrypt\" is not supported"
    );
    assert_eq!(
        refused(&dir.0, |j| j["keyslots"]["0"]["af"]["stripes"] = 1.into()),
        "LUKS2 header: keyslot 0: 1 stripes, not 4000"
    );
    assert_eq!(
        refused(&dir.0, |j| j["segments"]["0"]["type"] = "linear".into()),
        "LUKS2 header: segment 0: type \"linear\" is not supported"
    );
    assert_eq!(
        refused(&dir.0, |j| j["segments"]["0"]["sector_size"] = 8192.into()),
        "LUKS2 header: segment 0: sector size 8192 is not a power of two from 512 to 4096"
    );
    assert_eq!(
        refused(&dir.0, |j| j["segments"]["0"]["offset"] = "12345".into()),
        "LUKS2 header: segment 0: offset 12345 is not a multiple of 512"
    );
    assert_eq!(
        refused(&dir.0, |j| j["segments"]["0"]["integrity"] =
            serde_json::json!({"type": "hmac(sha256)"})),
        "LUKS2 header: segment 0: integrity protection is not supported"
    );
    assert_eq!(
        refused(&dir.0, |j| j["config"]["requirements"] =
            serde_json::json!({"mandatory": ["online-reencrypt-v2"]})),
        "LUKS2 header: requirements [\"online-reencrypt-v2\"] are not supported"
    );
    assert_eq!(
        refused(&dir.0, |j| j["config"]["json_size"] = "4194304".into()),
        "LUKS2 header: config json_size 4194304 does not match the header's size 16384"
    );
    assert_eq!(
        refused(&dir.0, |j| j["keyslots"] = serde_json::json!([])),
        "LUKS2 header: keyslots is not an object"
    );
    assert_eq!(
        refused(&dir.0, |j| j["digests"]["0"]["salt"] = "!!".into()),
        "LUKS2 header: digest 0: salt is not base64"
    );
}

#[test]
fn malformed_and_oversized_luks2_json_is_refused() {
    let dir = Scratch::new();
    let path = unpack(&dir.0, "l2-detached.hdr");
    let pristine = std::fs::read(&path).unwrap();
    let try_bytes = |b: &[u8]| {
        std::fs::write(&path, b).unwrap();
        let (errno, reason) = refusal(&path, 16384);
        assert_eq!(errno, libc::EINVAL, "{reason}");
        reason
    };
    let wipe_secondary = |b: &mut Vec<u8>| b[16384..32768].fill(0);

    let mut b = pristine.clone();
    wipe_secondary(&mut b);
    write_json(&mut b, b"{\"keyslots\": {\"0\": ");
    assert_eq!(
        try_bytes(&b),
        "LUKS2 header: no valid copy (primary: JSON: EOF while parsing a value at line 1 column \
         19; secondary: no LUKS2 magic)"
    );

    let mut b = pristine.clone();
    wipe_secondary(&mut b);
    // Nested deeper than any header, and than serde_json's recursion limit.
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    write_json(&mut b, deep.as_bytes());
    assert_eq!(
        try_bytes(&b),
        "LUKS2 header: no valid copy (primary: JSON: recursion limit exceeded at line 1 column \
         128; secondary: no LUKS2 magic)"
    );

    // A header size of 8 MiB: more than LUKS2 allows (the JSON area is at most 4 MiB - 4 KiB).
    let mut b = pristine.clone();
    wipe_secondary(&mut b);
    b[8..16].copy_from_slice(&(8u64 << 20).to_be_bytes());
    assert_eq!(
        try_bytes(&b),
        "LUKS2 header: no valid copy (primary: size 8388608 is not 16 KiB to 4 MiB in 4 KiB \
         steps; secondary: no LUKS2 magic)"
    );

    // Both copies damaged: one checksum byte each.
    let mut b = pristine.clone();
    b[448] ^= 1;
    b[16384 + 448] ^= 1;
    assert_eq!(
        try_bytes(&b),
        "LUKS2 header: no valid copy (primary: checksum mismatch; secondary: checksum mismatch)"
    );
}

#[test]
fn hostile_luks1_headers_are_refused() {
    let dir = Scratch::new();
    let path = unpack(&dir.0, "l1-sha1-cbc.img");
    let pristine = std::fs::read(&path).unwrap();
    let size = pristine.len() as u64 / 512;
    let try_with = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut b = pristine.clone();
        edit(&mut b);
        std::fs::write(&path, &b).unwrap();
        let e = luks::open(
            &File::open(&path).unwrap(),
            Sectors(size),
            "IMG",
            b"correct horse",
            &OpenOptions::default(),
        )
        .err()
        .expect("refused");
        assert_eq!(e.errno, libc::EINVAL, "{}", e.reason);
        e.reason
    };
    let slot = |i: usize, field: usize| 208 + 48 * i + field;
    assert_eq!(
        try_with(&|b| b[slot(0, 40)..slot(0, 44)].copy_from_slice(&100_000u32.to_be_bytes())),
        "LUKS keyslot 0: its key material (sector 100000, 250 sectors) lies outside the header"
    );
    assert_eq!(
        try_with(&|b| b[slot(0, 4)..slot(0, 8)].copy_from_slice(&0u32.to_be_bytes())),
        "LUKS keyslot 0: PBKDF2 iterations 0 are invalid"
    );
    assert_eq!(
        try_with(&|b| b[slot(0, 4)..slot(0, 8)].copy_from_slice(&u32::MAX.to_be_bytes())),
        "LUKS keyslot 0: PBKDF2 iterations 4294967295 are more than dmfs accepts (134217728)"
    );
    assert_eq!(
        try_with(&|b| b[slot(0, 44)..slot(0, 48)].copy_from_slice(&1u32.to_be_bytes())),
        "LUKS keyslot 0 is invalid: 1 stripes, not 4000"
    );
    assert_eq!(
        try_with(&|b| b[slot(3, 0)..slot(3, 4)].copy_from_slice(&7u32.to_be_bytes())),
        "LUKS keyslot 3 is invalid."
    );
    assert_eq!(
        try_with(&|b| b[108..112].copy_from_slice(&u32::MAX.to_be_bytes())),
        "LUKS1 header: key size 4294967295 bytes is outside 1-256"
    );
    assert_eq!(
        try_with(&|b| b[72..80].copy_from_slice(b"md5\0\0\0\0\0")),
        "Requested LUKS hash md5 is not supported."
    );
}

/// The data past the device's end, found once the key is: cryptsetup's words.
#[test]
fn data_past_the_end_of_the_device_is_refused() {
    let dir = Scratch::new();
    let hdr = luks2_with(&dir.0, |j| j["segments"]["0"]["offset"] = "16777216".into());
    let (_, reason) = refusal(&hdr, 16384);
    assert_eq!(
        reason,
        "Requested offset is beyond real size of device DATA."
    );
    let hdr = luks2_with(&dir.0, |j| j["segments"]["0"]["sector_size"] = 4096.into());
    let (_, reason) = refusal(&hdr, 16383);
    assert_eq!(
        reason,
        "Device size is not aligned to requested sector size."
    );

    let path = unpack(&dir.0, "l1-sha1-cbc.img");
    let mut b = std::fs::read(&path).unwrap();
    b.truncate(4096 * 512);
    std::fs::write(&path, &b).unwrap();
    let e = luks::open(
        &File::open(&path).unwrap(),
        Sectors(4096),
        "IMG",
        b"correct horse",
        &OpenOptions::default(),
    )
    .err()
    .unwrap();
    assert_eq!(
        e.reason,
        "Requested offset is beyond real size of device IMG."
    );
}

// `dmfs open` and `dmfs close` through a real mount.

/// Runs `script` in the mount's shell; its exit status and stderr.
fn run(m: &common::Mount, script: &str) -> (i32, String) {
    let out = m.sh(script);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn open_and_close_refuse_with_cryptsetups_words_and_leave_nothing() {
    let dir = Scratch::new();
    let m = common::Mount::new();
    let dmfs = common::DMFS;
    let plain = unpack(&dir.0, "plain-default.img");
    let p = plain.display();
    m.create("lin", &format!("0 8 linear {p} 0"));

    assert_eq!(
        run(&m, &format!("printf x | {dmfs} --mount $MNT open {p} v")),
        (1, format!("Device {p} is not a valid LUKS device.\n"))
    );
    assert_eq!(
        run(
            &m,
            &format!("printf x | {dmfs} --mount $MNT open --type plain {p} lin")
        ),
        (5, "Device lin already exists.\n".to_string())
    );
    assert_eq!(
        run(
            &m,
            &format!("{dmfs} --mount $MNT open {p}.missing v < /dev/null")
        )
        .0,
        4
    );
    assert_eq!(
        run(
            &m,
            &format!("printf x | {dmfs} --mount $MNT open --type luks3 {p} v")
        ),
        (1, "Unknown device type luks3 requested.\n".to_string())
    );
    // Plain mode's own refusals, before any table is written.
    assert_eq!(
        run(
            &m,
            &format!(
                "printf short | {dmfs} --mount $MNT open --type plain --cipher aes-cbc-plain \
                 --hash plain:16 {p} v"
            )
        ),
        (
            1,
            "Key processing error (using hash plain:16).\n".to_string()
        )
    );
    assert_eq!(
        run(
            &m,
            &format!("{dmfs} --mount $MNT open --type plain {p} v < /dev/null")
        ),
        (1, "Nothing to read on input.\n".to_string())
    );

    // A hostile detached header, through the command.
    let hdr = luks2_with(&dir.0, |j| {
        j["keyslots"]["0"]["kdf"]["iterations"] = 0.into()
    });
    assert_eq!(
        run(
            &m,
            &format!(
                "printf 'correct horse' | {dmfs} --mount $MNT open --header {} {p} v",
                hdr.display()
            )
        ),
        (
            1,
            "LUKS2 header: keyslot 0: PBKDF2 iterations 0 are invalid\n".to_string()
        )
    );

    assert_eq!(
        run(&m, &format!("{dmfs} --mount $MNT close lin")),
        (1, "Device lin is not a crypt device.\n".to_string())
    );
    assert_eq!(
        run(&m, &format!("{dmfs} --mount $MNT close nosuch")),
        (4, "Device nosuch is not active.\n".to_string())
    );
    assert_eq!(m.devices(), vec!["lin".to_string()]);
    m.remove("lin");
}

/// Every recorded volume opened with `dmfs open` and the recorded command's own options: the
/// device gets the recorded table, its bytes hash as the kernel's did (the known text written
/// through dm-crypt in the VM reads back), a wrong passphrase exits 2 with cryptsetup's words,
/// and `dmfs close` removes it.
#[test]
fn opened_volumes_read_as_the_kernel_read_them() {
    let dir = Scratch::new();
    let m = common::Mount::new();
    let dmfs = common::DMFS;
    let known: Vec<u8> = b"dmfs luks fixture, sector after sector\n"
        .iter()
        .copied()
        .cycle()
        .take(16384)
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut checked = 0;
    for o in recorded() {
        if !seen.insert((o.case.clone(), o.rc)) {
            continue;
        }
        let image = unpack(&dir.0, &format!("{}.img", o.case));
        let mut words = Vec::new();
        for a in &o.args {
            match a.as_str() {
                "--disable-keyring" => {}
                a if a.starts_with("/dev/vd") => words.push(image.display().to_string()),
                a if a.starts_with("/tmp/") => {
                    let name = Path::new(a).file_name().unwrap().to_str().unwrap();
                    words.push(unpack(&dir.0, name).display().to_string());
                }
                a => words.push(a.to_string()),
            }
        }
        let (code, stderr) = run(
            &m,
            &format!(
                "printf '%s' '{}' | {dmfs} --mount $MNT open {}",
                o.passphrase,
                words.join(" ")
            ),
        );
        let name = &o.case;
        match o.rc {
            0 => {
                assert_eq!((code, stderr.as_str()), (0, ""), "{name}");
                let table = m.read(&format!("dm/{name}/table"));
                assert_eq!(table.trim_end(), recorded_table(&dir.0, &o), "{name}");
                let bytes = m.read_dev(name).unwrap();
                assert_eq!(bytes.len() as u64, o.size * 512, "{name}");
                assert_eq!(&bytes[..known.len()], &known[..], "{name}: the known text");
                assert_eq!(hex(&Sha256::digest(&bytes)), o.sha256, "{name}");
                assert_eq!(run(&m, &format!("{dmfs} --mount $MNT close {name}")).0, 0);
            }
            2 => assert_eq!((code, stderr), (2, format!("{NO_KEY}\n")), "{name}"),
            _ => assert_eq!(
                (code, stderr),
                (1, format!("{}\n", o.out.join("\n"))),
                "{name}"
            ),
        }
        let _ = std::fs::remove_file(&image);
        checked += 1;
    }
    assert_eq!(checked, 17, "every recorded volume, and its refusals");
    assert!(m.devices().is_empty());
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Edits the LUKS2 header copy at byte `at` of `b` (0: the primary; its size: the secondary):
/// its JSON by `edit`, its seqid, then makes its checksum right.
fn edit_copy(b: &mut [u8], at: usize, seqid: u64, edit: impl FnOnce(&mut Value)) {
    let c = &mut b[at..];
    let hdr_size = u64::from_be_bytes(c[8..16].try_into().unwrap()) as usize;
    let area = &c[4096..hdr_size];
    let end = area.iter().position(|&x| x == 0).unwrap();
    let mut json: Value = serde_json::from_slice(&area[..end]).unwrap();
    edit(&mut json);
    let text = serde_json::to_vec(&json).unwrap();
    c[16..24].copy_from_slice(&seqid.to_be_bytes());
    c[4096..hdr_size].fill(0);
    c[4096..4096 + text.len()].copy_from_slice(&text);
    c[448..512].fill(0);
    let sum = Sha256::digest(&c[..hdr_size]);
    c[448..448 + 32].copy_from_slice(&sum);
}

fn seqid(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at + 16..at + 24].try_into().unwrap())
}

/// Opens l2-pbkdf2 (16 KiB header copies) after `change` on its bytes: the table, or the
/// refusal's words.
fn open_l2_changed(
    dir: &Path,
    pass: &str,
    change: impl FnOnce(&mut Vec<u8>),
) -> Result<String, String> {
    let path = dir.join("l2-pbkdf2.img");
    if !dir.join("l2-pbkdf2.pristine").exists() {
        let p = unpack(dir, "l2-pbkdf2.img");
        std::fs::rename(&p, dir.join("l2-pbkdf2.pristine")).unwrap();
    }
    let mut b = std::fs::read(dir.join("l2-pbkdf2.pristine")).unwrap();
    change(&mut b);
    std::fs::write(&path, &b).unwrap();
    luks::open(
        &File::open(&path).unwrap(),
        sectors(&path),
        "IMG",
        pass.as_bytes(),
        &OpenOptions::default(),
    )
    .map(|o| o.table.to_string())
    .map_err(|e| e.reason)
}

#[test]
fn luks2_copies_priorities_and_flags_as_cryptsetup_reads_them() {
    let dir = Scratch::new();
    let base = open_l2_changed(&dir.0, "correct horse", |_| {}).unwrap();
    assert!(base.ends_with(" 0 IMG 32768"), "{base}");
    const HDR: usize = 16384;

    // A damaged primary: the secondary opens the volume alone.
    let t = open_l2_changed(&dir.0, "correct horse", |b| b[HDR - 1] ^= 1);
    assert_eq!(t.as_deref(), Ok(base.as_str()));
    let t = open_l2_changed(&dir.0, "correct horse", |b| b[..4096].fill(0));
    assert_eq!(t.as_deref(), Ok(base.as_str()));

    // Both valid: the higher seqid wins, whichever copy it is.
    let four_k = |j: &mut Value| j["segments"]["0"]["sector_size"] = 4096.into();
    let t = open_l2_changed(&dir.0, "correct horse", |b| {
        let s = seqid(b, 0);
        edit_copy(b, HDR, s + 1, four_k);
    });
    assert_eq!(t, Ok(format!("{base} 1 sector_size:4096")));
    let t = open_l2_changed(&dir.0, "correct horse", |b| {
        let s = seqid(b, 0);
        edit_copy(b, HDR, s + 1, four_k);
        edit_copy(b, 0, s + 2, |_| {});
    });
    assert_eq!(t.as_deref(), Ok(base.as_str()));

    // Persistent flags, in the kernel's order; unknown ones passed over.
    let t = open_l2_changed(&dir.0, "correct horse", |b| {
        let s = seqid(b, 0);
        edit_copy(b, 0, s + 1, |j| {
            j["config"]["flags"] =
                serde_json::json!(["no-read-workqueue", "bogus", "allow-discards"])
        });
    });
    assert_eq!(t, Ok(format!("{base} 2 allow_discards no_read_workqueue")));

    // Key slot 0 (this passphrase's) set to priority "ignore": not tried. Slot 1 still opens.
    let ignore0 = |b: &mut Vec<u8>| {
        let s = seqid(b, 0);
        edit_copy(b, 0, s + 1, |j| j["keyslots"]["0"]["priority"] = 0.into());
    };
    assert_eq!(
        open_l2_changed(&dir.0, "correct horse", ignore0),
        Err(NO_KEY.to_string())
    );
    assert_eq!(
        open_l2_changed(&dir.0, "battery staple", ignore0).as_deref(),
        Ok(base.as_str())
    );

    // The digest that opens the segment must name the key slot.
    let t = open_l2_changed(&dir.0, "battery staple", |b| {
        let s = seqid(b, 0);
        edit_copy(b, 0, s + 1, |j| {
            j["digests"]["0"]["keyslots"] = serde_json::json!(["0"])
        });
    });
    assert_eq!(t, Err(NO_KEY.to_string()));
}

/// On a terminal: the prompt, no echo, three tries each answered with cryptsetup's words, then
/// exit 2 (driven through a pseudo-terminal by python3's pty module).
#[test]
fn a_terminal_is_asked_three_times_without_echo() {
    let dir = Scratch::new();
    let m = common::Mount::new();
    let image = unpack(&dir.0, "l1-sha1-cbc.img");
    let driver = r#"
import os, pty, sys
dmfs, mnt, img = sys.argv[1:4]
pid, fd = pty.fork()
if pid == 0:
    os.execv(dmfs, [dmfs, "--mount", mnt, "open", img, "v"])
out = b""
def wait_for(n):
    global out
    while out.count(b"Enter passphrase for") < n:
        try:
            chunk = os.read(fd, 1024)
        except OSError:
            return
        if not chunk:
            return
        out += chunk
for i, pw in enumerate([b"wrong-one", b"wrong-two", b"wrong-three"]):
    wait_for(i + 1)
    os.write(fd, pw + b"\n")
while True:
    try:
        chunk = os.read(fd, 1024)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace").replace("\r", ""))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(driver)
        .arg(common::DMFS)
        .arg(&m.mnt)
        .arg(&image)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let prompt = format!("Enter passphrase for {}: ", image.display());
    assert_eq!(
        text,
        format!("{prompt}\n{NO_KEY}\n{prompt}\n{NO_KEY}\n{prompt}\n{NO_KEY}\n"),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(m.devices().is_empty());
}

/// `--allow-discards` adds the kernel's word to the table, `--readonly` makes a read-only
/// device, and a key file is plain mode's key itself, read to the key's size, unhashed.
#[test]
fn open_options_reach_the_table_and_the_device() {
    let dir = Scratch::new();
    let m = common::Mount::new();
    let dmfs = common::DMFS;
    let o = recorded()
        .into_iter()
        .find(|o| o.case == "plain-default" && o.rc == 0)
        .unwrap();
    let image = unpack(&dir.0, "plain-default.img");
    let i = image.display();
    let (code, err) = run(
        &m,
        &format!(
            "printf '%s' '{}' | {dmfs} --mount $MNT open --type plain --allow-discards \
             --readonly {i} p",
            o.passphrase
        ),
    );
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(
        m.read("dm/p/table").trim_end(),
        format!("{} 1 allow_discards", recorded_table(&dir.0, &o))
    );
    assert_eq!(m.read("dm/p/uuid").trim_end(), "CRYPT-PLAIN-p");
    assert!(
        std::fs::OpenOptions::new()
            .write(true)
            .open(m.mnt.join("dev/p"))
            .is_err()
    );
    assert_eq!(run(&m, &format!("{dmfs} --mount $MNT close p")).0, 0);

    // The recorded plain-hash-short key is "short" padded with zeros to 32 bytes: a key file
    // holding exactly that is the key as it is, whatever --hash says.
    let o = recorded()
        .into_iter()
        .find(|o| o.case == "plain-hash-short" && o.rc == 0)
        .unwrap();
    let image = unpack(&dir.0, "plain-hash-short.img");
    let i = image.display();
    let mut key = b"short".to_vec();
    key.resize(32, 0);
    key.extend_from_slice(b"ignored: past the key's size");
    std::fs::write(dir.0.join("key"), &key).unwrap();
    let (code, err) = run(
        &m,
        &format!(
            "{dmfs} --mount $MNT open --type plain --cipher aes-cbc-plain --hash sha512 \
             --key-file {} {i} s",
            dir.0.join("key").display()
        ),
    );
    assert_eq!((code, err.as_str()), (0, ""));
    let want = recorded_table(&dir.0, &o);
    assert_eq!(m.read("dm/s/table").trim_end(), want);
    assert_eq!(run(&m, &format!("{dmfs} --mount $MNT close s")).0, 0);
    assert!(m.devices().is_empty());
}
