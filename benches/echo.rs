//! Loopback TCP echo round-trip latency: ringloop on io_uring, ringloop on epoll, and tokio's
//! `current_thread` runtime, in one criterion group (`echo_round_trip`).
//!
//! ```text
//! cargo bench --bench echo                    # all six, about a minute
//! cargo bench --bench echo -- 'uring/'        # one runtime
//! cargo bench --bench echo -- --test          # smoke: run each bench once
//! ```
//!
//! # What is measured
//!
//! Both ends run on the runtime under test, in the same process: the echo server on its own
//! thread with its own runtime of that kind, the client on the bench thread with another one.
//! So `uring/…` is a ringloop client on io_uring talking to a ringloop server on io_uring,
//! `epoll/…` the same on epoll, and `tokio/…` a tokio client talking to a tokio server. Each
//! benchmark id is `echo_round_trip/<runtime>/<connections>`, and the throughput is one element
//! per connection, so criterion also reports messages per second.
//!
//! * **1 connection**: one iteration sends one 64-byte message and reads its echo back, from the
//!   client's main future (no task hop): pure round-trip latency.
//! * **100 connections**: one iteration is a *round*: each of the 100 connections sends one
//!   64-byte message and all 100 echoes are read back; the time is that of the whole round.
//!
//! Every echo is compared with what was sent (cheap at 64 bytes), and the first byte of every
//! message carries the iteration's number, so a stale or misrouted echo fails the bench rather
//! than being timed.
//!
//! # How the 100 connections are driven
//!
//! Each connection gets one long-lived worker task per criterion sample; the bench's main future
//! starts a round through [`Rounds`], a std-only gate, and waits until every worker has
//! reported its echo. Per connection and round that costs one wake of the worker and one
//! countdown: no task is allocated, scheduled for the first time or joined inside the timed
//! loop, which spawning a task per connection per round would add to every round. [`Rounds`] is
//! written against `std::task` only, so all three runtimes pay the same for it, and the workers
//! are spawned the same way on each: `ringloop::spawn`, and tokio's `spawn_local` on a
//! `LocalSet` (ringloop tasks may be `!Send`; a `LocalSet` is tokio's equivalent, as in
//! `benches/runtime.rs`). The workers are spawned and first polled, and the connections opened,
//! outside the timed loop: one untimed round runs first in each sample.
//!
//! # Servers
//!
//! The ringloop server is `examples/echo_server.rs`'s loop (a task per connection receiving
//! into the runtime's buffer pool with `pooled_receiver`, writing each chunk back with
//! `write_all`); the tokio server is `examples/tokio_echo_server.rs`'s (a task per connection
//! with a 4 KiB buffer, `read` then `write_all`). Both listen on `127.0.0.1:0` and hand their
//! address back over a channel. After the group every server is stopped (ringloop through
//! [`Handle::stop`], tokio through a oneshot) and its thread joined, so nothing outlives the
//! bench. If io_uring is unavailable the `uring` entries are skipped with a message on stderr.
//!
//! The client and the server share the machine's cores with each other (and, on a small
//! machine, with everything else), so treat the numbers as a comparison between the runtimes
//! on the same machine rather than as absolute latencies.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::mpsc;
use std::task::{Poll, Waker};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use ringloop::{Backend, Handle, Runtime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::LocalSet;

/// Bytes per message.
const MSG_LEN: usize = 64;

/// The connection counts every runtime is measured with.
const CONNECTIONS: [usize; 2] = [1, 100];

/// Where the servers listen: loopback, on a port the kernel picks.
const LOCALHOST: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// The message connection `id` sends: a pattern that differs between connections, so an echo
/// delivered to the wrong connection would not compare equal. Byte 0 is overwritten with the
/// iteration's number before each send.
fn message(id: usize) -> Vec<u8> {
    (0..MSG_LEN).map(|i| (i * 31 + id) as u8).collect()
}

/// The per-round signal between the bench's main future and the long-lived per-connection
/// workers of the 100-connection case (see the module docs). Only `std` types, so each runtime
/// pays the same for it.
///
/// One round at a time: [`run_round`](Self::run_round) bumps the round number, wakes every
/// worker parked in [`next_round`](Self::next_round), and returns once each has called
/// [`worker_done`](Self::worker_done).
struct Rounds {
    /// The number of the round in progress or last finished; 0 before the first.
    current: Cell<u64>,
    /// Set by [`finish`](Self::finish): `next_round` then returns `None` and the workers end.
    finished: Cell<bool>,
    /// Workers that have not yet reported on the current round.
    left: Cell<usize>,
    /// The first failure a worker reported in the current round.
    failure: RefCell<Option<String>>,
    /// One slot per worker: the waker it left when it last waited for a round. Kept after a
    /// wake, so a worker that waits again with the same waker does not clone it again.
    waiting: RefCell<Vec<Option<Waker>>>,
    /// The main future's waker while it waits for the round to end (kept likewise).
    driver: RefCell<Option<Waker>>,
}

impl Rounds {
    /// A gate for `workers` workers, numbered `0..workers`.
    fn new(workers: usize) -> Rc<Rounds> {
        Rc::new(Rounds {
            current: Cell::new(0),
            finished: Cell::new(false),
            left: Cell::new(0),
            failure: RefCell::new(None),
            waiting: RefCell::new(vec![None; workers]),
            driver: RefCell::new(None),
        })
    }

    /// Waits until a round later than `seen` has started and returns its number, or `None` once
    /// [`finish`](Self::finish) was called. `worker` is the caller's slot.
    fn next_round(&self, worker: usize, seen: u64) -> impl Future<Output = Option<u64>> + '_ {
        poll_fn(move |cx| {
            if self.finished.get() {
                return Poll::Ready(None);
            }
            let current = self.current.get();
            if current > seen {
                return Poll::Ready(Some(current));
            }
            store_waker(&mut self.waiting.borrow_mut()[worker], cx.waker());
            Poll::Pending
        })
    }

    /// A worker's report on the current round; the last one wakes the main future.
    fn worker_done(&self, result: Result<(), String>) {
        if let Err(e) = result {
            self.failure.borrow_mut().get_or_insert(e);
        }
        let left = self.left.get() - 1;
        self.left.set(left);
        if left == 0 {
            if let Some(driver) = &*self.driver.borrow() {
                driver.wake_by_ref();
            }
        }
    }

    /// Runs one round: starts it and waits until every worker has reported.
    ///
    /// # Panics
    /// If a worker reported a failure (a wrong echo or an I/O error).
    async fn run_round(&self) {
        self.left.set(self.waiting.borrow().len());
        self.current.set(self.current.get() + 1);
        self.wake_workers();
        poll_fn(|cx| {
            if self.left.get() == 0 {
                Poll::Ready(())
            } else {
                store_waker(&mut self.driver.borrow_mut(), cx.waker());
                Poll::Pending
            }
        })
        .await;
        if let Some(failure) = self.failure.borrow_mut().take() {
            panic!("echo failed: {failure}");
        }
    }

    /// Ends the workers: each returns from its loop at its next `next_round`.
    fn finish(&self) {
        self.finished.set(true);
        self.wake_workers();
    }

    /// Wakes every worker that has waited for a round.
    fn wake_workers(&self) {
        for waker in self.waiting.borrow().iter().flatten() {
            waker.wake_by_ref();
        }
    }
}

