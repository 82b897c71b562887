//! Tasks: spawned futures with asyncio's semantics.
//!
//! [`spawn`] (asyncio's `create_task`) schedules a future to run concurrently and returns a
//! [`Task<T>`], which is itself a future resolving to `Result<T, TaskError>`.
//!
//! # Cancellation
//!
//! * [`Task::cancel`] delivers a request at the task's current suspension point, at once: a task
//!   sleeping for an hour is woken now. The runtime future it is suspended on resolves to
//!   `Err(`[`Cancelled`]`)`; see that type for what the task may do next.
//! * A task suspended on a future that knows nothing of ringloop cannot observe the request:
//!   the runtime drops that future instead and the task ends cancelled (Rust's own cancel).
//!   A task cancelled before it ever ran is dropped without being polled, as asyncio never starts
//!   a coroutine cancelled before its first step.
//! * Cancellation follows the await chain: a task cancelled while awaiting another [`Task`]
//!   cancels that task too, and then waits for it to end (asyncio forwards `cancel()` to the
//!   future it waits on). [`shield`](crate::shield) stops that propagation.
//! * A runtime future that is already complete when the request arrives still yields its value
//!   (nothing is lost); the request stays pending for the next await.
//! * Dropping a [`Task`] handle detaches the task: it runs on (asyncio's tasks run whether or not
//!   anyone holds them). [`Task::abort`] is the hard cancel: the future is dropped at the next
//!   scheduling point without being polled again.
//!
//! ## Concurrent branches of one task
//!
//! An asyncio task is suspended at exactly one await; a Rust task may poll several runtime
//! futures in one poll (a hand-written join, `futures::join!`, a select). A request is
//! therefore delivered to **every runtime future that was already waiting** and is polled in
//! the task poll in which the request is taken, not only to the first one:
//!
//! * the first runtime future that checks takes the request (as before) and resolves to
//!   `Err(Cancelled)`;
//! * later in the same task poll, every other runtime future that was *already waiting* (it
//!   returned `Pending` before and has not resolved since: a registered sleep, lock, queue get,
//!   awaited [`Task`], ...) resolves to `Err(Cancelled)` as well; an awaited task gets the
//!   request forwarded, once;
//! * a future that *starts* waiting after the delivery (cleanup code in a branch that caught
//!   its `Cancelled`) is not hit: cleanup can still await;
//! * the delivery ends with the task poll, and [`TaskRef::uncancel`] down to zero withdraws it
//!   for the rest of the poll too. A [`timeout`](crate::timeout)'s own scoped request reaches
//!   only the futures inside it, never the branches beside it.
//!
//! So `timeout(d, join(sleep(a), sleep(b)))` ends with `TimedOut`, and a task awaiting a join of
//! two sleeps sees `Cancelled` in both branches when it is cancelled. A combinator that polls
//! only the branches that were woken (as `FuturesUnordered` does) polls none of them on a cancel
//! and falls under the foreign-future rule instead: it is dropped. A custom future built on
//! [`take_cancel_request`](crate::take_cancel_request) sees the request only when it is the
//! first to check; use [`take_cancel_request_waiting`] in a future that is already waiting.

pub(crate) mod awaiting;
pub(crate) mod cancel;
pub(crate) mod cell;
pub(crate) mod sched;
pub(crate) mod tree;

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::num::NonZeroU64;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pub use awaiting::{note_awaiting, note_awaiting_io, AwaitName, Awaiting};
pub use cancel::Cancelled;
// Spawning and listing tasks are the running loop's business (its registry); their public
// paths stay here, beside `Task`.
pub use crate::runtime::{all_tasks, spawn, spawn_named, task_tree};
pub(crate) use cell::TaskPtr;
use cell::{Outcome, TaskJoin};
pub(crate) use sched::{Remote, Schedule};
pub use tree::{TaskNode, TaskTree};

use crate::context;

/// A task's id: unique in the process, never reused. Default task names are `Task-<id>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct TaskId(pub(crate) NonZeroU64);

