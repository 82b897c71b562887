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
//! * **Budget.** The pool is shared, so a connection may hold at most its budget of buffers,
//!   queued and lent together: its cap (default [`DEFAULT_RECV_CAP`]), at most
//!   `1 / POOL_SHARE` of the pool ([`recv_budget`]). A receive is armed with room for what
//!   the connection does not hold yet (at least one buffer), and stopped once that many
//!   chunks wait unread: the peer is back-pressured by TCP, never buffered without bound,
//!   and a few connections whose handlers stop reading cannot take the whole pool. On
//!   io_uring the kernel sees the stop at the next loop iteration, so a little more can land
//!   first: with receive bundles (below) each bundle is limited to half the room, so the two
//!   that can land stay within the budget (plus one buffer); single-shot receives (kernels
//!   without bundles, or refusing their length limit) take one buffer each, so the budget
//!   holds exactly. Only plain multishot receives, chosen with
//!   [`Builder::recv_bundles(false)`](ringloop_runtime::Builder::recv_bundles), let the
//!   kernel's retry loop (up to 32 receives per pass while the socket has data) add a few
//!   dozen, whatever the budget. A handler that keeps calling `recv` while holding every
//!   chunk it got is still served, one buffer at a time.
//! * **Turns.** When the pool runs dry, receivers queue for buffers, first come first
//!   served, and a returning buffer gives the oldest waiter a *turn*. A turn lasts until the
//!   receiver's next poll: it takes a buffer (epoll) or arms a receive that takes one when
//!   data comes (io_uring), and either way the turn is used up, so no idle connection keeps
//!   one. A receive that then finds the pool empty queues again, at the front. Dropping a
//!   `recv` future that waits in the queue (a cancel, a timeout, a `select`) leaves the
//!   queue; [`try_recv`](PooledReceiver::try_recv) never queues.
//! * **Dropping a receiver** loses nothing: the chunks it had queued and its receive (stopped,
//!   still bringing what the kernel took before the stop) go back to the stream, and the
//!   stream's next `read` (or its next receiver) returns them first, in order. A stream has
//!   one live receiver at a time: a second one made while the first lives gets
//!   `ResourceBusy` from every receive.
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

use std::cell::{OnceCell, RefCell};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io;
#[cfg(any(feature = "tokio-io", feature = "hyper"))]
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use io_uring::{cqueue, opcode, squeue};
use ringloop_runtime::{
    buffer_pool, Backend, BufPool, BufWait, CompletionList, Interest, Multishot, MultishotKind, Op,
    OpKind, PooledBuf, SharedFd,
};

use crate::buf::{IoBuf, IoBufMut};

/// Unread chunks a connection may queue before its receive is stopped (back-pressure).
pub const DEFAULT_RECV_CAP: usize = 16;

/// The share of the pool one connection may hold: at most `1 / POOL_SHARE` of its buffers
/// (or its cap, whichever is smaller), queued and lent together; see the [module docs](self).
pub const POOL_SHARE: usize = 8;

/// A connection's budget of pool buffers: its cap, at most the pool's [`POOL_SHARE`], at
/// least one.
pub fn recv_budget(cap: usize, pool_buffers: usize) -> usize {
    cap.min(pool_buffers / POOL_SHARE).max(1)
}

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

/// A stream's receive state that outlives its [`PooledReceiver`]s: kept by the stream (and
/// its read half), so that dropping a receiver loses nothing a later read could still get.
///
/// Not part of the public API (it appears in [`AsSharedFd`](crate::AsSharedFd)'s hidden hook).
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct RecvSlot {
    /// Created by the stream's first `pooled_receiver` (most streams never have one).
    shared: OnceCell<Rc<Shared>>,
}

#[derive(Debug, Default)]
struct Shared {
    /// A live receiver holds the stream's receive state; another gets an error.
    active: std::cell::Cell<bool>,
    /// What the last receiver left: see [`Leftover`]. Boxed, and only once a receiver left
    /// something: every connection with a receiver has a `Shared`, few ever have leftovers.
    left: RefCell<Option<Box<Leftover>>>,
}

/// Data received for a stream and not yet read: chunks a dropped receiver had queued (or the
/// rest of one a `read` only partly took), its receive (cancelled, still bringing what the
/// kernel had received before the cancel), and an end of stream or error it had consumed.
#[derive(Debug, Default)]
struct Leftover {
    chunks: VecDeque<PooledBuf>,
    /// io_uring: the dropped receiver's receive, cancelled; read until it ends.
    multishot: Option<Multishot>,
    /// io_uring: the receive's completion was single-shot.
    single_shot: bool,
    eof: bool,
    /// An errno the receive took from the socket (`SO_ERROR` is cleared once reported).
    error: Option<i32>,
}

