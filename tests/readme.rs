//! The README's runnable shell blocks run as written.
//!
//! A block is runnable when the line before its ```` ```sh ```` fence starts with
//! `<!-- runnable`. The test reads README.md at run time (no copy of a block lives here), and
//! runs each runnable block under `bash -euo pipefail` (with `inherit_errexit`, so a failing
//! `$(...)` fails too) in a fresh empty scratch directory, with the built `dmfs` first on
//! `PATH`. A block marked `<!-- runnable in the repository` runs in a scratch directory that
//! looks like the checkout to it: `mount-helpers/` is the checkout's, `target/release/dmfs` and
//! `$DMFS` are the binary cargo built for the tests (a cargo build inside `cargo test` would
//! wait for the build lock the test run holds), and `/tmp/` in the block is the scratch
//! directory's `tmp/`. It asserts that
//! - every command succeeded (the first failure names its README line);
//! - a command whose line ends in `# => TEXT` printed exactly TEXT on stdout;
//! - before a `dmfs umount M` line, `M/ctl/errors` is empty: a create refused at close is not
//!   an error the shell sees;
//! - afterwards no FUSE mount under the scratch directory, no loop device over a file in it and
//!   no process the block started (a daemon detaches from bash; this process is made the child
//!   subreaper, so such a daemon becomes its child and can be found) is left.
//!
//! Whatever is left is cleaned up (loop devices detached, mounts unmounted, processes killed),
//! also when an assertion fails. Everything runs in one test, one block after the other: the
//! leftover check counts every child of this process.

mod common;
use common::*;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
/// Longer than the quick start needs on a loaded machine, short enough to end a hang.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(300);

/// A runnable block: its text and the README line its first line is on.
struct Block {
    first_line: usize,
    text: String,
    /// Marked `runnable in the repository`: runs where the checkout's paths resolve.
    in_repo: bool,
}

/// The runnable blocks of a README, in order, and the section (`## ...`) each sits in.
fn runnable_blocks(readme: &str) -> Vec<(String, Block)> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut out = Vec::new();
    let mut section = String::new();
    let mut i = 0;
    while i < lines.len() {
        if let Some(title) = lines[i].strip_prefix("## ") {
            section = title.to_string();
        }
        if lines[i].trim_start().starts_with("<!-- runnable") {
            let in_repo = lines[i]
                .trim_start()
                .starts_with("<!-- runnable in the repository");
            assert_eq!(
                lines.get(i + 1).map(|l| l.trim_end()),
                Some("```sh"),
                "README line {}: a runnable marker must be followed by a ```sh fence",
                i + 1
            );
            let start = i + 2;
            let len = lines[start..]
                .iter()
                .position(|l| l.trim_end() == "```")
                .unwrap_or_else(|| panic!("README line {}: the block is not closed", i + 2));
            let text = lines[start..start + len].join("\n") + "\n";
            out.push((
                section.clone(),
                Block {
                    first_line: start + 1,
                    text,
                    in_repo,
                },
            ));
            i = start + len;
        }
        i += 1;
    }
    out
}

/// `s` quoted for bash, in single quotes.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The script the test runs for a block: one line of helpers, then the block line for line
/// (so that `$LINENO` maps back to the README), with claimed output and unmounts checked.
/// Returns the script and how many claims it checks.
fn script_for(block: &Block) -> (String, usize) {
    let offset = block.first_line as i64 - 2;
    let mut script = format!(
        "set -Eeuo pipefail; shopt -s inherit_errexit; \
         trap 'echo \"README line $((LINENO + {offset})) failed (exit $?): $BASH_COMMAND\" >&2' ERR; \
         __claim() {{ if [ \"$2\" != \"$3\" ]; then printf 'README line %s: printed \"%s\", the README says \"%s\"\\n' \"$1\" \"$2\" \"$3\" >&2; exit 1; fi; }}; \
         __no_errors() {{ if [ -s \"$1/ctl/errors\" ]; then echo \"README line $2: $1/ctl/errors before the unmount:\" >&2; cat \"$1/ctl/errors\" >&2; exit 1; fi; }}\n"
    );
    let mut claims = 0;
    for (i, line) in block.text.lines().enumerate() {
        let readme_line = block.first_line + i;
        if let Some((command, claim)) = line.split_once(" # => ") {
            claims += 1;
            script += &format!(
                "__out=$({}); printf '%s\\n' \"$__out\"; __claim {readme_line} \"$__out\" {}\n",
                command.trim(),
                quote(claim.trim())
            );
        } else if let Some(mnt) = line.strip_prefix("dmfs umount ") {
            let mnt = mnt.split_whitespace().next().unwrap_or_default();
            script += &format!("__no_errors {} {readme_line}; {line}\n", quote(mnt));
        } else {
            script += line;
            script += "\n";
        }
    }
    (script, claims)
}

