//! [`BridgeQueue`]: a FIFO queue with a blocking side for threads and an async side for tasks
//! (the pattern of Python's `janus`), bounded or not.
//!
//! asyncio's `Queue` is for the tasks of one loop, `queue.Queue` for threads; code that hands
//! work between a thread pool and a loop needs both at once. A `BridgeQueue` is one queue with
//! both faces:
//!
//! * threads call [`blocking_put`](BridgeQueue::blocking_put) and
//!   [`blocking_get`](BridgeQueue::blocking_get) (or their `_timeout` variants), which block
//!   the calling thread while the queue is full or empty;
//! * tasks await [`put`](BridgeQueue::put) and [`get`](BridgeQueue::get), which suspend the task
//!   instead, as cancellation points;
//! * [`try_put`](BridgeQueue::try_put) and [`try_get`](BridgeQueue::try_get) never wait, from
//!   anywhere.
//!
//! Any mix works: threads to tasks, tasks to threads, tasks of one runtime to tasks of another
//! on another thread. The queue is `Clone` (every clone is the same queue) and `Send + Sync`
//! when the items are `Send`.
//!
//! ```
//! use ringloop_runtime::{sync::BridgeQueue, Runtime};
//!
//! let queue = BridgeQueue::new(16);
//! let producer = std::thread::spawn({
//!     let queue = queue.clone();
//!     move || {
//!         for n in 1..=100u64 {
//!             queue.blocking_put(n).unwrap(); // blocks this thread while 16 are queued
//!         }
//!         queue.close(); // what was put is still delivered
//!     }
//! });
//! let sum = Runtime::new().unwrap().block_on(async {
//!     let mut sum = 0;
//!     while let Ok(n) = queue.get().await {
//!         sum += n;
//!     }
//!     sum // `get` failed with `Closed`: closed and drained
//! });
//! assert_eq!(sum, 5050);
//! producer.join().unwrap();
//! ```
//!
//! # Order, fairness and closing
//!
//! Items come out in the order they went in. Waiters are served first come, first served, tasks
//! and threads alike, with direct hand-off: an item put while getters wait goes straight to the
//! first of them, and room made by a get goes straight to the first waiting putter, whose item
//! is then in the queue. So a late comer never barges ahead, and an item put by one producer is
//! never overtaken by a later item of the same producer.
//!
//! [`close`](BridgeQueue::close) wakes everyone: later puts and every putter still waiting for
//! room fail with [`PutError::Closed`], which gives the item back; items already in the queue
//! are still delivered, and once they are all taken, gets fail with [`GetError::Closed`].
//!
//! # Cancellation loses nothing
//!
//! * A task cancelled while waiting in `get().await` loses no item. If an item was already
//!   handed to it, its `get` returns the item (the cancel request stays pending for the task's
//!   next await); otherwise it withdraws and resolves to [`GetError::Cancelled`]. If its future
//!   is dropped instead, an item handed to it goes to the next waiting getter, or back to the
//!   *front* of the queue.
//! * A task cancelled while waiting in `put(item).await` gets the item back in
//!   [`PutError::Cancelled`]; once room was found, the item is in the queue and the `put`
//!   returns `Ok`. A waiting `put` future that is dropped drops its item with it (it was never
//!   put).
//! * A thread whose `_timeout` call times out is in the same position: a get returns an item
//!   handed to it, if any; a put gives its item back in [`PutError::TimedOut`].
//!
//! An item handed back to the front after a dropped `get` may briefly make the queue hold one
//! item more than its bound; puts wait until it is below the bound again.
//!
//! # The wake path
//!
//! The queue is a `Mutex` around the items and two FIFO lists of waiters, each with a `Waker`.
//! A task's waker is its ringloop waker, which, woken from another thread, queues the task on
//! its own loop's injector and wakes that loop (eventfd). A thread's waker unparks the thread.
//! A waiter checks the queue and enlists under the same lock that a put or a get hands over
//! under, and the hand-off writes the item into the waiter's own slot before waking it: so a
//! wake is never lost, and a waiter woken for nothing (a spurious unpark) finds its slot empty
//! and waits again. Wakers are woken after the lock is released.
//!
//! Never call the blocking methods on a runtime's thread: they would block that loop, and with
//! it every task that could make progress for them.

