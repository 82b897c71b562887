//! Files: `ringloop::fs` on io_uring and on epoll (the blocking pool) side by side with
//! `tokio::fs` and a synchronous `std::fs` loop on one thread.
//!
//! ```text
//! cargo bench --bench fs                          # everything on a 1 GiB file, a few minutes
//! cargo bench --bench fs -- rand_read_4k_qd32     # one figure
//! RINGLOOP_FS_BENCH_SIZE=256M cargo bench --bench fs
//! cargo bench --bench fs -- --test                # smoke: each bench once, on an 8 MiB file
//! ```
//!
//! # What is measured (one criterion group per figure)
//!
//! The data file (`RINGLOOP_FS_BENCH_SIZE` bytes, default 1 GiB; 8 MiB under `--test`) is
//! written under the temp directory and read once before the groups, so it is in the page
//! cache: these are the costs of the call paths, not of a disk. Everything is removed at the
//! end.
//!
//! * `rand_read_4k_qd1`, `_qd32`, `_qd256`: 4 KiB reads at random 4 KiB-aligned offsets, with
//!   1, 32 or 256 in flight. ringloop: that many tasks on one runtime sharing one `File`, each
//!   `read_at` with its own owned buffer. tokio: that many tasks on a `current_thread` runtime,
//!   each with its own `tokio::fs::File` (tokio's file has a cursor and allows one operation at
//!   a time), `seek` then `read_exact`, as `tokio::fs` offers it; `tokio_pread` is the cheaper
//!   path a tokio user can write by hand, `spawn_blocking` of `FileExt::read_at` on a shared
//!   `std::fs::File` (one hand-off per read instead of two). std: a loop of
//!   `FileExt::read_at` on the bench thread (nothing is in flight at once, whatever the
//!   group).
//! * `seq_read_1m`: 1 MiB reads one after the other through the file, one in flight.
//!   tokio: `read_exact` on a `tokio::fs::File` (its buffer holds up to 2 MiB, so one
//!   hand-off per read).
//! * `open_read_close_4k`: open, read 4 KiB and close each of `RINGLOOP_FS_BENCH_FILES`
//!   (default 10 000; 100 under `--test`) small files in turn, 32 files in flight. ringloop:
//!   `File::open`, `read_at`, `close` (three ring ops). tokio: `tokio::fs::read`, which does
//!   the whole file in one hand-off (the fair tokio way; a tokio `File` would cost three).
//!   std: `File::open`, `read`, drop, in a loop.
//! * `append_fsync_4k`: append a 4 KiB record to a file opened with `O_APPEND` and
//!   `fdatasync` it, one record at a time. This one goes to the disk.
//!
//! Each iteration is one read (one file, one record), so criterion's throughput is reads (files,
//! records) per second; for `seq_read_1m` it is bytes per second.
//!
//! # Ratios on a noisy machine
//!
//! criterion measures one function after the other, so a machine whose load changes during the
//! run skews the ratios between them. `RINGLOOP_FS_BENCH_AB=<rounds>` adds an interleaved check
//! for the one-in-flight figure, printed at the end: each round times 20 000 random 4 KiB reads
//! with `std` and then with ringloop (io_uring, then epoll) back to back, and the median of the
//! per-round ratios is reported (`cargo bench --bench fs -- --test` with it runs only that).

use std::cell::Cell;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkGroup, Criterion, Throughput};
use ringloop::fs::{File as RlFile, OpenOptions as RlOpenOptions};
use ringloop::{Backend, Runtime};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

const BLOCK: usize = 4096;
const MIB: usize = 1 << 20;

fn smoke() -> bool {
    std::env::args().any(|a| a == "--test")
}

/// `RINGLOOP_FS_BENCH_SIZE`: bytes, or with a `K`, `M` or `G` suffix.
fn file_size() -> u64 {
    let default = if smoke() { 8 << 20 } else { 1 << 30 };
    let Ok(v) = std::env::var("RINGLOOP_FS_BENCH_SIZE") else {
        return default;
    };
    let v = v.trim().to_ascii_uppercase();
    let (num, mul) = match v.chars().last() {
        Some('K') => (&v[..v.len() - 1], 1 << 10),
        Some('M') => (&v[..v.len() - 1], 1 << 20),
        Some('G') => (&v[..v.len() - 1], 1 << 30),
        _ => (&v[..], 1),
    };
    let n: u64 = num
        .parse()
        .expect("RINGLOOP_FS_BENCH_SIZE: a number of bytes");
    (n * mul).max(2 * MIB as u64)
}

