//! tokio's and hyper's borrowed-buffer I/O traits on ringloop's byte streams.
//!
//! Libraries written for [`tokio::io::AsyncRead`]/[`AsyncWrite`](tokio::io::AsyncWrite) (the
//! `tokio-io` feature) or [`hyper::rt::Read`]/[`Write`](hyper::rt::Write) (the `hyper`
//! feature) lend the stream a buffer for the length of one poll. A completion-based op has to
//! own its buffer until the kernel is done with it, so these traits cannot be implemented by
//! handing the lent buffer to an op. [`Io`] wraps a [`TcpStream`], a [`UnixStream`] or one of
//! their owned halves and bridges the two, in one of two ways ([`Mechanism`]):
//!
//! * [`Mechanism::Readiness`] (the default): a non-blocking `recv`/`send`/`sendmsg` straight
//!   into or out of the lent buffer, and on `EAGAIN` a single-shot poll op through the ring
//!   (`IORING_OP_POLL_ADD`), then the call again: what the epoll backend does for every op.
//! * [`Mechanism::Pooled`]: reads copy out of the connection's
//!   [`PooledReceiver`] (a multishot receive into the runtime's
//!   buffer pool on io_uring), keeping the rest of a partly read chunk for the next read;
//!   writes are the same as with `Readiness`.
//!
//! Both work on both backends, with the same semantics. The default was chosen by measurement
//! (`net/DESIGN.md`, "Borrowed-buffer traits"): on one connection the two are level for 64-byte
//! messages and readiness is much faster for 16 KiB ones (no copy through 2 KiB pool
//! buffers); the pooled reads save about a tenth of the CPU per message only with many
//! connections exchanging small messages on io_uring.
//!
//! ```
//! # #[cfg(feature = "tokio-io")] {
//! use ringloop_net::compat::Io;
//! use ringloop_net::{TcpListener, TcpStream};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! ringloop_runtime::Runtime::new().unwrap().block_on(async {
//!     let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap())?;
//!     let addr = listener.local_addr()?;
//!     let mut client = Io::new(TcpStream::connect(addr).await?);
//!     let mut server = Io::new(listener.accept().await?.0);
//!
//!     client.write_all(b"ping").await?;
//!     let mut buf = [0u8; 4];
//!     server.read_exact(&mut buf).await?;
//!     assert_eq!(&buf, b"ping");
//!     Ok::<_, std::io::Error>(())
//! }).unwrap();
//! # }
//! ```
//!
//! # Semantics, and where they differ from tokio's `TcpStream`
//!
//! * **Writes** go straight to the socket, as tokio's do: `Ready(n)` means `n` bytes are in
//!   the kernel's send buffer, an error (`EPIPE`, `ECONNRESET`, ...) comes back from the
//!   `poll_write` that met it (a connection reset after a write was accepted shows at a later
//!   one), `poll_flush` has nothing to do, and `poll_shutdown` half-closes (`shutdown(2)` of
//!   the write direction: the peer reads the end of the stream, this side can still read). A
//!   vectored write is one `sendmsg`.
//! * **Cancellation** (ringloop's, which tokio does not have): a ringloop task cancelled while
//!   suspended in a read or a write gets the cancellation from that poll as an
//!   [`io::Error`] of kind [`Other`](io::ErrorKind::Other) that carries
//!   [`Cancelled`](ringloop_runtime::Cancelled)
//!   ([`is_cancelled`](ringloop_runtime::is_cancelled) tells it apart); nothing was read or
//!   written by that poll, so nothing is lost. A ringloop `timeout` around a read or a write
//!   ends it the same way. Code written for tokio treats it as an I/O error and unwinds (hyper
//!   ends the connection); a task that returns the error ends *cancelled*.
//! * **Dropping a read or write future** (a `select`, tokio's `timeout` style) loses nothing: a
//!   read either copied bytes and returned them, or took none.
//! * **One reader.** While an `Io` reads a stream, do not read the stream by other means (its
//!   own `read`, a pooled receiver of yours): the pooled mechanism's multishot receive takes
//!   the stream's incoming bytes. [`into_inner`](Io::into_inner) hands every unread byte back.
//! * An `Io` belongs to the ringloop runtime that first polled it (its ops and its receiver
//!   are that runtime's); polling it outside a ringloop runtime panics.
//!
//! # Why a wrapper
//!
//! The traits take `Pin<&mut Self>` and need state between polls: the poll op in flight, the
//! connection's receiver, the rest of a chunk. Keeping that in [`TcpStream`] itself would grow
//! every stream (and make the owned-buffer API pay for it); tokio-util's `Compat` and
//! hyper-util's `TokioIo` are wrappers for the same reason. [`Io`] is `Unpin`, so it goes
//! straight into hyper's `serve_connection`/`handshake` and into tokio-rustls, and
//! `Io::new(stream)` is all it takes.
//!
//! [`TcpStream`]: crate::TcpStream
//! [`UnixStream`]: crate::UnixStream

