//! [`Condition`]: asyncio's `Condition`, bound to the [`Lock`] it owns.

use std::cell::RefCell;
use std::error::Error;
use std::fmt;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::lock::{Lock, LockAcquire, LockGuard};
use super::semaphore::Waiter;
use super::waiters::{wake_all, WaitList, WaiterKey, Wakers};
use crate::task::awaiting::{self, names, Leaf};
use crate::task::cancel::{take_cancel, take_cancel_waiting};
use crate::task::Cancelled;

/// A condition variable bound to a [`Lock`] it owns (asyncio's `Condition`).
///
/// A task holding the lock calls [`wait`](Condition::wait) with its guard: the lock is released
/// while the task waits for a [`notify`](Condition::notify) and is held again when `wait`
/// returns, **also when it returns because the task was cancelled** (asyncio re-acquires the lock
/// before raising `CancelledError`, too). Since Rust gives the guard back rather than keeping the
/// lock implicitly held, `wait` resolves to `Result<LockGuard, WaitCancelled>`, and
/// [`WaitCancelled`] carries the re-held guard next to the [`Cancelled`]; `?` converts it into
/// `Cancelled` (dropping the guard) when the task just lets the cancellation escape.
///
/// Differences from asyncio: [`notify`](Condition::notify) does not require the lock to be held
/// (there is no thread to race with, so nothing can be lost), and it returns how many waiters it
/// woke. A waiter that was notified but dropped, or cancelled while re-acquiring the lock, passes
/// its notification on to the next waiter (as asyncio 3.13 does), so `notify(1)` is never lost.
///
/// Single-threaded, like asyncio's primitives: share it between tasks with `Rc`.
///
/// ```
/// use ringloop_runtime::{Runtime, spawn, sync::Condition};
/// use std::rc::Rc;
///
/// Runtime::new().unwrap().block_on(async {
///     let cond = Rc::new(Condition::new(Vec::<u32>::new()));
///     let consumer = spawn({
///         let cond = cond.clone();
///         async move {
///             let guard = cond.lock().await?;
///             let mut items = cond.wait_for(guard, |items| !items.is_empty()).await?;
///             Ok::<_, ringloop_runtime::Cancelled>(items.pop())
///         }
///     });
///     ringloop_runtime::sleep(std::time::Duration::ZERO).await.unwrap(); // let it wait
///     cond.lock().await.unwrap().push(7);
///     cond.notify_all();
///     assert_eq!(consumer.await.unwrap().unwrap(), Some(7));
/// });
/// ```
pub struct Condition<T: ?Sized> {
    waiters: RefCell<WaitList<()>>,
    lock: Lock<T>,
}

impl<T> Condition<T> {
    /// A condition with a new, unlocked lock holding `value`.
    pub fn new(value: T) -> Self {
        Condition::with_lock(Lock::new(value))
    }

    /// A condition bound to `lock` (asyncio's `Condition(lock)`).
    pub fn with_lock(lock: Lock<T>) -> Self {
        Condition {
            waiters: RefCell::new(WaitList::default()),
            lock,
        }
    }

    /// The protected value, consuming the condition.
    pub fn into_inner(self) -> T {
        self.lock.into_inner()
    }
}

impl<T: ?Sized> Condition<T> {
    /// The lock this condition is bound to.
    pub fn as_lock(&self) -> &Lock<T> {
        &self.lock
    }

