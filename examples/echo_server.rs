//! An echo server on ringloop: one runtime on one thread, a task per connection, receiving into
//! the runtime's buffer pool (multishot receive on io_uring) and writing each chunk back.
//!
//! * Holds 10 000+ connections: an idle connection owns no buffer.
//! * A client that sends but never reads is back-pressured: once its replies fill the socket,
//!   the write waits, the connection's receive stops at its cap of queued chunks, and TCP
//!   stops the client. Nothing is buffered without bound.
//! * A client that vanishes mid-message frees its descriptor and buffers at once.
//! * SIGTERM or SIGINT shuts it down gracefully ([`Server::shutdown_on_signals`]): it stops
//!   accepting, and each connection goes on echoing until its client ends its side, then
//!   closes with a FIN; every byte a client sent comes back. Connections still open after
//!   `--grace` seconds are cancelled: each finishes the write it was in, shuts down its write
//!   side (the client sees the end of the stream after its last echo), and reads what is left.
//!   A second signal stops it at once.
//!
//! ```text
//! cargo run --release --example echo_server -- --backend uring --addr 127.0.0.1:7000
//! ```
//! It prints its stats and a `shutdown finished=N cancelled=N aborted=N immediate=B` line to
//! stderr when it stops, and exits 0 (1 if a second signal cut the shutdown short). SIGUSR1
//! prints a one-line snapshot of its counters to stderr and goes on.
//!
//! `--threads N` serves with N shards ([`Shards`]: a runtime per thread, pinned one per CPU, or
//! to the CPUs of `--cpus`, or left to the scheduler with `--no-pin`), each accepting on its own
//! `SO_REUSEPORT` listener of the same address ([`ShardListeners`]) and shutting down the same
//! way; it prints a `shard I accepted=N ...` line per shard when it stops, and the counters
//! summed over the shards.
//! `--threads 1` (the default) is the single-runtime server.
//!
//! The live view is on (`--no-inspect` turns it off): `ringloop-ps <pid>` shows every task of
//! the server from outside, what it awaits and for how long, with its stats and op table.
//!
//! `--io tokio` serves each connection through tokio's `AsyncRead`/`AsyncWrite` instead
//! (`net::compat::Io`, a read into a 4 KiB buffer then a write back, as code written for tokio
//! does it), to measure what the adapter costs against the owned-buffer path; `--io
//! tokio-pooled` uses the adapter's pooled reads.

