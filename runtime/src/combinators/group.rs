//! `TaskGroup`: structured concurrency (asyncio 3.11's `TaskGroup`, trio's nursery).

use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::future::{poll_fn, Future};
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use crate::task::awaiting::{self, Leaf};
use crate::task::cancel::{self, take_cancel, take_cancel_if};
use crate::task::{panic_message, Cancelled, TaskRef};

/// One failure collected by a [`TaskGroup`].
pub enum GroupFailure<E> {
    /// A child returned `Err`.
    Failed(E),
    /// A child panicked (the panic is collected here, not reported to the exception handler).
    Panicked(Box<dyn Any + Send>),
    /// The group's body returned `Err`.
    Body(E),
}

impl<E: fmt::Debug> fmt::Debug for GroupFailure<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupFailure::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
            GroupFailure::Body(e) => f.debug_tuple("Body").field(e).finish(),
            GroupFailure::Panicked(p) => f
                .debug_tuple("Panicked")
                .field(&panic_message(&**p).unwrap_or("<non-string payload>"))
                .finish(),
        }
    }
}

/// Everything that went wrong in a [`TaskGroup`] (asyncio's `ExceptionGroup`).
pub struct GroupError<E> {
    /// Child and body failures, in the order they happened. Cancellations the group caused
    /// itself are not failures and are not listed (as in asyncio).
    pub failures: Vec<GroupFailure<E>>,
    /// Set when the task running the group was cancelled from outside; letting this error
    /// escape ends that task as cancelled, as asyncio re-raises `CancelledError`.
    pub cancelled: Option<Cancelled>,
}

impl<E> GroupError<E> {
    /// Whether the group ended because its task was cancelled from outside.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.is_some()
    }
}

impl<E: fmt::Debug> fmt::Debug for GroupError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupError")
            .field("failures", &self.failures)
            .field("cancelled", &self.cancelled)
            .finish()
    }
}

impl<E: fmt::Display> fmt::Display for GroupError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(c) = &self.cancelled {
            write!(f, "task group cancelled ({c})")?;
            if self.failures.is_empty() {
                return Ok(());
            }
            f.write_str("; ")?;
        }
        write!(f, "{} failure(s) in task group", self.failures.len())?;
        for (i, fail) in self.failures.iter().enumerate() {
            let sep = if i == 0 { ": " } else { "; " };
            match fail {
                GroupFailure::Failed(e) => write!(f, "{sep}child failed: {e}")?,
                GroupFailure::Body(e) => write!(f, "{sep}body failed: {e}")?,
                GroupFailure::Panicked(p) => write!(
                    f,
                    "{sep}child panicked: {}",
                    panic_message(&**p).unwrap_or("<non-string payload>")
                )?,
            }
        }
        Ok(())
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for GroupError<E> {}

struct State<T, E> {
    children: Vec<TaskRef>,
    results: Vec<Option<T>>,
    failures: Vec<GroupFailure<E>>,
    alive: usize,
    /// The group is cancelling its children after a failure or a cancellation.
    cancelling: bool,
    /// The scope has ended: new children are cancelled before they start.
    closed: bool,
    body_running: bool,
    parent: Option<TaskRef>,
    /// `cancelling()` of the parent before the group cancelled the body, if it did.
    parent_requests_before: Option<u32>,
    /// Whether a request from outside was pending on the parent when the group cancelled the
    /// body (it is not the group's to withdraw).
    parent_pending_before: bool,
    waker: Option<Waker>,
}

