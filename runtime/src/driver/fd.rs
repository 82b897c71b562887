//! `SharedFd`: a descriptor kept open while any operation that uses it is in flight.

use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;

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
}

impl SharedFd {
    /// Takes ownership of `fd`.
    pub fn new(fd: OwnedFd) -> Self {
        SharedFd {
            inner: Rc::new(Inner { fd: Some(fd) }),
        }
    }

    /// The raw descriptor (valid while this handle lives).
    pub fn raw(&self) -> RawFd {
        self.inner.fd.as_ref().map_or(-1, |fd| fd.as_raw_fd())
    }

    /// Whether this is the only handle (no op holds the descriptor).
    pub fn is_unique(&self) -> bool {
        Rc::strong_count(&self.inner) == 1
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(fd) = self.fd.take() {
            let raw = fd.as_raw_fd();
            // The epoll backend keeps per-descriptor state keyed by number: drop it before the
            // number can be reused. Outside a running runtime no driver can be told; note it,
            // so the epoll drivers of this thread re-check their registrations instead of
            // skipping the registration of the next socket that gets this number.
            if context::try_with_core(|core| core.forget_fd(raw)).is_none() {
                super::epoll::note_untold_close();
            }
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
                if context::try_with_core(|core| core.forget_fd(owned.as_raw_fd())).is_none() {
                    super::epoll::note_untold_close(); // as in `Inner::drop`
                }
                Ok(owned)
            }
            Err(inner) => Err(SharedFd { inner }),
        }
    }
}
