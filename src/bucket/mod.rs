//! The versioned bucket store: current versions as plain files at their key paths, everything
//! else under `.bucketfs/` (layout in docs/FORMAT.md). No FUSE and no POSIX-over-S3 policy here:
//! this layer publishes, lists and deletes versions atomically, and nothing else.

pub mod acl;
pub mod error;
pub mod key;
pub mod lock;
pub mod meta;
pub mod meta_error;
pub mod tags;

pub mod delta;
mod layout;
mod replica;
mod session;
mod staging;
mod tombstone;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use crate::panic_guard::guarded_round;
pub use delta::Overlay;
pub use error::{BucketError, IoContext};
pub use key::ObjectKey;
use layout::Layout;
use lock::{DefaultRetention, Retention};
pub use meta::{FieldTimes, ObjectAttrs, PosixAttrs, SpecialNode, VersionMeta};
pub use replica::{COMPLETED, FAILED, Imported, PENDING, QueueEntry, REPLICA, ReplicationPolicy};
pub use session::JournalEntry;
use session::Session;
pub use staging::Stager;
use tombstone::ImplicitIds;
pub use tombstone::{IMPLICIT_OWNER_FORMAT_VERSION, RENAME_COPY_MAX, TOMBSTONE_FORMAT_VERSION};

pub type Result<T> = std::result::Result<T, BucketError>;

/// How a file rename gives the new key's version its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenameBytes {
    /// Always the source's inode, by a hard link: someone holds it open (a reader's
    /// passthrough file), and whoever opens the new key must share that inode with them.
    Shared,
    /// A copy where that is cheaper (a small file whose one version is implicit), else shared.
    CopyIfCheaper,
}

/// The version id of an object that was in the bucket directory before bucketfs versioned it
/// (a plain file put there by hand or by a backup restore), as S3 names objects that predate
/// versioning. It sorts before every other version.
pub const NULL_VERSION: &str = "null";

/// One generator for the process: its ids rise even within a millisecond, for every bucket
/// handle, so a bucket opened again (or a second handle on it) never makes a version that
/// sorts before one made a moment earlier. Two processes are ordered to the millisecond.
static VERSION_IDS: Mutex<ulid::Generator> = Mutex::new(ulid::Generator::new());

/// The on-disk format this code reads and writes (docs/FORMAT.md).
pub const FORMAT_VERSION: u32 = 1;

/// Format 3: a key's first version may be implicit, its id in this extended attribute of the
/// key path's inode and no folder or metadata file of its own (docs/FORMAT.md).
pub const IMPLICIT_FORMAT_VERSION: u32 = 3;
pub const IMPLICIT_VERSION_XATTR: &str = "user.bucketfs.version_id";

/// Bucket-level settings: they belong to this bucket and are never replicated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BucketSettings {
    pub format: u32,
    /// uid of the bucket owner (S3's bucket owner account).
    pub owner: u32,
    pub object_lock_enabled: bool,
    #[serde(default)]
    pub default_retention: Option<DefaultRetention>,
    pub created_ns: i64,
}

/// How far a published version is pushed to stable storage before the call returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Published versions survive the daemon's death at once and reach stable storage within
    /// the group-commit interval (one `syncfs` for all of them).
    GroupCommit,
    /// Every publish is fsync'ed (data, metadata and directories) before it returns.
    Strict,
}

/// A staged file: the bytes of a version-to-be, private to this process.
#[derive(Debug)]
pub struct Staged {
    pub path: PathBuf,
    pub file: File,
}

/// The versions and sub-prefixes under one prefix of the version tree.
#[derive(Debug, Default, PartialEq)]
pub struct TreeListing {
    pub children: Vec<String>,
    pub versions: Vec<String>,
}

pub struct Bucket {
    /// The bucket's directory as given: its name and how messages name it. `layout` may
    /// reach the same files by relative paths (`open_or_create_as_working_dir`).
    dir: PathBuf,
    layout: Layout,
    settings: BucketSettings,
    session: Session,
    mutation: Mutex<()>,
    lock_file: File,
    durability: Durability,
    unsynced: AtomicBool,
    policy: std::sync::RwLock<Option<Arc<dyn ReplicationPolicy>>>,
    /// Empty staging files made ahead by the stager thread (see bucket::staging).
    stage_pool: staging::StagePool,
    /// Whether the disk can clone files (probed once, see `supports_reflink`).
    reflink: std::sync::OnceLock<bool>,
    /// Opening found a session of a process that died: replication rescans for lost work.
    recovered_crash: AtomicBool,
    /// The number in `.bucketfs/format`: raised by the first use of a newer format's feature.
    format: AtomicU32,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket").field("dir", &self.dir).finish()
    }
}

/// Holds the bucket's mutation lock: in-process mutex plus an exclusive flock, so another
/// bucketfs process (e.g. a replicator writing into this bucket) never interleaves with us.
struct MutationGuard<'a> {
    _inner: MutexGuard<'a, ()>,
    file: &'a File,
}

impl Drop for MutationGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: flock on a valid descriptor we own; it only changes lock state.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl Bucket {
    /// Creates a new bucket; refuses a directory that already holds anything.
    pub fn create(dir: &Path, owner: u32, object_lock: bool) -> Result<Self> {
        Self::init(dir, owner, object_lock)?;
        Self::open(dir, Durability::GroupCommit)
    }

    /// Writes a new bucket's files into `dir`; refuses a directory that holds anything.
    fn init(dir: &Path, owner: u32, object_lock: bool) -> Result<()> {
        if dir.exists() {
            let mut entries = fs::read_dir(dir).ctx(|| format!("reading {}", dir.display()))?;
            if entries.next().is_some() {
                return Err(BucketError::AlreadyExists(dir.to_path_buf()));
            }
        }
        let layout = Layout::new(dir);
        layout.create_dirs()?;
        let settings = BucketSettings {
            format: FORMAT_VERSION,
            owner,
            object_lock_enabled: object_lock,
            default_retention: None,
            created_ns: meta::now_ns(),
        };
        write_json_atomic(&layout.settings_file(), &settings, Durability::Strict)?;
        write_file_atomic(
            &layout.format_file(),
            format!("{FORMAT_VERSION}\n").as_bytes(),
            Durability::Strict,
        )?;
        Ok(())
    }

    /// Opens an existing bucket, finishing whatever a dead process left half done.
    pub fn open(dir: &Path, durability: Durability) -> Result<Self> {
        Self::open_with_layout(dir, Layout::new(dir), durability)
    }

