//! The thread-local context: which loop is entered on this thread, and which task it is polling
//! right now.
//!
//! An entered loop lends the layers below it what each needs of it ([`Lent`]), and each layer
//! reaches it through its own accessor only: `task/` its scheduling side
//! ([`try_with_scheduler`]), `time/` and callback handles its timers ([`with_timers`]),
//! `driver/` its driver, to capture when a resource is created ([`current_driver`]). None of
//! them names the runtime's `Core`; the runtime layer gets its own type back through
//! [`try_with_owner`], which checks the type it asks for.
//!
//! Raw pointers rather than `Rc`s because they are read on every spawn, wake and cancellation
//! check; [`Entered`] and [`Teardown`] guarantee they never outlive what they point to.

use std::any::TypeId;
use std::cell::Cell;
use std::marker::PhantomData;
use std::ptr::{self, NonNull};

use crate::driver::DriverHandle;
use crate::task::cell::Header;
use crate::task::{Schedule, TaskPtr};
use crate::time::Timers;

/// What an entered loop lends the layers below it, borrowed for `'a` (see [`Lent::new`]).
#[derive(Clone, Copy)]
pub(crate) struct Lent<'a> {
    ptrs: Ptrs,
    _borrows: PhantomData<&'a ()>,
}

/// [`Lent`] without its lifetime, as the thread-local keeps it. Valid while the guard that set
/// it lives.
#[derive(Clone, Copy)]
struct Ptrs {
    /// The loop as the layer that entered it knows it, and that type's id (checked by
    /// [`try_with_owner`]).
    owner: NonNull<()>,
    owner_type: TypeId,
    scheduler: NonNull<dyn Schedule>,
    timers: NonNull<Timers>,
    driver: NonNull<DriverHandle>,
}

impl<'a> Lent<'a> {
    /// Lends `owner` (the loop itself, for its own layer) and its parts. Every borrow must
    /// outlive the guard it is entered with; the guards below carry `'a` to say so.
    pub(crate) fn new<O: 'static>(
        owner: &'a O,
        scheduler: &'a (dyn Schedule + 'static),
        timers: &'a Timers,
        driver: &'a DriverHandle,
    ) -> Self {
        Lent {
            ptrs: Ptrs {
                owner: NonNull::from(owner).cast(),
                owner_type: TypeId::of::<O>(),
                scheduler: NonNull::from(scheduler),
                timers: NonNull::from(timers),
                driver: NonNull::from(driver),
            },
            _borrows: PhantomData,
        }
    }
}

thread_local! {
    /// What the loop entered on this thread (by `block_on`/`run_forever`) lends, or `None`.
    static LOOP: Cell<Option<Ptrs>> = const { Cell::new(None) };
    /// The task being polled on this thread, or null between polls.
    static CURRENT: Cell<*const TaskPtr> = const { Cell::new(ptr::null()) };
    /// Its header, or null between polls: reached by the runtime futures that record their
    /// leaf on every `Pending` without the `TaskDyn` vtable. A thread-local of its own, one word
    /// wide like `CURRENT`, so that each read stays a single load.
    static CURRENT_HEADER: Cell<*const Header> = const { Cell::new(ptr::null()) };
    /// Task polls begun on this thread: [`poll_id`] of the one running.
    static POLLS: Cell<u64> = const { Cell::new(0) };
}

/// The message every free function gives when it is called outside a running runtime.
pub(crate) const NO_RUNTIME: &str = "this must be called from the context of a running ringloop \
     runtime (inside Runtime::block_on or run_forever, or a task or callback they run)";

/// Guard returned by [`enter`]: while it lives, the accessors below see the lent loop.
pub(crate) struct Entered<'a> {
    previous: Option<Ptrs>,
    _borrows: PhantomData<&'a ()>,
}

