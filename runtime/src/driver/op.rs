//! The one op interface both backends serve, and the future that drives an op.
//!
//! An [`OpKind`] describes an operation once: how it becomes an SQE (io_uring), which descriptor
//! and direction it waits on and how to try it without blocking (epoll), and how a result
//! becomes its output. [`Op`] runs it on whichever backend the runtime chose, so sockets never
//! know which one that is. Users can add op kinds of their own (a file read, say) by implementing
//! the trait.
//!
//! # Memory rules (io_uring)
//!
//! The op's data is boxed before `sqe` is called and never moves afterwards, so every pointer in
//! the SQE (buffers, sockaddr storage, iovecs) stays valid. If the `Op` future is dropped while
//! the kernel holds the SQE, the box moves into the op table as an orphan together with an
//! `ASYNC_CANCEL`, and is only dropped when the op's own completion arrives (then
//! [`OpKind::complete`] runs and its output is dropped: an orphaned accept's new socket is
//! closed that way).
//!
//! The box comes from the free lists of the thread's driver (see `opmem`), and a finished op's
//! box goes back to its own driver's, where the next op of the same layout takes it: in steady
//! state an op allocates nothing. The box keeps every op future one pointer wide, which a
//! server pays per connection.

use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use io_uring::squeue;

use super::errno::is_would_block;
use super::handle::{shut_down, Deferred, DriverHandle};
use super::opmem::OpMemory;
use super::{Backend, OpKey};
use crate::context;
use crate::task::awaiting::{self, Leaf};
use crate::task::cancel::{take_cancel, take_cancel_if, take_cancel_waiting};
use crate::task::{AwaitName, Cancelled};
use crate::time::deadline::{self, timed_out_error, Frame};
use crate::time::TimerEntry;

/// Which readiness an op waits for on the epoll backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Interest {
    /// Readable (or a pending connection, or hang-up).
    Read,
    /// Writable (or a finished connect).
    Write,
}

/// One kind of I/O operation, described once for both backends.
///
/// # Safety
///
/// Implementing this trait is unsafe because the io_uring backend hands [`sqe`](Self::sqe)'s
/// entry to the kernel: every pointer in it must point into memory that `self` owns and that
/// stays valid and unmoved while `self` is alive (heap memory owned by `self`, or `self`'s own
/// fields: `self` is boxed and never moved once `sqe` is called), and every descriptor in it
/// must be kept open by `self`.
pub unsafe trait OpKind: 'static {
    /// What the op produces.
    type Output;

    /// The op's name in task dumps: a task suspended on it shows as `NAME on fd N` (see
    /// [`Awaiting::Io`](crate::Awaiting::Io); the descriptor is [`readiness`](Self::readiness)'s).
    /// Default: `op`.
    const NAME: &'static str = "op";

    /// The submission entry (io_uring). Called at most once, with `self` at its final address.
    /// The runtime sets the entry's `user_data`.
    fn sqe(&mut self) -> squeue::Entry;

    /// The descriptor and direction to wait on when [`attempt`](Self::attempt) would block
    /// (epoll).
    fn readiness(&self) -> (RawFd, Interest);

    /// Performs the operation without blocking (epoll): `Ok(n)` is a result as a CQE would carry
    /// it, an error of kind `WouldBlock` means "wait for readiness and call me again".
    fn attempt(&mut self) -> io::Result<u32>;

    /// Turns the result into the output. `result` is the CQE's result (an errno as
    /// `io::Error`), or on epoll the last attempt's; a cancelled op gets an error carrying
    /// [`Cancelled`] (see [`is_cancelled`]). `flags` are the CQE flags (0 on epoll).
    ///
    /// Called once the kernel is done with the op: `self` may move from here on.
    fn complete(self, result: io::Result<u32>, flags: u32) -> Self::Output
    where
        Self: Sized;

    /// Whether, on io_uring, the op may first be tried as a plain non-blocking system call
    /// ([`attempt`](Self::attempt)) while the ring is nearly idle: nothing queued, no other
    /// single-shot op in flight, at most two multishot ops armed (a lone connection). For an
    /// op that usually succeeds at once (a send to a socket with room) that saves the loop
    /// iteration its completion would take; with more going on, one `io_uring_enter` for
    /// many ops costs less than a system call each, and the op is submitted as usual. An
    /// attempt that would block falls back to the SQE. Default: no.
    fn try_first(&self) -> bool {
        false
    }

    /// The bytes the op moves, shown in task dumps: a send's length, a receive's room. Asked
    /// only when a task is suspended on the op. Default: none.
    fn byte_count(&self) -> Option<usize> {
        None
    }
}

