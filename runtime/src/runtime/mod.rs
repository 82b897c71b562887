//! The runtime: the loop (this file), its [`Builder`] (`builder.rs`) and the [`Handle`] other
//! threads use (`handle.rs`, with the injector they push into).
//!
//! One loop iteration is `Core::run_once`; everything else (`block_on`, `run_forever`) calls
//! it in a loop.

mod builder;
mod handle;
mod inspect;
#[cfg(all(test, not(ringloop_loom)))]
mod wake_tests;

pub use builder::Builder;
pub use handle::Handle;
use handle::RemoteTask;
pub(crate) use handle::Shared;

use std::any::Any;
use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::callback::{new_callback, CallbackHandle, CallbackPtr};
use crate::context;
use crate::driver::{Backend, BufPool, DriverHandle};
use crate::stats::RuntimeStats;
use crate::task::cell::{new_task, Outcome, TaskCell, TaskDyn, SCHEDULED};
use crate::task::tree::FlatTask;
use crate::task::{panic_message, Schedule, Task, TaskId, TaskPtr, TaskRef, TaskTree};
use crate::time::heap::TimerAction;
use crate::time::Timers;

/// What the ready queue holds.
pub(crate) enum Runnable {
    Task(TaskPtr),
    /// A callback that can be cancelled (`call_soon`, an expired `call_at`).
    Callback(CallbackPtr),
    /// A callback nobody holds a handle to (a task's or a promise's done callback): run as
    /// it is, without a cell of its own.
    Once(Box<dyn FnOnce()>),
}

/// Details of an unhandled error, for the exception handler (asyncio's exception context).
pub struct ExceptionContext<'a> {
    /// What went wrong, e.g. "a task panicked".
    pub message: &'a str,
    /// The task it happened in, if any (none for a callback).
    pub task: Option<TaskRef>,
    /// The panic payload.
    pub payload: &'a (dyn Any + Send),
}

impl ExceptionContext<'_> {
    /// The panic message, when the payload is a string.
    pub fn panic_message(&self) -> Option<&str> {
        panic_message(self.payload)
    }
}

impl fmt::Display for ExceptionContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message)?;
        if let Some(t) = &self.task {
            write!(f, " in task {} (id {})", t.name(), t.id())?;
        }
        if let Some(m) = self.panic_message() {
            write!(f, ": {m}")?;
        }
        Ok(())
    }
}

