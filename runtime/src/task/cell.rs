//! The task cell: one allocation holding the header and the future (later its output).
//!
//! # Life cycle
//!
//! ```text
//!  spawn ──▶ Running(F) ──poll Ready──▶ Finished(T) ──handle takes it──▶ Consumed
//!                │                                 └─handle already gone──▶ Consumed (dropped)
//!                ├──panic──────────────▶ Consumed (outcome Panicked, payload in extras)
//!                └──abort / cancel that
//!                   nothing observed ───▶ Consumed (outcome Cancelled)
//! ```
//!
//! # Who touches what, from which thread
//!
//! Only [`Header::state`] (an atomic) and the `Arc` counts are touched from other threads: a
//! `Waker` may be cloned to another thread and woken there. Everything else, the stage included,
//! is touched only on the runtime's own thread. That is what makes a `!Send` future sound here:
//!
//! * the future is polled only by [`TaskDyn::run`], called only by the owning loop (its
//!   [`Schedule`]);
//! * the future and the output are dropped only on the owner thread: the runtime's registry
//!   holds a reference while the future is alive and drops the future before releasing it, and
//!   the output lives only while the `Task` handle (which is `!Send`) does;
//! * so when the last reference is dropped on another thread (a stray waker), the cell holds
//!   no future, no output and no done callbacks: only `Send` data (a name, a waker, an `Arc`).

use std::any::Any;
use std::borrow::Cow;
use std::cell::{Cell, UnsafeCell};
use std::future::Future;
use std::mem::ManuallyDrop;
use std::num::NonZeroU64;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

use crate::context;
use crate::task::awaiting::{Leaf, LeafData, LeafKind};
use crate::task::sched::{Remote, Schedule};
use crate::task::{Cancelled, TaskError, TaskId, TaskRef, TaskState};

/// A type-erased, reference-counted task: what the ready queue, the injector and the registry
/// hold.
pub(crate) type TaskPtr = Arc<dyn TaskDyn>;

// ---- `Header::state` bits (atomic; the only per-task word other threads touch) ----

/// The task is in a ready queue or the injector; a wake that finds this bit set does nothing,
/// so a task is queued at most once. Set by a wake (any thread), cleared by the owner right
/// before it polls, so a wake during the poll queues the task again.
pub(crate) const SCHEDULED: u32 = 1 << 0;
/// The task has finished (outcome is not `Pending`); wakes are ignored. Set once by the owner.
pub(crate) const DONE: u32 = 1 << 1;

// ---- `Header::flags` bits (owner thread only) ----

/// The future has been polled at least once. A cancel that arrives before the first poll drops
/// the future unpolled, as asyncio never starts a coroutine cancelled before its first step.
const STARTED: u8 = 1 << 0;
/// A cancel request waits to be delivered at the next runtime await (asyncio's `_must_cancel`).
const CANCEL_PENDING: u8 = 1 << 1;
/// `abort()` was called: drop the future at the next scheduling point.
const ABORT: u8 = 1 << 2;
/// The `Task` handle is gone: the output is dropped as soon as it is produced.
const DETACHED: u8 = 1 << 3;
/// The future is being polled (guards against dropping it from inside its own poll).
const RUNNING: u8 = 1 << 4;
/// The main future of `block_on`: its output is handed back as is (no escape check), and it is
/// never dropped by a cancel fallback or an abort, because `block_on` must return its output.
const MAIN: u8 = 1 << 5;
/// A cancel request was delivered during the current poll of the task. Every runtime future
/// that was already waiting before that delivery and is polled later in the same task poll (a
/// concurrent branch of a hand-written join, say) resolves to `Cancelled` too; cleared when the
/// poll ends. See "Concurrent branches" in the `task` module docs.
const DELIVERED: u8 = 1 << 6;
/// A runtime future has just started the wait it recorded as the task's leaf (its first
/// `Pending`): the end of this poll stamps the wait's start. Cleared when the poll starts.
const WAIT_NEW: u8 = 1 << 7;

/// How a task ended (owner thread only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Pending,
    Finished,
    Cancelled,
    Panicked,
}

/// A callback added with `add_done_callback`, run (through `call_soon`) once the task ends.
pub(crate) type DoneCallback = Box<dyn FnOnce(&TaskRef)>;

/// Rarely needed per-task data, boxed so that a plain task pays 8 bytes for all of it.
#[derive(Default)]
pub(crate) struct Extras {
    /// A `Cow` so that a name known at compile time (`"main"`, the hyper executor's) costs no
    /// allocation of its own.
    pub(crate) name: Option<Cow<'static, str>>,
    /// The message of the latest cancel request.
    pub(crate) cancel_message: Option<Arc<str>>,
    pub(crate) done_callbacks: Vec<DoneCallback>,
    /// Counts the live `Cancelled` values delivered to this task (see [`Cancelled`]).
    pub(crate) escape: Option<Arc<AtomicUsize>>,
    pub(crate) panic: Option<Box<dyn Any + Send>>,
}

