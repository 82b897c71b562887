//! The C10k comparison: ringloop's echo server on io_uring and on epoll against a tokio
//! `current_thread` echo server, under the same load, on the same machine, in one command;
//! then the same for HTTP (hyper on ringloop against hyper on tokio, see [`http`]).
//!
//! ```text
//! cargo build --release --examples
//! ./target/release/examples/c10k            # the full matrix (a few minutes)
//! ./target/release/examples/c10k --quick    # about a minute
//! ./target/release/examples/c10k --smoke    # CI: fails on any wrong byte or error
//! ```
//!
//! Each server runs as a child process (found next to this executable), pinned to CPU 0 with
//! `taskset`; the load generator runs in this process on its own ringloop runtime, pinned to
//! CPU 1 when there are two.
//!
//! `--threads LIST` adds server threads as a dimension (default `1`). At N > 1 the ringloop
//! servers run `echo_server --threads N --no-pin` (N shards, each on its own `SO_REUSEPORT`
//! listener), tokio runs as two backends, `tokio-mt` (its multi-thread runtime with N workers on
//! one listener) and `tokio-rp` (N current-thread runtimes on `SO_REUSEPORT` listeners), and
//! `protocol` is skipped (it serves on one thread). Nothing is pinned then: the server's
//! threads and the client share every CPU, and the ratios compare against `tokio-mt`. The
//! server's CPU time is the whole process's (`/proc/PID/stat` sums every thread), and a sharded
//! server's `shard I accepted=N` lines at exit give the connections per shard, reported so an
//! uneven spread shows.
//!
//! For every cell of the matrix (connections × message size) and
//! every backend, the generator opens N connections with a bounded ramp, lets them ping-pong
//! S-byte messages through a warm-up, then measures for D seconds: messages/s, round-trip
//! latency percentiles (hdrhistogram), the server's CPU time per message (utime + stime from
//! `/proc/PID/stat`, over the measured window only) and its peak RSS (`VmHWM`). Every echoed
//! byte is checked; a wrong byte counts as an I/O error.
//!
//! With `--pipeline P` each connection keeps P messages in flight instead of one (see
//! [`pipelined`]); each message's round trip is still timed from its own send.
//!
//! After the matrix comes the shutdown check, for the ringloop servers (io_uring and epoll, at
//! every thread count): 1 000 connections under load (200 with `--smoke`), then SIGTERM to the
//! server. The clients stop sending at the signal, end their side once the server has stopped
//! accepting, and read until the server's end of stream; the check passes if every byte each
//! client sent before the signal came back, every connection ended with a FIN (no reset), and
//! the server exited 0 within its grace (`--shutdown-grace`, passed to `echo_server --grace`).
//! It prints one line per server, and a failure makes the run exit non-zero, in every mode (see
//! [`shutdown_check`]).
//!
//! A ringloop server prints its counters to stderr when it is stopped (a `final stats
//! key=value ...` line); c10k reads `kernel_enters`, `buffer_exhaustions` and `cq_overflows`
//! from it into the JSON. Each
//! sample starts its own server, so those counters cover that one server run (ramp, warm-up,
//! measured window and drain), not the measured window alone.
//!
//! Then come the HTTP cells (unless `--no-http`; `--http-only` runs nothing else): plaintext
//! `GET /` at 100 / 1 000 / 10 000 keep-alive connections and `GET /64k` at 100, against
//! `http_server --backend uring|epoll` and `tokio_http_server`, each pinned and measured the
//! way the echo cells are, with every response checked by the project's own HTTP/1.1 load
//! generator. Any wrong response, or an HTTP server that does not start, fails the run in
//! every mode. See [`http`].
//!
//! Why interleaved: machine drift (thermal, other tenants, page cache) during a long run would
//! otherwise favour whichever backend ran first, so each repetition walks the cells and, inside
//! a cell, rotates the order of the backends.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use ringloop::net::{OwnedReadHalf, OwnedWriteHalf, TcpStream};
use ringloop::sync::mpsc as chan;
use ringloop::sync::{OwnedSemaphorePermit, Semaphore};
use ringloop::{gather_settled, is_cancelled, sleep, spawn, Runtime, TaskGroup};
use serde::Serialize;

#[path = "common/http_routes.rs"]
mod http_routes;

#[path = "c10k/http.rs"]
mod http;

#[derive(Parser, Debug)]
#[command(about = "C10k echo and HTTP comparison: ringloop io_uring / ringloop epoll / tokio")]
struct Args {
    /// Connection counts, comma-separated [default: 100,1000,10000].
    #[arg(long, value_delimiter = ',')]
    connections: Option<Vec<usize>>,
    /// Message sizes in bytes, comma-separated [default: 64,1024].
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<usize>>,
    /// Measured seconds per cell [default: 5].
    #[arg(long)]
    seconds: Option<f64>,
    /// Warm-up seconds per cell, after all connections are open [default: 1].
    #[arg(long)]
    warmup: Option<f64>,
    /// Repetitions of the whole matrix [default: 3].
    #[arg(long)]
    reps: Option<usize>,
    /// Built-in backends to compare, comma-separated (uring, epoll, tokio, protocol: the
    /// io_uring echo server as a protocol, without a task per connection).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "uring,epoll,tokio,protocol"
    )]
    backends: Vec<String>,
    /// Server threads, comma-separated [default: 1; 1,2 with --smoke]. At N > 1: the ringloop
    /// servers with N unpinned shards, tokio as `tokio-mt` (multi-thread, N workers) and
    /// `tokio-rp` (N current-thread runtimes on SO_REUSEPORT listeners), no `protocol`, and
    /// neither server nor client pinned.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<Vec<u16>>,
    /// Messages in flight per connection: 1 is a ping-pong; P > 1 sends P back to back, then
    /// sends one more for each echo that comes back.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pipeline: u32,
    /// Another echo server to compare, as NAME=CMD; `{addr}` in CMD is replaced by the address
    /// to listen on, and the server must print a line containing "listening on" to stdout.
    /// CMD is split into words as a POSIX shell would (quotes and backslashes work; variables
    /// and globs are not expanded). It runs at every `--threads` count if CMD contains
    /// `{threads}` (replaced by the count), else at 1 thread only.
    #[arg(long = "server", value_name = "NAME=CMD")]
    servers: Vec<String>,
    /// Connects in flight at once while opening connections (the ramp).
    #[arg(long, default_value_t = 256)]
    ramp: usize,
    /// About a minute: 100,1000 connections × 64 B, 2 s, 1 rep; HTTP plaintext at 100,1000
    /// and 64 KiB at 100 connections.
    #[arg(long, conflicts_with = "smoke")]
    quick: bool,
    /// CI smoke: 200 connections × 64 B, 2 s, 1 rep, and io_uring with 2 shards besides; HTTP
    /// plaintext at 200, 64 KiB and echo at 20 connections; exits non-zero on any error.
    #[arg(long)]
    smoke: bool,
    /// Write every sample and the summary as JSON here.
    #[arg(long, default_value = "target/c10k/results.json")]
    json: PathBuf,
    /// Write the chart (messages/s and p99 by connection count per backend) here.
    #[arg(long, default_value = "target/c10k/chart.svg")]
    svg: PathBuf,
    /// Don't pin the server to CPU 0 and the client to CPU 1 (at 1 server thread; at more,
    /// nothing is pinned anyway).
    #[arg(long)]
    no_pin: bool,
    /// Connections of the shutdown check (SIGTERM under load) [default: 1000; 200 with
    /// --smoke].
    #[arg(long)]
    shutdown_connections: Option<usize>,
    /// The grace the servers get in the shutdown check, in seconds (`echo_server --grace`).
    #[arg(long, default_value_t = 5.0)]
    shutdown_grace: f64,
    /// Skip the shutdown check.
    #[arg(long)]
    no_shutdown_check: bool,
    /// Run the HTTP cells after the echo cells (the default; undoes an earlier --no-http).
    #[arg(long, overrides_with = "no_http")]
    http: bool,
    /// Skip the HTTP cells.
    #[arg(long, overrides_with = "http")]
    no_http: bool,
    /// Run only the HTTP cells: no echo cells, no shutdown check.
    #[arg(long, conflicts_with = "no_http")]
    http_only: bool,
    /// Built-in HTTP servers, comma-separated: uring and epoll (ringloop's `http_server`),
    /// tokio (`tokio_http_server`, hyper on tokio's current-thread runtime).
    #[arg(long, value_delimiter = ',', default_value = "uring,epoll,tokio")]
    http_backends: Vec<String>,
    /// Another HTTP server, as NAME=CMD, as with --server (`{addr}` is the address; it must
    /// print a line containing "listening on"); a NAME of a built-in (uring, epoll, tokio)
    /// replaces that built-in.
    #[arg(long = "http-server", value_name = "NAME=CMD")]
    http_servers: Vec<String>,
    /// Connection counts of the plaintext cells (`GET /`, `Hello, World!`), comma-separated,
    /// 0 for none [default: 100,1000,10000; 100,1000 with --quick; 200 with --smoke].
    #[arg(long, value_delimiter = ',')]
    http_connections: Option<Vec<usize>>,
    /// Connection counts of the 64 KiB cells (`GET /64k`), 0 for none [default: 100; 20 with
    /// --smoke].
    #[arg(long = "http-64k-connections", value_delimiter = ',')]
    http_64k_connections: Option<Vec<usize>>,
    /// Connection counts of the echo cells (`POST /echo`, a 1 KiB body streamed back), 0 for
    /// none [default: none; 20 with --smoke].
    #[arg(long, value_delimiter = ',')]
    http_echo_connections: Option<Vec<usize>>,
    /// HTTP requests per batch on a connection: 1 is one at a time; P > 1 writes P requests in
    /// one write, then reads their P responses.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    http_pipeline: u32,
    /// Write the HTTP chart (requests/s and p99 by connection count) here.
    #[arg(long, default_value = "target/c10k/http-chart.svg")]
    http_svg: PathBuf,
}

/// The matrix after presets (`--quick`, `--smoke`) and explicit flags are merged.
#[derive(Debug, Clone, Serialize)]
struct Plan {
    connections: Vec<usize>,
    sizes: Vec<usize>,
    seconds: f64,
    warmup: f64,
    reps: usize,
    ramp: usize,
    /// Server thread counts (1: the single-threaded servers, pinned unless `--no-pin`).
    threads: Vec<usize>,
    /// Messages in flight per connection (1: ping-pong).
    pipeline: usize,
    /// Connections of the shutdown check; `None` when it is skipped.
    shutdown_connections: Option<usize>,
    /// The servers' grace in the shutdown check, in seconds.
    shutdown_grace: f64,
    /// Whether the echo cells run (not with `--http-only`).
    echo: bool,
    /// The HTTP cells; `None` with `--no-http`.
    http: Option<http::HttpPlan>,
}

