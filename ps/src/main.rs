//! `ringloop-ps`: looks inside a running ringloop server from outside the process, like
//! Python's `python -m asyncio pstree PID` / `ps PID`: every task, its parent, what it awaits
//! and for how long, the await chains; the runtime's stats and op table.
//!
//! The server must serve its live view: `Builder::inspect(true)` in its code, or
//! `RINGLOOP_INSPECT=1` in its environment. Each runtime of the process (each shard) has a
//! socket, `<pid>-<n>.sock`, in the live view's directory; given a PID this asks every one of
//! them and prints their answers one after the other.
//!
//! ```text
//! ringloop-ps                      # the processes that serve a live view
//! ringloop-ps 4242                 # every task of process 4242, as a tree
//! ringloop-ps 4242 ps              # the same as a flat table
//! ringloop-ps 4242 stats --json    # the counters, as JSON
//! ringloop-ps /path/to/rt.sock ops # one runtime, by its socket
//! ```
//!
//! The protocol is one line per connection (`<command> [json]`) answered by the server's loop
//! between iterations; see the runtime's `inspect` module. A loop that does not answer within
//! the timeout is not turning: a task is blocking its thread, which is worth knowing too.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Looks inside running ringloop servers: their tasks, what each awaits, stats and ops.
#[derive(Parser, Debug)]
#[command(name = "ringloop-ps", version)]
struct Args {
    /// A process id, or the path of a live-view socket. Without it, lists the processes that
    /// serve a live view.
    target: Option<String>,
    /// What to show.
    #[arg(value_enum, default_value_t = What::Tree)]
    what: What,
    /// JSON instead of text: one object per runtime, an array of them for a process with
    /// several.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for each runtime's answer.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum What {
    /// Every task as a tree (parent → children), with what it awaits and the await chain.
    Tree,
    /// Every task as a flat table: id, parent, state, waited, polls, name, awaiting.
    Ps,
    /// The runtime's counters.
    Stats,
    /// The op table: per op kind, the tasks waiting on it, its ops' counts and latencies.
    Ops,
    /// The stats and the op kinds as Prometheus text (labelled `runtime="<pid>-<n>"`; always
    /// text).
    Metrics,
    /// Which runtime answers: pid, thread, backend, task count.
    Info,
}

impl What {
    fn command(self) -> &'static str {
        match self {
            What::Tree => "tree",
            What::Ps => "ps",
            What::Stats => "stats",
            What::Ops => "ops",
            What::Metrics => "metrics",
            What::Info => "info",
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringloop-ps: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let Some(target) = &args.target else {
        return list();
    };
    let sockets = if !target.is_empty() && target.bytes().all(|b| b.is_ascii_digit()) {
        let pid: u32 = target
            .parse()
            .map_err(|e| format!("bad pid {target}: {e}"))?;
        sockets_of(pid)?
    } else {
        vec![PathBuf::from(target)]
    };
    let timeout = Duration::from_secs_f64(args.timeout.max(0.001));
    let mut answers = Vec::new();
    let mut failed = Vec::new();
    for socket in &sockets {
        match ask(socket, args.what.command(), args.json, timeout) {
            Ok(a) if a.starts_with("error:") => {
                failed.push(format!("{}: {}", socket.display(), a.trim_end()))
            }
            Ok(a) => answers.push(a),
            Err(e) => failed.push(format!("{}: {e}", socket.display())),
        }
    }
    let mut out = io::stdout().lock();
    if args.what == What::Metrics {
        // One exposition: each metric's HELP and TYPE once, however many runtimes answer.
        let _ = out.write_all(merge_metrics(&answers).as_bytes());
    } else if args.json {
        let values: Vec<serde_json::Value> = answers
            .iter()
            .map(|a| serde_json::from_str(a).map_err(|e| format!("a bad JSON answer: {e}")))
            .collect::<Result<_, _>>()?;
        let doc = match values.len() {
            1 => values.into_iter().next().unwrap_or_default(),
            _ => serde_json::Value::Array(values),
        };
        let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
        let _ = writeln!(out, "{text}");
    } else {
        for (i, a) in answers.iter().enumerate() {
            if i > 0 {
                let _ = writeln!(out);
            }
            let _ = out.write_all(a.as_bytes());
        }
    }
    let _ = out.flush();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("\n"))
    }
}

/// Asks one runtime: one line, then everything it answers.
fn ask(socket: &Path, command: &str, json: bool, timeout: Duration) -> Result<String, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        io::ErrorKind::ConnectionRefused => "nobody listens there (the runtime is gone)".to_owned(),
        io::ErrorKind::PermissionDenied => {
            "permission denied (a live view serves only its own user)".to_owned()
        }
        _ => e.to_string(),
    })?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let line = if json && command != "metrics" {
        format!("{command} json\n")
    } else {
        format!("{command}\n")
    };
    stream
        .write_all(line.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Err(format!(
                "no answer within {:.1} s: the runtime's loop is not turning (a task may be \
                 blocking its thread)",
                timeout.as_secs_f64()
            ));
        }
        Err(e) => return Err(e.to_string()),
    }
    if answer.is_empty() {
        return Err("the runtime closed the connection without an answer".to_owned());
    }
    String::from_utf8(answer).map_err(|_| "an answer that is not UTF-8".to_owned())
}

