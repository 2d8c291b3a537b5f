//! bucketfs: an S3-style versioned bucket on a local or network disk, mounted through FUSE.
//!
//! Layers, each depending only on the ones below it:
//! - [`bucket`]: the versioned store on disk (no FUSE, no POSIX policy);
//! - [`fs`]: POSIX meaning over a bucket (inodes, handles, xattrs, errno), no fuser types;
//! - [`fuse`]: the thin adapter to the `fuser` crate;
//! - [`config`]: the replication rules of `replication.yaml`;
//! - [`replication`]: the engine applying them (depends on `bucket` only);
//! - [`cli`]: the command line.

pub mod bucket;
pub mod cli;
pub mod config;
pub mod fs;
pub mod fuse;
#[cfg(test)]
mod mutate;
mod panic_guard;
pub mod replication;
