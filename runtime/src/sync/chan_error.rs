//! The receive errors shared by [`oneshot`](super::oneshot) and [`mpsc`](super::mpsc).

use std::error::Error;
use std::fmt;
use std::io;

use crate::task::Cancelled;

/// Why a receive produced no value.
#[derive(Debug, PartialEq)]
pub enum RecvError {
    /// The channel is closed and empty: every sender is gone (or, for
    /// [`mpsc`](super::mpsc), the receiver closed it) and no value is left to receive.
    Closed,
    /// The task awaiting the receive was cancelled (asyncio's `CancelledError`).
    Cancelled(Cancelled),
}

impl RecvError {
    /// Whether the channel is closed.
    pub fn is_closed(&self) -> bool {
        matches!(self, RecvError::Closed)
    }

    /// Whether the awaiting task was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, RecvError::Cancelled(_))
    }
}

impl From<Cancelled> for RecvError {
    fn from(c: Cancelled) -> Self {
        RecvError::Cancelled(c)
    }
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Closed => f.write_str("channel closed: every sender is gone"),
            RecvError::Cancelled(c) => c.fmt(f),
        }
    }
}

impl Error for RecvError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            RecvError::Cancelled(c) => Some(c),
            RecvError::Closed => None,
        }
    }
}

impl From<RecvError> for io::Error {
    /// `Closed` becomes [`BrokenPipe`](io::ErrorKind::BrokenPipe); `Cancelled` converts as
    /// [`Cancelled`] does (so it still counts as escaping when a task returns it).
    fn from(e: RecvError) -> io::Error {
        match e {
            RecvError::Closed => io::Error::new(io::ErrorKind::BrokenPipe, "channel closed"),
            RecvError::Cancelled(c) => c.into(),
        }
    }
}

/// Why a `try_recv` produced no value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TryRecvError {
    /// Nothing to receive right now; senders remain.
    Empty,
    /// The channel is closed and empty; nothing will ever arrive.
    Closed,
}

impl fmt::Display for TryRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryRecvError::Empty => f.write_str("channel empty"),
            TryRecvError::Closed => f.write_str("channel closed: every sender is gone"),
        }
    }
}

impl Error for TryRecvError {}
