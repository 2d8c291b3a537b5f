//! The thin adapter between the kernel (through `fuser`) and [`BucketFs`]: argument and
//! reply conversion, passthrough backing ids, and logging each refusal once. No semantics here.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

pub mod listing;
use listing::ListingHabits;

use fuser::{
    AccessFlags, BackingId, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, MountOption, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    SessionACL, TimeOrNow, WriteFlags,
};

use crate::fs::{
    Attr, BucketFs, Caller, DirEntry, FileKind, FsError, Ino, KernelCache, Opened, SetAttr,
    TimeSpec,
};
use crate::panic_guard::guarded_round;

/// Attributes and entries are cached by the kernel this long. Every change of the primary
/// bucket goes through this mount, so a short TTL only matters for replicas written by others.
pub const TTL: Duration = Duration::from_secs(1);
/// Largest FUSE request: 1 MiB writes when passthrough is not in use.
const MAX_WRITE: u32 = 1 << 20;

/// How to mount: the options of `bucketfs mount` that reach the kernel.
#[derive(Clone, Debug, Default)]
pub struct MountConfig {
    pub allow_other: bool,
    pub read_only: bool,
    pub threads: usize,
    /// Use kernel passthrough when the kernel and our privileges allow it.
    pub passthrough: bool,
    /// Take requests through FUSE over io_uring when the kernel offers it.
    pub io_uring: bool,
    pub fs_name: String,
}

impl MountConfig {
    pub fn fuser_config(&self) -> Config {
        let mut options = vec![
            MountOption::FSName(self.fs_name.clone()),
            MountOption::Subtype("bucketfs".into()),
            // The kernel checks mode bits; we keep them like a local filesystem.
            MountOption::DefaultPermissions,
            MountOption::NoAtime,
        ];
        options.push(if self.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        });
        let mut config = Config::default();
        config.mount_options = options;
        config.acl = if self.allow_other {
            SessionACL::All
        } else {
            SessionACL::Owner
        };
        config.n_threads = Some(self.threads.max(1));
        config.clone_fd = self.threads > 1;
        config
    }
}

/// Ends a mount made by [`mount`] (on SIGTERM and friends).
pub enum Unmounter {
    /// Mounted by our own mount(2): unmounted by path, once, on request only.
    Direct(std::ffi::CString),
    /// Mounted by fuser (through fusermount3 when not root).
    Fuser(fuser::SessionUnmounter),
}

impl Unmounter {
    pub fn unmount(&mut self) -> std::io::Result<()> {
        match self {
            Unmounter::Direct(path) => {
                // SAFETY: a valid NUL-terminated path.
                if unsafe { libc::umount2(path.as_ptr(), 0) } == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            }
            Unmounter::Fuser(u) => u.unmount(),
        }
    }
}

/// Mounts `adapter` at `mountpoint`. As root, by mount(2) itself: fuser 0.18 unmounts the
/// mountpoint *path* again when its session ends, even after an outside `umount` (its
/// "already unmounted?" check is inverted; fixed upstream in fuser PR #703, not released),
/// which unmounts whatever was mounted there since, e.g. the next daemon of a restart. A
/// session made from our own descriptor never unmounts anything by itself. Without the
/// privilege, fuser mounts through fusermount3.
pub fn mount(
    adapter: FuseAdapter,
    mountpoint: &Path,
    config: &MountConfig,
) -> std::io::Result<(fuser::Session<FuseAdapter>, Unmounter)> {
    let fuser_config = config.fuser_config();
    let path = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes())
        .map_err(std::io::Error::other)?;
    let fs = Arc::clone(&adapter.fs);
    let report_to_kernel = |session: &fuser::Session<FuseAdapter>| -> std::io::Result<()> {
        fs.report_changes_to(Box::new(KernelNotices::start(session.notifier())?));
        Ok(())
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        match mount_directly(mountpoint, &path, config) {
            Ok(fd) => {
                let acl = fuser_config.acl;
                let session = fuser::Session::from_fd(adapter, fd, acl, fuser_config)
                    .and_then(|session| report_to_kernel(&session).map(|()| session));
                return match session {
                    Ok(session) => Ok((session, Unmounter::Direct(path))),
                    Err(e) => {
                        // No daemon will ever serve it: leave nothing mounted.
                        // SAFETY: a valid NUL-terminated path.
                        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
                        Err(e)
                    }
                };
            }
            Err(e) => log::debug!(
                "mount(2) of {}: {e}; trying fusermount3",
                mountpoint.display()
            ),
        }
    }
    let mut session = fuser::Session::new(adapter, mountpoint, &fuser_config)?;
    let unmounter = Unmounter::Fuser(session.unmount_callable());
    report_to_kernel(&session)?;
    Ok((session, unmounter))
}