impl Plan {
    fn from_args(a: &Args) -> Plan {
        let (conns, sizes, secs, warm, reps) = if a.smoke {
            (vec![200], vec![64], 2.0, 0.5, 1)
        } else if a.quick {
            (vec![100, 1000], vec![64], 2.0, 1.0, 1)
        } else {
            (vec![100, 1000, 10_000], vec![64, 1024], 5.0, 1.0, 3)
        };
        Plan {
            connections: a.connections.clone().unwrap_or(conns),
            sizes: a.sizes.clone().unwrap_or(sizes),
            seconds: a.seconds.unwrap_or(secs),
            warmup: a.warmup.unwrap_or(warm),
            reps: a.reps.unwrap_or(reps).max(1),
            ramp: a.ramp.max(1),
            threads: {
                let default: &[u16] = if a.smoke { &[1, 2] } else { &[1] };
                let mut threads: Vec<usize> = Vec::new();
                for &t in a.threads.as_deref().unwrap_or(default) {
                    if !threads.contains(&usize::from(t)) {
                        threads.push(usize::from(t));
                    }
                }
                threads
            },
            pipeline: a.pipeline as usize,
            shutdown_connections: (!a.no_shutdown_check && !a.http_only).then(|| {
                a.shutdown_connections
                    .unwrap_or(if a.smoke { 200 } else { 1000 })
            }),
            shutdown_grace: a.shutdown_grace.max(0.0),
            echo: !a.http_only,
            http: http::HttpPlan::from_args(a),
        }
    }
}

/// One echo server to compare: a name and its command line, `{addr}` standing for the address.
#[derive(Debug, Clone, Serialize)]
struct ServerSpec {
    name: String,
    argv: Vec<String>,
    /// The server is ringloop's `echo_server` or `echo_protocol`, which print a `stats ...` line on SIGUSR1:
    /// its counters are then read at the start and the end of the measured window.
    window_stats: bool,
    /// A built-in ringloop server (uring, epoll): it takes `--grace` and gets the shutdown
    /// check.
    graceful: bool,
    /// The server's threads: 1 runs pinned (unless `--no-pin`), more run unpinned.
    threads: usize,
}

impl ServerSpec {
    fn new(name: String, argv: Vec<String>, threads: usize) -> ServerSpec {
        let window_stats = argv.iter().any(|a| {
            Path::new(a)
                .file_name()
                .is_some_and(|f| f == "echo_server" || f == "echo_protocol")
        });
        ServerSpec {
            name,
            argv,
            window_stats,
            graceful: false,
            threads,
        }
    }

    /// The name, with the thread count when it is above 1 (for the chart and messages).
    fn label(&self) -> String {
        if self.threads > 1 {
            format!("{} ×{}", self.name, self.threads)
        } else {
            self.name.clone()
        }
    }

    /// Whether this server and the client are pinned (server on CPU 0, client on CPU 1).
    fn pinned(&self, pin: bool) -> bool {
        pin && self.threads == 1
    }
}

/// The ratios' baseline at `threads` server threads: tokio's current-thread server alone, its
/// multi-thread runtime with as many workers beside the sharded servers.
fn baseline(threads: usize) -> &'static str {
    if threads > 1 {
        "tokio-mt"
    } else {
        "tokio"
    }
}

/// One measurement: one backend, one cell, one repetition.
#[derive(Debug, Clone, Serialize)]
struct Sample {
    backend: String,
    /// The server's threads.
    threads: usize,
    /// Whether the server ran on CPU 0 and the client on CPU 1 (else neither was pinned).
    pinned: bool,
    connections: usize,
    size: usize,
    rep: usize,
    connected: usize,
    messages: u64,
    seconds: f64,
    msgs_per_s: f64,
    bytes_per_s: f64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    connect_errors: u64,
    io_errors: u64,
    /// Server CPU time (user + system) per message over the measured window, in µs.
    server_cpu_us_per_msg: Option<f64>,
    /// Server CPU use over the measured window, in % of one CPU.
    server_cpu_pct: Option<f64>,
    /// The server's peak resident set (VmHWM), in KiB.
    server_peak_rss_kib: Option<u64>,
    /// Every verified echo of the server run, not only the window's: the ramp, the warm-up,
    /// the measured window and the drain. The server counters below cover the same span.
    messages_total: u64,
    /// The server's `kernel_enters` (`io_uring_enter` or `epoll_wait` calls) over its whole
    /// run; `None` for a server that prints no `RuntimeStats` (tokio, say).
    server_kernel_enters: Option<u64>,
    /// `server_kernel_enters / messages_total`: kernel entries per echoed message, per server
    /// run (not for the measured window alone).
    server_kernel_enters_per_msg: Option<f64>,
    /// Kernel entries per echoed message over the measured window only (from the server's
    /// counters at the window's start and end; ringloop's `echo_server` only).
    window_kernel_enters_per_msg: Option<f64>,
    /// The driver's system calls (entries included) per echoed message over the window.
    window_driver_syscalls_per_msg: Option<f64>,
    /// The server's `buffer_exhaustions` over its run: multishot receives that found the
    /// buffer pool empty.
    server_buffer_exhaustions: Option<u64>,
    /// The server's `cq_overflows` over its run.
    server_cq_overflows: Option<u64>,
    /// Packets the kernel dropped because a CPU's input backlog was full
    /// (`/proc/net/softnet_stat`, all CPUs) during the measured window. On loopback every
    /// drop is a TCP segment that must be retransmitted.
    kernel_packet_drops: Option<u64>,
    /// TCP retransmission timeouts (`TcpExt: TCPTimeouts` in `/proc/net/netstat`) during the
    /// measured window: each stalls one connection for at least 200 ms, which is what a
    /// p99 of hundreds of milliseconds on loopback usually is.
    tcp_rto_timeouts: Option<u64>,
    /// Delayed ACKs (`TcpExt: DelayedACKs`, machine-wide, both ends of every connection) per
    /// echoed message over the measured window: pure ACKs sent because a peer did not answer
    /// within the delayed-ACK timeout (40 ms or more). On loopback a packet is received on
    /// the sender's CPU, so a client socket's delayed-ACK timer fires on the server's CPU and
    /// is charged to whatever runs there: when the client falls behind, every server's CPU
    /// per message rises with it.
    tcp_delayed_acks_per_msg: Option<f64>,
    /// Connections each shard accepted, in shard order, from the `shard I accepted=N` lines a
    /// sharded server prints at exit; `None` for a server that prints none.
    shard_accepted: Option<Vec<u64>>,
}

/// Median and range of one metric over the repetitions.
#[derive(Debug, Clone, Copy, Serialize)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

