//! Key secrecy: a crypt key reaches the device's owner through `dm/NAME/table` and
//! `dmfs table --showkeys` only. Others cannot read the table, the verbs print keys masked as
//! dmsetup does, and no refusal, log line or error line repeats a key.
//!
//! Runs as root, as the rest of the suite, and acts as other users with setpriv.

mod common;
use common::users::{MEMBER, NOBODY, OTHER_MEMBER, as_user};
use common::*;

/// A 512-bit aes-xts key, every byte distinct enough to be found in any text it leaks into.
const KEY: &str = "0123456789abcdeffedcba98765432100f1e2d3c4b5a69788796a5b4c3d2e1f0\
                   00112233445566778899aabbccddeeff8899aabbccddeeff0011223344556677";

fn mount(args: &[&str]) -> Mount {
    let m = Mount::with_args(args);
    write_pattern_image(&m.path("a.img"), 0, 64);
    m.ok("chmod 644 a.img");
    m
}

fn crypt_line(key: &str) -> String {
    format!("0 64 crypt aes-xts-plain64 {key} 0 $PWD/a.img 0")
}

fn masked() -> String {
    "0".repeat(KEY.len())
}

/// Fails if `text` holds the key or any 16 characters of it.
fn assert_no_key(what: &str, text: &str) {
    for start in (0..=KEY.len() - 16).step_by(8) {
        let piece = &KEY[start..start + 16];
        assert!(
            !text.contains(piece),
            "{what} holds key material {piece:?}:\n{text}"
        );
    }
}

#[test]
fn a_crypt_table_is_its_owners_and_the_verbs_mask_its_key() {
    let m = mount(&["--allow-other"]);
    m.ok(&format!("echo \"{}\" > $MNT/ctl/create/c", crypt_line(KEY)));
    m.ok("echo \"0 64 linear $PWD/a.img 0\" > $MNT/ctl/create/l");
    // The owner (root here) reads the key; the mode says nobody else does.
    assert_eq!(
        m.read("dm/c/table"),
        format!(
            "0 64 crypt aes-xts-plain64 {KEY} 0 {} 0\n",
            m.path("a.img").display()
        )
    );
    assert_eq!(
        m.ok("cd $MNT/dm && stat -c '%n %a' c/table c/inactive-table c/status l/table"),
        "c/table 400\nc/inactive-table 444\nc/status 444\nl/table 444\n"
    );
    let denied = m.fails(&as_user(NOBODY, "cat $MNT/dm/c/table"));
    assert!(denied.contains("Permission denied"), "{denied}");
    m.ok(&as_user(
        NOBODY,
        "cat $MNT/dm/l/table $MNT/dm/c/status >/dev/null",
    ));

    // dmsetup's masking: the key as zeros unless --showkeys; other lines untouched.
    let image = m.path("a.img").display().to_string();
    assert_eq!(
        m.ok("$DMFS --mount $MNT table c"),
        format!("0 64 crypt aes-xts-plain64 {} 0 {image} 0\n", masked())
    );
    assert_eq!(
        m.ok("$DMFS --mount $MNT table --showkeys c"),
        format!("0 64 crypt aes-xts-plain64 {KEY} 0 {image} 0\n")
    );
    assert_eq!(
        m.ok("$DMFS --mount $MNT table"),
        format!(
            "c: 0 64 crypt aes-xts-plain64 {} 0 {image} 0\nl: 0 64 linear {image} 0\n",
            masked()
        )
    );

    // A reload that brings a key makes the inactive table the owner's too, and the live one
    // once resumed; the kernel's cached attributes do not let another user in meanwhile.
    m.ok(&as_user(
        NOBODY,
        "stat $MNT/dm/l/inactive-table $MNT/dm/l/table >/dev/null",
    ));
    m.ok(&format!("echo \"{}\" > $MNT/ctl/reload/l", crypt_line(KEY)));
    let denied = m.fails(&as_user(NOBODY, "cat $MNT/dm/l/inactive-table"));
    assert!(denied.contains("Permission denied"), "{denied}");
    assert_eq!(
        m.ok("$DMFS --mount $MNT table --inactive l"),
        format!("0 64 crypt aes-xts-plain64 {} 0 {image} 0\n", masked())
    );
    m.ok("echo l > $MNT/ctl/resume");
    let denied = m.fails(&as_user(NOBODY, "cat $MNT/dm/l/table"));
    assert!(denied.contains("Permission denied"), "{denied}");
    assert_eq!(m.ok("stat -c %a $MNT/dm/l/table"), "400\n");
    assert_no_key("ctl/errors", &m.read("ctl/errors"));
    assert_no_key("the log", &m.log());
}

