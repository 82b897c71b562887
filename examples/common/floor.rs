//! What the no-runtime floors (`floor_echo`, `floor_http`) share: a listening socket, a ring set
//! up as ringloop sets up its own, and a ring of provided buffers.
//!
//! Include it with `#[path]` (examples cannot share a module otherwise):
//!
//! ```ignore
//! #[path = "common/floor.rs"]
//! mod floor;
//! ```

// An includer uses what it needs.
#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

/// The buffer group of the provided buffers.
pub const GROUP: u16 = 0;

/// A completion's `user_data`: what the op was (`kind`) and on which descriptor.
pub fn tag(kind: u64, fd: RawFd) -> u64 {
    kind << 32 | fd as u32 as u64
}

/// A completion's `user_data` taken apart: `(kind, fd)`.
pub fn untag(user_data: u64) -> (u64, RawFd) {
    (user_data >> 32, user_data as u32 as RawFd)
}

/// A listening socket on `addr`, with `SO_REUSEPORT` when `shared` (several threads listen on
/// the same address).
pub fn listen(addr: SocketAddr, backlog: i32, shared: bool) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    if shared {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// A ring as ringloop's own: one issuer, task work deferred to `io_uring_enter`, a large
/// completion queue.
pub fn ring() -> io::Result<IoUring> {
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(32768)
        .setup_clamp()
        .build(1024)
}

/// `TCP_NODELAY` on an accepted connection (best effort, as the servers compared do).
pub fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: `fd` is an open socket of the caller's; `one` outlives the call.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// The provided-buffer ring and the memory its buffers point into.
pub struct Buffers {
    ring: *mut BufRingEntry,
    ring_len: usize,
    mem: Vec<u8>,
    size: u32,
    count: u16,
    mask: u16,
    tail: u16,
}

impl Buffers {
    /// `count` buffers (a power of two, at most 32768) of `size` bytes, all in the ring.
    pub fn new(count: u16, size: u32) -> io::Result<Buffers> {
        assert!(
            count.is_power_of_two() && count <= 32768,
            "--buffers: a power of two"
        );
        let ring_len = usize::from(count) * std::mem::size_of::<BufRingEntry>();
        // SAFETY: an anonymous private mapping; its result is checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut b = Buffers {
            ring: p.cast(),
            ring_len,
            mem: vec![0; usize::from(count) * size as usize],
            size,
            count,
            mask: count - 1,
            tail: 0,
        };
        for bid in 0..count {
            b.push(bid);
        }
        b.publish();
        Ok(b)
    }

    /// Registers the ring with `ring` as buffer group [`GROUP`].
    ///
    /// # Safety
    /// These buffers must outlive `ring`'s use of them: drop `ring` first.
    pub unsafe fn register(&self, ring: &IoUring) -> io::Result<()> {
        // SAFETY: the region lives as long as `self`, which the caller keeps past `ring`.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(self.ring as u64, self.count, GROUP, 0)
        }
    }

    /// Where buffer `bid` starts.
    pub fn addr(&self, bid: u16) -> *const u8 {
        // SAFETY: `bid` < count, so the offset stays inside `mem`.
        unsafe { self.mem.as_ptr().add(usize::from(bid) * self.size as usize) }
    }

    /// Puts buffer `bid` back at the ring's tail (seen by the kernel at the next `publish`).
    pub fn push(&mut self, bid: u16) {
        // SAFETY: the index is masked into the ring's `count` entries, and the entry at the
        // tail belongs to us until the tail moves past it.
        unsafe {
            let e = &mut *self.ring.add(usize::from(self.tail & self.mask));
            e.set_addr(self.addr(bid) as u64);
            e.set_len(self.size);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Shows the kernel every buffer pushed so far.
    pub fn publish(&self) {
        // SAFETY: the tail field overlays the first entry's `resv`, which the kernel reads and
        // only we write; a release store publishes the entries written before it.
        unsafe {
            let tail = BufRingEntry::tail(self.ring) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ring.cast(), self.ring_len) };
    }
}
