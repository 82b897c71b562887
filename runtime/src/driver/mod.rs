//! The driver: where the loop waits.
//!
//! The executor never blocks by itself; once per iteration it asks the driver to
//! [`park`](Driver::park) for at most a timeout (zero when work is ready, the next timer's
//! deadline otherwise). A wake from another thread unparks it through an eventfd.
//!
//! This milestone has one driver, which only sleeps and wakes. The io_uring and epoll drivers
//! plug into the same seam: they wait on I/O completions or readiness in the same call.

mod park;

pub(crate) use park::{Driver, WakeFd};

/// Errno-named helpers: read `is_interrupted(e)` rather than `e == EINTR`.
pub(crate) mod errno {
    use std::io;

    /// The call was interrupted by a signal and should be retried.
    pub(crate) fn is_interrupted(e: &io::Error) -> bool {
        e.kind() == io::ErrorKind::Interrupted
    }

    /// A non-blocking call found nothing to do right now.
    pub(crate) fn is_would_block(e: &io::Error) -> bool {
        e.kind() == io::ErrorKind::WouldBlock
    }
}
