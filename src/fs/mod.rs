//! POSIX meaning over a [`Bucket`]: one method per filesystem operation, returning plain
//! structs and [`FsError`]. No fuser types here, so all of it is testable without a mount.
//!
//! The rules (docs/SEMANTICS.md): a file written and closed is a new version; `unlink` adds a
//! delete marker; `rename` is copy + delete marker; `.versions/` shows every version.

mod allocate;
mod dirents;
pub mod error;
pub mod nodes;
mod releaser;
pub mod stat_ahead;
pub mod xattr;

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

pub use error::{FsError, FsResult};
use parking_lot::{Condvar, Mutex, MutexGuard};

use nodes::{Fingerprint, Node, NodeKind, NodeTable, OpenState, OverlayState};
pub use nodes::{Ino, ROOT_INO, VERSIONS_INO};
use stat_ahead::StatAhead;

use crate::bucket::meta::{ObjectAttrs, system_time_from_ns};
use crate::bucket::{
    Bucket, BucketError, JournalEntry, ObjectKey, Overlay, RenameBytes, VersionMeta, key,
    open_no_follow, open_no_follow_rw,
};
use crate::panic_guard::guarded_round;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// Attributes of an inode, as `stat` shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub size: u64,
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub kind: FileKind,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

/// Who is asking (from the FUSE request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// Why a name is resolved: a caller's own request, or the kernel filling its cache from a
/// listing. Only the first says anything about what the caller will do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Asker {
    Caller,
    Listing,
}

/// The file the kernel may read and write directly (FUSE passthrough) for an open handle.
#[derive(Clone, Debug)]
pub struct Backing {
    pub file: Arc<File>,
    /// Same generation = same backing file; the adapter reuses its kernel backing id.
    pub generation: u64,
}

#[derive(Clone, Debug)]
pub struct Opened {
    pub fh: u64,
    pub backing: Backing,
    /// False when the daemon must see every read and write (an overlay is open).
    pub passthrough: bool,
    /// Only a writer's close has anything to record ([`Fs::flush`]).
    pub writable: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: OsString,
    pub kind: FileKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSpec {
    Now,
    At(SystemTime),
}

/// What `setattr` may change; None = leave alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSpec>,
    pub mtime: Option<TimeSpec>,
    pub fh: Option<u64>,
}

/// Below this size a writer's open copies the object (cheap); at or above it, when the disk
/// cannot reflink, the writer gets an overlay and publishing changes the object in place.
pub const DEFAULT_DELTA_THRESHOLD: u64 = 8 << 20;

/// An overlay written in more disjoint ranges than this becomes a full copy: its close record,
/// undo and in-place publish grow with the ranges, a copy does not.
const MAX_OVERLAY_RANGES: usize = 4096;

/// A staged file at least this big that replaces an old version has its writeback started
/// before the publish takes the lock ([`BucketFs::prepare_publish`]).
const WRITEBACK_AHEAD: u64 = 8 << 20;

/// Bytes of the base copied into an overlay per hold of the filesystem lock when it becomes a
/// full copy: a few milliseconds of waiting for other calls, not a whole big file's copy.
const FILL_STEP: u64 = 8 << 20;

#[derive(Clone, Copy, Debug)]
pub struct FsOptions {
    pub read_only: bool,
    /// Lets GOVERNANCE retention be shortened/removed and locked versions deleted (S3's
    /// `x-amz-bypass-governance-retention`). COMPLIANCE and legal holds still hold.
    pub bypass_governance: bool,
    /// See [`DEFAULT_DELTA_THRESHOLD`].
    pub delta_threshold: u64,
    /// See [`SETTLE_TIMEOUT`], [`SHARED_SETTLE_TIMEOUT`] and [`STAT_SETTLE_TIMEOUT`].
    pub settle_timeouts: SettleTimeouts,
}

#[derive(Clone, Copy, Debug)]
pub struct SettleTimeouts {
    pub first: Duration,
    pub shared: Duration,
    pub stat: Duration,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            read_only: false,
            bypass_governance: false,
            delta_threshold: DEFAULT_DELTA_THRESHOLD,
            settle_timeouts: SettleTimeouts {
                first: SETTLE_TIMEOUT,
                shared: SHARED_SETTLE_TIMEOUT,
                stat: STAT_SETTLE_TIMEOUT,
            },
        }
    }
}

#[derive(Debug)]
struct Handle {
    ino: Ino,
    writable: bool,
    /// Set once close() was called on (one descriptor of) this writer: its release is on the
    /// way. The [`OpenState::settle_epoch`] in which that close is counted in `closing`; a
    /// settle that timed out starts a new epoch, and the next close counts again.
    counted_in: Option<u32>,
}

/// What [`BucketFs::release`] publishes without the lock.
struct NewFile {
    key: ObjectKey,
    staged: PathBuf,
    writer_uid: u32,
    attrs: ObjectAttrs,
    record: Option<JournalEntry>,
}

#[derive(Debug)]
struct Inner {
    nodes: NodeTable,
    /// Inodes with closed writers whose release has not arrived (see `settle`).
    closing: HashSet<Ino>,
    handles: foldhash::HashMap<u64, Handle>,
    next_generation: u64,
}

pub struct BucketFs {
    bucket: Arc<Bucket>,
    opts: FsOptions,
    inner: Mutex<Inner>,
    /// Signalled at every release, for operations waiting on a closed file's version.
    released: Condvar,
    next_fh: AtomicU64,
    /// Owner of the staging files the daemon makes (its effective uid and gid).
    daemon_ids: (u32, u32),
    stat_ahead: StatAhead,
    /// Told when the daemon changes what a name stands for outside the request that names it.
    kernel_cache: OnceLock<Box<dyn KernelCache>>,
    /// Started by the first writer's release handed over (`None`: it could not be).
    releaser: OnceLock<Option<releaser::Releaser>>,
}

/// The kernel's caches of names and attributes, seen from the filesystem. A request on a
/// name updates the kernel's view of that name by its reply; this is for the other names a
/// request changes (removing a key's version through `.versions/` changes the key's path).
pub trait KernelCache: Send + Sync {
    /// `parent/name`, inode `ino` (`None`: a name the kernel may hold as absent), no longer
    /// stands for what the kernel may have cached.
    fn entry_changed(&self, parent: Ino, name: &OsStr, ino: Option<Ino>);
    /// The attributes of `ino` the kernel may have cached are about to change without a
    /// request of its own (a publish moves the ctime): it must ask again.
    fn attributes_changing(&self, ino: Ino);
}

/// The kernel sends RELEASE after close() has returned; an operation that needs the version
/// of a just-closed file waits this long for it. A descriptor still open elsewhere (dup,
/// fork) is why it can time out; then the operation goes on without that version.
const SETTLE_TIMEOUT: Duration = Duration::from_millis(500);
/// The wait for a file whose wait once timed out: most of its closes are not the last (a
/// script's output file is closed each time one of its commands ends), while the last close's
/// RELEASE is already queued when close() returns and only needs a worker thread to run.
const SHARED_SETTLE_TIMEOUT: Duration = Duration::from_millis(50);
/// The wait of a stat for a file's release, and of setting a folder's times for its files'
/// (publishing moves them). `ls -l` stats every file of a folder, so a descriptor kept open
/// elsewhere (`cmd > f` closes a dup of it first) would hold it at each: the wait is as short
/// as for a file known to be shared, which still covers a RELEASE already queued, and what it
/// misses is the publish's ctime.
const STAT_SETTLE_TIMEOUT: Duration = Duration::from_millis(50);

type Guard<'a> = MutexGuard<'a, Inner>;

impl BucketFs {
    pub fn new(bucket: Arc<Bucket>, opts: FsOptions) -> Self {
        let stat_ahead = StatAhead::start(vec![bucket.root().join(key::META_DIR)]);
        BucketFs {
            bucket,
            opts,
            released: Condvar::new(),
            inner: Mutex::new(Inner {
                nodes: NodeTable::new(),
                handles: Default::default(),
                closing: Default::default(),
                next_generation: 1,
            }),
            next_fh: AtomicU64::new(1),
            // SAFETY: geteuid/getegid have no preconditions.
            daemon_ids: unsafe { (libc::geteuid(), libc::getegid()) },
            stat_ahead,
            kernel_cache: OnceLock::new(),
            releaser: OnceLock::new(),
        }
    }

    /// Where to report names changed behind the kernel's back; set once, before serving.
    pub fn report_changes_to(&self, cache: Box<dyn KernelCache>) {
        if self.kernel_cache.set(cache).is_err() {
            log::warn!("a kernel cache was already set; keeping the first");
        }
    }

    pub fn bucket(&self) -> &Arc<Bucket> {
        &self.bucket
    }

