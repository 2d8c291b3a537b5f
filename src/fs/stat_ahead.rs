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
//! A walk through sibling folders in name order (`git status` follows its sorted index) pays
//! the cold directory read of each new folder on its first lookup. Once a folder's lookups
//! follow those of a sibling before it in name order, the sibling after it is read ahead too,
//! and each first lookup in a folder guessed that way reads the next one: the walk's reads
//! stay one folder ahead of it.
//!
//! What the thread stats warms the host kernel's inode cache, and the attributes it got serve
//! the LOOKUPs that follow, each at most once, instead of a `statx` of their own: that `statx`
//! was most of what a cold stat cost above the FUSE round trip. An attribute is served only
//! within [`SERVE_WITHIN`] of its read (the attribute TTL the kernel would have kept it for,
//! had it come in a listing) and only if the mount changed nothing since the read began
//! ([`StatAhead::changed`]); only the last [`KEPT_READS`] folders are kept.
//!
//! A folder is read ahead at most once per [`REPEAT_AFTER`] while the kernel holds it (once it
//! forgets the folder, its entries are likely evicted too, and the next lookups may read it
//! ahead again), only up to [`MAX_ENTRIES`] entries; a guess costs at most that many `statx`
//! calls, on a thread of its own, never on a filesystem call's path.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::Metadata;
use std::os::unix::fs::DirEntryExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use foldhash::HashMap;

use crate::panic_guard::guarded_round;

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
/// How long attributes read ahead may serve a lookup: the kernel keeps the attributes of a
/// listing (READDIRPLUS) as long, and changes that are no request to the mount (another
/// process writing the bucket, replication's adoption link) are seen no later than with that.
const SERVE_WITHIN: Duration = Duration::from_secs(1);
/// Folders whose attributes are kept for lookups: the one being walked and the walk's next.
const KEPT_READS: usize = 2;

/// What the thread has done, for tests and logs.
#[derive(Debug, Default)]
pub struct StatAheadCounters {
    pub folders: AtomicU64,
    pub entries: AtomicU64,
    /// Lookups answered with attributes read ahead.
    pub served: AtomicU64,
}

struct Recent {
    folder: PathBuf,
    first_seen: Instant,
    lookups: u32,
    /// Read ahead since `first_seen`.
    read: bool,
    /// Read ahead as the next folder of a walk, before any lookup in it.
    guessed: bool,
}

impl Recent {
    fn new(folder: &Path, now: Instant) -> Self {
        Recent {
            folder: folder.to_path_buf(),
            first_seen: now,
            lookups: 0,
            read: false,
            guessed: false,
        }
    }
}

#[derive(Default)]
struct Seen {
    recent: VecDeque<Recent>,
    /// The last folder whose lookups started a read-ahead: the one before a walk's next.
    last_triggered: Option<PathBuf>,
}

impl Seen {
    /// The entry of `folder`, made if it is new, its counts reset if they are stale.
    fn entry(&mut self, folder: &Path, now: Instant) -> &mut Recent {
        // Newest first (the folder being walked is usually the last one seen); bytes, not
        // `Path ==`, which compares component by component: this runs on every lookup.
        let i = match self
            .recent
            .iter()
            .rposition(|r| r.folder.as_os_str() == folder.as_os_str())
        {
            Some(i) => i,
            None => {
                if self.recent.len() == RECENT_FOLDERS {
                    self.recent.pop_front();
                }
                self.recent.push_back(Recent::new(folder, now));
                self.recent.len() - 1
            }
        };
        let r = &mut self.recent[i];
        if now.duration_since(r.first_seen) > REPEAT_AFTER {
            *r = Recent::new(folder, now);
        }
        r
    }
}

/// Work for the thread.
struct Job {
    folder: PathBuf,
    /// Read `folder` itself (not when it was read ahead already, as a walk's guess).
    read: bool,
    /// Then read the folder after it, in name order among its siblings: the walk's next.
    then_next: bool,
}

/// The attributes of one folder's entries, read ahead.
struct Read {
    folder: PathBuf,
    /// The mount's change count when the read began.
    changes: u64,
    began: Instant,
    attrs: HashMap<OsString, Metadata>,
}

/// What the thread read and the count of the mount's changes, shared with the lookups.
#[derive(Default)]
struct Reads {
    kept: Mutex<VecDeque<Read>>,
    changes: AtomicU64,
}

