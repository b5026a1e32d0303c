#!/usr/bin/env bash
# Builds dmfs, mounts it, and creates the classic example device "twoasone" (two images
# concatenated), so there is something to read straight away.
#   mount-helpers/quickstart.sh [WORKDIR]      (default /tmp/dmfs-demo)
# DMFS=/path/to/dmfs uses that binary instead of building target/release/dmfs.
# Unmount afterwards with: target/release/dmfs umount WORKDIR/mnt
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/dmfs-demo}
if [ -n "${DMFS:-}" ]; then
    dmfs=$DMFS
else
    cargo build --release --quiet --manifest-path "$repo/Cargo.toml"
    dmfs=$repo/target/release/dmfs
fi
mkdir -p "$work/mnt"
cd "$work"
if grep -q " $work/mnt " /proc/mounts; then
    "$dmfs" umount "$work/mnt"
fi
[ -f a.img ] || head -c 4M /dev/urandom > a.img
[ -f b.img ] || head -c 2M /dev/urandom > b.img
"$dmfs" mount "$work/mnt" --log-file "$work/dmfs.log"
a=$(($(stat -c %s a.img) / 512))
b=$(($(stat -c %s b.img) / 512))
printf '0 %d linear %s 0\n%d %d linear %s 0\n' "$a" "$work/a.img" "$a" "$b" "$work/b.img" \
    > "$work/mnt/ctl/create/twoasone"
cat a.img b.img | cmp - "$work/mnt/dev/twoasone"
echo "dmfs is mounted on $work/mnt; device twoasone = a.img + b.img:"
cat "$work/mnt/dm/twoasone/table"
echo "try: cat $work/mnt/dm/twoasone/info; losetup -f --show $work/mnt/dev/twoasone"
echo "stop: $dmfs umount $work/mnt"
