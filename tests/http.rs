//! HTTP end to end: the server of `examples/http_server.rs` (hyper-util's auto builder over
//! `compat::Io`, `HyperExecutor`, `HyperTimer`, a `net::Server`, the example's routes), run in
//! the test's own runtime, against hyper's client (on the same runtime) and raw HTTP/1.1
//! clients on std sockets (on `spawn_blocking` threads): keep-alive, pipelining, a large echo,
//! clients that vanish, stall or read slowly, HTTP/2 streams, TLS, graceful shutdown (and
//! what the end of its grace cancels), the header timeout, and an axum application.
//!
//! Every test runs on both backends. Each checks, once it is done, that every task it started
//! has ended and every descriptor it opened is closed (`common::run_http`). Nothing here
//! asserts a duration: the time limits only turn a hang into a failure.

mod common;

#[path = "../examples/common/http_routes.rs"]
mod http_routes;
#[path = "../examples/common/static_files.rs"]
mod static_files;

use std::convert::Infallible;
use std::error::Error as StdError;
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::raw::{self, RawResponse};
use common::server::{self, App, Config};
use common::until;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response, StatusCode, Version};
use ringloop::compat::hyper::{HyperExecutor, HyperTimer};
use ringloop::net::compat::{Io, Mechanism};
use ringloop::net::{Server, TcpStream};
use ringloop::{gather, spawn, spawn_blocking, sync::mpsc, Task};

use http_routes::{BIG_BODY, BIG_PATH, ECHO_PATH, HELLO, HELLO_PATH};

/// Both ways `compat::Io` reads; the server of most tests uses the default, as the example.
const MECHANISMS: [Mechanism; 2] = [Mechanism::Readiness, Mechanism::Pooled];

/// A grace no test should reach: a graceful shutdown that needs it is a failure.
const GRACE: Duration = Duration::from_secs(30);

type BoxError = Box<dyn StdError + Send + Sync>;

/// A hyper HTTP/1.1 client connection to `addr`; its connection future runs as a task.
async fn h1_client<B>(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http1::SendRequest<B>,
    Task<hyper::Result<()>>,
)
where
    B: Body + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(Io::new(stream))
        .await
        .unwrap();
    (sender, spawn(conn))
}

/// A hyper HTTP/2 client connection to `addr` (prior knowledge, on `HyperExecutor`); its
/// connection future runs as a task.
async fn h2_client<B>(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<B>,
    Task<hyper::Result<()>>,
)
where
    B: Body + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http2::Builder::new(HyperExecutor)
        .timer(HyperTimer)
        .handshake(Io::new(stream))
        .await
        .unwrap();
    (sender, spawn(conn))
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header(hyper::header::HOST, "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn post(path: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::post(path)
        .header(hyper::header::HOST, "localhost")
        .body(Full::new(body.into()))
        .unwrap()
}

/// The status and the whole body of `res`.
async fn read(res: Response<Incoming>) -> (StatusCode, Bytes) {
    let status = res.status();
    (status, res.into_body().collect().await.unwrap().to_bytes())
}

/// `len` bytes that differ with `seed` and with their position: an echo that is cut, shifted
/// or mixed up with another request's body does not compare equal.
fn payload(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ seed.wrapping_mul(131)) as u8)
        .collect()
}

/// Shuts `server` down and checks it went gracefully: every connection ended on its own.
async fn stop(server: &Server) {
    let report = server.shutdown(GRACE).await.unwrap();
    assert!(report.is_graceful(), "{report:?}");
    assert_eq!(server.connections(), 0);
}

/// Checks a response of the routes: `GET /` or `GET /64k`.
fn check_fixed(path: &str, res: &RawResponse) {
    assert_eq!(res.status, 200, "{path}: {res:?}");
    let body: &[u8] = if path == BIG_PATH { &BIG_BODY } else { HELLO };
    assert!(
        res.body == body,
        "{path}: wrong body ({} bytes)",
        res.body.len()
    );
}

http_test! {
    /// 500 requests one after another on one HTTP/1.1 connection through hyper's client:
    /// `GET /`, `GET /64k` and `POST /echo` with bodies from 0 to 5 KB in turn, each status and
    /// body checked; the server accepted one connection for all of them, and it ends when the
    /// client closes it.
    async fn many_requests_on_one_keep_alive_connection() {
        let (server, addr) = server::start(Config::routes());
        let (mut sender, conn) = h1_client(addr).await;
        for i in 0..500 {
            sender.ready().await.unwrap();
            match i % 3 {
                0 => {
                    let res = sender.send_request(get(HELLO_PATH)).await.unwrap();
                    let (status, body) = read(res).await;
                    assert_eq!((status, &body[..]), (StatusCode::OK, HELLO), "request {i}");
                }
                1 => {
                    let res = sender.send_request(get(BIG_PATH)).await.unwrap();
                    let (status, body) = read(res).await;
                    assert_eq!(status, StatusCode::OK, "request {i}");
                    assert!(body == BIG_BODY[..], "request {i}: {} bytes", body.len());
                }
                _ => {
                    let sent = payload(i, i * 37 % 5000);
                    let res = sender.send_request(post(ECHO_PATH, sent.clone())).await.unwrap();
                    let (status, body) = read(res).await;
                    assert_eq!(status, StatusCode::OK, "request {i}");
                    assert!(body == sent, "request {i}: {} of {} bytes", body.len(), sent.len());
                }
            }
        }
        assert_eq!(server.accepted_total(), 1);
        drop(sender);
        conn.await.unwrap().unwrap();
        assert!(until(|| server.connections() == 0).await);
        stop(&server).await;
    }
}

/// Writes 64 requests at once on a new connection to `addr` and checks the 64 responses, in
/// order, then one more request (blocking: run it off the loop).
fn pipeline(addr: SocketAddr) {
    const N: usize = 64;
    let echo_body = |i: usize| format!("pipelined request {i}").repeat(i);
    let mut stream = raw::connect(addr);
    let mut requests = Vec::new();
    for i in 0..N {
        match i % 4 {
            0 => requests.extend(raw::request_head("GET", HELLO_PATH, 0).bytes()),
            1 => requests.extend(raw::request_head("GET", BIG_PATH, 0).bytes()),
            2 => {
                let body = echo_body(i);
                requests.extend(raw::request_head("POST", ECHO_PATH, body.len()).bytes());
                requests.extend(body.bytes());
            }
            _ => requests.extend(raw::request_head("GET", "/nowhere", 0).bytes()),
        }
    }
    raw::send(&mut stream, &requests);
    let mut buf = Vec::new();
    for i in 0..N {
        let res = raw::read_response(&mut stream, &mut buf, 64 * 1024);
        match i % 4 {
            0 => check_fixed(HELLO_PATH, &res),
            1 => check_fixed(BIG_PATH, &res),
            2 => {
                assert_eq!(res.status, 200, "response {i}: {res:?}");
                assert_eq!(
                    String::from_utf8_lossy(&res.body),
                    echo_body(i),
                    "response {i}"
                );
            }
            _ => assert_eq!(res.status, 404, "response {i}: {res:?}"),
        }
    }
    assert!(buf.is_empty(), "bytes after the last response: {buf:?}");
    // The connection is still good for another request.
    raw::send(
        &mut stream,
        raw::request_head("GET", HELLO_PATH, 0).as_bytes(),
    );
    check_fixed(HELLO_PATH, &raw::read_response(&mut stream, &mut buf, 4096));
}