use std::fmt;
use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::{self, MaybeUninit};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use ringloop_runtime::{current_backend, Backend, Op, SharedFd};

use crate::ops::PollReady;
use crate::pooled::{self, RecvSlot};
use crate::{tcp, unix, AsSharedFd, PooledReceiver, TcpStream, UnixStream};

#[cfg(feature = "http-server")]
pub mod http;
#[cfg(feature = "hyper")]
mod hyper_impls;
#[cfg(feature = "tokio-io")]
mod tokio_impls;

/// Linux accepts at most this many iovecs per call (`UIO_MAXIOV`); a vectored write of more
/// slices writes the first 1024.
const MAX_IOVECS: usize = 1024;

/// How an [`Io`] moves bytes between the kernel and the buffers tokio and hyper lend it
/// (the writes are the same for both: a non-blocking `send` straight from the lent buffer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Mechanism {
    /// A non-blocking `recv` straight into the lent buffer, and on `EAGAIN` a single-shot poll
    /// op through the ring (`IORING_OP_POLL_ADD`; a readiness wait on epoll), then the call
    /// again. No copy and no pool buffer. The default: as fast as the pooled reads for small
    /// messages on one connection, much faster for large ones.
    #[default]
    Readiness,
    /// Reads copy out of the connection's [`PooledReceiver`] (a multishot receive into the
    /// runtime's buffer pool on io_uring, a receive into a pool buffer on epoll), keeping the
    /// rest of a partly read chunk for the next read. No system call per read on io_uring:
    /// for servers with many connections exchanging small messages there (about a tenth less
    /// CPU per message measured at 100 connections and 64 bytes); slower for large messages,
    /// which are copied through the pool's 2 KiB buffers. Holds pool buffers while data waits
    /// unread (at most the receiver's budget, see [`pooled`]).
    Pooled,
}

mod sealed {
    pub trait Sealed {}
}

/// A byte-stream socket an [`Io`] can wrap: [`TcpStream`], [`UnixStream`] and their owned
/// read and write halves. Sealed.
pub trait Stream: sealed::Sealed + AsSharedFd + Unpin {}

/// A [`Stream`] that can be read: the streams and their read halves ([`Io`] implements the
/// read traits for these).
pub trait ReadStream: Stream {}

/// A [`Stream`] that can be written: the streams and their write halves ([`Io`] implements the
/// write traits for these).
pub trait WriteStream: Stream {}

macro_rules! streams {
    (both: $($both:ty),*; read: $($read:ty),*; write: $($write:ty),*) => {
        $(
            impl sealed::Sealed for $both {}
            impl Stream for $both {}
            impl ReadStream for $both {}
            impl WriteStream for $both {}
        )*
        $(
            impl sealed::Sealed for $read {}
            impl Stream for $read {}
            impl ReadStream for $read {}
        )*
        $(
            impl sealed::Sealed for $write {}
            impl Stream for $write {}
            impl WriteStream for $write {}
        )*
    };
}

streams! {
    both: TcpStream, UnixStream;
    read: tcp::OwnedReadHalf, unix::OwnedReadHalf;
    write: tcp::OwnedWriteHalf, unix::OwnedWriteHalf
}

