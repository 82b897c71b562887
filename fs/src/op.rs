//! How one file operation runs: as an op on the ring when the runtime is on io_uring and the
//! kernel has the opcode, otherwise as a job on the blocking pool. Each operation is described
//! once, as a [`Syscall`]: its SQE, its blocking system call, and how a result becomes its
//! output. [`FileOp`] is the future that picks the way at its first poll and drives it.
//!
//! # Memory and descriptors
//!
//! *On the ring* the operation lives in the runtime's boxed [`Op`] with a [`SharedFd`] clone, so
//! the buffers, paths and iovecs it points at and the descriptor it names stay put until the
//! completion, even when the future is dropped (the op table keeps the orphan).
//!
//! *On the pool* the operation moves into a slot shared with the pool job, together with a
//! duplicate of the descriptor (`F_DUPFD_CLOEXEC`, made on the loop thread when the job is
//! queued). The `SharedFd` cannot travel: it is reference-counted for one thread. The duplicate
//! keeps the open file description alive until the job has finished with it, whatever the
//! caller drops meanwhile, so a number the loop closed and reused can never be read or written
//! by a late job. A future dropped before its job started takes the operation back (the job
//! then does nothing); one dropped while the job runs leaves the output to be dropped by the
//! pool thread when the call returns.
//!
//! # Cancellation
//!
//! The same rules as an io_uring op. On the ring it *is* one. On the pool: a request that comes
//! before the job starts takes the operation back and resolves it with an error carrying the
//! [`Cancelled`] (nothing ran, as when an `ASYNC_CANCEL` wins); one that comes while the call
//! runs is held until the call returns, whose real result is delivered, and the request is then
//! handed on to the task's next await (as when the op's completion wins the race).

use std::borrow::Cow;
use std::ffi::CStr;
use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};

use io_uring::squeue;
use ringloop_runtime::{
    current_backend, note_awaiting_io, repost_cancel_request, spawn_blocking, take_cancel_request,
    take_cancel_request_waiting, AwaitName, Backend, Cancelled, FdTarget, Interest, Op, OpKind,
    SharedFd,
};

/// The descriptor an operation names: how the SQE should name it (by number, or by slot in
/// the ring's registered file table) and its number (for opcodes that take a plain descriptor,
/// such as `STATX`, and for the blocking call). `AT_FDCWD` for operations on paths.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Target {
    pub(crate) fd: FdTarget,
    pub(crate) raw: RawFd,
}

impl Target {
    /// The current directory, for operations on paths.
    const CWD: Target = Target {
        fd: FdTarget::Raw(libc::AT_FDCWD),
        raw: libc::AT_FDCWD,
    };
}

