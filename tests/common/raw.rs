//! A raw HTTP/1.1 client on blocking std sockets, for what hyper's client will not do
//! (pipeline, stall mid-head, vanish mid-body, read one byte at a time): requests are written
//! by hand, responses parsed with `httparse` and their `content-length`. Run it off the loop
//! (`spawn_blocking`): the server under test runs on the loop thread.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a raw client waits in one read or write before it fails: far beyond anything the
/// server needs, so a hang is reported instead of waited out.
pub const IO_LIMIT: Duration = Duration::from_secs(20);

/// A response read off a raw socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The value of header `name` (case-insensitive), if present and UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// Connects to `addr` with [`IO_LIMIT`] on every read and write.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    limit(&stream);
    stream
}

/// Sets [`IO_LIMIT`] on `stream`'s reads and writes.
pub fn limit(stream: &TcpStream) {
    stream.set_read_timeout(Some(IO_LIMIT)).unwrap();
    stream.set_write_timeout(Some(IO_LIMIT)).unwrap();
}

/// A request head for `method path` with `content-length: body_len` (none for 0 on a GET).
pub fn request_head(method: &str, path: &str, body_len: usize) -> String {
    let length = if method == "GET" && body_len == 0 {
        String::new()
    } else {
        format!("content-length: {body_len}\r\n")
    };
    format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\n{length}\r\n")
}

/// Parses one response at the start of `buf`: `None` while it is incomplete, else the response
/// and how many bytes of `buf` it took. Panics on a malformed head, or one with no
/// `content-length` (every response of the routes has one, but for a chunked request's echo).
pub fn parse_response(buf: &[u8]) -> Option<(RawResponse, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut res = httparse::Response::new(&mut headers);
    let head_len = match res.parse(buf).expect("a malformed response head") {
        httparse::Status::Partial => return None,
        httparse::Status::Complete(n) => n,
    };
    let headers: Vec<(String, Vec<u8>)> = res
        .headers
        .iter()
        .map(|h| (h.name.to_owned(), h.value.to_vec()))
        .collect();
    let status = res.code.unwrap();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| std::str::from_utf8(v).unwrap().parse().unwrap())
        .unwrap_or_else(|| panic!("a response without content-length: {headers:?}"));
    let end = head_len + length;
    if buf.len() < end {
        return None;
    }
    let body = buf[head_len..end].to_vec();
    Some((
        RawResponse {
            status,
            headers,
            body,
        },
        end,
    ))
}

/// Reads the next response from `stream`, `chunk` bytes per read at most; `buf` holds what was
/// read past it (the next pipelined responses) and is read first. Panics if the stream ends or
/// fails first.
pub fn read_response(stream: &mut impl Read, buf: &mut Vec<u8>, chunk: usize) -> RawResponse {
    let mut scratch = vec![0u8; chunk];
    loop {
        if let Some((res, used)) = parse_response(buf) {
            buf.drain(..used);
            return res;
        }
        let n = stream.read(&mut scratch).expect("reading a response");
        assert!(n > 0, "the stream ended inside a response: {buf:?}");
        buf.extend_from_slice(&scratch[..n]);
    }
}

/// Reads until the server ends the connection: `Ok` with what came before a clean end of the
/// stream, or the error that ended it (`ECONNRESET`). A read that times out ([`IO_LIMIT`])
/// panics: the server did not disconnect.
pub fn read_until_closed(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut got = Vec::new();
    let mut scratch = [0u8; 4096];
    loop {
        match stream.read(&mut scratch) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&scratch[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the server kept the connection open for {IO_LIMIT:?}")
            }
            Err(e) => return Err(e),
        }
    }
}

/// Writes all of `data`.
pub fn send(stream: &mut TcpStream, data: &[u8]) {
    stream.write_all(data).expect("writing a request");
}
