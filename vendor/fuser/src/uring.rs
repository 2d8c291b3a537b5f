//! FUSE over io_uring (Linux 6.14+, `fuse.enable_uring=1`), added for bucketfs.
//!
//! With /dev/fuse, a request wakes whichever reader thread has waited longest, usually on
//! another CPU than the caller, and the reply wakes the caller back across CPUs: on a VM each
//! such wake-up is an inter-processor interrupt and an exit from idle. With io_uring the
//! kernel keeps one queue per CPU and hands a request to an entry of the caller's CPU's
//! queue. Each worker here is pinned to its queue's CPU and owns one entry in its own ring,
//! so the request, the work and the reply stay on the caller's CPU.
//!
//! A worker rebuilds the request exactly as a read of /dev/fuse would have returned it
//! (`fuse_in_header`, the operation's header, the payload) and dispatches it like the
//! /dev/fuse threads do; the reply is written into the entry's buffers and committed with the
//! next fetch. FORGET and INTERRUPT still come through /dev/fuse (one thread; session.rs).
//!
//! Kernel ABI (include/uapi/linux/fuse.h, 7.42): an entry is two buffers, a 288-byte header
//! (`in_out[128]`: the in or out header; `op_in[128]`: the operation's header;
//! `fuse_uring_ent_in_out`) and a payload buffer of at least the connection's largest
//! payload. Commands go in the 80-byte command area of a 128-byte SQE as
//! `fuse_uring_cmd_req { flags, commit_id, qid }`.

use std::io;
use std::io::IoSlice;
use std::sync::Arc;
use std::sync::Mutex;
use std::thread::JoinHandle;

use io_uring::IoUring;
use io_uring::cqueue;
use io_uring::opcode;
use io_uring::squeue;
use io_uring::types;
use log::debug;
use log::error;
use log::info;
use nix::unistd::Uid;

use crate::Filesystem;
use crate::SessionACL;
use crate::channel::Channel;
use crate::channel::ChannelSender;
use crate::dev_fuse::DevFuse;
use crate::ll::Operation;
use crate::reply::ReplyEmpty;
use crate::request::RequestWithSender;
use crate::session::FilesystemHolder;
use crate::session::SessionEventLoop;

const IN_OUT_SIZE: usize = 128;
const OP_IN_SIZE: usize = 128;
/// `in_out`, `op_in` and `struct fuse_uring_ent_in_out` (flags, commit_id, payload_sz,
/// padding, reserved).
const HEADER_SIZE: usize = IN_OUT_SIZE + OP_IN_SIZE + 32;
/// Where `fuse_uring_ent_in_out.payload_sz` is in the header buffer.
const PAYLOAD_SZ_AT: usize = IN_OUT_SIZE + OP_IN_SIZE + 16;
const IN_HEADER_SIZE: usize = 40;
const OUT_HEADER_SIZE: usize = 16;

const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;

/// An entry's buffers: what the kernel writes a request into and reads the reply from.
struct Entry {
    header: Box<[u64; HEADER_SIZE / 8]>,
    payload: Vec<u64>,
}

impl Entry {
    fn new(payload: usize) -> Self {
        Entry {
            header: Box::new([0; HEADER_SIZE / 8]),
            payload: vec![0; payload.div_ceil(8)],
        }
    }

    fn header(&mut self) -> &mut [u8] {
        let len = HEADER_SIZE;
        // SAFETY: the array is HEADER_SIZE bytes of plain integers.
        unsafe { std::slice::from_raw_parts_mut(self.header.as_mut_ptr().cast(), len) }
    }

    fn payload(&mut self) -> &mut [u8] {
        let len = self.payload.len() * 8;
        // SAFETY: the vector is len bytes of plain integers.
        unsafe { std::slice::from_raw_parts_mut(self.payload.as_mut_ptr().cast(), len) }
    }
}

/// Where the reply to the request a worker is dispatching goes. Replies are expected before
/// the filesystem method returns; one sent later (or twice) is refused, since the entry may
/// already hold the next request.
#[derive(Clone, Debug)]
pub(crate) struct ReplyTo {
    slot: Arc<Mutex<Slot>>,
    unique: u64,
}

