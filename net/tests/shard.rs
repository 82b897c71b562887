//! Sharded listening on both backends: `SO_REUSEPORT` listeners spread connections over every
//! shard; the CPU steering program hands each connection to the shard on its CPU; the acceptor
//! hands every connection to exactly one shard, by round robin or least connections, and
//! leaks no descriptor when a shard stops in the middle of a hand-over; and stopping every
//! shard with ops in flight leaves nothing in flight and no descriptor open.
//!
//! Clients are plain threads with blocking std sockets (their reads have a timeout, as a bound
//! against a hang, never an assertion). Every server answers with the index of the shard that
//! serves the connection, one byte, then ends its write side: a client that reads to the end
//! learns who served it, and that only one did.

mod common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use common::{leaked_fds, localhost, open_fds, until};
use ringloop_net::{
    Distribution, Server, ShardAcceptor, ShardListeners, ShutdownReport, ShutdownSignal, Steering,
    TcpStream,
};
use ringloop_runtime::{current_stats, Backend, Placement, Runtime, Shard, Shards, ShardsBuilder};

/// A bound on a client's wait for an answer (against a hang; no test asserts a duration).
const PATIENCE: Duration = Duration::from_secs(30);

/// Longer than any test may take: a grace that only a bug would reach.
const NEVER: Duration = Duration::from_secs(3600);

fn shards(backend: Backend, count: usize) -> ShardsBuilder {
    Shards::builder()
        .count(count)
        .placement(Placement::Unpinned)
        .runtime(move |_| Runtime::builder().backend(backend))
}

/// Per shard: how many connections its handlers served; how many servers are up, and how
/// many have begun their shutdown (with `grace`, after which the handlers still running are
/// cancelled; they end at once, so they are never dropped).
#[derive(Clone)]
struct Tally {
    served: Arc<[AtomicUsize]>,
    up: Arc<AtomicUsize>,
    stopping: Arc<AtomicUsize>,
    grace: Duration,
}

impl Tally {
    /// A short grace: the handlers that still wait for their clients are cancelled at its end.
    fn new(count: usize) -> Tally {
        Self::with_grace(count, Duration::from_millis(20))
    }

    fn with_grace(count: usize, grace: Duration) -> Tally {
        Tally {
            served: (0..count).map(|_| AtomicUsize::new(0)).collect(),
            up: Arc::new(AtomicUsize::new(0)),
            stopping: Arc::new(AtomicUsize::new(0)),
            grace,
        }
    }

    fn served(&self) -> Vec<usize> {
        self.served
            .iter()
            .map(|s| s.load(Ordering::SeqCst))
            .collect()
    }

    /// Waits (bounded) until `n` shards serve.
    fn wait_up(&self, n: usize) {
        assert!(
            wait_until(|| self.up.load(Ordering::SeqCst) >= n),
            "the shards did not start serving"
        );
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

/// Polls `cond` from a plain thread, for a few seconds at most.
fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..10_000 {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(1));
    }
    cond()
}

/// What a shard's main task gives back: its shutdown report, and the ops it still had in
/// flight once that was done (0: every op completed).
type Outcome = io::Result<(ShutdownReport, u64)>;

