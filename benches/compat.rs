//! Loopback TCP ping-pong through tokio's `AsyncReadExt`/`AsyncWriteExt`, to choose how
//! `ringloop::net::compat::Io` bridges borrowed buffers to the ring (`compat_echo` group).
//!
//! ```text
//! cargo bench --features tokio-io --bench compat                 # every variant, about a minute
//! cargo bench --features tokio-io --bench compat -- 'uring-'     # the io_uring ones
//! cargo bench --features tokio-io --bench compat -- --test       # smoke: each bench once
//! COMPAT_BENCH_ROUNDS=7 cargo bench --features tokio-io --bench compat   # interleaved, CPU time
//! ```
//!
//! # What is measured
//!
//! One connection; one iteration writes a message and reads its echo back (`write_all`,
//! `flush`, `read_exact`), for 64-byte and 16 KiB messages. Both ends use the API under test:
//! the echo server runs on its own thread with its own runtime of the same kind, and echoes
//! through the same API (a read, `write_all`, `flush` loop), so a difference between two
//! variants counts twice per round trip, once on each end. The variants
//! (`compat_echo/<variant>/<bytes>`):
//!
//! * `uring-native`, `epoll-native`: ringloop's own owned-buffer API (`TcpStream::write_all`
//!   and `read_exact` with owned buffers; the server `read`s into an owned buffer and writes
//!   it back), the reference for what the adapters cost;
//! * `uring-readiness`, `epoll-readiness`: `compat::Io` with `Mechanism::Readiness`, the
//!   default (non-blocking system calls on the lent buffers, a poll op on `EAGAIN`);
//! * `uring-pooled`, `epoll-pooled`: `compat::Io` with `Mechanism::Pooled` (reads copy out of
//!   the connection's pooled receiver; writes as with readiness);
//! * `tokio`: tokio's `TcpStream` on `current_thread` runtimes.
//!
//! Every echo is compared with what was sent, and byte 0 carries the iteration's number, so a
//! stale echo fails the bench rather than being timed. If io_uring is unavailable the `uring`
//! variants are skipped with a message on stderr.
//!
//! The client and the server share the machine's cores (and, on a small machine, with
//! everything else): compare the variants with each other on one machine and one run, not
//! the absolute times.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use ringloop::net::compat::{Io, Mechanism};
use ringloop::net::{TcpListener, TcpStream};
use ringloop::{Backend, Handle, Runtime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Message sizes.
const SIZES: [usize; 2] = [64, 16 * 1024];

/// The echo server's read buffer.
const SERVER_BUF: usize = 64 * 1024;

/// Where the servers listen: loopback, on a port the kernel picks.
const LOCALHOST: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// How a ringloop client and its server do I/O.
#[derive(Clone, Copy, Debug)]
enum Api {
    /// ringloop's owned-buffer calls.
    Native,
    /// `compat::Io` with this mechanism, through tokio's traits.
    Compat(Mechanism),
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Api::Native => "native",
            Api::Compat(Mechanism::Pooled) => "pooled",
            Api::Compat(_) => "readiness",
        }
    }
}

/// How to stop a server thread.
enum Stop {
    Ringloop(Handle),
    Tokio(tokio::sync::oneshot::Sender<()>),
}

