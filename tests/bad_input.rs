//! Bad input, table-driven: every case must fail with the errno the shell shows, leave a line
//! with the reason in `ctl/errors` (where the failure reaches dmfs), and change nothing: the
//! device list, and the table, bytes and backing files of a device made before are the same.
//!
//! Every case runs even when an earlier one fails; a test reports all its failing cases at once.

mod common;
use common::*;

use std::sync::atomic::{AtomicU32, Ordering};

static NAME_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Sectors in each backing image of the fixture.
const IMG_SECTORS: u64 = 64;

struct Case {
    what: String,
    /// Run before the "before" snapshot; must succeed.
    setup: String,
    /// Must fail.
    script: String,
    /// What the shell prints for the errno, e.g. "Invalid argument".
    errno: &'static str,
    /// A phrase a new ctl/errors line must hold (None: the failure never reaches dmfs, or dmfs
    /// has nothing to log, e.g. a write past the end).
    key: Option<String>,
    /// Run after the checks; must succeed.
    cleanup: String,
    /// A name the failed create must have given back: creating it afterwards must work.
    reuse: Option<String>,
}

fn case(what: &str, script: impl Into<String>, errno: &'static str, key: Option<&str>) -> Case {
    Case {
        what: what.to_string(),
        setup: String::new(),
        script: script.into(),
        errno,
        key: key.map(str::to_string),
        cleanup: String::new(),
        reuse: None,
    }
}

/// A create of device `name` with `lines` (one write: echo for one line, printf for several).
fn create(what: &str, name: &str, lines: &[&str], errno: &'static str, key: &str) -> Case {
    // "t" stands for a fresh name, so a case that wrongly creates its device cannot make the
    // next cases fail for the wrong reason.
    let name = if name == "t" {
        format!("t{}", NAME_COUNTER.fetch_add(1, Ordering::SeqCst))
    } else {
        name.into()
    };
    let script = if lines.len() == 1 {
        format!("echo \"{}\" > $MNT/ctl/create/{name}", lines[0])
    } else {
        format!(
            "printf \"{}\\n\" > $MNT/ctl/create/{name}",
            lines.join("\\n")
        )
    };
    let mut c = case(what, script, errno, Some(key));
    c.reuse = Some(name);
    c
}

impl Case {
    fn setup(mut self, s: &str) -> Case {
        self.setup = s.to_string();
        self
    }
    fn cleanup(mut self, s: &str) -> Case {
        self.cleanup = s.to_string();
        self
    }
}

/// The symbolic errno dmfs writes at the end of a ctl/errors line.
fn errno_symbol(shell_text: &str) -> &'static str {
    match shell_text {
        "Invalid argument" => "(EINVAL)",
        "No such file or directory" => "(ENOENT)",
        "Device or resource busy" => "(EBUSY)",
        "Is a directory" => "(EISDIR)",
        "No space left on device" => "(ENOSPC)",
        "Permission denied" => "(EACCES)",
        other => panic!("no symbol for {other}"),
    }
}

/// A mount with two pattern images, a directory, and the device `keep` made before the cases.
struct Fixture {
    m: Mount,
}

#[derive(PartialEq, Debug)]
struct State {
    devices: Vec<String>,
    keep_table: String,
    sums: String,
}

