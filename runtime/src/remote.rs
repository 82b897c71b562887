//! Running a future on a runtime from another thread: [`Handle::spawn`] and the [`RemoteTask`]
//! it returns (asyncio's `run_coroutine_threadsafe` and the `concurrent.futures.Future` it
//! gives back).
//!
//! A runtime's tasks may be `!Send`, so a future cannot be moved to its thread. What crosses
//! is a `Send` *closure* that builds the future there: [`Handle::spawn`] queues the closure on
//! the runtime's injector (as [`Handle::call_soon_threadsafe`] does), the loop calls it and
//! spawns the future as an ordinary task of its own, and the task's outcome travels back
//! through a small shared slot to the [`RemoteTask`]. That handle is `Send` and can be
//!
//! * awaited from a task of any runtime (or any executor), as a cancellation point that
//!   forwards a cancel of the awaiting task to the remote task, as awaiting a [`Task`] does;
//! * waited on from a plain thread, without or with a timeout ([`RemoteTask::wait`],
//!   [`RemoteTask::wait_timeout`]);
//! * cancelled from anywhere ([`RemoteTask::cancel`]).
//!
//! ```
//! use ringloop_runtime::{sleep, LoopThread};
//! use std::rc::Rc;
//! use std::time::Duration;
//!
//! let lt = LoopThread::start().unwrap();
//! // The closure is `Send`; the future it builds on the loop need not be (an `Rc` here).
//! let task = lt.handle().spawn(|| async {
//!     let shared = Rc::new(20);
//!     sleep(Duration::from_millis(1)).await.unwrap();
//!     *shared + 22
//! });
//! assert_eq!(task.wait().unwrap(), 42);
//! lt.stop().unwrap();
//! ```
//!
//! # The wake path
//!
//! The slot is a `Mutex` and a `Condvar`. The loop fills it once, from the task's done callback,
//! and then wakes whoever waits: the `Waker` of an awaiting future (a ringloop waker moves the
//! wake to its own loop through that loop's injector) and every thread blocked on the condvar.
//! A waiter checks and registers under the same lock the loop fills it under, so a result is
//! either seen at once or wakes the waiter: no wake is lost. A cancel request from another
//! thread goes the other way: it is recorded in the slot and wakes the remote task through the
//! waker the task left there when it last suspended; the task, when polled, turns it into an
//! ordinary cancel request on itself.
//!
//! # The result always comes
//!
//! The slot is filled exactly once on every path: by the task's done callback (the task
//! finished, was cancelled or panicked), by the closure failing (its panic), or, when the
//! runtime drops the closure or the callback without running it (the runtime was dropped
//! first), by their destructors, with [`RemoteError::Closed`] or the task's outcome. So a waiter
//! never hangs on a runtime that is gone. A runtime that was only *stopped* may run again, so a
//! task on it stays pending until then; [`LoopThread`](crate::LoopThread) drops its runtime when
//! it stops.

use std::any::Any;
use std::error::Error;
use std::fmt;
use std::future::Future;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::pin::{pin, Pin};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::context;
use crate::runtime::{Handle, Shared};
use crate::task::awaiting::{self, Leaf};
use crate::task::{panic_message, Cancelled, Task, TaskError, TaskRef};

impl Handle {
    /// Runs a future on this handle's runtime, from any thread: asyncio's
    /// `run_coroutine_threadsafe(coro, loop)`.
    ///
    /// `make` is called on the runtime's thread, in the next loop iteration, and the future it
    /// returns is spawned there as an ordinary task (so it may be `!Send`: it never leaves that
    /// thread). Only `make` and the output cross threads. The returned [`RemoteTask`] gives the
    /// output back: await it from any task or executor, or [`wait`](RemoteTask::wait) for it
    /// from a plain thread.
    ///
    /// If the runtime is dropped before `make` runs, `make` is dropped without being called and
    /// the `RemoteTask` resolves to [`RemoteError::Closed`]. If `make` panics, the panic is
    /// reported to the runtime's exception handler and the `RemoteTask` resolves to
    /// [`RemoteError::Panicked`]; so does a panic of the task.
    ///
    /// ```
    /// use ringloop_runtime::Runtime;
    ///
    /// let rt = Runtime::new().unwrap();
    /// let handle = rt.handle();
    /// // A plain thread asks the loop for work and blocks until it is done.
    /// let asker = std::thread::spawn(move || {
    ///     let answer = handle.spawn(|| async { 6 * 7 }).wait().unwrap();
    ///     handle.stop();
    ///     answer
    /// });
    /// rt.run_forever().unwrap();
    /// assert_eq!(asker.join().unwrap(), 42);
    /// ```
    pub fn spawn<F, Fut>(&self, make: F) -> RemoteTask<Fut::Output>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + 'static,
        Fut::Output: Send + 'static,
    {
        let link = Arc::new(Link::new());
        let unrun = Unrun(Some(link.clone()));
        // If the runtime is gone, the closure (and `unrun` with it) is dropped right here, which
        // fills the slot with `Closed`; if it is dropped later with the injector, the same.
        self.call_soon_threadsafe(move || start(unrun, make));
        RemoteTask {
            link,
            runtime: Arc::downgrade(self.shared()),
            waiting: Waiting::No,
        }
    }
}

