//! mount(8) integration: `mount -t fuse.dmfs` through mount-helpers/mount.fuse.dmfs, with
//! tables created at mount time from a `dmfs table`-style file and from a directory.

mod common;
use common::*;

use std::process::Command;

#[test]
fn mount_t_fuse_dmfs_creates_tables_from_a_file_and_a_directory() {
    let dir = scratch_dir("helper");
    let helper_dir = dir.join("sbin");
    std::fs::create_dir_all(&helper_dir).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/mount-helpers/mount.fuse.dmfs"),
        helper_dir.join("mount.fuse.dmfs"),
    )
    .unwrap();
    write_pattern_image(&dir.join("a.img"), 0, 64);
    let script = r#"
        set -e
        mkdir -p m1 m2 tables.d
        printf "twoasone: 0 32 linear $PWD/a.img 0\ntwoasone: 32 32 linear $PWD/a.img 32\nz: 0 8 zero\n" > tables
        echo "0 16 linear $PWD/a.img 16" > tables.d/part
        # mount(8) runs /sbin/mount.fuse.dmfs; install ours there for the test unless one is.
        if [ ! -e /sbin/mount.fuse.dmfs ]; then
            ln -s $HELPERS/mount.fuse.dmfs /sbin/mount.fuse.dmfs
            trap 'rm -f /sbin/mount.fuse.dmfs' EXIT
        fi
        mount -t fuse.dmfs none $PWD/m1 -o tables=$PWD/tables,log=$PWD/m1.log,cache=direct,read_ahead_kb=256
        mount -t fuse.dmfs none $PWD/m2 -o tables=$PWD/tables.d
        ls m1/dev | tr '\n' ' '; echo
        grep -q -- "--cache Direct, read-ahead 256 KiB" m1.log && echo m1-options
        cat /sys/class/bdi/$(mountpoint -d $PWD/m1)/read_ahead_kb
        cmp a.img m1/dev/twoasone && echo same
        cmp <(dd if=a.img bs=512 skip=16 count=16 status=none) m2/dev/part && echo part
        $DMFS umount $PWD/m1
        umount $PWD/m2
        ! grep -q " $PWD/m[12] " /proc/mounts && echo unmounted
    "#;
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(&dir)
        .env("DMFS", DMFS)
        .env("HELPERS", &helper_dir)
        .output()
        .unwrap();
    let _ = Command::new("bash")
        .arg("-c")
        .arg("for m in m1 m2; do umount -l $PWD/$m 2>/dev/null; pkill -f \"dmfs mount $PWD/$m\\$\"; done; true")
        .current_dir(&dir)
        .status();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "twoasone z \nm1-options\n256\nsame\npart\nunmounted\n"
    );
}
