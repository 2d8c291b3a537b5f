//! Per-version metadata, stored as one JSON document per version (see docs/FORMAT.md).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use percent_encoding::{AsciiSet, CONTROLS, percent_decode, utf8_percent_encode};
use serde::{Deserialize, Serialize};

use crate::bucket::acl::Acl;
use crate::bucket::lock::Retention;

/// POSIX attributes of a version, kept like s3fs's `x-amz-meta-mode/uid/gid/mtime`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosixAttrs {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialNode {
    pub mode: u32,
    pub rdev: u64,
}

/// When each replicated metadata field last changed (ns since epoch); replica modification
/// sync resolves concurrent edits field by field with these.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldTimes {
    pub tags: i64,
    pub acl: i64,
    pub retention: i64,
    pub legal_hold: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionMeta {
    pub key: String,
    pub version_id: String,
    pub delete_marker: bool,
    /// S3 Last-Modified, ns since epoch.
    pub last_modified_ns: i64,
    pub size: u64,
    /// MD5 of the content; computed lazily (None until first asked for or hashed in background).
    pub etag: Option<String>,
    /// uid of the creator: S3's object owner.
    pub owner: u32,
    pub posix: Option<PosixAttrs>,
    pub symlink_target: Option<String>,
    /// A FIFO, socket or device node: its full st_mode and device number. Such versions have
    /// no bytes; the node itself is recreated at the key path.
    #[serde(default)]
    pub special: Option<SpecialNode>,
    /// `user.*` xattrs other than bucketfs's own, name without `user.` → value, percent-encoded
    /// so arbitrary bytes survive JSON.
    #[serde(default)]
    pub user_metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub tags: Vec<(String, String)>,
    #[serde(default)]
    pub acl: Acl,
    #[serde(default)]
    pub retention: Option<Retention>,
    #[serde(default)]
    pub legal_hold: bool,
    #[serde(default)]
    pub field_times: FieldTimes,
    /// PENDING / COMPLETED / FAILED on a source, REPLICA on a replica: aggregated from
    /// `replication` (see `aggregate_status`).
    #[serde(default)]
    pub replication_status: Option<String>,
    /// Per destination bucket: PENDING / COMPLETED / FAILED. None: the version was made while
    /// no replication configuration was in force, so live replication never touches it.
    #[serde(default)]
    pub replication: Option<std::collections::BTreeMap<String, String>>,
    /// The bucket this version was replicated from. Replicas are never replicated onward.
    #[serde(default)]
    pub replica_of: Option<String>,
    /// Server-side encryption of the version, when the encryption work lands.
    #[serde(default)]
    pub encryption: Option<String>,
    /// Set when the version's bytes are stored as a reverse delta against a newer version
    /// (format 2; see bucket::delta).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<crate::bucket::delta::DeltaRef>,
}

/// What travels with a version besides its bytes: the parts a writer chooses.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObjectAttrs {
    pub posix: Option<PosixAttrs>,
    pub user_metadata: BTreeMap<String, Vec<u8>>,
    pub tags: Vec<(String, String)>,
    pub acl: Acl,
    pub retention: Option<Retention>,
    pub legal_hold: bool,
}

impl ObjectAttrs {
    /// What a new version written over `self`'s object inherits: everything but Object Lock,
    /// which S3 sets per version (from the request or the bucket default).
    pub fn for_new_version(&self) -> ObjectAttrs {
        ObjectAttrs {
            retention: None,
            legal_hold: false,
            ..self.clone()
        }
    }
}

impl VersionMeta {
    /// Stores the S3 metadata fields of `attrs` (not POSIX attributes) in this version,
    /// stamping the time of each field that changed.
    pub fn apply_attrs(&mut self, attrs: &ObjectAttrs) {
        let now = now_ns();
        if self.tags != attrs.tags {
            self.tags = attrs.tags.clone();
            self.field_times.tags = now;
        }
        if self.acl != attrs.acl {
            self.acl = attrs.acl.clone();
            self.field_times.acl = now;
        }
        if self.retention != attrs.retention {
            self.retention = attrs.retention.clone();
            self.field_times.retention = now;
        }
        if self.legal_hold != attrs.legal_hold {
            self.legal_hold = attrs.legal_hold;
            self.field_times.legal_hold = now;
        }
        self.user_metadata = attrs
            .user_metadata
            .iter()
            .map(|(k, v)| (k.clone(), encode_value(v)))
            .collect();
    }

    pub fn attrs(&self) -> ObjectAttrs {
        ObjectAttrs {
            posix: self.posix,
            user_metadata: self
                .user_metadata
                .iter()
                .map(|(k, v)| (k.clone(), decode_value(v)))
                .collect(),
            tags: self.tags.clone(),
            acl: self.acl.clone(),
            retention: self.retention.clone(),
            legal_hold: self.legal_hold,
        }
    }

    pub fn user_value(&self, name: &str) -> Option<Vec<u8>> {
        self.user_metadata.get(name).map(|v| decode_value(v))
    }

    pub fn last_modified(&self) -> SystemTime {
        system_time_from_ns(self.last_modified_ns)
    }
}

const VALUE_ESCAPES: &AsciiSet = &CONTROLS.add(b'%');

pub fn encode_value(bytes: &[u8]) -> String {
    // Non-UTF-8 bytes are escaped one by one; valid text stays readable in the JSON.
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        out.extend(utf8_percent_encode(chunk.valid(), VALUE_ESCAPES));
        for b in chunk.invalid() {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn decode_value(text: &str) -> Vec<u8> {
    percent_decode(text.as_bytes()).collect()
}

pub fn now_ns() -> i64 {
    ns_from_system_time(SystemTime::now())
}

pub fn ns_from_system_time(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

pub fn system_time_from_ns(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_values_round_trip_any_bytes() {
        for v in [
            b"plain".to_vec(),
            b"50% off\n".to_vec(),
            vec![0, 159, 146, 150, 255],
            "héllo".as_bytes().to_vec(),
        ] {
            assert_eq!(decode_value(&encode_value(&v)), v);
        }
        assert_eq!(encode_value(b"a b"), "a b");
    }

    #[test]
    fn time_conversions_round_trip() {
        for ns in [0i64, 1, 1_700_000_000_123_456_789, -5_000_000_000] {
            assert_eq!(ns_from_system_time(system_time_from_ns(ns)), ns);
        }
    }
}
