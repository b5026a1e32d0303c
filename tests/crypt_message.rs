//! dm-crypt's `key set` / `key wipe` messages (what cryptsetup's luksSuspend and luksResume
//! send) against what the kernel's dm-crypt v1.24.0 did with them
//! (fixtures/kernel/crypt/message.out, recorded by fixtures/kernel/crypt/record-message.sh in
//! the kernel-oracle VM): the same refusals with the same errno and words, the same key in
//! `table --showkeys` after each, the refused resume while no key is set, and the same bytes
//! read with a wrong key and with the right one again. No key reaches ctl/errors or the log.

mod common;
use common::fixture::{self, Block};
use common::*;

/// Pattern disk A of the recording: 8192 sectors.
const A_SECTORS: u64 = 8192;

fn recording() -> Vec<Block> {
    let blocks = fixture::read("crypt/message.out", &["device", "run", "read"]);
    assert!(blocks.len() > 100, "too few recorded steps");
    blocks
}

fn mount() -> Mount {
    let m = Mount::new();
    write_pattern_image(&m.path("A.img"), 0, A_SECTORS);
    m
}

/// sha256 of the first MiB of dev/NAME.
fn first_mib_sha256(m: &Mount, name: &str) -> String {
    m.ok(&format!(
        "head -c 1048576 $MNT/dev/{name} | sha256sum | cut -d' ' -f1"
    ))
    .trim()
    .to_string()
}

/// Single quotes for the shell.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The kernel's words for a refusal: the crypt target's log lines, without the prefix the
/// kernel puts before them (and the `trusted_key: ` a partial line of that boot's log left in
/// front of the first one), which dmfs's reason must contain.
fn crypt_words(b: &Block) -> Vec<String> {
    b.all("kmsg")
        .iter()
        .map(|l| l.trim_start_matches("trusted_key: "))
        .filter_map(|l| l.strip_prefix("device-mapper: crypt: "))
        .map(str::to_string)
        .collect()
}

/// Runs one recorded dmsetup command as the same `dmfs` verb and compares what it printed.
fn replay(m: &Mount, b: &Block, mismatches: &mut Vec<String>) {
    let recorded = fixture::substitute(m, &b.name);
    let (script, attr) = if let Some(name) = recorded.strip_prefix("info -c --noheadings -o attr ")
    {
        (format!("$DMFS --mount $MNT info -c {name}"), true)
    } else if let Some((head, table)) = recorded.split_once(" --table ") {
        // `reload NAME --table TABLE`: the table is one argument.
        (
            format!("$DMFS --mount $MNT {head} --table {}", quote(table)),
            false,
        )
    } else {
        let words: Vec<String> = recorded.split(' ').map(quote).collect();
        (format!("$DMFS --mount $MNT {}", words.join(" ")), false)
    };
    let out = m.sh(&script);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut differs = |what: &str, got: &str, want: &str| {
        mismatches.push(format!(
            "{}: {what}\n  kernel: {want:?}\n  dmfs:   {got:?}",
            b.name
        ))
    };
    let exit = out.status.code().unwrap_or(-1).to_string();
    let want_exit = b.one("exit").unwrap();
    if exit != want_exit {
        differs("exit", &format!("{exit} ({stderr})"), want_exit);
    }
    let want_out: String = b
        .all("stdout")
        .iter()
        .map(|l| fixture::substitute(m, l) + "\n")
        .collect();
    let got_out = if attr {
        // `info -c` prints a header, then NAME MAJ MIN STAT ...: the attributes are the fourth.
        stdout
            .lines()
            .nth(1)
            .and_then(|row| row.split_whitespace().nth(3))
            .map(|s| format!("{s}\n"))
            .unwrap_or_default()
    } else {
        stdout
    };
    if got_out != want_out {
        differs("stdout", &got_out, &want_out);
    }
    // dmsetup's line with the errno's words first, dmfs's reason after it.
    let want_err = b.all("stderr");
    if let Some(first) = want_err.first()
        && stderr.lines().next() != Some(*first)
    {
        differs("stderr", &stderr, first);
    }
    if want_err.is_empty() && !stderr.is_empty() {
        differs("stderr", &stderr, "");
    }
    for words in crypt_words(b) {
        if !stderr.contains(&words) {
            differs("reason", &stderr, &words);
        }
    }
}