/// A scope whose child tasks all end before it does (asyncio 3.11's `TaskGroup`, trio's
/// nursery). Create one with [`TaskGroup::scope`].
///
/// * The scope returns when the body and **every child** are done.
/// * The first failure (a child returning `Err` or panicking, or the body returning `Err`)
///   cancels every other child and the body (the body sees `Err(Cancelled)` at its next await);
///   every child is still awaited; all failures come back together in a [`GroupError`].
/// * Cancelling the task running the scope cancels the group: the body and every child are
///   cancelled, awaited, and the scope returns a `GroupError` whose `cancelled` is set.
/// * A child cancelled individually from outside the group is not a failure; it just
///   contributes no value. A child that lets a cancellation escape (the group's, or one from
///   outside) ends *cancelled* ([`TaskRef::is_cancelled`], the task tree, the stats), as a
///   plain task does.
/// * **Dropping the scope's future** before it completes (it lost a race, or its task was
///   aborted) cancels every child still running, since nobody can await them any more (tokio's
///   `JoinSet` aborts its tasks on drop; here each child gets a cancel request, so it may still
///   clean up), closes the group (a child spawned afterwards through a leftover clone is
///   cancelled before it starts), and withdraws the cancel request the group may have made on
///   the body, so the task's [`cancelling`](TaskRef::cancelling) count is back to what it was.
///
/// Children are spawned tasks (children of the running task in [`task_tree`](crate::task_tree)).
/// All children return `Result<T, E>`; their `Ok` values come back in spawn order.
///
/// ```
/// use ringloop_runtime::{TaskGroup, sleep, Cancelled};
/// use std::time::Duration;
///
/// #[derive(Debug)]
/// enum AppError { Cancelled(Cancelled), Bad(&'static str) }
/// impl From<Cancelled> for AppError { fn from(c: Cancelled) -> Self { AppError::Cancelled(c) } }
///
/// ringloop_runtime::Runtime::new().unwrap().block_on(async {
///     let result = TaskGroup::<u32, AppError>::scope(|tg| async move {
///         tg.spawn(async { sleep(Duration::from_secs(60)).await?; Ok(1) });
///         tg.spawn(async { Err(AppError::Bad("no")) });
///         Ok(())
///     })
///     .await;
///     let err = result.unwrap_err();
///     assert_eq!(err.failures.len(), 1, "the sibling's cancellation is not a failure");
/// });
/// ```
pub struct TaskGroup<T, E> {
    state: Rc<RefCell<State<T, E>>>,
}

impl<T, E> Clone for TaskGroup<T, E> {
    fn clone(&self) -> Self {
        TaskGroup {
            state: self.state.clone(),
        }
    }
}

/// Decrements the group's live count however a child ends (finished, cancelled by drop, ...).
struct ChildGuard<T, E> {
    state: Rc<RefCell<State<T, E>>>,
}