/// Locks `m`, ignoring poisoning: every critical section here only moves values in and out and
/// cannot panic half-way, so a poisoned lock still holds consistent state.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// The shared slot
// ---------------------------------------------------------------------------------------------

/// The slot between the remote task and its [`RemoteTask`].
struct Link<T> {
    state: Mutex<LinkState<T>>,
    /// Threads blocked in `wait`/`wait_timeout` sleep here until the outcome arrives.
    done: Condvar,
}

/// Everything under [`Link::state`].
struct LinkState<T> {
    outcome: Outcome<T>,
    /// The future awaiting the outcome ([`RemoteTask`]'s `poll`), woken when it arrives.
    waiter: Option<Waker>,
    /// Cancel requests made from outside the loop ([`RemoteTask::cancel`], or a cancel of an
    /// awaiting task forwarded here). The remote task remembers how many it has acted on, so
    /// each is turned into a request on the task once.
    cancel_requests: u64,
    /// The message of the latest request that had one.
    cancel_message: Option<Arc<str>>,
    /// The remote task's waker, left by its latest poll, so that a cancel request from another
    /// thread gets the task polled.
    task_waker: Option<Waker>,
    /// The [`RemoteTask`] is gone: an outcome that arrives is dropped at once.
    detached: bool,
}

/// Where the remote task's outcome is.
enum Outcome<T> {
    /// Not there yet.
    Pending,
    /// There, waiting to be taken.
    Ready(Result<T, RemoteError>),
    /// Taken by the `RemoteTask`.
    Taken,
}

