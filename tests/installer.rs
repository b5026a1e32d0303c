//! An encrypted install's disk, as a distribution's installer lays it out (GPT with an EFI
//! system partition, /boot, and a LUKS2 partition holding LVM with root and swap), made in the
//! kernel oracle (fixtures/kernel/installer), comes up with one `dmfs activate`: the same
//! devices, names, uuids and tables as kpartx, `cryptsetup open --disable-keyring` as
//! `luks-<UUID>` and `vgchange -ay` made, and the kernel's root filesystem reads clean with
//! its files' hashes. A wrong passphrase leaves nothing behind, and `dmfs deactivate` takes it
//! all down again.
//!
//! Loop devices and mounts made here are undone on drop, also when a test fails.

mod common;
use common::block_tools::{Loop, Mounted, hashes, is_root, run};
use common::lvm_recording::{Dev, mounted, recorded_devices, section};
use common::*;

use std::process::Command;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/kernel/installer");
const PASSPHRASE: &str = "correct horse";
const AFTER: &str = "after kpartx, cryptsetup open and vgchange -ay";

fn recording() -> String {
    std::fs::read_to_string(format!("{DIR}/installer.out")).unwrap()
}

/// The fixture's disk as `disk.img` in the mount's scratch directory, and a key file.
fn disk(m: &Mount) -> String {
    let img = m.path("disk.img");
    let (ok, out) = run(Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -dc {DIR}/disk.img.gz > {}", img.display())));
    assert!(ok, "gunzip disk.img.gz: {out}");
    std::fs::write(m.path("pw"), PASSPHRASE).unwrap();
    img.display().to_string()
}

/// What the recording says kpartx and vgchange made, with dmfs's names: the image's
/// partitions are disk1.. where the kernel's were vda1.., on the image file where the kernel
/// had 254:0, and a regular file's partitions get no uuid (kpartx's would name a loop device).
fn want_devices(m: &Mount, img: &str) -> Vec<Dev> {
    let mnt_dev = m.mnt.join("dev").display().to_string();
    recorded_devices(&recording(), AFTER, |_| img.to_string(), &mnt_dev)
        .into_iter()
        .map(|d| {
            let partition = d.name.starts_with("vda");
            Dev {
                name: d.name.replace("vda", "disk"),
                uuid: if partition { String::new() } else { d.uuid },
                read_only: d.read_only,
                table: d
                    .table
                    .iter()
                    .map(|l| l.replace(&format!("{mnt_dev}/vda"), &format!("{mnt_dev}/disk")))
                    .collect(),
            }
        })
        .collect()
}

#[test]
fn an_encrypted_install_comes_up_with_one_activate() {
    let m = Mount::new();
    let img = disk(&m);
    let out = recording();

    let report = m.ok("$DMFS --mount $MNT activate --key-file pw disk.img");
    let added: Vec<String> = out
        .lines()
        .skip_while(|l| *l != "$ kpartx -a -v /dev/vda")
        .skip(1)
        .take_while(|l| l.starts_with("add map "))
        .map(|l| l.replace("vda", "disk").replace("254:0", &img) + "\n")
        .collect();
    assert_eq!(added.len(), 3, "{out}");
    let vgchange = out
        .lines()
        .skip_while(|l| *l != "$ vgchange -ay sysvg")
        .nth(1)
        .unwrap();
    assert_eq!(report, format!("{}{vgchange}\n", added.concat()));

    // Every device, in the order they were made, as the kernel had them.
    let want = want_devices(&m, &img);
    assert_eq!(want.len(), 6);
    assert_eq!(mounted(&m), want);
    let luks = &want[3].name;
    assert!(luks.starts_with("luks-"), "{luks}");
    // The key is the owner's: dmfs table masks it as dmsetup does.
    let masked = m.ok(&format!("$DMFS --mount $MNT table {luks}"));
    assert!(
        masked.contains(" aes-xts-plain64 0000000000000000"),
        "{masked}"
    );

    // The kernel's root filesystem through dev/sysvg-root: clean, with the kernel's hashes.
    let root = m.mnt.join("dev/sysvg-root");
    let (ok, fsck) = run(Command::new("e2fsck").arg("-fn").arg(&root));
    assert!(ok, "e2fsck -fn {}: {fsck}", root.display());
    let recorded_hashes = section(&out, "file hashes").join("\n") + "\n";
    if is_root() {
        let lo = Loop::attach(&root, true);
        let fs = Mounted::mount(&lo.0, m.path("root"), true);
        assert_eq!(
            hashes(&fs.0, &["etc/hostname", "etc/numbers", "random.bin"]),
            recorded_hashes
        );
        drop(fs);
        drop(lo);
    }

    // deactivate takes it all down, holders first.
    m.ok("$DMFS --mount $MNT deactivate disk.img");
    assert!(m.devices().is_empty(), "{:?}", m.devices());
}

#[test]
fn a_wrong_passphrase_leaves_nothing_behind() {
    let m = Mount::new();
    disk(&m);
    std::fs::write(m.path("wrong"), "incorrect horse").unwrap();
    let out = m.sh("$DMFS --mount $MNT activate --key-file wrong disk.img");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "No key available with this passphrase.\n"
    );
    // The partitions it mapped before it found the volume are gone again.
    assert!(m.devices().is_empty(), "{:?}", m.devices());

    // From standard input, up to the newline, as cryptsetup reads a piped passphrase.
    m.ok(&format!(
        "echo '{PASSPHRASE}' | $DMFS --mount $MNT activate disk.img"
    ));
    assert_eq!(m.devices().len(), 6, "{:?}", m.devices());
    // --partitions-only is kpartx alone: no volume is opened, so no key is asked for.
    m.ok("$DMFS --mount $MNT deactivate disk.img");
    m.ok("$DMFS --mount $MNT activate --partitions-only disk.img </dev/null");
    assert_eq!(m.devices(), vec!["disk1", "disk2", "disk3"]);
}
