//! The `Cancelled` error, how the runtime tells whether a task let it escape, and the helpers
//! that runtime futures use to take, scope and check the current task's cancel requests.

use std::error::Error;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::context;
use crate::task::cell::Header;
use crate::task::TaskId;

/// The error a runtime await resolves to when the task awaiting it is cancelled: ringloop's
/// `asyncio.CancelledError`.
///
/// [`Task::cancel`](crate::Task::cancel) records a request and wakes the task; the runtime future
/// the task is suspended on (a sleep, a [`Task`](crate::Task), a
/// [`Promise`](crate::Promise), a lock, a queue get, ...) then resolves to `Err(Cancelled)`. What
/// the task does next is up to its code, exactly as with `except CancelledError:`:
///
/// * **let it escape** — return it, e.g. with `?`, possibly wrapped in another error type (it
///   converts into [`io::Error`] and into [`TaskError`](crate::TaskError)): the task ends
///   *cancelled* and its handle yields `Err(TaskError::Cancelled(..))`, as in asyncio;
/// * **clean up first** — await more things (even cancel and await its own children), then let
///   it escape;
/// * **suppress it** — drop it and carry on; the task ends with whatever it returns. Call
///   [`TaskRef::uncancel`](crate::TaskRef::uncancel) as asyncio 3.11 asks, so that enclosing
///   [`timeout`](crate::timeout)s and [`TaskGroup`](crate::TaskGroup)s know the request is gone.
///
/// # How "escaping" is detected (a difference from asyncio)
///
/// Rust has no exception that unwinds out of a coroutine, so the runtime counts the live
/// `Cancelled` values it delivered to each task. If any is still alive once the task's future
/// has returned, the task ended by letting the cancellation escape: usually it sits inside the
/// task's output. The count cannot tell *where* a value lives, so a `Cancelled` (or a clone)
/// that the task moved somewhere else and that is still alive when the task returns (sent over
/// a channel, stored in a shared `Rc<RefCell<_>>`, moved into another task) counts as escaping
/// too, and the task's own output is then dropped. To suppress a cancellation, drop the
/// `Cancelled` or keep only its text (`to_string()`, [`message`](Self::message)).
///
/// ```
/// use ringloop_runtime::{Runtime, spawn, sleep, Cancelled, TaskError};
/// use std::time::Duration;
///
/// Runtime::new().unwrap().block_on(async {
///     let task = spawn(async {
///         sleep(Duration::from_secs(3600)).await?; // cancelled here, at once
///         Ok::<_, Cancelled>("never")
///     });
///     sleep(Duration::from_millis(1)).await.unwrap();
///     task.cancel_with("shutting down");
///     match task.await {
///         Err(TaskError::Cancelled(c)) => assert_eq!(c.message(), Some("shutting down")),
///         other => panic!("{other:?}"),
///     }
/// });
/// ```
pub struct Cancelled {
    message: Option<Arc<str>>,
    escape: Option<Arc<AtomicUsize>>,
}

impl Cancelled {
    pub(crate) fn bound(message: Option<Arc<str>>, counter: Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Cancelled {
            message,
            escape: Some(counter),
        }
    }

    pub(crate) fn unbound(message: Option<Arc<str>>) -> Self {
        Cancelled {
            message,
            escape: None,
        }
    }

    /// The message given to [`cancel_with`](crate::Task::cancel_with), if any.
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }

    pub(crate) fn message_arc(&self) -> Option<Arc<str>> {
        self.message.clone()
    }
}

impl Clone for Cancelled {
    fn clone(&self) -> Self {
        if let Some(c) = &self.escape {
            c.fetch_add(1, Ordering::AcqRel);
        }
        Cancelled {
            message: self.message.clone(),
            escape: self.escape.clone(),
        }
    }
}

impl Drop for Cancelled {
    fn drop(&mut self) {
        if let Some(c) = &self.escape {
            c.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl fmt::Debug for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cancelled")
            .field("message", &self.message)
            .finish()
    }
}

impl fmt::Display for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Some(m) => write!(f, "task was cancelled: {m}"),
            None => f.write_str("task was cancelled"),
        }
    }
}

impl Error for Cancelled {}

/// Two cancellations are equal when their messages are.
impl PartialEq for Cancelled {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message
    }
}

impl Eq for Cancelled {}

impl From<Cancelled> for io::Error {
    /// An [`io::Error`] of kind [`Other`](io::ErrorKind::Other) that carries the `Cancelled`
    /// (so it still counts as escaping when a task returns it).
    fn from(c: Cancelled) -> io::Error {
        io::Error::other(c)
    }
}

/// Takes the current task's pending cancel request, if any: the building block for
/// cancellation-aware futures of your own. Call it when your future would return `Pending`
/// (after checking that its result is not ready, so nothing is lost) and resolve to the
/// returned [`Cancelled`](crate::Cancelled) if there is one. Returns `None` outside a task.
#[inline]
pub fn take_cancel_request() -> Option<Cancelled> {
    take_cancel()
}

