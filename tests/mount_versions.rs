//! Versions through a real mount: PUT on close, delete markers, `.versions/`, restore, rename.

mod common;

use std::fs;
use std::io::Write;

use common::*;

#[test]
fn each_close_of_a_written_file_is_one_new_version() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    let f = sb.path("notes.txt");
    fs::write(&f, "one\n").unwrap();
    fs::write(&f, "two\n").unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .unwrap()
        .write_all(b"three\n")
        .unwrap();
    let v = versions(&sb.mnt, "notes.txt");
    assert_eq!(v.len(), 3, "{v:?}");
    let read = |id: &str| fs::read_to_string(sb.mnt.join(".versions/notes.txt").join(id)).unwrap();
    assert_eq!(read(&v[0]), "one\n");
    assert_eq!(read(&v[1]), "two\n");
    assert_eq!(read(&v[2]), "two\nthree\n");
    assert_eq!(fs::read_to_string(&f).unwrap(), "two\nthree\n");
    assert_eq!(xget(&f, "user.s3.version-id").unwrap(), v[2]);
}

#[test]
fn versions_are_listed_oldest_first_with_last_modified_as_mtime() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    for i in 0..5 {
        fs::write(sb.path("k"), format!("{i}")).unwrap();
    }
    let listed: Vec<String> = fs::read_dir(sb.path(".versions/k"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted, "readdir order is creation order");
    let mtimes: Vec<_> = listed
        .iter()
        .map(|v| {
            fs::metadata(sb.path(".versions/k").join(v))
                .unwrap()
                .modified()
                .unwrap()
        })
        .collect();
    assert!(mtimes.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn a_shell_redirect_through_a_dup_descriptor_is_one_version() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    // The shell dup()s the descriptor and closes the original before the command writes.
    let (ok, _, err) = sh(&sb.mnt, "{ /bin/echo a; echo b; } > s.txt; echo c > t.txt");
    assert!(ok, "{err}");
    assert_eq!(versions(&sb.mnt, "s.txt").len(), 1);
    assert_eq!(fs::read_to_string(sb.path("s.txt")).unwrap(), "a\nb\n");
    assert_eq!(versions(&sb.mnt, "t.txt").len(), 1);
}

/// A script logging into the folder it lists: every command that ends closes a descriptor of
/// the log, and a wait for the log's release cannot end before the script does. The first
/// wait is `ls -l`'s stat of the log, which gives up after 50 ms; the log is then known to
/// be shared, so the daemon never waits the full 500 ms (its log says so), and the version
/// the last close promised is there for the next reader.
#[test]
fn a_script_logging_into_the_folder_it_lists_never_waits_long_for_the_log() {
    let sb = Sandbox::new();
    let m = sb.mount(&[]);
    let (ok, _, err) = sh(
        &sb.mnt,
        "exec 3> log; for i in 1 2 3 4 5 6; do /bin/echo $i >&3; ls -l . > /dev/null; done; \
         exec 3>&-",
    );
    assert!(ok, "{err}");
    let log = m.log();
    assert_eq!(
        log.matches("still shared; waited 500ms").count(),
        0,
        "500 ms waits for the log's release:\n{log}"
    );
    assert!(
        log.contains("still shared; waited 50ms"),
        "the stat gave up on the log:\n{log}"
    );
    assert_eq!(
        fs::read_to_string(sb.path("log")).unwrap(),
        "1\n2\n3\n4\n5\n6\n"
    );
    assert!(xget(&sb.path("log"), "user.s3.version-id").is_some());
    assert_eq!(versions(&sb.mnt, "log").len(), 1);
}

#[test]
fn touch_of_a_new_file_makes_an_empty_version_and_reading_makes_none() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    fs::File::create(sb.path("empty")).unwrap();
    assert_eq!(versions(&sb.mnt, "empty").len(), 1);
    assert_eq!(fs::metadata(sb.path("empty")).unwrap().len(), 0);
    fs::write(sb.path("r"), "x").unwrap();
    let _ = fs::read(sb.path("r")).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(sb.path("r"))
        .unwrap(); // opened, not written
    assert_eq!(versions(&sb.mnt, "r").len(), 1);
}