/// The name of op kind `T` as a `static` of its own, so that a leaf records a pointer.
struct OpName<T>(std::marker::PhantomData<T>);

impl<T: OpKind> OpName<T> {
    const NAME: &'static AwaitName = &AwaitName::new(T::NAME);
}

/// Records, for task dumps, that the current task is suspended on `data` (`new`: its first
/// `Pending`).
#[inline]
fn note_waiting<T: OpKind>(data: &T, new: bool) {
    awaiting::note(
        Leaf::io(OpName::<T>::NAME, data.readiness().0, data.byte_count()),
        new,
    );
}

/// Whether an I/O error is a ringloop cancellation (the task was cancelled while the op was in
/// flight and the cancel won the race).
pub fn is_cancelled(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Cancelled>())
}

/// A type-erased orphan: the op's data, kept alive until its completion arrives (an op whose
/// future was dropped, or one started detached).
pub(crate) trait Orphan {
    /// Runs the op's `complete` and drops its output; the box goes back to `memory`.
    fn finish(self: Box<Self>, result: i32, flags: u32, memory: &RefCell<OpMemory>);

    /// The data as itself again (a detached op the kernel refused).
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

impl<T: OpKind> Orphan for T {
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }

    fn finish(self: Box<Self>, result: i32, flags: u32, memory: &RefCell<OpMemory>) {
        // Running `complete` and dropping its output releases whatever the op produced (an
        // accepted socket is closed, a buffer freed), or is the op's whole effect (a detached
        // op). The box goes back to the free lists first (the borrow ends before `complete`,
        // which is the op kind's code).
        let data = memory.borrow_mut().unboxed(self);
        drop(data.complete(cqe_result(result), flags));
    }
}

pub(crate) fn cqe_result(res: i32) -> io::Result<u32> {
    errno_result(restart_as_eintr(res))
}

/// A result already passed through [`restart_as_eintr`] as an `io::Result`.
#[inline]
fn errno_result(res: i32) -> io::Result<u32> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(res as u32)
    }
}

/// A CQE's result with the kernel's internal restart codes (`ERESTARTSYS` 512 to
/// `ERESTART_RESTARTBLOCK` 516) as `-EINTR`. A system call never returns them to user space,
/// but io_uring posts them for a call its io-wq worker was interrupted in (6.1 does, for an
/// `OPENAT` of a FIFO stopped by its linked timeout): what they mean is `EINTR`.
#[inline]
pub(crate) fn restart_as_eintr(res: i32) -> i32 {
    if (-516..=-512).contains(&res) {
        -libc::EINTR
    } else {
        res
    }
}

enum State {
    /// Not submitted (io_uring), not waiting yet (epoll). `scoped`: the op takes the deadline of
    /// the [deadline scope](crate::time::deadline) it is polled in before it first waits (off
    /// for [`Op::unscoped`], and once read).
    Unsubmitted {
        scoped: bool,
    },
    /// io_uring: the SQE is queued or in the kernel.
    InFlight(OpKey),
    /// epoll: waiting for readiness; our registration.
    Waiting {
        fd: RawFd,
        token: u64,
    },
    Done,
}

/// What an op rarely needs, boxed so that an op without it stays small (one per connection in
/// a typical server; the box is taken only by an op that gets a deadline or a cancellation).
#[derive(Default)]
struct Rare {
    /// io_uring: the delivered cancellation, once an `ASYNC_CANCEL` has been sent for it.
    cancel: Option<Cancelled>,
    deadline: Option<OpDeadline>,
}

