//! scripts/soak.sh must end with its report however long it runs and however many verify
//! failures the canary (a device that corrupts every write) produces, and leave small files.
//!
//! The report is scripts/soak-report.py, fed here the files of a run in which fio's messages
//! landed inside a JSON status report (what ended a 5-minute run in a traceback); then a
//! few seconds of the real soak over a real mount, with a small cap on the messages kept.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Removes a scratch directory (and detaches a mount the soak left in it) on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let mnt = self.0.join("mnt");
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let want = mnt.to_string_lossy();
        if mounts.lines().any(|l| l.split(' ').nth(1) == Some(&*want)) {
            let _ = Command::new("umount").arg("-l").arg(&mnt).status();
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn report(dir: &Path) -> Output {
    Command::new("python3")
        .arg(script("soak-report.py"))
        .arg(dir)
        .output()
        .expect("run python3 scripts/soak-report.py")
}

/// A status report laid out as fio 3.33 prints one with --output-format=json (its fields
/// trimmed to those the report reads and a few around them).
fn fio_report(job: &str, runtime_ms: u64, written_kib: u64, read_kib: u64, errors: u64) -> String {
    format!(
        r#"{{
  "fio version" : "fio-3.33",
  "timestamp" : 1796421854,
  "jobs" : [
    {{
      "jobname" : "{job}",
      "error" : 0,
      "elapsed" : {elapsed},
      "job_runtime" : {runtime_ms},
      "read" : {{
        "io_bytes" : {read_bytes},
        "io_kbytes" : {read_kib},
        "runtime" : {runtime_ms}
      }},
      "write" : {{
        "io_bytes" : {written_bytes},
        "io_kbytes" : {written_kib},
        "runtime" : {runtime_ms}
      }},
      "total_err" : {errors},
      "first_error" : {first_error}
    }}
  ]
}}
"#,
        elapsed = runtime_ms.div_ceil(1000),
        read_bytes = read_kib * 1024,
        written_bytes = written_kib * 1024,
        first_error = if errors > 0 { 84 } else { 0 },
    )
}

/// fio's messages for one block that failed verification, as the canary prints them.
const VERIFY_FAILED: &str = "crc32c: verify failed at file /soak/mnt/dev/canary offset 503808, \
     length 4096 (requested block: offset=503808, length=4096, flags=88)\n       \
     Expected CRC: f4a2efa3\n       Received CRC: c85c7caf\n";

/// Three reports per job (two intervals of 2 s, then the final one), every job writing
/// 10 MiB per second and verifying what it wrote; the canary's every block fails. `cut`
/// names reports (job, index) that have fio's messages inside them, in the middle of a
/// number as a buffer flush can cut one (the old parser's "Expecting ',' delimiter").
fn write_run(dir: &Path, cut: &[(&str, usize)], lin_failures: u64, canary_failures: u64) {
    for job in ["lin", "str", "orig", "snap", "canary"] {
        let mut json = String::new();
        for (k, ms) in [2000u64, 4000, 4200].into_iter().enumerate() {
            let kib = ms * 10 * 1024 / 1000;
            let errors = if job == "canary" { kib / 4 } else { 0 };
            let mut r = fio_report(job, ms, kib, kib, errors);
            if cut.contains(&(job, k)) {
                let at = r.find("\"io_bytes\" : ").unwrap() + "\"io_bytes\" : 12".len();
                r.insert_str(at, &VERIFY_FAILED.repeat(3));
            }
            json.push_str(&r);
        }
        std::fs::write(dir.join(format!("{job}.json")), json).unwrap();
        let failed = match job {
            "canary" => canary_failures,
            "lin" => lin_failures,
            _ => 0,
        };
        std::fs::write(
            dir.join(format!("{job}.count")),
            format!("{failed} {}\n", failed * 3),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("{job}.log")),
            VERIFY_FAILED.repeat(failed.min(2) as _),
        )
        .unwrap();
    }
    std::fs::write(dir.join("churn.count"), "1234 0\n").unwrap();
}

