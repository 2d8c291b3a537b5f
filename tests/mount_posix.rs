//! POSIX behaviour through a real mount: I/O, metadata kept across remounts, refusals.

mod common;

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, SystemTime};

use common::*;

#[test]
fn random_offset_writes_append_truncate_and_read() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    let p = sb.path("data.bin");
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.write_all(&[b'a'; 10_000]).unwrap();
    f.seek(SeekFrom::Start(5_000)).unwrap();
    f.write_all(b"MIDDLE").unwrap();
    f.seek(SeekFrom::Start(20_000)).unwrap();
    f.write_all(b"END").unwrap(); // leaves a hole
    f.set_len(20_002).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut back = Vec::new();
    f.read_to_end(&mut back).unwrap();
    assert_eq!(back.len(), 20_002);
    assert_eq!(&back[5_000..5_006], b"MIDDLE");
    assert_eq!(&back[10_000..10_010], &[0u8; 10]);
    assert_eq!(&back[20_000..], b"EN");
    drop(f);
    let mut a = fs::OpenOptions::new().append(true).open(&p).unwrap();
    a.write_all(b"+tail").unwrap();
    drop(a);
    let all = fs::read(&p).unwrap();
    assert!(all.ends_with(b"EN+tail"));
    assert_eq!(versions(&sb.mnt, "data.bin").len(), 2);
    // Truncating by path (no open writer) is a whole new version.
    fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(3)
        .unwrap();
    let (ok, _, err) = run("truncate", &["-s", "2", p.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(fs::read(&p).unwrap(), b"aa");
    assert_eq!(versions(&sb.mnt, "data.bin").len(), 4);
}

#[test]
fn large_file_round_trips_and_old_version_stays_intact() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    let p = sb.path("big");
    let data: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    fs::write(&p, &data).unwrap();
    let mut f = fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.seek(SeekFrom::Start(4096)).unwrap();
    f.write_all(b"X").unwrap();
    drop(f);
    let v = versions(&sb.mnt, "big");
    assert_eq!(
        fs::read(sb.path(".versions/big").join(&v[0])).unwrap(),
        data
    );
    let now = fs::read(&p).unwrap();
    assert_eq!(now[4096], b'X');
    assert_eq!(now.len(), data.len());
}

#[test]
fn readers_and_a_writer_share_one_open_file() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    let p = sb.path("shared");
    fs::write(&p, "before").unwrap();
    let mut reader = fs::File::open(&p).unwrap();
    let mut writer = fs::OpenOptions::new().write(true).open(&p).unwrap();
    writer.write_all(b"AFTER!").unwrap();
    let mut s = String::new();
    reader.read_to_string(&mut s).unwrap();
    assert_eq!(
        s, "AFTER!",
        "an open reader sees the writer's bytes, as on a local fs"
    );
    drop(writer);
    drop(reader);
    let v = versions(&sb.mnt, "shared");
    assert_eq!(v.len(), 2);
    assert_eq!(
        fs::read_to_string(sb.path(".versions/shared").join(&v[0])).unwrap(),
        "before"
    );
    assert_eq!(fs::read_to_string(&p).unwrap(), "AFTER!");
}

#[test]
fn chmod_chown_utimens_persist_across_remount_without_new_versions() {
    let sb = Sandbox::new();
    let m = sb.mount(&[]);
    let p = sb.path("f");
    fs::write(&p, "x").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o751)).unwrap();
    std::os::unix::fs::chown(&p, Some(1234), Some(4321)).unwrap();
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    fs::File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_modified(t)
        .unwrap();
    fs::create_dir(sb.path("d")).unwrap();
    fs::set_permissions(sb.path("d"), fs::Permissions::from_mode(0o700)).unwrap();
    m.unmount();
    let _m = sb.mount(&[]);
    let md = fs::metadata(&p).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o751);
    assert_eq!((md.uid(), md.gid()), (1234, 4321));
    assert_eq!(md.modified().unwrap(), t);
    assert_eq!(fs::metadata(sb.path("d")).unwrap().mode() & 0o7777, 0o700);
    assert_eq!(versions(&sb.mnt, "f").len(), 1);
}

/// `rsync --inplace` and `touch -r` rewrite a file's bytes, then give it back its old mtime:
/// the same size and time as before, yet new content, so a new version.
#[test]
fn bytes_rewritten_then_given_back_their_old_mtime_are_a_new_version() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    let p = sb.path("f");
    fs::write(&p, "before").unwrap();
    let old = fs::metadata(&p).unwrap().modified().unwrap();
    let mut f = fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all(b"AFTER!").unwrap();
    f.set_modified(old).unwrap();
    drop(f);
    assert_eq!(fs::read_to_string(&p).unwrap(), "AFTER!");
    assert_eq!(fs::metadata(&p).unwrap().modified().unwrap(), old);
    let v = versions(&sb.mnt, "f");
    assert_eq!(v.len(), 2, "the rewrite is a version of its own");
    assert_eq!(
        fs::read_to_string(sb.path(".versions/f").join(&v[1])).unwrap(),
        "AFTER!"
    );
}

