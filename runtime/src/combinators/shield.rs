//! `shield`: await work without letting a cancellation reach it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::task::awaiting::{self, Leaf};
use crate::task::cancel::take_cancel_if;
use crate::task::{Task, TaskError};

/// Runs `future` as its own task and awaits it without forwarding cancellation (asyncio's
/// `shield`).
///
/// If the awaiting task is cancelled, the await resolves at once to
/// `Err(TaskError::Cancelled)` while the shielded work runs on to its end, detached. A
/// cancellation of the shielded task itself (from elsewhere) still reaches it. To shield a task
/// you already have, use [`Task::shield`]; to await the task again after the shielded await was
/// cancelled, await the `Shielded` by reference and take the handle back with
/// [`Shielded::into_task`].
///
/// # Panics
/// Outside a running ringloop runtime (it spawns).
///
/// ```
/// use ringloop_runtime::{shield, spawn, yield_now, Promise};
/// use std::{cell::Cell, rc::Rc};
///
/// ringloop_runtime::Runtime::new().unwrap().block_on(async {
///     let commit_done = Promise::new();
///     let saved = Rc::new(Cell::new(false));
///     let (s, done) = (saved.clone(), commit_done.clone());
///     let outer = spawn(async move {
///         shield(async move {
///             done.wait().await.unwrap(); // the commit takes a while
///             s.set(true);
///         })
///         .await
///     });
///     yield_now().await.unwrap();
///     outer.cancel();
///     // `outer` returned the cancellation it received, so it ended cancelled:
///     assert!(outer.await.unwrap_err().is_cancelled());
///     commit_done.set_result(()).unwrap();
///     yield_now().await.unwrap();
///     yield_now().await.unwrap();
///     assert!(saved.get(), "the shielded commit completed anyway");
/// });
/// ```
#[track_caller]
pub fn shield<F>(future: F) -> Shielded<F::Output>
where
    F: Future + 'static,
{
    shield_task(crate::spawn(future))
}

pub(crate) fn shield_task<T>(task: Task<T>) -> Shielded<T> {
    Shielded {
        task,
        waiting: false,
    }
}

/// The future of [`shield`] and [`Task::shield`].
#[must_use = "futures do nothing unless awaited"]
pub struct Shielded<T> {
    task: Task<T>,
    /// An await returned `Pending` and has not resolved since.
    waiting: bool,
}

impl<T> Unpin for Shielded<T> {}

impl<T> Shielded<T> {
    /// The shielded task.
    pub fn task(&self) -> &Task<T> {
        &self.task
    }

    /// Gives the shielded task's handle back, e.g. to await it after the shielded await was
    /// cancelled, as asyncio allows `await task` after `await shield(task)` raised. Await the
    /// `Shielded` by reference (`(&mut shielded).await`; it is `Unpin`) to keep it.
    ///
    /// ```
    /// use ringloop_runtime::{spawn, sleep, yield_now, TaskError};
    /// use std::time::Duration;
    ///
    /// ringloop_runtime::Runtime::new().unwrap().block_on(async {
    ///     let outer = spawn(async {
    ///         let mut shielded = spawn(async { sleep(Duration::from_millis(2)).await.unwrap(); 7 }).shield();
    ///         match (&mut shielded).await {
    ///             Err(TaskError::Cancelled(_)) => {
    ///                 // Cancelled while waiting; the work ran on. Wait for it after all.
    ///                 shielded.into_task().await.unwrap()
    ///             }
    ///             other => other.unwrap(),
    ///         }
    ///     });
    ///     yield_now().await.unwrap();
    ///     outer.cancel();
    ///     assert_eq!(outer.await.unwrap(), 7);
    /// });
    /// ```
    pub fn into_task(self) -> Task<T> {
        self.task
    }
}

impl<T> Future for Shielded<T> {
    type Output = Result<T, TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(r) = self.task.try_result() {
            self.waiting = false;
            return Poll::Ready(r);
        }
        if let Some(c) = take_cancel_if(self.waiting) {
            self.waiting = false;
            return Poll::Ready(Err(TaskError::Cancelled(c)));
        }
        let h = self.task.as_ref().ptr().header();
        h.set_join_waker(cx.waker());
        awaiting::note(Leaf::task(h.id), !self.waiting);
        self.waiting = true;
        Poll::Pending
    }
}
