//! [`Builder`]: a runtime's options, and the one place a runtime is put together.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slab::Slab;

use super::handle::Injected;
use super::inspect::Inspector;
use super::{
    default_exception_handler, Core, Counters, ExceptionContext, ExceptionHandler, Runtime, Shared,
};
use crate::driver::Backend;
use crate::driver::{Driver, DriverHandle, WakeFd, WakeTarget};
use crate::handshake::ParkState;
use crate::time::Timers;

/// Slots of the registered file table when `Builder::registered_fds` is on: 32 768, or the
/// open-file limit if lower (the kernel refuses a larger table with `EMFILE`).
pub(crate) fn file_table_slots() -> u32 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into the live local.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    let cap = if ok { limit.rlim_cur } else { 1024 };
    cap.min(32768) as u32
}

/// Builds a [`Runtime`] with options.
///
/// ```
/// use ringloop_runtime::Runtime;
/// use std::time::Duration;
///
/// let rt = Runtime::builder()
///     .keep_finished_tasks(true)
///     .shutdown_timeout(Duration::from_secs(1))
///     .exception_handler(|ctx| eprintln!("custom: {ctx}"))
///     .build()
///     .unwrap();
/// rt.block_on(async {});
/// ```
pub struct Builder {
    backend: Option<Backend>,
    registered_fds: bool,
    ring_entries: u32,
    cq_entries: Option<u32>,
    zero_copy_send: bool,
    recv_bundles: bool,
    multishot_recv: bool,
    msg_ring_wakes: bool,
    pool: crate::driver::PoolConfig,
    keep_finished_tasks: bool,
    shutdown_timeout: Duration,
    exception_handler: Option<ExceptionHandler>,
    inspect: Option<bool>,
    inspect_socket: Option<PathBuf>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            backend: None,
            registered_fds: false,
            ring_entries: crate::driver::RING_ENTRIES,
            cq_entries: None,
            zero_copy_send: false,
            recv_bundles: true,
            multishot_recv: true,
            msg_ring_wakes: true,
            pool: crate::driver::PoolConfig::default(),
            keep_finished_tasks: false,
            shutdown_timeout: Duration::from_secs(5),
            exception_handler: None,
            inspect: None,
            inspect_socket: None,
        }
    }
}

impl Builder {
    /// A builder with the defaults: finished tasks forgotten, 5 s shutdown grace, panics
    /// reported on stderr.
    pub fn new() -> Self {
        Self::default()
    }

    /// Chooses the I/O backend (default [`Backend::Auto`]; see [`driver`](crate::driver)). An
    /// explicit choice here wins over the `RINGLOOP_BACKEND` environment variable.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Sizes the receive-buffer pool that pooled receives and multishot recv draw from
    /// (default 512 buffers of 2 KiB; see [`PoolConfig`](crate::driver::PoolConfig)). `buffers` must be a power of two, at most 32768.
    ///
    /// # Panics
    /// At [`build`](Self::build) if `buffers` is not a power of two or is over 32768.
    pub fn buffer_pool(mut self, buffers: u16, buf_size: usize) -> Self {
        self.pool = crate::driver::PoolConfig { buffers, buf_size };
        self
    }

    /// Submission-queue entries of the io_uring ring (default 1024; a power of two is used,
    /// rounded up by the kernel). The completion queue gets eight times as many and at least
    /// 32 768 (see [`completion_entries`](Self::completion_entries)).
    pub fn ring_entries(mut self, entries: u32) -> Self {
        self.ring_entries = entries.max(1);
        self
    }

    /// Completion-queue entries of the io_uring ring (default: eight times
    /// [`ring_entries`](Self::ring_entries), at least 32 768, so every connection of a
    /// 10 000-connection server can complete a receive and a send in one loop iteration; the
    /// kernel caps it at 65 536 and rounds it up to a power of two). 16 bytes each. When the
    /// queue still overflows, the kernel keeps the completions and the driver flushes them
    /// (none is lost), at some cost.
    pub fn completion_entries(mut self, entries: u32) -> Self {
        self.cq_entries = Some(entries.max(1));
        self
    }

    /// Installs every socket in io_uring's registered file table as well (default off). Ops then
    /// name the socket by its slot, which saves the kernel a file lookup per op, at the cost of
    /// one `io_uring_register` when a socket is created and one when it is closed. The socket
    /// keeps its descriptor, so every socket option still works. A socket leaves the table of
    /// the runtime it was created on wherever it is dropped (it keeps a handle to that
    /// runtime's driver). Measured: see docs/measurements.md.
    ///
    /// Ignored, with one line on stderr, on epoll and on kernels before 6.15. Those free the
    /// socket of an emptied slot only after every op that used the table before has completed,
    /// so one receive waiting on an idle connection keeps every socket closed after it open,
    /// unseen by its peer (seen on 6.1 and 6.12 by `.ci/kernels`: a server whose clients wait
    /// for its close hangs).
    pub fn registered_fds(mut self, on: bool) -> Self {
        self.registered_fds = on;
        self
    }