type ExceptionHandler = Rc<dyn Fn(&ExceptionContext<'_>)>;

fn default_exception_handler() -> ExceptionHandler {
    Rc::new(|ctx| eprintln!("ringloop: {ctx}"))
}

#[derive(Default)]
struct Counters {
    tasks_spawned: Cell<u64>,
    tasks_completed: Cell<u64>,
    tasks_cancelled: Cell<u64>,
    tasks_panicked: Cell<u64>,
    polls: Cell<u64>,
    callbacks_run: Cell<u64>,
    loop_iterations: Cell<u64>,
    parks: Cell<u64>,
    remote_wakes: Cell<u64>,
}

fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

/// The runtime's state, owned by one thread. `RefCell`s are borrowed only briefly and never
/// across a poll or a callback, so user code may call back into the runtime from anywhere.
pub(crate) struct Core {
    shared: Arc<Shared>,
    ready: RefCell<VecDeque<Runnable>>,
    timers: Timers,
    /// Every task that has not ended, by registry key.
    tasks: RefCell<Slab<TaskPtr>>,
    /// Ended tasks, kept for post-mortem dumps when the builder asks.
    finished: RefCell<Option<Vec<FlatTask>>>,
    /// The driver; resources keep clones of this handle, so they reach it from anywhere.
    driver: DriverHandle,
    /// The driver's receive-buffer pool (kept here to hand out without borrowing the driver).
    pool: Rc<BufPool>,
    /// Wakers the driver collected while it was borrowed, woken after; kept to reuse its
    /// allocation every iteration.
    woken: RefCell<Vec<std::task::Waker>>,
    backend: Backend,
    /// `Builder::zero_copy_send`, on io_uring only.
    zero_copy_send: bool,
    /// `Builder::registered_fds`, on io_uring only.
    registered_fds: bool,
    /// `Builder::recv_bundles`, on io_uring kernels that have them.
    recv_bundles: bool,
    /// `Builder::multishot_recv`, on io_uring kernels whose multishot receive can be stopped
    /// (see `multishot_recv`).
    multishot_recv: bool,
    exception_handler: RefCell<ExceptionHandler>,
    stop_requested: Cell<bool>,
    counters: Counters,
    /// Reused buffer for expired timers.
    expired: RefCell<Vec<TimerAction>>,
    /// A wake to another loop was queued on this loop's ring since the last flush.
    wakes_queued: Cell<bool>,
    /// Values the companion crates keep per runtime ([`runtime_local`]), dropped with it.
    locals: RefCell<Vec<Rc<dyn Any>>>,
    /// The live view's server (`Builder::inspect`), served between iterations.
    inspector: Option<inspect::Inspector>,
}

/// Runs `f` with this thread's running core, or returns `None` outside one.
#[inline]
pub(crate) fn try_with_core<R>(f: impl FnOnce(&Core) -> R) -> Option<R> {
    context::try_with_owner(f)
}

/// Runs `f` with this thread's running core; panics with a clear message outside one.
#[inline]
#[track_caller]
pub(crate) fn with_core<R>(f: impl FnOnce(&Core) -> R) -> R {
    match try_with_core(f) {
        Some(r) => r,
        None => panic!("{}", context::NO_RUNTIME),
    }
}

/// The loop as a task sees it: nothing but these calls (see `task/sched.rs`).
impl Schedule for Core {
    #[inline]
    fn schedule(&self, task: TaskPtr) -> Result<(), TaskPtr> {
        // Data pointers only: the same `Shared` seen through two vtables is still one loop.
        if std::ptr::addr_eq(Arc::as_ptr(&task.header().home), Arc::as_ptr(&self.shared)) {
            self.push_task(task);
            Ok(())
        } else {
            Err(task)
        }
    }

    fn task_finished(&self, task: &TaskPtr, outcome: Outcome) {
        Core::task_finished(self, task, outcome);
    }

    fn report_panic(&self, task: Option<&TaskPtr>, message: &str, payload: &(dyn Any + Send)) {
        Core::report_panic(self, task, message, payload);
    }

    fn call_soon(&self, f: Box<dyn FnOnce()>) {
        self.ready.borrow_mut().push_back(Runnable::Once(f));
    }

    #[inline]
    fn count_poll(&self) {
        bump(&self.counters.polls);
    }

    /// The loop's clock of this iteration (`DriverHandle::now_ns`, read on first use and
    /// shared with the ops' latencies), in milliseconds.
    #[inline]
    fn wait_tick(&self) -> u32 {
        (self.driver.now_ns() / 1_000_000) as u32
    }
}

impl Core {
    /// The loop's cross-thread side.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Wakes the parked loop `target` through this loop's ring (see `Shared::unpark`); false
    /// if it cannot: `target` is this loop, this runtime is gone, or its driver is epoll,
    /// borrowed, or without `MSG_RING`.
    ///
    /// The `MSG_RING` is queued on this loop's ring, and submitted (one `io_uring_enter` for
    /// every wake queued meanwhile) at the end of the task poll or callback that made it; a
    /// wake made elsewhere (a waker woken by a completion, a destructor) goes with the next
    /// kernel entry of the loop, at most one iteration later. Leaving the loop and
    /// ringloop's blocking calls submit what is queued first.
    ///
    /// Why not with the loop's own kernel entry at the end of the iteration, which would cost
    /// no system call at all: a loop that wakes another and then waits for its answer (a
    /// request to another shard) would send the wake only as it goes to sleep, and always
    /// sleep before the answer came. Measured between two idle shards, a ping-pong round trip
    /// took about 40 % longer that way than with an eventfd write, a remote spawn about 20 %.
    /// And why not at once, in the middle of the poll: a task that wakes several shards pays
    /// one entry, not one each.
    fn send_wake(&self, target: &Shared) -> bool {
        let sent = !std::ptr::eq(&*self.shared, target)
            && !self.driver.is_closed()
            && self
                .driver
                .try_with(|d| d.send_wake(&target.wake))
                .unwrap_or(false);
        if sent {
            self.wakes_queued.set(true);
        }
        sent
    }

    /// Submits the `MSG_RING` wakes this loop has queued and not yet handed to the kernel.
    fn flush_wakes(&self) {
        self.wakes_queued.set(false);
        self.driver.try_with(|d| d.flush_wakes());
    }
    /// What this loop lends the layers below it while it is entered (see `context`).
    fn lent(&self) -> context::Lent<'_> {
        context::Lent::new(self, self, &self.timers, &self.driver)
    }

    #[inline]
    fn push_task(&self, task: TaskPtr) {
        self.ready.borrow_mut().push_back(Runnable::Task(task));
    }

    pub(crate) fn spawn<F>(&self, future: F, name: Option<Cow<'static, str>>) -> Task<F::Output>
    where
        F: Future + 'static,
    {
        let parent = context::with_current(|t| t.map(|t| t.header().id));
        let (task, _) = self.spawn_cell(future, name, parent);
        task
    }

    fn spawn_cell<F>(
        &self,
        future: F,
        name: Option<Cow<'static, str>>,
        parent: Option<TaskId>,
    ) -> (Task<F::Output>, Arc<TaskCell<F>>)
    where
        F: Future + 'static,
    {
        let cell = new_task(future, parent, self.shared.clone());
        if let Some(name) = name {
            cell.header().set_name(name);
        }
        #[cfg(feature = "tracing")]
        {
            let h = cell.header();
            let span = tracing::info_span!(
                target: "ringloop::task",
                "task",
                "task.name" = %h.name(),
                "task.id" = h.id.as_u64(),
                "task.parent" = tracing::field::Empty,
            );
            if let Some(p) = parent {
                span.record("task.parent", p.as_u64());
            }
            h.set_span(span);
        }
        let ptr: TaskPtr = cell.clone();
        let key = self.tasks.borrow_mut().insert(ptr.clone());
        cell.set_registry_key(key);
        cell.header().state.store(SCHEDULED, Ordering::Relaxed);
        self.push_task(ptr.clone());
        bump(&self.counters.tasks_spawned);
        (Task::from_raw(cell.clone(), ptr), cell)
    }

    /// Bookkeeping when a task ends: leave the registry, count it, remember it if asked.
    fn task_finished(&self, task: &TaskPtr, outcome: Outcome) {
        let h = task.header();
        let removed = {
            let mut tasks = self.tasks.borrow_mut();
            let key = h.registry_key();
            match tasks.get(key) {
                Some(t) if Arc::ptr_eq(t, task) => Some(tasks.remove(key)),
                _ => None,
            }
        };
        match outcome {
            Outcome::Finished => bump(&self.counters.tasks_completed),
            Outcome::Cancelled => bump(&self.counters.tasks_cancelled),
            Outcome::Panicked => bump(&self.counters.tasks_panicked),
            Outcome::Pending => {}
        }
        if let Some(finished) = self.finished.borrow_mut().as_mut() {
            finished.push(FlatTask {
                id: h.id,
                parent: h.parent,
                name: h.name(),
                state: h.state(),
                awaiting: None,
                waited: None,
                polls: u64::from(h.polls()),
            });
        }
        // The registry's reference goes last, after the future is already dropped.
        drop(removed);
    }

    fn report_panic(&self, task: Option<&TaskPtr>, message: &str, payload: &(dyn Any + Send)) {
        #[cfg(feature = "tracing")]
        tracing::event!(
            target: "ringloop::task",
            tracing::Level::ERROR,
            task.id = task.map(|t| t.header().id.as_u64()),
            task.name = task.map(|t| t.header().name()).as_deref(),
            panic = panic_message(payload),
            "{message}"
        );
        let handler = self.exception_handler.borrow().clone();
        let ctx = ExceptionContext {
            message,
            task: task.map(|t| TaskRef::new(t.clone())),
            payload,
        };
        if panic::catch_unwind(AssertUnwindSafe(|| handler(&ctx))).is_err() {
            eprintln!("ringloop: the exception handler panicked while reporting: {ctx}");
        }
    }

    pub(crate) fn call_soon(&self, f: impl FnOnce() + 'static) -> CallbackHandle {
        let cb = new_callback(f);
        self.ready
            .borrow_mut()
            .push_back(Runnable::Callback(cb.clone()));
        CallbackHandle::new(cb)
    }

    pub(crate) fn call_at(&self, deadline: Instant, f: impl FnOnce() + 'static) -> CallbackHandle {
        let cb = new_callback(f);
        let key = self.timers.add(deadline, TimerAction::Callback(cb.clone()));
        cb.set_timer(key);
        CallbackHandle::new(cb)
    }

    pub(crate) fn all_tasks(&self) -> Vec<TaskRef> {
        let mut v: Vec<TaskRef> = self
            .tasks
            .borrow()
            .iter()
            .map(|(_, t)| TaskRef::new(t.clone()))
            .collect();
        v.sort_by_key(|t| t.id());
        v
    }

    pub(crate) fn task_tree(&self) -> TaskTree {
        let now = Instant::now();
        let mut flat: Vec<FlatTask> = self
            .tasks
            .borrow()
            .iter()
            .map(|(_, t)| FlatTask::of(&TaskRef::new(t.clone()), now))
            .collect();
        if let Some(finished) = self.finished.borrow().as_ref() {
            flat.extend(finished.iter().map(|f| FlatTask {
                id: f.id,
                parent: f.parent,
                name: f.name.clone(),
                state: f.state,
                awaiting: None,
                waited: None,
                polls: f.polls,
            }));
        }
        TaskTree::build(flat)
    }

    /// Counts and latencies per op kind.
    pub(crate) fn op_stats(&self) -> Vec<crate::OpKindStats> {
        self.driver.op_stats()
    }

    /// The stats and the op kinds as Prometheus text, labelled with `labels`.
    pub(crate) fn metrics_text(&self, labels: &[(&str, &str)]) -> String {
        crate::metrics::prometheus(&self.stats(), &self.op_stats(), labels)
    }

    fn stats(&self) -> RuntimeStats {
        let c = &self.counters;
        let (d, in_flight) = self
            .driver
            .try_with(|driver| (driver.stats(), driver.in_flight()))
            .unwrap_or_default();
        RuntimeStats {
            tasks_alive: self.tasks.borrow().len() as u64,
            tasks_spawned: c.tasks_spawned.get(),
            tasks_completed: c.tasks_completed.get(),
            tasks_cancelled: c.tasks_cancelled.get(),
            tasks_panicked: c.tasks_panicked.get(),
            polls: c.polls.get(),
            callbacks_run: c.callbacks_run.get(),
            timers_pending: self.timers.pending() as u64,
            loop_iterations: c.loop_iterations.get(),
            parks: c.parks.get(),
            remote_wakes: c.remote_wakes.get(),
            unparks: self.shared.unparks.load(Ordering::Relaxed),
            msg_ring_wakes: d.msg_ring_wakes,
            kernel_enters: d.kernel_enters,
            driver_syscalls: d.syscalls,
            ops_submitted: d.ops_submitted,
            ops_completed: d.ops_completed,
            ops_cancelled: d.ops_cancelled,
            ops_in_flight: in_flight as u64,
            cq_overflows: d.cq_overflows,
            cq_dropped: d.cq_dropped,
            cancels_missed: d.cancels_missed,
            ops_timed_out: d.ops_timed_out,
            zero_copy_notifications: d.zero_copy_notifs,
            recv_bundles: d.recv_bundles,
            buffer_exhaustions: self.pool.exhaustions.get(),
            pooled_buffers_out: self.pool.out() as u64,
        }
    }

    /// One loop iteration: asyncio's `_run_once`, completion-based.
    ///
    /// 1. Decide how long the driver may block: not at all if anything is ready (or a remote
    ///    wake is queued, or a stop was asked), else until the next timer (forever if none).
    /// 2. Park in the driver: one kernel entry, which is also where I/O completes.
    /// 3. Move tasks woken from other threads and thread-safe callbacks to the ready queue.
    /// 4. Read the clock once and move every expired timer to the ready queue.
    /// 5. Run exactly the tasks and callbacks that are ready now. Work they make ready waits
    ///    for the next iteration, so a task that always reschedules itself cannot starve
    ///    timers or I/O.
    fn run_once(&self) -> io::Result<()> {
        bump(&self.counters.loop_iterations);
        // A timer retired since the last iteration (outside a task poll) goes before the
        // park's deadline is computed (see `Timers::retire`).
        self.timers.drop_spare();

        // 1–2. Talk to the kernel once: submit what is queued, reap what completed, and block
        // only if nothing is ready.
        let busy = !self.ready.borrow().is_empty()
            || self.stop_requested.get()
            || self.shared.stop_requested.load(Ordering::Relaxed)
            || self
                .inspector
                .as_ref()
                .is_some_and(inspect::Inspector::pending);
        if busy {
            let mut driver = self.driver.borrow_mut();
            if driver.wants_poll() {
                driver.park(Some(Duration::ZERO), self.shared.wake.eventfd())?;
            }
        } else {
            // The clock is read only when a timer is armed.
            let timeout = if self.timers.len() > 0 {
                let now = Instant::now();
                let deadline = self.timers.park_deadline(now);
                deadline.map(|d| d.saturating_duration_since(now))
            } else {
                None
            };
            // Announce the park before the last look at the injector, so a remote wake either
            // sees `parked` and writes the eventfd, or is seen here.
            let timeout = if self.shared.park.prepare_park() {
                timeout
            } else {
                Some(Duration::ZERO)
            };
            if timeout != Some(Duration::ZERO) {
                bump(&self.counters.parks);
            }
            let r = self
                .driver
                .borrow_mut()
                .park(timeout, self.shared.wake.eventfd());
            self.shared.park.end_park();
            r?;
        }
        // A new reading of the clock for what this iteration starts and sees complete (read
        // when first asked for: `DriverHandle::now_ns`).
        self.driver.reset_clock();
        // Wakers run only now, with the driver no longer borrowed: a waker is foreign code and
        // may drop or poll ops.
        self.wake_collected();
        self.finish_orphans();

        // 3. Remote wakes and thread-safe callbacks.
        if self.shared.park.announced() {
            let injected = self.shared.take_injected();
            let mut ready = self.ready.borrow_mut();
            for RemoteTask(task) in injected.tasks {
                bump(&self.counters.remote_wakes);
                ready.push_back(Runnable::Task(task));
            }
            for f in injected.callbacks {
                ready.push_back(Runnable::Callback(new_callback(f)));
            }
        }

        // 4. Timers (the clock is read only when one is armed). A timer retired outside a
        // task poll (a waker polling inline, above) goes first: a retired timer never fires.
        self.timers.drop_spare();
        if self.timers.len() > 0 {
            let mut expired = self.expired.borrow_mut();
            self.timers.expire(Instant::now(), &mut expired);
            for action in expired.drain(..) {
                match action {
                    TimerAction::Wake(w) => w.wake(),
                    TimerAction::Callback(cb) => {
                        self.ready.borrow_mut().push_back(Runnable::Callback(cb))
                    }
                }
            }
        }

        // 4½. The live view, if it has something to do: new connections, requests, answers
        // (between iterations, never blocking; see `inspect.rs`).
        if let Some(inspector) = &self.inspector {
            if inspector.pending() {
                inspector.turn(self);
            }
        }

        // 5. Run what is ready now, and only that. Waits and ops that start in this pass share
        // one reading of the clock (`wait_tick`, `DriverHandle::now_ns`).
        let n = self.ready.borrow().len();
        for _ in 0..n {
            let Some(item) = self.ready.borrow_mut().pop_front() else {
                break;
            };
            match item {
                Runnable::Task(task) => {
                    task.run(&task, self);
                    // A timer retired in this poll and not taken over in it goes now: hyper
                    // drops and re-arms its header timer within one poll (see
                    // `Timers::retire`).
                    self.timers.drop_spare();
                }
                Runnable::Callback(cb) => {
                    if cb.is_cancelled() {
                        continue;
                    }
                    bump(&self.counters.callbacks_run);
                    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| cb.run())) {
                        self.report_panic(None, "a callback panicked", &*payload);
                    }
                }
                Runnable::Once(f) => {
                    bump(&self.counters.callbacks_run);
                    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(f)) {
                        self.report_panic(None, "a callback panicked", &*payload);
                    }
                }
            }
            // A wake this item sent through the ring leaves now, at the end of the poll that
            // made it, not with the kernel entry at the end of the iteration (see `send_wake`).
            if self.wakes_queued.get() {
                self.flush_wakes();
            }
        }
        Ok(())
    }

    /// Wakes the wakers the driver collected while it was borrowed.
    fn wake_collected(&self) {
        let mut woken = std::mem::take(&mut *self.woken.borrow_mut());
        if self.driver.try_with(|d| d.take_woken(&mut woken)).is_some() {
            for w in woken.drain(..) {
                w.wake();
            }
        }
        *self.woken.borrow_mut() = woken;
    }

    /// Finishes orphaned ops whose completions arrived, outside the driver's borrow: finishing
    /// one runs its `complete`, whose output (an accepted socket, say) is dropped and may call
    /// back into the driver.
    fn finish_orphans(&self) {
        self.driver.finish_orphans();
        for payload in self.driver.take_panics() {
            self.report_panic(
                None,
                "a detached or orphaned op's completion panicked",
                &*payload,
            );
        }
    }

    pub(crate) fn backend(&self) -> Backend {
        self.backend
    }

    /// The backend and its setup (see `Runtime::backend_description`).
    fn describe_backend(&self) -> String {
        self.driver
            .try_with(|d| d.describe())
            .unwrap_or_else(|| self.backend.to_string())
    }

    /// The runtime's receive-buffer pool.
    pub(crate) fn buf_pool(&self) -> Rc<BufPool> {
        self.pool.clone()
    }

    fn take_stop(&self) -> bool {
        self.stop_requested.replace(false)
            | self.shared.stop_requested.swap(false, Ordering::AcqRel)
    }

    /// Drops every live task's future, here and now (runtime shutdown, or the end of the
    /// `block_on` grace period).
    fn abort_all(&self) {
        loop {
            let tasks: Vec<TaskPtr> = self.tasks.borrow().iter().map(|(_, t)| t.clone()).collect();
            if tasks.is_empty() {
                return;
            }
            let mut progressed = false;
            for t in &tasks {
                progressed |= t.cancel_now(t, self);
            }
            if !progressed {
                // Only tasks being polled further up this stack remain; they end with it.
                return;
            }
        }
    }
}

