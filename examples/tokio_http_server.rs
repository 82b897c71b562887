//! The baseline of the HTTP benchmarks: hyper 1 on tokio, written the usual way (a task per
//! connection, `hyper_util::rt::TokioIo`, hyper-util's auto HTTP/1 + HTTP/2 builder with its
//! defaults: keep-alive on, no pipeline flush; hyper's header-read timeout on `TokioTimer`, 30 s
//! as in ringloop's `http_server`). It serves the routes of
//! [`common/http_routes.rs`](http_routes): `GET /` (`Hello, World!`), `GET /64k` and
//! `POST /echo`.
//!
//! ```text
//! cargo run --release --example tokio_http_server -- --addr 127.0.0.1:8080
//! cargo run --release --example tokio_http_server -- --threads 2 --flavor multi
//! cargo run --release --example tokio_http_server -- --threads 2 --flavor reuseport
//! curl http://127.0.0.1:8080/
//! ```
//!
//! The flavors are `tokio_echo_server`'s:
//! * By default (`--threads 1`, no `--flavor`): one `current_thread` runtime.
//! * `--flavor multi`: tokio's `multi_thread` runtime with `--threads` workers, one listener.
//! * `--flavor reuseport`: `--threads` threads, each with its own `current_thread` runtime and
//!   its own `SO_REUSEPORT` listener on the same address.
//!
//! It prints `listening on ADDR (...)` to stdout once it accepts (`--announce` is accepted for
//! the command line of the ringloop servers; the line is always printed). SIGTERM or SIGINT
//! shuts it down gracefully: it stops accepting, each connection finishes the request it is
//! serving and closes (an idle keep-alive connection closes at once), and after at most
//! `--grace` seconds it prints how many connections it accepted to stderr (`accepted=N`, or a
//! `shard I accepted=N` line per thread with `--flavor reuseport`) and exits 0.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use nix::sys::signal::{SigSet, Signal};
use tokio::sync::watch;

#[path = "common/http_routes.rs"]
mod http_routes;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Flavor {
    /// tokio's multi-thread runtime, `--threads` workers, one listener.
    Multi,
    /// `--threads` current-thread runtimes, each on its own `SO_REUSEPORT` listener.
    Reuseport,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Protocol {
    /// HTTP/1.1, or HTTP/2 when a connection opens with HTTP/2's preface (hyper-util's auto
    /// builder).
    Auto,
    /// HTTP/1.1 only.
    Http1,
}

#[derive(Parser, Debug)]
#[command(about = "tokio + hyper HTTP server (baseline)")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Print "listening on ADDR" once listening (always done; accepted for the ringloop
    /// servers' command line).
    #[arg(long, default_value_t = true)]
    announce: bool,
    /// Threads serving connections: workers of the multi-thread runtime, or reuseport shards.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,
    /// How the threads share the connections; required with `--threads` above 1. Without it,
    /// one current-thread runtime.
    #[arg(long, value_enum)]
    flavor: Option<Flavor>,
    /// The HTTP versions served.
    #[arg(long, value_enum, default_value = "auto")]
    protocol: Protocol,
    /// Seconds the open connections get to finish after SIGTERM or SIGINT.
    #[arg(long, default_value_t = 5.0)]
    grace: f64,
    /// Seconds a connection gets to send a complete request head (hyper's
    /// `header_read_timeout`, on `TokioTimer`), as in ringloop's `http_server`.
    #[arg(long, default_value_t = 30.0)]
    header_timeout: f64,
}

/// Listen backlog.
const BACKLOG: i32 = 4096;

