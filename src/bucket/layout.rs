//! Where things live inside a bucket directory (docs/FORMAT.md is the contract).

use std::fs;
use std::path::{Path, PathBuf};

use crate::bucket::error::{BucketError, IoContext};
use crate::bucket::key::{META_DIR, ObjectKey};

pub const META_SUFFIX: &str = ".json";
pub const DATA_SUFFIX: &str = ".data";

#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
    pub meta_dir: PathBuf,
    pub versions_dir: PathBuf,
    pub sessions_dir: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Self {
        let meta_dir = root.join(META_DIR);
        Layout {
            root: root.to_path_buf(),
            versions_dir: meta_dir.join("versions"),
            sessions_dir: meta_dir.join("sessions"),
            meta_dir,
        }
    }

    pub fn create_dirs(&self) -> Result<(), BucketError> {
        for dir in [&self.versions_dir, &self.sessions_dir] {
            fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        }
        Ok(())
    }

    pub fn format_file(&self) -> PathBuf {
        self.meta_dir.join("format")
    }

    pub fn settings_file(&self) -> PathBuf {
        self.meta_dir.join("bucket.json")
    }

    pub fn lock_file(&self) -> PathBuf {
        self.meta_dir.join("lock")
    }

    /// The key's folder in the version tree: its versions are the `@<id>.*` entries.
    pub fn key_dir(&self, key: &ObjectKey) -> PathBuf {
        joined(&self.versions_dir, key.escaped_rel_path())
    }

    pub fn meta_file(&self, key: &ObjectKey, version_id: &str) -> PathBuf {
        self.key_dir(key)
            .join(format!("@{version_id}{META_SUFFIX}"))
    }

    /// The saved bytes of a version stored as a reverse delta (bucket::delta).
    pub fn undo_file(&self, key: &ObjectKey, version_id: &str) -> PathBuf {
        self.key_dir(key).join(format!("@{version_id}.undo"))
    }

    pub fn data_file(&self, key: &ObjectKey, version_id: &str) -> PathBuf {
        self.key_dir(key)
            .join(format!("@{version_id}{DATA_SUFFIX}"))
    }
}

/// `base` joined with `rel` in one allocation. `Path::join` copies `base` and then grows the
/// copy: a reallocation for every key path of every operation (a tenth of an unlink's
/// instructions under callgrind).
pub fn joined(base: &Path, rel: impl AsRef<Path>) -> PathBuf {
    let rel = rel.as_ref();
    let mut path = PathBuf::with_capacity(base.as_os_str().len() + 1 + rel.as_os_str().len());
    path.push(base);
    path.push(rel);
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_is_path_join() {
        for (base, rel) in [
            ("/b", "k"),
            ("/b/", "d/k"),
            ("/b", ""),
            ("", "k"),
            ("/b", "/abs"),
            ("rel", "@@x/y"),
        ] {
            assert_eq!(
                joined(Path::new(base), rel),
                Path::new(base).join(rel),
                "{base:?} + {rel:?}"
            );
        }
    }
}