use std::collections::VecDeque;
use std::error::Error;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use super::waiters::{wake_all, WaitList, WaiterKey, Wakers};
use crate::task::awaiting::{self, names, Leaf};
use crate::task::cancel::{take_cancel, take_cancel_waiting};
use crate::task::Cancelled;

/// A FIFO queue with a blocking side for threads and an async side for tasks; see the
/// [module docs](self).
///
/// `maxsize` 0 means unbounded, as for [`Queue`](super::Queue) and asyncio's `Queue`.
///
/// A task producing, a thread consuming:
///
/// ```
/// use ringloop_runtime::{sync::BridgeQueue, sync::bridge::GetError, Runtime};
/// use std::time::Duration;
///
/// let queue = BridgeQueue::new(4);
/// let consumer = std::thread::spawn({
///     let queue = queue.clone();
///     move || {
///         let mut got = Vec::new();
///         loop {
///             match queue.blocking_get_timeout(Duration::from_secs(10)) {
///                 Ok(line) => got.push(line),
///                 Err(GetError::Closed) => return got,
///                 Err(e) => panic!("{e}"),
///             }
///         }
///     }
/// });
/// Runtime::new().unwrap().block_on(async {
///     for line in ["a", "b", "c"] {
///         queue.put(line).await.unwrap(); // suspends the task while 4 are queued
///     }
///     queue.close();
/// });
/// assert_eq!(consumer.join().unwrap(), ["a", "b", "c"]);
/// ```
pub struct BridgeQueue<T> {
    shared: Arc<Mutex<State<T>>>,
}

/// Invariants: getters are queued only while `items` is empty; putters only while the queue is
/// full; neither once `closed`.
struct State<T> {
    items: VecDeque<T>,
    /// 0: unbounded.
    maxsize: usize,
    closed: bool,
    /// Each getter's slot: `None` while queued; the item once one is handed to it (or still
    /// `None` if the close dequeued it).
    getters: WaitList<Option<T>>,
    /// Each putter's item: `Some` while queued; taken (`None`) once moved into `items`, or left
    /// `Some` when the close dequeued it (the put fails with it).
    putters: WaitList<Option<T>>,
}

impl<T> State<T> {
    fn is_full(&self) -> bool {
        self.maxsize > 0 && self.items.len() >= self.maxsize
    }

    /// Adds an item that fits: to the first getter if one waits, else to the back of `items`.
    fn deliver(&mut self, item: T, wakers: &mut Wakers) {
        match self.getters.pop_front() {
            Some((slot, waker)) => {
                *slot = Some(item);
                wakers.extend(waker);
            }
            None => self.items.push_back(item),
        }
    }

    /// Takes the front item, then lets waiting putters fill the room it made.
    fn take(&mut self, wakers: &mut Wakers) -> Option<T> {
        let item = self.items.pop_front()?;
        while !self.is_full() {
            let Some((slot, waker)) = self.putters.pop_front() else {
                break;
            };
            self.items
                .push_back(slot.take().expect("a queued putter holds its item"));
            wakers.extend(waker);
        }
        Some(item)
    }

    /// An item handed to a getter that went away: to the next getter, else back to the front.
    fn hand_back(&mut self, item: T, wakers: &mut Wakers) {
        match self.getters.pop_front() {
            Some((slot, waker)) => {
                *slot = Some(item);
                wakers.extend(waker);
            }
            None => self.items.push_front(item),
        }
    }
}

impl<T> Clone for BridgeQueue<T> {
    /// Another handle to the same queue.
    fn clone(&self) -> Self {
        BridgeQueue {
            shared: self.shared.clone(),
        }
    }
}

