//! Unix domain sockets: [`UnixListener`] and [`UnixStream`] (byte streams) and
//! [`UnixDatagram`] (datagrams), named by filesystem paths.
//!
//! Addresses are [`std::os::unix::net::SocketAddr`]: a path, an abstract name (Linux), or
//! *unnamed* (a socket that never bound, as most connecting clients and [`pair`](UnixStream::pair)
//! ends are).
//!
//! Binding creates the socket file; nothing here removes it. Remove it yourself once the
//! listener is gone (a later `bind` on the same path fails with `EADDRINUSE` while the file
//! exists, even if nobody listens on it).
//!
//! ```no_run
//! use ringloop_net::{UnixListener, UnixStream};
//!
//! # ringloop_runtime::Runtime::new().unwrap().block_on(async {
//! let path = std::env::temp_dir().join("ringloop-example.sock");
//! let listener = UnixListener::bind(&path)?;
//! let client = UnixStream::connect(&path).await?;
//! let (server, _peer) = listener.accept().await?;
//! let (r, _) = client.write_all(b"ping".as_slice()).await;
//! r?;
//! let (n, buf) = server.read(vec![0u8; 16]).await;
//! assert_eq!(&buf[..n?], b"ping");
//! std::fs::remove_file(&path)?;
//! # Ok::<_, std::io::Error>(()) });
//! ```

use std::io;
use std::net::Shutdown;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ringloop_runtime::{Op, SharedFd};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::buf::{IoBuf, IoBufMut};
use crate::ops;
use crate::socket::{self, DatagramMeta, SendAll, SendAllError};
use crate::tcp::{read_exact, with_socket};

/// The listen backlog of [`UnixListener::bind`] (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: i32 = 1024;

fn new_socket(ty: Type) -> io::Result<Socket> {
    Socket::new(Domain::UNIX, ty.nonblocking().cloexec(), None)
}

fn new_pair(ty: Type) -> io::Result<(SharedFd, SharedFd)> {
    let (a, b) = Socket::pair(Domain::UNIX, ty.nonblocking().cloexec(), None)?;
    Ok((SharedFd::new(a.into()), SharedFd::new(b.into())))
}

/// The unnamed address (no path, no abstract name).
fn unnamed() -> SocketAddr {
    // An empty pathname is encoded as just the family, which is exactly the unnamed address
    // (`unnamed_address_is_unnamed` pins this). std offers no other way to make one without
    // creating a socket.
    SocketAddr::from_pathname("").expect("the empty path is a valid unix address")
}

/// Converts a kernel-filled address into std's type.
///
/// `recvmsg` from an unbound sender reports a zero-length name (not even a family); `accept`
/// and `getsockname` report just the family. Both are the unnamed address.
fn to_std_addr(addr: &SockAddr) -> io::Result<SocketAddr> {
    if addr.len() == 0 || addr.is_unnamed() {
        return Ok(unnamed());
    }
    if let Some(path) = addr.as_pathname() {
        return SocketAddr::from_pathname(path);
    }
    if let Some(name) = addr.as_abstract_namespace() {
        return SocketAddr::from_abstract_name(name);
    }
    Err(io::Error::other("not a unix socket address"))
}

pub(crate) fn local_addr(fd: &SharedFd) -> io::Result<SocketAddr> {
    to_std_addr(&with_socket(fd, |s| s.local_addr())?)
}

fn peer_addr(fd: &SharedFd) -> io::Result<SocketAddr> {
    to_std_addr(&with_socket(fd, |s| s.peer_addr())?)
}

/// A Unix stream listening socket.
///
/// ```no_run
/// use ringloop_net::UnixListener;
///
/// # ringloop_runtime::Runtime::new().unwrap().block_on(async {
/// let listener = UnixListener::bind("/tmp/app.sock")?;
/// loop {
///     let (stream, _peer) = listener.accept().await?;
///     ringloop_runtime::spawn(async move {
///         let (n, buf) = stream.read(vec![0u8; 4096]).await;
///         if let Ok(n) = n {
///             let _ = stream.write_all(buf[..n].to_vec()).await;
///         }
///     });
/// }
/// # #[allow(unreachable_code)] Ok::<_, std::io::Error>(()) });
/// ```
#[derive(Debug)]
pub struct UnixListener {
    fd: SharedFd,
}