    /// `dir` names the bucket in errors; `layout` says the paths its files are reached by.
    fn open_with_layout(dir: &Path, layout: Layout, durability: Durability) -> Result<Self> {
        let format = fs::read_to_string(layout.format_file()).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                BucketError::NotABucket {
                    path: dir.to_path_buf(),
                    what: "not a bucketfs bucket (no .bucketfs/format); create one with `bucketfs create`".into(),
                }
            } else {
                BucketError::Io {
                    context: format!("reading {}", layout.format_file().display()),
                    source: e,
                }
            }
        })?;
        let format = match format.trim().parse::<u32>() {
            Ok(n) if (FORMAT_VERSION..=IMPLICIT_OWNER_FORMAT_VERSION).contains(&n) => n,
            _ => {
                return Err(BucketError::UnsupportedFormat {
                    path: dir.to_path_buf(),
                    found: format.trim().to_string(),
                    supported: IMPLICIT_OWNER_FORMAT_VERSION,
                });
            }
        };
        let settings: BucketSettings = read_json(&layout.settings_file())?;
        layout.create_dirs()?;
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(layout.lock_file())
            .ctx(|| format!("opening {}", layout.lock_file().display()))?;
        let session = Session::start(&layout)?;
        let bucket = Bucket {
            dir: dir.to_path_buf(),
            layout,
            settings,
            session,
            mutation: Mutex::new(()),
            lock_file,
            durability,
            unsynced: AtomicBool::new(false),
            policy: std::sync::RwLock::new(None),
            recovered_crash: AtomicBool::new(false),
            reflink: std::sync::OnceLock::new(),
            stage_pool: Default::default(),
            format: AtomicU32::new(format),
        };
        bucket.recover_dead_sessions()?;
        Ok(bucket)
    }

    /// `bucketfs mount` semantics: a missing or empty directory becomes a new bucket.
    pub fn open_or_create(dir: &Path, owner: u32, durability: Durability) -> Result<Self> {
        Self::init_if_empty(dir, owner)?;
        Self::open(dir, durability)
    }

    /// [`Bucket::open_or_create`] for a process that serves this one bucket: `dir` becomes
    /// the process's working directory and the bucket's files are reached by paths relative
    /// to it, so the kernel walks only a key's own components on each call, not `dir`'s
    /// every time (about 0.2 µs a call for a bucket six levels deep; a delete makes seven
    /// such calls). The working directory is the process's: one bucket per process, and
    /// every relative path the process was given must be made absolute before.
    pub fn open_or_create_as_working_dir(
        dir: &Path,
        owner: u32,
        durability: Durability,
    ) -> Result<Self> {
        Self::init_if_empty(dir, owner)?;
        std::env::set_current_dir(dir).ctx(|| format!("entering {}", dir.display()))?;
        Self::open_with_layout(dir, Layout::new(Path::new(".")), durability)
    }

    fn init_if_empty(dir: &Path, owner: u32) -> Result<()> {
        let empty = match fs::read_dir(dir) {
            Ok(mut it) => it.next().is_none(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            Err(e) => {
                return Err(BucketError::Io {
                    context: format!("cannot read bucket directory {}", dir.display()),
                    source: e,
                });
            }
        };
        if empty {
            Self::init(dir, owner, false)?;
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.layout.root
    }

    pub fn settings(&self) -> &BucketSettings {
        &self.settings
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    fn strict(&self) -> bool {
        self.durability == Durability::Strict
    }

    /// Path of the current version of `key` (a plain file, symlink or directory).
    pub fn current_path(&self, key: &ObjectKey) -> PathBuf {
        layout::joined(&self.layout.root, key.rel_path())
    }

    /// Path of a directory prefix ("" = bucket root).
    pub fn prefix_path(&self, prefix: &str) -> PathBuf {
        if prefix.is_empty() {
            self.layout.root.clone()
        } else {
            layout::joined(&self.layout.root, prefix)
        }
    }

    pub fn new_version_id(&self) -> String {
        let mut ids = VERSION_IDS.lock().unwrap_or_else(|e| e.into_inner());
        // The generator only fails when 80 random bits overflow within one millisecond.
        loop {
            if let Ok(id) = ids.generate() {
                return id.to_string();
            }
        }
    }

    fn lock(&self) -> MutationGuard<'_> {
        let inner = self.mutation.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: flock on a valid descriptor we own; blocking until the other process is done.
        unsafe { libc::flock(self.lock_file.as_raw_fd(), libc::LOCK_EX) };
        MutationGuard {
            _inner: inner,
            file: &self.lock_file,
        }
    }

    // ---- reading ----------------------------------------------------------------------------

    /// Version ids of `key`, oldest first (empty if the key never existed).
    pub fn versions(&self, key: &ObjectKey) -> Result<Vec<String>> {
        let mut versions = self.list_tree_path(&self.layout.key_dir(key))?.versions;
        if let Some(extra) = self.unversioned_in(key, &versions) {
            versions.push(extra.version_id);
        }
        Ok(versions)
    }

    /// A plain file, symlink or node at the key path that is not the current version: put
    /// there by hand or by a restore. With no history it is S3's version `null`; over a
    /// deleted key it is the version right after the delete marker. Either way it is the
    /// current version, and is adopted into history before anything changes the key.
    fn unversioned(&self, key: &ObjectKey) -> Option<VersionMeta> {
        // The common case of a new key ends here, without a listing.
        let m = fs::symlink_metadata(self.current_path(key)).ok()?;
        let stored = self
            .list_tree_path(&self.layout.key_dir(key))
            .ok()?
            .versions;
        self.unversioned_at(key, &stored, m)
    }

    /// [`Self::unversioned`], given the key's stored version ids.
    fn unversioned_in(&self, key: &ObjectKey, stored: &[String]) -> Option<VersionMeta> {
        let m = fs::symlink_metadata(self.current_path(key)).ok()?;
        self.unversioned_at(key, stored, m)
    }

    /// [`Self::unversioned_in`], given what is at the key path.
    fn unversioned_at(
        &self,
        key: &ObjectKey,
        stored: &[String],
        m: fs::Metadata,
    ) -> Option<VersionMeta> {
        if m.is_dir() {
            return None;
        }
        let mut owner = m.uid();
        let version_id = match stored.last() {
            // No history: an implicit version (its id on the inode), else S3's `null`.
            None => match m
                .is_file()
                .then(|| implicit_ids(&self.current_path(key)))
                .flatten()
            {
                Some(ids) => {
                    owner = ids.owner_with(&m);
                    ids.version_id
                }
                None => NULL_VERSION.to_string(),
            },
            Some(last) => {
                // The usual case, settled by one stat: the key path is the latest version's
                // bytes (the same inode).
                if m.is_file()
                    && m.nlink() > 1
                    && fs::metadata(self.layout.data_file(key, last))
                        .is_ok_and(|d| d.ino() == m.ino() && d.dev() == m.dev())
                {
                    return None;
                }
                let latest = self.meta(key, last).ok()?;
                if !latest.delete_marker {
                    return None;
                }
                let marker: ulid::Ulid = last.parse().ok()?;
                marker.increment()?.to_string()
            }
        };
        Some(self.derive_meta(key, version_id, &m, owner))
    }

    /// The metadata of an object that has none on disk, from its inode `m` at the key path
    /// and its S3 `owner` (the inode's uid, unless its attribute names another).
    fn derive_meta(
        &self,
        key: &ObjectKey,
        version_id: String,
        m: &fs::Metadata,
        owner: u32,
    ) -> VersionMeta {
        let mtime_ns = m.mtime() * 1_000_000_000 + m.mtime_nsec();
        let mut meta = self.new_meta(key, owner, ObjectAttrs::default());
        meta.version_id = version_id;
        meta.last_modified_ns = mtime_ns;
        // From the inode, not the clock: every look at the object must derive the same
        // metadata (replication compares field times to see whether it changed meanwhile).
        meta.field_times = FieldTimes {
            tags: mtime_ns,
            acl: mtime_ns,
            retention: mtime_ns,
            legal_hold: mtime_ns,
        };
        meta.size = m.len();
        meta.retention = None;
        meta.posix = Some(PosixAttrs {
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            mtime_ns,
        });
        if m.file_type().is_symlink() {
            meta.symlink_target = fs::read_link(self.current_path(key))
                .ok()
                .map(|t| t.to_string_lossy().into_owned());
        } else if !m.is_file() {
            meta.special = Some(SpecialNode {
                mode: m.mode(),
                rdev: m.rdev(),
            });
            meta.size = 0;
        }
        meta
    }

    /// The metadata of an object with no history on disk (a plain file, symlink or node put
    /// there by hand, version `null`, or an implicit first version): what `replicate
    /// --existing` takes up.
    pub fn unversioned_without_history(&self, key: &ObjectKey) -> Option<VersionMeta> {
        let m = fs::symlink_metadata(self.current_path(key)).ok()?;
        let stored = self
            .list_tree_path(&self.layout.key_dir(key))
            .ok()?
            .versions;
        if !stored.is_empty() {
            return None;
        }
        self.unversioned_at(key, &stored, m)
    }

    /// Gives an unversioned object its `null` version on disk before anything changes it,
    /// so its bytes stay reachable as history (and a tombstone its folder). Whether the key
    /// has a folder in the version tree afterwards.
    fn adopt(&self, key: &ObjectKey) -> Result<bool> {
        let has_folder = self.expand_tombstone(key)?;
        let Some(meta) = self.unversioned(key) else {
            return Ok(has_folder);
        };
        self.adopt_bytes(key, &meta)?;
        write_json_atomic(
            &self.layout.meta_file(key, &meta.version_id),
            &meta,
            self.durability,
        )?;
        Ok(true)
    }

    /// First half of an adoption: the key's folder and the `@ID.data` link. The adoption is
    /// complete (the version listed) once `@ID.json` is written; until then the object is still
    /// unversioned, and adopting it again finds the link already there.
    fn adopt_bytes(&self, key: &ObjectKey, meta: &VersionMeta) -> Result<()> {
        // Debug, not info: `replicate --existing` of a tree of plain files adopts every one.
        log::debug!(
            "{key}: taking the unversioned object into history as version {}",
            meta.version_id
        );
        self.make_key_dir(key)?;
        if meta.symlink_target.is_none() && meta.special.is_none() {
            let data = self.layout.data_file(key, &meta.version_id);
            match fs::hard_link(self.current_path(key), &data) {
                Err(e)
                    if e.kind() == io::ErrorKind::AlreadyExists
                        && same_inode(&data, &self.current_path(key)) => {}
                r => r.ctx(|| format!("linking {}", data.display()))?,
            }
        }
        Ok(())
    }

    /// Opens the bytes of a version for reading. An unversioned object's bytes are the inode
    /// at its key path: it is opened first and checked after, since whatever replaces the key
    /// path adopts that inode as `@ID.data` first, so the descriptor holds the version's bytes
    /// for good even if the key changes right after.
    pub fn open_version_bytes(&self, key: &ObjectKey, version_id: &str) -> Result<File> {
        let data = self.layout.data_file(key, version_id);
        match File::open(&data) {
            Ok(f) => return Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
                if let Some(file) = self.open_tombstone_bytes(key, version_id) {
                    return Ok(file);
                }
            }
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(BucketError::Io {
                    context: format!("opening {}", data.display()),
                    source: e,
                });
            }
            Err(_) => {}
        }
        let missing = || BucketError::NoSuchVersion {
            key: key.to_string(),
            version_id: version_id.to_string(),
        };
        let current = self.current_path(key);
        let at_key_path = match open_no_follow(&current).ok() {
            // No history at all, so nothing has replaced the key path through bucketfs since
            // it was opened (that adopts first, creating the key's folder). Nor can it be a
            // delta, which needs metadata in that folder.
            Some(file) if version_id == NULL_VERSION && !self.layout.key_dir(key).exists() => {
                return Ok(file);
            }
            other => other,
        };
        if self.meta(key, version_id).is_ok_and(|m| m.delta.is_some()) {
            // A reverse delta: rebuilt into a plain file first.
            let path = self.version_bytes_path(key, version_id)?;
            return File::open(&path).ctx(|| format!("opening {}", path.display()));
        }
        let file = at_key_path.ok_or_else(missing)?;
        if let Ok(f) = File::open(&data) {
            return Ok(f); // adopted meanwhile
        }
        let ino = file
            .metadata()
            .ctx(|| format!("stat of {}", current.display()))?
            .ino();
        let is_ours = |p: &Path| fs::metadata(p).is_ok_and(|m| m.ino() == ino);
        let unversioned = self
            .unversioned(key)
            .is_some_and(|m| m.version_id == version_id);
        if (unversioned && is_ours(&current)) || is_ours(&data) {
            Ok(file)
        } else {
            Err(missing())
        }
    }

    pub fn meta(&self, key: &ObjectKey, version_id: &str) -> Result<VersionMeta> {
        let path = self.layout.meta_file(key, version_id);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| BucketError::CorruptMeta { path, source }),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                // The tombstone first: `unversioned` reads the newest stored version's
                // metadata through here, which for a tombstone is its marker.
                self.tombstone(key)
                    .and_then(|t| self.tombstone_meta(key, &t, version_id))
                    .or_else(|| self.unversioned(key).filter(|m| m.version_id == version_id))
                    .ok_or_else(|| BucketError::NoSuchVersion {
                        key: key.to_string(),
                        version_id: version_id.to_string(),
                    })
            }
            Err(e) => Err(BucketError::Io {
                context: format!("reading {}", path.display()),
                source: e,
            }),
        }
    }

    /// The newest version of `key`, delete marker or not.
    pub fn latest(&self, key: &ObjectKey) -> Result<Option<VersionMeta>> {
        let stored = self.list_tree_path(&self.layout.key_dir(key))?.versions;
        // An unversioned object at the key path is the newest, and its metadata was just
        // derived: reading it again through `meta` would repeat every probe (five calls).
        if let Some(unversioned) = self.unversioned_in(key, &stored) {
            return Ok(Some(unversioned));
        }
        match stored.last() {
            Some(id) => self.meta(key, id).map(Some),
            None => Ok(None),
        }
    }

    /// The current version: the newest one, unless that is a delete marker.
    pub fn current(&self, key: &ObjectKey) -> Result<Option<VersionMeta>> {
        Ok(self.latest(key)?.filter(|m| !m.delete_marker))
    }

    /// [`Self::current`] when its metadata is recorded in the version tree; `None` when the key
    /// has no folder there, so that its current version, if any, is derived from the inode at
    /// the key path (implicit and `null` versions) and always agrees with it. One `lstat`
    /// answers the common case of a key that never changed (a setattr of each file `tar` or
    /// `rsync` writes asks), instead of a listing and an attribute read.
    pub fn current_recorded(&self, key: &ObjectKey) -> Result<Option<VersionMeta>> {
        match fs::symlink_metadata(self.layout.key_dir(key)) {
            Ok(st) if st.is_dir() => self.current(key),
            // None, or a tombstone: a deleted key's history, which a current version replaces
            // only by expanding it into a folder.
            _ => Ok(None),
        }
    }

    /// Before the key path's inode is chowned to `uid`. An implicit version's S3 owner is its
    /// inode's uid unless the attribute names one, but a chown changes the POSIX owner only,
    /// as it does for a version with metadata (`rsync -a` as root chowns each file it wrote):
    /// the owner is named in the attribute first. Needs no bucket lock: the value it writes
    /// means what the inode's uid already says, whoever changes the key meanwhile.
    pub fn keep_owner_through_chown(&self, key: &ObjectKey, uid: u32) -> Result<()> {
        let current = self.current_path(key);
        let Ok(stat) = fs::symlink_metadata(&current) else {
            return Ok(());
        };
        if !stat.is_file() || stat.uid() == uid {
            return Ok(());
        }
        let Some(mut ids) = implicit_ids(&current) else {
            return Ok(()); // a `null` version: its owner is its uid, as it always was
        };
        // A key with history has its owner recorded; the attribute means nothing then.
        if ids.owner.is_some() || fs::symlink_metadata(self.layout.key_dir(key)).is_ok() {
            return Ok(());
        }
        ids.owner = Some(stat.uid());
        self.ensure_format(ids.format(IMPLICIT_FORMAT_VERSION))?;
        xattr::set(&current, IMPLICIT_VERSION_XATTR, ids.encode().as_bytes())
            .ctx(|| format!("naming the owner of {}", current.display()))
    }

    /// Sub-prefixes and versions directly under `prefix` in the version tree ("" = root).
    /// Objects with no history on disk (implicit and `null` versions) have no folder there:
    /// the names of the live tree under `prefix` are listed with it.
    pub fn list_tree(&self, prefix: &str) -> Result<TreeListing> {
        let mut listing =
            self.list_tree_path(&self.layout.versions_dir.join(key::escape_prefix(prefix)))?;
        if let Ok(key) = ObjectKey::new(prefix)
            && let Some(extra) = self.unversioned_in(&key, &listing.versions)
        {
            listing.versions.push(extra.version_id);
        }
        if (prefix.is_empty() || ObjectKey::new(prefix).is_ok())
            && let Ok(entries) = fs::read_dir(self.prefix_path(prefix))
        {
            let live = entries
                .flatten()
                .filter(|e| !prefix.is_empty() || e.file_name() != key::META_DIR)
                .filter_map(|e| e.file_name().into_string().ok());
            listing.children.extend(live);
            listing.children.sort();
            listing.children.dedup();
        }
        Ok(listing)
    }

    /// Is there anything (versions or deeper keys) in the version tree under `prefix`, or a
    /// live object or folder there (whose history may be implicit)?
    pub fn tree_exists(&self, prefix: &str) -> bool {
        // A folder, or a tombstone standing in for one.
        fs::symlink_metadata(self.layout.versions_dir.join(key::escape_prefix(prefix))).is_ok()
            || (ObjectKey::new(prefix).is_ok()
                && fs::symlink_metadata(self.prefix_path(prefix)).is_ok())
    }

    fn list_tree_path(&self, dir: &Path) -> Result<TreeListing> {
        let mut listing = TreeListing::default();
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(listing),
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
                if let Some(t) = tombstone::read_tombstone(dir) {
                    listing.versions = vec![t.version_id, t.marker_id];
                }
                return Ok(listing);
            }
            Err(e) => {
                return Err(BucketError::Io {
                    context: format!("listing {}", dir.display()),
                    source: e,
                });
            }
        };
        for entry in entries {
            let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            match key::unescape_component(name) {
                Some(child) => {
                    // A folder, or a tombstone standing in for one (bucket::tombstone).
                    if entry
                        .file_type()
                        .map(|t| t.is_dir() || t.is_file())
                        .unwrap_or(false)
                    {
                        listing.children.push(child.to_string());
                    }
                }
                None => {
                    if let Some(id) = name
                        .strip_prefix('@')
                        .and_then(|n| n.strip_suffix(layout::META_SUFFIX))
                    {
                        listing.versions.push(id.to_string());
                    }
                }
            }
        }
        listing.children.sort();
        // Creation order; `null` (before versioning) first, as in S3.
        listing
            .versions
            .sort_by(|a, b| (a != NULL_VERSION, a).cmp(&(b != NULL_VERSION, b)));
        Ok(listing)
    }

    /// MD5 of a version's bytes, computed on first request and then kept in its metadata.
    pub fn etag(&self, key: &ObjectKey, version_id: &str) -> Result<String> {
        let meta = self.meta(key, version_id)?;
        if let Some(etag) = meta.etag {
            return Ok(etag);
        }
        let etag = if meta.delete_marker {
            String::new()
        } else if let Some(target) = &meta.symlink_target {
            hex_md5(target.as_bytes())
        } else if meta.special.is_some() {
            hex_md5(b"")
        } else {
            md5_file(&self.version_bytes_path(key, version_id)?)?
        };
        if !self.layout.meta_file(key, version_id).exists() {
            return Ok(etag); // not adopted yet: reading must not write
        }
        let e = etag.clone();
        self.update_meta::<BucketError>(key, version_id, |m| {
            m.etag = Some(e);
            Ok(())
        })?;
        Ok(etag)
    }

    // ---- staging ----------------------------------------------------------------------------

    /// A staged copy of `source`'s bytes: a reflink where the disk supports it, else an
    /// in-kernel copy (copy_file_range), never through user space.
    pub fn stage_copy(&self, source: &File) -> Result<Staged> {
        let staged = self.stage_empty()?;
        clone_or_copy(source, &staged.file)
            .ctx(|| format!("copying into staging file {}", staged.path.display()))?;
        Ok(staged)
    }

    /// Gives the current version of `key` a copy of its bytes of its own and moves the inode
    /// that was current out of the key path into a staging file, which is returned. Used when
    /// a writer must share an inode that readers already have open: they all go on using that
    /// inode, while the published version stays intact.
    pub fn detach_current(&self, key: &ObjectKey) -> Result<PathBuf> {
        let _guard = self.lock();
        self.adopt(key)?;
        let current = self
            .current(key)?
            .ok_or_else(|| BucketError::NoSuchKey(key.to_string()))?;
        let data = self.layout.data_file(key, &current.version_id);
        let original = File::open(&data).ctx(|| format!("opening {}", data.display()))?;
        // The readers' inode becomes the writer's: links beyond the key path and `@ID.data`
        // are other keys' versions (a rename's hard link), which it would rewrite.
        let links = original
            .metadata()
            .ctx(|| format!("stat of {}", data.display()))?
            .nlink();
        if links > 2 {
            return Err(BucketError::SharedBytesOpen(key.to_string()));
        }
        let intent =
            self.session
                .journal_open("repair", &current.version_id, &current, self.strict())?;
        let copy = self.stage_copy(&original)?;
        copy_posix_attrs(&original, &copy.file)
            .ctx(|| format!("copying attributes of {}", data.display()))?;
        fs::rename(&copy.path, &data).ctx(|| format!("replacing {}", data.display()))?;
        let staged = self.session.stage_path(&self.new_version_id());
        let path = self.current_path(key);
        fs::rename(&path, &staged).ctx(|| format!("detaching {}", path.display()))?;
        self.repair_current(key)?;
        self.session.journal_done(&intent)?;
        Ok(staged)
    }

    /// Drops a staged file that will not become a version.
    pub fn discard_staged(&self, path: &Path) {
        if let Err(e) = fs::remove_file(path)
            && e.kind() != io::ErrorKind::NotFound
        {
            log::warn!("could not remove staging file {}: {e}", path.display());
        }
    }

    // ---- publishing ---------------------------------------------------------------------------

    /// Records that a writer closed `staged` as the next version of `key` (the daemon publishes
    /// it when the last descriptor goes). If the process dies first, recovery publishes it, so
    /// a version whose close() returned is never lost. `durable` also fsyncs it (fsync(2)).
    ///
    /// `supersedes` is this file's previous close record, when it has one: the new record
    /// replaces it (an overlay's record lists the ranges written, and more were written since).
    #[allow(clippy::too_many_arguments)]
    pub fn note_pending(
        &self,
        key: &ObjectKey,
        staged: &Path,
        overlay: Option<&Overlay>,
        owner: u32,
        attrs: &ObjectAttrs,
        durable: bool,
        supersedes: Option<&JournalEntry>,
    ) -> Result<JournalEntry> {
        let record = PendingClose {
            staged: Some(staged.to_path_buf()),
            meta: self.new_meta(key, owner, attrs.clone()),
            overlay: overlay.cloned(),
        };
        let name = staged
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let durable = durable || self.strict();
        if durable {
            File::open(staged)
                .and_then(|f| f.sync_all())
                .ctx(|| format!("fsync of {}", staged.display()))?;
        }
        let entry = match supersedes.filter(|e| e.id() == name) {
            Some(previous) => {
                self.session.journal_supersede(previous, &record, durable)?;
                previous.clone()
            }
            None => self
                .session
                .journal_open("pending", &name, &record, durable)?,
        };
        if durable {
            sync_dir(self.session.dir())?;
        }
        Ok(entry)
    }

    /// Forgets a pending-close record (its version was published, or will never be).
    pub fn clear_pending(&self, record: &JournalEntry) {
        if let Err(e) = self.session.journal_done(record) {
            log::warn!("{e}");
        }
    }

    /// Publishes the staged file at `staged` as the new current version of `key`.
    /// Atomic: a crash at any instant leaves the old or the new version current.
    /// `pending` is the close record of [`Bucket::note_pending`], if one was written.
    pub fn publish_file(
        &self,
        key: &ObjectKey,
        staged: &Path,
        owner: u32,
        attrs: ObjectAttrs,
        pending: Option<&JournalEntry>,
    ) -> Result<VersionMeta> {
        let _guard = self.lock();
        self.publish_file_locked(key, staged, owner, attrs, pending)
    }

    fn publish_file_locked(
        &self,
        key: &ObjectKey,
        staged: &Path,
        owner: u32,
        attrs: ObjectAttrs,
        pending: Option<&JournalEntry>,
    ) -> Result<VersionMeta> {
        let has_folder = self.adopt(key)?;
        let st = fs::metadata(staged).ctx(|| format!("stat of {}", staged.display()))?;
        let mut meta = self.new_meta(key, owner, attrs);
        meta.size = st.len();
        meta.posix = Some(PosixAttrs {
            mode: st.mode(),
            uid: st.uid(),
            gid: st.gid(),
            mtime_ns: st.mtime() * 1_000_000_000 + st.mtime_nsec(),
        });
        let implicit = if has_folder {
            None
        } else {
            self.publish_implicit(key, staged, &st, &meta)?
        };
        if let Some(implicit) = implicit {
            meta = implicit;
        } else {
            self.fsync_if_strict(staged)?;
            let intent = self.write_intent(&mut meta, Some(staged))?;
            let data = self.layout.data_file(key, &meta.version_id);
            fs::hard_link(staged, &data).ctx(|| format!("linking {}", data.display()))?;
            let current = self.current_path(key);
            self.ensure_parent(&current)?;
            fs::rename(staged, &current).ctx(|| format!("publishing {}", current.display()))?;
            self.commit_intent(&intent, key, &meta)?;
        }
        if let Some(record) = pending {
            // Only now: until the version is committed, the close record (fsync'ed if the
            // writer asked for it) is what guarantees it.
            self.session.journal_done(record)?;
        }
        Ok(meta)
    }

    /// The first version of a key new to the bucket (no folder in the version tree, as `adopt`
    /// just found), when its inode and attribute say all S3 keeps of it (no tags, user
    /// metadata, retention or replication; the default ACL; its owner the file's, or named in
    /// the attribute), is published implicit: its
    /// id is written on the staged inode, which is renamed to the key path, and that is all —
    /// no folder, hard link or metadata file, the three inodes that made most of a small
    /// file's cost. The next change to the key adopts it into history under that id (see
    /// `adopt`). Returns `None` when the version must be an ordinary one.
    fn publish_implicit(
        &self,
        key: &ObjectKey,
        staged: &Path,
        st: &fs::Metadata,
        meta: &VersionMeta,
    ) -> Result<Option<VersionMeta>> {
        if self.policy().is_some() {
            return Ok(None);
        }
        let derived = self.derive_meta(key, meta.version_id.clone(), st, meta.owner);
        let mut explicit = meta.clone();
        explicit.last_modified_ns = derived.last_modified_ns;
        explicit.field_times = derived.field_times;
        if explicit != derived {
            return Ok(None);
        }
        let ids = ImplicitIds {
            version_id: meta.version_id.clone(),
            marker_id: None,
            // Root writing a file and handing it to its user before the close (`cp -a`).
            owner: (meta.owner != st.uid()).then_some(meta.owner),
        };
        if let Err(e) = xattr::set(staged, IMPLICIT_VERSION_XATTR, ids.encode().as_bytes()) {
            // A disk without user xattrs gets ordinary versions.
            log::debug!("{key}: no implicit version ({e}), writing its metadata");
            return Ok(None);
        }
        self.ensure_format(ids.format(IMPLICIT_FORMAT_VERSION))?;
        self.fsync_if_strict(staged)?;
        let current = self.current_path(key);
        in_parent(&current, || fs::rename(staged, &current))
            .ctx(|| format!("publishing {}", current.display()))?;
        if self.durability == Durability::Strict {
            sync_dir(current.parent().unwrap_or(&self.layout.root))?;
        }
        self.note_unsynced();
        Ok(Some(derived))
    }

    /// With `--sync`: a staged file's bytes and inode reach the disk before it is published.
    fn fsync_if_strict(&self, staged: &Path) -> Result<()> {
        if self.durability == Durability::Strict {
            File::open(staged)
                .and_then(|f| f.sync_all())
                .ctx(|| format!("fsync of {}", staged.display()))?;
        }
        Ok(())
    }

    /// Raises `.bucketfs/format` to `version` the first time a feature of that format is
    /// used, so that an older bucketfs refuses the bucket instead of misreading it.
    pub(crate) fn ensure_format(&self, version: u32) -> Result<()> {
        if self.format.load(Ordering::Acquire) >= version {
            return Ok(());
        }
        write_file_atomic(
            &self.layout.format_file(),
            format!("{version}\n").as_bytes(),
            Durability::Strict,
        )?;
        self.format.fetch_max(version, Ordering::AcqRel);
        Ok(())
    }

    /// Publishes a symbolic link as the new current version of `key`.
    pub fn publish_symlink(
        &self,
        key: &ObjectKey,
        target: &str,
        owner: u32,
        attrs: ObjectAttrs,
    ) -> Result<VersionMeta> {
        let _guard = self.lock();
        self.publish_symlink_locked(key, target, owner, attrs)
    }

    fn publish_symlink_locked(
        &self,
        key: &ObjectKey,
        target: &str,
        owner: u32,
        attrs: ObjectAttrs,
    ) -> Result<VersionMeta> {
        self.adopt(key)?;
        let mut meta = self.new_meta(key, owner, attrs);
        meta.size = target.len() as u64;
        meta.symlink_target = Some(target.to_string());
        let intent = self.write_intent(&mut meta, None)?;
        let tmp = self.session.stage_path(&meta.version_id);
        std::os::unix::fs::symlink(target, &tmp)
            .ctx(|| format!("creating symlink {}", tmp.display()))?;
        if let Some(p) = meta.posix {
            // The link's own owner is what `ls -l` shows; mode of a symlink is meaningless on Linux.
            let _ = std::os::unix::fs::lchown(&tmp, Some(p.uid), Some(p.gid));
        }
        let current = self.current_path(key);
        self.ensure_parent(&current)?;
        fs::rename(&tmp, &current).ctx(|| format!("publishing {}", current.display()))?;
        self.commit_intent(&intent, key, &meta)?;
        Ok(meta)
    }

    /// Publishes a FIFO, socket or device node (`mode` includes the file type) as the new
    /// current version of `key`.
    pub fn publish_special(
        &self,
        key: &ObjectKey,
        mode: u32,
        rdev: u64,
        owner: u32,
        attrs: ObjectAttrs,
    ) -> Result<VersionMeta> {
        let _guard = self.lock();
        self.publish_special_locked(key, SpecialNode { mode, rdev }, owner, attrs)
    }

    fn publish_special_locked(
        &self,
        key: &ObjectKey,
        special: SpecialNode,
        owner: u32,
        attrs: ObjectAttrs,
    ) -> Result<VersionMeta> {
        self.adopt(key)?;
        let mut meta = self.new_meta(key, owner, attrs);
        meta.special = Some(special);
        let intent = self.write_intent(&mut meta, None)?;
        let tmp = self.session.stage_path(&meta.version_id);
        self.make_node(&tmp, &meta)?;
        let current = self.current_path(key);
        self.ensure_parent(&current)?;
        fs::rename(&tmp, &current).ctx(|| format!("publishing {}", current.display()))?;
        self.commit_intent(&intent, key, &meta)?;
        Ok(meta)
    }

    /// Creates the node a special version stands for, with its owner and permissions.
    fn make_node(&self, path: &Path, meta: &VersionMeta) -> Result<()> {
        let special = meta.special.expect("a special version");
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .expect("session paths have no NUL");
        // SAFETY: valid NUL-terminated path; mknod creates the node or fails.
        if unsafe { libc::mknod(c.as_ptr(), special.mode, special.rdev as libc::dev_t) } != 0 {
            return Err(BucketError::Io {
                context: format!("creating node {}", path.display()),
                source: io::Error::last_os_error(),
            });
        }
        if let Some(p) = meta.posix {
            let _ = std::os::unix::fs::lchown(path, Some(p.uid), Some(p.gid));
        }
        // mknod applied the daemon's umask; the version's own bits win.
        fs::set_permissions(path, fs::Permissions::from_mode(special.mode & 0o7777))
            .ctx(|| format!("chmod of {}", path.display()))
    }

    /// Adds a delete marker (S3 DELETE without a version id). Returns None, having changed
    /// nothing, when the key has no current version (nothing to delete) or its path is a
    /// folder (a prefix, not a key).
    pub fn delete(&self, key: &ObjectKey, owner: u32) -> Result<Option<VersionMeta>> {
        let _guard = self.lock();
        self.delete_locked(key, owner)
    }

    fn delete_locked(&self, key: &ObjectKey, owner: u32) -> Result<Option<VersionMeta>> {
        // The key path holds the current version exactly when there is one (a delete marker
        // removes it; an unversioned object is only there): one stat instead of a listing.
        let current = self.current_path(key);
        let Ok(at_key_path) = fs::symlink_metadata(&current) else {
            return Ok(None);
        };
        if at_key_path.is_dir() {
            return Ok(None);
        }
        if let Some(marker) = self.delete_to_tombstone(key, owner, &current, &at_key_path)? {
            return Ok(Some(marker));
        }
        // Adoption leaves the key path as it is.
        self.adopt(key)?;
        let mut meta = self.new_meta(key, owner, ObjectAttrs::default());
        meta.delete_marker = true;
        meta.retention = None; // S3 puts no retention on delete markers
        let intent = self.write_intent(&mut meta, None)?;
        remove_if_not_dir(&current)?;
        self.commit_intent(&intent, key, &meta)?;
        Ok(Some(meta))
    }

    /// S3 CopyObject + DELETE: `to` gets a new version with the bytes and metadata of `from`'s
    /// current version, `from` gets a delete marker. Data is shared by a hard link, or, if
    /// `bytes` allows it, copied when that is cheaper (`rename_small_implicit`).
    /// [`BucketError::NoSuchKey`] when `from` has no current version, having changed nothing S3
    /// would show.
    pub fn rename(
        &self,
        from: &ObjectKey,
        to: &ObjectKey,
        owner: u32,
        bytes: RenameBytes,
    ) -> Result<VersionMeta> {
        let _guard = self.lock();
        if bytes == RenameBytes::CopyIfCheaper
            && let Some(meta) = self.rename_small_implicit(from, to, owner)?
        {
            return Ok(meta);
        }
        self.adopt(from)?;
        let source = self
            .current(from)?
            .ok_or_else(|| BucketError::NoSuchKey(from.to_string()))?;
        let mut attrs = source.attrs().for_new_version();
        let meta = if let Some(target) = &source.symlink_target {
            self.publish_symlink_locked(to, target, owner, attrs)?
        } else if let Some(special) = source.special {
            let st =
                fs::symlink_metadata(self.current_path(from)).ctx(|| format!("stat of {from}"))?;
            attrs.posix = Some(PosixAttrs {
                mode: st.mode(),
                uid: st.uid(),
                gid: st.gid(),
                mtime_ns: st.mtime() * 1_000_000_000 + st.mtime_nsec(),
            });
            let special = SpecialNode {
                mode: st.mode(),
                ..special
            };
            self.publish_special_locked(to, special, owner, attrs)?
        } else {
            let staged = self.session.stage_path(&self.new_version_id());
            let data = self.layout.data_file(from, &source.version_id);
            fs::hard_link(&data, &staged).ctx(|| format!("linking {}", data.display()))?;
            // Keep the POSIX attributes the source has now (chmod after publish changes them).
            attrs.posix = None;
            self.publish_file_locked(to, &staged, owner, attrs, None)?
        };
        self.delete_locked(from, owner)?;
        Ok(meta)
    }

    /// Rewrites one version's metadata (tags, ACL, Object Lock, POSIX attributes). No new version.
    /// The check and the change run under the bucket lock, so a concurrent writer in another
    /// process can neither slip in between nor be overwritten.
    pub fn update_meta<E: From<BucketError>>(
        &self,
        key: &ObjectKey,
        version_id: &str,
        change: impl FnOnce(&mut VersionMeta) -> std::result::Result<(), E>,
    ) -> std::result::Result<VersionMeta, E> {
        let _guard = self.lock();
        self.update_meta_locked(key, version_id, change)
    }

    fn update_meta_locked<E: From<BucketError>>(
        &self,
        key: &ObjectKey,
        version_id: &str,
        change: impl FnOnce(&mut VersionMeta) -> std::result::Result<(), E>,
    ) -> std::result::Result<VersionMeta, E> {
        self.expand_tombstone(key)?;
        let path = self.layout.meta_file(key, version_id);
        let (mut meta, adopting) = match self.unversioned(key) {
            // The change is to the unversioned object itself: it is adopted with the change
            // applied, in one metadata write instead of two.
            Some(m) if m.version_id == version_id => {
                self.adopt_bytes(key, &m)?;
                (m, true)
            }
            Some(_) => {
                self.adopt(key)?;
                (self.meta(key, version_id)?, false)
            }
            None => (self.meta(key, version_id)?, false),
        };
        let original = adopting.then(|| meta.clone());
        if let Err(e) = change(&mut meta) {
            if let Some(original) = original {
                // A refused change still leaves the object adopted, as before the change.
                write_json_atomic(&path, &original, self.durability)?;
            }
            return Err(e);
        }
        write_json_atomic(&path, &meta, self.durability)?;
        self.note_unsynced();
        Ok(meta)
    }

    /// A user's change to a version's tags, ACL or Object Lock settings (no new version): like
    /// [`Bucket::update_meta`], and the change is queued for replication where rules say so.
    pub fn update_object_meta<E: From<BucketError>>(
        &self,
        key: &ObjectKey,
        version_id: &str,
        change: impl FnOnce(&mut VersionMeta) -> std::result::Result<(), E>,
    ) -> std::result::Result<VersionMeta, E> {
        let mut queued = false;
        let meta = self.update_meta::<E>(key, version_id, |m| {
            change(m)?;
            queued = self.plan_metadata_change(m);
            if queued {
                self.enqueue(m)?;
            }
            Ok(())
        })?;
        if queued {
            self.wake_replication();
        }
        Ok(meta)
    }

    /// S3 DELETE with a version id: removes that version for good, unless Object Lock protects
    /// it. If it was the newest, the one before becomes current again (undelete for markers).
    pub fn delete_version(
        &self,
        key: &ObjectKey,
        version_id: &str,
        bypass_governance: bool,
    ) -> Result<()> {
        let _guard = self.lock();
        self.adopt(key)?;
        let meta = self.meta(key, version_id)?;
        if let Some(reason) = lock::deletion_blocker(
            meta.retention.as_ref(),
            meta.legal_hold,
            time::OffsetDateTime::now_utc(),
            bypass_governance,
        ) {
            return Err(BucketError::ObjectLocked {
                key: key.to_string(),
                version_id: version_id.to_string(),
                reason,
            });
        }
        // Versions rebuilt from this one's bytes get their own first.
        self.materialise_dependents(key, version_id)?;
        let intent = self
            .session
            .journal_open("forget", version_id, &meta, self.strict())?;
        // Removing the metadata is the commit point: without it the version is gone.
        let meta_file = self.layout.meta_file(key, version_id);
        fs::remove_file(&meta_file).ctx(|| format!("retiring {}", meta_file.display()))?;
        self.finish_forget(key, version_id, &intent)?;
        self.note_unsynced();
        Ok(())
    }

    fn finish_forget(
        &self,
        key: &ObjectKey,
        version_id: &str,
        intent: &JournalEntry,
    ) -> Result<()> {
        remove_if_exists(&self.layout.meta_file(key, version_id))?;
        remove_if_exists(&self.layout.data_file(key, version_id))?;
        remove_if_exists(&self.layout.undo_file(key, version_id))?;
        self.repair_current(key)?;
        let dir = self.layout.key_dir(key);
        let _ = fs::remove_dir(&dir); // only succeeds once nothing is left in it
        self.session.journal_done(intent)
    }

    /// Creates the directory `prefix` (an S3 `prefix/` marker).
    pub fn make_dir(&self, prefix: &str, mode: u32, uid: u32, gid: u32) -> Result<()> {
        let path = self.prefix_path(prefix);
        fs::DirBuilder::new()
            .mode(mode)
            .create(&path)
            .ctx(|| format!("creating directory {}", path.display()))?;
        // Set after creation: the daemon's own umask must not apply a second time.
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .ctx(|| format!("chmod of {}", path.display()))?;
        let _ = std::os::unix::fs::chown(&path, Some(uid), Some(gid));
        self.note_unsynced();
        Ok(())
    }

    pub fn remove_dir(&self, prefix: &str) -> Result<()> {
        let path = self.prefix_path(prefix);
        fs::remove_dir(&path).ctx(|| format!("removing directory {}", path.display()))?;
        self.note_unsynced();
        Ok(())
    }

    /// Renames a directory: every key below it moves (see docs/SEMANTICS.md, "rename").
    pub fn rename_dir(&self, from: &str, to: &str, owner: u32) -> Result<()> {
        let _guard = self.lock();
        let dst = self.prefix_path(to);
        match fs::symlink_metadata(&dst) {
            Ok(m) if m.is_dir() => {
                fs::remove_dir(&dst).ctx(|| format!("replacing directory {}", dst.display()))?
            }
            Ok(_) => {
                return Err(BucketError::Io {
                    context: format!("renaming onto {}", dst.display()),
                    source: io::Error::from_raw_os_error(libc::ENOTDIR),
                });
            }
            Err(_) => {}
        }
        fs::DirBuilder::new()
            .create(&dst)
            .ctx(|| format!("creating directory {}", dst.display()))?;
        let src = self.prefix_path(from);
        let st = fs::metadata(&src).ctx(|| format!("stat of {}", src.display()))?;
        let _ = fs::set_permissions(&dst, fs::Permissions::from_mode(st.mode()));
        let _ = std::os::unix::fs::chown(&dst, Some(st.uid()), Some(st.gid()));
        let mut names: Vec<_> = fs::read_dir(&src)
            .ctx(|| format!("listing {}", src.display()))?
            .filter_map(|e| e.ok())
            .collect();
        names.sort_by_key(|e| e.file_name());
        drop(_guard);
        for entry in names {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let from_child = format!("{from}/{name}");
            let to_child = format!("{to}/{name}");
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                self.rename_dir(&from_child, &to_child, owner)?;
            } else {
                // Shared: files below may be open, and a folder's rename copies no data.
                self.rename(
                    &ObjectKey::new(from_child)?,
                    &ObjectKey::new(to_child)?,
                    owner,
                    RenameBytes::Shared,
                )?;
            }
        }
        fs::remove_dir(&src).ctx(|| format!("removing directory {}", src.display()))?;
        Ok(())
    }

    // ---- durability ---------------------------------------------------------------------------

    fn note_unsynced(&self) {
        self.unsynced.store(true, Ordering::Release);
    }

    /// Flushes everything published so far to stable storage (one syncfs for the whole disk).
    pub fn sync(&self) -> Result<()> {
        self.unsynced.store(false, Ordering::Release);
        let dir = File::open(&self.layout.root)
            .ctx(|| format!("opening {}", self.layout.root.display()))?;
        // SAFETY: syncfs on a valid descriptor.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(BucketError::Io {
                context: "syncfs of the bucket's disk".into(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Group commit: syncs if anything was published since the last sync.
    pub fn sync_if_needed(&self) -> Result<()> {
        if self.unsynced.load(Ordering::Acquire) {
            self.sync()?;
        }
        Ok(())
    }

    /// Starts the group-commit thread: at most `interval` passes between a publish and its sync.
    pub fn start_committer(self: &Arc<Self>, interval: Duration) -> Committer {
        let stop = Arc::new(AtomicBool::new(false));
        let bucket = Arc::clone(self);
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("group-commit".into())
            .spawn(move || {
                let sync = || guarded_round("group-commit", || bucket.sync_if_needed());
                while !flag.load(Ordering::Acquire) {
                    std::thread::park_timeout(interval);
                    if let Some(Err(e)) = sync() {
                        log::error!("group commit failed: {e}");
                    }
                }
                if let Some(Err(e)) = sync() {
                    log::error!("final sync failed: {e}");
                }
            })
            .expect("spawning the group-commit thread");
        Committer {
            stop,
            thread: Some(thread),
        }
    }

    // ---- internals ----------------------------------------------------------------------------

    fn new_meta(&self, key: &ObjectKey, owner: u32, attrs: ObjectAttrs) -> VersionMeta {
        self.new_meta_with_id(key, owner, attrs, self.new_version_id())
    }

    fn new_meta_with_id(
        &self,
        key: &ObjectKey,
        owner: u32,
        attrs: ObjectAttrs,
        version_id: String,
    ) -> VersionMeta {
        let now = meta::now_ns();
        let retention = attrs.retention.clone().or_else(|| {
            self.settings
                .default_retention
                .as_ref()
                .filter(|_| self.settings.object_lock_enabled)
                .map(|d| Retention {
                    mode: d.mode,
                    retain_until: d.retain_until_from(time::OffsetDateTime::now_utc()),
                })
        });
        VersionMeta {
            key: key.to_string(),
            version_id,
            delete_marker: false,
            last_modified_ns: now,
            size: 0,
            etag: None,
            owner,
            posix: attrs.posix,
            symlink_target: None,
            special: None,
            user_metadata: attrs
                .user_metadata
                .iter()
                .map(|(k, v)| (k.clone(), meta::encode_value(v)))
                .collect(),
            tags: attrs.tags,
            acl: attrs.acl,
            retention,
            legal_hold: attrs.legal_hold,
            field_times: FieldTimes {
                tags: now,
                acl: now,
                retention: now,
                legal_hold: now,
            },
            replication_status: None,
            replication: None,
            replica_of: None,
            encryption: None,
            delta: None,
        }
    }

    /// Step 1 of every publish: the version's metadata, written to this session's journal.
    /// Replication work for the version is planned and queued here, before the commit: the
    /// PENDING state is part of the metadata the commit publishes.
    fn write_intent(&self, meta: &mut VersionMeta, staged: Option<&Path>) -> Result<JournalEntry> {
        self.plan_new_version(meta);
        self.enqueue(meta)?;
        self.make_key_dir(&ObjectKey::new(meta.key.clone())?)?;
        let record = PendingClose {
            staged: staged.map(Path::to_path_buf),
            meta: meta.clone(),
            overlay: None,
        };
        self.session
            .journal_open("publish", &meta.version_id, &record, self.strict())
    }

    /// Last step of every publish: moving the metadata into place is the commit point.
    fn commit_intent(
        &self,
        intent: &JournalEntry,
        key: &ObjectKey,
        meta: &VersionMeta,
    ) -> Result<()> {
        let dest = self.layout.meta_file(key, &meta.version_id);
        write_json_atomic(&dest, meta, self.durability)?;
        self.session.journal_done(intent)?;
        self.committed(key, meta)
    }

    /// After a version's metadata is in place: durability (directories under `--sync`, else
    /// the next group commit) and the replication wake-up.
    fn committed(&self, key: &ObjectKey, meta: &VersionMeta) -> Result<()> {
        if self.durability == Durability::Strict {
            sync_dir(&self.layout.key_dir(key))?;
            sync_dir(self.current_path(key).parent().unwrap_or(&self.layout.root))?;
        }
        self.note_unsynced();
        if !meta.pending_destinations().is_empty() {
            self.wake_replication();
        }
        Ok(())
    }

    fn ensure_parent(&self, path: &Path) -> Result<()> {
        if let Some(parent) = path.parent()
            && !parent.is_dir()
        {
            fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
        }
        Ok(())
    }

    /// Makes `data` the bytes at the key path, which must be free: a hard link, its parent
    /// folders made if missing. Fails with `AlreadyExists` if something is at the key path.
    fn link_new_current(&self, key: &ObjectKey, data: &Path) -> io::Result<()> {
        let current = self.current_path(key);
        in_parent(&current, || fs::hard_link(data, &current))
    }

    /// Makes the key path agree with the newest version (used by recovery and deletes).
    fn repair_current(&self, key: &ObjectKey) -> Result<()> {
        self.repair_current_knowing(key, None)
    }

    /// [`Bucket::repair_current`], given the metadata of a version just written (it is not
    /// read back if it is the newest).
    fn repair_current_knowing(&self, key: &ObjectKey, written: Option<&VersionMeta>) -> Result<()> {
        let current = self.current_path(key);
        // Only versions on disk count here: the key path itself is what is being repaired.
        let stored = self.list_tree_path(&self.layout.key_dir(key))?.versions;
        let latest = match (stored.last(), written) {
            (Some(id), Some(w)) if *id == w.version_id => Some(w.clone()),
            (Some(id), _) => Some(self.meta(key, id)?),
            (None, _) => None,
        };
        let Some(latest) = latest else {
            return remove_if_not_dir(&current);
        };
        if latest.delete_marker {
            return remove_if_not_dir(&current);
        }
        let have = fs::symlink_metadata(&current).ok();
        if have.as_ref().is_some_and(|m| m.is_dir()) {
            // Keys under "K/" exist too, and a path is either a file or a folder: the folder
            // wins (as in mountpoint-s3); the version stays in K's history.
            log::warn!(
                "{key}: version {} is kept in history but not shown at {}, a folder of other keys",
                latest.version_id,
                current.display()
            );
            return Ok(());
        }
        let tmp = self
            .session
            .stage_path(&format!("{}.repair", latest.version_id));
        if let Some(target) = &latest.symlink_target {
            if fs::read_link(&current).ok().as_deref() == Some(Path::new(target)) {
                return Ok(());
            }
            std::os::unix::fs::symlink(target, &tmp)
                .ctx(|| format!("creating symlink {}", tmp.display()))?;
        } else if let Some(special) = latest.special {
            if have.is_some_and(|m| m.mode() & libc::S_IFMT == special.mode & libc::S_IFMT) {
                return Ok(());
            }
            self.make_node(&tmp, &latest)?;
        } else {
            let data = self.layout.data_file(key, &latest.version_id);
            let want = fs::metadata(&data).ctx(|| format!("stat of {}", data.display()))?;
            if have.is_some_and(|m| m.ino() == want.ino() && m.dev() == want.dev()) {
                return Ok(());
            }
            fs::hard_link(&data, &tmp).ctx(|| format!("linking {}", data.display()))?;
        }
        self.ensure_parent(&current)?;
        fs::rename(&tmp, &current).ctx(|| format!("restoring {}", current.display()))
    }

    /// Finishes the journal of every session whose process is gone, then removes it.
    fn recover_dead_sessions(&self) -> Result<()> {
        let _guard = self.lock();
        for dead in self.session.dead_sessions(&self.layout)? {
            self.recovered_crash.store(true, Ordering::Release);
            for entry in session::journal_entries(&dead)? {
                let corrupt = |source| BucketError::CorruptMeta {
                    path: dead.join(format!("journal.log ({} {})", entry.kind, entry.id)),
                    source,
                };
                match entry.kind.as_str() {
                    "pending" | "publish" => {
                        let record: PendingClose =
                            serde_json::from_value(entry.record).map_err(corrupt)?;
                        if entry.kind == "pending" {
                            self.recover_pending(record)?;
                        } else {
                            self.recover_publish(record)?;
                        }
                    }
                    "import" => {
                        let record: QueueEntry =
                            serde_json::from_value(entry.record).map_err(corrupt)?;
                        self.recover_import(record)?;
                    }
                    "delta" => {
                        let record: delta::DeltaPublish =
                            serde_json::from_value(entry.record).map_err(corrupt)?;
                        self.recover_delta(record)?;
                    }
                    "repair" | "forget" => {
                        let meta: VersionMeta =
                            serde_json::from_value(entry.record).map_err(corrupt)?;
                        let key = ObjectKey::new(meta.key.clone())?;
                        if entry.kind == "forget" {
                            log::info!(
                                "recovery: finishing deletion of version {} of {key}",
                                meta.version_id
                            );
                            remove_if_exists(&self.layout.meta_file(&key, &meta.version_id))?;
                            remove_if_exists(&self.layout.data_file(&key, &meta.version_id))?;
                            remove_if_exists(&self.layout.undo_file(&key, &meta.version_id))?;
                            let _ = fs::remove_dir(self.layout.key_dir(&key));
                        }
                        self.repair_current(&key)?;
                    }
                    other => log::warn!("recovery: unknown journal entry kind {other:?}"),
                }
            }
            fs::remove_dir_all(&dead).ctx(|| format!("removing {}", dead.display()))?;
        }
        Ok(())
    }
}

/// A writer's close() that the daemon has not yet turned into a version (see note_pending).
#[derive(Debug, Serialize, Deserialize)]
struct PendingClose {
    staged: Option<PathBuf>,
    meta: VersionMeta,
    /// The staged file is an overlay on the current version (bucket::delta).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    overlay: Option<Overlay>,
}

impl Bucket {
    /// Rolls an interrupted publish forward if its bytes made it, else drops it.
    fn recover_publish(&self, record: PendingClose) -> Result<()> {
        let meta = record.meta;
        let key = ObjectKey::new(meta.key.clone())?;
        let data = self.layout.data_file(&key, &meta.version_id);
        if let Some(staged) = record.staged.as_ref().filter(|s| s.exists()) {
            if !data.exists() {
                fs::hard_link(staged, &data).ctx(|| format!("recovering {}", data.display()))?;
            }
            // Its bytes are the version's now; a close record naming it must not publish twice.
            remove_if_exists(staged)?;
        }
        if meta.delete_marker
            || meta.symlink_target.is_some()
            || meta.special.is_some()
            || data.exists()
        {
            log::info!("recovery: completing version {} of {key}", meta.version_id);
            write_json_atomic(
                &self.layout.meta_file(&key, &meta.version_id),
                &meta,
                self.durability,
            )?;
        }
        self.repair_current(&key)
    }

    /// Rolls an interrupted replica import back (its bytes without metadata are removed; the
    /// source still has it to do and imports it again), or, if it committed, finishes it by
    /// making the key path agree. An empty record: no import was in progress.
    fn recover_import(&self, entry: QueueEntry) -> Result<()> {
        let key = ObjectKey::new(entry.key)?;
        if !self.has_version(&key, &entry.version_id) {
            remove_if_exists(&self.layout.data_file(&key, &entry.version_id))?;
        }
        self.repair_current(&key)?;
        let _ = fs::remove_dir(self.layout.key_dir(&key)); // only if left empty
        Ok(())
    }

    fn recover_pending(&self, record: PendingClose) -> Result<()> {
        let key = ObjectKey::new(record.meta.key.clone())?;
        if let Some(staged) = record.staged.as_ref().filter(|s| s.exists()) {
            log::info!("recovery: publishing {key}, closed before the daemon died");
            // The staged file lives in the dead session's folder, removed after recovery:
            // move it into ours first.
            let ours = self.session.stage_path(&self.new_version_id());
            fs::rename(staged, &ours).ctx(|| format!("recovering {}", staged.display()))?;
            match &record.overlay {
                Some(overlay) => self.publish_overlay_locked(
                    &key,
                    &ours,
                    overlay,
                    record.meta.owner,
                    record.meta.attrs(),
                    None,
                )?,
                None => self.publish_file_locked(
                    &key,
                    &ours,
                    record.meta.owner,
                    record.meta.attrs(),
                    None,
                )?,
            };
        }
        Ok(())
    }
}

/// Stops the group-commit thread (after a last sync) when dropped.
pub struct Committer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(BucketError::Io {
            context: format!("removing {}", path.display()),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Removes the file, symlink or node at `path`; a folder (of other keys) stays.
fn remove_if_not_dir(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::EISDIR) => {
            Ok(())
        }
        r => r.ctx(|| format!("removing {}", path.display())),
    }
}

fn same_inode(a: &Path, b: &Path) -> bool {
    match (fs::symlink_metadata(a), fs::symlink_metadata(b)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

/// What the attribute of the implicit version at `path` records (format 3), if its inode
/// carries one.
fn implicit_ids(path: &Path) -> Option<ImplicitIds> {
    let value = xattr::get(path, IMPLICIT_VERSION_XATTR).ok()??;
    tombstone::parse_ids(&value)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("fsync of directory {}", dir.display()))
}

/// Creates `dir`, a key's folder in the version tree (and its missing parents); whether it is
/// new, `false` if it was already there. Usually it is (every delete marker, every version
/// after the first): one mkdir answers, without a stat, since outside `@` entries every name
/// in the version tree is a folder.
fn create_dir_new(dir: &Path) -> io::Result<bool> {
    match in_parent(dir, || fs::create_dir(dir)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Runs `op`, which makes `path`; if `path`'s folder is missing, makes it (and its parents)
/// and runs `op` once more.
fn in_parent<T>(path: &Path, op: impl Fn() -> io::Result<T>) -> io::Result<T> {
    match op() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            op()
        }
        r => r,
    }
}

fn write_file_atomic(path: &Path, bytes: &[u8], durability: Durability) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
    io::Write::write_all(&mut f, bytes).ctx(|| format!("writing {}", tmp.display()))?;
    if durability == Durability::Strict {
        f.sync_all().ctx(|| format!("fsync of {}", tmp.display()))?;
    }
    fs::rename(&tmp, path).ctx(|| format!("replacing {}", path.display()))
}

fn write_json_atomic(path: &Path, value: &impl Serialize, durability: Durability) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).expect("metadata serializes");
    write_file_atomic(path, &bytes, durability)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).ctx(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|source| BucketError::CorruptMeta {
        path: path.to_path_buf(),
        source,
    })
}