/// A ringloop event loop, bound to the thread that created it.
///
/// ```
/// use ringloop_runtime::{Runtime, call_soon, stop};
///
/// let rt = Runtime::new().unwrap();
/// rt.block_on(async { call_soon(|| println!("soon")); });
///
/// // asyncio's run_forever / stop:
/// rt.call_soon(|| stop());
/// rt.run_forever().unwrap();
/// ```
pub struct Runtime {
    core: Box<Core>,
    shutdown_timeout: Duration,
}

impl Runtime {
    /// A runtime with the default options; see [`Builder`].
    ///
    /// # Errors
    /// If the kernel refuses the driver's descriptors.
    pub fn new() -> io::Result<Runtime> {
        Builder::new().build()
    }

    /// A [`Builder`] for a runtime with options.
    pub fn builder() -> Builder {
        Builder::new()
    }

    #[track_caller]
    fn enter(&self) -> Session<'_> {
        let entered = context::enter(self.core.lent()).unwrap_or_else(|| {
            panic!(
                "cannot start a ringloop runtime from within a running one on the same thread \
                 (nested block_on/run_forever would starve the outer loop): await the future \
                 instead, or spawn it"
            )
        });
        Session {
            core: &self.core,
            _entered: entered,
        }
    }

    /// Runs `future` to completion and returns its output, like `asyncio.run`.
    ///
    /// `future` runs as the `main` task: [`current_task`](crate::current_task) works inside it
    /// and it can be cancelled like any task (its cancellations are delivered at its awaits; it
    /// is never dropped early, because its output must come back). When it completes, every
    /// task still alive is cancelled and the loop runs until they have all ended, for at most
    /// the builder's `shutdown_timeout`; tasks still alive then are dropped. So when this
    /// returns, [`stats`](Self::stats) shows no live task.
    ///
    /// Use [`run_until_complete`](Self::run_until_complete) to leave the other tasks alive.
    ///
    /// # Panics
    /// If `future` panics (the panic is resumed here), or when called while a ringloop runtime
    /// is already running on this thread.
    #[track_caller]
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        let _entered = self.enter();
        let out = self.drive_main(future);
        self.cancel_remaining();
        match out {
            Ok(v) => v,
            Err(payload) => panic::resume_unwind(payload),
        }
    }

    /// Runs `future` to completion like [`block_on`](Self::block_on), but leaves the other tasks
    /// alive (asyncio's `run_until_complete`): a later `block_on`, `run_until_complete` or
    /// `run_forever` carries them on.
    ///
    /// # Panics
    /// As [`block_on`](Self::block_on).
    #[track_caller]
    pub fn run_until_complete<F: Future>(&self, future: F) -> F::Output {
        let _entered = self.enter();
        match self.drive_main(future) {
            Ok(v) => v,
            Err(payload) => panic::resume_unwind(payload),
        }
    }

    fn drive_main<F: Future>(&self, future: F) -> Result<F::Output, Box<dyn Any + Send>> {
        let core = &*self.core;
        let output = Cell::new(None);
        let wrapper = pin!(async {
            output.set(Some(future.await));
        });
        let borrowed: Pin<&mut (dyn Future<Output = ()> + '_)> = wrapper;
        // Why erasing the lifetime is sound: the task below is the only holder of this
        // reference, and `MainGuard` drops the task's future (the reference) before this frame
        // ends, on every path, unwinding included; the `MAIN` flag makes sure nothing else drops
        // or polls it early.
        // SAFETY: so the erased lifetime is never observed past the real one.
        let erased: Pin<&'static mut (dyn Future<Output = ()> + 'static)> =
            unsafe { std::mem::transmute(borrowed) };
        let (task, cell) = core.spawn_cell(erased, Some(Cow::Borrowed("main")), None);
        cell.mark_main();
        struct MainGuard<'a> {
            core: &'a Core,
            main: TaskPtr,
        }
        impl Drop for MainGuard<'_> {
            fn drop(&mut self) {
                self.main.cancel_now(&self.main, self.core);
            }
        }
        let guard = MainGuard {
            core,
            main: task.as_ref().ptr().clone(),
        };
        let mut task = task;
        let result = loop {
            if let Some(result) = task.try_result() {
                break result;
            }
            if let Err(e) = core.run_once() {
                // The driver failed (not EINTR): there is no way to wait any more.
                drop(guard);
                panic::resume_unwind(Box::new(format!("ringloop driver failed: {e}")));
            }
            // `stop()` has no effect on block_on (see its docs), so consume any request here.
            // Left set, it would make every later `run_once` skip the park (a pending stop
            // counts as ready work) and the loop would spin at 100% CPU until the future is
            // done, then make a later `run_forever` return at once.
            core.take_stop();
        };
        drop(guard);
        match result {
            Ok(()) => Ok(output.take().expect("main future completed without output")),
            Err(crate::TaskError::Panicked(p)) => Err(p),
            Err(crate::TaskError::Cancelled(_)) => {
                unreachable!("the main task is never dropped by cancellation")
            }
        }
    }

    /// asyncio.run's epilogue: cancel what is left, let it clean up, then drop the stragglers.
    fn cancel_remaining(&self) {
        let core = &*self.core;
        // Cancellation goes in rounds, as asyncio.run's `_cancel_all_tasks` waits only for the
        // tasks it cancelled: cancel every task alive now, run until *those* have ended, then
        // cancel what is still alive (tasks their cleanup spawned and did not await), and so on.
        // So a helper that a cancelled task spawns and awaits during its cleanup (a flush) runs
        // uncancelled, and a helper it leaves behind is cancelled in the next round instead of
        // running unaware until the shutdown timeout drops it. Task ids only grow, so
        // `cancelled_up_to` makes each task cancelled at most once (a task that suppresses the
        // cancel is not cancelled again; it is dropped at the deadline).
        let mut cancelled_up_to: Option<TaskId> = None;
        let mut round: Vec<TaskRef> = Vec::new();
        let mut spawned_seen = None;
        let deadline = Instant::now() + self.shutdown_timeout;
        let guard = core.call_at(deadline, || {});
        while !core.tasks.borrow().is_empty() && Instant::now() < deadline {
            let spawned = core.counters.tasks_spawned.get();
            if spawned_seen != Some(spawned) && round.iter().all(TaskRef::is_done) {
                spawned_seen = Some(spawned);
                round = core
                    .all_tasks()
                    .into_iter()
                    .filter(|t| Some(t.id()) > cancelled_up_to)
                    .collect();
                for t in &round {
                    t.cancel();
                    cancelled_up_to = Some(t.id());
                }
            }
            if core.run_once().is_err() {
                break;
            }
            core.take_stop(); // as in `drive_main`: stop() does not apply to block_on
        }
        guard.cancel();
        core.abort_all();
        // Callbacks scheduled by the endings above (done callbacks) still run, as asyncio runs
        // them before closing the loop.
        let _ = core.run_once_nonblocking();
    }

    /// Runs the loop until [`stop`](crate::stop) (or [`Handle::stop`]) is called, like asyncio's
    /// `run_forever`. The iteration in which stop was called is completed first. Tasks left
    /// alive stay alive for the next `run_forever`/`block_on`.
    ///
    /// # Errors
    /// If the driver fails to wait (not EINTR).
    ///
    /// # Panics
    /// When called while a ringloop runtime is already running on this thread.
    #[track_caller]
    pub fn run_forever(&self) -> io::Result<()> {
        let _entered = self.enter();
        loop {
            self.core.run_once()?;
            if self.core.take_stop() {
                return Ok(());
            }
        }
    }

    /// Runs exactly one loop iteration (see `Core::run_once` in the source for its five steps).
    /// Blocks at most until the next timer, a wake, or not at all when work is ready.
    ///
    /// # Errors
    /// If the driver fails to wait (not EINTR).
    ///
    /// # Panics
    /// When called while a ringloop runtime is already running on this thread.
    #[track_caller]
    pub fn run_once(&self) -> io::Result<()> {
        let _entered = self.enter();
        self.core.run_once()
    }

    /// Schedules `f` to run on the next loop iteration; see [`call_soon`](crate::call_soon).
    pub fn call_soon(&self, f: impl FnOnce() + 'static) -> CallbackHandle {
        self.core.call_soon(f)
    }

    /// Spawns a task on this runtime from outside it (before `run_forever`, say); see
    /// [`spawn`](crate::spawn).
    pub fn spawn<F: Future + 'static>(&self, future: F) -> Task<F::Output> {
        let parent = context::with_current(|t| t.map(|t| t.header().id));
        self.core.spawn_cell(future, None, parent).0
    }

    /// A handle that other threads can use to stop this loop or schedule callbacks on it.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.core.shared.clone(),
        }
    }

    /// The I/O backend this runtime runs on (never `Auto`).
    pub fn backend(&self) -> Backend {
        self.core.backend
    }

    /// The backend and its setup, for logs and benchmark reports, e.g.
    /// `io_uring (single_issuer+defer_taskrun)` or `epoll`.
    pub fn backend_description(&self) -> String {
        self.core.describe_backend()
    }

    /// Counts and latencies per op kind (every [`OpKind`](crate::OpKind) this runtime ran, by
    /// its name), in the order the kinds were first seen.
    pub fn op_stats(&self) -> Vec<crate::OpKindStats> {
        self.core.op_stats()
    }

    /// The stats and the op kinds as Prometheus text (see [`metrics`](crate::metrics)).
    pub fn metrics_text(&self) -> String {
        self.core.metrics_text(&[])
    }

    /// Where this runtime serves its live view (see [`Builder::inspect`]), if it does.
    pub fn inspect_socket(&self) -> Option<&std::path::Path> {
        self.core.inspector.as_ref().map(inspect::Inspector::path)
    }

    /// A snapshot of the runtime's counters.
    pub fn stats(&self) -> RuntimeStats {
        self.core.stats()
    }

    /// The loop's monotonic clock (asyncio's `loop.time()`).
    pub fn time(&self) -> Instant {
        Instant::now()
    }

    /// Replaces the exception handler; see [`Builder::exception_handler`].
    pub fn set_exception_handler(&self, f: impl Fn(&ExceptionContext<'_>) + 'static) {
        *self.core.exception_handler.borrow_mut() = Rc::new(f);
    }

    /// The task tree of this runtime; see [`TaskTree`].
    pub fn task_tree(&self) -> TaskTree {
        self.core.task_tree()
    }
}

