#!/usr/bin/env bash
# Benchmark dmfs against the native backing file and qemu-storage-daemon's FUSE export.
#
#   benches/run.sh                 # scratch in /tmp/dmfs-bench, results in benches/results.md
#   BENCH_DIR=/some/dir KEEP=1 RUNTIME=10 benches/run.sh
#   RUNTIME=2 FIO_SIZE=256M RESULTS=/tmp/r.md benches/run.sh     # a quick check of the script
#
# Knobs (environment): BENCH_DIR, KEEP=1 (keep the scratch), RUNTIME (s per time-based job),
# FIO_SIZE (region of the time-based jobs and size of the one-pass synced write), SYNC_REPS (runs
# of the synced write, median kept; 3), SNAP_SIZE (256M), SNAP_REPS (rounds of the snapshot
# write passes, each over a fresh snapshot, medians kept; 5), RESULTS (benches/results.md; the
# file is only written when every row ran), READ_AHEAD_KB (passed as --read-ahead-kb to every dmfs
# mount; unset = the daemon's default), NO_BUILD=1 (use target/release/dmfs as it is), DMFS
# (another dmfs binary; not built), INCOMPLETE_RESULTS (where an incomplete run's report goes),
# SKIP_ACTIVATE=1 (do not run benches/activate.sh, which adds its own section to RESULTS after
# this script has written the file).
#
# Targets: native a.img; dmfs devices whole/offset/multi/striped (and passthru) on the default
# mount (page-cache mode); the same maps on a second mount with --cache direct (*-direct); whole
# and striped on a third mount with --cache writeback (*-wb, synced writes only); qsd = the FUSE
# export of a.img by qemu-storage-daemon.
# Metrics: sequential read 1 MiB (MB/s), random read 4 KiB QD16 x 2 jobs (IOPS), sequential
# write 1 MiB (MB/s), all time-based over FIO_SIZE with the page cache warm (--invalidate=0);
# and a one-pass sequential write 1 MiB of FIO_SIZE with --end_fsync=1 (MB/s including the fsync,
# so the data is in the backing file and on its disk when the clock stops).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
BENCH_DIR=${BENCH_DIR:-/tmp/dmfs-bench}
RUNTIME=${RUNTIME:-5}
SIZE_MIB=1024                 # backing image size
FIO_SIZE=${FIO_SIZE:-1000M}   # region fio exercises (fits every target; offset is 1023 MiB)
SYNC_REPS=${SYNC_REPS:-3}     # one-pass synced writes per target; the median is kept
RESULTS=${RESULTS:-$ROOT/benches/results.md}
DMFS_DEFAULT=$ROOT/target/release/dmfs
DMFS=${DMFS:-$DMFS_DEFAULT}   # DMFS=path: measure that binary (no cargo build)

MNT=$BENCH_DIR/mnt            # default mount (page-cache mode)
MNT_D=$BENCH_DIR/mnt-direct   # --cache direct
MNT_W=$BENCH_DIR/mnt-wb       # --cache writeback
QSD_FILE=$BENCH_DIR/qsd-export
QSD_PID=
STARTED_DIR=

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [[ -n $QSD_PID ]] && kill -0 "$QSD_PID" 2>/dev/null; then
        kill -TERM "$QSD_PID"
        for _ in $(seq 50); do kill -0 "$QSD_PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$QSD_PID" 2>/dev/null && kill -KILL "$QSD_PID"
        wait "$QSD_PID" 2>/dev/null
    fi
    is_mounted "$QSD_FILE" && { umount "$QSD_FILE" 2>/dev/null || umount -l "$QSD_FILE"; }
    unmount_all
    if awk -v d="$BENCH_DIR/" 'index($2, d) == 1 { f = 1 } END { exit !f }' /proc/mounts; then
        log "something is still mounted under $BENCH_DIR: scratch left in place"
    elif [[ -n $STARTED_DIR && -z ${KEEP:-} ]]; then
        rm -rf "$BENCH_DIR"
    elif [[ -n $STARTED_DIR ]]; then
        log "KEEP set: scratch left in $BENCH_DIR"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- 1. tools -------------------------------------------------------------------------------
if [[ -z ${NO_BUILD:-} && $DMFS == "$DMFS_DEFAULT" ]]; then
    log "building release dmfs"
    (cd "$ROOT" && cargo build --release --quiet)
fi

if ! command -v fio >/dev/null; then
    log "installing fio"
    apt-get install -y fio >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y fio >/dev/null; }