impl<T> BridgeQueue<T> {
    /// A queue holding at most `maxsize` items; 0 means unbounded.
    pub fn new(maxsize: usize) -> Self {
        BridgeQueue {
            shared: Arc::new(Mutex::new(State {
                items: VecDeque::new(),
                maxsize,
                closed: false,
                getters: WaitList::default(),
                putters: WaitList::default(),
            })),
        }
    }

    /// An unbounded queue: `BridgeQueue::new(0)`. Puts never wait (mind the memory: nothing
    /// pushes back on a fast producer).
    pub fn unbounded() -> Self {
        Self::new(0)
    }

    /// Our critical sections never panic with the lock held, but a poisoned lock still holds
    /// consistent state: go on with it rather than panic.
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The bound given to [`new`](Self::new) (0: unbounded).
    pub fn maxsize(&self) -> usize {
        self.lock().maxsize
    }

    /// How many items are in the queue; items already handed to a waiting getter that has not
    /// run yet are not counted.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Whether the queue holds no item.
    pub fn is_empty(&self) -> bool {
        self.lock().items.is_empty()
    }

    /// Whether the queue holds `maxsize` items (never when unbounded).
    pub fn is_full(&self) -> bool {
        self.lock().is_full()
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Closes the queue and wakes every waiter: later puts, and putters still waiting for room,
    /// fail with [`PutError::Closed`] (with their item); items already in the queue can still
    /// be taken, and gets fail with [`GetError::Closed`] once none is left. An item already
    /// handed to a waiting getter whose future is then dropped goes back to the front of the
    /// queue, closed or not, and is delivered to the next get. Returns false if the queue was
    /// already closed.
    pub fn close(&self) -> bool {
        let mut wakers = Wakers::new();
        {
            let mut st = self.lock();
            if st.closed {
                return false;
            }
            st.closed = true;
            while let Some((_, waker)) = st.putters.pop_front() {
                wakers.extend(waker);
            }
            while let Some((_, waker)) = st.getters.pop_front() {
                wakers.extend(waker);
            }
        }
        wake_all(wakers);
        true
    }

    /// Puts `item` if there is room right now, without waiting; from a thread or a task.
    ///
    /// # Errors
    /// [`PutError::Full`] or [`PutError::Closed`], with the item.
    pub fn try_put(&self, item: T) -> Result<(), PutError<T>> {
        let mut wakers = Wakers::new();
        {
            let mut st = self.lock();
            if st.closed {
                return Err(PutError::Closed(item));
            }
            if st.is_full() {
                return Err(PutError::Full(item));
            }
            st.deliver(item, &mut wakers);
        }
        wake_all(wakers);
        Ok(())
    }

    /// Takes the front item if there is one, without waiting; from a thread or a task.
    ///
    /// # Errors
    /// [`GetError::Empty`] while the queue is open and empty, [`GetError::Closed`] once it is
    /// closed and empty.
    pub fn try_get(&self) -> Result<T, GetError> {
        let mut wakers = Wakers::new();
        let result = {
            let mut st = self.lock();
            match st.take(&mut wakers) {
                Some(item) => Ok(item),
                None if st.closed => Err(GetError::Closed),
                None => Err(GetError::Empty),
            }
        };
        wake_all(wakers);
        result
    }

    /// Puts `item` from a thread, blocking it while the queue is full (`queue.Queue.put`).
    ///
    /// # Errors
    /// [`PutError::Closed`] with the item if the queue is closed, before or while waiting.
    pub fn blocking_put(&self, item: T) -> Result<(), PutError<T>> {
        self.blocking_put_until(item, None)
    }

    /// Like [`blocking_put`](Self::blocking_put), giving up after `timeout`
    /// (`queue.Queue.put(item, timeout=...)`).
    ///
    /// # Errors
    /// [`PutError::Closed`], or [`PutError::TimedOut`] if no room was found in time; both give
    /// the item back.
    pub fn blocking_put_timeout(&self, item: T, timeout: Duration) -> Result<(), PutError<T>> {
        // A timeout too large for the clock waits without bound.
        self.blocking_put_until(item, Instant::now().checked_add(timeout))
    }

    fn blocking_put_until(&self, item: T, deadline: Option<Instant>) -> Result<(), PutError<T>> {
        let mut wakers = Wakers::new();
        let key = {
            let mut st = self.lock();
            if st.closed {
                return Err(PutError::Closed(item));
            }
            if !st.is_full() {
                st.deliver(item, &mut wakers);
                drop(st);
                wake_all(wakers);
                return Ok(());
            }
            if is_past(deadline) {
                return Err(PutError::TimedOut(item));
            }
            st.putters.push_back(Some(item), &thread_waker())
        };
        loop {
            park_until(deadline);
            let mut st = self.lock();
            if !st.putters.is_queued(&key) {
                // Dequeued: our item went into the queue, or the close failed the put.
                let (slot, _) = st.putters.remove(key);
                return match slot {
                    None => Ok(()),
                    Some(item) => Err(PutError::Closed(item)),
                };
            }
            if is_past(deadline) {
                let (slot, _) = st.putters.remove(key);
                let item = slot.expect("a queued putter holds its item");
                return Err(PutError::TimedOut(item));
            }
            // Woken for nothing (a spurious unpark, or a wake meant for an earlier wait).
        }
    }

    /// Takes the front item from a thread, blocking it while the queue is empty
    /// (`queue.Queue.get`).
    ///
    /// # Errors
    /// [`GetError::Closed`] once the queue is closed and empty.
    pub fn blocking_get(&self) -> Result<T, GetError> {
        self.blocking_get_until(None)
    }

    /// Like [`blocking_get`](Self::blocking_get), giving up after `timeout`
    /// (`queue.Queue.get(timeout=...)`).
    ///
    /// # Errors
    /// [`GetError::Closed`], or [`GetError::TimedOut`] if no item came in time.
    pub fn blocking_get_timeout(&self, timeout: Duration) -> Result<T, GetError> {
        self.blocking_get_until(Instant::now().checked_add(timeout))
    }

    fn blocking_get_until(&self, deadline: Option<Instant>) -> Result<T, GetError> {
        let mut wakers = Wakers::new();
        let key = {
            let mut st = self.lock();
            match st.take(&mut wakers) {
                Some(item) => {
                    drop(st);
                    wake_all(wakers);
                    return Ok(item);
                }
                None if st.closed => return Err(GetError::Closed),
                None if is_past(deadline) => return Err(GetError::TimedOut),
                None => st.getters.push_back(None, &thread_waker()),
            }
        };
        loop {
            park_until(deadline);
            let mut st = self.lock();
            if !st.getters.is_queued(&key) {
                // Dequeued: handed an item, or the close woke us with none.
                let (slot, _) = st.getters.remove(key);
                return slot.ok_or(GetError::Closed);
            }
            if is_past(deadline) {
                st.getters.remove(key);
                return Err(GetError::TimedOut);
            }
        }
    }

    /// Puts `item` from a task, waiting for room while the queue is full; a cancellation point.
    /// See the [module docs](self) for what a cancel does to the item.
    ///
    /// The future resolves to `Ok(())` once the item is in the queue, or to
    /// [`PutError::Closed`] or [`PutError::Cancelled`], which give the item back.
    pub fn put(&self, item: T) -> PutFuture<'_, T> {
        PutFuture {
            queue: self,
            item: Some(item),
            key: None,
        }
    }

