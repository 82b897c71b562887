//! The floor for file reads: 4 KiB random reads of a file in the page cache with no runtime at
//! all, against `pread` and against `ringloop::fs`, interleaved in rounds on one thread.
//!
//! What it answers: can any io_uring runtime beat a plain `pread` loop at reading cached pages
//! on one core, and how far is ringloop from a hand-written ring? Each round times `--reads`
//! reads with every path, back to back, and the report gives each path's median reads/s and
//! its median per-round ratio to `pread`:
//!
//! * `pread`: a synchronous `pread` loop (what `std::fs` does);
//! * `ring`: a hand-written io_uring loop with no runtime: `--depth` `READ`s queued, one
//!   `io_uring_enter` submits them and waits for all, their completions reaped, again. The
//!   kernel serves a cached read inline while it submits, so this is the ring at its best;
//! * `ring_fixed`: the same with registered buffers (`READ_FIXED` into `--depth` buffers
//!   registered with `IORING_REGISTER_BUFFERS`): what registered buffers would save ringloop;
//! * `ring_sqpoll`: the `ring` loop on a ring with `IORING_SETUP_SQPOLL`: a kernel thread takes
//!   the SQEs and issues the reads (its CPU is not in this thread's figure);
//! * `ring_async`: the `ring` loop with `IOSQE_ASYNC`, every read handed to the kernel's io-wq workers
//!   (they run on the other cores: more reads per second, more CPU per read);
//! * `ringloop`: `--depth` ringloop tasks on an io_uring runtime sharing one `ringloop::fs::File`,
//!   each `read_at` with its own buffer (as `benches/fs.rs` does); `RINGLOOP_FS_NOWAIT=0` sends
//!   every read to the ring instead of trying `RWF_NOWAIT` first.
//!
//! ```text
//! cargo run --release --example floor_read -- --depth 32
//! RINGLOOP_FS_NOWAIT=0 taskset -c 0 ./target/release/examples/floor_read --depth 32
//! ```
//!
//! Besides wall time it reports each path's CPU time per read on this thread (`ring_async`'s
//! workers are other threads: their CPU is not in its figure).

use std::cell::Cell;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Parser;
use io_uring::{opcode, squeue, types::Fd, IoUring};

const BLOCK: usize = 4096;

#[derive(Parser, Debug)]
#[command(about = "4 KiB cached reads: pread, a hand-written ring, ringloop::fs")]
struct Args {
    /// Reads in flight (ring, ring_async, ringloop).
    #[arg(long, default_value_t = 32)]
    depth: usize,
    /// Reads per path per round.
    #[arg(long, default_value_t = 200_000)]
    reads: usize,
    /// Rounds.
    #[arg(long, default_value_t = 15)]
    rounds: usize,
    /// Open the file with `O_DIRECT`: every read goes to the device (`ringloop` is left out).
    #[arg(long)]
    direct: bool,
    /// The data file's size in MiB (written under the temp directory, removed at the end).
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
}

/// `n` buffers of [`BLOCK`] bytes in one zeroed allocation aligned to 4 KiB (what `O_DIRECT`
/// needs; harmless without it).
struct Bufs {
    ptr: *mut u8,
    n: usize,
}

impl Bufs {
    fn layout(n: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(n.max(1) * BLOCK, 4096).unwrap()
    }

    fn new(n: usize) -> Bufs {
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(Self::layout(n)) };
        assert!(!ptr.is_null(), "out of memory");
        Bufs { ptr, n }
    }

    /// Buffer `i`'s start.
    fn at(&self, i: usize) -> *mut u8 {
        assert!(i < self.n);
        // SAFETY: within the allocation.
        unsafe { self.ptr.add(i * BLOCK) }
    }

    fn iovecs(&self) -> Vec<libc::iovec> {
        (0..self.n)
            .map(|i| libc::iovec {
                iov_base: self.at(i).cast(),
                iov_len: BLOCK,
            })
            .collect()
    }
}

impl Drop for Bufs {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, Self::layout(self.n)) };
    }
}

/// This thread's CPU time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Random 4 KiB-aligned offsets (a fixed xorshift sequence).
fn offsets(size: u64, n: usize) -> Vec<u64> {
    let blocks = size / BLOCK as u64;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % blocks) * BLOCK as u64
        })
        .collect()
}

