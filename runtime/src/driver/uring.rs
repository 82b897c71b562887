//! The io_uring backend: ops in a slab, one `io_uring_enter` per loop iteration that submits and
//! reaps together, timers through the wait timeout (EXT_ARG), cross-thread wakes through a
//! multishot poll on the eventfd, or as a completion another ring posts here with
//! `IORING_OP_MSG_RING` (see [`Uring::send_wake`]).
//!
//! The op table and the life cycle of a slot are in [`slots`](super::slots): a pure state
//! machine over completions. This file is the kernel side: the ring, pushing SQEs, entering,
//! and feeding each completion to the table.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use io_uring::types::{SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, types, EnterFlags, IoUring, Probe};
use slab::Slab;

use std::rc::Rc;

use super::bufpool::{BufPool, POOL_GROUP};
use super::errno::is_transient;
use super::op::Orphan;
use super::slots::{
    FinishedOrphans, MultishotNext, OpTable, SlotState, CANCEL_BIT, LINK_TIMEOUT_TAG, MSG_SENT_BIT,
    MSG_TAG, WAKE_TAG,
};
use super::wake::{RingPin, WakeTarget};
use super::{MultishotKind, OpKey, SharedFd, WakeFd};

/// At most this many multishot ops armed and the ring can still be [`Uring::nearly_idle`].
const LONE_MULTISHOTS: usize = 2;
/// The CQ holds at least this many completions (and at most the kernel's limit, 65 536 with
/// `CLAMP`): every connection of a 10 000-connection server may post a receive and a send
/// completion in one loop iteration, and overflowing the CQ makes the kernel keep the rest in
/// a slower backlog.
const MIN_CQ_ENTRIES: u32 = 32 * 1024;
/// At most this many `MSG_RING` wakes in flight; past it a wake takes the eventfd. Each targets
/// a loop that was parked, and a loop is unparked at most once per park, so this is a bound on
/// the loops one iteration wakes, not a limit anyone meets.
const MAX_MSGS: usize = 4096;

pub(crate) struct Uring {
    ring: IoUring,
    /// The deadlines of linked timeouts the kernel may not have read yet (declared after
    /// `ring`, so they go after it).
    timespecs: LinkTimespecs,
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
    /// The `MSG_RING` wakes this ring sends to other rings.
    msgs: MsgWakes,
    /// How the ring was set up, for `Runtime::backend_info`.
    pub(crate) setup: &'static str,
}

/// The `MSG_RING` wakes a ring sends to other rings (see [`Uring::send_wake`]).
struct MsgWakes {
    /// Wakes are sent this way: the kernel has the opcode (and `IOSQE_CQE_SKIP_SUCCESS`), the
    /// runtime did not turn them off, and no message has failed for good.
    on: bool,
    /// Messages pushed since the submission queue was last seen empty after a kernel entry,
    /// by the index in their `user_data`: each pins its target's ring descriptor until the
    /// kernel has taken its SQE, and names the target for a fallback if it fails.
    pending: Slab<RingPin>,
    /// Tells a message's `user_data` from an earlier one's with the same index (high half).
    generation: u32,
}

impl MsgWakes {
    fn user_data(&self, index: usize) -> u64 {
        MSG_SENT_BIT | index as u64 | (u64::from(self.generation) << 32)
    }

    /// The completion of a message this ring sent, which only a failure posts
    /// (`IOSQE_CQE_SKIP_SUCCESS`): wake its target through its eventfd instead.
    fn failed(&mut self, ud: u64, result: i32) {
        let index = (ud & 0xffff_ffff & !MSG_SENT_BIT) as usize;
        if (ud >> 32) as u32 != self.generation || !self.pending.contains(index) {
            // Posted after its message was released: see `released`.
            return;
        }
        let pin = self.pending.remove(index);
        pin.target().wake_eventfd();
        // EOWNERDEAD: the target's thread is gone; EOVERFLOW, ENOMEM, EAGAIN: its queue was
        // full, or the kernel short of memory, for a moment. Anything else (a kernel that
        // refuses the message, say) would fail every time: stop sending them.
        if !matches!(
            -result,
            libc::EOWNERDEAD | libc::EOVERFLOW | libc::ENOMEM | libc::EAGAIN | libc::EINTR
        ) {
            self.on = false;
        }
    }

