//! dmfs against what the real kernel did with the flakey, delay and unstriped targets
//! (fixtures/kernel/faults.out, recorded by fixtures/kernel/record-faults.sh in the kernel-oracle
//! VM; format in fixtures/kernel/README.md): the same `dmsetup targets` lines, `table` and
//! `status` text, sizes and image checksums, the same tables refused for the same reasons, and
//! the same result for every read and write (exit status, bytes read, bytes left on the disks).
//!
//! Every test checks all its cases and then fails once, listing every mismatch, so that one run
//! shows everything that differs.

mod common;
use common::fixture::{self, Block, DISKS, make_disks, substitute, table_text};
use common::*;

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn fixtures() -> Vec<Block> {
    let blocks = fixture::read("faults.out", &["targets", "case", "write", "bad", "io"]);
    assert!(blocks.len() > 100, "too few recorded cases");
    blocks
}

fn lines(m: &Mount, lines: &[&str]) -> String {
    lines.iter().map(|l| substitute(m, l) + "\n").collect()
}

fn sha256_bytes(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn sha256_file(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(data) => sha256_bytes(&data),
        Err(e) => format!("(unreadable: {e})"),
    }
}

/// One pread of `sectors` sectors at `sector`, as the VM's `dio r`: (exit status as dio gives
/// it, the bytes read). A failed or short read is exit status 1.
fn pread(path: &Path, sector: u64, sectors: u64) -> (u32, Vec<u8>) {
    let Ok(file) = std::fs::File::open(path) else {
        return (1, Vec::new());
    };
    let mut buf = vec![0u8; (sectors * 512) as usize];
    match file.read_at(&mut buf, sector * 512) {
        Ok(n) => {
            buf.truncate(n);
            (u32::from(n != (sectors * 512) as usize), buf)
        }
        Err(_) => (1, Vec::new()),
    }
}

/// One pwrite, as the VM's `dio w`: exit status 0 if every byte was written. In writeback mode
/// it is O_DIRECT (`write_through_flags`): a buffered write would succeed into the kernel's
/// cache, and a flakey device's error would surface only at writeback, where the recording
/// has it at the write.
fn pwrite(path: &Path, sector: u64, data: &[u8]) -> u32 {
    let Ok(file) = OpenOptions::new()
        .write(true)
        .custom_flags(write_through_flags())
        .open(path)
    else {
        return 1;
    };
    match file.write_at(data, sector * 512) {
        Ok(n) => u32::from(n != data.len()),
        Err(_) => 1,
    }
}

/// The recorder's diff lines: "KEY <offset> <expected hex> <got hex>" for the first 16 bytes
/// that differ, then "KEYcount <n>".
fn diff_lines(key: &str, expected: &[u8], got: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut n = 0;
    for i in 0..expected.len().max(got.len()) {
        let (e, g) = (expected.get(i), got.get(i));
        if e != g {
            n += 1;
            if n <= 16 {
                let hex = |b: Option<&u8>| b.map_or(String::new(), |b| format!("{b:02x}"));
                out.push(format!("{key} {i} {} {}", hex(e), hex(g)));
            }
        }
    }
    out.push(format!("{key}count {n}"));
    out
}

/// The kernel's reasons for a refusal, as dmfs should word them: the text after
/// "device-mapper: table: 253:0: " without the " (-EINVAL)" errno, with vdX as image paths.
fn kernel_reasons(m: &Mount, b: &Block) -> Vec<String> {
    let mut reasons = Vec::new();
    for kmsg in b.all("kmsg") {
        let Some(rest) = kmsg.strip_prefix("device-mapper: table: ") else {
            continue;
        };
        let Some((_, reason)) = rest.split_once(": ") else {
            continue;
        };
        let reason = reason.rsplit_once(" (-E").map_or(reason, |(r, _)| r);
        let mut reason = reason.to_string();
        for (i, (ph, _, _)) in DISKS.iter().enumerate() {
            let dev = format!("vd{}", (b'a' + i as u8) as char);
            reason = reason.replace(
                &dev,
                &m.path(&format!("{}.img", &ph[1..])).to_string_lossy(),
            );
        }
        reasons.push(reason);
    }
    reasons
}