/// An op's deadline.
struct OpDeadline {
    at: Instant,
    /// The scope the op was first polled in, held until the op resolves: the scope waits for
    /// ops bound to it rather than drop one that may still complete.
    _scope: Option<Rc<Frame>>,
    /// epoll: wakes the task at `at` (io_uring: the kernel's linked timeout completes the op).
    timer: TimerEntry,
}

/// The future of one operation; created with [`Op::new`] and awaited.
///
/// A cancellation point like every runtime await: if the task is cancelled while the op is in
/// flight, the op is cancelled in the kernel (`ASYNC_CANCEL`) and the future resolves with an
/// error carrying [`Cancelled`]; if the op completed first, its real result is delivered (no data
/// is lost) and the cancellation waits for the task's next await. On epoll a cancelled waiter
/// completes at once.
///
/// # Deadlines
///
/// [`deadline`](Self::deadline) (or [`timeout`](Self::timeout)) bounds the op, and so does a
/// [`WithDeadline`](crate::WithDeadline) it is first polled inside. If the deadline passes
/// before the op completes, the op is stopped and resolves with an error of kind
/// [`TimedOut`](io::ErrorKind::TimedOut) (errno `ETIMEDOUT`, see
/// [`timed_out_error`](crate::timed_out_error)). If it completed as the deadline passed, **its
/// result wins**: data received, bytes sent, a connection accepted, an end of stream or an
/// error are delivered as they are, never replaced by the timeout. A deadline already past
/// still lets the op be tried once without waiting (asyncio's `timeout(0)` lets a ready result
/// through too). On io_uring the op's SQE is linked to an `IORING_OP_LINK_TIMEOUT`; on epoll a
/// timer wakes the task and the op gives up at that poll, after one last attempt.
///
/// The kernel decides whether an op it has started can be stopped: one it runs on an io-wq
/// worker thread and that is blocked in a system call there (an `OPENAT` of a FIFO waiting
/// for its other end, say) is interrupted by 5.10 and 6.1 but left to run by 6.12 and later,
/// and then resolves with its own result when the call returns, after the deadline. Ops on
/// sockets wait by polling, not on a worker, and always stop.
///
/// If the task is cancelled too, the cancellation wins over the deadline: an op the kernel
/// stopped after the runtime sent its `ASYNC_CANCEL` resolves with the `Cancelled` error even
/// if the deadline had also passed; an op that timed out before the cancel was seen resolves
/// with `ETIMEDOUT`, and the cancel request waits for the task's next await.
///
/// An op belongs to the runtime it is first polled on: every later poll, and its drop, go to
/// that runtime's driver, whichever runtime is running on the thread then. Polled after that
/// runtime was dropped, an op that never reached the kernel resolves with an error; one the
/// kernel held completes with what the runtime's shutdown reaped (usually `ECANCELED`).
/// `Op` is `!Send`: its driver lives on one thread.
///
/// ```compile_fail
/// # use std::{io, os::fd::RawFd};
/// use ringloop_runtime::{Interest, Op, OpKind};
///
/// struct Nop;
/// // SAFETY: a NOP names no memory and no descriptor.
/// unsafe impl OpKind for Nop {
///     type Output = io::Result<u32>;
///     fn sqe(&mut self) -> io_uring::squeue::Entry { io_uring::opcode::Nop::new().build() }
///     fn readiness(&self) -> (RawFd, Interest) { (0, Interest::Read) }
///     fn attempt(&mut self) -> io::Result<u32> { Ok(0) }
///     fn complete(self, result: io::Result<u32>, _: u32) -> io::Result<u32> { result }
/// }
/// fn assert_send<T: Send>(_: T) {}
/// assert_send(Op::new(Nop));
/// ```
#[must_use = "ops do nothing unless awaited"]
pub struct Op<T: OpKind> {
    data: Option<Box<T>>,
    state: State,
    /// The driver this op was first polled on; `None` until then.
    driver: Option<DriverHandle>,
    /// A deadline, a delivered cancellation: `None` for most ops.
    rare: Option<Box<Rare>>,
    /// When it started waiting, on the loop's clock (`DriverHandle::op_submitted`), for its
    /// kind's latency; 0 while it has not waited.
    started: u64,
}