    fn lock(&self) -> Guard<'_> {
        self.inner.lock()
    }

    /// Waits until every closed-but-unreleased writer of `ino` is released, so the version
    /// its close() promised is in the bucket before we look at or change the key.
    fn settle<'a>(&'a self, g: Guard<'a>, ino: Option<Ino>) -> Guard<'a> {
        self.settle_within(g, ino, self.opts.settle_timeouts.first)
    }

    /// [`Self::settle`], waiting at most `first` for a file not yet known to be shared.
    fn settle_within<'a>(&'a self, g: Guard<'a>, ino: Option<Ino>, first: Duration) -> Guard<'a> {
        let Some(ino) = ino else { return g };
        fn open(inner: &Inner, ino: Ino) -> Option<&OpenState> {
            inner.nodes.get(ino).and_then(|n| n.open.as_deref())
        }
        let busy =
            |inner: &mut Inner| open(inner, ino).is_some_and(|o| o.closing > 0 || o.publishing);
        let mut g = g;
        if !busy(&mut g) {
            return g;
        }
        let timeout = match open(&g, ino).is_some_and(OpenState::is_shared) {
            true => self.opts.settle_timeouts.shared,
            false => first,
        };
        let wait = self.released.wait_while_for(&mut g, busy, timeout);
        let mut g = self.settle_publish(g, ino);
        if wait.timed_out()
            && let Some(open) = g.nodes.get_mut(ino).and_then(|n| n.open.as_mut())
            && open.closing > 0
        {
            log::debug!(
                "inode {ino}: a closed descriptor is still shared; waited {timeout:?}, not waiting longer"
            );
            open.closing = 0;
            // The descriptor still open will be closed too, and that close is waited for.
            open.settle_epoch = open.settle_epoch.saturating_add(1);
        }
        g.closing.remove(&ino);
        g
    }

    /// Waits for the publish of `ino`'s version that a release is doing without the lock:
    /// no timeout, it ends by itself, and what comes after must not race it.
    fn settle_publish<'a>(&'a self, mut g: Guard<'a>, ino: Ino) -> Guard<'a> {
        let publishing = |inner: &mut Inner| {
            inner
                .nodes
                .get(ino)
                .and_then(|n| n.open.as_deref())
                .is_some_and(|o| o.publishing)
        };
        self.released.wait_while(&mut g, publishing);
        g
    }

    /// [`Self::settle`] for every entry of directory `dir` (its times change when they are
    /// published), before its times are set: `tar` and `rsync` set a folder's times after
    /// writing its files, and a publish landing after that would move them. Free when nothing
    /// is closing, which is almost always. Files known to be shared are skipped: a script
    /// whose output goes to a file in the folder closes a descriptor of it each time a command
    /// ends, and its folder's times are not worth a wait each time.
    fn settle_children<'a>(&'a self, g: Guard<'a>, dir: Ino) -> Guard<'a> {
        if g.closing.is_empty() {
            return g;
        }
        let children: Vec<Ino> = g
            .closing
            .iter()
            .copied()
            .filter(|i| {
                g.nodes.get(*i).is_some_and(|n| {
                    n.parent == dir && !n.open.as_ref().is_some_and(|o| o.is_shared())
                })
            })
            .collect();
        let wait = self.opts.settle_timeouts.stat;
        children
            .into_iter()
            .fold(g, |g, ino| self.settle_within(g, Some(ino), wait))
    }

    /// Under `.versions/`, what is listed depends on versions that closes promised: wait for
    /// the keys concerned (all of them for a listing, `prefix/name` for a lookup).
    fn settle_versions_view<'a>(
        &'a self,
        g: Guard<'a>,
        dir: Ino,
        name: Option<&OsStr>,
    ) -> Guard<'a> {
        let Some(NodeKind::VersionsDir { prefix }) = g.nodes.get(dir).map(|n| n.kind.clone())
        else {
            return g;
        };
        match name.and_then(OsStr::to_str) {
            Some(name) => {
                let g = self.settle_key(g, &prefix);
                self.settle_key(g, &join_prefix(&prefix, name))
            }
            None => {
                let closing: Vec<Ino> = g.closing.iter().copied().collect();
                closing
                    .into_iter()
                    .fold(g, |g, ino| self.settle(g, Some(ino)))
            }
        }
    }

    /// [`Self::settle`] for the live node of `key`, if the kernel holds one.
    fn settle_key<'a>(&'a self, g: Guard<'a>, key: &str) -> Guard<'a> {
        let ino = Self::live_node_of_key(&g, key);
        self.settle(g, ino.filter(|i| *i != ROOT_INO))
    }

    /// The node the kernel holds for `key`'s path (the root for the empty key), if any.
    fn live_node_of_key(g: &Guard<'_>, key: &str) -> Option<Ino> {
        key.split('/')
            .filter(|p| !p.is_empty())
            .try_fold(ROOT_INO, |ino, part| g.nodes.child(ino, OsStr::new(part)))
    }

    /// The first name along `key`'s path for which the kernel holds no node, and the live
    /// folder it would be in: where it may have cached the name as absent.
    fn first_unknown_name(g: &Guard<'_>, key: &str) -> Option<(Ino, OsString)> {
        let mut ino = ROOT_INO;
        for part in key.split('/').filter(|p| !p.is_empty()) {
            match g.nodes.child(ino, OsStr::new(part)) {
                Some(child) => ino = child,
                None => {
                    return (g.nodes.get(ino)?.kind == NodeKind::Dir).then(|| (ino, part.into()));
                }
            }
        }
        None
    }

    /// `key`'s path as the kernel holds it (parent, name, inode), when it holds it as a file
    /// or symlink. A folder at that path is left alone: it is not the key's object.
    fn live_file_of_key(g: &Guard<'_>, key: &str) -> Option<(Ino, OsString, Ino)> {
        let ino = Self::live_node_of_key(g, key)?;
        let node = g.nodes.get(ino)?;
        matches!(
            node.kind,
            NodeKind::File | NodeKind::Symlink | NodeKind::Special
        )
        .then(|| (node.parent, node.name.clone(), ino))
    }

    /// Number of inodes held in memory (for tests and metrics: it follows kernel lookups).
    pub fn inode_count(&self) -> usize {
        self.lock().nodes.len()
    }

    fn xattr_policy(&self) -> xattr::Policy {
        xattr::Policy {
            object_lock_enabled: self.bucket.settings().object_lock_enabled,
            bypass_governance: self.opts.bypass_governance,
        }
    }

    fn check_writable(&self, what: &str) -> FsResult<()> {
        if self.opts.read_only {
            Err(FsError::ReadOnly(format!("{what}: mounted --read-only")))
        } else {
            Ok(())
        }
    }

    // ---- names and attributes ---------------------------------------------------------------

    /// LOOKUP: a name the caller asked for.
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> FsResult<Attr> {
        self.lookup_by(parent, name, Asker::Caller)
    }

    /// May the kernel remember, for as long as it keeps an entry, that a name is absent from
    /// `parent`? In the live tree, yes: a name appears there by a request on it (create,
    /// mkdir, rename), which the kernel sees, or by an undelete through `.versions/`, which
    /// tells it (`KernelCache::entry_changed`). Under `.versions/`, no: versions appear with
    /// every publish.
    pub fn absence_cacheable(&self, parent: Ino) -> bool {
        self.lock()
            .nodes
            .get(parent)
            .is_some_and(|n| n.kind == NodeKind::Dir)
    }

    /// A name of a listing answered with attributes (READDIRPLUS) for a reader not known to
    /// stat what it lists: the kernel fills its cache whether or not anyone stats the entry,
    /// so it sets off no stat-ahead (for `find`, every folder read ahead was wasted work).
    pub fn lookup_listed(&self, parent: Ino, name: &OsStr) -> FsResult<Attr> {
        self.lookup_by(parent, name, Asker::Listing)
    }

    fn lookup_by(&self, parent: Ino, name: &OsStr, asker: Asker) -> FsResult<Attr> {
        let g = self.lock();
        // Tests make a lookup of one name panic, holding the lock, to check that the mount
        // survives a bug (tests/faults.rs).
        #[cfg(feature = "failpoints")]
        if fail::eval("fs::lookup", |name| name)
            .flatten()
            .is_some_and(|panic_on| name == panic_on.as_str())
        {
            panic!("fail point fs::lookup: {name:?}");
        }
        let mut g = self.settle_versions_view(g, parent, Some(name));
        let (kind, meta) = self.resolve_child_meta(&g, parent, name, asker)?;
        let ino = g.nodes.lookup(parent, name, kind);
        match meta {
            // The stat that resolved the name is the attribute (one lstat per entry of `ls -l`).
            Some(m) if g.nodes.get(ino).is_some_and(|n| n.open.is_none()) => {
                let mut attr = attr_from_metadata(ino, &m);
                if attr.kind != FileKind::Dir {
                    attr.nlink = 1;
                }
                Ok(attr)
            }
            _ => self.attr_locked(&g, ino),
        }
    }

    pub fn forget(&self, ino: Ino, n: u64) {
        let mut g = self.lock();
        let forgotten_folder = g
            .nodes
            .forget(ino, n)
            .filter(|node| matches!(node.kind, NodeKind::Dir))
            .and_then(|node| {
                let parent = g.nodes.key_of(node.parent)?;
                Some(join_prefix(&parent, node.name.to_str()?))
            });
        drop(g);
        if let Some(prefix) = forgotten_folder {
            self.stat_ahead.forgotten(&self.bucket.prefix_path(&prefix));
        }
    }

    /// What `parent/name` is right now, without creating a node.
    fn resolve_child(&self, g: &Guard<'_>, parent: Ino, name: &OsStr) -> FsResult<NodeKind> {
        self.resolve_child_meta(g, parent, name, Asker::Caller)
            .map(|(kind, _)| kind)
    }

    /// [`Self::resolve_child`], with the key path's metadata when it was read on the way.
    fn resolve_child_meta(
        &self,
        g: &Guard<'_>,
        parent: Ino,
        name: &OsStr,
        asker: Asker,
    ) -> FsResult<(NodeKind, Option<fs::Metadata>)> {
        let pnode = g.nodes.get(parent).ok_or(FsError::NotFound)?;
        let name_str = name.to_str().ok_or_else(|| FsError::InvalidValue {
            name: name.to_string_lossy().into(),
            reason: "file names must be UTF-8 (S3 keys are UTF-8)".into(),
        })?;
        match &pnode.kind {
            NodeKind::VersionsDir { prefix } => {
                if !prefix.is_empty() {
                    let key = ObjectKey::new(prefix.clone())?;
                    if self
                        .bucket
                        .meta(&key, name_str)
                        .map(|m| m.version_id == name_str)
                        .unwrap_or(false)
                    {
                        return Ok((
                            NodeKind::VersionEntry {
                                key: prefix.clone(),
                                version_id: name_str.to_string(),
                            },
                            None,
                        ));
                    }
                }
                let child = join_prefix(prefix, name_str);
                if self.bucket.tree_exists(&child) {
                    Ok((NodeKind::VersionsDir { prefix: child }, None))
                } else {
                    Err(FsError::NotFound)
                }
            }
            NodeKind::Dir => {
                if parent == ROOT_INO {
                    if name_str == key::VERSIONS_DIR {
                        return Ok((
                            NodeKind::VersionsDir {
                                prefix: String::new(),
                            },
                            None,
                        ));
                    }
                    if name_str == key::META_DIR {
                        return Err(FsError::NotFound);
                    }
                }
                if let Some(ino) = g.nodes.child(parent, name)
                    && let Some(node) = g.nodes.get(ino)
                    && node.open.as_ref().is_some_and(|o| o.staging.is_some())
                {
                    return Ok((node.kind.clone(), None));
                }
                let prefix = g.nodes.key_of(parent).ok_or(FsError::NotFound)?;
                let path = self.bucket.prefix_path(&join_prefix(&prefix, name_str));
                let found = match self.stat_ahead.take(&path) {
                    Some(read_ahead) => Ok(read_ahead),
                    None => fs::symlink_metadata(&path),
                };
                match found {
                    Ok(m) => {
                        if asker == Asker::Caller
                            && let Some(folder) = path.parent()
                        {
                            self.stat_ahead.found_in(folder);
                        }
                        let kind = if m.is_dir() {
                            NodeKind::Dir
                        } else if m.file_type().is_symlink() {
                            NodeKind::Symlink
                        } else if m.is_file() {
                            NodeKind::File
                        } else {
                            NodeKind::Special
                        };
                        Ok((kind, Some(m)))
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Err(FsError::NotFound),
                    Err(e) => Err(e.into()),
                }
            }
            _ => Err(FsError::NotDir(name_str.to_string())),
        }
    }

    /// stat(2) of a node the kernel holds; [`FsError::Stale`] if its object was removed since
    /// it was looked up (see [`Self::open`]): the kernel's permission check before an open
    /// asks this too, and ENOENT there would fail `open(O_CREAT)`.
    pub fn getattr(&self, ino: Ino) -> FsResult<Attr> {
        // Publishing links the file into the version tree, which moves its ctime: stat after
        // close() shows the published file, not the one a moment before. A folder's stat
        // does not wait for its files' publishes: it is in every path walk of the process
        // that closed them, and the create already moved the folder's times (`create_new`).
        let g = self.lock();
        let g = self.settle_within(g, Some(ino), self.opts.settle_timeouts.stat);
        self.attr_locked(&g, ino).map_err(stale_if_gone)
    }

    fn attr_locked(&self, g: &Guard<'_>, ino: Ino) -> FsResult<Attr> {
        let node = g.nodes.get(ino).ok_or(FsError::NotFound)?;
        match &node.kind {
            NodeKind::VersionsDir { .. } => {
                let m = fs::metadata(self.bucket.root())?;
                Ok(Attr {
                    perm: 0o555,
                    nlink: 2,
                    ..attr_from_metadata(ino, &m)
                })
            }
            NodeKind::VersionEntry { key, version_id } => {
                let meta = self
                    .bucket
                    .meta(&ObjectKey::new(key.clone())?, version_id)?;
                Ok(version_attr(ino, &meta))
            }
            NodeKind::Dir | NodeKind::File | NodeKind::Symlink | NodeKind::Special => {
                let m = match &node.open {
                    Some(open) => open.backing.metadata()?,
                    // A file removed or replaced since the kernel looked it up: whatever its
                    // path holds now is not this node's object.
                    None if node.is_gone() => return Err(FsError::NotFound),
                    None => {
                        let key = g.nodes.key_of(ino).ok_or(FsError::NotFound)?;
                        let m = fs::symlink_metadata(self.bucket.prefix_path(&key))
                            .map_err(|e| gone_if_missing(e.into()))?;
                        // Nor is something of another type there (a file replaced by a
                        // symlink by another process): the kernel marks an inode whose type
                        // changes bad, and every call on it fails with EIO.
                        if !kind_matches(&node.kind, m.file_type()) {
                            return Err(FsError::NotFound);
                        }
                        m
                    }
                };
                Ok(node_attr(ino, node, &m))
            }
        }
    }

    fn live_key(&self, g: &Guard<'_>, ino: Ino) -> FsResult<ObjectKey> {
        let key = g
            .nodes
            .key_of(ino)
            .ok_or_else(|| FsError::ReadOnly(".versions is read-only".into()))?;
        Ok(ObjectKey::new(key)?)
    }

    /// The key of a new entry `name` in live directory `parent`.
    fn new_child_key(&self, g: &Guard<'_>, parent: Ino, name: &OsStr) -> FsResult<ObjectKey> {
        let pnode = g.nodes.get(parent).ok_or(FsError::NotFound)?;
        if !matches!(pnode.kind, NodeKind::Dir) {
            return Err(match pnode.kind {
                NodeKind::VersionsDir { .. } => {
                    FsError::ReadOnly(".versions is read-only: restore with cp".into())
                }
                _ => FsError::NotDir(name.to_string_lossy().into()),
            });
        }
        let prefix = g.nodes.key_of(parent).ok_or(FsError::NotFound)?;
        let name = name.to_str().ok_or_else(|| FsError::InvalidValue {
            name: name.to_string_lossy().into(),
            reason: "file names must be UTF-8 (S3 keys are UTF-8)".into(),
        })?;
        Ok(ObjectKey::child(&prefix, name)?)
    }

    /// chmod, chown, utimens and truncate. [`FsError::Stale`] for a node whose object was
    /// removed since the kernel looked it up: its path may hold another object now, even a
    /// symlink to anywhere, and the change must not reach that.
    pub fn setattr(&self, ino: Ino, caller: Caller, set: SetAttr) -> FsResult<Attr> {
        self.setattr_node(ino, caller, set).map_err(stale_if_gone)
    }

    fn setattr_node(&self, ino: Ino, caller: Caller, set: SetAttr) -> FsResult<Attr> {
        let _changing = self.stat_ahead.changing();
        let g = self.lock();
        let g = self.settle(g, Some(ino));
        let mut g = match set.atime.is_some() || set.mtime.is_some() {
            true => self.settle_children(g, ino),
            false => g,
        };
        let node = held_node(&g, ino)?;
        if matches!(
            node.kind,
            NodeKind::VersionsDir { .. } | NodeKind::VersionEntry { .. }
        ) {
            return Err(FsError::ReadOnly("versions are immutable".into()));
        }
        self.check_writable("setattr")?;
        let key = g.nodes.key_of(ino).ok_or(FsError::NotFound)?;
        if let Some(size) = set.size {
            self.truncate_locked(&mut g, ino, caller, size)?;
        }
        let node = g.nodes.get(ino).ok_or(FsError::NotFound)?;
        let path = self.bucket.prefix_path(&key);
        let is_symlink = node.kind == NodeKind::Symlink;
        if let (Some(uid), NodeKind::File) = (set.uid, &node.kind) {
            self.bucket
                .keep_owner_through_chown(&ObjectKey::new(key.clone())?, uid)?;
        }
        let open = node
            .open
            .as_ref()
            .map(|o| (o.backing.clone(), o.staging.is_some(), o.dirty));
        // `tar` sets times, owner and mode of every file it writes: three of these on a file
        // still being written, each a round trip, so each stats only what it must.
        let mut published = true;
        let mut open_after = None;
        if let Some((backing, staged, dirty)) = open {
            // A new mtime is not new content: keep the open file's change detection honest.
            // Content already known to be new (a created or truncated file) needs no check.
            let before = if dirty {
                None
            } else {
                Some(fingerprint(&backing)?)
            };
            apply_posix(Some(&backing), &path, &set, false)?;
            let after = backing.metadata()?;
            let new_content = match g.nodes.get_mut(ino).and_then(|n| n.open.as_mut()) {
                Some(open) => {
                    open.dirty |= before.is_some_and(|b| b != open.fingerprint);
                    open.fingerprint = fingerprint_of(&after);
                    open.dirty
                }
                None => dirty,
            };
            // A staged copy with nothing new in it is published by no close: the current
            // version gets the change too, as chmod on a file open elsewhere would on any
            // filesystem. New content will be published with the change, and the version it
            // replaces keeps the attributes it had.
            if staged {
                published = !new_content && fs::symlink_metadata(&path).is_ok();
                if published {
                    apply_posix(None, &path, &set, false)?;
                }
            }
            open_after = Some(after);
        } else {
            apply_posix(None, &path, &set, is_symlink).map_err(gone_if_missing)?;
        }
        let recorded = if published
            && g.nodes
                .get(ino)
                .is_some_and(|n| matches!(n.kind, NodeKind::File | NodeKind::Special))
        {
            self.record_posix(&g, ino)?
        } else {
            None
        };
        // What the open file's inode says now is what a stat of it would say; else the key
        // path's, as record_posix just read it.
        match open_after.or(recorded) {
            Some(m) => Ok(node_attr(
                ino,
                g.nodes.get(ino).ok_or(FsError::NotFound)?,
                &m,
            )),
            None => self.attr_locked(&g, ino),
        }
    }

    /// Keeps the current version's recorded POSIX attributes in step with its inode (they
    /// travel with the version, e.g. to replicas). Returns what is at the key path, if the
    /// version is published.
    fn record_posix(&self, g: &Guard<'_>, ino: Ino) -> FsResult<Option<fs::Metadata>> {
        let key = self.live_key(g, ino)?;
        let Ok(m) = fs::symlink_metadata(self.bucket.current_path(&key)) else {
            return Ok(None); // not published yet
        };
        let attr = attr_from_metadata(ino, &m);
        if let Some(cur) = self.bucket.current_recorded(&key)? {
            let posix = crate::bucket::PosixAttrs {
                mode: m.mode(),
                uid: attr.uid,
                gid: attr.gid,
                mtime_ns: crate::bucket::meta::ns_from_system_time(attr.mtime),
            };
            if cur.posix != Some(posix) {
                self.bucket
                    .update_meta::<FsError>(&key, &cur.version_id, |m| {
                        m.posix = Some(posix);
                        if let Some(special) = m.special.as_mut() {
                            special.mode = posix.mode; // recovery recreates the node with it
                        }
                        Ok(())
                    })?;
            }
        }
        Ok(Some(m))
    }

    fn truncate_locked(
        &self,
        g: &mut Guard<'_>,
        ino: Ino,
        caller: Caller,
        size: u64,
    ) -> FsResult<()> {
        let node = g.nodes.get(ino).ok_or(FsError::NotFound)?;
        if node.kind == NodeKind::Dir {
            return Err(FsError::IsDir(node.name.to_string_lossy().into()));
        }
        // Truncating by path (no writer open) is a whole write cycle: a new version.
        let temporary = node.open.as_ref().is_none_or(|o| o.writers == 0);
        if temporary {
            self.open_state_for_write(g, ino, size == 0, caller)?;
        }
        let open = g
            .nodes
            .get_mut(ino)
            .and_then(|n| n.open.as_mut())
            .expect("writer state exists");
        if temporary {
            open.handles += 1; // released below, like any handle
        }
        set_len(open, size)?;
        if temporary {
            self.publish_if_changed(g, ino)?;
            self.release_state(g, ino, true);
        }
        Ok(())
    }

    // ---- open files ----------------------------------------------------------------------------

    /// open(2) of a node the kernel looked up. `caller` opening for writing becomes the owner
    /// (S3's creator) of the version its close publishes: RELEASE, where publishing happens,
    /// carries no caller identity. If the node's object is gone meanwhile (removed by another
    /// caller between the lookup and this open), the answer is [`FsError::Stale`]: the kernel
    /// then looks the name up again, so `open(O_CREAT)` creates the file instead of failing
    /// with ENOENT, and any other open fails with ENOENT.
    pub fn open(&self, ino: Ino, flags: i32, caller: Caller) -> FsResult<Opened> {
        self.open_node(ino, flags, caller).map_err(stale_if_gone)
    }

    fn open_node(&self, ino: Ino, flags: i32, caller: Caller) -> FsResult<Opened> {
        // Opening to read changes nothing a stat shows: `tar` or `rsync` reading a folder
        // keeps the attributes read ahead for the names it has yet to look up.
        let changes = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let _changing = changes.then(|| self.stat_ahead.changing());
        let g = self.lock();
        let mut g = self.settle(g, Some(ino));
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let truncate = flags & libc::O_TRUNC != 0 && writable;
        let node = g.nodes.get(ino).ok_or(FsError::NotFound)?;
        match &node.kind {
            NodeKind::Dir | NodeKind::VersionsDir { .. } => {
                return Err(FsError::IsDir(node.name.to_string_lossy().into()));
            }
            NodeKind::VersionEntry { key, version_id } => {
                if writable {
                    return Err(FsError::ReadOnly("versions are immutable".into()));
                }
                if node.open.is_none() {
                    let key = ObjectKey::new(key.clone())?;
                    let meta = self.bucket.meta(&key, version_id)?;
                    let file = if meta.delete_marker
                        || meta.symlink_target.is_some()
                        || meta.special.is_some()
                    {
                        // Markers read as empty, symlink versions as their target text.
                        let staged = self.bucket.stage_empty()?;
                        if let Some(t) = &meta.symlink_target {
                            staged.file.write_all_at(t.as_bytes(), 0)?;
                        }
                        self.bucket.discard_staged(&staged.path);
                        staged.file
                    } else {
                        open_no_follow(&self.bucket.version_bytes_path(&key, version_id)?)
                            .map_err(|e| gone_if_missing(e.into()))?
                    };
                    self.install_state(&mut g, ino, file, None);
                }
            }
            // The kernel serves FIFOs and devices itself; it never asks us to open them.
            NodeKind::Symlink | NodeKind::Special => {
                return Err(FsError::Unsupported(
                    "opening a symlink or special file".into(),
                ));
            }
            // Removed since the kernel looked it up (a race with an unlink or rename): its key
            // path holds another object now, perhaps a symlink to anywhere.
            NodeKind::File if node.is_gone() => return Err(FsError::NotFound),
            NodeKind::File => {
                if writable {
                    self.check_writable("open for writing")?;
                    self.open_state_for_write(&mut g, ino, truncate, caller)?;
                } else if node.open.is_none() {
                    let key = self.live_key(&g, ino)?;
                    let file = open_backing_file(&self.bucket.current_path(&key))?;
                    self.install_state(&mut g, ino, file, None);
                }
            }
        }
        let open = g
            .nodes
            .get_mut(ino)
            .and_then(|n| n.open.as_mut())
            .expect("state installed");
        open.handles += 1;
        if truncate && open.backing.metadata()?.len() > 0 {
            set_len(open, 0)?;
        }
        let passthrough = open.passthrough;
        let backing = Backing {
            file: open.backing.clone(),
            generation: open.generation,
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        g.handles.insert(
            fh,
            Handle {
                ino,
                writable,
                counted_in: None,
            },
        );
        Ok(Opened {
            fh,
            backing,
            passthrough,
            writable,
        })
    }

    /// Returns the backing file's metadata it read, which is what a stat of the node says now.
    fn install_state(
        &self,
        g: &mut Guard<'_>,
        ino: Ino,
        file: File,
        staging: Option<PathBuf>,
    ) -> Option<fs::Metadata> {
        let generation = g.next_generation;
        g.next_generation += 1;
        let metadata = file.metadata().ok();
        let fingerprint = metadata.as_ref().map_or(
            Fingerprint {
                size: 0,
                mtime_ns: 0,
            },
            fingerprint_of,
        );
        if let Some(node) = g.nodes.get_mut(ino) {
            node.open = Some(Box::new(OpenState {
                backing: Arc::new(file),
                staging,
                generation,
                handles: 0,
                writers: 0,
                closing: 0,
                settle_epoch: 0,
                publishing: false,
                dirty: false,
                fingerprint,
                pending: ObjectAttrs::default(),
                pending_changed: false,
                close_record: None,
                recorded_overlay: None,
                writer_uid: 0,
                overlay: None,
                replaces: false,
                passthrough: true,
            }));
        }
        metadata
    }

    /// Whether a writer of `current` gets an overlay instead of a copy: big enough to be worth
    /// it, no cheap reflink, and no replication still to read the bytes that would change.
    fn overlay_fits(&self, current: &VersionMeta) -> bool {
        !current.delete_marker
            && current.symlink_target.is_none()
            && current.special.is_none()
            && current.size >= self.opts.delta_threshold
            && current.pending_destinations().is_empty()
            && !self.bucket.supports_reflink()
    }

    /// Turns `ino`'s overlay, if it has one, into a whole staged file, holding the lock
    /// throughout: for a caller that must not let go before it is whole.
    fn fill_overlay(&self, g: &mut Guard<'_>, ino: Ino) -> FsResult<()> {
        let mut step = Some(0);
        while let Some(from) = step {
            step = self.fill_overlay_step(g, ino, from)?;
        }
        Ok(())
    }

    /// Turns `ino`'s overlay, if it has one, into a whole staged file, one step per hold of
    /// the lock, handed on fairly after each: copying a big file's bytes stalls no other call
    /// for longer than a step.
    fn fill_overlay_in_steps(&self, ino: Ino) -> FsResult<()> {
        fn generation(g: &Guard<'_>, ino: Ino) -> Option<u64> {
            g.nodes.get(ino)?.open.as_ref().map(|o| o.generation)
        }
        let Some(filling) = generation(&self.lock(), ino) else {
            return Ok(());
        };
        let mut step = Some(0);
        while let Some(from) = step {
            let mut g = self.lock();
            // Between two steps the writers may all have gone and others come with a new
            // overlay, whose first steps this fill never copied: it stops there.
            if generation(&g, ino) != Some(filling) {
                return Ok(());
            }
            step = self.fill_overlay_step(&mut g, ino, from)?;
            Guard::unlock_fair(g);
        }
        Ok(())
    }

    /// [`Self::fill_overlay_in_steps`] on a thread of its own, for an overlay written in too
    /// many ranges: the write that crossed the limit returns at once, and the writers go on
    /// while the base's bytes are copied (inline, one write of a 1 GiB file's waited 2.9 s).
    /// The last writer's release finishes the copy if this thread has not.
    fn fill_overlay_in_background(self: &Arc<Self>, ino: Ino) {
        // An overlay still there afterwards (the fill failed, or had no thread) stays a delta,
        // slower, nothing lost: the next write past the limit tries again.
        let done = move |fs: &Self| {
            if let Some(o) = fs
                .lock()
                .nodes
                .get_mut(ino)
                .and_then(|n| n.open.as_mut())
                .and_then(|o| o.overlay.as_mut())
            {
                o.filling = false;
            }
        };
        let fs = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("overlay-fill".into())
            .spawn(move || {
                let filled = guarded_round("overlay-fill", || fs.fill_overlay_in_steps(ino));
                if let Some(Err(e)) = filled {
                    log::warn!("inode {ino}: filling its overlay with the base's bytes: {e}");
                }
                done(&fs);
            });
        if let Err(e) = spawned {
            log::warn!("inode {ino}: no thread to fill its overlay ({e}); its release will");
            done(self);
        }
    }

    /// Copies one step of the base's bytes, from `from` on, into the holes of `ino`'s overlay;
    /// where the next step starts, or None once the staged file is whole and the overlay gone.
    /// The state may have changed since the last step (writes, a truncate): each step copies
    /// only what is unwritten at that moment.
    fn fill_overlay_step(&self, g: &mut Guard<'_>, ino: Ino, from: u64) -> FsResult<Option<u64>> {
        let Some(open) = g.nodes.get_mut(ino).and_then(|n| n.open.as_mut()) else {
            return Ok(None);
        };
        let Some(o) = open.overlay.as_mut() else {
            return Ok(None);
        };
        let end = o.overlay.base_end();
        if from >= end {
            open.overlay = None;
            let by = std::thread::current();
            let by = by.name().unwrap_or("a");
            log::debug!("inode {ino}: overlay filled, a full copy now (by {by} thread)");
            return Ok(None);
        }
        let to = end.min(from + FILL_STEP);
        o.overlay.copy_unwritten(&o.base, &open.backing, from, to)?;
        // The staged file holds the writer's view of the step now, as if written.
        o.overlay.record_write(from, to - from);
        Ok(Some(to))
    }

    /// Makes sure `ino` has a private, writable backing file and counts one writer on it.
    fn open_state_for_write(
        &self,
        g: &mut Guard<'_>,
        ino: Ino,
        truncate: bool,
        caller: Caller,
    ) -> FsResult<()> {
        let key = self.live_key(g, ino)?;
        let node = g.nodes.get(ino).ok_or(FsError::NotFound)?;
        let current = self.bucket.current(&key)?;
        let pending = current
            .as_ref()
            .map(|m| m.attrs().for_new_version())
            .unwrap_or_default();
        match &node.open {
            None => {
                let current_path = self.bucket.current_path(&key);
                let mut overlay = None;
                let staged = if truncate {
                    let s = self.bucket.stage_empty()?;
                    if let Ok(m) = fs::symlink_metadata(&current_path)
                        && m.is_file()
                    {
                        s.file.set_permissions(m.permissions())?;
                        std::os::unix::fs::fchown(&s.file, Some(m.uid()), Some(m.gid()))?;
                    }
                    s
                } else {
                    let src =
                        open_no_follow(&current_path).map_err(|e| gone_if_missing(e.into()))?;
                    let m = src.metadata()?;
                    let s = match current.as_ref().filter(|c| self.overlay_fits(c)) {
                        // A big object: write beside it, change it in place at publish.
                        Some(base) => {
                            let s = self.bucket.stage_empty()?;
                            s.file.set_len(m.len())?;
                            overlay = Some(Box::new(OverlayState {
                                overlay: Overlay::new(&key, base),
                                base: src,
                                filling: false,
                            }));
                            s
                        }
                        None => self.bucket.stage_copy(&src)?,
                    };
                    s.file.set_permissions(m.permissions())?;
                    std::os::unix::fs::fchown(&s.file, Some(m.uid()), Some(m.gid()))?;
                    s.file.set_modified(m.modified()?)?;
                    s
                };
                self.install_state(g, ino, staged.file, Some(staged.path));
                let open = g.nodes.get_mut(ino).and_then(|n| n.open.as_mut()).unwrap();
                open.passthrough = overlay.is_none();
                open.overlay = overlay;
                open.pending = pending;
                open.replaces = current.is_some();
                open.dirty = truncate && current.as_ref().is_some_and(|c| c.size > 0);
            }
            Some(open) if open.staging.is_none() && !node.unlinked => {
                // Readers already use the published inode: move it out of the version (which
                // gets a copy) so everyone keeps sharing one backing file, as the kernel wants.
                let staged = self.bucket.detach_current(&key)?;
                let open = g.nodes.get_mut(ino).and_then(|n| n.open.as_mut()).unwrap();
                open.staging = Some(staged);
                open.pending = pending;
                open.fingerprint = fingerprint(&open.backing)?;
            }
            Some(_) => {}
        }
        let open = g.nodes.get_mut(ino).and_then(|n| n.open.as_mut()).unwrap();
        if open.writers == 0 {
            open.writer_uid = caller.uid;
        }
        open.writers += 1;
        Ok(())
    }

    pub fn create(
        &self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        flags: i32,
        caller: Caller,
    ) -> FsResult<(Attr, Opened)> {
        let _changing = self.stat_ahead.changing();
        self.check_writable("create")?;
        {
            let mut g = self.lock();
            let key = self.new_child_key(&g, parent, name)?;
            if fs::symlink_metadata(self.bucket.current_path(&key)).is_err() {
                // A node whose object is gone (its last version removed under .versions/, or
                // deleted by another process) and that the kernel has yet to forget: the name
                // is free.
                if let Some(ino) = g.nodes.child(parent, name)
                    && !g.nodes.holds_unpublished_version(ino)
                {
                    g.nodes.detach(ino);
                }
                if g.nodes.child(parent, name).is_none() {
                    drop(g);
                    return self.create_new(parent, name, mode, caller);
                }
            }
        }
        if flags & libc::O_EXCL != 0 {
            return Err(FsError::Exists(name.to_string_lossy().into()));
        }
        let attr = self.lookup(parent, name)?;
        let opened = self.open(attr.ino, flags, caller)?;
        Ok((self.getattr(attr.ino)?, opened))
    }

    fn create_new(
        &self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        caller: Caller,
    ) -> FsResult<(Attr, Opened)> {
        if mode & libc::S_IFMT != 0 && mode & libc::S_IFMT != libc::S_IFREG {
            return Err(FsError::UnsupportedFileType(name.to_string_lossy().into()));
        }
        let mut g = self.lock();
        self.new_child_key(&g, parent, name)?;
        let staged = self.bucket.stage_empty()?;
        staged
            .file
            .set_permissions(fs::Permissions::from_mode(mode & 0o7777))?;
        let gid = self.new_gid(&g, parent, caller);
        if (caller.uid, gid) != self.daemon_ids {
            std::os::unix::fs::fchown(&staged.file, Some(caller.uid), Some(gid))?;
        }
        let ino = g.nodes.lookup(parent, name, NodeKind::File);
        // The name is the folder's from now on, as on any filesystem, so its times move now;
        // the publish moves them again, and a stat of the folder need not wait for it.
        if let Some(folder) = g.nodes.key_of(parent)
            && let Err(e) = set_times(
                None,
                &self.bucket.prefix_path(&folder),
                None,
                Some(TimeSpec::Now),
            )
        {
            log::debug!("times of folder {folder:?} at a create: {e}");
        }
        let metadata = self.install_state(&mut g, ino, staged.file, Some(staged.path));
        let open = g.nodes.get_mut(ino).and_then(|n| n.open.as_mut()).unwrap();
        open.handles = 1;
        open.writers = 1;
        open.writer_uid = caller.uid;
        open.dirty = true;
        let backing = Backing {
            file: open.backing.clone(),
            generation: open.generation,
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        g.handles.insert(
            fh,
            Handle {
                ino,
                writable: true,
                counted_in: None,
            },
        );
        let attr = match (metadata, g.nodes.get(ino)) {
            (Some(m), Some(node)) => node_attr(ino, node, &m),
            _ => self.attr_locked(&g, ino)?,
        };
        Ok((
            attr,
            Opened {
                fh,
                backing,
                passthrough: true,
                writable: true,
            },
        ))
    }

    /// Group of a new entry: the caller's, or the directory's if it is set-group-ID.
    fn new_gid(&self, g: &Guard<'_>, parent: Ino, caller: Caller) -> u32 {
        match self.attr_locked(g, parent) {
            Ok(a) if a.perm as u32 & libc::S_ISGID != 0 => a.gid,
            _ => caller.gid,
        }
    }

    /// Reads for mounts without passthrough (the kernel otherwise reads the backing file).
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let mut buf = vec![0u8; size as usize];
        let file = {
            let g = self.lock();
            let h = g.handles.get(&fh).ok_or(FsError::BadHandle(fh))?;
            let open = g
                .nodes
                .get(h.ino)
                .and_then(|n| n.open.as_ref())
                .ok_or(FsError::BadHandle(fh))?;
            if let Some(o) = &open.overlay {
                let len = open.backing.metadata()?.len();
                let n = o
                    .overlay
                    .read_at(&open.backing, &o.base, &mut buf, offset, len)?;
                buf.truncate(n);
                return Ok(buf);
            }
            open.backing.clone()
        };
        let mut filled = 0;
        while filled < buf.len() {
            let n = file.read_at(&mut buf[filled..], offset + filled as u64)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        buf.truncate(filled);
        Ok(buf)
    }

    pub fn write(self: &Arc<Self>, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let _changing = self.stat_ahead.changing();
        let file = {
            let mut g = self.lock();
            let h = g.handles.get(&fh).ok_or(FsError::BadHandle(fh))?;
            if !h.writable {
                return Err(FsError::BadHandle(fh));
            }
            let ino = h.ino;
            let open = g
                .nodes
                .get_mut(ino)
                .and_then(|n| n.open.as_mut())
                .ok_or(FsError::BadHandle(fh))?;
            open.dirty = true;
            if let Some(o) = open.overlay.as_mut() {
                // Under the lock: a read must never see the range recorded but not written.
                open.backing.write_all_at(data, offset)?;
                o.overlay.record_write(offset, data.len() as u64);
                // Scattered writes all over: a delta would cost more than the copy.
                let fill = too_scattered(&o.overlay) && !o.filling;
                if fill {
                    o.filling = true;
                    drop(g);
                    self.fill_overlay_in_background(ino);
                }
                return Ok(data.len() as u32);
            }
            open.backing.clone()
        };
        file.write_all_at(data, offset)?;
        Ok(data.len() as u32)
    }

    /// copy_file_range(2) between two open files: an in-kernel copy (or reflink) between
    /// their backing files; the destination's next close publishes it.
    pub fn copy_range(
        &self,
        fh_in: u64,
        offset_in: u64,
        fh_out: u64,
        offset_out: u64,
        len: u64,
    ) -> FsResult<u64> {
        let _changing = self.stat_ahead.changing();
        // Overlays hold only part of their bytes: make both sides whole files first.
        for fh in [fh_in, fh_out] {
            let ino = self
                .lock()
                .handles
                .get(&fh)
                .ok_or(FsError::BadHandle(fh))?
                .ino;
            self.fill_overlay_in_steps(ino)?;
        }
        let src = self.handle_backing(fh_in)?;
        let dst = {
            let mut g = self.lock();
            let h = g.handles.get(&fh_out).ok_or(FsError::BadHandle(fh_out))?;
            if !h.writable {
                return Err(FsError::BadHandle(fh_out));
            }
            let ino = h.ino;
            let open = g
                .nodes
                .get_mut(ino)
                .and_then(|n| n.open.as_mut())
                .ok_or(FsError::BadHandle(fh_out))?;
            open.dirty = true;
            open.backing.clone()
        };
        let mut off_in = offset_in as i64;
        let mut off_out = offset_out as i64;
        // SAFETY: valid descriptors and offset pointers that outlive the call.
        let n = unsafe {
            libc::copy_file_range(
                std::os::fd::AsRawFd::as_raw_fd(src.as_ref()),
                &mut off_in,
                std::os::fd::AsRawFd::as_raw_fd(dst.as_ref()),
                &mut off_out,
                len as usize,
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error().into());
        }
        Ok(n as u64)
    }

    fn handle_backing(&self, fh: u64) -> FsResult<Arc<File>> {
        let g = self.lock();
        let h = g.handles.get(&fh).ok_or(FsError::BadHandle(fh))?;
        g.nodes
            .get(h.ino)
            .and_then(|n| n.open.as_ref())
            .map(|o| o.backing.clone())
            .ok_or(FsError::BadHandle(fh))
    }

    /// close(2) of one descriptor. The version is published when the last descriptor of the
    /// last writer goes (release): a descriptor shared by several processes (`cmd > f` in a
    /// shell dup()s it) must not cut a version per close. What close() returned is recorded
    /// now, so it survives the daemon's death.
    pub fn flush(&self, fh: u64) -> FsResult<()> {
        let mut g = self.lock();
        let inner = &mut *g;
        let h = inner.handles.get_mut(&fh).ok_or(FsError::BadHandle(fh))?;
        if h.writable {
            let _changing = self.stat_ahead.changing();
            let ino = h.ino;
            // Every close counts, not only the first: a dup'd descriptor closed first makes a
            // settle time out, and the last close must still be waited for.
            if let Some(open) = inner.nodes.get_mut(ino).and_then(|n| n.open.as_mut())
                && h.counted_in != Some(open.settle_epoch)
            {
                h.counted_in = Some(open.settle_epoch);
                open.closing += 1;
                inner.closing.insert(ino);
            }
            self.record_close(&mut g, ino, false)?;
            drop(g);
            // The close may publish a version, whose link into the version tree moves the
            // file's ctime after close() has returned; the attributes the kernel keeps (from
            // the create or the last setattr) would show the old one until they expire. Told
            // now, before close() returns, the kernel asks at the next stat, which waits for
            // the publish (settle).
            if let Some(cache) = self.kernel_cache.get() {
                cache.attributes_changing(ino);
            }
        }
        Ok(())
    }

    /// fsync(2): the bytes, and the record that they are the next version, on stable storage.
    pub fn fsync(&self, fh: u64) -> FsResult<()> {
        let _changing = self.stat_ahead.changing();
        let (ino, writable, backing) = {
            let g = self.lock();
            let h = g.handles.get(&fh).ok_or(FsError::BadHandle(fh))?;
            let backing = g
                .nodes
                .get(h.ino)
                .and_then(|n| n.open.as_ref())
                .map(|o| o.backing.clone());
            (h.ino, h.writable, backing)
        };
        // The bytes go to disk without the lock: a big file's flush takes a while, and every
        // other call needs the lock. The close record below then finds little left to sync.
        if let Some(f) = backing {
            f.sync_all()?;
        }
        if writable {
            self.record_close(&mut self.lock(), ino, true)?;
        }
        Ok(())
    }

    /// Writes the close record of `ino` if it has unpublished changes; true if it did.
    fn record_close(&self, g: &mut Guard<'_>, ino: Ino, durable: bool) -> FsResult<bool> {
        let key = self.live_key(g, ino)?;
        let Some(node) = g.nodes.get_mut(ino) else {
            return Ok(false);
        };
        if node.unlinked {
            return Ok(false);
        }
        let Some(open) = node.open.as_mut() else {
            return Ok(false);
        };
        let Some(staged) = open.staging.clone() else {
            return Ok(false);
        };
        let changed = open.dirty || fingerprint(&open.backing)? != open.fingerprint;
        let overlay = open.overlay.as_ref().map(|o| &o.overlay);
        // An overlay's record lists the ranges written: written again since (through a
        // descriptor still open, or a close that raced a write), it must be recorded again,
        // or recovery would publish the old ranges with some of the new bytes. A staged copy's
        // record names the whole file, which holds every write.
        let stale = overlay.is_some() && open.recorded_overlay.as_ref() != overlay;
        if !changed || (open.close_record.is_some() && !durable && !stale) {
            return Ok(changed);
        }
        let record = self.bucket.note_pending(
            &key,
            &staged,
            overlay,
            open.writer_uid,
            &open.pending,
            durable,
            open.close_record.as_ref(),
        )?;
        open.recorded_overlay = overlay.cloned();
        open.close_record = Some(record);
        Ok(true)
    }

    pub fn release(&self, fh: u64) -> FsResult<()> {
        self.prepare_publish(fh);
        let mut g = self.lock();
        let h = g.handles.remove(&fh).ok_or(FsError::BadHandle(fh))?;
        // Only a writer's release publishes; a reader's leaves the bucket as it was.
        let _changing = h.writable.then(|| self.stat_ahead.changing());
        if let Some(open) = g.nodes.get_mut(h.ino).and_then(|n| n.open.as_mut())
            && h.counted_in == Some(open.settle_epoch)
        {
            open.closing = open.closing.saturating_sub(1);
            if open.closing == 0 {
                g.closing.remove(&h.ino);
            }
        }
        let last_writer = g
            .nodes
            .get(h.ino)
            .and_then(|n| n.open.as_ref())
            .is_some_and(|o| o.writers == 1);
        let result = if h.writable && last_writer {
            match self.new_file_to_publish(&mut g, h.ino) {
                Ok(Some(new)) => {
                    let (relocked, result) = self.publish_without_lock(g, h.ino, new);
                    g = relocked;
                    result
                }
                Ok(None) => self.publish_if_changed(&mut g, h.ino),
                Err(e) => Err(e),
            }
        } else {
            Ok(())
        };
        self.release_state(&mut g, h.ino, h.writable);
        drop(g);
        self.released.notify_all();
        result
    }

    /// A whole new file (created, truncated or copied, no overlay) whose publish is the
    /// bucket's work alone, marked as publishing; `None` for anything else, which
    /// [`Self::publish_if_changed`] publishes under the lock.
    fn new_file_to_publish(&self, g: &mut Guard<'_>, ino: Ino) -> FsResult<Option<NewFile>> {
        let Some(node) = g.nodes.get(ino).filter(|n| !n.unlinked) else {
            return Ok(None);
        };
        let Some(open) = node.open.as_ref().filter(|o| o.overlay.is_none()) else {
            return Ok(None);
        };
        let Some(staged) = open.staging.clone() else {
            return Ok(None);
        };
        if !open.dirty && fingerprint(&open.backing)? == open.fingerprint {
            return Ok(None);
        }
        let new = NewFile {
            key: self.live_key(g, ino)?,
            staged,
            writer_uid: open.writer_uid,
            attrs: open.pending.clone(),
            record: open.close_record.clone(),
        };
        if let Some(open) = g.nodes.get_mut(ino).and_then(|n| n.open.as_mut()) {
            open.publishing = true;
        }
        // Listed as closing until it is done, so that a folder's rename waits for it.
        g.closing.insert(ino);
        Ok(Some(new))
    }

    /// The disk work of the publish of `new`, without the lock: the calls of the process that
    /// closed the file (its next create, its folder's stat) go on meanwhile, and whatever
    /// concerns the file waits for it (`settle`). A panic on the way (a bug) still ends the
    /// publishing state, or everything concerning the file would wait for ever; the file is
    /// then left as a close whose release never came, which its close record publishes at
    /// the next mount.
    fn publish_without_lock<'a>(
        &'a self,
        g: Guard<'a>,
        ino: Ino,
        new: NewFile,
    ) -> (Guard<'a>, FsResult<()>) {
        drop(g);
        let published = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // Tests hold or break the publish here (tests/faults.rs, fs::tests).
            #[cfg(feature = "failpoints")]
            fail::fail_point!("fs::publish_without_lock");
            self.bucket.publish_file(
                &new.key,
                &new.staged,
                new.writer_uid,
                new.attrs,
                new.record.as_ref(),
            )
        }));
        let mut g = self.lock();
        match published {
            Ok(published) => {
                let result = self.published_without_lock(&mut g, ino, &new.key, published);
                (g, result)
            }
            Err(panic) => {
                Self::end_publishing(&mut g, ino);
                drop(g);
                self.released.notify_all();
                std::panic::resume_unwind(panic)
            }
        }
    }

    /// Ends the publishing state [`Self::new_file_to_publish`] began, however the publish
    /// went (writers == 1 kept the open state while the lock was let go).
    fn end_publishing(g: &mut Guard<'_>, ino: Ino) {
        if let Some(open) = g.nodes.get_mut(ino).and_then(|n| n.open.as_mut()) {
            open.publishing = false;
            if open.closing == 0 {
                g.closing.remove(&ino);
            }
        }
    }

    /// What [`Self::publish_if_changed`] does after a publish, for one done without the lock.
    fn published_without_lock(
        &self,
        g: &mut Guard<'_>,
        ino: Ino,
        key: &ObjectKey,
        published: crate::bucket::Result<VersionMeta>,
    ) -> FsResult<()> {
        Self::end_publishing(g, ino);
        let meta = published?;
        log::debug!("published {key} version {}", meta.version_id);
        let Some(open) = g.nodes.get_mut(ino).and_then(|n| n.open.as_mut()) else {
            return Ok(());
        };
        open.staging = None;
        open.close_record = None;
        open.dirty = false;
        open.pending_changed = false;
        open.fingerprint = fingerprint(&open.backing)?;
        Ok(())
    }

    /// What a last writer's release does before it takes the lock, so that the publish
    /// under the lock stays short (other calls wait for it): a 1 GiB file rewritten in place
    /// held them for 2.3 s, one written anew over an old version for 0.45 s.
    /// - A file rewritten for the most part, or in too many ranges, is published as a full
    ///   copy, not as a reverse delta ([`Overlay::cheaper_as_copy`], [`MAX_OVERLAY_RANGES`]):
    ///   the rest of it is filled in first, one step per hold of the lock (finishing what a
    ///   background fill may have started), and the publish only renames.
    /// - A big file replacing an old version has its writeback started: renaming it over the
    ///   old file makes ext4 write it back inside the rename (`auto_da_alloc`).
    fn prepare_publish(&self, fh: u64) {
        let (ino, rewritten, replacing) = {
            let g = self.lock();
            let Some(h) = g.handles.get(&fh).filter(|h| h.writable) else {
                return;
            };
            // An unlinked file publishes nothing.
            let Some(open) = g
                .nodes
                .get(h.ino)
                .filter(|n| !n.unlinked)
                .and_then(|n| n.open.as_ref())
                .filter(|o| o.writers == 1 && o.staging.is_some())
            else {
                return;
            };
            let rewritten = open
                .overlay
                .as_ref()
                .is_some_and(|o| o.overlay.cheaper_as_copy() || too_scattered(&o.overlay));
            let replacing = open.replaces.then(|| open.backing.clone());
            (h.ino, rewritten, replacing)
        };
        if rewritten && let Err(e) = self.fill_overlay_in_steps(ino) {
            // The publish goes on with the overlay: a delta, slower, nothing lost.
            log::warn!("inode {ino}: filling its rewritten overlay: {e}");
        }
        if let Some(file) = replacing
            && file.metadata().is_ok_and(|m| m.len() >= WRITEBACK_AHEAD)
        {
            // SAFETY: sync_file_range on a valid descriptor; it only starts the writeback.
            unsafe {
                libc::sync_file_range(
                    std::os::fd::AsRawFd::as_raw_fd(file.as_ref()),
                    0,
                    0,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
    }

    /// [`Self::release`] of a writer's handle on a thread of its own (see `releaser`), for
    /// the kernel's RELEASE, which nobody waits for: the close record written at FLUSH keeps
    /// the version safe meanwhile, every call concerning the file waits for it (`settle`),
    /// and the end of the mount waits for every one queued (`release_unreleased`).
    pub fn release_in_background(self: &Arc<Self>, fh: u64) {
        let releaser = self.releaser.get_or_init(|| {
            releaser::Releaser::start(Arc::downgrade(self))
                .inspect_err(|e| log::warn!("no releaser thread ({e}); releasing in place"))
                .ok()
        });
        let queued = releaser.as_ref().map_or(Err(fh), |r| r.release(fh));
        if let Err(fh) = queued
            && let Err(e) = self.release(fh)
        {
            log::error!("release of handle {fh}: {e}");
        }
    }

    /// At the end of a mount: releases every handle whose file was closed but whose RELEASE
    /// never came. The kernel sends RELEASE after close() has returned, and an unmount drops
    /// the requests still queued, so without this a file closed just before `umount` would
    /// wait for the next mount's recovery to appear. Handles never closed publish nothing.
    pub fn release_unreleased(&self) {
        if let Some(Some(releaser)) = self.releaser.get() {
            releaser.drain();
        }
        let _changing = self.stat_ahead.changing();
        let closed: Vec<u64> = self
            .lock()
            .handles
            .iter()
            .filter(|(_, h)| h.counted_in.is_some())
            .map(|(fh, _)| *fh)
            .collect();
        for fh in closed {
            if let Err(e) = self.release(fh) {
                log::error!("publishing a file closed before the unmount: {e}");
            }
        }
    }

    fn release_state(&self, g: &mut Guard<'_>, ino: Ino, writer: bool) {
        let Some(node) = g.nodes.get_mut(ino) else {
            return;
        };
        let Some(open) = node.open.as_mut() else {
            return;
        };
        if writer {
            open.writers = open.writers.saturating_sub(1);
        }
        open.handles = open.handles.saturating_sub(1);
        if open.handles == 0 && open.writers == 0 {
            let open = node.open.take().expect("checked above");
            if let Some(staging) = open.staging {
                self.bucket.discard_staged(&staging);
            }
            if let Some(record) = open.close_record {
                self.bucket.clear_pending(&record);
            }
            g.nodes.drop_if_unused(ino);
        }
    }

    /// Publishes the open file of `ino` as a new version if its bytes changed; applies
    /// xattrs set while it was open to the current version if only they changed.
    fn publish_if_changed(&self, g: &mut Guard<'_>, ino: Ino) -> FsResult<()> {
        let Some(node) = g.nodes.get(ino) else {
            return Ok(());
        };
        if node.unlinked {
            return Ok(()); // writes to an unlinked file go nowhere, as on any filesystem
        }
        let Some(open) = node.open.as_ref() else {
            return Ok(());
        };
        // A created or truncated file is known to be new: no stat to find out.
        let changed = open.dirty || fingerprint(&open.backing)? != open.fingerprint;
        let key = self.live_key(g, ino)?;
        if changed {
            let Some(staged) = open.staging.clone() else {
                // A published inode is never written: writers always get a staged file.
                log::error!("{key}: changed after publishing; not publishing it twice");
                return Ok(());
            };
            let attrs = open.pending.clone();
            let record = open.close_record.clone();
            let writer_uid = open.writer_uid;
            let base_readers = open.overlay.as_ref().is_some_and(|o| {
                g.nodes
                    .version_open(&o.overlay.base_key, &o.overlay.base_version)
            });
            if base_readers {
                // Someone reads the old version's bytes right now: they must not change.
                self.fill_overlay(g, ino)?;
            }
            let open = g.nodes.get(ino).and_then(|n| n.open.as_ref()).unwrap();
            let meta = match &open.overlay {
                Some(o) => self.bucket.publish_overlay(
                    &key,
                    &staged,
                    &o.overlay,
                    writer_uid,
                    attrs,
                    record.as_ref(),
                )?,
                None => {
                    self.bucket
                        .publish_file(&key, &staged, writer_uid, attrs, record.as_ref())?
                }
            };
            log::debug!("published {key} version {}", meta.version_id);
            let open = g.nodes.get_mut(ino).and_then(|n| n.open.as_mut()).unwrap();
            if open.overlay.take().is_some() {
                // The overlay file is gone; the object's inode holds the new version now.
                open.backing = Arc::new(open_backing_file(&self.bucket.current_path(&key))?);
            }
            open.staging = None;
            open.close_record = None;
            open.dirty = false;
            open.pending_changed = false;
            open.fingerprint = fingerprint(&open.backing)?;
        } else if open.pending_changed {
            let attrs = open.pending.clone();
            if let Some(cur) = self.bucket.current(&key)? {
                self.bucket
                    .update_meta::<FsError>(&key, &cur.version_id, |m| {
                        m.apply_attrs(&attrs);
                        Ok(())
                    })?;
            }
            let open = g.nodes.get_mut(ino).and_then(|n| n.open.as_mut()).unwrap();
            open.pending_changed = false;
        }
        Ok(())
    }

    // ---- namespace changes ---------------------------------------------------------------------

    pub fn mkdir(&self, parent: Ino, name: &OsStr, mode: u32, caller: Caller) -> FsResult<Attr> {
        let _changing = self.stat_ahead.changing();
        self.check_writable("mkdir")?;
        let mut g = self.lock();
        let key = self.new_child_key(&g, parent, name)?;
        let gid = self.new_gid(&g, parent, caller);
        // A set-group-ID directory passes its group and the bit itself on to subdirectories.
        let inherit = if gid != caller.gid { libc::S_ISGID } else { 0 };
        match self
            .bucket
            .make_dir(key.as_str(), (mode & 0o7777) | inherit, caller.uid, gid)
        {
            Err(BucketError::Io { source, .. })
                if source.kind() == io::ErrorKind::AlreadyExists =>
            {
                return Err(FsError::Exists(key.to_string()));
            }
            r => r?,
        }
        let ino = g.nodes.lookup(parent, name, NodeKind::Dir);
        self.attr_locked(&g, ino)
    }

    pub fn symlink(
        &self,
        parent: Ino,
        name: &OsStr,
        target: &OsStr,
        caller: Caller,
    ) -> FsResult<Attr> {
        let _changing = self.stat_ahead.changing();
        self.check_writable("symlink")?;
        let mut g = self.lock();
        let key = self.free_child_key(&g, parent, name)?;
        let target = target.to_str().ok_or_else(|| FsError::InvalidValue {
            name: key.to_string(),
            reason: "symlink targets must be UTF-8".into(),
        })?;
        let attrs = self.new_node_attrs(&g, parent, caller, libc::S_IFLNK | 0o777);
        self.bucket
            .publish_symlink(&key, target, caller.uid, attrs)?;
        let ino = g.nodes.lookup(parent, name, NodeKind::Symlink);
        self.attr_locked(&g, ino)
    }

    /// The key of a new entry that must not exist yet (published, or created and unpublished).
    fn free_child_key(&self, g: &Guard<'_>, parent: Ino, name: &OsStr) -> FsResult<ObjectKey> {
        let key = self.new_child_key(g, parent, name)?;
        let unpublished = g
            .nodes
            .child(parent, name)
            .is_some_and(|i| g.nodes.holds_unpublished_version(i));
        if unpublished || fs::symlink_metadata(self.bucket.current_path(&key)).is_ok() {
            return Err(FsError::Exists(key.to_string()));
        }
        Ok(key)
    }

    /// Metadata of a symlink or node made by `caller` in `parent`.
    fn new_node_attrs(&self, g: &Guard<'_>, parent: Ino, caller: Caller, mode: u32) -> ObjectAttrs {
        ObjectAttrs {
            posix: Some(crate::bucket::PosixAttrs {
                mode,
                uid: caller.uid,
                gid: self.new_gid(g, parent, caller),
                mtime_ns: crate::bucket::meta::now_ns(),
            }),
            ..Default::default()
        }
    }

    /// mknod(2): a regular file (created and closed at once) or a FIFO, socket or device node,
    /// stored as a version whose content is the node itself.
    pub fn mknod(
        &self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        rdev: u32,
        caller: Caller,
    ) -> FsResult<Attr> {
        let _changing = self.stat_ahead.changing();
        let kind = mode & libc::S_IFMT;
        if kind == 0 || kind == libc::S_IFREG {
            let (attr, opened) =
                self.create(parent, name, mode, libc::O_EXCL | libc::O_WRONLY, caller)?;
            self.release(opened.fh)?;
            return self.getattr(attr.ino);
        }
        if ![libc::S_IFIFO, libc::S_IFSOCK, libc::S_IFCHR, libc::S_IFBLK].contains(&kind) {
            return Err(FsError::UnsupportedFileType(name.to_string_lossy().into()));
        }
        self.check_writable("mknod")?;
        let mut g = self.lock();
        let key = self.free_child_key(&g, parent, name)?;
        let attrs = self.new_node_attrs(&g, parent, caller, mode);
        self.bucket
            .publish_special(&key, mode, rdev as u64, caller.uid, attrs)?;
        let ino = g.nodes.lookup(parent, name, NodeKind::Special);
        self.attr_locked(&g, ino)
    }

    pub fn readlink(&self, ino: Ino) -> FsResult<Vec<u8>> {
        let g = self.lock();
        let node = g.nodes.get(ino).ok_or(FsError::NotFound)?;
        if node.kind != NodeKind::Symlink {
            return Err(FsError::InvalidValue {
                name: node.name.to_string_lossy().into(),
                reason: "not a symbolic link".into(),
            });
        }
        if node.unlinked {
            return Err(FsError::Stale);
        }
        let key = self.live_key(&g, ino)?;
        use std::os::unix::ffi::OsStrExt;
        match fs::read_link(self.bucket.current_path(&key)) {
            Ok(target) => Ok(target.as_os_str().as_bytes().to_vec()),
            // Removed, or replaced by something else, since the kernel looked it up.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) => {
                Err(FsError::Stale)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// unlink(2): a delete marker for a key; under `.versions`, S3 DELETE of that version.
    pub fn unlink(&self, parent: Ino, name: &OsStr, caller: Caller) -> FsResult<()> {
        let _changing = self.stat_ahead.changing();
        self.check_writable("unlink")?;
        let g = self.lock();
        let child = g.nodes.child(parent, name);
        let g = self.settle(g, child);
        let mut g = self.settle_versions_view(g, parent, Some(name));
        let pnode = g.nodes.get(parent).ok_or(FsError::NotFound)?;
        if let NodeKind::VersionsDir { prefix } = &pnode.kind {
            let key = ObjectKey::new(prefix.clone()).map_err(|_| FsError::NotFound)?;
            let version_id = name.to_str().ok_or(FsError::NotFound)?;
            self.bucket
                .delete_version(&key, version_id, self.opts.bypass_governance)?;
            if let Some(ino) = g.nodes.child(parent, name) {
                g.nodes.detach(ino);
            }
            // The key's path now shows the previous version, or nothing; its history folder
            // goes with its last version. Reported without our lock: the kernel may be
            // waiting on a request that needs it.
            // A key undeleted while the kernel knows no node on its path may be cached as
            // absent there: the first name along the path it does not know is told too.
            let live = Self::live_file_of_key(&g, key.as_str())
                .map(|(parent, name, ino)| (parent, name, Some(ino)))
                .or_else(|| {
                    Self::first_unknown_name(&g, key.as_str())
                        .map(|(parent, name)| (parent, name, None))
                });
            let history = (!self.bucket.tree_exists(key.as_str()))
                .then(|| g.nodes.get(parent))
                .flatten()
                .map(|n| (n.parent, n.name.clone(), Some(parent)));
            drop(g);
            if let Some(cache) = self.kernel_cache.get() {
                for (parent, name, ino) in live.into_iter().chain(history) {
                    cache.entry_changed(parent, &name, ino);
                }
            }
            return Ok(());
        }
        // The bucket's delete tells a folder at the key path (it changes nothing then): a file's
        // delete stats its key path once, not twice. What is not a published object is told
        // apart after, with the errors a lookup gives.
        let key = match self.new_child_key(&g, parent, name) {
            Ok(key) => key,
            Err(e) => {
                self.resolve_not_dir(&g, parent, name)?;
                return Err(e);
            }
        };
        if self.bucket.delete(&key, caller.uid)?.is_none() {
            self.resolve_not_dir(&g, parent, name)?;
        }
        if let Some(ino) = g.nodes.child(parent, name) {
            self.detach_node(&mut g, ino);
        }
        Ok(())
    }

    /// unlink's check of a name: it must exist, and not be a directory.
    fn resolve_not_dir(&self, g: &Guard<'_>, parent: Ino, name: &OsStr) -> FsResult<()> {
        match self.resolve_child(g, parent, name)? {
            NodeKind::Dir => Err(FsError::IsDir(name.to_string_lossy().into())),
            _ => Ok(()),
        }
    }

    /// A node whose name now means nothing (unlinked, or renamed over): what its writers still
    /// write goes nowhere, so its close record must not publish it after a crash either.
    fn detach_node(&self, g: &mut Guard<'_>, ino: Ino) {
        if let Some(open) = g.nodes.get_mut(ino).and_then(|n| n.open.as_mut())
            && let Some(record) = open.close_record.take()
        {
            self.bucket.clear_pending(&record);
        }
        g.nodes.detach(ino);
    }

    pub fn rmdir(&self, parent: Ino, name: &OsStr) -> FsResult<()> {
        let _changing = self.stat_ahead.changing();
        self.check_writable("rmdir")?;
        let mut g = self.lock();
        let key = self.new_child_key(&g, parent, name)?;
        if self.resolve_child(&g, parent, name)? != NodeKind::Dir {
            return Err(FsError::NotDir(key.to_string()));
        }
        if let Some(ino) = g.nodes.child(parent, name)
            && !g.nodes.unpublished_children(ino).is_empty()
        {
            return Err(FsError::NotEmpty(key.to_string()));
        }
        match self.bucket.remove_dir(key.as_str()) {
            Err(BucketError::Io { source, .. })
                if source.raw_os_error() == Some(libc::ENOTEMPTY) =>
            {
                return Err(FsError::NotEmpty(key.to_string()));
            }
            r => r?,
        }
        if let Some(ino) = g.nodes.child(parent, name) {
            g.nodes.detach(ino);
        }
        Ok(())
    }

    pub fn rename(
        &self,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        noreplace: bool,
        caller: Caller,
    ) -> FsResult<()> {
        let _changing = self.stat_ahead.changing();
        self.check_writable("rename")?;
        let g = self.lock();
        let (src, dst) = (
            g.nodes.child(parent, name),
            g.nodes.child(new_parent, new_name),
        );
        let g = self.settle(g, src);
        let g = self.settle(g, dst);
        // A directory moves every key below it: files just closed in it must be published
        // first, or they would be published under the old path.
        let mut g = if src
            .and_then(|i| g.nodes.get(i))
            .is_some_and(|n| n.kind == NodeKind::Dir)
        {
            let closing: Vec<Ino> = g.closing.iter().copied().collect();
            closing
                .into_iter()
                .fold(g, |g, ino| self.settle(g, Some(ino)))
        } else {
            g
        };
        let from = self.new_child_key(&g, parent, name)?;
        let to = self.new_child_key(&g, new_parent, new_name)?;
        let kind = self.resolve_child(&g, parent, name)?;
        let target = self.resolve_child(&g, new_parent, new_name).ok();
        if from == to {
            return Ok(());
        }
        if noreplace && target.is_some() {
            return Err(FsError::Exists(to.to_string()));
        }
        let src_ino = g.nodes.lookup(parent, name, kind.clone());
        let result = self.rename_locked(&mut g, src_ino, &kind, target, &from, &to, caller);
        if result.is_ok()
            && let Some(replaced) = g
                .nodes
                .child(new_parent, new_name)
                .filter(|i| *i != src_ino)
        {
            self.detach_node(&mut g, replaced);
        }
        if result.is_ok() {
            g.nodes.move_node(src_ino, new_parent, new_name);
        }
        g.nodes.forget(src_ino, 1);
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn rename_locked(
        &self,
        g: &mut Guard<'_>,
        src_ino: Ino,
        kind: &NodeKind,
        target: Option<NodeKind>,
        from: &ObjectKey,
        to: &ObjectKey,
        caller: Caller,
    ) -> FsResult<()> {
        match (kind, &target) {
            (NodeKind::Dir, Some(t)) if *t != NodeKind::Dir => {
                return Err(FsError::NotDir(to.to_string()));
            }
            (k, Some(NodeKind::Dir)) if *k != NodeKind::Dir => {
                return Err(FsError::IsDir(to.to_string()));
            }
            _ => {}
        }
        if *kind == NodeKind::Dir {
            if to.as_str().starts_with(&format!("{from}/")) {
                return Err(FsError::InvalidValue {
                    name: to.to_string(),
                    reason: "cannot move a directory into itself".into(),
                });
            }
            return match self
                .bucket
                .rename_dir(from.as_str(), to.as_str(), caller.uid)
            {
                Err(BucketError::Io { source, .. })
                    if source.raw_os_error() == Some(libc::ENOTEMPTY) =>
                {
                    Err(FsError::NotEmpty(to.to_string()))
                }
                r => Ok(r?),
            };
        }
        // S3 CopyObject of the published version; writes still open on the file are
        // published under the new name when its last writer lets go. A file held open
        // keeps its inode: its readers and the next opener of the new name share it.
        let bytes = if g.nodes.get(src_ino).is_some_and(|n| n.open.is_some()) {
            RenameBytes::Shared
        } else {
            RenameBytes::CopyIfCheaper
        };
        match self.bucket.rename(from, to, caller.uid, bytes) {
            // Nothing published under `from` yet (a file still being written): its close
            // publishes it under `to`, below.
            Err(BucketError::NoSuchKey(_)) => {}
            r => {
                r?;
            }
        }
        if let Some(open) = g.nodes.get_mut(src_ino).and_then(|n| n.open.as_mut())
            && let (Some(old), Some(staged)) = (open.close_record.take(), open.staging.clone())
        {
            self.bucket.clear_pending(&old);
            open.close_record = Some(self.bucket.note_pending(
                to,
                &staged,
                open.overlay.as_ref().map(|o| &o.overlay),
                open.writer_uid,
                &open.pending,
                false,
                None,
            )?);
            open.recorded_overlay = open.overlay.as_ref().map(|o| o.overlay.clone());
        }
        Ok(())
    }

    pub fn link(&self) -> FsResult<Attr> {
        Err(FsError::HardLink)
    }

    // ---- directories ---------------------------------------------------------------------------

    /// All entries of a directory (the adapter pages through them).
    pub fn readdir(&self, ino: Ino) -> FsResult<Vec<DirEntry>> {
        let g = self.lock();
        let g = self.settle_versions_view(g, ino, None);
        let node = g.nodes.get(ino).ok_or(FsError::NotFound)?;
        let mut out = vec![
            DirEntry {
                name: ".".into(),
                kind: FileKind::Dir,
            },
            DirEntry {
                name: "..".into(),
                kind: FileKind::Dir,
            },
        ];
        match &node.kind {
            NodeKind::VersionsDir { prefix } => {
                let listing = self.bucket.list_tree(prefix)?;
                // Versions first, oldest first: `ls -U .versions/k/` shows history in order.
                out.extend(listing.versions.into_iter().map(|v| DirEntry {
                    name: v.into(),
                    kind: FileKind::File,
                }));
                out.extend(listing.children.into_iter().map(|c| DirEntry {
                    name: c.into(),
                    kind: FileKind::Dir,
                }));
            }
            NodeKind::Dir => {
                let prefix = g.nodes.key_of(ino).ok_or(FsError::NotFound)?;
                // Files created and not yet published, minus those already on disk. Usually
                // none: a listing of a big folder must not copy every name to find that out.
                let mut unpublished: HashSet<OsString> = g
                    .nodes
                    .unpublished_children(ino)
                    .into_iter()
                    .map(|(name, _)| name)
                    .collect();
                dirents::for_each_entry(&self.bucket.prefix_path(&prefix), |name, kind| {
                    if ino == ROOT_INO && name == key::META_DIR {
                        return;
                    }
                    if !unpublished.is_empty() {
                        unpublished.remove(name);
                    }
                    out.push(DirEntry {
                        name: name.to_owned(),
                        kind,
                    });
                })?;
                out.extend(unpublished.into_iter().map(|name| DirEntry {
                    name,
                    kind: FileKind::File,
                }));
                if ino == ROOT_INO {
                    out.push(DirEntry {
                        name: key::VERSIONS_DIR.into(),
                        kind: FileKind::Dir,
                    });
                }
            }
            _ => return Err(FsError::NotDir(node.name.to_string_lossy().into())),
        }
        Ok(out)
    }

    pub fn statfs(&self) -> FsResult<libc::statvfs> {
        let path = std::ffi::CString::new(self.bucket.root().as_os_str().as_encoded_bytes())
            .map_err(|_| FsError::NotFound)?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: valid NUL-terminated path and a properly sized out-parameter.
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return Err(io::Error::last_os_error().into());
        }
        Ok(st)
    }

    // ---- xattrs --------------------------------------------------------------------------------

    pub fn getxattr(&self, ino: Ino, name: &str) -> FsResult<Vec<u8>> {
        let class = xattr::classify(name);
        match class {
            // Not supported on any node, and said so the way a filesystem mounted without ACL
            // or security-label support does: `ls -l` asks for security.selinux and the POSIX
            // ACL of every entry until one answer is EOPNOTSUPP, then never again on this
            // filesystem. ENODATA cost two round trips per entry listed.
            xattr::Name::OtherNamespace(n) => return Err(FsError::AttrUnsupported(n.into())),
            // Never stored on objects: no metadata read for it.
            xattr::Name::UnknownS3(n) => return Err(FsError::NoAttr(n.into())),
            _ => {}
        }
        let g = self.lock();
        // Only computed attributes describe the published version; the others are the
        // open file's until a publish under way has taken them.
        let g = match class {
            xattr::Name::Computed(_) => self.settle(g, Some(ino)),
            _ => self.settle_publish(g, ino),
        };
        let node = held_node(&g, ino)?;
        match &node.kind {
            NodeKind::VersionEntry { key, version_id } => {
                let key = ObjectKey::new(key.clone())?;
                let meta = self.bucket.meta(&key, version_id)?;
                self.computed_xattr(&key, &meta, name, true)
                    .unwrap_or_else(|| xattr::get(&meta.attrs(), name))
            }
            NodeKind::File => {
                let key = self.live_key(&g, ino)?;
                if let Some(open) = node.open.as_ref().filter(|o| o.writers > 0) {
                    if let Some(cur) = self.bucket.current(&key)?
                        && let Some(v) = self.computed_xattr(&key, &cur, name, false)
                    {
                        return v;
                    }
                    return xattr::get(&open.pending, name);
                }
                let cur = self.bucket.current(&key)?.ok_or(FsError::NotFound)?;
                self.computed_xattr(&key, &cur, name, false)
                    .unwrap_or_else(|| xattr::get(&cur.attrs(), name))
            }
            NodeKind::Dir => {
                let key = g.nodes.key_of(ino).unwrap_or_default();
                if dir_xattr_name(name).is_err() {
                    return Err(FsError::NoAttr(name.to_string()));
                }
                xattr_crate_get(&self.bucket.prefix_path(&key), name)
            }
            _ => Err(FsError::NoAttr(name.to_string())),
        }
    }

    fn computed_xattr(
        &self,
        key: &ObjectKey,
        meta: &VersionMeta,
        name: &str,
        in_versions: bool,
    ) -> Option<FsResult<Vec<u8>>> {
        let value = match name {
            xattr::VERSION_ID => Ok(meta.version_id.clone()),
            xattr::ETAG if meta.delete_marker => Err(FsError::NoAttr(name.into())),
            xattr::ETAG => self
                .bucket
                .etag(key, &meta.version_id)
                .map(|e| format!("\"{e}\""))
                .map_err(FsError::from),
            xattr::DELETE_MARKER if in_versions => Ok(meta.delete_marker.to_string()),
            xattr::REPLICATION_STATUS => meta
                .replication_status
                .clone()
                .ok_or_else(|| FsError::NoAttr(name.into())),
            xattr::SSE => meta
                .encryption
                .clone()
                .ok_or_else(|| FsError::NoAttr(name.into())),
            _ => return None,
        };
        Some(value.map(String::into_bytes))
    }

    pub fn listxattr(&self, ino: Ino) -> FsResult<Vec<String>> {
        let g = self.settle_publish(self.lock(), ino);
        let node = held_node(&g, ino)?;
        match &node.kind {
            NodeKind::VersionEntry { key, version_id } => {
                let meta = self
                    .bucket
                    .meta(&ObjectKey::new(key.clone())?, version_id)?;
                let mut names = vec![xattr::VERSION_ID.to_string()];
                if !meta.delete_marker {
                    names.push(xattr::ETAG.to_string());
                }
                names.push(xattr::DELETE_MARKER.to_string());
                names.extend(xattr::list(&meta.attrs()));
                Ok(names)
            }
            NodeKind::File => {
                if let Some(open) = node.open.as_ref().filter(|o| o.writers > 0) {
                    return Ok(xattr::list(&open.pending));
                }
                let key = self.live_key(&g, ino)?;
                let cur = self.bucket.current(&key)?.ok_or(FsError::NotFound)?;
                Ok(xattr::list(&cur.attrs()))
            }
            NodeKind::Dir => {
                let key = g.nodes.key_of(ino).unwrap_or_default();
                let path = self.bucket.prefix_path(&key);
                Ok(::xattr::list(&path)?
                    .filter_map(|n| n.into_string().ok())
                    .filter(|n| n.starts_with("user."))
                    .collect())
            }
            _ => Ok(Vec::new()),
        }
    }

    pub fn setxattr(&self, ino: Ino, name: &str, value: &[u8]) -> FsResult<()> {
        let _changing = self.stat_ahead.changing();
        self.change_xattr(
            ino,
            name,
            |attrs, policy| xattr::set(attrs, name, value, policy),
            |path| {
                dir_xattr_name(name)?;
                Ok(::xattr::set(path, name, value)?)
            },
        )
    }

    pub fn removexattr(&self, ino: Ino, name: &str) -> FsResult<()> {
        let _changing = self.stat_ahead.changing();
        self.change_xattr(
            ino,
            name,
            |attrs, policy| xattr::remove(attrs, name, policy),
            |path| {
                dir_xattr_name(name)?;
                ::xattr::remove(path, name).map_err(|e| match e.raw_os_error() {
                    Some(libc::ENODATA) => FsError::NoAttr(name.to_string()),
                    _ => e.into(),
                })
            },
        )
    }

    /// Tags, ACL and Object Lock changes modify a version's metadata and make no new version;
    /// on a file open for writing they go to the version its close will publish.
    fn change_xattr(
        &self,
        ino: Ino,
        name: &str,
        change: impl FnOnce(&mut ObjectAttrs, xattr::Policy) -> FsResult<()>,
        on_dir: impl FnOnce(&std::path::Path) -> FsResult<()>,
    ) -> FsResult<()> {
        let policy = self.xattr_policy();
        // A change to the open file's attributes must reach the version a publish under way
        // is making, or come after it.
        let mut g = self.settle_publish(self.lock(), ino);
        // A node whose key path holds another object now: the change must not land on that.
        let node = held_node(&g, ino)?;
        let (key, version_id) = match &node.kind {
            NodeKind::VersionEntry { key, version_id } => {
                (ObjectKey::new(key.clone())?, version_id.clone())
            }
            NodeKind::File => {
                self.check_writable("setxattr")?;
                let key = self.live_key(&g, ino)?;
                let node = g.nodes.get_mut(ino).unwrap();
                if let Some(open) = node.open.as_mut().filter(|o| o.writers > 0) {
                    let mut attrs = open.pending.clone();
                    change(&mut attrs, policy)?;
                    open.pending = attrs;
                    open.pending_changed = true;
                    return Ok(());
                }
                let cur = self.bucket.current(&key)?.ok_or(FsError::NotFound)?;
                (key, cur.version_id)
            }
            NodeKind::Dir => {
                self.check_writable("setxattr")?;
                let key = g.nodes.key_of(ino).unwrap_or_default();
                return on_dir(&self.bucket.prefix_path(&key));
            }
            _ => return Err(FsError::AttrUnsupported(name.to_string())),
        };
        self.bucket.update_object_meta(&key, &version_id, |m| {
            if m.delete_marker {
                return Err(FsError::AttrUnsupported(format!(
                    "{name} on a delete marker"
                )));
            }
            let mut attrs = m.attrs();
            change(&mut attrs, policy)?;
            m.apply_attrs(&attrs);
            Ok(())
        })?;
        Ok(())
    }
}

/// Directories are S3 `dir/` markers; they keep plain `user.*` xattrs only.
fn dir_xattr_name(name: &str) -> FsResult<()> {
    match xattr::classify(name) {
        xattr::Name::User(_) => Ok(()),
        _ => Err(FsError::AttrUnsupported(format!("{name} on a directory"))),
    }
}

fn xattr_crate_get(path: &std::path::Path, name: &str) -> FsResult<Vec<u8>> {
    ::xattr::get(path, name)?.ok_or_else(|| FsError::NoAttr(name.to_string()))
}

fn join_prefix(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        // Not format!: this runs on every lookup, and concat allocates once without the
        // formatting machinery.
        [prefix, "/", name].concat()
    }
}

/// Truncates (or extends) an open file's bytes; an overlay remembers where its base ends.
fn set_len(open: &mut OpenState, size: u64) -> io::Result<()> {
    open.backing.set_len(size)?;
    if let Some(o) = open.overlay.as_mut() {
        o.overlay.record_truncate(size);
    }
    open.dirty = true;
    Ok(())
}

fn fingerprint(file: &File) -> io::Result<Fingerprint> {
    Ok(fingerprint_of(&file.metadata()?))
}

fn fingerprint_of(m: &fs::Metadata) -> Fingerprint {
    Fingerprint {
        size: m.len(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
    }
}

/// Backing files are opened read-write where possible: the kernel lets every handle of an
/// inode share one backing file, including a writer that arrives later.
fn open_backing_file(path: &std::path::Path) -> FsResult<File> {
    open_no_follow_rw(path)
        .or_else(|_| open_no_follow(path))
        .map_err(|e| gone_if_missing(e.into()))
}

/// The node the kernel holds as `ino`; [`FsError::Stale`] if its object is gone since the
/// kernel looked it up ([`Node::is_gone`]): what its path holds now is another object.
fn held_node<'g>(g: &'g Guard<'_>, ino: Ino) -> FsResult<&'g Node> {
    let node = g.nodes.get(ino).ok_or(FsError::NotFound)?;
    if node.is_gone() {
        return Err(FsError::Stale);
    }
    Ok(node)
}

/// What a call on a node the kernel holds answers when the node's object is gone: the kernel
/// looks the path up again on ESTALE (once), and then answers for what is there now.
fn stale_if_gone(e: FsError) -> FsError {
    match e {
        FsError::NotFound => FsError::Stale,
        e => e,
    }
}

/// A path the kernel resolved a moment ago that another caller has removed since (an unlink
/// or rename racing this call): the file is gone, as ENOENT says, and the daemon did not fail.
fn gone_if_missing(e: FsError) -> FsError {
    match e {
        FsError::Io(e) if e.kind() == io::ErrorKind::NotFound => FsError::NotFound,
        e => e,
    }
}

/// Written in so many disjoint ranges that a delta would cost more than a full copy (see
/// [`MAX_OVERLAY_RANGES`]).
fn too_scattered(overlay: &Overlay) -> bool {
    overlay.written.len() > MAX_OVERLAY_RANGES
}

/// Whether what a path holds is of the type of the node the kernel knows for it.
fn kind_matches(kind: &NodeKind, ft: fs::FileType) -> bool {
    match kind {
        NodeKind::Dir => ft.is_dir(),
        NodeKind::File => ft.is_file(),
        NodeKind::Symlink => ft.is_symlink(),
        NodeKind::Special => !(ft.is_dir() || ft.is_file() || ft.is_symlink()),
        NodeKind::VersionsDir { .. } | NodeKind::VersionEntry { .. } => true,
    }
}

fn file_kind(ft: fs::FileType) -> FileKind {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_fifo() {
        FileKind::Fifo
    } else if ft.is_socket() {
        FileKind::Socket
    } else if ft.is_char_device() {
        FileKind::CharDevice
    } else if ft.is_block_device() {
        FileKind::BlockDevice
    } else {
        FileKind::File
    }
}

/// A live node's attributes from its inode's metadata: a file's link count is the key's, not
/// the backing inode's (which the version tree links too).
fn node_attr(ino: Ino, node: &Node, m: &fs::Metadata) -> Attr {
    let mut attr = attr_from_metadata(ino, m);
    if attr.kind != FileKind::Dir {
        attr.nlink = if node.unlinked { 0 } else { 1 };
    }
    attr
}

fn attr_from_metadata(ino: Ino, m: &fs::Metadata) -> Attr {
    let kind = file_kind(m.file_type());
    Attr {
        ino,
        size: m.len(),
        blocks: m.blocks(),
        atime: system_time_from_ns(m.atime() * 1_000_000_000 + m.atime_nsec()),
        mtime: system_time_from_ns(m.mtime() * 1_000_000_000 + m.mtime_nsec()),
        ctime: system_time_from_ns(m.ctime() * 1_000_000_000 + m.ctime_nsec()),
        kind,
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        blksize: m.blksize() as u32,
    }
}

fn version_attr(ino: Ino, meta: &VersionMeta) -> Attr {
    let t = meta.last_modified();
    let (uid, gid) = meta.posix.map_or((meta.owner, 0), |p| (p.uid, p.gid));
    let size = if meta.delete_marker { 0 } else { meta.size };
    Attr {
        ino,
        size,
        blocks: size.div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
        kind: FileKind::File,
        perm: 0o444,
        nlink: 1,
        uid,
        gid,
        rdev: 0,
        blksize: 4096,
    }
}

/// chmod/chown/utimens on an open file (`file`) or by path.
fn apply_posix(
    file: Option<&File>,
    path: &std::path::Path,
    set: &SetAttr,
    symlink: bool,
) -> FsResult<()> {
    if let Some(mode) = set.mode
        && !symlink
    {
        match file {
            Some(f) => f.set_permissions(fs::Permissions::from_mode(mode & 0o7777))?,
            None => chmod_no_follow(path, mode & 0o7777)?,
        }
    }
    if set.uid.is_some() || set.gid.is_some() {
        match file {
            Some(f) => std::os::unix::fs::fchown(f, set.uid, set.gid)?,
            None => std::os::unix::fs::lchown(path, set.uid, set.gid)?,
        }
    }
    if set.atime.is_some() || set.mtime.is_some() {
        set_times(file, path, set.atime, set.mtime)?;
    }
    Ok(())
}

/// chmod of what is at `path` itself: a symlink there (a file replaced behind the kernel's
/// back) is refused, never followed to its target (the daemon's rights are root's, often).
fn chmod_no_follow(path: &std::path::Path, mode: u32) -> FsResult<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| FsError::NotFound)?;
    // SAFETY: valid NUL-terminated path; glibc refuses a symlink with EOPNOTSUPP.
    let rc = unsafe {
        libc::fchmodat(
            libc::AT_FDCWD,
            c.as_ptr(),
            mode as libc::mode_t,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    Err(match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) => FsError::NotFound,
        _ => e.into(),
    })
}

fn set_times(
    file: Option<&File>,
    path: &std::path::Path,
    atime: Option<TimeSpec>,
    mtime: Option<TimeSpec>,
) -> FsResult<()> {
    let spec = |t: Option<TimeSpec>| match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeSpec::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeSpec::At(t)) => {
            let ns = crate::bucket::meta::ns_from_system_time(t);
            libc::timespec {
                tv_sec: ns.div_euclid(1_000_000_000),
                tv_nsec: ns.rem_euclid(1_000_000_000),
            }
        }
    };
    let times = [spec(atime), spec(mtime)];
    let rc = match file {
        // SAFETY: valid descriptor and a two-element timespec array.
        Some(f) => unsafe { libc::futimens(std::os::fd::AsRawFd::as_raw_fd(f), times.as_ptr()) },
        None => {
            let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
                .map_err(|_| FsError::NotFound)?;
            // SAFETY: valid NUL-terminated path; AT_SYMLINK_NOFOLLOW sets a symlink's own times.
            unsafe {
                libc::utimensat(
                    libc::AT_FDCWD,
                    c.as_ptr(),
                    times.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            }
        }
    };
    if rc != 0 {
        return Err(io::Error::last_os_error().into());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
