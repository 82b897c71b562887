//! Runtime statistics.

use serde::Serialize;

/// A snapshot of a runtime's counters, from [`Runtime::stats`](crate::Runtime::stats).
///
/// Counters only grow, except the gauges `tasks_alive` and `timers_pending`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RuntimeStats {
    /// Tasks spawned and not yet ended (gauge).
    pub tasks_alive: u64,
    /// Tasks ever spawned (the main future of `block_on` included).
    pub tasks_spawned: u64,
    /// Tasks that returned a value.
    pub tasks_completed: u64,
    /// Tasks that ended by cancellation.
    pub tasks_cancelled: u64,
    /// Tasks that panicked.
    pub tasks_panicked: u64,
    /// Task polls.
    pub polls: u64,
    /// Callbacks run (`call_soon`, `call_later`, `call_at`, done callbacks, thread-safe ones).
    pub callbacks_run: u64,
    /// Armed timers (gauge): sleeps, timeouts and timed callbacks.
    pub timers_pending: u64,
    /// Loop iterations.
    pub loop_iterations: u64,
    /// Times the loop blocked in the driver (parked with a non-zero timeout).
    pub parks: u64,
    /// Times the driver entered the kernel to wait or poll.
    pub kernel_waits: u64,
    /// Wakes that came from other threads through the injector.
    pub remote_wakes: u64,
}