fn hex_md5(bytes: &[u8]) -> String {
    let digest = Md5::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn md5_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).ctx(|| format!("opening {}", path.display()))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .ctx(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn copy_posix_attrs(from: &File, to: &File) -> io::Result<()> {
    let st = from.metadata()?;
    to.set_permissions(fs::Permissions::from_mode(st.mode()))?;
    std::os::unix::fs::fchown(to, Some(st.uid()), Some(st.gid()))?;
    to.set_modified(st.modified()?)
}

/// FICLONE shares extents on btrfs/XFS; elsewhere copy_file_range copies inside the kernel;
/// across filesystems that the kernel cannot do, a plain read/write copy.
fn clone_or_copy(src: &File, dst: &File) -> io::Result<()> {
    // SAFETY: FICLONE takes the source descriptor as its argument; both descriptors are valid.
    let cloned = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) } == 0;
    if cloned {
        return Ok(());
    }
    let len = src.metadata()?.len();
    delta::copy_range(src, 0, dst, 0, len)
}

/// Opens the regular file at a key path for reading, never what a symlink there points to:
/// a key path the mount knows as a file holds a symlink only if it was replaced behind its
/// back (or racing a lookup), and the daemon, root most often, must not open the link's
/// target for its caller. ELOOP becomes NotFound: the object looked for is not there.
pub fn open_no_follow(path: &Path) -> io::Result<File> {
    open_in_bucket(path, libc::O_RDONLY)
}

