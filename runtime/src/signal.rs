//! Receiving Unix signals in tasks: asyncio's `loop.add_signal_handler`, tokio's `signal`.
//!
//! [`signal`] registers a listener for one signal number and returns a [`Signal`];
//! [`Signal::recv`] waits for the next delivery. [`ctrl_c`] waits for one `SIGINT`.
//!
//! ```
//! use ringloop_runtime::signal::{signal, SignalKind};
//! use ringloop_runtime::Runtime;
//!
//! let rt = Runtime::new().unwrap();
//! rt.block_on(async {
//!     let mut hangups = signal(SignalKind::hangup()).unwrap();
//!     // Someone sends SIGHUP (here: ourselves).
//!     // SAFETY: raise has no memory-safety preconditions.
//!     unsafe { libc::raise(libc::SIGHUP) };
//!     hangups.recv().await.unwrap(); // e.g. reload the configuration
//! });
//! ```
//!
//! # Semantics
//!
//! * **One wake per delivery, coalesced between `recv`s.** `recv` resolves once for every
//!   delivery that arrives while it waits. Deliveries that arrive while nobody waits are not
//!   lost: the next `recv` resolves at once. But several of them count as one: like the kernel,
//!   which keeps one pending instance of each standard signal, a listener learns *that* the
//!   signal came, not how many times.
//! * **Every listener sees every delivery.** Two [`Signal`]s for the same number, on one
//!   runtime or on several threads, are each woken.
//! * **The previous disposition comes back.** The first listener of a signal number replaces
//!   its disposition with ringloop's handler (so while a listener lives, the default action,
//!   e.g. terminating the process on `SIGINT`, `SIGHUP` or `SIGUSR1`, does not happen). When
//!   the last listener of that number is dropped, the disposition that was in place before the
//!   first one is restored, as asyncio's `remove_signal_handler` does. A disposition someone
//!   else installs while a listener lives is overwritten by that restore; ringloop's handler
//!   does not chain to the handler it replaced.
//! * **Cancellation.** `recv` is a cancellation point like every runtime await: a cancelled
//!   task waiting in it gets an error carrying [`Cancelled`](crate::Cancelled) (see
//!   [`is_cancelled`](crate::is_cancelled)) and no operation is left in flight. A delivery that
//!   is already pending is delivered first (nothing is lost; the request waits for the next
//!   await). Dropping a `recv` future never consumes a delivery either.
//! * Signals that report a fault in the thread that gets them (`SIGSEGV`, `SIGBUS`, `SIGILL`,
//!   `SIGFPE`) and those that cannot be caught (`SIGKILL`, `SIGSTOP`) are refused.
//!
//! # How it works
//!
//! As tokio's self-pipe, with one eventfd per listener. The signal handler may only do
//! async-signal-safe work, so it takes no lock and allocates nothing: it walks a fixed table of
//! [`MAX_LISTENERS`] atomic slots, each packing a signal number and an eventfd, and `write(2)`s
//! 1 to the eventfd of every slot registered for the signal it got (saving and restoring
//! `errno`). Each [`Signal`] owns one non-blocking eventfd; `recv` reads it, and when it is
//! empty waits for it to become readable through an [`Op`] of the runtime, so it works on both
//! backends: `IORING_OP_POLL_ADD` on io_uring, a readiness wait with a non-blocking `poll(2)`
//! attempt on epoll. The eventfd's counter is what coalesces deliveries.
//!
//! Why a poll and then a `read(2)`, not an `IORING_OP_READ`: a read op that is dropped in flight
//! may complete with a delivery that then nobody sees, while a dropped poll consumes nothing.
//! It also sidesteps the kernels on which an io_uring read of an `O_NONBLOCK` eventfd fails with
//! `EAGAIN` instead of waiting (the 6.18 kernel this was written on waits).
//!
//! A listener's slot is cleared before its eventfd is closed, and the close waits until no
//! handler is between reading a slot and writing its eventfd, so a handler never writes to a
//! closed descriptor, or to an unrelated one that reused its number.

use std::fmt;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use io_uring::{opcode, squeue, types};

use crate::context;
use crate::driver::errno::{is_interrupted, is_would_block};
use crate::driver::{FdTarget, Interest, Op, OpKind, SharedFd};

/// How many [`Signal`]s may exist at once in the process, over all signal numbers.
pub const MAX_LISTENERS: usize = 128;

/// A signal number, with constructors for the common ones (tokio's `SignalKind`). Any `i32`
/// converts into it, so [`signal`] takes `libc::SIGUSR1` as well as
/// `SignalKind::user_defined1()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SignalKind(i32);

