//! Errors for the S3 metadata payloads (tags, ACLs, Object Lock) that
//! bucketfs exposes as xattrs. One enum so every xattr setter can map failures
//! to a single errno policy, while the message tells the user what to fix.

use crate::bucket::acl::MAX_GRANTS;
use crate::bucket::tags::{MAX_TAG_KEY_CHARS, MAX_TAG_VALUE_CHARS, MAX_TAGS};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("too many tags: {count} given, at most {max} are allowed per object", max = MAX_TAGS)]
    TooManyTags { count: usize },

    #[error("duplicate tag key {0:?}: each key may appear only once (keys are case-sensitive)")]
    DuplicateTagKey(String),

    #[error(
        "invalid tag key {key:?}: {reason} (keys are 1..={max} Unicode characters)",
        max = MAX_TAG_KEY_CHARS
    )]
    InvalidTagKey { key: String, reason: String },

    #[error(
        "invalid value for tag {key:?}: {reason} (values are 0..={max} Unicode characters)",
        max = MAX_TAG_VALUE_CHARS
    )]
    InvalidTagValue { key: String, reason: String },

    #[error("invalid tagging string: {0} (expected URL-encoded \"key1=value1&key2=value2\")")]
    InvalidTagging(String),

    #[error(
        "unknown canned ACL {0:?}: objects accept private, public-read, public-read-write, \
         authenticated-read, bucket-owner-read, bucket-owner-full-control or aws-exec-read \
         (log-delivery-write is bucket-only), or a JSON list of grants"
    )]
    UnknownCannedAcl(String),

    #[error(
        "invalid ACL JSON: {0} (expected [{{\"Grantee\": {{...}}, \"Permission\": \"...\"}}, ...] \
         or {{\"Grants\": [...], \"Owner\": {{...}}}})"
    )]
    InvalidAclJson(String),

    #[error("too many grants: {0} given, at most {max} are allowed per ACL", max = MAX_GRANTS)]
    TooManyGrants(usize),

    #[error("invalid grant: {0}")]
    InvalidGrant(String),

    #[error("invalid Object Lock mode {0:?}: expected GOVERNANCE or COMPLIANCE (case-sensitive)")]
    InvalidLockMode(String),

    #[error(
        "invalid retain-until date {0:?}: expected an RFC 3339 timestamp with an offset, \
         e.g. 2030-01-01T00:00:00Z, with a year in 0000..=9999"
    )]
    InvalidRetainUntil(String),

    #[error(
        "retain-until date {0} is not in the future; a new retention date must be later than now"
    )]
    RetainUntilInPast(String),

    #[error(
        "COMPLIANCE retention is locked: {0}; it can only be extended, by anyone, until it expires"
    )]
    ComplianceRetentionLocked(String),

    #[error(
        "GOVERNANCE retention is locked: {0}; this needs bypass-governance-retention \
         (otherwise it can only be extended until it expires)"
    )]
    GovernanceRetentionLocked(String),

    #[error("invalid legal hold status {0:?}: expected ON or OFF (case-sensitive)")]
    InvalidLegalHold(String),

    #[error("invalid default retention: {0}")]
    InvalidDefaultRetention(String),
}