impl TaskId {
    /// The id as a number.
    pub fn as_u64(self) -> u64 {
        self.0.get()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a task is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Suspended, waiting to be woken.
    Pending,
    /// Woken and waiting in the ready queue.
    Scheduled,
    /// Being polled right now (it is the current task).
    Running,
    /// Returned a value.
    Finished,
    /// Ended by cancellation.
    Cancelled,
    /// Panicked.
    Panicked,
}

impl TaskState {
    /// Whether the task has ended (finished, cancelled or panicked).
    pub fn is_done(self) -> bool {
        matches!(
            self,
            TaskState::Finished | TaskState::Cancelled | TaskState::Panicked
        )
    }

    /// The state's name as in the JSON dumps: `pending`, `scheduled`, `running`, `finished`,
    /// `cancelled` or `panicked`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Scheduled => "scheduled",
            TaskState::Running => "running",
            TaskState::Finished => "finished",
            TaskState::Cancelled => "cancelled",
            TaskState::Panicked => "panicked",
        }
    }
}

/// Why a task produced no value: it was cancelled, or it panicked.
pub enum TaskError {
    /// The task ended by cancellation (asyncio's `CancelledError`).
    Cancelled(Cancelled),
    /// The task panicked; the payload is what `panic!` was given.
    Panicked(Box<dyn Any + Send>),
}

impl TaskError {
    /// Whether the task was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, TaskError::Cancelled(_))
    }

    /// Whether the task panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self, TaskError::Panicked(_))
    }

    /// The cancel message, if the task was cancelled with one.
    pub fn cancel_message(&self) -> Option<&str> {
        match self {
            TaskError::Cancelled(c) => c.message(),
            TaskError::Panicked(_) => None,
        }
    }

    /// The panic message, if the task panicked with a string payload.
    pub fn panic_message(&self) -> Option<&str> {
        match self {
            TaskError::Panicked(p) => panic_message(&**p),
            TaskError::Cancelled(_) => None,
        }
    }

    /// The panic payload, to resume the panic with `std::panic::resume_unwind`.
    ///
    /// # Errors
    /// Gives `self` back when the task was cancelled rather than panicked.
    pub fn try_into_panic(self) -> Result<Box<dyn Any + Send>, TaskError> {
        match self {
            TaskError::Panicked(p) => Ok(p),
            other => Err(other),
        }
    }
}

/// The message of a panic payload, when it is a string.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&'static str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}

impl fmt::Debug for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Cancelled(c) => f.debug_tuple("Cancelled").field(&c.message()).finish(),
            TaskError::Panicked(p) => f
                .debug_tuple("Panicked")
                .field(&panic_message(&**p).unwrap_or("<non-string payload>"))
                .finish(),
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Cancelled(c) => c.fmt(f),
            TaskError::Panicked(p) => match panic_message(&**p) {
                Some(m) => write!(f, "task panicked: {m}"),
                None => f.write_str("task panicked"),
            },
        }
    }
}

impl std::error::Error for TaskError {}

/// Compares by kind: two cancellations are equal when their messages are; two panics are equal
/// when their messages are (any two panics with non-string payloads are equal: a payload is a
/// `Box<dyn Any>` and cannot be compared itself). Meant for tests and `assert_eq!`.
impl PartialEq for TaskError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (TaskError::Cancelled(a), TaskError::Cancelled(b)) => a == b,
            (TaskError::Panicked(a), TaskError::Panicked(b)) => {
                panic_message(&**a) == panic_message(&**b)
            }
            _ => false,
        }
    }
}

impl Eq for TaskError {}

impl From<Cancelled> for TaskError {
    fn from(c: Cancelled) -> Self {
        TaskError::Cancelled(c)
    }
}

impl From<TaskError> for std::io::Error {
    /// Kind [`Other`](std::io::ErrorKind::Other): a cancellation carries its [`Cancelled`] (so
    /// it still counts as escaping), a panic its message.
    fn from(e: TaskError) -> Self {
        match e {
            TaskError::Cancelled(c) => c.into(),
            panicked => std::io::Error::other(panicked.to_string()),
        }
    }
}

/// An untyped reference to a task: what [`current_task`], [`all_tasks`] and done callbacks give.
///
/// It can inspect and cancel the task but not take its output. Cheap to clone.
#[derive(Clone)]
pub struct TaskRef {
    ptr: TaskPtr,
}

