//! The HTTP cells of the main job: hyper on ringloop (io_uring and epoll) against hyper on
//! tokio's current-thread runtime, loaded by the project's own HTTP/1.1 generator.
//!
//! The three servers answer from [`http_routes`], so they send the same bytes. A cell is a
//! route and a connection count:
//!
//! * `plaintext`: `GET /`, answered `Hello, World!` (the TechEmpower plaintext shape, without
//!   pipelining unless `--http-pipeline`);
//! * `64k`: `GET /64k`, a 65 536-byte body ([`http_routes::BIG_BODY`]);
//! * `echo`: `POST /echo` with a [`ECHO_BODY_LEN`]-byte body (a pattern per connection), which
//!   the server streams back.
//!
//! The generator is a task per connection on ringloop's native API: a hand-written request
//! (a few header lines, built once per connection), written with `write_all`, and a
//! hand-written response parser ([`ResponseParser`]) fed from the connection's pooled
//! receiver, which verifies every response where it lies: status `200`, HTTP/1.1, no
//! `connection: close`, a `content-length` or chunked body, and every body byte against what
//! the route must answer. Any other answer is an error; one error fails the run, in every mode.
//! Keep-alive throughout: a connection sends its next request when the last response is in.
//! With `--http-pipeline P` a connection writes P requests in one write and reads their P
//! responses before the next batch; each response's latency runs from its batch's write.
//!
//! What c10k asks of an HTTP server: it is started as `http_server --backend uring|epoll --addr
//! ADDR --announce` or `tokio_http_server --addr ADDR --announce` (or as the CMD of
//! `--http-server NAME=CMD`, `{addr}` replaced), prints a line containing `listening on` to
//! stdout once it accepts, answers the routes of [`http_routes`] over HTTP/1.1 with
//! keep-alive, and exits on SIGTERM (c10k sends SIGKILL 3 s later). A server that prints
//! ringloop's `final stats kernel_enters=N ...` line to stderr at exit gets its kernel entries
//! per request in the JSON.
//!
//! The measurement is the echo cells' ([`drive_load`]): a ramp, a warm-up, a measured window
//! with the server's CPU time (utime + stime of all its threads, `/proc/PID/stat`) read at its
//! edges, a drain; requests/s, latency percentiles (hdrhistogram) and server CPU per request,
//! medians over interleaved repetitions, ratios against `tokio`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use ringloop::sync::Semaphore;
use serde::Serialize;

use super::{
    clock_ticks_per_s, connect_under_ramp, drive_load, fmt_rate, is_io_error, say, Args,
    ClientCpus, LoadConfig, LoadState, NetCounters, Phase, Plan, Server, ServerSpec, ServerStats,
    Stat,
};
use crate::http_routes;

/// The body of an `echo` cell's request, in bytes.
pub const ECHO_BODY_LEN: usize = 1024;

/// The name of the baseline row the ratios compare with.
const BASELINE: &str = "tokio";

/// The built-in HTTP servers.
const BUILT_INS: [&str; 3] = ["uring", "epoll", "tokio"];

/// What a cell asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpRoute {
    /// `GET /`: `Hello, World!`.
    Plaintext,
    /// `GET /64k`: 65 536 bytes.
    #[serde(rename = "64k")]
    Big,
    /// `POST /echo` with [`ECHO_BODY_LEN`] bytes, streamed back.
    Echo,
}

impl HttpRoute {
    fn name(self) -> &'static str {
        match self {
            HttpRoute::Plaintext => "plaintext",
            HttpRoute::Big => "64k",
            HttpRoute::Echo => "echo",
        }
    }

    /// The body every response must carry on connection `id`.
    fn expected_body(self, id: usize) -> Rc<[u8]> {
        match self {
            HttpRoute::Plaintext => Rc::from(http_routes::HELLO),
            HttpRoute::Big => Rc::from(&http_routes::BIG_BODY[..]),
            HttpRoute::Echo => (0..ECHO_BODY_LEN)
                .map(|i| (i * 7 + id * 13) as u8)
                .collect(),
        }
    }

    /// The generator's receive-buffer pool for this route; `None`: the runtime's default (512
    /// buffers of 2 KiB), as the echo cells use.
    ///
    /// A 64 KiB body would take 32 default buffers, twice a connection's budget of 16 (see
    /// `ringloop::net::PooledReceiver`), so its receive stops and is re-armed within every
    /// response: that nearly doubled the generator's CPU per response (29 µs against 16 µs
    /// with 16 KiB buffers, at 100 connections), and the generator, not the server, set the
    /// pace. 1 024 buffers of 16 KiB (16 MiB) did best among the sizes tried (2 to 64 KiB,
    /// 256 to 4 096 buffers).
    fn client_pool(self) -> Option<(u16, usize)> {
        match self {
            HttpRoute::Big => Some((1024, 16 * 1024)),
            HttpRoute::Plaintext | HttpRoute::Echo => None,
        }
    }

    /// One request, as sent on the wire (`body`: the echo route's).
    fn request(self, host: SocketAddr, body: &[u8]) -> Vec<u8> {
        match self {
            HttpRoute::Plaintext | HttpRoute::Big => {
                let path = if self == HttpRoute::Plaintext {
                    http_routes::HELLO_PATH
                } else {
                    http_routes::BIG_PATH
                };
                format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n\r\n").into_bytes()
            }
            HttpRoute::Echo => {
                let mut req = format!(
                    "POST {} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\n\r\n",
                    http_routes::ECHO_PATH,
                    body.len()
                )
                .into_bytes();
                req.extend_from_slice(body);
                req
            }
        }
    }
}

