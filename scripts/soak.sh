#!/usr/bin/env bash
# Soak test (issue 7): fio with verification over a linear, a striped, a snapshot-origin and a
# snapshot device, all at once, while a churn loop creates, reloads, suspends, resumes and
# removes other devices (a stacked linear, a second snapshot of the same origin) and reloads
# the linear device fio is using. Prints throughput per interval while it runs, then the
# totals: verification failures (must be 0), I/O errors, churn operations and failures.
#
#   scripts/soak.sh                      # 30 minutes
#   SOAK_SECONDS=60 scripts/soak.sh      # a short run
#   SOAK_DIR=/some/dir INTERVAL=10 SIZE_MIB=32 scripts/soak.sh
#
# A fifth job, the canary, runs the same fio over a flakey device that corrupts one byte of
# every write: its verification must fail, which proves the soak would see a corruption.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECONDS_TOTAL=${SOAK_SECONDS:-1800}
INTERVAL=${INTERVAL:-30}
SIZE_MIB=${SIZE_MIB:-32}
DIR=${SOAK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/dmfs-soak.XXXXXX")}
MNT=$DIR/mnt
DMFS=$ROOT/target/release/dmfs
DMFS_PID=
CHURN_PID=

log() { printf '== %s\n' "$*" >&2; }
is_mounted() { awk -v m="$1" '$2 == m { f = 1 } END { exit !f }' /proc/mounts; }

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    [[ -n $CHURN_PID ]] && kill "$CHURN_PID" 2>/dev/null && wait "$CHURN_PID" 2>/dev/null
    pkill -f "fio .*$DIR/" 2>/dev/null
    if is_mounted "$MNT"; then umount "$MNT" 2>/dev/null || umount -l "$MNT"; fi
    if [[ -n $DMFS_PID ]]; then
        for _ in $(seq 50); do kill -0 "$DMFS_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$DMFS_PID" 2>/dev/null
        wait "$DMFS_PID" 2>/dev/null
    fi
    [[ -z ${SOAK_DIR:-} ]] && rm -rf "$DIR"
    exit "$rc"
}
trap cleanup EXIT INT TERM

command -v fio >/dev/null || {
    log "installing fio"
    apt-get install -y -qq fio >/dev/null
}
log "building release"
(cd "$ROOT" && cargo build --release -q)

mkdir -p "$MNT"
cd "$DIR"
sectors=$((SIZE_MIB * 2048))
for f in lin.img s1.img s2.img origin.img churn.img canary.img; do truncate -s "${SIZE_MIB}M" "$f"; done
# The snapshot's COW device holds a copy-out of every origin chunk plus the snapshot's own
# writes: twice the origin and room for metadata.
truncate -s $((SIZE_MIB * 2 + 8))M cow.img

"$DMFS" mount -f "$MNT" --log-file "$DIR/dmfs.log" &
DMFS_PID=$!
for _ in $(seq 200); do [[ -e $MNT/ctl/version ]] && break; sleep 0.05; done
[[ -e $MNT/ctl/version ]] || { log "dmfs did not mount"; exit 1; }

echo "0 $sectors linear $DIR/lin.img 0" > "$MNT/ctl/create/lin"
echo "0 $((sectors * 2)) striped 2 16 $DIR/s1.img 0 $DIR/s2.img 0" > "$MNT/ctl/create/str"
echo "0 $sectors snapshot-origin $DIR/origin.img" > "$MNT/ctl/create/orig"
echo "0 $sectors snapshot $DIR/origin.img $DIR/cow.img P 16" > "$MNT/ctl/create/snap"
echo "0 $sectors flakey $DIR/canary.img 0 0 1 5 corrupt_bio_byte 100 w 7 0" > "$MNT/ctl/create/canary"

# Each job writes its own device with checksummed blocks and verifies them as it goes
# (verify_backlog) and at the end.
fio_job() { # NAME DEVICE
    fio --name="$1" --filename="$2" --rw=randwrite --bs=4k --iodepth=4 --ioengine=psync \
        --numjobs=1 --size="${SIZE_MIB}M" --time_based --runtime="$SECONDS_TOTAL" \
        --verify=crc32c --verify_backlog=256 --verify_fatal=0 --continue_on_error=all \
        --status-interval="$INTERVAL" --output-format=json --output="$DIR/$1.json" \
        >/dev/null 2>"$DIR/$1.err" &
}
fio_job lin "$MNT/dev/lin"
fio_job str "$MNT/dev/str"
fio_job orig "$MNT/dev/orig"
fio_job snap "$MNT/dev/snap"
fio_job canary "$MNT/dev/canary"