/// Stores `waker` in `slot` unless the waker already there wakes the same task.
fn store_waker(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(old) if old.will_wake(waker) => {}
        _ => *slot = Some(waker.clone()),
    }
}

/// The timed part of a 100-connection sample: one untimed round (the workers' first poll), then
/// `iters` timed rounds; then the workers are told to end.
async fn timed_rounds(rounds: &Rounds, iters: u64) -> Duration {
    rounds.run_round().await;
    let start = Instant::now();
    for _ in 0..iters {
        rounds.run_round().await;
    }
    let elapsed = start.elapsed();
    rounds.finish();
    elapsed
}

/// How to stop a server thread.
enum StopSignal {
    /// A ringloop server: stop its loop.
    Ringloop(Handle),
    /// A tokio server: its accept loop ends when this is sent (or dropped).
    Tokio(tokio::sync::oneshot::Sender<()>),
}

/// What a server thread reports once it listens: its address and how to stop it, or why it
/// could not start.
type Ready = io::Result<(SocketAddr, StopSignal)>;

/// An echo server on its own thread. Dropping it stops the server and joins the thread; the
/// server's runtime, listener and connections are dropped on that thread before it ends.
struct Server {
    /// The address it listens on.
    addr: SocketAddr,
    /// Taken when the server is stopped.
    stop: Option<StopSignal>,
    /// Taken when the thread is joined.
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Starts a thread running `body`, which must report on `ready` once it listens (or why it
    /// cannot), and waits for that report.
    fn spawn(
        name: &str,
        body: impl FnOnce(mpsc::Sender<Ready>) + Send + 'static,
    ) -> io::Result<Server> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || body(ready_tx))?;
        match ready_rx.recv() {
            Ok(Ok((addr, stop))) => Ok(Server {
                addr,
                stop: Some(stop),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            // The sender was dropped without a report: the thread panicked (its message is
            // already on stderr).
            Err(_) => {
                let _ = thread.join();
                Err(io::Error::other(format!("{name} panicked while starting")))
            }
        }
    }

    /// A ringloop echo server on `backend`.
    fn start_ringloop(backend: Backend) -> io::Result<Server> {
        Server::spawn(&format!("echo-server-{backend}"), move |ready| {
            let setup = Runtime::builder().backend(backend).build().and_then(|rt| {
                let listener = ringloop::net::TcpListener::bind(LOCALHOST)?;
                let addr = listener.local_addr()?;
                Ok((rt, listener, addr))
            });
            let (rt, listener, addr) = match setup {
                Ok(setup) => setup,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            rt.spawn(ringloop_serve(listener));
            let _ = ready.send(Ok((addr, StopSignal::Ringloop(rt.handle()))));
            if let Err(e) = rt.run_forever() {
                eprintln!("echo_round_trip: the {backend} server's loop failed: {e}");
            }
        })
    }

    /// A tokio `current_thread` echo server.
    fn start_tokio() -> io::Result<Server> {
        Server::spawn("echo-server-tokio", |ready| {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let local = LocalSet::new();
            local.block_on(&rt, async move {
                let listener = match tokio::net::TcpListener::bind(LOCALHOST).await {
                    Ok(listener) => listener,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                let addr = match listener.local_addr() {
                    Ok(addr) => addr,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
                let _ = ready.send(Ok((addr, StopSignal::Tokio(stop_tx))));
                tokio::select! {
                    _ = stop_rx => {}
                    () = tokio_serve(listener) => {}
                }
            });
            // Dropping `local` and then `rt` drops the connection tasks and closes their sockets.
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        match self.stop.take() {
            Some(StopSignal::Ringloop(handle)) => handle.stop(),
            Some(StopSignal::Tokio(stop)) => {
                let _ = stop.send(());
            }
            None => {}
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                eprintln!("echo_round_trip: a server thread panicked");
            }
        }
    }
}

/// The ringloop server's accept loop, as in `examples/echo_server.rs`: a task per connection,
/// receiving into the runtime's buffer pool and writing each chunk back.
async fn ringloop_serve(listener: ringloop::net::TcpListener) {
    let mut incoming = listener.incoming();
    loop {
        let stream = match incoming.next().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                eprintln!("echo_round_trip: ringloop accept failed: {e}");
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        ringloop::spawn(async move {
            let mut rx = stream.pooled_receiver();
            // Any error (the client closing first, say) ends this connection only.
            while let Ok(Some(chunk)) = rx.recv().await {
                let (r, _chunk) = stream.write_all(chunk).await;
                if r.is_err() {
                    break;
                }
            }
        });
    }
}

/// The tokio server's accept loop, as in `examples/tokio_echo_server.rs`: a task per
/// connection with a 4 KiB buffer.
async fn tokio_serve(listener: tokio::net::TcpListener) {
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                eprintln!("echo_round_trip: tokio accept failed: {e}");
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::task::spawn_local(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}

/// Opens `n` ringloop client connections to `addr`, with `TCP_NODELAY`.
async fn ringloop_connect(addr: SocketAddr, n: usize) -> io::Result<Vec<ringloop::net::TcpStream>> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let stream = ringloop::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        streams.push(stream);
    }
    Ok(streams)
}

/// One ringloop echo: sends `out`, reads `back.len()` bytes into `back`, and checks they equal
/// what was sent. The buffers are owned (ringloop's I/O takes and returns them).
async fn ringloop_echo(
    stream: &ringloop::net::TcpStream,
    out: Vec<u8>,
    back: Box<[u8]>,
) -> (Result<(), String>, Vec<u8>, Box<[u8]>) {
    let (r, out) = stream.write_all(out).await;
    if let Err(e) = r {
        return (Err(format!("write: {e}")), out, back);
    }
    let (r, back) = stream.read_exact(back).await;
    let r = match r {
        Err(e) => Err(format!("read: {e}")),
        Ok(()) if back[..] != out[..] => Err(format!("sent {out:?}, got {back:?}")),
        Ok(()) => Ok(()),
    };
    (r, out, back)
}

/// The 1-connection case on ringloop: `iters` echoes one after the other from the main future.
async fn ringloop_single(stream: &ringloop::net::TcpStream, iters: u64) -> Duration {
    let mut out = message(0);
    // A boxed slice, so the read is exactly `MSG_LEN` bytes (a Vec reads up to its capacity).
    let mut back = vec![0u8; MSG_LEN].into_boxed_slice();
    let start = Instant::now();
    for i in 0..iters {
        out[0] = i as u8;
        let r;
        (r, out, back) = ringloop_echo(stream, out, back).await;
        if let Err(e) = r {
            panic!("echo failed: {e}");
        }
    }
    start.elapsed()
}

/// A ringloop worker of the 100-connection case: one echo per round on `stream`, until the
/// rounds finish; gives the stream back for the next sample.
async fn ringloop_worker(
    stream: ringloop::net::TcpStream,
    id: usize,
    rounds: Rc<Rounds>,
) -> ringloop::net::TcpStream {
    let mut out = message(id);
    let mut back = vec![0u8; MSG_LEN].into_boxed_slice();
    let mut seen = 0;
    while let Some(round) = rounds.next_round(id, seen).await {
        seen = round;
        out[0] = round as u8;
        let r;
        (r, out, back) = ringloop_echo(&stream, out, back).await;
        let failed = r.is_err();
        rounds.worker_done(r.map_err(|e| format!("connection {id}: {e}")));
        if failed {
            break;
        }
    }
    stream
}

/// One 100-connection sample on ringloop: a worker per stream, `iters` timed rounds. Returns
/// the time and the streams.
async fn ringloop_rounds(
    streams: Vec<ringloop::net::TcpStream>,
    iters: u64,
) -> (Duration, Vec<ringloop::net::TcpStream>) {
    let rounds = Rounds::new(streams.len());
    let workers: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(id, stream)| ringloop::spawn(ringloop_worker(stream, id, rounds.clone())))
        .collect();
    let elapsed = timed_rounds(&rounds, iters).await;
    let mut streams = Vec::with_capacity(workers.len());
    for worker in workers {
        streams.push(worker.await.expect("echo worker"));
    }
    (elapsed, streams)
}

/// Opens `n` tokio client connections to `addr`, with `TCP_NODELAY`.
async fn tokio_connect(addr: SocketAddr, n: usize) -> io::Result<Vec<tokio::net::TcpStream>> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        streams.push(stream);
    }
    Ok(streams)
}

/// One tokio echo: sends `out`, reads `back.len()` bytes into `back`, and checks they equal
/// what was sent.
async fn tokio_echo(
    stream: &mut tokio::net::TcpStream,
    out: &[u8],
    back: &mut [u8],
) -> Result<(), String> {
    stream
        .write_all(out)
        .await
        .map_err(|e| format!("write: {e}"))?;
    stream
        .read_exact(back)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if back != out {
        return Err(format!("sent {out:?}, got {back:?}"));
    }
    Ok(())
}

/// The 1-connection case on tokio: `iters` echoes one after the other from the main future.
async fn tokio_single(stream: &mut tokio::net::TcpStream, iters: u64) -> Duration {
    let mut out = message(0);
    let mut back = vec![0u8; MSG_LEN];
    let start = Instant::now();
    for i in 0..iters {
        out[0] = i as u8;
        if let Err(e) = tokio_echo(stream, &out, &mut back).await {
            panic!("echo failed: {e}");
        }
    }
    start.elapsed()
}

/// A tokio worker of the 100-connection case; see [`ringloop_worker`].
async fn tokio_worker(
    mut stream: tokio::net::TcpStream,
    id: usize,
    rounds: Rc<Rounds>,
) -> tokio::net::TcpStream {
    let mut out = message(id);
    let mut back = vec![0u8; MSG_LEN];
    let mut seen = 0;
    while let Some(round) = rounds.next_round(id, seen).await {
        seen = round;
        out[0] = round as u8;
        let r = tokio_echo(&mut stream, &out, &mut back).await;
        let failed = r.is_err();
        rounds.worker_done(r.map_err(|e| format!("connection {id}: {e}")));
        if failed {
            break;
        }
    }
    stream
}

/// One 100-connection sample on tokio (inside a `LocalSet`); see [`ringloop_rounds`].
async fn tokio_rounds(
    streams: Vec<tokio::net::TcpStream>,
    iters: u64,
) -> (Duration, Vec<tokio::net::TcpStream>) {
    let rounds = Rounds::new(streams.len());
    let workers: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(id, stream)| tokio::task::spawn_local(tokio_worker(stream, id, rounds.clone())))
        .collect();
    let elapsed = timed_rounds(&rounds, iters).await;
    let mut streams = Vec::with_capacity(workers.len());
    for worker in workers {
        streams.push(worker.await.expect("echo worker"));
    }
    (elapsed, streams)
}

