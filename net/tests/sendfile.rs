//! Sending a file to a socket (`send_file`, `send_file_spliced`, `sock_sendfile`) on both
//! backends: nothing, a part, past the end, 100 MB byte for byte, a peer that resets in the
//! middle (the error says what went out, and the next transfer carries no stray byte of the
//! broken one), a transfer dropped in the middle, a descriptor that cannot be sent, and Unix
//! streams and write halves. Each transfer test runs both ways of sending. Files live in the tmp
//! directory and are removed; descriptors are counted once each runtime is gone (the spliced
//! way's pipes are the runtime's).

mod common;

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use common::{leaked_fds, localhost, open_fds};
use ringloop_net::{sock_sendfile, TcpListener, TcpStream, UnixStream};
use ringloop_runtime::{spawn, spawn_blocking, timeout, SharedFd};

/// A test on both backends, each in a runtime of its own; once the runtime is dropped, every
/// descriptor the test opened is closed (its cached pipes go with the runtime).
macro_rules! sendfile_test {
    ($(#[$meta:meta])* async fn $name:ident() $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn body() $body
            fn run(backend: ringloop_runtime::Backend) {
                let _serial = common::serial();
                let before = open_fds();
                let rt = common::runtime(backend);
                rt.block_on(body());
                drop(rt);
                assert_eq!(leaked_fds(&before), Vec::<String>::new(), "{backend}");
            }
            #[test]
            fn uring() {
                if common::runs_on(ringloop_runtime::Backend::IoUring) {
                    run(ringloop_runtime::Backend::IoUring)
                }
            }
            #[test]
            fn epoll() {
                run(ringloop_runtime::Backend::Epoll)
            }
        }
    };
}

/// A file in the tmp directory, removed when dropped.
struct TempFile {
    path: PathBuf,
}

impl TempFile {
    /// `len` bytes of [`pattern`] with `seed`.
    fn new(name: &str, seed: u8, len: usize) -> TempFile {
        let path = std::env::temp_dir().join(format!(
            "ringloop-sendfile-{}-{name}-{:?}",
            std::process::id(),
            ringloop_runtime::current_backend()
        ));
        let mut f = std::fs::File::create(&path).unwrap();
        let mut off = 0;
        while off < len {
            let n = (len - off).min(1 << 20);
            f.write_all(&pattern(seed, off, n)).unwrap();
            off += n;
        }
        TempFile { path }
    }

    /// `count` blocks, block `i` being `block(i)`.
    fn with_blocks(name: &str, count: usize, block: &dyn Fn(usize) -> Vec<u8>) -> TempFile {
        let file = TempFile::new(name, 0, 0);
        let mut f = std::fs::File::create(&file.path).unwrap();
        for i in 0..count {
            f.write_all(&block(i)).unwrap();
        }
        file
    }

