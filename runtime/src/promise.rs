//! A settable future: asyncio's `Future`.
//!
//! ```
//! use ringloop_runtime::{Promise, spawn};
//!
//! ringloop_runtime::Runtime::new().unwrap().block_on(async {
//!     let promise = Promise::new();
//!     let waiter = spawn({
//!         let p = promise.clone();
//!         async move { p.wait().await }
//!     });
//!     promise.set_result(42).unwrap();
//!     assert_eq!(waiter.await.unwrap().unwrap(), 42);
//!     assert!(promise.set_result(0).is_err(), "a promise is set once");
//! });
//! ```

use std::cell::RefCell;
use std::error::Error;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use slab::Slab;

use crate::context;
use crate::task::awaiting::{self, Leaf};
use crate::task::cancel::take_cancel_if;
use crate::task::Cancelled;

/// The error a shared error is stored as: cloneable, so every waiter gets it.
pub type SharedError = Arc<dyn Error + Send + Sync>;

/// Why awaiting a [`Promise`] produced no value.
#[derive(Clone, Debug)]
pub enum PromiseError {
    /// The promise was cancelled ([`Promise::cancel`]), or the task awaiting it was.
    Cancelled(Cancelled),
    /// The promise was failed with [`Promise::set_error`].
    Failed(SharedError),
}

/// Two cancellations are equal when their messages are; two failures when they are the same
/// shared error (`Arc::ptr_eq`: a `dyn Error` cannot be compared by value).
impl PartialEq for PromiseError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (PromiseError::Cancelled(a), PromiseError::Cancelled(b)) => a == b,
            (PromiseError::Failed(a), PromiseError::Failed(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for PromiseError {}

impl PromiseError {
    /// Whether this is a cancellation.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, PromiseError::Cancelled(_))
    }
}

impl fmt::Display for PromiseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PromiseError::Cancelled(c) => c.fmt(f),
            PromiseError::Failed(e) => write!(f, "promise failed: {e}"),
        }
    }
}

impl Error for PromiseError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            PromiseError::Cancelled(c) => Some(c),
            PromiseError::Failed(e) => Some(&**e),
        }
    }
}

impl From<Cancelled> for PromiseError {
    fn from(c: Cancelled) -> Self {
        PromiseError::Cancelled(c)
    }
}

impl From<PromiseError> for std::io::Error {
    fn from(e: PromiseError) -> Self {
        match e {
            PromiseError::Cancelled(c) => c.into(),
            PromiseError::Failed(e) => std::io::Error::other(e),
        }
    }
}

/// Returned when setting a promise that is already done (asyncio raises `InvalidStateError`);
/// gives the value back.
#[derive(Debug, PartialEq, Eq)]
pub struct SetError<T>(pub T);

impl<T> fmt::Display for SetError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the promise is already done")
    }
}

impl<T: fmt::Debug> Error for SetError<T> {}

enum State<T> {
    Pending,
    Value(T),
    Failed(SharedError),
    Cancelled(Option<Arc<str>>),
}

type DoneCallback<T> = Box<dyn FnOnce(&Promise<T>)>;

/// The tasks waiting on a promise. The first waiter is kept inline: most promises have one,
/// and then they cost no allocation besides the promise itself.
#[derive(Default)]
struct Waiters {
    first: Option<Waker>,
    more: Slab<Waker>,
}

/// The key of the inline waiter (slab keys are small).
const FIRST: usize = usize::MAX;

impl Waiters {
    fn insert(&mut self, waker: Waker) -> usize {
        if self.first.is_none() {
            self.first = Some(waker);
            FIRST
        } else {
            self.more.insert(waker)
        }
    }

    fn get_mut(&mut self, key: usize) -> Option<&mut Waker> {
        if key == FIRST {
            self.first.as_mut()
        } else {
            self.more.get_mut(key)
        }
    }

    fn remove(&mut self, key: usize) {
        if key == FIRST {
            self.first = None;
        } else if self.more.contains(key) {
            self.more.remove(key);
        }
    }

