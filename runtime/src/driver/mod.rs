//! The driver: where the loop waits, and where I/O happens.
//!
//! The executor never blocks by itself; once per iteration it asks the driver to park for at
//! most a timeout (zero when work is ready, the next timer's deadline otherwise). The driver is
//! one of two backends, chosen when the runtime starts:
//!
//! * **io_uring** ([`Backend::IoUring`]): completion-based. Ops are submitted as SQEs and one
//!   `io_uring_enter` per iteration submits and reaps together.
//! * **epoll** ([`Backend::Epoll`]): readiness-based. Ops try their syscall and wait for
//!   readiness on `EAGAIN`; one `epoll_wait` per iteration.
//!
//! [`Backend::Auto`] (the default) creates a ring and probes the opcodes it needs; where that is
//! refused (seccomp, `kernel.io_uring_disabled`, memlock limits, an old kernel) it falls back to
//! epoll with one warning line on stderr. `RINGLOOP_BACKEND=uring|epoll` overrides `Auto`; the
//! builder's explicit choice overrides the variable.
//!
//! Ops are described once ([`OpKind`]) and run on either backend through [`Op`].

mod bufpool;
mod epoll;
mod fd;
mod handle;
mod multishot;
mod op;
mod opmem;
pub mod opstats;
mod slots;
mod uring;
mod wake;

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::str::FromStr;
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

pub use bufpool::{BufPool, BufWait, PooledBuf};
pub use fd::{FdTarget, SharedFd};
pub(crate) use handle::DriverHandle;
use multishot::ListShared;
pub use multishot::{CompletionList, Multishot, MultishotKind};
pub(crate) use op::Orphan;
pub use op::{is_cancelled, start_detached, Detached, DetachedOp, Interest, Op, OpKind};
pub(crate) use wake::{WakeFd, WakeTarget};

use epoll::Epoll;
use slots::{FinishedOrphans, MultishotNext};
use uring::Uring;

/// Which I/O backend a runtime uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Backend {
    /// io_uring if the kernel allows it, else epoll (with a warning). `RINGLOOP_BACKEND`
    /// overrides this default.
    #[default]
    Auto,
    /// io_uring; building the runtime fails if it is unavailable.
    IoUring,
    /// epoll.
    Epoll,
}

impl Backend {
    /// `"uring"`, `"epoll"` or `"auto"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::IoUring => "uring",
            Backend::Epoll => "epoll",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Backend {
    type Err = io::Error;

    /// Parses `uring`/`io_uring`/`iouring`, `epoll` or `auto` (any case).
    fn from_str(s: &str) -> io::Result<Backend> {
        match s.trim().to_ascii_lowercase().as_str() {
            "uring" | "io_uring" | "iouring" | "io-uring" => Ok(Backend::IoUring),
            "epoll" => Ok(Backend::Epoll),
            "auto" | "" => Ok(Backend::Auto),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown backend {other:?}: expected uring, epoll or auto"),
            )),
        }
    }
}

/// Identifies an io_uring op in the op table (its `user_data`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OpKey(pub(crate) u64);

/// Counters the backends keep for [`RuntimeStats`](crate::RuntimeStats).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DriverStats {
    /// `io_uring_enter` or `epoll_wait` calls.
    pub(crate) kernel_enters: u64,
    /// Every syscall the driver and its ops made: the above, plus `epoll_ctl` and the epoll
    /// backend's non-blocking attempts (`recv`, `send`, `accept4`, ...).
    pub(crate) syscalls: u64,
    pub(crate) ops_submitted: u64,
    pub(crate) ops_completed: u64,
    pub(crate) ops_cancelled: u64,
    pub(crate) cq_overflows: u64,
    /// Completions the kernel dropped (out of memory for its overflow backlog).
    pub(crate) cq_dropped: u64,
    /// `ASYNC_CANCEL`s that found nothing to cancel.
    pub(crate) cancels_missed: u64,
    /// Ops that ended with their deadline's `ETIMEDOUT`.
    pub(crate) ops_timed_out: u64,
    /// Zero-copy send notifications reaped.
    pub(crate) zero_copy_notifs: u64,
    /// Receive completions that filled more than one pool buffer (io_uring bundles).
    pub(crate) recv_bundles: u64,
    /// Wakes this ring delivered to other io_uring loops as `MSG_RING`s (completed without
    /// error).
    pub(crate) msg_ring_wakes: u64,
    pub(crate) enter_errors: u64,
}