impl Core {
    /// One iteration that never blocks (used at shutdown).
    fn run_once_nonblocking(&self) -> io::Result<()> {
        self.stop_requested.set(true);
        let r = self.run_once();
        self.stop_requested.set(false);
        r
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // The live view goes first: its socket is removed, and its poll ops become orphans
        // that the ring's drain below reaps.
        let inspector = self.core.inspector.take();
        let core = &*self.core;
        // This runtime is the current one while its tasks are dropped, even if another is
        // running on the thread (a runtime dropped inside a task of another): their
        // destructors must not reach the other runtime's timers or tasks.
        let _teardown = context::enter_teardown(core.lent());
        drop(inspector);
        // The ring is drained last, whatever happens before it: a panicking destructor below
        // still unwinds through this guard, so no memory the kernel writes is freed first.
        let _shutdown = ShutdownGuard {
            core,
            bound: self.shutdown_timeout,
        };
        core.abort_all();
        {
            let _inj = self
                .core
                .shared
                .injected
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            core.shared.closed.store(true, Ordering::Release);
        }
        drop(core.shared.take_injected());
        let ready = std::mem::take(&mut *core.ready.borrow_mut());
        drop(ready);
        let timers = core.timers.drain();
        drop(timers);
    }
}

/// The loop entered on this thread (`block_on`, `run_forever`, ...) until it drops. Leaving,
/// however it happens (a return, a stop, a panic), submits the `MSG_RING` wakes its last
/// iteration queued: they would otherwise wait for the next time this runtime runs, and the
/// loops they wake would sleep until then.
struct Session<'a> {
    core: &'a Core,
    _entered: context::Entered<'a>,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.core.flush_wakes();
    }
}