fi
command -v qemu-storage-daemon >/dev/null || { echo "qemu-storage-daemon not found" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 not found" >&2; exit 1; }
QSD_VERSION=$(qemu-storage-daemon --version | head -1)
FIO_VERSION=$(fio --version)
echo "$QSD_VERSION"
echo "$FIO_VERSION"
# The cache modes (--cache page-cache|direct|writeback): without them only the default mount runs
# and the *-direct and *-wb rows read "not run"; RESULTS is then not written.
CACHE_MODES=
"$DMFS" mount --help 2>/dev/null | grep -q -- '--cache' && CACHE_MODES=1
[[ -n $CACHE_MODES ]] || log "this dmfs has no --cache option: only the default mount is measured"
RA_ARGS=()
if [[ -n ${READ_AHEAD_KB:-} ]]; then
    "$DMFS" mount --help 2>/dev/null | grep -q -- '--read-ahead-kb' ||
        { echo "READ_AHEAD_KB set, but this dmfs has no --read-ahead-kb" >&2; exit 1; }
    RA_ARGS=(--read-ahead-kb "$READ_AHEAD_KB")
fi

# ---- 2. scratch, images, dmfs ---------------------------------------------------------------
if [[ -e $BENCH_DIR ]] && [[ -n $(ls -A "$BENCH_DIR" 2>/dev/null) ]]; then
    if awk -v d="$BENCH_DIR/" 'index($2, d) == 1 { f = 1 } END { exit !f }' /proc/mounts; then
        echo "something under $BENCH_DIR is still mounted from an earlier run" >&2; exit 1
    fi
    rm -rf "$BENCH_DIR"
fi
mkdir -p "$BENCH_DIR" "$MNT" "$MNT_D" "$MNT_W"
STARTED_DIR=1
cd "$BENCH_DIR"

log "making a.img and b.img ($SIZE_MIB MiB each, random data)"
for f in a.img b.img; do
    fallocate -l ${SIZE_MIB}M "$f"
    head -c ${SIZE_MIB}M /dev/urandom | dd of="$f" bs=1M conv=notrunc,fsync status=none
done
cat a.img > /dev/null; cat b.img > /dev/null

SECTORS=$((SIZE_MIB * 2048))     # 512-byte sectors in one image
Q=$((SECTORS / 4))

# make_map MNT NAME: the benchmark's maps, by name
make_map() {
    local m=$1 d=$2
    case $d in
        whole|passthru) echo "0 $SECTORS linear $BENCH_DIR/a.img 0" > "$m/ctl/create/$d" ;;
        offset) echo "0 $((SECTORS - 2048)) linear $BENCH_DIR/a.img 2048" > "$m/ctl/create/$d" ;;
        multi) printf '%s\n' \
                   "0 $Q linear $BENCH_DIR/a.img 0" \
                   "$Q $Q linear $BENCH_DIR/b.img $Q" \
                   "$((2 * Q)) $Q linear $BENCH_DIR/a.img $((2 * Q))" \
                   "$((3 * Q)) $Q linear $BENCH_DIR/b.img $((3 * Q))" > "$m/ctl/create/$d" ;;
        striped) echo "0 $SECTORS striped 2 128 $BENCH_DIR/a.img 0 $BENCH_DIR/b.img 0" \
                     > "$m/ctl/create/$d" ;;
    esac
    # passthru: the whole map, read-only: dmfs hands its read-only opens to the kernel (FUSE
    # passthrough).
    [[ $d == passthru ]] && chmod a-w "$m/dev/passthru"
    printf '   %-22s %s\n' "$(basename "$m")/$d" "$(tr '\n' ';' < "$m/dm/$d/table")" >&2
}

MNT_ARGS=("${RA_ARGS[@]}")                              # the default mount: no --cache
MNT_D_ARGS=(--cache direct "${RA_ARGS[@]}")
MNT_W_ARGS=(--cache writeback "${RA_ARGS[@]}")
mount_dmfs "$MNT" "${MNT_ARGS[@]}"
for d in whole passthru offset multi striped; do make_map "$MNT" "$d"; done
if [[ -n $CACHE_MODES ]]; then
    mount_dmfs "$MNT_D" "${MNT_D_ARGS[@]}"
    for d in whole offset multi striped; do make_map "$MNT_D" "$d"; done
    mount_dmfs "$MNT_W" "${MNT_W_ARGS[@]}"
    for d in whole striped; do make_map "$MNT_W" "$d"; done
fi

# ---- 3. qemu-storage-daemon FUSE export -----------------------------------------------------
log "starting qemu-storage-daemon FUSE export on $QSD_FILE"
touch "$QSD_FILE"
qemu-storage-daemon \
    --blockdev driver=file,node-name=f,filename="$BENCH_DIR/a.img" \
    --export type=fuse,id=e,node-name=f,mountpoint="$QSD_FILE",writable=on \
    > "$BENCH_DIR/qsd.log" 2>&1 &
QSD_PID=$!
for _ in $(seq 100); do
    is_mounted "$QSD_FILE" && break
    kill -0 "$QSD_PID" 2>/dev/null || { cat "$BENCH_DIR/qsd.log" >&2; echo "qsd exited" >&2; exit 1; }
    sleep 0.1
done
is_mounted "$QSD_FILE" || { cat "$BENCH_DIR/qsd.log" >&2; echo "qsd export never mounted" >&2; exit 1; }

