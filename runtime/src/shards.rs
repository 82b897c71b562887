//! Thread-per-core: N runtimes, one per thread, started from one builder ([`Shards`]).
//!
//! Each shard is an ordinary ringloop runtime on a thread of its own, pinned to a CPU (or not,
//! see [`Placement`]). Nothing is shared between shards on the hot path: a shard's tasks,
//! timers, ring and buffer pool are its own, so handlers keep using `Rc` and `RefCell`. The
//! *factory* is what crosses threads: a `Send + Clone` closure, called once on every shard's
//! thread with that shard's [`Shard`] description, returning the shard's main future (which
//! may be `!Send`).
//!
//! ```
//! use ringloop_runtime::{sleep, Placement, Shards};
//! use std::rc::Rc;
//! use std::time::Duration;
//!
//! let shards = Shards::builder()
//!     .count(2)
//!     .placement(Placement::Unpinned)
//!     .start(|shard| async move {
//!         let local = Rc::new(shard.index()); // !Send state stays on its shard
//!         sleep(Duration::from_millis(1)).await.unwrap();
//!         *local * 10
//!     })
//!     .unwrap();
//! assert_eq!(shards.join().unwrap(), vec![0, 10]);
//! ```
//!
//! # Stopping
//!
//! [`Shards::stop`] (or a [`Stopper`], from any thread, or a signal with
//! [`Shards::stop_on_signals`]) cancels every shard's main task the asyncio way: it sees
//! [`Cancelled`](crate::Cancelled) at its next await and may answer before it ends (a server
//! shuts down gracefully there). Then each runtime is dropped, which cancels and drains every
//! task left and completes every op still in flight before its ring goes (see
//! [`Runtime`](crate::Runtime)'s drop and [`Builder::shutdown_timeout`]).
//!
//! [`ShardsBuilder::start`] returns once every main task has started (been polled once), so a
//! stop always finds them at an await. Only a shard that fails while the others start can stop
//! a main task that has not run yet; such a task never runs (a task cancelled before it starts
//! never does, as in asyncio) and [`Shards::join`] reports it as stopped.
//!
//! A shard whose main task panics, or that fails to start, stops the others the same way; its
//! [`ShardError`] names its index.
//!
//! # Crossing between shards
//!
//! Every shard has a [`Handle`] (`Send + Clone`): [`Shard::handle`] inside a shard,
//! [`Shards::handle`] outside. [`Handle::spawn`] runs a `Send` closure's future on that shard
//! and gives back a [`RemoteTask`](crate::RemoteTask) to await from another shard or wait on
//! from a plain thread.
//!
//! Streams of messages between shards go through a [`sync::mpsc`](crate::sync::mpsc) channel:
//! bounded, any number of `Clone` senders on any shards or threads, one receiver. Each sender's
//! messages arrive in order, nothing is lost on a cancelled `recv` or `send`, and the channel
//! closes for the receiver when every sender is gone. A send that wakes a receiver parked on
//! another io_uring shard does so through the rings (an `IORING_OP_MSG_RING` from the sending
//! shard's ring, submitted when the sending task's poll ends; see
//! [`Builder::msg_ring_wakes`](crate::Builder::msg_ring_wakes)), and a burst of sends to a
//! parked shard wakes it once ([`RuntimeStats::unparks`]).
//!
//! ```
//! use ringloop_runtime::sync::mpsc;
//! use ringloop_runtime::{Placement, Shards};
//! use std::sync::{Arc, Mutex};
//!
//! // Shard 0 sums what shards 1 and 2 send it. Each shard takes its end by its index: the
//! // receiver, or a sender of its own (none is kept here, so once the two senders are done,
//! // the channel closes).
//! let (tx, rx) = mpsc::channel::<u64>(64);
//! let ends = vec![(None, Some(rx)), (Some(tx.clone()), None), (Some(tx), None)];
//! let ends = Arc::new(Mutex::new(ends));
//! let shards = Shards::builder()
//!     .count(3)
//!     .placement(Placement::Unpinned)
//!     .start(move |shard| {
//!         let (tx, rx) = std::mem::take(&mut ends.lock().unwrap()[shard.index()]);
//!         async move {
//!             if let Some(tx) = tx {
//!                 for n in 1..=100 {
//!                     tx.send(n).await.unwrap();
//!                 }
//!                 return 0;
//!             }
//!             let mut rx = rx.unwrap();
//!             let mut sum = 0;
//!             while let Ok(n) = rx.recv().await {
//!                 sum += n;
//!             }
//!             sum // every sender is gone
//!         }
//!     })
//!     .unwrap();
//! assert_eq!(shards.join().unwrap(), vec![10_100, 0, 0]);
//! ```

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::thread::{self, JoinHandle};