http_test! {
    /// 64 HTTP/1.1 requests written at once, in one write, on a raw socket (hyper's client does
    /// not pipeline): `GET /`, `GET /64k`, `POST /echo` with a body naming the request, and a
    /// 404, in turn. The 64 responses come back complete and in order, and the connection then
    /// still serves a request; it ends when the client does. With both of `compat::Io`'s
    /// mechanisms on the server (several requests arrive in one read).
    async fn pipelined_requests_are_answered_in_order() {
        for mechanism in MECHANISMS {
            let (server, addr) = server::start(Config { mechanism, ..Config::routes() });
            spawn_blocking(move || pipeline(addr)).await.unwrap();
            assert_eq!(server.accepted_total(), 1, "{mechanism:?}");
            assert!(until(|| server.connections() == 0).await, "{mechanism:?}");
            stop(&server).await;
        }
    }
}

/// `HEAD /` answers `GET /`'s head with no body; a known path asked with another method gets
/// 405 with the methods it takes in `allow`; an unknown path 404. All on one keep-alive
/// connection, so a body sent after the `HEAD`'s head would show as a broken next response.
fn head_and_wrong_methods(addr: SocketAddr) {
    let mut stream = raw::connect(addr);
    let mut buf = Vec::new();
    raw::send(
        &mut stream,
        raw::request_head("HEAD", HELLO_PATH, 0).as_bytes(),
    );
    assert_eq!(read_head_only(&mut stream, &mut buf), (200, HELLO.len()));
    raw::send(
        &mut stream,
        raw::request_head("HEAD", BIG_PATH, 0).as_bytes(),
    );
    assert_eq!(read_head_only(&mut stream, &mut buf), (200, BIG_BODY.len()));
    for (method, path, allow) in [
        ("DELETE", HELLO_PATH, "GET, HEAD"),
        ("POST", HELLO_PATH, "GET, HEAD"),
        ("PUT", BIG_PATH, "GET, HEAD"),
        ("GET", ECHO_PATH, "POST"),
    ] {
        raw::send(&mut stream, raw::request_head(method, path, 0).as_bytes());
        let res = raw::read_response(&mut stream, &mut buf, 4096);
        assert_eq!(res.status, 405, "{method} {path}: {res:?}");
        assert_eq!(res.header("allow"), Some(allow), "{method} {path}");
    }
    raw::send(
        &mut stream,
        raw::request_head("GET", "/nowhere", 0).as_bytes(),
    );
    assert_eq!(raw::read_response(&mut stream, &mut buf, 4096).status, 404);
    raw::send(
        &mut stream,
        raw::request_head("GET", HELLO_PATH, 0).as_bytes(),
    );
    let hello = raw::read_response(&mut stream, &mut buf, 4096);
    assert_eq!((hello.status, &hello.body[..]), (200, HELLO));
    assert!(buf.is_empty(), "bytes after the last response: {buf:?}");
}

http_test! {
    /// `HEAD` on the `GET` routes answers the head only, other methods on a known path get 405
    /// and `allow`, other paths 404, on one connection (the routes of the examples' servers).
    /// Over HTTP/2 too, where hyper does not leave a `HEAD`'s body out by itself: the head
    /// (status, type, length) and no body.
    async fn head_is_answered_and_a_wrong_method_gets_405() {
        let (server, addr) = server::start(Config::routes());
        spawn_blocking(move || head_and_wrong_methods(addr)).await.unwrap();
        let (mut sender, conn) = h2_client::<Full<Bytes>>(addr).await;
        for (path, len, content_type) in [
            (HELLO_PATH, HELLO.len(), "text/plain"),
            (BIG_PATH, BIG_BODY.len(), "application/octet-stream"),
        ] {
            let req = Request::head(path)
                .header(hyper::header::HOST, "localhost")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let res = sender.send_request(req).await.unwrap();
            let header = |name| res.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(header(hyper::header::CONTENT_LENGTH), Some(len.to_string()), "{path}");
            assert_eq!(header(hyper::header::CONTENT_TYPE).as_deref(), Some(content_type));
            let (status, body) = read(res).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert!(body.is_empty(), "HEAD {path} over HTTP/2 sent {} bytes", body.len());
        }
        drop(sender);
        conn.await.unwrap().unwrap();
        assert!(until(|| server.connections() == 0).await);
        stop(&server).await;
    }
}

/// The period of the upload's pattern: a prime, so a piece of the echo that is lost, repeated
/// or shifted by any whole number of the sender's chunks does not compare equal.
const PERIOD: usize = 65_521;
/// The largest piece the upload sends or compares at once.
const MAX_PIECE: usize = 256 * 1024;

/// What the upload sends: [`PERIOD`] pseudo-random bytes over and over. It holds one period
/// and then [`MAX_PIECE`] more, so the bytes at any offset, up to [`MAX_PIECE`] of them, are
/// one slice of it: the sender hands out slices without copying and the receiver compares
/// against them, so neither builds the stream.
#[derive(Clone)]
struct Pattern(Bytes);

impl Pattern {
    fn new() -> Pattern {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let period: Vec<u8> = (0..PERIOD)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let bytes: Vec<u8> = period
            .iter()
            .copied()
            .cycle()
            .take(PERIOD + MAX_PIECE)
            .collect();
        Pattern(Bytes::from(bytes))
    }

    /// The `len` (at most [`MAX_PIECE`]) bytes of the stream at `offset`.
    fn at(&self, offset: u64, len: usize) -> Bytes {
        let start = (offset % PERIOD as u64) as usize;
        self.0.slice(start..start + len)
    }
}

/// A request body of `total` bytes of the [`Pattern`], in pieces of changing sizes, with its
/// exact length (so it goes out with a `content-length`).
struct PatternBody {
    pattern: Pattern,
    sent: u64,
    total: u64,
    pieces: usize,
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        const SIZES: [usize; 4] = [MAX_PIECE, 1, 65_536 + 7, 100_000];
        let left = self.total - self.sent;
        if left == 0 {
            return Poll::Ready(None);
        }
        let len = (SIZES[self.pieces % SIZES.len()] as u64).min(left) as usize;
        let piece = self.pattern.at(self.sent, len);
        self.sent += len as u64;
        self.pieces += 1;
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent == self.total
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.total - self.sent)
    }
}

/// The upload's size. It takes a fraction of a second even in a debug build: the body's pieces
/// are slices of the pattern and the echo is compared with `memcmp`, so no code of the test or
/// of hyper runs per byte.
const UPLOAD: u64 = 100_000_000;

