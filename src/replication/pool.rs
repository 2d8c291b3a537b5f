//! A small pool of copy workers for the replication engine. Jobs are sharded by key: every
//! version of one key goes to the same worker, in the order given, so two versions of a key
//! reach a replica in the order they were made while different keys copy in parallel.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Copy workers. Replication is mostly waiting on the disk (cold reads, writes, small
/// metadata files), so a few more threads than this machine's 2 cores keep it busy; each
/// worker's queue is short, so memory stays flat whatever the number of jobs.
pub const WORKERS: usize = 4;
const PER_WORKER_QUEUE: usize = 32;

/// Which worker a key's jobs go to.
pub fn shard(key: &str) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// Runs `work` over `jobs` on up to `workers` threads (on the calling thread alone if there
/// is only one worker's worth: a single live version is not worth spawning threads for).
/// `shard_of` keeps a key's jobs on one worker, in order. Stops taking jobs after the first
/// error, which is returned.
///
/// A job that panics (a bug) is logged and left for the next pass, with the later jobs of its
/// shard, so a key's versions still arrive in order; every other job goes on. Before, the
/// panic ended the pass and the replication thread with it, and nothing was replicated again
/// until a restart, which met the same job first.
pub fn run<J: Send, E: Send>(
    workers: usize,
    jobs: impl IntoIterator<Item = J>,
    shard_of: impl Fn(&J) -> u64,
    work: impl Fn(J) -> Result<(), E> + Sync,
) -> Result<(), E> {
    if workers <= 1 {
        let mut guarded = Guarded::new(&work);
        return jobs
            .into_iter()
            .try_for_each(|job| guarded.run(shard_of(&job), job));
    }
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<E>> = Mutex::new(None);
    std::thread::scope(|scope| {
        let mut senders = Vec::with_capacity(workers);
        for i in 0..workers {
            let (tx, rx) = crossbeam_channel::bounded::<(u64, J)>(PER_WORKER_QUEUE);
            senders.push(tx);
            let (work, failed, first_error) = (&work, &failed, &first_error);
            std::thread::Builder::new()
                .name(format!("replication-{i}"))
                .spawn_scoped(scope, move || {
                    let mut guarded = Guarded::new(work);
                    for (shard, job) in rx {
                        if failed.load(Ordering::Acquire) {
                            continue; // drain, so the feeder never blocks on a dead worker
                        }
                        if let Err(e) = guarded.run(shard, job) {
                            failed.store(true, Ordering::Release);
                            first_error
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get_or_insert(e);
                        }
                    }
                })
                .expect("spawning a replication worker");
        }
        for job in jobs {
            if failed.load(Ordering::Acquire) {
                break;
            }
            let shard = shard_of(&job);
            let i = (shard % workers as u64) as usize;
            if senders[i].send((shard, job)).is_err() {
                break;
            }
        }
        drop(senders);
    });
    match first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// One worker's jobs, each run under a panic guard; remembers the shards whose job panicked
/// in this pass, to skip their later jobs.
struct Guarded<'w, W> {
    work: &'w W,
    panicked: Vec<u64>,
}

impl<'w, W> Guarded<'w, W> {
    fn new(work: &'w W) -> Self {
        Guarded {
            work,
            panicked: Vec::new(),
        }
    }

    fn run<J, E>(&mut self, shard: u64, job: J) -> Result<(), E>
    where
        W: Fn(J) -> Result<(), E>,
    {
        if self.panicked.contains(&shard) {
            return Ok(());
        }
        let work = self.work;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(job))).unwrap_or_else(|_| {
            log::error!(
                "replication: a job panicked (a bug; the panic message is above); it and the \
                 later jobs of its key stay queued for the next pass"
            );
            self.panicked.push(shard);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Jobs of one shard run in the order given, whatever the number of workers.
    #[test]
    fn jobs_of_one_key_keep_their_order() {
        let seen = Mutex::new(Vec::new());
        let jobs: Vec<(String, usize)> = (0..400).map(|i| (format!("k{}", i % 7), i)).collect();
        run(
            4,
            jobs,
            |(k, _)| shard(k),
            |(k, i)| -> Result<(), ()> {
                seen.lock().unwrap().push((k, i));
                Ok(())
            },
        )
        .unwrap();
        let seen = seen.into_inner().unwrap();
        assert_eq!(seen.len(), 400);
        for k in 0..7 {
            let order: Vec<usize> = seen
                .iter()
                .filter(|(key, _)| *key == format!("k{k}"))
                .map(|(_, i)| *i)
                .collect();
            assert!(order.windows(2).all(|w| w[0] < w[1]), "k{k}: {order:?}");
        }
    }

    /// A job that panics is skipped with the later jobs of its key, on one worker or four;
    /// every other job runs, and the run succeeds.
    #[test]
    fn a_panicking_job_holds_back_its_key_only() {
        for workers in [1, 4] {
            let seen = Mutex::new(Vec::new());
            let jobs: Vec<(String, usize)> = (0..70).map(|i| (format!("k{}", i % 7), i)).collect();
            let r: Result<(), ()> = run(
                workers,
                jobs,
                |(k, _)| shard(k),
                |(k, i)| {
                    assert!(i != 3, "a bug in the job of k3 at 3");
                    seen.lock().unwrap().push((k, i));
                    Ok(())
                },
            );
            assert_eq!(r, Ok(()));
            let seen = seen.into_inner().unwrap();
            assert!(seen.iter().all(|(k, _)| k != "k3"), "{workers}: {seen:?}");
            assert_eq!(seen.len(), 60, "{workers}");
        }
    }

    #[test]
    fn the_first_error_stops_the_run_and_is_returned() {
        let r = run(
            3,
            0..1000,
            |i| *i as u64,
            |i| if i == 10 { Err(i) } else { Ok(()) },
        );
        assert_eq!(r, Err(10));
    }
}