use crate::runtime::{Builder, Handle};
use crate::stats::RuntimeStats;
use crate::task::{panic_message, spawn, Task, TaskError, TaskTree};

/// Where the shards' threads run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Placement {
    /// One shard per CPU this process may run on (its affinity mask), spread evenly over them
    /// when there are fewer shards than CPUs; each thread pinned to its CPU. The default.
    #[default]
    Spread,
    /// Shard `i` pinned to CPU `cpus[i % cpus.len()]`; by default as many shards as CPUs listed.
    Cpus(Vec<usize>),
    /// No pinning: the scheduler places the threads (as many shards as CPUs by default).
    Unpinned,
}

impl Placement {
    /// The CPU each of `count` shards is pinned to under this placement, by shard index, as
    /// [`ShardsBuilder::start`] pins them; `None` for [`Placement::Unpinned`]. Known before the
    /// shards start, so a listener group can steer each connection to the shard on the CPU
    /// that received it.
    ///
    /// ```
    /// use ringloop_runtime::Placement;
    ///
    /// let cpus = Placement::Cpus(vec![2, 3]).shard_cpus(4).unwrap();
    /// assert_eq!(cpus, Some(vec![2, 3, 2, 3]));
    /// assert_eq!(Placement::Unpinned.shard_cpus(4).unwrap(), None);
    /// ```
    ///
    /// # Errors
    /// As [`ShardsBuilder::start`]: `Cpus` with no CPU, or the affinity mask cannot be read.
    pub fn shard_cpus(&self, count: usize) -> io::Result<Option<Vec<usize>>> {
        Ok(self
            .cpu_list()?
            .map(|cpus| (0..count).map(|i| place(&cpus, i, count)).collect()))
    }

    /// The CPUs to place on, in order; `None` for unpinned shards.
    fn cpu_list(&self) -> io::Result<Option<Vec<usize>>> {
        match self {
            Placement::Unpinned => Ok(None),
            Placement::Cpus(cpus) if cpus.is_empty() => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "Placement::Cpus needs at least one CPU",
            )),
            Placement::Cpus(cpus) => Ok(Some(cpus.clone())),
            Placement::Spread => allowed_cpus().map(Some),
        }
    }
}

/// A builder for a set of [`Shards`]: how many, where they run, their thread names and each
/// shard's runtime options.
pub struct ShardsBuilder {
    count: Option<usize>,
    placement: Placement,
    name: String,
    runtime: Arc<dyn Fn(usize) -> Builder + Send + Sync>,
}

impl fmt::Debug for ShardsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardsBuilder")
            .field("count", &self.count)
            .field("placement", &self.placement)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Default for ShardsBuilder {
    fn default() -> Self {
        ShardsBuilder {
            count: None,
            placement: Placement::Spread,
            name: "ringloop-shard".to_owned(),
            runtime: Arc::new(|_| Builder::new()),
        }
    }
}

impl ShardsBuilder {
    /// How many shards (threads) to start. Default: one per CPU of the placement (see
    /// [`Placement`]).
    pub fn count(mut self, shards: usize) -> Self {
        self.count = Some(shards);
        self
    }