/// What a block's run printed, and what it left behind.
struct Run {
    success: bool,
    status: String,
    stdout: String,
    stderr: String,
    leftovers: Vec<String>,
}

fn pids_of_children() -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The fields after the command name, which sits in parentheses and may hold blanks.
        let rest = &stat[stat.rfind(')').map_or(0, |p| p + 2)..];
        let ppid = rest.split(' ').nth(1).and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(me) {
            out.push(pid);
        }
    }
    out
}

/// Reaps children that have exited; the ones still running.
fn reap(pids: &[i32]) -> Vec<i32> {
    pids.iter()
        .copied()
        .filter(|&pid| {
            let mut status = 0;
            // SAFETY: waitpid on a child of this process, without blocking.
            unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) == 0 }
        })
        .collect()
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// Loop devices whose backing file is under `dir`: (device, backing file).
fn loops_under(dir: &Path) -> Vec<(String, String)> {
    let out = Command::new("losetup")
        .args(["-l", "-n", "-O", "NAME,BACK-FILE"])
        .output()
        .expect("run losetup -l");
    let prefix = format!("{}/", dir.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (dev, file) = l.trim().split_once(char::is_whitespace)?;
            let file = file.trim();
            file.starts_with(&prefix)
                .then(|| (dev.to_string(), file.to_string()))
        })
        .collect()
}

/// Mount points under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    let mut out: Vec<String> = std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    out.sort_by_key(|m| std::cmp::Reverse(m.len()));
    out
}

/// Finds and removes what a block left behind under `dir`; one line for each thing found.
fn clean_up(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for (dev, file) in loops_under(dir) {
        found.push(format!("loop device {dev} over {file}"));
        let _ = Command::new("losetup").arg("-d").arg(&dev).status();
    }
    for mnt in mounts_under(dir) {
        found.push(format!("mount on {mnt}"));
        let plain = Command::new("umount")
            .arg(&mnt)
            .stderr(Stdio::null())
            .status();
        if !plain.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&mnt).status();
        }
    }
    // A daemon that was told to stop flushes and exits on its own; give it the time.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut alive = reap(&pids_of_children());
    while !alive.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        alive = reap(&pids_of_children());
    }
    for pid in alive {
        found.push(format!("process {pid}: {}", cmdline(pid)));
        // SAFETY: kill and a blocking waitpid on a child of this process.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
    found
}

/// Removes the scratch directory and whatever a block left in it, also on a panic.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        clean_up(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `script` in `dir` as the README block would run, then looks for leftovers.
fn run_in(dir: &Path, script: &str, envs: &[(&str, &str)]) -> Run {
    use std::os::unix::process::CommandExt;
    let bin_dir = Path::new(DMFS).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = Command::new("bash")
        .args(["--noprofile", "--norc", "-c", script])
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("DMFS_MOUNT")
        .env_remove("DMFS")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("start bash");
    let readers: Vec<_> = [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ]
    .into_iter()
    .map(|mut pipe| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    })
    .collect();
    let deadline = Instant::now() + BLOCK_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            // SAFETY: kills the process group bash leads (process_group(0) above).
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Leftovers first: a leftover daemon may hold the output pipes open.
    let leftovers = clean_up(dir);
    let mut texts = readers.into_iter().map(|r| r.join().unwrap());
    Run {
        success: status.is_some_and(|s| s.success()),
        status: status.map_or(format!("killed after {BLOCK_TIMEOUT:?}"), |s| s.to_string()),
        stdout: texts.next().unwrap(),
        stderr: texts.next().unwrap(),
        leftovers,
    }
}

fn run_script(tag: &str, script: &str) -> Run {
    let scratch = Scratch(scratch_dir(tag));
    run_in(&scratch.0, script, &[])
}

