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

/// The whole chain of messages, for stderr, and what to do about an authentication
/// refusal when the chain holds one.
pub(crate) fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for (i, cause) in e.chain().enumerate() {
        if i > 0 {
            out.push_str(": ");
        }
        out.push_str(&cause.to_string());
    }
    if let Some(hint) = e
        .chain()
        .filter_map(|c| c.downcast_ref::<Error>())
        .find_map(auth_hint)
    {
        out.push_str("\ncrownest: ");
        out.push_str(&hint);
    }
    out
}

/// A server's refusal of the bearer token, from the HTTP status of an error response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthRefusal {
    /// 401: no token, or one the server does not know.
    Unauthorized,
    /// 403: a known token without the scope the request needs (when the server said which).
    Forbidden(Option<crownest_http::Scope>),
}

/// The authentication refusal `e` is, if it is one: an error response the client read
/// (`ErrorBody::to_error` keeps its status as the backend `http <status>` and the body as
/// the source, with the `scope` a 403 names).
pub(crate) fn auth_refusal(e: &Error) -> Option<AuthRefusal> {
    let Error::Backend { backend, .. } = e else {
        return None;
    };
    let status: u16 = backend.strip_prefix("http ")?.parse().ok()?;
    match status {
        401 => Some(AuthRefusal::Unauthorized),
        403 => Some(AuthRefusal::Forbidden(
            crownest_http::ErrorBody::of_error(e).and_then(|b| b.error.scope),
        )),
        _ => None,
    }
}

/// How to pass a token: the ways `crownest` takes one.
const TOKEN_WAYS: &str = "set CROWNEST_TOKEN in the environment or pass --token-file FILE \
                          (--token T works too, but every user sees it in `ps`)";

/// What to do about an authentication refusal (one line, no prefix).
pub(crate) fn auth_hint(e: &Error) -> Option<String> {
    Some(match auth_refusal(e)? {
        AuthRefusal::Unauthorized => format!(
            "the server wants a valid bearer token: {TOKEN_WAYS}; use the token `crownest \
             serve` printed, or one `crownest token add` minted for its tokens file"
        ),
        AuthRefusal::Forbidden(scope) => {
            let (what, scopes) = match scope {
                Some(s) => (format!("the {s} scope"), s.as_str().to_owned()),
                None => ("the scope".to_owned(), "SCOPES".to_owned()),
            };
            format!(
                "the token is valid but lacks {what} this request needs: use a token with it \
                 (`crownest token add NAME --scopes {scopes}` on the server's host mints one); \
                 {TOKEN_WAYS}"
            )
        }
    })
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

    #[test]
    fn auth_refusals_come_from_the_http_status() {
        use crownest_http::{ErrorBody, Scope};
        let unauthorized = ErrorBody::from_response(
            401,
            br#"{"error":{"code":"unauthorized","message":"a valid bearer token is required"}}"#,
        )
        .to_error(401);
        assert_eq!(auth_refusal(&unauthorized), Some(AuthRefusal::Unauthorized));
        // A proxy's page without the JSON body: the status still says it.
        let bare = ErrorBody::from_response(401, b"<html>nope</html>").to_error(401);
        assert_eq!(auth_refusal(&bare), Some(AuthRefusal::Unauthorized));
        let forbidden = ErrorBody::from_response(
            403,
            br#"{"error":{"code":"forbidden","message":"lacks","scope":"submit"}}"#,
        )
        .to_error(403);
        assert_eq!(
            auth_refusal(&forbidden),
            Some(AuthRefusal::Forbidden(Some(Scope::Submit)))
        );
        let hint = describe(&anyhow::Error::new(forbidden).context("creating the run"));
        assert!(hint.contains("lacks the submit scope"), "{hint}");
        assert!(
            hint.contains("CROWNEST_TOKEN") && hint.contains("--token-file"),
            "{hint}"
        );
        // The words alone are not an auth failure.
        let other = anyhow::anyhow!("a 401 unauthorized test printed this");
        assert_eq!(describe(&other), "a 401 unauthorized test printed this");
        let not_found = ErrorBody::from_response(404, b"").to_error(404);
        assert_eq!(auth_refusal(&not_found), None);
    }
}
