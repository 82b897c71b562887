//! An echo server on ringloop: one runtime on one thread, a task per connection, receiving into
//! the runtime's buffer pool (multishot receive on io_uring) and writing each chunk back.
//!
//! * Holds 10 000+ connections: an idle connection owns no buffer.
//! * A client that sends but never reads is back-pressured: once its replies fill the socket,
//!   the write waits, the connection's receive stops at its cap of queued chunks, and TCP
//!   stops the client. Nothing is buffered without bound.
//! * A client that vanishes mid-message frees its descriptor and buffers at once.
//!
//! ```text
//! cargo run --release --example echo_server -- --backend uring --addr 127.0.0.1:7000
//! ```
//! Send SIGINT or SIGTERM to stop it; it prints its stats. SIGUSR1 prints a one-line snapshot
//! of its counters to stderr and goes on.

use std::net::SocketAddr;

use clap::{Parser, ValueEnum};
use ringloop::net::{PooledBuf, PooledReceiver, TcpListener, TcpStream};
use ringloop::{signal, spawn, Backend, Runtime, RuntimeStats, SignalKind};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BackendArg {
    Auto,
    Uring,
    Epoll,
}

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
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let backend = match args.backend {
        BackendArg::Auto => Backend::Auto,
        BackendArg::Uring => Backend::IoUring,
        BackendArg::Epoll => Backend::Epoll,
    };
    raise_nofile_limit();
    let rt = Runtime::builder()
        .backend(backend)
        .buffer_pool(args.pool_buffers, args.pool_buf_size)
        .zero_copy_send(args.zero_copy)
        .registered_fds(args.registered_fds)
        .recv_bundles(!args.no_recv_bundles)
        .multishot_recv(!args.no_multishot_recv)
        .build()?;
    stop_on_signal(&rt)?;
    report_on_sigusr1(&rt)?;
    let listener = TcpListener::builder(args.addr)
        .backlog(args.backlog)
        .bind()?;
    if args.announce {
        println!(
            "listening on {} ({})",
            listener.local_addr()?,
            rt.backend_description()
        );
    }
    rt.spawn(async move {
        let mut incoming = listener.incoming();
        loop {
            let (stream, _peer) = match incoming.next().await {
                Ok(conn) => conn,
                Err(e) => {
                    eprintln!("accept failed: {e}");
                    return;
                }
            };
            let _ = stream.set_nodelay(true);
            spawn(echo(stream));
        }
    });
    rt.run_forever()?;
    let stats = rt.stats();
    eprintln!("{stats:#?}");
    eprintln!("final stats {}", counters(&stats));
    Ok(())
}

/// Chunks written back in one gather write, at most.
const MAX_BATCH: usize = 64;

/// Echoes one connection. Every chunk already queued when one arrives goes back in the same
/// write (one `sendmsg`), so a bulk stream costs one write per batch, not one per 2 KiB chunk;
/// a ping-pong has one chunk at a time and writes it alone. Any error (a reset peer, say)
/// ends this connection only.
async fn echo(stream: TcpStream) {
    let mut rx = stream.pooled_receiver();
    loop {
        let first = match rx.recv().await {
            Ok(Some(chunk)) => chunk,
            _ => return,
        };
        let go_on = match rx.try_recv() {
            None => stream.write_all(first).await.0.is_ok(),
            // Bulk: the batch's state lives in its own boxed future, so the state of the
            // 10 000 ping-pong connections' futures stays small.
            Some(Ok(Some(second))) => Box::pin(echo_batch(&stream, &mut rx, first, second)).await,
            // End of stream or an error: send back what came before it, then stop.
            Some(_) => {
                let _ = stream.write_all(first).await;
                false
            }
        };
        if !go_on {
            return;
        }
    }
}

/// Writes `first`, `second` and whatever else is queued (up to [`MAX_BATCH`] chunks) with one
/// gather write; whether the connection goes on.
async fn echo_batch(
    stream: &TcpStream,
    rx: &mut PooledReceiver,
    first: PooledBuf,
    second: PooledBuf,
) -> bool {
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
    let (r, _batch) = stream.write_all_vectored(batch).await;
    r.is_ok() && open
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
fn report_on_sigusr1(rt: &Runtime) -> std::io::Result<()> {
    let mut listener = signal(SignalKind::user_defined1())?;
    rt.spawn(async move {
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

/// Stops the loop on SIGINT or SIGTERM (asyncio's `add_signal_handler(SIGTERM, loop.stop)`).
/// The listeners are registered now, before serving, so an early signal is not missed.
fn stop_on_signal(rt: &Runtime) -> std::io::Result<()> {
    for kind in [SignalKind::interrupt(), SignalKind::terminate()] {
        let mut listener = signal(kind)?;
        rt.spawn(async move {
            if listener.recv().await.is_ok() {
                ringloop::stop();
            }
        });
    }
    Ok(())
}
