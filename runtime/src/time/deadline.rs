//! Deadlines on I/O: one operation, or every operation a future makes, bounded by an instant.
//!
//! [`Op::deadline`](crate::Op::deadline) bounds one op. [`DeadlineExt`] bounds a whole future
//! (`stream.read(buf).timeout(d)`, where `read` is an `async fn` that makes its ops inside):
//! while [`WithDeadline`] polls its future it installs a *deadline scope* on the thread, and
//! every op first polled inside it takes the scope's deadline (the earliest one, when scopes
//! nest or the op has its own). Waits that are not ops (a pooled receiver's queue, an accept
//! stream, a back-off sleep) read the scope with [`current_deadline`] and give up with
//! [`timed_out_error`] once it has passed.
//!
//! Unlike [`timeout`](crate::timeout) (asyncio's `timeout`, which cancels the inner work the
//! asyncio way and returns `Result<T, TimedOut>`), a deadline delivers no cancellation and
//! changes no types: the future's own output comes back, an op that ran out of time reports
//! an [`io::Error`] of kind [`TimedOut`](io::ErrorKind::TimedOut) (errno `ETIMEDOUT`), and an
//! op that completed as the deadline passed reports what it did: **its result wins**, so no
//! byte received is ever dropped and no byte is reported sent that was not. Owned buffers come
//! back with the error, holding what was read before it.
//!
//! ```
//! use std::time::Duration;
//! use ringloop_runtime::{DeadlineExt, Interest, Op, OpKind};
//! # use std::{io, os::fd::RawFd};
//! # struct Never(i32);
//! # // SAFETY: a poll names no memory; the descriptor is the test's own eventfd.
//! # unsafe impl OpKind for Never {
//! #     type Output = io::Result<u32>;
//! #     fn sqe(&mut self) -> io_uring::squeue::Entry {
//! #         io_uring::opcode::PollAdd::new(io_uring::types::Fd(self.0), libc::POLLIN as u32).build()
//! #     }
//! #     fn readiness(&self) -> (RawFd, Interest) { (self.0, Interest::Read) }
//! #     fn attempt(&mut self) -> io::Result<u32> { Err(io::ErrorKind::WouldBlock.into()) }
//! #     fn complete(self, result: io::Result<u32>, _: u32) -> io::Result<u32> { result }
//! # }
//!
//! ringloop_runtime::Runtime::new().unwrap().block_on(async {
//!     # let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK) };
//!     // One op (`Never` waits for an event that never comes):
//!     let r = Op::new(Never(fd)).timeout(Duration::from_millis(5)).await;
//!     assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
//!
//!     // Every op inside a future, whatever its type:
//!     let r = async { Op::new(Never(fd)).await }.timeout(Duration::from_millis(5)).await;
//!     assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::ETIMEDOUT));
//!     # unsafe { libc::close(fd) };
//! });
//! ```

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::TimerEntry;

/// A deadline scope, installed on the thread while a [`WithDeadline`] polls its future.
///
/// An op bound to it (first polled inside it) holds an `Rc` of it until the op resolves, and a
/// nested scope holds its parent: so a scope whose count is above one has something below it
/// that will still resolve by itself (an op in the kernel, whose link timeout completes it).
pub(crate) struct Frame {
    /// The scope's own deadline or an enclosing scope's, whichever is earlier.
    deadline: Instant,
    _parent: Option<Rc<Frame>>,
}

impl Frame {
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }
}

thread_local! {
    /// The innermost scope being polled on this thread, if any.
    static SCOPE: RefCell<Option<Rc<Frame>>> = const { RefCell::new(None) };
    /// Its deadline, kept beside it: read at every wait that would return `Pending` (plain
    /// data, with no borrow and no destructor to register).
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Whether a scope is being polled (`DEADLINE` is `Some`): outside any, which is nearly
    /// always, one byte is all a wait reads.
    static IN_SCOPE: Cell<bool> = const { Cell::new(false) };
}

/// The innermost deadline scope being polled on this thread.
#[inline]
pub(crate) fn current_frame() -> Option<Rc<Frame>> {
    SCOPE.with(|s| s.borrow().clone())
}

/// The deadline of the [`WithDeadline`] being polled on this thread (the earliest, when they
/// nest); `None` outside one.
///
/// For a wait of your own that is not an op (ops read the scope themselves): when it would
/// return `Pending`, check whether its result is ready first (a ready result always wins), then
/// give up with [`timed_out_error`] if this deadline has passed. The `WithDeadline` wakes the
/// task at its deadline, so the check comes.
#[inline]
pub fn current_deadline() -> Option<Instant> {
    if !IN_SCOPE.with(Cell::get) {
        return None;
    }
    DEADLINE.with(Cell::get)
}

