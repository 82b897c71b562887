//! The socket op kinds, each described once for both backends (see
//! [`OpKind`](ringloop_runtime::OpKind)). Every pointer an SQE carries points into the boxed op
//! itself (sockaddr storage, `msghdr`, `iovec`) or into the owned buffer it holds, and every op
//! holds a [`SharedFd`] clone, so the descriptor stays open until the completion arrives.

use std::io;
use std::mem;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use io_uring::{opcode, squeue};
use ringloop_runtime::{Interest, OpKind, SharedFd};
use socket2::{SockAddr, SockAddrStorage};

use crate::buf::{IoBuf, IoBufMut};

fn cvt(r: libc::ssize_t) -> io::Result<u32> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u32)
    }
}

/// `accept4` a connection (non-blocking, close-on-exec).
pub(crate) struct Accept {
    pub(crate) fd: SharedFd,
    storage: SockAddrStorage,
    len: libc::socklen_t,
}

impl Accept {
    pub(crate) fn new(fd: SharedFd) -> Self {
        let storage = SockAddrStorage::zeroed();
        let len = storage.size_of();
        Accept { fd, storage, len }
    }
}

const ACCEPT_FLAGS: libc::c_int = libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;

// SAFETY: the SQE points at `self.storage` and `self.len`, fields of the boxed op, and names
// `self.fd`, which the op keeps open.
unsafe impl OpKind for Accept {
    type Output = io::Result<(OwnedFd, SockAddr)>;
    const NAME: &'static str = "accept";

    fn sqe(&mut self) -> squeue::Entry {
        self.len = self.storage.size_of();
        with_target!(self.fd, t => opcode::Accept::new(t,
            &mut self.storage as *mut SockAddrStorage as *mut libc::sockaddr,
            &mut self.len,
        )
        .flags(ACCEPT_FLAGS)
        .build())
    }

    fn readiness(&self) -> (RawFd, Interest) {
        (self.fd.raw(), Interest::Read)
    }

    fn attempt(&mut self) -> io::Result<u32> {
        self.len = self.storage.size_of();
        // SAFETY: the pointers are to our own live fields, `len` says how much fits.
        let r = unsafe {
            libc::accept4(
                self.fd.raw(),
                &mut self.storage as *mut SockAddrStorage as *mut libc::sockaddr,
                &mut self.len,
                ACCEPT_FLAGS,
            )
        };
        cvt(r as libc::ssize_t)
    }

    fn complete(self, result: io::Result<u32>, _flags: u32) -> Self::Output {
        let fd = result? as RawFd;
        // SAFETY: a successful accept returned a new descriptor that nobody else owns; wrapping
        // it at once means an orphaned accept's socket is closed when this output is dropped.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the kernel initialised `len` bytes of the storage.
        let addr = unsafe { SockAddr::new(self.storage, self.len) };
        Ok((fd, addr))
    }
}

/// `connect` a socket.
pub(crate) struct Connect {
    fd: SharedFd,
    addr: SockAddr,
    started: bool,
}

impl Connect {
    pub(crate) fn new(fd: SharedFd, addr: SockAddr) -> Self {
        Connect {
            fd,
            addr,
            started: false,
        }
    }
}

// SAFETY: the SQE points at `self.addr`, a field of the boxed op, and names `self.fd`.
unsafe impl OpKind for Connect {
    type Output = io::Result<()>;
    const NAME: &'static str = "connect";

    fn sqe(&mut self) -> squeue::Entry {
        with_target!(self.fd, t => opcode::Connect::new(t,
            self.addr.as_ptr() as *const libc::sockaddr,
            self.addr.len(),
        )
        .build())
    }

    fn readiness(&self) -> (RawFd, Interest) {
        (self.fd.raw(), Interest::Write)
    }

