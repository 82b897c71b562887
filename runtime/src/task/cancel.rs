//! The `Cancelled` error and how the runtime tells whether a task let it escape.

use std::error::Error;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::context;

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

/// Takes the current task's pending cancel request, if there is one: for a runtime future that
/// starts waiting now (it has not registered anywhere yet).
pub(crate) fn take_cancel() -> Option<Cancelled> {
    context::with_current(|t| t.and_then(|t| t.header().take_cancel()))
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
