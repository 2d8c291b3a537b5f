//! The bucket store's one error type. Messages name the key, version or path involved.

use std::io;
use std::path::PathBuf;

use crate::bucket::meta_error::MetaError;

#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },
    #[error(
        "key {key:?} is too long ({bytes} bytes; keys are at most 1024 bytes and each path component at most 255)"
    )]
    KeyTooLong { key: String, bytes: usize },
    #[error("{0:?} is reserved by bucketfs and cannot be a key")]
    ReservedName(String),
    #[error("no such key {0:?}")]
    NoSuchKey(String),
    #[error("no version {version_id} of key {key:?}")]
    NoSuchVersion { key: String, version_id: String },
    #[error("version {version_id} of {key:?} is protected by Object Lock: {reason}")]
    ObjectLocked {
        key: String,
        version_id: String,
        reason: String,
    },
    #[error(
        "{0:?} is open for reading and its bytes are also an older version of another key (a \
         rename shares them): writing it now would change that version too; close the readers \
         and write again"
    )]
    SharedBytesOpen(String),
    #[error("bucket {0} has no Object Lock configuration (create it with --object-lock)")]
    ObjectLockNotEnabled(PathBuf),
    #[error("{path}: {what}")]
    NotABucket { path: PathBuf, what: String },
    #[error("bucket {0} already exists")]
    AlreadyExists(PathBuf),
    #[error(
        "bucket format {found} in {path} is not supported by this bucketfs (it reads format {supported})"
    )]
    UnsupportedFormat {
        path: PathBuf,
        found: String,
        supported: u32,
    },
    #[error("corrupt metadata {path}: {source}")]
    CorruptMeta {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl BucketError {
    /// The OS error behind this failure, if it is one (so the errno mapping can pass it on).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            BucketError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Adds "what we were doing" to an io::Error.
pub trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, BucketError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, BucketError> {
        self.map_err(|source| BucketError::Io {
            context: context(),
            source,
        })
    }
}
