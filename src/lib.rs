//! # ringloop
//!
//! ringloop is an async runtime for Linux servers with the shape of Python's asyncio: an event
//! loop, tasks, settable futures, callbacks and timers, with asyncio's cancellation semantics,
//! built on a *completion-based* reactor (io_uring) instead of a readiness selector.
//!
//! A readiness selector (epoll, asyncio's `selectors`) tells the loop that a socket *could* be
//! read now, and the loop then makes the system call itself. io_uring takes the operation
//! instead: the loop submits "receive into this buffer", and the kernel reports when it is done,
//! with the bytes already in place. One kernel entry per loop iteration submits everything that
//! is queued and reaps everything that finished. ringloop keeps asyncio's Task/Future model on
//! top of that, and falls back to epoll where io_uring is not available.
//!
//! One [`Runtime`] runs on one thread (thread-per-core): tasks may be `!Send`, and a multi-core
//! server runs one runtime per core, with nothing shared on the hot path.
//!
//! This crate is the facade: it re-exports the runtime core
//! ([`ringloop-runtime`](ringloop_runtime)) at its root, the sockets crate as [`net`] and the
//! files crate as [`fs`].
//!
//! ```
//! use ringloop::{sleep, spawn, Runtime};
//! use std::time::Duration;
//!
//! let rt = Runtime::new().unwrap();
//! let total = rt.block_on(async {
//!     // Spawn a few tasks, like asyncio.create_task.
//!     let tasks: Vec<_> = (1..=3u64)
//!         .map(|i| {
//!             spawn(async move {
//!                 sleep(Duration::from_millis(i)).await?;
//!                 Ok::<_, ringloop::Cancelled>(i * 10)
//!             })
//!         })
//!         .collect();
//!
//!     // A task sleeping for an hour is cancelled now, not in an hour.
//!     // Its sleep resolves to `Err(Cancelled)`; letting that escape ends the task cancelled.
//!     let sleeper = spawn(async { sleep(Duration::from_secs(3600)).await });
//!     sleeper.cancel();
//!     assert!(sleeper.await.unwrap_err().is_cancelled());
//!
//!     let mut total = 0;
//!     for t in tasks {
//!         total += t.await.unwrap().unwrap();
//!     }
//!     total
//! });
//! assert_eq!(total, 60);
//! ```
//!
//! See [`ringloop_runtime`] for the loop iteration, cancellation and where ringloop differs from
//! asyncio.

#![warn(missing_docs)]

pub use ringloop_runtime::*;

pub use ringloop_runtime::{combinators, sync, task, time};

/// Sockets: asyncio's `sock_*` primitives and TCP, UDP and Unix sockets with owned buffers
/// (the crate `ringloop-net`).
pub use ringloop_net as net;

/// Files: `File` with positional reads and writes on owned buffers, and `read`, `write`,
/// `rename`, `create_dir_all`, ... as ops on the ring (the crate `ringloop-fs`).
pub use ringloop_fs as fs;

// The README's Rust examples run as doctests of this crate, so they cannot drift from the API.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
