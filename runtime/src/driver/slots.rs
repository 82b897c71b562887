//! The io_uring op table: every op the kernel may still hold has a slot here, and its life
//! cycle is a pure state machine over completions. No kernel is needed to drive it, so the unit
//! tests below feed it fake completions (`complete`) and check, with reference counts, when an
//! op's memory is released.
//!
//! Single-shot ops and multishot ops have a table each: a single-shot slot (a send per
//! message) is small, as it is moved into its table and out again per op, and a multishot's
//! (one per connection, with its queue of completions) is not carried by every send.
//! `user_data` is the slot index in the low 32 bits and the slot's generation in the high 32,
//! so a completion for a slot that was freed and reused can never wake the wrong op. Slot
//! indices stay below 2^29, which leaves three bits of the low half free: `MULTI_BIT` (bit 29)
//! says the slot is a multishot's, a cancel's `user_data` is its target's with `CANCEL_BIT`
//! (bit 31) set, and the ring's own wake traffic uses bit 30 (`MSG_SENT_BIT`, a `MSG_RING`
//! this ring sent) or one of two fixed tags (`WAKE_TAG`, the eventfd poll; `MSG_TAG`, a
//! `MSG_RING` another ring sent here). An op's deadline is a linked timeout whose completion
//! carries a third fixed tag (`LINK_TIMEOUT_TAG`): the op's own completion says what happened,
//! so that one is only counted. None of these reaches the table.
//!
//! ```text
//!  insert ──▶ Armed{waker} ──CQE──▶ Done{res,flags} ──future takes it──▶ (freed)
//!               │    └─CQE with F_MORE (zero-copy)─▶ AwaitingNotif ──notif──▶ Done
//!               └─future dropped──▶ Orphaned{op data} + ASYNC_CANCEL ──CQE──▶ (freed, data finished)
//!
//!  insert (detached) ──▶ Orphaned{op data} ──CQE──▶ (freed, data finished: its `complete` runs)
//!
//!  insert ──▶ Multishot{queue} ──CQE with F_MORE──▶ queued, owner told (cap reached: cancel)
//!               │                 └─CQE without F_MORE──▶ ended; freed when the owner reads it
//!               └─owner dropped──▶ OrphanedMultishot (queue disposed) ──last CQE──▶ (freed)
//! ```
//!
//! A multishot's owner is told by its waker (taken when woken, stored again by the read that
//! finds the queue empty) or, for an op armed to post, by its token on a completion list (once,
//! until the owner finds the queue empty again): see `Notify`. A detached op is an orphan from
//! its submission: nobody awaits it, and no cancel is sent unless someone asks for one.
//!
//! A zero-copy send completes twice: its result (with `F_MORE`), then a notification once the
//! kernel no longer reads the buffer. The slot holds the result back (`AwaitingNotif`) until
//! the notification, so the buffer is never given back while the kernel may still read it.
//! Once an SQE is in the ring its slot is never freed on an error path: only its own CQE frees
//! it.

use std::collections::VecDeque;
use std::rc::Rc;
use std::task::Waker;

use io_uring::cqueue;
use slab::Slab;

use super::bufpool::BufPool;
use super::multishot::ListShared;
use super::op::Orphan;
use super::{DriverStats, MultishotKind, OpKey, SharedFd};

/// `user_data` of the multishot poll on the wake eventfd.
pub(crate) const WAKE_TAG: u64 = u64::MAX;
/// `user_data` of the completion another ring's `MSG_RING` posts on this ring: a wake.
pub(crate) const MSG_TAG: u64 = u64::MAX - 1;
/// `user_data` of an `IORING_OP_LINK_TIMEOUT` (an op's deadline, see `Uring::submit_linked`).
pub(crate) const LINK_TIMEOUT_TAG: u64 = u64::MAX - 2;
/// Set in the `user_data` of an `ASYNC_CANCEL` SQE, whose other bits are its target's key: its
/// completion says whether the cancel found the op.
pub(crate) const CANCEL_BIT: u64 = 1 << 31;
/// Set (without `CANCEL_BIT`, with a zero high half) in the `user_data` of a `MSG_RING` this
/// ring sends to wake another; the low bits index the driver's table of such messages.
pub(crate) const MSG_SENT_BIT: u64 = 1 << 30;
/// Cancels sent again, per op, after one found the op nowhere while the kernel still held it.
/// The case that needs them (see `complete`) hides an op from cancels for up to 128 of the
/// kernel's retries (`APOLL_MAX_RETRY`, io_uring/poll.c), and each resend's kernel entry runs
/// at least one: 255 outlast it. Each resend costs one entry that returns at once.
const MAX_CANCEL_RESENDS: u8 = u8::MAX;
/// Set in the `user_data` of a multishot op: its slot is in the table of multishots (a
/// connection's, long-lived and larger), not in that of single-shot ops (one per message,
/// short-lived: kept small, as every one is moved into its table and out again).
const MULTI_BIT: u64 = 1 << 29;
/// Slot indices stay below this in each table, so no op's `user_data` has `MULTI_BIT` but a
/// multishot's, nor `CANCEL_BIT` or `MSG_SENT_BIT`, and none is `WAKE_TAG`, `MSG_TAG` or
/// `LINK_TIMEOUT_TAG` (whose low halves have all three bits set).
const MAX_SLOTS: usize = MULTI_BIT as usize;

/// What a slot holds; see the module docs for the transitions.
pub(crate) enum SlotState {
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
}

/// What a multishot op's slot holds.
pub(crate) enum MultiState {
    /// Owned by a connection: completions queue here until read.
    Live(MultishotSlot),
    /// Its owner is gone: completions are disposed of (buffers recycled, accepted sockets
    /// closed) until the last one frees the slot.
    Orphaned(MultishotKind),
}

/// A multishot op's slot: its state and its descriptor, kept open until the op's last
/// completion (the owner may go first, and a number or registered slot must not be reused
/// under the kernel).
#[repr(C)]
struct MultiEntry {
    state: MultiState,
    keep: SharedFd,
}

// A single-shot op's slot is one cache line; a multishot's is two, with all a completion or a
// read touches (generation, cancel flags, state) in the first and the descriptor it keeps
// open in the second.
const _: () = {
    assert!(std::mem::size_of::<Slot<SlotState>>() == 64);
    assert!(std::mem::size_of::<Slot<MultiEntry>>() == 128);
    assert!(
        std::mem::offset_of!(Slot<MultiEntry>, state) + std::mem::size_of::<MultiState>() <= 64
    );
};

/// A live multishot op's state in its slot (see [`MultiState::Live`]).
pub(crate) struct MultishotSlot {
    kind: MultishotKind,
    /// At this many unread completions the op is cancelled: the peer is back-pressured
    /// (the data waits in the socket) instead of filling the pool.
    cap: u32,
    queue: CompletionQueue,
    notify: Notify,
    /// The last completion (without `F_MORE`) is in the queue.
    ended: bool,
}