impl Reads {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Read>> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads `folder` ahead and keeps what it found.
    fn read(&self, folder: &Path) -> u64 {
        // Before the first stat: a change that lands after it is counted after this.
        let changes = self.changes.load(Ordering::Acquire);
        let began = Instant::now();
        let attrs = read_ahead(folder);
        let n = attrs.len() as u64;
        let mut kept = self.lock();
        kept.retain(|r| r.folder != folder && r.began.elapsed() < SERVE_WITHIN);
        if kept.len() == KEPT_READS {
            kept.pop_front();
        }
        kept.push_back(Read {
            folder: folder.to_path_buf(),
            changes,
            began,
            attrs,
        });
        n
    }
}

pub struct StatAhead {
    seen: Arc<Mutex<Seen>>,
    queue: Sender<Job>,
    counters: Arc<StatAheadCounters>,
    reads: Arc<Reads>,
}

impl StatAhead {
    /// Starts the thread; it ends when this is dropped. `skip` are folders never guessed as a
    /// walk's next (the bucket's own metadata).
    pub fn start(skip: Vec<PathBuf>) -> Self {
        let (queue, rx) = crossbeam_channel::bounded::<Job>(QUEUE);
        let counters = Arc::new(StatAheadCounters::default());
        let seen = Arc::new(Mutex::new(Seen::default()));
        let thread_counters = Arc::clone(&counters);
        let thread_seen = Arc::clone(&seen);
        let reads = Arc::new(Reads::default());
        let thread_reads = Arc::clone(&reads);
        std::thread::Builder::new()
            .name("stat-ahead".into())
            .spawn(move || {
                let mut siblings = Siblings::default();
                let read = |folder: &Path| {
                    let n = thread_reads.read(folder);
                    log::debug!("stat-ahead: {n} entries of {}", folder.display());
                    thread_counters.entries.fetch_add(n, Ordering::Relaxed);
                    thread_counters.folders.fetch_add(1, Ordering::Relaxed);
                };
                for job in rx {
                    guarded_round("stat-ahead", || {
                        if job.read {
                            read(&job.folder);
                        }
                        if !job.then_next {
                            return;
                        }
                        let Some(next) = siblings.after(&job.folder).filter(|n| !skip.contains(n))
                        else {
                            return;
                        };
                        let now = Instant::now();
                        {
                            let mut seen = thread_seen.lock().unwrap_or_else(|e| e.into_inner());
                            let r = seen.entry(&next, now);
                            if r.read {
                                return;
                            }
                            r.read = true;
                            r.guessed = r.lookups == 0;
                        }
                        read(&next);
                    });
                }
            })
            .expect("spawning the stat-ahead thread");
        StatAhead {
            seen,
            queue,
            counters,
            reads,
        }
    }

    /// The mount changed the bucket (called once the change is made, before the request that
    /// made it is answered): nothing read ahead before serves a lookup any more.
    pub fn changed(&self) {
        self.reads.changes.fetch_add(1, Ordering::Release);
    }

    /// Calls [`Self::changed`] when dropped: held across a request that may change the bucket,
    /// it counts the change on every way out.
    pub fn changing(&self) -> Changing<'_> {
        Changing(self)
    }

    /// The attributes of `path` read ahead, if the read is recent and nothing changed since it
    /// began; taken, so they serve one lookup.
    pub fn take(&self, path: &Path) -> Option<Metadata> {
        let (folder, name) = (path.parent()?, path.file_name()?);
        let mut kept = self.reads.lock();
        if kept.is_empty() {
            return None;
        }
        kept.retain(|r| r.began.elapsed() < SERVE_WITHIN);
        let read = kept
            .iter_mut()
            .rev()
            .find(|r| r.folder.as_os_str() == folder.as_os_str())?;
        if read.changes != self.reads.changes.load(Ordering::Acquire) {
            return None;
        }
        let attrs = read.attrs.remove(name)?;
        self.counters.served.fetch_add(1, Ordering::Relaxed);
        log::debug!("lookup of {}: attributes read ahead", path.display());
        Some(attrs)
    }

    pub fn counters(&self) -> &StatAheadCounters {
        &self.counters
    }

    /// The kernel forgot `folder`: its entries went from the kernel's caches (memory pressure,
    /// a cache drop), and the backing inodes read ahead likely with them. Its next lookups
    /// count afresh, as in a folder never read ahead, instead of waiting out [`REPEAT_AFTER`].
    pub fn forgotten(&self, folder: &Path) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.recent
            .retain(|r| r.folder.as_os_str() != folder.as_os_str());
    }

    /// A lookup found an existing entry in `folder` (a backing folder of the bucket).
    pub fn found_in(&self, folder: &Path) {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let r = seen.entry(folder, now);
        r.lookups += 1;
        // The first lookup in a folder guessed as a walk's next: the walk goes on.
        let walking = r.lookups == 1 && r.guessed;
        let trigger = r.lookups == TRIGGER_LOOKUPS && !r.read;
        if trigger {
            r.read = true;
        }
        if !trigger && !walking {
            return;
        }
        // A walk: this folder's lookups started after those of a sibling before it in name
        // order (`git status`, `make`, a sorted file list), so the next sibling is likely next.
        let forward = trigger
            && seen.last_triggered.as_deref().is_some_and(|last| {
                last.parent() == folder.parent() && last.file_name() < folder.file_name()
            });
        // The walk's parent triggers too, when the walk enters its second folder: that is
        // no step of the walk.
        if trigger
            && !seen
                .last_triggered
                .as_deref()
                .is_some_and(|last| last.starts_with(folder))
        {
            seen.last_triggered = Some(folder.to_path_buf());
        }
        drop(seen);
        // A full queue drops the guess: that only costs speed.
        let _ = self.queue.try_send(Job {
            folder: folder.to_path_buf(),
            read: trigger,
            then_next: forward || walking,
        });
    }
}

