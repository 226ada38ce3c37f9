//! [`WorkspacePath`]: the one lexical rule for a client-supplied path inside `/workspace`
//! (artifact paths, the command's `cwd`, what the CLI writes an artifact to), parsed once
//! into a normalized value every caller uses.
//!
//! Lexical only: whether a component is a symlink is decided where the path is opened
//! (descriptor-relative, no-follow: [`crate::artifact`], each backend's cwd lookup).

use std::fmt;

/// A validated, normalized path relative to `/workspace`.
///
/// [`parse`](Self::parse) refuses an empty path, one longer than [`Self::MAX_BYTES`], a NUL,
/// a backslash, an absolute path and any `..` component; it drops empty and `.` components,
/// so `./a//b/` is `a/b`. The workspace root itself (`.`, `./`) is a `WorkspacePath` too
/// ([`is_root`](Self::is_root)); [`parse_entry`](Self::parse_entry) refuses it, for paths
/// that must name something inside the workspace (artifacts).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkspacePath(String);

/// Why a string is not a [`WorkspacePath`]. The `Display` texts are the ones the API
/// returns in `invalid_spec` errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WorkspacePathError {
    /// The empty string.
    #[error("must not be empty")]
    Empty,
    /// Over [`WorkspacePath::MAX_BYTES`].
    #[error("longer than {} bytes", WorkspacePath::MAX_BYTES)]
    TooLong,
    /// A NUL byte.
    #[error("contains NUL")]
    Nul,
    /// A backslash (never a separator here, and never meant literally by a portable client).
    #[error("contains a backslash")]
    Backslash,
    /// Starts with `/`.
    #[error("{0:?} is absolute; paths are relative to /workspace")]
    Absolute(String),
    /// A `..` component.
    #[error("{0:?} contains '..'")]
    ParentComponent(String),
    /// Names the workspace root itself where an entry inside it is required.
    #[error("{0:?} names the workspace root itself")]
    Root(String),
}

impl WorkspacePath {
    /// The longest path accepted, in bytes (before normalization).
    pub const MAX_BYTES: usize = 4096;

    /// The workspace root.
    pub fn root() -> Self {
        Self(String::new())
    }

    /// Parses a path inside the workspace; the root itself (`.`) is allowed (a `cwd`).
    pub fn parse(path: &str) -> Result<Self, WorkspacePathError> {
        if path.is_empty() {
            return Err(WorkspacePathError::Empty);
        }
        if path.len() > Self::MAX_BYTES {
            return Err(WorkspacePathError::TooLong);
        }
        if path.contains('\0') {
            return Err(WorkspacePathError::Nul);
        }
        if path.contains('\\') {
            return Err(WorkspacePathError::Backslash);
        }
        if path.starts_with('/') {
            return Err(WorkspacePathError::Absolute(path.to_owned()));
        }
        let mut normalized = String::with_capacity(path.len());
        for component in path.split('/') {
            match component {
                "" | "." => {}
                ".." => return Err(WorkspacePathError::ParentComponent(path.to_owned())),
                c => {
                    if !normalized.is_empty() {
                        normalized.push('/');
                    }
                    normalized.push_str(c);
                }
            }
        }
        Ok(Self(normalized))
    }

    /// [`parse`](Self::parse), refusing the workspace root itself: the path must name an
    /// entry inside the workspace (an artifact).
    pub fn parse_entry(path: &str) -> Result<Self, WorkspacePathError> {
        let parsed = Self::parse(path)?;
        if parsed.is_root() {
            return Err(WorkspacePathError::Root(path.to_owned()));
        }
        Ok(parsed)
    }

    /// True for the workspace root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The normalized path: components joined by `/`, no `.`, no empty component, no
    /// leading or trailing `/`; the empty string for the root.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, in order (none for the root).
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|c| !c.is_empty())
    }

    /// The parent components and the last one; `None` for the root.
    pub fn split_last(&self) -> Option<(Vec<&str>, &str)> {
        let mut components: Vec<&str> = self.components().collect();
        let last = components.pop()?;
        Some((components, last))
    }
}

impl fmt::Display for WorkspacePath {
    /// The normalized path, `.` for the root.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_root() {
            f.write_str(".")
        } else {
            f.write_str(&self.0)
        }
    }
}

impl std::str::FromStr for WorkspacePath {
    type Err = WorkspacePathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn normalizes_dots_and_repeated_slashes() {
        assert_eq!(WorkspacePath::parse("./a//b/").unwrap().as_str(), "a/b");
        assert_eq!(WorkspacePath::parse("a/./b/.").unwrap().as_str(), "a/b");
        assert_eq!(WorkspacePath::parse("out").unwrap().as_str(), "out");
        assert_eq!(WorkspacePath::parse("a/b/c").unwrap().to_string(), "a/b/c");
    }

