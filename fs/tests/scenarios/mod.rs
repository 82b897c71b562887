//! The file scenarios, each an `async fn` run by `file_ops.rs` on both backends and by
//! `pool_fallback.rs` on io_uring with every operation sent to the blocking pool (as on a kernel
//! that lacks the opcodes). [`for_each_scenario!`] lists them once for both.

#![allow(dead_code)]

use std::io::{self, ErrorKind};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use ringloop_fs::{self as fs, File, IoBuf, OpenOptions};
use ringloop_runtime::{is_cancelled, spawn, yield_now};

use crate::common::{euid, pattern, TempDir};

/// Calls `$m!(scenario)` for every scenario in this file.
#[macro_export]
macro_rules! for_each_scenario {
    ($m:ident) => {
        $m!(write_then_read_back);
        $m!(a_read_partly_in_the_page_cache_reads_it_all);
        $m!(short_read_at_end_of_file);
        $m!(read_past_the_end_is_zero);
        $m!(read_exact_at_reports_unexpected_eof);
        $m!(write_past_the_end_leaves_a_zeroed_hole);
        $m!(vectored_reads_and_writes);
        $m!(sync_all_and_sync_data);
        $m!(metadata_of_files_dirs_and_links);
        $m!(set_len_truncates_and_extends);
        $m!(allocate_reserves_and_grows);
        $m!(append_mode_writes_at_the_end_whatever_the_offset);
        $m!(read_write_and_read_to_string);
        $m!(directories);
        $m!(rename_replaces_the_target);
        $m!(hard_and_symbolic_links);
        $m!(errors_carry_the_real_errno);
        $m!(eacces_with_its_errno);
        $m!(close_reports_and_waits_for_no_one);
        $m!(std_conversions_and_try_clone);
        $m!(many_tasks_share_one_file);
        $m!(a_cancel_before_the_op_starts_runs_nothing);
        $m!(a_cancel_in_flight_returns_the_buffer_and_reaches_the_task);
        $m!(a_task_waiting_on_a_file_op_shows_the_op);
        $m!(a_deadline_on_an_open_that_waits);
        $m!(a_cancel_of_an_open_that_waits_reaches_the_task);
    };
}

fn ok<T, B>((r, buf): (io::Result<T>, B)) -> (T, B) {
    (r.unwrap(), buf)
}

async fn rw_file(path: &std::path::Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .await
        .unwrap()
}

/// Write a pattern with `write_all_at`, read it back with `read_at` and `read_exact_at`, at
/// offsets and in pieces that do not line up with each other.
pub async fn write_then_read_back() {
    let dir = TempDir::new("rw");
    let file = rw_file(&dir.join("f")).await;
    let data = pattern(1, 100_000);
    let ((), back) = ok(file.write_all_at(data.clone(), 0).await);
    assert_eq!(back, data, "the buffer comes back unchanged");
    // Unbuffered, unlike tokio's `File`: once the future resolved, the bytes are in the file
    // for anyone to read (no flush owed).
    assert_eq!(std::fs::read(dir.join("f")).unwrap(), data);

    let (n, buf) = ok(file.read_at(Vec::with_capacity(7000), 12_345).await);
    assert_eq!(n, 7000);
    assert_eq!(buf, data[12_345..19_345]);

    let ((), buf) = ok(file.read_exact_at(vec![0u8; 50_000], 33_333).await);
    assert_eq!(buf, data[33_333..83_333]);

    // Slices: read into the middle of a buffer, write from the middle of one.
    let (n, window) = ok(file.read_at(vec![0xee; 300].slice(100..200), 10).await);
    assert_eq!(n, 100);
    let whole = window.into_inner();
    assert_eq!(&whole[..100], &[0xee; 100][..]);
    assert_eq!(&whole[100..200], &data[10..110]);
    assert_eq!(&whole[200..], &[0xee; 100][..]);
    let (n, _) = ok(file.write_at(b"..XYZ..".as_slice().slice(2..5), 1).await);
    assert_eq!(n, 3);
    let (_, buf) = ok(file.read_at(vec![0u8; 5], 0).await);
    assert_eq!(&buf[..], &[data[0], b'X', b'Y', b'Z', data[4]]);
    assert_eq!(file.metadata().await.unwrap().len(), 100_000);
    file.close().await.unwrap();
}