fn small_files() -> usize {
    let default = if smoke() { 100 } else { 10_000 };
    std::env::var("RINGLOOP_FS_BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The bench's files, removed when dropped.
struct Fixture {
    dir: PathBuf,
    data: PathBuf,
    size: u64,
    small: Vec<PathBuf>,
    log: PathBuf,
    /// Random 4 KiB-aligned offsets in the data file.
    offsets: Vec<u64>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = std::env::temp_dir().join(format!("ringloop-fs-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("small")).unwrap();
        let size = file_size();
        let data = dir.join("data");
        let mut f = std::fs::File::create(&data).unwrap();
        let chunk: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8).collect();
        let mut left = size;
        while left > 0 {
            let n = left.min(MIB as u64) as usize;
            f.write_all(&chunk[..n]).unwrap();
            left -= n as u64;
        }
        drop(f);
        // Into the page cache.
        let mut f = std::fs::File::open(&data).unwrap();
        let mut buf = vec![0u8; MIB];
        while f.read(&mut buf).unwrap() > 0 {}

        let small: Vec<PathBuf> = (0..small_files())
            .map(|i| {
                let p = dir.join(format!("small/{i:05}"));
                std::fs::write(&p, &chunk[..BLOCK]).unwrap();
                p
            })
            .collect();

        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let blocks = size / BLOCK as u64;
        let offsets = (0..1 << 16)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % blocks) * BLOCK as u64
            })
            .collect();
        let log = dir.join("log");
        Fixture {
            dir,
            data,
            size,
            small,
            log,
            offsets,
        }
    }

    fn offset(&self, i: u64) -> u64 {
        self.offsets[(i as usize) % self.offsets.len()]
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ringloop_rt(backend: Backend) -> Runtime {
    Runtime::builder()
        .backend(backend)
        .build()
        .expect("ringloop runtime")
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `iters` jobs on `depth` ringloop tasks, job `i` being `job(i)`; returns the time taken.
fn ringloop_jobs<F, Fut>(rt: &Runtime, iters: u64, depth: usize, job: F) -> Duration
where
    F: Fn(u64) -> Fut + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    rt.block_on(async move {
        let next = Rc::new(Cell::new(0u64));
        let job = Rc::new(job);
        let start = Instant::now();
        let tasks: Vec<_> = (0..depth)
            .map(|_| {
                let (next, job) = (next.clone(), job.clone());
                ringloop::spawn(async move {
                    loop {
                        let i = next.get();
                        if i >= iters {
                            break;
                        }
                        next.set(i + 1);
                        job(i).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        start.elapsed()
    })
}

fn rand_read(c: &mut Criterion, fx: &Rc<Fixture>, depth: usize) {
    let mut g = c.benchmark_group(format!("rand_read_4k_qd{depth}"));
    g.throughput(Throughput::Elements(1));
    configure(&mut g);

    for backend in [Backend::IoUring, Backend::Epoll] {
        let rt = ringloop_rt(backend);
        let file = Rc::new(rt.block_on(RlFile::open(&fx.data)).unwrap());
        // One buffer per task, passed from read to read.
        g.bench_function(format!("ringloop_{backend}"), |b| {
            b.iter_custom(|iters| {
                let (file, fx) = (file.clone(), fx.clone());
                let bufs = Rc::new(Cell::new(Vec::<Vec<u8>>::new()));
                ringloop_jobs(&rt, iters, depth, move |i| {
                    let (file, fx, bufs) = (file.clone(), fx.clone(), bufs.clone());
                    async move {
                        let mut pool = bufs.take();
                        let buf = pool.pop().unwrap_or_else(|| Vec::with_capacity(BLOCK));
                        bufs.set(pool);
                        let (n, buf) = file.read_at(buf, fx.offset(i)).await;
                        assert_eq!(n.unwrap(), BLOCK);
                        let mut pool = bufs.take();
                        pool.push(buf);
                        bufs.set(pool);
                    }
                })
            })
        });
    }

    let rt = tokio_rt();
    let files: Vec<_> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..depth {
            v.push(tokio::sync::Mutex::new(
                tokio::fs::File::open(&fx.data).await.unwrap(),
            ));
        }
        v
    });
    let files = Arc::new(files);
    let offsets = Arc::new(fx.offsets.clone());
    g.bench_function("tokio_fs", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
                let start = Instant::now();
                let tasks: Vec<_> = (0..depth)
                    .map(|t| {
                        let (files, offsets, next) = (files.clone(), offsets.clone(), next.clone());
                        tokio::spawn(async move {
                            let mut f = files[t].lock().await;
                            let mut buf = vec![0u8; BLOCK];
                            loop {
                                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                if i >= iters {
                                    break;
                                }
                                let off = offsets[(i as usize) % offsets.len()];
                                f.seek(SeekFrom::Start(off)).await.unwrap();
                                f.read_exact(&mut buf).await.unwrap();
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                start.elapsed()
            })
        })
    });

    let shared = Arc::new(std::fs::File::open(&fx.data).unwrap());
    g.bench_function("tokio_pread", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
                let start = Instant::now();
                let tasks: Vec<_> = (0..depth)
                    .map(|_| {
                        let (file, offsets, next) = (shared.clone(), offsets.clone(), next.clone());
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; BLOCK];
                            loop {
                                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                if i >= iters {
                                    break;
                                }
                                let off = offsets[(i as usize) % offsets.len()];
                                let file = file.clone();
                                buf = tokio::task::spawn_blocking(move || {
                                    file.read_exact_at(&mut buf, off).unwrap();
                                    buf
                                })
                                .await
                                .unwrap();
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                start.elapsed()
            })
        })
    });

    let std_file = std::fs::File::open(&fx.data).unwrap();
    g.bench_function("std_sync", |b| {
        let mut buf = vec![0u8; BLOCK];
        let mut i = 0u64;
        b.iter(|| {
            std_file.read_exact_at(&mut buf, fx.offset(i)).unwrap();
            i += 1;
        })
    });
    g.finish();
}

fn seq_read(c: &mut Criterion, fx: &Rc<Fixture>) {
    let mut g = c.benchmark_group("seq_read_1m");
    g.throughput(Throughput::Bytes(MIB as u64));
    configure(&mut g);
    let chunks = fx.size / MIB as u64;

    for backend in [Backend::IoUring, Backend::Epoll] {
        let rt = ringloop_rt(backend);
        let file = Rc::new(rt.block_on(RlFile::open(&fx.data)).unwrap());
        let mut pos = 0u64;
        g.bench_function(format!("ringloop_{backend}"), |b| {
            b.iter_custom(|iters| {
                let file = file.clone();
                let start_pos = pos;
                pos = (pos + iters) % chunks;
                rt.block_on(async move {
                    let mut buf = Vec::with_capacity(MIB);
                    let start = Instant::now();
                    for i in 0..iters {
                        let off = ((start_pos + i) % chunks) * MIB as u64;
                        let (n, b) = file.read_at(buf, off).await;
                        assert_eq!(n.unwrap(), MIB);
                        buf = b;
                    }
                    start.elapsed()
                })
            })
        });
    }

    let rt = tokio_rt();
    let mut file = rt.block_on(tokio::fs::File::open(&fx.data)).unwrap();
    let mut chunk = 0u64;
    g.bench_function("tokio_fs", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut buf = vec![0u8; MIB];
                let start = Instant::now();
                for _ in 0..iters {
                    if chunk == chunks {
                        file.seek(SeekFrom::Start(0)).await.unwrap();
                        chunk = 0;
                    }
                    file.read_exact(&mut buf).await.unwrap();
                    chunk += 1;
                }
                start.elapsed()
            })
        })
    });

    let mut std_file = std::fs::File::open(&fx.data).unwrap();
    let mut chunk = 0u64;
    g.bench_function("std_sync", |b| {
        let mut buf = vec![0u8; MIB];
        b.iter(|| {
            if chunk == chunks {
                std_file.seek(SeekFrom::Start(0)).unwrap();
                chunk = 0;
            }
            std_file.read_exact(&mut buf).unwrap();
            chunk += 1;
        })
    });
    g.finish();
}