/// Sends a 100 MB `POST /echo` to `addr` through hyper's client, over HTTP/2 or HTTP/1.1, and
/// checks the echo as it arrives.
async fn upload(addr: SocketAddr, pattern: &Pattern, http2: bool) {
    let body = PatternBody {
        pattern: pattern.clone(),
        sent: 0,
        total: UPLOAD,
        pieces: 0,
    };
    let req = Request::post(ECHO_PATH)
        .header(hyper::header::HOST, "localhost")
        .body(body)
        .unwrap();
    let (res, conn) = if http2 {
        let (mut sender, conn) = h2_client(addr).await;
        (sender.send_request(req).await.unwrap(), conn)
    } else {
        let (mut sender, conn) = h1_client(addr).await;
        (sender.send_request(req).await.unwrap(), conn)
    };
    assert_eq!(res.status(), StatusCode::OK);
    if !http2 {
        let length = res.headers().get(hyper::header::CONTENT_LENGTH).unwrap();
        assert_eq!(length.to_str().unwrap(), UPLOAD.to_string());
    }
    let mut body = res.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        let data = frame.unwrap().into_data().unwrap();
        for piece in data.chunks(MAX_PIECE) {
            assert!(
                piece == pattern.at(received, piece.len()),
                "the echo differs within bytes {received}..{}",
                received + piece.len() as u64
            );
            received += piece.len() as u64;
        }
    }
    assert_eq!(received, UPLOAD);
    // The sender was dropped once the request was sent: with its one request done, the
    // connection ends.
    conn.await.unwrap().unwrap();
}

http_test! {
    /// A 100 MB `POST /echo` through hyper's client: the body is generated as it is sent and
    /// the echo compared as it arrives, piece by piece, neither ever held whole. Every byte
    /// comes back in order (over HTTP/1.1 with the request's length). Over HTTP/1.1 with both
    /// of `compat::Io`'s mechanisms on the server, and over HTTP/2 (flow-controlled streams)
    /// with the default one.
    async fn a_large_upload_is_echoed_byte_for_byte() {
        let pattern = Pattern::new();
        let cases = [
            (Mechanism::Readiness, false),
            (Mechanism::Pooled, false),
            (Mechanism::Readiness, true),
        ];
        for (mechanism, http2) in cases {
            let (server, addr) = server::start(Config { mechanism, ..Config::routes() });
            upload(addr, &pattern, http2).await;
            stop(&server).await;
        }
    }
}

/// How a raw client leaves in the middle of a request body.
#[derive(Clone, Copy, Debug)]
enum Leave {
    /// `close` as soon as its part of the body is sent: a FIN (a reset if the echo had
    /// already arrived, unread).
    Close,
    /// Once the echo has begun, `SO_LINGER` 0 and `close`: a reset.
    Reset,
    /// Once the echo has begun, `shutdown(Write)`, then reads until the server closes: the
    /// server sees the end of the stream where it expects more body.
    HalfClose,
}

/// Sends a `POST /echo` head declaring 10 MB and 1 MiB of the body to `addr`, then leaves as
/// `leave` says (blocking: run it off the loop).
fn leave_mid_body(addr: SocketAddr, leave: Leave) {
    const DECLARED: usize = 10_000_000;
    const SENT: usize = 1 << 20;
    let mut stream = raw::connect(addr);
    raw::send(
        &mut stream,
        raw::request_head("POST", ECHO_PATH, DECLARED).as_bytes(),
    );
    raw::send(&mut stream, &payload(1, SENT));
    if let Leave::Close = leave {
        return;
    }
    // The server is inside the request: its echo has begun.
    let mut head = [0u8; 12];
    std::io::Read::read_exact(&mut stream, &mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200", "{leave:?}");
    if let Leave::Reset = leave {
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        return;
    }
    stream.shutdown(Shutdown::Write).unwrap();
    // The server ends the connection: it cannot finish the response. (How, a FIN or a
    // reset, is hyper's business.)
    let _ = raw::read_until_closed(&mut stream);
}

http_test! {
    /// Clients that send a `POST /echo` head with `content-length: 10 MB` and 1 MiB of the
    /// body and leave (closing, resetting, half-closing; see [`Leave`]): each time the
    /// connection's task ends, no descriptor is left open, and a new connection is answered.
    /// With both of `compat::Io`'s mechanisms on the server.
    async fn a_client_that_leaves_mid_body_costs_the_server_nothing() {
        for mechanism in MECHANISMS {
            let (server, addr) = server::start(Config { mechanism, ..Config::routes() });
            for leave in [Leave::Close, Leave::Reset, Leave::HalfClose] {
                let fds_before = common::open_fds();
                spawn_blocking(move || leave_mid_body(addr, leave)).await.unwrap();
                assert!(
                    until(|| server.connections() == 0).await,
                    "{mechanism:?} {leave:?}: the connection lives on"
                );
                assert!(
                    until(|| common::leaked_fds(&fds_before).is_empty()).await,
                    "{mechanism:?} {leave:?}: leaked {:?}",
                    common::leaked_fds(&fds_before)
                );
                // The server is as good as new.
                let (mut sender, conn) = h1_client(addr).await;
                let res = sender.send_request(get(HELLO_PATH)).await.unwrap();
                let (status, body) = read(res).await;
                assert_eq!((status, &body[..]), (StatusCode::OK, HELLO), "after {leave:?}");
                drop(sender);
                conn.await.unwrap().unwrap();
            }
            assert_eq!(server.accepted_total(), 6);
            stop(&server).await;
        }
    }
}

http_test! {
    /// A client with a small receive buffer that reads `GET /64k`'s response one byte per
    /// read, pausing now and then, from a server with a small send buffer, so the server's
    /// writes wait for room again and again: every byte arrives, in order; twice on the
    /// connection, and a `GET /` after.
    async fn a_slow_reader_gets_every_byte() {
        let config = Config { send_buffer: Some(4096), ..Config::routes() };
        let (server, addr) = server::start(config);
        spawn_blocking(move || {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .unwrap();
            socket.set_recv_buffer_size(4096).unwrap();
            socket.connect(&addr.into()).unwrap();
            let mut stream: std::net::TcpStream = socket.into();
            raw::limit(&stream);
            let mut buf = Vec::new();
            for round in 0..2 {
                raw::send(&mut stream, raw::request_head("GET", BIG_PATH, 0).as_bytes());
                let mut slow = SlowReader { stream: &mut stream, read: 0 };
                let res = raw::read_response(&mut slow, &mut buf, 1);
                assert!(slow.read > BIG_BODY.len(), "round {round}: {} reads", slow.read);
                check_fixed(BIG_PATH, &res);
            }
            raw::send(&mut stream, raw::request_head("GET", HELLO_PATH, 0).as_bytes());
            check_fixed(HELLO_PATH, &raw::read_response(&mut stream, &mut buf, 4096));
        })
        .await
        .unwrap();
        assert!(until(|| server.connections() == 0).await);
        stop(&server).await;
    }
}

/// Reads through to a stream, counting reads, and sleeps a millisecond every 4096 of them.
struct SlowReader<'a> {
    stream: &'a mut std::net::TcpStream,
    read: usize,
}

impl std::io::Read for SlowReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.read += 1;
        if self.read % 4096 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.stream.read(buf)
    }
}