    /// Takes the front item from a task, waiting while the queue is empty; a cancellation
    /// point that loses no item (see the [module docs](self)).
    ///
    /// The future resolves to the item, to [`GetError::Closed`] once the queue is closed and
    /// empty, or to [`GetError::Cancelled`].
    pub fn get(&self) -> GetFuture<'_, T> {
        GetFuture {
            queue: self,
            key: None,
        }
    }
}

impl<T> fmt::Debug for BridgeQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("BridgeQueue")
            .field("len", &st.items.len())
            .field("maxsize", &st.maxsize)
            .field("closed", &st.closed)
            .finish_non_exhaustive()
    }
}

/// Whether `deadline` has passed (never, for no deadline).
fn is_past(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

/// Parks this thread until it is unparked (or spuriously woken), or until `deadline`.
fn park_until(deadline: Option<Instant>) {
    // On a loop's thread (which these calls should not block, but may): the wakes it queued
    // on its ring go now; the end of the poll, which would send them, waits for this call.
    crate::runtime::flush_wakes();
    match deadline {
        None => thread::park(),
        Some(d) => {
            let now = Instant::now();
            if now < d {
                thread::park_timeout(d - now);
            }
        }
    }
}

/// Wakes a blocked thread: the waker of a thread waiting in a blocking call.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

thread_local! {
    /// This thread's waker, made once: a blocking call that waits clones it (one atomic
    /// increment) instead of allocating a new one.
    static THREAD_WAKER: Waker = Waker::from(Arc::new(Unpark(thread::current())));
}

fn thread_waker() -> Waker {
    THREAD_WAKER
        .try_with(Waker::clone)
        // While this thread's locals are being destroyed: a fresh one does the same.
        .unwrap_or_else(|_| Waker::from(Arc::new(Unpark(thread::current()))))
}

/// The future of [`BridgeQueue::put`].
#[must_use = "futures do nothing unless awaited"]
pub struct PutFuture<'a, T> {
    queue: &'a BridgeQueue<T>,
    /// The item, until it is in the queue, handed to a getter, or in a putter slot.
    item: Option<T>,
    key: Option<WaiterKey>,
}

