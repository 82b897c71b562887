//! hyper's HTTP/1 and HTTP/2 server on ringloop, one call to serve a listener (the `http-server`
//! feature): ringloop's `axum::serve`.
//!
//! [`Http`] holds hyper's connection settings (hyper-util's auto builder: HTTP/1.1, and HTTP/2
//! when a client opens with its preface), already wired to ringloop's executor and timer
//! ([`HyperExecutor`], [`HyperTimer`]). [`Http::serve`] serves a [`TcpListener`] with a hyper
//! `Service`, each connection a task of a [`Server`], so the server's whole life cycle comes
//! with it: [`Server::shutdown_on_signals`] stops accepting on SIGTERM or SIGINT, lets every
//! connection finish the request it is serving (hyper's graceful shutdown: an idle keep-alive
//! connection closes at once), and cancels what is still running when the grace is over.
//! [`Http::serve_connection`] serves one connection you accepted yourself (after a TLS
//! handshake, say).
//!
//! ```no_run
//! use std::convert::Infallible;
//! use std::time::Duration;
//!
//! use http_body_util::Full;
//! use hyper::body::Bytes;
//! use hyper::service::service_fn;
//! use hyper::Response;
//! use ringloop_net::compat::http::Http;
//! use ringloop_net::TcpListener;
//!
//! ringloop_runtime::Runtime::new()?.block_on(async {
//!     let listener = TcpListener::bind("127.0.0.1:8080".parse().unwrap())?;
//!     let hello = service_fn(|_req| async {
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("Hello, World!"))))
//!     });
//!     let server = Http::new().serve(listener, hello);
//!     // The first SIGTERM or SIGINT: 5 s for the requests in progress; a second: at once.
//!     let report = server.shutdown_on_signals(Duration::from_secs(5))?.await?;
//!     println!("{} connections finished their requests", report.finished);
//!     Ok::<_, std::io::Error>(())
//! })?;
//! # Ok::<_, std::io::Error>(())
//! ```
//!
//! An axum `Router` is a tower service: wrap it in [`TowerToHyperService`] (re-exported here):
//! `Http::new().serve(listener, TowerToHyperService::new(router))`.
//!
//! # The header timeout
//!
//! hyper-util's auto builder reads a connection's first bytes (to tell HTTP/1 from HTTP/2)
//! with no timer at all: a client that connects and sends nothing would hold its connection
//! for ever. [`Http::header_timeout`] covers that: a connection must complete its first
//! request head within the timeout (with HTTP/2: send its first request), or it is closed.
//! After that, HTTP/1 connections get hyper's own header timeout of the same length, which
//! runs from the end of the previous response: a keep-alive connection that does not complete
//! its next request head within the timeout is closed, whether it sent part of one or nothing
//! (so the header timeout is also the keep-alive idle timeout). An HTTP/2 connection is not
//! timed after its first request; hyper's `http2().keep_alive_interval(..)` (through
//! [`Http::builder`]) probes idle ones with PINGs and closes those that do not answer.
//! A connection closed by a timeout is closed as it is, without a `408` or a `GOAWAY`.
//!
//! hyper bounds a request head by its read buffer (`http1().max_buf_size(..)`, about 400 KB by
//! default, answered with `431`). hyper checks the bound between reads, so a head slightly
//! larger that arrives in one read can still be taken (a read fills whatever room hyper's
//! buffer has): where exactly the line falls depends on how the bytes arrive. hyper also
//! answers `431` to more than `http1().max_headers(..)` headers (100 by default).
//!
//! # Shutdown and HTTP/2
//!
//! hyper's graceful shutdown of an HTTP/2 connection sends a `GOAWAY` and a `PING`, and closes
//! once the client has answered the `PING` and its open streams are done; a client that never
//! answers keeps its connection until the grace ends (it is then cancelled and counted in
//! [`ShutdownReport::cancelled`](crate::ShutdownReport::cancelled)).

use std::cell::Cell;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::server::conn::auto::{self, HttpServerConnExec};
use ringloop_runtime::compat::hyper::{HyperExecutor, HyperTimer};
use ringloop_runtime::Cancelled;