/// A request body whose pieces come from a channel, until its sender is dropped.
type ChannelBody =
    StreamBody<Pin<Box<dyn futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>>>>>;

/// A [`ChannelBody`] and the sender that feeds it.
fn channel_body() -> (mpsc::Sender<Bytes>, ChannelBody) {
    let (tx, rx) = mpsc::channel(1);
    let pieces = futures_util::stream::unfold(rx, |mut rx| async move {
        let piece = rx.recv().await.ok()?;
        Some((Ok(Frame::data(piece)), rx))
    });
    (tx, StreamBody::new(Box::pin(pieces)))
}

http_test! {
    /// 200 requests at once over one HTTP/2 connection (hyper's client on `HyperExecutor`,
    /// each request a task, all sent before any answer is read): `GET /`, `POST /echo` with a
    /// body of its own (up to 40 KB) and `GET /64k`, in turn. Each gets its own answer, over
    /// HTTP/2, on the one connection.
    async fn many_concurrent_http2_streams() {
        const N: usize = 200;
        let (server, addr) = server::start(Config::routes());
        let (sender, conn) = h2_client::<Full<Bytes>>(addr).await;
        let requests: Vec<Task<()>> = (0..N)
            .map(|i| {
                let mut sender = sender.clone();
                spawn(async move {
                    let (req, expected): (_, Bytes) = match i % 3 {
                        0 => (get(HELLO_PATH), Bytes::from_static(HELLO)),
                        1 => {
                            let body = Bytes::from(payload(i, i * 200));
                            (post(ECHO_PATH, body.clone()), body)
                        }
                        _ => (get(BIG_PATH), Bytes::from_static(&BIG_BODY)),
                    };
                    let res = sender.send_request(req).await.unwrap();
                    assert_eq!(res.version(), Version::HTTP_2, "request {i}");
                    let (status, body) = read(res).await;
                    assert_eq!(status, StatusCode::OK, "request {i}");
                    assert!(body == expected, "request {i}: {} bytes", body.len());
                })
            })
            .collect();
        gather(requests).await.unwrap();
        assert_eq!(server.accepted_total(), 1);
        drop(sender);
        conn.await.unwrap().unwrap();
        assert!(until(|| server.connections() == 0).await);
        stop(&server).await;
    }
}

/// A TLS client connection to `addr` that trusts only `root`, offering `alpn`.
async fn tls_connect(
    addr: SocketAddr,
    root: &rustls::pki_types::CertificateDer<'static>,
    alpn: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<Io<TcpStream>>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let stream = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, Io::new(stream)).await
}

http_test! {
    /// HTTPS: a server with a rustls acceptor (a self-signed certificate made by rcgen), and
    /// a client through tokio-rustls over `compat::Io` that trusts only that certificate,
    /// then hyper's client over `TokioIo`. Offering ALPN `h2` the connection speaks HTTP/2,
    /// offering `http/1.1` HTTP/1.1; either way `GET /`, a 300 KB `POST /echo` (many TLS
    /// records) and `GET /64k` are answered. A client that trusts another certificate fails
    /// its handshake, and the server's connection ends.
    async fn tls_handshake_and_requests_over_h2_and_http1() {
        let (acceptor, cert) = server::tls_acceptor();
        let mut config = Config::routes();
        config.tls = Some(acceptor);
        let (server, addr) = server::start(config);
        let echo = Bytes::from(payload(7, 300_000));
        for alpn in [&b"h2"[..], b"http/1.1"] {
            let tls = tls_connect(addr, &cert, alpn).await.unwrap();
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
            let io = hyper_util::rt::TokioIo::new(tls);
            let requests = [get(HELLO_PATH), post(ECHO_PATH, echo.clone()), get(BIG_PATH)];
            let expected = [Bytes::from_static(HELLO), echo.clone(), Bytes::from_static(&BIG_BODY)];
            if alpn == b"h2" {
                let (mut sender, conn) = hyper::client::conn::http2::Builder::new(HyperExecutor)
                    .timer(HyperTimer)
                    .handshake(io)
                    .await
                    .unwrap();
                let conn = spawn(conn);
                for (req, expected) in requests.into_iter().zip(&expected) {
                    let res = sender.send_request(req).await.unwrap();
                    assert_eq!(res.version(), Version::HTTP_2);
                    let (status, body) = read(res).await;
                    assert_eq!(status, StatusCode::OK);
                    assert!(body == expected, "h2: {} bytes", body.len());
                }
                drop(sender);
                conn.await.unwrap().unwrap();
            } else {
                let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
                let conn = spawn(conn);
                for (req, expected) in requests.into_iter().zip(&expected) {
                    sender.ready().await.unwrap();
                    let res = sender.send_request(req).await.unwrap();
                    assert_eq!(res.version(), Version::HTTP_11);
                    let (status, body) = read(res).await;
                    assert_eq!(status, StatusCode::OK);
                    assert!(body == expected, "http/1.1: {} bytes", body.len());
                }
                drop(sender);
                conn.await.unwrap().unwrap();
            }
        }
        // A client that does not trust the server's certificate.
        let (_, other) = server::tls_acceptor();
        let refused = tls_connect(addr, &other, b"h2").await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::InvalidData, "{refused}");
        assert!(until(|| server.connections() == 0).await);
        assert_eq!(server.accepted_total(), 3);
        stop(&server).await;
    }
}

/// A `POST /echo` in flight: its body is fed through `tx`, and what has come back of its
/// echo so far is in `echoed`.
struct EchoInFlight {
    tx: mpsc::Sender<Bytes>,
    echo: Incoming,
    echoed: Vec<u8>,
}