/// The per-task header; see the module docs for which thread may touch which field.
///
/// `repr(C)`, in this order: what every wake and poll touches comes first, in the header's
/// first 48 bytes, so that a wake, its scheduling and the poll find them in one or two cache
/// lines (the tasks of 1 000 connections do not stay in cache from one request of a
/// connection to its next); the rest, read by task dumps, cancels and joins, follows. The
/// small fields pack without padding.
#[repr(C)]
pub(crate) struct Header {
    pub(crate) state: AtomicU32,
    flags: Cell<u8>,
    outcome: Cell<Outcome>,
    // What the task is suspended on (`task/awaiting.rs`): a `Leaf` kept field by field, so
    // that its kind packs with the bytes above. Written by the runtime future that returns
    // `Pending`, through the thread's current-task pointer; read by the task tree.
    leaf_kind: Cell<LeafKind>,
    /// The leaf's kind when the current poll began (`leaf_kind` is `Unset` meanwhile); the
    /// payload fields still hold that leaf's until a future records its own.
    leaf_kind_before: Cell<LeafKind>,
    leaf_arg: Cell<u32>,
    leaf_len: Cell<u32>,
    /// The loop's millisecond tick when the current wait began (`awaiting::tick_of`).
    wait_since: Cell<u32>,
    /// Polls of the future (saturating).
    polls: Cell<u32>,
    leaf_data: Cell<LeafData>,
    /// The loop this task belongs to: a wake from another thread goes to its injector, and
    /// its address tells the home loop from another one on the same thread.
    pub(crate) home: Arc<dyn Remote>,
    /// asyncio's `cancelling()`: cancel requests made minus `uncancel()` calls.
    cancel_requests: Cell<u32>,
    /// This task's key in the runtime's registry of live tasks.
    registry_key: Cell<u32>,
    pub(crate) id: TaskId,
    pub(crate) parent: Option<TaskId>,
    join_waker: Cell<Option<Waker>>,
    extras: Cell<Option<Box<Extras>>>,
    /// The task's `tracing` span, set once at spawn and entered for every poll.
    #[cfg(feature = "tracing")]
    span: std::cell::OnceCell<tracing::Span>,
}

impl Header {
    fn new(id: TaskId, parent: Option<TaskId>, home: Arc<dyn Remote>) -> Self {
        Header {
            state: AtomicU32::new(0),
            flags: Cell::new(0),
            outcome: Cell::new(Outcome::Pending),
            cancel_requests: Cell::new(0),
            registry_key: Cell::new(0),
            id,
            parent,
            home,
            join_waker: Cell::new(None),
            extras: Cell::new(None),
            leaf_kind: Cell::new(Leaf::NONE.kind),
            leaf_kind_before: Cell::new(Leaf::NONE.kind),
            leaf_arg: Cell::new(Leaf::NONE.arg),
            leaf_len: Cell::new(Leaf::NONE.len),
            leaf_data: Cell::new(Leaf::NONE.data),
            wait_since: Cell::new(0),
            polls: Cell::new(0),
            #[cfg(feature = "tracing")]
            span: std::cell::OnceCell::new(),
        }
    }

    /// Gives the task its `tracing` span (once, at spawn).
    #[cfg(feature = "tracing")]
    pub(crate) fn set_span(&self, span: tracing::Span) {
        let _ = self.span.set(span);
    }

    /// The task's `tracing` span, if it has one.
    #[cfg(feature = "tracing")]
    pub(crate) fn span(&self) -> Option<&tracing::Span> {
        self.span.get()
    }

    /// The leaf the task is (or was last) suspended on.
    #[inline]
    pub(crate) fn leaf(&self) -> Leaf {
        Leaf {
            kind: self.leaf_kind.get(),
            arg: self.leaf_arg.get(),
            len: self.leaf_len.get(),
            data: self.leaf_data.get(),
        }
    }

    /// Records the leaf a runtime future is suspending the task on (see `awaiting::note`),
    /// unless one was recorded earlier in this poll: the first future a poll leaves pending
    /// stands (a select's main branch before its shutdown branch). `new`: the future has just
    /// started this wait; otherwise the wait is new only if it is not the one the last poll
    /// left (whose payload the fields still hold).
    #[inline]
    pub(crate) fn set_leaf(&self, leaf: Leaf, new: bool) {
        if self.leaf_kind.get() != LeafKind::Unset {
            return;
        }
        if new || !leaf.same_as(&self.leaf_before()) {
            self.set(WAIT_NEW);
        }
        self.replace_leaf(leaf);
    }

    /// Whether this poll has recorded no leaf yet (so [`set_leaf`](Self::set_leaf) would).
    #[inline]
    pub(crate) fn leaf_unset(&self) -> bool {
        self.leaf_kind.get() == LeafKind::Unset
    }

    /// The leaf the last poll left, while a poll runs.
    fn leaf_before(&self) -> Leaf {
        Leaf {
            kind: self.leaf_kind_before.get(),
            ..self.leaf()
        }
    }

