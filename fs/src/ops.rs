//! The file operations, each described once (see [`Syscall`]): its SQE, its blocking call and
//! its output. Every pointer an SQE carries points into the operation itself (paths, the
//! `statx` buffer, iovecs) or into an owned buffer it holds.

use std::io;
use std::mem;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use io_uring::{opcode, squeue, types};
use ringloop_net::{IoBuf, IoBufMut};

use crate::op::{cvt_retry, with_target, CPath, Syscall, Target};

/// The most one read or write moves (Linux's `MAX_RW_COUNT`, `INT_MAX` rounded down to a page):
/// the kernel caps every call there anyway, and the SQE's length is 32 bits.
pub(crate) const MAX_RW: usize = 0x7fff_f000;

fn rw_len(n: usize) -> usize {
    n.min(MAX_RW)
}

/// Linux accepts at most this many iovecs in one call (`UIO_MAXIOV`); buffers past it are left
/// for the next call (a short read or write).
pub(crate) const MAX_IOVECS: usize = 1024;

// ---------------------------------------------------------------------------------------------
// open, read, write
// ---------------------------------------------------------------------------------------------

/// `openat(AT_FDCWD, path, flags | O_CLOEXEC, mode)`.
pub(crate) struct Open {
    pub(crate) path: CPath,
    pub(crate) flags: libc::c_int,
    pub(crate) mode: libc::mode_t,
}

// SAFETY: the SQE points at `self.path`'s bytes (heap or static), and names no descriptor but
// `AT_FDCWD`.
unsafe impl Syscall for Open {
    type Output = io::Result<OwnedFd>;
    const OPCODE: u8 = opcode::OpenAt::CODE;

    fn sqe(&mut self, _: Target) -> squeue::Entry {
        opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), self.path.as_ptr())
            .flags(self.flags | libc::O_CLOEXEC)
            .mode(self.mode)
            .build()
    }

    fn call(&mut self, _: RawFd) -> io::Result<u32> {
        // SAFETY: a valid C string; the kernel only reads it during the call.
        cvt_retry(|| unsafe {
            libc::openat(
                libc::AT_FDCWD,
                self.path.as_ptr(),
                self.flags | libc::O_CLOEXEC,
                self.mode as libc::c_uint,
            ) as isize
        })
    }

    fn complete(self, result: io::Result<u32>) -> Self::Output {
        // SAFETY: a successful open returned a new descriptor that nobody else owns; wrapped at
        // once, so an open whose future was dropped closes it when this output is dropped.
        result.map(|fd| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }
}

/// `pread` into an owned buffer, from its start up to its capacity.
///
/// Where the file allows it (`nowait`), the read is first tried without blocking
/// (`preadv2(RWF_NOWAIT)`: what the page cache holds, `EAGAIN` past it): on the epoll backend
/// before going to the pool, on io_uring when the ring is nearly idle. Bytes such a try got are
/// counted in `done`, and the SQE or the pool call reads the rest.
pub(crate) struct Read<B> {
    buf: B,
    pos: u64,
    done: usize,
    /// Whether this file takes `RWF_NOWAIT` (cleared on `EOPNOTSUPP`, for the file's later
    /// reads); `None`: never try (direct I/O, where it would always say `EAGAIN`).
    nowait: Option<Arc<AtomicBool>>,
}

impl<B: IoBufMut> Read<B> {
    pub(crate) fn new(buf: B, pos: u64, nowait: Option<Arc<AtomicBool>>) -> Self {
        Read {
            buf,
            pos,
            done: 0,
            nowait,
        }
    }

    /// Where the rest of the read goes: the pointer, the length and the file offset.
    fn rest(&mut self) -> (*mut u8, usize, u64) {
        let len = rw_len(self.buf.bytes_total()) - self.done;
        // SAFETY: `done` never exceeds the (capped) capacity: it only grows by what the kernel
        // read into the rest.
        let ptr = unsafe { self.buf.stable_mut_ptr().add(self.done) };
        (ptr, len, self.pos + self.done as u64)
    }
}

