//! What a task needs of the loop it runs on, and nothing more: [`Schedule`] on the loop's own
//! thread, [`Remote`] from any other.
//!
//! `task/` knows the loop only through these two traits; the runtime's `Core` implements
//! `Schedule`, and the injector that `Handle`s share implements `Remote`. The loop hands itself
//! to [`TaskDyn::run`](super::cell::TaskDyn::run) as a `&dyn Schedule`, and a waker finds the
//! loop running on its thread through `context::try_with_scheduler`.
//!
//! Why trait objects rather than a type parameter: a task is already type-erased
//! (`Arc<dyn TaskDyn>`, one vtable per future type), so a generic scheduler would have to be a
//! parameter of every task type, every waker vtable and `TaskPtr` itself, for a saving of one
//! indirect call to a few-instruction method per poll. Each path pays at most one such call:
//! a poll counts itself once (`count_poll`), a local wake queues itself once (`schedule`,
//! which also tells a task of another loop on this thread), and the rest (`task_finished`,
//! `report_panic`, `call_soon`) happen once per task, not per poll, and `wait_tick` once per
//! poll that starts a new wait.

use std::any::Any;

use super::cell::{Outcome, TaskPtr};

/// The local side of the loop a task runs on (its own thread only).
pub(crate) trait Schedule {
    /// Queues `task`, woken on this thread with its `SCHEDULED` bit just set by the caller, on
    /// this loop's ready queue if this loop is the task's home (its header's [`Remote`] is this
    /// loop's). Otherwise hands the task back: it belongs to another loop on this thread (one
    /// inside another's task, say) and goes to that loop's injector.
    fn schedule(&self, task: TaskPtr) -> Result<(), TaskPtr>;

    /// The task ended with `outcome`, its future already dropped: the loop's bookkeeping
    /// (registry, counters, the finished-task record). Runs before the task's join waker and
    /// done callbacks.
    fn task_finished(&self, task: &TaskPtr, outcome: Outcome);

    /// Hands a panic caught in `task` (or in no task) to the loop's exception handler; never
    /// unwinds.
    fn report_panic(&self, task: Option<&TaskPtr>, message: &str, payload: &(dyn Any + Send));

    /// Queues `f` to run on a later pass of the loop, after the work ready now (asyncio's
    /// `call_soon`, without a handle to cancel it).
    fn call_soon(&self, f: Box<dyn FnOnce()>);

    /// Counts one poll of a task's future (the loop's statistics).
    fn count_poll(&self);

    /// The loop's clock as a millisecond tick (`awaiting::tick_of`), for a wait that starts
    /// now. Read at most once per loop iteration: every wait that starts in one iteration gets
    /// the same tick.
    fn wait_tick(&self) -> u32;
}

/// The cross-thread side of a task's home loop: where a waker on another thread sends the
/// task. Held by every task's header (the waker's only way to its loop), so it is `Send + Sync`.
pub(crate) trait Remote: Send + Sync {
    /// Queues `task` (its `SCHEDULED` bit just set by the caller) on the loop's injector and
    /// unparks the loop if it waits; drops it if the loop is gone. Called from any thread; the
    /// task's future is still only polled and dropped on its own thread.
    fn inject(&self, task: TaskPtr);
}
