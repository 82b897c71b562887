//! Test helpers: run one test body on both backends.

#![allow(dead_code)]

use std::future::Future;
use std::sync::{Mutex, MutexGuard};

use ringloop_runtime::{Backend, Runtime};

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
    let rt = Runtime::builder()
        .backend(backend)
        .build()
        .unwrap_or_else(|e| panic!("cannot build a {backend} runtime: {e}"));
    assert_eq!(rt.backend(), backend);
    let out = rt.block_on(body());
    let stats = rt.stats();
    assert_eq!(stats.tasks_alive, 0, "{stats:?}");
    out
}

/// Open descriptors of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
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
                $crate::common::run(ringloop_runtime::Backend::IoUring, body)
            }
            #[test]
            fn epoll() {
                $crate::common::run(ringloop_runtime::Backend::Epoll, body)
            }
        }
    };
}
