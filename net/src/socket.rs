//! asyncio's socket primitives with owned buffers: [`sock_accept`], [`sock_recv`],
//! [`sock_recv_into`], [`sock_send`], [`sock_sendall`], [`sock_connect`], and the gather write
//! [`sock_sendall_vectored`].
//!
//! They take anything that holds a socket ([`AsSharedFd`]: the sockets of this crate, or a
//! [`SharedFd`] of your own), and buffers by value: the kernel may write into a buffer until the
//! op's completion arrives, whatever happens to the future, so the op owns it and gives it back
//! with the result.
//!
//! ```no_run
//! use ringloop_net::{sock_recv_into, sock_sendall, TcpListener};
//!
//! # ringloop_runtime::Runtime::new().unwrap().block_on(async {
//! let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap())?;
//! let (conn, _peer) = listener.accept().await?;
//! let (n, buf) = sock_recv_into(&conn, vec![0u8; 1024]).await;
//! let n = n?;
//! let (sent, _buf) = sock_sendall(&conn, buf[..n].to_vec()).await;
//! sent?;
//! # Ok::<_, std::io::Error>(()) });
//! ```

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use ringloop_runtime::{Op, SharedFd};
use socket2::SockAddr;

use crate::buf::{IoBuf, IoBufMut, Slice};
use crate::ops;

/// Something that holds a socket the primitives can use.
pub trait AsSharedFd {
    /// The socket.
    fn as_shared_fd(&self) -> &SharedFd;

    /// A stream's receive state that a dropped [`PooledReceiver`](crate::PooledReceiver) left
    /// (data it had received and nobody read yet): receives return it first. Not part of the
    /// public API.
    #[doc(hidden)]
    fn recv_slot(&self) -> Option<&crate::pooled::RecvSlot> {
        None
    }
}

impl AsSharedFd for SharedFd {
    fn as_shared_fd(&self) -> &SharedFd {
        self
    }
}

/// Accepts a connection (asyncio's `loop.sock_accept`): the new socket (non-blocking,
/// close-on-exec) and the peer's address.
pub async fn sock_accept(listener: &impl AsSharedFd) -> io::Result<(OwnedFd, SockAddr)> {
    Op::new(ops::Accept::new(listener.as_shared_fd().clone())).await
}

/// Receives up to `nbytes` into a new buffer (asyncio's `loop.sock_recv`); an empty result
/// means the peer closed its side.
pub async fn sock_recv(sock: &impl AsSharedFd, nbytes: usize) -> io::Result<Vec<u8>> {
    let (n, buf) = sock_recv_into(sock, Vec::with_capacity(nbytes)).await;
    n.map(|_| buf)
}

/// Receives into `buf`, from its start up to its capacity (asyncio's `loop.sock_recv_into`);
/// returns the byte count (0 at end of stream) and the buffer.
pub async fn sock_recv_into<B: IoBufMut>(sock: &impl AsSharedFd, buf: B) -> (io::Result<usize>, B) {
    let mut buf = buf;
    if let Some(slot) = sock.recv_slot() {
        // What a dropped pooled receiver of this stream had received comes first.
        match crate::pooled::read_leftover(slot, buf).await {
            Ok(done) => return done,
            Err(b) => buf = b,
        }
    }
    Op::new(ops::Recv::new(sock.as_shared_fd().clone(), buf)).await
}

/// Sends `buf`'s bytes once (one `send`): returns how many went out, which may be fewer.
pub async fn sock_send<B: IoBuf>(sock: &impl AsSharedFd, buf: B) -> (io::Result<usize>, B) {
    Op::new(ops::Send::new(sock.as_shared_fd().clone(), buf)).await
}