impl<T: OpKind> Unpin for Op<T> {}

impl<T: OpKind> fmt::Debug for Op<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Unsubmitted { .. } => "unsubmitted",
            State::InFlight(_) => "in flight",
            State::Waiting { .. } => "waiting",
            State::Done => "done",
        };
        f.debug_struct("Op")
            .field("state", &state)
            .field("deadline", &self.deadline_at())
            .finish()
    }
}

/// Asks to be polled again: the driver was borrowed (the op was polled from inside the driver,
/// by a waker that polls inline). Nothing was changed.
fn busy<R>(cx: &mut Context<'_>) -> Poll<R> {
    cx.waker().wake_by_ref();
    Poll::Pending
}

impl<T: OpKind> Op<T> {
    /// Wraps an op kind; nothing happens until the future is polled.
    pub fn new(kind: T) -> Self {
        Op {
            data: Some(DriverHandle::boxed_here(kind)),
            state: State::Unsubmitted { scoped: true },
            driver: None,
            rare: None,
            started: 0,
        }
    }

    /// Bounds the op by `at`: if it has not completed by then, it is stopped and resolves with
    /// an error of kind [`TimedOut`](io::ErrorKind::TimedOut) (errno `ETIMEDOUT`). A result
    /// the op produced first always wins. See [Deadlines](Self#deadlines).
    ///
    /// Setting several deadlines (this, [`timeout`](Self::timeout), an enclosing
    /// [`WithDeadline`](crate::WithDeadline)) bounds the op by the earliest.
    ///
    /// # Panics
    /// If the op was already polled (its SQE may be in the kernel, with no link to add).
    pub fn deadline(mut self, at: Instant) -> Self {
        assert!(
            self.driver.is_none() && matches!(self.state, State::Unsubmitted { .. }),
            "Op::deadline must be set before the op is first polled"
        );
        self.bind_deadline(at, None);
        self
    }

    /// Bounds the op by `now + duration`; see [`deadline`](Self::deadline).
    ///
    /// # Panics
    /// If the op was already polled.
    pub fn timeout(self, duration: Duration) -> Self {
        self.deadline(deadline::after(duration))
    }

    /// The op ignores the [deadline scope](crate::time::deadline) it is first polled in: for
    /// an op that outlives the call that made it (a receive kept between calls, resumed by
    /// whichever call comes next), which a deadline of the first call must not end later. Its
    /// own [`deadline`](Self::deadline) still applies.
    pub fn unscoped(mut self) -> Self {
        if let State::Unsubmitted { scoped } = &mut self.state {
            *scoped = false;
        }
        self
    }

    /// The op's deadline, if it has one.
    fn deadline_at(&self) -> Option<Instant> {
        self.rare.as_ref()?.deadline.as_ref().map(|d| d.at)
    }

    /// Sets the deadline to `at`, or keeps an earlier one; `scope` is kept until the op
    /// resolves.
    fn bind_deadline(&mut self, at: Instant, scope: Option<Rc<Frame>>) {
        let rare = self
            .rare
            .get_or_insert_with(|| DriverHandle::boxed_here(Rare::default()));
        match &mut rare.deadline {
            Some(d) => {
                d.at = d.at.min(at);
                if scope.is_some() {
                    d._scope = scope;
                }
            }
            None => {
                rare.deadline = Some(OpDeadline {
                    at,
                    _scope: scope,
                    timer: TimerEntry::default(),
                })
            }
        }
    }

    /// Before the op first waits: takes the deadline of the scope it is polled in, if any (once).
    #[inline]
    fn read_scope(&mut self) {
        if let State::Unsubmitted { scoped: true } = self.state {
            self.state = State::Unsubmitted { scoped: false };
            if let Some(frame) = deadline::current_frame() {
                self.bind_deadline(frame.deadline(), Some(frame));
            }
        }
    }