impl UnixListener {
    /// Creates the socket file at `path` and listens on it (backlog 1024).
    ///
    /// # Errors
    /// The real errno: `EADDRINUSE` (the file exists), `ENOENT` (no such directory),
    /// `EACCES`, ...; `InvalidInput` if the path does not fit in a `sockaddr_un` (about 107
    /// bytes).
    pub fn bind(path: impl AsRef<Path>) -> io::Result<UnixListener> {
        let socket = new_socket(Type::STREAM)?;
        socket.bind(&SockAddr::unix(path)?)?;
        socket.listen(BACKLOG)?;
        Ok(UnixListener {
            fd: SharedFd::new(socket.into()),
        })
    }

    /// Accepts one connection: the stream and the peer's address (usually unnamed: clients
    /// rarely bind).
    ///
    /// With a deadline ([`DeadlineExt`](crate::DeadlineExt)): `TimedOut` if no connection
    /// came by then; a connection accepted as the deadline passed is returned, never dropped.
    ///
    /// # Errors
    /// The real errno (`EMFILE`, ...); a cancellation (see
    /// [`ringloop_runtime::is_cancelled`]).
    pub async fn accept(&self) -> io::Result<(UnixStream, SocketAddr)> {
        let (fd, addr) = socket::sock_accept(self).await?;
        let stream = UnixStream {
            fd: SharedFd::new(fd),
            rx: Default::default(),
        };
        Ok((stream, to_std_addr(&addr)?))
    }

    /// The address it listens on.
    ///
    /// # Errors
    /// The real errno.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        local_addr(&self.fd)
    }

    /// Wraps a listening socket made elsewhere (made non-blocking here): the way to listen on
    /// an abstract name (`std::os::unix::net::UnixListener::bind_addr`).
    ///
    /// # Errors
    /// If it cannot be made non-blocking.
    pub fn from_std(listener: std::os::unix::net::UnixListener) -> io::Result<UnixListener> {
        listener.set_nonblocking(true)?;
        Ok(UnixListener {
            fd: SharedFd::new(listener.into()),
        })
    }
}

socket_fd_impls!(UnixListener);

/// A Unix stream connection.
///
/// Reads and writes take owned buffers and give them back with the result. The stream can be
/// used from several tasks at once through `&UnixStream`, or split into owned halves with
/// [`into_split`](Self::into_split).
#[derive(Debug)]
pub struct UnixStream {
    fd: SharedFd,
    /// What a dropped pooled receiver left unread (see [`pooled`](crate::pooled)).
    rx: crate::pooled::RecvSlot,
}

impl UnixStream {
    pub(crate) fn from_owned(fd: OwnedFd) -> UnixStream {
        UnixStream {
            fd: SharedFd::new(fd),
            rx: Default::default(),
        }
    }

