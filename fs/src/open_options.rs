//! [`OpenOptions`]: how to open a file (std's builder, plus `direct`).

use std::io;
use std::path::Path;

use crate::file::File;
use crate::op::FileOp;
use crate::ops::Open;
use crate::path::cpath;

/// Options for opening a file: `std::fs::OpenOptions`'s builder, with the same rules and
/// errors, plus [`direct`](Self::direct) for `O_DIRECT`. The open itself is an `OPENAT` on the
/// ring (on the blocking pool on epoll). Every file is opened close-on-exec.
///
/// ```
/// use ringloop_fs::OpenOptions;
///
/// # ringloop_runtime::Runtime::new().unwrap().block_on(async {
/// let path = std::env::temp_dir().join(format!("ringloop-doc-open-{}", std::process::id()));
/// let log = OpenOptions::new().create(true).append(true).open(&path).await?;
/// let (n, _) = log.write_at(b"one line\n".as_slice(), 0).await;
/// assert_eq!(n?, 9);
/// log.close().await?;
/// # ringloop_fs::remove_file(&path).await?;
/// # Ok::<_, std::io::Error>(()) }).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct OpenOptions {
    read: bool,
    write: bool,
    append: bool,
    truncate: bool,
    create: bool,
    create_new: bool,
    direct: bool,
    mode: libc::mode_t,
    custom_flags: libc::c_int,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions::new()
    }
}

impl OpenOptions {
    /// All options off, mode `0o666` (less the umask) for files it creates.
    pub fn new() -> OpenOptions {
        OpenOptions {
            read: false,
            write: false,
            append: false,
            truncate: false,
            create: false,
            create_new: false,
            direct: false,
            mode: 0o666,
            custom_flags: 0,
        }
    }

    /// Open for reading.
    pub fn read(&mut self, read: bool) -> &mut Self {
        self.read = read;
        self
    }

    /// Open for writing.
    pub fn write(&mut self, write: bool) -> &mut Self {
        self.write = write;
        self
    }

    /// Open for appending (`O_APPEND`; implies writing). Every write then goes to the end of
    /// the file whatever offset [`File::write_at`] is given: that is Linux's `pwrite` on such a
    /// file, and io_uring's write does the same.
    pub fn append(&mut self, append: bool) -> &mut Self {
        self.append = append;
        self
    }

    /// Truncate the file to length 0 (`O_TRUNC`; needs writing).
    pub fn truncate(&mut self, truncate: bool) -> &mut Self {
        self.truncate = truncate;
        self
    }

    /// Create the file if it does not exist (`O_CREAT`; needs writing or appending).
    pub fn create(&mut self, create: bool) -> &mut Self {
        self.create = create;
        self
    }

    /// Create the file, failing with `EEXIST` if it exists (`O_CREAT | O_EXCL`; needs writing
    /// or appending). `create` and `truncate` are then ignored.
    pub fn create_new(&mut self, create_new: bool) -> &mut Self {
        self.create_new = create_new;
        self
    }

    /// Direct I/O (`O_DIRECT`): reads and writes bypass the page cache. The kernel then wants
    /// the buffer's address, the file offset and the length aligned (usually to the device's
    /// block size, 512 or 4096 bytes): use [`AlignedBuf`](crate::AlignedBuf). Where the kernel
    /// reports the alignment (Linux 6.1+), the [`File`] checks it before each operation and
    /// fails a misaligned one with an [`InvalidInput`](io::ErrorKind::InvalidInput) error that
    /// says which rule it broke; elsewhere the kernel's `EINVAL` comes back as it is.
    ///
    /// A file system without direct I/O (tmpfs before Linux 6.6, among others) refuses the
    /// open itself with `EINVAL`.
    pub fn direct(&mut self, direct: bool) -> &mut Self {
        self.direct = direct;
        self
    }

    /// The permission bits of a file this creates (default `0o666`; the umask applies).
    pub fn mode(&mut self, mode: u32) -> &mut Self {
        self.mode = mode as libc::mode_t;
        self
    }

