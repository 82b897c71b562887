//! The completion queue overflows and no completion is lost (io_uring's NODROP flush).

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream as StdUnixStream;

use ringloop_net::UnixStream;
use ringloop_runtime::{gather, spawn, yield_now, Backend, Runtime};

/// 1. A ring with 2 SQ entries and a 16-entry CQ, and 200 receives in flight.
/// 2. Data is written to all 200 peers at once, from outside the runtime, so the next kernel
///    entry completes far more receives than the CQ holds.
/// 3. Every receive gets exactly its own bytes, and the driver counted the overflow.
#[test]
fn cq_overflow_loses_no_completion() {
    if !common::runs_on(Backend::IoUring) {
        return;
    }
    let rt = Runtime::builder()
        .backend(Backend::IoUring)
        .ring_entries(2)
        .completion_entries(16)
        .build()
        .unwrap();
    const N: usize = 200;
    let (ours, mut theirs): (Vec<StdUnixStream>, Vec<StdUnixStream>) =
        (0..N).map(|_| StdUnixStream::pair().unwrap()).unzip();
    let received = rt.block_on(async move {
        let receivers: Vec<_> = ours
            .into_iter()
            .map(|s| {
                let s = UnixStream::from_std(s).unwrap();
                spawn(async move {
                    let (n, buf) = s.read(vec![0u8; 64]).await;
                    String::from_utf8(buf[..n.unwrap()].to_vec()).unwrap()
                })
            })
            .collect();
        // Let every receive reach the kernel before any data exists.
        for _ in 0..3 {
            yield_now().await.unwrap();
        }
        for (i, peer) in theirs.iter_mut().enumerate() {
            peer.write_all(format!("message {i}").as_bytes()).unwrap();
        }
        gather(receivers).await.unwrap()
    });
    for (i, got) in received.iter().enumerate() {
        assert_eq!(got, &format!("message {i}"));
    }
    let stats = rt.stats();
    assert!(stats.cq_overflows > 0, "the CQ never overflowed: {stats:?}");
    assert_eq!(stats.ops_in_flight, 0);
}
