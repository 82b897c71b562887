//! Callbacks scheduled with `call_soon`, `call_later` and `call_at`, and the handle that cancels
//! them (asyncio's `Handle` / `TimerHandle`).

use std::cell::Cell;
use std::fmt;
use std::rc::Rc;

use crate::time::heap::TimerKey;

/// A scheduled callback as the ready queue and the timer heap see it.
pub(crate) trait CallbackDyn {
    /// Runs the callback unless it was cancelled; runs at most once.
    fn run(&self);
    fn cancel(&self) -> bool;
    fn is_cancelled(&self) -> bool;
    fn set_timer(&self, key: TimerKey);
    fn take_timer(&self) -> Option<TimerKey>;
}

pub(crate) type CallbackPtr = Rc<dyn CallbackDyn>;

/// One allocation per callback: the closure, its state and (for timed ones) its timer key.
struct CallbackCell<F> {
    state: Cell<CallbackState>,
    f: Cell<Option<F>>,
    timer: Cell<Option<TimerKey>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum CallbackState {
    Scheduled,
    Ran,
    Cancelled,
}

impl<F: FnOnce() + 'static> CallbackDyn for CallbackCell<F> {
    fn run(&self) {
        if self.state.get() != CallbackState::Scheduled {
            return;
        }
        self.state.set(CallbackState::Ran);
        self.timer.set(None);
        if let Some(f) = self.f.take() {
            f();
        }
    }

    fn cancel(&self) -> bool {
        if self.state.get() != CallbackState::Scheduled {
            return false;
        }
        self.state.set(CallbackState::Cancelled);
        // Drop the closure now: it may hold resources the caller expects to be released.
        drop(self.f.take());
        true
    }

    fn is_cancelled(&self) -> bool {
        self.state.get() == CallbackState::Cancelled
    }

    fn set_timer(&self, key: TimerKey) {
        self.timer.set(Some(key));
    }

    fn take_timer(&self) -> Option<TimerKey> {
        self.timer.take()
    }
}

pub(crate) fn new_callback<F: FnOnce() + 'static>(f: F) -> CallbackPtr {
    Rc::new(CallbackCell {
        state: Cell::new(CallbackState::Scheduled),
        f: Cell::new(Some(f)),
        timer: Cell::new(None),
    })
}

/// Cancels a callback scheduled with [`call_soon`](crate::call_soon),
/// [`call_later`](crate::call_later) or [`call_at`](crate::call_at).
///
/// Dropping the handle does *not* cancel the callback (as in asyncio, where the handle is often
/// ignored).
///
/// ```
/// use ringloop_runtime::{Runtime, call_later};
/// use std::{cell::Cell, rc::Rc, time::Duration};
///
/// let rt = Runtime::new().unwrap();
/// let fired = Rc::new(Cell::new(false));
/// rt.block_on({
///     let fired = fired.clone();
///     async move {
///         let handle = call_later(Duration::from_millis(1), move || fired.set(true));
///         assert!(handle.cancel());
///         ringloop_runtime::sleep(Duration::from_millis(5)).await.unwrap();
///     }
/// });
/// assert!(!fired.get());
/// ```
pub struct CallbackHandle {
    cell: CallbackPtr,
}

impl CallbackHandle {
    pub(crate) fn new(cell: CallbackPtr) -> Self {
        CallbackHandle { cell }
    }

    /// Cancels the callback; returns false if it already ran or was already cancelled.
    ///
    /// A timed callback's timer is removed from the loop at once, so `timers_pending` in
    /// [`RuntimeStats`](crate::RuntimeStats) drops immediately.
    pub fn cancel(&self) -> bool {
        if !self.cell.cancel() {
            return false;
        }
        if let Some(key) = self.cell.take_timer() {
            crate::time::cancel_timer(key);
        }
        true
    }

    /// Whether [`cancel`](Self::cancel) was called before the callback ran.
    pub fn is_cancelled(&self) -> bool {
        self.cell.is_cancelled()
    }
}

impl fmt::Debug for CallbackHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallbackHandle")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}
