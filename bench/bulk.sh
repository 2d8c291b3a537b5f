#!/usr/bin/env bash
# The "bulk" replication cell of bench/run.sh on its own, for quick iterations:
# `bucketfs replicate SRC --existing --config FILE` of an unmounted bucket of
# plain files (version null) into an empty bucket, against `rsync -aX` of the
# same tree, both cold and timed up to the end of a `sync`.
#
#   bench/bulk.sh [--files N] [--mib M] [--reps R] [--only bucketfs|rsync] [--keep]
#
# Defaults are bench/run.sh's full cell: 10,000 files, 1024 MiB, 100 per
# directory. The input tree is generated once under target/bulk-bench/ and
# kept. Each repetition copies it into a fresh source bucket. Every cell waits
# 65 s after preparing its inputs: on ext4 without a journal, every inode
# create scans the inodes deleted in the last 60 s (ext4 ialloc's
# recently_deleted, RECENTCY_MIN; measured in bench/run.sh's header), so the
# `rm -rf` of the previous cell would otherwise slow down whichever side runs
# next. Needs root (drop_caches).
set -euo pipefail

files=10000 mib=1024 reps=1 only="" keep=0
while (($#)); do
    case $1 in
    --files) files=$2; shift 2 ;;
    --mib) mib=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "usage: $0 [--files N] [--mib M] [--reps R] [--only bucketfs|rsync] [--keep]" >&2; exit 2 ;;
    esac
done

here=$(cd "$(dirname "$0")/.." && pwd)
bin=$here/target/release/bucketfs
base=$here/target/bulk-bench
tree=$base/tree-$files-$mib
work=$base/work
[[ -x $bin ]] || { echo "build first: cargo build --release" >&2; exit 1; }
mkdir -p "$base"

cat >"$base/replication.yaml" <<'YAML'
Rules:
  - ID: all
    Status: Enabled
    Priority: 1
    Filter: {}
    DeleteMarkerReplication: {Status: Enabled}
    Destination: {Bucket: "arn:aws:s3:::replica"}
YAML

# Same generator as bench/run.sh: 100 files per directory, random bytes.
if [[ ! -d $tree ]]; then
    echo "generating $files files, $mib MiB in $tree" >&2
    python3 -c '
import os, sys
root, n, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) << 20
for i in range(n):
    d = os.path.join(root, "tree", "d%03d" % (i // 100))
    if i % 100 == 0:
        os.makedirs(d)
    with open(os.path.join(d, "f%05d" % i), "wb") as f:
        f.write(os.urandom(total // n + (total % n if i == 0 else 0)))
' "$tree.part" "$files" "$mib"
    mv "$tree.part" "$tree"
fi

summary() { # dir: "count bytes" of regular files, .bucketfs left out
    find "$1" -path "$1/.bucketfs" -prune -o -type f -printf '%s\n' |
        awk '{ n++; s += $1 } END { print n + 0, s + 0 }'
}
check() { # source copy what
    local want got
    want=$(summary "$1") got=$(summary "$2")
    [[ $got == "$want" ]] || { echo "$3: copy holds $got, source $want" >&2; return 1; }
    diff -r -q --exclude=.bucketfs "$1" "$2" >/dev/null || { echo "$3: contents differ" >&2; return 1; }
}
prepare() {
    rm -rf "$work"
    mkdir -p "$work/rsync-dest"
    "$bin" create "$work/src" >/dev/null
    "$bin" create "$work/replica" >/dev/null
    cp -a "$tree/." "$work/src/"
    sync
    sleep 65
    sync
    echo 3 >/proc/sys/vm/drop_caches
}
now() { echo "${EPOCHREALTIME/./}"; }
secs() { awk -v d=$(($2 - $1)) 'BEGIN { printf "%.2f", d / 1e6 }'; }

sides=(bucketfs rsync)
[[ -n $only ]] && sides=("$only")
for ((rep = 1; rep <= reps; rep++)); do
    for side in "${sides[@]}"; do
        prepare
        t0=$(now)
        case $side in
        bucketfs)
            "$bin" replicate "$work/src" --existing --config "$base/replication.yaml" \
                >"$base/replicate.out" 2>"$base/replicate.log"
            sync
            t1=$(now)
            check "$work/src" "$work/replica" "bucketfs"
            echo "rep $rep bucketfs: $(secs "$t0" "$t1") s ($(tail -n 1 "$base/replicate.out"))"
            ;;
        rsync)
            rsync -aX --exclude=/.bucketfs "$work/src/" "$work/rsync-dest/"
            sync
            t1=$(now)
            check "$work/src" "$work/rsync-dest" "rsync"
            echo "rep $rep rsync: $(secs "$t0" "$t1") s"
            ;;
        esac
    done
done
((keep)) || rm -rf "$work"
