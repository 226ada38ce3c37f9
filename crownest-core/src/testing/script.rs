//! The fake's script interpreter: each argv element after `fake` is one step (the table in
//! the module docs of [`crate::testing`]).

use std::time::Duration;

use tokio::sync::watch;

use crate::backend::{ExecOutcome, ExecRequest, ExecSink, ExitStatus, KillSignal};
use crate::error::{Error, Result};
use crate::event::OutputStream;
use crate::spec::WorkspacePath;

use super::{FakeSandbox, Node};

/// The fake's key for a workspace path (the normalized [`WorkspacePath`]); `None` when the
/// argument is not a workspace path.
fn key(path: &str) -> Option<String> {
    WorkspacePath::parse(path)
        .ok()
        .map(|p| p.as_str().to_owned())
}

impl FakeSandbox {
    /// `exec`: runs the script of `request.argv` (the table in the module docs).
    pub(super) async fn run_script(
        &self,
        request: &ExecRequest,
        sink: &dyn ExecSink,
    ) -> Result<ExecOutcome> {
        if request.argv.first().map(String::as_str) != Some("fake") {
            return Ok(ExecOutcome::new(ExitStatus::SpawnFailed(format!(
                "no such program: {:?}",
                request.argv.first()
            ))));
        }
        let cwd = match WorkspacePath::parse(&request.cwd) {
            Ok(cwd) => cwd.as_str().to_owned(),
            Err(e) => {
                return Ok(ExecOutcome::new(ExitStatus::SpawnFailed(format!(
                    "invalid cwd {:?}: {e}",
                    request.cwd
                ))));
            }
        };
        if let Some(why) = self.bad_cwd(&cwd) {
            return Ok(ExecOutcome::new(ExitStatus::SpawnFailed(why)));
        }
        // A signal sent while nothing ran does not reach this command.
        self.signal.send_replace(None);
        sink.started().await;
        let mut rx = self.signal.subscribe();
        let (mut ignore_term, mut stuck) = (false, false);
        for step in &request.argv[1..] {
            if let Some(sig) = wait_signal(&mut rx, ignore_term, stuck, Some(Duration::ZERO)).await
            {
                return Ok(ExecOutcome::new(ExitStatus::Signaled(sig)));
            }
            let (verb, arg) = step.split_once(':').unwrap_or((step.as_str(), ""));
            match verb {
                "out" => {
                    sink.output(OutputStream::Stdout, format!("{arg}\n").as_bytes())
                        .await
                }
                "err" => {
                    sink.output(OutputStream::Stderr, format!("{arg}\n").as_bytes())
                        .await
                }
                "outbytes" => {
                    let mut n: usize = arg.parse().unwrap_or(0);
                    let piece = vec![b'x'; 64 * 1024];
                    while n > 0 {
                        let k = n.min(piece.len());
                        sink.output(OutputStream::Stdout, &piece[..k]).await;
                        n -= k;
                    }
                }
                "bin" => {
                    sink.output(OutputStream::Stdout, &[0xff, 0xfe, 0x00, 0x80])
                        .await
                }
                "env" => {
                    let v = request
                        .command_env()
                        .get(arg)
                        .cloned()
                        .unwrap_or_else(|| "<unset>".into());
                    sink.output(OutputStream::Stdout, format!("{v}\n").as_bytes())
                        .await;
                }
                "cwd" => {
                    let line = if cwd.is_empty() {
                        "/workspace\n".to_owned()
                    } else {
                        format!("/workspace/{cwd}\n")
                    };
                    sink.output(OutputStream::Stdout, line.as_bytes()).await;
                }
                "cat" => {
                    let node = key(arg).and_then(|k| self.files().get(&k).cloned());
                    match node {
                        Some(Node::File(data, _)) => sink.output(OutputStream::Stdout, &data).await,
                        _ => return Ok(ExecOutcome::new(ExitStatus::Exited(1))),
                    }
                }
                "stdin" => sink.output(OutputStream::Stdout, b"0\n").await,
                "ls" => {
                    let prefix = if cwd.is_empty() {
                        String::new()
                    } else {
                        format!("{cwd}/")
                    };
                    let names: std::collections::BTreeSet<String> = self
                        .files()
                        .keys()
                        .filter_map(|k| k.strip_prefix(&prefix))
                        .filter_map(|rest| rest.split('/').next())
                        .filter(|n| !n.is_empty())
                        .map(str::to_owned)
                        .collect();
                    let text: String = names.into_iter().map(|n| n + "\n").collect();
                    sink.output(OutputStream::Stdout, text.as_bytes()).await;
                }
                "tryread" => {
                    let node = WorkspacePath::parse_entry(arg)
                        .ok()
                        .and_then(|p| self.files().get(p.as_str()).cloned());
                    let line = match node {
                        Some(Node::File(data, _)) => {
                            format!("OPENED {}\n", String::from_utf8_lossy(&data))
                        }
                        _ => "denied\n".to_owned(),
                    };
                    sink.output(OutputStream::Stdout, line.as_bytes()).await;
                }
                "fifo" => {
                    if let Some(k) = key(arg) {
                        self.files().insert(k, Node::Fifo);
                    }
                }
                "die" => {
                    return Ok(ExecOutcome::new(ExitStatus::Signaled(
                        arg.parse().unwrap_or(15),
                    )));
                }
                "write" => {
                    let (p, c) = arg.split_once('=').unwrap_or((arg, ""));
                    if let Some(k) = key(p) {
                        self.files()
                            .insert(k, Node::File(c.as_bytes().to_vec(), 0o644));
                    }
                }
                "link" => {
                    let (p, t) = arg.split_once('=').unwrap_or((arg, ""));
                    if let Some(k) = key(p) {
                        self.files().insert(k, Node::Link(t.to_owned()));
                    }
                }
                "sleep" => {
                    let ms = arg.parse().unwrap_or(0);
                    if let Some(sig) =
                        wait_signal(&mut rx, ignore_term, stuck, Some(Duration::from_millis(ms)))
                            .await
                    {
                        return Ok(ExecOutcome::new(ExitStatus::Signaled(sig)));
                    }
                }
                "hang" => {
                    if let Some(sig) = wait_signal(&mut rx, ignore_term, stuck, None).await {
                        return Ok(ExecOutcome::new(ExitStatus::Signaled(sig)));
                    }
                }
                "ignore-term" => ignore_term = true,
                "stuck" => {
                    ignore_term = true;
                    stuck = true;
                }
                "exit" => {
                    return Ok(ExecOutcome::new(ExitStatus::Exited(
                        arg.parse().unwrap_or(1),
                    )));
                }
                "oom" => {
                    return Ok(ExecOutcome::new(ExitStatus::LimitExceeded(
                        "out of memory (simulated)".into(),
                    )));
                }
                "crash" => return Err(Error::backend("fake", "injected exec failure")),
                other => {
                    return Ok(ExecOutcome::new(ExitStatus::SpawnFailed(format!(
                        "unknown fake step {other:?}"
                    ))));
                }
            }
        }
        Ok(ExecOutcome::new(ExitStatus::Exited(0)))
    }
}

/// Ends when a signal arrives that the script does not ignore.
async fn wait_signal(
    rx: &mut watch::Receiver<Option<KillSignal>>,
    ignore_term: bool,
    stuck: bool,
    sleep: Option<Duration>,
) -> Option<i32> {
    let timer = async {
        match sleep {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(timer);
    loop {
        let current = *rx.borrow_and_update();
        match current {
            Some(KillSignal::Kill) if !stuck => return Some(9),
            Some(KillSignal::Term) if !ignore_term => return Some(15),
            _ => {}
        }
        tokio::select! {
            _ = &mut timer => return None,
            r = rx.changed() => if r.is_err() { std::future::pending::<()>().await },
        }
    }
}
