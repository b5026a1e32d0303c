//! The classic dmsetup walkthrough, through shell redirection on a real mount.

mod common;
use common::*;

#[test]
fn twoasone_halfdisk_oneahalf_and_remove() {
    let m = Mount::new();
    write_pattern_image(&m.path("a.img"), 0, 8192);
    write_pattern_image(&m.path("b.img"), 1, 4096);
    m.ok(r#"
        set -e
        # twoasone: two images concatenated.
        echo "0 $(($(stat -c %s a.img)/512)) linear $PWD/a.img 0
$(($(stat -c %s a.img)/512)) $(($(stat -c %s b.img)/512)) linear $PWD/b.img 0" > $MNT/ctl/create/twoasone
        cat a.img b.img | cmp - $MNT/dev/twoasone
        test "$(stat -c %s $MNT/dev/twoasone)" = $((6 * 1024 * 1024))
        # halfdisk: the first half of a.
        echo "0 4096 linear $PWD/a.img 0" > $MNT/ctl/create/halfdisk
        head -c $((4096 * 512)) a.img | cmp - $MNT/dev/halfdisk
        # oneahalf: all of b, then the second half of a.
        printf '0 4096 linear %s 0\n4096 4096 linear %s 4096\n' $PWD/b.img $PWD/a.img > $MNT/ctl/create/oneahalf
        { cat b.img; tail -c $((4096 * 512)) a.img; } | cmp - $MNT/dev/oneahalf
        dd if=$MNT/dev/twoasone of=copy.img bs=1M status=none
        cat a.img b.img | cmp - copy.img
    "#);
    assert_eq!(m.devices(), vec!["halfdisk", "oneahalf", "twoasone"]);
    assert_eq!(
        m.read("dm/twoasone/table"),
        format!(
            "0 8192 linear {0}/a.img 0\n8192 4096 linear {0}/b.img 0\n",
            m.dir.display()
        )
    );
    m.ok("echo twoasone > $MNT/ctl/remove && rm $MNT/dev/halfdisk");
    assert_eq!(m.devices(), vec!["oneahalf"]);
    assert!(!m.mnt.join("dm/twoasone").exists());
}

#[test]
fn blockdev_getsize_through_losetup() {
    let m = Mount::new();
    write_pattern_image(&m.path("a.img"), 0, 8192);
    m.ok("echo '0 3000 linear a.img 100' > $MNT/ctl/create/part");
    let out = m.ok(r#"
        set -e
        loop=$(losetup -f --show $MNT/dev/part)
        trap 'losetup -d $loop' EXIT
        blockdev --getsize $loop
        cmp <(dd if=a.img bs=512 skip=100 count=3000 status=none) $loop && echo same
    "#);
    assert_eq!(out, "3000\nsame\n");
}