// SAFETY: the SQE points into `self.buf`, whose memory is stable (`IoBufMut`) and owned by the
// operation, and names only the target.
unsafe impl<B: IoBufMut + Send> Syscall for Read<B> {
    type Output = (io::Result<usize>, B);
    const OPCODE: u8 = opcode::Read::CODE;

    fn byte_count(&self) -> Option<usize> {
        Some(rw_len(self.buf.bytes_total()) - self.done)
    }

    fn sqe(&mut self, target: Target) -> squeue::Entry {
        let (ptr, len, pos) = self.rest();
        with_target!(target, t => opcode::Read::new(t, ptr, len as u32).offset(pos).build())
    }

    fn call(&mut self, fd: RawFd) -> io::Result<u32> {
        let (ptr, len, pos) = self.rest();
        // SAFETY: the rest of the buffer is valid for writes of `len` bytes (`IoBufMut`).
        cvt_retry(|| unsafe { libc::pread64(fd, ptr.cast(), len, pos as i64) })
    }

    fn nowait(&self) -> bool {
        self.nowait
            .as_ref()
            .is_some_and(|ok| ok.load(Ordering::Relaxed))
    }

    fn try_nowait(&mut self, fd: RawFd) -> io::Result<u32> {
        loop {
            let (ptr, len, pos) = self.rest();
            if len == 0 {
                return Ok(0); // all of it: `complete` counts `done`
            }
            let iov = libc::iovec {
                iov_base: ptr.cast(),
                iov_len: len,
            };
            // SAFETY: one iovec over the rest of the buffer, writable for `len` bytes.
            let n = unsafe { libc::preadv2(fd, &iov, 1, pos as i64, libc::RWF_NOWAIT) };
            if n > 0 {
                // Some came; more may be cached (or the file ends: the next try says 0).
                self.done += n as usize;
                continue;
            }
            if n == 0 {
                return Ok(0);
            }
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => Err(io::ErrorKind::WouldBlock.into()),
                // The file does not take RWF_NOWAIT (tmpfs before 6.x, special files): stop
                // trying for it, and read the usual way.
                Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => {
                    if let Some(ok) = &self.nowait {
                        ok.store(false, Ordering::Relaxed);
                    }
                    Err(io::ErrorKind::WouldBlock.into())
                }
                // A real error: what `pread` would have said, after the bytes already read.
                _ if self.done > 0 => Ok(0),
                _ => Err(e),
            };
        }
    }

    fn complete(self, result: io::Result<u32>) -> Self::Output {
        let mut buf = self.buf;
        let result = match result {
            Ok(n) => Ok(self.done + n as usize),
            Err(e) if self.done > 0 => {
                // Bytes were read before the error (or cancellation): they are the result, as
                // `pread` returns a short count; a cancellation goes on to the next await.
                crate::op::repost_if_cancelled(e);
                Ok(self.done)
            }
            Err(e) => Err(e),
        };
        if let Ok(n) = result {
            // SAFETY: the kernel wrote `n` bytes at the buffer's start (`done` by the tries,
            // the rest by the last call).
            unsafe { buf.set_init(n) };
        }
        (result, buf)
    }
}

/// `pwrite` of an owned buffer's initialised bytes.
pub(crate) struct Write<B> {
    pub(crate) buf: B,
    pub(crate) pos: u64,
}

// SAFETY: the SQE points into `self.buf` (stable, owned by the operation).
unsafe impl<B: IoBuf + Send> Syscall for Write<B> {
    type Output = (io::Result<usize>, B);
    const OPCODE: u8 = opcode::Write::CODE;

    fn byte_count(&self) -> Option<usize> {
        Some(rw_len(self.buf.bytes_init()))
    }

    fn sqe(&mut self, target: Target) -> squeue::Entry {
        let len = rw_len(self.buf.bytes_init()) as u32;
        let ptr = self.buf.stable_ptr();
        with_target!(target, t => opcode::Write::new(t, ptr, len).offset(self.pos).build())
    }