#[test]
fn unlink_adds_a_delete_marker_and_keeps_the_versions() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    fs::write(sb.path("a"), "data").unwrap();
    fs::remove_file(sb.path("a")).unwrap();
    assert_eq!(errno(fs::metadata(sb.path("a"))), libc::ENOENT);
    assert!(
        !sb.bucket.join("a").exists(),
        "deleted keys have no plain file"
    );
    let v = versions(&sb.mnt, "a");
    assert_eq!(v.len(), 2);
    assert!(!is_delete_marker(&sb.mnt, "a", &v[0]));
    assert!(is_delete_marker(&sb.mnt, "a", &v[1]));
    assert_eq!(fs::read(sb.path(".versions/a").join(&v[1])).unwrap(), b"");
    assert_eq!(
        fs::read_to_string(sb.path(".versions/a").join(&v[0])).unwrap(),
        "data"
    );
    assert!(
        fs::read_dir(&sb.mnt)
            .unwrap()
            .all(|e| e.unwrap().file_name() != "a")
    );
}

#[test]
fn removing_the_latest_delete_marker_undeletes() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    fs::write(sb.path("d/x"), "").unwrap_err();
    fs::create_dir(sb.path("d")).unwrap();
    fs::write(sb.path("d/x"), "keep me").unwrap();
    fs::remove_file(sb.path("d/x")).unwrap();
    let v = versions(&sb.mnt, "d/x");
    fs::remove_file(sb.path(".versions/d/x").join(&v[1])).unwrap();
    assert_eq!(fs::read_to_string(sb.path("d/x")).unwrap(), "keep me");
    assert_eq!(versions(&sb.mnt, "d/x"), vec![v[0].clone()]);
}

#[test]
fn removing_a_version_deletes_it_for_good_and_the_previous_becomes_current() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    fs::write(sb.path("f"), "v1").unwrap();
    fs::write(sb.path("f"), "v2, longer").unwrap();
    let v = versions(&sb.mnt, "f");
    // The kernel now holds f's entry and attributes for their TTL; the daemon must make it
    // drop them when a removal under .versions/ changes what f stands for.
    assert_eq!(fs::metadata(sb.path("f")).unwrap().len(), 10);
    fs::remove_file(sb.path(".versions/f").join(&v[1])).unwrap();
    assert_eq!(fs::metadata(sb.path("f")).unwrap().len(), 2);
    assert_eq!(fs::read_to_string(sb.path("f")).unwrap(), "v1");
    assert_eq!(fs::read_to_string(sb.bucket.join("f")).unwrap(), "v1");
    assert_eq!(versions(&sb.mnt, "f"), vec![v[0].clone()]);
    // Removing the last version leaves no key and no history.
    fs::remove_file(sb.path(".versions/f").join(&v[0])).unwrap();
    assert_eq!(errno(fs::metadata(sb.path("f"))), libc::ENOENT);
    // The name is free again at once: a new write makes a new key.
    fs::write(sb.path("f"), "new").unwrap();
    assert_eq!(fs::read_to_string(sb.path("f")).unwrap(), "new");
    assert_eq!(versions(&sb.mnt, "f").len(), 1);
    assert!(!versions(&sb.mnt, "f").contains(&v[0]));
    fs::remove_file(sb.path(".versions/f").join(&versions(&sb.mnt, "f")[0])).unwrap();
    // The key's history folder goes with its last version, at once: the kernel's cached
    // entry of .versions/f must not answer for it.
    assert_eq!(errno(fs::metadata(sb.path(".versions/f"))), libc::ENOENT);
    assert!(!sb.bucket.join(".bucketfs/versions/f").exists());
}

#[test]
fn copying_an_old_version_back_restores_it_as_a_new_version() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    fs::write(sb.path("doc"), "good").unwrap();
    fs::write(sb.path("doc"), "bad").unwrap();
    let v = versions(&sb.mnt, "doc");
    let (ok, _, err) = run(
        "cp",
        &[
            sb.path(".versions/doc").join(&v[0]).to_str().unwrap(),
            sb.path("doc").to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(fs::read_to_string(sb.path("doc")).unwrap(), "good");
    assert_eq!(versions(&sb.mnt, "doc").len(), 3);
}

#[test]
fn the_versions_tree_is_read_only() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    fs::write(sb.path("k"), "x").unwrap();
    let v = versions(&sb.mnt, "k");
    let entry = sb.path(".versions/k").join(&v[0]);
    let e = errno(fs::write(sb.path(".versions/k/new"), "x"));
    assert!(e == libc::EROFS || e == libc::EACCES, "errno {e}");
    let e = errno(fs::OpenOptions::new().write(true).open(&entry));
    assert!(e == libc::EROFS || e == libc::EACCES, "errno {e}");
    let e = errno(fs::create_dir(sb.path(".versions/newdir")));
    assert!(e == libc::EROFS || e == libc::EACCES, "errno {e}");
    assert_eq!(errno(fs::create_dir(sb.path(".versions"))), libc::EEXIST);
    assert_eq!(fs::read_to_string(&entry).unwrap(), "x");
}

