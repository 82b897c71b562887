//! A one-shot channel: one value, from one sender to one receiver, possibly across threads.
//!
//! asyncio's nearest counterpart is a `Future` used as a one-time result slot
//! (`loop.create_future()` + `set_result`); this one is thread-safe: the [`Sender`] may live on
//! another thread (or another runtime) and its [`send`](Sender::send) wakes the receiving task
//! there through its waker.
//!
//! ```
//! use ringloop_runtime::{Runtime, sync::oneshot};
//!
//! Runtime::new().unwrap().block_on(async {
//!     let (tx, rx) = oneshot::channel();
//!     std::thread::spawn(move || tx.send("done").unwrap());
//!     assert_eq!(rx.await.unwrap(), "done");
//! });
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

pub use super::chan_error::{RecvError, TryRecvError};
use crate::task::awaiting::{self, names, Leaf};
use crate::task::cancel::take_cancel_if;

/// Creates a one-shot channel.
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State {
            value: None,
            sender_gone: false,
            receiver_gone: false,
            rx_waker: None,
        }),
    });
    (
        Sender {
            inner: inner.clone(),
        },
        Receiver { inner },
    )
}

struct Inner<T> {
    state: Mutex<State<T>>,
}

struct State<T> {
    /// Sent and not yet received.
    value: Option<T>,
    /// The sender sent or was dropped: nothing more will arrive.
    sender_gone: bool,
    /// The receiver was dropped or closed: a send fails.
    receiver_gone: bool,
    rx_waker: Option<Waker>,
}

impl<T> Inner<T> {
    /// Our critical sections never panic with the lock held, but a poisoned lock still holds
    /// consistent state: go on with it rather than panic.
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The sending half of a [`oneshot`](self) channel. `Send + Sync` when `T` is `Send`.
///
/// ```
/// use ringloop_runtime::sync::oneshot;
///
/// let (tx, rx) = oneshot::channel::<u32>();
/// drop(rx);
/// assert!(tx.is_closed());
/// assert_eq!(tx.send(7), Err(7)); // the value comes back
/// ```
pub struct Sender<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Sender<T> {
    /// Sends `value`, waking the receiver (from any thread); never waits.
    ///
    /// # Errors
    /// Gives `value` back if the receiver is gone or closed.
    pub fn send(self, value: T) -> Result<(), T> {
        let waker = {
            let mut st = self.inner.lock();
            if st.receiver_gone {
                return Err(value);
            }
            st.value = Some(value);
            st.sender_gone = true;
            st.rx_waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Whether the receiver is gone or closed, so that a send would fail.
    pub fn is_closed(&self) -> bool {
        self.inner.lock().receiver_gone
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut st = self.inner.lock();
            if st.sender_gone {
                return; // already sent
            }
            st.sender_gone = true;
            st.rx_waker.take()
        };
        // Wake the receiver so it sees `Closed`.
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("oneshot::Sender")
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// The receiving half of a [`oneshot`](self) channel: a future resolving to the value.
///
/// Awaiting it is a cancellation point: it resolves to the value if one was sent (even if the
/// task has a cancel request pending, which then waits for the next await),
/// `Err(RecvError::Closed)` if the sender was dropped without sending, or
/// `Err(RecvError::Cancelled(..))` if the task is cancelled first. The receiver stays usable
/// after a cancellation: await it again to keep waiting. Once it has produced the value, it
/// resolves to `Closed`.
///
/// ```
/// use ringloop_runtime::{Runtime, spawn, sleep, sync::oneshot};
/// use std::time::Duration;
///
/// Runtime::new().unwrap().block_on(async {
///     let (tx, mut rx) = oneshot::channel();
///     let task = spawn(async move {
///         // Cancelled while waiting: handle it, then wait on for the value.
///         if let Err(e) = (&mut rx).await {
///             assert!(e.is_cancelled());
///         }
///         rx.await
///     });
///     sleep(Duration::ZERO).await.unwrap();
///     task.cancel();
///     sleep(Duration::ZERO).await.unwrap();
///     tx.send("still delivered").unwrap();
///     assert_eq!(task.await.unwrap(), Ok("still delivered"));
/// });
/// ```
pub struct Receiver<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Receiver<T> {
    /// Takes the value if it has been sent, without waiting.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`] if nothing was sent yet, [`TryRecvError::Closed`] if nothing ever
    /// will be (the sender is gone, or the value was already taken).
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let mut st = self.inner.lock();
        match st.value.take() {
            Some(v) => Ok(v),
            None if st.sender_gone => Err(TryRecvError::Closed),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Closes the channel: a later [`send`](Sender::send) fails. A value sent before the close
    /// can still be received.
    pub fn close(&mut self) {
        self.inner.lock().receiver_gone = true;
    }
}

impl<T> Future for Receiver<T> {
    type Output = Result<T, RecvError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.inner.lock();
        if let Some(v) = st.value.take() {
            return Poll::Ready(Ok(v));
        }
        if st.sender_gone {
            return Poll::Ready(Err(RecvError::Closed));
        }
        // Checked and registered under the lock: a send on another thread either came before
        // (seen above) or finds this waker.
        let waiting = st
            .rx_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()));
        if let Some(c) = take_cancel_if(waiting) {
            // No longer waiting: a later await starts afresh (see `waiting` above).
            let old = st.rx_waker.take();
            drop(st);
            drop(old);
            return Poll::Ready(Err(RecvError::Cancelled(c)));
        }
        let old = match &st.rx_waker {
            Some(w) if w.will_wake(cx.waker()) => None,
            _ => st.rx_waker.replace(cx.waker().clone()),
        };
        drop(st);
        drop(old);
        awaiting::note(Leaf::sync(&names::ONESHOT), !waiting);
        Poll::Pending
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let (value, waker) = {
            let mut st = self.inner.lock();
            st.receiver_gone = true;
            (st.value.take(), st.rx_waker.take())
        };
        // Dropped outside the lock: their destructors may touch this channel.
        drop(value);
        drop(waker);
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.inner.lock();
        f.debug_struct("oneshot::Receiver")
            .field("sent", &st.value.is_some())
            .field("sender_gone", &st.sender_gone)
            .finish()
    }
}
