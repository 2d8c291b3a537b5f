//! The inode table: which kernel inode number stands for which key, version or prefix.
//! It holds only what the kernel has looked up (and open files), so memory follows the
//! kernel's dentry cache, not the size of the bucket.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use crate::bucket::meta::ObjectAttrs;
use crate::bucket::{JournalEntry, Overlay};

pub type Ino = u64;
pub const ROOT_INO: Ino = 1;
pub const VERSIONS_INO: Ino = 2;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeKind {
    Dir,
    File,
    Symlink,
    /// A FIFO, socket or device node.
    Special,
    /// A folder of the `.versions/` tree: `prefix` is a key prefix ("" for `.versions` itself).
    VersionsDir {
        prefix: String,
    },
    /// One version (or delete marker) of `key`, shown as a read-only file.
    VersionEntry {
        key: String,
        version_id: String,
    },
}

/// Size and mtime of a backing file: passthrough writes bypass the daemon, so this is how
/// flush/release tell whether the content changed since the last publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    pub size: u64,
    pub mtime_ns: i64,
}

/// The file all open handles of one inode share (the kernel wants one backing file per inode).
#[derive(Debug)]
pub struct OpenState {
    pub backing: Arc<File>,
    /// Set while `backing` is a private staging file not yet published.
    pub staging: Option<PathBuf>,
    /// Distinguishes successive backing files of the same inode (for the adapter's cache).
    pub generation: u64,
    pub handles: u32,
    pub writers: u32,
    /// Writer handles closed (flushed) whose release has not arrived yet.
    pub closing: u32,
    /// Content changed in a way the fingerprint might not show (create, O_TRUNC, daemon writes).
    pub dirty: bool,
    pub fingerprint: Fingerprint,
    /// Metadata for the version the writers will publish (xattrs set while open).
    pub pending: ObjectAttrs,
    pub pending_changed: bool,
    /// The bucket's record that a writer closed this file (see `Bucket::note_pending`).
    pub close_record: Option<JournalEntry>,
    /// uid of the first writer: the owner of the version the writers publish.
    pub writer_uid: u32,
    /// `staging` is an overlay on the current version (bucket::delta), not a full copy.
    pub overlay: Option<Box<OverlayState>>,
    /// Handles may use kernel passthrough; false once an overlay was used, for as long as
    /// this state lives, since the kernel wants all opens of an inode alike.
    pub passthrough: bool,
}

#[derive(Debug)]
pub struct OverlayState {
    pub overlay: Overlay,
    /// The current version the overlay reads its unwritten ranges from.
    pub base: File,
}

#[derive(Debug)]
pub struct Node {
    pub parent: Ino,
    pub name: OsString,
    pub kind: NodeKind,
    pub lookups: u64,
    /// Boxed: only open files pay for it; every node the kernel holds stays small.
    pub open: Option<Box<OpenState>>,
    /// Unlinked (or replaced by a rename) while the kernel still holds it.
    pub unlinked: bool,
}

#[derive(Debug)]
pub struct NodeTable {
    nodes: HashMap<Ino, Node>,
    children: HashMap<(Ino, OsString), Ino>,
    next_ino: Ino,
}

impl NodeTable {
    /// Whether version `version_id` of `key` is open for reading under `.versions/`.
    pub fn version_open(&self, key: &str, version_id: &str) -> bool {
        self.nodes.values().any(|n| {
            n.open.is_some()
                && matches!(&n.kind, NodeKind::VersionEntry { key: k, version_id: v }
                    if k == key && v == version_id)
        })
    }

    pub fn new() -> Self {
        let mut t = NodeTable {
            nodes: HashMap::new(),
            children: HashMap::new(),
            next_ino: VERSIONS_INO + 1,
        };
        t.nodes
            .insert(ROOT_INO, Self::fixed(ROOT_INO, "", NodeKind::Dir));
        t.nodes.insert(
            VERSIONS_INO,
            Self::fixed(
                ROOT_INO,
                crate::bucket::key::VERSIONS_DIR,
                NodeKind::VersionsDir {
                    prefix: String::new(),
                },
            ),
        );
        t
    }