/// Builds an SQE naming a descriptor by its registered slot when it has one, else by number:
/// `with_target!(target, t => opcode::X::new(t, ...).build())`.
macro_rules! with_target {
    ($target:expr, $t:ident => $build:expr) => {
        match $target.fd {
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
pub(crate) use with_target;

/// One file system operation, described once for the ring and for the blocking pool.
///
/// # Safety
///
/// [`sqe`](Self::sqe)'s entry goes to the kernel: every pointer in it must point into memory
/// that `self` owns and that stays valid and unmoved while `self` is alive and not moved (heap
/// memory owned by `self`, `'static` memory, or `self`'s own fields: on the ring `self` is
/// boxed before `sqe` is called and never moves until its completion). The only descriptor it
/// may name is the `target` it is given.
pub(crate) unsafe trait Syscall: Send + Sized + 'static {
    /// What the operation produces (the owned buffers come back in it).
    type Output: Send + 'static;

    /// The io_uring opcode; where the kernel lacks it the operation runs on the pool.
    const OPCODE: u8;

    /// The submission entry (io_uring), naming `target`. Called at most once.
    fn sqe(&mut self, target: Target) -> squeue::Entry;

    /// The blocking system call on descriptor `fd` (`AT_FDCWD` for paths): a result as a CQE
    /// would carry it. Runs on a pool thread.
    fn call(&mut self, fd: RawFd) -> io::Result<u32>;

    /// Turns a result into the output: the CQE's, the call's, or an error that stopped the
    /// operation before it ran (a cancellation, a descriptor that could not be duplicated).
    fn complete(self, result: io::Result<u32>) -> Self::Output;

    /// Whether [`try_nowait`](Self::try_nowait) is worth a system call for this operation.
    fn nowait(&self) -> bool {
        false
    }

    /// Tries the operation on the loop thread without blocking (`RWF_NOWAIT`): a result as
    /// [`call`](Self::call)'s, or an error of kind `WouldBlock` when it could not finish
    /// without waiting (it may have made progress it remembers: the SQE or the call then does
    /// the rest).
    fn try_nowait(&mut self, _fd: RawFd) -> io::Result<u32> {
        Err(io::ErrorKind::WouldBlock.into())
    }

    /// The bytes the operation moves, for task dumps (a read's room, a write's length).
    fn byte_count(&self) -> Option<usize> {
        None
    }
}

/// Retries a blocking call that a signal interrupted, and turns `-1` into the thread's errno.
pub(crate) fn cvt_retry(mut f: impl FnMut() -> isize) -> io::Result<u32> {
    loop {
        let r = f();
        if r >= 0 {
            return Ok(r as u32);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Hands a cancellation that `e` carries back to the current task (an operation that made
/// progress before it was cancelled returns that progress instead of the error).
pub(crate) fn repost_if_cancelled(e: io::Error) {
    if let Some(inner) = e.into_inner() {
        if let Ok(c) = inner.downcast::<Cancelled>() {
            repost_cancel_request(*c);
        }
    }
}

/// A path or other string an operation passes to the kernel: owned (a `CString`) or static
/// (the empty path of an `fstat`), never borrowed from the caller.
pub(crate) type CPath = Cow<'static, CStr>;

// ---------------------------------------------------------------------------------------------
// Which opcodes the kernel has
// ---------------------------------------------------------------------------------------------

/// Whether operations with `opcode` go to the ring (when the runtime runs io_uring).
///
/// The kernel is probed once per process (a two-entry ring of our own and
/// `IORING_REGISTER_PROBE`: opcode support is the kernel's, not a ring's). The environment
/// variable `RINGLOOP_FS_POOL`, read at the same time, sends operations to the pool even where
/// the kernel has them: `all`, or a comma-separated list of opcode names as in
/// [`opcode_name`] (`read,statx`): the tests use it to run the pool path under an io_uring
/// runtime, as on a kernel that lacks an opcode.
pub(crate) fn on_ring(opcode: u8) -> bool {
    static SUPPORTED: OnceLock<[u64; 4]> = OnceLock::new();
    let bits = SUPPORTED.get_or_init(probe);
    bits[usize::from(opcode / 64)] & (1 << (opcode % 64)) != 0
}

fn probe() -> [u64; 4] {
    let mut bits = [0u64; 4];
    let Ok(ring) = io_uring::IoUring::new(2) else {
        return bits;
    };
    let mut probe = io_uring::Probe::new();
    if ring.submitter().register_probe(&mut probe).is_err() {
        return bits;
    }
    let forced = std::env::var("RINGLOOP_FS_POOL").unwrap_or_default();
    let forced: Vec<&str> = forced.split(',').map(str::trim).collect();
    for op in FILE_OPCODES {
        let pooled = forced.iter().any(|f| *f == "all" || *f == opcode_name(*op));
        if probe.is_supported(*op) && !pooled {
            bits[usize::from(op / 64)] |= 1 << (op % 64);
        }
    }
    bits
}

use io_uring::opcode;

/// Every opcode this crate uses, with the kernel that added it.
const FILE_OPCODES: &[u8] = &[
    opcode::OpenAt::CODE,    // 5.6
    opcode::Close::CODE,     // 5.6
    opcode::Read::CODE,      // 5.6
    opcode::Write::CODE,     // 5.6
    opcode::Readv::CODE,     // 5.1
    opcode::Writev::CODE,    // 5.1
    opcode::Fsync::CODE,     // 5.1
    opcode::Statx::CODE,     // 5.6
    opcode::Fallocate::CODE, // 5.6
    opcode::RenameAt::CODE,  // 5.11
    opcode::UnlinkAt::CODE,  // 5.11
    opcode::MkDirAt::CODE,   // 5.15
    opcode::SymlinkAt::CODE, // 5.15
    opcode::LinkAt::CODE,    // 5.15
    opcode::Ftruncate::CODE, // 6.9
];

/// Whether reads may be tried without blocking first (`RWF_NOWAIT`; see `ops::Read`): yes,
/// unless `RINGLOOP_FS_NOWAIT=0` (read once per process) turns it off, so that every read
/// goes to the ring or the pool (the drop-in-flight tests need reads in flight; it also shows
/// what the tries save).
pub(crate) fn nowait_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("RINGLOOP_FS_NOWAIT").map_or(true, |v| v.trim() != "0"))
}

/// The name `RINGLOOP_FS_POOL` knows an opcode by.
pub(crate) const fn opcode_name(op: u8) -> &'static str {
    match op {
        opcode::OpenAt::CODE => "openat",
        opcode::Close::CODE => "close",
        opcode::Read::CODE => "read",
        opcode::Write::CODE => "write",
        opcode::Readv::CODE => "readv",
        opcode::Writev::CODE => "writev",
        opcode::Fsync::CODE => "fsync",
        opcode::Statx::CODE => "statx",
        opcode::Fallocate::CODE => "fallocate",
        opcode::RenameAt::CODE => "renameat",
        opcode::UnlinkAt::CODE => "unlinkat",
        opcode::MkDirAt::CODE => "mkdirat",
        opcode::SymlinkAt::CODE => "symlinkat",
        opcode::LinkAt::CODE => "linkat",
        opcode::Ftruncate::CODE => "ftruncate",
        _ => "?",
    }
}

/// Whether the running runtime sends `opcode`'s operations to the ring.
///
/// # Panics
/// Outside a running ringloop runtime.
pub(crate) fn uses_ring(opcode: u8) -> bool {
    current_backend() == Backend::IoUring && on_ring(opcode)
}

// ---------------------------------------------------------------------------------------------
// The ring side: a Syscall as an OpKind
// ---------------------------------------------------------------------------------------------

/// A [`Syscall`] as an io_uring op, with the descriptor it names kept open.
pub(crate) struct OnRing<S> {
    fd: Option<SharedFd>,
    op: S,
}

impl<S> OnRing<S> {
    fn target(&self) -> Target {
        match &self.fd {
            Some(fd) => Target {
                fd: fd.target(),
                raw: fd.raw(),
            },
            None => Target::CWD,
        }
    }
}

// SAFETY: `Syscall`'s contract: the entry points only into `self.op` (boxed with the rest of
// `self` by `Op` before `sqe` is called) or into memory it owns, and names only the target,
// which is `self.fd` (kept open by this clone until the op is dropped) or `AT_FDCWD`.
unsafe impl<S: Syscall> OpKind for OnRing<S> {
    type Output = S::Output;

    const NAME: &'static str = opcode_name(S::OPCODE);

    fn sqe(&mut self) -> squeue::Entry {
        let target = self.target();
        self.op.sqe(target)
    }

    /// The descriptor a task dump shows. File ops run on the ring only on io_uring, where the
    /// runtime never waits for readiness.
    fn readiness(&self) -> (RawFd, Interest) {
        (self.target().raw, Interest::Read)
    }

    /// The non-blocking try ([`Syscall::try_nowait`]) that `Op` makes first when the ring is
    /// nearly idle (one read in flight: a page-cache hit then costs one system call and no
    /// loop iteration).
    fn attempt(&mut self) -> io::Result<u32> {
        let raw = self.target().raw;
        self.op.try_nowait(raw)
    }

    fn try_first(&self) -> bool {
        self.op.nowait()
    }

    fn byte_count(&self) -> Option<usize> {
        self.op.byte_count()
    }

    fn complete(self, result: io::Result<u32>, _flags: u32) -> S::Output {
        self.op.complete(result)
    }
}

// ---------------------------------------------------------------------------------------------
// The pool side
// ---------------------------------------------------------------------------------------------

/// What a [`PoolWait`] shares with its job, under one lock.
struct PoolSlot<S: Syscall> {
    /// The operation and its duplicated descriptor until the job takes them (or the future
    /// takes them back: cancelled or dropped before the job started).
    input: Option<(Option<OwnedFd>, S)>,
    /// The job's output, until the future takes it.
    output: Option<S::Output>,
    /// The task waiting for the output.
    waker: Option<Waker>,
    /// The job ended without delivering: it was dropped unrun (the pool could start no
    /// thread), or the operation panicked.
    failed: bool,
    /// The future is gone: the job skips an operation it has not started, and drops the
    /// output of one it has.
    detached: bool,
}

fn lock<S: Syscall>(slot: &Mutex<PoolSlot<S>>) -> MutexGuard<'_, PoolSlot<S>> {
    // Nothing panics under this lock (the operation's code runs outside it).
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// The pool job: runs the operation in the slot. Dropped without delivering (never run, or the
/// operation panicked), it marks the slot failed so the future does not wait forever.
struct Job<S: Syscall> {
    slot: Arc<Mutex<PoolSlot<S>>>,
    delivered: bool,
}

impl<S: Syscall> Job<S> {
    fn run(mut self) {
        let input = {
            let mut s = lock(&self.slot);
            if s.detached {
                // The future went before we started; drop what it left outside the lock.
                self.delivered = true;
                let input = s.input.take();
                drop(s);
                drop(input);
                return;
            }
            s.input.take()
        };
        let Some((fd, mut op)) = input else {
            // Taken back by a cancellation; the future has resolved.
            self.delivered = true;
            return;
        };
        let raw = fd.as_ref().map_or(libc::AT_FDCWD, AsRawFd::as_raw_fd);
        let result = op.call(raw);
        // The duplicate is closed here, on the pool thread, once the call is done with it.
        drop(fd);
        let output = op.complete(result);
        let (waker, unwanted) = {
            let mut s = lock(&self.slot);
            if s.detached {
                (None, Some(output))
            } else {
                s.output = Some(output);
                (s.waker.take(), None)
            }
        };
        self.delivered = true;
        // Outside the lock: dropping an output closes descriptors and frees buffers, waking
        // runs the executor's code.
        drop(unwanted);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<S: Syscall> Drop for Job<S> {
    fn drop(&mut self) {
        if self.delivered {
            return;
        }
        let waker = {
            let mut s = lock(&self.slot);
            s.failed = true;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Waits for an operation running on the blocking pool.
struct PoolWait<S: Syscall> {
    slot: Arc<Mutex<PoolSlot<S>>>,
    /// Whether a waker was left in the slot by an earlier poll (the future is already waiting,
    /// for the task's cancellation rules).
    waiting: bool,
    /// A cancel request taken while the call ran: the call's result wins and the request goes
    /// back to the task when it arrives.
    held: Option<Cancelled>,
    /// What a task dump shows while it waits, as for the same op on the ring: the caller's
    /// descriptor (not the job's duplicate) and the bytes the op moves.
    shown: (Option<RawFd>, Option<usize>),
}

impl<S: Syscall> PoolWait<S> {
    /// The op's name, as a `static` of its own (a leaf records a pointer).
    const NAME: &'static AwaitName = &AwaitName::new(opcode_name(S::OPCODE));

    fn start(fd: Option<OwnedFd>, op: S, shown_fd: Option<RawFd>) -> Self {
        let shown = (shown_fd, op.byte_count());
        let slot = Arc::new(Mutex::new(PoolSlot {
            input: Some((fd, op)),
            output: None,
            waker: None,
            failed: false,
            detached: false,
        }));
        let job = Job {
            slot: slot.clone(),
            delivered: false,
        };
        // The pool's own handle is not needed: the slot says everything, and dropping the
        // handle leaves the job to run.
        drop(spawn_blocking(move || job.run()));
        PoolWait {
            slot,
            waiting: false,
            held: None,
            shown,
        }
    }

    /// Resolves with `output`, handing a held cancel request on to the next await.
    fn resolve(&mut self, output: S::Output) -> Poll<S::Output> {
        if let Some(c) = self.held.take() {
            repost_cancel_request(c);
        }
        Poll::Ready(output)
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<S::Output> {
        let mut s = lock(&self.slot);
        if let Some(output) = s.output.take() {
            drop(s);
            return self.resolve(output);
        }
        if s.failed {
            let input = s.input.take();
            drop(s);
            let Some((fd, op)) = input else {
                panic!("ringloop-fs: a file operation panicked on the blocking pool");
            };
            drop(fd);
            let e = io::Error::other(
                "ringloop-fs: no blocking-pool thread could be started to run the operation",
            );
            return self.resolve(op.complete(Err(e)));
        }
        // Not done. A cancel request now: an operation not yet started is taken back and
        // resolves cancelled; a running one finishes and its result wins.
        let taken = if self.held.is_some() {
            // One request stands for all while we hold one (as for a ring op).
            take_cancel_request()
        } else if self.waiting {
            take_cancel_request_waiting()
        } else {
            take_cancel_request()
        };
        if let Some(c) = taken {
            if let Some((fd, op)) = s.input.take() {
                s.detached = true;
                let waker = s.waker.take();
                drop(s);
                drop((fd, waker));
                if let Some(old) = self.held.take() {
                    drop(old);
                }
                return Poll::Ready(op.complete(Err(io::Error::from(c))));
            }
            self.held = Some(c);
        }
        let old = match &mut s.waker {
            Some(w) if w.will_wake(cx.waker()) => None,
            w => w.replace(cx.waker().clone()),
        };
        drop(s);
        drop(old); // outside the lock: dropping a waker runs its executor's code
        note_awaiting_io(Self::NAME, self.shown.0, self.shown.1, !self.waiting);
        self.waiting = true;
        Poll::Pending
    }
}

impl<S: Syscall> Drop for PoolWait<S> {
    fn drop(&mut self) {
        let (input, output, waker) = {
            let mut s = lock(&self.slot);
            s.detached = true;
            (s.input.take(), s.output.take(), s.waker.take())
        };
        // Outside the lock. A running job keeps its operation (and the buffers in it) until
        // its call returns, then drops the output itself.
        drop((input, output, waker));
        // A request this future took is not lost with it (a `select` that drops this branch
        // still leaves the task cancelled at its next await).
        if let Some(c) = self.held.take() {
            repost_cancel_request(c);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The future
// ---------------------------------------------------------------------------------------------

enum State<S: Syscall> {
    /// Not polled yet: nothing chosen, nothing started.
    Start {
        fd: Option<SharedFd>,
        op: S,
    },
    Ring(Op<OnRing<S>>),
    Pool(PoolWait<S>),
    Done,
}

/// A file operation in progress: on the ring or on the blocking pool, chosen at its first poll
/// (see the [module docs](self)). Resolves to the operation's output; a cancellation point like
/// every runtime await.
pub(crate) struct FileOp<S: Syscall> {
    state: State<S>,
}

// No field is ever pinned: `Op` is `Unpin`, and the operation moves only before it starts.
impl<S: Syscall> Unpin for FileOp<S> {}

impl<S: Syscall> FileOp<S> {
    /// An operation on `fd`.
    pub(crate) fn on(fd: &SharedFd, op: S) -> Self {
        FileOp {
            state: State::Start {
                fd: Some(fd.clone()),
                op,
            },
        }
    }

    /// An operation on paths (relative ones to the current directory).
    pub(crate) fn path(op: S) -> Self {
        FileOp {
            state: State::Start { fd: None, op },
        }
    }

    fn start(&mut self) -> Poll<S::Output> {
        let State::Start { fd, op } = std::mem::replace(&mut self.state, State::Done) else {
            unreachable!("started once");
        };
        if uses_ring(S::OPCODE) {
            self.state = State::Ring(Op::new(OnRing { fd, op }));
            return Poll::Pending;
        }
        // Like a ring op that was never submitted: a pending request is delivered here.
        if let Some(c) = take_cancel_request() {
            return Poll::Ready(op.complete(Err(io::Error::from(c))));
        }
        let mut op = op;
        if op.nowait() {
            // A read of cached pages needs no thread: try it here, without blocking.
            let raw = fd.as_ref().map_or(libc::AT_FDCWD, SharedFd::raw);
            match op.try_nowait(raw) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(op.complete(done)),
            }
        }
        let dup = match fd.as_ref().map(|fd| dup(fd.raw())).transpose() {
            Ok(dup) => dup,
            Err(e) => return Poll::Ready(op.complete(Err(e))),
        };
        let shown = fd.as_ref().map(SharedFd::raw);
        self.state = State::Pool(PoolWait::start(dup, op, shown));
        Poll::Pending
    }
}

/// `F_DUPFD_CLOEXEC`: a descriptor of the same open file that a pool job can own.
fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: `fd` is open (the caller's `SharedFd` keeps it so); the borrow lasts this call.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned()
}

impl<S: Syscall> Future for FileOp<S> {
    type Output = S::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<S::Output> {
        let this = self.get_mut();
        if let State::Start { .. } = this.state {
            if let Poll::Ready(out) = this.start() {
                return Poll::Ready(out);
            }
        }
        let r = match &mut this.state {
            State::Ring(op) => Pin::new(op).poll(cx),
            State::Pool(wait) => wait.poll(cx),
            State::Start { .. } | State::Done => panic!("file op polled after completion"),
        };
        if r.is_ready() {
            this.state = State::Done;
        }
        r
    }
}

impl<S: Syscall> fmt::Debug for FileOp<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Start { .. } => "not started",
            State::Ring(_) => "on the ring",
            State::Pool(_) => "on the blocking pool",
            State::Done => "done",
        };
        f.debug_struct("FileOp").field("state", &state).finish()
    }
}