/// How a multishot op tells its owner that it has something to read.
pub(crate) enum Notify {
    /// By waking the waker of the owner's last read that found nothing (taken when woken).
    Waker(Option<Waker>),
    /// By posting `token` on a [`CompletionList`](super::CompletionList): once, until the
    /// owner finds the queue empty again (`posted` is cleared then).
    Post {
        list: Rc<ListShared>,
        token: u32,
        posted: bool,
    },
}

impl Notify {
    /// Something came: tell the owner (wakers are collected in `woken`, not woken).
    #[inline]
    fn fire(&mut self, woken: &mut Vec<Waker>) {
        match self {
            Notify::Waker(w) => woken.extend(w.take()),
            Notify::Post {
                list,
                token,
                posted,
            } => {
                if !*posted {
                    *posted = true;
                    list.post(*token, woken);
                }
            }
        }
    }

    /// The owner found nothing more to read: the next completion tells it (with `waker`, if
    /// it is told by waker).
    #[inline]
    fn wait(&mut self, waker: &Waker) {
        match self {
            Notify::Waker(w) => match w {
                Some(w) if w.will_wake(waker) => {}
                _ => *w = Some(waker.clone()),
            },
            Notify::Post { posted, .. } => *posted = false,
        }
    }
}

/// What [`OpTable::multishot_next_draining`] finds: the next completion `(result, flags)` and
/// whether more may follow now; `Ok(None)` once the op has ended and its last completion was
/// read; `Err(fd)` when none is queued yet (the waker is stored), with the descriptor the op
/// waits on (for task dumps).
pub(crate) type MultishotNext = Result<Option<((i32, u32), bool)>, std::os::fd::RawFd>;

/// Orphans whose completion arrived, with its result and flags, waiting to be finished.
pub(crate) type FinishedOrphans = Vec<(Box<dyn Orphan>, i32, u32)>;

/// A multishot op's unread completions, oldest first. A ping-pong connection has at most one
/// waiting at a time, so the first lives inline and only a backlog allocates (at 10 000
/// connections that is 10 000 allocations fewer), and the backlog is boxed: the queue takes
/// 24 bytes of its slot's cache line, not 48.
#[derive(Default)]
pub(crate) struct CompletionQueue {
    /// When set, older than everything in `rest` (a completion only goes here when `rest` is
    /// empty).
    first: Option<(i32, u32)>,
    /// The backlog; `None` or empty when there is none. Kept once allocated.
    // Boxed for the slot's size (8 bytes here, not a `VecDeque`'s 32), not for heap placement.
    #[allow(clippy::box_collection)]
    rest: Option<Box<VecDeque<(i32, u32)>>>,
}

impl CompletionQueue {
    fn rest_len(&self) -> usize {
        self.rest.as_ref().map_or(0, |r| r.len())
    }

    fn push_back(&mut self, completion: (i32, u32)) {
        if self.first.is_none() && self.rest_len() == 0 {
            self.first = Some(completion);
        } else {
            self.rest.get_or_insert_default().push_back(completion);
        }
    }

    fn pop_front(&mut self) -> Option<(i32, u32)> {
        self.first
            .take()
            .or_else(|| self.rest.as_mut().and_then(|r| r.pop_front()))
    }

    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest_len()
    }

    fn is_empty(&self) -> bool {
        self.first.is_none() && self.rest_len() == 0
    }
}

impl IntoIterator for CompletionQueue {
    type Item = (i32, u32);
    type IntoIter = std::iter::Chain<
        std::option::IntoIter<(i32, u32)>,
        std::collections::vec_deque::IntoIter<(i32, u32)>,
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.first
            .into_iter()
            .chain(self.rest.map(|r| *r).unwrap_or_default())
    }
}

/// A slot of either table, starting on a cache line, with the generation and the state a
/// completion reads in that line (a multishot's state is 56 bytes; the descriptor its slot
/// keeps open follows): at thousands of connections the line a completion touches is a miss,
/// and a slot that straddled two lines cost two.
#[repr(C, align(64))]
struct Slot<S> {
    generation: u32,
    /// An `ASYNC_CANCEL` was queued for this op and has not come back empty-handed.
    cancel_queued: bool,
    /// Cancels sent again after one found nothing (at most `MAX_CANCEL_RESENDS`).
    cancel_resends: u8,
    state: S,
}

fn user_data(index: usize, generation: u32) -> u64 {
    ((generation as u64) << 32) | index as u64
}

/// `(index, generation, multi)`: the slot's index in its table, its generation, and whether
/// the table is the multishots'.
fn split_user_data(user_data: u64) -> (usize, u32, bool) {
    (
        (user_data & (MULTI_BIT - 1)) as usize,
        (user_data >> 32) as u32,
        user_data & MULTI_BIT != 0,
    )
}

/// The op table: slots, the cancels to send, and what completions produced for the loop.
pub(crate) struct OpTable {
    /// Single-shot ops: one per message, so small (a slot is moved in and out per op).
    ops: Slab<Slot<SlotState>>,
    /// Multishot ops: one per connection (armed, or orphaned and draining); keys with
    /// `MULTI_BIT`.
    multis: Slab<Slot<MultiEntry>>,
    next_generation: u32,
    /// Ops to cancel, flushed into the SQ before any new SQE: a cancel must never be lost,
    /// even when the SQ is full.
    pub(crate) cancels: VecDeque<u64>,
    /// Orphans whose completion arrived; finished outside the driver's borrow because
    /// finishing one runs its `complete` (which may close sockets, and so call back in).
    finished_orphans: FinishedOrphans,
    /// Wakers collected while reaping, woken by the loop after the driver's borrow ends (a
    /// waker is foreign code, which may drop ops).
    woken: Vec<Waker>,
    /// The receive pool: buffers named by completions are accounted for here.
    pub(crate) pool: Rc<BufPool>,
    pub(crate) stats: DriverStats,
}

impl OpTable {
    pub(crate) fn new(pool: Rc<BufPool>) -> OpTable {
        OpTable {
            ops: Slab::with_capacity(256),
            multis: Slab::new(),
            next_generation: 0,
            cancels: VecDeque::new(),
            finished_orphans: Vec::new(),
            woken: Vec::new(),
            pool,
            stats: DriverStats::default(),
        }
    }

    fn next_generation(&mut self) -> u32 {
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        generation
    }

    /// Takes a slot for a single-shot op about to be pushed. `Err` when the table is full
    /// (the op is not submitted).
    pub(crate) fn insert(&mut self, state: SlotState) -> std::io::Result<OpKey> {
        self.try_insert(state).map_err(|_| too_many())
    }

