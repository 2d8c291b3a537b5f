//! Faults injected into a real mount through fail points (the `fail` crate), which exist only
//! in a build with the `failpoints` feature: `scripts/test.sh` builds and tests with it.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use common::*;

/// A bug that panics while serving a request fails that request with EIO and nothing else:
/// the lock it held is free again, the thread that served it serves on, and the rest of the
/// bucket reads and writes as before. Before, each panic ended a serving thread (the reply
/// dropped while unwinding did answer EIO), and once as many requests had panicked as there
/// were threads, every caller of the mount hung.
#[test]
fn a_panic_serving_a_request_fails_that_request_and_the_mount_serves_on() {
    let sb = Sandbox::new();
    sb.create(&[]);
    let m = Mount::start_with_env(
        &sb.bucket,
        &sb.mnt,
        &["--threads", "2"],
        &[("FAILPOINTS", "fs::lookup=return(boom)")],
    );
    fs::write(sb.path("kept"), "old").unwrap();
    // Five times as many panics as serving threads of either transport (io_uring has one
    // worker per CPU and thread).
    // A thread with no one to serve its queue would leave the stat waiting for ever: each
    // gets 10 s (the dead daemon, at the end, lets a stuck one go).
    for _ in 0..20 {
        let boom = sb.path("boom");
        let (done, stat) = std::sync::mpsc::channel();
        std::thread::spawn(move || done.send(fs::metadata(boom).map(drop)));
        let err = stat
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("the mount hung:\n{}", m.log()))
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    }
    let log = m.log();
    assert!(
        log.contains("the filesystem panicked serving") && log.contains("fail point fs::lookup"),
        "{log}"
    );
    assert_eq!(fs::read_to_string(sb.path("kept")).unwrap(), "old");
    fs::write(sb.path("kept"), "new").unwrap();
    fs::write(sb.path("other"), "x").unwrap();
    assert_eq!(fs::read_to_string(sb.path("kept")).unwrap(), "new");
    assert_eq!(versions(&sb.mnt, "kept").len(), 2);
    assert_eq!(
        fs::read_dir(&sb.mnt).unwrap().count(),
        3, // kept, other, .versions
    );
    m.unmount();
}

