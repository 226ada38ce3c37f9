//! `collect_artifact`, directly and through the engine's artifact records.

use super::{BackendHarness, RecordingSink, read_all, run_spec, sample_archive, spec_of};
use crate::artifact::SkipReason;
use crate::backend::{ExecRequest, ExitStatus};
use crate::event::{ArtifactErrorReason, EventKind, FailureKind, OutputStream};
use crate::run::ArtifactKind;
use crate::status::RunStatus;

/// A regular file is collected with its bytes, size and digest.
pub async fn artifact_regular_file_is_collected(h: BackendHarness) {
    let spec = spec_of((h.programs.write_file)("out/result.txt", "result-bytes"))
        .with_artifact("out/result.txt", true);
    let (engine, done, events) = run_spec(&h, spec).await;
    assert_eq!(
        done.status,
        RunStatus::Succeeded,
        "{:?} {:?}",
        done.failure,
        done.artifact_errors
    );
    let a = done.artifacts.first().expect("one artifact");
    assert_eq!(a.path, "out/result.txt");
    assert_eq!(a.size_bytes, 12);
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut engine.open_artifact(&a.artifact_id).await.unwrap().1,
        &mut bytes,
    )
    .unwrap();
    assert_eq!(bytes, b"result-bytes");
    assert!(events.iter().any(
        |e| matches!(&e.kind, EventKind::ArtifactCollected { path, .. } if path == "out/result.txt")
    ));
    let ev = engine.evidence(&done.id).await.unwrap();
    assert_eq!(ev.artifacts.len(), 1);
    assert_eq!(ev.artifacts[0].sha256, a.sha256);
}

/// A symlink pointing outside the workspace is never followed.
pub async fn artifact_symlink_is_not_followed(h: BackendHarness) {
    let spec = spec_of((h.programs.symlink)("/etc/passwd", "leak")).with_artifact("leak", false);
    let (_, done, events) = run_spec(&h, spec).await;
    assert!(
        done.artifacts.is_empty(),
        "nothing collected through a symlink"
    );
    let err = done.artifact_errors.first().expect("an artifact error");
    assert!(
        matches!(
            err.reason,
            ArtifactErrorReason::NotRegular | ArtifactErrorReason::EscapesWorkspace
        ),
        "{err:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e.kind, EventKind::ArtifactError { .. }))
    );
    // A non-required artifact error does not change the outcome.
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
}

/// A missing artifact is an `artifact_error` `not_found`.
pub async fn artifact_missing_is_reported(h: BackendHarness) {
    let (_, done, _) = run_spec(
        &h,
        spec_of((h.programs.exit_with)(0)).with_artifact("nope.txt", false),
    )
    .await;
    assert_eq!(done.status, RunStatus::Succeeded);
    assert_eq!(
        done.artifact_errors.first().map(|e| e.reason),
        Some(ArtifactErrorReason::NotFound)
    );
}

/// A missing required artifact fails the run with `missing_required_artifact`.
pub async fn required_artifact_missing_fails_the_run(h: BackendHarness) {
    let (_, done, _) = run_spec(
        &h,
        spec_of((h.programs.exit_with)(0)).with_artifact("nope.txt", true),
    )
    .await;
    assert_eq!(done.status, RunStatus::Failed);
    assert_eq!(
        done.failure.as_ref().map(|f| f.kind),
        Some(FailureKind::MissingRequiredArtifact)
    );
}

/// A directory is collected as a tar of its regular files and directories; a symlink
/// inside is skipped and reported by path and reason.
pub async fn artifact_directory_is_a_tar_of_its_regular_files(h: BackendHarness) {
    let sandbox = h.sandbox_with(sample_archive()).await;
    let sink = RecordingSink::default();
    let out = sandbox
        .exec(&ExecRequest::new((h.programs.make_tree)()), &sink)
        .await
        .unwrap();
    assert_eq!(
        out.status,
        ExitStatus::Exited(0),
        "{}",
        sink.text(OutputStream::Stderr)
    );
    let d = sandbox.collect_artifact("d", 1 << 20).await.unwrap();
    assert_eq!(d.kind, ArtifactKind::Directory);
    assert!(
        d.skipped
            .iter()
            .any(|s| s.path.ends_with("link") && s.reason == SkipReason::Symlink),
        "the link is reported: {:?}",
        d.skipped
    );
    let tar_bytes = read_all(d.reader);
    assert_eq!(tar_bytes.len() as u64, d.size_bytes, "size_bytes is exact");
    let mut files = std::collections::BTreeMap::new();
    for entry in tar::Archive::new(&tar_bytes[..]).entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut content).unwrap();
        files.insert(name, content);
    }
    let find = |suffix: &str| {
        files
            .iter()
            .find(|(n, _)| n.ends_with(suffix))
            .map(|(_, c)| c.clone())
    };
    assert_eq!(find("a.txt"), Some(b"A".to_vec()), "{:?}", files.keys());
    assert_eq!(
        find("sub/b.txt"),
        Some(b"BB".to_vec()),
        "{:?}",
        files.keys()
    );
    assert!(
        !files.keys().any(|n| n.ends_with("link")),
        "links are not in the tar: {:?}",
        files.keys()
    );
    sandbox.destroy().await.unwrap();
}