use crate::compat::{Io, Mechanism};
use crate::{Server, ShutdownSignal, TcpListener, UnixListener};

pub use hyper_util::service::TowerToHyperService;

/// The error a served connection ends with: hyper's, or the header timeout's
/// ([`io::ErrorKind::TimedOut`]).
pub type Error = Box<dyn StdError + Send + Sync>;

/// The header timeout [`Http::new`] sets: 30 seconds.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// hyper's HTTP/1 + HTTP/2 server settings on ringloop's executor and timer; serves listeners
/// ([`serve`](Self::serve)) and single connections ([`serve_connection`](Self::serve_connection)).
///
/// Built once and shared by every connection of a runtime. A connection's future does not
/// borrow it: each connection takes a copy of hyper's settings, which it keeps only until the
/// client's first bytes tell HTTP/1 from HTTP/2 (hyper-util's `Connection::into_owned`). It is
/// `!Send`, as the connections it serves are: with shards, build one per shard.
pub struct Http {
    builder: auto::Builder<HyperExecutor>,
    header_timeout: Option<Duration>,
    mechanism: Mechanism,
    nodelay: bool,
}

impl Http {
    /// HTTP/1.1 and HTTP/2 (chosen by the client's first bytes), a header timeout of
    /// [`DEFAULT_HEADER_TIMEOUT`], `TCP_NODELAY` on, and reads through the connection's pooled
    /// receive ([`Mechanism::Pooled`]: measured the cheaper one for many connections with small
    /// requests).
    pub fn new() -> Http {
        let mut builder = auto::Builder::new(HyperExecutor);
        builder.http1().timer(HyperTimer);
        builder.http2().timer(HyperTimer);
        Http {
            builder,
            header_timeout: None,
            mechanism: Mechanism::Pooled,
            nodelay: true,
        }
        .header_timeout(Some(DEFAULT_HEADER_TIMEOUT))
    }

    /// HTTP/1 only (HTTP/2's preface is answered as a bad HTTP/1 request).
    pub fn http1_only(mut self) -> Http {
        self.builder = self.builder.http1_only();
        self
    }

    /// HTTP/2 only (prior knowledge, `h2c`; or after TLS's ALPN chose `h2`).
    pub fn http2_only(mut self) -> Http {
        self.builder = self.builder.http2_only();
        self
    }

    /// How long a client has to send a complete request head: its first one counted from the
    /// connection's start, later ones (HTTP/1) from the end of the previous response, so an
    /// idle HTTP/1 keep-alive connection is closed after it too (see the
    /// [module docs](self#the-header-timeout)). `None`: no limit.
    pub fn header_timeout(mut self, timeout: Option<Duration>) -> Http {
        self.builder.http1().header_read_timeout(timeout);
        self.header_timeout = timeout;
        self
    }

    /// How [`serve`](Self::serve) reads its connections (see [`Mechanism`]).
    pub fn reads(mut self, mechanism: Mechanism) -> Http {
        self.mechanism = mechanism;
        self
    }

    /// Whether [`serve`](Self::serve) sets `TCP_NODELAY` on its connections (default: yes; a
    /// response hyper flushes in pieces would otherwise wait for the client's ACK).
    pub fn nodelay(mut self, on: bool) -> Http {
        self.nodelay = on;
        self
    }

    /// hyper-util's builder itself, for hyper's other settings (`.http1().keep_alive(false)`,
    /// `.http2().max_concurrent_streams(..)`, ...). Its timers are ringloop's; replacing them
    /// with another runtime's breaks the timeouts.
    pub fn builder(&mut self) -> &mut auto::Builder<HyperExecutor> {
        &mut self.builder
    }

