//! `DriverHandle`: how a resource reaches the driver it was created on.
//!
//! A resource (an op in flight, a multishot, a registered descriptor) captures a handle to its
//! own driver when it is created, and every later poll and drop goes through that handle,
//! whichever runtime is current on the thread then (tokio's `Registration { handle }`,
//! monoio's `Op { driver }`). The thread's current runtime is looked up only to create a
//! resource. So a future first polled under one runtime and later polled or dropped under
//! another still talks to the ring that holds its SQE, and a key from one op table is never
//! looked up in another.
//!
//! # Borrowing
//!
//! The driver sits in a `RefCell`: one thread, short borrows. A resource must never find it
//! borrowed on a *drop* path and panic there (unwinding would free memory the kernel still
//! writes), so [`DriverHandle::try_with`] answers `None` when the driver is busy (a waker or a
//! destructor run from inside the driver), and drop paths then queue their work in
//! [`Deferred`], which the next borrow applies first. Poll paths that find the driver busy ask
//! to be polled again. The driver itself never runs user code while borrowed: reaping collects
//! wakers and orphans, and they are woken and finished after the borrow ends.
//!
//! # Identity
//!
//! Each driver gets a number from a process-wide counter. Unlike an address, a number is never
//! reused by a later runtime, so "is this my driver?" cannot be answered wrongly.

use std::cell::{Cell, RefCell, RefMut};
use std::io;
use std::os::fd::RawFd;
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::op::Orphan;
use super::opmem::OpMemory;
use super::opstats::{Finish, OpKindStats, OpStatsTable};
use super::slots::FinishedOrphans;
use super::{Backend, Driver, OpKey};
use crate::task::AwaitName;

/// Work a drop path could not do because the driver was borrowed; applied at the next borrow.
pub(crate) enum Deferred {
    /// An op future went away while its SQE is in flight: keep its data until the completion.
    Orphan(OpKey, Box<dyn Orphan>),
    /// A multishot's owner went away.
    MultishotOrphan(OpKey),
    /// Stop an op (a multishot whose owner asked while the driver was borrowed).
    Cancel(OpKey),
    /// An epoll waiter went away.
    Unwait(RawFd, u64),
    /// A registered descriptor's last holder went away.
    UnregisterFile(u32),
}

struct Inner {
    id: u64,
    backend: Backend,
    driver: RefCell<Driver>,
    deferred: RefCell<Vec<Deferred>>,
    has_deferred: Cell<bool>,
    /// The runtime was dropped: nothing new is submitted, and an orphan whose op is still in
    /// the kernel is leaked rather than freed.
    closed: Cell<bool>,
    /// Panics of orphans' `complete`, caught where they were finished (maybe an op's drop).
    panics: RefCell<Vec<Box<dyn std::any::Any + Send>>>,
    /// The boxes of finished io_uring ops, reused by the next ones (apart from the driver's
    /// cell: an op takes and returns its box whether or not the driver is borrowed).
    memory: RefCell<OpMemory>,
    /// The vector `finish_orphans` takes a batch of finished orphans into, kept.
    orphans: RefCell<FinishedOrphans>,
    /// Counts and latencies per op kind (apart from the driver's cell, like `memory`).
    ops: RefCell<OpStatsTable>,
    /// The loop's clock in nanoseconds since `awaiting::epoch`, read at most once per loop
    /// iteration (0: not read yet in this one).
    now_ns: Cell<u64>,
}

/// A handle to one runtime's driver; cheap to clone (`Rc`), `!Send`.
#[derive(Clone)]
pub(crate) struct DriverHandle {
    inner: Rc<Inner>,
}

/// The next driver identity; 0 is never handed out.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The error an op gets when the runtime it belongs to is gone.
pub(crate) fn shut_down() -> io::Error {
    io::Error::other("the ringloop runtime this resource belongs to has been dropped")
}