    /// Sends with io_uring's zero-copy `SEND_ZC` instead of `SEND` (default off; ignored on
    /// epoll, and for sockets other than TCP and UDP, which the kernel does not send from in
    /// place: a Unix socket sends as usual). The kernel then reads the caller's buffer in place instead of copying it, and
    /// the send completes only once the kernel is done with the buffer. It pays for large
    /// sends to a real NIC; on loopback and for small messages the kernel copies anyway and the
    /// extra notification costs more (measured: see docs/measurements.md), hence off by
    /// default.
    pub fn zero_copy_send(mut self, on: bool) -> Self {
        self.zero_copy_send = on;
        self
    }

    /// Lets a pooled receive fill several pool buffers with one completion (io_uring's receive
    /// bundles, `IORING_RECVSEND_BUNDLE`; default on). Ignored on epoll, on kernels without
    /// bundles (before 6.10) and without [`multishot_recv`](Self::multishot_recv); on a kernel
    /// that has them but refuses the length limit on a multishot receive that a bundle needs
    /// (6.12), receivers fall back to single-shot receives at their first try (a multishot
    /// receive without a length limit could take a connection past its share of the pool).
    ///
    /// A stream that brings many buffers' worth at once then costs the kernel one receive and
    /// one completion instead of one per buffer. What the receiver hands out is the same, one
    /// [`PooledBuf`](crate::PooledBuf) per buffer, in order. A bundle takes at most the
    /// receiver's queue cap in buffers, which also keeps an unread connection's share of the
    /// pool tighter than plain multishot receives do (see `ringloop_net::pooled`). Measured:
    /// see docs/measurements.md.
    pub fn recv_bundles(mut self, on: bool) -> Self {
        self.recv_bundles = on;
        self
    }

    /// Lets a pooled receive be one multishot receive per connection (default on; ignored on
    /// epoll). Off, or on a kernel before 6.10 whatever this says, each pooled receive is a
    /// single-shot receive of one buffer, re-armed at each `recv`, and receive bundles are off
    /// too: see [`multishot_recv`](crate::multishot_recv) for why old kernels get that. Off
    /// here, the single-shot path runs on any kernel, which is how the tests cover it.
    pub fn multishot_recv(mut self, on: bool) -> Self {
        self.multishot_recv = on;
        self
    }

    /// Lets wakes between io_uring loops go through their rings (default on; ignored on epoll
    /// and on kernels before 5.18).
    ///
    /// A task of this loop that wakes a task of another io_uring loop parked in the kernel (a
    /// channel send to another shard, say) then queues an `IORING_OP_MSG_RING` on this loop's
    /// own ring, submitted when the task's poll ends, with every other wake that poll made;
    /// the message lands as a completion on the other ring, which ends its wait. Off, each
    /// such wake is a `write(2)` to the other loop's eventfd, at once, and the woken loop reads
    /// the eventfd back. Either way a burst of wakes to a parked loop costs one (see
    /// [`RuntimeStats::unparks`](crate::RuntimeStats::unparks)).
    ///
    /// What it changes, measured between two shards on a 2-core VM (docs/measurements.md): a
    /// stream of messages through a bounded channel took about a quarter less time (the woken
    /// loop reads no eventfd, and wakes to a fuller channel, since the wake leaves when the
    /// sending poll ends rather than at its first send); a bare ping-pong,
    /// where every message wakes a sleeping loop, 10–15 % more, since the kernel hands a
    /// message to a `DEFER_TASKRUN` ring through its thread's task work.
    ///
    /// A wake leaves when the poll that made it ends. A task that sends and then computes for
    /// a long time in the same poll, or blocks its thread in a call ringloop does not know of
    /// (a `std` lock, `thread::sleep`), holds its wakes as long; ringloop's own blocking calls
    /// ([`RemoteTask::wait`](crate::RemoteTask::wait), the `blocking_*` methods of the
    /// channels and of [`BridgeQueue`](crate::sync::BridgeQueue)) send them first.
    ///
    /// Off here, this runtime neither sends such wakes nor receives them: other loops write its
    /// eventfd.
    ///
    /// ```
    /// use ringloop_runtime::{LoopThread, Runtime};
    ///
    /// let lt = LoopThread::start().unwrap();
    /// let rt = Runtime::builder().msg_ring_wakes(false).build().unwrap();
    /// let value = rt.block_on(async { lt.spawn(|| async { 7 }).await });
    /// assert_eq!(value.unwrap(), 7);
    /// assert_eq!(rt.stats().msg_ring_wakes, 0, "this loop woke the other through its eventfd");
    /// lt.stop().unwrap();
    /// ```
    pub fn msg_ring_wakes(mut self, on: bool) -> Self {
        self.msg_ring_wakes = on;
        self
    }