/// A read whose first half is in the page cache and whose second half is not: the
/// non-blocking first try gets the first half, the ring or the pool the rest, and the caller
/// sees one whole read. (On tmpfs the pages cannot be dropped, and the try gets all of it.)
pub async fn a_read_partly_in_the_page_cache_reads_it_all() {
    use std::os::fd::AsRawFd;

    let dir = TempDir::new("partial");
    let path = dir.join("f");
    let data = pattern(6, 1 << 20);
    // Written a page at a time, so that the page cache holds it in small folios, half of which
    // can be dropped (one large folio would stay whole).
    let mut std_file = std::fs::File::create(&path).unwrap();
    for page in data.chunks(4096) {
        std::io::Write::write_all(&mut std_file, page).unwrap();
    }
    std_file.sync_all().unwrap();
    // SAFETY: a plain advice call on a descriptor we own.
    let r = unsafe {
        libc::posix_fadvise(
            std_file.as_raw_fd(),
            512 << 10,
            512 << 10,
            libc::POSIX_FADV_DONTNEED,
        )
    };
    assert_eq!(r, 0);
    let file = File::open(&path).await.unwrap();
    let (n, buf) = ok(file.read_at(Vec::with_capacity(1 << 20), 0).await);
    assert_eq!(n, 1 << 20);
    assert!(buf == data, "the bytes differ");
}

/// A read that reaches the end returns what there is, and its buffer's length says so.
pub async fn short_read_at_end_of_file() {
    let dir = TempDir::new("short");
    let path = dir.join("ten");
    fs::write(&path, b"0123456789").await.unwrap();
    let file = File::open(&path).await.unwrap();
    let (n, buf) = ok(file.read_at(Vec::with_capacity(16), 4).await);
    assert_eq!((n, &buf[..]), (6, &b"456789"[..]));
    // A Vec that is longer already keeps its length; `n` tells the new bytes.
    let (n, buf) = ok(file.read_at(vec![b'-'; 8], 7).await);
    assert_eq!((n, &buf[..]), (3, &b"789-----"[..]));
    // Vectored: the buffers fill in order and the last ones stay empty.
    let bufs = vec![
        Vec::with_capacity(4),
        Vec::with_capacity(4),
        Vec::with_capacity(4),
    ];
    let (n, bufs) = ok(file.read_vectored_at(bufs, 3).await);
    assert_eq!(n, 7);
    assert_eq!(bufs, [b"3456".to_vec(), b"789".to_vec(), vec![]]);
}

/// At and past the end a read returns 0 and leaves the buffer as it was.
pub async fn read_past_the_end_is_zero() {
    let dir = TempDir::new("past");
    let path = dir.join("ten");
    fs::write(&path, b"0123456789").await.unwrap();
    let file = File::open(&path).await.unwrap();
    for pos in [10, 11, 4096, 1 << 40] {
        let (n, buf) = ok(file.read_at(Vec::with_capacity(32), pos).await);
        assert_eq!((n, buf.len()), (0, 0), "at {pos}");
    }
    let (n, _) = ok(file.read_vectored_at(vec![vec![0u8; 4]], 10).await);
    assert_eq!(n, 0);
    // An empty file, an empty buffer.
    let empty = dir.join("empty");
    fs::write(&empty, b"").await.unwrap();
    let file = File::open(&empty).await.unwrap();
    assert_eq!(ok(file.read_at(Vec::with_capacity(8), 0).await).0, 0);
    assert_eq!(ok(file.read_at(Vec::new(), 0).await).0, 0);
}

/// `read_exact_at` on a file too short fails with `UnexpectedEof` and gives back what it read.
pub async fn read_exact_at_reports_unexpected_eof() {
    let dir = TempDir::new("exact");
    let path = dir.join("ten");
    fs::write(&path, b"0123456789").await.unwrap();
    let file = File::open(&path).await.unwrap();
    let (r, buf) = file.read_exact_at(Vec::with_capacity(8), 6).await;
    assert_eq!(r.unwrap_err().kind(), ErrorKind::UnexpectedEof);
    assert_eq!(buf, b"6789");
    let (r, buf) = file.read_exact_at(Vec::with_capacity(8), 2).await;
    r.unwrap();
    assert_eq!(buf, b"23456789");
}

/// A write past the end leaves a hole that reads as zeros.
pub async fn write_past_the_end_leaves_a_zeroed_hole() {
    let dir = TempDir::new("hole");
    let file = rw_file(&dir.join("f")).await;
    let (n, _) = ok(file.write_at(b"tail".as_slice(), 8192).await);
    assert_eq!(n, 4);
    assert_eq!(file.metadata().await.unwrap().len(), 8196);
    let ((), buf) = ok(file.read_exact_at(Vec::with_capacity(8196), 0).await);
    assert!(buf[..8192].iter().all(|&b| b == 0));
    assert_eq!(&buf[8192..], b"tail");
}