    /// Records `leaf` over whatever this poll recorded (code that says what it waits on as a
    /// whole, around the futures it polls: `note_awaiting`).
    #[inline]
    pub(crate) fn replace_leaf(&self, leaf: Leaf) {
        self.leaf_kind.set(leaf.kind);
        self.leaf_arg.set(leaf.arg);
        self.leaf_len.set(leaf.len);
        self.leaf_data.set(leaf.data);
    }

    /// The tick at which the current wait began.
    pub(crate) fn wait_since(&self) -> u32 {
        self.wait_since.get()
    }

    /// Polls of the task's future so far (saturating at `u32::MAX`).
    pub(crate) fn polls(&self) -> u32 {
        self.polls.get()
    }

    /// Before a poll: counts it, and marks the leaf unset (keeping its kind aside, to tell a
    /// new wait from the same one when a future records its leaf).
    #[inline]
    fn begin_poll_leaf(&self) {
        self.polls.set(self.polls.get().saturating_add(1));
        if cfg!(ringloop_no_leaves) {
            return;
        }
        self.leaf_kind_before.set(self.leaf_kind.get());
        self.leaf_kind.set(LeafKind::Unset);
    }

    /// After a poll that returned `Pending`: a leaf nobody recorded is a foreign future, and a
    /// new wait (so marked by its future or by `set_leaf`) starts its clock now.
    #[inline]
    fn end_poll_leaf(&self, sched: &dyn Schedule) {
        if cfg!(ringloop_no_leaves) {
            return;
        }
        if self.leaf_kind.get() == LeafKind::Unset {
            self.replace_leaf(Leaf::FOREIGN);
            if self.leaf_kind_before.get() != LeafKind::Foreign {
                self.set(WAIT_NEW);
            }
        }
        if self.has(WAIT_NEW) {
            self.wait_since.set(sched.wait_tick());
        }
    }

    #[inline]
    fn has(&self, flag: u8) -> bool {
        self.flags.get() & flag != 0
    }

    fn set(&self, flag: u8) {
        self.flags.set(self.flags.get() | flag);
    }

    fn clear(&self, flag: u8) {
        self.flags.set(self.flags.get() & !flag);
    }

    pub(crate) fn outcome(&self) -> Outcome {
        self.outcome.get()
    }

    pub(crate) fn is_done(&self) -> bool {
        self.outcome.get() != Outcome::Pending
    }

    pub(crate) fn registry_key(&self) -> usize {
        self.registry_key.get() as usize
    }

    /// Runs `f` on the extras, creating them on first use. Not re-entrant (owner thread, and
    /// `f` never calls back into the task).
    pub(crate) fn with_extras<R>(&self, f: impl FnOnce(&mut Extras) -> R) -> R {
        let mut extras = self.extras.take().unwrap_or_default();
        let r = f(&mut extras);
        self.extras.set(Some(extras));
        r
    }

    /// Like [`with_extras`](Self::with_extras) but does not allocate when there are none.
    pub(crate) fn peek_extras<R>(&self, f: impl FnOnce(Option<&mut Extras>) -> R) -> R {
        let mut extras = self.extras.take();
        let r = f(extras.as_deref_mut());
        self.extras.set(extras);
        r
    }

    pub(crate) fn name(&self) -> String {
        self.peek_extras(|e| e.and_then(|e| e.name.as_deref().map(str::to_owned)))
            .unwrap_or_else(|| format!("Task-{}", self.id))
    }

    pub(crate) fn set_name(&self, name: Cow<'static, str>) {
        #[cfg(feature = "tracing")]
        if let Some(span) = self.span() {
            span.record("task.name", &*name);
        }
        self.with_extras(|e| e.name = Some(name));
    }

    pub(crate) fn state(&self) -> TaskState {
        match self.outcome.get() {
            Outcome::Finished => TaskState::Finished,
            Outcome::Cancelled => TaskState::Cancelled,
            Outcome::Panicked => TaskState::Panicked,
            Outcome::Pending => {
                if self.has(RUNNING) {
                    TaskState::Running
                } else if self.state.load(Ordering::Relaxed) & SCHEDULED != 0 {
                    TaskState::Scheduled
                } else {
                    TaskState::Pending
                }
            }
        }
    }

    pub(crate) fn cancel_message(&self) -> Option<Arc<str>> {
        self.peek_extras(|e| e.and_then(|e| e.cancel_message.clone()))
    }

    /// Records a cancel request (the caller then schedules the task). False once done.
    pub(crate) fn request_cancel(&self, message: Option<Arc<str>>) -> bool {
        if self.is_done() {
            return false;
        }
        self.cancel_requests
            .set(self.cancel_requests.get().saturating_add(1));
        self.set(CANCEL_PENDING);
        #[cfg(feature = "tracing")]
        tracing::event!(
            target: "ringloop::task",
            tracing::Level::DEBUG,
            task.id = self.id.as_u64(),
            task.name = %self.name(),
            cancel.message = message.as_deref(),
            "cancel requested"
        );
        if message.is_some() {
            self.with_extras(|e| e.cancel_message = message);
        }
        true
    }

