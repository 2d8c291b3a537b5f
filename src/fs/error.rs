//! The `fs` layer's error type and the one table that turns every failure into an errno.

use std::io;

use crate::bucket::BucketError;
use crate::bucket::meta_error::MetaError;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error(transparent)]
    Bucket(#[from] BucketError),
    #[error("no such file or directory")]
    NotFound,
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0} is not a directory")]
    NotDir(String),
    #[error("{0} is a directory")]
    IsDir(String),
    #[error("directory {0} is not empty")]
    NotEmpty(String),
    #[error("{0}: read-only")]
    ReadOnly(String),
    #[error("hard links are not supported: an S3 object has exactly one key")]
    HardLink,
    #[error(
        "{0}: only files, directories, symbolic links, FIFOs, sockets and devices can be stored"
    )]
    UnsupportedFileType(String),
    #[error("{0} is not supported")]
    Unsupported(String),
    #[error("stale file handle {0}")]
    BadHandle(u64),
    #[error("no attribute {0}")]
    NoAttr(String),
    #[error("xattr {0} cannot be changed")]
    ReadOnlyAttr(String),
    #[error("xattr {0} is not supported here (only user.* attributes are stored)")]
    AttrUnsupported(String),
    #[error("invalid value for {name}: {reason}")]
    InvalidValue { name: String, reason: String },
    /// The node was looked up, and its object removed before the call on it (a race with
    /// another caller): the kernel retries the path walk on ESTALE.
    #[error("removed since it was looked up")]
    Stale,
    /// lseek's SEEK_DATA / SEEK_HOLE at or past the end, or SEEK_DATA in a trailing hole.
    #[error("no data or hole at or after this offset")]
    PastEnd,
    #[error("{0}")]
    Io(#[from] io::Error),
}

pub type FsResult<T> = Result<T, FsError>;

impl FsError {
    /// The errno the mount returns for this failure. Every variant is listed (no wildcard) so a
    /// new one cannot slip through unmapped; docs/SEMANTICS.md lists the same choices.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::Bucket(e) => bucket_errno(e),
            FsError::NotFound => libc::ENOENT,
            FsError::Exists(_) => libc::EEXIST,
            FsError::NotDir(_) => libc::ENOTDIR,
            FsError::IsDir(_) => libc::EISDIR,
            FsError::NotEmpty(_) => libc::ENOTEMPTY,
            FsError::ReadOnly(_) => libc::EROFS,
            // EPERM is what link(2) returns on filesystems that do not support hard links.
            FsError::HardLink => libc::EPERM,
            FsError::UnsupportedFileType(_) => libc::EPERM,
            FsError::Unsupported(_) => libc::EOPNOTSUPP,
            FsError::BadHandle(_) => libc::EBADF,
            FsError::NoAttr(_) => libc::ENODATA,
            // Computed attributes (version id, ETag) behave like immutable metadata.
            FsError::ReadOnlyAttr(_) => libc::EPERM,
            FsError::AttrUnsupported(_) => libc::EOPNOTSUPP,
            FsError::InvalidValue { .. } => libc::EINVAL,
            FsError::PastEnd => libc::ENXIO,
            FsError::Stale => libc::ESTALE,
            FsError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }

    /// Expected refusals (the user asked for something S3 or the mount forbids) are logged
    /// with their reason at warn; anything else is an error.
    pub fn is_refusal(&self) -> bool {
        match self {
            // The disk's own answer about a name (a lookup of a component over 255 bytes).
            FsError::Io(e) => e.raw_os_error() == Some(libc::ENAMETOOLONG),
            FsError::NotFound | FsError::Stale | FsError::Bucket(BucketError::Io { .. }) => false,
            _ => true,
        }
    }
}

fn bucket_errno(e: &BucketError) -> i32 {
    match e {
        BucketError::InvalidKey { .. } => libc::EINVAL,
        BucketError::KeyTooLong { .. } => libc::ENAMETOOLONG,
        // The names exist (as bucketfs's own folders), so creating them is forbidden outright.
        BucketError::ReservedName(_) => libc::EPERM,
        BucketError::NoSuchKey(_) | BucketError::NoSuchVersion { .. } => libc::ENOENT,
        BucketError::ObjectLocked { .. } => libc::EPERM,
        // What the kernel answers too when an open would need another file under one inode.
        BucketError::SharedBytesOpen(_) => libc::ETXTBSY,
        BucketError::ObjectLockNotEnabled(_) => libc::EOPNOTSUPP,
        BucketError::NotABucket { .. } => libc::EINVAL,
        BucketError::AlreadyExists(_) => libc::EEXIST,
        BucketError::UnsupportedFormat { .. } => libc::EINVAL,
        BucketError::CorruptMeta { .. } => libc::EIO,
        BucketError::Meta(m) => meta_errno(m),
        BucketError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
    }
}

fn meta_errno(e: &MetaError) -> i32 {
    match e {
        // Too many tags is "the value does not fit", as for an oversized xattr.
        MetaError::TooManyTags { .. } | MetaError::TooManyGrants(_) => libc::E2BIG,
        MetaError::DuplicateTagKey(_)
        | MetaError::InvalidTagKey { .. }
        | MetaError::InvalidTagValue { .. }
        | MetaError::InvalidTagging(_)
        | MetaError::UnknownCannedAcl(_)
        | MetaError::InvalidAclJson(_)
        | MetaError::InvalidGrant(_)
        | MetaError::InvalidLockMode(_)
        | MetaError::InvalidRetainUntil(_)
        | MetaError::RetainUntilInPast(_)
        | MetaError::InvalidLegalHold(_)
        | MetaError::InvalidDefaultRetention(_) => libc::EINVAL,
        // Object Lock forbids the change for everyone (COMPLIANCE) or without bypass (GOVERNANCE).
        MetaError::ComplianceRetentionLocked(_) | MetaError::GovernanceRetentionLocked(_) => {
            libc::EPERM
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_too_long_for_the_disk_is_a_refusal_and_other_disk_errors_are_failures() {
        let too_long = FsError::Io(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
        assert!(too_long.is_refusal());
        assert_eq!(too_long.errno(), libc::ENAMETOOLONG);
        assert!(!FsError::Io(io::Error::from_raw_os_error(libc::EIO)).is_refusal());
        assert!(!FsError::NotFound.is_refusal());
        assert_eq!(FsError::PastEnd.errno(), libc::ENXIO);
    }
}
