//! The replication engine: S3 replication rules applied by a background thread.
//!
//! Filesystem calls never wait on it. Publishing a version (or changing a replicated
//! version's metadata) records PENDING states in the version's metadata and a queue entry,
//! both durable with the version; the engine then copies versions and metadata into the
//! destination buckets through their own atomic publishing, and records COMPLETED/FAILED.
//! Everything it does is idempotent by version id, so a crash at any point is repaired by
//! doing it again.

pub mod commands;
pub mod policy;
mod pool;
pub mod stats;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::bucket::{
    Bucket, BucketError, COMPLETED, Durability, FAILED, ObjectKey, PENDING, ReplicationPolicy,
    VersionMeta,
};
use crate::config::ReplicationConfig;
use crate::panic_guard::guarded_round;
use policy::Rules;
use stats::Stats;

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The destination cannot take it now (disk away, full, read-only, I/O error): retried.
    #[error("destination {dest} unavailable: {reason}")]
    Transient { dest: String, reason: String },
    /// It can never succeed as configured (e.g. retention into a bucket without Object Lock).
    #[error("cannot replicate to {dest}: {reason}")]
    Permanent { dest: String, reason: String },
    #[error(transparent)]
    Bucket(#[from] BucketError),
}

/// First retry delay of an unavailable destination; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The queue is also read at this interval: work queued by another process (e.g.
/// `bucketfs replicate`) is picked up even without a wake-up.
const POLL: Duration = Duration::from_secs(2);

pub struct Engine {
    source: Arc<Bucket>,
    rules: Rules,
    destinations: Mutex<HashMap<String, Arc<Bucket>>>,
    backoff: Mutex<HashMap<String, (Instant, Duration)>>,
    stats: Mutex<Stats>,
    wake_tx: Sender<()>,
    wake_rx: Receiver<()>,
    stop: AtomicBool,
}

/// The engine's view the bucket store consults when versions are published.
struct Policy {
    rules: Rules,
    wake: Sender<()>,
}

impl ReplicationPolicy for Policy {
    fn destinations(&self, meta: &VersionMeta) -> Vec<String> {
        if meta.replica_of.is_some() {
            self.rules
                .destinations_of_replica_change(meta, policy::stored_config)
        } else {
            self.rules.destinations_of_version(meta)
        }
    }

    fn wake(&self) {
        let _ = self.wake.try_send(());
    }
}