/// One runtime under test: the client's runtime on the bench thread, and the server.
enum Fixture {
    /// ringloop on one backend.
    Ringloop {
        /// The client's runtime.
        rt: Runtime,
        /// The server, on a runtime with the same backend.
        server: Server,
    },
    /// tokio `current_thread`.
    Tokio {
        /// The client's runtime.
        rt: tokio::runtime::Runtime,
        /// Where the client's tasks run (see the module docs).
        local: LocalSet,
        /// The server, on its own `current_thread` runtime.
        server: Server,
    },
}

impl Fixture {
    /// ringloop on `backend`: the client's runtime (built first, so an unavailable io_uring
    /// shows before any thread starts) and the server.
    fn ringloop(backend: Backend) -> io::Result<Fixture> {
        let rt = Runtime::builder().backend(backend).build()?;
        let server = Server::start_ringloop(backend)?;
        Ok(Fixture::Ringloop { rt, server })
    }

    /// tokio `current_thread`: the client's runtime and the server.
    fn tokio() -> io::Result<Fixture> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let server = Server::start_tokio()?;
        Ok(Fixture::Tokio {
            rt,
            local: LocalSet::new(),
            server,
        })
    }

    /// The runtime's name in the benchmark id.
    fn name(&self) -> &'static str {
        match self {
            Fixture::Ringloop { rt, .. } => rt.backend().as_str(),
            Fixture::Tokio { .. } => "tokio",
        }
    }

    /// Benchmarks `conns` connections: opens them, measures, closes them (which ends their
    /// tasks on the server, so the next benchmark finds a server with no connections).
    fn bench(&self, g: &mut BenchmarkGroup<'_, WallTime>, conns: usize) {
        let id = BenchmarkId::new(self.name(), conns);
        match self {
            Fixture::Ringloop { rt, server } => {
                let mut streams = rt
                    .block_on(ringloop_connect(server.addr, conns))
                    .expect("connect to the ringloop echo server");
                if conns == 1 {
                    g.bench_function(id, |b| {
                        b.iter_custom(|iters| rt.block_on(ringloop_single(&streams[0], iters)))
                    });
                } else {
                    g.bench_function(id, |b| {
                        b.iter_custom(|iters| {
                            let (elapsed, back) =
                                rt.block_on(ringloop_rounds(mem::take(&mut streams), iters));
                            streams = back;
                            elapsed
                        })
                    });
                }
                // Closed inside the runtime, so its driver hears of the close (the epoll
                // backend keeps per-descriptor state that an outside close leaves stale).
                rt.block_on(async move { drop(streams) });
            }
            Fixture::Tokio { rt, local, server } => {
                let mut streams = local
                    .block_on(rt, tokio_connect(server.addr, conns))
                    .expect("connect to the tokio echo server");
                if conns == 1 {
                    g.bench_function(id, |b| {
                        b.iter_custom(|iters| {
                            local.block_on(rt, tokio_single(&mut streams[0], iters))
                        })
                    });
                } else {
                    g.bench_function(id, |b| {
                        b.iter_custom(|iters| {
                            let (elapsed, back) =
                                local.block_on(rt, tokio_rounds(mem::take(&mut streams), iters));
                            streams = back;
                            elapsed
                        })
                    });
                }
                drop(streams);
            }
        }
    }
}

/// The group: every runtime at every connection count.
fn echo_round_trip(c: &mut Criterion) {
    let mut fixtures = Vec::new();
    for backend in [Backend::IoUring, Backend::Epoll] {
        match Fixture::ringloop(backend) {
            Ok(fixture) => fixtures.push(fixture),
            Err(e) if backend == Backend::IoUring => {
                eprintln!(
                    "echo_round_trip: skipping the uring benchmarks, io_uring is unavailable: {e}"
                );
            }
            Err(e) => panic!("cannot start the ringloop {backend} echo benchmark: {e}"),
        }
    }
    fixtures.push(Fixture::tokio().expect("cannot start the tokio echo benchmark"));

    let mut g = c.benchmark_group("echo_round_trip");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    for conns in CONNECTIONS {
        g.throughput(Throughput::Elements(conns as u64));
        for fixture in &fixtures {
            fixture.bench(&mut g, conns);
        }
    }
    g.finish();
    // Stops every server and joins its thread (see `Server`'s `Drop`).
    drop(fixtures);
}

criterion_group!(benches, echo_round_trip);
criterion_main!(benches);
