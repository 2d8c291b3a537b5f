//! Which entries of a folder's first READDIRPLUS get attributes.
//!
//! The kernel asks for the first batch of every folder with attributes (a guess: it cannot
//! know whether the reader will stat what it lists), and each entry answered so costs a
//! backing `statx`, cold after a cache drop. `find` and `ls` without `-l` stat nothing and paid
//! for some 200 entries per folder; `du`, `ls -l` and `rsync` stat everything, and for them
//! each entry left out becomes a LOOKUP round trip of its own.
//!
//! So the answer follows the reader (the process that sent the request). A reader not known
//! to stat what it lists gets attributes for folders (every walk descends into them) and for
//! the first [`FILES_WITH_ATTRS`] other entries, which covers small folders, the common case,
//! in one request; the rest of the batch comes as names only. Once it looks up a non-folder
//! name of a folder it was given names only for, it is known to stat what it lists, and its
//! next first batches come with every attribute, as before. Only then do the entries it is
//! given count as lookups for stat-ahead: a folder read ahead for `find` was wasted, and kept
//! the folder from being read ahead again for the `ls -l` after it. The kernel itself asks
//! for later batches with attributes once names of a folder are being looked up, and
//! stat-ahead warms the folder for those lookups.
//!
//! Only a few readers are remembered, each for [`FORGET_AFTER`]: a process id can be reused,
//! and memory must not grow with the number of processes.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Non-folder entries answered with attributes in the first batch for a reader not known
/// to stat what it lists.
pub const FILES_WITH_ATTRS: usize = 32;
/// Readers remembered at once; the least recently seen is forgotten first.
const READERS: usize = 16;
/// A reader not seen for this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Reader {
    pid: u32,
    seen: Instant,
    stats_listings: bool,
    /// The last folder this reader was given names without attributes for.
    names_only_in: Option<u64>,
}

#[derive(Debug, Default)]
pub struct ListingHabits {
    readers: Mutex<VecDeque<Reader>>,
    /// Some reader was given names only and is not known to stat yet: only then can a
    /// lookup tell anything, so every other LOOKUP (a cold `stat`) skips the lock.
    watching: AtomicBool,
}

impl ListingHabits {
    /// How many non-folder entries of a first batch `pid` gets with attributes.
    pub fn files_with_attrs(&self, pid: u32) -> usize {
        let mut readers = self.lock();
        match Self::find(&mut readers, pid, Instant::now()) {
            Some(r) if r.stats_listings => usize::MAX,
            _ => FILES_WITH_ATTRS,
        }
    }

    /// `pid` was given names without attributes in folder `dir`.
    pub fn listed_names_only(&self, pid: u32, dir: u64) {
        let now = Instant::now();
        let mut readers = self.lock();
        if let Some(r) = Self::find(&mut readers, pid, now) {
            r.names_only_in = Some(dir);
        } else {
            if readers.len() == READERS {
                readers.pop_back();
            }
            readers.push_front(Reader {
                pid,
                seen: now,
                stats_listings: false,
                names_only_in: Some(dir),
            });
        }
        self.watch(&readers);
    }

    /// `pid` looked up a name in folder `dir` (`is_dir`: the name is a folder).
    pub fn looked_up(&self, pid: u32, dir: u64, is_dir: bool) {
        // A walk descending says nothing about stats.
        if is_dir || !self.watching.load(Ordering::Relaxed) {
            return;
        }
        let mut readers = self.lock();
        if let Some(r) = Self::find(&mut readers, pid, Instant::now())
            && r.names_only_in == Some(dir)
            && !r.stats_listings
        {
            log::debug!("process {pid} stats what it lists: its listings get every attribute");
            r.stats_listings = true;
        }
        self.watch(&readers);
    }

    fn watch(&self, readers: &VecDeque<Reader>) {
        let watching = readers
            .iter()
            .any(|r| r.names_only_in.is_some() && !r.stats_listings);
        self.watching.store(watching, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Reader>> {
        self.readers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The reader `pid`, moved to the front and marked seen, unless forgotten.
    fn find(readers: &mut VecDeque<Reader>, pid: u32, now: Instant) -> Option<&mut Reader> {
        readers.retain(|r| now.duration_since(r.seen) < FORGET_AFTER);
        let at = readers.iter().position(|r| r.pid == pid)?;
        let mut reader = readers.remove(at)?;
        reader.seen = now;
        readers.push_front(reader);
        readers.front_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_that_stats_what_it_lists_gets_every_attribute() {
        let habits = ListingHabits::default();
        assert_eq!(habits.files_with_attrs(7), FILES_WITH_ATTRS);
        habits.listed_names_only(7, 100);
        habits.looked_up(7, 100, true); // descending into a folder says nothing
        habits.looked_up(7, 99, false); // another folder's names say nothing either
        assert_eq!(habits.files_with_attrs(7), FILES_WITH_ATTRS);
        habits.looked_up(7, 100, false);
        assert_eq!(habits.files_with_attrs(7), usize::MAX);
        assert_eq!(
            habits.files_with_attrs(8),
            FILES_WITH_ATTRS,
            "another reader"
        );
    }

    #[test]
    fn lookups_take_the_lock_only_while_a_reader_given_names_only_is_unknown() {
        let habits = ListingHabits::default();
        assert!(
            !habits.watching.load(Ordering::Relaxed),
            "nobody listed yet"
        );
        habits.listed_names_only(7, 100);
        assert!(habits.watching.load(Ordering::Relaxed));
        habits.looked_up(7, 100, false);
        assert!(!habits.watching.load(Ordering::Relaxed), "7 is known now");
        assert_eq!(habits.files_with_attrs(7), usize::MAX);
    }

    #[test]
    fn only_a_few_readers_are_remembered() {
        let habits = ListingHabits::default();
        for pid in 0..100 {
            habits.listed_names_only(pid, 1);
            habits.looked_up(pid, 1, false);
        }
        assert_eq!(habits.lock().len(), READERS);
        assert_eq!(
            habits.files_with_attrs(99),
            usize::MAX,
            "the latest is kept"
        );
        assert_eq!(
            habits.files_with_attrs(0),
            FILES_WITH_ATTRS,
            "the first is gone"
        );
    }
}
