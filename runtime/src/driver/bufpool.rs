//! The per-runtime pool of receive buffers: one allocation cut into equal buffers, lent to the
//! kernel through an io_uring provided-buffer ring (or handed out from a free list on epoll).
//!
//! A multishot receive names a buffer group instead of a buffer: the kernel picks the next
//! free buffer when data arrives, so memory grows with the data in flight, not with the number
//! of connections. The user gets a [`PooledBuf`]; dropping it gives the buffer back.
//!
//! # Ring protocol (io_uring)
//!
//! The ring is an array of `io_uring_buf {addr, len, bid}` entries shared with the kernel; the
//! kernel consumes from the head, we publish at the tail (the `resv` field of entry 0 holds
//! the tail). Publishing: write the entry at `tail & mask`, then store `tail + 1` with release
//! ordering so the kernel sees the entry before the new tail.
//!
//! # Bundles
//!
//! A receive bundle (`IORING_RECVSEND_BUNDLE`) fills several buffers with one completion,
//! which names only the first. The kernel takes buffers strictly in ring order, so the others
//! are the entries published right after it. The pool keeps a shadow of the ring (the buffer
//! at each entry, and each buffer's position) to name them. An entry stays *unreaped* from
//! its publication until the driver reaps the completion that took it, and a publication that
//! would overwrite an unreaped entry waits (`deferred`) until that completion is reaped: the
//! shadow can never lose a buffer that a completion still has to name, whatever order
//! completions arrive in.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::task::Waker;

use io_uring::types::BufRingEntry;

/// Buffer group id of the runtime's pool in its ring.
pub(crate) const POOL_GROUP: u16 = 0;

/// Memory that the kernel may write into: an anonymous private mapping, page-aligned (the
/// buffer ring must be) and populated lazily, so a pool costs resident memory only for the
/// buffers actually used. Unmapped only when the pool (and every buffer lent from it) is gone.
struct Region {
    ptr: NonNull<u8>,
    len: usize,
}

impl Region {
    fn new(size: usize) -> Region {
        let len = size.max(1);
        // SAFETY: an anonymous private mapping at an address the kernel chooses; no existing
        // memory is affected. Failure is checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            let layout = std::alloc::Layout::from_size_align(len, 4096).expect("valid layout");
            std::alloc::handle_alloc_error(layout);
        }
        Region {
            ptr: NonNull::new(p.cast()).expect("mmap never returns null on success"),
            len,
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in `new` with this length and nothing refers to it
        // any more (the pool and every lent buffer are gone, and the ring was unregistered or
        // closed: see `Uring`'s field order).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The pool. Shared (`Rc`) by the driver and every lent buffer.
///
/// Every safe method is sound whatever the caller does: the pool records who holds each
/// buffer (the ring, a completion not yet read, or one [`PooledBuf`]). The two calls that move
/// a buffer out of a completion, [`take_filled`](Self::take_filled) and
/// [`recycle_filled`](Self::recycle_filled), are `unsafe` (only the reader of that completion
/// may make them) and hidden; they panic rather than lend a buffer twice or give the kernel a
/// buffer that is lent:
///
/// ```compile_fail,E0133
/// # ringloop_runtime::Runtime::new().unwrap().block_on(async {
/// let pool = ringloop_runtime::buffer_pool();
/// let _a = pool.take_filled(0, 8); // error: call to unsafe function
/// # });
/// ```
///
/// ```compile_fail,E0624
/// # ringloop_runtime::Runtime::new().unwrap().block_on(async {
/// ringloop_runtime::buffer_pool().recycle(0); // error: private method
/// # });
/// ```
///
/// ```compile_fail,E0133
/// # ringloop_runtime::Runtime::new().unwrap().block_on(async {
/// let mut buf = ringloop_runtime::buffer_pool().take_free().unwrap();
/// buf.set_len(8); // error: call to unsafe function (it would show an earlier receive's bytes)
/// # });
/// ```
pub struct BufPool {
    buffers: Region,
    buf_size: usize,
    count: u16,
    /// The io_uring ring of entries, when the pool is registered with a ring.
    ring: Option<Region>,
    ring_tail: Cell<u16>,
    /// Buffers not lent (epoll) — io_uring tracks them in the ring itself.
    free: RefCell<Vec<u16>>,
    /// Buffers handed to users as `PooledBuf`s (both backends).
    out: Cell<usize>,
    /// Times the kernel found the ring empty (a multishot receive ended with `ENOBUFS`).
    pub(crate) exhaustions: Cell<u64>,
    /// io_uring: buffers in the ring that the kernel can still pick (published, and no
    /// completion naming them reaped yet). Counted by the driver as it reaps.
    in_ring: Cell<usize>,
    /// io_uring: the shadow of the ring, one entry per ring entry (see "Bundles" above).
    shadow: Box<[Cell<ShadowEntry>]>,
    /// io_uring: the ring position (the tail it was published at) of each buffer.
    position_of: Box<[Cell<u16>]>,
    /// io_uring: buffers given back whose ring entry still waits for its completion to be
    /// reaped; published, in order, as soon as it is.
    deferred: RefCell<VecDeque<u16>>,
    /// Receivers waiting for a free buffer, first come first served (see [`BufWait`]).
    waiters: RefCell<VecDeque<Rc<WaitEntry>>>,
    /// Waiters woken and not yet done with their turn: never more than the free buffers, so a
    /// returning buffer wakes one waiter, not all of them.
    turns_out: Cell<usize>,
    /// Who holds each buffer (see [`BufState`]): checked by every call that moves a buffer
    /// from one holder to another, so no sequence of calls can give a buffer two owners or
    /// hand the kernel a buffer that is lent.
    state: Box<[Cell<BufState>]>,
    /// Buffers lent per owner (a [`BufWait`], so a receiver), by owner id: what a receiver's
    /// budget counts. An id is reused only once its `BufWait` is gone and none of its
    /// buffers is still lent.
    owners: RefCell<Vec<OwnerSlot>>,
    free_owners: RefCell<Vec<u32>>,
}

/// `PooledBuf::owner` of a buffer that counts against no receiver.
const NO_OWNER: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct OwnerSlot {
    /// Buffers lent and not yet dropped.
    held: u32,
    /// Its `BufWait` is alive.
    live: bool,
}

/// Who holds one pool buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BufState {
    /// The pool's: in the ring or deferred (io_uring), or in the free list (epoll).
    Free,
    /// io_uring: the kernel filled it and the driver reaped the completion that names it; the
    /// completion's reader takes it ([`BufPool::take_filled`]) or gives it back
    /// ([`BufPool::recycle_filled`]).
    Filled,
    /// Lent to a [`PooledBuf`].
    Lent,
}

/// What the pool knows of one ring entry.
#[derive(Clone, Copy, Debug, Default)]
struct ShadowEntry {
    bid: u16,
    /// Published, and no reaped completion has named it yet.
    unreaped: bool,
}

impl fmt::Debug for BufPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufPool")
            .field("count", &self.count)
            .field("buf_size", &self.buf_size)
            .field("out", &self.out.get())
            .finish()
    }
}