    /// Where the threads run; default [`Placement::Spread`].
    pub fn placement(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    /// The threads' name prefix: shard `i`'s thread is `"{prefix}-{i}"` (default
    /// `ringloop-shard`; Linux shows the first 15 bytes).
    pub fn thread_name(mut self, prefix: impl Into<String>) -> Self {
        self.name = prefix.into();
        self
    }

    /// Each shard's runtime options: `builder(i)` is called on shard `i`'s thread (a
    /// [`Builder`] may hold a `!Send` exception handler, so it is made there).
    ///
    /// ```
    /// use ringloop_runtime::{Backend, Placement, Runtime, Shards};
    ///
    /// let shards = Shards::builder()
    ///     .count(2)
    ///     .placement(Placement::Unpinned)
    ///     .runtime(|_shard| Runtime::builder().backend(Backend::Epoll).buffer_pool(64, 2048))
    ///     .start(|_| async { ringloop_runtime::current_backend() })
    ///     .unwrap();
    /// assert_eq!(shards.join().unwrap(), vec![Backend::Epoll; 2]);
    /// ```
    pub fn runtime(mut self, builder: impl Fn(usize) -> Builder + Send + Sync + 'static) -> Self {
        self.runtime = Arc::new(builder);
        self
    }

    /// Starts the shards: on each thread, builds the runtime, then (once every shard is ready)
    /// calls `factory` with the shard's [`Shard`] and runs the future it returns as the shard's
    /// main task. Returns once every main task has started (been polled once).
    ///
    /// # Errors
    /// If there are no CPUs to place on, a thread cannot be started or pinned, or a runtime
    /// cannot be built (or its builder panics): the shards already started are stopped and
    /// joined, and the error names the shard.
    pub fn start<F, Fut>(self, factory: F) -> io::Result<Shards<Fut::Output>>
    where
        F: Fn(Shard) -> Fut + Send + Clone + 'static,
        Fut: Future + 'static,
        Fut::Output: Send + 'static,
    {
        let cpus = self.placement.cpu_list()?;
        let count = match (self.count, &cpus) {
            (Some(0), _) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a set of shards needs at least one shard",
                ))
            }
            (Some(n), _) => n,
            (None, Some(cpus)) => cpus.len(),
            (None, None) => allowed_cpus()?.len(),
        };
        let stops: Arc<[ShardStop]> = (0..count).map(|_| ShardStop::default()).collect();
        let stopper = Stopper {
            stops: stops.clone(),
        };
        let mut threads = Vec::with_capacity(count);
        let mut handles = Vec::with_capacity(count);
        let mut go = Vec::with_capacity(count);
        let (started_tx, started_rx) = mpsc::channel::<()>();
        let mut failure = None;
        for index in 0..count {
            let cpu = cpus.as_ref().map(|c| place(c, index, count));
            let (ready_tx, ready_rx) = mpsc::sync_channel(1);
            let (go_tx, go_rx) = mpsc::sync_channel::<Option<Arc<[Handle]>>>(1);
            let start = ShardStart {
                index,
                count,
                cpu,
                runtime: self.runtime.clone(),
                factory: factory.clone(),
                stopper: stopper.clone(),
                started: started_tx.clone(),
            };
            let spawned = thread::Builder::new()
                .name(format!("{}-{index}", self.name))
                .spawn(move || start.run(ready_tx, go_rx));
            let thread = match spawned {
                Ok(t) => t,
                Err(e) => {
                    failure = Some(shard_io_error(index, "could not start its thread", e));
                    break;
                }
            };
            match ready_rx.recv() {
                Ok(Ok(handle)) => {
                    handles.push(handle);
                    go.push(go_tx);
                    threads.push(Some(thread));
                }
                Ok(Err(e)) => {
                    let _ = thread.join();
                    failure = Some(e);
                    break;
                }
                Err(mpsc::RecvError) => {
                    let why = match thread.join() {
                        Err(payload) => format!(
                            "panicked while starting: {}",
                            panic_message(&*payload).unwrap_or("<non-string payload>")
                        ),
                        Ok(_) => "ended before its runtime was ready".to_owned(),
                    };
                    failure = Some(io::Error::other(format!("shard {index} {why}")));
                    break;
                }
            }
        }
        if let Some(e) = failure {
            // The ones that started wait for the word to go: tell them not to, and join them.
            for tx in go {
                let _ = tx.send(None);
            }
            for t in threads.into_iter().flatten() {
                let _ = t.join();
            }
            return Err(e);
        }
        let handles: Arc<[Handle]> = handles.into();
        for tx in go {
            let _ = tx.send(Some(handles.clone()));
        }
        // Every main task has been polled once before this returns, so a stop from here on
        // reaches each of them at an await (a task cancelled before it starts never runs). A
        // shard that ends first drops its sender instead.
        drop(started_tx);
        for _ in 0..count {
            if started_rx.recv().is_err() {
                break;
            }
        }
        Ok(Shards {
            threads,
            handles,
            stopper,
        })
    }
}