#[derive(Debug, Default)]
struct Slot {
    /// The request whose reply is awaited, if any.
    awaiting: Option<u64>,
    out_header: [u8; OUT_HEADER_SIZE],
    out_payload: Vec<u8>,
}

impl ReplyTo {
    pub(crate) fn send(&self, bufs: &[IoSlice<'_>]) -> io::Result<()> {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if slot.awaiting != Some(self.unique) {
            error!(
                "reply to request {} after its ring entry moved on",
                self.unique
            );
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        slot.awaiting = None;
        let mut header_filled = 0;
        slot.out_payload.clear();
        for buf in bufs {
            let mut bytes: &[u8] = buf;
            if header_filled < OUT_HEADER_SIZE {
                let n = bytes.len().min(OUT_HEADER_SIZE - header_filled);
                slot.out_header[header_filled..header_filled + n].copy_from_slice(&bytes[..n]);
                header_filled += n;
                bytes = &bytes[n..];
            }
            slot.out_payload.extend_from_slice(bytes);
        }
        Ok(())
    }
}

/// The highest possible CPU number plus one: the kernel's number of queues.
fn queue_count() -> io::Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let last = text
        .trim()
        .rsplit([',', '-'])
        .next()
        .and_then(|n| n.parse::<usize>().ok())
        .ok_or_else(|| io::Error::other(format!("cannot parse possible CPUs {text:?}")))?;
    Ok(last + 1)
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays within it for any cpu
    // below CPU_SETSIZE, and sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= libc::CPU_SETSIZE as usize {
            return;
        }
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            debug!(
                "ring worker for CPU {cpu} not pinned: {}",
                io::Error::last_os_error()
            );
        }
    }
}

/// A FUSE ring command SQE. The io-uring crate builds URING_CMD entries but has no setter for
/// `len`, which REGISTER needs (the number of iovecs at `addr`).
fn command(
    fd: i32,
    op: u32,
    qid: u16,
    commit_id: u64,
    iovecs: Option<&[libc::iovec; 2]>,
) -> squeue::Entry128 {
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    cmd[16..18].copy_from_slice(&qid.to_ne_bytes());
    let mut entry = opcode::UringCmd80::new(types::Fd(fd), op).cmd(cmd);
    if let Some(iov) = iovecs {
        entry = entry.addr(Some(iov.as_ptr() as u64));
    }
    let entry = entry.build();
    if iovecs.is_none() {
        return entry;
    }
    // SAFETY: Entry128 is repr(C), 128 bytes: the kernel's SQE (64) and the command's tail;
    // `len` is the u32 at offset 24 of the SQE.
    let mut bytes: [u8; 128] = unsafe { std::mem::transmute(entry) };
    bytes[24..28].copy_from_slice(&2u32.to_ne_bytes());
    unsafe { std::mem::transmute(bytes) }
}

/// Starts the ring workers: `per_queue` for each CPU's queue (so a request that waits on
/// another one in the same queue has a thread left to serve it). A thread that cannot be
/// started ends the session with the error: with some queues registered and others not, the
/// kernel would hold every request.
pub(crate) fn spawn_workers<FS: Filesystem>(
    filesystem: &Arc<FilesystemHolder<FS>>,
    device: &Arc<DevFuse>,
    allowed: SessionACL,
    session_owner: Uid,
    payload: usize,
    threads: usize,
) -> io::Result<Vec<JoinHandle<()>>> {
    let queues = queue_count()?;
    let per_queue = threads.div_ceil(queues).max(2);
    info!("FUSE over io_uring: {queues} queues, {per_queue} workers each");
    let mut workers = Vec::with_capacity(queues * per_queue);
    for qid in 0..queues {
        for i in 0..per_queue {
            let name = format!("fuser-ring-{qid}-{i}");
            let event_loop = SessionEventLoop {
                thread_name: name.clone(),
                filesystem: filesystem.clone(),
                ch: Channel::new(device.clone()),
                allowed,
                session_owner,
                forget_pause: None,
                read_buf_size: 0, // a ring worker reads into its ring entry
            };
            let device = device.clone();
            workers.push(std::thread::Builder::new().name(name).spawn(move || {
                if let Err(e) = worker(&event_loop, device, qid as u16, payload) {
                    error!("{}: {e}", event_loop.thread_name);
                }
            })?);
        }
    }
    Ok(workers)
}

