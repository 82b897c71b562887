//! The eventfd that wakes a parked loop from another thread.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::errno::{is_interrupted, is_would_block};

/// An eventfd that wakes a parked driver from any thread.
#[derive(Debug)]
pub(crate) struct WakeFd {
    fd: OwnedFd,
}

impl WakeFd {
    pub(crate) fn new() -> io::Result<WakeFd> {
        // SAFETY: eventfd takes no pointers; a negative return is an error, anything else a new
        // descriptor that we own from here on.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(WakeFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Makes the eventfd readable. Never blocks: a counter at its limit is already readable.
    pub(crate) fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local into our own eventfd.
        let _ = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            )
        };
    }

    /// Resets the counter so the next park can block again.
    pub(crate) fn drain(&self) {
        let mut buf: u64 = 0;
        loop {
            // SAFETY: reads 8 bytes into a live local from our own non-blocking eventfd.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    &mut buf as *mut u64 as *mut libc::c_void,
                    8,
                )
            };
            if n >= 0 {
                return;
            }
            let e = io::Error::last_os_error();
            if !is_interrupted(&e) || is_would_block(&e) {
                return;
            }
        }
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
