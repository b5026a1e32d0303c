#!/usr/bin/env bash
# The full crash campaign (issue 7): tests/crash.rs with 100 SIGKILLs of the daemon during a
# write+fsync loop on a snapshot origin (CI runs 8), then, where the kernel oracle is
# available, the final COW device is loaded by the kernel's own snapshot target and must give
# the snapshot image dmfs gave.
#
#   scripts/crash-test.sh [CYCLES]        (default 100; DMFS_CRASH_SEED changes the run)
set -euo pipefail
cd "$(dirname "$0")/.."
cycles=${1:-100}
keep=$(mktemp -d "${TMPDIR:-/tmp}/dmfs-crash.XXXXXX")
trap 'rm -rf "$keep"' EXIT
DMFS_CRASH_CYCLES=$cycles DMFS_CRASH_KEEP=$keep \
  cargo test --release --test crash -- --nocapture 2>&1 | grep -E "kills|test result|panicked|cycle"
oracle=${KERNEL_ORACLE:-../shared/kernel-oracle/run-in-kernel}
if [ ! -x "$oracle" ]; then
  echo "crash-test: no kernel oracle at $oracle; skipped the kernel load of the final COW device"
  exit 0
fi
cat > "$keep/load.sh" <<'VM'
set -e
S=$(blockdev --getsz /dev/vda)
echo "0 $S snapshot /dev/vda /dev/vdb P 8" | dmsetup create snap
dmsetup status snap
sha256sum < /dev/mapper/snap | cut -d' ' -f1 > /host/kernel.sha256
dmsetup remove snap
VM
"$oracle" --share "$keep" --disk "$keep/origin.img" --disk "$keep/cow.img" "$keep/load.sh"
want=$(sha256sum < "$keep/snapshot.img" | cut -d' ' -f1)
got=$(cat "$keep/kernel.sha256")
if [ "$want" = "$got" ]; then
  echo "crash-test: the kernel loaded the final COW device and read the snapshot image ($got)"
else
  echo "crash-test: the kernel read $got from the final COW device, dmfs's snapshot was $want" >&2
  exit 1
fi