impl EchoInFlight {
    /// Sends a `POST /echo` through `send_request` with `first` as the first piece of its body,
    /// and reads the echo of that piece: the server is then inside the request, waiting for
    /// the rest of the body.
    async fn start<F, Fut>(send_request: F, first: Bytes) -> EchoInFlight
    where
        F: FnOnce(Request<ChannelBody>) -> Fut,
        Fut: std::future::Future<Output = hyper::Result<Response<Incoming>>>,
    {
        let (tx, body) = channel_body();
        tx.send(first.clone()).await.unwrap();
        let req = Request::post(ECHO_PATH)
            .header(hyper::header::HOST, "localhost")
            .body(body)
            .unwrap();
        let res = send_request(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let mut echo = EchoInFlight {
            tx,
            echo: res.into_body(),
            echoed: Vec::new(),
        };
        while echo.echoed.len() < first.len() {
            let frame = echo.echo.frame().await.unwrap().unwrap();
            echo.echoed.extend_from_slice(&frame.into_data().unwrap());
        }
        assert!(echo.echoed == first);
        echo
    }

    /// Sends `rest` and ends the body; checks that the whole body comes back.
    async fn finish(mut self, first: Bytes, rest: Vec<Bytes>) {
        let mut sent = first.to_vec();
        for piece in rest {
            sent.extend_from_slice(&piece);
            self.tx.send(piece).await.unwrap();
        }
        drop(self.tx);
        while let Some(frame) = self.echo.frame().await {
            let frame = frame.unwrap();
            self.echoed.extend_from_slice(&frame.into_data().unwrap());
        }
        assert!(
            self.echoed == sent,
            "{} of {} bytes echoed",
            self.echoed.len(),
            sent.len()
        );
    }
}

/// The pieces of the bodies the shutdown tests send: 10 KB each.
fn piece(i: usize) -> Bytes {
    Bytes::from(payload(i, 10_000))
}

/// Starts `server.shutdown(grace)` as a task, and waits until it has begun.
async fn begin_shutdown(
    server: &Server,
    grace: Duration,
) -> Task<Result<ringloop::net::ShutdownReport, ringloop::Cancelled>> {
    let shutdown = spawn({
        let server = server.clone();
        async move { server.shutdown(grace).await }
    });
    assert!(until(|| server.shutdown_signal().is_set()).await);
    shutdown
}

http_test! {
    /// `shutdown(grace)` while a `POST /echo` is in flight on HTTP/1.1 (its echo begun, its
    /// body still being sent), another HTTP/1.1 connection sits idle between requests, and a
    /// third has sent nothing yet: new connections are refused at once, the idle connections
    /// are closed by the server while the request is still in flight, and the request then
    /// completes, every byte echoed, before its connection closes. Every connection ends on
    /// its own, well within the grace.
    async fn graceful_shutdown_finishes_the_request_in_flight() {
        let (server, addr) = server::start(Config::routes());

        // 1. An idle keep-alive connection: one request answered, the connection kept.
        let (mut idle, idle_conn) = h1_client(addr).await;
        let (status, _) = read(idle.send_request(get(HELLO_PATH)).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        // A connection that has sent nothing yet.
        let silent = TcpStream::connect(addr).await.unwrap();
        // A request in flight.
        let (mut busy, busy_conn) = h1_client(addr).await;
        let in_flight = EchoInFlight::start(|req| busy.send_request(req), piece(0)).await;
        assert!(until(|| server.connections() == 3).await);

        // 2. The shutdown begins. New connections are refused.
        let shutdown = begin_shutdown(&server, GRACE).await;
        let refused = TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::ECONNREFUSED));

        // 3. The idle connections are closed by the server (the clients kept their side
        //    open).
        idle_conn.await.unwrap().unwrap();
        assert!(idle.is_closed());
        let (n, _) = silent.read(vec![0u8; 16]).await;
        assert_eq!(n.unwrap(), 0, "the silent connection was not closed");
        drop(silent);

        // 4. The request in flight goes on: the rest of its body, all echoed. Then the server
        //    closes that connection too.
        in_flight.finish(piece(0), (1..20).map(piece).collect()).await;
        busy_conn.await.unwrap().unwrap();
        assert!(busy.is_closed());

        let report = shutdown.await.unwrap().unwrap();
        assert!(report.is_graceful(), "{report:?}");
        assert_eq!(report.finished, 3, "{report:?}");
        assert_eq!(server.connections(), 0);
    }
}

http_test! {
    /// The same over HTTP/2: `shutdown(grace)` while a stream of one connection is in flight
    /// (a `POST /echo` whose body is still being sent) and another connection is idle. The
    /// idle connection ends at once (hyper's `GOAWAY`), the stream completes, every byte
    /// echoed, and its connection then ends; both on their own.
    async fn graceful_shutdown_lets_http2_streams_finish() {
        let (server, addr) = server::start(Config::routes());
        let (mut idle, idle_conn) = h2_client::<Full<Bytes>>(addr).await;
        let (status, _) = read(idle.send_request(get(HELLO_PATH)).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        let (mut busy, busy_conn) = h2_client(addr).await;
        let in_flight = EchoInFlight::start(|req| busy.send_request(req), piece(0)).await;

        let shutdown = begin_shutdown(&server, GRACE).await;
        idle_conn.await.unwrap().unwrap();
        in_flight.finish(piece(0), (1..20).map(piece).collect()).await;
        busy_conn.await.unwrap().unwrap();
        drop((idle, busy));

        let report = shutdown.await.unwrap().unwrap();
        assert!(report.is_graceful(), "{report:?}");
        assert_eq!(report.finished, 2, "{report:?}");
        assert_eq!(server.connections(), 0);
    }
}

http_test! {
    /// Requests that outlast the grace: a `POST /echo` on HTTP/1.1 and one on HTTP/2, whose
    /// bodies stop coming, when `shutdown` has a 100 ms grace. Both connections are cancelled
    /// at its end (none has to be dropped unanswered), each client sees its echo end in an
    /// error rather than a clean end, its connection ends, and every task of the server (its
    /// HTTP/2 stream tasks too) ends with them.
    async fn requests_that_outlast_the_grace_are_cancelled() {
        let (server, addr) = server::start(Config::routes());
        let (mut h1, h1_conn) = h1_client(addr).await;
        let h1_echo = EchoInFlight::start(|req| h1.send_request(req), piece(1)).await;
        let (mut h2, h2_conn) = h2_client(addr).await;
        let h2_echo = EchoInFlight::start(|req| h2.send_request(req), piece(2)).await;

        let report = server.shutdown(Duration::from_millis(100)).await.unwrap();
        assert_eq!((report.finished, report.cancelled, report.aborted), (0, 2, 0), "{report:?}");
        assert_eq!(server.connections(), 0);
        for (version, mut in_flight) in [("HTTP/1.1", h1_echo), ("HTTP/2", h2_echo)] {
            let end = in_flight.echo.frame().await;
            assert!(matches!(end, Some(Err(_))), "{version}: the echo ended with {end:?}");
        }
        // How hyper's client reports the end of the connection is its business; that it
        // ends is the server's.
        let _ = h1_conn.await.unwrap();
        let _ = h2_conn.await.unwrap();
        drop((h1, h2));
    }
}

/// `Http::serve` on a fresh loopback listener with the test routes as a hyper service.
fn http_serve_routes() -> (Server, SocketAddr) {
    use ringloop::net::compat::http::Http;
    let listener = ringloop::net::TcpListener::bind(common::localhost()).unwrap();
    let addr = listener.local_addr().unwrap();
    let service =
        hyper::service::service_fn(
            |req| async move { Ok::<_, Infallible>(http_routes::respond(req)) },
        );
    (Http::new().serve(listener, service), addr)
}

http_test! {
    /// `Http::serve`: a connection whose request outlasts the grace is cancelled at its end,
    /// and its task ends cancelled (it returns the error that carries the `Cancelled`), as the
    /// runtime's counters show; the shutdown report counts it cancelled.
    async fn http_serve_ends_a_connection_cancelled_at_the_grace_as_a_cancelled_task() {
        let (server, addr) = http_serve_routes();
        let (mut h1, h1_conn) = h1_client(addr).await;
        let mut in_flight = EchoInFlight::start(|req| h1.send_request(req), piece(1)).await;
        let before = ringloop::current_stats().tasks_cancelled;
        let report = server.shutdown(Duration::from_millis(100)).await.unwrap();
        assert_eq!((report.finished, report.cancelled, report.aborted), (0, 1, 0), "{report:?}");
        assert_eq!(ringloop::current_stats().tasks_cancelled - before, 1);
        let end = in_flight.echo.frame().await;
        assert!(matches!(end, Some(Err(_))), "the echo ended with {end:?}");
        let _ = h1_conn.await.unwrap();
        drop(h1);
    }
}

/// Sends `before` requests to `addr`, reads a response for each, then sends `partial` (the
/// start of a request head, or nothing) and waits until the server disconnects; checks how it
/// did (blocking: run it off the loop).
fn stall_in_head(addr: SocketAddr, before: usize, partial: &[u8]) {
    let mut stream = raw::connect(addr);
    let mut buf = Vec::new();
    for _ in 0..before {
        raw::send(
            &mut stream,
            raw::request_head("GET", HELLO_PATH, 0).as_bytes(),
        );
        check_fixed(HELLO_PATH, &raw::read_response(&mut stream, &mut buf, 4096));
    }
    if !partial.is_empty() {
        raw::send(&mut stream, partial);
    }
    // A clean end of the stream or a reset (hyper sends no response; a 408 would do too).
    match raw::read_until_closed(&mut stream) {
        Ok(got) => assert!(
            got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
            "after {before} requests: {:?}",
            String::from_utf8_lossy(&got)
        ),
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset,
            "after {before} requests: {e}"
        ),
    }
}

