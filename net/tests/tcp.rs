//! TCP on both backends.

mod common;

use common::{backends, localhost};
use ringloop_net::{AsSharedFd, IoBuf, TcpListener, TcpStream};
use ringloop_runtime::{gather, spawn};

both_backends! {
    async fn echo_one_connection_byte_exact() {
        let listener = TcpListener::bind(localhost()).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = spawn(async move {
            let (conn, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            loop {
                let (n, b) = conn.read(buf).await;
                let n = n.unwrap();
                if n == 0 {
                    break;
                }
                let (r, b) = conn.write_all(b.slice(..n)).await;
                r.unwrap();
                buf = b.into_inner();
            }
        });
        let client = TcpStream::connect(addr).await.unwrap();
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (r, _) = client.write_all(payload.clone()).await;
        r.unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        loop {
            let (n, b) = client.read(vec![0u8; 8192]).await;
            let n = n.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&b[..n]);
        }
        assert_eq!(got, payload);
        server.await.unwrap();
    }
}

both_backends! {
    async fn thousand_concurrent_echo_connections() {
        let listener = TcpListener::bind(localhost()).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = spawn(async move {
            let mut handlers = Vec::new();
            for _ in 0..1000 {
                let (conn, _) = listener.accept().await.unwrap();
                handlers.push(spawn(async move {
                    let mut buf = vec![0u8; 1024];
                    loop {
                        let (n, b) = conn.read(buf).await;
                        let n = n.unwrap();
                        if n == 0 {
                            return;
                        }
                        let (r, b) = conn.write_all(b.slice(..n)).await;
                        r.unwrap();
                        buf = b.into_inner();
                    }
                }));
            }
            gather(handlers).await.unwrap();
        });
        let clients: Vec<_> = (0..1000u32)
            .map(|i| {
                spawn(async move {
                    let c = TcpStream::connect(addr).await.unwrap();
                    for round in 0..3u32 {
                        let msg = format!("conn {i} round {round}").into_bytes();
                        let (r, msg) = c.write_all(msg).await;
                        r.unwrap();
                        let (r, got) = c.read_exact(Vec::with_capacity(msg.len())).await;
                        r.unwrap();
                        assert_eq!(got, msg);
                    }
                })
            })
            .collect();
        gather(clients).await.unwrap();
        server.await.unwrap();
    }
}

both_backends! {
    /// `incoming()` (multishot accept on io_uring) serves every connection; dropping it while
    /// accepted sockets wait unread closes them (no descriptor leaks).
    async fn incoming_accepts_every_connection_and_drop_leaks_nothing() {
        let baseline = common::fd_count();
        let listener = TcpListener::bind(localhost()).unwrap();
        let addr = listener.local_addr().unwrap();
        let clients: Vec<_> = (0..100)
            .map(|_| spawn(async move { TcpStream::connect(addr).await.unwrap() }))
            .collect();
        let mut incoming = listener.incoming();
        let mut accepted = Vec::new();
        for _ in 0..100 {
            let (stream, peer) = incoming.next().await.unwrap();
            assert_eq!(peer, stream.peer_addr().unwrap());
            accepted.push(stream);
        }
        let clients = gather(clients).await.unwrap();
        // More connections arrive; the multishot accepts them into its queue, unread.
        let late: Vec<_> = (0..10)
            .map(|_| spawn(async move { TcpStream::connect(addr).await.unwrap() }))
            .collect();
        let late = gather(late).await.unwrap();
        for _ in 0..10 {
            ringloop_runtime::yield_now().await.unwrap();
        }
        drop(incoming);
        for _ in 0..10 {
            ringloop_runtime::sleep(std::time::Duration::from_millis(1)).await.unwrap();
        }
        drop((accepted, clients, late, listener));
        for _ in 0..10 {
            ringloop_runtime::sleep(std::time::Duration::from_millis(1)).await.unwrap();
        }
        assert_eq!(common::fd_count(), baseline, "descriptors leaked");
    }
}

