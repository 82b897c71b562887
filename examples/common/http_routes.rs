//! The routes every HTTP server of the benchmarks serves, and the bodies the load generator
//! checks its responses against: one file, so the servers and the generator cannot drift apart.
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | 200, `content-type: text/plain`, body [`HELLO`] (`Hello, World!`) |
//! | `GET /64k` | 200, `content-type: application/octet-stream`, body [`BIG_BODY`]: 65 536 bytes, byte `i` is [`big_body_byte`]`(i)` |
//! | `POST /echo` | 200, the request's body streamed back as it arrives (its length, or chunked when the request was chunked) |
//! | `HEAD /`, `HEAD /64k` | the `GET`'s head (status, type, length), no body |
//! | another method on one of these paths | 405, `Method Not Allowed`, with `allow:` listing the path's methods |
//! | any other path | 404, `Not Found` |
//!
//! Include it with `#[path]` (examples cannot share a module otherwise):
//!
//! ```ignore
//! #[path = "common/http_routes.rs"]
//! mod http_routes;
//!
//! // In a hyper service:
//! let service = hyper::service::service_fn(|req| async move {
//!     Ok::<_, std::convert::Infallible>(http_routes::respond(req))
//! });
//! ```
//!
//! [`respond`] uses only hyper's types, so the tokio baseline (`tokio_http_server`) and the
//! ringloop server answer with the same code; only their I/O and executors differ.

// An includer uses what it needs: the load generator the bodies, a server `respond`.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

/// The path of the plaintext route.
pub const HELLO_PATH: &str = "/";
/// The body of `GET /`.
pub const HELLO: &[u8] = b"Hello, World!";
/// The path of the 64 KiB route.
pub const BIG_PATH: &str = "/64k";
/// The length of `GET /64k`'s body.
pub const BIG_LEN: usize = 65_536;
/// The path of the echo route.
pub const ECHO_PATH: &str = "/echo";

/// Byte `i` of [`BIG_BODY`]: the lowercase alphabet over and over (`abc…zabc…`), so a body
/// that is shifted, truncated or spliced from two responses does not compare equal.
pub const fn big_body_byte(i: usize) -> u8 {
    b'a' + (i % 26) as u8
}

/// The body of `GET /64k`, built at compile time (a static, so a server can hand it out
/// without copying: `Bytes::from_static(&BIG_BODY)`).
pub static BIG_BODY: [u8; BIG_LEN] = {
    let mut body = [0u8; BIG_LEN];
    let mut i = 0;
    while i < BIG_LEN {
        body[i] = big_body_byte(i);
        i += 1;
    }
    body
};

/// Which route a request takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /` (and `HEAD /`)
    Hello,
    /// `GET /64k` (and `HEAD /64k`)
    Big,
    /// `POST /echo`
    Echo,
    /// A known path, another method: 405, with these methods in `allow`.
    MethodNotAllowed(&'static str),
    /// Any other path: 404.
    NotFound,
}

impl Route {
    /// The route of a request with this method and path (the path without its query).
    pub fn of(method: &Method, path: &str) -> Route {
        // HEAD answers as GET does: hyper sends the head only.
        let get = *method == Method::GET || *method == Method::HEAD;
        match path {
            HELLO_PATH if get => Route::Hello,
            BIG_PATH if get => Route::Big,
            ECHO_PATH if *method == Method::POST => Route::Echo,
            HELLO_PATH | BIG_PATH => Route::MethodNotAllowed("GET, HEAD"),
            ECHO_PATH => Route::MethodNotAllowed("POST"),
            _ => Route::NotFound,
        }
    }
}

/// A response body: a fixed one, or the request's own body streamed back (`POST /echo`).
pub type Body = Either<Full<Bytes>, Incoming>;

/// `res` as the answer to a `HEAD` when `head`: the same head, its `content-length` that of
/// the body it would have had, and no body. hyper leaves a `HEAD`'s body out on HTTP/1 but
/// sends it on HTTP/2, so the body is taken out here.
pub fn head_only(head: bool, mut res: Response<Body>) -> Response<Body> {
    if head {
        if let Some(len) = res.body().size_hint().exact() {
            res.headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(len));
        }
        *res.body_mut() = Either::Left(Full::new(Bytes::new()));
    }
    res
}

/// The answer to `req`, for every route of the table above. Never fails, so a service can wrap
/// it in `Ok::<_, Infallible>`.
pub fn respond(req: Request<Incoming>) -> Response<Body> {
    let head = req.method() == Method::HEAD;
    let fixed = |status: StatusCode, content_type: &'static str, body: &'static [u8]| {
        let mut res = Response::new(Either::Left(Full::new(Bytes::from_static(body))));
        *res.status_mut() = status;
        res.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        res
    };
    match Route::of(req.method(), req.uri().path()) {
        Route::Hello => head_only(head, fixed(StatusCode::OK, "text/plain", HELLO)),
        Route::Big => head_only(
            head,
            fixed(StatusCode::OK, "application/octet-stream", &BIG_BODY),
        ),
        Route::Echo => {
            // hyper sends the response head at once and then each chunk of the request's body
            // as it arrives: a body is never held whole in memory.
            let mut res = Response::new(Either::Right(req.into_body()));
            res.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            res
        }
        Route::MethodNotAllowed(allow) => {
            let mut res = fixed(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                b"Method Not Allowed",
            );
            res.headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
            res
        }
        Route::NotFound => fixed(StatusCode::NOT_FOUND, "text/plain", b"Not Found"),
    }
}
