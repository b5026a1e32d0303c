//! dmfs against what the real kernel printed for the same tables (fixtures/kernel/targets.out,
//! recorded by fixtures/kernel/record-targets.sh in the kernel-oracle VM): the same `table`
//! and `status` text, sizes and image checksums, the same bytes changed by a write, and the
//! same tables refused.

mod common;
use common::fixture::{self, Block, DISKS, make_disks, substitute, table_text};
use common::*;

use std::path::Path;

fn fixtures() -> Vec<Block> {
    let blocks = fixture::read("targets.out", &["case", "write", "bad"]);
    assert!(blocks.len() > 20, "too few recorded cases");
    blocks
}

fn sha256(m: &Mount, file: &str) -> String {
    m.ok(&format!("sha256sum < {file} | cut -d' ' -f1"))
        .trim()
        .to_string()
}

#[test]
fn accepted_tables_print_and_read_as_the_kernel() {
    let m = Mount::new();
    make_disks(&m);
    let mut checked = 0;
    for b in fixtures()
        .iter()
        .filter(|b| b.kind == "case" && b.one("createfail").is_none())
    {
        let name = &b.name;
        m.create(name, &table_text(&m, b));
        let expect = |key| {
            b.all(key)
                .iter()
                .map(|l| substitute(&m, l) + "\n")
                .collect::<String>()
        };
        assert_eq!(
            m.read(&format!("dm/{name}/table")),
            expect("ktable"),
            "{name}: table"
        );
        assert_eq!(
            m.read(&format!("dm/{name}/status")),
            expect("kstatus"),
            "{name}: status"
        );
        let size: u64 = b.one("size").unwrap().parse().unwrap();
        assert_eq!(
            std::fs::metadata(m.mnt.join("dev").join(name))
                .unwrap()
                .len(),
            size * 512,
            "{name}: size"
        );
        if let Some(hash) = b.one("sha256") {
            assert_eq!(
                sha256(&m, &format!("$MNT/dev/{name}")),
                hash,
                "{name}: image"
            );
        }
        if let Some(rc) = b.one("readerr") {
            let out = m.sh(&format!(
                "dd if=$MNT/dev/{name} of=/dev/null bs=512 count=1 status=none"
            ));
            assert_eq!(
                out.status.success(),
                rc == "0",
                "{name}: reading the first sector"
            );
        }
        m.ok(&format!("echo {name} > $MNT/ctl/remove"));
        checked += 1;
    }
    assert!(checked > 15, "only {checked} accepted cases");
}

