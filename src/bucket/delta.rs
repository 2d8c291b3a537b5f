//! Reverse deltas: a small change to a big object without copying it.
//!
//! A writer that opens a big object without `O_TRUNC` gets an *overlay*: a sparse staging file
//! that receives only what it writes, the set of byte ranges written, and how far the object
//! was truncated. Reads of unwritten ranges come from the current version. Publishing then
//! saves the bytes about to change into `@OLD.undo`, writes the new ranges into the current
//! version's inode in place, and makes that inode the new version; the old version becomes
//! "the new one, with these ranges put back" (`delta` in its metadata). The current version is
//! therefore always a plain file at its key path; an old version is rebuilt into a plain file
//! (materialised) the first time its bytes are read. See docs/FORMAT.md.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    Bucket, JournalEntry, ObjectKey, Result, VersionMeta, clone_or_copy, remove_if_exists,
    sync_dir, write_json_atomic,
};
use crate::bucket::error::IoContext;
use crate::bucket::meta::{ObjectAttrs, PosixAttrs};

/// The format number of a bucket that holds reverse deltas (older bucketfs must refuse it).
pub const DELTA_FORMAT_VERSION: u32 = 2;

/// Disjoint, non-adjacent byte ranges `[start, end)`, kept merged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<(u64, u64)>", into = "Vec<(u64, u64)>")]
pub struct RangeSet(BTreeMap<u64, u64>);

impl From<Vec<(u64, u64)>> for RangeSet {
    fn from(v: Vec<(u64, u64)>) -> Self {
        let mut s = RangeSet::default();
        for (start, end) in v {
            s.insert(start, end);
        }
        s
    }
}

impl From<RangeSet> for Vec<(u64, u64)> {
    fn from(s: RangeSet) -> Self {
        s.0.into_iter().collect()
    }
}

impl RangeSet {
    pub fn insert(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        // Swallow every range that touches [start, end).
        let touching: Vec<(u64, u64)> = self
            .0
            .range(..=end)
            .rev()
            .take_while(|(_, e)| **e >= start)
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in touching {
            self.0.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.0.insert(start, end);
    }

    /// Forgets everything at or past `len`.
    pub fn truncate(&mut self, len: u64) {
        let cut: Vec<(u64, u64)> = self
            .0
            .range(..)
            .filter(|(_, e)| **e > len)
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, _) in cut {
            self.0.remove(&s);
            if s < len {
                self.0.insert(s, len);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().map(|(s, e)| (*s, *e))
    }

    /// How many bytes the set covers.
    pub fn covered(&self) -> u64 {
        self.iter().map(|(s, e)| e - s).sum()
    }

    /// The parts of `[start, end)` inside the set (`true`) and outside it (`false`), in order.
    pub fn split(&self, start: u64, end: u64) -> Vec<(u64, u64, bool)> {
        let mut out = Vec::new();
        let mut at = start;
        let first = self
            .0
            .range(..=start)
            .next_back()
            .map(|(s, _)| *s)
            .unwrap_or(start);
        for (s, e) in self.0.range(first..end) {
            let (s, e) = (*s.max(&at), (*e).min(end));
            if e <= at {
                continue;
            }
            if s > at {
                out.push((at, s, false));
            }
            out.push((s, e, true));
            at = e;
        }
        if at < end {
            out.push((at, end, false));
        }
        out
    }
}

/// What a writer changed in an object opened as an overlay (see the module comment).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overlay {
    pub base_key: String,
    pub base_version: String,
    pub base_size: u64,
    /// Bytes of the base at or past this offset are gone (the file was truncated there).
    pub base_limit: u64,
    pub written: RangeSet,
}

impl Overlay {
    pub fn new(key: &ObjectKey, base: &VersionMeta) -> Self {
        Overlay {
            base_key: key.to_string(),
            base_version: base.version_id.clone(),
            base_size: base.size,
            base_limit: base.size,
            written: RangeSet::default(),
        }
    }

    pub fn record_write(&mut self, offset: u64, len: u64) {
        self.written.insert(offset, offset + len);
    }