impl TaskRef {
    pub(crate) fn new(ptr: TaskPtr) -> Self {
        TaskRef { ptr }
    }

    pub(crate) fn ptr(&self) -> &TaskPtr {
        &self.ptr
    }

    /// The task's id.
    pub fn id(&self) -> TaskId {
        self.ptr.header().id
    }

    /// The id of the task that spawned this one, if it was spawned from a task.
    pub fn parent_id(&self) -> Option<TaskId> {
        self.ptr.header().parent
    }

    /// The task's name (`Task-<id>` unless one was given).
    pub fn name(&self) -> String {
        self.ptr.header().name()
    }

    /// Renames the task (asyncio's `set_name`).
    pub fn set_name(&self, name: impl Into<String>) {
        self.ptr.header().set_name(name.into().into());
    }

    /// Where the task is in its life.
    pub fn state(&self) -> TaskState {
        self.ptr.header().state()
    }

    /// Whether the task has ended (finished, cancelled or panicked).
    pub fn is_done(&self) -> bool {
        self.ptr.header().is_done()
    }

    /// What the task is suspended on: the runtime leaf its last poll ended at (an op, a sleep,
    /// a lock, another task, ..., or [`Awaiting::Foreign`]). `None` while it has not been
    /// polled yet, while it is being polled, and once it is done. A task woken and not yet
    /// polled again ([`TaskState::Scheduled`]) still shows what it waited on.
    pub fn awaiting(&self) -> Option<Awaiting> {
        let h = self.ptr.header();
        if h.is_done() || h.state() == TaskState::Running {
            return None;
        }
        h.leaf().awaiting()
    }

    /// How long the task has been waiting on [`awaiting`](Self::awaiting), to the millisecond
    /// (the wait's start is read from the loop's clock once per loop iteration); `None` when
    /// `awaiting` is.
    pub fn waited(&self) -> Option<Duration> {
        self.awaiting()?;
        Some(awaiting::waited_since(
            self.ptr.header().wait_since(),
            Instant::now(),
        ))
    }

    /// How many times the task's future has been polled (saturating at `u32::MAX`).
    pub fn polls(&self) -> u64 {
        u64::from(self.ptr.header().polls())
    }

    /// Whether the task ended by cancellation.
    pub fn is_cancelled(&self) -> bool {
        self.ptr.header().outcome() == Outcome::Cancelled
    }

    /// Requests cancellation; see the [module docs](self). Returns false if the task is done.
    pub fn cancel(&self) -> bool {
        self.cancel_inner(None)
    }

    /// Requests cancellation with a message the task sees in [`Cancelled::message`].
    pub fn cancel_with(&self, message: impl Into<String>) -> bool {
        self.cancel_inner(Some(Arc::from(message.into())))
    }

    pub(crate) fn cancel_inner(&self, message: Option<Arc<str>>) -> bool {
        if !self.ptr.header().request_cancel(message) {
            return false;
        }
        cell::schedule_local(&self.ptr);
        true
    }

    /// Hard cancel: the future is dropped at the next scheduling point, without being polled
    /// again and without a chance to clean up asynchronously (its destructors still run).
    /// Returns false if the task is done (or is the main future of `block_on`, which is never
    /// dropped).
    pub fn abort(&self) -> bool {
        if !self.ptr.header().set_abort() {
            return false;
        }
        cell::schedule_local(&self.ptr);
        true
    }

    /// asyncio's `cancelling()`: the cancel requests made and not withdrawn by `uncancel`.
    pub fn cancelling(&self) -> u32 {
        self.ptr.header().cancelling()
    }

    /// asyncio's `uncancel()`: withdraws one cancel request; returns how many remain. When none
    /// remains, a request not yet delivered is dropped.
    pub fn uncancel(&self) -> u32 {
        self.ptr.header().uncancel()
    }

