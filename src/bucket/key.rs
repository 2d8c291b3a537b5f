//! Object keys: the one place that decides which names may become S3 keys here.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::bucket::error::BucketError;

/// S3's limit on a key, in UTF-8 bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Linux's NAME_MAX: every `/`-separated component becomes a file name on the bucket's disk.
pub const MAX_COMPONENT_BYTES: usize = 255;
/// Folder inside the bucket directory that holds everything besides current versions.
pub const META_DIR: &str = ".bucketfs";
/// Virtual folder at the mount root that shows every version.
pub const VERSIONS_DIR: &str = ".versions";

/// A validated object key such as `photos/2024/a.jpg` (no leading or trailing `/`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey(String);

impl ObjectKey {
    pub fn new(key: impl Into<String>) -> Result<Self, BucketError> {
        let key = key.into();
        let invalid = |reason: &str| BucketError::InvalidKey {
            key: key.clone(),
            reason: reason.to_string(),
        };
        if key.is_empty() {
            return Err(invalid("the key is empty"));
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(BucketError::KeyTooLong {
                key: key.clone(),
                bytes: key.len(),
            });
        }
        if key.contains('\0') {
            return Err(invalid("keys may not contain NUL"));
        }
        for (i, part) in key.split('/').enumerate() {
            if part.is_empty() || part == "." || part == ".." {
                return Err(invalid(
                    "empty, '.' and '..' path components are not allowed",
                ));
            }
            if part.len() > MAX_COMPONENT_BYTES {
                return Err(BucketError::KeyTooLong {
                    key: key.clone(),
                    bytes: part.len(),
                });
            }
            if i == 0 && (part == META_DIR || part == VERSIONS_DIR) {
                return Err(BucketError::ReservedName(part.to_string()));
            }
        }
        Ok(ObjectKey(key))
    }

    /// Builds the key of `name` inside the directory whose key is `parent` ("" = bucket root).
    pub fn child(parent: &str, name: &str) -> Result<Self, BucketError> {
        if parent.is_empty() {
            Self::new(name)
        } else {
            Self::new([parent, "/", name].concat())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Where the current version lives, relative to the bucket directory.
    pub fn rel_path(&self) -> &Path {
        Path::new(&self.0)
    }

    /// The key's folder in the version tree. Components starting with `@` get one more `@`,
    /// so they can never collide with version entries, which are `@<version-id>.…`.
    pub fn escaped_rel_path(&self) -> PathBuf {
        escape_prefix(&self.0)
    }

    pub fn parent(&self) -> &str {
        self.0.rsplit_once('/').map_or("", |(p, _)| p)
    }

    pub fn file_name(&self) -> &str {
        self.0.rsplit_once('/').map_or(&self.0, |(_, n)| n)
    }
}

/// Escapes a key or key prefix ("" = root) for the version tree.
pub fn escape_prefix(prefix: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for part in prefix.split('/').filter(|p| !p.is_empty()) {
        if part.starts_with('@') {
            out.push(format!("@{part}"));
        } else {
            out.push(part);
        }
    }
    out
}

/// Inverse of the escaping of one component; `None` for version entries (`@<id>…`).
pub fn unescape_component(name: &str) -> Option<&str> {
    match name.strip_prefix('@') {
        Some(rest) if rest.starts_with('@') => Some(rest),
        Some(_) => None,
        None => Some(name),
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_and_invalid_keys() {
        assert!(ObjectKey::new("a/b/c.txt").is_ok());
        assert!(ObjectKey::new("").is_err());
        assert!(ObjectKey::new("a//b").is_err());
        assert!(ObjectKey::new("a/../b").is_err());
        assert!(ObjectKey::new("/a").is_err());
        assert!(ObjectKey::new("a/").is_err());
        assert!(matches!(
            ObjectKey::new(".versions"),
            Err(BucketError::ReservedName(_))
        ));
        assert!(matches!(
            ObjectKey::new(".bucketfs/x"),
            Err(BucketError::ReservedName(_))
        ));
        assert!(ObjectKey::new("dir/.versions").is_ok());
        assert!(matches!(
            ObjectKey::new("x".repeat(256)),
            Err(BucketError::KeyTooLong { .. })
        ));
        let long = vec!["y".repeat(200); 6].join("/");
        assert!(matches!(
            ObjectKey::new(long),
            Err(BucketError::KeyTooLong { bytes, .. }) if bytes > 1024
        ));
    }

    #[test]
    fn escaping_separates_keys_from_version_entries() {
        let k = ObjectKey::new("@a/b/@@c").unwrap();
        assert_eq!(k.escaped_rel_path(), PathBuf::from("@@a/b/@@@c"));
        assert_eq!(unescape_component("@@a"), Some("@a"));
        assert_eq!(unescape_component("@01ARZ3NDEKTSV4RRFFQ69G5FAV.json"), None);
        assert_eq!(unescape_component("plain"), Some("plain"));
        assert_eq!(k.parent(), "@a/b");
        assert_eq!(k.file_name(), "@@c");
    }

    /// Any name a caller can give: a key stays inside the bucket (a relative path of plain
    /// components, none reserved at the top), and its version-tree folder maps back to it.
    #[test]
    fn mutated_keys_stay_inside_the_bucket_and_escape_reversibly() {
        use std::path::Component;
        let corpus = [
            "a/b/c",
            "@x/@@y",
            "..",
            "./a",
            "/abs",
            "a//b",
            ".bucketfs/x",
            "é/€",
        ];
        for text in crate::mutate::Mutator::inputs(19, &corpus, "ab./@", 40_000) {
            let Ok(key) = ObjectKey::new(text.as_str()) else {
                continue;
            };
            assert!(
                key.rel_path()
                    .components()
                    .all(|c| matches!(c, Component::Normal(_))),
                "{text:?}"
            );
            let escaped = key.escaped_rel_path();
            let back: Vec<&str> = escaped
                .iter()
                .map(|c| unescape_component(c.to_str().unwrap()).unwrap())
                .collect();
            assert_eq!(back.join("/"), text);
        }
    }
}
