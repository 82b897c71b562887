//! Owned buffers for I/O: the kernel writes into them while an op holds them, so ops take
//! them by value and give them back with the result (`(io::Result<usize>, buf)`, "rent" style).
//!
//! [`IoBuf`] is a buffer the kernel reads from (send); [`IoBufMut`] one it writes into (recv).
//! Both are implemented for `Vec<u8>`, `Box<[u8]>`, `bytes::BytesMut` and `&'static` slices,
//! and [`Slice`] restricts an op to part of a buffer while keeping ownership of the whole.

use std::ops::{Bound, RangeBounds};

/// A buffer an op may hand to the kernel to read from.
///
/// # Safety
/// `stable_ptr` must point to `bytes_init` initialised bytes that stay valid and do not move
/// for as long as the value lives, even if the value itself is moved (heap memory, or
/// `'static` memory).
pub unsafe trait IoBuf: 'static {
    /// Pointer to the first byte.
    fn stable_ptr(&self) -> *const u8;
    /// Initialised bytes (what a send sends).
    fn bytes_init(&self) -> usize;
    /// Total capacity (what a receive may fill).
    fn bytes_total(&self) -> usize;

    /// Restricts the buffer to `range` (of its capacity) for one op, keeping ownership of the
    /// whole: `buf.slice(n..)` sends what is left after `n` bytes went out.
    ///
    /// A window may start past the bytes already initialised (a receive into
    /// `Vec::with_capacity(100).slice(50..)`): a send from it sends nothing of the gap, and a
    /// receive into it zero-fills the gap before it marks the received bytes initialised, so
    /// the buffer never exposes memory nobody wrote (the `Vec` above comes back with length
    /// `50 + n`, its first 50 bytes zero).
    ///
    /// ```
    /// use ringloop_net::{IoBuf, IoBufMut};
    ///
    /// let mut window = Vec::<u8>::with_capacity(100).slice(50..);
    /// // What a receive does once the kernel wrote 3 bytes at the window's start:
    /// unsafe {
    ///     window.stable_mut_ptr().copy_from(b"abc".as_ptr(), 3);
    ///     window.set_init(3);
    /// }
    /// let v = window.into_inner();
    /// assert_eq!(v.len(), 53);
    /// assert!(v[..50].iter().all(|&b| b == 0));
    /// assert_eq!(&v[50..], b"abc");
    /// ```
    ///
    /// # Panics
    /// If the range is reversed or ends past the capacity.
    fn slice(self, range: impl RangeBounds<usize>) -> Slice<Self>
    where
        Self: Sized,
    {
        let begin = match range.start_bound() {
            Bound::Included(&n) => n,
            Bound::Excluded(&n) => n + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&n) => n + 1,
            Bound::Excluded(&n) => n,
            Bound::Unbounded => self.bytes_total(),
        };
        assert!(
            begin <= end && end <= self.bytes_total(),
            "slice out of bounds"
        );
        Slice {
            buf: self,
            begin,
            end,
        }
    }
}

/// A buffer an op may hand to the kernel to write into.
///
/// # Safety
/// As [`IoBuf`], and `stable_mut_ptr` must be valid for writes of `bytes_total` bytes.
pub unsafe trait IoBufMut: IoBuf {
    /// Pointer to the first byte, for writing.
    fn stable_mut_ptr(&mut self) -> *mut u8;

    /// Marks the first `pos` bytes initialised (after the kernel wrote them).
    ///
    /// # Safety
    /// The first `pos` bytes must have been written.
    unsafe fn set_init(&mut self, pos: usize);
}

// SAFETY: a Vec's heap buffer does not move when the Vec is moved; `len` bytes are initialised.
unsafe impl IoBuf for Vec<u8> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
    fn bytes_total(&self) -> usize {
        self.capacity()
    }
}

// SAFETY: the pointer covers the whole capacity.
unsafe impl IoBufMut for Vec<u8> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    unsafe fn set_init(&mut self, pos: usize) {
        if self.len() < pos {
            // SAFETY: the caller guarantees the first `pos` bytes were written, and `pos` never
            // exceeds the capacity the kernel was given.
            unsafe { self.set_len(pos) };
        }
    }
}