impl<T> Link<T> {
    fn new() -> Self {
        Link {
            state: Mutex::new(LinkState {
                outcome: Outcome::Pending,
                waiter: None,
                cancel_requests: 0,
                cancel_message: None,
                task_waker: None,
                detached: false,
            }),
            done: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LinkState<T>> {
        lock(&self.state)
    }

    /// Fills the slot (once; a second outcome is dropped) and wakes every waiter.
    fn deliver(&self, outcome: Result<T, RemoteError>) {
        let (waiter, task_waker, unwanted) = {
            let mut st = self.lock();
            let unwanted = if st.detached || !matches!(st.outcome, Outcome::Pending) {
                Some(outcome)
            } else {
                st.outcome = Outcome::Ready(outcome);
                None
            };
            (st.waiter.take(), st.task_waker.take(), unwanted)
        };
        self.done.notify_all();
        // Outside the lock: a value's destructor and a waker are code of others, which may
        // touch this slot again.
        drop(unwanted);
        drop(task_waker);
        if let Some(w) = waiter {
            w.wake();
        }
    }

    /// Records a cancel request from outside the loop and wakes the remote task to act on it.
    /// False if the outcome is already in.
    fn request_cancel(&self, message: Option<Arc<str>>) -> bool {
        let task_waker = {
            let mut st = self.lock();
            if !matches!(st.outcome, Outcome::Pending) {
                return false;
            }
            st.cancel_requests += 1;
            if message.is_some() {
                st.cancel_message = message;
            }
            st.task_waker.take()
        };
        if let Some(w) = task_waker {
            w.wake();
        }
        true
    }
}

// ---------------------------------------------------------------------------------------------
// The loop side
// ---------------------------------------------------------------------------------------------

/// Owned by the closure queued on the injector. Dropped without being disarmed (the runtime
/// was gone, or dropped the closure unrun), it fills the slot with [`RemoteError::Closed`].
struct Unrun<T>(Option<Arc<Link<T>>>);

impl<T> Unrun<T> {
    fn disarm(mut self) -> Arc<Link<T>> {
        self.0.take().expect("an Unrun is disarmed once")
    }
}

impl<T> Drop for Unrun<T> {
    fn drop(&mut self) {
        if let Some(link) = self.0.take() {
            link.deliver(Err(RemoteError::Closed));
        }
    }
}

/// Owned by the remote task's done callback: fills the slot with the task's outcome when the
/// callback runs, and also when the runtime drops the callback without running it (at its
/// teardown), so the outcome is never lost.
struct Finished<T> {
    link: Arc<Link<T>>,
    task: Task<T>,
}

impl<T> Drop for Finished<T> {
    fn drop(&mut self) {
        let outcome = match self.task.try_result() {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(e.into()),
            // Not done: only a task the teardown could not end (it was being polled further up
            // the stack); its runtime is gone all the same.
            None => Err(RemoteError::Closed),
        };
        self.link.deliver(outcome);
    }
}

/// The closure's work on the loop's thread: build the future and spawn it.
fn start<F, Fut>(unrun: Unrun<Fut::Output>, make: F)
where
    F: FnOnce() -> Fut,
    Fut: Future + 'static,
{
    let link = unrun.0.as_ref().expect("armed until here").clone();
    // Cancelled before it could start: asyncio never starts such a coroutine either.
    let pending_cancel = {
        let st = link.lock();
        (st.cancel_requests > 0).then(|| st.cancel_message.clone())
    };
    if let Some(message) = pending_cancel {
        drop(make);
        unrun
            .disarm()
            .deliver(Err(RemoteError::Cancelled(Cancelled::unbound(message))));
        return;
    }
    let future = match panic::catch_unwind(AssertUnwindSafe(make)) {
        Ok(future) => future,
        Err(payload) => {
            context::try_with_scheduler(|s| {
                s.report_panic(None, "the closure of a remote spawn panicked", &*payload)
            });
            unrun.disarm().deliver(Err(RemoteError::Panicked(payload)));
            return;
        }
    };
    let task = crate::spawn(relay(future, link));
    let task_ref = task.as_ref().clone();
    let finished = Finished {
        link: unrun.disarm(),
        task,
    };
    task_ref.add_done_callback(move |_| drop(finished));
}

/// The remote task's future: `future`, plus the relay of cancel requests made from other
/// threads.
async fn relay<F: Future, T>(future: F, link: Arc<Link<T>>) -> F::Output {
    let future = pin!(future);
    CancelRelay {
        future,
        link,
        seen: 0,
    }
    .await
}

/// Polls the remote future; before each poll, turns cancel requests recorded in the slot into
/// requests on this task (so the future sees them at its awaits, as any cancel), and leaves
/// the task's waker in the slot for the next request.
struct CancelRelay<'a, F, T> {
    future: Pin<&'a mut F>,
    link: Arc<Link<T>>,
    /// How many of the slot's requests this task has acted on.
    seen: u64,
}

impl<F: Future, T> Future for CancelRelay<'_, F, T> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        // The waker is left and the count read under one lock, so a request made on another
        // thread either is counted here or finds this waker and wakes the task again.
        let (request, old) = {
            let mut st = this.link.lock();
            let old = match &st.task_waker {
                Some(w) if w.will_wake(cx.waker()) => None,
                _ => st.task_waker.replace(cx.waker().clone()),
            };
            let request = (st.cancel_requests != this.seen).then(|| {
                this.seen = st.cancel_requests;
                st.cancel_message.clone()
            });
            (request, old)
        };
        drop(old);
        if let Some(message) = request {
            context::with_current(|me| {
                if let Some(me) = me {
                    TaskRef::new(me.clone()).cancel_inner(message);
                }
            });
        }
        this.future.as_mut().poll(cx)
    }
}

// ---------------------------------------------------------------------------------------------
// The handle
// ---------------------------------------------------------------------------------------------

