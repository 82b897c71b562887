//! [`Queue`]: asyncio's `Queue`, FIFO on both sides and cancellation-safe.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::event::{Event, EventWait};
use super::waiters::{wake_all, WaitList, WaiterKey, Wakers};
use crate::task::awaiting::{self, names, Leaf};
use crate::task::cancel::{take_cancel, take_cancel_waiting};
use crate::task::Cancelled;

/// A FIFO queue for passing items between tasks (asyncio's `Queue`), optionally bounded.
///
/// [`put`](Queue::put) waits while the queue is full, [`get`](Queue::get) while it is empty;
/// waiters on each side are served strictly FIFO. `maxsize` 0 means unbounded, as in asyncio.
/// [`task_done`](Queue::task_done) and [`join`](Queue::join) count items through to their
/// processing, as asyncio's do.
///
/// **Nothing is lost to cancellation.**
/// * An item arriving while getters wait is handed straight to the first getter. If that getter
///   is cancelled before it runs, its `get` still returns the item (the request stays pending
///   for the task's next await); if its future is dropped instead, the item goes back to the
///   *front* of the queue, or to the next getter.
/// * A `put` cancelled while waiting for room gives the item back in [`PutCancelled`]. Once room was
///   found, the item is in the queue and the `put` returns `Ok`.
///
/// An item handed back to the front after a dropped `get` may briefly make the queue hold one
/// item more than `maxsize`; puts wait until it is below `maxsize` again.
///
/// Single-threaded, like asyncio's primitives: share it between tasks with `Rc`. For channels
/// between threads see [`mpsc`](super::mpsc).
///
/// ```
/// use ringloop_runtime::{Runtime, spawn, sync::Queue, Cancelled};
/// use std::rc::Rc;
///
/// Runtime::new().unwrap().block_on(async {
///     let queue = Rc::new(Queue::new(2));
///     let worker = spawn({
///         let queue = queue.clone();
///         async move {
///             let mut sum = 0;
///             loop {
///                 let n: u32 = queue.get().await?;
///                 sum += n;
///                 queue.task_done().unwrap();
///                 if n == 0 {
///                     return Ok::<_, Cancelled>(sum);
///                 }
///             }
///         }
///     });
///     for n in [1, 2, 3, 4, 0] {
///         queue.put(n).await.unwrap(); // waits while 2 items are queued
///     }
///     queue.join().await.unwrap(); // every item processed
///     assert_eq!(worker.await.unwrap().unwrap(), 10);
/// });
/// ```
pub struct Queue<T> {
    state: RefCell<State<T>>,
    /// Set while no item is unfinished (asyncio's `_finished`).
    finished: Event,
}

/// Invariants: getters are queued only while `items` is empty; putters only while `items` is
/// full (`maxsize > 0` and `items.len() >= maxsize`).
struct State<T> {
    items: VecDeque<T>,
    maxsize: usize,
    /// Items put and not yet marked done by `task_done`.
    unfinished: usize,
    /// Each getter's slot: `None` while queued, the item once one is handed to it.
    getters: WaitList<Option<T>>,
    /// Each putter's item: `Some` while queued, taken (`None`) once it is moved into `items`.
    putters: WaitList<Option<T>>,
}

impl<T> State<T> {
    fn is_full(&self) -> bool {
        self.maxsize > 0 && self.items.len() >= self.maxsize
    }

    /// Adds a new item: to the first getter if one waits, else to the back of `items`.
    fn deliver(&mut self, item: T, wakers: &mut Wakers, finished: &Event) {
        self.unfinished += 1;
        finished.clear();
        match self.getters.pop_front() {
            Some((slot, waker)) => {
                *slot = Some(item);
                wakers.extend(waker);
            }
            None => self.items.push_back(item),
        }
    }

    /// Takes the front item, then lets waiting putters fill the room it made.
    fn take(&mut self, wakers: &mut Wakers, finished: &Event) -> Option<T> {
        let item = self.items.pop_front()?;
        while !self.is_full() {
            let Some((slot, waker)) = self.putters.pop_front() else {
                break;
            };
            let put = slot.take().expect("a queued putter holds its item");
            // Getters are not queued: `items` held at least one item a moment ago.
            self.unfinished += 1;
            finished.clear();
            self.items.push_back(put);
            wakers.extend(waker);
        }
        Some(item)
    }
}

impl<T> Queue<T> {
    /// A queue holding at most `maxsize` items; 0 means unbounded (asyncio's `Queue(maxsize)`).
    pub fn new(maxsize: usize) -> Self {
        let finished = Event::new();
        finished.set();
        Queue {
            state: RefCell::new(State {
                items: VecDeque::new(),
                maxsize,
                unfinished: 0,
                getters: WaitList::default(),
                putters: WaitList::default(),
            }),
            finished,
        }
    }

    /// An unbounded queue: `Queue::new(0)`, asyncio's `Queue()`.
    pub fn unbounded() -> Self {
        Queue::new(0)
    }