    /// Waits for the lock; see [`Lock::lock`].
    pub fn lock(&self) -> LockAcquire<'_, T> {
        self.lock.lock()
    }

    /// Takes the lock if it is free; see [`Lock::try_lock`].
    pub fn try_lock(&self) -> Option<LockGuard<'_, T>> {
        self.lock.try_lock()
    }

    /// Whether the lock is held (asyncio's `locked()`).
    pub fn is_locked(&self) -> bool {
        self.lock.is_locked()
    }

    /// Releases the lock, waits to be notified, and takes the lock again (asyncio's
    /// `Condition.wait`); a cancellation point.
    ///
    /// Resolves to the re-held guard, or, if the task is cancelled while waiting, to
    /// [`WaitCancelled`] *once the lock is held again* (the re-acquisition itself ignores the
    /// request, as asyncio's does). A request already pending when `wait` is first polled is
    /// delivered at once, without releasing the lock.
    ///
    /// `guard` is normally a guard of this condition's own lock; the lock that `guard` belongs
    /// to is the one released and re-acquired.
    pub fn wait<'a>(&'a self, guard: LockGuard<'a, T>) -> ConditionWait<'a, T> {
        ConditionWait {
            cond: self,
            phase: Phase::Start(guard),
        }
    }

    /// Waits until `predicate` holds (asyncio's `Condition.wait_for`): checks it with the lock
    /// held, and [`wait`](Self::wait)s again while it is false. A cancellation point, like
    /// `wait`.
    pub async fn wait_for<'a, F>(
        &'a self,
        mut guard: LockGuard<'a, T>,
        mut predicate: F,
    ) -> Result<LockGuard<'a, T>, WaitCancelled<'a, T>>
    where
        F: FnMut(&T) -> bool,
    {
        while !predicate(&guard) {
            guard = self.wait(guard).await?;
        }
        Ok(guard)
    }

    /// Wakes up to `n` waiters, first come first served (asyncio's `notify(n)`); returns how many
    /// it woke.
    pub fn notify(&self, n: usize) -> usize {
        let mut wakers = Wakers::new();
        let mut woken = 0;
        {
            let mut w = self.waiters.borrow_mut();
            while woken < n {
                match w.pop_front() {
                    Some((_, waker)) => wakers.extend(waker),
                    None => break,
                }
                woken += 1;
            }
        }
        wake_all(wakers);
        woken
    }

    /// Wakes every waiter (asyncio's `notify_all`); returns how many it woke.
    pub fn notify_all(&self) -> usize {
        self.notify(usize::MAX)
    }
}

impl<T: ?Sized> fmt::Debug for Condition<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condition")
            .field("locked", &self.is_locked())
            .field("waiting", &self.waiters.borrow().has_queued())
            .finish_non_exhaustive()
    }
}

/// [`Condition::wait`] was cancelled; the lock is held again and `guard` holds it.
///
/// Converts into [`Cancelled`] (dropping the guard), so `cond.wait(guard).await?` lets the
/// cancellation escape from a function returning `Result<_, Cancelled>`.
///
/// ```
/// use ringloop_runtime::{sync::Condition, Cancelled};
///
/// async fn drain(cond: &Condition<Vec<u32>>) -> Result<Vec<u32>, Cancelled> {
///     let mut items = cond.lock().await?;
///     while items.is_empty() {
///         items = match cond.wait(items).await {
///             Ok(items) => items,
///             Err(e) => {
///                 // Still under the lock: leave a note, then let the cancellation escape.
///                 let mut items = e.guard;
///                 items.clear();
///                 return Err(e.cancelled);
///             }
///         };
///     }
///     Ok(std::mem::take(&mut *items))
/// }
/// # let _ = drain;
/// ```
pub struct WaitCancelled<'a, T: ?Sized> {
    /// The re-held lock.
    pub guard: LockGuard<'a, T>,
    /// The cancellation, to handle or to let escape.
    pub cancelled: Cancelled,
}

impl<T: ?Sized> From<WaitCancelled<'_, T>> for Cancelled {
    fn from(e: WaitCancelled<'_, T>) -> Cancelled {
        e.cancelled
    }
}

impl<T: ?Sized> fmt::Debug for WaitCancelled<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitCancelled")
            .field("cancelled", &self.cancelled)
            .finish_non_exhaustive()
    }
}

impl<T: ?Sized> fmt::Display for WaitCancelled<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (while waiting on a condition)", self.cancelled)
    }
}

impl<T: ?Sized> Error for WaitCancelled<'_, T> {}

enum Phase<'a, T: ?Sized> {
    /// Not polled yet: the caller's guard still holds the lock.
    Start(LockGuard<'a, T>),
    /// Lock released; queued on the condition.
    Waiting {
        lock: &'a Lock<T>,
        key: WaiterKey,
    },
    /// Notified or cancelled; taking the lock again, ignoring cancel requests until it is held.
    Reacquire {
        lock: &'a Lock<T>,
        waiter: Waiter,
        /// The cancellation to report once the lock is held (the latest one taken).
        cancelled: Option<Cancelled>,
        /// A notification was received and not yet reported or passed on.
        notified: bool,
    },
    Done,
}

