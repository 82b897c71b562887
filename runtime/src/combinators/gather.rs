//! `gather`, `gather_settled` and `try_gather`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::members::{AsTask, Members};
use crate::task::cancel::{take_cancel, take_cancel_if};
use crate::task::Cancelled;
use crate::task::{Task, TaskError};

/// Waits for every task and returns their outputs in the order given (asyncio's `gather`).
///
/// On the first task that ends with an error (a panic, or a cancellation) the tasks still
/// running are **cancelled** and the error is returned at once. *This differs from asyncio*,
/// whose `gather` leaves the others running after the first exception; cancelling them is what
/// callers almost always want, and [`TaskGroup`](crate::TaskGroup) goes further by also awaiting
/// them. The cancelled tasks end on their own, at their next await.
///
/// Awaiting `gather` is a cancellation point that follows the await chain: if the awaiting task
/// is cancelled, every gathered task is cancelled (as in asyncio), and `gather` returns
/// `Err(TaskError::Cancelled)` carrying *that* cancellation (its message) as soon as the first
/// task ends with an error or, if every task catches its cancellation and finishes anyway,
/// once all have finished: as asyncio's `gather` raises `CancelledError` when it was cancelled
/// itself, the values of tasks that finished anyway are dropped, and the cancellation is never
/// swallowed. Letting that error escape ends the awaiting task as cancelled.
///
/// The tasks are given as handles ([`Task`]) or borrowed (`&mut Task`, see [`AsTask`]) to look at
/// them afterwards.
///
/// ```
/// use ringloop_runtime::{gather, spawn};
///
/// ringloop_runtime::Runtime::new().unwrap().block_on(async {
///     let tasks = (1..=3).map(|i| spawn(async move { i * 10 }));
///     assert_eq!(gather(tasks).await.unwrap(), vec![10, 20, 30]);
/// });
/// ```
pub fn gather<H: AsTask>(tasks: impl IntoIterator<Item = H>) -> Gather<H::Output, H> {
    let members = Members::new(tasks);
    let n = members.tasks.len();
    Gather {
        members,
        results: (0..n).map(|_| None).collect(),
        cancelled: None,
    }
}

/// The future of [`gather`].
#[must_use = "futures do nothing unless awaited"]
pub struct Gather<T, H = Task<T>> {
    members: Members<H>,
    results: Vec<Option<T>>,
    /// The awaiting task was cancelled (and the tasks with it): what the gather returns.
    cancelled: Option<Cancelled>,
}

/// Takes a cancel request of the awaiting task for a gather: one delivered to a concurrent
/// branch earlier in this poll counts only if the gather was already waiting and has not taken
/// one yet (a request it already forwarded reaches it once; a new one is still taken, so the
/// task is never taken for one suspended on a foreign future).
fn take_outer_cancel(was_armed: bool, already: bool) -> Option<Cancelled> {
    if already {
        take_cancel()
    } else {
        take_cancel_if(was_armed)
    }
}

impl<T, H> Unpin for Gather<T, H> {}

