#!/usr/bin/env bash
# bench/run.sh — bucketfs benchmark harness
# =========================================
#
#   bench/run.sh            full run, writes bench/RESULTS.md; long: an estimated 60
#                           minutes on 2 cores (the first full run took 41 before the
#                           waits for inode reuse below, which add about 24, while
#                           one-pass random reads save about 5), 10 minutes of it
#                           replication, plus a few minutes once to generate the
#                           1M-object bucket
#   bench/run.sh --quick    tiny sizes, under 2 minutes, writes target/bench-quick.md;
#                           CI runs it only to prove the harness works (no thresholds)
#   bench/run.sh --only meta,tree,overwrite
#                           only these workloads (names below; with or without
#                           --quick), writes target/bench-partial.md: a partial
#                           run never overwrites bench/RESULTS.md
#
# Every workload runs against these targets on the same disk:
#   native    a plain directory (the ceiling)
#   bindfs    `bindfs -o big_writes` of a plain directory (a thin FUSE passthrough:
#             the cost of FUSE itself)
#   rclone    `rclone mount --vfs-cache-mode writes` of a local directory (the
#             nearest existing "object store as a filesystem")
#   bucketfs  `bucketfs mount` of a fresh bucket
#   nullfs    the FUSE floor (bench/nullfs.rs): a filesystem that keeps its tree
#             in memory and does no disk work, answering the requests bucketfs
#             answers with the same options; what any FUSE filesystem here pays
#             at least. Metadata workload (create/stat/unlink) only.
# Targets are interleaved within each repetition (rotating the order of those
# that take part in the workload, and reversing it every other repetition, so
# that no target always follows the same one), so that drift on the machine
# hits all of them alike; each cell is a fresh mount, so no daemon carries
# caches from one repetition into the next, and the next cell starts once the
# disk is idle (what a target left behind, such as rclone's uploads after its
# last close and the removal of its cache copy, must not be timed in the cell
# after it). The table
# shows the median over the repetitions and its spread (±half the min–max
# range, as % of the median), and the ratios bucketfs/native and
# bucketfs/bindfs of the medians.
#
# Workloads (one function each, below): sequential write+read (fio), random 4k
# read/write with 1 and 4 jobs (fio), create/stat/unlink of many 4 KiB files,
# find and ls -lR over a large tree, extract + re-read of a source tree (crates
# from ~/.cargo/registry/src) and `rsync -a` of it into the target (a backup:
# each file written as a temporary, then renamed into place), overwrite of one byte of a big file (what a new
# version costs), and bucketfs alone on a bucket of 1,000,000 small objects:
# mount time and daemon RSS, before and after a find over it. Their names for
# --only: seq, rand, meta, tree, src, overwrite, million (and bulk, lag below).
#
# Replication workloads compare bucketfs with the usual tools instead, in a
# second table (bucketfs, the baseline, and bucketfs/baseline):
#   * bulk: `bucketfs replicate SRC --existing --config FILE` of an unmounted
#     bucket holding a tree of plain files (version null: 10,000 files, 1 GiB)
#     into an empty bucket, versus `rsync -aX` of the same tree (without
#     .bucketfs) into an empty directory. Both cold (caches dropped before),
#     both timed up to the end of a `sync` after them, both destinations
#     checked (file count, bytes, a few files compared) before the time counts.
#   * lag: a writer creates 4 KiB files at 200 and then 1,000 per second for
#     30 s (paced by sleeping until each write's slot), recording when each
#     close returned; a watcher lists the destination every 5 ms and notes
#     when each file appears; lag = appearance - close, p50 and p99 (5 ms
#     polling: up to 5 ms too high). bucketfs: written through a mount with
#     --config, watched in the destination bucket; also what `bucketfs
#     status` reports (Last-Modified to replica complete, its latest 2048).
#     lsyncd: default.rsync with delay = 0 from a plain directory to another,
#     same writer and watcher. A file that has not appeared 10 s (--quick;
#     60 s in a full run) after the writer finished fails the cell.
#   --quick: 200 files / 8 MiB, 3 s of writes, 2 repetitions of each.
#
# Method notes:
#   * Caches: every read step starts cold. The page cache is dropped (sync;
#     echo 3 > /proc/sys/vm/drop_caches) right before it, after anything that
#     could warm it (in bucketfs an open for writing copies the current
#     version into a staging file at open: a random read right after the
#     random write, without a drop, ran at 1.2M IOPS instead of 122k); the
#     report says if dropping was impossible. fio read jobs run --readonly
#     (strace: they open O_RDONLY anyway; --readonly makes sure fio never
#     lays out or rewrites the file) and never read a block twice: random
#     reads are one pass over the file's random map, each job its own slice,
#     capped at 20 s, never time-based. fio invalidates its file
#     (POSIX_FADV_DONTNEED) at the start of every pass, and through a FUSE
#     passthrough mount that advice does not reach the backing file (checked
#     with fincore): in the first full run the time-based reads sent native
#     back to the disk for every pass while bucketfs read its second and
#     later passes from memory (1.3M IOPS vs 70k). For the same reason fio's
#     POSIX_FADV_RANDOM/SEQUENTIAL hints would change native's readahead and
#     not bucketfs's (one pass over 256 MiB: native 46-65k IOPS with the
#     RANDOM hint, 105-138k without, bucketfs 89-131k either way), so read
#     jobs run with --fadvise_hint=0: every target gets the kernel's default
#     readahead. Each cell is a fresh mount: no daemon keeps a cache of its
#     own from one cell into the next.
#   * The cache below the guest: this VM's disk sits on a host cache that the
#     guest cannot drop, and that forgets blocks nobody touched in the last
#     minute or two. A cold read of such a file measures that host's storage,
#     not the filesystem under test. Two 1 GiB files written together, read
#     2 minutes later (1 job, 4 KiB, cold in the guest): one as it was, 4,781
#     IOPS, with block-layer request times at p99 3.6 ms and up to 168 ms; the
#     other after an O_DIRECT pass over it (130 MB/s; 1.1 GB/s over a file
#     the host holds), 37,936 IOPS. So the seq and rand read steps first read
#     their file's backing copy once with O_DIRECT (host_warm: that skips the
#     guest's page cache), then drop the guest's page cache: every target
#     starts cold in the guest and warm in the host. Likewise, before find and
#     ls -lR over the tree and over the million objects, and before the mount
#     of those, one find stats every backing entry (host_warm_inodes); before
#     bulk replication and its rsync, every source file is read
#     (host_warm_files). The other cold reads (stat after create, re-reading
#     an extracted tree) read what was written seconds before, which the host
#     holds anyway.
#   * The memory below the guest: this VM's balloon device takes free page
#     reporting (virtio_balloon, /sys/module/page_reporting): memory the guest
#     frees (dropped caches, deleted files' pages) goes back to the host within
#     seconds, at about 50 MiB/s, and the next use of each such page waits for
#     the host to fault it in again. A step that fills the page cache (any
#     write, any cold read) then measures how long the machine sat idle before
#     it: a 1 GiB write (python, 1 MiB writes, then fsync) on a plain ext4
#     directory, started 0, 2, 5 and 15 s after a drop_caches, spent 255, 617,
#     833 and 1,997 ms in its writes (0, 164, 280 and 772 MiB given back in
#     those waits), its fsync 351-631 ms each time. A mount before a step is
#     such a wait: the sixteenth run's sequential writes were 0.92x native, all
#     of it in the write phase. So the run pauses reporting (hold_guest_memory:
#     page_reporting_order above the largest order; restored at exit) and
#     faults in all free memory once first. Then the same write spent 201-217
#     ms in its writes whatever the wait, and interleaved, five each, native
#     203-209 ms, bucketfs 205-208 ms.
#   * Between steps: sync, then a pause (the root disk is mounted with
#     `discard`: freeing big files right before a timed step skews it).
#   * Inode reuse: this disk is ext4 without a journal (no /proc/fs/jbd2/vda-8).
#     ext4 then keeps a deleted inode from reuse for a while
#     (recently_deleted() in fs/ext4/ialloc.c) and every create scans past
#     such inodes one by one, so a step that deletes many files slows down
#     the creates of whichever target comes next. Measured here (python:
#     2,000 × 4 KiB files created, synced, deleted, synced, 2,000 more
#     created in the same directory): 7-20 µs per create with nothing
#     deleted; 86 µs 1.7 s after the deletion; 62 µs after 35 s (1 to 33 of
#     the 2,000 deleted inode numbers reused); 15 µs after 65 s (1,694
#     reused); in another run none were reused 58 s after, all 62 s after.
#     The window is about 60 s on this kernel (as ext4's RECENTCY_MIN), not
#     dirty_expire_centisecs/100 = 30 s, while the inode table block that
#     holds a deleted inode is clean; once a create writes into that block,
#     the window of the others in it is 360 s (RECENTCY_DIRTY adds 300). So
#     creates into a group where 10,000 files were just deleted can scan for
#     minutes: native 310 µs per create 62 s after such a deletion (synced),
#     45 % of the machine's samples in recently_deleted(), 30 µs without it
#     (2026-12-08). Hence meta runs in two passes: every target's and
#     repetition's create first, then each stat and unlink on a fresh mount,
#     so that no create follows another cell's unlink. So in full mode every
#     cell that creates files (all but tree) starts at least window + 5 s
#     after the last step that deleted many inodes: meta cells (the unlink
#     step), bucketfs cells of src, bulk and lag (publishing a version
#     removes its records, replication its queue entries), removal of
#     scratch. The scratch of a finished workload and of the previous bulk
#     repetition or lag cell is renamed into $work/trash, not deleted (a
#     rename frees no inode), and deleted in a wait that happens anyway (which
#     then waits the whole window) or at the end of the run. The window is
#     max(60, dirty_expire_centisecs/100) s, only on ext4 without a journal;
#     --quick never waits. Creates on a bucketfs mount also pay for
#     bucketfs's own deletions within the cell: that is its real cost on
#     this disk, not the harness's.
#   * Inputs are prepared directly in each target's backing directory before
#     mounting (a plain file per key is a valid bucket), so preparation is not
#     timed through FUSE and every target reads the same kind of data.
#   * Throughputs and times are wall clock of the whole command, closes and
#     fsyncs included: closing is what publishes a version in bucketfs.
#   * rclone writes to its cache and uploads after --vfs-write-back (5 s):
#     its write numbers do not include reaching the backing directory.
#
# Environment: BUCKETFS_BIN (default: release build; --quick uses whatever
# build exists and skips bucketfs when there is none), BENCH_REPEATS,
# BENCH_TARGETS (e.g. "native bucketfs"), BENCH_WORK (scratch, default
# target/bench-work), BENCH_CACHE (the 1M-object bucket, generated once,
# default ~/.cache/bucketfs-bench), BENCH_INODE_WAIT (seconds, overrides the
# wait for inode reuse). Needs root (mounts, drop_caches).
set -euo pipefail
export LC_ALL=C # EPOCHREALTIME and printf need '.' as the decimal point