/// Makes `lent` this thread's running loop until the guard drops.
///
/// Refuses (returns `None`) when a loop is already running on this thread: a nested
/// `block_on` would starve the outer loop, so it is refused exactly as asyncio refuses
/// `run_until_complete` while the loop is running.
pub(crate) fn enter(lent: Lent<'_>) -> Option<Entered<'_>> {
    LOOP.with(|c| {
        if c.get().is_some() {
            return None;
        }
        let previous = c.replace(Some(lent.ptrs));
        Some(Entered {
            previous,
            _borrows: PhantomData,
        })
    })
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        LOOP.with(|c| c.set(self.previous));
    }
}

/// The task being polled: its pointer (what [`with_current`] lends), and its header
/// ([`with_current_header`]).
#[derive(Clone, Copy)]
struct Current {
    task: *const TaskPtr,
    header: *const Header,
}

impl Current {
    const NONE: Current = Current {
        task: ptr::null(),
        header: ptr::null(),
    };

    #[inline]
    fn replace(new: Current) -> Current {
        Current {
            task: CURRENT.with(|c| c.replace(new.task)),
            header: CURRENT_HEADER.with(|c| c.replace(new.header)),
        }
    }
}

/// Guard returned by [`enter_teardown`]: restores the previous loop and task on drop.
pub(crate) struct Teardown<'a> {
    previous: Option<Ptrs>,
    task: Current,
    _borrows: PhantomData<&'a ()>,
}

/// Makes `lent` this thread's running loop, and no task the current one, until the guard
/// drops, even if another loop is running (a runtime dropped inside another's task): the
/// destructors of its tasks must reach their own loop, never the running one.
pub(crate) fn enter_teardown(lent: Lent<'_>) -> Teardown<'_> {
    Teardown {
        previous: LOOP.with(|c| c.replace(Some(lent.ptrs))),
        task: Current::replace(Current::NONE),
        _borrows: PhantomData,
    }
}

impl Drop for Teardown<'_> {
    fn drop(&mut self) {
        LOOP.with(|c| c.set(self.previous));
        Current::replace(self.task);
    }
}

// Why the accessors below may turn the lent pointers into references: `LOOP` holds them only
// while the `Entered` or `Teardown` guard that put them there is alive, and the guard was made
// from a `Lent<'a>` whose borrows outlive it (`'a`); the guard puts the previous value back when
// it drops, also on unwind. The references handed to `f` do not escape `f`, and `f` runs
// further down the stack than the guard (guards are never leaked), so the pointees outlive it.

#[inline]
fn lent() -> Option<Ptrs> {
    LOOP.with(Cell::get)
}

/// Whether a loop is running on this thread.
#[inline]
pub(crate) fn is_entered() -> bool {
    lent().is_some()
}

/// Panics with [`NO_RUNTIME`] unless a loop is running on this thread.
#[inline]
#[track_caller]
pub(crate) fn expect_entered() {
    if !is_entered() {
        panic!("{}", NO_RUNTIME);
    }
}

/// Runs `f` with the running loop as the layer that entered it knows it, if that layer's type
/// is `O`; `None` outside a loop (or if the loop was lent as another type).
#[inline]
pub(crate) fn try_with_owner<O: 'static, R>(f: impl FnOnce(&O) -> R) -> Option<R> {
    let p = lent().filter(|p| p.owner_type == TypeId::of::<O>())?;
    // SAFETY: see above the accessors; `owner` came from a `&O` (`Lent::new` recorded `O`'s
    // type id with it, checked just now).
    Some(f(unsafe { p.owner.cast::<O>().as_ref() }))
}

/// Runs `f` with the running loop's scheduling side, or returns `None` outside a loop.
#[inline]
pub(crate) fn try_with_scheduler<R>(f: impl FnOnce(&dyn Schedule) -> R) -> Option<R> {
    let p = lent()?;
    // SAFETY: see above the accessors.
    Some(f(unsafe { p.scheduler.as_ref() }))
}

