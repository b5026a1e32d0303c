#!/usr/bin/env bash
# Benchmark dmfs against the native backing file and qemu-storage-daemon's FUSE export.
#
#   benches/run.sh                 # scratch in /tmp/dmfs-bench, results in benches/results.md
#   BENCH_DIR=/some/dir KEEP=1 RUNTIME=10 benches/run.sh
#
# Targets: native a.img, dmfs devices whole/offset/multi/striped, qsd FUSE export of a.img.
# Metrics: sequential read 1 MiB (MB/s), random read 4 KiB QD16 x 2 jobs (IOPS),
#          sequential write 1 MiB (MB/s). Everything is buffered (page cache warm, --invalidate=0).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/tmp/dmfs-bench}
RUNTIME=${RUNTIME:-5}
SIZE_MIB=1024                 # backing image size
FIO_SIZE=${FIO_SIZE:-1000M}   # region fio exercises (fits every target; offset is 1023 MiB)
RESULTS=$ROOT/benches/results.md
DMFS=$ROOT/target/release/dmfs

MNT=$BENCH_DIR/mnt
QSD_FILE=$BENCH_DIR/qsd-export
QSD_PID=
DMFS_MOUNTED=
STARTED_DIR=

log() { printf '== %s\n' "$*" >&2; }

is_mounted() { awk -v m="$1" '$2 == m { f = 1 } END { exit !f }' /proc/mounts; }

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
    if [[ -n $DMFS_MOUNTED ]] && is_mounted "$MNT"; then
        local dpid
        dpid=$(pgrep -f -x "$DMFS mount $MNT.*" | head -1)
        "$DMFS" umount "$MNT" 2>/dev/null || umount "$MNT" 2>/dev/null || umount -l "$MNT"
        if [[ -n $dpid ]]; then
            for _ in $(seq 50); do kill -0 "$dpid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$dpid" 2>/dev/null && kill -TERM "$dpid"
        fi
    fi
    if [[ -n $STARTED_DIR && -z ${KEEP:-} ]]; then
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
log "building release dmfs"
(cd "$ROOT" && cargo build --release --quiet)

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

# ---- 2. scratch, images, dmfs ---------------------------------------------------------------
if [[ -e $BENCH_DIR ]] && [[ -n $(ls -A "$BENCH_DIR" 2>/dev/null) ]]; then
    is_mounted "$MNT" && { echo "$MNT is still mounted from an earlier run" >&2; exit 1; }
    rm -rf "$BENCH_DIR"
fi
mkdir -p "$BENCH_DIR" "$MNT"
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

log "mounting dmfs on $MNT"
"$DMFS" mount "$MNT"
DMFS_MOUNTED=1
is_mounted "$MNT" || { echo "dmfs mount did not appear in /proc/mounts" >&2; exit 1; }

echo "0 $SECTORS linear $BENCH_DIR/a.img 0" > "$MNT/ctl/create/whole"
# The same map, read-only: dmfs hands its read-only opens to the kernel (FUSE passthrough).
echo "0 $SECTORS linear $BENCH_DIR/a.img 0" > "$MNT/ctl/create/passthru"
chmod a-w "$MNT/dev/passthru"
echo "0 $((SECTORS - 2048)) linear $BENCH_DIR/a.img 2048" > "$MNT/ctl/create/offset"
printf '%s\n' \
    "0 $Q linear $BENCH_DIR/a.img 0" \
    "$Q $Q linear $BENCH_DIR/b.img $Q" \
    "$((2 * Q)) $Q linear $BENCH_DIR/a.img $((2 * Q))" \
    "$((3 * Q)) $Q linear $BENCH_DIR/b.img $((3 * Q))" > "$MNT/ctl/create/multi"
echo "0 $SECTORS striped 2 128 $BENCH_DIR/a.img 0 $BENCH_DIR/b.img 0" > "$MNT/ctl/create/striped"
for d in whole passthru offset multi striped; do
    printf '   %-8s %s\n' "$d" "$(tr '\n' ';' < "$MNT/dm/$d/table")" >&2