// Nothing is structurally pinned: the item is moved in and out by value.
impl<T> Unpin for PutFuture<'_, T> {}

impl<T> Future for PutFuture<'_, T> {
    type Output = Result<(), PutError<T>>;

    /// # Panics
    /// If polled again after it completed (the item has been put or given back).
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut wakers = Wakers::new();
        let mut st = this.queue.lock();
        let result = if let Some(key) = &this.key {
            if !st.putters.is_queued(key) {
                // Dequeued: a get moved our item into the queue, or the close failed the put.
                let (slot, _) = st.putters.remove(this.key.take().expect("checked"));
                match slot {
                    None => Ok(()),
                    Some(item) => Err(PutError::Closed(item)),
                }
            } else if let Some(cancelled) = take_cancel_waiting() {
                let (slot, _) = st.putters.remove(this.key.take().expect("checked"));
                let item = slot.expect("a queued putter holds its item");
                Err(PutError::Cancelled { item, cancelled })
            } else {
                let old = st.putters.set_waker(key, cx.waker());
                drop(st);
                drop(old);
                awaiting::note(Leaf::sync(&names::BRIDGE_PUT), false);
                return Poll::Pending;
            }
        } else {
            let item = this.item.take().expect("PutFuture polled after completion");
            if st.closed {
                Err(PutError::Closed(item))
            } else if !st.is_full() {
                st.deliver(item, &mut wakers);
                Ok(())
            } else if let Some(cancelled) = take_cancel() {
                Err(PutError::Cancelled { item, cancelled })
            } else {
                this.key = Some(st.putters.push_back(Some(item), cx.waker()));
                drop(st);
                awaiting::note(Leaf::sync(&names::BRIDGE_PUT), true);
                return Poll::Pending;
            }
        };
        drop(st);
        wake_all(wakers);
        Poll::Ready(result)
    }
}

impl<T> Drop for PutFuture<'_, T> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            // Still queued (or failed by the close): the item was never put and is dropped with
            // the future, after the lock is released (its destructor may use the queue).
            let (slot, _) = self.queue.lock().putters.remove(key);
            drop(slot);
        }
    }
}

