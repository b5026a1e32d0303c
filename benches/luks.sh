#!/usr/bin/env bash
# Benchmark the crypt target on a LUKS1 volume (issue 17, "Speed"), side by side in one run.
#
#   benches/luks.sh               # scratch in /tmp/dmfs-bench-luks, its section of results.md
#   ROUNDS=1 RUNTIME=2 SIZE_MIB=256 RESULTS=/tmp/r.md benches/luks.sh    # a quick check
#
# The volume: luks.img, a LUKS1 volume made by `cryptsetup luksFormat --type luks1` (aes-xts-plain64,
# 512-bit key, PBKDF2 forced to 1000 iterations so that opening it costs nothing) over SIZE_MIB
# MiB of random bytes, so its plaintext is as random as its ciphertext. The rows, all over the
# same bytes of luks.img:
# - crypt: `0 N crypt aes-xts-plain64 KEY 0 luks.img OFFSET`, exactly the table cryptsetup loads
#   for the volume (the volume key from `cryptsetup luksDump --dump-master-key`, the payload
#   offset from luksDump; nothing needs the device mapper): made by `dmfs open` with the
#   passphrase where this dmfs has it (and checked to be that table), else written to ctl/create;
# - linear: `0 N linear luks.img OFFSET`, the same file range without crypt (the issue's goal:
#   crypt at >= 0.5x of it);
# - nbdkit: nbdkit's luks filter over its file plugin, served on a Unix socket, and nbdfuse making
#   that export a file (the passphrase given to nbdkit in a file);
# - luksdemount: libyal's luksdemount with the passphrase; read-only, so read rows only.
# Each on two kinds of row: no suffix = through the page cache (dmfs: the default mount, whose
# read-only opens are cached and whose opens for writing are direct I/O; the peers: buffered
# I/O, as they come), `-direct` = every request to the daemon (dmfs: a `--cache direct` mount;
# the peers: fio --direct=1). The issue's goal for the peers: crypt >= 3x the best of them.
# Before any timing the peers' and the linear device's first and last VERIFY_MIB MiB are
# compared with the crypt device's: each peer's plaintext must be the same bytes, and the
# linear device's (the ciphertext) must differ from them.
#
# fio, as benches/run.sh runs it: seq read and seq write, psync bs=1M, 1 job, time-based over
# FIO_SIZE with --invalidate=0 (seq write on the writable rows only); and, on the rows without a
# suffix, a one-pass read of FIO_SIZE with --invalidate=1, which drops the file's page cache
# when the job starts: there every byte goes through the daemon once, where the time-based read
# serves all but its first pass from the kernel's cache; and a re-read: one pass of FIO_SIZE
# with --invalidate=0 in a new open of a file read just before in an open of its own, as a
# second `cp` or `sha256sum` of it is. ROUNDS rounds, each running every row in turn; the
# median of the rounds is kept, every round's crypt/linear ratio shown. Beside MB/s, the CPU
# time the serving processes (dmfs, nbdkit + nbdfuse, luksdemount) spent per GiB moved.
# The ceilings, in the same rounds: for the reads through the page cache, the same jobs on
# luks.img itself (native, the payload's bytes); for the `--cache direct` read, a dmfs zero
# device of the payload's size on the direct mount (the FUSE path with no data to fetch).
#
# Knobs (environment): BENCH_DIR (scratch), CACHE_DIR (the luksdemount build, kept between runs),
# SIZE_MIB (payload of luks.img; 1024), FIO_SIZE (1000M; at most the payload), RUNTIME (s per
# time-based job; 5), ROUNDS (3), VERIFY_MIB (8), RESULTS (benches/results.md: this script's
# section is replaced, or added at the end; only written when every row ran),
# INCOMPLETE_RESULTS, NO_BUILD=1, DMFS (another dmfs binary; not built), LUKSDEMOUNT (a
# luksdemount binary to use as it is).
#
# luksdemount: Debian's libluksde-utils (20200205) is built without FUSE ("No sub system to mount
# LUKSDE format"), and its libluksde derives a keyslot's key into a 32-byte stack buffer with
# the volume key's length, so a 512-bit key aborts it ("stack smashing detected"). Unless
# LUKSDEMOUNT is set, the script builds luksdemount from the source of the PyPI package
# libluksde-python (the whole libluksde tree with luksdetools, where that buffer holds 64
# bytes; needs libfuse3-dev) into CACHE_DIR, and says in the results which one it measured.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
BENCH_DIR=${BENCH_DIR:-/tmp/dmfs-bench-luks}
CACHE_DIR=${CACHE_DIR:-/tmp/dmfs-bench-cache/luks}
SIZE_MIB=${SIZE_MIB:-1024}
FIO_SIZE=${FIO_SIZE:-1000M}
RUNTIME=${RUNTIME:-5}
ROUNDS=${ROUNDS:-3}
VERIFY_MIB=${VERIFY_MIB:-8}
RESULTS=${RESULTS:-$ROOT/benches/results.md}
DMFS_DEFAULT=$ROOT/target/release/dmfs
DMFS=${DMFS:-$DMFS_DEFAULT}
LUKSDE_PYPI_VERSION=20260902  # libluksde-python sdist the luksdemount is built from
PASSPHRASE=dmfs-bench-17      # the volume's passphrase (a benchmark volume of random bytes)
CIPHER=aes-xts-plain64
KEY_BITS=512