cd "$(dirname "$0")/.."
repo=$PWD

all_workloads=(seq rand meta tree src overwrite million bulk lag)
usage() { echo "usage: $0 [--quick] [--only WORKLOAD,...] (workloads: ${all_workloads[*]})" >&2; }
quick=0
only=
while (($#)); do
    case $1 in
    --quick) quick=1 ;;
    --only=*) only=${1#--only=} ;;
    --only)
        (($# >= 2)) || {
            usage
            exit 2
        }
        only=$2
        shift
        ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        usage
        exit 2
        ;;
    esac
    shift
done
# The workloads this run measures: all of them, or those --only names.
declare -A selected=()
if [[ -n $only ]]; then
    IFS=, read -r -a names <<<"$only"
    for wl in "${names[@]}"; do
        if [[ " ${all_workloads[*]} " != *" $wl "* ]]; then
            echo "unknown workload '$wl'" >&2
            usage
            exit 2
        fi
        selected[$wl]=1
    done
    ((${#selected[@]})) || {
        usage
        exit 2
    }
else
    for wl in "${all_workloads[@]}"; do selected[$wl]=1; done
fi
wanted() { [[ -n ${selected[$1]:-} ]]; }

# ---------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------
if ((quick)); then
    reps=${BENCH_REPEATS:-3}
    repl_reps=${BENCH_REPEATS:-2} # replication: 10 cells of seconds each
    seq_mib=16
    rand_mib=16
    rand_limit=(--io_size=2m)  # writes: a fixed amount of I/O, seconds matter here
    rand_read_limit=(--io_size=2m) # reads: per job, within its slice
    meta_files=300
    tree_entries=2000
    overwrite_mib=16
    million=2000
    src_crates=(syn)
    bulk_files=200
    bulk_mib=8
    lag_s=3
    lag_grace_s=10 # how long after the last write a missing file may still appear
    settle_s=0
    report=$repo/target/bench-quick.md
else
    reps=${BENCH_REPEATS:-3}
    repl_reps=$reps
    seq_mib=1024
    rand_mib=1024
    rand_limit=(--time_based --runtime=20)
    rand_read_limit=(--runtime=20) # one pass at most, never time-based
    meta_files=10000
    tree_entries=100000
    overwrite_mib=1024
    million=1000000
    src_crates=(libc syn windows-sys linux-raw-sys rustix)
    bulk_files=10000
    bulk_mib=1024
    lag_s=30
    lag_grace_s=60
    settle_s=5
    report=$repo/bench/RESULTS.md
fi
[[ -z $only ]] || report=$repo/target/bench-partial.md
work=${BENCH_WORK:-$repo/target/bench-work}
cache=${BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bucketfs-bench}

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------
# Preconditions, tools, the bucketfs binary
# ---------------------------------------------------------------------------
[[ $(id -u) -eq 0 ]] || die "run as root (FUSE mounts for the harness, drop_caches)"
[[ -c /dev/fuse ]] || die "/dev/fuse is missing: cannot mount anything"
scripts/ensure-packages.sh fuse3 fio bindfs rclone rsync lsyncd
# The machine's python3 may not be Debian's (pyenv): ask apt only without one.
command -v python3 >/dev/null || scripts/ensure-packages.sh python3

if [[ -n ${BUCKETFS_BIN:-} ]]; then
    bucketfs_bin=$BUCKETFS_BIN
elif ((quick)); then
    # Quick mode proves the harness, not bucketfs's speed: any build will do
    # (the newest, so a stale release build doesn't hide today's code), and
    # none at all only drops the bucketfs column.
    bucketfs_bin=
    for candidate in target/release/bucketfs target/debug/bucketfs; do
        if [[ -x $candidate && (-z $bucketfs_bin || $candidate -nt $bucketfs_bin) ]]; then
            bucketfs_bin=$candidate
        fi
    done
else
    log "cargo build --release"
    cargo build --release --locked
    bucketfs_bin=target/release/bucketfs
fi
[[ -z $bucketfs_bin || $bucketfs_bin == /* ]] || bucketfs_bin=$repo/$bucketfs_bin
# The FUSE floor (bench/nullfs.rs): the same way as bucketfs's binary.
if ((quick)); then
    nullfs_bin=
    for candidate in target/release/examples/nullfs target/debug/examples/nullfs; do
        if [[ -x $candidate && (-z $nullfs_bin || $candidate -nt $nullfs_bin) ]]; then
            nullfs_bin=$repo/$candidate
        fi
    done
else
    cargo build --release --locked --example nullfs
    nullfs_bin=$repo/target/release/examples/nullfs
fi

targets=()
for t in ${BENCH_TARGETS:-native bindfs rclone bucketfs nullfs}; do
    if [[ $t == bucketfs && ! -x $bucketfs_bin ]]; then
        log "no bucketfs binary (${bucketfs_bin:-none found}): skipping the bucketfs target"
        continue
    fi
    if [[ $t == nullfs && ! -x $nullfs_bin ]]; then
        log "no nullfs binary (${nullfs_bin:-none found}): skipping the FUSE floor"
        continue
    fi
    targets+=("$t")
done
has_bucketfs=0
[[ " ${targets[*]} " == *" bucketfs "* ]] && has_bucketfs=1

# ---------------------------------------------------------------------------
# Scratch space, results files, cleanup
# ---------------------------------------------------------------------------
declare -A daemon_pid=() # target -> pid of its FUSE daemon while mounted

unmount_all() {
    local m
    # Deepest first, in case anything got nested.
    for m in $(findmnt -rn -o TARGET | grep -F "$work/" | sort -r || true); do
        umount "$m" 2>/dev/null || umount -l "$m" || true
    done
}
# Daemons and helpers of the replication workloads (lsyncd, a foreground
# bucketfs, writer, watcher) start inside a cell's background subshell, so
# each leaves its pid in $work/pids: whoever ends first (the cell, or this
# script on any exit path) stops them all.
track() { echo "$2" >"$work/pids/$1.pid"; }
repl_teardown() {
    local f pid m i
    for f in "$work"/pids/*.pid; do
        [[ -e $f && $f != */bucketfs.pid ]] || continue
        pid=$(<"$f")
        kill "$pid" 2>/dev/null || true
    done
    # A bucketfs daemon ends when its mount goes away.
    for m in $(findmnt -rn -o TARGET | grep -F "$work/repl/" | sort -r || true); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    for f in "$work"/pids/*.pid; do
        [[ -e $f ]] || continue
        pid=$(<"$f")
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill "$pid" 2>/dev/null || true
        rm -f "$f"
    done
}
cleanup() {
    local rc=$?
    [[ -n ${child:-} ]] && kill "$child" 2>/dev/null
    [[ -d $work/pids ]] && repl_teardown
    unmount_all
    release_guest_memory
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

unmount_all
old_work=0
[[ -e $work ]] && old_work=1
rm -rf "$work"
mkdir -p "$work/logs" "$work/pids" "$work/trash" "$cache" "$(dirname "$report")"
metrics=$work/metrics.tsv   # key, label, unit, which way is better
results=$work/results.tsv   # key, target, rep, value
failures=$work/failures.txt # one line per cell that failed
: >"$metrics"
: >"$results"
: >"$failures"
: >"$work/rclone.conf" # rclone wants a config file; a local path needs none

# Declares a metric (table row), in the order the table shows them. With a
# fifth argument, the baseline it compares bucketfs with (rsync, lsyncd), the
# row goes to the replication table.
metric() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:-}" >>"$metrics"; }
# Records one measurement for the current target and repetition.
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$cur_target" "$cur_rep" "$2" >>"$results"; }

# Runs "$@" and sets $elapsed to its wall time in seconds.
timed() {
    local t0=${EPOCHREALTIME/./}
    "$@"
    local t1=${EPOCHREALTIME/./}
    elapsed=$(awk -v d=$((t1 - t0)) 'BEGIN { printf "%.6f", d / 1e6 }')
}
# A listing that misses entries would be fast for the wrong reason.
check_count() { # listing-file expected-lines what
    local got
    got=$(wc -l <"$1")
    if ((got != $2)); then
        log "$cur_target: $3 listed $got entries, expected $2"
        return 1
    fi
}
# Some tools report errors and still exit 0 (ls -l does, for a failing
# getxattr): a step that printed errors has no valid time.
check_quiet() { # stderr-file what
    if [[ -s $1 ]]; then
        log "$cur_target: $2 printed $(wc -l <"$1") error line(s), e.g.:"
        head -n 3 "$1" >&2
        return 1
    fi
}
per_sec() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.3f", n / s }'; }

# Checked once here: drop_caches runs in subshells, which can't report back.
caches_dropped=yes
if ! (echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null; then
    caches_dropped="NO (/proc/sys/vm/drop_caches not writable): reads may be warm"
    log "warning: cannot drop the page cache; read numbers will be warm"
fi
drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
}
settle() {
    sync
    sleep "$settle_s"
}

# The memory below the guest (see the header): stop the guest from handing its free
# memory back to the host while the run lasts, and fault all of it in once now, so
# that no step pays the host for pages it gets back. A free block is reported when
# its order is at least page_reporting_order; the number of orders the buddy
# allocator has (columns of /proc/buddyinfo) is one more than the largest, so at that
# value nothing qualifies. cleanup() puts the old value back.
reporting_knob=/sys/module/page_reporting/parameters/page_reporting_order
reporting_saved= # the value to put back, while the run holds the memory
guest_memory="no free page reporting to the host here: nothing to hold"
hold_guest_memory() {
    [[ -f $reporting_knob ]] || return 0
    local orders old
    old=$(<"$reporting_knob")
    orders=$(awk '/zone/ { print NF - 4; exit }' /proc/buddyinfo)
    if ! echo "$orders" >"$reporting_knob" 2>/dev/null; then
        guest_memory="free page reporting to the host left on (could not set page_reporting_order): writes and cold reads may pay for pages the host took back"
        log "warning: $guest_memory"
        return 0
    fi
    reporting_saved=$old
    drop_caches
    # Quick mode proves the harness: a token amount. 1 GiB stays untouched for the rest.
    local mib
    if ((quick)); then mib=256; else mib=$(awk '/^MemFree:/ { print int($2 / 1024) - 1024; exit }' /proc/meminfo); fi
    ((mib > 0)) || mib=0
    log "faulting in ${mib} MiB of free memory once (free page reporting paused)"
    local t0=$SECONDS
    ((mib == 0)) || python3 - "$mib" <<'EOF'
import mmap, sys
size = int(sys.argv[1]) << 20
chunk = bytes(1 << 20)
m = mmap.mmap(-1, size)
for _ in range(size >> 20):
    m.write(chunk)  # writing allocates every page, zeros or not
m.close()
EOF
    guest_memory="free page reporting to the host paused for the run (page_reporting_order $old → $orders, restored after), ${mib} MiB of free memory faulted in once beforehand ($((SECONDS - t0)) s)"
}
release_guest_memory() {
    if [[ -n $reporting_saved ]]; then
        echo "$reporting_saved" >"$reporting_knob" 2>/dev/null || true
        reporting_saved=
    fi
}
# Reads the current target's backing copies of data/$1 once with O_DIRECT: the
# host's cache of this VM's disk then holds the file and the guest's page cache
# does not (see the header on caches). rclone may read from its cache copy.
host_warm() {
    local f
    {
        echo "$(backing_of "$cur_target")/data/$1"
        if [[ $cur_target == rclone ]]; then
            find "$work/t/rclone/cache" -type f -path "*/data/$1" 2>/dev/null || true
        fi
    } | while read -r f; do
        # No O_DIRECT (tmpfs): then there is no disk cache below to warm.
        if [[ -f $f ]]; then dd if="$f" of=/dev/null bs=1M iflag=direct status=none 2>/dev/null || true; fi
    done
}
# The same for steps that read many files, before the caller drops the guest's page cache:
# the bytes of every file under the folders given, or only the inodes and folders (what
# find and ls -lR read).
host_warm_files() { find "$@" -type f -print0 | xargs -0 -r cat >/dev/null; }
host_warm_inodes() { find "$@" -printf '%s\n' >/dev/null; }

# ext4 without a journal does not reuse an inode for a while after it was
# deleted: every create scans past each such inode (see the header). A timed
# step that creates files must start once the inodes of the last big deletion
# are reusable again. Measured here: longer than 35 s, shorter than 62 s,
# ext4's RECENTCY_MIN of 60 s; dirty_expire_centisecs/100 if that is longer.
# Only in full mode, and only where it applies (ext4, no jbd2 entry for the
# disk); BENCH_INODE_WAIT (seconds) overrides.
scratch_dev=$(findmnt -n -o SOURCE -T "$work")
scratch_fs=$(findmnt -n -o FSTYPE -T "$work")
inode_window_s=$(awk '{ w = int($1 / 100); print (w > 60 ? w : 60) }' /proc/sys/vm/dirty_expire_centisecs)
if [[ $scratch_fs == ext4 && ! -e /proc/fs/jbd2/${scratch_dev##*/}-8 ]]; then
    inode_note="$scratch_dev is ext4 without a journal: every create skips, one by one, the inodes deleted in the last ${inode_window_s} s (360 s once a create writes into their inode table block; meta's creates therefore all come before its unlinks)"
    inode_wait_s=$((inode_window_s + 5))
    if ((quick)); then inode_wait_s=0; fi
    inode_wait_s=${BENCH_INODE_WAIT:-$inode_wait_s}
    ((inode_wait_s)) || inode_note+="; not waited for (--quick or BENCH_INODE_WAIT=0): creates may be slowed by earlier deletions"
else
    inode_note="$scratch_dev is $scratch_fs$([[ $scratch_fs == ext4 ]] && echo " with a journal"): deleted inodes are reused at once, no wait needed"
    inode_wait_s=${BENCH_INODE_WAIT:-0}
fi
inode_waited=0         # seconds spent waiting, for the report
cur_phase=all          # meta runs in two passes, "create" and "remove" (run_workload)
deleted_at=-1000000    # $SECONDS when many inodes were last deleted
((old_work)) && deleted_at=$SECONDS
note_deletions() { deleted_at=$SECONDS; }
# Cells that delete many inodes: meta (its unlink step), and bucketfs where
# it writes many files (publishing a version removes its records, replication
# its queue entries).
frees_inodes() { # workload target
    [[ ($1 == meta && $cur_phase == remove) || ($2 == bucketfs && " src bulk lag " == *" $1 "*) ]]
}
# Takes scratch directories out of the way without deleting them (a rename
# frees no inode): what holds many files waits in $work/trash until a pause
# that happens anyway (wait_inodes) or the end of the run; the rest (a few
# big files) goes now.
retire() { # dir...
    local d
    for d in "$@"; do
        [[ -e $d ]] || continue
        if ((inode_wait_s)) && (($(find "$d" | head -n 1001 | wc -l) > 1000)); then
            mv "$d" "$(mktemp -d "$work/trash/XXXXXX")/"
        else
            rm -rf "$d"
        fi
    done
}
# Before a timed step that creates files: waits until the last big deletion
# is $inode_wait_s old. When it has to wait anyway, it deletes the retired
# scratch first and then waits the whole window.
wait_inodes() {
    local left=$((deleted_at + inode_wait_s - SECONDS))
    ((inode_wait_s && left > 0)) || return 0
    if [[ -n $(ls -A "$work/trash") ]]; then
        log "deleting retired scratch ($(du -sh "$work/trash" | cut -f1)) during the wait"
        find "$work/trash" -mindepth 1 -delete
        sync
        note_deletions
        left=$inode_wait_s
    fi
    log "waiting ${left}s: the disk has recently deleted inodes (${inode_window_s}s window)"
    sleep "$left"
    inode_waited=$((inode_waited + left))
}

# ---------------------------------------------------------------------------
# Targets: backing directory, mount, unmount
# ---------------------------------------------------------------------------
backing_of() { echo "$work/t/$1/backing"; }
mnt_of() { echo "$work/t/$1/mnt"; }
# The directory a workload uses: a subdirectory, never the mount root, so
# that bucketfs's virtual .versions/ tree stays out of find and ls -R.
dir_of() {
    if [[ $1 == native ]]; then echo "$(backing_of "$1")/data"; else echo "$(mnt_of "$1")/data"; fi
}

# An empty backing directory (for bucketfs: an empty bucket) plus data/,
# where prepare_* functions put their inputs.
fresh_backing() {
    local t=$1 b
    b=$(backing_of "$t")
    rm -rf "$work/t/$t"
    mkdir -p "$(mnt_of "$t")"
    if [[ $t == bucketfs ]]; then
        "$bucketfs_bin" create "$b" >/dev/null
    else
        mkdir -p "$b"
    fi
    mkdir -p "$b/data"
}

# Waits (up to 60 s) until $1 is a mountpoint that answers.
wait_mounted() {
    local i
    for ((i = 0; i < 6000; i++)); do
        if mountpoint -q "$1"; then
            stat "$1" >/dev/null && return 0
        fi
        kill -0 "$2" 2>/dev/null || return 1 # the daemon died
        sleep 0.01
    done
    return 1
}

# The daemons run in the foreground as our own background jobs: we know their
# pids (RSS, waiting for a clean exit) whatever each one's daemon mode does.
mount_target() {
    local t=$1 b m pid
    [[ $t == native ]] && return 0
    b=$(backing_of "$t")
    m=$(mnt_of "$t")
    case $t in
    bindfs) bindfs -f -o big_writes "$b" "$m" ;;
    rclone)
        rclone mount "$b" "$m" --config "$work/rclone.conf" \
            --vfs-cache-mode writes --cache-dir "$work/t/rclone/cache"
        ;;
    bucketfs) "$bucketfs_bin" mount "$b" "$m" --foreground ;;
    nullfs) "$nullfs_bin" "$m" "$b/passthrough-scratch" ;;
    esac >>"$work/logs/$t.log" 2>&1 &
    pid=$!
    daemon_pid[$t]=$pid
    if ! wait_mounted "$m" "$pid"; then
        log "$t did not mount $m (log: $work/logs/$t.log)"
        return 1
    fi
}

