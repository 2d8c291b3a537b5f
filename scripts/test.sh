#!/usr/bin/env bash
# The project's test command (README): unit and integration tests, then the
# POSIX conformance run against a real mount.
#
#   scripts/test.sh [--quick]     (--quick is passed on to conformance.sh)
#
# Needs root and /dev/fuse: the cargo tests include real FUSE mounts.
set -euo pipefail

cd "$(dirname "$0")/.."

cargo test --locked

# Integration tests only build the binary if some test uses it; conformance
# needs it whatever the tests look like. Same profile as the tests, so this
# reuses their artefacts and costs a link at most.
cargo build --locked --bins
BUCKETFS_BIN=${BUCKETFS_BIN:-target/debug/bucketfs} scripts/conformance.sh "$@"