/// Runs `f` with the running loop's scheduling side; panics with a clear message outside one.
#[inline]
#[track_caller]
pub(crate) fn with_scheduler<R>(f: impl FnOnce(&dyn Schedule) -> R) -> R {
    match try_with_scheduler(f) {
        Some(r) => r,
        None => panic!("{}", NO_RUNTIME),
    }
}

/// Runs `f` with the running loop's timers, or returns `None` outside a loop.
#[inline]
pub(crate) fn try_with_timers<R>(f: impl FnOnce(&Timers) -> R) -> Option<R> {
    let p = lent()?;
    // SAFETY: see above the accessors.
    Some(f(unsafe { p.timers.as_ref() }))
}

/// Runs `f` with the running loop's timers; panics with a clear message outside one.
#[inline]
#[track_caller]
pub(crate) fn with_timers<R>(f: impl FnOnce(&Timers) -> R) -> R {
    match try_with_timers(f) {
        Some(r) => r,
        None => panic!("{}", NO_RUNTIME),
    }
}

/// Runs `f` with the running loop's driver, or returns `None` outside a loop.
#[inline]
pub(crate) fn try_with_driver<R>(f: impl FnOnce(&DriverHandle) -> R) -> Option<R> {
    let p = lent()?;
    // SAFETY: see above the accessors.
    Some(f(unsafe { p.driver.as_ref() }))
}

/// The running loop's driver, for a resource to capture when it is created; `None` outside a
/// loop.
#[inline]
pub(crate) fn current_driver() -> Option<DriverHandle> {
    try_with_driver(DriverHandle::clone)
}

/// Guard for the task being polled; restores the previous one on drop (also on unwind).
pub(crate) struct Polling {
    previous: Current,
}

/// Marks `task` as the task being polled on this thread until the guard drops.
#[inline]
pub(crate) fn set_current(task: &TaskPtr) -> Polling {
    let current = Current {
        task: task as *const TaskPtr,
        header: crate::task::cell::header_of(task),
    };
    POLLS.with(|n| n.set(n.get() + 1));
    let previous = Current::replace(current);
    Polling { previous }
}

/// See [`crate::task::poll_id`]: `None` between task polls, else a number no other task
/// poll on this thread had or will have (counted at the start and at the end of every poll,
/// so a poll that resumes after another nested in it has a new one, never seen before).
#[inline]
pub(crate) fn poll_id() -> Option<u64> {
    if CURRENT.with(Cell::get).is_null() {
        None
    } else {
        Some(POLLS.with(Cell::get))
    }
}

impl Drop for Polling {
    #[inline]
    fn drop(&mut self) {
        // A poll that resumes after this one (this one was nested in it) gets a number of its
        // own again: no two polls ever share one.
        POLLS.with(|n| n.set(n.get() + 1));
        Current::replace(self.previous);
    }
}

/// Runs `f` with the task being polled on this thread, if any.
#[inline]
pub(crate) fn with_current<R>(f: impl FnOnce(Option<&TaskPtr>) -> R) -> R {
    let p = CURRENT.with(Cell::get);
    if p.is_null() {
        f(None)
    } else {
        // SAFETY: CURRENT points at the `TaskPtr` that the loop's run of the task holds on its
        // stack for the whole poll, and the `Polling` guard clears it before that frame ends.
        f(Some(unsafe { &*p }))
    }
}

/// Runs `f` with the header of the task being polled on this thread, if any.
#[inline]
pub(crate) fn with_current_header<R>(f: impl FnOnce(Option<&Header>) -> R) -> R {
    let p = CURRENT_HEADER.with(Cell::get);
    if p.is_null() {
        f(None)
    } else {
        // SAFETY: the header lives in the task cell that the `TaskPtr` of `with_current` keeps
        // alive for the whole poll (see there); the `Polling` guard clears it with the task.
        f(Some(unsafe { &*p }))
    }
}