#[test]
fn deleted_keys_stay_reachable_under_versions_including_nested_ones() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    fs::create_dir_all(sb.path("a/b")).unwrap();
    fs::write(sb.path("a/b/c.txt"), "deep").unwrap();
    fs::remove_file(sb.path("a/b/c.txt")).unwrap();
    let names: Vec<String> = fs::read_dir(sb.path(".versions/a/b"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["c.txt"]);
    assert_eq!(versions(&sb.mnt, "a/b/c.txt").len(), 2);
}

#[test]
fn editor_save_by_rename_adds_exactly_one_version_to_the_target() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    fs::write(sb.path("notes.txt"), "old").unwrap();
    xattr::set(sb.path("notes.txt"), "user.s3.tag.keep", b"yes").unwrap();
    fs::write(sb.path(".notes.txt.swp"), "new").unwrap();
    xattr::set(sb.path(".notes.txt.swp"), "user.s3.tag.from", b"temp").unwrap();
    fs::rename(sb.path(".notes.txt.swp"), sb.path("notes.txt")).unwrap();
    assert_eq!(fs::read_to_string(sb.path("notes.txt")).unwrap(), "new");
    assert_eq!(versions(&sb.mnt, "notes.txt").len(), 2);
    // The target's new version carries the source's tags, as S3 CopyObject does.
    assert_eq!(
        xget(&sb.path("notes.txt"), "user.s3.tag.from").as_deref(),
        Some("temp")
    );
    assert_eq!(xget(&sb.path("notes.txt"), "user.s3.tag.keep"), None);
    let src = versions(&sb.mnt, ".notes.txt.swp");
    assert_eq!(src.len(), 2);
    assert!(is_delete_marker(&sb.mnt, ".notes.txt.swp", &src[1]));
}

/// rsync writes each file as `.NAME.XXXXXX`, closes it (a version), sets its mode and times and
/// renames it into place. The temporary key keeps that version and a delete marker, stored as a
/// tombstone; the target gets the bytes and the attributes rsync set.
#[test]
fn rsync_into_the_mount_leaves_each_temporary_as_a_version_and_a_marker() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    let src = sb.dir.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("a"), "alpha").unwrap();
    fs::write(src.join("sub/b"), vec![b'b'; 100_000]).unwrap(); // past the copy limit
    fs::set_permissions(src.join("a"), fs::Permissions::from_mode(0o640)).unwrap();
    let (ok, _, err) = run(
        "rsync",
        &[
            "-a",
            &format!("{}/", src.display()),
            sb.path("dst").to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    for name in ["a", "sub/b"] {
        let (ours, theirs) = (
            fs::metadata(sb.path(&format!("dst/{name}"))).unwrap(),
            fs::metadata(src.join(name)).unwrap(),
        );
        assert_eq!(
            fs::read(sb.path(&format!("dst/{name}"))).unwrap(),
            fs::read(src.join(name)).unwrap()
        );
        assert_eq!(
            (ours.mode(), ours.mtime(), ours.mtime_nsec()),
            (theirs.mode(), theirs.mtime(), theirs.mtime_nsec()),
            "{name}"
        );
        assert_eq!(versions(&sb.mnt, &format!("dst/{name}")).len(), 1);
    }
    for (folder, name, bytes) in [("dst", "a", 5), ("dst/sub", "b", 100_000)] {
        let temps: Vec<String> = fs::read_dir(sb.path(&format!(".versions/{folder}")))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(&format!(".{name}.")))
            .collect();
        assert_eq!(temps.len(), 1, "{temps:?}");
        let temp = format!("{folder}/{}", temps[0]);
        let v = versions(&sb.mnt, &temp);
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(is_delete_marker(&sb.mnt, &temp, &v[1]));
        let old = sb.path(&format!(".versions/{temp}")).join(&v[0]);
        assert_eq!(fs::metadata(&old).unwrap().len(), bytes);
    }
    // Whether rsync's temporaries were copied depends on a race: rsync reopens each one
    // read-only (for its chmod) just before the rename, and a file still held open is never
    // copied; that release may reach the daemon after the rename. A temporary written,
    // closed and renamed is copied, and the old key is a tombstone.
    fs::write(sb.path("dst/.c.tmp"), "gamma").unwrap();
    fs::rename(sb.path("dst/.c.tmp"), sb.path("dst/c")).unwrap();
    assert_eq!(fs::read_to_string(sb.path("dst/c")).unwrap(), "gamma");
    assert!(sb.bucket.join(".bucketfs/versions/dst/.c.tmp").is_file());
    assert_eq!(versions(&sb.mnt, "dst/.c.tmp").len(), 2);
}

