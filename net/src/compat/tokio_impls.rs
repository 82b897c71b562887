//! tokio's `AsyncRead` and `AsyncWrite` for [`Io`].

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Io, ReadStream, WriteStream};

/// Reads into the unfilled part of `buf`. A cancellation of the ringloop task is an error
/// carrying [`Cancelled`](ringloop_runtime::Cancelled) (see the [module docs](super)).
impl<S: ReadStream> AsyncRead for Io<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY: `poll_read_uninit` never de-initialises: it only writes initialised bytes.
        let dst = unsafe { buf.unfilled_mut() };
        let n = ready!(self.get_mut().poll_read_uninit(cx, dst))?;
        // SAFETY: `poll_read_uninit` initialised the first `n` bytes of the unfilled part.
        unsafe { buf.assume_init(n) };
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

/// Writes go straight to the socket (nothing is buffered, so `poll_flush` is always ready);
/// a cancellation of the ringloop task while a write waits for room is an error carrying
/// [`Cancelled`](ringloop_runtime::Cancelled), with nothing written (see the
/// [module docs](super)).
impl<S: WriteStream> AsyncWrite for Io<S> {
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

    /// True: a vectored write is one `sendmsg` (at most 1024 slices of it).
    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Always ready: a write that returned `Ready` put its bytes in the kernel's send buffer.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Shuts down the write direction (once; later calls are ready at once): the peer reads
    /// the end of the stream, and this side can still read what the peer sends.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_shutdown_inner()
    }
}