# ---- 4. fio -----------------------------------------------------------------------------------
# Rows: NAME on the default mount, NAME-direct on the --cache direct mount, NAME-wb on the
# --cache writeback mount. The time-based metrics (seqread, randread, seqwrite) run on every row
# but the -wb ones; the one-pass synced write (seqwrite_sync) on SYNC_ROWS.
ROWS=(native passthru whole offset multi striped
      whole-direct offset-direct multi-direct striped-direct whole-wb striped-wb qsd)
TIMED_ROWS=(native passthru whole offset multi striped
            whole-direct offset-direct multi-direct striped-direct qsd)
SYNC_ROWS=(native whole striped whole-direct striped-direct whole-wb striped-wb qsd)
target_file() {
    case $1 in
        native) echo "$BENCH_DIR/a.img" ;;
        qsd)    echo "$QSD_FILE" ;;
        *-direct) echo "$MNT_D/dev/${1%-direct}" ;;
        *-wb)   echo "$MNT_W/dev/${1%-wb}" ;;
        *)      echo "$MNT/dev/$1" ;;
    esac
}
row_runs() { [[ -n $CACHE_MODES ]] || [[ $1 != *-direct && $1 != *-wb ]]; }

# What each target's page cache does (cache-probe.py; before any fio job, so nothing is cached
# yet): pages resident after a read through a read-only open, and after a read-write open.
PROBES=
for t in whole whole-direct whole-wb qsd; do
    row_runs "$t" || continue
    res=$(python3 "$ROOT/benches/cache-probe.py" "$(target_file "$t")" 2>/dev/null) || res="probe-failed probe-failed"
    PROBES+="${PROBES:+, }$t ${res/ / \/ }"
done
log "cache probe (resident after read-only / read-write open): $PROBES"

COMMON=(--size="$FIO_SIZE" --runtime="$RUNTIME" --time_based --invalidate=0 --fallocate=none
        --create_on_open=0 --allow_file_create=0 --output-format=json)
# One pass over FIO_SIZE, then fsync: every byte written once and on the backing file's disk
# when the clock stops (fio counts the end_fsync in the job's time).
SYNCED=(--size="$FIO_SIZE" --invalidate=0 --fallocate=none --create_on_open=0
        --allow_file_create=0 --output-format=json --end_fsync=1)

# Random read: io_uring (buffered; the kernel hands reads that would block to io-wq workers, so
# 16 are in flight per job) when it works on FUSE here, else psync (one in flight per job).
RAND_ENGINE=psync
RAND_DEPTH=(--iodepth=1)
probe_files=("$MNT/dev/whole" "$QSD_FILE")
[[ -n $CACHE_MODES ]] && probe_files+=("$MNT_D/dev/whole")
uring_ok=1
for f in "${probe_files[@]}"; do
    fio --name=probe --filename="$f" --rw=randread --bs=4k --ioengine=io_uring \
        --iodepth=16 --size=16M --runtime=1 --time_based --invalidate=0 --allow_file_create=0 \
        --output-format=json >/dev/null 2>&1 || uring_ok=
done
if [[ -n $uring_ok ]]; then
    RAND_ENGINE=io_uring
    RAND_DEPTH=(--iodepth=16)
fi
log "random read engine: $RAND_ENGINE ${RAND_DEPTH[*]} numjobs=2"

RAW=$BENCH_DIR/fio-raw.tsv
: > "$RAW"
parse() {   # parse TARGET METRIC RW(read|write) KIND(bw|iops) < fio json
    python3 -c '
import json, sys
t, m, rw, kind = sys.argv[1:5]
d = json.load(sys.stdin)
j = d["jobs"][0][rw]
v = j["bw_bytes"] / 1e6 if kind == "bw" else j["iops"]
print(f"{t}\t{m}\t{v:.1f}")
' "$@"
}
run_fio() {   # run_fio TARGET METRIC RW KIND fio-args...
    local t=$1 m=$2 rw=$3 kind=$4; shift 4
    local out=$BENCH_DIR/fio-$t-$m.json
    if fio --name="$t-$m" --filename="$(target_file "$t")" "$@" > "$out" 2> "$out.err"; then
        parse "$t" "$m" "$rw" "$kind" < "$out" | tee -a "$RAW" >&2
    else
        log "fio failed: $t $m: $(head -3 "$out.err" | tr '\n' ' ')"
        printf '%s\t%s\tFAIL\n' "$t" "$m" >> "$RAW"
    fi
}
median_of() {   # median_of FILE TARGET METRIC: replaces those lines of FILE by their median
    python3 - "$1" "$2" "$3" <<'EOF'
import statistics, sys
raw, t, m = sys.argv[1:4]
lines = [l.rstrip("\n").split("\t") for l in open(raw)]
mine = [x for a, b, x in lines if (a, b) == (t, m)]
rest = [l for l in lines if (l[0], l[1]) != (t, m)]
nums = [float(x) for x in mine if x not in ("FAIL", "NA")]
v = "FAIL" if len(nums) < len(mine) or not nums else f"{statistics.median(nums):.1f}"
with open(raw, "w") as f:
    for l in rest + [[t, m, v]]:
        f.write("\t".join(l) + "\n")
if len(nums) > 1:
    print(f"   {t} {m}: runs {' '.join(f'{n:.0f}' for n in nums)}, median {v}", file=sys.stderr)
EOF
}

