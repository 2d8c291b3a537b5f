//! Destination buckets: names from ARNs, and where they live on disk.

use std::path::{Component, Path, PathBuf};

/// `arn:aws:s3:::NAME` (any partition, e.g. `aws-cn`) or a plain `NAME` → `NAME`.
pub(crate) fn bucket_name_from(value: &str) -> Result<String, String> {
    let name = match value.strip_prefix("arn:") {
        Some(rest) => parse_s3_arn(rest).ok_or_else(|| {
            format!("expected `arn:aws:s3:::BUCKET` or a plain bucket name, found {value:?}")
        })?,
        None => value,
    };
    check_bucket_name(name)?;
    Ok(name.to_owned())
}

/// `PARTITION:s3:::NAME` → `NAME`.
fn parse_s3_arn(rest: &str) -> Option<&str> {
    let (partition, rest) = rest.split_once(':')?;
    let name = rest.strip_prefix("s3:::")?;
    (!partition.is_empty()).then_some(name)
}

/// A bucket name becomes a directory name, so it must be exactly one path component.
/// S3's own naming rules (lowercase, 3-63 chars) are deliberately not enforced: the
/// AWS documentation's own examples (`DOC-EXAMPLE-BUCKET`) break them.
pub(crate) fn check_bucket_name(name: &str) -> Result<(), String> {
    let one_component = matches!(
        Path::new(name).components().collect::<Vec<_>>().as_slice(),
        [Component::Normal(_)]
    );
    if name.is_empty() || !one_component || name.contains(['/', '\0']) {
        return Err(format!(
            "expected a bucket name usable as a directory name (non-empty, no `/`, not `.` or `..`), found {name:?}"
        ));
    }
    Ok(())
}

/// What is at a destination path.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PathState {
    Missing,
    Bucket,
    NotABucket(&'static str),
}

/// A bucket is a directory holding `.bucketfs/format`; an empty directory is also
/// accepted, since replication can initialise it.
pub(crate) fn inspect(path: &Path) -> PathState {
    let Ok(meta) = std::fs::metadata(path) else {
        return PathState::Missing;
    };
    if !meta.is_dir() {
        return PathState::NotABucket("it is not a directory");
    }
    if path.join(".bucketfs").join("format").is_file() {
        return PathState::Bucket;
    }
    match std::fs::read_dir(path).map(|mut d| d.next().is_none()) {
        Ok(true) => PathState::Bucket,
        Ok(false) => PathState::NotABucket(
            "it is a non-empty directory without `.bucketfs/format`, so not a bucketfs bucket",
        ),
        Err(_) => PathState::NotABucket("it is a directory that cannot be read"),
    }
}

/// The canonical form of `path`, or of its parent joined with its name when `path`
/// does not exist yet, so that a not-yet-created destination can still be compared
/// with the source.
pub(crate) fn canonical(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = path.canonicalize() {
        return Some(p);
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Some(parent.canonicalize().ok()?.join(path.file_name()?))
}

/// Where a bucket named `name` lives when the `Buckets` map does not say: next to
/// the source bucket, as S3 buckets are siblings in one namespace.
pub(crate) fn sibling_dir(source_bucket_dir: &Path, name: &str) -> PathBuf {
    let parent = source_bucket_dir.parent().unwrap_or(Path::new(""));
    parent.join(name)
}

/// Relative paths in `Buckets` are taken relative to the directory holding the
/// source bucket, the same place sibling buckets are looked for.
pub(crate) fn resolve_mapped(source_bucket_dir: &Path, value: &str) -> PathBuf {
    let p = Path::new(value);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        sibling_dir(source_bucket_dir, value)
    }
}
