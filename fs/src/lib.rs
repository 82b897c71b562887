//! Files for ringloop: [`File`] with positional reads and writes on owned buffers, and the
//! usual free functions ([`read`], [`write()`], [`rename`], [`create_dir_all`], ...), as easy as
//! `tokio::fs` but without a thread hand-off per call. Re-exported as `ringloop::fs`.
//!
//! On io_uring every call is an op on the runtime's ring: `OPENAT`, `READ`, `WRITE`, `READV`,
//! `WRITEV`, `FSYNC`, `STATX`, `FALLOCATE`, `FTRUNCATE`, `UNLINKAT`, `RENAMEAT`, `MKDIRAT`,
//! `LINKAT`, `SYMLINKAT`, `CLOSE`. On the epoll backend, and for an opcode the running kernel
//! lacks (probed once per process; `FTRUNCATE` needs 6.9, the name ops 5.11 and 5.15), the same
//! call runs on the blocking pool ([`spawn_blocking`](ringloop_runtime::spawn_blocking)), with
//! the same results and the same errno.
//!
//! ```
//! use ringloop_fs::{self as fs, File};
//!
//! ringloop_runtime::Runtime::new().unwrap().block_on(async {
//!     let dir = std::env::temp_dir().join(format!("ringloop-doc-lib-{}", std::process::id()));
//!     fs::create_dir_all(dir.join("logs")).await?;
//!     let path = dir.join("logs/app.log");
//!     fs::write(&path, "started\n").await?;
//!
//!     // Positional I/O with owned buffers: the buffer comes back with the result.
//!     let file = File::open(&path).await?;
//!     let (n, buf) = file.read_at(Vec::with_capacity(4096), 0).await;
//!     assert_eq!(&buf[..n?], b"started\n");
//!     file.close().await?;
//!
//!     assert_eq!(fs::read_to_string(&path).await?, "started\n");
//!     fs::remove_file(&path).await?;
//!     fs::remove_dir(dir.join("logs")).await?;
//!     fs::remove_dir(&dir).await
//! }).unwrap();
//! ```
//!
//! # Compared with `tokio::fs`, `std::fs` and aiofiles
//!
//! | tokio / std / aiofiles | ringloop |
//! |---|---|
//! | `tokio::fs::read`, `write`, `read_to_string` | [`read`], [`write()`], [`read_to_string`] |
//! | `tokio::fs::File::open` / `create`, `OpenOptions` | [`File::open`] / [`File::create`], [`OpenOptions`] (+ [`direct`](OpenOptions::direct)) |
//! | `file.seek(..)` + `file.read(&mut buf)` | [`file.read_at(buf, pos)`](File::read_at) → `(io::Result<usize>, buf)` |
//! | `read_exact` / `write_all` after a seek | [`read_exact_at`](File::read_exact_at) / [`write_all_at`](File::write_all_at) |
//! | `std::os::unix::fs::FileExt::read_at` | the same name, async, owned buffer |
//! | `file.sync_all()` / `sync_data()` / `set_len()` / `metadata()` | the same names |
//! | `aiofiles.os.remove`, `rename`, `mkdir`, `makedirs` | [`remove_file`], [`rename`], [`create_dir`], [`create_dir_all`] |
//! | dropping a file | the same (closed without blocking the loop), or [`File::close`] for its error |
//!
//! What differs: no cursor (every read and write names its offset, so one `File` serves many
//! tasks at once); owned buffers instead of `&mut [u8]`, which must be `Send`; writes are not
//! buffered (a write is done, or failed, when its future resolves); and a cancelled task's
//! file op is cancelled in the kernel where it has not run yet, with its real result delivered
//! where it has (see [`File::read_at`]).
//!
//! # Memory safety
//!
//! An operation owns everything the kernel reads or writes for it (buffers, paths, iovecs, the
//! `statx` buffer) and a handle that keeps its descriptor open, until its completion: dropping
//! a future in flight leaves them to the runtime's op table (ring) or to the pool job, never
//! to be freed under the kernel.

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod aligned;
mod close;
mod file;
mod metadata;
mod op;
mod open_options;
mod ops;
mod path;

use std::io;
use std::path::{Path, PathBuf};

pub use aligned::AlignedBuf;
pub use file::File;
pub use metadata::{DirectIoAlignment, FileType, Metadata};
pub use open_options::OpenOptions;
pub use ringloop_net::{IoBuf, IoBufMut, Slice};

