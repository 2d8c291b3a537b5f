//! Reading a folder's inodes ahead when its names are looked up one by one.
//!
//! A cold `stat` through the mount pays a FUSE round trip and then the backing file's cold
//! inode read, one after the other; a plain disk pays only the read. `git status`, `make`,
//! rsync with a file list and backup tools stat many names of one folder without listing it,
//! so the kernel sends a LOOKUP per name and no READDIRPLUS fills its cache. After a few such
//! lookups in a folder, a background thread stats the folder's other backing entries (in
//! inode order, which is disk order), so the host kernel has their inodes in memory when their
//! LOOKUPs arrive, and the disk reads overlap the round trips instead of following them. Lustre
//! calls this statahead.
//!
//! Nothing is kept in bucketfs's memory but a short list of recent folders: the attributes stay
//! in the kernel's inode cache, which the kernel sizes and evicts. A folder is read ahead at
//! most once per [`REPEAT_AFTER`], only up to [`MAX_ENTRIES`] entries; a guess costs at most
//! that many `statx` calls, on a thread of its own, never on a filesystem call's path.

use std::collections::VecDeque;
use std::os::unix::fs::DirEntryExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

/// Lookups of existing names in one folder before its other entries are read ahead: one stat
/// (`cat` of a file) is not a pattern, two in a row are the start of one.
const TRIGGER_LOOKUPS: u32 = 2;
/// A folder with more entries than this is not read ahead: the guess would cost more than it
/// could save, and a subset in hash order would be a poor one.
const MAX_ENTRIES: usize = 4096;
/// How long a folder read ahead is not read again (the kernel keeps the inodes cached).
const REPEAT_AFTER: Duration = Duration::from_secs(10);
/// Folders whose lookups are counted at once; the oldest is forgotten first.
const RECENT_FOLDERS: usize = 64;
/// Folders waiting for the thread; more are dropped (it is only a guess).
const QUEUE: usize = 16;

/// What the thread has done, for tests and logs.
#[derive(Debug, Default)]
pub struct StatAheadCounters {
    pub folders: AtomicU64,
    pub entries: AtomicU64,
}

struct Recent {
    folder: PathBuf,
    first_seen: Instant,
    lookups: u32,
}

pub struct StatAhead {
    recent: Mutex<VecDeque<Recent>>,
    queue: Sender<PathBuf>,
    counters: Arc<StatAheadCounters>,
}

impl StatAhead {
    /// Starts the thread; it ends when this is dropped.
    pub fn start() -> Self {
        let (queue, rx) = crossbeam_channel::bounded::<PathBuf>(QUEUE);
        let counters = Arc::new(StatAheadCounters::default());
        let thread_counters = Arc::clone(&counters);
        std::thread::Builder::new()
            .name("stat-ahead".into())
            .spawn(move || {
                for folder in rx {
                    let n = read_ahead(&folder);
                    log::debug!("stat-ahead: {n} entries of {}", folder.display());
                    thread_counters.entries.fetch_add(n, Ordering::Relaxed);
                    thread_counters.folders.fetch_add(1, Ordering::Relaxed);
                }
            })
            .expect("spawning the stat-ahead thread");
        StatAhead {
            recent: Mutex::new(VecDeque::with_capacity(RECENT_FOLDERS)),
            queue,
            counters,
        }
    }

    pub fn counters(&self) -> &StatAheadCounters {
        &self.counters
    }

    /// A lookup found an existing entry in `folder` (a backing folder of the bucket).
    pub fn found_in(&self, folder: &Path) {
        let now = Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        // Newest first (the folder being walked is usually the last one seen); bytes, not
        // `Path ==`, which compares component by component: this runs on every lookup.
        let i = match recent
            .iter()
            .rposition(|r| r.folder.as_os_str() == folder.as_os_str())
        {
            Some(i) => i,
            None => {
                if recent.len() == RECENT_FOLDERS {
                    recent.pop_front();
                }
                recent.push_back(Recent {
                    folder: folder.to_path_buf(),
                    first_seen: now,
                    lookups: 0,
                });
                recent.len() - 1
            }
        };
        let r = &mut recent[i];
        if now.duration_since(r.first_seen) > REPEAT_AFTER {
            r.first_seen = now;
            r.lookups = 0;
        }
        r.lookups += 1;
        if r.lookups == TRIGGER_LOOKUPS {
            // A full queue drops the guess; a stopped thread (it panicked) only costs speed.
            let _ = self.queue.try_send(folder.to_path_buf());
        }
    }
}

/// Stats the entries of `folder` in inode order; returns how many it stat'ed.
fn read_ahead(folder: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return 0;
    };
    let mut found = Vec::new();
    for entry in entries {
        let Ok(entry) = entry else { return 0 };
        if found.len() == MAX_ENTRIES {
            return 0;
        }
        found.push((entry.ino(), entry));
    }
    found.sort_unstable_by_key(|(ino, _)| *ino);
    // DirEntry::metadata is an fstatat relative to the open folder: no path walk per entry.
    found
        .iter()
        .filter(|(_, entry)| entry.metadata().is_ok())
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_for(what: &str, ok: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn folder_with(n: usize) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..n {
            std::fs::write(dir.path().join(format!("f{i:05}")), b"x").unwrap();
        }
        dir
    }

    #[test]
    fn a_folder_is_read_ahead_once_after_two_lookups() {
        let ahead = StatAhead::start();
        let dir = folder_with(50);
        ahead.found_in(dir.path());
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            ahead.counters().folders.load(Ordering::Relaxed),
            0,
            "one lookup"
        );
        ahead.found_in(dir.path());
        wait_for("the read-ahead", || {
            ahead.counters().folders.load(Ordering::Relaxed) == 1
        });
        assert_eq!(ahead.counters().entries.load(Ordering::Relaxed), 50);
        for _ in 0..20 {
            ahead.found_in(dir.path());
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            ahead.counters().folders.load(Ordering::Relaxed),
            1,
            "read once"
        );
    }

    #[test]
    fn a_folder_over_the_limit_is_not_read_ahead() {
        let ahead = StatAhead::start();
        let big = folder_with(MAX_ENTRIES + 1);
        let small = folder_with(3);
        for dir in [&big, &small] {
            for _ in 0..TRIGGER_LOOKUPS {
                ahead.found_in(dir.path());
            }
        }
        // One thread, in order: once the small one is done, the big one was passed over.
        wait_for("both folders", || {
            ahead.counters().folders.load(Ordering::Relaxed) == 2
        });
        assert_eq!(ahead.counters().entries.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn lookups_spread_over_many_folders_read_none_ahead() {
        let ahead = StatAhead::start();
        let dirs: Vec<_> = (0..RECENT_FOLDERS + 1).map(|_| folder_with(2)).collect();
        // Round after round, the list forgets each folder before its next lookup.
        for _ in 0..TRIGGER_LOOKUPS {
            for dir in &dirs {
                ahead.found_in(dir.path());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(ahead.counters().folders.load(Ordering::Relaxed), 0);
    }
}
