//! hyper's runtime traits on ringloop: [`HyperExecutor`] (`hyper::rt::Executor`) and
//! [`HyperTimer`] (`hyper::rt::Timer`), behind the cargo feature `hyper`.
//!
//! hyper 1.x is runtime-agnostic: a connection is a future, and hyper asks the runtime for
//! three things only, a way to spawn the tasks it makes on its own (HTTP/2 streams), timers
//! (header-read timeouts, HTTP/2 keep-alive pings) and the byte stream. This module gives the
//! first two; the streams (`hyper::rt::Read` / `Write` over ringloop's TCP and Unix sockets)
//! live in the sockets crate. Hand the timer to every builder whose timeouts you use (hyper
//! panics if a timeout is set without one; and with a timer, an HTTP/1 server applies hyper's
//! default header-read timeout, 30 s, unless told otherwise), and the executor to the HTTP/2
//! builders:
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//!
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper::{server::conn::http1, service::service_fn, Request, Response};
//! use ringloop_runtime::compat::hyper::{HyperExecutor, HyperTimer};
//!
//! /// Serves one HTTP/1 connection; a client that sends no complete request head within
//! /// 10 s, on the first request or between keep-alive requests, is disconnected.
//! async fn serve_http1<I>(io: I) -> hyper::Result<()>
//! where
//!     I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
//! {
//!     let hello = service_fn(|_req: Request<hyper::body::Incoming>| async {
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
//!     });
//!     http1::Builder::new()
//!         .timer(HyperTimer)
//!         .header_read_timeout(Duration::from_secs(10))
//!         .serve_connection(io, hello)
//!         .await
//! }
//!
//! /// The same for HTTP/2: each stream runs as a ringloop task named `hyper.h2-stream`.
//! async fn serve_http2<I>(io: I) -> hyper::Result<()>
//! where
//!     I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
//! {
//!     let hello = service_fn(|_req: Request<hyper::body::Incoming>| async {
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
//!     });
//!     hyper::server::conn::http2::Builder::new(HyperExecutor)
//!         .timer(HyperTimer)
//!         .keep_alive_interval(Duration::from_secs(30))
//!         .serve_connection(io, hello)
//!         .await
//! }
//! # let _ = (serve_http1::<hyper_io::Never>, serve_http2::<hyper_io::Never>);
//! # mod hyper_io {
//! #     use std::{pin::Pin, task::{Context, Poll}};
//! #     pub enum Never {}
//! #     impl hyper::rt::Read for Never {
//! #         fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: hyper::rt::ReadBufCursor<'_>)
//! #             -> Poll<std::io::Result<()>> { match *self {} }
//! #     }
//! #     impl hyper::rt::Write for Never {
//! #         fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8])
//! #             -> Poll<std::io::Result<usize>> { match *self {} }
//! #         fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>)
//! #             -> Poll<std::io::Result<()>> { match *self {} }
//! #         fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>)
//! #             -> Poll<std::io::Result<()>> { match *self {} }
//! #     }
//! # }
//! ```
//!
//! # Where this differs from hyper-util's `TokioExecutor` and `TokioTimer`
//!
//! * **Futures need not be `Send`.** The executor spawns on the runtime of the calling thread
//!   (ringloop runs one per thread), so a service may hold `Rc`s and `RefCell`s. There is no
//!   runtime handle inside the executor: it is a unit value, and `execute` called where no
//!   ringloop runtime runs panics (see [`HyperExecutor`]).
//! * **Timers are the loop's own.** A [`HyperSleep`] sits on the same timer heap, and the same
//!   clock ([`Instant`]), as [`sleep`](crate::sleep) and [`call_later`](crate::call_later), and
//!   ends in deadline order with them. No kernel timer is armed per sleep.
//! * **Cancellation.** A ringloop [`sleep`](crate::sleep) is a cancellation point: a task
//!   cancelled while it waits there sees `Err(Cancelled)`. A [`HyperSleep`] resolves to `()`,
//!   and hyper takes its completion for "the timeout passed", so it never takes the task's
//!   cancel request: the request stays pending for the next await that can report it, in hyper
//!   the connection's read, whose error carries the [`Cancelled`](crate::Cancelled). A task
//!   suspended on nothing but a `HyperSleep` when it is cancelled is suspended on a future that
//!   cannot see the request, so the runtime drops it, as it drops any foreign future
//!   (see [`task`](crate::task)).

