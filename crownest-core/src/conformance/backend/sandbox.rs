//! One sandbox driven directly: `create`, `materialize`, `exec`, `signal`, `destroy`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::wait_for_output;
use super::{BackendHarness, RecordingSink, me, read_all, sample_archive, sandbox_spec};
use crate::archive::ExtractPolicy;
use crate::backend::{ExecRequest, ExitStatus, KillSignal, Sandbox};
use crate::error::{Error, RejectReason};
use crate::event::OutputStream;
use crate::testing::{tar_gz, tar_gz_raw_entries, tar_gz_raw_name};

/// `materialize` refuses a hostile archive with `ArchiveRejected`.
pub async fn materialize_rejects_a_hostile_archive(h: BackendHarness) {
    let sandbox = h
        .backend
        .create(&sandbox_spec("python-node", me()))
        .await
        .unwrap();
    let hostile = tar_gz_raw_name("../escape.txt", b"owned");
    let err = sandbox
        .materialize(
            crate::backend::ArchiveSource::Archive(Box::new(std::io::Cursor::new(hostile))),
            &ExtractPolicy::default(),
            &|_| {},
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ArchiveRejected {
                reason: RejectReason::ParentTraversal,
                ..
            }
        ),
        "got {err:?}"
    );
    sandbox.destroy().await.unwrap();
}

/// `destroy()` is idempotent.
pub async fn destroy_is_idempotent(h: BackendHarness) {
    let sandbox = h
        .backend
        .create(&sandbox_spec("python-node", me()))
        .await
        .unwrap();
    sandbox.destroy().await.expect("first destroy");
    sandbox.destroy().await.expect("second destroy");
}

/// `create()` returns a fresh sandbox: another sandbox's files are not in it, and an empty
/// archive gives an empty `/workspace`.
pub async fn create_gives_a_fresh_empty_workspace(h: BackendHarness) {
    let first = h.sandbox_with(sample_archive()).await;
    let fresh = h.sandbox_with(tar_gz(&[])).await;
    let sink = RecordingSink::default();
    let out = fresh
        .exec(&ExecRequest::new((h.programs.list_workspace)()), &sink)
        .await
        .unwrap();
    assert_eq!(
        out.status,
        ExitStatus::Exited(0),
        "{}",
        sink.text(OutputStream::Stderr)
    );
    assert_eq!(
        sink.text(OutputStream::Stdout),
        "",
        "the new workspace is empty"
    );
    assert_ne!(first.id(), fresh.id(), "ids are distinct");
    first.destroy().await.unwrap();
    fresh.destroy().await.unwrap();
}

/// A refused archive leaves nothing of itself: the command never sees a partial tree,
/// even when good entries came before the hostile one.
pub async fn materialize_is_all_or_nothing(h: BackendHarness) {
    let sandbox: Arc<dyn Sandbox> = Arc::from(
        h.backend
            .create(&sandbox_spec("python-node", me()))
            .await
            .unwrap(),
    );
    let archive = tar_gz_raw_entries(&[
        ("good-1.txt", b"one"),
        ("dir/good-2.txt", b"two"),
        ("../escape.txt", b"owned"),
    ]);
    let err = sandbox
        .materialize(
            crate::backend::ArchiveSource::Archive(Box::new(std::io::Cursor::new(archive))),
            &ExtractPolicy::default(),
            &|_| {},
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ArchiveRejected {
                reason: RejectReason::ParentTraversal,
                ..
            }
        ),
        "got {err:?}"
    );
    let sink = RecordingSink::default();
    let out = sandbox
        .exec(&ExecRequest::new((h.programs.list_workspace)()), &sink)
        .await
        .unwrap();
    assert_eq!(
        out.status,
        ExitStatus::Exited(0),
        "{}",
        sink.text(OutputStream::Stderr)
    );
    assert_eq!(
        sink.text(OutputStream::Stdout),
        "",
        "nothing of the refused archive is visible"
    );
    sandbox.destroy().await.unwrap();
}

/// `exec` calls `sink.started()` exactly once, before any output.
pub async fn exec_calls_started_once_before_any_output(h: BackendHarness) {
    let sandbox = h.sandbox_with(sample_archive()).await;
    let sink = RecordingSink::default();
    let out = sandbox
        .exec(
            &ExecRequest::new((h.programs.stdout_stderr)("out-1", "err-1")),
            &sink,
        )
        .await
        .unwrap();
    assert_eq!(out.status, ExitStatus::Exited(0));
    assert_eq!(sink.started.load(Ordering::SeqCst), 1, "started() once");
    assert_eq!(
        sink.early.load(Ordering::SeqCst),
        0,
        "no output before started()"
    );
    assert_eq!(sink.text(OutputStream::Stdout), "out-1\n");
    assert_eq!(sink.text(OutputStream::Stderr), "err-1\n");
    sandbox.destroy().await.unwrap();
    // A command that cannot start does not call started() (a sandbox runs one command).
    let sandbox = h.sandbox_with(sample_archive()).await;
    let sink = RecordingSink::default();
    let out = sandbox
        .exec(&ExecRequest::new(["crownest-no-such-program-xyz"]), &sink)
        .await
        .unwrap();
    assert!(matches!(out.status, ExitStatus::SpawnFailed(_)), "{out:?}");
    assert_eq!(sink.started.load(Ordering::SeqCst), 0);
    sandbox.destroy().await.unwrap();
}

