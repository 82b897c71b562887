//! The epoll backend: the baseline every benchmark compares against, and the fallback where
//! io_uring is unavailable.
//!
//! Ops try their syscall first; only on `EAGAIN` do they wait for readiness. Each descriptor is
//! registered once, edge-triggered, for both directions; an event wakes the waiters of the
//! direction it reports, and they try again. The `EAGAIN` that preceded each wait guarantees the
//! next readiness change produces a new edge, so no wake-up is missed. Cancelling a waiter
//! completes it at once (the op future resolves without waiting for an event).

use std::cell::Cell;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::task::Waker;
use std::time::Duration;

use std::rc::Rc;

use super::bufpool::BufPool;
use super::errno::is_interrupted;
use super::op::Interest;
use super::{DriverStats, WakeFd};

/// Marks the wake eventfd in epoll events (descriptors are never negative).
const WAKE_TOKEN: u64 = u64::MAX;

thread_local! {
    /// How many descriptors were closed on this thread without a driver being told (a socket
    /// dropped outside a running runtime, e.g. between two `block_on`s). See
    /// [`Epoll::drop_stale_registrations`].
    static UNTOLD_CLOSES: Cell<u64> = const { Cell::new(0) };
}

/// Records that a descriptor was closed (or handed out) while no runtime was running on this
/// thread, so no driver could forget it: every epoll driver on the thread re-checks its
/// registrations before its next wait.
pub(crate) fn note_untold_close() {
    UNTOLD_CLOSES.with(|c| c.set(c.get() + 1));
}

thread_local! {
    /// Epoll drivers alive on this thread: a descriptor dropped with fewer of them told must
    /// note an untold close.
    static LIVE_DRIVERS: Cell<usize> = const { Cell::new(0) };
}

/// How many epoll drivers are alive on this thread.
pub(crate) fn live_drivers() -> usize {
    LIVE_DRIVERS.with(Cell::get)
}

struct Waiter {
    token: u64,
    interest: Interest,
    waker: Waker,
}

#[derive(Default)]
struct FdState {
    waiters: Vec<Waiter>,
}

pub(crate) struct Epoll {
    epoll: OwnedFd,
    fds: HashMap<RawFd, FdState>,
    /// Waiters over all descriptors, kept as a count: the loop asks on every busy iteration,
    /// and summing over 10 000 descriptors each time would make the loop O(connections).
    waiting: usize,
    next_token: u64,
    events: Vec<libc::epoll_event>,
    /// Receive buffers handed out from a free list (the emulation of the io_uring ring).
    pub(crate) pool: Rc<BufPool>,
    /// `UNTOLD_CLOSES` when this driver last dropped its stale registrations.
    untold_closes_seen: u64,
    /// Wakers of ready waiters, woken by the loop once the driver is not borrowed.
    woken: Vec<Waker>,
    pub(crate) stats: DriverStats,
}

impl Drop for Epoll {
    fn drop(&mut self) {
        LIVE_DRIVERS.with(|c| c.set(c.get() - 1));
    }
}

impl Epoll {
    pub(crate) fn new(wake: &WakeFd, pool: Rc<BufPool>) -> io::Result<Epoll> {
        // SAFETY: no pointers; a negative return is an error, else a descriptor we now own.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is fresh and ours.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: WAKE_TOKEN,
        };
        // SAFETY: both descriptors are open; `ev` is a live local the kernel only reads.
        if unsafe { libc::epoll_ctl(fd, libc::EPOLL_CTL_ADD, wake.raw(), &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        LIVE_DRIVERS.with(|c| c.set(c.get() + 1));
        Ok(Epoll {
            woken: Vec::new(),
            epoll,
            fds: HashMap::new(),
            waiting: 0,
            next_token: 0,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 1024],
            pool,
            untold_closes_seen: UNTOLD_CLOSES.with(Cell::get),
            stats: DriverStats::default(),
        })
    }