/// A shard's main task: marks the server up, serves until the set is stopped (this task is
/// cancelled), shuts down with the tally's grace, and waits (bounded) until no op of this
/// shard is in flight.
///
/// The cancelled handlers are never dropped (the cancel grace is [`NEVER`]): each ends at its
/// next await, whenever its loop gets to run it, so the report says `cancelled` however late.
async fn serve_until_stopped(server: Server, tally: Tally) -> Outcome {
    tally.up.fetch_add(1, Ordering::SeqCst);
    let _stopped = server.wait_closed().await;
    // Closed (no more connections; what the kernel queued is taken) before the tally says
    // so, and the shutdown begins before this task next yields, so before any handler can
    // end within it.
    server.close();
    tally.stopping.fetch_add(1, Ordering::SeqCst);
    let report = server.shutdown_with(tally.grace, NEVER).await?;
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

/// A client that sends one byte first (the handlers read and ignore it), for connections made
/// while the servers close: a handshake that completes on one CPU while the listener closes
/// on another can be dropped by the kernel without a reset (it counts a listen drop), leaving
/// the client connected on its side only. The byte draws the reset; a client that only waited
/// to read would wait for ever.
fn probing_client(addr: SocketAddr) -> io::Result<Vec<u8>> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    stream.write_all(b"?")?;
    let mut got = Vec::new();
    stream.read_to_end(&mut got)?;
    Ok(got)
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
                        serve_until_stopped(server, tally).await
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
                        serve_until_stopped(server, tally).await
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
    for backend in common::backends() {
        let before = open_fds();
        let invalid = |e: io::Error| assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        invalid(ShardListeners::bind(localhost(), 0).unwrap_err());
        invalid(ShardListeners::bind_with(localhost(), 2, Steering::Cpu(vec![0])).unwrap_err());
        invalid(ShardAcceptor::bind(localhost(), 0, Distribution::RoundRobin).unwrap_err());

        // A port taken without SO_REUSEPORT: the real errno, and the sockets made are closed.
        let taken = std::net::TcpListener::bind(localhost()).unwrap();
        let e = ShardListeners::bind(taken.local_addr().unwrap(), 3).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EADDRINUSE), "{e}");
        drop(taken);

        let listeners = ShardListeners::bind(localhost(), 2).unwrap();
        assert_eq!(listeners.count(), 2);
        let second = listeners.clone();
        common::runtime(backend).block_on(async move {
            let l = second.take(1).unwrap();
            assert_eq!(l.local_addr().unwrap(), second.local_addr());
            invalid(second.take(1).unwrap_err());
            invalid(second.take(2).unwrap_err());
        });
        drop(listeners);
        assert_eq!(leaked_fds(&before), Vec::<String>::new(), "{backend}");
    }
}

#[test]
fn each_shard_serves_its_group_once_and_only_a_set_of_its_size() {
    let _serial = common::serial();
    let noop = |_: TcpStream, _: ShutdownSignal| async {};
    for backend in common::backends() {
        let before = open_fds();
        // Three listeners and an acceptor for three shards, served by a set of two: refused.
        let listeners = ShardListeners::bind(localhost(), 3).unwrap();
        let acceptor = ShardAcceptor::bind(localhost(), 3, Distribution::RoundRobin).unwrap();
        let set = shards(backend, 2)
            .start({
                let (listeners, acceptor) = (listeners.clone(), acceptor.clone());
                move |shard: Shard| {
                    let (listeners, acceptor) = (listeners.clone(), acceptor.clone());
                    async move {
                        let a = listeners.serve(&shard, noop).map(|_| ()).unwrap_err();
                        let b = acceptor.serve(&shard, noop).map(|_| ()).unwrap_err();
                        (a.kind(), b.kind())
                    }
                }
            })
            .unwrap();
        let refused = (io::ErrorKind::InvalidInput, io::ErrorKind::InvalidInput);
        assert_eq!(set.join().unwrap(), vec![refused; 2], "{backend}");
        drop((listeners, acceptor));

        // The right size: each shard serves once; a second call is refused.
        let listeners = ShardListeners::bind(localhost(), 2).unwrap();
        let acceptor = ShardAcceptor::bind(localhost(), 2, Distribution::RoundRobin).unwrap();
        let set = shards(backend, 2)
            .start({
                let (listeners, acceptor) = (listeners.clone(), acceptor.clone());
                move |shard: Shard| {
                    let (listeners, acceptor) = (listeners.clone(), acceptor.clone());
                    async move {
                        let first = (
                            listeners.serve(&shard, noop).unwrap(),
                            acceptor.serve(&shard, noop).unwrap(),
                        );
                        let a = listeners.serve(&shard, noop).map(|_| ()).unwrap_err();
                        let b = acceptor.serve(&shard, noop).map(|_| ()).unwrap_err();
                        first.0.shutdown(NEVER).await.unwrap();
                        first.1.shutdown(NEVER).await.unwrap();
                        (a.kind(), b.kind())
                    }
                }
            })
            .unwrap();
        assert_eq!(set.join().unwrap(), vec![refused; 2], "{backend}");
        drop((listeners, acceptor));
        assert_eq!(leaked_fds(&before), Vec::<String>::new(), "{backend}");
    }
}