    /// The file opened for reading, as a descriptor an op can hold.
    fn open(&self) -> SharedFd {
        SharedFd::new(OwnedFd::from(std::fs::File::open(&self.path).unwrap()))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The bytes at `offset..offset + len` of the file with `seed`.
fn pattern(seed: u8, offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[i % 4] ^ seed)
        .collect()
}

/// The two ways of sending a file: `sendfile(2)`, and `splice` through a pipe on the ring.
#[derive(Clone, Copy, Debug)]
enum Way {
    SendFile,
    Spliced,
}

const WAYS: [Way; 2] = [Way::SendFile, Way::Spliced];

/// `stream.send_file` or `stream.send_file_spliced`.
async fn send(
    way: Way,
    stream: &TcpStream,
    file: &SharedFd,
    offset: u64,
    len: usize,
) -> Result<usize, ringloop_net::SendAllError> {
    match way {
        Way::SendFile => stream.send_file(file, offset, len).await,
        Way::Spliced => stream.send_file_spliced(file, offset, len).await,
    }
}

/// A connected pair: the server side (a ringloop stream) and a std client (blocking).
async fn pair() -> (TcpStream, std::net::TcpStream) {
    let listener = TcpListener::bind(localhost()).unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (server, client)
}

/// Reads `client` to its end on a blocking thread.
async fn read_all(mut client: std::net::TcpStream) -> Vec<u8> {
    spawn_blocking(move || {
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        got
    })
    .await
    .unwrap()
}

sendfile_test! {
    /// Nothing, a middle part, and a length past the end (what is there goes, and the count
    /// says how much), each to its own connection, byte for byte.
    async fn zero_bytes_a_part_and_past_the_end() {
        let file = TempFile::new("small", 1, 100_000);
        let fd = file.open();
        for way in WAYS {
        for (offset, len, expect) in [(0u64, 0usize, 0usize), (12_345, 50_000, 50_000),
            (90_000, 1 << 20, 10_000), (100_000, 10, 0), (200_000, 10, 0)]
        {
            let (server, client) = pair().await;
            let reader = spawn(read_all(client));
            let sent = send(way, &server, &fd, offset, len).await.unwrap();
            assert_eq!(sent, expect, "{way:?}: offset {offset}, len {len}");
            drop(server);
            let got = reader.await.unwrap();
            assert_eq!(got.len(), expect);
            assert!(got == pattern(1, offset as usize, expect), "{way:?}: offset {offset}, len {len}");
        }
        }
    }
}

sendfile_test! {
    /// 100 MB in one call: every byte arrives, in order; the file is not read into memory
    /// (nothing here would notice, but the count is exact).
    async fn a_hundred_megabytes_byte_for_byte() {
        const LEN: usize = 100 << 20;
        const BLOCK: usize = 1 << 20;
        // Cheap to make and to check, even unoptimised under an emulated CPU: one random-looking
        // mebibyte, each copy stamped with its index (a block sent twice, or out of order,
        // does not compare equal).
        let base = pattern(7, 0, BLOCK);
        let block = move |i: usize| {
            let mut b = base.clone();
            b[..8].copy_from_slice(&(i as u64).to_le_bytes());
            b
        };
        let file = TempFile::with_blocks("large", LEN / BLOCK, &block);
        let fd = file.open();
        let block = std::sync::Arc::new(block);
        for way in WAYS {
            let (server, mut client) = pair().await;
            let block = block.clone();
            let checker = spawn_blocking(move || {
                let mut buf = vec![0u8; BLOCK];
                let mut blocks = 0;
                loop {
                    match client.read_exact(&mut buf) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return blocks,
                        Err(e) => panic!("{e}"),
                    }
                    assert!(buf == block(blocks), "block {blocks}");
                    blocks += 1;
                }
            });
            assert_eq!(send(way, &server, &fd, 0, LEN).await.unwrap(), LEN, "{way:?}");
            drop(server);
            assert_eq!(checker.await.unwrap(), LEN / BLOCK, "{way:?}");
        }
    }
}

sendfile_test! {
    /// A peer that reads a little and then resets: the transfer fails with the peer's errno and
    /// says how much went out (no more than the file, at least what the peer read); the next
    /// transfer, on a new connection, carries exactly its own file's bytes (a pipe left half
    /// full by the broken one is never reused).
    async fn a_peer_that_resets_midway() {
        const LEN: usize = 32 << 20;
        let big = TempFile::with_blocks("reset", LEN >> 20, &|i| vec![i as u8; 1 << 20]);
        let small = TempFile::new("after", 9, 300_000);
        let (big_fd, small_fd) = (big.open(), small.open());
        for (round, way) in [WAYS, WAYS].concat().into_iter().enumerate() {
            let (server, mut client) = pair().await;
            let peer = spawn_blocking(move || {
                let mut buf = vec![0u8; 64 * 1024];
                let n = client.read(&mut buf).unwrap();
                let s = socket2::SockRef::from(&client);
                s.set_linger(Some(std::time::Duration::ZERO)).unwrap();
                drop(client); // a reset, with unread data in its receive queue
                n
            });
            let e = send(way, &server, &big_fd, 0, LEN).await.unwrap_err();
            let read = peer.await.unwrap();
            assert!(
                matches!(e.error.raw_os_error(), Some(libc::ECONNRESET) | Some(libc::EPIPE)),
                "round {round}: {e}"
            );
            assert!(e.sent >= read && e.sent < LEN, "round {round}: sent {}, read {read}", e.sent);
            drop(server);

            let (server, client) = pair().await;
            let reader = spawn(read_all(client));
            assert_eq!(send(way, &server, &small_fd, 0, 300_000).await.unwrap(), 300_000);
            drop(server);
            let got = reader.await.unwrap();
            assert!(got == pattern(9, 0, 300_000), "round {round}: {} bytes", got.len());
        }
    }
}