/// Tells the kernel about names the daemon changed outside the request that named them.
struct KernelNotices {
    notifier: fuser::Notifier,
    entries: crossbeam_channel::Sender<EntryNotice>,
}

/// One entry to invalidate, and who waits for it to be done.
struct EntryNotice {
    parent: INodeNo,
    name: std::ffi::OsString,
    done: crossbeam_channel::Sender<()>,
}

/// Entry invalidations waiting for the kernel; beyond this, the entry TTL does the work.
const PENDING_ENTRY_NOTICES: usize = 1024;

impl KernelNotices {
    fn start(notifier: fuser::Notifier) -> std::io::Result<Self> {
        let (entries, pending) = crossbeam_channel::bounded::<EntryNotice>(PENDING_ENTRY_NOTICES);
        let sender = notifier.clone();
        std::thread::Builder::new()
            .name("kernel-notices".into())
            .spawn(move || {
                for notice in pending {
                    let sent = guarded_round("kernel-notices", || {
                        sender.inval_entry(notice.parent, &notice.name)
                    });
                    if let Some(Err(e)) = sent {
                        log::debug!(
                            "kernel notice: entry {:?} of {}: {e}",
                            notice.name,
                            notice.parent.0
                        );
                    }
                    let _ = notice.done.send(());
                }
            })?;
        Ok(KernelNotices { notifier, entries })
    }
}

impl KernelCache for KernelNotices {
    fn attributes_changing(&self, ino: Ino) {
        // Offset -1: the attributes only, under no lock the kernel could be holding for us.
        if let Err(e) = self.notifier.inval_inode(INodeNo(ino), -1, 0) {
            log::debug!("kernel notice: attributes of {ino}: {e}");
        }
    }

    fn entry_changed(&self, parent: Ino, name: &OsStr, ino: Option<Ino>) {
        // The attributes at once, from the caller's thread: the kernel takes no inode lock for
        // it (offset -1 leaves the page cache, which the next open drops anyway), so the next
        // stat asks us again whatever happens to the entry below.
        if let Some(ino) = ino
            && let Err(e) = self.notifier.inval_inode(INodeNo(ino), -1, 0)
        {
            log::debug!("kernel notice: attributes of {ino}: {e}");
        }
        // The entry needs the parent directory's lock. The kernel may hold it while it waits
        // for the caller's own request to end (a rename into the caller's directory takes both
        // directories' locks), so it is dropped from another thread and waited for only up to
        // the entry TTL, after which the entry has expired by itself. Normally it is done
        // before the caller's request returns, so the name is fresh when the caller goes on.
        let (done, finished) = crossbeam_channel::bounded(1);
        let notice = EntryNotice {
            parent: INodeNo(parent),
            name: name.to_os_string(),
            done,
        };
        if self.entries.try_send(notice).is_err() {
            log::debug!("kernel notice: queue full; entry {name:?} left to its TTL");
        } else if finished.recv_timeout(TTL).is_err() {
            log::debug!("kernel notice: entry {name:?} not dropped within {TTL:?}; it expires");
        }
    }
}

/// The kernel side of a FUSE mount, as libfuse and fuser make it: a /dev/fuse descriptor
/// and mount(2) with it in the options.
fn mount_directly(
    mountpoint: &Path,
    target: &std::ffi::CStr,
    config: &MountConfig,
) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let root_mode = std::fs::metadata(mountpoint)?.mode() & libc::S_IFMT;
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut data = format!(
        "fd={},rootmode={root_mode:o},user_id={uid},group_id={gid},default_permissions",
        std::os::fd::AsRawFd::as_raw_fd(&dev)
    );
    if config.allow_other {
        data.push_str(",allow_other");
    }
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOATIME;
    if config.read_only {
        flags |= libc::MS_RDONLY;
    }
    let cstr = |s: &[u8]| std::ffi::CString::new(s).map_err(std::io::Error::other);
    let source = cstr(config.fs_name.as_bytes())?;
    let fstype = cstr(b"fuse.bucketfs")?;
    let data = cstr(data.as_bytes())?;
    // SAFETY: valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(dev.into())
}

