//! Timers: [`sleep`], [`timeout`] / [`wait_for`], on the loop's timer heap.
//!
//! No kernel timer is armed per sleep: deadlines live in one userspace heap, and the loop
//! passes the earliest one to the driver as its wait timeout.

pub mod deadline;
pub(crate) mod heap;

use std::cell::{Cell, RefCell};
use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::context;
use crate::task::awaiting::{self, names, Leaf};
use crate::task::cancel::{self, take_cancel_if, CancelScope};
use crate::task::Cancelled;
use heap::{TimerAction, TimerHeap, TimerKey};

/// One loop's timers: its heap behind a `RefCell` that is borrowed only inside these methods,
/// never while a waker or a callback runs (foreign code may arm or cancel timers of its own).
/// The loop owns one; [`TimerEntry`] and [`cancel_timer`] reach the running loop's.
pub(crate) struct Timers {
    heap: RefCell<TimerHeap>,
    /// A wake timer whose owner went away while it was armed, kept armed for the next
    /// [`add_reusing`](Self::add_reusing) on this loop (see [`retire`](Self::retire)).
    spare: Cell<Option<TimerKey>>,
}

impl Timers {
    pub(crate) fn new() -> Self {
        Timers {
            heap: RefCell::new(TimerHeap::new()),
            spare: Cell::new(None),
        }
    }

    /// Disarms the wake timer `key` as [`cancel`](Self::cancel) would, but keeps its entry for
    /// the next [`add_reusing`](Self::add_reusing): moved to a later deadline, an entry costs
    /// no heap node and no allocation, where a cancel and a new timer cost a slab entry, a
    /// heap node, and the stale node's share of a rebuild. For hyper's header timer, which a
    /// connection drops when a request head is in and arms anew, in the same task poll, when
    /// it starts reading the next. The loop cancels an entry nobody reused once the task poll
    /// that retired it ends ([`drop_spare`](Self::drop_spare)), and before it expires timers
    /// or parks: a retired timer never wakes anyone.
    #[inline]
    pub(crate) fn retire(&self, key: TimerKey) {
        if let Some(old) = self.spare.replace(Some(key)) {
            self.cancel(old);
        }
    }

    /// Arms a timer that wakes `waker` at `deadline`, reusing the retired entry if there is
    /// one (see [`retire`](Self::retire)).
    #[inline]
    pub(crate) fn add_reusing(&self, deadline: Instant, waker: &Waker) -> TimerKey {
        if let Some(spare) = self.spare.take() {
            let adopted = self.heap.borrow_mut().adopt(spare, deadline, waker);
            if let Some((key, old)) = adopted {
                drop(old); // outside the borrow, as in `cancel`
                return key;
            }
        }
        self.add(deadline, TimerAction::Wake(waker.clone()))
    }

    /// Cancels the retired entry, if any: after each task poll, and before the loop parks or
    /// expires timers, so that it never fires.
    #[inline]
    pub(crate) fn drop_spare(&self) {
        if let Some(key) = self.spare.take() {
            self.cancel(key);
        }
    }

    /// Arms a timer that runs `action` at `deadline`.
    #[inline]
    pub(crate) fn add(&self, deadline: Instant, action: TimerAction) -> TimerKey {
        self.heap.borrow_mut().insert(deadline, action)
    }

    /// Refreshes an armed timer's waker; false if it is no longer armed (fired, cancelled, or
    /// another runtime's).
    #[inline]
    pub(crate) fn update_waker(&self, key: TimerKey, waker: &Waker) -> bool {
        let (armed, old) = self.heap.borrow_mut().update_waker(key, waker);
        drop(old); // outside the borrow, as in `cancel`
        armed
    }

    /// Moves an armed timer to `deadline`; its new key, or `None` if it is not armed here.
    #[cfg_attr(not(feature = "hyper"), allow(dead_code))] // used by `compat::hyper`
    pub(crate) fn reschedule(&self, key: TimerKey, deadline: Instant) -> Option<TimerKey> {
        self.heap.borrow_mut().reschedule(key, deadline)
    }