    /// Connects to the listener at `path`.
    ///
    /// A Unix connect never waits for a handshake: it succeeds or fails at once, except when
    /// the listener's backlog is full (`EAGAIN` on a non-blocking socket). Then the connect is
    /// retried after 1 ms, 2, 4, ... up to 100 ms between tries, until the listener accepts
    /// enough to make room or the task is cancelled — what a blocking `connect` would do,
    /// without blocking the loop. No readiness event announces room in a peer's backlog,
    /// hence the timer. With a deadline ([`DeadlineExt`](crate::DeadlineExt)), the retries
    /// stop there with `TimedOut`.
    ///
    /// # Errors
    /// The real errno: `ENOENT` (no such file), `ECONNREFUSED` (the file exists but nobody
    /// listens), `EACCES`, `EPROTOTYPE` (not a stream socket), ...; a cancellation.
    pub async fn connect(path: impl AsRef<Path>) -> io::Result<UnixStream> {
        let addr = SockAddr::unix(path)?;
        let socket = new_socket(Type::STREAM)?;
        let mut backoff = Duration::from_millis(1);
        loop {
            match socket.connect(&addr) {
                Ok(()) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    crate::deadline::backoff(backoff).await?;
                    backoff = (backoff * 2).min(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(UnixStream {
            fd: SharedFd::new(socket.into()),
            rx: Default::default(),
        })
    }

    /// Two streams connected to each other (`socketpair`), both unnamed.
    ///
    /// # Errors
    /// The real errno (`EMFILE`, ...).
    pub fn pair() -> io::Result<(UnixStream, UnixStream)> {
        let (a, b) = new_pair(Type::STREAM)?;
        Ok((
            UnixStream {
                fd: a,
                rx: Default::default(),
            },
            UnixStream {
                fd: b,
                rx: Default::default(),
            },
        ))
    }

    /// Reads into `buf` (from its start up to its capacity); 0 bytes means end of stream.
    ///
    /// With a deadline ([`DeadlineExt`](crate::DeadlineExt)): an error of kind `TimedOut` if no
    /// byte came by then; bytes that came first are returned, and nothing is lost either way.
    pub async fn read<B: IoBufMut>(&self, buf: B) -> (io::Result<usize>, B) {
        socket::sock_recv_into(self, buf).await
    }

    /// Reads until `buf` is full (its whole capacity).
    ///
    /// # Errors
    /// `UnexpectedEof` if the stream ends first; the real errno otherwise.
    ///
    /// With a deadline ([`DeadlineExt`](crate::DeadlineExt)): `TimedOut` if the buffer is not
    /// full by then. The buffer comes back holding the bytes read so far at its start (its
    /// initialised length grows as they arrive: start from an empty `Vec::with_capacity(n)`
    /// and its length says how many); the rest are for the next read.
    pub async fn read_exact<B: IoBufMut>(&self, buf: B) -> (io::Result<()>, B) {
        read_exact(self, buf).await
    }

    /// Writes once; returns how many bytes went out (maybe fewer than all).
    ///
    /// With a deadline ([`DeadlineExt`](crate::DeadlineExt)): `TimedOut` only when nothing was
    /// sent; a write that sent bytes reports how many.
    pub async fn write<B: IoBuf>(&self, buf: B) -> (io::Result<usize>, B) {
        socket::sock_send(self, buf).await
    }

    /// Writes all of `buf`'s bytes; on error says how many went out (`EPIPE` once the peer
    /// has closed: never a `SIGPIPE`).
    ///
    /// With a deadline ([`DeadlineExt`](crate::DeadlineExt)): a [`SendAllError`]
    /// whose error is `TimedOut` and whose `sent` counts exactly the bytes the kernel took.
    pub fn write_all<B: IoBuf>(&self, buf: B) -> SendAll<B> {
        socket::sock_sendall(self, buf)
    }

    /// Writes every buffer's bytes, in order, with gather writes; on error says how many went
    /// out. See [`TcpStream::write_all_vectored`](crate::TcpStream::write_all_vectored).
    pub async fn write_all_vectored<B: IoBuf>(
        &self,
        bufs: Vec<B>,
    ) -> (Result<(), SendAllError>, Vec<B>) {
        socket::sock_sendall_vectored(&self.fd, bufs).await
    }

    /// Sends `len` bytes of `file`, from `offset`, without copying them through user space
    /// (a non-blocking `sendfile(2)`, and a readiness wait when the socket is full); see
    /// [`sock_sendfile`](crate::sock_sendfile). Returns how many bytes went out: `len`, or
    /// fewer if the file ended first.
    ///
    /// # Errors
    /// [`SendAllError`]: what went out before the error, and the error with its real errno.
    pub async fn send_file(
        &self,
        file: &impl crate::AsSharedFd,
        offset: u64,
        len: usize,
    ) -> Result<usize, SendAllError> {
        socket::sock_sendfile(&self.fd, file, offset, len).await
    }

    /// As [`send_file`](Self::send_file), through `splice` on io_uring (file → pipe → socket,
    /// `IORING_OP_SPLICE`): a read that misses the page cache never blocks the loop, as it can
    /// in `send_file`'s `sendfile(2)`. The kernel runs each splice on an io-wq worker thread,
    /// which costs several times `send_file`'s CPU per response for files in the page cache
    /// (measured in `benches/sendfile.rs`): for large or cold files. On epoll it is
    /// `send_file`.
    ///
    /// # Errors
    /// As [`send_file`](Self::send_file).
    pub async fn send_file_spliced(
        &self,
        file: &impl crate::AsSharedFd,
        offset: u64,
        len: usize,
    ) -> Result<usize, SendAllError> {
        crate::sendfile::send_file_spliced(&self.fd, file, offset, len).await
    }

    /// A receiver that reads this stream into the runtime's buffer pool (multishot receive on
    /// io_uring), with at most [`DEFAULT_RECV_CAP`](crate::DEFAULT_RECV_CAP) chunks queued
    /// unread; see [`pooled`](crate::pooled).
    pub fn pooled_receiver(&self) -> crate::PooledReceiver {
        self.rx.receiver(&self.fd, crate::DEFAULT_RECV_CAP)
    }

    /// Like [`pooled_receiver`](Self::pooled_receiver) with a cap of `cap` unread chunks.
    pub fn pooled_receiver_with_cap(&self, cap: usize) -> crate::PooledReceiver {
        self.rx.receiver(&self.fd, cap)
    }

    /// Shuts down one or both directions; shutting down writing makes the peer read end of
    /// stream.
    ///
    /// # Errors
    /// The real errno (`ENOTCONN`).
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        with_socket(&self.fd, |s| s.shutdown(how))
    }

    /// The local address (unnamed for a connecting client).
    ///
    /// # Errors
    /// The real errno.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        local_addr(&self.fd)
    }

    /// The peer's address (the listener's path for a connected client).
    ///
    /// # Errors
    /// The real errno (`ENOTCONN`).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        peer_addr(&self.fd)
    }

