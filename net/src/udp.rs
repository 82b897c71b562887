//! UDP: [`UdpSocket`], IPv4 and IPv6.
//!
//! Datagrams keep their boundaries: one [`send_to`](UdpSocket::send_to) is one
//! [`recv_from`](UdpSocket::recv_from) on the other side. Buffers are owned by the operation and
//! given back with the result, as everywhere in this crate.
//!
//! ```
//! use ringloop_net::UdpSocket;
//!
//! # ringloop_runtime::Runtime::new().unwrap().block_on(async {
//! let server = UdpSocket::bind("127.0.0.1:0".parse().unwrap())?;
//! let client = UdpSocket::bind("127.0.0.1:0".parse().unwrap())?;
//! let (sent, _) = client.send_to(b"ping".as_slice(), server.local_addr()?).await;
//! sent?;
//! let (got, buf) = server.recv_from(vec![0u8; 1500]).await;
//! let (n, from) = got?;
//! assert_eq!(&buf[..n], b"ping");
//! assert_eq!(from, client.local_addr()?);
//! # Ok::<_, std::io::Error>(()) });
//! ```

use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};

use ringloop_runtime::{Op, SharedFd};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::buf::{IoBuf, IoBufMut};
use crate::ops;
use crate::socket::{self, DatagramMeta};
use crate::tcp::{local_addr, with_socket};

/// A UDP socket.
///
/// Unconnected, it sends to any address with [`send_to`](Self::send_to) and receives from any
/// with [`recv_from`](Self::recv_from). After [`connect`](Self::connect) it talks to one peer
/// with [`send`](Self::send) and [`recv`](Self::recv), receives only that peer's datagrams, and
/// learns of ICMP errors: a datagram sent to a port nobody listens on makes a later call fail
/// with `ECONNREFUSED`.
///
/// The socket can be used from several tasks at once through `&UdpSocket`.
///
/// Every send and receive takes a deadline ([`DeadlineExt`](crate::DeadlineExt)): a receive
/// that times out (`TimedOut`) took no datagram, a send that times out sent none.
#[derive(Debug)]
pub struct UdpSocket {
    fd: SharedFd,
}