/// A daemon's stderr is /dev/null: the panic's message and place reach its log file all the
/// same.
#[test]
fn a_daemon_logs_a_panic_with_its_place() {
    let sb = Sandbox::new();
    let out = std::process::Command::new(BIN)
        .args([
            "mount",
            sb.bucket.to_str().unwrap(),
            sb.mnt.to_str().unwrap(),
        ])
        .env("FAILPOINTS", "fs::lookup=return(boom)")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let err = fs::metadata(sb.path("boom")).unwrap_err();
    let (ok, _, stderr) = run("umount", &[sb.mnt.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let log = fs::read_to_string(sb.bucket.join(".bucketfs/bucketfs.log")).unwrap();
    assert!(
        log.contains("panicked at src/fs/mod.rs")
            && log.contains("fail point fs::lookup: \"boom\""),
        "{log}"
    );
}

/// A bug that panics while replicating one key holds back that key's work, and only that:
/// its versions stay queued and PENDING (the later one behind the earlier, so they still
/// arrive in order), every other key replicates, and after a restart without the bug the
/// held-back versions arrive. Before, the panic ended the replication thread: nothing was
/// replicated again until a restart, which met the same job first.
#[test]
fn a_panic_replicating_one_key_holds_back_that_key_only_and_its_work_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dest, mnt) = (
        dir.path().join("src"),
        dir.path().join("dest"),
        dir.path().join("mnt"),
    );
    fs::create_dir(&mnt).unwrap();
    let (ok, _, err) = run(BIN, &["create", dest.to_str().unwrap()]);
    assert!(ok, "{err}");
    let cfg = dir.path().join("replication.yaml");
    fs::write(
        &cfg,
        "Role: arn:aws:iam::123456789012:role/test\nRules:\n  - ID: all\n    Status: Enabled\n    \
         Priority: 1\n    Filter: {}\n    Destination: {Bucket: 'arn:aws:s3:::dest'}\n    \
         DeleteMarkerReplication: {Status: Enabled}\n",
    )
    .unwrap();
    let config = ["--config", cfg.to_str().unwrap()];
    let m = Mount::start_with_env(
        &src,
        &mnt,
        &config,
        &[("FAILPOINTS", "replication::replicate=return(boom)")],
    );
    fs::write(mnt.join("boom"), "first").unwrap();
    for i in 0..20 {
        fs::write(mnt.join(format!("f{i}")), format!("{i}")).unwrap();
    }
    wait_until_with(
        "every other key replicated",
        Duration::from_secs(30),
        || m.log(),
        || (0..20).all(|i| dest.join(format!("f{i}")).exists()),
    );
    fs::write(mnt.join("boom"), "second").unwrap();
    fs::write(mnt.join("after"), "x").unwrap();
    // Each pass meets boom's first version again; the next keys go on all the same.
    wait_until_with(
        "a key written after the panics replicated, and boom tried again",
        Duration::from_secs(30),
        || m.log(),
        || {
            dest.join("after").exists()
                && m.log()
                    .matches("fail point replication::replicate: boom")
                    .count()
                    >= 2
        },
    );
    assert!(
        m.log().contains("replication: a job panicked"),
        "{}",
        m.log()
    );
    assert!(stored_versions(&dest, "boom").is_empty());
    assert_eq!(
        xget(&mnt.join("boom"), "user.s3.replication-status").as_deref(),
        Some("PENDING")
    );
    m.unmount();

    let m = Mount::start(&src, &mnt, &config);
    wait_until_with(
        "boom's two versions replicated after the restart",
        Duration::from_secs(30),
        || m.log(),
        || stored_versions(&dest, "boom").len() == 2,
    );
    assert_eq!(fs::read_to_string(dest.join("boom")).unwrap(), "second");
    wait_until(
        "boom COMPLETED on the source",
        Duration::from_secs(10),
        || xget(&mnt.join("boom"), "user.s3.replication-status").as_deref() == Some("COMPLETED"),
    );
}

/// The names of the daemon's threads (as the kernel keeps them: 15 bytes at most).
fn thread_names(pid: u32) -> Vec<String> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .map(|name| name.trim_end().to_string())
        .collect()
}