impl BufPool {
    /// A pool of `count` buffers of `buf_size` bytes. `count` must be a power of two (the
    /// ring's size) no larger than 32768.
    pub(crate) fn new(count: u16, buf_size: usize, with_ring: bool) -> Rc<BufPool> {
        assert!(
            count.is_power_of_two() && count <= 32768,
            "pool size must be a power of two"
        );
        let buffers = Region::new(buf_size * count as usize);
        let ring =
            with_ring.then(|| Region::new(count as usize * std::mem::size_of::<BufRingEntry>()));
        let shadow_len = if with_ring { count as usize } else { 0 };
        assert!(
            u32::try_from(buf_size).is_ok(),
            "pool buffers are at most 4 GiB each"
        );
        let pool = Rc::new(BufPool {
            buffers,
            buf_size,
            count,
            ring,
            ring_tail: Cell::new(0),
            free: RefCell::new(if with_ring {
                Vec::new()
            } else {
                (0..count).rev().collect()
            }),
            out: Cell::new(0),
            exhaustions: Cell::new(0),
            in_ring: Cell::new(0),
            shadow: (0..shadow_len).map(|_| Cell::default()).collect(),
            position_of: (0..shadow_len).map(|_| Cell::new(0)).collect(),
            deferred: RefCell::new(VecDeque::new()),
            waiters: RefCell::new(VecDeque::new()),
            turns_out: Cell::new(0),
            state: (0..count).map(|_| Cell::new(BufState::Free)).collect(),
            owners: RefCell::new(Vec::new()),
            free_owners: RefCell::new(Vec::new()),
        });
        if with_ring {
            for bid in 0..count {
                pool.publish(bid);
            }
        }
        pool
    }

    /// The ring's address and size, to register with the kernel.
    pub(crate) fn ring_addr(&self) -> Option<(u64, u16)> {
        self.ring
            .as_ref()
            .map(|r| (r.ptr.as_ptr() as u64, self.count))
    }

    /// Bytes in each buffer.
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// Buffers in the pool.
    pub fn count(&self) -> usize {
        self.count as usize
    }

    /// Buffers handed to users as [`PooledBuf`]s. On io_uring, buffers the kernel filled
    /// that wait in a receiver's queue are neither out nor [`free`](Self::free).
    pub fn out(&self) -> usize {
        self.out.get()
    }

    /// Buffers free now: in the ring for the kernel to pick (io_uring) or in the free list
    /// (epoll). The rest are lent out ([`out`](Self::out)), or taken by the kernel with their
    /// completions not yet read by a receiver.
    pub fn free(&self) -> usize {
        self.available() + self.deferred.borrow().len()
    }

    fn buf_ptr(&self, bid: u16) -> *mut u8 {
        debug_assert!(bid < self.count);
        // SAFETY: `bid < count`, so the offset is inside the region.
        unsafe { self.buffers.ptr.as_ptr().add(bid as usize * self.buf_size) }
    }

    /// Gives buffer `bid` to the kernel (io_uring) or the free list (epoll).
    fn publish(&self, bid: u16) {
        self.state[bid as usize].set(BufState::Free);
        if self.ring.is_some() {
            let mut deferred = self.deferred.borrow_mut();
            if !deferred.is_empty() || !self.publish_to_ring(bid) {
                deferred.push_back(bid); // in order, behind those already waiting
                return;
            }
        } else {
            self.free.borrow_mut().push(bid);
        }
        self.grant_turns();
    }

    /// Writes `bid` at the ring's tail, unless that entry still waits for its completion to
    /// be reaped (then `false`: the caller defers it).
    fn publish_to_ring(&self, bid: u16) -> bool {
        match &self.ring {
            Some(ring) => {
                let tail = self.ring_tail.get();
                let index = (tail & (self.count - 1)) as usize;
                if self.shadow[index].get().unreaped {
                    return false;
                }
                self.shadow[index].set(ShadowEntry {
                    bid,
                    unreaped: true,
                });
                self.position_of[bid as usize].set(tail);
                let base = ring.ptr.as_ptr() as *mut BufRingEntry;
                // SAFETY: `index < count`, so the entry is inside the ring region; the kernel
                // only reads entries between its head and our published tail, and this one is
                // past the tail until the store below.
                unsafe {
                    let entry = &mut *base.add(index);
                    entry.set_addr(self.buf_ptr(bid) as u64);
                    entry.set_len(self.buf_size as u32);
                    entry.set_bid(bid);
                }
                let new_tail = tail.wrapping_add(1);
                self.ring_tail.set(new_tail);
                // SAFETY: the tail field lives in the ring region; the kernel reads it with
                // acquire ordering, so the release store publishes the entry written above.
                unsafe {
                    let tail_ptr = BufRingEntry::tail(base) as *const AtomicU16;
                    (*tail_ptr).store(new_tail, Ordering::Release);
                }
                self.in_ring.set(self.in_ring.get() + 1);
                true
            }
            None => false,
        }
    }

