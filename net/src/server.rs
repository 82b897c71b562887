//! [`Server`]: asyncio's `start_server` and its `Server` object, for TCP and Unix listeners,
//! with a graceful shutdown that loses no byte.
//!
//! A server accepts connections on its listening sockets and serves each one with a handler,
//! a task per connection. The handler gets the stream and a [`ShutdownSignal`] that tells it
//! when the server begins to shut down.
//!
//! ```
//! use ringloop_net::{start_server, ShutdownSignal, TcpStream};
//! use std::time::Duration;
//!
//! ringloop_runtime::Runtime::new().unwrap().block_on(async {
//!     // An echo server: a task per connection, each echoing until its client ends its side.
//!     let server = start_server("127.0.0.1:0".parse().unwrap(), |stream: TcpStream, _: ShutdownSignal| async move {
//!         loop {
//!             let (n, buf) = stream.read(vec![0u8; 4096]).await;
//!             match n {
//!                 Ok(0) | Err(_) => return,
//!                 Ok(n) => {
//!                     if stream.write_all(buf[..n].to_vec()).await.0.is_err() {
//!                         return;
//!                     }
//!                 }
//!             }
//!         }
//!     })?;
//!     let addr = server.sockets()[0].as_tcp().unwrap();
//!
//!     let client = TcpStream::connect(addr).await?;
//!     client.write_all(b"ping".as_slice()).await.0?;
//!     client.shutdown(std::net::Shutdown::Write)?;
//!     let (n, buf) = client.read_exact(vec![0u8; 4]).await;
//!     n?;
//!     assert_eq!(buf, b"ping");
//!
//!     // Stop accepting, let the connections finish for up to 5 s, then cancel the rest.
//!     let report = server.shutdown(Duration::from_secs(5)).await?;
//!     assert!(report.is_graceful());
//!     Ok::<_, std::io::Error>(())
//! }).unwrap();
//! ```
//!
//! # Shutting down
//!
//! * [`close`](Server::close) stops accepting; open connections run on.
//!   [`wait_closed`](Server::wait_closed) waits until the server is closed and every handler
//!   has ended.
//! * [`shutdown(grace)`](Server::shutdown) is the graceful stop: it closes the server, sets the
//!   [`ShutdownSignal`], waits up to `grace` for the handlers to end, then cancels those left
//!   (each sees `Cancelled` at its next await and may still answer its client), and after a
//!   further [`DEFAULT_CANCEL_GRACE`] drops whatever still runs.
//! * [`shutdown_on_signals`](Server::shutdown_on_signals) ties that to `SIGTERM` and `SIGINT`:
//!   the first starts the graceful stop, a second one makes it immediate
//!   ([`shutdown_now`](Server::shutdown_now)).
//! * [`close_clients`](Server::close_clients) and [`abort_clients`](Server::abort_clients)
//!   (Python 3.13) half-close or reset the open connections.
//!
//! # Where it differs from asyncio
//!
//! * **Connections already in the kernel's accept queue are served, not reset.** asyncio's
//!   `close()` closes the listening socket, and the kernel resets every connection still in
//!   its queue, although each of those clients saw its `connect` succeed and may already have
//!   sent a request. `close` here first takes those connections (a TCP listener: every one
//!   queued before the close; a Unix listener: every one, race-free) and hands them to
//!   handlers like any other, then makes the listening socket refuse new ones
//!   (`ECONNREFUSED`). One window remains on TCP, and Linux offers no way to close it: a
//!   handshake that completes in the microseconds between the last accept and the close is
//!   reset (or, completing on another CPU during the close, dropped without a reset: that
//!   client sees the reset when it first sends). Connections the kernel queued while the process was out of descriptors (`EMFILE`)
//!   cannot be taken and are reset as well.
//! * [`close_clients`](Server::close_clients) shuts down the write side of each connection
//!   (the client reads what was sent, then end of stream); the handlers go on and can still
//!   read. asyncio's `transport.close()` closes both directions.
//! * [`abort_clients`](Server::abort_clients) resets TCP connections at once (the client sees
//!   `ECONNRESET`; so does the handler's next I/O) but does not cancel the handlers. A Unix
//!   socket has no reset: both directions are shut down instead.
//! * A handler's output is dropped; a panic in one is reported to the runtime's exception
//!   handler and ends that connection only (asyncio logs an exception from
//!   `client_connected_cb` the same way).
//! * Dropping every [`Server`] handle does not stop the server, as an asyncio server runs on
//!   while its loop does; it stops when the runtime ends.
//!
//! # Why a graceful shutdown loses no byte
//!
//! A TCP socket that is closed with unread data in its receive buffer sends a reset, and the
//! reset discards what the peer had not read yet: the answers it was waiting for. So a handler
//! ends a connection only once it has read to the end of the stream (the client ended its
//! side) or has said it will send no more (`shutdown(Write)`: the client sees the end of the
//! stream after the last answer). The server itself never closes a connection under a
//! handler: during the grace the handlers end on their own, and a handler cancelled at the end
//! of the grace gets [`DEFAULT_CANCEL_GRACE`] to finish the write it was in, shut down its
//! write side and read what is left. Only a handler that ignores its cancellation for that
//! long is dropped, and only then can its socket be reset.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use io_uring::opcode;
use ringloop_runtime::signal::{signal, Signal, SignalKind};
use ringloop_runtime::sync::{Event, EventWait};
use ringloop_runtime::{
    current_backend, is_cancelled, sleep, spawn, take_cancel_request, take_cancel_request_waiting,
    timeout_at, yield_now, Backend, Cancelled, Multishot, MultishotKind, SharedFd, TaskRef,
};
use slab::Slab;

use crate::shard::{Assigned, Inbox};
use crate::socket::{self, AsSharedFd};
use crate::tcp::{is_transient_accept_error, with_socket, TcpListener, TcpStream};
use crate::unix::{UnixListener, UnixStream};

/// How long [`Server::shutdown`] lets the handlers it cancelled at the end of the grace
/// finish (answer, shut down their write side, read what is left) before it drops them.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(1);

/// The message of the cancellation [`Server::shutdown`] sends to the handlers still running
/// when the grace ends.
pub const GRACE_OVER: &str = "server shutdown: the grace period is over";

/// Accepted sockets a multishot accept may queue unread (as [`TcpListener::incoming`]).
const ACCEPT_QUEUE_CAP: usize = 64;

/// The first and the longest wait after an accept error that a server rides out.
const MIN_BACKOFF: Duration = Duration::from_millis(1);
const MAX_BACKOFF: Duration = Duration::from_millis(100);

