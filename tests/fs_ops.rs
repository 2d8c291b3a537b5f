//! The POSIX layer driven directly, without a mount: the same rules the mount tests check,
//! plus what a mount cannot show (inode bookkeeping).

use std::ffi::OsStr;
use std::sync::Arc;

use bucketfs::bucket::{Bucket, ObjectKey};
use bucketfs::fs::{BucketFs, Caller, FileKind, FsOptions, ROOT_INO, SetAttr};

const ME: Caller = Caller { uid: 0, gid: 0 };

fn fs_in(dir: &std::path::Path) -> Arc<BucketFs> {
    let bucket = Arc::new(Bucket::create(&dir.join("b"), 0, false).unwrap());
    Arc::new(BucketFs::new(bucket, FsOptions::default()))
}

fn write_file(fs: &Arc<BucketFs>, name: &str, bytes: &[u8]) -> u64 {
    let (attr, opened) = fs
        .create(
            ROOT_INO,
            OsStr::new(name),
            0o644,
            libc::O_WRONLY | libc::O_TRUNC,
            ME,
        )
        .unwrap();
    fs.write(opened.fh, 0, bytes).unwrap();
    fs.flush(opened.fh).unwrap();
    fs.release(opened.fh).unwrap();
    attr.ino
}

fn versions(fs: &BucketFs, k: &str) -> Vec<String> {
    fs.bucket().versions(&ObjectKey::new(k).unwrap()).unwrap()
}

#[test]
fn create_write_close_is_one_version_and_reopen_with_trunc_another() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = fs_in(tmp.path());
    let ino = write_file(&fs, "f", b"hello");
    assert_eq!(versions(&fs, "f").len(), 1);
    let opened = fs.open(ino, libc::O_WRONLY | libc::O_TRUNC, ME).unwrap();
    fs.write(opened.fh, 0, b"bye").unwrap();
    fs.flush(opened.fh).unwrap();
    assert_eq!(
        versions(&fs, "f").len(),
        1,
        "published at release, not at flush"
    );
    fs.release(opened.fh).unwrap();
    assert_eq!(versions(&fs, "f").len(), 2);
    assert_eq!(fs.getattr(ino).unwrap().size, 3);
}

/// An unmount can drop RELEASE requests still queued after close() returned: at the end of
/// the mount, a closed file is published all the same, one never closed is not.
#[test]
fn files_closed_but_never_released_are_published_at_the_end_of_the_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = fs_in(tmp.path());
    let create = |name: &str| {
        fs.create(ROOT_INO, OsStr::new(name), 0o644, libc::O_WRONLY, ME)
            .unwrap()
            .1
            .fh
    };
    let (closed, open) = (create("closed"), create("open"));
    fs.write(closed, 0, b"closed").unwrap();
    fs.write(open, 0, b"still open").unwrap();
    fs.flush(closed).unwrap();
    assert!(versions(&fs, "closed").is_empty(), "published at release");
    fs.release_unreleased();
    assert_eq!(versions(&fs, "closed").len(), 1);
    let root = fs.bucket().root().to_path_buf();
    assert_eq!(std::fs::read(root.join("closed")).unwrap(), b"closed");
    assert!(versions(&fs, "open").is_empty(), "never closed: no version");
    assert!(!root.join("open").exists());
}

#[test]
fn a_second_writer_delays_the_version_until_the_last_one_closes() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = fs_in(tmp.path());
    let ino = write_file(&fs, "f", b"0");
    let a = fs.open(ino, libc::O_WRONLY, ME).unwrap();
    let b = fs.open(ino, libc::O_WRONLY, ME).unwrap();
    assert_eq!(
        a.backing.generation, b.backing.generation,
        "one backing file per inode"
    );
    fs.write(a.fh, 0, b"A").unwrap();
    fs.release(a.fh).unwrap();
    fs.write(b.fh, 1, b"B").unwrap();
    assert_eq!(versions(&fs, "f").len(), 1);
    fs.release(b.fh).unwrap();
    assert_eq!(versions(&fs, "f").len(), 2);
    let r = fs.open(ino, libc::O_RDONLY, ME).unwrap();
    assert_eq!(fs.read(r.fh, 0, 10).unwrap(), b"AB");
    fs.release(r.fh).unwrap();
}

#[test]
fn unlink_while_open_publishes_nothing_more() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = fs_in(tmp.path());
    let ino = write_file(&fs, "f", b"1");
    let w = fs.open(ino, libc::O_WRONLY, ME).unwrap();
    fs.write(w.fh, 0, b"2").unwrap();
    fs.unlink(ROOT_INO, OsStr::new("f"), ME).unwrap();
    assert_eq!(
        fs.getattr(ino).unwrap().nlink,
        0,
        "fstat of an unlinked open file"
    );
    fs.release(w.fh).unwrap();
    let v = versions(&fs, "f");
    assert_eq!(
        v.len(),
        2,
        "the version and its delete marker, nothing after"
    );
}

#[test]
fn setattr_mtime_only_makes_no_version() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = fs_in(tmp.path());
    let ino = write_file(&fs, "f", b"x");
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(42);
    let set = SetAttr {
        mtime: Some(bucketfs::fs::TimeSpec::At(t)),
        mode: Some(0o600),
        ..Default::default()
    };
    let attr = fs.setattr(ino, ME, set).unwrap();
    assert_eq!(attr.mtime, t);
    assert_eq!(attr.perm, 0o600);
    assert_eq!(versions(&fs, "f").len(), 1);
    let recorded = fs
        .bucket()
        .current(&ObjectKey::new("f").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(recorded.posix.unwrap().mode & 0o7777, 0o600);
}