done

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
TARGETS=(native passthru whole offset multi striped qsd)
target_file() {
    case $1 in
        native) echo "$BENCH_DIR/a.img" ;;
        qsd)    echo "$QSD_FILE" ;;
        *)      echo "$MNT/dev/$1" ;;
    esac
}

COMMON=(--size="$FIO_SIZE" --runtime="$RUNTIME" --time_based --invalidate=0 --fallocate=none
        --create_on_open=0 --allow_file_create=0 --output-format=json)

# Random read: io_uring (buffered; the kernel hands reads that would block to io-wq workers, so
# 16 are in flight per job) when it works on FUSE here, else psync (one in flight per job).
RAND_ENGINE=psync
RAND_DEPTH=(--iodepth=1)
if fio --name=probe --filename="$MNT/dev/whole" --rw=randread --bs=4k --ioengine=io_uring \
       --iodepth=16 --size=16M --runtime=1 --time_based --invalidate=0 --allow_file_create=0 \
       --output-format=json >/dev/null 2>&1 &&
   fio --name=probe --filename="$QSD_FILE" --rw=randread --bs=4k --ioengine=io_uring \
       --iodepth=16 --size=16M --runtime=1 --time_based --invalidate=0 --allow_file_create=0 \
       --output-format=json >/dev/null 2>&1; then
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
    if fio --name="$t-$m" --filename="$(target_file "$t")" "${COMMON[@]}" "$@" > "$out" 2> "$out.err"; then
        parse "$t" "$m" "$rw" "$kind" < "$out" | tee -a "$RAW" >&2
    else
        log "fio failed: $t $m: $(head -3 "$out.err" | tr '\n' ' ')"
        printf '%s\t%s\tFAIL\n' "$t" "$m" >> "$RAW"
    fi
}

for t in "${TARGETS[@]}"; do
    log "fio on $t ($(target_file "$t"))"
    run_fio "$t" seqread read bw --rw=read --bs=1M --ioengine=psync
    run_fio "$t" randread read iops --rw=randread --bs=4k --ioengine="$RAND_ENGINE" \
        "${RAND_DEPTH[@]}" --numjobs=2 --group_reporting
    if [[ $t == passthru ]]; then
        printf '%s\t%s\tNA\n' "$t" seqwrite >> "$RAW"   # a read-only device
    else
        run_fio "$t" seqwrite write bw --rw=write --bs=1M --ioengine=psync
    fi
done

