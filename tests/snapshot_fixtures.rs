//! dmfs's snapshots against what the real kernel did (fixtures/kernel/snapshots.out, recorded by
//! fixtures/kernel/record-snapshots.sh in the kernel-oracle VM). Every recorded case is a
//! sequence of actions (create, reload, suspend, resume, remove, writes, header edits, loading a
//! COW image) and of what the kernel showed after them (table and status text, sha256 of the
//! devices and disks, the COW header, exit codes, refusals). Each case is replayed on a fresh
//! dmfs mount over regular files and every observation is compared. Images the kernel wrote are
//! loaded into dmfs; COW images dmfs wrote (and the kernel loaded) must still be what dmfs
//! writes today.

mod common;
use common::*;

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The disks: placeholder, file name, pattern index (None: zeros), sectors.
const DISKS: [(&str, &str, Option<u64>, u64); 3] = [
    ("$O", "O.img", Some(0), 8192),
    ("$C", "C.img", None, 10240),
    ("$S", "S.img", None, 48),
];

struct Case {
    name: String,
    fields: Vec<(String, String)>,
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/kernel")
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures_dir().join("snapshots.out"))
        .expect("fixtures/kernel/snapshots.out");
    let mut out = Vec::new();
    let mut current: Option<Case> = None;
    for line in text.lines() {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "case" if current.is_none() => {
                current = Some(Case {
                    name: value.into(),
                    fields: Vec::new(),
                })
            }
            "end" => out.push(current.take().expect("end without a case")),
            _ => current
                .as_mut()
                .expect("field outside a case")
                .fields
                .push((key.into(), value.into())),
        }
    }
    assert!(current.is_none(), "unterminated case in snapshots.out");
    out
}

/// A fresh mount with the three disks.
fn setup() -> Mount {
    let m = Mount::new();
    for (_, file, pattern, sectors) in DISKS {
        match pattern {
            Some(index) => write_pattern_image(&m.path(file), index, sectors),
            None => std::fs::write(m.path(file), vec![0u8; sectors as usize * 512]).unwrap(),
        }
    }
    m
}

fn substitute(m: &Mount, text: &str) -> String {
    DISKS.iter().fold(text.to_string(), |t, (ph, file, _, _)| {
        t.replace(ph, &m.path(file).to_string_lossy())
    })
}

/// A disk placeholder's file, or a device's file.
fn path_of(m: &Mount, target: &str) -> PathBuf {
    match DISKS.iter().find(|d| d.0 == target) {
        Some((_, file, _, _)) => m.path(file),
        None => m.mnt.join("dev").join(target),
    }
}

fn sha256(m: &Mount, target: &str) -> String {
    let out = m.sh(&format!(
        "set -o pipefail; dd if='{}' bs=65536 status=none | sha256sum",
        path_of(m, target).display()
    ));
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout)[..64].to_string()
    } else {
        "error".into()
    }
}

fn gunzip(file: &str) -> Vec<u8> {
    let out = std::process::Command::new("gzip")
        .arg("-dc")
        .arg(fixtures_dir().join("snapshots").join(format!("{file}.gz")))
        .output()
        .expect("gzip");
    assert!(out.status.success(), "gzip -dc {file}.gz failed");
    out.stdout
}

/// "dd TARGET SEEK COUNT TAG" as the recorder did it: COUNT sectors of `yes TAG` at SEEK. In
/// writeback mode with oflag=direct (`dd_write_through`): a buffered write that overflows a
/// snapshot fails only at writeback, and the kernel's cache keeps showing the bytes it could
/// not write, where the recording read what the device holds.
fn dd_script(m: &Mount, target: &str, seek: &str, count: &str, tag: &str) -> String {
    format!(
        "{{ yes '{tag}' | head -c $(({count} * 512)) > data; }} || true\n\
         dd if=data of='{}' bs=512 seek={seek} count={count} conv=notrunc,fsync status=none{} 2>/dev/null; echo $?\n",
        path_of(m, target).display(),
        dd_write_through()
    )
}

