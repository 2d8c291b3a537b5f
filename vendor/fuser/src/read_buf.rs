use std::mem::align_of;

use crate::ll::fuse_abi as abi;
use crate::session::MAX_WRITE_SIZE;

/// Size of the buffer for reading a request from the kernel. Since the kernel may send
/// up to `MAX_WRITE_SIZE` bytes in a write request, we use that value plus some extra space.
pub(crate) const BUFFER_SIZE: usize = MAX_WRITE_SIZE + 4096;

/// bucketfs: the buffer a /dev/fuse read needs once INIT has set `max_write`: the kernel
/// refuses a read into less than max_write plus the WRITE headers, or less than 8 KiB.
pub(crate) fn size_for(max_write: usize) -> usize {
    (max_write + 4096).clamp(8192 + 4096, BUFFER_SIZE)
}

/// A buffer that provides an aligned sub-slice for FUSE operations.
///
/// This struct wraps a `Vec<u8>` and provides access to an aligned portion
/// of the buffer, ensuring proper alignment for `fuse_in_header`.
#[derive(Debug)]
pub(crate) struct FuseReadBuf {
    buffer: Vec<u8>,
}

impl FuseReadBuf {
    /// bucketfs: a buffer of `size` bytes (see `size_for`).
    pub(crate) fn with_size(size: usize) -> Self {
        Self {
            buffer: vec![0; size],
        }
    }

    /// Returns a mutable reference to the aligned portion of the buffer.
    pub(crate) fn as_mut(&mut self) -> &mut [u8] {
        let alignment = align_of::<abi::fuse_in_header>();
        let off = alignment - (self.buffer.as_ptr() as usize) % alignment;
        if off == alignment {
            &mut self.buffer
        } else {
            &mut self.buffer[off..]
        }
    }
}
