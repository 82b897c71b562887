//! A driver that only sleeps and wakes: `epoll_wait` on an eventfd with the timer deadline as
//! timeout.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

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

/// Counters the driver keeps for [`RuntimeStats`](crate::RuntimeStats).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DriverStats {
    /// Calls into the kernel to wait (`epoll_wait`).
    pub(crate) kernel_waits: u64,
}

/// The sleep-and-wake driver.
#[derive(Debug)]
pub(crate) struct Driver {
    epoll: OwnedFd,
    pub(crate) stats: DriverStats,
}

/// Marks the wake eventfd in epoll events.
const WAKE_TOKEN: u64 = u64::MAX;

impl Driver {
    pub(crate) fn new(wake: &WakeFd) -> io::Result<Driver> {
        // SAFETY: no pointers; a negative return is an error, else a descriptor we now own.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is fresh and ours.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: WAKE_TOKEN,
        };
        // SAFETY: both descriptors are open; `ev` is a live local the kernel only reads.
        if unsafe { libc::epoll_ctl(fd, libc::EPOLL_CTL_ADD, wake.raw(), &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Driver {
            epoll,
            stats: DriverStats::default(),
        })
    }

    /// Waits until woken or until `timeout` passes (`None`: no timer, wait for a wake).
    ///
    /// The timeout is rounded *up* to whole milliseconds, so the loop never wakes before a
    /// timer's deadline only to find nothing due and spin.
    pub(crate) fn park(&mut self, timeout: Option<Duration>, wake: &WakeFd) -> io::Result<()> {
        let ms: libc::c_int = match timeout {
            None => -1,
            Some(d) => {
                let ms = d.as_nanos().div_ceil(1_000_000);
                ms.min(libc::c_int::MAX as u128) as libc::c_int
            }
        };
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
        self.stats.kernel_waits += 1;
        // SAFETY: `events` is a live local array of the length we pass.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if is_interrupted(&e) { Ok(()) } else { Err(e) };
        }
        if events[..n as usize].iter().any(|ev| ev.u64 == WAKE_TOKEN) {
            wake.drain();
        }
        Ok(())
    }
}