/// Binds `addr` and serves each connection with `handler`, a task per connection: asyncio's
/// `start_server(client_connected_cb, host, port)`. See the [module docs](self).
///
/// The listener has [`TcpListener::bind`]'s options; build one with
/// [`TcpListener::builder`] and pass it to [`Server::tcp`] for others (backlog,
/// `SO_REUSEPORT`).
///
/// # Errors
/// The real errno of the bind (`EADDRINUSE`, `EACCES`, ...).
///
/// # Panics
/// Outside a running ringloop runtime.
pub fn start_server<H, Fut>(addr: SocketAddr, handler: H) -> io::Result<Server>
where
    H: Fn(TcpStream, ShutdownSignal) -> Fut + 'static,
    Fut: Future + 'static,
{
    Ok(Server::tcp(TcpListener::bind(addr)?, handler))
}

/// Creates a Unix socket at `path` and serves each connection with `handler`: asyncio's
/// `start_unix_server`. The socket file is removed when the server is closed (if it is still
/// the file this call created), as asyncio 3.13 does.
///
/// # Errors
/// As [`UnixListener::bind`] (`EADDRINUSE` if the file exists).
///
/// # Panics
/// Outside a running ringloop runtime.
pub fn start_unix_server<H, Fut>(path: impl AsRef<Path>, handler: H) -> io::Result<Server>
where
    H: Fn(UnixStream, ShutdownSignal) -> Fut + 'static,
    Fut: Future + 'static,
{
    let path = path.as_ref();
    let listener = UnixListener::bind(path)?;
    let file = std::fs::metadata(path).map(|m| SocketFile {
        path: path.to_path_buf(),
        dev: m.dev(),
        ino: m.ino(),
    });
    let server = Server::new(Box::new(serve_unix(handler)));
    server.listen(Family::Unix, listener.as_shared_fd().clone(), file.ok());
    Ok(server)
}

/// A running server: its listening sockets and the connections they accepted (asyncio's
/// `Server`). Cheap to clone: every clone is a handle on the same server.
///
/// Made by [`start_server`], [`start_unix_server`], [`Server::tcp`] and [`Server::unix`]; on
/// each shard of a thread-per-core set, by [`ShardListeners::serve`](crate::ShardListeners::serve)
/// and [`ShardAcceptor::serve`](crate::ShardAcceptor::serve). It starts accepting at once. See
/// the [module docs](self) for shutting it down.
///
/// The server holds a handle on each connection's socket while its handler runs (for
/// [`close_clients`](Self::close_clients) and [`abort_clients`](Self::abort_clients)), and lets
/// go of it when the handler ends, so it never keeps a socket open past its handler; but
/// while it holds one, the stream's `into_std` gives the stream back instead of a std socket.
#[derive(Clone)]
#[must_use = "a server runs on when its handle is dropped; keep it to close it"]
pub struct Server {
    inner: Rc<Inner>,
}

impl Server {
    /// Serves each connection `listener` accepts with `handler`, a task per connection.
    ///
    /// # Panics
    /// Outside a running ringloop runtime.
    pub fn tcp<H, Fut>(listener: TcpListener, handler: H) -> Server
    where
        H: Fn(TcpStream, ShutdownSignal) -> Fut + 'static,
        Fut: Future + 'static,
    {
        let server = Server::new(Box::new(serve_tcp(handler)));
        server.listen(Family::Tcp, listener.as_shared_fd().clone(), None);
        server
    }

    /// Serves each connection `listener` accepts with `handler`, a task per connection. The
    /// socket file is left in place when the server closes (this call did not create it).
    ///
    /// # Panics
    /// Outside a running ringloop runtime.
    pub fn unix<H, Fut>(listener: UnixListener, handler: H) -> Server
    where
        H: Fn(UnixStream, ShutdownSignal) -> Fut + 'static,
        Fut: Future + 'static,
    {
        let server = Server::new(Box::new(serve_unix(handler)));
        server.listen(Family::Unix, listener.as_shared_fd().clone(), None);
        server
    }

    /// A TCP server for one shard of a [`ShardAcceptor`](crate::ShardAcceptor): it serves
    /// what `inbox` hands over (the other shards), or accepts on `listener` and hands each
    /// connection to `route`, which gives back those this shard serves itself (the
    /// accepting shard).
    pub(crate) fn tcp_sharded<H, Fut>(
        handler: H,
        listener: Option<(TcpListener, Box<Route>)>,
        inbox: Option<Arc<Inbox>>,
    ) -> Server
    where
        H: Fn(TcpStream, ShutdownSignal) -> Fut + 'static,
        Fut: Future + 'static,
    {
        let listener = listener.map(|(l, route)| (Family::Tcp, l.as_shared_fd().clone(), route));
        Server::sharded(serve_tcp(handler), listener, inbox)
    }

    /// [`tcp_sharded`](Self::tcp_sharded) for a Unix-domain acceptor
    /// ([`UnixShardAcceptor`](crate::UnixShardAcceptor)).
    pub(crate) fn unix_sharded<H, Fut>(
        handler: H,
        listener: Option<(UnixListener, Box<Route>)>,
        inbox: Option<Arc<Inbox>>,
    ) -> Server
    where
        H: Fn(UnixStream, ShutdownSignal) -> Fut + 'static,
        Fut: Future + 'static,
    {
        let listener = listener.map(|(l, route)| (Family::Unix, l.as_shared_fd().clone(), route));
        Server::sharded(serve_unix(handler), listener, inbox)
    }

    fn sharded(
        serve: impl Fn(&Rc<Inner>, OwnedFd, Option<Assigned>) + 'static,
        listener: Option<(Family, SharedFd, Box<Route>)>,
        inbox: Option<Arc<Inbox>>,
    ) -> Server {
        let Some((family, fd, route)) = listener else {
            let server = Server::new(Box::new(serve));
            if let Some(inbox) = inbox {
                server.feed(inbox);
            }
            return server;
        };
        let server = Server::new(Box::new(
            move |inner: &Rc<Inner>, fd: OwnedFd, assigned: Option<Assigned>| {
                let local = match assigned {
                    Some(a) => Some((fd, Some(a))),
                    // After `shutdown_now`: `start_connection` closes it unserved, here.
                    None if inner.forced.get() => Some((fd, None)),
                    None => route(fd).map(|(fd, a)| (fd, Some(a))),
                };
                if let Some((fd, assigned)) = local {
                    serve(inner, fd, assigned);
                }
            },
        ));
        server.listen(family, fd, None);
        if let Some(inbox) = inbox {
            server.feed(inbox);
        }
        server
    }