/// A chmod of a file open for writing that writes nothing still reaches the object (as a
/// chmod of a file open elsewhere would on any filesystem). One that rewrites it goes with the
/// new version only: the version it replaces keeps its mode, and a new file has no object to
/// reach until its close.
#[test]
fn chmod_of_a_file_open_for_writing_reaches_the_object_unless_new_content_carries_it() {
    let sb = Sandbox::new();
    let m = sb.mount(&[]);
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().mode() & 0o7777;
    let old = sb.path("old");
    fs::write(&old, "x").unwrap();
    fs::set_permissions(&old, fs::Permissions::from_mode(0o644)).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&old).unwrap();
    f.set_permissions(fs::Permissions::from_mode(0o640))
        .unwrap();
    drop(f);
    let rewritten = sb.path("rewritten");
    fs::write(&rewritten, "1").unwrap();
    fs::set_permissions(&rewritten, fs::Permissions::from_mode(0o644)).unwrap();
    let mut f = fs::File::create(&rewritten).unwrap(); // O_TRUNC: new content
    f.write_all(b"2").unwrap();
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .unwrap();
    drop(f);
    let new = sb.path("new");
    let f = fs::File::create(&new).unwrap();
    f.set_permissions(fs::Permissions::from_mode(0o604))
        .unwrap();
    assert_eq!(mode(&new), 0o604);
    drop(f);
    m.unmount();
    let _m = sb.mount(&[]);
    assert_eq!(mode(&old), 0o640);
    assert_eq!(versions(&sb.mnt, "old").len(), 1, "a chmod is no version");
    assert_eq!(mode(&rewritten), 0o600);
    let v = versions(&sb.mnt, "rewritten");
    assert_eq!(v.len(), 2);
    let replaced = meta(&sb.bucket, "rewritten", &v[0]).expect("the replaced version's metadata");
    assert_eq!(
        replaced["posix"]["mode"].as_u64().unwrap() & 0o7777,
        0o644,
        "the version replaced keeps its mode: {replaced}"
    );
    assert_eq!(mode(&new), 0o604);
    assert_eq!(versions(&sb.mnt, "new").len(), 1);
}

#[test]
fn symlinks_are_versions_and_persist_across_remount() {
    let sb = Sandbox::new();
    let m = sb.mount(&[]);
    fs::write(sb.path("target"), "t").unwrap();
    std::os::unix::fs::symlink("target", sb.path("link")).unwrap();
    assert_eq!(fs::read_to_string(sb.path("link")).unwrap(), "t");
    m.unmount();
    let _m = sb.mount(&[]);
    assert_eq!(
        fs::read_link(sb.path("link")).unwrap().to_str(),
        Some("target")
    );
    let v = versions(&sb.mnt, "link");
    assert_eq!(v.len(), 1);
    assert_eq!(
        fs::read_to_string(sb.path(".versions/link").join(&v[0])).unwrap(),
        "target"
    );
    assert_eq!(
        errno(std::os::unix::fs::symlink("x", sb.path("link"))),
        libc::EEXIST
    );
}

#[test]
fn hard_links_are_refused_with_eperm() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    fs::write(sb.path("a"), "a").unwrap();
    assert_eq!(
        errno(fs::hard_link(sb.path("a"), sb.path("b"))),
        libc::EPERM
    );
    assert!(!sb.path("b").exists());
}

#[test]
fn mkdir_persists_and_rmdir_of_nonempty_fails() {
    let sb = Sandbox::new();
    let m = sb.mount(&[]);
    fs::create_dir(sb.path("empty")).unwrap();
    fs::create_dir(sb.path("full")).unwrap();
    fs::write(sb.path("full/x"), "x").unwrap();
    assert_eq!(errno(fs::remove_dir(sb.path("full"))), libc::ENOTEMPTY);
    assert_eq!(errno(fs::create_dir(sb.path("empty"))), libc::EEXIST);
    m.unmount();
    let _m = sb.mount(&[]);
    assert!(sb.path("empty").is_dir());
    fs::remove_dir(sb.path("empty")).unwrap();
    fs::remove_file(sb.path("full/x")).unwrap();
    fs::remove_dir(sb.path("full")).unwrap(); // only deleted keys left: empty
    assert_eq!(errno(fs::remove_dir(sb.path("nope"))), libc::ENOENT);
}