    pub(crate) fn cancel_pending(&self) -> bool {
        self.has(CANCEL_PENDING)
    }

    /// Marks a request as pending again without counting a new one (a scope that consumed a
    /// request which was not its own hands it on to the next await).
    pub(crate) fn repost_cancel(&self) {
        if !self.is_done() {
            self.set(CANCEL_PENDING);
        }
    }

    /// asyncio's `cancelling()`.
    pub(crate) fn cancelling(&self) -> u32 {
        self.cancel_requests.get()
    }

    /// asyncio's `uncancel()`: one request fewer; when none is left, a pending one is dropped,
    /// and so is a delivery still reaching the other branches of this poll.
    pub(crate) fn uncancel(&self) -> u32 {
        let n = self.cancel_requests.get().saturating_sub(1);
        self.cancel_requests.set(n);
        if n == 0 {
            self.clear(CANCEL_PENDING | DELIVERED);
        }
        n
    }

    /// Drops a request that is pending but not delivered, without touching the count: a scope
    /// whose own request was never taken withdraws it this way.
    pub(crate) fn withdraw_pending(&self) {
        self.clear(CANCEL_PENDING);
    }

    /// Whether a request was delivered earlier in the current poll (see [`DELIVERED`]).
    pub(crate) fn delivered_this_poll(&self) -> bool {
        self.has(DELIVERED)
    }

    /// Sets or clears the delivered-this-poll mark: a scope (`timeout`) restores it once its
    /// own scoped request has reached the inner future, so that the scope's request never
    /// reaches the futures beside it.
    pub(crate) fn set_delivered_this_poll(&self, on: bool) {
        if on {
            self.set(DELIVERED);
        } else {
            self.clear(DELIVERED);
        }
    }

    /// Takes the pending cancel request, if any, as the error the current await resolves to.
    /// For a future that starts waiting now (its first poll, or one after it was resolved): a
    /// request delivered earlier in this poll is not for it.
    #[inline]
    pub(crate) fn take_cancel(&self) -> Option<Cancelled> {
        if !self.has(CANCEL_PENDING) {
            return None;
        }
        self.deliver_pending()
    }

    #[cold]
    fn deliver_pending(&self) -> Option<Cancelled> {
        self.clear(CANCEL_PENDING);
        self.set(DELIVERED);
        Some(self.deliver(self.cancel_message()))
    }

    /// Like [`take_cancel`](Self::take_cancel), for a future that was already waiting when
    /// polled: it also resolves to `Cancelled` when a request was delivered to another future
    /// earlier in this same task poll, so every concurrent branch of the task sees the request.
    pub(crate) fn take_cancel_waiting(&self) -> Option<Cancelled> {
        if self.has(CANCEL_PENDING) {
            return self.take_cancel();
        }
        if self.has(DELIVERED) {
            return Some(self.deliver(self.cancel_message()));
        }
        None
    }

    /// Makes a `Cancelled` bound to this task: while it lives, the task counts as "letting a
    /// cancellation escape" when it finishes (see [`Cancelled`]).
    ///
    /// If the task has no cancel message yet, this one is remembered as its message: a task that
    /// ends by letting a cancellation it saw escape (an awaited task's, a Promise's) then carries
    /// that message in its `TaskError::Cancelled`. A message the task already has is kept: it
    /// came from a cancel request on this very task (`request_cancel` always records it), and a
    /// cancellation the task merely *observed* later, e.g. from a child it cancelled and awaited
    /// during its cleanup, must not overwrite the reason the task itself was cancelled.
    pub(crate) fn deliver(&self, message: Option<Arc<str>>) -> Cancelled {
        #[cfg(feature = "tracing")]
        tracing::event!(
            target: "ringloop::task",
            tracing::Level::DEBUG,
            task.id = self.id.as_u64(),
            cancel.message = message.as_deref(),
            "cancel delivered"
        );
        let counter = self.with_extras(|e| {
            if e.cancel_message.is_none() {
                e.cancel_message.clone_from(&message);
            }
            e.escape.get_or_insert_with(Default::default).clone()
        });
        Cancelled::bound(message, counter)
    }

    pub(crate) fn escaped(&self) -> bool {
        self.live_cancels() > 0
    }

    /// How many `Cancelled` values delivered to this task are alive right now. A scope that
    /// delivers its own request (`timeout`) compares this before and after, so that values the
    /// task already held from an earlier, caught cancellation are not taken for its own.
    pub(crate) fn live_cancels(&self) -> usize {
        self.peek_extras(|e| {
            e.and_then(|e| e.escape.as_ref())
                .map_or(0, |c| c.load(Ordering::Acquire))
        })
    }

