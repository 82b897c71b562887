//! An HTTP/1.1 and HTTP/2 server on hyper, served by ringloop: hyper's own connection code runs
//! unmodified on ringloop's sockets (`net::compat::Io`), its executor and its timer
//! (`compat::hyper`), on io_uring or epoll.
//!
//! It serves the routes of [`common/http_routes.rs`](http_routes): `GET /` answers
//! `Hello, World!` (`text/plain`), `GET /64k` a fixed 64 KiB body, and `POST /echo` streams the
//! request's body back as it arrives; `HEAD` answers as `GET` without the body, another method
//! on these paths gets `405` (with `allow`), any other path `404`.
//!
//! ```text
//! cargo run --release --example http_server -- --backend uring --addr 127.0.0.1:8080
//! curl http://127.0.0.1:8080/
//! curl --http2-prior-knowledge http://127.0.0.1:8080/
//! curl --data-binary @file http://127.0.0.1:8080/echo
//! cargo run --release --example http_server -- --tls --addr 127.0.0.1:8443
//! curl -k https://127.0.0.1:8443/
//! ```
//!
//! * Each connection is a task (`net::Server`); hyper-util's auto builder speaks HTTP/1.1, or
//!   HTTP/2 when the connection opens with HTTP/2's preface (or negotiates `h2` over TLS).
//! * `--tls` serves HTTPS through `tokio-rustls` on the tokio-trait side of the same adapter,
//!   with a self-signed certificate for `localhost` made at start (`rcgen`); ALPN offers `h2`
//!   and `http/1.1`.
//! * `--threads N` serves with N shards (a runtime per thread, each on its own `SO_REUSEPORT`
//!   listener of the same address), pinned one per CPU unless `--no-pin`.
//! * SIGTERM or SIGINT shuts it down gracefully: it stops accepting, and every connection
//!   finishes the requests it is serving (hyper's graceful shutdown: an idle keep-alive
//!   connection closes at once, a busy one after its response); connections still open after
//!   `--grace` seconds are cancelled. A second signal stops it at once. It then prints
//!   `shutdown finished=N cancelled=N aborted=N immediate=BOOL` to stderr (`net::ShutdownReport`:
//!   `aborted` counts the connections a second signal cut off and those that ignored their
//!   cancellation) and exits 0, or 1 after a second signal.
//! * A client that opens a connection and sends no complete request head within
//!   `--header-timeout` seconds is disconnected, and so is an HTTP/1 keep-alive connection
//!   that does not complete its next request head within that time of the previous response
//!   (hyper's `header_read_timeout` on ringloop's timer). An HTTP/2 connection is timed only
//!   until its first request.
//!
//! * `--static DIR` serves DIR's files under `/static/` (`GET`, `HEAD`; a path that leaves DIR
//!   or names no file is `404`). On plain HTTP/1.1 connections they are sent with `send_file`
//!   (the kernel copies the file into the socket): the server reads the request heads itself
//!   while they ask for static files, then hands the connection to hyper at the first other
//!   request (`common/static_files.rs`); hyper's route reads the file whole (TLS, HTTP/2).
//!
//! * The live view is on (`--no-inspect` turns it off): `ringloop-ps <pid>` shows every task
//!   from outside (hyper's connection tasks, what each awaits and for how long), the stats and
//!   the op table.
//!
//! It prints `listening on ADDR (...)` on stdout once it accepts.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use futures_util::future::Either;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ringloop::net::compat::http::{self, Http};
use ringloop::net::compat::{Io, Mechanism};
use ringloop::net::{
    Server, ShardListeners, ShutdownReport, ShutdownSignal, TcpListener, TcpStream,
};
use ringloop::{Backend, Placement, Runtime, Shards};