impl Leftover {
    fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.multishot.is_none() && !self.eof && self.error.is_none()
    }

    /// The next thing a dropped receiver left: a chunk, or the end or error it saw; `None`
    /// once nothing is left (a plain receive may go on).
    fn poll_next(
        &mut self,
        pool: &Rc<BufPool>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Option<PooledBuf>>>> {
        loop {
            if let Some(chunk) = self.chunks.pop_front() {
                return Poll::Ready(Some(Ok(Some(chunk))));
            }
            let Some(ms) = self.multishot.as_mut() else {
                break;
            };
            match ms.poll_next(cx) {
                Poll::Ready(Some((res, flags))) => {
                    let bid = cqueue::buffer_select(flags);
                    match (res, bid) {
                        (n, Some(bid)) if n > 0 => {
                            // SAFETY: the completion is ours (read from our own multishot),
                            // and this is the only call for the buffer it names.
                            let chunk = unsafe { pool.take_filled(bid, n as usize) };
                            self.chunks.push_back(chunk);
                        }
                        (n, bid) => {
                            if let Some(bid) = bid {
                                // SAFETY: as above.
                                unsafe { pool.recycle_filled(bid) };
                            }
                            match n {
                                0 => self.eof = true,
                                e if e == -libc::ECANCELED || e == -libc::ENOBUFS => {}
                                e if e == -libc::EINVAL => {}
                                e => self.error = Some(-e),
                            }
                        }
                    }
                }
                // Ended: what it received is all in `chunks`.
                Poll::Ready(None) => self.multishot = None,
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.eof {
            return Poll::Ready(Some(Ok(None)));
        }
        if let Some(e) = self.error.take() {
            return Poll::Ready(Some(Err(io::Error::from_raw_os_error(e))));
        }
        Poll::Ready(None)
    }
}

impl RecvSlot {
    /// A receiver for the stream `fd`, unless one is live (then an inert one whose receives
    /// fail).
    pub(crate) fn receiver(&self, fd: &SharedFd, cap: usize) -> PooledReceiver {
        let shared = self.shared.get_or_init(Rc::default).clone();
        let busy = shared.active.replace(true);
        let mut rx = PooledReceiver::new(fd.clone(), cap, shared);
        rx.busy = busy;
        if !busy {
            let taken = rx.shared.left.borrow_mut().take();
            if let Some(left) = taken {
                let Leftover {
                    chunks,
                    multishot,
                    single_shot,
                    eof,
                    error,
                } = *left;
                rx.stash = chunks;
                rx.eof = eof;
                rx.error = error;
                if let Some(ms) = multishot {
                    rx.multishot = ms;
                    rx.single_shot = single_shot;
                }
                for chunk in &mut rx.stash {
                    rx.wait.adopt(chunk);
                }
            }
        }
        rx
    }
}

/// Reads what a dropped [`PooledReceiver`] of this stream left, into `buf` (from its start, up
/// to its capacity, as a plain receive would): `Err(buf)` if nothing is left (or a receiver
/// is live), and the caller receives as usual.
pub(crate) async fn read_leftover<B: IoBufMut>(
    slot: &RecvSlot,
    mut buf: B,
) -> Result<(io::Result<usize>, B), B> {
    if !slot.has_leftover() {
        return Err(buf);
    }
    let read = poll_fn(|cx| {
        let cap = buf.bytes_total();
        let copy = |src: &[u8]| {
            let n = src.len().min(cap);
            // SAFETY: `n` fits both the chunk and the buffer's capacity; the two cannot
            // overlap (a pool buffer is lent to one owner, the caller's buffer is its own).
            unsafe {
                std::ptr::copy_nonoverlapping(src.as_ptr(), buf.stable_mut_ptr(), n);
                buf.set_init(n);
            }
            n
        };
        match poll_read_leftover(slot, cx, copy) {
            None => Poll::Ready(None),
            Some(p) => p.map(Some),
        }
    })
    .await;
    match read {
        None => Err(buf),
        Some(r) => Ok((r, buf)),
    }
}

impl RecvSlot {
    /// Whether a dropped receiver left something to read (and no receiver is live).
    pub(crate) fn has_leftover(&self) -> bool {
        let Some(shared) = self.shared.get() else {
            return false;
        };
        !shared.active.get() && shared.left.borrow().as_ref().is_some_and(|l| !l.is_empty())
    }
}

/// Reads the next thing a dropped [`PooledReceiver`] of this stream left, through `copy`
/// (which takes a prefix of a chunk and says how long; the rest stays for the next read):
/// `None` if nothing is left (or a receiver is live), and the caller receives as usual. The
/// end of stream reads as `Ok(0)`, here and at every later call. A cancellation point (while
/// it waits for what the dropped receiver's receive still brings).
pub(crate) fn poll_read_leftover(
    slot: &RecvSlot,
    cx: &mut Context<'_>,
    copy: impl FnOnce(&[u8]) -> usize,
) -> Option<Poll<io::Result<usize>>> {
    if !slot.has_leftover() {
        return None;
    }
    let shared = slot.shared.get()?;
    let pool = buffer_pool();
    let next = {
        let mut left = shared.left.borrow_mut();
        let left = left.as_mut()?;
        match left.poll_next(&pool, cx) {
            Poll::Pending => match pending_or_cancelled::<()>(Mode::Task) {
                Poll::Ready(Err(e)) => return Some(Poll::Ready(Err(e))),
                _ => return Some(Poll::Pending),
            },
            Poll::Ready(None) => return None,
            Poll::Ready(Some(r)) => r,
        }
    };
    Some(Poll::Ready(match next {
        // The end of stream, seen by the receive: a plain receive would say the same.
        Ok(None) => {
            shared
                .left
                .borrow_mut()
                .get_or_insert_with(Box::default)
                .eof = true;
            Ok(0)
        }
        Ok(Some(mut chunk)) => {
            // Outside any borrow: `copy` is the caller's code.
            let n = copy(&chunk);
            chunk.advance(n);
            if !chunk.is_empty() {
                (shared.left.borrow_mut().get_or_insert_with(Box::default))
                    .chunks
                    .push_front(chunk);
            }
            Ok(n)
        }
        Err(e) => Err(e),
    }))
}

/// Receives a connection's data into pool buffers; see the [module docs](self).
//
// `repr(C)`, in this order: what every receive reads comes first (the first 64 bytes with the
// adapters' features), so that a server's read of a connection that has not been touched since
// its last request costs one or two cache misses here, not one per field. Field order is
// also drop order: the multishot and the pending op go before the descriptor.
#[derive(Debug)]
#[repr(C)]
pub struct PooledReceiver {
    /// io_uring, the adapters' `poll_copy`: the task poll and the waker with which the last
    /// read found nothing, or took the last chunk queued, leaving the waker with the receive
    /// (which wakes it only from the loop, never within a task poll); [`IdleKey::NONE`] if
    /// neither.
    #[cfg(any(feature = "tokio-io", feature = "hyper"))]
    idle: IdleKey,
    multishot: Multishot,
    /// `fd`'s number (fixed while `fd` lives), read without touching `fd`'s allocation.
    raw: RawFd,
    backend: Backend,
    /// io_uring, a draining poll (`Mode::Quiet`, the adapters' `poll_copy`): false when the
    /// chunk just returned was the last one queued and the receive's waker is set (see
    /// [`may_have_more`](Self::may_have_more)).
    more: bool,
    eof: bool,
    /// Another receiver of the same stream was live when this one was made: every receive
    /// fails.
    busy: bool,
    /// io_uring: receives are single-shot (see
    /// [`multishot_recv`](ringloop_runtime::multishot_recv), fixed for the runtime): after its
    /// one completion a receive has ended, though still armed until that is read.
    single_shot: bool,
    /// io_uring: the armed receive is a bundle (see [`Builder::recv_bundles`]).
    ///
    /// [`Builder::recv_bundles`]: ringloop_runtime::Builder::recv_bundles
    bundled: bool,
    /// epoll: the last receive came back shorter than its buffer, so the socket was empty
    /// then; `try_recv` does not ask again until a `recv` has (tokio clears readiness the same
    /// way), which keeps a `recv` + `try_recv` loop at one syscall per chunk.
    drained: bool,
    /// Chunks received before this receiver (left by a dropped one), or the rest of a chunk
    /// a copying read took only part of: handed out first.
    stash: VecDeque<PooledBuf>,
    /// An errno taken from the socket by a dropped receiver's receive (or kept by an adapter
    /// for a later read), still to report: read with the stash by every receive.
    error: Option<i32>,
    /// Its place in the pool's queue when the pool runs dry (and so the pool), and the count
    /// of the buffers lent to it.
    wait: BufWait,
    /// epoll: the receive in progress (kept across `recv` calls, so cancelling one loses
    /// nothing).
    pending: Option<Op<RecvPooled>>,
    fd: SharedFd,
    /// The stream's receive state, shared with the stream (see [`RecvSlot`]).
    shared: Rc<Shared>,
    /// The cap given at creation (the budget is at most this).
    cap: usize,
}

/// A task poll ([`ringloop_runtime::poll_id`]) and a waker (the addresses of its data and
/// vtable, compared only, as `Waker::will_wake` does): a read that found nothing with these
/// need not ask again until either changes.
#[cfg(any(feature = "tokio-io", feature = "hyper"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct IdleKey {
    poll: u64,
    data: usize,
    vtable: usize,
}

#[cfg(any(feature = "tokio-io", feature = "hyper"))]
impl IdleKey {
    /// No key: task polls are numbered from 1, so it matches no read.
    const NONE: IdleKey = IdleKey {
        poll: 0,
        data: 0,
        vtable: 0,
    };

    /// The key of a read with `cx` now; [`NONE`](Self::NONE) outside a task poll.
    #[inline]
    fn of(cx: &Context<'_>) -> IdleKey {
        let Some(poll) = ringloop_runtime::poll_id() else {
            return IdleKey::NONE;
        };
        let waker = cx.waker();
        IdleKey {
            poll,
            data: waker.data() as usize,
            vtable: std::ptr::from_ref(waker.vtable()) as usize,
        }
    }
}

/// What a receive that waits shows in task dumps (the name the runtime's multishot uses).
#[cfg(any(feature = "tokio-io", feature = "hyper"))]
static RECV: ringloop_runtime::AwaitName = ringloop_runtime::AwaitName::new("recv");

impl PooledReceiver {
    fn new(fd: SharedFd, cap: usize, shared: Rc<Shared>) -> PooledReceiver {
        PooledReceiver {
            multishot: Multishot::new(MultishotKind::Recv, cap),
            pending: None,
            stash: VecDeque::new(),
            raw: fd.raw(),
            fd,
            wait: buffer_pool().waiter(),
            shared,
            cap: cap.max(1),
            error: None,
            backend: ringloop_runtime::current_backend(),
            bundled: false,
            single_shot: !ringloop_runtime::multishot_recv(),
            eof: false,
            drained: false,
            busy: false,
            more: true,
            #[cfg(any(feature = "tokio-io", feature = "hyper"))]
            idle: IdleKey::NONE,
        }
    }

    /// The next chunk of data, or `None` at end of stream.
    ///
    /// A cancellation point: a cancelled task gets an error for which
    /// [`is_cancelled`](ringloop_runtime::is_cancelled) is true, and nothing is lost.
    /// Dropping the future before it is ready gives up the receiver's place in the pool's
    /// queue, if it had one (the next `recv` queues again).
    ///
    /// With a deadline ([`DeadlineExt`](crate::DeadlineExt)): an error of kind `TimedOut` if
    /// nothing came by then. Chunks already queued always come first, and the receive stays
    /// armed: what arrives after the deadline waits for the next `recv`.
    ///
    /// # Errors
    /// The real errno (`ECONNRESET`, ...); `ResourceBusy` if this receiver was made while
    /// another receiver of the same stream was live.
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
    /// When the pool is dry it does not queue for a buffer (only a `recv` waits).
    ///
    /// For draining what a connection has queued after a `recv`, e.g. to write it all back
    /// with one [`write_all_vectored`](crate::TcpStream::write_all_vectored).
    pub fn try_recv(&mut self) -> Option<io::Result<Option<PooledBuf>>> {
        if let Some(ready) = self.ready_now() {
            return Some(ready);
        }
        // Polled with a no-op waker: if nothing is ready, the receive stays registered, and
        // the next `recv` installs the task's own waker.
        if self.backend != Backend::IoUring {
            return self.try_recv_epoll();
        }
        if self.multishot.is_armed() && self.multishot.queued() == 0 && !self.single_shot {
            return None; // the common case, without touching the waker the receive holds
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.poll_uring(&mut cx, Mode::Try, None, false) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        }
    }

    /// The borrowed-buffer adapters' read: copies the stream's next bytes into `dst`, as many
    /// of one chunk as fit (the rest of the chunk stays first in line), and says how many;
    /// `Ok(None)` at the end of the stream.
    ///
    /// With `wait`, this is what [`recv`](Self::recv) does, as a poll, for an owner that keeps
    /// the receiver across polls instead of a future: a cancellation point that queues for a
    /// buffer when the pool is dry and keeps its place across polls (the owner leaves the
    /// queue by dropping the receiver, or by a later poll that gets a buffer). Without, it
    /// takes only what has arrived, as [`try_recv`](Self::try_recv) does (`Pending`: nothing
    /// has), and delivers nothing: for the reads that fill the rest of `dst` after a first
    /// chunk. [`may_have_more`](Self::may_have_more) tells whether to try. A waiting read
    /// first asks [`poll_idle`](Self::poll_idle).
    ///
    /// On io_uring a chunk copied whole goes straight back to the pool: no [`PooledBuf`] is
    /// made for it.
    #[cfg(any(feature = "tokio-io", feature = "hyper"))]
    pub(crate) fn poll_copy(
        &mut self,
        cx: &mut Context<'_>,
        wait: bool,
        dst: &mut [MaybeUninit<u8>],
    ) -> Poll<io::Result<Option<usize>>> {
        self.more = true;
        if let Some(ready) = self.ready_now() {
            return Poll::Ready(ready.map(|chunk| chunk.map(|c| self.copy_chunk(c, dst))));
        }
        if self.backend != Backend::IoUring {
            let next = if wait {
                self.poll_epoll(cx, Mode::Task)
            } else {
                self.try_recv_epoll().map_or(Poll::Pending, Poll::Ready)
            };
            return next.map(|r| r.map(|chunk| chunk.map(|c| self.copy_chunk(c, dst))));
        }
        let key = IdleKey::of(cx);
        // Draining: a chunk that was the last one queued leaves `cx`'s waker with the receive
        // and says so through `may_have_more`, so the adapter does not ask again for more.
        let mode = if wait { Mode::Task } else { Mode::Try };
        let next = self.poll_uring_raw(cx, mode, None, true);
        self.idle = match &next {
            // Nothing, or the last chunk queued: `cx`'s waker is with the receive, which wakes
            // it only from the loop, after this task poll. Not after a `Pending` of the pool's
            // queue: a buffer given back later in this same poll wakes that waker at once (and
            // a combinator's per-future waker then polls this read again within the poll,
            // which must take the full path).
            Poll::Pending if self.multishot.is_waiting() => key,
            Poll::Ready(Ok(Some(_))) if !self.more => key,
            _ => IdleKey::NONE,
        };
        match next {
            Poll::Ready(Ok(Some((bid, len)))) => {
                // SAFETY: the completion that named the buffer was our own multishot's, read
                // just now, and nothing else took or recycled the buffer since.
                let (n, rest) = unsafe { self.wait.copy_filled(bid, len, dst) };
                if let Some(rest) = rest {
                    self.stash.push_front(rest);
                    self.idle = IdleKey::NONE; // the next read finds the rest
                }
                Poll::Ready(Ok(Some(n)))
            }
            Poll::Ready(Ok(None)) => Poll::Ready(Ok(None)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Keeps `e`, an error an adapter met after a read had already returned bytes, for the
    /// next receive, which reports it first (and a dropped receiver hands it to the stream):
    /// an errno only, as the socket reported it; another error has nothing to hand on.
    #[cfg(any(feature = "tokio-io", feature = "hyper"))]
    pub(crate) fn keep_error(&mut self, e: io::Error) {
        if let Some(errno) = e.raw_os_error() {
            self.error = Some(errno);
            self.idle = IdleKey::NONE;
        }
    }

    /// The adapters' shortcut, before a waiting [`poll_copy`](Self::poll_copy): `Some` when
    /// this task poll has already read here with this waker and found nothing more (or took
    /// the last chunk queued), leaving the waker with the receive. Whatever came since has
    /// woken the task, which is polled again, so this read would find nothing either: it is
    /// `Pending` at once (hyper reads twice after each request, both finding nothing), after
    /// the checks a waiting read makes (the task's cancellation, the scope's deadline) and
    /// with the wait recorded for task dumps. `None`: read as usual.
    #[cfg(any(feature = "tokio-io", feature = "hyper"))]
    #[inline]
    pub(crate) fn poll_idle<T>(&self, cx: &Context<'_>) -> Option<Poll<io::Result<T>>> {
        if self.idle.poll == 0 || IdleKey::of(cx) != self.idle {
            return None;
        }
        // A wait that starts now (after the last chunk) is a new one; after a read that found
        // nothing, this poll's leaf is already recorded and this records nothing.
        ringloop_runtime::note_awaiting_io(&RECV, Some(self.raw), None, true);
        Some(pending_or_cancelled(Mode::Task))
    }

    /// Copies what fits of `chunk` (counted against this receiver) into `dst`; the rest goes
    /// back to the front of the queue.
    #[cfg(any(feature = "tokio-io", feature = "hyper"))]
    fn copy_chunk(&mut self, mut chunk: PooledBuf, dst: &mut [MaybeUninit<u8>]) -> usize {
        let n = crate::compat::copy_into(dst, &chunk);
        chunk.advance(n);
        if !chunk.is_empty() {
            self.stash.push_front(chunk);
        }
        n
    }

    /// What [`recv`](Self::recv) would do, as a poll, for a driver that is not a future (the
    /// protocol transport): it queues for a buffer when the pool is dry and keeps its place
    /// across polls, but is not a cancellation point. Polled with the connection's own waker.
    ///
    /// With `post` (io_uring), a receive this poll arms tells that it has something by posting
    /// the token on the list (see [`CompletionList`]) rather than by waking `cx`'s waker
    /// (which is still woken for a buffer's turn when the pool runs dry): for the protocol
    /// dispatcher, which reads its connections in batches.
    pub(crate) fn poll_recv_quiet(
        &mut self,
        cx: &mut Context<'_>,
        post: Option<(&CompletionList, u32)>,
    ) -> Poll<io::Result<Option<PooledBuf>>> {
        self.more = true;
        if let Some(ready) = self.ready_now() {
            return Poll::Ready(ready);
        }
        match self.backend {
            Backend::IoUring => self.poll_uring(cx, Mode::Quiet, post, true),
            _ => self.poll_epoll(cx, Mode::Quiet),
        }
    }

    /// After a chunk from [`poll_recv_quiet`](Self::poll_recv_quiet) or `poll_copy`: whether
    /// another may be ready at once. False only when nothing else was queued (io_uring) and
    /// the receive already holds the waker of that poll, so a caller that reads until nothing
    /// is left can stop without the poll that would only find that out.
    pub(crate) fn may_have_more(&self) -> bool {
        self.more
    }

    /// What is ready without any receive: an inherited chunk, the end of stream, an error.
    fn ready_now(&mut self) -> Option<io::Result<Option<PooledBuf>>> {
        if self.busy {
            return Some(Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                "another PooledReceiver of this stream is live",
            )));
        }
        if let Some(chunk) = self.stash.pop_front() {
            return Some(Ok(Some(chunk)));
        }
        if let Some(e) = self.error.take() {
            return Some(Err(io::Error::from_raw_os_error(e)));
        }
        self.eof.then_some(Ok(None))
    }

    /// Hands `buf` to the user, counted against this receiver's budget.
    fn lend(&mut self, mut buf: PooledBuf) -> PooledBuf {
        self.wait.adopt(&mut buf);
        buf
    }

    /// This receiver's budget of pool buffers, queued and lent together: its cap, at most the
    /// pool's [`POOL_SHARE`]. See the [module docs](self).
    pub fn budget(&self) -> usize {
        recv_budget(self.cap, self.wait.pool().count())
    }

    /// Pool buffers this receiver handed out that are not yet dropped.
    pub fn lent(&self) -> usize {
        self.wait.held()
    }

    /// epoll: one non-blocking receive into a free buffer, beside any receive op waiting for
    /// readiness (which holds no buffer while it waits, so the two cannot both own data).
    /// Polling that op instead would consume a pending cancellation.
    fn try_recv_epoll(&mut self) -> Option<io::Result<Option<PooledBuf>>> {
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
            Ok(_) => {
                let buf = attempt.buf.take()?;
                self.wait.took_buffer();
                self.drained = buf.len() < buf.capacity();
                Some(Ok(Some(self.lend(buf))))
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
    /// single-shot receives, which [`recv_bundles`](ringloop_runtime::recv_bundles) does not
    /// know).
    pub fn is_bundled(&self) -> bool {
        self.bundled && !BUNDLE_LIMIT_REFUSED.load(Ordering::Relaxed)
    }

    /// Arms the receive (io_uring), with a cap and a bundle length that keep what the kernel
    /// can take for this connection within its budget (see the module docs).
    fn arm(&mut self, post: Option<(&CompletionList, u32)>) -> io::Result<()> {
        let pool = self.wait.pool().clone();
        let room = self.budget().saturating_sub(self.wait.held()).max(1);
        let refused = BUNDLE_LIMIT_REFUSED.load(Ordering::Relaxed);
        self.bundled = ringloop_runtime::recv_bundles() && !refused;
        if ringloop_runtime::recv_bundles() && refused {
            // Without a length limit a multishot receive can take up to 32 buffers before the
            // cap's cancel lands, past the connection's budget: single-shot receives keep it
            // exactly, as on kernels without bundles.
            self.single_shot = true;
        }
        // A bundle may land after the cap's cancel (the kernel sees it at its next enter):
        // half the room each, so the two stay within it.
        let cap = if self.bundled { room.div_ceil(2) } else { room };
        self.multishot = Multishot::new(MultishotKind::Recv, cap);
        let sqe = if self.bundled {
            // At most `cap` buffers per bundle, so one completion cannot take more of the
            // pool than the connection may queue.
            let limit = u32::try_from(cap * pool.buf_size()).unwrap_or(u32::MAX);
            with_target!(self.fd, t => opcode::Recv::new(t, std::ptr::null_mut(), limit)
                .ioprio(RECV_MULTISHOT | RECVSEND_BUNDLE)
                .buf_group(POOL_GROUP)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT))
        } else if !self.single_shot {
            with_target!(self.fd, t => opcode::RecvMulti::new(t, POOL_GROUP).build())
        } else {
            // One buffer, then the receive ends (its completion has no MORE flag) and is
            // re-armed at the next `recv`: see `multishot_recv` for why. At most one
            // buffer's length (a zero would mean the same to the kernel).
            let len = u32::try_from(pool.buf_size()).unwrap_or(u32::MAX);
            with_target!(self.fd, t => opcode::Recv::new(t, std::ptr::null_mut(), len)
                .buf_group(POOL_GROUP)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT))
        };
        // SAFETY: the SQE names only our descriptor (which the driver keeps open until the
        // op's last completion) and the pool's buffer group, whose memory the driver keeps;
        // its buffer pointer is null (the kernel picks).
        unsafe {
            match post {
                Some((list, token)) => self.multishot.arm_posting(sqe, &self.fd, list, token),
                None => self.multishot.arm(sqe, &self.fd),
            }
        }
    }

    /// `mode` says whether a dry pool makes it queue for a buffer and whether a pending
    /// cancellation is delivered (see [`Mode`]).
    /// `post`: see [`poll_recv_quiet`](Self::poll_recv_quiet). `drain`: a chunk that was the
    /// last one queued registers `cx`'s waker and clears `more` (see
    /// [`may_have_more`](Self::may_have_more)).
    fn poll_uring(
        &mut self,
        cx: &mut Context<'_>,
        mode: Mode,
        post: Option<(&CompletionList, u32)>,
        drain: bool,
    ) -> Poll<io::Result<Option<PooledBuf>>> {
        match self.poll_uring_raw(cx, mode, post, drain) {
            Poll::Ready(Ok(Some((bid, len)))) => {
                // SAFETY: the completion that named the buffer was our own multishot's, read
                // just now, and nothing else took or recycled the buffer since.
                Poll::Ready(Ok(Some(unsafe { self.wait.take_filled(bid, len) })))
            }
            Poll::Ready(Ok(None)) => Poll::Ready(Ok(None)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// [`poll_uring`](Self::poll_uring), with the chunk as the pool buffer that holds it,
    /// `(bid, len)`, not yet taken: the caller takes it (`BufWait::take_filled`) or copies
    /// it out (`BufWait::copy_filled`), at once and exactly once (a buffer never taken is
    /// never given back to the pool).
    #[inline]
    fn poll_uring_raw(
        &mut self,
        cx: &mut Context<'_>,
        mode: Mode,
        post: Option<(&CompletionList, u32)>,
        drain: bool,
    ) -> Poll<io::Result<Option<(u16, usize)>>> {
        loop {
            if self.eof {
                return Poll::Ready(Ok(None));
            }
            if !self.multishot.is_armed() {
                // The pool ran dry (or is about to): queue, first come first served.
                if !self.wait.may_take() {
                    if mode != Mode::Try {
                        self.wait.wait(cx.waker());
                    }
                    return pending_or_cancelled(mode);
                }
                if let Err(e) = self.arm(post) {
                    self.wait.release();
                    return Poll::Ready(Err(e));
                }
                // The receive takes a buffer by itself when data comes: a turn is used up
                // now, so this connection holds none while it is idle.
                self.wait.armed();
            }
            let next = if drain {
                self.multishot.poll_next_draining(cx)
            } else {
                self.multishot.poll_next(cx).map(|c| c.map(|c| (c, true)))
            };
            match next {
                Poll::Ready(Some(((res, flags), more))) => {
                    let bid = cqueue::buffer_select(flags);
                    if res > 0 {
                        self.more = more;
                        let Some(bid) = bid else {
                            self.wait.release();
                            return Poll::Ready(Err(io::Error::other(
                                "multishot receive completed without a buffer",
                            )));
                        };
                        self.wait.took_buffer();
                        return Poll::Ready(Ok(Some((bid, res as usize))));
                    }
                    if let Some(bid) = bid {
                        // SAFETY: as above.
                        unsafe { self.wait.pool().recycle_filled(bid) };
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
                        // receive (it came later than bundles): single-shot receives from now
                        // on (see `arm`).
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
                Poll::Pending => return pending_or_cancelled(mode),
            }
        }
    }

    /// `mode` is [`Mode::Task`] or [`Mode::Quiet`] (whether a pending cancellation is
    /// delivered while queued for a buffer; the receive op itself delivers one either way).
    fn poll_epoll(
        &mut self,
        cx: &mut Context<'_>,
        mode: Mode,
    ) -> Poll<io::Result<Option<PooledBuf>>> {
        if self.eof {
            return Poll::Ready(Ok(None));
        }
        if self.pending.is_none() && !self.wait.may_take() {
            // Others queued for a buffer first.
            self.wait.wait(cx.waker());
            return pending_or_cancelled(mode);
        }
        // Unscoped: the receive is kept across `recv` calls, and a deadline of this one must
        // not end a later one. This call's deadline is checked below instead.
        let op = self.pending.get_or_insert_with(|| {
            Op::new(RecvPooled {
                fd: self.fd.clone(),
                pool: self.wait.pool().clone(),
                buf: None,
            })
            .unscoped()
        });
        let Poll::Ready((result, buf)) = Pin::new(op).poll(cx) else {
            // Waiting for the socket, holding no buffer: a turn goes to the next waiter.
            self.wait.release();
            if mode == Mode::Task {
                if let Some(e) = crate::deadline::expired() {
                    return Poll::Ready(Err(e));
                }
            }
            return Poll::Pending;
        };
        self.pending = None;
        Poll::Ready(match (result, buf) {
            (Ok(0), _) => {
                self.wait.release();
                self.eof = true;
                Ok(None)
            }
            (Ok(_), Some(buf)) => {
                self.wait.took_buffer();
                self.drained = buf.len() < buf.capacity();
                Ok(Some(self.lend(buf)))
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
                return pending_or_cancelled(mode);
            }
            (Err(e), _) => {
                self.wait.release();
                Err(e)
            }
        })
    }
}

impl Drop for PooledReceiver {
    fn drop(&mut self) {
        if self.busy {
            return;
        }
        self.shared.active.set(false);
        if Rc::strong_count(&self.shared) == 1 {
            return; // the stream is gone: nobody can read what is left (disposed of as usual)
        }
        // Hand what this receiver holds back to the stream: the chunks it was given, its
        // receive (stopped, so the peer is back-pressured again; what the kernel took before
        // the stop still arrives, and a later read gets it), and the end or error it saw.
        if !self.multishot.is_armed() && self.stash.is_empty() && !self.eof && self.error.is_none()
        {
            return; // nothing to hand back
        }
        let mut left = self.shared.left.borrow_mut();
        let left = left.get_or_insert_with(Box::default);
        if self.multishot.is_armed() {
            self.multishot.cancel();
            // Its next reader is told by waker, as usual (if it posted).
            self.multishot.stop_posting();
            left.multishot = Some(std::mem::replace(
                &mut self.multishot,
                Multishot::new(MultishotKind::Recv, 1),
            ));
            left.single_shot = self.single_shot;
        }
        left.chunks.extend(self.stash.drain(..));
        left.eof |= self.eof;
        if let Some(e) = self.error.take() {
            left.error = Some(e);
        }
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

/// How a receive waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// A task's `recv`: queues for a buffer when the pool is dry, and is a cancellation point.
    Task,
    /// [`PooledReceiver::try_recv`]: neither queues nor delivers a cancellation.
    Try,
    /// A protocol transport's receive ([`PooledReceiver::poll_recv_quiet`]): queues for a
    /// buffer, but leaves the polling task's cancellation alone (the transport is driven by
    /// the protocol dispatcher, whose own cancellation is its business).
    Quiet,
}

/// `Pending`, or, if `mode` is a task's, the task's cancellation if one is pending, else the
/// deadline's error if the deadline of the scope being polled has passed (see
/// [`DeadlineExt`](ringloop_runtime::DeadlineExt)). Called once nothing is ready: what the
/// receiver has queued always comes first, and giving up the wait loses nothing.
#[inline]
fn pending_or_cancelled<T>(mode: Mode) -> Poll<io::Result<T>> {
    if mode != Mode::Task {
        return Poll::Pending;
    }
    if let Some(c) = ringloop_runtime::take_cancel_request() {
        return Poll::Ready(Err(c.into()));
    }
    match crate::deadline::expired() {
        Some(e) => Poll::Ready(Err(e)),
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
        if let Some(ready) = rx.ready_now() {
            return Poll::Ready(ready);
        }
        match rx.backend {
            Backend::IoUring => rx.poll_uring(cx, Mode::Task, None, false),
            _ => rx.poll_epoll(cx, Mode::Task),
        }
    }
}

impl Drop for PooledRecv<'_> {
    fn drop(&mut self) {
        // A receive that stopped waiting (cancelled, timed out, dropped by a `select`) leaves
        // the pool's queue: a turn it was given must not wait for a poll that may never come.
        if self.rx.wait.is_queued() {
            self.rx.wait.release();
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
    /// The name of the multishot receive it stands for on io_uring.
    const NAME: &'static str = "recv";

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
        // SAFETY: the receive just wrote `r` bytes (at most the capacity) into this buffer.
        unsafe { buf.set_len(r as usize) };
        self.buf = Some(buf);
        Ok(r as u32)
    }

    fn complete(self, result: io::Result<u32>, _flags: u32) -> Self::Output {
        (result, self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What every receive reads sits in the receiver's first 64 bytes (see its layout).
    #[test]
    fn the_fields_every_receive_reads_come_first() {
        let hot_end = std::mem::offset_of!(PooledReceiver, drained) + 1;
        assert!(hot_end <= 64, "the hot fields end at byte {hot_end}");
        for (name, offset) in [
            ("multishot", std::mem::offset_of!(PooledReceiver, multishot)),
            ("raw", std::mem::offset_of!(PooledReceiver, raw)),
            ("more", std::mem::offset_of!(PooledReceiver, more)),
            ("eof", std::mem::offset_of!(PooledReceiver, eof)),
        ] {
            assert!(offset < 64, "{name} at byte {offset}");
        }
    }
}
