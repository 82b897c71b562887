//! The io_uring backend: ops in a slab, one `io_uring_enter` per loop iteration that submits and
//! reaps together, timers through the wait timeout (EXT_ARG), cross-thread wakes through a
//! multishot poll on the eventfd.
//!
//! The op table and the life cycle of a slot are in [`slots`](super::slots): a pure state
//! machine over completions. This file is the kernel side: the ring, pushing SQEs, entering,
//! and feeding each completion to the table.

use std::io;
use std::task::Waker;
use std::time::{Duration, Instant};

use io_uring::types::{SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, types, EnterFlags, IoUring, Probe};

use std::rc::Rc;

use super::bufpool::{BufPool, POOL_GROUP};
use super::errno::is_transient;
use super::op::Orphan;
use super::slots::{OpTable, SlotState, CANCEL_BIT, WAKE_TAG};
use super::{MultishotKind, OpKey, SharedFd, WakeFd};

/// At most this many multishot ops armed and the ring can still be [`Uring::nearly_idle`].
const LONE_MULTISHOTS: usize = 2;
/// The CQ holds at least this many completions (and at most the kernel's limit, 65 536 with
/// `CLAMP`): every connection of a 10 000-connection server may post a receive and a send
/// completion in one loop iteration, and overflowing the CQ makes the kernel keep the rest in
/// a slower backlog.
const MIN_CQ_ENTRIES: u32 = 32 * 1024;

pub(crate) struct Uring {
    ring: IoUring,
    /// Every op the kernel may still hold (the slots' state machine), with the pool and the
    /// counters.
    pub(crate) table: OpTable,
    /// The kernel's count of completions it had to drop (`koverflow`), as last read.
    dropped_seen: u32,
    /// The wake poll is armed (re-armed when a completion ends it).
    wake_armed: bool,
    wake_fd: i32,
    /// The kernel supports `SEND_ZC` (6.0+).
    pub(crate) send_zc: bool,
    /// The kernel supports receive bundles (6.10+).
    pub(crate) recv_bundle: bool,
    /// Free slots of the registered file table (empty when the table is not in use).
    free_file_slots: Vec<u32>,
    /// How the ring was set up, for `Runtime::backend_info`.
    pub(crate) setup: &'static str,
}

/// Opcodes the runtime needs; a kernel missing one gets the epoll backend instead.
const REQUIRED_OPCODES: &[u8] = &[
    opcode::AsyncCancel::CODE,
    opcode::PollAdd::CODE,
    opcode::Accept::CODE,
    opcode::Connect::CODE,
    opcode::Recv::CODE,
    opcode::Send::CODE,
    opcode::RecvMsg::CODE,
    opcode::SendMsg::CODE,
];