    /// Splits into a read half and a write half, usable from two tasks. Dropping the write
    /// half shuts down the write direction (the peer sees end of stream).
    pub fn into_split(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        (
            OwnedReadHalf {
                fd: self.fd.clone(),
                rx: self.rx,
            },
            OwnedWriteHalf { fd: self.fd },
        )
    }

    /// Wraps a connected socket made elsewhere (made non-blocking here).
    ///
    /// # Errors
    /// If it cannot be made non-blocking.
    pub fn from_std(stream: std::os::unix::net::UnixStream) -> io::Result<UnixStream> {
        stream.set_nonblocking(true)?;
        Ok(UnixStream {
            fd: SharedFd::new(stream.into()),
            rx: Default::default(),
        })
    }

    /// Gives the socket back as a std stream (left non-blocking).
    ///
    /// # Errors
    /// Gives `self` back if an op still holds the socket.
    pub fn into_std(self) -> Result<std::os::unix::net::UnixStream, UnixStream> {
        match OwnedFd::try_from(self.fd) {
            // SAFETY: we own the descriptor and hand it over.
            Ok(fd) => Ok(unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd.into_raw_fd()) }),
            Err(fd) => Err(UnixStream { fd, rx: self.rx }),
        }
    }
}

socket_fd_impls!(UnixStream, rx);

split_halves!(UnixStream);

/// A Unix datagram socket.
///
/// Datagrams keep their boundaries and, unlike UDP, are reliable and ordered: when the
/// receiver's queue is full the sender waits. A socket that never bound sends from the unnamed
/// address, to which nobody can reply; [`bind`](Self::bind) one to receive replies.
///
/// Every send and receive takes a deadline ([`DeadlineExt`](crate::DeadlineExt)): a receive
/// that times out (`TimedOut`) took no datagram, a send that times out (its receiver's queue
/// stayed full) sent none.
///
/// ```
/// use ringloop_net::UnixDatagram;
///
/// # ringloop_runtime::Runtime::new().unwrap().block_on(async {
/// let (a, b) = UnixDatagram::pair()?;
/// let (r, _) = a.send(b"ping".as_slice()).await;
/// r?;
/// let (n, buf) = b.recv(vec![0u8; 16]).await;
/// assert_eq!(&buf[..n?], b"ping");
/// # Ok::<_, std::io::Error>(()) });
/// ```
#[derive(Debug)]
pub struct UnixDatagram {
    fd: SharedFd,
}