#[test]
fn names_too_long_and_reserved_names_are_refused() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    assert_eq!(
        errno(fs::write(sb.path(&"n".repeat(256)), "x")),
        libc::ENAMETOOLONG
    );
    // A key over S3's 1024 bytes, though every component is short.
    let mut deep = sb.mnt.clone();
    for _ in 0..5 {
        deep.push("d".repeat(200));
        fs::create_dir(&deep).unwrap(); // 1004 bytes: still a valid key
    }
    assert_eq!(
        errno(fs::create_dir(deep.join("d".repeat(200)))),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno(fs::write(deep.join("e".repeat(30)), "x")),
        libc::ENAMETOOLONG
    );
    assert_eq!(errno(fs::write(sb.path(".bucketfs"), "x")), libc::EPERM);
    assert_eq!(errno(fs::metadata(sb.path(".bucketfs"))), libc::ENOENT);
    assert!(
        fs::read_dir(&sb.mnt)
            .unwrap()
            .all(|e| e.unwrap().file_name() != ".bucketfs")
    );
}

#[test]
fn fifos_and_sockets_are_versions_that_persist() {
    use std::os::unix::fs::FileTypeExt;
    let sb = Sandbox::new();
    let m = sb.mount(&[]);
    let (ok, _, err) = run("mkfifo", &["-m", "0640", sb.path("fifo").to_str().unwrap()]);
    assert!(ok, "{err}");
    let listener = std::os::unix::net::UnixListener::bind(sb.path("sock")).unwrap();
    drop(listener);
    assert!(
        fs::symlink_metadata(sb.path("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    // A FIFO works as one: the kernel serves it.
    let path = sb.path("fifo");
    let reader = std::thread::spawn(move || fs::read_to_string(path).unwrap());
    fs::write(sb.path("fifo"), "through the pipe").unwrap();
    assert_eq!(reader.join().unwrap(), "through the pipe");
    m.unmount();
    let _m = sb.mount(&[]);
    let md = fs::symlink_metadata(sb.path("fifo")).unwrap();
    assert!(md.file_type().is_fifo());
    assert_eq!(md.mode() & 0o777, 0o640);
    assert!(
        fs::symlink_metadata(sb.path("sock"))
            .unwrap()
            .file_type()
            .is_socket()
    );
    assert_eq!(versions(&sb.mnt, "fifo").len(), 1);
    fs::rename(sb.path("fifo"), sb.path("fifo2")).unwrap();
    assert!(
        fs::symlink_metadata(sb.path("fifo2"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    fs::remove_file(sb.path("fifo2")).unwrap();
    assert_eq!(versions(&sb.mnt, "fifo2").len(), 2);
}

#[test]
fn statfs_reports_the_bucket_disk() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    let (ok, out, _) = run("df", &["-P", sb.mnt.to_str().unwrap()]);
    assert!(ok);
    assert!(out.contains("bucketfs"), "{out}");
}

#[test]
fn the_bucket_is_plain_files_readable_without_bucketfs() {
    let sb = Sandbox::new();
    let m = sb.mount(&[]);
    fs::create_dir(sb.path("dir")).unwrap();
    fs::write(sb.path("dir/file.txt"), "plain").unwrap();
    fs::write(sb.path("gone"), "x").unwrap();
    fs::remove_file(sb.path("gone")).unwrap();
    m.unmount();
    assert_eq!(
        fs::read_to_string(sb.bucket.join("dir/file.txt")).unwrap(),
        "plain"
    );
    assert!(!sb.bucket.join("gone").exists());
}

#[test]
fn a_new_file_has_the_times_of_its_create_even_from_a_staging_file_made_earlier() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    // The stager prepares staging files right after mounting; create one well after that.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let before = std::time::SystemTime::now();
    fs::write(sb.path("fresh"), "x").unwrap();
    let st = fs::metadata(sb.path("fresh")).unwrap();
    let slack = std::time::Duration::from_millis(100);
    assert!(
        st.modified().unwrap() + slack >= before,
        "{:?}",
        st.modified()
    );
    assert!(
        st.accessed().unwrap() + slack >= before,
        "{:?}",
        st.accessed()
    );
}

/// A stat right after close() shows the attributes the file keeps: the publish that follows
/// the close (it links the file into the version tree, which moves its ctime) must not make a
/// later stat show another ctime. The kernel caches a create's and a chmod's attributes.
#[test]
fn the_ctime_seen_right_after_close_is_the_one_the_file_keeps() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    let ctime = |p: &std::path::Path| {
        let m = fs::metadata(p).unwrap();
        (m.ctime(), m.ctime_nsec())
    };
    let created = sb.path("created");
    let f = fs::File::create(&created).unwrap(); // nothing written: the create's attributes
    drop(f);
    let chmodded = sb.path("chmodded");
    let mut f = fs::File::create(&chmodded).unwrap();
    f.write_all(b"x").unwrap();
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .unwrap(); // tar's last call
    drop(f);
    let right_after = (ctime(&created), ctime(&chmodded));
    // Past the kernel's attribute TTL (1 s): what the daemon says now.
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!((ctime(&created), ctime(&chmodded)), right_after);
}

/// The daemon's `lstat`s of paths containing `needle` while `during` runs, as `strace` on the
/// daemon sees them.
fn daemon_stats_of(
    m: &Mount,
    needle: &str,
    trace: &std::path::Path,
    during: impl FnOnce(),
) -> usize {
    use std::io::BufRead;
    let mut tracer = std::process::Command::new("strace")
        .args(["-f", "-e", "trace=statx,newfstatat,lstat", "-o"])
        .arg(trace)
        .args(["-p", &m.pid().to_string()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("strace (apt-get install strace)");
    // strace says "Process N attached" for each thread once it follows it.
    let mut lines = io::BufReader::new(tracer.stderr.take().unwrap()).lines();
    let first = lines.next().expect("strace output").unwrap();
    assert!(first.contains("attached"), "strace: {first}");
    std::thread::spawn(move || lines.for_each(drop));
    std::thread::sleep(Duration::from_millis(300));
    during();
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: signalling the child just spawned.
    unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) };
    tracer.wait().unwrap();
    fs::read_to_string(trace)
        .unwrap()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

#[test]
fn a_missing_name_is_remembered_as_absent_until_a_request_makes_it() {
    let sb = Sandbox::new();
    let m = sb.mount(&[]);
    fs::create_dir(sb.path("d")).unwrap();
    let names = ["file", "folder", "moved", "link"];
    for name in names {
        assert_eq!(
            errno(fs::symlink_metadata(sb.path(&format!("d/{name}")))),
            libc::ENOENT
        );
    }
    // Asked again, the kernel answers from its cache (rsync's generator and receiver both
    // look for each file; a shell looks along its PATH): the daemon sees none of these, and
    // sees the name it was never asked about, which shows the trace works.
    let trace = sb.dir.path().join("daemon.strace");
    let asked = daemon_stats_of(&m, "d/", &trace, || {
        for name in names {
            assert_eq!(
                errno(fs::symlink_metadata(sb.path(&format!("d/{name}")))),
                libc::ENOENT
            );
        }
        assert_eq!(
            errno(fs::symlink_metadata(sb.path("d/never-asked"))),
            libc::ENOENT
        );
    });
    let log = fs::read_to_string(&trace).unwrap();
    assert!(
        log.contains("d/never-asked"),
        "the trace saw nothing:\n{log}"
    );
    assert_eq!(asked, log.matches("d/never-asked").count(), "{log}");
    // Each way of making a name makes it at once, whatever the kernel remembered.
    fs::write(sb.path("d/file"), "made").unwrap();
    assert_eq!(fs::read_to_string(sb.path("d/file")).unwrap(), "made");
    fs::create_dir(sb.path("d/folder")).unwrap();
    assert!(sb.path("d/folder").is_dir());
    fs::write(sb.path("d/tmp"), "renamed").unwrap();
    fs::rename(sb.path("d/tmp"), sb.path("d/moved")).unwrap();
    assert_eq!(fs::read_to_string(sb.path("d/moved")).unwrap(), "renamed");
    std::os::unix::fs::symlink("file", sb.path("d/link")).unwrap();
    assert_eq!(fs::read_to_string(sb.path("d/link")).unwrap(), "made");
    // Under .versions/ nothing is remembered as absent: a key's history shows up with its
    // first version, even right after a look found none.
    assert_eq!(
        errno(fs::symlink_metadata(sb.path(".versions/d/late"))),
        libc::ENOENT
    );
    fs::write(sb.path("d/late"), "v1").unwrap();
    assert_eq!(versions(&sb.mnt, "d/late").len(), 1);
}

#[test]
fn a_reader_closing_costs_no_request_and_a_writer_closing_still_records() {
    let sb = Sandbox::new();
    let m = sb.mount(&[]);
    let p = sb.path("f");
    fs::write(&p, "one").unwrap();
    let ino = fs::metadata(&p).unwrap().ino();
    // The daemon logs every request it gets (fuser at debug level), before it answers.
    let flushes = || {
        let needle = format!("ino {ino:#018x} FLUSH");
        m.log().lines().filter(|l| l.contains(&needle)).count()
    };
    let after_write = flushes();
    assert!(
        after_write >= 1,
        "the writer's close was not seen:\n{}",
        m.log()
    );
    for _ in 0..3 {
        let mut s = String::new();
        fs::File::open(&p).unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "one");
    }
    // rsync opens a file read-only to fchmod it.
    let f = fs::File::open(&p).unwrap();
    f.set_permissions(fs::Permissions::from_mode(0o640))
        .unwrap();
    drop(f);
    assert_eq!(
        flushes(),
        after_write,
        "a reader's close reached the daemon"
    );
    // A writer's close is still where its version is recorded, and a version appears.
    let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"two").unwrap();
    drop(f);
    assert_eq!(flushes(), after_write + 1);
    assert_eq!(fs::read_to_string(&p).unwrap(), "onetwo");
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o640);
    wait_until("the second version", Duration::from_secs(5), || {
        versions(&sb.mnt, "f").len() == 2
    });
}

fn fallocate(f: &fs::File, mode: i32, offset: i64, len: i64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate on a descriptor the File owns.
    match unsafe { libc::fallocate(f.as_raw_fd(), mode, offset, len) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

fn open_rw(p: &std::path::Path) -> fs::File {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap()
}

#[test]
fn fallocate_reserves_punches_and_zeroes_into_the_next_version_only() {
    let sb = Sandbox::new();
    let m = sb.mount(&[]);
    // A reservation of a new file: its size and blocks are the version's.
    let p = sb.path("reserved");
    let f = fs::File::create(&p).unwrap();
    fallocate(&f, 0, 0, 1 << 20).unwrap();
    drop(f);
    let md = fs::metadata(&p).unwrap();
    assert_eq!(md.len(), 1 << 20);
    assert!(md.blocks() >= 2048, "{} blocks of 512 bytes", md.blocks());
    assert!(fs::read(&p).unwrap().iter().all(|b| *b == 0));
    assert_eq!(versions(&sb.mnt, "reserved").len(), 1);

    // A hole punched, then a range zeroed past the end: one new version with both.
    let p = sb.path("doc");
    fs::write(&p, b"abcdefghij").unwrap();
    let f = open_rw(&p);
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    fallocate(&f, punch, 2, 3).unwrap();
    fallocate(&f, libc::FALLOC_FL_ZERO_RANGE, 8, 6).unwrap();
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"ab\0\0\0fgh\0\0\0\0\0\0");
    let v = versions(&sb.mnt, "doc");
    assert_eq!(v.len(), 2, "{v:?}");
    assert_eq!(
        fs::read(sb.path(".versions/doc").join(&v[0])).unwrap(),
        b"abcdefghij"
    );

    // Reserving blocks changes no byte: no version for it, inside the file or past its end.
    let f = open_rw(&p);
    fallocate(&f, libc::FALLOC_FL_KEEP_SIZE, 0, 1 << 20).unwrap();
    fallocate(&f, 0, 0, 4).unwrap();
    drop(f);
    assert_eq!(versions(&sb.mnt, "doc").len(), 2);
    assert_eq!(fs::metadata(&p).unwrap().len(), 14);

    // Moving bytes is refused (by the kernel, for every FUSE filesystem), changing nothing.
    let f = open_rw(&p);
    assert_eq!(
        errno(fallocate(&f, libc::FALLOC_FL_COLLAPSE_RANGE, 0, 4096)),
        libc::EOPNOTSUPP
    );
    drop(f);
    assert_eq!(versions(&sb.mnt, "doc").len(), 2);
    assert!(
        !m.log().contains("Not Implemented"),
        "the daemon left a call unanswered:\n{}",
        m.log()
    );
}

fn seek(f: &fs::File, offset: i64, whence: i32) -> io::Result<i64> {
    use std::os::fd::AsRawFd;
    // SAFETY: lseek on a descriptor the File owns.
    match unsafe { libc::lseek(f.as_raw_fd(), offset, whence) } {
        -1 => Err(io::Error::last_os_error()),
        at => Ok(at),
    }
}

#[test]
fn a_sparse_object_shows_its_holes_and_a_writer_over_an_overlay_sees_all_data() {
    use std::os::unix::fs::FileExt;
    let sb = Sandbox::new();
    let m = sb.mount(&[]);
    let p = sb.path("sparse");
    let far = 16 << 20;
    let f = fs::File::create(&p).unwrap();
    f.write_all_at(&[1; 4096], 0).unwrap();
    f.write_all_at(&[2; 4096], far).unwrap();
    drop(f);
    let size = (far + 4096) as i64;
    let r = fs::File::open(&p).unwrap();
    assert_eq!(seek(&r, 0, libc::SEEK_HOLE).unwrap(), 4096);
    assert_eq!(seek(&r, 4096, libc::SEEK_DATA).unwrap(), far as i64);
    assert_eq!(errno(seek(&r, size, libc::SEEK_DATA)), libc::ENXIO);
    // (A reader kept open would make the writer below share its inode, not overlay it.)
    drop(r);
    // `cp` keeps the holes.
    let copy = sb.dir.path().join("copy");
    let (ok, _, err) = run(
        "cp",
        &["--sparse=auto", p.to_str().unwrap(), copy.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    assert!(fs::metadata(&copy).unwrap().blocks() < 64);
    assert!(fs::read(&copy).unwrap() == fs::read(&p).unwrap());
    // A big object opened for writing is an overlay on its current version: the unwritten
    // ranges read the base's bytes, so no hole is shown there.
    let w = open_rw(&p);
    assert_eq!(seek(&w, 0, libc::SEEK_HOLE).unwrap(), size);
    assert_eq!(seek(&w, 4096, libc::SEEK_DATA).unwrap(), 4096);
    assert_eq!(errno(seek(&w, size, libc::SEEK_HOLE)), libc::ENXIO);
    drop(w);
    assert!(!m.log().contains("lseek failed"), "{}", m.log());
}

#[test]
fn an_ioctl_is_answered_as_on_a_file_without_any() {
    let sb = Sandbox::new();
    let m = sb.mount(&[]);
    let p = sb.path("f");
    fs::write(&p, "x").unwrap();
    let f = fs::File::open(&p).unwrap();
    use std::os::fd::AsRawFd;
    let mut termios = [0u8; 64];
    // SAFETY: TCGETS writes at most a termios struct into the buffer.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::TCGETS, termios.as_mut_ptr()) };
    assert_eq!(r, -1);
    assert_eq!(
        io::Error::last_os_error().raw_os_error(),
        Some(libc::ENOTTY)
    );
    // Python asks this at every open() in text mode: no warning for it in the log.
    drop(f);
    assert!(!m.log().contains("Not Implemented"), "{}", m.log());
}

/// The kernel still holds a name whose object is gone (removed by another process sharing
/// the bucket, or by a caller racing this one between the lookup and the open): the open
/// answers ESTALE, the kernel looks the name up again, and so `open(O_CREAT)` creates the
/// file, as on a local disk, instead of failing with ENOENT.
#[test]
fn open_with_o_creat_of_a_name_removed_behind_the_kernels_back_creates_it() {
    let sb = Sandbox::new();
    let m = sb.mount(&[]);
    let p = sb.path("k");
    fs::write(&p, "one").unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), 3); // the kernel holds name and attributes
    fs::remove_file(sb.bucket.join("k")).unwrap();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&p)
        .unwrap();
    f.write_all(b"two").unwrap();
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"two");
    assert!(
        m.log().contains("open: removed since it was looked up"),
        "the open did not meet the removed object (the kernel looked the name up first):\n{}",
        m.log()
    );
}