    /// Serves every connection `listener` accepts with `service` (cloned for each), each in a
    /// task of the returned [`Server`]. When the server shuts down, each connection finishes
    /// the request it is serving, then closes (hyper's graceful shutdown); a connection still
    /// open when the grace ends is cancelled and closed, and its task ends cancelled (it
    /// returns [`serve_connection`](Self::serve_connection)'s error, which carries the
    /// [`Cancelled`]). Connection errors end only their connection.
    pub fn serve<S, B>(self, listener: TcpListener, service: S) -> Server
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + 'static,
        S::Future: 'static,
        S::Error: Into<Error>,
        B: Body + 'static,
        B::Error: Into<Error>,
        HyperExecutor: HttpServerConnExec<S::Future, B>,
    {
        // The connection's future is `serve_connection`'s own, not wrapped in another (each
        // layer of futures is state a wake-up reads).
        Server::tcp(listener, move |stream, shutdown| {
            if self.nodelay {
                let _ = stream.set_nodelay(true);
            }
            let io = Io::with_mechanism(stream, self.mechanism);
            self.serve_connection(io, service.clone(), Some(&shutdown))
        })
    }

    /// [`serve`](Self::serve) for a Unix-domain listener.
    pub fn serve_unix<S, B>(self, listener: UnixListener, service: S) -> Server
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + 'static,
        S::Future: 'static,
        S::Error: Into<Error>,
        B: Body + 'static,
        B::Error: Into<Error>,
        HyperExecutor: HttpServerConnExec<S::Future, B>,
    {
        Server::unix(listener, move |stream, shutdown| {
            let io = Io::with_mechanism(stream, self.mechanism);
            self.serve_connection(io, service.clone(), Some(&shutdown))
        })
    }

    /// Serves one connection on `io` (an [`Io`], a TLS stream over one, anything with hyper's
    /// I/O traits) until the client is done. With `shutdown` (a [`Server`]'s signal, as its
    /// handlers get it), a shutdown lets the request in progress finish, then closes. The
    /// first request head's deadline ([`header_timeout`](Self::header_timeout)) counts from
    /// this call.
    ///
    /// The future borrows neither `self` nor `shutdown`, and it is small: hyper's connection
    /// state (over a kilobyte) is boxed, so what a wake-up of the connection's task reads
    /// before hyper's state sits beside the task's header. Return it from a
    /// [`Server`] handler as it is, rather than awaiting it inside an `async` block: each
    /// layer of futures is more state for every wake-up to read (at thousands of
    /// connections, a cache miss each), as [`serve`](Self::serve) does.
    ///
    /// ```no_run
    /// use std::convert::Infallible;
    ///
    /// use http_body_util::Full;
    /// use hyper::body::Bytes;
    /// use hyper::service::service_fn;
    /// use hyper::Response;
    /// use ringloop_net::compat::http::Http;
    /// use ringloop_net::compat::Io;
    /// use ringloop_net::{Server, TcpListener};
    ///
    /// ringloop_runtime::Runtime::new()?.block_on(async {
    ///     let listener = TcpListener::bind("127.0.0.1:8080".parse().unwrap())?;
    ///     let http = Http::new();
    ///     let server = Server::tcp(listener, move |stream, shutdown| {
    ///         let hello = service_fn(|_req| async {
    ///             Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("Hello, World!"))))
    ///         });
    ///         // The handler's future is the connection's future itself.
    ///         http.serve_connection(Io::new(stream), hello, Some(&shutdown))
    ///     });
    ///     server.wait_closed().await.ok();
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # Ok::<_, std::io::Error>(())
    /// ```
    ///
    /// # Errors
    /// hyper's error that ended the connection; an [`io::Error`] of kind
    /// [`TimedOut`](io::ErrorKind::TimedOut) if the first request head did not come within
    /// the header timeout. A cancelled task ends with an error carrying
    /// [`Cancelled`] (from the connection's I/O) or, if it was
    /// cancelled while waiting for the shutdown signal, with that
    /// [`Cancelled`]; the connection is closed either way.
    pub fn serve_connection<I, S, B>(
        &self,
        io: I,
        service: S,
        shutdown: Option<&ShutdownSignal>,
    ) -> impl Future<Output = Result<(), Error>>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
        S: Service<Request<Incoming>, Response = Response<B>>,
        S::Future: 'static,
        S::Error: Into<Error>,
        B: Body + 'static,
        B::Error: Into<Error>,
        HyperExecutor: HttpServerConnExec<S::Future, B>,
    {
        // The first request head's deadline, and the flag that ends it: the service sets it at
        // the first request and lets go of it (later requests touch nothing of it).
        let first = self.header_timeout.map(|t| FirstRequest {
            timer: Box::pin(ringloop_runtime::sleep(t)),
            asked: Rc::new(Cell::new(false)),
        });
        let asked = Cell::new(first.as_ref().map(|f| f.asked.clone()));
        let service = hyper::service::service_fn(move |req| {
            if let Some(asked) = asked.take() {
                asked.set(true);
            }
            service.call(req)
        });
        ServeConnection {
            // Boxed, with its own copy of hyper's settings (which it keeps only until it knows
            // the protocol): hyper's state is large, and what this future reads at every
            // wake-up should share a cache line with the task's header, not sit past it.
            conn: Box::pin(self.builder.serve_connection(io, service).into_owned()),
            first,
            shutdown: shutdown.cloned(),
            stop: None,
            stopping: false,
        }
    }
}

