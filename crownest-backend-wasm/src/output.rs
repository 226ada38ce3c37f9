//! The guest's stdout and stderr: a WASI output stream that hands every write to the
//! engine's [`ExecSink`](crownest_core::ExecSink) and makes the guest wait until the sink
//! accepted it.
//!
//! Why not `MemoryOutputPipe`: it has a fixed capacity and traps the guest when full, so a
//! chatty program would die instead of being slowed down. Here a write is a message
//! (bytes + an acknowledgement) on a channel that `exec` drains into the sink; the stream
//! reports "not ready" (`check_write` = 0) until the acknowledgement arrives, and WASI's
//! blocking write waits on that readiness. So at most one chunk (≤ 64 KiB, in practice the
//! 4 KiB pieces WASI preview 1 writes) per stream handle is in flight, and the guest runs
//! exactly as fast as the sink accepts its output.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use crownest_core::OutputStream;
use tokio::io::AsyncWrite;
use tokio::sync::{mpsc, oneshot};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{Pollable, StreamError, StreamResult};

/// Largest write permitted at once (the same bound wasmtime-wasi uses for its streams).
const MAX_WRITE: usize = 64 * 1024;

/// One write of the guest, waiting to be accepted by the sink.
#[derive(Debug)]
pub(crate) struct OutputChunk {
    /// Which stream.
    pub(crate) stream: OutputStream,
    /// The bytes.
    pub(crate) data: Bytes,
    /// Completed once the sink accepted the bytes; the guest waits for it.
    pub(crate) ack: oneshot::Sender<()>,
}

/// A guest stdout or stderr feeding `exec`'s output channel.
#[derive(Debug, Clone)]
pub(crate) struct SinkPipe {
    stream: OutputStream,
    tx: mpsc::UnboundedSender<OutputChunk>,
}

impl SinkPipe {
    /// A pipe for `stream` sending into `tx`.
    pub(crate) fn new(stream: OutputStream, tx: mpsc::UnboundedSender<OutputChunk>) -> Self {
        Self { stream, tx }
    }

    fn writer(&self) -> SinkWriter {
        SinkWriter {
            pipe: self.clone(),
            pending: None,
            closed: false,
        }
    }
}

impl IsTerminal for SinkPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for SinkPipe {
    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        Box::new(self.writer())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.writer())
    }
}

/// One handle on a [`SinkPipe`], with at most one write in flight.
struct SinkWriter {
    pipe: SinkPipe,
    /// The acknowledgement of the write in flight.
    pending: Option<oneshot::Receiver<()>>,
    /// The receiving side is gone (the command is being stopped).
    closed: bool,
}

impl SinkWriter {
    /// Sends one chunk; the caller checked that nothing is in flight.
    fn send(&mut self, data: Bytes) -> StreamResult<()> {
        if self.closed {
            return Err(StreamError::Closed);
        }
        if data.is_empty() {
            return Ok(());
        }
        let (ack, rx) = oneshot::channel();
        let chunk = OutputChunk {
            stream: self.pipe.stream,
            data,
            ack,
        };
        if self.pipe.tx.send(chunk).is_err() {
            self.closed = true;
            return Err(StreamError::Closed);
        }
        self.pending = Some(rx);
        Ok(())
    }

    /// Polls the write in flight; `Ready` once nothing is in flight.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(rx) = self.pending.as_mut() {
            let r = ready!(Pin::new(rx).poll(cx));
            self.pending = None;
            if r.is_err() {
                self.closed = true;
            }
        }
        Poll::Ready(())
    }

    /// Non-blocking check of the write in flight: true when nothing is in flight.
    fn settle(&mut self) -> bool {
        let Some(rx) = self.pending.as_mut() else {
            return true;
        };
        match rx.try_recv() {
            Ok(()) => {
                self.pending = None;
                true
            }
            Err(oneshot::error::TryRecvError::Empty) => false,
            Err(oneshot::error::TryRecvError::Closed) => {
                self.pending = None;
                self.closed = true;
                true
            }
        }
    }
}

impl wasmtime_wasi::p2::OutputStream for SinkWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if !self.settle() {
            return Err(StreamError::trap("write without a permit from check_write"));
        }
        if bytes.len() > MAX_WRITE {
            return Err(StreamError::trap(
                "write larger than the permit from check_write",
            ));
        }
        self.send(bytes)
    }

    fn flush(&mut self) -> StreamResult<()> {
        // Nothing is buffered here: `check_write` already waits for the write in flight.
        if self.closed {
            return Err(StreamError::Closed);
        }
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        if !self.settle() {
            return Ok(0);
        }
        if self.closed {
            return Err(StreamError::Closed);
        }
        Ok(MAX_WRITE)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for SinkWriter {
    async fn ready(&mut self) {
        std::future::poll_fn(|cx| self.poll_pending(cx)).await;
    }
}

impl AsyncWrite for SinkWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        ready!(self.poll_pending(cx));
        let n = buf.len().min(MAX_WRITE);
        match self.send(Bytes::copy_from_slice(&buf[..n])) {
            Ok(()) => Poll::Ready(Ok(n)),
            Err(_) => Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_pending(cx));
        if self.closed {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use wasmtime_wasi::p2::OutputStream as _;

    #[tokio::test]
    async fn a_write_waits_for_the_acknowledgement() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let pipe = SinkPipe::new(OutputStream::Stdout, tx);
        let mut w = pipe.writer();
        assert_eq!(w.check_write().unwrap(), MAX_WRITE);
        w.write(Bytes::from_static(b"hello")).unwrap();
        // In flight: no permit until the sink acknowledged.
        assert_eq!(w.check_write().unwrap(), 0);
        let chunk = rx.recv().await.unwrap();
        assert_eq!(&chunk.data[..], b"hello");
        assert_eq!(w.check_write().unwrap(), 0);
        chunk.ack.send(()).unwrap();
        w.ready().await;
        assert_eq!(w.check_write().unwrap(), MAX_WRITE);
    }

    #[tokio::test]
    async fn a_gone_receiver_closes_the_stream() {
        let (tx, rx) = mpsc::unbounded_channel();
        let pipe = SinkPipe::new(OutputStream::Stderr, tx);
        let mut w = pipe.writer();
        drop(rx);
        assert!(matches!(
            w.write(Bytes::from_static(b"x")),
            Err(StreamError::Closed)
        ));
        assert!(matches!(w.check_write(), Err(StreamError::Closed)));
    }
}
