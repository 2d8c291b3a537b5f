//! The command line contract and crash safety, with the real binary.

mod common;

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

fn bucketfs(args: &[&str]) -> (bool, String, String) {
    run(BIN, args)
}

#[test]
fn mount_returns_once_ready_and_umount_ends_the_daemon() {
    let sb = Sandbox::new();
    let (ok, out, err) = bucketfs(&[
        "mount",
        sb.bucket.to_str().unwrap(),
        sb.mnt.to_str().unwrap(),
    ]);
    assert!(ok, "{out}{err}");
    assert!(is_mounted(&sb.mnt), "mounted when the command returns");
    fs::write(sb.path("a"), "daemon").unwrap();
    let (ok, _, err) = run("umount", &[sb.mnt.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(!is_mounted(&sb.mnt));
    // A clean exit leaves no session behind (the daemon may take a moment to exit: it
    // publishes the files whose releases are still queued first).
    let sessions = sb.bucket.join(".bucketfs/sessions");
    for _ in 0..100 {
        if fs::read_dir(&sessions).unwrap().count() == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(fs::read_dir(&sessions).unwrap().count(), 0);
    assert_eq!(fs::read_to_string(sb.bucket.join("a")).unwrap(), "daemon");
    assert!(sb.bucket.join(".bucketfs/bucketfs.log").exists());
}

/// The daemon works from inside the bucket (its backing paths are relative to it), so every
/// path it is given relative to where `mount` ran is resolved before: the bucket, the
/// mountpoint, the config, the log file, and a replica bucket named next to the source.
#[test]
fn relative_paths_given_to_mount_mean_what_they_meant_where_it_ran() {
    struct UnmountOnDrop(PathBuf);
    impl Drop for UnmountOnDrop {
        fn drop(&mut self) {
            lazy_unmount(&self.0);
        }
    }
    let sb = Sandbox::new();
    let here = sb.dir.path();
    fs::write(
        here.join("replication.yaml"),
        "Role: arn:aws:iam::123456789012:role/test\nRules:\n  - ID: all\n    Status: Enabled\n    \
         Priority: 1\n    Filter: {}\n    Destination: {Bucket: 'arn:aws:s3:::replica'}\n    \
         DeleteMarkerReplication: {Status: Enabled}\n",
    )
    .unwrap();
    fs::create_dir(here.join("logs")).unwrap();
    let created = Command::new(BIN)
        .current_dir(here)
        .args(["create", "replica"])
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    let out = Command::new(BIN)
        .current_dir(here)
        .args(["mount", "bucket", "mnt", "--config", "replication.yaml"])
        .args(["--log-file", "logs/daemon.log"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let _guard = UnmountOnDrop(sb.mnt.clone());
    assert!(is_mounted(&sb.mnt));
    fs::write(sb.path("f"), "relative").unwrap();
    let replica = here.join("replica/f");
    wait_until_with(
        "f in the replica bucket next to the source",
        Duration::from_secs(10),
        || fs::read_to_string(here.join("logs/daemon.log")).unwrap_or_default(),
        || fs::read_to_string(&replica).is_ok_and(|s| s == "relative"),
    );
    let log = fs::read_to_string(here.join("logs/daemon.log")).unwrap();
    assert!(
        log.contains(&format!(
            "mounted {} at {}",
            sb.bucket.display(),
            sb.mnt.display()
        )),
        "{log}"
    );
    let (ok, _, err) = run("umount", &[sb.mnt.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(!is_mounted(&sb.mnt));
    // The daemon publishes the releases still queued before it says it is done.
    wait_until("the daemon's exit", Duration::from_secs(10), || {
        fs::read_to_string(here.join("logs/daemon.log")).is_ok_and(|l| l.contains("unmounted"))
    });
    assert_eq!(fs::read_to_string(sb.bucket.join("f")).unwrap(), "relative");
}

#[test]
fn mount_errors_print_one_clear_line_and_leave_nothing_mounted() {
    let sb = Sandbox::new();
    let missing = sb.dir.path().join("nope");
    let (ok, _, err) = bucketfs(&[
        "mount",
        sb.bucket.to_str().unwrap(),
        missing.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("mountpoint") && err.contains("nope"), "{err}");

    let not_a_dir = sb.dir.path().join("file");
    fs::write(&not_a_dir, "x").unwrap();
    let (ok, _, err) = bucketfs(&[
        "mount",
        not_a_dir.to_str().unwrap(),
        sb.mnt.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("file"), "{err}");
    assert!(!is_mounted(&sb.mnt));

    let config = sb.dir.path().join("replication.yaml");
    fs::write(
        &config,
        "Rules:\n  - ID: a\n    Status: Enabled\n    Bogus: 1\n",
    )
    .unwrap();
    let (ok, _, err) = bucketfs(&[
        "mount",
        sb.bucket.to_str().unwrap(),
        sb.mnt.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("replication.yaml:4:"),
        "file:line:column in {err}"
    );
    assert!(err.contains("Bogus"), "{err}");
    assert!(!is_mounted(&sb.mnt));
}

#[test]
fn a_busy_mountpoint_is_refused() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    let other = sb.dir.path().join("other");
    let (ok, _, err) = bucketfs(&["mount", other.to_str().unwrap(), sb.mnt.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("busy"), "{err}");
}

#[test]
fn the_seed_replication_json_is_accepted_as_config() {
    let sb = Sandbox::new();
    let seed = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/seed-replica-modifications.json"
    );
    let _m = sb.mount(&["--config", seed]);
    fs::write(sb.path("Tax/2024.pdf"), "x").unwrap_err(); // no such directory yet
    fs::create_dir(sb.path("Tax")).unwrap();
    fs::write(sb.path("Tax/2024.pdf"), "x").unwrap();
}

#[test]
fn create_refuses_an_existing_bucket_and_records_object_lock() {
    let sb = Sandbox::new();
    sb.create(&["--object-lock", "--owner", "1000"]);
    let settings = fs::read_to_string(sb.bucket.join(".bucketfs/bucket.json")).unwrap();
    assert!(
        settings.contains("\"object_lock_enabled\": true"),
        "{settings}"
    );
    assert!(settings.contains("\"owner\": 1000"), "{settings}");
    let (ok, _, err) = bucketfs(&["create", sb.bucket.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("already exists"), "{err}");
}

/// A file closed just before the signal keeps the mount busy until its RELEASE is served, and
/// one still open keeps it busy until it is closed: a signal's unmount waits out the first, and
/// after the second the mount goes on serving until a later signal, logging why.
#[test]
fn a_signal_while_a_file_is_open_unmounts_once_it_is_closed_or_on_the_next_signal() {
    let sb = Sandbox::new();
    let mut m = sb.mount(&[]);
    let held = fs::File::create(sb.path("held")).unwrap();
    let closer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(held);
    });
    assert!(m.signal(libc::SIGTERM), "no clean exit:\n{}", m.log());
    closer.join().unwrap();
    assert!(!is_mounted(&sb.mnt));

    let mut m = sb.mount(&[]);
    let held = fs::File::create(sb.path("held-longer")).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(m.pid() as i32, libc::SIGTERM) };
    wait_until(
        "the busy unmount to give up",
        Duration::from_secs(10),
        || m.log().contains("still open"),
    );
    assert!(is_mounted(&sb.mnt));
    fs::write(sb.path("after"), "still serving").unwrap();
    drop(held);
    assert!(m.signal(libc::SIGTERM), "no clean exit:\n{}", m.log());
    assert!(!is_mounted(&sb.mnt));
    let m = sb.mount(&[]);
    assert_eq!(
        fs::read_to_string(sb.path("after")).unwrap(),
        "still serving"
    );
    m.unmount();
}

#[test]
fn sigterm_and_sigint_unmount_cleanly() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let sb = Sandbox::new();
        let mut m = sb.mount(&[]);
        fs::write(sb.path("f"), "x").unwrap();
        let clean = m.signal(sig);
        // The write's RELEASE may still be in flight: the unmount waits it out (test above).
        assert!(
            clean,
            "no clean exit on signal {sig} (still mounted: {}):\n{}",
            is_mounted(&sb.mnt),
            m.log()
        );
        assert!(!is_mounted(&sb.mnt));
        assert_eq!(fs::read_to_string(sb.bucket.join("f")).unwrap(), "x");
    }
}

/// A restart: the old daemon is unmounted, a new one mounts at the same path before the old
/// one has exited. The old daemon's exit must leave the new mount alone (fuser 0.18 on its
/// own unmounts the path again when its session ends). SIGSTOP holds the old daemon between
/// the unmount and the new mount, so the order is certain; the unmount is lazy because a
/// plain one waits for the (stopped) daemon to answer its final sync.
#[test]
fn an_old_daemon_exiting_leaves_a_new_mount_at_the_same_path_alone() {
    let sb = Sandbox::new();
    let mut old = sb.mount(&[]);
    fs::write(sb.path("old"), "old").unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(old.pid() as i32, libc::SIGSTOP) };
    let mut detach = Command::new("umount")
        .arg("-l")
        .arg(&sb.mnt)
        .spawn()
        .unwrap();
    wait_until("the old mount detached", Duration::from_secs(10), || {
        !is_mounted(&sb.mnt)
    });
    let second = sb.dir.path().join("second");
    let new = Mount::start(&second, &sb.mnt, &[]);
    assert!(
        old.signal(libc::SIGCONT),
        "the old daemon exits cleanly once its mount is gone"
    );
    assert!(detach.wait().unwrap().success(), "umount -l");
    assert!(
        is_mounted(&sb.mnt),
        "the old daemon's exit unmounted the new mount"
    );
    fs::write(sb.path("new"), "new").unwrap();
    new.unmount();
    assert!(!is_mounted(&sb.mnt));
    assert_eq!(fs::read_to_string(second.join("new")).unwrap(), "new");
    assert_eq!(fs::read_to_string(sb.bucket.join("old")).unwrap(), "old");
}

#[test]
fn read_only_mounts_refuse_writes() {
    let sb = Sandbox::new();
    let m = sb.mount(&[]);
    fs::write(sb.path("f"), "x").unwrap();
    m.unmount();
    let _m = sb.mount(&["--read-only"]);
    assert_eq!(fs::read_to_string(sb.path("f")).unwrap(), "x");
    assert_eq!(errno(fs::write(sb.path("g"), "y")), libc::EROFS);
    assert_eq!(errno(fs::remove_file(sb.path("f"))), libc::EROFS);
}

#[test]
fn a_closed_version_survives_kill_9() {
    let sb = Sandbox::new();
    let mut m = sb.mount(&[]);
    for i in 0..20 {
        fs::write(sb.path(&format!("f{i}")), format!("content {i}")).unwrap();
    }
    fs::write(sb.path("f0"), "second version").unwrap();
    m.kill9();
    let _m = sb.mount(&[]);
    for i in 1..20 {
        assert_eq!(
            fs::read_to_string(sb.path(&format!("f{i}"))).unwrap(),
            format!("content {i}")
        );
        assert_eq!(versions(&sb.mnt, &format!("f{i}")).len(), 1);
    }
    assert_eq!(fs::read_to_string(sb.path("f0")).unwrap(), "second version");
    assert_eq!(versions(&sb.mnt, "f0").len(), 2);
}

#[test]
fn kill_9_with_a_writer_open_leaves_the_old_version_current() {
    let sb = Sandbox::new();
    let mut m = sb.mount(&[]);
    fs::write(sb.path("doc"), "old and complete").unwrap();
    // The file is open mid-write, never closed, when the daemon dies.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(sb.path("doc"))
        .unwrap();
    f.write_all(b"NEW PARTIAL").unwrap();
    m.kill9();
    drop(f);
    let _m = sb.mount(&[]);
    assert_eq!(
        fs::read_to_string(sb.path("doc")).unwrap(),
        "old and complete"
    );
    assert_eq!(versions(&sb.mnt, "doc").len(), 1);
    assert_eq!(
        fs::read_to_string(sb.bucket.join("doc")).unwrap(),
        "old and complete"
    );
}

#[test]
fn a_close_through_a_shared_descriptor_counts_before_kill_9() {
    let sb = Sandbox::new();
    let mut m = sb.mount(&[]);
    fs::write(sb.path("doc"), "old and complete").unwrap();
    // The shell's `>&3` dup()s fd 3 and closes the copy after printf: a close() after the
    // write returned, so that content must survive, though fd 3 stays open.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("exec 3<>doc; printf 'NEW' >&3; echo done; sleep 30")
        .current_dir(&sb.mnt)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    m.kill9();
    let _ = child.kill();
    let _ = child.wait();
    let m2 = sb.mount(&[]);
    assert_eq!(
        fs::read_to_string(sb.path("doc")).unwrap(),
        "NEW and complete"
    );
    assert_eq!(versions(&sb.mnt, "doc").len(), 2);
    assert!(
        m2.log().contains("recovery: publishing doc"),
        "{}",
        m2.log()
    );
}

#[test]
fn fsync_before_kill_9_keeps_what_was_synced() {
    let sb = Sandbox::new();
    let mut m = sb.mount(&[]);
    let mut f = fs::File::create(sb.path("journal.log")).unwrap();
    f.write_all(b"synced line\n").unwrap();
    f.sync_all().unwrap();
    m.kill9();
    drop(f);
    let _m = sb.mount(&[]);
    assert_eq!(
        fs::read_to_string(sb.path("journal.log")).unwrap(),
        "synced line\n"
    );
    assert_eq!(versions(&sb.mnt, "journal.log").len(), 1);
}

#[test]
fn strict_sync_mount_publishes_durably() {
    let sb = Sandbox::new();
    let _m = sb.mount(&["--sync"]);
    fs::write(sb.path("s"), "strict").unwrap();
    assert_eq!(fs::read_to_string(sb.path("s")).unwrap(), "strict");
    assert_eq!(versions(&sb.mnt, "s").len(), 1);
}

/// Context switches of the daemon's FUSE-over-io_uring workers so far, and how many there are.
/// How many of the daemon's threads have a name `is_wanted` accepts, and how many times they
/// went to sleep and were woken (voluntary context switches) so far.
fn fuse_threads(pid: u32, is_wanted: impl Fn(&str) -> bool) -> (usize, u64) {
    let mut threads = 0;
    let mut switches = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let comm = fs::read_to_string(task.join("comm")).unwrap_or_default();
        if !is_wanted(comm.trim_end()) {
            continue;
        }
        threads += 1;
        let status = fs::read_to_string(task.join("status")).unwrap_or_default();
        switches += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    (threads, switches)
}

fn ring_workers(pid: u32) -> (usize, u64) {
    fuse_threads(pid, |comm| comm.starts_with("fuser-ring-"))
}

/// The threads that read /dev/fuse (fuser names them `fuser-0`, `fuser-1`, ...).
fn dev_fuse_readers(pid: u32) -> (usize, u64) {
    fuse_threads(pid, |comm| {
        comm.strip_prefix("fuser-")
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
    })
}

fn kernel_offers_io_uring() -> bool {
    fs::read_to_string("/sys/module/fuse/parameters/enable_uring").is_ok_and(|v| v.trim() == "Y")
}

/// Requests come through FUSE over io_uring exactly when the kernel offers it (the fuse
/// module's `enable_uring`) and `--no-io-uring` is not given; either way the mount behaves the
/// same. (scripts/test.sh runs the whole suite once per transport.)
#[test]
fn io_uring_serves_requests_when_the_kernel_offers_it_and_not_with_no_io_uring() {
    let offered = kernel_offers_io_uring();
    let sb = Sandbox::new();
    for (extra, rings_expected) in [(&[][..], offered), (&["--no-io-uring"][..], false)] {
        let m = sb.mount(extra);
        // Threads name themselves once they run, a moment after they were started.
        wait_until_with(
            "the serving threads to be named",
            Duration::from_secs(10),
            || m.log(),
            || dev_fuse_readers(m.pid()).0 > 0 && (!rings_expected || ring_workers(m.pid()).0 > 0),
        );
        let (workers, before) = ring_workers(m.pid());
        assert_eq!(
            workers > 0,
            rings_expected,
            "mount {extra:?}, kernel offers io_uring: {offered}; {workers} ring workers\n{}",
            m.log()
        );
        let name = format!("f{}", extra.len());
        fs::write(sb.path(&name), "one").unwrap();
        fs::write(sb.path(&name), "two").unwrap();
        xattr::set(sb.path(&name), "user.tag.k", b"v").unwrap();
        // Each name once: the kernel remembers an absent name, and asks for it no more.
        for i in 0..200 {
            fs::metadata(sb.path(&format!(
                "no-such-key-{extra_len}-{i}",
                extra_len = extra.len()
            )))
            .unwrap_err();
        }
        assert_eq!(fs::read_to_string(sb.path(&name)).unwrap(), "two");
        assert_eq!(xget(&sb.path(&name), "user.tag.k").as_deref(), Some("v"));
        fs::remove_file(sb.path(&name)).unwrap();
        assert_eq!(
            versions(&sb.mnt, &name).len(),
            3,
            "two versions and a delete marker"
        );
        if rings_expected {
            let (_, after) = ring_workers(m.pid());
            assert!(
                after >= before + 200,
                "200 lookups woke the ring workers {} times",
                after - before
            );
        }
        m.unmount();
    }
}

/// With io_uring, /dev/fuse carries only FORGET and INTERRUPT: one thread reads it, and the
/// forgets of an `rm` of many files come batched rather than one wake-up per file. Without
/// io_uring the usual pool of /dev/fuse threads serves everything.
#[test]
fn with_io_uring_one_dev_fuse_thread_takes_the_forgets_in_batches() {
    let offered = kernel_offers_io_uring();
    let sb = Sandbox::new();
    let m = sb.mount(&[]);
    // A thread names itself once it runs, a moment after it was started.
    wait_until_with(
        "the /dev/fuse threads, named: one with io_uring, more without",
        Duration::from_secs(10),
        || m.log(),
        || dev_fuse_readers(m.pid()).0 > usize::from(!offered),
    );
    let (readers, _) = dev_fuse_readers(m.pid());
    if !offered {
        m.unmount();
        return;
    }
    assert_eq!(readers, 1, "/dev/fuse threads with io_uring\n{}", m.log());
    const FILES: u64 = 1000;
    fs::create_dir(sb.path("d")).unwrap();
    for i in 0..FILES {
        fs::write(sb.path(&format!("d/{i}")), "x").unwrap();
    }
    let (_, before) = dev_fuse_readers(m.pid());
    for i in 0..FILES {
        fs::remove_file(sb.path(&format!("d/{i}"))).unwrap();
    }
    // The forget of the last files comes after their unlink returned.
    std::thread::sleep(Duration::from_millis(100));
    let (_, after) = dev_fuse_readers(m.pid());
    assert!(
        after - before < FILES / 2,
        "{FILES} deleted files woke the /dev/fuse thread {} times",
        after - before
    );
    assert!(fs::read_dir(sb.path("d")).unwrap().next().is_none());
    assert_eq!(
        versions(&sb.mnt, "d/7").len(),
        2,
        "a version and its marker"
    );
    m.unmount();
}

/// Without passthrough the daemon serves reads and writes itself, in requests of up to 1 MiB:
/// the largest a transport carries (through io_uring, a ring entry's whole payload buffer).
#[test]
fn reads_and_writes_served_by_the_daemon_keep_every_byte() {
    let sb = Sandbox::new();
    let m = sb.mount(&["--no-passthrough"]);
    let data: Vec<u8> = (0..5 * 1024 * 1024 + 123)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut f = fs::File::create(sb.path("big")).unwrap();
    f.write_all(&data).unwrap();
    drop(f);
    m.unmount();
    assert!(
        fs::read(sb.bucket.join("big")).unwrap() == data,
        "bytes on disk differ"
    );
    // A new mount has nothing of the file in the page cache: every read reaches the daemon.
    let m = sb.mount(&["--no-passthrough"]);
    assert!(
        fs::read(sb.path("big")).unwrap() == data,
        "bytes read back differ"
    );
    m.unmount();
}

#[test]
fn names_stat_one_by_one_get_their_folder_read_ahead_and_a_single_stat_does_not() {
    let sb = Sandbox::new();
    let m = fresh_mount_over_many(&sb, || {
        fs::create_dir(sb.path("one")).unwrap();
        fs::write(sb.path("one/f"), b"x").unwrap();
    });
    assert_eq!(fs::metadata(sb.path("one/f")).unwrap().len(), 1);
    for i in 0..3 {
        assert_eq!(
            fs::metadata(sb.path(&format!("many/f{i:02}")))
                .unwrap()
                .len(),
            1
        );
    }
    // The daemon works from inside the bucket: its log names the bucket's paths from there.
    let many = "stat-ahead: 20 entries of ./many\n";
    wait_until_with(
        "the read-ahead of many/",
        Duration::from_secs(10),
        || m.log(),
        || m.log().contains(many),
    );
    // One thread serves the folders in the order they were asked for: had one/ been asked
    // for, its line would already be there.
    assert!(
        !m.log().contains(" of ./one\n"),
        "one stat is no pattern:\n{}",
        m.log()
    );
    // Reading ahead changes nothing the mount shows.
    assert_eq!(fs::read_dir(sb.path("many")).unwrap().count(), 20);
    assert_eq!(fs::read(sb.path("many/f19")).unwrap(), b"x");
}

/// The attributes read ahead answer the stats that follow (no backing stat each), reading a
/// file changes nothing of that, but nothing read before a change through the mount serves a
/// lookup: not after a writer's close, nor after a key's only version is removed under
/// `.versions/` (a name the kernel never looked up by its own path).
#[test]
fn attributes_read_ahead_answer_the_next_stats_but_not_after_a_change() {
    let sb = Sandbox::new();
    let m = fresh_mount_over_many(&sb, || folder_of_one_byte_files(&sb, "more", 20));
    let read_ahead = |folder: &str| {
        for f in ["f00", "f01"] {
            assert_eq!(
                fs::metadata(sb.path(&format!("{folder}/{f}")))
                    .unwrap()
                    .len(),
                1
            );
        }
        wait_until_with(
            &format!("the read-ahead of {folder}/"),
            Duration::from_secs(10),
            || m.log(),
            || {
                m.log()
                    .contains(&format!("stat-ahead: 20 entries of ./{folder}\n"))
            },
        );
    };
    let served = |path: &str| m.log().contains(&format!("lookup of ./{path}: attributes"));
    let size = |path: &str| fs::metadata(sb.path(path)).map(|m| m.len());

    read_ahead("many");
    assert_eq!(size("many/f02").unwrap(), 1);
    assert!(served("many/f02"), "{}", m.log());
    assert_eq!(fs::read(sb.path("many/f02")).unwrap(), b"x");
    assert_eq!(size("many/f03").unwrap(), 1);
    assert!(served("many/f03"), "after a read: {}", m.log());
    // Within a second of the read, while what it read of f05 would still be served.
    let versions: Vec<_> = fs::read_dir(sb.path(".versions/many/f05"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(versions.len(), 1, "{versions:?}");
    fs::remove_file(&versions[0]).unwrap();
    let gone = size("many/f05").unwrap_err();
    assert_eq!(gone.kind(), std::io::ErrorKind::NotFound);
    assert!(!served("many/f05"), "{}", m.log());
    assert_eq!(size("many/f04").unwrap(), 1);

    read_ahead("more");
    let mut append = fs::OpenOptions::new()
        .append(true)
        .open(sb.path("more/f06"))
        .unwrap();
    append.write_all(b"y").unwrap();
    drop(append);
    assert_eq!(size("more/f07").unwrap(), 1);
    assert!(!served("more/f07"), "after a writer's close: {}", m.log());
    assert_eq!(size("more/f06").unwrap(), 2);
}

/// `find` stats nothing it lists; `ls -l` stats everything. A big folder's first listing gives
/// a process its files as names only (no backing stat each), a small one with attributes, and
/// neither sets off stat-ahead, until the process is seen to look up such a name; from then on
/// its listings come with every attribute.
#[test]
fn a_big_folder_is_listed_with_attributes_only_for_a_process_that_stats_what_it_lists() {
    use std::os::unix::fs::{DirEntryExt, MetadataExt};
    let sb = Sandbox::new();
    sb.create(&[]);
    let m = sb.mount(&[]);
    for folder in ["big1", "big2"] {
        fs::create_dir_all(sb.path(&format!("{folder}/sub"))).unwrap();
        for i in 0..100 {
            fs::write(sb.path(&format!("{folder}/f{i:03}")), vec![b'x'; i]).unwrap();
        }
    }
    fs::create_dir(sb.path("small")).unwrap();
    for i in 0..bucketfs::fuse::listing::SMALL_FOLDER {
        fs::write(sb.path(&format!("small/f{i:03}")), "x").unwrap();
    }
    m.unmount();
    // A new mount: the kernel holds no entry of these folders.
    let m = sb.mount(&[]);
    let ino = |p: &str| fs::metadata(sb.path(p)).unwrap().ino();
    let (big1, big2, small) = (ino("big1"), ino("big2"), ino("small"));
    let names_only = |log: &str, dir: u64| -> Vec<(usize, u32)> {
        let prefix = format!("listing of inode {dir}: ");
        log.lines()
            .filter_map(|l| l.split_once(&prefix))
            .map(|(_, rest)| {
                let (n, pid) = rest
                    .split_once(" names without attributes for process ")
                    .unwrap();
                (n.parse().unwrap(), pid.parse().unwrap())
            })
            .collect()
    };

    let find = Command::new("find")
        .arg(sb.path("big1"))
        .arg(sb.path("small"))
        .output()
        .unwrap();
    assert!(find.status.success());
    let mut listed: Vec<String> = String::from_utf8(find.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.contains("/big1"))
        .map(|l| l.rsplit('/').next().unwrap().to_string())
        .collect();
    listed.sort();
    let mut expected: Vec<String> = (0..100).map(|i| format!("f{i:03}")).collect();
    expected.extend(["big1".to_string(), "sub".to_string()]);
    expected.sort();
    assert_eq!(listed, expected, "find lists every name");
    let log = m.log();
    let given = names_only(&log, big1);
    assert_eq!(given.len(), 1, "one listing of big1 so far:\n{log}");
    // The kernel's first batch holds all 102 entries (about 200 fit).
    assert_eq!(
        given[0].0, 100,
        "every file of a big folder as a name only: {given:?}"
    );
    assert_eq!(
        names_only(&log, small),
        vec![],
        "a small folder comes with every attribute:\n{log}"
    );
    assert!(
        !log.contains("stats what it lists"),
        "find stats nothing:\n{log}"
    );
    // Nor did the entries find was given set off a read-ahead of big1. The one stat-ahead
    // thread serves folders in the order asked: had big1 been asked for, its line would come
    // before that of big2, read ahead once two of its names are looked up.
    for f in ["big2/f000", "big2/f001"] {
        assert!(fs::metadata(sb.path(f)).unwrap().is_file());
    }
    wait_until_with(
        "the read-ahead of big2/",
        Duration::from_secs(10),
        || m.log(),
        || m.log().contains("stat-ahead: 101 entries of ./big2\n"),
    );
    assert!(!m.log().contains(" of ./big1\n"), "{}", m.log());

    // Names given without attributes still carry their type and a non-zero d_ino.
    for e in fs::read_dir(sb.path("big1")).unwrap() {
        let e = e.unwrap();
        assert_ne!(e.ino(), 0, "{:?}", e.file_name());
        assert_eq!(e.file_type().unwrap().is_dir(), e.file_name() == "sub");
    }

    let ls = Command::new("ls")
        .args(["-ln"])
        .arg(sb.path("big1"))
        .arg(sb.path("big2"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ls_pid = ls.id();
    let out = ls.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let sizes: Vec<(String, u64)> = text
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields.len() >= 9 && fields[8].starts_with('f'))
                .then(|| (fields[8].to_string(), fields[4].parse().unwrap()))
        })
        .collect();
    assert_eq!(sizes.len(), 200, "{text}");
    for (name, size) in &sizes {
        assert_eq!(*size, name[1..].parse::<u64>().unwrap(), "{name}");
    }
    let log = m.log();
    assert!(
        names_only(&log, big1).iter().any(|&(_, pid)| pid == ls_pid),
        "ls got names only in big1 first:\n{log}"
    );
    assert!(
        log.contains(&format!("process {ls_pid} stats what it lists")),
        "{log}"
    );
    assert_eq!(
        names_only(&log, big2),
        vec![],
        "ls, known to stat, got big2 with every attribute"
    );
    // And what stats show is the same either way.
    assert_eq!(fs::metadata(sb.path("big1/f099")).unwrap().len(), 99);
    assert_eq!(fs::metadata(sb.path("big2/f099")).unwrap().len(), 99);
}

/// `git status` stats the index's paths in name order, folder after folder: once two sibling
/// folders were looked up that way, the next one in name order is read ahead before its first
/// lookup, so its cold directory and inode reads overlap the round trips of the one before.
#[test]
fn a_walk_through_sibling_folders_gets_the_next_folder_read_ahead_before_it_is_reached() {
    let sb = Sandbox::new();
    sb.create(&[]);
    let m = sb.mount(&[]);
    for folder in ["walk/a", "walk/b", "walk/c"] {
        fs::create_dir_all(sb.path(folder)).unwrap();
        for i in 0..3 {
            fs::write(sb.path(&format!("{folder}/f{i}")), folder).unwrap();
        }
    }
    m.unmount();
    let m = sb.mount(&[]);
    for path in ["walk/a/f0", "walk/a/f1", "walk/b/f0", "walk/b/f1"] {
        assert!(fs::metadata(sb.path(path)).unwrap().is_file());
    }
    let guess = "stat-ahead: 3 entries of ./walk/c\n";
    wait_until_with(
        "the read-ahead of walk/c",
        Duration::from_secs(10),
        || m.log(),
        || m.log().contains(guess),
    );
    assert_eq!(fs::read(sb.path("walk/c/f2")).unwrap(), b"walk/c");
}