/// A task running on another thread's runtime, started with [`Handle::spawn`]: asyncio's
/// `concurrent.futures.Future` from `run_coroutine_threadsafe`. `Send` and `Sync` when the
/// output is `Send`.
///
/// Get the output by
///
/// * awaiting it, from a task of any runtime (or any executor): it resolves to the output or
///   a [`RemoteError`]. From a ringloop task this is a cancellation point that follows the
///   await chain, as awaiting a [`Task`] is: a cancel of the awaiting task is forwarded to the
///   remote task, and the await then yields whatever the remote task ends with;
/// * [`wait`](Self::wait) (blocks until the task ends) or [`wait_timeout`](Self::wait_timeout)
///   (gives up with [`RemoteError::TimedOut`], leaving the task running) from a plain thread;
/// * [`try_result`](Self::try_result), without waiting.
///
/// [`cancel`](Self::cancel) requests a cancel from any thread. Dropping the handle detaches the
/// task, which runs on (as dropping a [`Task`] does).
///
/// # Where this differs from asyncio
///
/// `concurrent.futures.Future.cancel()` marks asyncio's future cancelled at once, whatever the
/// coroutine then does with its `CancelledError`. Here [`cancel`](Self::cancel) is a request
/// delivered to the task, exactly as [`Task::cancel`] is: the handle yields what the task ends
/// with, so a task that catches the cancellation and returns a value gives that value, and a
/// task that cleans up asynchronously is waited for.
///
/// ```
/// use ringloop_runtime::{sleep, LoopThread, RemoteError};
/// use std::time::Duration;
///
/// let lt = LoopThread::start().unwrap();
/// let mut slow = lt.spawn(|| async {
///     match sleep(Duration::from_secs(3600)).await {
///         Ok(()) => "slept",
///         Err(_cancelled) => "cancelled, cleaned up",
///     }
/// });
/// // Not done in 10 ms: the task runs on, and the handle can still be waited on or cancelled.
/// assert!(matches!(slow.wait_timeout(Duration::from_millis(10)), Err(RemoteError::TimedOut)));
/// slow.cancel();
/// assert_eq!(slow.wait().unwrap(), "cancelled, cleaned up");
/// lt.stop().unwrap();
/// ```
pub struct RemoteTask<T> {
    link: Arc<Link<T>>,
    /// The runtime the task runs on, to refuse a blocking wait on its own thread. Weak, so a
    /// handle does not keep a dropped runtime's wake descriptor open.
    runtime: Weak<Shared>,
    /// Where an await on this handle stands, for cancel forwarding (as in `Task`'s poll).
    waiting: Waiting,
}

/// Where an await on a [`RemoteTask`] stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waiting {
    /// Not waiting: the next poll starts a new await.
    No,
    /// Waiting since an earlier poll.
    Yes,
    /// Waiting, and a cancel of the awaiting task was already forwarded.
    Forwarded,
}

impl<T> RemoteTask<T> {
    /// Requests cancellation of the remote task, from any thread (asyncio's `future.cancel()`,
    /// as a request: see the [type docs](Self)). The task sees it at its current await, as a
    /// [`Task::cancel`] on its own loop; a task that has not started yet never starts. Returns
    /// false if the outcome is already in.
    pub fn cancel(&self) -> bool {
        self.link.request_cancel(None)
    }

    /// Like [`cancel`](Self::cancel), with a message the task sees in
    /// [`Cancelled::message`].
    pub fn cancel_with(&self, message: impl Into<String>) -> bool {
        self.link.request_cancel(Some(Arc::from(message.into())))
    }

    /// Whether the outcome is in (the task finished, was cancelled or panicked, or its runtime
    /// is gone), taken or not.
    pub fn is_done(&self) -> bool {
        !matches!(self.link.lock().outcome, Outcome::Pending)
    }

    /// The outcome if it is in and not yet taken; `None` otherwise. Never blocks.
    pub fn try_result(&mut self) -> Option<Result<T, RemoteError>> {
        let mut st = self.link.lock();
        match std::mem::replace(&mut st.outcome, Outcome::Taken) {
            Outcome::Ready(r) => Some(r),
            other => {
                st.outcome = other;
                None
            }
        }
    }

    /// Blocks the calling thread until the task ends, and returns its output
    /// (`future.result()`).
    ///
    /// # Errors
    /// [`RemoteError::Cancelled`], [`RemoteError::Panicked`] or [`RemoteError::Closed`] as the
    /// task ended; [`RemoteError::Taken`] if an earlier call took the outcome.
    ///
    /// # Panics
    /// When called on the thread of the runtime the task runs on while the task is not done:
    /// the loop could never run it, and the call would never return.
    #[track_caller]
    pub fn wait(mut self) -> Result<T, RemoteError> {
        self.wait_until(None)
    }

