//! Static files under `/static/`, sent with `send_file` (the kernel copies the file's pages
//! straight into the socket), in front of a hyper server.
//!
//! hyper writes every response body itself, through the I/O traits, so a body cannot be handed
//! to `sendfile(2)`. This module therefore reads each request head of a new connection itself
//! (HTTP/1.1, with `httparse`): while the requests are `GET` or `HEAD` of `/static/...`, it
//! answers them, keep-alive and pipelining included; at the first other request it hands the
//! connection to hyper, with the bytes it has read ([`Prefixed`]), and hyper serves the rest
//! of the connection (where `/static/` is served by the hyper routes' fallback, without
//! `send_file`).
//!
//! * `GET /static/a/b.css`: the file `DIR/a/b.css`, `200` with its length and a content type
//!   from its extension; `HEAD` the same head without the body.
//! * A path with an empty, `.` or `..` component, a component starting with `.`, a `%`, a
//!   `\` or a NUL, or one that names no regular file: `404`. Another method: `405`. A request
//!   with a body: `400`, and the connection is closed.
//! * A connection closes after a response when the request said `connection: close` or was
//!   HTTP/1.0, when the server is shutting down, or when no complete request head arrives within
//!   the header timeout.

// An includer uses what it needs.
#![allow(dead_code)]

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use ringloop::net::{ShutdownSignal, TcpStream};

/// The URL prefix of the static files.
pub const PREFIX: &str = "/static/";

/// The most a request head may take; a longer one goes to hyper (which answers `431`).
const MAX_HEAD: usize = 16 * 1024;

/// What [`serve`] did with the connection.
pub enum Outcome {
    /// It ended (the client left, asked to close, stalled, or the server is shutting down).
    Closed,
    /// A request that is not for a static file: these bytes (its start, and whatever followed)
    /// go to hyper first.
    Other(Vec<u8>),
}

/// Answers the connection's requests for static files in `dir`, one after another, until one
/// is not (see the [module docs](self)).
pub async fn serve(
    stream: &TcpStream,
    dir: &Path,
    header_timeout: Duration,
    shutdown: &ShutdownSignal,
) -> Outcome {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if shutdown.is_set() && buf.is_empty() {
            return Outcome::Closed;
        }
        // A complete head, within the timeout.
        let head = ringloop::timeout(header_timeout, read_head(stream, &mut buf)).await;
        let end = match head {
            Ok(Ok(Some(end))) => end,
            Ok(Ok(None)) => return Outcome::Other(buf), // too long for us: hyper answers it
            _ => return Outcome::Closed,
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(_)) = req.parse(&buf[..end]) else {
            return Outcome::Other(buf); // hyper answers a bad request
        };
        let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
            return Outcome::Other(buf);
        };
        let Some(rel) = path.strip_prefix(PREFIX) else {
            return Outcome::Other(buf);
        };
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
        };
        let has_body = header("transfer-encoding").is_some()
            || header("content-length").is_some_and(|v| v != b"0");
        let close = version == 0
            || header("connection").is_some_and(|v| v.eq_ignore_ascii_case(b"close"))
            || shutdown.is_set();
        let head_only = method == "HEAD";
        let sent = if has_body {
            respond_status(stream, 400, "Bad Request", true).await
        } else if method != "GET" && !head_only {
            respond_status(stream, 405, "Method Not Allowed", close).await
        } else {
            match file_path(dir, rel) {
                Some(p) => respond_file(stream, &p, head_only, close).await,
                None => respond_status(stream, 404, "Not Found", close).await,
            }
        };
        if sent.is_err() || close || has_body {
            return Outcome::Closed;
        }
        buf.drain(..end);
    }
}

/// Reads into `buf` until it holds a complete request head; its end. `None` if the head is
/// longer than [`MAX_HEAD`]; an error (`UnexpectedEof` included) ends the connection.
async fn read_head(stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(i + 4));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
        let (n, chunk) = stream.read(Vec::with_capacity(4096)).await;
        match n? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            _ => buf.extend_from_slice(&chunk),
        }
    }
}

/// The file `rel` names under `dir`, if it is a safe relative path to a regular file.
fn file_path(dir: &Path, rel: &str) -> Option<PathBuf> {
    let rel = rel.split(['?', '#']).next().unwrap_or_default();
    let mut path = dir.to_path_buf();
    for part in rel.split('/') {
        let unsafe_part =
            part.is_empty() || part.starts_with('.') || part.contains(['%', '\\', '\0']);
        if unsafe_part {
            return None;
        }
        path.push(part);
    }
    std::fs::metadata(&path).ok()?.is_file().then_some(path)
}

/// The hyper routes' answer for `/static/<rel>` (connections hyper serves): the whole file read
/// into memory (through `ringloop::fs`), with the same statuses as [`serve`].
pub async fn read_whole(
    dir: &Path,
    rel: &str,
    method: &hyper::Method,
) -> hyper::Response<crate::http_routes::Body> {
    use http_body_util::{Either, Full};
    let status = |code: u16, reason: &'static str| {
        let mut res = hyper::Response::new(Either::Left(Full::new(bytes::Bytes::from_static(
            reason.as_bytes(),
        ))));
        *res.status_mut() = hyper::StatusCode::from_u16(code).expect("a valid status");
        res
    };
    if method != hyper::Method::GET && method != hyper::Method::HEAD {
        return status(405, "Method Not Allowed");
    }
    let Some(path) = file_path(dir, rel) else {
        return status(404, "Not Found");
    };
    let Ok(data) = ringloop::fs::read(&path).await else {
        return status(404, "Not Found");
    };
    let mut res = hyper::Response::new(Either::Left(Full::new(bytes::Bytes::from(data))));
    res.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type(&path)),
    );
    crate::http_routes::head_only(method == hyper::Method::HEAD, res)
}

/// A content type by extension.
fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css",
        "js" | "mjs" => "text/javascript",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

async fn respond_status(
    stream: &TcpStream,
    code: u16,
    reason: &str,
    close: bool,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{}\r\n{reason}",
        reason.len(),
        if close { "connection: close\r\n" } else { "" },
    );
    stream.write_all(head.into_bytes()).await.0?;
    Ok(())
}

async fn respond_file(
    stream: &TcpStream,
    path: &Path,
    head_only: bool,
    close: bool,
) -> io::Result<()> {
    let file = match ringloop::fs::File::open(path).await {
        Ok(f) => f,
        Err(_) => return respond_status(stream, 404, "Not Found", close).await,
    };
    let len = file.metadata().await?.len();
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {}\r\ncontent-length: {len}\r\n{}\r\n",
        content_type(path),
        if close { "connection: close\r\n" } else { "" },
    );
    stream.write_all(head.into_bytes()).await.0?;
    if !head_only {
        let len = usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        let sent = stream.send_file(&file, 0, len).await?;
        if sent < len {
            // The file shrank after its length was sent: the response cannot be completed.
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

/// An I/O object that yields `prefix` before `io`'s own bytes (hyper's reads), and writes to
/// `io`.
pub struct Prefixed<I> {
    prefix: Vec<u8>,
    pos: usize,
    io: I,
}

impl<I> Prefixed<I> {
    pub fn new(prefix: Vec<u8>, io: I) -> Prefixed<I> {
        Prefixed { prefix, pos: 0, io }
    }
}

impl<I: hyper::rt::Read + Unpin> hyper::rt::Read for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.pos);
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: hyper::rt::Write + Unpin> hyper::rt::Write for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}