/// Starts `count` shards serving `acceptor`, each main task as [`serve_until_stopped`]
/// (shard `hold`, if any, first waits at `gate` on its thread and then ends at once).
fn start_acceptor_set(
    backend: Backend,
    acceptor: &ShardAcceptor,
    tally: &Tally,
    hold: Option<(usize, Arc<Barrier>)>,
) -> Shards<Outcome> {
    let count = acceptor.count();
    shards(backend, count)
        .start({
            let (acceptor, tally) = (acceptor.clone(), tally.clone());
            move |shard: Shard| {
                let (acceptor, tally, hold) = (acceptor.clone(), tally.clone(), hold.clone());
                async move {
                    let index = shard.index();
                    let server = acceptor.serve(&shard, tally.handler(index))?;
                    match hold {
                        Some((held, gate)) if held == index => {
                            tally.up.fetch_add(1, Ordering::SeqCst);
                            // Blocks this shard's loop, so what is handed over stays in its
                            // inbox until the runtime goes.
                            gate.wait();
                            Ok((ShutdownReport::default(), 0))
                        }
                        _ => serve_until_stopped(server, tally).await,
                    }
                }
            }
        })
        .unwrap()
}

#[test]
fn the_acceptor_hands_every_connection_over_once_in_turn() {
    let _serial = common::serial();
    for backend in common::backends() {
        let before = open_fds();
        let acceptor = ShardAcceptor::bind(localhost(), 3, Distribution::RoundRobin).unwrap();
        let addr = acceptor.local_addr();
        let tally = Tally::new(3);
        let set = start_acceptor_set(backend, &acceptor, &tally, None);
        tally.wait_up(3);
        // One connection at a time: connection k goes to shard k % 3, the acceptor included.
        for k in 0..30 {
            let (stream, got) = client(addr).unwrap();
            assert_eq!(server_of(&got), k % 3, "{backend}: connection {k}");
            drop(stream);
        }
        assert_eq!(acceptor.assigned_total(), vec![10, 10, 10], "{backend}");
        // Each handler ends once it sees its client's end of stream.
        assert!(
            wait_until(|| acceptor.connections() == vec![0, 0, 0]),
            "{backend}: {:?}",
            acceptor.connections()
        );
        set.stop();
        let reports = join_clean(set);
        // Each connection was served once, by the shard it was assigned to.
        assert_eq!(tally.served(), vec![10, 10, 10], "{backend}");
        for r in reports {
            assert_eq!(r, ShutdownReport::default(), "{backend}");
        }
        drop(acceptor);
        assert_eq!(leaked_fds(&before), Vec::<String>::new(), "{backend}");
    }
}

#[test]
fn least_connections_fills_the_emptiest_shard_first() {
    let _serial = common::serial();
    for backend in common::backends() {
        let before = open_fds();
        let acceptor = ShardAcceptor::bind(localhost(), 3, Distribution::LeastConnections).unwrap();
        let addr = acceptor.local_addr();
        let tally = Tally::new(3);
        let set = start_acceptor_set(backend, &acceptor, &tally, None);
        tally.wait_up(3);
        // Equal loads: each in turn. The connections stay open.
        let mut open: Vec<(usize, std::net::TcpStream)> = (0..6)
            .map(|_| {
                let (stream, got) = client(addr).unwrap();
                (server_of(&got), stream)
            })
            .collect();
        let order: Vec<usize> = open.iter().map(|(s, _)| *s).collect();
        assert_eq!(order, vec![0, 1, 2, 0, 1, 2], "{backend}");
        assert_eq!(acceptor.connections(), vec![2, 2, 2], "{backend}");
        // Shard 1's clients leave; once its handlers have ended, it is the emptiest.
        open.retain(|(s, _)| *s != 1);
        assert!(
            wait_until(|| acceptor.connections() == vec![2, 0, 2]),
            "{backend}: {:?}",
            acceptor.connections()
        );
        let next: Vec<usize> = (0..3)
            .map(|_| {
                let (stream, got) = client(addr).unwrap();
                let s = server_of(&got);
                open.push((s, stream));
                s
            })
            .collect();
        assert_eq!(next, vec![1, 1, 2], "{backend}");
        assert_eq!(acceptor.connections(), vec![2, 2, 3], "{backend}");
        set.stop();
        join_clean(set);
        drop(open);
        assert_eq!(tally.served(), vec![2, 4, 3], "{backend}");
        assert_eq!(acceptor.connections(), vec![0, 0, 0], "{backend}");
        drop(acceptor);
        assert_eq!(leaked_fds(&before), Vec::<String>::new(), "{backend}");
    }
}