/// Shard `index` of `count` on `cpus`: evenly spread when there are more CPUs than shards,
/// round robin when there are fewer.
fn place(cpus: &[usize], index: usize, count: usize) -> usize {
    if count <= cpus.len() {
        cpus[index * cpus.len() / count]
    } else {
        cpus[index % cpus.len()]
    }
}

/// The CPUs this thread may run on (its affinity mask), in order.
fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live cpu_set_t of the size passed; pid 0 is this thread.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, the set's capacity.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    if cpus.is_empty() {
        return Err(io::Error::other("this process may run on no CPU"));
    }
    Ok(cpus)
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("CPU {cpu} is beyond what the kernel's affinity mask can name"),
        ));
    }
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a live cpu_set_t of the size passed; pid 0 is this thread.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn shard_io_error(index: usize, what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("shard {index} {what}: {e}"))
}

/// What a shard's thread needs to start.
struct ShardStart<F> {
    index: usize,
    count: usize,
    cpu: Option<usize>,
    runtime: Arc<dyn Fn(usize) -> Builder + Send + Sync>,
    factory: F,
    stopper: Stopper,
    /// Told when the main task is first polled.
    started: mpsc::Sender<()>,
}

impl<F, Fut> ShardStart<F>
where
    F: Fn(Shard) -> Fut,
    Fut: Future + 'static,
{
    /// The shard's thread: build, report ready, wait for every shard, run the main task.
    fn run(
        self,
        ready: mpsc::SyncSender<io::Result<Handle>>,
        go: mpsc::Receiver<Option<Arc<[Handle]>>>,
    ) -> Result<Fut::Output, ShardError> {
        let index = self.index;
        if let Some(cpu) = self.cpu {
            if let Err(e) = pin_to(cpu) {
                let _ = ready.send(Err(shard_io_error(
                    index,
                    &format!("could not be pinned to CPU {cpu}"),
                    e,
                )));
                return Err(ShardError::new(index, ShardErrorKind::Start));
            }
        }
        // A panicking builder ends the thread before it reports: `start` sees the closed
        // channel and joins the panic.
        let rt = match (self.runtime)(index).build() {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready.send(Err(shard_io_error(index, "could not build its runtime", e)));
                return Err(ShardError::new(index, ShardErrorKind::Start));
            }
        };
        let _ = ready.send(Ok(rt.handle()));
        let Ok(Some(handles)) = go.recv() else {
            // Another shard failed to start.
            return Err(ShardError::new(index, ShardErrorKind::Start));
        };
        let shard = Shard {
            index,
            count: self.count,
            cpu: self.cpu,
            handles,
            stopper: self.stopper.clone(),
        };
        let stop = &self.stopper.stops[index];
        let factory = self.factory;
        let started = self.started;
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            rt.block_on(async move {
                let future = factory(shard);
                let main = spawn(async move {
                    let _ = started.send(());
                    drop(started);
                    future.await
                });
                MainTask {
                    main,
                    stop,
                    cancelled: false,
                }
                .await
            })
        }));
        // The runtime goes here, on its thread: every task cancelled and drained, every op
        // completed before the ring is closed.
        let dropped = panic::catch_unwind(AssertUnwindSafe(|| drop(rt)));
        let result = match outcome {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(TaskError::Cancelled(_))) => {
                Err(ShardError::new(index, ShardErrorKind::Stopped))
            }
            Ok(Err(e)) => Err(ShardError::new(
                index,
                match e.try_into_panic() {
                    Ok(payload) => ShardErrorKind::Panicked(payload),
                    Err(_) => ShardErrorKind::Stopped,
                },
            )),
            Err(payload) => Err(ShardError::new(index, ShardErrorKind::Panicked(payload))),
        };
        let result = match (result, dropped) {
            (Ok(v), Err(payload)) => {
                drop(v);
                Err(ShardError::new(index, ShardErrorKind::Panicked(payload)))
            }
            (r, _) => r,
        };
        if let Err(e) = &result {
            if !matches!(e.kind, ShardErrorKind::Stopped) {
                // One shard failed: the others are stopped cleanly.
                self.stopper.stop();
            }
        }
        result
    }
}

