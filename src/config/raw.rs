//! Serde mirror of S3's `ReplicationConfiguration`, field for field.
//!
//! Kept separate from the public types because it carries source positions
//! ([`Spanned`]) for error messages and accepts shapes (V1 and V2 side by side)
//! that validation then narrows down.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

use crate::config::{
    AccessControlTranslation, EncryptionConfiguration, Metrics, ReplicationTime, RuleStatus,
};

/// The whole document. It is recursive so that the `{"ReplicationConfiguration": {...}}`
/// wrapper printed by `aws s3api get-bucket-replication` loads as well as the bare
/// configuration that `put-bucket-replication` takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub(crate) struct RawConfig {
    pub replication_configuration: Option<Spanned<Box<RawConfig>>>,
    pub role: Option<Spanned<String>>,
    pub rules: Option<Spanned<Vec<Spanned<RawRule>>>>,
    /// bucketfs extension: where a destination bucket lives on disk.
    pub buckets: Option<Spanned<BTreeMap<String, String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub(crate) struct RawRule {
    #[serde(rename = "ID")]
    pub id: Option<Spanned<String>>,
    pub status: RuleStatus,
    pub priority: Option<Spanned<i64>>,
    /// V1 schema: prefix directly on the rule.
    #[serde(default)]
    pub prefix: Present<String>,
    #[serde(default)]
    pub filter: Present<RawFilter>,
    pub destination: Spanned<RawDestination>,
    pub delete_marker_replication: Option<Spanned<StatusBlock>>,
    pub source_selection_criteria: Option<Spanned<RawSourceSelection>>,
    pub existing_object_replication: Option<Spanned<StatusBlock>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub(crate) struct RawFilter {
    pub prefix: Option<String>,
    pub tag: Option<RawTag>,
    pub and: Option<RawAnd>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub(crate) struct RawAnd {
    pub prefix: Option<String>,
    #[serde(default)]
    pub tags: Vec<RawTag>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub(crate) struct RawTag {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub(crate) struct StatusBlock {
    pub status: RuleStatus,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub(crate) struct RawSourceSelection {
    pub replica_modifications: Option<StatusBlock>,
    pub sse_kms_encrypted_objects: Option<StatusBlock>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub(crate) struct RawDestination {
    pub bucket: Spanned<String>,
    pub storage_class: Option<Spanned<String>>,
    pub account: Option<String>,
    pub access_control_translation: Option<AccessControlTranslation>,
    pub encryption_configuration: Option<EncryptionConfiguration>,
    pub replication_time: Option<Spanned<ReplicationTime>>,
    pub metrics: Option<Spanned<Metrics>>,
}

/// A field that tells "absent" from "present but null". A hand-written `Filter:` with
/// nothing after it is YAML null, and means what S3's `<Filter/>` means (whole
/// bucket); a plain `Option` would silently turn it into "no Filter" (V1 schema).
#[derive(Debug)]
pub(crate) struct Present<T>(pub Option<Spanned<Option<T>>>);

// Not derived: the derive would demand `T: Default`.
impl<T> Default for Present<T> {
    fn default() -> Self {
        Present(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Present<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Spanned::<Option<T>>::deserialize(d).map(|s| Present(Some(s)))
    }
}