#[test]
fn a_shard_that_stops_in_the_middle_of_a_hand_over_leaks_no_descriptor() {
    let _serial = common::serial();
    for backend in common::backends() {
        let before = open_fds();
        let acceptor = ShardAcceptor::bind(localhost(), 2, Distribution::RoundRobin).unwrap();
        let addr = acceptor.local_addr();
        let tally = Tally::new(2);
        let gate = Arc::new(Barrier::new(2));
        let set = start_acceptor_set(backend, &acceptor, &tally, Some((1, gate.clone())));
        tally.wait_up(2);

        // 1. Ten connections, in turn: five to shard 0, served; five into shard 1's inbox,
        //    whose loop is blocked.
        let clients: Vec<_> = (0..10)
            .map(|_| {
                let stream = std::net::TcpStream::connect(addr).unwrap();
                stream.set_read_timeout(Some(PATIENCE)).unwrap();
                stream
            })
            .collect();
        assert!(
            wait_until(|| acceptor.assigned_total() == vec![5, 5]),
            "{backend}: {:?}",
            acceptor.assigned_total()
        );
        assert_eq!(
            acceptor.connections()[1],
            5,
            "{backend}: waiting in the inbox"
        );

        // 2. Shard 1's main task ends, and its runtime goes with what it was handed.
        gate.wait();
        assert!(wait_until(|| set.handle(1).is_closed()), "{backend}");
        assert!(
            wait_until(|| acceptor.connections()[1] == 0),
            "{backend}: {:?}",
            acceptor.connections()
        );

        // 3. Every connection was served once, or closed unserved; never by two shards.
        let mut answers = [0, 0];
        let mut unserved = 0;
        for (k, mut stream) in clients.into_iter().enumerate() {
            let mut got = Vec::new();
            match stream.read_to_end(&mut got) {
                Ok(_) if got.is_empty() => unserved += 1,
                Ok(_) => answers[server_of(&got)] += 1,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => unserved += 1,
                Err(e) => panic!("{backend}: connection {k}: {e}"),
            }
            if k % 2 == 0 {
                assert_eq!(got, [0], "{backend}: shard 0 serves connection {k}");
            }
        }
        assert_eq!(answers[0], 5, "{backend}");
        assert_eq!(answers[1] + unserved, 5, "{backend}");
        assert_eq!(tally.served()[1], answers[1], "{backend}");

        // 4. Shard 1's inbox is closed: the acceptor gives everything to shard 0 now.
        for k in 0..4 {
            let (_stream, got) = client(addr).unwrap();
            assert_eq!(
                server_of(&got),
                0,
                "{backend}: connection {k} after the stop"
            );
        }
        assert_eq!(acceptor.assigned_total(), vec![9, 5], "{backend}");

        set.stop();
        join_clean(set);
        assert_eq!(tally.served()[0], 9, "{backend}");
        assert_eq!(acceptor.connections(), vec![0, 0], "{backend}");
        drop(acceptor);
        assert_eq!(leaked_fds(&before), Vec::<String>::new(), "{backend}");
    }
}