    /// Like [`wait`](Self::wait), but gives up after `timeout` with [`RemoteError::TimedOut`]
    /// (`future.result(timeout)`): the task runs on, and the handle can be waited on again or
    /// cancelled.
    ///
    /// # Errors
    /// As [`wait`](Self::wait), and [`RemoteError::TimedOut`].
    ///
    /// # Panics
    /// As [`wait`](Self::wait).
    #[track_caller]
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<T, RemoteError> {
        // A timeout too large for the clock waits without bound.
        self.wait_until(Instant::now().checked_add(timeout))
    }

    #[track_caller]
    fn wait_until(&mut self, deadline: Option<Instant>) -> Result<T, RemoteError> {
        let mut st = self.link.lock();
        if matches!(st.outcome, Outcome::Pending) && self.on_own_loop() {
            drop(st);
            panic!(
                "RemoteTask::wait called on the thread of the runtime the task runs on: the \
                 loop cannot run the task while this thread waits for it; await the task instead"
            );
        }
        loop {
            match std::mem::replace(&mut st.outcome, Outcome::Taken) {
                Outcome::Ready(r) => return r,
                Outcome::Taken => return Err(RemoteError::Taken),
                Outcome::Pending => st.outcome = Outcome::Pending,
            }
            // Called from a loop's thread (a task of another loop): the wakes that loop queued
            // on its ring go now; the end of the poll, which would send them, waits for this.
            crate::runtime::flush_wakes();
            st = match deadline {
                None => self
                    .link
                    .done
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(RemoteError::TimedOut);
                    }
                    self.link
                        .done
                        .wait_timeout(st, deadline - now)
                        .map(|(st, _)| st)
                        .unwrap_or_else(|e| e.into_inner().0)
                }
            };
        }
    }

    /// Whether this thread is running the runtime the task runs on.
    fn on_own_loop(&self) -> bool {
        let Some(runtime) = self.runtime.upgrade() else {
            return false;
        };
        crate::runtime::try_with_core(|core| Arc::ptr_eq(core.shared(), &runtime)).unwrap_or(false)
    }
}

impl<T> Future for RemoteTask<T> {
    type Output = Result<T, RemoteError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut st = this.link.lock();
        match std::mem::replace(&mut st.outcome, Outcome::Taken) {
            Outcome::Ready(r) => {
                drop(st);
                this.waiting = Waiting::No;
                return Poll::Ready(bind_to_current(r));
            }
            Outcome::Taken => return Poll::Ready(Err(RemoteError::Taken)),
            Outcome::Pending => st.outcome = Outcome::Pending,
        }
        // Registered under the lock the outcome is delivered under: it either came before (seen
        // above) or finds this waker.
        let old = match &st.waiter {
            Some(w) if w.will_wake(cx.waker()) => None,
            _ => st.waiter.replace(cx.waker().clone()),
        };
        drop(st);
        drop(old);
        // Cancellation follows the await chain, as for a local `Task`: a request on the awaiting
        // task is consumed here and forwarded; the remote task's outcome decides what this
        // await yields.
        let waiting = this.waiting;
        let forward = context::with_current(|cur| {
            let h = cur?.header();
            match waiting {
                Waiting::Yes => h.take_cancel_waiting(),
                // A forwarded request reaches the remote task once; only a new one goes again.
                Waiting::No | Waiting::Forwarded => h.take_cancel(),
            }
        });
        if let Some(c) = forward {
            this.link.request_cancel(c.message_arc());
            this.waiting = Waiting::Forwarded;
        } else if this.waiting == Waiting::No {
            this.waiting = Waiting::Yes;
        }
        awaiting::note(Leaf::REMOTE, waiting == Waiting::No);
        Poll::Pending
    }
}

/// A cancellation handed to a ringloop task is bound to it, as `Task`'s errors are: letting it
/// escape ends the awaiting task cancelled too, as in asyncio.
fn bind_to_current<T>(r: Result<T, RemoteError>) -> Result<T, RemoteError> {
    match r {
        Err(RemoteError::Cancelled(c)) => Err(RemoteError::Cancelled(context::with_current(
            |cur| match cur {
                Some(cur) => cur.header().deliver(c.message_arc()),
                None => c,
            },
        ))),
        other => other,
    }
}