/// Sends `count` bytes of `file`, from `offset`, to the stream socket `sock` without copying
/// them through user space (asyncio's `loop.sock_sendfile(sock, file, offset, count)`):
/// a non-blocking `sendfile(2)` on the loop's thread, and when the socket is full a readiness
/// wait (a poll op on io_uring) before the next. Partial transfers are carried on until all
/// `count` bytes went out; returns how many did, fewer only if the file ended first. Other
/// tasks get to run between chunks of a long transfer to a fast peer.
///
/// The file's pages are read by the kernel on the loop's thread: a file that is not in the
/// page cache makes the loop wait for the disk (as `std::fs` would). For large or cold files,
/// [`TcpStream::send_file_spliced`](crate::TcpStream::send_file_spliced) splices through a pipe
/// on the ring instead, at a higher CPU cost per transfer. `file` is anything that holds a descriptor the op can keep open while it runs (a
/// [`ringloop::fs::File`](https://docs.rs/ringloop), a [`SharedFd`]).
///
/// Unlike asyncio's, `count` is required (0 sends nothing), there is no fallback to reads and
/// writes (both backends transfer in the kernel), and the file's own position is not moved.
/// Like it, a peer that goes away makes the error `EPIPE` or `ECONNRESET`: the process must
/// ignore `SIGPIPE` (Rust programs do, from `main` on).
///
/// # Errors
/// [`SendAllError`]: the bytes that went out before the error, and the error with its real
/// errno (`EPIPE` or `ECONNRESET` from a peer that went away, `EINVAL` for a descriptor that
/// cannot be spliced or an offset past `i64::MAX`, `EBADF`, ...). A cancelled task gets an
/// error carrying [`Cancelled`](ringloop_runtime::Cancelled).
pub async fn sock_sendfile(
    sock: &impl AsSharedFd,
    file: &impl AsSharedFd,
    offset: u64,
    count: usize,
) -> Result<usize, SendAllError> {
    crate::sendfile::send_file(sock, file, offset, count).await
}

/// The error of [`sock_sendall`]: how much went out before the error.
#[derive(Debug)]
pub struct SendAllError {
    /// Bytes the kernel accepted before the error.
    pub sent: usize,
    /// The error, with its real errno (`EPIPE`, `ECONNRESET`, ...).
    pub error: io::Error,
}

impl fmt::Display for SendAllError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "send failed after {} bytes: {}", self.sent, self.error)
    }
}

impl Error for SendAllError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.error)
    }
}

impl From<io::Error> for SendAllError {
    /// An error before any byte went out (`sent: 0`). This is what lets a deadline bound a
    /// transfer: `stream.send_file(&file, 0, len).timeout(d)`. The transfer's own ops take the
    /// deadline and report how far they got, so a transfer that times out partway still says
    /// exactly what it sent; this conversion only answers for a transfer that never started.
    fn from(error: io::Error) -> SendAllError {
        SendAllError { sent: 0, error }
    }
}

impl From<SendAllError> for io::Error {
    /// The underlying error, errno and all (the byte count is dropped).
    fn from(e: SendAllError) -> io::Error {
        e.error
    }
}

/// Sends all of `buf`'s bytes (asyncio's `loop.sock_sendall`), retrying short writes; on error
/// says how many bytes went out. A send of zero bytes (the peer cannot take more and the
/// kernel reports nothing) is an error of kind `WriteZero`.
///
/// The future is a small named type, [`SendAll`], rather than an `async fn`'s state machine: a
/// server keeps one per connection, and at 10 000 connections every byte of it counts.
pub fn sock_sendall<B: IoBuf>(sock: &impl AsSharedFd, buf: B) -> SendAll<B> {
    let fd = sock.as_shared_fd().clone();
    let total = buf.bytes_init();
    let state = if total == 0 {
        SendAllState::Nothing(buf)
    } else {
        SendAllState::Sending(Op::new(ops::Send::new(fd.clone(), buf.slice(..total))))
    };
    SendAll {
        fd,
        state,
        sent: 0,
        total,
    }
}

/// The future of [`sock_sendall`] (and of the streams' `write_all`): resolves to the result
/// and the buffer.
///
/// Like every runtime await it is a cancellation point: a cancelled task gets an error carrying
/// [`Cancelled`](ringloop_runtime::Cancelled), and `sent` says how many bytes had gone out.
/// Dropping it while a send is in flight cancels that send; the buffer stays alive until the
/// kernel is done with it.
#[must_use = "futures do nothing unless awaited"]
pub struct SendAll<B: IoBuf> {
    fd: SharedFd,
    state: SendAllState<B>,
    sent: usize,
    total: usize,
}

// Nothing in it is ever pinned: the buffer is only moved, and the op is `Unpin`.
impl<B: IoBuf> Unpin for SendAll<B> {}

enum SendAllState<B: IoBuf> {
    /// A send of `buf[sent..total]` is in flight (or about to be submitted).
    Sending(Op<ops::Send<Slice<B>>>),
    /// An empty buffer: nothing to send, it goes straight back.
    Nothing(B),
    /// The output was handed out.
    Done,
}

