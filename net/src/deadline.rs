//! The sockets' side of deadlines (see [`ringloop_runtime::time::deadline`]): ops take the
//! deadline of the scope they are polled in by themselves; the waits here that are not ops (a
//! pooled receiver's queue, an accept stream, the back-off sleeps) look at it when they would
//! wait, after checking that nothing is ready (a ready result always wins).

use std::io;
use std::time::{Duration, Instant};

use ringloop_runtime::{current_deadline, sleep, sleep_until, timed_out_error};

/// The deadline error, if the deadline of the scope being polled has passed.
#[inline]
pub(crate) fn expired() -> Option<io::Error> {
    current_deadline()
        .filter(|at| Instant::now() >= *at)
        .map(|_| timed_out_error())
}

/// Sleeps `d` (a back-off between tries), or until the deadline of the scope it is polled in,
/// whichever comes first: `ETIMEDOUT` once that deadline has passed. A cancellation point.
pub(crate) async fn backoff(d: Duration) -> io::Result<()> {
    let Some(at) = current_deadline() else {
        return Ok(sleep(d).await?);
    };
    let now = Instant::now();
    if now >= at {
        return Err(timed_out_error());
    }
    sleep_until(now.checked_add(d).map_or(at, |end| end.min(at))).await?;
    match expired_at(at) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn expired_at(at: Instant) -> Option<io::Error> {
    (Instant::now() >= at).then(timed_out_error)
}
