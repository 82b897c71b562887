//! Other crates' runtime traits, implemented on ringloop (each behind a cargo feature).
//!
//! * [`hyper`] (feature `hyper`): hyper 1.x's [`Executor`](::hyper::rt::Executor) and
//!   [`Timer`](::hyper::rt::Timer), so that hyper's HTTP/1 and HTTP/2 servers and clients run
//!   on a ringloop runtime, with their header-read, keep-alive and ping timeouts. The byte
//!   streams hyper reads and writes (`hyper::rt::Read` / `Write`) belong to the sockets crate.

#[cfg(feature = "hyper")]
pub mod hyper;
