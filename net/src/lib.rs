//! Sockets for ringloop: asyncio's `sock_accept` / `sock_recv` / `sock_sendall` /
//! `sock_connect` primitives, and TCP, UDP and Unix sockets on top of them, with buffers owned
//! by the operation while the kernel holds them, and [`Server`] (asyncio's `start_server`):
//! a task per connection and a graceful shutdown; [`shard`] serves one port from every shard
//! of a thread-per-core set. Re-exported as `ringloop::net`.
//!
//! Every socket works the same on the io_uring and the epoll backend.
//!
//! [`protocol`] is asyncio's lower layer under its streams: [`create_server`] and
//! [`create_connection`] serve a connection with a [`Protocol`]'s callbacks, writing through a
//! [`Transport`], without a task per connection.
//!
//! ```no_run
//! use ringloop_net::{TcpListener, TcpStream};
//!
//! ringloop_runtime::Runtime::new().unwrap().block_on(async {
//!     let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap())?;
//!     let addr = listener.local_addr()?;
//!     let client = TcpStream::connect(addr).await?;
//!     let (server, _) = listener.accept().await?;
//!     let (r, _) = client.write_all(b"ping".as_slice()).await;
//!     r?;
//!     let (n, buf) = server.read(vec![0u8; 16]).await;
//!     assert_eq!(&buf[..n?], b"ping");
//!     Ok::<_, std::io::Error>(())
//! }).unwrap();
//! ```
//!
//! # Deadlines
//!
//! Any operation can be bounded in time with [`DeadlineExt`]: `.timeout(duration)` or
//! `.deadline(instant)` on the future of a read, a write, an accept, a connect, a datagram or
//! a pooled receive. What comes back is the operation's own result: an error of kind
//! [`TimedOut`](std::io::ErrorKind::TimedOut) (errno `ETIMEDOUT`) if the deadline passed
//! first, and otherwise what the operation did, even when it completed as the deadline passed
//! (no byte received is dropped, no byte is reported sent that was not). Owned buffers come
//! back with the error, and the socket stays usable: a read that timed out loses nothing a
//! later read could get.
//!
//! ```
//! use std::time::Duration;
//! use ringloop_net::{DeadlineExt, UnixStream};
//!
//! ringloop_runtime::Runtime::new().unwrap().block_on(async {
//!     let (a, b) = UnixStream::pair()?;
//!     let (r, buf) = a.read(vec![0u8; 64]).timeout(Duration::from_millis(5)).await;
//!     assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
//!     // Still usable, nothing lost.
//!     b.write_all(b"late".as_slice()).await.0?;
//!     let (n, buf) = a.read(buf).timeout(Duration::from_secs(5)).await;
//!     assert_eq!(&buf[..n?], b"late");
//!     Ok::<_, std::io::Error>(())
//! }).unwrap();
//! ```
//!
//! Unlike tokio's `timeout` and asyncio's `wait_for`, a deadline neither drops the operation
//! nor cancels the task: an operation in flight is stopped by the kernel (io_uring's linked
//! timeout) or gives up at its next poll (epoll), and reports how it ended. See
//! [`ringloop_runtime::time::deadline`].

#![warn(missing_docs)]

/// `AsSharedFd` and `AsRawFd` for a socket type whose descriptor is its `fd: SharedFd` field.
macro_rules! socket_fd_impls {
    ($ty:ty, $rx:ident) => {
        impl $crate::socket::AsSharedFd for $ty {
            fn as_shared_fd(&self) -> &ringloop_runtime::SharedFd {
                &self.fd
            }

            fn recv_slot(&self) -> Option<&$crate::pooled::RecvSlot> {
                Some(&self.$rx)
            }
        }

        impl std::os::fd::AsRawFd for $ty {
            fn as_raw_fd(&self) -> std::os::fd::RawFd {
                self.fd.raw()
            }
        }
    };
    ($ty:ty) => {
        impl $crate::socket::AsSharedFd for $ty {
            fn as_shared_fd(&self) -> &ringloop_runtime::SharedFd {
                &self.fd
            }
        }

        impl std::os::fd::AsRawFd for $ty {
            fn as_raw_fd(&self) -> std::os::fd::RawFd {
                self.fd.raw()
            }
        }
    };
}

/// Builds an SQE naming a socket by its registered file-table slot when it has one
/// (`Builder::registered_fds`), else by descriptor: `with_target!(fd, t => opcode::X::new(t, ...).build())`.
macro_rules! with_target {
    ($fd:expr, $t:ident => $build:expr) => {
        match $fd.target() {
            ringloop_runtime::FdTarget::Raw(raw) => {
                let $t = io_uring::types::Fd(raw);
                $build
            }
            ringloop_runtime::FdTarget::Fixed(slot) => {
                let $t = io_uring::types::Fixed(slot);
                $build
            }
        }
    };
}