use std::any::type_name;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::runtime::spawn_static_named;
use crate::time::DeadlineWait;

/// hyper's [`Executor`](hyper::rt::Executor) on ringloop: spawns each future hyper hands it as
/// a task on the runtime running on the calling thread, and detaches it (its output is
/// dropped).
///
/// hyper uses it for HTTP/2: a server spawns a task per stream, a client one for the
/// connection and some per request. Those futures run on the thread that runs the
/// connection, so they need not be `Send`, and neither does the service they call: this is
/// hyper-util's `TokioExecutor` for a `LocalSet`, minus the `LocalSet`.
///
/// Tasks are named after what hyper spawns, for [`task_tree`](crate::task_tree) and panic
/// reports: `hyper.h2-stream` (a server's stream), `hyper.h2-client` (a client's connection
/// and request tasks), `hyper.h2-upgrade` (the body pump of an upgraded HTTP/2 stream), and
/// `hyper.task` for anything else. Each is a plain ringloop task: it is cancelled, awaited
/// and torn down with the runtime like any other (at shutdown, hyper's futures are dropped:
/// they know nothing of cancel requests).
///
/// ```
/// use hyper::rt::Executor;
/// use ringloop_runtime::compat::hyper::HyperExecutor;
/// use std::{cell::Cell, rc::Rc};
///
/// ringloop_runtime::Runtime::new().unwrap().block_on(async {
///     let hits = Rc::new(Cell::new(0)); // not Send, and that is fine
///     let h = hits.clone();
///     HyperExecutor.execute(async move { h.set(h.get() + 1) });
///     ringloop_runtime::yield_now().await;
///     assert_eq!(hits.get(), 1);
/// });
/// ```
///
/// # Panics
/// `execute` panics when no ringloop runtime runs on the calling thread, as
/// [`spawn`](crate::spawn) does: the future cannot run anywhere else (it may be `!Send`), and
/// dropping it quietly would lose hyper's work (a stream's response, a client's connection).
/// hyper calls it from inside the connection future it is polling, so a connection polled by
/// a ringloop task never meets this.
#[derive(Clone, Copy, Debug, Default)]
pub struct HyperExecutor;

impl<F> hyper::rt::Executor<F> for HyperExecutor
where
    F: Future + 'static,
{
    #[track_caller]
    fn execute(&self, fut: F) {
        // Detached: the handle is dropped, the task runs on (an asyncio task nobody holds).
        drop(spawn_static_named(task_name::<F>(), async move {
            fut.await;
        }));
    }
}

/// The task name for a future hyper spawns, from its type (hyper's own types are not public,
/// so their names are the only thing to go by; a name that no longer matches gives the
/// generic `hyper.task`, nothing worse).
fn task_name<F>() -> &'static str {
    let ty = type_name::<F>();
    if ty.starts_with("hyper::proto::h2::server::H2Stream<") {
        "hyper.h2-stream"
    } else if ty.starts_with("hyper::proto::h2::client::H2ClientFuture<") {
        "hyper.h2-client"
    } else if ty.starts_with("hyper::proto::h2::upgrade::UpgradedSendStreamTask<") {
        "hyper.h2-upgrade"
    } else {
        "hyper.task"
    }
}

/// hyper's [`Timer`](hyper::rt::Timer) on ringloop's timer heap; its sleeps are
/// [`HyperSleep`]s.
///
/// Give it to the builders whose timeouts you set (`header_read_timeout`,
/// `keep_alive_interval`, ...); see the [module docs](self) for an example. It holds nothing,
/// so one value serves every runtime and thread: each sleep arms its timer on the runtime of
/// the thread that polls it.
///
/// [`reset`](hyper::rt::Timer::reset) re-aims a sleep in place: the same allocation, and, when
/// its timer is armed on the polling thread's runtime, the same timer entry and waker (hyper
/// resets its header-read timeout for each request of a keep-alive connection).
///
/// ```
/// use hyper::rt::Timer;
/// use ringloop_runtime::compat::hyper::HyperTimer;
/// use std::time::{Duration, Instant};
///
/// ringloop_runtime::Runtime::new().unwrap().block_on(async {
///     let mut sleep = HyperTimer.sleep(Duration::from_secs(3600));
///     HyperTimer.reset(&mut sleep, Instant::now() + Duration::from_millis(1));
///     sleep.await; // an hour no more
/// });
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct HyperTimer;