    /// As [`insert`](Self::insert); a full table gives `state` back.
    pub(crate) fn try_insert(&mut self, state: SlotState) -> Result<OpKey, SlotState> {
        if self.ops.vacant_key() >= MAX_SLOTS {
            return Err(state);
        }
        let generation = self.next_generation();
        let index = self.ops.insert(Slot {
            generation,
            cancel_queued: false,
            cancel_resends: 0,
            state,
        });
        self.stats.ops_submitted += 1;
        Ok(OpKey(user_data(index, generation)))
    }

    /// Takes a slot for a multishot op about to be pushed, which keeps `keep` open until the
    /// op's last completion. `Err` when the table is full.
    pub(crate) fn insert_multishot(
        &mut self,
        op: MultishotSlot,
        keep: SharedFd,
    ) -> std::io::Result<OpKey> {
        if self.multis.vacant_key() >= MAX_SLOTS {
            return Err(too_many());
        }
        let generation = self.next_generation();
        let index = self.multis.insert(Slot {
            generation,
            cancel_queued: false,
            cancel_resends: 0,
            state: MultiEntry {
                state: MultiState::Live(op),
                keep,
            },
        });
        self.stats.ops_submitted += 1;
        Ok(OpKey(user_data(index, generation) | MULTI_BIT))
    }

    /// Frees a slot whose SQE never reached the ring (the push failed). A single-shot op's
    /// state is returned (an op's data in it was never the kernel's).
    pub(crate) fn remove_unsubmitted(&mut self, key: OpKey) -> Option<SlotState> {
        let (index, _, multi) = split_user_data(key.0);
        if multi {
            self.multi_mut(key)?;
            self.stats.ops_submitted -= 1;
            drop(self.multis.remove(index));
            return None;
        }
        self.single_mut(key)?;
        self.stats.ops_submitted -= 1;
        Some(self.ops.remove(index).state)
    }

    /// A single-shot op's slot state, armed with `waker`.
    pub(crate) fn armed(waker: &Waker) -> SlotState {
        SlotState::Armed(Some(waker.clone()))
    }

    /// A multishot op's state, for [`insert_multishot`](Self::insert_multishot).
    pub(crate) fn multishot(kind: MultishotKind, cap: usize) -> MultishotSlot {
        MultishotSlot {
            kind,
            cap: u32::try_from(cap).unwrap_or(u32::MAX).max(1),
            queue: CompletionQueue::default(),
            notify: Notify::Waker(None),
            ended: false,
        }
    }

    /// From now on the multishot op `key` tells its owner by posting `token` on `list`
    /// (`Some`), or by waking a waker again (`None`; an op that wakes already keeps its waker).
    pub(crate) fn multishot_post_to(&mut self, key: OpKey, post: Option<(Rc<ListShared>, u32)>) {
        let Some(slot) = self.multi_mut(key) else {
            return;
        };
        let MultiState::Live(m) = &mut slot.state.state else {
            return;
        };
        match post {
            // The next completion posts (one already queued is the owner's to read).
            Some((list, token)) => {
                m.notify = Notify::Post {
                    list,
                    token,
                    posted: false,
                }
            }
            None => {
                if matches!(m.notify, Notify::Post { .. }) {
                    m.notify = Notify::Waker(None);
                }
            }
        }
    }

    /// The wakers collected since the last call, moved into `out` (which should be empty).
    pub(crate) fn take_woken(&mut self, out: &mut Vec<Waker>) {
        std::mem::swap(&mut self.woken, out);
    }

    /// Whether wakers wait to be woken (then the loop must not block).
    pub(crate) fn has_woken(&self) -> bool {
        !self.woken.is_empty()
    }

    /// Ops the kernel still holds (armed or orphaned) or whose result waits to be taken.
    pub(crate) fn len(&self) -> usize {
        self.ops.len() + self.multis.len()
    }

    /// Multishot slots (armed, or orphaned and draining).
    pub(crate) fn multishots(&self) -> usize {
        self.multis.len()
    }

    /// How many ops the kernel still holds (a scan: for the stats, not the hot path).
    pub(crate) fn held(&self) -> usize {
        self.live_keys().len()
    }

    /// Keys of the ops the kernel still holds.
    pub(crate) fn live_keys(&self) -> Vec<OpKey> {
        let singles = self
            .ops
            .iter()
            .filter(|(_, s)| kernel_holds(&s.state))
            .map(|(i, s)| OpKey(user_data(i, s.generation)));
        let multis = self
            .multis
            .iter()
            .filter(|(_, s)| multi_kernel_holds(&s.state.state))
            .map(|(i, s)| OpKey(user_data(i, s.generation) | MULTI_BIT));
        singles.chain(multis).collect()
    }

    fn single_mut(&mut self, key: OpKey) -> Option<&mut Slot<SlotState>> {
        let (index, generation, multi) = split_user_data(key.0);
        if multi {
            return None;
        }
        self.ops
            .get_mut(index)
            .filter(|s| s.generation == generation)
    }

    fn multi_mut(&mut self, key: OpKey) -> Option<&mut Slot<MultiEntry>> {
        let (index, generation, multi) = split_user_data(key.0);
        if !multi {
            return None;
        }
        self.multis
            .get_mut(index)
            .filter(|s| s.generation == generation)
    }