/// With `Builder::zero_copy_send` the io_uring backend sends with `SEND_ZC`: each send completes
/// only after the kernel's notification, and the stream stays byte-exact; on epoll the option
/// is ignored.
#[test]
fn zero_copy_send_echo_is_byte_exact_on_both_backends() {
    let _serial = common::serial();
    for backend in backends() {
        let rt = ringloop_runtime::Runtime::builder()
            .backend(backend)
            .zero_copy_send(true)
            .build()
            .unwrap();
        let completed = rt.block_on(async {
            assert_eq!(
                ringloop_runtime::zero_copy_send(),
                backend == ringloop_runtime::Backend::IoUring
            );
            let listener = TcpListener::bind(localhost()).unwrap();
            let addr = listener.local_addr().unwrap();
            let server = spawn(async move {
                let (conn, _) = listener.accept().await.unwrap();
                let mut rx = conn.pooled_receiver();
                while let Some(chunk) = rx.recv().await.unwrap() {
                    let (r, _) = conn.write_all(chunk).await;
                    r.unwrap();
                }
            });
            let client = TcpStream::connect(addr).await.unwrap();
            let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
            let writer = {
                let payload = payload.clone();
                let (r, w) = client.into_split();
                let w = spawn(async move {
                    let (res, _) = w.write_all(payload).await;
                    res.unwrap();
                });
                (r, w)
            };
            let (reader, w) = writer;
            let mut got = Vec::new();
            while got.len() < payload.len() {
                let (n, b) = reader.read(vec![0u8; 65536]).await;
                let n = n.unwrap();
                assert!(n > 0, "unexpected end of stream");
                got.extend_from_slice(&b[..n]);
            }
            assert_eq!(got, payload);
            w.await.unwrap();
            drop(reader);
            server.await.unwrap();
            ringloop_runtime::current_task().is_some()
        });
        assert!(completed);
        let stats = rt.stats();
        assert_eq!(stats.ops_in_flight, 0, "{backend}: {stats:?}");
        if backend == ringloop_runtime::Backend::IoUring {
            // Every SEND_ZC completes twice: its result, then the notification that the
            // buffer is free.
            assert!(stats.zero_copy_notifications > 0, "{stats:?}");
        } else {
            assert_eq!(stats.zero_copy_notifications, 0);
        }
    }
}

/// With `Builder::registered_fds` every socket also sits in io_uring's registered file table and
/// ops name it by slot; echo stays byte-exact, slots are released with their sockets (no
/// descriptor or slot leaks across 3 rounds of 100 connections); epoll ignores the option.
#[test]
fn registered_fds_echo_is_byte_exact_and_releases_slots() {
    let _serial = common::serial();
    for backend in common::backends() {
        let fds_before = common::fd_count();
        let rt = ringloop_runtime::Runtime::builder()
            .backend(backend)
            .registered_fds(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = TcpListener::bind(localhost()).unwrap();
            let addr = listener.local_addr().unwrap();
            let expect_fixed =
                backend == ringloop_runtime::Backend::IoUring && common::kernel_at_least(6, 15);
            assert_eq!(ringloop_runtime::registered_fds(), expect_fixed);
            if backend == ringloop_runtime::Backend::IoUring && !expect_fixed {
                eprintln!("note: registered descriptors need 6.15+; ran by descriptor here");
            }
            assert_eq!(
                matches!(
                    listener.as_shared_fd().target(),
                    ringloop_runtime::FdTarget::Fixed(_)
                ),
                expect_fixed
            );
            for round in 0..3u32 {
                let mut handlers = Vec::new();
                let clients: Vec<_> = (0..100u32)
                    .map(|id| {
                        spawn(async move {
                            let c = TcpStream::connect(addr).await.unwrap();
                            let msg = format!("round {round} client {id}").into_bytes();
                            let (r, msg) = c.write_all(msg).await;
                            r.unwrap();
                            let (r, got) = c.read_exact(Vec::with_capacity(msg.len())).await;
                            r.unwrap();
                            assert_eq!(got, msg);
                        })
                    })
                    .collect();
                for _ in 0..100 {
                    let (conn, _) = listener.accept().await.unwrap();
                    assert_eq!(
                        matches!(
                            conn.as_shared_fd().target(),
                            ringloop_runtime::FdTarget::Fixed(_)
                        ),
                        expect_fixed
                    );
                    handlers.push(spawn(async move {
                        let mut rx = conn.pooled_receiver();
                        while let Some(chunk) = rx.recv().await.unwrap() {
                            let (r, _) = conn.write_all(chunk).await;
                            r.unwrap();
                        }
                    }));
                }
                gather(clients).await.unwrap();
                gather(handlers).await.unwrap();
            }
        });
        let stats = rt.stats();
        assert_eq!(stats.ops_in_flight, 0, "{backend}: {stats:?}");
        drop(rt);
        assert_eq!(
            common::fd_count(),
            fds_before,
            "{backend}: a descriptor leaked"
        );
    }
}