for t in "${ROWS[@]}"; do
    if ! row_runs "$t"; then
        for m in seqread randread seqwrite seqwrite_sync; do printf '%s\t%s\tNOTRUN\n' "$t" "$m" >> "$RAW"; done
        continue
    fi
    log "fio on $t ($(target_file "$t"))"
    if [[ " ${TIMED_ROWS[*]} " == *" $t "* ]]; then
        run_fio "$t" seqread read bw "${COMMON[@]}" --rw=read --bs=1M --ioengine=psync
        run_fio "$t" randread read iops "${COMMON[@]}" --rw=randread --bs=4k \
            --ioengine="$RAND_ENGINE" "${RAND_DEPTH[@]}" --numjobs=2 --group_reporting
        if [[ $t == passthru ]]; then
            printf '%s\t%s\tNA\n' "$t" seqwrite >> "$RAW"   # a read-only device
        else
            run_fio "$t" seqwrite write bw "${COMMON[@]}" --rw=write --bs=1M --ioengine=psync
        fi
    else
        for m in seqread randread seqwrite; do printf '%s\t%s\tNA\n' "$t" "$m" >> "$RAW"; done
    fi
    if [[ " ${SYNC_ROWS[*]} " == *" $t "* ]]; then
        for _ in $(seq "$SYNC_REPS"); do
            run_fio "$t" seqwrite_sync write bw "${SYNCED[@]}" --rw=write --bs=1M --ioengine=psync
        done
        median_of "$RAW" "$t" seqwrite_sync
    else
        printf '%s\t%s\tNA\n' "$t" seqwrite_sync >> "$RAW"
    fi
done

# ---- 5. table ---------------------------------------------------------------------------------
TABLE=$(python3 - "$RAW" "$RAND_ENGINE" "${ROWS[@]}" <<'EOF'
import sys
raw, engine, order = sys.argv[1], sys.argv[2], sys.argv[3:]
metrics = [("seqread", "seq read 1M MB/s"),
           ("randread", f"rand read 4K IOPS ({engine} QD16x2)" if engine == "io_uring"
                        else f"rand read 4K IOPS ({engine} 2 jobs)"),
           ("seqwrite", "seq write 1M MB/s"),
           ("seqwrite_sync", "seq write 1M one pass + end_fsync MB/s")]
v = {}
for line in open(raw):
    t, m, x = line.rstrip("\n").split("\t")
    v[(t, m)] = x if x in ("NA", "NOTRUN") else None if x == "FAIL" else float(x)
def ratio(a, b):
    ok = lambda x: isinstance(x, float) and x
    return f"{a / b:.2f}" if ok(a) and ok(b) else "-"
def num(a):
    if a == "NA":
        return "n/a"
    if a == "NOTRUN":
        return "not run"
    return "FAIL" if a is None else (f"{a:.0f}" if a >= 100 else f"{a:.1f}")
head = ["target"]
for _, name in metrics:
    head += [name, "vs native", "vs qsd"]
rows = [head, ["---"] * len(head)]
for t in order:
    r = [t]
    for m, _ in metrics:
        a = v.get((t, m))
        r += [num(a), ratio(a, v.get(("native", m))), ratio(a, v.get(("qsd", m)))]
    rows.append(r)
for r in rows:
    print("| " + " | ".join(r) + " |")
EOF
)
# ---- 5b. snapshots ------------------------------------------------------------------------
# A persistent snapshot (16 KiB chunks, the kernel's default) with a sparse COW file that holds
# every chunk; writes go through the snapshot-origin device. One pass over the same region
# each: a plain write through dmfs (a linear device over the same image), the first write
# through the origin (every chunk copied out and committed first), a second write (nothing to
# copy); then reads of the snapshot.
SNAP_SIZE=${SNAP_SIZE:-256M}
SNAP_REPS=${SNAP_REPS:-5}
log "snapshot rows ($SNAP_SIZE region, $SNAP_REPS rounds, medians kept)"
ONEPASS=(--size="$SNAP_SIZE" --invalidate=0 --fallocate=none --create_on_open=0
         --allow_file_create=0 --output-format=json --rw=write --bs=1M --ioengine=psync)