    /// Completes the op; its box goes back to `driver` for the next op.
    #[inline]
    fn finish(&mut self, driver: &DriverHandle, result: io::Result<u32>, flags: u32) -> T::Output {
        driver.op_finished(OpName::<T>::NAME, self.started, &result);
        self.state = State::Done;
        if self.rare.is_some() {
            self.release_rare(driver);
        }
        let data = self.data.take().expect("Op polled after completion");
        driver.unboxed(data).complete(result, flags)
    }

    /// Drops what the rare box holds (the scope is released, the timer disarmed) and gives the
    /// box back to `driver`.
    #[cold]
    #[inline(never)]
    fn release_rare(&mut self, driver: &DriverHandle) {
        if let Some(rare) = self.rare.take() {
            drop(driver.unboxed(rare));
        }
    }

    /// Completes the op with its deadline's error.
    #[cold]
    fn timed_out(&mut self, driver: &DriverHandle) -> T::Output {
        driver.try_with(|d| d.count_timed_out());
        self.finish(driver, Err(timed_out_error()), 0)
    }

    fn poll_uring(&mut self, driver: &DriverHandle, cx: &mut Context<'_>) -> Poll<T::Output> {
        if let State::Unsubmitted { .. } = self.state {
            // A cancellation already pending (one re-posted after an op won its race, or
            // one that arrived while the task was queued) is delivered here: nothing has
            // been submitted, so nothing can be lost, and an op that went to the kernel
            // without a wake would leave the request unseen.
            if let Some(c) = take_cancel() {
                return Poll::Ready(self.finish(driver, Err(io::Error::from(c)), 0));
            }
            if driver.is_closed() {
                return Poll::Ready(self.finish(driver, Err(shut_down()), 0));
            }
            self.read_scope();
            let deadline = self.deadline_at();
            let data = self.data.as_mut().expect("op data present");
            if data.try_first() {
                let Some(try_now) = driver.try_with(|d| d.may_try_first()) else {
                    return busy(cx);
                };
                if try_now {
                    // Outside the borrow: `attempt` is the op kind's code.
                    let done = data.attempt();
                    driver.try_with(|d| d.count_attempt());
                    match done {
                        // Tried once without waiting: with its deadline past, that was its
                        // one try.
                        Err(e) if is_would_block(&e) => {
                            if deadline.is_some_and(|at| Instant::now() >= at) {
                                return Poll::Ready(self.timed_out(driver));
                            }
                        }
                        done => return Poll::Ready(self.finish(driver, done, 0)),
                    }
                }
            }
            // `sqe` may be called once only: make sure the driver will take the entry first
            // (it is busy only if this poll runs inside it; nothing below can leave it
            // borrowed, so the submission after `sqe` finds it free).
            if driver.is_busy() {
                return busy(cx);
            }
            // Built outside the borrow: `sqe` is the op kind's code.
            let sqe = data.sqe();
            // SAFETY: `OpKind`'s contract: the entry's pointers and descriptors are owned
            // by `data`, which is boxed (never moves) and stays alive until this op's
            // completion: here until `finish`, or in this driver's op table as an orphan
            // (the drop below hands it to the same driver). A linked timeout's timespec is the
            // driver's (see `Uring::submit_linked`).
            let submitted = driver.try_with(|d| unsafe {
                match deadline {
                    None => d.uring_submit(sqe, cx.waker()),
                    Some(at) => d.uring_submit_linked(sqe, at, cx.waker()),
                }
            });
            return match submitted {
                // Cannot happen (checked above); the entry is not in the ring, so failing the
                // op is safe, where asking for another poll would call `sqe` twice.
                None => Poll::Ready(self.finish(
                    driver,
                    Err(io::Error::from(io::ErrorKind::ResourceBusy)),
                    0,
                )),
                Some(Ok(key)) => {
                    self.state = State::InFlight(key);
                    self.started = driver.op_submitted();
                    note_waiting(&**data, true);
                    Poll::Pending
                }
                Some(Err(e)) => Poll::Ready(self.finish(driver, Err(e), 0)),
            };
        }
        let State::InFlight(key) = self.state else {
            panic!("Op polled after completion");
        };
        let cancel_sent = self.rare.as_ref().is_some_and(|r| r.cancel.is_some());
        // One borrow: the result if it came, else the waker is updated and a pending cancel
        // request is passed on to the kernel.
        let polled = driver.try_with(|d| match d.uring_take(key, cx.waker()) {
            Some(done) => Ok(done),
            None => {
                // An op in flight was already waiting: it also sees a request delivered to
                // another branch of the task in this poll. Once it holds a delivery, it takes
                // only new requests: a second one while the first one's ASYNC_CANCEL is in
                // flight is taken too (it would otherwise look unseen, as if the task awaited
                // a foreign future); one request stands for both, as in asyncio.
                let taken = if cancel_sent {
                    take_cancel()
                } else {
                    take_cancel_waiting()
                };
                if taken.is_some() && !cancel_sent {
                    d.uring_cancel(key);
                }
                Err(taken)
            }
        });
        let (res, flags) = match polled {
            None => return busy(cx),
            Some(Ok(done)) => done,
            Some(Err(taken)) => {
                if let Some(c) = taken {
                    self.rare
                        .get_or_insert_with(|| driver.boxed(Rare::default()))
                        .cancel = Some(c);
                }
                if let Some(data) = &self.data {
                    note_waiting(&**data, false);
                }
                return Poll::Pending;
            }
        };
        let res = restart_as_eintr(res);
        let result = errno_result(res);
        let result = match self.rare.as_mut().and_then(|r| r.cancel.take()) {
            // `EINTR`: the cancel interrupted the worker running the op, before it did anything
            // (a call that had done something would say what).
            Some(c) if res == -libc::ECANCELED || res == -libc::EINTR => Err(io::Error::from(c)),
            Some(c) => {
                // The op won the race: its real result is delivered and the
                // cancellation waits for the task's next await.
                drop(c);
                context::with_current(|t| {
                    if let Some(t) = t {
                        t.header().repost_cancel()
                    }
                });
                result
            }
            // Without a cancel of ours, only the linked timeout stops an op: `ECANCELED`, or
            // `EINTR` (or a restart code, see `restart_as_eintr`) from a worker it interrupted
            // (the op then did nothing, or it would say what it did). Any other result, data
            // above all, is delivered as it is.
            None => match self.deadline_at() {
                Some(at)
                    if !driver.is_closed()
                        && (res == -libc::ECANCELED
                            || (res == -libc::EINTR && Instant::now() >= at)) =>
                {
                    return Poll::Ready(self.timed_out(driver));
                }
                _ => result,
            },
        };
        Poll::Ready(self.finish(driver, result, flags))
    }