/// Prometheus texts of several runtimes as one: the samples of each metric together, under
/// its `# HELP` and `# TYPE` lines, given once.
fn merge_metrics(answers: &[String]) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut metrics: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for answer in answers {
        let mut current = String::new();
        for line in answer.lines() {
            if let Some(rest) = line
                .strip_prefix("# HELP ")
                .or_else(|| line.strip_prefix("# TYPE "))
            {
                current = rest.split(' ').next().unwrap_or("").to_owned();
                let entry = metrics.entry(current.clone()).or_insert_with(|| {
                    order.push(current.clone());
                    (Vec::new(), Vec::new())
                });
                if !entry.0.iter().any(|l| l == line) {
                    entry.0.push(line.to_owned());
                }
            } else if !line.is_empty() {
                metrics
                    .entry(current.clone())
                    .or_insert_with(|| {
                        order.push(current.clone());
                        (Vec::new(), Vec::new())
                    })
                    .1
                    .push(line.to_owned());
            }
        }
    }
    let mut out = String::new();
    for name in order {
        if let Some((head, samples)) = metrics.get(&name) {
            for l in head.iter().chain(samples) {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

/// The directories a live view's sockets may be in, in the order the runtime chooses them
/// (its `inspect::socket_dir`): `$RINGLOOP_INSPECT_DIR`, `$XDG_RUNTIME_DIR/ringloop`,
/// `/tmp/ringloop-<uid>`; plus `/run/user/<uid>/ringloop`, where a server started from a
/// login session puts them when this shell has no `XDG_RUNTIME_DIR`.
fn socket_dirs() -> Vec<PathBuf> {
    // SAFETY: `geteuid` cannot fail.
    let uid = unsafe { libc::geteuid() };
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("RINGLOOP_INSPECT_DIR").filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(d).join("ringloop"));
    }
    dirs.push(PathBuf::from(format!("/run/user/{uid}/ringloop")));
    dirs.push(PathBuf::from(format!("/tmp/ringloop-{uid}")));
    dirs.dedup();
    dirs
}

/// Every live-view socket in the directories: `(pid, n) → path`.
fn all_sockets() -> BTreeMap<(u32, u32), PathBuf> {
    let mut found = BTreeMap::new();
    for dir in socket_dirs() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(stem) = name.strip_suffix(".sock") else {
                continue;
            };
            let Some((pid, n)) = stem.split_once('-') else {
                continue;
            };
            if let (Ok(pid), Ok(n)) = (pid.parse(), n.parse()) {
                found.entry((pid, n)).or_insert_with(|| entry.path());
            }
        }
    }
    found
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes a socket left by a process that is gone (nobody accepts on it any more).
fn remove_stale(path: &Path) {
    if let Err(e) = UnixStream::connect(path) {
        if e.kind() == io::ErrorKind::ConnectionRefused {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The sockets of process `pid`, one per inspected runtime, in order.
fn sockets_of(pid: u32) -> Result<Vec<PathBuf>, String> {
    let sockets: Vec<PathBuf> = all_sockets()
        .into_iter()
        .filter(|((p, _), _)| *p == pid)
        .map(|(_, path)| path)
        .collect();
    if !alive(pid) {
        for s in &sockets {
            remove_stale(s);
        }
        return Err(format!("no process {pid}"));
    }
    if sockets.is_empty() {
        let dirs: Vec<String> = socket_dirs()
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        return Err(format!(
            "process {pid} serves no live view (none of its sockets in {}): start it with \
             RINGLOOP_INSPECT=1, or build its runtime with Builder::inspect(true)",
            dirs.join(", ")
        ));
    }
    Ok(sockets)
}

/// Lists the processes that serve a live view (and forgets sockets left by dead ones).
fn list() -> Result<(), String> {
    let mut by_pid: BTreeMap<u32, Vec<PathBuf>> = BTreeMap::new();
    for ((pid, _), path) in all_sockets() {
        if alive(pid) {
            by_pid.entry(pid).or_default().push(path);
        } else {
            remove_stale(&path);
        }
    }
    let mut out = io::stdout().lock();
    if by_pid.is_empty() {
        let _ = writeln!(
            out,
            "no ringloop process serves a live view (start one with RINGLOOP_INSPECT=1)"
        );
        return Ok(());
    }
    let _ = writeln!(
        out,
        "{:>8} {:>8}  {:<16} SOCKETS",
        "PID", "RUNTIMES", "COMMAND"
    );
    for (pid, paths) in by_pid {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let dir = paths
            .first()
            .and_then(|p| p.parent())
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{pid:>8} {:>8}  {:<16} {dir}/{pid}-*.sock",
            paths.len(),
            comm.trim()
        );
    }
    Ok(())
}