SNAPRAW=$BENCH_DIR/fio-snap.tsv
: > "$SNAPRAW"
snap_fio() {   # snap_fio LABEL FILE RW KIND fio-args...
    local label=$1 file=$2 rw=$3 kind=$4; shift 4
    local out=$BENCH_DIR/fio-snap-$label.json
    if fio --name="$label" --filename="$file" "$@" > "$out" 2> "$out.err"; then
        parse "$label" x "$rw" "$kind" < "$out" | tee -a "$SNAPRAW" >&2
    else
        log "fio failed: $label: $(head -3 "$out.err" | tr '\n' ' ')"
        printf '%s\tx\tFAIL\n' "$label" >> "$SNAPRAW"
    fi
}
remove_dev() {   # remove_dev MNT NAME: retried while a just-closed handle's release is on its way
    for _ in $(seq 100); do
        [[ -e $1/dev/$2 ]] || return 0
        echo "$2" > "$1/ctl/remove" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "could not remove $1/dev/$2" >&2; return 1
}
# snap_round SUFFIX MNT PLAIN_DEV IMAGE COW SECTORS [fio-args...]: one round of the three passes
# (labels plain$SUFFIX, first$SUFFIX, later$SUFFIX) over a fresh snapshot of IMAGE (devices
# sorigin and snap, replacing the ones before), each pass starting with the disk quiet (the
# rows before leave gigabytes of dirty pages whose writeback would otherwise slow one pass's
# flushes and not another's).
snap_round() {
    local sfx=$1 m=$2 plain=$3 img=$4 cow=$5 sectors=$6; shift 6
    remove_dev "$m" snap
    remove_dev "$m" sorigin
    rm -f "$cow"
    truncate -s $((sectors * 512 + 64 * 1048576)) "$cow"
    echo "0 $sectors snapshot-origin $img" > "$m/ctl/create/sorigin"
    echo "0 $sectors snapshot $img $cow P 32" > "$m/ctl/create/snap"
    sync
    snap_fio "plain$sfx" "$m/dev/$plain" write bw "${ONEPASS[@]}" "$@"
    sync
    snap_fio "first$sfx" "$m/dev/sorigin" write bw "${ONEPASS[@]}" "$@"
    sync
    snap_fio "later$sfx" "$m/dev/sorigin" write bw "${ONEPASS[@]}" "$@"
    echo "   $(basename "$m") snap status after the passes$sfx: $(cat "$m/dm/snap/status")" >&2
}
# The same three passes on the writeback mount, each with --end_fsync=1 (without it they would
# stop in the kernel's cache): the kernel sends the writes to dmfs in the background, several
# at once, so one metadata commit serves several requests. Over c.img, an image no other
# mount snapshots.
if [[ -n $CACHE_MODES ]]; then
    head -c "$SNAP_SIZE" /dev/urandom > "$BENCH_DIR/c.img"
    C_SECTORS=$(( $(stat -c %s "$BENCH_DIR/c.img") / 512 ))
    echo "0 $C_SECTORS linear $BENCH_DIR/c.img 0" > "$MNT_W/ctl/create/cplain"
fi
for round in $(seq "$SNAP_REPS"); do
    log "snapshot round $round"
    # With the fsync, every pass ends with its data on the disk: the plain write's too.
    snap_round -fsync "$MNT" whole "$BENCH_DIR/a.img" "$BENCH_DIR/cow.img" "$SECTORS" --end_fsync=1
    snap_round "" "$MNT" whole "$BENCH_DIR/a.img" "$BENCH_DIR/cow.img" "$SECTORS"
    if [[ -n $CACHE_MODES ]]; then
        snap_round -wb "$MNT_W" cplain "$BENCH_DIR/c.img" "$BENCH_DIR/cow-wb.img" "$C_SECTORS" \
            --end_fsync=1
    fi
done
SNAPRUNS=$BENCH_DIR/fio-snap-runs.tsv
cp "$SNAPRAW" "$SNAPRUNS"   # every round's figures, for the table; SNAPRAW keeps the medians
for l in plain first later plain-fsync first-fsync later-fsync; do median_of "$SNAPRAW" "$l" x; done
for l in plain-wb first-wb later-wb; do
    if [[ -n $CACHE_MODES ]]; then median_of "$SNAPRAW" "$l" x; else printf '%s\tx\tNOTRUN\n' "$l" >> "$SNAPRAW"; fi
done
snap_fio snapseq "$MNT/dev/snap" read bw "${COMMON[@]}" --rw=read --bs=1M --ioengine=psync
snap_fio snaprand "$MNT/dev/snap" read iops "${COMMON[@]}" --rw=randread --bs=4k \
    --ioengine="$RAND_ENGINE" "${RAND_DEPTH[@]}" --numjobs=2 --group_reporting
