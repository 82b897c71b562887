//! An axum application served on ringloop: axum's `Router` (routing, extractors, JSON, a
//! streamed body) is a tower service, and hyper serves it on ringloop's sockets, executor and
//! timer, exactly as `axum::serve` does on tokio.
//!
//! ```text
//! cargo run --release --example axum_app -- --backend uring --addr 127.0.0.1:3000
//! curl http://127.0.0.1:3000/
//! curl http://127.0.0.1:3000/users/7
//! curl -H 'content-type: application/json' -d '{"text":"hi"}' http://127.0.0.1:3000/notes
//! curl -N http://127.0.0.1:3000/countdown/5
//! ```
//!
//! `/countdown/N` streams N lines, one every 100 ms (N at most 100).
//!
//! SIGTERM or SIGINT shuts it down gracefully, as `axum::serve(..).with_graceful_shutdown(..)`
//! does: no new connections, requests in progress finish (within `--grace` seconds); a second
//! signal stops it at once. It then prints `shutdown finished=N cancelled=N aborted=N
//! immediate=BOOL` to stderr and exits 0, or 1 after a second signal.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use ringloop::net::compat::http::{Http, TowerToHyperService};
use ringloop::net::TcpListener;
use ringloop::{Backend, Runtime};
use serde::{Deserialize, Serialize};

#[path = "common/backend_arg.rs"]
mod backend_arg;
use backend_arg::BackendArg;

#[derive(Parser, Debug)]
#[command(about = "an axum application on ringloop")]
struct Args {
    /// I/O backend.
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendArg,
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

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("axum_app: {e}");
            ExitCode::from(2)
        }
    }
}

/// Serves until a shutdown; whether it was graceful (not cut short by a second signal).
fn run(args: Args) -> std::io::Result<bool> {
    let grace = Duration::from_secs_f64(args.grace);
    let backend = Backend::from(args.backend);
    let rt = Runtime::builder().backend(backend).build()?;
    let report = rt.block_on(async move {
        let listener = TcpListener::bind(args.addr)?;
        let addr = listener.local_addr()?;
        // Each connection a task of a `net::Server`, hyper's HTTP/1 + HTTP/2 on ringloop's
        // executor and timer, the router as a hyper service.
        let server = Http::new()
            .header_timeout(Some(HEADER_TIMEOUT))
            .serve(listener, TowerToHyperService::new(app()));
        let stopped = server.shutdown_on_signals(grace)?;
        println!("listening on {addr} ({:?})", ringloop::current_backend());
        stopped.await
    })?;
    eprintln!(
        "shutdown finished={} cancelled={} aborted={} immediate={}",
        report.finished, report.cancelled, report.aborted, report.immediate
    );
    Ok(!report.immediate)
}