fn pread(file: &std::fs::File, offs: &[u64], buf: &Bufs) {
    for &off in offs {
        // SAFETY: buffer 0 is BLOCK writable bytes, used by nothing else meanwhile.
        let n = unsafe { libc::pread64(file.as_raw_fd(), buf.at(0).cast(), BLOCK, off as i64) };
        assert_eq!(n, BLOCK as isize, "{}", std::io::Error::last_os_error());
    }
}

fn ring(ring: &mut IoUring, file: &std::fs::File, offs: &[u64], bufs: &Bufs, flags: squeue::Flags) {
    let fd = Fd(file.as_raw_fd());
    let depth = bufs.n;
    for chunk in offs.chunks(depth) {
        // With SQPOLL the kernel thread may post completions before it moves the queue's head.
        while {
            let sq = ring.submission();
            sq.capacity() - sq.len() < chunk.len()
        } {
            ring.submitter().squeue_wait().unwrap();
        }
        {
            let mut sq = ring.submission();
            for (i, &off) in chunk.iter().enumerate() {
                let e = opcode::Read::new(fd, bufs.at(i), BLOCK as u32)
                    .offset(off)
                    .build()
                    .flags(flags)
                    .user_data(i as u64);
                // SAFETY: the buffer outlives the read: it is reaped below before the next
                // round reuses it, and `bufs` is borrowed until the function returns.
                unsafe { sq.push(&e).expect("the ring holds `depth` entries") };
            }
        }
        ring.submit_and_wait(chunk.len()).unwrap();
        let mut seen = 0;
        for cqe in ring.completion() {
            assert_eq!(cqe.result(), BLOCK as i32, "read {}", cqe.user_data());
            seen += 1;
        }
        assert_eq!(seen, chunk.len());
    }
}

/// As [`ring`], with `READ_FIXED` into the ring's registered buffers (`bufs`, registered by
/// the caller).
fn ring_fixed(ring: &mut IoUring, file: &std::fs::File, offs: &[u64], bufs: &Bufs) {
    let fd = Fd(file.as_raw_fd());
    let depth = bufs.n;
    for chunk in offs.chunks(depth) {
        {
            let mut sq = ring.submission();
            for (i, &off) in chunk.iter().enumerate() {
                let e = opcode::ReadFixed::new(fd, bufs.at(i), BLOCK as u32, i as u16)
                    .offset(off)
                    .build()
                    .user_data(i as u64);
                // SAFETY: buffer `i` is registered as index `i` and outlives the read (reaped
                // below).
                unsafe { sq.push(&e).expect("the ring holds `depth` entries") };
            }
        }
        ring.submit_and_wait(chunk.len()).unwrap();
        let mut seen = 0;
        for cqe in ring.completion() {
            assert_eq!(cqe.result(), BLOCK as i32, "read {}", cqe.user_data());
            seen += 1;
        }
        assert_eq!(seen, chunk.len());
    }
}

