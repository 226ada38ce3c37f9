//! The pure, lexical half of the extraction policy: entry paths, link targets, metadata
//! records and the in-memory model of the tree built so far. No I/O happens here, so
//! `validate` and `extract` make exactly the same decisions.

use std::collections::HashMap;

use super::ExtractPolicy;
use crate::error::RejectReason;

/// A refusal before it is attached to an entry name.
pub(super) type Refusal = (RejectReason, String);

/// Longest single path component (Linux `NAME_MAX`), refused lexically so that `validate`
/// never accepts what `extract` would fail to create.
const NAME_MAX: usize = 255;

/// What a path of the archive holds, in the lexical model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A directory (explicit or implied by a deeper entry).
    Dir,
    /// A regular file.
    File,
    /// A symlink.
    Symlink,
    /// A hardlink to an earlier regular file (a regular file on disk).
    Hardlink,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Dir => "directory",
            Kind::File => "regular file",
            Kind::Symlink => "symlink",
            Kind::Hardlink => "hardlink",
        }
    }
}

/// Characters refused in entry paths and link targets: NUL, backslash and ASCII control
/// characters (legal on Linux, but a classic source of confusion and log spoofing).
fn bad_char(c: char) -> bool {
    c == '\0' || c == '\\' || c.is_ascii_control()
}

/// Normalizes an entry path (`./a//b/` → `a/b`, `./` → the empty root path), refusing
/// non-UTF-8, NUL/backslash/control characters, absolute paths, `..` components, and
/// paths over the length, depth or component-length limits.
pub(super) fn normalize_entry_path(raw: &[u8], policy: &ExtractPolicy) -> Result<String, Refusal> {
    normalize(
        raw,
        policy,
        RejectReason::AbsolutePath,
        RejectReason::ParentTraversal,
    )
}

/// Normalizes the target of a hardlink: it names an archive path (relative to the root), so
/// it follows the entry path rules, but an escape is reported as [`RejectReason::LinkEscapes`].
pub(super) fn normalize_hardlink_target(
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
/// fine (`../lib/x`): the link's own ancestors are real directories (checked by [`Tree`]).
pub(super) fn check_symlink_target(
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

/// The keys of a PAX extended header that CrowNest honours.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Pax {
    /// `path`.
    pub(super) path: Option<Vec<u8>>,
    /// `linkpath`.
    pub(super) linkpath: Option<Vec<u8>>,
    /// `size`.
    pub(super) size: Option<u64>,
    /// Any `GNU.sparse.*` key (sparse files are refused).
    pub(super) sparse: bool,
}

/// Parses PAX records (`"<len> <key>=<value>\n"`) strictly; a malformed record is an error.
pub(super) fn parse_pax(mut data: &[u8]) -> Result<Pax, String> {
    let mut pax = Pax::default();
    while !data.is_empty() {
        if data.iter().all(|b| *b == 0) {
            break;
        }
        let sp = data
            .iter()
            .position(|b| *b == b' ')
            .ok_or("PAX record without a length")?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|l| l.parse().ok())
            .ok_or("PAX record with an invalid length")?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err("PAX record length does not match its contents".into());
        }
        let record = &data[sp + 1..len - 1];
        let eq = record
            .iter()
            .position(|b| *b == b'=')
            .ok_or("PAX record without '='")?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        match key {
            b"path" => pax.path = Some(value.to_vec()),
            b"linkpath" => pax.linkpath = Some(value.to_vec()),
            b"size" => {
                let size = std::str::from_utf8(value)
                    .ok()
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse().ok())
                    .ok_or("PAX size is not a decimal number")?;
                pax.size = Some(size);
            }
            k if k.starts_with(b"GNU.sparse.") => pax.sparse = true,
            _ => {}
        }
        data = &data[len..];
    }
    Ok(pax)
}