/// `write_vectored_at` gathers, `read_vectored_at` scatters, in order.
pub async fn vectored_reads_and_writes() {
    let dir = TempDir::new("vec");
    let file = rw_file(&dir.join("f")).await;
    let parts = vec![
        b"alpha-".to_vec(),
        Vec::new(),
        b"beta-".to_vec(),
        b"gamma".to_vec(),
    ];
    let (n, parts) = ok(file.write_vectored_at(parts, 3).await);
    assert_eq!(n, 16);
    assert_eq!(parts[0], b"alpha-", "the buffers come back");
    let bufs = vec![
        Vec::with_capacity(5),
        Vec::with_capacity(0),
        Vec::with_capacity(100),
    ];
    let (n, bufs) = ok(file.read_vectored_at(bufs, 0).await);
    assert_eq!(n, 19);
    assert_eq!(bufs[0], b"\0\0\0al");
    assert!(bufs[1].is_empty());
    assert_eq!(bufs[2], b"pha-beta-gamma");
    // No buffers at all: nothing to do.
    let (n, _) = ok(file.write_vectored_at(Vec::<Vec<u8>>::new(), 0).await);
    assert_eq!(n, 0);
}

/// `sync_all` and `sync_data` succeed on a written file (what they do to the device is not
/// observable here).
pub async fn sync_all_and_sync_data() {
    let dir = TempDir::new("sync");
    let file = rw_file(&dir.join("f")).await;
    ok(file.write_all_at(pattern(2, 10_000), 0).await);
    file.sync_data().await.unwrap();
    file.sync_all().await.unwrap();
    let dir_handle = File::open(dir.path()).await.unwrap();
    dir_handle.sync_all().await.unwrap();
}

/// `File::metadata`, `metadata` and `symlink_metadata` agree with std.
pub async fn metadata_of_files_dirs_and_links() {
    let dir = TempDir::new("meta");
    let path = dir.join("f");
    let file = rw_file(&path).await;
    ok(file.write_all_at(vec![7u8; 1234], 0).await);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let std_meta = std::fs::metadata(&path).unwrap();

    for meta in [
        file.metadata().await.unwrap(),
        fs::metadata(&path).await.unwrap(),
    ] {
        assert_eq!(meta.len(), 1234);
        assert!(meta.is_file() && !meta.is_dir() && !meta.is_symlink());
        assert!(meta.file_type().is_file());
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        assert!(!meta.permissions().readonly());
        assert_eq!(meta.ino(), std_meta.ino());
        assert_eq!(meta.dev(), std_meta.dev());
        assert_eq!(meta.nlink(), 1);
        assert_eq!((meta.uid(), meta.gid()), (std_meta.uid(), std_meta.gid()));
        assert_eq!(meta.blocks(), std_meta.blocks());
        assert_eq!(meta.modified().unwrap(), std_meta.modified().unwrap());
        assert_eq!(meta.accessed().unwrap(), std_meta.accessed().unwrap());
        let now = SystemTime::now() + Duration::from_secs(5);
        assert!(meta.changed().unwrap() <= now);
        // The birth time where the file system records it (std says the same).
        match (meta.created(), std_meta.created()) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(a), Err(_)) => assert_eq!(a.kind(), ErrorKind::Unsupported),
            (a, b) => panic!("created: ours {a:?}, std {b:?}"),
        }
    }

    let d = fs::metadata(dir.path()).await.unwrap();
    assert!(d.is_dir() && !d.is_file());

    let link = dir.join("link");
    fs::symlink(&path, &link).await.unwrap();
    assert!(fs::metadata(&link).await.unwrap().is_file(), "followed");
    let l = fs::symlink_metadata(&link).await.unwrap();
    assert!(l.is_symlink() && l.file_type().is_symlink() && !l.is_file());

    let null = fs::metadata("/dev/null").await.unwrap();
    assert!(null.file_type().is_char_device());
    assert_ne!(null.rdev(), 0);
}

/// `set_len` cuts a file short and extends it with zeros.
pub async fn set_len_truncates_and_extends() {
    let dir = TempDir::new("setlen");
    let file = rw_file(&dir.join("f")).await;
    ok(file.write_all_at(pattern(3, 5000), 0).await);
    file.set_len(100).await.unwrap();
    assert_eq!(file.metadata().await.unwrap().len(), 100);
    file.set_len(300).await.unwrap();
    let ((), buf) = ok(file.read_exact_at(Vec::with_capacity(300), 0).await);
    assert_eq!(buf[..100], pattern(3, 100)[..]);
    assert!(buf[100..].iter().all(|&b| b == 0));
    // Read-only: EINVAL, as ftruncate says.
    let ro = File::open(dir.join("f")).await.unwrap();
    let e = ro.set_len(0).await.unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
}

