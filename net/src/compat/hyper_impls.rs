//! hyper's `rt::Read` and `rt::Write` for [`Io`].

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};

use super::{Io, ReadStream, WriteStream};

/// Reads into the cursor's unfilled part. A cancellation of the ringloop task is an error
/// carrying [`Cancelled`](ringloop_runtime::Cancelled) (see the [module docs](super)).
impl<S: ReadStream> Read for Io<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY: `poll_read_uninit` never de-initialises: it only writes initialised bytes.
        let dst = unsafe { buf.as_mut() };
        let n = ready!(self.get_mut().poll_read_uninit(cx, dst))?;
        // SAFETY: `poll_read_uninit` initialised the first `n` bytes of the unfilled part.
        unsafe { buf.advance(n) };
        Poll::Ready(Ok(()))
    }
}

/// As the tokio `AsyncWrite` impl: writes go straight to the socket, `poll_flush` is always
/// ready, `poll_shutdown` half-closes.
impl<S: WriteStream> Write for Io<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_vectored_inner(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_vectored_inner(cx, bufs)
    }

    /// True (hyper then writes a message's head and body with one call).
    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_shutdown_inner()
    }
}