    /// Extra `open(2)` flags (`O_NOATIME`, `O_SYNC`, `O_DIRECT`, ...). The access mode bits
    /// are ignored: [`read`](Self::read) and [`write`](Self::write) set those.
    pub fn custom_flags(&mut self, flags: i32) -> &mut Self {
        self.custom_flags = flags;
        self
    }

    /// The `open(2)` flags these options stand for (without `O_CLOEXEC`, which every open
    /// adds), or std's `EINVAL` for a combination it refuses.
    fn flags(&self) -> io::Result<libc::c_int> {
        let einval = || io::Error::from_raw_os_error(libc::EINVAL);
        let access = match (self.read, self.write, self.append) {
            (true, false, false) => libc::O_RDONLY,
            (false, true, false) => libc::O_WRONLY,
            (true, true, false) => libc::O_RDWR,
            (false, _, true) => libc::O_WRONLY | libc::O_APPEND,
            (true, _, true) => libc::O_RDWR | libc::O_APPEND,
            (false, false, false) => return Err(einval()),
        };
        match (self.write, self.append) {
            (true, false) => {}
            (false, false) => {
                if self.truncate || self.create || self.create_new {
                    return Err(einval());
                }
            }
            (_, true) => {
                if self.truncate && !self.create_new {
                    return Err(einval());
                }
            }
        }
        let creation = match (self.create, self.truncate, self.create_new) {
            (false, false, false) => 0,
            (true, false, false) => libc::O_CREAT,
            (false, true, false) => libc::O_TRUNC,
            (true, true, false) => libc::O_CREAT | libc::O_TRUNC,
            (_, _, true) => libc::O_CREAT | libc::O_EXCL,
        };
        let direct = if self.direct { libc::O_DIRECT } else { 0 };
        Ok(access | creation | direct | (self.custom_flags & !libc::O_ACCMODE))
    }

    /// Opens `path` with these options.
    ///
    /// # Errors
    /// The kernel's error with its errno (`ENOENT`, `EACCES`, `EISDIR`, `EEXIST`, ...); `EINVAL`
    /// for a combination std refuses too (no access mode; `create`, `create_new` or `truncate`
    /// without writing; `truncate` with `append`); [`InvalidInput`](io::ErrorKind::InvalidInput)
    /// for a path with a NUL byte.
    ///
    /// # Panics
    /// Outside a running ringloop runtime.
    pub async fn open(&self, path: impl AsRef<Path>) -> io::Result<File> {
        let flags = self.flags()?;
        let path = cpath(path.as_ref())?;
        let fd = FileOp::path(Open {
            path,
            flags,
            mode: self.mode,
        })
        .await?;
        File::opened(fd, flags & libc::O_DIRECT != 0).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(f: impl FnOnce(&mut OpenOptions) -> &mut OpenOptions) -> io::Result<i32> {
        let mut o = OpenOptions::new();
        f(&mut o);
        o.flags()
    }

    #[test]
    fn flags_follow_std() {
        assert_eq!(flags(|o| o.read(true)).unwrap(), libc::O_RDONLY);
        assert_eq!(
            flags(|o| o.write(true).create(true).truncate(true)).unwrap(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC
        );
        assert_eq!(
            flags(|o| o.append(true).create_new(true)).unwrap(),
            libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_EXCL
        );
        assert_eq!(
            flags(|o| o
                .read(true)
                .direct(true)
                .custom_flags(libc::O_WRONLY | libc::O_NOATIME))
            .unwrap(),
            libc::O_RDONLY | libc::O_DIRECT | libc::O_NOATIME
        );
        for bad in [
            flags(|o| o),
            flags(|o| o.read(true).create(true)),
            flags(|o| o.read(true).truncate(true)),
            flags(|o| o.append(true).truncate(true)),
        ] {
            assert_eq!(bad.unwrap_err().raw_os_error(), Some(libc::EINVAL));
        }
    }
}
