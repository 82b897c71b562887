//! TCP: [`TcpListener`] and [`TcpStream`], IPv4 and IPv6.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::time::Duration;

use std::future::poll_fn;
use std::task::Poll;

use io_uring::opcode;
use ringloop_runtime::{
    current_backend, take_cancel_request_waiting, Backend, Multishot, MultishotKind, SharedFd,
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::buf::{IoBuf, IoBufMut};
use crate::socket::{self, SendAll, SendAllError};

/// Options for binding a [`TcpListener`].
///
/// ```no_run
/// use ringloop_net::TcpListener;
/// # fn f() -> std::io::Result<()> {
/// let listener = TcpListener::builder("0.0.0.0:8080".parse().unwrap())
///     .backlog(4096)
///     .reuse_port(true)
///     .bind()?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct TcpListenerBuilder {
    addr: SocketAddr,
    backlog: i32,
    reuse_address: bool,
    reuse_port: bool,
}

impl TcpListenerBuilder {
    /// The listen backlog (default 1024; the kernel caps it at `net.core.somaxconn`).
    pub fn backlog(mut self, backlog: i32) -> Self {
        self.backlog = backlog;
        self
    }

    /// `SO_REUSEADDR` (default on, so a restarted server can bind at once).
    pub fn reuse_address(mut self, on: bool) -> Self {
        self.reuse_address = on;
        self
    }

    /// `SO_REUSEPORT` (default off): one listener per runtime thread on the same port, the
    /// kernel spreading connections between them.
    pub fn reuse_port(mut self, on: bool) -> Self {
        self.reuse_port = on;
        self
    }

    /// Creates, binds and listens.
    ///
    /// # Errors
    /// The real errno: `EADDRINUSE`, `EACCES`, `EMFILE`, ...
    pub fn bind(self) -> io::Result<TcpListener> {
        let socket = self.bind_socket()?;
        Ok(TcpListener {
            fd: SharedFd::new(socket.into()),
        })
    }

    /// Creates, binds and listens, outside any runtime (the socket can cross threads).
    pub(crate) fn bind_socket(&self) -> io::Result<Socket> {
        let socket = new_socket(self.addr)?;
        socket.set_reuse_address(self.reuse_address)?;
        if self.reuse_port {
            socket.set_reuse_port(true)?;
        }
        socket.bind(&SockAddr::from(self.addr))?;
        socket.listen(self.backlog)?;
        Ok(socket)
    }
}

fn new_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    Ok(socket)
}

/// A TCP listening socket.
///
/// ```no_run
/// use ringloop_net::TcpListener;
///
/// # ringloop_runtime::Runtime::new().unwrap().block_on(async {
/// let listener = TcpListener::bind("127.0.0.1:8080".parse().unwrap())?;
/// loop {
///     let (stream, peer) = listener.accept().await?;
///     ringloop_runtime::spawn(async move {
///         let mut buf = vec![0u8; 4096];
///         loop {
///             let (n, b) = stream.read(buf).await;
///             buf = b;
///             match n {
///                 Ok(0) | Err(_) => break,
///                 Ok(n) => {
///                     let (r, b) = stream.write_all(buf[..n].to_vec()).await;
///                     if r.is_err() { break; }
///                     let _ = b;
///                 }
///             }
///         }
///     });
/// }
/// # #[allow(unreachable_code)] Ok::<_, std::io::Error>(()) });
/// ```
#[derive(Debug)]
pub struct TcpListener {
    fd: SharedFd,
}