#[test]
fn setattr_of_a_key_with_history_records_the_new_attributes_in_its_current_version() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = fs_in(tmp.path());
    write_file(&fs, "f", b"one");
    let ino = write_file(&fs, "f", b"two"); // a second version: the key has a folder
    let [old, new] = <[String; 2]>::try_from(versions(&fs, "f")).unwrap();
    let key = ObjectKey::new("f").unwrap();
    let mode_of = |id: &str| fs.bucket().meta(&key, id).unwrap().posix.unwrap().mode & 0o7777;
    assert_eq!((mode_of(&old), mode_of(&new)), (0o644, 0o644));
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(42);
    let set = SetAttr {
        mode: Some(0o600),
        mtime: Some(bucketfs::fs::TimeSpec::At(t)),
        ..Default::default()
    };
    let attr = fs.setattr(ino, ME, set).unwrap();
    assert_eq!((attr.perm, attr.mtime), (0o600, t));
    // Recorded in the current version's metadata (what replication sends), not the old one's.
    assert_eq!((mode_of(&old), mode_of(&new)), (0o644, 0o600));
    let recorded = fs.bucket().meta(&key, &new).unwrap().posix.unwrap();
    assert_eq!(recorded.mtime_ns, 42_000_000_000);
    assert_eq!(versions(&fs, "f").len(), 2, "a chmod is no version");
}

#[test]
fn memory_follows_kernel_lookups() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = fs_in(tmp.path());
    for i in 0..100 {
        std::fs::write(tmp.path().join("b").join(format!("f{i}")), "x").unwrap();
    }
    let base = fs.inode_count();
    let listed = fs.readdir(ROOT_INO).unwrap();
    assert_eq!(listed.len(), 2 + 100 + 1, ". .. files .versions");
    assert_eq!(fs.inode_count(), base, "listing alone creates no inodes");
    let inos: Vec<u64> = (0..100)
        .map(|i| {
            fs.lookup(ROOT_INO, OsStr::new(&format!("f{i}")))
                .unwrap()
                .ino
        })
        .collect();
    assert_eq!(fs.inode_count(), base + 100);
    for ino in inos {
        fs.forget(ino, 1);
    }
    assert_eq!(fs.inode_count(), base);
}

/// A listing shows files being written once each: a new one not yet closed (only in memory)
/// and a published one being rewritten (on disk, and rewritten in memory).
#[test]
fn files_being_written_are_listed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = fs_in(tmp.path());
    let ino = write_file(&fs, "old", b"1");
    write_file(&fs, "quiet", b"1");
    let rewrite = fs.open(ino, libc::O_WRONLY | libc::O_TRUNC, ME).unwrap().fh;
    fs.write(rewrite, 0, b"2").unwrap();
    let (_, new) = fs
        .create(ROOT_INO, OsStr::new("new"), 0o644, libc::O_WRONLY, ME)
        .unwrap();
    fs.write(new.fh, 0, b"3").unwrap();
    let mut names: Vec<String> = fs
        .readdir(ROOT_INO)
        .unwrap()
        .into_iter()
        .map(|e| e.name.into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, [".", "..", ".versions", "new", "old", "quiet"]);
    fs.release(rewrite).unwrap();
    fs.release(new.fh).unwrap();
}

#[test]
fn versions_tree_lookup_and_kinds() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = fs_in(tmp.path());
    write_file(&fs, "k", b"v1");
    let vdir = fs.lookup(ROOT_INO, OsStr::new(".versions")).unwrap();
    assert_eq!(vdir.kind, FileKind::Dir);
    let kdir = fs.lookup(vdir.ino, OsStr::new("k")).unwrap();
    let id = versions(&fs, "k").remove(0);
    let entry = fs.lookup(kdir.ino, OsStr::new(&id)).unwrap();
    assert_eq!(
        (entry.kind, entry.size, entry.perm),
        (FileKind::File, 2, 0o444)
    );
    assert_eq!(
        fs.create(kdir.ino, OsStr::new("x"), 0o644, libc::O_WRONLY, ME)
            .unwrap_err()
            .errno(),
        libc::EROFS
    );
    assert_eq!(
        fs.getxattr(entry.ino, "user.s3.delete-marker").unwrap(),
        b"false"
    );
}

#[test]
fn the_opener_owns_the_version_whoever_releases_it() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = fs_in(tmp.path());
    let someone = Caller {
        uid: 4242,
        gid: 4242,
    };
    let (attr, opened) = fs
        .create(
            ROOT_INO,
            OsStr::new("theirs"),
            0o644,
            libc::O_WRONLY,
            someone,
        )
        .unwrap();
    fs.write(opened.fh, 0, b"x").unwrap();
    fs.flush(opened.fh).unwrap();
    // RELEASE carries no caller identity: publishing must not ask for one.
    fs.release(opened.fh).unwrap();
    let v = fs
        .bucket()
        .current(&ObjectKey::new("theirs").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(v.owner, 4242);
    let w = fs
        .open(attr.ino, libc::O_WRONLY | libc::O_TRUNC, someone)
        .unwrap();
    fs.write(w.fh, 0, b"y").unwrap();
    fs.release(w.fh).unwrap();
    let v = fs
        .bucket()
        .current(&ObjectKey::new("theirs").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(v.owner, 4242);
}