/// A file held open for reading while renamed keeps its inode, which the old key's version
/// shares. Readers and a writer of one file share one inode, so a writer of the new name
/// while the reader holds it is refused (ETXTBSY) rather than rewrite the old key's version;
/// once the reader lets go, the write goes through.
#[test]
fn a_file_renamed_while_open_for_reading_never_rewrites_the_old_keys_version() {
    let sb = Sandbox::new();
    let m = sb.mount(&[]);
    fs::write(sb.path("a"), "hello\n").unwrap();
    let reader = fs::File::open(sb.path("a")).unwrap();
    fs::rename(sb.path("a"), sb.path("b")).unwrap();
    let append = || {
        fs::OpenOptions::new()
            .append(true)
            .open(sb.path("b"))
            .and_then(|mut f| f.write_all(b"more\n"))
    };
    assert_eq!(errno(append()), libc::ETXTBSY);
    assert!(
        m.log().contains("also an older version of another key"),
        "{}",
        m.log()
    );
    assert_eq!(fs::read_to_string(sb.path("b")).unwrap(), "hello\n");
    drop(reader);
    // The kernel sends the reader's release after close returns.
    wait_until(
        "the append after the reader's release",
        std::time::Duration::from_secs(10),
        || append().is_ok(),
    );
    assert_eq!(fs::read_to_string(sb.path("b")).unwrap(), "hello\nmore\n");
    assert_eq!(versions(&sb.mnt, "b").len(), 2);
    let a = versions(&sb.mnt, "a");
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!(
        fs::read_to_string(sb.path(".versions/a").join(&a[0])).unwrap(),
        "hello\n"
    );
}

/// A tombstone's version is read from its inode. A renamed big file's inode is also the old
/// key's version (a hard link), so deleting the new key keeps its history the ordinary way,
/// and a later change of the old key's times (undeleted) leaves its Last-Modified as it was.
#[test]
fn a_deleted_key_whose_bytes_another_key_shares_keeps_its_own_metadata() {
    let sb = Sandbox::new();
    let m = sb.mount(&[]);
    fs::write(sb.path("a"), vec![b'x'; 100_000]).unwrap(); // past the copy limit: shared
    fs::rename(sb.path("a"), sb.path("b")).unwrap();
    fs::remove_file(sb.path("b")).unwrap();
    assert!(
        sb.bucket.join(".bucketfs/versions/b").is_dir(),
        "no tombstone on an inode that a's version links too"
    );
    let b = versions(&sb.mnt, "b");
    assert_eq!(b.len(), 2, "{b:?}");
    let old_b = sb.path(".versions/b").join(&b[0]);
    let mtime = |p: &std::path::Path| fs::metadata(p).unwrap().modified().unwrap();
    let before = mtime(&old_b);

    // Undelete a (remove its marker): its version, that inode, is current again.
    let a = versions(&sb.mnt, "a");
    assert!(is_delete_marker(&sb.mnt, "a", &a[1]));
    fs::remove_file(sb.path(".versions/a").join(&a[1])).unwrap();
    let long_ago = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    let (ok, _, err) = run(
        "touch",
        &["-m", "-d", "@1000000000", sb.path("a").to_str().unwrap()],
    );
    assert!(ok, "{err}");
    // Read again from a fresh mount: the kernel keeps attributes for a second.
    m.unmount();
    let _m = sb.mount(&[]);
    assert_eq!(mtime(&sb.path("a")), long_ago);
    assert_eq!(mtime(&old_b), before, "b's version keeps its Last-Modified");
    assert_eq!(fs::read(&old_b).unwrap(), vec![b'x'; 100_000]);
}

#[test]
fn vim_style_rename_of_a_file_still_open_for_writing_keeps_its_bytes() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    let mut f = fs::File::create(sb.path("tmp")).unwrap();
    f.write_all(b"written before rename").unwrap();
    fs::rename(sb.path("tmp"), sb.path("final")).unwrap();
    f.write_all(b", and after").unwrap();
    drop(f);
    assert_eq!(
        fs::read_to_string(sb.path("final")).unwrap(),
        "written before rename, and after"
    );
    assert_eq!(versions(&sb.mnt, "final").len(), 1);
    assert_eq!(errno(fs::metadata(sb.path(".versions/tmp"))), libc::ENOENT);
}