    fn poll_epoll(&mut self, driver: &DriverHandle, cx: &mut Context<'_>) -> Poll<T::Output> {
        let waiter = match self.state {
            State::Waiting { fd, token } => Some((fd, token)),
            _ => None,
        };
        if driver.is_closed() {
            if let Some((fd, token)) = waiter {
                driver.defer(Deferred::Unwait(fd, token));
            }
            return Poll::Ready(self.finish(driver, Err(shut_down()), 0));
        }
        // Outside the borrow: `attempt` is the op kind's code.
        let result = self
            .data
            .as_mut()
            .expect("Op polled after completion")
            .attempt();
        match result {
            Err(e) if is_would_block(&e) => {
                // A registered waiter was already waiting (see `take_cancel_waiting`).
                let cancel = take_cancel_if(waiter.is_some());
                if cancel.is_none() {
                    self.read_scope();
                    // The attempt just made was its last: the deadline has passed.
                    if self.deadline_at().is_some_and(|at| Instant::now() >= at) {
                        release_waiter(driver, waiter);
                        return Poll::Ready(self.timed_out(driver));
                    }
                }
                let data = self.data.as_ref().expect("op data present");
                let (fd, interest) = data.readiness();
                let registered = driver.try_with(|d| {
                    d.count_attempt();
                    if cancel.is_some() {
                        if let Some((fd, token)) = waiter {
                            d.epoll_unwait(fd, token);
                        }
                        return None;
                    }
                    Some(d.epoll_wait_for(fd, interest, waiter.map(|w| w.1), cx.waker()))
                });
                match registered {
                    // Busy: the attempt's result is dropped (it would block anyway), and the
                    // cancel request, if taken, is put back for the next poll.
                    None => {
                        if cancel.is_some() {
                            drop(cancel);
                            context::with_current(|t| {
                                if let Some(t) = t {
                                    t.header().repost_cancel()
                                }
                            });
                        }
                        busy(cx)
                    }
                    Some(None) => {
                        let c = cancel.expect("cancelled");
                        Poll::Ready(self.finish(driver, Err(io::Error::from(c)), 0))
                    }
                    Some(Some(Ok(token))) => {
                        self.state = State::Waiting { fd, token };
                        if let Some(d) = self.rare.as_mut().and_then(|r| r.deadline.as_mut()) {
                            // Woken at the deadline to give up (if the descriptor is not
                            // ready first). Not outside a loop: nothing parks this driver then.
                            if context::is_entered() {
                                d.timer.arm(d.at, cx);
                            }
                        }
                        if waiter.is_none() {
                            self.started = driver.op_submitted();
                        }
                        note_waiting(&**data, waiter.is_none());
                        Poll::Pending
                    }
                    Some(Some(Err(e))) => Poll::Ready(self.finish(driver, Err(e), 0)),
                }
            }
            done => {
                release_waiter(driver, waiter);
                Poll::Ready(self.finish(driver, done, 0))
            }
        }
    }
}