/// The errno name that dmsetup's "... failed: <strerror>" stands for.
fn kernel_errno(stderr: &[&str]) -> Option<i32> {
    let line = stderr.iter().find(|l| l.contains("failed: "))?;
    Some(match line.rsplit_once("failed: ").unwrap().1 {
        "Invalid argument" => libc::EINVAL,
        "No such device" => libc::ENODEV,
        "No such device or address" => libc::ENXIO,
        "Device or resource busy" => libc::EBUSY,
        "Cannot allocate memory" => libc::ENOMEM,
        "Not a directory" => libc::ENOTDIR,
        "No such file or directory" => libc::ENOENT,
        other => panic!("unknown strerror {other:?}"),
    })
}

/// The reasons in the kernel's messages that dmfs should give too: the target's error after
/// "device-mapper: table: 253:N: TYPE: " (without the errno), and the snapshot code's own
/// messages ("device-mapper: persistent snapshot: ...").
fn kernel_reasons(kmsg: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for line in kmsg {
        if let Some(rest) = line.strip_prefix("device-mapper: table: ") {
            let Some((_, reason)) = rest.split_once(": ") else {
                continue;
            };
            if reason.starts_with("adding target device") {
                continue;
            }
            // "snapshot: requires 4 or more arguments (-EINVAL)" -> "requires 4 or more arguments"
            let reason = ["snapshot: ", "snapshot-origin: ", "snapshot-merge: "]
                .iter()
                .find_map(|p| reason.strip_prefix(p))
                .unwrap_or(reason);
            let reason = reason.rsplit_once(" (-E").map_or(reason, |(r, _)| r);
            out.push(reason.to_string());
        } else if let Some(rest) = line.strip_prefix("device-mapper: persistent snapshot: ") {
            // A warning that precedes the refusal ("invalid on-disk chunk size"), not a reason.
            if rest.contains("overrides table chunk size") {
                continue;
            }
            out.push(rest.trim_end_matches('.').to_string());
        }
    }
    out
}

/// Refusals where dmfs's errno differs from the kernel's, on purpose.
/// - Missing devices: the kernel's dm_get_device says ENODEV; dmfs names files, and a missing
///   file is ENOENT (as for linear).
/// - chunk-max (2^21 sectors, a 1 GiB chunk): the kernel fails to vmalloc the 1 GiB header
///   buffer (ENOMEM, with a vmalloc warning and stack trace in kmsg) in a 1 GiB VM; dmfs fails
///   to write the 1 GiB header chunk into the 5 MiB COW file ("Failed to read snapshot
///   metadata: writing the header: Input/output error", EINVAL).
const ERRNO_DEPARTURES: [&str; 4] = [
    "origin-missing",
    "cow-missing",
    "origin-missing-dev",
    "chunk-max",
];