/// A ringloop byte stream (or one of its halves) with tokio's `AsyncRead`/`AsyncWrite` (feature
/// `tokio-io`) and hyper's `rt::Read`/`rt::Write` (feature `hyper`); see the
/// [module docs](self) for the mechanisms and where the semantics differ from tokio's.
///
/// `Io` is `Unpin`. A stream's `Io` splits into an `Io` per half with
/// [`into_split`](Io::into_split); tokio's `io::split` works too (the halves then share the
/// `Io` behind a lock).
///
#[cfg_attr(feature = "hyper", doc = "```")]
#[cfg_attr(not(feature = "hyper"), doc = "```ignore")]
/// // An HTTP/1 server on ringloop, with hyper.
/// use std::convert::Infallible;
/// use ringloop_net::{compat::Io, TcpListener};
///
/// async fn hello(
///     _req: hyper::Request<hyper::body::Incoming>,
/// ) -> Result<hyper::Response<String>, Infallible> {
///     Ok(hyper::Response::new("hello\n".to_owned()))
/// }
///
/// # fn main() {}
/// # #[allow(dead_code)]
/// async fn serve(listener: TcpListener) -> std::io::Result<()> {
///     loop {
///         let (stream, _peer) = listener.accept().await?;
///         ringloop_runtime::spawn(async move {
///             let service = hyper::service::service_fn(hello);
///             let conn = hyper::server::conn::http1::Builder::new()
///                 .serve_connection(Io::new(stream), service);
///             if let Err(e) = conn.await {
///                 eprintln!("connection: {e}");
///             }
///         });
///     }
/// }
/// ```
pub struct Io<S> {
    read: ReadState,
    write: WriteState,
    mechanism: Mechanism,
    /// The stream's descriptor number (fixed while the stream lives), for the system calls:
    /// read without touching the descriptor's shared allocation.
    raw: RawFd,
    stream: S,
}

// Every field is `Unpin`: the trait impls rely on it (they take `Pin<&mut Self>` apart).
const _: () = {
    const fn unpin<T: Unpin>() {}
    unpin::<Io<TcpStream>>();
    unpin::<Io<UnixStream>>();
    unpin::<Io<tcp::OwnedReadHalf>>();
    unpin::<Io<unix::OwnedWriteHalf>>();
};

impl<S: Stream> Io<S> {
    /// Wraps `stream` with the default [`Mechanism`] ([`Readiness`](Mechanism::Readiness)).
    pub fn new(stream: S) -> Io<S> {
        Io::with_mechanism(stream, Mechanism::default())
    }

    /// Wraps `stream` with the given [`Mechanism`].
    ///
    /// ```
    /// # #[cfg(feature = "tokio-io")]
    /// # ringloop_runtime::Runtime::new().unwrap().block_on(async {
    /// use ringloop_net::compat::{Io, Mechanism};
    /// use ringloop_net::UnixStream;
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    ///
    /// let (a, b) = UnixStream::pair()?;
    /// let mut a = Io::with_mechanism(a, Mechanism::Pooled);
    /// let mut b = Io::with_mechanism(b, Mechanism::Pooled);
    /// a.write_all(b"through the pool").await?;
    /// let mut got = vec![0u8; 16];
    /// b.read_exact(&mut got).await?; // copied out of a pool buffer
    /// assert_eq!(got, b"through the pool");
    /// # Ok::<_, std::io::Error>(()) }).unwrap();
    /// ```
    pub fn with_mechanism(stream: S, mechanism: Mechanism) -> Io<S> {
        Io {
            read: ReadState::default(),
            write: WriteState::default(),
            mechanism,
            raw: stream.as_shared_fd().raw(),
            stream,
        }
    }

    /// The mechanism this `Io` uses.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// The wrapped stream (for its options and addresses; reading or writing it directly while
    /// the `Io` is in use interleaves bytes unpredictably).
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// Gives the stream back. Every byte received and not yet read goes back with it (the
    /// stream's next read, or its next pooled receiver, returns them first).
    pub fn into_inner(self) -> S {
        // The receiver (dropped with the reading state) hands what it holds back to the
        // stream, the rest of a partly read chunk first, and with it an error met after the
        // last bytes read (the socket reported it once: it would be lost otherwise).
        let Io {
            mut read, stream, ..
        } = self;
        if let (Some(pooled), Some(e)) = (read.pooled.as_mut(), read.pooled_error.take()) {
            pooled.rx.keep_error(e);
        }
        drop(read);
        stream
    }
}

impl Io<TcpStream> {
    /// Splits into a read half and a write half, each its own `Io`, usable from two tasks; the
    /// reading state goes with the read half. Dropping the write half shuts down the write
    /// direction.
    pub fn into_split(self) -> (Io<tcp::OwnedReadHalf>, Io<tcp::OwnedWriteHalf>) {
        let (r, w) = self.stream.into_split();
        split(self.read, self.write, self.mechanism, r, w)
    }
}

