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

use std::cell::{Cell, RefCell};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};

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
pub struct BufPool {
    buffers: Region,
    buf_size: usize,
    count: u16,
    /// The io_uring ring of entries, when the pool is registered with a ring.
    ring: Option<Region>,
    ring_tail: Cell<u16>,
    /// Buffers not lent (epoll) — io_uring tracks them in the ring itself.
    free: RefCell<Vec<u16>>,
    /// Buffers lent to users or queued in a connection (both backends).
    out: Cell<usize>,
    /// Times the kernel found the ring empty (a multishot receive ended with `ENOBUFS`).
    pub(crate) exhaustions: Cell<u64>,
    /// Wakers of receivers waiting for a buffer to come back.
    waiters: RefCell<Vec<std::task::Waker>>,
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
            waiters: RefCell::new(Vec::new()),
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

    /// Buffers lent out (to users, or queued in connections).
    pub fn out(&self) -> usize {
        self.out.get()
    }

    fn buf_ptr(&self, bid: u16) -> *mut u8 {
        debug_assert!(bid < self.count);
        // SAFETY: `bid < count`, so the offset is inside the region.
        unsafe { self.buffers.ptr.as_ptr().add(bid as usize * self.buf_size) }
    }

    /// Gives buffer `bid` to the kernel (io_uring) or the free list (epoll).
    fn publish(&self, bid: u16) {
        match &self.ring {
            Some(ring) => {
                let tail = self.ring_tail.get();
                let index = (tail & (self.count - 1)) as usize;
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
            }
            None => self.free.borrow_mut().push(bid),
        }
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for w in waiters {
            w.wake();
        }
    }

    /// Takes buffer `bid`, which the kernel filled with `len` bytes (the buffer id and length
    /// of a buffer-select completion, io_uring).
    pub fn take_filled(self: &Rc<Self>, bid: u16, len: usize) -> PooledBuf {
        self.out.set(self.out.get() + 1);
        PooledBuf {
            pool: self.clone(),
            bid,
            len: len.min(self.buf_size),
        }
    }

    /// Takes a free buffer to receive into (epoll), or `None` if every buffer is out.
    pub fn take_free(self: &Rc<Self>) -> Option<PooledBuf> {
        let bid = self.free.borrow_mut().pop()?;
        self.out.set(self.out.get() + 1);
        Some(PooledBuf {
            pool: self.clone(),
            bid,
            len: 0,
        })
    }

    /// Gives back a buffer the kernel filled but nobody will read.
    pub fn recycle(&self, bid: u16) {
        if bid < self.count {
            self.publish(bid);
        }
    }

    /// Whether a buffer is free now (epoll: in the free list; io_uring: not all are out).
    pub fn has_free(&self) -> bool {
        match &self.ring {
            Some(_) => self.out.get() < self.count as usize,
            None => !self.free.borrow().is_empty(),
        }
    }

    /// Wakes `waker` when a buffer comes back.
    pub fn wait_for_free(&self, waker: &std::task::Waker) {
        let mut w = self.waiters.borrow_mut();
        if !w.iter().any(|x| x.will_wake(waker)) {
            w.push(waker.clone());
        }
    }
}

/// A receive buffer lent from the runtime's pool; dropping it gives it back.
///
/// Derefs to the received bytes. `!Send`: it must go back to its own runtime's pool.
pub struct PooledBuf {
    pool: Rc<BufPool>,
    bid: u16,
    len: usize,
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

    /// The start of the whole buffer (`capacity` bytes), to receive into.
    pub fn spare_mut_ptr(&mut self) -> *mut u8 {
        self.pool.buf_ptr(self.bid)
    }

    /// Sets how many bytes are valid (after a receive wrote them), at most `capacity`. The pool's
    /// memory is a zero-filled mapping, so every byte is always initialised.
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.pool.buf_size);
    }
}

impl Deref for PooledBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: the buffer is lent to us (neither the kernel nor anyone else writes it until
        // it is published again on drop), and the mapping is zero-filled, so every byte is
        // initialised.
        unsafe { std::slice::from_raw_parts(self.pool.buf_ptr(self.bid), self.len) }
    }
}

impl DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.pool.buf_ptr(self.bid), self.len) }
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
            .field("len", &self.len)
            .finish()
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        self.pool.out.set(self.pool.out.get() - 1);
        self.pool.publish(self.bid);
    }
}