/// The first request head's deadline ([`Http::header_timeout`]) and whether a request came.
struct FirstRequest {
    timer: Pin<Box<ringloop_runtime::Sleep>>,
    asked: Rc<Cell<bool>>,
}

/// The wait for a server's shutdown signal, boxed (polled once, then only when the signal is set).
type StopWait = Pin<Box<dyn Future<Output = Result<(), Cancelled>>>>;

/// [`Http::serve_connection`]'s future: small, its fields in the order a wake-up reads them,
/// the connection itself behind a pointer.
#[repr(C)]
struct ServeConnection<C> {
    conn: Pin<Box<C>>,
    first: Option<FirstRequest>,
    shutdown: Option<ShutdownSignal>,
    /// The wait for `shutdown`, once polled (its waker registered with the signal's event):
    /// after that it is polled again only once the signal is set, not at every wake-up.
    stop: Option<StopWait>,
    stopping: bool,
}

impl<I, S, B> Future for ServeConnection<auto::Connection<'static, I, S, HyperExecutor>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: 'static,
    S::Error: Into<Error>,
    B: Body + 'static,
    B::Error: Into<Error>,
    HyperExecutor: HttpServerConnExec<S::Future, B>,
{
    type Output = Result<(), Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        // The connection first: a task dump shows what it waits on (its socket), not the
        // shutdown signal or the first request's timer.
        if let Poll::Ready(r) = this.conn.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        if let Some(first) = &mut this.first {
            if first.asked.get() {
                // The first request came: nothing more to time here.
                this.first = None;
            } else if let Poll::Ready(r) = first.timer.as_mut().poll(cx) {
                return Poll::Ready(Err(match r {
                    Ok(()) => io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no complete request head within the header timeout",
                    )
                    .into(),
                    Err(cancelled) => cancelled.into(),
                }));
            }
        }
        // Once the server shuts down: finish the request in progress, then close (an idle
        // keep-alive connection closes at once). A cancel (the grace is over) reaches the
        // connection's I/O, which ends it with an error; the connection is then dropped,
        // which closes it.
        let Some(shutdown) = &this.shutdown else {
            return Poll::Pending;
        };
        if this.stopping || (this.stop.is_some() && !shutdown.is_set()) {
            return Poll::Pending;
        }
        let stop = this.stop.get_or_insert_with(|| {
            let signal = shutdown.clone();
            Box::pin(async move { signal.wait().await })
        });
        match stop.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(cancelled)) => Poll::Ready(Err(cancelled.into())),
            Poll::Ready(Ok(())) => {
                this.stopping = true;
                this.conn.as_mut().graceful_shutdown();
                this.conn.as_mut().poll(cx)
            }
        }
    }
}

impl Default for Http {
    fn default() -> Http {
        Http::new()
    }
}

impl fmt::Debug for Http {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http")
            .field("header_timeout", &self.header_timeout)
            .field("mechanism", &self.mechanism)
            .field("nodelay", &self.nodelay)
            .finish_non_exhaustive()
    }
}
