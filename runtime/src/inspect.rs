//! The live view: a running runtime's task tree, stats and op table, served on a Unix socket to
//! `ringloop-ps` (or anything that speaks the protocol below), from outside the process.
//!
//! Off unless asked for: [`Builder::inspect`](crate::Builder::inspect) (or
//! [`inspect_socket`](crate::Builder::inspect_socket) for a path of your own), or the
//! environment variable `RINGLOOP_INSPECT=1` for every runtime the process builds.
//!
//! ```
//! let dir = std::env::temp_dir().join(format!("ringloop-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("rt.sock");
//! let rt = ringloop_runtime::Runtime::builder().inspect_socket(&path).build().unwrap();
//! assert_eq!(rt.inspect_socket(), Some(path.as_path()));
//! drop(rt);
//! assert!(!path.exists(), "removed with its runtime");
//! # std::fs::remove_dir(&dir).unwrap();
//! ```
//!
//! # Where
//!
//! `<dir>/<pid>-<n>.sock`, `n` counting the inspected runtimes of the process from 0 (with
//! [`Shards`](crate::Shards), one per shard). `<dir>` is [`socket_dir`]:
//! `$RINGLOOP_INSPECT_DIR`, else `$XDG_RUNTIME_DIR/ringloop`, else `/tmp/ringloop-<uid>`. The
//! directory is made with mode 0700 and must be a directory of ours that nobody else can
//! enter (a squatted `/tmp` path is refused); each socket has mode 0600. The socket is removed
//! when its runtime is dropped; `ringloop-ps` ignores sockets whose process is gone.
//!
//! # Who may connect
//!
//! Only processes of the same user: besides the modes above (which root ignores), every
//! connection's credentials are read with `SO_PEERCRED`, and a peer whose uid is not this
//! process's effective uid is refused (one line, `error: ...`, then the connection is closed).
//!
//! # Protocol
//!
//! One request per connection: a line `<command> [json]`, then the answer, then the server
//! closes. Commands:
//!
//! | command   | text answer                                   | `json` answer key |
//! |-----------|-----------------------------------------------|-------------------|
//! | `tree`    | [`TaskTree::to_text`](crate::TaskTree::to_text) | `tree` ([`TaskTree::to_json`](crate::TaskTree::to_json)) |
//! | `ps`      | [`TaskTree::ps_table`](crate::TaskTree::ps_table) | `tree`          |
//! | `stats`   | `name value` lines of [`RuntimeStats`](crate::RuntimeStats) | `stats` |
//! | `ops`     | the op table: per op kind, the tasks waiting on it now and its ops' counts and latencies ([`OpKindStats`](crate::OpKindStats)) | `ops` |
//! | `metrics` | Prometheus text, labelled `runtime="<pid>-<n>"`, no header (see [`metrics`](crate::metrics)) | - (always text) |
//! | `info`    | the header line alone                         | `runtime`         |
//!
//! A text answer starts with a header line, `# ringloop <pid>-<n> thread '<name>' <backend>:
//! <tasks> tasks, snapshot <ms> ms`; a JSON answer is an object with `runtime` (the same facts:
//! `pid`, `id`, `thread`, `backend`, `socket`, `snapshot_us`) and the command's key. An
//! unknown command gets `error: ...`.
//!
//! # What it costs
//!
//! Nothing while nobody connects: the listener waits in one poll op on the loop's own driver
//! (io_uring `POLL_ADD`, an epoll registration), and the loop checks one flag per iteration.
//! A connection is served by the loop itself, between iterations, with non-blocking system
//! calls: no task, no thread. Each request is bounded: at most 8 connections at once (others are
//! told `error: busy`), a request line of at most 256 bytes, 10 s per connection, one snapshot
//! per loop iteration, and at most 1 MiB written per connection per iteration (the rest when the
//! socket has room again). A snapshot is the task tree, walked once; its cost in loop time is in
//! each answer's header (`snapshot`).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use io_uring::{opcode, squeue, types};

use crate::driver::errno::is_interrupted;
use crate::driver::{FdTarget, Interest, OpKind, SharedFd};