/// `allocate` grows a file to cover the range; a zero length is EINVAL.
pub async fn allocate_reserves_and_grows() {
    let dir = TempDir::new("falloc");
    let file = rw_file(&dir.join("f")).await;
    match file.allocate(0, 64 * 1024).await {
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            eprintln!("note: this file system has no fallocate; only the error was checked");
            return;
        }
        r => r.unwrap(),
    }
    let meta = file.metadata().await.unwrap();
    assert_eq!(meta.len(), 64 * 1024);
    assert!(meta.blocks() * 512 >= 64 * 1024, "{meta:?}");
    let e = file.allocate(0, 0).await.unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
}

/// On a file opened with `append`, every write goes to the end, whatever offset it names
/// (Linux's `pwrite` rule, which io_uring's write follows too); a difference from positional
/// writes elsewhere, pinned here.
pub async fn append_mode_writes_at_the_end_whatever_the_offset() {
    let dir = TempDir::new("append");
    let path = dir.join("log");
    fs::write(&path, b"first\n").await.unwrap();
    let log = OpenOptions::new().append(true).open(&path).await.unwrap();
    ok(log.write_all_at(b"second\n".as_slice(), 0).await);
    ok(log.write_all_at(b"third\n".as_slice(), 2).await);
    log.close().await.unwrap();
    assert_eq!(fs::read(&path).await.unwrap(), b"first\nsecond\nthird\n");
}

/// The free functions: `read`, `write`, `read_to_string`, on small, empty and large files.
pub async fn read_write_and_read_to_string() {
    let dir = TempDir::new("free");
    let path = dir.join("f");
    fs::write(&path, "héllo").await.unwrap();
    assert_eq!(fs::read_to_string(&path).await.unwrap(), "héllo");
    fs::write(&path, b"").await.unwrap();
    assert_eq!(fs::read(&path).await.unwrap(), b"");
    let big = pattern(4, 3 * 1024 * 1024 + 17);
    fs::write(&path, &big).await.unwrap();
    assert_eq!(
        fs::read(&path).await.unwrap(),
        big,
        "truncated and rewritten"
    );
    fs::write(&path, [0xff, 0xfe]).await.unwrap();
    let e = fs::read_to_string(&path).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData);
    // A file whose size statx cannot tell: read to its end all the same.
    let version = fs::read_to_string("/proc/self/stat").await.unwrap();
    assert!(version.starts_with(&std::process::id().to_string()));
}

/// `create_dir`, `create_dir_all`, `remove_dir` and their errors.
pub async fn directories() {
    let dir = TempDir::new("dirs");
    let a = dir.join("a");
    fs::create_dir(&a).await.unwrap();
    let e = fs::create_dir(&a).await.unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
    let e = fs::create_dir(dir.join("x/y")).await.unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));

    let deep = dir.join("b/c/d/e");
    fs::create_dir_all(&deep).await.unwrap();
    assert!(fs::metadata(&deep).await.unwrap().is_dir());
    fs::create_dir_all(&deep).await.unwrap(); // exists: fine
    fs::create_dir_all(dir.join("b/c")).await.unwrap();
    fs::create_dir_all("").await.unwrap();
    // Several tasks making overlapping trees at once.
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let p = dir.path().join(format!("p/q/r{i}"));
            spawn(async move { fs::create_dir_all(&p).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    // A file in the way.
    fs::write(dir.join("file"), b"x").await.unwrap();
    let e = fs::create_dir_all(dir.join("file/sub")).await.unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTDIR));
    let e = fs::create_dir_all(dir.join("file")).await.unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST));

    let e = fs::remove_dir(dir.join("b")).await.unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY));
    let e = fs::remove_dir(dir.join("file")).await.unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTDIR));
    for d in ["b/c/d/e", "b/c/d", "b/c", "b", "a"] {
        fs::remove_dir(dir.join(d)).await.unwrap();
    }
    let e = fs::remove_dir(&a).await.unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
}

