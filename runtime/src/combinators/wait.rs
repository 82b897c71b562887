//! `wait` and `as_completed`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::members::Members;
use crate::task::awaiting::{self, Leaf};
use crate::task::cancel::take_cancel_if;
use crate::task::{Cancelled, Task};
use crate::time::TimerEntry;

/// When [`wait`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReturnWhen {
    /// As soon as any task is done (asyncio's `FIRST_COMPLETED`).
    FirstCompleted,
    /// As soon as any task panics, or when all are done (asyncio's `FIRST_EXCEPTION`; as there,
    /// a cancelled task does not count as an exception, and a task returning `Err` is a task
    /// returning a value).
    FirstException,
    /// When every task is done (asyncio's `ALL_COMPLETED`).
    AllCompleted,
}

/// Waits for tasks until `return_when` holds or `timeout` passes, and returns them split into
/// `(done, pending)` (asyncio's `wait`), each in the order given.
///
/// Never cancels anything: on a timeout the pending tasks keep running and come back in
/// `pending`, so the caller can tell which timed out and decide. The done tasks' results are
/// taken by awaiting them (at once) or with [`Task::try_result`].
///
/// Awaiting `wait` is a cancellation point: if the awaiting task is cancelled, `wait` returns
/// `Err(Cancelled)` and the tasks, whose handles are dropped, run on detached (asyncio's `wait`
/// does not cancel them either).
///
/// ```
/// use ringloop_runtime::{wait, spawn, sleep, ReturnWhen};
/// use std::time::Duration;
///
/// ringloop_runtime::Runtime::new().unwrap().block_on(async {
///     let fast = spawn(async { 1 });
///     let slow = spawn(async { sleep(Duration::from_secs(60)).await.ok(); 2 });
///     let (done, pending) = wait([fast, slow], ReturnWhen::AllCompleted, Some(Duration::from_millis(5)))
///         .await
///         .unwrap();
///     assert_eq!((done.len(), pending.len()), (1, 1));
///     pending[0].cancel();
/// });
/// ```
pub fn wait<T>(
    tasks: impl IntoIterator<Item = Task<T>>,
    return_when: ReturnWhen,
    timeout: Option<Duration>,
) -> Wait<T> {
    let members = Members::new(tasks);
    let n = members.tasks.len();
    Wait {
        members,
        done: vec![false; n],
        return_when,
        deadline: timeout.map(|t| Instant::now() + t),
        timer: TimerEntry::default(),
    }
}

/// The future of [`wait`].
#[must_use = "futures do nothing unless awaited"]
pub struct Wait<T> {
    members: Members<Task<T>>,
    done: Vec<bool>,
    return_when: ReturnWhen,
    deadline: Option<Instant>,
    timer: TimerEntry,
}

impl<T> Unpin for Wait<T> {}

impl<T> Wait<T> {
    fn split(&mut self) -> (Vec<Task<T>>, Vec<Task<T>>) {
        self.timer.disarm();
        let mut done = Vec::new();
        let mut pending = Vec::new();
        for (i, t) in self.members.tasks.iter_mut().enumerate() {
            if let Some(t) = t.take() {
                if self.done[i] || t.is_done() {
                    done.push(t);
                } else {
                    pending.push(t);
                }
            }
        }
        (done, pending)
    }
}

impl<T> Future for Wait<T> {
    type Output = Result<(Vec<Task<T>>, Vec<Task<T>>), Cancelled>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let was_armed = this.members.is_armed();
        if this.members.tasks.is_empty() {
            return Poll::Ready(Ok((Vec::new(), Vec::new())));
        }
        loop {
            match this.members.poll_done(cx) {
                Poll::Ready(Some(i)) => {
                    this.done[i] = true;
                    let hit = match this.return_when {
                        ReturnWhen::FirstCompleted => true,
                        ReturnWhen::FirstException => this.members.tasks[i]
                            .as_ref()
                            .is_some_and(|t| t.state() == crate::TaskState::Panicked),
                        ReturnWhen::AllCompleted => false,
                    };
                    if hit || this.done.iter().all(|d| *d) {
                        return Poll::Ready(Ok(this.split()));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(Ok(this.split())),
                Poll::Pending => break,
            }
        }
        if let Some(deadline) = this.deadline {
            if Instant::now() >= deadline {
                return Poll::Ready(Ok(this.split()));
            }
            this.timer.arm(deadline, cx);
        }
        if let Some(c) = take_cancel_if(was_armed) {
            this.timer.disarm();
            return Poll::Ready(Err(c));
        }
        Poll::Pending
    }
}

/// Yields tasks as they finish, in completion order (asyncio's `as_completed`).
///
/// ```
/// use ringloop_runtime::{as_completed, spawn, sleep};
/// use std::time::Duration;
///
/// ringloop_runtime::Runtime::new().unwrap().block_on(async {
///     let slow = spawn(async { sleep(Duration::from_millis(5)).await.unwrap(); "slow" });
///     let fast = spawn(async { "fast" });
///     let mut finished = as_completed([slow, fast]);
///     let mut order = Vec::new();
///     while let Some(task) = finished.next().await.unwrap() {
///         order.push(task.await.unwrap());
///     }
///     assert_eq!(order, ["fast", "slow"]);
/// });
/// ```
pub fn as_completed<T>(tasks: impl IntoIterator<Item = Task<T>>) -> AsCompleted<T> {
    AsCompleted {
        members: Members::new(tasks),
    }
}

/// The stream of [`as_completed`]: call [`next`](Self::next) until it yields `None`.
pub struct AsCompleted<T> {
    members: Members<Task<T>>,
}

impl<T> AsCompleted<T> {
    /// The next task to finish (already done: awaiting it returns at once), or `None` when
    /// every task has been yielded.
    ///
    /// A cancellation point: if the awaiting task is cancelled, this resolves to
    /// `Err(Cancelled)` and the tasks not yet yielded stay here, running (asyncio does not
    /// cancel them either).
    #[allow(
        clippy::should_implement_trait,
        reason = "an async next cannot be Iterator::next"
    )]
    pub fn next(&mut self) -> Next<'_, T> {
        Next {
            inner: self,
            waiting: false,
        }
    }

    /// How many tasks have not been yielded yet.
    pub fn remaining(&self) -> usize {
        self.members.remaining()
    }
}

/// The future of [`AsCompleted::next`].
#[must_use = "futures do nothing unless awaited"]
pub struct Next<'a, T> {
    inner: &'a mut AsCompleted<T>,
    /// This `next()` returned `Pending` before.
    waiting: bool,
}

impl<T> Future for Next<'_, T> {
    type Output = Result<Option<Task<T>>, Cancelled>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let members = &mut this.inner.members;
        match members.poll_done(cx) {
            Poll::Ready(Some(i)) => Poll::Ready(Ok(members.take(i))),
            Poll::Ready(None) => Poll::Ready(Ok(None)),
            Poll::Pending => match take_cancel_if(this.waiting) {
                Some(c) => {
                    this.waiting = false;
                    Poll::Ready(Err(c))
                }
                None => {
                    // Each `next()` is a wait of its own.
                    awaiting::note(Leaf::tasks(members.left()), !this.waiting);
                    this.waiting = true;
                    Poll::Pending
                }
            },
        }
    }
}