impl Io<UnixStream> {
    /// Splits into a read half and a write half; see [`Io::<TcpStream>::into_split`].
    pub fn into_split(self) -> (Io<unix::OwnedReadHalf>, Io<unix::OwnedWriteHalf>) {
        let (r, w) = self.stream.into_split();
        split(self.read, self.write, self.mechanism, r, w)
    }
}

fn split<R: Stream, W: Stream>(
    read: ReadState,
    write: WriteState,
    mechanism: Mechanism,
    r: R,
    w: W,
) -> (Io<R>, Io<W>) {
    (
        Io {
            read,
            write: WriteState::default(),
            mechanism,
            raw: r.as_shared_fd().raw(),
            stream: r,
        },
        Io {
            read: ReadState::default(),
            write,
            mechanism,
            raw: w.as_shared_fd().raw(),
            stream: w,
        },
    )
}

impl<S: Stream> From<S> for Io<S> {
    /// [`Io::new`].
    fn from(stream: S) -> Io<S> {
        Io::new(stream)
    }
}

impl<S: fmt::Debug> fmt::Debug for Io<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Io")
            .field("stream", &self.stream)
            .field("mechanism", &self.mechanism)
            .finish_non_exhaustive()
    }
}

impl<S: AsRawFd> AsRawFd for Io<S> {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.stream.as_raw_fd()
    }
}

// The operations the trait impls (`tokio_impls`, `hyper_impls`) call. Each keeps the trait's
// contract: a read writes only initialised bytes into `dst` and returns how many it wrote at
// its start; a write returns how many of the caller's bytes it took.
impl<S: Stream> Io<S> {
    /// Reads into `dst`; `Ok(n)`: the first `n` elements of `dst` are initialised with the
    /// stream's next bytes. `Ok(0)` for an empty `dst` and at the end of the stream (again
    /// at every later read).
    pub(crate) fn poll_read_uninit(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut [MaybeUninit<u8>],
    ) -> Poll<io::Result<usize>> {
        if dst.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let fd = self.stream.as_shared_fd();
        let Some(slot) = self.stream.recv_slot() else {
            return Poll::Ready(Err(io::Error::other("a write half cannot be read")));
        };
        match self.mechanism {
            Mechanism::Readiness => self.read.poll_readiness(fd, self.raw, slot, cx, dst),
            Mechanism::Pooled => {
                // A read that this task poll has made already, with nothing more to find. (An
                // error kept for the next read comes first, but a read that keeps one never
                // leaves the shortcut set: the receive that failed cleared it.)
                if let Some(pooled) = self.read.pooled.as_deref() {
                    if let Some(pending) = pooled.rx.poll_idle(cx) {
                        debug_assert!(self.read.pooled_error.is_none());
                        return pending;
                    }
                }
                self.read.poll_pooled(fd, slot, cx, dst)
            }
        }
    }

    /// Writes some of `bufs` (in order, as one stream): one `send`, or one `sendmsg` for
    /// several slices; `Ok(0)` only if they are all empty.
    pub(crate) fn poll_write_vectored_inner(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let fd = self.stream.as_shared_fd();
        self.write.poll_write(fd, self.raw, cx, bufs)
    }

    /// Shuts down the write direction, once (the peer reads the end of the stream; reading
    /// goes on). Nothing is buffered, so there is nothing to flush first.
    pub(crate) fn poll_shutdown_inner(&mut self) -> Poll<io::Result<()>> {
        if !self.write.shut_down {
            tcp::with_socket(self.stream.as_shared_fd(), |s| {
                s.shutdown(std::net::Shutdown::Write)
            })?;
            self.write.shut_down = true;
        }
        Poll::Ready(Ok(()))
    }
}

/// The cap of the pooled mechanism's receiver: a 16 KiB message (hyper's usual read size)
/// is 8 pool buffers, and a receive bundle takes at most half the receiver's room, so with the
/// sockets' default cap of 16 every such message stopped the multishot receive at its cap and
/// cost a re-arm (2 loop iterations and 2 ops per round trip instead of 1 and 0, measured).
/// The pool's share (`POOL_SHARE`) still bounds what one connection holds.
const POOLED_RECV_CAP: usize = 32;

