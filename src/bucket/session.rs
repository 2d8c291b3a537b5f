//! A session is one process's private corner of `.bucketfs/sessions/`: its staging files and
//! its journal. The process holds an flock on the session's `lock` file for its whole life, so
//! any other process can tell a dead session (lock free) from a live one and recover it.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::bucket::error::{BucketError, IoContext};
use crate::bucket::layout::Layout;

#[derive(Debug)]
pub struct Session {
    dir: PathBuf,
    _lock: File,
}

impl Session {
    pub fn start(layout: &Layout) -> Result<Self, BucketError> {
        // Built under a dot-name and renamed into place already locked, so no other process
        // ever sees a session folder without its held lock (it would take it for dead).
        let name = format!("{}-{}", std::process::id(), ulid::Ulid::new());
        let building = layout.sessions_dir.join(format!(".{name}"));
        fs::create_dir_all(building.join("journal"))
            .ctx(|| format!("creating {}", building.display()))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(building.join("lock"))
            .ctx(|| format!("creating {}/lock", building.display()))?;
        if !try_lock(&lock) {
            return Err(BucketError::Io {
                context: format!("locking new session {}", building.display()),
                source: std::io::Error::last_os_error(),
            });
        }
        let dir = layout.sessions_dir.join(name);
        fs::rename(&building, &dir).ctx(|| format!("creating {}", dir.display()))?;
        Ok(Session { dir, _lock: lock })
    }

    pub fn stage_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.stage"))
    }

    pub fn journal_path(&self, version_id: &str, kind: &str) -> PathBuf {
        self.dir
            .join("journal")
            .join(format!("{version_id}.{kind}"))
    }

    /// Sessions whose owning process is gone (their lock can be taken).
    pub fn dead_sessions(&self, layout: &Layout) -> Result<Vec<PathBuf>, BucketError> {
        let mut dead = Vec::new();
        let entries = fs::read_dir(&layout.sessions_dir)
            .ctx(|| format!("listing {}", layout.sessions_dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path == self.dir {
                continue;
            }
            if entry.file_name().to_string_lossy().starts_with('.') {
                // Still being set up, or abandoned by a process that died doing so.
                let old = entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| {
                    t.elapsed().unwrap_or_default() > std::time::Duration::from_secs(60)
                });
                if old {
                    dead.push(path);
                }
                continue;
            }
            match File::open(path.join("lock")) {
                // Keep the descriptor open only while testing: closing it releases our probe lock.
                Ok(f) if try_lock(&f) => dead.push(path),
                Ok(_) => {}
                Err(_) => dead.push(path), // a session that died before taking its lock
            }
        }
        dead.sort();
        Ok(dead)
    }
}

impl Drop for Session {
    /// A session that ends cleanly leaves nothing behind; one with unfinished journal entries
    /// stays for the next process to recover.
    fn drop(&mut self) {
        let journal_empty = fs::read_dir(self.dir.join("journal"))
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if journal_empty {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Journal entries of a session, oldest first, with their kind ("publish" / "forget").
pub fn journal_entries(session: &Path) -> Result<Vec<(PathBuf, String)>, BucketError> {
    let dir = session.join("journal");
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(out);
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if let Some(kind) = path.extension().and_then(|e| e.to_str()) {
            out.push((path.clone(), kind.to_string()));
        }
    }
    // Finished steps first: a close record is replayed only after every publish that may
    // already have taken its bytes (it then finds its staged file gone).
    out.sort_by_key(|(path, kind)| (kind == "pending", path.clone()));
    Ok(out)
}

fn try_lock(f: &File) -> bool {
    // SAFETY: flock on a valid descriptor.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}