churn() {
    local n=0 fail=0 end=$((SECONDS + SECONDS_TOTAL))
    step() { n=$((n + 1)); "$@" 2>>"$DIR/churn.err" || fail=$((fail + 1)); }
    while ((SECONDS < end)); do
        step sh -c "echo '0 $sectors linear $DIR/churn.img 0' > '$MNT/ctl/create/c1'"
        step sh -c "echo '0 1024 linear $MNT/dev/c1 $((n % 4096))' > '$MNT/ctl/create/c2'"
        step sh -c "dd if='$MNT/dev/c2' of=/dev/null bs=64k status=none"
        step sh -c "echo '0 $((sectors - 8)) linear $DIR/churn.img 8' > '$MNT/ctl/reload/c1'"
        step sh -c "echo c1 > '$MNT/ctl/suspend' && echo c1 > '$MNT/ctl/resume'"
        # A second, short-lived snapshot of the origin fio is writing.
        truncate -s 0 "$DIR/cow2.img" && truncate -s "${SIZE_MIB}M" "$DIR/cow2.img"
        step sh -c "echo '0 $sectors snapshot $DIR/origin.img $DIR/cow2.img N 8' > '$MNT/ctl/create/s2'"
        # Reload fio's linear device with its own table: suspend drains and resumes under load.
        step sh -c "echo '0 $sectors linear $DIR/lin.img 0' > '$MNT/ctl/reload/lin' && echo lin > '$MNT/ctl/suspend' && echo lin > '$MNT/ctl/resume'"
        sleep 0.2
        step sh -c "echo s2 > '$MNT/ctl/remove'"
        step sh -c "echo c2 > '$MNT/ctl/remove'"
        step sh -c "echo c1 > '$MNT/ctl/remove'"
    done
    echo "$n $fail" > "$DIR/churn.count"
}
churn &
CHURN_PID=$!

log "soaking for ${SECONDS_TOTAL}s in $DIR (throughput every ${INTERVAL}s)"
wait $(jobs -p | grep -v "^$CHURN_PID\$" | grep -v "^$DMFS_PID\$") 2>/dev/null || true
wait "$CHURN_PID" || true
CHURN_PID=

python3 - "$DIR" "$INTERVAL" <<'PY'
import json, sys, os
d, interval = sys.argv[1], int(sys.argv[2])
dec = json.JSONDecoder()
rows, totals = {}, {}
for job in ["lin", "str", "orig", "snap", "canary"]:
    text = open(os.path.join(d, job + ".json")).read()
    i, snaps = 0, []
    while True:
        while i < len(text) and text[i] not in "{":
            i += 1
        if i >= len(text):
            break
        obj, i = dec.raw_decode(text, i)
        snaps.append(obj)
    prev = 0
    for k, s in enumerate(snaps):
        j = s["jobs"][0]
        written = j["write"]["io_kbytes"]
        rows.setdefault(k, {})[job] = (written - prev) / 1024 / interval
        prev = written
    last = snaps[-1]["jobs"][0]
    err = open(os.path.join(d, job + ".err")).read()
    totals[job] = {
        "MiB written": last["write"]["io_kbytes"] // 1024,
        "MiB verified": last["read"]["io_kbytes"] // 1024,
        "errors": last["total_err"],
        "verify failures": err.count("verify failed") + err.count("bad magic"),
    }
print("throughput per interval (MiB/s written; the last row may be a partial interval)")
print("t(s)   " + "  ".join(f"{j:>7}" for j in ["lin", "str", "orig", "snap"]))
for k in sorted(rows):
    print(f"{(k + 1) * interval:<6} " + "  ".join(f"{rows[k].get(j, 0):7.1f}" for j in ["lin", "str", "orig", "snap"]))
bad = 0
for job, t in totals.items():
    print(f"{job}: " + ", ".join(f"{k} {v}" for k, v in t.items()))
    if job != "canary":
        bad += t["verify failures"]
canary = totals["canary"]["verify failures"]
print(f"canary (a device that corrupts every write): {canary} verify failures seen"
      + ("" if canary else " -- NONE: the soak cannot see corruption"))
n, fail = open(os.path.join(d, "churn.count")).read().split()
print(f"churn: {n} operations, {fail} failed")
print(f"corruptions: {bad}")
sys.exit(1 if bad or int(fail) or not canary else 0)
PY