/// One HTTP cell: a route at a connection count.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct HttpCell {
    pub route: HttpRoute,
    pub connections: usize,
}

/// The HTTP part of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct HttpPlan {
    pub cells: Vec<HttpCell>,
    /// Requests per batch on a connection (1: one at a time).
    pub pipeline: usize,
}

impl HttpPlan {
    /// The HTTP cells `args` ask for; `None` with `--no-http` or when every list is empty.
    pub fn from_args(a: &Args) -> Option<HttpPlan> {
        if a.no_http {
            return None;
        }
        let (plaintext, big, echo): (&[usize], &[usize], &[usize]) = if a.smoke {
            (&[200], &[20], &[20])
        } else if a.quick {
            (&[100, 1000], &[100], &[])
        } else {
            (&[100, 1000, 10_000], &[100], &[])
        };
        let mut cells = Vec::new();
        for (route, asked, default) in [
            (HttpRoute::Plaintext, &a.http_connections, plaintext),
            (HttpRoute::Big, &a.http_64k_connections, big),
            (HttpRoute::Echo, &a.http_echo_connections, echo),
        ] {
            for &connections in asked.as_deref().unwrap_or(default) {
                if connections > 0 {
                    cells.push(HttpCell { route, connections });
                }
            }
        }
        (!cells.is_empty()).then_some(HttpPlan {
            cells,
            pipeline: a.http_pipeline as usize,
        })
    }

    pub fn max_connections(&self) -> usize {
        self.cells.iter().map(|c| c.connections).max().unwrap_or(0)
    }
}

/// A built-in server whose binary is not there.
pub struct Unavailable {
    name: String,
    why: String,
}

/// The HTTP servers to compare, and the built-ins that cannot run.
pub struct HttpServers {
    specs: Vec<ServerSpec>,
    missing: Vec<Unavailable>,
}

/// The HTTP servers: the built-ins of `--http-backends`, then each `--http-server NAME=CMD`
/// (one named like a built-in takes its place). A built-in whose binary is missing is listed
/// apart. Called before anything runs, so a mistyped flag stops the job at once.
pub fn http_servers(a: &Args) -> Result<HttpServers, Box<dyn std::error::Error>> {
    let dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .ok_or("cannot find the directory of this executable")?;
    let mut specs: Vec<ServerSpec> = Vec::new();
    let mut missing = Vec::new();
    for b in a.http_backends.iter().filter(|b| !b.is_empty()) {
        let (binary, mut argv): (&str, Vec<String>) = match b.as_str() {
            "uring" | "epoll" => (
                "http_server",
                vec!["--backend".into(), b.clone(), "--addr".into(), "{addr}".into()],
            ),
            "tokio" => ("tokio_http_server", vec!["--addr".into(), "{addr}".into()]),
            other => {
                return Err(format!(
                    "unknown HTTP backend {other:?} (built-ins: {}; use --http-server NAME=CMD for others)",
                    BUILT_INS.join(", ")
                )
                .into())
            }
        };
        argv.push("--announce".into());
        let path = dir.join(binary);
        if !path.exists() {
            missing.push(Unavailable {
                name: b.clone(),
                why: format!(
                    "{} is missing; build it with `cargo build --release --examples`",
                    path.display()
                ),
            });
            continue;
        }
        argv.insert(0, path.to_string_lossy().into_owned());
        specs.push(ServerSpec::new(b.clone(), argv, 1));
    }
    for s in &a.http_servers {
        let (name, cmd) = s
            .split_once('=')
            .filter(|(name, _)| !name.is_empty())
            .ok_or_else(|| format!("--http-server {s:?}: expected NAME=CMD"))?;
        let argv = shlex::split(cmd).ok_or_else(|| {
            format!("--http-server {s:?}: CMD has an unbalanced quote or ends in a backslash")
        })?;
        if argv.is_empty() || !argv.iter().any(|a| a.contains("{addr}")) {
            return Err(format!("--http-server {s:?}: CMD must contain {{addr}}").into());
        }
        specs.retain(|spec| spec.name != name);
        missing.retain(|m| m.name != name);
        specs.push(ServerSpec::new(name.to_string(), argv, 1));
    }
    Ok(HttpServers { specs, missing })
}

/// One HTTP measurement: one server, one cell, one repetition.
#[derive(Debug, Clone, Serialize)]
pub struct HttpSample {
    backend: String,
    route: HttpRoute,
    connections: usize,
    rep: usize,
    /// Whether the server ran on CPU 0 and the client on CPU 1.
    pinned: bool,
    /// Requests per connection per batch.
    pipeline: usize,
    connected: usize,
    /// Responses verified whose request was sent inside the measured window.
    requests: u64,
    seconds: f64,
    requests_per_s: f64,
    /// Response body bytes per second.
    body_bytes_per_s: f64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    connect_errors: u64,
    /// I/O errors and wrong responses.
    errors: u64,
    /// What went wrong first.
    first_error: Option<String>,
    /// Server CPU time (user + system, all threads) per request over the measured window, µs.
    server_cpu_us_per_req: Option<f64>,
    /// Server CPU use over the measured window, in % of one CPU.
    server_cpu_pct: Option<f64>,
    /// The user-space share of that CPU time (utime over utime + stime, in clock ticks): what
    /// separates runtimes, where the kernel's TCP work is the same for all.
    server_user_share: Option<f64>,
    /// The load generator's CPU use over the measured window, in % of one CPU (its thread's
    /// `getrusage`): near 100, the generator, not the server, set the pace.
    client_cpu_pct: Option<f64>,
    server_peak_rss_kib: Option<u64>,
    /// Kernel entries per verified response over the server's whole run, for a server that
    /// prints ringloop's `final stats` line.
    server_kernel_enters_per_req: Option<f64>,
    /// See the echo cells' `Sample`.
    kernel_packet_drops: Option<u64>,
    tcp_rto_timeouts: Option<u64>,
}

