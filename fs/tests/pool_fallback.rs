//! The scenarios of `file_ops.rs` on an io_uring runtime with every file operation sent to the
//! blocking pool (`RINGLOOP_FS_POOL=all`), as on a kernel that lacks the opcodes (`FTRUNCATE`
//! before 6.9, say): the pool path under a ring's driver, where closes and the ring's own ops
//! still mix with pool jobs.

mod common;
mod scenarios;

use std::sync::Once;

use ringloop_runtime::Backend;

/// Sets `RINGLOOP_FS_POOL=all` before any file op probes the kernel (the probe reads it once
/// per process). Every test calls it first, so no test thread reads the environment while it
/// is written.
fn force_pool() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| std::env::set_var("RINGLOOP_FS_POOL", "all"));
}

macro_rules! on_pool {
    ($name:ident) => {
        #[test]
        fn $name() {
            force_pool();
            if common::runs_on(Backend::IoUring) {
                common::run(Backend::IoUring, scenarios::$name)
            }
        }
    };
}

for_each_scenario!(on_pool);

/// With `RINGLOOP_FS_POOL=all`, no file operation reaches the ring.
#[test]
fn no_file_op_reaches_the_ring() {
    force_pool();
    if !common::runs_on(Backend::IoUring) {
        return;
    }
    let submitted = common::run(Backend::IoUring, || async {
        let dir = common::TempDir::new("routing");
        let before = ringloop_runtime::current_stats().ops_submitted;
        let path = dir.join("f");
        ringloop_fs::write(&path, b"abc").await.unwrap();
        let file = ringloop_fs::File::open(&path).await.unwrap();
        let (n, _) = file.read_at(Vec::with_capacity(8), 0).await;
        assert_eq!(n.unwrap(), 3);
        file.close().await.unwrap();
        ringloop_runtime::current_stats().ops_submitted - before
    });
    assert_eq!(submitted, 0);
}