/// See [`StatAhead::changing`].
#[must_use = "the change is counted when this is dropped"]
pub struct Changing<'a>(&'a StatAhead);

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        self.0.changed();
    }
}

/// The subfolders of the last parent asked about, sorted by name.
#[derive(Default)]
struct Siblings {
    parent: PathBuf,
    listed: Option<Instant>,
    names: Vec<OsString>,
}

impl Siblings {
    /// The subfolder of `folder`'s parent that follows `folder` in name order.
    fn after(&mut self, folder: &Path) -> Option<PathBuf> {
        let parent = folder.parent()?;
        let name = folder.file_name()?;
        let fresh = self.parent == parent
            && self.listed.is_some_and(|at| at.elapsed() < REPEAT_AFTER)
            && self
                .names
                .binary_search_by(|n| n.as_os_str().cmp(name))
                .is_ok();
        if !fresh {
            self.names = subfolders(parent)?;
            self.parent = parent.to_path_buf();
            self.listed = Some(Instant::now());
        }
        let i = self.names.partition_point(|n| n.as_os_str() <= name);
        self.names.get(i).map(|n| parent.join(n))
    }
}

/// The names of `parent`'s subfolders, sorted; None for a folder too big to guess in.
fn subfolders(parent: &Path) -> Option<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(parent).ok()? {
        let entry = entry.ok()?;
        if names.len() == MAX_ENTRIES {
            return None;
        }
        // d_type: no stat per entry.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            names.push(entry.file_name());
        }
    }
    names.sort_unstable();
    Some(names)
}