    fn attempt(&mut self) -> io::Result<u32> {
        if !self.started {
            self.started = true;
            // SAFETY: `addr` is a live, correctly sized sockaddr.
            let r = unsafe {
                libc::connect(
                    self.fd.raw(),
                    self.addr.as_ptr() as *const libc::sockaddr,
                    self.addr.len(),
                )
            };
            if r == 0 {
                return Ok(0);
            }
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EINPROGRESS) | Some(libc::EINTR) => {
                    Err(io::ErrorKind::WouldBlock.into())
                }
                // EAGAIN from connect is not "try later when writable": no readiness event
                // will come (no free local port, or a Unix listener's backlog is full).
                Some(libc::EAGAIN) => Err(connect_eagain()),
                _ => Err(e),
            };
        }
        // The socket became writable: the connect finished, one way or the other.
        let mut err: libc::c_int = 0;
        let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `err` and `len` are live locals of the sizes we pass.
        let r = unsafe {
            libc::getsockopt(
                self.fd.raw(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                &mut err as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err));
        }
        let mut storage = SockAddrStorage::zeroed();
        let mut len = storage.size_of();
        // SAFETY: `storage` and `len` are live locals; `len` says how much fits.
        let r = unsafe {
            libc::getpeername(
                self.fd.raw(),
                &mut storage as *mut SockAddrStorage as *mut libc::sockaddr,
                &mut len,
            )
        };
        if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOTCONN) {
            return Err(io::ErrorKind::WouldBlock.into()); // woken early: still connecting
        }
        Ok(0)
    }

    fn complete(self, result: io::Result<u32>, _flags: u32) -> Self::Output {
        result.map(drop).map_err(|e| {
            if e.raw_os_error() == Some(libc::EAGAIN) {
                connect_eagain()
            } else {
                e
            }
        })
    }
}

/// The error for `EAGAIN` from `connect`, the same on both backends (kind `ResourceBusy`: the
/// raw errno would read as "would block", which it is not).
fn connect_eagain() -> io::Error {
    io::Error::new(
        io::ErrorKind::ResourceBusy,
        "connect: EAGAIN (no free local port, or the Unix listener's backlog is full)",
    )
}

/// `recv` into an owned buffer (from its start, up to its capacity).
pub(crate) struct Recv<B> {
    fd: SharedFd,
    buf: B,
}

impl<B: IoBufMut> Recv<B> {
    pub(crate) fn new(fd: SharedFd, buf: B) -> Self {
        Recv { fd, buf }
    }
}

// SAFETY: the SQE points into `self.buf`, whose memory is stable (`IoBufMut`) and owned by the
// op, and names `self.fd`.
unsafe impl<B: IoBufMut> OpKind for Recv<B> {
    type Output = (io::Result<usize>, B);
    const NAME: &'static str = "recv";

    #[inline]
    fn byte_count(&self) -> Option<usize> {
        Some(self.buf.bytes_total())
    }

    fn sqe(&mut self) -> squeue::Entry {
        let len = self.buf.bytes_total().min(u32::MAX as usize) as u32;
        with_target!(self.fd, t => opcode::Recv::new(t, self.buf.stable_mut_ptr(), len).build())
    }

    fn readiness(&self) -> (RawFd, Interest) {
        (self.fd.raw(), Interest::Read)
    }

    fn attempt(&mut self) -> io::Result<u32> {
        // SAFETY: the buffer is valid for writes of `bytes_total` bytes.
        cvt(unsafe {
            libc::recv(
                self.fd.raw(),
                self.buf.stable_mut_ptr() as *mut libc::c_void,
                self.buf.bytes_total(),
                libc::MSG_DONTWAIT,
            )
        })
    }

    fn complete(self, result: io::Result<u32>, _flags: u32) -> Self::Output {
        let mut buf = self.buf;
        let result = result.map(|n| {
            // SAFETY: the kernel wrote `n` bytes at the buffer's start.
            unsafe { buf.set_init(n as usize) };
            n as usize
        });
        (result, buf)
    }
}

/// `send` an owned buffer's initialised bytes (`MSG_NOSIGNAL`: a closed peer is `EPIPE`, never
/// a signal).
pub(crate) struct Send<B> {
    fd: SharedFd,
    buf: B,
    /// Use `SEND_ZC` (the runtime's `zero_copy_send` option, io_uring only).
    zero_copy: bool,
}

impl<B: IoBuf> Send<B> {
    pub(crate) fn new(fd: SharedFd, buf: B) -> Self {
        let zero_copy = zero_copy_for(&fd);
        Send { fd, buf, zero_copy }
    }

    /// As [`new`](Self::new), with [`zero_copy_for`] of `fd` already known (a connection
    /// that sends many times asks once).
    pub(crate) fn with_zero_copy(fd: SharedFd, buf: B, zero_copy: bool) -> Self {
        Send { fd, buf, zero_copy }
    }
}

