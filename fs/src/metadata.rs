//! [`Metadata`]: what `statx` says about a file, with `std::fs::Metadata`'s most used methods.

use std::fmt;
use std::fs::Permissions;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `statx`'s mask for [`Metadata`]: the basic `stat` fields and the creation time.
pub(crate) const METADATA_MASK: libc::c_uint = libc::STATX_BASIC_STATS | libc::STATX_BTIME;

/// `STATX_DIO_READ_ALIGN` (Linux 6.14): a separate, possibly smaller, offset alignment for
/// direct reads. Older kernels ignore the bit.
const STATX_DIO_READ_ALIGN: libc::c_uint = 0x0002_0000;

/// `statx`'s mask for [`DirectIoAlignment`].
pub(crate) const DIO_MASK: libc::c_uint = libc::STATX_DIOALIGN | STATX_DIO_READ_ALIGN;

/// Information about a file, from `statx(2)`: returned by [`File::metadata`](crate::File::metadata),
/// [`metadata`](crate::metadata) and [`symlink_metadata`](crate::symlink_metadata).
///
/// The methods mirror `std::fs::Metadata` and its `MetadataExt` (`len`, `is_file`,
/// `permissions`, `modified`, `mode`, `ino`, ...), so code moves over unchanged.
///
/// ```
/// # ringloop_runtime::Runtime::new().unwrap().block_on(async {
/// let path = std::env::temp_dir().join(format!("ringloop-doc-meta-{}", std::process::id()));
/// ringloop_fs::write(&path, b"12345").await?;
/// let meta = ringloop_fs::metadata(&path).await?;
/// assert_eq!(meta.len(), 5);
/// assert!(meta.is_file() && !meta.is_dir());
/// assert!(meta.modified()? <= std::time::SystemTime::now());
/// ringloop_fs::remove_file(&path).await?;
/// # Ok::<_, std::io::Error>(()) }).unwrap();
/// ```
#[derive(Clone, Copy)]
pub struct Metadata {
    st: libc::statx,
}

impl Metadata {
    pub(crate) fn from_statx(st: libc::statx) -> Metadata {
        Metadata { st }
    }

    /// The size in bytes.
    pub fn len(&self) -> u64 {
        self.st.stx_size
    }

    /// Whether the size is zero (what clippy asks of a type with `len`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file's type.
    pub fn file_type(&self) -> FileType {
        FileType {
            mode: u32::from(self.st.stx_mode),
        }
    }

    /// Whether this is a regular file.
    pub fn is_file(&self) -> bool {
        self.file_type().is_file()
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.file_type().is_dir()
    }

    /// Whether this is a symbolic link (only from [`symlink_metadata`](crate::symlink_metadata):
    /// the other calls follow links).
    pub fn is_symlink(&self) -> bool {
        self.file_type().is_symlink()
    }

    /// The permission bits, as `std::fs::Permissions` (`readonly()`, `mode()` through
    /// `PermissionsExt`).
    pub fn permissions(&self) -> Permissions {
        Permissions::from_mode(self.mode())
    }

    /// The whole `st_mode`: file type and permission bits.
    pub fn mode(&self) -> u32 {
        u32::from(self.st.stx_mode)
    }

    /// The last modification time.
    ///
    /// # Errors
    /// [`Unsupported`](io::ErrorKind::Unsupported) if the file system does not report it.
    pub fn modified(&self) -> io::Result<SystemTime> {
        self.time(libc::STATX_MTIME, self.st.stx_mtime, "modification")
    }

    /// The last access time.
    ///
    /// # Errors
    /// [`Unsupported`](io::ErrorKind::Unsupported) if the file system does not report it.
    pub fn accessed(&self) -> io::Result<SystemTime> {
        self.time(libc::STATX_ATIME, self.st.stx_atime, "access")
    }

    /// The creation (birth) time.
    ///
    /// # Errors
    /// [`Unsupported`](io::ErrorKind::Unsupported) if the file system does not record it (tmpfs
    /// before Linux 6.x, for one), as `std::fs::Metadata::created` does.
    pub fn created(&self) -> io::Result<SystemTime> {
        self.time(libc::STATX_BTIME, self.st.stx_btime, "creation")
    }

    /// The last status change time (`ctime`).
    ///
    /// # Errors
    /// [`Unsupported`](io::ErrorKind::Unsupported) if the file system does not report it.
    pub fn changed(&self) -> io::Result<SystemTime> {
        self.time(libc::STATX_CTIME, self.st.stx_ctime, "status change")
    }