impl hyper::rt::Timer for HyperTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HyperSleep::new(Instant::now() + duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HyperSleep::new(deadline))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<HyperSleep>() {
            Some(mut ours) => ours.reset(new_deadline),
            // Another timer's sleep (a builder's timer was swapped): replace it.
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

/// The future of [`HyperTimer`]'s sleeps: ends, with `()`, once its deadline has passed and
/// its timer has left the loop's heap.
///
/// Like [`Sleep`](crate::Sleep) it goes through the heap even when its deadline has already
/// passed at its first poll, so it ends in deadline order with ringloop's sleeps and timed
/// callbacks, ties in the order they were armed. Unlike it, it is **not a cancellation
/// point**: it never takes the polling task's cancel request (see the [module docs](self)).
///
/// # Threads and runtimes
///
/// hyper requires sleeps to be `Send` and `Sync`, and this one is plain data (a deadline and
/// a timer key that names its heap), so any safe use is sound:
///
/// * polled under another ringloop runtime than the one it was armed on (moved to another
///   thread, or kept across runtimes on one thread), it arms a timer there and ends by that
///   runtime's heap; its first timer stays on the first heap until its deadline, when it
///   fires and is removed (a spurious wake, at most, of the task that polled it there);
/// * dropped or reset where its timer's runtime does not run, it touches no timer at all (a
///   key is never looked up in another runtime's heap); its timer is removed when it fires.
///   Dropped on the thread of its runtime, it disarms its timer at once: the timer never
///   fires. Its entry on the heap is kept until the task poll that dropped it ends, for the
///   next `HyperSleep` armed in that poll to take over (hyper drops its header timer when a
///   request head is in, and arms a new one when it starts reading the next, in one task
///   poll: moved to a later deadline, an entry costs no heap node).
///
/// # Panics
/// When a poll has to arm its timer and no ringloop runtime runs on the thread (as
/// [`sleep`](crate::sleep) does).
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct HyperSleep {
    wait: DeadlineWait,
}

impl HyperSleep {
    /// A sleep until `deadline` (nothing is armed until it is first polled).
    pub fn new(deadline: Instant) -> Self {
        HyperSleep {
            wait: DeadlineWait::new(deadline),
        }
    }

    /// When the sleep ends.
    pub fn deadline(&self) -> Instant {
        self.wait.deadline()
    }

    /// Moves the deadline (earlier or later), also after the sleep has ended, which then
    /// waits again. A timer armed on the calling thread's runtime is re-aimed in place: no
    /// allocation, and the task that last polled it is woken at the new deadline.
    pub fn reset(&mut self, deadline: Instant) {
        self.wait.reset(deadline);
    }
}

impl Future for HyperSleep {
    type Output = ();

    #[track_caller]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.wait.poll_wait(cx)
    }
}

impl Drop for HyperSleep {
    fn drop(&mut self) {
        // hyper drops its header timer when a request head is in, and arms a new one when it
        // starts reading the next, in the same task poll: the new one reuses this one's entry.
        self.wait.retire();
    }
}

impl hyper::rt::Sleep for HyperSleep {}

// hyper's bounds, checked here rather than at the first use in someone's builder.
const _: () = {
    const fn sleep_bounds<T: Send + Sync + Unpin + 'static>() {}
    const fn timer_bounds<T: hyper::rt::Timer + Clone + Send + Sync + 'static>() {}
    const fn executor_bounds<T: Clone + Send + Sync + Unpin + 'static>() {}
    sleep_bounds::<HyperSleep>();
    timer_bounds::<HyperTimer>();
    executor_bounds::<HyperExecutor>();
};