fn open_read_close(c: &mut Criterion, fx: &Rc<Fixture>) {
    const DEPTH: usize = 32;
    let mut g = c.benchmark_group("open_read_close_4k");
    g.throughput(Throughput::Elements(1));
    configure(&mut g);
    let small = Rc::new(fx.small.clone());

    for backend in [Backend::IoUring, Backend::Epoll] {
        let rt = ringloop_rt(backend);
        let small = small.clone();
        g.bench_function(format!("ringloop_{backend}"), |b| {
            b.iter_custom(|iters| {
                let small = small.clone();
                ringloop_jobs(&rt, iters, DEPTH, move |i| {
                    let path = small[(i as usize) % small.len()].clone();
                    async move {
                        let file = RlFile::open(&path).await.unwrap();
                        let (n, _) = file.read_at(Vec::with_capacity(BLOCK), 0).await;
                        assert_eq!(n.unwrap(), BLOCK);
                        file.close().await.unwrap();
                    }
                })
            })
        });
    }

    let rt = tokio_rt();
    let paths = Arc::new(fx.small.clone());
    g.bench_function("tokio_fs", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
                let start = Instant::now();
                let tasks: Vec<_> = (0..DEPTH)
                    .map(|_| {
                        let (paths, next) = (paths.clone(), next.clone());
                        tokio::spawn(async move {
                            loop {
                                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                if i >= iters {
                                    break;
                                }
                                let p = &paths[(i as usize) % paths.len()];
                                assert_eq!(tokio::fs::read(p).await.unwrap().len(), BLOCK);
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                start.elapsed()
            })
        })
    });

    let mut i = 0usize;
    g.bench_function("std_sync", |b| {
        let mut buf = vec![0u8; BLOCK];
        b.iter(|| {
            let mut f = std::fs::File::open(&fx.small[i % fx.small.len()]).unwrap();
            f.read_exact(&mut buf).unwrap();
            i += 1;
        })
    });
    g.finish();
}