impl UnixDatagram {
    /// Creates a socket bound to `path` (creating the socket file).
    ///
    /// # Errors
    /// As [`UnixListener::bind`].
    pub fn bind(path: impl AsRef<Path>) -> io::Result<UnixDatagram> {
        let socket = new_socket(Type::DGRAM)?;
        socket.bind(&SockAddr::unix(path)?)?;
        Ok(UnixDatagram {
            fd: SharedFd::new(socket.into()),
        })
    }

    /// Creates a socket bound to no address: it can send, but nobody can address a reply to it.
    ///
    /// # Errors
    /// The real errno (`EMFILE`, ...).
    pub fn unbound() -> io::Result<UnixDatagram> {
        Ok(UnixDatagram {
            fd: SharedFd::new(new_socket(Type::DGRAM)?.into()),
        })
    }

    /// Two sockets connected to each other (`socketpair`), both unnamed.
    ///
    /// # Errors
    /// The real errno (`EMFILE`, ...).
    pub fn pair() -> io::Result<(UnixDatagram, UnixDatagram)> {
        let (a, b) = new_pair(Type::DGRAM)?;
        Ok((UnixDatagram { fd: a }, UnixDatagram { fd: b }))
    }

    /// Sets the default peer: [`send`](Self::send) goes there and only its datagrams are
    /// received. Never blocks.
    ///
    /// # Errors
    /// The real errno: `ENOENT`, `ECONNREFUSED` (nobody bound there), `EPROTOTYPE`, ...
    pub fn connect(&self, path: impl AsRef<Path>) -> io::Result<()> {
        let addr = SockAddr::unix(path)?;
        with_socket(&self.fd, |s| s.connect(&addr))
    }

    /// Sends `buf`'s initialised bytes as one datagram to the socket bound at `path`.
    ///
    /// # Errors
    /// The real errno: `ENOENT`, `ECONNREFUSED`, `EMSGSIZE`, ...; `InvalidInput` for a path
    /// too long for a `sockaddr_un`; a cancellation.
    pub async fn send_to<B: IoBuf>(
        &self,
        buf: B,
        path: impl AsRef<Path>,
    ) -> (io::Result<usize>, B) {
        let addr = match SockAddr::unix(path) {
            Ok(addr) => addr,
            Err(e) => return (Err(e), buf),
        };
        send_datagram(&self.fd, buf, Some(addr)).await
    }

    /// Receives one datagram into `buf` (from its start, up to its capacity; a longer datagram
    /// is truncated, see [`recv_datagram`](Self::recv_datagram)) and says who sent it (unnamed
    /// if the sender never bound).
    ///
    /// # Errors
    /// The real errno; a cancellation (no datagram consumed).
    pub async fn recv_from<B: IoBufMut>(&self, buf: B) -> (io::Result<(usize, SocketAddr)>, B) {
        let (r, buf) = self.recv_datagram(buf).await;
        (r.map(|meta| (meta.len, meta.from)), buf)
    }

    /// Receives one datagram like [`recv_from`](Self::recv_from), and also reports its real
    /// length: [`DatagramMeta::is_truncated`] says whether the buffer was too short.
    ///
    /// # Errors
    /// As [`recv_from`](Self::recv_from).
    pub async fn recv_datagram<B: IoBufMut>(
        &self,
        buf: B,
    ) -> (io::Result<DatagramMeta<SocketAddr>>, B) {
        let (r, buf) = Op::new(ops::RecvFrom::new(self.fd.clone(), buf)).await;
        let r = r.and_then(|meta| {
            Ok(DatagramMeta {
                len: meta.stored,
                datagram_len: meta.datagram_len,
                from: to_std_addr(&meta.addr)?,
            })
        });
        (r, buf)
    }

