//! A multi-producer, single-consumer channel, bounded or not, that works across threads.
//!
//! asyncio has no channel; its nearest counterpart is a [`Queue`](super::Queue), which this
//! module complements: a `Queue` is for tasks of one runtime, a channel also connects threads
//! (one runtime per core, a blocking thread, a foreign library's callback thread). The
//! [`Sender`] is `Send + Sync` and cloneable; a send from another thread wakes the receiving
//! task through its waker.
//!
//! * [`channel(capacity)`](channel) is bounded: [`Sender::send`] waits for room, FIFO among
//!   senders (back-pressure). Capacity 0 is a rendezvous: each send waits until the receiver
//!   takes its value.
//! * [`unbounded_channel`] never makes a sender wait.
//!
//! Both are cancellation points that lose nothing: a cancelled send gives its value back in
//! [`SendError::Cancelled`], and a cancelled receive leaves the value in the channel.
//!
//! ```
//! use ringloop_runtime::{Runtime, spawn, sync::mpsc};
//!
//! Runtime::new().unwrap().block_on(async {
//!     let (tx, mut rx) = mpsc::channel(1);
//!     let producer = spawn(async move {
//!         for i in 0..3 {
//!             tx.send(i).await.unwrap(); // waits while 1 value is queued
//!         }
//!     }); // `tx` is dropped here: the channel closes once drained
//!     let mut got = Vec::new();
//!     while let Ok(i) = rx.recv().await {
//!         got.push(i);
//!     }
//!     assert_eq!(got, [0, 1, 2]);
//!     producer.await.unwrap();
//! });
//! ```

use std::collections::VecDeque;
use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

pub use super::chan_error::{RecvError, TryRecvError};
use super::waiters::{wake_all, WaitList, WaiterKey, Wakers};
use crate::task::awaiting::{self, names, Leaf};
use crate::task::cancel::{take_cancel, take_cancel_if, take_cancel_waiting};
use crate::task::Cancelled;

/// A bounded channel holding at most `capacity` values; senders wait for room, FIFO.
/// `capacity` 0 makes a rendezvous channel: each send waits until its value is received.
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    new_channel(Some(capacity))
}

/// An unbounded channel: a send never waits (mind the memory: nothing pushes back on a fast
/// producer).
pub fn unbounded_channel<T>() -> (Sender<T>, Receiver<T>) {
    new_channel(None)
}

fn new_channel<T>(capacity: Option<usize>) -> (Sender<T>, Receiver<T>) {
    let chan = Arc::new(Chan {
        state: Mutex::new(State {
            items: VecDeque::new(),
            capacity,
            senders: 1,
            closed: false,
            rx_waker: None,
            send_waiters: WaitList::default(),
        }),
    });
    (Sender { chan: chan.clone() }, Receiver { chan })
}

struct Chan<T> {
    state: Mutex<State<T>>,
}

/// Invariant: senders are queued only while there is no room (`items.len() >= capacity`), and
/// never once `closed`.
struct State<T> {
    items: VecDeque<T>,
    /// `None`: unbounded.
    capacity: Option<usize>,
    /// Live `Sender` handles.
    senders: usize,
    /// The receiver closed the channel or is gone: sends fail.
    closed: bool,
    rx_waker: Option<Waker>,
    /// Each waiting sender's value: `Some` while queued; taken (`None`) once moved into the
    /// channel, or left `Some` when the channel closed under it (the send fails with it).
    send_waiters: WaitList<Option<T>>,
}

impl<T> State<T> {
    fn has_room(&self) -> bool {
        self.capacity.is_none_or(|cap| self.items.len() < cap)
    }

    /// Takes the next value: the front of `items` or, for a rendezvous, the first waiting
    /// sender's; then lets waiting senders fill the room that was made.
    fn take(&mut self, wakers: &mut Wakers) -> Option<T> {
        let value = match self.items.pop_front() {
            Some(v) => v,
            None => {
                let (slot, waker) = self.send_waiters.pop_front()?;
                wakers.extend(waker);
                slot.take().expect("a queued sender holds its value")
            }
        };
        while self.has_room() {
            let Some((slot, waker)) = self.send_waiters.pop_front() else {
                break;
            };
            self.items
                .push_back(slot.take().expect("a queued sender holds its value"));
            wakers.extend(waker);
        }
        Some(value)
    }