fn worker<FS: Filesystem>(
    event_loop: &SessionEventLoop<FS>,
    device: Arc<DevFuse>,
    qid: u16,
    payload: usize,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    pin_to_cpu(qid as usize);
    let fd = device.as_raw_fd();
    let mut ring: IoUring<squeue::Entry128, cqueue::Entry> = IoUring::builder().build(2)?;
    let mut entry = Entry::new(payload);
    let iovecs = {
        let header = entry.header();
        let header = libc::iovec {
            iov_base: header.as_mut_ptr().cast(),
            iov_len: header.len(),
        };
        let payload = entry.payload();
        let payload = libc::iovec {
            iov_base: payload.as_mut_ptr().cast(),
            iov_len: payload.len(),
        };
        [header, payload]
    };
    let slot = Arc::new(Mutex::new(Slot::default()));
    let mut request: Vec<u64> = Vec::new();
    let register = command(fd, CMD_REGISTER, qid, 0, Some(&iovecs));
    let mut sqe = register.clone();
    let mut registering = true;
    loop {
        // SAFETY: the iovecs and the buffers they point at live as long as this loop; the
        // kernel writes them only while we wait for the completion below.
        unsafe { ring.submission().push(&sqe) }.map_err(|_| io::Error::other("ring full"))?;
        let result = wait_one(&mut ring)?.result();
        if result < 0 {
            let e = io::Error::from_raw_os_error(-result);
            match -result {
                // The connection ended (unmount) or the ring was torn down.
                libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED | libc::ENODEV => {
                    debug!("{}: ring entry ended: {e}", event_loop.thread_name);
                    return Ok(());
                }
                // A refused REGISTER turns io_uring off for the connection: /dev/fuse serves.
                _ if registering => {
                    return Err(io::Error::other(format!("ring registration refused: {e}")));
                }
                // A refused commit costs the entry; a new one keeps this queue served.
                _ => {
                    error!(
                        "{}: ring commit refused ({e}); registering anew",
                        event_loop.thread_name
                    );
                    sqe = register.clone();
                    continue;
                }
            }
        }
        registering = false;

        // Copied out (256 bytes), so that the payload can be borrowed next to it.
        let mut header = [0u8; PAYLOAD_SZ_AT + 4];
        header.copy_from_slice(&entry.header()[..PAYLOAD_SZ_AT + 4]);
        let len = u32::from_ne_bytes(header[0..4].try_into().unwrap()) as usize;
        let unique = u64::from_ne_bytes(header[8..16].try_into().unwrap());
        let payload_len =
            u32::from_ne_bytes(header[PAYLOAD_SZ_AT..PAYLOAD_SZ_AT + 4].try_into().unwrap())
                as usize;
        let room = entry.payload().len();
        let op_len = len
            .checked_sub(IN_HEADER_SIZE + payload_len)
            .filter(|&n| n <= OP_IN_SIZE && payload_len <= room);
        slot.lock().unwrap_or_else(|e| e.into_inner()).awaiting = Some(unique);
        match op_len {
            // Answered EIO below, and the entry goes on serving.
            None => error!(
                "{}: ring request {unique}: length {len} does not hold its payload of {payload_len}",
                event_loop.thread_name
            ),
            Some(op_len) => {
                // The request as /dev/fuse would deliver it, 8-byte aligned for the parser.
                request.clear();
                request.resize(len.div_ceil(8), 0);
                // SAFETY: `request` holds at least len bytes of plain integers.
                let bytes: &mut [u8] =
                    unsafe { std::slice::from_raw_parts_mut(request.as_mut_ptr().cast(), len) };
                bytes[..IN_HEADER_SIZE].copy_from_slice(&header[..IN_HEADER_SIZE]);
                bytes[IN_HEADER_SIZE..IN_HEADER_SIZE + op_len]
                    .copy_from_slice(&header[IN_OUT_SIZE..IN_OUT_SIZE + op_len]);
                bytes[IN_HEADER_SIZE + op_len..].copy_from_slice(&entry.payload()[..payload_len]);
                dispatch(event_loop, &device, &slot, unique, bytes);
            }
        }

        let mut s = slot.lock().unwrap_or_else(|e| e.into_inner());
        let (out_header, out_payload) = if s.awaiting.take().is_some() {
            error!(
                "{}: request {unique} returned without a reply; answering EIO",
                event_loop.thread_name
            );
            (error_header(unique, libc::EIO), &[][..])
        } else {
            (s.out_header, &s.out_payload[..])
        };
        let (out_header, out_payload) = if out_payload.len() > room {
            error!(
                "{}: reply to {unique} of {} bytes exceeds the ring payload of {room}; answering EIO",
                event_loop.thread_name,
                out_payload.len()
            );
            (error_header(unique, libc::EIO), &[][..])
        } else {
            (out_header, out_payload)
        };
        entry.payload()[..out_payload.len()].copy_from_slice(out_payload);
        let header = entry.header();
        header[..OUT_HEADER_SIZE].copy_from_slice(&out_header);
        header[PAYLOAD_SZ_AT..PAYLOAD_SZ_AT + 4]
            .copy_from_slice(&(out_payload.len() as u32).to_ne_bytes());
        drop(s);
        sqe = command(fd, CMD_COMMIT_AND_FETCH, qid, unique, None);
    }
}

