#!/usr/bin/env bash
# Reference point, not a test: what the first write to a snapshot-origin chunk costs in the real
# device mapper (Debian's 6.1 kernel in the kernel-oracle VM), next to a plain write and a second
# write, in the shape of benches/run.sh's snapshot rows (persistent snapshot, chunk 32 sectors =
# 16 KiB, one pass of 1 MiB writes, here with O_DIRECT on the dm device).
#
#   benches/kernel-snapshot-write.sh                 # 256 MiB, configs tmpfs ext4 ext4-dio
#   SIZE_MIB=512 REPS=5 CONFIGS="ext4 ext4-dio" benches/kernel-snapshot-write.sh
#
# Boots one VM (kernel-snapshot-write-vm.sh runs inside; it explains the configs and rows) with
# an empty sparse virtio disk for ext4 and enough RAM for the tmpfs config, prints what the VM
# printed. The VM runs under software emulation (TCG; KERNEL_ORACLE_KVM=1 failed here: "failed
# to set MSR 0x10a") on a machine that may be busy: absolute rates are far below real hardware,
# only the ratios within one config mean something, and single runs vary by 2x (REPS, medians).
# KERNEL_ORACLE = path of run-in-kernel (default ../shared/kernel-oracle/run-in-kernel next to
# the checkout, else /work/shared/kernel-oracle/run-in-kernel). KEEP=1 keeps the scratch folder.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZE_MIB=${SIZE_MIB:-256}
REPS=${REPS:-3}
CONFIGS=${CONFIGS:-tmpfs ext4 ext4-dio}
oracle=${KERNEL_ORACLE:-$ROOT/../shared/kernel-oracle/run-in-kernel}
[[ -x $oracle ]] || oracle=/work/shared/kernel-oracle/run-in-kernel
[[ -x $oracle ]] || { echo "kernel-snapshot-write.sh: no kernel oracle (set KERNEL_ORACLE)" >&2; exit 1; }

scratch=$(mktemp -d "${TMPDIR:-/tmp}/dmfs-kernel-snapwrite.XXXXXX")
cleanup() { if [[ -n ${KEEP:-} ]]; then echo "scratch: $scratch" >&2; else rm -rf "$scratch"; fi; }
trap cleanup EXIT

cp "$ROOT/benches/kernel-snapshot-write-vm.sh" "$scratch/"
# coreutils dd (prints its own timing) and date (%N); both need only libc, which the VM has
cp "$(command -v dd)" "$scratch/dd"
cp "$(command -v date)" "$scratch/date"
# ext4 for three files of SIZE_MIB (plain, origin, COW + 1/8) and the journal
truncate -s $((SIZE_MIB * 4 + 512))M "$scratch/disk.img"
mem=$((SIZE_MIB * 4 + 1024))

echo "# benches/kernel-snapshot-write.sh, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), host $(uname -r), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
if [[ ${KERNEL_ORACLE_KVM:-} == 1 ]]; then accel="KVM"; else accel="TCG (software emulation)"; fi
echo "# VM: run-in-kernel --mem $mem, $accel, 2 vCPUs"
KERNEL_ORACLE_TIMEOUT=${KERNEL_ORACLE_TIMEOUT:-3000} \
    "$oracle" --share "$scratch" --mem "$mem" --disk "$scratch/disk.img" \
    "$scratch/kernel-snapshot-write-vm.sh" "$SIZE_MIB" "$REPS" $CONFIGS