/// Whether sends on `fd` use `SEND_ZC` on the running runtime: the runtime's option is on, and
/// the socket is TCP or UDP (a Unix socket answers `EOPNOTSUPP`; its family is asked only when
/// the option is on).
pub(crate) fn zero_copy_for(fd: &SharedFd) -> bool {
    ringloop_runtime::zero_copy_send() && is_inet(fd)
}

/// Whether `fd` is an IPv4 or IPv6 socket (`SO_DOMAIN`), where zero-copy sends work.
fn is_inet(fd: &SharedFd) -> bool {
    let domain = crate::tcp::with_socket(fd, |s| s.domain());
    matches!(domain, Ok(d) if d == socket2::Domain::IPV4 || d == socket2::Domain::IPV6)
}

// SAFETY: the SQE points into `self.buf` (stable, owned by the op) and names `self.fd`.
unsafe impl<B: IoBuf> OpKind for Send<B> {
    type Output = (io::Result<usize>, B);
    const NAME: &'static str = "send";

    #[inline]
    fn byte_count(&self) -> Option<usize> {
        Some(self.buf.bytes_init())
    }

    fn sqe(&mut self) -> squeue::Entry {
        let len = self.buf.bytes_init().min(u32::MAX as usize) as u32;
        if self.zero_copy {
            // The op table holds the result until the kernel's notification says it no longer
            // reads the buffer, so the buffer is only given back after that.
            return with_target!(self.fd, t => opcode::SendZc::new(t, self.buf.stable_ptr(), len)
                .flags(libc::MSG_NOSIGNAL)
                .build());
        }
        with_target!(self.fd, t => opcode::Send::new(t, self.buf.stable_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build())
    }

    fn try_first(&self) -> bool {
        !self.zero_copy
    }

    fn readiness(&self) -> (RawFd, Interest) {
        (self.fd.raw(), Interest::Write)
    }

    fn attempt(&mut self) -> io::Result<u32> {
        // SAFETY: the buffer holds `bytes_init` initialised bytes.
        cvt(unsafe {
            libc::send(
                self.fd.raw(),
                self.buf.stable_ptr() as *const libc::c_void,
                self.buf.bytes_init(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        })
    }

    fn complete(self, result: io::Result<u32>, _flags: u32) -> Self::Output {
        (result.map(|n| n as usize), self.buf)
    }
}

/// The SQE of a `sendmsg` (`MSG_NOSIGNAL`) of `msg`, which must point only at memory the op
/// owns (it is read when the kernel runs the op).
fn sendmsg_sqe(fd: &SharedFd, msg: &libc::msghdr) -> squeue::Entry {
    with_target!(fd, t => opcode::SendMsg::new(t, msg)
        .flags(libc::MSG_NOSIGNAL as u32)
        .build())
}

/// A non-blocking `sendmsg` of `msg` now (epoll's attempt).
fn sendmsg_now(fd: &SharedFd, msg: &libc::msghdr) -> io::Result<u32> {
    // SAFETY: `msg` is a valid msghdr whose pointers (set up by the op's `prepare`) point at
    // live memory the op owns; the kernel only reads through them during the call.
    cvt(unsafe { libc::sendmsg(fd.raw(), msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) })
}

/// `sendmsg` several owned buffers' initialised bytes in one call (gather write), starting
/// `skip` bytes in (what earlier partial sends already took).
pub(crate) struct SendVectored<B> {
    fd: SharedFd,
    bufs: Vec<B>,
    skip: usize,
    iovs: Vec<libc::iovec>,
    msg: libc::msghdr,
}

/// Linux accepts at most this many iovecs per call (`UIO_MAXIOV`); more go in the next call.
const MAX_IOVECS: usize = 1024;

impl<B: IoBuf> SendVectored<B> {
    pub(crate) fn new(fd: SharedFd, bufs: Vec<B>, skip: usize) -> Self {
        // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths); `prepare` fills
        // it in once the op is at its final address.
        let msg = unsafe { mem::zeroed() };
        SendVectored {
            fd,
            bufs,
            skip,
            iovs: Vec::new(),
            msg,
        }
    }

    /// Builds the iovecs (the bytes not yet sent) and points the msghdr at them; called before
    /// every attempt and from `sqe` (with `self` at its final address), and `iovs` is not
    /// touched again until the completion.
    fn prepare(&mut self) {
        self.iovs.clear();
        let mut skip = self.skip;
        for buf in &self.bufs {
            let len = buf.bytes_init();
            if skip >= len {
                skip -= len;
                continue;
            }
            self.iovs.push(libc::iovec {
                // SAFETY: `skip < len`, so the offset stays inside the initialised bytes.
                iov_base: unsafe { buf.stable_ptr().add(skip) } as *mut libc::c_void,
                iov_len: len - skip,
            });
            skip = 0;
            if self.iovs.len() == MAX_IOVECS {
                break;
            }
        }
        self.msg.msg_iov = self.iovs.as_mut_ptr();
        self.msg.msg_iovlen = self.iovs.len();
    }
}

// SAFETY: the SQE points at `self.msg` (a field of the boxed op), which points at `self.iovs`
// (a heap array the op owns and does not change until completion), which point into the
// buffers in `self.bufs` (stable, owned by the op); it names `self.fd`.
unsafe impl<B: IoBuf> OpKind for SendVectored<B> {
    type Output = (io::Result<usize>, Vec<B>);
    const NAME: &'static str = "send";

    #[inline]
    fn byte_count(&self) -> Option<usize> {
        let total: usize = self.bufs.iter().map(IoBuf::bytes_init).sum();
        Some(total.saturating_sub(self.skip))
    }

    fn sqe(&mut self) -> squeue::Entry {
        self.prepare();
        sendmsg_sqe(&self.fd, &self.msg)
    }

    fn readiness(&self) -> (RawFd, Interest) {
        (self.fd.raw(), Interest::Write)
    }

    fn attempt(&mut self) -> io::Result<u32> {
        self.prepare();
        sendmsg_now(&self.fd, &self.msg)
    }

    fn complete(self, result: io::Result<u32>, _flags: u32) -> Self::Output {
        (result.map(|n| n as usize), self.bufs)
    }
}

/// `recvmsg` into an owned buffer, with the sender's address and the datagram's real length
/// (datagram sockets only: on a stream socket `MSG_TRUNC` would discard data).
pub(crate) struct RecvFrom<B> {
    fd: SharedFd,
    buf: B,
    iov: libc::iovec,
    storage: SockAddrStorage,
    msg: libc::msghdr,
}

impl<B: IoBufMut> RecvFrom<B> {
    pub(crate) fn new(fd: SharedFd, buf: B) -> Self {
        // SAFETY: an all-zero msghdr/iovec is valid (null pointers, zero lengths); `prepare`
        // fills them in once the op is at its final address.
        let (iov, msg) = unsafe { (mem::zeroed(), mem::zeroed()) };
        RecvFrom {
            fd,
            buf,
            iov,
            storage: SockAddrStorage::zeroed(),
            msg,
        }
    }

    /// Points the msghdr at our own fields; called before every attempt and from `sqe` (with
    /// `self` at its final address: boxed, never moved again).
    fn prepare(&mut self) {
        self.iov.iov_base = self.buf.stable_mut_ptr() as *mut libc::c_void;
        self.iov.iov_len = self.buf.bytes_total();
        self.msg.msg_iov = &mut self.iov;
        self.msg.msg_iovlen = 1;
        self.msg.msg_name = &mut self.storage as *mut SockAddrStorage as *mut libc::c_void;
        self.msg.msg_namelen = self.storage.size_of();
    }
}

// SAFETY: the SQE points at `self.msg`, which points at `self.iov`, `self.storage` (fields of
// the boxed op) and into `self.buf` (stable, owned by the op); it names `self.fd`.
unsafe impl<B: IoBufMut> OpKind for RecvFrom<B> {
    type Output = (io::Result<RecvFromMeta>, B);
    const NAME: &'static str = "recv_from";

    #[inline]
    fn byte_count(&self) -> Option<usize> {
        Some(self.buf.bytes_total())
    }

    fn sqe(&mut self) -> squeue::Entry {
        self.prepare();
        // MSG_TRUNC as a *request* flag makes a datagram socket return the datagram's real
        // length even when the buffer was shorter, which is how truncation is told apart.
        with_target!(self.fd, t => opcode::RecvMsg::new(t, &mut self.msg)
            .flags(libc::MSG_TRUNC as u32)
            .build())
    }

    fn readiness(&self) -> (RawFd, Interest) {
        (self.fd.raw(), Interest::Read)
    }

    fn attempt(&mut self) -> io::Result<u32> {
        self.prepare();
        // SAFETY: `msg` points at our own live fields, set up by `prepare`.
        cvt(unsafe {
            libc::recvmsg(
                self.fd.raw(),
                &mut self.msg,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        })
    }

    fn complete(self, result: io::Result<u32>, _flags: u32) -> Self::Output {
        let mut this = self;
        let result = result.map(|datagram_len| {
            let datagram_len = datagram_len as usize;
            let stored = datagram_len.min(this.buf.bytes_total());
            // SAFETY: the kernel wrote min(datagram length, capacity) bytes at the buffer's
            // start (`datagram_len` is the untruncated length, because of MSG_TRUNC).
            unsafe { this.buf.set_init(stored) };
            // SAFETY: the kernel wrote `msg_namelen` bytes of address into `storage`.
            let addr = unsafe { SockAddr::new(this.storage, this.msg.msg_namelen) };
            RecvFromMeta {
                stored,
                datagram_len,
                addr,
            }
        });
        (result, this.buf)
    }
}

/// What one `RecvFrom` learned: the bytes stored, the datagram's real length, the sender.
pub(crate) struct RecvFromMeta {
    pub(crate) stored: usize,
    pub(crate) datagram_len: usize,
    pub(crate) addr: SockAddr,
}

/// `sendmsg` an owned buffer's initialised bytes to an address (datagram sockets).
pub(crate) struct SendTo<B> {
    fd: SharedFd,
    buf: B,
    addr: Option<SockAddr>,
    iov: libc::iovec,
    msg: libc::msghdr,
}

impl<B: IoBuf> SendTo<B> {
    pub(crate) fn new(fd: SharedFd, buf: B, addr: Option<SockAddr>) -> Self {
        // SAFETY: as in `RecvFrom::new`.
        let (iov, msg) = unsafe { (mem::zeroed(), mem::zeroed()) };
        SendTo {
            fd,
            buf,
            addr,
            iov,
            msg,
        }
    }

    fn prepare(&mut self) {
        self.iov.iov_base = self.buf.stable_ptr() as *mut libc::c_void;
        self.iov.iov_len = self.buf.bytes_init();
        self.msg.msg_iov = &mut self.iov;
        self.msg.msg_iovlen = 1;
        if let Some(addr) = &self.addr {
            self.msg.msg_name = addr.as_ptr() as *mut libc::c_void;
            self.msg.msg_namelen = addr.len();
        }
    }
}

// SAFETY: as `RecvFrom`; the kernel only reads through these pointers.
unsafe impl<B: IoBuf> OpKind for SendTo<B> {
    type Output = (io::Result<usize>, B);
    const NAME: &'static str = "send_to";

    #[inline]
    fn byte_count(&self) -> Option<usize> {
        Some(self.buf.bytes_init())
    }

    fn sqe(&mut self) -> squeue::Entry {
        self.prepare();
        sendmsg_sqe(&self.fd, &self.msg)
    }

    fn readiness(&self) -> (RawFd, Interest) {
        (self.fd.raw(), Interest::Write)
    }

    fn attempt(&mut self) -> io::Result<u32> {
        self.prepare();
        sendmsg_now(&self.fd, &self.msg)
    }

    fn complete(self, result: io::Result<u32>, _flags: u32) -> Self::Output {
        (result.map(|n| n as usize), self.buf)
    }
}

/// `sendmsg` of one datagram (to `addr`, or to the connected peer) that io_uring must never
/// retry by itself: for Unix datagram sockets.
///
/// Why not [`SendTo`]: `unix_dgram_sendmsg` copies the payload out of the `msghdr`'s iterator
/// *before* it finds the receiver's queue full and fails with `EAGAIN`. io_uring then arms its
/// internal poll and, once the socket is writable, re-issues the request with the same,
/// already consumed iterator: the kernel sends an *empty* datagram and the CQE reports 0 bytes
/// (seen on Linux 6.18). `MSG_DONTWAIT` in the SQE makes `EAGAIN` final (the kernel sets
/// `REQ_F_NOWAIT`), so it reaches us and the caller waits for writability ([`PollReady`])
/// and sends again from a fresh `msghdr`. The epoll backend is unaffected: every attempt
/// builds a fresh `msghdr` and `EAGAIN` means "wait for readiness" there.
pub(crate) struct SendDatagram<B> {
    inner: SendTo<B>,
}

impl<B: IoBuf> SendDatagram<B> {
    pub(crate) fn new(fd: SharedFd, buf: B, addr: Option<SockAddr>) -> Self {
        SendDatagram {
            inner: SendTo::new(fd, buf, addr),
        }
    }
}

// SAFETY: as `SendTo`: `inner` is a field of the boxed op, so the `msghdr`, `iovec`, address
// and buffer it points at stay put; it names `inner.fd`, which the op keeps open.
unsafe impl<B: IoBuf> OpKind for SendDatagram<B> {
    type Output = (io::Result<usize>, B);
    const NAME: &'static str = "send_to";

    #[inline]
    fn byte_count(&self) -> Option<usize> {
        self.inner.byte_count()
    }

    fn sqe(&mut self) -> squeue::Entry {
        self.inner.prepare();
        with_target!(self.inner.fd, t => opcode::SendMsg::new(t, &self.inner.msg)
            .flags((libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) as u32)
            .build())
    }

    fn readiness(&self) -> (RawFd, Interest) {
        self.inner.readiness()
    }

    fn attempt(&mut self) -> io::Result<u32> {
        self.inner.attempt()
    }

    fn complete(self, result: io::Result<u32>, _flags: u32) -> Self::Output {
        (result.map(|n| n as usize), self.inner.buf)
    }
}

/// Waits until a socket is readable (`POLLIN`) or writable (`POLLOUT`), or has an error or a
/// hang-up: a single-shot `IORING_OP_POLL_ADD` on io_uring, a readiness wait on epoll.
pub(crate) struct PollReady {
    fd: SharedFd,
    interest: Interest,
    /// The caller has just seen `EAGAIN` from the socket (or knows it is drained): on epoll the
    /// first attempt waits without asking the kernel (the `EAGAIN` guarantees the next edge),
    /// and a later one, made after a readiness event, reports ready without asking either
    /// (the caller retries its system call, which is the real test).
    after_eagain: bool,
    /// epoll: an attempt was made (the next one follows a readiness event).
    attempted: bool,
}

impl PollReady {
    /// Waits for writability.
    pub(crate) fn writable(fd: SharedFd) -> Self {
        PollReady {
            fd,
            interest: Interest::Write,
            after_eagain: false,
            attempted: false,
        }
    }

    /// Waits for readability (data, end of stream, an error).
    #[cfg(any(feature = "tokio-io", feature = "hyper"))]
    pub(crate) fn readable(fd: SharedFd) -> Self {
        PollReady {
            interest: Interest::Read,
            ..PollReady::writable(fd)
        }
    }

    /// The caller has just seen `EAGAIN`: skip the epoll backend's first readiness check (a
    /// `poll(2)` system call that would only repeat it).
    pub(crate) fn after_eagain(mut self) -> Self {
        self.after_eagain = true;
        self
    }

    fn events(&self) -> i16 {
        match self.interest {
            Interest::Read => libc::POLLIN,
            Interest::Write => libc::POLLOUT,
        }
    }
}

// SAFETY: the SQE carries no pointer; it names `self.fd`, which the op keeps open.
unsafe impl OpKind for PollReady {
    type Output = io::Result<()>;
    const NAME: &'static str = "poll";

    fn sqe(&mut self) -> squeue::Entry {
        let events = self.events() as u32;
        with_target!(self.fd, t => opcode::PollAdd::new(t, events).build())
    }

    fn readiness(&self) -> (RawFd, Interest) {
        (self.fd.raw(), self.interest)
    }

    fn attempt(&mut self) -> io::Result<u32> {
        if self.after_eagain {
            return if std::mem::replace(&mut self.attempted, true) {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let mut pfd = libc::pollfd {
            fd: self.fd.raw(),
            events: self.events(),
            revents: 0,
        };
        // SAFETY: one live `pollfd`, zero timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        match n {
            n if n < 0 => Err(io::Error::last_os_error()),
            0 => Err(io::ErrorKind::WouldBlock.into()),
            _ => Ok(pfd.revents as u32),
        }
    }

    fn complete(self, result: io::Result<u32>, _flags: u32) -> Self::Output {
        result.map(drop)
    }
}