/// What placing an entry in the tree means for the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Placement {
    /// A new path; the listed ancestor directories (top-down) are implied and must be made
    /// first.
    New {
        /// Implied ancestors not seen before, top-down.
        implied_dirs: Vec<String>,
    },
    /// A directory seen before (explicitly or implied): only its mode changes.
    RepeatDir,
    /// A regular file replacing an earlier regular file or hardlink at the same path (the
    /// earlier one is unlinked first, as GNU tar does).
    ReplaceFile,
}

/// The lexical model of the tree the archive has built so far. Invariant: every ancestor
/// of a path in the map is in the map as a [`Kind::Dir`].
#[derive(Debug, Default)]
pub(super) struct Tree {
    nodes: HashMap<Box<str>, Kind>,
}

impl Tree {
    /// The kind at a normalized path, if any.
    pub(super) fn get(&self, path: &str) -> Option<Kind> {
        self.nodes.get(path).copied()
    }

    /// Places an entry of `kind` at the normalized, non-empty `path`, refusing paths through
    /// symlinks ([`RejectReason::ThroughSymlink`]), paths through regular files and kind
    /// changes ([`RejectReason::DuplicateEntry`]).
    pub(super) fn place(&mut self, path: &str, kind: Kind) -> Result<Placement, Refusal> {
        let mut missing = Vec::new();
        let mut end = path.len();
        while let Some(i) = path[..end].rfind('/') {
            let ancestor = &path[..i];
            match self.nodes.get(ancestor) {
                Some(Kind::Dir) => break,
                Some(Kind::Symlink) => {
                    return Err((
                        RejectReason::ThroughSymlink,
                        format!("{ancestor:?} is a symlink earlier in the archive"),
                    ));
                }
                Some(k) => {
                    return Err((
                        RejectReason::DuplicateEntry,
                        format!("{ancestor:?} is a {} earlier in the archive", k.name()),
                    ));
                }
                None => missing.push(ancestor),
            }
            end = i;
        }
        let placement = match (self.nodes.get(path).copied(), kind) {
            (None, _) => Placement::New {
                implied_dirs: missing.iter().rev().map(|s| s.to_string()).collect(),
            },
            (Some(Kind::Dir), Kind::Dir) => Placement::RepeatDir,
            (Some(Kind::File | Kind::Hardlink), Kind::File) => Placement::ReplaceFile,
            (Some(old), new) => {
                return Err((
                    RejectReason::DuplicateEntry,
                    format!(
                        "a {} replaces a {} at the same path",
                        new.name(),
                        old.name()
                    ),
                ));
            }
        };
        for m in missing {
            self.nodes.insert(m.into(), Kind::Dir);
        }
        self.nodes.insert(path.into(), kind);
        Ok(placement)
    }
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

    #[test]
    fn tree_rules() {
        let mut t = Tree::default();
        assert_eq!(
            t.place("a/b/f", Kind::File).unwrap(),
            Placement::New {
                implied_dirs: vec!["a".into(), "a/b".into()]
            }
        );
        assert_eq!(t.place("a/b", Kind::Dir).unwrap(), Placement::RepeatDir);
        assert_eq!(
            t.place("a/b/f", Kind::File).unwrap(),
            Placement::ReplaceFile
        );
        assert_eq!(
            t.place("a/b/f", Kind::Dir).unwrap_err().0,
            RejectReason::DuplicateEntry
        );
        t.place("a/l", Kind::Symlink).unwrap();
        assert_eq!(
            t.place("a/l/x/y", Kind::File).unwrap_err().0,
            RejectReason::ThroughSymlink
        );
        assert_eq!(
            t.place("a/b/f/x", Kind::File).unwrap_err().0,
            RejectReason::DuplicateEntry
        );
        assert_eq!(t.get("a/l/x"), None);
    }

    #[test]
    fn pax_records() {
        let pax = parse_pax(b"16 path=abc/def\n13 size=1234\n").unwrap();
        assert_eq!(pax.path.as_deref(), Some(&b"abc/def"[..]));
        assert_eq!(pax.size, Some(1234));
        assert!(parse_pax(b"99 path=x\n").is_err());
        assert!(parse_pax(b"x").is_err());
    }
}
