//! An output stream that breaks, or ends early, is never recorded as the whole output: the
//! run fails `sandbox_error` naming it (before, the attach stream's end was only logged,
//! and a run could succeed with its output cut short).
//!
//! The break is provoked with a proxy in front of the Docker socket that forwards every
//! request and cuts the attach stream: in the middle of a frame, or cleanly between two
//! frames, as the daemon itself does ~2 s after the container's exit when its copy of the
//! output is behind (seen under CPU starvation: 8 MB of output ended "succeeded" with its
//! tail missing).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crownest_backend_docker::{DockerBackend, DockerConfig};
use crownest_core::event::FailureKind;
use crownest_core::{RunStatus, SandboxBackend as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};

/// How the proxy ends an attach stream.
#[derive(Clone, Copy)]
enum Cut {
    /// After this many bytes of the answer, wherever that falls.
    Raw(usize),
    /// After the first whole frame that brings the output past this many bytes, with a
    /// clean end of the connection.
    BetweenFrames(usize),
}

/// Where a clean cut may fall in `answer` (the attach answer so far): the end of the last
/// whole frame once more than `after` bytes of output have passed.
fn frame_boundary(answer: &[u8], after: usize) -> Option<usize> {
    let mut at = answer.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let mut output = 0;
    while answer.len() >= at + 8 {
        let len = u32::from_be_bytes(answer[at + 4..at + 8].try_into().unwrap()) as usize;
        if answer.len() < at + 8 + len {
            return None;
        }
        at += 8 + len;
        output += len;
        if output > after {
            return Some(at);
        }
    }
    None
}

/// Forwards `listen` to the local Docker socket; on a connection that asked for an attach,
/// ends the answer as `cut` says.
fn cutting_proxy(listen: PathBuf, cut: Cut) {
    let listener = UnixListener::bind(&listen).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Ok(upstream) = UnixStream::connect("/var/run/docker.sock").await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut ur, mut uw) = upstream.into_split();
                let attach = Arc::new(AtomicBool::new(false));
                let seen = attach.clone();
                let up = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = cr.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        if buf[..n].windows(8).any(|w| w == b"/attach?") {
                            seen.store(true, Ordering::SeqCst);
                        }
                        if uw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                let down = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut sent = 0;
                    let mut answer = Vec::new();
                    loop {
                        let n = ur.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        if let (true, Cut::BetweenFrames(after)) =
                            (attach.load(Ordering::SeqCst), cut)
                        {
                            let start = answer.len();
                            answer.extend_from_slice(&buf[..n]);
                            if let Some(end) = frame_boundary(&answer, after) {
                                let _ = cw.write_all(&answer[start.min(end)..end]).await;
                                let _ = cw.shutdown().await;
                                return;
                            }
                        }
                        if let (true, Cut::Raw(cut_after)) = (attach.load(Ordering::SeqCst), cut) {
                            if sent + n > cut_after {
                                let _ = cw.write_all(&buf[..cut_after - sent]).await;
                                return;
                            }
                            sent += n;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                // Whichever side ends first closes both.
                tokio::select! {
                    () = up => {}
                    () = down => {}
                }
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_output_stream_fails_the_run_instead_of_shortening_its_output() {
    // Odd, so the cut falls inside a frame.
    cut_short(Cut::Raw(300_001), "output stream").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_stream_that_ends_early_but_cleanly_fails_the_run() {
    // The daemon's own cut: whole frames, then a clean end.
    cut_short(Cut::BetweenFrames(300_000), "end mark").await;
}

async fn cut_short(cut: Cut, named: &str) {
    let Some(direct) = common::backend().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    cutting_proxy(socket.clone(), cut);
    let b = DockerBackend::connect(
        DockerConfig::default().with_host(format!("unix://{}", socket.display())),
    )
    .await
    .unwrap();
    // 2 MB of numbered lines: far more than the proxy lets through.
    let code = "import sys\nfor i in range(250_000):\n    sys.stdout.write('%07d\\n' % i)";
    let (done, events) = common::run(&b, common::py(code)).await;
    assert_eq!(done.status, RunStatus::Failed, "{:?}", done.failure);
    let failure = done.failure.as_ref().unwrap();
    assert_eq!(failure.kind, FailureKind::SandboxError, "{failure:?}");
    assert!(failure.message.contains(named), "{}", failure.message);
    let out = common::output_of(&events, crownest_core::OutputStream::Stdout);
    assert!(out.len() < 2_000_000, "the output was cut: {}", out.len());
    // The sandbox is still destroyed (through the proxy, which forwards everything else).
    let sandbox = done.sandbox.as_ref().unwrap();
    assert!(sandbox.destroyed, "{sandbox:?}");
    common::assert_gone(&direct, &sandbox.id).await;
    assert!(direct.templates().await.is_ok());
}