impl<B: IoBuf> fmt::Debug for SendAll<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendAll")
            .field("sent", &self.sent)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl<B: IoBuf> Future for SendAll<B> {
    type Output = (Result<(), SendAllError>, B);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            let (result, slice) = match &mut this.state {
                SendAllState::Sending(op) => ready!(Pin::new(op).poll(cx)),
                SendAllState::Nothing(_) => {
                    let SendAllState::Nothing(buf) =
                        std::mem::replace(&mut this.state, SendAllState::Done)
                    else {
                        unreachable!("matched just above")
                    };
                    return Poll::Ready((Ok(()), buf));
                }
                SendAllState::Done => panic!("`SendAll` polled after it completed"),
            };
            this.state = SendAllState::Done;
            let buf = slice.into_inner();
            let sent = this.sent;
            match result {
                Ok(0) => {
                    let error =
                        io::Error::new(io::ErrorKind::WriteZero, "the peer accepted no bytes");
                    return Poll::Ready((Err(SendAllError { sent, error }), buf));
                }
                Ok(n) => this.sent += n,
                Err(error) => return Poll::Ready((Err(SendAllError { sent, error }), buf)),
            }
            if this.sent >= this.total {
                return Poll::Ready((Ok(()), buf));
            }
            let rest = buf.slice(this.sent..this.total);
            this.state = SendAllState::Sending(Op::new(ops::Send::new(this.fd.clone(), rest)));
        }
    }
}

/// Sends every buffer's bytes, in order, as one stream (a gather write: one `sendmsg` for many
/// buffers, again only for what a short write left): all of them or an error that says how
/// many bytes went out. Gives the buffers back.
///
/// Writing the chunks a [`PooledReceiver`](crate::PooledReceiver) has queued in one call moves
/// a bulk stream through the loop in far fewer operations than one write per chunk.
///
/// # Errors
/// As [`sock_sendall`]; `sent` counts bytes across the buffers.
pub async fn sock_sendall_vectored<B: IoBuf>(
    sock: &impl AsSharedFd,
    bufs: Vec<B>,
) -> (Result<(), SendAllError>, Vec<B>) {
    let fd = sock.as_shared_fd();
    let total: usize = bufs.iter().map(|b| b.bytes_init()).sum();
    let mut sent = 0;
    let mut bufs = bufs;
    while sent < total {
        let (r, back) = Op::new(ops::SendVectored::new(fd.clone(), bufs, sent)).await;
        bufs = back;
        match r {
            Ok(0) => {
                let error = io::Error::new(io::ErrorKind::WriteZero, "the peer accepted no bytes");
                return (Err(SendAllError { sent, error }), bufs);
            }
            Ok(n) => sent += n,
            // io_uring: a `sendmsg` the kernel ended up running on a worker answers `EAGAIN`
            // for a non-blocking socket (`____sys_sendmsg` adds `MSG_DONTWAIT` for
            // `O_NONBLOCK`), where a plain send would wait. That happens when the peer shut its
            // write side: the socket then reports `EPOLLRDHUP`, which io_uring's internal poll
            // always fires on, so the send is retried at once until the kernel gives up and
            // hands it to a worker. `POLL_ADD` checks only the events asked for, so it waits
            // for real room; then the rest is sent. (On epoll the op waits by itself and never
            // ends with `EAGAIN`.)
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                if let Err(error) = Op::new(ops::PollReady::writable(fd.clone())).await {
                    return (Err(SendAllError { sent, error }), bufs);
                }
            }
            Err(error) => return (Err(SendAllError { sent, error }), bufs),
        }
    }
    (Ok(()), bufs)
}

/// Connects a socket (asyncio's `loop.sock_connect`).
pub async fn sock_connect(sock: &impl AsSharedFd, addr: SocketAddr) -> io::Result<()> {
    Op::new(ops::Connect::new(
        sock.as_shared_fd().clone(),
        SockAddr::from(addr),
    ))
    .await
}

pub(crate) async fn connect_addr(sock: &SharedFd, addr: SockAddr) -> io::Result<()> {
    Op::new(ops::Connect::new(sock.clone(), addr)).await
}

/// What one datagram receive learned besides the bytes: how many were stored, the datagram's
/// real length, and the sender. Returned by [`UdpSocket::recv_datagram`] and
/// [`UnixDatagram::recv_datagram`].
///
/// [`UdpSocket::recv_datagram`]: crate::UdpSocket::recv_datagram
/// [`UnixDatagram::recv_datagram`]: crate::UnixDatagram::recv_datagram
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatagramMeta<A> {
    /// Bytes stored in the buffer (at most its capacity).
    pub len: usize,
    /// The datagram's length as sent; larger than `len` when the buffer was too short and the
    /// rest was discarded.
    pub datagram_len: usize,
    /// Who sent it.
    pub from: A,
}

impl<A> DatagramMeta<A> {
    /// Whether the buffer was too short for the datagram, so its tail was discarded (the
    /// kernel's `MSG_TRUNC`).
    pub fn is_truncated(&self) -> bool {
        self.datagram_len > self.len
    }
}