    pub(crate) fn add_done_callback(&self, f: DoneCallback) {
        self.with_extras(|e| e.done_callbacks.push(f));
    }

    pub(crate) fn set_join_waker(&self, waker: &Waker) {
        let current = self.join_waker.take();
        let new = match current {
            Some(w) if w.will_wake(waker) => w,
            _ => waker.clone(),
        };
        self.join_waker.set(Some(new));
    }

    pub(crate) fn set_detached(&self) {
        self.set(DETACHED);
    }

    pub(crate) fn set_abort(&self) -> bool {
        if self.is_done() || self.has(MAIN) {
            return false;
        }
        self.set(ABORT);
        true
    }

    pub(crate) fn take_panic(&self) -> Option<Box<dyn Any + Send>> {
        self.peek_extras(|e| e.and_then(|e| e.panic.take()))
    }
}

/// What the runtime needs of a task without knowing its future's type.
pub(crate) trait TaskDyn {
    fn header(&self) -> &Header;
    /// Polls the task once (or drops it if an abort or an unobserved cancel says so).
    fn run(&self, me: &TaskPtr, sched: &dyn Schedule);
    /// Drops the future now and ends the task as cancelled (shutdown, or `abort` outside a
    /// poll). Refused (false) while the future is being polled or once done.
    fn cancel_now(&self, me: &TaskPtr, sched: &dyn Schedule) -> bool;
    /// Drops the output if nobody will take it (the handle is gone).
    fn drop_output(&self);
}

/// Typed access to a finished task's output, for the `Task<T>` handle.
pub(crate) trait TaskJoin<T>: TaskDyn {
    fn take_output(&self) -> Option<T>;
}

enum Stage<F: Future> {
    Running(F),
    Finished(F::Output),
    Consumed,
}

/// `repr(C)`: the header is at the start of every cell, so a type-erased task's header is its
/// data pointer (`header_of`), found without a call through the `TaskDyn` vtable.
#[repr(C)]
pub(crate) struct TaskCell<F: Future> {
    header: Header,
    stage: UnsafeCell<Stage<F>>,
}

/// The header of a type-erased task, read off its data pointer (every task is a `TaskCell`,
/// whose header comes first).
#[inline]
pub(crate) fn header_of(task: &TaskPtr) -> *const Header {
    Arc::as_ptr(task).cast::<Header>()
}

static NEXT_TASK_ID: AtomicU64 = AtomicU64::new(1);

/// Allocates a task (not yet registered or scheduled).
pub(crate) fn new_task<F>(
    future: F,
    parent: Option<TaskId>,
    home: Arc<dyn Remote>,
) -> Arc<TaskCell<F>>
where
    F: Future + 'static,
{
    let raw = NEXT_TASK_ID.fetch_add(1, Ordering::Relaxed);
    let id = TaskId(NonZeroU64::new(raw).expect("task id counter wrapped"));
    Arc::new(TaskCell {
        header: Header::new(id, parent, home),
        stage: UnsafeCell::new(Stage::Running(future)),
    })
}