impl<T> fmt::Debug for PutFuture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutFuture")
            .field("waiting", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

/// The future of [`BridgeQueue::get`].
#[must_use = "futures do nothing unless awaited"]
pub struct GetFuture<'a, T> {
    queue: &'a BridgeQueue<T>,
    key: Option<WaiterKey>,
}

impl<T> Future for GetFuture<'_, T> {
    type Output = Result<T, GetError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut wakers = Wakers::new();
        let mut st = this.queue.lock();
        let result = match &this.key {
            Some(key) if !st.getters.is_queued(key) => {
                // Dequeued: handed an item (ours even if a cancel is pending: nothing is lost),
                // or woken by the close with none.
                let (slot, _) = st.getters.remove(this.key.take().expect("checked"));
                slot.ok_or(GetError::Closed)
            }
            Some(key) => match take_cancel_waiting() {
                Some(c) => {
                    st.getters.remove(this.key.take().expect("checked"));
                    Err(GetError::Cancelled(c))
                }
                None => {
                    let old = st.getters.set_waker(key, cx.waker());
                    drop(st);
                    drop(old);
                    awaiting::note(Leaf::sync(&names::BRIDGE_GET), false);
                    return Poll::Pending;
                }
            },
            None => match st.take(&mut wakers) {
                Some(item) => Ok(item),
                None if st.closed => Err(GetError::Closed),
                None => match take_cancel() {
                    Some(c) => Err(GetError::Cancelled(c)),
                    None => {
                        this.key = Some(st.getters.push_back(None, cx.waker()));
                        drop(st);
                        awaiting::note(Leaf::sync(&names::BRIDGE_GET), true);
                        return Poll::Pending;
                    }
                },
            },
        };
        drop(st);
        wake_all(wakers);
        Poll::Ready(result)
    }
}

impl<T> Drop for GetFuture<'_, T> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut wakers = Wakers::new();
        {
            let mut st = self.queue.lock();
            if let (Some(item), _) = st.getters.remove(key) {
                // Handed an item but never ran: it is not lost.
                st.hand_back(item, &mut wakers);
            }
        }
        wake_all(wakers);
    }
}

impl<T> fmt::Debug for GetFuture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetFuture")
            .field("waiting", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a put did not put its item; every variant gives the item back.
///
/// Which variants a call can return: [`try_put`](BridgeQueue::try_put) `Full` or `Closed`;
/// [`blocking_put`](BridgeQueue::blocking_put) `Closed`;
/// [`blocking_put_timeout`](BridgeQueue::blocking_put_timeout) `Closed` or `TimedOut`;
/// [`put`](BridgeQueue::put) `Closed` or `Cancelled`.
pub enum PutError<T> {
    /// The queue is full ([`try_put`](BridgeQueue::try_put) only).
    Full(T),
    /// The queue is closed, or was closed while the put waited for room.
    Closed(T),
    /// No room was found before the timeout.
    TimedOut(T),
    /// The task was cancelled while waiting for room.
    Cancelled {
        /// The item that was not put.
        item: T,
        /// The cancellation, to handle or to let escape.
        cancelled: Cancelled,
    },
}

impl<T> PutError<T> {
    /// The item that was not put.
    pub fn into_inner(self) -> T {
        match self {
            PutError::Full(item)
            | PutError::Closed(item)
            | PutError::TimedOut(item)
            | PutError::Cancelled { item, .. } => item,
        }
    }

    /// Whether the queue is closed.
    pub fn is_closed(&self) -> bool {
        matches!(self, PutError::Closed(_))
    }
}

impl<T> fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("Full(..)"),
            PutError::Closed(_) => f.write_str("Closed(..)"),
            PutError::TimedOut(_) => f.write_str("TimedOut(..)"),
            PutError::Cancelled { cancelled, .. } => f
                .debug_struct("Cancelled")
                .field("cancelled", cancelled)
                .finish_non_exhaustive(),
        }
    }
}

