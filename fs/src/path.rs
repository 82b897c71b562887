//! Paths as the kernel takes them: NUL-terminated, owned by the operation.

use std::borrow::Cow;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::op::CPath;

/// `path` as an owned C string, which the operation keeps until its completion.
///
/// # Errors
/// [`InvalidInput`](io::ErrorKind::InvalidInput) if it holds a NUL byte (std's error).
pub(crate) fn cpath(path: &Path) -> io::Result<CPath> {
    CString::new(path.as_os_str().as_bytes())
        .map(Cow::Owned)
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "file name contained an unexpected NUL byte",
            )
        })
}