    /// Disarms a timer, if it is still armed here.
    #[inline]
    pub(crate) fn cancel(&self, key: TimerKey) {
        let action = self.heap.borrow_mut().cancel(key);
        drop(action); // outside the borrow: dropping a waker or callback runs foreign code
    }

    /// How many timers are armed (a retired entry kept for reuse counts until the task poll
    /// that retired it ends; see [`retire`](Self::retire)).
    pub(crate) fn len(&self) -> usize {
        self.heap.borrow().len()
    }

    /// How many timers have an owner waiting on them: [`len`](Self::len) less a retired
    /// entry kept for reuse (its owner is gone). For the stats.
    pub(crate) fn pending(&self) -> usize {
        let spare = self
            .spare
            .get()
            .is_some_and(|k| self.heap.borrow().is_armed(k));
        self.len() - usize::from(spare)
    }

    /// How long the loop may park at most, if a timer is armed: see
    /// [`TimerHeap::park_deadline`].
    pub(crate) fn park_deadline(&self, now: Instant) -> Option<Instant> {
        self.heap.borrow_mut().park_deadline(now)
    }

    /// Moves every timer due at `now` into `out`, in deadline order (ties in arming order).
    pub(crate) fn expire(&self, now: Instant, out: &mut Vec<TimerAction>) {
        self.heap.borrow_mut().expire(now, out);
    }

    /// Disarms everything (runtime shutdown); the caller drops the actions.
    pub(crate) fn drain(&self) -> Vec<TimerAction> {
        self.heap.borrow_mut().drain()
    }
}

/// A registration on the timer heap that wakes the polling task at `deadline`.
///
/// It holds only a [`TimerKey`] (plain data, so the entry is `Send` and `Sync`), and reaches
/// the heap through the thread's *running* loop. The key names its heap, so an entry polled,
/// re-aimed or dropped where another loop runs, or none, never touches that loop's timers: it
/// does nothing there, and its timer stays armed on its own heap until it fires (then it wakes
/// a waker that nobody waits on any more, which is harmless).
#[derive(Debug, Default)]
pub(crate) struct TimerEntry {
    key: Option<TimerKey>,
}

impl TimerEntry {
    /// Arms (or re-aims) the timer so `cx`'s task is woken at `deadline`.
    #[inline]
    pub(crate) fn arm(&mut self, deadline: Instant, cx: &Context<'_>) {
        if !self.refresh(cx) {
            self.key = Some(context::with_timers(|timers| {
                timers.add(deadline, TimerAction::Wake(cx.waker().clone()))
            }));
        }
    }

    /// If the timer still waits on the running loop's heap (neither fired nor cancelled),
    /// points it at `cx`'s task and returns true.
    #[inline]
    pub(crate) fn refresh(&mut self, cx: &Context<'_>) -> bool {
        self.key.is_some_and(|key| {
            context::try_with_timers(|timers| timers.update_waker(key, cx.waker())).unwrap_or(false)
        })
    }

    /// If the timer still waits on the running loop's heap, moves it to `deadline` in place
    /// (same slot, same waker) and returns true.
    #[cfg_attr(not(feature = "hyper"), allow(dead_code))] // used by `compat::hyper`
    pub(crate) fn reaim(&mut self, deadline: Instant) -> bool {
        let Some(key) = self.key else { return false };
        match context::try_with_timers(|timers| timers.reschedule(key, deadline)).flatten() {
            Some(moved) => {
                self.key = Some(moved);
                true
            }
            None => false,
        }
    }

    /// Disarms the timer, if armed.
    #[inline]
    pub(crate) fn disarm(&mut self) {
        if let Some(key) = self.key.take() {
            cancel_timer(key);
        }
    }
}

impl Drop for TimerEntry {
    fn drop(&mut self) {
        self.disarm();
    }
}

/// Disarms `key` on the running loop's heap; nothing outside a runtime, or if the key is
/// another heap's (see [`TimerKey`]).
#[inline]
pub(crate) fn cancel_timer(key: TimerKey) {
    context::try_with_timers(|timers| timers.cancel(key));
}

