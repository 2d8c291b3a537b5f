//! A session is one process's private corner of `.bucketfs/sessions/`: its staging files and
//! its journal. The process holds an flock on the session's `lock` file for its whole life, so
//! any other process can tell a dead session (lock free) from a live one and recover it.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::bucket::error::{BucketError, IoContext};
use crate::bucket::layout::Layout;

#[derive(Debug)]
pub struct Session {
    dir: PathBuf,
    _lock: File,
    /// `journal/replica.import`, opened on first use (see [`Session::record_import`]).
    /// With the length of the longest record written to it.
    import_record: Mutex<Option<(File, usize)>>,
}

/// The journal entry of the replica import in progress: one file per session, rewritten in
/// place rather than created and removed per import (on ext4 without a journal, every inode
/// create scans the inodes deleted in the last 30 s, which made one file per import quadratic).
pub const IMPORT_RECORD: &str = "replica.import";

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
        Ok(Session {
            dir,
            _lock: lock,
            import_record: Mutex::new(None),
        })
    }

    pub fn stage_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.stage"))
    }

    pub fn journal_path(&self, version_id: &str, kind: &str) -> PathBuf {
        self.dir
            .join("journal")
            .join(format!("{version_id}.{kind}"))
    }

    /// Writes `record` as the import in progress, over the previous one: one write, padded
    /// with spaces (which JSON ignores) to the longest record so far, instead of a truncation
    /// and a write. The record is not cleared after each import: finishing a committed import
    /// again only repairs its key path, which is idempotent. Callers hold the bucket lock, so
    /// there is at most one import in progress. A record torn by a crash is unreadable, which
    /// recovery skips: the import it was about to start never began.
    pub fn record_import(&self, record: &[u8], durable: bool) -> Result<(), BucketError> {
        let mut slot = self.import_record.lock().unwrap_or_else(|e| e.into_inner());
        let path = self.dir.join("journal").join(IMPORT_RECORD);
        if slot.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&path)
                .ctx(|| format!("creating {}", path.display()))?;
            *slot = Some((f, 0));
        }
        let (f, longest) = slot.as_mut().expect("opened above");
        let mut bytes = record.to_vec();
        bytes.resize(bytes.len().max(*longest), b' ');
        *longest = bytes.len();
        f.write_all_at(&bytes, 0)
            .ctx(|| format!("writing {}", path.display()))?;
        if durable {
            f.sync_data()
                .ctx(|| format!("fsync of {}", path.display()))?;
        }
        Ok(())
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
        // Every import the record names has finished: a clean end leaves no journal entry.
        if self
            .import_record
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .is_some()
        {
            let _ = fs::remove_file(self.dir.join("journal").join(IMPORT_RECORD));
        }
        let journal_empty = fs::read_dir(self.dir.join("journal"))
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if journal_empty {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Journal entries of a session, oldest first, with their kind ("publish", "forget", "import", …).
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