use metadata::METADATA_MASK;
use op::FileOp;
use path::cpath;

/// Reads a whole file (`std::fs::read`, `tokio::fs::read`): open, `statx` for its size, reads
/// until the end, close.
///
/// # Errors
/// The kernel's error with its errno (`ENOENT`, `EACCES`, `EISDIR`, ...).
///
/// # Panics
/// Outside a running ringloop runtime.
pub async fn read(path: impl AsRef<Path>) -> io::Result<Vec<u8>> {
    let file = File::open(path).await?;
    // Only a hint: a file whose size statx cannot tell (`/proc`) is read to its end all the
    // same; but a cancellation is not a size.
    let size = match file.metadata().await {
        Ok(m) => m.len(),
        Err(e) if ringloop_runtime::is_cancelled(&e) => return Err(e),
        Err(_) => 0,
    };
    // One byte more than the size, so that a file read whole shows its end with a short read
    // rather than needing a second, zero-byte one in the common case (the final check below
    // still confirms it).
    let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0).saturating_add(1).max(64));
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(buf.capacity().max(8192));
        }
        let pos = buf.len();
        let (r, window) = file.read_at(buf.slice(pos..), pos as u64).await;
        buf = window.into_inner();
        if r? == 0 {
            break;
        }
    }
    file.close().await?;
    Ok(buf)
}

/// Reads a whole file as UTF-8 (`std::fs::read_to_string`).
///
/// # Errors
/// As [`read`]; [`InvalidData`](io::ErrorKind::InvalidData) if it is not UTF-8.
///
/// # Panics
/// Outside a running ringloop runtime.
pub async fn read_to_string(path: impl AsRef<Path>) -> io::Result<String> {
    String::from_utf8(read(path).await?).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )
    })
}

