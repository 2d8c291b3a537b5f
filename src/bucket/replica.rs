//! What the bucket store offers replication: a durable queue of versions with replication
//! work, per-destination status, and importing versions and metadata from another bucket.
//! Which versions go where is decided outside (the [`ReplicationPolicy`] the engine installs).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{
    Bucket, BucketError, IoContext, ObjectKey, Result, VersionMeta, clone_or_copy, read_json,
    remove_if_exists, write_json_atomic,
};

pub const PENDING: &str = "PENDING";
pub const COMPLETED: &str = "COMPLETED";
pub const FAILED: &str = "FAILED";
pub const REPLICA: &str = "REPLICA";

/// Decides, from the rules in force, where a version must be replicated.
pub trait ReplicationPolicy: Send + Sync {
    /// Destination bucket names for this version (for a replica: the buckets its metadata
    /// changes flow back to). Empty: nowhere.
    fn destinations(&self, meta: &VersionMeta) -> Vec<String>;
    /// New work was queued (called after it is durable).
    fn wake(&self);
}

/// One queued version with replication work.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    pub key: String,
    pub version_id: String,
}

/// What importing a version into a destination did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Imported {
    New,
    AlreadyThere,
}

impl VersionMeta {
    /// S3's x-amz-replication-status from the per-destination states.
    pub fn aggregate_status(&self) -> Option<String> {
        let states = self.replication.as_ref()?;
        let any = |s: &str| states.values().any(|v| v == s);
        let status = if any(FAILED) {
            FAILED
        } else if any(PENDING) {
            PENDING
        } else if self.replica_of.is_some() {
            REPLICA
        } else if states.is_empty() {
            return None;
        } else {
            COMPLETED
        };
        Some(status.to_string())
    }

    pub fn pending_destinations(&self) -> Vec<String> {
        self.replication
            .iter()
            .flatten()
            .filter(|(_, s)| s.as_str() == PENDING)
            .map(|(d, _)| d.clone())
            .collect()
    }
}

impl Bucket {
    pub fn set_replication_policy(&self, policy: Option<Arc<dyn ReplicationPolicy>>) {
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = policy;
    }

    pub(super) fn policy(&self) -> Option<Arc<dyn ReplicationPolicy>> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The bucket's name: its directory's name (replication rules name buckets by it).
    pub fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn queue_dir(&self) -> PathBuf {
        self.layout.meta_dir.join("replication").join("queue")
    }

    /// Marks a new local version with the replication work the rules in force ask for. A
    /// version made while no configuration is in force gets no state at all: it is never
    /// replicated live (S3 does not replicate retroactively).
    pub(super) fn plan_new_version(&self, meta: &mut VersionMeta) {
        let Some(policy) = self.policy() else { return };
        if meta.replica_of.is_some() {
            return;
        }
        meta.replication = Some(
            policy
                .destinations(meta)
                .into_iter()
                .map(|d| (d, PENDING.to_string()))
                .collect(),
        );
        meta.replication_status = meta.aggregate_status();
    }

    /// After a tag, ACL or Object Lock change: replicated versions send the change on, a
    /// version the change makes eligible (a tag rule now matches) is replicated, and a replica
    /// sends it back if replica modification sync is on. Returns whether work was queued.
    pub(super) fn plan_metadata_change(&self, meta: &mut VersionMeta) -> bool {
        let Some(policy) = self.policy() else {
            return false;
        };
        if meta.replication.is_none() && meta.replica_of.is_none() {
            return false; // predates the configuration
        }
        let targets = policy.destinations(meta);
        let states = meta.replication.get_or_insert_with(BTreeMap::new);
        let mut queued = false;
        for dest in targets {
            let state = states.entry(dest).or_insert_with(|| PENDING.to_string());
            if state != FAILED {
                *state = PENDING.to_string();
                queued = true;
            }
        }
        meta.replication_status = meta.aggregate_status();
        queued
    }

    /// Puts a version on the replication queue (before its metadata commits: an entry whose
    /// version never committed is simply dropped by the engine).
    pub(super) fn enqueue(&self, meta: &VersionMeta) -> Result<bool> {
        if meta.pending_destinations().is_empty() {
            return Ok(false);
        }
        let dir = self.queue_dir();
        fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        let entry = QueueEntry {
            key: meta.key.clone(),
            version_id: meta.version_id.clone(),
        };
        write_json_atomic(
            &self.queue_entry_path(&meta.key, &meta.version_id),
            &entry,
            self.durability,
        )?;
        Ok(true)
    }