/// Backing ids registered with the kernel, shared by all handles of one inode's open file.
#[derive(Default)]
struct BackingCache {
    by_inode: HashMap<u64, (u64, Weak<BackingId>)>,
    by_handle: HashMap<u64, Arc<BackingId>>,
}

pub struct FuseAdapter {
    fs: Arc<BucketFs>,
    passthrough_wanted: bool,
    io_uring_wanted: bool,
    passthrough: std::sync::atomic::AtomicBool,
    /// The kernel keeps shared mmaps working on direct I/O opens (see [`Self::fopen_flags`]).
    direct_io_mmap: bool,
    backing: Mutex<BackingCache>,
    /// Each open folder's listing, taken at OPENDIR. Shared so that a READDIRPLUS, which looks
    /// names up, pages through it without the lock and without copying the rest of it.
    dirs: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    next_dir_handle: std::sync::atomic::AtomicU64,
    listing_habits: ListingHabits,
}

impl FuseAdapter {
    pub fn new(fs: Arc<BucketFs>, mount: &MountConfig) -> Self {
        FuseAdapter {
            fs,
            passthrough_wanted: mount.passthrough,
            io_uring_wanted: mount.io_uring,
            passthrough: false.into(),
            direct_io_mmap: false,
            backing: Mutex::default(),
            dirs: Mutex::default(),
            next_dir_handle: 1.into(),
            listing_habits: ListingHabits::default(),
        }
    }