/// An echo server on its own thread; dropping it stops the server and joins the thread.
struct Server {
    addr: SocketAddr,
    stop: Option<Stop>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// A ringloop echo server on `backend`, doing its I/O through `api`.
    fn ringloop(backend: Backend, api: Api) -> io::Result<Server> {
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<(SocketAddr, Handle)>>();
        let thread = thread::Builder::new()
            .name(format!("compat-echo-{backend}-{}", api.name()))
            .spawn(move || {
                let setup = Runtime::builder().backend(backend).build().and_then(|rt| {
                    let listener = TcpListener::bind(LOCALHOST)?;
                    let addr = listener.local_addr()?;
                    Ok((rt, listener, addr))
                });
                let (rt, listener, addr) = match setup {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.spawn(async move {
                    while let Ok((stream, _)) = listener.accept().await {
                        let _ = stream.set_nodelay(true);
                        match api {
                            Api::Native => ringloop::spawn(native_echo(stream)),
                            Api::Compat(m) => {
                                ringloop::spawn(trait_echo(Io::with_mechanism(stream, m)))
                            }
                        };
                    }
                });
                let _ = ready_tx.send(Ok((addr, rt.handle())));
                if let Err(e) = rt.run_forever() {
                    eprintln!("compat_echo: the server's loop failed: {e}");
                }
            })?;
        match ready_rx.recv() {
            Ok(Ok((addr, handle))) => Ok(Server {
                addr,
                stop: Some(Stop::Ringloop(handle)),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(io::Error::other("the server thread panicked"))
            }
        }
    }

    /// A tokio `current_thread` echo server.
    fn tokio() -> io::Result<Server> {
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<SocketAddr>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name("compat-echo-tokio".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    let listener = match tokio::net::TcpListener::bind(LOCALHOST).await {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(listener.local_addr());
                    let serve = async {
                        while let Ok((stream, _)) = listener.accept().await {
                            let _ = stream.set_nodelay(true);
                            tokio::task::spawn_local(trait_echo(stream));
                        }
                    };
                    tokio::select! {
                        _ = stop_rx => {}
                        () = serve => {}
                    }
                });
            })?;
        match ready_rx.recv() {
            Ok(Ok(addr)) => Ok(Server {
                addr,
                stop: Some(Stop::Tokio(stop_tx)),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(io::Error::other("the server thread panicked"))
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        match self.stop.take() {
            Some(Stop::Ringloop(handle)) => handle.stop(),
            Some(Stop::Tokio(tx)) => {
                let _ = tx.send(());
            }
            None => {}
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                eprintln!("compat_echo: a server thread panicked");
            }
        }
    }
}

/// The native echo: read into an owned buffer, write it back.
async fn native_echo(stream: TcpStream) {
    let mut buf = vec![0u8; SERVER_BUF];
    loop {
        let (n, b) = stream.read(buf).await;
        let n = match n {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let (r, b) = stream.write_all(ringloop::net::IoBuf::slice(b, ..n)).await;
        if r.is_err() {
            return;
        }
        buf = b.into_inner();
    }
}

/// The echo through tokio's traits (compat and tokio alike): read, `write_all`, `flush`.
async fn trait_echo<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let mut buf = vec![0u8; SERVER_BUF];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stream.write_all(&buf[..n]).await.is_err() || stream.flush().await.is_err() {
            return;
        }
    }
}

/// The message of `len` bytes (byte 0 is overwritten with the iteration's number).
fn message(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

/// `iters` echoes through tokio's traits.
async fn trait_rounds<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    len: usize,
    iters: u64,
) -> Duration {
    let mut out = message(len);
    let mut back = vec![0u8; len];
    let start = Instant::now();
    for i in 0..iters {
        out[0] = i as u8;
        stream.write_all(&out).await.expect("write");
        stream.flush().await.expect("flush");
        stream.read_exact(&mut back).await.expect("read");
        assert!(back == out, "a wrong echo");
    }
    start.elapsed()
}

/// `iters` echoes through ringloop's owned-buffer calls.
async fn native_rounds(stream: &TcpStream, len: usize, iters: u64) -> Duration {
    let mut out = message(len);
    let mut back = vec![0u8; len].into_boxed_slice();
    let start = Instant::now();
    for i in 0..iters {
        out[0] = i as u8;
        let (r, o) = stream.write_all(out).await;
        r.expect("write");
        out = o;
        let (r, b) = stream.read_exact(back).await;
        r.expect("read");
        back = b;
        assert!(back[..] == out[..], "a wrong echo");
    }
    start.elapsed()
}

/// One variant's client side.
enum Client {
    Native(Runtime, TcpStream),
    Compat(Runtime, Io<TcpStream>),
    Tokio(tokio::runtime::Runtime, tokio::net::TcpStream),
}

/// A variant: its name, its client and its server (dropped after the client).
struct Fixture {
    name: String,
    /// Taken when the fixture is dropped.
    client: Option<Client>,
    _server: Server,
}

impl Fixture {
    fn ringloop(backend: Backend, api: Api) -> io::Result<Fixture> {
        let rt = Runtime::builder().backend(backend).build()?;
        let server = Server::ringloop(backend, api)?;
        let stream = rt.block_on(TcpStream::connect(server.addr))?;
        stream.set_nodelay(true)?;
        let client = match api {
            Api::Native => Client::Native(rt, stream),
            Api::Compat(m) => Client::Compat(rt, Io::with_mechanism(stream, m)),
        };
        Ok(Fixture {
            name: format!("{backend}-{}", api.name()),
            client: Some(client),
            _server: server,
        })
    }

    fn tokio() -> io::Result<Fixture> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let server = Server::tokio()?;
        let stream = rt.block_on(tokio::net::TcpStream::connect(server.addr))?;
        stream.set_nodelay(true)?;
        Ok(Fixture {
            name: "tokio".into(),
            client: Some(Client::Tokio(rt, stream)),
            _server: server,
        })
    }

    /// The client runtime's counters (ringloop variants).
    fn stats(&self) -> Option<ringloop::RuntimeStats> {
        match self.client.as_ref()? {
            Client::Native(rt, _) | Client::Compat(rt, _) => Some(rt.stats()),
            Client::Tokio(..) => None,
        }
    }

