//! Deleted keys without folders (format 4). Deleting a key whose only version is implicit
//! (format 3) used to cost a folder, a hard link and two metadata files — three new inodes, a
//! removal through FUSE dearer than a native `unlink`. Instead its inode is moved, by one
//! rename, from the key path to where the key's folder would be in the version tree, with the
//! delete marker's id appended to the id already in its extended attribute. That file — a
//! *tombstone* — is the key's whole history: the version (bytes and inode-derived metadata)
//! and the delete marker after it. The rename is the commit point, so no journal is needed.
//! Before anything changes the key (or a longer key needs a folder below it), the tombstone is
//! expanded into an ordinary folder (docs/FORMAT.md, "Tombstones").

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::bucket::error::IoContext;
use crate::bucket::key::{self, ObjectKey};
use crate::bucket::layout::{DATA_SUFFIX, META_SUFFIX};
use crate::bucket::{
    Bucket, Durability, IMPLICIT_VERSION_XATTR, ObjectAttrs, Result, Staged, VersionMeta,
    implicit_ids, in_parent, sync_dir, write_json_atomic,
};

pub const TOMBSTONE_FORMAT_VERSION: u32 = 4;

/// Files up to this size are copied, not adopted, when renamed as an implicit first version
/// (see `rename_small_implicit`): the copy costs less than the folder and two metadata files
/// of an adoption, in time and, up to a few blocks, in space.
pub const RENAME_COPY_MAX: u64 = 64 * 1024;

/// Length of a version id (a ULID in Crockford base32).
const ID_LEN: usize = 26;

/// Format 5: an implicit version's (or tombstone's) attribute may name the S3 owner of what
/// it records, when that is not the inode's uid: a file written by root and handed to its
/// user (`cp -a`, `tar`, `rsync -a` as root) keeps both without a folder of its own.
pub const IMPLICIT_OWNER_FORMAT_VERSION: u32 = 5;

/// What a tombstone file records: the key's one version and the delete marker after it.
#[derive(Debug, Clone)]
pub(super) struct Tombstone {
    pub version_id: String,
    pub marker_id: String,
    /// The S3 owner of the version and of the marker (the attribute's, else the inode's uid).
    pub owner: u32,
    /// The tombstone's inode: the version's bytes, and what its metadata is derived from.
    pub stat: fs::Metadata,
}

/// What the attribute of an implicit version's inode records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ImplicitIds {
    pub version_id: String,
    /// The delete marker after the version, on a tombstone.
    pub marker_id: Option<String>,
    /// The S3 owner of the version (and of the marker), when it is not the inode's uid.
    pub owner: Option<u32>,
}

impl ImplicitIds {
    /// The S3 owner of what the attribute of the inode `stat` records.
    pub fn owner_with(&self, stat: &fs::Metadata) -> u32 {
        self.owner.unwrap_or(stat.uid())
    }

    /// The bucket format a value like this needs: `without_owner`, or format 5 once it names
    /// an owner.
    pub fn format(&self, without_owner: u32) -> u32 {
        match self.owner {
            Some(_) => IMPLICIT_OWNER_FORMAT_VERSION,
            None => without_owner,
        }
    }

    /// The attribute value: `ID`, or `ID` followed by a delete marker's id (`IDMARKER`, no
    /// separator: 52 bytes still fit in an ext4 inode's own attribute space, 53 would take a
    /// block of their own), then `~UID` (decimal) when the owner is not the inode's uid. So
    /// only a tombstone made by someone other than the file's owner (root's backups) spills
    /// into a block.
    pub fn encode(&self) -> String {
        let mut value = self.version_id.clone();
        if let Some(marker) = &self.marker_id {
            value.push_str(marker);
        }
        if let Some(owner) = self.owner {
            value.push_str(&format!("~{owner}"));
        }
        value
    }
}