    /// Marks the channel closed and dequeues every waiting sender; their values stay in their
    /// slots, so each send fails with its own value.
    fn close(&mut self, wakers: &mut Wakers) {
        self.closed = true;
        while let Some((_, waker)) = self.send_waiters.pop_front() {
            wakers.extend(waker);
        }
    }
}

impl<T> Chan<T> {
    /// Our critical sections never panic with the lock held, but a poisoned lock still holds
    /// consistent state: go on with it rather than panic.
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The sending half of an [`mpsc`](self) channel; clone it for more producers. `Send + Sync`
/// when `T` is `Send`. The channel closes for the receiver once every sender is dropped.
///
/// A producer on a plain thread, feeding a task through a bounded channel:
///
/// ```
/// use ringloop_runtime::{Runtime, sync::mpsc};
///
/// Runtime::new().unwrap().block_on(async {
///     let (tx, mut rx) = mpsc::channel(4);
///     let producer = std::thread::spawn(move || {
///         for line in ["a", "b", "c"] {
///             tx.blocking_send(line).unwrap(); // blocks this thread while 4 are queued
///         }
///     });
///     let mut got = String::new();
///     while let Ok(line) = rx.recv().await {
///         got.push_str(line);
///     }
///     assert_eq!(got, "abc");
///     producer.join().unwrap();
/// });
/// ```
pub struct Sender<T> {
    chan: Arc<Chan<T>>,
}

impl<T> Sender<T> {
    /// Sends `value`, waiting for room in a bounded channel; a cancellation point.
    ///
    /// Senders waiting for room are served FIFO. Resolves to `Ok` once the value is in the
    /// channel (or, for a rendezvous channel, taken by the receiver).
    ///
    /// # Errors
    /// [`SendError::Closed`] with the value if the receiver is gone or closed;
    /// [`SendError::Cancelled`] with the value if the task was cancelled while waiting.
    pub fn send(&self, value: T) -> SendFuture<'_, T> {
        SendFuture {
            sender: self,
            value: Some(value),
            key: None,
        }
    }

    /// Sends `value` if there is room right now, without waiting (never for a rendezvous
    /// channel).
    ///
    /// # Errors
    /// [`TrySendError::Full`] or [`TrySendError::Closed`], with the value.
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        let waker = {
            let mut st = self.chan.lock();
            if st.closed {
                return Err(TrySendError::Closed(value));
            }
            if !st.has_room() {
                return Err(TrySendError::Full(value));
            }
            st.items.push_back(value);
            st.rx_waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Sends `value` from a thread that runs no ringloop runtime, blocking the thread while the
    /// channel is full.
    ///
    /// Never call it on a runtime's thread: it would block that loop, and the receiver with it.
    ///
    /// # Errors
    /// [`SendError::Closed`] with the value if the receiver is gone or closed.
    pub fn blocking_send(&self, value: T) -> Result<(), SendError<T>> {
        super::block_on_thread(self.send(value))
    }

    /// Whether the receiver is gone or closed, so that sends fail.
    pub fn is_closed(&self) -> bool {
        self.chan.lock().closed
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.chan.lock().senders += 1;
        Sender {
            chan: self.chan.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut st = self.chan.lock();
            st.senders -= 1;
            if st.senders > 0 {
                return;
            }
            st.rx_waker.take()
        };
        // The last sender: wake the receiver so it sees `Closed` once drained.
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("mpsc::Sender")
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// The future of [`Sender::send`].
#[must_use = "futures do nothing unless awaited"]
pub struct SendFuture<'a, T> {
    sender: &'a Sender<T>,
    /// The value, until it is in the channel or in a waiter slot.
    value: Option<T>,
    key: Option<WaiterKey>,
}

// Nothing is structurally pinned: the value is moved in and out by value.
impl<T> Unpin for SendFuture<'_, T> {}

impl<T> Future for SendFuture<'_, T> {
    type Output = Result<(), SendError<T>>;

    /// # Panics
    /// If polled again after it completed (the value has been sent or given back).
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut st = this.sender.chan.lock();
        let mut wake = None;
        let result = if let Some(key) = &this.key {
            if !st.send_waiters.is_queued(key) {
                // Dequeued: our value was moved into the channel, or the channel closed.
                let (slot, _) = st.send_waiters.remove(this.key.take().expect("checked"));
                match slot {
                    None => Ok(()),
                    Some(value) => Err(SendError::Closed(value)),
                }
            } else if let Some(cancelled) = take_cancel_waiting() {
                let (slot, _) = st.send_waiters.remove(this.key.take().expect("checked"));
                let value = slot.expect("a queued sender holds its value");
                Err(SendError::Cancelled { value, cancelled })
            } else {
                let old = st.send_waiters.set_waker(key, cx.waker());
                drop(st);
                drop(old);
                awaiting::note(Leaf::sync(&names::CHANNEL_SEND), false);
                return Poll::Pending;
            }
        } else {
            let value = this
                .value
                .take()
                .expect("SendFuture polled after completion");
            if st.closed {
                Err(SendError::Closed(value))
            } else if st.has_room() {
                st.items.push_back(value);
                wake = st.rx_waker.take();
                Ok(())
            } else if let Some(cancelled) = take_cancel() {
                Err(SendError::Cancelled { value, cancelled })
            } else {
                this.key = Some(st.send_waiters.push_back(Some(value), cx.waker()));
                // A rendezvous has nothing buffered: the receiver must learn a sender waits.
                let wake = if st.capacity == Some(0) {
                    st.rx_waker.take()
                } else {
                    None
                };
                drop(st);
                if let Some(w) = wake {
                    w.wake();
                }
                awaiting::note(Leaf::sync(&names::CHANNEL_SEND), true);
                return Poll::Pending;
            }
        };
        drop(st);
        if let Some(w) = wake {
            w.wake();
        }
        Poll::Ready(result)
    }
}