    /// Calls `f` with this task once it is done; scheduled with `call_soon`, never inline. A
    /// callback added to a task already done is scheduled at once.
    pub fn add_done_callback(&self, f: impl FnOnce(&TaskRef) + 'static) {
        if self.is_done() {
            let task = self.clone();
            context::with_scheduler(|sched| sched.call_soon(Box::new(move || f(&task))));
        } else {
            self.ptr.header().add_done_callback(Box::new(f));
        }
    }
}

impl PartialEq for TaskRef {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id()
    }
}

impl Eq for TaskRef {}

impl fmt::Debug for TaskRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskRef")
            .field("id", &self.id())
            .field("name", &self.name())
            .field("state", &self.state())
            .finish()
    }
}

/// A handle to a spawned task, and a future for its result (asyncio's `Task`).
///
/// Awaiting it yields `Ok(output)`, or `Err(TaskError)` if the task was cancelled or panicked.
/// Awaiting is itself a cancellation point that follows the await chain: if the awaiting task is
/// cancelled, this task is cancelled too, and the await then yields whatever it ends with.
///
/// Dropping the handle detaches the task; it runs on.
///
/// ```
/// use ringloop_runtime::{Runtime, spawn_named, TaskState};
///
/// Runtime::new().unwrap().block_on(async {
///     let task = spawn_named("worker", async { 7 });
///     assert_eq!(task.name(), "worker");
///     assert_eq!(task.await.unwrap(), 7);
/// });
/// ```
pub struct Task<T> {
    raw: Arc<dyn TaskJoin<T>>,
    task: TaskRef,
    /// Where an await on this handle stands (see "Concurrent branches" in the module docs).
    waiting: Waiting,
    _not_send: PhantomData<*const ()>,
}

impl<T> Task<T> {
    pub(crate) fn from_raw(raw: Arc<dyn TaskJoin<T>>, ptr: TaskPtr) -> Self {
        Task {
            raw,
            task: TaskRef::new(ptr),
            waiting: Waiting::No,
            _not_send: PhantomData,
        }
    }

    /// The untyped reference to this task.
    // An inherent method rather than `AsRef<TaskRef>`: it is the name callers already use, and
    // a trait impl would make `task.as_ref()` ambiguous wherever other `AsRef` impls are in scope.
    #[allow(clippy::should_implement_trait)]
    pub fn as_ref(&self) -> &TaskRef {
        &self.task
    }

    /// The task's id.
    pub fn id(&self) -> TaskId {
        self.task.id()
    }

    /// The task's name.
    pub fn name(&self) -> String {
        self.task.name()
    }

    /// Where the task is in its life.
    pub fn state(&self) -> TaskState {
        self.task.state()
    }

    /// Whether the task has ended.
    pub fn is_done(&self) -> bool {
        self.task.is_done()
    }

    /// Whether the task ended by cancellation.
    pub fn is_cancelled(&self) -> bool {
        self.task.is_cancelled()
    }

    /// Requests cancellation; false if the task is already done. See [`TaskRef::cancel`].
    pub fn cancel(&self) -> bool {
        self.task.cancel()
    }

    /// Requests cancellation with a message. See [`TaskRef::cancel_with`].
    pub fn cancel_with(&self, message: impl Into<String>) -> bool {
        self.task.cancel_with(message)
    }

    /// Hard cancel; see [`TaskRef::abort`].
    pub fn abort(&self) -> bool {
        self.task.abort()
    }

    /// Schedules `f` once the task is done; see [`TaskRef::add_done_callback`].
    pub fn add_done_callback(&self, f: impl FnOnce(&TaskRef) + 'static) {
        self.task.add_done_callback(f)
    }

    /// The result if the task is done and it has not been taken yet (asyncio's `result()`
    /// without the raise); `None` while it runs.
    pub fn try_result(&mut self) -> Option<Result<T, TaskError>> {
        let h = self.task.ptr.header();
        match h.outcome() {
            Outcome::Pending => None,
            Outcome::Finished => self.raw.take_output().map(Ok),
            _ => Some(Err(cell::error_of(h))),
        }
    }

    /// Wraps the handle so that awaiting it does not forward cancellation; see
    /// [`shield`](crate::shield).
    pub fn shield(self) -> crate::Shielded<T> {
        crate::combinators::shield_task(self)
    }
}

