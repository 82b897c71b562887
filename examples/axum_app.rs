//! An axum application served on ringloop: axum's `Router` (routing, extractors, JSON, a
//! streamed body) is a tower service, and hyper serves it on ringloop's sockets, executor and
//! timer, exactly as `axum::serve` does on tokio.
//!
//! ```text
//! cargo run --release --example axum_app -- --addr 127.0.0.1:3000
//! curl http://127.0.0.1:3000/
//! curl http://127.0.0.1:3000/users/7
//! curl -H 'content-type: application/json' -d '{"text":"hi"}' http://127.0.0.1:3000/notes
//! curl -N http://127.0.0.1:3000/countdown/5
//! ```
//!
//! SIGTERM or SIGINT shuts it down gracefully, as `axum::serve(..).with_graceful_shutdown(..)`
//! does: no new connections, requests in progress finish (within `--grace` seconds).

use std::cell::Cell;
use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use hyper::service::Service;
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use ringloop::compat::hyper::{HyperExecutor, HyperTimer};
use ringloop::net::compat::Io;
use ringloop::net::{Server, ShutdownSignal, TcpListener, TcpStream};
use serde::{Deserialize, Serialize};

#[derive(Parser, Debug)]
#[command(about = "an axum application on ringloop")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    addr: SocketAddr,
    /// Seconds the open connections get to finish after SIGTERM or SIGINT.
    #[arg(long, default_value_t = 5.0)]
    grace: f64,
}

/// The time a client gets to send a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Serialize)]
struct User {
    id: u64,
    name: String,
}

#[derive(Deserialize, Serialize)]
struct Note {
    text: String,
}

/// The application: plain axum, nothing in it knows which runtime serves it.
fn app() -> Router {
    Router::new()
        .route("/", get(|| async { "Hello from axum on ringloop!\n" }))
        .route("/users/{id}", get(user))
        .route("/notes", post(note))
        .route("/countdown/{n}", get(countdown))
}

async fn user(Path(id): Path<u64>) -> Json<User> {
    Json(User {
        id,
        name: format!("user {id}"),
    })
}

/// Echoes a JSON note back with its length; axum answers 400/415/422 for bad input itself.
async fn note(Json(note): Json<Note>) -> (StatusCode, Json<serde_json::Value>) {
    let len = note.text.len();
    (
        StatusCode::CREATED,
        Json(serde_json::json!({ "note": note, "len": len })),
    )
}

/// A streamed body: one line every 100 ms, timed by ringloop's timer.
async fn countdown(Path(n): Path<u32>) -> Body {
    let lines = futures_util::stream::unfold(n.min(100), |i| async move {
        if i == 0 {
            return None;
        }
        ringloop::sleep(Duration::from_millis(100)).await.ok()?;
        Some((Ok::<_, Infallible>(format!("{}\n", i - 1)), i - 1))
    });
    Body::from_stream(lines)
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let grace = Duration::from_secs_f64(args.grace);
    ringloop::Runtime::new()?.block_on(async move {
        let listener = TcpListener::bind(args.addr)?;
        let addr = listener.local_addr()?;
        let app = app();
        let server = Server::tcp(listener, move |stream, shutdown| {
            serve(stream, shutdown, app.clone())
        });
        let stopped = server.shutdown_on_signals(grace)?;
        println!("listening on {addr}");
        let report = stopped.await?;
        eprintln!(
            "shutdown finished={} cancelled={}",
            report.finished, report.cancelled
        );
        Ok(())
    })
}

/// One connection: hyper (HTTP/1.1 or HTTP/2) serving the router, shut down gracefully when the
/// server is.
async fn serve(stream: TcpStream, shutdown: ShutdownSignal, app: Router) {
    let _ = stream.set_nodelay(true);
    let mut builder = auto::Builder::new(HyperExecutor);
    builder
        .http1()
        .timer(HyperTimer)
        .header_read_timeout(HEADER_TIMEOUT);
    builder.http2().timer(HyperTimer);
    let asked = Rc::new(Cell::new(false));
    let service = TowerToHyperService::new(app);
    let service = hyper::service::service_fn(|req| {
        asked.set(true);
        service.call(req)
    });
    let mut conn = pin!(builder.serve_connection(Io::new(stream), service));
    let mut stop = pin!(shutdown.wait());
    let mut stopping = false;
    // hyper's header timeout starts once the first bytes are in (hyper-util's auto builder
    // reads them without a timer to tell HTTP/1 from HTTP/2): a client that connects and
    // sends nothing, or too little, gets the same time for its first request head.
    let mut first = Some(Box::pin(ringloop::sleep(HEADER_TIMEOUT)));
    let _ = poll_fn(|cx| {
        if asked.get() {
            first = None;
        } else if let Some(Poll::Ready(_)) = first.as_mut().map(|t| t.as_mut().poll(cx)) {
            return Poll::Ready(Ok(()));
        }
        if !stopping {
            if let Poll::Ready(r) = stop.as_mut().poll(cx) {
                if r.is_err() {
                    // Cancelled: the grace is over; dropping the connection closes it.
                    return Poll::Ready(Ok(()));
                }
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
        conn.as_mut().poll(cx)
    })
    .await;
}