    /// The driver reaped a completion that names ring buffer `first` and received `bytes`
    /// (io_uring): the kernel took `first` and, for a bundle, the buffers after it in ring
    /// order, as many as `bytes` fills. Calls `filled(bid, len)` for each, in order; a
    /// completion with no data (an error, end of stream) took just `first`.
    pub(crate) fn reaped(&self, first: u16, bytes: i32, mut filled: impl FnMut(u16, usize)) {
        if self.ring.is_none() || first >= self.count {
            return;
        }
        let mask = self.count - 1;
        let start = self.position_of[first as usize].get();
        let mut left = usize::try_from(bytes).unwrap_or(0);
        let mut taken: u16 = 0;
        loop {
            let index = (start.wrapping_add(taken) & mask) as usize;
            let entry = self.shadow[index].get();
            debug_assert!(
                entry.unreaped,
                "a completion named a buffer the kernel did not hold"
            );
            debug_assert!(taken > 0 || entry.bid == first);
            self.shadow[index].set(ShadowEntry {
                bid: entry.bid,
                unreaped: false,
            });
            self.in_ring.set(self.in_ring.get().saturating_sub(1));
            debug_assert_eq!(self.state[entry.bid as usize].get(), BufState::Free);
            self.state[entry.bid as usize].set(BufState::Filled);
            let len = left.min(self.buf_size);
            left -= len;
            taken += 1;
            filled(entry.bid, len);
            if left == 0 || taken == self.count {
                break;
            }
        }
        self.publish_deferred();
    }

    /// Publishes deferred buffers, oldest first, while the ring's tail entry is free.
    #[inline]
    fn publish_deferred(&self) {
        // Checked inline: after every completion that names a buffer, and almost always
        // nothing waits.
        if !self.deferred.borrow().is_empty() {
            self.publish_deferred_now();
        }
    }

    #[cold]
    #[inline(never)]
    fn publish_deferred_now(&self) {
        let mut published = false;
        loop {
            let Some(&bid) = self.deferred.borrow().front() else {
                break;
            };
            if !self.publish_to_ring(bid) {
                break;
            }
            self.deferred.borrow_mut().pop_front();
            published = true;
        }
        if published {
            self.grant_turns();
        }
    }

    /// Buffers a receive could get now: in the ring (io_uring) or the free list (epoll).
    fn available(&self) -> usize {
        match &self.ring {
            Some(_) => self.in_ring.get(),
            None => self.free.borrow().len(),
        }
    }

    /// Wakes waiters, oldest first, while there are more free buffers than turns handed out.
    #[inline]
    fn grant_turns(&self) {
        // Checked inline: every buffer given back comes here, and nobody waits in most cases.
        if self.turns_out.get() < self.available() && !self.waiters.borrow().is_empty() {
            self.grant_turns_now();
        }
    }

    #[cold]
    #[inline(never)]
    fn grant_turns_now(&self) {
        while self.turns_out.get() < self.available() {
            let Some(entry) = self.waiters.borrow_mut().pop_front() else {
                return;
            };
            if entry.state.get() != WaitState::Queued {
                continue; // its receiver is gone
            }
            entry.state.set(WaitState::Turn);
            self.turns_out.set(self.turns_out.get() + 1);
            if let Some(waker) = entry.waker.take() {
                waker.wake();
            }
        }
    }

    /// Takes buffer `bid`, which the kernel filled with `len` bytes (the buffer id and length
    /// of a buffer-select completion, io_uring): the receiver of that completion becomes the
    /// buffer's one owner.
    ///
    /// Not part of the public API (for `ringloop-net`'s pooled receiver).
    ///
    /// # Safety
    /// `bid` and `len` come from a completion of this pool's buffer group that the caller owns
    /// (read from its own [`Multishot`](crate::Multishot) or op) and has not yet taken or
    /// recycled: at most one `take_filled` or [`recycle_filled`](Self::recycle_filled) per buffer a
    /// completion names. The pool checks what it can: a buffer it does not have as filled (out
    /// of range, lent, back in the ring) panics, and so does a `len` above the buffer size; but
    /// it cannot tell one receiver's filled buffer from another's, and taking a buffer that
    /// another connection's completion names hands out that connection's data.
    ///
    /// # Panics
    /// As above: `bid` out of range, a buffer not filled by the kernel and unread, or `len`
    /// larger than [`buf_size`](Self::buf_size).
    #[doc(hidden)]
    pub unsafe fn take_filled(self: &Rc<Self>, bid: u16, len: usize) -> PooledBuf {
        assert!(
            len <= self.buf_size,
            "take_filled: length {len} exceeds the pool's buffer size {}",
            self.buf_size
        );
        self.claim(bid, BufState::Filled, "take_filled");
        self.out.set(self.out.get() + 1);
        PooledBuf {
            pool: self.clone(),
            bid,
            start: 0,
            end: len as u32,
            owner: NO_OWNER,
        }
    }

    /// Moves `bid` from `from` to `Lent`, or panics naming `what`.
    fn claim(&self, bid: u16, from: BufState, what: &str) {
        assert!(
            bid < self.count,
            "{what}: buffer id {bid} is out of range (the pool has {} buffers)",
            self.count
        );
        let cell = &self.state[bid as usize];
        let found = cell.get();
        assert!(
            found == from,
            "{what}: buffer {bid} is {found:?}, not {from:?}"
        );
        cell.set(BufState::Lent);
    }

    /// Takes a free buffer to receive into (epoll), or `None` if every buffer is out.
    pub fn take_free(self: &Rc<Self>) -> Option<PooledBuf> {
        let bid = self.free.borrow_mut().pop()?;
        self.claim(bid, BufState::Free, "take_free");
        self.out.set(self.out.get() + 1);
        Some(PooledBuf {
            pool: self.clone(),
            bid,
            start: 0,
            end: 0,
            owner: NO_OWNER,
        })
    }

    /// Gives back a buffer the kernel filled but nobody will read (io_uring: a completion that
    /// names a buffer and carries no data, or one whose receiver is gone).
    ///
    /// Not part of the public API (for `ringloop-net`'s pooled receiver).
    ///
    /// # Safety
    /// As [`take_filled`](Self::take_filled): `bid` comes from a completion the caller owns,
    /// not yet taken or recycled.
    ///
    /// # Panics
    /// If `bid` is out of range or the pool does not have it as filled and unread (lent, or
    /// already back in the ring).
    #[doc(hidden)]
    pub unsafe fn recycle_filled(&self, bid: u16) {
        self.claim(bid, BufState::Filled, "recycle_filled");
        self.publish(bid);
    }

    /// The driver's [`recycle_filled`](Self::recycle_filled): for completions nobody will read
    /// (an orphaned receive's, a stale one). Never panics (drop paths call it): a buffer that
    /// is not filled and unread is left alone.
    pub(crate) fn recycle(&self, bid: u16) {
        if bid < self.count && self.state[bid as usize].get() == BufState::Filled {
            self.publish(bid);
        }
    }

