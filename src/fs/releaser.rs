//! Writers' releases on a thread of their own. The kernel sends RELEASE after close() has
//! returned and ignores the answer; with FUSE over io_uring the request is served on the CPU
//! of the process that closed the file, so a publish done there takes that CPU from the
//! process's next calls while the others idle. Handed over, it runs beside them. (Answering
//! the RELEASE only once the publish is done, from a request thread that sleeps meanwhile,
//! kept nearly all of the cost: 186-194 us per created file against 193-203 before the
//! handover and 127-138 without the wait; bench/RESULTS.md.)

use std::sync::Weak;

use crossbeam_channel::{Receiver, Sender};

use super::BucketFs;
use crate::panic_guard::guarded_round;

/// Releases waiting for the thread; beyond this, a RELEASE waits for room (the process
/// closing files faster than they are published is slowed down, not the daemon's memory).
const QUEUED_RELEASES: usize = 256;

enum Job {
    Release(u64),
    /// Answered once every release queued before it is done.
    Drained(Sender<()>),
}

pub(super) struct Releaser {
    jobs: Sender<Job>,
}

impl Releaser {
    pub(super) fn start(fs: Weak<BucketFs>) -> std::io::Result<Releaser> {
        let (jobs, queue) = crossbeam_channel::bounded(QUEUED_RELEASES);
        std::thread::Builder::new()
            .name("releaser".into())
            .spawn(move || {
                run_anywhere();
                serve(&fs, queue);
            })?;
        Ok(Releaser { jobs })
    }

    /// Queues the release of handle `fh`; gives it back if the thread is gone.
    pub(super) fn release(&self, fh: u64) -> Result<(), u64> {
        self.jobs.send(Job::Release(fh)).map_err(|_| fh)
    }

    /// Returns once every release queued so far is done.
    pub(super) fn drain(&self) {
        let (done, finished) = crossbeam_channel::bounded(1);
        if self.jobs.send(Job::Drained(done)).is_ok() {
            let _ = finished.recv();
        }
    }
}

fn serve(fs: &Weak<BucketFs>, queue: Receiver<Job>) {
    for job in queue {
        match job {
            Job::Release(fh) => {
                let Some(fs) = fs.upgrade() else { return };
                if let Some(Err(e)) = guarded_round("releaser", || fs.release(fh)) {
                    log::error!("release of handle {fh}: {e}");
                }
            }
            Job::Drained(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// The thread is started by whichever request first needs it, and FUSE over io_uring pins
/// its request threads to one CPU each: this one takes the process's own CPUs instead.
fn run_anywhere() {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; both calls only read or write `set`
    // within its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let size = size_of::<libc::cpu_set_t>();
        if libc::sched_getaffinity(libc::getpid(), size, &mut set) == 0
            && libc::sched_setaffinity(0, size, &set) != 0
        {
            log::debug!("releaser: {}", std::io::Error::last_os_error());
        }
    }
}
