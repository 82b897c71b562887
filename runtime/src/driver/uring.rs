//! The io_uring backend: ops in a slab, one `io_uring_enter` per loop iteration that submits and
//! reaps together, timers through the wait timeout (EXT_ARG), cross-thread wakes through a
//! multishot poll on the eventfd.
//!
//! # Op slots
//!
//! Every op the kernel may still hold has a slot. `user_data` is the slot index in the low 32
//! bits and the slot's generation in the high 32, so a completion for a slot that was freed and
//! reused can never wake the wrong task. A few values at the top of the range tag internal
//! SQEs (the wake poll, cancel requests).
//!
//! ```text
//!  submit ──▶ Armed{waker} ──CQE──▶ Done{res,flags} ──future takes it──▶ (freed)
//!               │
//!               └─future dropped──▶ Orphaned{op data} + ASYNC_CANCEL ──CQE──▶ (freed, data dropped)
//! ```
//!
//! A zero-copy send completes twice: its result (with `F_MORE`), then a notification once the
//! kernel no longer reads the buffer. The slot holds the result back (`AwaitingNotif`) until
//! the notification, so the buffer is never given back while the kernel may still read it.
//!
//! Once an SQE is in the ring its slot is never freed on an error path: only its own CQE frees
//! it.

use std::collections::VecDeque;
use std::io;
use std::task::Waker;
use std::time::{Duration, Instant};

use io_uring::types::{SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, types, EnterFlags, IoUring, Probe};
use slab::Slab;

use std::rc::Rc;

use super::bufpool::{BufPool, POOL_GROUP};
use super::errno::is_transient;
use super::op::Orphan;
use super::{DriverStats, MultishotKind, OpKey, SharedFd, WakeFd};

/// `user_data` of the multishot poll on the wake eventfd.
const WAKE_TAG: u64 = u64::MAX;
/// Set in the `user_data` of an `ASYNC_CANCEL` SQE, whose other bits are its target's key: its
/// completion says whether the cancel found the op.
const CANCEL_BIT: u64 = 1 << 31;
/// At most this many multishot ops armed and the ring can still be [`Uring::nearly_idle`].
const LONE_MULTISHOTS: usize = 2;
/// Slot indices stay below this, so no op's `user_data` has `CANCEL_BIT` or is `WAKE_TAG`.
const MAX_SLOTS: usize = CANCEL_BIT as usize;
/// The CQ holds at least this many completions (and at most the kernel's limit, 65 536 with
/// `CLAMP`): every connection of a 10 000-connection server may post a receive and a send
/// completion in one loop iteration, and overflowing the CQ makes the kernel keep the rest in
/// a slower backlog.
const MIN_CQ_ENTRIES: u32 = 32 * 1024;

enum SlotState {
    /// In the kernel; the future waits with this waker.
    Armed(Option<Waker>),
    /// The completion arrived; the future has not taken it yet.
    Done { result: i32, flags: u32 },
    /// A zero-copy send's result arrived with `F_MORE`: the kernel still reads the buffer until
    /// its notification completion, so the result is held back (and the future not woken) until
    /// then.
    AwaitingNotif {
        waker: Option<Waker>,
        result: i32,
        flags: u32,
    },
    /// As `AwaitingNotif`, for an op whose future is gone.
    OrphanAwaitingNotif {
        data: Box<dyn Orphan>,
        result: i32,
        flags: u32,
    },
    /// The future was dropped; the op's data stays here until the completion arrives.
    Orphaned(Box<dyn Orphan>),
    /// A multishot op owned by a connection: completions queue here until read. `ended`:
    /// the last completion (without `F_MORE`) is in the queue.
    Multishot {
        kind: MultishotKind,
        /// At this many unread completions the op is cancelled: the peer is back-pressured
        /// (the data waits in the socket) instead of filling the pool.
        cap: u32,
        queue: CompletionQueue,
        waker: Option<Waker>,
        ended: bool,
    },
    /// A multishot op whose owner is gone: completions are disposed of (buffers recycled,
    /// accepted sockets closed) until the last one frees the slot.
    OrphanedMultishot(MultishotKind),
}