/// Copies as much of `src` as fits into `dst`; returns how much.
pub(crate) fn copy_into(dst: &mut [MaybeUninit<u8>], src: &[u8]) -> usize {
    let n = src.len().min(dst.len());
    // A plain element-wise write (the compiler makes it a `memcpy`): no unsafe needed.
    for (d, s) in dst[..n].iter_mut().zip(&src[..n]) {
        d.write(*s);
    }
    n
}

/// The reading side's state between polls.
#[derive(Default)]
struct ReadState {
    /// Pooled: the receiver and what a read left, made at the first read (boxed: the
    /// receiver is large, and an `Io` with the default mechanism does not need it).
    pooled: Option<Box<Pooled>>,
    /// Pooled: an error met after a read had already copied bytes, for the next read.
    pooled_error: Option<io::Error>,
    /// Readiness: the wait for readability in flight.
    poll: Option<Op<PollReady>>,
    /// Readiness, io_uring: the last receive came back shorter than asked (the socket was
    /// drained then), so the next read submits its poll before it tries (as tokio clears its
    /// readiness): one `EAGAIN` saved per message. `POLL_ADD` looks at the socket when the
    /// kernel takes it, so data that came meanwhile completes it at once. Not on epoll: the
    /// driver keeps no readiness for a descriptor nobody waits on, so an event that came
    /// between the short read and the wait would be missed; only an `EAGAIN` right before
    /// the wait guarantees the next edge.
    drained: bool,
    /// Whether the runtime is on io_uring (looked up at the first receive).
    uring: Option<bool>,
}

/// The pooled mechanism's reading state. Boxed, cache-line aligned, the receiver first: what
/// each read touches is then the box's first lines (see `PooledReceiver`'s layout).
#[repr(C, align(64))]
struct Pooled {
    /// The connection's receiver (which also keeps the rest of a chunk that a read took only
    /// part of, first in line).
    rx: PooledReceiver,
}

impl Pooled {
    /// `error`: the `ReadState`'s, an error met after a read had already copied bytes, for
    /// the next read (kept there, beside the box's pointer, rather than in another line of
    /// the box).
    fn poll_read(
        &mut self,
        error: &mut Option<io::Error>,
        cx: &mut Context<'_>,
        dst: &mut [MaybeUninit<u8>],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = error.take() {
            return Poll::Ready(Err(e));
        }
        // Only this first read waits, so only it is a cancellation point; whatever arrives
        // meanwhile stays in the receiver.
        let mut filled = match ready!(self.rx.poll_copy(cx, true, dst)) {
            Ok(Some(n)) => n,
            // The end of the stream (the receiver says so again at every later read).
            Ok(None) => return Poll::Ready(Ok(0)),
            Err(e) => return Poll::Ready(Err(e)),
        };
        // Fill the rest of `dst` with what has already arrived, without waiting (io_uring:
        // the receiver's queue, no system call), unless the receive said that was the last
        // chunk queued.
        while filled < dst.len() && self.rx.may_have_more() {
            match self.rx.poll_copy(cx, false, &mut dst[filled..]) {
                Poll::Ready(Ok(Some(n))) => filled += n,
                // Nothing more yet, or the end of the stream (the receiver remembers it).
                Poll::Ready(Ok(None)) | Poll::Pending => break,
                Poll::Ready(Err(e)) => {
                    *error = Some(e);
                    break;
                }
            }
        }
        Poll::Ready(Ok(filled))
    }
}

impl ReadState {
    fn poll_pooled(
        &mut self,
        fd: &SharedFd,
        slot: &RecvSlot,
        cx: &mut Context<'_>,
        dst: &mut [MaybeUninit<u8>],
    ) -> Poll<io::Result<usize>> {
        let pooled = self.pooled.get_or_insert_with(|| {
            Box::new(Pooled {
                rx: slot.receiver(fd, POOLED_RECV_CAP),
            })
        });
        pooled.poll_read(&mut self.pooled_error, cx, dst)
    }