impl<F: Future + 'static> TaskCell<F> {
    pub(crate) fn set_registry_key(&self, key: usize) {
        self.header.registry_key.set(key as u32);
    }

    pub(crate) fn mark_main(&self) {
        self.header.set(MAIN);
    }

    const WAKER_VTABLE: RawWakerVTable = RawWakerVTable::new(
        Self::waker_clone,
        Self::waker_wake,
        Self::waker_wake_by_ref,
        Self::waker_drop,
    );

    fn raw_waker(ptr: *const Self) -> RawWaker {
        RawWaker::new(ptr as *const (), &Self::WAKER_VTABLE)
    }

    unsafe fn waker_clone(ptr: *const ()) -> RawWaker {
        // SAFETY: `ptr` came from `Arc::into_raw`/`Arc::as_ptr` of an `Arc<Self>` that the
        // waker being cloned keeps alive (a waker owns one strong count, or borrows the poll's).
        unsafe { Arc::increment_strong_count(ptr as *const Self) };
        Self::raw_waker(ptr as *const Self)
    }

    unsafe fn waker_wake(ptr: *const ()) {
        // SAFETY: a by-value wake consumes the waker, and with it the strong count it owned.
        let task = unsafe { Arc::from_raw(ptr as *const Self) };
        schedule(task);
    }

    unsafe fn waker_wake_by_ref(ptr: *const ()) {
        // SAFETY: the waker keeps the count alive; ManuallyDrop leaves that count untouched,
        // and the clone below takes a count of its own for the queue.
        let task = ManuallyDrop::new(unsafe { Arc::from_raw(ptr as *const Self) });
        schedule(Arc::clone(&task));
    }

    unsafe fn waker_drop(ptr: *const ()) {
        // SAFETY: the waker owned one strong count; see the module docs for why releasing the
        // last count on any thread is sound.
        unsafe { Arc::decrement_strong_count(ptr as *const Self) };
    }

    /// Replaces the stage, dropping what it held on this thread with panics caught: a
    /// destructor that panics is reported, never allowed to unwind through the loop.
    fn set_stage(&self, sched: &dyn Schedule, me: &TaskPtr, new: Stage<F>) {
        // SAFETY: owner thread only, and never while the future is being polled (callers check
        // RUNNING or are the poll itself, after it returned); no reference into the stage
        // outlives this call.
        let stage = self.stage.get();
        // Dropped in place, not moved out first: the future is pinned, and a future that
        // borrows from itself (an awaited future holding `&mut` to a local) may use that
        // borrow in its destructor.
        // SAFETY: as above; the stage is valid here, and after `drop_in_place` (even one that
        // panicked part-way) it is overwritten without being dropped again.
        let dropped = panic::catch_unwind(AssertUnwindSafe(|| unsafe {
            std::ptr::drop_in_place(stage)
        }));
        // SAFETY: as above.
        unsafe { std::ptr::write(stage, new) };
        if let Err(payload) = dropped {
            sched.report_panic(Some(me), "a task's destructor panicked", &*payload);
        }
    }

    fn finish(&self, me: &TaskPtr, sched: &dyn Schedule, outcome: Outcome) {
        let h = &self.header;
        h.outcome.set(outcome);
        h.state.fetch_or(DONE, Ordering::Release);
        if h.has(DETACHED) {
            self.drop_output();
        }
        sched.task_finished(me, outcome);
        if let Some(w) = h.join_waker.take() {
            w.wake();
        }
        let callbacks = h.peek_extras(|e| e.map(|e| std::mem::take(&mut e.done_callbacks)));
        for cb in callbacks.into_iter().flatten() {
            let task = TaskRef::new(me.clone());
            sched.call_soon(Box::new(move || cb(&task)));
        }
    }

    fn end_cancelled(&self, me: &TaskPtr, sched: &dyn Schedule) {
        #[cfg(feature = "tracing")]
        let _span = self.header.span().map(tracing::Span::enter);
        self.set_stage(sched, me, Stage::Consumed);
        self.finish(me, sched, Outcome::Cancelled);
    }
}

/// Queues a woken task on its runtime: the local ready queue on the owner thread, the injector
/// (and an unpark of the driver) from anywhere else.
fn schedule<F: Future + 'static>(task: Arc<TaskCell<F>>) {
    let prev = task.header.state.fetch_or(SCHEDULED, Ordering::AcqRel);
    if prev & (SCHEDULED | DONE) != 0 {
        return;
    }
    let task: TaskPtr = task;
    schedule_ptr(task);
}

/// Queues a task whose SCHEDULED bit this caller has just set.
pub(crate) fn schedule_ptr(task: TaskPtr) {
    // The reference moves into the ready queue (no clone and drop: two atomic operations per
    // wake on the hot path).
    let mut task = Some(task);
    context::try_with_scheduler(|sched| {
        if let Some(t) = task.take() {
            task = sched.schedule(t).err();
        }
    });
    if let Some(task) = task {
        let home = task.header().home.clone();
        home.inject(task);
    }
}

/// Schedules `task` from its owner thread (cancel, abort): a no-op if already queued.
pub(crate) fn schedule_local(task: &TaskPtr) {
    let prev = task.header().state.fetch_or(SCHEDULED, Ordering::AcqRel);
    if prev & (SCHEDULED | DONE) == 0 {
        schedule_ptr(task.clone());
    }
}