#[test]
fn report_reads_past_messages_inside_a_status_report() {
    let dir = Scratch(scratch_dir("soak-report"));
    // The canary's messages inside its second report, and inside lin's: those reports are
    // skipped, the totals come from the final ones, and half a million failures are counted.
    write_run(&dir.0, &[("canary", 1), ("lin", 1)], 0, 500_000);
    let out = report(&dir.0);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for want in [
        "lin: MiB written 42, MiB verified 42, errors 0, verify failures 0, message lines 0",
        "canary: MiB written 42, MiB verified 42, errors 10752, verify failures 500000, \
         message lines 1500000",
        "canary: 1 of 3 status reports unreadable",
        "lin: 1 of 3 status reports unreadable",
        "canary (a device that corrupts every write): 500000 verify failures seen\n",
        "churn: 1234 operations, 0 failed\n",
        "corruptions: 0\n",
        "disk: ",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in\n{all}");
    }
    // 10 MiB/s over each interval, the final 0.2 s one too and lin's over the 2.2 s past its
    // unreadable report, which leaves a "-" in its row; the canary has no column.
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("t(s)"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[1], ["2.0", "10.0", "10.0", "10.0", "10.0"], "{all}");
    assert_eq!(rows[2], ["4.0", "-", "10.0", "10.0", "10.0"], "{all}");
    assert_eq!(rows[3], ["4.2", "10.0", "10.0", "10.0", "10.0"], "{all}");
    assert_eq!(rows[4][0], "lin:", "{all}");

    // The final report cut: the totals are those of the last report that can be read.
    write_run(&dir.0, &[("canary", 2)], 0, 7);
    let out = report(&dir.0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout.contains("canary: MiB written 40, MiB verified 40, errors 10240, verify failures 7"),
        "{}",
        text(&out)
    );

    // JSON without the figures (here after the final report) is skipped too, not a traceback.
    write_run(&dir.0, &[], 0, 7);
    let str_json = dir.0.join("str.json");
    let mut json = std::fs::read_to_string(&str_json).unwrap();
    json.push_str("{\n  \"jobs\" : [\n    {\n      \"jobname\" : \"str\"\n    }\n  ]\n}\n");
    std::fs::write(&str_json, json).unwrap();
    let out = report(&dir.0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout.contains("str: MiB written 42, MiB verified 42, errors 0")
            && stdout.contains("str: 1 of 4 status reports unreadable"),
        "{}",
        text(&out)
    );
}

#[test]
fn report_fails_a_corruption_a_silent_canary_or_a_missing_count() {
    let dir = Scratch(scratch_dir("soak-report-bad"));
    write_run(&dir.0, &[], 2, 9);
    let out = report(&dir.0);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("corruptions: 2\n"),
        "{}",
        text(&out)
    );

    write_run(&dir.0, &[], 0, 0);
    let out = report(&dir.0);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 verify failures seen -- NONE"),
        "{}",
        text(&out)
    );

    write_run(&dir.0, &[], 0, 9);
    assert!(report(&dir.0).status.success());
    std::fs::remove_file(dir.0.join("snap.count")).unwrap();
    let out = report(&dir.0);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("snap: no count of its messages"),
        "{}",
        text(&out)
    );
}

/// A few seconds of the real soak: the report comes, the JSON files hold only fio's status
/// reports, and the canary's failures are counted past the cap on the lines kept.
#[test]
fn short_soak_counts_the_canary_and_keeps_its_files_small() {
    const KEEP: usize = 30;
    let dir = Scratch(scratch_dir("soak"));
    let out = Command::new("bash")
        .arg(script("soak.sh"))
        .env("SOAK_DIR", &dir.0)
        .env("DMFS_BIN", DMFS)
        .env("SOAK_SECONDS", "3")
        .env("INTERVAL", "1")
        .env("SIZE_MIB", "4")
        .env("SOAK_LOG_LINES", KEEP.to_string())
        .output()
        .expect("run scripts/soak.sh");
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\ncorruptions: 0\n"), "{all}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("churn: ") && l.ends_with(" operations, 0 failed")),
        "{all}"
    );

    let read = |name: &str| {
        std::fs::read_to_string(dir.0.join(name)).unwrap_or_else(|e| panic!("{name}: {e}\n{all}"))
    };
    for job in ["lin", "str", "orig", "snap", "canary"] {
        let json = read(&format!("{job}.json"));
        assert!(
            json.starts_with('{') && !json.contains("verify failed"),
            "{job}.json holds more than fio's status reports\n{all}"
        );
    }
    let count: Vec<u64> = read("canary.count")
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    let (failed, lines) = (count[0], count[1]);
    assert!(
        failed > 0 && lines > KEEP as u64,
        "canary.count {count:?}\n{all}"
    );
    assert!(
        stdout.contains(&format!(
            "canary (a device that corrupts every write): {failed} verify failures seen\n"
        )),
        "{all}"
    );
    assert_eq!(read("canary.log").lines().count(), KEEP, "{all}");
    let logs: u64 = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| {
            e.file_type().unwrap().is_file() && !e.file_name().to_string_lossy().ends_with(".img")
        })
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(logs < 1 << 20, "{logs} bytes of reports and logs\n{all}");
}
