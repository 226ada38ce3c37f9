//! Draining the command's stdout/stderr into the [`ExecSink`] with backpressure.

use std::time::Duration;

use crownest_core::{ExecSink, OutputStream};
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::sync::watch;

/// Largest single read (and so the largest slice handed to the sink at once).
pub(crate) const READ_CHUNK: usize = 64 * 1024;

/// How a pump ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PumpEnd {
    /// The pipe reached EOF: every writer closed it.
    Eof,
    /// The command had exited and the pipe stayed idle for the drain timeout while some
    /// process still held it open: it was abandoned.
    Abandoned,
}

/// Reads `reader` in ≤ 64 KiB pieces and hands each to the sink, awaiting it (the
/// backpressure: nothing more is read until the sink accepted the previous piece). Once
/// `exited` turns true, a read that stays idle for `idle` abandons the pipe.
pub(crate) async fn pump<R: AsyncRead + Unpin>(
    mut reader: R,
    stream: OutputStream,
    sink: &dyn ExecSink,
    exited: watch::Receiver<bool>,
    idle: Duration,
) -> PumpEnd {
    // Uninitialized capacity, read into with `read_buf`: a zeroed buffer would fault in
    // all 64 KiB of it in every command, output or not (16 page faults per stream).
    let mut buf = Vec::with_capacity(READ_CHUNK);
    loop {
        buf.clear();
        let mut exited = exited.clone();
        let idle_after_exit = async move {
            let _ = exited.wait_for(|e| *e).await;
            tokio::time::sleep(idle).await;
        };
        let n = tokio::select! {
            biased;
            r = reader.read_buf(&mut buf) => match r {
                Ok(0) => return PumpEnd::Eof,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return PumpEnd::Eof,
            },
            () = idle_after_exit => return PumpEnd::Abandoned,
        };
        sink.output(stream, &buf[..n]).await;
    }
}
