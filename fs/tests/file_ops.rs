//! Every file operation on both backends: the scenarios in `scenarios/mod.rs`, each run on
//! io_uring (ops on the ring) and on epoll (the blocking pool).

mod common;
mod scenarios;

for_each_scenario!(both_backends);

/// On io_uring the operations really are ring ops (the runtime counts their submissions); on
/// epoll none is (they ran on the pool).
#[test]
fn file_ops_go_to_the_ring_on_io_uring_only() {
    use ringloop_runtime::{current_stats, Backend};

    for backend in common::backends() {
        let submitted = common::run(backend, || async {
            let dir = common::TempDir::new("routing");
            let before = current_stats().ops_submitted;
            let path = dir.join("f");
            ringloop_fs::write(&path, b"abc").await.unwrap();
            let file = ringloop_fs::File::open(&path).await.unwrap();
            let (n, _) = file.read_at(Vec::with_capacity(8), 0).await;
            assert_eq!(n.unwrap(), 3);
            file.metadata().await.unwrap();
            file.close().await.unwrap();
            current_stats().ops_submitted - before
        });
        match backend {
            // write: open, write, close; then open, statx, close (and the read, unless it
            // was served by the non-blocking try first: the ring is idle here).
            Backend::IoUring => assert!(submitted >= 6, "{submitted} ring ops"),
            _ => assert_eq!(submitted, 0),
        }
    }
}