/// Four threads race writes, reads, renames, deletes, truncates, tag changes, symlinks and
/// readlinks over twenty names. Whatever interleaving comes, every call either works or fails
/// with what a local disk would say for the race (ENOENT for a name just removed), an
/// `open(O_CREAT)` works (but for ESTALE, when the name is removed twice while it opens), the
/// daemon logs no error, and afterwards every name listed reads whole.
#[test]
fn racing_callers_get_local_disk_answers_and_the_daemon_logs_no_error() {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    let sb = Sandbox::new();
    let m = sb.mount(&[]);
    for d in 0..3 {
        fs::create_dir(sb.path(&format!("d{d}"))).unwrap();
    }
    let names: Vec<String> = (0..20).map(|i| format!("d{}/f{i}", i % 3)).collect();
    let unexpected = Mutex::new(BTreeMap::<String, u32>::new());
    std::thread::scope(|s| {
        for seed in 1..=4u64 {
            let (sb, names, unexpected) = (&sb, &names, &unexpected);
            s.spawn(move || {
                let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let mut next = move |n: u64| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x % n
                };
                for i in 0..1500u32 {
                    let p = sb.path(&names[next(20) as usize]);
                    let q = sb.path(&names[next(20) as usize]);
                    let op = next(10);
                    let r: io::Result<()> = match op {
                        0 => fs::write(&p, vec![b'w'; 1 + next(100_000) as usize]),
                        1 => fs::read(&p).map(drop),
                        2 => fs::remove_file(&p),
                        3 => fs::rename(&p, &q),
                        4 => xattr::set(&p, "user.s3.tag.k", i.to_string().as_bytes()),
                        5 => fs::OpenOptions::new()
                            .write(true)
                            .open(&p)
                            .and_then(|mut f| f.write_all(b"xyz")),
                        6 => fs::metadata(&p).map(drop),
                        7 => fs::OpenOptions::new()
                            .write(true)
                            .open(&p)
                            .and_then(|f| f.set_len(next(5000))),
                        // A name that was a file becomes a symlink, and back: the kernel
                        // must never see a node change type (it would answer EIO for it).
                        8 => std::os::unix::fs::symlink(format!("t{i}"), &p),
                        _ => fs::read_link(&p).map(drop),
                    };
                    let errno = r.err().and_then(|e| e.raw_os_error());
                    // ETXTBSY: a writer of a file open for reading whose bytes a rename shares
                    // (docs/SEMANTICS.md, open for writing).
                    let expected = match errno {
                        None => true,
                        Some(libc::ENOENT) => op != 0,
                        Some(libc::ETXTBSY) => matches!(op, 0 | 5 | 7),
                        Some(libc::EEXIST) => op == 8,
                        // The name removed again while the kernel retried (docs/SEMANTICS.md,
                        // Consistency): rare, and what NFS answers there too.
                        Some(libc::ESTALE) => matches!(op, 0 | 1 | 5 | 6 | 7),
                        // user.* attributes on a symlink (the xattr crate does not follow)
                        Some(libc::EPERM) => op == 4,
                        // readlink of a file
                        Some(libc::EINVAL) => op == 9,
                        Some(_) => false,
                    };
                    if !expected {
                        *unexpected
                            .lock()
                            .unwrap()
                            .entry(format!("op {op}: errno {errno:?}"))
                            .or_default() += 1;
                    }
                }
            });
        }
    });
    let unexpected = unexpected.into_inner().unwrap();
    assert!(unexpected.is_empty(), "{unexpected:?}");
    let log = m.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    for d in 0..3 {
        for e in fs::read_dir(sb.path(&format!("d{d}"))).unwrap() {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            if md.is_file() {
                assert_eq!(
                    fs::read(&p).unwrap().len() as u64,
                    md.len(),
                    "{}",
                    p.display()
                );
            } else {
                assert!(fs::read_link(&p).is_ok(), "{}: {md:?}", p.display());
            }
        }
    }
}