    /// The op's result if its completion arrived (the slot is freed), else updates its waker.
    pub(crate) fn take(&mut self, key: OpKey, waker: &Waker) -> Option<(i32, u32)> {
        let slot = self.single_mut(key)?;
        match &mut slot.state {
            SlotState::Done { result, flags } => {
                let r = (*result, *flags);
                let (index, _, _) = split_user_data(key.0);
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
            SlotState::Orphaned(_) | SlotState::OrphanAwaitingNotif { .. } => None,
        }
    }

    /// The next completion of a multishot op; `Ok(None)` once the last one was read (the slot
    /// is freed); `Err(())` (pending) after storing the waker.
    #[cfg(test)]
    pub(crate) fn multishot_next(
        &mut self,
        key: OpKey,
        waker: &Waker,
    ) -> Result<Option<(i32, u32)>, ()> {
        self.multishot_next_draining(key, waker, false)
            .map(|next| next.map(|(c, _)| c))
            .map_err(drop)
    }

    /// As [`multishot_next`](Self::multishot_next), with whether more completions may follow
    /// now. With `draining`, a completion that was the last one queued (the op going on) also
    /// stores `waker`, as the poll that would find the queue empty next would, and is reported
    /// with `false`; otherwise (and without `draining`) the flag is `true`.
    #[inline]
    pub(crate) fn multishot_next_draining(
        &mut self,
        key: OpKey,
        waker: &Waker,
        draining: bool,
    ) -> MultishotNext {
        let Some(slot) = self.multi_mut(key) else {
            return Ok(None);
        };
        let MultiState::Live(m) = &mut slot.state.state else {
            return Ok(None);
        };
        let MultishotSlot {
            queue,
            notify,
            ended,
            ..
        } = m;
        if let Some(c) = queue.pop_front() {
            if draining && !*ended && queue.is_empty() {
                notify.wait(waker);
                return Ok(Some((c, false)));
            }
            return Ok(Some((c, true)));
        }
        if *ended {
            let (index, _, _) = split_user_data(key.0);
            self.multis.remove(index);
            return Ok(None);
        }
        notify.wait(waker);
        // Nothing yet: the descriptor it waits on, for task dumps.
        Err(slot.state.keep.raw())
    }

    /// Completions queued for a multishot op and not yet read.
    pub(crate) fn multishot_queued(&mut self, key: OpKey) -> usize {
        match self.multi_mut(key).map(|s| &s.state.state) {
            Some(MultiState::Live(m)) => m.queue.len(),
            _ => 0,
        }
    }

    /// The owner of a multishot op is gone: dispose of what is queued and of what still comes.
    pub(crate) fn multishot_orphan(&mut self, key: OpKey) {
        let Some(slot) = self.multi_mut(key) else {
            return;
        };
        let MultiState::Live(m) = &mut slot.state.state else {
            return;
        };
        let kind = m.kind;
        let ended = m.ended;
        let queue = std::mem::take(&mut m.queue);
        slot.state.state = MultiState::Orphaned(kind);
        for (result, flags) in queue {
            dispose(&self.pool, kind, result, flags);
        }
        if ended {
            let (index, _, _) = split_user_data(key.0);
            self.multis.remove(index);
        } else {
            self.cancel(key);
        }
    }

    /// Queues an `ASYNC_CANCEL` for the op (once); its completion still arrives and decides.
    pub(crate) fn cancel(&mut self, key: OpKey) {
        let queue = if let Some(slot) = self.single_mut(key) {
            let finished = matches!(
                slot.state,
                SlotState::Done { .. }
                    | SlotState::AwaitingNotif { .. }
                    | SlotState::OrphanAwaitingNotif { .. }
            );
            !finished && !std::mem::replace(&mut slot.cancel_queued, true)
        } else if let Some(slot) = self.multi_mut(key) {
            !std::mem::replace(&mut slot.cancel_queued, true)
        } else {
            false
        };
        if queue {
            self.cancels.push_back(key.0);
            self.stats.ops_cancelled += 1;
        }
    }

    /// The op's future is gone: keep its data until the completion, and cancel it.
    pub(crate) fn orphan(&mut self, key: OpKey, data: Box<dyn Orphan>) {
        let Some(slot) = self.single_mut(key) else {
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
                let (index, _, _) = split_user_data(key.0);
                if let SlotState::Orphaned(data) = self.ops.remove(index).state {
                    self.finished_orphans.push((data, result, flags));
                }
            }
            _ => self.cancel(key),
        }
    }

    /// Orphans whose completion arrived, moved into `out` (which should be empty), to be
    /// finished by the caller outside the borrow.
    pub(crate) fn take_finished_orphans(&mut self, out: &mut FinishedOrphans) {
        std::mem::swap(&mut self.finished_orphans, out);
    }

    /// Records one completion (not the wake poll's): the op's result, a multishot's queued
    /// item, a zero-copy notification, or a cancel's verdict. Wakers are collected in
    /// `woken`; orphans whose last completion came move to `finished_orphans`.
    pub(crate) fn complete(&mut self, ud: u64, result: i32, flags: u32) {
        if ud & CANCEL_BIT != 0 {
            self.cancel_completed(ud & !CANCEL_BIT, result);
        } else if ud & MULTI_BIT != 0 {
            self.multishot_completed(ud, result, flags);
        } else {
            self.single_completed(ud, result, flags);
        }
    }

    /// An `ASYNC_CANCEL` for the op `target` completed with `result`.
    fn cancel_completed(&mut self, target: u64, result: i32) {
        // 0: the op was cancelled; EALREADY: it is running in io-wq, and the worker is
        // interrupted (the op ends with EINTR, or with what it did so far); ENOENT: the
        // kernel did not find it where cancels look (io-wq, the poll table, timeouts).
        // Either its completion is on the way (then the slot is gone or done by now, or
        // will be by the time a second cancel is answered), or it is in the kernel's
        // async-poll retry loop: a send on a full socket whose peer shut its write side
        // down finds `EPOLLRDHUP` (which the kernel's internal poll always waits for) at
        // every arm, so it is retried from task work, fails with EAGAIN, re-arms, and
        // sits in the task-work list between tries, where no cancel looks. After 128
        // tries the kernel hands it to io-wq, where a cancel reaches it. With
        // `DEFER_TASKRUN` the tries run only inside our kernel entries, one or two per
        // entry that does not wait. So a miss on an op the kernel still holds is sent
        // again at the next entry, up to `MAX_CANCEL_RESENDS` times; past that only the
        // runtime's shutdown retries.
        if result >= 0 || result == -libc::EALREADY {
            return;
        }
        self.stats.cancels_missed += 1;
        let key = OpKey(target);
        let resend = if let Some(slot) = self.single_mut(key) {
            slot.cancel_queued = false;
            kernel_holds(&slot.state) && resend(slot)
        } else if let Some(slot) = self.multi_mut(key) {
            slot.cancel_queued = false;
            multi_kernel_holds(&slot.state.state) && resend(slot)
        } else {
            false
        };
        if resend {
            self.cancels.push_back(target);
        }
    }

    /// A completion of the multishot op `ud`.
    fn multishot_completed(&mut self, ud: u64, result: i32, flags: u32) {
        let OpTable {
            multis,
            stats,
            pool,
            cancels,
            woken,
            ..
        } = self;
        let (index, generation, _) = split_user_data(ud);
        let Some(slot) = multis.get_mut(index).filter(|s| s.generation == generation) else {
            stale(pool, result, flags);
            return;
        };
        stats.ops_completed += 1;
        let more = cqueue::more(flags);
        match &mut slot.state.state {
            MultiState::Live(m) => {
                let MultishotSlot {
                    queue,
                    notify,
                    ended,
                    cap,
                    ..
                } = m;
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
                notify.fire(woken);
            }
            MultiState::Orphaned(kind) => {
                match cqueue::buffer_select(flags) {
                    Some(bid) => pool.reaped(bid, result, |b, _| pool.recycle(b)),
                    None => dispose(pool, *kind, result, flags),
                }
                if !more {
                    multis.remove(index);
                }
            }
        }
    }

