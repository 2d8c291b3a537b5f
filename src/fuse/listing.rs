//! Which entries of a folder's first READDIRPLUS get attributes.
//!
//! The kernel asks for the first batch of every folder with attributes (a guess: it cannot
//! know whether the reader will stat what it lists), and each entry answered so costs a
//! backing `statx`, cold after a cache drop. `find` and `ls` without `-l` stat nothing and paid
//! for some 200 entries per folder; `du`, `ls -l` and `rsync` stat everything, and for them
//! each entry left out becomes a LOOKUP round trip of its own.
//!
//! So the answer follows the reader (the process that sent the request) and the folder. A
//! reader not known to stat what it lists gets attributes for folders (every walk descends into
//! them) and, in a folder of at most [`SMALL_FOLDER`] other entries (the common case), for
//! those too: a wrong guess costs few stats there, and one request serves `ls -l`. In a bigger
//! folder its files come as names only: attributes for a few of them would save a stater few of
//! its round trips and cost `find` a cold `statx` each (measured: 32 per folder were two fifths
//! of a cold `find`'s time). Once it looks up a non-folder name of a folder it was given names
//! only for, it is known to stat what it lists, and its next first batches come with every
//! attribute, as before. Only then do the entries it is given count as lookups for stat-ahead:
//! a folder read ahead for `find` was wasted, and kept the folder from being read ahead again
//! for the `ls -l` after it. The kernel itself asks for later batches with attributes once
//! names of a folder are being looked up, and stat-ahead warms the folder for those lookups.
//!
//! Only a few readers are remembered, each for [`FORGET_AFTER`]: a process id can be reused,
//! and memory must not grow with the number of processes.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A folder with at most this many non-folder entries is listed with every attribute even
/// to a reader not known to stat what it lists.
pub const SMALL_FOLDER: usize = 32;
/// Readers remembered at once; the least recently seen is forgotten first.
const READERS: usize = 16;
/// A reader not seen for this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(10);

/// Whether the non-folder entries of a folder's first batch get attributes, for a reader
/// that `stats` what it lists or is not known to, in a folder of `files()` non-folder entries
/// (counted only for the latter, and only up to past [`SMALL_FOLDER`]).
pub fn files_get_attrs(stats: bool, files: impl FnOnce() -> usize) -> bool {
    stats || files() <= SMALL_FOLDER
}

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
    /// `pid` was seen to stat what it lists.
    pub fn stats_listings(&self, pid: u32) -> bool {
        let mut readers = self.lock();
        Self::find(&mut readers, pid, Instant::now()).is_some_and(|r| r.stats_listings)
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
        assert!(!habits.stats_listings(7));
        habits.listed_names_only(7, 100);
        habits.looked_up(7, 100, true); // descending into a folder says nothing
        habits.looked_up(7, 99, false); // another folder's names say nothing either
        assert!(!habits.stats_listings(7));
        habits.looked_up(7, 100, false);
        assert!(habits.stats_listings(7));
        assert!(!habits.stats_listings(8), "another reader");
    }

    #[test]
    fn only_a_big_folder_is_listed_as_names_to_an_unknown_reader() {
        assert!(files_get_attrs(false, || 0));
        assert!(files_get_attrs(false, || SMALL_FOLDER));
        assert!(!files_get_attrs(false, || SMALL_FOLDER + 1));
        assert!(files_get_attrs(true, || unreachable!()));
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
        assert!(habits.stats_listings(7));
    }

    #[test]
    fn only_a_few_readers_are_remembered() {
        let habits = ListingHabits::default();
        for pid in 0..100 {
            habits.listed_names_only(pid, 1);
            habits.looked_up(pid, 1, false);
        }
        assert_eq!(habits.lock().len(), READERS);
        assert!(habits.stats_listings(99), "the latest is kept");
        assert!(!habits.stats_listings(0), "the first is gone");
    }
}