/// Waits until `duration` has passed (asyncio's `sleep`); a cancellation point.
///
/// Resolves to `Err(Cancelled)` as soon as the task awaiting it is cancelled, however long the
/// sleep; never before its deadline otherwise. `sleep(Duration::ZERO)` still yields once, like
/// asyncio's `sleep(0)`. Any other sleep goes through the loop's timers even if its deadline
/// has passed by its first poll, so sleeps and `call_at` callbacks fire in deadline order,
/// then in the order they were scheduled, however late the loop runs (asyncio's `call_later`).
///
/// ```
/// # ringloop_runtime::Runtime::new().unwrap().block_on(async {
/// use std::time::Duration;
/// ringloop_runtime::sleep(Duration::from_millis(2)).await.unwrap();
/// # });
/// ```
///
/// # Panics
/// When polled outside a running ringloop runtime.
pub fn sleep(duration: Duration) -> Sleep {
    Sleep {
        wait: DeadlineWait::new(Instant::now() + duration),
        yield_only: duration.is_zero(),
    }
}

/// Waits until `deadline` on the loop's clock; see [`sleep`].
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep {
        wait: DeadlineWait::new(deadline),
        yield_only: false,
    }
}

/// The future of [`sleep`] and [`sleep_until`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct Sleep {
    wait: DeadlineWait,
    /// `sleep(Duration::ZERO)`: a plain yield, which never touches the timer heap.
    yield_only: bool,
}

impl Sleep {
    /// When the sleep ends.
    pub fn deadline(&self) -> Instant {
        self.wait.deadline()
    }
}

impl Future for Sleep {
    type Output = Result<(), Cancelled>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let waiting = match self.wait.check(cx) {
            Check::Fired => return Poll::Ready(Ok(())),
            Check::Waiting => true,
            Check::Unarmed => false,
        };
        if let Some(c) = take_cancel_if(waiting) {
            self.wait.disarm();
            return Poll::Ready(Err(c));
        }
        if waiting {
            return Poll::Pending;
        }
        if self.yield_only {
            // asyncio's sleep(0): yield once instead of touching the heap. This path never
            // reaches the heap, so check for a runtime here: outside one, a
            // `sleep(Duration::ZERO)` must panic like every other sleep (see `# Panics`), not
            // quietly complete under a foreign executor. Marked armed: the next poll finds no
            // timer and a deadline already past, so it ends.
            context::expect_entered();
            self.wait.armed = true;
            cx.waker().wake_by_ref();
            awaiting::note(Leaf::other(&names::YIELD, None), true);
            return Poll::Pending;
        }
        self.wait.arm(cx);
        Poll::Pending
    }
}

/// What [`DeadlineWait::check`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// The timer fired (or, armed on a heap out of reach, its deadline has passed): done.
    Fired,
    /// The timer waits on the running loop's heap, and now wakes `cx`'s task.
    Waiting,
    /// Not armed on any heap since the deadline was last set, or armed on one out of reach
    /// with its deadline still ahead: [`arm`](DeadlineWait::arm) it.
    Unarmed,
}

/// A wait for a deadline on the loop's timer heap that knows nothing of cancellation: the
/// timer part of [`Sleep`], and the whole of `compat::hyper`'s sleep, which must leave a cancel
/// request for a cancellation point that can report it.
///
/// The wait ends when its timer leaves the heap, not when a poll finds the clock past the
/// deadline (see [`sleep`]): one heap lookup per poll tells, and refreshes the waker if not.
/// Plain data, `Send` and `Sync` (see [`TimerEntry`] for what that means across loops).
//
// `repr(C)`, the key first: a hyper sleep's drop reads its key alone ([`retire`](Self::retire)),
// and sixteen bytes at the start of the sleep's box never straddle two cache lines.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct DeadlineWait {
    timer: TimerEntry,
    deadline: Instant,
    /// Armed on some heap since `deadline` was last set.
    armed: bool,
}

const _: () = assert!(std::mem::size_of::<TimerEntry>() == 16);

