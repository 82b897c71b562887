//! The core of ringloop: an event loop with asyncio's shape, tasks with asyncio's cancellation
//! semantics, timers, combinators and synchronisation primitives.
//!
//! One [`Runtime`] runs on one thread (thread-per-core): tasks may be `!Send`, and a multi-core
//! server runs one runtime per core. The loop iteration is asyncio's `_run_once`: talk to the
//! driver once, move expired timers to the ready queue, then run exactly the tasks and callbacks
//! that were ready when the iteration began (see [`Runtime::run_once`]).
//!
//! ```
//! use ringloop_runtime::{Runtime, spawn, sleep};
//! use std::time::Duration;
//!
//! let rt = Runtime::new().unwrap();
//! let answer = rt.block_on(async {
//!     let task = spawn(async {
//!         sleep(Duration::from_millis(1)).await.unwrap();
//!         21 * 2
//!     });
//!     task.await.unwrap()
//! });
//! assert_eq!(answer, 42);
//! ```
//!
//! I/O is done by ops ([`Op`]); any op, and every op a future makes, can be bounded by a
//! deadline ([`Op::deadline`], [`DeadlineExt`]; see [`time::deadline`]), with the op's own
//! result winning over the deadline when both come at once.
//!
//! Blocking work (a file read, a DNS lookup) goes to a thread pool with [`spawn_blocking`]
//! (asyncio's `run_in_executor`); Unix signals arrive in tasks through [`signal()`] and
//! [`ctrl_c`] (asyncio's `add_signal_handler`).
//!
//! # Where ringloop differs from asyncio
//!
//! Rust has no exceptions to throw into a suspended coroutine, so a cancellation is delivered as
//! a value: every runtime future that can suspend (sleep, a [`Task`], a [`Promise`], a lock, a
//! queue, ...) resolves to `Err(Cancelled)` when the task awaiting it is cancelled. The task's code
//! decides, exactly as an `except CancelledError:` block would. A task that lets that error escape
//! (returns it, possibly wrapped in its own error type) ends *cancelled*, as in asyncio; a task that
//! drops it and returns something else ends with that value. Futures that know nothing of ringloop
//! cannot receive the request: a task suspended on one is dropped instead (Rust's native cancel).
//! See [`task`] for the details and [`Cancelled`] for the type.
//!
//! # Looking inside
//!
//! Every suspended task records what it awaits ([`TaskRef::awaiting`], [`task_tree`]); the live
//! view ([`inspect`], `ringloop-ps PID`) shows it from outside the process; [`metrics`] gives
//! the counters and per-op-kind latencies as Prometheus text.
//!
//! # Tracing
//!
//! With the cargo feature `tracing`, the runtime reports to [`tracing`](https://docs.rs/tracing)
//! (nothing of it is compiled in without the feature):
//!
//! * a span per task, `task` (target `ringloop::task`, level INFO), with the fields
//!   `task.name`, `task.id` and `task.parent` (the spawning task's id, when there is one),
//!   entered for each poll of the task and for the drop of its future; a rename is recorded on
//!   it. Events a task's code emits are inside its span, so a `tracing-subscriber` formatter
//!   prints `task{task.name=... task.id=...}:` before them;
//! * events: `cancel requested` (target `ringloop::task`, DEBUG: `task.id`, `task.name`,
//!   `cancel.message`), `cancel delivered` (DEBUG, inside the cancelled task's span, when a
//!   runtime future resolves to `Cancelled`), a task's panic (ERROR: the exception handler's
//!   message, `task.id`, `task.name`, `panic` with the panic's message), `timeout expired:
//!   cancelling the future inside it` (target `ringloop::time`, DEBUG), and `op failed` (target
//!   `ringloop::op`, DEBUG: `op`, the op kind's name, and `error`).

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod blocking;
mod callback;
pub mod combinators;
#[cfg(feature = "hyper")]
pub mod compat;
mod context;
pub mod driver;
mod handshake;
pub mod inspect;
mod loop_thread;
pub mod metrics;
mod promise;
mod remote;
mod runtime;
pub mod shards;
pub mod signal;
mod stats;
pub mod sync;
pub mod task;
#[cfg(test)]
mod test_wakers;
pub mod time;

pub use blocking::{spawn_blocking, BlockingTask};
pub use callback::CallbackHandle;
pub use combinators::{
    as_completed, gather, gather_settled, shield, try_gather, wait, yield_now, AsCompleted, AsTask,
    GatherError, GroupError, GroupFailure, ReturnWhen, Shielded, TaskGroup,
};
pub use driver::opstats::OpKindStats;
pub use driver::{
    is_cancelled, start_detached, Backend, BufPool, BufWait, CompletionList, Detached, DetachedOp,
    FdTarget, Interest, Multishot, MultishotKind, Op, OpKind, PooledBuf, SharedFd,
};
pub use loop_thread::LoopThread;
pub use promise::{Promise, PromiseError, SetError};
pub use remote::{RemoteError, RemoteTask};
pub use runtime::{
    buffer_pool, call_at, call_exception_handler, call_later, call_soon, current_backend,
    current_op_stats, current_stats, metrics_text, multishot_recv, recv_bundles, registered_fds,
    runtime_local, set_exception_handler, stop, time, try_current_backend, zero_copy_send, Builder,
    ExceptionContext, Handle, Runtime,
};
pub use shards::{Placement, Shard, ShardError, ShardStats, Shards, ShardsBuilder, Stopper};
pub use signal::{ctrl_c, signal, Signal, SignalKind};
pub use stats::RuntimeStats;
pub use task::cancel::{repost_cancel_request, take_cancel_request};
pub use task::{
    all_tasks, current_task, note_awaiting, note_awaiting_io, poll_id, spawn, spawn_named,
    take_cancel_request_waiting, task_tree, AwaitName, Awaiting, Cancelled, Task, TaskError,
    TaskId, TaskNode, TaskRef, TaskState, TaskTree,
};
pub use time::deadline::{
    current_deadline, timed_out_error, DeadlineExt, DeadlineOutput, WithDeadline,
};
pub use time::{
    sleep, sleep_until, timeout, timeout_at, wait_for, Flatten, Sleep, TimedOut, Timeout, WaitError,
};
