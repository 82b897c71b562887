//! Running blocking code off the loop: asyncio's `loop.run_in_executor(None, f)`, tokio's
//! `spawn_blocking`.
//!
//! A loop thread must never block: a `std::fs` read, a DNS lookup through `getaddrinfo`, a
//! compression pass or a call into a C library that sleeps stalls every task of the runtime.
//! [`spawn_blocking`] runs such a closure on a process-wide pool of threads instead and returns
//! a [`BlockingTask`], a future that resolves to the closure's value.
//!
//! ```
//! use ringloop_runtime::{spawn_blocking, Runtime};
//!
//! let rt = Runtime::new().unwrap();
//! let text = rt.block_on(async {
//!     // Runs on a pool thread; the loop goes on serving other tasks meanwhile.
//!     spawn_blocking(|| std::fs::read_to_string("/proc/self/stat").map(|s| s.len()))
//!         .await
//!         .unwrap() // a panic in the closure, or a cancellation of this task
//! });
//! assert!(text.unwrap() > 0);
//! ```
//!
//! # The pool
//!
//! The process-wide pool is created by the first [`spawn_blocking`]. It starts a thread for a
//! job only when no thread is idle, up to a cap (64 by default; [`set_max_blocking_threads`]
//! changes it once, before the first job). Beyond the cap, jobs wait in a FIFO queue and run in
//! the order they were spawned. A thread that has found no job for 10 seconds exits, so an idle
//! process holds no pool threads. [`BlockingPool`] builds a private pool with its own cap and
//! idle timeout (to keep, say, slow disk reads from starving DNS lookups).
//!
//! # Cancellation: the closure always runs to completion
//!
//! A thread cannot be interrupted, so cancelling never stops the closure. Awaiting a
//! [`BlockingTask`] is a cancellation point like every runtime await: if the task awaiting it
//! is cancelled, the await resolves at once to `Err(TaskError::Cancelled(..))` while the
//! closure runs on to completion on its thread and its value is dropped there (asyncio's
//! `run_in_executor` future behaves the same: cancelling it does not stop the executor job).
//! Dropping a [`BlockingTask`] detaches the job in the same way. If the closure has already
//! returned when the cancellation arrives, its value is delivered (nothing is lost) and the
//! request waits for the task's next await.
//!
//! # Executors
//!
//! Nothing here needs a running runtime: [`spawn_blocking`] can be called anywhere, and a
//! [`BlockingTask`] can be awaited by any executor (it is `Send` when `T` is). The job wakes the
//! awaiting task through its [`Waker`] from the pool thread; a ringloop waker moves the wake to
//! the task's own loop. Cancellation requests are ringloop's, so only a ringloop task can
//! cancel an await.

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::{Duration, Instant};

use crate::task::awaiting::{self, Leaf};
use crate::task::cancel::take_cancel_if;
use crate::task::TaskError;

/// Threads of the process-wide pool unless [`set_max_blocking_threads`] says otherwise.
pub const DEFAULT_MAX_THREADS: usize = 64;

/// How long a pool thread waits for a job before it exits (by default).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The name of pool threads (it shows in `top -H`, panic messages and debuggers).
const THREAD_NAME: &str = "ringloop-blocking";

/// The process-wide pool behind [`spawn_blocking`], created by the first call (or by
/// [`set_max_blocking_threads`]).
static GLOBAL: OnceLock<BlockingPool> = OnceLock::new();

/// Runs `f` on the process-wide blocking pool and returns a future for its value (asyncio's
/// `loop.run_in_executor(None, f)`).
///
/// The future resolves to `Ok(value)`, to `Err(TaskError::Panicked(payload))` if `f` panicked
/// (the pool thread survives), or to `Err(TaskError::Cancelled(..))` if the ringloop task
/// awaiting it was cancelled first; in that case, and when the [`BlockingTask`] is dropped, `f`
/// still runs to completion and its value is dropped on the pool thread. See the
/// [module docs](self).
///
/// Callable from anywhere, a ringloop task or not; never panics. In the rare case where the OS
/// refuses to start a thread and no pool thread is alive to run the job later, the future
/// resolves to `Err(TaskError::Panicked(..))` whose payload is a `String` saying so: the job
/// failed before it could run.
pub fn spawn_blocking<F, T>(f: F) -> BlockingTask<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    global().spawn(f)
}