#[test]
fn a_stalled_shard_holds_at_most_its_inbox_bound_and_the_others_serve_the_rest() {
    let _serial = common::serial();
    for backend in common::backends() {
        let before = open_fds();
        let acceptor = ShardAcceptor::builder(2)
            .inbox_bound(2)
            .bind(localhost())
            .unwrap();
        let addr = acceptor.local_addr();
        let tally = Tally::new(2);
        let gate = Arc::new(Barrier::new(2));
        let set = start_acceptor_set(backend, &acceptor, &tally, Some((1, gate.clone())));
        tally.wait_up(2);

        // Round robin would give shard 1, whose loop is blocked, five of ten; its inbox takes
        // two, and the acceptor serves the rest itself.
        let clients: Vec<_> = (0..10)
            .map(|_| {
                let stream = std::net::TcpStream::connect(addr).unwrap();
                stream.set_read_timeout(Some(PATIENCE)).unwrap();
                stream
            })
            .collect();
        assert!(
            wait_until(|| acceptor.assigned_total().iter().sum::<u64>() == 10),
            "{backend}: {:?}",
            acceptor.assigned_total()
        );
        assert_eq!(acceptor.assigned_total(), vec![8, 2], "{backend}");
        assert!(
            wait_until(|| tally.served()[0] == 8),
            "{backend}: {:?}",
            tally.served()
        );

        // Shard 1 ends without serving (its runtime closes what waited in its inbox).
        gate.wait();
        assert!(wait_until(|| set.handle(1).is_closed()), "{backend}");
        let (mut answered, mut unserved) = (0, 0);
        for (k, mut stream) in clients.into_iter().enumerate() {
            let mut got = Vec::new();
            match stream.read_to_end(&mut got) {
                Ok(_) if got.is_empty() => unserved += 1,
                Ok(_) => {
                    assert_eq!(server_of(&got), 0, "{backend}: connection {k}");
                    answered += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => unserved += 1,
                Err(e) => panic!("{backend}: connection {k}: {e}"),
            }
        }
        assert_eq!((answered, unserved), (8, 2), "{backend}");
        set.stop();
        join_clean(set);
        assert_eq!(acceptor.connections(), vec![0, 0], "{backend}");
        drop(acceptor);
        assert_eq!(leaked_fds(&before), Vec::<String>::new(), "{backend}");
    }
}

#[test]
fn another_shard_can_be_the_acceptor() {
    let _serial = common::serial();
    let e = ShardAcceptor::builder(2)
        .acceptor_shard(2)
        .bind(localhost())
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    for backend in common::backends() {
        let before = open_fds();
        let acceptor = ShardAcceptor::builder(3)
            .acceptor_shard(2)
            .bind(localhost())
            .unwrap();
        assert_eq!(acceptor.acceptor_shard(), 2);
        let addr = acceptor.local_addr();
        let tally = Tally::new(3);
        let set = start_acceptor_set(backend, &acceptor, &tally, None);
        tally.wait_up(3);
        // In turn from the accepting shard: 2, 0, 1, 2, ...
        for k in 0..9 {
            let (stream, got) = client(addr).unwrap();
            assert_eq!(server_of(&got), (2 + k) % 3, "{backend}: connection {k}");
            drop(stream);
        }
        assert_eq!(acceptor.assigned_total(), vec![3, 3, 3], "{backend}");
        assert!(
            wait_until(|| acceptor.connections() == vec![0, 0, 0]),
            "{backend}: {:?}",
            acceptor.connections()
        );
        set.stop();
        join_clean(set);
        assert_eq!(tally.served(), vec![3, 3, 3], "{backend}");
        drop(acceptor);
        assert_eq!(leaked_fds(&before), Vec::<String>::new(), "{backend}");
    }
}

#[test]
fn a_unix_acceptor_hands_every_connection_over_once_and_removes_its_file() {
    use ringloop_net::{UnixShardAcceptor, UnixStream};
    let _serial = common::serial();
    for backend in common::backends() {
        let before = open_fds();
        let dir = std::env::temp_dir().join(format!("ringloop-shard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{backend}.sock"));
        let _ = std::fs::remove_file(&path);
        let acceptor = UnixShardAcceptor::bind(&path, 2, Distribution::RoundRobin).unwrap();
        assert_eq!(acceptor.local_path(), Some(path.as_path()));
        let e = UnixShardAcceptor::bind(&path, 2, Distribution::RoundRobin).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EADDRINUSE), "{backend}: {e}");
        let tally = Tally::new(2);
        let set = shards(backend, 2)
            .start({
                let (acceptor, tally) = (acceptor.clone(), tally.clone());
                move |shard: Shard| {
                    let (acceptor, tally) = (acceptor.clone(), tally.clone());
                    async move {
                        let index = shard.index();
                        let served = tally.clone();
                        let server =
                            acceptor.serve(&shard, move |s: UnixStream, _: ShutdownSignal| {
                                let served = served.clone();
                                async move {
                                    served.served[index].fetch_add(1, Ordering::SeqCst);
                                    let _ = s.write_all(vec![index as u8]).await;
                                }
                            })?;
                        serve_until_stopped(server, tally).await
                    }
                }
            })
            .unwrap();
        tally.wait_up(2);
        for k in 0..10 {
            let mut stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
            stream.set_read_timeout(Some(PATIENCE)).unwrap();
            let mut got = Vec::new();
            stream.read_to_end(&mut got).unwrap();
            assert_eq!(server_of(&got), k % 2, "{backend}: connection {k}");
        }
        assert_eq!(acceptor.assigned_total(), vec![5, 5], "{backend}");
        set.stop();
        join_clean(set);
        assert_eq!(tally.served(), vec![5, 5], "{backend}");
        assert!(
            path.exists(),
            "{backend}: the file stays while the acceptor does"
        );
        drop(acceptor);
        assert!(!path.exists(), "{backend}: the file goes with the acceptor");
        let _ = std::fs::remove_dir(&dir);
        assert_eq!(leaked_fds(&before), Vec::<String>::new(), "{backend}");
    }
}

