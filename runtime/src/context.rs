//! The thread-local context: which runtime core is running on this thread, and which task it is
//! polling right now.
//!
//! Both are raw pointers rather than `Rc`s because they are read on every spawn, wake and
//! cancellation check; [`Entered`] guarantees they never outlive what they point to.

use std::cell::Cell;
use std::ptr;

use crate::runtime::Core;
use crate::task::TaskPtr;

thread_local! {
    /// The core of the runtime entered on this thread (by `block_on`/`run_forever`), or null.
    static CORE: Cell<*const Core> = const { Cell::new(ptr::null()) };
    /// The task being polled on this thread, or null between polls.
    static CURRENT: Cell<*const TaskPtr> = const { Cell::new(ptr::null()) };
}

/// The message every free function gives when it is called outside a running runtime.
pub(crate) const NO_RUNTIME: &str = "this must be called from the context of a running ringloop \
     runtime (inside Runtime::block_on or run_forever, or a task or callback they run)";

/// Guard returned by [`enter`]: while it lives, [`with_core`] sees `core`.
pub(crate) struct Entered {
    previous: *const Core,
}

/// Makes `core` this thread's current runtime until the guard drops.
///
/// Refuses (returns `None`) when a runtime is already running on this thread: a nested
/// `block_on` would starve the outer loop, so it is refused exactly as asyncio refuses
/// `run_until_complete` while the loop is running.
pub(crate) fn enter(core: &Core) -> Option<Entered> {
    CORE.with(|c| {
        if !c.get().is_null() {
            return None;
        }
        let previous = c.replace(core as *const Core);
        Some(Entered { previous })
    })
}

impl Drop for Entered {
    fn drop(&mut self) {
        CORE.with(|c| c.set(self.previous));
    }
}

/// Guard returned by [`enter_teardown`]: restores the previous core and task on drop.
pub(crate) struct Teardown {
    core: *const Core,
    task: *const TaskPtr,
}

/// Makes `core` this thread's current runtime, and no task the current one, until the guard
/// drops, even if another runtime is running (a runtime dropped inside another's task): the
/// destructors of its tasks must reach their own runtime, never the running one.
pub(crate) fn enter_teardown(core: &Core) -> Teardown {
    Teardown {
        core: CORE.with(|c| c.replace(core as *const Core)),
        task: CURRENT.with(|c| c.replace(ptr::null())),
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        CORE.with(|c| c.set(self.core));
        CURRENT.with(|c| c.set(self.task));
    }
}

/// Runs `f` with this thread's running core, or returns `None` outside one.
#[inline]
pub(crate) fn try_with_core<R>(f: impl FnOnce(&Core) -> R) -> Option<R> {
    let p = CORE.with(|c| c.get());
    if p.is_null() {
        None
    } else {
        // CORE is non-null only while an `Entered` guard is alive, and the guard is created from
        // a `&Core` that outlives it (block_on/run_forever hold the runtime borrowed for the
        // guard's whole life); the guard resets the pointer when it drops, also on unwind.
        // SAFETY: so `p` points at a live `Core` for the duration of `f`.
        Some(f(unsafe { &*p }))
    }
}

/// Runs `f` with this thread's running core; panics with a clear message outside one.
#[inline]
#[track_caller]
pub(crate) fn with_core<R>(f: impl FnOnce(&Core) -> R) -> R {
    match try_with_core(f) {
        Some(r) => r,
        None => panic!("{}", NO_RUNTIME),
    }
}

/// Guard for the task being polled; restores the previous one on drop (also on unwind).
pub(crate) struct Polling {
    previous: *const TaskPtr,
}

/// Marks `task` as the task being polled on this thread until the guard drops.
#[inline]
pub(crate) fn set_current(task: &TaskPtr) -> Polling {
    let previous = CURRENT.with(|c| c.replace(task as *const TaskPtr));
    Polling { previous }
}

impl Drop for Polling {
    #[inline]
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.previous));
    }
}

/// Runs `f` with the task being polled on this thread, if any.
#[inline]
pub(crate) fn with_current<R>(f: impl FnOnce(Option<&TaskPtr>) -> R) -> R {
    let p = CURRENT.with(|c| c.get());
    if p.is_null() {
        f(None)
    } else {
        // SAFETY: CURRENT points at the `TaskPtr` that `Core::run_task` holds on its stack for
        // the whole poll, and the `Polling` guard clears it before that frame ends.
        f(Some(unsafe { &*p }))
    }
}