#[path = "common/http_routes.rs"]
mod http_routes;
#[path = "common/static_files.rs"]
mod static_files;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Protocol {
    /// HTTP/1.1, or HTTP/2 when a connection opens with HTTP/2's preface.
    Auto,
    /// HTTP/1.1 only.
    Http1,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Reads {
    Readiness,
    Pooled,
}

#[path = "common/backend_arg.rs"]
mod backend_arg;
use backend_arg::BackendArg;

#[derive(Parser, Debug)]
#[command(about = "HTTP/1.1 + HTTP/2 server: hyper on ringloop")]
struct Args {
    /// I/O backend.
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendArg,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Print "listening on ADDR" once listening (always done; accepted for scripts).
    #[arg(long, default_value_t = true)]
    announce: bool,
    /// Listen backlog.
    #[arg(long, default_value_t = 4096)]
    backlog: i32,
    /// The HTTP versions served.
    #[arg(long, value_enum, default_value = "auto")]
    protocol: Protocol,
    /// Serve HTTPS with a self-signed certificate for `localhost` made at start.
    #[arg(long)]
    tls: bool,
    /// Shards: runtimes on their own threads, each on its own `SO_REUSEPORT` listener.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,
    /// Pin the shards to these CPUs (comma-separated) instead of one per CPU.
    #[arg(long, value_delimiter = ',')]
    cpus: Option<Vec<usize>>,
    /// Leave the shards to the scheduler.
    #[arg(long)]
    no_pin: bool,
    /// Seconds the open connections get to finish after SIGTERM or SIGINT.
    #[arg(long, default_value_t = 5.0)]
    grace: f64,
    /// How the connections' reads reach hyper's buffers (`net::compat::Mechanism`): a copy
    /// out of the connection's multishot receive into the runtime's buffer pool (`pooled`, no
    /// system call per read on io_uring; the cheaper one for many connections with small
    /// requests, measured), or a non-blocking read when the ring says the socket is readable
    /// (`readiness`).
    #[arg(long, value_enum, default_value = "pooled")]
    reads: Reads,
    /// Seconds a connection gets to send a complete request head.
    #[arg(long, default_value_t = 30.0)]
    header_timeout: f64,
    /// Serve the files of this directory under `/static/`, with `send_file` (the kernel copies
    /// the file straight into the socket) on plain HTTP/1.1 connections.
    #[arg(long = "static", value_name = "DIR")]
    static_dir: Option<PathBuf>,
    /// Serve no live view. On by default here: `ringloop-ps <pid>` shows every task, what it
    /// awaits and for how long, the stats and the op table (see `Builder::inspect`).
    #[arg(long)]
    no_inspect: bool,
}

/// What every connection of a runtime shares.
struct Config {
    /// hyper's connection settings on ringloop's executor and timer, built once per runtime
    /// (each connection copies them until its first bytes tell HTTP/1 from HTTP/2).
    http: Http,
    tls: Option<tokio_rustls::TlsAcceptor>,
    header_timeout: Duration,
    mechanism: Mechanism,
    static_dir: Option<PathBuf>,
}

impl Config {
    fn new(
        protocol: Protocol,
        tls: Option<tokio_rustls::TlsAcceptor>,
        header_timeout: Duration,
        mechanism: Mechanism,
        static_dir: Option<PathBuf>,
    ) -> Config {
        let mut http = Http::new().header_timeout(Some(header_timeout));
        if protocol == Protocol::Http1 {
            http = http.http1_only();
        }
        Config {
            http,
            tls,
            header_timeout,
            mechanism,
            static_dir,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("http_server: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> std::io::Result<bool> {
    let backend = Backend::from(args.backend);
    let tls = if args.tls {
        Some(tls_acceptor()?)
    } else {
        None
    };
    let grace = Duration::from_secs_f64(args.grace);
    let protocol = args.protocol;
    let header_timeout = Duration::from_secs_f64(args.header_timeout);
    let mechanism = match args.reads {
        Reads::Readiness => Mechanism::Readiness,
        Reads::Pooled => Mechanism::Pooled,
    };
    let static_dir = args.static_dir;
    if let Some(dir) = &static_dir {
        if !dir.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("--static {}: not a directory", dir.display()),
            ));
        }
    }
    let config = move || {
        Config::new(
            protocol,
            tls.clone(),
            header_timeout,
            mechanism,
            static_dir.clone(),
        )
    };
    let scheme = if args.tls { "https" } else { "http" };

    let inspect = !args.no_inspect;
    if args.threads == 1 {
        let listener = TcpListener::builder(args.addr)
            .backlog(args.backlog)
            .bind()?;
        let addr = listener.local_addr()?;
        let rt = Runtime::builder()
            .backend(backend)
            .inspect(inspect)
            .build()?;
        let report = rt.block_on(async move {
            let server = serve(listener, Rc::new(config()));
            let stopped = server.shutdown_on_signals(grace)?;
            println!(
                "listening on {addr} ({scheme}, {:?})",
                ringloop::current_backend()
            );
            stopped.await
        })?;
        print_report(None, &report);
        return Ok(!report.immediate);
    }