MNT=$BENCH_DIR/mnt            # default mount (page-cache mode)
MNT_D=$BENCH_DIR/mnt-direct   # --cache direct
NBD_FILE=$BENCH_DIR/nbd       # nbdfuse's mount point (a file)
NBD_SOCK=$BENCH_DIR/nbdkit.sock
LMNT=$BENCH_DIR/luksde        # luksdemount's mount point
NBDKIT_PID=
STARTED_DIR=



cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    # Last mounted first: the FUSE daemons exit once their mount is gone.
    unmount_all
    if [[ -n $NBDKIT_PID ]] && kill -0 "$NBDKIT_PID" 2>/dev/null; then
        kill -TERM "$NBDKIT_PID"
        stop_pid "$NBDKIT_PID"
    fi
    if awk -v d="$BENCH_DIR/" 'index($2, d) == 1 { f = 1 } END { exit !f }' /proc/mounts; then
        log "something is still mounted under $BENCH_DIR: scratch left in place"
    elif [[ -n $STARTED_DIR && -z ${KEEP:-} ]]; then
        rm -rf "$BENCH_DIR"
    elif [[ -n $STARTED_DIR ]]; then
        log "KEEP set: scratch left in $BENCH_DIR"
    fi
    rm -rf "$CACHE_DIR"/*.tmp 2>/dev/null
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- 1. tools ---------------------------------------------------------------------------------
if [[ -z ${NO_BUILD:-} && $DMFS == "$DMFS_DEFAULT" ]]; then
    log "building release dmfs"
    (cd "$ROOT" && cargo build --release --quiet)
fi
need_pkg fio fio
need_pkg python3 python3
need_pkg cryptsetup cryptsetup-bin
need_pkg nbdkit nbdkit
need_pkg nbdfuse nbdfuse
if [[ -z ${LUKSDEMOUNT:-} && ! -e /usr/include/fuse3/fuse.h ]]; then
    log "installing libfuse3-dev"
    apt-get install -y libfuse3-dev >/dev/null 2>&1 ||
        { apt-get update >/dev/null && apt-get install -y libfuse3-dev >/dev/null; }
fi

luksdemount_bin() {   # the luksdemount to measure: LUKSDEMOUNT, or one built from PyPI's sdist
    if [[ -n ${LUKSDEMOUNT:-} ]]; then echo "$LUKSDEMOUNT"; return; fi
    local dir=$CACHE_DIR/luksde-$LUKSDE_PYPI_VERSION
    local bin=$dir/libluksde_python-$LUKSDE_PYPI_VERSION/luksdetools/luksdemount
    if [[ ! -x $bin ]]; then
        log "building luksdemount from libluksde-python $LUKSDE_PYPI_VERSION (PyPI sdist) in $dir"
        rm -rf "$dir" && mkdir -p "$dir"
        (cd "$dir" &&
         pip download -q --no-deps --no-binary :all: "libluksde-python==$LUKSDE_PYPI_VERSION" &&
         tar xzf "libluksde_python-$LUKSDE_PYPI_VERSION.tar.gz" &&
         cd "libluksde_python-$LUKSDE_PYPI_VERSION" &&
         ./configure --quiet --enable-static --disable-shared --disable-python &&
         make -j"$(nproc)" --quiet) > "$dir/build.log" 2>&1 ||
            { tail -20 "$dir/build.log" >&2; echo "could not build luksdemount" >&2; exit 1; }
    fi
    echo "$bin"
}
LUKSDE_BIN=$(luksdemount_bin)
[[ -x $LUKSDE_BIN ]] || { echo "no luksdemount at $LUKSDE_BIN" >&2; exit 1; }
if [[ -n ${LUKSDEMOUNT:-} ]]; then
    LUKSDE_NOTE="the binary given in LUKSDEMOUNT ($LUKSDEMOUNT)"
else
    LUKSDE_NOTE="built by this script from PyPI's libluksde-python $LUKSDE_PYPI_VERSION sdist"
    LUKSDE_NOTE+=" (configure --enable-static --disable-shared --disable-python, libfuse3)"
fi
LUKSDE_VERSION=$("$LUKSDE_BIN" -V 2>&1 | sed -n 1p)
NBDKIT_VERSION=$(nbdkit --version | sed -n 1p)
NBDFUSE_VERSION=$(nbdfuse --version 2>&1 | sed -n 1p)
CRYPTSETUP_VERSION=$(cryptsetup --version | awk 'NR == 1 { print $1, $2 }')
FIO_VERSION=$(fio --version)

# ---- 2. scratch, the volume -------------------------------------------------------------------
if [[ -e $BENCH_DIR ]] && [[ -n $(ls -A "$BENCH_DIR" 2>/dev/null) ]]; then
    if awk -v d="$BENCH_DIR/" 'index($2, d) == 1 { f = 1 } END { exit !f }' /proc/mounts; then
        echo "something under $BENCH_DIR is still mounted from an earlier run" >&2; exit 1
    fi
    rm -rf "$BENCH_DIR"
fi
mkdir -p "$BENCH_DIR" "$MNT" "$MNT_D" "$LMNT"
STARTED_DIR=1
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
IMG=$BENCH_DIR/luks.img
PASSFILE=$BENCH_DIR/passphrase
(umask 077 && printf '%s' "$PASSPHRASE" > "$PASSFILE")

log "making luks.img ($SIZE_MIB MiB of random data after a LUKS1 header)"
# The header and keyslots of a 512-bit LUKS1 volume take the first 2 MiB; luksFormat writes
# only those, so the payload keeps the random bytes written here.
head -c $(((SIZE_MIB + 2) * 1048576)) /dev/urandom > "$IMG"
cryptsetup luksFormat --type luks1 --batch-mode --cipher "$CIPHER" --key-size "$KEY_BITS" \
    --hash sha256 --pbkdf-force-iterations 1000 --key-file - "$IMG" < "$PASSFILE"
OFFSET=$(cryptsetup luksDump "$IMG" | awk '/^Payload offset:/ { print $3 }')
SECTORS=$(( $(stat -c %s "$IMG") / 512 - OFFSET ))
# The volume key, in hex as dm-crypt's table holds it: it goes into the crypt table (written to
# ctl/create, or compared with the one dmfs open made) and is never printed.
KEY=$(cryptsetup luksDump --dump-master-key --batch-mode --key-file - "$IMG" < "$PASSFILE" |
      python3 -c '
import re, sys
m = re.search(r"MK dump:((?:\s+[0-9a-f]{2})+)", sys.stdin.read())
print("".join(m.group(1).split()) if m else "")')
[[ ${#KEY} -eq $((KEY_BITS / 4)) ]] || { echo "could not read the volume key of $IMG" >&2; exit 1; }
log "luks.img: payload offset $OFFSET sectors, $SECTORS sectors of payload"
# Every row reads luks.img from the page cache. Its cached pages are dropped (after its writes
# reach the disk) and read in again: pages cached by writing a file can read markedly slower
# than pages the kernel read in, which would lower the native ceiling and every read of the
# image behind the devices. Again before each native job, as the write rows rewrite the image.
recache() {   # recache FILE
    python3 -c 'import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.fsync(fd)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$1"
    cat "$1" > /dev/null
}
recache "$IMG"

# ---- 3. dmfs ----------------------------------------------------------------------------------
masked() { sed -E 's/(crypt [^ ]+ )[0-9a-fA-F]+/\1<key>/'; }
make_devices() {   # make_devices MNT: crypt and linear over the payload of luks.img
    local m=$1
    grep -qw crypt "$m/ctl/targets" || { echo "this dmfs has no crypt target" >&2; exit 1; }
    local table
    table=$(printf '0 %s crypt %s %s 0 %s %s' "$SECTORS" "$CIPHER" "$KEY" "$IMG" "$OFFSET")
    if [[ -n $OPEN ]]; then
        "$DMFS" --mount "$m" open --type luks1 --key-file - "$IMG" crypt < "$PASSFILE"
        # What `dmfs open` made must be the table cryptsetup loads, as written otherwise.
        [[ $(< "$m/dm/crypt/table") == "$table" ]] ||
            { echo "dmfs open made $(masked < "$m/dm/crypt/table"), not $(masked <<< "$table")" >&2; exit 1; }
    else
        echo "$table" > "$m/ctl/create/crypt"
    fi
    printf '0 %s linear %s %s\n' "$SECTORS" "$IMG" "$OFFSET" > "$m/ctl/create/linear"
    for d in crypt linear; do
        printf '   %-18s %s\n' "$(basename "$m")/$d" "$(masked < "$m/dm/$d/table")" >&2
    done
}
# With `dmfs open` (cryptsetup open's counterpart) the crypt device is opened with the
# passphrase, as a user would; without it the table is written to ctl/create.
OPEN=
"$DMFS" open --help >/dev/null 2>&1 && OPEN=1
mount_dmfs "$MNT"
make_devices "$MNT"
mount_dmfs "$MNT_D" --cache direct
make_devices "$MNT_D"
# The ceiling of the --cache direct read row: a zero device of the payload's size, the same FUSE
# path with no data to fetch (dmfs fills the reply and writes it: the copy of each reply that
# every FUSE daemon pays is left).
echo "0 $SECTORS zero" > "$MNT_D/ctl/create/zero"

# ---- 4. the peers -----------------------------------------------------------------------------
log "starting nbdkit (luks filter over the file plugin) on $NBD_SOCK"
nbdkit -f -U "$NBD_SOCK" --filter=luks file file="$IMG" passphrase=+"$PASSFILE" \
    > "$BENCH_DIR/nbdkit.log" 2>&1 &
NBDKIT_PID=$!
for _ in $(seq 100); do
    [[ -S $NBD_SOCK ]] && break
    kill -0 "$NBDKIT_PID" 2>/dev/null || { cat "$BENCH_DIR/nbdkit.log" >&2; echo "nbdkit exited" >&2; exit 1; }
    sleep 0.1
done
[[ -S $NBD_SOCK ]] || { echo "nbdkit never made $NBD_SOCK" >&2; exit 1; }
log "mounting nbdfuse on $NBD_FILE"
touch "$NBD_FILE"
nbdfuse "$NBD_FILE" --unix "$NBD_SOCK" > "$BENCH_DIR/nbdfuse.log" 2>&1 &
MOUNT_DIRS+=("$NBD_FILE")
MOUNT_PIDS+=($!)
for _ in $(seq 100); do
    is_mounted "$NBD_FILE" && break
    kill -0 "$!" 2>/dev/null || break
    sleep 0.1
done
is_mounted "$NBD_FILE" || { cat "$BENCH_DIR/nbdfuse.log" >&2; echo "nbdfuse never mounted" >&2; exit 1; }

log "mounting luksdemount on $LMNT"
# -v keeps it in the foreground (so its pid is known); its per-request messages are compiled
# in only with debug output, which this build has not.
"$LUKSDE_BIN" -v -p "$PASSPHRASE" "$IMG" "$LMNT" > "$BENCH_DIR/luksdemount.log" 2>&1 &
MOUNT_DIRS+=("$LMNT")
MOUNT_PIDS+=($!)
for _ in $(seq 100); do
    is_mounted "$LMNT" && [[ -e $LMNT/luksde1 ]] && break
    kill -0 "$!" 2>/dev/null || break
    sleep 0.1
done
[[ -e $LMNT/luksde1 ]] || { cat "$BENCH_DIR/luksdemount.log" >&2; echo "luksdemount never mounted" >&2; exit 1; }

DMFS_PID=${MOUNT_PIDS[0]} DMFS_D_PID=${MOUNT_PIDS[1]} NBDFUSE_PID=${MOUNT_PIDS[2]} LUKSDE_PID=${MOUNT_PIDS[3]}
target_file() {
    case $1 in
        crypt|linear) echo "$MNT/dev/$1" ;;
        crypt-direct|linear-direct) echo "$MNT_D/dev/${1%-direct}" ;;
        nbdkit*) echo "$NBD_FILE" ;;
        luksdemount*) echo "$LMNT/luksde1" ;;
        native) echo "$IMG" ;;
        zero-direct) echo "$MNT_D/dev/zero" ;;
    esac
}

server_pids() {   # the processes that serve a row's requests
    case $1 in
        crypt|linear) echo "$DMFS_PID" ;;
        crypt-direct|linear-direct) echo "$DMFS_D_PID" ;;
        nbdkit*) echo "$NBDKIT_PID $NBDFUSE_PID" ;;
        luksdemount*) echo "$LUKSDE_PID" ;;
        zero-direct) echo "$DMFS_D_PID" ;;
        native) ;;   # no server: the kernel's page cache
    esac
}
cpu_ticks() {   # cpu_ticks PID...: user + system time of these processes (all their threads)
    local p sum=0
    for p in "$@"; do
        # Fields 14 and 15 of stat, counted after the command name, which may hold spaces.
        sum=$((sum + $(sed 's/.*) //' "/proc/$p/stat" | awk '{ print $12 + $13 }')))
    done
    echo "$sum"
}
CLK_TCK=$(getconf CLK_TCK)

# ---- 5. the same plaintext everywhere ---------------------------------------------------------
PAYLOAD=$((SECTORS * 512))
for t in crypt-direct nbdkit luksdemount linear zero-direct; do
    size=$(stat -c %s "$(target_file "$t")")
    [[ $size -eq $PAYLOAD ]] || { echo "$t is $size bytes, the payload $PAYLOAD" >&2; exit 1; }
done
VERIFY=$((VERIFY_MIB * 1048576))
for t in crypt-direct nbdkit luksdemount linear; do
    for at in 0 $((PAYLOAD - VERIFY)); do
        if cmp -s -n "$VERIFY" -i "$at" "$(target_file crypt)" "$(target_file "$t")"; then
            same=1
        else
            same=
        fi
        if [[ $t == linear ]]; then
            [[ -z $same ]] || { echo "linear reads the same as crypt at byte $at: nothing was decrypted" >&2; exit 1; }
        else
            [[ -n $same ]] || { echo "$t differs from crypt at byte $at (first $VERIFY_MIB MiB)" >&2; exit 1; }
        fi
    done
done
log "the same plaintext: crypt, crypt-direct, nbdkit and luksdemount agree on the first and last $VERIFY_MIB MiB; linear (the ciphertext) differs"

# ---- 6. fio -----------------------------------------------------------------------------------
# native (luks.img itself, the payload's bytes) and zero-direct are the ceilings: read rows only.
ROWS=(crypt linear nbdkit luksdemount native crypt-direct linear-direct nbdkit-direct
      luksdemount-direct zero-direct)
RAW=$BENCH_DIR/fio-raw.tsv   # row, metric, MB/s (one line per round)
CPURAW=$BENCH_DIR/cpu-raw.tsv   # row, metric, CPU ms of the serving processes per GiB moved
: > "$RAW"
: > "$CPURAW"
COMMON=(--size="$FIO_SIZE" --runtime="$RUNTIME" --time_based --invalidate=0 --fallocate=none
        --create_on_open=0 --allow_file_create=0 --output-format=json --bs=1M --ioengine=psync)
ONEPASS=(--size="$FIO_SIZE" --invalidate=1 --fallocate=none --create_on_open=0
         --allow_file_create=0 --output-format=json --bs=1M --ioengine=psync)
# The re-read row: one pass in a new open (every fio job opens the file anew) of a file read
# in an earlier open just before, its cache left as it is.
REREAD=(--size="$FIO_SIZE" --invalidate=0 --fallocate=none --create_on_open=0
        --allow_file_create=0 --output-format=json --bs=1M --ioengine=psync)
run_fio() {   # run_fio ROW METRIC RW fio-args...
    local t=$1 m=$2 rw=$3; shift 3
    local out=$BENCH_DIR/fio-$t-$m.json extra=() pids c0 c1
    [[ $t == nbdkit-direct || $t == luksdemount-direct ]] && extra=(--direct=1)
    [[ $t == native ]] && extra=(--offset=$((OFFSET * 512)))   # the payload's bytes
    read -r -a pids <<< "$(server_pids "$t")"
    c0=$(cpu_ticks "${pids[@]}")
    if fio --name="$t-$m" --filename="$(target_file "$t")" "$@" "${extra[@]}" > "$out" 2> "$out.err"; then
        c1=$(cpu_ticks "${pids[@]}")
        python3 -c '
import json, sys
t, m, rw, ticks, hz, raw, cpuraw = sys.argv[1:8]
j = json.load(sys.stdin)["jobs"][0][rw]
mbs, gib = j["bw_bytes"] / 1e6, j["io_bytes"] / 2**30
ms = int(ticks) * 1000 / int(hz) / gib
print(f"{t}\t{m}\t{mbs:.1f}", file=open(raw, "a"))
print(f"{t}\t{m}\t{ms:.0f}", file=open(cpuraw, "a"))
print(f"   {t} {m}: {mbs:.0f} MB/s, {ms:.0f} ms CPU of its server per GiB")
' "$t" "$m" "$rw" $((c1 - c0)) "$CLK_TCK" "$RAW" "$CPURAW" < "$out" >&2
    else
        log "fio failed: $t $m: $(head -3 "$out.err" | tr '\n' ' ')"
        printf '%s\t%s\tFAIL\n' "$t" "$m" | tee -a "$CPURAW" >> "$RAW"
    fi
}
LOAD_FIO=$(cut -d' ' -f1-3 /proc/loadavg)
for round in $(seq "$ROUNDS"); do
    log "round $round of $ROUNDS"
    for t in "${ROWS[@]}"; do
        [[ $t == native ]] && recache "$IMG"
        run_fio "$t" seqread read "${COMMON[@]}" --rw=read
        if [[ $t != *-direct ]]; then
            # Read once in an open of its own (the writes of the rows before may have dropped
            # what was cached), then again in a new one.
            skip=0
            [[ $t == native ]] && skip=$((OFFSET * 512))
            dd if="$(target_file "$t")" of=/dev/null bs=1M iflag=skip_bytes skip="$skip" \
                count="${FIO_SIZE%M}" status=none || log "the read before $t's re-read failed"
            run_fio "$t" reread read "${REREAD[@]}" --rw=read
        fi
        [[ $t == native || $t == zero-direct ]] && continue
        [[ $t == *-direct ]] || run_fio "$t" onepass read "${ONEPASS[@]}" --rw=read
        [[ $t == luksdemount* ]] || run_fio "$t" seqwrite write "${COMMON[@]}" --rw=write
    done
done
rm "$MNT_D/dev/zero"
[[ ! -e $MNT_D/dev/zero ]] || { echo "the zero device was not removed" >&2; exit 1; }
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- 7. the section of results.md -------------------------------------------------------------
TABLE=$(python3 - "$RAW" "$CPURAW" <<'EOF'
import statistics, sys
def load(path):
    vals = {}
    for l in open(path):
        t, m, x = l.rstrip("\n").split("\t")
        vals.setdefault((t, m), []).append(None if x == "FAIL" else float(x))
    return vals
vals, cpu = load(sys.argv[1]), load(sys.argv[2])
def med(t, m, vals=vals):
    xs = vals.get((t, m), [])
    return None if not xs or None in xs else statistics.median(xs)
def num(x):
    return "-" if x is None else f"{x:.0f}"
def ratio(a, b):
    return "-" if a is None or not b else f"{a / b:.2f}"
print("| MB/s (median) | crypt | linear | crypt / linear (goal >= 0.5) | every round | nbdkit | luksdemount | crypt / best peer (goal >= 3) | ceiling | ceiling / best peer |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
rows = [("seq read 1M, through the page cache", "", "seqread"),
        ("one-pass read 1M, page cache dropped first", "", "onepass"),
        ("re-read in a new open, seq 1M", "", "reread"),
        ("seq write 1M, page-cache mount / buffered", "", "seqwrite"),
        ("seq read 1M, `--cache direct` / O_DIRECT", "-direct", "seqread"),
        ("seq write 1M, `--cache direct` / O_DIRECT", "-direct", "seqwrite")]
ceilings = {("", "seqread"): ("native", "native luks.img (page cache)"),
            ("", "reread"): ("native", "native luks.img (page cache)"),
            ("-direct", "seqread"): ("zero-direct",
                                     "dmfs zero device (the FUSE path, no data to fetch)")}
for name, sfx, m in rows:
    c, l = med("crypt" + sfx, m), med("linear" + sfx, m)
    n, d = med("nbdkit" + sfx, m), med("luksdemount" + sfx, m)
    every = " ".join("-" if a is None or b is None else f"{a / b:.2f}"
                     for a, b in zip(vals.get(("crypt" + sfx, m), []), vals.get(("linear" + sfx, m), [])))
    peers = [x for x in (n, d) if x is not None]
    best = max(peers) if peers else None
    dcol = "read-only" if m == "seqwrite" else num(d)
    if (sfx, m) in ceilings:
        t, what = ceilings[(sfx, m)]
        top = med(t, m)
        ccol, cratio = f"{num(top)}, {what}", ratio(top, best)
    else:
        ccol, cratio = "-", "-"
    print(f"| {name} | {num(c)} | {num(l)} | {ratio(c, l)} | {every} | {num(n)} | {dcol} | {ratio(c, best)} "
          f"| {ccol} | {cratio} |")
print()
print("| CPU ms of the serving processes per GiB (median) | crypt | linear | crypt - linear | nbdkit (with nbdfuse) | luksdemount |")
print("| --- | --- | --- | --- | --- | --- |")
for name, sfx, m in rows[1:]:
    c, l = med("crypt" + sfx, m, cpu), med("linear" + sfx, m, cpu)
    n, d = med("nbdkit" + sfx, m, cpu), med("luksdemount" + sfx, m, cpu)
    diff = "-" if c is None or l is None else f"{c - l:.0f}"
    dcol = "read-only" if m == "seqwrite" else num(d)
    print(f"| {name} | {num(c)} | {num(l)} | {diff} | {num(n)} | {dcol} |")
EOF
)
echo
echo "$TABLE"

COMPLETE=1
grep -qP '\tFAIL$' "$RAW" && COMPLETE=
CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
AES_FLAGS=$(grep -o -w -E 'v?aes' /proc/cpuinfo | sort -u | paste -sd' ' || true)
SECTION=$(
    echo "<!-- benches/luks.sh: begin -->"
    echo "## dm-crypt: a LUKS1 volume through dmfs and its peers (\`benches/luks.sh\`)"
    echo
    echo "This section is written by \`benches/luks.sh\`; how to read it:"
    echo "[docs/REFERENCE.md](../docs/REFERENCE.md#performance)."
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "- kernel: $(uname -r); nproc: $(nproc); CPU: ${CPU:-unknown} (flags: ${AES_FLAGS:-no aes})"
    echo "- load average (1, 5, 15 min): $LOAD_START at the start, $LOAD_FIO before the fio jobs,"
    echo "  $LOAD_END at the end (a shared machine: other work ran beside this one)"
    echo "- $FIO_VERSION; $CRYPTSETUP_VERSION; $NBDKIT_VERSION; $NBDFUSE_VERSION"
    echo "- dmfs: $("$DMFS" --version 2>/dev/null | sed -n 1p), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || echo ' + uncommitted changes in src/')"
    echo "- command: \`benches/luks.sh\` (ROUNDS=$ROUNDS, RUNTIME=${RUNTIME}s per time-based job, fio"
    echo "  --size=$FIO_SIZE)"
    echo "- the volume: luks.img, \`cryptsetup luksFormat --type luks1 --cipher $CIPHER --key-size"
    echo "  $KEY_BITS --hash sha256 --pbkdf-force-iterations 1000\` over $SIZE_MIB MiB of random bytes"
    echo "  (payload offset $OFFSET sectors), in the page cache (its cached pages dropped and read in"
    echo "  again at the start and before each native job). Every row reads the same bytes of it:"
    echo "  before timing, each peer's first and last $VERIFY_MIB MiB were compared equal to the crypt"
    echo "  device's, and the linear device's (the ciphertext) different"
    if [[ -n $OPEN ]]; then
        echo "- crypt: made by \`dmfs open --type luks1 --key-file - luks.img crypt\` (the passphrase on"
        echo "  standard input); its table was checked to be \`0 $SECTORS crypt $CIPHER <key> 0 luks.img"
        echo "  $OFFSET\`, the one cryptsetup loads (the key from \`cryptsetup luksDump"
        echo "  --dump-master-key\`, the offset from luksDump);"
    else
        echo "- crypt: \`0 $SECTORS crypt $CIPHER <key> 0 luks.img $OFFSET\` written to ctl/create (the"
        echo "  table cryptsetup loads: the key from \`cryptsetup luksDump --dump-master-key\`, the offset"
        echo "  from luksDump; this dmfs has no \`dmfs open\`);"
    fi
    echo "  linear: \`0 $SECTORS linear luks.img $OFFSET\`, the same range without crypt."
    echo "  Rows without a suffix: the default mount (page-cache mode: read-only opens cached by the"
    echo "  kernel, opens for writing direct I/O); \`-direct\`: a \`--cache direct\` mount, every read"
    echo "  and write a request to dmfs"
    echo "- nbdkit: \`nbdkit -U SOCK --filter=luks file file=luks.img passphrase=+FILE\`, made a file by"
    echo "  \`nbdfuse FILE --unix SOCK\` ($(awk -v m="$NBD_FILE" '$2 == m { print $4 }' /proc/mounts));"
    echo "  luksdemount: \`luksdemount -v -p PASSPHRASE luks.img DIR\`, read-only; $LUKSDE_VERSION,"
    echo "  $LUKSDE_NOTE. Debian's libluksde-utils 20200205 cannot be measured: it is built without FUSE,"
    echo "  and its library overflows a 32-byte buffer with a 512-bit key. The peers' rows without a"
    echo "  suffix read and write buffered, as they come; their \`-direct\` rows with fio --direct=1"
    echo "- fio: psync bs=1M 1 job; seq read and seq write time-based over $FIO_SIZE with"
    echo "  --invalidate=0, so that through the page cache all but the first pass of a read come from"
    echo "  the kernel's cache; one-pass read: $FIO_SIZE once with --invalidate=1 (the file's cached"
    echo "  pages dropped when the job starts: every byte read through the daemon once). $ROUNDS"
    echo "  rounds, each running every row in turn, the median kept (every round's crypt / linear in"
    echo "  its own column); best peer = the faster of nbdkit and luksdemount in the same kind of row"
    echo "- re-read in a new open: after an untimed read of $FIO_SIZE in an open of its own, one pass of"
    echo "  $FIO_SIZE (not time-based, --invalidate=0) in a new open, as a second \`cp\` or \`sha256sum\`"
    echo "  of a file is. dmfs answers read-only opens with FOPEN_KEEP_CACHE (its coherence keeps that"
    echo "  cache true), so the page cache serves the pass; nbdfuse and luksdemount let the kernel"
    echo "  drop their cache at every open, so every byte goes to them"
    echo "- ceiling: the most a row could reach, measured in the same rounds. Through the page cache"
    echo "  (seq read, re-read): the same fio job on luks.img itself (the payload's bytes), native:"
    echo "  nothing served through FUSE reads faster. \`--cache direct\` seq read: \`0 $SECTORS zero\`"
    echo "  on the direct mount, a dmfs zero device (the FUSE path, no data to fetch): dmfs fills the"
    echo "  reply and writes it, which leaves the copy of each reply that every FUSE daemon pays."
    echo "  ceiling / best peer: the most any daemon could be ahead of the best peer on that row"
    echo "- CPU: user + system time of the processes serving a row (dmfs's daemon; nbdkit and nbdfuse;"
    echo "  luksdemount) across each fio job, from /proc/PID/stat, per GiB fio moved: on a shared"
    echo "  machine a steadier measure of the work than MB/s. fio's own time (its side of the FUSE"
    echo "  copies) is not in it; the time-based read through the page cache is left out, as the"
    echo "  kernel serves all but its first pass (in the re-read row it serves the whole pass where"
    echo "  the cache was kept)"
    echo
    echo "$TABLE"
    echo "<!-- benches/luks.sh: end -->"
)
if [[ -n $COMPLETE ]]; then
    echo "$SECTION" > "$BENCH_DIR/section.md"
    write_section luks.sh "$RESULTS" "$BENCH_DIR/section.md"
    log "section written to $RESULTS"
else
    INCOMPLETE=${INCOMPLETE_RESULTS:-/tmp/dmfs-bench-luks.incomplete.md}
    echo "$SECTION" > "$INCOMPLETE"
    log "some rows failed: $RESULTS left as it was; this run's section is in $INCOMPLETE"
    exit 1
fi