    /// Sends `buf`'s initialised bytes as one datagram to the connected peer.
    ///
    /// # Errors
    /// `ENOTCONN` if not connected; otherwise as [`send_to`](Self::send_to).
    pub async fn send<B: IoBuf>(&self, buf: B) -> (io::Result<usize>, B) {
        send_datagram(&self.fd, buf, None).await
    }

    /// Receives one datagram into `buf` (truncated if longer).
    ///
    /// # Errors
    /// The real errno; a cancellation.
    pub async fn recv<B: IoBufMut>(&self, buf: B) -> (io::Result<usize>, B) {
        socket::sock_recv_into(self, buf).await
    }

    /// Shuts down one or both directions.
    ///
    /// # Errors
    /// The real errno.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        with_socket(&self.fd, |s| s.shutdown(how))
    }

    /// The address the socket is bound to (unnamed if none).
    ///
    /// # Errors
    /// The real errno.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        local_addr(&self.fd)
    }

    /// The connected peer's address.
    ///
    /// # Errors
    /// `ENOTCONN` if not connected.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        peer_addr(&self.fd)
    }

    /// Wraps a socket made elsewhere (made non-blocking here).
    ///
    /// # Errors
    /// If it cannot be made non-blocking.
    pub fn from_std(socket: std::os::unix::net::UnixDatagram) -> io::Result<UnixDatagram> {
        socket.set_nonblocking(true)?;
        Ok(UnixDatagram {
            fd: SharedFd::new(socket.into()),
        })
    }
}

socket_fd_impls!(UnixDatagram);

/// Sends one Unix datagram, waiting while the receiver's queue is full.
///
/// On io_uring the op fails with `EAGAIN` instead of letting the kernel retry it (that retry
/// would send an empty datagram: see `ops::SendDatagram`); we then wait for writability and
/// send again. A connected socket's writability accounts for its peer's queue, so the wait is
/// real; an unconnected socket looks writable whatever the receiver's state, so from the
/// second `EAGAIN` on we also back off on a timer (1 ms, doubling up to 16 ms) rather than
/// spin. On epoll the op waits for readiness by itself and `EAGAIN` never comes back.
async fn send_datagram<B: IoBuf>(
    fd: &SharedFd,
    buf: B,
    addr: Option<SockAddr>,
) -> (io::Result<usize>, B) {
    let mut buf = buf;
    let mut backoff = Duration::ZERO;
    loop {
        let (r, b) = Op::new(ops::SendDatagram::new(fd.clone(), buf, addr.clone())).await;
        buf = b;
        match r {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                if let Err(e) = Op::new(ops::PollReady::writable(fd.clone())).await {
                    return (Err(e), buf);
                }
                if !backoff.is_zero() {
                    if let Err(e) = crate::deadline::backoff(backoff).await {
                        return (Err(e), buf);
                    }
                }
                backoff = (backoff * 2).clamp(Duration::from_millis(1), Duration::from_millis(16));
            }
            r => return (r, buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unnamed_address_is_unnamed() {
        let a = unnamed();
        assert!(a.is_unnamed());
        assert!(a.as_pathname().is_none());
    }

    #[test]
    fn converts_path_abstract_and_unnamed() {
        let p = to_std_addr(&SockAddr::unix("/tmp/x.sock").unwrap()).unwrap();
        assert_eq!(p.as_pathname(), Some(Path::new("/tmp/x.sock")));

        let name = format!("ringloop-abs-{}", std::process::id());
        let std_abs = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let l = std::os::unix::net::UnixDatagram::bind_addr(&std_abs).unwrap();
        let got = with_socket(&SharedFd::new(l.into()), |s| s.local_addr()).unwrap();
        let a = to_std_addr(&got).unwrap();
        assert_eq!(a.as_abstract_name(), Some(name.as_bytes()));

        let s = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let got = with_socket(&SharedFd::new(s.into()), |s| s.local_addr()).unwrap();
        assert!(to_std_addr(&got).unwrap().is_unnamed());
    }
}