/// Writes `contents` as the whole file, creating or truncating it (`std::fs::write`). The
/// bytes are copied into an owned buffer first (as `tokio::fs::write` does); to write a buffer
/// you own without the copy, use [`File::write_all_at`].
///
/// # Errors
/// The kernel's error with its errno.
///
/// # Panics
/// Outside a running ringloop runtime.
pub async fn write(path: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> io::Result<()> {
    let contents = contents.as_ref().to_vec();
    let file = File::create(path).await?;
    let (r, _) = file.write_all_at(contents, 0).await;
    r?;
    file.close().await
}

/// Removes a file or symbolic link (`unlinkat`, `IORING_OP_UNLINKAT`: Linux 5.11).
///
/// # Errors
/// The kernel's error: `ENOENT`, `EISDIR` for a directory, `EACCES`, ...
///
/// # Panics
/// Outside a running ringloop runtime.
pub async fn remove_file(path: impl AsRef<Path>) -> io::Result<()> {
    let path = cpath(path.as_ref())?;
    FileOp::path(ops::Unlink { path, flags: 0 }).await
}

/// Removes an empty directory (`unlinkat(AT_REMOVEDIR)`: Linux 5.11).
///
/// # Errors
/// The kernel's error: `ENOENT`, `ENOTEMPTY`, `ENOTDIR`, ...
///
/// # Panics
/// Outside a running ringloop runtime.
pub async fn remove_dir(path: impl AsRef<Path>) -> io::Result<()> {
    let path = cpath(path.as_ref())?;
    let flags = libc::AT_REMOVEDIR;
    FileOp::path(ops::Unlink { path, flags }).await
}

/// Renames `from` to `to`, replacing `to` if it exists (`renameat`, `IORING_OP_RENAMEAT`:
/// Linux 5.11).
///
/// # Errors
/// The kernel's error: `ENOENT`, `EXDEV` across file systems, `EISDIR`, ...
///
/// # Panics
/// Outside a running ringloop runtime.
pub async fn rename(from: impl AsRef<Path>, to: impl AsRef<Path>) -> io::Result<()> {
    let from = cpath(from.as_ref())?;
    let to = cpath(to.as_ref())?;
    FileOp::path(ops::Rename { from, to }).await
}

/// Creates a directory, mode `0o777` less the umask (`mkdirat`, `IORING_OP_MKDIRAT`: Linux
/// 5.15).
///
/// # Errors
/// The kernel's error: `EEXIST`, `ENOENT` for a missing parent, ...
///
/// # Panics
/// Outside a running ringloop runtime.
pub async fn create_dir(path: impl AsRef<Path>) -> io::Result<()> {
    let path = cpath(path.as_ref())?;
    FileOp::path(ops::MkDir { path, mode: 0o777 }).await
}

/// Creates a directory and every missing parent (`std::fs::create_dir_all`); a directory that
/// exists already, or that another task creates meanwhile, is fine.
///
/// # Errors
/// The kernel's error for the first directory that could not be made (`EEXIST` if a file is in
/// the way, `EACCES`, ...).
///
/// # Panics
/// Outside a running ringloop runtime.
pub async fn create_dir_all(path: impl AsRef<Path>) -> io::Result<()> {
    let path = path.as_ref();
    if path.as_os_str().is_empty() {
        return Ok(());
    }
    // Walk up to the first directory that exists or can be made, then make the rest on the
    // way down.
    let mut missing: Vec<PathBuf> = Vec::new();
    let mut here = path;
    loop {
        match create_dir(here).await {
            Ok(()) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(here.to_path_buf());
                match here.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => here = parent,
                    _ => return Err(e),
                }
            }
            Err(e) => {
                if is_dir(here).await? {
                    break;
                }
                return Err(e);
            }
        }
    }
    // `here` exists now; `missing` holds the directories below it, deepest first.
    for dir in missing.iter().rev() {
        if let Err(e) = create_dir(dir).await {
            // Made meanwhile by someone else: fine.
            if !is_dir(dir).await? {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Whether `path` is a directory; an error only for a cancellation (which must not be taken
/// for "no").
async fn is_dir(path: &Path) -> io::Result<bool> {
    match metadata(path).await {
        Ok(m) => Ok(m.is_dir()),
        Err(e) if ringloop_runtime::is_cancelled(&e) => Err(e),
        Err(_) => Ok(false),
    }
}

/// Makes `link` a new name for the file `original` (`linkat`, `IORING_OP_LINKAT`: Linux 5.15).
/// A symbolic link `original` is linked itself, not followed, as `std::fs::hard_link` does.
///
/// # Errors
/// The kernel's error: `EEXIST`, `ENOENT`, `EXDEV`, `EPERM` for a directory, ...
///
/// # Panics
/// Outside a running ringloop runtime.
pub async fn hard_link(original: impl AsRef<Path>, link: impl AsRef<Path>) -> io::Result<()> {
    let from = cpath(original.as_ref())?;
    let to = cpath(link.as_ref())?;
    FileOp::path(ops::Link { from, to }).await
}

/// Makes `link` a symbolic link to `original` (`symlinkat`, `IORING_OP_SYMLINKAT`: Linux
/// 5.15), as `std::os::unix::fs::symlink`. `original` is stored as given: a relative one is
/// resolved from the link's directory when it is followed.
///
/// # Errors
/// The kernel's error: `EEXIST`, `ENOENT` for a missing directory of `link`, ...
///
/// # Panics
/// Outside a running ringloop runtime.
pub async fn symlink(original: impl AsRef<Path>, link: impl AsRef<Path>) -> io::Result<()> {
    let target = cpath(original.as_ref())?;
    let link = cpath(link.as_ref())?;
    FileOp::path(ops::Symlink { target, link }).await
}

/// The metadata of `path`, following symbolic links (`statx`, `IORING_OP_STATX`).
///
/// # Errors
/// The kernel's error: `ENOENT`, `EACCES`, ...
///
/// # Panics
/// Outside a running ringloop runtime.
pub async fn metadata(path: impl AsRef<Path>) -> io::Result<Metadata> {
    statx_path(path.as_ref(), 0).await
}

/// The metadata of `path` itself: a symbolic link is described, not followed
/// (`AT_SYMLINK_NOFOLLOW`).
///
/// # Errors
/// The kernel's error: `ENOENT`, `EACCES`, ...
///
/// # Panics
/// Outside a running ringloop runtime.
pub async fn symlink_metadata(path: impl AsRef<Path>) -> io::Result<Metadata> {
    statx_path(path.as_ref(), libc::AT_SYMLINK_NOFOLLOW).await
}

async fn statx_path(path: &Path, flags: libc::c_int) -> io::Result<Metadata> {
    let path = cpath(path)?;
    let op = ops::Statx::new(path, flags | libc::AT_STATX_SYNC_AS_STAT, METADATA_MASK);
    FileOp::path(op).await.map(Metadata::from_statx)
}