impl<T> Drop for SendFuture<'_, T> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            // Still queued (or failed by a close): the value is dropped with the future, after
            // the lock is released (its destructor may use this channel).
            let (slot, _) = self.sender.chan.lock().send_waiters.remove(key);
            drop(slot);
        }
    }
}

impl<T> fmt::Debug for SendFuture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendFuture")
            .field("waiting", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

/// The receiving half of an [`mpsc`](self) channel. `Send + Sync` when `T` is `Send`.
///
/// ```
/// use ringloop_runtime::sync::mpsc::{self, TryRecvError};
///
/// let (tx, mut rx) = mpsc::unbounded_channel();
/// tx.try_send(1).unwrap();
/// rx.close(); // no more sends; what is queued can still be received
/// assert!(tx.try_send(2).is_err());
/// assert_eq!(rx.try_recv(), Ok(1));
/// assert_eq!(rx.try_recv(), Err(TryRecvError::Closed));
/// ```
pub struct Receiver<T> {
    chan: Arc<Chan<T>>,
}

impl<T> Receiver<T> {
    /// Receives the next value, waiting while the channel is empty; a cancellation point.
    ///
    /// # Errors
    /// [`RecvError::Closed`] once every sender is gone (or [`close`](Self::close) was called)
    /// and every value has been received; [`RecvError::Cancelled`] if the task is cancelled
    /// while waiting (no value is lost: a value that was already there is returned instead).
    pub fn recv(&mut self) -> RecvFuture<'_, T> {
        RecvFuture { receiver: self }
    }

    /// Receives the next value if there is one, without waiting.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`] while senders remain, [`TryRecvError::Closed`] once none does (or
    /// the channel was closed) and the channel is drained.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let mut wakers = Wakers::new();
        let result = {
            let mut st = self.chan.lock();
            match st.take(&mut wakers) {
                Some(v) => Ok(v),
                None if st.senders == 0 || st.closed => Err(TryRecvError::Closed),
                None => Err(TryRecvError::Empty),
            }
        };
        wake_all(wakers);
        result
    }

    /// Closes the channel: later sends fail with [`SendError::Closed`], and senders waiting for
    /// room get their values back the same way. Values already in the channel can still be
    /// received.
    pub fn close(&mut self) {
        let mut wakers = Wakers::new();
        self.chan.lock().close(&mut wakers);
        wake_all(wakers);
    }

    /// How many values wait in the channel (not counting senders waiting for room).
    pub fn len(&self) -> usize {
        self.chan.lock().items.len()
    }

    /// Whether no value waits in the channel.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut wakers = Wakers::new();
        let (items, own_waker) = {
            let mut st = self.chan.lock();
            st.close(&mut wakers);
            (std::mem::take(&mut st.items), st.rx_waker.take())
        };
        // Dropped outside the lock: a value's destructor may use this channel.
        drop(items);
        drop(own_waker);
        wake_all(wakers);
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.chan.lock();
        f.debug_struct("mpsc::Receiver")
            .field("len", &st.items.len())
            .field("senders", &st.senders)
            .field("closed", &st.closed)
            .finish()
    }
}

