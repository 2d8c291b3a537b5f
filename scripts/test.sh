#!/usr/bin/env bash
# The project's test command (README): unit and integration tests, then the
# POSIX conformance run against a real mount, once per FUSE transport the
# kernel has: requests read from /dev/fuse, and FUSE over io_uring (the fuse
# module's enable_uring, switched on for the second pass and put back after).
#
#   scripts/test.sh [--quick]     (--quick is passed on to conformance.sh)
#
# Needs root and /dev/fuse: the cargo tests include real FUSE mounts.
set -euo pipefail

cd "$(dirname "$0")/.."

# Integration tests only build the binary if some test uses it; conformance
# needs it whatever the tests look like. Same profile as the tests, so this
# reuses their artefacts and costs a link at most.
cargo build --locked --bins --features failpoints

pass() {
    echo "--- transport: $1"
    cargo test --locked --features failpoints
    BUCKETFS_BIN=${BUCKETFS_BIN:-target/debug/bucketfs} scripts/conformance.sh "${@:2}"
}

uring=/sys/module/fuse/parameters/enable_uring
if [[ -w $uring ]]; then
    was=$(cat "$uring")
    trap 'echo "$was" > "$uring"' EXIT
    echo N >"$uring"
    pass "/dev/fuse" "$@"
    echo Y >"$uring"
    pass "io_uring" "$@"
else
    echo "--- $uring is missing or read-only: this kernel has one transport to test"
    pass "/dev/fuse" "$@"
fi