/// The backend in use.
#[allow(
    clippy::large_enum_variant,
    reason = "one per runtime; boxing would add an indirection to every driver call"
)]
pub(crate) enum Driver {
    Uring(Uring),
    Epoll(Epoll),
}

/// SQ entries of a runtime's ring by default (the CQ has eight times as many, and at least
/// 32 768).
pub(crate) const RING_ENTRIES: u32 = 1024;

/// Sizes of the receive-buffer pool (see [`BufPool`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Buffers in the pool: a power of two, at most 32768.
    pub buffers: u16,
    /// Bytes per buffer.
    pub buf_size: usize,
}

impl Default for PoolConfig {
    /// 512 buffers of 2 KiB: 1 MiB per runtime, however many connections it serves.
    ///
    /// The kernel takes ring buffers in order, so the whole pool becomes resident once traffic
    /// has cycled through it: its size is a memory budget. Measured with the echo server at
    /// 10 000 connections, 64 B and 1 KiB ping-pong: about 10 MiB RSS, and at most a few
    /// hundred `ENOBUFS` per 5-second run (receivers then queue for buffers, first come first
    /// served); 1024 x 4 KiB put the server at 12.9 MiB, and 256 x 4 KiB ran dry 148 000 times
    /// at 1 KiB. Larger messages span several buffers, which is fine.
    fn default() -> Self {
        PoolConfig {
            buffers: 512,
            buf_size: 2048,
        }
    }
}

impl Driver {
    /// Creates the backend `requested` asks for (see the module docs for `Auto`).
    pub(crate) fn new(
        requested: Backend,
        explicit: bool,
        wake: &WakeFd,
        pool: PoolConfig,
        ring_entries: u32,
        cq_entries: Option<u32>,
    ) -> io::Result<Driver> {
        let uring_pool = || BufPool::new(pool.buffers, pool.buf_size, true);
        let epoll_pool = || BufPool::new(pool.buffers, pool.buf_size, false);
        let mut choice = requested;
        if !explicit || requested == Backend::Auto {
            if let Ok(v) = std::env::var("RINGLOOP_BACKEND") {
                choice = v.parse()?;
            }
        }
        match choice {
            Backend::Epoll => Ok(Driver::Epoll(Epoll::new(wake, epoll_pool())?)),
            Backend::IoUring => Ok(Driver::Uring(Uring::new(
                ring_entries,
                cq_entries,
                wake,
                uring_pool(),
            )?)),
            Backend::Auto => match Uring::new(ring_entries, cq_entries, wake, uring_pool()) {
                Ok(u) => Ok(Driver::Uring(u)),
                Err(e) => {
                    eprintln!("ringloop: io_uring unavailable ({e}); using the epoll backend");
                    Ok(Driver::Epoll(Epoll::new(wake, epoll_pool())?))
                }
            },
        }
    }

    pub(crate) fn backend(&self) -> Backend {
        match self {
            Driver::Uring(_) => Backend::IoUring,
            Driver::Epoll(_) => Backend::Epoll,
        }
    }