impl DeadlineWait {
    pub(crate) fn new(deadline: Instant) -> Self {
        DeadlineWait {
            deadline,
            timer: TimerEntry::default(),
            armed: false,
        }
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether the wait is over, still waiting (woken with `cx` now), or needs arming.
    #[inline]
    pub(crate) fn check(&mut self, cx: &Context<'_>) -> Check {
        if !self.armed {
            return Check::Unarmed;
        }
        if self.timer.refresh(cx) {
            let deadline = self.deadline;
            awaiting::note_with(|| Leaf::sleep(deadline), false);
            return Check::Waiting;
        }
        // Not armed on this loop's heap: it fired there, or it waits on another loop's (the
        // future moved). Fired means the deadline passed, since the heap expires timers by
        // the same clock; a deadline still ahead means another heap, so arm it here.
        if Instant::now() >= self.deadline {
            self.timer.disarm();
            Check::Fired
        } else {
            Check::Unarmed
        }
    }

    /// Arms the timer on the running loop's heap, to wake `cx`'s task at the deadline (even a
    /// deadline already past goes through the heap, so waits end in deadline order).
    ///
    /// # Panics
    /// Outside a running ringloop runtime.
    #[track_caller]
    pub(crate) fn arm(&mut self, cx: &Context<'_>) {
        self.armed = true;
        self.timer.arm(self.deadline, cx);
        let deadline = self.deadline;
        awaiting::note_with(|| Leaf::sleep(deadline), true);
    }

    /// [`check`](Self::check), arming the timer if it is not armed: `Ready` once it fired.
    ///
    /// # Panics
    /// When it has to arm outside a running ringloop runtime.
    #[cfg_attr(not(feature = "hyper"), allow(dead_code))] // used by `compat::hyper`
    #[track_caller]
    pub(crate) fn poll_wait(&mut self, cx: &Context<'_>) -> Poll<()> {
        match self.check(cx) {
            Check::Fired => Poll::Ready(()),
            Check::Waiting => Poll::Pending,
            Check::Unarmed => {
                self.armed = true;
                let deadline = self.deadline;
                self.timer.key = Some(context::with_timers(|timers| {
                    timers.add_reusing(deadline, cx.waker())
                }));
                awaiting::note_with(|| Leaf::sleep(deadline), true);
                Poll::Pending
            }
        }
    }

    /// Disarms the timer for good (the wait is being dropped), leaving its entry on the
    /// running loop's heap for the next wait to reuse ([`Timers::retire`]).
    #[cfg_attr(not(feature = "hyper"), allow(dead_code))] // used by `compat::hyper`
    #[inline]
    pub(crate) fn retire(&mut self) {
        if let Some(key) = self.timer.key.take() {
            context::try_with_timers(|timers| timers.retire(key));
        }
    }

    /// Moves the deadline. An armed timer on the running loop's heap is re-aimed in place,
    /// keeping its waker; otherwise the timer is disarmed (where it can be reached) and the
    /// next poll arms it anew. A wait that had ended waits again.
    #[cfg_attr(not(feature = "hyper"), allow(dead_code))] // used by `compat::hyper`
    pub(crate) fn reset(&mut self, deadline: Instant) {
        self.deadline = deadline;
        if self.armed && self.timer.reaim(deadline) {
            return;
        }
        self.timer.disarm();
        self.armed = false;
    }

    /// Disarms the timer, if it is armed on the running loop's heap.
    #[inline]
    pub(crate) fn disarm(&mut self) {
        self.timer.disarm();
    }
}

/// The error of [`timeout`] and [`wait_for`]: the deadline passed first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimedOut;

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("operation timed out")
    }
}

impl Error for TimedOut {}

impl From<TimedOut> for std::io::Error {
    fn from(_: TimedOut) -> Self {
        std::io::Error::from(std::io::ErrorKind::TimedOut)
    }
}