/// The directory the live view's sockets go in: `$RINGLOOP_INSPECT_DIR`, else
/// `$XDG_RUNTIME_DIR/ringloop`, else `/tmp/ringloop-<uid>` (see the [module docs](self)).
/// `ringloop-ps` looks in the same place.
pub fn socket_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RINGLOOP_INSPECT_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("ringloop");
    }
    // SAFETY: `geteuid` cannot fail.
    let uid = unsafe { libc::geteuid() };
    PathBuf::from(format!("/tmp/ringloop-{uid}"))
}

/// Whether `RINGLOOP_INSPECT` asks every runtime to serve the live view (`1`, `true`, `yes`
/// or `on`).
pub(crate) fn env_asks() -> bool {
    std::env::var("RINGLOOP_INSPECT").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
}

fn lstat(path: &Path) -> io::Result<libc::stat> {
    let c = c_path(path)?;
    // SAFETY: an all-zero `stat` is a valid value for `lstat` to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a live, writable `stat`.
    cvt(unsafe { libc::lstat(c.as_ptr(), &mut st) })?;
    Ok(st)
}

/// Makes `dir` (mode 0700) if it is missing, and checks that it is a directory of ours that
/// nobody else can enter: a directory someone else made in `/tmp` could hold their socket
/// under our name.
pub(crate) fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    let c = c_path(dir)?;
    // SAFETY: `c` is a NUL-terminated path.
    if unsafe { libc::mkdir(c.as_ptr(), 0o700) } < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::AlreadyExists {
            return Err(e);
        }
    }
    let st = lstat(dir)?;
    // SAFETY: `geteuid` cannot fail.
    let me = unsafe { libc::geteuid() };
    let refuse = |why: &str| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{}: {why}", dir.display()),
        ))
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return refuse("not a directory (a symbolic link, say)");
    }
    if st.st_uid != me {
        return refuse("owned by another user");
    }
    if st.st_mode & 0o077 != 0 {
        return refuse("open to other users (its mode must be 0700)");
    }
    Ok(())
}

/// A listening Unix stream socket at `path` (non-blocking, close-on-exec, mode 0600), and the
/// device and inode that identify it (to remove only our own socket later). A socket left at
/// the path by a dead process is replaced; any other file there is an error.
pub(crate) fn bind_listener(path: &Path) -> io::Result<(OwnedFd, (u64, u64))> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: an all-zero `sockaddr_un` is valid (family set below).
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket path too long: {}", path.display()),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    match lstat(path) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFSOCK => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ))
        }
        Err(_) => {}
    }
    // SAFETY: plain socket creation; the descriptor is owned at once.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a live `sockaddr_un` and `len` covers its family and NUL-ended path.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            len as libc::socklen_t,
        )
    })?;
    let c = c_path(path)?;
    // SAFETY: `c` is a NUL-terminated path; `fd` is our bound socket.
    let chmod = cvt(unsafe { libc::chmod(c.as_ptr(), 0o600) })
        .and_then(|_| cvt(unsafe { libc::listen(fd.as_raw_fd(), 16) }))
        .and_then(|_| lstat(path));
    match chmod {
        Ok(st) => Ok((fd, (st.st_dev, st.st_ino))),
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(e)
        }
    }
}

/// Removes the socket at `path` if it is still the one identified by `ident` (a later process
/// with our pid may have bound its own there since: unlikely, and not ours to remove).
pub(crate) fn remove_socket(path: &Path, ident: (u64, u64)) {
    if lstat(path).is_ok_and(|st| (st.st_dev, st.st_ino) == ident) {
        let _ = std::fs::remove_file(path);
    }
}

/// The credentials of the process at the other end of a Unix socket (`SO_PEERCRED`).
pub(crate) fn peer_credentials(fd: RawFd) -> io::Result<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a live `ucred` and `len` its size.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    })?;
    Ok(cred)
}

/// Whether a peer with credentials `peer` may see this process: only the same user (the
/// effective uid `me`), root included in that rule.
pub(crate) fn peer_allowed(peer: &libc::ucred, me: libc::uid_t) -> Result<(), String> {
    if peer.uid == me {
        Ok(())
    } else {
        Err(format!(
            "refused: peer uid {} is not this process's uid {me}",
            peer.uid
        ))
    }
}