/// epoll: counts the attempt an op just made and removes its waiter, if it has one (now, or
/// at the driver's next borrow).
#[inline]
fn release_waiter(driver: &DriverHandle, waiter: Option<(RawFd, u64)>) {
    match waiter {
        Some((fd, token)) => driver.now_or_later(
            |d| {
                d.count_attempt();
                d.epoll_unwait(fd, token)
            },
            || Deferred::Unwait(fd, token),
        ),
        None => {
            driver.try_with(|d| d.count_attempt());
        }
    }
}

impl<T: OpKind> Future for Op<T> {
    type Output = T::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T::Output> {
        let this = self.get_mut();
        // The thread's runtime is looked up once, at the first poll; from then on the op talks
        // to that driver only.
        let driver = match this.driver.take() {
            Some(d) => d,
            None => DriverHandle::current().unwrap_or_else(|| panic!("{}", context::NO_RUNTIME)),
        };
        let r = match driver.backend() {
            Backend::IoUring => this.poll_uring(&driver, cx),
            _ => this.poll_epoll(&driver, cx),
        };
        this.driver = Some(driver);
        r
    }
}

impl<T: OpKind> Drop for Op<T> {
    fn drop(&mut self) {
        let Some(driver) = self.driver.take() else {
            return; // never polled: nothing reached a driver
        };
        let state = std::mem::replace(&mut self.state, State::Done);
        if matches!(state, State::InFlight(_) | State::Waiting { .. }) {
            driver.op_dropped(OpName::<T>::NAME);
        }
        match state {
            State::InFlight(key) => {
                if let Some(data) = self.data.take() {
                    // To the driver that holds the SQE, now or (if it is borrowed: this drop
                    // runs inside it) at its next borrow; never freed here. Finishing an
                    // orphan whose completion already came waits for the loop's next pass.
                    driver.defer(Deferred::Orphan(key, data));
                    // An op whose completion already came is finished at once (an accepted
                    // socket closed now, not a loop iteration later); if the driver is busy,
                    // the loop does it.
                    driver.finish_orphans();
                }
            }
            State::Waiting { fd, token } => driver.defer(Deferred::Unwait(fd, token)),
            _ => {}
        }
    }
}

/// What [`start_detached`] did with an op.
#[derive(Debug)]
pub enum Detached<O> {
    /// It is done already, and [`OpKind::complete`] has run: this is what it returned. The op
    /// was tried as a plain system call first and did not have to wait (see
    /// [`OpKind::try_first`]), or the kernel refused it, or its runtime was dropped.
    Done(O),
    /// It is in the kernel; when its completion comes, the loop calls [`OpKind::complete`].
    Running(DetachedOp),
}