use std::net::{Shutdown, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use ringloop::net::compat::{Io, Mechanism};
use ringloop::net::{
    PooledBuf, PooledReceiver, SendAllError, Server, ShardListeners, ShutdownSignal, TcpListener,
    TcpStream,
};
use ringloop::{
    is_cancelled, signal, spawn, Backend, Handle, Placement, Runtime, RuntimeStats, Shards,
    SignalKind,
};

#[path = "common/backend_arg.rs"]
mod backend_arg;
use backend_arg::BackendArg;

#[derive(Parser, Debug)]
#[command(about = "ringloop echo server")]
struct Args {
    /// I/O backend.
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendArg,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7000")]
    addr: SocketAddr,
    /// Listen backlog.
    #[arg(long, default_value_t = 4096)]
    backlog: i32,
    /// Buffers in the receive pool (a power of two).
    #[arg(long, default_value_t = 512)]
    pool_buffers: u16,
    /// Bytes per pool buffer.
    #[arg(long, default_value_t = 2048)]
    pool_buf_size: usize,
    /// Install sockets in io_uring's registered file table (see `Builder::registered_fds`).
    #[arg(long)]
    registered_fds: bool,
    /// Send with io_uring's zero-copy SEND_ZC (see `Builder::zero_copy_send`).
    #[arg(long)]
    zero_copy: bool,
    /// Receive with plain multishot receives, one pool buffer per completion, instead of
    /// bundles (see `Builder::recv_bundles`).
    #[arg(long)]
    no_recv_bundles: bool,
    /// Receive with single-shot receives, one pool buffer each, re-armed at every receive, as
    /// on kernels before 6.10 (see `Builder::multishot_recv`).
    #[arg(long)]
    no_multishot_recv: bool,
    /// Print "listening on ADDR" and the backend, then serve (for scripts that wait for it).
    #[arg(long, default_value_t = true)]
    announce: bool,
    /// Seconds the open connections get to finish after SIGTERM or SIGINT, before they are
    /// cancelled.
    #[arg(long, default_value_t = 5.0)]
    grace: f64,
    /// Shards: runtimes on their own threads, each on its own `SO_REUSEPORT` listener.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// CPUs to pin the shards to, comma-separated (shard i on the i-th, round robin); default:
    /// one per CPU this process may use, spread evenly.
    #[arg(long, value_delimiter = ',')]
    cpus: Option<Vec<usize>>,
    /// Don't pin the shards to CPUs: the scheduler places their threads.
    #[arg(long, conflicts_with = "cpus")]
    no_pin: bool,
    /// How a connection is read and written: ringloop's own owned-buffer API (`native`), or
    /// tokio's `AsyncRead`/`AsyncWrite` through `net::compat::Io`, the way code written for
    /// tokio does it (a 4 KiB buffer of the connection's own, read then write back), with the
    /// adapter's readiness reads (`tokio`) or its pooled reads (`tokio-pooled`).
    #[arg(long, value_enum, default_value = "native")]
    io: IoArg,
    /// Serve no live view. On by default here: `ringloop-ps <pid>` shows every task, what it
    /// awaits and for how long, the stats and the op table (see `Builder::inspect`).
    #[arg(long)]
    no_inspect: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum IoArg {
    Native,
    Tokio,
    TokioPooled,
}

fn main() -> ExitCode {
    match serve(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("echo_server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Serves until a signal stops the server; whether the shutdown ran its course (no second
/// signal cut it short).
fn serve(args: Args) -> std::io::Result<bool> {
    let backend = Backend::from(args.backend);
    let grace = Duration::try_from_secs_f64(args.grace).map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("--grace: {e}"))
    })?;
    raise_nofile_limit();
    if args.threads == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "--threads: at least 1",
        ));
    }
    if args.threads > 1 || args.cpus.is_some() {
        return serve_sharded(args, backend, grace);
    }
    let rt = runtime_builder(&args, backend).build()?;
    let description = rt.backend_description();
    let report = rt.block_on(async {
        report_on_sigusr1()?;
        let listener = TcpListener::builder(args.addr)
            .backlog(args.backlog)
            .bind()?;
        let addr = listener.local_addr()?;
        let io = args.io;
        let server = Server::tcp(listener, move |stream, shutdown| {
            handler(io, stream, shutdown)
        });
        // Listening for the signals before saying so: a SIGTERM sent as soon as the line is
        // read is not missed.
        let stopped = server.shutdown_on_signals(grace)?;
        if args.announce {
            println!("listening on {addr} ({description})");
        }
        stopped.await
    })?;
    let stats = rt.stats();
    eprintln!("{stats:#?}");
    eprintln!("final stats {}", counters(&stats));
    eprintln!(
        "shutdown finished={} cancelled={} aborted={} immediate={}",
        report.finished, report.cancelled, report.aborted, report.immediate
    );
    Ok(!report.immediate)
}

/// The runtime as the flags ask for it.
fn runtime_builder(args: &Args, backend: Backend) -> ringloop::Builder {
    Runtime::builder()
        .backend(backend)
        .buffer_pool(args.pool_buffers, args.pool_buf_size)
        .zero_copy_send(args.zero_copy)
        .registered_fds(args.registered_fds)
        .recv_bundles(!args.no_recv_bundles)
        .multishot_recv(!args.no_multishot_recv)
        .inspect(!args.no_inspect)
}

/// What one shard ends with.
struct ShardEnd {
    report: ringloop::net::ShutdownReport,
    accepted: u64,
    stats: RuntimeStats,
}