    pub fn record_truncate(&mut self, len: u64) {
        self.base_limit = self.base_limit.min(len);
        self.written.truncate(len);
    }

    /// Copies into `staged` the base's bytes of what `[from, to)` holds unwritten: done over
    /// the whole file, the staged file is the one the writer sees.
    pub fn copy_unwritten(
        &self,
        base: &File,
        staged: &File,
        from: u64,
        to: u64,
    ) -> std::io::Result<()> {
        // Past the truncation point the file holds zeros, as the staged file's hole does.
        let end = to.min(self.base_end());
        if from < end {
            for (s, e, written) in self.written.split(from, end) {
                if !written {
                    copy_range(base, s, staged, s, e - s)?;
                }
            }
        }
        Ok(())
    }

    /// Whether the writer changed so much of the base that a full copy costs less than a
    /// reverse delta. The copy fills the unwritten bytes from the base and keeps the old
    /// version whole: as many bytes copied, and as many kept beyond what a delta keeps. The
    /// delta saves the old bytes of every changed range and writes the new ones in place:
    /// twice the changed bytes, and the changed bytes kept.
    pub fn cheaper_as_copy(&self) -> bool {
        let unwritten: u64 = self
            .written
            .split(0, self.base_end())
            .into_iter()
            .filter(|(_, _, written)| !written)
            .map(|(s, e, _)| e - s)
            .sum();
        unwritten <= self.changed_base_ranges().covered()
    }

    /// Where the base's bytes end for this writer: an overlay filled up to here is whole.
    pub fn base_end(&self) -> u64 {
        self.base_limit.min(self.base_size)
    }

    /// Reads `[offset, offset + buf.len())` of the file the writer sees, `len` bytes long.
    pub fn read_at(
        &self,
        staged: &File,
        base: &File,
        buf: &mut [u8],
        offset: u64,
        len: u64,
    ) -> std::io::Result<usize> {
        let end = (offset + buf.len() as u64).min(len);
        if end <= offset {
            return Ok(0);
        }
        for (s, e, written) in self.written.split(offset, end) {
            let part = &mut buf[(s - offset) as usize..(e - offset) as usize];
            if written {
                staged.read_exact_at(part, s)?;
            } else {
                // Unwritten: the base's bytes below the truncation point, zeros past it.
                part.fill(0);
                let from_base = e.min(self.base_limit).saturating_sub(s) as usize;
                if from_base > 0 {
                    base.read_exact_at(&mut part[..from_base], s)?;
                }
            }
        }
        Ok((end - offset) as usize)
    }

    /// The ranges of the base whose bytes the new version changes: what must be saved.
    fn changed_base_ranges(&self) -> RangeSet {
        let mut changed = self.written.clone();
        changed.truncate(self.base_size);
        changed.insert(self.base_limit, self.base_size);
        changed
    }
}

/// Metadata of a version stored as a reverse delta against a newer version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaRef {
    /// The newer version of the same key whose bytes this one starts from.
    pub base: String,
    /// Ranges `[start, end)` of this version that differ from `base`; their bytes are stored
    /// one after the other in `@ID.undo`.
    pub ranges: RangeSet,
}

/// Journal record of a delta publish (kind `delta`).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct DeltaPublish {
    staged: PathBuf,
    meta: VersionMeta,
    overlay: Overlay,
}

impl Bucket {
    /// Publishes an overlay as the new current version of its key, changing the current
    /// version's bytes in place and keeping what they were as a reverse delta. Falls back to
    /// a full copy when the overlay's base is no longer the current version (e.g. the key was
    /// renamed while open).
    pub fn publish_overlay(
        &self,
        key: &ObjectKey,
        staged: &Path,
        overlay: &Overlay,
        owner: u32,
        attrs: ObjectAttrs,
        pending: Option<&JournalEntry>,
    ) -> Result<VersionMeta> {
        let _guard = self.lock();
        self.publish_overlay_locked(key, staged, overlay, owner, attrs, pending)
    }