    let threads = args.threads as usize;
    let listeners = ShardListeners::builder(args.addr, threads)
        .backlog(args.backlog)
        .bind()?;
    let addr = listeners.local_addr();
    let placement = match args.cpus {
        Some(cpus) => Placement::Cpus(cpus),
        None if args.no_pin => Placement::Unpinned,
        None => Placement::Spread,
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let shards = Shards::builder()
        .count(threads)
        .placement(placement)
        .thread_name("http-shard")
        .runtime(move |_| Runtime::builder().backend(backend).inspect(inspect))
        .start(move |shard| {
            let listeners = listeners.clone();
            let ready = ready_tx.clone();
            let config = config.clone();
            async move {
                let config = Rc::new(config());
                let server = listeners.serve(&shard, move |stream, shutdown| {
                    connection(stream, shutdown, config.clone())
                })?;
                let stopped = server.shutdown_on_signals(grace)?;
                let _ = ready.send(());
                drop(ready);
                stopped.await
            }
        })?;
    let started = ready_rx.iter().take(threads).count();
    if started == threads {
        println!("listening on {addr} ({scheme}, {threads} shards)");
    }
    let mut graceful = started == threads;
    for (i, end) in shards.join_all().into_iter().enumerate() {
        match end {
            Ok(Ok(report)) => {
                print_report(Some(i), &report);
                graceful &= !report.immediate;
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
    Ok(graceful)
}

fn print_report(shard: Option<usize>, r: &ShutdownReport) {
    let prefix = shard.map(|i| format!("shard {i} ")).unwrap_or_default();
    eprintln!(
        "{prefix}shutdown finished={} cancelled={} aborted={} immediate={}",
        r.finished, r.cancelled, r.aborted, r.immediate
    );
}

/// A server on `listener` whose connections are served by [`connection`].
fn serve(listener: TcpListener, config: Rc<Config>) -> Server {
    Server::tcp(listener, move |stream, shutdown| {
        connection(stream, shutdown, config.clone())
    })
}

/// Serves one connection: TLS first if configured, then HTTP until the client is done or the
/// server shuts down (`Http::serve` does the same without the TLS). With `--static`, a plain
/// connection's requests for static files are answered with `send_file` until one is not;
/// hyper serves the rest.
///
/// The plain case is `serve_connection`'s future itself, with nothing around it: every layer
/// of futures is more state for each wake-up to read, and at thousands of connections each
/// is a cache miss. The others (TLS sessions, static files) are boxed: their futures are
/// large, and the plain connections' should not be.
fn connection(
    stream: TcpStream,
    shutdown: ShutdownSignal,
    config: Rc<Config>,
) -> impl Future<Output = Result<(), http::Error>> {
    let _ = stream.set_nodelay(true);
    if config.tls.is_some() || config.static_dir.is_some() {
        return Either::Right(Box::pin(tls_or_static(stream, shutdown, config)));
    }
    // hyper straight on the stream, answering as `tokio_http_server` does.
    let io = Io::with_mechanism(stream, config.mechanism);
    let service = service_fn(|req| async move { Ok::<_, Infallible>(http_routes::respond(req)) });
    Either::Left(config.http.serve_connection(io, service, Some(&shutdown)))
}

/// [`connection`] with TLS or static files.
async fn tls_or_static(
    stream: TcpStream,
    shutdown: ShutdownSignal,
    config: Rc<Config>,
) -> Result<(), http::Error> {
    let mut prefix = Vec::new();
    if let (Some(dir), None) = (&config.static_dir, &config.tls) {
        match static_files::serve(&stream, dir, config.header_timeout, &shutdown).await {
            static_files::Outcome::Closed => return Ok(()),
            static_files::Outcome::Other(read) => prefix = read,
        }
    }
    let io = Io::with_mechanism(stream, config.mechanism);
    match &config.tls {
        None => {
            let service = service_fn(|req| route(req, config.clone()));
            let io = static_files::Prefixed::new(prefix, io);
            config
                .http
                .serve_connection(io, service, Some(&shutdown))
                .await
        }
        Some(acceptor) => {
            https(acceptor, io, shutdown, &config).await;
            Ok(())
        }
    }
}

/// The routes as a hyper service's function; with `--static`, `GET /static/...` read whole
/// (on connections hyper serves: TLS, HTTP/2, or after another request).
async fn route(
    req: hyper::Request<hyper::body::Incoming>,
    config: Rc<Config>,
) -> Result<hyper::Response<http_routes::Body>, Infallible> {
    if let Some(dir) = &config.static_dir {
        if let Some(rel) = req.uri().path().strip_prefix(static_files::PREFIX) {
            return Ok(static_files::read_whole(dir, rel, req.method()).await);
        }
    }
    Ok(http_routes::respond(req))
}

/// The TLS handshake (within the header timeout), then HTTP over the TLS stream.
async fn https(
    acceptor: &tokio_rustls::TlsAcceptor,
    io: Io<TcpStream>,
    shutdown: ShutdownSignal,
    config: &Rc<Config>,
) {
    let handshake = ringloop::timeout(config.header_timeout, acceptor.accept(io)).await;
    if let Ok(Ok(tls)) = handshake {
        let _ = config
            .http
            .serve_connection(
                TokioIo::new(tls),
                service_fn(|req| route(req, config.clone())),
                Some(&shutdown),
            )
            .await;
    }
}

/// A TLS acceptor with a self-signed certificate for `localhost`, offering `h2` and
/// `http/1.1`.
fn tls_acceptor() -> std::io::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .map_err(std::io::Error::other)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    // The crypto provider is the one crate feature selects (ring).
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .map_err(std::io::Error::other)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