/// Serves with `--threads` shards, each a runtime on its own thread with its own listener on
/// the same address; each shuts down on SIGTERM or SIGINT as the single-runtime server does.
fn serve_sharded(args: Args, backend: Backend, grace: Duration) -> std::io::Result<bool> {
    let threads = args.threads;
    let listeners = ShardListeners::builder(args.addr, threads)
        .backlog(args.backlog)
        .bind()?;
    let addr = listeners.local_addr();
    let placement = match &args.cpus {
        Some(cpus) => Placement::Cpus(cpus.clone()),
        None if args.no_pin => Placement::Unpinned,
        None => Placement::Spread,
    };
    let announce = args.announce;
    let io = args.io;
    let args = std::sync::Arc::new(args);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Backend>();
    let shards = Shards::builder()
        .count(threads)
        .placement(placement)
        .thread_name("echo-shard")
        .runtime({
            let args = args.clone();
            move |_| runtime_builder(&args, backend)
        })
        .start(move |shard| {
            let listeners = listeners.clone();
            let ready = ready_tx.clone();
            async move {
                if shard.index() == 0 {
                    report_on_sigusr1_sharded(shard.handles().to_vec())?;
                }
                let server = listeners.serve(&shard, move |stream, shutdown| {
                    handler(io, stream, shutdown)
                })?;
                let stopped = server.shutdown_on_signals(grace)?;
                let _ = ready.send(ringloop::current_backend());
                drop(ready);
                let report = stopped.await?;
                Ok::<_, std::io::Error>(ShardEnd {
                    report,
                    accepted: server.accepted_total(),
                    stats: ringloop::current_stats(),
                })
            }
        })?;
    // Every shard listens for the signals before the line is printed.
    let mut started = 0;
    let mut chosen = None;
    while started < threads {
        match ready_rx.recv() {
            Ok(b) => {
                chosen = Some(b);
                started += 1;
            }
            // Every shard's sender is gone: one failed before it was ready.
            Err(_) => break,
        }
    }
    if started == threads && announce {
        println!(
            "listening on {addr} ({:?}, {threads} shards)",
            chosen.unwrap_or(backend)
        );
    }
    let mut total = RuntimeStats::default();
    let mut graceful = started == threads;
    for (i, end) in shards.join_all().into_iter().enumerate() {
        match end {
            Ok(Ok(end)) => {
                total.add(&end.stats);
                let r = &end.report;
                eprintln!(
                    "shard {i} accepted={} finished={} cancelled={} aborted={} immediate={}",
                    end.accepted, r.finished, r.cancelled, r.aborted, r.immediate
                );
                graceful &= !r.immediate;
            }
            Ok(Err(e)) => {
                eprintln!("shard {i}: {e}");
                graceful = false;
            }
            Err(e) => {
                eprintln!("{e}");
                graceful = false;
            }
        }
    }
    eprintln!("final stats {}", counters(&total));
    Ok(graceful)
}

/// On SIGUSR1 (listened for on shard 0), prints one line of counters summed over every shard.
fn report_on_sigusr1_sharded(handles: Vec<Handle>) -> std::io::Result<()> {
    let mut listener = signal(SignalKind::user_defined1())?;
    spawn(async move {
        while listener.recv().await.is_ok() {
            let asks: Vec<_> = handles
                .iter()
                .map(|h| h.spawn(|| async { ringloop::current_stats() }))
                .collect();
            let mut total = RuntimeStats::default();
            for ask in asks {
                if let Ok(s) = ask.await {
                    total.add(&s);
                }
            }
            eprintln!("stats {}", counters(&total));
        }
    });
    Ok(())
}

/// Chunks written back in one gather write, at most.
const MAX_BATCH: usize = 64;

/// The connection handler `--io` asks for.
async fn handler(io: IoArg, stream: TcpStream, shutdown: ShutdownSignal) {
    match io {
        IoArg::Native => echo(stream, shutdown).await,
        IoArg::Tokio => Box::pin(echo_tokio(stream, Mechanism::Readiness)).await,
        IoArg::TokioPooled => Box::pin(echo_tokio(stream, Mechanism::Pooled)).await,
    }
}