/// Submits the `MSG_RING` wakes that the loop running on this thread has queued, before the
/// thread blocks (a blocking call made from a task: `RemoteTask::wait`, `blocking_*`): the end
/// of the poll, which would send them, waits for that call. No-op elsewhere.
pub(crate) fn flush_wakes() {
    try_with_core(Core::flush_wakes);
}

/// Cancels and reaps every op the kernel still holds, for at most the builder's
/// `shutdown_timeout`, before the ring and the memory it writes can go (see `Uring::shutdown`);
/// then marks the driver closed, so resources that outlive the runtime fail cleanly.
struct ShutdownGuard<'a> {
    core: &'a Core,
    bound: Duration,
}

impl Drop for ShutdownGuard<'_> {
    fn drop(&mut self) {
        let core = self.core;
        core.driver.borrow_mut().shutdown(self.bound);
        core.driver.close();
        // No other ring may queue a `MSG_RING` to this one any more; the descriptor they
        // would name is closed once the last one queued has gone.
        core.shared.wake.retire_ring();
        // Wakers and orphans the shutdown collected, outside the driver's borrow.
        let mut woken = Vec::new();
        core.driver.try_with(|d| d.take_woken(&mut woken));
        drop(woken);
        core.finish_orphans();
    }
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("stats", &self.stats())
            .finish()
    }
}

