//! Receiving into the runtime's buffer pool: the server fast path.
//!
//! A [`PooledReceiver`] belongs to a connection. On io_uring it arms one multishot receive with
//! buffer selection (single-shot on kernels before 6.10, below): the kernel picks a pool buffer
//! for each chunk of data as it arrives, so an idle connection holds no buffer at all, and one
//! SQE serves many receives. On epoll it receives into a free pool buffer when asked (the same
//! API and the same memory behaviour).
//!
//! * Cancelling a task waiting in [`recv`](PooledReceiver::recv) loses nothing: the multishot
//!   belongs to the receiver, and data that arrived meanwhile waits in its queue.
//! * Once `cap` chunks wait unread (default 16), the receive is stopped and the peer is
//!   back-pressured by TCP, never buffered without bound. On io_uring the kernel sees the stop
//!   at the next loop iteration, so a little more can land first: with receive bundles (below)
//!   at most one more bundle, `2 * cap + 1` chunks in all; with plain multishot receives the
//!   kernel's retry loop (up to 32 receives per pass while the socket has data) can add a few
//!   dozen.
//! * When the pool runs dry (`ENOBUFS`), the receive is re-armed as soon as buffers come back;
//!   no data is lost (it waits in the socket).
//! * On kernels before 6.10 (no receive bundles), and with
//!   [`Builder::multishot_recv(false)`](ringloop_runtime::Builder::multishot_recv), the receive
//!   is a single-shot one, re-armed at each `recv`: some of those kernels (Debian's 6.1) do
//!   not stop a multishot receive while the socket has data, whatever the cap. See
//!   [`multishot_recv`](ringloop_runtime::multishot_recv).
//! * Where the kernel has receive bundles (6.10+) and takes a length limit on a multishot
//!   receive (later kernels; 6.18 does), one completion may fill several buffers, at most
//!   `cap` (a receive bundle; see
//!   [`Builder::recv_bundles`](ringloop_runtime::Builder::recv_bundles)): a stream that
//!   brings many buffers' worth at once costs one receive, not one per buffer. The receiver
//!   still hands out one [`PooledBuf`] per buffer, in order.
//!
//! ```no_run
//! use ringloop_net::TcpListener;
//!
//! # ringloop_runtime::Runtime::new().unwrap().block_on(async {
//! let listener = TcpListener::bind("127.0.0.1:7000".parse().unwrap())?;
//! let (stream, _) = listener.accept().await?;
//! let mut rx = stream.pooled_receiver();
//! while let Some(chunk) = rx.recv().await? {
//!     let (r, _chunk) = stream.write_all(chunk).await; // the buffer goes back to the pool here
//!     r?;
//! }
//! # Ok::<_, std::io::Error>(()) });
//! ```

use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use io_uring::{cqueue, opcode, squeue};
use ringloop_runtime::{
    buffer_pool, Backend, BufPool, BufWait, Interest, Multishot, MultishotKind, Op, OpKind,
    PooledBuf, SharedFd,
};

use crate::buf::IoBuf;

/// Unread chunks a connection may queue before its receive is stopped (back-pressure).
pub const DEFAULT_RECV_CAP: usize = 16;

// SAFETY: a pooled buffer's memory belongs to the pool, which the buffer keeps alive, and does
// not move; all of it is initialised (the pool is zeroed when allocated).
unsafe impl IoBuf for PooledBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
    fn bytes_total(&self) -> usize {
        self.len()
    }
}

/// Receives a connection's data into pool buffers; see the [module docs](self).
#[derive(Debug)]
pub struct PooledReceiver {
    // Field order is drop order: the multishot and the pending op go before the descriptor.
    multishot: Multishot,
    /// epoll: the receive in progress (kept across `recv` calls, so cancelling one loses
    /// nothing).
    pending: Option<Op<RecvPooled>>,
    fd: SharedFd,
    /// Its place in the pool's queue when the pool runs dry (and so the pool).
    wait: BufWait,
    backend: Backend,
    /// io_uring: the armed receive is a bundle (see [`Builder::recv_bundles`]).
    ///
    /// [`Builder::recv_bundles`]: ringloop_runtime::Builder::recv_bundles
    bundled: bool,
    /// io_uring: receives are single-shot (see
    /// [`multishot_recv`](ringloop_runtime::multishot_recv), fixed for the runtime): after its
    /// one completion a receive has ended, though still armed until that is read.
    single_shot: bool,
    eof: bool,
    /// epoll: the last receive came back shorter than its buffer, so the socket was empty
    /// then; `try_recv` does not ask again until a `recv` has (tokio clears readiness the same
    /// way), which keeps a `recv` + `try_recv` loop at one syscall per chunk.
    drained: bool,
}

