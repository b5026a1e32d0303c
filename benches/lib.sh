# shellcheck shell=bash
# benches/lib.sh: what the benchmark scripts share (sourced by run.sh, activate.sh, luks.sh):
# their log lines, the FUSE mounts they make and take down, packages they install, and their
# own section of results.md. The caller sets BENCH_DIR and DMFS before mount_dmfs.

MOUNT_DIRS=()   # FUSE mounts the script made (dmfs and its peers), and the pids serving them
MOUNT_PIDS=()

log() { printf '== %s\n' "$*" >&2; }

is_mounted() { awk -v m="$1" '$2 == m { f = 1 } END { exit !f }' /proc/mounts; }

stop_pid() {   # stop_pid PID: wait for it to exit, TERM it after 10 s, KILL it after 5 more
    local pid=$1
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    wait "$pid" 2>/dev/null
}

unmount_all() {   # every mount in MOUNT_DIRS, last made first, and its daemon stopped
    local idx=("${!MOUNT_DIRS[@]}") k dir
    for ((k = ${#idx[@]} - 1; k >= 0; k--)); do
        dir=${MOUNT_DIRS[${idx[k]}]}
        is_mounted "$dir" && { umount "$dir" 2>/dev/null || umount -l "$dir"; }
        stop_pid "${MOUNT_PIDS[${idx[k]}]}"
    done
    MOUNT_DIRS=() MOUNT_PIDS=()
}

need_pkg() {   # need_pkg COMMAND DEBIAN-PACKAGE: installs the package when COMMAND is missing
    command -v "$1" >/dev/null && return 0
    log "installing $2"
    apt-get install -y "$2" >/dev/null 2>&1 ||
        { apt-get update >/dev/null && apt-get install -y "$2" >/dev/null; }
}

mount_dmfs() {   # mount_dmfs DIR ARGS...: a foreground daemon in the background, so its pid is known
    local dir=$1; shift
    local logf
    logf=$BENCH_DIR/dmfs-$(basename "$dir").log
    log "mounting dmfs on $dir${*:+ ($*)}"
    "$DMFS" mount -f "$dir" "$@" < /dev/null > "$logf" 2>&1 &
    MOUNT_DIRS+=("$dir")
    MOUNT_PIDS+=($!)
    for _ in $(seq 200); do
        is_mounted "$dir" && [[ -e $dir/ctl/version ]] && return 0
        kill -0 "$!" 2>/dev/null || break
        sleep 0.05
    done
    cat "$logf" >&2
    echo "dmfs did not mount on $dir" >&2
    exit 1
}

write_section() {   # write_section SCRIPT FILE SECTION-FILE: replaces SCRIPT's section of FILE, or adds it at the end
    python3 - "$1" "$2" "$3" <<'PY'
import os, sys
script, path = sys.argv[1:3]
new = open(sys.argv[3]).read().rstrip("\n") + "\n"
old = open(path).read() if os.path.exists(path) else ""
b, e = f"<!-- benches/{script}: begin -->", f"<!-- benches/{script}: end -->"
if b in old and e in old:
    i, j = old.index(b), old.index(e) + len(e)
    out = old[:i] + new.rstrip("\n") + old[j:]
else:
    out = old.rstrip("\n") + ("\n\n" if old else "") + new
open(path, "w").write(out)
PY
}