    fn poll_readiness(
        &mut self,
        fd: &SharedFd,
        raw: RawFd,
        slot: &RecvSlot,
        cx: &mut Context<'_>,
        dst: &mut [MaybeUninit<u8>],
    ) -> Poll<io::Result<usize>> {
        // What a dropped pooled receiver of this stream received comes first.
        if let Some(done) = pooled::poll_read_leftover(slot, cx, |src| copy_into(dst, src)) {
            return done;
        }
        loop {
            if self.poll.is_some() {
                // A cancellation, a deadline (or the poll's own error): nothing was read.
                ready!(poll_wait(&mut self.poll, cx))?;
                self.drained = false;
            }
            if !self.drained {
                // SAFETY: `dst` is valid for writes of `dst.len()` bytes (`MaybeUninit`
                // needs no initialisation to be written); `recv` writes at most that many
                // and says how many, and only those are reported initialised.
                let r = unsafe {
                    libc::recv(
                        raw,
                        dst.as_mut_ptr().cast::<libc::c_void>(),
                        dst.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if r >= 0 {
                    let n = r as usize;
                    let uring = *self
                        .uring
                        .get_or_insert_with(|| current_backend() == Backend::IoUring);
                    self.drained = uring && n > 0 && n < dst.len();
                    return Poll::Ready(Ok(n));
                }
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => {}
                    _ => return Poll::Ready(Err(e)),
                }
            }
            self.poll = Some(Op::new(PollReady::readable(fd.clone()).after_eagain()).unscoped());
        }
    }
}

/// The writing side's state between polls.
#[derive(Default)]
struct WriteState {
    /// The wait for writability in flight.
    poll: Option<Op<PollReady>>,
    /// `poll_shutdown` shut the write direction down.
    shut_down: bool,
}

impl WriteState {
    fn poll_write(
        &mut self,
        fd: &SharedFd,
        raw: RawFd,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if bufs.iter().all(|b| b.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        loop {
            if self.poll.is_some() {
                // A cancellation, a deadline (or the poll's own error): nothing was written.
                ready!(poll_wait(&mut self.poll, cx))?;
            }
            match send_now(raw, bufs) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Wait for room; the `EAGAIN` just seen guarantees the wake (see `PollReady`).
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.poll =
                        Some(Op::new(PollReady::writable(fd.clone()).after_eagain()).unscoped());
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Polls the readiness wait in `poll` (which must be there); it is gone once it resolves. Its
/// op is kept between reads (or writes), so it ignores deadline scopes (a deadline of one read
/// must not end a later one); the deadline of the scope being polled is checked here instead,
/// once the wait is pending: the wait stays for the next read, and nothing was read.
fn poll_wait(poll: &mut Option<Op<PollReady>>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    let op = poll.as_mut().expect("a readiness wait in flight");
    match Pin::new(op).poll(cx) {
        Poll::Ready(r) => {
            *poll = None;
            Poll::Ready(r)
        }
        Poll::Pending => match crate::deadline::expired() {
            Some(e) => Poll::Ready(Err(e)),
            None => Poll::Pending,
        },
    }
}

/// One non-blocking `send` (one slice) or `sendmsg` (several) of `bufs`, `MSG_NOSIGNAL`: a
/// closed peer is `EPIPE`, never a signal.
fn send_now(fd: RawFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
    let r = if let [one] = bufs {
        // SAFETY: `one` is a live slice of `one.len()` initialised bytes.
        unsafe { libc::send(fd, one.as_ptr().cast(), one.len(), flags) }
    } else {
        let iovs = &bufs[..bufs.len().min(MAX_IOVECS)];
        // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        // `IoSlice` is guaranteed ABI-compatible with `iovec` on Unix; the kernel only reads
        // through the pointer, during the call.
        msg.msg_iov = iovs.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iovs.len();
        // SAFETY: `msg` points at `iovs.len()` live iovecs, each over a live slice.
        unsafe { libc::sendmsg(fd, &msg, flags) }
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a pooled read touches first sits in the first cache line of the receiver's box.
    #[test]
    fn the_pooled_state_starts_on_a_cache_line() {
        assert_eq!(std::mem::align_of::<Pooled>(), 64);
        assert_eq!(std::mem::offset_of!(Pooled, rx), 0);
        let size = std::mem::size_of::<Pooled>();
        assert!(size <= 256, "Pooled is {size} bytes");
    }

    /// An `Io` is per connection: the stream and two op slots (the read's and the write's
    /// poll, each keeping when it started waiting, for its kind's latency), with the pooled
    /// receiver boxed (it was 336 bytes inline); the pooled reads' kept error sits beside the
    /// box's pointer (8 bytes, one cache line fewer per read).
    #[test]
    fn io_stays_small() {
        let size = std::mem::size_of::<Io<TcpStream>>();
        assert!(size <= 152, "Io<TcpStream> is {size} bytes");
    }
}