impl<T, H: AsTask<Output = T>> Future for Gather<T, H> {
    type Output = Result<Vec<T>, TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let was_armed = this.members.is_armed();
        loop {
            match this.members.poll_done(cx) {
                Poll::Ready(Some(i)) => {
                    let mut task = this.members.take(i).expect("done task is present");
                    match task
                        .task_mut()
                        .try_result()
                        .expect("done task has a result")
                    {
                        Ok(v) => this.results[i] = Some(v),
                        Err(e) => {
                            this.members.cancel_all(None);
                            return Poll::Ready(Err(match this.cancelled.take() {
                                Some(c) => TaskError::Cancelled(c),
                                None => e,
                            }));
                        }
                    }
                }
                Poll::Ready(None) => {
                    if let Some(c) = this.cancelled.take() {
                        return Poll::Ready(Err(TaskError::Cancelled(c)));
                    }
                    let results = std::mem::take(&mut this.results);
                    return Poll::Ready(Ok(results
                        .into_iter()
                        .map(|r| r.expect("every task finished"))
                        .collect()));
                }
                Poll::Pending => {
                    if let Some(c) = take_outer_cancel(was_armed, this.cancelled.is_some()) {
                        this.members.cancel_all(c.message_arc());
                        this.cancelled = Some(c);
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// Waits for every task and returns every outcome in the order given (asyncio's
/// `gather(..., return_exceptions=True)`). A failing task does not affect the others.
///
/// If the awaiting task is cancelled, every gathered task is cancelled too and their outcomes
/// (mostly `Err(TaskError::Cancelled)`) are still collected; `gather_settled` then returns
/// `Err(Cancelled)` so the cancellation is not lost (asyncio raises `CancelledError` here).
///
/// ```
/// use ringloop_runtime::{gather_settled, spawn};
///
/// ringloop_runtime::Runtime::new().unwrap().block_on(async {
///     let ok = spawn(async { 1 });
///     let bad = spawn(async { panic!("boom") });
///     let results = gather_settled([ok, bad]).await.unwrap();
///     assert_eq!(*results[0].as_ref().unwrap(), 1);
///     assert!(results[1].as_ref().unwrap_err().is_panic());
/// });
/// ```
pub fn gather_settled<H: AsTask>(
    tasks: impl IntoIterator<Item = H>,
) -> GatherSettled<H::Output, H> {
    let members = Members::new(tasks);
    let n = members.tasks.len();
    GatherSettled {
        members,
        results: (0..n).map(|_| None).collect(),
        cancelled: None,
    }
}

/// The future of [`gather_settled`].
#[must_use = "futures do nothing unless awaited"]
pub struct GatherSettled<T, H = Task<T>> {
    members: Members<H>,
    results: Vec<Option<Result<T, TaskError>>>,
    cancelled: Option<Cancelled>,
}

impl<T, H> Unpin for GatherSettled<T, H> {}

impl<T, H: AsTask<Output = T>> Future for GatherSettled<T, H> {
    type Output = Result<Vec<Result<T, TaskError>>, Cancelled>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let was_armed = this.members.is_armed();
        loop {
            match this.members.poll_done(cx) {
                Poll::Ready(Some(i)) => {
                    let mut task = this.members.take(i).expect("done task is present");
                    this.results[i] = task.task_mut().try_result();
                }
                Poll::Ready(None) => {
                    if let Some(c) = this.cancelled.take() {
                        return Poll::Ready(Err(c));
                    }
                    let results = std::mem::take(&mut this.results);
                    return Poll::Ready(Ok(results
                        .into_iter()
                        .map(|r| r.expect("every task finished"))
                        .collect()));
                }
                Poll::Pending => {
                    if let Some(c) = take_outer_cancel(was_armed, this.cancelled.is_some()) {
                        this.members.cancel_all(c.message_arc());
                        this.cancelled = Some(c);
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// The error of [`try_gather`]: a task returned `Err`, or ended without a value.
pub enum GatherError<E> {
    /// A task returned `Err(e)`.
    Failed(E),
    /// A task was cancelled or panicked.
    Task(TaskError),
}

impl<E: PartialEq> PartialEq for GatherError<E> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (GatherError::Failed(a), GatherError::Failed(b)) => a == b,
            (GatherError::Task(a), GatherError::Task(b)) => a == b,
            _ => false,
        }
    }
}

impl<E: Eq> Eq for GatherError<E> {}

impl<E: fmt::Debug> fmt::Debug for GatherError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GatherError::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
            GatherError::Task(e) => f.debug_tuple("Task").field(e).finish(),
        }
    }
}

impl<E: fmt::Display> fmt::Display for GatherError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GatherError::Failed(e) => e.fmt(f),
            GatherError::Task(e) => e.fmt(f),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for GatherError<E> {}

/// [`gather`] for tasks that return `Result`: the first `Err` (or panic, or cancellation)
/// cancels the rest and is returned; otherwise every `Ok` value, in the order given.
///
/// If the awaiting task is cancelled, every task is cancelled and `try_gather` returns
/// `Err(GatherError::Task(TaskError::Cancelled))` with that cancellation, even if the tasks
/// catch theirs and finish with `Ok` anyway (see [`gather`]).
///
/// ```
/// use ringloop_runtime::{try_gather, spawn, sleep, GatherError};
/// use std::time::Duration;
///
/// ringloop_runtime::Runtime::new().unwrap().block_on(async {
///     let mut slow = spawn(async { sleep(Duration::from_secs(60)).await.map_err(|_| "cancelled") });
///     let mut bad = spawn(async { Err::<(), _>("bad input") });
///     // Borrowed, so both handles can be looked at afterwards.
///     match try_gather([&mut slow, &mut bad]).await {
///         Err(GatherError::Failed(e)) => assert_eq!(e, "bad input"),
///         _ => unreachable!(),
///     }
///     assert!(bad.is_done());
///     assert_eq!(slow.as_ref().cancelling(), 1, "the slow task was cancelled");
/// });
/// ```
pub fn try_gather<T, E, H: AsTask<Output = Result<T, E>>>(
    tasks: impl IntoIterator<Item = H>,
) -> TryGather<T, E, H> {
    TryGather {
        inner: gather(tasks),
    }
}

/// The future of [`try_gather`].
#[must_use = "futures do nothing unless awaited"]
pub struct TryGather<T, E, H = Task<Result<T, E>>> {
    inner: Gather<Result<T, E>, H>,
}

impl<T, E, H: AsTask<Output = Result<T, E>>> Future for TryGather<T, E, H> {
    type Output = Result<Vec<T>, GatherError<E>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut self.inner;
        let was_armed = this.members.is_armed();
        loop {
            match this.members.poll_done(cx) {
                Poll::Ready(Some(i)) => {
                    let mut task = this.members.take(i).expect("done task is present");
                    match task
                        .task_mut()
                        .try_result()
                        .expect("done task has a result")
                    {
                        Ok(Ok(v)) => this.results[i] = Some(Ok(v)),
                        Ok(Err(e)) => {
                            this.members.cancel_all(None);
                            return Poll::Ready(Err(match this.cancelled.take() {
                                Some(c) => GatherError::Task(TaskError::Cancelled(c)),
                                None => GatherError::Failed(e),
                            }));
                        }
                        Err(e) => {
                            this.members.cancel_all(None);
                            return Poll::Ready(Err(GatherError::Task(
                                match this.cancelled.take() {
                                    Some(c) => TaskError::Cancelled(c),
                                    None => e,
                                },
                            )));
                        }
                    }
                }
                Poll::Ready(None) => {
                    if let Some(c) = this.cancelled.take() {
                        return Poll::Ready(Err(GatherError::Task(TaskError::Cancelled(c))));
                    }
                    let results = std::mem::take(&mut this.results);
                    return Poll::Ready(Ok(results
                        .into_iter()
                        .map(|r| match r {
                            Some(Ok(v)) => v,
                            _ => unreachable!("every task finished with Ok"),
                        })
                        .collect()));
                }
                Poll::Pending => {
                    if let Some(c) = take_outer_cancel(was_armed, this.cancelled.is_some()) {
                        this.members.cancel_all(c.message_arc());
                        this.cancelled = Some(c);
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<T, E, H> Unpin for TryGather<T, E, H> {}
