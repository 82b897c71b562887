//! Multishot ops: one SQE, many completions, owned by a connection rather than a future.
//!
//! A [`Multishot`] lives in the object that owns the stream of completions (a pooled receiver,
//! an accept stream), not in a future: cancelling a task that waits for the next completion
//! drops nothing that the kernel produced. When the owner is dropped, what is queued and what
//! still arrives is disposed of by [`MultishotKind`] (buffers recycled, sockets closed) until the
//! kernel's last completion frees the slot.
//!
//! io_uring only; on epoll the owners emulate the same API with ordinary ops.

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use io_uring::squeue;

use super::handle::{Deferred, DriverHandle};
use super::{OpKey, SharedFd};
use crate::context;
use crate::task::awaiting::{self, names, Leaf};

/// What a multishot op's completions carry, so the driver can release them when nobody reads
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MultishotKind {
    /// A receive with buffer selection: each completion names a pool buffer.
    Recv,
    /// An accept: each successful completion is a new descriptor.
    Accept,
}

/// Where multishot ops post a token when they have something to read, instead of waking a
/// waker each: for one task that owns many of them and reads them in batches (the protocol
/// transports' dispatcher). See [`Multishot::arm_posting`].
///
/// An op posts its token once, and again only after its owner has found its queue empty
/// (read it with [`Multishot::poll_next_draining`] until it says nothing more is queued, or
/// until it is pending): so each token is in the list at most once at a time. The list lives
/// on the thread of its runtime (`!Send`); its reader is woken, through the waker it last left
/// in [`take`](Self::take), when the list stops being empty.
#[derive(Clone, Default)]
pub struct CompletionList {
    shared: Rc<ListShared>,
}

/// A [`CompletionList`]'s state, shared with the slots of the ops that post to it.
#[derive(Default)]
pub(crate) struct ListShared {
    tokens: RefCell<Vec<u32>>,
    waker: RefCell<Option<Waker>>,
}

impl ListShared {
    /// Posts `token`; the reader's waker is collected in `woken` if the list was empty.
    #[inline]
    pub(crate) fn post(&self, token: u32, woken: &mut Vec<Waker>) {
        let mut tokens = self.tokens.borrow_mut();
        if tokens.is_empty() {
            woken.extend(self.waker.borrow_mut().take());
        }
        tokens.push(token);
    }
}

impl CompletionList {
    /// An empty list.
    pub fn new() -> CompletionList {
        CompletionList::default()
    }

    #[cfg(test)]
    pub(crate) fn shared(&self) -> Rc<ListShared> {
        self.shared.clone()
    }

    /// Moves the tokens posted since the last call into `out` (which should be empty), oldest
    /// first; `cx`'s waker is woken at the next post (the first one after the list was
    /// emptied).
    pub fn take(&self, cx: &mut Context<'_>, out: &mut Vec<u32>) {
        {
            let mut waker = self.shared.waker.borrow_mut();
            match &*waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *waker = Some(cx.waker().clone()),
            }
        }
        std::mem::swap(&mut *self.shared.tokens.borrow_mut(), out);
    }

    /// Drops the reader's waker (a reader that is going away: its waker may be all that keeps
    /// its task alive) and the tokens posted; later posts wake nobody until the next
    /// [`take`](Self::take).
    pub fn clear(&self) {
        let waker = self.shared.waker.borrow_mut().take();
        self.shared.tokens.borrow_mut().clear();
        drop(waker); // outside the borrow: a waker's drop is foreign code
    }
}

impl fmt::Debug for CompletionList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletionList")
            .field("posted", &self.shared.tokens.borrow().len())
            .finish()
    }
}

/// A connection's multishot op (io_uring).
///
/// It belongs to the runtime it was armed on: reading, cancelling and dropping it go to that
/// runtime's driver, whichever runtime is running on the thread then. The driver keeps the
/// descriptor the op was armed on open until the op's last completion, so the kernel never
/// acts on a reused descriptor number or registered slot, however early the owner goes.
#[derive(Debug)]
pub struct Multishot {
    kind: MultishotKind,
    /// The last read found nothing (the owner's task waits on this op): the next one that
    /// finds nothing continues that wait, for task dumps. Fits in padding.
    waiting: bool,
    /// `u32`: one of these lives in every connection, so its size counts at 10 000 of them.
    cap: u32,
    /// The op's key and its driver, while armed.
    armed: Option<(OpKey, DriverHandle)>,
}

// One lives in every connection: the `waiting` flag must stay in padding.
const _: () = assert!(std::mem::size_of::<Multishot>() <= 24);

impl Multishot {
    /// Not armed yet. `cap` bounds the completions queued unread: at that many the driver
    /// cancels the op, so a peer that is not read from is back-pressured by the kernel (its
    /// data waits in the socket) instead of filling the buffer pool. Re-arm once read.
    pub fn new(kind: MultishotKind, cap: usize) -> Self {
        Multishot {
            kind,
            waiting: false,
            cap: u32::try_from(cap).unwrap_or(u32::MAX),
            armed: None,
        }
    }

    /// The cap on unread completions given to [`new`](Self::new).
    pub fn cap(&self) -> usize {
        self.cap as usize
    }

    /// Whether the op is in the kernel (or its completions are still being read).
    #[inline]
    pub fn is_armed(&self) -> bool {
        self.armed.is_some()
    }

