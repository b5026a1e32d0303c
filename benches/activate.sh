#!/usr/bin/env bash
# Benchmark `dmfs activate` and reads through an LV on a partition (issue 16, "Scale and speed").
#
#   benches/activate.sh            # scratch in /tmp/dmfs-bench-activate, its section of results.md
#   REPS=3 RUNTIME=2 ROUNDS=1 RESULTS=/tmp/r.md benches/activate.sh    # a quick check
#
# What it measures, in one run:
# 1. activation scale: wall clock of `dmfs activate IMG` (the command, start to exit) for an
#    image with 128 GPT partitions and for an image holding a VG with 1,000 linear LVs; REPS
#    runs each on one mount, the devices removed (one `dmfs remove`, also timed) between runs.
# 2. stacking cost: a 1 GiB image of random data with one GPT partition holding a PV and one
#    linear LV over all of its extents. Reads through the LV device (LV -> partition device ->
#    image file, two stacked devices) against `flat`, one linear device over the same bytes of
#    the image, on a default (page-cache) mount and on a --cache direct mount.
# 3. the peer: libyal's vslvmmount (a rootless FUSE reader of LVM) on the same image, its
#    volume offset set to the partition's start, reading the same LV.
# fio jobs as benches/run.sh runs them: seq read psync bs=1M, rand read 4K io_uring QD16 x 2
# jobs, time-based over FIO_SIZE with --invalidate=0; and a re-read row: one pass of seq read
# 1M (not time-based, --invalidate=0) in a new open of a file read before, as a second `cp` of
# it is. Every target runs once per round, the targets compared in a row back to back in a
# rotating order, and the median of the rounds is kept.
# 4. the ceiling of each read row, in the same rounds: page-cache rows, the same job on
#    stack.img itself (native); --cache direct rows, a dmfs zero device of the LV's size on the
#    direct mount (the FUSE path with no data to fetch).
#
# Knobs (environment): BENCH_DIR (scratch), CACHE_DIR (the images, kept between runs, keyed by
# IMAGES_VERSION), REPS (activations per image; 7), RUNTIME (s per fio job; 5), ROUNDS (5),
# FIO_SIZE (in M; 1000M), RESULTS (benches/results.md: this script's section is replaced, or added at
# the end; only written when every row ran), INCOMPLETE_RESULTS, NO_BUILD=1, DMFS (another dmfs
# binary; not built), VSLVMMOUNT (a vslvmmount binary to use as it is).
#
# vslvmmount: Debian's libvslvm-utils (20181227) cannot mount any volume group with a logical
# volume (its mount_handle.c passes an unset volume group to
# libvslvm_volume_group_get_logical_volume; fixed upstream in 2020). Unless VSLVMMOUNT is set,
# the script tries it, and when it mounts no LV builds vslvmmount from the source of the PyPI
# package libvslvm-python (the whole libvslvm tree with vslvmtools; needs libfuse3-dev) into
# CACHE_DIR, and says in the results which one it measured.
#
# Needs root: the LVM tools write the images over loop devices (`lvcreate --activate n` needs no
# device mapper); the loop devices are detached again as soon as each image is written, and on
# exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
# Bump when the images built below change: the cache directory is keyed by it.
IMAGES_VERSION=1
BENCH_DIR=${BENCH_DIR:-/tmp/dmfs-bench-activate}
CACHE_DIR=${CACHE_DIR:-/tmp/dmfs-bench-cache/activate-v$IMAGES_VERSION}
REPS=${REPS:-7}
RUNTIME=${RUNTIME:-5}
ROUNDS=${ROUNDS:-5}
FIO_SIZE=${FIO_SIZE:-1000M}
RESULTS=${RESULTS:-$ROOT/benches/results.md}
DMFS_DEFAULT=$ROOT/target/release/dmfs
DMFS=${DMFS:-$DMFS_DEFAULT}
VSLVM_PYPI_VERSION=20260901   # libvslvm-python sdist the fallback vslvmmount is built from
PARTS=128                     # GPT partitions of gpt128.img
PART_SECTORS=128              # each 64 KiB
LVS=1000                      # linear LVs (one extent each) of the VG on lv1000.img
STACK_MIB=1024                # stack.img

MNT=$BENCH_DIR/mnt            # default mount (page-cache mode)
MNT_D=$BENCH_DIR/mnt-direct   # --cache direct
VMNT=$BENCH_DIR/vslvm         # vslvmmount's mount point (read buffered)
VMNT_D=$BENCH_DIR/vslvm-direct   # a second vslvmmount mount (read with O_DIRECT)
LOOPS=()                      # loop devices this run attached
STARTED_DIR=