/// The error an op (or a wait) gives when its deadline passed first: errno `ETIMEDOUT`, kind
/// [`io::ErrorKind::TimedOut`].
pub fn timed_out_error() -> io::Error {
    io::Error::from_raw_os_error(libc::ETIMEDOUT)
}

/// An instant about 30 years on: what a timeout too long for `Instant` means.
pub(crate) fn far_future() -> Instant {
    let now = Instant::now();
    now.checked_add(Duration::from_secs(86_400 * 365 * 30))
        .unwrap_or(now)
}

/// `now + d`, or [`far_future`] if that does not fit.
pub(crate) fn after(d: Duration) -> Instant {
    Instant::now().checked_add(d).unwrap_or_else(far_future)
}

/// Puts `frame` on the thread as the current scope until dropped (also on unwind).
struct Installed {
    previous: Option<Rc<Frame>>,
}

impl Installed {
    fn new(frame: Rc<Frame>) -> Installed {
        DEADLINE.with(|d| d.set(Some(frame.deadline)));
        IN_SCOPE.with(|s| s.set(true));
        Installed {
            previous: SCOPE.with(|s| s.borrow_mut().replace(frame)),
        }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        DEADLINE.with(|d| d.set(self.previous.as_ref().map(|f| f.deadline)));
        IN_SCOPE.with(|s| s.set(self.previous.is_some()));
        let ours = SCOPE.with(|s| std::mem::replace(&mut *s.borrow_mut(), self.previous.take()));
        drop(ours); // outside the borrow
    }
}

/// An output a [`WithDeadline`] can carry a timeout in.
///
/// * `Result<T, E>` where `E: From<io::Error>` (`io::Result<T>` above all): the deadline's
///   [`timed_out_error`] can be the output itself, so when the deadline has passed and the
///   future still waits on something that cannot time out by itself (not ringloop I/O: a
///   channel, a foreign future), the `WithDeadline` gives up and resolves to
///   `Err(timed_out_error().into())`, dropping the future.
/// * a pair, such as `(io::Result<usize>, B)`, an owned-buffer result: the buffer is inside
///   the future, so the `WithDeadline` never gives up by itself; the ops and waits inside
///   report the timeout and hand the buffer back.
///
/// Outputs that cannot carry an I/O error (a task's, a sleep's) do not implement it: use
/// [`timeout`](crate::timeout) for those.
pub trait DeadlineOutput: Sized {
    /// The output to give up with, or `None` to wait for the future's own.
    fn timed_out() -> Option<Self>;
}

impl<T, E: From<io::Error>> DeadlineOutput for Result<T, E> {
    fn timed_out() -> Option<Self> {
        Some(Err(E::from(timed_out_error())))
    }
}

impl<A, B> DeadlineOutput for (A, B) {
    fn timed_out() -> Option<Self> {
        None
    }
}

/// Deadlines for any future whose output can report one: `.deadline(instant)` and
/// `.timeout(duration)`. See the [module docs](self) for what they do, and how that differs
/// from [`timeout`](crate::timeout).
///
/// ```
/// use std::time::{Duration, Instant};
/// use ringloop_runtime::{sleep, DeadlineExt};
///
/// ringloop_runtime::Runtime::new().unwrap().block_on(async {
///     // A future with no I/O inside resolves as usual.
///     let r = async { Ok::<_, std::io::Error>(7) }.deadline(Instant::now()).await;
///     assert_eq!(r.unwrap(), 7);
///     // One that waits on something that is not ringloop I/O gives up at the deadline.
///     let r = async {
///         sleep(Duration::from_secs(60)).await.unwrap();
///         Ok::<_, std::io::Error>(())
///     }
///     .timeout(Duration::from_millis(2))
///     .await;
///     assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
/// });
/// ```
pub trait DeadlineExt: Future + Sized {
    /// Bounds every op and wait this future makes by `at`; see the [module docs](self).
    fn deadline(self, at: Instant) -> WithDeadline<Self>
    where
        Self::Output: DeadlineOutput,
    {
        WithDeadline {
            future: self,
            deadline: at,
            frame: None,
            timer: TimerEntry::default(),
            done: false,
        }
    }