/// Schedules `f` to run on the next loop iteration (asyncio's `call_soon`). Callbacks run in
/// FIFO order of scheduling. A panicking callback is reported to the exception handler; the
/// loop goes on.
///
/// # Panics
/// Outside a running ringloop runtime.
#[track_caller]
pub fn call_soon(f: impl FnOnce() + 'static) -> CallbackHandle {
    with_core(|core| core.call_soon(f))
}

/// Schedules `f` to run once `delay` has passed (asyncio's `call_later`); never early. Equal
/// deadlines run in scheduling order.
///
/// # Panics
/// Outside a running ringloop runtime.
#[track_caller]
pub fn call_later(delay: Duration, f: impl FnOnce() + 'static) -> CallbackHandle {
    let deadline = Instant::now() + delay;
    with_core(|core| core.call_at(deadline, f))
}

/// Schedules `f` to run at `deadline` on the loop's clock (asyncio's `call_at`); never early.
///
/// # Panics
/// Outside a running ringloop runtime.
#[track_caller]
pub fn call_at(deadline: Instant, f: impl FnOnce() + 'static) -> CallbackHandle {
    with_core(|core| core.call_at(deadline, f))
}

/// Stops the running loop after the current iteration (asyncio's `loop.stop()`):
/// [`Runtime::run_forever`] returns. Has no effect on `block_on`, which runs until its future is
/// done.
///
/// # Panics
/// Outside a running ringloop runtime.
#[track_caller]
pub fn stop() {
    with_core(|core| core.stop_requested.set(true));
}