    pub(super) fn publish_overlay_locked(
        &self,
        key: &ObjectKey,
        staged: &Path,
        overlay: &Overlay,
        owner: u32,
        attrs: ObjectAttrs,
        pending: Option<&JournalEntry>,
    ) -> Result<VersionMeta> {
        self.adopt(key)?;
        let base = self.current(key)?;
        let in_place = base.as_ref().is_some_and(|b| {
            overlay.base_key == key.as_str()
                && b.version_id == overlay.base_version
                && b.size == overlay.base_size
                && b.delta.is_none()
                && b.pending_destinations().is_empty()
                && self.bytes_only_this_key_has(key, &b.version_id)
        });
        if !in_place {
            log::info!(
                "{key}: overlay base is no longer current, or its bytes are another key's too; \
                 publishing a full copy"
            );
            self.fill_overlay(staged, overlay)?;
            return self.publish_file_locked(key, staged, owner, attrs, pending);
        }
        // A bucket holding reverse deltas is format 2: refused by a bucketfs that predates them.
        self.ensure_format(DELTA_FORMAT_VERSION)?;
        let old = base.expect("checked above");
        let st = fs::metadata(staged).ctx(|| format!("stat of {}", staged.display()))?;
        let mut meta = self.new_meta(key, owner, attrs);
        meta.size = st.len();
        meta.posix = Some(PosixAttrs {
            mode: st.mode(),
            uid: st.uid(),
            gid: st.gid(),
            mtime_ns: st.mtime() * 1_000_000_000 + st.mtime_nsec(),
        });
        // The old bytes, then the new ones, on stable storage before the first byte of the
        // old version is overwritten: recovery can always finish the change.
        let saved = self.save_undo(key, &old.version_id, overlay)?;
        File::open(staged)
            .and_then(|f| f.sync_all())
            .ctx(|| format!("fsync of {}", staged.display()))?;
        self.plan_new_version(&mut meta);
        self.enqueue(&meta)?;
        let record = DeltaPublish {
            staged: staged.to_path_buf(),
            meta: meta.clone(),
            overlay: overlay.clone(),
        };
        let intent = self
            .session
            .journal_open("delta", &meta.version_id, &record, true)?;
        self.finish_delta(key, &record, &old, saved)?;
        self.session.journal_done(&intent)?;
        if let Some(record) = pending {
            self.session.journal_done(record)?;
        }
        self.note_unsynced();
        if !meta.pending_destinations().is_empty() {
            self.wake_replication();
        }
        Ok(meta)
    }

    /// Whether the bytes of `key`'s version `id` are linked nowhere but at its `@ID.data` and
    /// the key path. A rename shares its source's bytes with the new version (a hard link), so
    /// the inode may also be another key's version: changing it in place would rewrite that
    /// key's history.
    fn bytes_only_this_key_has(&self, key: &ObjectKey, id: &str) -> bool {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(self.layout.data_file(key, id)).is_ok_and(|m| m.nlink() <= 2)
    }

    /// Steps after the journal entry; idempotent, so recovery runs them again.
    fn finish_delta(
        &self,
        key: &ObjectKey,
        record: &DeltaPublish,
        old: &VersionMeta,
        saved: RangeSet,
    ) -> Result<()> {
        let (overlay, meta) = (&record.overlay, &record.meta);
        let old_data = self.layout.data_file(key, &old.version_id);
        let new_data = self.layout.data_file(key, &meta.version_id);
        if record.staged.exists() {
            let target = if old_data.exists() {
                &old_data
            } else {
                &new_data
            };
            let inode = OpenOptions::new()
                .write(true)
                .open(target)
                .ctx(|| format!("opening {}", target.display()))?;
            let staged = File::open(&record.staged)
                .ctx(|| format!("opening {}", record.staged.display()))?;
            apply_overlay(&staged, &inode, overlay, meta.size)
                .ctx(|| format!("updating {} in place", target.display()))?;
            if let Some(p) = &meta.posix {
                set_posix(&inode, p).ctx(|| format!("attributes of {}", target.display()))?;
            }
        }
        if !new_data.exists() {
            fs::hard_link(&old_data, &new_data)
                .ctx(|| format!("linking {}", new_data.display()))?;
        }
        // The old version's metadata now says how to rebuild it: the commit point for it.
        if old.delta.is_none() {
            let mut as_delta = old.clone();
            as_delta.delta = Some(DeltaRef {
                base: meta.version_id.clone(),
                ranges: saved,
            });
            // On stable storage before its plain bytes go: a power cut must never leave the
            // old version with neither.
            write_json_atomic(
                &self.layout.meta_file(key, &old.version_id),
                &as_delta,
                super::Durability::Strict,
            )?;
            sync_dir(&self.layout.key_dir(key))?;
        }
        remove_if_exists(&old_data)?;
        write_json_atomic(
            &self.layout.meta_file(key, &meta.version_id),
            meta,
            self.durability,
        )?;
        remove_if_exists(&record.staged)?;
        if self.strict() {
            sync_dir(&self.layout.key_dir(key))?;
        }
        Ok(())
    }