    fn fixed(parent: Ino, name: &str, kind: NodeKind) -> Node {
        Node {
            parent,
            name: name.into(),
            kind,
            lookups: u64::MAX / 2, // never forgotten
            open: None,
            unlinked: false,
        }
    }

    pub fn get(&self, ino: Ino) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn get_mut(&mut self, ino: Ino) -> Option<&mut Node> {
        self.nodes.get_mut(&ino)
    }

    pub fn child(&self, parent: Ino, name: &OsStr) -> Option<Ino> {
        self.children.get(&(parent, name.to_os_string())).copied()
    }

    /// Children that exist only in memory: created and not yet published.
    pub fn unpublished_children(&self, parent: Ino) -> Vec<(OsString, Ino)> {
        self.children
            .iter()
            .filter(|((p, _), _)| *p == parent)
            .filter(|(_, ino)| {
                self.nodes
                    .get(ino)
                    .and_then(|n| n.open.as_ref())
                    .is_some_and(|o| o.staging.is_some() && o.dirty)
            })
            .map(|((_, name), ino)| (name.clone(), *ino))
            .collect()
    }

    /// Finds or makes the node for `parent/name` of `kind`, counting one kernel lookup.
    pub fn lookup(&mut self, parent: Ino, name: &OsStr, kind: NodeKind) -> Ino {
        if let Some(ino) = self.child(parent, name) {
            let node = self
                .nodes
                .get_mut(&ino)
                .expect("child map points at a node");
            if node.kind == kind {
                node.lookups += 1;
                return ino;
            }
            // The name now holds something else (a file became a directory): new inode.
            self.detach(ino);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(
            ino,
            Node {
                parent,
                name: name.to_os_string(),
                kind,
                lookups: 1,
                open: None,
                unlinked: false,
            },
        );
        self.children.insert((parent, name.to_os_string()), ino);
        ino
    }

    /// Takes `ino` out of the name map: its name now means something else or nothing.
    pub fn detach(&mut self, ino: Ino) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.unlinked = true;
            let key = (node.parent, node.name.clone());
            if self.children.get(&key) == Some(&ino) {
                self.children.remove(&key);
            }
        }
        self.drop_if_unused(ino);
    }

    pub fn move_node(&mut self, ino: Ino, new_parent: Ino, new_name: &OsStr) {
        if let Some(old) = self.child(new_parent, new_name)
            && old != ino
        {
            self.detach(old);
        }
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        let old_key = (node.parent, node.name.clone());
        node.parent = new_parent;
        node.name = new_name.to_os_string();
        if self.children.get(&old_key) == Some(&ino) {
            self.children.remove(&old_key);
        }
        self.children
            .insert((new_parent, new_name.to_os_string()), ino);
    }

    pub fn forget(&mut self, ino: Ino, n: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
        }
        self.drop_if_unused(ino);
    }

    /// Drops a node nobody refers to: no kernel lookups, no open handles.
    pub fn drop_if_unused(&mut self, ino: Ino) {
        let unused = self
            .nodes
            .get(&ino)
            .is_some_and(|n| n.lookups == 0 && n.open.is_none());
        if unused && let Some(node) = self.nodes.remove(&ino) {
            let key = (node.parent, node.name);
            if self.children.get(&key) == Some(&ino) {
                self.children.remove(&key);
            }
        }
    }

    /// The key (or prefix, for directories) a live node stands for; None under `.versions`.
    pub fn key_of(&self, ino: Ino) -> Option<String> {
        let mut parts = Vec::new();
        let mut cur = ino;
        while cur != ROOT_INO {
            let node = self.nodes.get(&cur)?;
            if matches!(
                node.kind,
                NodeKind::VersionsDir { .. } | NodeKind::VersionEntry { .. }
            ) {
                return None;
            }
            parts.push(node.name.to_str()?.to_string());
            cur = node.parent;
        }
        parts.reverse();
        Some(parts.join("/"))
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

impl Default for NodeTable {
    fn default() -> Self {
        Self::new()
    }
}