    fn call(&mut self, fd: RawFd) -> io::Result<u32> {
        let len = rw_len(self.buf.bytes_init());
        let ptr = self.buf.stable_ptr();
        // SAFETY: the buffer holds `bytes_init` initialised bytes (`IoBuf`).
        cvt_retry(|| unsafe { libc::pwrite64(fd, ptr.cast(), len, self.pos as i64) })
    }

    fn complete(self, result: io::Result<u32>) -> Self::Output {
        (result.map(|n| n as usize), self.buf)
    }
}

/// The iovecs of a vectored operation: pointers into the buffers the same operation owns.
pub(crate) struct IoVecs(Vec<libc::iovec>);

// SAFETY: the iovecs point only into buffers owned by the operation that owns this vector (and
// that are `Send` themselves); they move to another thread together, and the pointers are only
// used by the system call that the owning operation makes.
unsafe impl Send for IoVecs {}

/// `preadv` into owned buffers, each from its start up to its capacity, in order.
pub(crate) struct ReadVectored<B> {
    pub(crate) bufs: Vec<B>,
    pub(crate) pos: u64,
    iovs: IoVecs,
}

impl<B: IoBufMut> ReadVectored<B> {
    pub(crate) fn new(bufs: Vec<B>, pos: u64) -> Self {
        ReadVectored {
            bufs,
            pos,
            iovs: IoVecs(Vec::new()),
        }
    }

    /// Points the iovecs at the buffers (at most [`MAX_IOVECS`], at most [`MAX_RW`] bytes);
    /// they are not touched again until the operation completes.
    fn prepare(&mut self) {
        self.iovs.0.clear();
        let mut room = MAX_RW;
        for buf in self.bufs.iter_mut().take(MAX_IOVECS) {
            let len = buf.bytes_total().min(room);
            room -= len;
            self.iovs.0.push(libc::iovec {
                iov_base: buf.stable_mut_ptr().cast(),
                iov_len: len,
            });
        }
    }
}

// SAFETY: the SQE points at `self.iovs` (a heap array the operation owns and leaves alone until
// the completion), which point into the buffers in `self.bufs` (stable, owned).
unsafe impl<B: IoBufMut + Send> Syscall for ReadVectored<B> {
    type Output = (io::Result<usize>, Vec<B>);
    const OPCODE: u8 = opcode::Readv::CODE;

    fn byte_count(&self) -> Option<usize> {
        let total = self.bufs.iter().take(MAX_IOVECS).map(|b| b.bytes_total());
        Some(total.sum::<usize>().min(MAX_RW))
    }

    fn sqe(&mut self, target: Target) -> squeue::Entry {
        self.prepare();
        let (ptr, len) = (self.iovs.0.as_ptr(), self.iovs.0.len() as u32);
        with_target!(target, t => opcode::Readv::new(t, ptr, len).offset(self.pos).build())
    }

    fn call(&mut self, fd: RawFd) -> io::Result<u32> {
        self.prepare();
        let (ptr, len) = (self.iovs.0.as_ptr(), self.iovs.0.len() as libc::c_int);
        // SAFETY: each iovec covers writable memory of a buffer we own.
        cvt_retry(|| unsafe { libc::preadv64(fd, ptr, len, self.pos as i64) })
    }

    fn complete(self, result: io::Result<u32>) -> Self::Output {
        let mut bufs = self.bufs;
        let result = result.map(|n| {
            let mut left = n as usize;
            for buf in bufs.iter_mut() {
                if left == 0 {
                    break;
                }
                let filled = left.min(buf.bytes_total());
                // SAFETY: the kernel filled the iovecs in order: this buffer's first `filled`
                // bytes were written.
                unsafe { buf.set_init(filled) };
                left -= filled;
            }
            n as usize
        });
        (result, bufs)
    }
}

/// `pwritev` of owned buffers' initialised bytes, in order.
pub(crate) struct WriteVectored<B> {
    pub(crate) bufs: Vec<B>,
    pub(crate) pos: u64,
    iovs: IoVecs,
}

impl<B: IoBuf> WriteVectored<B> {
    pub(crate) fn new(bufs: Vec<B>, pos: u64) -> Self {
        WriteVectored {
            bufs,
            pos,
            iovs: IoVecs(Vec::new()),
        }
    }