impl Stat {
    fn of(mut v: Vec<f64>) -> Option<Stat> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// Per cell and backend, over the repetitions.
#[derive(Debug, Clone, Serialize)]
struct Summary {
    backend: String,
    threads: usize,
    connections: usize,
    size: usize,
    reps: usize,
    msgs_per_s: Stat,
    p99_us: Stat,
    server_cpu_us_per_msg: Option<Stat>,
    /// Server CPU use in % of one CPU: near 100 means the server is the bottleneck.
    server_cpu_pct: Option<Stat>,
    server_peak_rss_kib: Option<Stat>,
    /// Kernel entries per echoed message, per server run (see [`Sample`]).
    server_kernel_enters_per_msg: Option<Stat>,
    /// Kernel entries per echoed message over the measured windows (see [`Sample`]).
    window_kernel_enters_per_msg: Option<Stat>,
    window_driver_syscalls_per_msg: Option<Stat>,
    /// Summed over the repetitions; `None` when the server printed no stats.
    server_buffer_exhaustions: Option<u64>,
    /// Summed over the repetitions; `None` when the server printed no stats.
    server_cq_overflows: Option<u64>,
    /// Summed over the repetitions (see [`Sample`]).
    kernel_packet_drops: Option<u64>,
    /// Summed over the repetitions (see [`Sample`]).
    tcp_rto_timeouts: Option<u64>,
    /// Per echoed message, over the measured windows (see [`Sample`]).
    tcp_delayed_acks_per_msg: Option<Stat>,
    /// Connections accepted per shard, one list per repetition (see [`Sample`]); empty for a
    /// server that prints no shard lines.
    shard_accepted: Vec<Vec<u64>>,
    connect_errors: u64,
    io_errors: u64,
}

#[derive(Serialize)]
struct Report<'a> {
    plan: &'a Plan,
    cpus: usize,
    samples: &'a [Sample],
    summary: &'a [Summary],
    failed_backends: &'a [String],
    shutdown_checks: &'a [ShutdownCheck],
    /// The HTTP cells (`None` with `--no-http`).
    http: Option<&'a http::HttpReport>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("c10k: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the whole comparison; `Ok(false)` when `--smoke` saw an error.
fn run(args: &Args) -> Result<bool, Box<dyn std::error::Error>> {
    let plan = Plan::from_args(args);
    let servers = if plan.echo {
        server_specs(args, &plan.threads)?
    } else {
        Vec::new()
    };
    let http_servers = match &plan.http {
        Some(_) => Some(http::http_servers(args)?),
        None => None,
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = !args.no_pin && cpus >= 2;
    if pin && which("taskset").is_none() {
        eprintln!("note: `taskset` not found; the servers run unpinned");
    }
    let client_cpus = ClientCpus::new();
    let max_conns = plan
        .connections
        .iter()
        .copied()
        .filter(|_| plan.echo)
        .chain(plan.shutdown_connections)
        .chain(plan.http.as_ref().map(http::HttpPlan::max_connections))
        .max()
        .unwrap_or(0);
    check_limits(max_conns);

    let cells: Vec<(usize, usize)> = plan
        .connections
        .iter()
        .filter(|_| plan.echo)
        .flat_map(|&c| plan.sizes.iter().map(move |&s| (c, s)))
        .collect();
    let per_run = plan.warmup + plan.seconds + 1.0;
    let total_runs = plan.reps * cells.len() * servers.len();
    if plan.echo {
        println!(
            "c10k: {} backend(s) × {} cell(s) × {} rep(s), {:.1} s warm-up + {:.1} s each \
         (about {:.0} s); {} message(s) in flight per connection; \
         server on CPU 0, client on CPU 1: {}",
            servers.len(),
            cells.len(),
            plan.reps,
            plan.warmup,
            plan.seconds,
            per_run * total_runs as f64,
            plan.pipeline,
            match (
                pin && plan.threads.contains(&1),
                plan.threads.iter().any(|&t| t > 1),
            ) {
                (false, _) => "no",
                (true, false) => "yes",
                (true, true) => "at 1 server thread",
            }
        );
    }
    if plan.echo && plan.threads.iter().any(|&t| t > 1) {
        println!(
            "server threads: {}; above 1 neither the server nor the client is pinned (they \
             share this machine's {cpus} CPU(s)), the server's CPU is the sum over its threads, \
             and ×tokio compares with tokio-mt (tokio's multi-thread runtime, as many workers)",
            plan.threads
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        );
    }

    let pb = ProgressBar::new(total_runs as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    let mut samples = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    for rep in 0..plan.reps {
        for (ci, &(conns, size)) in cells.iter().enumerate() {
            let b = servers.len();
            for k in 0..b {
                let spec = &servers[(k + rep + ci) % b];
                pb.set_message(format!(
                    "rep {} · {conns} conns × {size} B · {}",
                    rep + 1,
                    spec.label()
                ));
                client_cpus.place(spec.pinned(pin));
                match measure(spec, conns, size, rep, &plan, spec.pinned(pin)) {
                    Ok(s) => {
                        if s.connect_errors + s.io_errors > 0 {
                            say(
                                &pb,
                                format!(
                                    "{} {conns}×{size}B: {} connect error(s), {} I/O error(s)",
                                    spec.label(),
                                    s.connect_errors,
                                    s.io_errors
                                ),
                            );
                        }
                        samples.push(s);
                    }
                    Err(e) => {
                        say(&pb, format!("{}: {e}", spec.label()));
                        if !failed.contains(&spec.label()) {
                            failed.push(spec.label());
                        }
                    }
                }
                pb.inc(1);
            }
        }
    }
    pb.finish_and_clear();

    let summary = summarize(&samples, &servers, &cells);
    if plan.echo {
        print_table(&summary, &servers);
    }
    for f in &failed {
        println!("backend {f} FAILED to start or run (see above)");
    }

    let http_report = match (&plan.http, http_servers) {
        (Some(h), Some(http_servers)) => Some(http::run_http(
            http_servers,
            false,
            &plan,
            h,
            pin,
            &client_cpus,
            &args.http_svg,
        )?),
        _ => None,
    };

    let mut shutdown_checks = Vec::new();
    if let Some(conns) = plan.shutdown_connections {
        let size = plan.sizes.iter().copied().min().unwrap_or(64);
        for spec in servers.iter().filter(|s| s.graceful) {
            client_cpus.place(spec.pinned(pin));
            let check = shutdown_check(spec, conns, size, &plan, spec.pinned(pin));
            println!("{}", check.line());
            shutdown_checks.push(check);
        }
    }
    let shutdown_ok = shutdown_checks.iter().all(|c| c.passed);

    let report = Report {
        plan: &plan,
        cpus,
        samples: &samples,
        summary: &summary,
        failed_backends: &failed,
        shutdown_checks: &shutdown_checks,
        http: http_report.as_ref(),
    };
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)?;
    println!("results: {}", args.json.display());
    if plan.echo {
        if let Some(dir) = args.svg.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match draw_chart(&args.svg, &summary, &servers, plan.pipeline) {
            Ok(()) => println!("chart:   {}", args.svg.display()),
            Err(e) => eprintln!("chart not written: {e}"),
        }
    }

    let errors: u64 = samples.iter().map(|s| s.connect_errors + s.io_errors).sum();
    let ok = failed.is_empty() && errors == 0;
    if args.smoke && !ok {
        eprintln!("smoke FAILED: {errors} error(s), failed backends: {failed:?}");
        return Ok(false);
    }
    if !shutdown_ok {
        eprintln!("shutdown check FAILED (see the shutdown lines above)");
        return Ok(false);
    }
    // Every HTTP response is checked, and one that is wrong fails the run, in every mode.
    if let Some(h) = http_report.as_ref().filter(|h| !h.passed()) {
        eprintln!(
            "HTTP FAILED: {} error(s), failed backends: {:?}",
            h.errors(),
            h.failed_backends()
        );
        return Ok(false);
    }
    Ok(true)
}

/// Prints a line above the progress bar, or to stderr when the bar is hidden (not a terminal),
/// where `ProgressBar::println` would print nothing.
fn say(pb: &ProgressBar, line: String) {
    if pb.is_hidden() {
        eprintln!("{line}");
    } else {
        pb.println(line);
    }
}

/// The built-in servers asked for with `--backends` at every thread count of `threads`, then
/// every `--server NAME=CMD`. Says which backends a thread count skips.
fn server_specs(
    args: &Args,
    threads: &[usize],
) -> Result<Vec<ServerSpec>, Box<dyn std::error::Error>> {
    let dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .ok_or("cannot find the directory of this executable")?;
    let bin = |name: &str| -> Result<String, Box<dyn std::error::Error>> {
        let p = dir.join(name);
        if !p.exists() {
            return Err(format!(
                "{} is missing; build the servers first with\n    cargo build --release --examples",
                p.display()
            )
            .into());
        }
        Ok(p.to_string_lossy().into_owned())
    };
    let mut specs = Vec::new();
    for &t in threads {
        // --smoke adds one sharded cell, io_uring's, unless --threads asks for more.
        let smoke_extra = args.smoke && args.threads.is_none() && t > 1;
        for b in &args.backends {
            let n = t.to_string();
            let (name, argv): (&str, Vec<String>) = match b.as_str() {
                "uring" | "epoll" if t == 1 => (
                    b,
                    vec![
                        bin("echo_server")?,
                        "--backend".into(),
                        b.clone(),
                        "--addr".into(),
                        "{addr}".into(),
                    ],
                ),
                "uring" | "epoll" if smoke_extra && b != "uring" => continue,
                "uring" | "epoll" => (
                    b,
                    vec![
                        bin("echo_server")?,
                        "--backend".into(),
                        b.clone(),
                        "--addr".into(),
                        "{addr}".into(),
                        "--threads".into(),
                        n,
                        "--no-pin".into(),
                    ],
                ),
                "tokio" if t == 1 => (
                    "tokio",
                    vec![bin("tokio_echo_server")?, "--addr".into(), "{addr}".into()],
                ),
                "tokio" if smoke_extra => continue,
                "tokio" => {
                    for (name, flavor) in [("tokio-mt", "multi"), ("tokio-rp", "reuseport")] {
                        let argv = vec![
                            bin("tokio_echo_server")?,
                            "--addr".into(),
                            "{addr}".into(),
                            "--threads".into(),
                            n.clone(),
                            "--flavor".into(),
                            flavor.into(),
                        ];
                        specs.push(ServerSpec::new(name.into(), argv, t));
                    }
                    continue;
                }
                "protocol" if t == 1 => (
                    "protocol",
                    vec![
                        bin("echo_protocol")?,
                        "--backend".into(),
                        "uring".into(),
                        "--addr".into(),
                        "{addr}".into(),
                    ],
                ),
                "protocol" => {
                    if !smoke_extra {
                        println!(
                            "note: protocol serves on one thread: not run at {t} server threads"
                        );
                    }
                    continue;
                }
                "" => continue,
                other => {
                    return Err(format!(
                        "unknown backend {other:?} (built-ins: uring, epoll, tokio, protocol; use --server NAME=CMD for others)"
                    )
                    .into())
                }
            };
            let mut spec = ServerSpec::new(name.to_string(), argv, t);
            spec.graceful = name == "uring" || name == "epoll";
            specs.push(spec);
        }
    }
    for s in &args.servers {
        let (name, cmd) = s
            .split_once('=')
            .filter(|(name, _)| !name.is_empty())
            .ok_or_else(|| format!("--server {s:?}: expected NAME=CMD"))?;
        let argv = shlex::split(cmd).ok_or_else(|| {
            format!(
                "--server {s:?}: CMD has an unbalanced quote or ends in a backslash; \
                 quote its words as in a shell, e.g. --server 'NAME=my_server --addr {{addr}} --flag \"a b\"'"
            )
        })?;
        if argv.is_empty() || !argv.iter().any(|a| a.contains("{addr}")) {
            return Err(format!("--server {s:?}: CMD must contain {{addr}}").into());
        }
        if argv.iter().any(|a| a.contains("{threads}")) {
            for &t in threads {
                let argv = argv
                    .iter()
                    .map(|a| a.replace("{threads}", &t.to_string()))
                    .collect();
                specs.push(ServerSpec::new(name.to_string(), argv, t));
            }
        } else if threads.contains(&1) {
            specs.push(ServerSpec::new(name.to_string(), argv, 1));
        } else {
            println!(
                "note: {name}'s command has no {{threads}}, so it runs at 1 thread only, which \
                 --threads leaves out: not run"
            );
        }
    }
    if specs.is_empty() {
        return Err("no backends to compare".into());
    }
    Ok(specs)
}

/// Raises `RLIMIT_NOFILE` to the hard limit and says, before anything starts, whether the
/// descriptor limit and the ephemeral port range are enough for `conns` connections.
fn check_limits(conns: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((_soft, hard)) => {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
            let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(0, |(s, _)| s);
            // The client needs one descriptor per connection, and so does the server (which
            // raises its own limit to the same hard limit); leave room for the runtime's own.
            let need = conns as u64 + 64;
            if soft < need {
                eprintln!(
                    "WARNING: the descriptor limit is {soft}, too small for {conns} connections \
                     (need about {need}); raise the hard limit (`ulimit -Hn`, /etc/security/limits.conf) \
                     or ask for fewer connections. Expect connect errors."
                );
            }
        }
        Err(e) => eprintln!("WARNING: cannot read RLIMIT_NOFILE: {e}"),
    }
    if let Ok(range) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") {
        let v: Vec<u64> = range
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if let [lo, hi] = v[..] {
            let ports = hi.saturating_sub(lo) + 1;
            if (ports as usize) < conns {
                eprintln!(
                    "WARNING: the ephemeral port range {lo}-{hi} has {ports} ports, too few for \
                     {conns} connections to one address; widen it with \
                     `sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\"` or ask for fewer."
                );
            }
        }
    }
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(cmd))
            .find(|p| p.is_file())
    })
}

/// Where the client (the thread that runs the load) may run: CPU 1 beside a server pinned to
/// CPU 0, or every CPU it was started with beside an unpinned server.
struct ClientCpus {
    /// The affinity mask this thread started with.
    all: Option<nix::sched::CpuSet>,
}

impl ClientCpus {
    fn new() -> ClientCpus {
        ClientCpus {
            all: nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok(),
        }
    }

    /// Pins the client to CPU 1 (`pinned`), or lets it run on every CPU of [`Self::all`].
    /// Threads started after this (the server's pipe readers) inherit the mask.
    fn place(&self, pinned: bool) {
        use nix::sched::{sched_setaffinity, CpuSet};
        use nix::unistd::Pid;
        let set = if pinned {
            let mut one = CpuSet::new();
            if one.set(1).is_err() {
                return;
            }
            one
        } else {
            match self.all {
                Some(all) => all,
                None => return,
            }
        };
        if let Err(e) = sched_setaffinity(Pid::from_raw(0), &set) {
            eprintln!("note: could not set the client's CPUs (pinned to CPU 1: {pinned}): {e}");
        }
    }
}

/// A running server child; stopped (SIGTERM, then SIGKILL) by [`Server::stop`] or on drop.
struct Server {
    child: Child,
    /// The server's whole stderr, sent once the pipe closes (when the server exits).
    stderr: mpsc::Receiver<String>,
    /// Set once the child is reaped: from then on its pid may name another process, so it must
    /// not be signalled again.
    reaped: bool,
}

