#!/usr/bin/env bash
# POSIX conformance run: pjdfstest + fsx against a freshly mounted bucketfs.
#
#   scripts/conformance.sh [--quick]
#
# It builds nothing of bucketfs: it expects the binary (BUCKETFS_BIN, default
# target/debug/bucketfs; scripts/test.sh builds it). It does install its two
# test tools, the Rust rewrites of pjdfstest and fsx, with `cargo install` into
# CONFORMANCE_TOOLS_ROOT (default: $CARGO_HOME, i.e. ~/.cargo/bin), only when
# the pinned version is not there yet, so CI machines that are reused pay once.
#
# What it does:
#   1. creates a temporary bucket and mountpoint, mounts them;
#   2. runs pjdfstest on the mount, writes per-test results to
#      target/conformance/pjdfstest.txt (sorted "name result" lines, diffable
#      between runs) and the raw log next to it, prints
#      "pjdfstest: PASSED/TOTAL passed";
#   3. runs fsx on MNT/fsxfile (-N 100000, or 2000 with --quick), prints
#      "fsx: ok" or "fsx: FAILED"; for bucketfs, then remounts with
#      --delta-threshold 0 and runs a tenth as many fsx operations again
#      on overlays ("fsx with overlays: ok");
#   4. unmounts and deletes everything temporary on any exit (trap).
#
# Exit status: non-zero if fsx fails, if the filesystem disappears or hangs
# during the run, if pjdfstest does not finish, or if fewer pjdfstest cases
# pass than the number in scripts/pjdfstest-baseline (raise that file as
# bucketfs improves, so that regressions fail CI). Individual pjdfstest
# failures alone do not fail the run: bucketfs refuses hard links by design,
# so a clean 100% is not the goal.
#
# Environment:
#   CONFORMANCE_FS   what to test: bucketfs (default), bindfs (a bindfs mount
#                    of a temp dir) or native (a plain directory, no FUSE).
#                    The last two exist to validate this script and to give
#                    reference pass rates.
#   BUCKETFS_BIN     bucketfs binary (default target/debug/bucketfs)
#   FSX_SEED         fsx seed (default fixed, so that failures reproduce)
#   PJDFSTEST_TIMEOUT, FSX_TIMEOUT   seconds before a hung run is killed
#
# Needs root: pjdfstest switches users (nobody, daemon) for permission tests,
# and FUSE mounts need /dev/fuse.
set -euo pipefail

cd "$(dirname "$0")/.."
repo_root=$PWD

quick=0
for arg in "$@"; do
    case $arg in
    --quick) quick=1 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "usage: $0 [--quick]" >&2
        exit 2
        ;;
    esac
done

fs_kind=${CONFORMANCE_FS:-bucketfs}
bucketfs_bin=${BUCKETFS_BIN:-target/debug/bucketfs}
out_dir=$repo_root/target/conformance
tools_root=${CONFORMANCE_TOOLS_ROOT:-${CARGO_HOME:-$HOME/.cargo}}
baseline_file=$repo_root/scripts/pjdfstest-baseline
# Pinned so that a new upstream release (new test cases) cannot move the pass
# count under our feet; bump deliberately together with the baseline.
pjdfstest_version=0.2.2
fsx_version=0.3.2
fsx_ops=100000
((quick)) && fsx_ops=2000
fsx_seed=${FSX_SEED:-1}
pjdfstest_timeout=${PJDFSTEST_TIMEOUT:-900}
fsx_timeout=${FSX_TIMEOUT:-1800}

log() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------
# Preconditions and tools
# ---------------------------------------------------------------------------

[[ $(id -u) -eq 0 ]] || die "run as root (pjdfstest switches users; FUSE mounts for other users need allow_other)"
if [[ $fs_kind != native ]]; then
    [[ -c /dev/fuse ]] || die "/dev/fuse is missing: this machine cannot run FUSE mounts"
