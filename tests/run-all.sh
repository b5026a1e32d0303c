#!/usr/bin/env bash
# Runs every dmfs test: unit tests and the integration tests that mount dmfs for real.
# Installs what the tests use (util-linux for losetup/blockdev, diffutils for cmp) when it is
# missing and this runs as root.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for tool in losetup:util-linux blockdev:util-linux setpriv:util-linux cmp:diffutils sha256sum:coreutils \
            python3:python3 pgrep:procps gzip:gzip mkfs.ext4:e2fsprogs debugfs:e2fsprogs e2fsck:e2fsprogs; do
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
cargo test --all-targets 2>&1