#[test]
fn directory_rename_moves_every_key_below_it() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    fs::create_dir_all(sb.path("src/sub")).unwrap();
    fs::write(sb.path("src/a"), "A").unwrap();
    fs::write(sb.path("src/sub/b"), "B").unwrap();
    fs::rename(sb.path("src"), sb.path("dst")).unwrap();
    assert_eq!(fs::read_to_string(sb.path("dst/a")).unwrap(), "A");
    assert_eq!(fs::read_to_string(sb.path("dst/sub/b")).unwrap(), "B");
    assert_eq!(errno(fs::metadata(sb.path("src"))), libc::ENOENT);
    let old = versions(&sb.mnt, "src/sub/b");
    assert!(is_delete_marker(&sb.mnt, "src/sub/b", &old[1]));
    assert_eq!(
        errno(fs::rename(sb.path("dst"), sb.path("dst/sub/x"))),
        libc::EINVAL
    );
}

#[test]
fn rename_noreplace_and_onto_nonempty_dir_are_refused() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    fs::create_dir_all(sb.path("d1")).unwrap();
    fs::create_dir_all(sb.path("d2")).unwrap();
    fs::write(sb.path("d2/x"), "x").unwrap();
    assert_eq!(
        errno(fs::rename(sb.path("d1"), sb.path("d2"))),
        libc::ENOTEMPTY
    );
    fs::write(sb.path("f"), "f").unwrap();
    assert_eq!(errno(fs::rename(sb.path("f"), sb.path("d1"))), libc::EISDIR);
    assert!(sb.path("d1").is_dir() && sb.path("d2/x").is_file());
}

/// unlink(2) of what is not an object is refused as on any Linux filesystem, and changes
/// nothing: no delete marker, the folder and its file as they were.
#[test]
fn unlink_of_a_directory_or_a_missing_name_is_refused_and_changes_nothing() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    fs::create_dir(sb.path("d")).unwrap();
    fs::write(sb.path("d/f"), "f").unwrap();
    fs::write(sb.path("was-a-file"), "1").unwrap();
    fs::remove_file(sb.path("was-a-file")).unwrap();
    fs::create_dir(sb.path("was-a-file")).unwrap();
    for (name, expected) in [
        ("d", libc::EISDIR),
        ("was-a-file", libc::EISDIR),
        ("missing", libc::ENOENT),
        ("d/missing", libc::ENOENT),
        ("d/f/x", libc::ENOTDIR),
        (".bucketfs", libc::ENOENT),
        (".versions", libc::EISDIR),
    ] {
        assert_eq!(errno(fs::remove_file(sb.path(name))), expected, "rm {name}");
    }
    assert_eq!(fs::read_to_string(sb.path("d/f")).unwrap(), "f");
    assert!(sb.path("was-a-file").is_dir());
    assert_eq!(versions(&sb.mnt, "d/f").len(), 1);
    assert_eq!(
        versions(&sb.mnt, "was-a-file").len(),
        2,
        "a version and its marker"
    );
    assert!(!sb.path(".versions/d/missing").exists());
}

#[test]
fn files_put_into_the_bucket_directory_by_hand_are_version_null() {
    let sb = Sandbox::new();
    sb.create(&[]);
    fs::write(sb.bucket.join("restored.txt"), "from a backup").unwrap();
    let _m = sb.mount(&[]);
    let f = sb.path("restored.txt");
    assert_eq!(fs::read_to_string(&f).unwrap(), "from a backup");
    assert_eq!(xget(&f, "user.s3.version-id").as_deref(), Some("null"));
    assert_eq!(
        fs::read_to_string(sb.path(".versions/restored.txt/null")).unwrap(),
        "from a backup"
    );
    // Overwriting keeps it as history; rm then adds a marker, as S3 does after versioning.
    fs::write(&f, "edited").unwrap();
    fs::remove_file(&f).unwrap();
    let names: Vec<String> = fs::read_dir(sb.path(".versions/restored.txt"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 3);
    assert_eq!(names[0], "null");
    assert_eq!(
        fs::read_to_string(sb.path(".versions/restored.txt/null")).unwrap(),
        "from a backup"
    );
    assert_eq!(errno(fs::metadata(&f)), libc::ENOENT);
}

/// `.versions/` lists live objects whose history is implicit or `null` (no folder in the
/// version tree), nested ones included, with the same id the file's xattr shows.
#[test]
fn versions_listings_show_new_and_unversioned_files_in_nested_folders() {
    let sb = Sandbox::new();
    sb.create(&[]);
    fs::create_dir_all(sb.bucket.join("by/hand")).unwrap();
    fs::write(sb.bucket.join("by/hand/old.txt"), "from a backup").unwrap();
    let _m = sb.mount(&[]);
    fs::create_dir_all(sb.path("a/b")).unwrap();
    fs::write(sb.path("a/b/new.txt"), "fresh").unwrap();
    let names = |p: &str| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(sb.path(p))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(".versions"), vec!["a", "by"]);
    assert_eq!(names(".versions/a/b"), vec!["new.txt"]);
    assert_eq!(names(".versions/by/hand"), vec!["old.txt"]);
    let id = xget(&sb.path("a/b/new.txt"), "user.s3.version-id").unwrap();
    assert_eq!(names(".versions/a/b/new.txt"), vec![id.clone()]);
    assert_eq!(
        fs::read_to_string(sb.path(".versions/a/b/new.txt").join(&id)).unwrap(),
        "fresh"
    );
    assert_eq!(names(".versions/by/hand/old.txt"), vec!["null"]);
}

