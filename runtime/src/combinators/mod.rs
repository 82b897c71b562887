//! Combinators over tasks, each named after its asyncio counterpart: [`gather`],
//! [`gather_settled`], [`try_gather`], [`wait`], [`as_completed`], [`shield`], [`TaskGroup`]
//! and [`yield_now`]. Timeouts ([`timeout`](crate::timeout), [`wait_for`](crate::wait_for)) live
//! in [`time`](mod@crate::time).
//!
//! ```
//! use ringloop_runtime::{gather, spawn, sleep};
//! use std::time::Duration;
//!
//! ringloop_runtime::Runtime::new().unwrap().block_on(async {
//!     let a = spawn(async { sleep(Duration::from_millis(2)).await.unwrap(); "a" });
//!     let b = spawn(async { "b" });
//!     assert_eq!(gather([a, b]).await.unwrap(), ["a", "b"]);
//! });
//! ```

mod gather;
mod group;
mod members;
mod shield;
mod wait;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

pub use gather::{
    gather, gather_settled, try_gather, Gather, GatherError, GatherSettled, TryGather,
};
pub use group::{GroupError, GroupFailure, TaskGroup};
pub use members::AsTask;
pub(crate) use shield::shield_task;
pub use shield::{shield, Shielded};
pub use wait::{as_completed, wait, AsCompleted, Next, ReturnWhen, Wait};

use crate::task::awaiting::{self, names, Leaf};
use crate::task::cancel::take_cancel;
use crate::task::Cancelled;

/// Lets every other ready task and callback run once before this task continues (asyncio's
/// `await sleep(0)`): the task goes to the back of the ready queue and resumes on the next loop
/// iteration.
///
/// A cancellation point: resolves to `Err(Cancelled)` if the task is cancelled before it
/// yields.
///
/// ```
/// # ringloop_runtime::Runtime::new().unwrap().block_on(async {
/// ringloop_runtime::yield_now().await.unwrap();
/// # });
/// ```
pub fn yield_now() -> YieldNow {
    YieldNow { yielded: false }
}

/// The future of [`yield_now`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct YieldNow {
    yielded: bool,
}

impl Future for YieldNow {
    type Output = Result<(), Cancelled>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.yielded {
            return Poll::Ready(Ok(()));
        }
        if let Some(c) = take_cancel() {
            return Poll::Ready(Err(c));
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        awaiting::note(Leaf::other(&names::YIELD, None), true);
        Poll::Pending
    }
}