    /// A server with no source of connections yet.
    fn new(serve: Box<ServeFn>) -> Server {
        let inner = Rc::new(Inner {
            state: Cell::new(State::Serving),
            listeners: RefCell::new(Vec::new()),
            feeds: RefCell::new(Vec::new()),
            conns: RefCell::new(Slab::new()),
            serve,
            signal: ShutdownSignal::new(),
            closing: Event::new(),
            done: Event::new(),
            accepted: Cell::new(0),
            ended: Cell::new(ShutdownReport::default()),
            forced: Cell::new(false),
            error: RefCell::new(None),
        });
        Server { inner }
    }

    /// Adds a listening socket and starts its accept task.
    fn listen(&self, family: Family, fd: SharedFd, file: Option<SocketFile>) {
        let inner = &self.inner;
        let listening = Rc::new(Listening {
            fd,
            family,
            open: Cell::new(true),
            pending: RefCell::new(Vec::new()),
            file,
            task: RefCell::new(None),
        });
        inner.listeners.borrow_mut().push(listening.clone());
        let task = spawn(accept_loop(inner.clone(), listening.clone()));
        *listening.task.borrow_mut() = Some(task.as_ref().clone());
    }

    /// Adds an inbox of connections handed over by another shard and starts its feed task.
    fn feed(&self, inbox: Arc<Inbox>) {
        let inner = &self.inner;
        let feeding = Rc::new(Feeding {
            inbox,
            task: RefCell::new(None),
        });
        inner.feeds.borrow_mut().push(feeding.clone());
        // The guard is the task's from the start: a task dropped before it first runs (its
        // runtime ending) still closes its inbox.
        let guard = FeedGuard {
            inner: inner.clone(),
            feeding: feeding.clone(),
        };
        let task = spawn(feed_loop(guard));
        *feeding.task.borrow_mut() = Some(task.as_ref().clone());
    }

    /// Stops accepting (asyncio's `close()`): the listening sockets refuse new connections
    /// from now on (`ECONNREFUSED`; `ENOENT` for [`start_unix_server`]'s, whose socket file
    /// is removed); the open connections run on. Connections the kernel had
    /// already accepted are still served (see the [module docs](self)); so are those a
    /// multishot accept had taken, which the accept tasks hand over before they end. Closing
    /// twice does nothing.
    pub fn close(&self) {
        self.inner.close();
    }

    /// Whether the server still accepts connections (asyncio's `is_serving()`): not closed,
    /// and some listening socket has not failed (see [`take_error`](Self::take_error)), or,
    /// on a shard of a [`ShardAcceptor`](crate::ShardAcceptor), it takes connections handed
    /// over.
    pub fn is_serving(&self) -> bool {
        self.inner.state.get() == State::Serving
            && (self.inner.listeners.borrow().iter().any(|l| l.open.get())
                || !self.inner.feeds.borrow().is_empty())
    }

    /// The addresses of the sockets it listens on (asyncio's `sockets`); empty once closed.
    pub fn sockets(&self) -> Vec<ListenAddr> {
        self.inner
            .listeners
            .borrow()
            .iter()
            .filter(|l| l.open.get())
            .filter_map(|l| match l.family {
                Family::Tcp => crate::tcp::local_addr(&l.fd).ok().map(ListenAddr::Tcp),
                Family::Unix => crate::unix::local_addr(&l.fd).ok().map(ListenAddr::Unix),
            })
            .collect()
    }

    /// Waits until the server is closed and every connection's handler has ended (asyncio
    /// 3.12's `wait_closed()`); called before [`close`](Self::close), it waits for the close
    /// too.
    ///
    /// # Errors
    /// `Err(Cancelled)` if the awaiting task is cancelled; the server is left as it is.
    pub async fn wait_closed(&self) -> Result<(), Cancelled> {
        self.inner.done.wait().await
    }

    /// Shuts down the write side of every open connection (asyncio 3.13's `close_clients()`):
    /// each client reads what was already sent, then the end of the stream. The handlers are
    /// not cancelled: they can still read what their clients send, and their writes fail
    /// (`EPIPE`). Unlike asyncio's, the read side stays open (see the [module docs](self)).
    pub fn close_clients(&self) {
        for (fd, _) in self.inner.open_fds() {
            let _ = with_socket(&fd, |s| s.shutdown(Shutdown::Write));
        }
    }

    /// Resets every open connection (asyncio 3.13's `abort_clients()`): a TCP client sees
    /// `ECONNRESET` and whatever it had not read is gone; the handler's next I/O fails with
    /// `ECONNRESET` too. A Unix socket cannot be reset, so both of its directions are shut down
    /// instead (the client sees the end of the stream and `EPIPE`). The handlers are not
    /// cancelled.
    pub fn abort_clients(&self) {
        for (fd, family) in self.inner.open_fds() {
            match family {
                Family::Tcp => {
                    let _ = reset(&fd);
                }
                Family::Unix => {
                    let _ = with_socket(&fd, |s| s.shutdown(Shutdown::Both));
                }
            }
        }
    }

    /// The graceful stop: [`shutdown_with`](Self::shutdown_with)`(grace,`
    /// [`DEFAULT_CANCEL_GRACE`]`)`.
    ///
    /// # Errors
    /// As [`shutdown_with`](Self::shutdown_with).
    pub async fn shutdown(&self, grace: Duration) -> Result<ShutdownReport, Cancelled> {
        self.shutdown_with(grace, DEFAULT_CANCEL_GRACE).await
    }

    /// The graceful stop, in three steps:
    ///
    /// 1. [`close`](Self::close) (no new connections), and set the [`ShutdownSignal`] with the
    ///    grace's deadline, so handlers can stop taking new requests;
    /// 2. wait up to `grace` for every handler to end on its own;
    /// 3. cancel the handlers still running (message [`GRACE_OVER`]): each sees `Cancelled`
    ///    at its next await and may still answer, shut down its write side and read what is
    ///    left; a handler suspended on a foreign future is dropped by the runtime at once.
    ///    After `cancel_grace`, the handlers that still run (those that ignored the
    ///    cancellation) are dropped. Every cancelled handler runs at least once with its
    ///    cancellation before that, however short `cancel_grace` is, except one whose task
    ///    had not started yet: it is dropped without running, as asyncio never starts a
    ///    coroutine cancelled before its first step (only a connection accepted at the very
    ///    end of the grace can be in that state).
    ///
    /// Returns once every handler has ended, with how each ended. asyncio has no such call;
    /// it is what `close()`, a wait with a timeout and a cancellation of the remaining tasks
    /// would do there.
    ///
    /// # Errors
    /// `Err(Cancelled)` if the awaiting task is cancelled: the stop then becomes immediate
    /// (every handler still running is dropped, as [`shutdown_now`](Self::shutdown_now)),
    /// and the cancellation is handed back once they are gone.
    pub async fn shutdown_with(
        &self,
        grace: Duration,
        cancel_grace: Duration,
    ) -> Result<ShutdownReport, Cancelled> {
        let inner = &self.inner;
        let before = inner.ended.get();
        let deadline = Instant::now() + grace;
        inner.signal.set(deadline);
        inner.close();
        let graceful = timeout_at(deadline, inner.done.wait()).await;
        let ended = match graceful {
            Ok(Ok(())) => Ok(()),
            Ok(Err(cancelled)) => Err(cancelled),
            Err(_timed_out) => {
                inner.cancel_open();
                // The cancelled handlers were scheduled just now, so they run before this
                // task comes back: each sees its cancellation at least once, however short
                // the cancel grace or late the loop.
                match yield_now().await {
                    Ok(()) => match timeout_at(deadline + cancel_grace, inner.done.wait()).await {
                        Ok(ended) => ended,
                        Err(_timed_out) => {
                            inner.abort_all();
                            inner.done.wait().await
                        }
                    },
                    Err(cancelled) => Err(cancelled),
                }
            }
        };
        if let Err(cancelled) = ended {
            inner.abort_all();
            // They are dropped at the next scheduling point. A second cancellation only ends
            // this wait early; the first one goes back to the caller either way.
            let _ = inner.done.wait().await;
            return Err(cancelled);
        }
        Ok(inner.ended.get().since(&before, inner.forced.get()))
    }