/// The echo as code written for tokio's traits does it, on ringloop through `net::compat::Io`:
/// read into the connection's own buffer, write it back (`tokio_echo_server`'s loop). Cancelled
/// at the end of the grace, it stops where it is.
async fn echo_tokio(stream: TcpStream, mechanism: Mechanism) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream.set_nodelay(true);
    let mut io = Io::with_mechanism(stream, mechanism);
    let mut buf = vec![0u8; 4096];
    loop {
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Echoes one connection. Every chunk already queued when one arrives goes back in the same
/// write (one `sendmsg`), so a bulk stream costs one write per batch, not one per 2 KiB chunk;
/// a ping-pong has one chunk at a time and writes it alone. Any error (a reset peer, say)
/// ends this connection only.
///
/// A shutdown changes nothing until the grace ends: the client is echoed until it ends its
/// side, and then every chunk it sent has gone back, so closing sends a FIN. Cancelled at the
/// end of the grace, the handler finishes the write it was in and closes gracefully
/// ([`close_after_cancel`]).
async fn echo(stream: TcpStream, _shutdown: ShutdownSignal) {
    let _ = stream.set_nodelay(true);
    let mut rx = stream.pooled_receiver();
    let unsent = loop {
        let first = match rx.recv().await {
            Ok(Some(chunk)) => chunk,
            Err(e) if is_cancelled(&e) => break Vec::new(),
            // The end of the stream (all echoed), or an error.
            _ => return,
        };
        let next = match rx.try_recv() {
            None => step(stream.write_all(first).await),
            // Bulk: the batch's state lives in its own boxed future, so the state of the
            // 10 000 ping-pong connections' futures stays small.
            Some(Ok(Some(second))) => Box::pin(echo_batch(&stream, &mut rx, first, second)).await,
            // End of stream or an error: send back what came before it, then stop.
            Some(_) => match step(stream.write_all(first).await) {
                Step::Go => Step::Stop,
                other => other,
            },
        };
        match next {
            Step::Go => {}
            Step::Stop => return,
            Step::Cancelled(unsent) => break unsent,
        }
    };
    Box::pin(close_after_cancel(&stream, rx, unsent)).await;
}

/// What an echo write leaves the connection to do.
enum Step {
    Go,
    Stop,
    /// Cancelled (the grace is over): these bytes of the chunks being written had not gone out.
    Cancelled(Vec<PooledBuf>),
}

/// The step after writing one chunk.
fn step((r, mut chunk): (Result<(), SendAllError>, PooledBuf)) -> Step {
    match r {
        Ok(()) => Step::Go,
        Err(e) if is_cancelled(&e.error) => {
            chunk.advance(e.sent);
            Step::Cancelled(vec![chunk])
        }
        Err(_) => Step::Stop,
    }
}

/// Cancelled at the end of the grace: sends the rest of the write that was cut short, shuts
/// down the write side (the client reads its last echo, then the end of the stream), and
/// reads what the client still sends until it ends its side, so that closing never finds
/// unread data (which would send a reset instead of the FIN).
async fn close_after_cancel(stream: &TcpStream, mut rx: PooledReceiver, unsent: Vec<PooledBuf>) {
    if !unsent.is_empty() && stream.write_all_vectored(unsent).await.0.is_err() {
        return;
    }
    let _ = stream.shutdown(Shutdown::Write);
    while let Ok(Some(_)) = rx.recv().await {}
}

/// Writes `first`, `second` and whatever else is queued (up to [`MAX_BATCH`] chunks) with one
/// gather write; the step after it.
async fn echo_batch(
    stream: &TcpStream,
    rx: &mut PooledReceiver,
    first: PooledBuf,
    second: PooledBuf,
) -> Step {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    batch.extend([first, second]);
    let mut open = true;
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            None => break,
            Some(Ok(Some(chunk))) => batch.push(chunk),
            Some(_) => {
                open = false;
                break;
            }
        }
    }
    let (r, mut batch) = stream.write_all_vectored(batch).await;
    match r {
        Ok(()) if open => Step::Go,
        Ok(()) => Step::Stop,
        Err(e) if is_cancelled(&e.error) => {
            // Drop what went out; the first chunk left may have gone out in part.
            let mut sent = e.sent;
            batch.retain_mut(|chunk| {
                let skip = sent.min(chunk.len());
                sent -= skip;
                chunk.advance(skip);
                !chunk.is_empty()
            });
            Step::Cancelled(batch)
        }
        Err(_) => Step::Stop,
    }
}

/// Raises the soft descriptor limit to the hard limit, for 10 000+ connections.
fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// On SIGUSR1, prints one line of counters to stderr (`stats kernel_enters=N ...`), so a load
/// generator can take the difference over its measured window (`c10k` does).
fn report_on_sigusr1() -> std::io::Result<()> {
    let mut listener = signal(SignalKind::user_defined1())?;
    spawn(async move {
        while listener.recv().await.is_ok() {
            eprintln!("stats {}", counters(&ringloop::current_stats()));
        }
    });
    Ok(())
}

/// The counters a load generator reads, as `key=value` pairs: the SIGUSR1 line and the
/// `final stats` line printed at exit share this format.
fn counters(s: &RuntimeStats) -> String {
    format!(
        "kernel_enters={} driver_syscalls={} ops_submitted={} buffer_exhaustions={} \
         cq_overflows={} recv_bundles={} ops_cancelled={}",
        s.kernel_enters,
        s.driver_syscalls,
        s.ops_submitted,
        s.buffer_exhaustions,
        s.cq_overflows,
        s.recv_bundles,
        s.ops_cancelled
    )
}