impl SignalKind {
    /// The signal with this number (checked by [`signal`], not here).
    pub const fn from_raw(signum: i32) -> SignalKind {
        SignalKind(signum)
    }

    /// The signal number.
    pub const fn as_raw(self) -> i32 {
        self.0
    }

    /// `SIGINT`: the terminal's interrupt key (Ctrl-C).
    pub const fn interrupt() -> SignalKind {
        SignalKind(libc::SIGINT)
    }

    /// `SIGTERM`: a polite request to terminate (what `kill` and service managers send).
    pub const fn terminate() -> SignalKind {
        SignalKind(libc::SIGTERM)
    }

    /// `SIGHUP`: the terminal hung up; daemons take it as "reload your configuration".
    pub const fn hangup() -> SignalKind {
        SignalKind(libc::SIGHUP)
    }

    /// `SIGUSR1`: for the application's own use.
    pub const fn user_defined1() -> SignalKind {
        SignalKind(libc::SIGUSR1)
    }

    /// `SIGUSR2`: for the application's own use.
    pub const fn user_defined2() -> SignalKind {
        SignalKind(libc::SIGUSR2)
    }
}

impl From<i32> for SignalKind {
    fn from(signum: i32) -> SignalKind {
        SignalKind(signum)
    }
}

/// Starts listening for `kind` (asyncio's `loop.add_signal_handler`); see the
/// [module docs](self) for the semantics.
///
/// Needs no running runtime (the listener can be created before `block_on`); deliveries from
/// that moment on are kept for the first [`Signal::recv`].
///
/// # Errors
/// * [`InvalidInput`](io::ErrorKind::InvalidInput) for a number that is no signal, for
///   `SIGKILL` and `SIGSTOP` (they cannot be caught) and for `SIGSEGV`, `SIGBUS`, `SIGILL` and
///   `SIGFPE` (a handler that returns from them re-runs the faulting instruction); `EINVAL`
///   from `sigaction` for the signals the C library keeps for itself (32 and 33 on glibc).
/// * An error when [`MAX_LISTENERS`] listeners already exist, or when no eventfd can be made
///   (the descriptor limit).
pub fn signal(kind: impl Into<SignalKind>) -> io::Result<Signal> {
    let signum = kind.into().as_raw();
    validate(signum)?;
    // SAFETY: eventfd takes no pointers; a negative return is an error, anything else a new
    // descriptor that nobody else owns.
    let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is the fresh descriptor from above, owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
    let slot = register(signum, raw)?; // on error, `owned` closes the eventfd
    Ok(Signal {
        fd: SharedFd::new(owned),
        slot,
        signum,
    })
}

/// Waits for one `SIGINT` (Ctrl-C), then stops listening.
///
/// The listener is registered when the future is first polled and dropped when it resolves
/// (or is dropped), after which `SIGINT`'s previous disposition is back: a second Ctrl-C then
/// does what it did before (by default, it terminates the process). A Ctrl-C that arrives
/// before the first poll is not seen here. Keep a [`signal`]`(SignalKind::interrupt())` alive
/// instead to catch every one.
///
/// ```no_run
/// ringloop_runtime::Runtime::new().unwrap().block_on(async {
///     ringloop_runtime::ctrl_c().await.unwrap();
///     println!("shutting down");
/// });
/// ```
///
/// # Errors
/// As [`signal`] and [`Signal::recv`].
pub async fn ctrl_c() -> io::Result<()> {
    signal(SignalKind::interrupt())?.recv().await
}

/// A listener for one signal number, from [`signal`]. Dropping it stops listening (and
/// restores the signal's previous disposition when it was the last listener of that number).
///
/// Like a socket, it holds a descriptor of the thread's runtime, so it is `!Send`: create it on
/// the thread whose tasks wait on it.
pub struct Signal {
    /// The eventfd the handler writes to; ops hold clones, so it stays open while one is in
    /// flight.
    fd: SharedFd,
    /// Our index in `LISTENERS`.
    slot: usize,
    signum: i32,
}

impl Signal {
    /// Waits for the next delivery of the signal; resolves at once if one arrived since the
    /// last `recv` (several such deliveries count as one: see the [module docs](self)).
    ///
    /// # Errors
    /// * An error carrying [`Cancelled`](crate::Cancelled) when the awaiting task is cancelled
    ///   (see [`is_cancelled`](crate::is_cancelled)); converts into a `Cancelled` escape like
    ///   every cancelled op.
    /// * An error when awaited outside a running ringloop runtime, and any error of the
    ///   driver.
    pub async fn recv(&mut self) -> io::Result<()> {
        if !context::is_entered() {
            return Err(io::Error::other(context::NO_RUNTIME));
        }
        loop {
            match read_counter(self.fd.raw()) {
                Ok(()) => return Ok(()),
                Err(e) if is_interrupted(&e) => continue,
                Err(e) if is_would_block(&e) => {}
                Err(e) => return Err(e),
            }
            Op::new(Readable {
                fd: self.fd.clone(),
            })
            .await?;
        }
    }