    /// Registers interest after an `EAGAIN`; returns the waiter's token. `previous` is the
    /// op's earlier token, reused (with its waker updated) if it is still registered.
    pub(crate) fn wait_for(
        &mut self,
        fd: RawFd,
        interest: Interest,
        previous: Option<u64>,
        waker: &Waker,
    ) -> io::Result<u64> {
        self.drop_stale_registrations();
        if !self.fds.contains_key(&fd) {
            let mut ev = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
                u64: fd as u64,
            };
            // SAFETY: `ev` is a live local the kernel only reads; a bad `fd` is an error.
            self.stats.syscalls += 1;
            if unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) }
                < 0
            {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(e);
                }
            }
            self.fds.insert(fd, FdState::default());
        }
        let state = self.fds.get_mut(&fd).expect("just registered");
        if let Some(token) = previous {
            if let Some(w) = state.waiters.iter_mut().find(|w| w.token == token) {
                if !w.waker.will_wake(waker) {
                    w.waker.clone_from(waker);
                }
                w.interest = interest;
                return Ok(token);
            }
        }
        let token = self.next_token;
        self.next_token += 1;
        state.waiters.push(Waiter {
            token,
            interest,
            waker: waker.clone(),
        });
        self.waiting += 1;
        Ok(token)
    }

    /// Why: `fds` is keyed by descriptor *number*. A socket closed without `forget_fd` (dropped
    /// while no runtime ran on this thread) leaves its entry behind, the kernel drops the epoll
    /// registration with the file, and a new socket that gets the same number would find the
    /// entry, skip `EPOLL_CTL_ADD` and never be woken (a hang). So after such a close, forget
    /// every entry that has no waiter (an entry with a waiter is live: the waiting op keeps its
    /// descriptor open). A live descriptor forgotten this way costs one `EPOLL_CTL_ADD` that
    /// answers `EEXIST` at its next wait; nothing else.
    fn drop_stale_registrations(&mut self) {
        let closes = UNTOLD_CLOSES.with(Cell::get);
        if closes != self.untold_closes_seen {
            self.untold_closes_seen = closes;
            self.fds.retain(|_, state| !state.waiters.is_empty());
        }
    }

    /// Removes a waiter (its op completed or was dropped or cancelled).
    pub(crate) fn unwait(&mut self, fd: RawFd, token: u64) {
        if let Some(state) = self.fds.get_mut(&fd) {
            let before = state.waiters.len();
            state.waiters.retain(|w| w.token != token);
            self.waiting -= before - state.waiters.len();
        }
    }

    /// Forgets a descriptor about to be closed, waking its waiters (they will see the error).
    pub(crate) fn forget_fd(&mut self, fd: RawFd) {
        if let Some(state) = self.fds.remove(&fd) {
            self.stats.syscalls += 1;
            // SAFETY: removing a registration passes no pointer the kernel keeps.
            unsafe {
                libc::epoll_ctl(
                    self.epoll.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    fd,
                    std::ptr::null_mut(),
                )
            };
            self.waiting -= state.waiters.len();
            self.woken
                .extend(state.waiters.into_iter().map(|w| w.waker));
        }
    }

    /// Counts one non-blocking attempt an op made (a syscall of the epoll backend).
    pub(crate) fn count_attempt(&mut self) {
        self.stats.syscalls += 1;
    }

    /// Descriptors with waiters (ops in flight on this backend).
    pub(crate) fn in_flight(&self) -> usize {
        self.waiting
    }

    /// One `epoll_wait`: blocks for at most `timeout` (rounded *up* to whole milliseconds, so
    /// the loop never wakes before a timer's deadline and spins), then wakes the waiters of
    /// every ready descriptor.
    ///
    /// Wakers are collected (see [`take_woken`](Self::take_woken)); with some already
    /// collected, the wait does not block.
    pub(crate) fn park(&mut self, timeout: Option<Duration>, wake: &WakeFd) -> io::Result<()> {
        let timeout = if self.woken.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        let ms: libc::c_int = match timeout {
            None => -1,
            Some(d) => d
                .as_nanos()
                .div_ceil(1_000_000)
                .min(libc::c_int::MAX as u128) as libc::c_int,
        };
        self.stats.kernel_enters += 1;
        self.stats.syscalls += 1;
        // SAFETY: `events` is a live buffer of the length we pass.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if is_interrupted(&e) { Ok(()) } else { Err(e) };
        }
        let woken = &mut self.woken;
        for ev in &self.events[..n as usize] {
            let token = ev.u64;
            if token == WAKE_TOKEN {
                wake.drain();
                continue;
            }
            let bits = ev.events as libc::c_int;
            let trouble = bits & (libc::EPOLLHUP | libc::EPOLLERR) != 0;
            let readable =
                trouble || bits & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLPRI) != 0;
            let writable = trouble || bits & libc::EPOLLOUT != 0;
            if let Some(state) = self.fds.get_mut(&(token as RawFd)) {
                let before = state.waiters.len();
                state.waiters.retain(|w| {
                    let hit = match w.interest {
                        Interest::Read => readable,
                        Interest::Write => writable,
                    };
                    if hit {
                        woken.push(w.waker.clone());
                    }
                    !hit
                });
                self.waiting -= before - state.waiters.len();
            }
        }
        if n as usize == self.events.len() && self.events.len() < 65536 {
            let len = self.events.len() * 2;
            self.events
                .resize(len, libc::epoll_event { events: 0, u64: 0 });
        }
        Ok(())
    }

    /// The wakers of waiters made ready, moved into `out`, to be woken after the borrow ends.
    pub(crate) fn take_woken(&mut self, out: &mut Vec<Waker>) {
        std::mem::swap(&mut self.woken, out);
    }
}