    fn passthrough(&self) -> bool {
        self.passthrough.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Registers (or reuses) the kernel backing id for an open; None = serve I/O ourselves.
    fn backing_id(
        &self,
        ino: u64,
        opened: &Opened,
        register: impl FnOnce(&std::fs::File) -> std::io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        if !self.passthrough() || !opened.passthrough {
            return None;
        }
        let mut cache = self.backing.lock().unwrap_or_else(|e| e.into_inner());
        let reuse = cache
            .by_inode
            .get(&ino)
            .filter(|(generation, _)| *generation == opened.backing.generation)
            .and_then(|(_, weak)| weak.upgrade());
        let id = match reuse {
            Some(id) => id,
            None => match register(&opened.backing.file) {
                Ok(id) => {
                    let id = Arc::new(id);
                    cache
                        .by_inode
                        .insert(ino, (opened.backing.generation, Arc::downgrade(&id)));
                    id
                }
                Err(e) => {
                    log::warn!(
                        "passthrough unavailable ({e}); serving reads and writes in the daemon"
                    );
                    self.passthrough
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    return None;
                }
            },
        };
        cache.by_handle.insert(opened.fh, Arc::clone(&id));
        Some(id)
    }

    /// How the kernel is to treat an open. A reader's close has nothing to record, so the
    /// kernel need not ask: one round trip less for every file read (and for rsync's open to
    /// fchmod). A writer the daemon serves (an overlay, whose every write range it records;
    /// or any writer without passthrough) gets direct I/O: its writes are round trips either
    /// way, and in this mode they skip the page cache and several threads' writes to one file
    /// run in parallel instead of queueing on the inode lock (fio, 4 jobs of random 4 KiB
    /// writes into one 1 GiB file: 77k -> 325k IOPS). Reads through that descriptor are not
    /// cached then; readers' own descriptors are.
    fn fopen_flags(&self, opened: &Opened, passthrough: bool) -> FopenFlags {
        if !opened.writable {
            FopenFlags::FOPEN_NOFLUSH
        } else if !passthrough && self.direct_io_mmap {
            FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES
        } else {
            FopenFlags::empty()
        }
    }

    fn drop_backing(&self, fh: u64) {
        let mut cache = self.backing.lock().unwrap_or_else(|e| e.into_inner());
        cache.by_handle.remove(&fh);
        cache
            .by_inode
            .retain(|_, (_, weak)| weak.strong_count() > 0);
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

/// Logs a failure once, where it becomes an errno: refusals say why, lookups misses stay quiet.
fn errno(op: &str, e: FsError) -> Errno {
    let code = e.errno();
    match &e {
        // Answers, not failures: `cp` asks SEEK_DATA at every file's end.
        FsError::NotFound | FsError::NoAttr(_) | FsError::PastEnd | FsError::Stale => {
            log::debug!("{op}: {e}")
        }
        _ if e.is_refusal() => log::warn!("{op} refused: {e}"),
        _ => log::error!("{op} failed: {e}"),
    }
    Errno::from_i32(code)
}

/// What a lookup of an absent name replies (only the node id, 0, counts).
const ABSENT_ENTRY: FileAttr = FileAttr {
    ino: INodeNo(0),
    size: 0,
    blocks: 0,
    atime: std::time::UNIX_EPOCH,
    mtime: std::time::UNIX_EPOCH,
    ctime: std::time::UNIX_EPOCH,
    crtime: std::time::UNIX_EPOCH,
    kind: FileType::RegularFile,
    perm: 0,
    nlink: 0,
    uid: 0,
    gid: 0,
    rdev: 0,
    blksize: 0,
    flags: 0,
};

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

/// The `d_ino` of a listing's entry at `index`: informational for FUSE (stat gives the real
/// inode number), but never 0, which some readers take for an empty slot.
fn listing_d_ino(dir: u64, index: usize) -> u64 {
    if index < 2 {
        dir
    } else {
        u64::MAX - index as u64
    }
}

fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

fn time_spec(t: Option<TimeOrNow>) -> Option<TimeSpec> {
    t.map(|t| match t {
        TimeOrNow::Now => TimeSpec::Now,
        TimeOrNow::SpecificTime(s) => TimeSpec::At(s),
    })
}

fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

/// What bucketfs asks of the kernel at INIT (shared with bench/nullfs.rs, the FUSE floor, so
/// that both are asked the same requests). Returns what the kernel offered of what was asked.
pub fn request_capabilities(
    config: &mut KernelConfig,
    passthrough: bool,
    io_uring: bool,
) -> Transport {
    let _ = config.set_max_write(MAX_WRITE);
    let _ = config.add_capabilities(
        InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            // O_TRUNC reaches open(): a fresh empty file, never a copy then truncate.
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            // We clear set-user/group-ID bits ourselves (the backing file's own writes do,
            // under passthrough), so the kernel stops asking for security.capability
            // before every write: a round trip per write otherwise.
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2,
    );
    Transport {
        // The kernel offers it only with the fuse module's enable_uring set.
        io_uring: io_uring
            && config
                .add_capabilities(InitFlags::FUSE_OVER_IO_URING)
                .is_ok(),
        passthrough: passthrough
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok(),
        // Since Linux 6.6; without it a direct I/O open refuses shared mmaps (ENODEV).
        direct_io_mmap: config
            .add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
            .is_ok(),
    }
}

/// Whether this process holds CAP_SYS_ADMIN, which registering a passthrough backing file
/// needs (from /proc/self/status; unknown counts as yes, and the first open then tells).
fn may_register_backing_files() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return true;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_none_or(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

/// What the kernel offered at FUSE_INIT of what bucketfs asked for.
#[derive(Clone, Copy, Debug)]
pub struct Transport {
    /// Requests will come through per-CPU io_uring queues (vendor/fuser/src/uring.rs), unless
    /// fuser finds that no ring can be set up here (it logs that and keeps /dev/fuse).
    pub io_uring: bool,
    pub passthrough: bool,
    /// Shared mmaps of direct I/O opens work (the kernel keeps them coherent).
    pub direct_io_mmap: bool,
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let got = request_capabilities(config, self.passthrough_wanted, self.io_uring_wanted);
        let said = |on| {
            if on {
                "enabled"
            } else {
                "not offered by the kernel"
            }
        };
        if self.passthrough_wanted {
            // The kernel offers it to anyone, then refuses every backing file without
            // CAP_SYS_ADMIN: said now, not at the first open.
            let allowed = may_register_backing_files();
            self.passthrough.store(
                got.passthrough && allowed,
                std::sync::atomic::Ordering::Relaxed,
            );
            match (got.passthrough, allowed) {
                (true, false) => log::info!(
                    "kernel passthrough needs CAP_SYS_ADMIN (root): reads and writes are served \
                     by the daemon"
                ),
                (got, _) => log::info!("kernel passthrough {}", said(got)),
            }
        }
        self.direct_io_mmap = got.direct_io_mmap;
        if !got.direct_io_mmap {
            log::info!(
                "direct I/O with shared mmaps not offered by the kernel: writers the daemon \
                 serves keep the page cache, and their writes to one file queue"
            );
        }
        if self.io_uring_wanted {
            log::info!(
                "FUSE over io_uring {}",
                if got.io_uring {
                    "enabled"
                } else {
                    "not offered by the kernel (fuse module parameter enable_uring)"
                }
            );
        }
        Ok(())
    }

    fn destroy(&mut self) {
        self.fs.release_unreleased();
        if let Err(e) = self.fs.bucket().sync() {
            log::error!("final sync at unmount failed: {e}");
        }
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.fs.lookup(parent.0, name) {
            Ok(a) => {
                self.listing_habits
                    .looked_up(req.pid(), parent.0, a.kind == FileKind::Dir);
                reply.entry(&TTL, &file_attr(&a), Generation(0))
            }
            // Node id 0 with a timeout: the kernel keeps the name as absent, so a second look
            // (rsync's generator and receiver, a shell's PATH, Python's imports) asks nobody.
            Err(FsError::NotFound) if self.fs.absence_cacheable(parent.0) => {
                reply.entry(&TTL, &ABSENT_ENTRY, Generation(0))
            }
            Err(e) => reply.error(errno("lookup", e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno("getattr", e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: time_spec(atime),
            mtime: time_spec(mtime),
            fh: fh.map(|f| f.0),
        };
        match self.fs.setattr(ino.0, caller(req), set) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno("setattr", e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno("readlink", e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        match self
            .fs
            .mknod(parent.0, name, mode & !umask, rdev, caller(req))
        {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(errno("mknod", e)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        match self.fs.mkdir(parent.0, name, mode & !umask, caller(req)) {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(errno("mkdir", e)),
        }
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.fs.unlink(parent.0, name, caller(req)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("unlink", e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.fs.rmdir(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("rmdir", e)),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        match self
            .fs
            .symlink(parent.0, link_name, target.as_os_str(), caller(req))
        {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(errno("symlink", e)),
        }
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            reply.error(Errno::EINVAL);
            return;
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        match self
            .fs
            .rename(parent.0, name, newparent.0, newname, noreplace, caller(req))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("rename", e)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match self.fs.link() {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(errno("link", e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.open(ino.0, flags.0, caller(req)) {
            Ok(opened) => match self.backing_id(ino.0, &opened, |f| reply.open_backing(f)) {
                Some(id) => reply.opened_passthrough(
                    FileHandle(opened.fh),
                    self.fopen_flags(&opened, true),
                    &id,
                ),
                None => reply.opened(FileHandle(opened.fh), self.fopen_flags(&opened, false)),
            },
            Err(e) => reply.error(errno("open", e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self
            .fs
            .create(parent.0, name, mode & !umask, flags, caller(req))
        {
            Ok((attr, opened)) => {
                let fh = FileHandle(opened.fh);
                match self.backing_id(attr.ino, &opened, |f| reply.open_backing(f)) {
                    Some(id) => reply.created_passthrough(
                        &TTL,
                        &file_attr(&attr),
                        Generation(0),
                        fh,
                        self.fopen_flags(&opened, true),
                        &id,
                    ),
                    None => reply.created(
                        &TTL,
                        &file_attr(&attr),
                        Generation(0),
                        fh,
                        self.fopen_flags(&opened, false),
                    ),
                }
            }
            Err(e) => reply.error(errno("create", e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.fs.read(fh.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno("read", e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.fs.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno("write", e)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        match self
            .fs
            .copy_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
        {
            Ok(n) => reply.written(n.min(u32::MAX as u64) as u32),
            Err(e) => reply.error(errno("copy_file_range", e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.fs.fallocate(fh.0, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("fallocate", e)),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(Errno::EINVAL);
        };
        match self.fs.seek_data(fh.0, offset, whence) {
            Ok(at) => reply.offset(at as i64),
            Err(e) => reply.error(errno("lseek", e)),
        }
    }

    /// No ioctl means anything here. ENOTTY is what a file without them answers: Python asks
    /// `isatty` (TCGETS) at every `open()` in text mode, `lsattr` asks for inode flags.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        log::debug!("ioctl {cmd:#x}: not a terminal or device, ENOTTY");
        reply.error(Errno::ENOTTY);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        match self.fs.flush(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("flush", e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.drop_backing(fh.0);
        // A writer's release publishes; the kernel does not wait for it, and neither do we.
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            self.fs.release_in_background(fh.0);
            return reply.ok();
        }
        match self.fs.release(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("release", e)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.fs.fsync(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("fsync", e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.readdir(ino.0) {
            Ok(entries) => {
                let fh = self
                    .next_dir_handle
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.dirs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(fh, Arc::new(entries));
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(errno("opendir", e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entries) = dirs.get(&fh.0) else {
            reply.error(Errno::EBADF);
            return;
        };
        for (i, entry) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(listing_d_ino(ino.0, i)),
                (i + 1) as u64,
                file_type(entry.kind),
                &entry.name,
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let listing = {
            let dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
            match dirs.get(&fh.0) {
                Some(listing) => Arc::clone(listing),
                None => {
                    reply.error(Errno::EBADF);
                    return;
                }
            }
        };
        let entries = listing.get(offset as usize..).unwrap_or_default();
        let dir_attr = match self.fs.getattr(ino.0) {
            Ok(a) => a,
            Err(e) => {
                reply.error(errno("readdirplus", e));
                return;
            }
        };
        // Later batches are asked for with attributes only when the folder's names are
        // being looked up (listing.rs).
        let reader_stats = offset != 0 || self.listing_habits.stats_listings(req.pid());
        let files_get_attrs = listing::files_get_attrs(reader_stats, || {
            entries
                .iter()
                .skip(2)
                .filter(|e| e.kind != FileKind::Dir)
                .take(listing::SMALL_FOLDER + 1)
                .count()
        });
        let mut names_only = 0;
        for (i, entry) in entries.iter().enumerate() {
            let index = offset as usize + i;
            let next = (index + 1) as u64;
            if index < 2 {
                // The kernel takes no lookup reference for "." and "..".
                if reply.add(
                    ino,
                    next,
                    &entry.name,
                    &TTL,
                    &file_attr(&dir_attr),
                    Generation(0),
                ) {
                    break;
                }
                continue;
            }
            if entry.kind != FileKind::Dir && !files_get_attrs {
                if reply.add_name_only(
                    INodeNo(listing_d_ino(ino.0, index)),
                    next,
                    file_type(entry.kind),
                    &entry.name,
                ) {
                    break;
                }
                names_only += 1;
                continue;
            }
            let looked_up = if reader_stats {
                self.fs.lookup(ino.0, &entry.name)
            } else {
                self.fs.lookup_listed(ino.0, &entry.name)
            };
            let Ok(attr) = looked_up else {
                continue; // vanished since opendir
            };
            if reply.add(
                INodeNo(attr.ino),
                next,
                &entry.name,
                &TTL,
                &file_attr(&attr),
                Generation(0),
            ) {
                self.fs.forget(attr.ino, 1); // not sent: the kernel holds no reference
                break;
            }
        }
        if names_only > 0 {
            log::debug!(
                "listing of inode {}: {names_only} names without attributes for process {}",
                ino.0,
                req.pid()
            );
            self.listing_habits.listed_names_only(req.pid(), ino.0);
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.fs.bucket().sync() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("fsyncdir", e.into())),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                255,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(errno("statfs", e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let Some(name) = name.to_str() else {
            reply.error(Errno::EOPNOTSUPP);
            return;
        };
        if flags & (libc::XATTR_CREATE | libc::XATTR_REPLACE) != 0 {
            let exists = match self.fs.getxattr(ino.0, name) {
                Ok(_) => true,
                // Refused whatever the flags say (before XATTR_REPLACE could say ENODATA).
                Err(FsError::AttrUnsupported(_)) => {
                    reply.error(Errno::EOPNOTSUPP);
                    return;
                }
                Err(_) => false,
            };
            if flags & libc::XATTR_CREATE != 0 && exists {
                reply.error(Errno::EEXIST);
                return;
            }
            if flags & libc::XATTR_REPLACE != 0 && !exists {
                reply.error(Errno::NO_XATTR);
                return;
            }
        }
        match self.fs.setxattr(ino.0, name, value) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&format!("setxattr {name}"), e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some(name) = name.to_str() else {
            reply.error(Errno::NO_XATTR);
            return;
        };
        match self.fs.getxattr(ino.0, name) {
            Ok(v) => reply_xattr(reply, size, &v),
            // A question, not a refused change (`ls -l` asks it of a security label): no log.
            Err(FsError::AttrUnsupported(_)) => reply.error(Errno::EOPNOTSUPP),
            Err(e) => reply.error(errno(&format!("getxattr {name}"), e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(ino.0) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(n.as_bytes());
                    buf.push(0);
                }
                reply_xattr(reply, size, &buf);
            }
            Err(e) => reply.error(errno("listxattr", e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let Some(name) = name.to_str() else {
            reply.error(Errno::NO_XATTR);
            return;
        };
        match self.fs.removexattr(ino.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&format!("removexattr {name}"), e)),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // default_permissions: the kernel has checked the mode bits already.
        reply.ok();
    }
}