impl Uring {
    /// Creates a ring with `entries` SQEs and a CQ eight times as large (multishot ops post
    /// many completions per SQE), with the cheapest task-work mode the kernel accepts.
    pub(crate) fn new(
        entries: u32,
        cq_entries: Option<u32>,
        wake: &WakeFd,
        pool: Rc<BufPool>,
    ) -> io::Result<Uring> {
        let cq_entries =
            cq_entries.unwrap_or_else(|| entries.saturating_mul(8).max(MIN_CQ_ENTRIES));
        type Configure = fn(&mut io_uring::Builder);
        let attempts: [(&'static str, Configure); 3] = [
            ("single_issuer+defer_taskrun", |b| {
                b.setup_single_issuer().setup_defer_taskrun();
            }),
            ("coop_taskrun", |b| {
                b.setup_coop_taskrun().setup_taskrun_flag();
            }),
            ("plain", |_| {}),
        ];
        let mut last_err = None;
        for (name, configure) in attempts {
            let mut builder = IoUring::builder();
            builder.setup_cqsize(cq_entries).setup_clamp();
            configure(&mut builder);
            match builder.build(entries) {
                Ok(ring) => return Self::finish_setup(ring, name, wake, pool),
                // EINVAL: a flag this kernel does not know; try the next, simpler setup.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EINVAL)))
    }

    fn finish_setup(
        ring: IoUring,
        setup: &'static str,
        wake: &WakeFd,
        pool: Rc<BufPool>,
    ) -> io::Result<Uring> {
        if !ring.params().is_feature_ext_arg() || !ring.params().is_feature_nodrop() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring lacks EXT_ARG or NODROP (kernel older than 5.11)",
            ));
        }
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if let Some(op) = REQUIRED_OPCODES.iter().find(|op| !probe.is_supported(**op)) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("io_uring opcode {op} is not supported by this kernel"),
            ));
        }
        let (ring_addr, ring_entries) = pool.ring_addr().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "buffer pool without a ring")
        })?;
        // SAFETY: the ring region belongs to `pool`, which this driver keeps alive for as long
        // as the ring exists: fields drop in declaration order, `ring` before `pool`.
        let registered = unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(ring_addr, ring_entries, POOL_GROUP, 0)
        };
        // Debian's 5.10 has io_uring as of 5.15 (EXT_ARG and all), but no buffer rings; Ubuntu
        // 24.04's 6.8.0-151 refuses them too (EINVAL for any argument; seen in a VM).
        registered.map_err(|e| match e.raw_os_error() {
            Some(libc::EINVAL) => io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "io_uring refused a provided-buffer ring (none before Linux 5.19; some \
                     distribution kernels refuse them too): {e}"
                ),
            ),
            _ => e,
        })?;
        let recv_bundle = ring.params().is_feature_recvsend_bundle();
        let mut uring = Uring {
            ring,
            dropped_seen: 0,
            wake_armed: false,
            wake_fd: wake.raw(),
            send_zc: probe.is_supported(opcode::SendZc::CODE),
            recv_bundle,
            free_file_slots: Vec::new(),
            table: OpTable::new(pool),
            setup,
        };
        uring.arm_wake();
        Ok(uring)
    }

    fn arm_wake(&mut self) {
        let sqe = opcode::PollAdd::new(types::Fd(self.wake_fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(WAKE_TAG);
        // A refused push leaves it unarmed; the next reap tries again.
        // SAFETY: the poll references only the eventfd, which `Shared` keeps open for the
        // runtime's whole life (longer than the ring).
        self.wake_armed = unsafe { self.push(&sqe) }.is_ok();
    }

    /// Pushes an SQE, submitting to make room when the SQ is full. An error means the entry
    /// is *not* in the ring (the kernel refuses submissions for a reason waiting cannot fix):
    /// the caller still owns what it points to.
    ///
    /// # Safety
    /// The entry's pointers and descriptors must stay valid until its completion.
    unsafe fn push(&mut self, sqe: &squeue::Entry) -> io::Result<()> {
        // Transient refusals in a row before giving up: each one reaps, so a CQ that is full
        // (EBUSY) drains; a kernel that refuses this often is not going to take the entry.
        let mut transient = 0;
        loop {
            // SAFETY: forwarded from the caller.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return Ok(());
            }
            // The SQ is full: hand what is queued to the kernel and retry. If the kernel
            // cannot take them now (EBUSY: the CQ is backed up), reap and retry.
            self.table.stats.kernel_enters += 1;
            self.table.stats.syscalls += 1;
            match self.ring.submit() {
                Ok(_) => transient = 0,
                Err(e) if is_transient(&e) && transient < 1000 => {
                    transient += 1;
                    // Why reap here: EBUSY means the CQ is full (kernels before 6.0 refuse
                    // submissions while overflowed completions cannot be flushed). Entering
                    // again frees no CQ slot; only advancing the CQ head does, so without
                    // this the loop would spin forever. Reaping only records results and
                    // collects wakers (woken later, by the loop); no slot is freed whose SQE
                    // is pending.
                    let _ = self.enter(0, Some(Duration::ZERO));
                    self.reap();
                }
                Err(e) => {
                    // Any other error (EBADF, EFAULT, ENXIO: the ring is unusable) would fail
                    // the same way forever: report it instead of spinning.
                    self.table.stats.enter_errors += 1;
                    return Err(e);
                }
            }
        }
    }

    fn flush_cancels(&mut self) {
        while let Some(target) = self.table.cancels.front().copied() {
            let sqe = opcode::AsyncCancel::new(target)
                .build()
                .user_data(target | CANCEL_BIT);
            // SAFETY: a cancel SQE carries only a user_data value, no pointer.
            if unsafe { self.push(&sqe) }.is_err() {
                // Kept queued: a cancel is never lost; the next park tries again.
                return;
            }
            self.table.cancels.pop_front();
        }
    }

    /// Arms an op. The caller guarantees the SQE's memory outlives the op's completion.
    ///
    /// # Safety
    /// As [`push`](Self::push).
    pub(crate) unsafe fn submit(&mut self, sqe: squeue::Entry, waker: &Waker) -> io::Result<OpKey> {
        // SAFETY: forwarded from the caller.
        unsafe { self.insert(sqe, OpTable::armed(waker), None) }
    }

    /// Arms a multishot op owned by a connection.
    ///
    /// # Safety
    /// As [`push`](Self::push), for every completion until the last one.
    pub(crate) unsafe fn submit_multishot(
        &mut self,
        sqe: squeue::Entry,
        kind: MultishotKind,
        cap: usize,
        keep: SharedFd,
    ) -> io::Result<OpKey> {
        // SAFETY: forwarded from the caller; `keep` holds the descriptor open until the slot
        // is freed by the last completion.
        unsafe { self.insert(sqe, OpTable::multishot(kind, cap), Some(keep)) }
    }

    /// Takes a slot for `state` and pushes `sqe` tagged with its key. On error nothing is in
    /// the ring and the slot is freed again.
    ///
    /// # Safety
    /// As [`push`](Self::push).
    unsafe fn insert(
        &mut self,
        sqe: squeue::Entry,
        state: SlotState,
        keep: Option<SharedFd>,
    ) -> io::Result<OpKey> {
        self.flush_cancels();
        let key = self.table.insert(state, keep)?;
        // SAFETY: forwarded from the caller.
        if let Err(e) = unsafe { self.push(&sqe.user_data(key.0)) } {
            // Never reached the ring: nobody else knows the slot.
            self.table.remove_unsubmitted(key);
            return Err(e);
        }
        Ok(key)
    }

    /// The op's result if its completion arrived (the slot is freed), else updates its waker.
    pub(crate) fn take(&mut self, key: OpKey, waker: &Waker) -> Option<(i32, u32)> {
        self.table.take(key, waker)
    }

    /// See [`OpTable::multishot_next`].
    pub(crate) fn multishot_next(
        &mut self,
        key: OpKey,
        waker: &Waker,
    ) -> Result<Option<(i32, u32)>, ()> {
        self.table.multishot_next(key, waker)
    }

    /// Completions queued for a multishot op and not yet read.
    pub(crate) fn multishot_queued(&mut self, key: OpKey) -> usize {
        self.table.multishot_queued(key)
    }

    /// The owner of a multishot op is gone: dispose of what is queued and of what still comes.
    pub(crate) fn multishot_orphan(&mut self, key: OpKey) {
        self.table.multishot_orphan(key)
    }

    /// Queues an `ASYNC_CANCEL` for the op (once); its completion still arrives and decides.
    pub(crate) fn cancel(&mut self, key: OpKey) {
        self.table.cancel(key)
    }

    /// The op's future is gone: keep its data until the completion, and cancel it.
    pub(crate) fn orphan(&mut self, key: OpKey, data: Box<dyn Orphan>) {
        self.table.orphan(key, data)
    }

    /// Orphans whose completion arrived, to be finished by the caller outside the borrow.
    pub(crate) fn take_finished_orphans(&mut self) -> Vec<(Box<dyn Orphan>, i32, u32)> {
        self.table.take_finished_orphans()
    }

    /// Registers a sparse file table of `slots` entries, so sockets can be named by slot
    /// instead of by descriptor (no file lookup per op).
    ///
    /// Refused before 6.15. Older kernels free the files of emptied slots in the order the
    /// slots were emptied, each only after every op that used the table before it has
    /// completed: one long-lived receive or accept then keeps every socket closed after it
    /// open, unseen by its peer (no FIN), and a server whose clients wait for the close
    /// deadlocks (seen on 6.1 and 6.12 in `.ci/kernels`; liburing issue 1192). Kernels from
    /// 6.13 free each file on its own; 6.15's `NO_IOWAIT` is the first feature flag that
    /// tells such a kernel apart.
    pub(crate) fn enable_file_table(&mut self, slots: u32) -> io::Result<()> {
        if !self.ring.params().is_feature_no_iowait() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "registered descriptors need Linux 6.15+ (older kernels free closed ones late)",
            ));
        }
        self.ring.submitter().register_files_sparse(slots)?;
        self.free_file_slots = (0..slots).rev().collect();
        Ok(())
    }

    /// Installs `fd` in a free slot of the file table; `None` when the table is off or full (the
    /// socket then works by descriptor, as usual).
    pub(crate) fn register_file(&mut self, fd: i32) -> Option<u32> {
        let slot = self.free_file_slots.pop()?;
        self.table.stats.syscalls += 1;
        match self.ring.submitter().register_files_update(slot, &[fd]) {
            Ok(_) => Some(slot),
            Err(_) => {
                self.free_file_slots.push(slot);
                None
            }
        }
    }

    /// Empties a slot. Called when the last holder of the socket goes, so no op in flight
    /// names the slot any more.
    pub(crate) fn unregister_file(&mut self, slot: u32) {
        self.table.stats.syscalls += 1;
        if self
            .ring
            .submitter()
            .register_files_update(slot, &[-1])
            .is_ok()
        {
            self.free_file_slots.push(slot);
        }
    }

    /// Completion-queue entries the kernel gave the ring.
    pub(crate) fn cq_entries(&self) -> u32 {
        self.ring.params().cq_entries()
    }

    /// Ops the kernel still holds (armed or orphaned) or whose result waits to be taken.
    pub(crate) fn in_flight(&self) -> usize {
        self.table.held()
    }

    /// Whether any slot exists (held by the kernel, or with a result to be taken).
    pub(crate) fn has_slots(&self) -> bool {
        self.table.len() > 0
    }

    /// Whether the ring is nearly idle: nothing waits in the SQ, no single-shot op is in
    /// flight, and at most `LONE_MULTISHOTS` multishot ops are armed (a lone connection's
    /// receive, a listener's accept). Then a plain system call for an op that usually succeeds
    /// at once costs less than the loop iteration its completion would take, and, with no
    /// other op in flight, it cannot overtake one on the same socket.
    pub(crate) fn nearly_idle(&mut self) -> bool {
        let multishots = self.table.multishots();
        self.table.len() == multishots
            && multishots <= LONE_MULTISHOTS
            && self.table.cancels.is_empty()
            && self.ring.submission().is_empty()
    }

    /// Whether the next park has anything to hand to the kernel.
    pub(crate) fn has_pending_submissions(&mut self) -> bool {
        !self.table.cancels.is_empty() || !self.ring.submission().is_empty()
    }

    /// One `io_uring_enter`: submit everything queued and wait for at least one completion or
    /// the timeout (`None`: no timer, wait for a completion or a wake; zero: don't wait). Then
    /// reap every completion.
    ///
    /// The wakers of completed ops are collected, not woken: the loop wakes them with
    /// [`take_woken`](Self::take_woken) once the driver is no longer borrowed. If some are
    /// already waiting, the park does not block.
    ///
    /// # Errors
    /// When the kernel refuses the entry for a reason waiting cannot fix (not a timeout, a
    /// signal, or a full CQ): the ring is unusable, and the loop stops rather than spin.
    pub(crate) fn park(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let timeout = if !self.table.has_woken() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        self.flush_cancels();
        let entered = self.enter(
            if timeout == Some(Duration::ZERO) {
                0
            } else {
                1
            },
            timeout,
        );
        self.reap();
        // With NODROP the kernel keeps completions that did not fit in the CQ and flags it;
        // an enter with GETEVENTS flushes them into the CQ: no completion is ever lost.
        let mut guard = 0;
        while self.ring.submission().cq_overflow() && guard < 64 {
            self.table.stats.cq_overflows += 1;
            let _ = self.enter(0, Some(Duration::ZERO));
            self.reap();
            guard += 1;
        }
        self.check_dropped();
        entered
    }

    /// Reads the kernel's count of completions it dropped. With NODROP that only happens
    /// when the kernel cannot allocate memory for its backlog; an op whose completion is lost
    /// never finishes, so say so (once per burst) rather than hang in silence.
    fn check_dropped(&mut self) {
        let dropped = self.ring.completion().overflow();
        if dropped != self.dropped_seen {
            let lost = dropped.wrapping_sub(self.dropped_seen);
            self.dropped_seen = dropped;
            self.table.stats.cq_dropped += u64::from(lost);
            eprintln!(
                "ringloop: the kernel dropped {lost} io_uring completions (out of memory for its \
                 overflow backlog); the ops they belonged to will not finish"
            );
        }
    }

    /// The wakers of ops that completed, moved into `out` (which should be empty), to be woken
    /// after the driver's borrow ends.
    pub(crate) fn take_woken(&mut self, out: &mut Vec<Waker>) {
        self.table.take_woken(out);
    }

    fn enter(&mut self, min_complete: u32, timeout: Option<Duration>) -> io::Result<()> {
        let to_submit = self.ring.submission().len() as u32;
        let mut flags = EnterFlags::GETEVENTS;
        let ts;
        let args;
        self.table.stats.kernel_enters += 1;
        self.table.stats.syscalls += 1;
        let result = match timeout {
            Some(t) if !t.is_zero() => {
                ts = Timespec::from(t);
                args = SubmitArgs::new().timespec(&ts);
                flags |= EnterFlags::EXT_ARG;
                // SAFETY: `args` and the timespec it points to live across the call; the SQEs
                // being submitted were pushed under `push`'s contract.
                unsafe {
                    self.ring
                        .submitter()
                        .enter(to_submit, min_complete, flags.bits(), Some(&args))
                }
            }
            _ => {
                // SAFETY: no argument pointer; the SQEs obey `push`'s contract.
                unsafe {
                    self.ring.submitter().enter::<libc::sigset_t>(
                        to_submit,
                        min_complete,
                        flags.bits(),
                        None,
                    )
                }
            }
        };
        match result {
            Ok(_) => Ok(()),
            // ETIME: the timeout passed; EINTR: a signal; EBUSY/EAGAIN: the CQ is full or the
            // kernel is short of memory for a moment, and the completions are reaped right
            // after. None of them loses anything.
            Err(e) if e.raw_os_error() == Some(libc::ETIME) || is_transient(&e) => Ok(()),
            Err(e) => {
                self.table.stats.enter_errors += 1;
                Err(e)
            }
        }
    }

    /// Hands every completion in the CQ to the op table; re-arms the wake poll if it ended.
    fn reap(&mut self) {
        let mut drain_wake = false;
        for cqe in self.ring.completion() {
            let (ud, result, flags) = (cqe.user_data(), cqe.result(), cqe.flags());
            if ud == WAKE_TAG {
                drain_wake = true;
                if !cqueue::more(flags) {
                    self.wake_armed = false;
                }
            } else {
                self.table.complete(ud, result, flags);
            }
        }
        if drain_wake {
            drain_eventfd(self.wake_fd);
        }
        if !self.wake_armed {
            self.arm_wake();
        }
    }

    /// Shutdown: cancel every op the kernel holds and reap until none is left, for at most
    /// `bound`. A cancel that finds nothing is sent again. Whatever is still in flight then is
    /// leaked (never freed while the kernel may write it). Ops whose futures are alive keep
    /// their slots: a later poll gets the reaped result (usually `ECANCELED`).
    pub(crate) fn shutdown(&mut self, bound: Duration) {
        let keys = self.table.live_keys();
        for key in keys {
            self.multishot_orphan(key);
        }
        let deadline = Instant::now() + bound;
        loop {
            let live = self.table.live_keys();
            if live.is_empty() || Instant::now() >= deadline {
                break;
            }
            for key in live {
                self.cancel(key);
            }
            if self.park(Some(Duration::from_millis(10))).is_err() {
                break;
            }
        }
        self.table.leak_in_flight();
    }
}

impl Drop for Uring {
    /// The ring goes with the driver: if ops are still in it (a shutdown that was never run,
    /// or that a panic cut short), their memory is leaked rather than freed under the kernel.
    fn drop(&mut self) {
        self.table.leak_in_flight();
    }
}

fn drain_eventfd(fd: i32) {
    let mut buf = 0u64;
    // SAFETY: reads 8 bytes into a live local from the runtime's own non-blocking eventfd.
    let _ = unsafe { libc::read(fd, &mut buf as *mut u64 as *mut libc::c_void, 8) };
}