    /// A completion of the single-shot op `ud`.
    fn single_completed(&mut self, ud: u64, result: i32, flags: u32) {
        let OpTable {
            ops,
            finished_orphans,
            stats,
            pool,
            woken,
            ..
        } = self;
        let (index, generation, _) = split_user_data(ud);
        let Some(slot) = ops.get_mut(index).filter(|s| s.generation == generation) else {
            stale(pool, result, flags);
            return;
        };
        stats.ops_completed += 1;
        let more = cqueue::more(flags);
        // A single-shot op that selected a buffer took exactly one.
        if let Some(bid) = cqueue::buffer_select(flags) {
            pool.reaped(bid, result.min(0), |_, _| {});
        }
        if cqueue::notif(flags) {
            // A zero-copy send's buffer is free: release the held result.
            stats.zero_copy_notifs += 1;
            match std::mem::replace(&mut slot.state, SlotState::Done { result, flags }) {
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
            return;
        }
        // An op a cancel interrupted in io-wq (its worker is signalled) ends with EINTR when
        // it had done nothing: that is the cancel taking effect.
        let result = if result == -libc::EINTR && slot.cancel_queued {
            -libc::ECANCELED
        } else {
            result
        };
        if !more {
            // The common case, a single-shot op's one completion, without moving the slot's
            // state around more than it needs.
            match &mut slot.state {
                SlotState::Armed(w) => {
                    woken.extend(w.take());
                    // `Armed(None)` holds nothing: nothing to drop.
                    std::mem::forget(std::mem::replace(
                        &mut slot.state,
                        SlotState::Done { result, flags },
                    ));
                }
                SlotState::Orphaned(_) => {
                    if let SlotState::Orphaned(data) = ops.remove(index).state {
                        finished_orphans.push((data, result, flags));
                    }
                }
                _ => {}
            }
            return;
        }
        // A zero-copy send's result: held back until its notification.
        let next = SlotState::AwaitingNotif {
            waker: None,
            result,
            flags,
        };
        match std::mem::replace(&mut slot.state, next) {
            SlotState::Armed(w) => {
                if let SlotState::AwaitingNotif { waker, .. } = &mut slot.state {
                    *waker = w;
                }
            }
            SlotState::Orphaned(data) => {
                slot.state = SlotState::OrphanAwaitingNotif {
                    data,
                    result,
                    flags,
                };
            }
            other => slot.state = other,
        }
    }

    /// Forgets (never frees) the data of every op the kernel may still hold, and the pool if
    /// any did: called when the ring is about to go with ops in it.
    pub(crate) fn leak_in_flight(&mut self) {
        let singles: Vec<usize> = self
            .ops
            .iter()
            .filter(|(_, s)| kernel_holds(&s.state))
            .map(|(i, _)| i)
            .collect();
        let multis: Vec<usize> = self
            .multis
            .iter()
            .filter(|(_, s)| multi_kernel_holds(&s.state.state))
            .map(|(i, _)| i)
            .collect();
        let leaked = !singles.is_empty() || !multis.is_empty();
        for i in singles {
            match self.ops.remove(i).state {
                SlotState::Orphaned(data) | SlotState::OrphanAwaitingNotif { data, .. } => {
                    std::mem::forget(data)
                }
                // A zero-copy send's buffer is still the kernel's until its notification: the
                // live future keeps it, and finding no slot it never gives it back.
                _ => {}
            }
        }
        for i in multis {
            std::mem::forget(self.multis.remove(i).state.keep);
        }
        if leaked {
            // The kernel may still write into pool buffers: never free that memory.
            std::mem::forget(self.pool.clone());
        }
    }
}

fn too_many() -> std::io::Error {
    std::io::Error::other("too many io_uring ops in flight")
}

/// Counts a resend of a cancel that found nothing; false past `MAX_CANCEL_RESENDS`.
fn resend<S>(slot: &mut Slot<S>) -> bool {
    if slot.cancel_resends < MAX_CANCEL_RESENDS {
        slot.cancel_resends += 1;
        slot.cancel_queued = true;
        true
    } else {
        false
    }
}

/// A completion whose slot was freed (cannot happen for a live op): a buffer it names goes
/// back to the pool all the same.
fn stale(pool: &BufPool, result: i32, flags: u32) {
    if let Some(bid) = cqueue::buffer_select(flags) {
        pool.reaped(bid, result, |b, _| pool.recycle(b));
    }
}

/// Whether a single-shot op's slot is still the kernel's (its final completion has not been
/// reaped).
fn kernel_holds(state: &SlotState) -> bool {
    !matches!(state, SlotState::Done { .. })
}

/// Whether a multishot op's slot is still the kernel's.
fn multi_kernel_holds(state: &MultiState) -> bool {
    match state {
        MultiState::Live(m) => !m.ended,
        MultiState::Orphaned(_) => true,
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

#[cfg(test)]
mod tests {
    use std::io;
    use std::os::fd::{FromRawFd, OwnedFd, RawFd};
    use std::rc::Rc;

    use io_uring::squeue;

    use super::{CompletionQueue, OpTable, SlotState, CANCEL_BIT};
    use crate::driver::bufpool::BufPool;
    use crate::driver::{Interest, MultishotKind, OpKey, OpKind, SharedFd};
    use crate::test_wakers::counting_waker;

    /// `IORING_CQE_F_MORE` and `IORING_CQE_F_NOTIF` (include/uapi/linux/io_uring.h).
    const F_MORE: u32 = 1 << 1;
    const F_NOTIF: u32 = 1 << 3;

    /// An op's data that counts how many places hold it (an `Rc` inside), and whose
    /// completion records the result it was finished with.
    struct Held {
        _alive: Rc<()>,
        finished: Rc<std::cell::Cell<Option<i32>>>,
    }

    // SAFETY: a NOP names no memory and no descriptor; the tests never submit it anyway.
    unsafe impl OpKind for Held {
        type Output = ();
        fn sqe(&mut self) -> squeue::Entry {
            io_uring::opcode::Nop::new().build()
        }
        fn readiness(&self) -> (RawFd, Interest) {
            (-1, Interest::Read)
        }
        fn attempt(&mut self) -> io::Result<u32> {
            Ok(0)
        }
        fn complete(self, result: io::Result<u32>, _flags: u32) {
            let r = match result {
                Ok(n) => n as i32,
                Err(e) => -e.raw_os_error().unwrap_or(0),
            };
            self.finished.set(Some(r));
        }
    }

    fn table() -> OpTable {
        OpTable::new(BufPool::new(8, 64, false))
    }

    fn held() -> (Box<Held>, Rc<()>, Rc<std::cell::Cell<Option<i32>>>) {
        let alive = Rc::new(());
        let finished = Rc::new(std::cell::Cell::new(None));
        let h = Box::new(Held {
            _alive: alive.clone(),
            finished: finished.clone(),
        });
        (h, alive, finished)
    }

    /// Finishes what the table handed over, as the loop does outside the driver's borrow.
    fn finish_orphans(t: &mut OpTable) -> usize {
        let mut orphans = Vec::new();
        t.take_finished_orphans(&mut orphans);
        let n = orphans.len();
        let memory = std::cell::RefCell::new(crate::driver::opmem::OpMemory::default());
        for (o, res, flags) in orphans {
            o.finish(res, flags, &memory);
        }
        n
    }

    #[test]
    fn a_completion_wakes_its_op_once_and_the_result_is_taken_once() {
        let mut t = table();
        let (count, waker) = counting_waker();
        let key = t.insert(OpTable::armed(&waker)).unwrap();
        assert_eq!(t.take(key, &waker), None, "nothing yet");
        t.complete(key.0, 42, 0);
        let mut woken = Vec::new();
        t.take_woken(&mut woken);
        assert_eq!(woken.len(), 1, "collected, not woken inside the table");
        assert_eq!(count.wakes(), 0);
        woken.drain(..).for_each(|w| w.wake());
        assert_eq!(count.wakes(), 1);
        assert_eq!(t.take(key, &waker), Some((42, 0)));
        assert_eq!(t.take(key, &waker), None, "the slot is freed once taken");
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_dropped_ops_data_lives_until_its_own_completion_and_is_freed_right_after() {
        let mut t = table();
        let (_count, waker) = counting_waker();
        let key = t.insert(OpTable::armed(&waker)).unwrap();
        let (data, alive, finished) = held();
        t.orphan(key, data);
        assert_eq!(
            Rc::strong_count(&alive),
            2,
            "the table keeps the orphan's data"
        );
        assert_eq!(t.cancels.iter().copied().collect::<Vec<_>>(), [key.0]);
        assert_eq!(
            finish_orphans(&mut t),
            0,
            "nothing to finish before the completion"
        );
        // The cancel's own verdict frees nothing.
        t.complete(key.0 | CANCEL_BIT, 0, 0);
        assert_eq!(Rc::strong_count(&alive), 2);
        t.complete(key.0, -libc::ECANCELED, 0);
        assert_eq!(t.len(), 0, "the slot is freed by the completion");
        assert_eq!(finish_orphans(&mut t), 1);
        assert_eq!(Rc::strong_count(&alive), 1, "and the data right after");
        assert_eq!(finished.get(), Some(-libc::ECANCELED));
    }

    #[test]
    fn a_detached_ops_data_lives_until_its_completion_and_no_cancel_is_sent() {
        let mut t = table();
        let (data, alive, finished) = held();
        let key = t.insert(SlotState::Orphaned(data)).unwrap();
        assert!(t.cancels.is_empty(), "nobody asked to stop it");
        assert_eq!(Rc::strong_count(&alive), 2, "the table keeps its data");
        assert_eq!(finish_orphans(&mut t), 0);
        t.complete(key.0, 9, 0);
        assert_eq!(t.len(), 0, "the slot is freed by the completion");
        let mut woken = Vec::new();
        t.take_woken(&mut woken);
        assert!(woken.is_empty(), "nobody to wake");
        assert_eq!(finish_orphans(&mut t), 1);
        assert_eq!((Rc::strong_count(&alive), finished.get()), (1, Some(9)));
    }

    #[test]
    fn an_op_dropped_after_its_completion_is_finished_without_a_cancel() {
        let mut t = table();
        let (_count, waker) = counting_waker();
        let key = t.insert(OpTable::armed(&waker)).unwrap();
        t.complete(key.0, 7, 0);
        let (data, alive, finished) = held();
        t.orphan(key, data);
        assert!(t.cancels.is_empty(), "nothing in flight to cancel");
        assert_eq!(finish_orphans(&mut t), 1);
        assert_eq!((Rc::strong_count(&alive), finished.get()), (1, Some(7)));
    }

    #[test]
    fn a_stale_completion_for_a_reused_slot_wakes_nobody() {
        let mut t = table();
        let (_c1, w1) = counting_waker();
        let first = t.insert(OpTable::armed(&w1)).unwrap();
        t.complete(first.0, 1, 0);
        assert_eq!(t.take(first, &w1), Some((1, 0)));
        t.take_woken(&mut Vec::new());
        let (_c2, w2) = counting_waker();
        let second = t.insert(OpTable::armed(&w2)).unwrap();
        assert_ne!(first, second, "the reused slot has a new generation");
        t.complete(first.0, 99, 0);
        assert_eq!(t.take(second, &w2), None, "the stale result went nowhere");
        let mut woken = Vec::new();
        t.take_woken(&mut woken);
        assert!(woken.is_empty());
    }

    #[test]
    fn a_zero_copy_result_is_held_until_its_notification() {
        let mut t = table();
        let (_count, waker) = counting_waker();
        let key = t.insert(OpTable::armed(&waker)).unwrap();
        t.complete(key.0, 100, F_MORE);
        assert_eq!(
            t.take(key, &waker),
            None,
            "the kernel still reads the buffer"
        );
        t.complete(key.0, 0, F_NOTIF);
        assert_eq!(t.take(key, &waker).map(|(r, _)| r), Some(100));

        // Orphaned between the result and the notification: the data waits for the latter.
        let key = t.insert(OpTable::armed(&waker)).unwrap();
        t.complete(key.0, 5, F_MORE);
        let (data, alive, finished) = held();
        t.orphan(key, data);
        assert_eq!(finish_orphans(&mut t), 0);
        assert_eq!(Rc::strong_count(&alive), 2);
        t.complete(key.0, 0, F_NOTIF);
        assert_eq!(finish_orphans(&mut t), 1);
        assert_eq!((Rc::strong_count(&alive), finished.get()), (1, Some(5)));
    }

    /// A descriptor nobody else uses (a duplicate of stdin would do; an eventfd is cleaner).
    fn some_fd() -> SharedFd {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: as above.
        SharedFd::new(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    #[test]
    fn a_multishot_queues_up_to_its_cap_then_is_cancelled_once() {
        let mut t = table();
        let fd = some_fd();
        let key = t
            .insert_multishot(OpTable::multishot(MultishotKind::Accept, 2), fd.clone())
            .unwrap();
        assert!(!fd.is_unique(), "the slot keeps the descriptor");
        let (count, waker) = counting_waker();
        assert_eq!(t.multishot_next(key, &waker), Err(()));
        t.complete(key.0, -libc::EAGAIN, F_MORE);
        t.complete(key.0, -libc::EAGAIN, F_MORE);
        assert_eq!(t.multishot_queued(key), 2);
        assert_eq!(t.cancels.len(), 1, "the cap was reached: one cancel");
        t.complete(key.0, -libc::EAGAIN, F_MORE);
        assert_eq!(t.cancels.len(), 1, "and only one");
        let mut woken = Vec::new();
        t.take_woken(&mut woken);
        assert_eq!(woken.len(), 1, "the owner's waker, taken once");
        drop(woken);
        assert_eq!(count.wakes(), 0);
        assert_eq!(
            t.multishot_next(key, &waker),
            Ok(Some((-libc::EAGAIN, F_MORE)))
        );
        t.complete(key.0, -libc::ECANCELED, 0);
        for _ in 0..2 {
            assert!(matches!(t.multishot_next(key, &waker), Ok(Some(_))));
        }
        assert_eq!(
            t.multishot_next(key, &waker),
            Ok(Some((-libc::ECANCELED, 0)))
        );
        assert!(!fd.is_unique(), "kept until the last completion is read");
        assert_eq!(t.multishot_next(key, &waker), Ok(None));
        assert!(fd.is_unique(), "and released with the slot");
        assert_eq!((t.len(), t.multishots()), (0, 0));
    }

    #[test]
    fn a_draining_read_of_the_last_queued_completion_stores_the_waker() {
        let mut t = table();
        let fd = some_fd();
        let key = t
            .insert_multishot(OpTable::multishot(MultishotKind::Accept, 8), fd)
            .unwrap();
        let (count, waker) = counting_waker();
        t.complete(key.0, 1, F_MORE);
        t.complete(key.0, 2, F_MORE);
        t.take_woken(&mut Vec::new()); // no waker was stored yet
        assert_eq!(
            t.multishot_next_draining(key, &waker, true),
            Ok(Some(((1, F_MORE), true))),
            "another one is queued"
        );
        assert_eq!(
            t.multishot_next_draining(key, &waker, true),
            Ok(Some(((2, F_MORE), false))),
            "the last one queued"
        );
        // No poll in between: the next completion wakes the owner all the same.
        t.complete(key.0, 3, F_MORE);
        let mut woken = Vec::new();
        t.take_woken(&mut woken);
        woken.drain(..).for_each(std::task::Waker::wake);
        assert_eq!(count.wakes(), 1);
        // Without `draining` nothing is stored with a completion.
        assert_eq!(
            t.multishot_next_draining(key, &waker, false),
            Ok(Some(((3, F_MORE), true)))
        );
        t.complete(key.0, 4, F_MORE);
        t.take_woken(&mut woken);
        assert!(woken.is_empty());
        // An ended op is never reported drained: the owner reads once more and sees the end.
        t.complete(key.0, -libc::ECANCELED, 0);
        assert_eq!(
            t.multishot_next_draining(key, &waker, true),
            Ok(Some(((4, F_MORE), true)))
        );
        assert_eq!(
            t.multishot_next_draining(key, &waker, true),
            Ok(Some(((-libc::ECANCELED, 0), true)))
        );
        assert_eq!(t.multishot_next_draining(key, &waker, true), Ok(None));
    }

    #[test]
    fn a_posting_multishot_posts_its_token_once_until_its_owner_drains_it() {
        let fd = some_fd();
        let mut t = table();
        let key = t
            .insert_multishot(OpTable::multishot(MultishotKind::Accept, 8), fd.clone())
            .unwrap();
        let list = crate::driver::CompletionList::new();
        t.multishot_post_to(key, Some((list.shared(), 7)));
        let (count, reader) = counting_waker();
        let mut tokens = Vec::new();
        list.take(&mut std::task::Context::from_waker(&reader), &mut tokens);
        assert!(tokens.is_empty());
        // 1. Two completions: one post, and the reader's waker is collected once.
        t.complete(key.0, 1, F_MORE);
        t.complete(key.0, 2, F_MORE);
        let mut woken = Vec::new();
        t.take_woken(&mut woken);
        assert_eq!(woken.len(), 1);
        woken.drain(..).for_each(std::task::Waker::wake);
        assert_eq!(count.wakes(), 1);
        list.take(&mut std::task::Context::from_waker(&reader), &mut tokens);
        assert_eq!(tokens, [7]);
        tokens.clear();
        // 2. The owner reads one, not all: a new completion posts nothing.
        let (owner_count, owner) = counting_waker();
        assert_eq!(
            t.multishot_next_draining(key, &owner, true),
            Ok(Some(((1, F_MORE), true)))
        );
        t.complete(key.0, 3, F_MORE);
        list.take(&mut std::task::Context::from_waker(&reader), &mut tokens);
        assert!(
            tokens.is_empty(),
            "the owner has not found its queue empty yet"
        );
        // 3. It reads the rest: the next completion posts again; the owner's waker is never
        //    kept.
        assert!(matches!(
            t.multishot_next_draining(key, &owner, true),
            Ok(Some((_, true)))
        ));
        assert_eq!(
            t.multishot_next_draining(key, &owner, true),
            Ok(Some(((3, F_MORE), false)))
        );
        t.complete(key.0, 4, F_MORE);
        t.take_woken(&mut woken);
        woken.drain(..).for_each(std::task::Waker::wake);
        list.take(&mut std::task::Context::from_waker(&reader), &mut tokens);
        assert_eq!(tokens, [7]);
        assert_eq!((owner_count.wakes(), count.wakes()), (0, 2));
        // 4. Back to a waker: the owner's next empty read leaves it, and a completion wakes it.
        t.multishot_post_to(key, None);
        assert!(t.multishot_next_draining(key, &owner, true).is_ok());
        assert_eq!(
            t.multishot_next_draining(key, &owner, true),
            Err(fd.raw()),
            "pending, with the descriptor it waits on"
        );
        t.complete(key.0, 5, F_MORE);
        t.take_woken(&mut woken);
        woken.drain(..).for_each(std::task::Waker::wake);
        assert_eq!(owner_count.wakes(), 1);
    }

    #[test]
    fn an_orphaned_multishot_keeps_its_descriptor_until_its_last_completion() {
        let mut t = table();
        let fd = some_fd();
        let key = t
            .insert_multishot(OpTable::multishot(MultishotKind::Accept, 8), fd.clone())
            .unwrap();
        t.multishot_orphan(key);
        assert_eq!(t.cancels.iter().copied().collect::<Vec<_>>(), [key.0]);
        assert!(
            !fd.is_unique(),
            "the SQE may not have reached the kernel yet"
        );
        t.complete(key.0, -libc::EAGAIN, F_MORE);
        assert!(!fd.is_unique());
        t.complete(key.0, -libc::ECANCELED, 0);
        assert!(fd.is_unique());
        assert_eq!((t.len(), t.multishots()), (0, 0));
    }

    #[test]
    fn a_cancel_that_finds_nothing_is_sent_again_while_the_kernel_holds_the_op() {
        let mut t = table();
        let (_count, waker) = counting_waker();
        let key = t.insert(OpTable::armed(&waker)).unwrap();
        t.cancel(key);
        t.cancel(key);
        assert_eq!(t.cancels.len(), 1, "one cancel in flight at a time");
        t.cancels.clear(); // the driver pushed it
        t.complete(key.0 | CANCEL_BIT, -libc::ENOENT, 0);
        assert_eq!(t.stats.cancels_missed, 1);
        assert_eq!(
            t.cancels.iter().copied().collect::<Vec<_>>(),
            [key.0],
            "sent again"
        );
        // A bounded number of times: more than the kernel's 128 async-poll retries.
        for i in 0..130 {
            assert_eq!(t.cancels.len(), 1, "resend {i} goes");
            t.cancels.clear();
            t.complete(key.0 | CANCEL_BIT, -libc::ENOENT, 0);
        }
        for _ in 0..200 {
            t.cancels.clear();
            t.complete(key.0 | CANCEL_BIT, -libc::ENOENT, 0);
        }
        assert!(t.cancels.is_empty(), "resends are bounded");
        t.cancel(key);
        assert_eq!(
            t.cancels.len(),
            1,
            "an explicit cancel (shutdown's) still goes"
        );
        // A miss for an op whose completion came first sends nothing.
        t.cancels.clear();
        t.complete(key.0, -libc::ECANCELED, 0);
        t.complete(key.0 | CANCEL_BIT, -libc::ENOENT, 0);
        assert!(t.cancels.is_empty());
        assert_eq!(t.live_keys(), []);
    }

    #[test]
    fn an_op_a_cancel_interrupted_reads_as_cancelled() {
        let mut t = table();
        let (_count, waker) = counting_waker();
        // Found running in io-wq (EALREADY); the interrupted worker ends the op with EINTR.
        let key = t.insert(OpTable::armed(&waker)).unwrap();
        t.cancel(key);
        t.cancels.clear();
        t.complete(key.0 | CANCEL_BIT, -libc::EALREADY, 0);
        assert!(t.cancels.is_empty(), "found: not sent again");
        t.complete(key.0, -libc::EINTR, 0);
        assert_eq!(t.take(key, &waker), Some((-libc::ECANCELED, 0)));
        // What it did before the cancel is its result.
        let key = t.insert(OpTable::armed(&waker)).unwrap();
        t.cancel(key);
        t.complete(key.0, 100, 0);
        assert_eq!(t.take(key, &waker), Some((100, 0)));
        // Without a cancel, EINTR stays EINTR.
        let key = t.insert(OpTable::armed(&waker)).unwrap();
        t.complete(key.0, -libc::EINTR, 0);
        assert_eq!(t.take(key, &waker), Some((-libc::EINTR, 0)));
    }

    #[test]
    fn an_op_whose_push_failed_leaves_no_slot() {
        let mut t = table();
        let fd = some_fd();
        let key = t
            .insert_multishot(OpTable::multishot(MultishotKind::Recv, 4), fd.clone())
            .unwrap();
        assert!(
            t.remove_unsubmitted(key).is_none(),
            "a multishot holds no op data"
        );
        assert_eq!((t.len(), t.multishots()), (0, 0));
        assert!(fd.is_unique());
        assert_eq!(t.stats.ops_submitted, 0);
        // A single-shot op's data comes back to the caller, whose it still is.
        let (data, alive, finished) = held();
        let key = t.insert(SlotState::Orphaned(data)).unwrap();
        assert!(matches!(
            t.remove_unsubmitted(key),
            Some(SlotState::Orphaned(_))
        ));
        assert_eq!((t.len(), t.stats.ops_submitted), (0, 0));
        assert_eq!((Rc::strong_count(&alive), finished.get()), (1, None));
        let _ = OpKey(0);
    }

    #[test]
    fn single_shot_and_multishot_keys_never_meet() {
        let mut t = table();
        let (_count, waker) = counting_waker();
        // Both tables start at index 0 with consecutive generations: only the table bit
        // tells their keys apart.
        let single = t.insert(OpTable::armed(&waker)).unwrap();
        let multi = t
            .insert_multishot(OpTable::multishot(MultishotKind::Accept, 4), some_fd())
            .unwrap();
        assert_eq!(single.0 & 0x1fff_ffff, multi.0 & 0x1fff_ffff);
        assert_eq!(
            t.take(multi, &waker),
            None,
            "a multishot key is no single-shot op"
        );
        assert_eq!(
            t.multishot_next(single, &waker),
            Ok(None),
            "nor the other way round"
        );
        t.complete(multi.0, 3, F_MORE);
        assert_eq!(
            t.take(single, &waker),
            None,
            "its completion went to the multishot"
        );
        assert_eq!(t.multishot_next(multi, &waker), Ok(Some((3, F_MORE))));
        t.complete(single.0, 5, 0);
        assert_eq!(t.take(single, &waker), Some((5, 0)));
        t.cancel(multi);
        assert_eq!(t.cancels.iter().copied().collect::<Vec<_>>(), [multi.0]);
        assert_eq!((t.len(), t.multishots()), (1, 1));
    }

    /// An orphan that is zero-sized (so leaking its box leaks no heap memory, which would
    /// upset the leak checker under AddressSanitizer) and counts its drops.
    struct Sentinel;

    thread_local! {
        static SENTINEL_DROPS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    impl Drop for Sentinel {
        fn drop(&mut self) {
            SENTINEL_DROPS.with(|d| d.set(d.get() + 1));
        }
    }

    // SAFETY: as for `Held`.
    unsafe impl OpKind for Sentinel {
        type Output = ();
        fn sqe(&mut self) -> squeue::Entry {
            io_uring::opcode::Nop::new().build()
        }
        fn readiness(&self) -> (RawFd, Interest) {
            (-1, Interest::Read)
        }
        fn attempt(&mut self) -> io::Result<u32> {
            Ok(0)
        }
        fn complete(self, _: io::Result<u32>, _: u32) {}
    }

    #[test]
    fn leaking_in_flight_ops_never_frees_their_data() {
        /// The pool the table leaks on purpose stays reachable from here, so the leak checker
        /// sees a deliberate leak as what it is.
        static LEAKED_POOL: std::sync::atomic::AtomicPtr<BufPool> =
            std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());
        let pool = BufPool::new(8, 64, false);
        LEAKED_POOL.store(
            Rc::as_ptr(&pool).cast_mut(),
            std::sync::atomic::Ordering::Relaxed,
        );
        let mut t = OpTable::new(pool.clone());
        let (_count, waker) = counting_waker();
        let key = t.insert(OpTable::armed(&waker)).unwrap();
        t.orphan(key, Box::new(Sentinel));
        t.leak_in_flight();
        assert_eq!(t.len(), 0);
        drop(t);
        assert_eq!(SENTINEL_DROPS.with(|d| d.get()), 0, "leaked, not freed");
        assert_eq!(
            Rc::strong_count(&pool),
            2,
            "the pool the kernel may write is kept"
        );
    }

    #[test]
    fn completion_queue_is_fifo_across_its_inline_slot_and_its_backlog() {
        let mut q = CompletionQueue::default();
        assert_eq!(q.pop_front(), None);
        q.push_back((1, 0));
        assert!(q.rest.is_none(), "one completion does not allocate");
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