/// Awaits the shard's main task; on a stop request, cancels it (once) and goes on awaiting it.
struct MainTask<'a, T> {
    main: Task<T>,
    stop: &'a ShardStop,
    cancelled: bool,
}

impl<T> Future for MainTask<'_, T> {
    type Output = Result<T, TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if !self.cancelled {
            // Registered before the flag is read: a stop after the read wakes this waker.
            self.stop.register(cx.waker());
            if self.stop.requested.load(Ordering::Acquire) {
                self.cancelled = true;
                self.main.cancel_with("the shards are stopping");
            }
        }
        Pin::new(&mut self.main).poll(cx)
    }
}

/// One shard's stop flag and the waker of its main await.
#[derive(Default)]
struct ShardStop {
    requested: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl ShardStop {
    fn register(&self, waker: &Waker) {
        let mut w = self.waker.lock().unwrap_or_else(PoisonError::into_inner);
        match &*w {
            Some(old) if old.will_wake(waker) => {}
            _ => *w = Some(waker.clone()),
        }
    }

    fn request(&self) {
        self.requested.store(true, Ordering::Release);
        let waker = self
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // A ringloop task's waker is `Send`: it wakes the task through its own loop.
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Stops every shard of a set, from any thread (`Send + Sync + Clone`); see
/// [Stopping](self#stopping).
#[derive(Clone)]
pub struct Stopper {
    stops: Arc<[ShardStop]>,
}

impl fmt::Debug for Stopper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stopper")
            .field("shards", &self.stops.len())
            .field("stopping", &self.is_stopping())
            .finish()
    }
}

impl Stopper {
    /// Asks every shard to stop: each main task is cancelled at its next await. Returns at
    /// once; [`Shards::join`] waits for the end. Calling it again does nothing more.
    pub fn stop(&self) {
        for s in self.stops.iter() {
            s.request();
        }
    }

    /// Whether a stop was asked for.
    pub fn is_stopping(&self) -> bool {
        self.stops
            .iter()
            .any(|s| s.requested.load(Ordering::Acquire))
    }
}

/// What a shard's factory learns about its shard.
#[derive(Clone, Debug)]
pub struct Shard {
    index: usize,
    count: usize,
    cpu: Option<usize>,
    handles: Arc<[Handle]>,
    stopper: Stopper,
}

impl Shard {
    /// This shard's index, `0..count()`.
    pub fn index(&self) -> usize {
        self.index
    }