    /// The immediate stop: [`close`](Self::close), set the [`ShutdownSignal`], and drop every
    /// handler now without a cancellation they could answer ([`TaskRef::abort`]); their
    /// sockets close as they go, with a reset where data was left unread. Connections the
    /// accept tasks still hand over are closed unserved. Returns how many handlers it
    /// dropped; they are gone at the loop's next scheduling point, and
    /// [`wait_closed`](Self::wait_closed) returns then.
    pub fn shutdown_now(&self) -> usize {
        let inner = &self.inner;
        inner.forced.set(true);
        inner.signal.set(Instant::now());
        inner.close();
        inner.abort_all()
    }

    /// Ties the server to `SIGTERM` and `SIGINT`: see [`shutdown_on`](Self::shutdown_on).
    ///
    /// ```no_run
    /// use ringloop_net::{start_server, ShutdownSignal, TcpStream};
    /// use std::time::Duration;
    ///
    /// ringloop_runtime::Runtime::new().unwrap().block_on(async {
    ///     let server = start_server("127.0.0.1:7000".parse().unwrap(), |_: TcpStream, _: ShutdownSignal| async {})?;
    ///     let report = server.shutdown_on_signals(Duration::from_secs(5))?.await?;
    ///     eprintln!("stopped: {report:?}");
    ///     Ok::<_, std::io::Error>(())
    /// }).unwrap();
    /// ```
    ///
    /// # Errors
    /// As [`shutdown_on`](Self::shutdown_on).
    pub fn shutdown_on_signals(&self, grace: Duration) -> io::Result<SignalShutdown> {
        self.shutdown_on([SignalKind::terminate(), SignalKind::interrupt()], grace)
    }

    /// Listens for `kinds` now, and returns a future that, at the first of them, shuts the
    /// server down gracefully ([`shutdown(grace)`](Self::shutdown)) and, at a second one
    /// (of any of the kinds) during that, immediately ([`shutdown_now`](Self::shutdown_now)).
    /// It resolves with the report once every handler has ended.
    ///
    /// The listeners are registered by this call, before the future is first polled, so a
    /// signal that arrives from then on is not missed; while they live, the signals' default
    /// action (terminating the process) does not happen. They are dropped, and the previous
    /// dispositions come back, when the future is.
    ///
    /// # Errors
    /// As [`signal()`](ringloop_runtime::signal::signal), and `InvalidInput` for an empty
    /// `kinds`. The future fails with an error carrying [`Cancelled`] if its task is
    /// cancelled: while it waits for the first signal the server is left as it is; during the
    /// shutdown, the stop becomes immediate first (see [`shutdown_with`](Self::shutdown_with)).
    pub fn shutdown_on(
        &self,
        kinds: impl IntoIterator<Item = SignalKind>,
        grace: Duration,
    ) -> io::Result<SignalShutdown> {
        let mut signals = kinds
            .into_iter()
            .map(signal)
            .collect::<io::Result<Vec<Signal>>>()?;
        if signals.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "shutdown_on needs at least one signal",
            ));
        }
        let server = self.clone();
        let fut = async move {
            any_signal(&mut signals).await?;
            let mut graceful = pin!(server.shutdown(grace));
            match first(graceful.as_mut(), any_signal(&mut signals)).await {
                First::Left(report) => Ok(report?),
                First::Right(second) => {
                    if second.is_ok() {
                        server.shutdown_now();
                    }
                    // A failed wait for the second signal (a driver error) leaves the
                    // graceful stop to finish; a cancellation reaches it as well.
                    Ok(graceful.await?)
                }
            }
        };
        Ok(SignalShutdown { fut: Box::pin(fut) })
    }

    /// A handle on the signal the handlers get, for other tasks that should stop with the
    /// server.
    pub fn shutdown_signal(&self) -> ShutdownSignal {
        self.inner.signal.clone()
    }

    /// Connections whose handler is still running.
    pub fn connections(&self) -> usize {
        self.inner.conns.borrow().len()
    }

    /// Connections accepted since the server started.
    pub fn accepted_total(&self) -> u64 {
        self.inner.accepted.get()
    }

    /// Connections whose handler has ended since the server started.
    pub fn closed_total(&self) -> u64 {
        let e = self.inner.ended.get();
        e.finished as u64 + e.cancelled as u64 + e.aborted as u64
    }

    /// The error that stopped a listening socket, if one did (an accept error a server cannot
    /// ride out, such as `EINVAL` once someone else shut the socket down); taking it clears
    /// it. The other listening sockets and the open connections are not affected.
    pub fn take_error(&self) -> Option<io::Error> {
        self.inner.error.borrow_mut().take()
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("serving", &self.is_serving())
            .field("sockets", &self.sockets())
            .field("connections", &self.connections())
            .field("accepted_total", &self.accepted_total())
            .field("closed_total", &self.closed_total())
            .finish()
    }
}

/// The address of one of a [`Server`]'s listening sockets (from [`Server::sockets`]).
#[derive(Clone, Debug)]
pub enum ListenAddr {
    /// A TCP listener's address.
    Tcp(SocketAddr),
    /// A Unix listener's address.
    Unix(std::os::unix::net::SocketAddr),
}

impl ListenAddr {
    /// The TCP address, if this is one.
    pub fn as_tcp(&self) -> Option<SocketAddr> {
        match self {
            ListenAddr::Tcp(a) => Some(*a),
            ListenAddr::Unix(_) => None,
        }
    }