http_test! {
    /// A server with a 200 ms header-read timeout disconnects a client that sends half a
    /// request head and then nothing, as its first request and after two answered ones on a
    /// keep-alive connection (hyper re-aims its `HyperTimer` sleep for each request), a
    /// client that connects and sends nothing at all, and one that stops inside HTTP/2's
    /// preface (the last two before hyper's own timer starts: the server's first-request
    /// deadline covers them); each connection's task ends. A client that sends its heads in
    /// time is answered.
    async fn a_stalled_request_head_is_disconnected() {
        let config = Config { header_timeout: Duration::from_millis(200), ..Config::routes() };
        let (server, addr) = server::start(config);
        let cases: [(usize, &'static [u8]); 4] = [
            (0, b"GET / HTTP/1.1\r\nhost: loc"),
            (2, b"GET / HTTP/1.1\r\nhost: loc"),
            (0, b""),
            (0, b"PRI * HTTP/2.0\r\n"),
        ];
        for (before, partial) in cases {
            spawn_blocking(move || stall_in_head(addr, before, partial)).await.unwrap();
            assert!(
                until(|| server.connections() == 0).await,
                "after {before} requests and {partial:?}"
            );
        }
        spawn_blocking(move || {
            let mut stream = raw::connect(addr);
            let mut buf = Vec::new();
            for _ in 0..3 {
                raw::send(&mut stream, raw::request_head("GET", HELLO_PATH, 0).as_bytes());
                check_fixed(HELLO_PATH, &raw::read_response(&mut stream, &mut buf, 4096));
            }
        })
        .await
        .unwrap();
        assert!(until(|| server.connections() == 0).await);
        stop(&server).await;
    }
}

/// Sends `pieces` with a pause between them (so the server reads them one by one), then
/// returns the first `n` bytes the server answers.
fn send_in_pieces(addr: SocketAddr, pieces: &[&[u8]], n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut stream = raw::connect(addr);
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(30));
        }
        raw::send(&mut stream, piece);
    }
    let mut got = vec![0u8; n];
    stream.read_exact(&mut got).unwrap();
    got
}

http_test! {
    /// The server tells HTTP/2 from HTTP/1 by the client's first bytes, which may come in
    /// pieces: HTTP/2's preface in three pieces, then a `SETTINGS` frame, is answered with the
    /// server's `SETTINGS` (HTTP/2); a request whose first bytes match the preface for a while
    /// (`PRI /x HTTP/1.1`, its method alone first) is HTTP/1 (a 404); a whole HTTP/1.0 request
    /// in fewer bytes than the preface is answered. With both of `compat::Io`'s mechanisms;
    /// every connection's task ends.
    async fn the_protocol_is_told_from_first_bytes_that_come_in_pieces() {
        for mechanism in MECHANISMS {
            protocol_from_pieces(mechanism).await;
        }
    }
}

async fn protocol_from_pieces(mechanism: Mechanism) {
    let (server, addr) = server::start(Config {
        mechanism,
        ..Config::routes()
    });
    let frame = spawn_blocking(move || {
        let preface: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let settings: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
        send_in_pieces(
            addr,
            &[&preface[..5], &preface[5..17], &preface[17..], settings],
            9,
        )
    })
    .await
    .unwrap();
    assert_eq!(
        frame[3], 4,
        "{mechanism:?}: the first frame is SETTINGS: {frame:?}"
    );
    let head = spawn_blocking(move || {
        send_in_pieces(addr, &[b"PRI", b" /x HTTP/1.1\r\nhost: a\r\n\r\n"], 12)
    })
    .await
    .unwrap();
    assert_eq!(&head, b"HTTP/1.1 404", "{mechanism:?}");
    let head = spawn_blocking(move || send_in_pieces(addr, &[b"GET / HTTP/1.0\r\n\r\n"], 12))
        .await
        .unwrap();
    assert_eq!(&head, b"HTTP/1.0 200", "{mechanism:?}");
    assert!(until(|| server.connections() == 0).await, "{mechanism:?}");
    stop(&server).await;
}

http_test! {
    /// A connection that has sent nothing yet (its protocol unknown) closes at once when the
    /// server shuts down, and counts as finished.
    async fn a_connection_that_sent_nothing_closes_at_a_shutdown() {
        let (server, addr) = server::start(Config::routes());
        let client = spawn_blocking(move || {
            let mut stream = raw::connect(addr);
            raw::read_until_closed(&mut stream)
        });
        assert!(until(|| server.connections() == 1).await);
        let report = server.shutdown(GRACE).await.unwrap();
        assert!(report.is_graceful(), "{report:?}");
        assert_eq!(report.finished, 1, "{report:?}");
        let got = client.await.unwrap();
        assert!(matches!(&got, Ok(bytes) if bytes.is_empty()), "{got:?}");
    }
}