/// Sets how many threads the process-wide pool of [`spawn_blocking`] may run at once (64 by
/// default). The cap is fixed once: call this before the first [`spawn_blocking`] of the
/// process, typically first thing in `main`.
///
/// ```
/// use ringloop_runtime::blocking::set_max_blocking_threads;
///
/// set_max_blocking_threads(8).unwrap();
/// // The cap is fixed now: a second call is refused.
/// assert!(set_max_blocking_threads(16).is_err());
/// ```
///
/// # Errors
/// * [`InvalidInput`](io::ErrorKind::InvalidInput) when `n` is 0.
/// * [`AlreadyExists`](io::ErrorKind::AlreadyExists) when the pool is already configured:
///   by an earlier call, or by a [`spawn_blocking`] that started it with the default cap.
pub fn set_max_blocking_threads(n: usize) -> io::Result<()> {
    if n == 0 {
        return Err(zero_threads());
    }
    let mut fresh = false;
    GLOBAL.get_or_init(|| {
        fresh = true;
        BlockingPool::with_config(n, DEFAULT_IDLE_TIMEOUT)
    });
    if fresh {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the process-wide blocking pool is already configured or running: call \
             set_max_blocking_threads before the first spawn_blocking",
        ))
    }
}

fn global() -> &'static BlockingPool {
    GLOBAL.get_or_init(|| BlockingPool::with_config(DEFAULT_MAX_THREADS, DEFAULT_IDLE_TIMEOUT))
}

fn zero_threads() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "a blocking pool needs at least one thread",
    )
}

/// Locks `m`, ignoring poisoning: the pool's state is only changed in short sections that
/// cannot panic (jobs run outside the lock), so a poisoned lock still holds consistent state.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// The pool
// ---------------------------------------------------------------------------------------------

/// A pool of threads for blocking work. [`spawn_blocking`] uses a process-wide one; build a
/// private one with [`BlockingPool::builder`] to give some kind of work its own cap.
///
/// Cloning gives another handle to the same pool. Threads hold the pool's state alive: once
/// every handle is dropped, queued jobs still run, and the threads exit after their idle
/// timeout.
///
/// ```
/// use ringloop_runtime::blocking::BlockingPool;
/// use ringloop_runtime::Runtime;
///
/// let disk = BlockingPool::builder().max_threads(4).build().unwrap();
/// let rt = Runtime::new().unwrap();
/// let n = rt.block_on(disk.spawn(|| 6 * 7)).unwrap();
/// assert_eq!(n, 42);
/// assert!(disk.threads() <= 4);
/// ```
#[derive(Clone)]
pub struct BlockingPool {
    shared: Arc<Shared>,
}

/// Builds a [`BlockingPool`]; from [`BlockingPool::builder`].
#[derive(Clone, Debug)]
pub struct PoolBuilder {
    max_threads: usize,
    idle_timeout: Duration,
}

impl PoolBuilder {
    /// At most `n` threads run jobs at once (default 64); more jobs wait in a FIFO queue.
    pub fn max_threads(mut self, n: usize) -> Self {
        self.max_threads = n;
        self
    }

    /// A thread that finds no job for this long exits (default 10 s).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Creates the pool. No thread starts until the first job.
    ///
    /// # Errors
    /// [`InvalidInput`](io::ErrorKind::InvalidInput) when `max_threads` is 0.
    pub fn build(self) -> io::Result<BlockingPool> {
        if self.max_threads == 0 {
            return Err(zero_threads());
        }
        Ok(BlockingPool::with_config(
            self.max_threads,
            self.idle_timeout,
        ))
    }
}

struct Shared {
    state: Mutex<State>,
    /// Idle threads wait here for a job.
    job_ready: Condvar,
    max_threads: usize,
    idle_timeout: Duration,
}

/// The pool's bookkeeping, under `Shared::state`.
///
/// Invariants (all changed under the lock):
/// * `threads` counts threads started and not yet exited (a thread being started counts), and
///   never exceeds `max_threads`;
/// * `idle` counts threads waiting on `job_ready` that nobody has claimed; `notified` counts
///   claims: a spawner that finds an idle thread moves it from `idle` to `notified` and pushes
///   its job, and the first waiting thread to see `notified > 0` takes the claim. So a job is
///   never left queued while a claimed thread exists to run it, and a thread that times out
///   while claimed runs the job instead of exiting;
/// * a job is queued only while some thread will look at the queue again: a busy thread looks
///   after each job, a claimed thread at once; when no thread is alive and none can be started,
///   the queued jobs are failed instead (see `submit`).
struct State {
    queue: VecDeque<Box<dyn Job>>,
    threads: usize,
    idle: usize,
    notified: usize,
}