/// Parses an implicit version's attribute value (see [`ImplicitIds::encode`]). At a key path
/// only the first id counts (a crash between writing the attribute and the rename that makes
/// a tombstone leaves both there).
pub(super) fn parse_ids(value: &[u8]) -> Option<ImplicitIds> {
    let text = std::str::from_utf8(value).ok()?;
    let (ids, owner) = match text.split_once('~') {
        Some((ids, uid)) => (ids, Some(parse_uid(uid)?)),
        None => (text, None),
    };
    let (first, rest) = match ids.len() {
        ID_LEN => (ids, None),
        n if n == 2 * ID_LEN => {
            let (a, b) = ids.split_at(ID_LEN);
            (a, Some(b))
        }
        _ => return None,
    };
    let valid = |id: &str| id.parse::<ulid::Ulid>().is_ok();
    if !valid(first) || rest.is_some_and(|r| !valid(r)) {
        return None;
    }
    Some(ImplicitIds {
        version_id: first.to_string(),
        marker_id: rest.map(str::to_string),
        owner,
    })
}

/// A uid as [`ImplicitIds::encode`] writes it: decimal digits only, no sign, no leading zero.
fn parse_uid(text: &str) -> Option<u32> {
    let canonical = text.bytes().all(|b| b.is_ascii_digit())
        && !text.is_empty()
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

/// The tombstone at `path` (where a key's folder would be), if that is one.
pub(super) fn read_tombstone(path: &Path) -> Option<Tombstone> {
    tombstone_with_stat(path, fs::symlink_metadata(path).ok()?)
}

/// [`read_tombstone`], given what `lstat` says is at `path`.
fn tombstone_with_stat(path: &Path, stat: fs::Metadata) -> Option<Tombstone> {
    if !stat.is_file() {
        return None;
    }
    let value = xattr::get(path, IMPLICIT_VERSION_XATTR).ok()??;
    let ids = parse_ids(&value)?;
    Some(Tombstone {
        owner: ids.owner_with(&stat),
        version_id: ids.version_id,
        marker_id: ids.marker_id?,
        stat,
    })
}

fn rename_with_flags(from: &Path, to: &Path, flags: libc::c_uint) -> io::Result<()> {
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: two valid NUL-terminated paths; renameat2 only acts on them.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Bucket {
    pub(super) fn tombstone(&self, key: &ObjectKey) -> Option<Tombstone> {
        read_tombstone(&self.layout.key_dir(key))
    }

    /// The bytes of `version_id` if a tombstone of `key` holds them. Checked on the open
    /// descriptor: an expansion in between swaps a folder in, but the inode stays the
    /// version's bytes for good (it becomes `@ID.data`), so whatever file this opens with the
    /// version's id on it is the right one.
    pub(super) fn open_tombstone_bytes(&self, key: &ObjectKey, version_id: &str) -> Option<File> {
        use xattr::FileExt;
        let file = File::open(self.layout.key_dir(key)).ok()?;
        let is_file = file.metadata().ok()?.is_file();
        let value = file.get_xattr(IMPLICIT_VERSION_XATTR).ok()??;
        let ids = parse_ids(&value)?;
        (is_file && ids.marker_id.is_some() && ids.version_id == version_id).then_some(file)
    }

    /// The metadata of `version_id` if it is one of the two a tombstone of `key` records.
    pub(super) fn tombstone_meta(
        &self,
        key: &ObjectKey,
        tombstone: &Tombstone,
        version_id: &str,
    ) -> Option<VersionMeta> {
        if version_id == tombstone.version_id {
            Some(self.derive_meta(
                key,
                version_id.to_string(),
                &tombstone.stat,
                tombstone.owner,
            ))
        } else if version_id == tombstone.marker_id {
            Some(self.marker_meta(key, version_id, tombstone.owner))
        } else {
            None
        }
    }

    /// A delete marker's metadata from its id and owner alone: what the delete marker written
    /// in full would hold, its time the one in its id (milliseconds).
    fn marker_meta(&self, key: &ObjectKey, marker_id: &str, owner: u32) -> VersionMeta {
        let ms = marker_id
            .parse::<ulid::Ulid>()
            .map(|u| u.timestamp_ms())
            .unwrap_or(0);
        let ns = i64::try_from(ms).unwrap_or(i64::MAX / 1_000_000) * 1_000_000;
        let mut meta =
            self.new_meta_with_id(key, owner, ObjectAttrs::default(), marker_id.to_string());
        meta.delete_marker = true;
        meta.retention = None;
        meta.last_modified_ns = ns;
        meta.field_times = crate::bucket::FieldTimes {
            tags: ns,
            acl: ns,
            retention: ns,
            legal_hold: ns,
        };
        meta
    }

    /// Deletes `key` by turning its implicit version into a tombstone, when it has one and
    /// nothing else: no history, no replication rules (a marker replicated must be queued),
    /// the deleter the version's owner (the attribute names one owner for both). `None`
    /// when the delete must take the ordinary path, and nothing was changed that counts.
    /// `current`: the key path; `stat`: what is there, read under the bucket lock.
    pub(super) fn delete_to_tombstone(
        &self,
        key: &ObjectKey,
        owner: u32,
        current: &Path,
        stat: &fs::Metadata,
    ) -> Result<Option<VersionMeta>> {
        if self.policy().is_some() {
            return Ok(None);
        }
        // A tombstone's version is read from its inode (mode, times): an inode that another
        // key's version also links (a rename's hard link) is no tombstone's own, and a chmod
        // of that key would change this version's metadata.
        if !stat.is_file() || stat.nlink() != 1 {
            return Ok(None);
        }
        let Some(ids) = implicit_ids(current) else {
            return Ok(None);
        };
        if ids.owner_with(stat) != owner {
            return Ok(None);
        }
        let marker_id = self.new_version_id();
        if marker_id <= ids.version_id {
            return Ok(None); // a clock behind the version's: the marker must sort after it
        }
        let tombstone = ImplicitIds {
            version_id: ids.version_id,
            marker_id: Some(marker_id.clone()),
            owner: (owner != stat.uid()).then_some(owner),
        };
        self.ensure_format(tombstone.format(TOMBSTONE_FORMAT_VERSION))?;
        // Harmless if the rename below does not happen: at a key path only the first id counts.
        let value = tombstone.encode();
        if xattr::set(current, IMPLICIT_VERSION_XATTR, value.as_bytes()).is_err() {
            return Ok(None);
        }
        // With --sync the attribute reaches the disk before the rename can: a tombstone
        // without its marker id would hide the key's history.
        self.fsync_if_strict(current)?;
        let position = self.layout.key_dir(key);
        // NOREPLACE: a folder or tombstone there means the key has history after all, and the
        // attribute of a file at its key path means nothing (the ordinary path adopts it).
        match in_parent(&position, || {
            rename_with_flags(current, &position, libc::RENAME_NOREPLACE)
        }) {
            Ok(()) => {}
            Err(e) => {
                log::debug!("{key}: delete without a tombstone ({e})");
                return Ok(None);
            }
        }
        if self.durability == Durability::Strict {
            sync_dir(position.parent().unwrap_or(&self.layout.versions_dir))?;
            sync_dir(current.parent().unwrap_or(&self.layout.root))?;
        }
        self.note_unsynced();
        Ok(Some(self.marker_meta(key, &marker_id, owner)))
    }

    /// `rename(2)` of a small file whose one version is implicit, what every "write a
    /// temporary file, then rename it into place" leaves (rsync, editors, git, package
    /// managers): `to` gets a new version holding a copy of the bytes, and `from` becomes a
    /// tombstone. The ordinary path adopts `from` into history first (its folder, a hard link,
    /// the version's and the marker's metadata files, and the version tree's parent folder when
    /// it is the first key there) so that both keys can share one inode: on ext4, 140–210 µs
    /// per rename through the mount against 80–140 µs for this path (a loop of 2,000 renames).
    /// Below [`RENAME_COPY_MAX`] a copy is cheaper in time, and in space too (each folder and
    /// metadata file takes a block of its own). `None`, having changed
    /// nothing, when the ordinary path must run: a bigger file, a key with history, replication
    /// rules in force, or a caller who is not the version's S3 owner (the tombstone's
    /// attribute names one owner for the version and its marker). Root renaming a file it
    /// wrote and handed to a user (`rsync -a` as root) is the owner: the attribute says so.
    pub(super) fn rename_small_implicit(
        &self,
        from: &ObjectKey,
        to: &ObjectKey,
        owner: u32,
    ) -> Result<Option<VersionMeta>> {
        if self.policy().is_some() {
            return Ok(None);
        }
        let current = self.current_path(from);
        let Ok(stat) = fs::symlink_metadata(&current) else {
            return Ok(None);
        };
        // What `delete_to_tombstone` checks as well, before the copy is made for nothing.
        if !stat.is_file() || stat.len() > RENAME_COPY_MAX || stat.nlink() != 1 {
            return Ok(None);
        }
        // An implicit version (its id on the inode) and no history: the version is what the
        // inode says, derived here from the stat already taken rather than looked up again.
        let Some(ids) = implicit_ids(&current) else {
            return Ok(None);
        };
        let version_owner = ids.owner_with(&stat);
        if version_owner != owner || fs::symlink_metadata(self.layout.key_dir(from)).is_ok() {
            return Ok(None);
        }
        let source = self.derive_meta(from, ids.version_id, &stat, version_owner);
        let Staged { path: staged, file } = self.stage_for_copy()?;
        if let Err(e) = copy_with_posix_attrs(&current, &file, &stat) {
            let _ = fs::remove_file(&staged);
            return Err(e).ctx(|| format!("copying {} to {}", current.display(), staged.display()));
        }
        drop(file);
        let mut attrs = source.attrs().for_new_version();
        attrs.posix = None; // read from the copy, which has the source's
        let meta = match self.publish_file_locked(to, &staged, owner, attrs, None) {
            Ok(meta) => meta,
            Err(e) => {
                let _ = fs::remove_file(&staged);
                return Err(e);
            }
        };
        if self
            .delete_to_tombstone(from, owner, &current, &stat)?
            .is_none()
        {
            // Not expected (everything it checks was checked above), but never a rename
            // that leaves the source in place.
            self.delete_locked(from, owner)?;
        }
        Ok(Some(meta))
    }

    /// Turns the tombstone of `key`, if it has one, into an ordinary folder holding the same
    /// two versions, before the key's history changes. The folder is built aside, in this
    /// process's session folder, and swapped in with one `RENAME_EXCHANGE`, so the key's
    /// history is whole at every instant; whatever a crash leaves aside goes with the dead
    /// session. Whether the key has a folder afterwards (one `lstat` tells both).
    pub(super) fn expand_tombstone(&self, key: &ObjectKey) -> Result<bool> {
        let position = self.layout.key_dir(key);
        let stat = match fs::symlink_metadata(&position) {
            Ok(stat) if stat.is_dir() => return Ok(true),
            Ok(stat) => stat,
            Err(_) => return Ok(false),
        };
        let Some(tombstone) = tombstone_with_stat(&position, stat) else {
            return Ok(false);
        };
        log::debug!("{key}: expanding its tombstone into a folder");
        let parent = position.parent().unwrap_or(&self.layout.versions_dir);
        let aside = self
            .session
            .dir()
            .join(format!("{}.expand", self.new_version_id()));
        fs::create_dir(&aside).ctx(|| format!("creating {}", aside.display()))?;
        let version = &tombstone.version_id;
        let data = aside.join(format!("@{version}{DATA_SUFFIX}"));
        fs::hard_link(&position, &data).ctx(|| format!("linking {}", data.display()))?;
        for id in [version, &tombstone.marker_id] {
            let meta = self
                .tombstone_meta(key, &tombstone, id)
                .expect("one of the tombstone's ids");
            let path = aside.join(format!("@{id}{META_SUFFIX}"));
            write_json_atomic(&path, &meta, self.durability)?;
        }
        if self.durability == Durability::Strict {
            sync_dir(&aside)?;
        }
        // No fallback for a disk without RENAME_EXCHANGE: removing the tombstone first would
        // leave the key's only copy in the session folder, which a crash hands to the dead
        // session's removal. The tombstone stays; what was built aside goes with the session.
        rename_with_flags(&aside, &position, libc::RENAME_EXCHANGE).ctx(|| {
            format!(
                "swapping the folder of {key} in for its tombstone (a disk without \
                 renameat2's RENAME_EXCHANGE cannot; the tombstone is kept)"
            )
        })?;
        fs::remove_file(&aside).ctx(|| format!("removing {}", aside.display()))?;
        if self.durability == Durability::Strict {
            sync_dir(parent)?;
        }
        self.note_unsynced();
        Ok(true)
    }

    /// Makes the folder of `key` in the version tree, expanding any tombstone in the way (of
    /// the key itself or of a shorter key it lies under). Whether the folder is new.
    pub(super) fn make_key_dir(&self, key: &ObjectKey) -> Result<bool> {
        let dir = self.layout.key_dir(key);
        let creating = |e| crate::bucket::BucketError::Io {
            context: format!("creating {}", dir.display()),
            source: e,
        };
        // Some(whether new) once the folder is there; None while a file is in the way.
        let attempt = || match crate::bucket::create_dir_new(&dir) {
            Ok(new) if new || dir.is_dir() => Ok(Some(new)),
            Ok(_) => Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
            Err(e) => Err(creating(e)),
        };
        if let Some(new) = attempt()? {
            return Ok(new);
        }
        let mut prefix = String::new();
        for part in key.as_str().split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            self.expand_tombstone(&ObjectKey::new(prefix.clone())?)?;
        }
        // Still in the way: a file that is no tombstone (its attribute lost, say by a copy
        // without xattrs), refused rather than guessed at.
        attempt()?.ok_or_else(|| crate::bucket::BucketError::Io {
            context: format!(
                "creating {}: a file that is not a tombstone is in the way",
                dir.display()
            ),
            source: io::Error::from_raw_os_error(libc::ENOTDIR),
        })
    }

    /// The versions a file found by a walk of the version tree records, if it is a tombstone
    /// (for scans that read `@ID.json` files, such as `bucketfs replicate --existing`).
    pub fn tombstone_versions(&self, path: &Path) -> Vec<VersionMeta> {
        let Some(tombstone) = read_tombstone(path) else {
            return Vec::new();
        };
        let Some(key) = self.key_of_tree_path(path) else {
            return Vec::new();
        };
        [&tombstone.version_id, &tombstone.marker_id]
            .into_iter()
            .filter_map(|id| self.tombstone_meta(&key, &tombstone, id))
            .collect()
    }

    fn key_of_tree_path(&self, path: &Path) -> Option<ObjectKey> {
        let rel: PathBuf = path.strip_prefix(&self.layout.versions_dir).ok()?.into();
        let parts: Option<Vec<&str>> = rel
            .iter()
            .map(|c| c.to_str().and_then(key::unescape_component))
            .collect();
        ObjectKey::new(parts?.join("/")).ok()
    }
}

/// Copies `from` (whose metadata is `stat`) into the empty file `dst`: its bytes, owner, mode
/// and times: the POSIX attributes the copy's version is derived from.
fn copy_with_posix_attrs(from: &Path, mut dst: &File, stat: &fs::Metadata) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut src = File::open(from)?;
    copy_bytes(&mut src, &mut dst, stat.len())?;
    // Owner before mode: chown clears the set-user/group-ID bits.
    std::os::unix::fs::fchown(dst, Some(stat.uid()), Some(stat.gid()))?;
    dst.set_permissions(fs::Permissions::from_mode(stat.mode() & 0o7777))?;
    dst.set_times(
        fs::FileTimes::new()
            .set_accessed(stat.accessed()?)
            .set_modified(stat.modified()?),
    )
}