/// The read and write halves of a byte-stream socket type (`into_split`), in the invoking
/// module as `OwnedReadHalf` and `OwnedWriteHalf` (one pair per stream type, as in tokio).
/// `$stream` names the stream type, for the docs.
macro_rules! split_halves {
    ($stream:ident) => {
        #[doc = concat!("The read half of a [`", stringify!($stream), "`] (from [`",
            stringify!($stream), "::into_split`]).")]
        #[derive(Debug)]
        pub struct OwnedReadHalf {
            fd: ringloop_runtime::SharedFd,
            rx: $crate::pooled::RecvSlot,
        }

        impl OwnedReadHalf {
            #[doc = concat!("See [`", stringify!($stream), "::read`] (and its deadlines).")]
            pub async fn read<B: $crate::IoBufMut>(&self, buf: B) -> (std::io::Result<usize>, B) {
                $crate::socket::sock_recv_into(&self.fd, buf).await
            }

            #[doc = concat!("See [`", stringify!($stream), "::read_exact`].")]
            pub async fn read_exact<B: $crate::IoBufMut>(&self, buf: B) -> (std::io::Result<()>, B) {
                $crate::tcp::read_exact(self, buf).await
            }

            #[doc = concat!("See [`", stringify!($stream), "::pooled_receiver`].")]
            pub fn pooled_receiver(&self) -> $crate::PooledReceiver {
                self.rx.receiver(&self.fd, $crate::DEFAULT_RECV_CAP)
            }

            #[doc = concat!("See [`", stringify!($stream), "::pooled_receiver_with_cap`].")]
            pub fn pooled_receiver_with_cap(&self, cap: usize) -> $crate::PooledReceiver {
                self.rx.receiver(&self.fd, cap)
            }
        }

        socket_fd_impls!(OwnedReadHalf, rx);

        #[doc = concat!("The write half of a [`", stringify!($stream), "`] (from [`",
            stringify!($stream), "::into_split`]). Dropping it shuts down the write direction.")]
        #[derive(Debug)]
        pub struct OwnedWriteHalf {
            fd: ringloop_runtime::SharedFd,
        }

        impl OwnedWriteHalf {
            #[doc = concat!("See [`", stringify!($stream), "::write`].")]
            pub async fn write<B: $crate::IoBuf>(&self, buf: B) -> (std::io::Result<usize>, B) {
                $crate::socket::sock_send(&self.fd, buf).await
            }

            #[doc = concat!("See [`", stringify!($stream), "::write_all`].")]
            pub fn write_all<B: $crate::IoBuf>(&self, buf: B) -> $crate::SendAll<B> {
                $crate::socket::sock_sendall(&self.fd, buf)
            }

            #[doc = concat!("See [`", stringify!($stream), "::write_all_vectored`].")]
            pub async fn write_all_vectored<B: $crate::IoBuf>(
                &self,
                bufs: Vec<B>,
            ) -> (Result<(), $crate::SendAllError>, Vec<B>) {
                $crate::socket::sock_sendall_vectored(&self.fd, bufs).await
            }

            #[doc = concat!("See [`", stringify!($stream), "::send_file`].")]
            pub async fn send_file(
                &self,
                file: &impl $crate::AsSharedFd,
                offset: u64,
                len: usize,
            ) -> Result<usize, $crate::SendAllError> {
                $crate::socket::sock_sendfile(&self.fd, file, offset, len).await
            }

            #[doc = concat!("See [`", stringify!($stream), "::send_file_spliced`].")]
            pub async fn send_file_spliced(
                &self,
                file: &impl $crate::AsSharedFd,
                offset: u64,
                len: usize,
            ) -> Result<usize, $crate::SendAllError> {
                $crate::sendfile::send_file_spliced(&self.fd, file, offset, len).await
            }
        }

        socket_fd_impls!(OwnedWriteHalf);

        impl Drop for OwnedWriteHalf {
            fn drop(&mut self) {
                let _ = $crate::tcp::with_socket(&self.fd, |s| s.shutdown(std::net::Shutdown::Write));
            }
        }
    };
}

pub mod buf;
#[cfg(any(feature = "tokio-io", feature = "hyper"))]
pub mod compat;
mod deadline;
mod ops;
pub mod pooled;
pub mod protocol;
mod sendfile;
pub mod server;
pub mod shard;
pub mod socket;
pub mod tcp;
pub mod udp;
pub mod unix;

pub use buf::{IoBuf, IoBufMut, Slice};
pub use pooled::{recv_budget, PooledReceiver, PooledRecv, DEFAULT_RECV_CAP, POOL_SHARE};
pub use protocol::{
    create_connection, create_server, create_server_on, ExtraInfo, Protocol, ProtocolServer,
    Transport, WriteBuf,
};
pub use ringloop_runtime::{DeadlineExt, PooledBuf};
pub use server::{
    start_server, start_unix_server, ListenAddr, Server, ShutdownReport, ShutdownSignal,
    SignalShutdown, DEFAULT_CANCEL_GRACE, GRACE_OVER,
};
pub use shard::{
    Distribution, ShardAcceptor, ShardAcceptorBuilder, ShardListeners, ShardListenersBuilder,
    Steering, UnixShardAcceptor, DEFAULT_INBOX_BOUND,
};
pub use socket::{
    sock_accept, sock_connect, sock_recv, sock_recv_into, sock_send, sock_sendall,
    sock_sendall_vectored, sock_sendfile, AsSharedFd, DatagramMeta, SendAll, SendAllError,
};
pub use tcp::{
    Incoming, OwnedReadHalf, OwnedWriteHalf, TcpListener, TcpListenerBuilder, TcpStream,
};
pub use udp::UdpSocket;
pub use unix::{UnixDatagram, UnixListener, UnixStream};