/// Through a mount, a new file is one inode until its key changes: no folder or metadata file
/// in the version tree, its version id on the backing file. Overwriting it keeps that id for
/// the first version, as history.
#[test]
fn a_new_file_has_no_history_on_disk_until_its_key_changes() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    fs::create_dir(sb.path("d")).unwrap();
    fs::write(sb.path("d/f"), "first").unwrap();
    let first = xget(&sb.path("d/f"), "user.s3.version-id").unwrap();
    assert!(!sb.bucket.join(".bucketfs/versions/d").exists());
    let on_inode = xattr::get(sb.bucket.join("d/f"), "user.bucketfs.version_id")
        .unwrap()
        .unwrap();
    assert_eq!(String::from_utf8(on_inode).unwrap(), first);

    fs::write(sb.path("d/f"), "second").unwrap();
    let v = versions(&sb.mnt, "d/f");
    assert_eq!(v.len(), 2, "{v:?}");
    assert_eq!(v[0], first, "the first version keeps its id");
    assert!(
        sb.bucket
            .join(format!(".bucketfs/versions/d/f/@{first}.json"))
            .exists()
    );
    assert_eq!(
        fs::read_to_string(sb.path(".versions/d/f").join(&first)).unwrap(),
        "first"
    );
    assert_eq!(fs::read_to_string(sb.path("d/f")).unwrap(), "second");
}

