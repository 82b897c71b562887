//! Test helpers shared by every net test binary: run one test body on both backends, count
//! descriptors, drive the loop a little, and a buffer that counts its drops.

#![allow(dead_code)]

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use ringloop_net::{IoBuf, IoBufMut, TcpStream};
use ringloop_runtime::{sleep, yield_now, Backend, Runtime};

#[path = "../../../runtime/tests/common/backends.rs"]
mod backends;
#[allow(unused_imports)] // each test binary uses some of them
pub use backends::{backends, runs_on, uring_tested};

/// Serialises the tests of one binary: descriptor counts (`/proc/self/fd`) are process-wide,
/// so a test that asserts them must not run beside one that opens sockets.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Builds a runtime on `backend` and runs `body` on it (holding [`serial`]'s lock).
pub fn run<F, Fut>(backend: Backend, body: F) -> Fut::Output
where
    F: FnOnce() -> Fut,
    Fut: Future,
{
    let _serial = serial();
    let rt = runtime(backend);
    let out = rt.block_on(body());
    let stats = rt.stats();
    assert_eq!(stats.tasks_alive, 0, "{stats:?}");
    out
}

/// Builds a runtime on `backend` and checks it really runs there (the explicit form of
/// [`run`], for tests that read the runtime's stats after `block_on`). Hold [`serial`]'s lock
/// while using it.
pub fn runtime(backend: Backend) -> Runtime {
    let rt = Runtime::builder()
        .backend(backend)
        .build()
        .unwrap_or_else(|e| panic!("cannot build a {backend} runtime: {e}"));
    assert_eq!(rt.backend(), backend);
    rt
}

/// The numbers of this process's open descriptors.
#[allow(dead_code)] // not every test binary checks for leaks this way
pub fn open_fds() -> std::collections::BTreeSet<i32> {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Descriptors open now that were not in `before`, with what they point at: a leak. (A
/// descriptor that closed meanwhile is not one; the harness's own, inherited from the shell
/// that started it, can come and go.) The one `read_dir` uses while listing is left out.
#[allow(dead_code)]
pub fn leaked_fds(before: &std::collections::BTreeSet<i32>) -> Vec<String> {
    let now = open_fds();
    now.difference(before)
        .filter_map(|fd| {
            let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
            Some(format!("{fd} -> {}", target.display()))
        })
        .collect()
}

/// Open descriptors of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `127.0.0.1:0`: the IPv4 loopback, any free port.
pub fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// One loop iteration.
pub async fn tick() {
    yield_now().await.unwrap();
}

/// Runs the loop until `cond` holds, for a bounded number of iterations (first without
/// blocking, then in 1 ms sleeps, a few seconds in all); returns whether it holds.
pub async fn until(mut cond: impl FnMut() -> bool) -> bool {
    for i in 0..3000 {
        if cond() {
            return true;
        }
        if i < 100 {
            tick().await;
        } else {
            sleep(Duration::from_millis(1)).await.unwrap();
        }
    }
    cond()
}

/// Reads `stream` to its end (the peer half-closed or closed its side).
pub async fn read_to_end(stream: &TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    loop {
        let (n, buf) = stream.read(vec![0u8; 4096]).await;
        let n = n.unwrap();
        if n == 0 {
            return got;
        }
        got.extend_from_slice(&buf[..n]);
    }
}

/// A buffer that counts how many times it is dropped (in `drops`; it also holds a clone of that
/// `Rc` while alive, so `Rc::strong_count(drops)` tells how many are alive).
pub struct CountedBuf {
    data: Vec<u8>,
    drops: Rc<Cell<usize>>,
}

impl CountedBuf {
    /// An empty buffer with room for `capacity` bytes (to receive into).
    pub fn empty(capacity: usize, drops: &Rc<Cell<usize>>) -> Self {
        CountedBuf {
            data: Vec::with_capacity(capacity),
            drops: drops.clone(),
        }
    }

    /// `len` initialised bytes (to send, or to receive over).
    pub fn filled(len: usize, drops: &Rc<Cell<usize>>) -> Self {
        CountedBuf {
            data: vec![0x5a; len],
            drops: drops.clone(),
        }
    }
}

impl Drop for CountedBuf {
    fn drop(&mut self) {
        self.drops.set(self.drops.get() + 1);
    }
}

// SAFETY: the bytes live in the Vec's heap allocation, which does not move when the
// `CountedBuf` moves and lives as long as it; `len` bytes are initialised.
unsafe impl IoBuf for CountedBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.data.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.data.len()
    }
    fn bytes_total(&self) -> usize {
        self.data.capacity()
    }
}

// SAFETY: the pointer is valid for writes of the whole capacity.
unsafe impl IoBufMut for CountedBuf {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.data.as_mut_ptr()
    }
    unsafe fn set_init(&mut self, pos: usize) {
        if self.data.len() < pos {
            // SAFETY: the caller guarantees the first `pos` bytes were written, and the kernel
            // was never given more than the capacity.
            unsafe { self.data.set_len(pos) };
        }
    }
}

/// Declares `#[test] fn uring()` and `#[test] fn epoll()` in a module named after the scenario,
/// each running the same async body on its backend: a net test that runs on one backend is
/// half a test.
#[macro_export]
macro_rules! both_backends {
    ($(#[$meta:meta])* async fn $name:ident() $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn body() $body
            #[test]
            fn uring() {
                if $crate::common::runs_on(ringloop_runtime::Backend::IoUring) {
                    $crate::common::run(ringloop_runtime::Backend::IoUring, body)
                }
            }
            #[test]
            fn epoll() {
                $crate::common::run(ringloop_runtime::Backend::Epoll, body)
            }
        }
    };
}

/// Whether the running kernel is at least `major.minor` (its release string), for features
/// that only a version tells apart.
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}
