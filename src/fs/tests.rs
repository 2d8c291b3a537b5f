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
        folder: Duration::from_millis(50),
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

/// `dd of=f` (or a shell's `cmd > f`) closes a dup of its descriptor before writing: a stat
/// of the folder, which every path walk through it makes, waits for that close's release in
/// vain. It must give up after the folder's short wait, not the file's own longer one; the
/// file is then known to be shared and no folder stat waits for it again.
#[test]
fn a_folder_stat_gives_up_on_a_dup_closed_file_after_the_folder_wait() {
    let long = Duration::from_secs(30);
    let (_dir, fs) = new_fs_with(SettleTimeouts {
        first: long,
        shared: long,
        folder: Duration::from_millis(50),
    });
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC;
    let (_attr, opened) = fs
        .create(ROOT_INO, OsStr::new("f"), 0o644, flags, ROOT)
        .unwrap();
    fs.flush(opened.fh).unwrap(); // the dup; the descriptor stays open
    let started = std::time::Instant::now();
    fs.getattr(ROOT_INO).unwrap();
    fs.getattr(ROOT_INO).unwrap();
    // Only a wait of the file's own (30 s) comes near this bound.
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

/// `exec 3>f; echo x >&3; ls; exec 3>&-; ls; getfattr -n user.s3.version-id f`: the shell's
/// redirect closes a dup of the descriptor first, the first `ls` waits for that close in
/// vain (the descriptor is still open), and the RELEASE of the last close may reach the
/// daemon after the requests of other processes. The second `ls` must not wait for a file
/// known to be shared (a script logging into the folder would stall every listing), and the
/// getfattr must wait for the release and see the version.
#[test]
fn the_last_close_of_a_shared_descriptor_is_waited_for_and_its_folder_is_not() {
    let (_dir, fs) = new_fs();
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC;
    let (attr, opened) = fs
        .create(ROOT_INO, OsStr::new("f"), 0o644, flags, ROOT)
        .unwrap();
    fs.write(opened.fh, 0, b"x").unwrap();
    fs.flush(opened.fh).unwrap(); // the dup closed by the shell's redirect
    fs.getattr(ROOT_INO).unwrap(); // waits for a release that is not coming, and gives up
    fs.flush(opened.fh).unwrap(); // the last close; its RELEASE is on the way
    // Waiting here would end only when the 30 s wait times out, and give up on the file.
    fs.getattr(ROOT_INO).unwrap();
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
