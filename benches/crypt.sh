#!/usr/bin/env bash
# The crypt target's speed: the engine on one core (cargo bench --bench crypt), and a crypt
# device beside the same map without crypt through dmfs, sequential 1 MiB reads and writes.
#
#   benches/crypt.sh                 # scratch in /tmp/dmfs-bench-crypt; prints markdown rows
#   BENCH_DIR=/some/dir SIZE_MIB=512 REPS=5 benches/crypt.sh
#
# Devices over one image file (SIZE_MIB, default 256), both from its sector 8: `plain` = linear;
# `crypt` = aes-xts-plain64 with a 512-bit key (cryptsetup's LUKS2 default). Not from sector 0,
# so that reads of `plain` are served by dmfs, not by FUSE passthrough. Each is measured on a
# default mount (page-cache mode: reads through the kernel's page cache, dropped before each
# pass; writes direct) and on a `--cache direct` mount. fio, one pass over the whole device,
# bs=1M, iodepth 1; the median of REPS passes (default 3).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/tmp/dmfs-bench-crypt}
SIZE_MIB=${SIZE_MIB:-256}
REPS=${REPS:-3}
DMFS=$ROOT/target/release/dmfs
KEY=$(printf '%02x' $(seq 1 64))
PIDS=()
MOUNTS=()

log() { printf '== %s\n' "$*" >&2; }
is_mounted() { awk -v m="$1" '$2 == m { f = 1 } END { exit !f }' /proc/mounts; }

cleanup() {
    local i
    for i in "${!MOUNTS[@]}"; do
        is_mounted "${MOUNTS[$i]}" && { umount "${MOUNTS[$i]}" 2>/dev/null || umount -l "${MOUNTS[$i]}"; }
        kill "${PIDS[$i]}" 2>/dev/null || true
        wait "${PIDS[$i]}" 2>/dev/null || true
    done
    rm -rf "$BENCH_DIR"
}
trap cleanup EXIT

[[ -e $BENCH_DIR ]] && { echo "$BENCH_DIR exists; remove it or set BENCH_DIR" >&2; exit 1; }
mkdir -p "$BENCH_DIR"
command -v fio > /dev/null || { echo "fio is needed" >&2; exit 1; }

log "engine (cargo bench --bench crypt)"
(cd "$ROOT" && cargo bench -q --bench crypt 2> /dev/null) | tee "$BENCH_DIR/engine.md"
(cd "$ROOT" && cargo build -q --release)

head -c $((SIZE_MIB << 20)) /dev/urandom > "$BENCH_DIR/a.img"
SECTORS=$((SIZE_MIB * 2048))

mount_dmfs() {
    local dir=$1; shift
    mkdir -p "$dir"
    "$DMFS" mount -f "$dir" "$@" < /dev/null > "$dir.log" 2>&1 &
    PIDS+=($!)
    MOUNTS+=("$dir")
    for _ in $(seq 200); do
        [[ -e $dir/ctl/version ]] && return 0
        sleep 0.05
    done
    cat "$dir.log" >&2
    exit 1
}

# median of the arguments
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# pass FILE rw|read: one fio pass over FILE, MB/s
pass() {
    fio --name=p --filename="$1" --rw="$2" --bs=1M --size="$((SIZE_MIB - 1))M" --ioengine=psync \
        --invalidate=1 --end_fsync=$([[ $2 == write ]] && echo 1 || echo 0) \
        --output-format=terse --terse-version=3 2>/dev/null |
        awk -F';' -v rw="$2" '{ print int((rw == "read" ? $7 : $48) / 1024) }'
}

echo
echo "| dmfs, seq 1 MiB, MB/s (median of $REPS) | plain read | crypt read | crypt/plain | plain write | crypt write | crypt/plain |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for mode in page-cache direct; do
    m=$BENCH_DIR/mnt-$mode
    mount_dmfs "$m" --cache "$mode"
    echo "0 $((SECTORS - 8)) linear $BENCH_DIR/a.img 8" > "$m/ctl/create/plain"
    echo "0 $((SECTORS - 8)) crypt aes-xts-plain64 $KEY 0 $BENCH_DIR/a.img 8" > "$m/ctl/create/crypt"
    row="| --cache $mode"
    for rw in read write; do
        declare -A got=()
        for dev in plain crypt; do
            runs=()
            for _ in $(seq "$REPS"); do runs+=("$(pass "$m/dev/$dev" "$rw")"); done
            got[$dev]=$(median "${runs[@]}")
            log "$mode $rw $dev: ${runs[*]} MB/s"
        done
        ratio=$(awk -v c="${got[crypt]}" -v p="${got[plain]}" 'BEGIN { printf "%.2f", p ? c / p : 0 }')
        row+=" | ${got[plain]} | ${got[crypt]} | $ratio"
        unset got
    done
    echo "$row |"
done