    /// Whether a buffer is free now (epoll: in the free list; io_uring: in the ring, not yet
    /// taken by the kernel).
    pub fn has_free(&self) -> bool {
        self.available() > 0
    }

    /// A place in this pool's queue for a free buffer, for one receiver; see [`BufWait`].
    pub fn waiter(self: &Rc<Self>) -> BufWait {
        let live = OwnerSlot {
            held: 0,
            live: true,
        };
        let owner = match self.free_owners.borrow_mut().pop() {
            Some(id) => {
                self.owners.borrow_mut()[id as usize] = live;
                id
            }
            None => {
                let mut owners = self.owners.borrow_mut();
                owners.push(live);
                u32::try_from(owners.len() - 1).expect("fewer than 4 billion receivers")
            }
        };
        BufWait {
            pool: self.clone(),
            entry: None,
            owner,
            lost_race: false,
            turn_used: false,
        }
    }

    /// A buffer counted against `owner` came back (or moved to another owner).
    #[inline]
    fn disown(&self, owner: u32) {
        if owner == NO_OWNER {
            return;
        }
        let mut owners = self.owners.borrow_mut();
        let Some(slot) = owners.get_mut(owner as usize) else {
            return;
        };
        slot.held = slot.held.saturating_sub(1);
        if slot.held == 0 && !slot.live {
            drop(owners);
            self.free_owner(owner);
        }
    }

    /// `owner`'s receiver is gone and its last buffer came back: its id may be reused.
    #[cold]
    #[inline(never)]
    fn free_owner(&self, owner: u32) {
        self.free_owners.borrow_mut().push(owner);
    }

    /// Receivers queued for a buffer (not counting those woken and taking their turn).
    pub fn waiting(&self) -> usize {
        self.waiters
            .borrow()
            .iter()
            .filter(|e| e.state.get() == WaitState::Queued)
            .count()
    }
}

/// Where a receiver stands in its pool's queue for a free buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WaitState {
    /// In the queue, its waker stored.
    Queued,
    /// Woken by the pool: a free buffer is meant for it until it uses or returns its turn.
    Turn,
    /// Its receiver let go (dropped, or took its turn); the pool skips it.
    Done,
}

#[derive(Debug)]
struct WaitEntry {
    state: Cell<WaitState>,
    waker: RefCell<Option<Waker>>,
}

/// One receiver's place in its pool's first-come-first-served queue for a free buffer, and
/// the count of the buffers lent to it (its budget; see [`held`](Self::held)).
///
/// When the pool runs dry, receivers queue here. A returning buffer wakes the oldest waiter,
/// and only as many waiters as there are free buffers hold a *turn* at once, so ten thousand
/// connections waiting on a 512-buffer pool do not all wake (and all race for one buffer)
/// each time one buffer comes back, and none waits behind later arrivals for ever.
///
/// A turn is short-lived: it lasts from the wake to the receiver's next poll, where the
/// receiver either takes a buffer at once (epoll), arms a receive that will take one when data
/// comes (io_uring: [`armed`](Self::armed) uses the turn up), or gives it back. So no idle
/// receiver holds a turn, and a buffer that comes back always reaches a receiver whose data
/// is waiting: those that arm and then find the pool empty (`ENOBUFS`) queue again, at the
/// front if they had been given a turn.
///
/// Protocol for a receiver, on every poll:
/// 1. [`may_take`](Self::may_take): whether it may try to take a buffer now (it holds a turn,
///    or there are free buffers beyond the turns handed out). If not,
///    [`wait`](Self::wait) and return `Pending`.
/// 2. After trying: [`took_buffer`](Self::took_buffer) once it got one,
///    [`armed`](Self::armed) once a receive that takes buffers by itself is in the kernel,
///    [`lost_race`](Self::lost_race) if the pool ran dry first (queue again, at the front),
///    or [`release`](Self::release) if it stopped wanting one (end of stream, an error, its
///    task stopped waiting).
///
/// Dropping it gives back a turn it holds, so a receiver that goes away never strands a
/// free buffer while others wait. Misuse of the protocol can only make the queue unfair; it
/// cannot lend a buffer twice (the pool tracks every buffer's holder).
#[derive(Debug)]
pub struct BufWait {
    pool: Rc<BufPool>,
    entry: Option<Rc<WaitEntry>>,
    /// Its id among the pool's owners (see [`held`](Self::held)).
    owner: u32,
    /// It was given a turn and then lost the buffer to someone else: it queues at the front.
    lost_race: bool,
    /// Its armed receive was armed with a turn: if that receive finds the pool empty, the
    /// receiver queues again at the front.
    turn_used: bool,
}

impl BufWait {
    /// The pool this receiver waits on.
    pub fn pool(&self) -> &Rc<BufPool> {
        &self.pool
    }

    fn holds_turn(&self) -> bool {
        self.entry
            .as_ref()
            .is_some_and(|e| e.state.get() == WaitState::Turn)
    }

    /// Whether the receiver is in the pool's queue (waiting, or woken and holding a turn).
    pub fn is_queued(&self) -> bool {
        self.entry.is_some()
    }

    /// Whether the receiver may try to take a buffer now.
    #[inline]
    pub fn may_take(&self) -> bool {
        if self.holds_turn() {
            return true;
        }
        if self.entry.is_some() {
            return false; // still queued
        }
        self.pool.available() > self.pool.turns_out.get()
    }

    /// Queues for a buffer (or, already queued, updates the waker): `waker` is woken when a
    /// buffer is meant for this receiver.
    pub fn wait(&mut self, waker: &Waker) {
        if self.holds_turn() {
            // It had its turn and found nothing free: back to the head of the queue.
            self.give_back_turn();
            self.lost_race = true;
        }
        if let Some(entry) = &self.entry {
            *entry.waker.borrow_mut() = Some(waker.clone());
            return;
        }
        let entry = Rc::new(WaitEntry {
            state: Cell::new(WaitState::Queued),
            waker: RefCell::new(Some(waker.clone())),
        });
        let mut waiters = self.pool.waiters.borrow_mut();
        if std::mem::take(&mut self.lost_race) {
            waiters.push_front(entry.clone());
        } else {
            waiters.push_back(entry.clone());
        }
        drop(waiters);
        self.entry = Some(entry);
        // Buffers may have come back between the caller's check and now.
        self.pool.grant_turns();
    }