/// The loop's monotonic clock (asyncio's `loop.time()`): deadlines for [`call_at`] and
/// [`sleep_until`](crate::sleep_until) are on this clock.
pub fn time() -> Instant {
    Instant::now()
}

/// The I/O backend of the running runtime.
///
/// # Panics
/// Outside a running ringloop runtime.
#[track_caller]
pub fn current_backend() -> Backend {
    with_core(|core| core.backend())
}

/// The I/O backend of the running runtime, or `None` outside one: for code that may run
/// anywhere, such as a `Drop` that picks how to release a resource.
pub fn try_current_backend() -> Option<Backend> {
    try_with_core(|core| core.backend())
}

/// A snapshot of the running runtime's counters, from inside one of its tasks (what
/// [`Runtime::stats`] gives its owner).
///
/// ```
/// let rt = ringloop_runtime::Runtime::new().unwrap();
/// let finished = rt.block_on(async {
///     let before = ringloop_runtime::current_stats().tasks_completed;
///     ringloop_runtime::spawn(async {}).await.unwrap();
///     ringloop_runtime::current_stats().tasks_completed - before
/// });
/// assert_eq!(finished, 1);
/// ```
///
/// # Panics
/// Outside a running ringloop runtime.
#[track_caller]
pub fn current_stats() -> RuntimeStats {
    with_core(|core| core.stats())
}

/// Counts and latencies per op kind of the running runtime (what [`Runtime::op_stats`] gives
/// its owner).
///
/// # Panics
/// Outside a running ringloop runtime.
#[track_caller]
pub fn current_op_stats() -> Vec<crate::OpKindStats> {
    with_core(|core| core.op_stats())
}

/// The running runtime's stats and op kinds as Prometheus text (what
/// [`Runtime::metrics_text`] gives its owner; see [`metrics`](crate::metrics)).
///
/// # Panics
/// Outside a running ringloop runtime.
#[track_caller]
pub fn metrics_text() -> String {
    with_core(|core| core.metrics_text(&[]))
}

/// Whether sends use io_uring's zero-copy `SEND_ZC` on the running runtime (see
/// [`Builder::zero_copy_send`]); false on epoll and outside a runtime.
pub fn zero_copy_send() -> bool {
    try_with_core(|core| core.zero_copy_send).unwrap_or(false)
}

/// Whether sockets on the running runtime sit in io_uring's registered file table (see
/// [`Builder::registered_fds`]); false on epoll, on kernels before 6.15, and outside a runtime.
pub fn registered_fds() -> bool {
    try_with_core(|core| core.registered_fds).unwrap_or(false)
}

