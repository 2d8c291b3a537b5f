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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::acl::{Acl, CannedAcl};
    use crate::bucket::meta::FieldTimes;

    fn parse(yaml: &str, bucket: &str) -> ReplicationConfig {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join(bucket);
        std::fs::create_dir(&src).unwrap();
        config::parse_str(yaml, "test.yaml", &src).unwrap()
    }

    fn rules(yaml: &str) -> Rules {
        Rules {
            config: parse(yaml, "src"),
            bucket: "src".into(),
            settings: BucketSettings {
                format: 1,
                owner: 0,
                object_lock_enabled: false,
                default_retention: None,
                created_ns: 0,
            },
        }
    }

    fn version(key: &str, tags: &[(&str, &str)]) -> VersionMeta {
        VersionMeta {
            key: key.into(),
            version_id: "01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
            delete_marker: false,
            last_modified_ns: 0,
            size: 1,
            etag: None,
            owner: 0,
            posix: None,
            symlink_target: None,
            special: None,
            user_metadata: Default::default(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            acl: Acl::default(),
            retention: None,
            legal_hold: false,
            field_times: FieldTimes::default(),
            replication_status: None,
            replication: None,
            replica_of: None,
            encryption: None,
            delta: None,
        }
    }

    const TWO_RULES: &str = r#"
Rules:
  - ID: docs-to-a
    Status: Enabled
    Priority: 1
    Filter: {Prefix: docs/}
    DeleteMarkerReplication: {Status: Enabled}
    Destination: {Bucket: "arn:aws:s3:::a"}
  - ID: tagged-to-a
    Status: Enabled
    Priority: 2
    Filter: {Tag: {Key: keep, Value: "yes"}}
    DeleteMarkerReplication: {Status: Disabled}
    Destination: {Bucket: "arn:aws:s3:::a"}
  - ID: all-to-b
    Status: Enabled
    Priority: 3
    Filter: {}
    DeleteMarkerReplication: {Status: Disabled}
    Destination: {Bucket: b}
  - ID: off
    Status: Disabled
    Priority: 4
    Filter: {}
    DeleteMarkerReplication: {Status: Enabled}
    Destination: {Bucket: c}
"#;

    #[test]
    fn table_of_versions_and_their_destinations() {
        let r = rules(TWO_RULES);
        let marker = |key: &str| VersionMeta {
            delete_marker: true,
            ..version(key, &[])
        };
        let cases: Vec<(VersionMeta, Vec<&str>)> = vec![
            (version("docs/x", &[]), vec!["a", "b"]),
            (version("other", &[]), vec!["b"]),
            (version("other", &[("keep", "yes")]), vec!["a", "b"]),
            (version("other", &[("keep", "no")]), vec!["b"]),
            // Delete markers: the highest-priority rule for "a" (docs-to-a) has DMR enabled;
            // b's rule has it disabled; the disabled rule never acts.
            (marker("docs/x"), vec!["a"]),
            (marker("other"), vec![]),
            // Replicas are never replicated onward.
            (
                VersionMeta {
                    replica_of: Some("elsewhere".into()),
                    ..version("docs/x", &[])
                },
                vec![],
            ),
            // Someone else's object, unreadable by the bucket owner: not replicated.
            (
                VersionMeta {
                    owner: 1000,
                    ..version("docs/x", &[])
                },
                vec![],
            ),
            (
                VersionMeta {
                    owner: 1000,
                    acl: Acl::Canned(CannedAcl::BucketOwnerFullControl),
                    ..version("docs/x", &[])
                },
                vec!["a", "b"],
            ),
            // Customer-key and KMS encryption are not replicated (no SseKmsEncryptedObjects).
            (
                VersionMeta {
                    encryption: Some("SSE-C".into()),
                    ..version("docs/x", &[])
                },
                vec![],
            ),
            (
                VersionMeta {
                    encryption: Some("aws:kms".into()),
                    ..version("docs/x", &[])
                },
                vec![],
            ),
            (
                VersionMeta {
                    encryption: Some("AES256".into()),
                    ..version("docs/x", &[])
                },
                vec!["a", "b"],
            ),
        ];
        for (meta, want) in cases {
            let mut got = r.destinations_of_version(&meta);
            got.sort();
            assert_eq!(got, want, "{meta:?}");
        }
    }

    #[test]
    fn priority_decides_among_rules_for_one_destination() {
        // For "a", a docs/ file tagged keep=yes matches both rules; the higher Priority
        // (tagged-to-a, DMR disabled) wins, so its delete markers would not go to "a".
        let r = rules(TWO_RULES);
        let winner = r
            .config
            .winning_rule("a", "docs/x", &[("keep".into(), "yes".into())])
            .unwrap();
        assert_eq!(winner.id.as_deref(), Some("tagged-to-a"));
    }

    #[test]
    fn replica_changes_flow_back_only_with_sync_enabled_on_both_sides() {
        let back = r#"
Rules:
  - ID: back
    Status: Enabled
    Priority: 1
    Filter: {}
    DeleteMarkerReplication: {Status: Disabled}
    SourceSelectionCriteria: {ReplicaModifications: {Status: Enabled}}
    Destination: {Bucket: origin}
"#;
        let r = rules(back);
        let replica = VersionMeta {
            replica_of: Some("origin".into()),
            ..version("k", &[])
        };
        let origin_with = parse(&back.replace("Bucket: origin", "Bucket: src"), "origin");
        let origin_without = parse(
            &back.replace("Bucket: origin", "Bucket: src").replace(
                "{ReplicaModifications: {Status: Enabled}}",
                "{ReplicaModifications: {Status: Disabled}}",
            ),
            "origin",
        );
        assert_eq!(
            r.destinations_of_replica_change(&replica, |_| Some(origin_with.clone())),
            vec!["origin".to_string()]
        );
        assert!(
            r.destinations_of_replica_change(&replica, |_| Some(origin_without.clone()))
                .is_empty()
        );
        assert!(
            r.destinations_of_replica_change(&replica, |_| None)
                .is_empty()
        );
    }
}