/// `rename` moves a file and replaces an existing target; `remove_file` removes it.
pub async fn rename_replaces_the_target() {
    let dir = TempDir::new("rename");
    let (a, b) = (dir.join("a"), dir.join("b"));
    fs::write(&a, b"new").await.unwrap();
    fs::write(&b, b"old").await.unwrap();
    fs::rename(&a, &b).await.unwrap();
    assert_eq!(fs::read(&b).await.unwrap(), b"new");
    let e = fs::metadata(&a).await.unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    let e = fs::rename(&a, &b).await.unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    fs::remove_file(&b).await.unwrap();
    let e = fs::remove_file(&b).await.unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
}

/// `hard_link` and `symlink`.
pub async fn hard_and_symbolic_links() {
    let dir = TempDir::new("links");
    let original = dir.join("original");
    fs::write(&original, b"shared").await.unwrap();
    let hard = dir.join("hard");
    fs::hard_link(&original, &hard).await.unwrap();
    let (m1, m2) = (
        fs::metadata(&original).await.unwrap(),
        fs::metadata(&hard).await.unwrap(),
    );
    assert_eq!((m1.ino(), m1.nlink(), m2.nlink()), (m2.ino(), 2, 2));
    let e = fs::hard_link(&original, &hard).await.unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST));

    // A relative target is resolved from the link's directory.
    let soft = dir.join("soft");
    fs::symlink("original", &soft).await.unwrap();
    assert_eq!(fs::read(&soft).await.unwrap(), b"shared");
    assert_eq!(
        std::fs::read_link(&soft).unwrap(),
        std::path::Path::new("original")
    );
    let e = fs::symlink("original", &soft).await.unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
    // Removing the link leaves the file.
    fs::remove_file(&soft).await.unwrap();
    fs::remove_file(&hard).await.unwrap();
    assert_eq!(fs::metadata(&original).await.unwrap().nlink(), 1);
}

fn errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error()
}

/// Errors come back with the kernel's errno, the same on both backends.
pub async fn errors_carry_the_real_errno() {
    let dir = TempDir::new("errors");
    let missing = dir.join("missing");
    let e = File::open(&missing).await.unwrap_err();
    assert_eq!(
        (errno(&e), e.kind()),
        (Some(libc::ENOENT), ErrorKind::NotFound)
    );
    let e = fs::read(&missing).await.unwrap_err();
    assert_eq!(errno(&e), Some(libc::ENOENT));

    // A directory: opening it for writing is EISDIR; reading an open one is EISDIR too.
    let e = OpenOptions::new()
        .write(true)
        .open(dir.path())
        .await
        .unwrap_err();
    assert_eq!(errno(&e), Some(libc::EISDIR));
    let d = File::open(dir.path()).await.unwrap();
    let (r, _) = d.read_at(Vec::with_capacity(16), 0).await;
    assert_eq!(errno(&r.unwrap_err()), Some(libc::EISDIR));
    let e = fs::remove_file(dir.path()).await.unwrap_err();
    assert_eq!(errno(&e), Some(libc::EISDIR));

    // A file used as a directory.
    let f = dir.join("f");
    fs::write(&f, b"x").await.unwrap();
    let e = File::open(f.join("sub")).await.unwrap_err();
    assert_eq!(errno(&e), Some(libc::ENOTDIR));

    // The wrong access mode: EBADF.
    let ro = File::open(&f).await.unwrap();
    let (r, _) = ro.write_at(b"y".as_slice(), 0).await;
    assert_eq!(errno(&r.unwrap_err()), Some(libc::EBADF));
    let wo = OpenOptions::new().write(true).open(&f).await.unwrap();
    let (r, _) = wo.read_at(Vec::with_capacity(1), 0).await;
    assert_eq!(errno(&r.unwrap_err()), Some(libc::EBADF));

    // create_new on an existing file.
    let e = File::create_new(&f).await.unwrap_err();
    assert_eq!(
        (errno(&e), e.kind()),
        (Some(libc::EEXIST), ErrorKind::AlreadyExists)
    );

    // Refused before the kernel: std's EINVAL for options, InvalidInput for a NUL.
    let e = OpenOptions::new().open(&f).await.unwrap_err();
    assert_eq!(errno(&e), Some(libc::EINVAL));
    let e = File::open("bad\0name").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let e = fs::rename(&f, "bad\0name").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    // Offsets past i64::MAX (u64::MAX would mean "the current position" to io_uring).
    let (r, _) = ro.read_at(Vec::with_capacity(1), u64::MAX).await;
    assert_eq!(errno(&r.unwrap_err()), Some(libc::EINVAL));
    let (r, _) = wo.write_at(b"z".as_slice(), 1 << 63).await;
    assert_eq!(errno(&r.unwrap_err()), Some(libc::EINVAL));
}