    /// How many shards the set has.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The CPU this shard's thread is pinned to; `None` when unpinned.
    pub fn cpu(&self) -> Option<usize> {
        self.cpu
    }

    /// Shard `index`'s handle (this shard's own is `handle(self.index())`).
    ///
    /// # Panics
    /// If `index >= count()`.
    pub fn handle(&self, index: usize) -> &Handle {
        &self.handles[index]
    }

    /// Every shard's handle, by index.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// Stops the whole set (see [Stopping](self#stopping)).
    pub fn stopper(&self) -> &Stopper {
        &self.stopper
    }
}

/// A running set of shards: one runtime per thread. Created by [`Shards::builder`].
///
/// Dropping it stops the shards and joins their threads (results are dropped).
pub struct Shards<T> {
    threads: Vec<Option<JoinHandle<Result<T, ShardError>>>>,
    handles: Arc<[Handle]>,
    stopper: Stopper,
}

impl<T> fmt::Debug for Shards<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shards")
            .field("count", &self.handles.len())
            .field("stopper", &self.stopper)
            .finish()
    }
}

impl Shards<()> {
    /// A builder for a set of shards.
    pub fn builder() -> ShardsBuilder {
        ShardsBuilder::default()
    }
}

impl<T> Shards<T> {
    /// How many shards run.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether the set is empty (never: a set has at least one shard).
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Shard `index`'s handle, to spawn work on it or stop it.
    ///
    /// # Panics
    /// If `index >= len()`.
    pub fn handle(&self, index: usize) -> &Handle {
        &self.handles[index]
    }

    /// Every shard's handle, by index.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// A `Send + Sync` handle that stops the whole set.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Asks every shard to stop (see [Stopping](self#stopping)); [`join`](Self::join) waits.
    pub fn stop(&self) {
        self.stopper.stop();
    }

    /// Stops the set on the first `SIGTERM` or `SIGINT`. The listeners are registered (on
    /// shard 0) before this returns, so a signal from then on is never missed; they live until
    /// that shard ends.
    ///
    /// # Errors
    /// If the listeners cannot be registered, or shard 0 has already ended.
    pub fn stop_on_signals(&self) -> io::Result<()> {
        use crate::signal::{signal, SignalKind};
        let stopper = self.stopper.clone();
        let registered = self.handles[0].spawn(move || async move {
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            // Detached: it lives as long as shard 0's runtime, and ends cancelled with it.
            drop(spawn(async move {
                let first = poll_either(&mut term, &mut int).await;
                if first.is_ok() {
                    stopper.stop();
                }
            }));
            Ok::<(), io::Error>(())
        });
        registered
            .wait()
            .map_err(|e| io::Error::other(format!("could not reach shard 0: {e}")))?
    }

    /// Each shard's stats (by index) and their sum; asked of every shard through its loop.
    ///
    /// # Errors
    /// If a shard has ended.
    pub fn stats(&self) -> io::Result<ShardStats> {
        let per_shard = self.ask_each(|| async { crate::runtime::current_stats() })?;
        let mut total = RuntimeStats::default();
        for s in &per_shard {
            total.add(s);
        }
        Ok(ShardStats { per_shard, total })
    }

    /// Each shard's task tree, by index.
    ///
    /// # Errors
    /// If a shard has ended.
    pub fn task_trees(&self) -> io::Result<Vec<TaskTree>> {
        self.ask_each(|| async { crate::runtime::task_tree() })
    }

    /// Runs `make`'s future on every shard and waits for each result, in index order.
    fn ask_each<R, F, Fut>(&self, make: F) -> io::Result<Vec<R>>
    where
        F: FnOnce() -> Fut + Send + Clone + 'static,
        Fut: Future<Output = R> + 'static,
        R: Send + 'static,
    {
        let asks: Vec<_> = self.handles.iter().map(|h| h.spawn(make.clone())).collect();
        asks.into_iter()
            .enumerate()
            .map(|(i, a)| {
                a.wait()
                    .map_err(|e| io::Error::other(format!("could not reach shard {i}: {e}")))
            })
            .collect()
    }

