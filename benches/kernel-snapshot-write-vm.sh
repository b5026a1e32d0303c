# kernel-snapshot-write-vm.sh: runs INSIDE the kernel-oracle VM, started by
# kernel-snapshot-write.sh (which see). Not a test: a reference point for the cost of the first
# write to a snapshot-origin chunk in the real device mapper (Debian 6.1).
#
#   bash kernel-snapshot-write-vm.sh SIZE_MIB REPS CONFIG...
#
# /dev/vda: an empty virtio disk that this script formats ext4 (scratch only).
# /host/dd, /host/date: the host's coreutils (only libc needed), for timings below one second.
# CONFIG is one of
#   tmpfs        loop files on a tmpfs inside the VM (RAM), loop devices buffered
#   ext4         loop files on ext4 on /dev/vda, loop devices buffered (losetup default)
#   ext4-dio     the same with losetup --direct-io=on
# For each: plain.img, origin.img (both written full of zeros first, so their blocks exist) and
# cow.img (sparse, as benches/run.sh makes cow.img), each on its own loop device; "plain" is a
# linear dm device over plain's loop device, "origin" a snapshot-origin over origin's, "snap" a
# persistent snapshot (chunk 32 sectors = 16 KiB) of origin with the COW on cow's loop device.
# Each row is one pass of SIZE_MIB with dd bs=1M oflag=direct; "+flush" adds the time of the
# blockdev --flushbufs (fsync of the dm device) that follows it. Per config, REPS repetitions of
# plain, first, later, each with a fresh sparse COW file and snapshot; a SUMMARY line per config
# gives the medians of the ratios (the VM is emulated and the host busy: single runs vary a lot).
set -u
DD=/host/dd
DATE=/host/date
SIZE=${1:-256}; shift
REPS=${1:-3}; shift
CONFIGS=${*:-tmpfs ext4 ext4-dio}
SECTORS=$((SIZE * 2048))
COW_MIB=$((SIZE + SIZE / 8 + 8))
export LC_ALL=C

now() { "$DATE" +%s.%N; }
fail() { echo "FAIL: $*"; }

# dd_write DEV: one pass; prints seconds
dd_write() {
  local out
  out=$("$DD" if=/dev/zero of="$1" bs=1M count="$SIZE" oflag=direct conv=notrunc 2>&1) || { fail "dd $1: $out"; echo 0; return; }
  # "268435456 bytes (268 MB, 256 MiB) copied, 1.234 s, 218 MB/s"
  printf '%s\n' "$out" | sed -n 's/.* copied, \([0-9.e+-]*\) s,.*/\1/p'
}
flush_time() {
  local t0 t1
  t0=$(now); blockdev --flushbufs "$1"; t1=$(now)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}
mbs() { awk -v s="$1" -v m="$SIZE" 'BEGIN { if (s > 0) printf "%.0f", m * 1048576 / s / 1e6; else printf "-" }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else printf "-" }'; }

echo "# kernel $(uname -r), $(nproc) vCPUs, $(awk '/MemTotal/ { print int($2 / 1024) " MiB" }' /proc/meminfo), dm-snapshot $(dmsetup targets | awk '$1 == "snapshot" { print $2 }')"
echo "# one pass of $SIZE MiB each, dd bs=1M oflag=direct; time in s, rate in MB/s (10^6 B/s)"
echo "# cow.img sparse ($COW_MIB MiB), plain.img and origin.img written full first; snapshot P, chunk 32 sectors"

mkdir -p /mnt/ext4 /mnt/tmpfs
if echo "$CONFIGS" | grep -q ext4; then
  mke2fs -q -F -t ext4 /dev/vda > /dev/null || fail "mke2fs /dev/vda"
  mount -t ext4 /dev/vda /mnt/ext4 || fail "mount ext4"
  echo "# ext4: /dev/vda ($(($(blockdev --getsize64 /dev/vda) / 1048576)) MiB virtio disk, a sparse file on the host attached with cache=unsafe: the host ignores its flushes), ext4 defaults, write cache $(cat /sys/block/vda/queue/write_cache)"
fi
if echo "$CONFIGS" | grep -q tmpfs; then
  mount -t tmpfs -o size=$((SIZE * 2 + COW_MIB + 64))m tmpfs /mnt/tmpfs || fail "mount tmpfs"
  echo "# tmpfs: a tmpfs in the VM's RAM (fsync does nothing there; loop cannot use direct I/O on it)"
fi

