//! Staging files made ahead of time.
//!
//! Creating an inode is the dearest step of a small-file create (on ext4 without a journal it
//! also searches past every inode freed in the last 30 s). A mounted bucket keeps a few empty
//! staging files ready, made by a background thread, so that `create()` only takes one: the
//! inode allocation happens on another core, off the caller's path. Unused ones are private to
//! the session and go with it.
//!
//! Creating a file holds its folder's lock for the whole inode allocation, and a publish's
//! rename out of the folder needs that lock too: the stager refills the pool into one of two
//! folders of its own, alternating, while creates take the oldest files, which are in the
//! other one.

use std::collections::VecDeque;
use std::fs::{File, FileTimes, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use super::{Bucket, Result, Staged};
use crate::bucket::error::IoContext;
use crate::panic_guard::guarded_round;

/// How many staging files are kept ready, and below how many the stager is woken.
const POOL_TARGET: usize = 64;
const POOL_LOW: usize = 32;

#[derive(Debug, Default)]
pub(super) struct StagePool {
    /// Oldest first.
    ready: Mutex<VecDeque<Staged>>,
    stager: OnceLock<std::thread::Thread>,
}

impl StagePool {
    fn take(&self) -> Option<Staged> {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        let staged = ready.pop_front()?;
        if ready.len() < POOL_LOW
            && let Some(t) = self.stager.get()
        {
            t.unpark();
        }
        Some(staged)
    }
}

impl Bucket {
    /// A new empty file for the bytes of a future version.
    pub fn stage_empty(&self) -> Result<Staged> {
        if let Some(staged) = self.stage_pool.take() {
            // Made a while ago: its times must be those of this create.
            let now = SystemTime::now();
            staged
                .file
                .set_times(FileTimes::new().set_accessed(now).set_modified(now))
                .ctx(|| format!("setting times of {}", staged.path.display()))?;
            return Ok(staged);
        }
        self.new_staging_file()
    }

    /// An empty staging file whose times and mode the caller sets (a copy's): one from the
    /// pool as it is.
    pub(super) fn stage_for_copy(&self) -> Result<Staged> {
        match self.stage_pool.take() {
            Some(staged) => Ok(staged),
            None => self.new_staging_file(),
        }
    }

    /// How many empty staging files are ready for creates.
    pub fn staging_files_ready(&self) -> usize {
        self.stage_pool
            .ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    fn new_staging_file(&self) -> Result<Staged> {
        self.new_staging_file_in(self.session.dir())
    }

    fn new_staging_file_in(&self, dir: &Path) -> Result<Staged> {
        let path = dir.join(super::session::stage_file_name(&self.new_version_id()));
        let file: File = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .ctx(|| format!("creating staging file {}", path.display()))?;
        Ok(Staged { path, file })
    }

    /// Starts the thread that keeps staging files ready; it stops when the guard is dropped.
    pub fn start_stager(self: &Arc<Self>) -> Stager {
        let stop = Arc::new(AtomicBool::new(false));
        let bucket = Arc::clone(self);
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("stager".into())
            .spawn(move || {
                // Only a round that made files moves on to the other folder, so a refill never
                // goes into the folder the last refill filled, where creates are taking from.
                let mut folder = 0;
                while !flag.load(Ordering::Acquire) {
                    let made = guarded_round("stager", || bucket.refill_stage_pool(folder));
                    if made.unwrap_or(0) > 0 {
                        folder ^= 1;
                    }
                    std::thread::park_timeout(Duration::from_secs(1));
                }
            })
            .expect("spawning the stager thread");
        let _ = self.stage_pool.stager.set(thread.thread().clone());
        Stager {
            stop,
            thread: Some(thread),
        }
    }

    /// Makes the staging files the pool misses in `pool-{folder}`; returns how many.
    fn refill_stage_pool(&self, folder: usize) -> usize {
        let dir = self.session.dir().join(format!("pool-{folder}"));
        if let Err(e) = std::fs::create_dir(&dir)
            && e.kind() != std::io::ErrorKind::AlreadyExists
        {
            log::warn!("could not make the staging folder {}: {e}", dir.display());
            return 0;
        }
        // What was missing when the round started, not what creates take meanwhile: those
        // are the next round's, in the other folder. Creates then take from the folder being
        // filled only once the other one has run dry.
        let missing = POOL_TARGET.saturating_sub(self.staging_files_ready());
        for made in 0..missing {
            match self.new_staging_file_in(&dir) {
                Ok(staged) => self
                    .stage_pool
                    .ready
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back(staged),
                Err(e) => {
                    // Creates then make their own file and report the error themselves.
                    log::warn!("could not prepare a staging file: {e}");
                    return made;
                }
            }
        }
        missing
    }
}

/// Stops the stager thread when dropped.
pub struct Stager {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Stager {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}
