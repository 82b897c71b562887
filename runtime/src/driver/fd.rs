//! `SharedFd`: a descriptor kept open while any operation that uses it is in flight.

use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;

use super::handle::{Deferred, DriverHandle};
use super::Backend;
use crate::context;

/// A reference-counted descriptor. Every op holds a clone, so the descriptor cannot be closed
/// (and its number reused) while the kernel still works on it; it is closed when the last
/// clone goes, after the driver has forgotten it.
#[derive(Clone)]
pub struct SharedFd {
    inner: Rc<Inner>,
}

struct Inner {
    fd: Option<OwnedFd>,
    /// The slot in the registered file table of `driver`'s ring (`Builder::registered_fds`),
    /// or [`NO_SLOT`]. A plain `u32` rather than an `Option`: every socket has one of these,
    /// and this way `Inner` is 16 bytes.
    slot: u32,
    /// The driver of the runtime this descriptor was created on, if it was created in one.
    driver: Option<DriverHandle>,
}

/// `Inner::slot` when the descriptor is not in a registered file table (the table never grows
/// this large).
const NO_SLOT: u32 = u32::MAX;

/// How an op should name a descriptor in its SQE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdTarget {
    /// By descriptor number (`types::Fd`).
    Raw(RawFd),
    /// By slot in the ring's registered file table (`types::Fixed`).
    Fixed(u32),
}

impl SharedFd {
    /// Takes ownership of `fd`. Inside a running runtime with `Builder::registered_fds` on, it
    /// is also installed in that runtime's registered file table (and removed from it when the
    /// last clone goes, wherever that happens).
    pub fn new(fd: OwnedFd) -> Self {
        let raw = fd.as_raw_fd();
        let driver = DriverHandle::current();
        let slot = driver
            .as_ref()
            .and_then(|d| d.try_with(|d| d.register_file(raw)).flatten())
            .unwrap_or(NO_SLOT);
        SharedFd {
            inner: Rc::new(Inner {
                fd: Some(fd),
                slot,
                driver,
            }),
        }
    }

    /// How an io_uring op submitted on the running runtime should name this descriptor: by its
    /// registered slot when it has one in that runtime's ring, else by number.
    #[inline]
    pub fn target(&self) -> FdTarget {
        if self.inner.slot != NO_SLOT {
            if let Some(own) = &self.inner.driver {
                let current = context::try_with_driver(DriverHandle::id);
                if current == Some(own.id()) {
                    return FdTarget::Fixed(self.inner.slot);
                }
            }
        }
        FdTarget::Raw(self.raw())
    }

    /// The raw descriptor (valid while this handle lives).
    #[inline]
    pub fn raw(&self) -> RawFd {
        self.inner.fd.as_ref().map_or(-1, |fd| fd.as_raw_fd())
    }

    /// Whether this is the only handle (no op holds the descriptor).
    pub fn is_unique(&self) -> bool {
        Rc::strong_count(&self.inner) == 1
    }
}

impl Inner {
    /// The descriptor is about to be closed or handed out: empty its registered slot and make
    /// every epoll driver that may know its number forget it.
    fn release(&mut self, raw: RawFd) {
        let slot = std::mem::replace(&mut self.slot, NO_SLOT);
        if let (true, Some(own)) = (slot != NO_SLOT, &self.driver) {
            // The last holder is gone, so no op in flight names the slot; its own driver
            // empties it, now or at its next borrow (the slot is reused only after that).
            own.defer(Deferred::UnregisterFile(slot));
        }
        // The epoll backend keeps per-descriptor state keyed by number: it must forget this
        // one before the number can be reused. Tell this descriptor's own driver and the
        // running one; if any other epoll driver on this thread may have seen it, or a driver
        // is borrowed right now (a deferred forget could hit the number's next owner), note an
        // untold close so those drivers re-check their registrations.
        let current = DriverHandle::current();
        let mut told = 0;
        let mut untold = false;
        for d in [self.driver.as_ref(), current.as_ref()]
            .into_iter()
            .flatten()
        {
            if d.backend() != Backend::Epoll || (told > 0 && current_is(self.driver.as_ref(), d)) {
                continue;
            }
            match d.try_with(|d| d.forget_fd(raw)) {
                Some(()) => told += 1,
                None => untold = true,
            }
        }
        if untold || super::epoll::live_drivers() > told {
            super::epoll::note_untold_close();
        }
    }
}

/// Whether `d` is the same driver as `own`.
fn current_is(own: Option<&DriverHandle>, d: &DriverHandle) -> bool {
    own.is_some_and(|o| o.same(d))
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(fd) = self.fd.take() {
            self.release(fd.as_raw_fd());
            drop(fd);
        }
    }
}

impl AsRawFd for SharedFd {
    fn as_raw_fd(&self) -> RawFd {
        self.raw()
    }
}

impl fmt::Debug for SharedFd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedFd").field(&self.raw()).finish()
    }
}

/// Turns a `SharedFd` that no op holds back into an `OwnedFd`.
impl TryFrom<SharedFd> for OwnedFd {
    type Error = SharedFd;

    fn try_from(fd: SharedFd) -> Result<OwnedFd, SharedFd> {
        match Rc::try_unwrap(fd.inner) {
            Ok(mut inner) => {
                let owned = inner.fd.take().expect("fd present until dropped");
                inner.release(owned.as_raw_fd());
                Ok(owned)
            }
            Err(inner) => Err(SharedFd { inner }),
        }
    }
}