    /// Arms the op with `sqe` on the running runtime (the runtime sets its `user_data`). The
    /// driver keeps a clone of `fd` until the op's last completion.
    ///
    /// # Safety
    /// The only descriptor `sqe` may name is `fd` (by number, or by the registered slot
    /// [`SharedFd::target`] gives). Every pointer in `sqe` must stay valid until the op's last
    /// completion (one without `IORING_CQE_F_MORE`) has been reaped, which can be after this
    /// `Multishot` is dropped; a multishot SQE normally carries none (buffer selection, a
    /// null address for accept).
    ///
    /// # Errors
    /// On the epoll backend, if already armed, or if the runtime was dropped.
    ///
    /// # Panics
    /// Outside a running ringloop runtime.
    pub unsafe fn arm(&mut self, sqe: squeue::Entry, fd: &SharedFd) -> io::Result<()> {
        if self.armed.is_some() {
            return Err(io::Error::other("multishot op already armed"));
        }
        let driver = DriverHandle::current().unwrap_or_else(|| panic!("{}", context::NO_RUNTIME));
        let (kind, cap) = (self.kind, self.cap as usize);
        let keep = fd.clone();
        // SAFETY: forwarded from the caller; the driver keeps `fd` open for the op's life.
        let key = driver
            .try_with(|d| unsafe { d.multishot_submit(sqe, kind, cap, keep) })
            .unwrap_or_else(|| Err(io::Error::from(io::ErrorKind::ResourceBusy)))?;
        self.armed = Some((key, driver));
        Ok(())
    }

    /// As [`arm`](Self::arm), but the op tells its owner that it has something to read by
    /// posting `token` on `list` instead of waking the waker of the read that found nothing
    /// (see [`CompletionList`]). The owner reads it with
    /// [`poll_next_draining`](Self::poll_next_draining) (the waker it passes is not kept) until
    /// nothing more is queued, or until the read is pending; the op posts again after that.
    ///
    /// # Safety
    /// As [`arm`](Self::arm).
    ///
    /// # Errors
    /// As [`arm`](Self::arm).
    ///
    /// # Panics
    /// Outside a running ringloop runtime.
    pub unsafe fn arm_posting(
        &mut self,
        sqe: squeue::Entry,
        fd: &SharedFd,
        list: &CompletionList,
        token: u32,
    ) -> io::Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe { self.arm(sqe, fd)? };
        self.set_post(Some((list.shared.clone(), token)));
        Ok(())
    }

    /// From now on, the op wakes the waker of its owner's read that found nothing, as if armed
    /// with [`arm`](Self::arm) (for an op handed to another owner).
    pub fn stop_posting(&self) {
        self.set_post(None);
    }

    fn set_post(&self, post: Option<(Rc<ListShared>, u32)>) {
        if let Some((key, driver)) = &self.armed {
            let key = *key;
            // Never busy here (an owner's call, not a drop path): were it so, the op would
            // keep telling its owner the way it did.
            driver.try_with(|d| d.multishot_post_to(key, post));
        }
    }

    /// The next completion `(result, flags)`, or `None` once the op has ended (its last
    /// completion was read; arm it again to go on).
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<(i32, u32)>> {
        self.poll(cx, false).map(|next| next.map(|(c, _)| c))
    }

    /// As [`poll_next`](Self::poll_next), for an owner that reads until nothing is left: with
    /// each completion, whether more may follow now. `false` means it was the last one queued
    /// and the op goes on, and `cx`'s waker is then already registered, as the poll that
    /// would find nothing would have done: the owner can stop reading without that poll.
    #[inline]
    pub fn poll_next_draining(&mut self, cx: &mut Context<'_>) -> Poll<Option<((i32, u32), bool)>> {
        self.poll(cx, true)
    }

    #[inline]
    fn poll(&mut self, cx: &mut Context<'_>, draining: bool) -> Poll<Option<((i32, u32), bool)>> {
        let Some((key, driver)) = &self.armed else {
            return Poll::Ready(None);
        };
        let key = *key;
        match driver.try_with(|d| d.multishot_next(key, cx.waker(), draining)) {
            Some(Ok(Some(c))) => {
                self.waiting = false;
                Poll::Ready(Some(c))
            }
            Some(Ok(None)) => {
                self.waiting = false;
                self.armed = None;
                Poll::Ready(None)
            }
            Some(Err(fd)) => {
                let name = match self.kind {
                    MultishotKind::Recv => &names::RECV,
                    MultishotKind::Accept => &names::ACCEPT,
                };
                awaiting::note(Leaf::io(name, fd, None), !self.waiting);
                self.waiting = true;
                Poll::Pending
            }
            None => {
                // Polled from inside the driver (a waker that polls inline): come back. The
                // op holds no waker of this poll (see `is_waiting`).
                self.waiting = false;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    /// Whether the last read found nothing queued and left its waker with the op, which wakes
    /// it from the loop when a completion arrives (never from inside a poll). False after a
    /// read that returned a completion, and after a `Pending` that could not reach the driver
    /// (the waker was woken at once instead).
    #[inline]
    pub fn is_waiting(&self) -> bool {
        self.armed.is_some() && self.waiting
    }

    /// Completions received and not yet read.
    pub fn queued(&self) -> usize {
        match &self.armed {
            Some((key, driver)) => driver.try_with(|d| d.multishot_queued(*key)).unwrap_or(0),
            None => 0,
        }
    }

    /// Asks the kernel to stop the op; the completions already produced, and a last one, still
    /// arrive and are read as usual.
    pub fn cancel(&self) {
        if let Some((key, driver)) = &self.armed {
            let key = *key;
            driver.now_or_later(|d| d.uring_cancel(key), || Deferred::Cancel(key));
        }
    }
}

impl Drop for Multishot {
    fn drop(&mut self) {
        if let Some((key, driver)) = self.armed.take() {
            driver.defer(Deferred::MultishotOrphan(key));
        }
    }
}
