//! Sharded listening on both backends: `SO_REUSEPORT` listeners spread connections over every
//! shard, and the CPU steering program hands each connection to the shard on its CPU.
//!
//! Clients are plain threads with blocking std sockets (their reads have a timeout, as a bound
//! against a hang, never an assertion). Every server answers with the index of the shard that
//! serves the connection, one byte, then ends its write side: a client that reads to the end
//! learns who served it, and that only one did.

mod common;

use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{leaked_fds, localhost, open_fds, until};
use ringloop_net::{Server, ShardListeners, ShutdownReport, ShutdownSignal, Steering, TcpStream};
use ringloop_runtime::{current_stats, Backend, Placement, Runtime, Shard, Shards, ShardsBuilder};

/// A bound on a client's wait for an answer (against a hang; no test asserts a duration).
const PATIENCE: Duration = Duration::from_secs(30);

fn shards(backend: Backend, count: usize) -> ShardsBuilder {
    Shards::builder()
        .count(count)
        .placement(Placement::Unpinned)
        .runtime(move |_| Runtime::builder().backend(backend))
}

/// Per shard: how many connections its handlers served, and whether its server is up.
#[derive(Clone)]
struct Tally {
    served: Arc<[AtomicUsize]>,
    up: Arc<AtomicUsize>,
}

