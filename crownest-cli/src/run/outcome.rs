//! The exit code of `crownest run`: from the outcome, or the command's own
//! (`--propagate-exit-code`).

use crownest_core::{Failure, FailureKind, RunRecord, RunStatus};

use crate::exit::Exit;

/// `--propagate-exit-code`: the command's own exit code, 128 + the signal that killed it,
/// else the usual mapping (a run that never ran its command).
pub(super) fn propagated_exit(record: &RunRecord) -> Exit {
    if record.status == RunStatus::Canceled {
        return Exit::Canceled;
    }
    let code = match (record.exit_code, record.signal) {
        (Some(code), _) => u8::try_from(code.rem_euclid(256)).unwrap_or(1),
        (None, Some(sig)) => u8::try_from((128 + sig).clamp(0, 255)).unwrap_or(1),
        _ => return exit_for(record),
    };
    // A failed run never exits 0 (a command that exited 0 but timed out, or left a
    // required artifact missing, or exited 256).
    if code == 0 && record.status != RunStatus::Succeeded {
        return exit_for(record);
    }
    Exit::Code(code)
}

/// 0 succeeded, 1 failed, 2 archive rejected at start, 130 canceled.
pub(crate) fn exit_for(record: &RunRecord) -> Exit {
    exit_for_outcome(record.status, record.failure.as_ref())
}

/// [`exit_for`] from a status and failure (a record's, or a `terminal` event's).
pub(super) fn exit_for_outcome(status: RunStatus, failure: Option<&Failure>) -> Exit {
    match status {
        RunStatus::Succeeded => Exit::Success,
        RunStatus::Canceled => Exit::Canceled,
        RunStatus::Failed if failure.is_some_and(|f| f.kind == FailureKind::ArchiveRejected) => {
            Exit::Rejected
        }
        _ => Exit::Failure,
    }
}

#[cfg(test)]
mod tests {
    use crownest_core::{RunId, RunSpec};

    use super::*;

    #[test]
    fn exit_codes_follow_the_outcome() {
        use crownest_core::Limits;
        use crownest_core::run::RunOwner;
        let mut r = RunRecord::new(
            RunId::new(),
            RunSpec::new(["true"]),
            crownest_backend_process::BACKEND.into(),
            Limits::default(),
            RunOwner::current("test"),
        );
        r.status = RunStatus::Succeeded;
        assert_eq!(exit_for(&r), Exit::Success);
        r.status = RunStatus::Canceled;
        assert_eq!(exit_for(&r), Exit::Canceled);
        r.status = RunStatus::Failed;
        r.failure = Some(Failure::new(FailureKind::ExitNonzero, "exit 3"));
        assert_eq!(exit_for(&r), Exit::Failure);
        // Refused at the start of the run: rejected input, like a refusal at upload.
        r.failure = Some(Failure::new(
            FailureKind::ArchiveRejected,
            "archive rejected (link_escapes)",
        ));
        assert_eq!(exit_for(&r), Exit::Rejected);
    }
}