/// The next completion, waiting as long as it takes (a wait cut short by a signal or a
/// ptrace attach is resumed).
fn wait_one(ring: &mut IoUring<squeue::Entry128, cqueue::Entry>) -> io::Result<cqueue::Entry> {
    loop {
        if let Some(cqe) = ring.completion().next() {
            return Ok(cqe);
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// A `fuse_out_header` carrying only an error.
fn error_header(unique: u64, errno: i32) -> [u8; OUT_HEADER_SIZE] {
    let mut h = [0u8; OUT_HEADER_SIZE];
    h[0..4].copy_from_slice(&(OUT_HEADER_SIZE as u32).to_ne_bytes());
    h[4..8].copy_from_slice(&(-errno).to_ne_bytes());
    h[8..16].copy_from_slice(&unique.to_ne_bytes());
    h
}

/// Whether this process can set up the rings the workers need. Asked before FUSE_INIT is
/// answered: once the kernel is told io_uring, it holds every request until each CPU's queue
/// has an entry, so a ring that cannot be built later would hang the mount.
pub(crate) fn usable() -> bool {
    match IoUring::<squeue::Entry128, cqueue::Entry>::builder().build(2) {
        Ok(_) => queue_count().is_ok(),
        Err(e) => {
            info!("FUSE over io_uring not used: cannot set up a ring ({e})");
            false
        }
    }
}

/// Dispatches one request like the /dev/fuse threads do, its reply going to `slot`.
fn dispatch<FS: Filesystem>(
    event_loop: &SessionEventLoop<FS>,
    device: &Arc<DevFuse>,
    slot: &Arc<Mutex<Slot>>,
    unique: u64,
    bytes: &[u8],
) {
    let sender = ChannelSender::for_ring(
        device.clone(),
        ReplyTo {
            slot: slot.clone(),
            unique,
        },
    );
    match RequestWithSender::new(sender, bytes) {
        Some(req) => {
            if let Ok(Operation::Destroy(_)) = req.request.operation() {
                req.reply::<ReplyEmpty>().ok();
            } else {
                req.dispatch(event_loop);
            }
        }
        None => error!("{}: unparsable ring request {unique}", event_loop.thread_name),
    }
}