impl Tally {
    fn new(count: usize) -> Tally {
        Tally {
            served: (0..count).map(|_| AtomicUsize::new(0)).collect(),
            up: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn served(&self) -> Vec<usize> {
        self.served
            .iter()
            .map(|s| s.load(Ordering::SeqCst))
            .collect()
    }

    /// This shard's handler: says which shard serves the connection, ends its write side, and
    /// waits for the client to close (or for the cancel at the end of a shutdown's grace).
    fn handler(
        &self,
        index: usize,
    ) -> impl Fn(TcpStream, ShutdownSignal) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>
    {
        let tally = self.clone();
        move |stream: TcpStream, _: ShutdownSignal| {
            let tally = tally.clone();
            Box::pin(async move {
                tally.served[index].fetch_add(1, Ordering::SeqCst);
                if stream.write_all(vec![index as u8]).await.0.is_err() {
                    return;
                }
                let _ = stream.shutdown(Shutdown::Write);
                loop {
                    match stream.read(vec![0u8; 64]).await.0 {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
        }
    }
}

/// What a shard's main task gives back: its shutdown report, and the ops it still had in
/// flight once that was done (0: every op completed).
type Outcome = io::Result<(ShutdownReport, u64)>;

/// A shard's main task: marks the server up, serves until the set is stopped (this task is
/// cancelled), shuts down with a short grace, and waits (bounded) until no op of this shard
/// is in flight.
async fn serve_until_stopped(server: Server, up: Arc<AtomicUsize>) -> Outcome {
    up.fetch_add(1, Ordering::SeqCst);
    let _stopped = server.wait_closed().await;
    let grace = Duration::from_millis(20);
    let report = server.shutdown_with(grace, grace).await?;
    until(|| current_stats().ops_in_flight == 0).await;
    Ok((report, current_stats().ops_in_flight))
}

/// A client: connects, reads to the end, and keeps the socket open (the server's handler
/// waits for it to close). The bytes read say which shard served it.
fn client(addr: SocketAddr) -> io::Result<(std::net::TcpStream, Vec<u8>)> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    let mut got = Vec::new();
    stream.read_to_end(&mut got)?;
    Ok((stream, got))
}

/// The shard that served a client: exactly one answer, one byte.
fn server_of(got: &[u8]) -> usize {
    assert_eq!(
        got.len(),
        1,
        "answered by {got:?}, not by exactly one shard"
    );
    usize::from(got[0])
}

/// Joins the set and checks every shard shut down with nothing left in flight; the reports.
fn join_clean(shards: Shards<Outcome>) -> Vec<ShutdownReport> {
    shards
        .join()
        .unwrap()
        .into_iter()
        .enumerate()
        .map(|(i, outcome)| {
            let (report, in_flight) = outcome.unwrap();
            assert_eq!(in_flight, 0, "shard {i} still had ops in flight");
            report
        })
        .collect()
}

/// The CPUs this thread may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is live and of the size passed; pid 0 is this thread.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(r, 0, "{}", io::Error::last_os_error());
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

fn pin_to(cpu: usize) {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` comes from the affinity mask, so it is below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is live and of the size passed; pid 0 is this thread.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    assert_eq!(r, 0, "{}", io::Error::last_os_error());
}

#[test]
fn reuseport_spreads_connections_over_every_shard() {
    let _serial = common::serial();
    for backend in common::backends() {
        let before = open_fds();
        let listeners = ShardListeners::bind(localhost(), 2).unwrap();
        let addr = listeners.local_addr();
        let tally = Tally::new(2);
        let set = shards(backend, 2)
            .start({
                let (listeners, tally) = (listeners.clone(), tally.clone());
                move |shard: Shard| {
                    let (listeners, tally) = (listeners.clone(), tally.clone());
                    async move {
                        let server = listeners.serve(&shard, tally.handler(shard.index()))?;
                        serve_until_stopped(server, tally.up.clone()).await
                    }
                }
            })
            .unwrap();
        // The kernel hashes each connection's ports: with 200 source ports, a shard left with
        // none has a probability of 2^-199.
        let mut by_shard = [0; 2];
        for _ in 0..200 {
            let (stream, got) = client(addr).unwrap();
            by_shard[server_of(&got)] += 1;
            drop(stream);
        }
        assert!(by_shard.iter().all(|&n| n > 0), "{backend}: {by_shard:?}");
        set.stop();
        let reports = join_clean(set);
        assert_eq!(tally.served(), by_shard.to_vec(), "{backend}");
        let ended: usize = reports.iter().map(ShutdownReport::connections).sum();
        assert!(ended <= 200);
        drop(listeners);
        assert_eq!(leaked_fds(&before), Vec::<String>::new(), "{backend}");
    }
}

#[test]
fn cpu_steering_hands_each_connection_to_the_shard_on_its_cpu() {
    let _serial = common::serial();
    // One shard per CPU this process may use (at most 4), each pinned to its CPU.
    let cpus: Vec<usize> = allowed_cpus().into_iter().take(4).collect();
    let count = cpus.len();
    for backend in common::backends() {
        let before = open_fds();
        let listeners =
            ShardListeners::bind_with(localhost(), count, Steering::Cpu(cpus.clone())).unwrap();
        let addr = listeners.local_addr();
        let tally = Tally::new(count);
        let set = shards(backend, count)
            .placement(Placement::Cpus(cpus.clone()))
            .start({
                let (listeners, tally) = (listeners.clone(), tally.clone());
                move |shard: Shard| {
                    let (listeners, tally) = (listeners.clone(), tally.clone());
                    async move {
                        let server = listeners.serve(&shard, tally.handler(shard.index()))?;
                        serve_until_stopped(server, tally.up.clone()).await
                    }
                }
            })
            .unwrap();
        // A client pinned to CPU c sends its SYN from c, and loopback processes it there (the
        // packet is queued to that CPU's backlog and handled in its softirq): the program
        // picks the listener of the shard on c, every time.
        let clients: Vec<_> = cpus
            .iter()
            .enumerate()
            .map(|(index, &cpu)| {
                thread::spawn(move || {
                    pin_to(cpu);
                    for _ in 0..25 {
                        let (_stream, got) = client(addr).unwrap();
                        assert_eq!(server_of(&got), index, "a client on CPU {cpu}");
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        assert_eq!(tally.served(), vec![25; count], "{backend}");
        set.stop();
        join_clean(set);
        drop(listeners);
        assert_eq!(leaked_fds(&before), Vec::<String>::new(), "{backend}");
    }
}

#[test]
fn groups_check_their_arguments_and_close_what_they_made_on_errors() {
    let _serial = common::serial();
    let before = open_fds();
    let invalid = |e: io::Error| assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    invalid(ShardListeners::bind(localhost(), 0).unwrap_err());
    invalid(ShardListeners::bind_with(localhost(), 2, Steering::Cpu(vec![0])).unwrap_err());

    // A port taken without SO_REUSEPORT: the real errno, and the sockets made are closed.
    let taken = std::net::TcpListener::bind(localhost()).unwrap();
    let e = ShardListeners::bind(taken.local_addr().unwrap(), 3).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EADDRINUSE), "{e}");
    drop(taken);

    let listeners = ShardListeners::bind(localhost(), 2).unwrap();
    assert_eq!(listeners.count(), 2);
    let second = listeners.clone();
    Runtime::new().unwrap().block_on(async move {
        let l = second.take(1).unwrap();
        assert_eq!(l.local_addr().unwrap(), second.local_addr());
        invalid(second.take(1).unwrap_err());
        invalid(second.take(2).unwrap_err());
    });
    drop(listeners);
    assert_eq!(leaked_fds(&before), Vec::<String>::new());
}

#[test]
fn a_set_of_another_size_is_refused() {
    let _serial = common::serial();
    let before = open_fds();
    let listeners = ShardListeners::bind(localhost(), 3).unwrap();
    let set = shards(Backend::Epoll, 2)
        .start({
            let listeners = listeners.clone();
            move |shard: Shard| {
                let listeners = listeners.clone();
                async move {
                    let noop = |_: TcpStream, _: ShutdownSignal| async {};
                    listeners
                        .serve(&shard, noop)
                        .map(|_| ())
                        .unwrap_err()
                        .kind()
                }
            }
        })
        .unwrap();
    for kind in set.join().unwrap() {
        assert_eq!(kind, io::ErrorKind::InvalidInput);
    }
    drop(listeners);
    assert_eq!(leaked_fds(&before), Vec::<String>::new());
}