http_test! {
    /// With TLS, the same timeout bounds the handshake (the example's `ringloop::timeout`
    /// around tokio-rustls's `accept` over `compat::Io`): a client that sends the first bytes
    /// of a TLS record and then nothing is disconnected, and its connection's task ends.
    async fn a_stalled_tls_handshake_is_disconnected() {
        let (acceptor, _) = server::tls_acceptor();
        let config = Config {
            tls: Some(acceptor),
            header_timeout: Duration::from_millis(200),
            ..Config::routes()
        };
        let (server, addr) = server::start(config);
        let ended = spawn_blocking(move || {
            let mut stream = raw::connect(addr);
            // A handshake record's header, cut short.
            raw::send(&mut stream, &[0x16, 0x03, 0x01]);
            raw::read_until_closed(&mut stream)
        })
        .await
        .unwrap();
        match ended {
            Ok(got) => assert!(got.is_empty(), "{got:?}"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
        assert!(until(|| server.connections() == 0).await);
        stop(&server).await;
    }
}

/// The axum application of the test: a route with a path parameter and a JSON POST.
fn axum_app() -> axum::Router {
    use axum::extract::Path;
    use axum::routing::{get, post};
    use axum::Json;

    #[derive(serde::Deserialize, serde::Serialize)]
    struct Note {
        text: String,
    }

    axum::Router::new()
        .route(
            "/users/{id}",
            get(|Path(id): Path<u64>| async move {
                Json(serde_json::json!({ "id": id, "name": format!("user {id}") }))
            }),
        )
        .route(
            "/notes",
            post(|Json(note): Json<Note>| async move {
                let len = note.text.len();
                (
                    StatusCode::CREATED,
                    Json(serde_json::json!({ "note": note, "len": len })),
                )
            }),
        )
}

http_test! {
    /// An axum `Router` served the same way (through `TowerToHyperService`), over HTTP/1.1
    /// and HTTP/2: a path parameter is extracted, a JSON body parsed and answered with JSON
    /// and 201; a malformed body gets axum's 400, a wrong path 404.
    async fn an_axum_router_answers() {
        let config = Config { app: App::Axum(axum_app()), ..Config::routes() };
        let (server, addr) = server::start(config);
        let json_post = |body: &str| {
            Request::post("/notes")
                .header(hyper::header::HOST, "localhost")
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body.to_owned())))
                .unwrap()
        };
        let json = |body: &Bytes| serde_json::from_slice::<serde_json::Value>(body).unwrap();
        for http2 in [false, true] {
            let mut answers = Vec::new();
            let requests = [
                get("/users/7"),
                json_post(r#"{"text":"hello axum"}"#),
                json_post(r#"{"text":"#),
                get("/nowhere"),
            ];
            if http2 {
                let (mut sender, conn) = h2_client(addr).await;
                for req in requests {
                    let res = sender.send_request(req).await.unwrap();
                    assert_eq!(res.version(), Version::HTTP_2);
                    answers.push(read(res).await);
                }
                drop(sender);
                conn.await.unwrap().unwrap();
            } else {
                let (mut sender, conn) = h1_client(addr).await;
                for req in requests {
                    sender.ready().await.unwrap();
                    answers.push(read(sender.send_request(req).await.unwrap()).await);
                }
                drop(sender);
                conn.await.unwrap().unwrap();
            }
            let [user, note, malformed, missing] = &answers[..] else { unreachable!() };
            assert_eq!(user.0, StatusCode::OK, "http2={http2}");
            assert_eq!(json(&user.1), serde_json::json!({ "id": 7, "name": "user 7" }));
            assert_eq!(note.0, StatusCode::CREATED, "http2={http2}");
            assert_eq!(
                json(&note.1),
                serde_json::json!({ "note": { "text": "hello axum" }, "len": 10 })
            );
            assert_eq!(malformed.0, StatusCode::BAD_REQUEST, "http2={http2}");
            assert_eq!(missing.0, StatusCode::NOT_FOUND, "http2={http2}");
        }
        assert!(until(|| server.connections() == 0).await);
        stop(&server).await;
    }
}

http_test! {
    /// `Http::serve`, the one call: an axum router over TCP (HTTP/1.1 and HTTP/2 by the
    /// client's first bytes), and a client that connects and sends nothing is disconnected by
    /// the header timeout.
    async fn http_serve_in_one_call() {
        use ringloop::net::compat::http::{Http, TowerToHyperService};
        let listener = ringloop::net::TcpListener::bind(common::localhost()).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Http::new()
            .header_timeout(Some(Duration::from_millis(200)))
            .serve(listener, TowerToHyperService::new(axum_app()));
        for http2 in [false, true] {
            let res = if http2 {
                let (mut sender, _conn) = h2_client(addr).await;
                sender.send_request(get("/users/3")).await.unwrap()
            } else {
                let (mut sender, _conn) = h1_client(addr).await;
                sender.send_request(get("/users/3")).await.unwrap()
            };
            let (status, body) = read(res).await;
            assert_eq!(status, StatusCode::OK, "http2={http2}");
            assert_eq!(&body[..], br#"{"id":3,"name":"user 3"}"#, "http2={http2}");
        }
        spawn_blocking(move || stall_in_head(addr, 0, b"")).await.unwrap();
        assert!(until(|| server.connections() == 0).await);
        stop(&server).await;
    }
}

http_test! {
    /// `Http::serve_connection`'s future owns what it needs: the `Http` is dropped before the
    /// future is first polled, the future is a `Server` handler's future as it is (no `async`
    /// block around it), and the connection is served; with no request, the header timeout
    /// closes it.
    async fn serve_connections_future_outlives_its_http() {
        use ringloop::net::compat::http::Http;
        let listener = ringloop::net::TcpListener::bind(common::localhost()).unwrap();
        let addr = listener.local_addr().unwrap();
        let new_http = || Http::new().header_timeout(Some(Duration::from_millis(200)));
        let http = std::rc::Rc::new(std::cell::RefCell::new(Some(new_http())));
        let handed = http.clone();
        let server = Server::tcp(listener, move |stream, shutdown| {
            let service = hyper::service::service_fn(|req| async move {
                Ok::<_, Infallible>(http_routes::respond(req))
            });
            // One `Http` for the first connection, dropped before its future runs; a fresh
            // one for each later connection.
            let http = handed.borrow_mut().take().unwrap_or_else(new_http);
            http.serve_connection(Io::new(stream), service, Some(&shutdown))
        });
        let (mut sender, conn) = h1_client(addr).await;
        for _ in 0..3 {
            sender.ready().await.unwrap();
            let (status, body) = read(sender.send_request(get(HELLO_PATH)).await.unwrap()).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(&body[..], HELLO);
        }
        assert!(http.borrow().is_none(), "the first connection took the Http");
        drop(sender);
        conn.await.unwrap().unwrap();
        assert!(until(|| server.connections() == 0).await);
        spawn_blocking(move || stall_in_head(addr, 0, b"")).await.unwrap();
        assert!(until(|| server.connections() == 0).await);
        stop(&server).await;
    }
}

http_test! {
    /// `Http::serve` with a hyper service: a `POST /echo` in flight when the server shuts down
    /// is answered in full, then its connection closes, and the shutdown is graceful.
    async fn http_serve_finishes_a_request_in_flight() {
        let (server, addr) = http_serve_routes();
        let (mut busy, busy_conn) = h1_client(addr).await;
        let in_flight = EchoInFlight::start(|req| busy.send_request(req), piece(0)).await;
        let shutdown = begin_shutdown(&server, GRACE).await;
        in_flight.finish(piece(0), (1..5).map(piece).collect()).await;
        busy_conn.await.unwrap().unwrap();
        let report = shutdown.await.unwrap().unwrap();
        assert!(report.is_graceful(), "{report:?}");
        assert_eq!(report.finished, 1, "{report:?}");
    }
}

http_test! {
    /// `Http::serve_unix`: hyper over a Unix-domain socket, HTTP/1.1, the socket file left for
    /// the caller to remove.
    async fn http_serve_on_a_unix_socket() {
        use ringloop::net::compat::http::Http;
        use ringloop::net::{UnixListener, UnixStream};
        let dir = std::env::temp_dir().join(format!("ringloop-http-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{:?}.sock", ringloop::current_backend()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let service = hyper::service::service_fn(|req| async move {
            Ok::<_, Infallible>(http_routes::respond(req))
        });
        let server = Http::new().http1_only().serve_unix(listener, service);
        let stream = UnixStream::connect(&path).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(Io::new(stream))
            .await
            .unwrap();
        let conn = spawn(conn);
        let (status, body) = read(sender.send_request(get(HELLO_PATH)).await.unwrap()).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, HELLO));
        drop(sender);
        conn.await.unwrap().unwrap();
        stop(&server).await;
        std::fs::remove_file(&path).unwrap();
        let _ = std::fs::remove_dir(&dir);
    }
}

/// A directory of static files for a test: `a.txt`, `sub/big.bin` (300 000 bytes of
/// [`payload`]), and `.hidden`; removed when dropped.
struct StaticDir(std::path::PathBuf);

impl StaticDir {
    fn new() -> StaticDir {
        let dir = std::env::temp_dir().join(format!(
            "ringloop-static-{}-{:?}",
            std::process::id(),
            ringloop::current_backend()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.txt"), b"hello static\n").unwrap();
        std::fs::write(dir.join("sub/big.bin"), payload(5, 300_000)).unwrap();
        std::fs::write(dir.join(".hidden"), b"secret").unwrap();
        StaticDir(dir)
    }
}

impl Drop for StaticDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Reads one response head (for `HEAD`, which has no body): its status and `content-length`.
fn read_head_only(stream: &mut std::net::TcpStream, buf: &mut Vec<u8>) -> (u16, usize) {
    use std::io::Read;
    let mut scratch = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut res = httparse::Response::new(&mut headers);
            res.parse(&buf[..end + 4]).unwrap();
            let len = res
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                .unwrap();
            let status = res.code.unwrap();
            buf.drain(..end + 4);
            return (status, len);
        }
        let n = stream.read(&mut scratch).unwrap();
        assert!(n > 0, "the stream ended inside a head");
        buf.extend_from_slice(&scratch[..n]);
    }
}

http_test! {
    /// `--static`: on one keep-alive connection, pipelined, static requests answered with
    /// `send_file` (a small file, a 300 KB one, `HEAD`, a missing file, paths that leave the
    /// directory or name a hidden file, another method), then a request for a route (hyper
    /// takes the connection over, with the bytes already read), then static files again
    /// (hyper's route now); every body byte checked. A static request with a body gets `400`
    /// and the connection closes.
    async fn static_files_are_sent_then_hyper_takes_over() {
        let dir = StaticDir::new();
        let config = Config { static_dir: Some(dir.0.clone()), ..Config::routes() };
        let (server, addr) = server::start(config);
        spawn_blocking(move || {
            let mut stream = raw::connect(addr);
            let mut requests = String::new();
            for (method, path) in [
                ("GET", "/static/a.txt"),
                ("GET", "/static/sub/big.bin"),
                ("HEAD", "/static/sub/big.bin"),
                ("GET", "/static/missing.txt"),
                ("GET", "/static/../a.txt"),
                ("GET", "/static/sub/../../a.txt"),
                ("GET", "/static/.hidden"),
                ("GET", "/static/sub"),
                ("DELETE", "/static/a.txt"),
                ("GET", "/static/a.txt"),
                ("GET", HELLO_PATH),
                ("GET", "/static/sub/big.bin"),
                ("GET", "/static/missing.txt"),
            ] {
                requests += &raw::request_head(method, path, 0);
            }
            raw::send(&mut stream, requests.as_bytes());
            let mut buf = Vec::new();
            let mut next = || raw::read_response(&mut stream, &mut buf, 64 * 1024);
            let small = next();
            assert_eq!(small.status, 200);
            assert_eq!(small.body, b"hello static\n");
            assert_eq!(small.header("content-type"), Some("text/plain; charset=utf-8"));
            let big = next();
            assert_eq!(big.status, 200);
            assert!(big.body == payload(5, 300_000), "{} bytes", big.body.len());
            assert_eq!(read_head_only(&mut stream, &mut buf), (200, 300_000));
            let mut next = || raw::read_response(&mut stream, &mut buf, 64 * 1024);
            for what in ["missing", "..", "sub/../..", ".hidden", "a directory"] {
                assert_eq!(next().status, 404, "{what}");
            }
            assert_eq!(next().status, 405);
            assert_eq!(next().body, b"hello static\n");
            // hyper from here on.
            let hello = next();
            assert_eq!((hello.status, &hello.body[..]), (200, HELLO));
            let big = next();
            assert_eq!(big.status, 200);
            assert!(big.body == payload(5, 300_000), "through hyper: {} bytes", big.body.len());
            assert_eq!(next().status, 404);

            let mut stream = raw::connect(addr);
            raw::send(&mut stream, raw::request_head("GET", "/static/a.txt", 5).as_bytes());
            raw::send(&mut stream, b"12345");
            let mut buf = Vec::new();
            assert_eq!(raw::read_response(&mut stream, &mut buf, 4096).status, 400);
            assert!(raw::read_until_closed(&mut stream).unwrap_or_default().is_empty());
        })
        .await
        .unwrap();
        assert!(until(|| server.connections() == 0).await);
        stop(&server).await;
        drop(dir);
    }
}

http_test! {
    /// A connection served by `Http` shows, in the task tree, what it really waits on between
    /// requests: its socket's receive, not the server's shutdown signal or the first request's
    /// timer, which it also watches.
    async fn an_idle_http_connection_shows_its_socket_read() {
        use ringloop::net::compat::http::Http;
        use ringloop::Awaiting;
        let listener = ringloop::net::TcpListener::bind(common::localhost()).unwrap();
        let addr = listener.local_addr().unwrap();
        let service = hyper::service::service_fn(|req| async move {
            Ok::<_, Infallible>(http_routes::respond(req))
        });
        let server = Http::new().serve(listener, service);
        let (mut sender, client_conn) = h1_client(addr).await;
        let res = sender.send_request(get(HELLO_PATH)).await.unwrap();
        assert_eq!(read(res).await.0, StatusCode::OK);
        let client = client_conn.as_ref().id();
        let me = ringloop::current_task().map(|t| t.id());
        let served = || {
            ringloop::all_tasks()
                .into_iter()
                .filter(|t| t.id() != client && Some(t.id()) != me)
                .filter_map(|t| t.awaiting())
                .filter(|a| !matches!(a, Awaiting::Io { op: "accept", .. }))
                .collect::<Vec<_>>()
        };
        assert!(
            until(|| matches!(&served()[..], [Awaiting::Io { op: "recv", fd: Some(_), .. }])).await,
            "{:?}",
            served()
        );
        drop(sender);
        client_conn.await.unwrap().unwrap();
        stop(&server).await;
    }
}