/// Where an await on a [`Task`] handle stands, for cancel delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waiting {
    /// Not waiting: the next poll is the first of a new await.
    No,
    /// Waiting on the task since an earlier poll.
    Yes,
    /// Waiting, and a cancel request of the awaiting task was already forwarded.
    Forwarded,
}

impl<T> Future for Task<T> {
    type Output = Result<T, TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(result) = self.try_result() {
            self.waiting = Waiting::No;
            return Poll::Ready(result);
        }
        if self.task.ptr.header().is_done() {
            panic!("Task polled after its result was taken");
        }
        // Cancellation follows the await chain: a request on the awaiting task is consumed here
        // and forwarded to the awaited one; its outcome then decides what this await yields.
        let waiting = self.waiting;
        let forward = context::with_current(|cur| match cur {
            Some(cur) if !Arc::ptr_eq(cur, &self.task.ptr) => {
                let h = cur.header();
                match waiting {
                    Waiting::Yes => h.take_cancel_waiting(),
                    // A request already forwarded reaches the awaited task once; only a new
                    // one (pending) is forwarded again.
                    Waiting::No | Waiting::Forwarded => h.take_cancel(),
                }
            }
            _ => None,
        });
        if let Some(c) = forward {
            self.task.cancel_inner(c.message_arc());
            self.waiting = Waiting::Forwarded;
        } else if self.waiting == Waiting::No {
            self.waiting = Waiting::Yes;
        }
        let h = self.task.ptr.header();
        h.set_join_waker(cx.waker());
        awaiting::note(awaiting::Leaf::task(h.id), waiting == Waiting::No);
        Poll::Pending
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        let h = self.task.ptr.header();
        h.set_detached();
        if h.is_done() {
            self.raw.drop_output();
        }
    }
}

impl<T> fmt::Debug for Task<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("id", &self.id())
            .field("name", &self.name())
            .field("state", &self.state())
            .finish()
    }
}

/// Like [`take_cancel_request`](crate::take_cancel_request), for a custom future that is
/// already waiting (it returned `Pending` before and has not resolved since): it also resolves
/// to `Cancelled` when the request was delivered to another future earlier in this task poll,
/// so every concurrent branch of the task sees it (see the [module docs](self)). A future that
/// starts waiting now must use `take_cancel_request`, so cleanup code can still await. Returns
/// `None` outside a task.
pub fn take_cancel_request_waiting() -> Option<Cancelled> {
    crate::task::cancel::take_cancel_waiting()
}

/// Identifies the task poll running on this thread: `None` outside a task poll (in a
/// callback, or outside the runtime), else a number that no other task poll on this thread
/// has had or will have. It stays the same until the poll returns, unless another task is
/// polled inside this one (a waker that polls inline), after which it is a new number.
///
/// For a custom future that wants to skip work it knows to be useless: a future that returned
/// `Pending` after registering `cx`'s waker, and that is polled again *in the same task poll*
/// (`poll_id` unchanged) *with the same waker*, knows that whatever it registered for has
/// either not happened yet or has woken the task again, so the task will be polled anew
/// either way; it may return `Pending` again without asking its source. It must still deliver
/// a pending cancellation ([`take_cancel_request`](crate::take_cancel_request)) and record
/// what it awaits ([`note_awaiting_io`]), as any `Pending` does.
///
/// ```
/// ringloop_runtime::Runtime::new().unwrap().block_on(async {
///     let here = ringloop_runtime::poll_id();
///     assert!(here.is_some());
///     assert_eq!(ringloop_runtime::poll_id(), here); // the same poll
///     ringloop_runtime::yield_now().await.unwrap();
///     assert_ne!(ringloop_runtime::poll_id(), here); // a later one
/// });
/// ```
#[inline]
pub fn poll_id() -> Option<u64> {
    context::poll_id()
}

/// The task being polled right now, or `None` in a callback.
///
/// # Panics
/// Outside a running ringloop runtime.
#[track_caller]
pub fn current_task() -> Option<TaskRef> {
    context::expect_entered();
    context::with_current(|t| t.map(|t| TaskRef::new(t.clone())))
}