    /// The bound given to [`new`](Self::new) (0: unbounded); asyncio's `maxsize`.
    pub fn maxsize(&self) -> usize {
        self.state.borrow().maxsize
    }

    /// How many items are in the queue (asyncio's `qsize`); items already handed to a getter
    /// that has not run yet are not counted.
    pub fn qsize(&self) -> usize {
        self.state.borrow().items.len()
    }

    /// Whether the queue holds no item (asyncio's `empty()`).
    pub fn empty(&self) -> bool {
        self.state.borrow().items.is_empty()
    }

    /// Whether the queue holds `maxsize` items, never when unbounded (asyncio's `full()`).
    pub fn full(&self) -> bool {
        self.state.borrow().is_full()
    }

    /// Puts `item` without waiting (asyncio's `put_nowait`).
    ///
    /// # Errors
    /// [`QueueFull`], with the item, when the queue is full.
    pub fn put_nowait(&self, item: T) -> Result<(), QueueFull<T>> {
        let mut wakers = Wakers::new();
        {
            let mut st = self.state.borrow_mut();
            if st.is_full() {
                return Err(QueueFull(item));
            }
            st.deliver(item, &mut wakers, &self.finished);
        }
        wake_all(wakers);
        Ok(())
    }

    /// Takes the front item without waiting (asyncio's `get_nowait`); `None` when empty.
    pub fn get_nowait(&self) -> Option<T> {
        let mut wakers = Wakers::new();
        let item = self.state.borrow_mut().take(&mut wakers, &self.finished);
        wake_all(wakers);
        item
    }

    /// Puts `item`, waiting for room while the queue is full (asyncio's `put`); a cancellation
    /// point. Cancelled while waiting, it gives the item back in [`PutCancelled`].
    pub fn put(&self, item: T) -> QueuePut<'_, T> {
        QueuePut {
            queue: self,
            item: Some(item),
            key: None,
        }
    }

    /// Takes the front item, waiting while the queue is empty (asyncio's `get`); a cancellation
    /// point. See the [type docs](Queue) for why no item is ever lost to a cancelled `get`.
    pub fn get(&self) -> QueueGet<'_, T> {
        QueueGet {
            queue: self,
            key: None,
        }
    }

    /// Marks one item taken with `get` as processed (asyncio's `task_done`); when every item
    /// put so far is processed, [`join`](Self::join) returns.
    ///
    /// # Errors
    /// [`TaskDoneError`] if called more times than items were put (asyncio raises
    /// `ValueError`); the count is left at zero.
    pub fn task_done(&self) -> Result<(), TaskDoneError> {
        let done = {
            let mut st = self.state.borrow_mut();
            if st.unfinished == 0 {
                return Err(TaskDoneError);
            }
            st.unfinished -= 1;
            st.unfinished == 0
        };
        if done {
            self.finished.set();
        }
        Ok(())
    }

    /// Waits until every item put has been marked done with [`task_done`](Self::task_done)
    /// (asyncio's `join`); a cancellation point. Returns at once if none is unfinished.
    pub fn join(&self) -> QueueJoin<'_> {
        QueueJoin(self.finished.wait())
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.state.borrow();
        f.debug_struct("Queue")
            .field("qsize", &st.items.len())
            .field("maxsize", &st.maxsize)
            .field("unfinished", &st.unfinished)
            .finish_non_exhaustive()
    }
}

/// The future of [`Queue::put`].
#[must_use = "futures do nothing unless awaited"]
pub struct QueuePut<'a, T> {
    queue: &'a Queue<T>,
    /// The item, until it is queued (in `items`, a getter, or a putter slot).
    item: Option<T>,
    key: Option<WaiterKey>,
}

// Nothing is structurally pinned: the item is moved in and out by value.
impl<T> Unpin for QueuePut<'_, T> {}

impl<T> Future for QueuePut<'_, T> {
    type Output = Result<(), PutCancelled<T>>;

    /// # Panics
    /// If polled again after it completed (the item has been delivered or given back).
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let queue = this.queue;
        let mut wakers = Wakers::new();
        let mut st = queue.state.borrow_mut();
        let result = if let Some(key) = &this.key {
            if !st.putters.is_queued(key) {
                // A getter made room and moved our item into the queue.
                st.putters.remove(this.key.take().expect("checked"));
                Ok(())
            } else if let Some(cancelled) = take_cancel_waiting() {
                let (item, _) = st.putters.remove(this.key.take().expect("checked"));
                let item = item.expect("a queued putter holds its item");
                Err(PutCancelled { item, cancelled })
            } else {
                let old = st.putters.set_waker(key, cx.waker());
                drop(st);
                drop(old);
                awaiting::note(Leaf::sync(&names::QUEUE_PUT), false);
                return Poll::Pending;
            }
        } else {
            let item = this.item.take().expect("QueuePut polled after completion");
            if !st.is_full() {
                st.deliver(item, &mut wakers, &queue.finished);
                drop(st);
                wake_all(wakers);
                return Poll::Ready(Ok(()));
            } else if let Some(cancelled) = take_cancel() {
                Err(PutCancelled { item, cancelled })
            } else {
                this.key = Some(st.putters.push_back(Some(item), cx.waker()));
                awaiting::note(Leaf::sync(&names::QUEUE_PUT), true);
                return Poll::Pending;
            }
        };
        drop(st);
        Poll::Ready(result)
    }
}

