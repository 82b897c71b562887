//! [`Event`]: asyncio's `Event`.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::waiters::{wake_all, WaitList, WaiterKey, Wakers};
use crate::task::awaiting::{self, names, Leaf};
use crate::task::cancel::take_cancel_if;
use crate::task::AwaitName;
use crate::task::Cancelled;

/// A flag tasks can wait on (asyncio's `Event`).
///
/// [`set`](Event::set) wakes every task waiting in [`wait`](Event::wait), and later waits return
/// at once until [`clear`](Event::clear). A waiter woken by `set` returns `Ok` even if the event
/// is cleared again before it runs, as in asyncio.
///
/// Single-threaded, like asyncio's primitives: share it between tasks with `Rc`.
///
/// ```
/// use ringloop_runtime::{Runtime, spawn, sync::Event};
/// use std::rc::Rc;
///
/// Runtime::new().unwrap().block_on(async {
///     let ready = Rc::new(Event::new());
///     let waiter = spawn({
///         let ready = ready.clone();
///         async move { ready.wait().await.map(|()| "go") }
///     });
///     ready.set();
///     assert_eq!(waiter.await.unwrap().unwrap(), "go");
/// });
/// ```
#[derive(Default)]
pub struct Event {
    state: RefCell<State>,
}

#[derive(Default)]
struct State {
    set: bool,
    waiters: WaitList<()>,
}

impl Event {
    /// A new event, not set.
    pub fn new() -> Self {
        Event::default()
    }

    /// Sets the flag and wakes every waiter (asyncio's `Event.set`).
    pub fn set(&self) {
        let mut wakers = Wakers::new();
        {
            let mut st = self.state.borrow_mut();
            st.set = true;
            while let Some((_, w)) = st.waiters.pop_front() {
                wakers.extend(w);
            }
        }
        wake_all(wakers);
    }

    /// Clears the flag (asyncio's `Event.clear`): later waits suspend until the next `set`.
    pub fn clear(&self) {
        self.state.borrow_mut().set = false;
    }

    /// Whether the flag is set (asyncio's `Event.is_set`).
    pub fn is_set(&self) -> bool {
        self.state.borrow().set
    }

    /// Waits until the flag is set (asyncio's `Event.wait`); a cancellation point.
    ///
    /// Resolves at once if the flag is set; `Err(Cancelled)` if the task is cancelled first.
    pub fn wait(&self) -> EventWait<'_> {
        EventWait {
            event: self,
            key: None,
        }
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("set", &self.is_set())
            .finish()
    }
}

/// The future of [`Event::wait`].
#[must_use = "futures do nothing unless awaited"]
pub struct EventWait<'a> {
    event: &'a Event,
    key: Option<WaiterKey>,
}

impl Future for EventWait<'_> {
    type Output = Result<(), Cancelled>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.poll_named(cx, &names::EVENT)
    }
}

impl EventWait<'_> {
    /// Polls the wait; pending, it shows in task dumps as `name` (`event`, or what waits
    /// through an event: a queue's `join`).
    pub(crate) fn poll_named(
        &mut self,
        cx: &mut Context<'_>,
        name: &'static AwaitName,
    ) -> Poll<Result<(), Cancelled>> {
        let this = self;
        let mut st = this.event.state.borrow_mut();
        match &this.key {
            // Woken by `set`: done, even if the flag was cleared since.
            Some(key) if !st.waiters.is_queued(key) => {
                st.waiters.remove(this.key.take().expect("checked"));
                return Poll::Ready(Ok(()));
            }
            None if st.set => return Poll::Ready(Ok(())),
            _ => {}
        }
        if let Some(c) = take_cancel_if(this.key.is_some()) {
            if let Some(key) = this.key.take() {
                st.waiters.remove(key);
            }
            return Poll::Ready(Err(c));
        }
        awaiting::note(Leaf::sync(name), this.key.is_none());
        let old = match &this.key {
            Some(key) => st.waiters.set_waker(key, cx.waker()),
            None => {
                this.key = Some(st.waiters.push_back((), cx.waker()));
                None
            }
        };
        drop(st);
        drop(old);
        Poll::Pending
    }
}

impl Drop for EventWait<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            // Nothing to hand on: `set` wakes everyone anyway.
            self.event.state.borrow_mut().waiters.remove(key);
        }
    }
}

impl fmt::Debug for EventWait<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventWait")
            .field("waiting", &self.key.is_some())
            .finish()
    }
}