/// Per cell and server, over the repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct HttpSummary {
    backend: String,
    route: HttpRoute,
    connections: usize,
    reps: usize,
    requests_per_s: Stat,
    p50_us: Stat,
    p99_us: Stat,
    p999_us: Stat,
    server_cpu_us_per_req: Option<Stat>,
    server_cpu_pct: Option<Stat>,
    client_cpu_pct: Option<Stat>,
    server_peak_rss_kib: Option<Stat>,
    server_kernel_enters_per_req: Option<Stat>,
    connect_errors: u64,
    errors: u64,
    first_error: Option<String>,
}

/// What the HTTP part found (in the JSON as `http`).
#[derive(Debug, Serialize)]
pub struct HttpReport {
    plan: HttpPlan,
    samples: Vec<HttpSample>,
    summary: Vec<HttpSummary>,
    /// `NAME: why` for each server that failed to start or run.
    failed_backends: Vec<String>,
    /// `NAME: why` for each built-in server left out because its binary is missing.
    skipped_backends: Vec<String>,
}

impl HttpReport {
    /// Whether every response of every cell was right and every server ran.
    pub fn passed(&self) -> bool {
        self.failed_backends.is_empty()
            && self
                .samples
                .iter()
                .all(|s| s.connect_errors + s.errors == 0)
    }

    pub fn errors(&self) -> u64 {
        self.samples
            .iter()
            .map(|s| s.connect_errors + s.errors)
            .sum()
    }

    pub fn failed_backends(&self) -> &[String] {
        &self.failed_backends
    }
}