/// `EACCES` with its errno. Root passes file permission checks (`CAP_DAC_OVERRIDE`), so a
/// `0o000` file proves it only for other users; a read-only sysctl refuses writes to root too
/// (`/proc/sys` checks the mode bits for everyone), which covers both cases.
pub async fn eacces_with_its_errno() {
    let e = OpenOptions::new()
        .write(true)
        .open("/proc/sys/kernel/osrelease")
        .await
        .unwrap_err();
    assert_eq!(
        (errno(&e), e.kind()),
        (Some(libc::EACCES), ErrorKind::PermissionDenied)
    );

    let dir = TempDir::new("eacces");
    let f = dir.join("locked");
    fs::write(&f, b"secret").await.unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o000)).unwrap();
    if euid() == 0 {
        eprintln!(
            "note: running as root, which ignores permission bits: the 0o000 file's EACCES \
             was not checked (the read-only sysctl's was)"
        );
        return;
    }
    let e = File::open(&f).await.unwrap_err();
    assert_eq!(errno(&e), Some(libc::EACCES));
}

/// `close` reports success, and a `File` whose descriptor is shared closes when the last
/// holder lets go.
pub async fn close_reports_and_waits_for_no_one() {
    let dir = TempDir::new("close");
    let path = dir.join("f");
    let file = File::create(&path).await.unwrap();
    let raw = file.shared_fd().raw();
    let held = file.shared_fd().clone();
    file.close().await.unwrap(); // shared: Ok at once, nothing closed
    assert!(fd_points_at(raw, &path), "still open: a clone holds it");
    drop(held);
    assert!(!fd_points_at(raw, &path), "the last holder closed it");

    let file = File::create(&path).await.unwrap();
    let raw = file.shared_fd().raw();
    file.close().await.unwrap();
    assert!(!fd_points_at(raw, &path));

    // Dropped: closed in the background (a detached CLOSE, or a pool job).
    let file = File::create(&path).await.unwrap();
    let raw = file.shared_fd().raw();
    drop(file);
    for _ in 0..2000 {
        if !fd_points_at(raw, &path) {
            return;
        }
        ringloop_runtime::sleep(Duration::from_millis(1))
            .await
            .unwrap();
    }
    panic!("a dropped File was not closed");
}

fn fd_points_at(fd: i32, path: &std::path::Path) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).is_ok_and(|p| p == path)
}

/// `from_std`, `try_into_std` and `try_clone`.
pub async fn std_conversions_and_try_clone() {
    let dir = TempDir::new("std");
    let path = dir.join("f");
    std::fs::write(&path, b"from std").unwrap();
    let file = File::from_std(std::fs::File::open(&path).unwrap());
    assert!(!file.is_direct());
    let (n, buf) = ok(file.read_at(Vec::with_capacity(8), 5).await);
    assert_eq!(&buf[..n], b"std");

    let clone = file.try_clone().unwrap();
    assert_ne!(clone.shared_fd().raw(), file.shared_fd().raw());
    let (n, _) = ok(clone.read_at(Vec::with_capacity(8), 0).await);
    assert_eq!(n, 8);

    // Not while the descriptor is shared.
    let held = file.shared_fd().clone();
    let file = file.try_into_std().unwrap_err();
    drop(held);
    let std_file = file.try_into_std().unwrap();
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 4];
    std_file.read_exact_at(&mut b, 0).unwrap();
    assert_eq!(&b, b"from");
    let back: File = std_file.into();
    back.close().await.unwrap();
    clone.close().await.unwrap();
}