    fn prepare(&mut self) {
        self.iovs.0.clear();
        let mut room = MAX_RW;
        for buf in self.bufs.iter().take(MAX_IOVECS) {
            let len = buf.bytes_init().min(room);
            room -= len;
            self.iovs.0.push(libc::iovec {
                iov_base: buf.stable_ptr() as *mut libc::c_void,
                iov_len: len,
            });
        }
    }
}

// SAFETY: as for `ReadVectored`; the kernel only reads through these iovecs.
unsafe impl<B: IoBuf + Send> Syscall for WriteVectored<B> {
    type Output = (io::Result<usize>, Vec<B>);
    const OPCODE: u8 = opcode::Writev::CODE;

    fn byte_count(&self) -> Option<usize> {
        let total = self.bufs.iter().take(MAX_IOVECS).map(IoBuf::bytes_init);
        Some(total.sum::<usize>().min(MAX_RW))
    }

    fn sqe(&mut self, target: Target) -> squeue::Entry {
        self.prepare();
        let (ptr, len) = (self.iovs.0.as_ptr(), self.iovs.0.len() as u32);
        with_target!(target, t => opcode::Writev::new(t, ptr, len).offset(self.pos).build())
    }

    fn call(&mut self, fd: RawFd) -> io::Result<u32> {
        self.prepare();
        let (ptr, len) = (self.iovs.0.as_ptr(), self.iovs.0.len() as libc::c_int);
        // SAFETY: each iovec covers initialised bytes of a buffer we own.
        cvt_retry(|| unsafe { libc::pwritev64(fd, ptr, len, self.pos as i64) })
    }

    fn complete(self, result: io::Result<u32>) -> Self::Output {
        (result.map(|n| n as usize), self.bufs)
    }
}

// ---------------------------------------------------------------------------------------------
// sync, size, metadata
// ---------------------------------------------------------------------------------------------

/// `fsync`, or `fdatasync` when `data_only`.
pub(crate) struct Fsync {
    pub(crate) data_only: bool,
}

// SAFETY: the SQE names only the target.
unsafe impl Syscall for Fsync {
    type Output = io::Result<()>;
    const OPCODE: u8 = opcode::Fsync::CODE;

    fn sqe(&mut self, target: Target) -> squeue::Entry {
        let flags = if self.data_only {
            types::FsyncFlags::DATASYNC
        } else {
            types::FsyncFlags::empty()
        };
        with_target!(target, t => opcode::Fsync::new(t).flags(flags).build())
    }

    fn call(&mut self, fd: RawFd) -> io::Result<u32> {
        // SAFETY: plain calls on a descriptor we hold.
        cvt_retry(|| unsafe {
            if self.data_only {
                libc::fdatasync(fd) as isize
            } else {
                libc::fsync(fd) as isize
            }
        })
    }

    fn complete(self, result: io::Result<u32>) -> Self::Output {
        result.map(drop)
    }
}

/// `fallocate(fd, mode, offset, len)`.
pub(crate) struct Fallocate {
    pub(crate) mode: libc::c_int,
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

// SAFETY: the SQE names only the target.
unsafe impl Syscall for Fallocate {
    type Output = io::Result<()>;
    const OPCODE: u8 = opcode::Fallocate::CODE;

    fn sqe(&mut self, target: Target) -> squeue::Entry {
        with_target!(target, t => opcode::Fallocate::new(t, self.len)
            .offset(self.offset)
            .mode(self.mode)
            .build())
    }

    fn call(&mut self, fd: RawFd) -> io::Result<u32> {
        // SAFETY: a plain call on a descriptor we hold.
        cvt_retry(|| unsafe {
            libc::fallocate64(fd, self.mode, self.offset as i64, self.len as i64) as isize
        })
    }