impl Server {
    /// Starts `spec` on a free loopback port and waits for its "listening on" line.
    fn start(spec: &ServerSpec, pin: bool) -> Result<(Server, SocketAddr), String> {
        let addr = free_port().map_err(|e| format!("no free port: {e}"))?;
        let mut argv: Vec<String> = spec
            .argv
            .iter()
            .map(|a| a.replace("{addr}", &addr.to_string()))
            .collect();
        if pin && which("taskset").is_some() {
            argv.splice(0..0, ["taskset".to_string(), "-c".into(), "0".into()]);
        }
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", argv.join(" ")))?;
        let (etx, erx) = mpsc::channel();
        let mut server = Server {
            child,
            stderr: erx,
            reaped: false,
        };
        let stdout = server.child.stdout.take().expect("piped stdout");
        let mut stderr = server.child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        // Both pipes are drained for the server's whole life, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
            }
        });
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            let _ = etx.send(s);
        });
        if rx.recv_timeout(Duration::from_secs(10)).is_err() {
            let _ = server.child.kill();
            let _ = server.child.wait();
            server.reaped = true;
            let err = server.stderr();
            return Err(format!(
                "`{}` did not print \"listening on\" within 10 s; stderr:\n{}",
                argv.join(" "),
                err.trim_end()
            ));
        }
        Ok((server, addr))
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// utime + stime in clock ticks, from /proc/PID/stat.
    fn cpu_ticks(&self) -> Option<u64> {
        self.cpu_ticks_split().map(|(user, system)| user + system)
    }

    /// utime and stime in clock ticks, from /proc/PID/stat.
    fn cpu_ticks_split(&self) -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        // The command name (field 2) may hold spaces; the fields after its ')' are fixed.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest starts at field 3 (state); utime is field 14, stime field 15.
        let utime: u64 = f.get(11)?.parse().ok()?;
        let stime: u64 = f.get(12)?.parse().ok()?;
        Some((utime, stime))
    }

    /// Peak resident set (VmHWM) in KiB.
    fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    fn alive(&mut self) -> bool {
        if self.reaped {
            return false;
        }
        let running = matches!(self.child.try_wait(), Ok(None));
        self.reaped = !running;
        running
    }

    /// Stops the server and returns what it wrote to stderr: a ringloop server prints its
    /// `RuntimeStats` there when stopped by SIGTERM.
    fn stop(mut self) -> String {
        self.terminate();
        self.stderr()
    }

    /// The server's stderr, once it has exited (empty if it does not close within a second,
    /// e.g. a grandchild still holds the pipe).
    fn stderr(&self) -> String {
        self.stderr
            .recv_timeout(Duration::from_secs(1))
            .unwrap_or_default()
    }

    /// Sends SIGTERM once, without waiting (the shutdown check).
    fn signal_terminate(&self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        if !self.reaped {
            let _ = kill(Pid::from_raw(self.pid()), Signal::SIGTERM);
        }
    }

    /// The exit status once the server has exited (reaping it), `None` while it runs.
    fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        if self.reaped {
            return None;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.reaped = true;
                Some(status)
            }
            _ => None,
        }
    }

    /// Asks a ringloop `echo_server` for a `stats ...` line (SIGUSR1).
    fn request_stats(&self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGUSR1);
    }

    /// SIGTERM, then SIGKILL after 3 s; reaps the child.
    fn terminate(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        if self.reaped {
            return;
        }
        self.reaped = true;
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// The `key=value` counters of every stderr line that starts with `prefix` (ringloop's
/// `echo_server` prints `stats ...` on SIGUSR1 and `final stats ...` at exit), in order.
fn stats_lines<'a>(stderr: &'a str, prefix: &str) -> Vec<BTreeMap<&'a str, u64>> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
                .collect()
        })
        .collect()
}

/// The counters of a ringloop server's whole run, from the `final stats` line it prints when
/// stopped; each is `None` when the server printed no such line (tokio, or a server killed
/// before it could print).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct ServerStats {
    kernel_enters: Option<u64>,
    buffer_exhaustions: Option<u64>,
    cq_overflows: Option<u64>,
}

impl ServerStats {
    fn parse(stderr: &str) -> ServerStats {
        let lines = stats_lines(stderr, "final stats ");
        let Some(last) = lines.last() else {
            return ServerStats::default();
        };
        ServerStats {
            kernel_enters: last.get("kernel_enters").copied(),
            buffer_exhaustions: last.get("buffer_exhaustions").copied(),
            cq_overflows: last.get("cq_overflows").copied(),
        }
    }
}

/// The difference between the first two `stats key=value ...` lines a ringloop
/// `echo_server` printed (on SIGUSR1 at the window's start and end).
#[derive(Debug, Default)]
struct WindowStats {
    kernel_enters: Option<u64>,
    driver_syscalls: Option<u64>,
}

impl WindowStats {
    fn parse(stderr: &str) -> WindowStats {
        let snapshots = stats_lines(stderr, "stats ");
        let [start, end, ..] = snapshots.as_slice() else {
            return WindowStats::default();
        };
        let delta = |key: &str| Some(end.get(key)?.saturating_sub(*start.get(key)?));
        WindowStats {
            kernel_enters: delta("kernel_enters"),
            driver_syscalls: delta("driver_syscalls"),
        }
    }
}

/// The connections each shard accepted, in shard order, from the `shard I accepted=N ...`
/// lines a sharded server prints at exit (`echo_server --threads N`, `tokio_echo_server
/// --flavor reuseport`); a shard without a line counts 0. `None` when there is no such line.
fn shard_accepted(stderr: &str) -> Option<Vec<u64>> {
    let mut shards = BTreeMap::new();
    for line in stderr.lines() {
        let Some(rest) = line.strip_prefix("shard ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let Some(index) = words.next().and_then(|w| w.parse::<usize>().ok()) else {
            continue;
        };
        if let Some(n) = words
            .find_map(|w| w.strip_prefix("accepted="))
            .and_then(|v| v.parse::<u64>().ok())
        {
            shards.insert(index, n);
        }
    }
    let count = shards.keys().next_back()? + 1;
    Some(
        (0..count)
            .map(|i| shards.get(&i).copied().unwrap_or(0))
            .collect(),
    )
}

/// A per-shard split as `501/499`.
fn fmt_split(split: &[u64]) -> String {
    split
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join("/")
}

fn free_port() -> std::io::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    l.local_addr()
}

fn clock_ticks_per_s() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

/// Starts the server, runs the load against it, stops it.
fn measure(
    spec: &ServerSpec,
    conns: usize,
    size: usize,
    rep: usize,
    plan: &Plan,
    pin: bool,
) -> Result<Sample, String> {
    let (mut server, addr) = Server::start(spec, pin)?;
    let load = LoadConfig {
        addr,
        connections: conns,
        size,
        warmup: Duration::from_secs_f64(plan.warmup),
        duration: Duration::from_secs_f64(plan.seconds),
        ramp: plan.ramp,
        pipeline: plan.pipeline,
        client_pool: None,
    };
    let mut cpu_start = None;
    let mut cpu_end = None;
    let mut net_start = None;
    let mut net_end = None;
    let out = run_load(&load, |phase| match phase {
        Phase::Measuring => {
            cpu_start = server.cpu_ticks();
            net_start = Some(NetCounters::read());
            if spec.window_stats {
                server.request_stats();
            }
        }
        Phase::Stopped => {
            cpu_end = server.cpu_ticks();
            net_end = Some(NetCounters::read());
            if spec.window_stats {
                server.request_stats();
            }
        }
        Phase::Warmup => {}
    })
    .map_err(|e| format!("load generator: {e}"))?;
    let rss = server.peak_rss_kib();
    if !server.alive() {
        return Err(format!(
            "the server exited during the run; stderr:\n{}",
            server.stop().trim_end()
        ));
    }
    let stderr = server.stop();
    let stats = ServerStats::parse(&stderr);
    let window = WindowStats::parse(&stderr);
    let per_window_msg = |f: fn(&WindowStats) -> Option<u64>| {
        f(&window)
            .filter(|_| out.messages > 0)
            .map(|n| n as f64 / out.messages as f64)
    };

    let h = &out.hist;
    let cpu_us = match (cpu_start, cpu_end) {
        (Some(a), Some(b)) => Some((b.saturating_sub(a)) as f64 / clock_ticks_per_s() * 1e6),
        _ => None,
    };
    Ok(Sample {
        backend: spec.name.clone(),
        threads: spec.threads,
        pinned: pin,
        connections: conns,
        size,
        rep,
        connected: out.connected,
        messages: out.messages,
        seconds: out.seconds,
        msgs_per_s: out.messages as f64 / out.seconds,
        bytes_per_s: (out.messages * size as u64) as f64 / out.seconds,
        p50_us: h.value_at_quantile(0.5),
        p90_us: h.value_at_quantile(0.9),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
        connect_errors: out.connect_errors,
        io_errors: out.io_errors,
        server_cpu_us_per_msg: cpu_us
            .filter(|_| out.messages > 0)
            .map(|us| us / out.messages as f64),
        server_cpu_pct: cpu_us.map(|us| us / (out.seconds * 1e6) * 100.0),
        server_peak_rss_kib: rss,
        messages_total: out.messages_total,
        server_kernel_enters: stats.kernel_enters,
        window_kernel_enters_per_msg: per_window_msg(|w| w.kernel_enters),
        window_driver_syscalls_per_msg: per_window_msg(|w| w.driver_syscalls),
        server_kernel_enters_per_msg: stats
            .kernel_enters
            .filter(|_| out.messages_total > 0)
            .map(|k| k as f64 / out.messages_total as f64),
        server_buffer_exhaustions: stats.buffer_exhaustions,
        server_cq_overflows: stats.cq_overflows,
        kernel_packet_drops: NetCounters::delta(&net_start, &net_end, |n| n.packet_drops),
        tcp_rto_timeouts: NetCounters::delta(&net_start, &net_end, |n| n.rto_timeouts),
        tcp_delayed_acks_per_msg: NetCounters::delta(&net_start, &net_end, |n| n.delayed_acks)
            .filter(|_| out.messages > 0)
            .map(|n| n as f64 / out.messages as f64),
        shard_accepted: shard_accepted(&stderr),
    })
}

/// Machine-wide kernel counters that explain loopback latency tails (they count every
/// process's traffic, so read them on an otherwise quiet machine).
#[derive(Debug, Clone, Copy)]
struct NetCounters {
    packet_drops: Option<u64>,
    rto_timeouts: Option<u64>,
    delayed_acks: Option<u64>,
}

impl NetCounters {
    fn read() -> NetCounters {
        NetCounters {
            packet_drops: Self::softnet_drops(),
            rto_timeouts: Self::tcp_ext("TCPTimeouts"),
            delayed_acks: Self::tcp_ext("DelayedACKs"),
        }
    }

    fn delta(
        start: &Option<NetCounters>,
        end: &Option<NetCounters>,
        field: impl Fn(&NetCounters) -> Option<u64>,
    ) -> Option<u64> {
        Some(field(end.as_ref()?)?.saturating_sub(field(start.as_ref()?)?))
    }

    /// Column 2 of `/proc/net/softnet_stat` (hex, one line per CPU): packets dropped because
    /// the CPU's backlog queue (`net.core.netdev_max_backlog`) was full.
    fn softnet_drops() -> Option<u64> {
        let text = std::fs::read_to_string("/proc/net/softnet_stat").ok()?;
        text.lines()
            .map(|line| {
                let col = line.split_whitespace().nth(1)?;
                u64::from_str_radix(col, 16).ok()
            })
            .sum()
    }

