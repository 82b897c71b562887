//! [`Lock`]: asyncio's `Lock`, holding the data it protects.

use std::cell::{RefCell, RefMut};
use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::task::{Context, Poll};

use super::semaphore::{Semaphore, Waiter};
use crate::task::awaiting::names;
use crate::task::Cancelled;

/// An async mutex (asyncio's `Lock`; `Lock::new(())` is exactly asyncio's `Lock`), holding the
/// value it protects.
///
/// [`lock`](Lock::lock) waits for the lock and returns a [`LockGuard`] that derefs to the value
/// and releases the lock when dropped (asyncio's `async with lock:`).
///
/// **Fairness.** Waiters are served strictly in FIFO order with direct hand-off: on release the
/// lock goes to the first waiter and stays locked, so a task calling `lock` or
/// [`try_lock`](Lock::try_lock) while others wait never barges in ahead of them. A waiter that
/// was handed the lock but is dropped before it runs passes it on to the next one: the lock is
/// never lost.
///
/// **Cancellation.** `lock()` is a cancellation point: a task cancelled while queued leaves the
/// queue and gets `Err(Cancelled)`. A lock that is free (or already handed to the waiter) is
/// taken even if a cancel request is pending; the request is delivered at the task's next await.
///
/// Single-threaded, like asyncio's primitives: share it between tasks with `Rc`.
///
/// ```
/// use ringloop_runtime::{Runtime, spawn, sleep, sync::Lock};
/// use std::{rc::Rc, time::Duration};
///
/// Runtime::new().unwrap().block_on(async {
///     let log = Rc::new(Lock::new(Vec::new()));
///     let tasks: Vec<_> = (0..3)
///         .map(|i| {
///             let log = log.clone();
///             spawn(async move {
///                 let mut log = log.lock().await?;
///                 log.push(i);
///                 sleep(Duration::ZERO).await?; // still held across the await
///                 log.push(i);
///                 Ok::<_, ringloop_runtime::Cancelled>(())
///             })
///         })
///         .collect();
///     for t in tasks {
///         t.await.unwrap().unwrap();
///     }
///     assert_eq!(*log.lock().await.unwrap(), [0, 0, 1, 1, 2, 2]);
/// });
/// ```
pub struct Lock<T: ?Sized> {
    /// One permit: free means unlocked.
    sem: Semaphore,
    /// Borrowed mutably exactly while a guard exists, which the permit makes exclusive.
    value: RefCell<T>,
}

impl<T> Lock<T> {
    /// A new, unlocked lock holding `value`.
    pub fn new(value: T) -> Self {
        Lock {
            sem: Semaphore::new(1),
            value: RefCell::new(value),
        }
    }

    /// The protected value, consuming the lock.
    pub fn into_inner(self) -> T {
        self.value.into_inner()
    }
}

impl<T: ?Sized> Lock<T> {
    /// Waits for the lock (asyncio's `acquire`, as `async with lock:`); a cancellation point.
    /// See the [type docs](Lock) for fairness and cancellation.
    pub fn lock(&self) -> LockAcquire<'_, T> {
        LockAcquire {
            lock: self,
            waiter: Waiter::default(),
        }
    }

    /// Takes the lock if it is free right now. `None` while it is held or handed to a waiter.
    pub fn try_lock(&self) -> Option<LockGuard<'_, T>> {
        self.sem.try_acquire().map(|permit| {
            permit.forget();
            LockGuard::new(self)
        })
    }

    /// Whether the lock is held (or handed to a waiter that has not run yet): asyncio's
    /// `locked()`.
    pub fn is_locked(&self) -> bool {
        self.sem.available_permits() == 0
    }

    /// The protected value, through a unique borrow of the lock (no locking needed).
    pub fn get_mut(&mut self) -> &mut T {
        self.value.get_mut()
    }

    pub(super) fn poll_acquire(
        &self,
        waiter: &mut Waiter,
        cx: &Context<'_>,
        cancellable: bool,
    ) -> Poll<Result<LockGuard<'_, T>, Cancelled>> {
        waiter
            .poll_acquire(&self.sem, cx, cancellable, &names::LOCK)
            .map_ok(|()| LockGuard::new(self))
    }

    pub(super) fn withdraw(&self, waiter: &mut Waiter) {
        waiter.withdraw(&self.sem);
    }
}

impl<T: Default> Default for Lock<T> {
    fn default() -> Self {
        Lock::new(T::default())
    }
}

impl<T: ?Sized> fmt::Debug for Lock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("locked", &self.is_locked())
            .finish_non_exhaustive()
    }
}

/// The future of [`Lock::lock`].
#[must_use = "futures do nothing unless awaited"]
pub struct LockAcquire<'a, T: ?Sized> {
    lock: &'a Lock<T>,
    waiter: Waiter,
}

impl<'a, T: ?Sized> Future for LockAcquire<'a, T> {
    type Output = Result<LockGuard<'a, T>, Cancelled>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        this.lock.poll_acquire(&mut this.waiter, cx, true)
    }
}

impl<T: ?Sized> Drop for LockAcquire<'_, T> {
    fn drop(&mut self) {
        // Handed the lock but never ran: pass it on to the next waiter.
        self.lock.withdraw(&mut self.waiter);
    }
}

impl<T: ?Sized> fmt::Debug for LockAcquire<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockAcquire")
            .field("waiter", &self.waiter)
            .finish()
    }
}

/// Proof that the [`Lock`] is held; derefs to the protected value and releases the lock (to the
/// first waiter, if any) when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard<'a, T: ?Sized> {
    lock: &'a Lock<T>,
    /// `Some` for the guard's whole life; taken only in `drop`, so that the borrow ends before
    /// the lock is handed on.
    value: Option<RefMut<'a, T>>,
}

impl<'a, T: ?Sized> LockGuard<'a, T> {
    /// Must be called only by the holder of the lock's permit.
    fn new(lock: &'a Lock<T>) -> Self {
        LockGuard {
            lock,
            value: Some(lock.value.borrow_mut()),
        }
    }

    /// The lock this guard holds (for [`Condition`](super::Condition)).
    pub(super) fn lock(&self) -> &'a Lock<T> {
        self.lock
    }
}

impl<T: ?Sized> Deref for LockGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.value
            .as_deref()
            .expect("LockGuard value is present until drop")
    }
}

impl<T: ?Sized> DerefMut for LockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.value
            .as_deref_mut()
            .expect("LockGuard value is present until drop")
    }
}

impl<T: ?Sized> Drop for LockGuard<'_, T> {
    fn drop(&mut self) {
        // End the borrow first: the next holder borrows the value when it runs.
        self.value = None;
        self.lock.sem.release();
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for LockGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LockGuard").field(&&**self).finish()
    }
}
