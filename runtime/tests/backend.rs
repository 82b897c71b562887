//! Which backend a runtime gets: io_uring where the kernel has a usable one, and where it does
//! not (Debian's 5.10 has io_uring as of 5.15, but no provided-buffer rings, 5.19, which the
//! driver's receive pool is built on), an `Unsupported` error when io_uring was asked for and
//! epoll for `Backend::Auto`.
//!
//! Which of the two this kernel is comes from `RINGLOOP_TEST_BACKENDS` (see
//! `common::uring_tested`): `.ci/kernels` leaves io_uring out on 5.10, and this test checks
//! that the runtime agrees.

mod common;

use std::io;
use std::time::Duration;

use ringloop_runtime::{sleep, Backend, Runtime};

#[test]
fn auto_runs_io_uring_where_the_kernel_has_it_and_falls_back_to_epoll_where_not() {
    let explicit = Runtime::builder().backend(Backend::IoUring).build();
    let auto = Runtime::builder().backend(Backend::Auto).build().unwrap();
    if common::uring_tested() {
        assert_eq!(explicit.unwrap().backend(), Backend::IoUring);
        assert_eq!(auto.backend(), Backend::IoUring);
    } else {
        let err = explicit.expect_err("io_uring is refused on this kernel");
        assert_eq!(err.kind(), io::ErrorKind::Unsupported, "{err}");
        assert_eq!(auto.backend(), Backend::Epoll);
    }
    // Whichever it is, it runs: a timer fires and a task completes.
    let slept = auto.block_on(async {
        sleep(Duration::from_millis(1)).await.unwrap();
        ringloop_runtime::spawn(async { 7 }).await.unwrap()
    });
    assert_eq!(slept, 7);
    assert_eq!(auto.stats().ops_in_flight, 0);
}
