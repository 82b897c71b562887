//! Multishot ops: one SQE, many completions, owned by a connection rather than a future.
//!
//! A [`Multishot`] lives in the object that owns the stream of completions (a pooled receiver,
//! an accept stream), not in a future: cancelling a task that waits for the next completion
//! drops nothing that the kernel produced. When the owner is dropped, what is queued and what
//! still arrives is disposed of by [`MultishotKind`] (buffers recycled, sockets closed) until the
//! kernel's last completion frees the slot.
//!
//! io_uring only; on epoll the owners emulate the same API with ordinary ops.

use std::io;
use std::task::{Context, Poll};

use io_uring::squeue;

use super::OpKey;
use crate::context;

/// What a multishot op's completions carry, so the driver can release them when nobody reads
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MultishotKind {
    /// A receive with buffer selection: each completion names a pool buffer.
    Recv,
    /// An accept: each successful completion is a new descriptor.
    Accept,
}

/// A connection's multishot op (io_uring).
#[derive(Debug)]
pub struct Multishot {
    kind: MultishotKind,
    /// `u32`: one of these lives in every connection, so its size counts at 10 000 of them.
    cap: u32,
    key: Option<OpKey>,
}

impl Multishot {
    /// Not armed yet. `cap` bounds the completions queued unread: at that many the driver
    /// cancels the op, so a peer that is not read from is back-pressured by the kernel (its
    /// data waits in the socket) instead of filling the buffer pool. Re-arm once read.
    pub fn new(kind: MultishotKind, cap: usize) -> Self {
        Multishot {
            kind,
            cap: u32::try_from(cap).unwrap_or(u32::MAX),
            key: None,
        }
    }

    /// The cap on unread completions given to [`new`](Self::new).
    pub fn cap(&self) -> usize {
        self.cap as usize
    }

    /// Whether the op is in the kernel (or its completions are still being read).
    pub fn is_armed(&self) -> bool {
        self.key.is_some()
    }

    /// Arms the op with `sqe` (the runtime sets its `user_data`).
    ///
    /// # Safety
    /// Every pointer in `sqe` must stay valid, and every descriptor it names open, until the op's
    /// last completion (one without `IORING_CQE_F_MORE`) has been read or the `Multishot` dropped
    /// (then the driver keeps nothing that points back).
    ///
    /// # Errors
    /// On the epoll backend, or if already armed.
    pub unsafe fn arm(&mut self, sqe: squeue::Entry) -> io::Result<()> {
        if self.key.is_some() {
            return Err(io::Error::other("multishot op already armed"));
        }
        let (kind, cap) = (self.kind, self.cap as usize);
        // SAFETY: forwarded from the caller.
        let key = context::with_core(|core| unsafe {
            core.driver_mut().multishot_submit(sqe, kind, cap)
        })?;
        self.key = Some(key);
        Ok(())
    }

    /// The next completion `(result, flags)`, or `None` once the op has ended (its last
    /// completion was read; arm it again to go on).
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<(i32, u32)>> {
        let Some(key) = self.key else {
            return Poll::Ready(None);
        };
        match context::with_core(|core| core.driver_mut().multishot_next(key, cx.waker())) {
            Ok(Some(c)) => Poll::Ready(Some(c)),
            Ok(None) => {
                self.key = None;
                Poll::Ready(None)
            }
            Err(()) => Poll::Pending,
        }
    }

    /// Completions received and not yet read.
    pub fn queued(&self) -> usize {
        match self.key {
            Some(key) => context::with_core(|core| core.driver_mut().multishot_queued(key)),
            None => 0,
        }
    }

    /// Asks the kernel to stop the op; the completions already produced, and a last one, still
    /// arrive and are read as usual.
    pub fn cancel(&self) {
        if let Some(key) = self.key {
            context::with_core(|core| core.driver_mut().uring_cancel(key));
        }
    }
}

impl Drop for Multishot {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let done = context::try_with_core(|core| core.driver_mut().multishot_orphan(key));
            debug_assert!(done.is_some(), "a Multishot outlived its runtime");
        }
    }
}