/// A bug in one round of a background thread gives up that round, not the thread: each of
/// the threads every mount runs panics once and is still there afterwards, doing its work.
/// Before, one panic ended the thread for the rest of the mount: without the group-commit
/// thread, published versions were no longer synced; without the kernel-notices thread,
/// the kernel kept a deleted version's name until its entry expired.
#[test]
fn a_panic_in_a_background_round_gives_up_that_round_and_the_thread_goes_on() {
    let sb = Sandbox::new();
    sb.create(&[]);
    let threads = ["stager", "group-commit", "stat-ahead", "kernel-notices"];
    let failpoints: Vec<String> = threads
        .iter()
        .map(|t| format!("round::{t}=1*panic(boom)"))
        .collect();
    // Plain files in the bucket are objects: folders the new mount's kernel knows nothing of.
    for round in 0..2 {
        let folder = sb.bucket.join(format!("ahead{round}"));
        fs::create_dir(&folder).unwrap();
        for f in 0..20 {
            fs::write(folder.join(format!("f{f:02}")), "x").unwrap();
        }
    }
    let m = Mount::start_with_env(
        &sb.bucket,
        &sb.mnt,
        &[],
        &[("FAILPOINTS", &failpoints.join(";"))],
    );
    // Creates take staging files (the stager's), publishes wait for a sync (group commit),
    // names of a folder stat one by one get it read ahead (stat-ahead), and deleting the
    // current version under .versions tells the kernel the key's name changed (kernel
    // notices): twice each, so that the second of each comes after its thread's panic.
    for round in 0..2 {
        for d in 0..4 {
            let dir = sb.path(&format!("r{round}/d{d}"));
            fs::create_dir_all(&dir).unwrap();
            for f in 0..40 {
                fs::write(dir.join(format!("f{f}")), format!("{round}{d}{f}")).unwrap();
            }
        }
        for f in 0..3 {
            let name = sb.path(&format!("ahead{round}/f{f:02}"));
            assert_eq!(fs::metadata(name).unwrap().len(), 1);
        }
        let key = format!("k{round}");
        fs::write(sb.path(&key), "old").unwrap();
        fs::write(sb.path(&key), "new").unwrap();
        assert_eq!(fs::read_to_string(sb.path(&key)).unwrap(), "new");
        let v = versions(&sb.mnt, &key);
        fs::remove_file(sb.mnt.join(".versions").join(&key).join(&v[1])).unwrap();
        assert_eq!(fs::read_to_string(sb.path(&key)).unwrap(), "old");
        wait_until_with(
            "each thread's first round panicked",
            Duration::from_secs(10),
            || m.log(),
            || {
                round == 1
                    || threads
                        .iter()
                        .all(|t| m.log().contains(&format!("{t}: a round panicked (a bug")))
            },
        );
    }
    let alive = thread_names(m.pid());
    for t in threads {
        assert!(
            alive.iter().any(|a| a == t),
            "{t} is gone: {alive:?}\n{}",
            m.log()
        );
        assert_eq!(
            m.log().matches(&format!("{t}: a round panicked")).count(),
            1,
            "{}",
            m.log()
        );
    }
    wait_until_with(
        "the second folder read ahead",
        Duration::from_secs(10),
        || m.log(),
        || m.log().contains("stat-ahead: 20 entries of ./ahead1\n"),
    );
    m.unmount();
    let m = sb.mount(&[]);
    for d in 0..4 {
        assert_eq!(
            fs::read_dir(sb.path(&format!("r1/d{d}"))).unwrap().count(),
            40
        );
    }
    assert_eq!(fs::read_to_string(sb.path("r1/d3/f39")).unwrap(), "1339");
    assert_eq!(fs::read_to_string(sb.path("k1")).unwrap(), "old");
    m.unmount();
}

/// The thread that fills a scattered overlay with the old version's bytes panics once: the
/// overlay is not left marked as being filled, so the next write starts another thread, which
/// fills it, and the version written is whole. Before, the panic skipped the mark's reset: no
/// thread filled the overlay again, and the writer's release copied it all at close.
#[test]
fn an_overlay_fill_that_panics_is_tried_again_by_the_next_write() {
    let sb = Sandbox::new();
    sb.create(&[]);
    let m = Mount::start_with_env(
        &sb.bucket,
        &sb.mnt,
        &["--delta-threshold", "1"],
        &[("FAILPOINTS", "round::overlay-fill=1*panic(boom)")],
    );
    let path = sb.path("busy");
    let original: Vec<u8> = (0..24u32 << 20).map(|i| (i % 251) as u8).collect();
    fs::write(&path, &original).unwrap();
    let mut expected = original.clone();
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    let mut write = |at: usize, byte: u8| {
        f.write_all_at(&[byte], at as u64).unwrap();
        expected[at] = byte;
    };
    for i in 0..5000 {
        write(i * 4099, b'#');
    }
    wait_until_with(
        "the first fill panicked",
        Duration::from_secs(10),
        || m.log(),
        || m.log().contains("overlay-fill: a round panicked"),
    );
    for i in 0..100 {
        write(i * 65_537 + 1, b'%');
    }
    wait_until_with(
        "a second thread filled the overlay with the writer still open",
        Duration::from_secs(30),
        || m.log(),
        || {
            m.log()
                .contains("overlay filled, a full copy now (by overlay-fill thread)")
        },
    );
    drop(f);
    assert!(fs::read(&path).unwrap() == expected);
    assert_eq!(versions(&sb.mnt, "busy").len(), 2);
    assert!(
        fs::read(
            sb.mnt
                .join(".versions/busy")
                .join(&versions(&sb.mnt, "busy")[0])
        )
        .unwrap()
            == original
    );
    m.unmount();
}

