//! The FUSE floor: a filesystem that keeps its tree in memory and does no disk work at all,
//! so what `bench/run.sh` measures on it is the cost of the FUSE requests alone (kernel,
//! /dev/fuse, fuser), the part every FUSE filesystem on this machine pays. It answers the same
//! requests bucketfs answers for create / stat / unlink, with the same mount options, kernel
//! capabilities and TTLs, and sends file data to one shared backing file through kernel
//! passthrough (as bucketfs does), so writes cost no round trip here either.
//!
//! Not a product: `cargo build --release --example nullfs`, then
//! `nullfs MOUNTPOINT SCRATCH_FILE` (foreground; `umount MOUNTPOINT` ends it).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;
use std::time::SystemTime;

use bucketfs::fuse::{MountConfig, TTL, request_capabilities};
use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, OpenFlags, ReplyAttr, ReplyCreate, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyXattr, Request, TimeOrNow,
};

struct Node {
    attr: FileAttr,
    children: HashMap<OsString, u64>,
}

struct Tree {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
}

struct NullFs {
    tree: Mutex<Tree>,
    scratch: File,
    /// One backing id for every open file: registering it costs nothing after the first.
    backing: Mutex<Option<BackingId>>,
}

fn new_attr(ino: u64, kind: FileType, perm: u16, uid: u32, gid: u32) -> FileAttr {
    let now = SystemTime::now();
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        kind,
        perm,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid,
        gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl Tree {
    /// mkdir/create: a new entry owned by the caller, EEXIST if the name is taken.
    fn add(
        &mut self,
        parent: u64,
        name: &OsStr,
        kind: FileType,
        mode: u32,
        req: &Request,
    ) -> Result<FileAttr, Errno> {
        if self.child(parent, name).is_some() {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let attr = new_attr(ino, kind, (mode & 0o7777) as u16, req.uid(), req.gid());
        self.nodes.insert(
            ino,
            Node {
                attr,
                children: HashMap::new(),
            },
        );
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children.insert(name.to_owned(), ino);
        }
        Ok(attr)
    }

    fn child(&self, parent: u64, name: &OsStr) -> Option<u64> {
        self.nodes.get(&parent)?.children.get(name).copied()
    }

    fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let ino = self.child(parent, name).ok_or(Errno::ENOENT)?;
        let node = &self.nodes[&ino];
        match (dir, node.attr.kind == FileType::Directory) {
            (true, false) => return Err(Errno::ENOTDIR),
            (false, true) => return Err(Errno::EISDIR),
            (true, true) if !node.children.is_empty() => return Err(Errno::ENOTEMPTY),
            _ => {}
        }
        self.nodes.remove(&ino);
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children.remove(name);
        }
        Ok(())
    }
}

impl NullFs {
    fn tree(&self) -> std::sync::MutexGuard<'_, Tree> {
        self.tree.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Filesystem for NullFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // The same transport as bucketfs's default: io_uring when the kernel offers it.
        if !request_capabilities(config, true, true).passthrough {
            eprintln!("nullfs: the kernel offers no passthrough; creates will fail");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let tree = self.tree();
        match tree.child(parent.0, name).and_then(|i| tree.nodes.get(&i)) {
            Some(n) => reply.entry(&TTL, &n.attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.tree().nodes.get(&ino.0) {
            Some(n) => reply.attr(&TTL, &n.attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut tree = self.tree();
        match tree.nodes.get_mut(&ino.0) {
            Some(n) => {
                if let Some(s) = size {
                    n.attr.size = s;
                }
                reply.attr(&TTL, &n.attr)
            }
            None => reply.error(Errno::ENOENT),
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
        match self
            .tree()
            .add(parent.0, name, FileType::Directory, mode & !umask, req)
        {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let attr = match self
            .tree()
            .add(parent.0, name, FileType::RegularFile, mode & !umask, req)
        {
            Ok(attr) => attr,
            Err(e) => return reply.error(e),
        };
        let mut backing = self.backing.lock().unwrap_or_else(|e| e.into_inner());
        if backing.is_none() {
            match reply.open_backing(&self.scratch) {
                Ok(id) => *backing = Some(id),
                Err(e) => {
                    eprintln!("nullfs: passthrough unavailable: {e}");
                    return reply.error(Errno::EIO);
                }
            }
        }
        let id = backing.as_ref().expect("registered above");
        reply.created_passthrough(
            &TTL,
            &attr,
            Generation(0),
            FileHandle(0),
            FopenFlags::empty(),
            id,
        );
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.tree().remove(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.tree().remove(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let tree = self.tree();
        let Some(node) = tree.nodes.get(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        for (i, (name, child)) in node.children.iter().enumerate().skip(offset as usize) {
            let kind = tree.nodes[child].attr.kind;
            if reply.add(INodeNo(*child), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, r: ReplyXattr) {
        r.error(Errno::ENODATA);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, mountpoint, scratch] = args.as_slice() else {
        eprintln!("usage: nullfs MOUNTPOINT SCRATCH_FILE");
        std::process::exit(2);
    };
    let scratch = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(scratch)
        .unwrap_or_else(|e| panic!("opening {scratch}: {e}"));
    let top = std::fs::metadata(mountpoint).unwrap_or_else(|e| panic!("{mountpoint}: {e}"));
    let root = new_attr(1, FileType::Directory, 0o755, top.uid(), top.gid());
    let mut nodes = HashMap::new();
    nodes.insert(
        1,
        Node {
            attr: root,
            children: HashMap::new(),
        },
    );
    let fs = NullFs {
        tree: Mutex::new(Tree { nodes, next_ino: 2 }),
        scratch,
        backing: Mutex::new(None),
    };
    // bucketfs's mount options and thread count (`--threads`, default 4), unless
    // NULLFS_THREADS says otherwise.
    let threads = std::env::var("NULLFS_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(4);
    let config = MountConfig {
        threads,
        passthrough: true,
        fs_name: "nullfs".into(),
        ..MountConfig::default()
    }
    .fuser_config();
    if let Err(e) = fuser::mount(fs, mountpoint, &config) {
        eprintln!("nullfs: {e}");
        std::process::exit(1);
    }
}