    /// `conns` fresh connections (opened before the clock starts, closed after it stops), each
    /// a task doing `iters` echoes at once; returns the wall time of the whole lot.
    fn run_many(&mut self, conns: usize, len: usize, iters: u64) -> Duration {
        let addr = self._server.addr;
        match self.client.as_mut().expect("a live fixture") {
            Client::Native(rt, _) => rt.block_on(async move {
                let mut streams = Vec::new();
                for _ in 0..conns {
                    let s = TcpStream::connect(addr).await.expect("connect");
                    s.set_nodelay(true).expect("nodelay");
                    streams.push(s);
                }
                let start = Instant::now();
                let tasks: Vec<_> = streams
                    .into_iter()
                    .map(|s| {
                        ringloop::spawn(async move {
                            native_rounds(&s, len, iters).await;
                            s
                        })
                    })
                    .collect();
                let mut done = Vec::new();
                for t in tasks {
                    done.push(t.await.expect("echo task"));
                }
                let elapsed = start.elapsed();
                drop(done);
                elapsed
            }),
            Client::Compat(rt, io) => {
                let mechanism = io.mechanism();
                rt.block_on(async move {
                    let mut streams = Vec::new();
                    for _ in 0..conns {
                        let s = TcpStream::connect(addr).await.expect("connect");
                        s.set_nodelay(true).expect("nodelay");
                        streams.push(Io::with_mechanism(s, mechanism));
                    }
                    let start = Instant::now();
                    let tasks: Vec<_> = streams
                        .into_iter()
                        .map(|mut s| {
                            ringloop::spawn(async move {
                                trait_rounds(&mut s, len, iters).await;
                                s
                            })
                        })
                        .collect();
                    let mut done = Vec::new();
                    for t in tasks {
                        done.push(t.await.expect("echo task"));
                    }
                    let elapsed = start.elapsed();
                    drop(done);
                    elapsed
                })
            }
            Client::Tokio(rt, _) => {
                let local = tokio::task::LocalSet::new();
                local.block_on(rt, async move {
                    let mut streams = Vec::new();
                    for _ in 0..conns {
                        let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
                        s.set_nodelay(true).expect("nodelay");
                        streams.push(s);
                    }
                    let start = Instant::now();
                    let tasks: Vec<_> = streams
                        .into_iter()
                        .map(|mut s| {
                            tokio::task::spawn_local(async move {
                                trait_rounds(&mut s, len, iters).await;
                                s
                            })
                        })
                        .collect();
                    let mut done = Vec::new();
                    for t in tasks {
                        done.push(t.await.expect("echo task"));
                    }
                    let elapsed = start.elapsed();
                    drop(done);
                    elapsed
                })
            }
        }
    }

    fn run(&mut self, len: usize, iters: u64) -> Duration {
        match self.client.as_mut().expect("a live fixture") {
            Client::Native(rt, s) => rt.block_on(native_rounds(s, len, iters)),
            Client::Compat(rt, s) => rt.block_on(trait_rounds(s, len, iters)),
            Client::Tokio(rt, s) => rt.block_on(trait_rounds(s, len, iters)),
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Close the ringloop client inside its runtime, so its driver hears of the close;
        // then the server is stopped (the field after).
        match self.client.take() {
            Some(Client::Native(rt, s)) => rt.block_on(async move { drop(s) }),
            Some(Client::Compat(rt, s)) => rt.block_on(async move { drop(s) }),
            Some(Client::Tokio(rt, s)) => {
                let _guard = rt.enter();
                drop(s);
            }
            None => {}
        }
    }
}

fn compat_echo(c: &mut Criterion) {
    let mut fixtures = Vec::new();
    for backend in [Backend::IoUring, Backend::Epoll] {
        for api in [
            Api::Native,
            Api::Compat(Mechanism::Pooled),
            Api::Compat(Mechanism::Readiness),
        ] {
            match Fixture::ringloop(backend, api) {
                Ok(f) => fixtures.push(f),
                Err(e) if backend == Backend::IoUring => {
                    eprintln!("compat_echo: skipping {backend}-{}: {e}", api.name());
                }
                Err(e) => panic!("cannot start {backend}-{}: {e}", api.name()),
            }
        }
    }
    fixtures.push(Fixture::tokio().expect("cannot start the tokio variant"));

    let mut g = c.benchmark_group("compat_echo");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    for len in SIZES {
        g.throughput(Throughput::Bytes(len as u64));
        for f in &mut fixtures {
            let id = BenchmarkId::new(f.name.clone(), len);
            g.bench_function(id, |b| b.iter_custom(|iters| f.run(len, iters)));
        }
    }
    g.finish();
    drop(fixtures);
}

/// Process CPU time (user + system, every thread: the client's and the server's).
fn cpu_time() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    let usage = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let tv =
        |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    tv(usage.user_time()) + tv(usage.system_time())
}