    fn wake_all(self) {
        if let Some(w) = self.first {
            w.wake();
        }
        for w in self.more {
            w.1.wake();
        }
    }
}

struct Inner<T> {
    state: State<T>,
    waiters: Waiters,
    callbacks: Vec<DoneCallback<T>>,
}

/// A value that will be set later, awaitable by any number of tasks (asyncio's `Future`).
///
/// Clone it to share it: every clone is the same promise. Waiters get a clone of the value
/// (`T: Clone`), or the shared error. Setting a promise that is done returns an error and never
/// panics. Awaiting is a cancellation point: a waiting task that is cancelled gets
/// `Err(PromiseError::Cancelled)` while the promise itself stays pending for others.
///
/// Like asyncio's, a promise belongs to one loop thread (`!Send`); use
/// [`sync::oneshot`](crate::sync) to pass a value between threads.
pub struct Promise<T> {
    inner: Rc<RefCell<Inner<T>>>,
}

impl<T> Clone for Promise<T> {
    fn clone(&self) -> Self {
        Promise {
            inner: self.inner.clone(),
        }
    }
}

impl<T: 'static> Default for Promise<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for Promise<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.inner.borrow().state {
            State::Pending => "pending",
            State::Value(_) => "finished",
            State::Failed(_) => "failed",
            State::Cancelled(_) => "cancelled",
        };
        f.debug_struct("Promise").field("state", &state).finish()
    }
}

impl<T: 'static> Promise<T> {
    /// A pending promise.
    pub fn new() -> Self {
        Promise {
            inner: Rc::new(RefCell::new(Inner {
                state: State::Pending,
                waiters: Waiters::default(),
                callbacks: Vec::new(),
            })),
        }
    }

    fn settle(&self, state: State<T>) -> Result<(), State<T>> {
        let (waiters, callbacks) = {
            let mut inner = self.inner.borrow_mut();
            if !matches!(inner.state, State::Pending) {
                return Err(state);
            }
            inner.state = state;
            (
                std::mem::take(&mut inner.waiters),
                std::mem::take(&mut inner.callbacks),
            )
        };
        waiters.wake_all();
        for cb in callbacks {
            let me = self.clone();
            context::with_scheduler(|sched| sched.call_soon(Box::new(move || cb(&me))));
        }
        Ok(())
    }

    /// Sets the value and wakes every waiter.
    ///
    /// # Errors
    /// [`SetError`] with the value if the promise is already done.
    pub fn set_result(&self, value: T) -> Result<(), SetError<T>> {
        self.settle(State::Value(value)).map_err(|s| match s {
            State::Value(v) => SetError(v),
            _ => unreachable!("settle gives back what it was given"),
        })
    }

    /// Fails the promise (asyncio's `set_exception`); waiters get `PromiseError::Failed`.
    ///
    /// # Errors
    /// [`SetError`] with the error if the promise is already done.
    pub fn set_error<E>(&self, error: E) -> Result<(), SetError<E>>
    where
        E: Error + Send + Sync + 'static,
    {
        if self.is_done() {
            return Err(SetError(error));
        }
        let _ = self.settle(State::Failed(Arc::new(error)));
        Ok(())
    }

    /// Cancels the promise; waiters get `PromiseError::Cancelled`. Returns false if it is
    /// already done.
    pub fn cancel(&self) -> bool {
        self.settle(State::Cancelled(None)).is_ok()
    }

    /// Cancels the promise with a message.
    pub fn cancel_with(&self, message: impl Into<String>) -> bool {
        self.settle(State::Cancelled(Some(Arc::from(message.into()))))
            .is_ok()
    }

    /// Whether the promise has a value, an error, or was cancelled.
    pub fn is_done(&self) -> bool {
        !matches!(self.inner.borrow().state, State::Pending)
    }

    /// Whether the promise was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self.inner.borrow().state, State::Cancelled(_))
    }

    /// Calls `f` with the promise once it is done, through `call_soon` (never inline); at once
    /// (scheduled) if it is already done.
    ///
    /// # Panics
    /// If the promise is already done and no ringloop runtime is running.
    pub fn add_done_callback(&self, f: impl FnOnce(&Promise<T>) + 'static)
    where
        T: 'static,
    {
        let mut inner = self.inner.borrow_mut();
        if matches!(inner.state, State::Pending) {
            inner.callbacks.push(Box::new(f));
        } else {
            drop(inner);
            let me = self.clone();
            context::with_scheduler(|sched| sched.call_soon(Box::new(move || f(&me))));
        }
    }

    /// A future that waits for the promise to be done.
    pub fn wait(&self) -> PromiseWait<'_, T> {
        PromiseWait {
            promise: self,
            key: None,
        }
    }
}