/// One error for "await this, for at most so long": what [`Flatten::flat`] turns the nested
/// results of `timeout(d, task)` into.
///
/// Compares by kind as [`TaskError`](crate::TaskError) does (panics by their message).
#[derive(Debug, PartialEq, Eq)]
pub enum WaitError {
    /// The deadline passed first ([`TimedOut`]).
    TimedOut,
    /// The task, or the task awaiting it, was cancelled.
    Cancelled(Cancelled),
    /// The task panicked: its [`TaskError::Panicked`](crate::TaskError::Panicked), whose
    /// payload [`try_into_panic`](crate::TaskError::try_into_panic) gives back.
    Panicked(crate::TaskError),
}

impl WaitError {
    /// Whether the deadline passed first.
    pub fn is_timed_out(&self) -> bool {
        matches!(self, WaitError::TimedOut)
    }

    /// Whether this is a cancellation.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, WaitError::Cancelled(_))
    }
}

impl fmt::Display for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitError::TimedOut => TimedOut.fmt(f),
            WaitError::Cancelled(c) => c.fmt(f),
            WaitError::Panicked(e) => e.fmt(f),
        }
    }
}

impl Error for WaitError {}

impl From<TimedOut> for WaitError {
    fn from(_: TimedOut) -> Self {
        WaitError::TimedOut
    }
}

impl From<Cancelled> for WaitError {
    fn from(c: Cancelled) -> Self {
        WaitError::Cancelled(c)
    }
}

impl From<crate::TaskError> for WaitError {
    /// A cancellation becomes [`WaitError::Cancelled`] (still escaping if let out), a panic
    /// [`WaitError::Panicked`].
    fn from(e: crate::TaskError) -> Self {
        match e {
            crate::TaskError::Cancelled(c) => WaitError::Cancelled(c),
            panicked => WaitError::Panicked(panicked),
        }
    }
}

/// Flattens the nested results of awaiting a task whose body returns `Result<T, Cancelled>`
/// (one that uses `?` on its awaits), with or without a timeout around the await, into
/// `Result<T, WaitError>`.
///
/// * `timeout(d, task).await` is `Result<Result<Result<T, Cancelled>, TaskError>, TimedOut>`;
/// * `task.await` is `Result<Result<T, Cancelled>, TaskError>`;
/// * `timeout(d, sleep(..)).await` is `Result<Result<(), Cancelled>, TimedOut>`;
///
/// `.flat()` turns each into `Result<T, WaitError>`. For a task returning a plain `T`, `?`
/// does the same through the `From` impls of [`WaitError`].
///
/// ```
/// use ringloop_runtime::{sleep, spawn, timeout, Cancelled, Flatten, WaitError};
/// use std::time::Duration;
///
/// ringloop_runtime::Runtime::new().unwrap().block_on(async {
///     let quick = spawn(async { sleep(Duration::from_millis(1)).await?; Ok::<_, Cancelled>(7) });
///     assert_eq!(timeout(Duration::from_secs(60), quick).await.flat(), Ok(7));
///
///     let slow = spawn(async { sleep(Duration::from_secs(60)).await?; Ok::<_, Cancelled>(7) });
///     assert_eq!(timeout(Duration::from_millis(1), slow).await.flat(), Err(WaitError::TimedOut));
/// });
/// ```
pub trait Flatten {
    /// The value inside all the layers.
    type Value;
    /// The value, or the one error that stopped it.
    fn flat(self) -> Result<Self::Value, WaitError>;
}

impl<T> Flatten for Result<T, Cancelled> {
    type Value = T;
    fn flat(self) -> Result<T, WaitError> {
        self.map_err(WaitError::from)
    }
}

impl<R: Flatten> Flatten for Result<R, crate::TaskError> {
    type Value = R::Value;
    fn flat(self) -> Result<R::Value, WaitError> {
        self.map_err(WaitError::from)?.flat()
    }
}

impl<R: Flatten> Flatten for Result<R, TimedOut> {
    type Value = R::Value;
    fn flat(self) -> Result<R::Value, WaitError> {
        self.map_err(WaitError::from)?.flat()
    }
}