impl DriverHandle {
    pub(crate) fn new(driver: Driver) -> DriverHandle {
        DriverHandle {
            inner: Rc::new(Inner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                backend: driver.backend(),
                driver: RefCell::new(driver),
                deferred: RefCell::new(Vec::new()),
                has_deferred: Cell::new(false),
                closed: Cell::new(false),
                panics: RefCell::new(Vec::new()),
                memory: RefCell::new(OpMemory::default()),
                orphans: RefCell::new(Vec::new()),
                ops: RefCell::new(OpStatsTable::default()),
                now_ns: Cell::new(0),
            }),
        }
    }

    /// The loop's clock (nanoseconds since `awaiting::epoch`), read at most once per loop
    /// iteration: every op that starts or finishes in one iteration, and every wait that
    /// starts in it, gets the same reading.
    #[inline]
    pub(crate) fn now_ns(&self) -> u64 {
        match self.inner.now_ns.get() {
            0 => {
                let now =
                    crate::task::awaiting::nanos_since_epoch(std::time::Instant::now()).max(1);
                self.inner.now_ns.set(now);
                now
            }
            now => now,
        }
    }

    /// A new loop iteration: the next [`now_ns`](Self::now_ns) reads the clock again.
    #[inline]
    pub(crate) fn reset_clock(&self) {
        self.inner.now_ns.set(0);
    }

    /// An op starts waiting: when (`now_ns`), to give back to
    /// [`op_finished`](Self::op_finished).
    #[inline]
    pub(crate) fn op_submitted(&self) -> u64 {
        self.now_ns()
    }

    /// An op of kind `name` finished with `result`; `started` is what `op_submitted` returned,
    /// or 0 if it never waited.
    #[inline]
    pub(crate) fn op_finished(
        &self,
        name: &'static AwaitName,
        started: u64,
        result: &io::Result<u32>,
    ) {
        let how = match result {
            Ok(_) => Finish::Ok,
            Err(e) if super::is_cancelled(e) || e.raw_os_error() == Some(libc::ECANCELED) => {
                Finish::Cancelled
            }
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::event!(
                    target: "ringloop::op",
                    tracing::Level::DEBUG,
                    op = name.as_str(),
                    error = %_e,
                    "op failed"
                );
                Finish::Error
            }
        };
        let waited = (started != 0).then(|| self.now_ns().saturating_sub(started));
        if let Ok(mut ops) = self.inner.ops.try_borrow_mut() {
            ops.finished(name, waited, how);
        }
    }

    /// An op of kind `name` was dropped while it waited.
    pub(crate) fn op_dropped(&self, name: &'static AwaitName) {
        if let Ok(mut ops) = self.inner.ops.try_borrow_mut() {
            ops.dropped(name);
        }
    }

    /// The counts and latencies per op kind so far.
    pub(crate) fn op_stats(&self) -> Vec<OpKindStats> {
        self.inner.ops.borrow().snapshot()
    }

    /// The driver of the runtime running on this thread, if any.
    pub(crate) fn current() -> Option<DriverHandle> {
        crate::context::current_driver()
    }

    /// Boxes an op's data (at the address it keeps until its completion), reusing the memory
    /// of a finished op of the same layout from the thread's driver; a plain box outside a
    /// runtime. Any driver may take the box back: its memory is the global allocator's.
    #[inline]
    pub(crate) fn boxed_here<T>(value: T) -> Box<T> {
        let mut value = Some(value);
        let boxed = crate::context::try_with_driver(|driver| {
            let value = value.take().expect("taken once");
            driver.inner.memory.borrow_mut().boxed(value)
        });
        match boxed {
            Some(b) => b,
            None => Box::new(value.take().expect("not taken outside a runtime")),
        }
    }

    /// Moves a finished op's data out of its box and keeps the box for the next op.
    #[inline]
    pub(crate) fn unboxed<T>(&self, b: Box<T>) -> T {
        self.inner.memory.borrow_mut().unboxed(b)
    }

    /// Boxes an op's data with this driver's free lists (see [`boxed_here`](Self::boxed_here)).
    #[inline]
    pub(crate) fn boxed<T>(&self, value: T) -> Box<T> {
        self.inner.memory.borrow_mut().boxed(value)
    }

    /// This driver's identity (process-wide, never reused).
    pub(crate) fn id(&self) -> u64 {
        self.inner.id
    }

    pub(crate) fn backend(&self) -> Backend {
        self.inner.backend
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.inner.closed.get()
    }

    /// Marks the runtime gone (after its shutdown drained the ring).
    pub(crate) fn close(&self) {
        self.inner.closed.set(true);
    }

    /// Whether the driver is borrowed right now (a poll running inside it).
    pub(crate) fn is_busy(&self) -> bool {
        self.inner.driver.try_borrow_mut().is_err()
    }

    /// Borrows the driver for the loop itself (park, shutdown); applies deferred work first.
    ///
    /// # Panics
    /// If the driver is already borrowed (the loop never re-enters itself).
    pub(crate) fn borrow_mut(&self) -> RefMut<'_, Driver> {
        let mut d = self.inner.driver.borrow_mut();
        self.apply_deferred(&mut d);
        d
    }

    /// Runs `f` with the driver, after applying deferred work; `None` if the driver is
    /// borrowed (then `f` does not run).
    #[inline]
    pub(crate) fn try_with<R>(&self, f: impl FnOnce(&mut Driver) -> R) -> Option<R> {
        let mut d = self.inner.driver.try_borrow_mut().ok()?;
        self.apply_deferred(&mut d);
        Some(f(&mut d))
    }

    /// Runs `f` with the driver now, or queues `later` if the driver is borrowed. For drop
    /// paths: never panics on a busy driver.
    pub(crate) fn now_or_later(
        &self,
        f: impl FnOnce(&mut Driver),
        later: impl FnOnce() -> Deferred,
    ) {
        if self.try_with(f).is_none() {
            self.inner.deferred.borrow_mut().push(later());
            self.inner.has_deferred.set(true);
        }
    }

    /// Queues `work` for the next borrow, or applies it now.
    pub(crate) fn defer(&self, work: Deferred) {
        match self.inner.driver.try_borrow_mut() {
            Ok(mut d) => {
                self.apply_deferred(&mut d);
                apply(&mut d, work);
            }
            Err(_) => {
                self.inner.deferred.borrow_mut().push(work);
                self.inner.has_deferred.set(true);
            }
        }
    }

    #[inline]
    fn apply_deferred(&self, d: &mut Driver) {
        if !self.inner.has_deferred.get() {
            return;
        }
        self.inner.has_deferred.set(false);
        let work = std::mem::take(&mut *self.inner.deferred.borrow_mut());
        for w in work {
            apply(d, w);
        }
    }

    /// Finishes orphans whose completions arrived, outside the driver's borrow (finishing one
    /// runs its `complete`, whose output may call back in). A panic is caught and kept for the
    /// loop to report ([`take_panics`](Self::take_panics)); after the runtime is gone it is
    /// printed.
    pub(crate) fn finish_orphans(&self) {
        // The batch's vector is kept for the next call (a call from inside an orphan's
        // `complete` finds it taken and uses a new one).
        let mut orphans = std::mem::take(&mut *self.inner.orphans.borrow_mut());
        loop {
            if self
                .try_with(|d| d.take_finished_orphans(&mut orphans))
                .is_none()
                || orphans.is_empty()
            {
                break;
            }
            for (orphan, result, flags) in orphans.drain(..) {
                let memory = &self.inner.memory;
                if let Err(payload) =
                    panic::catch_unwind(AssertUnwindSafe(|| orphan.finish(result, flags, memory)))
                {
                    if self.is_closed() {
                        eprintln!("ringloop: a detached or orphaned op's completion panicked");
                    } else {
                        self.inner.panics.borrow_mut().push(payload);
                    }
                }
            }
        }
        *self.inner.orphans.borrow_mut() = orphans;
    }

    /// Panics caught while finishing orphans, for the loop's exception handler.
    pub(crate) fn take_panics(&self) -> Vec<Box<dyn std::any::Any + Send>> {
        std::mem::take(&mut *self.inner.panics.borrow_mut())
    }

    /// Whether two handles name the same driver.
    pub(crate) fn same(&self, other: &DriverHandle) -> bool {
        Rc::ptr_eq(&self.inner, &other.inner)
    }
}

fn apply(d: &mut Driver, work: Deferred) {
    match work {
        Deferred::Orphan(key, data) => {
            if let Err(data) = d.uring_orphan(key, data) {
                // Not an io_uring driver: cannot happen for an op with a key. Leak rather than
                // free memory a kernel might write.
                std::mem::forget(data);
            }
        }
        Deferred::MultishotOrphan(key) => d.multishot_orphan(key),
        Deferred::Cancel(key) => d.uring_cancel(key),
        Deferred::Unwait(fd, token) => d.epoll_unwait(fd, token),
        Deferred::UnregisterFile(slot) => d.unregister_file(slot),
    }
}

impl std::fmt::Debug for DriverHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriverHandle")
            .field("id", &self.inner.id)
            .field("backend", &self.inner.backend)
            .finish()
    }
}