impl TcpListener {
    /// Binds with the default options (backlog 1024, `SO_REUSEADDR`).
    ///
    /// # Errors
    /// The real errno.
    pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
        Self::builder(addr).bind()
    }

    /// Options for binding.
    pub fn builder(addr: SocketAddr) -> TcpListenerBuilder {
        TcpListenerBuilder {
            addr,
            backlog: 1024,
            reuse_address: true,
            reuse_port: false,
        }
    }

    /// Accepts one connection. Errors come back as they are (`EMFILE`, `ECONNABORTED`, ...);
    /// [`incoming`](Self::incoming) is the loop that survives them.
    ///
    /// With a deadline ([`DeadlineExt`](crate::DeadlineExt)): `TimedOut` if no connection
    /// came by then; a connection accepted as the deadline passed is returned, never dropped.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use ringloop_net::{DeadlineExt, TcpListener};
    ///
    /// # ringloop_runtime::Runtime::new().unwrap().block_on(async {
    /// let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap())?;
    /// match listener.accept().timeout(Duration::from_secs(1)).await {
    ///     Ok((stream, peer)) => println!("{peer} connected"),
    ///     Err(e) if e.kind() == std::io::ErrorKind::TimedOut => println!("nobody came"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok::<_, std::io::Error>(()) });
    /// ```
    ///
    /// # Errors
    /// The real errno; a cancellation (see [`ringloop_runtime::is_cancelled`]).
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (fd, addr) = socket::sock_accept(self).await?;
        let addr = addr
            .as_socket()
            .ok_or_else(|| io::Error::other("accepted a non-IP address"))?;
        Ok((TcpStream::from_owned(fd), addr))
    }

    /// A stream of accepted connections that survives the errors a server must ride out:
    /// `ECONNABORTED` (the peer gave up before we accepted) is skipped, and `EMFILE`/`ENFILE`
    /// (out of descriptors) backs off — the connections already open keep being served — and
    /// resumes when descriptors free up, retrying after 1 ms, then 2, 4, ... up to 100 ms.
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming {
            multishot: Multishot::new(MultishotKind::Accept, ACCEPT_QUEUE_CAP),
            listener: self,
            backoff: Duration::from_millis(1),
        }
    }

    /// The address it listens on.
    ///
    /// # Errors
    /// The real errno.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        local_addr(&self.fd)
    }

    /// Wraps a listening socket made elsewhere (made non-blocking here).
    ///
    /// # Errors
    /// If it cannot be made non-blocking.
    pub fn from_std(listener: std::net::TcpListener) -> io::Result<TcpListener> {
        listener.set_nonblocking(true)?;
        Ok(TcpListener {
            fd: SharedFd::new(listener.into()),
        })
    }
}

socket_fd_impls!(TcpListener);

/// See [`TcpListener::incoming`]. On io_uring one multishot accept serves every connection
/// (at most 64 accepted sockets queue unread; then the kernel's backlog holds the rest).
#[derive(Debug)]
pub struct Incoming<'a> {
    // Dropped first: an orphaned multishot accept closes the sockets it still produces.
    multishot: Multishot,
    listener: &'a TcpListener,
    backoff: Duration,
}

/// Accepted sockets a multishot accept may queue unread.
const ACCEPT_QUEUE_CAP: usize = 64;