// SAFETY: a boxed slice's heap memory does not move; all of it is initialised.
unsafe impl IoBuf for Box<[u8]> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
    fn bytes_total(&self) -> usize {
        self.len()
    }
}

// SAFETY: the pointer covers the whole (initialised) slice.
unsafe impl IoBufMut for Box<[u8]> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    unsafe fn set_init(&mut self, _pos: usize) {}
}

// SAFETY: `BytesMut`'s storage is on the heap and does not move with the handle.
unsafe impl IoBuf for bytes::BytesMut {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
    fn bytes_total(&self) -> usize {
        self.capacity()
    }
}

// SAFETY: the pointer covers the whole capacity.
unsafe impl IoBufMut for bytes::BytesMut {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    unsafe fn set_init(&mut self, pos: usize) {
        if self.len() < pos {
            // SAFETY: as for Vec.
            unsafe { self.set_len(pos) };
        }
    }
}

// SAFETY: `Bytes` is immutable heap (or static) storage.
unsafe impl IoBuf for bytes::Bytes {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
    fn bytes_total(&self) -> usize {
        self.len()
    }
}

// SAFETY: static memory never moves or goes away.
unsafe impl IoBuf for &'static [u8] {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
    fn bytes_total(&self) -> usize {
        self.len()
    }
}

// SAFETY: static memory never moves or goes away.
unsafe impl IoBuf for &'static str {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
    fn bytes_total(&self) -> usize {
        self.len()
    }
}

/// Part of an owned buffer (from [`IoBuf::slice`]); [`into_inner`](Self::into_inner) gives the
/// whole buffer back.
#[derive(Debug)]
pub struct Slice<T> {
    buf: T,
    begin: usize,
    end: usize,
}

impl<T> Slice<T> {
    /// The whole buffer.
    pub fn into_inner(self) -> T {
        self.buf
    }

    /// Where the slice starts in the buffer.
    pub fn begin(&self) -> usize {
        self.begin
    }

    /// Where the slice ends in the buffer.
    pub fn end(&self) -> usize {
        self.end
    }
}

// SAFETY: a window into a buffer that is itself stable.
unsafe impl<T: IoBuf> IoBuf for Slice<T> {
    fn stable_ptr(&self) -> *const u8 {
        // SAFETY: `begin <= bytes_total` was checked when the slice was made.
        unsafe { self.buf.stable_ptr().add(self.begin) }
    }
    fn bytes_init(&self) -> usize {
        self.buf.bytes_init().clamp(self.begin, self.end) - self.begin
    }
    fn bytes_total(&self) -> usize {
        self.end - self.begin
    }
}

// SAFETY: a window into a buffer that is itself stable and writable.
unsafe impl<T: IoBufMut> IoBufMut for Slice<T> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        // SAFETY: as in `stable_ptr`.
        unsafe { self.buf.stable_mut_ptr().add(self.begin) }
    }
    unsafe fn set_init(&mut self, pos: usize) {
        if pos == 0 {
            return;
        }
        // The window may start past the buffer's initialised bytes; the gap between them was
        // never written, so it is zeroed before the buffer is told that everything up to the
        // window's end of data is initialised.
        let init = self.buf.bytes_init();
        if init < self.begin {
            // SAFETY: `init < begin <= bytes_total`, so the gap lies inside the buffer's
            // writable memory (`IoBufMut`'s contract), and nothing else refers to it.
            unsafe {
                self.buf
                    .stable_mut_ptr()
                    .add(init)
                    .write_bytes(0, self.begin - init)
            };
        }
        // SAFETY: bytes `..init` were initialised, `init..begin` were just zeroed, and the
        // caller guarantees the window's first `pos` bytes were written.
        unsafe { self.buf.set_init(self.begin + pos) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_windows_report_init_and_total() {
        let v = b"hello world".to_vec();
        let s = v.slice(6..);
        assert_eq!(s.bytes_init(), 5);
        assert_eq!(s.bytes_total(), s.end() - s.begin());
        assert_eq!(s.into_inner(), b"hello world");
    }
}