fn main() -> ExitCode {
    match serve(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokio_http_server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What every accept loop shares: how to serve a connection and when to stop.
#[derive(Clone)]
struct Serving {
    builder: auto::Builder<TokioExecutor>,
    /// Turns `true` at SIGTERM or SIGINT.
    stop: watch::Receiver<bool>,
    grace: Duration,
}

/// Serves until SIGTERM or SIGINT, shuts down gracefully, reports the accepted connections.
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

    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The same header timeout as ringloop's http_server, on tokio's timer (without a timer
    // hyper arms no timeout at all, and the two servers would not do the same work).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs_f64(args.header_timeout));
    builder.http2().timer(TokioTimer::new());
    if args.protocol == Protocol::Http1 {
        builder = builder.http1_only();
    }
    let (stop_tx, stop) = watch::channel(false);
    let serving = Serving {
        builder,
        stop,
        grace: Duration::from_secs_f64(args.grace.max(0.0)),
    };
    let listeners = bind(
        args.addr,
        match args.flavor {
            Some(Flavor::Reuseport) => threads,
            _ => 1,
        },
    )?;
    let addr = listeners[0].local_addr()?;
    let accepted: Vec<Arc<AtomicU64>> = listeners.iter().map(|_| Arc::default()).collect();
    // Each accept loop says here when it has finished its graceful shutdown.
    let (done_tx, done) = mpsc::channel::<()>();
    let loops = listeners.len();
    // Kept alive until the exit: dropping a multi-thread runtime would stop its workers.
    let _runtime = match args.flavor {
        None | Some(Flavor::Reuseport) => {
            for (listener, count) in listeners.into_iter().zip(&accepted) {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let (serving, count, done_tx) = (serving.clone(), count.clone(), done_tx.clone());
                std::thread::Builder::new()
                    .name("tokio-http".into())
                    .spawn(move || {
                        let served = rt.block_on(async move {
                            let listener = tokio::net::TcpListener::from_std(listener)?;
                            accept_loop(listener, count, serving).await;
                            Ok::<_, std::io::Error>(())
                        });
                        if let Err(e) = served {
                            eprintln!("tokio_http_server: {e}");
                            std::process::exit(1);
                        }
                        let _ = done_tx.send(());
                    })?;
            }
            if args.flavor.is_none() {
                println!("listening on {addr} (tokio current_thread, hyper)");
            } else {
                println!(
                    "listening on {addr} (tokio current_thread, {threads} reuseport shards, hyper)"
                );
            }
            None
        }
        Some(Flavor::Multi) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build()?;
            let listener = listeners.into_iter().next().expect("one listener");
            let listener = {
                let _entered = rt.enter();
                tokio::net::TcpListener::from_std(listener)?
            };
            let (count, done_tx) = (accepted[0].clone(), done_tx.clone());
            rt.spawn(async move {
                accept_loop(listener, count, serving).await;
                let _ = done_tx.send(());
            });
            println!("listening on {addr} (tokio multi_thread, {threads} workers, hyper)");
            Some(rt)
        }
    };
    drop(done_tx);
    std::io::Write::flush(&mut std::io::stdout())?;

    let _ = stop_signals.wait();
    let _ = stop_tx.send(true);
    // Every loop finishes within its grace; a second's margin for the threads to get there.
    let deadline = Instant::now() + Duration::from_secs_f64(args.grace.max(0.0) + 1.0);
    for _ in 0..loops {
        if done
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_err()
        {
            break;
        }
    }
    if args.flavor == Some(Flavor::Reuseport) {
        for (i, count) in accepted.iter().enumerate() {
            eprintln!("shard {i} accepted={}", count.load(Ordering::Relaxed));
        }
    } else {
        eprintln!("accepted={}", accepted[0].load(Ordering::Relaxed));
    }
    // The runtimes are not shut down: whatever outlived the grace would only be dropped.
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

/// Accepts and serves connections (a task each) until the stop, then shuts them down
/// gracefully: no more accepts, each connection finishes what it is serving and closes; those
/// still open after the grace are left behind.
async fn accept_loop(listener: tokio::net::TcpListener, count: Arc<AtomicU64>, serving: Serving) {
    let Serving {
        builder,
        mut stop,
        grace,
    } = serving;
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    eprintln!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            // A closed channel (the main thread is gone) stops the loop too.
            () = stopped(&mut stop) => break,
        };
        count.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let service =
            service_fn(|req| async move { Ok::<_, Infallible>(http_routes::respond(req)) });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // A client that vanishes mid-request is no concern of the server's.
            let _ = conn.await;
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
}

/// Returns once the stop is set, or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // `wait_for`'s `Ref` holds a lock guard: dropped here, inside, not across the caller's
    // `select!` (which would make the task `!Send`).
    let _ = stop.wait_for(|&stop| stop).await;
}