/// Runs the HTTP cells: every repetition walks the cells, and inside a cell rotates the order
/// of the servers (as the echo cells do). Prints the table and writes the chart to `svg`. A
/// built-in server whose binary is missing fails the run, or with `skip_missing` is left out
/// with a note.
pub fn run_http(
    servers: HttpServers,
    skip_missing: bool,
    plan: &Plan,
    http: &HttpPlan,
    pin: bool,
    client_cpus: &ClientCpus,
    svg: &Path,
) -> Result<HttpReport, Box<dyn std::error::Error>> {
    let HttpServers { specs, missing } = servers;
    let mut failed_backends = Vec::new();
    let mut skipped_backends = Vec::new();
    for m in missing {
        if skip_missing {
            println!("note: HTTP backend {} skipped: {}", m.name, m.why);
            skipped_backends.push(format!("{}: {}", m.name, m.why));
        } else {
            println!("HTTP backend {} FAILED: {}", m.name, m.why);
            failed_backends.push(format!("{}: {}", m.name, m.why));
        }
    }
    let per_run = plan.warmup + plan.seconds + 1.0;
    let total_runs = plan.reps * http.cells.len() * specs.len();
    println!(
        "http: {} server(s) × {} cell(s) × {} rep(s), {:.1} s warm-up + {:.1} s each (about \
         {:.0} s); {} request(s) per batch on each connection, keep-alive",
        specs.len(),
        http.cells.len(),
        plan.reps,
        plan.warmup,
        plan.seconds,
        per_run * total_runs as f64,
        http.pipeline,
    );
    let pb = ProgressBar::new(total_runs as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut samples = Vec::new();
    for rep in 0..plan.reps {
        for (ci, &cell) in http.cells.iter().enumerate() {
            let n = specs.len();
            for k in 0..n {
                let spec = &specs[(k + rep + ci) % n];
                let what = format!(
                    "http {} {} × {} conns",
                    spec.name,
                    cell.route.name(),
                    cell.connections
                );
                pb.set_message(format!("rep {} · {what}", rep + 1));
                client_cpus.place(pin);
                match measure_http(spec, cell, rep, plan, http.pipeline, pin) {
                    Ok(s) => {
                        if s.connect_errors + s.errors > 0 {
                            say(
                                &pb,
                                format!(
                                    "{what}: {} connect error(s), {} error(s); first: {}",
                                    s.connect_errors,
                                    s.errors,
                                    s.first_error.as_deref().unwrap_or("-")
                                ),
                            );
                        }
                        samples.push(s);
                    }
                    Err(e) => {
                        say(&pb, format!("{what}: {e}"));
                        // Listed once, with its first failure.
                        let entry = format!("{}: ", spec.name);
                        if !failed_backends.iter().any(|f| f.starts_with(&entry)) {
                            failed_backends.push(format!("{entry}{e}"));
                        }
                    }
                }
                pb.inc(1);
            }
        }
    }
    pb.finish_and_clear();
    let summary = summarize_http(&samples, &specs, &http.cells);
    print_http_table(&summary, &specs, http.pipeline);
    for f in &failed_backends {
        println!("HTTP backend FAILED: {f}");
    }
    if !summary.is_empty() {
        if let Some(dir) = svg.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match draw_http_chart(svg, &summary, &specs, http.pipeline) {
            Ok(()) => println!("chart:   {}", svg.display()),
            Err(e) => eprintln!("HTTP chart not written: {e}"),
        }
    }
    Ok(HttpReport {
        plan: http.clone(),
        samples,
        summary,
        failed_backends,
        skipped_backends,
    })
}

/// Starts the server, runs one cell's load against it, stops it.
fn measure_http(
    spec: &ServerSpec,
    cell: HttpCell,
    rep: usize,
    plan: &Plan,
    pipeline: usize,
    pin: bool,
) -> Result<HttpSample, String> {
    let (mut server, addr) = Server::start(spec, pin)?;
    let cfg = LoadConfig {
        addr,
        connections: cell.connections,
        size: 0,
        warmup: Duration::from_secs_f64(plan.warmup),
        duration: Duration::from_secs_f64(plan.seconds),
        ramp: plan.ramp,
        pipeline,
        client_pool: cell.route.client_pool(),
    };
    let mut cpu_start = None;
    let mut cpu_end = None;
    let mut client_start = None;
    let mut client_end = None;
    let mut net_start = None;
    let mut net_end = None;
    let route = cell.route;
    // The fixed bodies are shared by every connection; the echo route's is per connection.
    let shared_body = (route != HttpRoute::Echo).then(|| route.expected_body(0));
    let out = drive_load(
        &cfg,
        |phase| match phase {
            Phase::Measuring => {
                cpu_start = server.cpu_ticks_split();
                client_start = thread_cpu();
                net_start = Some(NetCounters::read());
            }
            Phase::Stopped => {
                cpu_end = server.cpu_ticks_split();
                client_end = thread_cpu();
                net_end = Some(NetCounters::read());
            }
            Phase::Warmup => {}
        },
        |id, st, ramp| {
            let body = shared_body
                .clone()
                .unwrap_or_else(|| route.expected_body(id));
            let request = route.request(addr, &body).repeat(pipeline);
            http_connection(addr, request, body, pipeline, st, ramp)
        },
    )
    .map_err(|e| format!("load generator: {e}"))?;
    let rss = server.peak_rss_kib();
    if !server.alive() {
        return Err(format!(
            "the server exited during the run; stderr:\n{}",
            server.stop().trim_end()
        ));
    }
    let stats = ServerStats::parse(&server.stop());
    let h = &out.hist;
    let (cpu_us, user_share) = match (cpu_start, cpu_end) {
        (Some((ua, sa)), Some((ub, sb))) => {
            let (user, system) = (ub.saturating_sub(ua), sb.saturating_sub(sa));
            let total = user + system;
            (
                Some(total as f64 / clock_ticks_per_s() * 1e6),
                (total > 0).then(|| user as f64 / total as f64),
            )
        }
        _ => (None, None),
    };
    let body_len = route.expected_body(0).len();
    Ok(HttpSample {
        backend: spec.name.clone(),
        route,
        connections: cell.connections,
        rep,
        pinned: pin,
        pipeline,
        connected: out.connected,
        requests: out.messages,
        seconds: out.seconds,
        requests_per_s: out.messages as f64 / out.seconds,
        body_bytes_per_s: (out.messages * body_len as u64) as f64 / out.seconds,
        p50_us: h.value_at_quantile(0.5),
        p90_us: h.value_at_quantile(0.9),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
        connect_errors: out.connect_errors,
        errors: out.io_errors,
        first_error: out.first_error,
        server_cpu_us_per_req: cpu_us
            .filter(|_| out.messages > 0)
            .map(|us| us / out.messages as f64),
        server_cpu_pct: cpu_us.map(|us| us / (out.seconds * 1e6) * 100.0),
        server_user_share: user_share,
        client_cpu_pct: client_start
            .zip(client_end)
            .map(|(a, b)| (b - a).as_secs_f64() / out.seconds * 100.0),
        server_peak_rss_kib: rss,
        server_kernel_enters_per_req: stats
            .kernel_enters
            .filter(|_| out.messages_total > 0)
            .map(|k| k as f64 / out.messages_total as f64),
        kernel_packet_drops: NetCounters::delta(&net_start, &net_end, |n| n.packet_drops),
        tcp_rto_timeouts: NetCounters::delta(&net_start, &net_end, |n| n.rto_timeouts),
    })
}

/// The CPU time (user + system) this thread has used: the load runs on it alone.
fn thread_cpu() -> Option<Duration> {
    use nix::sys::resource::{getrusage, UsageWho};
    let usage = getrusage(UsageWho::RUSAGE_THREAD).ok()?;
    let time = |t: nix::sys::time::TimeVal| {
        Duration::new(t.tv_sec().max(0) as u64, t.tv_usec().max(0) as u32 * 1000)
    };
    Some(time(usage.user_time()) + time(usage.system_time()))
}

/// One client connection: connects under the ramp, then, until the stop, writes `batch`
/// (`pipeline` requests back to back) and reads and verifies their `pipeline` responses, each
/// against `body`. The responses are parsed where the pooled receiver put them; nothing is
/// copied but a response head split across two reads.
async fn http_connection(
    addr: SocketAddr,
    batch: Vec<u8>,
    body: Rc<[u8]>,
    pipeline: usize,
    st: Rc<LoadState>,
    ramp: Rc<Semaphore>,
) {
    let Some(stream) = connect_under_ramp(addr, &st, &ramp).await else {
        return;
    };
    let mut rx = stream.pooled_receiver();
    let mut parser = ResponseParser::new(body);
    let mut out = batch;
    while st.phase.get() != Phase::Stopped {
        let sent_while_measuring = st.phase.get() == Phase::Measuring;
        let t0 = Instant::now();
        let (w, o) = stream.write_all(out).await;
        out = o;
        if let Err(e) = w {
            if is_io_error(&e.error) {
                st.fail(|| format!("sending a request: {}", e.error));
            }
            return;
        }
        let mut done = 0;
        while done < pipeline {
            let chunk = match rx.recv().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => {
                    st.fail(|| {
                        format!(
                            "the server closed the connection with {} response(s) due",
                            pipeline - done
                        )
                    });
                    return;
                }
                Err(e) => {
                    if is_io_error(&e) {
                        st.fail(|| format!("receiving a response: {e}"));
                    }
                    return;
                }
            };
            match parser.feed(&chunk) {
                Ok(n) => {
                    for _ in 0..n {
                        st.record(t0, sent_while_measuring);
                    }
                    done += n;
                }
                Err(why) => {
                    st.fail(|| why);
                    return;
                }
            }
        }
        if done > pipeline || !parser.is_between_responses() {
            st.fail(|| "the server sent more responses than it was asked for".to_string());
            return;
        }
    }
}