impl PooledReceiver {
    pub(crate) fn new(fd: SharedFd, cap: usize) -> PooledReceiver {
        PooledReceiver {
            multishot: Multishot::new(MultishotKind::Recv, cap),
            pending: None,
            fd,
            wait: buffer_pool().waiter(),
            backend: ringloop_runtime::current_backend(),
            bundled: false,
            single_shot: !ringloop_runtime::multishot_recv(),
            eof: false,
            drained: false,
        }
    }

    /// The next chunk of data, or `None` at end of stream.
    ///
    /// A cancellation point: a cancelled task gets an error for which
    /// [`is_cancelled`](ringloop_runtime::is_cancelled) is true, and nothing is lost.
    ///
    /// # Errors
    /// The real errno (`ECONNRESET`, ...).
    pub fn recv(&mut self) -> PooledRecv<'_> {
        PooledRecv { rx: self }
    }

    /// The next chunk if one is ready now, without waiting: `None` if nothing is known to
    /// have arrived (the receive stays armed), else what [`recv`](Self::recv) would have
    /// returned. Not a cancellation point: a pending cancellation waits for the next `recv`.
    ///
    /// On io_uring this reads the connection's queue of completions (no system call). On
    /// epoll it makes one non-blocking receive, unless the last receive came back shorter
    /// than its buffer (the socket was empty then): `None` at once, until the next `recv`.
    ///
    /// For draining what a connection has queued after a `recv`, e.g. to write it all back
    /// with one [`write_all_vectored`](crate::TcpStream::write_all_vectored).
    pub fn try_recv(&mut self) -> Option<io::Result<Option<PooledBuf>>> {
        // Polled with a no-op waker: if nothing is ready, the receive (and a place in the
        // pool's queue) stays registered, and the next `recv` installs the task's own waker.
        if self.backend != Backend::IoUring {
            return self.try_recv_epoll();
        }
        if self.eof {
            return Some(Ok(None));
        }
        if self.multishot.is_armed() && self.multishot.queued() == 0 && !self.single_shot {
            return None; // the common case, without touching the waker the receive holds
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.poll_uring(&mut cx, false) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        }
    }

    /// epoll: one non-blocking receive into a free buffer, beside any receive op waiting for
    /// readiness (which holds no buffer while it waits, so the two cannot both own data).
    /// Polling that op instead would consume a pending cancellation.
    fn try_recv_epoll(&mut self) -> Option<io::Result<Option<PooledBuf>>> {
        if self.eof {
            return Some(Ok(None));
        }
        if self.drained || !self.wait.may_take() {
            return None;
        }
        let mut attempt = RecvPooled {
            fd: self.fd.clone(),
            pool: self.wait.pool().clone(),
            buf: None,
        };
        match attempt.attempt() {
            Ok(0) => {
                self.wait.release();
                self.eof = true;
                Some(Ok(None))
            }
            Ok(n) => {
                let mut buf = attempt.buf.take()?;
                self.wait.took_buffer();
                self.drained = (n as usize) < buf.capacity();
                buf.set_len(n as usize);
                Some(Ok(Some(buf)))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.drained = true;
                None
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => None,
            Err(e) => {
                self.wait.release();
                Some(Err(e))
            }
        }
    }

    /// Whether this receiver's last armed receive was a bundle (see
    /// [`Builder::recv_bundles`](ringloop_runtime::Builder::recv_bundles)): false before the
    /// first `recv`, on epoll, on kernels without bundles, and once the kernel refused the
    /// length limit a multishot bundle needs (6.12 does; the receivers then fall back to
    /// plain multishot receives, which [`recv_bundles`](ringloop_runtime::recv_bundles) does
    /// not know).
    pub fn is_bundled(&self) -> bool {
        self.bundled && !BUNDLE_LIMIT_REFUSED.load(Ordering::Relaxed)
    }

    /// `waiting`: a real wait, where a pending cancellation is delivered; false for
    /// [`try_recv`](Self::try_recv), which is no suspension point and leaves it alone.
    fn poll_uring(
        &mut self,
        cx: &mut Context<'_>,
        waiting: bool,
    ) -> Poll<io::Result<Option<PooledBuf>>> {
        loop {
            if self.eof {
                return Poll::Ready(Ok(None));
            }
            if !self.multishot.is_armed() {
                // The pool ran dry (or is about to): queue, first come first served.
                if !self.wait.may_take() {
                    self.wait.wait(cx.waker());
                    return pending_or_cancelled(waiting);
                }
                self.bundled = ringloop_runtime::recv_bundles()
                    && !BUNDLE_LIMIT_REFUSED.load(Ordering::Relaxed);
                let sqe = if self.bundled {
                    // At most `cap` buffers per bundle, so one completion cannot take more of
                    // the pool than the connection may queue.
                    let limit = self.multishot.cap() * self.wait.pool().buf_size();
                    let limit = u32::try_from(limit).unwrap_or(u32::MAX);
                    with_target!(self.fd, t => opcode::Recv::new(t, std::ptr::null_mut(), limit)
                        .ioprio(RECV_MULTISHOT | RECVSEND_BUNDLE)
                        .buf_group(POOL_GROUP)
                        .build()
                        .flags(squeue::Flags::BUFFER_SELECT))
                } else if !self.single_shot {
                    with_target!(self.fd, t => opcode::RecvMulti::new(t, POOL_GROUP).build())
                } else {
                    // One buffer, then the receive ends (its completion has no MORE flag) and
                    // is re-armed at the next `recv`: see `multishot_recv` for why. At most
                    // one buffer's length (a zero would mean the same to the kernel).
                    let len = u32::try_from(self.wait.pool().buf_size()).unwrap_or(u32::MAX);
                    with_target!(self.fd, t => opcode::Recv::new(t, std::ptr::null_mut(), len)
                        .buf_group(POOL_GROUP)
                        .build()
                        .flags(squeue::Flags::BUFFER_SELECT))
                };
                // SAFETY: the SQE names only our descriptor (which the driver keeps open until
                // the op's last completion) and the pool's buffer group, whose memory the
                // driver keeps; its buffer pointer is null (the kernel picks).
                if let Err(e) = unsafe { self.multishot.arm(sqe, &self.fd) } {
                    self.wait.release();
                    return Poll::Ready(Err(e));
                }
            }
            match self.multishot.poll_next(cx) {
                Poll::Ready(Some((res, flags))) => {
                    let bid = cqueue::buffer_select(flags);
                    if res > 0 {
                        let Some(bid) = bid else {
                            self.wait.release();
                            return Poll::Ready(Err(io::Error::other(
                                "multishot receive completed without a buffer",
                            )));
                        };
                        self.wait.took_buffer();
                        return Poll::Ready(Ok(Some(
                            self.wait.pool().take_filled(bid, res as usize),
                        )));
                    }
                    if let Some(bid) = bid {
                        self.wait.pool().recycle(bid);
                    }
                    match res {
                        0 => {
                            self.wait.release();
                            self.eof = true;
                            return Poll::Ready(Ok(None));
                        }
                        // The pool ran dry under us: queue (at the front if this was our
                        // turn) and re-arm once a buffer is ours.
                        e if e == -libc::ENOBUFS => {
                            self.wait.lost_race();
                            continue;
                        }
                        // The queue cap stopped the receive: re-arm now that it was read.
                        e if e == -libc::ECANCELED => continue,
                        // A kernel with bundles that refuses a length limit on a multishot
                        // receive (it came later than bundles): plain multishot receives from
                        // now on.
                        e if e == -libc::EINVAL && self.bundled => {
                            BUNDLE_LIMIT_REFUSED.store(true, Ordering::Relaxed);
                            continue;
                        }
                        e => {
                            self.wait.release();
                            return Poll::Ready(Err(io::Error::from_raw_os_error(-e)));
                        }
                    }
                }
                // Ended with its last completion read: re-arm.
                Poll::Ready(None) => continue,
                Poll::Pending => return pending_or_cancelled(waiting),
            }
        }
    }

    fn poll_epoll(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<PooledBuf>>> {
        if self.eof {
            return Poll::Ready(Ok(None));
        }
        if self.pending.is_none() && !self.wait.may_take() {
            // Others queued for a buffer first.
            self.wait.wait(cx.waker());
            return pending_or_cancelled(true);
        }
        let op = self.pending.get_or_insert_with(|| {
            Op::new(RecvPooled {
                fd: self.fd.clone(),
                pool: self.wait.pool().clone(),
                buf: None,
            })
        });
        let Poll::Ready((result, buf)) = Pin::new(op).poll(cx) else {
            // Waiting for the socket, holding no buffer: a turn goes to the next waiter.
            self.wait.release();
            return Poll::Pending;
        };
        self.pending = None;
        Poll::Ready(match (result, buf) {
            (Ok(0), _) => {
                self.wait.release();
                self.eof = true;
                Ok(None)
            }
            (Ok(n), Some(mut buf)) => {
                self.wait.took_buffer();
                self.drained = (n as usize) < buf.capacity();
                buf.set_len(n as usize);
                Ok(Some(buf))
            }
            (Ok(_), None) => {
                self.wait.release();
                Err(io::Error::other(
                    "pooled receive completed without a buffer",
                ))
            }
            (Err(e), _) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                // The socket is readable but every pool buffer is out: queue for one, then
                // try again (the data waits in the socket).
                self.wait.lost_race();
                self.wait.wait(cx.waker());
                return pending_or_cancelled(true);
            }
            (Err(e), _) => {
                self.wait.release();
                Err(e)
            }
        })
    }
}

