//! `ringloop-ps` against echo servers running in this process, on both backends: by socket
//! path and by PID (every runtime of the process), text and JSON, and at 10 000 tasks
//! suspended on loopback reads (fewer, with a note, where the open-file limit is lower).
//!
//! Each server runs on a thread of its own (the loop answers the CLI between its iterations);
//! the tests wait for conditions, never for durations.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ringloop_net::{start_server, ListenAddr, ShutdownSignal, TcpStream};
use ringloop_runtime::{spawn_named, Backend, Handle, Runtime};
use serde_json::Value;

const CLI: &str = env!("CARGO_BIN_EXE_ringloop-ps");

fn backends() -> Vec<Backend> {
    let uring = std::env::var("RINGLOOP_TEST_BACKENDS")
        .map(|list| list.split(',').any(|b| b.trim() == "uring"))
        .unwrap_or(true);
    if !uring {
        eprintln!("note: io_uring left out by RINGLOOP_TEST_BACKENDS; its half did not run");
    }
    [Backend::IoUring, Backend::Epoll]
        .into_iter()
        .filter(|&b| b != Backend::IoUring || uring)
        .collect()
}

fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringloop-ps-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The echo handler of `examples/echo_server.rs`, reduced to its loop.
async fn echo(stream: TcpStream, _shutdown: ShutdownSignal) {
    let mut rx = stream.pooled_receiver();
    while let Ok(Some(chunk)) = rx.recv().await {
        if stream.write_all(chunk).await.0.is_err() {
            return;
        }
    }
}

/// An echo server on a thread, serving its live view at `socket`, with `clients` of its own
/// connected to it, each in a task waiting to read (so `2 * clients` tasks wait on `recv`).
struct EchoServer {
    handle: Handle,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    fn start(backend: Backend, socket: &Path, clients: usize) -> EchoServer {
        let socket = socket.to_owned();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = Runtime::builder()
                .backend(backend)
                .inspect_socket(&socket)
                .build()
                .unwrap();
            let server = rt.run_until_complete(async move {
                let server = start_server("127.0.0.1:0".parse().unwrap(), echo).unwrap();
                let Some(ListenAddr::Tcp(addr)) = server.sockets().into_iter().next() else {
                    panic!("no TCP listener");
                };
                connect_clients(addr, clients).await;
                server
            });
            tx.send(rt.handle()).unwrap();
            rt.run_forever().unwrap();
            drop(server);
        });
        let handle = rx.recv().expect("the server thread started");
        EchoServer {
            handle,
            thread: Some(thread),
        }
    }
}