    /// One entry per version: named by version id (creation order) and a digest of the key,
    /// since ids repeat across keys (every unversioned object is `null`).
    fn queue_entry_path(&self, key: &str, version_id: &str) -> PathBuf {
        let digest = super::hex_md5(key.as_bytes());
        self.queue_dir()
            .join(format!("{version_id}-{}.json", &digest[..16]))
    }

    pub(super) fn wake_replication(&self) {
        if let Some(p) = self.policy() {
            p.wake();
        }
    }

    /// Queued versions, oldest first.
    pub fn queue(&self) -> Result<Vec<(PathBuf, QueueEntry)>> {
        let dir = self.queue_dir();
        let mut out = Vec::new();
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(out);
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                match read_json::<QueueEntry>(&path) {
                    Ok(e) => out.push((path, e)),
                    Err(e) => log::warn!("replication queue: skipping {}: {e}", path.display()),
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    pub fn dequeue(&self, entry_path: &Path) -> Result<()> {
        remove_if_exists(entry_path)
    }

    /// Drops the queue entry of a version found without metadata, unless it turns out to be
    /// committed after all: a publish queues its version *before* committing it, under the
    /// bucket lock, so the check is repeated under that lock. Returns the metadata if the
    /// version exists now.
    pub fn dequeue_if_uncommitted(
        &self,
        entry_path: &Path,
        key: &ObjectKey,
        version_id: &str,
    ) -> Result<Option<VersionMeta>> {
        let _guard = self.lock();
        match self.meta(key, version_id) {
            Ok(meta) => Ok(Some(meta)),
            Err(BucketError::NoSuchVersion { .. }) => {
                remove_if_exists(entry_path)?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Records what replication did for one version, in one metadata write under the bucket
    /// lock: `outcomes` gives a state per destination. A COMPLETED whose version's metadata
    /// changed since `seen` stays PENDING (the change must still be sent). If anything is left
    /// PENDING the version gets a queue entry (if `entry` is not already it); otherwise `entry`
    /// is removed. Under the lock, so work queued at the same moment is never dropped. An
    /// unversioned object is adopted by this same write. Returns whether anything is pending.
    pub fn record_outcomes(
        &self,
        key: &ObjectKey,
        version_id: &str,
        seen: &super::FieldTimes,
        outcomes: &[(String, &str)],
        entry: Option<&Path>,
    ) -> Result<bool> {
        let _guard = self.lock();
        let gone = |entry: Option<&Path>| -> Result<bool> {
            if let Some(entry) = entry {
                remove_if_exists(entry)?;
            }
            Ok(false)
        };
        let mut pending = false;
        if entry.is_some() && outcomes.iter().all(|(_, s)| *s == PENDING) {
            // Queued work whose destinations all wait: its PENDING states are already on
            // disk, nothing to write. (A batch's version must still get them, and its entry.)
            return match self.meta(key, version_id) {
                Ok(m) if !m.pending_destinations().is_empty() => Ok(true),
                Ok(_) => gone(entry),
                Err(BucketError::NoSuchVersion { .. }) => gone(entry),
                Err(e) => Err(e),
            };
        }
        let updated = self.update_meta_locked::<BucketError>(key, version_id, |meta| {
            let states = meta.replication.get_or_insert_with(BTreeMap::new);
            for (dest, state) in outcomes {
                let state = if *state == COMPLETED && meta.field_times != *seen {
                    PENDING
                } else {
                    state
                };
                states.insert(dest.clone(), state.to_string());
            }
            meta.replication_status = meta.aggregate_status();
            pending = !meta.pending_destinations().is_empty();
            if pending && entry.is_none() {
                // Queued before the PENDING state is written: never a PENDING without an entry.
                self.enqueue(meta)?;
            }
            Ok(())
        });
        match updated {
            Ok(_) if !pending => gone(entry),
            Ok(_) => Ok(true),
            Err(BucketError::NoSuchVersion { .. }) => gone(entry),
            Err(e) => Err(e),
        }
    }

    /// Where the version tree starts (for scans such as `bucketfs replicate --existing`).
    pub fn versions_root(&self) -> PathBuf {
        self.layout.versions_dir.clone()
    }

    pub fn stored_config_path(&self) -> PathBuf {
        self.layout
            .meta_dir
            .join(crate::replication::policy::STORED_CONFIG)
    }

    /// Keeps the replication configuration in force in the bucket (None: no replication).
    pub fn store_replication_config(&self, text: Option<&str>) -> Result<()> {
        let path = self.stored_config_path();
        match text {
            Some(t) => super::write_file_atomic(&path, t.as_bytes(), super::Durability::Strict),
            None => remove_if_exists(&path),
        }
    }

    pub fn stored_replication_config(&self) -> Option<String> {
        fs::read_to_string(self.stored_config_path()).ok()
    }

    pub fn stats_path(&self) -> PathBuf {
        self.layout.meta_dir.join("replication").join("stats.json")
    }

    /// Did opening this bucket clean up after a process that died?
    pub fn recovered_crash(&self) -> bool {
        self.recovered_crash
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Queues `meta` again if it has pending work but no queue entry (after a crash).
    pub fn ensure_queued(&self, meta: &VersionMeta) -> Result<bool> {
        let entry = self.queue_entry_path(&meta.key, &meta.version_id);
        if meta.pending_destinations().is_empty() || entry.exists() {
            return Ok(false);
        }
        self.enqueue(meta)
    }

    pub fn has_version(&self, key: &ObjectKey, version_id: &str) -> bool {
        self.layout.meta_file(key, version_id).exists()
            || self
                .tombstone(key)
                .is_some_and(|t| t.version_id == version_id || t.marker_id == version_id)
    }

    /// Writes a replica of `source` (a version of bucket `from`) into this bucket, keeping its
    /// version id, bytes, times and metadata; idempotent. `data` holds its bytes (for regular
    /// files). The key path shows the newest version afterwards, whatever the order replicas
    /// arrive in.
    ///
    /// The bytes are copied into a staging file before the bucket lock is taken, so several
    /// imports copy at once and only their few metadata steps are serialized. Under the lock:
    /// the session's import record names the version, the staging file is renamed to
    /// `@ID.data`, `@ID.json` commits it, the key path is repaired and the record emptied. A
    /// crash before the commit is rolled back by recovery (the source imports it again).
    ///
    /// The caller asks [`Bucket::has_version`] first (the engine must, to merge metadata
    /// instead), so the bytes of a version already here are not copied again; the answer is
    /// checked once more under the lock.
    pub fn import_version(
        &self,
        source: &VersionMeta,
        from: &str,
        data: Option<&File>,
    ) -> Result<Imported> {
        let key = ObjectKey::new(source.key.clone())?;
        if (source.retention.is_some() || source.legal_hold) && !self.settings.object_lock_enabled {
            return Err(BucketError::ObjectLockNotEnabled(self.dir.clone()));
        }
        let staged = match data {
            Some(src)
                if source.symlink_target.is_none()
                    && source.special.is_none()
                    && !source.delete_marker =>
            {
                let staged = self.stage_empty()?;
                match self.fill_replica(&staged, src, source) {
                    Ok(()) => Some(staged.path),
                    Err(e) => {
                        self.discard_staged(&staged.path);
                        return Err(e);
                    }
                }
            }
            _ => None,
        };
        let result = self.commit_import(&key, source, from, staged.as_deref());
        if let Some(staged) = &staged
            && !matches!(result, Ok(Imported::New))
        {
            self.discard_staged(staged);
        }
        result
    }

    /// The replica's bytes and POSIX attributes, into its staging file.
    fn fill_replica(&self, staged: &super::Staged, src: &File, source: &VersionMeta) -> Result<()> {
        clone_or_copy(src, &staged.file)
            .ctx(|| format!("copying into {}", staged.path.display()))?;
        if let Some(p) = source.posix {
            let _ = staged
                .file
                .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(
                    p.mode & 0o7777,
                ));
            let _ = std::os::unix::fs::fchown(&staged.file, Some(p.uid), Some(p.gid));
            let _ = staged
                .file
                .set_modified(super::meta::system_time_from_ns(p.mtime_ns));
        }
        if self.durability == super::Durability::Strict {
            staged
                .file
                .sync_all()
                .ctx(|| format!("fsync of {}", staged.path.display()))?;
        }
        Ok(())
    }

    fn commit_import(
        &self,
        key: &ObjectKey,
        source: &VersionMeta,
        from: &str,
        staged: Option<&Path>,
    ) -> Result<Imported> {
        let _guard = self.lock();
        if self.has_version(key, &source.version_id) {
            return Ok(Imported::AlreadyThere);
        }
        self.adopt(key)?;
        let mut meta = source.clone();
        meta.replication = Some(BTreeMap::new());
        meta.replica_of = Some(from.to_string());
        meta.replication_status = Some(REPLICA.to_string());
        let record = QueueEntry {
            key: meta.key.clone(),
            version_id: meta.version_id.clone(),
        };
        let strict = self.durability == super::Durability::Strict;
        let entry = self
            .session
            .journal_open("import", &meta.version_id, &record, strict)?;
        let first_of_key = self.make_key_dir(key)?;
        let data = self.layout.data_file(key, &meta.version_id);
        if let Some(staged) = staged {
            // A rename, not a link plus a removal: it also replaces bytes a crashed import left.
            fs::rename(staged, &data).ctx(|| format!("moving into {}", data.display()))?;
        }
        if let Err(e) = write_json_atomic(
            &self.layout.meta_file(key, &meta.version_id),
            &meta,
            self.durability,
        ) {
            // Not committed: no bytes without metadata are left behind (it will be retried).
            let _ = fs::remove_file(&data);
            self.session.journal_done(&entry)?;
            return Err(e);
        }
        // The key's only version, and its path free (adopt found nothing there): one link
        // makes it current, without listing the folder just made or staging a link to rename.
        let linked = first_of_key && staged.is_some() && self.link_new_current(key, &data).is_ok();
        if !linked {
            self.repair_current_knowing(key, Some(&meta))?;
        }
        self.session.journal_done(&entry)?;
        self.committed(key, &meta).map(|()| Imported::New)
    }

    /// Merges replicated metadata (tags, ACL, retention, legal hold) into this bucket's copy of
    /// the same version, field by field: the newer change wins; equal times are broken by the
    /// value, so both sides settle on the same one. Queues nothing: a change that arrived by
    /// replication is never sent back. Returns whether anything changed.
    pub fn import_meta(&self, incoming: &VersionMeta) -> Result<bool> {
        let key = ObjectKey::new(incoming.key.clone())?;
        let mut changed = false;
        self.update_meta::<BucketError>(&key, &incoming.version_id, |local| {
            let (theirs, times) = (incoming, &incoming.field_times);
            if theirs.retention.is_some()
                && !self.settings.object_lock_enabled
                && wins(
                    times.retention,
                    &theirs.retention,
                    local.field_times.retention,
                    &local.retention,
                )
            {
                return Err(BucketError::ObjectLockNotEnabled(self.dir.clone()));
            }
            let t = &mut local.field_times;
            changed |= merge(times.tags, &theirs.tags, &mut t.tags, &mut local.tags);
            changed |= merge(times.acl, &theirs.acl, &mut t.acl, &mut local.acl);
            changed |= merge(
                times.retention,
                &theirs.retention,
                &mut t.retention,
                &mut local.retention,
            );
            changed |= merge(
                times.legal_hold,
                &theirs.legal_hold,
                &mut t.legal_hold,
                &mut local.legal_hold,
            );
            Ok(())
        })?;
        Ok(changed)
    }
}

/// Takes their value of one field if it [`wins`]; true if it did.
fn merge<T: Clone + Serialize + PartialEq>(
    their_time: i64,
    theirs: &T,
    our_time: &mut i64,
    ours: &mut T,
) -> bool {
    if !wins(their_time, theirs, *our_time, ours) {
        return false;
    }
    *ours = theirs.clone();
    *our_time = their_time;
    true
}

/// Last writer wins per field; a tie is broken by the serialized value, the same on both sides.
fn wins<T: Serialize + PartialEq>(their_time: i64, theirs: &T, our_time: i64, ours: &T) -> bool {
    if theirs == ours {
        return false;
    }
    match their_time.cmp(&our_time) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => {
            serde_json::to_string(theirs).unwrap_or_default()
                > serde_json::to_string(ours).unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two sides exchanging their values in either order end with the same one.
    #[test]
    fn concurrent_edits_converge_whatever_the_order() {
        let cases = [
            ((5, "a"), (7, "b")), // newer wins
            ((7, "a"), (5, "b")),
            ((6, "a"), (6, "b")), // tie: the larger serialized value wins on both sides
            ((6, ""), (6, "x")),  // removing tags is a change too
        ];
        for ((t1, v1), (t2, v2)) in cases {
            let (mut at, mut a) = (t1, v1.to_string());
            let (mut bt, mut b) = (t2, v2.to_string());
            let (a0, at0) = (a.clone(), at);
            merge(bt, &b.clone(), &mut at, &mut a);
            merge(at0, &a0, &mut bt, &mut b);
            assert_eq!(a, b, "{v1}@{t1} vs {v2}@{t2}");
            assert_eq!(at, bt);
            // Applying again changes nothing (no ping-pong).
            assert!(!merge(bt, &b.clone(), &mut at, &mut a));
        }
    }
}