#[test]
fn key_messages_replay_the_kernels_recording() {
    let m = mount();
    let mut mismatches = Vec::new();
    let (mut runs, mut reads) = (0, 0);
    for b in recording() {
        match b.kind.as_str() {
            "device" => m.create(&b.name, &fixture::table_text(&m, &b)),
            "read" => {
                reads += 1;
                let want = b.one("sha256").unwrap();
                let got = first_mib_sha256(&m, &b.name);
                if got != want {
                    mismatches.push(format!(
                        "read {} (step {runs}): kernel {want}, dmfs {got}",
                        b.name
                    ));
                }
            }
            _ => {
                runs += 1;
                replay(&m, &b, &mut mismatches);
            }
        }
    }
    assert!(runs > 100 && reads >= 10, "{runs} commands, {reads} reads");
    assert!(
        mismatches.is_empty(),
        "{} of {runs} commands or reads differ from the kernel's:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

const K64: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\
                   f0e1d2c3b4a5968778695a4b3c2d1e0f00ffeeddccbbaa998877665544332211";
const W64: &str = "ffeeddccbbaa99887766554433221100000102030405060708090a0b0c0d0e0f\
                   000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
/// What the recording read from the first MiB with K64 and with W64.
const RIGHT_SHA: &str = "a63efcf16556a4e578fece454882d57af7ce0880fbee08398eff593ed8bb0ba0";
const WRONG_SHA: &str = "77a09bb1da4d98c85d6ec7627f7b96725f91a26bfa013c1a94cfda5c101b7129";

/// Fails if `text` holds any 16 characters of `key` (either case).
fn assert_no_key(what: &str, text: &str, key: &str) {
    let text = text.to_ascii_lowercase();
    for start in (0..=key.len() - 16).step_by(8) {
        let piece = &key[start..start + 16];
        assert!(
            !text.contains(piece),
            "{what} holds key material {piece:?}:\n{text}"
        );
    }
}

/// `echo LINE > ctl/message` as a user would: its stderr, empty when it succeeded.
fn message(m: &Mount, line: &str) -> String {
    let out = m.sh(&format!("echo '{line}' > $MNT/ctl/message"));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// luksSuspend / luksResume by hand through ctl/ files: the refusals' errnos and words in
/// ctl/errors, and no key there or in the log after failed and successful `key set`s.
#[test]
fn suspend_wipe_and_resume_through_ctl_files_keep_keys_out_of_errors_and_log() {
    let m = mount();
    m.ok(&format!(
        "echo '0 8192 crypt aes-xts-plain64 {K64} 0 '$PWD/A.img' 0' > $MNT/ctl/create/x"
    ));
    assert_eq!(first_mib_sha256(&m, "x"), RIGHT_SHA);

    // Not suspended: refused, the key untouched.
    let err = message(&m, &format!("x 0 key set {W64}"));
    assert!(err.contains("Invalid argument"), "{err}");
    assert!(
        m.last_error()
            .ends_with("message x: not suspended during key manipulation. (EINVAL)"),
        "{}",
        m.last_error()
    );
    let err = message(&m, "x 0 foo bar");
    assert!(err.contains("Invalid argument"), "{err}");
    assert!(
        m.last_error()
            .ends_with("message x: unrecognised message received. (EINVAL)"),
        "{}",
        m.last_error()
    );

    m.ok("echo x > $MNT/ctl/suspend");
    // A key of the wrong size: refused, the key still set (the resume goes through).
    let err = message(&m, &format!("x 0 key set {}", &W64[..64]));
    assert!(err.contains("Invalid argument"), "{err}");
    assert!(m.last_error().contains("(EINVAL)"), "{}", m.last_error());
    // The keyring form dmfs cannot read: ENOKEY.
    let err = message(&m, "x 0 key set :64:logon:dmfs-no-such-key");
    assert!(err.contains("Required key not available"), "{err}");
    m.ok("echo x > $MNT/ctl/resume");
    assert_eq!(first_mib_sha256(&m, "x"), RIGHT_SHA);

    // Hex that does not decode: no key any more, so no resume.
    m.ok("echo x > $MNT/ctl/suspend");
    let bad = format!("{}zz{}", &W64[..60], &W64[62..]);
    let err = message(&m, &format!("x 0 key set {bad}"));
    assert!(err.contains("Invalid argument"), "{err}");
    let err = m.fails("echo x > $MNT/ctl/resume");
    assert!(err.contains("Resource temporarily unavailable"), "{err}");
    assert!(
        m.last_error()
            .ends_with("resume x: aborting resume - crypt key is not set. (EAGAIN)"),
        "{}",
        m.last_error()
    );
    // The wrong key of the right size: the device resumes and reads what the kernel read.
    assert_eq!(message(&m, &format!("x 0 KEY SET {W64}")), "");
    m.ok("echo x > $MNT/ctl/resume");
    assert_eq!(first_mib_sha256(&m, "x"), WRONG_SHA);

    // luksSuspend: wipe, the key shows as zeros, resume refused; luksResume: the right key.
    m.ok("echo x > $MNT/ctl/suspend");
    assert_eq!(message(&m, "x 0 Key Wipe"), "");
    assert_eq!(
        m.ok("$DMFS --mount $MNT table --showkeys x"),
        format!(
            "0 8192 crypt aes-xts-plain64 {} 0 {} 0\n",
            "0".repeat(128),
            m.path("A.img").display()
        )
    );
    let err = m.fails("echo x > $MNT/ctl/resume");
    assert!(err.contains("Resource temporarily unavailable"), "{err}");
    assert_eq!(
        m.ok(&format!("$DMFS --mount $MNT message x 0 key set {K64}")),
        ""
    );
    m.ok("echo x > $MNT/ctl/resume");
    assert_eq!(first_mib_sha256(&m, "x"), RIGHT_SHA);

    // A failed `dmfs message` names neither key either.
    m.ok("echo x > $MNT/ctl/suspend");
    let err = m.fails(&format!("$DMFS --mount $MNT message x 0 key set {bad}"));
    assert!(
        err.starts_with("device-mapper: message ioctl on x  failed: Invalid argument\n"),
        "{err}"
    );
    assert_no_key("dmfs message's error", &err, W64);
    m.ok(&format!("$DMFS --mount $MNT message x 0 key set {K64}"));
    m.ok("echo x > $MNT/ctl/resume");

    let errors = m.read("ctl/errors");
    let log = m.log();
    for key in [K64, W64, &bad] {
        assert_no_key("ctl/errors", &errors, key);
        assert_no_key("the log", &log, key);
    }
}