    /// A `TcpExt` counter from `/proc/net/netstat` (a header line of names, then one of values).
    fn tcp_ext(name: &str) -> Option<u64> {
        let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
        let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
        let (names, values) = (lines.next()?, lines.next()?);
        let i = names.split_whitespace().position(|n| n == name)?;
        values.split_whitespace().nth(i)?.parse().ok()
    }
}

struct LoadConfig {
    addr: SocketAddr,
    connections: usize,
    size: usize,
    warmup: Duration,
    duration: Duration,
    ramp: usize,
    /// Messages in flight per connection.
    pipeline: usize,
    /// The client runtime's receive-buffer pool, as (buffers, bytes each); `None`: the
    /// runtime's default.
    client_pool: Option<(u16, usize)>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Warmup,
    Measuring,
    Stopped,
}

struct LoadOutcome {
    hist: Histogram<u64>,
    messages: u64,
    messages_total: u64,
    seconds: f64,
    connected: usize,
    connect_errors: u64,
    io_errors: u64,
    /// The first error's description, when the load gave one.
    first_error: Option<String>,
}

/// Shared by the connection tasks of one run (all on one thread).
struct LoadState {
    phase: Cell<Phase>,
    hist: RefCell<Histogram<u64>>,
    /// Round trips that started and ended inside the measured window.
    messages: Cell<u64>,
    /// Every verified echo, in any phase.
    messages_total: Cell<u64>,
    connected: Cell<usize>,
    /// Connections that are open or have failed to open: the ramp is over when this is N.
    settled: Cell<usize>,
    finished: Cell<usize>,
    connect_errors: Cell<u64>,
    io_errors: Cell<u64>,
    /// What went wrong first, when a connection says (the HTTP load does).
    first_error: RefCell<Option<String>>,
}

/// The load generator: opens `connections` connections (at most `ramp` connects in flight),
/// waits until all are open, warms up, then measures round trips for `duration`.
/// `on_phase` is called at each phase change, from inside the loop (to sample the server's CPU
/// time exactly at the window's edges).
fn run_load(cfg: &LoadConfig, on_phase: impl FnMut(Phase)) -> std::io::Result<LoadOutcome> {
    let (addr, size, pipeline) = (cfg.addr, cfg.size, cfg.pipeline);
    drive_load(cfg, on_phase, move |id, state, ramp| async move {
        connection(id, addr, size, pipeline, &state, &ramp).await;
    })
}

/// The run every load shares, echo or HTTP: spawns `cfg.connections` tasks of `connection(id,
/// state, ramp)` (each takes a `ramp` permit to connect, counts itself in `state.settled`, and
/// records its exchanges with [`LoadState::record`] until the phase is
/// [`Phase::Stopped`]), waits for the ramp, warms up, measures for `cfg.duration`, then drains.
fn drive_load<F, Fut>(
    cfg: &LoadConfig,
    mut on_phase: impl FnMut(Phase),
    connection: F,
) -> std::io::Result<LoadOutcome>
where
    F: Fn(usize, Rc<LoadState>, Rc<Semaphore>) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let rt = match cfg.client_pool {
        Some((buffers, size)) => Runtime::builder().buffer_pool(buffers, size).build()?,
        None => Runtime::new()?,
    };
    let state = Rc::new(LoadState {
        phase: Cell::new(Phase::Warmup),
        hist: RefCell::new(
            Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
        ),
        messages: Cell::new(0),
        messages_total: Cell::new(0),
        connected: Cell::new(0),
        settled: Cell::new(0),
        finished: Cell::new(0),
        connect_errors: Cell::new(0),
        io_errors: Cell::new(0),
        first_error: RefCell::new(None),
    });
    let ramp = Rc::new(Semaphore::new(cfg.ramp));
    let seconds = rt.block_on(async {
        let mut tasks = Vec::with_capacity(cfg.connections);
        for id in 0..cfg.connections {
            let state = state.clone();
            let exchange = connection(id, state.clone(), ramp.clone());
            tasks.push(spawn(async move {
                exchange.await;
                state.finished.set(state.finished.get() + 1);
            }));
        }
        // The ramp: wait until every connection is open (or failed), with a generous bound.
        let ramp_deadline = Instant::now() + Duration::from_secs(60);
        while state.settled.get() < cfg.connections && Instant::now() < ramp_deadline {
            let _ = sleep(Duration::from_millis(5)).await;
        }
        let _ = sleep(cfg.warmup).await;
        on_phase(Phase::Measuring);
        state.phase.set(Phase::Measuring);
        state.messages.set(0);
        let start = Instant::now();
        let _ = sleep(cfg.duration).await;
        state.phase.set(Phase::Stopped);
        let seconds = start.elapsed().as_secs_f64();
        on_phase(Phase::Stopped);
        // Every connection finishes its round trips in flight; one stuck for 5 s is cancelled
        // and counted as an I/O error (here, once: its own cancelled I/O is not counted).
        let drain_deadline = Instant::now() + Duration::from_secs(5);
        while state.finished.get() < cfg.connections && Instant::now() < drain_deadline {
            let _ = sleep(Duration::from_millis(5)).await;
        }
        let stuck = cfg.connections - state.finished.get();
        if stuck > 0 {
            eprintln!("{stuck} connection(s) got no reply within 5 s after the run");
            state.io_errors.set(state.io_errors.get() + stuck as u64);
            state.first_error.borrow_mut().get_or_insert_with(|| {
                format!("{stuck} connection(s) got no reply within 5 s after the run")
            });
            for t in &tasks {
                t.cancel();
            }
        }
        let _ = gather_settled(tasks).await;
        seconds
    });
    let messages = state.messages.get();
    let hist = state
        .hist
        .replace(Histogram::new(3).expect("valid histogram"));
    Ok(LoadOutcome {
        hist,
        messages,
        messages_total: state.messages_total.get(),
        seconds,
        connected: state.connected.get(),
        connect_errors: state.connect_errors.get(),
        io_errors: state.io_errors.get(),
        first_error: state.first_error.take(),
    })
}

impl LoadState {
    /// Counts one verified echo. Only round trips that start and end inside the measured
    /// window enter its numbers: one that began during the warm-up (say, behind a connection
    /// still in the server's accept queue) would otherwise charge the warm-up's stall to the
    /// measurement.
    fn record(&self, sent_at: Instant, sent_while_measuring: bool) {
        self.messages_total.set(self.messages_total.get() + 1);
        if sent_while_measuring && self.phase.get() == Phase::Measuring {
            let us = (sent_at.elapsed().as_micros() as u64).clamp(1, 60_000_000);
            let _ = self.hist.borrow_mut().record(us);
            self.messages.set(self.messages.get() + 1);
        }
    }

    fn count_io_error(&self) {
        self.io_errors.set(self.io_errors.get() + 1);
    }

    /// Counts one I/O error and keeps the first one's description (`why` runs only for it).
    fn fail(&self, why: impl FnOnce() -> String) {
        self.count_io_error();
        let mut first = self.first_error.borrow_mut();
        if first.is_none() {
            *first = Some(why());
        }
    }
}

/// One client connection: connect under the ramp's permit, then exchange messages until
/// stopped, one at a time ([`ping_pong`]) or `pipeline` at a time ([`pipelined`]).
async fn connection(
    id: usize,
    addr: SocketAddr,
    size: usize,
    pipeline: usize,
    st: &Rc<LoadState>,
    ramp: &Semaphore,
) {
    let Some(stream) = connect_under_ramp(addr, st, ramp).await else {
        return;
    };
    if pipeline <= 1 {
        ping_pong(&stream, id, size, st).await;
    } else {
        pipelined(stream, id, size, pipeline, st).await;
    }
}

/// Connects to `addr` under a permit of the ramp, with `TCP_NODELAY`; counts the connection in
/// `st` (settled, and connected or a connect error). `None` if the connect failed.
async fn connect_under_ramp(
    addr: SocketAddr,
    st: &LoadState,
    ramp: &Semaphore,
) -> Option<TcpStream> {
    let stream = {
        let _permit = ramp.acquire().await;
        let r = TcpStream::connect(addr).await;
        st.settled.set(st.settled.get() + 1);
        match r {
            Ok(s) => s,
            Err(_) => {
                st.connect_errors.set(st.connect_errors.get() + 1);
                return None;
            }
        }
    };
    st.connected.set(st.connected.get() + 1);
    let _ = stream.set_nodelay(true);
    Some(stream)
}

/// The bytes of connection `id`'s messages: a per-connection pattern, over which [`stamp`]
/// writes each message's sequence number, so a reply that is stale, shifted, or from another
/// connection never compares equal.
fn pattern(id: usize, size: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 7 + id) as u8).collect()
}

/// Writes `seq` into the first 8 bytes of `msg` (fewer if the message is shorter).
fn stamp(msg: &mut [u8], seq: u64) {
    let seq = seq.to_le_bytes();
    let n = seq.len().min(msg.len());
    msg[..n].copy_from_slice(&seq[..n]);
}

/// Whether a failed send or receive counts as an I/O error: a cancelled one does not, as it
/// means the run cancelled this connection after 5 s without a reply, and counted it then.
fn is_io_error(e: &io::Error) -> bool {
    !is_cancelled(e)
}

/// The P = 1 loop: write one message, read its echo (exactly `size` bytes, however TCP splits
/// them), verify it, repeat. One task, no hand-off. The echo arrives through the connection's
/// pooled receiver (one multishot receive for the connection's life, not one receive op per
/// message) and is compared chunk by chunk where it lies: the generator spends as little CPU
/// per message as it can, so that on a two-core machine it saturates as late as possible and
/// the servers' differences show.
async fn ping_pong(stream: &TcpStream, id: usize, size: usize, st: &LoadState) {
    let mut out = pattern(id, size);
    let mut rx = stream.pooled_receiver();
    let mut seq: u64 = 0;
    while st.phase.get() != Phase::Stopped {
        seq += 1;
        stamp(&mut out, seq);
        let sent_while_measuring = st.phase.get() == Phase::Measuring;
        let t0 = Instant::now();
        let (w, o) = stream.write_all(out).await;
        out = o;
        if let Err(e) = w {
            if is_io_error(&e.error) {
                st.count_io_error();
            }
            return;
        }
        let mut got = 0;
        while got < size {
            let chunk = match rx.recv().await {
                Ok(Some(chunk)) => chunk,
                // The server closed before echoing everything.
                Ok(None) => {
                    st.count_io_error();
                    return;
                }
                Err(e) => {
                    if is_io_error(&e) {
                        st.count_io_error();
                    }
                    return;
                }
            };
            let end = got + chunk.len();
            // More than was sent, or bytes that differ: a stale, shifted or foreign reply.
            if end > size || chunk[..] != out[got..end] {
                st.count_io_error();
                return;
            }
            got = end;
        }
        st.record(t0, sent_while_measuring);
    }
}