/// How a response's body is delimited.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
}

/// Where the parser is in the response stream.
#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Before or inside a response head (status line and headers).
    Head,
    /// Inside a `content-length` body, with this many bytes to come.
    Body { remaining: usize },
    /// Inside a chunk-size line.
    ChunkSize,
    /// Inside a chunk's data, with this many bytes to come.
    ChunkData { remaining: usize },
    /// In the CRLF after a chunk's data, `seen` of its two bytes read.
    ChunkEnd { seen: usize },
    /// In the trailer section after the last chunk: lines until an empty one.
    Trailers,
}

/// The longest response head (or chunk-size or trailer line) the parser accepts.
const MAX_HEAD: usize = 16 * 1024;

/// A minimal HTTP/1.1 response parser and checker, fed the bytes of one connection in order.
///
/// Every response must be `HTTP/1.1 200`, must not ask to close the connection, must delimit
/// its body with `content-length` or `transfer-encoding: chunked`, and its body must be exactly
/// `expected`; anything else is an error, described for the report. Bodies are compared where
/// they lie; only a head, chunk-size line or trailer split across two reads is copied (into
/// `line`).
struct ResponseParser {
    expected: Rc<[u8]>,
    state: State,
    /// The part of a head or line seen so far, when it did not arrive whole.
    line: Vec<u8>,
    /// Body bytes of the current response verified so far.
    body_seen: usize,
}

impl ResponseParser {
    fn new(expected: Rc<[u8]>) -> ResponseParser {
        ResponseParser {
            expected,
            state: State::Head,
            line: Vec::new(),
            body_seen: 0,
        }
    }

    /// Whether the last byte fed ended a response.
    fn is_between_responses(&self) -> bool {
        self.state == State::Head && self.line.is_empty()
    }