/// Puts back a cancel request that a custom future took (with [`take_cancel_request`] or
/// [`take_cancel_request_waiting`](crate::take_cancel_request_waiting)) but could not act on:
/// its own result arrived before it could stop (the work ran on elsewhere), so it returns that
/// result, and the request must reach the task's next await instead of being lost. This is what
/// an io_uring op does when its completion wins the race with its `ASYNC_CANCEL`.
///
/// The request is marked pending again without counting a new one
/// ([`cancelling`](crate::TaskRef::cancelling) is unchanged). Dropping `taken` is part of the
/// hand-back. Does nothing outside a task, or once the task is done.
pub fn repost_cancel_request(taken: Cancelled) {
    drop(taken);
    context::with_current(|t| {
        if let Some(t) = t {
            t.header().repost_cancel()
        }
    });
}

/// Takes the current task's pending cancel request, if there is one: for a runtime future that
/// starts waiting now (it has not registered anywhere yet). Checked at every `Pending` of
/// every runtime future: the header's flag through its own thread-local, inline.
#[inline]
pub(crate) fn take_cancel() -> Option<Cancelled> {
    context::with_current_header(|h| h.and_then(Header::take_cancel))
}

/// Like [`take_cancel`], for a runtime future that was already waiting (registered with a
/// timer, a waiter list, a task) when polled: it also resolves to `Cancelled` when the request
/// was delivered to another future earlier in this task poll, so every concurrent branch of the
/// task sees it (see "Concurrent branches" in the [`task`](crate::task) module docs).
pub(crate) fn take_cancel_waiting() -> Option<Cancelled> {
    context::with_current(|t| t.and_then(|t| t.header().take_cancel_waiting()))
}

/// [`take_cancel_waiting`] when `waiting`, else [`take_cancel`].
pub(crate) fn take_cancel_if(waiting: bool) -> Option<Cancelled> {
    if waiting {
        take_cancel_waiting()
    } else {
        take_cancel()
    }
}

/// Whether a `Cancelled` delivered to the current task is alive right now (it is inside the
/// value just returned: the code that returned it let its cancellation escape).
pub(crate) fn escaping() -> bool {
    context::with_current(|t| t.is_some_and(|t| t.header().escaped()))
}

/// Whether the current task has a cancel request that nothing took in the poll just made: the
/// code polled is suspended on a future that cannot see it (a foreign future).
pub(crate) fn unobserved() -> bool {
    context::with_current(|t| t.is_some_and(|t| t.header().cancel_pending()))
}

/// A cancel request scoped to part of the current task: asyncio 3.11's device for `timeout`.
/// [`request`](Self::request) cancels the whole task and remembers what it looked like before;
/// the inner code unwinds; [`end`](Self::end) withdraws the request (`uncancel()`), re-posting
/// one if the task was also cancelled from outside meanwhile.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CancelScope {
    /// The task the request was made on (a scope ends only on that task).
    task: TaskId,
    /// `cancelling()` before our request: more left at the end means an outside cancel came in.
    requests_before: u32,
    /// Delivered `Cancelled` values alive before our request. Why not just `escaped()`: the task
    /// may already hold one from an earlier cancellation it caught (a cleanup path that keeps it
    /// to return later), and that one must not be taken for the inner code letting ours escape.
    live_before: usize,
    /// Whether a request had been delivered earlier in the poll our request was made in; put
    /// back once the inner future has seen our request, so that it does not reach the futures
    /// beside the scope (concurrent branches of the same task).
    delivered_before: bool,
    /// Whether a request from outside was already pending (undelivered) when ours was made: it
    /// is not ours to withdraw.
    pending_before: bool,
}

impl CancelScope {
    /// Requests a cancel of the current task, scoped to the caller; `None` outside a task.
    pub(crate) fn request() -> Option<CancelScope> {
        context::with_current(|t| {
            t.map(|t| {
                let h = t.header();
                let scope = CancelScope {
                    task: h.id,
                    requests_before: h.cancelling(),
                    live_before: h.live_cancels(),
                    delivered_before: h.delivered_this_poll(),
                    pending_before: h.cancel_pending(),
                };
                h.request_cancel(None);
                scope
            })
        })
    }

    /// Puts back the delivered-this-poll mark the task had before our request (see
    /// [`CancelScope::delivered_before`]); call it once the inner future was polled with it.
    pub(crate) fn restore_delivered(&self) {
        context::with_current(|t| {
            if let Some(t) = t.filter(|t| t.header().id == self.task) {
                t.header().set_delivered_this_poll(self.delivered_before);
            }
        });
    }

    /// Whether the inner code let a cancellation escape: the task holds more live delivered
    /// `Cancelled` values than before our request (they sit in the value it just returned).
    pub(crate) fn escaped(&self) -> bool {
        context::with_current(|t| t.is_some_and(|t| t.header().live_cancels() > self.live_before))
    }

    /// Withdraws the scoped request; re-posts a request if the task was also cancelled from
    /// outside, and otherwise drops our own if it was never delivered. Does nothing unless the
    /// scope's task is the current one (a scope is only ever ended on it).
    pub(crate) fn end(&self) {
        context::with_current(|t| {
            let Some(t) = t else { return };
            let h = t.header();
            if h.id != self.task {
                return;
            }
            let left = h.uncancel();
            if left > self.requests_before {
                h.repost_cancel();
            } else if !self.pending_before {
                h.withdraw_pending();
            }
        });
    }
}