impl BlockingPool {
    /// A builder for a private pool (defaults: 64 threads, 10 s idle timeout).
    pub fn builder() -> PoolBuilder {
        PoolBuilder {
            max_threads: DEFAULT_MAX_THREADS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }

    fn with_config(max_threads: usize, idle_timeout: Duration) -> BlockingPool {
        BlockingPool {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    threads: 0,
                    idle: 0,
                    notified: 0,
                }),
                job_ready: Condvar::new(),
                max_threads,
                idle_timeout,
            }),
        }
    }

    /// Runs `f` on this pool; see [`spawn_blocking`], which does the same on the process-wide
    /// pool.
    pub fn spawn<F, T>(&self, f: F) -> BlockingTask<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let slot = Arc::new(Mutex::new(Slot {
            outcome: None,
            waker: None,
            detached: false,
        }));
        self.submit(Box::new(JobCell {
            f,
            slot: slot.clone(),
        }));
        BlockingTask { slot: Some(slot) }
    }

    /// The most threads this pool runs at once.
    pub fn max_threads(&self) -> usize {
        self.shared.max_threads
    }

    /// Threads alive now, busy or idle (never more than [`max_threads`](Self::max_threads)).
    pub fn threads(&self) -> usize {
        lock(&self.shared.state).threads
    }

    /// Threads alive now that are waiting for a job.
    pub fn idle_threads(&self) -> usize {
        let st = lock(&self.shared.state);
        st.idle + st.notified
    }

    /// Jobs waiting for a thread.
    pub fn queued(&self) -> usize {
        lock(&self.shared.state).queue.len()
    }

    fn submit(&self, job: Box<dyn Job>) {
        let shared = &self.shared;
        let mut st = lock(&shared.state);
        if st.idle > 0 {
            // Claim an idle thread for this job.
            st.idle -= 1;
            st.notified += 1;
            st.queue.push_back(job);
            drop(st);
            shared.job_ready.notify_one();
            return;
        }
        if st.threads >= shared.max_threads {
            // Every thread is busy: the job waits its turn (FIFO).
            st.queue.push_back(job);
            return;
        }
        // Start a thread. The job goes into the queue first and the new thread takes the
        // queue's front: `thread::Builder::spawn` drops its closure when it fails, and a job
        // moved into it would be lost with it.
        st.threads += 1;
        st.queue.push_back(job);
        drop(st);
        let worker = shared.clone();
        let started = thread::Builder::new()
            .name(THREAD_NAME.to_owned())
            .spawn(move || work(&worker));
        if let Err(e) = started {
            let mut st = lock(&shared.state);
            st.threads -= 1;
            if st.threads > 0 {
                // Some thread is alive and will look at the queue after its job, or now if it
                // is idle and we claim it.
                if st.idle > 0 {
                    st.idle -= 1;
                    st.notified += 1;
                    drop(st);
                    shared.job_ready.notify_one();
                }
            } else {
                // No thread exists and none could be started: nobody would ever run these.
                let stranded: Vec<Box<dyn Job>> = st.queue.drain(..).collect();
                drop(st);
                let why = format!("ringloop: could not start a blocking-pool thread: {e}");
                for job in stranded {
                    job.abandon(why.clone());
                }
            }
        }
    }
}

impl fmt::Debug for BlockingPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = lock(&self.shared.state);
        f.debug_struct("BlockingPool")
            .field("max_threads", &self.shared.max_threads)
            .field("threads", &st.threads)
            .field("idle", &(st.idle + st.notified))
            .field("queued", &st.queue.len())
            .finish()
    }
}