# diskstats of a block device: "writes flushes" (fields 5 and 16 of /sys/block/X/stat)
wf() { awk '{ print $5, $16 }' "/sys/block/${1#/dev/}/stat"; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

printf '%-9s %-3s %-6s %8s %6s %8s %7s %s\n' config rep row s MB/s "+flush s" "MB/s+fl" "vs plain (write / write+flush)"
for cfg in $CONFIGS; do
  case $cfg in
    tmpfs) dir=/mnt/tmpfs; dio=off ;;
    ext4) dir=/mnt/ext4; dio=off ;;
    ext4-dio) dir=/mnt/ext4; dio=on ;;
    *) fail "unknown config $cfg"; continue ;;
  esac
  rm -f "$dir"/*.img
  for f in plain origin; do
    "$DD" if=/dev/zero of="$dir/$f.img" bs=1M count="$SIZE" conv=fsync status=none || fail "making $f.img"
  done
  sync; echo 3 > /proc/sys/vm/drop_caches
  lp=$(losetup -f --show --direct-io="$dio" "$dir/plain.img")
  lo=$(losetup -f --show --direct-io="$dio" "$dir/origin.img")
  echo "0 $SECTORS linear $lp 0" | dmsetup create plain || fail "create plain"
  : > /tmp/r-first; : > /tmp/r-later; : > /tmp/r-firstfl; : > /tmp/r-laterfl
  for rep in $(seq "$REPS"); do
    # a fresh sparse COW file and snapshot each repetition
    "$DD" if=/dev/zero of="$dir/cow.img" bs=1M count=0 seek="$COW_MIB" status=none || fail "making cow.img"
    lc=$(losetup -f --show --direct-io="$dio" "$dir/cow.img")
    if [ "$rep" = 1 ]; then
      dios=""
      for l in $lp $lo $lc; do dios="$dios $(cat /sys/block/${l#/dev/}/loop/dio)"; done
      echo "# $cfg: loop devices plain $lp, origin $lo, COW $lc; direct I/O (sysfs loop/dio):$dios"
    fi
    echo "0 $SECTORS snapshot $lo $lc P 32" | dmsetup create snap || fail "create snap"
    echo "0 $SECTORS snapshot-origin $lo" | dmsetup create origin || fail "create origin"

    declare -A S F
    S[plain]=$(dd_write /dev/mapper/plain); F[plain]=$(flush_time /dev/mapper/plain)
    set -- $(wf "$lc")
    S[first]=$(dd_write /dev/mapper/origin); F[first]=$(flush_time /dev/mapper/origin)
    set -- $(wf "$lc") "$@"
    echo "# $cfg rep $rep: snapshot status after the first pass: $(dmsetup status snap); the COW device got $(($1 - $3)) writes and $(($2 - $4)) flushes in the first pass (incl. the flush after it)"
    S[later]=$(dd_write /dev/mapper/origin); F[later]=$(flush_time /dev/mapper/origin)
    totp=$(awk -v a="${S[plain]}" -v b="${F[plain]}" 'BEGIN { printf "%.3f", a + b }')
    for r in plain first later; do
      tot=$(awk -v a="${S[$r]}" -v b="${F[$r]}" 'BEGIN { printf "%.3f", a + b }')
      rw=$(ratio "${S[$r]}" "${S[plain]}") rt=$(ratio "$tot" "$totp")
      printf '%-9s %-3s %-6s %8s %6s %8s %7s %s / %s\n' "$cfg" "$rep" "$r" "${S[$r]}" "$(mbs "${S[$r]}")" \
        "$tot" "$(mbs "$tot")" "${rw}x" "${rt}x"
      [ "$r" = plain ] || { echo "$rw" >> /tmp/r-$r; echo "$rt" >> /tmp/r-${r}fl; }
    done
    unset S F
    dmsetup remove origin; dmsetup remove snap
    losetup -d "$lc"
    rm -f "$dir/cow.img"
  done
  echo "SUMMARY $cfg: median over $REPS of time / plain's time: first write $(median < /tmp/r-first)x ($(median < /tmp/r-firstfl)x with the flush), later write $(median < /tmp/r-later)x ($(median < /tmp/r-laterfl)x)"
  dmsetup remove plain
  losetup -d "$lp" "$lo"
  rm -f "$dir"/*.img
done
echo "# (vs plain: time of the row / time of plain; 2.50x = the row is 2.5 times slower)"
umount /mnt/ext4 2> /dev/null
umount /mnt/tmpfs 2> /dev/null
exit 0