/// A multishot op's unread completions, oldest first. A ping-pong connection has at most one
/// waiting at a time, so the first lives inline and only a backlog allocates: at 10 000
/// connections that is 10 000 allocations fewer.
#[derive(Default)]
struct CompletionQueue {
    /// When set, older than everything in `rest` (a completion only goes here when `rest` is
    /// empty).
    first: Option<(i32, u32)>,
    rest: VecDeque<(i32, u32)>,
}

impl CompletionQueue {
    fn push_back(&mut self, completion: (i32, u32)) {
        if self.first.is_none() && self.rest.is_empty() {
            self.first = Some(completion);
        } else {
            self.rest.push_back(completion);
        }
    }

    fn pop_front(&mut self) -> Option<(i32, u32)> {
        self.first.take().or_else(|| self.rest.pop_front())
    }

    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }
}

impl IntoIterator for CompletionQueue {
    type Item = (i32, u32);
    type IntoIter = std::iter::Chain<
        std::option::IntoIter<(i32, u32)>,
        std::collections::vec_deque::IntoIter<(i32, u32)>,
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.first.into_iter().chain(self.rest)
    }
}

struct Slot {
    generation: u32,
    /// An `ASYNC_CANCEL` was queued for this op and has not come back empty-handed.
    cancel_queued: bool,
    state: SlotState,
    /// A multishot's descriptor, kept open until the op's last completion (the owner may go
    /// first, and a number or registered slot must not be reused under the kernel).
    keep: Option<SharedFd>,
}

fn user_data(index: usize, generation: u32) -> u64 {
    ((generation as u64) << 32) | index as u64
}

fn split_user_data(user_data: u64) -> (usize, u32) {
    ((user_data & 0xffff_ffff) as usize, (user_data >> 32) as u32)
}