    /// The receiver got a buffer: its turn (if it held one) is used up.
    #[inline]
    pub fn took_buffer(&mut self) {
        self.lost_race = false;
        self.turn_used = false;
        if self.holds_turn() {
            self.pool.turns_out.set(self.pool.turns_out.get() - 1);
            self.forget_entry();
            // A turn ends with the buffer taken, which `available` already counts.
        }
    }

    /// The receiver armed a receive that takes a buffer by itself when data arrives (io_uring's
    /// buffer selection): a turn it holds is used up now, not when data comes, so an idle
    /// connection holds no turn while others wait. If that receive then finds the pool empty,
    /// [`lost_race`](Self::lost_race) queues it at the front.
    pub fn armed(&mut self) {
        if self.holds_turn() {
            self.turn_used = true;
            self.give_back_turn();
        }
    }

    /// The receiver tried and the pool was empty (another receiver was faster): if it had been
    /// given a turn for this try, it will queue again at the front with its next
    /// [`wait`](Self::wait).
    pub fn lost_race(&mut self) {
        if std::mem::take(&mut self.turn_used) || self.holds_turn() {
            self.lost_race = true;
            self.give_back_turn();
        }
    }

    /// The receiver no longer wants a buffer (end of stream, an error, its task stopped
    /// waiting): it leaves the queue, and a turn it holds goes to the next waiter.
    pub fn release(&mut self) {
        self.lost_race = false;
        self.turn_used = false;
        self.give_back_turn();
        self.forget_entry();
    }

    /// Buffers lent to this receiver ([`adopt`](Self::adopt)ed) and not yet dropped.
    pub fn held(&self) -> usize {
        self.pool
            .owners
            .borrow()
            .get(self.owner as usize)
            .map_or(0, |s| s.held as usize)
    }

    /// [`BufPool::take_filled`], with the buffer counted against this receiver at once (as
    /// [`adopt`](Self::adopt) would).
    ///
    /// Not part of the public API (for `ringloop-net`'s pooled receiver).
    ///
    /// # Safety
    /// As [`BufPool::take_filled`].
    ///
    /// # Panics
    /// As [`BufPool::take_filled`].
    #[doc(hidden)]
    #[inline]
    pub unsafe fn take_filled(&self, bid: u16, len: usize) -> PooledBuf {
        // SAFETY: forwarded from the caller.
        let mut buf = unsafe { self.pool.take_filled(bid, len) };
        if let Some(slot) = self.pool.owners.borrow_mut().get_mut(self.owner as usize) {
            slot.held += 1;
        }
        buf.owner = self.owner;
        buf
    }

    /// Copies the `len` bytes the kernel filled buffer `bid` with into `dst`, as many as fit,
    /// and gives the buffer back to the pool at once if they all fit; else the rest comes back
    /// as a [`PooledBuf`] counted against this receiver (as [`take_filled`](Self::take_filled)
    /// would, advanced past what was copied). Returns how many bytes were copied: the first
    /// that many elements of `dst` are initialised. For readers that copy out of the pool (the
    /// borrowed-buffer adapters): no `PooledBuf` is made for a chunk read whole.
    ///
    /// Not part of the public API (for `ringloop-net`'s pooled receiver).
    ///
    /// # Safety
    /// As [`BufPool::take_filled`].
    ///
    /// # Panics
    /// As [`BufPool::take_filled`].
    #[doc(hidden)]
    #[inline]
    pub unsafe fn copy_filled(
        &self,
        bid: u16,
        len: usize,
        dst: &mut [MaybeUninit<u8>],
    ) -> (usize, Option<PooledBuf>) {
        let pool = &*self.pool;
        assert!(
            len <= pool.buf_size,
            "copy_filled: length {len} exceeds the pool's buffer size {}",
            pool.buf_size
        );
        // Lent for the copy: no other call can move it meanwhile.
        pool.claim(bid, BufState::Filled, "copy_filled");
        let n = len.min(dst.len());
        // SAFETY: the buffer is ours alone (just claimed from `Filled`: the kernel is done with
        // it and nobody else holds it), `n <= len <= buf_size` bytes lie inside it and are
        // initialised (the mapping is zero-filled), and `dst` has room for `n`; a pool buffer
        // cannot overlap the caller's `dst`, which is borrowed mutably.
        unsafe {
            std::ptr::copy_nonoverlapping(pool.buf_ptr(bid), dst.as_mut_ptr().cast::<u8>(), n);
        }
        if n == len {
            pool.publish(bid);
            return (n, None);
        }
        pool.out.set(pool.out.get() + 1);
        if let Some(slot) = pool.owners.borrow_mut().get_mut(self.owner as usize) {
            slot.held += 1;
        }
        let rest = PooledBuf {
            pool: self.pool.clone(),
            bid,
            start: n as u32,
            end: len as u32,
            owner: self.owner,
        };
        (n, Some(rest))
    }

    /// Counts `buf` against this receiver (see [`held`](Self::held)) until it is dropped or
    /// adopted by another receiver.
    pub fn adopt(&self, buf: &mut PooledBuf) {
        if !Rc::ptr_eq(&buf.pool, &self.pool) || buf.owner == self.owner {
            return;
        }
        self.pool.disown(buf.owner);
        if let Some(slot) = self.pool.owners.borrow_mut().get_mut(self.owner as usize) {
            slot.held += 1;
        }
        buf.owner = self.owner;
    }

    fn give_back_turn(&mut self) {
        if self.holds_turn() {
            self.pool.turns_out.set(self.pool.turns_out.get() - 1);
            self.forget_entry();
            self.pool.grant_turns();
        }
    }

    fn forget_entry(&mut self) {
        if let Some(entry) = self.entry.take() {
            entry.state.set(WaitState::Done);
            entry.waker.take();
        }
    }
}

impl Drop for BufWait {
    fn drop(&mut self) {
        // A queued entry is skipped by the pool; a held turn goes to the next waiter.
        self.give_back_turn();
        self.forget_entry();
        let mut owners = self.pool.owners.borrow_mut();
        if let Some(slot) = owners.get_mut(self.owner as usize) {
            slot.live = false;
            if slot.held == 0 {
                self.pool.free_owners.borrow_mut().push(self.owner);
            }
        }
    }
}