/// `rm` of a file whose one version is implicit leaves a tombstone in the version tree (one
/// file where the key's folder would be); through the mount it is an ordinary deleted key,
/// and the key's next change turns it into an ordinary folder with the same ids.
#[test]
fn rm_of_a_new_file_leaves_a_tombstone_that_reads_as_a_deleted_key() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    fs::create_dir(sb.path("d")).unwrap();
    fs::write(sb.path("d/f"), "first").unwrap();
    let first = xget(&sb.path("d/f"), "user.s3.version-id").unwrap();
    fs::remove_file(sb.path("d/f")).unwrap();
    assert!(!sb.path("d/f").exists());
    let tombstone = sb.bucket.join(".bucketfs/versions/d/f");
    assert!(tombstone.is_file(), "a tombstone, not a folder");

    let v = versions(&sb.mnt, "d/f");
    assert_eq!(v.len(), 2, "{v:?}");
    assert_eq!(v[0], first);
    assert!(is_delete_marker(&sb.mnt, "d/f", &v[1]));
    assert!(!is_delete_marker(&sb.mnt, "d/f", &v[0]));
    let names: Vec<String> = fs::read_dir(sb.path(".versions/d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["f".to_string()]);
    let old = sb.path(".versions/d/f").join(&first);
    assert_eq!(fs::read_to_string(&old).unwrap(), "first");
    assert!(xget(&old, "user.s3.etag").is_some());
    assert!(tombstone.is_file(), "reading changes nothing");

    // Tagging the old version is a change to the key's history: it expands the tombstone.
    xattr::set(&old, "user.s3.tag.kept", b"yes").unwrap();
    assert!(tombstone.is_dir());
    assert_eq!(xget(&old, "user.s3.tag.kept").as_deref(), Some("yes"));
    assert_eq!(versions(&sb.mnt, "d/f"), v);

    // Removing the marker of another tombstone undeletes its key.
    fs::write(sb.path("d/g"), "back").unwrap();
    fs::remove_file(sb.path("d/g")).unwrap();
    assert!(sb.bucket.join(".bucketfs/versions/d/g").is_file());
    let g = versions(&sb.mnt, "d/g");
    fs::remove_file(sb.path(".versions/d/g").join(&g[1])).unwrap();
    assert_eq!(fs::read_to_string(sb.path("d/g")).unwrap(), "back");
    assert_eq!(xget(&sb.path("d/g"), "user.s3.version-id").unwrap(), g[0]);

    // And a new write after the delete adds a third version.
    fs::write(sb.path("d/h"), "one").unwrap();
    fs::remove_file(sb.path("d/h")).unwrap();
    fs::write(sb.path("d/h"), "two").unwrap();
    let h = versions(&sb.mnt, "d/h");
    assert_eq!(h.len(), 3, "{h:?}");
    assert!(is_delete_marker(&sb.mnt, "d/h", &h[1]));
    assert_eq!(
        fs::read_to_string(sb.path(".versions/d/h").join(&h[0])).unwrap(),
        "one"
    );
    assert_eq!(fs::read_to_string(sb.path("d/h")).unwrap(), "two");
}

/// The kernel drops a key's cached entry only under the key folder's lock. A rename between
/// that folder and `.versions/K` takes the folder's lock, then waits for the removal in
/// `.versions/K` to end: the removal must not wait for the entry to be dropped for good.
#[test]
fn removing_versions_while_renames_into_versions_race_it_neither_hangs_nor_leaves_stale_names() {
    let sb = Sandbox::new();
    let mut m = sb.mount(&[]);
    fs::write(sb.path("x"), "x").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let renamer = {
        let (stop, from, to) = (
            std::sync::Arc::clone(&stop),
            sb.path("x"),
            sb.path(".versions/k/y"),
        );
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Refused (.versions is read-only), but the kernel locks both folders first.
                let _ = fs::rename(&from, &to);
            }
        })
    };
    let (done, finished) = std::sync::mpsc::channel();
    let (mnt, k) = (sb.mnt.clone(), sb.path("k"));
    std::thread::spawn(move || {
        for round in 0..3 {
            fs::write(&k, format!("round {round}")).unwrap();
            for v in versions(&mnt, "k") {
                fs::remove_file(mnt.join(".versions/k").join(v)).unwrap();
            }
            assert_eq!(errno(fs::metadata(&k)), libc::ENOENT, "round {round}");
        }
        done.send(()).unwrap();
    });
    // A liveness guard, not a timing: a deadlock would otherwise hang the suite. Aborting the
    // connection frees the threads stuck in the kernel.
    let outcome = finished.recv_timeout(std::time::Duration::from_secs(60));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if outcome.is_err() {
        m.abort_connection();
    }
    renamer.join().unwrap();
    outcome.expect("version removals finished (a disconnect means the rounds' asserts failed)");
    assert_eq!(fs::read_to_string(sb.path("x")).unwrap(), "x");
}

#[test]
fn an_undeleted_key_is_back_at_once_where_it_was_looked_up_as_absent() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    fs::create_dir_all(sb.path("a/b")).unwrap();
    fs::create_dir_all(sb.path("p/q")).unwrap();
    fs::write(sb.path("a/b/c"), "back").unwrap();
    fs::write(sb.path("p/q/r"), "back too").unwrap();
    fs::remove_file(sb.path("a/b/c")).unwrap();
    fs::remove_file(sb.path("p/q/r")).unwrap();
    fs::remove_dir(sb.path("p/q")).unwrap();
    fs::remove_dir(sb.path("p")).unwrap();
    // The kernel now remembers `a/b/c`, and `p` at the top, as absent.
    assert_eq!(errno(fs::symlink_metadata(sb.path("a/b/c"))), libc::ENOENT);
    assert_eq!(errno(fs::symlink_metadata(sb.path("p"))), libc::ENOENT);
    // Removing the delete marker (S3 DELETE of that version) brings each key back, and the
    // next look finds it: no wait for the kernel's cache to expire.
    for key in ["a/b/c", "p/q/r"] {
        let marker = versions(&sb.mnt, key).pop().unwrap();
        assert!(is_delete_marker(&sb.mnt, key, &marker));
        fs::remove_file(sb.path(&format!(".versions/{key}/{marker}"))).unwrap();
    }
    assert_eq!(fs::read_to_string(sb.path("a/b/c")).unwrap(), "back");
    assert_eq!(fs::read_to_string(sb.path("p/q/r")).unwrap(), "back too");
}