/// The pool's buffer group (see the runtime's driver docs).
const POOL_GROUP: u16 = 0;

/// `IORING_RECV_MULTISHOT` and `IORING_RECVSEND_BUNDLE`, receive flags in the SQE's `ioprio`.
const RECV_MULTISHOT: u16 = 1 << 1;
const RECVSEND_BUNDLE: u16 = 1 << 4;

/// The kernel refused a multishot bundle with a length limit (`EINVAL`): a property of the
/// kernel, so of the whole process.
static BUNDLE_LIMIT_REFUSED: AtomicBool = AtomicBool::new(false);

/// `Pending`, or the task's cancellation if one is pending and `waiting` (a real wait).
fn pending_or_cancelled<T>(waiting: bool) -> Poll<io::Result<T>> {
    if !waiting {
        return Poll::Pending;
    }
    match ringloop_runtime::take_cancel_request() {
        Some(c) => Poll::Ready(Err(c.into())),
        None => Poll::Pending,
    }
}

/// The future of [`PooledReceiver::recv`].
#[must_use = "futures do nothing unless awaited"]
pub struct PooledRecv<'a> {
    rx: &'a mut PooledReceiver,
}

impl Future for PooledRecv<'_> {
    type Output = io::Result<Option<PooledBuf>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let rx = &mut *self.rx;
        match rx.backend {
            Backend::IoUring => rx.poll_uring(cx, true),
            _ => rx.poll_epoll(cx),
        }
    }
}

