#!/bin/bash
# How long other processes wait while one process writes big files: a prober stats a file and
# lists a folder every millisecond, through the same mount, while
#   randwrite: fio writes random 4 KiB blocks into an existing 1 GiB file for 10 s, then fsyncs
#              (bucketfs: past 4096 ranges the overlay is filled from the old version);
#   dd:        dd writes a new 1 GiB file with conv=fsync (dd closes a dup of its descriptor
#              before the first write);
#   overwrite: dd writes 1 GiB over an existing 1 GiB file (O_TRUNC), then closes;
#   rewrite:   dd rewrites an existing 1 GiB file in place (conv=notrunc), then closes
#              (bucketfs: an overlay changed all over).
# It prints the prober's median, p99 and longest wait per target and workload, and the writer's
# result. Latency, not throughput: bench/run.sh measures the throughput.
#
#   bench/stall.sh [--rounds N] [TARGET...]    TARGET: native, bindfs, or a bucketfs binary
#                                              (default: native bindfs target/release/bucketfs)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=2
if [ "${1:-}" = --rounds ]; then
    rounds=$2
    shift 2
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    cargo build --release --quiet
    targets=(native bindfs target/release/bucketfs)
fi
work=$PWD/target/bench-stall
rm -rf "$work"
mkdir -p "$work"

probe='
import os, sys, time
path, secs = sys.argv[1], float(sys.argv[2])
waits = []
end = time.perf_counter() + secs
while time.perf_counter() < end:
    t = time.perf_counter()
    os.stat(path)
    os.listdir(os.path.dirname(path))
    waits.append(time.perf_counter() - t)
    time.sleep(0.001)
waits.sort()
n = len(waits)
print("%.2f %.2f %.1f" % (waits[n // 2] * 1e3, waits[int(n * 0.99)] * 1e3, waits[-1] * 1e3))
'

mount_target() { # target backing mountpoint
    case $1 in
    native) ;;
    bindfs) bindfs -o big_writes "$2" "$3" ;;
    *)
        "$1" mount "$2" "$3" --foreground 2>>"$work/log" &
        for _ in $(seq 100); do
            mountpoint -q "$3" && return
            sleep 0.05
        done
        echo "bench/stall.sh: $1 did not mount" >&2
        exit 1
        ;;
    esac
}

unmount_target() { # target mountpoint
    [ "$1" = native ] || umount "$2"
    wait
}

settle() { # the disk is mounted with discard: let deletes finish before the next step
    sync
    sleep 5
}

run_one() { # target workload -> "median p99 max | writer"
    local t=$1 w=$2 dir=$work/run
    rm -rf "$dir"
    mkdir -p "$dir/m"
    case $t in
    native | bindfs) mkdir "$dir/b" ;;
    *) "$t" create "$dir/b" >/dev/null ;; # files put into a bucket's folder are its objects
    esac
    mkdir "$dir/b/d"
    echo hi >"$dir/b/d/small"
    case $w in
    randwrite) dd if=/dev/urandom of="$dir/b/big" bs=1M count=1024 status=none ;;
    overwrite | rewrite) dd if=/dev/zero of="$dir/b/big" bs=1M count=1024 status=none ;;
    esac
    settle
    local m=$dir/m
    if [ "$t" = native ]; then m=$dir/b; fi
    mount_target "$t" "$dir/b" "$dir/m"
    local secs=8 writer
    [ "$w" = randwrite ] && secs=14
    python3 -c "$probe" "$m/d/small" "$secs" >"$work/probe.out" &
    local p=$!
    sleep 1
    if [ "$w" = randwrite ]; then
        writer=$(fio --output-format=terse --name=w --ioengine=psync --fallocate=none \
            --filename="$m/big" --size=1024m --rw=randwrite --bs=4k --end_fsync=1 \
            --time_based --runtime=10 | awk -F';' '{print $49 " IOPS"}')
    else
        local s e conv=fsync
        [ "$w" = overwrite ] && conv=noerror
        [ "$w" = rewrite ] && conv=notrunc
        s=$(date +%s.%N)
        dd if=/dev/zero of="$m/big" bs=1M count=1024 conv=$conv status=none
        e=$(date +%s.%N)
        writer="$(echo "$s $e" | awk '{printf "%.0f MiB/s", 1024 / ($2 - $1)}')"
    fi
    wait $p
    unmount_target "$t" "$dir/m"
    echo "$(cat "$work/probe.out") | $writer"
}

echo "| Target | Workload | Round | Prober wait p50 (ms) | p99 (ms) | longest (ms) | Writer |"
echo "|---|---|---:|---:|---:|---:|---|"
for r in $(seq "$rounds"); do
    for w in randwrite dd overwrite rewrite; do
        for t in "${targets[@]}"; do
            read -r p50 p99 max _ writer < <(run_one "$t" "$w")
            echo "| $(basename "$t") | $w | $r | $p50 | $p99 | $max | $writer |"
        done
    done
done
rm -rf "$work/run"