    fn time(
        &self,
        bit: libc::c_uint,
        t: libc::statx_timestamp,
        what: &str,
    ) -> io::Result<SystemTime> {
        if self.st.stx_mask & bit == 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("the file system does not report a {what} time for this file"),
            ));
        }
        Ok(system_time(t.tv_sec, t.tv_nsec))
    }

    /// The inode number.
    pub fn ino(&self) -> u64 {
        self.st.stx_ino
    }

    /// The device the file lives on (`st_dev`).
    pub fn dev(&self) -> u64 {
        libc::makedev(self.st.stx_dev_major, self.st.stx_dev_minor)
    }

    /// The device a device file stands for (`st_rdev`).
    pub fn rdev(&self) -> u64 {
        libc::makedev(self.st.stx_rdev_major, self.st.stx_rdev_minor)
    }

    /// The number of hard links.
    pub fn nlink(&self) -> u64 {
        u64::from(self.st.stx_nlink)
    }

    /// The owner's user id.
    pub fn uid(&self) -> u32 {
        self.st.stx_uid
    }

    /// The owner's group id.
    pub fn gid(&self) -> u32 {
        self.st.stx_gid
    }

    /// The preferred I/O block size.
    pub fn blksize(&self) -> u64 {
        u64::from(self.st.stx_blksize)
    }

    /// The 512-byte blocks allocated.
    pub fn blocks(&self) -> u64 {
        self.st.stx_blocks
    }

    /// The alignment direct I/O (`O_DIRECT`) needs on this file, when the kernel says
    /// (`STATX_DIOALIGN`, Linux 6.1); see [`DirectIoAlignment`]. This metadata carries it only
    /// if it was asked for: from a [`File`](crate::File) opened with `O_DIRECT`, use
    /// [`File::direct_io_alignment`](crate::File::direct_io_alignment).
    pub(crate) fn dio_alignment(&self) -> Option<DirectIoAlignment> {
        if self.st.stx_mask & libc::STATX_DIOALIGN == 0 {
            return None;
        }
        let offset = self.st.stx_dio_offset_align as usize;
        let read_offset = match self.st.stx_dio_read_offset_align {
            n if self.st.stx_mask & STATX_DIO_READ_ALIGN != 0 && n != 0 => n as usize,
            _ => offset,
        };
        Some(DirectIoAlignment {
            memory: self.st.stx_dio_mem_align as usize,
            offset,
            read_offset,
        })
    }
}

fn system_time(sec: i64, nsec: u32) -> SystemTime {
    let nanos = Duration::from_nanos(u64::from(nsec));
    if sec >= 0 {
        UNIX_EPOCH + Duration::from_secs(sec as u64) + nanos
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + nanos
    }
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metadata")
            .field("file_type", &self.file_type())
            .field("len", &self.len())
            .field("mode", &format_args!("{:#o}", self.mode()))
            .field("ino", &self.ino())
            .field("modified", &self.modified().ok())
            .finish_non_exhaustive()
    }
}

/// A file's type, from [`Metadata::file_type`] (`std::fs::FileType`'s methods and
/// `FileTypeExt`'s).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileType {
    mode: u32,
}

impl FileType {
    fn is(&self, kind: libc::mode_t) -> bool {
        self.mode & libc::S_IFMT == kind
    }

    /// A regular file.
    pub fn is_file(&self) -> bool {
        self.is(libc::S_IFREG)
    }

    /// A directory.
    pub fn is_dir(&self) -> bool {
        self.is(libc::S_IFDIR)
    }

    /// A symbolic link.
    pub fn is_symlink(&self) -> bool {
        self.is(libc::S_IFLNK)
    }

    /// A block device.
    pub fn is_block_device(&self) -> bool {
        self.is(libc::S_IFBLK)
    }

    /// A character device.
    pub fn is_char_device(&self) -> bool {
        self.is(libc::S_IFCHR)
    }

    /// A FIFO (named pipe).
    pub fn is_fifo(&self) -> bool {
        self.is(libc::S_IFIFO)
    }

    /// A Unix socket.
    pub fn is_socket(&self) -> bool {
        self.is(libc::S_IFSOCK)
    }
}

impl fmt::Debug for FileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.mode & libc::S_IFMT {
            libc::S_IFREG => "file",
            libc::S_IFDIR => "dir",
            libc::S_IFLNK => "symlink",
            libc::S_IFBLK => "block device",
            libc::S_IFCHR => "char device",
            libc::S_IFIFO => "fifo",
            libc::S_IFSOCK => "socket",
            _ => "unknown",
        };
        f.write_str(name)
    }
}

/// The alignment that direct I/O (`O_DIRECT`) needs on a file, as the kernel reports it
/// (`statx`'s `STATX_DIOALIGN`, Linux 6.1 and later; `STATX_DIO_READ_ALIGN`, 6.14).
///
/// A direct read or write whose buffer address is not a multiple of `memory`, or whose file
/// offset or length is not a multiple of `offset` (`read_offset` for reads), fails with
/// `EINVAL`. [`File`](crate::File) checks this before submitting and says which rule was
/// broken; [`AlignedBuf`](crate::AlignedBuf) gives buffers that satisfy `memory`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectIoAlignment {
    /// The alignment of the buffer's address in memory, in bytes.
    pub memory: usize,
    /// The alignment of file offsets and lengths of writes (and reads, unless `read_offset`
    /// says less), in bytes.
    pub offset: usize,
    /// The alignment of file offsets and lengths of reads, in bytes (the same as `offset`
    /// unless the kernel reports a separate one).
    pub read_offset: usize,
}
