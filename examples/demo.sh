#!/usr/bin/env bash
# bucketfs demo: a versioned bucket mounted as a directory tree.
#
#   examples/demo.sh
#
# Builds bucketfs (release), makes a fresh bucket at /tmp/bucketfs-demo/photos,
# mounts it at /tmp/bucketfs-demo/mnt with the shipped replication.yaml, and walks
# through versions, tags and delete markers. It unmounts on every exit path.
#
# replication.yaml replicates everything into the sibling bucket `demo-replica`
# (/tmp/bucketfs-demo/demo-replica), which the demo creates first.
#
# Needs Linux with FUSE 3 (fusermount3), the `attr` package (getfattr/setfattr)
# and a Rust toolchain. Run it as root to get kernel passthrough; otherwise the
# daemon serves reads and writes itself.
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$PWD
demo=/tmp/bucketfs-demo
bucket=$demo/photos
mnt=$demo/mnt
bin=$repo/target/release/bucketfs

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() {
    step "$*"
    "$@"
}

unmount() {
    if mountpoint -q "$mnt" 2>/dev/null; then
        umount "$mnt" 2>/dev/null || fusermount3 -u "$mnt"
    fi
}

run cargo build --release --locked

# A fresh start: unmount and delete what an earlier run left.
unmount
rm -rf "$demo"
mkdir -p "$bucket" "$mnt"
run "$bin" create "$demo/demo-replica"
trap unmount EXIT

# An empty BUCKET_DIR becomes a new bucket. The command returns once the mount is
# ready; a daemon keeps serving it (log: $bucket/.bucketfs/bucketfs.log).
run "$bin" mount "$bucket" "$mnt" --config "$repo/replication.yaml"

step "echo 'first draft' > $mnt/notes.txt"
echo 'first draft' >"$mnt/notes.txt"
step "echo 'second draft' > $mnt/notes.txt"
echo 'second draft' >"$mnt/notes.txt"

run cat "$mnt/notes.txt"
# Tags are xattrs; they change the current version's metadata, not its bytes.
run setfattr -n user.s3.tag.project -v apollo "$mnt/notes.txt"

# Every version of notes.txt, oldest first, named by version id.
run ls -l "$mnt/.versions/notes.txt/"
first=$(find "$mnt/.versions/notes.txt" -mindepth 1 -maxdepth 1 -type f -printf '%f\n' | sort | head -n 1)
run cat "$mnt/.versions/notes.txt/$first"

# What listxattr shows (what cp --preserve=xattr copies), then computed names.
run getfattr -d -m - "$mnt/notes.txt"
for name in user.s3.version-id user.s3.etag user.s3.tagging; do
    run getfattr -n "$name" "$mnt/notes.txt"
done

# rm adds a delete marker: the key disappears, its versions stay.
run rm "$mnt/notes.txt"
run ls -l "$mnt/.versions/notes.txt/"
latest=$(find "$mnt/.versions/notes.txt" -mindepth 1 -maxdepth 1 -type f -printf '%f\n' | sort | tail -n 1)
run getfattr -n user.s3.delete-marker "$mnt/.versions/notes.txt/$latest"

# The replica bucket got every version, the tag and the delete marker (same ids).
sleep 1
run "$bin" status "$bucket"
run find "$demo/demo-replica/.bucketfs/versions" -name '@*.json'

step "umount $mnt"
unmount
trap - EXIT

# Without bucketfs, the bucket is a plain directory: current versions at their
# key paths (none now: notes.txt is deleted), history under .bucketfs/versions/.
run ls -la "$bucket"
run find "$bucket/.bucketfs/versions" -type f
