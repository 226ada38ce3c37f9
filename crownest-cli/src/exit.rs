//! Exit codes, and how an error maps to one.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | succeeded (or the command did what it was asked) |
//! | 1 | the run failed, a verification failed, or an operational error (I/O, store) |
//! | 2 | usage error or rejected input: bad arguments, unknown run, hostile/corrupt/mismatched archive, an operation the run's state does not allow |
//! | 130 | the run was canceled |

use std::fmt;
use std::process::ExitCode;

use crownest_core::Error;

/// How the process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// 0.
    Success,
    /// 1.
    Failure,
    /// 2.
    Rejected,
    /// 130.
    Canceled,
    /// The command's own exit code (`run --propagate-exit-code`).
    Code(u8),
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(match e {
            Exit::Success => 0,
            Exit::Failure => 1,
            Exit::Rejected => 2,
            Exit::Canceled => 130,
            Exit::Code(c) => c,
        })
    }
}

/// An error that is the caller's: bad arguments or input (exit 2).
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Shorthand for a [`UsageError`] as an `anyhow::Error`.
pub(crate) fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

/// True for core errors that mean "your input or request was refused".
pub(crate) fn is_rejection(e: &Error) -> bool {
    matches!(
        e,
        Error::NotFound { .. }
            | Error::InvalidSpec { .. }
            | Error::NotEnforceable { .. }
            | Error::InvalidTransition { .. }
            | Error::ArchiveRejected { .. }
            | Error::LimitExceeded { .. }
            | Error::NotTerminal { .. }
            | Error::IdempotencyKeyReused { .. }
            | Error::ChunkRejected { .. }
            | Error::TransferIncomplete { .. }
    )
}

/// Exit code for an error that ended a command.
pub(crate) fn classify(e: &anyhow::Error) -> Exit {
    for cause in e.chain() {
        if cause.downcast_ref::<UsageError>().is_some() {
            return Exit::Rejected;
        }
        if let Some(core) = cause.downcast_ref::<Error>() {
            return if is_rejection(core) {
                Exit::Rejected
            } else {
                Exit::Failure
            };
        }
    }
    Exit::Failure
}

/// True when the error is stdout closed under us (e.g. piped into `head`).
pub(crate) fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .is_some_and(|j| j.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe))
    })
}

/// The whole chain of messages, for stderr.
pub(crate) fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for (i, cause) in e.chain().enumerate() {
        if i > 0 {
            out.push_str(": ");
        }
        out.push_str(&cause.to_string());
    }
    if out.contains("401") && out.contains("unauthorized") {
        out.push_str(
            "\ncrownest: the server wants a bearer token: set CROWNEST_TOKEN in the environment \
             (the token `crownest serve` printed, or one from its tokens file)",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crownest_core::RejectReason;

    #[test]
    fn rejections_exit_2_and_the_rest_exit_1() {
        let rejected = anyhow::Error::new(Error::rejected(
            RejectReason::ParentTraversal,
            Some("../evil".into()),
            "climbs out",
        ));
        assert_eq!(classify(&rejected), Exit::Rejected);
        assert_eq!(classify(&rejected.context("uploading")), Exit::Rejected);
        assert_eq!(classify(&usage("bad")), Exit::Rejected);
        let io = anyhow::Error::new(Error::io("x", std::io::Error::other("disk")));
        assert_eq!(classify(&io), Exit::Failure);
        assert_eq!(classify(&anyhow::anyhow!("plain")), Exit::Failure);
    }
}