impl<T, E> Drop for ChildGuard<T, E> {
    fn drop(&mut self) {
        let waker = {
            let mut s = self.state.borrow_mut();
            s.alive -= 1;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T: 'static, E: 'static> TaskGroup<T, E> {
    /// Runs `body` with a new group and waits for it and every child; see the [type
    /// docs](Self).
    ///
    /// Returns the body's value and the children's `Ok` values in spawn order, or every
    /// failure.
    ///
    /// # Panics
    /// Outside a running ringloop runtime.
    pub async fn scope<B, Fut, R>(body: B) -> Result<(R, Vec<T>), GroupError<E>>
    where
        B: FnOnce(TaskGroup<T, E>) -> Fut,
        Fut: Future<Output = Result<R, E>>,
    {
        let parent = crate::current_task();
        let group = TaskGroup {
            state: Rc::new(RefCell::new(State {
                children: Vec::new(),
                results: Vec::new(),
                failures: Vec::new(),
                alive: 0,
                cancelling: false,
                closed: false,
                body_running: true,
                parent: parent.clone(),
                parent_requests_before: None,
                parent_pending_before: false,
                waker: None,
            })),
        };
        let mut guard = ScopeGuard {
            group: group.clone(),
            ended: false,
        };
        let body_result = body(group.clone()).await;
        group.state.borrow_mut().body_running = false;

        let mut cancelled = None;
        let value = match body_result {
            Ok(v) => Some(v),
            Err(e) => {
                if cancel::escaping() {
                    // The body let a cancellation escape: the group's own (after a child
                    // failed) or one from outside; the counts below tell which.
                    drop(e);
                    let msg = parent
                        .as_ref()
                        .and_then(|p| p.ptr().header().cancel_message());
                    cancelled = Some(match &parent {
                        Some(p) => p.ptr().header().deliver(msg),
                        None => Cancelled::unbound(msg),
                    });
                    group.start_cancelling();
                } else {
                    group.fail(GroupFailure::Body(e));
                }
                None
            }
        };

        // Wait for every child; a cancellation of this task now goes to the children.
        let mut waiting = false;
        poll_fn(|cx| {
            // A request delivered to a concurrent branch in this poll counts while waiting, until
            // one was taken; a new one (pending) is always taken.
            let taken = if cancelled.is_none() {
                take_cancel_if(waiting)
            } else {
                take_cancel()
            };
            let new = !waiting;
            waiting = true;
            if let Some(c) = taken {
                cancelled.get_or_insert(c);
                group.start_cancelling();
            }
            let mut s = group.state.borrow_mut();
            if s.alive == 0 {
                return Poll::Ready(());
            }
            match &s.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => s.waker = Some(cx.waker().clone()),
            }
            awaiting::note(Leaf::tasks(s.alive), new);
            Poll::Pending
        })
        .await;

        guard.ended = true;
        let mut s = group.state.borrow_mut();
        s.closed = true;
        if let Some(before) = s.parent_requests_before.take() {
            // Withdraw the cancel the group sent its body. If only that one was seen, the
            // cancellation was the group's own doing, not the caller's.
            if !withdraw_body_cancel(&s, before) {
                cancelled = None;
            }
        }
        let failures = std::mem::take(&mut s.failures);
        let results: Vec<T> = s.results.drain(..).flatten().collect();
        drop(s);
        match value {
            Some(v) if failures.is_empty() && cancelled.is_none() => Ok((v, results)),
            _ => Err(GroupError {
                failures,
                cancelled,
            }),
        }
    }

    /// Spawns a child in the group. Returns a reference to the child task (to name it, or
    /// cancel it individually).
    ///
    /// Once the scope has ended, a child spawned through a leftover clone of the group is
    /// cancelled before it starts (asyncio refuses it with an error).
    ///
    /// # Panics
    /// Outside a running ringloop runtime.
    #[track_caller]
    pub fn spawn<F>(&self, future: F) -> TaskRef
    where
        F: Future<Output = Result<T, E>> + 'static,
    {
        let index = {
            let mut s = self.state.borrow_mut();
            s.alive += 1;
            s.results.push(None);
            s.results.len() - 1
        };
        let guard = ChildGuard {
            state: self.state.clone(),
        };
        let group = self.clone();
        let task = crate::spawn(async move {
            let _guard = guard;
            match CatchUnwind(future).await {
                Ok(Ok(v)) => group.state.borrow_mut().results[index] = Some(v),
                Ok(Err(e)) => {
                    if cancel::escaping() {
                        // The child let a cancellation escape: return it, so the child ends
                        // cancelled (not finished) as a plain task would.
                        return Some(e);
                    }
                    group.fail(GroupFailure::Failed(e));
                }
                Err(payload) => group.fail(GroupFailure::Panicked(payload)),
            }
            None
        });
        let child = task.as_ref().clone();
        let (closed, cancelling) = {
            let mut s = self.state.borrow_mut();
            s.children.push(child.clone());
            (s.closed, s.cancelling)
        };
        if closed || cancelling {
            child.cancel();
        }
        child
    }

    /// Records a failure; the first one cancels the siblings and the body.
    fn fail(&self, failure: GroupFailure<E>) {
        self.state.borrow_mut().failures.push(failure);
        self.start_cancelling();
    }

    fn start_cancelling(&self) {
        let (children, parent) = {
            let mut s = self.state.borrow_mut();
            if s.cancelling {
                return;
            }
            s.cancelling = true;
            let parent = if s.body_running {
                s.parent.clone()
            } else {
                None
            };
            if let Some(p) = &parent {
                s.parent_requests_before = Some(p.cancelling());
                s.parent_pending_before = p.ptr().header().cancel_pending();
            }
            (s.children.clone(), parent)
        };
        for c in children {
            c.cancel();
        }
        if let Some(p) = parent {
            p.cancel();
        }
    }

    /// How many children are still running.
    pub fn alive(&self) -> usize {
        self.state.borrow().alive
    }
}

/// Withdraws the cancel request the group made on its body (`uncancel`), and drops it if it
/// was never delivered and nothing came from outside. Returns whether a request from outside
/// remains (asyncio's `uncancel() > cancelling-before`).
fn withdraw_body_cancel<T, E>(s: &State<T, E>, before: u32) -> bool {
    let Some(p) = &s.parent else { return false };
    let left = p.uncancel();
    if left > before {
        return true;
    }
    if !s.parent_pending_before {
        p.ptr().header().withdraw_pending();
    }
    false
}

/// Ends a group whose scope future is dropped before it completed: see "Dropping the scope's
/// future" in the [`TaskGroup`] docs.
struct ScopeGuard<T, E> {
    group: TaskGroup<T, E>,
    /// The scope ran to its end (it did this itself).
    ended: bool,
}

impl<T, E> Drop for ScopeGuard<T, E> {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let children = {
            let mut s = self.group.state.borrow_mut();
            s.closed = true;
            s.cancelling = true;
            s.body_running = false;
            if let Some(before) = s.parent_requests_before.take() {
                // A request from outside stays as it is: it was never the group's.
                withdraw_body_cancel(&s, before);
            }
            s.children.clone()
        };
        for c in children {
            c.cancel();
        }
    }
}

/// Catches a panic of the inner future at its poll, so the group can collect it.
struct CatchUnwind<F>(F);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: structural pinning of the only field; `CatchUnwind` never moves it.
        let inner = unsafe { self.map_unchecked_mut(|s| &mut s.0) };
        match panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}
