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
#   DMFS_BIN=target/debug/dmfs scripts/soak.sh   # that binary, no release build
#   SOAK_LOG_LINES=1000                  # lines of each job's messages kept (the rest counted)
#
# A fifth job, the canary, runs the same fio over a flakey device that corrupts one byte of
# every write: its verification must fail, which proves the soak would see a corruption.
#
# What a run leaves in its directory stays small however long it runs and however often a
# job fails (scripts/soak-report.py reads it): per job NAME, NAME.json holds only fio's JSON
# status reports, NAME.log the first SOAK_LOG_LINES lines of fio's messages and NAME.count how
# many there were (the canary reports every block it verifies as failed, three lines each).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECONDS_TOTAL=${SOAK_SECONDS:-1800}
INTERVAL=${INTERVAL:-30}
SIZE_MIB=${SIZE_MIB:-32}
LOG_LINES=${SOAK_LOG_LINES:-1000}
DIR=${SOAK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/dmfs-soak.XXXXXX")}
MNT=$DIR/mnt
DMFS=${DMFS_BIN:-$ROOT/target/release/dmfs}
DMFS_PID=
CHURN_PID=
FIO_PIDS=()
LOG_PIDS=()

log() { printf '== %s\n' "$*" >&2; }
is_mounted() { awk -v m="$1" '$2 == m { f = 1 } END { exit !f }' /proc/mounts; }

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    [[ -n $CHURN_PID ]] && kill "$CHURN_PID" 2>/dev/null && wait "$CHURN_PID" 2>/dev/null
    # fio ends its job processes itself on SIGTERM; the log filters end when fio closes its
    # end of their pipes, and are killed if they have not.
    for pid in "${FIO_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${FIO_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    for pid in "${LOG_PIDS[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
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

if ! command -v fio >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        log "installing fio"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null
    else
        log "soak: please install fio"
        exit 1
    fi
fi
if [[ -z ${DMFS_BIN:-} ]]; then
    log "building release"
    (cd "$ROOT" && cargo build --release -q)
fi
[[ -x $DMFS ]] || { log "soak: no dmfs binary at $DMFS"; exit 1; }
DMFS=$(realpath "$DMFS") # the run works in $DIR

mkdir -p "$MNT"
cd "$DIR"
# A SOAK_DIR used before: no count or report of the last run may pass for this one's.
rm -f ./*.json ./*.count ./*.log ./*.messages churn.err churn.last
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

# Keeps the first LOG_LINES lines of what it reads in NAME.log and writes to NAME.count how
# many lines reported a verify failure, and how many lines there were. It reads to the end
# (a reader that stopped early would kill fio with SIGPIPE).
capped_log() { # NAME
    awk -v keep="$LOG_LINES" -v count="$DIR/$1.count" '
        /verify failed|bad magic/ { failed++ }
        NR <= keep { print }
        END { print failed + 0, NR > count }' > "$DIR/$1.log"
}

# Each job writes its own device with checksummed blocks and verifies them as it goes
# (verify_backlog) and at the end. Its JSON goes to stdout, not to --output: fio writes its
# messages (three lines per verify failure) into the --output file as well as to stderr, and
# there they can land inside a JSON report. The messages go through capped_log on a FIFO.
fio_job() { # NAME DEVICE
    mkfifo "$DIR/$1.messages"
    capped_log "$1" < "$DIR/$1.messages" &
    LOG_PIDS+=($!)
    fio --name="$1" --filename="$2" --rw=randwrite --bs=4k --iodepth=1 --ioengine=psync \
        --numjobs=1 --size="${SIZE_MIB}M" --time_based --runtime="$SECONDS_TOTAL" \
        --verify=crc32c --verify_backlog=256 --verify_fatal=0 --continue_on_error=all \
        --status-interval="$INTERVAL" --output-format=json --eta=never \
        >"$DIR/$1.json" 2>"$DIR/$1.messages" &
    FIO_PIDS+=($!)
}
fio_job lin "$MNT/dev/lin"
fio_job str "$MNT/dev/str"
fio_job orig "$MNT/dev/orig"
fio_job snap "$MNT/dev/snap"
fio_job canary "$MNT/dev/canary"

churn() {
    local n=0 fail=0 end=$((SECONDS + SECONDS_TOTAL))
    # The messages of the first LOG_LINES failed operations are kept in churn.err.
    step() {
        n=$((n + 1))
        "$@" 2>"$DIR/churn.last" && return
        fail=$((fail + 1))
        if ((fail <= LOG_LINES)); then cat "$DIR/churn.last" >> "$DIR/churn.err"; fi
    }
    : > "$DIR/churn.err"
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
    rm -f "$DIR/churn.last"
    echo "$n $fail" > "$DIR/churn.count"
}
churn &
CHURN_PID=$!

log "soaking for ${SECONDS_TOTAL}s in $DIR (throughput every ${INTERVAL}s)"
# fio exits non-zero when a job had errors (the canary always does): the report counts them.
for pid in "${FIO_PIDS[@]}" "${LOG_PIDS[@]}"; do wait "$pid" || true; done
FIO_PIDS=()
LOG_PIDS=()
wait "$CHURN_PID" || true
CHURN_PID=

python3 "$ROOT/scripts/soak-report.py" "$DIR"