/// `exec` returns only after everything the command started has ended: a detached child
/// that would write a file later never does so after `exec` returned.
pub async fn exec_returns_after_every_descendant_ended(h: BackendHarness) {
    let prog = h
        .programs
        .background_writer
        .expect("registered with Need::Program");
    let sandbox = h.sandbox_with(sample_archive()).await;
    let sink = RecordingSink::default();
    let out = sandbox
        .exec(&ExecRequest::new(prog("late.txt")), &sink)
        .await
        .unwrap();
    assert_eq!(
        out.status,
        ExitStatus::Exited(0),
        "{}",
        sink.text(OutputStream::Stderr)
    );
    let at_return = sandbox.collect_artifact("late.txt", 100).await.is_ok();
    // The child would write after 1 s: give it well over that.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let later = sandbox.collect_artifact("late.txt", 100).await.is_ok();
    assert_eq!(
        at_return, later,
        "a process of the command still ran after exec returned (late.txt appeared)"
    );
    assert!(out.survivors.is_empty(), "{:?}", out.survivors);
    sandbox.destroy().await.unwrap();
}

/// `signal(Term)` reaches processes the command started in other sessions.
pub async fn sigterm_reaches_processes_in_other_sessions(h: BackendHarness) {
    let prog = h.programs.term_tree.expect("registered with Need::Program");
    let sandbox = h.sandbox_with(sample_archive()).await;
    let sink = Arc::new(RecordingSink::default());
    let task = {
        let (sandbox, sink) = (sandbox.clone(), sink.clone());
        tokio::spawn(async move { sandbox.exec(&ExecRequest::new(prog()), sink.as_ref()).await })
    };
    wait_for_output(&sink, "child-ready").await;
    sandbox.signal(KillSignal::Term).await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("exec returns after the signal")
        .unwrap()
        .unwrap();
    assert_eq!(
        out.status,
        ExitStatus::Exited(0),
        "the parent exited after its child"
    );
    let marker = sandbox
        .collect_artifact("child-got-term", 100)
        .await
        .expect("the child wrote its marker");
    assert_eq!(
        read_all(marker.reader),
        b"yes",
        "SIGTERM reached the child in its own session"
    );
    sandbox.destroy().await.unwrap();
}

/// `signal(Kill)` ends every process the command started, including a detached one that
/// ignores SIGTERM: once `exec` returned, nothing writes in the workspace any more.
pub async fn sigkill_reaches_every_process_the_command_started(h: BackendHarness) {
    let prog = h
        .programs
        .stubborn_tree
        .expect("registered with Need::Program");
    let sandbox = h.sandbox_with(sample_archive()).await;
    let sink = Arc::new(RecordingSink::default());
    let task = {
        let (sandbox, sink) = (sandbox.clone(), sink.clone());
        tokio::spawn(async move {
            sandbox
                .exec(&ExecRequest::new(prog("beat")), sink.as_ref())
                .await
        })
    };
    wait_for_output(&sink, "ready").await;
    sandbox.signal(KillSignal::Term).await.unwrap();
    sandbox.signal(KillSignal::Kill).await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("exec returns after SIGKILL")
        .unwrap()
        .unwrap();
    assert!(
        matches!(out.status, ExitStatus::Signaled(_)),
        "ended by the signal: {out:?}"
    );
    assert!(out.survivors.is_empty(), "survivors: {:?}", out.survivors);
    let size = |a: Result<crate::artifact::CollectedArtifact, _>| a.map(|a| a.size_bytes).ok();
    let first = size(sandbox.collect_artifact("beat", 1 << 20).await);
    assert!(first.is_some_and(|n| n > 0), "the child had written");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let second = size(sandbox.collect_artifact("beat", 1 << 20).await);
    assert_eq!(
        first, second,
        "the detached child still writes after SIGKILL"
    );
    sandbox.destroy().await.unwrap();
}

/// Signalling with no command running is `Ok`, and a later command is unaffected.
pub async fn signal_with_no_command_running_is_ok(h: BackendHarness) {
    let sandbox = h.sandbox_with(sample_archive()).await;
    sandbox.signal(KillSignal::Term).await.unwrap();
    sandbox.signal(KillSignal::Kill).await.unwrap();
    let sink = RecordingSink::default();
    let out = sandbox
        .exec(&ExecRequest::new((h.programs.exit_with)(0)), &sink)
        .await
        .unwrap();
    assert_eq!(
        out.status,
        ExitStatus::Exited(0),
        "an earlier signal does not linger"
    );
    sandbox.signal(KillSignal::Kill).await.unwrap();
    sandbox.destroy().await.unwrap();
}

/// `destroy()` while a command runs ends it: `exec` returns, and destroy stays idempotent.
pub async fn destroy_ends_a_running_command(h: BackendHarness) {
    let sandbox = h.sandbox_with(sample_archive()).await;
    let sink = Arc::new(RecordingSink::default());
    let task = {
        let (sandbox, sink) = (sandbox.clone(), sink.clone());
        let argv = (h.programs.run_forever)();
        tokio::spawn(async move { sandbox.exec(&ExecRequest::new(argv), sink.as_ref()).await })
    };
    wait_for_output(&sink, "ready").await;
    sandbox.destroy().await.expect("destroy");
    let ended = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("exec returns once the sandbox is destroyed")
        .unwrap();
    if let Ok(out) = ended {
        assert!(
            !matches!(out.status, ExitStatus::Exited(0)),
            "the command was ended, not finished: {out:?}"
        );
        assert!(out.survivors.is_empty(), "{:?}", out.survivors);
    }
    sandbox.destroy().await.expect("destroy again");
}