impl<T> fmt::Display for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("queue is full"),
            PutError::Closed(_) => f.write_str("queue is closed"),
            PutError::TimedOut(_) => f.write_str("timed out waiting for room in the queue"),
            PutError::Cancelled { cancelled, .. } => {
                write!(f, "{cancelled} (while waiting to put into a queue)")
            }
        }
    }
}

impl<T> Error for PutError<T> {}

impl<T> From<PutError<T>> for io::Error {
    /// The item is dropped. `Full` becomes [`WouldBlock`](io::ErrorKind::WouldBlock), `Closed`
    /// [`BrokenPipe`](io::ErrorKind::BrokenPipe), `TimedOut`
    /// [`TimedOut`](io::ErrorKind::TimedOut); a cancellation converts as [`Cancelled`] does
    /// (so it still counts as escaping when a task returns it).
    fn from(e: PutError<T>) -> io::Error {
        let kind = match &e {
            PutError::Full(_) => io::ErrorKind::WouldBlock,
            PutError::Closed(_) => io::ErrorKind::BrokenPipe,
            PutError::TimedOut(_) => io::ErrorKind::TimedOut,
            PutError::Cancelled { .. } => io::ErrorKind::Other,
        };
        match e {
            PutError::Cancelled { cancelled, .. } => cancelled.into(),
            other => io::Error::new(kind, other.to_string()),
        }
    }
}

/// Why a get produced no item.
///
/// Which variants a call can return: [`try_get`](BridgeQueue::try_get) `Empty` or `Closed`;
/// [`blocking_get`](BridgeQueue::blocking_get) `Closed`;
/// [`blocking_get_timeout`](BridgeQueue::blocking_get_timeout) `Closed` or `TimedOut`;
/// [`get`](BridgeQueue::get) `Closed` or `Cancelled`.
#[derive(Debug, PartialEq)]
pub enum GetError {
    /// The queue is empty ([`try_get`](BridgeQueue::try_get) only).
    Empty,
    /// The queue is closed and every item in it has been taken.
    Closed,
    /// No item came before the timeout.
    TimedOut,
    /// The task was cancelled while waiting (asyncio's `CancelledError`).
    Cancelled(Cancelled),
}

impl GetError {
    /// Whether the queue is closed and drained.
    pub fn is_closed(&self) -> bool {
        matches!(self, GetError::Closed)
    }

    /// Whether the awaiting task was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, GetError::Cancelled(_))
    }
}

impl From<Cancelled> for GetError {
    fn from(c: Cancelled) -> Self {
        GetError::Cancelled(c)
    }
}

impl fmt::Display for GetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GetError::Empty => f.write_str("queue is empty"),
            GetError::Closed => f.write_str("queue is closed and empty"),
            GetError::TimedOut => f.write_str("timed out waiting for an item"),
            GetError::Cancelled(c) => c.fmt(f),
        }
    }
}

impl Error for GetError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            GetError::Cancelled(c) => Some(c),
            _ => None,
        }
    }
}

impl From<GetError> for io::Error {
    /// `Empty` becomes [`WouldBlock`](io::ErrorKind::WouldBlock), `Closed`
    /// [`BrokenPipe`](io::ErrorKind::BrokenPipe), `TimedOut`
    /// [`TimedOut`](io::ErrorKind::TimedOut); a cancellation converts as [`Cancelled`] does.
    fn from(e: GetError) -> io::Error {
        let kind = match e {
            GetError::Empty => io::ErrorKind::WouldBlock,
            GetError::Closed => io::ErrorKind::BrokenPipe,
            GetError::TimedOut => io::ErrorKind::TimedOut,
            GetError::Cancelled(c) => return c.into(),
        };
        io::Error::new(kind, e.to_string())
    }
}