impl UdpSocket {
    /// Creates a socket (non-blocking, close-on-exec) bound to `addr`; port 0 picks a free
    /// port (see [`local_addr`](Self::local_addr)).
    ///
    /// # Errors
    /// The real errno: `EADDRINUSE`, `EADDRNOTAVAIL` (e.g. `[::1]` on a host without IPv6
    /// loopback), `EAFNOSUPPORT`, `EACCES`, `EMFILE`, ...
    pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
        let socket = Socket::new(
            Domain::for_address(addr),
            Type::DGRAM.nonblocking().cloexec(),
            Some(Protocol::UDP),
        )?;
        socket.bind(&SockAddr::from(addr))?;
        Ok(UdpSocket {
            fd: SharedFd::new(socket.into()),
        })
    }

    /// Sets the default peer: [`send`](Self::send) goes there, only its datagrams are
    /// received, and ICMP errors about it are reported (`ECONNREFUSED` on a later call).
    /// Connecting a UDP socket sends nothing and never blocks, so this is not `async`.
    /// Connecting again changes the peer.
    ///
    /// # Errors
    /// The real errno (`ENETUNREACH`, `EAFNOSUPPORT` for the other IP family, ...).
    pub fn connect(&self, addr: SocketAddr) -> io::Result<()> {
        with_socket(&self.fd, |s| s.connect(&SockAddr::from(addr)))
    }

    /// Sends `buf`'s initialised bytes as one datagram to `target`; returns how many bytes
    /// went out (all of them: a datagram is never split).
    ///
    /// # Errors
    /// The real errno: `EMSGSIZE` (too large for one datagram), `ENETUNREACH`, `EACCES`
    /// (broadcast without [`set_broadcast`](Self::set_broadcast)), `ECONNREFUSED` (a pending
    /// ICMP error on a connected socket), ...; a cancellation (see
    /// [`ringloop_runtime::is_cancelled`]).
    pub async fn send_to<B: IoBuf>(&self, buf: B, target: SocketAddr) -> (io::Result<usize>, B) {
        Op::new(ops::SendTo::new(
            self.fd.clone(),
            buf,
            Some(SockAddr::from(target)),
        ))
        .await
    }

    /// Receives one datagram into `buf` (from its start, up to its capacity) and says who sent
    /// it. A datagram longer than the buffer is truncated: the rest is discarded, as with
    /// `std`'s and asyncio's `recvfrom` ([`recv_datagram`](Self::recv_datagram) tells when that
    /// happened). A count of 0 is an empty datagram, not an end of stream (UDP has none).
    ///
    /// # Errors
    /// The real errno (`ECONNREFUSED` on a connected socket whose peer's port is closed, ...);
    /// a cancellation (see [`ringloop_runtime::is_cancelled`]), after which no datagram was
    /// consumed.
    pub async fn recv_from<B: IoBufMut>(&self, buf: B) -> (io::Result<(usize, SocketAddr)>, B) {
        let (r, buf) = self.recv_datagram(buf).await;
        (r.map(|meta| (meta.len, meta.from)), buf)
    }

    /// Receives one datagram like [`recv_from`](Self::recv_from), and also reports its real
    /// length, so a truncated datagram can be told apart:
    ///
    /// ```no_run
    /// # use ringloop_net::UdpSocket;
    /// # ringloop_runtime::Runtime::new().unwrap().block_on(async {
    /// let socket = UdpSocket::bind("127.0.0.1:0".parse().unwrap())?;
    /// let (meta, buf) = socket.recv_datagram(vec![0u8; 512]).await;
    /// let meta = meta?;
    /// if meta.is_truncated() {
    ///     eprintln!("{} sent {} bytes; kept {}", meta.from, meta.datagram_len, buf.len());
    /// }
    /// # Ok::<_, std::io::Error>(()) });
    /// ```
    ///
    /// # Errors
    /// As [`recv_from`](Self::recv_from).
    pub async fn recv_datagram<B: IoBufMut>(
        &self,
        buf: B,
    ) -> (io::Result<DatagramMeta<SocketAddr>>, B) {
        let (r, buf) = Op::new(ops::RecvFrom::new(self.fd.clone(), buf)).await;
        let r = r.and_then(|meta| {
            let from = meta
                .addr
                .as_socket()
                .ok_or_else(|| io::Error::other("received from a non-IP address"))?;
            Ok(DatagramMeta {
                len: meta.stored,
                datagram_len: meta.datagram_len,
                from,
            })
        });
        (r, buf)
    }

    /// Sends `buf`'s initialised bytes as one datagram to the connected peer.
    ///
    /// # Errors
    /// `EDESTADDRREQ` if the socket is not connected; otherwise as
    /// [`send_to`](Self::send_to).
    pub async fn send<B: IoBuf>(&self, buf: B) -> (io::Result<usize>, B) {
        socket::sock_send(self, buf).await
    }

    /// Receives one datagram from the connected peer into `buf` (truncated if longer, as in
    /// [`recv_from`](Self::recv_from)).
    ///
    /// # Errors
    /// As [`recv_from`](Self::recv_from).
    pub async fn recv<B: IoBufMut>(&self, buf: B) -> (io::Result<usize>, B) {
        socket::sock_recv_into(self, buf).await
    }

    /// The address the socket is bound to.
    ///
    /// # Errors
    /// The real errno.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        local_addr(&self.fd)
    }

    /// The connected peer's address.
    ///
    /// # Errors
    /// `ENOTCONN` if the socket is not connected.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        with_socket(&self.fd, |s| s.peer_addr())?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an IP socket"))
    }

    /// `SO_BROADCAST`: allow sending to broadcast addresses.
    ///
    /// # Errors
    /// The real errno.
    pub fn set_broadcast(&self, on: bool) -> io::Result<()> {
        with_socket(&self.fd, |s| s.set_broadcast(on))
    }

    /// Whether `SO_BROADCAST` is on.
    ///
    /// # Errors
    /// The real errno.
    pub fn broadcast(&self) -> io::Result<bool> {
        with_socket(&self.fd, |s| s.broadcast())
    }

    /// `IP_TTL` / `IPV6_UNICAST_HOPS`: the hop limit of outgoing datagrams.
    ///
    /// # Errors
    /// The real errno.
    pub fn set_ttl(&self, ttl: u32) -> io::Result<()> {
        with_socket(&self.fd, |s| match s.local_addr()?.as_socket() {
            Some(SocketAddr::V6(_)) => s.set_unicast_hops_v6(ttl),
            _ => s.set_ttl_v4(ttl),
        })
    }

    /// Takes the socket's pending error (`SO_ERROR`), e.g. an `ECONNREFUSED` that an ICMP
    /// message left on a connected socket, clearing it.
    ///
    /// # Errors
    /// The real errno of the `getsockopt` itself.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        with_socket(&self.fd, |s| s.take_error())
    }

    /// Wraps a socket made elsewhere (made non-blocking here).
    ///
    /// # Errors
    /// If it cannot be made non-blocking.
    pub fn from_std(socket: std::net::UdpSocket) -> io::Result<UdpSocket> {
        socket.set_nonblocking(true)?;
        Ok(UdpSocket {
            fd: SharedFd::new(socket.into()),
        })
    }

    /// Gives the socket back as a std socket (left non-blocking).
    ///
    /// # Errors
    /// Gives `self` back if an op still holds the socket.
    pub fn into_std(self) -> Result<std::net::UdpSocket, UdpSocket> {
        match OwnedFd::try_from(self.fd) {
            // SAFETY: we own the descriptor and hand it over.
            Ok(fd) => Ok(unsafe { std::net::UdpSocket::from_raw_fd(fd.into_raw_fd()) }),
            Err(fd) => Err(UdpSocket { fd }),
        }
    }
}

socket_fd_impls!(UdpSocket);