/// The future of [`Receiver::recv`].
#[must_use = "futures do nothing unless awaited"]
pub struct RecvFuture<'a, T> {
    receiver: &'a mut Receiver<T>,
}

impl<T> Future for RecvFuture<'_, T> {
    type Output = Result<T, RecvError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut wakers = Wakers::new();
        let mut st = self.receiver.chan.lock();
        // Checked and registered under the lock: a send on another thread either came before
        // (seen here) or finds the waker registered below.
        let result = match st.take(&mut wakers) {
            Some(v) => Ok(v),
            None if st.senders == 0 || st.closed => Err(RecvError::Closed),
            // Waiting: this task's waker is the one registered (a receive is `&mut`, so only
            // one receive of this channel waits at a time).
            None => {
                let waiting = st
                    .rx_waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()));
                match take_cancel_if(waiting) {
                    Some(c) => Err(RecvError::Cancelled(c)),
                    None => {
                        let old = match &st.rx_waker {
                            Some(w) if w.will_wake(cx.waker()) => None,
                            _ => st.rx_waker.replace(cx.waker().clone()),
                        };
                        drop(st);
                        drop(old);
                        awaiting::note(Leaf::sync(&names::CHANNEL_RECV), !waiting);
                        return Poll::Pending;
                    }
                }
            }
        };
        // Resolved, so no longer waiting: a later receive starts afresh (see above).
        let stale = st.rx_waker.take();
        drop(st);
        drop(stale);
        wake_all(wakers);
        Poll::Ready(result)
    }
}

impl<T> fmt::Debug for RecvFuture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecvFuture")
    }
}

/// Why [`Sender::send`] did not send; holds the value.
pub enum SendError<T> {
    /// The receiver is gone or closed the channel.
    Closed(T),
    /// The task was cancelled while waiting for room (asyncio's `CancelledError`).
    Cancelled {
        /// The value that was not sent.
        value: T,
        /// The cancellation, to handle or to let escape.
        cancelled: Cancelled,
    },
}

impl<T> SendError<T> {
    /// The value that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            SendError::Closed(v) | SendError::Cancelled { value: v, .. } => v,
        }
    }

    /// Whether the channel is closed.
    pub fn is_closed(&self) -> bool {
        matches!(self, SendError::Closed(_))
    }

    /// Whether the sending task was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, SendError::Cancelled { .. })
    }
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Closed(_) => f.write_str("Closed(..)"),
            SendError::Cancelled { cancelled, .. } => f
                .debug_struct("Cancelled")
                .field("cancelled", cancelled)
                .finish_non_exhaustive(),
        }
    }
}

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Closed(_) => f.write_str("channel closed: the receiver is gone"),
            SendError::Cancelled { cancelled, .. } => cancelled.fmt(f),
        }
    }
}

impl<T> Error for SendError<T> {}

/// Why [`Sender::try_send`] did not send; holds the value.
pub enum TrySendError<T> {
    /// No room right now.
    Full(T),
    /// The receiver is gone or closed the channel.
    Closed(T),
}

impl<T> TrySendError<T> {
    /// The value that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            TrySendError::Full(v) | TrySendError::Closed(v) => v,
        }
    }
}

impl<T> fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("Full(..)"),
            TrySendError::Closed(_) => f.write_str("Closed(..)"),
        }
    }
}

impl<T> fmt::Display for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("channel full"),
            TrySendError::Closed(_) => f.write_str("channel closed: the receiver is gone"),
        }
    }
}

impl<T> Error for TrySendError<T> {}