impl Fixture {
    fn new() -> Fixture {
        let m = Mount::new();
        write_pattern_image(&m.path("a.img"), 0, IMG_SECTORS);
        write_pattern_image(&m.path("b.img"), 1, IMG_SECTORS);
        std::fs::create_dir(m.path("d")).unwrap();
        m.ok(r#"printf "0 32 linear $PWD/a.img 16\n32 64 linear $PWD/b.img 0\n" > $MNT/ctl/create/keep"#);
        // keep is a's sectors 16..48, then all of b: checked against the images themselves.
        let a = pattern_image(0, IMG_SECTORS);
        let b = pattern_image(1, IMG_SECTORS);
        let mut want = a[16 * 512..48 * 512].to_vec();
        want.extend_from_slice(&b);
        assert!(
            std::fs::read(m.mnt.join("dev/keep")).unwrap() == want,
            "dev/keep has the wrong bytes"
        );
        assert_eq!(
            m.read("dm/keep/table"),
            format!(
                "0 32 linear {0}/a.img 16\n32 64 linear {0}/b.img 0\n",
                m.dir.display()
            )
        );
        Fixture { m }
    }

    fn state(&self) -> State {
        State {
            devices: self.m.devices(),
            keep_table: self.m.read("dm/keep/table"),
            sums: self.m.ok("sha256sum $MNT/dev/keep a.img b.img"),
        }
    }

    fn errors(&self) -> Vec<String> {
        self.m
            .read("ctl/errors")
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Runs one case; Err says what went wrong.
    fn run(&self, c: &Case) -> Result<(), String> {
        if !c.setup.is_empty() {
            let out = self.m.sh(&c.setup);
            if !out.status.success() {
                return Err(format!(
                    "setup failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        let before = self.state();
        let errors_before = self.errors();
        let out = self.m.sh(&c.script);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let mut problems = Vec::new();
        if out.status.success() {
            problems.push("the script succeeded".to_string());
        }
        if !stderr.contains(c.errno) {
            problems.push(format!(
                "expected {:?} in stderr, got {:?}",
                c.errno,
                stderr.trim()
            ));
        }
        let errors_after = self.errors();
        let new = new_lines(&errors_before, &errors_after);
        if let Some(key) = &c.key {
            let symbol = errno_symbol(c.errno);
            if !new
                .iter()
                .any(|l| l.contains(key.as_str()) && l.ends_with(symbol))
            {
                problems.push(format!(
                    "no new ctl/errors line with {key:?} and {symbol}; new lines: {new:?}"
                ));
            }
        }
        let after = self.state();
        if after != before {
            problems.push(format!(
                "state changed:\nbefore {before:?}\nafter  {after:?}"
            ));
        }
        if let Some(name) = &c.reuse
            && !after.devices.contains(name)
        {
            let script = format!(
                "for i in $(seq 100); do echo '0 8 zero' > $MNT/ctl/create/{name} 2>/dev/null && break; sleep 0.05; done\n\
                 test -e $MNT/dev/{name} && echo {name} > $MNT/ctl/remove"
            );
            if !self.m.sh(&script).status.success() {
                problems.push(format!(
                    "the name {name} was not given back after the failed create"
                ));
            }
        }
        if !c.cleanup.is_empty() {
            let out = self.m.sh(&c.cleanup);
            if !out.status.success() {
                problems.push(format!(
                    "cleanup failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n    "))
        }
    }

    fn run_all(&self, cases: Vec<Case>) {
        let total = cases.len();
        let failures: Vec<String> = cases
            .iter()
            .filter_map(|c| {
                self.run(c)
                    .err()
                    .map(|e| format!("[{}] {}\n    {}", c.what, c.script, e))
            })
            .collect();
        assert!(
            failures.is_empty(),
            "{} of {total} cases failed:\n{}\nlog:\n{}",
            failures.len(),
            failures.join("\n"),
            self.m.log()
        );
    }
}

/// Lines of `after` that were not in `before`, allowing for the oldest lines to have been
/// dropped (ctl/errors keeps the most recent 100).
fn new_lines(before: &[String], after: &[String]) -> Vec<String> {
    for drop in 0..=before.len() {
        let kept = &before[drop..];
        if after.len() >= kept.len() && after[..kept.len()] == *kept {
            return after[kept.len()..].to_vec();
        }
    }
    after.to_vec()
}

const EINVAL: &str = "Invalid argument";
const ENOENT: &str = "No such file or directory";
const EBUSY: &str = "Device or resource busy";

#[test]
fn bad_tables_and_names() {
    let f = Fixture::new();
    let long128 = "n".repeat(128);
    let cases = vec![
        create(
            "non-numeric start",
            "t",
            &["x 8 zero"],
            EINVAL,
            "not a decimal sector count",
        ),
        create(
            "non-numeric length",
            "t",
            &["0 abc zero"],
            EINVAL,
            "not a decimal sector count",
        ),
        create(
            "negative length",
            "t",
            &["0 -8 zero"],
            EINVAL,
            "not a decimal sector count",
        ),
        create(
            "negative start",
            "t",
            &["-1 8 zero"],
            EINVAL,
            "not a decimal sector count",
        ),
        create(
            "hex length",
            "t",
            &["0 0x10 zero"],
            EINVAL,
            "not a decimal sector count",
        ),
        create(
            "length 2^64",
            "t",
            &["0 18446744073709551616 zero"],
            EINVAL,
            "too large",
        ),
        create(
            "start 2^64",
            "t",
            &["18446744073709551616 8 zero"],
            EINVAL,
            "too large",
        ),
        create(
            "end past 2^64-1",
            "t",
            &[
                "0 18014398509481983 zero",
                "18014398509481983 18446744073709551615 zero",
            ],
            EINVAL,
            "line 2: too large device",
        ),
        create(
            "gap",
            "t",
            &["0 8 zero", "16 8 zero"],
            EINVAL,
            "line 2: zero: Gap in table",
        ),
        create(
            "overlap",
            "t",
            &["0 16 zero", "8 8 zero"],
            EINVAL,
            "line 2: zero: Gap in table",
        ),
        create(
            "first line not at 0",
            "t",
            &["8 8 zero"],
            EINVAL,
            "line 1: zero: Gap in table",
        ),
        create(
            "zero length",
            "t",
            &["0 0 zero"],
            EINVAL,
            "zero: zero-length target",
        ),
        create(
            "unknown target",
            "t",
            &["0 8 nosuch"],
            EINVAL,
            "nosuch: unknown target type",
        ),
        create(
            "target type too long",
            "t",
            &["0 8 averyveryverylongtype"],
            EINVAL,
            "averyveryverylongtype: unknown target type",
        ),
        create(
            "missing target type",
            "t",
            &["0 8"],
            EINVAL,
            "Invalid format",
        ),
        create("start only", "t", &["0"], EINVAL, "Invalid format"),
        create(
            "zero with args",
            "t",
            &["0 8 zero 1"],
            EINVAL,
            "zero: No arguments required",
        ),
        create(
            "good line then a bad one, one write",
            "t",
            &["0 8 zero", "8 8 nosuch"],
            EINVAL,
            "line 2: nosuch: unknown target type",
        ),
        {
            // Two write(2)s on one open descriptor, no close between them.
            let mut c = case(
                "good line then a bad one, two writes",
                "{ echo '0 8 zero'; echo '8 8 zero 1'; } > $MNT/ctl/create/w2",
                EINVAL,
                Some("line 2: zero: No arguments required"),
            );
            c.reuse = Some("w2".into());
            c
        },
        {
            let mut c = case(
                "line over 64 KiB",
                "cat long.txt > $MNT/ctl/create/long",
                EINVAL,
                Some("longer than 65536 bytes"),
            );
            c.reuse = Some("long".into());
            c
        },
        {
            let mut c = case(
                "NUL in a line",
                r"printf '0 8 zero\000\n' > $MNT/ctl/create/nul",
                EINVAL,
                Some("Invalid character"),
            );
            c.reuse = Some("nul".into());
            c
        },
        {
            let mut c = case(
                "invalid UTF-8",
                r"printf '0 8 \xff\xfe\n' > $MNT/ctl/create/utf",
                EINVAL,
                Some("not valid UTF-8"),
            );
            c.reuse = Some("utf".into());
            c
        },
        {
            let mut c = case(
                "binary junk",
                "cat junk.bin > $MNT/ctl/create/junk",
                EINVAL,
                Some("create junk: "),
            );
            c.reuse = Some("junk".into());
            c
        },
        case(
            "name of 128 bytes",
            format!("echo '0 8 zero' > $MNT/ctl/create/{long128}"),
            EINVAL,
            Some("longer than 127 bytes"),
        ),
        case(
            "name not UTF-8",
            r"echo '0 8 zero' > $MNT/ctl/create/$'\xff'",
            EINVAL,
            Some("not UTF-8"),
        ),
        case(
            "name '.'",
            "echo '0 8 zero' > $MNT/ctl/create/.",
            "Is a directory",
            None,
        ),
        case(
            "name '..'",
            "echo '0 8 zero' > $MNT/ctl/create/..",
            "Is a directory",
            None,
        ),
        case(
            "duplicate name",
            "echo '0 8 zero' > $MNT/ctl/create/keep",
            EBUSY,
            Some("Device keep already exists"),
        ),
        {
            let mut c = case(
                "name held by another writer",
                "exec 3>$MNT/ctl/create/held; echo '0 8 zero' > $MNT/ctl/create/held",
                EBUSY,
                Some("Device held already exists"),
            );
            c.reuse = Some("held".into());
            c
        },
        case(
            "reload of a missing device",
            "echo '0 8 zero' > $MNT/ctl/reload/nosuch",
            ENOENT,
            Some("Device nosuch not found"),
        ),
    ];
    // Junk: NUL and invalid UTF-8 up front, then pseudo-random bytes.
    let mut junk = vec![0u8, 0xff, b'0', b' ', 0xc3, 0x28];
    junk.extend(pseudo_random(7, 4096));
    std::fs::write(f.m.path("junk.bin"), junk).unwrap();
    let mut long = b"0 8 zero".to_vec();
    long.extend(std::iter::repeat_n(b' ', 70_000));
    long.push(b'\n');
    std::fs::write(f.m.path("long.txt"), long).unwrap();
    assert!(cases.len() >= 25);
    f.run_all(cases);
}

#[test]
fn bad_linear_lines_and_device_references() {
    let f = Fixture::new();
    let cases = vec![
        create(
            "linear without args",
            "t",
            &["0 8 linear"],
            EINVAL,
            "linear: Invalid argument count",
        ),
        create(
            "linear with one arg",
            "t",
            &["0 8 linear $PWD/a.img"],
            EINVAL,
            "linear: Invalid argument count",
        ),
        create(
            "linear with three args",
            "t",
            &["0 8 linear $PWD/a.img 0 0"],
            EINVAL,
            "linear: Invalid argument count",
        ),
        create(
            "linear non-numeric sector",
            "t",
            &["0 8 linear $PWD/a.img abc"],
            EINVAL,
            "linear: Invalid device sector",
        ),
        create(
            "linear sector -1",
            "t",
            &["0 8 linear $PWD/a.img -1"],
            EINVAL,
            "linear: Invalid device sector",
        ),
        create(
            "linear hex sector",
            "t",
            &["0 8 linear $PWD/a.img 0x10"],
            EINVAL,
            "linear: Invalid device sector",
        ),
        create(
            "linear sector 2^64",
            "t",
            &["0 8 linear $PWD/a.img 18446744073709551616"],
            EINVAL,
            "linear: Invalid device sector",
        ),
        create(
            "linear sector 1.5",
            "t",
            &["0 8 linear $PWD/a.img 1.5"],
            EINVAL,
            "linear: Invalid device sector",
        ),
        create(
            "linear offset at the end",
            "t",
            &["0 8 linear $PWD/a.img 64"],
            EINVAL,
            "too small for target: start=64, len=8, dev_size=64",
        ),
        create(
            "linear offset far past the end",
            "t",
            &["0 8 linear $PWD/a.img 1000"],
            EINVAL,
            "too small for target: start=1000, len=8, dev_size=64",
        ),
        create(
            "linear length past the end",
            "t",
            &["0 65 linear $PWD/a.img 0"],
            EINVAL,
            "too small for target: start=0, len=65, dev_size=64",
        ),
        create(
            "linear offset+length past the end",
            "t",
            &["0 8 linear $PWD/a.img 60"],
            EINVAL,
            "too small for target: start=60, len=8, dev_size=64",
        ),
        create(
            "second line past the end",
            "t",
            &["0 8 linear $PWD/a.img 0", "8 60 linear $PWD/a.img 8"],
            EINVAL,
            "line 2: linear: Device lookup failed: ",
        ),
        create(
            "missing backing file",
            "t",
            &["0 8 linear $PWD/nope.img 0"],
            ENOENT,
            "nope.img: No such file or directory",
        ),
        create(
            "missing relative backing file",
            "t",
            &["0 8 linear nope.img 0"],
            ENOENT,
            "nope.img: No such file or directory",
        ),
        create(
            "directory as backing",
            "t",
            &["0 8 linear $PWD/d 0"],
            "Is a directory",
            "Device lookup failed",
        ),
        create(
            "character device as backing",
            "t",
            &["0 8 linear /dev/null 0"],
            EINVAL,
            "not a block device or regular file",
        ),
        create(
            "bad major:minor",
            "t",
            &["0 8 linear 999:999 0"],
            ENOENT,
            "999:999: no such block device",
        ),
        create(
            "ctl/version as device",
            "t",
            &["0 8 linear $MNT/ctl/version 0"],
            EINVAL,
            "not a device",
        ),
        create(
            "dev/ directory as device",
            "t",
            &["0 8 linear $MNT/dev 0"],
            EINVAL,
            "not a device",
        ),
        create(
            "missing device of this mount",
            "t",
            &["0 8 linear $MNT/dev/missing 0"],
            ENOENT,
            "no such device",
        ),
        create(
            "device referring to itself",
            "self",
            &["0 8 linear $MNT/dev/self 0"],
            ENOENT,
            "no such device",
        ),
        create(
            "stacked area past the end of the lower device",
            "t",
            &["0 200 linear $MNT/dev/keep 0"],
            EINVAL,
            "too small for target: start=0, len=200, dev_size=96",
        ),
    ];
    f.run_all(cases);
}

#[test]
fn bad_striped_lines() {
    let f = Fixture::new();
    let a = "$PWD/a.img";
    let b = "$PWD/b.img";
    let l = |s: &str| s.replace("A", a).replace("B", b);
    let c = |what: &str, line: &str, errno: &'static str, key: &str| {
        create(what, "t", &[&l(line)], errno, key)
    };
    let cases = vec![
        c(
            "striped: no arguments",
            "0 16 striped",
            EINVAL,
            "striped: Not enough arguments",
        ),
        c(
            "striped: one argument",
            "0 16 striped 2",
            EINVAL,
            "striped: Not enough arguments",
        ),
        c(
            "striped: 0 stripes",
            "0 16 striped 0 8 A 0",
            EINVAL,
            "striped: Invalid stripe count",
        ),
        c(
            "striped: non-numeric stripes",
            "0 16 striped x 8 A 0",
            EINVAL,
            "striped: Invalid stripe count",
        ),
        c(
            "striped: negative stripes",
            "0 16 striped -1 8 A 0",
            EINVAL,
            "striped: Invalid stripe count",
        ),
        c(
            "striped: 2^32 stripes",
            "0 16 striped 4294967296 8 A 0",
            EINVAL,
            "striped: Invalid stripe count",
        ),
        c(
            "striped: chunk 0",
            "0 16 striped 2 0 A 0 B 0",
            EINVAL,
            "striped: Invalid chunk_size",
        ),
        c(
            "striped: hex chunk",
            "0 16 striped 2 0x8 A 0 B 0",
            EINVAL,
            "striped: Invalid chunk_size",
        ),
        c(
            "striped: length not divisible by stripes",
            "0 15 striped 2 1 A 0 B 0",
            EINVAL,
            "striped: Target length not divisible by number of stripes",
        ),
        c(
            "striped: stripe not divisible by chunk",
            "0 16 striped 2 3 A 0 B 0",
            EINVAL,
            "striped: Target length not divisible by chunk size",
        ),
        c(
            "striped: one destination for two",
            "0 16 striped 2 8 A 0",
            EINVAL,
            "striped: Not enough destinations specified",
        ),
        c(
            "striped: device without offset",
            "0 16 striped 2 8 A 0 B",
            EINVAL,
            "striped: Not enough destinations specified",
        ),
        c(
            "striped: three destinations for two",
            "0 16 striped 2 8 A 0 B 0 A 32",
            EINVAL,
            "striped: Not enough destinations specified",
        ),
        c(
            "striped: bad offset",
            "0 16 striped 2 8 A 0 B x",
            EINVAL,
            "striped: Couldn't parse stripe destination",
        ),
        c(
            "striped: missing device",
            "0 16 striped 2 8 A 0 $PWD/nope.img 0",
            ENOENT,
            "striped: Couldn't parse stripe destination",
        ),
        c(
            "striped: stripe past the end",
            "0 16 striped 2 8 A 0 B 60",
            EINVAL,
            "Couldn't parse stripe destination: ",
        ),
    ];
    f.run_all(cases);
}

#[test]
fn bad_removes_and_device_file_operations() {
    let f = Fixture::new();
    let make_open = |n: &str| format!("echo '0 8 zero' > $MNT/ctl/create/{n}");
    // Writes past the end fail at write(2) with ENOSPC. With --cache writeback a buffered one
    // is taken into the kernel's cache (the kernel owns the file size there: dev/keep would
    // then look longer) and fails only at writeback; cache_coherence.rs::write_past_the_end
    // checks that. Here, in writeback mode, they are O_DIRECT and must fail at write(2).
    let past_end = dd_write_through();
    let stacked = "echo \"0 16 linear $PWD/a.img 0\" > $MNT/ctl/create/base && \
                   echo \"0 8 linear $MNT/dev/base 4\" > $MNT/ctl/create/top";
    let cases = vec![
        case(
            "remove a missing device",
            "echo nosuch > $MNT/ctl/remove",
            ENOENT,
            Some("Device nosuch not found"),
        ),
        case("rm a missing device", "rm $MNT/dev/nosuch", ENOENT, None),
        case(
            "two names on one remove line",
            "echo 'keep keep' > $MNT/ctl/remove",
            EINVAL,
            Some("expected one device name per line"),
        ),
        case(
            "remove an open device",
            "exec 3<$MNT/dev/open1; echo open1 > $MNT/ctl/remove",
            EBUSY,
            Some("Device open1 is open"),
        )
        .setup(&make_open("open1"))
        .cleanup(&remove_retrying(&["open1"])),
        case(
            "rm an open device",
            "exec 3<$MNT/dev/open2; rm $MNT/dev/open2",
            EBUSY,
            Some("Device open2 is open"),
        )
        .setup(&make_open("open2"))
        .cleanup(&remove_retrying(&["open2"])),
        case(
            "remove a device open for writing",
            "exec 3>>$MNT/dev/open3; echo open3 > $MNT/ctl/remove",
            EBUSY,
            Some("Device open3 is open"),
        )
        .setup(&make_open("open3"))
        .cleanup(&remove_retrying(&["open3"])),
        case(
            "remove a device used by a stacked one",
            "echo base > $MNT/ctl/remove",
            EBUSY,
            Some("Device base is in use by another device"),
        )
        .setup(stacked)
        .cleanup(&remove_retrying(&["top", "base"])),
        case(
            "rm a device used by a stacked one",
            "rm $MNT/dev/base",
            EBUSY,
            Some("Device base is in use by another device"),
        )
        .setup(stacked)
        .cleanup(&remove_retrying(&["top", "base"])),
        case(
            "write at the end",
            format!(
                "dd if=/dev/zero of=$MNT/dev/keep bs=512 seek=96 count=1 conv=notrunc status=none{past_end}"
            ),
            "No space left on device",
            None,
        ),
        case(
            "write far past the end",
            format!(
                "dd if=/dev/zero of=$MNT/dev/keep bs=512 seek=1000 count=1 conv=notrunc status=none{past_end}"
            ),
            "No space left on device",
            None,
        ),
        case(
            "one byte at the end",
            format!(
                "printf x | dd of=$MNT/dev/keep bs=1 seek=49152 conv=notrunc status=none{past_end}"
            ),
            "No space left on device",
            None,
        ),
        case(
            "truncate to 0",
            "truncate -s 0 $MNT/dev/keep",
            EINVAL,
            Some("cannot be truncated"),
        ),
        case(
            "truncate larger",
            "truncate -s 100000 $MNT/dev/keep",
            EINVAL,
            Some("cannot be truncated"),
        ),
        case(
            "dd without conv=notrunc",
            "dd if=/dev/zero of=$MNT/dev/keep bs=512 count=1 status=none",
            EINVAL,
            Some("cannot be truncated"),
        ),
        case(
            "create a file in dev/",
            "touch $MNT/dev/new",
            "Permission denied",
            None,
        ),
        case(
            "create a file in dm/",
            "touch $MNT/dm/new",
            "Permission denied",
            None,
        ),
        case(
            "write a table file",
            "echo x > $MNT/dm/keep/table",
            "Permission denied",
            None,
        ),
        case(
            "write ctl/version",
            "echo x > $MNT/ctl/version",
            "Permission denied",
            None,
        ),
    ];
    f.run_all(cases);
}

/// A table whose size in bytes does not fit a file size (2^64-1 sectors): must be refused, not
/// made into a device whose size cannot be reported.
#[test]
fn table_too_large_for_a_file_size() {
    let f = Fixture::new();
    f.run_all(vec![create(
        "2^64-1 sectors",
        "huge",
        &["0 18446744073709551615 zero"],
        EINVAL,
        "create huge: line 1: too large device",
    )]);
}

#[test]
fn name_of_127_bytes_works() {
    let m = Mount::new();
    let name = "n".repeat(127);
    m.ok(&format!("echo '0 8 zero' > $MNT/ctl/create/{name}"));
    assert_eq!(m.devices(), vec![name.clone()]);
    assert_eq!(
        std::fs::read(m.mnt.join("dev").join(&name)).unwrap(),
        vec![0u8; 8 * 512]
    );
    assert_eq!(m.read(&format!("dm/{name}/table")).trim_end(), "0 8 zero");
    m.ok(&format!("echo {name} > $MNT/ctl/remove"));
    assert!(m.devices().is_empty());
}

/// One line written by two processes sharing one open file: `printf` writes the start of the
/// line, then a pipeline writes the rest. Forking the pipeline closes duplicated descriptors
/// (each a FUSE flush) before the line is complete. The line as a whole is over 64 KiB, so the
/// table is bad: the write fails, and no device may appear.
#[test]
fn line_split_across_processes_is_not_committed_half_written() {
    let f = Fixture::new();
    f.run_all(vec![{
        let mut c = case(
            "over-long line written by printf, then a pipeline",
            "{ printf '0 8 zero'; head -c 70000 /dev/zero | tr '\\0' ' '; echo; } > $MNT/ctl/create/split",
            EINVAL,
            Some("longer than 65536 bytes"),
        );
        c.reuse = Some("split".into());
        c
    }]);
}

/// A table whose last line has no newline is complete when its writer closes the file: an
/// error in it fails that close(2) (coreutils' printf and echo report a failed close of their
/// output; bash's builtins do not look), and no device is left. The writes themselves succeed:
/// the line is not complete until the close.
#[test]
fn unfinished_last_line_fails_the_close_that_completes_it() {
    let f = Fixture::new();
    let py_close = |name: &str, writes: &[&str]| {
        let writes: Vec<String> = writes
            .iter()
            .map(|w| format!("w = b'{w}'; assert os.write(fd, w) == len(w)"))
            .collect();
        format!(
            "python3 - <<'PY'\n\
             import os, sys\n\
             fd = os.open(os.environ['MNT'] + '/ctl/create/{name}', os.O_WRONLY | os.O_CREAT)\n\
             {}\n\
             try:\n    os.close(fd)\n\
             except OSError as e:\n    sys.exit('close: ' + e.strerror)\n\
             PY",
            writes.join("\n")
        )
    };
    let mut cases = vec![
        case(
            "printf without a newline, missing file",
            "env printf '0 100 linear /nonexistent 0' > $MNT/ctl/create/nl1",
            ENOENT,
            Some("/nonexistent"),
        ),
        case(
            "echo -n, unknown target",
            "env echo -n '0 8 nosuch' > $MNT/ctl/create/nl2",
            EINVAL,
            Some("unknown target type"),
        ),
        case(
            "os.write then os.close, one unfinished line",
            py_close("nl3", &["0 8 nosuch"]),
            EINVAL,
            Some("unknown target type"),
        ),
        case(
            "several writes, the last without a newline",
            py_close("nl4", &["0 8 zero\\n", "8 8 ", "zero 1"]),
            EINVAL,
            Some("zero"),
        ),
    ];
    for (c, name) in cases.iter_mut().zip(["nl1", "nl2", "nl3", "nl4"]) {
        c.reuse = Some(name.into());
    }
    f.run_all(cases);
}

/// The same unfinished last line, when good, makes the device at the writer's close: no
/// newline is needed, from a shell builtin, a program or several writes of one process.
#[test]
fn unfinished_last_line_is_committed_at_its_writers_close() {
    let m = Mount::new();
    m.ok("printf '0 8 zero' > $MNT/ctl/create/a\n\
          env echo -n '0 16 error' > $MNT/ctl/create/b\n\
          python3 -c \"import os; fd = os.open('$MNT/ctl/create/c', os.O_WRONLY | os.O_CREAT); \
          os.write(fd, b'0 8 zero\\n8 8 '); os.write(fd, b'zero'); os.close(fd)\"\n\
          printf '0 4 zero' > $MNT/ctl/reload/a; echo a > $MNT/ctl/resume");
    assert_eq!(m.read("dm/a/table"), "0 4 zero \n");
    assert_eq!(m.read("dm/b/table"), "0 16 error \n");
    assert_eq!(m.read("dm/c/table"), "0 8 zero \n8 8 zero \n");
}
