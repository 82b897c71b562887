//! Sending a file to a socket without copying it through user space.
//!
//! * [`send_file`] (the default, both backends): `sendfile(2)` on the loop's thread, non-blocking
//!   on the socket; when the socket is full, a readiness wait (a poll op on the ring, epoll on
//!   epoll), then again. The kernel copies page-cache pages straight into the socket. A file
//!   not in the page cache makes the call wait for the disk, on the loop's thread.
//! * [`send_file_spliced`] (io_uring): `IORING_OP_SPLICE` file → pipe → socket. Reads that miss
//!   the page cache never block the loop, but the kernel runs every splice on an io-wq worker
//!   thread (it cannot splice inline), and that hand-off costs more CPU than the copy it
//!   saves: measured 1.7 to 4 times the CPU per 64 KiB response of `sendfile`
//!   (`benches/sendfile.rs`, net/DESIGN.md). On epoll it is [`send_file`].
//!
//! The pipes of the spliced path come from a small cache of the runtime's (closed with it): a
//! pipe goes back only when it is empty (every byte spliced into it went out to the socket), so
//! a transfer that stops half-way (an error, a cancel, a dropped future) closes its pipe
//! instead, and no later transfer can send another file's bytes. Every op holds its descriptors
//! ([`SharedFd`] clones of the file, the socket and the pipe ends), so a dropped transfer's op
//! in flight never names a closed (and reused) descriptor.

use std::cell::RefCell;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use io_uring::{opcode, squeue, types};
use ringloop_runtime::{current_backend, runtime_local, Backend, Interest, Op, OpKind, SharedFd};

use crate::ops::PollReady;
use crate::socket::{AsSharedFd, SendAllError};

/// A pipe of the runtime's cache: its read and write ends, and its capacity.
struct Pipe {
    read: SharedFd,
    write: SharedFd,
    size: usize,
}

/// Pipes kept for the next transfer on a runtime (more are closed).
const CACHED_PIPES: usize = 4;

/// The pipe size asked for (`F_SETPIPE_SZ`, best effort: an unprivileged process may get less,
/// then the default 64 KiB stays): fewer round trips for large files.
const PIPE_SIZE: libc::c_int = 1 << 20;

/// The running runtime's idle pipes ([`runtime_local`]: closed when the runtime goes).
#[derive(Default)]
struct Pipes(RefCell<Vec<Pipe>>);