    /// The signal this listener receives.
    pub fn kind(&self) -> SignalKind {
        SignalKind(self.signum)
    }
}

impl Drop for Signal {
    fn drop(&mut self) {
        // Before `fd` drops (fields drop after this body): once `unregister` returns, no
        // handler writes to the eventfd, so closing it is safe.
        unregister(self.slot, self.signum);
    }
}

impl fmt::Debug for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signal")
            .field("signum", &self.signum)
            .field("eventfd", &self.fd.raw())
            .finish()
    }
}

/// Reads (and so resets) the eventfd's counter; `WouldBlock` when it is zero.
fn read_counter(fd: RawFd) -> io::Result<()> {
    let mut count: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live local from a descriptor the caller keeps open.
    let n = unsafe { libc::read(fd, (&raw mut count).cast(), 8) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The op `recv` waits with: "the eventfd is readable". It consumes nothing, so dropping it in
/// flight loses no delivery.
struct Readable {
    fd: SharedFd,
}

// SAFETY: the SQE holds no pointer, and names `self.fd`'s descriptor (or its registered slot),
// which `self` keeps open until the op completes.
unsafe impl OpKind for Readable {
    type Output = io::Result<()>;
    const NAME: &'static str = "signal";

    /// `IORING_OP_POLL_ADD` for `POLLIN`, one-shot (Linux 5.1).
    fn sqe(&mut self) -> squeue::Entry {
        let mask = libc::POLLIN as u32;
        match self.fd.target() {
            FdTarget::Raw(fd) => opcode::PollAdd::new(types::Fd(fd), mask).build(),
            FdTarget::Fixed(slot) => opcode::PollAdd::new(types::Fixed(slot), mask).build(),
        }
    }

    fn readiness(&self) -> (RawFd, Interest) {
        (self.fd.raw(), Interest::Read)
    }

    /// A `poll(2)` that does not wait: the readiness as a count of ready descriptors, or
    /// `WouldBlock`.
    fn attempt(&mut self) -> io::Result<u32> {
        let mut pfd = libc::pollfd {
            fd: self.fd.raw(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: one live `pollfd` local, and the count says one; a zero timeout never
            // blocks.
            let n = unsafe { libc::poll(&mut pfd, 1, 0) };
            if n > 0 {
                return Ok(n as u32);
            }
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let e = io::Error::last_os_error();
            if !is_interrupted(&e) {
                return Err(e);
            }
        }
    }

    fn complete(self, result: io::Result<u32>, _flags: u32) -> io::Result<()> {
        result.map(drop)
    }
}

// ---------------------------------------------------------------------------------------------
// The process-wide table and the handler
// ---------------------------------------------------------------------------------------------

/// The listeners, as the handler sees them: `signum << 32 | eventfd`, or 0 for a free slot
/// (signal numbers start at 1, so a used slot is never 0). Written only under `REGISTRY`'s
/// lock; read by the handler without any lock.
static LISTENERS: [AtomicU64; MAX_LISTENERS] = [const { AtomicU64::new(0) }; MAX_LISTENERS];

/// Handlers running now, in any thread. `unregister` clears a slot and then waits for this to
/// reach zero before the eventfd may close.
static IN_HANDLER: AtomicUsize = AtomicUsize::new(0);

/// Which signal numbers have our handler, and what they had before.
static REGISTRY: Mutex<Vec<Installed>> = Mutex::new(Vec::new());

struct Installed {
    signum: i32,
    /// Live `Signal`s for this number.
    listeners: usize,
    /// The disposition to restore when the last one goes.
    previous: libc::sigaction,
}

fn registry() -> MutexGuard<'static, Vec<Installed>> {
    // Nothing panics while the lock is held, so a poisoned lock still holds consistent state.
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

fn pack(signum: i32, fd: RawFd) -> u64 {
    ((signum as u32 as u64) << 32) | fd as u32 as u64
}

fn validate(signum: i32) -> io::Result<()> {
    let refuse = |why: &str| {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("ringloop cannot listen for signal {signum}: {why}"),
        ))
    };
    if signum < 1 || signum > libc::SIGRTMAX() {
        return refuse("not a signal number");
    }
    match signum {
        libc::SIGKILL | libc::SIGSTOP => refuse("it cannot be caught"),
        libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE => refuse(
            "it reports a fault in the thread that gets it, and returning from its handler \
             re-runs the faulting instruction",
        ),
        _ => Ok(()),
    }
}

/// Puts `fd` in a free slot for `signum`, installing the handler if it is the number's first
/// listener. Returns the slot.
fn register(signum: i32, fd: RawFd) -> io::Result<usize> {
    let mut reg = registry();
    let Some(slot) = LISTENERS.iter().position(|s| s.load(Ordering::SeqCst) == 0) else {
        return Err(io::Error::other(format!(
            "ringloop: all {MAX_LISTENERS} signal listener slots are in use; drop a Signal first"
        )));
    };
    LISTENERS[slot].store(pack(signum, fd), Ordering::SeqCst);
    if let Some(inst) = reg.iter_mut().find(|i| i.signum == signum) {
        inst.listeners += 1;
        return Ok(slot);
    }
    match install_handler(signum) {
        Ok(previous) => {
            reg.push(Installed {
                signum,
                listeners: 1,
                previous,
            });
            Ok(slot)
        }
        Err(e) => {
            release_slot(slot);
            Err(e)
        }
    }
}

/// Empties `slot`; restores `signum`'s previous disposition if that was its last listener.
/// Once this returns, no handler writes to the slot's eventfd.
fn unregister(slot: usize, signum: i32) {
    let mut reg = registry();
    release_slot(slot);
    if let Some(i) = reg.iter().position(|i| i.signum == signum) {
        reg[i].listeners -= 1;
        if reg[i].listeners == 0 {
            let inst = reg.swap_remove(i);
            // SAFETY: `previous` is the disposition `sigaction` gave us for this number, a
            // valid value to hand back; the null pointer asks for no old value.
            unsafe { libc::sigaction(signum, &inst.previous, std::ptr::null_mut()) };
        }
    }
}

/// Clears a slot, then waits until no handler can still be using its old value.
///
/// Why this is enough: the handler increments `IN_HANDLER` *before* it reads any slot, and we
/// read `IN_HANDLER` *after* clearing ours, all `SeqCst` (one total order). So either the
/// handler's increment comes first and we wait for its decrement, which follows its write; or
/// our clear comes first and the handler reads 0. Handlers never block, so the wait is short;
/// it cannot be on a handler of this thread, which would have finished before we resumed.
fn release_slot(slot: usize) {
    LISTENERS[slot].store(0, Ordering::SeqCst);
    while IN_HANDLER.load(Ordering::SeqCst) != 0 {
        std::thread::yield_now();
    }
}

/// Installs `on_signal` for `signum`; returns the disposition it replaced.
fn install_handler(signum: i32) -> io::Result<libc::sigaction> {
    // SAFETY: `sigaction` is a plain C struct for which all-zero bytes are a valid value (no
    // handler, no flags, an empty mask).
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SA_RESTART: syscalls that the handler interrupts in other threads are restarted rather
    // than failing with EINTR (the loop's own waits handle EINTR anyway).
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: `sa_mask` is a live, owned `sigset_t`.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: a zeroed `sigaction` is valid (see above); the kernel overwrites it.
    let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are live locals; `on_signal` is async-signal-safe (see there).
    if unsafe { libc::sigaction(signum, &action, &mut previous) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(previous)
}

/// The signal handler. Async-signal-safe: it only touches lock-free atomics and calls
/// `write(2)`, and it leaves `errno` as it found it.
extern "C" fn on_signal(signum: libc::c_int) {
    // SAFETY: `__errno_location` returns this thread's errno, valid for the thread's life.
    let saved_errno = unsafe { *libc::__errno_location() };
    IN_HANDLER.fetch_add(1, Ordering::SeqCst);
    for slot in &LISTENERS {
        let v = slot.load(Ordering::SeqCst);
        if v != 0 && (v >> 32) as i32 == signum {
            let fd = v as u32 as RawFd;
            let one: u64 = 1;
            // SAFETY: the slot was non-zero after our `IN_HANDLER` increment, so its eventfd
            // stays open until we decrement (see `release_slot`); 8 bytes from a live local.
            // An error (a counter at its maximum) leaves the eventfd readable anyway.
            unsafe { libc::write(fd, (&raw const one).cast(), 8) };
        }
    }
    IN_HANDLER.fetch_sub(1, Ordering::SeqCst);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved_errno };
}