/// How a set of shards listens, for the tests that run on both kinds.
#[derive(Clone, Copy, Debug)]
enum Mode {
    ReusePort,
    Acceptor,
}

/// Starts 2 shards listening by `mode`: each serves with [`Tally::handler`] until stopped.
fn start_set(backend: Backend, mode: Mode, tally: &Tally) -> (Shards<Outcome>, SocketAddr) {
    let tally = tally.clone();
    match mode {
        Mode::ReusePort => {
            let listeners = ShardListeners::bind(localhost(), 2).unwrap();
            let addr = listeners.local_addr();
            let set = shards(backend, 2)
                .start(move |shard: Shard| {
                    let (listeners, tally) = (listeners.clone(), tally.clone());
                    async move {
                        let server = listeners.serve(&shard, tally.handler(shard.index()))?;
                        serve_until_stopped(server, tally).await
                    }
                })
                .unwrap();
            (set, addr)
        }
        Mode::Acceptor => {
            let acceptor = ShardAcceptor::bind(localhost(), 2, Distribution::RoundRobin).unwrap();
            let addr = acceptor.local_addr();
            (start_acceptor_set(backend, &acceptor, &tally, None), addr)
        }
    }
}

#[test]
fn stopping_every_shard_with_ops_in_flight_leaves_nothing_behind() {
    let _serial = common::serial();
    for backend in common::backends() {
        for mode in [Mode::ReusePort, Mode::Acceptor] {
            let before = open_fds();
            let tally = Tally::new(2);
            let (set, addr) = start_set(backend, mode, &tally);
            tally.wait_up(2);
            // Forty open connections: every handler waits in a receive, on both shards (by
            // turns with the acceptor; by the hash with SO_REUSEPORT, where a shard left
            // with none has a probability of 2^-39).
            let clients: Vec<_> = (0..40).map(|_| client(addr).unwrap()).collect();
            let mut by_shard = [0; 2];
            for (_, got) in &clients {
                by_shard[server_of(got)] += 1;
            }
            assert!(
                by_shard.iter().all(|&n| n > 0),
                "{backend} {mode:?}: {by_shard:?}"
            );
            let stats = set.stats().unwrap();
            for (i, s) in stats.per_shard.iter().enumerate() {
                assert!(s.ops_in_flight > 0, "{backend} {mode:?}: shard {i}: {s:?}");
            }

            // Stop: each shard's grace ends, its handlers are cancelled in their receives,
            // and its ops complete before it returns.
            set.stop();
            let reports = join_clean(set);
            for (i, r) in reports.iter().enumerate() {
                assert_eq!(
                    r.connections(),
                    by_shard[i],
                    "{backend} {mode:?}: shard {i}"
                );
                assert_eq!(r.cancelled, by_shard[i], "{backend} {mode:?}: shard {i}");
            }
            // The clients see the end of the stream: the handlers ended their sides.
            for (mut stream, _) in clients {
                let mut rest = Vec::new();
                assert_eq!(stream.read_to_end(&mut rest).unwrap(), 0);
            }
            assert_eq!(
                leaked_fds(&before),
                Vec::<String>::new(),
                "{backend} {mode:?}"
            );
        }
    }
}