#[test]
fn a_members_crypt_table_is_hidden_from_the_other_members() {
    let m = mount(&["--allow-other", "--ctl-group", "users"]);
    m.ok("chmod 666 a.img");
    m.ok(&as_user(
        MEMBER,
        &format!("echo \"{}\" > $MNT/ctl/create/mine", crypt_line(KEY)),
    ));
    assert_eq!(m.ok("stat -c '%a %u' $MNT/dm/mine/table"), "400 65534\n");
    assert!(
        m.ok(&as_user(MEMBER, "cat $MNT/dm/mine/table"))
            .contains(KEY)
    );
    let denied = m.fails(&as_user(OTHER_MEMBER, "cat $MNT/dm/mine/table"));
    assert!(denied.contains("Permission denied"), "{denied}");
    // The other member's `dmfs table` lists what it may read and no key.
    let listed = m.sh(&as_user(OTHER_MEMBER, "$DMFS --mount $MNT table"));
    assert_no_key(
        "another member's dmfs table",
        &String::from_utf8_lossy(&listed.stdout),
    );
    // root reads every table, as it reads every file.
    assert!(m.read("dm/mine/table").contains(KEY));
}

#[test]
fn a_refused_crypt_table_leaves_its_key_nowhere() {
    let m = mount(&[]);
    let bad = [
        // An unknown chain mode, a key of the wrong size, a key that is not hex, a missing
        // device, a bad offset, an unknown optional parameter, and a gap.
        format!("0 64 crypt aes-nosuch-plain64 {KEY} 0 $PWD/a.img 0"),
        format!(
            "0 64 crypt aes-xts-plain64 {} 0 $PWD/a.img 0",
            &KEY[..KEY.len() - 2]
        ),
        format!(
            "0 64 crypt aes-xts-plain64 {}zz 0 $PWD/a.img 0",
            &KEY[..KEY.len() - 2]
        ),
        format!("0 64 crypt aes-xts-plain64 {KEY} 0 $PWD/missing.img 0"),
        format!("0 64 crypt aes-xts-plain64 {KEY} 0 $PWD/a.img x"),
        format!("0 64 crypt aes-xts-plain64 {KEY} 0 $PWD/a.img 0 1 no_such_option"),
        format!("8 64 crypt aes-xts-plain64 {KEY} 0 $PWD/a.img 0"),
    ];
    for (i, line) in bad.iter().enumerate() {
        let out = m.fails(&format!("echo \"{line}\" > $MNT/ctl/create/bad{i}"));
        assert_no_key("the shell's error", &out);
    }
    // The same through the CLI, whose error line is printed.
    let out = m.fails(&format!(
        "$DMFS --mount $MNT create viacli --table \"{}\"",
        bad[0]
    ));
    assert_no_key("dmfs create's error", &out);
    assert!(m.devices().is_empty(), "{:?}", m.devices());
    let errors = m.read("ctl/errors");
    assert_eq!(errors.lines().count(), bad.len() + 1, "{errors}");
    assert_no_key("ctl/errors", &errors);
    assert_no_key("the log", &m.log());
}