both_backends! {
    /// `write_all` of an empty buffer (or an empty slice of one) sends nothing, submits no op,
    /// succeeds, and gives the buffer back.
    async fn write_all_of_nothing_submits_no_op_and_gives_the_buffer_back() {
        let listener = TcpListener::bind(localhost()).unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (_server, _) = listener.accept().await.unwrap();
        let before = ringloop_runtime::current_stats();
        let (r, buf) = client.write_all(Vec::<u8>::with_capacity(16)).await;
        r.unwrap();
        assert_eq!((buf.len(), buf.capacity()), (0, 16));
        let (r, slice) = client.write_all(vec![1u8, 2, 3].slice(1..1)).await;
        r.unwrap();
        assert_eq!(slice.into_inner(), [1, 2, 3]);
        let after = ringloop_runtime::current_stats();
        assert_eq!(after.ops_submitted, before.ops_submitted);
        assert_eq!(after.driver_syscalls, before.driver_syscalls);
    }
}

/// A server keeps one `write_all` future per connection, so its size is a per-connection
/// cost: it holds the descriptor, the boxed op (with the time it started waiting, for its
/// kind's latency) and two counters, not the buffer itself (the op's box owns that). This
/// bound is what the `async fn` version (176 bytes with a pooled buffer) broke.
#[test]
fn write_all_future_stays_small() {
    use ringloop_net::{PooledBuf, SendAll};
    let size = std::mem::size_of::<SendAll<PooledBuf>>();
    assert!(size <= 72, "SendAll<PooledBuf> is {size} bytes");
    assert!(std::mem::size_of::<SendAll<Vec<u8>>>() <= 72);
}

both_backends! {
    /// A TCP read half receives through the buffer pool while its write half writes from
    /// another task.
    async fn read_half_pooled_receiver_with_write_half_in_another_task() {
        let listener = TcpListener::bind(localhost()).unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (rd, wr) = client.into_split();
        let payload: Vec<u8> = (0..50_000u32).map(|i| (i % 241) as u8).collect();
        let sent = payload.clone();
        let writer = spawn(async move {
            let (r, _) = wr.write_all(sent).await;
            r.unwrap();
            // `wr` drops: the server reads end of stream.
        });
        let echo = spawn(async move {
            let mut rx = server.pooled_receiver();
            while let Some(chunk) = rx.recv().await.unwrap() {
                let (r, _) = server.write_all(chunk).await;
                r.unwrap();
            }
            // Dropping `server` closes it: the client's receiver then ends.
        });
        let mut rx = rd.pooled_receiver();
        let mut got = Vec::new();
        while let Some(chunk) = rx.recv().await.unwrap() {
            got.extend_from_slice(&chunk);
        }
        assert!(got == payload, "got {} bytes back", got.len());
        writer.await.unwrap();
        echo.await.unwrap();
    }
}

/// On io_uring, a send on a nearly idle ring (no other op in flight, nothing queued) is tried
/// as a plain `send` first and completes without an SQE; with a single-shot op in flight it is
/// submitted as usual. Either way the bytes arrive in order.
#[test]
fn a_lone_send_is_tried_as_a_system_call_first_on_io_uring() {
    if !common::runs_on(ringloop_runtime::Backend::IoUring) {
        return;
    }
    let rt = common::runtime(ringloop_runtime::Backend::IoUring);
    rt.block_on(async {
        let listener = TcpListener::bind(localhost()).unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();

        let before = ringloop_runtime::current_stats();
        assert_eq!(before.ops_in_flight, 0);
        let (r, _) = client.write_all(b"first".to_vec()).await;
        r.unwrap();
        let after = ringloop_runtime::current_stats();
        assert_eq!(
            after.ops_submitted, before.ops_submitted,
            "no SQE for a lone send"
        );
        assert_eq!(
            after.driver_syscalls,
            before.driver_syscalls + 1,
            "one send(2)"
        );

        // A read of the other direction is in flight: the next send goes through the ring.
        let reader = spawn(async move {
            let (n, buf) = client.read(vec![0u8; 16]).await;
            (n.unwrap(), buf, client)
        });
        ringloop_runtime::yield_now().await.unwrap();
        assert_eq!(ringloop_runtime::current_stats().ops_in_flight, 1);
        let before = ringloop_runtime::current_stats();
        let (r, _) = server.write_all(b"reply".to_vec()).await;
        r.unwrap();
        assert_eq!(
            ringloop_runtime::current_stats().ops_submitted,
            before.ops_submitted + 1,
            "submitted as an SQE while another op is in flight"
        );
        let (n, buf, _client) = reader.await.unwrap();
        assert_eq!(&buf[..n], b"reply");
        let (r, buf) = server.read_exact(Vec::with_capacity(5)).await;
        r.unwrap();
        assert_eq!(buf, b"first");
    });
}