/// A writer's release publishes without the filesystem's lock, here held up for 2 s by a fail
/// point. Meanwhile the folder's stat does not wait for it (the process that closed the file
/// goes on), while a tag set on the file and a rename of its folder do, and land after it:
/// on the published version, and with the file under the new name.
#[test]
fn a_publish_in_progress_is_waited_for_by_what_concerns_its_file_and_no_more() {
    let sb = Sandbox::new();
    sb.create(&[]);
    let m = Mount::start_with_env(
        &sb.bucket,
        &sb.mnt,
        &[],
        &[("FAILPOINTS", "fs::publish_without_lock=sleep(2000)")],
    );
    fs::create_dir(sb.path("d")).unwrap();
    fs::write(sb.path("d/f"), "first").unwrap();
    std::thread::sleep(Duration::from_millis(200)); // the release is in the publish now
    assert!(fs::metadata(sb.path("d")).unwrap().is_dir());
    assert!(
        !sb.bucket.join("d/f").exists(),
        "the folder's stat waited for its file's publish"
    );
    ::xattr::set(sb.path("d/f"), "user.s3.tag.state", b"held").unwrap();
    assert!(
        sb.bucket.join("d/f").exists(),
        "the tag did not wait for the publish"
    );
    let version = xget(&sb.path("d/f"), "user.s3.version-id").unwrap();
    assert_eq!(versions(&sb.mnt, "d/f"), std::slice::from_ref(&version));
    let stored = meta(&sb.bucket, "d/f", &version).expect("the tag made metadata");
    assert!(stored.to_string().contains("held"), "{stored}");

    fs::write(sb.path("d/g"), "second").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    fs::rename(sb.path("d"), sb.path("e")).unwrap();
    assert!(
        !sb.bucket.join("d").exists(),
        "published under the old name"
    );
    assert_eq!(fs::read_to_string(sb.path("e/g")).unwrap(), "second");
    assert_eq!(fs::read_to_string(sb.path("e/f")).unwrap(), "first");
    m.unmount();
}

/// A bug that panics in the middle of a publish done without the filesystem's lock: what
/// waits for the publish does not wait for ever (the stat is answered), and the version the
/// close promised is not lost: its close record publishes it at the next mount.
#[test]
fn a_panic_in_a_publish_without_the_lock_leaves_no_wait_and_loses_nothing() {
    let sb = Sandbox::new();
    sb.create(&[]);
    let m = Mount::start_with_env(
        &sb.bucket,
        &sb.mnt,
        &[],
        &[("FAILPOINTS", "fs::publish_without_lock=1*panic(boom)")],
    );
    fs::write(sb.path("f"), "kept").unwrap();
    let f = sb.path("f");
    let (done, stat) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(fs::metadata(f).map(|m| m.len())));
    let len = stat
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("the stat waits for ever:\n{}", m.log()));
    assert_eq!(len.unwrap(), 4);
    assert!(m.log().contains("boom"), "{}", m.log());
    fs::write(sb.path("g"), "next").unwrap();
    m.unmount();
    let m = sb.mount(&[]);
    assert!(
        m.log().contains("recovery: publishing f"),
        "recovery did not publish the file:\n{}",
        m.log()
    );
    assert_eq!(fs::read_to_string(sb.path("f")).unwrap(), "kept");
    assert_eq!(versions(&sb.mnt, "f").len(), 1);
    assert_eq!(fs::read_to_string(sb.path("g")).unwrap(), "next");
}