impl<F: Future + 'static> TaskDyn for TaskCell<F> {
    fn header(&self) -> &Header {
        &self.header
    }

    fn run(&self, me: &TaskPtr, sched: &dyn Schedule) {
        let h = &self.header;
        h.state.fetch_and(!SCHEDULED, Ordering::AcqRel);
        if h.is_done() {
            return;
        }
        let flags = h.flags.get();
        let cancel_at_start = flags & CANCEL_PENDING != 0;
        if flags & MAIN == 0 && (flags & ABORT != 0 || (flags & STARTED == 0 && cancel_at_start)) {
            let _current = context::set_current(me);
            self.end_cancelled(me, sched);
            return;
        }
        h.set(STARTED | RUNNING);
        h.clear(DELIVERED | WAIT_NEW);
        h.begin_poll_leaf();
        let _current = context::set_current(me);
        #[cfg(feature = "tracing")]
        let _span = h.span().map(tracing::Span::enter);
        // The waker borrows this poll's reference instead of taking a count of its own: it is
        // never dropped (ManuallyDrop), and `clone` takes a real count.
        // SAFETY: `self` lives in an `Arc` (`me`), and `me` outlives the waker.
        let waker = ManuallyDrop::new(unsafe { Waker::from_raw(Self::raw_waker(self)) });
        let mut cx = Context::from_waker(&waker);
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            // Owner thread; RUNNING keeps every other path away from the stage for the duration
            // of this poll.
            // SAFETY: so this is the only reference into the stage while it lives.
            let stage = unsafe { &mut *self.stage.get() };
            match stage {
                // SAFETY: the future is pinned: the cell is heap-allocated in an `Arc` and never
                // moved, and the stage is only replaced (dropping the future in place).
                Stage::Running(fut) => unsafe { Pin::new_unchecked(fut) }.poll(&mut cx),
                _ => Poll::Pending,
            }
        }));
        h.clear(RUNNING | DELIVERED);
        sched.count_poll();
        match result {
            Ok(Poll::Ready(output)) => {
                self.set_stage(sched, me, Stage::Finished(output));
                if h.has(MAIN) || !h.escaped() {
                    self.finish(me, sched, Outcome::Finished);
                } else {
                    // The task let a delivered `Cancelled` escape in its output: asyncio's
                    // "CancelledError propagated out of the coroutine".
                    self.set_stage(sched, me, Stage::Consumed);
                    self.finish(me, sched, Outcome::Cancelled);
                }
            }
            Ok(Poll::Pending) => {
                h.end_poll_leaf(sched);
                if cancel_at_start && h.has(CANCEL_PENDING) && !h.has(MAIN) {
                    // Nothing in the await chain could observe the request (a foreign future):
                    // fall back to Rust's cancel, dropping the future.
                    self.end_cancelled(me, sched);
                }
            }
            Err(payload) => {
                self.set_stage(sched, me, Stage::Consumed);
                // The main future's panic is resumed by `block_on` itself: reporting it to the
                // exception handler as well would show it twice.
                if !h.has(MAIN) {
                    sched.report_panic(Some(me), "a task panicked", &*payload);
                }
                h.with_extras(|e| e.panic = Some(payload));
                self.finish(me, sched, Outcome::Panicked);
            }
        }
    }

    fn cancel_now(&self, me: &TaskPtr, sched: &dyn Schedule) -> bool {
        if self.header.is_done() || self.header.has(RUNNING) {
            return false;
        }
        let _current = context::set_current(me);
        self.end_cancelled(me, sched);
        true
    }

    fn drop_output(&self) {
        if self.header.has(RUNNING) {
            return;
        }
        // SAFETY: owner thread (the handle, the only caller besides `finish`, is `!Send`) and
        // not while the future is polled (checked above).
        let stage = unsafe { &mut *self.stage.get() };
        if matches!(stage, Stage::Finished(_)) {
            *stage = Stage::Consumed;
        }
        drop(self.header.take_panic());
    }
}

impl<F: Future + 'static> TaskJoin<F::Output> for TaskCell<F> {
    fn take_output(&self) -> Option<F::Output> {
        if self.header.has(RUNNING) {
            return None;
        }
        // SAFETY: as in `drop_output`.
        let stage = unsafe { &mut *self.stage.get() };
        match std::mem::replace(stage, Stage::Consumed) {
            Stage::Finished(v) => Some(v),
            other => {
                *stage = other;
                None
            }
        }
    }
}