    /// Writes `@OLD.undo`: the base's bytes in the ranges the overlay changes, fsynced.
    fn save_undo(&self, key: &ObjectKey, old: &str, overlay: &Overlay) -> Result<RangeSet> {
        let ranges = overlay.changed_base_ranges();
        let data = self.layout.data_file(key, old);
        let undo_path = self.layout.undo_file(key, old);
        let base = File::open(&data).ctx(|| format!("opening {}", data.display()))?;
        let undo = File::create(&undo_path).ctx(|| format!("creating {}", undo_path.display()))?;
        let mut at = 0u64;
        for (s, e) in ranges.iter() {
            copy_range(&base, s, &undo, at, e - s).ctx(|| {
                format!(
                    "saving bytes of {} into {}",
                    data.display(),
                    undo_path.display()
                )
            })?;
            at += e - s;
        }
        undo.sync_all()
            .ctx(|| format!("fsync of {}", undo_path.display()))?;
        Ok(ranges)
    }

    /// Completes an overlay's holes from its base, turning it into an ordinary staged file.
    pub fn fill_overlay(&self, staged: &Path, overlay: &Overlay) -> Result<()> {
        let base_key = ObjectKey::new(overlay.base_key.clone())?;
        let base_path = self.version_bytes_path_locked(&base_key, &overlay.base_version)?;
        let base = File::open(&base_path).ctx(|| format!("opening {}", base_path.display()))?;
        let out = OpenOptions::new()
            .write(true)
            .open(staged)
            .ctx(|| format!("opening {}", staged.display()))?;
        overlay
            .copy_unwritten(&base, &out, 0, u64::MAX)
            .ctx(|| format!("filling {} from {}", staged.display(), base_path.display()))
    }

    /// Where a version's bytes are, rebuilding a reverse-delta version into a plain file first
    /// (an unversioned object's bytes are at its key path).
    pub fn version_bytes_path(&self, key: &ObjectKey, version_id: &str) -> Result<PathBuf> {
        let data = self.layout.data_file(key, version_id);
        if data.exists() {
            return Ok(data);
        }
        let _guard = self.lock();
        self.version_bytes_path_locked(key, version_id)
    }

    pub(super) fn version_bytes_path_locked(
        &self,
        key: &ObjectKey,
        version_id: &str,
    ) -> Result<PathBuf> {
        let data = self.layout.data_file(key, version_id);
        if data.exists() {
            return Ok(data);
        }
        if self
            .unversioned(key)
            .is_some_and(|m| m.version_id == version_id)
        {
            return Ok(self.current_path(key));
        }
        if self
            .tombstone(key)
            .is_some_and(|t| t.version_id == version_id)
        {
            return Ok(self.layout.key_dir(key));
        }
        if self.meta(key, version_id)?.delta.is_some() {
            self.materialise(key, version_id)?;
        }
        Ok(data)
    }