pub(crate) struct Uring {
    ring: IoUring,
    ops: Slab<Slot>,
    next_generation: u32,
    /// Ops to cancel, flushed into the SQ before any new SQE: a cancel must never be lost,
    /// even when the SQ is full.
    cancels: VecDeque<u64>,
    /// Orphans whose completion arrived; finished outside the driver's borrow because
    /// finishing one runs its `complete` (which may close sockets, and so call back in).
    finished_orphans: Vec<(Box<dyn Orphan>, i32, u32)>,
    /// Wakers collected while reaping, woken by the loop after the driver's borrow ends (a
    /// waker is foreign code, which may drop ops).
    woken: Vec<Waker>,
    /// The kernel's count of completions it had to drop (`koverflow`), as last read.
    dropped_seen: u32,
    /// The wake poll is armed (re-armed when a completion ends it).
    wake_armed: bool,
    /// Multishot slots in `ops` (armed, or orphaned and draining).
    multishots: usize,
    wake_fd: i32,
    /// The provided-buffer pool registered with this ring (group `POOL_GROUP`).
    pub(crate) pool: Rc<BufPool>,
    /// The kernel supports `SEND_ZC` (6.0+).
    pub(crate) send_zc: bool,
    /// The kernel supports receive bundles (6.10+).
    pub(crate) recv_bundle: bool,
    /// Free slots of the registered file table (empty when the table is not in use).
    free_file_slots: Vec<u32>,
    /// How the ring was set up, for `Runtime::backend_info`.
    pub(crate) setup: &'static str,
    pub(crate) stats: DriverStats,
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
            ops: Slab::with_capacity(256),
            next_generation: 0,
            cancels: VecDeque::new(),
            finished_orphans: Vec::new(),
            woken: Vec::new(),
            dropped_seen: 0,
            wake_armed: false,
            multishots: 0,
            wake_fd: wake.raw(),
            send_zc: probe.is_supported(opcode::SendZc::CODE),
            recv_bundle,
            free_file_slots: Vec::new(),
            pool,
            setup,
            stats: DriverStats::default(),
        };
        uring.arm_wake();
        Ok(uring)
    }

    fn arm_wake(&mut self) {
        let sqe = opcode::PollAdd::new(types::Fd(self.wake_fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(WAKE_TAG);
        // SAFETY: the poll references only the eventfd, which `Shared` keeps open for the
        // runtime's whole life (longer than the ring).
        // A refused push leaves it unarmed; the next reap tries again.
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
            self.stats.kernel_enters += 1;
            self.stats.syscalls += 1;
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
                    self.stats.enter_errors += 1;
                    return Err(e);
                }
            }
        }
    }

    fn flush_cancels(&mut self) {
        while let Some(target) = self.cancels.front().copied() {
            let sqe = opcode::AsyncCancel::new(target)
                .build()
                .user_data(target | CANCEL_BIT);
            // SAFETY: a cancel SQE carries only a user_data value, no pointer.
            if unsafe { self.push(&sqe) }.is_err() {
                // Kept queued: a cancel is never lost; the next park tries again.
                return;
            }
            self.cancels.pop_front();
        }
    }

    /// Arms an op. The caller guarantees the SQE's memory outlives the op's completion.
    ///
    /// # Safety
    /// As [`push`](Self::push).
    pub(crate) unsafe fn submit(&mut self, sqe: squeue::Entry, waker: &Waker) -> io::Result<OpKey> {
        // SAFETY: forwarded from the caller.
        unsafe { self.insert(sqe, SlotState::Armed(Some(waker.clone())), None) }
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
        if self.ops.vacant_key() >= MAX_SLOTS {
            return Err(io::Error::other("too many io_uring ops in flight"));
        }
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let multishot = matches!(state, SlotState::Multishot { .. });
        let index = self.ops.insert(Slot {
            generation,
            cancel_queued: false,
            state,
            keep,
        });
        let key = user_data(index, generation);
        // SAFETY: forwarded from the caller.
        if let Err(e) = unsafe { self.push(&sqe.user_data(key)) } {
            // Never reached the ring: nobody else knows the slot.
            self.ops.remove(index);
            return Err(e);
        }
        if multishot {
            self.multishots += 1;
        }
        self.stats.ops_submitted += 1;
        Ok(OpKey(key))
    }

    fn slot_mut(&mut self, key: OpKey) -> Option<&mut Slot> {
        let (index, generation) = split_user_data(key.0);
        self.ops
            .get_mut(index)
            .filter(|s| s.generation == generation)
    }

    /// The op's result if its completion arrived (the slot is freed), else updates its waker.
    pub(crate) fn take(&mut self, key: OpKey, waker: &Waker) -> Option<(i32, u32)> {
        let slot = self.slot_mut(key)?;
        match &mut slot.state {
            SlotState::Done { result, flags } => {
                let r = (*result, *flags);
                let (index, _) = split_user_data(key.0);
                self.ops.remove(index);
                Some(r)
            }
            SlotState::Armed(w) => {
                match w {
                    Some(w) if w.will_wake(waker) => {}
                    _ => *w = Some(waker.clone()),
                }
                None
            }
            SlotState::AwaitingNotif { waker: w, .. } => {
                match w {
                    Some(w) if w.will_wake(waker) => {}
                    _ => *w = Some(waker.clone()),
                }
                None
            }
            SlotState::Orphaned(_)
            | SlotState::OrphanAwaitingNotif { .. }
            | SlotState::Multishot { .. }
            | SlotState::OrphanedMultishot(_) => None,
        }
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
        let state = SlotState::Multishot {
            kind,
            cap: u32::try_from(cap).unwrap_or(u32::MAX).max(1),
            queue: CompletionQueue::default(),
            waker: None,
            ended: false,
        };
        // SAFETY: forwarded from the caller; `keep` holds the descriptor open until the slot
        // is freed by the last completion.
        unsafe { self.insert(sqe, state, Some(keep)) }
    }

    /// The next completion of a multishot op; `Ok(None)` once the last one was read (the slot
    /// is freed); `Err(())` (pending) after storing the waker.
    pub(crate) fn multishot_next(
        &mut self,
        key: OpKey,
        waker: &Waker,
    ) -> Result<Option<(i32, u32)>, ()> {
        let Some(slot) = self.slot_mut(key) else {
            return Ok(None);
        };
        let SlotState::Multishot {
            queue,
            waker: w,
            ended,
            ..
        } = &mut slot.state
        else {
            return Ok(None);
        };
        if let Some(c) = queue.pop_front() {
            return Ok(Some(c));
        }
        if *ended {
            let (index, _) = split_user_data(key.0);
            self.ops.remove(index);
            self.multishots -= 1;
            return Ok(None);
        }
        match w {
            Some(w) if w.will_wake(waker) => {}
            _ => *w = Some(waker.clone()),
        }
        Err(())
    }

    /// Completions queued for a multishot op and not yet read.
    pub(crate) fn multishot_queued(&mut self, key: OpKey) -> usize {
        match self.slot_mut(key).map(|s| &s.state) {
            Some(SlotState::Multishot { queue, .. }) => queue.len(),
            _ => 0,
        }
    }

    /// The owner of a multishot op is gone: dispose of what is queued and of what still comes.
    pub(crate) fn multishot_orphan(&mut self, key: OpKey) {
        let Some(slot) = self.slot_mut(key) else {
            return;
        };
        let state = std::mem::replace(
            &mut slot.state,
            SlotState::Done {
                result: 0,
                flags: 0,
            },
        );
        let SlotState::Multishot {
            kind, queue, ended, ..
        } = state
        else {
            slot.state = state;
            return;
        };
        for (result, flags) in queue {
            dispose(&self.pool, kind, result, flags);
        }
        let (index, _) = split_user_data(key.0);
        if ended {
            self.ops.remove(index);
            self.multishots -= 1;
        } else {
            self.ops[index].state = SlotState::OrphanedMultishot(kind);
            self.cancel(key);
        }
    }

    /// Queues an `ASYNC_CANCEL` for the op (once); its completion still arrives and decides.
    pub(crate) fn cancel(&mut self, key: OpKey) {
        if let Some(slot) = self.slot_mut(key) {
            let finished = matches!(
                slot.state,
                SlotState::Done { .. }
                    | SlotState::AwaitingNotif { .. }
                    | SlotState::OrphanAwaitingNotif { .. }
            );
            if !slot.cancel_queued && !finished {
                slot.cancel_queued = true;
                self.cancels.push_back(key.0);
                self.stats.ops_cancelled += 1;
            }
        }
    }

    /// The op's future is gone: keep its data until the completion, and cancel it.
    pub(crate) fn orphan(&mut self, key: OpKey, data: Box<dyn Orphan>) {
        let Some(slot) = self.slot_mut(key) else {
            // No slot: cannot happen for an op in flight. Leak rather than free memory the
            // kernel might write.
            std::mem::forget(data);
            return;
        };
        match std::mem::replace(&mut slot.state, SlotState::Orphaned(data)) {
            SlotState::AwaitingNotif { result, flags, .. } => {
                // The buffer is still the kernel's until the notification: keep it.
                if let SlotState::Orphaned(data) =
                    std::mem::replace(&mut slot.state, SlotState::Done { result, flags })
                {
                    slot.state = SlotState::OrphanAwaitingNotif {
                        data,
                        result,
                        flags,
                    };
                }
            }
            SlotState::Done { result, flags } => {
                // Completed but not yet taken: finish it now (outside our borrow).
                let (index, _) = split_user_data(key.0);
                if let SlotState::Orphaned(data) = self.ops.remove(index).state {
                    self.finished_orphans.push((data, result, flags));
                }
            }
            _ => self.cancel(key),
        }
    }

    /// Orphans whose completion arrived, to be finished by the caller outside the borrow.
    pub(crate) fn take_finished_orphans(&mut self) -> Vec<(Box<dyn Orphan>, i32, u32)> {
        std::mem::take(&mut self.finished_orphans)
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
        self.stats.syscalls += 1;
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
        self.stats.syscalls += 1;
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
        self.ops.len()
    }

    /// Whether the ring is nearly idle: nothing waits in the SQ, no single-shot op is in
    /// flight, and at most `LONE_MULTISHOTS` multishot ops are armed (a lone connection's
    /// receive, a listener's accept). Then a plain system call for an op that usually succeeds
    /// at once costs less than the loop iteration its completion would take, and, with no
    /// other op in flight, it cannot overtake one on the same socket.
    pub(crate) fn nearly_idle(&mut self) -> bool {
        debug_assert_eq!(
            self.multishots,
            self.ops
                .iter()
                .filter(|(_, s)| matches!(
                    s.state,
                    SlotState::Multishot { .. } | SlotState::OrphanedMultishot(_)
                ))
                .count(),
            "the multishot count drifted from the op table"
        );
        self.ops.len() == self.multishots
            && self.multishots <= LONE_MULTISHOTS
            && self.cancels.is_empty()
            && self.ring.submission().is_empty()
    }

    /// Whether the next park has anything to hand to the kernel.
    pub(crate) fn has_pending_submissions(&mut self) -> bool {
        !self.cancels.is_empty() || !self.ring.submission().is_empty()
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
        let timeout = if self.woken.is_empty() {
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
            self.stats.cq_overflows += 1;
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
            self.stats.cq_dropped += u64::from(lost);
            eprintln!(
                "ringloop: the kernel dropped {lost} io_uring completions (out of memory for its \
                 overflow backlog); the ops they belonged to will not finish"
            );
        }
    }

    /// The wakers of ops that completed, moved into `out` (which should be empty), to be woken
    /// after the driver's borrow ends.
    pub(crate) fn take_woken(&mut self, out: &mut Vec<Waker>) {
        std::mem::swap(&mut self.woken, out);
    }

    fn enter(&mut self, min_complete: u32, timeout: Option<Duration>) -> io::Result<()> {
        let to_submit = self.ring.submission().len() as u32;
        let mut flags = EnterFlags::GETEVENTS;
        let ts;
        let args;
        self.stats.kernel_enters += 1;
        self.stats.syscalls += 1;
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
                self.stats.enter_errors += 1;
                Err(e)
            }
        }
    }

    fn reap(&mut self) {
        let Uring {
            ring,
            ops,
            finished_orphans,
            stats,
            wake_armed,
            pool,
            cancels,
            multishots,
            ..
        } = self;
        let woken = &mut self.woken;
        let mut drain_wake = false;
        for cqe in ring.completion() {
            let (ud, result, flags) = (cqe.user_data(), cqe.result(), cqe.flags());
            match ud {
                WAKE_TAG => {
                    drain_wake = true;
                    if !cqueue::more(flags) {
                        *wake_armed = false;
                    }
                }
                _ if ud & CANCEL_BIT != 0 => {
                    // 0: the op was cancelled; EALREADY: it is running and will complete;
                    // ENOENT: the kernel no longer had it (its completion is on the way, or
                    // it had not been submitted yet). Then, if the op is still live after this
                    // reap, another cancel may be sent (shutdown retries), so forget this one.
                    if result < 0 && result != -libc::EALREADY {
                        stats.cancels_missed += 1;
                        let (index, generation) = split_user_data(ud & !CANCEL_BIT);
                        if let Some(slot) =
                            ops.get_mut(index).filter(|s| s.generation == generation)
                        {
                            slot.cancel_queued = false;
                        }
                    }
                }
                _ => {
                    let (index, generation) = split_user_data(ud);
                    let Some(slot) = ops.get_mut(index).filter(|s| s.generation == generation)
                    else {
                        // Stale: its slot was freed (cannot happen for a live op). Buffers it
                        // names go back to the pool all the same.
                        if let Some(bid) = cqueue::buffer_select(flags) {
                            pool.reaped(bid, result, |b, _| pool.recycle(b));
                        }
                        continue;
                    };
                    stats.ops_completed += 1;
                    let more = cqueue::more(flags);
                    match &mut slot.state {
                        SlotState::Multishot {
                            queue,
                            waker,
                            ended,
                            cap,
                            ..
                        } => {
                            match cqueue::buffer_select(flags) {
                                // A bundle becomes one completion per buffer, so the owner
                                // and the queue cap see buffers, as without bundles.
                                Some(bid) => {
                                    let mut buffers = 0;
                                    pool.reaped(bid, result, |b, len| {
                                        buffers += 1;
                                        let r = if result > 0 { len as i32 } else { result };
                                        queue.push_back((r, with_buffer_id(flags, b)));
                                    });
                                    if buffers > 1 {
                                        stats.recv_bundles += 1;
                                    }
                                }
                                None => queue.push_back((result, flags)),
                            }
                            if !more {
                                *ended = true;
                            } else if queue.len() >= *cap as usize && !slot.cancel_queued {
                                slot.cancel_queued = true;
                                cancels.push_back(ud);
                            }
                            if result == -libc::ENOBUFS {
                                pool.exhaustions.set(pool.exhaustions.get() + 1);
                            }
                            woken.extend(waker.take());
                            continue;
                        }
                        SlotState::OrphanedMultishot(kind) => {
                            match cqueue::buffer_select(flags) {
                                Some(bid) => pool.reaped(bid, result, |b, _| pool.recycle(b)),
                                None => dispose(pool, *kind, result, flags),
                            }
                            if !more {
                                ops.remove(index);
                                *multishots -= 1;
                            }
                            continue;
                        }
                        _ => {
                            // A single-shot op that selected a buffer took exactly one.
                            if let Some(bid) = cqueue::buffer_select(flags) {
                                pool.reaped(bid, result.min(0), |_, _| {});
                            }
                        }
                    }
                    if cqueue::notif(flags) {
                        // A zero-copy send's buffer is free: release the held result.
                        stats.zero_copy_notifs += 1;
                        match std::mem::replace(&mut slot.state, SlotState::Done { result, flags })
                        {
                            SlotState::AwaitingNotif {
                                waker,
                                result,
                                flags,
                            } => {
                                slot.state = SlotState::Done { result, flags };
                                woken.extend(waker);
                            }
                            SlotState::OrphanAwaitingNotif {
                                data,
                                result,
                                flags,
                            } => {
                                ops.remove(index);
                                finished_orphans.push((data, result, flags));
                            }
                            other => slot.state = other,
                        }
                        continue;
                    }
                    let next = if more {
                        SlotState::AwaitingNotif {
                            waker: None,
                            result,
                            flags,
                        }
                    } else {
                        SlotState::Done { result, flags }
                    };
                    match std::mem::replace(&mut slot.state, next) {
                        SlotState::Armed(w) => {
                            if more {
                                if let SlotState::AwaitingNotif { waker, .. } = &mut slot.state {
                                    *waker = w;
                                }
                            } else {
                                woken.extend(w);
                            }
                        }
                        SlotState::Orphaned(data) => {
                            if more {
                                slot.state = SlotState::OrphanAwaitingNotif {
                                    data,
                                    result,
                                    flags,
                                };
                            } else {
                                ops.remove(index);
                                finished_orphans.push((data, result, flags));
                            }
                        }
                        other => slot.state = other,
                    }
                }
            }
        }
        if drain_wake {
            drain_eventfd(self.wake_fd);
        }
        if !self.wake_armed {
            self.arm_wake();
        }
    }

    /// Whether a slot is still the kernel's (its final completion has not been reaped).
    fn kernel_holds(state: &SlotState) -> bool {
        match state {
            SlotState::Done { .. } => false,
            SlotState::Multishot { ended, .. } => !ended,
            _ => true,
        }
    }

    /// Shutdown: cancel every op the kernel holds and reap until none is left, for at most
    /// `bound`. A cancel that finds nothing is sent again. Whatever is still in flight then is
    /// leaked (never freed while the kernel may write it). Ops whose futures are alive keep
    /// their slots: a later poll gets the reaped result (usually `ECANCELED`).
    pub(crate) fn shutdown(&mut self, bound: Duration) {
        let keys: Vec<OpKey> = self
            .ops
            .iter()
            .filter(|(_, s)| Self::kernel_holds(&s.state))
            .map(|(i, s)| OpKey(user_data(i, s.generation)))
            .collect();
        for key in keys {
            self.multishot_orphan(key);
        }
        let deadline = Instant::now() + bound;
        loop {
            let live: Vec<OpKey> = self
                .ops
                .iter()
                .filter(|(_, s)| Self::kernel_holds(&s.state))
                .map(|(i, s)| OpKey(user_data(i, s.generation)))
                .collect();
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
        self.leak_in_flight();
    }

    /// Forgets (never frees) the data of every op the kernel may still hold, and the pool if
    /// any did: called when the ring is about to go with ops in it.
    fn leak_in_flight(&mut self) {
        let leftover: Vec<usize> = self
            .ops
            .iter()
            .filter(|(_, s)| Self::kernel_holds(&s.state))
            .map(|(i, _)| i)
            .collect();
        let leaked = !leftover.is_empty();
        for i in leftover {
            let slot = self.ops.remove(i);
            if matches!(
                slot.state,
                SlotState::Multishot { .. } | SlotState::OrphanedMultishot(_)
            ) {
                self.multishots -= 1;
            }
            match slot.state {
                SlotState::Orphaned(data) | SlotState::OrphanAwaitingNotif { data, .. } => {
                    std::mem::forget(data)
                }
                // A zero-copy send's buffer is still the kernel's until its notification: the
                // live future keeps it, and finding no slot it never gives it back.
                _ => {}
            }
            std::mem::forget(slot.keep);
        }
        if leaked {
            // The kernel may still write into pool buffers: never free that memory.
            std::mem::forget(self.pool.clone());
        }
    }
}

