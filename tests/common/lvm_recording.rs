//! Reading what fixtures/kernel/lvm/ recorded in the oracle: the devices `vgchange -ay` made,
//! with their names, uuids, read-only flags and tables, as dmfs must make them.

use std::collections::HashMap;

/// One device as the oracle printed it, or as a mount shows it.
#[derive(Debug, PartialEq)]
pub struct Dev {
    pub name: String,
    pub uuid: String,
    pub read_only: bool,
    pub table: Vec<String>,
}

/// The section of a recorded output after the line `--- TITLE`.
pub fn section<'a>(out: &'a str, title: &str) -> Vec<&'a str> {
    let head = format!("--- {title}\n");
    let at = out
        .find(&head)
        .unwrap_or_else(|| panic!("no {title:?} in the recorded output"))
        + head.len();
    out[at..]
        .lines()
        .take_while(|l| !l.starts_with("--- ") && !l.starts_with("$ "))
        .collect()
}

/// The devices the oracle had after `after` in the recorded output `out`, in creation
/// (minor) order, with the tables' major:minor pairs replaced: 254:N by `image(N / 16)` (the
/// N/16th virtio disk), 253:N by `mnt_dev/` and the name of minor N.
pub fn recorded_devices(
    out: &str,
    after: &str,
    image: impl Fn(usize) -> String,
    mnt_dev: &str,
) -> Vec<Dev> {
    let mut by_minor = HashMap::new();
    let mut devs = Vec::new();
    for l in section(out, &format!("dmsetup info (minor,name,uuid,attr) {after}")) {
        let f: Vec<&str> = l.split(' ').collect();
        by_minor.insert(f[0].to_string(), f[1].to_string());
        devs.push(Dev {
            name: f[1].to_string(),
            uuid: f[2].to_string(),
            read_only: f[3].ends_with('r'),
            table: Vec::new(),
        });
    }
    for l in section(out, &format!("dmsetup table {after}")) {
        let (name, line) = l.split_once(": ").unwrap();
        let words: Vec<String> = line
            .split_whitespace()
            .map(|w| match w.split_once(':') {
                Some(("254", n)) => image(n.parse::<usize>().unwrap() / 16),
                Some(("253", n)) => format!("{mnt_dev}/{}", by_minor[n]),
                _ => w.to_string(),
            })
            .collect();
        let dev = devs.iter_mut().find(|d| d.name == name).unwrap();
        dev.table.push(words.join(" "));
    }
    devs
}

/// The mount's devices, in creation order.
pub fn mounted(m: &super::Mount) -> Vec<Dev> {
    let mut devs: Vec<(u64, Dev)> = m
        .devices()
        .into_iter()
        .map(|name| {
            let info = m.read(&format!("dm/{name}/info"));
            let minor = info
                .lines()
                .find_map(|l| l.strip_prefix("Major, minor:"))
                .and_then(|v| v.split(',').nth(1))
                .map(|v| v.trim().parse().unwrap())
                .unwrap();
            let dev = Dev {
                uuid: m.read(&format!("dm/{name}/uuid")).trim_end().to_string(),
                read_only: info.contains("READ-ONLY"),
                table: m
                    .read(&format!("dm/{name}/table"))
                    .lines()
                    // dmsetup's trailing space after a target without arguments (`zero `).
                    .map(|l| l.trim_end().to_string())
                    .collect(),
                name,
            };
            (minor, dev)
        })
        .collect();
    devs.sort_by_key(|(minor, _)| *minor);
    devs.into_iter().map(|(_, d)| d).collect()
}
