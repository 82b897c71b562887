//! Sockets for ringloop: asyncio's `sock_accept` / `sock_recv` / `sock_sendall` / `sock_connect`
//! primitives and TCP, UDP and Unix sockets on top of them, with buffers owned by the operation
//! while the kernel holds them.
//!
//! This crate is an empty shell for now: the reactor (io_uring and epoll drivers) that these
//! sockets stand on is the subject of the next milestone. Everything here will be re-exported as
//! `ringloop::net`.
