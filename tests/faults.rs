//! Faults injected into a real mount through fail points (the `fail` crate), which exist only
//! in a build with the `failpoints` feature: `scripts/test.sh` builds and tests with it.

mod common;

use std::fs;
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
