//! Which backend a runtime gets: io_uring where the kernel has a usable one, and where it does
//! not (Debian's 5.10 has io_uring as of 5.15, but no provided-buffer rings, 5.19, which the
//! driver's receive pool is built on), an `Unsupported` error when io_uring was asked for and
//! epoll for `Backend::Auto`.
//!
//! Which of the two this kernel is comes from `RINGLOOP_TEST_BACKENDS` (see
//! `common::uring_tested`): `.ci/kernels` leaves io_uring out on 5.10, and the first test
//! checks that the runtime agrees. The second refuses io_uring the way containers do, with a
//! seccomp filter, on any kernel.

mod common;

use std::io;
use std::time::Duration;

use ringloop_runtime::{sleep, Backend, Runtime};

#[test]
fn auto_runs_io_uring_where_the_kernel_has_it_and_falls_back_to_epoll_where_not() {
    let explicit = Runtime::builder().backend(Backend::IoUring).build();
    let auto = Runtime::builder().backend(Backend::Auto).build().unwrap();
    if common::uring_tested() {
        assert_eq!(explicit.unwrap().backend(), Backend::IoUring);
        assert_eq!(auto.backend(), Backend::IoUring);
    } else {
        let err = explicit.expect_err("io_uring is refused on this kernel");
        assert_eq!(err.kind(), io::ErrorKind::Unsupported, "{err}");
        assert_eq!(auto.backend(), Backend::Epoll);
    }
    // Whichever it is, it runs: a timer fires and a task completes.
    let slept = auto.block_on(async {
        sleep(Duration::from_millis(1)).await.unwrap();
        ringloop_runtime::spawn(async { 7 }).await.unwrap()
    });
    assert_eq!(slept, 7);
    assert_eq!(auto.stats().ops_in_flight, 0);
}

/// Where a seccomp profile refuses `io_uring_setup` (containers often do), explicit io_uring
/// fails with the real errno, `EPERM`, and `Auto` runs epoll after one warning line. The
/// filter goes on a child process (this test binary again), so nothing else here is affected.
#[cfg(target_arch = "x86_64")]
#[test]
fn a_seccomp_refusal_of_io_uring_falls_back_to_epoll() {
    const CHILD: &str = "RINGLOOP_TEST_SECCOMP_CHILD";
    if std::env::var_os(CHILD).is_some() {
        refuse_io_uring_setup();
        let err = Runtime::builder()
            .backend(Backend::IoUring)
            .build()
            .expect_err("io_uring_setup is refused");
        assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
        let auto = Runtime::builder().backend(Backend::Auto).build().unwrap();
        assert_eq!(auto.backend(), Backend::Epoll);
        auto.block_on(sleep(Duration::from_millis(1))).unwrap();
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_seccomp_refusal_of_io_uring_falls_back_to_epoll",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 passed"),
        "the child ran the test: {stdout}"
    );
    let warnings: Vec<_> = stderr
        .lines()
        .filter(|l| l.starts_with("ringloop: io_uring unavailable"))
        .collect();
    assert_eq!(
        warnings,
        ["ringloop: io_uring unavailable (Operation not permitted (os error 1)); using the epoll backend"],
        "one warning line, with the errno"
    );
}

/// Installs a seccomp filter on this thread that fails `io_uring_setup` with `EPERM`.
#[cfg(target_arch = "x86_64")]
fn refuse_io_uring_setup() {
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    let insn = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let filter = [
        // seccomp_data.arch (offset 4): anything but x86_64 is let through.
        insn(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 4, 0, 0),
        insn(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            AUDIT_ARCH_X86_64,
            0,
            3,
        ),
        // seccomp_data.nr (offset 0).
        insn(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 0),
        insn(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            libc::SYS_io_uring_setup as u32,
            0,
            1,
        ),
        insn(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
            0,
            0,
        ),
        insn(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW, 0, 0),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integers; it lets an unprivileged process
    // install a filter and only restricts this process.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    // SAFETY: `prog` points at `filter`, both alive across the call (the kernel copies the
    // program); the filter only makes `io_uring_setup` fail, in this child process.
    let rc = unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

/// The completion queue is sized for the connection counts a server runs (at least 32 768
/// entries by default, so 10 000 connections can each complete a receive and a send in one
/// iteration without overflowing into the kernel's backlog), and `completion_entries` sets it.
#[test]
fn the_completion_queue_holds_at_least_32768_completions_by_default() {
    if !common::runs_on(Backend::IoUring) {
        return;
    }
    let rt = Runtime::builder()
        .backend(Backend::IoUring)
        .build()
        .unwrap();
    let described = rt.backend_description();
    assert!(described.contains("cq 32768"), "{described}");
    let small = Runtime::builder()
        .backend(Backend::IoUring)
        .ring_entries(8)
        .completion_entries(64)
        .build()
        .unwrap();
    assert!(
        small.backend_description().contains("cq 64"),
        "{}",
        small.backend_description()
    );
    let stats = rt.stats();
    assert_eq!((stats.cq_dropped, stats.cancels_missed), (0, 0));
}