impl Pipe {
    fn take() -> io::Result<Pipe> {
        if let Some(p) = runtime_local::<Pipes>().0.borrow_mut().pop() {
            return Ok(p);
        }
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` has room for the two descriptors `pipe2` writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `pipe2` succeeded: both descriptors are new and ours alone.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: a plain fcntl on a descriptor we own; failure leaves the default size.
        unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, PIPE_SIZE) };
        // SAFETY: a plain fcntl on a descriptor we own.
        let size = unsafe { libc::fcntl(fds[1], libc::F_GETPIPE_SZ) };
        Ok(Pipe {
            read: SharedFd::new(read),
            write: SharedFd::new(write),
            size: if size > 0 { size as usize } else { 64 * 1024 },
        })
    }

    /// Back to the cache (only an empty pipe may come back).
    fn give_back(self) {
        let pipes = runtime_local::<Pipes>();
        let mut pipes = pipes.0.borrow_mut();
        if pipes.len() < CACHED_PIPES {
            pipes.push(self);
        }
    }
}

/// One `splice` on the ring: `len` bytes from `from` (at `from_offset`, or -1 for a pipe) into
/// `to` (a pipe, or a socket).
struct Splice {
    from: SharedFd,
    from_offset: i64,
    to: SharedFd,
    len: u32,
}

// SAFETY: the SQE names no memory, only `self.from` and `self.to`, which the op keeps open.
unsafe impl OpKind for Splice {
    type Output = io::Result<usize>;
    const NAME: &'static str = "splice";

    fn sqe(&mut self) -> squeue::Entry {
        let from = types::Fd(self.from.raw());
        with_target!(self.to, t => opcode::Splice::new(from, self.from_offset, t, -1, self.len)
            .flags(libc::SPLICE_F_MOVE)
            .build())
    }

    fn readiness(&self) -> (RawFd, Interest) {
        (self.to.raw(), Interest::Write)
    }

    fn byte_count(&self) -> Option<usize> {
        Some(self.len as usize)
    }

    fn attempt(&mut self) -> io::Result<u32> {
        // Never used on epoll (`sendfile` is); a plain non-blocking splice all the same.
        let mut off = self.from_offset;
        let off_ptr = if off < 0 {
            std::ptr::null_mut()
        } else {
            &mut off as *mut i64
        };
        // SAFETY: the offset pointer is null or points at a live local; the descriptors are
        // open (the op holds them).
        let r = unsafe {
            libc::splice(
                self.from.raw(),
                off_ptr,
                self.to.raw(),
                std::ptr::null_mut(),
                self.len as usize,
                (libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK) as libc::c_uint,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as u32)
        }
    }

    fn complete(self, result: io::Result<u32>, _flags: u32) -> io::Result<usize> {
        result.map(|n| n as usize)
    }
}

/// One non-blocking `sendfile(2)`: up to `len` bytes of `file` at `offset` to the socket `to`.
struct SendFile {
    file: SharedFd,
    offset: i64,
    to: SharedFd,
    len: usize,
}

impl SendFile {
    fn attempt(&mut self) -> io::Result<u32> {
        let mut off = self.offset as libc::off_t;
        // SAFETY: `off` is a live local; the descriptors are open (held by `self`).
        let r = unsafe {
            libc::sendfile(
                self.to.raw(),
                self.file.raw(),
                &mut off,
                self.len.min(1 << 30),
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as u32)
        }
    }
}

fn failed(sent: usize, error: io::Error) -> SendAllError {
    SendAllError { sent, error }
}

/// Sends `len` bytes of `file` from `offset` to the socket `sock`; see
/// [`TcpStream::send_file`](crate::TcpStream::send_file).
pub(crate) async fn send_file(
    sock: &impl AsSharedFd,
    file: &impl AsSharedFd,
    offset: u64,
    len: usize,
) -> Result<usize, SendAllError> {
    if len == 0 {
        return Ok(0);
    }
    let Ok(offset) = i64::try_from(offset) else {
        return Err(failed(0, io::Error::from_raw_os_error(libc::EINVAL)));
    };
    sendfile(
        sock.as_shared_fd().clone(),
        file.as_shared_fd().clone(),
        offset,
        len,
    )
    .await
}

/// As [`send_file`], through `splice` on io_uring; see [`TcpStream::send_file_spliced`].
///
/// [`TcpStream::send_file_spliced`]: crate::TcpStream::send_file_spliced
pub(crate) async fn send_file_spliced(
    sock: &impl AsSharedFd,
    file: &impl AsSharedFd,
    offset: u64,
    len: usize,
) -> Result<usize, SendAllError> {
    if len == 0 {
        return Ok(0);
    }
    let Ok(offset) = i64::try_from(offset) else {
        return Err(failed(0, io::Error::from_raw_os_error(libc::EINVAL)));
    };
    let to = sock.as_shared_fd().clone();
    let file = file.as_shared_fd().clone();
    if current_backend() == Backend::IoUring {
        spliced(to, file, offset, len).await
    } else {
        sendfile(to, file, offset, len).await
    }
}

/// Bytes a transfer may send without letting other tasks run (a fast peer never makes the
/// socket wait, so the loop would otherwise stay in one transfer).
const YIELD_EVERY: usize = 4 << 20;

async fn sendfile(
    to: SharedFd,
    file: SharedFd,
    offset: i64,
    len: usize,
) -> Result<usize, SendAllError> {
    let mut sent = 0;
    let mut since_yield = 0;
    while sent < len {
        let mut op = SendFile {
            file: file.clone(),
            offset: offset + sent as i64,
            to: to.clone(),
            len: len - sent,
        };
        match op.attempt() {
            Ok(0) => break, // the end of the file
            Ok(n) => {
                sent += n as usize;
                since_yield += n as usize;
                if since_yield >= YIELD_EVERY && sent < len {
                    since_yield = 0;
                    // The yield is an op (a poll for room, which the socket has: it completes
                    // at the loop's next turn): it takes a deadline scope like the transfer's
                    // other ops, so a deadline never finds the transfer waiting on something
                    // that cannot say how much it sent.
                    let room = Op::new(PollReady::writable(to.clone()).after_eagain()).await;
                    if let Err(e) = room {
                        return Err(failed(sent, e));
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                since_yield = 0;
                let room = Op::new(PollReady::writable(to.clone()).after_eagain()).await;
                if let Err(e) = room {
                    return Err(failed(sent, e));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(failed(sent, e)),
        }
    }
    Ok(sent)
}

async fn spliced(
    to: SharedFd,
    file: SharedFd,
    offset: i64,
    len: usize,
) -> Result<usize, SendAllError> {
    let pipe = Pipe::take().map_err(|e| failed(0, e))?;
    let capacity = pipe.size;
    let mut sent = 0;
    let mut in_pipe = 0;
    let result = async {
        while sent < len {
            // File → pipe.
            let chunk = (len - sent).min(capacity).min(u32::MAX as usize) as u32;
            let filled = Op::new(Splice {
                from: file.clone(),
                from_offset: offset + sent as i64,
                to: pipe.write.clone(),
                len: chunk,
            })
            .await?;
            if filled == 0 {
                break; // the end of the file
            }
            in_pipe = filled;
            // Pipe → socket, until the pipe is empty. The socket is non-blocking and a splice
            // is not a pollable op on the ring: a full send buffer comes back as `EAGAIN`,
            // and a poll op waits for room.
            while in_pipe > 0 {
                let out = Op::new(Splice {
                    from: pipe.read.clone(),
                    from_offset: -1,
                    to: to.clone(),
                    len: in_pipe as u32,
                })
                .await;
                let out = match out {
                    Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                        Op::new(PollReady::writable(to.clone())).await?;
                        continue;
                    }
                    out => out?,
                };
                if out == 0 {
                    // A socket that takes nothing without an error: its write side is shut.
                    return Err(io::Error::from_raw_os_error(libc::EPIPE));
                }
                in_pipe -= out;
                sent += out;
            }
        }
        Ok::<(), io::Error>(())
    }
    .await;
    match result {
        Ok(()) => {
            pipe.give_back();
            Ok(sent)
        }
        // Bytes left in the pipe: it is closed with them (dropped here), never reused.
        Err(e) => {
            if in_pipe == 0 {
                pipe.give_back();
            }
            Err(failed(sent, e))
        }
    }
}