    /// Rebuilds `@ID.data` of a reverse-delta version: a copy of the first plain version down
    /// its chain of bases, with each delta's saved ranges put back, nearest to the base first.
    pub(super) fn materialise(&self, key: &ObjectKey, version_id: &str) -> Result<()> {
        let mut chain = Vec::new();
        let mut at = self.meta(key, version_id)?;
        while let Some(delta) = at.delta.clone() {
            chain.push(at);
            at = self.meta(key, &delta.base)?;
        }
        let base_path = self.layout.data_file(key, &at.version_id);
        log::info!(
            "{key}: rebuilding version {version_id} from {} and {} reverse delta(s)",
            at.version_id,
            chain.len()
        );
        let base = File::open(&base_path).ctx(|| format!("opening {}", base_path.display()))?;
        let staged = self.stage_empty()?;
        clone_or_copy(&base, &staged.file).ctx(|| format!("copying {}", base_path.display()))?;
        for version in chain.iter().rev() {
            let delta = version.delta.as_ref().expect("chain holds deltas");
            let undo_path = self.layout.undo_file(key, &version.version_id);
            let undo = File::open(&undo_path).ctx(|| format!("opening {}", undo_path.display()))?;
            staged
                .file
                .set_len(version.size)
                .ctx(|| format!("sizing {}", staged.path.display()))?;
            let mut from = 0u64;
            for (s, e) in delta.ranges.iter() {
                copy_range(&undo, from, &staged.file, s, e - s)
                    .ctx(|| format!("applying {}", undo_path.display()))?;
                from += e - s;
            }
        }
        let target = chain.first().expect("a delta version");
        if let Some(p) = &target.posix {
            set_posix(&staged.file, p)
                .ctx(|| format!("attributes of {}", staged.path.display()))?;
        }
        if self.strict() {
            staged
                .file
                .sync_all()
                .ctx(|| format!("fsync of {}", staged.path.display()))?;
        }
        let data = self.layout.data_file(key, version_id);
        fs::rename(&staged.path, &data).ctx(|| format!("creating {}", data.display()))?;
        let mut plain = target.clone();
        plain.delta = None;
        write_json_atomic(
            &self.layout.meta_file(key, version_id),
            &plain,
            self.durability,
        )?;
        remove_if_exists(&self.layout.undo_file(key, version_id))?;
        self.note_unsynced();
        Ok(())
    }

    /// Before `version_id` goes away, versions rebuilt from it become plain files.
    pub(super) fn materialise_dependents(&self, key: &ObjectKey, version_id: &str) -> Result<()> {
        for v in self.versions(key)? {
            if self
                .meta(key, &v)
                .is_ok_and(|m| m.delta.is_some_and(|d| d.base == version_id))
            {
                self.materialise(key, &v)?;
            }
        }
        Ok(())
    }

    /// Recovery of a `delta` journal entry: the new version's bytes were on stable storage
    /// before the entry was written, so the change is always finished.
    pub(super) fn recover_delta(&self, record: DeltaPublish) -> Result<()> {
        let key = ObjectKey::new(record.meta.key.clone())?;
        let old = self.meta(&key, &record.overlay.base_version)?;
        log::info!(
            "recovery: completing in-place version {} of {key}",
            record.meta.version_id
        );
        let saved = match &old.delta {
            Some(d) => d.ranges.clone(),
            None => record.overlay.changed_base_ranges(),
        };
        self.finish_delta(&key, &record, &old, saved)?;
        self.repair_current(&key)
    }

    /// Whether the bucket's disk can reflink (btrfs, XFS): then a copy at open costs nothing
    /// and overlays are not needed.
    pub fn supports_reflink(&self) -> bool {
        *self.reflink.get_or_init(|| {
            let probe = || -> Result<bool> {
                let a = self.stage_empty()?;
                let b = self.stage_empty()?;
                // SAFETY: FICLONE with two valid descriptors.
                let ok =
                    unsafe { libc::ioctl(b.file.as_raw_fd(), libc::FICLONE, a.file.as_raw_fd()) }
                        == 0;
                self.discard_staged(&a.path);
                self.discard_staged(&b.path);
                Ok(ok)
            };
            probe().unwrap_or(false)
        })
    }
}

/// The new version's bytes, written into the old version's inode: the truncation, the
/// written ranges, the final length.
fn apply_overlay(staged: &File, inode: &File, overlay: &Overlay, len: u64) -> std::io::Result<()> {
    if overlay.base_limit < inode.metadata()?.len() {
        inode.set_len(overlay.base_limit)?;
    }
    for (s, e) in overlay.written.iter() {
        copy_range(staged, s, inode, s, e - s)?;
    }
    inode.set_len(len)?;
    inode.sync_data()
}

