//! The echo server as a protocol (asyncio's `create_server` with an `asyncio.Protocol`): no
//! task per connection. One dispatcher task drives every connection; each chunk received goes
//! to `data_received` in the pool buffer it landed in, and is written straight back from it.
//! The same flags as `echo_server`, so `c10k` runs the two side by side (its `protocol`
//! backend).
//!
//! * A client that sends but never reads is back-pressured: once the writes queued for it
//!   pass the high-water mark, `pause_writing` pauses reading; TCP then stops the client.
//! * A client that vanishes mid-message frees its descriptor and buffers at once.
//!
//! ```text
//! cargo run --release --example echo_protocol -- --backend uring --addr 127.0.0.1:7000
//! ```
//! Send SIGINT or SIGTERM to stop it; it prints its stats. SIGUSR1 prints a one-line snapshot
//! of its counters to stderr and goes on.

use std::net::SocketAddr;

use clap::Parser;
use ringloop::net::{create_server_on, PooledBuf, Protocol, TcpListener, Transport};
use ringloop::{signal, Backend, Runtime, RuntimeStats, SignalKind};

#[path = "common/backend_arg.rs"]
mod backend_arg;
use backend_arg::BackendArg;

#[derive(Parser, Debug)]
#[command(about = "ringloop echo server, as a protocol (no task per connection)")]
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

/// asyncio:
///
/// ```python
/// class Echo(asyncio.Protocol):
///     def connection_made(self, transport):
///         self.transport = transport
///     def data_received(self, data):
///         self.transport.write(data)
///     def pause_writing(self):
///         self.transport.pause_reading()
///     def resume_writing(self):
///         self.transport.resume_reading()
/// ```
#[derive(Default)]
struct Echo {
    transport: Option<Transport>,
}

impl Protocol for Echo {
    fn connection_made(&mut self, transport: &Transport) {
        self.transport = Some(transport.clone());
    }

    fn data_received(&mut self, data: PooledBuf) {
        if let Some(t) = &self.transport {
            // Every chunk written in this pass goes out in one send.
            t.write(data);
        }
    }

    // A peer that does not read: stop reading from it until it catches up, so what is
    // queued for it stays below the high-water mark (64 KiB).
    fn pause_writing(&mut self) {
        if let Some(t) = &self.transport {
            t.pause_reading();
        }
    }

    fn resume_writing(&mut self) {
        if let Some(t) = &self.transport {
            t.resume_reading();
        }
    }
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let backend = Backend::from(args.backend);
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
            "listening on {} ({}, protocol)",
            listener.local_addr()?,
            rt.backend_description()
        );
    }
    // The server's handle is dropped (it serves on); run_until_complete leaves its tasks alive
    // for run_forever, where block_on would cancel them once its future is done.
    rt.run_until_complete(async { create_server_on(Echo::default, listener).map(drop) })?;
    rt.run_forever()?;
    let stats = rt.stats();
    eprintln!("{stats:#?}");
    eprintln!("final stats {}", counters(&stats));
    Ok(())
}

/// Raises the soft descriptor limit to the hard limit, for 10 000+ connections.
fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// On SIGUSR1, prints one line of counters to stderr (`stats kernel_enters=N ...`), the format
/// of `echo_server`'s, so a load generator reads both the same way (`c10k` does).
fn report_on_sigusr1(rt: &Runtime) -> std::io::Result<()> {
    let mut listener = signal(SignalKind::user_defined1())?;
    rt.spawn(async move {
        while listener.recv().await.is_ok() {
            eprintln!("stats {}", counters(&ringloop::current_stats()));
        }
    });
    Ok(())
}

/// The counters a load generator reads, as `key=value` pairs (as `echo_server` prints them),
/// plus the task polls, which this server keeps to a few per loop iteration.
fn counters(s: &RuntimeStats) -> String {
    format!(
        "kernel_enters={} driver_syscalls={} ops_submitted={} buffer_exhaustions={} \
         cq_overflows={} recv_bundles={} ops_cancelled={} polls={}",
        s.kernel_enters,
        s.driver_syscalls,
        s.ops_submitted,
        s.buffer_exhaustions,
        s.cq_overflows,
        s.recv_bundles,
        s.ops_cancelled,
        s.polls
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