/// Root backing up its users' files (`cp -a`, `tar`, `rsync -a`) writes each file and hands
/// it to its owner. The version's S3 owner stays root (the writer) and its POSIX owner is the
/// user, as for any version; the bucket keeps both without a folder or metadata file per key,
/// as it does for root's own files. rsync's temporaries become tombstones whose delete
/// markers are root's.
#[test]
fn a_root_backup_of_other_users_files_keeps_both_owners_without_folders() {
    use std::os::unix::fs::MetadataExt;
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    let src = sb.dir.path().join("home");
    fs::create_dir_all(src.join("docs")).unwrap();
    fs::write(src.join("a"), "alpha").unwrap();
    fs::write(src.join("docs/b"), "beta").unwrap();
    let (ok, _, err) = run("chown", &["-R", "65534:65534", src.to_str().unwrap()]);
    assert!(ok, "{err}");
    let tar = format!(
        "tar -C {} -cf - . | tar -C {} -xf -",
        src.display(),
        sb.path("tar").display()
    );
    fs::create_dir(sb.path("tar")).unwrap();
    for (how, ok_err) in [
        (
            "cp",
            run(
                "cp",
                &["-a", src.to_str().unwrap(), sb.path("cp").to_str().unwrap()],
            ),
        ),
        ("tar", sh(sb.dir.path(), &tar)),
        (
            "rsync",
            run(
                "rsync",
                &[
                    "-a",
                    &format!("{}/", src.display()),
                    sb.path("rsync").to_str().unwrap(),
                ],
            ),
        ),
    ] {
        let (ok, _, err) = ok_err;
        assert!(ok, "{how}: {err}");
        for name in ["a", "docs/b"] {
            let path = sb.path(&format!("{how}/{name}"));
            let st = fs::metadata(&path).unwrap();
            assert_eq!((st.uid(), st.gid()), (65534, 65534), "{how}/{name}");
            assert_eq!(fs::read(&path).unwrap(), fs::read(src.join(name)).unwrap());
            assert_eq!(versions(&sb.mnt, &format!("{how}/{name}")).len(), 1);
            assert!(
                !sb.bucket
                    .join(format!(".bucketfs/versions/{how}/{name}"))
                    .exists(),
                "{how}/{name}: no folder of its own"
            );
        }
    }
    // Each of rsync's temporaries: a tombstone, the version the user's, the marker root's.
    let temps: Vec<String> = fs::read_dir(sb.path(".versions/rsync"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".a."))
        .collect();
    assert_eq!(temps.len(), 1, "{temps:?}");
    let temp = format!("rsync/{}", temps[0]);
    let v = versions(&sb.mnt, &temp);
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(is_delete_marker(&sb.mnt, &temp, &v[1]));
    let uid = |id: &str| {
        fs::metadata(sb.path(&format!(".versions/{temp}/{id}")))
            .unwrap()
            .uid()
    };
    assert_eq!((uid(&v[0]), uid(&v[1])), (65534, 0));
    // Whether rsync's temporary became a tombstone depends on a race: rsync may rename it
    // while its read-only reopen is still held, which adopts the version into a folder
    // instead. Either way its history is kept. Root's own write, chown and rename of another
    // user's file, done as rsync does it but without the reopen, leaves a tombstone.
    let history = sb.bucket.join(format!(".bucketfs/versions/{temp}"));
    assert!(history.exists(), "{temp}: its history is kept");
    fs::write(sb.path("rsync/.c.tmp"), "gamma").unwrap();
    let (ok, _, err) = run(
        "chown",
        &["65534:65534", sb.path("rsync/.c.tmp").to_str().unwrap()],
    );
    assert!(ok, "{err}");
    fs::rename(sb.path("rsync/.c.tmp"), sb.path("rsync/c")).unwrap();
    assert!(
        sb.bucket.join(".bucketfs/versions/rsync/.c.tmp").is_file(),
        "a tombstone, not a folder"
    );
    let v = versions(&sb.mnt, "rsync/.c.tmp");
    assert_eq!(v.len(), 2, "{v:?}");
    let uid = |id: &str| {
        fs::metadata(sb.path(&format!(".versions/rsync/.c.tmp/{id}")))
            .unwrap()
            .uid()
    };
    assert_eq!((uid(&v[0]), uid(&v[1])), (65534, 0));
    // The S3 owner shows once a change writes the version's metadata down: tagging adopts
    // the version, and its record says root owns it and the user's uid is its POSIX owner.
    for how in ["cp", "tar", "rsync"] {
        let key = format!("{how}/a");
        let id = xget(&sb.path(&key), "user.s3.version-id").unwrap();
        xattr::set(sb.path(&key), "user.s3.tag.backup", b"yes").unwrap();
        let meta = meta(&sb.bucket, &key, &id).expect("adopted");
        assert_eq!(meta["owner"], 0, "{how}: {meta}");
        assert_eq!(meta["posix"]["uid"], 65534, "{how}: {meta}");
    }
}