/// A receive buffer lent from the runtime's pool; dropping it gives it back.
///
/// Derefs to the received bytes. `!Send`: it must go back to its own runtime's pool. Each
/// buffer has exactly one `PooledBuf` at a time: the pool tracks who holds every buffer (see
/// "Soundness of the pool's public API" in the runtime's `DESIGN.md`).
pub struct PooledBuf {
    pool: Rc<BufPool>,
    /// The valid bytes are `start..end` of the buffer. `u32`s, with `owner` and `bid`, keep
    /// the whole at 24 bytes.
    start: u32,
    end: u32,
    /// The [`BufWait`] whose receiver this buffer counts against (its budget), or `NO_OWNER`.
    owner: u32,
    bid: u16,
}

impl PooledBuf {
    /// The buffer's id in the pool.
    pub fn id(&self) -> u16 {
        self.bid
    }

    /// How many bytes the buffer can hold.
    pub fn capacity(&self) -> usize {
        self.pool.buf_size
    }

    /// The start of the whole buffer (`capacity` bytes), to receive into. Writing through it is
    /// the caller's `unsafe` business; the bytes count once [`set_len`](Self::set_len) says so.
    pub fn spare_mut_ptr(&mut self) -> *mut u8 {
        self.pool.buf_ptr(self.bid)
    }

    /// Sets the valid bytes to the first `len` of the buffer, after a receive wrote them.
    ///
    /// Not part of the public API (for receives into [`spare_mut_ptr`](Self::spare_mut_ptr)).
    ///
    /// # Safety
    /// The first `len` bytes were written since this buffer was taken from the pool. (The
    /// memory is always initialised, so reading it is never undefined behaviour; but bytes not
    /// written by this receive are an earlier receive's, possibly another connection's data.)
    ///
    /// # Panics
    /// If `len` exceeds [`capacity`](Self::capacity).
    #[doc(hidden)]
    pub unsafe fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.pool.buf_size,
            "set_len: {len} bytes do not fit a {}-byte pool buffer",
            self.pool.buf_size
        );
        self.start = 0;
        self.end = len as u32;
    }

    /// Drops the first `n` valid bytes (a reader consumed them): the buffer then derefs to the
    /// rest.
    ///
    /// # Panics
    /// If `n` exceeds the valid length.
    pub fn advance(&mut self, n: usize) {
        assert!(
            n <= self.len(),
            "advance: {n} bytes past the end of a {}-byte chunk",
            self.len()
        );
        self.start += n as u32;
    }

    /// Keeps only the first `len` valid bytes (no effect if there are fewer).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len() {
            self.end = self.start + len as u32;
        }
    }
}

impl Deref for PooledBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: the buffer is lent to us (the pool's state says `Lent` for `bid` until this
        // drops: neither the kernel nor another `PooledBuf` can have it), `start <= end <=
        // buf_size` (checked where they are set), and the mapping is zero-filled, so every
        // byte is initialised.
        unsafe {
            std::slice::from_raw_parts(
                self.pool.buf_ptr(self.bid).add(self.start as usize),
                (self.end - self.start) as usize,
            )
        }
    }
}

