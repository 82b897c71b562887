//! The server under test: the connection code of `examples/http_server.rs` (the library's
//! `compat::http::Http`: hyper-util's auto builder, HTTP/1.1 and HTTP/2, over `compat::Io`, on
//! `HyperExecutor` and `HyperTimer`, hyper's graceful shutdown on the server's signal; each
//! connection a task of a `net::Server`, TLS through tokio-rustls), serving the example's
//! routes or an axum `Router`.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::{service_fn, Service};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto::HttpServerConnExec;
use hyper_util::service::TowerToHyperService;
use ringloop::compat::hyper::HyperExecutor;
use ringloop::net::compat::http::Http;
use ringloop::net::compat::{Io, Mechanism};
use ringloop::net::{Server, ShutdownSignal, TcpListener, TcpStream};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::{http_routes, static_files};

/// What the server answers with.
#[derive(Clone)]
pub enum App {
    /// The routes of `examples/common/http_routes.rs`.
    Routes,
    /// An axum application.
    Axum(axum::Router),
}

/// How the server serves each connection.
pub struct Config {
    pub app: App,
    /// HTTPS with this acceptor (see [`tls_acceptor`]).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// How long a client has to send a complete request head (and, with TLS, to finish its
    /// handshake).
    pub header_timeout: Duration,
    /// `SO_SNDBUF` for each connection (a test of slow readers sets a small one, so the
    /// server's writes wait for room; the example leaves the kernel's default).
    pub send_buffer: Option<usize>,
    /// How `compat::Io` reads (the example uses the default, `Readiness`).
    pub mechanism: Mechanism,
    /// The example's `--static DIR`: `/static/` requests answered with `send_file` while they
    /// come (`examples/common/static_files.rs`), then hyper.
    pub static_dir: Option<std::path::PathBuf>,
}

impl Config {
    /// The example's routes over plain HTTP, with the example's default header timeout.
    pub fn routes() -> Config {
        Config {
            app: App::Routes,
            tls: None,
            header_timeout: Duration::from_secs(30),
            send_buffer: None,
            mechanism: Mechanism::default(),
            static_dir: None,
        }
    }
}

/// Starts a server on a free loopback port; returns it and its address.
pub fn start(config: Config) -> (Server, SocketAddr) {
    let listener = TcpListener::bind(crate::common::localhost()).unwrap();
    let addr = listener.local_addr().unwrap();
    let config = Rc::new(config);
    let server = Server::tcp(listener, move |stream, shutdown| {
        connection(stream, shutdown, config.clone())
    });
    (server, addr)
}

/// Serves one connection: TLS first if configured, then HTTP until the client is done or the
/// server shuts down.
async fn connection(stream: TcpStream, shutdown: ShutdownSignal, config: Rc<Config>) {
    let _ = stream.set_nodelay(true);
    if let Some(size) = config.send_buffer {
        // SAFETY: the descriptor is the stream's, open for as long as `stream` lives, which
        // outlives this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
        socket2::SockRef::from(&fd)
            .set_send_buffer_size(size)
            .unwrap();
    }
    let mut prefix = Vec::new();
    if let (Some(dir), None) = (&config.static_dir, &config.tls) {
        match static_files::serve(&stream, dir, config.header_timeout, &shutdown).await {
            static_files::Outcome::Closed => return,
            static_files::Outcome::Other(read) => prefix = read,
        }
    }
    let io = Io::with_mechanism(stream, config.mechanism);
    match &config.tls {
        None => app(static_files::Prefixed::new(prefix, io), shutdown, &config).await,
        Some(acceptor) => {
            let handshake = ringloop::timeout(config.header_timeout, acceptor.accept(io)).await;
            if let Ok(Ok(tls)) = handshake {
                app(TokioIo::new(tls), shutdown, &config).await;
            }
        }
    }
}

/// [`http`] with the configured application's service.
async fn app<I>(io: I, shutdown: ShutdownSignal, config: &Config)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
{
    match &config.app {
        App::Routes => {
            let static_dir = config.static_dir.clone().map(Rc::new);
            let service = service_fn(move |req: Request<Incoming>| {
                let static_dir = static_dir.clone();
                async move {
                    if let Some(dir) = &static_dir {
                        if let Some(rel) = req.uri().path().strip_prefix(static_files::PREFIX) {
                            return Ok::<_, Infallible>(
                                static_files::read_whole(dir, rel, req.method()).await,
                            );
                        }
                    }
                    Ok::<_, Infallible>(http_routes::respond(req))
                }
            });
            http(io, service, shutdown, config).await
        }
        App::Axum(router) => {
            http(
                io,
                TowerToHyperService::new(router.clone()),
                shutdown,
                config,
            )
            .await
        }
    }
}

/// The library's HTTP/1 + HTTP/2 connection (`compat::http::Http`) on `io`, shut down
/// gracefully when `shutdown` is set.
async fn http<I, S, B>(io: I, service: S, shutdown: ShutdownSignal, config: &Config)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
    HyperExecutor: HttpServerConnExec<S::Future, B>,
{
    let http = Http::new().header_timeout(Some(config.header_timeout));
    let _ = http.serve_connection(io, service, Some(&shutdown)).await;
}

/// A TLS acceptor with a self-signed certificate for `localhost` and `127.0.0.1`, offering
/// ALPN `h2` and `http/1.1`, and the certificate (for a client's root store).
pub fn tls_acceptor() -> (tokio_rustls::TlsAcceptor, CertificateDer<'static>) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let der = cert.cert.der().clone();
    // The crypto provider is the one the crate features select (ring).
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), der)
}