/// epoll: one receive into a pool buffer, taken only when the socket is readable (readiness
/// first), so idle connections hold no buffer and never queue for one.
pub(crate) struct RecvPooled {
    fd: SharedFd,
    pool: Rc<BufPool>,
    buf: Option<PooledBuf>,
}

// SAFETY: the SQE carries a pointer into the pool buffer the op owns (taken here) and names
// `self.fd`, which the op keeps open. (The receiver uses multishot on io_uring; this path is
// correct there too.)
unsafe impl OpKind for RecvPooled {
    type Output = (io::Result<u32>, Option<PooledBuf>);

    fn sqe(&mut self) -> squeue::Entry {
        // Only the epoll backend runs this op (`PooledReceiver` arms a multishot receive on
        // io_uring), so this is never reached there with an empty pool.
        let buf = self.buf.get_or_insert_with(|| {
            self.pool
                .take_free()
                .expect("RecvPooled is an epoll-backend op")
        });
        with_target!(self.fd, t => opcode::Recv::new(t,
            buf.spare_mut_ptr(),
            buf.capacity() as u32,
        )
        .build())
    }

    fn readiness(&self) -> (RawFd, Interest) {
        (self.fd.raw(), Interest::Read)
    }

    fn attempt(&mut self) -> io::Result<u32> {
        let mut buf = match self.buf.take() {
            Some(buf) => buf,
            None => self
                .pool
                .take_free()
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOBUFS))?,
        };
        // SAFETY: the pool buffer is lent to us and valid for `capacity` bytes.
        let r = unsafe {
            libc::recv(
                self.fd.raw(),
                buf.spare_mut_ptr() as *mut libc::c_void,
                buf.capacity(),
                libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            // Nothing to read (or an error): give the buffer back while we wait.
            return Err(io::Error::last_os_error());
        }
        self.buf = Some(buf);
        Ok(r as u32)
    }

    fn complete(self: Box<Self>, result: io::Result<u32>, _flags: u32) -> Self::Output {
        (result, self.buf)
    }
}
