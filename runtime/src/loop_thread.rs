//! [`LoopThread`]: a runtime on a thread of its own, for synchronous code that needs an event
//! loop beside it (asyncio's "event loop in a side thread").
//!
//! In asyncio the pattern is written by hand:
//!
//! ```python
//! loop = asyncio.new_event_loop()
//! thread = threading.Thread(target=loop.run_forever)
//! thread.start()
//! result = asyncio.run_coroutine_threadsafe(work(), loop).result(timeout=5)
//! loop.call_soon_threadsafe(loop.stop)
//! thread.join()
//! loop.close()  # and the tasks still pending are destroyed without being cancelled
//! ```
//!
//! and its sharp edges are well known: a call made before the loop runs, a stop that leaves
//! tasks pending, a `result()` that waits for ever on a loop that is gone. [`LoopThread`] does the
//! same in one value: [`start`](LoopThread::start) returns once the runtime is built and its
//! [`Handle`] is ready, [`spawn`](LoopThread::spawn) runs futures on it and hands back a
//! [`RemoteTask`] to wait on (with a timeout, or cancel), and [`stop`](LoopThread::stop) (or
//! dropping it) stops the loop, cancels every task and lets them clean up, drains the ring,
//! drops the runtime and joins the thread.

use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use crate::remote::RemoteTask;
use crate::runtime::{Builder, Handle};
use crate::task::panic_message;

/// The name of a loop thread (it shows in `top -H`, panic messages and debuggers).
const THREAD_NAME: &str = "ringloop-loop";