    /// The Unix address, if this is one.
    pub fn as_unix(&self) -> Option<&std::os::unix::net::SocketAddr> {
        match self {
            ListenAddr::Unix(a) => Some(a),
            ListenAddr::Tcp(_) => None,
        }
    }
}

/// How the handlers of a shut-down server ended: what [`Server::shutdown`] returns. Every
/// connection served during the shutdown counts once, in one of the three.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Handlers that ended on their own, before any cancellation.
    pub finished: usize,
    /// Handlers that ended after the cancellation at the end of the grace (including those
    /// the runtime dropped at once because they were suspended on a foreign future).
    pub cancelled: usize,
    /// Handlers dropped without a chance to answer: they ignored the cancellation for the
    /// whole cancel grace, or [`Server::shutdown_now`] (a second signal) cut the stop short.
    /// Connections accepted after `shutdown_now` and closed unserved count here too.
    pub aborted: usize,
    /// Whether [`Server::shutdown_now`] cut the stop short.
    pub immediate: bool,
}

impl ShutdownReport {
    /// Connections served during the shutdown.
    pub fn connections(&self) -> usize {
        self.finished + self.cancelled + self.aborted
    }

    /// Whether every handler ended on its own, within the grace.
    pub fn is_graceful(&self) -> bool {
        self.cancelled == 0 && self.aborted == 0 && !self.immediate
    }

    fn since(&self, before: &ShutdownReport, immediate: bool) -> ShutdownReport {
        ShutdownReport {
            finished: self.finished - before.finished,
            cancelled: self.cancelled - before.cancelled,
            aborted: self.aborted - before.aborted,
            immediate,
        }
    }
}

/// The future of [`Server::shutdown_on`] and [`Server::shutdown_on_signals`]: waits for the
/// first signal, shuts the server down, and resolves with the report.
#[must_use = "the server is shut down on a signal only while this future is awaited"]
pub struct SignalShutdown {
    fut: Pin<Box<dyn Future<Output = io::Result<ShutdownReport>>>>,
}

impl Future for SignalShutdown {
    type Output = io::Result<ShutdownReport>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.fut.as_mut().poll(cx)
    }
}

impl fmt::Debug for SignalShutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignalShutdown").finish_non_exhaustive()
    }
}

/// What a connection's handler is told about the server's shutdown: set when
/// [`Server::shutdown`] (or [`shutdown_now`](Server::shutdown_now)) begins, with the
/// deadline of the grace.
///
/// A handler that serves requests in a loop checks it between requests (or waits on it beside
/// its read) and stops taking new ones, so it ends within the grace instead of being cancelled
/// at its end. Cheap to clone; every clone sees the same signal.
///
/// ```
/// use ringloop_net::{ShutdownSignal, TcpStream};
///
/// async fn handler(stream: TcpStream, shutdown: ShutdownSignal) {
///     let mut buf = vec![0u8; 1024];
///     while !shutdown.is_set() {
///         let (n, b) = stream.read(buf).await;
///         buf = b;
///         match n {
///             Ok(0) | Err(_) => return,
///             Ok(n) => {
///                 let reply = buf[..n].to_ascii_uppercase();
///                 if stream.write_all(reply).await.0.is_err() {
///                     return;
///                 }
///             }
///         }
///     }
///     // Shutting down: say so, and end (the client sees the end of the stream).
///     let _ = stream.write_all(b"bye\n".as_slice()).await;
/// }
/// ```
#[derive(Clone)]
pub struct ShutdownSignal {
    state: Rc<SignalState>,
}

struct SignalState {
    event: Event,
    deadline: Cell<Option<Instant>>,
}

impl ShutdownSignal {
    fn new() -> ShutdownSignal {
        ShutdownSignal {
            state: Rc::new(SignalState {
                event: Event::new(),
                deadline: Cell::new(None),
            }),
        }
    }

    /// Sets it with `deadline`, unless it is set already (the first deadline stays).
    fn set(&self, deadline: Instant) {
        if !self.is_set() {
            self.state.deadline.set(Some(deadline));
            self.state.event.set();
        }
    }

    /// Whether the server's shutdown has begun.
    pub fn is_set(&self) -> bool {
        self.state.event.is_set()
    }

    /// Waits until the server's shutdown begins; resolves at once if it has. A cancellation
    /// point: `Err(Cancelled)` if the awaiting task is cancelled first.
    pub fn wait(&self) -> EventWait<'_> {
        self.state.event.wait()
    }

    /// When the grace ends and the handlers still running are cancelled; `None` before the
    /// shutdown begins.
    pub fn deadline(&self) -> Option<Instant> {
        self.state.deadline.get()
    }
}

impl fmt::Debug for ShutdownSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownSignal")
            .field("set", &self.is_set())
            .field("deadline", &self.deadline())
            .finish()
    }
}

// ---- the server's state ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Tcp,
    Unix,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Serving,
    Closed,
}

/// Wraps an accepted descriptor into the listener's stream type and starts its handler. The
/// [`Assigned`] of a connection handed over between shards is kept as long as its handler runs.
type ServeFn = dyn Fn(&Rc<Inner>, OwnedFd, Option<Assigned>);

/// Where the accepting shard of a [`ShardAcceptor`](crate::ShardAcceptor) sends a connection:
/// to another shard (`None`), or back to this one, to serve here.
pub(crate) type Route = dyn Fn(OwnedFd) -> Option<(OwnedFd, Assigned)>;

/// The [`ServeFn`] of a TCP server.
fn serve_tcp<H, Fut>(handler: H) -> impl Fn(&Rc<Inner>, OwnedFd, Option<Assigned>)
where
    H: Fn(TcpStream, ShutdownSignal) -> Fut + 'static,
    Fut: Future + 'static,
{
    let handler = Rc::new(handler);
    move |inner: &Rc<Inner>, fd: OwnedFd, assigned: Option<Assigned>| {
        let stream = TcpStream::from_owned(fd);
        let shared = stream.as_shared_fd().clone();
        let handler = handler.clone();
        inner.start_connection(shared, Family::Tcp, assigned, move |signal| {
            handler(stream, signal)
        });
    }
}

/// The [`ServeFn`] of a Unix server.
fn serve_unix<H, Fut>(handler: H) -> impl Fn(&Rc<Inner>, OwnedFd, Option<Assigned>)
where
    H: Fn(UnixStream, ShutdownSignal) -> Fut + 'static,
    Fut: Future + 'static,
{
    let handler = Rc::new(handler);
    move |inner: &Rc<Inner>, fd: OwnedFd, assigned: Option<Assigned>| {
        let stream = UnixStream::from_owned(fd);
        let shared = stream.as_shared_fd().clone();
        let handler = handler.clone();
        inner.start_connection(shared, Family::Unix, assigned, move |signal| {
            handler(stream, signal)
        });
    }
}