/// A file's key path replaced by a symlink behind the kernel's back (another process in the
/// bucket's folder, or a racing unlink and symlink) while the kernel still holds the file:
/// the daemon, root here, never opens what the link points to for the caller. The kernel
/// looks the name up again and follows the link itself, as the caller.
#[test]
fn the_daemon_never_follows_a_symlink_that_replaced_a_file_it_was_asked_to_open() {
    let sb = Sandbox::new();
    let m = sb.mount(&[]);
    let p = sb.path("x");
    fs::write(&p, "mine").unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), 4); // the kernel holds the file now
    // Reachable for the daemon at BUCKET_DIR/.bucketfs/secret, and not at all through the
    // mount (`.bucketfs` is hidden there).
    fs::write(sb.bucket.join(".bucketfs/secret"), "not yours").unwrap();
    fs::remove_file(sb.bucket.join("x")).unwrap();
    std::os::unix::fs::symlink(".bucketfs/secret", sb.bucket.join("x")).unwrap();
    let read = fs::read(&p);
    assert!(
        read.as_ref()
            .is_err_and(|e| e.raw_os_error() == Some(libc::ENOENT)),
        "read through the replaced name: {read:?}"
    );
    assert!(m.log().contains("open: removed since it was looked up"));
    assert_eq!(
        fs::read_link(&p).unwrap().to_str(),
        Some(".bucketfs/secret")
    );
}