sendfile_test! {
    /// A transfer dropped in the middle (a timeout around it, to a peer that does not read):
    /// nothing is left behind once the peer goes, and a later transfer is exact.
    async fn a_transfer_dropped_in_the_middle() {
        const LEN: usize = 16 << 20;
        let big = TempFile::with_blocks("dropped", LEN >> 20, &|i| vec![i as u8; 1 << 20]);
        let small = TempFile::new("later", 11, 200_000);
        let (big_fd, small_fd) = (big.open(), small.open());
        for way in WAYS {
        let (server, client) = pair().await;
        // The peer reads nothing: the transfer waits for room until the timeout ends it.
        let r = timeout(std::time::Duration::from_millis(50), send(way, &server, &big_fd, 0, LEN)).await;
        match r {
            Err(_) => {}
            Ok(Err(e)) => assert!(ringloop_runtime::is_cancelled(&e.error), "{e}"),
            Ok(Ok(n)) => panic!("sent {n} bytes to a peer that reads nothing"),
        }
        drop((server, client));
        let (server, client) = pair().await;
        let reader = spawn(read_all(client));
        assert_eq!(send(way, &server, &small_fd, 0, 200_000).await.unwrap(), 200_000);
        drop(server);
        assert!(reader.await.unwrap() == pattern(11, 0, 200_000), "{way:?}");
        }
    }
}

sendfile_test! {
    /// Errors with the real errno: a directory cannot be sent (`EISDIR` from sendfile,
    /// `EINVAL` from splice), nor can a file to a socket whose write side is shut (`EPIPE`).
    async fn what_cannot_be_sent_says_why() {
        let dir = SharedFd::new(OwnedFd::from(std::fs::File::open(std::env::temp_dir()).unwrap()));
        let file = TempFile::new("shut", 2, 1000);
        for way in WAYS {
            let (server, _client) = pair().await;
            let e = send(way, &server, &dir, 0, 100).await.unwrap_err();
            assert!(
                matches!(e.error.raw_os_error(), Some(libc::EINVAL) | Some(libc::EISDIR)),
                "{way:?}: {e}"
            );
            assert_eq!(e.sent, 0);
            server.shutdown(std::net::Shutdown::Write).unwrap();
            let e = send(way, &server, &file.open(), 0, 1000).await.unwrap_err();
            assert_eq!(e.error.raw_os_error(), Some(libc::EPIPE), "{way:?}: {e}");
            assert_eq!(e.sent, 0);
        }
    }
}

sendfile_test! {
    /// A Unix stream, a write half and the asyncio-named function all send files too.
    async fn unix_streams_write_halves_and_sock_sendfile() {
        let file = TempFile::new("unix", 4, 500_000);
        let fd = file.open();
        let (a, b) = UnixStream::pair().unwrap();
        let reader = spawn(async move {
            let mut got = Vec::new();
            loop {
                let (n, buf) = b.read(vec![0u8; 65536]).await;
                let n = n.unwrap();
                if n == 0 {
                    return got;
                }
                got.extend_from_slice(&buf[..n]);
            }
        });
        assert_eq!(a.send_file(&fd, 1000, 200_000).await.unwrap(), 200_000);
        let (_read_half, write_half) = a.into_split();
        assert_eq!(write_half.send_file(&fd, 0, 1000).await.unwrap(), 1000);
        assert_eq!(write_half.send_file_spliced(&fd, 0, 10).await.unwrap(), 10);
        assert_eq!(sock_sendfile(&write_half, &fd, 200_000, 1).await.unwrap(), 1);
        drop(write_half);
        let got = reader.await.unwrap();
        let mut expect = pattern(4, 1000, 200_000);
        expect.extend(pattern(4, 0, 1000));
        expect.extend(pattern(4, 0, 10));
        expect.extend(pattern(4, 200_000, 1));
        assert!(got == expect, "{} bytes", got.len());
    }
}