/// Runs `future` for at most `delay` (asyncio's `timeout` context manager and `wait_for`).
///
/// When the deadline passes, the inner work is *cancelled the asyncio way*, not just dropped: a
/// cancel request is delivered to the awaiting task, scoped to this call, so the runtime future
/// the inner work is suspended on resolves to `Err(Cancelled)` and the inner code may clean up
/// (a [`Task`](crate::Task) it awaits is cancelled too). `timeout` waits for the inner future to
/// finish that unwinding, then returns `Err(TimedOut)` if the inner future let the cancellation
/// escape (returned the `Cancelled`, possibly wrapped), or `Ok(value)` if it caught it and
/// returned a value anyway: as with asyncio's `timeout()`, a value is never thrown away. If the
/// inner future cannot observe the request (a foreign future), it is dropped at once.
///
/// If the task is also cancelled from outside meanwhile, that cancellation is not swallowed: it
/// is delivered again at the task's next await (asyncio re-raises it).
///
/// ```
/// use ringloop_runtime::{sleep, timeout, TimedOut};
/// use std::time::Duration;
///
/// ringloop_runtime::Runtime::new().unwrap().block_on(async {
///     let r = timeout(Duration::from_millis(1), sleep(Duration::from_secs(60))).await;
///     assert_eq!(r, Err(TimedOut));
/// });
/// ```
pub fn timeout<F: Future>(delay: Duration, future: F) -> Timeout<F> {
    timeout_at(Instant::now() + delay, future)
}

/// Like [`timeout`] with an absolute deadline.
pub fn timeout_at<F: Future>(deadline: Instant, future: F) -> Timeout<F> {
    Timeout {
        future,
        deadline,
        timer: TimerEntry::default(),
        phase: Phase::Running,
    }
}

/// asyncio's `wait_for(fut, delay)`: the same as [`timeout`]`(delay, fut)`.
pub fn wait_for<F: Future>(future: F, delay: Duration) -> Timeout<F> {
    timeout(delay, future)
}

#[derive(Debug)]
enum Phase {
    Running,
    /// The deadline passed and the scoped cancel was delivered; the inner future is unwinding.
    /// `scope` holds what the task looked like before our own request.
    Unwinding {
        scope: CancelScope,
    },
    Done,
}

/// The future of [`timeout`], [`timeout_at`] and [`wait_for`].
///
/// Dropping it while the inner future is still unwinding from the deadline's cancel ends the
/// scope all the same: the task's [`cancelling`](crate::TaskRef::cancelling) count is back to
/// what it was, and the scoped request is never delivered to a later, unrelated await.
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct Timeout<F> {
    future: F,
    deadline: Instant,
    timer: TimerEntry,
    phase: Phase,
}

impl<F> Timeout<F> {
    fn project(self: Pin<&mut Self>) -> (Pin<&mut F>, &mut Instant, &mut TimerEntry, &mut Phase) {
        // SAFETY: `future` is structurally pinned (never moved out; dropped in place with
        // `Self`); the other fields are not pinned, and `Timeout`'s `Drop` touches only `phase`.
        unsafe {
            let this = self.get_unchecked_mut();
            (
                Pin::new_unchecked(&mut this.future),
                &mut this.deadline,
                &mut this.timer,
                &mut this.phase,
            )
        }
    }
}

impl<F> Drop for Timeout<F> {
    fn drop(&mut self) {
        // Dropped while the inner future unwinds from our scoped cancel: undo the scope once
        // (the phase is left `Done`), as `settle_after_timeout` would have.
        if let Phase::Unwinding { scope } = std::mem::replace(&mut self.phase, Phase::Done) {
            scope.end();
        }
    }
}