impl Drop for Uring {
    /// The ring goes with the driver: if ops are still in it (a shutdown that was never run,
    /// or that a panic cut short), their memory is leaked rather than freed under the kernel.
    fn drop(&mut self) {
        self.leak_in_flight();
    }
}

/// `flags` with its buffer id replaced by `bid` (`IORING_CQE_BUFFER_SHIFT` is 16).
fn with_buffer_id(flags: u32, bid: u16) -> u32 {
    (flags & 0xffff) | (u32::from(bid) << 16)
}

/// Releases what a multishot completion carries that nobody will read: its buffer (already
/// reaped from the pool's ring) or its accepted socket.
fn dispose(pool: &BufPool, kind: MultishotKind, result: i32, flags: u32) {
    match kind {
        MultishotKind::Recv => {
            if let Some(bid) = cqueue::buffer_select(flags) {
                pool.recycle(bid);
            }
        }
        MultishotKind::Accept => {
            if result >= 0 {
                // SAFETY: a successful accept's result is a new descriptor nobody else owns.
                unsafe { libc::close(result) };
            }
        }
    }
}

fn drain_eventfd(fd: i32) {
    let mut buf = 0u64;
    // SAFETY: reads 8 bytes into a live local from the runtime's own non-blocking eventfd.
    let _ = unsafe { libc::read(fd, &mut buf as *mut u64 as *mut libc::c_void, 8) };
}

#[cfg(test)]
mod tests {
    use super::CompletionQueue;

    #[test]
    fn completion_queue_is_fifo_across_its_inline_slot_and_its_backlog() {
        let mut q = CompletionQueue::default();
        assert_eq!(q.pop_front(), None);
        q.push_back((1, 0));
        assert!(q.rest.capacity() == 0, "one completion does not allocate");
        q.push_back((2, 0));
        q.push_back((3, 0));
        assert_eq!(q.len(), 3);
        assert_eq!(q.pop_front(), Some((1, 0)));
        // The inline slot is free but the backlog is not: a new one queues behind it.
        q.push_back((4, 0));
        assert_eq!(q.pop_front(), Some((2, 0)));
        q.push_back((5, 0));
        let rest: Vec<_> = q.into_iter().map(|(r, _)| r).collect();
        assert_eq!(rest, [3, 4, 5]);

        let mut q = CompletionQueue::default();
        q.push_back((6, 0));
        assert_eq!(q.pop_front(), Some((6, 0)));
        q.push_back((7, 0));
        assert_eq!((q.len(), q.pop_front(), q.len()), (1, Some((7, 0)), 0));
    }
}
