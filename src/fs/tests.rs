//! The filesystem core driven directly, without a mount: orderings of kernel requests that
//! a real mount produces only by chance.

use super::*;
use crate::fs::nodes::ROOT_INO;
use std::thread;

const ROOT: Caller = Caller { uid: 0, gid: 0 };

/// A first wait that times out quickly, and a wait for a shared file long enough that no
/// scheduler delay outlasts it: a test that sees it end sees a bug.
fn new_fs() -> (tempfile::TempDir, Arc<BucketFs>) {
    new_fs_with(SettleTimeouts {
        first: Duration::from_millis(50),
        shared: Duration::from_secs(30),
        stat: Duration::from_millis(50),
    })
}

fn new_fs_with(settle_timeouts: SettleTimeouts) -> (tempfile::TempDir, Arc<BucketFs>) {
    let dir = tempfile::tempdir().unwrap();
    let bucket = Bucket::create(&dir.path().join("bucket"), 0, false).unwrap();
    let opts = FsOptions {
        settle_timeouts,
        ..FsOptions::default()
    };
    (dir, Arc::new(BucketFs::new(Arc::new(bucket), opts)))
}

/// `dd of=f` (or a shell's `cmd > f`) closes a dup of its descriptor before writing, and a
/// stat of the folder is in every path walk through it. It must not wait for that close's
/// release, which is not coming: a folder's stat waits for none of its files' releases (the
/// create already moved its times).
#[test]
fn a_folder_stat_does_not_wait_for_a_dup_closed_file() {
    let long = Duration::from_secs(30);
    let (_dir, fs) = new_fs_with(SettleTimeouts {
        first: long,
        shared: long,
        stat: long,
    });
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC;
    let (_attr, opened) = fs
        .create(ROOT_INO, OsStr::new("f"), 0o644, flags, ROOT)
        .unwrap();
    fs.flush(opened.fh).unwrap(); // the dup; the descriptor stays open
    let started = std::time::Instant::now();
    fs.getattr(ROOT_INO).unwrap();
    fs.getattr(ROOT_INO).unwrap();
    // Any wait at all (30 s) comes near this bound.
    assert!(
        started.elapsed() < long / 3,
        "waited {:?}",
        started.elapsed()
    );
    fs.write(opened.fh, 0, b"x").unwrap();
    fs.flush(opened.fh).unwrap();
    fs.release(opened.fh).unwrap();
    let current = fs
        .bucket()
        .current(&ObjectKey::new("f".to_string()).unwrap());
    assert_eq!(current.unwrap().expect("published at release").size, 1);
}

/// `exec 3>f; echo x >&3; getfattr -n user.s3.etag f; exec 3>&-; getfattr -n
/// user.s3.version-id f`: the shell's redirect closes a dup of the descriptor first, the
/// first getfattr waits for that close in vain (the descriptor is still open), and the
/// RELEASE of the last close may reach the daemon after the requests of other processes. The
/// second getfattr must wait for the release of the file now known to be shared, and see the
/// version.
#[test]
fn the_last_close_of_a_shared_descriptor_is_waited_for() {
    let (_dir, fs) = new_fs();
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC;
    let (attr, opened) = fs
        .create(ROOT_INO, OsStr::new("f"), 0o644, flags, ROOT)
        .unwrap();
    fs.write(opened.fh, 0, b"x").unwrap();
    fs.flush(opened.fh).unwrap(); // the dup closed by the shell's redirect
    // Waits for a release that is not coming, and gives up: nothing published yet.
    assert!(fs.getxattr(attr.ino, xattr::VERSION_ID).is_err());
    fs.getattr(ROOT_INO).unwrap();
    fs.flush(opened.fh).unwrap(); // the last close; its RELEASE is on the way
    let releaser = {
        let fs = fs.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            fs.release(opened.fh).unwrap();
        })
    };
    let id = fs.getxattr(attr.ino, xattr::VERSION_ID);
    releaser.join().unwrap();
    let current = fs
        .bucket()
        .current(&ObjectKey::new("f".to_string()).unwrap());
    let current = current.unwrap().expect("the closed file was published");
    assert_eq!(id.unwrap(), current.version_id.into_bytes());
}

/// A writer's release publishes without the lock. Held at that point (a fail point), the
/// folder's stat is answered, and a tag set on the file waits for the publish and lands on
/// the version it made, not in the open file's attributes the publish has already taken.
#[cfg(feature = "failpoints")]
#[test]
fn a_tag_set_during_a_publish_waits_for_it_and_the_folder_stat_does_not() {
    const HELD: &str = "held-publish";
    let (_dir, fs) = new_fs();
    let (held, is_held) = crossbeam_channel::bounded(0);
    let (go, wait_for_go) = crossbeam_channel::bounded::<()>(0);
    fail::cfg_callback("fs::publish_without_lock", move || {
        if thread::current().name() == Some(HELD) {
            held.send(()).unwrap();
            wait_for_go.recv().unwrap();
        }
    })
    .unwrap();
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC;
    let (attr, opened) = fs
        .create(ROOT_INO, OsStr::new("f"), 0o644, flags, ROOT)
        .unwrap();
    fs.write(opened.fh, 0, b"x").unwrap();
    fs.flush(opened.fh).unwrap();
    let releaser = {
        let fs = fs.clone();
        thread::Builder::new()
            .name(HELD.into())
            .spawn(move || fs.release(opened.fh).unwrap())
            .unwrap()
    };
    is_held.recv().unwrap();
    let (stat_done, stat_answered) = crossbeam_channel::bounded(1);
    let stat = {
        let fs = fs.clone();
        thread::spawn(move || stat_done.send(fs.getattr(ROOT_INO).is_ok()).unwrap())
    };
    assert_eq!(
        stat_answered.recv_timeout(Duration::from_secs(10)),
        Ok(true)
    );
    stat.join().unwrap();
    let tagger = {
        let fs = fs.clone();
        thread::spawn(move || fs.setxattr(attr.ino, "user.s3.tag.k", b"v").unwrap())
    };
    // Long enough for a setxattr that does not wait to be done before the publish goes on.
    thread::sleep(Duration::from_millis(200));
    go.send(()).unwrap();
    releaser.join().unwrap();
    tagger.join().unwrap();
    fail::remove("fs::publish_without_lock");
    let key = ObjectKey::new("f".to_string()).unwrap();
    let current = fs.bucket().current(&key).unwrap().expect("published");
    assert_eq!(current.size, 1);
    assert_eq!(
        xattr::get(&current.attrs(), "user.s3.tag.k").unwrap(),
        b"v".to_vec()
    );
}
