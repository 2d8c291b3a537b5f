//! A folder's entries with their names borrowed from libc's buffer. `std::fs::read_dir` copies
//! each name into an allocation of its own before the caller copies it again: two allocations
//! per name, which a listing of a big folder (`find`, `ls`, rsync's scan) pays for each entry.

use std::ffi::{CStr, CString, OsStr};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{FileKind, file_kind};

/// Calls `each` with the name and kind of every entry of the folder at `path`, without `.` and
/// `..`, in the order the disk gives them.
pub(super) fn for_each_entry(
    path: &Path,
    mut each: impl FnMut(&OsStr, FileKind),
) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path; the stream is closed by `OpenDir`'s drop.
    let dir = OpenDir(unsafe { libc::opendir(c_path.as_ptr()) });
    if dir.0.is_null() {
        return Err(io::Error::last_os_error());
    }
    loop {
        // readdir64 tells the end from an error only by errno.
        // SAFETY: errno is this thread's own.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: an open stream, read by this thread only.
        let entry = unsafe { libc::readdir64(dir.0) };
        if entry.is_null() {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(0) => Ok(()),
                _ => Err(e),
            };
        }
        // SAFETY: the entry stays valid until the next readdir64 on this stream, and its name
        // is NUL-terminated.
        let (name, d_type) = unsafe { (CStr::from_ptr((*entry).d_name.as_ptr()), (*entry).d_type) };
        let name = OsStr::from_bytes(name.to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        if let Some(kind) = entry_kind(path, name, d_type)? {
            each(name, kind);
        }
    }
}

/// The kind of entry `name` of folder `path` that readdir gave as `d_type`; None if it is
/// gone by the time it had to be asked for.
fn entry_kind(path: &Path, name: &OsStr, d_type: u8) -> io::Result<Option<FileKind>> {
    Ok(Some(match d_type {
        libc::DT_REG => FileKind::File,
        libc::DT_DIR => FileKind::Dir,
        libc::DT_LNK => FileKind::Symlink,
        libc::DT_FIFO => FileKind::Fifo,
        libc::DT_SOCK => FileKind::Socket,
        libc::DT_CHR => FileKind::CharDevice,
        libc::DT_BLK => FileKind::BlockDevice,
        // Disks that do not keep the type in their folders (DT_UNKNOWN): ask the inode. An
        // entry removed meanwhile is left out, as a listing taken a moment later would; it
        // must not fail the whole listing.
        _ => match fs::symlink_metadata(path.join(name)) {
            Ok(m) => file_kind(m.file_type()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        },
    }))
}

struct OpenDir(*mut libc::DIR);

impl Drop for OpenDir {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: a stream opendir returned, closed once.
            unsafe { libc::closedir(self.0) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::ffi::OsString;

    /// A file, a folder, a symlink to the folder, a FIFO and a socket in folder `p`.
    fn one_of_each_kind(p: &Path) -> std::os::unix::net::UnixListener {
        fs::write(p.join("file"), b"x").unwrap();
        fs::create_dir(p.join("folder")).unwrap();
        std::os::unix::fs::symlink("folder", p.join("link")).unwrap();
        let fifo = CString::new(p.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        std::os::unix::net::UnixListener::bind(p.join("socket")).unwrap()
    }

    #[test]
    fn entries_and_kinds_are_what_std_reads() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let _socket = one_of_each_kind(p);
        for i in 0..500 {
            fs::write(p.join(format!("many-{i:03}-{}", "n".repeat(i % 200))), b"").unwrap();
        }

        let mut ours = BTreeMap::new();
        for_each_entry(p, |name, kind| {
            assert!(
                ours.insert(name.to_owned(), kind).is_none(),
                "{name:?} twice"
            );
        })
        .unwrap();
        let std: BTreeMap<OsString, FileKind> = fs::read_dir(p)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), file_kind(e.file_type().unwrap()))
            })
            .collect();
        assert_eq!(ours, std);
        assert_eq!(ours.len(), 505);
        assert_eq!(ours[OsStr::new("link")], FileKind::Symlink);
        assert_eq!(ours[OsStr::new("fifo")], FileKind::Fifo);
        assert_eq!(ours[OsStr::new("socket")], FileKind::Socket);
        assert_eq!(ours[OsStr::new("folder")], FileKind::Dir);

        let missing = for_each_entry(&p.join("absent"), |_, _| {}).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }

    /// ext4 always gives the type, so the listing above never asks the inode: this does, on
    /// the same kinds of entries, as a disk without types in its folders (DT_UNKNOWN) makes it.
    #[test]
    fn an_entry_of_unknown_type_is_asked_for_its_kind_and_left_out_once_gone() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let _socket = one_of_each_kind(p);
        let unknown = |name: &str| entry_kind(p, OsStr::new(name), libc::DT_UNKNOWN).unwrap();
        assert_eq!(unknown("file"), Some(FileKind::File));
        assert_eq!(unknown("folder"), Some(FileKind::Dir));
        // The link itself, not the folder it points to.
        assert_eq!(unknown("link"), Some(FileKind::Symlink));
        assert_eq!(unknown("fifo"), Some(FileKind::Fifo));
        assert_eq!(unknown("socket"), Some(FileKind::Socket));
        assert_eq!(unknown("removed-meanwhile"), None);
        // A type readdir gave is taken as it is, with no question to the inode.
        assert_eq!(
            entry_kind(p, OsStr::new("removed-meanwhile"), libc::DT_REG).unwrap(),
            Some(FileKind::File)
        );
        // Any other failure to ask is the listing's failure.
        let not_a_folder = entry_kind(&p.join("file"), OsStr::new("x"), libc::DT_UNKNOWN);
        assert_eq!(
            not_a_folder.unwrap_err().raw_os_error(),
            Some(libc::ENOTDIR)
        );
    }
}