    /// The kernel has taken every SQE pushed so far, and the completions of those that failed
    /// at once have been reaped: the rest were delivered. Unpins their targets (the kernel
    /// holds its own reference to each target ring from the moment it read the SQE) and
    /// counts them.
    ///
    /// Current kernels complete a message inline, in the entry that submits it. Older ones
    /// (since 6.2) complete one to a `DEFER_TASKRUN` ring later, from the target's thread; its
    /// failure then comes after this release (the target thread exiting, or the kernel out of
    /// memory) and finds no entry: no fallback, where none is needed but in the memory case.
    fn released(&mut self, stats: &mut super::DriverStats) {
        if self.pending.is_empty() {
            return;
        }
        stats.msg_ring_wakes += self.pending.len() as u64;
        self.pending.clear();
        self.generation = self.generation.wrapping_add(1);
    }
}

/// The timespecs of `IORING_OP_LINK_TIMEOUT`s (ops' deadlines), kept until the kernel has
/// read them.
///
/// The kernel copies a timeout's timespec when it consumes the SQE (`IORING_FEAT_SUBMIT_STABLE`,
/// Linux 5.5, below the 5.11 this backend requires): from then on the timespec is not used
/// again, whatever becomes of the op. So the driver, not the op, owns it: an op future may be
/// dropped while its SQE still waits in the submission queue, and the memory an SQE points to
/// must outlive that. Every timespec held is released once the submission queue has been seen
/// empty after a kernel entry (the kernel has consumed everything pushed so far), the same
/// point `MsgWakes::released` uses; each sits in a box of its own, so it never moves.
#[derive(Default)]
#[allow(
    clippy::vec_box,
    reason = "the kernel holds each timespec's address: a Vec's own storage moves when it grows"
)]
struct LinkTimespecs {
    /// Pushed in an SQE the kernel may not have consumed yet.
    held: Vec<Box<Timespec>>,
    /// Released, for the next ones (at most `KEEP_TIMESPECS`).
    free: Vec<Box<Timespec>>,
}

/// Free timespec boxes kept for reuse.
const KEEP_TIMESPECS: usize = 1024;

impl LinkTimespecs {
    /// Holds `ts` at an address that stays valid until [`released`](Self::released).
    fn hold(&mut self, ts: Timespec) -> *const Timespec {
        let b = match self.free.pop() {
            Some(mut b) => {
                *b = ts;
                b
            }
            None => Box::new(ts),
        };
        let p: *const Timespec = &*b;
        self.held.push(b);
        p
    }

    /// The kernel has consumed every SQE pushed so far: nothing held is needed any more.
    #[inline]
    fn released(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let room = KEEP_TIMESPECS.saturating_sub(self.free.len());
        let keep = self.held.len().min(room);
        self.free.extend(self.held.drain(..keep));
        self.held.clear();
    }
}

