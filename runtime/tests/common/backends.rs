//! Which backends a test run covers, shared by the runtime's and the net crate's tests (the
//! net crate's `common` includes this file by path).

use ringloop_runtime::Backend;

/// Whether this run tests the io_uring backend: yes, unless `RINGLOOP_TEST_BACKENDS` (a
/// comma-separated list: `uring,epoll`) leaves it out, for a kernel without a usable io_uring
/// (`.ci/kernels` sets `epoll` on Linux 5.10, which has no provided-buffer rings). The io_uring
/// half of a test then says on stderr that it did not run, and `runtime/tests/backend.rs`
/// checks the refusal itself: explicit io_uring is an `Unsupported` error, `Auto` runs epoll.
pub fn uring_tested() -> bool {
    std::env::var("RINGLOOP_TEST_BACKENDS")
        .map(|list| list.split(',').any(|b| b.trim() == "uring"))
        .unwrap_or(true)
}

/// The backends this run tests, io_uring first (see [`uring_tested`]).
pub fn backends() -> Vec<Backend> {
    [Backend::IoUring, Backend::Epoll]
        .into_iter()
        .filter(|&b| b != Backend::IoUring || uring_tested())
        .collect()
}

/// False, with a note on stderr, when `backend` is io_uring and this run leaves it out.
pub fn runs_on(backend: Backend) -> bool {
    let runs = backend != Backend::IoUring || uring_tested();
    if !runs {
        eprintln!("note: io_uring left out by RINGLOOP_TEST_BACKENDS; its half did not run");
    }
    runs
}