    /// The backend and how it was set up, e.g. `io_uring (single_issuer+defer_taskrun)`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Driver::Uring(u) => format!("io_uring ({}, cq {})", u.setup, u.cq_entries()),
            Driver::Epoll(_) => "epoll".to_owned(),
        }
    }

    pub(crate) fn stats(&self) -> DriverStats {
        match self {
            Driver::Uring(u) => u.table.stats,
            Driver::Epoll(e) => e.stats,
        }
    }

    /// Ops in flight: io_uring slots the kernel still holds (a result waiting to be taken, or
    /// an ended multishot whose last completions wait to be read, is not in flight); epoll
    /// waiters.
    pub(crate) fn in_flight(&self) -> usize {
        match self {
            Driver::Uring(u) => u.in_flight(),
            Driver::Epoll(e) => e.in_flight(),
        }
    }

    /// Whether an op with [`OpKind::try_first`](crate::OpKind::try_first) should be tried as
    /// a plain system call first: io_uring only, when the ring is nearly idle (see
    /// `Uring::nearly_idle`).
    pub(crate) fn may_try_first(&mut self) -> bool {
        match self {
            Driver::Uring(u) => u.nearly_idle(),
            Driver::Epoll(_) => false,
        }
    }

    /// Whether parking with a zero timeout would do anything (submissions to hand over, or
    /// completions that may be waiting). When false and work is ready, the loop skips the
    /// kernel entry.
    pub(crate) fn wants_poll(&mut self) -> bool {
        match self {
            Driver::Uring(u) => u.has_pending_submissions() || u.has_slots(),
            Driver::Epoll(e) => e.in_flight() > 0,
        }
    }

    /// Waits for I/O (see the backends). Wakers of finished ops are collected, not woken:
    /// the caller takes them with [`take_woken`](Self::take_woken) after the borrow ends.
    pub(crate) fn park(&mut self, timeout: Option<Duration>, wake: &WakeFd) -> io::Result<()> {
        match self {
            Driver::Uring(u) => u.park(timeout),
            Driver::Epoll(e) => e.park(timeout, wake),
        }
    }

    /// Wakes the parked io_uring loop `target` with a `MSG_RING` queued on this ring (see
    /// `Uring::send_wake`); false if this driver cannot (epoll,
    /// no `MSG_RING`, the target has no ring), and the caller writes the target's eventfd.
    pub(crate) fn send_wake(&mut self, target: &Arc<WakeTarget>) -> bool {
        match self {
            Driver::Uring(u) => u.send_wake(target),
            Driver::Epoll(_) => false,
        }
    }

    /// Submits the `MSG_RING` wakes still queued (the loop is left, or its thread will block).
    pub(crate) fn flush_wakes(&mut self) {
        if let Driver::Uring(u) = self {
            u.flush_wakes();
        }
    }

    /// A duplicate of the ring's descriptor for other rings' `MSG_RING` wakes (io_uring with
    /// `MSG_RING` only).
    pub(crate) fn wake_ring_fd(&self) -> Option<OwnedFd> {
        match self {
            Driver::Uring(u) => u.wake_ring_fd(),
            Driver::Epoll(_) => None,
        }
    }

    /// Turns `MSG_RING` wakes off (`Builder::msg_ring_wakes(false)`).
    pub(crate) fn disable_msg_ring(&mut self) {
        if let Driver::Uring(u) = self {
            u.disable_msg_ring();
        }
    }

    /// Moves the collected wakers into `out`, to be woken once the driver is not borrowed.
    pub(crate) fn take_woken(&mut self, out: &mut Vec<Waker>) {
        match self {
            Driver::Uring(u) => u.take_woken(out),
            Driver::Epoll(e) => e.take_woken(out),
        }
    }

    /// Turns on the registered file table (io_uring); false if unavailable.
    pub(crate) fn enable_file_table(&mut self, slots: u32) -> bool {
        match self {
            Driver::Uring(u) => u.enable_file_table(slots).is_ok(),
            Driver::Epoll(_) => false,
        }
    }

    pub(crate) fn register_file(&mut self, fd: RawFd) -> Option<u32> {
        match self {
            Driver::Uring(u) => u.register_file(fd),
            Driver::Epoll(_) => None,
        }
    }

    pub(crate) fn unregister_file(&mut self, slot: u32) {
        if let Driver::Uring(u) = self {
            u.unregister_file(slot)
        }
    }

    /// Whether zero-copy sends are available (io_uring on a kernel with `SEND_ZC`).
    pub(crate) fn supports_send_zc(&self) -> bool {
        matches!(self, Driver::Uring(u) if u.send_zc)
    }

    /// Whether receive bundles are available (io_uring on a kernel with
    /// `IORING_FEAT_RECVSEND_BUNDLE`, 6.10+).
    pub(crate) fn supports_recv_bundles(&self) -> bool {
        matches!(self, Driver::Uring(u) if u.recv_bundle)
    }

    /// The runtime's receive-buffer pool.
    pub(crate) fn pool(&self) -> &Rc<BufPool> {
        match self {
            Driver::Uring(u) => &u.table.pool,
            Driver::Epoll(e) => &e.pool,
        }
    }

    /// # Safety
    /// As [`uring_submit`](Self::uring_submit), for every completion until the last.
    pub(crate) unsafe fn multishot_submit(
        &mut self,
        sqe: io_uring::squeue::Entry,
        kind: MultishotKind,
        cap: usize,
        keep: SharedFd,
    ) -> io::Result<OpKey> {
        match self {
            // SAFETY: forwarded from the caller.
            Driver::Uring(u) => unsafe { u.submit_multishot(sqe, kind, cap, keep) },
            Driver::Epoll(_) => Err(wrong_backend()),
        }
    }

    #[inline]
    pub(crate) fn multishot_next(
        &mut self,
        key: OpKey,
        waker: &Waker,
        draining: bool,
    ) -> MultishotNext {
        match self {
            Driver::Uring(u) => u.multishot_next(key, waker, draining),
            Driver::Epoll(_) => Ok(None),
        }
    }

    pub(crate) fn multishot_post_to(&mut self, key: OpKey, post: Option<(Rc<ListShared>, u32)>) {
        if let Driver::Uring(u) = self {
            u.table.multishot_post_to(key, post)
        }
    }

    pub(crate) fn multishot_queued(&mut self, key: OpKey) -> usize {
        match self {
            Driver::Uring(u) => u.multishot_queued(key),
            Driver::Epoll(_) => 0,
        }
    }

    pub(crate) fn multishot_orphan(&mut self, key: OpKey) {
        if let Driver::Uring(u) = self {
            u.multishot_orphan(key)
        }
    }

    pub(crate) fn take_finished_orphans(&mut self, out: &mut FinishedOrphans) {
        if let Driver::Uring(u) = self {
            u.take_finished_orphans(out)
        }
    }

    pub(crate) unsafe fn uring_submit(
        &mut self,
        sqe: io_uring::squeue::Entry,
        waker: &Waker,
    ) -> io::Result<OpKey> {
        match self {
            // SAFETY: forwarded from the caller.
            Driver::Uring(u) => unsafe { u.submit(sqe, waker) },
            Driver::Epoll(_) => Err(wrong_backend()),
        }
    }

    /// As [`uring_submit`](Self::uring_submit), with a deadline: the op's SQE is linked to an
    /// `IORING_OP_LINK_TIMEOUT` at `deadline` (`Uring::submit_linked`).
    ///
    /// # Safety
    /// As [`uring_submit`](Self::uring_submit).
    pub(crate) unsafe fn uring_submit_linked(
        &mut self,
        sqe: io_uring::squeue::Entry,
        deadline: std::time::Instant,
        waker: &Waker,
    ) -> io::Result<OpKey> {
        match self {
            // SAFETY: forwarded from the caller.
            Driver::Uring(u) => unsafe { u.submit_linked(sqe, deadline, waker) },
            Driver::Epoll(_) => Err(wrong_backend()),
        }
    }

    /// An op nobody awaits, its data in the op table from the start (`Uring::submit_detached`);
    /// on an error the data comes back.
    ///
    /// # Safety
    /// As [`uring_submit`](Self::uring_submit); `data` owns what the entry points to.
    pub(crate) unsafe fn uring_submit_detached(
        &mut self,
        sqe: io_uring::squeue::Entry,
        data: Box<dyn Orphan>,
    ) -> Result<OpKey, (io::Error, Box<dyn Orphan>)> {
        match self {
            // SAFETY: forwarded from the caller.
            Driver::Uring(u) => unsafe { u.submit_detached(sqe, data) },
            Driver::Epoll(_) => Err((wrong_backend(), data)),
        }
    }

    pub(crate) fn uring_take(&mut self, key: OpKey, waker: &Waker) -> Option<(i32, u32)> {
        match self {
            Driver::Uring(u) => u.take(key, waker),
            Driver::Epoll(_) => None,
        }
    }

    pub(crate) fn uring_cancel(&mut self, key: OpKey) {
        if let Driver::Uring(u) = self {
            u.cancel(key)
        }
    }

    pub(crate) fn uring_orphan(
        &mut self,
        key: OpKey,
        data: Box<dyn Orphan>,
    ) -> Result<(), Box<dyn Orphan>> {
        match self {
            Driver::Uring(u) => {
                u.orphan(key, data);
                Ok(())
            }
            Driver::Epoll(_) => Err(data),
        }
    }

    pub(crate) fn epoll_wait_for(
        &mut self,
        fd: RawFd,
        interest: Interest,
        previous: Option<u64>,
        waker: &Waker,
    ) -> io::Result<u64> {
        match self {
            Driver::Epoll(e) => e.wait_for(fd, interest, previous, waker),
            Driver::Uring(_) => Err(wrong_backend()),
        }
    }

    pub(crate) fn epoll_unwait(&mut self, fd: RawFd, token: u64) {
        if let Driver::Epoll(e) = self {
            e.unwait(fd, token)
        }
    }

    /// Counts an op that ended because its deadline passed.
    pub(crate) fn count_timed_out(&mut self) {
        match self {
            Driver::Epoll(e) => e.stats.ops_timed_out += 1,
            Driver::Uring(u) => u.table.stats.ops_timed_out += 1,
        }
    }

    pub(crate) fn count_attempt(&mut self) {
        match self {
            Driver::Epoll(e) => e.count_attempt(),
            Driver::Uring(u) => u.table.stats.syscalls += 1,
        }
    }

    pub(crate) fn forget_fd(&mut self, fd: RawFd) {
        if let Driver::Epoll(e) = self {
            e.forget_fd(fd)
        }
    }

    /// Runtime shutdown: cancel and reap everything the kernel holds, for at most `bound`;
    /// what is still in flight then is leaked, never freed.
    pub(crate) fn shutdown(&mut self, bound: Duration) {
        if let Driver::Uring(u) = self {
            u.shutdown(bound);
        }
    }
}

fn wrong_backend() -> io::Error {
    io::Error::other("op used on the wrong backend")
}

/// Errno-named helpers: read `is_interrupted(e)` rather than `e == EINTR`.
pub(crate) mod errno {
    use std::io;

    /// The call was interrupted by a signal and should be retried.
    pub(crate) fn is_interrupted(e: &io::Error) -> bool {
        e.kind() == io::ErrorKind::Interrupted
    }

    /// The kernel could not take the request this instant (a signal, a full CQ, a moment
    /// short of memory): retrying after reaping can succeed.
    pub(crate) fn is_transient(e: &io::Error) -> bool {
        matches!(
            e.raw_os_error(),
            Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
        )
    }

    /// A non-blocking call found nothing to do right now.
    pub(crate) fn is_would_block(e: &io::Error) -> bool {
        e.kind() == io::ErrorKind::WouldBlock
    }
}
