//! A user-defined op kind (a positioned file read), written outside the crate as a user would,
//! runs on both backends through the same `Op` future.

mod common;

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{opcode, squeue, types};
use ringloop_runtime::{Interest, Op, OpKind, Runtime};

/// `pread` into an owned buffer.
struct ReadAt {
    file: std::rc::Rc<File>,
    offset: u64,
    buf: Vec<u8>,
}

// SAFETY: the SQE points into `self.buf`'s heap memory (owned by the op, never reallocated while
// in flight) and names `self.file`'s descriptor, which the op keeps open.
unsafe impl OpKind for ReadAt {
    type Output = (io::Result<usize>, Vec<u8>);

    fn sqe(&mut self) -> squeue::Entry {
        opcode::Read::new(
            types::Fd(self.file.as_raw_fd()),
            self.buf.as_mut_ptr(),
            self.buf.capacity() as u32,
        )
        .offset(self.offset)
        .build()
    }

    fn readiness(&self) -> (RawFd, Interest) {
        (self.file.as_raw_fd(), Interest::Read)
    }

    fn attempt(&mut self) -> io::Result<u32> {
        // SAFETY: the buffer is valid for `capacity` bytes of writes.
        let n = unsafe {
            libc::pread(
                self.file.as_raw_fd(),
                self.buf.as_mut_ptr().cast(),
                self.buf.capacity(),
                self.offset as libc::off_t,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as u32)
        }
    }

    fn complete(self, result: io::Result<u32>, _flags: u32) -> Self::Output {
        let mut buf = self.buf;
        let result = result.map(|n| {
            // SAFETY: the kernel wrote `n` bytes at the start of the buffer.
            unsafe { buf.set_len(n as usize) };
            n as usize
        });
        (result, buf)
    }
}

#[test]
fn user_defined_file_read_op_runs_on_both_backends() {
    let path = std::env::temp_dir().join(format!("ringloop-custom-op-{}", std::process::id()));
    File::create(&path)
        .unwrap()
        .write_all(b"hello from a custom op")
        .unwrap();
    for backend in common::backends() {
        let rt = Runtime::builder().backend(backend).build().unwrap();
        let file = std::rc::Rc::new(File::open(&path).unwrap());
        let (n, buf) = rt.block_on(Op::new(ReadAt {
            file,
            offset: 11,
            buf: Vec::with_capacity(64),
        }));
        assert_eq!(n.unwrap(), 11, "{backend}");
        assert_eq!(buf, b"a custom op", "{backend}");
        assert_eq!(rt.stats().ops_in_flight, 0);
    }
    std::fs::remove_file(&path).unwrap();
}