/// A message written and not yet echoed back, as the writer hands it to the reader.
struct InFlight {
    seq: u64,
    sent_at: Instant,
    sent_while_measuring: bool,
    /// One of the connection's `pipeline` window permits: back to the writer when this
    /// message's echo has been read and verified.
    _permit: OwnedSemaphorePermit,
}

/// The P > 1 loop: a writer and a reader on the two halves of the socket, so reads and writes
/// run at the same time and no P × size is too big (a single loop that writes P messages
/// before its first read deadlocks once they overflow the socket buffers of both ends).
///
/// * The writer (this task) takes a permit of a P-permit window [`Semaphore`] per message,
///   stamps the message with its sequence number, hands an [`InFlight`] record to the reader
///   over a channel, and writes the message. So the first P go back to back, and each later
///   one waits for an echo to free a permit.
/// * The reader (a child task) takes the records in send order (TCP keeps the order, and an
///   echo server answers in order), reads exactly `size` bytes for each, compares every byte
///   with the message that record stands for, records its round trip from *its* send, and
///   drops the record, which returns the permit.
/// * At the stop the writer sends nothing more and drops its end of the channel; the reader
///   drains the echoes still in flight, then sees the channel closed and ends. The socket
///   stays whole until both are done (no half-close under the server's feet).
/// * Either side failing (a send or receive error, a wrong echo) cancels the other through the
///   [`TaskGroup`]; the connection then counts one I/O error.
async fn pipelined(stream: TcpStream, id: usize, size: usize, depth: usize, st: &Rc<LoadState>) {
    let (rd, wr) = stream.into_split();
    let (tx, rx) = chan::unbounded_channel();
    let window = Rc::new(Semaphore::new(depth));
    let reader_state = st.clone();
    let wr = &wr;
    let outcome = TaskGroup::<(), io::Error>::scope(|tg| async move {
        tg.spawn(read_echoes(rd, rx, id, size, reader_state));
        write_messages(wr, tx, window, id, size, st).await
    })
    .await;
    // A cancellation from outside (a connection stuck at the end) is counted by the run; a
    // cancellation the group made itself after one side failed is not listed as a failure.
    if outcome.is_err_and(|e| !e.failures.is_empty()) {
        st.count_io_error();
    }
}

/// The writer of [`pipelined`]: runs until the stop, `window` bounding the messages in flight.
async fn write_messages(
    wr: &OwnedWriteHalf,
    in_flight: chan::Sender<InFlight>,
    window: Rc<Semaphore>,
    id: usize,
    size: usize,
    st: &LoadState,
) -> io::Result<()> {
    let mut out = pattern(id, size);
    let mut seq: u64 = 0;
    loop {
        let permit = window.acquire_owned().await?;
        if st.phase.get() == Phase::Stopped {
            // Dropping `in_flight` lets the reader drain the echoes still due, then end.
            return Ok(());
        }
        seq += 1;
        stamp(&mut out, seq);
        let record = InFlight {
            seq,
            sent_at: Instant::now(),
            sent_while_measuring: st.phase.get() == Phase::Measuring,
            _permit: permit,
        };
        // The record goes first: the reader must know what to expect before the echo can come.
        if in_flight.try_send(record).is_err() {
            // The reader is gone, so it failed: the group is cancelling this writer.
            return Err(io::Error::other("the reader ended"));
        }
        let (w, o) = wr.write_all(out).await;
        out = o;
        w?;
    }
}

/// The reader of [`pipelined`]: verifies and times each echo, in send order.
async fn read_echoes(
    rd: OwnedReadHalf,
    mut in_flight: chan::Receiver<InFlight>,
    id: usize,
    size: usize,
    st: Rc<LoadState>,
) -> io::Result<()> {
    let mut expected = pattern(id, size);
    let mut back: Vec<u8> = Vec::with_capacity(size);
    loop {
        let sent = match in_flight.recv().await {
            Ok(sent) => sent,
            // The writer stopped and every echo it was owed has been read.
            Err(chan::RecvError::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        back.clear();
        let (r, b) = rd.read_exact(back).await;
        back = b;
        r?;
        stamp(&mut expected, sent.seq);
        if back != expected {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("echo of message {} differs from what was sent", sent.seq),
            ));
        }
        st.record(sent.sent_at, sent.sent_while_measuring);
        // `sent` drops here and returns its permit: the writer may send one more.
    }
}

fn summarize(samples: &[Sample], servers: &[ServerSpec], cells: &[(usize, usize)]) -> Vec<Summary> {
    let mut out = Vec::new();
    for &(c, s) in cells {
        for spec in servers {
            let v: Vec<&Sample> = samples
                .iter()
                .filter(|x| {
                    x.backend == spec.name
                        && x.threads == spec.threads
                        && x.connections == c
                        && x.size == s
                })
                .collect();
            let Some(msgs) = Stat::of(v.iter().map(|x| x.msgs_per_s).collect()) else {
                continue;
            };
            out.push(Summary {
                backend: spec.name.clone(),
                threads: spec.threads,
                connections: c,
                size: s,
                reps: v.len(),
                msgs_per_s: msgs,
                p99_us: Stat::of(v.iter().map(|x| x.p99_us as f64).collect()).expect("non-empty"),
                server_cpu_us_per_msg: Stat::of(
                    v.iter().filter_map(|x| x.server_cpu_us_per_msg).collect(),
                ),
                server_cpu_pct: Stat::of(v.iter().filter_map(|x| x.server_cpu_pct).collect()),
                server_peak_rss_kib: Stat::of(
                    v.iter()
                        .filter_map(|x| x.server_peak_rss_kib.map(|k| k as f64))
                        .collect(),
                ),
                window_kernel_enters_per_msg: Stat::of(
                    v.iter()
                        .filter_map(|x| x.window_kernel_enters_per_msg)
                        .collect(),
                ),
                window_driver_syscalls_per_msg: Stat::of(
                    v.iter()
                        .filter_map(|x| x.window_driver_syscalls_per_msg)
                        .collect(),
                ),
                server_kernel_enters_per_msg: Stat::of(
                    v.iter()
                        .filter_map(|x| x.server_kernel_enters_per_msg)
                        .collect(),
                ),
                server_buffer_exhaustions: v
                    .iter()
                    .filter_map(|x| x.server_buffer_exhaustions)
                    .reduce(|a, b| a + b),
                server_cq_overflows: v
                    .iter()
                    .filter_map(|x| x.server_cq_overflows)
                    .reduce(|a, b| a + b),
                kernel_packet_drops: v
                    .iter()
                    .filter_map(|x| x.kernel_packet_drops)
                    .reduce(|a, b| a + b),
                tcp_rto_timeouts: v
                    .iter()
                    .filter_map(|x| x.tcp_rto_timeouts)
                    .reduce(|a, b| a + b),
                tcp_delayed_acks_per_msg: Stat::of(
                    v.iter()
                        .filter_map(|x| x.tcp_delayed_acks_per_msg)
                        .collect(),
                ),
                shard_accepted: v.iter().filter_map(|x| x.shard_accepted.clone()).collect(),
                connect_errors: v.iter().map(|x| x.connect_errors).sum(),
                io_errors: v.iter().map(|x| x.io_errors).sum(),
            });
        }
    }
    out
}

fn fmt_rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// How far apart (delayed ACKs per message) two servers' cells may be before `c10k` warns that
/// their ratio compares loopback states rather than servers. At 10 000 connections each 0.1
/// delayed ACK per message moved a server's CPU per message by about 0.25 µs (3 %).
const DELAYED_ACK_STATE_GAP: f64 = 0.25;

fn print_table(summary: &[Summary], servers: &[ServerSpec]) {
    let bw = servers.iter().map(|s| s.name.len()).fold(8, usize::max);
    let baseline_of = |r: &Summary| {
        summary.iter().find(|t| {
            t.backend == baseline(r.threads)
                && t.threads == r.threads
                && t.connections == r.connections
                && t.size == r.size
        })
    };
    println!();
    println!(
        "{:>6} {:>6} {:>3}  {:<bw$} {:>26} {:>7}  {:>11} {:>7} {:>8}  {:>22} {:>9} {:>10}  {:>7}",
        "conns",
        "size",
        "thr",
        "backend",
        "msgs/s median [min–max]",
        "×tokio",
        "CPU µs/msg",
        "×tokio",
        "srv CPU",
        "p99 µs [min–max]",
        "RSS MiB",
        "enters/msg",
        "errors"
    );
    let mut by_cell: BTreeMap<(usize, usize, usize), Vec<&Summary>> = BTreeMap::new();
    for s in summary {
        by_cell
            .entry((s.connections, s.size, s.threads))
            .or_default()
            .push(s);
    }
    for ((c, size, threads), rows) in by_cell {
        for r in &rows {
            let tokio = baseline_of(r);
            let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                _ => "-".into(),
            };
            let cpu = r.server_cpu_us_per_msg.map(|s| s.median);
            println!(
                "{:>6} {:>6} {:>3}  {:<bw$} {:>26} {:>7}  {:>11} {:>7} {:>8}  {:>22} {:>9} {:>10}  {:>7}",
                c,
                size,
                threads,
                r.backend,
                format!(
                    "{} [{}–{}]",
                    fmt_rate(r.msgs_per_s.median),
                    fmt_rate(r.msgs_per_s.min),
                    fmt_rate(r.msgs_per_s.max)
                ),
                ratio(
                    Some(r.msgs_per_s.median),
                    tokio.map(|t| t.msgs_per_s.median)
                ),
                cpu.map_or("-".into(), |x| format!("{x:.2}")),
                ratio(
                    cpu,
                    tokio.and_then(|t| t.server_cpu_us_per_msg.map(|s| s.median))
                ),
                r.server_cpu_pct
                    .map_or("-".into(), |p| format!("{:.0}%", p.median)),
                format!(
                    "{:.0} [{:.0}–{:.0}]",
                    r.p99_us.median, r.p99_us.min, r.p99_us.max
                ),
                r.server_peak_rss_kib
                    .map_or("-".into(), |k| format!("{:.1}", k.median / 1024.0)),
                match (
                    r.window_kernel_enters_per_msg,
                    r.server_kernel_enters_per_msg
                ) {
                    (Some(w), _) => format!("{:.3}", w.median),
                    (None, Some(k)) => format!("{:.3}*", k.median),
                    (None, None) => "-".into(),
                },
                r.connect_errors + r.io_errors,
            );
        }
    }
    println!();
    println!(
        "enters/msg: the server's kernel entries (io_uring_enter / epoll_wait) per echoed \
         message over the measured window (ringloop's echo_server, read on SIGUSR1); with \
         \"*\": over its whole run (ramp, warm-up, window, drain); \"-\": it prints no stats"
    );
    if summary.iter().any(|r| r.threads > 1) {
        println!(
            "thr: server threads; above 1, ×tokio is against tokio-mt (tokio's multi-thread \
             runtime, as many workers; tokio-rp: as many current-thread runtimes on \
             SO_REUSEPORT listeners), nothing is pinned, and CPU µs/msg and srv CPU (in % of \
             one CPU) sum every thread of the server"
        );
    }
    let mut delayed_acks_noted = false;
    for r in summary {
        let who = if r.threads > 1 {
            format!(
                "{} threads={} {}×{}B",
                r.backend, r.threads, r.connections, r.size
            )
        } else {
            format!("{} {}×{}B", r.backend, r.connections, r.size)
        };
        if !r.shard_accepted.is_empty() {
            println!(
                "note: {who}: connections accepted per shard {}{}",
                r.shard_accepted
                    .iter()
                    .map(|split| fmt_split(split))
                    .collect::<Vec<_>>()
                    .join(", "),
                if r.shard_accepted.len() > 1 {
                    " (one split per repetition)"
                } else {
                    ""
                }
            );
        }
        let drops = r.kernel_packet_drops.unwrap_or(0);
        let rtos = r.tcp_rto_timeouts.unwrap_or(0);
        if rtos > 0 {
            println!(
                "note: {who}: {rtos} TCP retransmission timeout(s) fired in the measured \
                 windows ({drops} packet(s) dropped at a full CPU backlog, \
                 net.core.netdev_max_backlog): each stalls a connection for 200 ms or more, so \
                 a p99 that high measures the kernel's loopback queue, not the server",
            );
        } else if drops > 0 {
            println!(
                "note: {who}: {drops} packet(s) dropped at a full CPU backlog \
                 (net.core.netdev_max_backlog), all recovered without a retransmission timeout",
            );
        }
        if let Some(acks) = r.tcp_delayed_acks_per_msg.filter(|a| a.median >= 0.1) {
            println!(
                "note: {who}: {:.2} delayed ACK(s) per message (median, both ends)",
                acks.median
            );
            delayed_acks_noted = true;
        }
        let tokio_acks = summary
            .iter()
            .find(|t| {
                t.backend == baseline(r.threads)
                    && t.threads == r.threads
                    && t.connections == r.connections
                    && t.size == r.size
            })
            .and_then(|t| t.tcp_delayed_acks_per_msg);
        if let (Some(acks), Some(t), true) = (
            r.tcp_delayed_acks_per_msg,
            tokio_acks,
            r.backend != baseline(r.threads),
        ) {
            if (t.median - acks.median).abs() >= DELAYED_ACK_STATE_GAP {
                println!(
                    "note: {who}: {}'s cell ran at {:.2} delayed ACK(s) per message \
                     against its {:.2}, so its ×tokio ratios compare two loopback states, not \
                     two servers",
                    baseline(r.threads),
                    t.median,
                    acks.median
                );
            }
        }
        let exhausted = r.server_buffer_exhaustions.unwrap_or(0);
        let overflows = r.server_cq_overflows.unwrap_or(0);
        if exhausted + overflows > 0 {
            println!(
                "note: {who}: {exhausted} buffer pool exhaustion(s), {overflows} CQ \
                 overflow(s) in the server",
            );
        }
    }
    if delayed_acks_noted {
        println!(
            "delayed ACKs (TcpExt DelayedACKs): pure ACKs sent because a peer took longer than \
             the delayed-ACK timeout (40 ms or more) to answer. On loopback a client socket's \
             timer fires on the server's CPU and its ACK is charged to the server, so a \
             slower client raises every server's CPU per message"
        );
    }
    println!();
}