fn append_fsync(c: &mut Criterion, fx: &Rc<Fixture>) {
    let mut g = c.benchmark_group("append_fsync_4k");
    g.throughput(Throughput::Elements(1));
    configure(&mut g);
    let record = vec![b'r'; BLOCK];

    let fresh = |p: &Path| std::fs::write(p, b"").unwrap();
    for backend in [Backend::IoUring, Backend::Epoll] {
        let rt = ringloop_rt(backend);
        fresh(&fx.log);
        let file = Rc::new(
            rt.block_on(RlOpenOptions::new().append(true).open(&fx.log))
                .unwrap(),
        );
        let record = record.clone();
        g.bench_function(format!("ringloop_{backend}"), |b| {
            b.iter_custom(|iters| {
                let (file, record) = (file.clone(), record.clone());
                rt.block_on(async move {
                    let mut buf = record;
                    let start = Instant::now();
                    for _ in 0..iters {
                        let (r, b) = file.write_all_at(buf, 0).await;
                        r.unwrap();
                        buf = b;
                        file.sync_data().await.unwrap();
                    }
                    start.elapsed()
                })
            })
        });
    }

    let rt = tokio_rt();
    fresh(&fx.log);
    let mut file = rt
        .block_on(tokio::fs::OpenOptions::new().append(true).open(&fx.log))
        .unwrap();
    g.bench_function("tokio_fs", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    file.write_all(&record).await.unwrap();
                    file.sync_data().await.unwrap();
                }
                start.elapsed()
            })
        })
    });

    fresh(&fx.log);
    let mut std_file = std::fs::OpenOptions::new()
        .append(true)
        .open(&fx.log)
        .unwrap();
    g.bench_function("std_sync", |b| {
        b.iter(|| {
            std_file.write_all(&record).unwrap();
            std_file.sync_data().unwrap();
        })
    });
    g.finish();
}

fn configure(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
}

fn files(c: &mut Criterion) {
    let fx = Rc::new(Fixture::new());
    eprintln!(
        "data file: {} MiB under {}, {} small files",
        fx.size >> 20,
        fx.dir.display(),
        fx.small.len()
    );
    for depth in [1, 32, 256] {
        rand_read(c, &fx, depth);
    }
    seq_read(c, &fx);
    open_read_close(c, &fx);
    append_fsync(c, &fx);
}

/// The interleaved one-in-flight check (see the module docs): the median over `rounds` of
/// (std's time / ringloop's time) for the same 20 000 reads, per backend.
fn interleaved_qd1(fx: &Fixture, rounds: usize) {
    const READS: usize = 20_000;
    let std_file = std::fs::File::open(&fx.data).unwrap();
    let mut buf = vec![0u8; BLOCK];
    for backend in [Backend::IoUring, Backend::Epoll] {
        let rt = ringloop_rt(backend);
        let file = rt.block_on(RlFile::open(&fx.data)).unwrap();
        let mut ratios = Vec::new();
        for round in 0..rounds {
            let first = (round * READS) as u64;
            let start = Instant::now();
            for i in 0..READS as u64 {
                std_file
                    .read_exact_at(&mut buf, fx.offset(first + i))
                    .unwrap();
            }
            let std_time = start.elapsed();
            let ours = rt.block_on(async {
                let mut b = Vec::with_capacity(BLOCK);
                let start = Instant::now();
                for i in 0..READS as u64 {
                    let (n, back) = file.read_at(b, fx.offset(first + i)).await;
                    assert_eq!(n.unwrap(), BLOCK);
                    b = back;
                }
                start.elapsed()
            });
            ratios.push(std_time.as_secs_f64() / ours.as_secs_f64());
        }
        ratios.sort_by(f64::total_cmp);
        println!(
            "interleaved qd1, {rounds} rounds of {READS} reads: ringloop_{backend} runs at {:.3}x \
             std's rate (median; quartiles {:.3} .. {:.3})",
            ratios[rounds / 2],
            ratios[rounds / 4],
            ratios[rounds * 3 / 4]
        );
    }
}

criterion_group!(benches, files);

fn main() {
    let ab = std::env::var("RINGLOOP_FS_BENCH_AB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0);
    if let (Some(rounds), true) = (ab, smoke()) {
        interleaved_qd1(&Fixture::new(), rounds);
        return;
    }
    benches();
    if let Some(rounds) = ab {
        interleaved_qd1(&Fixture::new(), rounds);
    }
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
