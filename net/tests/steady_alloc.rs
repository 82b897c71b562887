//! A connection echoing messages in steady state allocates nothing per message on either
//! backend: the receive comes from the buffer pool, the send op's box is one the driver kept
//! from a finished op, and a wake moves a task reference. The same holds for a protocol
//! transport's connections (wakes list a key, detached sends reuse their boxes too).
//!
//! Counted with a global allocator that counts the allocations of the thread that asks; the
//! loop, the server and the client all run on that thread.

mod common;
#[path = "../../runtime/tests/common/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{start_counting, stop_counting};

use common::localhost;
use ringloop_net::{create_server, PooledBuf, Protocol, TcpListener, TcpStream, Transport};
use ringloop_runtime::spawn;

const WARM_UP: usize = 200;
const COUNTED: usize = 1000;

both_backends! {
    async fn an_echo_in_steady_state_allocates_nothing_per_message() {
        let listener = TcpListener::bind(localhost()).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = spawn(async move {
            let (conn, _) = listener.accept().await.unwrap();
            let mut rx = conn.pooled_receiver();
            while let Some(chunk) = rx.recv().await.unwrap() {
                let (r, _) = conn.write_all(chunk).await;
                r.unwrap();
            }
        });
        let client = TcpStream::connect(addr).await.unwrap();
        let mut msg = vec![0u8; 64];
        let mut reply = Vec::with_capacity(64);
        let mut allocations = 0;
        for round in 0..WARM_UP + COUNTED {
            if round == WARM_UP {
                start_counting();
            }
            msg.fill(round as u8);
            let (r, m) = client.write_all(msg).await;
            r.unwrap();
            msg = m;
            reply.clear();
            let (r, got) = client.read_exact(reply).await;
            r.unwrap();
            assert_eq!(got, msg, "round {round}");
            reply = got;
        }
        allocations += stop_counting();
        drop(client);
        server.await.unwrap();
        assert!(
            allocations == 0,
            "{COUNTED} echoed messages allocated {allocations} times"
        );
    }
}

/// Echoes what it receives, in the pool buffer it came in.
struct Echo(Option<Transport>);

impl Protocol for Echo {
    fn connection_made(&mut self, transport: &Transport) {
        self.0 = Some(transport.clone());
    }
    fn data_received(&mut self, data: PooledBuf) {
        if let Some(t) = &self.0 {
            t.write(data);
        }
    }
}

both_backends! {
    async fn a_protocol_echo_in_steady_state_allocates_nothing_per_message() {
        let server = create_server(|| Echo(None), localhost()).unwrap();
        // Three connections and the listener: the ring is not "nearly idle", so the sends
        // go through it (as a loaded server's do) rather than being tried as system calls.
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(server.local_addr()).await.unwrap());
        }
        let mut msgs = vec![vec![0u8; 64]; 3];
        let mut replies: Vec<Vec<u8>> = (0..3).map(|_| Vec::with_capacity(64)).collect();
        for round in 0..WARM_UP + COUNTED {
            if round == WARM_UP {
                start_counting();
            }
            for (client, msg) in clients.iter().zip(&mut msgs) {
                msg.fill(round as u8);
                let (r, m) = client.write_all(std::mem::take(msg)).await;
                r.unwrap();
                *msg = m;
            }
            for ((client, msg), reply) in clients.iter().zip(&msgs).zip(&mut replies) {
                let mut buf = std::mem::take(reply);
                buf.clear();
                let (r, got) = client.read_exact(buf).await;
                r.unwrap();
                assert_eq!(&got, msg, "round {round}");
                *reply = got;
            }
        }
        let allocations = stop_counting();
        server.close();
        assert!(
            allocations == 0,
            "{COUNTED} rounds of three echoed messages allocated {allocations} times"
        );
    }
}