/// The socket file [`start_unix_server`] created, removed at close if it is still that file.
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

/// One listening socket and its accept task.
struct Listening {
    fd: SharedFd,
    family: Family,
    /// Still accepting: not closed, and not stopped by an error.
    open: Cell<bool>,
    /// Connections [`Inner::close`] took from the kernel's queue, for the accept task to serve.
    pending: RefCell<Vec<OwnedFd>>,
    file: Option<SocketFile>,
    /// The accept task (for [`Inner::abort_all`]).
    task: RefCell<Option<TaskRef>>,
}

impl Listening {
    /// Stops accepting: takes the connections the kernel already accepted into `pending`,
    /// then makes the socket refuse new ones. `shutdown(SHUT_RD)` on a listening socket does
    /// that at once, even while an op in flight keeps the descriptor open, and wakes that op.
    fn stop(&self) {
        if !self.open.replace(false) {
            return;
        }
        match self.family {
            // A TCP listener resets its queue when it stops listening: empty it first.
            Family::Tcp => {
                self.take_queued();
                let _ = with_socket(&self.fd, |s| s.shutdown(Shutdown::Read));
            }
            // A Unix listener keeps its queue and refuses new connects once shut down:
            // refuse first, then empty it, with no window in between.
            Family::Unix => {
                let _ = with_socket(&self.fd, |s| s.shutdown(Shutdown::Read));
                self.take_queued();
            }
        }
        if let Some(file) = &self.file {
            let same = std::fs::symlink_metadata(&file.path)
                .is_ok_and(|m| m.dev() == file.dev && m.ino() == file.ino);
            if same {
                let _ = std::fs::remove_file(&file.path);
            }
        }
    }

    /// Accepts, without waiting, every connection in the kernel's queue.
    fn take_queued(&self) {
        loop {
            // SAFETY: plain accept4 on a descriptor `self.fd` keeps open; null address
            // pointers are allowed.
            let raw = unsafe {
                libc::accept4(
                    self.fd.raw(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                )
            };
            if raw >= 0 {
                // SAFETY: a new descriptor nobody else owns.
                self.pending
                    .borrow_mut()
                    .push(unsafe { OwnedFd::from_raw_fd(raw) });
                continue;
            }
            match io::Error::last_os_error().raw_os_error() {
                // The peer gave up before we took it, or a signal: the next one.
                Some(libc::ECONNABORTED) | Some(libc::EINTR) => continue,
                // Empty (EAGAIN), or out of descriptors: what is left is reset at the close.
                _ => return,
            }
        }
    }

    fn take_pending(&self) -> Vec<OwnedFd> {
        std::mem::take(&mut *self.pending.borrow_mut())
    }
}

/// An inbox of connections that another shard's acceptor hands over, and its feed task.
struct Feeding {
    inbox: Arc<Inbox>,
    /// The feed task (for [`Inner::abort_all`]).
    task: RefCell<Option<TaskRef>>,
}

/// One open connection.
struct Conn {
    /// The connection's socket, for `close_clients` and `abort_clients`. Dropped with the
    /// entry when the handler ends, so it never keeps a socket open past its handler.
    fd: SharedFd,
    family: Family,
    task: Option<TaskRef>,
    /// Cancelled at the end of the grace.
    cancelled: bool,
    /// Dropped by `abort_all`.
    aborted: bool,
    /// A connection handed over by a [`ShardAcceptor`](crate::ShardAcceptor): counted as
    /// live on this shard until the entry goes with its handler.
    _assigned: Option<Assigned>,
}

struct Inner {
    state: Cell<State>,
    /// The listening sockets whose accept task has not ended.
    listeners: RefCell<Vec<Rc<Listening>>>,
    /// The inboxes whose feed task has not ended.
    feeds: RefCell<Vec<Rc<Feeding>>>,
    conns: RefCell<Slab<Conn>>,
    serve: Box<ServeFn>,
    signal: ShutdownSignal,
    /// Set by `close`: wakes the accept and feed tasks.
    closing: Event,
    /// Set once closed with no accept task and no connection left.
    done: Event,
    accepted: Cell<u64>,
    /// How the connections ended so far (cumulative; a shutdown reports the difference).
    ended: Cell<ShutdownReport>,
    /// `shutdown_now` was called.
    forced: Cell<bool>,
    error: RefCell<Option<io::Error>>,
}

impl Inner {
    fn close(&self) {
        if self.state.replace(State::Closed) == State::Closed {
            return;
        }
        let listeners: Vec<_> = self.listeners.borrow().clone();
        for l in &listeners {
            l.stop();
        }
        self.closing.set();
        self.check_done();
    }

    fn check_done(&self) {
        if self.state.get() == State::Closed
            && self.listeners.borrow().is_empty()
            && self.feeds.borrow().is_empty()
            && self.conns.borrow().is_empty()
        {
            self.done.set();
        }
    }

    fn serve_fd(self: &Rc<Self>, fd: OwnedFd, assigned: Option<Assigned>) {
        (self.serve)(self, fd, assigned);
    }

    /// Registers a connection and spawns its handler. The handler is called inside the
    /// connection's task, so a handler that panics before it returns its future ends that
    /// connection only (the runtime reports the panic), never the accept task.
    fn start_connection<Fut: Future + 'static>(
        self: &Rc<Self>,
        fd: SharedFd,
        family: Family,
        assigned: Option<Assigned>,
        handler: impl FnOnce(ShutdownSignal) -> Fut + 'static,
    ) {
        self.accepted.set(self.accepted.get() + 1);
        if self.forced.get() {
            // After `shutdown_now`: closed unserved (the stream drops with `handler`).
            self.count_end(true, true);
            return;
        }
        let key = self.conns.borrow_mut().insert(Conn {
            fd,
            family,
            task: None,
            cancelled: false,
            aborted: false,
            _assigned: assigned,
        });
        let guard = ConnGuard {
            inner: self.clone(),
            key,
        };
        let task = spawn(Handling {
            state: HandlingState::Start {
                start: Some((handler, self.signal.clone())),
            },
            _guard: guard,
        });
        if let Some(conn) = self.conns.borrow_mut().get_mut(key) {
            conn.task = Some(task.as_ref().clone());
        }
    }

    fn count_end(&self, cancelled: bool, aborted: bool) {
        let mut e = self.ended.get();
        if aborted {
            e.aborted += 1;
        } else if cancelled {
            e.cancelled += 1;
        } else {
            e.finished += 1;
        }
        self.ended.set(e);
    }