/// The future of [`Condition::wait`].
#[must_use = "futures do nothing unless awaited"]
pub struct ConditionWait<'a, T: ?Sized> {
    cond: &'a Condition<T>,
    phase: Phase<'a, T>,
}

impl<'a, T: ?Sized> Future for ConditionWait<'a, T> {
    type Output = Result<LockGuard<'a, T>, WaitCancelled<'a, T>>;

    /// # Panics
    /// If polled again after it completed (the guard has been returned).
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            match mem::replace(&mut this.phase, Phase::Done) {
                Phase::Start(guard) => {
                    if let Some(cancelled) = take_cancel() {
                        return Poll::Ready(Err(WaitCancelled { guard, cancelled }));
                    }
                    let lock = guard.lock();
                    let key = this.cond.waiters.borrow_mut().push_back((), cx.waker());
                    this.phase = Phase::Waiting { lock, key };
                    // Release only once queued: a notify issued by whoever takes the lock next
                    // must find us. (Nothing runs in between on this thread anyway.)
                    drop(guard);
                    awaiting::note(Leaf::sync(&names::CONDITION), true);
                    return Poll::Pending;
                }
                Phase::Waiting { lock, key } => {
                    let mut w = this.cond.waiters.borrow_mut();
                    let (cancelled, notified) = if !w.is_queued(&key) {
                        (None, true)
                    } else if let Some(c) = take_cancel_waiting() {
                        (Some(c), false)
                    } else {
                        let old = w.set_waker(&key, cx.waker());
                        this.phase = Phase::Waiting { lock, key };
                        drop(w);
                        drop(old);
                        awaiting::note(Leaf::sync(&names::CONDITION), false);
                        return Poll::Pending;
                    };
                    w.remove(key);
                    this.phase = Phase::Reacquire {
                        lock,
                        waiter: Waiter::default(),
                        cancelled,
                        notified,
                    };
                }
                Phase::Reacquire {
                    lock,
                    mut waiter,
                    mut cancelled,
                    mut notified,
                } => match lock.poll_acquire(&mut waiter, cx, false) {
                    Poll::Ready(Ok(guard)) => {
                        return Poll::Ready(match cancelled {
                            None => Ok(guard),
                            Some(cancelled) => Err(WaitCancelled { guard, cancelled }),
                        });
                    }
                    // Not cancellable: only `Ok` or `Pending` come back. Keep waiting if not.
                    Poll::Ready(Err(_)) | Poll::Pending => {
                        // A request delivered to a concurrent branch in this poll counts if
                        // none was taken yet; a new one (pending) is always absorbed here, so
                        // the task is never taken for one suspended on a foreign future.
                        let taken = if cancelled.is_none() {
                            take_cancel_waiting()
                        } else {
                            take_cancel()
                        };
                        if let Some(c) = taken {
                            // asyncio: a cancel during re-acquisition is raised once the lock
                            // is held; the notification it pre-empts goes to the next waiter.
                            if mem::take(&mut notified) {
                                this.cond.notify(1);
                            }
                            cancelled = Some(c);
                        }
                        this.phase = Phase::Reacquire {
                            lock,
                            waiter,
                            cancelled,
                            notified,
                        };
                        return Poll::Pending;
                    }
                },
                Phase::Done => panic!("ConditionWait polled after completion"),
            }
        }
    }
}

impl<T: ?Sized> Drop for ConditionWait<'_, T> {
    fn drop(&mut self) {
        match mem::replace(&mut self.phase, Phase::Done) {
            Phase::Waiting { key, .. } => {
                let (_, was_queued) = self.cond.waiters.borrow_mut().remove(key);
                if !was_queued {
                    // Notified but never ran: the notification goes to the next waiter.
                    self.cond.notify(1);
                }
            }
            Phase::Reacquire {
                lock,
                mut waiter,
                notified,
                ..
            } => {
                lock.withdraw(&mut waiter);
                if notified {
                    self.cond.notify(1);
                }
            }
            Phase::Start(_) | Phase::Done => {}
        }
    }
}

impl<T: ?Sized> fmt::Debug for ConditionWait<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = match self.phase {
            Phase::Start(_) => "start",
            Phase::Waiting { .. } => "waiting",
            Phase::Reacquire { .. } => "reacquiring",
            Phase::Done => "done",
        };
        f.debug_struct("ConditionWait")
            .field("phase", &phase)
            .finish()
    }
}
