//! [`AlignedBuf`]: an owned buffer whose memory starts at an aligned address, for direct I/O.

use std::alloc::{self, Layout};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

use ringloop_net::{IoBuf, IoBufMut};

/// An owned, fixed-capacity byte buffer whose memory starts at a multiple of its alignment
/// (4096 by default): what `O_DIRECT` reads and writes need (see
/// [`OpenOptions::direct`](crate::OpenOptions::direct)). It is an [`IoBuf`] and an
/// [`IoBufMut`] like `Vec<u8>`: reads fill it from its start up to its capacity, writes send
/// its `len()` bytes.
///
/// Direct I/O also needs the file offset and the length to be multiples of the file's block
/// size (see [`DirectIoAlignment`](crate::DirectIoAlignment)): give the buffer a capacity that
/// is one (a multiple of 4096 always is).
///
/// Its memory is zeroed when allocated, so every byte is initialised: [`set_len`](Self::set_len)
/// is safe, and a buffer can be read into and then resized freely.
///
/// ```
/// use ringloop_fs::AlignedBuf;
///
/// let mut buf = AlignedBuf::new(8192);
/// assert_eq!(buf.as_ptr() as usize % 4096, 0);
/// assert_eq!((buf.len(), buf.capacity()), (0, 8192));
/// buf.extend_from_slice(b"record");
/// buf.set_len(4096); // a whole block: the rest is zeros
/// assert_eq!(&buf[..6], b"record");
/// ```
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
    align: usize,
}

// SAFETY: the buffer owns its memory outright (no sharing, no interior mutability); moving it
// to another thread moves that ownership, and `&AlignedBuf` only reads.
unsafe impl Send for AlignedBuf {}
// SAFETY: as above.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// The default alignment: 4096 bytes, a page, which satisfies every block device's
    /// direct-I/O rules on Linux.
    pub const DEFAULT_ALIGNMENT: usize = 4096;

    /// An empty buffer with room for `capacity` bytes, aligned to
    /// [`DEFAULT_ALIGNMENT`](Self::DEFAULT_ALIGNMENT).
    ///
    /// # Panics
    /// If the allocation's size overflows `isize`; aborts if memory runs out (as `Vec` does).
    pub fn new(capacity: usize) -> AlignedBuf {
        AlignedBuf::with_alignment(capacity, Self::DEFAULT_ALIGNMENT)
    }

    /// An empty buffer with room for `capacity` bytes, whose address is a multiple of `align`.
    ///
    /// # Panics
    /// If `align` is not a power of two, or the size overflows `isize`.
    pub fn with_alignment(capacity: usize, align: usize) -> AlignedBuf {
        let layout = Self::layout(capacity, align);
        // SAFETY: the layout's size is at least 1 (see `layout`).
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        AlignedBuf {
            ptr,
            len: 0,
            cap: capacity,
            align,
        }
    }

    /// A buffer holding a copy of `data`, with a capacity of `data.len()` rounded up to a
    /// multiple of [`DEFAULT_ALIGNMENT`](Self::DEFAULT_ALIGNMENT) (zeros after the data).
    pub fn from_slice(data: &[u8]) -> AlignedBuf {
        let cap = data
            .len()
            .div_ceil(Self::DEFAULT_ALIGNMENT)
            .max(1)
            .saturating_mul(Self::DEFAULT_ALIGNMENT);
        let mut buf = AlignedBuf::new(cap);
        buf.extend_from_slice(data);
        buf
    }

    /// The allocation for `capacity` bytes at `align`: at least one byte, so that an empty
    /// buffer still has a real, aligned address to hand to the kernel.
    fn layout(capacity: usize, align: usize) -> Layout {
        assert!(
            align.is_power_of_two(),
            "AlignedBuf: the alignment ({align}) must be a power of two"
        );
        Layout::from_size_align(capacity.max(1), align)
            .unwrap_or_else(|_| panic!("AlignedBuf: a capacity of {capacity} bytes is too large"))
    }

    /// The initialised length: what a write sends.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the length is zero.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The capacity: what a read may fill.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The alignment of the buffer's address.
    pub fn alignment(&self) -> usize {
        self.align
    }

    /// Sets the length. Every byte of the buffer is initialised (zeroed at allocation), so any
    /// length up to the capacity is safe: bytes past the old length keep what they held.
    ///
    /// # Panics
    /// If `len` exceeds the capacity.
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.cap,
            "AlignedBuf::set_len: {len} is past the capacity ({})",
            self.cap
        );
        self.len = len;
    }

    /// Shortens the buffer to `len` (does nothing if it is shorter already).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Sets the length to zero.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends `data`.
    ///
    /// # Panics
    /// If it does not fit in the capacity (the buffer never grows: growing would move it).
    pub fn extend_from_slice(&mut self, data: &[u8]) {
        let end = self.len.checked_add(data.len()).filter(|&e| e <= self.cap);
        let end = end.unwrap_or_else(|| {
            panic!(
                "AlignedBuf::extend_from_slice: {} bytes do not fit ({} of {} used)",
                data.len(),
                self.len,
                self.cap
            )
        });
        // SAFETY: `len..end` lies inside the allocation, which `data` cannot overlap (we hold
        // it mutably).
        unsafe {
            self.ptr
                .as_ptr()
                .add(self.len)
                .copy_from_nonoverlapping(data.as_ptr(), data.len())
        };
        self.len = end;
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `with_alignment` with this very layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.cap, self.align)) };
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes are inside the allocation and initialised.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and we hold the buffer mutably.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Clone for AlignedBuf {
    fn clone(&self) -> AlignedBuf {
        let mut copy = AlignedBuf::with_alignment(self.cap, self.align);
        copy.extend_from_slice(self);
        copy
    }
}