/// The inner future finished after the deadline passed. As asyncio's `timeout()` decides: if it
/// let the cancellation escape (its output holds a delivered `Cancelled`), that is the timeout,
/// and the output is dropped; if it caught the cancellation and returned a value anyway, the value
/// is kept, so an item taken from a queue in that race is never lost.
fn settle_after_timeout<T>(output: T, scope: &CancelScope) -> Result<T, TimedOut> {
    let result = if scope.escaped() {
        drop(output);
        Err(TimedOut)
    } else {
        Ok(output)
    };
    scope.end();
    result
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, TimedOut>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (mut future, deadline, timer, phase) = self.project();
        match phase {
            Phase::Done => panic!("Timeout polled after completion"),
            Phase::Unwinding { scope } => {
                if let Poll::Ready(v) = future.as_mut().poll(cx) {
                    let scope = *scope;
                    *phase = Phase::Done;
                    return Poll::Ready(settle_after_timeout(v, &scope));
                }
                return Poll::Pending;
            }
            Phase::Running => {}
        }
        if let Poll::Ready(v) = future.as_mut().poll(cx) {
            timer.disarm();
            *phase = Phase::Done;
            return Poll::Ready(Ok(v));
        }
        if Instant::now() < *deadline {
            timer.arm(*deadline, cx);
            return Poll::Pending;
        }
        timer.disarm();
        #[cfg(feature = "tracing")]
        tracing::event!(
            target: "ringloop::time",
            tracing::Level::DEBUG,
            "timeout expired: cancelling the future inside it"
        );
        // Deliver a cancel scoped to this call and let the inner future react to it now.
        let Some(scope) = CancelScope::request() else {
            *phase = Phase::Done;
            return Poll::Ready(Err(TimedOut));
        };
        let polled = future.as_mut().poll(cx);
        scope.restore_delivered();
        if let Poll::Ready(v) = polled {
            *phase = Phase::Done;
            return Poll::Ready(settle_after_timeout(v, &scope));
        }
        if cancel::unobserved() {
            // The inner future could not see the request (a foreign future): it is dropped
            // with `self`.
            *phase = Phase::Done;
            scope.end();
            return Poll::Ready(Err(TimedOut));
        }
        *phase = Phase::Unwinding { scope };
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_wakers::counting_waker;

    /// A retired wake timer is taken over by the next `add_reusing` (moved later: no new heap
    /// node, and it wakes the new waker, not the old), and one nobody takes is cancelled by
    /// `drop_spare`, never firing.
    #[test]
    fn a_retired_timer_is_taken_over_or_cancelled_never_fired() {
        let timers = Timers::new();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let (old_count, old_waker) = counting_waker();
        let (new_count, new_waker) = counting_waker();
        let first = timers.add(at(1), TimerAction::Wake(old_waker));
        timers.retire(first);
        assert_eq!(
            timers.pending(),
            0,
            "a retired timer has nobody waiting on it"
        );
        let second = timers.add_reusing(at(5), &new_waker);
        assert_eq!(timers.len(), 1, "taken over, not armed anew");
        assert_eq!(
            timers.heap.borrow().nodes(),
            1,
            "moved later without a node"
        );
        assert_eq!(timers.pending(), 1);
        timers.drop_spare(); // nothing retired now: no effect
        let mut out = Vec::new();
        timers.expire(at(4), &mut out);
        assert!(out.is_empty(), "nothing at the old deadline");
        timers.expire(at(5), &mut out);
        assert_eq!(out.len(), 1);
        for action in out.drain(..) {
            if let TimerAction::Wake(w) = action {
                w.wake();
            }
        }
        assert_eq!((old_count.wakes(), new_count.wakes()), (0, 1));
        // Retired and not taken over: gone with `drop_spare`, never fired.
        let third = timers.add_reusing(at(7), &new_waker);
        assert_ne!(third, second);
        timers.retire(third);
        timers.drop_spare();
        assert_eq!(timers.len(), 0);
        timers.expire(at(100), &mut out);
        assert!(out.is_empty());
        // A second retire replaces the first, which is cancelled.
        let a = timers.add(at(9), TimerAction::Wake(new_waker.clone()));
        let b = timers.add(at(9), TimerAction::Wake(new_waker.clone()));
        timers.retire(a);
        timers.retire(b);
        assert_eq!(timers.len(), 1, "the first retired timer was cancelled");
        timers.drop_spare();
        assert_eq!(timers.len(), 0);
    }
}