    /// Parses and checks `data`, the next bytes of the stream; returns how many responses it
    /// completed.
    fn feed(&mut self, mut data: &[u8]) -> Result<usize, String> {
        let mut done = 0;
        while !data.is_empty() {
            match self.state {
                State::Head => {
                    let Some(framing) = self.take_until(&mut data, b"\r\n\r\n", parse_head)? else {
                        break;
                    };
                    match framing {
                        Framing::Length(n) if n != self.expected.len() => {
                            return Err(format!(
                                "content-length {n}, expected a body of {} bytes",
                                self.expected.len()
                            ))
                        }
                        Framing::Length(0) => done += self.complete()?,
                        Framing::Length(n) => self.state = State::Body { remaining: n },
                        Framing::Chunked => self.state = State::ChunkSize,
                    }
                }
                State::Body { remaining } => {
                    let n = self.check_body(&mut data, remaining)?;
                    if n == remaining {
                        done += self.complete()?;
                    } else {
                        self.state = State::Body {
                            remaining: remaining - n,
                        };
                    }
                }
                State::ChunkSize => {
                    let Some(size) = self.take_until(&mut data, b"\n", parse_chunk_size)? else {
                        break;
                    };
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData { remaining: size }
                    };
                }
                State::ChunkData { remaining } => {
                    let n = self.check_body(&mut data, remaining)?;
                    self.state = if n == remaining {
                        State::ChunkEnd { seen: 0 }
                    } else {
                        State::ChunkData {
                            remaining: remaining - n,
                        }
                    };
                }
                State::ChunkEnd { seen } => {
                    if data[0] != b"\r\n"[seen] {
                        return Err("a chunk's data is not followed by CRLF".to_string());
                    }
                    data = &data[1..];
                    self.state = if seen == 1 {
                        State::ChunkSize
                    } else {
                        State::ChunkEnd { seen: 1 }
                    };
                }
                State::Trailers => {
                    let Some(empty) =
                        self.take_until(&mut data, b"\n", |line| Ok(line == b"\r\n"))?
                    else {
                        break;
                    };
                    if empty {
                        done += self.complete()?;
                    }
                }
            }
        }
        Ok(done)
    }

    /// Takes bytes from `data` up to and including the first `end`, and hands them to `parse`
    /// (joined with what earlier reads left in `line`); `None` when `data` ends first, its
    /// bytes kept in `line` for the next read.
    fn take_until<T>(
        &mut self,
        data: &mut &[u8],
        end: &[u8],
        parse: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> Result<Option<T>, String> {
        if self.line.is_empty() {
            // The usual case: the whole head or line is in this read.
            if let Some(at) = find(data, end) {
                let (taken, rest) = data.split_at(at + end.len());
                *data = rest;
                return parse(taken).map(Some);
            }
        }
        // The end may straddle the two reads: look from just before the join.
        let from = self.line.len().saturating_sub(end.len() - 1);
        let old = self.line.len();
        self.line.extend_from_slice(data);
        match find(&self.line[from..], end) {
            Some(at) => {
                let stop = from + at + end.len();
                *data = &data[stop - old..];
                let parsed = parse(&self.line[..stop]);
                self.line.clear();
                parsed.map(Some)
            }
            None if self.line.len() > MAX_HEAD => Err(format!(
                "a response head or chunk line longer than {MAX_HEAD} bytes"
            )),
            None => {
                *data = &[];
                Ok(None)
            }
        }
    }

    /// Compares up to `remaining` body bytes at the start of `data` with the expected body,
    /// consumes them, and says how many.
    fn check_body(&mut self, data: &mut &[u8], remaining: usize) -> Result<usize, String> {
        let n = remaining.min(data.len());
        let at = self.body_seen;
        let Some(expected) = self.expected.get(at..at + n) else {
            return Err(format!(
                "a body longer than the {} bytes expected",
                self.expected.len()
            ));
        };
        if data[..n] != *expected {
            let off = (0..n).find(|&i| data[i] != expected[i]).unwrap_or(0);
            return Err(format!(
                "body byte {} is {:?}, expected {:?}",
                at + off,
                data[off] as char,
                expected[off] as char
            ));
        }
        self.body_seen += n;
        *data = &data[n..];
        Ok(n)
    }

    /// Ends a response whose body is all in: checks its length, returns 1.
    fn complete(&mut self) -> Result<usize, String> {
        if self.body_seen != self.expected.len() {
            return Err(format!(
                "a body of {} bytes, expected {}",
                self.body_seen,
                self.expected.len()
            ));
        }
        self.body_seen = 0;
        self.state = State::Head;
        Ok(1)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Checks a response head (status line and headers, through the empty line) and says how its
/// body is delimited.
fn parse_head(head: &[u8]) -> Result<Framing, String> {
    let text = std::str::from_utf8(head).map_err(|_| "a response head that is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let mut words = status.splitn(3, ' ');
    match (words.next(), words.next()) {
        (Some("HTTP/1.1"), Some("200")) => {}
        _ => {
            return Err(format!(
                "status line {status:?}, expected \"HTTP/1.1 200 ...\""
            ))
        }
    }
    let mut length = None;
    let mut chunked = false;
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("a header line without a colon: {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| format!("content-length {value:?}"))?;
            if length.is_some_and(|l| l != n) {
                return Err("two different content-length headers".to_string());
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked |= value
                .split(',')
                .any(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
        } else if name.eq_ignore_ascii_case("connection")
            && value
                .split(',')
                .any(|option| option.trim().eq_ignore_ascii_case("close"))
        {
            return Err("the server asked to close the connection (connection: close)".to_string());
        }
    }
    match (chunked, length) {
        (true, _) => Ok(Framing::Chunked),
        (false, Some(n)) => Ok(Framing::Length(n)),
        (false, None) => Err(
            "a response with neither content-length nor chunked encoding (a body to the end of \
             the connection, which keep-alive cannot use)"
                .to_string(),
        ),
    }
}

/// The size of a chunk-size line (`1a2b;ext=1\r\n`).
fn parse_chunk_size(line: &[u8]) -> Result<usize, String> {
    let text = std::str::from_utf8(line).map_err(|_| "a chunk-size line that is not UTF-8")?;
    let hex = text
        .trim_end_matches(['\r', '\n'])
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    usize::from_str_radix(hex, 16).map_err(|_| format!("chunk-size line {text:?}"))
}

fn summarize_http(
    samples: &[HttpSample],
    specs: &[ServerSpec],
    cells: &[HttpCell],
) -> Vec<HttpSummary> {
    let mut out = Vec::new();
    for cell in cells {
        for spec in specs {
            let v: Vec<&HttpSample> = samples
                .iter()
                .filter(|s| {
                    s.backend == spec.name
                        && s.route == cell.route
                        && s.connections == cell.connections
                })
                .collect();
            let stat = |f: fn(&HttpSample) -> Option<f64>| {
                Stat::of(v.iter().filter_map(|s| f(s)).collect())
            };
            let Some(requests_per_s) = stat(|s| Some(s.requests_per_s)) else {
                continue;
            };
            out.push(HttpSummary {
                backend: spec.name.clone(),
                route: cell.route,
                connections: cell.connections,
                reps: v.len(),
                requests_per_s,
                p50_us: stat(|s| Some(s.p50_us as f64)).expect("non-empty"),
                p99_us: stat(|s| Some(s.p99_us as f64)).expect("non-empty"),
                p999_us: stat(|s| Some(s.p999_us as f64)).expect("non-empty"),
                server_cpu_us_per_req: stat(|s| s.server_cpu_us_per_req),
                server_cpu_pct: stat(|s| s.server_cpu_pct),
                client_cpu_pct: stat(|s| s.client_cpu_pct),
                server_peak_rss_kib: stat(|s| s.server_peak_rss_kib.map(|k| k as f64)),
                server_kernel_enters_per_req: stat(|s| s.server_kernel_enters_per_req),
                connect_errors: v.iter().map(|s| s.connect_errors).sum(),
                errors: v.iter().map(|s| s.errors).sum(),
                first_error: v.iter().find_map(|s| s.first_error.clone()),
            });
        }
    }
    out
}

fn print_http_table(summary: &[HttpSummary], specs: &[ServerSpec], pipeline: usize) {
    let bw = specs.iter().map(|s| s.name.len()).fold(8, usize::max);
    println!();
    println!(
        "HTTP/1.1, keep-alive, {pipeline} request(s) per batch; every response checked (status, \
         framing, every body byte)"
    );
    println!(
        "{:<9} {:>6}  {:<bw$} {:>26} {:>7}  {:>11} {:>7} {:>8} {:>8}  {:>8} {:>8} {:>9} {:>8}  {:>7}",
        "route",
        "conns",
        "backend",
        "req/s median [min–max]",
        "×tokio",
        "CPU µs/req",
        "×tokio",
        "srv CPU",
        "cli CPU",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "RSS MiB",
        "errors"
    );
    let mut by_cell: BTreeMap<(HttpRoute, usize), Vec<&HttpSummary>> = BTreeMap::new();
    for s in summary {
        by_cell.entry((s.route, s.connections)).or_default().push(s);
    }
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    };
    for ((route, conns), rows) in &by_cell {
        let tokio = rows.iter().find(|r| r.backend == BASELINE);
        for r in rows {
            let cpu = r.server_cpu_us_per_req.map(|s| s.median);
            println!(
                "{:<9} {:>6}  {:<bw$} {:>26} {:>7}  {:>11} {:>7} {:>8} {:>8}  {:>8.0} {:>8.0} {:>9.0} {:>8}  {:>7}",
                route.name(),
                conns,
                r.backend,
                format!(
                    "{} [{}–{}]",
                    fmt_rate(r.requests_per_s.median),
                    fmt_rate(r.requests_per_s.min),
                    fmt_rate(r.requests_per_s.max)
                ),
                ratio(
                    Some(r.requests_per_s.median),
                    tokio.map(|t| t.requests_per_s.median)
                ),
                cpu.map_or("-".into(), |x| format!("{x:.2}")),
                ratio(
                    cpu,
                    tokio.and_then(|t| t.server_cpu_us_per_req.map(|s| s.median))
                ),
                r.server_cpu_pct
                    .map_or("-".into(), |p| format!("{:.0}%", p.median)),
                r.client_cpu_pct
                    .map_or("-".into(), |p| format!("{:.0}%", p.median)),
                r.p50_us.median,
                r.p99_us.median,
                r.p999_us.median,
                r.server_peak_rss_kib
                    .map_or("-".into(), |k| format!("{:.1}", k.median / 1024.0)),
                r.connect_errors + r.errors,
            );
        }
    }
    println!();
    println!(
        "srv CPU / cli CPU: the server's and the load generator's CPU use in the window, in % of \
         one CPU; the one near 100 % set the pace (neither: something else had the CPUs)"
    );
    for r in summary {
        if let Some(first) = &r.first_error {
            println!(
                "note: http {} {} × {}: {} connect error(s), {} error(s); the first: {first}",
                r.backend,
                r.route.name(),
                r.connections,
                r.connect_errors,
                r.errors
            );
        }
    }
}

/// Two panels, as the echo chart: requests/s and p99 against the connection count, one line
/// per server and route.
fn draw_http_chart(
    path: &Path,
    summary: &[HttpSummary],
    specs: &[ServerSpec],
    pipeline: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut routes: Vec<HttpRoute> = summary.iter().map(|s| s.route).collect();
    routes.sort_unstable();
    routes.dedup();
    let mut lines = Vec::new();
    for (color, spec) in specs.iter().enumerate() {
        for (marker, &route) in routes.iter().enumerate() {
            let points: Vec<super::ChartPoint> = summary
                .iter()
                .filter(|s| s.backend == spec.name && s.route == route)
                .map(|s| super::ChartPoint {
                    connections: s.connections as f64,
                    rate: s.requests_per_s.median,
                    p99_us: s.p99_us.median,
                })
                .collect();
            if !points.is_empty() {
                lines.push(super::ChartLine {
                    label: format!("{} {}", spec.name, route.name()),
                    color,
                    marker,
                    points,
                });
            }
        }
    }
    let depth = if pipeline > 1 {
        format!(", {pipeline} per batch")
    } else {
        String::new()
    };
    super::draw_lines(
        path,
        &lines,
        &format!("HTTP requests/s (median){depth}"),
        &format!("HTTP p99, µs (median, log scale){depth}"),
        // Above the lines: the 64 KiB cells' requests/s sit low, under the plaintext ones.
        plotters::chart::SeriesLabelPosition::UpperRight,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> ResponseParser {
        ResponseParser::new(Rc::from(&b"Hello, World!"[..]))
    }

    const HELLO_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\ndate: Sun, 06 Dec 2026 23:07:38 GMT\r\n\r\nHello, World!";

    const CHUNKED_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nHello\r\n8\r\n, World!\r\n0\r\nx-trailer: 1\r\n\r\n";

    /// Feeds `stream` split at every pair of points, and checks each way gives `responses`.
    fn every_split(stream: &[u8], responses: usize) {
        for a in 0..=stream.len() {
            for b in a..=stream.len() {
                let mut p = hello();
                let n = p.feed(&stream[..a]).unwrap()
                    + p.feed(&stream[a..b]).unwrap()
                    + p.feed(&stream[b..]).unwrap();
                assert_eq!(n, responses, "split at {a} and {b}");
                assert!(p.is_between_responses());
            }
        }
    }

    #[test]
    fn content_length_response_split_anywhere() {
        every_split(HELLO_RESPONSE, 1);
    }

    #[test]
    fn chunked_response_with_extension_and_trailer_split_anywhere() {
        every_split(CHUNKED_RESPONSE, 1);
    }

    #[test]
    fn pipelined_responses_in_one_read() {
        let mut stream = HELLO_RESPONSE.repeat(3);
        stream.extend_from_slice(CHUNKED_RESPONSE);
        assert_eq!(hello().feed(&stream), Ok(4));
        every_split(&stream, 4);
    }

    #[test]
    fn half_a_response_is_not_counted() {
        let mut p = hello();
        assert_eq!(p.feed(&HELLO_RESPONSE[..HELLO_RESPONSE.len() - 1]), Ok(0));
        assert!(!p.is_between_responses());
        assert_eq!(p.feed(b"!"), Ok(1));
    }

    #[test]
    fn wrong_body_byte_is_an_error() {
        let wrong = String::from_utf8_lossy(HELLO_RESPONSE).replace("World", "Wurld");
        let err = hello().feed(wrong.as_bytes()).unwrap_err();
        assert!(err.contains("body byte 8"), "{err}");
    }

    #[test]
    fn wrong_length_is_an_error() {
        let short = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nHello";
        assert!(hello()
            .feed(short)
            .unwrap_err()
            .contains("content-length 5"));
        let chunked_short =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nHello\r\n0\r\n\r\n";
        assert!(hello()
            .feed(chunked_short)
            .unwrap_err()
            .contains("a body of 5 bytes"));
        let chunked_long = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n20\r\nHello, World!Hello, World!Hello!\r\n0\r\n\r\n";
        assert!(hello().feed(chunked_long).unwrap_err().contains("longer"));
    }

    #[test]
    fn status_other_than_200_is_an_error() {
        let err = hello()
            .feed(b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\nNot Found")
            .unwrap_err();
        assert!(err.contains("404"), "{err}");
        assert!(hello()
            .feed(b"HTTP/1.0 200 OK\r\ncontent-length: 13\r\n\r\nHello, World!")
            .is_err());
    }

    #[test]
    fn connection_close_and_unframed_bodies_are_errors() {
        let close =
            b"HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 13\r\n\r\nHello, World!";
        assert!(hello().feed(close).unwrap_err().contains("close"));
        let unframed = b"HTTP/1.1 200 OK\r\n\r\nHello, World!";
        assert!(hello().feed(unframed).unwrap_err().contains("neither"));
    }

    #[test]
    fn bad_chunk_framing_is_an_error() {
        let no_crlf =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nd\r\nHello, World!XX0\r\n\r\n";
        assert!(hello().feed(no_crlf).unwrap_err().contains("CRLF"));
        let bad_size = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n";
        assert!(hello().feed(bad_size).unwrap_err().contains("chunk-size"));
    }

    #[test]
    fn endless_head_is_an_error() {
        let mut p = hello();
        let junk = vec![b'x'; 4096];
        let mut result = Ok(0);
        for _ in 0..5 {
            result = p.feed(&junk);
        }
        assert!(result.unwrap_err().contains("longer than"));
    }

    #[test]
    fn big_body_checked_in_pieces() {
        let body = HttpRoute::Big.expected_body(0);
        assert_eq!(body.len(), 65_536);
        assert_eq!(&body[..3], b"abc");
        assert_eq!(body[26], b'a');
        let mut stream =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
        stream.extend_from_slice(&body);
        let mut p = ResponseParser::new(body.clone());
        let mut n = 0;
        for piece in stream.chunks(1000) {
            n += p.feed(piece).unwrap();
        }
        assert_eq!(n, 1);
        // One byte off in the middle: caught, with its offset.
        let last = stream.len() - 1;
        stream[last - 30_000] ^= 1;
        let err = ResponseParser::new(body).feed(&stream).unwrap_err();
        assert!(
            err.contains(&format!("body byte {}", 65_535 - 30_000)),
            "{err}"
        );
    }

    #[test]
    fn requests_are_well_formed() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(
            HttpRoute::Plaintext.request(addr, b""),
            b"GET / HTTP/1.1\r\nhost: 127.0.0.1:8080\r\n\r\n"
        );
        let body = HttpRoute::Echo.expected_body(3);
        let req = HttpRoute::Echo.request(addr, &body);
        assert!(req.starts_with(b"POST /echo HTTP/1.1\r\n"));
        assert!(req.ends_with(&body));
        let text = String::from_utf8_lossy(&req[..req.len() - body.len()]).into_owned();
        assert!(text.contains(&format!("content-length: {ECHO_BODY_LEN}\r\n\r\n")));
        assert_ne!(body, HttpRoute::Echo.expected_body(4));
    }
}