impl PartialEq for AlignedBuf {
    fn eq(&self, other: &AlignedBuf) -> bool {
        **self == **other
    }
}

impl Eq for AlignedBuf {}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("capacity", &self.cap)
            .field("alignment", &self.align)
            .finish()
    }
}

// SAFETY: the memory is a heap allocation owned by the buffer: it does not move when the
// buffer moves and lives as long as it; the first `len` bytes are initialised.
unsafe impl IoBuf for AlignedBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    fn bytes_init(&self) -> usize {
        self.len
    }

    fn bytes_total(&self) -> usize {
        self.cap
    }
}

// SAFETY: the pointer is valid for writes of the whole capacity.
unsafe impl IoBufMut for AlignedBuf {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    unsafe fn set_init(&mut self, pos: usize) {
        // Every byte is initialised already; this only moves the length up, as `Vec` does.
        if self.len < pos {
            self.len = pos.min(self.cap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_aligned_and_memory_is_zeroed() {
        for align in [512, 4096, 65536] {
            let mut b = AlignedBuf::with_alignment(3 * align, align);
            assert_eq!(b.as_ptr() as usize % align, 0);
            b.set_len(b.capacity());
            assert!(b.iter().all(|&x| x == 0));
        }
        let empty = AlignedBuf::new(0);
        assert_eq!(empty.stable_ptr() as usize % 4096, 0);
        assert_eq!(empty.bytes_total(), 0);
    }

    #[test]
    fn from_slice_rounds_the_capacity_up() {
        let b = AlignedBuf::from_slice(b"abc");
        assert_eq!((b.len(), b.capacity()), (3, 4096));
        assert_eq!(&b[..], b"abc");
        assert_eq!(b.clone(), b);
        assert_eq!(AlignedBuf::from_slice(&[7; 8192]).capacity(), 8192);
    }

    #[test]
    #[should_panic(expected = "power of two")]
    fn a_non_power_of_two_alignment_panics() {
        let _ = AlignedBuf::with_alignment(10, 3000);
    }

    #[test]
    #[should_panic(expected = "do not fit")]
    fn extending_past_the_capacity_panics() {
        AlignedBuf::new(4).extend_from_slice(b"hello");
    }
}
