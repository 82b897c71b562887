//! The baseline every ringloop benchmark compares against: an echo server on tokio, written the
//! usual way (a task per connection with a 4 KiB buffer).
//!
//! ```text
//! cargo run --release --example tokio_echo_server -- --addr 127.0.0.1:7001
//! cargo run --release --example tokio_echo_server -- --threads 2 --flavor multi
//! cargo run --release --example tokio_echo_server -- --threads 2 --flavor reuseport
//! ```
//!
//! * By default (`--threads 1`, no `--flavor`): one `current_thread` runtime, as every
//!   single-threaded comparison uses.
//! * `--flavor multi`: tokio's `multi_thread` runtime with `--threads` workers, one listener;
//!   connections are spawned with `tokio::spawn` and the workers share them (work stealing).
//! * `--flavor reuseport`: `--threads` threads, each with its own `current_thread` runtime and
//!   its own `SO_REUSEPORT` listener on the same address (the kernel spreads the connections
//!   over them), the way `echo_server --threads N` shards. Every listener is bound up front, so
//!   port 0 resolves once.
//!
//! SIGTERM or SIGINT stops it at once (open connections are not drained): it prints how many
//! connections it accepted to stderr and exits 0. With `--flavor reuseport` that is a
//! `shard I accepted=N` line per thread, as `echo_server --threads N` prints; otherwise one
//! `accepted=N` line.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use clap::{Parser, ValueEnum};
use nix::sys::signal::{SigSet, Signal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Flavor {
    /// tokio's multi-thread runtime, `--threads` workers, one listener.
    Multi,
    /// `--threads` current-thread runtimes, each on its own `SO_REUSEPORT` listener.
    Reuseport,
}

#[derive(Parser, Debug)]
#[command(about = "tokio echo server (baseline)")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7001")]
    addr: SocketAddr,
    /// Threads serving connections: workers of the multi-thread runtime, or reuseport shards.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,
    /// How the threads share the connections; required with `--threads` above 1. Without it,
    /// one current-thread runtime.
    #[arg(long, value_enum)]
    flavor: Option<Flavor>,
}

/// Listen backlog.
const BACKLOG: i32 = 4096;

fn main() -> ExitCode {
    match serve(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokio_echo_server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Serves until SIGTERM or SIGINT, then reports the accepted connections and exits.
fn serve(args: Args) -> std::io::Result<()> {
    let threads = usize::from(args.threads);
    if threads > 1 && args.flavor.is_none() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "--threads above 1 needs --flavor multi or --flavor reuseport",
        ));
    }
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    // Blocked before any thread starts, so every thread inherits the mask and the signals wait
    // for `sigwait` below; a SIGTERM sent as soon as "listening on" is read is not missed.
    let mut stop_signals = SigSet::empty();
    stop_signals.add(Signal::SIGTERM);
    stop_signals.add(Signal::SIGINT);
    stop_signals.thread_block().map_err(std::io::Error::from)?;

    let listeners = bind(
        args.addr,
        match args.flavor {
            Some(Flavor::Reuseport) => threads,
            _ => 1,
        },
    )?;
    let addr = listeners[0].local_addr()?;
    let accepted: Vec<Arc<AtomicU64>> = listeners.iter().map(|_| Arc::default()).collect();
    // Kept alive until the exit: dropping a multi-thread runtime would stop its workers.
    let _runtime = match args.flavor {
        None => {
            let listener = listeners.into_iter().next().expect("one listener");
            spawn_current_thread(listener, accepted[0].clone())?;
            println!("listening on {addr} (tokio current_thread)");
            None
        }
        Some(Flavor::Reuseport) => {
            for (listener, count) in listeners.into_iter().zip(&accepted) {
                spawn_current_thread(listener, count.clone())?;
            }
            println!("listening on {addr} (tokio current_thread, {threads} reuseport shards)");
            None
        }
        Some(Flavor::Multi) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build()?;
            let listener = listeners.into_iter().next().expect("one listener");
            let count = accepted[0].clone();
            let listener = {
                let _entered = rt.enter();
                tokio::net::TcpListener::from_std(listener)?
            };
            rt.spawn(async move {
                loop {
                    let stream = accept(&listener, &count).await;
                    tokio::spawn(echo(stream));
                }
            });
            println!("listening on {addr} (tokio multi_thread, {threads} workers)");
            Some(rt)
        }
    };

    let _ = stop_signals.wait();
    if args.flavor == Some(Flavor::Reuseport) {
        for (i, count) in accepted.iter().enumerate() {
            eprintln!("shard {i} accepted={}", count.load(Ordering::Relaxed));
        }
    } else {
        eprintln!("accepted={}", accepted[0].load(Ordering::Relaxed));
    }
    // The runtimes are not shut down: their connections would only be dropped.
    std::process::exit(0);
}

/// `count` listening sockets on `addr`, with `SO_REUSEPORT` when there are several: the first
/// resolves port 0, the others join its port.
fn bind(mut addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Socket, Type};
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        if count > 1 {
            socket.set_reuse_port(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(BACKLOG)?;
        let listener = std::net::TcpListener::from(socket);
        if out.is_empty() {
            addr = listener.local_addr()?;
        }
        out.push(listener);
    }
    Ok(out)
}

/// Serves `listener` on a thread of its own with a `current_thread` runtime: a `spawn_local`
/// task per connection.
fn spawn_current_thread(
    listener: std::net::TcpListener,
    count: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("tokio-echo".into())
        .spawn(move || {
            let local = tokio::task::LocalSet::new();
            let served: std::io::Result<()> = local.block_on(&rt, async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                loop {
                    let stream = accept(&listener, &count).await;
                    tokio::task::spawn_local(echo(stream));
                }
            });
            if let Err(e) = served {
                eprintln!("tokio_echo_server: {e}");
                std::process::exit(1);
            }
        })?;
    Ok(())
}

/// The next connection (an accept error is reported and retried after 10 ms), counted.
async fn accept(listener: &tokio::net::TcpListener, count: &AtomicU64) -> tokio::net::TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                count.fetch_add(1, Ordering::Relaxed);
                let _ = stream.set_nodelay(true);
                return stream;
            }
            Err(e) => {
                eprintln!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Echoes one connection until its client closes it or an error.
async fn echo(mut stream: tokio::net::TcpStream) {
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
}
