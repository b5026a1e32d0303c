//! Logical block sizes across stacked devices, replayed from the kernel
//! (fixtures/kernel/blocksize/blocksize.out): a device's logical block size is the largest its
//! lines give it, a line's is the largest of the devices it maps onto (raised by dm-crypt's
//! `sector_size`), and a table stacked on such a device must start and end every area it uses
//! on that size, with the table as a whole filling whole blocks. Every case is created through
//! `ctl/create` as users do; refusals must fail the write with EINVAL and the kernel's words.

mod common;

use common::Mount;

struct Case {
    name: String,
    table: Vec<String>,
    accepted: bool,
    kmsg: Vec<String>,
}

struct Recording {
    /// Devices created before the cases: name, the kernel's dm-N, table.
    pre: Vec<(String, String, String)>,
    cases: Vec<Case>,
}

fn recording() -> Recording {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/kernel/blocksize/blocksize.out"
    ))
    .unwrap();
    let mut rec = Recording {
        pre: Vec::new(),
        cases: Vec::new(),
    };
    for line in text.lines() {
        let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "pre" => {
                let mut w = rest.splitn(3, ' ');
                let (n, dm, t) = (w.next(), w.next(), w.next());
                rec.pre
                    .push((n.unwrap().into(), dm.unwrap().into(), t.unwrap().into()));
            }
            "case" => rec.cases.push(Case {
                name: rest.into(),
                table: Vec::new(),
                accepted: false,
                kmsg: Vec::new(),
            }),
            "table" => rec.cases.last_mut().unwrap().table.push(rest.into()),
            "exit" => rec.cases.last_mut().unwrap().accepted = rest == "0",
            "kmsg" => rec.cases.last_mut().unwrap().kmsg.push(rest.into()),
            "ss" | "end" => {}
            _ => panic!("blocksize.out: unknown line {line:?}"),
        }
    }
    assert!(rec.cases.len() >= 20, "blocksize.out holds too few cases");
    rec
}

#[test]
fn stacked_block_sizes_as_the_kernel_checks_them() {
    let rec = recording();
    let m = Mount::new();
    m.ok("truncate -s $((16384 * 512)) a.img && truncate -s $((2048 * 512)) b.img");
    let mnt = m.mnt.display().to_string();
    let dir = m.dir.display().to_string();
    // The kernel's names for what this mount calls by path.
    let mut names: Vec<(String, String)> = vec![
        ("/dev/vda".into(), format!("{dir}/a.img")),
        ("/dev/vdb".into(), format!("{dir}/b.img")),
        ("of vda".into(), format!("of {dir}/a.img")),
    ];
    for (name, dm, _) in &rec.pre {
        names.push((format!("/dev/mapper/{name}"), format!("{mnt}/dev/{name}")));
        names.push((format!("of {dm}"), format!("of {mnt}/dev/{name}")));
    }
    let ours = |s: &str| {
        names
            .iter()
            .fold(s.to_string(), |s, (k, v)| s.replace(k.as_str(), v))
    };
    for (name, _, table) in &rec.pre {
        let table = ours(table);
        m.ok(&format!("echo '{table}' > $MNT/ctl/create/{name}"));
    }
    let mut failures = Vec::new();
    for case in &rec.cases {
        let table = ours(&case.table.join("\n"));
        let result = m.write_table("create", &case.name, &format!("{table}\n"));
        let created = m.devices().contains(&case.name);
        match (case.accepted, result) {
            (true, Ok(())) if created => {}
            (true, r) => failures.push(format!("{}: refused: {r:?} {}", case.name, m.last_error())),
            (false, Ok(())) => {
                failures.push(format!("{}: accepted, the kernel refused it", case.name))
            }
            (false, Err(e)) => {
                if created {
                    failures.push(format!("{}: refused ({e}) but created", case.name));
                }
                if e.raw_os_error() != Some(libc::EINVAL) {
                    failures.push(format!("{}: not EINVAL: {e}", case.name));
                }
                let error = m.last_error();
                for words in &case.kmsg {
                    let words = ours(words);
                    if !error.contains(&words) {
                        failures.push(format!("{}: {error:?} lacks {words:?}", case.name));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