impl Incoming<'_> {
    /// The next connection. Only errors a server cannot ride out come back (and a
    /// cancellation). With a deadline ([`DeadlineExt`](crate::DeadlineExt)): `TimedOut` if no
    /// connection came by then; those already accepted come first, and none is dropped.
    ///
    /// # Errors
    /// Errors other than `ECONNABORTED`, `EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`.
    pub async fn next(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        loop {
            let result = if current_backend() == Backend::IoUring {
                self.next_multishot().await
            } else {
                self.listener.accept().await
            };
            match result {
                Ok(conn) => {
                    self.backoff = Duration::from_millis(1);
                    return Ok(conn);
                }
                Err(e) if is_transient_accept_error(&e) => {
                    if e.raw_os_error() != Some(libc::ECONNABORTED) {
                        // Out of descriptors (or memory): keep serving what we have and try
                        // again a little later.
                        crate::deadline::backoff(self.backoff).await?;
                        self.backoff = (self.backoff * 2).min(Duration::from_millis(100));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn next_multishot(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        loop {
            if !self.multishot.is_armed() {
                let sqe = with_target!(self.listener.fd, t => opcode::AcceptMulti::new(t)
                    .flags(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
                    .build());
                // SAFETY: the SQE names only the listener's descriptor (which the driver keeps
                // open until the op's last completion) and no memory.
                unsafe { self.multishot.arm(sqe, &self.listener.fd)? };
            }
            let next = poll_fn(|cx| match self.multishot.poll_next(cx) {
                // The multishot is armed: this await was already waiting. What it queued came
                // first; dropping the wait loses nothing (the queue is the listener's).
                Poll::Pending => match take_cancel_request_waiting() {
                    Some(c) => Poll::Ready(Err(c.into())),
                    None => match crate::deadline::expired() {
                        Some(e) => Poll::Ready(Err(e)),
                        None => Poll::Pending,
                    },
                },
                Poll::Ready(r) => Poll::Ready(Ok(r)),
            })
            .await?;
            match next {
                // Ended (the kernel stopped it, e.g. after an error or our cap): re-arm.
                None => continue,
                Some((res, _flags)) if res >= 0 => {
                    // SAFETY: a successful accept's result is a new descriptor nobody owns.
                    let stream = TcpStream::from_owned(unsafe { OwnedFd::from_raw_fd(res) });
                    match stream.peer_addr() {
                        Ok(peer) => return Ok((stream, peer)),
                        // The peer reset before we took the connection (`ENOTCONN`): skip it,
                        // as `accept` skips `ECONNABORTED`.
                        Err(_) => continue,
                    }
                }
                Some((res, _)) if res == -libc::ECANCELED => continue,
                Some((res, _)) => return Err(io::Error::from_raw_os_error(-res)),
            }
        }
    }
}

/// Accept errors that say nothing about the listener itself.
pub(crate) fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED)
            | Some(libc::EMFILE)
            | Some(libc::ENFILE)
            | Some(libc::ENOBUFS)
            | Some(libc::ENOMEM)
    )
}

pub(crate) fn local_addr(fd: &SharedFd) -> io::Result<SocketAddr> {
    with_socket(fd, |s| s.local_addr())?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an IP socket"))
}

/// Runs `f` on a borrowed `socket2::Socket` view of the descriptor (for options).
pub(crate) fn with_socket<R>(fd: &SharedFd, f: impl FnOnce(&Socket) -> R) -> R {
    // SAFETY: the descriptor is open for the duration (`fd` holds it); ManuallyDrop makes sure
    // the view never closes it.
    let socket = std::mem::ManuallyDrop::new(unsafe { Socket::from_raw_fd(fd.raw()) });
    f(&socket)
}

/// A TCP connection.
///
/// Reads and writes take owned buffers and give them back with the result. The stream can be
/// used from several tasks at once through `&TcpStream`, or split into owned halves with
/// [`into_split`](Self::into_split).
#[derive(Debug)]
pub struct TcpStream {
    fd: SharedFd,
    /// What a dropped pooled receiver left unread (see [`pooled`](crate::pooled)).
    rx: crate::pooled::RecvSlot,
}

impl TcpStream {
    pub(crate) fn from_owned(fd: OwnedFd) -> TcpStream {
        TcpStream {
            fd: SharedFd::new(fd),
            rx: Default::default(),
        }
    }

    /// Connects to `addr`.
    ///
    /// With a deadline ([`DeadlineExt`](crate::DeadlineExt)): `TimedOut` (errno `ETIMEDOUT`,
    /// as when the kernel gives up on the handshake itself) if the connection is not
    /// established by then; the half-made socket is closed.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use ringloop_net::{DeadlineExt, TcpStream};
    ///
    /// # ringloop_runtime::Runtime::new().unwrap().block_on(async {
    /// let stream = TcpStream::connect("192.0.2.1:80".parse().unwrap())
    ///     .timeout(Duration::from_secs(3))
    ///     .await?;
    /// # Ok::<_, std::io::Error>(()) });
    /// ```
    ///
    /// # Errors
    /// The real errno (`ECONNREFUSED`, `ENETUNREACH`, `ETIMEDOUT`, ...).
    pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        let socket = new_socket(addr)?;
        let stream = TcpStream {
            fd: SharedFd::new(socket.into()),
            rx: Default::default(),
        };
        socket::connect_addr(&stream.fd, SockAddr::from(addr)).await?;
        Ok(stream)
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

    /// Writes all of `buf`'s bytes; on error says how many went out.
    ///
    /// With a deadline ([`DeadlineExt`](crate::DeadlineExt)): a [`SendAllError`]
    /// whose error is `TimedOut` and whose `sent` counts exactly the bytes the kernel took.
    pub fn write_all<B: IoBuf>(&self, buf: B) -> SendAll<B> {
        socket::sock_sendall(self, buf)
    }

    /// Writes every buffer's bytes, in order, with gather writes (see
    /// [`sock_sendall_vectored`](crate::sock_sendall_vectored)); on error says how many went
    /// out.
    ///
    /// ```no_run
    /// # use ringloop_net::TcpStream;
    /// # async fn echo(stream: TcpStream) -> std::io::Result<()> {
    /// // Echo a bulk stream: every chunk already queued goes back in one write.
    /// let mut rx = stream.pooled_receiver();
    /// let mut chunks = Vec::new();
    /// while let Some(first) = rx.recv().await? {
    ///     chunks.push(first);
    ///     while let Some(Ok(Some(more))) = rx.try_recv() {
    ///         chunks.push(more);
    ///     }
    ///     let (r, back) = stream.write_all_vectored(chunks).await;
    ///     r?;
    ///     chunks = back;
    ///     chunks.clear(); // the buffers go back to the pool
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn write_all_vectored<B: IoBuf>(
        &self,
        bufs: Vec<B>,
    ) -> (Result<(), SendAllError>, Vec<B>) {
        socket::sock_sendall_vectored(self, bufs).await
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
        socket::sock_sendfile(self, file, offset, len).await
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
        crate::sendfile::send_file_spliced(self, file, offset, len).await
    }

    /// Shuts down one or both directions.
    ///
    /// # Errors
    /// The real errno (`ENOTCONN`).
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        with_socket(&self.fd, |s| s.shutdown(how))
    }

    /// The local address.
    ///
    /// # Errors
    /// The real errno.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        local_addr(&self.fd)
    }

    /// The peer's address.
    ///
    /// # Errors
    /// The real errno (`ENOTCONN`).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        with_socket(&self.fd, |s| s.peer_addr())?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an IP socket"))
    }

    /// `TCP_NODELAY`: send small writes at once instead of coalescing them (Nagle).
    ///
    /// # Errors
    /// The real errno.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        with_socket(&self.fd, |s| s.set_tcp_nodelay(on))
    }

    /// Whether `TCP_NODELAY` is on.
    ///
    /// # Errors
    /// The real errno.
    pub fn nodelay(&self) -> io::Result<bool> {
        with_socket(&self.fd, |s| s.tcp_nodelay())
    }

    /// `SO_LINGER` with a zero timeout makes close send a reset (RST) instead of a FIN.
    ///
    /// # Errors
    /// The real errno.
    pub fn set_linger(&self, linger: Option<Duration>) -> io::Result<()> {
        with_socket(&self.fd, |s| s.set_linger(linger))
    }

    /// A receiver that reads this connection into the runtime's buffer pool (multishot receive
    /// on io_uring), with at most [`DEFAULT_RECV_CAP`](crate::DEFAULT_RECV_CAP) chunks queued
    /// unread; see [`pooled`](crate::pooled).
    pub fn pooled_receiver(&self) -> crate::PooledReceiver {
        self.rx.receiver(&self.fd, crate::DEFAULT_RECV_CAP)
    }

    /// Like [`pooled_receiver`](Self::pooled_receiver) with a cap of `cap` unread chunks.
    pub fn pooled_receiver_with_cap(&self, cap: usize) -> crate::PooledReceiver {
        self.rx.receiver(&self.fd, cap)
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
    pub fn from_std(stream: std::net::TcpStream) -> io::Result<TcpStream> {
        stream.set_nonblocking(true)?;
        Ok(TcpStream::from_owned(stream.into()))
    }

    /// Gives the socket back as a std stream (blocking mode is left as it is: non-blocking).
    ///
    /// # Errors
    /// Gives `self` back if an op still holds the socket.
    pub fn into_std(self) -> Result<std::net::TcpStream, TcpStream> {
        match OwnedFd::try_from(self.fd) {
            // SAFETY: we own the descriptor and hand it over.
            Ok(fd) => Ok(unsafe { std::net::TcpStream::from_raw_fd(fd.into_raw_fd()) }),
            Err(fd) => Err(TcpStream { fd, rx: self.rx }),
        }
    }
}

pub(crate) async fn read_exact<B: IoBufMut>(
    fd: &impl socket::AsSharedFd,
    buf: B,
) -> (io::Result<()>, B) {
    let total = buf.bytes_total();
    let mut filled = 0;
    let mut buf = buf;
    while filled < total {
        let (r, slice) = socket::sock_recv_into(fd, buf.slice(filled..)).await;
        buf = slice.into_inner();
        match r {
            Ok(0) => return (Err(io::ErrorKind::UnexpectedEof.into()), buf),
            Ok(n) => filled += n,
            Err(e) => return (Err(e), buf),
        }
    }
    (Ok(()), buf)
}

socket_fd_impls!(TcpStream, rx);

split_halves!(TcpStream);
