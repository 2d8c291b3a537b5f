//! fallocate(2) and lseek(2)'s SEEK_DATA / SEEK_HOLE on open files. Neither goes through
//! kernel passthrough: the kernel asks the daemon, which answers from the backing file.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use super::{BucketFs, FsError, FsResult, Guard, Ino, fingerprint};
use crate::fs::nodes::OpenState;

/// The modes that only zero a range: an overlay records the range as written (with zeros).
const ZEROING: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;

impl BucketFs {
    /// fallocate(2) through a writer: the staged file's bytes (or only their allocation)
    /// change, and the next version is published at release like after a write. The kernel
    /// sends only reservations, punched holes and zeroed ranges; modes that move bytes
    /// (collapse, insert) it refuses itself with EOPNOTSUPP.
    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> FsResult<()> {
        if mode & !(libc::FALLOC_FL_KEEP_SIZE | ZEROING) != 0 {
            return Err(FsError::Unsupported(format!("fallocate mode {mode:#x}")));
        }
        let _changing = self.stat_ahead.changing();
        let mut g = self.lock();
        let h = g.handles.get(&fh).ok_or(FsError::BadHandle(fh))?;
        if !h.writable {
            return Err(FsError::BadHandle(fh));
        }
        let ino = h.ino;
        let open = open_state(&mut g, ino, fh)?;
        let before = fingerprint(&open.backing)?;
        allocate(&open.backing, mode, offset, len).map_err(|e| {
            match e.raw_os_error() {
                // A refusal of the disk below (sshfs has no fallocate): glibc's
                // posix_fallocate writes the range instead.
                Some(libc::EOPNOTSUPP) => {
                    FsError::Unsupported(format!("fallocate mode {mode:#x} on the bucket's disk"))
                }
                _ => e.into(),
            }
        })?;
        if mode & ZEROING != 0
            && let Some(o) = open.overlay.as_mut()
        {
            // With KEEP_SIZE the range may run past the end, where there are no bytes to zero.
            let end = offset
                .saturating_add(len)
                .min(open.backing.metadata()?.len());
            if end > offset {
                o.overlay.record_write(offset, end - offset);
            }
        }
        let bytes_kept = mode == libc::FALLOC_FL_KEEP_SIZE
            || (mode == 0 && offset.saturating_add(len) <= before.size);
        if !bytes_kept {
            open.dirty = true;
        } else if before == open.fingerprint {
            // Reserving blocks is no new content (ext4 still moves the times): no version for
            // it. Only when nothing unseen had changed the file before, or that would be lost.
            open.fingerprint = fingerprint(&open.backing)?;
        }
        Ok(())
    }

    /// lseek(2) with SEEK_DATA or SEEK_HOLE (the kernel handles the other whences): asked of
    /// the backing file, so a sparse object reads as sparse (`cp` keeps its holes). An
    /// overlay's holes are not the file's (unwritten ranges read the base's bytes): all of it
    /// is data, as on a filesystem that does not track holes.
    pub fn seek_data(&self, fh: u64, offset: u64, whence: i32) -> FsResult<u64> {
        let file = {
            let mut g = self.lock();
            let ino = g.handles.get(&fh).ok_or(FsError::BadHandle(fh))?.ino;
            let open = open_state(&mut g, ino, fh)?;
            if open.overlay.is_some() {
                let size = open.backing.metadata()?.len();
                return match whence {
                    _ if offset >= size => Err(FsError::PastEnd),
                    libc::SEEK_DATA => Ok(offset),
                    _ => Ok(size),
                };
            }
            open.backing.clone()
        };
        let offset = i64::try_from(offset).map_err(|_| FsError::PastEnd)?;
        // SAFETY: lseek on a descriptor we own; reads and writes use explicit offsets, so
        // moving its position changes nothing else.
        let at = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
        if at < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ENXIO) => FsError::PastEnd,
                _ => e.into(),
            });
        }
        Ok(at as u64)
    }
}

fn open_state<'g>(g: &'g mut Guard<'_>, ino: Ino, fh: u64) -> FsResult<&'g mut OpenState> {
    g.nodes
        .get_mut(ino)
        .and_then(|n| n.open.as_deref_mut())
        .ok_or(FsError::BadHandle(fh))
}

fn allocate(file: &File, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    };
    // SAFETY: fallocate on a descriptor we own; the kernel checks mode, offset and length.
    if unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