    fn complete(self, result: io::Result<u32>) -> Self::Output {
        result.map(drop)
    }
}

/// `ftruncate(fd, len)`.
pub(crate) struct Ftruncate {
    pub(crate) len: u64,
}

// SAFETY: the SQE names only the target.
unsafe impl Syscall for Ftruncate {
    type Output = io::Result<()>;
    const OPCODE: u8 = opcode::Ftruncate::CODE;

    fn sqe(&mut self, target: Target) -> squeue::Entry {
        with_target!(target, t => opcode::Ftruncate::new(t, self.len).build())
    }

    fn call(&mut self, fd: RawFd) -> io::Result<u32> {
        // SAFETY: a plain call on a descriptor we hold.
        cvt_retry(|| unsafe { libc::ftruncate64(fd, self.len as i64) as isize })
    }

    fn complete(self, result: io::Result<u32>) -> Self::Output {
        result.map(drop)
    }
}

/// `statx(dirfd, path, flags, mask)`: of the target itself when `path` is empty and `flags`
/// has `AT_EMPTY_PATH`.
pub(crate) struct Statx {
    pub(crate) path: CPath,
    pub(crate) flags: libc::c_int,
    pub(crate) mask: libc::c_uint,
    buf: libc::statx,
}

impl Statx {
    pub(crate) fn new(path: CPath, flags: libc::c_int, mask: libc::c_uint) -> Self {
        Statx {
            path,
            flags,
            mask,
            // SAFETY: `statx` is plain integers; all zero is a valid value.
            buf: unsafe { mem::zeroed() },
        }
    }
}

// SAFETY: the SQE points at `self.path` (heap or static) and `self.buf` (a field of the
// operation, which does not move while the kernel holds it), and names only the target, as a
// plain descriptor (`STATX` takes no registered one).
unsafe impl Syscall for Statx {
    type Output = io::Result<libc::statx>;
    const OPCODE: u8 = opcode::Statx::CODE;

    fn sqe(&mut self, target: Target) -> squeue::Entry {
        opcode::Statx::new(
            types::Fd(target.raw),
            self.path.as_ptr(),
            (&mut self.buf as *mut libc::statx).cast::<types::statx>(),
        )
        .flags(self.flags)
        .mask(self.mask)
        .build()
    }

    fn call(&mut self, fd: RawFd) -> io::Result<u32> {
        // SAFETY: a valid C string and a `statx` buffer of our own.
        cvt_retry(|| unsafe {
            libc::statx(fd, self.path.as_ptr(), self.flags, self.mask, &mut self.buf) as isize
        })
    }

    fn complete(self, result: io::Result<u32>) -> Self::Output {
        result.map(|_| self.buf)
    }
}

// ---------------------------------------------------------------------------------------------
// names: unlink, rename, mkdir, symlink, link
// ---------------------------------------------------------------------------------------------

/// `unlinkat(AT_FDCWD, path, flags)` (`AT_REMOVEDIR` for a directory).
pub(crate) struct Unlink {
    pub(crate) path: CPath,
    pub(crate) flags: libc::c_int,
}

// SAFETY: the SQE points at `self.path` and names `AT_FDCWD`.
unsafe impl Syscall for Unlink {
    type Output = io::Result<()>;
    const OPCODE: u8 = opcode::UnlinkAt::CODE;

    fn sqe(&mut self, _: Target) -> squeue::Entry {
        opcode::UnlinkAt::new(types::Fd(libc::AT_FDCWD), self.path.as_ptr())
            .flags(self.flags)
            .build()
    }

    fn call(&mut self, _: RawFd) -> io::Result<u32> {
        // SAFETY: a valid C string.
        cvt_retry(|| unsafe {
            libc::unlinkat(libc::AT_FDCWD, self.path.as_ptr(), self.flags) as isize
        })
    }

    fn complete(self, result: io::Result<u32>) -> Self::Output {
        result.map(drop)
    }
}

/// `renameat(AT_FDCWD, from, AT_FDCWD, to)`.
pub(crate) struct Rename {
    pub(crate) from: CPath,
    pub(crate) to: CPath,
}

// SAFETY: the SQE points at `self.from` and `self.to` and names `AT_FDCWD`.
unsafe impl Syscall for Rename {
    type Output = io::Result<()>;
    const OPCODE: u8 = opcode::RenameAt::CODE;