/// An op started with [`start_detached`] and still in the kernel when that returned: a handle
/// to cancel it by. Dropping the handle leaves the op running.
pub struct DetachedOp {
    key: OpKey,
    driver: DriverHandle,
}

impl DetachedOp {
    /// Asks the kernel to stop the op (`ASYNC_CANCEL`). Its completion still comes, with
    /// `ECANCELED` or with what the op did before the cancel reached it, and is finished as
    /// usual. Does nothing once the op has completed.
    pub fn cancel(&self) {
        let key = self.key;
        self.driver
            .now_or_later(|d| d.uring_cancel(key), || Deferred::Cancel(key));
    }
}

impl fmt::Debug for DetachedOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DetachedOp").finish_non_exhaustive()
    }
}

/// Starts `kind` on the running runtime with nobody to await it: when its completion comes,
/// the loop calls [`OpKind::complete`] (outside the driver, with a panic caught and handed to
/// the exception handler, as for an op whose future was dropped) and drops what it returns.
/// For op kinds whose completion is their whole effect, which it then costs no task wake and
/// no poll to reach: a protocol transport's send settles its connection's write buffer from
/// `complete`.
///
/// The op's data lives in the driver's op table from its submission to its completion, as an
/// orphaned op's does, so nothing the caller does can free memory the kernel uses. As for an
/// [`Op`], the op is first tried as a plain system call when the ring is nearly idle (see
/// [`OpKind::try_first`]). If it did not have to wait, or the kernel refused it, or the runtime
/// was dropped, `complete` runs before this returns and its output comes back in
/// [`Detached::Done`]. A detached op is not a cancellation point: it never sees its task's
/// cancellation (cancel it through its [`DetachedOp`]).
///
/// # Errors
/// `kind` itself, not started, on the epoll backend (which retries an op when its descriptor
/// is ready, and that takes a future), and when the driver is busy (this was called from
/// inside it, by a waker that polls inline): run it as an [`Op`] instead.
///
/// # Panics
/// Outside a running ringloop runtime.
pub fn start_detached<T: OpKind>(kind: T) -> Result<Detached<T::Output>, T> {
    let driver = DriverHandle::current().unwrap_or_else(|| panic!("{}", context::NO_RUNTIME));
    if driver.backend() != Backend::IoUring || driver.is_busy() {
        return Err(kind);
    }
    if driver.is_closed() {
        return Ok(Detached::Done(kind.complete(Err(shut_down()), 0)));
    }
    let mut data = driver.boxed(kind);
    if data.try_first() && driver.try_with(|d| d.may_try_first()) == Some(true) {
        // Outside the borrow: `attempt` is the op kind's code.
        let done = data.attempt();
        driver.try_with(|d| d.count_attempt());
        match done {
            Err(e) if is_would_block(&e) => {}
            done => return Ok(Detached::Done(driver.unboxed(data).complete(done, 0))),
        }
    }
    // Built outside the borrow: `sqe` is the op kind's code (which cannot leave the driver
    // borrowed: the submission below finds it free).
    let sqe = data.sqe();
    let mut data: Option<Box<dyn Orphan>> = Some(data);
    let submitted = driver.try_with(|d| {
        let data = data.take().expect("the op's data, once");
        // SAFETY: `OpKind`'s contract: the entry's pointers and descriptors are owned by
        // `data`, which is boxed (never moves) and goes into this driver's op table with the
        // entry, which keeps it until the op's completion (or leaks it, if the kernel may
        // still hold the op when the ring goes).
        unsafe { d.uring_submit_detached(sqe, data) }
    });
    let (e, data) = match submitted {
        Some(Ok(key)) => return Ok(Detached::Running(DetachedOp { key, driver })),
        Some(Err(failed)) => failed,
        // Cannot happen (checked above): the closure did not run.
        None => (
            io::Error::from(io::ErrorKind::ResourceBusy),
            data.take().expect("not submitted"),
        ),
    };
    // Not in the ring: the data is ours again.
    let data = data
        .into_any()
        .downcast::<T>()
        .unwrap_or_else(|_| unreachable!("the op's own data comes back"));
    Ok(Detached::Done(driver.unboxed(data).complete(Err(e), 0)))
}