/// Many tasks read and write one file at once, every byte checked: 64 writers put distinct
/// blocks at interleaved offsets while 64 readers read blocks already written, then every block
/// is read back.
pub async fn many_tasks_share_one_file() {
    const BLOCKS: usize = 128;
    const BLOCK: usize = 4096 + 13; // not a page: blocks straddle pages
    let dir = TempDir::new("many");
    let file = Rc::new(rw_file(&dir.join("f")).await);
    // The first half is written up front, for the readers.
    for i in 0..BLOCKS / 2 {
        ok(file
            .write_all_at(pattern(i as u8, BLOCK), (i * BLOCK) as u64)
            .await);
    }
    let mut tasks = Vec::new();
    for w in 0..64 {
        let writer = file.clone();
        tasks.push(spawn(async move {
            // Writers take the second half, interleaved: block 64 + w.
            let i = BLOCKS / 2 + w;
            let (r, _) = writer
                .write_all_at(pattern(i as u8, BLOCK), (i * BLOCK) as u64)
                .await;
            r.unwrap();
        }));
        let reader = file.clone();
        tasks.push(spawn(async move {
            let i = (w * 7) % (BLOCKS / 2);
            let (r, buf) = reader
                .read_exact_at(Vec::with_capacity(BLOCK), (i * BLOCK) as u64)
                .await;
            r.unwrap();
            assert_eq!(buf, pattern(i as u8, BLOCK), "block {i}");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let readers: Vec<_> = (0..BLOCKS)
        .map(|i| {
            let file = file.clone();
            spawn(async move {
                let (r, buf) = file
                    .read_exact_at(Vec::with_capacity(BLOCK), (i * BLOCK) as u64)
                    .await;
                r.unwrap();
                buf == pattern(i as u8, BLOCK)
            })
        })
        .collect();
    for (i, t) in readers.into_iter().enumerate() {
        assert!(t.await.unwrap(), "block {i} differs");
    }
    assert_eq!(
        file.metadata().await.unwrap().len(),
        (BLOCKS * BLOCK) as u64
    );
}

/// A task cancelled before its file op is first polled: the op does not run (here: the write
/// does not happen) and resolves to the cancellation, with the buffer back.
pub async fn a_cancel_before_the_op_starts_runs_nothing() {
    let dir = TempDir::new("cancel-before");
    let path = dir.join("f");
    fs::write(&path, b"").await.unwrap();
    let file = Rc::new(OpenOptions::new().write(true).open(&path).await.unwrap());
    let f = file.clone();
    let task = spawn(async move {
        // The request comes while the task runs, before the op's first poll.
        ringloop_runtime::current_task().unwrap().cancel();
        let (r, buf) = f.write_at(b"never".to_vec(), 0).await;
        (r.map_err(|e| is_cancelled(&e)), buf)
    });
    let (r, buf) = task.await.unwrap();
    assert_eq!(r, Err(true));
    assert_eq!(buf, b"never");
    assert_eq!(file.metadata().await.unwrap().len(), 0);
}

/// A task cancelled while its read is in flight gets its buffer back either way: with the
/// bytes, if the read completed first (then the cancellation reaches its next await), or with
/// an error carrying the cancellation, if the kernel stopped it first.
pub async fn a_cancel_in_flight_returns_the_buffer_and_reaches_the_task() {
    let dir = TempDir::new("cancel-in-flight");
    let path = dir.join("f");
    let data = pattern(9, 4 << 20);
    fs::write(&path, &data).await.unwrap();
    let file = Rc::new(File::open(&path).await.unwrap());
    for round in 0..20 {
        let f = file.clone();
        let task = spawn(async move {
            let (r, buf) = f.read_at(Vec::with_capacity(4 << 20), 0).await;
            let outcome = match r {
                Ok(n) => {
                    assert_eq!(buf[..n], data_prefix(n), "round {round}");
                    // The request (now, or when it comes) reaches the next await.
                    let next = ringloop_runtime::sleep(Duration::from_secs(3600)).await;
                    Ok(next.is_err())
                }
                Err(e) => {
                    assert!(is_cancelled(&e), "{e}");
                    Err(())
                }
            };
            (outcome, buf.capacity())
        });
        yield_now().await.unwrap(); // the read goes in flight
        task.cancel();
        let (outcome, capacity) = task.await.unwrap();
        assert_eq!(capacity, 4 << 20, "the buffer came back");
        if let Ok(next_cancelled) = outcome {
            assert!(next_cancelled, "round {round}: the cancellation was lost");
        }
    }
}

fn data_prefix(n: usize) -> Vec<u8> {
    pattern(9, n)
}

/// A FIFO named `fifo` in `dir`.
fn fifo(dir: &TempDir) -> std::path::PathBuf {
    let path = dir.join("fifo");
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    path
}

/// A thread that opens a FIFO for reading after 300 ms (letting an open for writing finish)
/// and keeps its end open until told the open has resolved: a reader that came and went
/// before the open started waiting would leave it waiting for ever.
struct LateReader {
    thread: std::thread::JoinHandle<()>,
    done: std::sync::mpsc::Sender<()>,
}

impl LateReader {
    fn start(path: &std::path::Path) -> LateReader {
        let (done, done_rx) = std::sync::mpsc::channel::<()>();
        let path = path.to_owned();
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let r = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path)
                .unwrap();
            let _ = done_rx.recv_timeout(Duration::from_secs(60));
            drop(r);
        });
        LateReader { thread, done }
    }

    /// The open has resolved: the reader may go. Await the result for the thread's end
    /// (the loop goes on meanwhile).
    fn done(self) -> impl std::future::Future<Output = ()> {
        let _ = self.done.send(());
        async move {
            while !self.thread.is_finished() {
                ringloop_runtime::sleep(Duration::from_millis(5))
                    .await
                    .unwrap();
            }
            self.thread.join().unwrap();
        }
    }
}

/// A task suspended on a file operation shows it in the task tree as the op's name, as a ring
/// op and a pool job alike: opening a FIFO for writing waits in the kernel's `openat` (on a pool
/// thread, or on io_uring's worker: `O_CREAT` keeps the ring from trying it inline) until a
/// reader opens it.
pub async fn a_task_waiting_on_a_file_op_shows_the_op() {
    let dir = TempDir::new("awaiting");
    let path = fifo(&dir);
    let p = path.clone();
    let writer = spawn(async move {
        let mut options = OpenOptions::new();
        options.write(true).create(true);
        options.open(&p).await.map(|_| ())
    });
    for _ in 0..4 {
        yield_now().await.unwrap();
    }
    assert_eq!(
        writer.as_ref().awaiting(),
        Some(ringloop_runtime::Awaiting::Io {
            op: "openat",
            fd: None,
            bytes: None
        })
    );
    // A reader lets the open finish (`O_NONBLOCK`: it does not wait for a writer itself).
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .unwrap();
    writer.await.unwrap().unwrap();
    drop(reader);
}

/// A deadline on a file operation that waits in the kernel: an open of a FIFO for writing,
/// which waits until a reader comes (one comes after 300 ms, from a thread).
///
/// * On the blocking pool the wait gives up at the deadline (`ETIMEDOUT`); the blocked call
///   finishes when the reader comes, and its file is closed on the pool thread.
/// * On io_uring the open runs on the kernel's io-wq worker, and the linked timeout can only
///   ask the kernel to interrupt it. 5.10 and 6.1 do (the worker's `-EINTR` is reported as the
///   deadline's `ETIMEDOUT`; 6.1 posts `-ERESTARTSYS`, which means the same); 6.12 and later
///   leave a running open alone, and the op's own result wins, as it always does: the open
///   succeeds when the reader comes, after the deadline.
pub async fn a_deadline_on_an_open_that_waits() {
    use ringloop_runtime::DeadlineExt;
    let dir = TempDir::new("deadline-open");
    let path = fifo(&dir);
    let started = std::time::Instant::now();
    let submitted = ringloop_runtime::current_stats().ops_submitted;
    let reader = LateReader::start(&path);
    let mut options = OpenOptions::new();
    options.write(true).create(true);
    let r = options
        .open(&path)
        .timeout(Duration::from_millis(20))
        .await
        .map(drop);
    let reader = reader.done();
    match r {
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
            assert_eq!(e.raw_os_error(), Some(libc::ETIMEDOUT));
        }
        Ok(()) => {
            let on_ring = ringloop_runtime::current_stats().ops_submitted > submitted;
            assert!(on_ring, "the pool gives up at the deadline");
            assert!(
                started.elapsed() >= Duration::from_millis(300),
                "opened before a reader came"
            );
        }
    }
    reader.await;
}

