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
    /// The slot in the registered file table of the runtime that created this descriptor
    /// (`Builder::registered_fds`), or [`NO_SLOT`]; `owner` is that runtime's identity. Two
    /// plain fields rather than an `Option<(u32, usize)>`: every socket has one of these, and
    /// this way it is 16 bytes, not 32.
    slot: u32,
    owner: usize,
}

/// `Inner::slot` when the descriptor is not in a registered file table (the table never grows
/// this large).
const NO_SLOT: u32 = u32::MAX;

impl Inner {
    fn slot(&self) -> Option<(u32, usize)> {
        (self.slot != NO_SLOT).then_some((self.slot, self.owner))
    }

    fn take_slot(&mut self) -> Option<(u32, usize)> {
        let slot = self.slot();
        self.slot = NO_SLOT;
        slot
    }
}

/// How an op should name a descriptor in its SQE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdTarget {
    /// By descriptor number (`types::Fd`).
    Raw(RawFd),
    /// By slot in the ring's registered file table (`types::Fixed`).
    Fixed(u32),
}

impl SharedFd {
    /// Takes ownership of `fd`. With `Builder::registered_fds` on, it is also installed in the
    /// running runtime's registered file table.
    pub fn new(fd: OwnedFd) -> Self {
        let raw = fd.as_raw_fd();
        let slot = context::try_with_core(|core| {
            core.register_file(raw).map(|slot| (slot, core.identity()))
        })
        .flatten();
        let (slot, owner) = slot.unwrap_or((NO_SLOT, 0));
        SharedFd {
            inner: Rc::new(Inner {
                fd: Some(fd),
                slot,
                owner,
            }),
        }
    }

    /// How an io_uring op should name this descriptor: by its registered slot when it has one
    /// in the running runtime's ring, else by number.
    pub fn target(&self) -> FdTarget {
        if let Some((slot, owner)) = self.inner.slot() {
            if context::try_with_core(|core| core.identity() == owner) == Some(true) {
                return FdTarget::Fixed(slot);
            }
        }
        FdTarget::Raw(self.raw())
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
            if let Some((slot, owner)) = self.take_slot() {
                // The last holder is gone, so no op in flight names the slot. Outside its own
                // runtime the slot cannot be released: the ring then keeps the socket open until
                // that runtime is dropped (documented on `Builder::registered_fds`).
                context::try_with_core(|core| {
                    if core.identity() == owner {
                        core.unregister_file(slot);
                    }
                });
            }
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
                if let Some((slot, owner)) = inner.take_slot() {
                    context::try_with_core(|core| {
                        if core.identity() == owner {
                            core.unregister_file(slot);
                        }
                    });
                }
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
