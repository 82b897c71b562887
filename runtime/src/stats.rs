//! Runtime statistics.

use serde::Serialize;

/// A snapshot of a runtime's counters, from [`Runtime::stats`](crate::Runtime::stats).
///
/// Counters only grow, except the gauges `tasks_alive` and `timers_pending`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RuntimeStats {
    /// Tasks spawned and not yet ended (gauge).
    pub tasks_alive: u64,
    /// Tasks ever spawned (the main future of `block_on` included).
    pub tasks_spawned: u64,
    /// Tasks that returned a value.
    pub tasks_completed: u64,
    /// Tasks that ended by cancellation.
    pub tasks_cancelled: u64,
    /// Tasks that panicked.
    pub tasks_panicked: u64,
    /// Task polls.
    pub polls: u64,
    /// Callbacks run (`call_soon`, `call_later`, `call_at`, done callbacks, thread-safe ones).
    pub callbacks_run: u64,
    /// Armed timers (gauge): sleeps, timeouts and timed callbacks waiting on them (not the
    /// entry of a dropped hyper sleep kept, armed, for the next one until its task poll ends).
    pub timers_pending: u64,
    /// Loop iterations.
    pub loop_iterations: u64,
    /// Times the loop blocked in the driver (parked with a non-zero timeout).
    pub parks: u64,
    /// Wakes that came from other threads through the injector.
    pub remote_wakes: u64,
    /// Times another thread (or a [`Handle::stop`](crate::Handle::stop)) woke this loop out
    /// of a park, or out of one it was about to make: one eventfd write or one `MSG_RING` each
    /// (see [`Builder::msg_ring_wakes`](crate::Builder::msg_ring_wakes)). A burst of remote
    /// wakes while the loop is parked costs one, so this is at most one per park, and usually
    /// far below [`remote_wakes`](Self::remote_wakes).
    pub unparks: u64,
    /// Wakes this loop sent to other io_uring loops through its own ring, as
    /// `IORING_OP_MSG_RING`s that landed (instead of writes to their eventfds).
    pub msg_ring_wakes: u64,
    /// Kernel entries of the driver: `io_uring_enter` or `epoll_wait` calls.
    pub kernel_enters: u64,
    /// Every syscall the driver and its ops made: kernel entries, plus on epoll `epoll_ctl`
    /// and each non-blocking attempt (`recv`, `send`, `accept4`, ...).
    pub driver_syscalls: u64,
    /// I/O ops submitted to the kernel (io_uring).
    pub ops_submitted: u64,
    /// I/O op completions reaped (io_uring).
    pub ops_completed: u64,
    /// I/O ops cancelled in the kernel (`ASYNC_CANCEL` sent).
    pub ops_cancelled: u64,
    /// I/O ops in flight now (gauge): io_uring ops the kernel still holds (not a result that
    /// waits to be taken, nor a stopped multishot whose last completions wait in a stream for
    /// a later read), or epoll waiters.
    pub ops_in_flight: u64,
    /// Zero-copy sends whose buffer the kernel has released (their notification completions).
    pub zero_copy_notifications: u64,
    /// Receive completions that filled more than one pool buffer (io_uring's receive bundles,
    /// see [`Builder::recv_bundles`](crate::Builder::recv_bundles)).
    pub recv_bundles: u64,
    /// Times the completion queue overflowed (the kernel kept the completions; none was lost).
    pub cq_overflows: u64,
    /// Completions the kernel dropped because it could not allocate memory to keep them
    /// (io_uring's overflow counter; the ops they belonged to never finish). Should stay 0.
    pub cq_dropped: u64,
    /// Ops that ended because their deadline passed first (`ETIMEDOUT`, see
    /// [`Op::deadline`](crate::Op::deadline) and [`DeadlineExt`](crate::DeadlineExt)).
    pub ops_timed_out: u64,
    /// `ASYNC_CANCEL`s that found nothing to cancel (the op had completed, or was not
    /// submitted yet); shutdown sends another while the op is still live.
    pub cancels_missed: u64,
    /// Times a multishot receive found the buffer pool empty (`ENOBUFS`; re-armed once
    /// buffers came back).
    pub buffer_exhaustions: u64,
    /// Pool buffers lent out now (gauge): handed to users as `PooledBuf`s. Buffers the kernel
    /// filled that still wait in a receiver's queue (io_uring) are not counted: the pool's
    /// [`free`](crate::BufPool::free) tells those apart from free ones.
    pub pooled_buffers_out: u64,
}

impl RuntimeStats {
    /// Adds `other`'s counters (and gauges) to these: the total of several runtimes (see
    /// [`Shards::stats`](crate::Shards::stats)).
    pub fn add(&mut self, other: &RuntimeStats) {
        self.tasks_alive += other.tasks_alive;
        self.tasks_spawned += other.tasks_spawned;
        self.tasks_completed += other.tasks_completed;
        self.tasks_cancelled += other.tasks_cancelled;
        self.tasks_panicked += other.tasks_panicked;
        self.polls += other.polls;
        self.callbacks_run += other.callbacks_run;
        self.timers_pending += other.timers_pending;
        self.loop_iterations += other.loop_iterations;
        self.parks += other.parks;
        self.remote_wakes += other.remote_wakes;
        self.unparks += other.unparks;
        self.msg_ring_wakes += other.msg_ring_wakes;
        self.kernel_enters += other.kernel_enters;
        self.driver_syscalls += other.driver_syscalls;
        self.ops_submitted += other.ops_submitted;
        self.ops_completed += other.ops_completed;
        self.ops_cancelled += other.ops_cancelled;
        self.ops_in_flight += other.ops_in_flight;
        self.zero_copy_notifications += other.zero_copy_notifications;
        self.recv_bundles += other.recv_bundles;
        self.cq_overflows += other.cq_overflows;
        self.cq_dropped += other.cq_dropped;
        self.ops_timed_out += other.ops_timed_out;
        self.cancels_missed += other.cancels_missed;
        self.buffer_exhaustions += other.buffer_exhaustions;
        self.pooled_buffers_out += other.pooled_buffers_out;
    }
}