fi
case $fs_kind in
bucketfs)
    [[ $bucketfs_bin == /* ]] || bucketfs_bin=$repo_root/$bucketfs_bin
    [[ -x $bucketfs_bin ]] || die "no bucketfs binary at $bucketfs_bin (run cargo build, or set BUCKETFS_BIN)"
    scripts/ensure-packages.sh fuse3
    ;;
bindfs) scripts/ensure-packages.sh fuse3 bindfs ;;
native) ;;
*) die "CONFORMANCE_FS must be bucketfs, bindfs or native, not '$fs_kind'" ;;
esac

# Installs crate $1 at version $2 unless that exact version is already there.
install_tool() {
    local name=$1 version=$2 bin=$tools_root/bin/$1
    if [[ -x $bin ]] && "$bin" --version 2>/dev/null | grep -qw "$version"; then
        return
    fi
    log "installing $name $version into $tools_root (once per machine)"
    cargo install --quiet --locked --root "$tools_root" --version "$version" "$name"
}
# pjdfstest links libacl (via the exacl crate) even though it only needs it
# for NFSv4 ACL tests: the -dev package provides the linker's libacl.so.
scripts/ensure-packages.sh libacl1-dev
install_tool pjdfstest "$pjdfstest_version"
install_tool fsx "$fsx_version"
pjdfstest=$tools_root/bin/pjdfstest
fsx=$tools_root/bin/fsx

# ---------------------------------------------------------------------------
# Mount, with cleanup on every exit path
# ---------------------------------------------------------------------------

work=$(mktemp -d "${TMPDIR:-/tmp}/bucketfs-conformance.XXXXXX")
# mktemp makes it 0700; pjdfstest's unprivileged users must traverse it, or
# every permission test fails with EACCES before reaching the filesystem.
chmod 755 "$work"
src=$work/bucket
mnt=$work/mnt
mounted=0

cleanup() {
    local rc=$?
    if ((mounted)) && mountpoint -q "$mnt"; then
        # A plain umount first so that the daemon can flush; the lazy one only
        # when it refuses (busy, or a hung daemon), so that we never leave a
        # mount behind on a CI machine that later sessions get back.
        umount "$mnt" 2>/dev/null || umount -l "$mnt" || true
    fi
    # The daemon's own log is the first thing to read after a failure.
    if [[ $fs_kind == bucketfs && -f $src/.bucketfs/bucketfs.log ]]; then
        cp "$src/.bucketfs/bucketfs.log" "$out_dir/bucketfs.log" || true
    fi
    # Never rm through a live mount: a hung FUSE daemon would hang rm too.
    if ! mountpoint -q "$mnt" 2>/dev/null; then
        # The daemon may still be finishing its last writes right after
        # umount returns: one retry instead of failing the run over scratch.
        rm -rf "$work" 2>/dev/null || { sleep 2 && rm -rf "$work"; } || true
    else
        echo "warning: $mnt still mounted; left $work in place" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
# bash runs traps only after the foreground command ends, so the long steps run
# in the background (see run_timed) and a signal stops them at once.
child=
on_signal() {
    [[ -n $child ]] && kill "$child" 2>/dev/null
    exit 130
}
trap on_signal INT TERM

# Runs "$@" under a timeout (seconds in $1), interruptibly; returns its status.
# timeout forwards our kill to the command and gives up on a hung FUSE call.
run_timed() {
    local limit=$1 rc=0
    shift
    timeout --kill-after=30 "$limit" "$@" &
    child=$!
    wait "$child" || rc=$?
    child=
    return "$rc"
}

mkdir -p "$out_dir"
case $fs_kind in
native)
    mnt=$src
    mkdir -p "$mnt"
    ;;
bindfs)
    mkdir -p "$src" "$mnt"
    # As root, bindfs adds allow_other + default_permissions itself, which
    # pjdfstest's user-switching tests need.
    bindfs -o big_writes "$src" "$mnt"
    mounted=1
    ;;
bucketfs)
    mkdir -p "$mnt"
    "$bucketfs_bin" create "$src"
    # allow_other: pjdfstest drops to nobody/daemon, who must see the mount.
    "$bucketfs_bin" mount "$src" "$mnt" --allow-other
    mounted=1
    ;;
esac
if ((mounted)); then
    # `mount` without --foreground promises the mount is ready on return;
    # check rather than trust it, since a race here looks like random failures.
    mountpoint -q "$mnt" || die "$fs_kind did not mount $mnt"
fi
log "testing $fs_kind at $mnt"

# Fails the run if the daemon died during a step: every later result would be
# an artefact of that, and it is the worst bug a FUSE filesystem can have.
check_alive() {
    if ((mounted)) && ! mountpoint -q "$mnt"; then
        die "$fs_kind is no longer mounted after $1 (daemon crashed?)"
    fi
    if ! timeout 10 stat "$mnt" >/dev/null; then
        die "$fs_kind does not answer stat after $1 (daemon hung?)"
    fi
}

# ---------------------------------------------------------------------------
# pjdfstest
# ---------------------------------------------------------------------------

# The two dummy users must exist and each must have the given group as its
# primary group (pjdfstest checks). Debian has nobody:nogroup and
# daemon:daemon; read the groups rather than assume the distribution.
user_group() { id -gn "$1" 2>/dev/null || die "pjdfstest needs a user '$1'"; }
pjd_config=$out_dir/pjdfstest.toml
cat >"$pjd_config" <<EOF
# Generated by scripts/conformance.sh.
[features]
# What Linux filesystems are expected to do; bucketfs is measured against it.
posix_fallocate = {}
rename_ctime = {}
utime_now = {}
utimensat = {}

[settings]
# bucketfs keeps nanosecond timestamps; 10 ms covers attribute caching.
naptime = 0.01
# The EROFS tests remount the filesystem read-only, which pjdfstest can't do
# to a FUSE mount it didn't make.
allow_remount = false

[dummy_auth]
entries = [["nobody", "$(user_group nobody)"], ["daemon", "$(user_group daemon)"]]
EOF

pjd_args=(-c "$pjd_config" -p "$mnt")
# Cross-device rename/link tests (EXDEV) need a second filesystem; /dev/shm is
# a tmpfs on Debian, distinct from the mount and from the root disk.
if mountpoint -q /dev/shm; then
    pjd_args+=(-s /dev/shm)
fi

log "pjdfstest $pjdfstest_version (timeout ${pjdfstest_timeout}s)"
pjd_log=$out_dir/pjdfstest.log
pjd_rc=0
start=$SECONDS
# pjdfstest exits 1 whenever any case fails, which is expected here; the pass
# count decides. NO_COLOR plus the sed keep escape codes out of the files.
NO_COLOR=1 run_timed "$pjdfstest_timeout" "$pjdfstest" "${pjd_args[@]}" >"$pjd_log" 2>&1 || pjd_rc=$?
sed -i 's/\x1b\[[0-9;]*m//g' "$pjd_log"
# Each case is one line "NAME   RESULT" where RESULT is ok, FAILED, skipped,
# "failed as expected" or "PASSED UNEXPECTEDLY"; failures are followed by
# indented detail lines, which the file keeps out for easy diffing.
grep -E '^[a-z_0-9]+::\S+ +(ok|FAILED|skipped|failed as expected|PASSED UNEXPECTEDLY)$' "$pjd_log" |
    awk '{ name = $1; $1 = ""; sub(/^ +/, ""); print name, $0 }' | sort >"$out_dir/pjdfstest.txt" || true

summary=$(grep -E '^Summary: ' "$pjd_log" | tail -n 1 || true)
if [[ -z $summary ]]; then
    tail -n 20 "$pjd_log" >&2
    die "pjdfstest did not finish (exit $pjd_rc after $((SECONDS - start))s); log in $pjd_log"
fi
# "Summary: 31 failed, 21 skipped, 346 passed, 0 expected failures, 398 total"
read -r pjd_failed pjd_skipped pjd_passed pjd_total < <(
    sed -E 's/^Summary: ([0-9]+) failed, ([0-9]+) skipped, ([0-9]+) passed, [0-9]+ expected failures, ([0-9]+) total.*/\1 \2 \3 \4/' <<<"$summary"
)
[[ $pjd_total =~ ^[0-9]+$ ]] || die "cannot parse pjdfstest summary: $summary"
check_alive pjdfstest

baseline=$(grep -Eo '^[0-9]+' "$baseline_file" | head -n 1 || true)
baseline=${baseline:-0}
echo "pjdfstest: $pjd_passed/$pjd_total passed ($pjd_failed failed, $pjd_skipped skipped; baseline $baseline; $((SECONDS - start))s; per-test results in ${out_dir#"$repo_root"/}/pjdfstest.txt)"
pjd_ok=1
if ((pjd_passed < baseline)); then
    echo "pjdfstest: REGRESSION: $pjd_passed passed, below the baseline of $baseline in ${baseline_file#"$repo_root"/}" >&2
    pjd_ok=0
fi

# ---------------------------------------------------------------------------
# fsx
# ---------------------------------------------------------------------------

# Beyond fsx's defaults (read/write/mmap/truncate on a never-closed file),
# closing and reopening is what publishes a new version in bucketfs, and fsync
# is its durability path: both must keep the data intact. Reservations and
# punched holes change the staged bytes too (overlays record holes as writes).
fsx_config=$out_dir/fsx.toml
cat >"$fsx_config" <<'EOF'
# Generated by scripts/conformance.sh.
[weights]
close_open = 1
fsync = 1
fdatasync = 1
posix_fallocate = 1
punch_hole = 1
EOF

log "fsx $fsx_version: $fsx_ops operations, seed $fsx_seed (timeout ${fsx_timeout}s)"
fsx_artifacts=$out_dir/fsx
rm -rf "$fsx_artifacts"
mkdir -p "$fsx_artifacts"
fsx_rc=0
start=$SECONDS
run_timed "$fsx_timeout" \
    "$fsx" -f "$fsx_config" -N "$fsx_ops" -S "$fsx_seed" -P "$fsx_artifacts" "$mnt/fsxfile" \
    >"$out_dir/fsx.log" 2>&1 || fsx_rc=$?
check_alive fsx
if ((fsx_rc == 0)); then
    echo "fsx: ok ($fsx_ops ops, seed $fsx_seed, $((SECONDS - start))s)"
else
    tail -n 40 "$out_dir/fsx.log" >&2
    echo "fsx: FAILED (exit $fsx_rc; reproduce with FSX_SEED=$fsx_seed; log and artifacts in ${out_dir#"$repo_root"/})" >&2
fi

# bucketfs again, remounted with --delta-threshold 0: every open for writing of
# an existing file then gets an overlay (only the written ranges staged, reads
# of the rest from the current version, publish in place with a reverse delta;
# see docs/FORMAT.md), which fsx's mix of reads, writes, truncates, mmap and
# close/reopen checks byte for byte.
if [[ $fs_kind == bucketfs ]]; then
    umount "$mnt"
    # The old daemon still finishes its session (final sync) after the unmount: let it
    # end before the next one opens the same bucket.
    for _ in $(seq 100); do
        pgrep -f -- "mount $src $mnt" >/dev/null || break
        sleep 0.1
    done
    "$bucketfs_bin" mount "$src" "$mnt" --allow-other --delta-threshold 0
    delta_ops=$((fsx_ops / 10))
    log "fsx with overlays (--delta-threshold 0): $delta_ops operations, seed $fsx_seed"
    delta_rc=0
    start=$SECONDS
    run_timed "$fsx_timeout" \
        "$fsx" -f "$fsx_config" -N "$delta_ops" -S "$fsx_seed" -P "$fsx_artifacts" "$mnt/fsxfile-delta" \
        >"$out_dir/fsx-delta.log" 2>&1 || delta_rc=$?
    check_alive "fsx (overlays)"
    if ((delta_rc == 0)); then
        echo "fsx with overlays: ok ($delta_ops ops, seed $fsx_seed, $((SECONDS - start))s)"
    else
        tail -n 40 "$out_dir/fsx-delta.log" >&2
        echo "fsx with overlays: FAILED (exit $delta_rc; reproduce with FSX_SEED=$fsx_seed)" >&2
        fsx_rc=$delta_rc
    fi
fi

((fsx_rc == 0 && pjd_ok)) || exit 1