/// Stats the entries of `folder` in inode order; returns what it found.
fn read_ahead(folder: &Path) -> HashMap<OsString, Metadata> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return HashMap::default();
    };
    let mut found = Vec::new();
    for entry in entries {
        let Ok(entry) = entry else {
            return HashMap::default();
        };
        if found.len() == MAX_ENTRIES {
            return HashMap::default();
        }
        found.push((entry.ino(), entry));
    }
    found.sort_unstable_by_key(|(ino, _)| *ino);
    // DirEntry::metadata is an fstatat relative to the open folder: no path walk per entry.
    found
        .into_iter()
        .filter_map(|(_, entry)| Some((entry.file_name(), entry.metadata().ok()?)))
        .collect()
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

    /// A folder alone in a parent of its own: two folders of one parent, looked up one after
    /// the other, would be a walk, and the next sibling would be read too.
    struct Folder {
        _parent: tempfile::TempDir,
        path: PathBuf,
    }

    impl Folder {
        fn path(&self) -> &Path {
            &self.path
        }
    }

    fn folder_with(n: usize) -> Folder {
        let parent = tempfile::tempdir().unwrap();
        let path = parent.path().join("folder");
        std::fs::create_dir(&path).unwrap();
        for i in 0..n {
            std::fs::write(path.join(format!("f{i:05}")), b"x").unwrap();
        }
        Folder {
            _parent: parent,
            path,
        }
    }

    #[test]
    fn a_folder_is_read_ahead_once_after_two_lookups() {
        let ahead = StatAhead::start(Vec::new());
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
    fn attributes_read_ahead_serve_one_lookup_each_until_the_mount_changes_something() {
        let ahead = StatAhead::start(Vec::new());
        let dir = folder_with(4);
        std::fs::write(dir.path().join("f00003"), b"four").unwrap();
        look(&ahead, dir.path(), TRIGGER_LOOKUPS);
        wait_for("the read-ahead", || {
            ahead.counters().folders.load(Ordering::Relaxed) == 1
        });
        let served = ahead.take(&dir.path().join("f00003")).expect("read ahead");
        assert_eq!(served.len(), 4);
        assert!(
            ahead.take(&dir.path().join("f00003")).is_none(),
            "taken: serves one lookup"
        );
        assert!(ahead.take(&dir.path().join("missing")).is_none());
        assert!(
            ahead
                .take(&dir.path().with_file_name("other/f00001"))
                .is_none()
        );
        {
            let _changing = ahead.changing();
            assert!(
                ahead.take(&dir.path().join("f00001")).is_some(),
                "counted once the change is made"
            );
        }
        assert!(
            ahead.take(&dir.path().join("f00002")).is_none(),
            "read before a change"
        );
        assert_eq!(ahead.counters().served.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_folder_over_the_limit_is_not_read_ahead() {
        let ahead = StatAhead::start(Vec::new());
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
        let ahead = StatAhead::start(Vec::new());
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

    fn tree_of(folders: &[&str], files: usize) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in folders {
            std::fs::create_dir(dir.path().join(f)).unwrap();
            for i in 0..files {
                std::fs::write(dir.path().join(f).join(format!("f{i}")), b"x").unwrap();
            }
        }
        dir
    }

    fn look(ahead: &StatAhead, folder: &Path, times: u32) {
        for _ in 0..times {
            ahead.found_in(folder);
        }
    }

    #[test]
    fn a_walk_through_sibling_folders_in_name_order_reads_the_next_one_before_it_is_reached() {
        let ahead = StatAhead::start(Vec::new());
        // Made out of name order: the guess follows names, not creation or inode order.
        let tree = tree_of(&["d3", "d1", "d0", "d2"], 5);
        let at = |f: &str| tree.path().join(f);
        let folders = || ahead.counters().folders.load(Ordering::Relaxed);
        look(&ahead, &at("d0"), TRIGGER_LOOKUPS);
        // Entering its second folder is the parent's second lookup.
        look(&ahead, tree.path(), TRIGGER_LOOKUPS);
        wait_for("d0 and the parent", || folders() == 2);
        look(&ahead, &at("d1"), TRIGGER_LOOKUPS);
        // d1 after d0: a walk, so d2 is read with d1, before any lookup in it.
        wait_for("d1 and the guess d2", || folders() == 4);
        assert_eq!(
            ahead.counters().entries.load(Ordering::Relaxed),
            5 + 4 + 5 + 5
        );
        // The first lookup in the guessed folder carries the walk on, and d2 is not read again.
        look(&ahead, &at("d2"), 1);
        wait_for("the guess d3", || folders() == 5);
        look(&ahead, &at("d2"), 5);
        // The last folder has no next; one thread, in order: a later folder's read proves
        // that nothing else was queued before it.
        look(&ahead, &at("d3"), 5);
        let other = folder_with(2);
        look(&ahead, other.path(), TRIGGER_LOOKUPS);
        wait_for("the other folder", || folders() == 6);
        assert_eq!(
            ahead.counters().entries.load(Ordering::Relaxed),
            4 * 5 + 4 + 2
        );
    }

    #[test]
    fn a_walk_backwards_or_towards_a_skipped_folder_guesses_nothing() {
        let tree = tree_of(&["a", "b", "c", "skipped"], 3);
        let at = |f: &str| tree.path().join(f);
        let ahead = StatAhead::start(vec![at("skipped")]);
        let folders = || ahead.counters().folders.load(Ordering::Relaxed);
        look(&ahead, &at("b"), TRIGGER_LOOKUPS);
        look(&ahead, &at("a"), TRIGGER_LOOKUPS);
        wait_for("b and a", || folders() == 2);
        // c after a is a walk, but its next is the one never guessed.
        look(&ahead, &at("c"), TRIGGER_LOOKUPS);
        let other = folder_with(2);
        look(&ahead, other.path(), TRIGGER_LOOKUPS);
        wait_for("c and the other folder", || folders() == 4);
        assert_eq!(ahead.counters().entries.load(Ordering::Relaxed), 11);
    }
}
