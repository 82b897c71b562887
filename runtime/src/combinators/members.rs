//! Watching many tasks at once: which of them finished, in completion order, in O(1) per
//! completion (each task gets a waker of its own that names it).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

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

/// A set of tasks watched together. Tasks are taken out by index once done.
pub(crate) struct Members<T> {
    pub(crate) tasks: Vec<Option<Task<T>>>,
    notify: Arc<Mutex<Notify>>,
    armed: bool,
}

impl<T> Members<T> {
    pub(crate) fn new(tasks: impl IntoIterator<Item = Task<T>>) -> Self {
        Members {
            tasks: tasks.into_iter().map(Some).collect(),
            notify: Arc::default(),
            armed: false,
        }
    }

    /// Whether [`poll_done`](Self::poll_done) has run: the combinator is waiting on its tasks.
    pub(crate) fn is_armed(&self) -> bool {
        self.armed
    }

    /// Tasks not yet taken out.
    pub(crate) fn remaining(&self) -> usize {
        self.tasks.iter().filter(|t| t.is_some()).count()
    }

    /// The index of a task that is done and not yet taken, in completion order.
    pub(crate) fn poll_done(&mut self, cx: &mut Context<'_>) -> Poll<Option<usize>> {
        if !self.armed {
            self.armed = true;
            let mut already = Vec::new();
            for (i, t) in self.tasks.iter().enumerate() {
                let Some(t) = t else { continue };
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
            if self.tasks[i].as_ref().is_some_and(|t| t.is_done()) {
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
        Poll::Pending
    }

    /// Takes a task out.
    pub(crate) fn take(&mut self, i: usize) -> Option<Task<T>> {
        self.tasks[i].take()
    }

    /// Cancels every task not yet done (with the given message), returning how many.
    pub(crate) fn cancel_all(&self, message: Option<Arc<str>>) -> usize {
        self.tasks
            .iter()
            .flatten()
            .filter(|t| t.as_ref().cancel_inner(message.clone()))
            .count()
    }
}
