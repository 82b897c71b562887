//! [`Semaphore`]: asyncio's `Semaphore`, with RAII permits and FIFO hand-off. [`Lock`] is built
//! on the same machinery (a semaphore of one permit).
//!
//! [`Lock`]: super::Lock

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use super::waiters::{wake_all, WaitList, WaiterKey, Wakers};
use crate::task::awaiting::{self, names, Leaf};
use crate::task::cancel::take_cancel_if;
use crate::task::AwaitName;
use crate::task::Cancelled;

/// A counter of permits that tasks acquire and release (asyncio's `Semaphore`): the usual way
/// to cap concurrency, e.g. at most 10 queries in flight.
///
/// [`acquire`](Semaphore::acquire) takes one permit, waiting if none is left; the permit goes
/// back when the returned [`SemaphorePermit`] is dropped. Waiters are served strictly in FIFO
/// order, and a released permit is *handed* to the first waiter rather than put back for anyone
/// to grab, so a task that calls `acquire` while others wait never overtakes them (asyncio's
/// `Semaphore` is FIFO in the same way since 3.11.1). A waiter that was handed a permit but is
/// dropped before it runs passes the permit on, so none is ever lost.
///
/// [`acquire_owned`](Semaphore::acquire_owned) gives a permit that owns an `Rc` of the semaphore,
/// to move into a spawned task.
///
/// Single-threaded, like asyncio's primitives.
///
/// ```
/// use ringloop_runtime::{Runtime, spawn, sleep, sync::Semaphore};
/// use std::{cell::Cell, rc::Rc, time::Duration};
///
/// Runtime::new().unwrap().block_on(async {
///     // At most 2 "queries" in flight.
///     let limit = Rc::new(Semaphore::new(2));
///     let in_flight = Rc::new(Cell::new(0));
///     let mut tasks = Vec::new();
///     for _ in 0..6 {
///         let (limit, in_flight) = (limit.clone(), in_flight.clone());
///         tasks.push(spawn(async move {
///             let _permit = limit.acquire().await?;
///             in_flight.set(in_flight.get() + 1);
///             assert!(in_flight.get() <= 2);
///             sleep(Duration::ZERO).await?;
///             in_flight.set(in_flight.get() - 1);
///             Ok::<_, ringloop_runtime::Cancelled>(())
///         }));
///     }
///     for t in tasks {
///         t.await.unwrap().unwrap();
///     }
///     assert_eq!(limit.available_permits(), 2);
/// });
/// ```
pub struct Semaphore {
    state: RefCell<State>,
}

/// Invariant: `permits > 0` implies no waiter is queued, because a released permit is handed
/// to the first queued waiter before it is ever added to `permits`.
struct State {
    permits: usize,
    waiters: WaitList<()>,
}

impl Semaphore {
    /// A semaphore with `permits` permits.
    pub fn new(permits: usize) -> Self {
        Semaphore {
            state: RefCell::new(State {
                permits,
                waiters: WaitList::default(),
            }),
        }
    }

    /// Permits free right now (not counting ones handed to waiters that have not run yet).
    pub fn available_permits(&self) -> usize {
        self.state.borrow().permits
    }

    /// Adds `n` permits (asyncio's `release()`, `n` times): each goes to the first waiter, if
    /// any, else to the free count (saturating at `usize::MAX`).
    pub fn add_permits(&self, n: usize) {
        let mut wakers = Wakers::new();
        {
            let mut st = self.state.borrow_mut();
            let mut left = n;
            while left > 0 {
                match st.waiters.pop_front() {
                    Some((_, w)) => wakers.extend(w),
                    None => break,
                }
                left -= 1;
            }
            st.permits = st.permits.saturating_add(left);
        }
        wake_all(wakers);
    }

    /// Takes a permit if one is free right now, without waiting.
    pub fn try_acquire(&self) -> Option<SemaphorePermit<'_>> {
        // Not `then_some`: a permit built eagerly and dropped on failure would add a permit.
        if self.try_take() {
            Some(SemaphorePermit { sem: Some(self) })
        } else {
            None
        }
    }

    /// Like [`try_acquire`](Self::try_acquire), with a permit that owns an `Rc` of the semaphore.
    pub fn try_acquire_owned(self: &Rc<Self>) -> Option<OwnedSemaphorePermit> {
        if self.try_take() {
            Some(OwnedSemaphorePermit {
                sem: Some(self.clone()),
            })
        } else {
            None
        }
    }

    /// Waits for a permit (asyncio's `acquire`, as `async with sem:`); a cancellation point.
    ///
    /// A free permit is taken at once, even if the task has a cancel request pending (the
    /// request then waits for the task's next await). Otherwise the task queues FIFO; cancelled
    /// while queued, it leaves the queue and gets `Err(Cancelled)`.
    pub fn acquire(&self) -> SemaphoreAcquire<'_> {
        SemaphoreAcquire {
            sem: self,
            waiter: Waiter::default(),
        }
    }

    /// Like [`acquire`](Self::acquire), with a permit that owns an `Rc` of the semaphore, to
    /// move into a spawned task.
    pub fn acquire_owned(self: &Rc<Self>) -> SemaphoreAcquireOwned {
        SemaphoreAcquireOwned {
            sem: self.clone(),
            waiter: Waiter::default(),
        }
    }

    fn try_take(&self) -> bool {
        let mut st = self.state.borrow_mut();
        if st.permits > 0 {
            st.permits -= 1;
            true
        } else {
            false
        }
    }

    /// Gives one permit back: to the first waiter, else to the free count.
    pub(crate) fn release(&self) {
        self.add_permits(1);
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.state.borrow();
        f.debug_struct("Semaphore")
            .field("permits", &st.permits)
            .field("waiting", &st.waiters.has_queued())
            .finish()
    }
}

