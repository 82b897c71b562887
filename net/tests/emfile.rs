//! An accept loop under `EMFILE`: with `RLIMIT_NOFILE` lowered and every descriptor taken,
//! `TcpListener::incoming()` keeps the connections it has served, backs off, and accepts the
//! clients that connected meanwhile once descriptors are freed.
//!
//! `RLIMIT_NOFILE` and the descriptor table are per process, so this is the only test in its
//! binary, and it runs the two backends one after the other.

mod common;

use std::cell::Cell;
use std::fs::File;
use std::rc::Rc;
use std::time::Duration;

use common::{backends, fd_count, localhost};
use ringloop_net::{TcpListener, TcpStream};
use ringloop_runtime::{sleep, spawn, timeout, Runtime};

/// Lowers the soft `RLIMIT_NOFILE` and restores it when dropped, also when the test panics.
struct LoweredLimit {
    saved: libc::rlimit,
}

impl LoweredLimit {
    fn to(soft: libc::rlim_t) -> Self {
        let mut saved = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: writes one rlimit into a live local.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut saved) },
            0
        );
        let lowered = libc::rlimit {
            rlim_cur: soft.min(saved.rlim_max),
            rlim_max: saved.rlim_max,
        };
        // SAFETY: reads one live rlimit.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) }, 0);
        LoweredLimit { saved }
    }
}

impl Drop for LoweredLimit {
    fn drop(&mut self) {
        // SAFETY: reads one live rlimit.
        let r = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &self.saved) };
        assert_eq!(r, 0, "could not restore RLIMIT_NOFILE");
    }
}

/// The highest descriptor number open in this process.
fn highest_fd() -> libc::rlim_t {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::rlim_t>().ok())
        .max()
        .unwrap_or(2)
}

/// Opens descriptors until the process has none left; returns them.
fn take_every_descriptor() -> Vec<File> {
    let mut files = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(f) => files.push(f),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
                return files;
            }
        }
        assert!(files.len() < 10_000, "RLIMIT_NOFILE was not lowered");
    }
}

/// Writes `msg` and reads the echo back.
async fn echo(stream: &TcpStream, msg: &[u8]) -> Vec<u8> {
    let (w, _) = stream.write_all(msg.to_vec()).await;
    w.unwrap();
    let (r, got) = stream.read_exact(Vec::with_capacity(msg.len())).await;
    r.unwrap();
    got
}

async fn accept_loop_survives_emfile() {
    // Lowered before anything is accepted: an io_uring accept reads the limit when it is
    // submitted (a multishot accept armed earlier would go on with the old one).
    let _limit = LoweredLimit::to(highest_fd() + 1 + 20);
    let listener = TcpListener::bind(localhost()).unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Rc::new(Cell::new(0usize));
    let acc = accepted.clone();
    let server = spawn(async move {
        let mut incoming = listener.incoming();
        loop {
            let (conn, _) = incoming.next().await?;
            acc.set(acc.get() + 1);
            spawn(async move {
                let mut buf = vec![0u8; 1024];
                loop {
                    let (n, b) = conn.read(buf).await;
                    let n = match n {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let (w, b) = conn.write_all(b[..n].to_vec()).await;
                    if w.is_err() {
                        return;
                    }
                    drop(b);
                    buf = vec![0u8; 1024];
                }
            });
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    });

    // 1. One client is served.
    let first = TcpStream::connect(addr).await.unwrap();
    assert_eq!(echo(&first, b"one").await, b"one");
    assert_eq!(accepted.get(), 1);

    // 2. The process runs out of descriptors; two clients connect anyway (the kernel completes
    //    their handshakes), and send. Each client's socket takes the one descriptor freed for
    //    it (synchronously, in `connect`'s first poll, before its connection reaches the
    //    listener), so the server has none to accept with.
    let mut fillers = take_every_descriptor();
    drop(fillers.pop());
    let second = TcpStream::connect(addr).await.unwrap();
    drop(fillers.pop());
    let third = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        File::open("/dev/null").unwrap_err().raw_os_error(),
        Some(libc::EMFILE)
    );
    let (w, _) = second.write_all(b"two".to_vec()).await;
    w.unwrap();
    let (w, _) = third.write_all(b"three".to_vec()).await;
    w.unwrap();

    // 3. The server cannot accept them (EMFILE), backs off, and goes on serving the first.
    for _ in 0..20 {
        sleep(Duration::from_millis(2)).await.unwrap();
        assert_eq!(echo(&first, b"still one").await, b"still one");
    }
    assert_eq!(accepted.get(), 1, "accepted with no descriptor free?");
    assert!(
        !server.is_done(),
        "EMFILE ended the accept loop: {server:?}"
    );

    // 4. Descriptors free up: both waiting clients are accepted and served.
    drop(fillers);
    let served = timeout(Duration::from_secs(20), async {
        let mut got = [0u8; 3];
        let (r, b) = second.read_exact(Vec::with_capacity(3)).await;
        r.unwrap();
        got.copy_from_slice(&b);
        let (r, b2) = third.read_exact(Vec::with_capacity(5)).await;
        r.unwrap();
        (got.to_vec(), b2)
    })
    .await
    .expect("the accept loop never resumed after descriptors were freed");
    assert_eq!(served, (b"two".to_vec(), b"three".to_vec()));
    assert_eq!(accepted.get(), 3);
    server.cancel();
    let _ = server.await;
}

#[test]
fn accept_loop_survives_emfile_and_resumes() {
    for backend in backends() {
        let before = fd_count();
        {
            let rt = Runtime::builder().backend(backend).build().unwrap();
            rt.block_on(accept_loop_survives_emfile());
            let stats = rt.stats();
            assert_eq!(stats.tasks_alive, 0, "{backend}: {stats:?}");
            assert_eq!(stats.ops_in_flight, 0, "{backend}: {stats:?}");
        }
        assert_eq!(fd_count(), before, "{backend}: a descriptor leaked");
    }
}