/// A fifo is refused (`not_regular`), never opened.
pub async fn artifact_fifo_is_refused(h: BackendHarness) {
    let prog = h.programs.mkfifo.expect("registered with Need::Program");
    let sandbox = h.sandbox_with(sample_archive()).await;
    let sink = RecordingSink::default();
    let out = sandbox
        .exec(&ExecRequest::new(prog("pipe.fifo")), &sink)
        .await
        .unwrap();
    assert_eq!(
        out.status,
        ExitStatus::Exited(0),
        "{}",
        sink.text(OutputStream::Stderr)
    );
    let err = sandbox
        .collect_artifact("pipe.fifo", 1 << 20)
        .await
        .unwrap_err();
    assert_eq!(err.reason, ArtifactErrorReason::NotRegular, "{err:?}");
    sandbox.destroy().await.unwrap();
}

/// A file over `max_bytes` is `too_large`; at exactly `max_bytes` it is collected.
pub async fn artifact_over_max_bytes_is_too_large(h: BackendHarness) {
    let sandbox = h.sandbox_with(sample_archive()).await;
    let sink = RecordingSink::default();
    let content = "x".repeat(5000);
    let out = sandbox
        .exec(
            &ExecRequest::new((h.programs.write_file)("big.txt", &content)),
            &sink,
        )
        .await
        .unwrap();
    assert_eq!(
        out.status,
        ExitStatus::Exited(0),
        "{}",
        sink.text(OutputStream::Stderr)
    );
    let err = sandbox.collect_artifact("big.txt", 4999).await.unwrap_err();
    assert_eq!(err.reason, ArtifactErrorReason::TooLarge, "{err:?}");
    let ok = sandbox.collect_artifact("big.txt", 5000).await.unwrap();
    assert_eq!(ok.size_bytes, 5000);
    assert_eq!(read_all(ok.reader).len(), 5000);
    // Through the engine: the per-artifact limit gives an `artifact_error` `too_large`.
    let mut spec =
        spec_of((h.programs.write_file)("big.txt", &content)).with_artifact("big.txt", false);
    spec.limits.artifact_bytes_each = Some(4096);
    let (_, done, _) = run_spec(&h, spec).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    assert_eq!(
        done.artifact_errors.first().map(|e| e.reason),
        Some(ArtifactErrorReason::TooLarge)
    );
    sandbox.destroy().await.unwrap();
}

/// Paths that leave the workspace are refused: lexically (`invalid_path`) or through a
/// symlinked directory (never followed).
pub async fn artifact_paths_outside_the_workspace_are_refused(h: BackendHarness) {
    let sandbox = h.sandbox_with(sample_archive()).await;
    for path in ["../etc/passwd", "/etc/passwd", "sub/../../x"] {
        let err = sandbox.collect_artifact(path, 1 << 20).await.unwrap_err();
        assert_eq!(
            err.reason,
            ArtifactErrorReason::InvalidPath,
            "{path}: {err:?}"
        );
    }
    let sink = RecordingSink::default();
    let out = sandbox
        .exec(
            &ExecRequest::new((h.programs.symlink)("/etc", "esc")),
            &sink,
        )
        .await
        .unwrap();
    assert_eq!(
        out.status,
        ExitStatus::Exited(0),
        "{}",
        sink.text(OutputStream::Stderr)
    );
    let err = sandbox
        .collect_artifact("esc/passwd", 1 << 20)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.reason,
            ArtifactErrorReason::EscapesWorkspace | ArtifactErrorReason::NotRegular
        ),
        "a symlinked parent is not followed: {err:?}"
    );
    sandbox.destroy().await.unwrap();
}