impl<T> Drop for RemoteTask<T> {
    fn drop(&mut self) {
        let (outcome, waiter) = {
            let mut st = self.link.lock();
            st.detached = true;
            (
                std::mem::replace(&mut st.outcome, Outcome::Taken),
                st.waiter.take(),
            )
        };
        // Outside the lock: the output's destructor and the waker's are code of others.
        drop(outcome);
        drop(waiter);
    }
}

impl<T> fmt::Debug for RemoteTask<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.link.lock().outcome {
            Outcome::Pending => "pending",
            Outcome::Ready(_) => "done",
            Outcome::Taken => "taken",
        };
        f.debug_struct("RemoteTask").field("state", &state).finish()
    }
}

// ---------------------------------------------------------------------------------------------
// The error
// ---------------------------------------------------------------------------------------------

/// Why a [`RemoteTask`] produced no value.
pub enum RemoteError {
    /// The task ended by cancellation: [`RemoteTask::cancel`], a forwarded cancel of the task
    /// awaiting it, or the shutdown of its runtime (a [`LoopThread`](crate::LoopThread) that
    /// stops cancels every task).
    Cancelled(Cancelled),
    /// The task, or the closure that was to build it, panicked; the payload is what `panic!`
    /// was given. The panic was also reported to the runtime's exception handler.
    Panicked(Box<dyn Any + Send>),
    /// The runtime was dropped before the task could be spawned on it.
    Closed,
    /// [`RemoteTask::wait_timeout`] gave up; the task runs on.
    TimedOut,
    /// The outcome was already taken by an earlier wait, await or `try_result`.
    Taken,
}

impl RemoteError {
    /// Whether the task was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, RemoteError::Cancelled(_))
    }

    /// Whether the task panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self, RemoteError::Panicked(_))
    }

    /// The cancel message, if the task was cancelled with one.
    pub fn cancel_message(&self) -> Option<&str> {
        match self {
            RemoteError::Cancelled(c) => c.message(),
            _ => None,
        }
    }

    /// The panic message, if the task panicked with a string payload.
    pub fn panic_message(&self) -> Option<&str> {
        match self {
            RemoteError::Panicked(p) => panic_message(&**p),
            _ => None,
        }
    }
}

impl From<TaskError> for RemoteError {
    fn from(e: TaskError) -> Self {
        match e {
            TaskError::Cancelled(c) => RemoteError::Cancelled(c),
            TaskError::Panicked(p) => RemoteError::Panicked(p),
        }
    }
}

impl fmt::Debug for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteError::Cancelled(c) => f.debug_tuple("Cancelled").field(&c.message()).finish(),
            RemoteError::Panicked(p) => f
                .debug_tuple("Panicked")
                .field(&panic_message(&**p).unwrap_or("<non-string payload>"))
                .finish(),
            RemoteError::Closed => f.write_str("Closed"),
            RemoteError::TimedOut => f.write_str("TimedOut"),
            RemoteError::Taken => f.write_str("Taken"),
        }
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteError::Cancelled(c) => c.fmt(f),
            RemoteError::Panicked(p) => match panic_message(&**p) {
                Some(m) => write!(f, "remote task panicked: {m}"),
                None => f.write_str("remote task panicked"),
            },
            RemoteError::Closed => {
                f.write_str("the runtime was dropped before the remote task could start")
            }
            RemoteError::TimedOut => f.write_str("timed out waiting for the remote task"),
            RemoteError::Taken => f.write_str("the remote task's outcome was already taken"),
        }
    }
}

impl Error for RemoteError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            RemoteError::Cancelled(c) => Some(c),
            _ => None,
        }
    }
}

impl From<RemoteError> for io::Error {
    /// A cancellation converts as [`Cancelled`] does (so it still counts as escaping when a
    /// task returns it); `TimedOut` becomes [`TimedOut`](io::ErrorKind::TimedOut), `Closed`
    /// [`BrokenPipe`](io::ErrorKind::BrokenPipe), the rest [`Other`](io::ErrorKind::Other).
    fn from(e: RemoteError) -> io::Error {
        match e {
            RemoteError::Cancelled(c) => c.into(),
            RemoteError::TimedOut => io::Error::new(io::ErrorKind::TimedOut, e.to_string()),
            RemoteError::Closed => io::Error::new(io::ErrorKind::BrokenPipe, e.to_string()),
            other => io::Error::other(other.to_string()),
        }
    }
}