/// Runs a block's script, in a directory that looks like the checkout for `in_repo` blocks.
fn run_block(block: &Block, script: &str) -> Run {
    if !block.in_repo {
        return run_script("readme", script);
    }
    let scratch = Scratch(scratch_dir("readme-repo"));
    let dir = &scratch.0;
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::os::unix::fs::symlink(checkout.join("mount-helpers"), dir.join("mount-helpers")).unwrap();
    std::fs::create_dir_all(dir.join("target/release")).unwrap();
    std::os::unix::fs::symlink(DMFS, dir.join("target/release/dmfs")).unwrap();
    std::fs::create_dir(dir.join("tmp")).unwrap();
    let script = script.replace("/tmp/", &format!("{}/tmp/", dir.display()));
    run_in(dir, &script, &[("DMFS", DMFS)])
}

/// The checks themselves catch what they claim to catch: a wrong claim, a failing command,
/// a failing command substitution, a refused create, a mount and a process left behind.
fn check_the_checker() {
    let block = |text: &str| Block {
        first_line: 10,
        text: text.to_string(),
        in_repo: false,
    };
    let (script, claims) = script_for(&block("echo hello   # => hello\n"));
    assert_eq!(claims, 1);
    let run = run_script("readme-self", &script);
    assert!(run.success, "a true claim failed: {}", run.stderr);
    assert_eq!(run.stdout, "hello\n");

    let (script, _) = script_for(&block("true\necho hello   # => goodbye\n"));
    let run = run_script("readme-self", &script);
    assert!(!run.success, "a false claim passed");
    assert!(
        run.stderr
            .contains("README line 11: printed \"hello\", the README says \"goodbye\""),
        "{}",
        run.stderr
    );

    let (script, _) = script_for(&block("x=$(false; echo late)\necho after\n"));
    let run = run_script("readme-self", &script);
    assert!(
        !run.success && run.stdout.is_empty(),
        "a failing $(...) passed"
    );
    assert!(
        run.stderr.contains("README line 10 failed"),
        "{}",
        run.stderr
    );

    // A refused create the shell did not see (`|| true` here) is caught at the unmount, and
    // the unmount then never runs: the mount is found and removed as a leftover.
    let (script, _) = script_for(&block(
        "mkdir mnt\ndmfs mount mnt\necho '0 8 nosuch' > mnt/ctl/create/x || true\ndmfs umount mnt\n",
    ));
    let run = run_script("readme-self", &script);
    assert!(!run.success, "a refused create passed");
    assert!(
        run.stderr
            .contains("README line 13: mnt/ctl/errors before the unmount")
            && run.stderr.contains("nosuch: unknown target type"),
        "{}",
        run.stderr
    );
    assert_eq!(run.leftovers.len(), 1, "{:?}", run.leftovers);
    assert!(
        run.leftovers[0].starts_with("mount on "),
        "{:?}",
        run.leftovers
    );

    let (script, _) = script_for(&block("setsid sleep 60 > /dev/null 2>&1 &\n"));
    let run = run_script("readme-self", &script);
    assert!(run.success, "{}", run.stderr);
    assert_eq!(run.leftovers.len(), 1, "{:?}", run.leftovers);
    assert!(run.leftovers[0].contains("sleep 60"), "{:?}", run.leftovers);
}

#[test]
fn readme_shell_blocks_run_as_written() {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER only changes who reaps orphans.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "prctl(PR_SET_CHILD_SUBREAPER)");
    check_the_checker();

    let readme = std::fs::read_to_string(README).unwrap();
    let blocks = runnable_blocks(&readme);
    assert!(
        blocks
            .iter()
            .any(|(section, _)| section.starts_with("Quick start")),
        "the quick start is not marked runnable; runnable blocks are in: {:?}",
        blocks.iter().map(|(s, _)| s).collect::<Vec<_>>()
    );
    let mut failures = Vec::new();
    for (section, block) in &blocks {
        let (script, claims) = script_for(block);
        let run = run_block(block, &script);
        eprintln!(
            "README line {} ({section}): {}, {claims} printed lines checked",
            block.first_line, run.status
        );
        if !run.success || !run.leftovers.is_empty() {
            failures.push(format!(
                "README block at line {} ({section}): {}\nleft behind: {:?}\nstdout:\n{}\nstderr:\n{}",
                block.first_line, run.status, run.leftovers, run.stdout, run.stderr
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