/// Whether pooled receives on the running runtime may use io_uring's receive bundles (see
/// [`Builder::recv_bundles`]); false on epoll and outside a runtime.
pub fn recv_bundles() -> bool {
    try_with_core(|core| core.recv_bundles).unwrap_or(false)
}

/// Whether pooled receives on the running runtime use io_uring's multishot receive: on a
/// kernel with receive bundles (6.10+) unless [`Builder::multishot_recv`] turned it off,
/// whatever [`Builder::recv_bundles`] says. False on epoll, outside a runtime, and on older
/// kernels, where a pooled receive is one single-shot receive at a time instead.
///
/// The reason is back-pressure. A connection's queue cap stops its multishot receive with a
/// cancel, and newer kernels see it soon: their multishot receive yields after at most 32
/// receives a pass. Older kernels may not: Debian's 6.1 was seen to go on receiving while the
/// socket had data, until the whole pool was taken by one unread connection. A single-shot
/// receive takes one buffer and stops, so there the cap holds exactly, at the price of one
/// submission a chunk (still batched into the loop's one kernel entry).
pub fn multishot_recv() -> bool {
    try_with_core(|core| core.multishot_recv).unwrap_or(false)
}

/// Spawns `future` as a task on the running runtime (asyncio's `create_task`), named `Task-<id>`.
///
/// The future need not be `Send`: it is polled and dropped only on this thread. The task's
/// parent in [`task_tree`] is the task that spawned it.
///
/// # Panics
/// Outside a running ringloop runtime.
#[track_caller]
pub fn spawn<F>(future: F) -> Task<F::Output>
where
    F: Future + 'static,
{
    with_core(|core| core.spawn(future, None))
}

/// Like [`spawn`], with a name for [`task_tree`], [`TaskRef::name`] and panic reports.
///
/// # Panics
/// Outside a running ringloop runtime.
#[track_caller]
pub fn spawn_named<F>(name: impl Into<String>, future: F) -> Task<F::Output>
where
    F: Future + 'static,
{
    let name = Cow::Owned(name.into());
    with_core(|core| core.spawn(future, Some(name)))
}

/// Like [`spawn_named`] with a name known at compile time, which costs no allocation: for
/// spawners that name every task they make (the hyper executor's `hyper.h2-stream`).
#[cfg(feature = "hyper")]
#[track_caller]
pub(crate) fn spawn_static_named<F>(name: &'static str, future: F) -> Task<F::Output>
where
    F: Future + 'static,
{
    with_core(|core| core.spawn(future, Some(Cow::Borrowed(name))))
}

/// Every task of the running runtime that has not ended (asyncio's `all_tasks`), in spawn order.
///
/// # Panics
/// Outside a running ringloop runtime.
#[track_caller]
pub fn all_tasks() -> Vec<TaskRef> {
    with_core(|core| core.all_tasks())
}

/// The running runtime's tasks as a parent/child hierarchy; see [`TaskTree`].
///
/// # Panics
/// Outside a running ringloop runtime.
#[track_caller]
pub fn task_tree() -> TaskTree {
    with_core(|core| core.task_tree())
}

/// The running runtime's receive-buffer pool (see [`BufPool`](crate::BufPool)).
///
/// # Panics
/// Outside a running ringloop runtime.
#[track_caller]
pub fn buffer_pool() -> Rc<crate::driver::BufPool> {
    with_core(|core| core.buf_pool())
}

/// The running runtime's instance of `T`: made with `T::default()` at the first call on this
/// runtime, the same one at every later call, dropped when the runtime is. For the companion
/// crates' per-runtime state (the net crate's cache of pipes for `send_file`), so it goes
/// with its runtime rather than with its thread.
///
/// # Panics
/// Outside a running ringloop runtime.
#[doc(hidden)]
pub fn runtime_local<T: Default + 'static>() -> Rc<T> {
    with_core(|core| {
        let found = core
            .locals
            .borrow()
            .iter()
            .find(|l| (***l).type_id() == std::any::TypeId::of::<T>())
            .cloned();
        if let Some(l) = found {
            return l.downcast::<T>().expect("the type was checked");
        }
        // Made outside the borrow: `default` is the caller's code.
        let made = Rc::new(T::default());
        core.locals.borrow_mut().push(made.clone());
        made
    })
}

/// Replaces the running runtime's exception handler; see [`Builder::exception_handler`].
///
/// # Panics
/// Outside a running ringloop runtime.
#[track_caller]
pub fn set_exception_handler(f: impl Fn(&ExceptionContext<'_>) + 'static) {
    with_core(|core| *core.exception_handler.borrow_mut() = Rc::new(f));
}

/// Hands an error that nothing else will see to the running runtime's exception handler
/// (asyncio's `loop.call_exception_handler`), e.g. a panic caught in a callback that a library
/// runs for the loop. The context names no task. Outside a runtime it is printed to stderr.
///
/// ```
/// use std::{cell::Cell, rc::Rc};
///
/// let rt = ringloop_runtime::Runtime::new().unwrap();
/// let seen = Rc::new(Cell::new(false));
/// rt.block_on({
///     let seen = seen.clone();
///     async move {
///         ringloop_runtime::set_exception_handler(move |ctx| {
///             seen.set(ctx.message == "a protocol callback panicked");
///         });
///         let payload = std::panic::catch_unwind(|| panic!("boom")).unwrap_err();
///         ringloop_runtime::call_exception_handler("a protocol callback panicked", &*payload);
///     }
/// });
/// assert!(seen.get());
/// ```
pub fn call_exception_handler(message: &str, payload: &(dyn Any + Send)) {
    let reported = try_with_core(|core| core.report_panic(None, message, payload));
    if reported.is_none() {
        match panic_message(payload) {
            Some(m) => eprintln!("ringloop: {message}: {m}"),
            None => eprintln!("ringloop: {message}"),
        }
    }
}