    #[test]
    fn the_root_is_a_cwd_but_not_an_entry() {
        for root in [".", "./", ".//.", "./."] {
            let p = WorkspacePath::parse(root).unwrap();
            assert!(p.is_root(), "{root:?}");
            assert_eq!(p, WorkspacePath::root());
            assert_eq!(p.as_str(), "");
            assert_eq!(p.to_string(), ".");
            assert_eq!(p.components().count(), 0);
            assert_eq!(p.split_last(), None);
            assert_eq!(
                WorkspacePath::parse_entry(root),
                Err(WorkspacePathError::Root(root.to_owned()))
            );
        }
    }

    #[test]
    fn refuses_what_could_leave_or_confuse_the_workspace() {
        use WorkspacePathError as E;
        assert_eq!(WorkspacePath::parse(""), Err(E::Empty));
        assert_eq!(
            WorkspacePath::parse("/etc/passwd"),
            Err(E::Absolute("/etc/passwd".into()))
        );
        assert_eq!(
            WorkspacePath::parse(".."),
            Err(E::ParentComponent("..".into()))
        );
        assert_eq!(
            WorkspacePath::parse("a/../../b"),
            Err(E::ParentComponent("a/../../b".into()))
        );
        assert_eq!(
            WorkspacePath::parse("a/.."),
            Err(E::ParentComponent("a/..".into()))
        );
        assert_eq!(WorkspacePath::parse("a\0b"), Err(E::Nul));
        assert_eq!(WorkspacePath::parse("a\\b"), Err(E::Backslash));
        assert_eq!(WorkspacePath::parse(&"a".repeat(4097)), Err(E::TooLong));
        assert!(WorkspacePath::parse(&"a".repeat(4096)).is_ok());
        // `..` only as a whole component: these are ordinary names.
        assert_eq!(WorkspacePath::parse("..a/b..").unwrap().as_str(), "..a/b..");
        assert_eq!(
            WorkspacePath::parse("a/../b").unwrap_err().to_string(),
            "\"a/../b\" contains '..'"
        );
    }

    #[test]
    fn split_last_gives_parents_and_name() {
        let p = WorkspacePath::parse_entry("./out//sub/report.txt").unwrap();
        assert_eq!(p.split_last(), Some((vec!["out", "sub"], "report.txt")));
        assert_eq!(
            WorkspacePath::parse_entry("x").unwrap().split_last(),
            Some((vec![], "x"))
        );
    }

    /// One ordinary component (no `/`, NUL or backslash; never `.` or `..`).
    fn name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_.-]{1,8}".prop_filter("not . or ..", |s| s != "." && s != "..")
    }

    /// What may sit between two components: `/`, `//`, `/./`, ...
    fn separator() -> impl Strategy<Value = &'static str> {
        prop_oneof![Just("/"), Just("//"), Just("/./"), Just("/.//")]
    }

    proptest! {
        #[test]
        fn any_spelling_of_the_same_components_parses_to_them(
            names in prop::collection::vec(name(), 1..6),
            seps in prop::collection::vec(separator(), 6),
            leading_dot in any::<bool>(),
            trailing_slash in any::<bool>(),
        ) {
            let mut s = if leading_dot { "./".to_owned() } else { String::new() };
            for (i, n) in names.iter().enumerate() {
                if i > 0 {
                    s.push_str(seps[i]);
                }
                s.push_str(n);
            }
            if trailing_slash {
                s.push('/');
            }
            let p = WorkspacePath::parse_entry(&s).unwrap();
            prop_assert_eq!(p.as_str(), names.join("/"));
            prop_assert_eq!(p.components().collect::<Vec<_>>(), names.iter().map(String::as_str).collect::<Vec<_>>());
            // Normalizing is idempotent.
            prop_assert_eq!(WorkspacePath::parse(p.as_str()).unwrap(), p);
        }

        #[test]
        fn a_parent_component_anywhere_is_refused(
            before in prop::collection::vec(name(), 0..4),
            after in prop::collection::vec(name(), 0..4),
        ) {
            let mut parts = before.clone();
            parts.push("..".into());
            parts.extend(after);
            let s = parts.join("/");
            prop_assert_eq!(
                WorkspacePath::parse(&s),
                Err(WorkspacePathError::ParentComponent(s.clone()))
            );
        }

        #[test]
        fn whatever_parses_stays_inside(s in "[a-z./\\\\\\x00]{0,24}") {
            if let Ok(p) = WorkspacePath::parse(&s) {
                prop_assert!(!p.as_str().starts_with('/'));
                prop_assert!(!p.as_str().ends_with('/'));
                prop_assert!(p.components().all(|c| c != ".." && c != "." && !c.is_empty()));
                prop_assert!(!p.as_str().contains('\0') && !p.as_str().contains('\\'));
            }
        }
    }
}