fn set_posix(file: &File, p: &PosixAttrs) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(p.mode & 0o7777))?;
    std::os::unix::fs::fchown(file, Some(p.uid), Some(p.gid))?;
    let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(p.mtime_ns.max(0) as u64);
    file.set_modified(mtime)
}

/// copy_file_range of exactly `len` bytes (in the kernel; through user space across
/// filesystems that refuse it, e.g. a replica on a network disk).
pub(super) fn copy_range(
    src: &File,
    src_off: u64,
    dst: &File,
    dst_off: u64,
    len: u64,
) -> std::io::Result<()> {
    let mut done = 0u64;
    while done < len {
        let mut off_in = (src_off + done) as i64;
        let mut off_out = (dst_off + done) as i64;
        // SAFETY: valid descriptors and offset pointers that live across the call.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                (len - done).min(1 << 30) as usize,
                0,
            )
        };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if !matches!(
                err.raw_os_error(),
                Some(libc::EXDEV | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL)
            ) {
                return Err(err);
            }
            let mut buf = vec![0u8; (len - done).min(1 << 20) as usize];
            src.read_exact_at(&mut buf, src_off + done)?;
            dst.write_all_at(&buf, dst_off + done)?;
            done += buf.len() as u64;
            continue;
        }
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "source ended early",
            ));
        }
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Overlay, RangeSet};

    fn overlay(base_size: u64) -> Overlay {
        Overlay {
            base_key: "k".into(),
            base_version: "v".into(),
            base_size,
            base_limit: base_size,
            written: RangeSet::default(),
        }
    }

    #[test]
    fn an_overlay_is_cheaper_as_a_copy_once_it_changed_at_least_what_it_left() {
        let mut o = overlay(100);
        o.record_write(0, 10);
        assert!(!o.cheaper_as_copy(), "10 bytes changed, 90 to copy");
        o.record_write(10, 40);
        assert!(o.cheaper_as_copy(), "50 changed, 50 to copy");
        let mut o = overlay(100);
        o.record_write(0, 10);
        o.record_truncate(30); // bytes 30.. of the base are changed too: gone
        assert!(o.cheaper_as_copy(), "80 changed, 20 to copy");
        let mut o = overlay(100);
        o.record_write(95, 1000); // written past the end: 5 bytes of the base changed
        assert!(!o.cheaper_as_copy(), "5 changed, 95 to copy");
    }

    fn set(v: &[(u64, u64)]) -> RangeSet {
        RangeSet::from(v.to_vec())
    }

    #[test]
    fn ranges_merge_when_they_touch_or_overlap() {
        let mut s = set(&[(0, 4), (10, 12)]);
        s.insert(4, 6);
        assert_eq!(Vec::from(s.clone()), vec![(0, 6), (10, 12)]);
        s.insert(5, 11);
        assert_eq!(Vec::from(s.clone()), vec![(0, 12)]);
        s.insert(20, 20);
        assert_eq!(s.len(), 1);
        s.insert(13, 14);
        assert_eq!(Vec::from(s), vec![(0, 12), (13, 14)]);
    }

    #[test]
    fn truncate_cuts_ranges() {
        let mut s = set(&[(0, 4), (10, 20), (30, 40)]);
        s.truncate(15);
        assert_eq!(Vec::from(s.clone()), vec![(0, 4), (10, 15)]);
        s.truncate(0);
        assert!(s.is_empty());
    }

    #[test]
    fn split_covers_the_range_in_order() {
        let s = set(&[(2, 4), (6, 8)]);
        assert_eq!(
            s.split(0, 10),
            vec![
                (0, 2, false),
                (2, 4, true),
                (4, 6, false),
                (6, 8, true),
                (8, 10, false)
            ]
        );
        assert_eq!(
            s.split(3, 7),
            vec![(3, 4, true), (4, 6, false), (6, 7, true)]
        );
        assert_eq!(s.split(8, 9), vec![(8, 9, false)]);
    }
}
