//! `replication.yaml`: S3's ReplicationConfiguration, written in YAML.
//!
//! YAML is a superset of JSON, so the JSON that `aws s3api put-bucket-replication`
//! takes (and the `{"ReplicationConfiguration": ...}` that `get-bucket-replication`
//! prints) loads unmodified. Field names are S3's, PascalCase. bucketfs adds one
//! optional top-level field, `Buckets: {NAME: /path}`, saying where destination
//! buckets live; without it a destination `NAME` is the directory `NAME` next to the
//! source bucket.
//!
//! [`load`] parses, validates with S3's rules (see `validate.rs`), and checks the
//! destinations on disk. Every error names file, line:column, rule and field.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod destination;
mod error;
mod raw;
mod rule;
mod syntax;
#[cfg(test)]
mod tests;
mod validate;

pub use error::{ConfigError, Position};

/// The loaded, validated configuration of one source bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// S3's IAM role ARN. Accepted for compatibility; bucketfs has no IAM.
    pub role: Option<String>,
    /// In file order. At least one, at most 1000.
    pub rules: Vec<Rule>,
    /// Destination bucket name → directory, from `Buckets`, with relative paths
    /// already resolved against the source bucket's parent directory.
    pub buckets: BTreeMap<String, PathBuf>,
    /// The source bucket's directory, as given to [`load`]; sibling destinations are
    /// looked for next to it.
    pub source_bucket_dir: PathBuf,
}

/// One replication rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Always `Some` after [`load`]: a rule without `ID` gets `rule-N` (N = its
    /// 1-based position), as S3 also assigns one. `Option` so that rules built in
    /// code need not invent one.
    pub id: Option<String>,
    pub status: RuleStatus,
    /// `None` only for V1 rules, which have no priority.
    pub priority: Option<i64>,
    pub filter: RuleFilter,
    pub destination: Destination,
    /// V2: `DeleteMarkerReplication.Status` (missing = Disabled). V1: always true,
    /// since the V1 schema replicates user delete markers.
    pub delete_marker_replication: bool,
    pub replica_modifications: bool,
    pub sse_kms_encrypted_objects: bool,
    pub existing_object_replication: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum RuleStatus {
    Enabled,
    Disabled,
}

/// Which objects a rule selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleFilter {
    /// V1 schema: `Prefix` directly on the rule (`""` = whole bucket).
    V1Prefix(String),
    /// `Filter: {Prefix: ...}`.
    Prefix(String),
    /// `Filter: {Tag: {Key, Value}}`.
    Tag { key: String, value: String },
    /// `Filter: {And: {Prefix, Tags}}`: the prefix and every tag must match.
    And {
        prefix: Option<String>,
        tags: Vec<(String, String)>,
    },
    /// `Filter: {}`: the whole bucket.
    Empty,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The bucket's name: `Bucket` with any `arn:aws:s3:::` prefix removed.
    pub bucket_name: String,
    pub storage_class: Option<String>,
    pub account: Option<String>,
    pub access_control_translation: Option<AccessControlTranslation>,
    pub encryption_configuration: Option<EncryptionConfiguration>,
    pub replication_time: Option<ReplicationTime>,
    pub metrics: Option<Metrics>,
}

/// `AccessControlTranslation: {Owner: Destination}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct AccessControlTranslation {
    pub owner: String,
}

/// `EncryptionConfiguration: {ReplicaKmsKeyID: ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfiguration {
    #[serde(rename = "ReplicaKmsKeyID")]
    pub replica_kms_key_id: Option<String>,
}

/// S3 Replication Time Control: `ReplicationTime: {Status, Time: {Minutes: 15}}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ReplicationTime {
    pub status: RuleStatus,
    pub time: ReplicationTimeValue,
}

/// `Metrics: {Status, EventThreshold: {Minutes: 15}}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Metrics {
    pub status: RuleStatus,
    pub event_threshold: Option<ReplicationTimeValue>,
}

/// S3's `ReplicationTimeValue`: `{Minutes: 15}` (the only value S3 accepts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ReplicationTimeValue {
    pub minutes: i64,
}