#[test]
fn stopping_while_connections_keep_coming_serves_each_once_or_closes_it() {
    let _serial = common::serial();
    for backend in common::backends() {
        for mode in [Mode::ReusePort, Mode::Acceptor] {
            let before = open_fds();
            let tally = Tally::new(2);
            let (set, addr) = start_set(backend, mode, &tally);
            tally.wait_up(2);
            // A client connects over and over (each connection closed once answered) while
            // the set stops, until connections are refused. It says something first, so a
            // connection lost in a listener's close is reset rather than left hanging.
            let stop = Arc::new(AtomicBool::new(false));
            let load = thread::spawn({
                let stop = stop.clone();
                move || {
                    let (mut answered, mut unserved) = (0, 0);
                    for _ in 0..2_000 {
                        match probing_client(addr) {
                            Ok(got) if got.is_empty() => unserved += 1,
                            Ok(got) => {
                                server_of(&got);
                                answered += 1;
                            }
                            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break,
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                                ) =>
                            {
                                unserved += 1
                            }
                            Err(e) => panic!("{e}"),
                        }
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                    }
                    (answered, unserved)
                }
            });
            assert!(wait_until(|| tally.served().iter().sum::<usize>() >= 20));
            set.stop();
            let reports = join_clean(set);
            stop.store(true, Ordering::SeqCst);
            let (answered, _unserved) = load.join().unwrap();
            // Every answer came from one handler, and every handler's connection was one
            // the client saw answered (a handler may have answered a client that had gone).
            assert!(tally.served().iter().sum::<usize>() >= answered);
            let ended: usize = reports.iter().map(ShutdownReport::connections).sum();
            assert!(ended <= tally.served().iter().sum::<usize>());
            assert_eq!(
                leaked_fds(&before),
                Vec::<String>::new(),
                "{backend} {mode:?}"
            );
        }
    }
}

#[test]
fn a_graceful_stop_waits_for_the_connections_of_every_shard() {
    let _serial = common::serial();
    for backend in common::backends() {
        for mode in [Mode::ReusePort, Mode::Acceptor] {
            let before = open_fds();
            let tally = Tally::with_grace(2, NEVER);
            let (set, addr) = start_set(backend, mode, &tally);
            tally.wait_up(2);
            let clients: Vec<_> = (0..40).map(|_| client(addr).unwrap()).collect();
            let mut by_shard = [0; 2];
            for (_, got) in &clients {
                by_shard[server_of(got)] += 1;
            }
            // Every shard begins its shutdown with its connections open; the clients leave
            // only then, and each handler ends on its own, within the grace.
            set.stop();
            assert!(wait_until(|| tally.stopping.load(Ordering::SeqCst) == 2));
            let refused = std::net::TcpStream::connect(addr).unwrap_err();
            assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
            drop(clients);
            let reports = join_clean(set);
            for (i, r) in reports.iter().enumerate() {
                assert_eq!(r.finished, by_shard[i], "{backend} {mode:?}: shard {i}");
                assert!(r.is_graceful(), "{backend} {mode:?}: shard {i}: {r:?}");
            }
            assert_eq!(
                leaked_fds(&before),
                Vec::<String>::new(),
                "{backend} {mode:?}"
            );
        }
    }
}