/// A pool thread: runs queued jobs, then waits for a claim until its idle timeout, then exits.
fn work(shared: &Shared) {
    let mut job = None;
    loop {
        if let Some(j) = job.take() {
            run_job(j);
        }
        let mut st = lock(&shared.state);
        if let Some(j) = st.queue.pop_front() {
            job = Some(j);
            continue;
        }
        st.idle += 1;
        let deadline = Instant::now() + shared.idle_timeout;
        loop {
            if st.notified > 0 {
                // Claimed by a spawner (the spawner already took us out of `idle`).
                st.notified -= 1;
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                st.idle -= 1;
                if !st.queue.is_empty() {
                    // Unclaimed queued work (see `State`): run it rather than leave it behind.
                    break;
                }
                st.threads -= 1;
                return;
            }
            st = shared
                .job_ready
                .wait_timeout(st, deadline - now)
                .map(|(st, _)| st)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        // A claim, or work found at the timeout. A busy thread may have taken the claimed job
        // already; then the queue is empty and this thread goes back to waiting.
        job = st.queue.pop_front();
    }
}

/// Runs a job; nothing a job does (a panicking `Drop` of its value, a panicking waker) may
/// end the pool thread, or `threads` would count a thread that no longer exists.
fn run_job(job: Box<dyn Job>) {
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(move || job.run())) {
        // Dropping a payload can panic too; such a payload is leaked instead.
        if let Err(again) = panic::catch_unwind(AssertUnwindSafe(move || drop(payload))) {
            std::mem::forget(again);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Jobs and their results
// ---------------------------------------------------------------------------------------------

/// A type-erased job for the queue.
trait Job: Send {
    /// Runs the closure and delivers its outcome.
    fn run(self: Box<Self>);
    /// Delivers a failure without running the closure.
    fn abandon(self: Box<Self>, why: String);
}

type Outcome<T> = Result<T, Box<dyn Any + Send>>;

/// Where a job leaves its outcome for its [`BlockingTask`].
struct Slot<T> {
    /// The closure's value or panic payload, until the task takes it.
    outcome: Option<Outcome<T>>,
    /// The task waiting for it.
    waker: Option<Waker>,
    /// The task is gone (dropped, or cancelled): the outcome is dropped on arrival.
    detached: bool,
}

struct JobCell<F, T> {
    f: F,
    slot: Arc<Mutex<Slot<T>>>,
}

impl<F, T> JobCell<F, T> {
    fn deliver(slot: &Mutex<Slot<T>>, outcome: Outcome<T>) {
        let (waker, unwanted) = {
            let mut s = lock(slot);
            if s.detached {
                (None, Some(outcome))
            } else {
                s.outcome = Some(outcome);
                (s.waker.take(), None)
            }
        };
        // Outside the lock: dropping the value and waking run code of others.
        drop(unwanted);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<F, T> Job for JobCell<F, T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    fn run(self: Box<Self>) {
        let JobCell { f, slot } = *self;
        // Run even when the task is already detached: asyncio's executor runs a job it has
        // accepted whatever becomes of its future, and the closure's side effects may matter.
        let outcome = panic::catch_unwind(AssertUnwindSafe(f));
        Self::deliver(&slot, outcome);
    }

    fn abandon(self: Box<Self>, why: String) {
        let JobCell { f, slot } = *self;
        drop(f);
        Self::deliver(&slot, Err(Box::new(why)));
    }
}

/// The future of [`spawn_blocking`]: resolves to the closure's value, or to the
/// [`TaskError`] that says why there is none.
///
/// * `Ok(value)`: the closure returned.
/// * `Err(TaskError::Panicked(payload))`: the closure panicked (the payload is what `panic!`
///   was given), or in the rare case documented on [`spawn_blocking`] it could not be started.
/// * `Err(TaskError::Cancelled(..))`: the ringloop task awaiting this was cancelled; the
///   closure runs on to completion on its thread, and its value is dropped there.
///
/// Dropping a `BlockingTask` detaches the job: it runs to completion and its value is dropped
/// on the pool thread. Polling it again after it resolved returns `Pending` forever.
#[must_use = "the closure runs anyway; await the task for its value"]
pub struct BlockingTask<T> {
    /// `None` once the outcome was taken (or the await was cancelled).
    slot: Option<Arc<Mutex<Slot<T>>>>,
}

impl<T> BlockingTask<T> {
    /// Whether the closure has returned (or panicked) and its outcome waits to be awaited.
    pub fn is_finished(&self) -> bool {
        self.slot
            .as_ref()
            .is_some_and(|slot| lock(slot).outcome.is_some())
    }
}

impl<T> Future for BlockingTask<T> {
    type Output = Result<T, TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(slot) = self.slot.as_ref() else {
            // Already resolved: a future may do anything here but be unsound; we wait forever
            // rather than panic.
            return Poll::Pending;
        };
        let mut s = lock(slot);
        // A value that is ready wins over a cancellation (nothing is lost; the request stays
        // for the task's next await), as with every runtime future.
        if let Some(outcome) = s.outcome.take() {
            drop(s);
            self.slot = None;
            return Poll::Ready(outcome.map_err(TaskError::Panicked));
        }
        // Checked under the slot's lock, so the job either sees `detached` and drops its value,
        // or has not delivered yet and will find the waker below.
        // Waiting already (a waker registered): a request delivered to another branch of the
        // task in this poll reaches this one too.
        if let Some(c) = take_cancel_if(s.waker.is_some()) {
            s.detached = true;
            let waker = s.waker.take();
            drop(s);
            drop(waker);
            self.slot = None;
            return Poll::Ready(Err(TaskError::Cancelled(c)));
        }
        let new = s.waker.is_none();
        let old = match &mut s.waker {
            Some(w) if w.will_wake(cx.waker()) => None,
            w => w.replace(cx.waker().clone()),
        };
        drop(s);
        drop(old); // outside the lock: dropping a waker runs its executor's code
        awaiting::note(Leaf::BLOCKING, new);
        Poll::Pending
    }
}

impl<T> Drop for BlockingTask<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            let (waker, outcome) = {
                let mut s = lock(&slot);
                s.detached = true;
                (s.waker.take(), s.outcome.take())
            };
            drop(waker);
            drop(outcome);
        }
    }
}

impl<T> fmt::Debug for BlockingTask<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.slot {
            None => "resolved",
            Some(slot) if lock(slot).outcome.is_some() => "finished",
            Some(_) => "running",
        };
        f.debug_struct("BlockingTask")
            .field("state", &state)
            .finish()
    }
}