    fn sqe(&mut self, _: Target) -> squeue::Entry {
        let cwd = types::Fd(libc::AT_FDCWD);
        opcode::RenameAt::new(cwd, self.from.as_ptr(), cwd, self.to.as_ptr()).build()
    }

    fn call(&mut self, _: RawFd) -> io::Result<u32> {
        // SAFETY: valid C strings.
        cvt_retry(|| unsafe {
            libc::renameat(
                libc::AT_FDCWD,
                self.from.as_ptr(),
                libc::AT_FDCWD,
                self.to.as_ptr(),
            ) as isize
        })
    }

    fn complete(self, result: io::Result<u32>) -> Self::Output {
        result.map(drop)
    }
}

/// `mkdirat(AT_FDCWD, path, mode)`.
pub(crate) struct MkDir {
    pub(crate) path: CPath,
    pub(crate) mode: libc::mode_t,
}

// SAFETY: the SQE points at `self.path` and names `AT_FDCWD`.
unsafe impl Syscall for MkDir {
    type Output = io::Result<()>;
    const OPCODE: u8 = opcode::MkDirAt::CODE;

    fn sqe(&mut self, _: Target) -> squeue::Entry {
        opcode::MkDirAt::new(types::Fd(libc::AT_FDCWD), self.path.as_ptr())
            .mode(self.mode)
            .build()
    }

    fn call(&mut self, _: RawFd) -> io::Result<u32> {
        // SAFETY: a valid C string.
        cvt_retry(|| unsafe {
            libc::mkdirat(libc::AT_FDCWD, self.path.as_ptr(), self.mode) as isize
        })
    }

    fn complete(self, result: io::Result<u32>) -> Self::Output {
        result.map(drop)
    }
}

/// `symlinkat(target, AT_FDCWD, link)`.
pub(crate) struct Symlink {
    pub(crate) target: CPath,
    pub(crate) link: CPath,
}

// SAFETY: the SQE points at `self.target` and `self.link` and names `AT_FDCWD`.
unsafe impl Syscall for Symlink {
    type Output = io::Result<()>;
    const OPCODE: u8 = opcode::SymlinkAt::CODE;

    fn sqe(&mut self, _: Target) -> squeue::Entry {
        opcode::SymlinkAt::new(
            types::Fd(libc::AT_FDCWD),
            self.target.as_ptr(),
            self.link.as_ptr(),
        )
        .build()
    }

    fn call(&mut self, _: RawFd) -> io::Result<u32> {
        // SAFETY: valid C strings.
        cvt_retry(|| unsafe {
            libc::symlinkat(self.target.as_ptr(), libc::AT_FDCWD, self.link.as_ptr()) as isize
        })
    }

    fn complete(self, result: io::Result<u32>) -> Self::Output {
        result.map(drop)
    }
}

/// `linkat(AT_FDCWD, from, AT_FDCWD, to, 0)`: a symbolic link `from` is linked itself, not
/// followed (as `std::fs::hard_link` does on Linux).
pub(crate) struct Link {
    pub(crate) from: CPath,
    pub(crate) to: CPath,
}

// SAFETY: the SQE points at `self.from` and `self.to` and names `AT_FDCWD`.
unsafe impl Syscall for Link {
    type Output = io::Result<()>;
    const OPCODE: u8 = opcode::LinkAt::CODE;

    fn sqe(&mut self, _: Target) -> squeue::Entry {
        let cwd = types::Fd(libc::AT_FDCWD);
        opcode::LinkAt::new(cwd, self.from.as_ptr(), cwd, self.to.as_ptr()).build()
    }

    fn call(&mut self, _: RawFd) -> io::Result<u32> {
        // SAFETY: valid C strings.
        cvt_retry(|| unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                self.from.as_ptr(),
                libc::AT_FDCWD,
                self.to.as_ptr(),
                0,
            ) as isize
        })
    }

    fn complete(self, result: io::Result<u32>) -> Self::Output {
        result.map(drop)
    }
}
