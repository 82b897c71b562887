//! What a task suspended on a socket awaits, as the task tree shows it: the same op name and
//! descriptor on both backends, whether io_uring serves it with a multishot op (pooled
//! receives, `incoming`) and epoll with an ordinary op.

#[macro_use]
mod common;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use common::{localhost, until};
use ringloop_net::{create_server, PooledBuf, Protocol, TcpListener, TcpStream, Transport};
use ringloop_runtime::{all_tasks, spawn, Awaiting, Task, TaskRef};

async fn settle() {
    for _ in 0..4 {
        ringloop_runtime::yield_now().await.unwrap();
    }
}

fn awaiting<T>(t: &Task<T>) -> Awaiting {
    t.as_ref()
        .awaiting()
        .unwrap_or_else(|| panic!("task {} awaits nothing", t.id()))
}

/// A connected pair: (ours, the peer's plain std socket).
async fn pair() -> (TcpStream, std::net::TcpStream) {
    let listener = std::net::TcpListener::bind(localhost()).unwrap();
    let addr = listener.local_addr().unwrap();
    let ours = TcpStream::connect(addr).await.unwrap();
    let (theirs, _) = listener.accept().unwrap();
    (ours, theirs)
}

both_backends! {
    async fn a_read_into_an_owned_buffer_is_a_recv_with_its_room() {
        let (ours, mut theirs) = pair().await;
        let fd = ours.as_raw_fd();
        let ours = Rc::new(ours);
        let s = ours.clone();
        let reader = spawn(async move { s.read(Vec::with_capacity(100)).await.0.unwrap() });
        settle().await;
        assert_eq!(
            awaiting(&reader),
            Awaiting::Io { op: "recv", fd: Some(fd), bytes: Some(100) }
        );
        theirs.write_all(b"hi").unwrap();
        assert_eq!(reader.await.unwrap(), 2);
    }
}

both_backends! {
    async fn a_pooled_receive_is_a_recv_on_both_backends() {
        let (ours, mut theirs) = pair().await;
        let fd = ours.as_raw_fd();
        let first = Rc::new(std::cell::Cell::new(None));
        let seen = first.clone();
        let reader = spawn(async move {
            let mut rx = ours.pooled_receiver();
            let n = rx.recv().await.unwrap().map(|b| b.len());
            seen.set(n);
            // A second wait on the same receiver, after data came.
            rx.recv().await.unwrap().map(|b| b.len())
        });
        settle().await;
        assert_eq!(awaiting(&reader), Awaiting::Io { op: "recv", fd: Some(fd), bytes: None });
        theirs.write_all(b"one").unwrap();
        // The second write only once the first is read: the kernel may join two writes.
        assert!(until(|| first.get().is_some()).await);
        assert_eq!(first.get(), Some(3));
        settle().await;
        assert_eq!(awaiting(&reader), Awaiting::Io { op: "recv", fd: Some(fd), bytes: None });
        theirs.write_all(b"two!").unwrap();
        assert_eq!(reader.await.unwrap(), Some(4));
    }
}

both_backends! {
    async fn an_accept_is_an_accept_on_the_listener_single_or_multishot() {
        let listener = Rc::new(TcpListener::bind(localhost()).unwrap());
        let addr = listener.local_addr().unwrap();
        let fd = listener.as_raw_fd();
        let l = listener.clone();
        let single = spawn(async move { l.accept().await.map(drop) });
        settle().await;
        assert_eq!(awaiting(&single), Awaiting::Io { op: "accept", fd: Some(fd), bytes: None });
        let _c1 = std::net::TcpStream::connect(addr).unwrap();
        single.await.unwrap().unwrap();

        let l = listener.clone();
        let multi = spawn(async move { l.incoming().next().await.map(drop) });
        settle().await;
        assert_eq!(awaiting(&multi), Awaiting::Io { op: "accept", fd: Some(fd), bytes: None });
        let _c2 = std::net::TcpStream::connect(addr).unwrap();
        multi.await.unwrap().unwrap();
    }
}

both_backends! {
    async fn a_send_to_a_peer_that_does_not_read_is_a_send_with_its_length() {
        let (ours, theirs) = pair().await;
        let fd = ours.as_raw_fd();
        let len = 64 << 20; // far more than the socket buffers hold
        let writer = spawn(async move { ours.write_all(vec![7u8; len]).await.0.is_ok() });
        assert!(until(|| matches!(writer.as_ref().awaiting(), Some(Awaiting::Io { op: "send", .. }))).await);
        match awaiting(&writer) {
            Awaiting::Io { op: "send", fd: Some(f), bytes: Some(n) } => {
                assert_eq!(f, fd);
                assert!(n > 0 && n as usize <= len, "{n}");
            }
            other => panic!("{other:?}"),
        }
        drop(theirs);
        assert!(!writer.await.unwrap(), "the peer went");
    }
}

both_backends! {
    async fn a_file_sent_to_a_peer_that_does_not_read_waits_on_a_poll_of_the_socket() {
        let (ours, theirs) = pair().await;
        let fd = ours.as_raw_fd();
        let path = std::env::temp_dir().join(format!(
            "ringloop-awaiting-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let len = 16 << 20; // far more than the socket buffers hold
        std::fs::write(&path, vec![5u8; len]).unwrap();
        let file = ringloop_runtime::SharedFd::new(std::os::fd::OwnedFd::from(
            std::fs::File::open(&path).unwrap(),
        ));
        std::fs::remove_file(&path).unwrap();
        let sender = spawn(async move { ours.send_file(&file, 0, len).await.is_ok() });
        let poll = Awaiting::Io { op: "poll", fd: Some(fd), bytes: None };
        assert!(until(|| sender.as_ref().awaiting() == Some(poll)).await);
        drop(theirs);
        assert!(!sender.await.unwrap(), "the peer went");
    }
}

both_backends! {
    async fn a_read_with_a_deadline_shows_the_read_not_the_deadline() {
        let (ours, _theirs) = pair().await;
        let fd = ours.as_raw_fd();
        let reader = spawn(async move {
            use ringloop_runtime::DeadlineExt;
            let (r, _) = ours.read(Vec::with_capacity(10)).timeout(std::time::Duration::from_secs(3600)).await;
            r.map(drop)
        });
        settle().await;
        assert_eq!(awaiting(&reader), Awaiting::Io { op: "recv", fd: Some(fd), bytes: Some(10) });
        reader.cancel();
        assert!(reader.await.is_err());
    }
}

/// An echo protocol: one dispatcher task drives every connection.
#[derive(Default)]
struct Echo(Option<Transport>);

impl Protocol for Echo {
    fn connection_made(&mut self, transport: &Transport) {
        self.0 = Some(transport.clone());
    }
    fn data_received(&mut self, data: PooledBuf) {
        self.0.as_ref().unwrap().write(data);
    }
}

both_backends! {
    async fn the_protocol_dispatcher_shows_how_many_connections_it_drives() {
        let server = create_server(Echo::default, localhost()).unwrap();
        let addr = server.local_addr();
        let clients: Vec<_> = (0..3).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
        let dispatcher = || -> Option<TaskRef> {
            all_tasks().into_iter().find(|t| t.name() == "ringloop.protocols")
        };
        assert!(until(|| dispatcher().and_then(|t| t.awaiting())
            == Some(Awaiting::Other { what: "protocol dispatcher", count: Some(3) })).await,
            "{:?}", dispatcher().map(|t| t.awaiting()));
        drop(clients);
        server.close();
    }
}