SNAP_TABLE=$(python3 - "$SNAPRAW" "$RAW" "$SNAPRUNS" <<'EOF2'
import sys
snap = {l.split("\t")[0]: l.rstrip("\n").split("\t")[2] for l in open(sys.argv[1])}
raw = {}
for l in open(sys.argv[2]):
    t, m, x = l.rstrip("\n").split("\t")
    raw[(t, m)] = x
runs = {}
for l in open(sys.argv[3]):
    label, _, x = l.rstrip("\n").split("\t")
    runs.setdefault(label, []).append(x)
def f(x):
    return None if x in (None, "FAIL", "NOTRUN") else float(x)
def ratio(a, b):
    return "-" if a is None or not b else f"{a / b:.2f}"
# Writes: MB/s, and the time a pass took against the plain pass's (the issue's "at most 2.5x a
# plain write"); reads: against native and qsd.
writes = [
    ("plain write through dmfs (linear), one pass", "plain", "plain"),
    ("origin first write (copy-out + commit), one pass", "first", "plain"),
    ("origin later write (chunks already saved), one pass", "later", "plain"),
    ("plain write, one pass + end_fsync", "plain-fsync", "plain-fsync"),
    ("origin first write, one pass + end_fsync", "first-fsync", "plain-fsync"),
    ("origin later write, one pass + end_fsync", "later-fsync", "plain-fsync"),
    ("writeback mount: plain write, one pass + end_fsync", "plain-wb", "plain-wb"),
    ("writeback mount: origin first write, one pass + end_fsync", "first-wb", "plain-wb"),
    ("writeback mount: origin later write, one pass + end_fsync", "later-wb", "plain-wb"),
]
print("| snapshot writes | MB/s (median) | time vs the plain pass | every round, MB/s |")
print("| --- | --- | --- | --- |")
for name, label, base in writes:
    v, b = f(snap.get(label)), f(snap.get(base))
    val = "FAIL" if v is None else f"{v:.0f}"
    times = "-" if v is None or b is None else f"{b / v:.2f}x"
    every = " ".join("FAIL" if f(x) is None else f"{f(x):.0f}" for x in runs.get(label, []))
    print(f"| {name} | {val} | {times} | {every or '-'} |")
print()
reads = [
    ("snapshot seq read 1M, MB/s", f(snap.get("snapseq")), f(raw.get(("native", "seqread"))),
     f(raw.get(("qsd", "seqread")))),
    ("snapshot rand read 4K, IOPS", f(snap.get("snaprand")), f(raw.get(("native", "randread"))),
     f(raw.get(("qsd", "randread")))),
]
print("| snapshot reads | value | vs native | vs qsd |")
print("| --- | --- | --- | --- |")
for name, v, base, q in reads:
    val = "FAIL" if v is None else f"{v:.0f}"
    print(f"| {name} | {val} | {ratio(v, base)} | {ratio(v, q)} |")
EOF2
)

# ---- 5c. scale ------------------------------------------------------------------------------
# Cost per request as tables and exception stores grow: the same 4K random reads over the same
# bytes, through a 10-line and a 10,000-line table, and through a snapshot with 1,000 and one
# with 1,000,000 exceptions (COW files written in the kernel's format by make-cow.py, chunk 1
# sector, every other origin sector remapped; the reads stay in the first MiB, where both
# stores remap the same sectors, so only the size of the store differs).
# They run on the direct mount: in page-cache mode the reads would be served from the cache
# once warm, and measure the cache, not the table or exception lookup.
SCALE_MNT=$MNT
[[ -n $CACHE_MODES ]] && SCALE_MNT=$MNT_D
log "scale rows (on $SCALE_MNT)"
lines_table() {   # lines_table N: N linear lines over a.img, in order
    local n=$1 per=$((SECTORS / $1))
    awk -v n="$n" -v per="$per" -v f="$BENCH_DIR/a.img" \
        'BEGIN { for (i = 0; i < n; i++) printf "%d %d linear %s %d\n", i * per, per, f, i * per }'
}
lines_table 10 > "$SCALE_MNT/ctl/create/lines10"
lines_table 10000 > "$SCALE_MNT/ctl/create/lines10000"
python3 "$ROOT/benches/make-cow.py" 1000 "$BENCH_DIR/cow-1k.img"
python3 "$ROOT/benches/make-cow.py" 1000000 "$BENCH_DIR/cow-1m.img"
echo "0 $SECTORS snapshot $BENCH_DIR/a.img $BENCH_DIR/cow-1k.img P 1" > "$SCALE_MNT/ctl/create/exc1k"
LOAD_START=$(date +%s%N)
echo "0 $SECTORS snapshot $BENCH_DIR/a.img $BENCH_DIR/cow-1m.img P 1" > "$SCALE_MNT/ctl/create/exc1m"
LOAD_MS=$(( ($(date +%s%N) - LOAD_START) / 1000000 ))
echo "   exc1m status: $(cat "$SCALE_MNT/dm/exc1m/status") (loaded in ${LOAD_MS} ms)" >&2
SCALERAW=$BENCH_DIR/fio-scale.tsv
: > "$SCALERAW"
scale_fio() {   # scale_fio DEVICE SIZE
    local out=$BENCH_DIR/fio-scale-$1.json
    if fio --name="$1" --filename="$SCALE_MNT/dev/$1" --size="$2" --runtime="$RUNTIME" --time_based \
           --invalidate=0 --allow_file_create=0 --output-format=json --rw=randread --bs=4k \
           --ioengine="$RAND_ENGINE" "${RAND_DEPTH[@]}" --numjobs=2 --group_reporting \
           > "$out" 2> "$out.err"; then
        parse "$1" x read iops < "$out" | tee -a "$SCALERAW" >&2
    else
        log "fio failed: $1: $(head -3 "$out.err" | tr '\n' ' ')"
        printf '%s\tx\tFAIL\n' "$1" >> "$SCALERAW"
    fi
}
sync   # as for the snapshot rows: no writeback of earlier rows' pages under the measurement
# Small and large alternate, SYNC_REPS rounds, medians kept: on this shared machine one run of
# each moved by 20% between runs, more than the difference being measured.
for _ in $(seq "$SYNC_REPS"); do
    scale_fio lines10 1000M
    scale_fio lines10000 1000M
    scale_fio exc1k 1M
    scale_fio exc1m 1M