#[test]
fn writes_land_where_the_kernel_put_them() {
    let mut checked = 0;
    for b in fixtures().iter().filter(|b| b.kind == "write") {
        let m = Mount::new();
        make_disks(&m);
        let name = &b.name;
        m.create(name, &table_text(&m, b));
        let (seek, count) = (b.one("seek").unwrap(), b.one("count").unwrap());
        m.ok(&format!(
            "head -c $(({count} * 512)) /dev/zero | tr '\\0' '\\253' | \
             dd of=$MNT/dev/{name} bs=512 seek={seek} conv=notrunc,fsync status=none"
        ));
        for h in b.all("diskhash") {
            let (disk, hash) = h.split_once(' ').unwrap();
            assert_eq!(
                sha256(&m, &format!("{disk}.img")),
                hash,
                "{name}: disk {disk}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 2, "only {checked} write cases");
}

/// Refused by both, with dmfs naming the cause: dmsetup reads start and length with glibc's
/// sscanf, which wraps "-1" to 2^64-1 and reads "0x10" as 0 followed by a type "x10", so the
/// kernel reports the consequence ("too large device", "zero-length target") rather than the
/// bad number. dmfs refuses the number itself.
const DEPARTURES: [(&str, &str); 3] = [
    ("start-negative", "Invalid start sector '-1'"),
    ("length-negative", "Invalid length '-100'"),
    ("length-hex", "Invalid length '0x10'"),
];

#[test]
fn refused_tables_are_refused_with_the_kernels_words() {
    let m = Mount::new();
    make_disks(&m);
    m.ok("echo '0 8 zero' > $MNT/ctl/create/keep");
    let mut checked = 0;
    let mut mismatches = Vec::new();
    for b in fixtures()
        .iter()
        .filter(|b| b.kind == "bad" && b.one("exit") != Some("0"))
    {
        if b.one("devname").is_some() {
            continue; // name cases: the tables are fine; names are covered by bad_input.rs
        }
        let table = table_text(&m, b);
        let result = m.write_table("create", "refused", &table);
        assert!(
            result.is_err(),
            "{}: dmfs accepted what the kernel refused:\n{table}",
            b.name
        );
        assert_eq!(
            m.devices(),
            vec!["keep"],
            "{}: a device was left behind",
            b.name
        );
        let last = m.last_error();
        // The kernel's reason, after "device-mapper: table: 254:3: ", with vdX as the images.
        for kmsg in b.all("kmsg") {
            let Some(rest) = kmsg.strip_prefix("device-mapper: table: ") else {
                continue;
            };
            let Some((_, reason)) = rest.split_once(": ") else {
                continue;
            };
            if reason.starts_with("adding target device") || reason.starts_with("table") {
                continue;
            }
            if reason.starts_with("table") {
                continue;
            }
            // "linear: Invalid device sector (-EINVAL)": the errno is dmfs's own to choose.
            let reason = reason.rsplit_once(" (-E").map_or(reason, |(r, _)| r);
            let mut reason = reason.to_string();
            for (ph, _, _) in DISKS {
                let dev = format!(
                    "vd{}",
                    (b'a' + DISKS.iter().position(|d| d.0 == ph).unwrap() as u8) as char
                );
                reason = reason.replace(
                    &dev,
                    &m.path(&format!("{}.img", &ph[1..])).to_string_lossy(),
                );
            }
            if let Some((_, ours)) = DEPARTURES.iter().find(|(case, _)| *case == b.name) {
                assert!(
                    last.contains(ours),
                    "{}: expected {ours:?}, dmfs said {last:?}",
                    b.name
                );
            } else if !last.contains(&reason) {
                mismatches.push(format!(
                    "{}: kernel said {reason:?}, dmfs said {last:?}",
                    b.name
                ));
            }
        }
        checked += 1;
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert!(checked > 20, "only {checked} refused cases");
}

/// The stdout lines of a `### command` section of fixtures/kernel/misc.out.
fn misc_stdout(command: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/kernel/misc.out");
    let text = std::fs::read_to_string(path).expect("fixtures/kernel/misc.out");
    let section = text
        .split("### ")
        .find(|s| s.lines().next() == Some(command))
        .expect(command);
    section
        .lines()
        .filter_map(|l| l.strip_prefix("stdout ").or((l == "stdout").then_some("")))
        .map(String::from)
        .collect()
}

#[test]
fn targets_info_and_deps_print_as_dmsetup_does() {
    let m = Mount::new();
    make_disks(&m);
    // The kernel's list, restricted to the targets dmfs implements, in the kernel's order.
    let implemented: Vec<String> = m.read("ctl/targets").lines().map(String::from).collect();
    let kernel: Vec<String> = misc_stdout("dmsetup targets")
        .into_iter()
        .filter(|l| {
            [
                "crypt",
                "linear",
                "striped",
                "zero",
                "error",
                "snapshot",
                "snapshot-origin",
                "snapshot-merge",
                "flakey",
                "delay",
                "unstriped",
            ]
            .contains(&l.split_whitespace().next().unwrap())
        })
        .collect();
    assert_eq!(implemented, kernel);
    let version = m.read("ctl/version");
    let driver = &misc_stdout("dmsetup version")[1];
    assert!(version.ends_with(&format!("{driver}\n")), "{version}");
    // info1 in misc.out: linear A, striped B C, zero.
    m.ok(r#"printf "0 4096 linear $PWD/A.img 0\n4096 2048 striped 2 8 $PWD/B.img 0 $PWD/C.img 0\n6144 100 zero\n" > $MNT/ctl/create/info1"#);
    assert_eq!(
        m.read("dm/info1/info")
            .lines()
            .map(String::from)
            .collect::<Vec<_>>(),
        misc_stdout("dmsetup info info1")
    );
    let deps = misc_stdout("dmsetup deps info1")[0].clone();
    let expect = ["$C", "$B", "$A"].iter().fold(deps, |d, ph| {
        let mm = match *ph {
            "$A" => "(254, 0)",
            "$B" => "(254, 16)",
            _ => "(254, 32)",
        };
        d.replace(mm, &format!("({})", substitute(&m, ph)))
    });
    assert_eq!(m.read("dm/info1/deps"), expect + "\n");
}