    /// Keeps ended tasks in [`task_tree`](crate::task_tree) dumps (for post-mortems). Each ended
    /// task then costs a small record until the runtime is dropped.
    pub fn keep_finished_tasks(mut self, keep: bool) -> Self {
        self.keep_finished_tasks = keep;
        self
    }

    /// How long [`Runtime::block_on`] lets the tasks it cancels at the end clean up before it
    /// drops them (default 5 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Serves the live view, the runtime's task tree, stats and op table, on a Unix socket
    /// for `ringloop-ps` (default: off, unless the environment variable `RINGLOOP_INSPECT=1`
    /// turns it on for every runtime; an explicit choice here wins). The socket is
    /// `<dir>/<pid>-<n>.sock` in [`inspect::socket_dir`](crate::inspect::socket_dir), mode
    /// 0600, served to processes of the same user only, and removed when the runtime is
    /// dropped; see [`inspect`](crate::inspect) for the protocol and what it costs (nothing
    /// while nobody connects).
    ///
    /// When the environment variable turned it on and the socket cannot be made, the runtime
    /// is built without it, with one line on stderr; when asked for here, that is an error.
    pub fn inspect(mut self, on: bool) -> Self {
        self.inspect = Some(on);
        self
    }

    /// Serves the live view (see [`inspect`](Self::inspect)) on a socket at `path` instead
    /// of the default place; `ringloop-ps <path>` reads it. The socket still has mode 0600
    /// and serves the same user only, but the directory is yours to choose and is not
    /// checked.
    pub fn inspect_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.inspect = Some(true);
        self.inspect_socket = Some(path.into());
        self
    }

    /// Replaces the default exception handler (one line on stderr per unhandled panic).
    pub fn exception_handler(mut self, f: impl Fn(&ExceptionContext<'_>) + 'static) -> Self {
        self.exception_handler = Some(Rc::new(f));
        self
    }

    /// Creates the runtime.
    ///
    /// # Errors
    /// If the kernel refuses the driver's descriptors (eventfd, epoll), e.g. at the open-file
    /// limit; if io_uring was asked for explicitly and is unavailable; if `RINGLOOP_BACKEND`
    /// holds an unknown name.
    pub fn build(self) -> io::Result<Runtime> {
        let inspector = match self.inspect {
            Some(false) => None,
            Some(true) => Some(Inspector::bind(self.inspect_socket.clone())?),
            None if crate::inspect::env_asks() => match Inspector::bind(None) {
                Ok(i) => Some(i),
                Err(e) => {
                    eprintln!("ringloop: RINGLOOP_INSPECT: no live view for this runtime: {e}");
                    None
                }
            },
            None => None,
        };
        let wake = WakeFd::new()?;
        let driver = Driver::new(
            self.backend.unwrap_or_default(),
            self.backend.is_some(),
            &wake,
            self.pool,
            self.ring_entries,
            self.cq_entries,
        )?;
        let mut driver = driver;
        let backend = driver.backend();
        if !self.msg_ring_wakes {
            driver.disable_msg_ring();
        }
        // Where the kernel has `MSG_RING`, other io_uring loops wake this one through its ring.
        let wake_ring = driver.wake_ring_fd();
        let registered_fds = self.registered_fds && driver.enable_file_table(file_table_slots());
        if self.registered_fds && !registered_fds {
            eprintln!("ringloop: registered descriptors unavailable on this backend or kernel");
        }
        let zero_copy_send = self.zero_copy_send && driver.supports_send_zc();
        if self.zero_copy_send && !zero_copy_send {
            eprintln!("ringloop: zero-copy send unavailable on this backend or kernel; using send");
        }
        let multishot_recv = self.multishot_recv && driver.supports_recv_bundles();
        let pool = driver.pool().clone();
        let recv_bundles = self.recv_bundles && multishot_recv;
        let shared = Arc::new(Shared {
            injected: Mutex::new(Injected::default()),
            park: ParkState::new(),
            stop_requested: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            wake: Arc::new(WakeTarget::new(wake, wake_ring)),
            unparks: AtomicU64::new(0),
        });
        let core = Core {
            shared,
            ready: RefCell::new(VecDeque::with_capacity(256)),
            timers: Timers::new(),
            tasks: RefCell::new(Slab::new()),
            finished: RefCell::new(self.keep_finished_tasks.then(Vec::new)),
            driver: DriverHandle::new(driver),
            pool,
            woken: RefCell::new(Vec::new()),
            backend,
            zero_copy_send,
            registered_fds,
            recv_bundles,
            multishot_recv,
            exception_handler: RefCell::new(
                self.exception_handler
                    .unwrap_or_else(default_exception_handler),
            ),
            stop_requested: Cell::new(false),
            counters: Counters::default(),
            expired: RefCell::new(Vec::new()),
            wakes_queued: Cell::new(false),
            locals: RefCell::new(Vec::new()),
            inspector,
        };
        Ok(Runtime {
            core: Box::new(core),
            shutdown_timeout: self.shutdown_timeout,
        })
    }
}