/// [`open_no_follow`], for reading and writing.
pub fn open_no_follow_rw(path: &Path) -> io::Result<File> {
    open_in_bucket(path, libc::O_RDWR)
}

/// Opens `path` with `access`, following no symlink at its end, and, for a path relative to
/// the working directory (the mount's: the daemon works from inside its bucket), none that
/// leads out of the bucket from one of its folders (`RESOLVE_BENEATH`): a folder replaced by
/// a symlink behind bucketfs's back made the daemon open, as root, a file outside the bucket
/// for its caller. Such a path, like a symlink at its end, is NotFound. An absolute path (the
/// bucket opened as a library, `bucketfs replicate`) and a system without `openat2` get
/// `O_NOFOLLOW` alone.
fn open_in_bucket(path: &Path, access: libc::c_int) -> io::Result<File> {
    use std::os::fd::FromRawFd;
    let flags = access | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut fd = -1;
    if path.is_relative() {
        // SAFETY: open_how is three integers; all zero is its empty value.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = flags as u64;
        how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: a valid NUL-terminated path and an open_how of the size given.
        fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                libc::AT_FDCWD,
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        } as libc::c_int;
    }
    // ENOSYS: a kernel before 5.6. EPERM: a seccomp filter that predates openat2 (old
    // container runtimes). A real EPERM comes back from the plain open as well.
    if fd < 0
        && (!path.is_relative()
            || matches!(
                io::Error::last_os_error().raw_os_error(),
                Some(libc::ENOSYS | libc::EPERM)
            ))
    {
        // SAFETY: a valid NUL-terminated path.
        fd = unsafe { libc::open(c.as_ptr(), flags) };
    }
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ELOOP | libc::EXDEV) => io::Error::from(io::ErrorKind::NotFound),
            _ => e,
        });
    }
    // SAFETY: a descriptor just opened, owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}