/// Builds the `TaskError` for a task that did not finish normally, bound to the task that
/// awaits it (so letting it escape ends that task as cancelled too, as in asyncio).
pub(crate) fn error_of(h: &Header) -> TaskError {
    match h.outcome() {
        Outcome::Panicked => TaskError::Panicked(
            h.take_panic()
                .unwrap_or_else(|| Box::new("panic payload already taken")),
        ),
        _ => TaskError::Cancelled(context::with_current(|cur| match cur {
            Some(cur) => cur.header().deliver(h.cancel_message()),
            None => Cancelled::unbound(h.cancel_message()),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-task overhead the docs promise (at most 144 bytes besides the future and its
    /// output), measured for a future whose state is a single byte: the `Arc`'s two counts, the
    /// header (96 bytes, 24 of them what the task awaits, since when, and its poll count), the
    /// stage's tag and padding, and the registry's slab entry (a fat `TaskPtr` plus the slab's
    /// entry tag).
    #[test]
    fn per_task_overhead_is_at_most_144_bytes() {
        let future = async {};
        let future_size = std::mem::size_of_val(&future);
        let cell_size = std::mem::size_of_val(&*new_task(future, None, Arc::new(NoLoop)));
        let arc_counts = 2 * std::mem::size_of::<usize>();
        let registry_entry = std::mem::size_of::<TaskPtr>() + std::mem::size_of::<usize>();
        let overhead = arc_counts + cell_size + registry_entry - future_size;
        println!(
            "per-task overhead: {overhead} bytes (header {} bytes)",
            std::mem::size_of::<Header>()
        );
        if cfg!(feature = "tracing") {
            return; // the task's span adds its own size
        }
        assert!(overhead <= 144, "per-task overhead is {overhead} bytes");
        assert!(
            std::mem::size_of::<Header>() <= 96,
            "the header grew to {} bytes",
            std::mem::size_of::<Header>()
        );
    }

    /// A home that drops what it is sent: these tests never wake a task from another thread.
    struct NoLoop;

    impl Remote for NoLoop {
        fn inject(&self, _task: TaskPtr) {}
    }

    /// A loop that only records what a task asks of it: the cell is driven here without a
    /// runtime, through nothing but the `Schedule` interface.
    #[derive(Default)]
    struct Recorder {
        events: std::cell::RefCell<Vec<String>>,
        queued: std::cell::RefCell<Vec<Box<dyn FnOnce()>>>,
        polls: Cell<u32>,
    }

    impl Recorder {
        fn events(&self) -> Vec<String> {
            self.events.borrow().clone()
        }

        fn log(&self, event: String) {
            self.events.borrow_mut().push(event);
        }

        /// Runs the queued callbacks, as the loop's next pass would.
        fn run_queued(&self) {
            let queued = std::mem::take(&mut *self.queued.borrow_mut());
            for f in queued {
                f();
            }
        }
    }

    impl Schedule for Recorder {
        fn schedule(&self, task: TaskPtr) -> Result<(), TaskPtr> {
            self.log(format!("schedule {}", task.header().id));
            Ok(())
        }

        fn task_finished(&self, _task: &TaskPtr, outcome: Outcome) {
            self.log(format!("finished {outcome:?}"));
        }

        fn report_panic(&self, _task: Option<&TaskPtr>, message: &str, _: &(dyn Any + Send)) {
            self.log(format!("report {message}"));
        }

        fn call_soon(&self, f: Box<dyn FnOnce()>) {
            self.log("call_soon".to_owned());
            self.queued.borrow_mut().push(f);
        }

        fn count_poll(&self) {
            self.polls.set(self.polls.get() + 1);
        }

        fn wait_tick(&self) -> u32 {
            7
        }
    }

    fn spawn_here<F: Future + 'static>(future: F) -> (Arc<TaskCell<F>>, TaskPtr) {
        let cell = new_task(future, None, Arc::new(NoLoop));
        let ptr: TaskPtr = cell.clone();
        (cell, ptr)
    }

    /// Every task is a `TaskCell`, so its header sits at its data pointer, whatever the
    /// future's alignment.
    #[test]
    fn a_task_header_is_at_its_data_pointer() {
        #[repr(align(64))]
        struct Aligned(u8);
        let big = async {
            let a = Aligned(1);
            std::future::ready(()).await;
            a.0
        };
        for ptr in [spawn_here(async {}).1, spawn_here(big).1] {
            assert!(std::ptr::eq(header_of(&ptr), ptr.header()));
        }
    }

    #[test]
    fn a_ready_future_is_polled_once_and_finishes_once_before_its_done_callback() {
        let rec = Recorder::default();
        let (cell, ptr) = spawn_here(async { 7 });
        let seen = Arc::new(AtomicUsize::new(0));
        let s = seen.clone();
        ptr.header().add_done_callback(Box::new(move |t: &TaskRef| {
            assert!(t.is_done());
            s.fetch_add(1, Ordering::Relaxed);
        }));
        cell.run(&ptr, &rec);
        assert_eq!(rec.polls.get(), 1);
        assert_eq!(rec.events(), ["finished Finished", "call_soon"]);
        assert_eq!(
            seen.load(Ordering::Relaxed),
            0,
            "done callbacks never run inline"
        );
        rec.run_queued();
        assert_eq!(seen.load(Ordering::Relaxed), 1);
        assert_eq!(cell.take_output(), Some(7));
        // A stray run after the end (a wake that raced the finish) does nothing.
        cell.run(&ptr, &rec);
        assert_eq!(rec.polls.get(), 1);
        assert_eq!(rec.events().len(), 2);
    }

    #[test]
    fn a_panic_is_reported_to_the_loop_and_ends_the_task_panicked() {
        let rec = Recorder::default();
        let (cell, ptr) = spawn_here(async { panic!("boom") });
        cell.run(&ptr, &rec);
        assert_eq!(rec.polls.get(), 1);
        assert_eq!(
            rec.events(),
            ["report a task panicked", "finished Panicked"]
        );
        assert_eq!(ptr.header().outcome(), Outcome::Panicked);
        assert!(ptr.header().take_panic().is_some());
    }

    #[test]
    fn a_task_cancelled_before_its_first_poll_is_dropped_unpolled() {
        struct CountDrop(Arc<AtomicUsize>);
        impl Drop for CountDrop {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let rec = Recorder::default();
        let drops = Arc::new(AtomicUsize::new(0));
        let guard = CountDrop(drops.clone());
        let (cell, ptr) = spawn_here(async move {
            let _guard = guard;
            unreachable!("never polled");
        });
        assert!(ptr.header().request_cancel(None));
        cell.run(&ptr, &rec);
        assert_eq!(rec.polls.get(), 0, "nothing was polled");
        assert_eq!(drops.load(Ordering::Relaxed), 1);
        assert_eq!(rec.events(), ["finished Cancelled"]);
        assert!(!cell.cancel_now(&ptr, &rec), "already done");
    }
}