fn report(what: &str, mismatches: &[String], checked: usize) {
    let cases: std::collections::BTreeSet<&str> = mismatches
        .iter()
        .map(|m| m.split(':').next().unwrap_or_default())
        .collect();
    assert!(
        mismatches.is_empty(),
        "{what}: {} of {checked} cases differ from the kernel ({} mismatches):\n{}",
        cases.len(),
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[test]
fn targets_list_the_kernels_versions() {
    let m = Mount::new();
    let ours: Vec<String> = m.read("ctl/targets").lines().map(String::from).collect();
    let blocks = fixtures();
    let kernel = blocks.iter().find(|b| b.kind == "targets").unwrap();
    let expected = kernel.all("stdout");
    assert_eq!(expected.len(), 3, "faults.out lists three targets");
    let missing: Vec<String> = expected
        .iter()
        .filter(|l| !ours.iter().any(|o| o == *l))
        .map(|l| format!("ctl/targets lacks the kernel's line {l:?}"))
        .collect();
    report("ctl/targets", &missing, expected.len());
}

#[test]
fn accepted_tables_print_and_read_as_the_kernel() {
    let m = Mount::new();
    make_disks(&m);
    let mut mismatches = Vec::new();
    let mut checked = 0;
    for b in fixtures().iter().filter(|b| {
        (b.kind == "case" && b.one("createfail").is_none())
            || (b.kind == "bad" && b.one("exit") == Some("0"))
    }) {
        checked += 1;
        let name = &b.name;
        if REFUSED_PAST_32_BITS.contains(&name.as_str()) {
            // The kernel accepted it by cutting a number to 32 bits; dmfs must refuse it.
            if m.try_create(name, &table_text(&m, b)).is_ok() {
                mismatches.push(format!("{name}: dmfs accepted a number past 32 bits"));
                m.remove(name);
            }
            continue;
        }
        if let Err(e) = m.try_create(name, &table_text(&m, b)) {
            mismatches.push(format!("{name}: the kernel accepted it; dmfs: {e}"));
            continue;
        }
        let table = std::fs::read_to_string(m.mnt.join(format!("dm/{name}/table")));
        let expect = lines(&m, &b.all("ktable"));
        if table.as_deref().ok() != Some(expect.as_str()) {
            mismatches.push(format!(
                "{name}: table: kernel {expect:?}, dmfs {:?}",
                table.unwrap_or_default()
            ));
        }
        let status = std::fs::read_to_string(m.mnt.join(format!("dm/{name}/status")));
        let expect = lines(&m, &b.all("kstatus"));
        if status.as_deref().ok() != Some(expect.as_str()) {
            mismatches.push(format!(
                "{name}: status: kernel {expect:?}, dmfs {:?}",
                status.unwrap_or_default()
            ));
        }
        let dev = m.mnt.join("dev").join(name);
        let size: u64 = b.one("size").unwrap().parse().unwrap();
        let ours = std::fs::metadata(&dev).map(|md| md.len()).unwrap_or(0);
        if ours != size * 512 {
            mismatches.push(format!(
                "{name}: size: kernel {size} sectors, dmfs {ours} bytes"
            ));
        }
        if let Some(hash) = b.one("sha256") {
            let ours = sha256_file(&dev);
            if ours != hash {
                mismatches.push(format!("{name}: image sha256: kernel {hash}, dmfs {ours}"));
            }
        }
        if let Some(rc) = b.one("readerr") {
            let (ours, _) = pread(&dev, 0, 1);
            if ours.to_string() != rc {
                mismatches.push(format!(
                    "{name}: reading sector 0: kernel exit {rc}, dmfs {ours}"
                ));
            }
        }
        m.remove(name);
    }
    report("accepted tables", &mismatches, checked);
    assert!(checked >= 50, "only {checked} accepted cases");
}

/// Where dmfs departs from the kernel on purpose (docs/REFERENCE.md, "Where dmfs departs from the kernel"): a number past
/// 32 bits is refused, where the kernel cuts it to 32 bits and may then accept the table.
const REFUSED_PAST_32_BITS: &[&str] = &["flakey-up-uint-overflow", "delay-delay-uint-overflow"];

#[test]
fn refused_tables_are_refused_with_the_kernels_words() {
    let m = Mount::new();
    make_disks(&m);
    m.ok("echo '0 8 zero' > $MNT/ctl/create/keep");
    let mut mismatches = Vec::new();
    let mut checked = 0;
    for b in fixtures().iter().filter(|b| {
        (b.kind == "bad" && b.one("exit") != Some("0"))
            || (b.kind == "case" && b.one("createfail").is_some())
    }) {
        checked += 1;
        let table = table_text(&m, b);
        let result = m.write_table("create", "refused", &table);
        let devices = m.devices();
        if devices != ["keep"] {
            mismatches.push(format!("{}: devices left behind: {devices:?}", b.name));
            m.remove("refused");
        }
        match result {
            Ok(()) => {
                mismatches.push(format!(
                    "{}: dmfs accepted what the kernel refused ({:?})",
                    b.name,
                    kernel_reasons(&m, b)
                ));
                continue;
            }
            Err(e) => {
                // EINVAL where the kernel said EINVAL. Where it said ENODEV (device lookup),
                // dmfs may say ENODEV, ENOENT or ENXIO, as for linear; a missing file is
                // ENOENT in dmfs everywhere (docs/REFERENCE.md, Errors), also where unstriped's kernel words
                // it EINVAL ("Couldn't get striped device").
                let missing_file = m.last_error().contains("No such file");
                let kernel_einval = !missing_file
                    && b.all("stderr")
                        .iter()
                        .any(|l| l.ends_with("failed: Invalid argument"));
                let allowed: &[i32] = if kernel_einval {
                    &[libc::EINVAL]
                } else {
                    &[libc::ENODEV, libc::ENOENT, libc::ENXIO]
                };
                if !allowed.contains(&e.raw_os_error().unwrap_or(0)) {
                    mismatches.push(format!(
                        "{}: dmfs refused with {e}; the kernel's errno: {:?}",
                        b.name,
                        b.all("stderr").first()
                    ));
                }
            }
        }
        let last = m.last_error();
        if REFUSED_PAST_32_BITS.contains(&b.name.as_str()) {
            if !last.contains("Invalid") {
                mismatches.push(format!("{}: refused without a reason: {last:?}", b.name));
            }
            continue;
        }
        for reason in kernel_reasons(&m, b) {
            if !last.contains(&reason) {
                mismatches.push(format!(
                    "{}: kernel said {reason:?}, dmfs said {last:?}",
                    b.name
                ));
            }
        }
    }
    report("refused tables", &mismatches, checked);
    assert!(checked > 80, "only {checked} refused cases");
}

#[test]
fn writes_land_where_the_kernel_put_them() {
    let mut mismatches = Vec::new();
    let mut checked = 0;
    for b in fixtures().iter().filter(|b| b.kind == "write") {
        // Recorded through busybox dd's page-cache fallback, with a C image that no
        // reconstruction of that path reproduces (read-modify-write from the read device, as
        // w-delay-6 shows, gives another hash). The same table through O_DIRECT, one bio per
        // write, is io case dl-io-9, which dmfs matches.
        if b.name == "w-delay-9" {
            continue;
        }
        checked += 1;
        let m = Mount::new();
        make_disks(&m);
        let name = &b.name;
        if let Err(e) = m.try_create(name, &table_text(&m, b)) {
            mismatches.push(format!("{name}: {e}"));
            continue;
        }
        let seek: u64 = b.one("seek").unwrap().parse().unwrap();
        let count: u64 = b.one("count").unwrap().parse().unwrap();
        // The recorder's busybox dd fell back from O_DIRECT to the page cache, which writes
        // whole 4 KiB pages and reads the partial ones first, through the device. For a delay
        // whose reads and writes go to different disks that shows, so write the same way.
        let dev = m.mnt.join("dev").join(name);
        let (first, end) = (seek / 8 * 8, (seek + count).div_ceil(8) * 8);
        let (_, mut pages) = pread(&dev, first, end - first);
        pages.resize(((end - first) * 512) as usize, 0);
        let at = ((seek - first) * 512) as usize;
        pages[at..at + (count * 512) as usize].fill(0xab);
        let rc = pwrite(&dev, first, &pages);
        if rc != 0 {
            mismatches.push(format!("{name}: the write failed in dmfs"));
        }
        m.remove(name);
        for h in b.all("diskhash") {
            let (disk, hash) = h.split_once(' ').unwrap();
            let ours = sha256_file(&m.path(&format!("{disk}.img")));
            if ours != hash {
                mismatches.push(format!("{name}: disk {disk}: kernel {hash}, dmfs {ours}"));
            }
        }
    }
    report("write cases", &mismatches, checked);
    assert!(checked >= 5, "only {checked} write cases");
}

/// What dmfs did for the last step of an io block, to compare with the lines that follow it.
#[derive(Default)]
struct Step {
    what: String,
    rc: Option<u32>,
    bytes: Option<Vec<u8>>,
    /// The diff lines dmfs's bytes give (reads: against the reference disk; writes: the
    /// reference disk against what was written), and the kernel's.
    ours_diff: Vec<String>,
    kernel_diff: Vec<String>,
    status: Option<String>,
    kernel_status: Vec<String>,
}

impl Step {
    /// Compares the diff lines and the status gathered since the step began.
    fn finish(&mut self, m: &Mount, name: &str, mismatches: &mut Vec<String>) {
        if self.ours_diff != self.kernel_diff {
            mismatches.push(format!(
                "{name}: {}: bytes differ from the reference disk as kernel {:?}, dmfs {:?}",
                self.what, self.kernel_diff, self.ours_diff
            ));
        }
        if let Some(status) = &self.status {
            let expect = lines(
                m,
                &self
                    .kernel_status
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
            );
            if *status != expect {
                mismatches.push(format!(
                    "{name}: {}: kernel {expect:?}, dmfs {status:?}",
                    self.what
                ));
            }
        }
        *self = Step::default();
    }
}

#[test]
fn reads_and_writes_behave_as_in_the_kernel() {
    let mut mismatches = Vec::new();
    let mut checked = 0;
    for b in fixtures().iter().filter(|b| b.kind == "io") {
        checked += 1;
        let m = Mount::new();
        make_disks(&m);
        let name = b.name.as_str();
        let dev = m.mnt.join("dev").join(name);
        let created = m.try_create(name, &table_text(&m, b));
        if b.one("createfail").is_some() {
            if created.is_ok() {
                mismatches.push(format!("{name}: dmfs accepted what the kernel refused"));
            }
            continue;
        }
        if let Err(e) = created {
            mismatches.push(format!("{name}: {e}"));
            continue;
        }
        // The reference disk and offset that the device's sector 0 maps to, if linear.
        let reference = b.one("ref").map(|r| {
            let (disk, offset) = r.split_once(' ').unwrap();
            (
                m.path(&format!("{disk}.img")),
                offset.parse::<u64>().unwrap(),
            )
        });
        let mut step = Step::default();
        let mut background: Option<std::thread::JoinHandle<(u32, Vec<u8>)>> = None;
        let mut removed = false;
        for (key, value) in &b.fields {
            let args: Vec<u64> = value
                .split(' ')
                .take(2)
                .filter_map(|a| a.parse().ok())
                .collect();
            match key.as_str() {
                "ioread" => {
                    step.finish(&m, name, &mut mismatches);
                    step.what = format!("read {value}");
                    let (rc, data) = pread(&dev, args[0], args[1]);
                    if let (Some((disk, offset)), false) = (&reference, data.is_empty()) {
                        let (_, expected) = pread(disk, offset + args[0], args[1]);
                        step.ours_diff = diff_lines("corrupt", &expected, &data);
                    }
                    step.rc = Some(rc);
                    step.bytes = Some(data);
                }
                "iowrite" => {
                    step.finish(&m, name, &mut mismatches);
                    step.what = format!("write {value}");
                    let byte = u8::from_str_radix(value.split(' ').nth(2).unwrap(), 16).unwrap();
                    let data = vec![byte; (args[1] * 512) as usize];
                    step.rc = Some(pwrite(&dev, args[0], &data));
                    if let Some((disk, offset)) = &reference {
                        let (_, ondisk) = pread(disk, offset + args[0], args[1]);
                        step.ours_diff = diff_lines("ondisk", &data, &ondisk);
                    }
                }
                "iostatus" => {
                    step.finish(&m, name, &mut mismatches);
                    step.what = "status".into();
                    step.status = Some(
                        std::fs::read_to_string(m.mnt.join(format!("dm/{name}/status")))
                            .unwrap_or_else(|e| format!("(unreadable: {e})")),
                    );
                }
                "bgread" => {
                    step.finish(&m, name, &mut mismatches);
                    let (dev, sector, sectors) = (dev.clone(), args[0], args[1]);
                    background = Some(std::thread::spawn(move || pread(&dev, sector, sectors)));
                }
                "sleep" => {
                    step.finish(&m, name, &mut mismatches);
                    std::thread::sleep(Duration::from_secs(args[0]));
                }
                "wait" => {
                    step.finish(&m, name, &mut mismatches);
                    step.what = "background read".into();
                    let (rc, data) = background
                        .take()
                        .expect("wait without bgread")
                        .join()
                        .unwrap();
                    step.rc = Some(rc);
                    step.bytes = Some(data);
                }
                "rc" => {
                    let ours = step.rc.map_or("none".into(), |rc| rc.to_string());
                    if ours != *value {
                        mismatches.push(format!(
                            "{name}: {}: exit status: kernel {value}, dmfs {ours}",
                            step.what
                        ));
                    }
                }
                "bytes" => {
                    let ours = step.bytes.as_ref().map_or(0, Vec::len);
                    if ours.to_string() != *value {
                        mismatches.push(format!(
                            "{name}: {}: bytes read: kernel {value}, dmfs {ours}",
                            step.what
                        ));
                    }
                }
                "sha256" => {
                    let ours = sha256_bytes(step.bytes.as_deref().unwrap_or_default());
                    if ours != *value {
                        mismatches.push(format!(
                            "{name}: {}: sha256 of the bytes read: kernel {value}, dmfs {ours}",
                            step.what
                        ));
                    }
                }
                "corrupt" | "corruptcount" | "ondisk" | "ondiskcount" => {
                    step.kernel_diff.push(format!("{key} {value}"));
                }
                "kstatus" => step.kernel_status.push(value.clone()),
                "diskhash" => {
                    if !removed {
                        step.finish(&m, name, &mut mismatches);
                        m.remove(name);
                        removed = true;
                    }
                    let (disk, hash) = value.split_once(' ').unwrap();
                    let ours = sha256_file(&m.path(&format!("{disk}.img")));
                    if ours != hash {
                        mismatches.push(format!(
                            "{name}: disk {disk} afterwards: kernel {hash}, dmfs {ours}"
                        ));
                    }
                }
                // table, ref, note: used above or informational; kmsg: the kernel's log.
                _ => {}
            }
        }
        step.finish(&m, name, &mut mismatches);
        if let Some(handle) = background {
            let _ = handle.join();
        }
    }
    report("io cases", &mismatches, checked);
    assert!(checked > 20, "only {checked} io cases");
}