/// Two panels: messages/s and p99 latency against the connection count (log scale), one line
/// per backend and message size.
fn draw_chart(
    path: &Path,
    summary: &[Summary],
    servers: &[ServerSpec],
    pipeline: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut sizes: Vec<usize> = summary.iter().map(|s| s.size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let mut lines = Vec::new();
    for (bi, spec) in servers.iter().enumerate() {
        for (si, &size) in sizes.iter().enumerate() {
            let points: Vec<ChartPoint> = summary
                .iter()
                .filter(|s| s.backend == spec.name && s.threads == spec.threads && s.size == size)
                .map(|s| ChartPoint {
                    connections: s.connections as f64,
                    rate: s.msgs_per_s.median,
                    p99_us: s.p99_us.median,
                })
                .collect();
            if !points.is_empty() {
                lines.push(ChartLine {
                    label: format!("{} {} B", spec.label(), size),
                    color: bi,
                    marker: si,
                    points,
                });
            }
        }
    }
    // A pipelined run's numbers are not comparable with a ping-pong's: say so on the chart.
    let depth = if pipeline > 1 {
        format!(", {pipeline} in flight per connection")
    } else {
        String::new()
    };
    draw_lines(
        path,
        &lines,
        &format!("messages/s (median){depth}"),
        &format!("p99 round trip, µs (median, log scale){depth}"),
        // Under the throughput lines: the y axis starts at 0.
        plotters::chart::SeriesLabelPosition::LowerLeft,
    )
}

/// One cell of a chart line.
struct ChartPoint {
    connections: f64,
    /// Messages or requests per second.
    rate: f64,
    p99_us: f64,
}

/// One line of a chart: a server at a message size (echo) or route (HTTP).
struct ChartLine {
    label: String,
    /// Picks the colour: one per server.
    color: usize,
    /// Picks the marker: one per message size or route.
    marker: usize,
    points: Vec<ChartPoint>,
}

/// Two panels, the rate and the p99 against the connection count (log scale), one line each
/// in `lines`, titled `rate_title` and `p99_title`; the rate panel's legend at `rate_legend`.
fn draw_lines(
    path: &Path,
    lines: &[ChartLine],
    rate_title: &str,
    p99_title: &str,
    rate_legend: plotters::chart::SeriesLabelPosition,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let all = || lines.iter().flat_map(|l| &l.points);
    if all().next().is_none() {
        return Err("no results".into());
    }
    let cmin = all().map(|p| p.connections).fold(f64::INFINITY, f64::min);
    let cmax = all().map(|p| p.connections).fold(1.0, f64::max);
    let (xlo, xhi) = (cmin / 1.5, cmax * 1.5);
    // Ticks at the measured connection counts: plotters' own log-scale ticks sit on powers of
    // ten only, so a range that holds none (one count, 200 say) would get no x labels at all.
    let mut conn_ticks: Vec<f64> = all().map(|p| p.connections).collect();
    conn_ticks.sort_by(f64::total_cmp);
    conn_ticks.dedup();

    let root = SVGBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    type Metric = fn(&ChartPoint) -> f64;
    // The legend goes where the lines seldom are: `rate_legend` on the throughput panel, and
    // above the latency lines at the smallest connection count.
    // The p99 spans three orders of magnitude from 100 to 10 000 connections: it is drawn
    // as log10 on a linear axis (labelled in µs), so the small counts stay readable.
    let metrics: [(&str, Metric, SeriesLabelPosition, bool); 2] = [
        (rate_title, |p| p.rate, rate_legend, false),
        (
            p99_title,
            |p| p.p99_us.max(1.0).log10(),
            SeriesLabelPosition::UpperLeft,
            true,
        ),
    ];
    for (panel, (title, metric, legend_at, log)) in panels.iter().zip(metrics) {
        let (ylo, yhi) = if log {
            let lo = all().map(metric).fold(f64::INFINITY, f64::min);
            let hi = all().map(metric).fold(0.0, f64::max);
            ((lo - 0.2).floor().max(0.0), hi + 0.3)
        } else {
            (0.0, all().map(metric).fold(0.0, f64::max) * 1.1 + 1.0)
        };
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(35)
            .y_label_area_size(70)
            .build_cartesian_2d(
                (xlo..xhi).log_scale().with_key_points(conn_ticks.clone()),
                ylo..yhi,
            )?;
        chart
            .configure_mesh()
            .x_desc("connections")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| fmt_rate(if log { 10f64.powf(*y) } else { *y }))
            .draw()?;
        for line in lines {
            let mut pts: Vec<(f64, f64)> = line
                .points
                .iter()
                .map(|p| (p.connections, metric(p)))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let color = Palette99::pick(line.color).to_rgba();
            let style = ShapeStyle {
                color,
                filled: true,
                stroke_width: if line.marker == 0 { 2 } else { 1 },
            };
            // Colour tells the server, the marker the message size or route (a disc, a
            // triangle, a cross, in turn), in the legend too: two lines of one server would
            // otherwise look the same there. One macro arm per shape, as each shape is its own
            // type and a plotters series (or legend entry) takes one type.
            let label = line.label.clone();
            macro_rules! series {
                ($marker:expr) => {{
                    chart
                        .draw_series(LineSeries::new(pts.clone(), style))?
                        .label(label)
                        .legend(move |(x, y)| {
                            EmptyElement::at((x, y))
                                + PathElement::new(vec![(0, 0), (20, 0)], style)
                                + $marker((10, 0))
                        });
                    chart.draw_series(pts.iter().map(|&p| $marker(p)))?;
                }};
            }
            match line.marker % 3 {
                0 => series!(|p| Circle::new(p, 3, color.filled())),
                1 => series!(|p| TriangleMarker::new(p, 4, color.filled())),
                _ => series!(|p| Cross::new(p, 3, color.stroke_width(2))),
            }
        }
        chart
            .configure_series_labels()
            .position(legend_at)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

// ---- the shutdown check: SIGTERM under load ----

/// What one shutdown check found (one per ringloop server; in the JSON as `shutdown_checks`).
#[derive(Debug, Clone, Serialize)]
struct ShutdownCheck {
    backend: String,
    /// The server's threads (shards).
    threads: usize,
    connections: usize,
    connected: usize,
    /// The server's grace, in seconds.
    grace_s: f64,
    /// Bytes the clients sent before the signal (every write began before it; none after).
    bytes_sent: u64,
    /// Bytes that came back, verified.
    bytes_echoed: u64,
    /// Bytes sent that never came back, summed over the connections.
    bytes_lost: u64,
    /// Connections that ended with a reset (`ECONNRESET`).
    resets: u64,
    /// Connections that ended with the server's FIN after their last echo.
    fins: u64,
    /// Connections still open (no end of stream from the server yet) when the server was seen
    /// refusing new connections, i.e. when its shutdown had begun.
    open_at_close: usize,
    /// Connect errors, other I/O errors, wrong bytes, and connections that had not ended
    /// `grace + 10 s` after the signal.
    errors: u64,
    /// The server's exit code (`None`: killed by a signal, or still running at the deadline).
    exit_code: Option<i32>,
    /// Seconds from the signal to the server's exit, as seen by polling (every 2 ms).
    exit_after_s: Option<f64>,
    /// The server's own account (`shutdown finished=N cancelled=N aborted=N ...`; a sharded
    /// server's `shard I accepted=N finished=N ...` lines, joined with `; `).
    server_report: Option<String>,
    /// Why the check could not run (the server did not start, say).
    failure: Option<String>,
    passed: bool,
}

impl ShutdownCheck {
    fn failed(spec: &ServerSpec, connections: usize, grace_s: f64, why: String) -> ShutdownCheck {
        ShutdownCheck {
            backend: spec.name.clone(),
            threads: spec.threads,
            connections,
            connected: 0,
            grace_s,
            bytes_sent: 0,
            bytes_echoed: 0,
            bytes_lost: 0,
            resets: 0,
            fins: 0,
            open_at_close: 0,
            errors: 0,
            exit_code: None,
            exit_after_s: None,
            server_report: None,
            failure: Some(why),
            passed: false,
        }
    }

    /// The line the job prints.
    fn line(&self) -> String {
        let who = if self.threads > 1 {
            format!("{} ({} threads)", self.backend, self.threads)
        } else {
            self.backend.clone()
        };
        if let Some(why) = &self.failure {
            return format!("shutdown {who}: FAILED: {why}");
        }
        let exit = match (self.exit_code, self.exit_after_s) {
            (Some(code), Some(t)) => format!("exited {code} after {t:.2} s"),
            (None, Some(t)) => format!("was killed by a signal after {t:.2} s"),
            _ => "did not exit in time".to_string(),
        };
        format!(
            "shutdown {who}: SIGTERM under load at {}/{} connections ({} open when it stopped \
             accepting): {} bytes sent before the signal, {} echoed ({} lost), {} \
             connection(s) reset, {} closed with a FIN, {} error(s); server {exit} (grace {} \
             s){}: {}",
            self.connected,
            self.connections,
            self.open_at_close,
            self.bytes_sent,
            self.bytes_echoed,
            self.bytes_lost,
            self.resets,
            self.fins,
            self.errors,
            self.grace_s,
            self.server_report
                .as_deref()
                .map_or(String::new(), |r| format!(" [{r}]")),
            if self.passed { "OK" } else { "FAILED" }
        )
    }
}

/// How one client connection of the shutdown check ended.
#[derive(Debug, Default)]
struct ConnEnd {
    sent: u64,
    echoed: u64,
    fin: bool,
    reset: bool,
    error: bool,
}

/// Shared by the connections of one shutdown check.
#[derive(Default)]
struct ShutdownLoad {
    /// Set at the signal: no write begins after it.
    stop: Cell<bool>,
    /// Set once the server refuses new connections: the clients end their side.
    end_side: ringloop::sync::Event,
    /// Connections that have seen the server's end of stream (or failed).
    ended: Cell<usize>,
    /// Connections open or failed to open.
    settled: Cell<usize>,
    connected: Cell<usize>,
    /// Connections that have had at least one echo back.
    warmed: Cell<usize>,
    connect_errors: Cell<u64>,
    ends: RefCell<Vec<ConnEnd>>,
}

/// The byte at offset `pos` of connection `id`'s stream in the shutdown check: a pattern per
/// connection, so a shifted, repeated or foreign byte is caught.
fn check_byte(id: usize, pos: u64) -> u8 {
    (pos.wrapping_mul(31).wrapping_add(id as u64 * 7) % 251) as u8
}

/// The shutdown check for one ringloop server: `conns` connections under load (each keeps four
/// `size`-byte messages in flight), then SIGTERM. At the signal every client stops sending
/// (no write begins after it) and goes on reading its echoes. Once a probe connect is refused
/// (the server has stopped accepting, so its shutdown began with every connection open),
/// every client ends its side (`shutdown(Write)`) and reads until the server's end of stream,
/// verifying every byte. It passes if every connection got back every byte it sent and then a
/// FIN (no reset, no error), and the server exited 0 within its grace.
///
/// The server keeps echoing during its grace and closes each connection once its client has
/// ended its side, so a server that works exits long before the grace is over; the grace is
/// the only time bound checked. (Were the clients to end their side at the signal itself, the
/// server could see every end of stream before its signal and shut down with no connection
/// open.)
fn shutdown_check(
    spec: &ServerSpec,
    conns: usize,
    size: usize,
    plan: &Plan,
    pin: bool,
) -> ShutdownCheck {
    let grace = plan.shutdown_grace;
    let mut graceful_spec = spec.clone();
    graceful_spec
        .argv
        .extend(["--grace".to_string(), grace.to_string()]);
    let (mut server, addr) = match Server::start(&graceful_spec, pin) {
        Ok(started) => started,
        Err(e) => return ShutdownCheck::failed(spec, conns, grace, e),
    };
    let rt = match Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return ShutdownCheck::failed(spec, conns, grace, e.to_string()),
    };
    let st = Rc::new(ShutdownLoad::default());
    let ramp = Rc::new(Semaphore::new(plan.ramp));
    let warmup = Duration::from_secs_f64(plan.warmup);
    let mut open_at_close = 0;
    let exit = rt.block_on(async {
        let tasks: Vec<_> = (0..conns)
            .map(|id| spawn(shutdown_client(id, addr, size, st.clone(), ramp.clone())))
            .collect();
        // Every connection open and echoing, then the load runs a while.
        let ramp_deadline = Instant::now() + Duration::from_secs(60);
        while (st.settled.get() < conns || st.warmed.get() < st.connected.get())
            && Instant::now() < ramp_deadline
        {
            let _ = sleep(Duration::from_millis(5)).await;
        }
        let _ = sleep(warmup).await;
        // The signal: no client begins a write after this point.
        st.stop.set(true);
        let signalled = Instant::now();
        server.signal_terminate();
        // Wait (up to the grace) until the server refuses a connection, then let the clients
        // end their side. A probe that is accepted is closed at once; the server serves it
        // like any other connection.
        let refused_deadline = signalled + Duration::from_secs_f64(grace);
        while Instant::now() < refused_deadline {
            match TcpStream::connect(addr).await {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break,
                _ => {
                    let _ = sleep(Duration::from_millis(1)).await;
                }
            }
        }
        open_at_close = st.connected.get() - st.ended.get();
        st.end_side.set();
        let mut exit = None;
        let deadline = signalled + Duration::from_secs_f64(grace + 10.0);
        while Instant::now() < deadline {
            if exit.is_none() {
                exit = server
                    .try_exit()
                    .map(|status| (status, signalled.elapsed()));
            }
            if exit.is_some() && tasks.iter().all(|t| t.is_done()) {
                break;
            }
            let _ = sleep(Duration::from_millis(2)).await;
        }
        for t in &tasks {
            t.cancel();
        }
        let _ = gather_settled(tasks).await;
        exit
    });
    drop(rt);
    let server_report = match exit {
        Some(_) => {
            let stderr = server.stderr();
            let shards: Vec<&str> = stderr
                .lines()
                .filter(|l| l.starts_with("shard ") && l.contains(" accepted="))
                .collect();
            if shards.is_empty() {
                stderr
                    .lines()
                    .rev()
                    .find_map(|l| l.strip_prefix("shutdown ").map(str::to_string))
            } else {
                Some(shards.join("; "))
            }
        }
        None => None,
    };
    drop(server); // still running: SIGTERM again, then SIGKILL

    let ends = st.ends.take();
    let connected = st.connected.get();
    let unfinished = connected.saturating_sub(ends.len()) as u64;
    let bytes_sent: u64 = ends.iter().map(|e| e.sent).sum();
    let bytes_echoed: u64 = ends.iter().map(|e| e.echoed).sum();
    let bytes_lost: u64 = ends.iter().map(|e| e.sent.saturating_sub(e.echoed)).sum();
    let resets = ends.iter().filter(|e| e.reset).count() as u64;
    let fins = ends.iter().filter(|e| e.fin).count() as u64;
    let errors =
        ends.iter().filter(|e| e.error).count() as u64 + st.connect_errors.get() + unfinished;
    let exit_code = exit.and_then(|(status, _)| status.code());
    let exit_after = exit.map(|(_, after)| after.as_secs_f64());
    let passed = connected == conns
        && errors == 0
        && resets == 0
        && bytes_lost == 0
        && bytes_echoed == bytes_sent
        && fins == conns as u64
        && exit_code == Some(0)
        && exit_after.is_some_and(|t| t <= grace);
    ShutdownCheck {
        backend: spec.name.clone(),
        threads: spec.threads,
        connections: conns,
        connected,
        grace_s: grace,
        bytes_sent,
        bytes_echoed,
        bytes_lost,
        resets,
        fins,
        open_at_close,
        errors,
        exit_code,
        exit_after_s: exit_after,
        server_report,
        failure: None,
        passed,
    }
}

/// One client of the shutdown check: connects under the ramp, then a writer keeps four
/// `size`-byte messages in flight until the signal, and ends its side when told to, while this
/// task reads and verifies the echoes until the server's end of stream.
async fn shutdown_client(
    id: usize,
    addr: SocketAddr,
    size: usize,
    st: Rc<ShutdownLoad>,
    ramp: Rc<Semaphore>,
) {
    const IN_FLIGHT: usize = 4;
    let stream = {
        let _permit = ramp.acquire().await;
        let r = TcpStream::connect(addr).await;
        st.settled.set(st.settled.get() + 1);
        match r {
            Ok(s) => s,
            Err(_) => {
                st.connect_errors.set(st.connect_errors.get() + 1);
                return;
            }
        }
    };
    st.connected.set(st.connected.get() + 1);
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let window = Rc::new(Semaphore::new(IN_FLIGHT));
    let sent = Rc::new(Cell::new(0u64));
    let write_failed = Rc::new(Cell::new(false));
    let writer = spawn({
        let (window, sent, write_failed, st) = (
            window.clone(),
            sent.clone(),
            write_failed.clone(),
            st.clone(),
        );
        async move {
            let mut msg = vec![0u8; size];
            loop {
                match window.acquire().await {
                    Ok(permit) => permit.forget(),
                    Err(_) => return,
                }
                if st.stop.get() {
                    // Dropping `wr` ends our side: the server sees the end of the stream.
                    let _ = st.end_side.wait().await;
                    return;
                }
                let base = sent.get();
                for (i, b) in msg.iter_mut().enumerate() {
                    *b = check_byte(id, base + i as u64);
                }
                let (r, m) = wr.write_all(msg).await;
                msg = m;
                match r {
                    Ok(()) => sent.set(base + size as u64),
                    Err(e) => {
                        sent.set(base + e.sent as u64);
                        write_failed.set(true);
                        return;
                    }
                }
            }
        }
    });
    let mut end = ConnEnd::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut warmed = false;
    loop {
        let (n, b) = rd.read(buf).await;
        buf = b;
        match n {
            Ok(0) => {
                end.fin = true;
                break;
            }
            Ok(n) => {
                if (0..n).any(|i| buf[i] != check_byte(id, end.echoed + i as u64)) {
                    end.error = true;
                    break;
                }
                let before = end.echoed / size as u64;
                end.echoed += n as u64;
                window.add_permits((end.echoed / size as u64 - before) as usize);
                if !warmed && end.echoed >= size as u64 {
                    warmed = true;
                    st.warmed.set(st.warmed.get() + 1);
                }
            }
            Err(e) => {
                if e.kind() == io::ErrorKind::ConnectionReset {
                    end.reset = true;
                } else {
                    end.error = true;
                }
                break;
            }
        }
    }
    st.ended.set(st.ended.get() + 1);
    // The writer has ended (the FIN came after our own end of stream), or it waits for a
    // window that will not open: it is done either way.
    writer.cancel();
    let _ = writer.await;
    end.sent = sent.get();
    end.error |= write_failed.get();
    st.ends.borrow_mut().push(end);
}