    /// Bounds every op and wait this future makes by `now + duration`; see the
    /// [module docs](self).
    fn timeout(self, duration: Duration) -> WithDeadline<Self>
    where
        Self::Output: DeadlineOutput,
    {
        self.deadline(after(duration))
    }
}

impl<F: Future> DeadlineExt for F {}

/// The future of [`DeadlineExt::deadline`] and [`DeadlineExt::timeout`]: resolves to the inner
/// future's output.
///
/// While it polls the inner future, the ops first polled there take its deadline: an op whose
/// deadline passes while it is in the kernel is stopped by the kernel (io_uring's
/// `IORING_OP_LINK_TIMEOUT`) or by the loop (epoll: a timer, then the op gives up at its next
/// poll), and resolves with `ETIMEDOUT` unless it completed first. The `WithDeadline` waits for
/// those ops: it never drops one that may still complete. Once the deadline has passed and
/// nothing bound to it is left to settle, an output that can carry the error (see
/// [`DeadlineOutput`]) is given up with; otherwise it keeps waiting for the inner future.
///
/// No cancellation is delivered to the task (compare [`timeout`](crate::timeout)), and the
/// deadline covers ringloop I/O only: ops, pooled receivers, accept streams, the sockets'
/// back-off waits. A [`Task`](crate::Task) or a [`sleep`](crate::sleep) awaited inside is not
/// shortened by it.
///
/// # Panics
/// When polled outside a running ringloop runtime.
#[must_use = "futures do nothing unless awaited"]
pub struct WithDeadline<F> {
    future: F,
    deadline: Instant,
    /// The scope, made at the first poll (it names the enclosing scope, read then); dropped
    /// once resolved, so an enclosing scope no longer counts it.
    frame: Option<Rc<Frame>>,
    /// Wakes the task at the deadline, for waits that are not ops (they look at the deadline
    /// only when polled) and for giving up.
    timer: TimerEntry,
    done: bool,
}

impl<F> std::fmt::Debug for WithDeadline<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithDeadline")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl<F> WithDeadline<F> {
    /// The deadline given (an enclosing scope's may be earlier).
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The inner future, pinned, and the other fields, not pinned.
    #[allow(clippy::type_complexity)]
    fn project(
        self: Pin<&mut Self>,
    ) -> (
        Pin<&mut F>,
        Instant,
        &mut Option<Rc<Frame>>,
        &mut TimerEntry,
        &mut bool,
    ) {
        // SAFETY: `future` is structurally pinned: it is never moved out of `self` and is
        // dropped in place with it (`WithDeadline` has no `Drop` of its own that could move
        // it); the other fields are never pinned.
        unsafe {
            let this = self.get_unchecked_mut();
            (
                Pin::new_unchecked(&mut this.future),
                this.deadline,
                &mut this.frame,
                &mut this.timer,
                &mut this.done,
            )
        }
    }
}

impl<F> Future for WithDeadline<F>
where
    F: Future,
    F::Output: DeadlineOutput,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let (future, deadline, slot, timer, done) = self.project();
        assert!(!*done, "WithDeadline polled after completion");
        let frame = slot.get_or_insert_with(|| {
            let parent = current_frame();
            Rc::new(Frame {
                deadline: parent
                    .as_ref()
                    .map_or(deadline, |p| p.deadline.min(deadline)),
                _parent: parent,
            })
        });
        let at = frame.deadline;
        let polled = {
            let _installed = Installed::new(Rc::clone(frame));
            future.poll(cx)
        };
        // Something bound to the scope is still alive: an op (or a nested scope) that has not
        // resolved yet.
        let bound = Rc::strong_count(frame) > 1;
        let output = match polled {
            Poll::Ready(v) => v,
            Poll::Pending if Instant::now() < at => {
                timer.arm(at, cx);
                return Poll::Pending;
            }
            // An op bound to the scope is still in flight: it completes by itself (its link
            // timeout has fired, or its timer wakes it), and wakes the task then. Giving up now
            // would drop it, and with it whatever it received.
            Poll::Pending if bound => {
                timer.disarm();
                return Poll::Pending;
            }
            // Nothing bound is left: what the future waits on cannot time out by itself.
            Poll::Pending => match F::Output::timed_out() {
                Some(v) => v,
                None => {
                    timer.disarm();
                    return Poll::Pending;
                }
            },
        };
        timer.disarm();
        *done = true;
        // Resolved: an enclosing scope stops counting this one.
        *slot = None;
        Poll::Ready(output)
    }
}
