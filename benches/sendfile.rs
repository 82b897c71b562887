//! A 64 KiB file sent over loopback TCP: `send_file` (`sendfile(2)`, with a readiness wait when
//! the socket is full) and, on io_uring, `send_file_spliced` (`IORING_OP_SPLICE` through a
//! pipe) against reading the file into a buffer and writing the buffer, on both backends, in one criterion group (`send_file_64k`). The figure is the **server's CPU
//! time per response**, not the wall time: the server runs on its own thread, and each
//! iteration's time is what every thread of the process but the client's spent on a CPU (the
//! process's CPU clock less the client thread's: the server's thread and the kernel's io_uring
//! workers) while the client asked for and read the responses.
//!
//! ```text
//! cargo bench --bench sendfile
//! cargo bench --bench sendfile -- --test      # smoke: each once
//! ```
//!
//! The server answers each one-byte request on its connection with the whole file: either
//! `stream.send_file(&file, 0, len)`, or `read_at` of the file (in the page cache) into a reused
//! 64 KiB buffer and `stream.write_all(buf)` (the copy a server without `send_file` makes; the
//! read is a plain `pread`, the cheapest way to get the bytes into user space). The client is a
//! blocking std socket on the bench thread that checks each response's length.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ringloop::net::{TcpListener, TcpStream};
use ringloop::{Backend, Runtime, SharedFd};

const LEN: usize = 64 * 1024;

#[derive(Clone, Copy)]
enum Mode {
    SendFile,
    Spliced,
    ReadWrite,
}

/// The file, written once in the tmp directory (removed at the end).
fn make_file() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("ringloop-bench-sendfile-{}", std::process::id()));
    let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, data).expect("write the bench file");
    path
}

/// Nanoseconds every thread of this process but the calling one has spent on a CPU, exited
/// ones included: the server's thread, and the kernel's io_uring workers (`iou-wrk-*`, threads
/// of this process, which come and go), which run the work the ring cannot do inline.
fn others_cpu_ns() -> u64 {
    let read = |clock| {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `t` is a live timespec for the call to fill.
        assert_eq!(unsafe { libc::clock_gettime(clock, &mut t) }, 0);
        t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
    };
    read(libc::CLOCK_PROCESS_CPUTIME_ID) - read(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// Starts a server thread: returns its address and a handle to stop it.
fn server(
    backend: Backend,
    mode: Mode,
    path: std::path::PathBuf,
) -> Option<(
    std::net::SocketAddr,
    ringloop::Handle,
    thread::JoinHandle<()>,
)> {
    let (tx, rx) = mpsc::channel();
    let join = thread::spawn(move || {
        let rt = match Runtime::builder().backend(backend).build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("send_file_64k: no {backend} runtime here ({e}); skipped");
                drop(tx);
                return;
            }
        };
        let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        tx.send((listener.local_addr().unwrap(), rt.handle()))
            .unwrap();
        let _ = rt.block_on(async move {
            let file = std::fs::File::open(&path).unwrap();
            let fd = SharedFd::new(OwnedFd::from(file.try_clone().unwrap()));
            let (stream, _) = listener.accept().await?;
            serve(stream, mode, &file, &fd).await;
            Ok::<_, std::io::Error>(())
        });
    });
    let (addr, handle) = rx.recv().ok()?;
    Some((addr, handle, join))
}

async fn serve(stream: TcpStream, mode: Mode, file: &std::fs::File, fd: &SharedFd) {
    let mut buf = vec![0u8; LEN];
    loop {
        let (r, _) = stream.read(vec![0u8; 1]).await;
        match r {
            Ok(1) => {}
            _ => return,
        }
        match mode {
            Mode::SendFile => {
                if stream.send_file(fd, 0, LEN).await.is_err() {
                    return;
                }
            }
            Mode::Spliced => {
                if stream.send_file_spliced(fd, 0, LEN).await.is_err() {
                    return;
                }
            }
            Mode::ReadWrite => {
                file.read_exact_at(&mut buf, 0).unwrap();
                let (r, back) = stream.write_all(buf).await;
                buf = back;
                if r.is_err() {
                    return;
                }
            }
        }
    }
}

fn send_file_64k(c: &mut Criterion) {
    let path = make_file();
    let mut g = c.benchmark_group("send_file_64k");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    let mut response = vec![0u8; LEN];
    for (bname, backend) in [("uring", Backend::IoUring), ("epoll", Backend::Epoll)] {
        let mut modes = vec![
            ("send_file", Mode::SendFile),
            ("read_write", Mode::ReadWrite),
        ];
        if backend == Backend::IoUring {
            // On epoll the spliced way is `send_file`.
            modes.insert(1, ("send_file_spliced", Mode::Spliced));
        }
        for (mname, mode) in modes {
            let Some((addr, handle, join)) = server(backend, mode, path.clone()) else {
                continue;
            };
            let mut client = std::net::TcpStream::connect(addr).unwrap();
            client.set_nodelay(true).unwrap();
            g.bench_function(format!("{bname}/{mname}"), |b| {
                b.iter_custom(|iters| {
                    let before = others_cpu_ns();
                    for _ in 0..iters {
                        client.write_all(b"?").unwrap();
                        client.read_exact(&mut response).unwrap();
                        assert_eq!(response[LEN - 1], ((LEN - 1) % 251) as u8);
                    }
                    Duration::from_nanos(others_cpu_ns().saturating_sub(before))
                })
            });
            drop(client);
            handle.stop();
            join.join().unwrap();
        }
    }
    g.finish();
    let _ = std::fs::remove_file(path);
}

criterion_group!(benches, send_file_64k);
criterion_main!(benches);
