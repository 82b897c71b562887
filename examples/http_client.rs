//! hyper's HTTP client on ringloop: one connection (HTTP/1.1, or HTTP/2 with `--http2`), a few
//! requests on it, each response's status and body printed.
//!
//! ```text
//! cargo run --release --example http_server &
//! cargo run --release --example http_client -- --addr 127.0.0.1:8080 --path /
//! cargo run --release --example http_client -- --http2 --requests 3
//! cargo run --release --example http_client -- --path /echo --data 'hello, echo'
//! cargo run --release --example http_client -- --backend epoll --path /64k
//! ```
//!
//! The connection's own future (hyper's `Connection`, which reads and writes the socket) runs as
//! a ringloop task beside the requests, as hyper's docs do with `tokio::spawn`.

use std::net::SocketAddr;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use ringloop::compat::hyper::{HyperExecutor, HyperTimer};
use ringloop::net::compat::Io;
use ringloop::net::TcpStream;
use ringloop::{Backend, Runtime};

#[path = "common/backend_arg.rs"]
mod backend_arg;
use backend_arg::BackendArg;

#[derive(Parser, Debug)]
#[command(about = "HTTP client: hyper on ringloop")]
struct Args {
    /// I/O backend.
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendArg,
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Path to ask for.
    #[arg(long, default_value = "/")]
    path: String,
    /// POST this body instead of a GET.
    #[arg(long)]
    data: Option<String>,
    /// Requests to send on the connection.
    #[arg(long, default_value_t = 1)]
    requests: usize,
    /// Speak HTTP/2 (prior knowledge) instead of HTTP/1.1.
    #[arg(long)]
    http2: bool,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let backend = Backend::from(args.backend);
    Runtime::builder()
        .backend(backend)
        .build()?
        .block_on(client(args))
}

async fn client(args: Args) -> Result<(), BoxError> {
    let stream = TcpStream::connect(args.addr).await?;
    stream.set_nodelay(true)?;
    let io = Io::new(stream);
    let request = || {
        let builder = Request::builder()
            .uri(format!("http://{}{}", args.addr, args.path))
            .header(hyper::header::HOST, args.addr.to_string());
        match &args.data {
            Some(data) => builder
                .method("POST")
                .body(Full::new(Bytes::from(data.clone()))),
            None => builder.body(Full::new(Bytes::new())),
        }
    };
    if args.http2 {
        let (mut sender, conn) = hyper::client::conn::http2::Builder::new(HyperExecutor)
            .timer(HyperTimer)
            .handshake(io)
            .await?;
        ringloop::spawn(conn);
        // HTTP/2: every request in flight at once, on streams of the one connection.
        let responses: Vec<_> = (0..args.requests)
            .map(|_| sender.send_request(request().unwrap()))
            .collect();
        for response in responses {
            print(response.await?).await?;
        }
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        ringloop::spawn(conn);
        // HTTP/1.1: one request after another on the kept-alive connection.
        for _ in 0..args.requests {
            sender.ready().await?;
            print(sender.send_request(request()?).await?).await?;
        }
    }
    Ok(())
}

async fn print(response: hyper::Response<hyper::body::Incoming>) -> Result<(), BoxError> {
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    println!(
        "{:?} {} ({} bytes)",
        parts.version,
        parts.status,
        body.len()
    );
    if body.len() <= 256 {
        println!("{}", String::from_utf8_lossy(&body));
    }
    Ok(())
}