    /// Waits for every shard to end (without stopping them) and gives back each main task's
    /// output, by index; the first error (by index) if any shard failed or was stopped before
    /// its main task finished.
    ///
    /// Call it from a plain thread: it blocks.
    pub fn join(self) -> Result<Vec<T>, ShardError> {
        self.join_all().into_iter().collect()
    }

    /// [`join`](Self::join), with every shard's own result.
    pub fn join_all(mut self) -> Vec<Result<T, ShardError>> {
        let threads = std::mem::take(&mut self.threads);
        threads
            .into_iter()
            .enumerate()
            .map(|(index, t)| match t.map(JoinHandle::join) {
                Some(Ok(r)) => r,
                Some(Err(payload)) => {
                    Err(ShardError::new(index, ShardErrorKind::Panicked(payload)))
                }
                None => Err(ShardError::new(index, ShardErrorKind::Stopped)),
            })
            .collect()
    }
}

impl<T> Drop for Shards<T> {
    fn drop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        self.stopper.stop();
        for t in std::mem::take(&mut self.threads).into_iter().flatten() {
            if t.thread().id() != thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

/// Resolves with the first of two signals' `recv`s.
async fn poll_either(
    a: &mut crate::signal::Signal,
    b: &mut crate::signal::Signal,
) -> io::Result<()> {
    let mut fa = std::pin::pin!(a.recv());
    let mut fb = std::pin::pin!(b.recv());
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = fa.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        fb.as_mut().poll(cx)
    })
    .await
}

/// Every shard's [`RuntimeStats`] and their sum ([`Shards::stats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// By shard index.
    pub per_shard: Vec<RuntimeStats>,
    /// The sum over the shards.
    pub total: RuntimeStats,
}

/// Why a shard gave no result: its index and what happened.
pub struct ShardError {
    index: usize,
    kind: ShardErrorKind,
}

enum ShardErrorKind {
    /// It did not start (another shard's start failed, or its own; the start error went to
    /// [`ShardsBuilder::start`]).
    Start,
    /// Its main task ended cancelled: the set was stopped before it finished.
    Stopped,
    /// Its main task panicked (reported to its exception handler too), or its runtime did.
    Panicked(Box<dyn Any + Send>),
}

impl ShardError {
    fn new(index: usize, kind: ShardErrorKind) -> Self {
        ShardError { index, kind }
    }

    /// The shard's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Whether the shard was stopped before its main task finished (its main task ended
    /// cancelled).
    pub fn is_stopped(&self) -> bool {
        matches!(self.kind, ShardErrorKind::Stopped)
    }

    /// Whether the shard's main task (or its runtime) panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self.kind, ShardErrorKind::Panicked(_))
    }

    /// The panic's message, if it was a panic with a string payload.
    pub fn panic_message(&self) -> Option<&str> {
        match &self.kind {
            ShardErrorKind::Panicked(p) => panic_message(&**p),
            _ => None,
        }
    }

    /// The panic's payload, to resume it with [`std::panic::resume_unwind`].
    pub fn into_panic(self) -> Option<Box<dyn Any + Send>> {
        match self.kind {
            ShardErrorKind::Panicked(p) => Some(p),
            _ => None,
        }
    }
}

impl fmt::Display for ShardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = self.index;
        match &self.kind {
            ShardErrorKind::Start => write!(f, "shard {i} did not start"),
            ShardErrorKind::Stopped => write!(f, "shard {i} was stopped before it finished"),
            ShardErrorKind::Panicked(p) => write!(
                f,
                "shard {i} panicked: {}",
                panic_message(&**p).unwrap_or("<non-string payload>")
            ),
        }
    }
}

impl fmt::Debug for ShardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShardError({self})")
    }
}

impl std::error::Error for ShardError {}
