//! Path rules: entry paths and link targets, checked lexically (no I/O), so `validate` and
//! `extract` refuse exactly the same paths.

use super::Refusal;
use crate::archive::ExtractPolicy;
use crate::error::RejectReason;

/// Longest single path component (Linux `NAME_MAX`), refused lexically so that `validate`
/// never accepts what `extract` would fail to create.
pub(super) const NAME_MAX: usize = 255;

/// Characters refused in entry paths and link targets: NUL, backslash and ASCII control
/// characters (legal on Linux, but a classic source of confusion and log spoofing).
fn bad_char(c: char) -> bool {
    c == '\0' || c == '\\' || c.is_ascii_control()
}

/// Normalizes an entry path (`./a//b/` → `a/b`, `./` → the empty root path), refusing
/// non-UTF-8, NUL/backslash/control characters, absolute paths, `..` components, and
/// paths over the length, depth or component-length limits.
pub(in crate::archive) fn normalize_entry_path(
    raw: &[u8],
    policy: &ExtractPolicy,
) -> Result<String, Refusal> {
    normalize(
        raw,
        policy,
        RejectReason::AbsolutePath,
        RejectReason::ParentTraversal,
    )
}

/// Normalizes the target of a hardlink: it names an archive path (relative to the root), so
/// it follows the entry path rules, but an escape is reported as [`RejectReason::LinkEscapes`].
pub(in crate::archive) fn normalize_hardlink_target(
    raw: &[u8],
    policy: &ExtractPolicy,
) -> Result<String, Refusal> {
    normalize(
        raw,
        policy,
        RejectReason::LinkEscapes,
        RejectReason::LinkEscapes,
    )
}

fn normalize(
    raw: &[u8],
    policy: &ExtractPolicy,
    absolute: RejectReason,
    parent: RejectReason,
) -> Result<String, Refusal> {
    if raw.is_empty() {
        return Err((RejectReason::InvalidPath, "empty path".into()));
    }
    if raw.len() as u64 > policy.max_path_len {
        return Err((
            RejectReason::InvalidPath,
            format!(
                "path is {} bytes long, over the limit of {}",
                raw.len(),
                policy.max_path_len
            ),
        ));
    }
    let s = std::str::from_utf8(raw).map_err(|_| {
        (
            RejectReason::InvalidPath,
            "path is not valid UTF-8".to_string(),
        )
    })?;
    if s.chars().any(bad_char) {
        return Err((
            RejectReason::InvalidPath,
            "path contains NUL, a backslash or a control character".into(),
        ));
    }
    if s.starts_with('/') {
        return Err((absolute, "absolute path".into()));
    }
    let mut out = String::with_capacity(s.len());
    let mut depth = 0u64;
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err((parent, "path has a '..' component".into())),
            c => {
                if c.len() > NAME_MAX {
                    return Err((
                        RejectReason::InvalidPath,
                        format!("a path component is longer than {NAME_MAX} bytes"),
                    ));
                }
                depth += 1;
                if depth > policy.max_depth {
                    return Err((
                        RejectReason::InvalidPath,
                        format!("path is deeper than {} components", policy.max_depth),
                    ));
                }
                if !out.is_empty() {
                    out.push('/');
                }
                out.push_str(c);
            }
        }
    }
    Ok(out)
}

/// Checks a symlink target, resolved lexically from the directory holding the link
/// (`link` is the normalized link path). Absolute targets are refused, and so is any `..`
/// that would climb above the root. A `..` after a normal component (`a/../b`) is refused
/// too: the kernel resolves `..` physically, so after a component that is (or later becomes)
/// a symlink it could climb somewhere the lexical view does not see. Leading `..` runs are
/// fine (`../lib/x`): the link's own ancestors are real directories (checked by [`Tree`](super::Tree)).
pub(in crate::archive) fn check_symlink_target(
    link: &str,
    raw: &[u8],
    policy: &ExtractPolicy,
) -> Result<String, Refusal> {
    if raw.is_empty() {
        return Err((RejectReason::InvalidPath, "empty symlink target".into()));
    }
    if raw.len() as u64 > policy.max_path_len {
        return Err((
            RejectReason::InvalidPath,
            "symlink target over the path length limit".into(),
        ));
    }
    let s = std::str::from_utf8(raw).map_err(|_| {
        (
            RejectReason::InvalidPath,
            "symlink target is not valid UTF-8".to_string(),
        )
    })?;
    if s.chars().any(bad_char) {
        return Err((
            RejectReason::InvalidPath,
            "symlink target contains NUL, a backslash or a control character".into(),
        ));
    }
    if s.starts_with('/') {
        return Err((
            RejectReason::LinkEscapes,
            format!("symlink target {s:?} is absolute"),
        ));
    }
    let link_dir_depth = link.split('/').count().saturating_sub(1);
    let mut ups = 0usize;
    let mut seen_normal = false;
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." if seen_normal => {
                return Err((
                    RejectReason::LinkEscapes,
                    format!("symlink target {s:?} has '..' after a normal component"),
                ));
            }
            ".." => {
                ups += 1;
                if ups > link_dir_depth {
                    return Err((
                        RejectReason::LinkEscapes,
                        format!("symlink target {s:?} leaves the extraction root"),
                    ));
                }
            }
            c if c.len() > NAME_MAX => {
                return Err((
                    RejectReason::InvalidPath,
                    format!("a symlink target component is longer than {NAME_MAX} bytes"),
                ));
            }
            _ => seen_normal = true,
        }
    }
    Ok(s.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn p() -> ExtractPolicy {
        ExtractPolicy::default()
    }

    #[test]
    fn normalizes_and_refuses_paths() {
        assert_eq!(normalize_entry_path(b"./a//b/", &p()).unwrap(), "a/b");
        assert_eq!(normalize_entry_path(b"./", &p()).unwrap(), "");
        let r = |b: &[u8]| normalize_entry_path(b, &p()).unwrap_err().0;
        assert_eq!(r(b"/etc/passwd"), RejectReason::AbsolutePath);
        assert_eq!(r(b"a/../../x"), RejectReason::ParentTraversal);
        assert_eq!(r(b"a\\b"), RejectReason::InvalidPath);
        assert_eq!(r(b"a\nb"), RejectReason::InvalidPath);
        assert_eq!(r(b"\xff"), RejectReason::InvalidPath);
        assert_eq!(r(&[b'a'; 256]), RejectReason::InvalidPath);
        let mut pol = p();
        pol.max_depth = 2;
        assert_eq!(
            normalize_entry_path(b"a/b/c", &pol).unwrap_err().0,
            RejectReason::InvalidPath
        );
    }

    #[test]
    fn symlink_targets() {
        let ok = |l: &str, t: &str| check_symlink_target(l, t.as_bytes(), &p()).is_ok();
        assert!(ok("a/l", "../b"));
        assert!(ok("a/l", "b/c"));
        assert!(ok("a/l", ".."));
        assert!(!ok("l", "../x"));
        assert!(!ok("a/l", "../../x"));
        assert!(!ok("a/l", "/etc"));
        assert!(!ok("a/l", "b/../../x"));
        assert!(!ok("a/l", "b/.."));
    }
}
