//! Watching many tasks at once: which of them finished, in completion order, in O(1) per
//! completion (each task gets a waker of its own that names it).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use crate::task::awaiting::{self, Leaf};
use crate::task::Task;

#[derive(Default)]
struct Notify {
    done: VecDeque<usize>,
    waker: Option<Waker>,
}

struct MemberWaker {
    index: usize,
    notify: Arc<Mutex<Notify>>,
}

impl Wake for MemberWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let waker = {
            let mut n = self.notify.lock().unwrap_or_else(|e| e.into_inner());
            n.done.push_back(self.index);
            n.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A task handle that [`gather`](crate::gather), [`gather_settled`](crate::gather_settled) and
/// [`try_gather`](crate::try_gather) accept: a [`Task`] they take over, or a `&mut Task` that the
/// caller keeps, to look at the task after the gather is done (which one failed, which were
/// cancelled), as asyncio's task objects allow.
///
/// A borrowed task's result moves into the gather's output, as an owned one's does: afterwards
/// the handle still answers [`is_done`](Task::is_done), [`is_cancelled`](Task::is_cancelled),
/// [`state`](Task::state) and [`try_result`](Task::try_result) (which then gives the error of a
/// task that failed, and `None` for one whose value was taken), but awaiting it panics, as it
/// does for any task whose result was taken. *This differs from asyncio*, where a task can be
/// awaited again for the same result: a ringloop task's output is moved out, not shared.
///
/// Sealed: implemented for `Task<T>` and `&mut Task<T>` only.
pub trait AsTask: sealed::Sealed {
    /// The task's output.
    type Output;
    #[doc(hidden)]
    fn task(&self) -> &Task<Self::Output>;
    #[doc(hidden)]
    fn task_mut(&mut self) -> &mut Task<Self::Output>;
}

impl<T> sealed::Sealed for Task<T> {}
impl<T> sealed::Sealed for &mut Task<T> {}

impl<T> AsTask for Task<T> {
    type Output = T;
    fn task(&self) -> &Task<T> {
        self
    }
    fn task_mut(&mut self) -> &mut Task<T> {
        self
    }
}

impl<T> AsTask for &mut Task<T> {
    type Output = T;
    fn task(&self) -> &Task<T> {
        self
    }
    fn task_mut(&mut self) -> &mut Task<T> {
        self
    }
}

/// A set of tasks watched together. Tasks are taken out by index once done.
pub(crate) struct Members<H> {
    pub(crate) tasks: Vec<Option<H>>,
    notify: Arc<Mutex<Notify>>,
    armed: bool,
    /// Tasks not yet taken out through [`take`](Self::take), for task dumps.
    left: usize,
}

impl<H: AsTask> Members<H> {
    pub(crate) fn new(tasks: impl IntoIterator<Item = H>) -> Self {
        let tasks: Vec<Option<H>> = tasks.into_iter().map(Some).collect();
        Members {
            left: tasks.len(),
            tasks,
            notify: Arc::default(),
            armed: false,
        }
    }

    /// Whether [`poll_done`](Self::poll_done) has run: the combinator is waiting on its tasks.
    pub(crate) fn is_armed(&self) -> bool {
        self.armed
    }

    /// Tasks not yet taken out through [`take`](Self::take).
    pub(crate) fn left(&self) -> usize {
        self.left
    }

    /// Tasks not yet taken out.
    pub(crate) fn remaining(&self) -> usize {
        self.tasks.iter().filter(|t| t.is_some()).count()
    }

    /// The index of a task that is done and not yet taken, in completion order.
    pub(crate) fn poll_done(&mut self, cx: &mut Context<'_>) -> Poll<Option<usize>> {
        let first = !self.armed;
        if !self.armed {
            self.armed = true;
            let mut already = Vec::new();
            for (i, t) in self.tasks.iter().enumerate() {
                let Some(t) = t else { continue };
                let t = t.task();
                if t.is_done() {
                    already.push(i);
                } else {
                    let w = Waker::from(Arc::new(MemberWaker {
                        index: i,
                        notify: self.notify.clone(),
                    }));
                    t.as_ref().ptr().header().set_join_waker(&w);
                }
            }
            self.notify
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .done
                .extend(already);
        }
        let mut n = self.notify.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(i) = n.done.pop_front() {
            if self.tasks[i].as_ref().is_some_and(|t| t.task().is_done()) {
                return Poll::Ready(Some(i));
            }
        }
        if self.tasks.iter().all(Option::is_none) {
            return Poll::Ready(None);
        }
        match &n.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => n.waker = Some(cx.waker().clone()),
        }
        drop(n);
        awaiting::note(Leaf::tasks(self.left), first);
        Poll::Pending
    }

    /// Takes a task out.
    pub(crate) fn take(&mut self, i: usize) -> Option<H> {
        let t = self.tasks[i].take();
        self.left -= usize::from(t.is_some());
        t
    }

    /// Cancels every task not yet done (with the given message), returning how many.
    pub(crate) fn cancel_all(&self, message: Option<Arc<str>>) -> usize {
        self.tasks
            .iter()
            .flatten()
            .filter(|t| t.task().as_ref().cancel_inner(message.clone()))
            .count()
    }
}
