//! Helpers of the HTTP suite (`tests/http.rs`): the net crate's test harness (run a body on a
//! backend, count descriptors, drive the loop), the suite's own test macro, the HTTP server
//! under test ([`server`]) and the raw HTTP/1.1 client pieces ([`raw`]).

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use ringloop::{current_stats, timeout, Backend};

#[path = "../../net/tests/common/mod.rs"]
mod harness;
pub use harness::{leaked_fds, localhost, open_fds, run, runs_on, until};

pub mod raw;
pub mod server;

/// The most a test body may take, debug build included, before it fails as hung (the bodies
/// take well under a second each; the upload a few seconds in debug): a hang is reported, not
/// waited out.
const TEST_LIMIT: Duration = Duration::from_secs(120);

/// Runs `body` on `backend` (see [`run`]): within [`TEST_LIMIT`], and checks what it leaves
/// behind. Once `body` is done every task it started has ended (only the body's own task is
/// alive, and [`run`] checks that none is left after it) and every descriptor it opened is
/// closed, the runtime's own excepted (it was open before).
pub fn run_http<F, Fut>(backend: Backend, body: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    run(backend, || async move {
        let fds_before = open_fds();
        let finished = timeout(TEST_LIMIT, body()).await;
        assert!(
            finished.is_ok(),
            "the test did not finish within {TEST_LIMIT:?}"
        );
        assert!(
            until(|| current_stats().tasks_alive == 1).await,
            "tasks left running: {:?}",
            current_stats()
        );
        assert!(
            until(|| leaked_fds(&fds_before).is_empty()).await,
            "leaked descriptors: {:?}",
            leaked_fds(&fds_before)
        );
    })
}

/// Declares `#[test] fn uring()` and `#[test] fn epoll()` in a module named after the scenario,
/// each running the same async body on its backend with [`run_http`].
#[macro_export]
macro_rules! http_test {
    ($(#[$meta:meta])* async fn $name:ident() $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn body() $body
            #[test]
            fn uring() {
                if $crate::common::runs_on(ringloop::Backend::IoUring) {
                    $crate::common::run_http(ringloop::Backend::IoUring, body)
                }
            }
            #[test]
            fn epoll() {
                $crate::common::run_http(ringloop::Backend::Epoll, body)
            }
        }
    };
}
