//! A session is one process's private corner of `.bucketfs/sessions/`: its staging files and
//! its journal. The process holds an flock on the session's `lock` file for its whole life, so
//! any other process can tell a dead session (lock free) from a live one and recover it.
//!
//! The journal is one append-only file, `journal.log`, of JSON lines: an entry is opened by a
//! line carrying its record and closed by a `done` line. One file appended to, rather than a
//! small file created and deleted per operation, because creating inodes is the expensive part
//! of a small-file write: on ext4 without a journal every new inode is searched for past all
//! inodes freed in the last 30 s, so per-operation files made each publish slower the faster
//! they came.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use crate::bucket::error::{BucketError, IoContext};
use crate::bucket::layout::Layout;

/// Past this size the journal is cut back to empty as soon as no entry is open.
const JOURNAL_COMPACT_BYTES: u64 = 1 << 20;

#[derive(Debug)]
pub struct Session {
    dir: PathBuf,
    journal: Mutex<JournalFile>,
    _lock: File,
}

#[derive(Debug)]
struct JournalFile {
    file: File,
    len: u64,
    open_entries: usize,
}

/// An open journal entry: what [`Session::journal_done`] closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    kind: String,
    id: String,
}

impl JournalEntry {
    /// The step's id (for a close record, the staged file's name).
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// One line of `journal.log`.
#[derive(Serialize, serde::Deserialize)]
struct JournalLine<R> {
    kind: String,
    id: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    done: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    record: Option<R>,
}

impl Session {
    pub fn start(layout: &Layout) -> Result<Self, BucketError> {
        // Built under a dot-name and renamed into place already locked, so no other process
        // ever sees a session folder without its held lock (it would take it for dead).
        let name = format!("{}-{}", std::process::id(), ulid::Ulid::new());
        let building = layout.sessions_dir.join(format!(".{name}"));
        fs::create_dir_all(&building).ctx(|| format!("creating {}", building.display()))?;
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
        let journal = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(building.join("journal.log"))
            .ctx(|| format!("creating {}/journal.log", building.display()))?;
        let dir = layout.sessions_dir.join(name);
        fs::rename(&building, &dir).ctx(|| format!("creating {}", dir.display()))?;
        Ok(Session {
            dir,
            journal: Mutex::new(JournalFile {
                file: journal,
                len: 0,
                open_entries: 0,
            }),
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Opens a journal entry holding `record`. With `durable`, it is on stable storage when
    /// this returns.
    pub fn journal_open(
        &self,
        kind: &str,
        id: &str,
        record: &impl Serialize,
        durable: bool,
    ) -> Result<JournalEntry, BucketError> {
        let line = JournalLine {
            kind: kind.to_string(),
            id: id.to_string(),
            done: false,
            record: Some(record),
        };
        let mut j = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        j.append(&line, &self.dir)?;
        j.open_entries += 1;
        if durable {
            j.file
                .sync_data()
                .ctx(|| format!("fsync of {}/journal.log", self.dir.display()))?;
        }
        Ok(JournalEntry {
            kind: kind.to_string(),
            id: id.to_string(),
        })
    }

    /// Closes an entry: its operation is complete (or will never happen). Recovery replaying
    /// an entry whose `done` line was lost finds its work already done, so this is not synced.
    /// Writes `entry`'s record again, superseding the one written before (recovery replays
    /// only the latest record of a step); the step stays open, to be closed once.
    pub fn journal_supersede(
        &self,
        entry: &JournalEntry,
        record: &impl Serialize,
        durable: bool,
    ) -> Result<(), BucketError> {
        let line = JournalLine {
            kind: entry.kind.clone(),
            id: entry.id.clone(),
            done: false,
            record: Some(record),
        };
        let mut j = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        j.append(&line, &self.dir)?;
        if durable {
            j.file
                .sync_data()
                .ctx(|| format!("fsync of {}/journal.log", self.dir.display()))?;
        }
        Ok(())
    }

    pub fn journal_done(&self, entry: &JournalEntry) -> Result<(), BucketError> {
        let line = JournalLine::<()> {
            kind: entry.kind.clone(),
            id: entry.id.clone(),
            done: true,
            record: None,
        };
        let mut j = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        j.append(&line, &self.dir)?;
        j.open_entries = j.open_entries.saturating_sub(1);
        if j.open_entries == 0 && j.len > JOURNAL_COMPACT_BYTES {
            // Nothing in it is needed any more: start over in the same inode.
            j.file
                .set_len(0)
                .ctx(|| format!("truncating {}/journal.log", self.dir.display()))?;
            j.len = 0;
        }
        Ok(())
    }

    pub fn stage_path(&self, id: &str) -> PathBuf {
        self.dir.join(stage_file_name(id))
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
        let open = self
            .journal
            .get_mut()
            .map(|j| j.open_entries)
            .unwrap_or(usize::MAX);
        if open == 0 {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl JournalFile {
    fn append<R: Serialize>(
        &mut self,
        line: &JournalLine<R>,
        dir: &Path,
    ) -> Result<(), BucketError> {
        let mut bytes = serde_json::to_vec(line).expect("journal lines serialize");
        bytes.push(b'\n');
        // One write(2) per line on an O_APPEND file: a crash tears at most the last line.
        self.file
            .write_all(&bytes)
            .ctx(|| format!("writing {}/journal.log", dir.display()))?;
        self.len += bytes.len() as u64;
        Ok(())
    }
}

/// An entry of a dead session's journal still open when its process died.
#[derive(Debug)]
pub struct OpenEntry {
    pub kind: String,
    pub id: String,
    pub record: serde_json::Value,
}

/// The entries a dead session left open, in the order recovery must replay them: finished
/// steps first, oldest first; close records last, since one is replayed only after every
/// publish that may already have taken its bytes (it then finds its staged file gone).
pub fn journal_entries(session: &Path) -> Result<Vec<OpenEntry>, BucketError> {
    let path = session.join("journal.log");
    let mut open: Vec<Option<OpenEntry>> = Vec::new();
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    if let Ok(file) = File::open(&path) {
        for (n, line) in BufReader::new(file).split(b'\n').enumerate() {
            let line = line.ctx(|| format!("reading {}", path.display()))?;
            let parsed = serde_json::from_slice::<JournalLine<serde_json::Value>>(&line);
            let Ok(line) = parsed else {
                // Torn by the crash while being written: the step it records never happened.
                log::warn!(
                    "recovery: ignoring unreadable line {} of {}",
                    n + 1,
                    path.display()
                );
                continue;
            };
            let key = (line.kind.clone(), line.id.clone());
            if line.done {
                if let Some(i) = index.remove(&key) {
                    open[i] = None;
                }
            } else if let Some(record) = line.record {
                // A later record of the same step supersedes the earlier one (a close record
                // written again after more writes): only the latest is replayed.
                if let Some(i) = index.insert(key, open.len()) {
                    open[i] = None;
                }
                open.push(Some(OpenEntry {
                    kind: line.kind,
                    id: line.id,
                    record,
                }));
            }
        }
    }
    let mut out = legacy_journal_entries(session);
    out.extend(open.into_iter().flatten());
    out.sort_by_key(|e| e.kind == "pending");
    Ok(out)
}

/// Sessions written by bucketfs 0.1 kept one file per entry in `journal/`, named
/// `<id>.<kind>`; a crashed one is still recovered.
fn legacy_journal_entries(session: &Path) -> Vec<OpenEntry> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(session.join("journal")) else {
        return out;
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        let (Some(kind), Some(id)) = (
            path.extension().and_then(|e| e.to_str()),
            path.file_stem().and_then(|s| s.to_str()),
        ) else {
            continue;
        };
        let record = fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()));
        match record {
            Ok(record) => out.push(OpenEntry {
                kind: kind.to_string(),
                id: id.to_string(),
                record,
            }),
            Err(e) => log::warn!("recovery: ignoring unreadable {}: {e}", path.display()),
        }
    }
    out
}

fn try_lock(f: &File) -> bool {
    // SAFETY: flock on a valid descriptor.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// The name of the staging file of version `id`, in whichever folder of the session it is.
pub fn stage_file_name(id: &str) -> String {
    format!("{id}.stage")
}
