//! Closing a descriptor without blocking the loop: an `IORING_OP_CLOSE` started detached on
//! io_uring, a job on the blocking pool elsewhere.
//!
//! `close(2)` of a regular file is usually quick, but not always: the last close of a file on
//! NFS writes its dirty pages back, and a FUSE file system answers when it likes. So neither
//! `Drop for File` nor [`File::close`](crate::File::close) calls it on the loop thread.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use io_uring::{opcode, squeue, types};
use ringloop_runtime::{
    spawn_blocking, start_detached, take_cancel_request, take_cancel_request_waiting,
    try_current_backend, Backend, Detached, Interest, OpKind, TaskError,
};

use crate::op::on_ring;

/// Where an awaited close leaves its result.
#[derive(Default)]
struct Reply {
    result: Option<io::Result<()>>,
    waker: Option<Waker>,
}

/// `IORING_OP_CLOSE` of a descriptor this op owns: its `SharedFd` was released first (so the
/// runtime has forgotten the number), and the kernel closes it.
struct Close {
    fd: RawFd,
    reply: Option<Rc<RefCell<Reply>>>,
}

// SAFETY: the SQE names `self.fd`, which the op owns until the kernel closes it, and points at
// no memory.
unsafe impl OpKind for Close {
    type Output = ();

    const NAME: &'static str = "close";

    fn sqe(&mut self) -> squeue::Entry {
        opcode::Close::new(types::Fd(self.fd)).build()
    }

    /// Never used: a close is only ever started detached, which io_uring alone does.
    fn readiness(&self) -> (RawFd, Interest) {
        (self.fd, Interest::Read)
    }

    /// Never used (`try_first` is off); if it were, it would close the descriptor, as the
    /// kernel's op does.
    fn attempt(&mut self) -> io::Result<u32> {
        // SAFETY: we own the descriptor; whatever `close` answers, it is closed afterwards
        // (Linux never leaves it open, not even on `EINTR`).
        if unsafe { libc::close(self.fd) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(0)
    }

    fn complete(self, result: io::Result<u32>, _flags: u32) {
        if let Some(reply) = self.reply {
            let waker = {
                let mut r = reply.borrow_mut();
                r.result = Some(result.map(drop));
                r.waker.take()
            };
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

/// Starts a detached `IORING_OP_CLOSE` of `fd` on the running io_uring runtime. `Err(fd)`, the
/// descriptor still open and ours, when the kernel did not take it (refused, or the runtime
/// is shutting down, or the driver is busy: called from inside it).
fn start_ring_close(fd: OwnedFd, reply: Option<Rc<RefCell<Reply>>>) -> Result<(), OwnedFd> {
    let raw = fd.into_raw_fd();
    match start_detached(Close { fd: raw, reply }) {
        Ok(Detached::Running(_)) => Ok(()),
        // `Done`: with `try_first` off, that means the op never reached the kernel; `Err`:
        // not started at all. Either way the descriptor was not closed.
        // SAFETY: `raw` came from `into_raw_fd` just now and nobody closed it: it is ours.
        Ok(Detached::Done(())) | Err(_) => Err(unsafe { OwnedFd::from_raw_fd(raw) }),
    }
}

/// Closes `fd` without blocking the calling loop and without waiting for the result, which is
/// lost (as with `std::fs::File`'s drop): a detached ring op, else a pool job. Outside a
/// runtime there is no loop to block, and `fd` is closed here.
pub(crate) fn close_in_background(fd: OwnedFd) {
    let fd = match try_current_backend() {
        None => {
            drop(fd);
            return;
        }
        Some(Backend::IoUring) if on_ring(opcode::Close::CODE) => {
            match start_ring_close(fd, None) {
                Ok(()) => return,
                Err(fd) => fd,
            }
        }
        Some(_) => fd,
    };
    // If no pool thread can be started, the job is dropped unrun, and `fd` with it: closed.
    drop(spawn_blocking(move || drop(fd)));
}

/// Closes `fd` and reports `close`'s result, without blocking the loop.
///
/// # Panics
/// Outside a running ringloop runtime.
pub(crate) async fn close(fd: OwnedFd) -> io::Result<()> {
    let fd = if crate::op::uses_ring(opcode::Close::CODE) {
        let reply = Rc::new(RefCell::new(Reply::default()));
        match start_ring_close(fd, Some(reply.clone())) {
            Ok(()) => {
                return ReplyWait {
                    reply,
                    waiting: false,
                }
                .await
            }
            Err(fd) => fd,
        }
    } else {
        fd
    };
    let closed = spawn_blocking(move || {
        let raw = fd.into_raw_fd();
        // SAFETY: we own `raw` (from `into_raw_fd`); it is closed whatever `close` answers.
        if unsafe { libc::close(raw) } < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    })
    .await;
    match closed {
        Ok(result) => result,
        Err(TaskError::Cancelled(c)) => Err(io::Error::from(c)),
        Err(TaskError::Panicked(_)) => Err(io::Error::other(
            "ringloop-fs: no blocking-pool thread could be started to close the file \
             (it was closed on the loop thread instead)",
        )),
    }
}

/// Waits for a detached close's result. A cancellation point: if the task is cancelled first,
/// this resolves to the cancellation and the close completes on its own.
struct ReplyWait {
    reply: Rc<RefCell<Reply>>,
    waiting: bool,
}

impl Future for ReplyWait {
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(result) = self.reply.borrow_mut().result.take() {
            return Poll::Ready(result);
        }
        let taken = if self.waiting {
            take_cancel_request_waiting()
        } else {
            take_cancel_request()
        };
        if let Some(c) = taken {
            return Poll::Ready(Err(io::Error::from(c)));
        }
        let old = self.reply.borrow_mut().waker.replace(cx.waker().clone());
        drop(old);
        self.waiting = true;
        Poll::Pending
    }
}