impl Engine {
    /// Puts `config` in force for `source` (stored in the bucket, as S3 keeps it on the
    /// bucket) and returns the engine; versions published from now on are replicated.
    pub fn new(
        source: Arc<Bucket>,
        config: ReplicationConfig,
        text: &str,
    ) -> Result<Arc<Self>, BucketError> {
        source.store_replication_config(Some(text))?;
        let rules = Rules {
            config,
            bucket: source.name(),
            settings: source.settings().clone(),
        };
        let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
        source.set_replication_policy(Some(Arc::new(Policy {
            rules: rules.clone(),
            wake: wake_tx.clone(),
        })));
        let stats = Stats::load(&source.stats_path());
        Ok(Arc::new(Engine {
            source,
            rules,
            destinations: Mutex::default(),
            backoff: Mutex::default(),
            stats: Mutex::new(stats),
            wake_tx,
            wake_rx,
            stop: AtomicBool::new(false),
        }))
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Runs the engine on its own thread until the returned handle is dropped.
    pub fn start(self: &Arc<Self>) -> Worker {
        for dest in self.rules.config.destinations() {
            let dir = self.rules.config.destination_dir(dest);
            if !is_bucket(&dir) {
                log::warn!(
                    "replication destination {dest} ({}) is not available now; its work waits as PENDING",
                    dir.display()
                );
            }
        }
        let engine = Arc::clone(self);
        let thread = std::thread::Builder::new()
            .name("replication".into())
            .spawn(move || engine.run())
            .expect("spawning the replication thread");
        Worker {
            engine: Arc::clone(self),
            thread: Some(thread),
        }
    }

    fn run(&self) {
        if self.source.recovered_crash() {
            self.rescan();
        }
        while !self.stop.load(Ordering::Acquire) {
            // A panic outside a job (jobs have their own guard, pool::run) ends this pass
            // only: the queue is on disk, and the next pass starts from it.
            let wait = match guarded_round("replication", || self.run_once()) {
                Some(Ok(0)) | None => POLL,
                Some(Ok(_)) => self.next_retry().unwrap_or(POLL).min(POLL),
                Some(Err(e)) => {
                    log::error!("replication: {e}");
                    POLL
                }
            };
            let _ = self.wake_rx.recv_timeout(wait);
        }
    }

    /// After a crash: walks the version tree and re-queues every version whose metadata says
    /// PENDING but whose queue entry did not reach the disk. Streaming: memory stays flat.
    fn rescan(&self) {
        let mut requeued = 0usize;
        for entry in walkdir::WalkDir::new(self.source.versions_root())
            .into_iter()
            .filter_map(Result::ok)
        {
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            let name = entry.file_name().to_string_lossy();
            if !(entry.file_type().is_file() && name.starts_with('@') && name.ends_with(".json")) {
                continue;
            }
            let Ok(bytes) = std::fs::read(entry.path()) else {
                continue;
            };
            let Ok(meta) = serde_json::from_slice::<VersionMeta>(&bytes) else {
                continue;
            };
            if self.source.ensure_queued(&meta).unwrap_or(false) {
                requeued += 1;
            }
        }
        log::info!("replication: rescan after a crash re-queued {requeued} versions");
    }

    /// Processes every queued version whose destinations are not backing off, on the worker
    /// pool. Returns how many destination-versions are still waiting.
    pub fn run_once(&self) -> Result<usize, BucketError> {
        let queue = self.source.queue()?;
        let waiting = AtomicUsize::new(0);
        let workers = pool::WORKERS.min(queue.len());
        pool::run(
            workers,
            queue,
            |(_, entry)| pool::shard(&entry.key),
            |(path, entry)| -> Result<(), BucketError> {
                if self.stop.load(Ordering::Acquire) {
                    return Ok(());
                }
                let key = ObjectKey::new(entry.key.clone())?;
                let meta = match self.source.meta(&key, &entry.version_id) {
                    Ok(m) => m,
                    // Being published right now, never committed, or deleted for good since.
                    Err(BucketError::NoSuchVersion { .. }) => {
                        match self
                            .source
                            .dequeue_if_uncommitted(&path, &key, &entry.version_id)?
                        {
                            Some(m) => m,
                            None => return Ok(()),
                        }
                    }
                    Err(e) => return Err(e),
                };
                let dests = meta.pending_destinations();
                let n = self.replicate_version(&key, &meta, &dests, Some(&path))?;
                waiting.fetch_add(n, Ordering::Relaxed);
                Ok(())
            },
        )?;
        self.save_stats();
        Ok(waiting.into_inner())
    }

    fn save_stats(&self) {
        let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
        stats.save(&self.source.stats_path());
    }

    /// Replicates one version to `dests` and records the outcome on the source in one
    /// metadata write (see [`Bucket::record_outcomes`]; `entry` is its queue entry, if it has
    /// one). Returns how many destinations are waiting (unavailable: retried later).
    fn replicate_version(
        &self,
        key: &ObjectKey,
        meta: &VersionMeta,
        dests: &[String],
        entry: Option<&Path>,
    ) -> Result<usize, BucketError> {
        let mut outcomes: Vec<(String, &str)> = Vec::with_capacity(dests.len());
        let mut completed = Vec::new();
        let mut waiting = 0;
        for dest in dests {
            if self.backing_off(dest) {
                waiting += 1;
                outcomes.push((dest.clone(), PENDING));
                continue;
            }
            match self.replicate(dest, meta) {
                Ok(bytes) => {
                    self.clear_backoff(dest);
                    outcomes.push((dest.clone(), COMPLETED));
                    completed.push((dest, bytes));
                }
                Err(ReplicationError::Transient { dest, reason }) => {
                    self.back_off(&dest, &reason);
                    waiting += 1;
                    outcomes.push((dest, PENDING));
                }
                Err(ReplicationError::Permanent { dest, reason }) => {
                    log::error!(
                        "replication of {key} version {} to {dest} FAILED: {reason}",
                        meta.version_id
                    );
                    self.stats
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .failed(&dest);
                    outcomes.push((dest, FAILED));
                }
                Err(ReplicationError::Bucket(e)) => return Err(e),
            }
        }
        self.source
            .record_outcomes(key, &meta.version_id, &meta.field_times, &outcomes, entry)?;
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        for (dest, bytes) in completed {
            stats.completed(dest, meta.last_modified_ns, bytes);
        }
        Ok(waiting)
    }

    /// Replicates a batch (`bucketfs replicate`) straight from a scan, on the worker pool,
    /// without queueing each version first: a version's state before the batch (never
    /// replicated, or FAILED) is what marks it as still to do, so a batch cut short is finished
    /// by running it again, and replicas are keyed by version id, so nothing arrives twice.
    /// Only work that must wait for an unavailable destination is queued (PENDING), for
    /// [`Engine::drain`] and the mount. `jobs` yields each version with its destinations.
    pub fn replicate_batch(
        &self,
        jobs: impl Iterator<Item = Result<(VersionMeta, Vec<String>), String>>,
        progress: &BatchProgress,
    ) -> Result<(), String> {
        pool::run(
            pool::WORKERS,
            jobs,
            |job| job.as_ref().map_or(0, |(meta, _)| pool::shard(&meta.key)),
            |job| -> Result<(), String> {
                let (meta, dests) = job?;
                if self.stop.load(Ordering::Acquire) {
                    return Ok(());
                }
                let key = ObjectKey::new(meta.key.clone()).map_err(|e| e.to_string())?;
                let waiting = self
                    .replicate_version(&key, &meta, &dests, None)
                    .map_err(|e| e.to_string())?;
                let counter = if waiting > 0 {
                    &progress.deferred
                } else {
                    &progress.done
                };
                counter.fetch_add(1, Ordering::Relaxed);
                Ok(())
            },
        )?;
        self.save_stats();
        Ok(())
    }

    /// Copies one version (or, if the destination has it, its metadata) into `dest`.
    /// Returns the bytes copied.
    fn replicate(&self, dest: &str, meta: &VersionMeta) -> Result<u64, ReplicationError> {
        // Tests make the copy of one key panic (tests/faults.rs).
        #[cfg(feature = "failpoints")]
        if fail::eval("replication::replicate", |key| key)
            .flatten()
            .is_some_and(|panic_on| meta.key == panic_on)
        {
            panic!("fail point replication::replicate: {}", meta.key);
        }
        let target = self.destination(dest)?;
        let key = ObjectKey::new(meta.key.clone())?;
        let classify = |e: BucketError| classify(dest, e);
        if target.has_version(&key, &meta.version_id) {
            target.import_meta(meta).map_err(classify)?;
            return Ok(0);
        }
        if meta.replica_of.is_some() {
            return Ok(0);
        }
        let bytes = if meta.delete_marker { 0 } else { meta.size };
        let data = if meta.symlink_target.is_none() && meta.special.is_none() && !meta.delete_marker
        {
            match self.source.open_version_bytes(&key, &meta.version_id) {
                Ok(f) => Some(f),
                // Deleted for good since it was read (recording then finds it gone).
                Err(e @ BucketError::NoSuchVersion { .. }) => {
                    return Err(ReplicationError::Permanent {
                        dest: dest.to_string(),
                        reason: e.to_string(),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            None
        };
        target
            .import_version(meta, &self.rules.bucket, data.as_ref())
            .map_err(classify)?;
        log::debug!("replicated {key} version {} to {dest}", meta.version_id);
        Ok(bytes)
    }

    /// Opens (once) the destination bucket; a missing one is a transient condition: a
    /// network disk may not be attached yet.
    fn destination(&self, name: &str) -> Result<Arc<Bucket>, ReplicationError> {
        let mut open = self.destinations.lock().unwrap_or_else(|e| e.into_inner());
        let dir = self.rules.config.destination_dir(name);
        if let Some(b) = open.get(name) {
            if is_bucket(&dir) {
                return Ok(Arc::clone(b));
            }
            open.remove(name); // the disk went away under us
        }
        if !is_bucket(&dir) {
            return Err(ReplicationError::Transient {
                dest: name.to_string(),
                reason: format!("{} is not an available bucket", dir.display()),
            });
        }
        let bucket = Bucket::open(&dir, self.source.durability()).map_err(|e| classify(name, e))?;
        let bucket = Arc::new(bucket);
        open.insert(name.to_string(), Arc::clone(&bucket));
        Ok(bucket)
    }

    fn backing_off(&self, dest: &str) -> bool {
        self.backoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(dest)
            .is_some_and(|(until, _)| Instant::now() < *until)
    }

    fn back_off(&self, dest: &str, reason: &str) {
        let mut b = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        let delay = b
            .get(dest)
            .map_or(FIRST_BACKOFF, |(_, d)| (*d * 2).min(MAX_BACKOFF));
        log::warn!("replication to {dest} waits {delay:?} and retries: {reason}");
        b.insert(dest.to_string(), (Instant::now() + delay, delay));
    }

    fn clear_backoff(&self, dest: &str) {
        self.backoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(dest);
    }

    fn next_retry(&self) -> Option<Duration> {
        let now = Instant::now();
        self.backoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|(until, _)| until.saturating_duration_since(now))
            .min()
    }

    /// Runs until nothing is left that can be done now (for `bucketfs replicate`), calling
    /// `progress(done, waiting)` after each pass.
    pub fn drain(
        &self,
        deadline: Instant,
        mut progress: impl FnMut(usize),
    ) -> Result<usize, BucketError> {
        loop {
            let waiting = self.run_once()?;
            progress(waiting);
            if waiting == 0 || Instant::now() >= deadline {
                return Ok(waiting);
            }
            std::thread::sleep(self.next_retry().unwrap_or(FIRST_BACKOFF).min(POLL));
        }
    }
}

/// Counters a batch updates as it goes, for the progress bar.
#[derive(Debug, Default)]
pub struct BatchProgress {
    /// Versions the scan found and handed to the workers.
    pub found: AtomicUsize,
    /// Versions with nothing left to do (replicated, or FAILED for good).
    pub done: AtomicUsize,
    /// Versions left PENDING (queued) for an unavailable destination.
    pub deferred: AtomicUsize,
}

/// Stops the engine's thread when dropped (the queue is durable: nothing is lost).
pub struct Worker {
    engine: Arc<Engine>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.engine.stop.store(true, Ordering::Release);
        let _ = self.engine.wake_tx.try_send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.engine.source.set_replication_policy(None);
    }
}

fn is_bucket(dir: &Path) -> bool {
    dir.join(crate::bucket::key::META_DIR)
        .join("format")
        .is_file()
}

/// Disk trouble at the destination is transient (S3 keeps such work PENDING); a destination
/// that can never hold the version (no Object Lock for a locked version) is permanent.
fn classify(dest: &str, e: BucketError) -> ReplicationError {
    match e {
        BucketError::ObjectLockNotEnabled(_) => ReplicationError::Permanent {
            dest: dest.to_string(),
            reason:
                "the version has Object Lock settings but the destination bucket has no Object Lock"
                    .into(),
        },
        BucketError::Io { .. } | BucketError::NotABucket { .. } => ReplicationError::Transient {
            dest: dest.to_string(),
            reason: e.to_string(),
        },
        other => ReplicationError::Permanent {
            dest: dest.to_string(),
            reason: other.to_string(),
        },
    }
}

/// A bucket opened by `bucketfs replicate` / `status`, with the configuration in force in it.
pub struct CommandBucket {
    pub bucket: Arc<Bucket>,
    /// The configuration and its text, if one is in force.
    pub config: Option<(ReplicationConfig, String)>,
}

/// Opens `dir` for replication commands run outside (or beside) a mount.
pub fn open_for_commands(dir: &Path) -> Result<CommandBucket, String> {
    let bucket = Bucket::open(dir, Durability::GroupCommit).map_err(|e| e.to_string())?;
    let config = match bucket.stored_replication_config() {
        Some(text) => {
            let label = bucket.stored_config_path().display().to_string();
            let parsed = crate::config::parse_str(&text, &label, dir).map_err(|e| e.to_string())?;
            Some((parsed, text))
        }
        None => None,
    };
    Ok(CommandBucket {
        bucket: Arc::new(bucket),
        config,
    })
}