unmount_target() {
    local t=$1 m pid i
    [[ $t == native ]] && return 0
    m=$(mnt_of "$t")
    pid=${daemon_pid[$t]}
    # rclone may still be uploading right after the last close: retry a plain
    # umount before forcing it.
    for ((i = 0; i < 50; i++)); do
        mountpoint -q "$m" || break
        umount "$m" 2>/dev/null && break
        sleep 0.2
    done
    if mountpoint -q "$m"; then umount -l "$m"; fi
    # The next cell must not compete with a daemon still flushing.
    for ((i = 0; i < 600; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then kill "$pid"; fi
    wait "$pid" 2>/dev/null || true
    unset "daemon_pid[$t]"
}

rss_mib() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

# One cell: one workload, on one target, one repetition, on a fresh mount.
# The measurement runs as a background job so that set -e still applies inside
# it (it would not inside `if f` or `f ||`), and a failure is recorded without
# ending the whole run.
run_cell() {
    local wl=$1 rc=0
    cur_target=$2
    cur_rep=$3
    # tree only reads, and meta's second pass only stats and removes: nothing
    # to wait for.
    [[ $wl == tree || $cur_phase == remove ]] || wait_inodes
    if mount_target "$cur_target"; then
        # A bucketfs bucket may not show an empty directory: make sure.
        {
            mkdir -p "$(dir_of "$cur_target")"
            "measure_$wl" "$(dir_of "$cur_target")"
        } &
        child=$!
        wait "$child" || rc=$?
        child=
    else
        rc=mount
    fi
    if [[ $rc != 0 ]]; then
        log "FAILED: $wl on $cur_target (repetition $cur_rep, exit $rc)"
        echo "$wl on $cur_target, repetition $cur_rep: exit $rc" >>"$failures"
    fi
    unmount_target "$cur_target"
    if frees_inodes "$wl" "$cur_target"; then note_deletions; fi
    settle
    wait_disk_idle
}

# Waits (at most 30 s) until the scratch disk has done fewer than 64 writes and
# discards in a second with nothing in flight: work a target left behind (rclone
# uploads after its last close and then removes its cache copy) must not be
# timed in the next cell.
disk_idle_waited=0
wait_disk_idle() {
    local stat=/sys/class/block/${scratch_dev##*/}/stat a b i
    [[ -r $stat ]] && ((settle_s)) || return 0 # not in --quick
    for ((i = 0; i < 30; i++)); do
        read -ra a <"$stat"
        sleep 1
        read -ra b <"$stat"
        if ((b[8] == 0 && (b[4] - a[4]) + (b[11] - a[11]) < 64)); then
            return 0
        fi
        disk_idle_waited=$((disk_idle_waited + 1))
    done
}

# Whether target $1 takes part in workload $2: the FUSE floor keeps nothing on
# disk, so only the metadata workload (which makes its own files) means
# anything on it.
takes_part() { [[ ($1 != nullfs || $2 == meta) && ($1 != nullfs || $cur_phase != remove) ]]; }

# Prepares every target, then runs the repetitions, rotating the target order.
run_workload() {
    local wl=$1 t rep i n=${#targets[@]}
    log "workload: $wl"
    for t in "${targets[@]}"; do
        takes_part "$t" "$wl" || continue
        fresh_backing "$t"
        if declare -F "prepare_$wl" >/dev/null; then
            "prepare_$wl" "$(backing_of "$t")/data"
        fi
    done
    settle
    # Rotated among the targets that take part, and reversed every other
    # repetition: a rotation alone keeps every target right after the same
    # one, which then hands it whatever it leaves behind each time.
    local part=() j
    # meta: every create, then every stat and unlink (measure_meta).
    local phases=(all) phase
    [[ $wl == meta ]] && phases=(create remove)
    for phase in "${phases[@]}"; do
        cur_phase=$phase
        part=()
        for t in "${targets[@]}"; do
            if takes_part "$t" "$wl"; then part+=("$t"); fi
        done
        n=${#part[@]}
        for ((rep = 1; rep <= reps; rep++)); do
            for ((i = 0; i < n; i++)); do
                if ((rep % 2)); then j=$(((i + rep) % n)); else j=$(((n - 1 - i + rep) % n)); fi
                run_cell "$wl" "${part[j]}" "$rep"
            done
        done
    done
    cur_phase=all
    retire "$work/t"
    settle
}

# Helpers for inputs: a file of $2 MiB of incompressible data.
make_file() { head -c "$(($2 << 20))" /dev/urandom >"$1"; }

fio_run() { # json-output-file, fio arguments...
    local out=$1
    shift
    fio --output-format=json --output="$out" --name=bench --ioengine=psync \
        --fallocate=none --group_reporting "$@"
}
fio_iops() { # json file, read|write
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["jobs"][0][sys.argv[2]]["iops"])' "$1" "$2"
}

# ---------------------------------------------------------------------------
# Workloads: prepare_NAME BACKING_DATA_DIR (untimed, unmounted), and
# measure_NAME DIR (DIR on the mounted target; records its metrics).
# ---------------------------------------------------------------------------

# Options of every fio read job (see the header on caches).
fio_read=(--readonly --fadvise_hint=0)

# Sequential write of one big file with fsync at the end, then a cold read.
measure_seq() {
    local f=$1/seq.$cur_rep
    timed fio_run "$work/fio-$cur_target.json" --filename="$f" --rw=write --bs=1M \
        --size="${seq_mib}m" --end_fsync=1
    record seq_write "$(per_sec "$seq_mib" "$elapsed")"
    host_warm "seq.$cur_rep"
    drop_caches
    timed fio_run "$work/fio-$cur_target.json" --filename="$f" "${fio_read[@]}" --rw=read --bs=1M \
        --size="${seq_mib}m"
    record seq_read "$(per_sec "$seq_mib" "$elapsed")"
}

# Random 4k reads, then writes (fsync at end), on one big existing file.
# Reads are cold: caches dropped right before (the writes of the previous
# round opened the file for writing: in bucketfs that copies it, warm), one
# pass at most, each of the jobs over its own slice of the file, so that no
# block is read twice (see the header on caches).
prepare_rand() { make_file "$1/rand.dat" "$rand_mib"; }
measure_rand() {
    local f=$1/rand.dat jobs slice json=$work/fio-$cur_target.json
    for jobs in 1 4; do
        slice=$((rand_mib / jobs))
        host_warm rand.dat
        drop_caches
        fio_run "$json" --filename="$f" "${fio_read[@]}" --rw=randread --bs=4k --numjobs="$jobs" \
            --size="${slice}m" --offset_increment="${slice}m" "${rand_read_limit[@]}"
        record "randread_j$jobs" "$(fio_iops "$json" read)"
        fio_run "$json" --filename="$f" --size="${rand_mib}m" --rw=randwrite --bs=4k \
            --numjobs="$jobs" --end_fsync=1 "${rand_limit[@]}"
        record "randwrite_j$jobs" "$(fio_iops "$json" write)"
    done
}

# create / stat / unlink of many 4 KiB files, 100 per directory. Python, not
# a shell loop: a fork per file would measure fork, not the filesystem.
meta_py='
import os, sys, time
root, n, phase = sys.argv[1], int(sys.argv[2]), sys.argv[3]
paths = [os.path.join(root, "d%03d" % (i // 100), "f%05d" % i) for i in range(n)]
data = b"x" * 4096
t = time.perf_counter()
if phase == "create":
    for i, p in enumerate(paths):
        if i % 100 == 0:
            os.mkdir(os.path.dirname(p))
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
elif phase == "stat":
    for p in paths:
        os.stat(p)
elif phase == "unlink":
    for i, p in enumerate(paths):
        os.unlink(p)
        if i % 100 == 99 or i == n - 1:
            os.rmdir(os.path.dirname(p))
print("%.6f" % (time.perf_counter() - t))
'
# In two passes (run_workload): every cell's create first, then, each on a
# fresh mount, every cell's stat and unlink, so that no create follows another
# cell's unlink (see "Inode reuse" in the header). The FUSE floor keeps its
# tree in memory, which a new mount has lost: it does all three steps at once.
measure_meta() {
    local d=$1/meta.$cur_rep s
    if [[ $cur_phase != remove ]]; then
        mkdir -p "$d"
        s=$(python3 -c "$meta_py" "$d" "$meta_files" create)
        record meta_create "$s"
        [[ $cur_phase == create && $cur_target != nullfs ]] && return 0
    fi
    drop_caches
    s=$(python3 -c "$meta_py" "$d" "$meta_files" stat)
    record meta_stat "$s"
    s=$(python3 -c "$meta_py" "$d" "$meta_files" unlink)
    record meta_unlink "$s"
}

# find and ls -lR over a big tree (100 directories), each from cold caches.
prepare_tree() {
    python3 -c '
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
per_dir = max(1, n // 100)
for i in range(n):
    d = os.path.join(root, "tree", "d%03d" % (i // per_dir))
    if i % per_dir == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%06d" % i), "wb") as f:
        f.write(b"x")
' "$1" "$tree_entries"
}
measure_tree() {
    local err=$work/stderr-$cur_target.txt backing
    backing=$(backing_of "$cur_target")/data/tree
    host_warm_inodes "$backing"
    drop_caches
    timed find "$1/tree" >"$work/find-$cur_target.txt" 2>"$err"
    check_quiet "$err" find
    check_count "$work/find-$cur_target.txt" $((tree_entries + 101)) "find" # + tree/ and 100 dirs
    record tree_find "$elapsed"
    host_warm_inodes "$backing"
    drop_caches
    timed ls -lR "$1/tree" >/dev/null 2>"$err"
    check_quiet "$err" "ls -lR"
    record tree_ls "$elapsed"
}

# Extract a tarball of real crate sources, then re-read every file cold.
# (cat, not `tar -cf /dev/null`: GNU tar skips reading when writing to
# /dev/null.) Then rsync -a the same tree into the target from a plain copy
# (warm: the cell measures the destination), as a backup would; and again from
# a copy owned by another user (nobody), as root's backup of a home directory
# does: rsync writes each file as root, then hands it to its owner.
src_tar=$work/src.tar
src_tree=$work/src-tree
src_tree_other=$work/src-tree-nobody
read_all() { find "$1" -type f -print0 | xargs -0 cat >/dev/null; }
measure_src() {
    local d=$1/src.$cur_rep
    mkdir -p "$d"
    timed tar -xf "$src_tar" -C "$d"
    record src_extract "$elapsed"
    drop_caches
    timed read_all "$d"
    record src_reread "$elapsed"
    read_all "$src_tree"
    timed rsync -a "$src_tree/" "$1/rsync.$cur_rep/"
    record src_rsync "$elapsed"
    read_all "$src_tree_other"
    timed rsync -a "$src_tree_other/" "$1/rsync-other.$cur_rep/"
    record src_rsync_other "$elapsed"
}

# Overwrite one byte in the middle of a big file and close it: in bucketfs
# that publishes a new version of the whole object.
prepare_overwrite() { make_file "$1/big.dat" "$overwrite_mib"; }
measure_overwrite() {
    timed dd if=/dev/zero of="$1/big.dat" bs=1 count=1 seek=$((overwrite_mib << 19)) \
        conv=notrunc status=none
    record overwrite_1byte "$elapsed"
}

# bucketfs only (plus native find for scale): mount time and daemon RSS on a
# bucket of $million small objects, generated once into the cache and reused.
million_bucket=$cache/million-$million
generate_million() {
    [[ -e $million_bucket/.complete ]] && return 0
    log "generating $million objects in $million_bucket (once; reused by later runs)"
    rm -rf "$million_bucket"
    python3 -c '
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "objects", "d%04d" % (i // 1000))
    if i % 1000 == 0:
        os.makedirs(d)
    with open(os.path.join(d, "o%07d" % i), "wb") as f:
        f.write(b"object %d\n" % i)
' "$million_bucket/bucket" "$million"
    touch "$million_bucket/.complete"
    sync
}
run_million() {
    local rep rc=0 b=$million_bucket/bucket
    log "workload: $million objects"
    generate_million
    # objects/, its directories of 1000, the objects.
    million_listing=$((1 + (million + 999) / 1000 + million))
    cur_target=native
    for ((rep = 1; rep <= reps; rep++)); do
        cur_rep=$rep
        host_warm_inodes "$b/objects"
        drop_caches
        timed find "$b/objects" >"$work/find-million.txt"
        check_count "$work/find-million.txt" "$million_listing" "find over the generated objects"
        record million_find "$elapsed"
    done
    ((has_bucketfs)) || return 0
    # A fresh .bucketfs each run: a stale one from an older build could be
    # in an outdated format, and `create` refuses a non-empty directory.
    rm -rf "$b/.bucketfs" "$work/empty-bucket"
    "$bucketfs_bin" create "$work/empty-bucket" >/dev/null
    mv "$work/empty-bucket/.bucketfs" "$b/"
    # Background job, as in run_cell: set -e inside, failure recorded.
    million_bucketfs "$b" "$work/million-mnt" &
    child=$!
    wait "$child" || rc=$?
    child=
    if ((rc != 0)); then
        log "FAILED: $million objects on bucketfs (exit $rc)"
        echo "$million objects on bucketfs: exit $rc" >>"$failures"
        umount "$work/million-mnt" 2>/dev/null || true
    fi
}
million_bucketfs() {
    local b=$1 m=$2 rep pid
    mkdir -p "$m"
    cur_target=bucketfs
    for ((rep = 1; rep <= reps; rep++)); do
        cur_rep=$rep
        settle
        host_warm_inodes "$b"
        drop_caches
        timed mount_million "$b" "$m"
        pid=$million_pid
        if ((rep == 1)); then
            record million_mount_first "$elapsed"
        else
            record million_mount "$elapsed"
        fi
        record million_rss_mount "$(rss_mib "$pid")"
        host_warm_inodes "$b/objects"
        drop_caches
        timed find "$m/objects" >"$work/find-million.txt"
        check_count "$work/find-million.txt" "$million_listing" "find over the bucket"
        record million_find "$elapsed"
        record million_rss_find "$(rss_mib "$pid")"
        umount "$m"
        wait "$pid"
    done
}
# Mount time = until the mount answers a stat of its root.
mount_million() {
    "$bucketfs_bin" mount "$1" "$2" --foreground >>"$work/logs/million.log" 2>&1 &
    million_pid=$!
    wait_mounted "$2" "$million_pid" || die "bucketfs did not mount the $million-object bucket"
}

# ---------------------------------------------------------------------------
# Replication: bucketfs against rsync (bulk) and lsyncd (lag). Scratch in
# $work/repl, recreated for every cell; results go to the second table.
# ---------------------------------------------------------------------------
repl=$work/repl
repl_config=$work/replication.yaml
cat >"$repl_config" <<'YAML'
Rules:
  - ID: all
    Status: Enabled
    Priority: 1
    Filter: {}
    DeleteMarkerReplication: {Status: Enabled}
    Destination: {Bucket: "arn:aws:s3:::replica"}
YAML

# One measurement as a background job (set -e applies inside, as in
# run_cell); its daemons are stopped whichever way it ends, and a failure is
# recorded without ending the run.
run_repl_cell() { # target rep function args...
    local rc=0 wl=${3#measure_}
    cur_target=$1
    cur_rep=$2
    shift 2
    wait_inodes
    {
        trap repl_teardown EXIT
        "$@"
    } &
    child=$!
    wait "$child" || rc=$?
    child=
    repl_teardown
    if frees_inodes "$wl" "$cur_target"; then note_deletions; fi
    if ((rc != 0)); then
        log "FAILED: $* on $cur_target (repetition $cur_rep, exit $rc)"
        echo "$* on $cur_target, repetition $cur_rep: exit $rc" >>"$failures"
    fi
    settle
}

# Regular files under $1 (its .bucketfs left out): "count bytes".
tree_summary() {
    find "$1" -path "$1/.bucketfs" -prune -o -type f -printf '%s\n' |
        awk '{ n++; s += $1 } END { print n + 0, s + 0 }'
}
# The copy in $2 must hold exactly what $1 holds (a sample compared byte for byte).
check_copy() { # source destination what
    local want got f
    want=$(tree_summary "$1")
    got=$(tree_summary "$2")
    if [[ $got != "$want" ]]; then
        log "$3: the destination holds $got (files bytes), the source $want"
        return 1
    fi
    for f in tree/d000/f00000 "tree/d$(printf %03d $(((bulk_files - 1) / 100)))/f$(printf %05d $((bulk_files - 1)))"; do
        cmp "$1/$f" "$2/$f" || return 1
    done
}

# Bulk: $bulk_files files, $bulk_mib MiB in all, 100 per directory, generated
# once (untimed) and copied into a fresh source bucket for every repetition:
# `replicate --existing` takes the plain files into the bucket's history.
bulk_tree=$work/bulk-tree
generate_bulk() {
    python3 -c '
import os, sys
root, n, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) << 20
for i in range(n):
    d = os.path.join(root, "tree", "d%03d" % (i // 100))
    if i % 100 == 0:
        os.makedirs(d)
    with open(os.path.join(d, "f%05d" % i), "wb") as f:
        f.write(os.urandom(total // n + (total % n if i == 0 else 0)))
' "$bulk_tree" "$bulk_files" "$bulk_mib"
}
replicate_and_sync() {
    "$bucketfs_bin" replicate "$repl/src" --existing --config "$repl_config" \
        >"$work/logs/replicate-$cur_rep.out" 2>"$work/logs/replicate-$cur_rep.log"
    sync
}
rsync_and_sync() {
    rsync -aX --exclude=/.bucketfs "$repl/src/" "$repl/rsync-dest/"
    sync
}
measure_bulk() {
    host_warm_files "$repl/src"
    drop_caches
    case $cur_target in
    bucketfs)
        timed replicate_and_sync
        log "bucketfs replicate: $(tail -n 1 "$work/logs/replicate-$cur_rep.out")"
        check_copy "$repl/src" "$repl/replica" "bucketfs replicate --existing"
        ;;
    rsync)
        timed rsync_and_sync
        check_copy "$repl/src" "$repl/rsync-dest" "rsync -aX"
        ;;
    esac
    record repl_bulk "$elapsed"
}
run_bulk() {
    local rep i sides=(rsync)
    ((has_bucketfs)) && sides=(bucketfs rsync)
    log "workload: bulk replication vs rsync ($bulk_files files, $bulk_mib MiB)"
    generate_bulk
    for ((rep = 1; rep <= repl_reps; rep++)); do
        retire "$repl"
        mkdir -p "$repl/rsync-dest"
        if ((has_bucketfs)); then
            "$bucketfs_bin" create "$repl/src" >/dev/null
            "$bucketfs_bin" create "$repl/replica" >/dev/null
        fi
        cp -a "$bulk_tree/." "$repl/src/"
        settle
        for ((i = 0; i < ${#sides[@]}; i++)); do
            run_repl_cell "${sides[(i + rep) % ${#sides[@]}]}" "$rep" measure_bulk
        done
    done
    retire "$repl" "$bulk_tree"
    settle
}

# Lag: `lag_py write` paces the files (s<second>/f<index>, one directory per
# second) and records when each close returned; `lag_py watch` lists the
# destination every 5 ms and records when each file appeared there (names
# only: rsync's temporary dot-files never match); `lag_py report` prints the
# achieved rate, p50, p99, max (ms) and how many files never appeared.
# Both sides use CLOCK_MONOTONIC, which is system-wide.
lag_py='
import os, sys, time
mode, rate, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
n = int(rate * secs)
def path(i):
    return "s%04d" % (i // rate), "f%07d" % i
if mode == "write":
    root, out = sys.argv[4], sys.argv[5]
    data = b"x" * 4096
    done = []
    t0_ns = time.monotonic_ns()
    t0 = t0_ns / 1e9
    for i in range(n):
        d, f = path(i)
        d = os.path.join(root, d)
        if i % rate == 0:
            os.mkdir(d)
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        fd = os.open(os.path.join(d, f), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
        done.append(time.monotonic_ns())
    with open(out, "w") as o:
        o.write("%d\n" % t0_ns)
        o.write("\n".join(map(str, done)) + "\n")
elif mode == "watch":
    root, ready, finished, grace, out = sys.argv[4:9]
    grace = float(grace)
    outstanding = {}
    for i in range(n):
        d, f = path(i)
        outstanding.setdefault(d, {})[f] = i
    seen = [0] * n
    deadline = None
    while outstanding:
        for d in sorted(outstanding):
            try:
                names = os.listdir(os.path.join(root, d))
            except FileNotFoundError:
                continue
            now = time.monotonic_ns()
            want = outstanding[d]
            for f in want.keys() & names:
                seen[want.pop(f)] = now
            if not want:
                del outstanding[d]
        if ready:
            open(ready, "w").close()
            ready = None
        # Counted from the writer'"'"'s end, not from its start: a writer that
        # falls behind its rate (a debug build) must not lose the files it
        # wrote late.
        if deadline is None and os.path.exists(finished):
            deadline = time.monotonic() + grace
        if deadline is not None and time.monotonic() > deadline:
            break
        time.sleep(0.005)
    with open(out, "w") as o:
        o.write("\n".join(map(str, seen)) + "\n")
else:
    wrote, seen = sys.argv[4], sys.argv[5]
    with open(wrote) as f:
        t0, *done = map(int, f.read().split())
    with open(seen) as f:
        appeared = list(map(int, f.read().split()))
    # n writes fill n slots of 1/rate s: on schedule, this is the rate.
    achieved = n / ((done[-1] - t0) / 1e9 + 1 / rate)
    lags = sorted((a - d) / 1e6 for a, d in zip(appeared, done) if a)
    missing = n - len(lags)
    if not lags:
        print("%.3f nan nan nan %d" % (achieved, missing))
        sys.exit(0)
    def pct(p):  # nearest rank
        return lags[max(0, -(-len(lags) * p // 100) - 1)]
    print("%.3f %.3f %.3f %.3f %d" % (achieved, pct(50), pct(99), lags[-1], missing))
'
# Starts the watcher on $2, runs the writer into $1 once the watcher polls,
# and records the lag metrics of rate $3.
lag_run() { # source-dir watched-dir rate
    local src=$1 dst=$2 rate=$3 i pid stats
    local wrote=$work/lag-wrote.txt seen=$work/lag-seen.txt ready=$work/lag-ready
    local finished=$work/lag-writer-finished status=0
    rm -f "$ready" "$finished"
    python3 -c "$lag_py" watch "$rate" "$lag_s" "$dst" "$ready" "$finished" "$lag_grace_s" "$seen" &
    pid=$!
    track watcher "$pid"
    for ((i = 0; i < 1000; i++)); do
        [[ -e $ready ]] && break
        sleep 0.01
    done
    [[ -e $ready ]] || die "the lag watcher did not start"
    python3 -c "$lag_py" write "$rate" "$lag_s" "$src" "$wrote" &
    track writer $!
    wait $! || status=$?
    # Whether or not the writer succeeded, the watcher has grace left.
    touch "$finished"
    wait "$pid"
    ((status == 0)) || { log "$cur_target: the lag writer failed (exit $status)"; return 1; }
    read -r -a stats < <(python3 -c "$lag_py" report "$rate" "$lag_s" "$wrote" "$seen")
    log "$cur_target, $rate writes/s: achieved ${stats[0]}/s, lag p50 ${stats[1]} ms, p99 ${stats[2]} ms, max ${stats[3]} ms, ${stats[4]} missing"
    if ((stats[4] > 0)); then
        log "$cur_target: ${stats[4]} of $((rate * lag_s)) files never appeared in $dst within ${lag_grace_s}s of the last write"
        return 1
    fi
    record "lag${rate}_rate" "${stats[0]}"
    record "lag${rate}_p50" "${stats[1]}"
    record "lag${rate}_p99" "${stats[2]}"
}
measure_lag_bucketfs() { # rate
    local rate=$1 pid i row=()
    "$bucketfs_bin" create "$repl/src" >/dev/null
    "$bucketfs_bin" create "$repl/replica" >/dev/null
    mkdir -p "$repl/mnt"
    "$bucketfs_bin" mount "$repl/src" "$repl/mnt" --config "$repl_config" --foreground \
        >>"$work/logs/lag-bucketfs.log" 2>&1 &
    pid=$!
    track bucketfs "$pid"
    wait_mounted "$repl/mnt" "$pid" || die "bucketfs did not mount $repl/mnt (log: $work/logs/lag-bucketfs.log)"
    mkdir "$repl/mnt/lag"
    lag_run "$repl/mnt/lag" "$repl/replica/lag" "$rate"
    # What bucketfs itself reports, once nothing is pending:
    # RULE DESTINATION PENDING-OPS PENDING-BYTES COMPLETED FAILED p50/p99/max ms
    for ((i = 0; i < 100; i++)); do
        read -r -a row < <("$bucketfs_bin" status "$repl/src" | awk '$1 == "all" && $2 == "replica"') || true
        ((${#row[@]} == 8 && row[2] == 0)) && break
        sleep 0.1
    done
    "$bucketfs_bin" status "$repl/src" >>"$work/logs/lag-bucketfs.log"
    if ((${#row[@]} != 8 || row[2] != 0 || row[5] != 0)); then
        log "bucketfs status after the run: ${row[*]:-no row for rule all}"
        return 1
    fi
    IFS=/ read -r -a row <<<"${row[6]}"
    record "lag${rate}_status_p50" "${row[0]}"
    record "lag${rate}_status_p99" "${row[1]}"
    record "lag${rate}_status_max" "${row[2]}"
    umount "$repl/mnt"
    wait "$pid"
}
measure_lag_lsyncd() { # rate
    local rate=$1 pid i
    mkdir -p "$repl/lsrc" "$repl/ldst"
    # delay = 0: rsync starts at the first event (default.rsync's default is
    # 15 s); events arriving while one rsync runs make the next one's list.
    cat >"$repl/lsyncd.lua" <<LUA
settings { nodaemon = true }
sync { default.rsync, source = "$repl/lsrc", target = "$repl/ldst", delay = 0 }
LUA
    lsyncd "$repl/lsyncd.lua" >"$work/logs/lsyncd.log" 2>&1 &
    pid=$!
    track lsyncd "$pid"
    # Its startup rsync must be over before the writer starts.
    for ((i = 0; i < 3000; i++)); do
        grep -q 'Startup of .* finished' "$work/logs/lsyncd.log" && break
        kill -0 "$pid" 2>/dev/null || die "lsyncd exited (log: $work/logs/lsyncd.log)"
        sleep 0.01
    done
    grep -q 'Startup of .* finished' "$work/logs/lsyncd.log" || die "lsyncd did not start"
    lag_run "$repl/lsrc" "$repl/ldst" "$rate"
    kill "$pid"
    wait "$pid" || true # exits 143 on TERM
}
measure_lag() { # rate
    retire "$repl"
    mkdir -p "$repl"
    "measure_lag_$cur_target" "$1"
}
run_lag() {
    local rate rep i sides=(lsyncd)
    ((has_bucketfs)) && sides=(bucketfs lsyncd)
    for rate in 200 1000; do
        log "workload: replication lag at $rate writes/s for ${lag_s}s"
        for ((rep = 1; rep <= repl_reps; rep++)); do
            for ((i = 0; i < ${#sides[@]}; i++)); do
                run_repl_cell "${sides[(i + rep) % ${#sides[@]}]}" "$rep" measure_lag "$rate"
            done
        done
    done
    retire "$repl"
}

# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
metric seq_write "Sequential write ${seq_mib} MiB + fsync" "MiB/s" up
metric seq_read "Sequential read ${seq_mib} MiB, cold" "MiB/s" up
metric randread_j1 "Random 4k read, ${rand_mib} MiB file, 1 job, cold, one pass" "IOPS" up
metric randwrite_j1 "Random 4k write, ${rand_mib} MiB file, 1 job" "IOPS" up
metric randread_j4 "Random 4k read, ${rand_mib} MiB file, 4 jobs, cold, one pass" "IOPS" up
metric randwrite_j4 "Random 4k write, ${rand_mib} MiB file, 4 jobs" "IOPS" up
metric meta_create "Create ${meta_files} × 4 KiB files" "s" down
metric meta_stat "Stat ${meta_files} files, cold" "s" down
metric meta_unlink "Unlink ${meta_files} files" "s" down
metric tree_find "find over ${tree_entries} entries, cold" "s" down
metric tree_ls "ls -lR over ${tree_entries} entries, cold" "s" down
metric src_extract "Extract source tree (${src_crates[*]})" "s" down
metric src_reread "Re-read source tree, cold" "s" down
metric src_rsync "rsync -a of the source tree into the target" "s" down
metric src_rsync_other "rsync -a as root of the source tree owned by another user" "s" down
metric overwrite_1byte "Overwrite 1 byte of ${overwrite_mib} MiB file + close" "s" down
metric million_find "find over ${million} objects, cold" "s" down
metric million_mount_first "bucketfs mount, ${million} objects, first" "s" down
metric million_mount "bucketfs mount, ${million} objects, again" "s" down
metric million_rss_mount "bucketfs RSS after mount, ${million} objects" "MiB" down
metric million_rss_find "bucketfs RSS after find, ${million} objects" "MiB" down
metric repl_bulk "Replicate ${bulk_files} files, ${bulk_mib} MiB, cold, + sync" "s" down rsync
for rate in 200 1000; do
    metric "lag${rate}_rate" "Writes/s achieved (target ${rate}/s for ${lag_s} s)" "1/s" up lsyncd
    metric "lag${rate}_p50" "Lag p50, write → in replica, ${rate}/s" "ms" down lsyncd
    metric "lag${rate}_p99" "Lag p99, write → in replica, ${rate}/s" "ms" down lsyncd
    metric "lag${rate}_status_p50" "\`bucketfs status\` latency p50, ${rate}/s" "ms" down lsyncd
    metric "lag${rate}_status_p99" "\`bucketfs status\` latency p99, ${rate}/s" "ms" down lsyncd
    metric "lag${rate}_status_max" "\`bucketfs status\` latency max, ${rate}/s" "ms" down lsyncd
done

# The source tree: these crates as Cargo.lock pins them, from the registry.
registry_src=("${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/)
crate_dirs=()
if wanted src; then
    if ((!quick)); then cargo fetch --locked --quiet; fi
    for crate in "${src_crates[@]}"; do
        # Cargo.lock: a `name = "x"` line, then `version = "1.2.3"`.
        while read -r version; do
            if [[ -d ${registry_src[0]}$crate-$version ]]; then crate_dirs+=("$crate-$version"); fi
        done < <(awk -v n="$crate" '$0 == "name = \"" n "\"" { getline; split($0, v, "\""); print v[2] }' Cargo.lock)
    done
fi

hold_guest_memory
start=$SECONDS
log "targets: ${targets[*]}; $reps repetitions; workloads: ${only:-all}; scratch in $work"
for wl in seq rand meta tree; do
    if wanted $wl; then run_workload $wl; fi
done
if ! wanted src; then
    :
elif ((${#crate_dirs[@]})); then
    tar -cf "$src_tar" -C "${registry_src[0]}" "${crate_dirs[@]}"
    mkdir -p "$src_tree" "$src_tree_other"
    tar -xf "$src_tar" -C "$src_tree"
    tar -xf "$src_tar" -C "$src_tree_other"
    chown -R nobody:nogroup "$src_tree_other"
    run_workload src
else
    log "no crate sources of ${src_crates[*]} in ${registry_src[0]}: skipping the source tree workload"
fi
if wanted overwrite; then run_workload overwrite; fi
if wanted million; then run_million; fi
if wanted bulk; then run_bulk; fi
if wanted lag; then run_lag; fi
duration=$((SECONDS - start))

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
disk_dev=$(findmnt -n -o SOURCE -T "$work")
# A virtual disk's rotational flag says little, but it is what we can know.
disk_kind=$(lsblk -dno ROTA "$disk_dev" 2>/dev/null | awk '{ print "lsblk rotational=" $1 }' || true)
# Whether the kernel offers FUSE over io_uring, which bucketfs and nullfs then use
# (bindfs, on Debian's libfuse, reads /dev/fuse either way).
if [[ $(cat /sys/module/fuse/parameters/enable_uring 2>/dev/null) == Y ]]; then
    transport="io_uring offered (fuse module enable_uring=Y): bucketfs and nullfs use it, bindfs and rclone read /dev/fuse"
else
    transport="/dev/fuse for every target (fuse module enable_uring not Y, io_uring not offered)"
fi
bucketfs_desc="not measured (no binary)"
if ((has_bucketfs)); then
    bucketfs_desc="${bucketfs_bin#"$repo"/} ($(git describe --always --dirty 2>/dev/null || echo "no commit yet"))"
    [[ $bucketfs_bin == */debug/* ]] && bucketfs_desc+=" — DEBUG build: its numbers say nothing about speed"
fi
{
    echo "# bucketfs benchmark results"
    echo
    echo "Generated by \`bench/run.sh$( ((quick)) && echo " --quick")${only:+ --only $only}\` on $(date -u '+%Y-%m-%d %H:%M UTC') in ${duration}s."
    echo "Median of $reps repetitions per cell ($repl_reps for replication), ± half the min–max range as % of the median."
    echo "Ratios compare medians: above 1 means bucketfs has more of the unit"
    echo "(better for MiB/s and IOPS, worse for seconds and MiB)."
    echo
    echo "## Machine"
    echo
    echo "- CPU: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(nproc) cores (nproc)"
    echo "- Memory: $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    # shellcheck source=/dev/null
    echo "- Kernel: $(uname -sr); $(. /etc/os-release && echo "$PRETTY_NAME")"
    echo "- Disk: $disk_dev, $(df -h --output=size "$work" | tail -n 1 | tr -d ' '), $(findmnt -n -o FSTYPE -T "$work") mounted $(findmnt -n -o OPTIONS -T "$work")${disk_kind:+, $disk_kind}"
    echo "- All targets on that disk: scratch in $work, 1M-object bucket in $million_bucket"
    echo "- Page cache dropped before read steps: $caches_dropped"
    echo "- Guest memory: $guest_memory"
    echo "- Tools: $(fio --version), bindfs $(bindfs --version 2>&1 | awk '{ print $2; exit }'), $(rclone version 2>/dev/null | head -n 1), $(rsync --version | awk '{ print $1, $3; exit }'), $(lsyncd --version | awk '{ print "lsyncd", $2; exit }')"
    echo "- bucketfs: $bucketfs_desc"
    echo "- FUSE transport: $transport"
    echo
    echo "## Results"
    echo
    python3 - "$metrics" "$results" "${targets[@]}" <<'EOF'
import statistics, sys
from collections import defaultdict

metrics_file, results_file, *targets = sys.argv[1:]
values = defaultdict(list)
for line in open(results_file):
    key, target, _rep, value = line.rstrip("\n").split("\t")
    values[key, target].append(float(value))

def fmt(x):
    return f"{x:.3g}" if abs(x) < 999.5 else f"{x:,.0f}"

def cell(key, target):
    v = values.get((key, target))
    if not v:
        return "—"
    med = statistics.median(v)
    if len(v) == 1 or med == 0:
        return fmt(med)
    return f"{fmt(med)} ±{(max(v) - min(v)) / 2 / med * 100:.0f}%"

def ratio(key, a, b):
    va, vb = values.get((key, a)), values.get((key, b))
    if not va or not vb or statistics.median(vb) == 0:
        return "—"
    return f"{statistics.median(va) / statistics.median(vb):.2f}"

cols = ["native", "bindfs", "rclone", "bucketfs", "nullfs"]
print("| Workload | Unit | " + " | ".join(cols[:-1]) + " | FUSE floor (nullfs) | bucketfs/native | bucketfs/bindfs |")
print("|---|---|" + "---:|" * (len(cols) + 2))
metrics = [line.rstrip("\n").split("\t") for line in open(metrics_file)]
for key, label, unit, _better, baseline in metrics:
    if baseline or not any((key, t) in values for t in cols):
        continue
    row = [label, unit] + [cell(key, t) for t in cols]
    row += [ratio(key, "bucketfs", "native"), ratio(key, "bucketfs", "bindfs")]
    print("| " + " | ".join(row) + " |")

repl_rows = [m for m in metrics if m[4] and any((m[0], t) in values for t in ("bucketfs", m[4]))]
if repl_rows:
    print()
    print("### Replication")
    print()
    print("Bulk: `bucketfs replicate --existing` vs `rsync -aX`; lag: live replication of a mount")
    print("vs lsyncd (default.rsync, delay 0). The `bucketfs status` rows are bucketfs's own")
    print("measure (Last-Modified to replica complete, its latest 2048 versions).")
    print()
    print("| Workload | Unit | bucketfs | baseline | bucketfs/baseline |")
    print("|---|---|---:|---:|---:|")
    for key, label, unit, _better, baseline in repl_rows:
        has_base = (key, baseline) in values
        row = [label, unit, cell(key, "bucketfs"),
               f"{cell(key, baseline)} ({baseline})" if has_base else "—",
               ratio(key, "bucketfs", baseline)]
        print("| " + " | ".join(row) + " |")
EOF
    if [[ -s $failures ]]; then
        echo
        echo "## Failed cells (missing from the table)"
        echo
        sed 's/^/- /' "$failures"
    fi
    echo
    echo "## Method"
    echo
    echo "The comment at the top of bench/run.sh has it all; in short:"
    echo
    echo "- Caches: dropped (sync; drop_caches) right before every read step, after anything that"
    echo "  opened the file for writing; fio reads with --readonly --fadvise_hint=0, and random reads"
    echo "  read each block once (one pass, each job its own slice). Before the seq and rand reads,"
    echo "  one O_DIRECT pass over the file's backing copy warms the cache below the guest, which the"
    echo "  guest cannot drop and which forgets blocks untouched for a minute or two: every target"
    echo "  reads cold from the guest's page cache and warm from the host's. Likewise a find over the"
    echo "  backing entries before every cold find, ls -lR and million-object mount, and a read of"
    echo "  every source file before bulk replication and its rsync."
    if [[ -n $reporting_saved ]]; then
        echo "- Guest memory: the guest's free page reporting to the host paused for the run (see the"
        echo "  Machine section): otherwise every step that fills the page cache also pays the host for"
        echo "  the pages it took back while the machine waited before it, and a mount is such a wait."
    fi
    if ((inode_wait_s)); then
        echo "- Inode reuse: $inode_note. Every timed step that creates files started at least"
        echo "  ${inode_wait_s} s after the last step that deleted many files (the unlink workload, bucketfs"
        echo "  publishing or replicating many files, removing scratch, which waits for those pauses or the"
        echo "  end of the run): ${inode_waited} s of waiting in this run."
    else
        echo "- Inode reuse: $inode_note."
    fi
    echo "- Between cells: the next cell starts once $scratch_dev is idle (fewer than 64 writes and"
    echo "  discards in a second): ${disk_idle_waited} s of waiting in this run."
} >"$report"

cat "$report"
log "report written to ${report#"$repo"/}"
if [[ -s $failures ]]; then
    die "$(wc -l <"$failures") cell(s) failed; see $work/logs"
fi
rm -rf "$work"
