//! A simple echo client on ringloop: N connections doing ping-pong of S-byte messages for D
//! seconds, verifying every echoed byte; prints messages/s. (The full load generator with
//! latency percentiles and the side-by-side comparison is `examples/c10k.rs`.)
//!
//! ```text
//! cargo run --release --example echo_client -- --addr 127.0.0.1:7000 --connections 1000 --size 64 --seconds 5
//! ```

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Parser;
use ringloop::net::TcpStream;
use ringloop::{gather, sleep, spawn, Runtime};

#[derive(Parser, Debug)]
#[command(about = "ringloop echo client")]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:7000")]
    addr: SocketAddr,
    /// Concurrent connections.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    let rt = Runtime::new()?;
    let messages = Rc::new(Cell::new(0u64));
    let errors = Rc::new(Cell::new(0u64));
    let stop = Rc::new(Cell::new(false));
    let start = Instant::now();
    rt.block_on(async {
        let mut clients = Vec::new();
        for id in 0..args.connections {
            let (messages, errors, stop) = (messages.clone(), errors.clone(), stop.clone());
            let (addr, size) = (args.addr, args.size);
            clients.push(spawn(async move {
                let stream = match TcpStream::connect(addr).await {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("connect {id}: {e}");
                        errors.set(errors.get() + 1);
                        return;
                    }
                };
                let _ = stream.set_nodelay(true);
                let msg: Vec<u8> = (0..size).map(|i| (i + id) as u8).collect();
                let mut out = msg.clone();
                let mut back = Vec::with_capacity(size);
                while !stop.get() {
                    let (r, o) = stream.write_all(out).await;
                    out = o;
                    let (r2, b) = stream.read_exact(back).await;
                    back = b;
                    if r.is_err() || r2.is_err() || back != msg {
                        errors.set(errors.get() + 1);
                        return;
                    }
                    back.clear();
                    messages.set(messages.get() + 1);
                }
            }));
        }
        sleep(Duration::from_secs_f64(args.seconds)).await.ok();
        stop.set(true);
        gather(clients).await.ok();
    });
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{} connections, {} B: {:.0} msg/s, {} errors",
        args.connections,
        args.size,
        messages.get() as f64 / elapsed,
        errors.get()
    );
    Ok(())
}
