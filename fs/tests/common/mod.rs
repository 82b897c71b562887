//! Test helpers shared by the fs test binaries: run a body on both backends, a temporary
//! directory that cleans up after itself, descriptor counts, and a buffer that counts its drops.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ringloop_fs::{IoBuf, IoBufMut};
use ringloop_runtime::{sleep, yield_now, Backend, Runtime};

#[path = "../../../runtime/tests/common/backends.rs"]
mod backends;
#[allow(unused_imports)] // each test binary uses some of them
pub use backends::{backends, runs_on, uring_tested};

/// Serialises the tests of one binary: descriptor counts (`/proc/self/fd`) are process-wide.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Builds a runtime on `backend` and checks it really runs there.
pub fn runtime(backend: Backend) -> Runtime {
    let rt = Runtime::builder()
        .backend(backend)
        .build()
        .unwrap_or_else(|e| panic!("cannot build a {backend} runtime: {e}"));
    assert_eq!(rt.backend(), backend);
    rt
}

/// Runs `body` on a fresh runtime of `backend` (holding [`serial`]'s lock), then checks what
/// must hold after every test: no task alive, no op in flight, and no descriptor left open
/// (the runtime's own included, once it is dropped). Closes on the blocking pool finish a
/// little later than the runtime: the check waits for them, a few seconds at most.
pub fn run<F, Fut>(backend: Backend, body: F) -> Fut::Output
where
    F: FnOnce() -> Fut,
    Fut: Future,
{
    let _serial = serial();
    let before = open_fds();
    let out = {
        let rt = runtime(backend);
        let out = rt.block_on(body());
        let stats = rt.stats();
        assert_eq!(stats.tasks_alive, 0, "{backend}: {stats:?}");
        // A detached close may still be in the kernel; give the loop a few turns.
        rt.block_on(async {
            for _ in 0..1000 {
                if ringloop_runtime::current_stats().ops_in_flight == 0 {
                    break;
                }
                sleep(Duration::from_millis(1)).await.unwrap();
            }
        });
        let stats = rt.stats();
        assert_eq!(stats.ops_in_flight, 0, "{backend}: {stats:?}");
        out
    };
    assert_no_leaks(backend, &before);
    out
}

/// Fails if descriptors opened since `before` are still open after a grace period (pool closes
/// are asynchronous).
pub fn assert_no_leaks(backend: Backend, before: &BTreeSet<i32>) {
    let mut leaked = leaked_fds(before);
    for _ in 0..500 {
        if leaked.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
        leaked = leaked_fds(before);
    }
    panic!("{backend}: descriptors leaked: {leaked:?}");
}

/// The numbers of this process's open descriptors.
pub fn open_fds() -> BTreeSet<i32> {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Descriptors open now that were not in `before`, with what they point at. Those of other
/// threads' work (the harness's) are left out: only files under the temp directory, and
/// io_uring/eventfd/epoll instances, count.
pub fn leaked_fds(before: &BTreeSet<i32>) -> Vec<String> {
    let tmp = std::env::temp_dir();
    open_fds()
        .difference(before)
        .filter_map(|fd| {
            let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
            let s = target.display().to_string();
            let ours = target.starts_with(&tmp)
                || s.contains("io_uring")
                || s.contains("eventfd")
                || s.contains("eventpoll");
            ours.then(|| format!("{fd} -> {s}"))
        })
        .collect()
}

/// One loop iteration.
pub async fn tick() {
    yield_now().await.unwrap();
}

/// A fresh directory under the temp directory, removed with everything in it when dropped.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("ringloop-fs-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// `len` bytes of a pattern that differs at every offset of a 251-byte cycle (a prime, so
/// misplaced blocks of any power-of-two size show).
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ seed.wrapping_mul(37))
        .collect()
}

/// A buffer that counts its drops (`drops`); it also holds a clone of that `Arc` while alive,
/// so `Arc::strong_count(drops) - 1` says how many are alive. `Send`, as file buffers must be.
pub struct CountedBuf {
    data: Vec<u8>,
    drops: Arc<AtomicUsize>,
}

impl CountedBuf {
    /// An empty buffer with room for `capacity` bytes (to read into).
    pub fn empty(capacity: usize, drops: &Arc<AtomicUsize>) -> Self {
        CountedBuf {
            data: Vec::with_capacity(capacity),
            drops: drops.clone(),
        }
    }

    /// `data` as a buffer (to write).
    pub fn filled(data: Vec<u8>, drops: &Arc<AtomicUsize>) -> Self {
        CountedBuf {
            data,
            drops: drops.clone(),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for CountedBuf {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
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

/// Declares `#[test] fn uring()` and `#[test] fn epoll()` in a module named after the
/// scenario, each running `scenarios::$name` on its backend.
#[macro_export]
macro_rules! both_backends {
    ($name:ident) => {
        mod $name {
            #[test]
            fn uring() {
                if $crate::common::runs_on(ringloop_runtime::Backend::IoUring) {
                    $crate::common::run(ringloop_runtime::Backend::IoUring, || {
                        $crate::scenarios::$name()
                    })
                }
            }
            #[test]
            fn epoll() {
                $crate::common::run(ringloop_runtime::Backend::Epoll, || {
                    $crate::scenarios::$name()
                })
            }
        }
    };
}

/// Whether the running kernel is at least `major.minor`.
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}

/// This process's effective user id.
pub fn euid() -> u32 {
    // SAFETY: a plain query.
    unsafe { libc::geteuid() }
}