/// The median of `v` (sorted here).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// `COMPAT_BENCH_ROUNDS=<n>`: instead of criterion, `n` rounds in which every variant runs a
/// fixed number of echoes in turn (so a change in the machine's load hits them all alike),
/// reporting per variant and size the median wall time and the median process CPU time (client
/// and server threads together) per round trip, and the median of the per-round ratios to
/// tokio. On a shared machine the CPU time is the steadier measure.
fn rounds(n: usize) {
    let mut fixtures = Vec::new();
    for backend in [Backend::IoUring, Backend::Epoll] {
        for api in [
            Api::Native,
            Api::Compat(Mechanism::Pooled),
            Api::Compat(Mechanism::Readiness),
        ] {
            if std::env::var("COMPAT_BENCH_ONLY")
                .is_ok_and(|o| o != format!("{backend}-{}", api.name()))
            {
                continue;
            }
            match Fixture::ringloop(backend, api) {
                Ok(f) => fixtures.push(f),
                Err(e) => eprintln!("compat_echo: skipping {backend}-{}: {e}", api.name()),
            }
        }
    }
    fixtures.push(Fixture::tokio().expect("cannot start the tokio variant"));
    let tokio = fixtures.len() - 1;
    // Per round trip, on the client's runtime (the server's does the same work): loop
    // iterations, kernel entries, the driver's system calls (not the adapters' own), ops
    // submitted (io_uring).
    for len in SIZES {
        println!("{len} bytes: client runtime counters per round trip");
        println!(
            "{:<18} {:>6} {:>6} {:>8} {:>6} {:>6}",
            "variant", "iters", "enters", "syscalls", "ops", "polls"
        );
        for f in &mut fixtures {
            let Some(before) = f.stats() else { continue };
            let iters = 2_000;
            f.run(len, iters);
            let after = f.stats().expect("ringloop");
            let per = |a: u64, b: u64| (a - b) as f64 / iters as f64;
            println!(
                "{:<18} {:>6.2} {:>6.2} {:>8.2} {:>6.2} {:>6.2}",
                f.name,
                per(after.loop_iterations, before.loop_iterations),
                per(after.kernel_enters, before.kernel_enters),
                per(after.driver_syscalls, before.driver_syscalls),
                per(after.ops_submitted, before.ops_submitted),
                per(after.polls, before.polls),
            );
        }
    }
    let conns: usize = std::env::var("COMPAT_BENCH_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    for len in SIZES {
        let iters = if len <= 64 { 20_000 } else { 10_000 };
        let scale: u64 = std::env::var("COMPAT_BENCH_SCALE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let iters = iters * scale / conns as u64;
        // Warm-up: one untimed pass each.
        for f in &mut fixtures {
            f.run_many(conns, len, iters / 10);
        }
        let mut wall = vec![Vec::new(); fixtures.len()];
        let mut cpu = vec![Vec::new(); fixtures.len()];
        for _ in 0..n {
            for (i, f) in fixtures.iter_mut().enumerate() {
                let before = cpu_time();
                let elapsed = f.run_many(conns, len, iters);
                let used = cpu_time() - before;
                let msgs = (iters * conns as u64) as f64;
                wall[i].push(elapsed.as_secs_f64() * 1e6 / msgs);
                cpu[i].push(used.as_secs_f64() * 1e6 / msgs);
            }
        }
        println!("{len} bytes, {conns} connections, {n} rounds of {iters} round trips each; medians (µs per round trip)");
        println!(
            "{:<18} {:>8} {:>8} {:>10} {:>10}",
            "variant", "wall", "cpu", "wall/tokio", "cpu/tokio"
        );
        for (i, f) in fixtures.iter().enumerate() {
            let ratio = |m: &[Vec<f64>]| {
                let mut r: Vec<f64> = m[i].iter().zip(&m[tokio]).map(|(a, b)| a / b).collect();
                median(&mut r)
            };
            let (rw, rc) = (ratio(&wall), ratio(&cpu));
            println!(
                "{:<18} {:>8.2} {:>8.2} {:>10.2} {:>10.2}",
                f.name,
                median(&mut wall[i].clone()),
                median(&mut cpu[i].clone()),
                rw,
                rc
            );
        }
    }
}

criterion_group!(benches, compat_echo);

fn main() {
    if let Some(n) = std::env::var("COMPAT_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        rounds(n);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