impl DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; `&mut self` makes the access exclusive.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.pool.buf_ptr(self.bid).add(self.start as usize),
                (self.end - self.start) as usize,
            )
        }
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for PooledBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledBuf")
            .field("id", &self.bid)
            .field("len", &self.len())
            .finish()
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        self.pool.disown(self.owner);
        self.pool.out.set(self.pool.out.get() - 1);
        self.pool.publish(self.bid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_wakers::{counting_waker, Count};

    fn wakes(c: &Count) -> usize {
        c.wakes()
    }

    /// `take_filled` of a buffer a (simulated) completion named, as the receiver would.
    fn take(pool: &Rc<BufPool>, bid: u16, len: usize) -> PooledBuf {
        // SAFETY: every test calls it once per buffer a reaped completion named.
        unsafe { pool.take_filled(bid, len) }
    }

    /// A free-list pool (the epoll flavour) with every buffer lent out.
    fn drained(count: u16) -> (Rc<BufPool>, Vec<PooledBuf>) {
        let pool = BufPool::new(count, 64, false);
        let bufs: Vec<_> = (0..count).map(|_| pool.take_free().unwrap()).collect();
        assert!(!pool.has_free());
        (pool, bufs)
    }

    #[test]
    fn one_returned_buffer_wakes_one_waiter_oldest_first() {
        let (pool, mut bufs) = drained(4);
        let mut waiters: Vec<_> = (0..10).map(|_| pool.waiter()).collect();
        let counts: Vec<_> = waiters
            .iter_mut()
            .map(|w| {
                assert!(!w.may_take());
                let (count, waker) = counting_waker();
                w.wait(&waker);
                count
            })
            .collect();
        assert_eq!(pool.waiting(), 10);

        // 1. One buffer back: exactly the oldest waiter is woken, and may take it.
        drop(bufs.pop());
        let woken: Vec<usize> = counts.iter().map(|c| wakes(c)).collect();
        assert_eq!(woken, [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(waiters[0].may_take());
        // A receiver that never queued may not jump ahead of the turn handed out.
        assert!(!pool.waiter().may_take());

        // 2. It takes the buffer; the next buffer back wakes the second waiter only.
        let taken = pool.take_free().unwrap();
        waiters[0].took_buffer();
        drop(bufs.pop());
        let woken: Vec<usize> = counts.iter().map(|c| wakes(c)).collect();
        assert_eq!(woken, [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        drop(taken);
        assert_eq!(
            wakes(&counts[2]),
            1,
            "a third buffer free: the third waiter"
        );
        assert_eq!(pool.waiting(), 7);
    }

    #[test]
    fn a_waiter_dropped_with_its_turn_passes_it_on() {
        let (pool, mut bufs) = drained(2);
        let mut first = pool.waiter();
        let mut second = pool.waiter();
        let (c1, w1) = counting_waker();
        let (c2, w2) = counting_waker();
        first.wait(&w1);
        second.wait(&w2);
        drop(bufs.pop());
        assert_eq!((wakes(&c1), wakes(&c2)), (1, 0));
        // 1. The first receiver goes away before using its turn: the second gets it.
        drop(first);
        assert_eq!(wakes(&c2), 1);
        assert!(second.may_take());
        // 2. A queued (not woken) waiter that goes away is skipped.
        let mut third = pool.waiter();
        let mut fourth = pool.waiter();
        let (c3, w3) = counting_waker();
        let (c4, w4) = counting_waker();
        third.wait(&w3);
        fourth.wait(&w4);
        drop(third);
        second.release();
        // The free buffer's turn skipped the dropped third and went to the fourth.
        assert_eq!((wakes(&c3), wakes(&c4)), (0, 1));
        assert!(fourth.may_take());
    }

    #[test]
    fn a_waiter_that_loses_its_buffer_queues_again_at_the_front() {
        let (pool, mut bufs) = drained(1);
        let mut first = pool.waiter();
        let mut second = pool.waiter();
        let (c1, w1) = counting_waker();
        let (c2, w2) = counting_waker();
        first.wait(&w1);
        second.wait(&w2);
        drop(bufs.pop());
        assert_eq!((wakes(&c1), wakes(&c2)), (1, 0));
        // 1. Someone outside the queue (an armed receive) took the buffer first.
        let stolen = pool.take_free().unwrap();
        first.lost_race();
        first.wait(&w1);
        // 2. When it comes back, the first waiter is still first.
        drop(stolen);
        assert_eq!((wakes(&c1), wakes(&c2)), (2, 0));
    }

    #[test]
    fn ring_counts_what_the_kernel_took() {
        // The io_uring flavour, without a kernel: the driver's reap calls `note_consumed`.
        let pool = BufPool::new(2, 64, true);
        assert!(pool.has_free());
        pool.reaped(0, 10, |_, _| {});
        pool.reaped(1, 10, |_, _| {});
        assert!(!pool.has_free(), "both buffers are with the kernel");
        let mut waiter = pool.waiter();
        let (count, waker) = counting_waker();
        assert!(!waiter.may_take());
        waiter.wait(&waker);
        // The kernel's completion named buffer 1; the receiver drops it.
        drop(take(&pool, 1, 10));
        assert_eq!(wakes(&count), 1);
        assert!(waiter.may_take());
    }

    /// What `reaped` reports: `(bid, len)` per buffer, in order.
    fn reap(pool: &BufPool, first: u16, bytes: i32) -> Vec<(u16, usize)> {
        let mut got = Vec::new();
        pool.reaped(first, bytes, |bid, len| got.push((bid, len)));
        got
    }

    #[test]
    fn a_bundle_names_the_buffers_after_its_first_in_ring_order() {
        // Eight buffers of 64 bytes, published 0..8 at ring positions 0..8.
        let pool = BufPool::new(8, 64, true);
        // 1. A plain completion: one buffer.
        assert_eq!(reap(&pool, 0, 10), [(0, 10)]);
        // 2. A bundle of 150 bytes from buffer 1: buffers 1, 2, 3, the last one part full.
        assert_eq!(reap(&pool, 1, 150), [(1, 64), (2, 64), (3, 22)]);
        // 3. Buffers 2 then 0 come back: ring positions 8 and 9 (entries 0 and 1).
        let two = take(&pool, 2, 64);
        let zero = take(&pool, 0, 10);
        drop(two);
        drop(zero);
        // 4. A bundle from buffer 4 wraps around the ring to them.
        assert_eq!(
            reap(&pool, 4, 5 * 64 + 1),
            [(4, 64), (5, 64), (6, 64), (7, 64), (2, 64), (0, 1)]
        );
        // 5. An error completion that names a buffer took just that one.
        drop(take(&pool, 1, 0));
        assert_eq!(reap(&pool, 1, -libc::ENOBUFS), [(1, 0)]);
    }

    #[test]
    fn a_buffer_back_before_an_older_completion_is_reaped_waits_for_it() {
        let pool = BufPool::new(4, 64, true);
        // The kernel took buffers 0 and 1 (positions 0 and 1), and 1's completion is reaped
        // first. Buffer 1 comes back: its ring position would be 4, entry 0, which the
        // unreaped completion of buffer 0 still needs to name.
        assert_eq!(reap(&pool, 1, 64), [(1, 64)]);
        drop(take(&pool, 1, 64));
        // 1. Deferred: the entry still names buffer 0.
        assert_eq!(reap(&pool, 0, 64), [(0, 64)]);
        // 2. Reaping buffer 0 published buffer 1 behind buffers 2 and 3.
        assert_eq!(reap(&pool, 2, 3 * 64), [(2, 64), (3, 64), (1, 64)]);
        assert!(!pool.has_free(), "every buffer was taken by the kernel");
        // 3. Buffers come back in a different order than they were taken.
        for bid in [3, 0, 1, 2] {
            drop(take(&pool, bid, 64));
        }
        assert_eq!(reap(&pool, 3, 4 * 64), [(3, 64), (0, 64), (1, 64), (2, 64)]);
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn take_filled_of_a_buffer_id_out_of_range_panics() {
        let pool = BufPool::new(4, 64, true);
        drop(take(&pool, 60000, 8));
    }

    #[test]
    #[should_panic(expected = "is Lent, not Filled")]
    fn take_filled_twice_panics_rather_than_lend_one_buffer_twice() {
        let pool = BufPool::new(4, 64, true);
        pool.reaped(0, 8, |_, _| {});
        let first = take(&pool, 0, 8);
        let _second = take(&pool, 0, 8);
        drop(first);
    }

    #[test]
    #[should_panic(expected = "is Free, not Filled")]
    fn take_filled_of_a_buffer_still_in_the_ring_panics() {
        let pool = BufPool::new(4, 64, true);
        drop(take(&pool, 2, 8));
    }

    #[test]
    #[should_panic(expected = "exceeds the pool's buffer size")]
    fn take_filled_longer_than_a_buffer_panics() {
        let pool = BufPool::new(4, 64, true);
        pool.reaped(0, 8, |_, _| {});
        drop(take(&pool, 0, 65));
    }

    #[test]
    #[should_panic(expected = "is Lent, not Filled")]
    fn recycling_a_lent_buffer_panics_rather_than_hand_it_to_the_kernel() {
        let pool = BufPool::new(4, 64, true);
        pool.reaped(0, 8, |_, _| {});
        let lent = take(&pool, 0, 8);
        // SAFETY: deliberately wrong; the pool must catch it.
        unsafe { pool.recycle_filled(0) };
        drop(lent);
    }

    #[test]
    fn the_driver_recycle_ignores_buffers_that_are_not_filled() {
        let pool = BufPool::new(4, 64, true);
        pool.reaped(0, 8, |_, _| {});
        let lent = take(&pool, 0, 8);
        pool.recycle(0); // lent: left alone
        pool.recycle(3); // in the ring: left alone
        pool.recycle(60000); // out of range: left alone
        assert_eq!(pool.free(), 3);
        drop(lent);
        assert_eq!(pool.free(), 4);
    }

    #[test]
    fn advance_truncate_and_set_len_stay_inside_the_buffer() {
        let pool = BufPool::new(2, 8, false);
        let mut buf = pool.take_free().unwrap();
        // SAFETY: the test writes the bytes first.
        unsafe {
            std::ptr::copy_nonoverlapping(b"abcdefgh".as_ptr(), buf.spare_mut_ptr(), 8);
            buf.set_len(8);
        }
        buf.advance(3);
        assert_eq!(&*buf, b"defgh");
        buf.truncate(2);
        assert_eq!(&*buf, b"de");
        buf.truncate(10);
        assert_eq!(&*buf, b"de");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| buf.advance(3)));
        assert!(r.is_err(), "advance past the end panics");
        // SAFETY: as above.
        let r =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe { buf.set_len(9) }));
        assert!(r.is_err(), "set_len past the capacity panics");
    }

    #[test]
    fn a_turn_is_used_up_by_arming_so_idle_receivers_hold_none() {
        let (pool, mut bufs) = drained(2);
        let (mut idle, mut busy) = (pool.waiter(), pool.waiter());
        let (ci, wi) = counting_waker();
        let (cb, wb) = counting_waker();
        idle.wait(&wi);
        busy.wait(&wb);
        // 1. One buffer back: the first waiter gets the turn, arms a receive and goes idle.
        drop(bufs.pop());
        assert_eq!((wakes(&ci), wakes(&cb)), (1, 0));
        assert!(idle.may_take());
        idle.armed();
        // 2. Its turn passed on at once: the second waiter (whose data waits) may take the
        //    free buffer, though the idle one never received anything.
        assert_eq!(wakes(&cb), 1);
        assert!(busy.may_take());
        let got = pool.take_free().unwrap();
        busy.took_buffer();
        // 3. The idle receiver's receive finds the pool empty when its data comes: it queues
        //    again at the front, ahead of a later waiter.
        let mut later = pool.waiter();
        let (cl, wl) = counting_waker();
        later.wait(&wl);
        idle.lost_race();
        idle.wait(&wi);
        drop(got);
        assert_eq!((wakes(&ci), wakes(&cl)), (2, 0));
    }

    #[test]
    fn lent_buffers_count_against_their_receiver_until_dropped() {
        let pool = BufPool::new(4, 64, false);
        let first = pool.waiter();
        let mut a = pool.take_free().unwrap();
        let mut b = pool.take_free().unwrap();
        first.adopt(&mut a);
        first.adopt(&mut b);
        first.adopt(&mut b); // twice: counted once
        assert_eq!(first.held(), 2);
        drop(a);
        assert_eq!(first.held(), 1);
        // The receiver goes; its id is not reused while a buffer of it is lent.
        drop(first);
        let second = pool.waiter();
        assert_eq!(second.held(), 0);
        drop(b);
        let third = pool.waiter();
        assert_eq!((second.held(), third.held()), (0, 0));
        let mut c = pool.take_free().unwrap();
        third.adopt(&mut c);
        second.adopt(&mut c); // moves
        assert_eq!((second.held(), third.held()), (1, 0));
    }

    /// `copy_filled` copies what fits; a chunk copied whole goes back to the ring at once
    /// (nothing lent), a partly copied one comes back as a lent `PooledBuf` of the rest,
    /// counted against the receiver; a buffer not filled, or copied twice, panics.
    #[test]
    fn copy_filled_gives_a_whole_chunk_back_and_lends_the_rest_of_a_partial_one() {
        let pool = BufPool::new(4, 64, true);
        let receiver = pool.waiter();
        // The kernel filled buffers 0 and 1 (as a receive's completions would say).
        // SAFETY (test): writing into buffers that no one holds while "the kernel" fills them.
        unsafe {
            std::ptr::copy_nonoverlapping(b"hello".as_ptr(), pool.buf_ptr(0), 5);
            std::ptr::copy_nonoverlapping(b"0123456789".as_ptr(), pool.buf_ptr(1), 10);
        }
        pool.reaped(0, 5, |_, _| {});
        pool.reaped(1, 10, |_, _| {});
        assert_eq!(pool.free(), 2);
        let mut dst = [MaybeUninit::<u8>::uninit(); 8];
        // SAFETY: our completions, each buffer copied once.
        let (n, rest) = unsafe { receiver.copy_filled(0, 5, &mut dst) };
        assert_eq!(n, 5);
        assert!(rest.is_none());
        // SAFETY: `copy_filled` initialised the first `n` elements.
        let got: Vec<u8> = dst[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        assert_eq!(got, b"hello");
        assert_eq!(
            (pool.out(), receiver.held(), pool.free()),
            (0, 0, 3),
            "back at once"
        );
        // SAFETY: as above.
        let (n, rest) = unsafe { receiver.copy_filled(1, 10, &mut dst) };
        assert_eq!(n, 8);
        let rest = rest.expect("the rest is lent");
        assert_eq!(&*rest, b"89");
        assert_eq!((pool.out(), receiver.held(), pool.free()), (1, 1, 3));
        drop(rest);
        assert_eq!((pool.out(), receiver.held(), pool.free()), (0, 0, 4));
        // Buffer 1 is back in the ring: copying it again is refused.
        let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut dst = [MaybeUninit::<u8>::uninit(); 8];
            // SAFETY: deliberately wrong (a buffer no completion names now): it must panic
            // before touching the buffer.
            unsafe { receiver.copy_filled(1, 10, &mut dst) }
        }));
        assert!(again.is_err());
    }
}