/// The `len` bytes (the size a stat just gave) of `src` to `dst`, in the kernel where the disk
/// lets it (`copy_file_range`: no pass through user space, and none of the two `fstat`s
/// `io::copy` makes to find out whether it may), else through a buffer.
fn copy_bytes(src: &mut File, dst: &mut &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut left = len;
    while left > 0 {
        // SAFETY: two open descriptors; null offsets use and advance the files' own.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                std::ptr::null_mut(),
                dst.as_raw_fd(),
                std::ptr::null_mut(),
                usize::try_from(left).unwrap_or(usize::MAX),
                0,
            )
        };
        match n {
            // Shorter than the stat said (nothing writes it: no writer has it open).
            0 => break,
            n if n > 0 => left -= n as u64,
            _ => {
                let e = io::Error::last_os_error();
                return match e.raw_os_error() {
                    // Not between these two files (another disk, a FUSE or network disk
                    // without it): by hand, from where the kernel stopped.
                    Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL) => {
                        io::copy(src, dst).map(drop)
                    }
                    _ => Err(e),
                };
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{ImplicitIds, copy_bytes, parse_ids};
    use std::fs::{self, File};

    /// On one disk the kernel copies; from tmpfs to the disk it refuses (EXDEV) and the bytes
    /// go through a buffer, from where it stopped. Both give the whole file.
    #[test]
    fn bytes_are_copied_whole_within_a_disk_and_across_disks() {
        let disk = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let shm = tempfile::tempdir_in("/dev/shm").unwrap();
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for (n, src_dir) in [disk.path(), shm.path()].into_iter().enumerate() {
            let src_path = src_dir.join(format!("src{n}"));
            fs::write(&src_path, &bytes).unwrap();
            let dst_path = disk.path().join(format!("dst{n}"));
            let dst = File::create(&dst_path).unwrap();
            let mut src = File::open(&src_path).unwrap();
            copy_bytes(&mut src, &mut &dst, bytes.len() as u64).unwrap();
            assert_eq!(
                fs::read(&dst_path).unwrap(),
                bytes,
                "from {}",
                src_dir.display()
            );
        }
    }

    #[test]
    fn attribute_values_hold_one_id_or_an_id_and_a_marker_and_maybe_an_owner() {
        let a = "01JD3Q4K6Z0000000000000001";
        let b = "01JD3Q6X8M0000000000000006";
        let ids = |version: &str, marker: Option<&str>, owner| ImplicitIds {
            version_id: version.into(),
            marker_id: marker.map(str::to_string),
            owner,
        };
        for (value, parsed) in [
            (a.to_string(), ids(a, None, None)),
            (format!("{a}{b}"), ids(a, Some(b), None)),
            (format!("{a}~0"), ids(a, None, Some(0))),
            (format!("{a}{b}~65534"), ids(a, Some(b), Some(65534))),
            (format!("{a}~4294967295"), ids(a, None, Some(u32::MAX))),
        ] {
            assert_eq!(
                parse_ids(value.as_bytes()).as_ref(),
                Some(&parsed),
                "{value}"
            );
            assert_eq!(parsed.encode(), value, "written as read");
        }
        for bad in [
            format!("{a} {b}"),
            "not-a-ulid-but-26-bytes-xx".to_string(),
            format!("{a}{}", &b[..25]),
            format!("{a}~"),
            format!("{a}~01"),
            format!("{a}~-1"),
            format!("{a}~+1"),
            format!("{a}~ 1"),
            format!("{a}~4294967296"),
            format!("{a}~1~2"),
            format!("~0{a}"),
        ] {
            assert_eq!(parse_ids(bad.as_bytes()), None, "{bad}");
        }
    }
}
