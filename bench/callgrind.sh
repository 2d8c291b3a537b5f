#!/usr/bin/env bash
# Instruction counts of the bucketfs daemon per metadata operation, under valgrind's
# callgrind: create (4 KiB write + close), cold stat and unlink of N files, each phase
# dumped on its own. Unlike wall-clock cells, these counts do not move with the machine's
# noise, so they show what a change to bucketfs's own code bought. They count user space
# only: the kernel's side of FUSE and of the backing disk (most of an operation's time,
# see bench/RESULTS.md) is not in them.
#
#   bench/callgrind.sh [N]     N files (default 2000); prints a table, keeps the profiles
#                              in target/callgrind/ (callgrind_annotate FILE for details)
#
# Needs root (mount, drop_caches) and valgrind.
set -euo pipefail

n=${1:-2000}
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$repo/target/callgrind
bin=${BUCKETFS_BIN:-$repo/target/release/bucketfs}
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
[[ -n ${BUCKETFS_BIN:-} ]] || cargo build --release --quiet --manifest-path "$repo/Cargo.toml"

rm -rf "$out"
mkdir -p "$out/bucket" "$out/mnt"
"$bin" create "$out/bucket" >/dev/null
cleanup() {
    umount "$out/mnt" 2>/dev/null || true
    [[ -n ${daemon:-} ]] && wait "$daemon" 2>/dev/null || true
}
trap cleanup EXIT

# Instrumentation starts off: mounting and the first requests are not an operation's cost.
# --no-io-uring: valgrind does not follow FUSE's io_uring commands (the mount hangs at its
# first request), and /dev/fuse keeps these counts comparable with the earlier ones.
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/callgrind.out" \
    "$bin" mount "$out/bucket" "$out/mnt" --foreground --no-io-uring 2>"$out/daemon.log" &
daemon=$!
for _ in $(seq 600); do mountpoint -q "$out/mnt" && break; sleep 0.1; done
mountpoint -q "$out/mnt" || { echo "callgrind.sh: the mount did not come up" >&2; cat "$out/daemon.log" >&2; exit 1; }
mkdir "$out/mnt/data"

phase() {
    local name=$1
    callgrind_control --instr=on "$daemon" >/dev/null 2>&1
    python3 - "$out/mnt/data" "$n" "$name" <<'PY'
import os, sys
root, n, phase = sys.argv[1], int(sys.argv[2]), sys.argv[3]
paths = [os.path.join(root, "d%03d" % (i // 100), "f%05d" % i) for i in range(n)]
for i, p in enumerate(paths):
    if phase == "create":
        if i % 100 == 0:
            os.mkdir(os.path.dirname(p))
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, b"x" * 4096)
        os.close(fd)
    elif phase == "stat":
        os.stat(p)
    else:
        os.unlink(p)
PY
    sleep 1 # releases and publishes that close() left to the daemon
    callgrind_control --instr=off "$daemon" >/dev/null 2>&1
    callgrind_control --dump="$name" "$daemon" >/dev/null 2>&1
}

phase create
sync
echo 3 >/proc/sys/vm/drop_caches
phase stat
phase unlink
umount "$out/mnt"
wait "$daemon" || true
daemon=

printf '| Operation (%d files) | Instructions per file | Top functions (inclusive share) |\n|---|---:|---|\n' "$n"
for name in create stat unlink; do
    file=$(grep -l "^desc: Trigger: .*$name" "$out"/callgrind.out* | head -1)
    total=$(awk '/^totals:/ { print $2 }' "$file")
    # The whole listing is read (no head in the pipe): an early exit would kill
    # callgrind_annotate with SIGPIPE and, under pipefail, this script.
    top=$(callgrind_annotate --inclusive=yes "$file" 2>/dev/null |
        awk '/bucketfs::(fs|bucket)::/ && n < 3 {
                 share = $2; gsub(/[()]/, "", share)
                 name = $3; sub(/^[^:]*:/, "", name); sub(/^bucketfs::/, "", name)
                 if (name in seen) next; seen[name] = 1
                 printf "%s%s %s", (n ? "; " : ""), name, share; n++ }')
    printf '| %s | %s | %s |\n' "$name" "$((total / n))" "$top"
done