fn ringloop_reads(
    rt: &ringloop::Runtime,
    file: &Rc<ringloop::fs::File>,
    offs: &Rc<Vec<u64>>,
    depth: usize,
) {
    rt.block_on(async {
        let next = Rc::new(Cell::new(0usize));
        let tasks: Vec<_> = (0..depth)
            .map(|_| {
                let (file, offs, next) = (file.clone(), offs.clone(), next.clone());
                ringloop::spawn(async move {
                    let mut buf = Vec::with_capacity(BLOCK);
                    loop {
                        let i = next.get();
                        if i >= offs.len() {
                            break;
                        }
                        next.set(i + 1);
                        let (n, b) = file.read_at(buf, offs[i]).await;
                        assert_eq!(n.unwrap(), BLOCK);
                        buf = b;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args = Args::parse();
    let path: PathBuf =
        std::env::temp_dir().join(format!("ringloop-floor-read-{}", std::process::id()));
    let size = args.size_mib << 20;
    {
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..args.size_mib {
            std::io::Write::write_all(&mut f, &chunk).unwrap();
        }
    }
    let file = std::fs::File::open(&path).unwrap();
    // Into the page cache.
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < size {
        off += file.read_at(&mut buf, off).unwrap() as u64;
    }
    let file = if args.direct {
        use std::os::unix::fs::OpenOptionsExt;
        let mut o = std::fs::OpenOptions::new();
        o.read(true).custom_flags(libc::O_DIRECT);
        o.open(&path).unwrap()
    } else {
        file
    };
    let offs = offsets(size, args.reads);
    let depth = args.depth.max(1);
    // Before the rings: dropped after them.
    let bufs = Bufs::new(depth);
    let fixed_bufs = Bufs::new(depth);
    let mut uring = IoUring::new(depth.next_power_of_two() as u32).unwrap();
    let rt = ringloop::Runtime::builder()
        .backend(ringloop::Backend::IoUring)
        .build()
        .unwrap();
    let rl_file = Rc::new(rt.block_on(ringloop::fs::File::open(&path)).unwrap());
    let rl_offs = Rc::new(offs.clone());

    // SQPOLL: a kernel thread (on the other CPU, if the process may run there) takes the SQEs
    // and issues the reads; this thread only fills the queue and reaps.
    let mut sqpoll_ring = IoUring::builder()
        .setup_sqpoll(1000)
        .build(depth.next_power_of_two() as u32)
        .unwrap();
    let mut async_ring = IoUring::new(depth.next_power_of_two() as u32).unwrap();
    let mut fixed_ring = IoUring::new(depth.next_power_of_two() as u32).unwrap();
    // SAFETY: the buffers stay allocated until after the ring is dropped (declared before it).
    unsafe {
        fixed_ring
            .submitter()
            .register_buffers(&fixed_bufs.iovecs())
            .unwrap()
    };

    type Path<'a> = (&'static str, Box<dyn FnMut() + 'a>);
    let mut paths: Vec<Path> = vec![
        ("pread", Box::new(|| pread(&file, &offs, &bufs))),
        (
            "ring",
            Box::new(|| ring(&mut uring, &file, &offs, &bufs, squeue::Flags::empty())),
        ),
        (
            "ring_fixed",
            Box::new(|| ring_fixed(&mut fixed_ring, &file, &offs, &fixed_bufs)),
        ),
    ];
    if !args.direct {
        paths.push((
            "ringloop",
            Box::new(|| ringloop_reads(&rt, &rl_file, &rl_offs, depth)),
        ));
    }
    paths.push((
        "ring_sqpoll",
        Box::new(|| {
            ring(
                &mut sqpoll_ring,
                &file,
                &offs,
                &bufs,
                squeue::Flags::empty(),
            )
        }),
    ));
    paths.push((
        "ring_async",
        Box::new(|| ring(&mut async_ring, &file, &offs, &bufs, squeue::Flags::ASYNC)),
    ));
    let n = paths.len();
    let mut rate = vec![Vec::new(); n];
    let mut cpu = vec![Vec::new(); n];
    let mut ratio = vec![Vec::new(); n];
    for round in 0..args.rounds + 1 {
        let mut this = vec![0.0; n];
        for (i, (_, f)) in paths.iter_mut().enumerate() {
            let (t0, c0) = (Instant::now(), thread_cpu());
            f();
            let (wall, c) = (t0.elapsed(), thread_cpu() - c0);
            this[i] = args.reads as f64 / wall.as_secs_f64();
            if round > 0 {
                // Round 0 warms up.
                rate[i].push(this[i]);
                cpu[i].push(c.as_nanos() as f64 / args.reads as f64);
            }
        }
        if round > 0 {
            for i in 0..n {
                ratio[i].push(this[i] / this[0]);
            }
        }
    }
    println!(
        "4 KiB {} reads, depth {depth}, {} reads x {} rounds (medians; ratio: per-round reads/s over pread's)",
        if args.direct { "O_DIRECT" } else { "cached" },
        args.reads,
        args.rounds
    );
    println!(
        "{:<11} {:>12} {:>14} {:>8}",
        "path", "reads/s", "ns CPU/read", "ratio"
    );
    for i in 0..n {
        println!(
            "{:<11} {:>12.0} {:>14.0} {:>7.3}x",
            paths[i].0,
            median(&mut rate[i]),
            median(&mut cpu[i]),
            median(&mut ratio[i])
        );
    }
    drop(paths);
    let _ = std::fs::remove_file(&path);
}