    fn open_fds(&self) -> Vec<(SharedFd, Family)> {
        self.conns
            .borrow()
            .iter()
            .map(|(_, c)| (c.fd.clone(), c.family))
            .collect()
    }

    /// Cancels every handler not cancelled yet.
    fn cancel_open(&self) {
        let tasks: Vec<TaskRef> = self
            .conns
            .borrow_mut()
            .iter_mut()
            .filter(|(_, c)| !c.cancelled && !c.aborted)
            .filter_map(|(_, c)| {
                c.cancelled = true;
                c.task.clone()
            })
            .collect();
        // Outside the borrow (a cancel only schedules, but keep user-visible work out of it).
        for t in tasks {
            t.cancel_with(GRACE_OVER);
        }
    }

    /// Drops every handler, accept task and feed task at the next scheduling point; how many
    /// handlers.
    fn abort_all(&self) -> usize {
        let tasks: Vec<TaskRef> = self
            .conns
            .borrow_mut()
            .iter_mut()
            .filter(|(_, c)| !c.aborted)
            .filter_map(|(_, c)| {
                c.aborted = true;
                c.task.clone()
            })
            .collect();
        let accepting: Vec<TaskRef> = self
            .listeners
            .borrow()
            .iter()
            .filter_map(|l| l.task.borrow().clone())
            .chain(
                self.feeds
                    .borrow()
                    .iter()
                    .filter_map(|f| f.task.borrow().clone()),
            )
            .collect();
        let n = tasks.len();
        for t in tasks.into_iter().chain(accepting) {
            t.abort();
        }
        n
    }
}

pin_project_lite::pin_project! {
    /// A connection's task: its handler, called at the first poll (inside the task, so that a
    /// panic there ends this connection only), then the handler's future, with the guard
    /// that removes the connection when the task ends. A plain struct rather than an `async`
    /// block: what a wake-up reads (the state's tag, then the handler's future) comes first,
    /// next to the task's header, and the guard, read only at the end, last.
    #[repr(C)]
    struct Handling<H, Fut> {
        #[pin]
        state: HandlingState<H, Fut>,
        _guard: ConnGuard,
    }
}

pin_project_lite::pin_project! {
    #[project = HandlingProj]
    enum HandlingState<H, Fut> {
        Start { start: Option<(H, ShutdownSignal)> },
        Run { #[pin] fut: Fut },
    }
}

impl<H, Fut> Future for Handling<H, Fut>
where
    H: FnOnce(ShutdownSignal) -> Fut,
    Fut: Future,
{
    type Output = Fut::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Fut::Output> {
        loop {
            match self.as_mut().project().state.project() {
                HandlingProj::Run { fut } => return fut.poll(cx),
                HandlingProj::Start { start } => {
                    let (handler, signal) = start.take().expect("a handler is called once");
                    let fut = handler(signal);
                    self.as_mut()
                        .project()
                        .state
                        .set(HandlingState::Run { fut });
                }
            }
        }
    }
}

/// Removes its connection when the handler's task ends, however it ends: returned, panicked,
/// cancelled, dropped by `abort` or by the runtime.
struct ConnGuard {
    inner: Rc<Inner>,
    key: usize,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        // No borrow of `conns` is ever held across code that could drop a task (`cancel` and
        // `abort` only schedule), so this borrow cannot fail.
        let conn = {
            let mut conns = self.inner.conns.borrow_mut();
            conns.try_remove(self.key)
        };
        if let Some(conn) = conn {
            self.inner.count_end(conn.cancelled, conn.aborted);
            drop(conn); // our handle on the socket goes with the handler
        }
        self.inner.check_done();
    }
}

/// Takes its listener out of the server when the accept task ends, however it ends.
struct AcceptGuard {
    inner: Rc<Inner>,
    listening: Rc<Listening>,
}

impl Drop for AcceptGuard {
    fn drop(&mut self) {
        self.listening.open.set(false);
        self.listening.task.borrow_mut().take();
        self.inner
            .listeners
            .borrow_mut()
            .retain(|l| !Rc::ptr_eq(l, &self.listening));
        self.inner.check_done();
    }
}

/// The accept task of one listening socket: accepts and starts handlers until the server is
/// closed, then hands over every connection the kernel had already accepted.
async fn accept_loop(inner: Rc<Inner>, listening: Rc<Listening>) {
    let _guard = AcceptGuard {
        inner: inner.clone(),
        listening: listening.clone(),
    };
    let mut acceptor = Acceptor::new(listening.fd.clone());
    let mut backoff = MIN_BACKOFF;
    while listening.open.get() {
        let next = first(acceptor.next(), inner.closing.wait()).await;
        match next {
            First::Left(Ok(fd)) => {
                backoff = MIN_BACKOFF;
                inner.serve_fd(fd, None);
            }
            // Woken by our own close (`EINVAL` from a listener shut down).
            First::Left(Err(_)) if !listening.open.get() => break,
            First::Left(Err(e)) if is_cancelled(&e) => {
                // The accept task itself was cancelled (the runtime is ending): close.
                inner.close();
                break;
            }
            First::Left(Err(e)) if is_transient_accept_error(&e) => {
                if e.raw_os_error() == Some(libc::ECONNABORTED) {
                    continue;
                }
                // Out of descriptors (or memory): keep serving what we have, try again later.
                match first(sleep(backoff), inner.closing.wait()).await {
                    First::Left(Ok(())) => backoff = (backoff * 2).min(MAX_BACKOFF),
                    First::Right(Ok(())) => break,
                    First::Left(Err(_)) | First::Right(Err(_)) => {
                        inner.close();
                        break;
                    }
                }
            }
            First::Left(Err(e)) => {
                listening.open.set(false);
                *inner.error.borrow_mut() = Some(e);
                break;
            }
            First::Right(Ok(())) => break,
            First::Right(Err(_cancelled)) => {
                inner.close();
                break;
            }
        }
    }
    for fd in listening.take_pending() {
        inner.serve_fd(fd, None);
    }
    acceptor.drain(|fd| inner.serve_fd(fd, None)).await;
}

/// Takes its inbox out of the server when the feed task ends, however it ends. The inbox is
/// closed first: what another shard hands over from then on is refused (and given to another
/// shard), and whatever is still queued is closed here, so no descriptor is left behind in it.
struct FeedGuard {
    inner: Rc<Inner>,
    feeding: Rc<Feeding>,
}

impl Drop for FeedGuard {
    fn drop(&mut self) {
        drop(self.feeding.inbox.close());
        self.feeding.task.borrow_mut().take();
        self.inner
            .feeds
            .borrow_mut()
            .retain(|f| !Rc::ptr_eq(f, &self.feeding));
        self.inner.check_done();
    }
}