async fn connect_clients(addr: SocketAddr, clients: usize) {
    for i in 0..clients {
        let stream = TcpStream::connect(addr).await.unwrap();
        drop(spawn_named(format!("client-{i}"), async move {
            let _ = stream.read(Vec::with_capacity(64)).await;
        }));
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.handle.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether the CLI binary cargo built for these tests is there: a test binary copied alone
/// (into `.ci/kernels`' virtual machines, say) cannot run it, and says so instead of failing.
fn cli_here() -> bool {
    let here = Path::new(CLI).exists();
    if !here {
        eprintln!("note: {CLI} is not on this machine; the CLI tests did not run");
    }
    here
}

fn cli(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(CLI);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "ringloop-ps failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// Asks with `args` until `done` accepts the output (the server's tasks are still starting),
/// for at most a minute.
fn cli_until(args: &[&str], done: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let out = stdout(&cli(args, &[]));
        if done(&out) || start.elapsed() > Duration::from_secs(60) {
            return out;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_command_against_a_running_echo_server_on_both_backends() {
    if !cli_here() {
        return;
    }
    for backend in backends() {
        let dir = test_dir(&format!("commands-{backend}"));
        let socket = dir.join("echo.sock");
        let server = EchoServer::start(backend, &socket, 3);
        let s = socket.to_str().unwrap();
        // 3 clients waiting to read, and their 3 handlers waiting to receive.
        let ps = cli_until(&[s, "ps"], |out| out.matches("recv on fd").count() >= 6);
        assert_eq!(ps.matches("recv on fd").count(), 6, "{ps}");
        assert!(
            ps.lines().next().unwrap().starts_with("# ringloop "),
            "{ps}"
        );
        let header: Vec<&str> = ps.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            header,
            ["ID", "PARENT", "STATE", "WAITED", "POLLS", "NAME", "AWAITING"]
        );
        assert!(
            ps.contains(" accept on fd "),
            "the server's accept loop: {ps}"
        );

        let tree = stdout(&cli(&[s], &[]));
        assert!(
            tree.lines().any(|l| l.contains("client-0 [pending")),
            "{tree}"
        );
        assert!(tree.contains("└─ ") || tree.contains("├─ "), "{tree}");

        let json: Value = serde_json::from_str(&stdout(&cli(&[s, "tree", "--json"], &[]))).unwrap();
        assert_eq!(json["runtime"]["pid"], std::process::id());
        let mut recvs = 0;
        count_awaiting(&json["tree"], "recv", &mut recvs);
        assert_eq!(recvs, 6, "{json}");

        let stats = stdout(&cli(&[s, "stats"], &[]));
        assert!(
            stats.lines().any(|l| l.starts_with("tasks_alive ")),
            "{stats}"
        );
        let stats: Value =
            serde_json::from_str(&stdout(&cli(&[s, "stats", "--json"], &[]))).unwrap();
        assert!(stats["stats"]["tasks_alive"].as_u64().unwrap() >= 7);

        let ops = stdout(&cli(&[s, "ops"], &[]));
        let recv_line = ops
            .lines()
            .find(|l| l.starts_with("recv "))
            .unwrap_or_else(|| panic!("{ops}"));
        assert_eq!(recv_line.split_whitespace().nth(1), Some("6"), "{ops}");

        let info = stdout(&cli(&[s, "info"], &[]));
        assert_eq!(info.lines().count(), 1);
        assert_eq!(
            info.contains("io_uring"),
            backend == Backend::IoUring,
            "{info}"
        );
        drop(server);
        assert!(!socket.exists(), "removed with the runtime");
        let gone = cli(&[s], &[]);
        assert!(!gone.status.success());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

fn count_awaiting(nodes: &Value, op: &str, n: &mut usize) {
    let Some(map) = nodes.as_object() else { return };
    for node in map.values() {
        if node["awaiting"]["op"] == op {
            *n += 1;
        }
        count_awaiting(&node["children"], op, n);
    }
}

/// Given a PID, every runtime of the process answers (one socket each, as shards have), in
/// order; JSON gives an array of them.
#[test]
fn by_pid_every_runtime_of_the_process_answers() {
    if !cli_here() {
        return;
    }
    let dir = test_dir("pid");
    let pid = std::process::id();
    let servers: Vec<EchoServer> = [Backend::Epoll, Backend::Epoll]
        .into_iter()
        .enumerate()
        .map(|(n, b)| EchoServer::start(b, &dir.join(format!("{pid}-{n}.sock")), n + 1))
        .collect();
    let env = [("RINGLOOP_INSPECT_DIR", dir.as_path())];
    let pid_arg = pid.to_string();
    let start = Instant::now();
    let out = loop {
        let out = stdout(&cli(&[&pid_arg, "ps"], &env));
        if out.matches("recv on fd").count() >= 2 + 4 || start.elapsed() > Duration::from_secs(60) {
            break out;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let headers: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("# ringloop "))
        .collect();
    assert_eq!(headers.len(), 2, "{out}");
    assert!(
        headers[0].starts_with(&format!("# ringloop {pid}-")),
        "{out}"
    );
    let json: Value =
        serde_json::from_str(&stdout(&cli(&[&pid_arg, "info", "--json"], &env))).unwrap();
    assert_eq!(json.as_array().map(Vec::len), Some(2), "{json}");

    // Metrics of both runtimes as one exposition: each metric's TYPE once, a sample each.
    let metrics = stdout(&cli(&[&pid_arg, "metrics"], &env));
    assert_eq!(
        metrics
            .matches("# TYPE ringloop_tasks_alive gauge\n")
            .count(),
        1,
        "{metrics}"
    );
    let alive: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("ringloop_tasks_alive{"))
        .collect();
    assert_eq!(alive.len(), 2, "{metrics}");
    assert!(
        alive[0].contains(&format!("runtime=\"{pid}-0\"")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ringloop_op_completed_total{") && l.contains("op=\"accept\"")),
        "{metrics}"
    );

    // The listing shows this process with its two runtimes.
    let list = stdout(&cli(&[], &env));
    let row = list
        .lines()
        .find(|l| l.split_whitespace().next() == Some(pid_arg.as_str()))
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(row.split_whitespace().nth(1), Some("2"), "{row}");
    drop(servers);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A process that is gone, or one that serves nothing, is said so; a socket a dead process
/// left behind is removed.
#[test]
fn a_process_that_is_gone_or_serves_nothing_is_said_so() {
    if !cli_here() {
        return;
    }
    let dir = test_dir("gone");
    // A pid far past any real one (pid_max is at most 2^22).
    let dead = 9_999_999u32;
    let stale = dir.join(format!("{dead}-0.sock"));
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let env = [("RINGLOOP_INSPECT_DIR", dir.as_path())];
    let out = cli(&[&dead.to_string()], &env);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("no process {dead}")));
    assert!(!stale.exists(), "the stale socket was removed");

    let me = std::process::id().to_string();
    let out = cli(&[&me], &env);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("serves no live view") && err.contains("RINGLOOP_INSPECT=1"),
        "{err}"
    );

    let list = stdout(&cli(&[], &env));
    assert!(
        list.starts_with("no ringloop process serves a live view"),
        "{list}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// 10 000 tasks waiting on loopback reads (5 000 connections: a handler and a client task on
/// each), on both backends: the CLI lists every one, and the tree's snapshot time (loop time
/// spent on the answer) is printed for the record. With an open-file limit too low for 10 000
/// sockets, fewer connections, with a note.
#[test]
fn the_cli_at_ten_thousand_waiting_tasks() {
    if !cli_here() {
        return;
    }
    let mut connections = 5000usize;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a live local.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    let room = (lim.rlim_cur as usize).saturating_sub(300) / 2;
    if room < connections {
        eprintln!(
            "note: open-file limit {} allows {room} connections, not {connections}: testing {} \
             waiting tasks instead of 10 000",
            lim.rlim_cur,
            2 * room
        );
        connections = room;
    }
    for backend in backends() {
        let dir = test_dir(&format!("10k-{backend}"));
        let socket = dir.join("big.sock");
        let server = EchoServer::start(backend, &socket, connections);
        let s = socket.to_str().unwrap();
        let ps = cli_until(&[s, "ps"], |out| {
            out.matches(" recv on fd ").count() >= 2 * connections
        });
        assert_eq!(
            ps.matches(" recv on fd ").count(),
            2 * connections,
            "{backend}"
        );
        let header = ps.lines().next().unwrap().to_owned();
        let json: Value = serde_json::from_str(&stdout(&cli(
            &[s, "tree", "--json", "--timeout", "60"],
            &[],
        )))
        .unwrap();
        let mut recvs = 0;
        count_awaiting(&json["tree"], "recv", &mut recvs);
        assert_eq!(recvs, 2 * connections);
        let ops: Value = serde_json::from_str(&stdout(&cli(&[s, "ops", "--json"], &[]))).unwrap();
        assert_eq!(ops["ops"]["waiting_tasks"]["recv"], 2 * connections as u64);
        eprintln!(
            "{backend}, {} tasks: ps {header:?}; tree --json snapshot {} µs",
            2 * connections + 1,
            json["runtime"]["snapshot_us"]
        );
        drop(server);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