done
for d in lines10 lines10000 exc1k exc1m; do median_of "$SCALERAW" "$d" x; done
SCALE_TABLE=$(python3 - "$SCALERAW" "$LOAD_MS" <<'EOF3'
import sys
v = {l.split("\t")[0]: l.rstrip("\n").split("\t")[2] for l in open(sys.argv[1])}
f = lambda x: None if x in (None, "FAIL") else float(x)
def ratio(a, b):
    return "-" if a is None or not b else f"{a / b:.2f}"
print("| scale: rand read 4K IOPS | small | large | large / small |")
print("| --- | --- | --- | --- |")
for name, small, large in [("table: 10 lines vs 10,000 lines", "lines10", "lines10000"),
                           ("snapshot: 1,000 vs 1,000,000 exceptions", "exc1k", "exc1m")]:
    a, b = f(v.get(small)), f(v.get(large))
    show = lambda x: "FAIL" if x is None else f"{x:.0f}"
    print(f"| {name} | {show(a)} | {show(b)} | {ratio(b, a)} |")
print()
print(f"Loading the snapshot with 1,000,000 exceptions (creating its device) took {sys.argv[2]} ms.")
EOF3
)

echo
echo "$TABLE"
echo
echo "$SNAP_TABLE"
echo
echo "$SCALE_TABLE"

CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
# read_ahead_kb of a mount's (or a file's) bdi
ra_of() {
    local mm
    if mountpoint -q "$1" 2>/dev/null && [[ -d $1 ]]; then mm=$(mountpoint -d "$1"); else mm=$(stat -c '%Hd:%Ld' "$1"); fi
    echo "$(cat "/sys/class/bdi/$mm/read_ahead_kb" 2>/dev/null || echo '?') (bdi $mm)"
}
mount_opts() { awk -v m="$1" '$2 == m { print $3 " " $4 }' /proc/mounts; }
args_text() { if (($#)); then echo "\`$*\`"; else echo "no options"; fi; }
COMPLETE=1
grep -qP '\t(FAIL|NOTRUN)$' "$RAW" "$SNAPRAW" "$SCALERAW" && COMPLETE=
HEADER=$(
    echo "# dmfs benchmark results"
    echo
    echo "How to read these figures: [docs/REFERENCE.md](../docs/REFERENCE.md#performance). This file is"
    echo "written by \`benches/run.sh\`."
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "- kernel: $(uname -r)"
    echo "- nproc: $(nproc)"
    echo "- CPU: ${CPU:-unknown}"
    echo "- $QSD_VERSION"
    echo "- $FIO_VERSION"
    echo "- dmfs: $("$DMFS" --version 2>/dev/null | head -1) ($DMFS), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || echo ' + uncommitted changes in src/')"
    echo "- command: \`benches/run.sh\` (RUNTIME=${RUNTIME}s per time-based job, fio --size=$FIO_SIZE, buffered, --invalidate=0; SYNC_REPS=$SYNC_REPS)"
    echo "- targets: native = a.img (1 GiB, in page cache); passthru = linear over all of a.img, read-only,"
    echo "  so its read-only opens are FUSE passthrough (the kernel reads a.img itself; no writes);"
    echo "  whole = the same map, writable; offset = linear over"
    echo "  a.img from sector 2048; multi = 4 linear lines alternating a.img/b.img; striped = 2 stripes,"
    echo "  chunk 128 sectors, over a.img and b.img; qsd = qemu-storage-daemon FUSE export of a.img"
    echo "- mounts (each row's suffix says which; all three are \`dmfs mount -f MNT\` with the options shown):"
    echo "  - no suffix (passthru whole offset multi striped, and the snapshot and scale tables):"
    echo "    $(args_text "${MNT_ARGS[@]}") = the default, page-cache mode (read-only opens of dev/NAME"
    echo "    through the kernel page cache, opens for writing direct I/O); read_ahead_kb $(ra_of "$MNT")"
    if [[ -n $CACHE_MODES ]]; then
        echo "  - \`-direct\`: $(args_text "${MNT_D_ARGS[@]}") (every open direct I/O: each read and write is a"
        echo "    request to dmfs, no page cache); read_ahead_kb $(ra_of "$MNT_D")"
        echo "  - \`-wb\`: $(args_text "${MNT_W_ARGS[@]}") (FUSE writeback cache: the kernel caches writes and"
        echo "    sends them to dmfs later); read_ahead_kb $(ra_of "$MNT_W"); measured only with synced writes"
    else
        echo "  - \`-direct\`, \`-wb\`: not run (this dmfs has no --cache option)"
    fi
    echo "  - qsd: \`qemu-storage-daemon --blockdev driver=file,node-name=f,filename=a.img --export"
    echo "    type=fuse,id=e,node-name=f,mountpoint=FILE,writable=on\` ($(mount_opts "$QSD_FILE"));"
    echo "    read_ahead_kb $(ra_of "$QSD_FILE"). Its FUSE export (qemu 10.0, block/export/fuse.c, libfuse"
    echo "    low level) answers open without FOPEN_DIRECT_IO or FOPEN_KEEP_CACHE and does not ask for"
    echo "    the writeback cache: reads and writes go through the kernel page cache, writes are written"
    echo "    through to qsd at once (checked: a write is in a.img before close), the cache is dropped at"
    echo "    each open, and every close (FUSE flush) costs a blk_flush (fdatasync of a.img);"
    echo "    single-threaded"
    echo "  - native: a.img on $(findmnt -no FSTYPE,SOURCE -T "$BENCH_DIR/a.img" 2>/dev/null | tr -s ' ' ' '); read_ahead_kb $(ra_of "$BENCH_DIR/a.img")"
    echo "- cache probe (benches/cache-probe.py, before the fio jobs: share of 8 MiB resident in the"
    echo "  file's page cache after a read through a read-only open / a read-write open): $PROBES"
    echo "- seq read, seq write: psync, bs=1M, 1 job, time-based; rand read: bs=4k, $RAND_ENGINE ${RAND_DEPTH[*]}, numjobs=2"
    echo "- seq write one pass + end_fsync: psync, bs=1M, 1 job, one pass over $FIO_SIZE then fsync, fio's"
    echo "  rate including the fsync (median of $SYNC_REPS runs). The writeback rows only make sense"
    echo "  this way: without the fsync their writes would stop in the kernel's cache and never be"
    echo "  timed reaching dmfs or a.img. So that the comparison is fair, native and the other rows get"
    echo "  the same job in this separate column (one pass, end_fsync), not a changed seq write column:"
    echo "  there every row's writes land in a.img's page cache uncommitted, as before; here every row's"
    echo "  data is in a.img and flushed to its disk (dmfs's fsync syncs the backing files, qsd's is"
    echo "  blk_flush) when the clock stops. One pass, so that no row gains by overwriting cached pages."
    echo "- snapshot rows: snapshot-origin over a.img and a persistent snapshot (chunk 32 sectors) with"
    echo "  a sparse COW file; writes are one pass of $SNAP_SIZE with bs=1M (plain = the same through the"
    echo "  linear device whole), each write row the median of $SNAP_REPS rounds (every round's figure in"
    echo "  the last column), each round with a fresh"
    echo "  snapshot and a sync before every pass; the + end_fsync rows repeat the three passes with"
    echo "  an fsync at the end of each, so that the plain write's data reaches the disk too; then the"
    echo "  snapshot is read as above. The writeback-mount rows repeat plain,"
    echo "  first and later on the -wb mount over c.img ($SNAP_SIZE, its own COW file), each one pass"
    echo "  + end_fsync, against the plain write there"
    echo "- the snapshot table runs on the default mount: in page-cache mode its reads (read-only"
    echo "  opens) are served from the kernel page cache once warm. The scale table runs on"
    echo "  $(basename "$SCALE_MNT") (every read a request to dmfs), so it measures the table and"
    echo "  exception lookups, not the cache; small and large alternate, median of $SYNC_REPS rounds each"
)
REPORT=$(
    echo "$HEADER"
    echo
    echo "$TABLE"
    echo
    echo "$SNAP_TABLE"
    echo
    echo "$SCALE_TABLE"
)
if [[ -n $COMPLETE ]]; then
    # The sections other scripts write (activate.sh, crypt.sh, luks.sh), between their
    # begin and end markers, stay: each script replaces only its own.
    others=$(awk '/^<!-- benches\/[a-z0-9]+\.sh: begin -->$/ { keep = 1 }
                  keep { print }
                  /^<!-- benches\/[a-z0-9]+\.sh: end -->$/ { keep = 0; print "" }' \
             "$RESULTS" 2>/dev/null || true)
    { echo "$REPORT"; [[ -z $others ]] || printf '\n%s' "$others"; } > "$RESULTS"
    log "results written to $RESULTS"
    if [[ -z ${SKIP_ACTIVATE:-} ]]; then
        NO_BUILD=1 DMFS=$DMFS RUNTIME=$RUNTIME RESULTS=$RESULTS "$ROOT/benches/activate.sh"
    fi
else
    INCOMPLETE=${INCOMPLETE_RESULTS:-/tmp/dmfs-bench-results.incomplete.md}
    echo "$REPORT" > "$INCOMPLETE"
    log "some rows failed or did not run: $RESULTS left as it was; this run's report is in $INCOMPLETE"
    exit 1
fi