/// The feed task of one inbox: serves what another shard hands over until the server is
/// closed, then closes the inbox (new hand-overs are refused, so the acceptor gives them to
/// another shard) and serves what was already handed over, as an accept task serves the
/// connections the kernel had already accepted.
async fn feed_loop(guard: FeedGuard) {
    let inner = &guard.inner;
    let inbox = &guard.feeding.inbox;
    while inner.state.get() == State::Serving {
        match first(inbox.recv(), inner.closing.wait()).await {
            First::Left(batch) => {
                for (fd, assigned) in batch {
                    inner.serve_fd(fd, Some(assigned));
                }
            }
            First::Right(Ok(())) => break,
            First::Right(Err(_cancelled)) => {
                // The feed task itself was cancelled (the runtime is ending): close.
                inner.close();
                break;
            }
        }
    }
    for (fd, assigned) in inbox.close() {
        inner.serve_fd(fd, Some(assigned));
    }
}

/// Accepts on one listening socket: one multishot accept on io_uring, an accept op at a time
/// on epoll.
struct Acceptor {
    fd: SharedFd,
    /// io_uring only (armed at the first `next`).
    multishot: Option<Multishot>,
}

impl Acceptor {
    fn new(fd: SharedFd) -> Acceptor {
        let multishot = (current_backend() == Backend::IoUring)
            .then(|| Multishot::new(MultishotKind::Accept, ACCEPT_QUEUE_CAP));
        Acceptor { fd, multishot }
    }

    /// The next accepted socket; errors as they come (the loop decides which to ride out).
    async fn next(&mut self) -> io::Result<OwnedFd> {
        let Some(multishot) = &mut self.multishot else {
            return socket::sock_accept(&self.fd).await.map(|(fd, _)| fd);
        };
        loop {
            if !multishot.is_armed() {
                let sqe = with_target!(self.fd, t => opcode::AcceptMulti::new(t)
                    .flags(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
                    .build());
                // SAFETY: the SQE names only the listener's descriptor (which the driver keeps
                // open until the op's last completion) and no memory.
                unsafe { multishot.arm(sqe, &self.fd)? };
            }
            match next_completion(multishot, true).await? {
                // Ended (after an error, or our cap): re-arm.
                None => continue,
                // SAFETY: a successful accept's result is a new descriptor nobody owns.
                Some(res) if res >= 0 => return Ok(unsafe { OwnedFd::from_raw_fd(res) }),
                Some(res) if res == -libc::ECANCELED => continue,
                Some(res) => return Err(io::Error::from_raw_os_error(-res)),
            }
        }
    }

    /// After the close: stops the multishot accept and hands every socket it still produces
    /// to `serve`, until its last completion. Nothing to do on epoll: an accept op dropped
    /// while it waits has accepted nothing, and `close` emptied the kernel's queue.
    async fn drain(&mut self, mut serve: impl FnMut(OwnedFd)) {
        let Some(multishot) = &mut self.multishot else {
            return;
        };
        multishot.cancel();
        let mut waiting = false;
        loop {
            let next = next_completion(multishot, waiting).await;
            waiting = true;
            match next {
                // SAFETY: a successful accept's result is a new descriptor nobody owns.
                Ok(Some(res)) if res >= 0 => serve(unsafe { OwnedFd::from_raw_fd(res) }),
                Ok(Some(_error)) => continue,
                // Its last completion; or the task was cancelled, and dropping the multishot
                // closes what it still produces.
                Ok(None) | Err(_) => return,
            }
        }
    }
}

/// The next completion of a multishot op, `None` once it ended; a cancellation point.
/// `waiting`: the caller was already waiting on the op (an armed accept stream), so a
/// cancellation delivered to another future earlier in this task poll reaches it too; a first
/// wait takes only a request still pending (see "Concurrent branches" in the runtime's `task`
/// docs).
async fn next_completion(
    multishot: &mut Multishot,
    waiting: bool,
) -> Result<Option<i32>, Cancelled> {
    let mut polled = false;
    poll_fn(|cx| match multishot.poll_next(cx) {
        Poll::Pending => {
            let request = if waiting || polled {
                take_cancel_request_waiting()
            } else {
                take_cancel_request()
            };
            polled = true;
            match request {
                Some(c) => Poll::Ready(Err(c)),
                None => Poll::Pending,
            }
        }
        Poll::Ready(r) => Poll::Ready(Ok(r.map(|(res, _flags)| res))),
    })
    .await
}

/// Resets a TCP connection without closing its descriptor (the handler still holds it):
/// `connect` with `AF_UNSPEC` disconnects the socket, and a connected TCP socket that
/// disconnects sends a reset.
fn reset(fd: &SharedFd) -> io::Result<()> {
    // SAFETY: an all-zero sockaddr is a valid value; we set its family.
    let mut addr: libc::sockaddr = unsafe { std::mem::zeroed() };
    addr.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
    // SAFETY: `addr` lives across the call and the length is its size; the descriptor is kept
    // open by `fd`.
    let r = unsafe {
        libc::connect(
            fd.raw(),
            &addr,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits for the next delivery of any of `signals`.
async fn any_signal(signals: &mut [Signal]) -> io::Result<SignalKind> {
    let kinds: Vec<SignalKind> = signals.iter().map(Signal::kind).collect();
    let mut waits: Vec<Pin<Box<dyn Future<Output = io::Result<()>> + '_>>> = signals
        .iter_mut()
        .map(|s| Box::pin(s.recv()) as Pin<Box<dyn Future<Output = io::Result<()>>>>)
        .collect();
    poll_fn(|cx| {
        for (kind, wait) in kinds.iter().zip(waits.iter_mut()) {
            if let Poll::Ready(r) = wait.as_mut().poll(cx) {
                return Poll::Ready(r.map(|()| *kind));
            }
        }
        Poll::Pending
    })
    .await
}

/// Which of two futures finished first.
enum First<A, B> {
    Left(A),
    Right(B),
}

/// Polls `a` then `b` until one finishes; the other is dropped. Both are runtime futures, so a
/// cancellation reaches whichever the task is waiting on.
async fn first<A: Future, B: Future>(a: A, b: B) -> First<A::Output, B::Output> {
    let mut a = pin!(a);
    let mut b = pin!(b);
    poll_fn(|cx| {
        if let Poll::Ready(x) = a.as_mut().poll(cx) {
            return Poll::Ready(First::Left(x));
        }
        if let Poll::Ready(y) = b.as_mut().poll(cx) {
            return Poll::Ready(First::Right(y));
        }
        Poll::Pending
    })
    .await
}
