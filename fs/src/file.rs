//! [`File`]: an open file whose reads, writes and syncs are ops on the ring.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ringloop_net::{IoBuf, IoBufMut};
use ringloop_runtime::{is_cancelled, SharedFd};

use crate::close;
use crate::metadata::{DirectIoAlignment, Metadata, DIO_MASK, METADATA_MASK};
use crate::op::{FileOp, Syscall};
use crate::open_options::OpenOptions;
use crate::ops;

/// An open file. Every operation is an op on the runtime's ring (`READ`, `WRITE`, `FSYNC`,
/// `STATX`, ...), or a job on the blocking pool where the runtime runs epoll or the kernel lacks
/// the opcode; results and errors are the same either way.
///
/// Reads and writes are *positional* (`pread`/`pwrite`): each names its offset, there is no
/// cursor, so one `File` serves many tasks at once (share it with `Rc`). Buffers are owned:
/// an operation takes the buffer and gives it back with the result, `(io::Result<usize>, buf)`,
/// as the sockets in `ringloop-net` do, so the kernel never writes into memory the caller could
/// have freed. Buffers must be `Send` (they may travel to a pool thread): `Vec<u8>`,
/// `Box<[u8]>`, `bytes::BytesMut`, `&'static [u8]`, [`AlignedBuf`](crate::AlignedBuf), and a
/// [`Slice`](crate::Slice) of any of them.
///
/// Dropping a `File` closes it without blocking the loop (a detached `CLOSE` on the ring, a
/// pool job on epoll) and loses `close`'s error, as dropping a `std::fs::File` does;
/// [`close`](Self::close) reports it. An operation still in flight keeps the descriptor open
/// until its completion.
///
/// An operation that runs on the blocking pool works on a duplicate of the descriptor (so that
/// a late pool job can never touch a number the loop has closed and reused), which it closes
/// when done; like any close of the file, that releases the process's POSIX record locks
/// (`fcntl(F_SETLK)`) on it. Use `flock` locks, which belong to the open file, with this type.
///
/// Reads of pages the page cache holds are first tried without blocking (`RWF_NOWAIT`): on
/// epoll that saves the hand-off to the pool, on an idle ring the loop iteration; what the
/// cache cannot answer goes to the ring or the pool as usual.
///
/// ```
/// use ringloop_fs::File;
///
/// # ringloop_runtime::Runtime::new().unwrap().block_on(async {
/// let path = std::env::temp_dir().join(format!("ringloop-doc-file-{}", std::process::id()));
/// let file = File::options().read(true).write(true).create(true).open(&path).await?;
/// let (r, _) = file.write_all_at(b"hello, ring".to_vec(), 0).await;
/// r?;
/// let (n, buf) = file.read_at(Vec::with_capacity(64), 7).await;
/// assert_eq!(&buf[..n?], b"ring");
/// file.close().await?;
/// # ringloop_fs::remove_file(&path).await?;
/// # Ok::<_, std::io::Error>(()) }).unwrap();
/// ```
///
/// # Compared with `tokio::fs::File` and aiofiles
///
/// tokio's and aiofiles' files have a cursor (`read`, `write`, `seek`) and run every call on a
/// thread pool; this one has positional calls only, runs them on the ring, and takes owned
/// buffers instead of borrowing `&mut [u8]`. tokio's `File` buffers writes and flushes them
/// later (a write's error may surface at the next call); here a write is done when its future
/// resolves, and its error is its own.
pub struct File {
    /// Always `Some` but while `close` or `try_into_std` take it apart.
    fd: Option<SharedFd>,
    /// Opened with `O_DIRECT`: the alignment the kernel reported, if it did.
    direct: Option<Option<DirectIoAlignment>>,
    /// Whether reads are tried without blocking first (`RWF_NOWAIT`); cleared by the first
    /// read that finds the file does not take it. Shared with the reads in flight.
    nowait: Arc<AtomicBool>,
}