/// Replays one case; returns what differed from the kernel.
fn replay(case: &Case) -> Vec<String> {
    let m = setup();
    let mut bad = Vec::new();
    let name = &case.name;
    let f = &case.fields;
    // The lines that follow an action: its rc, stderr and kmsg.
    let results = |i: usize| {
        let mut rc = None;
        let (mut stderr, mut kmsg) = (Vec::new(), Vec::new());
        for (k, v) in &f[i + 1..] {
            match k.as_str() {
                "rc" if rc.is_none() => rc = Some(v.as_str()),
                "stderr" => stderr.push(v.as_str()),
                "kmsg" => kmsg.push(v.as_str()),
                _ => break,
            }
        }
        (rc.expect("an action without rc"), stderr, kmsg)
    };
    for (i, (key, value)) in f.iter().enumerate() {
        let (dev, rest) = value.split_once(' ').unwrap_or((value, ""));
        match key.as_str() {
            "create" | "reload" => {
                let (rc, stderr, kmsg) = results(i);
                let dir = if key == "create" { "create" } else { "reload" };
                let res = m.write_table(dir, dev, &(substitute(&m, rest) + "\n"));
                match (rc, res) {
                    ("0", Ok(())) => {}
                    ("0", Err(e)) => bad.push(format!(
                        "{name}: {key} {rest}: the kernel accepted it, dmfs said {e}: {}",
                        m.last_error()
                    )),
                    (rc, Ok(())) => bad.push(format!(
                        "{name}: {key} {rest}: the kernel refused it (exit {rc}: {kmsg:?}), dmfs accepted it"
                    )),
                    (_, Err(e)) => {
                        let ours = m.last_error();
                        if let Some(errno) = kernel_errno(&stderr)
                            && e.raw_os_error() != Some(errno)
                            && !ERRNO_DEPARTURES.contains(&name.as_str())
                        {
                            bad.push(format!(
                                "{name}: {key} {rest}: the kernel's errno {errno}, dmfs's {e}"
                            ));
                        }
                        for reason in kernel_reasons(&kmsg)
                            .into_iter()
                            .filter(|_| name != "chunk-max")
                        {
                            // "vda too small for target: ...": the kernel names the device.
                            let reason = reason.replace(
                                "vda too small",
                                &format!("{} too small", m.path("O.img").display()),
                            );
                            if !ours.contains(&reason) {
                                bad.push(format!(
                                    "{name}: kernel said {reason:?}, dmfs said {ours:?}"
                                ));
                            }
                        }
                        if m.devices().iter().any(|d| d == dev) && key == "create" {
                            bad.push(format!("{name}: a refused create left {dev} behind"));
                        }
                    }
                }
            }
            "suspend" | "resume" | "remove" => {
                let (rc, _, _) = results(i);
                let out = m.ctl(key, dev);
                if out.is_ok() != (rc == "0") {
                    bad.push(format!(
                        "{name}: {key} {dev}: kernel exit {rc}, dmfs {out:?}: {}",
                        m.last_error()
                    ));
                }
            }
            "dd" | "ddrun" => {
                let (rc, _, _) = results(i);
                let a: Vec<&str> = value.split(' ').collect();
                let script = if key == "dd" {
                    dd_script(&m, a[0], a[1], a[2], a[3])
                } else {
                    let (first, step, n): (u64, u64, u64) = (
                        a[1].parse().unwrap(),
                        a[2].parse().unwrap(),
                        a[3].parse().unwrap(),
                    );
                    (0..n)
                        .map(|k| {
                            dd_script(
                                &m,
                                a[0],
                                &(first + k * step).to_string(),
                                a[4],
                                &format!("{}-{k}", a[5]),
                            )
                        })
                        .collect()
                };
                let rcs: Vec<String> = m.ok(&script).lines().map(String::from).collect();
                let ours = if rcs.iter().all(|r| r == "0") {
                    "0".to_string()
                } else {
                    rcs.join(" ")
                };
                if ours != rc {
                    bad.push(format!(
                        "{name}: {key} {value}: kernel rc {rc}, dmfs {ours}"
                    ));
                }
            }
            "hdr" => {
                let a: Vec<&str> = value.split(' ').collect();
                let mut sector = [0u8; 512];
                let words = [
                    u32::from_str_radix(a[1], 16).unwrap(),
                    a[2].parse().unwrap(),
                    a[3].parse().unwrap(),
                    a[4].parse().unwrap(),
                ];
                for (k, w) in words.iter().enumerate() {
                    sector[k * 4..k * 4 + 4].copy_from_slice(&w.to_le_bytes());
                }
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path_of(&m, a[0]))
                    .unwrap();
                file.write_all_at(&sector, 0).unwrap();
            }
            "load" => {
                let mut image = gunzip(rest);
                let path = path_of(&m, dev);
                let len = std::fs::metadata(&path).unwrap().len() as usize;
                assert!(image.len() <= len, "{name}: {rest} is larger than {dev}");
                image.resize(len, 0);
                std::fs::write(&path, image).unwrap();
            }
            "save" => {
                // The image the kernel saved here is loaded by kload-*; dmfs's own image at this
                // point must still be the one the kernel loaded in dload-* (d-*), byte for byte.
                let ours = std::fs::read(path_of(&m, dev)).unwrap();
                let file = rest.replacen("k-", "d-", 1);
                let fixture = if fixtures_dir()
                    .join("snapshots")
                    .join(format!("{file}.gz"))
                    .exists()
                {
                    file
                } else {
                    rest.to_string()
                };
                if ours != gunzip(&fixture) {
                    bad.push(format!("{name}: {dev} differs from snapshots/{fixture}.gz"));
                }
            }
            "waitmerge" => {
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let status = m.read(&format!("dm/{dev}/status"));
                    let fields: Vec<&str> = status.split_whitespace().collect();
                    if let [_, _, _, usage, meta] = fields[..]
                        && usage.split('/').next() == Some(meta)
                    {
                        break;
                    }
                    if Instant::now() > deadline {
                        bad.push(format!("{name}: merge of {dev} did not finish: {status}"));
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            "ktable" | "kstatus" => {
                let file = if key == "ktable" { "table" } else { "status" };
                let ours = std::fs::read_to_string(m.mnt.join("dm").join(dev).join(file))
                    .unwrap_or_else(|e| format!("({e})"));
                let expect = substitute(&m, rest) + "\n";
                if ours != expect {
                    bad.push(format!(
                        "{name}: {file} of {dev}: kernel {expect:?}, dmfs {ours:?}"
                    ));
                }
            }
            "sha" => {
                let ours = sha256(&m, dev);
                if ours != rest {
                    bad.push(format!(
                        "{name}: sha256 of {dev} (after {}): kernel {rest}, dmfs {ours}",
                        f[..i]
                            .iter()
                            .rev()
                            .find(|(k, _)| ["dd", "ddrun", "create", "reload", "resume"]
                                .contains(&k.as_str()))
                            .map_or("start".to_string(), |(k, v)| format!("{k} {v}"))
                    ));
                }
            }
            "header" => {
                let mut head = [0u8; 16];
                std::fs::File::open(path_of(&m, dev))
                    .unwrap()
                    .read_exact(&mut head)
                    .unwrap();
                let ours: String = head.iter().map(|b| format!("{b:02x}")).collect();
                if ours != rest {
                    bad.push(format!(
                        "{name}: header of {dev}: kernel {rest}, dmfs {ours}"
                    ));
                }
            }
            // dmfs has no status file for an inactive table; dmsetup's text is kept for reading.
            "kstatusinactive" | "rc" | "stderr" | "kmsg" | "note" => {}
            other => panic!("{name}: unknown line {other} {value}"),
        }
    }
    let _ = std::io::stdout().flush();
    bad
}

fn run(select: impl Fn(&str) -> bool, at_least: usize) {
    let mut bad = Vec::new();
    let mut n = 0;
    for case in cases().iter().filter(|c| select(&c.name)) {
        bad.extend(replay(case));
        n += 1;
    }
    assert!(
        bad.is_empty(),
        "{} differences:\n{}",
        bad.len(),
        bad.join("\n")
    );
    assert!(n >= at_least, "only {n} cases");
}

fn prefixed(name: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|p| name.starts_with(p))
}

const OTHER: [&str; 5] = ["xchg-", "kload-", "dload-", "overflow-", "merge-"];

/// Snapshot tables over P, N and PO at chunk sizes 1, 8, 16 and 128, features, odd chunk
/// sizes and headers: table, status, images after origin and snapshot writes; and the refused
/// tables, refused with the kernel's errno and words.
#[test]
fn tables_status_writes_and_refusals_match_the_kernel() {
    run(|n| !prefixed(n, &OTHER), 40);
}

/// COW devices with many metadata areas, written by the kernel (and loaded by it again), and
/// by dmfs (and loaded by the kernel).
#[test]
fn cow_devices_interchange_with_the_kernel() {
    run(|n| prefixed(n, &["xchg-", "kload-", "dload-"]), 9);
}

/// A full COW device: Invalid for P and N, Overflow for PO, and the header's valid word.
#[test]
fn overflow_matches_the_kernel() {
    run(|n| n.starts_with("overflow-"), 6);
}

/// snapshot-merge: status before and after, and the origin afterwards.
#[test]
fn merge_matches_the_kernel() {
    run(|n| n.starts_with("merge-"), 2);
}
