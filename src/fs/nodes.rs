//! The inode table: which kernel inode number stands for which key, version or prefix.
//! It holds only what the kernel has looked up (and open files), so memory follows the
//! kernel's dentry cache, not the size of the bucket.

use foldhash::HashMap;
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
    /// Bumped when waiting for `closing` timed out (a descriptor is shared); see `Handle`.
    pub settle_epoch: u32,
    /// The last writer's release is publishing `staging` without the filesystem's lock
    /// (`BucketFs::release`): the key's state is the bucket's until it is done.
    pub publishing: bool,
    /// Content changed in a way the fingerprint might not show (create, O_TRUNC, daemon writes).
    pub dirty: bool,
    pub fingerprint: Fingerprint,
    /// Metadata for the version the writers will publish (xattrs set while open).
    pub pending: ObjectAttrs,
    pub pending_changed: bool,
    /// The bucket's record that a writer closed this file (see `Bucket::note_pending`).
    pub close_record: Option<JournalEntry>,
    /// The overlay as `close_record` lists it (see `BucketFs::record_close`).
    pub recorded_overlay: Option<Overlay>,
    /// uid of the first writer: the owner of the version the writers publish.
    pub writer_uid: u32,
    /// The key had a current version when the writers came: the publish renames over its file.
    pub replaces: bool,
    /// `staging` is an overlay on the current version (bucket::delta), not a full copy.
    pub overlay: Option<Box<OverlayState>>,
    /// Handles may use kernel passthrough; false once an overlay was used, for as long as
    /// this state lives, since the kernel wants all opens of an inode alike.
    pub passthrough: bool,
}

impl OpenState {
    /// A wait for this file's release timed out: a descriptor of it is open elsewhere.
    pub fn is_shared(&self) -> bool {
        self.settle_epoch > 0
    }
}

#[derive(Debug)]
pub struct OverlayState {
    pub overlay: Overlay,
    /// The current version the overlay reads its unwritten ranges from.
    pub base: File,
    /// A thread is filling it into a full copy (scattered writes, see `BucketFs::write`).
    pub filling: bool,
}

impl Node {
    /// Removed (or replaced) since the kernel looked it up, with nothing of it open: its
    /// object is gone, and what its path holds now is another one. A directory removed while
    /// a process sits in it is still answered for.
    pub fn is_gone(&self) -> bool {
        self.unlinked && self.open.is_none() && self.kind != NodeKind::Dir
    }
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
    /// Names to nodes, one map per directory: a lookup borrows the name (no allocation) and
    /// a directory's own children are found without walking every node the kernel holds.
    children: HashMap<Ino, HashMap<OsString, Ino>>,
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
            nodes: HashMap::default(),
            children: HashMap::default(),
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
        self.children.get(&parent)?.get(name).copied()
    }

    fn link_name(&mut self, parent: Ino, name: &OsStr, ino: Ino) {
        self.children
            .entry(parent)
            .or_default()
            .insert(name.to_os_string(), ino);
    }

    /// Removes `parent/name` from the name map if it still names `ino`.
    fn unlink_name(&mut self, parent: Ino, name: &OsStr, ino: Ino) {
        if let Some(names) = self.children.get_mut(&parent)
            && names.get(name) == Some(&ino)
        {
            names.remove(name);
            if names.is_empty() {
                self.children.remove(&parent);
            }
        }
    }

    /// Children that exist only in memory: created and not yet published.
    pub fn unpublished_children(&self, parent: Ino) -> Vec<(OsString, Ino)> {
        let Some(names) = self.children.get(&parent) else {
            return Vec::new();
        };
        names
            .iter()
            .filter(|(_, ino)| {
                self.nodes
                    .get(ino)
                    .and_then(|n| n.open.as_ref())
                    .is_some_and(|o| o.staging.is_some() && o.dirty)
            })
            .map(|(name, ino)| (name.clone(), *ino))
            .collect()
    }

    /// Whether `ino` is open with a staging file: created or being rewritten, its next version
    /// not yet published, so its name is taken even where no object exists yet.
    pub fn holds_unpublished_version(&self, ino: Ino) -> bool {
        self.nodes
            .get(&ino)
            .and_then(|n| n.open.as_ref())
            .is_some_and(|o| o.staging.is_some())
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
        self.link_name(parent, name, ino);
        ino
    }

    /// Takes `ino` out of the name map: its name now means something else or nothing.
    pub fn detach(&mut self, ino: Ino) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.unlinked = true;
            let (parent, name) = (node.parent, node.name.clone());
            self.unlink_name(parent, &name, ino);
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
        let old_parent = std::mem::replace(&mut node.parent, new_parent);
        let old_name = std::mem::replace(&mut node.name, new_name.to_os_string());
        self.unlink_name(old_parent, &old_name, ino);
        self.link_name(new_parent, new_name, ino);
    }

    /// Counts `n` kernel lookups of `ino` gone; the node, if that dropped it.
    pub fn forget(&mut self, ino: Ino, n: u64) -> Option<Node> {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
        }
        self.drop_if_unused(ino)
    }

    /// Drops a node nobody refers to: no kernel lookups, no open handles. Returns it.
    pub fn drop_if_unused(&mut self, ino: Ino) -> Option<Node> {
        let unused = self
            .nodes
            .get(&ino)
            .is_some_and(|n| n.lookups == 0 && n.open.is_none());
        if !unused {
            return None;
        }
        let node = self.nodes.remove(&ino)?;
        self.unlink_name(node.parent, &node.name, ino);
        Some(node)
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
            parts.push(node.name.to_str()?);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn names(t: &NodeTable) -> usize {
        t.children.values().map(|m| m.len()).sum()
    }

    #[test]
    fn the_name_map_follows_lookups_renames_and_forgets_and_keeps_no_empty_folders() {
        let mut t = NodeTable::new();
        let dir = t.lookup(ROOT_INO, OsStr::new("d"), NodeKind::Dir);
        let other = t.lookup(ROOT_INO, OsStr::new("e"), NodeKind::Dir);
        let file = t.lookup(dir, OsStr::new("f"), NodeKind::File);
        assert_eq!(t.lookup(dir, OsStr::new("f"), NodeKind::File), file);
        assert_eq!(t.child(dir, OsStr::new("f")), Some(file));
        assert_eq!(t.child(other, OsStr::new("f")), None);
        assert_eq!(t.key_of(file).as_deref(), Some("d/f"));

        // A name that now holds a directory gets a new node; the file's node is detached.
        let replaced = t.lookup(dir, OsStr::new("f"), NodeKind::Dir);
        assert_ne!(replaced, file);
        assert!(t.get(file).is_some_and(|n| n.unlinked));
        assert_eq!(t.child(dir, OsStr::new("f")), Some(replaced));

        t.move_node(replaced, other, OsStr::new("g"));
        assert_eq!(t.child(dir, OsStr::new("f")), None);
        assert_eq!(t.child(other, OsStr::new("g")), Some(replaced));
        assert_eq!(t.key_of(replaced).as_deref(), Some("e/g"));
        assert!(t.unpublished_children(other).is_empty());

        // Everything forgotten: nothing left but the fixed nodes, and no empty name maps.
        t.forget(file, 2);
        t.forget(replaced, 1);
        t.forget(dir, 1);
        t.forget(other, 1);
        assert_eq!(t.len(), 2);
        assert_eq!(names(&t), 0);
        assert!(t.children.is_empty());
    }
}
