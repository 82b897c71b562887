//! `O_DIRECT` on both backends: an aligned round trip, and misaligned buffers, offsets and
//! lengths refused with an error that says which rule they broke.
//!
//! Where this runs matters: a file system without direct I/O (tmpfs before Linux 6.6, as in
//! the kernel matrix's VMs) refuses the open with `EINVAL`, and then only that is checked; a
//! kernel that does not report the alignment (`STATX_DIOALIGN`, before 6.1) gets no check
//! before submission, and then only the round trip is. Each case says so on stderr.

mod common;

use std::io::ErrorKind;

use common::{pattern, TempDir};
use ringloop_fs::{AlignedBuf, File, IoBuf, OpenOptions};

macro_rules! on_both_backends {
    ($name:ident, $body:ident) => {
        mod $name {
            #[test]
            fn uring() {
                if super::common::runs_on(ringloop_runtime::Backend::IoUring) {
                    super::common::run(ringloop_runtime::Backend::IoUring, super::$body)
                }
            }
            #[test]
            fn epoll() {
                super::common::run(ringloop_runtime::Backend::Epoll, super::$body)
            }
        }
    };
}

/// Opens a direct-I/O file in `dir`, or `None` (with a note) where the file system refuses.
async fn open_direct(dir: &TempDir) -> Option<File> {
    let opened = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .direct(true)
        .open(dir.join("direct"))
        .await;
    match opened {
        Ok(file) => {
            assert!(file.is_direct());
            Some(file)
        }
        Err(e) => {
            assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
            eprintln!(
                "note: {} refuses O_DIRECT (EINVAL at open, as documented); nothing else checked",
                dir.path().display()
            );
            None
        }
    }
}

async fn round_trip() {
    let dir = TempDir::new("direct");
    let Some(file) = open_direct(&dir).await else {
        return;
    };
    let data = pattern(5, 16384);
    let buf = AlignedBuf::from_slice(&data);
    let ((), _) = {
        let (r, b) = file.write_all_at(buf, 8192).await;
        (r.unwrap(), b)
    };
    let (r, back) = file.read_exact_at(AlignedBuf::new(16384), 8192).await;
    r.unwrap();
    assert_eq!(&back[..], &data[..]);
    // Vectored, two aligned buffers.
    let bufs = vec![AlignedBuf::new(4096), AlignedBuf::new(8192)];
    let (n, bufs) = file.read_vectored_at(bufs, 8192).await;
    assert_eq!(n.unwrap(), 12288);
    assert_eq!(&bufs[0][..], &data[..4096]);
    assert_eq!(&bufs[1][..], &data[4096..12288]);
    // Reading at the end: a short read, then nothing.
    let (n, _) = file.read_at(AlignedBuf::new(8192), 16384 + 4096).await;
    assert_eq!(n.unwrap(), 4096);
    let (n, _) = file.read_at(AlignedBuf::new(4096), 1 << 20).await;
    assert_eq!(n.unwrap(), 0);
    file.close().await.unwrap();
}
on_both_backends!(aligned_direct_io_round_trips, round_trip);

async fn misaligned() {
    let dir = TempDir::new("direct-bad");
    let Some(file) = open_direct(&dir).await else {
        return;
    };
    let (r, _) = file
        .write_all_at(AlignedBuf::from_slice(&[1; 8192]), 0)
        .await;
    r.unwrap();
    let Some(align) = file.direct_io_alignment() else {
        eprintln!(
            "note: the kernel does not report direct-I/O alignment here (STATX_DIOALIGN, \
             Linux 6.1); the kernel's own EINVAL is all there is"
        );
        return;
    };
    eprintln!("direct-I/O alignment here: {align:?}");
    let check = |r: std::io::Result<usize>, what: &str| {
        let e = r.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{what}: {e}");
        assert!(
            e.to_string().contains(what) && e.to_string().contains("O_DIRECT"),
            "{what}: {e}"
        );
    };
    if align.memory > 1 {
        // A Vec is not aligned to the block size (an offset of 1 into an aligned buffer
        // certainly is not).
        let window = AlignedBuf::new(8192).slice(1..4097);
        let (r, _) = file.read_at(window, 0).await;
        check(r, "address");
        let (r, _) = file
            .write_at(AlignedBuf::from_slice(&[2; 8192]).slice(1..4097), 0)
            .await;
        check(r, "address");
    }
    if align.offset > 1 {
        let (r, _) = file.read_at(AlignedBuf::new(4096), 100).await;
        check(r, "offset");
        let mut short = AlignedBuf::new(4096);
        short.extend_from_slice(&[3; 100]);
        let (r, _) = file.write_at(short, 0).await;
        check(r, "length");
        let (r, _) = file
            .read_vectored_at(vec![AlignedBuf::new(4096), AlignedBuf::new(100)], 0)
            .await;
        check(r, "length");
    }
    // What the check stands in for: the kernel's bare EINVAL, here through std.
    if align.offset > 1 {
        use std::os::unix::fs::{FileExt, OpenOptionsExt};
        let std_file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(dir.join("direct"))
            .unwrap();
        let mut block = AlignedBuf::new(4096);
        block.set_len(4096);
        let e = std_file.read_at(&mut block, 100).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    }
    // Nothing above reached the file.
    let (r, back) = file.read_exact_at(AlignedBuf::new(8192), 0).await;
    r.unwrap();
    assert!(back.iter().all(|&b| b == 1));
}
on_both_backends!(misaligned_direct_io_is_refused_clearly, misaligned);