/// chmod of a file whose key path was replaced by a symlink behind the kernel's back changes
/// neither the link's target (the daemon's rights are root's) nor anything else.
#[test]
fn chmod_never_reaches_through_a_symlink_that_replaced_the_file() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    let p = sb.path("x");
    fs::write(&p, "mine").unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), 4); // the kernel holds the file now
    let secret = sb.bucket.join(".bucketfs/secret");
    fs::write(&secret, "not yours").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_file(sb.bucket.join("x")).unwrap();
    std::os::unix::fs::symlink(".bucketfs/secret", sb.bucket.join("x")).unwrap();
    let r = fs::set_permissions(&p, fs::Permissions::from_mode(0o666));
    assert_eq!(
        errno(r),
        libc::ENOENT,
        "the link, followed by the kernel, leads nowhere"
    );
    assert_eq!(fs::metadata(&secret).unwrap().mode() & 0o777, 0o600);
}

/// A folder of a file's key path replaced, behind the kernel's back, by a symlink to a folder
/// outside the bucket while the kernel still holds the file: the daemon, root, neither reads
/// nor writes the outside file of the same name for the caller. The kernel looks the name up
/// again and follows the link itself, with the caller's rights, which the outside file refuses.
#[test]
fn the_daemon_never_reaches_outside_the_bucket_through_a_folder_replaced_by_a_symlink() {
    let sb = Sandbox::new();
    fs::set_permissions(sb.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let _m = sb.mount(&["--allow-other"]);
    fs::create_dir(sb.path("d")).unwrap();
    fs::write(sb.path("d/x"), "mine").unwrap();
    fs::set_permissions(sb.path("d/x"), fs::Permissions::from_mode(0o666)).unwrap();
    std::os::unix::fs::chown(sb.path("d/x"), Some(65534), Some(65534)).unwrap();
    let nobody = |script: &str| as_nobody(script).1;
    let x = sb.path("d/x");
    assert_eq!(nobody(&format!("cat {}", x.display())), "mine"); // the kernel holds d and x
    let outside = sb.dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("x"), "root's").unwrap();
    fs::set_permissions(outside.join("x"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::rename(sb.bucket.join("d"), sb.bucket.join("moved")).unwrap();
    std::os::unix::fs::symlink(&outside, sb.bucket.join("d")).unwrap();
    let read = nobody(&format!("cat {}", x.display()));
    nobody(&format!("echo theirs >> {}", x.display()));
    nobody(&format!("chmod 666 {}", x.display())); // the kernel knows nobody owns x
    assert_eq!(fs::read_to_string(outside.join("x")).unwrap(), "root's");
    assert!(!read.contains("root's"), "{read:?}");
    let mode = fs::metadata(outside.join("x")).unwrap().mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// A writer's release publishes on a thread of its own, without the filesystem's lock. Files
/// closed in a burst, then at once their folder renamed, a tag set and a version id read:
/// each of these waits for the publish it concerns, so nothing lands under the old name or
/// on the version before.
#[test]
fn what_follows_a_burst_of_closes_waits_for_the_publishes_it_concerns() {
    use std::os::unix::ffi::OsStrExt;
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    fs::create_dir(sb.path("burst")).unwrap();
    let n = 300;
    for i in 0..n {
        fs::write(sb.path(&format!("burst/f{i}")), format!("file {i}")).unwrap();
    }
    fs::rename(sb.path("burst"), sb.path("moved")).unwrap();
    assert!(
        !sb.bucket.join("burst").exists(),
        "a publish landed under the old name"
    );
    for i in 0..n {
        let key = format!("moved/f{i}");
        assert_eq!(
            fs::read_to_string(sb.path(&key)).unwrap(),
            format!("file {i}")
        );
        assert_eq!(versions(&sb.mnt, &key).len(), 1, "{key}");
    }

    let tagged = sb.path("tagged");
    fs::write(&tagged, b"tag me").unwrap();
    ::xattr::set(&tagged, "user.s3.tag.team", b"blue").unwrap();
    let version = xget(&tagged, "user.s3.version-id").expect("a version id");
    assert_eq!(versions(&sb.mnt, "tagged"), std::slice::from_ref(&version));
    assert_eq!(xget(&tagged, "user.s3.tag.team").as_deref(), Some("blue"));
    let stored = meta(&sb.bucket, "tagged", &version).expect("the tag made metadata");
    assert!(
        stored.to_string().contains("blue"),
        "the tag is not on the published version: {stored}"
    );
    let names: Vec<Vec<u8>> = ::xattr::list(&tagged)
        .unwrap()
        .map(|n| n.as_bytes().to_vec())
        .collect();
    assert!(names.contains(&b"user.s3.tag.team".to_vec()), "{names:?}");
}

/// A folder's times move when a file is created in it (not only when its version is
/// published), and times set on the folder after its files were written stay set: `tar` and
/// `rsync -a` set a folder's times last.
#[test]
fn a_create_moves_its_folders_times_and_times_set_after_it_stay() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    let folder = sb.path("folder");
    fs::create_dir(&folder).unwrap();
    let before = fs::metadata(&folder).unwrap().modified().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let f = fs::File::create(folder.join("open")).unwrap();
    let while_open = fs::metadata(&folder).unwrap().modified().unwrap();
    assert!(while_open > before, "{while_open:?} not after {before:?}");
    drop(f);

    let set = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    for i in 0..50 {
        fs::write(folder.join(format!("f{i}")), b"x").unwrap();
    }
    fs::File::open(&folder).unwrap().set_modified(set).unwrap();
    // Past the kernel's attribute TTL (1 s): what the daemon says now.
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(fs::metadata(&folder).unwrap().modified().unwrap(), set);
    assert_eq!(fs::read_dir(&folder).unwrap().count(), 51);
}

/// An unmount right after a burst of closes publishes every one of them (the releases still
/// queued are done before the daemon ends), without a recovery at the next mount.
#[test]
fn an_unmount_right_after_a_burst_of_closes_publishes_them_all() {
    let sb = Sandbox::new();
    let m = sb.mount(&[]);
    for i in 0..200 {
        fs::write(sb.path(&format!("f{i}")), format!("file {i}")).unwrap();
    }
    m.unmount();
    let m = sb.mount(&[]);
    assert!(
        !m.log().contains("recovery: publishing"),
        "the next mount had to recover closed files:\n{}",
        m.log()
    );
    for i in 0..200 {
        let key = format!("f{i}");
        assert_eq!(
            fs::read_to_string(sb.path(&key)).unwrap(),
            format!("file {i}")
        );
        assert_eq!(versions(&sb.mnt, &key).len(), 1);
    }
}
