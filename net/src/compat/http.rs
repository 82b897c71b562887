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
//! hyper's HTTP/1 header-read timeout starts once a request's first bytes are in, and
//! hyper-util's auto builder reads a connection's first bytes (to tell HTTP/1 from HTTP/2)
//! with no timer at all: a client that connects and sends nothing would hold its connection
//! for ever. [`Http::header_timeout`] covers that too: a connection must complete its first
//! request head within the timeout (with HTTP/2: send its first request), or it is closed;
//! later requests get hyper's own header timeout of the same length.

use std::cell::Cell;
use std::error::Error as StdError;
use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::server::conn::auto::{self, HttpServerConnExec};
use ringloop_runtime::compat::hyper::{HyperExecutor, HyperTimer};

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
/// Built once and shared by every connection of a runtime (a connection borrows it, so the
/// settings take no room in each connection's future). It is `!Send`, as the connections it
/// serves are: with shards, build one per shard.
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
    /// connection's start, later ones (HTTP/1) from their first byte. `None`: no limit.
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
    /// open when the grace ends is cancelled and closed. Connection errors end only their
    /// connection.
    pub fn serve<S, B>(self, listener: TcpListener, service: S) -> Server
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + 'static,
        S::Future: 'static,
        S::Error: Into<Error>,
        B: Body + 'static,
        B::Error: Into<Error>,
        HyperExecutor: HttpServerConnExec<S::Future, B>,
    {
        let http = Rc::new(self);
        Server::tcp(listener, move |stream, shutdown| {
            let http = http.clone();
            let service = service.clone();
            async move {
                if http.nodelay {
                    let _ = stream.set_nodelay(true);
                }
                let io = Io::with_mechanism(stream, http.mechanism);
                let _ = http.serve_connection(io, service, Some(&shutdown)).await;
            }
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
        let http = Rc::new(self);
        Server::unix(listener, move |stream, shutdown| {
            let http = http.clone();
            let service = service.clone();
            async move {
                let io = Io::with_mechanism(stream, http.mechanism);
                let _ = http.serve_connection(io, service, Some(&shutdown)).await;
            }
        })
    }

    /// Serves one connection on `io` (an [`Io`], a TLS stream over one, anything with hyper's
    /// I/O traits) until the client is done. With `shutdown` (a [`Server`]'s signal, as its
    /// handlers get it), a shutdown lets the request in progress finish, then closes.
    ///
    /// # Errors
    /// hyper's error that ended the connection; an [`io::Error`] of kind
    /// [`TimedOut`](io::ErrorKind::TimedOut) if the first request head did not come within
    /// the header timeout. A cancelled task ends with an error carrying
    /// [`Cancelled`](ringloop_runtime::Cancelled) (from the connection's I/O) or, if it was
    /// cancelled while waiting for the shutdown signal, with that
    /// [`Cancelled`](ringloop_runtime::Cancelled); the connection is closed either way.
    pub async fn serve_connection<I, S, B>(
        &self,
        io: I,
        service: S,
        shutdown: Option<&ShutdownSignal>,
    ) -> Result<(), Error>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
        S: Service<Request<Incoming>, Response = Response<B>>,
        S::Future: 'static,
        S::Error: Into<Error>,
        B: Body + 'static,
        B::Error: Into<Error>,
        HyperExecutor: HttpServerConnExec<S::Future, B>,
    {
        // Kept here, beside the flags the loop below reads at every wake-up (the caller's
        // signal is in its own future, another cache line to touch).
        let shutdown = shutdown.cloned();
        // Whether a request came: it ends the first request head's deadline. Borrowed by the
        // service, which lives in this future too: no allocation of its own to touch.
        let asked = Cell::new(false);
        let service = {
            let asked = &asked;
            hyper::service::service_fn(move |req| {
                asked.set(true);
                service.call(req)
            })
        };
        let mut conn = pin!(self.builder.serve_connection(io, service));
        let mut stop = pin!(async {
            match &shutdown {
                Some(s) => s.wait().await,
                None => std::future::pending().await,
            }
        });
        // Whether `stop` has been polled (its waker is registered with the signal's event):
        // after that it is polled again only once the signal is set, not at every wake-up of
        // the connection.
        let mut stop_armed = false;
        let mut stopping = false;
        let mut first = self
            .header_timeout
            .map(|t| Box::pin(ringloop_runtime::sleep(t)));
        poll_fn(|cx| {
            // The connection first: a task dump shows what it waits on (its socket), not the
            // shutdown signal or the first request's timer.
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
            if first.is_none() {
                // The first request came: nothing more to time here.
            } else if asked.get() {
                first = None;
            } else if let Some(Poll::Ready(r)) = first.as_mut().map(|t| t.as_mut().poll(cx)) {
                return Poll::Ready(Err(match r {
                    Ok(()) => io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no complete request head within the header timeout",
                    )
                    .into(),
                    Err(cancelled) => cancelled.into(),
                }));
            }
            // Once the server shuts down: finish the request in progress, then close (an idle
            // keep-alive connection closes at once). A cancel (the grace is over) reaches the
            // connection's I/O, which ends it with an error; the connection is then dropped,
            // which closes it.
            let signalled = shutdown.as_ref().is_some_and(ShutdownSignal::is_set);
            if !stopping && (!stop_armed || signalled) {
                stop_armed = true;
                if let Poll::Ready(r) = stop.as_mut().poll(cx) {
                    if let Err(cancelled) = r {
                        return Poll::Ready(Err(cancelled.into()));
                    }
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                    return conn.as_mut().poll(cx);
                }
            }
            Poll::Pending
        })
        .await
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