impl<T> Drop for QueuePut<'_, T> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            // Still queued: the item was never put and is dropped with the future (after the
            // borrow ends: its destructor may use the queue). Dequeued: it is in the queue.
            let (item, _) = self.queue.state.borrow_mut().putters.remove(key);
            drop(item);
        }
    }
}

impl<T> fmt::Debug for QueuePut<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueuePut")
            .field("waiting", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

/// The future of [`Queue::get`].
#[must_use = "futures do nothing unless awaited"]
pub struct QueueGet<'a, T> {
    queue: &'a Queue<T>,
    key: Option<WaiterKey>,
}

impl<T> Future for QueueGet<'_, T> {
    type Output = Result<T, Cancelled>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut wakers = Wakers::new();
        let mut st = this.queue.state.borrow_mut();
        let result = match &this.key {
            Some(key) if !st.getters.is_queued(key) => {
                let (slot, _) = st.getters.remove(this.key.take().expect("checked"));
                Ok(slot.expect("a dequeued getter was handed an item"))
            }
            Some(key) => match take_cancel_waiting() {
                Some(c) => {
                    st.getters.remove(this.key.take().expect("checked"));
                    Err(c)
                }
                None => {
                    let old = st.getters.set_waker(key, cx.waker());
                    drop(st);
                    drop(old);
                    awaiting::note(Leaf::sync(&names::QUEUE_GET), false);
                    return Poll::Pending;
                }
            },
            None => match st.take(&mut wakers, &this.queue.finished) {
                Some(item) => Ok(item),
                None => match take_cancel() {
                    Some(c) => Err(c),
                    None => {
                        this.key = Some(st.getters.push_back(None, cx.waker()));
                        awaiting::note(Leaf::sync(&names::QUEUE_GET), true);
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

impl<T> Drop for QueueGet<'_, T> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut wakers = Wakers::new();
        {
            let mut st = self.queue.state.borrow_mut();
            if let (Some(item), _) = st.getters.remove(key) {
                // Handed an item but never ran: it goes to the next getter, else back to the
                // front of the queue. It was counted in `unfinished` when it was put.
                match st.getters.pop_front() {
                    Some((slot, waker)) => {
                        *slot = Some(item);
                        wakers.extend(waker);
                    }
                    None => st.items.push_front(item),
                }
            }
        }
        wake_all(wakers);
    }
}

impl<T> fmt::Debug for QueueGet<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueGet")
            .field("waiting", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

/// The future of [`Queue::join`].
#[must_use = "futures do nothing unless awaited"]
#[derive(Debug)]
pub struct QueueJoin<'a>(EventWait<'a>);

impl Future for QueueJoin<'_> {
    type Output = Result<(), Cancelled>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.poll_named(cx, &names::QUEUE_JOIN)
    }
}

/// The error of [`Queue::put_nowait`]: the queue is full. Holds the item that was not put.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct QueueFull<T>(pub T);

impl<T> QueueFull<T> {
    /// The item that was not put.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> fmt::Debug for QueueFull<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("QueueFull(..)")
    }
}

impl<T> fmt::Display for QueueFull<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("queue is full")
    }
}

impl<T> Error for QueueFull<T> {}

/// The error of [`Queue::put`]: the task was cancelled while waiting for room. The item was not
/// put and is given back.
///
/// ```
/// use ringloop_runtime::{sync::{PutCancelled, Queue}, Cancelled};
///
/// async fn put_or_keep(queue: &Queue<String>, line: String, kept: &mut Vec<String>)
///     -> Result<(), Cancelled>
/// {
///     queue.put(line).await.map_err(|PutCancelled { item, cancelled }| {
///         kept.push(item); // not lost: keep it for later
///         cancelled
///     })
/// }
/// # let _ = put_or_keep;
/// ```
pub struct PutCancelled<T> {
    /// The item that was not put.
    pub item: T,
    /// The cancellation, to handle or to let escape.
    pub cancelled: Cancelled,
}

impl<T> PutCancelled<T> {
    /// The item that was not put.
    pub fn into_inner(self) -> T {
        self.item
    }
}

impl<T> From<PutCancelled<T>> for Cancelled {
    /// Lets the cancellation escape with `?`; the item is dropped.
    fn from(e: PutCancelled<T>) -> Cancelled {
        e.cancelled
    }
}

impl<T> fmt::Debug for PutCancelled<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutCancelled")
            .field("cancelled", &self.cancelled)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for PutCancelled<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (while waiting to put into a queue)", self.cancelled)
    }
}

impl<T> Error for PutCancelled<T> {}

/// The error of [`Queue::task_done`]: called more times than items were put.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskDoneError;

impl fmt::Display for TaskDoneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("task_done() called more times than there were items put in the queue")
    }
}

impl Error for TaskDoneError {}
