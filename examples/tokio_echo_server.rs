//! The baseline every ringloop benchmark compares against: an echo server on tokio's
//! `current_thread` runtime, written the usual way (a task per connection with a 4 KiB buffer).
//!
//! ```text
//! cargo run --release --example tokio_echo_server -- --addr 127.0.0.1:7001
//! ```

use std::net::SocketAddr;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser, Debug)]
#[command(about = "tokio current_thread echo server (baseline)")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7001")]
    addr: SocketAddr,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(args.addr)?;
        let listener = socket.listen(4096)?;
        println!(
            "listening on {} (tokio current_thread)",
            listener.local_addr()?
        );
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async move {
                loop {
                    let (mut stream, _) = match listener.accept().await {
                        Ok(c) => c,
                        Err(e) => {
                            eprintln!("accept failed: {e}");
                            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    tokio::task::spawn_local(async move {
                        let mut buf = vec![0u8; 4096];
                        loop {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    if stream.write_all(&buf[..n]).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    });
                }
            })
            .await
    })
}