detach_loop() {   # detach_loop DEV: and forget it
    local i
    losetup -d "$1" 2>/dev/null || true
    for i in "${!LOOPS[@]}"; do [[ ${LOOPS[$i]} == "$1" ]] && unset 'LOOPS[i]'; done
    return 0
}
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    unmount_all
    local l
    for l in "${LOOPS[@]}"; do losetup -d "$l" 2>/dev/null; done
    if awk -v d="$BENCH_DIR/" 'index($2, d) == 1 { f = 1 } END { exit !f }' /proc/mounts; then
        log "something is still mounted under $BENCH_DIR: scratch left in place"
    elif [[ -n $STARTED_DIR && -z ${KEEP:-} ]]; then
        rm -rf "$BENCH_DIR"
    fi
    rm -rf "$CACHE_DIR"/*.tmp "$CACHE_DIR"/*.tmp.d 2>/dev/null
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- tools ------------------------------------------------------------------------------------
if [[ -z ${NO_BUILD:-} && $DMFS == "$DMFS_DEFAULT" ]]; then
    log "building release dmfs"
    (cd "$ROOT" && cargo build --release --quiet)
fi
need_pkg fio fio
need_pkg sfdisk fdisk
need_pkg lvcreate lvm2
need_pkg python3 python3
export LVM_SUPPRESS_FD_WARNINGS=1

# ---- images (cached) --------------------------------------------------------------------------
mkdir -p "$CACHE_DIR"
attach() {   # attach FILE [losetup args]: the loop device in $dev, remembered for the trap
    local f=$1; shift
    dev=$(losetup --show -f "$@" "$f")
    LOOPS+=("$dev")
}
# lvm DEV CMD ARGS...: an LVM command that sees DEV only and leaves nothing on the host (no
# backup or archive files, no devices file, no hints, no device mapper, no udev).
lvm_on() {
    local dev=$1 cmd=$2; shift 2
    "$cmd" --driverloaded n --config "devices { filter=[\"a|^$dev\$|\",\"r|.*|\"]
        use_devicesfile=0 hints=\"none\" obtain_device_list_from_udev=0 }
        activation { udev_sync=0 udev_rules=0 } backup { backup=0 archive=0 }" "$@" 2>&1 |
        { grep -v -e 'WARNING: \(Activation disabled\|Logical volume .* not zeroed\|This metadata update is NOT backed up\)' \
              -e 'device-mapper\|libdevmapper\|/dev/mapper/control' || true; } >&2
    return "${PIPESTATUS[0]}"
}
lvm_value() {   # lvm_value DEV CMD ARGS...: one value, no headings, no unit suffix
    local dev=$1 cmd=$2; shift 2
    "$cmd" --driverloaded n --config "devices { filter=[\"a|^$dev\$|\",\"r|.*|\"]
        use_devicesfile=0 hints=\"none\" obtain_device_list_from_udev=0 }" \
        --noheadings --nosuffix --units s "$@" 2>/dev/null | tr -d ' '
}

GPT_IMG=$CACHE_DIR/gpt128.img
if [[ ! -e $GPT_IMG ]]; then
    log "making gpt128.img ($PARTS GPT partitions of $PART_SECTORS sectors)"
    rm -f "$GPT_IMG.tmp"
    truncate -s $(( (2048 + PARTS * PART_SECTORS + 2048) * 512 )) "$GPT_IMG.tmp"
    { echo "label: gpt"
      for i in $(seq 0 $((PARTS - 1))); do
          echo "start=$((2048 + i * PART_SECTORS)), size=$PART_SECTORS"
      done; } | sfdisk -q --no-reread --no-tell-kernel "$GPT_IMG.tmp" >/dev/null
    n=$(sfdisk -J "$GPT_IMG.tmp" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["partitiontable"]["partitions"]))')
    [[ $n == "$PARTS" ]] || { echo "sfdisk made $n partitions, not $PARTS" >&2; exit 1; }
    mv "$GPT_IMG.tmp" "$GPT_IMG"
fi

LV_IMG=$CACHE_DIR/lv1000.img
LV_VG=benchlvs
if [[ ! -e $LV_IMG ]]; then
    # One PV over the whole (sparse) image, LVM's default 4 MiB extents, a metadata area large
    # enough for the VG's text; one LV made by lvcreate, its stanza (as LVM wrote it) copied
    # to lv2..lvN on the next extents, and the VG restored from that file with vgcfgrestore, so
    # that LVM itself writes the metadata (a thousand lvcreates take minutes).
    log "making lv1000.img (VG $LV_VG with $LVS linear LVs)"
    rm -f "$LV_IMG.tmp"
    truncate -s $(( LVS * 4 + 64 ))M "$LV_IMG.tmp"
    attach "$LV_IMG.tmp"
    lvm_on "$dev" pvcreate -q --metadatasize 4m "$dev"
    lvm_on "$dev" vgcreate -q "$LV_VG" "$dev"
    lvm_on "$dev" lvcreate -q --activate n --zero n -n lv1 -l 1 "$LV_VG"
    mkdir -p "$CACHE_DIR/lv1000.tmp.d"
    lvm_on "$dev" vgcfgbackup -q -f "$CACHE_DIR/lv1000.tmp.d/one.vg" "$LV_VG"
    python3 - "$CACHE_DIR/lv1000.tmp.d/one.vg" "$CACHE_DIR/lv1000.tmp.d/all.vg" "$LVS" <<'EOF'
import random, re, sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
text = open(src).read()
m = re.search(r"^\t\tlv1 \{\n.*?^\t\t\}\n", text, re.S | re.M)
if not m:
    sys.exit("no lv1 stanza in the backup")
stanza = m.group(0)
rng = random.Random(1000)
chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
def lvid():
    s = "".join(rng.choice(chars) for _ in range(32))
    parts, at = [], 0
    for w in (6, 4, 4, 4, 4, 4, 6):
        parts.append(s[at:at + w]); at += w
    return "-".join(parts)
more = []
for i in range(2, n + 1):
    s = stanza.replace("\t\tlv1 {", f"\t\tlv{i} {{", 1)
    s = re.sub(r'id = "[^"]*"', f'id = "{lvid()}"', s, count=1)
    s, k = re.subn(r'"pv0", 0\b', f'"pv0", {i - 1}', s)
    if k != 1:
        sys.exit("the lv1 stanza does not map pv0 extent 0")
    more.append(s)
open(dst, "w").write(text[:m.end()] + "".join(more) + text[m.end():])
EOF
    lvm_on "$dev" vgcfgrestore -q -f "$CACHE_DIR/lv1000.tmp.d/all.vg" "$LV_VG"
    n=$(lvm_value "$dev" lvs -o lv_name "$LV_VG" | wc -l)
    [[ $n == "$LVS" ]] || { echo "lvs counts $n LVs in $LV_VG, not $LVS" >&2; exit 1; }
    detach_loop "$dev"
    rm -rf "$CACHE_DIR/lv1000.tmp.d"
    mv "$LV_IMG.tmp" "$LV_IMG"
fi

STACK_IMG=$CACHE_DIR/stack.img
STACK_VG=benchstack
STACK_ENV=$CACHE_DIR/stack.env
if [[ ! -e $STACK_IMG || ! -e $STACK_ENV ]]; then
    # Random data, so that no read is of a hole; then the partition table, and LVM over the
    # partition's bytes (a loop device with an offset and a size limit: no partition scan).
    log "making stack.img ($STACK_MIB MiB: GPT, one partition, PV, VG $STACK_VG, LV data)"
    rm -f "$STACK_IMG.tmp" "$STACK_ENV"
    head -c ${STACK_MIB}M /dev/urandom > "$STACK_IMG.tmp"
    echo "label: gpt
start=2048, type=E6D6D379-F507-44C2-A23C-238F2A3DF928" |
        sfdisk -q --no-reread --no-tell-kernel "$STACK_IMG.tmp" >/dev/null
    read -r part_start part_size < <(sfdisk -J "$STACK_IMG.tmp" | python3 -c '
import json, sys
p = json.load(sys.stdin)["partitiontable"]["partitions"][0]
print(p["start"], p["size"])')
    attach "$STACK_IMG.tmp" -o $((part_start * 512)) --sizelimit $((part_size * 512))
    lvm_on "$dev" pvcreate -q "$dev"
    lvm_on "$dev" vgcreate -q "$STACK_VG" "$dev"
    lvm_on "$dev" lvcreate -q --activate n --zero n -n data -l 100%FREE "$STACK_VG"
    pe_start=$(lvm_value "$dev" pvs -o pe_start "$dev")
    lv_sectors=$(lvm_value "$dev" lvs -o lv_size "$STACK_VG/data")
    seg=$(lvm_value "$dev" lvs -o seg_pe_ranges "$STACK_VG/data")
    [[ $seg == "$dev:0-"* ]] || { echo "LV data does not start at extent 0 ($seg)" >&2; exit 1; }
    detach_loop "$dev"
    printf 'PART_START=%s\nPART_SIZE=%s\nPE_START=%s\nLV_SECTORS=%s\n' \
        "$part_start" "$part_size" "$pe_start" "$lv_sectors" > "$STACK_ENV.tmp"
    mv "$STACK_IMG.tmp" "$STACK_IMG"
    mv "$STACK_ENV.tmp" "$STACK_ENV"
fi
# Set by stack.env (named here so that shellcheck knows them).
PART_START='' PART_SIZE='' PE_START='' LV_SECTORS=''
# shellcheck source=/dev/null
. "$STACK_ENV"
FLAT_START=$((PART_START + PE_START))   # the LV's first sector in the image

# ---- vslvmmount ---------------------------------------------------------------------------------
VSLVM_NOTE=
vslvm_try() {   # vslvm_try BINARY DIR: mounts stack.img's VG on DIR; fails when no LV shows
    local bin=$1 dir=$2 logf
    logf=$BENCH_DIR/vslvmmount-$(basename "$2").log
    mkdir -p "$dir"
    # -v: stays in the foreground (so its pid is known); its verbose output is for errors
    "$bin" -v -o $((PART_START * 512)) "$STACK_IMG" "$dir" < /dev/null > "$logf" 2>&1 &
    local pid=$!
    MOUNT_DIRS+=("$dir")
    MOUNT_PIDS+=("$pid")
    for _ in $(seq 100); do
        [[ -e $dir/lvm1 ]] && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    log "$bin did not mount an LV: $(grep -v '^vslvmmount\|^$' "$logf" | head -3 | tr '\n' ' ')"
    is_mounted "$dir" && umount "$dir"
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    unset 'MOUNT_DIRS[-1]' 'MOUNT_PIDS[-1]'
    return 1
}
vslvm_build() {   # builds vslvmmount from the libvslvm-python sdist into CACHE_DIR; prints it
    local dir=$CACHE_DIR/vslvm-$VSLVM_PYPI_VERSION bin
    bin=$dir/libvslvm_python-$VSLVM_PYPI_VERSION/vslvmtools/vslvmmount
    if [[ ! -x $bin ]]; then
        log "building vslvmmount $VSLVM_PYPI_VERSION from the libvslvm-python sdist"
        [[ -e /usr/include/fuse3/fuse.h ]] || apt-get install -y libfuse3-dev >/dev/null 2>&1 ||
            { apt-get update >/dev/null && apt-get install -y libfuse3-dev >/dev/null; }
        rm -rf "$dir" && mkdir -p "$dir"
        (cd "$dir" &&
         pip download -q --no-deps --no-binary :all: "libvslvm-python==$VSLVM_PYPI_VERSION" &&
         tar xzf "libvslvm_python-$VSLVM_PYPI_VERSION.tar.gz" &&
         cd "libvslvm_python-$VSLVM_PYPI_VERSION" &&
         ./configure --quiet --enable-static --disable-shared --disable-python &&
         make -j"$(nproc)" --quiet) > "$dir/build.log" 2>&1 ||
            { tail -20 "$dir/build.log" >&2; echo "could not build vslvmmount" >&2; exit 1; }
    fi
    echo "$bin"
}

# ---- scratch, mounts ----------------------------------------------------------------------------
if [[ -e $BENCH_DIR ]] && [[ -n $(ls -A "$BENCH_DIR" 2>/dev/null) ]]; then
    if awk -v d="$BENCH_DIR/" 'index($2, d) == 1 { f = 1 } END { exit !f }' /proc/mounts; then
        echo "something under $BENCH_DIR is still mounted from an earlier run" >&2; exit 1
    fi
    rm -rf "$BENCH_DIR"
fi
mkdir -p "$BENCH_DIR" "$MNT" "$MNT_D"
STARTED_DIR=1
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

mount_dmfs "$MNT"
mount_dmfs "$MNT_D" --cache direct

usec() { local t=${EPOCHREALTIME/[.,]/}; echo "$((10#$t))"; }

# ---- 1. activation scale ------------------------------------------------------------------------
ACTRAW=$BENCH_DIR/activate.tsv   # label, devices, activate µs, remove µs (one line per run)
: > "$ACTRAW"
time_activate() {   # time_activate LABEL IMAGE EXPECTED-DEVICES
    local label=$1 img=$2 want=$3 r t0 t1 t2 n out=$BENCH_DIR/activate-$1.out
    for r in $(seq "$REPS"); do
        t0=$(usec)
        "$DMFS" activate --mount "$MNT" "$img" > "$out"
        t1=$(usec)
        n=$(find "$MNT/dev" -mindepth 1 -maxdepth 1 | wc -l)
        [[ $n == "$want" ]] || { echo "$label: $n devices, not $want" >&2; exit 1; }
        # shellcheck disable=SC2046 # one argument per device name
        "$DMFS" remove --mount "$MNT" $(ls "$MNT/dev")
        t2=$(usec)
        [[ -z $(ls "$MNT/dev") ]] || { echo "$label: devices left after remove" >&2; exit 1; }
        printf '%s\t%s\t%s\t%s\n' "$label" "$n" $((t1 - t0)) $((t2 - t1)) >> "$ACTRAW"
        log "$label run $r: activate $(( (t1 - t0) / 1000 )) ms, remove $(( (t2 - t1) / 1000 )) ms"
    done
    echo "   $label: $(tail -1 "$out")" >&2
}
time_activate gpt128 "$GPT_IMG" "$PARTS"
time_activate lv1000 "$LV_IMG" "$LVS"
grep -q "^  $LVS logical volume(s) in volume group \"$LV_VG\" now active$" \
    "$BENCH_DIR/activate-lv1000.out" || { echo "lv1000: unexpected report" >&2; exit 1; }

# ---- 2. stacking: the LV on its partition, the flat device, vslvmmount -----------------------
for m in "$MNT" "$MNT_D"; do
    "$DMFS" activate --mount "$m" "$STACK_IMG" > "$BENCH_DIR/activate-stack.out"
    echo "0 $LV_SECTORS linear $STACK_IMG $FLAT_START" > "$m/ctl/create/flat"
    # Two levels: the LV's table must name the partition device, the partition's the image.
    grep -q " linear $m/dev/stack1 $PE_START\$" "$m/dm/$STACK_VG-data/table" ||
        { echo "$STACK_VG-data is not over $m/dev/stack1: $(cat "$m/dm/$STACK_VG-data/table")" >&2; exit 1; }
    grep -q " linear $STACK_IMG $PART_START\$" "$m/dm/stack1/table" ||
        { echo "stack1 is not over the image: $(cat "$m/dm/stack1/table")" >&2; exit 1; }
    cmp -n 64M "$m/dev/flat" "$m/dev/$STACK_VG-data" ||
        { echo "flat and the LV differ on $m" >&2; exit 1; }
    for d in stack1 "$STACK_VG-data" flat; do
        printf '   %-28s %s\n' "$(basename "$m")/$d" "$(cat "$m/dm/$d/table")" >&2
    done
done

if [[ -n ${VSLVMMOUNT:-} ]]; then
    vslvm_try "$VSLVMMOUNT" "$VMNT" || exit 1
    VSLVM_BIN=$VSLVMMOUNT
    VSLVM_NOTE="\`$VSLVMMOUNT\`, given as VSLVMMOUNT"
else
    need_pkg vslvmmount libvslvm-utils
    if vslvm_try "$(command -v vslvmmount)" "$VMNT"; then
        VSLVM_BIN=$(command -v vslvmmount)
        VSLVM_NOTE="from Debian's libvslvm-utils $(dpkg-query -W -f '${Version}' libvslvm-utils 2>/dev/null)"
    else
        VSLVM_BIN=$(vslvm_build)
        vslvm_try "$VSLVM_BIN" "$VMNT" || exit 1
        VSLVM_NOTE="built from the source of the PyPI package libvslvm-python $VSLVM_PYPI_VERSION
  (libvslvm with its tools); Debian's libvslvm-utils $(dpkg-query -W -f '${Version}' libvslvm-utils 2>/dev/null) mounts no
  logical volume at all (its vslvmmount passes an unset volume group to
  libvslvm_volume_group_get_logical_volume; fixed upstream in 2020)"
    fi
fi
VSLVM_VERSION=$("$VSLVM_BIN" -V 2>&1 | head -1)
# A second mount for the O_DIRECT rows: direct reads of a file drop its cached pages, which
# would turn the buffered rows of the same file into cold reads.
vslvm_try "$VSLVM_BIN" "$VMNT_D" || exit 1
for v in "$VMNT" "$VMNT_D"; do
    cmp -n 64M "$v/lvm1" "$MNT/dev/flat" || { echo "vslvmmount's $v/lvm1 differs from flat" >&2; exit 1; }
done
log "vslvmmount: $VSLVM_VERSION ($VSLVM_BIN), $(awk -v m="$VMNT" '$2 == m { print $3 " " $4 }' /proc/mounts)"

target_file() {
    case $1 in
        flat) echo "$MNT/dev/flat" ;;
        lv) echo "$MNT/dev/$STACK_VG-data" ;;
        flat-direct) echo "$MNT_D/dev/flat" ;;
        lv-direct) echo "$MNT_D/dev/$STACK_VG-data" ;;
        vslvm) echo "$VMNT/lvm1" ;;
        vslvm-direct) echo "$VMNT_D/lvm1" ;;
        native) echo "$STACK_IMG" ;;
        zero-direct) echo "$MNT_D/dev/zero" ;;
    esac
}
# vslvmmount has no cache option: its uncached rows read with O_DIRECT, so that every read is a
# request to it as every read of a --cache direct mount is to dmfs. native reads the LV's bytes
# of the image.
target_args() {
    case $1 in
        vslvm-direct) echo --direct=1 ;;
        native) echo --offset=$((FLAT_START * 512)) ;;
    esac
}

# The ceilings. Page-cache rows: the image itself through the page cache (native): nothing a
# FUSE daemon serves reads faster. --cache direct rows: a zero device of the LV's size, the same
# FUSE path with no data to fetch, so only the copy of every reply that any daemon pays is left.
echo "0 $LV_SECTORS zero" > "$MNT_D/ctl/create/zero"
[[ $(stat -c %s "$MNT_D/dev/zero") -eq $((LV_SECTORS * 512)) ]] ||
    { echo "the zero device is not the LV's size" >&2; exit 1; }

RAND_ENGINE=psync
RAND_DEPTH=(--iodepth=1)
uring_ok=1
for t in flat flat-direct vslvm native zero-direct; do
    fio --name=probe --filename="$(target_file "$t")" --rw=randread --bs=4k --ioengine=io_uring \
        --iodepth=16 --size=16M --runtime=1 --time_based --invalidate=0 --allow_file_create=0 \
        --output-format=json >/dev/null 2>&1 || uring_ok=
done
if [[ -n $uring_ok ]]; then
    RAND_ENGINE=io_uring
    RAND_DEPTH=(--iodepth=16)
fi
log "random read engine: $RAND_ENGINE ${RAND_DEPTH[*]} numjobs=2"

# The image's cached pages are dropped and read in again first: pages cached by writing a file
# (the image was written once) can read markedly slower than pages the kernel read in, which
# would lower the native ceiling and the reads that dmfs makes of the image.
python3 -c 'import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.fsync(fd)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$STACK_IMG"
cat "$STACK_IMG" > /dev/null
# The page-cache rows are measured warm, as in run.sh: one read of each first. This is also
# the earlier open that the re-read row's first job re-reads after.
for t in flat lv vslvm native; do
    skip=0
    [[ $t == native ]] && skip=$((FLAT_START * 512))
    dd if="$(target_file "$t")" of=/dev/null bs=1M iflag=skip_bytes skip="$skip" \
        count="${FIO_SIZE%M}" status=none
done
sync

COMMON=(--size="$FIO_SIZE" --runtime="$RUNTIME" --time_based --invalidate=0 --allow_file_create=0
        --output-format=json)
# The re-read row: one pass in a new open (every fio job opens the file anew) of a file read
# before, its cache left as it is.
REREAD=(--size="$FIO_SIZE" --invalidate=0 --allow_file_create=0 --output-format=json)
FIORAW=$BENCH_DIR/fio.tsv   # target, metric, value (one line per round)
: > "$FIORAW"
run_fio() {   # run_fio TARGET METRIC fio-args...
    local t=$1 m=$2; shift 2
    local out=$BENCH_DIR/fio-$t-$m.json extra
    extra=$(target_args "$t")
    # shellcheck disable=SC2086 # extra is one option or none
    if fio --name="$t-$m" --filename="$(target_file "$t")" $extra "$@" > "$out" 2> "$out.err"; then
        python3 -c '
import json, sys
t, m = sys.argv[1:3]
j = json.load(sys.stdin)["jobs"][0]["read"]
v = j["iops"] if m == "randread" else j["bw_bytes"] / 1e6
print(f"{t}\t{m}\t{v:.1f}")' "$t" "$m" < "$out" | tee -a "$FIORAW" >&2
    else
        log "fio failed: $t $m: $(head -3 "$out.err" | tr '\n' ' ')"
        printf '%s\t%s\tFAIL\n' "$t" "$m" >> "$FIORAW"
    fi
}
LOAD_FIO=$(cut -d' ' -f1-3 /proc/loadavg)
# The targets compared in a row (flat, LV, vslvmmount, the ceiling) run back to back, in an order that
# rotates from round to round, so that a change in the machine's load between jobs falls on
# each of them alike; the ratios are taken within a round.
run_group() {   # run_group ROUND METRIC TARGETS...
    local round=$1 m=$2; shift 2
    local group=("$@") n=$# i t
    for i in $(seq 0 $((n - 1))); do
        t=${group[$(( (i + round) % n ))]}
        if [[ $m == seqread ]]; then
            run_fio "$t" seqread "${COMMON[@]}" --rw=read --bs=1M --ioengine=psync
        elif [[ $m == reread ]]; then
            run_fio "$t" reread "${REREAD[@]}" --rw=read --bs=1M --ioengine=psync
        else
            run_fio "$t" randread "${COMMON[@]}" --rw=randread --bs=4k --ioengine="$RAND_ENGINE" \
                "${RAND_DEPTH[@]}" --numjobs=2 --group_reporting
        fi
    done
}
for round in $(seq "$ROUNDS"); do
    log "fio round $round of $ROUNDS"
    for m in seqread randread; do
        run_group "$round" "$m" flat lv vslvm native
        run_group "$round" "$m" flat-direct lv-direct vslvm-direct zero-direct
    done
    run_group "$round" reread flat lv vslvm native
done
rm "$MNT_D/dev/zero"
[[ ! -e $MNT_D/dev/zero ]] || { echo "the zero device was not removed" >&2; exit 1; }
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
said=$(cat "$BENCH_DIR"/vslvmmount-*.log | grep -v '^vslvmmount\|^$' | head -3 | tr '\n' ' ') || true
[[ -z $said ]] || log "vslvmmount said: $said"

# ---- 3. the section of results.md -----------------------------------------------------------
TABLES=$(python3 - "$ACTRAW" "$FIORAW" "$RAND_ENGINE" <<'EOF'
import statistics, sys
act, fioraw, engine = sys.argv[1:4]
runs = {}
for l in open(act):
    label, n, a, r = l.rstrip("\n").split("\t")
    runs.setdefault(label, []).append((int(n), int(a), int(r)))
print("| activation | devices | `dmfs activate`, ms (median) | every run, ms | per device, µs | `dmfs remove` of them all, ms (median) |")
print("| --- | --- | --- | --- | --- | --- |")
names = {"gpt128": "image with 128 GPT partitions", "lv1000": "image with a VG of 1,000 linear LVs"}
for label in ("gpt128", "lv1000"):
    rs = runs[label]
    n = rs[0][0]
    a = statistics.median(x[1] for x in rs) / 1000
    r = statistics.median(x[2] for x in rs) / 1000
    every = " ".join(f"{x[1] / 1000:.1f}" for x in rs)
    print(f"| {names[label]} | {n} | {a:.1f} | {every} | {a * 1000 / n:.0f} | {r:.1f} |")
print()
vals = {}
for l in open(fioraw):
    t, m, x = l.rstrip("\n").split("\t")
    vals.setdefault((t, m), []).append(None if x == "FAIL" else float(x))
def med(t, m):
    xs = vals.get((t, m), [])
    return None if not xs or None in xs else statistics.median(xs)
def num(x):
    return "FAIL" if x is None else f"{x:.0f}"
rand = (f"rand read 4K IOPS ({engine} QD16x2)" if engine == "io_uring"
        else f"rand read 4K IOPS ({engine} 2 jobs)")
def per_round(a, b):
    return [None if x is None or y is None or not x else y / x
            for x, y in zip(vals.get(a, []), vals.get(b, []))]
def rounds(a, b):
    return " ".join("-" if r is None else f"{r:.2f}" for r in per_round(a, b))
def ratio_of_rounds(a, b):
    # The median of the rounds' ratios: the two jobs of a round ran back to back, under much
    # the same load, which medians taken apart do not keep.
    rs = per_round(a, b)
    return "-" if not rs or None in rs else f"{statistics.median(rs):.2f}"
print("| read through | flat | LV on partition | LV / flat | every round, LV / flat | vslvmmount | LV / vslvmmount | every round, LV / vslvmmount | ceiling | ceiling / vslvmmount |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
ceilings = {"native": "native stack.img (page cache)",
            "zero-direct": "dmfs zero device (the FUSE path, no data to fetch)"}
def row(name, sfx, m, ceiling):
    f, lv, v, c = med("flat" + sfx, m), med("lv" + sfx, m), med("vslvm" + sfx, m), med(ceiling, m)
    fl, lk, vk, ck = ("flat" + sfx, m), ("lv" + sfx, m), ("vslvm" + sfx, m), (ceiling, m)
    print(f"| {name} | {num(f)} | {num(lv)} | {ratio_of_rounds(fl, lk)} "
          f"| {rounds(fl, lk)} | {num(v)} | {ratio_of_rounds(vk, lk)} "
          f"| {rounds(vk, lk)} | {num(c)}, {ceilings[ceiling]} | {ratio_of_rounds(vk, ck)} |")
for sfx, mode, vmode, ceiling in (("", "page-cache mount", "buffered", "native"),
                                  ("-direct", "`--cache direct` mount", "O_DIRECT", "zero-direct")):
    for m, name in (("seqread", "seq read 1M MB/s"), ("randread", rand)):
        row(f"{name}, {mode} (vslvmmount {vmode})", sfx, m, ceiling)
row("re-read in a new open, seq 1M MB/s, page-cache mount (vslvmmount buffered)", "", "reread",
    "native")
EOF
)
echo
echo "$TABLES"

COMPLETE=1
grep -qP '\tFAIL$' "$FIORAW" && COMPLETE=
CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
SECTION=$(
    echo "<!-- benches/activate.sh: begin -->"
    echo "## Activation and stacked LVs (\`benches/activate.sh\`)"
    echo
    echo "This section is written by \`benches/activate.sh\` (\`benches/run.sh\` runs it at its end);"
    echo "how to read it: [docs/REFERENCE.md](../docs/REFERENCE.md#performance)."
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "- kernel: $(uname -r); nproc: $(nproc); CPU: ${CPU:-unknown}"
    echo "- load average (1, 5, 15 min): $LOAD_START at the start, $LOAD_FIO before the fio jobs,"
    echo "  $LOAD_END at the end (a shared machine: other work ran beside this one)"
    echo "- $(fio --version); LVM $(lvm version 2>/dev/null | awk '/LVM version/ { print $3 }')"
    echo "- dmfs: $("$DMFS" --version 2>/dev/null | head -1), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || echo ' + uncommitted changes in src/')"
    echo "- command: \`benches/activate.sh\` (REPS=$REPS activations per image, ROUNDS=$ROUNDS rounds of"
    echo "  fio jobs, RUNTIME=${RUNTIME}s per job, fio --size=$FIO_SIZE)"
    echo "- activation: wall clock of the command \`dmfs activate --mount MNT IMG\` (process start to"
    echo "  exit, output to a file) on a default mount, $REPS runs, the devices removed between runs"
    echo "  by one \`dmfs remove NAME...\` (timed too). The images are made with the host's tools:"
    echo "  $PARTS GPT partitions of $PART_SECTORS sectors by sfdisk; one PV over a whole sparse image,"
    echo "  VG $LV_VG with $LVS linear LVs of one 4 MiB extent each, written by LVM itself"
    echo "  (\`lvcreate --activate n\` of lv1, then \`vgcfgrestore\` of LVM's backup file with lv1's"
    echo "  stanza copied to lv2..lv$LVS)"
    echo "- stacking: stack.img, $STACK_MIB MiB of random data, GPT with one partition (sector"
    echo "  $PART_START, $PART_SIZE sectors) holding a PV (data from sector $PE_START of the"
    echo "  partition), VG $STACK_VG, LV data over all its extents ($LV_SECTORS sectors), made by"
    echo "  sfdisk and the LVM tools. \`dmfs activate stack.img\` makes stack1 (\`linear stack.img"
    echo "  $PART_START\`) and $STACK_VG-data (\`linear MNT/dev/stack1 $PE_START\`): every read of the LV"
    echo "  goes through two devices. flat = \`0 $LV_SECTORS linear stack.img $FLAT_START\`, one"
    echo "  device over the same bytes (compared equal first). Page-cache rows: the default mount,"
    echo "  reads through the kernel page cache, warm (each device read once before the rounds);"
    echo "  \`--cache direct\` rows: a mount with \`--cache direct\`, every read a request to dmfs"
    echo "- vslvmmount: $VSLVM_VERSION, $VSLVM_NOTE; \`vslvmmount -o"
    echo "  $((PART_START * 512)) stack.img DIR\` (the partition's offset; it reads the same LV as"
    echo "  DIR/lvm1, compared equal first), mounted twice: it has no cache option, so its"
    echo "  page-cache rows read one mount buffered (the kernel caches what it reads; vslvmmount"
    echo "  does not keep the cache across opens, so each job's first pass reaches it) and its"
    echo "  uncached rows read the other with O_DIRECT (fio --direct=1), each read a request to"
    echo "  it. It serves one request at a time (libfuse's single-threaded fuse_loop)"
    echo "- fio: seq read psync bs=1M 1 job; rand read bs=4k $RAND_ENGINE ${RAND_DEPTH[*]} numjobs=2;"
    echo "  time-based over $FIO_SIZE, --invalidate=0; $ROUNDS rounds; in each, the targets of a row"
    echo "  (flat, LV, vslvmmount, the ceiling) run back to back in an order that rotates from round"
    echo "  to round. Values are the medians of the rounds; a ratio is the median of the rounds'"
    echo "  ratios (each of two jobs run back to back), each round's in the next column"
    echo "- ceiling: the most a row could reach, measured in the same rounds and rotation as its"
    echo "  row. Page-cache rows: the same fio job on stack.img itself (over the LV's bytes) through"
    echo "  the page cache, native: nothing served through FUSE reads faster (its cached pages are"
    echo "  dropped and read in again first, as pages cached by writing a file read slower)."
    echo "  \`--cache direct\` rows:"
    echo "  \`0 $LV_SECTORS zero\` on the direct mount, a dmfs zero device (the FUSE path, no data to"
    echo "  fetch): dmfs fills the reply and writes it, which leaves the copy of each reply that every"
    echo "  FUSE daemon pays. ceiling / vslvmmount: the most any daemon could be ahead of vslvmmount"
    echo "  on that row (the median of the rounds' ratios)"
    echo "- re-read in a new open: one pass of $FIO_SIZE (seq read psync bs=1M, not time-based,"
    echo "  --invalidate=0), each job a new open of a file read in an earlier open (the warm-up read,"
    echo "  then the rounds before), as a second \`cp\`, \`sha256sum\` or \`dd\` of it is. dmfs answers"
    echo "  read-only opens with FOPEN_KEEP_CACHE (its coherence keeps that cache true), so the page"
    echo "  cache serves the pass; vslvmmount lets the kernel drop its cache at every open, so every"
    echo "  byte goes to it"
    echo
    echo "$TABLES"
    echo "<!-- benches/activate.sh: end -->"
)
if [[ -n $COMPLETE ]]; then
    echo "$SECTION" > "$BENCH_DIR/section.md"
    write_section activate.sh "$RESULTS" "$BENCH_DIR/section.md"
    log "section written to $RESULTS"
else
    INCOMPLETE=${INCOMPLETE_RESULTS:-/tmp/dmfs-bench-activate.incomplete.md}
    echo "$SECTION" > "$INCOMPLETE"
    log "some rows failed: $RESULTS left as it was; this run's section is in $INCOMPLETE"
    exit 1
fi
