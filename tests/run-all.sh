#!/usr/bin/env bash
# Runs every dmfs test: unit tests and the integration tests that mount dmfs for real.
# Installs what the tests use (util-linux for losetup/blockdev, diffutils for cmp; fuse3, acl and
# passwd for tests/unprivileged.rs, which mounts as an ordinary user) when it is missing and this
# runs as root.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for tool in losetup:util-linux blockdev:util-linux setpriv:util-linux cmp:diffutils sha256sum:coreutils \
            python3:python3 pgrep:procps gzip:gzip mkfs.ext4:e2fsprogs debugfs:e2fsprogs e2fsck:e2fsprogs \
            unshare:util-linux fusermount3:fuse3 setfacl:acl getfacl:acl useradd:passwd userdel:passwd \
            fio:fio; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    else
        echo "run-all: please install: ${missing[*]}" >&2
        exit 1
    fi
fi
if [ ! -c /dev/fuse ]; then
    echo "run-all: /dev/fuse is missing: the integration tests need FUSE" >&2
    exit 1
fi
# Formatting and lints first: a red here fails CI before any test runs.
for part in rustfmt:fmt clippy:clippy; do
    cargo "${part#*:}" --version >/dev/null 2>&1 || rustup component add "${part%%:*}"
done
cargo fmt --check
cargo clippy --all-targets -- -D warnings
failed=()
cargo test --no-fail-fast --all-targets 2>&1 || failed+=("cargo test --no-fail-fast --all-targets")
# The integration tests that do I/O through dev/ again in the other page-cache modes (the run
# above used the default, page-cache): common::Mount passes --cache $DMFS_TEST_CACHE. Left out:
# cache_coherence (it names its modes itself), kernel_mirror (--kernel is always direct; one
# VM boot) and mount_helper (mount(8) options, no Mount). About 40 s per mode on 2 cores.
io_tests=(io walkthrough snapshot_basics snapshot_overflow snapshot_persistence snapshot_concurrency
          snapshot_merge snapshot_bad_tables lifecycle device_lifecycle fault_targets bad_input crash
          passthrough permissions cli fault_fixtures snapshot_fixtures kernel_fixtures partitions activate
          crypt)
for mode in direct writeback; do
    echo "run-all: again with DMFS_TEST_CACHE=$mode: ${io_tests[*]}"
    DMFS_TEST_CACHE=$mode cargo test --no-fail-fast "${io_tests[@]/#/--test=}" 2>&1 \
        || failed+=("DMFS_TEST_CACHE=$mode cargo test ${io_tests[*]/#/--test=}")
done
if [ ${#failed[@]} -gt 0 ]; then
    printf 'run-all: FAILED: %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "run-all: all passed (default mode, then direct and writeback)"