# ---- 5. table ---------------------------------------------------------------------------------
TABLE=$(python3 - "$RAW" "$RAND_ENGINE" <<'EOF'
import sys
raw, engine = sys.argv[1], sys.argv[2]
order = ["native", "passthru", "whole", "offset", "multi", "striped", "qsd"]
metrics = [("seqread", "seq read 1M MB/s"),
           ("randread", f"rand read 4K IOPS ({engine} QD16x2)" if engine == "io_uring"
                        else f"rand read 4K IOPS ({engine} 2 jobs)"),
           ("seqwrite", "seq write 1M MB/s")]
v = {}
for line in open(raw):
    t, m, x = line.rstrip("\n").split("\t")
    v[(t, m)] = x if x == "NA" else None if x == "FAIL" else float(x)
def ratio(a, b):
    ok = lambda x: isinstance(x, float) and x
    return f"{a / b:.2f}" if ok(a) and ok(b) else "-"
def num(a):
    if a == "NA":
        return "n/a"
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
# A persistent snapshot of a.img (16 KiB chunks, the kernel's default) with a COW file that
# holds every chunk; writes go through the snapshot-origin device. One pass over the same
# region each: a plain write through dmfs (linear over a.img), the first write through the
# origin (every chunk copied out and committed first), a second write (nothing to copy), then
# reads of the snapshot.
SNAP_SIZE=${SNAP_SIZE:-256M}
log "snapshot rows ($SNAP_SIZE region)"
truncate -s $((SIZE_MIB + 64))M "$BENCH_DIR/cow.img"
echo "0 $SECTORS snapshot-origin $BENCH_DIR/a.img" > "$MNT/ctl/create/sorigin"
echo "0 $SECTORS snapshot $BENCH_DIR/a.img $BENCH_DIR/cow.img P 32" > "$MNT/ctl/create/snap"
ONEPASS=(--size="$SNAP_SIZE" --invalidate=0 --fallocate=none --create_on_open=0
         --allow_file_create=0 --output-format=json --rw=write --bs=1M --ioengine=psync)
SNAPRAW=$BENCH_DIR/fio-snap.tsv
: > "$SNAPRAW"
snap_fio() {   # snap_fio LABEL FILE RW KIND fio-args...
    local label=$1 file=$2 rw=$3 kind=$4; shift 4
    local out=$BENCH_DIR/fio-snap-$label.json
    if fio --name="$label" --filename="$file" "$@" > "$out" 2> "$out.err"; then
        parse "$label" x "$rw" "$kind" < "$out" | cut -f1,3 | tee -a "$SNAPRAW" >&2
    else
        log "fio failed: $label: $(head -3 "$out.err" | tr '\n' ' ')"
        printf '%s\tFAIL\n' "$label" >> "$SNAPRAW"
    fi
}
snap_fio plain "$MNT/dev/whole" write bw "${ONEPASS[@]}"
snap_fio first "$MNT/dev/sorigin" write bw "${ONEPASS[@]}"
echo "   snapshot status after the first pass: $(cat "$MNT/dm/snap/status")" >&2
snap_fio later "$MNT/dev/sorigin" write bw "${ONEPASS[@]}"
snap_fio snapseq "$MNT/dev/snap" read bw "${COMMON[@]}" --rw=read --bs=1M --ioengine=psync
snap_fio snaprand "$MNT/dev/snap" read iops "${COMMON[@]}" --rw=randread --bs=4k \
    --ioengine="$RAND_ENGINE" "${RAND_DEPTH[@]}" --numjobs=2 --group_reporting
SNAP_TABLE=$(python3 - "$SNAPRAW" "$RAW" <<'EOF2'
import sys
snap = dict(l.rstrip("\n").split("\t") for l in open(sys.argv[1]))
raw = {}
for l in open(sys.argv[2]):
    t, m, x = l.rstrip("\n").split("\t")
    raw[(t, m)] = x
def f(x):
    return None if x in (None, "FAIL") else float(x)
def ratio(a, b):
    return "-" if a is None or not b else f"{a / b:.2f}"
plain = f(snap.get("plain"))
rows = [
    ("plain write through dmfs (linear), one pass, MB/s", f(snap.get("plain")), plain, None),
    ("origin first write (copy-out + commit), MB/s", f(snap.get("first")), plain, None),
    ("origin later write (chunks already saved), MB/s", f(snap.get("later")), plain, None),
    ("snapshot seq read 1M, MB/s", f(snap.get("snapseq")), f(raw.get(("native", "seqread"))),
     f(raw.get(("qsd", "seqread")))),
    ("snapshot rand read 4K, IOPS", f(snap.get("snaprand")), f(raw.get(("native", "randread"))),
     f(raw.get(("qsd", "randread")))),
]
print("| snapshot measurement | value | vs plain write (writes) / native (reads) | vs qsd |")
print("| --- | --- | --- | --- |")
for name, v, base, q in rows:
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
log "scale rows"
lines_table() {   # lines_table N: N linear lines over a.img, in order
    local n=$1 per=$((SECTORS / $1))
    awk -v n="$n" -v per="$per" -v f="$BENCH_DIR/a.img" \
        'BEGIN { for (i = 0; i < n; i++) printf "%d %d linear %s %d\n", i * per, per, f, i * per }'
}
lines_table 10 > "$MNT/ctl/create/lines10"
lines_table 10000 > "$MNT/ctl/create/lines10000"
python3 "$ROOT/benches/make-cow.py" 1000 "$BENCH_DIR/cow-1k.img"
python3 "$ROOT/benches/make-cow.py" 1000000 "$BENCH_DIR/cow-1m.img"
echo "0 $SECTORS snapshot $BENCH_DIR/a.img $BENCH_DIR/cow-1k.img P 1" > "$MNT/ctl/create/exc1k"
LOAD_START=$(date +%s%N)
echo "0 $SECTORS snapshot $BENCH_DIR/a.img $BENCH_DIR/cow-1m.img P 1" > "$MNT/ctl/create/exc1m"
LOAD_MS=$(( ($(date +%s%N) - LOAD_START) / 1000000 ))
echo "   exc1m status: $(cat "$MNT/dm/exc1m/status") (loaded in ${LOAD_MS} ms)" >&2
SCALERAW=$BENCH_DIR/fio-scale.tsv
: > "$SCALERAW"
scale_fio() {   # scale_fio DEVICE SIZE
    local out=$BENCH_DIR/fio-scale-$1.json
    if fio --name="$1" --filename="$MNT/dev/$1" --size="$2" --runtime="$RUNTIME" --time_based \
           --invalidate=0 --allow_file_create=0 --output-format=json --rw=randread --bs=4k \
           --ioengine="$RAND_ENGINE" "${RAND_DEPTH[@]}" --numjobs=2 --group_reporting \
           > "$out" 2> "$out.err"; then
        parse "$1" x read iops < "$out" | cut -f1,3 | tee -a "$SCALERAW" >&2
    else
        log "fio failed: $1: $(head -3 "$out.err" | tr '\n' ' ')"
        printf '%s\tFAIL\n' "$1" >> "$SCALERAW"
    fi
}
scale_fio lines10 1000M
scale_fio lines10000 1000M
scale_fio exc1k 1M
scale_fio exc1m 1M
SCALE_TABLE=$(python3 - "$SCALERAW" "$LOAD_MS" <<'EOF3'
import sys
v = dict(l.rstrip("\n").split("\t") for l in open(sys.argv[1]))
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
{
    echo "# dmfs benchmark results"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "- kernel: $(uname -r)"
    echo "- nproc: $(nproc)"
    echo "- CPU: ${CPU:-unknown}"
    echo "- $QSD_VERSION"
    echo "- $FIO_VERSION"
    echo "- command: \`benches/run.sh\` (RUNTIME=${RUNTIME}s per job, fio --size=$FIO_SIZE, buffered, --invalidate=0)"
    echo "- targets: native = a.img (1 GiB, in page cache); passthru = linear over all of a.img, read-only,"
    echo "  so its read-only opens are FUSE passthrough (the kernel reads a.img itself; no writes);"
    echo "  whole = the same map, writable (every read through dmfs); offset = linear over"
    echo "  a.img from sector 2048; multi = 4 linear lines alternating a.img/b.img; striped = 2 stripes,"
    echo "  chunk 128 sectors, over a.img and b.img; qsd = qemu-storage-daemon FUSE export of a.img"
    echo "- seq read/write: psync, bs=1M, 1 job; rand read: bs=4k, $RAND_ENGINE ${RAND_DEPTH[*]}, numjobs=2"
    echo "- snapshot rows: snapshot-origin over a.img and a persistent snapshot (chunk 32 sectors) with"
    echo "  its COW file; writes are one pass of $SNAP_SIZE with bs=1M (plain = the same through the"
    echo "  linear device), then the snapshot is read as above"
    echo
    echo "$TABLE"
    echo
    echo "$SNAP_TABLE"
    echo
    echo "$SCALE_TABLE"
} > "$RESULTS"
log "results written to $RESULTS"