/// A ringloop runtime running on a background thread, driven from synchronous code.
///
/// ```
/// use ringloop_runtime::{sleep, LoopThread};
/// use std::time::Duration;
///
/// let lt = LoopThread::start().unwrap();
/// let task = lt.spawn(|| async {
///     sleep(Duration::from_millis(1)).await.unwrap();
///     "done on the loop thread"
/// });
/// assert_eq!(task.wait().unwrap(), "done on the loop thread");
/// lt.stop().unwrap(); // every task cancelled and ended, the runtime dropped, the thread joined
/// ```
///
/// # Stopping
///
/// The loop runs until it is stopped: by [`stop`](Self::stop), by dropping the `LoopThread`,
/// by [`Handle::stop`] from any thread, or by [`stop()`](crate::stop) in one of its tasks (as
/// asyncio's `loop.stop()` ends `run_forever`). Then the thread does what
/// [`Runtime::block_on`](crate::Runtime::block_on) does at its end: every task still alive is cancelled and the loop runs
/// until they have all ended (a cancelled task may clean up, even asynchronously), for at most
/// the builder's [`shutdown_timeout`](Builder::shutdown_timeout), after which the stragglers are
/// dropped. Then the runtime is dropped (its ring drained, its descriptors closed) and the
/// thread ends. Every [`RemoteTask`] gets an outcome on the way: what its task ended with,
/// usually [`RemoteError::Cancelled`](crate::RemoteError::Cancelled), or
/// [`RemoteError::Closed`](crate::RemoteError::Closed) for a spawn that came too late.
///
/// Joining a thread blocks: call [`stop`](Self::stop) and [`join`](Self::join) from plain
/// threads, not from a task of another runtime (that loop would stall meanwhile). On the loop
/// thread itself (the `LoopThread` moved into one of its own tasks) the thread cannot be
/// joined: `stop` stops the loop and `join` does nothing, and both return an error of kind
/// [`Deadlock`](io::ErrorKind::Deadlock); dropping it there stops the loop and detaches the
/// thread, which ends by itself.
#[derive(Debug)]
pub struct LoopThread {
    handle: Handle,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl LoopThread {
    /// Starts a runtime with the default options on a new thread, and returns once it is ready
    /// to take work.
    ///
    /// # Errors
    /// If the thread cannot be started, or the runtime cannot be built (see
    /// [`Builder::build`]).
    pub fn start() -> io::Result<LoopThread> {
        Self::start_with(Builder::new)
    }

    /// Starts a runtime built from the [`Builder`] that `builder` returns; `builder` runs on
    /// the new thread (a `Builder` may hold a `!Send` exception handler, so it is made there).
    ///
    /// ```
    /// use ringloop_runtime::{Backend, LoopThread, Runtime};
    ///
    /// let lt = LoopThread::start_with(|| Runtime::builder().backend(Backend::Epoll)).unwrap();
    /// let backend = lt.spawn(|| async { ringloop_runtime::current_backend() }).wait();
    /// assert_eq!(backend.unwrap(), Backend::Epoll);
    /// ```
    ///
    /// # Errors
    /// If the thread cannot be started, the runtime cannot be built, or `builder` panics.
    pub fn start_with<B>(builder: B) -> io::Result<LoopThread>
    where
        B: FnOnce() -> Builder + Send + 'static,
    {
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let thread = thread::Builder::new()
            .name(THREAD_NAME.to_owned())
            .spawn(move || run(builder, ready_tx))?;
        match ready_rx.recv() {
            Ok(Ok(handle)) => Ok(LoopThread {
                handle,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            // The thread ended without a word: `builder` (or `build`) panicked.
            Err(mpsc::RecvError) => Err(match thread.join() {
                Err(payload) => io::Error::other(format!(
                    "the loop thread panicked while starting: {}",
                    panic_message(&*payload).unwrap_or("<non-string payload>")
                )),
                Ok(r) => r.err().unwrap_or_else(|| {
                    io::Error::other("the loop thread ended before its runtime was ready")
                }),
            }),
        }
    }

    /// The runtime's [`Handle`]: clone it to hand to other threads (it is `Send + Sync`).
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs a future on the loop; see [`Handle::spawn`].
    pub fn spawn<F, Fut>(&self, make: F) -> RemoteTask<Fut::Output>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future + 'static,
        Fut::Output: Send + 'static,
    {
        self.handle.spawn(make)
    }

    /// Whether the loop thread has ended (it was stopped from elsewhere, say).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the loop, cancels every task and waits until they have ended (see
    /// [Stopping](Self#stopping)), drops the runtime and joins the thread.
    ///
    /// # Errors
    /// If the loop's driver failed while it ran (the error `run_forever` returned), if the
    /// thread panicked, or ([`Deadlock`](io::ErrorKind::Deadlock)) when called on the loop
    /// thread itself, which cannot join itself (the loop still stops).
    pub fn stop(mut self) -> io::Result<()> {
        self.handle.stop();
        self.join_thread()
    }

    /// Waits until the loop is stopped by someone else ([`Handle::stop`], or
    /// [`stop()`](crate::stop) in one of its tasks), then joins the thread as
    /// [`stop`](Self::stop) does.
    ///
    /// # Errors
    /// As [`stop`](Self::stop).
    pub fn join(mut self) -> io::Result<()> {
        self.join_thread()
    }

    fn join_thread(&mut self) -> io::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        if thread.thread().id() == thread::current().id() {
            // Detached: the thread ends by itself once the loop has stopped.
            return Err(io::Error::new(
                io::ErrorKind::Deadlock,
                "a LoopThread cannot be joined from its own loop thread",
            ));
        }
        match thread.join() {
            Ok(r) => r,
            Err(payload) => Err(io::Error::other(format!(
                "the loop thread panicked: {}",
                panic_message(&*payload).unwrap_or("<non-string payload>")
            ))),
        }
    }
}

impl Drop for LoopThread {
    /// Stops the loop and joins the thread as [`stop`](Self::stop) does, ignoring its errors.
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.handle.stop();
            let _ = self.join_thread();
        }
    }
}

/// The loop thread's body.
fn run<B>(builder: B, ready: mpsc::SyncSender<io::Result<Handle>>) -> io::Result<()>
where
    B: FnOnce() -> Builder,
{
    let rt = match builder().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return Ok(());
        }
    };
    let _ = ready.send(Ok(rt.handle()));
    drop(ready);
    let ran = rt.run_forever();
    // asyncio.run's epilogue: cancel what is left and let it end. `block_on` does exactly that
    // once its (empty) main future is done. Its only panic is a driver that fails meanwhile.
    let drained = if ran.is_ok() {
        panic::catch_unwind(AssertUnwindSafe(|| rt.block_on(async {}))).map_err(|payload| {
            io::Error::other(
                panic_message(&*payload)
                    .unwrap_or("the loop failed while its tasks were cancelled")
                    .to_owned(),
            )
        })
    } else {
        Ok(())
    };
    // Dropping the runtime drops what is left, drains the ring and closes its descriptors;
    // spawns that come later resolve to `Closed`.
    drop(rt);
    ran.and(drained)
}