impl File {
    /// Opens `path` for reading (`std::fs::File::open`).
    ///
    /// # Errors
    /// The kernel's error with its errno: `ENOENT`, `EACCES`, ...
    ///
    /// # Panics
    /// Outside a running ringloop runtime.
    pub async fn open(path: impl AsRef<Path>) -> io::Result<File> {
        OpenOptions::new().read(true).open(path).await
    }

    /// Opens `path` for writing, creating it or truncating it (`std::fs::File::create`).
    ///
    /// # Errors
    /// The kernel's error with its errno.
    ///
    /// # Panics
    /// Outside a running ringloop runtime.
    pub async fn create(path: impl AsRef<Path>) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .await
    }

    /// Creates `path` for reading and writing, failing with `EEXIST` if it exists
    /// (`std::fs::File::create_new`).
    ///
    /// # Errors
    /// The kernel's error with its errno.
    ///
    /// # Panics
    /// Outside a running ringloop runtime.
    pub async fn create_new(path: impl AsRef<Path>) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .await
    }

    /// A new [`OpenOptions`].
    pub fn options() -> OpenOptions {
        OpenOptions::new()
    }

    /// Wraps a descriptor just opened; for a direct-I/O file, asks the kernel for its alignment.
    pub(crate) async fn opened(fd: OwnedFd, direct: bool) -> io::Result<File> {
        let mut file = File {
            fd: Some(SharedFd::new(fd)),
            direct: None,
            nowait: Arc::new(AtomicBool::new(true)),
        };
        if direct {
            let alignment = match file.statx(DIO_MASK).await {
                Ok(st) => Metadata::from_statx(st).dio_alignment(),
                // The open is not undone for a failed query (there is then no check before
                // submission), but a cancellation still reaches the caller.
                Err(e) if is_cancelled(&e) => return Err(e),
                Err(_) => None,
            };
            file.direct = Some(alignment);
        }
        Ok(file)
    }

    /// Wraps an open `std::fs::File`. Where it was opened with `O_DIRECT` (the flag is read
    /// back with `fcntl`), the direct-I/O alignment is asked for with a synchronous `statx`.
    pub fn from_std(file: std::fs::File) -> File {
        let fd = OwnedFd::from(file);
        // SAFETY: a plain query on a descriptor we own.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        let direct = (flags >= 0 && flags & libc::O_DIRECT != 0).then(|| {
            // The blocking call, here: a `statx` of an open descriptor looks up no path.
            let mut op = ops::Statx::new(Cow::Borrowed(c""), libc::AT_EMPTY_PATH, DIO_MASK);
            let result = op.call(fd.as_raw_fd());
            op.complete(result)
                .ok()
                .and_then(|st| Metadata::from_statx(st).dio_alignment())
        });
        File {
            fd: Some(SharedFd::new(fd)),
            direct,
            nowait: Arc::new(AtomicBool::new(true)),
        }
    }

    /// The `std::fs::File` back, if no operation is in flight and no clone of
    /// [`shared_fd`](Self::shared_fd) is held; otherwise the `File` itself.
    ///
    /// # Errors
    /// `self`, unchanged, while the descriptor is shared.
    pub fn try_into_std(mut self) -> Result<std::fs::File, File> {
        let fd = self.fd.take().expect("a File holds its descriptor");
        match OwnedFd::try_from(fd) {
            Ok(owned) => Ok(std::fs::File::from(owned)),
            Err(fd) => {
                self.fd = Some(fd);
                Err(self)
            }
        }
    }

    /// A second `File` for the same open file (`dup`: they share the file's offset for
    /// `O_APPEND`, its flags and its locks), as `std::fs::File::try_clone`.
    ///
    /// # Errors
    /// `EMFILE` and the like from `fcntl(F_DUPFD_CLOEXEC)`.
    pub fn try_clone(&self) -> io::Result<File> {
        let fd = self.as_fd().try_clone_to_owned()?;
        Ok(File {
            fd: Some(SharedFd::new(fd)),
            direct: self.direct,
            nowait: Arc::new(AtomicBool::new(self.nowait.load(Ordering::Relaxed))),
        })
    }

    /// The descriptor, shared: code that starts its own ops on this file (a `send_file`, say)
    /// clones it into each op, which keeps the file open until that op's completion even if
    /// the `File` is closed or dropped meanwhile.
    pub fn shared_fd(&self) -> &SharedFd {
        self.fd.as_ref().expect("a File holds its descriptor")
    }

    /// Whether the file was opened with `O_DIRECT`.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// For a file opened with `O_DIRECT`, the alignment its reads and writes need, when the
    /// kernel reports it (Linux 6.1+); `None` otherwise. See [`DirectIoAlignment`].
    pub fn direct_io_alignment(&self) -> Option<DirectIoAlignment> {
        self.direct.flatten()
    }

    /// Checks a direct-I/O operation's alignment before it goes to the kernel (which would
    /// only say `EINVAL`): `spans` are the buffers' addresses and lengths.
    fn check_direct(
        &self,
        what: &str,
        read: bool,
        pos: u64,
        spans: impl Iterator<Item = (usize, usize)>,
    ) -> io::Result<()> {
        let Some(Some(a)) = self.direct else {
            return Ok(());
        };
        let offset = if read { a.read_offset } else { a.offset };
        let bad = |msg: String| {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("O_DIRECT {what}: {msg} (EINVAL from the kernel otherwise)"),
            ))
        };
        if offset > 1 && pos % offset as u64 != 0 {
            return bad(format!(
                "the file offset {pos} is not a multiple of {offset} bytes, the file's \
                 direct-I/O block size"
            ));
        }
        for (addr, len) in spans {
            if a.memory > 1 && addr % a.memory != 0 {
                return bad(format!(
                    "the buffer's address {addr:#x} is not aligned to {} bytes; use an AlignedBuf",
                    a.memory
                ));
            }
            if offset > 1 && len % offset != 0 {
                return bad(format!(
                    "the length {len} is not a multiple of {offset} bytes, the file's direct-I/O \
                     block size"
                ));
            }
        }
        Ok(())
    }

    /// Reads into `buf` from file offset `pos`, from the buffer's start up to its capacity
    /// (`pread`); `Ok(n)` says how many bytes came, and the buffer's length covers them.
    /// `Ok(0)` at or past the end of the file; fewer bytes than asked when the file ends
    /// sooner.
    ///
    /// ```
    /// # ringloop_runtime::Runtime::new().unwrap().block_on(async {
    /// # let path = std::env::temp_dir().join(format!("ringloop-doc-read-at-{}", std::process::id()));
    /// ringloop_fs::write(&path, b"0123456789").await?;
    /// let file = ringloop_fs::File::open(&path).await?;
    /// let (n, buf) = file.read_at(vec![0u8; 4], 8).await;
    /// assert_eq!(&buf[..n?], b"89"); // a short read: the file ends
    /// let (n, _) = file.read_at(vec![0u8; 4], 100).await;
    /// assert_eq!(n?, 0); // past the end
    /// # ringloop_fs::remove_file(&path).await?;
    /// # Ok::<_, std::io::Error>(()) }).unwrap();
    /// ```
    ///
    /// # Errors
    /// The kernel's error (`EBADF` if not open for reading, `EISDIR`, ...); `EINVAL` for an
    /// offset past `i64::MAX`; for an `O_DIRECT` file, see [`OpenOptions::direct`]. A
    /// cancellation of the task while the read is in flight is an error carrying
    /// `Cancelled` (`ringloop_runtime::is_cancelled`) only if the read did not happen; a read
    /// that completed first returns its bytes, and the cancellation reaches the next await.
    ///
    /// # Panics
    /// Outside a running ringloop runtime.
    pub async fn read_at<B: IoBufMut + Send>(
        &self,
        mut buf: B,
        pos: u64,
    ) -> (io::Result<usize>, B) {
        if let Err(e) = check_pos(pos) {
            return (Err(e), buf);
        }
        let span = (buf.stable_mut_ptr() as usize, buf.bytes_total());
        if let Err(e) = self.check_direct("read", true, pos, std::iter::once(span)) {
            return (Err(e), buf);
        }
        let nowait =
            (!self.is_direct() && crate::op::nowait_enabled()).then(|| self.nowait.clone());
        FileOp::on(self.shared_fd(), ops::Read::new(buf, pos, nowait)).await
    }

    /// Fills `buf`'s whole capacity from file offset `pos`, reading again after short reads.
    ///
    /// # Errors
    /// [`UnexpectedEof`](io::ErrorKind::UnexpectedEof) if the file ends first (the buffer then
    /// holds what was read: its length says how much); otherwise as
    /// [`read_at`](Self::read_at), whose error ends the loop.
    ///
    /// # Panics
    /// Outside a running ringloop runtime.
    pub async fn read_exact_at<B: IoBufMut + Send>(&self, buf: B, pos: u64) -> (io::Result<()>, B) {
        let total = buf.bytes_total();
        let mut buf = buf;
        let mut done = 0;
        while done < total {
            let (r, window) = self
                .read_at(buf.slice(done..total), pos.saturating_add(done as u64))
                .await;
            buf = window.into_inner();
            match r {
                Ok(0) => {
                    return (
                        Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "failed to fill whole buffer",
                        )),
                        buf,
                    )
                }
                Ok(n) => done += n,
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    /// Writes `buf`'s initialised bytes at file offset `pos` (`pwrite`); `Ok(n)` says how many
    /// went (possibly fewer: a full disk, a file size limit). On a file opened with
    /// [`append`](OpenOptions::append), the bytes go to the end whatever `pos` says (Linux's
    /// rule, on both backends).
    ///
    /// # Errors
    /// The kernel's error (`EBADF` if not open for writing, `ENOSPC`, `EFBIG`, ...), `EINVAL`
    /// for an offset past `i64::MAX`; for an `O_DIRECT` file, see [`OpenOptions::direct`].
    /// Cancellation as for [`read_at`](Self::read_at).
    ///
    /// # Panics
    /// Outside a running ringloop runtime.
    pub async fn write_at<B: IoBuf + Send>(&self, buf: B, pos: u64) -> (io::Result<usize>, B) {
        if let Err(e) = check_pos(pos) {
            return (Err(e), buf);
        }
        let span = (buf.stable_ptr() as usize, buf.bytes_init());
        if let Err(e) = self.check_direct("write", false, pos, std::iter::once(span)) {
            return (Err(e), buf);
        }
        FileOp::on(self.shared_fd(), ops::Write { buf, pos }).await
    }

    /// Writes all of `buf`'s initialised bytes at file offset `pos`, writing again after short
    /// writes.
    ///
    /// # Errors
    /// [`WriteZero`](io::ErrorKind::WriteZero) if a write took nothing; otherwise as
    /// [`write_at`](Self::write_at), whose error ends the loop (the bytes before it are
    /// written).
    ///
    /// # Panics
    /// Outside a running ringloop runtime.
    pub async fn write_all_at<B: IoBuf + Send>(&self, buf: B, pos: u64) -> (io::Result<()>, B) {
        let total = buf.bytes_init();
        let mut buf = buf;
        let mut done = 0;
        while done < total {
            let (r, window) = self
                .write_at(buf.slice(done..total), pos.saturating_add(done as u64))
                .await;
            buf = window.into_inner();
            match r {
                Ok(0) => {
                    return (
                        Err(io::Error::new(
                            io::ErrorKind::WriteZero,
                            "failed to write whole buffer",
                        )),
                        buf,
                    )
                }
                Ok(n) => done += n,
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    /// Reads from file offset `pos` into several buffers in one call (`preadv`): they are
    /// filled in order, each from its start up to its capacity; `Ok(n)` is the total. At most
    /// 1024 buffers take part (Linux's `UIO_MAXIOV`); the rest are left untouched.
    ///
    /// # Errors
    /// As [`read_at`](Self::read_at).
    ///
    /// # Panics
    /// Outside a running ringloop runtime.
    pub async fn read_vectored_at<B: IoBufMut + Send>(
        &self,
        mut bufs: Vec<B>,
        pos: u64,
    ) -> (io::Result<usize>, Vec<B>) {
        if let Err(e) = check_pos(pos) {
            return (Err(e), bufs);
        }
        let spans: Vec<_> = bufs
            .iter_mut()
            .take(ops::MAX_IOVECS)
            .map(|b| (b.stable_mut_ptr() as usize, b.bytes_total()))
            .collect();
        if let Err(e) = self.check_direct("vectored read", true, pos, spans.into_iter()) {
            return (Err(e), bufs);
        }
        FileOp::on(self.shared_fd(), ops::ReadVectored::new(bufs, pos)).await
    }

    /// Writes several buffers' initialised bytes at file offset `pos` in one call
    /// (`pwritev`), in order; `Ok(n)` is the total (possibly short). At most 1024 buffers take
    /// part (Linux's `UIO_MAXIOV`).
    ///
    /// # Errors
    /// As [`write_at`](Self::write_at).
    ///
    /// # Panics
    /// Outside a running ringloop runtime.
    pub async fn write_vectored_at<B: IoBuf + Send>(
        &self,
        bufs: Vec<B>,
        pos: u64,
    ) -> (io::Result<usize>, Vec<B>) {
        if let Err(e) = check_pos(pos) {
            return (Err(e), bufs);
        }
        let spans = bufs
            .iter()
            .take(ops::MAX_IOVECS)
            .map(|b| (b.stable_ptr() as usize, b.bytes_init()));
        if let Err(e) = self.check_direct("vectored write", false, pos, spans) {
            return (Err(e), bufs);
        }
        FileOp::on(self.shared_fd(), ops::WriteVectored::new(bufs, pos)).await
    }

    /// Flushes the file's data and metadata to the device (`fsync`, `IORING_OP_FSYNC`).
    ///
    /// # Errors
    /// The kernel's error (`EIO`, `ENOSPC`, ...).
    ///
    /// # Panics
    /// Outside a running ringloop runtime.
    pub async fn sync_all(&self) -> io::Result<()> {
        FileOp::on(self.shared_fd(), ops::Fsync { data_only: false }).await
    }

    /// Flushes the file's data, and only the metadata needed to read it back (`fdatasync`).
    ///
    /// # Errors
    /// The kernel's error.
    ///
    /// # Panics
    /// Outside a running ringloop runtime.
    pub async fn sync_data(&self) -> io::Result<()> {
        FileOp::on(self.shared_fd(), ops::Fsync { data_only: true }).await
    }

    async fn statx(&self, mask: libc::c_uint) -> io::Result<libc::statx> {
        let op = ops::Statx::new(
            Cow::Borrowed(c""),
            libc::AT_EMPTY_PATH | libc::AT_STATX_SYNC_AS_STAT,
            mask,
        );
        FileOp::on(self.shared_fd(), op).await
    }

    /// The file's metadata (`statx` of the descriptor, `IORING_OP_STATX`).
    ///
    /// # Errors
    /// The kernel's error.
    ///
    /// # Panics
    /// Outside a running ringloop runtime.
    pub async fn metadata(&self) -> io::Result<Metadata> {
        self.statx(METADATA_MASK).await.map(Metadata::from_statx)
    }

    /// Truncates or extends the file to `size` bytes (`ftruncate`; an extension reads as
    /// zeros). `IORING_OP_FTRUNCATE` needs Linux 6.9: on older kernels this runs on the
    /// blocking pool.
    ///
    /// # Errors
    /// The kernel's error (`EINVAL` if not open for writing, `EFBIG`, ...).
    ///
    /// # Panics
    /// Outside a running ringloop runtime.
    pub async fn set_len(&self, size: u64) -> io::Result<()> {
        check_pos(size)?;
        FileOp::on(self.shared_fd(), ops::Ftruncate { len: size }).await
    }

    /// Allocates disk space for `len` bytes from `offset` (`fallocate` with mode 0): later
    /// writes there cannot fail for lack of space, and the file grows to cover the range if it
    /// is shorter (its new bytes read as zeros).
    ///
    /// # Errors
    /// The kernel's error: `EOPNOTSUPP` where the file system cannot, `ENOSPC`, `EINVAL` for a
    /// zero `len`, ...
    ///
    /// # Panics
    /// Outside a running ringloop runtime.
    pub async fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        check_pos(offset)?;
        check_pos(len)?;
        let op = ops::Fallocate {
            mode: 0,
            offset,
            len,
        };
        FileOp::on(self.shared_fd(), op).await
    }

    /// Closes the file and reports `close`'s error (which dropping a `File` loses); the loop is
    /// not blocked meanwhile (`IORING_OP_CLOSE`, or the blocking pool).
    ///
    /// If an operation is still in flight with this file (one whose future was dropped), or a
    /// clone of [`shared_fd`](Self::shared_fd) is held elsewhere, the descriptor cannot be
    /// closed now: this returns `Ok(())` at once, and the descriptor is closed when the last
    /// holder lets go, with no error reported.
    ///
    /// # Errors
    /// `close`'s error (`EIO` and the like, from file systems that write back on close); a
    /// cancellation of the task while waiting (the file is closed anyway).
    ///
    /// # Panics
    /// Outside a running ringloop runtime.
    pub async fn close(mut self) -> io::Result<()> {
        let fd = self.fd.take().expect("a File holds its descriptor");
        match OwnedFd::try_from(fd) {
            Ok(owned) => close::close(owned).await,
            Err(shared) => {
                drop(shared);
                Ok(())
            }
        }
    }
}

/// Offsets past `i64::MAX` are `EINVAL` for `pread`; on the ring, `u64::MAX` would mean "the
/// file's current position" instead. Refused up front on both backends.
fn check_pos(pos: u64) -> io::Result<()> {
    if pos > i64::MAX as u64 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(())
}

impl Drop for File {
    fn drop(&mut self) {
        if let Some(fd) = self.fd.take() {
            // The last holder closes it; if an op in flight or a clone holds it, that is not us.
            if let Ok(owned) = OwnedFd::try_from(fd) {
                close::close_in_background(owned);
            }
        }
    }
}

impl AsFd for File {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor stays open while `self` lives (it holds a `SharedFd` clone).
        unsafe { BorrowedFd::borrow_raw(self.shared_fd().raw()) }
    }
}

impl AsRawFd for File {
    fn as_raw_fd(&self) -> RawFd {
        self.shared_fd().raw()
    }
}

impl From<std::fs::File> for File {
    fn from(file: std::fs::File) -> File {
        File::from_std(file)
    }
}

impl fmt::Debug for File {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("File")
            .field("fd", &self.fd.as_ref().map(SharedFd::raw))
            .field("direct", &self.direct)
            .finish()
    }
}

/// A `File` is a descriptor the sockets' `send_file` can hold while its op runs:
/// `stream.send_file(&file, offset, len)` sends the file's bytes without copying them through
/// user space (see [`ringloop_net::sock_sendfile`]).
impl ringloop_net::AsSharedFd for File {
    fn as_shared_fd(&self) -> &SharedFd {
        self.shared_fd()
    }
}
