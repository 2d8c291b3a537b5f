//! Tests that drop the host's dentry and inode caches. A test binary of its own: a cache drop
//! makes the kernel forget every unused inode of every FUSE mount, and a test running beside
//! it would see its folders looked up again under new inode numbers.

mod common;

use std::fs;
use std::time::Duration;

use common::*;

/// A folder read ahead is not read again for 10 s while the kernel holds it; once the kernel
/// forgets it (memory pressure, a cache drop), its entries are likely gone from the host's
/// inode cache too, and the next stats in it get it read ahead again.
#[test]
fn a_folder_the_kernel_forgot_is_read_ahead_again() {
    let sb = Sandbox::new();
    let m = fresh_mount_over_many(&sb, || {});
    let line = "stat-ahead: 20 entries of ./many\n";
    let stat_two = || {
        for f in ["many/f00", "many/f01"] {
            assert_eq!(fs::metadata(sb.path(f)).unwrap().len(), 1);
        }
    };
    stat_two();
    wait_until_with(
        "the first read-ahead of many/",
        Duration::from_secs(5),
        || m.log(),
        || m.log().matches(line).count() == 1,
    );
    // The kernel lets go of the folder's entries and then of the folder (its FORGET comes
    // in a batch, from the /dev/fuse thread).
    fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    stat_two();
    wait_until_with(
        "the second read-ahead of many/, well within 10 s of the first",
        Duration::from_secs(5),
        || m.log(),
        || m.log().matches(line).count() == 2,
    );
}