/// `at` as an absolute `CLOCK_MONOTONIC` timespec for `IORING_TIMEOUT_ABS`.
///
/// `Instant` is `CLOCK_MONOTONIC` on Linux (std reads it with `clock_gettime`), and the
/// kernel's timeouts use that clock unless told otherwise, but `Instant` does not show its
/// reading: `at` is placed against a fresh reading of the clock, taken *after* `Instant::now()`,
/// so the kernel's deadline is never earlier than `at` (a link timeout that fired means
/// `Instant::now() >= at`; the two readings are nanoseconds apart).
pub(crate) fn monotonic_timespec(at: Instant) -> Timespec {
    let now = Instant::now();
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live local the call writes; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let clock = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
    let abs = match at.checked_duration_since(now) {
        Some(ahead) => clock.saturating_add(ahead),
        None => clock.saturating_sub(now - at),
    };
    // The kernel's limit for seconds is an i64 (larger is saturated to "never" there anyway).
    let abs = abs.min(Duration::from_secs(i64::MAX as u64));
    Timespec::from(abs)
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
    opcode::LinkTimeout::CODE,
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
        let msg_ring = probe.is_supported(opcode::MsgRingData::CODE)
            && ring.params().is_feature_skip_cqe_on_success();
        let mut uring = Uring {
            ring,
            timespecs: LinkTimespecs::default(),
            dropped_seen: 0,
            wake_armed: false,
            wake_fd: wake.raw(),
            send_zc: probe.is_supported(opcode::SendZc::CODE),
            recv_bundle,
            free_file_slots: Vec::new(),
            msgs: MsgWakes {
                on: msg_ring,
                pending: Slab::new(),
                generation: 0,
            },
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
            self.make_room(&mut transient)?;
        }
    }

    /// Pushes `sqes` together, as [`push`](Self::push) does one: all of them go into the SQ,
    /// adjacent, or none does. A linked chain must never be split across a submission (the
    /// kernel would see a link flag with nothing after it), so when the SQ lacks room for all
    /// of them, what is queued is submitted first.
    ///
    /// # Safety
    /// As [`push`](Self::push), for every entry.
    unsafe fn push_all(&mut self, sqes: &[squeue::Entry]) -> io::Result<()> {
        let mut transient = 0;
        loop {
            // SAFETY: forwarded from the caller.
            if unsafe { self.ring.submission().push_multiple(sqes) }.is_ok() {
                return Ok(());
            }
            self.make_room(&mut transient)?;
        }
    }

    /// The SQ has no room for what [`push`](Self::push) or [`push_all`](Self::push_all) wants
    /// to add: submits what is queued (reaping when the kernel cannot take it yet). `transient`
    /// counts the refusals in a row; an error means the kernel will not take entries.
    #[cold]
    fn make_room(&mut self, transient: &mut u32) -> io::Result<()> {
        // The SQ is full: hand what is queued to the kernel and retry. If the kernel cannot
        // take them now (EBUSY: the CQ is backed up), reap and retry.
        self.table.stats.kernel_enters += 1;
        self.table.stats.syscalls += 1;
        match self.ring.submit() {
            Ok(_) => *transient = 0,
            Err(e) if is_transient(&e) && *transient < 1000 => {
                *transient += 1;
                // Why reap here: EBUSY means the CQ is full (kernels before 6.0 refuse
                // submissions while overflowed completions cannot be flushed). Entering again
                // frees no CQ slot; only advancing the CQ head does, so without this the loop
                // would spin forever. Reaping only records results and collects wakers (woken
                // later, by the loop); no slot is freed whose SQE is pending.
                let _ = self.enter(0, Some(Duration::ZERO));
                self.reap();
            }
            Err(e) => {
                // Any other error (EBADF, EFAULT, ENXIO: the ring is unusable) would fail the
                // same way forever: report it instead of spinning.
                self.table.stats.enter_errors += 1;
                return Err(e);
            }
        }
        Ok(())
    }

    /// A duplicate of this ring's descriptor, for other rings to send `MSG_RING` wakes to (see
    /// [`WakeTarget`]); `None` if the kernel lacks `MSG_RING` (before 5.18), or wakes through
    /// the ring are off.
    pub(crate) fn wake_ring_fd(&self) -> Option<OwnedFd> {
        if !self.msgs.on {
            return None;
        }
        // SAFETY: `fcntl(F_DUPFD_CLOEXEC)` takes no pointer; the ring's descriptor is open
        // while `self` lives. A negative return is an error, else a new descriptor we own.
        let fd = unsafe { libc::fcntl(self.ring.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: `fd` is fresh and nobody else's.
        Some(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Turns wakes through the ring off for this driver: it sends no `MSG_RING`.
    pub(crate) fn disable_msg_ring(&mut self) {
        self.msgs.on = false;
    }

    /// Wakes the parked loop `target` with an `IORING_OP_MSG_RING` on this ring, instead of a
    /// `write(2)` to its eventfd; false if that cannot be done (the caller writes the eventfd).
    ///
    /// The SQE goes to the kernel with [`flush_wakes`](Self::flush_wakes), which the loop
    /// calls at the end of the task poll that queued it (so the wakes of one poll cost one
    /// entry), when it is left, and before a blocking call waits; or with the loop's next park,
    /// whichever comes first. It posts a completion tagged `MSG_TAG` on the target's ring,
    /// which ends the target's wait like any completion (a target that is not waiting keeps
    /// it, and its next park returns at once, as an eventfd stays readable). It posts nothing
    /// here unless it fails (`IOSQE_CQE_SKIP_SUCCESS`), so a park that submits it still
    /// sleeps. The target reads no eventfd.
    ///
    /// The SQE names the target's ring by descriptor number, and the number must not go to
    /// another file before the kernel reads the SQE: a [`RingPin`] keeps the target's
    /// duplicate descriptor open until a kernel entry has taken every SQE queued (see
    /// `MsgWakes::released`). A message that fails at once (the target's thread is gone, its
    /// CQ overflowed) posts its error, reaped right after that entry: the target is woken
    /// through its eventfd then.
    pub(crate) fn send_wake(&mut self, target: &Arc<WakeTarget>) -> bool {
        if !self.msgs.on || self.msgs.pending.len() >= MAX_MSGS {
            return false;
        }
        let Some(pin) = target.pin_ring() else {
            return false;
        };
        let fd = pin.fd();
        let index = self.msgs.pending.insert(pin);
        let sqe = opcode::MsgRingData::new(types::Fd(fd), 0, MSG_TAG, None)
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(self.msgs.user_data(index));
        // SAFETY: the SQE points to no memory; its one descriptor is the target's ring, which
        // the pin just stored in `msgs` keeps open (the same file, so the number cannot be
        // reused) until the kernel has read the SQE, or until this ring is dropped (then it
        // never will).
        if unsafe { self.push(&sqe) }.is_err() {
            // Never reached the ring.
            drop(self.msgs.pending.try_remove(index));
            return false;
        }
        true
    }

    /// Hands the `MSG_RING` wakes in the submission queue to the kernel now (with whatever
    /// else is queued there). Completions are reaped (the wakers they collect are woken by the
    /// loop's next iteration), so a message that failed at once is seen.
    pub(crate) fn flush_wakes(&mut self) {
        if self.msgs.pending.is_empty() || self.ring.submission().is_empty() {
            return;
        }
        self.table.stats.kernel_enters += 1;
        self.table.stats.syscalls += 1;
        let submitted = self.ring.submit();
        self.reap();
        if submitted.is_ok() && self.ring.submission().is_empty() {
            self.msgs.released(&mut self.table.stats);
            self.timespecs.released();
        } else {
            // Not submitted now: wake the targets the slow way (a later submission only adds a
            // spurious wake).
            for (_, pin) in &self.msgs.pending {
                pin.target().wake_eventfd();
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
        unsafe { self.insert(sqe, OpTable::armed(waker)) }
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
        self.flush_cancels();
        // `keep` holds the descriptor open until the slot is freed by the last completion.
        let key = self
            .table
            .insert_multishot(OpTable::multishot(kind, cap), keep)?;
        // SAFETY: forwarded from the caller.
        unsafe { self.push_or_free(sqe, key) }
    }

    /// Arms an op that must complete by `deadline`: its SQE gets `IOSQE_IO_LINK` and is
    /// followed in the SQ by an `IORING_OP_LINK_TIMEOUT` at `deadline` (absolute,
    /// `CLOCK_MONOTONIC`), both pushed together. If the timeout fires first, the kernel cancels
    /// the op, which completes with `ECANCELED` (or `EINTR` if a worker was running it); if the
    /// op completes first, whatever it did is its result and the timeout is disarmed. Either
    /// way the op's own completion decides; the timeout's (tagged `LINK_TIMEOUT_TAG`, `ETIME`
    /// when it fired, `ECANCELED` when disarmed, `ENOENT`/`EALREADY` when it fired as the op
    /// was completing) is only counted, and may come before or after it. A deadline already
    /// past still lets the kernel try the op once: an op that completes when issued is not
    /// cancelled.
    ///
    /// # Safety
    /// As [`push`](Self::push), for the op's entry.
    pub(crate) unsafe fn submit_linked(
        &mut self,
        sqe: squeue::Entry,
        deadline: Instant,
        waker: &Waker,
    ) -> io::Result<OpKey> {
        self.flush_cancels();
        let key = self.table.insert(OpTable::armed(waker))?;
        let ts = self.timespecs.hold(monotonic_timespec(deadline));
        let pair = [
            sqe.flags(squeue::Flags::IO_LINK).user_data(key.0),
            opcode::LinkTimeout::new(ts)
                .flags(types::TimeoutFlags::ABS)
                .build()
                .user_data(LINK_TIMEOUT_TAG),
        ];
        // SAFETY: the op's entry: forwarded from the caller. The timeout's points only at `ts`,
        // which `self.timespecs` keeps until the kernel has consumed the entry (or the ring is
        // gone).
        if let Err(e) = unsafe { self.push_all(&pair) } {
            // Neither entry reached the ring (the timespec goes at the next release).
            drop(self.table.remove_unsubmitted(key));
            return Err(e);
        }
        Ok(key)
    }

    /// Takes a slot for the single-shot `state` and pushes `sqe` tagged with its key. On
    /// error nothing is in the ring and the slot is freed again.
    ///
    /// # Safety
    /// As [`push`](Self::push).
    unsafe fn insert(&mut self, sqe: squeue::Entry, state: SlotState) -> io::Result<OpKey> {
        self.flush_cancels();
        let key = self.table.insert(state)?;
        // SAFETY: forwarded from the caller.
        unsafe { self.push_or_free(sqe, key) }
    }

    /// Pushes `sqe` tagged with `key`, a slot just taken; if that fails, nothing is in the
    /// ring and the slot is freed again.
    ///
    /// # Safety
    /// As [`push`](Self::push).
    unsafe fn push_or_free(&mut self, sqe: squeue::Entry, key: OpKey) -> io::Result<OpKey> {
        // SAFETY: forwarded from the caller.
        if let Err(e) = unsafe { self.push(&sqe.user_data(key.0)) } {
            // Never reached the ring: nobody else knows the slot.
            drop(self.table.remove_unsubmitted(key));
            return Err(e);
        }
        Ok(key)
    }

    /// Arms an op nobody awaits: its data goes into the slot at once, as an orphan's, and
    /// its completion finishes it (no cancel is sent). On an error the entry is not in the
    /// ring and the data comes back.
    ///
    /// # Safety
    /// As [`push`](Self::push); `data` owns what the entry points to.
    pub(crate) unsafe fn submit_detached(
        &mut self,
        sqe: squeue::Entry,
        data: Box<dyn Orphan>,
    ) -> Result<OpKey, (io::Error, Box<dyn Orphan>)> {
        self.flush_cancels();
        let key = match self.table.try_insert(SlotState::Orphaned(data)) {
            Ok(key) => key,
            Err(SlotState::Orphaned(data)) => {
                return Err((io::Error::other("too many io_uring ops in flight"), data))
            }
            Err(_) => unreachable!("the state given back is the one given"),
        };
        // SAFETY: forwarded from the caller.
        if let Err(e) = unsafe { self.push(&sqe.user_data(key.0)) } {
            // Never reached the ring: the data is the caller's again.
            return match self.table.remove_unsubmitted(key) {
                Some(SlotState::Orphaned(data)) => Err((e, data)),
                _ => unreachable!("the slot was just made with the data"),
            };
        }
        Ok(key)
    }

    /// The op's result if its completion arrived (the slot is freed), else updates its waker.
    pub(crate) fn take(&mut self, key: OpKey, waker: &Waker) -> Option<(i32, u32)> {
        self.table.take(key, waker)
    }

    /// See [`OpTable::multishot_next_draining`].
    #[inline]
    pub(crate) fn multishot_next(
        &mut self,
        key: OpKey,
        waker: &Waker,
        draining: bool,
    ) -> MultishotNext {
        self.table.multishot_next_draining(key, waker, draining)
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

    /// Orphans whose completion arrived, moved into `out`, to be finished by the caller
    /// outside the borrow.
    pub(crate) fn take_finished_orphans(&mut self, out: &mut FinishedOrphans) {
        self.table.take_finished_orphans(out)
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
        if self.ring.submission().is_empty() {
            // Every `MSG_RING` queued went with this entry, and those that failed at once were
            // just reaped; every link timeout's timespec was read.
            self.msgs.released(&mut self.table.stats);
            self.timespecs.released();
        }
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
            } else if ud == MSG_TAG {
                // Another ring's wake: it has ended the wait, nothing more to do.
            } else if ud == LINK_TIMEOUT_TAG {
                // An op's deadline: the op's own completion says what happened.
            } else if ud & (MSG_SENT_BIT | CANCEL_BIT) == MSG_SENT_BIT {
                self.msgs.failed(ud, result);
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
            // Wakes this ring sent to other loops go out too, and come back, before the ring
            // goes (a teardown drops tasks, whose channel ends wake their peers).
            if (live.is_empty() && self.msgs.pending.is_empty()) || Instant::now() >= deadline {
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
        // `MSG_RING` wakes not seen submitted: maybe still in the submission queue, which
        // nobody will submit now. Wake those loops through their eventfds (a spurious wake if
        // the message did go); unpinning is safe, because the kernel either holds its own
        // reference to the target's ring already or will never read the SQE.
        for pin in self.msgs.pending.drain() {
            pin.target().wake_eventfd();
        }
    }
}

fn drain_eventfd(fd: i32) {
    let mut buf = 0u64;
    // SAFETY: reads 8 bytes into a live local from the runtime's own non-blocking eventfd.
    let _ = unsafe { libc::read(fd, &mut buf as *mut u64 as *mut libc::c_void, 8) };
}

#[cfg(all(test, not(ringloop_loom)))]
mod tests {
    //! The bookkeeping of `MSG_RING` wakes, fed fake completions (no ring needed): a failure
    //! wakes the target's eventfd and unpins it, a release counts and unpins the rest, a
    //! failure posted after its release changes nothing, and only a lasting error turns the
    //! transport off.

    use std::os::fd::{FromRawFd, OwnedFd};
    use std::sync::Arc;

    use slab::Slab;

    use super::MsgWakes;
    use crate::driver::wake::WakeTarget;
    use crate::driver::{DriverStats, WakeFd};

    /// A target whose "ring" is a descriptor of our own (never used as a ring here).
    fn target() -> Arc<WakeTarget> {
        // SAFETY: eventfd takes no pointers; the result is checked and owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fresh and ours.
        let ring = unsafe { OwnedFd::from_raw_fd(fd) };
        Arc::new(WakeTarget::new(WakeFd::new().unwrap(), Some(ring)))
    }

    /// Whether the target's eventfd was written (and resets it).
    fn woken(t: &WakeTarget) -> bool {
        let mut buf = 0u64;
        // SAFETY: reads 8 bytes into a live local from a non-blocking eventfd of ours.
        let n = unsafe {
            libc::read(
                t.eventfd().raw(),
                &mut buf as *mut u64 as *mut libc::c_void,
                8,
            )
        };
        n == 8
    }

    fn msgs() -> MsgWakes {
        MsgWakes {
            on: true,
            pending: Slab::new(),
            generation: 0,
        }
    }

    #[test]
    fn a_failed_message_wakes_its_target_through_the_eventfd_and_unpins_it() {
        let (a, b) = (target(), target());
        let mut m = msgs();
        let ia = m.pending.insert(a.pin_ring().unwrap());
        let ib = m.pending.insert(b.pin_ring().unwrap());
        m.failed(m.user_data(ia), -libc::EOWNERDEAD);
        assert!(woken(&a));
        assert!(!woken(&b));
        assert!(
            m.on,
            "a target whose thread is gone says nothing about the kernel"
        );
        // `a` is unpinned: once retired, its descriptor goes at once.
        a.retire_ring();
        assert!(a.pin_ring().is_none());
        let mut stats = DriverStats::default();
        m.released(&mut stats);
        assert_eq!(stats.msg_ring_wakes, 1, "only b's message was delivered");
        assert!(m.pending.is_empty());
        // A failure posted after its message was released finds nothing.
        m.failed(m.user_data(ib) - (1 << 32), -libc::EOVERFLOW);
        assert!(!woken(&b));
        drop(b.pin_ring().expect("b was never retired"));
    }

    #[test]
    fn a_lasting_error_turns_the_transport_off() {
        let t = target();
        let mut m = msgs();
        let i = m.pending.insert(t.pin_ring().unwrap());
        m.failed(m.user_data(i), -libc::EINVAL);
        assert!(woken(&t));
        assert!(!m.on);
    }

    #[test]
    fn a_retired_ring_is_closed_once_its_last_pin_goes() {
        let t = target();
        let pin = t.pin_ring().unwrap();
        let fd = pin.fd();
        t.retire_ring();
        assert!(t.pin_ring().is_none(), "no new pin once retired");
        // SAFETY: F_GETFD reads the descriptor's flags; no pointer.
        assert!(
            unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0,
            "open while pinned"
        );
        drop(pin);
        // Closed now (the number may already be another test's descriptor, so it is not
        // probed); the target still hands out none.
        assert!(t.pin_ring().is_none());
    }
}