/// A task cancelled while an open waits in the kernel (a FIFO with no reader yet; one comes
/// after 300 ms): the cancellation always reaches the task. Where the open can be stopped (the
/// pool before its job starts; io_uring on 5.10 and 6.1, whose interrupted worker says `EINTR`
/// or `ERESTARTSYS`) the open resolves cancelled; where it runs on (a started pool job, io_uring
/// on 6.12 and later), it resolves with its file, and the cancellation comes at the next await.
pub async fn a_cancel_of_an_open_that_waits_reaches_the_task() {
    let dir = TempDir::new("cancel-open");
    let path = fifo(&dir);
    let reader = LateReader::start(&path);
    let p = path.clone();
    let task = spawn(async move {
        let mut options = OpenOptions::new();
        options.write(true).create(true);
        match options.open(&p).await {
            Ok(file) => {
                drop(file);
                // The request waits for this await.
                ringloop_runtime::sleep(Duration::from_secs(3600))
                    .await
                    .is_err()
            }
            Err(e) => {
                assert!(is_cancelled(&e), "{e}");
                true
            }
        }
    });
    for _ in 0..4 {
        yield_now().await.unwrap();
    }
    task.cancel();
    let outcome = task.await;
    let reader = reader.done();
    match outcome {
        Ok(reached) => assert!(reached, "the cancellation was lost"),
        Err(e) => assert!(e.is_cancelled(), "{e:?}"),
    }
    reader.await;
}