impl<T: Clone> Promise<T> {
    /// The outcome if done (asyncio's `result()` without raising): `None` while pending.
    pub fn try_result(&self) -> Option<Result<T, PromiseError>> {
        match &self.inner.borrow().state {
            State::Pending => None,
            State::Value(v) => Some(Ok(v.clone())),
            State::Failed(e) => Some(Err(PromiseError::Failed(e.clone()))),
            State::Cancelled(m) => {
                Some(Err(PromiseError::Cancelled(context::with_current(
                    |t| match t {
                        Some(t) => t.header().deliver(m.clone()),
                        None => Cancelled::unbound(m.clone()),
                    },
                ))))
            }
        }
    }
}

/// The future of [`Promise::wait`].
#[must_use = "futures do nothing unless awaited"]
pub struct PromiseWait<'a, T> {
    promise: &'a Promise<T>,
    key: Option<usize>,
}

impl<T> PromiseWait<'_, T> {
    fn forget_waiter(&mut self) {
        if let Some(key) = self.key.take() {
            self.promise.inner.borrow_mut().waiters.remove(key);
        }
    }
}

impl<T: Clone> Future for PromiseWait<'_, T> {
    type Output = Result<T, PromiseError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(r) = self.promise.try_result() {
            self.key = None;
            return Poll::Ready(r);
        }
        if let Some(c) = take_cancel_if(self.key.is_some()) {
            self.forget_waiter();
            return Poll::Ready(Err(PromiseError::Cancelled(c)));
        }
        let mut inner = self.promise.inner.borrow_mut();
        match self.key.and_then(|key| inner.waiters.get_mut(key)) {
            Some(w) => {
                if !w.will_wake(cx.waker()) {
                    w.clone_from(cx.waker());
                }
            }
            None => {
                let key = inner.waiters.insert(cx.waker().clone());
                drop(inner);
                self.key = Some(key);
                awaiting::note(Leaf::PROMISE, true);
                return Poll::Pending;
            }
        }
        awaiting::note(Leaf::PROMISE, false);
        Poll::Pending
    }
}

impl<T> Drop for PromiseWait<'_, T> {
    fn drop(&mut self) {
        self.forget_waiter();
    }
}

/// The owned future of `promise.await`.
#[must_use = "futures do nothing unless awaited"]
pub struct PromiseFuture<T> {
    promise: Promise<T>,
    key: Option<usize>,
}

impl<T: Clone> IntoFuture for Promise<T> {
    type Output = Result<T, PromiseError>;
    type IntoFuture = PromiseFuture<T>;

    /// `promise.await` waits on this clone of the promise; see [`Promise::wait`].
    fn into_future(self) -> PromiseFuture<T> {
        PromiseFuture {
            promise: self,
            key: None,
        }
    }
}

impl<T: Clone> Future for PromiseFuture<T> {
    type Output = Result<T, PromiseError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut wait = PromiseWait {
            promise: &this.promise,
            key: this.key.take(),
        };
        let r = Pin::new(&mut wait).poll(cx);
        this.key = wait.key.take();
        r
    }
}

impl<T> Drop for PromiseFuture<T> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.promise.inner.borrow_mut().waiters.remove(key);
        }
    }
}