/// The wait the live view's sockets use: "the socket is readable" (`POLLIN`) or "writable"
/// (`POLLOUT`), a single-shot `IORING_OP_POLL_ADD` on io_uring, a readiness wait on epoll. It
/// moves no data, so dropping it in flight loses nothing.
pub(crate) struct Ready {
    pub(crate) fd: SharedFd,
    pub(crate) events: i16,
}

// SAFETY: the SQE holds no pointer, and names `self.fd`'s descriptor (or its registered slot),
// which `self` keeps open until the op completes.
unsafe impl OpKind for Ready {
    type Output = io::Result<()>;
    const NAME: &'static str = "inspect";

    /// `IORING_OP_POLL_ADD`, one-shot (Linux 5.1).
    fn sqe(&mut self) -> squeue::Entry {
        let mask = self.events as u32;
        match self.fd.target() {
            FdTarget::Raw(fd) => opcode::PollAdd::new(types::Fd(fd), mask).build(),
            FdTarget::Fixed(slot) => opcode::PollAdd::new(types::Fixed(slot), mask).build(),
        }
    }

    fn readiness(&self) -> (RawFd, Interest) {
        let interest = if self.events & libc::POLLOUT != 0 {
            Interest::Write
        } else {
            Interest::Read
        };
        (self.fd.raw(), interest)
    }

    /// A `poll(2)` that does not wait: ready (also on an error or hang-up, which the next
    /// system call reports), or `WouldBlock`.
    fn attempt(&mut self) -> io::Result<u32> {
        let mut pfd = libc::pollfd {
            fd: self.fd.raw(),
            events: self.events,
            revents: 0,
        };
        loop {
            // SAFETY: one live `pollfd` local, and the count says one; a zero timeout never
            // blocks.
            let n = unsafe { libc::poll(&mut pfd, 1, 0) };
            if n > 0 {
                return Ok(n as u32);
            }
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let e = io::Error::last_os_error();
            if !is_interrupted(&e) {
                return Err(e);
            }
        }
    }

    fn complete(self, result: io::Result<u32>, _flags: u32) -> io::Result<()> {
        result.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_uid_is_allowed_root_included() {
        let cred = |uid| libc::ucred {
            pid: 1,
            uid,
            gid: 0,
        };
        assert!(peer_allowed(&cred(1000), 1000).is_ok());
        assert!(
            peer_allowed(&cred(0), 1000).is_err(),
            "root is another user"
        );
        assert!(peer_allowed(&cred(1000), 0).is_err());
        assert_eq!(
            peer_allowed(&cred(65534), 1000).unwrap_err(),
            "refused: peer uid 65534 is not this process's uid 1000"
        );
    }

    /// The credentials of a real connection are read, and are ours.
    #[test]
    fn peer_credentials_of_a_socketpair_are_our_own() {
        let mut fds = [0; 2];
        // SAFETY: `socketpair` writes two descriptors into the array.
        let r = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) };
        assert_eq!(r, 0);
        // SAFETY: fresh descriptors of ours.
        let (a, _b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let cred = peer_credentials(a.as_raw_fd()).unwrap();
        // SAFETY: plain getters.
        let (uid, pid) = unsafe { (libc::geteuid(), libc::getpid()) };
        assert_eq!((cred.uid, cred.pid), (uid, pid));
        assert!(peer_allowed(&cred, uid).is_ok());
    }

    #[test]
    fn a_directory_open_to_others_is_refused() {
        let dir = std::env::temp_dir().join(format!("ringloop-dir-test-{}", std::process::id()));
        let _ = std::fs::remove_dir(&dir);
        ensure_private_dir(&dir).unwrap();
        let mode = lstat(&dir).unwrap().st_mode & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let e = ensure_private_dir(&dir).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        std::fs::remove_dir(&dir).unwrap();
        let link = dir.with_extension("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/tmp", &link).unwrap();
        assert!(
            ensure_private_dir(&link).is_err(),
            "a symbolic link is refused"
        );
        std::fs::remove_file(&link).unwrap();
    }
}
