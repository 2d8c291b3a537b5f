//! Which versions go where: S3's rules, applied to one version. Pure decisions over the
//! configuration and the version's metadata (the seeds' "what is and is not replicated").

use std::path::Path;

use crate::bucket::{BucketSettings, VersionMeta};
use crate::config::{self, ReplicationConfig};

/// The rules of one source bucket and the facts about it they need.
#[derive(Debug, Clone)]
pub struct Rules {
    pub config: ReplicationConfig,
    /// This bucket's name (its directory's name).
    pub bucket: String,
    pub settings: BucketSettings,
}

/// Encryption kinds S3 replicates only on request, or never (hooks for the encryption work).
const SSE_KMS: &str = "aws:kms";
const SSE_C: &str = "SSE-C";

impl Rules {
    /// Destinations a local version must be replicated to.
    pub fn destinations_of_version(&self, meta: &VersionMeta) -> Vec<String> {
        if meta.replica_of.is_some() || !self.owner_may_read(meta) {
            return Vec::new();
        }
        let tags: &[(String, String)] = if meta.delete_marker { &[] } else { &meta.tags };
        self.config
            .winning_rules(&meta.key, tags)
            .into_iter()
            .filter(|rule| {
                if meta.delete_marker {
                    return rule.delete_marker_replication;
                }
                match meta.encryption.as_deref() {
                    Some(SSE_C) => false,
                    Some(SSE_KMS) => rule.sse_kms_encrypted_objects,
                    _ => true,
                }
            })
            .map(|rule| rule.destination.bucket_name.clone())
            .collect()
    }

    /// S3 replicates an object only if the bucket owner may read it and its ACL: its own
    /// objects, or others' whose ACL grants the owner READ and READ_ACP.
    fn owner_may_read(&self, meta: &VersionMeta) -> bool {
        meta.owner == self.settings.owner
            || meta
                .acl
                .grants_owner_read_and_read_acp(&self.settings.owner.to_string())
    }

    /// Where a replica's metadata changes flow back to: its source bucket, when this bucket
    /// has a rule toward it with ReplicaModifications enabled that matches, and the source
    /// bucket's own rule toward us has it enabled too (S3 requires both).
    pub fn destinations_of_replica_change(
        &self,
        meta: &VersionMeta,
        source_rules: impl Fn(&Path) -> Option<ReplicationConfig>,
    ) -> Vec<String> {
        let Some(source) = meta.replica_of.as_deref() else {
            return Vec::new();
        };
        let here = self
            .config
            .rules_for_destination(source)
            .any(|r| r.replica_modifications && !r.is_v1() && r.matches(&meta.key, &meta.tags));
        if !here {
            return Vec::new();
        }
        let there = source_rules(&self.config.destination_dir(source)).is_some_and(|c| {
            c.rules_for_destination(&self.bucket)
                .any(|r| r.replica_modifications)
        });
        if there {
            vec![source.to_string()]
        } else {
            Vec::new()
        }
    }
}

/// Reads the configuration in force in another bucket (stored there by its mount).
pub fn stored_config(bucket_dir: &Path) -> Option<ReplicationConfig> {
    let path = bucket_dir
        .join(crate::bucket::key::META_DIR)
        .join(STORED_CONFIG);
    let text = std::fs::read_to_string(&path).ok()?;
    match config::parse_str(&text, &path.display().to_string(), bucket_dir) {
        Ok(c) => Some(c),
        Err(e) => {
            log::warn!("ignoring the stored replication configuration: {e}");
            None
        }
    }
}

/// The copy of the configuration in force, kept in the bucket (S3 keeps it on the bucket).
pub const STORED_CONFIG: &str = "replication.yaml";