/// One pending acquisition: the part shared by the semaphore's futures and the lock's.
#[derive(Debug, Default)]
pub(crate) struct Waiter {
    key: Option<WaiterKey>,
}

impl Waiter {
    /// Polls for one permit of `sem`. `cancellable: false` ignores cancel requests (they stay
    /// pending), for a reacquisition that must finish, as `Condition::wait`'s does.
    ///
    /// On `Ready(Ok(()))` the caller owns one permit and must release it. A pending
    /// acquisition shows in task dumps as `name` (`semaphore`, or the lock built on it).
    pub(crate) fn poll_acquire(
        &mut self,
        sem: &Semaphore,
        cx: &Context<'_>,
        cancellable: bool,
        name: &'static AwaitName,
    ) -> Poll<Result<(), Cancelled>> {
        let mut st = sem.state.borrow_mut();
        match &self.key {
            // Dequeued: a permit was handed to us.
            Some(key) if !st.waiters.is_queued(key) => {
                st.waiters.remove(self.key.take().expect("checked"));
                return Poll::Ready(Ok(()));
            }
            Some(_) => {}
            None if st.permits > 0 => {
                st.permits -= 1;
                return Poll::Ready(Ok(()));
            }
            None => {}
        }
        if cancellable {
            if let Some(c) = take_cancel_if(self.key.is_some()) {
                if let Some(key) = self.key.take() {
                    st.waiters.remove(key);
                }
                return Poll::Ready(Err(c));
            }
        }
        awaiting::note(Leaf::sync(name), self.key.is_none());
        let old = match &self.key {
            Some(key) => st.waiters.set_waker(key, cx.waker()),
            None => {
                self.key = Some(st.waiters.push_back((), cx.waker()));
                None
            }
        };
        drop(st);
        drop(old);
        Poll::Pending
    }

    /// Withdraws a pending acquisition (the future is dropped). A permit already handed to it
    /// goes on to the next waiter: it is never lost.
    pub(crate) fn withdraw(&mut self, sem: &Semaphore) {
        if let Some(key) = self.key.take() {
            let (_, was_queued) = sem.state.borrow_mut().waiters.remove(key);
            if !was_queued {
                sem.release();
            }
        }
    }
}

/// The future of [`Semaphore::acquire`].
#[must_use = "futures do nothing unless awaited"]
#[derive(Debug)]
pub struct SemaphoreAcquire<'a> {
    sem: &'a Semaphore,
    waiter: Waiter,
}

impl<'a> Future for SemaphoreAcquire<'a> {
    type Output = Result<SemaphorePermit<'a>, Cancelled>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let sem = this.sem;
        this.waiter
            .poll_acquire(sem, cx, true, &names::SEMAPHORE)
            .map_ok(|()| SemaphorePermit { sem: Some(sem) })
    }
}

impl Drop for SemaphoreAcquire<'_> {
    fn drop(&mut self) {
        self.waiter.withdraw(self.sem);
    }
}

/// The future of [`Semaphore::acquire_owned`].
#[must_use = "futures do nothing unless awaited"]
#[derive(Debug)]
pub struct SemaphoreAcquireOwned {
    sem: Rc<Semaphore>,
    waiter: Waiter,
}

impl Future for SemaphoreAcquireOwned {
    type Output = Result<OwnedSemaphorePermit, Cancelled>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let sem = &this.sem;
        this.waiter
            .poll_acquire(sem, cx, true, &names::SEMAPHORE)
            .map_ok(|()| OwnedSemaphorePermit {
                sem: Some(sem.clone()),
            })
    }
}

impl Drop for SemaphoreAcquireOwned {
    fn drop(&mut self) {
        self.waiter.withdraw(&self.sem);
    }
}

/// One permit of a [`Semaphore`], given back when dropped.
#[must_use = "the permit is released as soon as it is dropped"]
pub struct SemaphorePermit<'a> {
    sem: Option<&'a Semaphore>,
}

impl SemaphorePermit<'_> {
    /// Keeps the permit out of the semaphore for good: it is not given back on drop.
    pub fn forget(mut self) {
        self.sem = None;
    }
}

impl Drop for SemaphorePermit<'_> {
    fn drop(&mut self) {
        if let Some(sem) = self.sem.take() {
            sem.release();
        }
    }
}

impl fmt::Debug for SemaphorePermit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SemaphorePermit")
    }
}

/// One permit of a [`Semaphore`] that owns an `Rc` of it (from
/// [`acquire_owned`](Semaphore::acquire_owned)); given back when dropped.
#[must_use = "the permit is released as soon as it is dropped"]
pub struct OwnedSemaphorePermit {
    sem: Option<Rc<Semaphore>>,
}

impl OwnedSemaphorePermit {
    /// Keeps the permit out of the semaphore for good: it is not given back on drop.
    pub fn forget(mut self) {
        self.sem = None;
    }
}

impl Drop for OwnedSemaphorePermit {
    fn drop(&mut self) {
        if let Some(sem) = self.sem.take() {
            sem.release();
        }
    }
}

impl fmt::Debug for OwnedSemaphorePermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OwnedSemaphorePermit")
    }
}