/// Reads, parses and validates `path`, checking destinations against the file system.
pub fn load(path: &Path, source_bucket_dir: &Path) -> Result<ReplicationConfig, ConfigError> {
    let label = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: label.clone(),
        source,
    })?;
    parse_str(&text, &label, source_bucket_dir)
}

/// Like [`load`], for text already in memory; `file_label` names it in errors.
pub fn parse_str(
    text: &str,
    file_label: &str,
    source_bucket_dir: &Path,
) -> Result<ReplicationConfig, ConfigError> {
    let raw: raw::RawConfig =
        serde_saphyr::from_str(text).map_err(|e| syntax::syntax_error(text, file_label, &e))?;
    validate::validate(raw, file_label, source_bucket_dir)
}

impl Rule {
    /// Whether this rule uses the V1 schema (`Prefix` directly on the rule).
    pub fn is_v1(&self) -> bool {
        matches!(self.filter, RuleFilter::V1Prefix(_))
    }

    pub fn is_enabled(&self) -> bool {
        self.status == RuleStatus::Enabled
    }

    /// Whether an object with this key and these tags is selected by the filter.
    /// Ignores `status`. Every condition must hold: the prefix and all tags.
    pub fn matches(&self, key: &str, tags: &[(String, String)]) -> bool {
        let has_tag = |k: &str, v: &str| tags.iter().any(|(tk, tv)| tk == k && tv == v);
        match &self.filter {
            RuleFilter::V1Prefix(p) | RuleFilter::Prefix(p) => key.starts_with(p.as_str()),
            RuleFilter::Tag { key: k, value: v } => has_tag(k, v),
            RuleFilter::And { prefix, tags: want } => {
                prefix.as_deref().is_none_or(|p| key.starts_with(p))
                    && want.iter().all(|(k, v)| has_tag(k, v))
            }
            RuleFilter::Empty => true,
        }
    }
}

impl ReplicationConfig {
    /// The directory of destination bucket `bucket_name`: from `Buckets`, else the
    /// sibling directory `bucket_name` next to the source bucket.
    pub fn destination_dir(&self, bucket_name: &str) -> PathBuf {
        match self.buckets.get(bucket_name) {
            Some(p) => p.clone(),
            None => destination::sibling_dir(&self.source_bucket_dir, bucket_name),
        }
    }

    /// Names of the buckets that Enabled rules replicate to.
    pub fn destinations(&self) -> BTreeSet<&str> {
        self.rules
            .iter()
            .filter(|r| r.is_enabled())
            .map(|r| r.destination.bucket_name.as_str())
            .collect()
    }

    /// Enabled rules that replicate to `bucket_name`, in file order.
    pub fn rules_for_destination<'a>(
        &'a self,
        bucket_name: &'a str,
    ) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules
            .iter()
            .filter(move |r| r.is_enabled() && r.destination.bucket_name == bucket_name)
    }

    /// The rule that decides how an object is replicated to `bucket_name`: among the
    /// Enabled rules for that destination that match, the highest `Priority`. Ties
    /// (only possible between V1 rules, which have none) go to the earlier rule.
    pub fn winning_rule(
        &self,
        bucket_name: &str,
        key: &str,
        tags: &[(String, String)],
    ) -> Option<&Rule> {
        self.rules
            .iter()
            .filter(|r| r.is_enabled() && r.destination.bucket_name == bucket_name)
            .filter(|r| r.matches(key, tags))
            .fold(None, |best: Option<&Rule>, r| match best {
                Some(b) if b.priority >= r.priority => Some(b),
                _ => Some(r),
            })
    }

    /// One winning rule per destination: S3 applies rules for different
    /// destinations independently, so an object may go to several buckets.
    pub fn winning_rules(&self, key: &str, tags: &[(String, String)]) -> Vec<&Rule> {
        self.destinations()
            .into_iter()
            .filter_map(|d| self.winning_rule(d, key, tags))
            .collect()
    }
}
